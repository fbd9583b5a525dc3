//! exec into a running container.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use berth_integration::proc;
use berth_integration::rootfs::USER_UID;
use berth_integration::{Bundle, Runtime, Spec, unique_id, wait_until};
use serde_json::json;

fn sleeping(rt: &Runtime, tag: &str) -> Result<(String, Bundle, i32)> {
    let id = unique_id(tag);
    let b = Bundle::new(&Spec::test(&id, &["sleep", "1000"]))?;
    let pid = rt.create_started(&id, &b)?.pid().context("no pid")?;
    Ok((id, b, pid))
}

#[test]
fn exec_sees_the_container_pid_namespace() -> Result<()> {
    let rt = Runtime::new()?;
    let (id, _b, _) = sleeping(&rt, "execps")?;
    let out = rt.cmd(&["exec", &id, "ps"])?.check()?;
    let init = out
        .stdout
        .lines()
        .find(|l| l.split_whitespace().next() == Some("1"))
        .with_context(|| format!("no pid 1 in ps: {out}"))?;
    assert!(init.ends_with("sleep 1000"), "pid 1 is not the init: {out}");
    // Only the init and ps itself are visible.
    assert_eq!(out.stdout.lines().count(), 3, "{out}");
    rt.delete_force(&id)?;
    Ok(())
}

#[test]
fn exec_joins_every_namespace_of_the_init() -> Result<()> {
    let rt = Runtime::new()?;
    let (id, _b, pid) = sleeping(&rt, "execns")?;
    let out = rt
        .cmd(&[
            "exec",
            &id,
            "sh",
            "-c",
            "for n in pid net ipc uts mnt; do readlink /proc/self/ns/$n; done",
        ])?
        .check()?;
    let want: Vec<String> = ["pid", "net", "ipc", "uts", "mnt"]
        .iter()
        .map(|n| proc::ns_link(Some(pid), n))
        .collect::<Result<_>>()?;
    assert_eq!(out.stdout.lines().collect::<Vec<_>>(), want, "{out}");
    rt.delete_force(&id)?;
    Ok(())
}

#[test]
fn exec_exit_code_passes_through() -> Result<()> {
    let rt = Runtime::new()?;
    let (id, _b, _) = sleeping(&rt, "execexit")?;
    let out = rt.cmd(&["exec", &id, "sh", "-c", "echo out; exit 5"])?;
    assert_eq!(out.code(), Some(5), "{out}");
    assert_eq!(out.stdout, "out\n", "{out}");
    assert_eq!(rt.state(&id)?.status(), "running");
    rt.delete_force(&id)?;
    Ok(())
}

#[test]
fn exec_with_a_process_file() -> Result<()> {
    let rt = Runtime::new()?;
    let (id, b, _) = sleeping(&rt, "execproc")?;
    let process = json!({
        "terminal": false,
        "user": { "uid": USER_UID, "gid": USER_UID },
        "args": ["sh", "-c", "id -u; pwd; echo $FOO"],
        "env": [berth_integration::spec::DEFAULT_PATH, "FOO=bar"],
        "cwd": "/tmp",
        "noNewPrivileges": true
    });
    let file = b.file("process.json");
    std::fs::write(&file, serde_json::to_vec(&process)?)?;
    let out = rt
        .cmd(&["exec", "--process", file.to_str().unwrap(), &id])?
        .check()?;
    assert_eq!(out.stdout, format!("{USER_UID}\n/tmp\nbar\n"), "{out}");
    rt.delete_force(&id)?;
    Ok(())
}

#[test]
fn exec_env_cwd_and_user_flags() -> Result<()> {
    let rt = Runtime::new()?;
    let (id, _b, _) = sleeping(&rt, "execflags")?;
    let out = rt
        .cmd(&[
            "exec",
            "--env",
            "A=b c",
            "--cwd",
            "/etc",
            "--user",
            "1000:1000",
            &id,
            "sh",
            "-c",
            "echo \"$A\"; pwd; id -u; id -g",
        ])?
        .check()?;
    assert_eq!(out.stdout, "b c\n/etc\n1000\n1000\n", "{out}");
    rt.delete_force(&id)?;
    Ok(())
}

#[test]
fn detached_exec_writes_its_pid_file() -> Result<()> {
    let rt = Runtime::new()?;
    let (id, b, init) = sleeping(&rt, "execd")?;
    let pid_file = b.file("exec.pid");
    rt.cmd(&[
        "exec",
        "-d",
        "--pid-file",
        pid_file.to_str().unwrap(),
        &id,
        "sleep",
        "500",
    ])?
    .check()?;
    let pid: i32 = std::fs::read_to_string(&pid_file)?.trim().parse()?;
    ensure!(proc::alive(pid), "exec'd process {pid} not running");
    // The process may still be between fork and execve when exec returns.
    wait_until(
        Duration::from_secs(5),
        "the exec'd process to run sleep",
        || Ok((proc::cmdline(pid) == "sleep 500").then_some(())),
    )
    .with_context(|| format!("cmdline: {:?}", proc::cmdline(pid)))?;
    assert_eq!(
        proc::ns_link(Some(pid), "pid")?,
        proc::ns_link(Some(init), "pid")?
    );
    rt.delete_force(&id)?;
    assert!(
        proc::wait_gone(pid, Duration::from_secs(5)),
        "exec'd process survived delete"
    );
    Ok(())
}

#[test]
fn exec_into_a_stopped_container_fails() -> Result<()> {
    let rt = Runtime::new()?;
    let (id, _b, _) = sleeping(&rt, "execstopped")?;
    rt.kill(&id, "KILL")?;
    rt.wait_status(&id, "stopped", Duration::from_secs(10))?;
    let out = rt.cmd(&["exec", &id, "true"])?;
    assert!(!out.success(), "{out}");
    rt.delete(&id)?;
    Ok(())
}
