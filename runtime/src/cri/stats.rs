//! ContainerStats, ListContainerStats, PodSandboxStats and
//! ListPodSandboxStats, from the containers' cgroups, their writable
//! layers and the pods' network interfaces.
//!
//! CPU rate (`usage_nano_cores`) is the change since the previous sample of
//! the same container, as cAdvisor and containerd compute it: the first
//! sample has none.

use std::collections::HashMap;
use std::sync::Mutex;

use berth_proto::v1;
use tonic::Status;

use super::container::decode;
use super::daemon::{Daemon, lock};
use super::pod::{decode_config, labels_match};
use super::records::now_nanos;
use crate::state::Status as EngineStatus;

/// The previous CPU sample of each container: (unix nanos, usage nanos).
#[derive(Default)]
pub struct CpuSamples(Mutex<HashMap<String, (i64, u64)>>);

impl CpuSamples {
    fn rate(&self, id: &str, now: i64, usage: u64) -> Option<u64> {
        let mut m = lock(&self.0);
        let prev = m.insert(id.to_string(), (now, usage));
        let (t0, u0) = prev?;
        let dt = now.checked_sub(t0).filter(|d| *d > 0)? as u128;
        let du = usage.checked_sub(u0)? as u128;
        Some((du * 1_000_000_000 / dt) as u64)
    }

    pub fn forget(&self, id: &str) {
        lock(&self.0).remove(id);
    }
}

fn u64v(value: u64) -> Option<v1::UInt64Value> {
    Some(v1::UInt64Value { value })
}

/// Interface counters of the network namespace `pid` is in.
fn net_dev(pid: i32) -> Vec<v1::NetworkInterfaceUsage> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/net/dev")).unwrap_or_default();
    text.lines()
        .skip(2)
        .filter_map(|l| {
            let (name, rest) = l.split_once(':')?;
            let f: Vec<u64> = rest
                .split_whitespace()
                .filter_map(|v| v.parse().ok())
                .collect();
            if f.len() < 16 {
                return None;
            }
            Some(v1::NetworkInterfaceUsage {
                name: name.trim().to_string(),
                rx_bytes: u64v(f[0]),
                rx_errors: u64v(f[2]),
                tx_bytes: u64v(f[8]),
                tx_errors: u64v(f[10]),
            })
        })
        .filter(|i| i.name != "lo")
        .collect()
}

impl Daemon {
    fn stats_of(&self, id: &str) -> Result<Option<(v1::ContainerStats, Option<i32>)>, Status> {
        let shared = self.container(id)?;
        let r = self
            .peek_container(&shared)
            .ok_or_else(|| Status::not_found(format!("container {id:?} not found")))?;
        let config = decode(&r);
        let now = now_nanos();
        let attributes = Some(v1::ContainerAttributes {
            id: r.id.clone(),
            metadata: config.metadata.clone(),
            labels: config.labels.clone(),
            annotations: config.annotations.clone(),
        });
        let snap = self.engine.state(&r.id).ok();
        let running = snap
            .as_ref()
            .filter(|s| matches!(s.status, EngineStatus::Running | EngineStatus::Paused));
        let upper = self
            .images
            .root()
            .join("snapshots")
            .join(&r.id)
            .join("upper");
        let layer = crate::image::content::disk_usage(&upper).ok();
        let writable_layer = layer.map(|u| v1::FilesystemUsage {
            timestamp: now,
            fs_id: Some(v1::FilesystemIdentifier {
                mountpoint: self.images.root().join("snapshots").display().to_string(),
            }),
            used_bytes: u64v(u.bytes),
            inodes_used: u64v(u.inodes),
        });
        let Some(snap) = running else {
            return Ok(Some((
                v1::ContainerStats {
                    attributes,
                    writable_layer,
                    ..Default::default()
                },
                None,
            )));
        };
        let cg = match self.engine.stats(&r.id) {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(id = %r.id, error = %e, "container stats");
                return Ok(None);
            }
        };
        let cpu = v1::CpuUsage {
            timestamp: now,
            usage_core_nano_seconds: u64v(cg.cpu.usage_total_ns),
            usage_nano_cores: self
                .cpu_samples
                .rate(&r.id, now, cg.cpu.usage_total_ns)
                .and_then(u64v),
            psi: None,
        };
        let memory = v1::MemoryUsage {
            timestamp: now,
            working_set_bytes: u64v(cg.memory.working_set_bytes),
            available_bytes: cg
                .memory
                .limit_bytes
                .map(|l| l.saturating_sub(cg.memory.working_set_bytes))
                .and_then(u64v),
            usage_bytes: u64v(cg.memory.usage_bytes),
            rss_bytes: u64v(cg.memory.rss_bytes),
            page_faults: None,
            major_page_faults: None,
            psi: None,
        };
        let swap = v1::SwapUsage {
            timestamp: now,
            swap_available_bytes: cg
                .memory
                .swap_limit_bytes
                .map(|l| l.saturating_sub(cg.memory.swap_usage_bytes))
                .and_then(u64v),
            swap_usage_bytes: u64v(cg.memory.swap_usage_bytes),
        };
        Ok(Some((
            v1::ContainerStats {
                attributes,
                cpu: Some(cpu),
                memory: Some(memory),
                writable_layer,
                swap: Some(swap),
                io: None,
            },
            Some(snap.state.pid),
        )))
    }

    pub fn container_stats(&self, id: &str) -> Result<v1::ContainerStats, Status> {
        self.stats_of(id)?
            .map(|(s, _)| s)
            .ok_or_else(|| Status::not_found(format!("no stats for container {id}")))
    }

    pub fn list_container_stats(
        &self,
        filter: Option<v1::ContainerStatsFilter>,
    ) -> Vec<v1::ContainerStats> {
        let mut out = Vec::new();
        for c in self.all_containers() {
            let Some(r) = self.peek_container(&c) else {
                continue;
            };
            if let Some(f) = &filter {
                if !f.id.is_empty() && !r.id.starts_with(&f.id) {
                    continue;
                }
                if !f.pod_sandbox_id.is_empty() && !r.sandbox_id.starts_with(&f.pod_sandbox_id) {
                    continue;
                }
                if !labels_match(&f.label_selector, &decode(&r).labels) {
                    continue;
                }
            }
            if let Ok(Some((s, _))) = self.stats_of(&r.id) {
                out.push(s);
            }
        }
        out
    }

    pub fn pod_sandbox_stats(&self, id: &str) -> Result<v1::PodSandboxStats, Status> {
        let shared = self.sandbox(id)?;
        let r = self
            .peek_sandbox(&shared)
            .ok_or_else(|| Status::not_found(format!("pod sandbox {id:?} not found")))?;
        let config = decode_config(&r);
        let now = now_nanos();
        let mut containers = Vec::new();
        // A process in the pod's network namespace (the pod's init is not).
        let mut pid = None;
        let (mut cpu, mut rate, mut ws, mut usage, mut rss, mut procs) =
            (0u64, None::<u64>, 0u64, 0u64, 0u64, 0u64);
        for c in self.containers_of(&r.id) {
            let Some(cid) = self.peek_container(&c).map(|r| r.id) else {
                continue;
            };
            if let Ok(Some((s, p))) = self.stats_of(&cid) {
                if let Some(cu) = &s.cpu {
                    cpu += cu.usage_core_nano_seconds.as_ref().map_or(0, |v| v.value);
                    if let Some(n) = &cu.usage_nano_cores {
                        rate = Some(rate.unwrap_or(0) + n.value);
                    }
                }
                if let Some(m) = &s.memory {
                    ws += m.working_set_bytes.as_ref().map_or(0, |v| v.value);
                    usage += m.usage_bytes.as_ref().map_or(0, |v| v.value);
                    rss += m.rss_bytes.as_ref().map_or(0, |v| v.value);
                }
                if let Some(p) = p {
                    pid = pid.or(Some(p));
                    procs += self.engine.pids(&cid).map(|v| v.len() as u64).unwrap_or(0);
                }
                containers.push(s);
            }
        }
        let network = match (pid, r.namespaces.net.is_some()) {
            (Some(p), true) => {
                let ifaces = net_dev(p);
                Some(v1::NetworkUsage {
                    timestamp: now,
                    default_interface: ifaces
                        .iter()
                        .find(|i| i.name == super::network::IFNAME)
                        .cloned(),
                    interfaces: ifaces,
                })
            }
            _ => None,
        };
        Ok(v1::PodSandboxStats {
            attributes: Some(v1::PodSandboxAttributes {
                id: r.id.clone(),
                metadata: config.metadata.clone(),
                labels: config.labels.clone(),
                annotations: config.annotations.clone(),
            }),
            linux: Some(v1::LinuxPodSandboxStats {
                cpu: Some(v1::CpuUsage {
                    timestamp: now,
                    usage_core_nano_seconds: u64v(cpu),
                    usage_nano_cores: rate.and_then(u64v),
                    psi: None,
                }),
                memory: Some(v1::MemoryUsage {
                    timestamp: now,
                    working_set_bytes: u64v(ws),
                    usage_bytes: u64v(usage),
                    rss_bytes: u64v(rss),
                    ..Default::default()
                }),
                network,
                process: Some(v1::ProcessUsage {
                    timestamp: now,
                    process_count: u64v(procs),
                }),
                containers,
                io: None,
            }),
            windows: None,
        })
    }

    pub fn list_pod_sandbox_stats(
        &self,
        filter: Option<v1::PodSandboxStatsFilter>,
    ) -> Vec<v1::PodSandboxStats> {
        let mut out = Vec::new();
        for s in self.all_sandboxes() {
            let Some(r) = self.peek_sandbox(&s) else {
                continue;
            };
            if let Some(f) = &filter {
                if !f.id.is_empty() && !r.id.starts_with(&f.id) {
                    continue;
                }
                if !labels_match(&f.label_selector, &decode_config(&r).labels) {
                    continue;
                }
            }
            if let Ok(st) = self.pod_sandbox_stats(&r.id) {
                out.push(st);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_rate_needs_two_samples() {
        let s = CpuSamples::default();
        assert_eq!(s.rate("a", 1_000_000_000, 0), None);
        // Half a core over one second.
        assert_eq!(s.rate("a", 2_000_000_000, 500_000_000), Some(500_000_000));
        // A counter that went back (a new cgroup) gives no rate.
        assert_eq!(s.rate("a", 3_000_000_000, 100), None);
        s.forget("a");
        assert_eq!(s.rate("a", 4_000_000_000, 200), None);
    }
}
