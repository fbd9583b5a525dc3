//! Nothing is left behind: no host mount, cgroup, process or state entry
//! after containers are run, killed and deleted (also after failures).
//! Every test here holds a LeakCheck, so they run one at a time.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use berth_integration::workdir::tempdir;
use berth_integration::{Bundle, LeakCheck, Runtime, Spec, unique_id};

const SETTLE: Duration = Duration::from_secs(10);

fn busy_spec(id: &str) -> Result<(Spec, tempfile::TempDir)> {
    let host = tempdir("leak-bind-")?;
    let spec = Spec::sh(id, "sleep 1000 & sleep 1000")
        .bind_mount(host.path(), "/host", false)
        .tmpfs("/scratch")
        .add_namespace("cgroup")
        .memory_limit(64 << 20)
        .pids_limit(20);
    Ok((spec, host))
}

#[test]
fn run_leaves_nothing_behind() -> Result<()> {
    let check = LeakCheck::start();
    let rt = Runtime::new()?;
    let id = unique_id("leakrun");
    let host = tempdir("leak-bind-")?;
    let spec = Spec::sh(&id, "echo x > /host/f; sleep 0.1 & wait")
        .bind_mount(host.path(), "/host", false)
        .tmpfs("/scratch");
    let b = Bundle::new(&spec)?;
    rt.run(&id, &b)?.check()?;
    check.assert_clean(SETTLE)?;
    rt.assert_no_state()
}

#[test]
fn kill_and_delete_leave_nothing_behind() -> Result<()> {
    let check = LeakCheck::start();
    let rt = Runtime::new()?;
    let id = unique_id("leakkill");
    let (spec, _host) = busy_spec(&id)?;
    let b = Bundle::new(&spec)?;
    let pid = rt.create_started(&id, &b)?.pid().context("no pid")?;
    rt.cmd(&["exec", "-d", &id, "sleep", "900"])?.check()?;
    // While it runs, the snapshot must see it (or the check proves nothing).
    let during = check
        .before()
        .new_in(&berth_integration::leak::Snapshot::take());
    ensure!(
        !during.cgroups.is_empty() && !during.procs.is_empty(),
        "the leak snapshot does not see the running container (pid {pid}): {during}"
    );
    rt.cmd(&["kill", "--all", &id, "KILL"])?.check()?;
    rt.wait_status(&id, "stopped", SETTLE)?;
    rt.delete(&id)?;
    check.assert_clean(SETTLE)?;
    rt.assert_no_state()
}

#[test]
fn force_delete_of_running_and_paused_containers_leaves_nothing_behind() -> Result<()> {
    let check = LeakCheck::start();
    let rt = Runtime::new()?;
    let mut bundles = Vec::new();
    for pause in [false, true] {
        let id = unique_id("leakforce");
        let (spec, host) = busy_spec(&id)?;
        let b = Bundle::new(&spec)?;
        rt.create_started(&id, &b)?;
        if pause {
            rt.cmd(&["pause", &id])?.check()?;
        }
        rt.delete_force(&id)?;
        bundles.push((b, host));
    }
    // A created, never started container too.
    let id = unique_id("leakcreated");
    let (spec, _host) = busy_spec(&id)?;
    let b = Bundle::new(&spec)?;
    rt.create(&id, &b)?;
    rt.delete_force(&id)?;
    check.assert_clean(SETTLE)?;
    rt.assert_no_state()
}

type MakeSpec = fn(&str) -> Spec;

#[test]
fn failed_creates_leave_nothing_behind() -> Result<()> {
    let check = LeakCheck::start();
    let rt = Runtime::new()?;
    let bad: [(&str, MakeSpec); 3] = [
        ("noexe", |id| Spec::test(id, &["/no/such/binary"])),
        ("nomountsrc", |id| {
            Spec::test(id, &["true"]).bind_mount(std::path::Path::new("/no/such/dir"), "/x", true)
        }),
        ("badhook", |id| {
            Spec::test(id, &["true"]).hook("createRuntime", "/bin/false", &["false"])
        }),
    ];
    for (tag, make) in bad {
        let id = unique_id(tag);
        let b = Bundle::new(&make(&id))?;
        let out = rt.cmd(&["create", "--bundle", b.path_str(), &id])?;
        ensure!(!out.success(), "{tag}: create should fail: {out}");
        let _ = rt.cmd(&["delete", "--force", &id]);
    }
    check.assert_clean(SETTLE)?;
    rt.assert_no_state()
}

#[test]
fn the_leak_check_sees_a_container_left_running() -> Result<()> {
    let check = LeakCheck::start();
    let rt = Runtime::new()?;
    let id = unique_id("leakseen");
    let b = Bundle::new(&Spec::test(&id, &["sleep", "1000"]))?;
    rt.create_started(&id, &b)?;
    let err = check
        .assert_clean(Duration::from_millis(200))
        .expect_err("a running container must count as a leak");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("leaked cgroup") && msg.contains("leaked process"),
        "{msg}"
    );
    assert!(
        !rt.state_entries().is_empty(),
        "a live container has no state"
    );
    rt.delete_force(&id)?;
    check.assert_clean(SETTLE)?;
    rt.assert_no_state()
}
