//! A 32 MiB memory limit: a process allocating more is OOM-killed.
//! berth's monitor must also record the OOM kill (berth-only test).

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use berth_integration::cgroup::{memory_limit, oom_kills};
use berth_integration::{Bundle, Runtime, Spec, skip_unless_berth, unique_id, wait_until};

const LIMIT: i64 = 32 * 1024 * 1024;

/// `tail /dev/zero` buffers its input looking for a newline that never
/// comes, so its memory grows until the OOM killer takes it.
#[test]
fn a_process_over_the_limit_is_oom_killed() -> Result<()> {
    let rt = Runtime::new()?;
    let id = unique_id("oom");
    let spec =
        Spec::sh(&id, "tail /dev/zero; echo \"tail=$?\"; exec sleep 1000").memory_limit(LIMIT);
    let b = Bundle::new(&spec)?;
    let created = rt.create(&id, &b)?;
    let st = rt.start(&id).and_then(|_| rt.state(&id))?;
    let pid = st.pid().context("no pid")?;
    assert_eq!(
        memory_limit(pid),
        Some(LIMIT as u64),
        "memory limit of the cgroup"
    );
    wait_until(Duration::from_secs(60), "tail to be OOM-killed", || {
        Ok(created.stdout_now().contains("tail=").then_some(()))
    })
    .with_context(|| format!("output: {}", created.stdout_now()))?;
    assert!(
        created.stdout_now().contains("tail=137"),
        "tail should die of SIGKILL: {}",
        created.stdout_now()
    );
    let kills = oom_kills(pid).context("cannot read the cgroup's oom_kill count")?;
    ensure!(kills >= 1, "cgroup reports {kills} OOM kills");
    assert_eq!(rt.state(&id)?.status(), "running", "the shell must survive");
    rt.kill(&id, "KILL")?;
    rt.wait_status(&id, "stopped", Duration::from_secs(10))?;
    rt.delete(&id)?;
    Ok(())
}

#[test]
fn run_of_an_oom_killed_init_exits_137() -> Result<()> {
    let rt = Runtime::new()?;
    let id = unique_id("oomrun");
    let b = Bundle::new(&Spec::test(&id, &["tail", "/dev/zero"]).memory_limit(LIMIT))?;
    let out = rt.cmd_timeout(
        &["run", "--bundle", b.path_str(), &id],
        Duration::from_secs(90),
    )?;
    assert_eq!(out.code(), Some(137), "{out}");
    Ok(())
}

#[test]
fn berth_monitor_reports_the_oom_kill() -> Result<()> {
    if skip_unless_berth("monitor OOM record")? {
        return Ok(());
    }
    let rt = Runtime::with_globals(&["--monitor", "always"])?;
    let id = unique_id("oommon");
    let b = Bundle::new(&Spec::test(&id, &["tail", "/dev/zero"]).memory_limit(LIMIT))?;
    rt.create(&id, &b)?;
    rt.start(&id)?;
    let st = rt.wait_status(&id, "stopped", Duration::from_secs(60))?;
    let info = st
        .berth_exit()
        .with_context(|| format!("no berth.exit in {}", st.0))?;
    assert_eq!(info.oom_killed, Some(true), "state: {}", st.0);
    assert_eq!(info.signal, Some(9), "state: {}", st.0);
    assert_eq!(info.exit_code, Some(137), "state: {}", st.0);
    rt.delete(&id)?;
    Ok(())
}

#[test]
fn berth_monitor_reports_no_oom_for_a_normal_exit() -> Result<()> {
    if skip_unless_berth("monitor exit record")? {
        return Ok(());
    }
    let rt = Runtime::with_globals(&["--monitor", "always"])?;
    let id = unique_id("nooom");
    let b = Bundle::new(&Spec::sh(&id, "exit 3").memory_limit(LIMIT))?;
    rt.create(&id, &b)?;
    rt.start(&id)?;
    let st = rt.wait_status(&id, "stopped", Duration::from_secs(30))?;
    let info = st
        .berth_exit()
        .with_context(|| format!("no berth.exit in {}", st.0))?;
    assert_eq!(info.exit_code, Some(3), "state: {}", st.0);
    assert_eq!(info.signal, None, "state: {}", st.0);
    assert_eq!(info.oom_killed, Some(false), "state: {}", st.0);
    rt.delete(&id)?;
    Ok(())
}
