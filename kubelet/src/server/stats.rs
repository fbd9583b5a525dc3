//! `/stats/summary`: the Summary API (`stats/v1alpha1`) of the node and its
//! pods, from the runtime's stats (CRI ListPodSandboxStats for the pods'
//! cgroups and networks, ListContainerStats for the containers) and,
//! for the node, `/proc` and the filesystem of the kubelet's root.
//!
//! Gathering ([`gather`]) talks to the runtime; assembling ([`summary`]) is
//! pure, so that the JSON shape is tested without one.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use berth_proto::v1;
use jiff::Timestamp;
use serde::Serialize;

use crate::cri_client::{CriClient, CriClientError};
use crate::cri_config::container::CONTAINER_NAME_LABEL;
use crate::cri_config::sandbox::{POD_NAME_LABEL, POD_NAMESPACE_LABEL, POD_UID_LABEL};

/// What stopped the stats from being gathered.
#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    #[error("asking the runtime for stats: {0}")]
    Runtime(#[from] CriClientError),
}

/// A container's memory, as the runtime reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemorySample {
    pub working_set: Option<u64>,
    pub available: Option<u64>,
    pub usage: Option<u64>,
    pub rss: Option<u64>,
    pub page_faults: Option<u64>,
    pub major_page_faults: Option<u64>,
}

/// One of the runtime's containers with its latest stats.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContainerSample {
    pub id: String,
    pub name: String,
    pub pod_name: String,
    pub pod_namespace: String,
    pub pod_uid: String,
    pub image: String,
    /// `running`, `created`, `exited`, `unknown` (upstream's label values).
    pub state: &'static str,
    /// Nanoseconds since the epoch.
    pub created_at: i64,
    /// When the stats were taken, nanoseconds since the epoch.
    pub sampled_at: i64,
    pub cpu_core_nanos: Option<u64>,
    pub cpu_nano_cores: Option<u64>,
    pub memory: Option<MemorySample>,
    pub rootfs_used: Option<u64>,
    pub rootfs_inodes_used: Option<u64>,
}

/// One network interface's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InterfaceStats {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rx_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rx_errors: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tx_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tx_errors: Option<u64>,
}

/// A pod sandbox's own stats (CRI ListPodSandboxStats): the pod's cgroup
/// and network namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SandboxSample {
    pub pod_uid: String,
    /// When the stats were taken, nanoseconds since the epoch.
    pub sampled_at: i64,
    pub cpu_core_nanos: Option<u64>,
    pub cpu_nano_cores: Option<u64>,
    pub memory: Option<MemorySample>,
    /// The default interface first, then the others.
    pub interfaces: Vec<InterfaceStats>,
    pub process_count: Option<u64>,
}

fn interface(i: &v1::NetworkInterfaceUsage) -> InterfaceStats {
    InterfaceStats {
        name: i.name.clone(),
        rx_bytes: value(&i.rx_bytes),
        rx_errors: value(&i.rx_errors),
        tx_bytes: value(&i.tx_bytes),
        tx_errors: value(&i.tx_errors),
    }
}

/// The runtime's sandbox stats, by the pod UID of their metadata.
pub fn sandbox_samples(stats: &[v1::PodSandboxStats]) -> Vec<SandboxSample> {
    stats
        .iter()
        .filter_map(|s| {
            let uid = s.attributes.as_ref()?.metadata.as_ref()?.uid.clone();
            let linux = s.linux.as_ref();
            let cpu = linux.and_then(|l| l.cpu.as_ref());
            let mem = linux.and_then(|l| l.memory.as_ref());
            let net = linux.and_then(|l| l.network.as_ref());
            let mut interfaces: Vec<InterfaceStats> = net
                .and_then(|n| n.default_interface.as_ref())
                .map(interface)
                .into_iter()
                .collect();
            for i in net.map(|n| n.interfaces.as_slice()).unwrap_or_default() {
                if !interfaces.iter().any(|x| x.name == i.name) {
                    interfaces.push(interface(i));
                }
            }
            Some(SandboxSample {
                pod_uid: uid,
                sampled_at: cpu
                    .map(|c| c.timestamp)
                    .or(mem.map(|m| m.timestamp))
                    .or(net.map(|n| n.timestamp))
                    .unwrap_or(0),
                cpu_core_nanos: cpu.and_then(|c| value(&c.usage_core_nano_seconds)),
                cpu_nano_cores: cpu.and_then(|c| value(&c.usage_nano_cores)),
                memory: mem.map(memory_sample),
                interfaces,
                process_count: linux
                    .and_then(|l| l.process.as_ref())
                    .and_then(|p| value(&p.process_count)),
            })
        })
        .collect()
}

fn memory_sample(m: &v1::MemoryUsage) -> MemorySample {
    MemorySample {
        working_set: value(&m.working_set_bytes),
        available: value(&m.available_bytes),
        usage: value(&m.usage_bytes),
        rss: value(&m.rss_bytes),
        page_faults: value(&m.page_faults),
        major_page_faults: value(&m.major_page_faults),
    }
}

fn state_name(s: i32) -> &'static str {
    match v1::ContainerState::try_from(s) {
        Ok(v1::ContainerState::ContainerCreated) => "created",
        Ok(v1::ContainerState::ContainerRunning) => "running",
        Ok(v1::ContainerState::ContainerExited) => "exited",
        _ => "unknown",
    }
}

fn value(v: &Option<v1::UInt64Value>) -> Option<u64> {
    v.as_ref().map(|v| v.value)
}

/// Joins the runtime's containers with their stats (a container the
/// runtime has no stats for is listed without them).
pub fn samples(containers: &[v1::Container], stats: &[v1::ContainerStats]) -> Vec<ContainerSample> {
    let by_id: HashMap<&str, &v1::ContainerStats> = stats
        .iter()
        .filter_map(|s| Some((s.attributes.as_ref()?.id.as_str(), s)))
        .collect();
    containers
        .iter()
        .map(|c| {
            let label = |k: &str| c.labels.get(k).cloned().unwrap_or_default();
            let st = by_id.get(c.id.as_str());
            let cpu = st.and_then(|s| s.cpu.as_ref());
            let mem = st.and_then(|s| s.memory.as_ref());
            let fs = st.and_then(|s| s.writable_layer.as_ref());
            ContainerSample {
                id: c.id.clone(),
                name: c
                    .metadata
                    .as_ref()
                    .map(|m| m.name.clone())
                    .filter(|n| !n.is_empty())
                    .unwrap_or_else(|| label(CONTAINER_NAME_LABEL)),
                pod_name: label(POD_NAME_LABEL),
                pod_namespace: label(POD_NAMESPACE_LABEL),
                pod_uid: label(POD_UID_LABEL),
                image: c
                    .image
                    .as_ref()
                    .map(|i| i.image.clone())
                    .unwrap_or_default(),
                state: state_name(c.state),
                created_at: c.created_at,
                sampled_at: cpu
                    .map(|c| c.timestamp)
                    .or(mem.map(|m| m.timestamp))
                    .unwrap_or(0),
                cpu_core_nanos: cpu.and_then(|c| value(&c.usage_core_nano_seconds)),
                cpu_nano_cores: cpu.and_then(|c| value(&c.usage_nano_cores)),
                memory: mem.map(memory_sample),
                rootfs_used: fs.and_then(|f| value(&f.used_bytes)),
                rootfs_inodes_used: fs.and_then(|f| value(&f.inodes_used)),
            }
        })
        .collect()
}

/// The runtime's containers and their stats, now.
pub async fn gather(cri: &CriClient) -> Result<Vec<ContainerSample>, StatsError> {
    let (containers, stats) =
        tokio::join!(cri.list_containers(None), cri.list_container_stats(None));
    Ok(samples(&containers?, &stats?))
}

/// The runtime's pod sandboxes' stats, now.
pub async fn gather_sandboxes(cri: &CriClient) -> Result<Vec<SandboxSample>, StatsError> {
    Ok(sandbox_samples(&cri.list_pod_sandbox_stats(None).await?))
}

// The Summary API's JSON (k8s.io/kubelet/pkg/apis/stats/v1alpha1).

#[derive(Debug, Serialize, PartialEq)]
pub struct Summary {
    pub node: NodeStats,
    pub pods: Vec<PodStats>,
}

#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodeStats {
    pub node_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuStats>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryStats>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fs: Option<FsStats>,
    pub system_containers: Vec<ContainerStats>,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CpuStats {
    pub time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage_nano_cores: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage_core_nano_seconds: Option<u64>,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MemoryStats {
    pub time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub available_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub working_set_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub page_faults: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub major_page_faults: Option<u64>,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FsStats {
    pub time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub available_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capacity_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub used_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inodes_free: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inodes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inodes_used: Option<u64>,
}

#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodRef {
    pub name: String,
    pub namespace: String,
    pub uid: String,
}

#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodStats {
    pub pod_ref: PodRef,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    pub containers: Vec<ContainerStats>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuStats>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryStats>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkStats>,
    #[serde(rename = "ephemeral-storage", skip_serializing_if = "Option::is_none")]
    pub ephemeral_storage: Option<FsStats>,
    // Upstream's one snake_case field.
    #[serde(rename = "process_stats", skip_serializing_if = "Option::is_none")]
    pub process_stats: Option<ProcessStats>,
}

/// The pod's network: its default interface's counters inline, as
/// upstream's `NetworkStats`, and every interface.
#[derive(Debug, Serialize, PartialEq)]
pub struct NetworkStats {
    pub time: String,
    #[serde(flatten)]
    pub default: InterfaceStats,
    pub interfaces: Vec<InterfaceStats>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct ProcessStats {
    pub process_count: u64,
}

#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ContainerStats {
    pub name: String,
    pub start_time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuStats>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryStats>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rootfs: Option<FsStats>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logs: Option<FsStats>,
}

/// RFC 3339 of nanoseconds since the epoch, as Go's `metav1.Time` prints.
pub fn rfc3339(nanos: i64) -> String {
    Timestamp::from_nanosecond(i128::from(nanos))
        .unwrap_or(Timestamp::UNIX_EPOCH)
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// The node's own numbers, read from `/proc` and the kubelet's root
/// filesystem.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeSample {
    pub cpu: Option<CpuStats>,
    pub memory: Option<MemoryStats>,
    pub fs: Option<FsStats>,
    pub boot_time: Option<String>,
}

/// Sums that stay None when no container reported the value.
fn sum(values: impl Iterator<Item = Option<u64>>) -> Option<u64> {
    values.fold(None, |acc, v| match (acc, v) {
        (a, None) => a,
        (None, Some(v)) => Some(v),
        (Some(a), Some(v)) => Some(a.saturating_add(v)),
    })
}

fn container_cpu(c: &ContainerSample) -> Option<CpuStats> {
    (c.cpu_core_nanos.is_some() || c.cpu_nano_cores.is_some()).then(|| CpuStats {
        time: rfc3339(c.sampled_at),
        usage_nano_cores: c.cpu_nano_cores,
        usage_core_nano_seconds: c.cpu_core_nanos,
    })
}

fn container_memory(c: &ContainerSample) -> Option<MemoryStats> {
    c.memory.as_ref().map(|m| MemoryStats {
        time: rfc3339(c.sampled_at),
        available_bytes: m.available,
        usage_bytes: m.usage,
        working_set_bytes: m.working_set,
        rss_bytes: m.rss,
        page_faults: m.page_faults,
        major_page_faults: m.major_page_faults,
    })
}

/// Log usage of a container: the size of its log file, by container ID.
pub type LogUsage = HashMap<String, u64>;

/// The Summary of `node_name`: the node, then every pod of `pods` (UID →
/// (namespace, name, start time)) with its running containers' stats — the
/// newest attempt of each container name, as upstream lists them. The pod's
/// CPU and memory are its sandbox's (the pod cgroup) when the runtime
/// reports them, else the sum of its containers'.
pub fn summary(
    node_name: &str,
    node: NodeSample,
    pods: &BTreeMap<String, (String, String, Option<String>)>,
    sandboxes: &[SandboxSample],
    containers: &[ContainerSample],
    logs: &LogUsage,
) -> Summary {
    let mut by_pod: BTreeMap<&str, BTreeMap<&str, &ContainerSample>> = BTreeMap::new();
    for c in containers {
        if !pods.contains_key(&c.pod_uid) {
            continue;
        }
        let slot = by_pod.entry(&c.pod_uid).or_default();
        match slot.get(c.name.as_str()) {
            Some(seen) if seen.created_at >= c.created_at => {}
            _ => {
                slot.insert(&c.name, c);
            }
        }
    }
    let pods = pods
        .iter()
        .map(|(uid, (namespace, name, start))| {
            let cs: Vec<&ContainerSample> = by_pod
                .get(uid.as_str())
                .map(|m| m.values().copied().collect())
                .unwrap_or_default();
            let sampled = cs.iter().map(|c| c.sampled_at).max().unwrap_or(0);
            let containers: Vec<ContainerStats> = cs
                .iter()
                .map(|c| ContainerStats {
                    name: c.name.clone(),
                    start_time: rfc3339(c.created_at),
                    cpu: container_cpu(c),
                    memory: container_memory(c),
                    rootfs: c.rootfs_used.map(|used| FsStats {
                        time: rfc3339(c.sampled_at),
                        used_bytes: Some(used),
                        inodes_used: c.rootfs_inodes_used,
                        ..FsStats::default()
                    }),
                    logs: logs.get(&c.id).map(|used| FsStats {
                        time: rfc3339(c.sampled_at),
                        used_bytes: Some(*used),
                        ..FsStats::default()
                    }),
                })
                .collect();
            let sandbox = sandboxes.iter().find(|s| s.pod_uid == *uid);
            let sandbox_cpu = sandbox
                .filter(|s| s.cpu_core_nanos.is_some() || s.cpu_nano_cores.is_some())
                .map(|s| CpuStats {
                    time: rfc3339(s.sampled_at),
                    usage_nano_cores: s.cpu_nano_cores,
                    usage_core_nano_seconds: s.cpu_core_nanos,
                });
            let sandbox_memory = sandbox.and_then(|s| {
                s.memory.as_ref().map(|m| MemoryStats {
                    time: rfc3339(s.sampled_at),
                    available_bytes: m.available,
                    usage_bytes: m.usage,
                    working_set_bytes: m.working_set,
                    rss_bytes: m.rss,
                    page_faults: m.page_faults,
                    major_page_faults: m.major_page_faults,
                })
            });
            let network = sandbox.and_then(|s| {
                let default = s.interfaces.first()?.clone();
                Some(NetworkStats {
                    time: rfc3339(s.sampled_at),
                    default,
                    interfaces: s.interfaces.clone(),
                })
            });
            let process_stats = sandbox
                .and_then(|s| s.process_count)
                .map(|process_count| ProcessStats { process_count });
            let cpu = containers
                .iter()
                .any(|c| c.cpu.is_some())
                .then(|| CpuStats {
                    time: rfc3339(sampled),
                    usage_nano_cores: sum(cs.iter().map(|c| c.cpu_nano_cores)),
                    usage_core_nano_seconds: sum(cs.iter().map(|c| c.cpu_core_nanos)),
                });
            let mems: Vec<&MemorySample> = cs.iter().filter_map(|c| c.memory.as_ref()).collect();
            let memory = (!mems.is_empty()).then(|| MemoryStats {
                time: rfc3339(sampled),
                available_bytes: None,
                usage_bytes: sum(mems.iter().map(|m| m.usage)),
                working_set_bytes: sum(mems.iter().map(|m| m.working_set)),
                rss_bytes: sum(mems.iter().map(|m| m.rss)),
                page_faults: sum(mems.iter().map(|m| m.page_faults)),
                major_page_faults: sum(mems.iter().map(|m| m.major_page_faults)),
            });
            let used = sum(cs
                .iter()
                .map(|c| c.rootfs_used)
                .chain(cs.iter().map(|c| logs.get(&c.id).copied())));
            PodStats {
                pod_ref: PodRef {
                    name: name.clone(),
                    namespace: namespace.clone(),
                    uid: uid.clone(),
                },
                start_time: start.clone(),
                containers,
                cpu: sandbox_cpu.or(cpu),
                memory: sandbox_memory.or(memory),
                network,
                ephemeral_storage: used.map(|u| FsStats {
                    time: rfc3339(sampled),
                    used_bytes: Some(u),
                    ..FsStats::default()
                }),
                process_stats,
            }
        })
        .collect();
    Summary {
        node: NodeStats {
            node_name: node_name.to_owned(),
            start_time: node.boot_time,
            cpu: node.cpu,
            memory: node.memory,
            fs: node.fs,
            system_containers: Vec::new(),
        },
        pods,
    }
}

/// The node's CPU (all CPUs' busy time since boot), memory and the
/// filesystem holding `root`.
pub fn node_sample(root: &Path, now: Timestamp) -> NodeSample {
    let time = now.strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|t| u64::try_from(t).ok())
        .filter(|t| *t > 0)
        .unwrap_or(100);
    let cpu = stat.lines().find(|l| l.starts_with("cpu ")).map(|l| {
        // user nice system idle iowait irq softirq steal: busy is all but idle and iowait.
        let f: Vec<u64> = l
            .split_whitespace()
            .skip(1)
            .filter_map(|v| v.parse().ok())
            .collect();
        let busy: u64 = f
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != 3 && *i != 4 && *i < 8)
            .map(|(_, v)| *v)
            .sum();
        CpuStats {
            time: time.clone(),
            usage_nano_cores: None,
            usage_core_nano_seconds: Some(busy.saturating_mul(1_000_000_000 / ticks)),
        }
    });
    let boot_time = stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse::<i64>().ok())
        .map(|s| rfc3339(s.saturating_mul(1_000_000_000)));
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let kib = |key: &str| {
        meminfo
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|k| k.saturating_mul(1024))
    };
    let memory = kib("MemTotal:").map(|total| {
        let available = kib("MemAvailable:");
        let usage = total.saturating_sub(kib("MemFree:").unwrap_or(0));
        // As cAdvisor for the root cgroup: usage minus inactive file pages.
        let working_set = usage.saturating_sub(kib("Inactive(file):").unwrap_or(0));
        MemoryStats {
            time: time.clone(),
            available_bytes: available,
            usage_bytes: Some(usage),
            working_set_bytes: Some(working_set),
            ..MemoryStats::default()
        }
    });
    let fs = nix::sys::statvfs::statvfs(root).ok().map(|s| {
        let frag = s.fragment_size();
        FsStats {
            time,
            available_bytes: Some(s.blocks_available().saturating_mul(frag)),
            capacity_bytes: Some(s.blocks().saturating_mul(frag)),
            used_bytes: Some(
                s.blocks()
                    .saturating_sub(s.blocks_free())
                    .saturating_mul(frag),
            ),
            inodes_free: Some(s.files_free()),
            inodes: Some(s.files()),
            inodes_used: Some(s.files().saturating_sub(s.files_free())),
        }
    });
    NodeSample {
        cpu,
        memory,
        fs,
        boot_time,
    }
}
