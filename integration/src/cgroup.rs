//! Reading a container's cgroup files, on cgroup v1 or v2.

use std::path::PathBuf;

use crate::proc::{cgroup_dir, cgroup_mount};

/// The directory holding `controller`'s files for `pid`: the v1 hierarchy
/// of that controller, else the unified (v2) hierarchy.
pub fn controller_dir(pid: i32, controller: &str) -> Option<PathBuf> {
    if cgroup_mount(controller).is_some() {
        return cgroup_dir(pid, controller);
    }
    cgroup_dir(pid, "")
}

fn read(pid: i32, controller: &str, v1: &str, v2: &str) -> Option<String> {
    let dir = controller_dir(pid, controller)?;
    let file = if cgroup_mount(controller).is_some() {
        v1
    } else {
        v2
    };
    std::fs::read_to_string(dir.join(file)).ok()
}

fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok())?
    })
}

/// The memory limit in bytes (None if unlimited or unreadable).
pub fn memory_limit(pid: i32) -> Option<u64> {
    read(pid, "memory", "memory.limit_in_bytes", "memory.max")?
        .trim()
        .parse()
        .ok()
}

/// How many processes the OOM killer killed in the cgroup.
pub fn oom_kills(pid: i32) -> Option<u64> {
    let t = read(pid, "memory", "memory.oom_control", "memory.events")?;
    keyed(&t, "oom_kill")
}

/// pids.max as written ("max" or a number).
pub fn pids_max(pid: i32) -> Option<String> {
    read(pid, "pids", "pids.max", "pids.max").map(|s| s.trim().to_string())
}

/// True if the freezer says frozen (v1 freezer.state FROZEN, v2 cgroup.freeze 1).
pub fn frozen(pid: i32) -> Option<bool> {
    let t = read(pid, "freezer", "freezer.state", "cgroup.freeze")?;
    Some(matches!(t.trim(), "FROZEN" | "1"))
}

/// True if the memory controller accounts swap, so a spec may limit it
/// (`linux.resources.memory.swap`): v1 `memory.memsw.*` files, v2
/// `memory.swap.max` in non-root cgroups.
pub fn swap_accounting() -> bool {
    if let Some(m) = cgroup_mount("memory") {
        return m.join("memory.memsw.limit_in_bytes").exists();
    }
    let Some(root) = cgroup_mount("") else {
        return false;
    };
    let own = cgroup_dir(std::process::id() as i32, "").filter(|d| *d != root);
    if let Some(d) = own {
        return d.join("memory.swap.max").exists();
    }
    std::fs::read_dir(&root)
        .map(|rd| {
            rd.flatten()
                .any(|e| e.path().join("memory.swap.max").exists())
        })
        .unwrap_or(false)
}
