//! create / start / state / kill / delete, with the state JSON at each step.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use berth_integration::proc;
use berth_integration::{Bundle, Runtime, Spec, unique_id, wait_until};

fn is_rfc3339(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 20
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && (s.ends_with('Z') || s[19..].contains('+') || s[19..].contains('-'))
}

#[test]
fn create_start_kill_delete_walks_through_the_states() -> Result<()> {
    let rt = Runtime::new()?;
    let id = unique_id("life");
    let spec = Spec::test(&id, &["sleep", "1000"]).annotation("org.berth.test", "lifecycle");
    let b = Bundle::new(&spec)?;
    let pid_file = b.file("init.pid");

    rt.create_with(&id, &b, &["--pid-file", pid_file.to_str().unwrap()])?;
    let st = rt.state(&id)?;
    assert_eq!(st.status(), "created", "{}", st.0);
    assert_eq!(st.id(), id);
    assert_eq!(st.0["bundle"], b.path_str(), "{}", st.0);
    assert_eq!(st.0["rootfs"], b.rootfs().to_str().unwrap(), "{}", st.0);
    assert!(
        st.0["ociVersion"]
            .as_str()
            .is_some_and(|v| v.starts_with("1.")),
        "{}",
        st.0
    );
    assert!(st.0["created"].as_str().is_some_and(is_rfc3339), "{}", st.0);
    assert!(st.0.get("owner").is_some(), "no owner field: {}", st.0);
    assert_eq!(
        st.0["annotations"]["org.berth.test"], "lifecycle",
        "{}",
        st.0
    );
    let pid = st.pid().context("created container has no pid")?;
    assert!(proc::alive(pid), "init {pid} not alive after create");
    let from_file: i32 = std::fs::read_to_string(&pid_file)?.trim().parse()?;
    assert_eq!(from_file, pid, "--pid-file");
    // The user process does not run before start.
    assert!(
        !proc::cmdline(pid).contains("sleep 1000"),
        "{}",
        proc::cmdline(pid)
    );

    rt.start(&id)?;
    let st = rt.wait_status(&id, "running", Duration::from_secs(10))?;
    assert_eq!(st.pid(), Some(pid), "pid changed on start");
    wait_until(Duration::from_secs(5), "the init to exec sleep", || {
        Ok((proc::cmdline(pid) == "sleep 1000").then_some(()))
    })
    .with_context(|| format!("cmdline: {:?}", proc::cmdline(pid)))?;
    assert!(
        !rt.cmd(&["start", &id])?.success(),
        "second start must fail"
    );

    rt.kill(&id, "KILL")?;
    let st = rt.wait_status(&id, "stopped", Duration::from_secs(10))?;
    assert_eq!(st.id(), id);
    ensure!(
        proc::wait_gone(pid, Duration::from_secs(5)),
        "init {pid} still alive"
    );

    rt.delete(&id)?;
    let gone = rt.cmd(&["state", &id])?;
    assert!(!gone.success(), "state after delete: {gone}");
    assert!(
        !rt.state_entries()
            .iter()
            .any(|p| p.to_string_lossy().contains(&id)),
        "state left behind: {:?}",
        rt.state_entries()
    );
    Ok(())
}

#[test]
fn a_container_that_exits_by_itself_becomes_stopped() -> Result<()> {
    let rt = Runtime::new()?;
    let id = unique_id("selfexit");
    let b = Bundle::new(&Spec::sh(&id, "exit 3"))?;
    rt.create(&id, &b)?;
    rt.start(&id)?;
    rt.wait_status(&id, "stopped", Duration::from_secs(10))?;
    rt.delete(&id)?;
    Ok(())
}

#[test]
fn delete_of_a_running_container_needs_force() -> Result<()> {
    let rt = Runtime::new()?;
    let id = unique_id("delrun");
    let b = Bundle::new(&Spec::test(&id, &["sleep", "1000"]))?;
    let pid = rt.create_started(&id, &b)?.pid().context("no pid")?;
    let out = rt.cmd(&["delete", &id])?;
    assert!(
        !out.success(),
        "delete of a running container succeeded: {out}"
    );
    assert_eq!(rt.state(&id)?.status(), "running");
    rt.delete_force(&id)?;
    assert!(
        proc::wait_gone(pid, Duration::from_secs(5)),
        "init survived delete --force"
    );
    assert!(!rt.cmd(&["state", &id])?.success());
    Ok(())
}

#[test]
fn delete_force_of_a_created_container() -> Result<()> {
    let rt = Runtime::new()?;
    let id = unique_id("delcreated");
    let b = Bundle::new(&Spec::test(&id, &["sleep", "1000"]))?;
    rt.create(&id, &b)?;
    let pid = rt.state(&id)?.pid().context("no pid")?;
    rt.delete_force(&id)?;
    assert!(proc::wait_gone(pid, Duration::from_secs(5)));
    assert!(!rt.cmd(&["state", &id])?.success());
    Ok(())
}

#[test]
fn sigterm_to_init_is_ignored_but_kill_all_reaches_every_process() -> Result<()> {
    let rt = Runtime::new()?;
    let id = unique_id("killall");
    // pid 1 ignores signals it has no handler for; its children do not.
    let b = Bundle::new(&Spec::sh(&id, "sleep 1000 & sleep 1000 & wait"))?;
    rt.create_started(&id, &b)?;
    rt.kill(&id, "TERM")?;
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(rt.state(&id)?.status(), "running");
    rt.cmd(&["kill", "--all", &id, "TERM"])?.check()?;
    rt.wait_status(&id, "stopped", Duration::from_secs(10))?;
    rt.delete(&id)?;
    Ok(())
}

#[test]
fn signal_names_and_numbers_are_accepted() -> Result<()> {
    let rt = Runtime::new()?;
    for sig in ["9", "SIGKILL", "KILL"] {
        let id = unique_id("signame");
        let b = Bundle::new(&Spec::test(&id, &["sleep", "1000"]))?;
        rt.create_started(&id, &b)?;
        rt.kill(&id, sig)?;
        rt.wait_status(&id, "stopped", Duration::from_secs(10))
            .with_context(|| format!("after kill {sig}"))?;
        rt.delete(&id)?;
    }
    Ok(())
}

#[test]
fn duplicate_id_is_refused() -> Result<()> {
    let rt = Runtime::new()?;
    let id = unique_id("dup");
    let b = Bundle::new(&Spec::test(&id, &["sleep", "1000"]))?;
    rt.create(&id, &b)?;
    let again = rt.cmd(&["create", "--bundle", b.path_str(), &id])?;
    assert!(!again.success(), "second create with the same ID: {again}");
    assert_eq!(rt.state(&id)?.status(), "created");
    rt.delete_force(&id)?;
    Ok(())
}

#[test]
fn unknown_container_is_an_error_everywhere() -> Result<()> {
    let rt = Runtime::new()?;
    let id = unique_id("nosuch");
    for args in [
        vec!["state", id.as_str()],
        vec!["start", id.as_str()],
        vec!["kill", id.as_str(), "KILL"],
        vec!["delete", id.as_str()],
    ] {
        let out = rt.cmd(&args)?;
        assert!(!out.success(), "{out}");
        assert!(
            out.stderr.contains("does not exist") || out.stderr.contains("not found"),
            "{out}"
        );
    }
    Ok(())
}

#[test]
fn run_detached_returns_with_the_container_running() -> Result<()> {
    let rt = Runtime::new()?;
    let id = unique_id("rund");
    let b = Bundle::new(&Spec::sh(&id, "echo started; exec sleep 1000"))?;
    let pid_file = b.file("run.pid");
    let out = rt
        .cmd(&[
            "run",
            "-d",
            "--bundle",
            b.path_str(),
            "--pid-file",
            pid_file.to_str().unwrap(),
            &id,
        ])?
        .check()?;
    let st = rt.wait_status(&id, "running", Duration::from_secs(10))?;
    let pid: i32 = std::fs::read_to_string(&pid_file)?.trim().parse()?;
    assert_eq!(st.pid(), Some(pid), "--pid-file");
    // The detached container writes to the stdout run was given.
    wait_until(Duration::from_secs(10), "the container's output", || {
        Ok(out.stdout_now().contains("started").then_some(()))
    })?;
    rt.delete_force(&id)?;
    assert!(proc::wait_gone(pid, Duration::from_secs(5)));
    Ok(())
}

#[test]
fn kill_without_a_signal_sends_sigterm() -> Result<()> {
    let rt = Runtime::new()?;
    let id = unique_id("killterm");
    // As pid 1 the shell only sees SIGTERM because it traps it.
    let b = Bundle::new(&Spec::sh(
        &id,
        "trap 'exit 9' TERM; while :; do sleep 0.1; done",
    ))?;
    rt.create_started(&id, &b)?;
    rt.cmd(&["kill", &id])?.check()?;
    rt.wait_status(&id, "stopped", Duration::from_secs(10))?;
    rt.delete(&id)?;
    Ok(())
}
