//! linux.resources.pids: with a limit of 10, forks beyond it fail.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use berth_integration::cgroup::pids_max;
use berth_integration::{Bundle, Runtime, Spec, unique_id};

const FORK_20: &str =
    "i=0; while [ $i -lt 20 ]; do sleep 30 & i=$((i+1)); echo started $i; done; echo all-started";

fn started(stdout: &str) -> usize {
    stdout.lines().filter(|l| l.starts_with("started ")).count()
}

#[test]
fn forks_beyond_the_pids_limit_fail() -> Result<()> {
    let rt = Runtime::new()?;
    let id = unique_id("pids");
    let b = Bundle::new(&Spec::sh(&id, FORK_20).pids_limit(10))?;
    let out = rt.cmd_timeout(
        &["run", "--bundle", b.path_str(), &id],
        Duration::from_secs(60),
    )?;
    let n = started(&out.stdout);
    // The shell is one of the 10, so at most 9 sleeps fit.
    ensure!((1..=9).contains(&n), "{n} forks succeeded: {out}");
    assert!(!out.stdout.contains("all-started"), "{out}");
    assert!(
        out.stderr.contains("fork"),
        "the shell should report the failed fork: {out}"
    );
    Ok(())
}

#[test]
fn pids_max_is_written_to_the_cgroup() -> Result<()> {
    let rt = Runtime::new()?;
    let id = unique_id("pidsmax");
    let b = Bundle::new(&Spec::test(&id, &["sleep", "1000"]).pids_limit(10))?;
    let st = rt.create_started(&id, &b)?;
    let pid = st.pid().context("no pid")?;
    assert_eq!(pids_max(pid).as_deref(), Some("10"));
    rt.delete_force(&id)?;
    Ok(())
}

#[test]
fn under_a_higher_limit_all_forks_succeed() -> Result<()> {
    let rt = Runtime::new()?;
    let id = unique_id("pids100");
    let b = Bundle::new(&Spec::sh(&id, FORK_20).pids_limit(100))?;
    let out = rt.cmd_timeout(
        &["run", "--bundle", b.path_str(), &id],
        Duration::from_secs(60),
    )?;
    ensure!(out.success(), "{out}");
    assert_eq!(started(&out.stdout), 20, "{out}");
    Ok(())
}
