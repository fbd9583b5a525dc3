//! The `PodSandboxConfig` of a pod, as upstream's `generatePodSandboxConfig`
//! builds it.

use std::collections::{BTreeSet, HashMap};

use berth_proto::v1::{
    Int64Value, LinuxPodSandboxConfig, LinuxSandboxSecurityContext, NamespaceMode, NamespaceOption,
    PodSandboxConfig, PodSandboxMetadata, PortMapping, Protocol, SecurityProfile, UserNamespace,
    security_profile::ProfileType,
};
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};
use thiserror::Error;

use super::dns::{self, DnsError};
use super::qos::{self, QosClass};
use super::resources::ResourcesError;
use super::{NodeContext, PodContext};

/// Errors of this module.
#[derive(Debug, Error)]
pub enum SandboxError {
    /// The pod has no name, namespace or UID (it did not come from the source).
    #[error("pod has no {0}; pods must be named by the static pod source first")]
    Identity(&'static str),
    /// `hostUsers: false` asks for a user namespace, which berth does not set up yet.
    #[error("pod {pod:?}: hostUsers: false (user namespaces) is not supported yet")]
    UserNamespaces {
        /// The pod's name.
        pod: String,
    },
    /// The resolver configuration.
    #[error("pod {pod:?}: {source}")]
    Dns {
        /// The pod's name.
        pod: String,
        /// What is wrong.
        source: DnsError,
    },
    /// The pod's resources, needed for its QoS class.
    #[error(transparent)]
    Resources(#[from] ResourcesError),
}

/// Label with the pod's name, on sandboxes and containers.
pub const POD_NAME_LABEL: &str = "io.kubernetes.pod.name";
/// Label with the pod's namespace.
pub const POD_NAMESPACE_LABEL: &str = "io.kubernetes.pod.namespace";
/// Label with the pod's UID.
pub const POD_UID_LABEL: &str = "io.kubernetes.pod.uid";

/// A pod's name, namespace and UID, all present.
pub(super) struct Identity<'a> {
    pub name: &'a str,
    pub namespace: &'a str,
    pub uid: &'a str,
}

impl<'a> Identity<'a> {
    pub(super) fn of(pod: &'a Pod) -> Result<Self, SandboxError> {
        let field = |value: &'a Option<String>, what| {
            value
                .as_deref()
                .filter(|v| !v.is_empty())
                .ok_or(SandboxError::Identity(what))
        };
        Ok(Self {
            name: field(&pod.metadata.name, "name")?,
            namespace: field(&pod.metadata.namespace, "namespace")?,
            uid: field(&pod.metadata.uid, "uid")?,
        })
    }

    /// The labels every sandbox and container of the pod carries.
    pub(super) fn labels(&self) -> HashMap<String, String> {
        HashMap::from([
            (POD_NAME_LABEL.to_owned(), self.name.to_owned()),
            (POD_NAMESPACE_LABEL.to_owned(), self.namespace.to_owned()),
            (POD_UID_LABEL.to_owned(), self.uid.to_owned()),
        ])
    }
}

/// The sandbox config of the pod in `ctx` on `node`.
///
/// `log_directory` is `<log root>/<namespace>_<name>_<uid>`; containers log
/// below it. The sandbox always runs with the runtime's default seccomp
/// profile (upstream's choice, so that a pod's own profile may be stricter
/// than what the pause process needs).
pub fn sandbox_config(
    ctx: &PodContext<'_>,
    node: &NodeContext,
) -> Result<PodSandboxConfig, SandboxError> {
    let pod = ctx.pod;
    let id = Identity::of(pod)?;
    let default_spec = PodSpec::default();
    let spec = pod.spec.as_ref().unwrap_or(&default_spec);
    if spec.host_users == Some(false) {
        return Err(SandboxError::UserNamespaces {
            pod: id.name.to_owned(),
        });
    }
    let host_network = spec.host_network.unwrap_or(false);
    // With the host's network the pod has the host's UTS namespace and name.
    let hostname = if host_network {
        String::new()
    } else {
        spec.hostname
            .clone()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| id.name.to_owned())
    };
    let dns_config = dns::dns_config(pod, node).map_err(|source| SandboxError::Dns {
        pod: id.name.to_owned(),
        source,
    })?;

    let mut labels: HashMap<String, String> = pod
        .metadata
        .labels
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    labels.extend(id.labels());
    let annotations = pod
        .metadata
        .annotations
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();

    let qos = qos::qos_class(pod)?;
    Ok(PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: id.name.to_owned(),
            uid: id.uid.to_owned(),
            namespace: id.namespace.to_owned(),
            attempt: ctx.attempt,
        }),
        hostname,
        log_directory: pod_log_dir(node, &id),
        dns_config,
        port_mappings: port_mappings(&spec.containers),
        labels,
        annotations,
        linux: Some(linux_config(spec, &id, qos, node)),
        windows: None,
    })
}

pub(super) fn pod_log_dir(node: &NodeContext, id: &Identity<'_>) -> String {
    node.pod_log_root
        .join(format!("{}_{}_{}", id.namespace, id.name, id.uid))
        .to_string_lossy()
        .into_owned()
}

fn linux_config(
    spec: &PodSpec,
    id: &Identity<'_>,
    qos: QosClass,
    node: &NodeContext,
) -> LinuxPodSandboxConfig {
    let sc = spec.security_context.as_ref();
    let mut supplemental_groups: Vec<i64> = sc.and_then(|s| s.fs_group).into_iter().collect();
    supplemental_groups.extend(
        sc.iter()
            .flat_map(|s| s.supplemental_groups.iter().flatten()),
    );
    LinuxPodSandboxConfig {
        // systemd places slices itself: the root is a cgroupfs path.
        cgroup_parent: match node.cgroup_driver {
            qos::CgroupDriver::Cgroupfs => qos::under_root(
                &node.cgroup_root,
                qos::cgroup_parent(qos, id.uid, node.cgroup_driver),
            ),
            qos::CgroupDriver::Systemd => qos::cgroup_parent(qos, id.uid, node.cgroup_driver),
        },
        security_context: Some(LinuxSandboxSecurityContext {
            namespace_options: Some(namespace_options(spec)),
            run_as_user: sc
                .and_then(|s| s.run_as_user)
                .map(|value| Int64Value { value }),
            run_as_group: sc
                .and_then(|s| s.run_as_group)
                .map(|value| Int64Value { value }),
            supplemental_groups,
            privileged: has_privileged_container(spec),
            seccomp: Some(SecurityProfile {
                profile_type: ProfileType::RuntimeDefault.into(),
                localhost_ref: String::new(),
            }),
            ..LinuxSandboxSecurityContext::default()
        }),
        sysctls: sc
            .iter()
            .flat_map(|s| s.sysctls.iter().flatten())
            .map(|s| (s.name.clone(), s.value.clone()))
            .collect(),
        ..LinuxPodSandboxConfig::default()
    }
}

/// The namespaces of a pod's sandbox and containers: the host's network and
/// IPC on request, else the pod's; the host's PID namespace on request, the
/// pod's when processes are shared, else each container its own.
pub fn namespace_options(spec: &PodSpec) -> NamespaceOption {
    let on = |flag: Option<bool>| flag.unwrap_or(false);
    let mode = |host: bool| {
        if host {
            NamespaceMode::Node
        } else {
            NamespaceMode::Pod
        }
    };
    let pid = if on(spec.host_pid) {
        NamespaceMode::Node
    } else if on(spec.share_process_namespace) {
        NamespaceMode::Pod
    } else {
        NamespaceMode::Container
    };
    NamespaceOption {
        network: mode(on(spec.host_network)).into(),
        pid: pid.into(),
        ipc: mode(on(spec.host_ipc)).into(),
        target_id: String::new(),
        // The host's user namespace: `hostUsers: false` is refused above.
        userns_options: Some(UserNamespace {
            mode: NamespaceMode::Node.into(),
            ..UserNamespace::default()
        }),
    }
}

fn has_privileged_container(spec: &PodSpec) -> bool {
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .any(|c| {
            c.security_context
                .as_ref()
                .and_then(|s| s.privileged)
                .unwrap_or(false)
        })
}

/// The port mappings of the pod's (not init) containers: every declared port,
/// as upstream passes them; the runtime's port mapping skips those without a
/// host port. A port whose name (or, unnamed, its family, protocol, host IP
/// and ports) repeats within a container is dropped, as upstream.
pub fn port_mappings(containers: &[Container]) -> Vec<PortMapping> {
    let mut mappings = Vec::new();
    for container in containers {
        let mut names = BTreeSet::new();
        for port in container.ports.iter().flatten() {
            let protocol = port.protocol.as_deref().unwrap_or("TCP");
            let host_ip = port.host_ip.clone().unwrap_or_default();
            let host_port = port.host_port.unwrap_or(0);
            let name = match port.name.as_deref() {
                Some(n) if !n.is_empty() => n.to_owned(),
                _ => {
                    let family = if host_ip.is_empty() {
                        "any"
                    } else if host_ip.contains(':') {
                        "v6"
                    } else {
                        "v4"
                    };
                    format!(
                        "{family}-{protocol}-{host_ip}:{}:{host_port}",
                        port.container_port
                    )
                }
            };
            if !names.insert(name) {
                continue;
            }
            let protocol = match protocol {
                "UDP" => Protocol::Udp,
                "SCTP" => Protocol::Sctp,
                _ => Protocol::Tcp,
            };
            mappings.push(PortMapping {
                protocol: protocol.into(),
                container_port: port.container_port,
                host_port,
                host_ip,
            });
        }
    }
    mappings
}
