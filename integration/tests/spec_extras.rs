//! Less common spec fields: linux.sysctl, process.user.umask, linux.devices
//! with linux.resources.devices, bind mount propagation, oomScoreAdj and
//! rlimits (with berth's clamping where the caller lacks CAP_SYS_RESOURCE).
//! Every test here holds a LeakCheck, so they run one at a time.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use berth_integration::proc::{self, ns_link};
use berth_integration::workdir::tempdir;
use berth_integration::{Bundle, LeakCheck, Runtime, Spec, skip_unless_berth, unique_id};
use serde_json::json;

const SETTLE: Duration = Duration::from_secs(10);

/// `run`s the spec in the foreground; it must exit 0.
fn run_ok(rt: &Runtime, id: &str, spec: &Spec) -> Result<berth_integration::Output> {
    let b = Bundle::new(spec)?;
    rt.run(id, &b)?.check()
}

fn read_trimmed(path: &str) -> Result<String> {
    Ok(std::fs::read_to_string(path)
        .with_context(|| format!("reading {path}"))?
        .trim()
        .to_string())
}

/// The value of `key` in `key=value` lines the container printed.
fn field<'a>(stdout: &'a str, key: &str) -> Option<&'a str> {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
}

#[test]
fn sysctls_apply_inside_the_container_only() -> Result<()> {
    let check = LeakCheck::start();
    let host_fwd = read_trimmed("/proc/sys/net/ipv4/ip_forward")?;
    let host_shm = read_trimmed("/proc/sys/kernel/shmmax")?;
    assert_ne!(host_shm, "123456789", "pick another shmmax for this host");
    let rt = Runtime::new()?;
    let id = unique_id("sysctl");
    let spec = Spec::sh(
        &id,
        "echo fwd=$(cat /proc/sys/net/ipv4/ip_forward); \
         echo shm=$(cat /proc/sys/kernel/shmmax); \
         echo net=$(readlink /proc/self/ns/net); echo ipc=$(readlink /proc/self/ns/ipc)",
    )
    .namespaces(&["pid", "network", "ipc", "uts", "mount"])
    .set(
        "/linux/sysctl",
        json!({ "net.ipv4.ip_forward": "1", "kernel.shmmax": "123456789" }),
    );
    let out = run_ok(&rt, &id, &spec)?;
    assert_eq!(field(&out.stdout, "fwd"), Some("1"), "{out}");
    assert_eq!(field(&out.stdout, "shm"), Some("123456789"), "{out}");
    // The sysctls were written in the container's own namespaces.
    assert_ne!(
        field(&out.stdout, "net"),
        Some(ns_link(None, "net")?.as_str()),
        "{out}"
    );
    assert_ne!(
        field(&out.stdout, "ipc"),
        Some(ns_link(None, "ipc")?.as_str()),
        "{out}"
    );
    assert_eq!(
        read_trimmed("/proc/sys/net/ipv4/ip_forward")?,
        host_fwd,
        "the host's ip_forward changed"
    );
    assert_eq!(
        read_trimmed("/proc/sys/kernel/shmmax")?,
        host_shm,
        "the host's shmmax changed"
    );
    check.assert_clean(SETTLE)
}

#[test]
fn umask_applies_to_new_files() -> Result<()> {
    let check = LeakCheck::start();
    let rt = Runtime::new()?;
    let id = unique_id("umask");
    let spec = Spec::sh(
        &id,
        "echo umask=$(umask); touch /tmp/f; echo file=$(stat -c %a /tmp/f); \
         mkdir /tmp/d; echo dir=$(stat -c %a /tmp/d)",
    )
    .set("/process/user/umask", json!(0o077))
    .tmpfs("/tmp");
    let out = run_ok(&rt, &id, &spec)?;
    assert_eq!(field(&out.stdout, "umask"), Some("0077"), "{out}");
    assert_eq!(field(&out.stdout, "file"), Some("600"), "{out}");
    assert_eq!(field(&out.stdout, "dir"), Some("700"), "{out}");
    check.assert_clean(SETTLE)
}

/// A `linux.devices` entry for a character device, mode 0666, owned by root.
fn char_device(path: &str, major: i64, minor: i64) -> serde_json::Value {
    json!({
        "path": path, "type": "c", "major": major, "minor": minor,
        "fileMode": 0o666, "uid": 0, "gid": 0
    })
}

fn allow_char(major: i64, minor: i64) -> serde_json::Value {
    json!({ "allow": true, "type": "c", "major": major, "minor": minor, "access": "rwm" })
}

/// /dev/fuse (10:229): opening it needs no capability and it is in neither
/// runtime's default device list, so whether it opens is up to the device
/// cgroup alone. (/dev/mem, 1:1, would not do: opening it needs
/// CAP_SYS_RAWIO, which the container lacks, so it fails with EPERM whatever
/// the cgroup says.)
const FUSE: (i64, i64) = (10, 229);

/// Opens the node for reading without reading from it (in a child shell: a
/// failed redirection of the special builtin `:` ends a POSIX shell).
const OPEN_XFUSE: &str =
    "if sh -c ': < /dev/xfuse'; then echo xfuse=open; else echo xfuse=denied; fi";

#[test]
fn spec_devices_are_created_and_allowed_ones_usable() -> Result<()> {
    let check = LeakCheck::start();
    let rt = Runtime::new()?;
    let id = unique_id("devallow");
    let spec = Spec::sh(
        &id,
        &format!(
            "echo mynull=$(stat -c '%t:%T %a' /dev/mynull); \
             echo x > /dev/mynull && echo write=ok; \
             echo xfuse-node=$(stat -c '%t:%T %a' /dev/xfuse); {OPEN_XFUSE}"
        ),
    )
    .push("/linux/devices", char_device("/dev/mynull", 1, 3))
    .push("/linux/devices", char_device("/dev/xfuse", FUSE.0, FUSE.1))
    // The runc default spec starts resources.devices with a deny-all rule.
    .push("/linux/resources/devices", allow_char(1, 3))
    .push("/linux/resources/devices", allow_char(FUSE.0, FUSE.1));
    assert_eq!(
        spec.0["linux"]["resources"]["devices"][0],
        json!({ "allow": false, "access": "rwm" })
    );
    let out = run_ok(&rt, &id, &spec)?;
    assert_eq!(field(&out.stdout, "mynull"), Some("1:3 666"), "{out}");
    assert_eq!(field(&out.stdout, "write"), Some("ok"), "{out}");
    // %t is hex: 10 -> a, 229 -> e5.
    assert_eq!(field(&out.stdout, "xfuse-node"), Some("a:e5 666"), "{out}");
    assert_eq!(field(&out.stdout, "xfuse"), Some("open"), "{out}");
    check.assert_clean(SETTLE)
}

#[test]
fn spec_devices_without_an_allow_rule_cannot_be_opened() -> Result<()> {
    let check = LeakCheck::start();
    let rt = Runtime::new()?;
    let id = unique_id("devdeny");
    let spec = Spec::sh(
        &id,
        &format!("echo xfuse-node=$(stat -c '%t:%T %a' /dev/xfuse); {OPEN_XFUSE}"),
    )
    .push("/linux/devices", char_device("/dev/xfuse", FUSE.0, FUSE.1));
    // Only the deny-all rule of the runc default spec.
    assert_eq!(
        spec.0["linux"]["resources"]["devices"],
        json!([{ "allow": false, "access": "rwm" }])
    );
    let out = run_ok(&rt, &id, &spec)?;
    // The device cgroup refuses to open the node ...
    assert_eq!(
        field(&out.stdout, "xfuse"),
        Some("denied"),
        "a device not allowed by linux.resources.devices was opened: {out}"
    );
    // ... which exists, as the spec asks.
    assert_eq!(field(&out.stdout, "xfuse-node"), Some("a:e5 666"), "{out}");
    assert!(
        out.stderr.contains("Operation not permitted"),
        "expected EPERM from the device cgroup: {out}"
    );
    check.assert_clean(SETTLE)
}

fn sh_cmd(program: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}

/// Host mount points made by a test, unmounted (last first) when dropped.
#[derive(Default)]
struct HostMounts(Vec<PathBuf>);

impl HostMounts {
    fn mount(&mut self, args: &[&str], target: &Path) -> Result<()> {
        let mut all = args.to_vec();
        all.push(path_str(target));
        sh_cmd("mount", &all)?;
        self.0.push(target.to_path_buf());
        Ok(())
    }

    /// Unmounts everything, last first.
    fn unmount_all(&mut self) -> Result<()> {
        while let Some(t) = self.0.pop() {
            if let Err(e) = sh_cmd("umount", &[path_str(&t)]) {
                // Detach instead, so nothing stays mounted; still an error.
                let _ = sh_cmd("umount", &["-l", path_str(&t)]);
                return Err(e);
            }
        }
        Ok(())
    }
}

impl Drop for HostMounts {
    fn drop(&mut self) {
        while let Some(t) = self.0.pop() {
            let _ = sh_cmd("umount", &["-l", path_str(&t)]);
        }
    }
}

#[test]
fn host_mounts_propagate_into_an_rshared_bind_mount() -> Result<()> {
    let check = LeakCheck::start();
    let dir = tempdir("prop-")?;
    let d = dir.path().to_path_buf();
    let sub = d.join("sub");
    std::fs::create_dir(&sub)?;
    let mut host = HostMounts::default();
    host.mount(&["--bind", path_str(&d)], &d)?;
    sh_cmd("mount", &["--make-shared", path_str(&d)])?;

    let rt = Runtime::new()?;
    let id = unique_id("prop");
    let spec = Spec::test(&id, &["sleep", "1000"]).mount(json!({
        "destination": "/shared", "type": "bind", "source": d,
        "options": ["rbind", "rshared"]
    }));
    let b = Bundle::new(&spec)?;
    let pid = rt.create_started(&id, &b)?.pid().context("no init pid")?;
    let ls = rt.cmd(&["exec", &id, "ls", "/shared"])?.check()?;
    assert_eq!(ls.stdout, "sub\n", "{ls}");

    // A mount made on the host after the start reaches the container.
    host.mount(&["-t", "tmpfs", "-o", "size=1m", "tmpfs"], &sub)?;
    std::fs::write(sub.join("file"), "from-host\n")?;
    let cat = rt.cmd(&["exec", &id, "cat", "/shared/sub/file"])?;
    ensure!(cat.success(), "the host's mount did not propagate: {cat}");
    assert_eq!(cat.stdout, "from-host\n", "{cat}");
    let mi = rt
        .cmd(&["exec", &id, "cat", "/proc/self/mountinfo"])?
        .check()?;
    let shared = proc::parse_mountinfo(&mi.stdout);
    let m = shared
        .iter()
        .find(|m| m.mount_point == Path::new("/shared/sub"))
        .with_context(|| format!("no /shared/sub in the container: {mi}"))?;
    assert_eq!(m.fs_type, "tmpfs", "{m:?}");
    // Nothing the runtime mounted for the container shows on the host.
    let ours: Vec<_> = proc::mounts()
        .into_iter()
        .filter(|m| m.mount_point.starts_with(&d) || m.mount_point.starts_with(b.path()))
        .map(|m| m.mount_point)
        .collect();
    assert_eq!(ours, vec![d.clone(), sub.clone()], "host mounts");

    // Unmounting on the host propagates too.
    sh_cmd("umount", &[path_str(&sub)])?;
    host.0.retain(|p| *p != sub);
    let gone = rt.cmd(&["exec", &id, "cat", "/shared/sub/file"])?;
    ensure!(
        !gone.success(),
        "the host's unmount did not propagate: {gone}"
    );

    rt.delete_force(&id)?;
    ensure!(proc::wait_gone(pid, SETTLE), "the init survived");
    host.unmount_all()?;
    check.assert_clean(SETTLE)
}

#[test]
fn oom_score_adj_is_set() -> Result<()> {
    let check = LeakCheck::start();
    let rt = Runtime::new()?;
    let id = unique_id("oomadj");
    let spec =
        Spec::sh(&id, "cat /proc/self/oom_score_adj").set("/process/oomScoreAdj", json!(500));
    let out = run_ok(&rt, &id, &spec)?;
    assert_eq!(out.stdout, "500\n", "{out}");
    check.assert_clean(SETTLE)
}

/// CAP_SYS_RESOURCE (bit 24) in this process's effective set.
fn have_sys_resource() -> Result<bool> {
    let eff = proc::status_field(std::process::id() as i32, "CapEff").context("no CapEff")?;
    Ok(u64::from_str_radix(&eff, 16)? & (1 << 24) != 0)
}

#[test]
fn negative_oom_score_adj_without_cap_sys_resource_is_clamped() -> Result<()> {
    if skip_unless_berth("clamping oomScoreAdj without CAP_SYS_RESOURCE; runc fails")? {
        return Ok(());
    }
    let check = LeakCheck::start();
    let own: i32 = read_trimmed("/proc/self/oom_score_adj")?.parse()?;
    let rt = Runtime::new()?;
    let id = unique_id("oomneg");
    let spec =
        Spec::sh(&id, "cat /proc/self/oom_score_adj").set("/process/oomScoreAdj", json!(-500));
    let out = run_ok(&rt, &id, &spec)?;
    let inside: i32 = out
        .stdout
        .trim()
        .parse()
        .with_context(|| format!("not a number: {out}"))?;
    if have_sys_resource()? {
        // Nothing to clamp on a machine where root may lower it.
        assert_eq!(inside, -500, "{out}");
    } else {
        assert!(inside >= own, "{inside} < the caller's {own}: {out}");
        assert!(
            out.stderr.contains("oom_score_adj"),
            "no warning about the clamp: {out}"
        );
    }
    check.assert_clean(SETTLE)
}

const ULIMITS: &str = "echo soft=$(ulimit -n); echo hard=$(ulimit -Hn)";

#[test]
fn nofile_rlimit_is_set() -> Result<()> {
    let check = LeakCheck::start();
    let rt = Runtime::new()?;
    let id = unique_id("nofile");
    let spec = Spec::sh(&id, ULIMITS).rlimit("RLIMIT_NOFILE", 1024, 2048);
    let out = run_ok(&rt, &id, &spec)?;
    assert_eq!(field(&out.stdout, "soft"), Some("1024"), "{out}");
    assert_eq!(field(&out.stdout, "hard"), Some("2048"), "{out}");
    check.assert_clean(SETTLE)
}

/// The hard "Max open files" limit of this process (None if unlimited).
fn own_nofile_hard() -> Result<Option<u64>> {
    let limits = std::fs::read_to_string("/proc/self/limits")?;
    let line = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .context("no Max open files in /proc/self/limits")?;
    let hard = line
        .split_whitespace()
        .nth(1)
        .context("no hard limit field")?;
    if hard == "unlimited" {
        return Ok(None);
    }
    Ok(Some(hard.parse()?))
}

#[test]
fn nofile_hard_limit_above_the_callers_is_clamped() -> Result<()> {
    if skip_unless_berth("clamping rlimits without CAP_SYS_RESOURCE; runc fails")? {
        return Ok(());
    }
    let check = LeakCheck::start();
    let Some(own_hard) = own_nofile_hard()? else {
        bail!("this process's NOFILE hard limit is unlimited: nothing to exceed");
    };
    let rt = Runtime::new()?;
    let id = unique_id("nofileclamp");
    let spec = Spec::sh(&id, ULIMITS).rlimit("RLIMIT_NOFILE", 1024, own_hard + 1000);
    let out = run_ok(&rt, &id, &spec)?;
    assert_eq!(field(&out.stdout, "soft"), Some("1024"), "{out}");
    let want_hard = if have_sys_resource()? {
        own_hard + 1000
    } else {
        assert!(
            out.stderr.contains("clamped"),
            "no warning about the clamp: {out}"
        );
        own_hard
    };
    assert_eq!(
        field(&out.stdout, "hard"),
        Some(want_hard.to_string().as_str()),
        "{out}"
    );
    check.assert_clean(SETTLE)
}

#[test]
fn rro_makes_a_bind_mount_read_only_all_the_way_down() -> Result<()> {
    if skip_unless_berth("recursive read-only (rro) bind mounts; runc 1.1 lacks them")? {
        return Ok(());
    }
    let check = LeakCheck::start();
    let dir = tempdir("rro-")?;
    let d = dir.path().to_path_buf();
    let sub = d.join("sub");
    std::fs::create_dir(&sub)?;
    let mut host = HostMounts::default();
    host.mount(&["-t", "tmpfs", "-o", "size=1m", "tmpfs"], &sub)?;

    let rt = Runtime::new()?;
    let id = unique_id("rro");
    let spec = Spec::sh(
        &id,
        "touch /data/top 2>&1; echo top=$?; touch /data/sub/below 2>&1; echo below=$?",
    )
    .mount(json!({
        "destination": "/data", "type": "bind", "source": d,
        "options": ["rbind", "rro"]
    }));
    let b = Bundle::new(&spec)?;
    let out = rt.run(&id, &b)?;
    ensure!(out.stdout.contains("top=1"), "{out}");
    // A plain "ro" would leave the submount writable; rro must not.
    ensure!(out.stdout.contains("below=1"), "{out}");
    ensure!(!sub.join("below").exists() && !d.join("top").exists());
    host.unmount_all()?;
    check.assert_clean(SETTLE)
}
