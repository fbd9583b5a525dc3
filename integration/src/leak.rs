//! Leak checks: snapshots of host mounts, of the cgroups berth (and runc,
//! with the test cgroupsPath) create, and of container-related processes,
//! compared before and after.
//!
//! Only things of this test process are counted: their paths, command lines
//! or cgroups carry its scratch directory name (`berth-it-<pid>-XXXX`) or a
//! container ID of [`crate::workdir::unique_id`] (`<tag>-<pid>-<n>`, so
//! cgroupsPath `/berth-it-<tag>-<pid>-<n>`). Containers other people run on
//! the same machine at the same time are not mistaken for leaks.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::proc;
use crate::workdir::base_dir;

/// The name of this process's scratch directory (`berth-it-<pid>-XXXX`).
fn base_name() -> String {
    base_dir()
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// True if the text names something of this test process.
pub fn is_ours(text: &str) -> bool {
    let base = base_name();
    (!base.is_empty() && text.contains(&base))
        || text.contains(&format!("-{}-", std::process::id()))
}

/// berth's default cgroup parent (`--cgroup-root`).
pub const BERTH_CGROUP_ROOT: &str = "berth";

/// What the machine looked like at one moment.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Lines of /proc/self/mountinfo (of this test process's things).
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

/// The cgroup directories the leak check watches (of this test process).
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
    out.retain(|p| is_ours(&p.to_string_lossy()));
    out
}

/// Processes that belong to containers or runtimes: in another mount
/// namespace than this process, or in a berth cgroup, or running the runtime
/// binary under test, runc, or a containerd shim; and naming this test
/// process (see [`is_ours`]) in their command line or cgroups. Zombies are
/// ignored.
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
        let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        let by_cgroup = cgroups.lines().any(|l| l.contains(":/berth"));
        if !(by_exe || by_ns || by_cgroup) {
            continue;
        }
        let cmdline = proc::cmdline(pid);
        if (is_ours(&cmdline) || is_ours(&cgroups))
            && let Some(t) = proc::start_time(pid)
        {
            out.insert((pid, t), cmdline);
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
                .filter(|l| is_ours(l))
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

/// Safety net run when the test process exits: kills processes that a broken
/// runtime under test left behind (those whose command line or cgroups name
/// this test process, see [`is_ours`]) and removes the then empty cgroups of
/// this process's containers. Reports what it found on stderr.
pub fn kill_strays() {
    let me = std::process::id() as i32;
    let mut killed = Vec::new();
    for _ in 0..3 {
        // Strays, then their descendants (found before anything is killed,
        // while the parent links still hold).
        let parents: Vec<(i32, i32)> = proc::pids()
            .into_iter()
            .filter(|p| *p != me && proc::alive(*p))
            .filter_map(|p| Some((p, proc::ppid(p)?)))
            .collect();
        let mut marked: BTreeSet<i32> = parents
            .iter()
            .map(|(p, _)| *p)
            .filter(|p| {
                let cgroups =
                    std::fs::read_to_string(format!("/proc/{p}/cgroup")).unwrap_or_default();
                proc::cmdline(*p).contains(&base_name())
                    || cgroups.lines().any(|l| l.contains(":/berth") && is_ours(l))
            })
            .collect();
        loop {
            let before = marked.len();
            for (p, pp) in &parents {
                if marked.contains(pp) {
                    marked.insert(*p);
                }
            }
            if marked.len() == before {
                break;
            }
        }
        if marked.is_empty() {
            break;
        }
        for p in marked {
            killed.push(format!("{p}: {}", proc::cmdline(p)));
            // SAFETY: a process started (indirectly) by this test process.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut dirs: Vec<PathBuf> = watched_cgroups().into_iter().collect();
    // Deepest first.
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    let mut removed = Vec::new();
    for d in dirs {
        if std::fs::remove_dir(&d).is_ok() {
            removed.push(d.display().to_string());
        }
    }
    if !killed.is_empty() || !removed.is_empty() {
        eprintln!(
            "berth-integration: cleaned up after the runtime under test: killed {killed:?}, removed cgroups {removed:?}"
        );
    }
}
