//! The cgroup v1 manager (also used for hybrid layouts).
//!
//! Directories and mounts are ours: cgroups-rs's `Cgroup`/`Hierarchy` would
//! re-read mountinfo for every handle, also join the `name=systemd`
//! hierarchy, `unwrap()` on odd mounts and swallow cpuset copy errors. The
//! typed file writes (memory, cpu, cpuset, pids, blkio, freezer) go through
//! cgroups-rs controllers built directly on our directories.

use std::path::{Path, PathBuf};
use std::time::Duration;

use cgroups_rs::fs::blkio::BlkIoController;
use cgroups_rs::fs::cpu::CpuController;
use cgroups_rs::fs::cpuset::CpuSetController;
use cgroups_rs::fs::freezer::FreezerController;
use cgroups_rs::fs::memory::MemController;
use cgroups_rs::fs::pid::PidController;
use oci_spec::runtime::{LinuxBlockIo, LinuxCpu, LinuxMemory, LinuxResources};

use super::devices::{self, Kind};
use super::fsutil::{self, keyed_value, rs_io_error, via_rs, write_error};
use super::mountinfo::MountEntry;
use super::stats::{self, CgroupStats};
use super::{Cgroup, CgroupError, common};

/// The v1 controllers berth uses, in the order processes join them (blkio
/// before memory, so writeback is attributed correctly).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Ctl {
    BlkIo,
    Memory,
    Pids,
    CpuSet,
    CpuAcct,
    Cpu,
    Devices,
    Freezer,
    HugeTlb,
}

impl Ctl {
    pub(crate) const ALL: [Ctl; 9] = [
        Ctl::BlkIo,
        Ctl::Memory,
        Ctl::Pids,
        Ctl::CpuSet,
        Ctl::CpuAcct,
        Ctl::Cpu,
        Ctl::Devices,
        Ctl::Freezer,
        Ctl::HugeTlb,
    ];

    /// The controller's name in mount options and /proc/<pid>/cgroup.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Ctl::BlkIo => "blkio",
            Ctl::Memory => "memory",
            Ctl::Pids => "pids",
            Ctl::CpuSet => "cpuset",
            Ctl::CpuAcct => "cpuacct",
            Ctl::Cpu => "cpu",
            Ctl::Devices => "devices",
            Ctl::Freezer => "freezer",
            Ctl::HugeTlb => "hugetlb",
        }
    }
}

/// One mounted hierarchy (possibly several co-mounted controllers).
#[derive(Debug, Clone)]
struct Dir {
    ctls: Vec<Ctl>,
    /// The hierarchy's mount point, e.g. `/sys/fs/cgroup/memory`.
    mount: PathBuf,
    /// `<mount>/<berth parent>`.
    base: PathBuf,
    /// `<base>/<relative>`: the container's cgroup.
    leaf: PathBuf,
}

impl Dir {
    fn file(&self, name: &str) -> PathBuf {
        self.leaf.join(name)
    }
}

/// A container cgroup in the v1 hierarchies.
#[derive(Debug, Clone)]
pub(crate) struct V1Cgroup {
    mount_root: PathBuf,
    dirs: Vec<Dir>,
    /// On a hybrid host, the container's dir in the cgroup2 hierarchy too (as
    /// runc does), so tools that read the unified tree see it as a container.
    unified: Option<PathBuf>,
}

impl V1Cgroup {
    /// Use the v1 hierarchies mounted directly below `mount_root`.
    pub(crate) fn new(
        mount_root: &Path,
        mounts: &[MountEntry],
        parent: &Path,
        relative: &Path,
    ) -> Result<Self, CgroupError> {
        let mut dirs: Vec<Dir> = Vec::new();
        for ctl in Ctl::ALL {
            let Some(m) = mounts.iter().find(|m| {
                m.is_v1() && m.mount_point.parent() == Some(mount_root) && m.has_option(ctl.name())
            }) else {
                continue;
            };
            if let Some(dir) = dirs.iter_mut().find(|d| d.mount == m.mount_point) {
                dir.ctls.push(ctl);
                continue;
            }
            let base = m.mount_point.join(parent);
            dirs.push(Dir {
                ctls: vec![ctl],
                leaf: base.join(relative),
                base,
                mount: m.mount_point.clone(),
            });
        }
        if dirs.is_empty() {
            return Err(CgroupError::NotMounted {
                mount_root: mount_root.to_path_buf(),
                reason: "no cgroup v1 controller is mounted below it".to_string(),
            });
        }
        let unified = mounts
            .iter()
            .find(|m| m.is_v2() && m.mount_point.parent() == Some(mount_root))
            .map(|m| m.mount_point.join(parent).join(relative));
        Ok(Self {
            mount_root: mount_root.to_path_buf(),
            dirs,
            unified,
        })
    }

    fn dir(&self, ctl: Ctl) -> Option<&Dir> {
        self.dirs.iter().find(|d| d.ctls.contains(&ctl))
    }

    fn need(&self, ctl: Ctl, field: &str) -> Result<&Dir, CgroupError> {
        self.dir(ctl).ok_or_else(|| CgroupError::ControllerMissing {
            field: field.to_string(),
            controller: ctl.name(),
            mount_root: self.mount_root.clone(),
        })
    }

    fn apply_cpuset(&self, cpu: &LinuxCpu) -> Result<(), CgroupError> {
        let cpus = cpu.cpus().as_deref().filter(|s| !s.is_empty());
        let mems = cpu.mems().as_deref().filter(|s| !s.is_empty());
        if cpus.is_none() && mems.is_none() {
            return Ok(());
        }
        let d = self.need(Ctl::CpuSet, common::F_CPUS)?;
        let c = CpuSetController::new(d.leaf.clone(), d.mount.clone(), false);
        if let Some(cpus) = cpus {
            via_rs(
                common::F_CPUS,
                d.file("cpuset.cpus"),
                cpus,
                c.set_cpus(cpus),
            )?;
        }
        if let Some(mems) = mems {
            via_rs(
                common::F_MEMS,
                d.file("cpuset.mems"),
                mems,
                c.set_mems(mems),
            )?;
        }
        Ok(())
    }

    fn apply_cpu(&self, cpu: &LinuxCpu) -> Result<(), CgroupError> {
        let shares = cpu.shares().filter(|&s| s != 0);
        let quota = cpu.quota().filter(|&q| q != 0);
        let period = cpu.period().filter(|&p| p != 0);
        let rt_runtime = cpu.realtime_runtime().filter(|&r| r != 0);
        let rt_period = cpu.realtime_period().filter(|&p| p != 0);
        if shares.is_none()
            && quota.is_none()
            && period.is_none()
            && rt_runtime.is_none()
            && rt_period.is_none()
            && cpu.burst().is_none()
            && cpu.idle().is_none()
        {
            return Ok(());
        }
        let d = self.need(Ctl::Cpu, "linux.resources.cpu")?;
        let c = CpuController::new(d.leaf.clone(), d.mount.clone(), false);
        if let Some(shares) = shares {
            via_rs(
                common::F_SHARES,
                d.file("cpu.shares"),
                shares,
                c.set_shares(shares),
            )?;
        }
        // As runc: a smaller period can be refused (EINVAL) while the old
        // quota is in place; then set it again after the quota.
        let mut period_again = None;
        if let Some(p) = period
            && let Err(e) = c.set_cfs_period(p)
        {
            let io = rs_io_error(&e);
            if io.raw_os_error() == Some(libc::EINVAL) && quota.is_some() {
                period_again = Some(p);
            } else {
                let path = d.file("cpu.cfs_period_us");
                return Err(write_error(common::F_PERIOD, &path, &p.to_string(), io));
            }
        }
        if let Some(q) = quota {
            let q = q.max(-1);
            via_rs(
                common::F_QUOTA,
                d.file("cpu.cfs_quota_us"),
                q,
                c.set_cfs_quota(q),
            )?;
        }
        if let Some(p) = period_again {
            via_rs(
                common::F_PERIOD,
                d.file("cpu.cfs_period_us"),
                p,
                c.set_cfs_period(p),
            )?;
        }
        if let Some(burst) = cpu.burst() {
            fsutil::write(
                common::F_BURST,
                &d.file("cpu.cfs_burst_us"),
                &burst.to_string(),
            )?;
        }
        if let Some(idle) = cpu.idle() {
            fsutil::write(common::F_IDLE, &d.file("cpu.idle"), &idle.to_string())?;
        }
        if let Some(p) = rt_period {
            via_rs(
                common::F_RT_PERIOD,
                d.file("cpu.rt_period_us"),
                p,
                c.set_rt_period_us(p),
            )?;
        }
        if let Some(r) = rt_runtime {
            via_rs(
                common::F_RT_RUNTIME,
                d.file("cpu.rt_runtime_us"),
                r,
                c.set_rt_runtime(r),
            )?;
        }
        Ok(())
    }

    fn apply_memory(&self, m: &LinuxMemory) -> Result<(), CgroupError> {
        if m.limit().is_none()
            && m.reservation().is_none()
            && m.swap().is_none()
            && m.kernel_tcp().is_none()
            && m.swappiness().is_none()
            && m.disable_oom_killer().is_none()
        {
            return Ok(());
        }
        let d = self.need(Ctl::Memory, "linux.resources.memory")?;
        let mc = MemController::new(d.leaf.clone(), d.mount.clone(), false);
        let limit = common::memory_value(common::F_LIMIT, m.limit())?;
        let mut swap = common::memory_value(common::F_SWAP, m.swap())?;
        if limit > 0 && swap > 0 && swap < limit {
            return Err(CgroupError::InvalidValue {
                field: common::F_SWAP.to_string(),
                value: swap.to_string(),
                reason: format!(
                    "on cgroup v1 swap is memory+swap and must be >= the memory limit {limit}"
                ),
            });
        }
        let memsw = d.file("memory.memsw.limit_in_bytes");
        if !memsw.exists() {
            if swap != 0 && swap != -1 && swap != limit {
                return Err(CgroupError::Unsupported {
                    field: common::F_SWAP.to_string(),
                    path: memsw,
                    reason: "swap accounting is off in this kernel; swap must be unset, -1 or equal to the memory limit".to_string(),
                });
            }
            swap = 0;
        } else if limit == -1 && swap == 0 {
            // As runc: unlimited memory without an explicit swap means
            // unlimited swap too.
            swap = -1;
        }
        let limit_file = d.file("memory.limit_in_bytes");
        let set_limit = |v: i64| via_rs(common::F_LIMIT, limit_file.clone(), v, mc.set_limit(v));
        let set_swap = |v: i64| via_rs(common::F_SWAP, memsw.clone(), v, mc.set_memswap_limit(v));
        if limit != 0 && swap != 0 {
            // The kernel wants memsw >= limit at every step: raise memsw
            // first when growing, lower the limit first when shrinking.
            let current: u64 = fsutil::read(&limit_file)?
                .trim()
                .parse()
                .unwrap_or(u64::MAX);
            if swap == -1 || current < swap.unsigned_abs() {
                set_swap(swap)?;
                set_limit(limit)?;
            } else {
                set_limit(limit)?;
                set_swap(swap)?;
            }
        } else if limit != 0 {
            set_limit(limit)?;
        } else if swap != 0 {
            set_swap(swap)?;
        }
        if let Some(r) = m.reservation().filter(|&r| r != 0) {
            let r = common::memory_value(common::F_RESERVATION, Some(r))?;
            via_rs(
                common::F_RESERVATION,
                d.file("memory.soft_limit_in_bytes"),
                r,
                mc.set_soft_limit(r),
            )?;
        }
        if let Some(t) = m.kernel_tcp().filter(|&t| t != 0) {
            let t = common::memory_value(common::F_KERNEL_TCP, Some(t))?;
            via_rs(
                common::F_KERNEL_TCP,
                d.file("memory.kmem.tcp.limit_in_bytes"),
                t,
                mc.set_tcp_limit(t),
            )?;
        }
        if let Some(s) = m.swappiness() {
            if s > 100 {
                return Err(CgroupError::InvalidValue {
                    field: common::F_SWAPPINESS.to_string(),
                    value: s.to_string(),
                    reason: "must be between 0 and 100".to_string(),
                });
            }
            via_rs(
                common::F_SWAPPINESS,
                d.file("memory.swappiness"),
                s,
                mc.set_swappiness(s),
            )?;
        }
        if let Some(disable) = m.disable_oom_killer() {
            let v = if disable { "1" } else { "0" };
            fsutil::write(common::F_OOM, &d.file("memory.oom_control"), v)?;
        }
        Ok(())
    }

    fn apply_pids(&self, limit: i64) -> Result<(), CgroupError> {
        let Some(max) = common::pids_max(limit) else {
            return Ok(());
        };
        let d = self.need(Ctl::Pids, common::F_PIDS)?;
        let c = PidController::new(d.leaf.clone(), d.mount.clone(), false);
        let shown = max.to_string();
        via_rs(
            common::F_PIDS,
            d.file("pids.max"),
            shown,
            c.set_pid_max(max),
        )
    }

    fn apply_blkio(&self, b: &LinuxBlockIo) -> Result<(), CgroupError> {
        if common::blkio_is_empty(b) {
            return Ok(());
        }
        let d = self.need(Ctl::BlkIo, "linux.resources.blockIO")?;
        let c = BlkIoController::new(d.leaf.clone(), d.mount.clone(), false);
        if let Some(w) = b.weight().filter(|&w| w != 0) {
            // blkio.weight needs CFQ; with BFQ the file is blkio.bfq.weight.
            if d.file("blkio.weight").exists() {
                via_rs(
                    common::F_WEIGHT,
                    d.file("blkio.weight"),
                    w,
                    c.set_weight(u64::from(w)),
                )?;
            } else {
                fsutil::write(
                    common::F_WEIGHT,
                    &d.file("blkio.bfq.weight"),
                    &w.to_string(),
                )?;
            }
        }
        if let Some(w) = b.leaf_weight().filter(|&w| w != 0) {
            let f = "linux.resources.blockIO.leafWeight";
            via_rs(
                f,
                d.file("blkio.leaf_weight"),
                w,
                c.set_leaf_weight(u64::from(w)),
            )?;
        }
        for (i, wd) in b.weight_device().iter().flatten().enumerate() {
            let field = format!("linux.resources.blockIO.weightDevice[{i}]");
            let (major, minor) = common::dev_numbers(&field, wd.major(), wd.minor())?;
            if let Some(w) = wd.weight() {
                let value = format!("{major}:{minor} {w}");
                let path = d.file("blkio.weight_device");
                via_rs(
                    &field,
                    path,
                    value,
                    c.set_weight_for_device(major, minor, u64::from(w)),
                )?;
            }
            if let Some(w) = wd.leaf_weight() {
                let value = format!("{major}:{minor} {w}");
                fsutil::write(&field, &d.file("blkio.leaf_weight_device"), &value)?;
            }
        }
        type Setter = fn(&BlkIoController, u64, u64, u64) -> cgroups_rs::fs::error::Result<()>;
        let throttles: [(&str, &str, Setter, _); 4] = [
            (
                "throttleReadBpsDevice",
                "blkio.throttle.read_bps_device",
                BlkIoController::throttle_read_bps_for_device,
                b.throttle_read_bps_device(),
            ),
            (
                "throttleWriteBpsDevice",
                "blkio.throttle.write_bps_device",
                BlkIoController::throttle_write_bps_for_device,
                b.throttle_write_bps_device(),
            ),
            (
                "throttleReadIOPSDevice",
                "blkio.throttle.read_iops_device",
                BlkIoController::throttle_read_iops_for_device,
                b.throttle_read_iops_device(),
            ),
            (
                "throttleWriteIOPSDevice",
                "blkio.throttle.write_iops_device",
                BlkIoController::throttle_write_iops_for_device,
                b.throttle_write_iops_device(),
            ),
        ];
        for (name, file, set, list) in throttles {
            for (i, t) in list.iter().flatten().enumerate() {
                let field = format!("linux.resources.blockIO.{name}[{i}]");
                let (major, minor) = common::dev_numbers(&field, t.major(), t.minor())?;
                let value = format!("{major}:{minor} {}", t.rate());
                via_rs(&field, d.file(file), value, set(&c, major, minor, t.rate()))?;
            }
        }
        Ok(())
    }

    fn apply_devices(&self, rules: &[devices::Rule]) -> Result<(), CgroupError> {
        let d = self.need(Ctl::Devices, devices::FIELD)?;
        // Start from "deny everything" (unless the first rule resets anyway),
        // then replay the rules: the kernel's own last-match-wins semantics.
        // Plain writes: the lines are already normalised.
        if rules.first().is_none_or(|r| r.kind != Kind::All) {
            fsutil::write(devices::FIELD, &d.file("devices.deny"), "a")?;
        }
        // Consecutive rules of one kind share an open file.
        let lines: Vec<(bool, String, String)> = rules
            .iter()
            .enumerate()
            .map(|(i, r)| (r.allow, format!("{}[{i}]", devices::FIELD), r.v1_line()))
            .collect();
        for run in lines.chunk_by(|a, b| a.0 == b.0) {
            let file = if run.first().is_some_and(|r| r.0) {
                "devices.allow"
            } else {
                "devices.deny"
            };
            fsutil::write_each(
                &d.file(file),
                run.iter().map(|(_, f, v)| (f.clone(), v.as_str())),
            )?;
        }
        Ok(())
    }

    /// Give empty cpuset cgroups on the way to the leaf their parent's cpus
    /// and mems: v1 starts new ones empty and an empty cpuset refuses
    /// processes. Only empty directories are written: the ones mkdir just
    /// made (an empty cpuset is unusable anyway, so nobody else relies on it).
    fn ensure_cpuset(d: &Dir) -> Result<(), CgroupError> {
        const FILES: [&str; 2] = ["cpuset.cpus", "cpuset.mems"];
        let filled = |dir: &Path, f: &str| -> Result<bool, CgroupError> {
            Ok(!fsutil::read(&dir.join(f))?.trim().is_empty())
        };
        if filled(&d.leaf, FILES[0])? && filled(&d.leaf, FILES[1])? {
            return Ok(());
        }
        let mut chain: Vec<&Path> = d
            .leaf
            .ancestors()
            .take_while(|p| *p != d.mount && p.starts_with(&d.mount))
            .collect();
        chain.reverse();
        for dir in chain {
            let Some(parent) = dir.parent() else { continue };
            for f in FILES {
                if filled(dir, f)? {
                    continue;
                }
                let value = fsutil::read(&parent.join(f))?;
                let field = format!("{f} (copied from {})", parent.display());
                fsutil::write(&field, &dir.join(f), value.trim())?;
            }
            if dir != d.leaf && dir.starts_with(&d.base) {
                // Later cgroups below it get cpus/mems from the kernel at
                // mkdir time: no copying on the hot path. On every level
                // from the base down (ours), since the flag reaches one
                // level only: a container's leaf is below its pod's.
                let _ = fsutil::write(
                    "cgroup.clone_children",
                    &dir.join("cgroup.clone_children"),
                    "1",
                );
            }
        }
        Ok(())
    }

    fn freezer(&self, op: &str) -> Result<(&Dir, FreezerController), CgroupError> {
        let d = self.need(Ctl::Freezer, op)?;
        Ok((
            d,
            FreezerController::new(d.leaf.clone(), d.mount.clone(), false),
        ))
    }

    fn set_freezer(
        &self,
        op: &str,
        want: &'static str,
        timeout: Duration,
    ) -> Result<(), CgroupError> {
        let (d, fc) = self.freezer(op)?;
        let path = d.file("freezer.state");
        let request = || {
            let r = if want == "FROZEN" {
                fc.freeze()
            } else {
                fc.thaw()
            };
            via_rs(op, path.clone(), want, r)
        };
        request()?;
        let mut last = String::new();
        let done = fsutil::poll_until(
            timeout,
            || {
                last = fsutil::read(&path)?.trim().to_string();
                Ok(last == want)
            },
            request,
        )?;
        if done {
            return Ok(());
        }
        if want == "FROZEN" {
            // Do not leave it half frozen.
            let _ = fc.thaw();
        }
        Err(CgroupError::StateTimeout {
            path,
            wanted: want,
            waited_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
            last,
        })
    }
}

impl Cgroup for V1Cgroup {
    fn create(&self) -> Result<(), CgroupError> {
        for d in &self.dirs {
            fsutil::mkdir_p(&d.leaf)?;
            if d.ctls.contains(&Ctl::CpuSet) {
                Self::ensure_cpuset(d)?;
            }
        }
        if let Some(u) = &self.unified {
            fsutil::mkdir_p(u)?;
        }
        Ok(())
    }

    fn apply(&self, res: &LinuxResources) -> Result<(), CgroupError> {
        // Everything that can be checked without the kernel first, so a bad
        // spec changes nothing.
        common::reject_unsupported(res, &self.mount_root, false)?;
        let rules = res
            .devices()
            .as_deref()
            .map(devices::normalize)
            .transpose()?;
        if let Some(cpu) = res.cpu() {
            self.apply_cpuset(cpu)?;
            self.apply_cpu(cpu)?;
        }
        if let Some(m) = res.memory() {
            self.apply_memory(m)?;
        }
        if let Some(p) = res.pids() {
            self.apply_pids(p.limit())?;
        }
        if let Some(b) = res.block_io() {
            self.apply_blkio(b)?;
        }
        for (i, h) in res.hugepage_limits().iter().flatten().enumerate() {
            let field = format!("linux.resources.hugepageLimits[{i}]");
            let size = common::page_size(&field, h.page_size())?;
            let d = self.need(Ctl::HugeTlb, &field)?;
            let file = d.file(&format!("hugetlb.{size}.limit_in_bytes"));
            fsutil::write(&field, &file, &h.limit().to_string())?;
        }
        if let Some(rules) = rules {
            self.apply_devices(&rules)?;
        }
        Ok(())
    }

    fn add_process(&self, pid: i32) -> Result<(), CgroupError> {
        self.dirs
            .iter()
            .try_for_each(|d| fsutil::add_pid(&d.leaf, pid))?;
        match &self.unified {
            Some(u) => fsutil::add_pid(u, pid),
            None => Ok(()),
        }
    }

    fn pids(&self) -> Result<Vec<i32>, CgroupError> {
        let d = [Ctl::Pids, Ctl::Freezer, Ctl::Memory]
            .into_iter()
            .find_map(|c| self.dir(c))
            .or(self.dirs.first())
            .ok_or_else(|| CgroupError::NotMounted {
                mount_root: self.mount_root.clone(),
                reason: "no cgroup v1 controller is mounted below it".to_string(),
            })?;
        fsutil::pids_recursive(&d.leaf)
    }

    fn freeze(&self) -> Result<(), CgroupError> {
        self.set_freezer("freeze", "FROZEN", common::FREEZE_TIMEOUT)
    }

    fn thaw(&self) -> Result<(), CgroupError> {
        self.set_freezer("thaw", "THAWED", common::FREEZE_TIMEOUT)
    }

    fn is_frozen(&self) -> Result<bool, CgroupError> {
        let (d, _) = self.freezer("is_frozen")?;
        Ok(fsutil::read(&d.file("freezer.state"))?.trim() == "FROZEN")
    }

    fn stats(&self) -> Result<CgroupStats, CgroupError> {
        if let Some(d) = self.dirs.iter().find(|d| !d.leaf.is_dir()) {
            return Err(CgroupError::NotFound {
                path: d.leaf.clone(),
            });
        }
        let read = |ctl: Ctl, file: &str| match self.dir(ctl) {
            Some(d) => fsutil::read_opt(&d.file(file)),
            None => Ok(None),
        };
        stats::from_v1(&read, common::clock_ticks())
    }

    fn oom_kills(&self) -> Result<u64, CgroupError> {
        let Some(d) = self.dir(Ctl::Memory) else {
            return Ok(0);
        };
        let text = fsutil::read_opt(&d.file("memory.oom_control"))?;
        Ok(text.and_then(|t| keyed_value(&t, "oom_kill")).unwrap_or(0))
    }

    fn destroy(&self) -> Result<(), CgroupError> {
        // Try every hierarchy even when one fails; report the first error.
        let mut first = None;
        for leaf in self.paths() {
            if let Err(e) = fsutil::remove_tree(&leaf) {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    fn paths(&self) -> Vec<PathBuf> {
        self.dirs
            .iter()
            .map(|d| d.leaf.clone())
            .chain(self.unified.clone())
            .collect()
    }

    fn placement(&self) -> Option<super::Placement> {
        Some(super::Placement {
            clone_into: self.unified.clone(),
            self_join: self.dirs.iter().map(|d| d.leaf.join("tasks")).collect(),
        })
    }
}
