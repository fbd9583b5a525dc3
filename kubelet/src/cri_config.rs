//! What the kubelet asks a CRI runtime for, from a pod: the translation of a
//! validated, named `v1` pod into `PodSandboxConfig` and `ContainerConfig`,
//! as upstream's `kuberuntime`, `qos` and `cm` packages make them.
//!
//! Everything here is pure: what the node knows (its addresses, memory,
//! cgroup driver, resolver) comes in [`NodeContext`], what the pod worker
//! knows (the pod's IPs, attempts, restart counts) in [`PodContext`].
//!
//! - [`quantity`]: `500m`, `1Gi` as numbers, rounded up as upstream;
//! - [`resources`]: requests and limits → CPU shares and quota, memory limit,
//!   OOM score adjustment;
//! - [`qos`]: the pod's QoS class and cgroup parent (cgroupfs and systemd);
//! - [`dns`]: `dnsPolicy` and `dnsConfig` → the resolver config;
//! - [`env`](mod@env): the environment, downward API and `$(VAR)` expansion;
//! - [`sandbox`]: the sandbox config (namespaces, ports, labels, sysctls);
//! - [`container`]: a container's config (command, env, resources, security).
//!
//! Left to later: volumes and mounts, devices, ConfigMap/Secret references
//! (refused, see [`env`](mod@env)), user namespaces (refused), AppArmor and SELinux,
//! the sandbox's pod-level resources and overhead, swap, hugepages, memory
//! QoS, CPU and memory managers, `runAsNonRoot` checks against the image.

pub mod container;
pub mod dns;
pub mod downward;
pub mod env;
pub mod qos;
pub mod quantity;
pub mod resources;
pub mod sandbox;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Pod;

pub use container::{ContainerError, container_config};
pub use dns::DnsSettings;
pub use qos::{CgroupDriver, QosClass, cgroup_parent, qos_class, under_root};
pub use sandbox::{SandboxError, sandbox_config};

/// The node's allocatable resources: what a container without a limit may
/// use, and what the downward API reports as its limit.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Allocatable {
    /// CPU, in millicores.
    pub cpu_millis: i64,
    /// Memory, in bytes.
    pub memory: i64,
    /// Ephemeral storage, in bytes.
    pub ephemeral_storage: i64,
}

/// What the translation needs to know of the node.
#[derive(Clone, Debug)]
pub struct NodeContext {
    /// The node's name, for pods without `spec.nodeName`.
    pub node_name: String,
    /// The node's addresses, the primary first (`status.hostIP(s)`).
    pub host_ips: Vec<IpAddr>,
    /// The machine's memory in bytes, against which burstable containers'
    /// OOM scores are computed.
    pub memory_capacity: i64,
    /// The node's allocatable resources.
    pub allocatable: Allocatable,
    /// The cgroup driver shared with the runtime.
    pub cgroup_driver: CgroupDriver,
    /// Where `kubepods` is (`cgroupRoot`, cgroupfs driver only): `/berth`
    /// puts pods in `/berth/kubepods/…`; empty is the root.
    pub cgroup_root: String,
    /// Where pods' log directories go (`/var/log/pods`).
    pub pod_log_root: PathBuf,
    /// Where `Localhost` seccomp profiles are (`/var/lib/kubelet/seccomp`).
    pub seccomp_profile_root: PathBuf,
    /// Whether containers without a seccomp profile get the runtime's default
    /// (upstream's `seccompDefault`) instead of none.
    pub seccomp_default: bool,
    /// The cluster DNS servers; none for a standalone node.
    pub cluster_dns: Vec<IpAddr>,
    /// The cluster domain (`cluster.local`).
    pub cluster_domain: String,
    /// The host's resolver, for `dnsPolicy: Default`; empty leaves it to the runtime.
    pub host_dns: DnsSettings,
    /// Where ConfigMaps and Secrets are read from, by volumes and by `env`
    /// (`<dir>/{configmaps,secrets}/<namespace>/<name>/<key>`).
    pub config_dir: PathBuf,
}

impl Default for NodeContext {
    fn default() -> Self {
        Self {
            node_name: String::new(),
            host_ips: Vec::new(),
            memory_capacity: 0,
            allocatable: Allocatable::default(),
            cgroup_driver: CgroupDriver::default(),
            cgroup_root: String::new(),
            pod_log_root: PathBuf::from("/var/log/pods"),
            seccomp_profile_root: PathBuf::from("/var/lib/kubelet/seccomp"),
            seccomp_default: false,
            cluster_dns: Vec::new(),
            cluster_domain: "cluster.local".to_owned(),
            host_dns: DnsSettings::default(),
            config_dir: Path::new(crate::volume::DEFAULT_ROOT).join("config"),
        }
    }
}

/// What the translation needs to know of one pod beyond its spec.
#[derive(Clone, Debug)]
pub struct PodContext<'a> {
    /// The pod, named and validated.
    pub pod: &'a Pod,
    /// The pod's addresses, the primary first (`status.podIP(s)`); empty
    /// before the sandbox's network is up.
    pub pod_ips: Vec<IpAddr>,
    /// How many sandboxes this pod had before this one.
    pub attempt: u32,
    /// Restart counts by container name; a container not here has not restarted.
    pub restart_counts: BTreeMap<String, u32>,
    /// Service environment variables (none for static pods).
    pub service_env: BTreeMap<String, String>,
}

impl<'a> PodContext<'a> {
    /// A first start of `pod`: no addresses, attempts or restarts.
    pub fn new(pod: &'a Pod) -> Self {
        Self {
            pod,
            pod_ips: Vec::new(),
            attempt: 0,
            restart_counts: BTreeMap::new(),
            service_env: BTreeMap::new(),
        }
    }

    /// How often the container `name` has restarted.
    pub fn restart_count(&self, name: &str) -> u32 {
        self.restart_counts.get(name).copied().unwrap_or(0)
    }
}
