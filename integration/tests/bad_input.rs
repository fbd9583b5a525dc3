//! Bad input is refused cleanly: malformed or unsafe config.json, invalid or
//! taken container IDs, mount destinations and a cwd that try to leave the
//! rootfs, and a failure late in setup. Every refusal names what is wrong and
//! leaves nothing behind (no state, cgroup, mount or process).
//! Every test here holds a LeakCheck, so they run one at a time.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use berth_integration::exec::{self, Output};
use berth_integration::proc::{self, parse_mountinfo};
use berth_integration::runtime::DEFAULT_TIMEOUT;
use berth_integration::spec::test_cgroups_path;
use berth_integration::workdir::{base_dir, tempdir};
use berth_integration::{Bundle, LeakCheck, Runtime, Spec, unique_id};
use serde_json::json;

const SETTLE: Duration = Duration::from_secs(10);

/// How a bad config is made from a valid test spec.
enum Bad {
    /// config.json replaced by this text.
    Raw(&'static str),
    /// An edit of the spec of that container ID.
    Edit(fn(Spec, &str) -> Spec),
}

struct BadConfig {
    tag: &'static str,
    bad: Bad,
    /// What berth's error must name.
    berth_says: &'static str,
    /// What runc 1.1's error names, when runc refuses the config at all
    /// (None: runc accepts it, so the case only applies to berth).
    runc_says: Option<&'static str>,
}

fn bad_configs() -> Vec<BadConfig> {
    vec![
        BadConfig {
            tag: "badjson",
            bad: Bad::Raw("{\"ociVersion\": \"1.0.2\", \"process\": {"),
            berth_says: "config.json",
            runc_says: Some("unexpected EOF"),
        },
        BadConfig {
            tag: "badtype",
            bad: Bad::Edit(|s, _| s.set("/process/args", json!("sh"))),
            berth_says: "process.args",
            runc_says: Some("process.args"),
        },
        BadConfig {
            tag: "badcap",
            bad: Bad::Edit(|s, _| s.push("/process/capabilities/bounding", json!("CAP_NOPE"))),
            berth_says: "process.capabilities.bounding",
            // runc 1.1 only warns about unknown capabilities.
            runc_says: None,
        },
        BadConfig {
            tag: "relcwd",
            bad: Bad::Edit(|s, _| s.cwd("tmp")),
            berth_says: "process.cwd",
            runc_says: Some("Cwd"),
        },
        BadConfig {
            tag: "norootfs",
            bad: Bad::Edit(|s, _| s.root_path(Path::new("no-such-rootfs"))),
            berth_says: "root.path",
            runc_says: Some("no-such-rootfs"),
        },
        BadConfig {
            tag: "nonspath",
            bad: Bad::Edit(|s, id| {
                s.remove_namespace("network").push(
                    "/linux/namespaces",
                    json!({ "type": "network", "path": format!("/no/such/ns-{id}/net") }),
                )
            }),
            berth_says: "linux.namespaces[",
            runc_says: Some("/no/such/ns-"),
        },
        BadConfig {
            tag: "hostsysctl",
            bad: Bad::Edit(|s, _| s.set("/linux/sysctl", json!({ "vm.swappiness": "10" }))),
            berth_says: "linux.sysctl",
            runc_says: Some("vm.swappiness"),
        },
    ]
}

#[test]
fn malformed_configs_are_refused_naming_the_field() -> Result<()> {
    let check = LeakCheck::start();
    let rt = Runtime::new()?;
    let swappiness = std::fs::read_to_string("/proc/sys/vm/swappiness")?;
    for case in bad_configs() {
        let Some(needle) = (if rt.is_berth() {
            Some(case.berth_says)
        } else {
            case.runc_says
        }) else {
            continue;
        };
        let id = unique_id(case.tag);
        let mut b = Bundle::new(&Spec::test(&id, &["sleep", "1000"]))?;
        match case.bad {
            Bad::Raw(text) => std::fs::write(b.config_path(), text)?,
            Bad::Edit(edit) => {
                let spec = edit(b.spec().clone(), &id);
                b.write_spec(&spec)?;
            }
        }
        let out = rt.cmd(&["create", "--bundle", b.path_str(), &id])?;
        ensure!(
            !out.success(),
            "{}: create of a bad config succeeded: {out}",
            case.tag
        );
        ensure!(
            out.stderr.contains(needle),
            "{}: the error does not name {needle:?}: {out}",
            case.tag
        );
        eprintln!("{}: {}", case.tag, out.stderr.trim_end());
        let state = rt.cmd(&["state", &id])?;
        ensure!(
            !state.success(),
            "{}: a refused container has state: {state}",
            case.tag
        );
        rt.assert_no_state().with_context(|| case.tag)?;
        check
            .assert_clean(SETTLE)
            .with_context(|| format!("after {}", case.tag))?;
    }
    assert_eq!(
        std::fs::read_to_string("/proc/sys/vm/swappiness")?,
        swappiness,
        "the host's vm.swappiness changed"
    );
    Ok(())
}

/// `create --bundle B ID` with an ID that need not be UTF-8 or C-string
/// safe, bypassing the Runtime's bookkeeping (which would later run
/// `delete --force ID` with the bad ID).
fn create_raw(rt: &Runtime, bundle: &Bundle, id: OsString, n: usize) -> Result<Output> {
    let mut cmd: Command = rt.command(&["create", "--bundle", bundle.path_str()]);
    cmd.arg(id);
    exec::run(
        cmd,
        &rt.scratch().join(format!("out/badid-{n}")),
        DEFAULT_TIMEOUT,
    )
}

#[test]
fn invalid_container_ids_are_refused_and_create_nothing() -> Result<()> {
    let check = LeakCheck::start();
    let rt = Runtime::new()?;
    // A valid spec: were an ID accepted, the container would really be made.
    let cg_id = unique_id("badid");
    let b = Bundle::new(&Spec::test(&cg_id, &["sleep", "1000"]))?;
    let escape = format!("escape-{cg_id}");
    let outside_rel = rt.root().join("..").join(&escape);
    let outside_abs = base_dir().join(format!("abs-{cg_id}"));
    let ids: Vec<(&str, Vec<u8>)> = vec![
        ("slash", b"a/b".to_vec()),
        ("dotdot-escape", format!("../{escape}").into_bytes()),
        (
            "absolute",
            outside_abs.as_os_str().as_encoded_bytes().to_vec(),
        ),
        ("dotdot", b"..".to_vec()),
        ("dot", b".".to_vec()),
        ("newline", b"new\nline".to_vec()),
        ("empty", Vec::new()),
    ];
    let id_needle = if rt.is_berth() { "container ID" } else { "id" };
    for (n, (what, bytes)) in ids.into_iter().enumerate() {
        let out = create_raw(&rt, &b, OsString::from_vec(bytes.clone()), n)?;
        ensure!(
            !out.success(),
            "{what}: create accepted ID {bytes:?}: {out}"
        );
        eprintln!("{what}: {}", out.stderr.trim_end());
        ensure!(
            out.stderr.contains(id_needle),
            "{what}: the error does not talk about the ID: {out}"
        );
        let entries = rt.state_entries();
        ensure!(
            entries.is_empty(),
            "{what}: the state root is not empty: {entries:?}"
        );
        for p in [&outside_rel, &outside_abs] {
            ensure!(
                std::fs::symlink_metadata(p).is_err(),
                "{what}: {} was created",
                p.display()
            );
        }
        check
            .assert_clean(SETTLE)
            .with_context(|| format!("after ID {what}"))?;
    }
    // A NUL byte cannot even reach the runtime: argv strings are C strings,
    // so the command is refused before exec and nothing runs.
    let nul = OsString::from_vec(b"nul\0id".to_vec());
    let err = create_raw(&rt, &b, nul, 99).expect_err("an argv with a NUL byte was executed");
    let io = err
        .chain()
        .find_map(|e| e.downcast_ref::<std::io::Error>())
        .with_context(|| format!("not an I/O error: {err:#}"))?;
    assert_eq!(io.kind(), std::io::ErrorKind::InvalidInput, "{err:#}");
    assert!(rt.state_entries().is_empty(), "{:?}", rt.state_entries());
    check.assert_clean(SETTLE)?;
    Ok(())
}

#[test]
fn invalid_ids_are_refused_by_the_other_commands_too() -> Result<()> {
    let check = LeakCheck::start();
    let rt = Runtime::new()?;
    // Canaries where a bad ID joined to the state root would lead: the root
    // itself ("."), its parent (".."), a sibling ("../victim"), a subdir ("a/b").
    let root = rt.root();
    std::fs::create_dir_all(root.join("a/b"))?;
    std::fs::create_dir_all(rt.scratch().join("victim"))?;
    let canaries = [
        root.join("canary"),
        root.join("a/b/state.json"),
        rt.scratch().join("canary"),
        rt.scratch().join("victim/state.json"),
    ];
    for c in &canaries {
        std::fs::write(c, "{}")?;
    }
    let mut n = 0;
    for id in [".", "..", "../victim", "a/b"] {
        for args in [
            vec!["state", id],
            vec!["kill", id, "KILL"],
            vec!["delete", id],
            vec!["delete", "--force", id],
        ] {
            // Not through Runtime::cmd: it would remember the ID for cleanup.
            n += 1;
            let out = exec::run(
                rt.command(&args),
                &rt.scratch().join(format!("out/badcmd-{n}")),
                DEFAULT_TIMEOUT,
            )?;
            ensure!(!out.success(), "accepted ID {id:?}: {out}");
            for c in &canaries {
                ensure!(c.exists(), "{c:?} removed by {out}");
            }
        }
    }
    check.assert_clean(SETTLE)?;
    Ok(())
}

#[test]
fn an_existing_id_is_refused_and_the_first_container_is_untouched() -> Result<()> {
    let check = LeakCheck::start();
    let rt = Runtime::new()?;
    let id = unique_id("taken");
    let first = Bundle::new(&Spec::test(&id, &["sleep", "1000"]))?;
    let st = rt.create_started(&id, &first)?;
    let pid = st.pid().context("no pid")?;
    let started = proc::start_time(pid).context("no start time")?;
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;

    // Another bundle, another program, the same ID: by create and by run.
    let second = Bundle::new(&Spec::test(&id, &["sh", "-c", "echo second"]))?;
    let needle = if rt.is_berth() {
        "already exists"
    } else {
        "exists"
    };
    for sub in ["create", "run"] {
        let out = rt.cmd(&[sub, "--bundle", second.path_str(), &id])?;
        ensure!(!out.success(), "{sub} with a taken ID succeeded: {out}");
        ensure!(out.stderr.contains(needle), "{sub}: {out}");
        ensure!(
            !out.stdout.contains("second"),
            "{sub}: the second ran: {out}"
        );
        let now = rt.state(&id)?;
        assert_eq!(now.status(), "running", "{sub}: {}", now.0);
        assert_eq!(now.pid(), Some(pid), "{sub}: {}", now.0);
        assert_eq!(now.0["bundle"], first.path_str(), "{sub}: {}", now.0);
        assert_eq!(proc::start_time(pid), Some(started), "{sub}: init replaced");
        assert_eq!(proc::cmdline(pid), "sleep 1000", "{sub}");
        assert_eq!(
            std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?,
            cgroup,
            "{sub}: the init's cgroups changed"
        );
    }
    rt.delete_force(&id)?;
    ensure!(
        proc::wait_gone(pid, SETTLE),
        "init {pid} survived delete --force"
    );
    check.assert_clean(SETTLE)?;
    rt.assert_no_state()
}

/// A host directory name for the escape test, unique to this test process,
/// next to (not in) its scratch dir. Named like a scratch dir
/// (`berth-it-<pid>-...`), so a later test process removes it should this
/// one be killed before cleaning up.
fn host_escape_dir(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "berth-it-{}-escape-{}",
        std::process::id(),
        unique_id(tag)
    ))
}

/// Removes a host directory the test made outside its scratch dir.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if berth_integration::workdir::mounts_below(&self.0).is_empty() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// One attempt to mount outside the rootfs: `dest` leads to the host's
/// `host` dir if resolved on the host instead of inside the rootfs.
struct Escape {
    host: PathBuf,
    /// The host dir exists beforehand (it must stay empty and unmounted),
    /// else it must not be created.
    exists: bool,
    dest: String,
}

#[test]
fn mount_destinations_through_symlinks_stay_inside_the_rootfs() -> Result<()> {
    let check = LeakCheck::start();
    let rt = Runtime::new()?;
    let id = unique_id("symescape");
    let escapes = [
        // Through /evil -> /../../../../<tmp>/<name>: absolute, ".." above "/".
        ("abs", false, "/evil/x"),
        // Through /evil2 -> ../../..(x16): relative, far above the rootfs dir.
        ("rel", true, "/evil2/HOST/x"),
        // No symlink, just ".." in the destination.
        ("dotdot", false, "/../../../../HOST/x"),
    ]
    .map(|(tag, exists, dest)| {
        let host = host_escape_dir(tag);
        let inside = host
            .strip_prefix("/")
            .unwrap_or(&host)
            .display()
            .to_string();
        Escape {
            dest: dest.replace("HOST", &inside),
            host,
            exists,
        }
    });
    let _cleanup: Vec<RemoveOnDrop> = escapes
        .iter()
        .map(|e| RemoveOnDrop(e.host.clone()))
        .collect();
    let src = tempdir("escape-src-")?;
    std::fs::write(src.path().join("marker"), "from-host-src\n")?;
    let mut spec = Spec::test(&id, &["true"]);
    let mut script = String::new();
    for e in &escapes {
        if e.exists {
            std::fs::create_dir(&e.host)?;
        }
        spec = spec.bind_mount(src.path(), &e.dest, true);
        // Seen at the destination and where it resolves inside the rootfs.
        script += &format!("cat '{}/marker' '{}/x/marker'; ", e.dest, e.host.display());
    }
    let b = Bundle::new(&spec.args(&["sh", "-c", &script]))?;
    let rootfs = b.rootfs();
    let abs_in = escapes[0].host.strip_prefix("/")?;
    std::os::unix::fs::symlink(Path::new("/../../../..").join(abs_in), rootfs.join("evil"))?;
    std::os::unix::fs::symlink([".."; 16].join("/"), rootfs.join("evil2"))?;

    let out = rt.run(&id, &b)?;
    ensure!(out.success(), "{out}");
    assert_eq!(
        out.stdout,
        "from-host-src\n".repeat(2 * escapes.len()),
        "{out}"
    );

    let host_mounts = parse_mountinfo(&std::fs::read_to_string("/proc/self/mountinfo")?);
    for e in &escapes {
        // Nothing happened on the host side...
        if e.exists {
            let entries: Vec<_> = std::fs::read_dir(&e.host)?.flatten().collect();
            assert!(
                entries.is_empty(),
                "{}: {} got entries: {entries:?}",
                e.dest,
                e.host.display()
            );
        } else {
            assert!(
                std::fs::symlink_metadata(&e.host).is_err(),
                "{}: {} was created on the host",
                e.dest,
                e.host.display()
            );
        }
        assert!(
            !host_mounts
                .iter()
                .any(|m| m.mount_point.starts_with(&e.host)),
            "{}: something is mounted at {}",
            e.dest,
            e.host.display()
        );
        // ...the mount point was made inside the rootfs instead.
        let inside = rootfs.join(e.host.strip_prefix("/")?).join("x");
        assert!(
            inside.is_dir(),
            "{}: no {} in the rootfs",
            e.dest,
            inside.display()
        );
    }
    check.assert_clean(SETTLE)?;
    rt.assert_no_state()
}

#[test]
fn a_cwd_above_the_root_is_the_root() -> Result<()> {
    let check = LeakCheck::start();
    let rt = Runtime::new()?;
    let id = unique_id("cwdescape");
    let spec = Spec::sh(&id, "pwd -P; cat cwd-marker").cwd("/../../..");
    let b = Bundle::new(&spec)?;
    std::fs::write(b.rootfs().join("cwd-marker"), "rootfs-top\n")?;
    let out = rt.run(&id, &b)?;
    ensure!(out.success(), "{out}");
    assert_eq!(out.stdout, "/\nrootfs-top\n", "{out}");
    check.assert_clean(SETTLE)?;
    rt.assert_no_state()
}

#[test]
fn a_failure_late_in_setup_is_reported_and_cleaned_up() -> Result<()> {
    let check = LeakCheck::start();
    let rt = Runtime::new()?;
    let id = unique_id("noexe");
    let host = tempdir("noexe-bind-")?;
    // Mounts, a cgroup with limits: all made before the executable is looked up.
    let spec = Spec::test(&id, &["no-such-binary", "arg"])
        .bind_mount(host.path(), "/host", false)
        .tmpfs("/scratch")
        .pids_limit(20);
    let b = Bundle::new(&spec)?;
    let out = rt.cmd(&["create", "--bundle", b.path_str(), &id])?;
    ensure!(!out.success(), "create succeeded: {out}");
    ensure!(
        out.stderr.contains("executable file not found") && out.stderr.contains("no-such-binary"),
        "{out}"
    );
    let state = rt.cmd(&["state", &id])?;
    ensure!(!state.success(), "the failed container has state: {state}");
    let cgroup = test_cgroups_path(&id);
    ensure!(
        !berth_integration::leak::watched_cgroups()
            .iter()
            .any(|p| p.to_string_lossy().contains(&cgroup)),
        "cgroup {cgroup} left"
    );
    check.assert_clean(SETTLE)?;
    rt.assert_no_state()
}
