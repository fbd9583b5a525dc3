//! The cgroup v2 (unified) manager.
//!
//! The mount is explicit (cgroups-rs's v2 hierarchy is hard-wired to
//! `/sys/fs/cgroup`, which rules out hybrid hosts' `unified` mount), so
//! directories are ours; typed writes (memory, cpu, cpuset, pids, freezer)
//! go through cgroups-rs controllers built on our directory. The device
//! filter, `io.*`, `unified` and the frozen-state wait are ours too: cgroups-rs
//! has no v2 device support, writes `io.bfq.weight` only, cannot write
//! arbitrary keys from outside the crate and reads `cgroup.freeze` (the
//! request) instead of `cgroup.events` (the outcome).

use std::path::{Path, PathBuf};

use cgroups_rs::fs::cpu::CpuController;
use cgroups_rs::fs::cpuset::CpuSetController;
use cgroups_rs::fs::freezer::FreezerController;
use cgroups_rs::fs::memory::MemController;
use cgroups_rs::fs::pid::PidController;
use oci_spec::runtime::{LinuxBlockIo, LinuxCpu, LinuxMemory, LinuxResources};

use super::common::{self, blkio_weight_to_io_weight, cpu_shares_to_weight};
use super::devices;
use super::fsutil::{self, keyed_value, via_rs};
use super::stats::{self, CgroupStats};
use super::{Cgroup, CgroupError};

/// Keys of `linux.resources.unified` that are not resources.
const FORBIDDEN_UNIFIED: [&str; 5] = [
    "cgroup.procs",
    "cgroup.threads",
    "cgroup.subtree_control",
    "cgroup.kill",
    "cgroup.freeze",
];

/// A container cgroup in a cgroup2 hierarchy.
#[derive(Debug, Clone)]
pub(crate) struct V2Cgroup {
    /// The cgroup2 mount point.
    mount: PathBuf,
    /// `<mount>/<berth parent>`.
    base: PathBuf,
    /// `<base>/<relative>`: the container's cgroup.
    leaf: PathBuf,
}

impl V2Cgroup {
    pub(crate) fn new(mount: &Path, parent: &Path, relative: &Path) -> Self {
        let base = mount.join(parent);
        Self {
            mount: mount.to_path_buf(),
            leaf: base.join(relative),
            base,
        }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.leaf.join(name)
    }

    /// Enable every available controller for the children of each directory
    /// from berth's parent down to the leaf's parent. Directories above
    /// berth's parent belong to the host and are left alone.
    fn enable_controllers(&self) -> Result<(), CgroupError> {
        let mut chain: Vec<&Path> = self
            .leaf
            .ancestors()
            .skip(1)
            .take_while(|p| p.starts_with(&self.base))
            .collect();
        chain.reverse();
        for dir in chain {
            let available = fsutil::read(&dir.join("cgroup.controllers"))?;
            let control = dir.join("cgroup.subtree_control");
            let enabled = fsutil::read(&control)?;
            let missing: Vec<&str> = available
                .split_whitespace()
                .filter(|c| !enabled.split_whitespace().any(|e| e == *c))
                .collect();
            if missing.is_empty() {
                continue;
            }
            let all: Vec<String> = missing.iter().map(|c| format!("+{c}")).collect();
            if fsutil::write("cgroup.subtree_control", &control, &all.join(" ")).is_err() {
                // One refusing controller must not block the others; a
                // resource that needs a missing one fails in apply, naming
                // the file.
                for c in missing {
                    if let Err(e) =
                        fsutil::write("cgroup.subtree_control", &control, &format!("+{c}"))
                    {
                        tracing::debug!(error = %e, controller = c, "controller not enabled");
                    }
                }
            }
        }
        Ok(())
    }

    fn apply_cpu(&self, cpu: &LinuxCpu) -> Result<(), CgroupError> {
        if let Some(cpus) = cpu.cpus().as_deref().filter(|s| !s.is_empty()) {
            let c = CpuSetController::new(self.leaf.clone(), self.mount.clone(), true);
            via_rs(
                common::F_CPUS,
                self.file("cpuset.cpus"),
                cpus,
                c.set_cpus(cpus),
            )?;
        }
        if let Some(mems) = cpu.mems().as_deref().filter(|s| !s.is_empty()) {
            let c = CpuSetController::new(self.leaf.clone(), self.mount.clone(), true);
            via_rs(
                common::F_MEMS,
                self.file("cpuset.mems"),
                mems,
                c.set_mems(mems),
            )?;
        }
        let c = CpuController::new(self.leaf.clone(), self.mount.clone(), true);
        if let Some(shares) = cpu.shares().filter(|&s| s != 0) {
            let weight = cpu_shares_to_weight(shares);
            via_rs(
                common::F_SHARES,
                self.file("cpu.weight"),
                weight,
                c.set_shares(weight),
            )?;
        }
        let quota = cpu.quota().filter(|&q| q != 0);
        let period = cpu.period().filter(|&p| p != 0);
        if quota.is_some() || period.is_some() {
            // Reads cpu.max and keeps the half that is not given; quota <= 0
            // becomes "max".
            let field = if quota.is_some() {
                common::F_QUOTA
            } else {
                common::F_PERIOD
            };
            let shown = format!(
                "{} {}",
                quota.map_or("(current)".to_string(), |q| q.to_string()),
                period.map_or("(current)".to_string(), |p| p.to_string())
            );
            via_rs(
                field,
                self.file("cpu.max"),
                shown,
                c.set_cfs_quota_and_period(quota, period),
            )?;
        }
        if let Some(burst) = cpu.burst() {
            fsutil::write(
                common::F_BURST,
                &self.file("cpu.max.burst"),
                &burst.to_string(),
            )?;
        }
        if let Some(idle) = cpu.idle() {
            fsutil::write(common::F_IDLE, &self.file("cpu.idle"), &idle.to_string())?;
        }
        for (field, set) in [
            (
                common::F_RT_RUNTIME,
                cpu.realtime_runtime().is_some_and(|r| r != 0),
            ),
            (
                common::F_RT_PERIOD,
                cpu.realtime_period().is_some_and(|p| p != 0),
            ),
        ] {
            if set {
                return Err(CgroupError::Unsupported {
                    field: field.to_string(),
                    path: self.leaf.clone(),
                    reason: "cgroup v2 has no realtime CPU bandwidth control".to_string(),
                });
            }
        }
        Ok(())
    }

    fn apply_memory(&self, m: &LinuxMemory) -> Result<(), CgroupError> {
        let mc = MemController::new(self.leaf.clone(), self.mount.clone(), true);
        let limit = common::memory_value(common::F_LIMIT, m.limit())?;
        let swap = common::memory_value(common::F_SWAP, m.swap())?;
        // Validate swap before touching anything.
        let swap_max = match swap {
            0 => None,
            -1 => Some(-1),
            s if limit <= 0 => {
                return Err(CgroupError::InvalidValue {
                    field: common::F_SWAP.to_string(),
                    value: s.to_string(),
                    reason: "a swap limit needs a memory limit (linux.resources.memory.limit)"
                        .to_string(),
                });
            }
            s if s < limit => {
                return Err(CgroupError::InvalidValue {
                    field: common::F_SWAP.to_string(),
                    value: s.to_string(),
                    reason: format!("swap is memory+swap and must be >= the memory limit {limit}"),
                });
            }
            s => Some(s - limit),
        };
        if limit != 0 {
            via_rs(
                common::F_LIMIT,
                self.file("memory.max"),
                limit,
                mc.set_limit(limit),
            )?;
        }
        if let Some(v) = swap_max {
            let path = self.file("memory.swap.max");
            if path.exists() {
                via_rs(common::F_SWAP, path, v, mc.set_memswap_limit(v))?;
            } else if v != 0 && v != -1 {
                return Err(CgroupError::Unsupported {
                    field: common::F_SWAP.to_string(),
                    path,
                    reason: "swap accounting is off; swap must be unset, -1 or equal to the memory limit".to_string(),
                });
            }
        }
        match common::memory_value(common::F_RESERVATION, m.reservation())? {
            0 => {}
            -1 => fsutil::write(common::F_RESERVATION, &self.file("memory.low"), "max")?,
            r => via_rs(
                common::F_RESERVATION,
                self.file("memory.low"),
                r,
                mc.set_soft_limit(r),
            )?,
        }
        for (field, set) in [
            (common::F_SWAPPINESS, m.swappiness().is_some()),
            (common::F_OOM, m.disable_oom_killer().is_some()),
            (common::F_KERNEL_TCP, m.kernel_tcp().is_some()),
        ] {
            if set {
                tracing::warn!(field, cgroup = %self.leaf.display(), "ignored: no cgroup v2 equivalent");
            }
        }
        Ok(())
    }

    fn apply_io(&self, b: &LinuxBlockIo) -> Result<(), CgroupError> {
        if common::blkio_is_empty(b) {
            return Ok(());
        }
        // BFQ takes blkio's 1..1000 scale as is; otherwise io.weight.
        let bfq = self.file("io.bfq.weight");
        let (weight_file, convert): (PathBuf, fn(u64) -> u64) = if bfq.exists() {
            (bfq, |w| w)
        } else {
            (self.file("io.weight"), blkio_weight_to_io_weight)
        };
        if let Some(w) = b.weight().filter(|&w| w != 0) {
            let value = convert(u64::from(w)).to_string();
            fsutil::write(common::F_WEIGHT, &weight_file, &value)?;
        }
        if b.leaf_weight().is_some_and(|w| w != 0) {
            return Err(CgroupError::Unsupported {
                field: "linux.resources.blockIO.leafWeight".to_string(),
                path: self.leaf.clone(),
                reason: "cgroup v2 has no leaf weight".to_string(),
            });
        }
        for (i, wd) in b.weight_device().iter().flatten().enumerate() {
            let field = format!("linux.resources.blockIO.weightDevice[{i}]");
            let (major, minor) = common::dev_numbers(&field, wd.major(), wd.minor())?;
            if let Some(w) = wd.weight() {
                let value = format!("{major}:{minor} {}", convert(u64::from(w)));
                fsutil::write(&field, &weight_file, &value)?;
            }
        }
        let throttles = [
            (
                "throttleReadBpsDevice",
                "rbps",
                b.throttle_read_bps_device(),
            ),
            (
                "throttleWriteBpsDevice",
                "wbps",
                b.throttle_write_bps_device(),
            ),
            (
                "throttleReadIOPSDevice",
                "riops",
                b.throttle_read_iops_device(),
            ),
            (
                "throttleWriteIOPSDevice",
                "wiops",
                b.throttle_write_iops_device(),
            ),
        ];
        for (name, key, list) in throttles {
            for (i, t) in list.iter().flatten().enumerate() {
                let field = format!("linux.resources.blockIO.{name}[{i}]");
                let (major, minor) = common::dev_numbers(&field, t.major(), t.minor())?;
                let rate = if t.rate() == 0 {
                    "max".to_string()
                } else {
                    t.rate().to_string()
                };
                fsutil::write(
                    &field,
                    &self.file("io.max"),
                    &format!("{major}:{minor} {key}={rate}"),
                )?;
            }
        }
        Ok(())
    }

    /// Check `linux.resources.unified` keys: plain `controller.file` names.
    fn unified_field(key: &str) -> Result<String, CgroupError> {
        let field = format!("linux.resources.unified[{key:?}]");
        let plain = !key.is_empty()
            && key.contains('.')
            && !key.starts_with('.')
            && !key.contains('/')
            && !key.contains('\0')
            && !FORBIDDEN_UNIFIED.contains(&key);
        if plain {
            Ok(field)
        } else {
            Err(CgroupError::InvalidValue {
                field,
                value: format!("{key:?}"),
                reason: "must name a resource file of the cgroup, like \"memory.high\"".to_string(),
            })
        }
    }

    fn freezer(&self) -> FreezerController {
        FreezerController::new(self.leaf.clone(), self.mount.clone(), true)
    }

    fn frozen(&self) -> Result<bool, CgroupError> {
        let events = fsutil::read(&self.file("cgroup.events"))?;
        Ok(keyed_value(&events, "frozen") == Some(1))
    }

    fn set_frozen(&self, op: &str, frozen: bool) -> Result<(), CgroupError> {
        let fc = self.freezer();
        let value = if frozen { "1" } else { "0" };
        let request = || {
            let r = if frozen { fc.freeze() } else { fc.thaw() };
            via_rs(op, self.file("cgroup.freeze"), value, r)
        };
        request()?;
        let done = fsutil::poll_until(
            common::FREEZE_TIMEOUT,
            || Ok(self.frozen()? == frozen),
            || Ok(()),
        )?;
        if done {
            return Ok(());
        }
        if frozen {
            let _ = fc.thaw();
        }
        let last = fsutil::read(&self.file("cgroup.events")).unwrap_or_default();
        Err(CgroupError::StateTimeout {
            path: self.file("cgroup.events"),
            wanted: if frozen { "frozen" } else { "thawed" },
            waited_ms: u64::try_from(common::FREEZE_TIMEOUT.as_millis()).unwrap_or(u64::MAX),
            last: last.trim().replace('\n', ", "),
        })
    }
}

impl Cgroup for V2Cgroup {
    fn create(&self) -> Result<(), CgroupError> {
        fsutil::mkdir_p(&self.leaf)?;
        self.enable_controllers()
    }

    fn apply(&self, res: &LinuxResources) -> Result<(), CgroupError> {
        common::reject_unsupported(res, &self.mount, true)?;
        let rules = res
            .devices()
            .as_deref()
            .map(devices::normalize)
            .transpose()?;
        let mut unified: Vec<(&String, &String)> = res.unified().iter().flatten().collect();
        unified.sort();
        let unified = unified
            .into_iter()
            .map(|(k, v)| Ok((Self::unified_field(k)?, k, v)))
            .collect::<Result<Vec<_>, CgroupError>>()?;

        if let Some(cpu) = res.cpu() {
            self.apply_cpu(cpu)?;
        }
        if let Some(m) = res.memory() {
            self.apply_memory(m)?;
        }
        if let Some(max) = res.pids().and_then(|p| common::pids_max(p.limit())) {
            let c = PidController::new(self.leaf.clone(), self.mount.clone(), true);
            let shown = max.to_string();
            via_rs(
                common::F_PIDS,
                self.file("pids.max"),
                shown,
                c.set_pid_max(max),
            )?;
        }
        if let Some(b) = res.block_io() {
            self.apply_io(b)?;
        }
        for (i, h) in res.hugepage_limits().iter().flatten().enumerate() {
            let field = format!("linux.resources.hugepageLimits[{i}]");
            let size = common::page_size(&field, h.page_size())?;
            let value = if h.limit() < 0 {
                "max".to_string()
            } else {
                h.limit().to_string()
            };
            fsutil::write(&field, &self.file(&format!("hugetlb.{size}.max")), &value)?;
        }
        // Unified keys last: they override the converted values above.
        for (field, key, value) in unified {
            fsutil::write(&field, &self.file(key), value)?;
        }
        if let Some(rules) = rules {
            devices::apply_v2(&self.leaf, &rules)?;
        }
        Ok(())
    }

    fn add_process(&self, pid: i32) -> Result<(), CgroupError> {
        fsutil::add_pid(&self.leaf, pid)
    }

    fn placement(&self) -> Option<super::Placement> {
        Some(super::Placement {
            clone_into: Some(self.leaf.clone()),
            self_join: Vec::new(),
        })
    }

    fn pids(&self) -> Result<Vec<i32>, CgroupError> {
        fsutil::pids_recursive(&self.leaf)
    }

    fn freeze(&self) -> Result<(), CgroupError> {
        self.set_frozen("freeze", true)
    }

    fn thaw(&self) -> Result<(), CgroupError> {
        self.set_frozen("thaw", false)
    }

    fn is_frozen(&self) -> Result<bool, CgroupError> {
        self.frozen()
    }

    fn stats(&self) -> Result<CgroupStats, CgroupError> {
        if !self.leaf.is_dir() {
            return Err(CgroupError::NotFound {
                path: self.leaf.clone(),
            });
        }
        stats::from_v2(&|file| fsutil::read_opt(&self.file(file)))
    }

    fn oom_kills(&self) -> Result<u64, CgroupError> {
        let text = fsutil::read_opt(&self.file("memory.events"))?;
        Ok(text.and_then(|t| keyed_value(&t, "oom_kill")).unwrap_or(0))
    }

    fn destroy(&self) -> Result<(), CgroupError> {
        fsutil::remove_tree(&self.leaf)
    }

    fn paths(&self) -> Vec<PathBuf> {
        vec![self.leaf.clone()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unified_keys() {
        assert!(V2Cgroup::unified_field("memory.high").is_ok());
        for bad in [
            "",
            "memory",
            "../memory.high",
            "a/b.c",
            ".x",
            "cgroup.procs",
            "cgroup.kill",
        ] {
            let msg = V2Cgroup::unified_field(bad)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(
                msg.starts_with("linux.resources.unified["),
                "{bad:?}: {msg}"
            );
        }
    }

    #[test]
    fn paths_are_below_the_parent() {
        let cg = V2Cgroup::new(
            Path::new("/sys/fs/cgroup"),
            Path::new("berth"),
            Path::new("pod/c1"),
        );
        assert_eq!(
            cg.paths(),
            vec![PathBuf::from("/sys/fs/cgroup/berth/pod/c1")]
        );
    }
}
