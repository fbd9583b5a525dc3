//! Exit codes and fatal signals of the container pass through `run`.

use std::time::Duration;

use anyhow::Result;
use berth_integration::{Bundle, Runtime, Spec, unique_id, wait_until};

fn run_sh(script: &str) -> Result<berth_integration::Output> {
    let rt = Runtime::new()?;
    let id = unique_id("exit");
    let b = Bundle::new(&Spec::sh(&id, script))?;
    rt.run(&id, &b)
}

#[test]
fn exit_code_7_passes_through() -> Result<()> {
    let out = run_sh("exit 7")?;
    assert_eq!(out.code(), Some(7), "{out}");
    Ok(())
}

#[test]
fn exit_codes_1_and_255_pass_through() -> Result<()> {
    for code in [1, 255] {
        let out = run_sh(&format!("exit {code}"))?;
        assert_eq!(out.code(), Some(code), "{out}");
    }
    Ok(())
}

/// Without a pid namespace the shell is not an init, so SIGTERM to itself
/// kills it: the runtime must report 128 + 15.
#[test]
fn death_by_sigterm_gives_143() -> Result<()> {
    let rt = Runtime::new()?;
    let id = unique_id("term");
    let spec = Spec::sh(&id, "kill -TERM $$; sleep 5; exit 9").remove_namespace("pid");
    let b = Bundle::new(&spec)?;
    let out = rt.run(&id, &b)?;
    assert_eq!(out.code(), Some(143), "{out}");
    Ok(())
}

/// `kill ID KILL` from outside while `run` waits in the foreground: 128 + 9.
#[test]
fn sigkill_from_the_runtime_gives_137() -> Result<()> {
    let rt = Runtime::new()?;
    let id = unique_id("kill9");
    let b = Bundle::new(&Spec::test(&id, &["sleep", "1000"]))?;
    let running = rt.spawn(&["run", "--bundle", b.path_str(), &id])?;
    wait_until(Duration::from_secs(20), "container running", || {
        Ok(rt
            .cmd(&["state", &id])?
            .stdout
            .contains("\"running\"")
            .then_some(()))
    })?;
    rt.kill(&id, "KILL")?;
    let out = running.wait(Duration::from_secs(30))?;
    assert_eq!(out.code(), Some(137), "{out}");
    Ok(())
}

#[test]
fn missing_executable_fails_the_run() -> Result<()> {
    let rt = Runtime::new()?;
    let id = unique_id("noexe");
    let b = Bundle::new(&Spec::test(&id, &["/no/such/binary"]))?;
    let out = rt.run(&id, &b)?;
    assert!(!out.success(), "{out}");
    assert!(
        out.stderr.contains("no such file") || out.stderr.contains("not found"),
        "error should name the problem: {out}"
    );
    Ok(())
}
