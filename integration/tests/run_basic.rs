//! `run` in the foreground: output and exit code of a trivial container.

use anyhow::Result;
use berth_integration::{Bundle, Runtime, Spec, unique_id};

#[test]
fn run_echo_prints_hi_and_exits_zero() -> Result<()> {
    let rt = Runtime::new()?;
    let id = unique_id("echo");
    let b = Bundle::new(&Spec::test(&id, &["echo", "hi"]))?;
    let out = rt.run(&id, &b)?;
    assert_eq!(out.code(), Some(0), "{out}");
    assert_eq!(out.stdout, "hi\n", "{out}");
    // A finished foreground run leaves no container behind.
    assert!(
        !rt.cmd(&["state", &id])?.success(),
        "state still known after run"
    );
    Ok(())
}

#[test]
fn stdout_and_stderr_are_kept_apart() -> Result<()> {
    let rt = Runtime::new()?;
    let id = unique_id("stdio");
    let b = Bundle::new(&Spec::sh(&id, "echo to-out; echo to-err >&2"))?;
    let out = rt.run(&id, &b)?;
    assert_eq!(out.code(), Some(0), "{out}");
    assert_eq!(out.stdout, "to-out\n", "{out}");
    assert!(out.stderr.contains("to-err\n"), "{out}");
    assert!(!out.stdout.contains("to-err"), "{out}");
    Ok(())
}

#[test]
fn args_env_and_cwd_reach_the_process() -> Result<()> {
    let rt = Runtime::new()?;
    let id = unique_id("argv");
    let spec = Spec::test(
        &id,
        &[
            "sh",
            "-c",
            "echo \"[$1]\"; echo \"$GREETING\"; pwd",
            "sh",
            "two words",
        ],
    )
    .add_env("GREETING=hello there")
    .cwd("/etc");
    let b = Bundle::new(&spec)?;
    let out = rt.run(&id, &b)?;
    assert_eq!(out.code(), Some(0), "{out}");
    assert_eq!(out.stdout, "[two words]\nhello there\n/etc\n", "{out}");
    Ok(())
}

#[test]
fn run_without_bundle_flag_uses_the_current_directory() -> Result<()> {
    let rt = Runtime::new()?;
    let id = unique_id("cwdbundle");
    let b = Bundle::new(&Spec::test(&id, &["echo", "from-cwd"]))?;
    let mut cmd = rt.command(&["run", &id]);
    cmd.current_dir(b.path());
    let out =
        berth_integration::exec::run(cmd, &b.file("out"), std::time::Duration::from_secs(60))?;
    let _ = rt.cmd(&["delete", "--force", &id]);
    assert_eq!(out.code(), Some(0), "{out}");
    assert_eq!(out.stdout, "from-cwd\n", "{out}");
    Ok(())
}
