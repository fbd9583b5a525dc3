use std::net::IpAddr;

use berth_proto::v1::{NamespaceMode, Protocol, security_profile::ProfileType};
use k8s_openapi::api::core::v1::{Container, Pod};
use rstest::rstest;
use serde_json::{Value, json};

use super::quantity::{Quantity, QuantityError};
use super::resources::{self, Requirements};
use super::*;

const GI: i64 = 1 << 30;

fn pod(spec: Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {
            "name": "web-node-1",
            "namespace": "kube-system",
            "uid": "0123-abcd",
            "labels": {"app": "web", "tier": "front"},
            "annotations": {"kubernetes.io/config.source": "file", "note": "a \"b\""},
        },
        "spec": spec,
    }))
    .unwrap()
}

fn with_resources(resources: Value) -> Value {
    json!({"name": "c", "image": "busybox", "resources": resources})
}

fn node() -> NodeContext {
    NodeContext {
        node_name: "node-1".to_owned(),
        host_ips: vec!["10.0.0.5".parse().unwrap(), "fd00::5".parse().unwrap()],
        memory_capacity: 10 * GI,
        allocatable: Allocatable {
            cpu_millis: 4000,
            memory: 8 * GI,
            ephemeral_storage: 100 * GI,
        },
        ..NodeContext::default()
    }
}

#[rstest]
#[case("1", 1000, 1)]
#[case("500m", 500, 1)]
#[case("0.5", 500, 1)]
#[case("1.5Gi", 1_610_612_736_000, 1_610_612_736)]
#[case("128Mi", 134_217_728_000, 134_217_728)]
#[case("1e3", 1_000_000, 1000)]
#[case("1E-3", 1, 1)]
#[case("1k", 1_000_000, 1000)]
#[case("100n", 1, 1)]
#[case("1u", 1, 1)]
#[case("0", 0, 0)]
#[case(".5m", 1, 1)]
fn quantities_round_up(#[case] text: &str, #[case] milli: i64, #[case] value: i64) {
    let q = Quantity::parse(text).unwrap();
    assert_eq!((q.milli_value(), q.value()), (milli, value), "{text}");
}

#[rstest]
#[case("")]
#[case("abc")]
#[case("1.2.3")]
#[case("1Ki2")]
#[case("1e")]
#[case("1e+-3")]
#[case(".")]
#[case("1 Gi")]
fn bad_quantities(#[case] text: &str) {
    assert_eq!(
        Quantity::parse(text),
        Err(QuantityError::Syntax(text.to_owned()))
    );
}

#[test]
fn huge_quantities_overflow() {
    assert!(matches!(
        Quantity::parse("99999999999999999999999999999999999999999"),
        Err(QuantityError::Overflow(_))
    ));
    assert!(matches!(
        Quantity::parse("1e40"),
        Err(QuantityError::Overflow(_))
    ));
}

#[rstest]
#[case::nothing(json!({"containers": [with_resources(json!({}))]}), QosClass::BestEffort)]
#[case::equal(
    json!({"containers": [with_resources(json!({"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"cpu": "1", "memory": "1Gi"}}))]}),
    QosClass::Guaranteed
)]
#[case::limits_only(
    json!({"containers": [with_resources(json!({"limits": {"cpu": "500m", "memory": "64Mi"}}))]}),
    QosClass::Guaranteed
)]
#[case::same_amount_spelled_differently(
    json!({"containers": [with_resources(json!({"requests": {"cpu": "0.5", "memory": "1Gi"}, "limits": {"cpu": "500m", "memory": "1024Mi"}}))]}),
    QosClass::Guaranteed
)]
#[case::request_below_limit(
    json!({"containers": [with_resources(json!({"requests": {"cpu": "100m", "memory": "1Gi"}, "limits": {"cpu": "1", "memory": "1Gi"}}))]}),
    QosClass::Burstable
)]
#[case::cpu_limit_only(
    json!({"containers": [with_resources(json!({"limits": {"cpu": "1"}}))]}),
    QosClass::Burstable
)]
#[case::request_only(
    json!({"containers": [with_resources(json!({"requests": {"memory": "1Gi"}}))]}),
    QosClass::Burstable
)]
#[case::other_resources_do_not_count(
    json!({"containers": [with_resources(json!({"limits": {"ephemeral-storage": "1Gi"}}))]}),
    QosClass::BestEffort
)]
#[case::zero_is_nothing(
    json!({"containers": [with_resources(json!({"requests": {"cpu": "0"}}))]}),
    QosClass::BestEffort
)]
#[case::best_effort_init_container(
    json!({
        "initContainers": [with_resources(json!({}))],
        "containers": [with_resources(json!({"limits": {"cpu": "1", "memory": "1Gi"}}))],
    }),
    QosClass::Burstable
)]
#[case::guaranteed_init_container(
    json!({
        "initContainers": [with_resources(json!({"limits": {"cpu": "2", "memory": "2Gi"}}))],
        "containers": [with_resources(json!({"limits": {"cpu": "1", "memory": "1Gi"}}))],
    }),
    QosClass::Guaranteed
)]
#[case::init_container_request(
    json!({
        "initContainers": [with_resources(json!({"requests": {"cpu": "1"}}))],
        "containers": [with_resources(json!({}))],
    }),
    QosClass::Burstable
)]
fn qos_classes(#[case] spec: Value, #[case] class: QosClass) {
    assert_eq!(qos_class(&pod(spec)).unwrap(), class);
}

#[test]
fn bad_quantity_names_container_and_resource() {
    let p = pod(json!({"containers": [with_resources(json!({"limits": {"cpu": "lots"}}))]}));
    let err = qos_class(&p).unwrap_err().to_string();
    assert_eq!(
        err,
        "container \"c\": resources.limits[cpu]: quantity \"lots\" is not a number with an optional suffix (such as 500m, 1Gi, 1e3)"
    );
}

#[rstest]
#[case(QosClass::Guaranteed, CgroupDriver::Cgroupfs, "/kubepods/pod0123-abcd")]
#[case(
    QosClass::Burstable,
    CgroupDriver::Cgroupfs,
    "/kubepods/burstable/pod0123-abcd"
)]
#[case(
    QosClass::BestEffort,
    CgroupDriver::Cgroupfs,
    "/kubepods/besteffort/pod0123-abcd"
)]
#[case(
    QosClass::Guaranteed,
    CgroupDriver::Systemd,
    "/kubepods.slice/kubepods-pod0123_abcd.slice"
)]
#[case(
    QosClass::Burstable,
    CgroupDriver::Systemd,
    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0123_abcd.slice"
)]
#[case(
    QosClass::BestEffort,
    CgroupDriver::Systemd,
    "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod0123_abcd.slice"
)]
fn cgroup_parents(#[case] qos: QosClass, #[case] driver: CgroupDriver, #[case] want: &str) {
    assert_eq!(cgroup_parent(qos, "0123-abcd", driver), want);
}

#[rstest]
#[case("", "/kubepods/podx")]
#[case("/", "/kubepods/podx")]
#[case("/berth-node", "/berth-node/kubepods/podx")]
#[case("/berth/node/", "/berth/node/kubepods/podx")]
fn cgroup_parents_under_the_root(#[case] root: &str, #[case] want: &str) {
    assert_eq!(under_root(root, "/kubepods/podx".to_owned()), want);
}

#[rstest]
#[case(0, 2)]
#[case(1, 2)]
#[case(2, 2)]
#[case(10, 10)]
#[case(100, 102)]
#[case(1000, 1024)]
#[case(1_000_000, 262_144)]
fn cpu_shares(#[case] milli: i64, #[case] shares: i64) {
    assert_eq!(resources::milli_cpu_to_shares(milli), shares);
}

#[rstest]
#[case(0, 0)]
#[case(1, 1000)]
#[case(9, 1000)]
#[case(10, 1000)]
#[case(11, 1100)]
#[case(250, 25_000)]
#[case(2000, 200_000)]
fn cpu_quota(#[case] milli: i64, #[case] quota: i64) {
    assert_eq!(
        resources::milli_cpu_to_quota(milli, resources::CPU_PERIOD_US),
        quota
    );
}

fn requirements(resources: Value) -> Requirements {
    let c: Container = serde_json::from_value(with_resources(resources)).unwrap();
    Requirements::of(&c).unwrap()
}

#[test]
fn linux_resources_from_requests_and_limits() {
    let r = requirements(
        json!({"requests": {"cpu": "250m"}, "limits": {"cpu": "500m", "memory": "64Mi"}}),
    );
    let l = resources::linux_resources(&r, 7);
    assert_eq!(
        (
            l.cpu_shares,
            l.cpu_quota,
            l.cpu_period,
            l.memory_limit_in_bytes,
            l.oom_score_adj
        ),
        (256, 50_000, 100_000, 64 << 20, 7)
    );
    // Shares from the limit when only the limit is set.
    let l = resources::linux_resources(&requirements(json!({"limits": {"cpu": "2"}})), 0);
    assert_eq!((l.cpu_shares, l.cpu_quota), (2048, 200_000));
    // Nothing set: minimum shares, no quota, no memory limit.
    let l = resources::linux_resources(&requirements(json!({})), 0);
    assert_eq!(
        (l.cpu_shares, l.cpu_quota, l.memory_limit_in_bytes),
        (2, 0, 0)
    );
}

#[rstest]
#[case::guaranteed(QosClass::Guaranteed, "0", -997)]
#[case::best_effort(QosClass::BestEffort, "0", 1000)]
#[case::burstable_tiny_request(QosClass::Burstable, "1", 999)]
#[case::burstable_no_memory_request(QosClass::Burstable, "0", 999)]
#[case::burstable_half(QosClass::Burstable, "5Gi", 500)]
#[case::burstable_almost_all(QosClass::Burstable, "9.99Gi", 3)]
#[case::burstable_all(QosClass::Burstable, "10Gi", 3)]
#[case::burstable_more_than_all(QosClass::Burstable, "20Gi", 3)]
fn oom_score_adjustments(#[case] qos: QosClass, #[case] memory: &str, #[case] adj: i64) {
    let p = pod(json!({"containers": []}));
    let r = requirements(json!({"requests": {"memory": memory}}));
    assert_eq!(resources::oom_score_adj(&p, qos, &r, 10 * GI), adj);
}

#[test]
fn node_critical_pods_are_protected() {
    let p = pod(json!({"priorityClassName": "system-node-critical", "containers": []}));
    let r = requirements(json!({}));
    assert_eq!(
        resources::oom_score_adj(&p, QosClass::BestEffort, &r, GI),
        -997
    );
}

fn lookup<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<&'a str> {
    |name| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| *v)
}

#[rstest]
#[case("plain", "plain")]
#[case("$(A)", "a")]
#[case("x$(A)y$(B)z", "xaybz")]
#[case("$$(A)", "$(A)")]
#[case("$$$(A)", "$a")]
#[case("$(UNDEFINED)", "$(UNDEFINED)")]
#[case("$(A", "$(A")]
#[case("$A", "$A")]
#[case("end$", "end$")]
#[case("$", "$")]
#[case("$()", "$()")]
#[case("ü$(A)ü", "üaü")]
#[case("$ü", "$ü")]
fn expansion(#[case] input: &str, #[case] output: &str) {
    assert_eq!(
        env::expand(input, lookup(&[("A", "a"), ("B", "b")])),
        output
    );
}

fn container_of(p: &Pod) -> Container {
    p.spec.as_ref().unwrap().containers[0].clone()
}

fn env_of(p: &Pod) -> Result<Vec<(String, String)>, env::EnvError> {
    let mut ctx = PodContext::new(p);
    ctx.pod_ips = vec!["10.1.0.7".parse().unwrap(), "fd01::7".parse().unwrap()];
    env::container_env(&ctx, &node(), &container_of(p))
}

fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[test]
fn env_values_expand_in_declaration_order() {
    let p = pod(json!({"containers": [{"name": "c", "env": [
        {"name": "LATER_REF", "value": "[$(B)]"},
        {"name": "A", "value": "a"},
        {"name": "B", "value": "$(A)-b"},
        {"name": "ESCAPED", "value": "$$(A)"},
        {"name": "UNKNOWN", "value": "$(NOPE)"},
        {"name": "EMPTY"},
        {"name": "A", "value": "again:$(A)"},
    ]}]}));
    assert_eq!(
        env_of(&p).unwrap(),
        pairs(&[
            ("LATER_REF", "[$(B)]"),
            ("A", "again:a"),
            ("B", "a-b"),
            ("ESCAPED", "$(A)"),
            ("UNKNOWN", "$(NOPE)"),
            ("EMPTY", ""),
        ])
    );
}

#[test]
fn service_env_is_referable_and_appended() {
    let p = pod(json!({"containers": [{"name": "c", "env": [
        {"name": "URL", "value": "http://$(SVC_HOST)"},
        {"name": "SVC_PORT", "value": "mine"},
    ]}]}));
    let mut ctx = PodContext::new(&p);
    ctx.service_env
        .insert("SVC_HOST".to_owned(), "10.96.0.9".to_owned());
    ctx.service_env
        .insert("SVC_PORT".to_owned(), "80".to_owned());
    let env = env::container_env(&ctx, &node(), &container_of(&p)).unwrap();
    assert_eq!(
        env,
        pairs(&[
            ("URL", "http://10.96.0.9"),
            ("SVC_PORT", "mine"),
            ("SVC_HOST", "10.96.0.9"),
        ])
    );
}

#[rstest]
#[case("metadata.name", "web-node-1")]
#[case("metadata.namespace", "kube-system")]
#[case("metadata.uid", "0123-abcd")]
#[case("metadata.labels['app']", "web")]
#[case("metadata.labels['missing']", "")]
#[case("metadata.annotations['note']", "a \"b\"")]
#[case("metadata.labels", "app=\"web\"\ntier=\"front\"")]
#[case(
    "metadata.annotations",
    "kubernetes.io/config.source=\"file\"\nnote=\"a \\\"b\\\"\""
)]
#[case("spec.nodeName", "node-1")]
#[case("spec.serviceAccountName", "robot")]
#[case("status.hostIP", "10.0.0.5")]
#[case("status.hostIPs", "10.0.0.5,fd00::5")]
#[case("status.podIP", "10.1.0.7")]
#[case("status.podIPs", "10.1.0.7,fd01::7")]
fn field_refs(#[case] path: &str, #[case] want: &str) {
    let p = pod(
        json!({"serviceAccountName": "robot", "containers": [{"name": "c", "env": [
            {"name": "V", "valueFrom": {"fieldRef": {"fieldPath": path}}},
            {"name": "W", "value": "<$(V)>"},
        ]}]}),
    );
    let env = env_of(&p).unwrap();
    assert_eq!(env[0].1, want);
    assert_eq!(env[1].1, format!("<{want}>"));
}

#[test]
fn unknown_field_ref_is_an_error() {
    let p = pod(json!({"containers": [{"name": "c", "env": [
        {"name": "V", "valueFrom": {"fieldRef": {"fieldPath": "spec.schedulerName"}}},
    ]}]}));
    let err = env_of(&p).unwrap_err().to_string();
    assert_eq!(
        err,
        "container \"c\": env[V]: unsupported fieldPath \"spec.schedulerName\""
    );
}

#[rstest]
#[case("limits.cpu", None, "2")]
#[case("limits.cpu", Some("1m"), "1500")]
#[case("limits.cpu", Some("1"), "2")]
#[case("limits.cpu", Some("0"), "2")]
#[case("requests.cpu", Some("1m"), "250")]
#[case("requests.cpu", None, "1")]
#[case("requests.cpu", Some("100m"), "3")]
#[case("limits.memory", None, "100000000")]
#[case("limits.memory", Some("1Mi"), "96")]
#[case("limits.memory", Some("1M"), "100")]
#[case("requests.memory", Some("1Mi"), "64")]
#[case("requests.memory", Some("1Gi"), "1")]
#[case("limits.ephemeral-storage", Some("1Gi"), "100")]
#[case("requests.ephemeral-storage", None, "0")]
fn resource_field_refs(#[case] resource: &str, #[case] divisor: Option<&str>, #[case] want: &str) {
    let mut selector = json!({"resource": resource});
    if let Some(d) = divisor {
        selector["divisor"] = json!(d);
    }
    let p = pod(json!({"containers": [{
        "name": "c",
        "resources": {
            "requests": {"cpu": "250m", "memory": "64Mi"},
            "limits": {"cpu": "1500m", "memory": "100M"},
        },
        "env": [{"name": "V", "valueFrom": {"resourceFieldRef": selector}}],
    }]}));
    assert_eq!(env_of(&p).unwrap()[0].1, want);
}

#[test]
fn missing_limits_read_as_allocatable() {
    let p = pod(json!({"containers": [{"name": "c", "env": [
        {"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
        {"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Gi"}}},
    ]}]}));
    assert_eq!(env_of(&p).unwrap(), pairs(&[("CPU", "4"), ("MEM", "8")]));
}

#[test]
fn resource_field_ref_of_another_container() {
    let p = pod(json!({"containers": [
        {"name": "c", "env": [{"name": "V", "valueFrom": {"resourceFieldRef": {
            "containerName": "side", "resource": "limits.memory", "divisor": "1Mi"}}}]},
        {"name": "side", "resources": {"limits": {"memory": "32Mi"}}},
    ]}));
    assert_eq!(env_of(&p).unwrap()[0].1, "32");
    let p = pod(json!({"containers": [
        {"name": "c", "env": [{"name": "V", "valueFrom": {"resourceFieldRef": {
            "containerName": "ghost", "resource": "limits.memory"}}}]},
    ]}));
    assert!(matches!(
        env_of(&p),
        Err(env::EnvError::NoSuchContainer { .. })
    ));
}

fn full_pod() -> Pod {
    pod(json!({
        "hostname": "webhost",
        "terminationGracePeriodSeconds": 10,
        "securityContext": {
            "runAsUser": 1000, "runAsGroup": 2000, "fsGroup": 3000, "supplementalGroups": [4000],
            "sysctls": [{"name": "net.core.somaxconn", "value": "1024"}],
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [{
            "name": "app",
            "image": "web:1",
            "command": ["/bin/$(PROG)", "$$(PROG)"],
            "args": ["--port=$(PORT)", "$(MISSING)"],
            "workingDir": "/srv",
            "stdin": true, "tty": true,
            "env": [{"name": "PROG", "value": "server"}, {"name": "PORT", "value": "8080"}],
            "ports": [
                {"name": "http", "containerPort": 8080, "hostPort": 80},
                {"containerPort": 53, "protocol": "UDP", "hostPort": 53, "hostIP": "10.0.0.5"},
                {"containerPort": 9090},
                {"name": "http", "containerPort": 8081, "hostPort": 81},
            ],
            "resources": {"requests": {"cpu": "100m", "memory": "1Gi"}, "limits": {"cpu": "1", "memory": "2Gi"}},
            "securityContext": {
                "runAsUser": 1001,
                "capabilities": {"add": ["NET_ADMIN"], "drop": ["ALL"]},
                "readOnlyRootFilesystem": true,
                "allowPrivilegeEscalation": false,
            },
        }, {
            "name": "side",
            "image": "side:1",
            "ports": [{"containerPort": 7000, "protocol": "SCTP", "hostPort": 7000}],
            "securityContext": {"privileged": true, "procMount": "Unmasked", "seccompProfile": {"type": "Localhost", "localhostProfile": "p.json"}},
        }],
    }))
}

#[test]
fn sandbox_config_of_a_pod() {
    let p = full_pod();
    let mut ctx = PodContext::new(&p);
    ctx.attempt = 2;
    let c = sandbox_config(&ctx, &node()).unwrap();
    let meta = c.metadata.unwrap();
    assert_eq!(
        (
            meta.name.as_str(),
            meta.namespace.as_str(),
            meta.uid.as_str(),
            meta.attempt
        ),
        ("web-node-1", "kube-system", "0123-abcd", 2)
    );
    assert_eq!(c.hostname, "webhost");
    assert_eq!(
        c.log_directory,
        "/var/log/pods/kube-system_web-node-1_0123-abcd"
    );
    // Standalone: ClusterFirst falls back to the host's resolver, left to the runtime.
    assert_eq!(c.dns_config, None);
    assert_eq!(c.labels["app"], "web");
    assert_eq!(c.labels["io.kubernetes.pod.name"], "web-node-1");
    assert_eq!(c.labels["io.kubernetes.pod.namespace"], "kube-system");
    assert_eq!(c.labels["io.kubernetes.pod.uid"], "0123-abcd");
    assert_eq!(c.annotations["kubernetes.io/config.source"], "file");

    let ports: Vec<_> = c
        .port_mappings
        .iter()
        .map(|m| {
            (
                m.protocol(),
                m.container_port,
                m.host_port,
                m.host_ip.as_str(),
            )
        })
        .collect();
    assert_eq!(
        ports,
        [
            (Protocol::Tcp, 8080, 80, ""),
            (Protocol::Udp, 53, 53, "10.0.0.5"),
            (Protocol::Tcp, 9090, 0, ""),
            (Protocol::Sctp, 7000, 7000, ""),
        ]
    );

    let linux = c.linux.unwrap();
    assert_eq!(linux.cgroup_parent, "/kubepods/burstable/pod0123-abcd");
    assert_eq!(linux.sysctls["net.core.somaxconn"], "1024");
    let sc = linux.security_context.unwrap();
    assert!(sc.privileged);
    assert_eq!(sc.run_as_user.unwrap().value, 1000);
    assert_eq!(sc.run_as_group.unwrap().value, 2000);
    assert_eq!(sc.supplemental_groups, [3000, 4000]);
    assert_eq!(
        sc.seccomp.unwrap().profile_type(),
        ProfileType::RuntimeDefault
    );
}

#[test]
fn host_network_pods_have_no_hostname() {
    let p = pod(json!({"hostNetwork": true, "containers": [{"name": "c"}]}));
    let c = sandbox_config(&PodContext::new(&p), &node()).unwrap();
    assert_eq!(c.hostname, "");
    let p = pod(json!({"containers": [{"name": "c"}]}));
    let c = sandbox_config(&PodContext::new(&p), &node()).unwrap();
    assert_eq!(c.hostname, "web-node-1");
}

#[rstest]
#[case(json!({}), NamespaceMode::Pod, NamespaceMode::Container, NamespaceMode::Pod)]
#[case(json!({"hostNetwork": true}), NamespaceMode::Node, NamespaceMode::Container, NamespaceMode::Pod)]
#[case(json!({"hostPID": true}), NamespaceMode::Pod, NamespaceMode::Node, NamespaceMode::Pod)]
#[case(json!({"hostIPC": true}), NamespaceMode::Pod, NamespaceMode::Container, NamespaceMode::Node)]
#[case(json!({"shareProcessNamespace": true}), NamespaceMode::Pod, NamespaceMode::Pod, NamespaceMode::Pod)]
#[case(
    json!({"hostPID": true, "shareProcessNamespace": true}),
    NamespaceMode::Pod,
    NamespaceMode::Node,
    NamespaceMode::Pod
)]
fn namespace_modes(
    #[case] flags: Value,
    #[case] network: NamespaceMode,
    #[case] pid: NamespaceMode,
    #[case] ipc: NamespaceMode,
) {
    let mut spec = json!({"containers": [{"name": "c"}]});
    spec.as_object_mut()
        .unwrap()
        .extend(flags.as_object().unwrap().clone());
    let p = pod(spec);
    let sandbox = sandbox_config(&PodContext::new(&p), &node()).unwrap();
    let ns = sandbox
        .linux
        .unwrap()
        .security_context
        .unwrap()
        .namespace_options
        .unwrap();
    assert_eq!((ns.network(), ns.pid(), ns.ipc()), (network, pid, ipc));
    let container =
        container_config(&PodContext::new(&p), &node(), &container_of(&p), "img").unwrap();
    let cns = container
        .linux
        .unwrap()
        .security_context
        .unwrap()
        .namespace_options
        .unwrap();
    assert_eq!(cns, ns);
}

#[test]
fn user_namespaces_are_refused() {
    let p = pod(json!({"hostUsers": false, "containers": [{"name": "c"}]}));
    assert!(matches!(
        sandbox_config(&PodContext::new(&p), &node()),
        Err(SandboxError::UserNamespaces { .. })
    ));
}

fn dns_of(spec: Value, node: &NodeContext) -> Option<berth_proto::v1::DnsConfig> {
    dns::dns_config(&pod(spec), node).unwrap()
}

#[test]
fn dns_policies() {
    let standalone = node();
    let host = NodeContext {
        host_dns: dns::parse_resolv_conf(
            "# host\nnameserver 192.168.1.1\nsearch old.example\nsearch lan\noptions edns0 ndots:2\n",
        ),
        ..node()
    };
    let cluster = NodeContext {
        cluster_dns: vec!["10.96.0.10".parse::<IpAddr>().unwrap()],
        ..host.clone()
    };
    let own = json!({"nameservers": ["1.1.1.1"], "searches": ["x.example"], "options": [{"name": "ndots", "value": "1"}, {"name": "rotate"}]});

    assert_eq!(dns_of(json!({}), &standalone), None);
    let d = dns_of(json!({"dnsPolicy": "Default"}), &host).unwrap();
    assert_eq!(
        (d.servers, d.searches, d.options),
        (
            vec!["192.168.1.1".to_owned()],
            vec!["lan".to_owned()],
            vec!["edns0".to_owned(), "ndots:2".to_owned()]
        )
    );

    let d = dns_of(json!({}), &cluster).unwrap();
    assert_eq!(d.servers, ["10.96.0.10"]);
    assert_eq!(
        d.searches,
        [
            "kube-system.svc.cluster.local",
            "svc.cluster.local",
            "cluster.local",
            "lan"
        ]
    );
    assert_eq!(d.options, ["ndots:5"]);
    // ClusterFirst with the host's network is Default; ClusterFirstWithHostNet is not.
    let d = dns_of(json!({"hostNetwork": true}), &cluster).unwrap();
    assert_eq!(d.servers, ["192.168.1.1"]);
    let d = dns_of(
        json!({"hostNetwork": true, "dnsPolicy": "ClusterFirstWithHostNet"}),
        &cluster,
    )
    .unwrap();
    assert_eq!(d.servers, ["10.96.0.10"]);

    let d = dns_of(
        json!({"dnsPolicy": "None", "dnsConfig": own.clone()}),
        &cluster,
    )
    .unwrap();
    assert_eq!(
        (d.servers, d.searches, d.options),
        (
            vec!["1.1.1.1".to_owned()],
            vec!["x.example".to_owned()],
            vec!["ndots:1".to_owned(), "rotate".to_owned()]
        )
    );
    let d = dns_of(json!({"dnsPolicy": "Default", "dnsConfig": own}), &host).unwrap();
    assert_eq!(d.servers, ["192.168.1.1", "1.1.1.1"]);
    assert_eq!(d.options, ["edns0", "ndots:1", "rotate"]);

    let many = json!({"dnsPolicy": "None", "dnsConfig": {"nameservers": ["1.0.0.1", "1.0.0.2", "1.0.0.3", "1.0.0.4"]}});
    assert_eq!(dns_of(many, &host).unwrap().servers.len(), 3);
    assert!(dns::dns_config(&pod(json!({"dnsPolicy": "Bogus"})), &host).is_err());
}

#[test]
fn container_config_of_a_container() {
    let p = full_pod();
    let mut ctx = PodContext::new(&p);
    ctx.restart_counts.insert("app".to_owned(), 3);
    let container = container_of(&p);
    let c = container_config(&ctx, &node(), &container, "docker.io/library/web@sha256:ab").unwrap();
    let meta = c.metadata.as_ref().unwrap();
    assert_eq!((meta.name.as_str(), meta.attempt), ("app", 3));
    let image = c.image.as_ref().unwrap();
    assert_eq!(image.image, "docker.io/library/web@sha256:ab");
    assert_eq!(image.user_specified_image, "web:1");
    assert_eq!(c.command, ["/bin/server", "$(PROG)"]);
    assert_eq!(c.args, ["--port=8080", "$(MISSING)"]);
    assert_eq!(c.working_dir, "/srv");
    assert_eq!(c.log_path, "app/3.log");
    assert!(c.stdin && c.tty && !c.stdin_once);
    let envs: Vec<_> = c
        .envs
        .iter()
        .map(|kv| (kv.key.as_str(), kv.value.as_slice()))
        .collect();
    assert_eq!(
        envs,
        [("PROG", b"server".as_slice()), ("PORT", b"8080".as_slice())]
    );

    assert_eq!(c.labels.len(), 4);
    assert_eq!(c.labels["io.kubernetes.container.name"], "app");
    assert_eq!(c.labels["io.kubernetes.pod.name"], "web-node-1");
    assert_eq!(c.labels["io.kubernetes.pod.namespace"], "kube-system");
    assert_eq!(c.labels["io.kubernetes.pod.uid"], "0123-abcd");
    let a = &c.annotations;
    assert_eq!(
        a["io.kubernetes.container.hash"],
        container::container_hash(&container)
    );
    assert_eq!(a["io.kubernetes.container.restartCount"], "3");
    assert_eq!(
        a["io.kubernetes.container.terminationMessagePath"],
        "/dev/termination-log"
    );
    assert_eq!(
        a["io.kubernetes.container.terminationMessagePolicy"],
        "File"
    );
    assert_eq!(a["io.kubernetes.pod.terminationGracePeriod"], "10");
    let ports: Value = serde_json::from_str(&a["io.kubernetes.container.ports"]).unwrap();
    assert_eq!(
        ports[0],
        json!({"name": "http", "containerPort": 8080, "hostPort": 80, "protocol": "TCP"})
    );
    assert_eq!(ports[1]["protocol"], "UDP");

    let linux = c.linux.unwrap();
    let r = linux.resources.unwrap();
    assert_eq!(
        (
            r.cpu_shares,
            r.cpu_quota,
            r.cpu_period,
            r.memory_limit_in_bytes
        ),
        (102, 100_000, 100_000, 2 * GI)
    );
    // Burstable, 1Gi of 10Gi requested.
    assert_eq!(r.oom_score_adj, 900);
    let sc = linux.security_context.unwrap();
    assert_eq!(sc.run_as_user.unwrap().value, 1001);
    assert_eq!(sc.run_as_group.unwrap().value, 2000);
    assert_eq!(sc.supplemental_groups, [3000, 4000]);
    let caps = sc.capabilities.unwrap();
    assert_eq!(
        (caps.add_capabilities, caps.drop_capabilities),
        (vec!["NET_ADMIN".to_owned()], vec!["ALL".to_owned()])
    );
    assert!(sc.readonly_rootfs && sc.no_new_privs && !sc.privileged);
    assert_eq!(sc.masked_paths.len(), container::DEFAULT_MASKED_PATHS.len());
    assert_eq!(
        sc.readonly_paths.len(),
        container::DEFAULT_READONLY_PATHS.len()
    );
    // The pod's profile applies to containers without their own.
    assert_eq!(
        sc.seccomp.unwrap().profile_type(),
        ProfileType::RuntimeDefault
    );
}

#[test]
fn container_security_overrides() {
    let p = full_pod();
    let side = p.spec.as_ref().unwrap().containers[1].clone();
    let c = container_config(&PodContext::new(&p), &node(), &side, "side").unwrap();
    assert_eq!(c.log_path, "side/0.log");
    let sc = c.linux.unwrap().security_context.unwrap();
    assert!(sc.privileged && !sc.no_new_privs);
    assert!(sc.masked_paths.is_empty() && sc.readonly_paths.is_empty());
    let seccomp = sc.seccomp.unwrap();
    assert_eq!(seccomp.profile_type(), ProfileType::Localhost);
    assert_eq!(seccomp.localhost_ref, "/var/lib/kubelet/seccomp/p.json");
}

#[test]
fn seccomp_default_without_profiles() {
    let p = pod(json!({"containers": [{"name": "c"}]}));
    let c = container_of(&p);
    let profile = |node: &NodeContext| {
        container_config(&PodContext::new(&p), node, &c, "i")
            .unwrap()
            .linux
            .unwrap()
            .security_context
            .unwrap()
            .seccomp
            .unwrap()
            .profile_type()
    };
    assert_eq!(profile(&node()), ProfileType::Unconfined);
    let defaulted = NodeContext {
        seccomp_default: true,
        ..node()
    };
    assert_eq!(profile(&defaulted), ProfileType::RuntimeDefault);
    // Best effort, with upstream's defaults for the annotations.
    let cfg = container_config(&PodContext::new(&p), &node(), &c, "i").unwrap();
    assert_eq!(cfg.linux.unwrap().resources.unwrap().oom_score_adj, 1000);
    assert_eq!(
        cfg.annotations["io.kubernetes.pod.terminationGracePeriod"],
        "30"
    );
    assert!(
        !cfg.annotations
            .contains_key("io.kubernetes.container.ports")
    );
}

#[test]
fn fnv1a32_known_values() {
    assert_eq!(container::fnv1a32(b""), 0x811c_9dc5);
    assert_eq!(container::fnv1a32(b"a"), 0xe40c_292c);
    assert_eq!(container::fnv1a32(b"foobar"), 0xbf9c_f968);
}

#[test]
fn container_hash_follows_the_spec() {
    let a: Container = serde_json::from_value(json!({"name": "c", "image": "x:1"})).unwrap();
    let b: Container = serde_json::from_value(json!({"name": "c", "image": "x:2"})).unwrap();
    assert_eq!(
        container::container_hash(&a),
        container::container_hash(&a.clone())
    );
    assert_ne!(container::container_hash(&a), container::container_hash(&b));
}

#[test]
fn pods_without_identity_are_refused() {
    let mut p = pod(json!({"containers": [{"name": "c"}]}));
    p.metadata.uid = None;
    assert!(matches!(
        sandbox_config(&PodContext::new(&p), &node()),
        Err(SandboxError::Identity("uid"))
    ));
}
