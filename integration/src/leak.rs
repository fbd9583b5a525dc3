//! Leak checks: snapshots of host mounts, of the cgroups berth (and runc,
//! with the test cgroupsPath) create, and of container-related processes,
//! compared before and after.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::proc;

/// berth's default cgroup parent (`--cgroup-root`).
pub const BERTH_CGROUP_ROOT: &str = "berth";

/// What the machine looked like at one moment.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Lines of /proc/self/mountinfo.
    pub mounts: BTreeSet<String>,
    /// Cgroup directories below `<hierarchy>/berth/` and `<hierarchy>/berth-*`
    /// (the test cgroupsPath `/berth-it-<id>`, containerd's test namespace).
    pub cgroups: BTreeSet<PathBuf>,
    /// Container-related processes, by (pid, start time): their command line.
    pub procs: BTreeMap<(i32, u64), String>,
}

fn walk_dirs(dir: &Path, out: &mut BTreeSet<PathBuf>) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                out.insert(e.path());
                walk_dirs(&e.path(), out);
            }
        }
    }
}

/// The cgroup directories the leak check watches.
pub fn watched_cgroups() -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    for h in proc::cgroup_hierarchies() {
        let Ok(rd) = std::fs::read_dir(&h) else {
            continue;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                continue;
            }
            if name == BERTH_CGROUP_ROOT {
                walk_dirs(&e.path(), &mut out);
            } else if name.starts_with("berth-") {
                out.insert(e.path());
                walk_dirs(&e.path(), &mut out);
            }
        }
    }
    out
}

/// Processes that belong to containers or runtimes: in another mount
/// namespace than this process, or in a berth cgroup, or running the runtime
/// binary under test, runc, or a containerd shim. Zombies are ignored.
pub fn container_processes() -> BTreeMap<(i32, u64), String> {
    let my_mnt = proc::ns_link(None, "mnt").unwrap_or_default();
    let runtime = crate::runtime::binary().ok().map(|b| b.target.clone());
    let me = std::process::id() as i32;
    let mut out = BTreeMap::new();
    for pid in proc::pids() {
        if pid == me || !proc::alive(pid) || proc::ppid(pid) == Some(2) || pid == 2 {
            continue;
        }
        let exe = proc::exe(pid);
        let by_exe = exe.as_ref().is_some_and(|e| {
            Some(e) == runtime.as_ref()
                || e.file_name().is_some_and(|n| {
                    let n = n.to_string_lossy();
                    n == "runc" || n.starts_with("containerd-shim")
                })
        });
        let by_ns = proc::ns_link(Some(pid), "mnt").is_ok_and(|l| l != my_mnt);
        let by_cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .is_ok_and(|c| c.lines().any(|l| l.contains(":/berth")));
        if (by_exe || by_ns || by_cgroup)
            && let Some(t) = proc::start_time(pid)
        {
            out.insert((pid, t), proc::cmdline(pid));
        }
    }
    out
}

impl Snapshot {
    pub fn take() -> Snapshot {
        Snapshot {
            mounts: std::fs::read_to_string("/proc/self/mountinfo")
                .unwrap_or_default()
                .lines()
                .map(String::from)
                .collect(),
            cgroups: watched_cgroups(),
            procs: container_processes(),
        }
    }

    /// What `later` has that `self` had not.
    pub fn new_in(&self, later: &Snapshot) -> Diff {
        Diff {
            mounts: later.mounts.difference(&self.mounts).cloned().collect(),
            cgroups: later.cgroups.difference(&self.cgroups).cloned().collect(),
            procs: later
                .procs
                .iter()
                .filter(|(k, _)| !self.procs.contains_key(k))
                .map(|((pid, _), cmd)| format!("{pid}: {cmd}"))
                .collect(),
        }
    }
}

/// Things present after that were not before.
#[derive(Debug, Default)]
pub struct Diff {
    pub mounts: Vec<String>,
    pub cgroups: Vec<PathBuf>,
    pub procs: Vec<String>,
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        self.mounts.is_empty() && self.cgroups.is_empty() && self.procs.is_empty()
    }
}

impl fmt::Display for Diff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for m in &self.mounts {
            writeln!(f, "leaked mount: {m}")?;
        }
        for c in &self.cgroups {
            writeln!(f, "leaked cgroup: {}", c.display())?;
        }
        for p in &self.procs {
            writeln!(f, "leaked process: {p}")?;
        }
        Ok(())
    }
}

static LOCK: Mutex<()> = Mutex::new(());

/// A before/after leak check. Holding one serializes leak-checked tests of
/// the same test binary, so one test's containers do not show up in another's
/// diff (put only leak-checked tests in such a file).
pub struct LeakCheck {
    _guard: MutexGuard<'static, ()>,
    before: Snapshot,
}

impl LeakCheck {
    pub fn start() -> LeakCheck {
        let guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
        LeakCheck {
            _guard: guard,
            before: Snapshot::take(),
        }
    }

    pub fn before(&self) -> &Snapshot {
        &self.before
    }

    /// Fails unless, within `timeout`, nothing new remains.
    pub fn assert_clean(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let diff = self.before.new_in(&Snapshot::take());
            if diff.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("left behind after {timeout:?}:\n{diff}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
