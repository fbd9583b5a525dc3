//! terminal: true with --console-socket: the runtime hands over the pty
//! master and the container's stdio is the pty slave.

use std::time::Duration;

use anyhow::{Result, bail, ensure};
use berth_integration::console::{ConsoleSocket, read_pty};
use berth_integration::{Bundle, Runtime, Spec, unique_id};

#[test]
fn console_socket_receives_the_pty_master() -> Result<()> {
    let rt = Runtime::new()?;
    let id = unique_id("tty");
    let spec = Spec::sh(
        &id,
        "tty; [ -t 0 ] && [ -t 1 ] && echo stdio-is-a-tty; echo done",
    )
    .terminal(true);
    let b = Bundle::new(&spec)?;
    let sock = ConsoleSocket::bind(&rt.scratch().join("console.sock"))?;
    // create blocks until the master is received, so accept in parallel.
    let creating = rt.spawn(&[
        "create",
        "--bundle",
        b.path_str(),
        "--console-socket",
        sock.path_str(),
        &id,
    ])?;
    let master = match sock.receive(Duration::from_secs(30)) {
        Ok(m) => m,
        Err(e) => bail!("{e:#}\ncreate: {}", creating.wait(Duration::from_secs(30))?),
    };
    let created = creating.wait(Duration::from_secs(30))?;
    ensure!(created.success(), "{created}");
    rt.start(&id)?;
    let text = read_pty(master, Duration::from_secs(30))?;
    assert!(text.contains("/dev/pts/0"), "{text:?}");
    assert!(text.contains("stdio-is-a-tty"), "{text:?}");
    assert!(text.contains("done"), "{text:?}");
    rt.wait_status(&id, "stopped", Duration::from_secs(10))?;
    rt.delete(&id)?;
    Ok(())
}

#[test]
fn terminal_without_console_socket_is_refused_by_create() -> Result<()> {
    let rt = Runtime::new()?;
    let id = unique_id("nottysock");
    let b = Bundle::new(&Spec::test(&id, &["true"]).terminal(true))?;
    let out = rt.cmd(&["create", "--bundle", b.path_str(), &id])?;
    assert!(!out.success(), "{out}");
    assert!(
        out.stderr.contains("console-socket") || out.stderr.contains("console socket"),
        "{out}"
    );
    Ok(())
}

#[test]
fn exec_with_a_terminal_through_the_console_socket() -> Result<()> {
    let rt = Runtime::new()?;
    let id = unique_id("exectty");
    let b = Bundle::new(&Spec::test(&id, &["sleep", "1000"]))?;
    rt.create_started(&id, &b)?;
    let sock = ConsoleSocket::bind(&rt.scratch().join("exec-console.sock"))?;
    let exec = rt.spawn(&[
        "exec",
        "-t",
        "-d",
        "--console-socket",
        sock.path_str(),
        &id,
        "sh",
        "-c",
        "tty; echo exec-done",
    ])?;
    let master = match sock.receive(Duration::from_secs(30)) {
        Ok(m) => m,
        Err(e) => bail!("{e:#}\nexec: {}", exec.wait(Duration::from_secs(30))?),
    };
    let out = exec.wait(Duration::from_secs(30))?;
    ensure!(out.success(), "{out}");
    let text = read_pty(master, Duration::from_secs(30))?;
    assert!(text.contains("/dev/pts/"), "{text:?}");
    assert!(text.contains("exec-done"), "{text:?}");
    rt.delete_force(&id)?;
    Ok(())
}
