//! Reading /proc: process liveness, parents, memory, namespaces, cgroups.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::workdir::unescape_mountinfo;

fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The comm field is in parentheses and may contain spaces.
    let close = s.rfind(')')?;
    let mut v = vec![s[..close + 1].to_string()];
    v.extend(s[close + 1..].split_whitespace().map(String::from));
    Some(v)
}

/// The one-letter state (R, S, Z, ...) of a process.
pub fn state(pid: i32) -> Option<char> {
    stat_fields(pid)?.get(1)?.chars().next()
}

/// True if the process exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    matches!(state(pid), Some(c) if c != 'Z' && c != 'X')
}

/// The parent pid.
pub fn ppid(pid: i32) -> Option<i32> {
    stat_fields(pid)?.get(2)?.parse().ok()
}

/// The start time (clock ticks since boot): with the pid, identifies a process.
pub fn start_time(pid: i32) -> Option<u64> {
    stat_fields(pid)?.get(20)?.parse().ok()
}

/// A field of /proc/PID/status, e.g. `status_field(pid, "VmRSS")` -> "1234 kB".
pub fn status_field(pid: i32, key: &str) -> Option<String> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines().find_map(|l| {
        l.strip_prefix(key)?
            .strip_prefix(':')
            .map(|v| v.trim().to_string())
    })
}

/// Resident set size in KiB.
pub fn rss_kib(pid: i32) -> Option<u64> {
    status_field(pid, "VmRSS")?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The command line, arguments joined by spaces.
pub fn cmdline(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|c| *c == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

/// The executable (readlink /proc/PID/exe).
pub fn exe(pid: i32) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/exe")).ok()
}

/// All pids currently in /proc.
pub fn pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The namespace link (e.g. `net:[4026531840]`) of a process, or of this
/// process when `pid` is None.
pub fn ns_link(pid: Option<i32>, ns: &str) -> Result<String> {
    let p = match pid {
        Some(pid) => format!("/proc/{pid}/ns/{ns}"),
        None => format!("/proc/self/ns/{ns}"),
    };
    Ok(std::fs::read_link(&p)
        .with_context(|| format!("readlink {p}"))?
        .to_string_lossy()
        .into_owned())
}

/// Waits until the process is gone (or a zombie); false on timeout.
pub fn wait_gone(pid: i32, timeout: Duration) -> bool {
    crate::exec::wait_until(timeout, "process exit", || Ok((!alive(pid)).then_some(()))).is_ok()
}

/// One line of /proc/self/mountinfo.
#[derive(Clone, Debug)]
pub struct MountInfo {
    pub mount_point: PathBuf,
    pub options: String,
    pub fs_type: String,
    pub source: String,
    pub super_options: String,
}

/// Parses mountinfo text (of any process).
pub fn parse_mountinfo(text: &str) -> Vec<MountInfo> {
    text.lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let pre: Vec<&str> = pre.split(' ').collect();
            let post: Vec<&str> = post.split(' ').collect();
            Some(MountInfo {
                mount_point: PathBuf::from(unescape_mountinfo(pre.get(4)?)),
                options: pre.get(5)?.to_string(),
                fs_type: post.first()?.to_string(),
                source: post.get(1).map(|s| s.to_string()).unwrap_or_default(),
                super_options: post.get(2).map(|s| s.to_string()).unwrap_or_default(),
            })
        })
        .collect()
}

/// The mounts of this process's mount namespace.
pub fn mounts() -> Vec<MountInfo> {
    parse_mountinfo(&std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default())
}

/// Where the cgroup hierarchy holding `controller` is mounted on the host
/// ("memory", "pids", "name=systemd"; "" for the cgroup2 hierarchy).
pub fn cgroup_mount(controller: &str) -> Option<PathBuf> {
    mounts()
        .into_iter()
        .find(|m| {
            if controller.is_empty() {
                m.fs_type == "cgroup2"
            } else {
                m.fs_type == "cgroup" && m.super_options.split(',').any(|o| o == controller)
            }
        })
        .map(|m| m.mount_point)
}

/// The cgroup directory of a process for a controller (see [`cgroup_mount`]),
/// from /proc/PID/cgroup.
pub fn cgroup_dir(pid: i32, controller: &str) -> Option<PathBuf> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let rel = text.lines().find_map(|l| {
        let mut it = l.splitn(3, ':');
        let (_, ctrls, path) = (it.next()?, it.next()?, it.next()?);
        let hit = if controller.is_empty() {
            ctrls.is_empty()
        } else {
            ctrls.split(',').any(|c| c == controller)
        };
        hit.then(|| path.to_string())
    })?;
    let mount = cgroup_mount(controller)?;
    Some(mount.join(rel.trim_start_matches('/')))
}

/// The mount points of all cgroup hierarchies (v1 and v2).
pub fn cgroup_hierarchies() -> Vec<PathBuf> {
    mounts()
        .into_iter()
        .filter(|m| m.fs_type == "cgroup" || m.fs_type == "cgroup2")
        .map(|m| m.mount_point)
        .collect()
}
