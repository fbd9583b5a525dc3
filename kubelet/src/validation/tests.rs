//! One case per rule: a pod in YAML and the exact errors upstream would print.

use k8s_openapi::api::core::v1::Pod;
use rstest::rstest;

use super::validate_pod;

const LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";

/// The expected messages, with `<label>` and `<subdomain>` standing for the long name messages.
fn expand(expected: &[&str]) -> Vec<String> {
    expected
        .iter()
        .map(|e| {
            e.replace("<label>", LABEL_MSG)
                .replace("<subdomain>", SUBDOMAIN_MSG)
        })
        .collect()
}

fn errors(yaml: &str) -> Vec<String> {
    let pod: Pod = serde_saphyr::from_str(yaml).unwrap();
    validate_pod(&pod).iter().map(ToString::to_string).collect()
}

/// A pod named `web` with `spec` as given.
fn with_spec(spec: &str) -> String {
    format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\nspec:\n{spec}")
}

const ONE_CONTAINER: &str = "  containers:\n  - name: app\n    image: busybox\n";

#[test]
fn a_complete_pod_is_valid() {
    let yaml = r#"
apiVersion: v1
kind: Pod
metadata:
  name: web.example
  namespace: kube-system
  labels: {app.kubernetes.io/name: web, tier: ""}
  annotations: {Example.com/Note: "anything goes here"}
spec:
  hostname: web
  restartPolicy: OnFailure
  dnsPolicy: None
  dnsConfig: {nameservers: [1.1.1.1]}
  activeDeadlineSeconds: 60
  initContainers:
  - name: init
    image: busybox
    restartPolicy: Always
  containers:
  - name: app
    image: nginx:1.27
    imagePullPolicy: IfNotPresent
    securityContext: {privileged: true}
    env: [{name: A_B, value: "1"}, {name: "weird.name-ok", value: x}]
    ports:
    - {name: http, containerPort: 80, hostPort: 8080}
    - {name: dns, containerPort: 53, hostPort: 8080, protocol: UDP}
    - {containerPort: 53, hostPort: 8080, protocol: SCTP, hostIP: "127.0.0.1"}
    volumeMounts:
    - {name: data, mountPath: /data, subPath: sub/dir, mountPropagation: Bidirectional}
    - {name: logs, mountPath: /var/log}
  volumes:
  - {name: data, hostPath: {path: /srv/data, type: DirectoryOrCreate}}
  - {name: logs, emptyDir: {}}
"#;
    assert_eq!(errors(yaml), Vec::<String>::new());
}

#[rstest]
#[case::name_required(
    "apiVersion: v1\nkind: Pod\nmetadata: {}\nspec:\n  containers: [{name: a, image: i}]\n",
    &["metadata.name: Required value: name or generateName is required"],
)]
#[case::name_subdomain(
    "apiVersion: v1\nkind: Pod\nmetadata: {name: Foo_bar}\nspec:\n  containers: [{name: a, image: i}]\n",
    &["metadata.name: Invalid value: \"Foo_bar\": <subdomain>"],
)]
#[case::namespace_label(
    "apiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: Kube_System}\nspec:\n  containers: [{name: a, image: i}]\n",
    &["metadata.namespace: Invalid value: \"Kube_System\": <label>"],
)]
#[case::namespace_dots(
    "apiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: a.b}\nspec:\n  containers: [{name: a, image: i}]\n",
    &["metadata.namespace: Invalid value: \"a.b\": must not contain dots"],
)]
#[case::label_key_and_value(
    "apiVersion: v1\nkind: Pod\nmetadata: {name: web, labels: {\"a/b/c\": ok, app: \"-x\"}}\nspec:\n  containers: [{name: a, image: i}]\n",
    &[
        "metadata.labels: Invalid value: \"a/b/c\": a qualified name must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]') with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')",
        "metadata.labels: Invalid value: \"-x\": a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')",
    ],
)]
#[case::annotation_key(
    "apiVersion: v1\nkind: Pod\nmetadata: {name: web, annotations: {\"/x\": v}}\nspec:\n  containers: [{name: a, image: i}]\n",
    &["metadata.annotations: Invalid value: \"/x\": prefix part must be non-empty"],
)]
#[case::no_spec("apiVersion: v1\nkind: Pod\nmetadata: {name: web}\n", &["spec.containers: Required value"])]
fn metadata_rules(#[case] yaml: &str, #[case] expected: &[&str]) {
    assert_eq!(errors(yaml), expand(expected));
}

#[rstest]
#[case::no_containers("  containers: []\n", &["spec.containers: Required value"])]
#[case::container_name_required("  containers: [{image: i}]\n", &["spec.containers[0].name: Required value"])]
#[case::container_name_label(
    "  containers: [{name: Web, image: i}]\n",
    &["spec.containers[0].name: Invalid value: \"Web\": <label>"],
)]
#[case::container_name_unique(
    "  initContainers: [{name: app, image: i}]\n  containers: [{name: app, image: i}, {name: b, image: i}, {name: b, image: i}]\n",
    &["spec.containers[0].name: Duplicate value: \"app\"", "spec.containers[2].name: Duplicate value: \"b\""],
)]
#[case::image_required(
    "  initContainers: [{name: init}]\n  containers: [{name: a, image: \"\"}]\n",
    &["spec.initContainers[0].image: Required value", "spec.containers[0].image: Required value"],
)]
#[case::image_whitespace(
    "  containers: [{name: a, image: \" busybox\"}]\n",
    &["spec.containers[0].image: Invalid value: \" busybox\": must not have leading or trailing whitespace"],
)]
#[case::pull_policy(
    "  containers: [{name: a, image: i, imagePullPolicy: Sometimes}]\n",
    &["spec.containers[0].imagePullPolicy: Unsupported value: \"Sometimes\": supported values: \"Always\", \"IfNotPresent\", \"Never\""],
)]
#[case::container_restart_policy(
    "  initContainers: [{name: s, image: i, restartPolicy: Sometimes}]\n  containers: [{name: a, image: i}]\n",
    &["spec.initContainers[0].restartPolicy: Unsupported value: \"Sometimes\": supported values: \"Always\", \"OnFailure\", \"Never\""],
)]
#[case::restart_policy(
    &format!("{ONE_CONTAINER}  restartPolicy: Sometimes\n"),
    &["spec.restartPolicy: Unsupported value: \"Sometimes\": supported values: \"Always\", \"OnFailure\", \"Never\""],
)]
#[case::dns_policy(
    &format!("{ONE_CONTAINER}  dnsPolicy: Google\n"),
    &["spec.dnsPolicy: Unsupported value: \"Google\": supported values: \"ClusterFirstWithHostNet\", \"ClusterFirst\", \"Default\", \"None\""],
)]
#[case::dns_none_needs_config(
    &format!("{ONE_CONTAINER}  dnsPolicy: None\n"),
    &["spec.dnsConfig: Required value: must provide `dnsConfig` when `dnsPolicy` is None"],
)]
#[case::active_deadline(
    &format!("{ONE_CONTAINER}  activeDeadlineSeconds: 0\n"),
    &["spec.activeDeadlineSeconds: Invalid value: 0: must be between 1 and 2147483647, inclusive"],
)]
#[case::hostname(
    &format!("{ONE_CONTAINER}  hostname: My_Host\n"),
    &["spec.hostname: Invalid value: \"My_Host\": <label>"],
)]
#[case::ephemeral(
    &format!("{ONE_CONTAINER}  ephemeralContainers: [{{name: debug, image: i}}]\n"),
    &["spec.ephemeralContainers: Forbidden: cannot be set on create"],
)]
#[case::env(
    "  containers: [{name: a, image: i, env: [{value: x}, {name: \"A=B\"}, {name: C, value: x, valueFrom: {fieldRef: {fieldPath: metadata.name}}}]}]\n",
    &[
        "spec.containers[0].env[0].name: Required value",
        "spec.containers[0].env[1].name: Invalid value: \"A=B\": a valid environment variable name must consist only of printable ASCII characters other than '='",
        "spec.containers[0].env[2].valueFrom: Invalid value: \"\": may not be specified when `value` is not empty",
    ],
)]
fn container_rules(#[case] spec: &str, #[case] expected: &[&str]) {
    assert_eq!(errors(&with_spec(spec)), expand(expected));
}

#[rstest]
#[case::container_port_required(
    "  containers: [{name: a, image: i, ports: [{hostPort: 80}]}]\n",
    &["spec.containers[0].ports[0].containerPort: Required value"],
)]
#[case::container_port_range(
    "  containers: [{name: a, image: i, ports: [{containerPort: 70000}, {containerPort: -1}]}]\n",
    &[
        "spec.containers[0].ports[0].containerPort: Invalid value: 70000: must be between 1 and 65535, inclusive",
        "spec.containers[0].ports[1].containerPort: Invalid value: -1: must be between 1 and 65535, inclusive",
    ],
)]
#[case::host_port_range(
    "  containers: [{name: a, image: i, ports: [{containerPort: 80, hostPort: 65536}]}]\n",
    &["spec.containers[0].ports[0].hostPort: Invalid value: 65536: must be between 1 and 65535, inclusive"],
)]
#[case::protocol(
    "  containers: [{name: a, image: i, ports: [{containerPort: 80, protocol: ICMP}, {containerPort: 81, protocol: tcp}]}]\n",
    &[
        "spec.containers[0].ports[0].protocol: Unsupported value: \"ICMP\": supported values: \"SCTP\", \"TCP\", \"UDP\"",
        "spec.containers[0].ports[1].protocol: Unsupported value: \"tcp\": supported values: \"SCTP\", \"TCP\", \"UDP\"",
    ],
)]
#[case::host_ip(
    "  containers: [{name: a, image: i, ports: [{containerPort: 80, hostIP: localhost}]}]\n",
    &["spec.containers[0].ports[0].hostIP: Invalid value: \"localhost\": must be a valid IP address"],
)]
#[case::port_names(
    "  containers: [{name: a, image: i, ports: [{name: http, containerPort: 80}, {name: http, containerPort: 81}, {name: \"8080\", containerPort: 82}]}]\n",
    &[
        "spec.containers[0].ports[1].name: Duplicate value: \"http\"",
        "spec.containers[0].ports[2].name: Invalid value: \"8080\": must contain at least one letter (a-z)",
    ],
)]
#[case::duplicate_host_port(
    "  containers:\n  - {name: a, image: i, ports: [{containerPort: 80, hostPort: 8080}]}\n  - {name: b, image: i, ports: [{containerPort: 81, hostPort: 8080, protocol: TCP}, {containerPort: 82, hostPort: 8080, protocol: UDP}]}\n",
    &["spec.containers[1].ports[0].hostPort: Duplicate value: \"TCP//8080\""],
)]
#[case::host_network_ports(
    "  hostNetwork: true\n  containers: [{name: a, image: i, ports: [{containerPort: 80, hostPort: 8080}, {containerPort: 81}]}]\n",
    &["spec.containers[0].ports[0].containerPort: Invalid value: 80: must match `hostPort` when `hostNetwork` is true"],
)]
fn port_rules(#[case] spec: &str, #[case] expected: &[&str]) {
    assert_eq!(errors(&with_spec(spec)), expand(expected));
}

#[rstest]
#[case::volume_name_required(
    &format!("{ONE_CONTAINER}  volumes: [{{emptyDir: {{}}}}]\n"),
    &["spec.volumes[0].name: Required value"],
)]
#[case::volume_name_label(
    &format!("{ONE_CONTAINER}  volumes: [{{name: My_Data, emptyDir: {{}}}}]\n"),
    &["spec.volumes[0].name: Invalid value: \"My_Data\": <label>"],
)]
#[case::volume_name_unique(
    &format!("{ONE_CONTAINER}  volumes: [{{name: d, emptyDir: {{}}}}, {{name: d, emptyDir: {{}}}}]\n"),
    &["spec.volumes[1].name: Duplicate value: \"d\""],
)]
#[case::volume_needs_a_source(
    &format!("{ONE_CONTAINER}  volumes: [{{name: d}}]\n"),
    &["spec.volumes[0]: Required value: must specify a volume type"],
)]
#[case::volume_one_source(
    &format!("{ONE_CONTAINER}  volumes: [{{name: d, emptyDir: {{}}, hostPath: {{path: /x}}, configMap: {{name: c}}}}]\n"),
    &[
        "spec.volumes[0].hostPath: Forbidden: may not specify more than 1 volume type",
        "spec.volumes[0].configMap: Forbidden: may not specify more than 1 volume type",
    ],
)]
#[case::host_path(
    &format!("{ONE_CONTAINER}  volumes: [{{name: a, hostPath: {{path: \"\"}}}}, {{name: b, hostPath: {{path: /x/../etc, type: Pipe}}}}]\n"),
    &[
        "spec.volumes[0].hostPath.path: Required value",
        "spec.volumes[1].hostPath.path: Invalid value: \"/x/../etc\": must not contain '..'",
        "spec.volumes[1].hostPath.type: Unsupported value: \"Pipe\": supported values: \"\", \"BlockDevice\", \"CharDevice\", \"Directory\", \"DirectoryOrCreate\", \"File\", \"FileOrCreate\", \"Socket\"",
    ],
)]
#[case::config_map_and_secret_names(
    &format!("{ONE_CONTAINER}  volumes: [{{name: a, configMap: {{}}}}, {{name: b, secret: {{}}}}]\n"),
    &["spec.volumes[0].configMap.name: Required value", "spec.volumes[1].secret.secretName: Required value"],
)]
#[case::mount_of_unknown_volume(
    "  containers: [{name: a, image: i, volumeMounts: [{name: data, mountPath: /data}]}]\n",
    &["spec.containers[0].volumeMounts[0].name: Not found: \"data\""],
)]
#[case::mount_of_invalid_volume(
    "  containers: [{name: a, image: i, volumeMounts: [{name: d, mountPath: /data}]}]\n  volumes: [{name: d}]\n",
    &["spec.volumes[0]: Required value: must specify a volume type", "spec.containers[0].volumeMounts[0].name: Not found: \"d\""],
)]
#[case::mount_paths(
    "  containers: [{name: a, image: i, volumeMounts: [{name: d}, {name: d, mountPath: data}, {name: d, mountPath: data}]}]\n  volumes: [{name: d, emptyDir: {}}]\n",
    &[
        "spec.containers[0].volumeMounts[0].mountPath: Required value",
        "spec.containers[0].volumeMounts[1].mountPath: Invalid value: \"data\": must be an absolute path",
        "spec.containers[0].volumeMounts[2].mountPath: Invalid value: \"data\": must be an absolute path",
        "spec.containers[0].volumeMounts[2].mountPath: Invalid value: \"data\": must be unique",
    ],
)]
#[case::sub_path(
    "  containers: [{name: a, image: i, volumeMounts: [{name: d, mountPath: /a, subPath: /abs}, {name: d, mountPath: /b, subPath: x/../..}]}]\n  volumes: [{name: d, emptyDir: {}}]\n",
    &[
        "spec.containers[0].volumeMounts[0].subPath: Invalid value: \"/abs\": must be a relative path",
        "spec.containers[0].volumeMounts[1].subPath: Invalid value: \"x/../..\": must not contain '..'",
    ],
)]
#[case::mount_propagation(
    "  containers: [{name: a, image: i, volumeMounts: [{name: d, mountPath: /a, mountPropagation: Shared}, {name: d, mountPath: /b, mountPropagation: Bidirectional}]}]\n  volumes: [{name: d, emptyDir: {}}]\n",
    &[
        "spec.containers[0].volumeMounts[0].mountPropagation: Unsupported value: \"Shared\": supported values: \"Bidirectional\", \"HostToContainer\", \"None\"",
        "spec.containers[0].volumeMounts[1].mountPropagation: Forbidden: Bidirectional mount propagation is available only to privileged containers",
    ],
)]
fn volume_rules(#[case] spec: &str, #[case] expected: &[&str]) {
    assert_eq!(errors(&with_spec(spec)), expand(expected));
}

#[test]
fn name_length_is_limited() {
    let long = "a".repeat(254);
    let yaml = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {long}}}\nspec:\n  containers: [{{name: a, image: i}}]\n"
    );
    assert_eq!(
        errors(&yaml),
        [format!(
            "metadata.name: Invalid value: \"{long}\": must be no more than 253 characters"
        )]
    );
}

#[test]
fn every_error_of_a_pod_is_reported() {
    let yaml = "apiVersion: v1\nkind: Pod\nmetadata: {name: Web}\nspec:\n  restartPolicy: Sometimes\n  containers: [{name: a}, {name: a, image: i, ports: [{containerPort: 0}]}]\n";
    let found = errors(yaml);
    assert_eq!(found.len(), 5, "{found:#?}");
    assert!(found[0].starts_with("metadata.name: Invalid value: \"Web\""));
    assert_eq!(
        found[1..],
        [
            "spec.containers[0].image: Required value",
            "spec.containers[1].name: Duplicate value: \"a\"",
            "spec.containers[1].ports[0].containerPort: Required value",
            "spec.restartPolicy: Unsupported value: \"Sometimes\": supported values: \"Always\", \"OnFailure\", \"Never\"",
        ]
    );
}

#[test]
fn annotations_size_is_limited() {
    let big = "x".repeat(256 * 1024);
    let yaml = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: web, annotations: {{note: {big}}}}}\nspec:\n  containers: [{{name: a, image: i}}]\n"
    );
    assert_eq!(
        errors(&yaml),
        ["metadata.annotations: Too long: may not be more than 262144 bytes"]
    );
}
