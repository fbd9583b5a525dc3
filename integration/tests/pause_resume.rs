//! pause / resume through the freezer.

use std::time::Duration;

use anyhow::{Context, Result};
use berth_integration::cgroup::frozen;
use berth_integration::{Bundle, Runtime, Spec, unique_id};

#[test]
fn pause_freezes_and_resume_thaws() -> Result<()> {
    let rt = Runtime::new()?;
    let id = unique_id("pause");
    // A busy loop: its CPU time grows only while thawed.
    let b = Bundle::new(&Spec::sh(&id, "while :; do :; done"))?;
    let pid = rt.create_started(&id, &b)?.pid().context("no pid")?;

    rt.cmd(&["pause", &id])?.check()?;
    assert_eq!(rt.state(&id)?.status(), "paused");
    assert_eq!(frozen(pid), Some(true), "freezer not frozen");
    let t0 = cpu_ticks(pid)?;
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(cpu_ticks(pid)?, t0, "a paused process used CPU");

    rt.cmd(&["resume", &id])?.check()?;
    assert_eq!(rt.state(&id)?.status(), "running");
    assert_eq!(frozen(pid), Some(false), "freezer still frozen");
    std::thread::sleep(Duration::from_millis(300));
    assert!(cpu_ticks(pid)? > t0, "a resumed process used no CPU");

    rt.delete_force(&id)?;
    Ok(())
}

#[test]
fn a_paused_container_can_be_force_deleted() -> Result<()> {
    let rt = Runtime::new()?;
    let id = unique_id("pausedel");
    let b = Bundle::new(&Spec::test(&id, &["sleep", "1000"]))?;
    let pid = rt.create_started(&id, &b)?.pid().context("no pid")?;
    rt.cmd(&["pause", &id])?.check()?;
    rt.delete_force(&id)?;
    assert!(berth_integration::proc::wait_gone(
        pid,
        Duration::from_secs(5)
    ));
    Ok(())
}

fn cpu_ticks(pid: i32) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = &s[s.rfind(')').context("bad stat")? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    Ok(f[11].parse::<u64>()? + f[12].parse::<u64>()?)
}
