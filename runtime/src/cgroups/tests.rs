//! Tests against the real cgroup filesystems. They need root (they skip
//! with a message otherwise) and create everything below a unique
//! `berth-test-*` parent, removed again on drop even when a test fails.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use oci_spec::runtime::{
    LinuxCpuBuilder, LinuxDeviceType, LinuxMemoryBuilder, LinuxPidsBuilder, LinuxResources,
    LinuxResourcesBuilder,
};

use super::*;

const MIB: i64 = 1 << 20;

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

macro_rules! require_root {
    () => {
        if !is_root() {
            eprintln!("skipped: needs root");
            return;
        }
    };
}

fn unique_parent() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "berth-test-{}-{}-{nanos:x}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Owns a test's parent directories and child processes; on drop thaws
/// what we froze, kills the children and removes the parents.
struct Fixture {
    parents: Vec<PathBuf>,
    children: Vec<Child>,
}

impl Fixture {
    /// Register the top directory of berth's parent (`<mount>/<first
    /// component of parent>`) above each of `cg`'s leaves.
    fn new(cg: &dyn Cgroup, relative: &Path, parent: &str) -> Self {
        let depth = relative.components().count() + Path::new(parent).components().count() - 1;
        let parents = cg
            .paths()
            .iter()
            .filter_map(|p| p.ancestors().nth(depth).map(Path::to_path_buf))
            .collect();
        Self {
            parents,
            children: Vec::new(),
        }
    }

    /// Start `sh -c 'read _; <script>'`: it waits for `go` so it can be
    /// put into a cgroup before it runs `script`.
    fn spawn(&mut self, script: &str) -> (i32, ChildStdin) {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(format!("read _ && {script}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sh");
        let stdin = child.stdin.take().expect("stdin");
        let pid = i32::try_from(child.id()).expect("pid");
        self.children.push(child);
        (pid, stdin)
    }

    /// Wait (at most 20 s) for a child to exit: status, stdout, stderr.
    fn wait(&mut self, pid: i32) -> (ExitStatus, String, String) {
        let idx = self
            .children
            .iter()
            .position(|c| c.id() as i32 == pid)
            .expect("our child");
        let mut child = self.children.remove(idx);
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                break status;
            }
            assert!(Instant::now() < deadline, "child {pid} did not exit");
            std::thread::sleep(Duration::from_millis(5));
        };
        let mut out = String::new();
        let mut err = String::new();
        if let Some(mut s) = child.stdout.take() {
            let _ = s.read_to_string(&mut out);
        }
        if let Some(mut s) = child.stderr.take() {
            let _ = s.read_to_string(&mut err);
        }
        (status, out, err)
    }
}

fn go(mut stdin: ChildStdin) {
    stdin.write_all(b"\n").expect("release child");
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // A frozen process cannot die: thaw everything below our parents.
        for parent in &self.parents {
            for_each_dir(parent, &mut |dir| {
                let _ = std::fs::write(dir.join("freezer.state"), "THAWED");
                let _ = std::fs::write(dir.join("cgroup.freeze"), "0");
            });
        }
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for parent in &self.parents {
            if let Err(e) = fsutil::remove_tree(parent) {
                eprintln!("cleanup of {} failed: {e}", parent.display());
            }
        }
    }
}

fn for_each_dir(dir: &Path, f: &mut dyn FnMut(&Path)) {
    if !dir.is_dir() {
        return;
    }
    f(dir);
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            for_each_dir(&entry.path(), f);
        }
    }
}

fn read_trim(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .to_string()
}

/// The leaf of `cg` in the hierarchy mounted at `mount_name`
/// (`/sys/fs/cgroup/<mount_name>`).
fn leaf(cg: &dyn Cgroup, mount_name: &str) -> PathBuf {
    let mount = Path::new("/sys/fs/cgroup").join(mount_name);
    cg.paths()
        .into_iter()
        .find(|p| p.starts_with(&mount))
        .unwrap_or_else(|| panic!("no {mount_name} path in {:?}", cg.paths()))
}

/// Wait until `/proc/<pid>/comm` is `comm` (the child has exec'd).
fn wait_comm(pid: i32, comm: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while read_trim(&PathBuf::from(format!("/proc/{pid}/comm"))) != comm {
        assert!(Instant::now() < deadline, "{pid} never became {comm}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: i32) -> u64 {
    let stat = read_trim(&PathBuf::from(format!("/proc/{pid}/stat")));
    let after_comm = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    // Fields 14 and 15 (utime, stime); `after_comm` starts at field 3.
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
}

use super::devices::rule as device;

/// Deny everything, then allow /dev/null (c 1:3) only.
fn only_dev_null() -> LinuxResources {
    LinuxResourcesBuilder::default()
        .devices(vec![
            device(false, LinuxDeviceType::A, None, None, "rwm"),
            device(true, LinuxDeviceType::C, Some(1), Some(3), "rwm"),
        ])
        .build()
        .expect("resources")
}

/// Open a v1 manager under a fresh parent, or `None` (with a message) when
/// this host has no v1 controllers.
fn open_v1_test(relative: &str) -> Option<(Box<dyn Cgroup>, Fixture, PathBuf)> {
    open_v1_with_parent(relative, &unique_parent())
}

fn open_v1_with_parent(
    relative: &str,
    parent: &str,
) -> Option<(Box<dyn Cgroup>, Fixture, PathBuf)> {
    let cfg = CgroupConfig {
        parent: parent.to_string(),
        ..Default::default()
    };
    match detect(&cfg) {
        Ok(Hierarchy::V1 | Hierarchy::Hybrid) => {}
        other => {
            eprintln!("skipped: /sys/fs/cgroup is not cgroup v1 or hybrid ({other:?})");
            return None;
        }
    }
    let rel = resolve_path(Some(relative), "unused").expect("resolve");
    let cg = open(&cfg, &rel).expect("open");
    let fx = Fixture::new(cg.as_ref(), &rel, parent);
    Some((cg, fx, rel))
}

/// The cgroup2 mount to test v2 on: `/sys/fs/cgroup` on pure v2 hosts,
/// `/sys/fs/cgroup/unified` on hybrid ones.
fn v2_mount() -> Option<PathBuf> {
    ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| {
            nix::sys::statfs::statfs(p)
                .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
        })
}

fn open_v2_test(relative: &str) -> Option<(Box<dyn Cgroup>, Fixture)> {
    let Some(mount) = v2_mount() else {
        eprintln!("skipped: no cgroup2 mount");
        return None;
    };
    let rel = PathBuf::from(relative);
    let parent = unique_parent();
    let cg = open_v2(&mount, &parent, &rel).expect("open_v2");
    let fx = Fixture::new(cg.as_ref(), &rel, &parent);
    Some((cg, fx))
}

#[test]
fn v1_uses_only_real_controllers_and_destroy_leaves_nothing() {
    require_root!();
    let Some((cg, fx, rel)) = open_v1_test("/pod1/ctr1") else {
        return;
    };
    let mountinfo = mountinfo::read().expect("mountinfo");
    for p in cg.paths() {
        assert!(p.ends_with(&rel), "{}", p.display());
        let mount = p
            .ancestors()
            .nth(rel.components().count() + 1)
            .expect("mount");
        let entry = mountinfo
            .iter()
            .find(|m| m.mount_point == mount)
            .unwrap_or_else(|| panic!("{} is not a mount", mount.display()));
        // A hybrid host's unified hierarchy holds the container too, as with runc.
        if entry.is_v2() {
            continue;
        }
        assert!(entry.is_v1(), "{}", mount.display());
        assert!(
            v1::Ctl::ALL.iter().any(|c| entry.has_option(c.name())),
            "{} is not a controller hierarchy",
            mount.display()
        );
    }
    // This host mounts these separately; hybrid's systemd and unified are not used.
    for name in [
        "cpu", "cpuacct", "cpuset", "memory", "pids", "devices", "freezer", "blkio",
    ] {
        if Path::new("/sys/fs/cgroup").join(name).is_dir() {
            let _ = leaf(cg.as_ref(), name);
        }
    }
    // Never the named systemd hierarchy; the unified one only on a hybrid host.
    assert!(
        !cg.paths()
            .iter()
            .any(|p| p.starts_with("/sys/fs/cgroup/systemd"))
    );

    cg.create().expect("create");
    cg.create().expect("create is idempotent");
    for p in cg.paths() {
        assert!(p.is_dir(), "{}", p.display());
    }
    let cpuset = leaf(cg.as_ref(), "cpuset");
    assert!(!read_trim(&cpuset.join("cpuset.cpus")).is_empty());
    assert!(!read_trim(&cpuset.join("cpuset.mems")).is_empty());

    cg.destroy().expect("destroy");
    for p in cg.paths() {
        assert!(!p.exists(), "{} left behind", p.display());
        // Only the leaf goes: the intermediate `pod1` (and the parent) stay.
        assert!(p.parent().is_some_and(Path::is_dir));
    }
    cg.destroy().expect("destroying twice is fine");
    assert!(matches!(cg.stats(), Err(CgroupError::NotFound { .. })));
    drop(fx);
}

#[test]
fn v1_nested_parent_gets_cpus_and_mems() {
    require_root!();
    let parent = format!("{}/nested/berth", unique_parent());
    let Some((cg, mut fx, _)) = open_v1_with_parent("pod/ctr", &parent) else {
        return;
    };
    cg.create().expect("create");
    let cpuset = leaf(cg.as_ref(), "cpuset");
    for dir in cpuset.ancestors().take(5) {
        assert!(
            !read_trim(&dir.join("cpuset.cpus")).is_empty(),
            "{}",
            dir.display()
        );
        assert!(
            !read_trim(&dir.join("cpuset.mems")).is_empty(),
            "{}",
            dir.display()
        );
    }
    // An empty cpuset would refuse the process with ENOSPC.
    let (pid, stdin) = fx.spawn("exit 0");
    cg.add_process(pid).expect("add");
    go(stdin);
    assert!(fx.wait(pid).0.success());
    cg.destroy().expect("destroy");
    assert!(!cpuset.exists());
}

#[test]
fn v1_resources_are_written_and_read_back() {
    require_root!();
    let Some((cg, _fx, _)) = open_v1_test("ctr") else {
        return;
    };
    cg.create().expect("create");
    let memory = leaf(cg.as_ref(), "memory");
    let has_memsw = memory.join("memory.memsw.limit_in_bytes").exists();
    let mut mem = LinuxMemoryBuilder::default()
        .limit(64 * MIB)
        .reservation(32 * MIB)
        .swappiness(10u64);
    if has_memsw {
        mem = mem.swap(96 * MIB);
    }
    let res = LinuxResourcesBuilder::default()
        .memory(mem.build().expect("memory"))
        .cpu(
            LinuxCpuBuilder::default()
                .shares(512u64)
                .quota(50_000i64)
                .period(100_000u64)
                .cpus("0")
                .mems("0")
                .build()
                .expect("cpu"),
        )
        .pids(LinuxPidsBuilder::default().limit(10).build().expect("pids"))
        .build()
        .expect("resources");
    cg.apply(&res).expect("apply");

    assert_eq!(
        read_trim(&memory.join("memory.limit_in_bytes")),
        (64 * MIB).to_string()
    );
    assert_eq!(
        read_trim(&memory.join("memory.soft_limit_in_bytes")),
        (32 * MIB).to_string()
    );
    assert_eq!(read_trim(&memory.join("memory.swappiness")), "10");
    if has_memsw {
        assert_eq!(
            read_trim(&memory.join("memory.memsw.limit_in_bytes")),
            (96 * MIB).to_string()
        );
    }
    assert_eq!(read_trim(&leaf(cg.as_ref(), "pids").join("pids.max")), "10");
    let cpu = leaf(cg.as_ref(), "cpu");
    assert_eq!(read_trim(&cpu.join("cpu.shares")), "512");
    assert_eq!(read_trim(&cpu.join("cpu.cfs_quota_us")), "50000");
    assert_eq!(read_trim(&cpu.join("cpu.cfs_period_us")), "100000");
    assert_eq!(
        read_trim(&leaf(cg.as_ref(), "cpuset").join("cpuset.cpus")),
        "0"
    );

    let st = cg.stats().expect("stats");
    assert_eq!(st.memory.limit_bytes, Some(64 << 20));
    assert_eq!(st.pids.limit, Some(10));

    // Shrinking memory below memsw and growing both again exercise the
    // write ordering; unlimited memory makes memsw unlimited too.
    if has_memsw {
        let shrink = LinuxResourcesBuilder::default()
            .memory(
                LinuxMemoryBuilder::default()
                    .limit(16 * MIB)
                    .swap(16 * MIB)
                    .build()
                    .expect("memory"),
            )
            .build()
            .expect("resources");
        cg.apply(&shrink).expect("shrink");
        assert_eq!(
            read_trim(&memory.join("memory.memsw.limit_in_bytes")),
            (16 * MIB).to_string()
        );
        let grow = LinuxResourcesBuilder::default()
            .memory(
                LinuxMemoryBuilder::default()
                    .limit(128 * MIB)
                    .swap(256 * MIB)
                    .build()
                    .expect("memory"),
            )
            .build()
            .expect("resources");
        cg.apply(&grow).expect("grow");
        assert_eq!(
            read_trim(&memory.join("memory.limit_in_bytes")),
            (128 * MIB).to_string()
        );
        let unlimited = LinuxResourcesBuilder::default()
            .memory(
                LinuxMemoryBuilder::default()
                    .limit(-1)
                    .build()
                    .expect("memory"),
            )
            .build()
            .expect("resources");
        cg.apply(&unlimited).expect("unlimited");
        assert_eq!(cg.stats().expect("stats").memory.limit_bytes, None);
        assert!(
            read_trim(&memory.join("memory.memsw.limit_in_bytes"))
                .parse::<u64>()
                .expect("memsw")
                > 1 << 62
        );
    }

    // Errors name the OCI field.
    let bad = LinuxResourcesBuilder::default()
        .memory(
            LinuxMemoryBuilder::default()
                .limit(64 * MIB)
                .swap(32 * MIB)
                .build()
                .expect("memory"),
        )
        .build()
        .expect("resources");
    let msg = cg
        .apply(&bad)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(msg.contains("linux.resources.memory.swap"), "{msg}");
    let bad = LinuxResourcesBuilder::default()
        .cpu(
            LinuxCpuBuilder::default()
                .cpus("9999")
                .build()
                .expect("cpu"),
        )
        .build()
        .expect("resources");
    let msg = cg
        .apply(&bad)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        msg.contains("linux.resources.cpu.cpus") && msg.contains("cpuset.cpus"),
        "{msg}"
    );
    let mut unified = HashMap::new();
    unified.insert("memory.high".to_string(), "1M".to_string());
    let bad = LinuxResourcesBuilder::default()
        .unified(unified)
        .build()
        .expect("resources");
    let msg = cg
        .apply(&bad)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(msg.contains("linux.resources.unified"), "{msg}");

    cg.destroy().expect("destroy");
}

#[test]
fn v1_processes_freeze_thaw_and_stats() {
    require_root!();
    let Some((cg, mut fx, _)) = open_v1_test("a/b") else {
        return;
    };
    cg.create().expect("create");
    cg.apply(
        &LinuxResourcesBuilder::default()
            .pids(LinuxPidsBuilder::default().limit(10).build().expect("pids"))
            .build()
            .expect("resources"),
    )
    .expect("apply");

    // One child execs `sleep` after joining (so its new memory is charged
    // here), another spins.
    let (sleeper, stdin) = fx.spawn("exec sleep 1000");
    cg.add_process(sleeper).expect("add sleeper");
    go(stdin);
    wait_comm(sleeper, "sleep");
    let (spinner, stdin) = fx.spawn("while :; do :; done");
    cg.add_process(spinner).expect("add spinner");
    go(stdin);

    let mut expected = vec![sleeper, spinner];
    expected.sort_unstable();
    assert_eq!(cg.pids().expect("pids"), expected);
    for p in cg.paths() {
        let procs = read_trim(&p.join("cgroup.procs"));
        assert!(
            procs.lines().any(|l| l == sleeper.to_string()),
            "{}: {procs}",
            p.display()
        );
    }

    cg.freeze().expect("freeze");
    assert!(cg.is_frozen().expect("is_frozen"));
    assert_eq!(
        read_trim(&leaf(cg.as_ref(), "freezer").join("freezer.state")),
        "FROZEN"
    );
    let before = cpu_ticks(spinner);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(cpu_ticks(spinner), before, "a frozen process used CPU");

    cg.thaw().expect("thaw");
    assert!(!cg.is_frozen().expect("is_frozen"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while cpu_ticks(spinner) == before {
        assert!(Instant::now() < deadline, "the thawed process never ran");
        std::thread::sleep(Duration::from_millis(10));
    }

    let st = cg.stats().expect("stats");
    assert_eq!(st.pids.current, 2);
    assert_eq!(st.pids.limit, Some(10));
    assert!(st.cpu.usage_total_ns > 0, "{st:?}");
    assert!(st.memory.usage_bytes > 0, "{st:?}");
    assert!(st.memory.working_set_bytes <= st.memory.usage_bytes);
    assert!(st.memory.max_usage_bytes >= st.memory.usage_bytes);
    let json = serde_json::to_value(&st).expect("serialize");
    assert!(
        json["cpu"]["usage_total_ns"]
            .as_u64()
            .is_some_and(|v| v > 0)
    );

    // Destroy must wait out exiting processes (EBUSY) and leave nothing.
    for mut c in fx.children.drain(..) {
        let _ = c.kill();
        let _ = c.wait();
    }
    cg.destroy().expect("destroy");
    for p in cg.paths() {
        assert!(!p.exists(), "{} left behind", p.display());
    }
}

#[test]
fn v1_devices_are_enforced() {
    require_root!();
    let Some((cg, mut fx, _)) = open_v1_test("dev") else {
        return;
    };
    cg.create().expect("create");
    cg.apply(&only_dev_null()).expect("apply");
    assert_eq!(
        read_trim(&leaf(cg.as_ref(), "devices").join("devices.list")),
        "c 1:3 rwm"
    );

    let (pid, stdin) = fx.spawn("cat /dev/null && echo null-ok; head -c1 /dev/zero");
    cg.add_process(pid).expect("add");
    go(stdin);
    let (status, out, err) = fx.wait(pid);
    assert!(out.contains("null-ok"), "{out} {err}");
    assert!(
        !status.success() && err.contains("Operation not permitted"),
        "{status} {err}"
    );
    cg.destroy().expect("destroy");
}

#[test]
fn v1_oom_kills_are_counted() {
    require_root!();
    let Some((cg, mut fx, _)) = open_v1_test("oom") else {
        return;
    };
    cg.create().expect("create");
    let memory = leaf(cg.as_ref(), "memory");
    let mut mem = LinuxMemoryBuilder::default().limit(16 * MIB);
    if memory.join("memory.memsw.limit_in_bytes").exists() {
        mem = mem.swap(16 * MIB);
    }
    let res = LinuxResourcesBuilder::default()
        .memory(mem.build().expect("memory"))
        .build()
        .expect("resources");
    cg.apply(&res).expect("apply");
    assert_eq!(cg.oom_kills().expect("oom_kills"), 0);

    // The shell holds 128 MiB of command output in memory: over the limit.
    let (pid, stdin) = fx.spawn("x=$(head -c 134217728 /dev/zero | tr '\\0' a); echo ${#x}");
    cg.add_process(pid).expect("add");
    go(stdin);
    let _ = fx.wait(pid);
    assert!(cg.oom_kills().expect("oom_kills") >= 1);
    assert!(cg.stats().expect("stats").memory.oom_kills >= 1);
    cg.destroy().expect("destroy");
}

#[test]
fn v2_lifecycle_freeze_and_device_filter() {
    require_root!();
    let Some((cg, mut fx)) = open_v2_test("pod/ctr") else {
        return;
    };
    let leaf = cg.paths().pop().expect("one path");
    cg.create().expect("create");
    assert!(leaf.is_dir());

    let (sleeper, stdin) = fx.spawn("exec sleep 1000");
    cg.add_process(sleeper).expect("add");
    go(stdin);
    wait_comm(sleeper, "sleep");
    let (spinner, stdin) = fx.spawn("while :; do :; done");
    cg.add_process(spinner).expect("add");
    go(stdin);
    let mut expected = vec![sleeper, spinner];
    expected.sort_unstable();
    assert_eq!(cg.pids().expect("pids"), expected);
    let own = read_trim(&PathBuf::from(format!("/proc/{sleeper}/cgroup")));
    assert!(
        own.lines()
            .any(|l| l.starts_with("0::/") && l.ends_with("/pod/ctr")),
        "{own}"
    );

    cg.freeze().expect("freeze");
    assert!(cg.is_frozen().expect("is_frozen"));
    assert_eq!(
        fsutil::keyed_value(&read_trim(&leaf.join("cgroup.events")), "frozen"),
        Some(1)
    );
    let before = cpu_ticks(spinner);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(cpu_ticks(spinner), before, "a frozen process used CPU");
    cg.thaw().expect("thaw");
    assert!(!cg.is_frozen().expect("is_frozen"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while cpu_ticks(spinner) == before {
        assert!(Instant::now() < deadline, "the thawed process never ran");
        std::thread::sleep(Duration::from_millis(10));
    }
    let st = cg.stats().expect("stats");
    assert!(st.cpu.usage_total_ns > 0, "{st:?}");

    // Deny everything: opening /dev/null fails with EPERM.
    let deny_all = LinuxResourcesBuilder::default()
        .devices(vec![device(false, LinuxDeviceType::A, None, None, "rwm")])
        .build()
        .expect("resources");
    cg.apply(&deny_all).expect("apply deny-all");
    assert_eq!(devices::attached_count(&leaf).expect("query"), 1);
    let (pid, stdin) = fx.spawn("cat /dev/null && echo opened");
    cg.add_process(pid).expect("add");
    go(stdin);
    let (status, out, err) = fx.wait(pid);
    assert!(
        !status.success() && !out.contains("opened"),
        "{status} {out}"
    );
    assert!(err.contains("Operation not permitted"), "{err}");

    // Replacing the rules replaces the program: /dev/null now works,
    // /dev/zero still does not.
    cg.apply(&only_dev_null()).expect("apply allow-null");
    assert_eq!(devices::attached_count(&leaf).expect("query"), 1);
    let (pid, stdin) = fx.spawn("cat /dev/null && echo null-ok; head -c1 /dev/zero");
    cg.add_process(pid).expect("add");
    go(stdin);
    let (status, out, err) = fx.wait(pid);
    assert!(out.contains("null-ok"), "{out} {err}");
    assert!(
        !status.success() && err.contains("Operation not permitted"),
        "{status} {err}"
    );

    // v1-only values are refused with the field named.
    let rt = LinuxResourcesBuilder::default()
        .cpu(
            LinuxCpuBuilder::default()
                .realtime_runtime(1000i64)
                .build()
                .expect("cpu"),
        )
        .build()
        .expect("resources");
    let msg = cg
        .apply(&rt)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(msg.contains("linux.resources.cpu.realtimeRuntime"), "{msg}");

    for mut c in fx.children.drain(..) {
        let _ = c.kill();
        let _ = c.wait();
    }
    cg.destroy().expect("destroy");
    assert!(!leaf.exists());
    assert!(
        leaf.parent().is_some_and(Path::is_dir),
        "only the leaf is removed"
    );
    cg.destroy().expect("destroying twice is fine");
}

#[test]
fn detect_and_open_agree_with_mountinfo() {
    let cfg = CgroupConfig {
        parent: unique_parent(),
        ..Default::default()
    };
    let Ok(h) = detect(&cfg) else {
        eprintln!("skipped: no cgroup filesystem at /sys/fs/cgroup");
        return;
    };
    let cg = open(&cfg, Path::new("x")).expect("open");
    let expected_v2 = nix::sys::statfs::statfs("/sys/fs/cgroup")
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC);
    assert_eq!(h == Hierarchy::V2, expected_v2);
    let suffix = Path::new(&cfg.parent).join("x");
    if expected_v2 {
        assert_eq!(cg.paths(), vec![Path::new("/sys/fs/cgroup").join(&suffix)]);
    } else {
        assert!(cg.paths().len() > 1);
        assert!(cg.paths().iter().all(|p| p.ends_with(&suffix)));
    }
    // open creates nothing.
    assert!(
        cg.paths()
            .iter()
            .all(|p| !p.exists() && p.parent().is_some_and(|p| !p.exists()))
    );
    assert!(open(&cfg, Path::new("../x")).is_err());
    assert!(open(&cfg, Path::new("")).is_err());
    assert!(
        open(
            &CgroupConfig {
                parent: "a/../b".into(),
                ..cfg.clone()
            },
            Path::new("x")
        )
        .is_err()
    );
    assert!(open_v2(Path::new("/proc"), "berth", Path::new("x")).is_err());
    assert!(matches!(
        open(
            &CgroupConfig {
                mount_root: "/nonexistent".into(),
                ..cfg
            },
            Path::new("x")
        ),
        Err(CgroupError::NotMounted { .. })
    ));
}
