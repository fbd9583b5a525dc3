//! The daemon's fork server (`berth forkserver`): command lines it receives
//! run as `berth` would run them, each with its own stderr and exit status,
//! several at once; it stops when the daemon's end closes.

use std::ffi::OsString;
use std::io::{Read, Seek};
use std::os::fd::AsFd;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use berth_integration::runtime::berth_binary;
use berth_integration::wait_until;
use berth_runtime::forkserver::{Client, ForkServerError};

fn args(a: &[&str]) -> Vec<OsString> {
    a.iter().map(OsString::from).collect()
}

/// Runs `a` through `fs`; its exit code and stderr.
fn run(fs: &Client, a: &[&str]) -> Result<(i32, String)> {
    let mut err = tempfile::tempfile()?;
    let code = fs.run(&args(a), err.as_fd())?;
    err.rewind()?;
    let mut text = String::new();
    err.read_to_string(&mut text)?;
    Ok((code, text))
}

#[test]
fn commands_run_with_their_own_stderr_and_status() -> Result<()> {
    let fs = Client::spawn(berth_binary()?)?;
    let root = tempfile::tempdir()?;
    let root = root.path().to_str().context("temp path")?;

    let (code, err) = run(&fs, &["oci", "--root", root, "list"])?;
    ensure!(code == 0, "oci list: code {code}, stderr {err:?}");

    let (code, err) = run(&fs, &["oci", "--root", root, "state", "no-such-container"])?;
    ensure!(code != 0, "state of a missing container succeeded");
    ensure!(
        err.contains("no-such-container"),
        "the error should name the container: {err:?}"
    );

    // Parsed as `berth` parses: a bad flag is clap's usage error.
    let (code, err) = run(&fs, &["oci", "--no-such-flag"])?;
    ensure!(code == 2, "bad flag: code {code}");
    ensure!(err.contains("--no-such-flag"), "{err:?}");

    // Only the engine's commands are served.
    let (code, err) = run(&fs, &["image", "list"])?;
    ensure!(code == 2, "image list: code {code}");
    ensure!(err.contains("only `berth oci`"), "{err:?}");
    Ok(())
}

#[test]
fn requests_run_at_once_and_an_oversized_one_is_refused() -> Result<()> {
    let fs = Client::spawn(berth_binary()?)?;
    let root = tempfile::tempdir()?;
    let root = root.path().to_str().context("temp path")?.to_owned();
    std::thread::scope(|s| -> Result<()> {
        let handles: Vec<_> = (0..6)
            .map(|i| {
                let (fs, root) = (&fs, &root);
                s.spawn(move || run(fs, &["oci", "--root", root, "state", &format!("c{i}")]))
            })
            .collect();
        for (i, h) in handles.into_iter().enumerate() {
            let (code, err) = h.join().map_err(|_| anyhow::anyhow!("thread panicked"))??;
            ensure!(code != 0, "state c{i} succeeded");
            ensure!(
                err.contains(&format!("c{i}")),
                "replies crossed: c{i} got {err:?}"
            );
        }
        Ok(())
    })?;

    let long = "x".repeat(100 * 1024);
    let mut err = tempfile::tempfile()?;
    match fs.run(&args(&["oci", &long]), err.as_fd()) {
        Err(ForkServerError::TooLong(_)) => {}
        other => anyhow::bail!("an oversized request: {other:?}"),
    }
    // The server still serves.
    let (code, _) = run(&fs, &["oci", "--root", &root, "list"])?;
    ensure!(code == 0, "list after the refusal: code {code}");
    let _ = err.rewind();
    Ok(())
}

#[test]
fn the_server_exits_when_the_daemon_end_closes() -> Result<()> {
    let fs = Client::spawn(berth_binary()?)?;
    let pid = fs.pid() as i32;
    drop(fs);
    wait_until(Duration::from_secs(10), "the fork server to exit", || {
        Ok((!std::path::Path::new(&format!("/proc/{pid}")).exists()).then_some(()))
    })
}

/// A container created through the fork server keeps a monitor whose
/// command line is the create's, as if `berth oci create` had been exec'd:
/// what operators (and the benchmark) look for in `ps`.
#[test]
fn a_monitor_made_through_it_shows_the_create_command_line() -> Result<()> {
    if berth_integration::skip_unless_berth("fork server")? {
        return Ok(());
    }
    let rt = berth_integration::Runtime::with_globals(&["--monitor", "always"])?;
    let id = berth_integration::unique_id("fsmon");
    let b = berth_integration::Bundle::new(&berth_integration::Spec::test(&id, &["sleep", "100"]))?;
    let fs = Client::spawn(berth_binary()?)?;
    let root = rt.root();
    let (code, err) = run(
        &fs,
        &[
            "oci",
            "--root",
            root.to_str().context("root path")?,
            "--monitor",
            "always",
            "create",
            "--bundle",
            b.path_str(),
            &id,
        ],
    )?;
    ensure!(code == 0, "create: code {code}, stderr {err:?}");
    let st = rt.state(&id)?;
    let monitor = st.0["berth"]["monitorPid"]
        .as_i64()
        .context("no monitor pid in the state")?;
    let cmdline = std::fs::read(format!("/proc/{monitor}/cmdline"))?;
    let words: Vec<String> = cmdline
        .split(|b| *b == 0)
        .filter(|w| !w.is_empty())
        .map(|w| String::from_utf8_lossy(w).into_owned())
        .collect();
    rt.kill(&id, "KILL")?;
    rt.wait_status(&id, "stopped", Duration::from_secs(10))?;
    rt.delete(&id)?;
    ensure!(
        words.first().map(String::as_str) == Some("berth")
            && words.iter().any(|w| w == "create")
            && words.last() == Some(&id),
        "the monitor's command line: {words:?}"
    );
    Ok(())
}
