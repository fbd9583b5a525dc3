//! berth's per-container monitor (`--monitor always`): it is the parent of
//! the container init, survives the death of whoever ran `create`, and
//! records how the container ended. berth-only.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use berth_integration::exec::Spawned;
use berth_integration::proc;
use berth_integration::{Bundle, Runtime, Spec, skip_unless_berth, unique_id, wait_until};

fn pgrp(pid: i32) -> Option<i32> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s[s.rfind(')')? + 2..].split(' ').nth(2)?.parse().ok()
}

#[test]
fn monitor_survives_kill_9_of_the_creating_process_group_and_records_the_exit() -> Result<()> {
    if skip_unless_berth("monitor")? {
        return Ok(());
    }
    let rt = Runtime::with_globals(&["--monitor", "always"])?;
    let id = unique_id("mon");
    let b = Bundle::new(&Spec::sh(&id, "sleep 0.5; exit 42"))?;

    // A shell runs create, then lingers; it leads its own process group.
    let mut wrapper = std::process::Command::new("/bin/sh");
    wrapper
        .arg("-c")
        .arg("\"$@\"; echo create-exit=$?; exec sleep 1000")
        .arg("sh")
        .arg(rt.command(&[]).get_program())
        .args(
            rt.command(&["create", "--bundle", b.path_str(), &id])
                .get_args(),
        );
    let sh = Spawned::start(wrapper, &rt.scratch().join("wrapper"))?;
    wait_until(Duration::from_secs(30), "create to return", || {
        Ok(sh.stdout_so_far().contains("create-exit=").then_some(()))
    })?;
    ensure!(
        sh.stdout_so_far().contains("create-exit=0"),
        "create failed: {}",
        sh.stdout_so_far()
    );

    let created = rt.state(&id)?;
    let init = created.pid().context("no init pid")?;
    let monitor = proc::ppid(init).context("init has no parent")?;
    assert_eq!(
        created.berth_monitor_pid(),
        Some(monitor),
        "berth.monitorPid: {}",
        created.0
    );
    ensure!(proc::alive(monitor), "monitor {monitor} not alive");
    assert_ne!(monitor, sh.pid(), "the creating shell is the init's parent");
    assert_eq!(
        proc::exe(monitor),
        Some(rt.binary().target.clone()),
        "the init's parent is not a berth process"
    );
    assert_ne!(
        pgrp(monitor),
        Some(sh.pid()),
        "monitor is in the creator's process group"
    );

    sh.kill_group();
    let killed = sh.wait(Duration::from_secs(10))?;
    assert_eq!(killed.signal(), Some(libc::SIGKILL));
    std::thread::sleep(Duration::from_millis(100));
    ensure!(
        proc::alive(monitor),
        "monitor died with the creating process group"
    );
    assert_eq!(rt.state(&id)?.status(), "created");

    rt.start(&id)?;
    let st = rt.wait_status(&id, "stopped", Duration::from_secs(20))?;
    let info = st
        .berth_exit()
        .with_context(|| format!("no berth.exit in {}", st.0))?;
    assert_eq!(info.exit_code, Some(42), "exit code not recorded: {}", st.0);
    assert_eq!(info.signal, None, "{}", st.0);
    assert_eq!(info.oom_killed, Some(false), "{}", st.0);
    let (started, finished) = (
        info.started_at.unwrap_or_default(),
        info.finished_at.unwrap_or_default(),
    );
    ensure!(
        started.len() >= 20 && finished.len() >= 20 && started <= finished,
        "start/finish times {started:?} {finished:?}"
    );
    rt.delete(&id)?;
    ensure!(
        proc::wait_gone(monitor, Duration::from_secs(10)),
        "monitor outlived delete"
    );
    Ok(())
}

#[test]
fn monitor_records_death_by_signal() -> Result<()> {
    if skip_unless_berth("monitor")? {
        return Ok(());
    }
    let rt = Runtime::with_globals(&["--monitor", "always"])?;
    let id = unique_id("monsig");
    let b = Bundle::new(&Spec::test(&id, &["sleep", "1000"]))?;
    rt.create_started(&id, &b)?;
    rt.kill(&id, "KILL")?;
    let st = rt.wait_status(&id, "stopped", Duration::from_secs(20))?;
    let info = st
        .berth_exit()
        .with_context(|| format!("no berth.exit in {}", st.0))?;
    assert_eq!(info.signal, Some(9), "{}", st.0);
    assert_eq!(info.exit_code, Some(137), "{}", st.0);
    rt.delete(&id)?;
    Ok(())
}

#[test]
fn without_monitor_no_berth_process_parents_the_init() -> Result<()> {
    if skip_unless_berth("--monitor never")? {
        return Ok(());
    }
    let rt = Runtime::with_globals(&["--monitor", "never"])?;
    let id = unique_id("nomon");
    let b = Bundle::new(&Spec::test(&id, &["sleep", "1000"]))?;
    let init = rt.create_started(&id, &b)?.pid().context("no pid")?;
    let parent = proc::ppid(init).context("no parent")?;
    assert_ne!(
        proc::exe(parent),
        Some(rt.binary().target.clone()),
        "a berth process ({parent}: {}) parents the init with --monitor never",
        proc::cmdline(parent)
    );
    rt.delete_force(&id)?;
    Ok(())
}
