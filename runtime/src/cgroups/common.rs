//! Resource rules shared by the v1 and v2 managers.

use std::path::Path;
use std::time::Duration;

use cgroups_rs::fs::MaxValue;
use oci_spec::runtime::{LinuxBlockIo, LinuxResources};

use super::CgroupError;

pub(crate) const F_CPUS: &str = "linux.resources.cpu.cpus";
pub(crate) const F_MEMS: &str = "linux.resources.cpu.mems";
pub(crate) const F_SHARES: &str = "linux.resources.cpu.shares";
pub(crate) const F_QUOTA: &str = "linux.resources.cpu.quota";
pub(crate) const F_PERIOD: &str = "linux.resources.cpu.period";
pub(crate) const F_BURST: &str = "linux.resources.cpu.burst";
pub(crate) const F_IDLE: &str = "linux.resources.cpu.idle";
pub(crate) const F_RT_RUNTIME: &str = "linux.resources.cpu.realtimeRuntime";
pub(crate) const F_RT_PERIOD: &str = "linux.resources.cpu.realtimePeriod";
pub(crate) const F_LIMIT: &str = "linux.resources.memory.limit";
pub(crate) const F_RESERVATION: &str = "linux.resources.memory.reservation";
pub(crate) const F_SWAP: &str = "linux.resources.memory.swap";
pub(crate) const F_KERNEL_TCP: &str = "linux.resources.memory.kernelTCP";
pub(crate) const F_SWAPPINESS: &str = "linux.resources.memory.swappiness";
pub(crate) const F_OOM: &str = "linux.resources.memory.disableOOMKiller";
pub(crate) const F_PIDS: &str = "linux.resources.pids.limit";
pub(crate) const F_WEIGHT: &str = "linux.resources.blockIO.weight";

/// How long freeze/thaw may take before we give up.
pub(crate) const FREEZE_TIMEOUT: Duration = Duration::from_secs(5);

/// cgroup v1 `cpu.shares` to v2 `cpu.weight`, the conversion runc, crun and
/// systemd use: 2..=262144 maps onto 1..=10000; 0 (unset) stays 0.
pub fn cpu_shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 0;
    }
    let shares = shares.clamp(2, 262_144);
    1 + ((shares - 2) * 9999) / 262_142
}

/// cgroup v1 `blkio.weight` (10..=1000) to v2 `io.weight` (1..=10000); 0
/// (unset) stays 0.
pub fn blkio_weight_to_io_weight(weight: u64) -> u64 {
    if weight == 0 {
        return 0;
    }
    let weight = weight.clamp(10, 1000);
    1 + ((weight - 10) * 9999) / 990
}

/// A memory amount: unset is 0 ("leave alone"), -1 unlimited, other
/// negatives are errors.
pub(crate) fn memory_value(field: &str, value: Option<i64>) -> Result<i64, CgroupError> {
    match value {
        None => Ok(0),
        Some(v) if v < -1 => Err(CgroupError::InvalidValue {
            field: field.to_string(),
            value: v.to_string(),
            reason: "must be -1 (unlimited) or a number of bytes".to_string(),
        }),
        Some(v) => Ok(v),
    }
}

/// `pids.max` for an OCI limit: 0 leaves it alone, negative is "max".
pub(crate) fn pids_max(limit: i64) -> Option<MaxValue> {
    match limit {
        0 => None,
        l if l > 0 => Some(MaxValue::Value(l)),
        _ => Some(MaxValue::Max),
    }
}

pub(crate) fn blkio_is_empty(b: &LinuxBlockIo) -> bool {
    let empty = |v: &Option<Vec<_>>| v.as_ref().is_none_or(Vec::is_empty);
    b.weight().is_none_or(|w| w == 0)
        && b.leaf_weight().is_none_or(|w| w == 0)
        && b.weight_device().as_ref().is_none_or(Vec::is_empty)
        && empty(b.throttle_read_bps_device())
        && empty(b.throttle_write_bps_device())
        && empty(b.throttle_read_iops_device())
        && empty(b.throttle_write_iops_device())
}

/// A block device's major:minor, which must not be negative.
pub(crate) fn dev_numbers(field: &str, major: i64, minor: i64) -> Result<(u64, u64), CgroupError> {
    match (u64::try_from(major), u64::try_from(minor)) {
        (Ok(a), Ok(b)) => Ok((a, b)),
        _ => Err(CgroupError::InvalidValue {
            field: field.to_string(),
            value: format!("{major}:{minor}"),
            reason: "device numbers cannot be negative".to_string(),
        }),
    }
}

/// A hugepage size as used in file names (`2MB`, `1GB`).
pub(crate) fn page_size<'a>(field: &str, size: &'a str) -> Result<&'a str, CgroupError> {
    if !size.is_empty() && size.len() <= 16 && size.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Ok(size);
    }
    Err(CgroupError::InvalidValue {
        field: format!("{field}.pageSize"),
        value: format!("{size:?}"),
        reason: "expected a size like 2MB or 1GB".to_string(),
    })
}

/// Fields berth does not manage: an error rather than silently ignoring a
/// limit the user asked for.
pub(crate) fn reject_unsupported(
    res: &LinuxResources,
    mount_root: &Path,
    v2: bool,
) -> Result<(), CgroupError> {
    let unsupported = |field: &str, reason: &str| CgroupError::Unsupported {
        field: field.to_string(),
        path: mount_root.to_path_buf(),
        reason: reason.to_string(),
    };
    if let Some(net) = res.network()
        && (net.class_id().is_some() || net.priorities().as_ref().is_some_and(|p| !p.is_empty()))
    {
        return Err(unsupported(
            "linux.resources.network",
            "berth does not manage the net_cls/net_prio controllers",
        ));
    }
    if res.rdma().as_ref().is_some_and(|r| !r.is_empty()) {
        return Err(unsupported(
            "linux.resources.rdma",
            "berth does not manage the rdma controller",
        ));
    }
    if !v2 && res.unified().as_ref().is_some_and(|u| !u.is_empty()) {
        return Err(unsupported(
            "linux.resources.unified",
            "unified keys need a cgroup v2 hierarchy and this host is managed as cgroup v1",
        ));
    }
    Ok(())
}

/// USER_HZ, for `cpuacct.stat` ticks.
pub(crate) fn clock_ticks() -> u64 {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
        Ok(Some(t)) if t > 0 => t.unsigned_abs(),
        _ => 100,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_to_weight() {
        assert_eq!(cpu_shares_to_weight(0), 0);
        assert_eq!(cpu_shares_to_weight(1), 1);
        assert_eq!(cpu_shares_to_weight(2), 1);
        assert_eq!(cpu_shares_to_weight(1024), 39);
        assert_eq!(cpu_shares_to_weight(102), 4);
        assert_eq!(cpu_shares_to_weight(262_144), 10_000);
        assert_eq!(cpu_shares_to_weight(u64::MAX), 10_000);
    }

    #[test]
    fn blkio_to_io_weight() {
        assert_eq!(blkio_weight_to_io_weight(0), 0);
        assert_eq!(blkio_weight_to_io_weight(10), 1);
        assert_eq!(blkio_weight_to_io_weight(500), 4950);
        assert_eq!(blkio_weight_to_io_weight(1000), 10_000);
        assert_eq!(blkio_weight_to_io_weight(u64::MAX), 10_000);
    }

    #[test]
    fn small_value_rules() {
        assert_eq!(memory_value(F_LIMIT, None).ok(), Some(0));
        assert_eq!(memory_value(F_LIMIT, Some(-1)).ok(), Some(-1));
        let msg = memory_value(F_LIMIT, Some(-5))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(msg.starts_with(F_LIMIT), "{msg}");
        assert_eq!(pids_max(0), None);
        assert_eq!(pids_max(-1), Some(MaxValue::Max));
        assert_eq!(pids_max(7), Some(MaxValue::Value(7)));
        assert!(page_size("f", "2MB").is_ok());
        assert!(page_size("f", "../x").is_err());
        assert!(dev_numbers("f", -1, 0).is_err());
    }
}
