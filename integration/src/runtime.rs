//! The runtime under test: berth's runc-compatible CLI (`berth-oci`), or
//! runc itself when `BERTH_OCI` points at it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;
use tempfile::TempDir;

use crate::bundle::Bundle;
use crate::exec::{self, Output, Spawned, wait_until};
use crate::workdir::{base_dir, tempdir};

/// Which implementation is under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    Berth,
    Runc,
}

/// The runtime binary under test.
#[derive(Debug)]
pub struct Binary {
    /// What is executed: a `berth-oci` symlink to berth, or runc itself.
    pub exec: PathBuf,
    /// The real binary.
    pub target: PathBuf,
    pub flavor: Flavor,
}

/// Default deadline of one runtime command.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(20);

static BINARY: OnceLock<Result<Binary, String>> = OnceLock::new();

/// The binary under test, resolved once per process:
/// `$BERTH_OCI` if set (a path, or a name looked up in PATH), else berth
/// built by `cargo build -p berth` (a no-op when up to date) at
/// `<target dir>/debug/berth`.
pub fn binary() -> Result<&'static Binary> {
    BINARY
        .get_or_init(|| resolve().map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| anyhow!("resolving the runtime under test: {e}"))
}

static BERTH: OnceLock<Result<PathBuf, String>> = OnceLock::new();

/// berth itself, built once per process by `cargo build -p berth` whatever
/// `BERTH_OCI` selects: for tests of parts only berth has (its CNI plugins).
pub fn berth_binary() -> Result<&'static Path> {
    BERTH
        .get_or_init(|| {
            build_berth()
                .and_then(|p| std::fs::canonicalize(&p).with_context(|| format!("{}", p.display())))
                .map_err(|e| format!("{e:#}"))
        })
        .as_deref()
        .map_err(|e| anyhow!("building berth: {e}"))
}

/// The workspace root (parent of this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("crate is inside the workspace")
        .to_path_buf()
}

/// `$CARGO_TARGET_DIR` or `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => workspace_root().join(d),
        None => workspace_root().join("target"),
    }
}

/// Looks a command name up in PATH (names containing '/' are returned as is).
pub fn which(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        return Some(PathBuf::from(name));
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

fn build_berth() -> Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(&cargo)
        .args(["build", "-p", "berth", "--bin", "berth"])
        .current_dir(workspace_root())
        .output()
        .with_context(|| format!("running {} build -p berth", cargo.to_string_lossy()))?;
    if !out.status.success() {
        bail!(
            "`cargo build -p berth` failed (set BERTH_OCI=/usr/sbin/runc to test runc instead):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let bin = target_dir().join("debug/berth");
    if !bin.is_file() {
        bail!("{} missing after cargo build -p berth", bin.display());
    }
    Ok(bin)
}

fn resolve() -> Result<Binary> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the black-box tests create containers and cgroups: run them as root");
    }
    let target = match std::env::var("BERTH_OCI") {
        Ok(p) if !p.is_empty() => which(&p).ok_or_else(|| anyhow!("BERTH_OCI={p}: not found"))?,
        _ => build_berth()?,
    };
    let target = std::fs::canonicalize(&target)
        .with_context(|| format!("runtime binary {}", target.display()))?;
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let flavor = if name.contains("runc") {
        Flavor::Runc
    } else {
        let v = Command::new(&target).arg("--version").output();
        match v {
            Ok(o) if String::from_utf8_lossy(&o.stdout).starts_with("runc version") => Flavor::Runc,
            _ => Flavor::Berth,
        }
    };
    let exec = match flavor {
        Flavor::Runc => target.clone(),
        Flavor::Berth => {
            let dir = base_dir().join("bin");
            std::fs::create_dir_all(&dir)?;
            let link = dir.join("berth-oci");
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(&target, &link)?;
            link
        }
    };
    Ok(Binary {
        exec,
        target,
        flavor,
    })
}

/// Prints why a berth-only test does nothing and returns true when the
/// runtime under test is not berth. Use as
/// `if skip_unless_berth("monitor") { return Ok(()); }`.
pub fn skip_unless_berth(what: &str) -> Result<bool> {
    let b = binary()?;
    if b.flavor == Flavor::Berth {
        return Ok(false);
    }
    // Written to the stderr handle directly, past the test harness's output
    // capture, so the skip shows in every test run.
    let _ = writeln!(
        std::io::stderr().lock(),
        "SKIPPED (berth-only: {what}): the runtime under test is {}",
        b.target.display()
    );
    Ok(true)
}

/// The `state` JSON of a container.
#[derive(Clone, Debug)]
pub struct State(pub Value);

impl State {
    pub fn status(&self) -> &str {
        self.0["status"].as_str().unwrap_or("")
    }

    /// The pid of the container init (0 or absent once stopped).
    pub fn pid(&self) -> Option<i32> {
        self.0["pid"].as_i64().filter(|p| *p > 0).map(|p| p as i32)
    }

    pub fn id(&self) -> &str {
        self.0["id"].as_str().unwrap_or("")
    }
}

/// A runtime with a private `--root`; containers it created are force
/// deleted when it is dropped.
pub struct Runtime {
    bin: &'static Binary,
    dir: TempDir,
    globals: Vec<String>,
    ids: Mutex<Vec<String>>,
    seq: AtomicU64,
}

impl Runtime {
    /// The runtime under test with `--root <private temp dir>`.
    pub fn new() -> Result<Runtime> {
        Runtime::with_globals(&[])
    }

    /// Like [`Runtime::new`], with more global options (e.g. `--monitor always`).
    pub fn with_globals(extra: &[&str]) -> Result<Runtime> {
        let bin = binary()?;
        let dir = tempdir("runtime-")?;
        std::fs::create_dir(dir.path().join("out"))?;
        let root = dir.path().join("state");
        let mut globals = vec!["--root".to_string(), root.to_string_lossy().into_owned()];
        globals.extend(extra.iter().map(|s| s.to_string()));
        Ok(Runtime {
            bin,
            dir,
            globals,
            ids: Mutex::new(Vec::new()),
            seq: AtomicU64::new(0),
        })
    }

    pub fn flavor(&self) -> Flavor {
        self.bin.flavor
    }

    pub fn is_berth(&self) -> bool {
        self.bin.flavor == Flavor::Berth
    }

    pub fn binary(&self) -> &'static Binary {
        self.bin
    }

    /// The `--root` state directory.
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// A scratch directory private to this runtime (for sockets, files).
    pub fn scratch(&self) -> &Path {
        self.dir.path()
    }

    /// The runtime command with the global options, not started.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin.exec);
        c.args(&self.globals).args(args);
        c
    }

    fn out_prefix(&self, args: &[&str]) -> PathBuf {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let sub: String = args
            .iter()
            .find(|a| !a.starts_with('-'))
            .copied()
            .unwrap_or("cmd")
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .take(16)
            .collect();
        self.dir.path().join("out").join(format!("{n}-{sub}"))
    }

    fn track(&self, args: &[&str]) {
        if let Some(sub) = args.iter().find(|a| !a.starts_with('-'))
            && (*sub == "create" || *sub == "run")
            && let Some(id) = args.last()
        {
            self.ids.lock().unwrap().push(id.to_string());
        }
    }

    /// Starts a runtime command without waiting for it.
    pub fn spawn(&self, args: &[&str]) -> Result<Spawned> {
        self.track(args);
        Spawned::start(self.command(args), &self.out_prefix(args))
    }

    /// Runs a runtime command (any exit code is Ok) with the default deadline.
    pub fn cmd(&self, args: &[&str]) -> Result<Output> {
        self.cmd_timeout(args, DEFAULT_TIMEOUT)
    }

    pub fn cmd_timeout(&self, args: &[&str], timeout: Duration) -> Result<Output> {
        self.track(args);
        let out = exec::run(self.command(args), &self.out_prefix(args), timeout)?;
        if out.success()
            && args.iter().find(|a| !a.starts_with('-')) == Some(&"delete")
            && let Some(id) = args.last()
        {
            self.ids.lock().unwrap().retain(|i| i != id);
        }
        Ok(out)
    }

    /// `run --bundle B ID` in the foreground; returns whatever it exits with.
    pub fn run(&self, id: &str, bundle: &Bundle) -> Result<Output> {
        self.cmd(&["run", "--bundle", bundle.path_str(), id])
    }

    /// `create --bundle B [extra...] ID`, which must succeed.
    pub fn create(&self, id: &str, bundle: &Bundle) -> Result<Output> {
        self.create_with(id, bundle, &[])
    }

    pub fn create_with(&self, id: &str, bundle: &Bundle, extra: &[&str]) -> Result<Output> {
        let mut args = vec!["create", "--bundle", bundle.path_str()];
        args.extend_from_slice(extra);
        args.push(id);
        self.cmd(&args)?.check()
    }

    pub fn start(&self, id: &str) -> Result<Output> {
        self.cmd(&["start", id])?.check()
    }

    /// `state ID`, parsed.
    pub fn state(&self, id: &str) -> Result<State> {
        let out = self.cmd(&["state", id])?.check()?;
        let v: Value = serde_json::from_str(&out.stdout)
            .with_context(|| format!("state output is not JSON: {out}"))?;
        Ok(State(v))
    }

    pub fn kill(&self, id: &str, signal: &str) -> Result<Output> {
        self.cmd(&["kill", id, signal])?.check()
    }

    pub fn delete(&self, id: &str) -> Result<Output> {
        self.cmd(&["delete", id])?.check()
    }

    pub fn delete_force(&self, id: &str) -> Result<Output> {
        self.cmd(&["delete", "--force", id])?.check()
    }

    /// Polls `state` until the status is `want`.
    pub fn wait_status(&self, id: &str, want: &str, timeout: Duration) -> Result<State> {
        let mut last = String::new();
        wait_until(timeout, &format!("{id} to be {want}"), || {
            let s = self.state(id)?;
            if s.status() == want {
                return Ok(Some(s));
            }
            last = s.status().to_string();
            Ok(None)
        })
        .with_context(|| format!("last status: {last:?}"))
    }

    /// create + start, waiting until the state says running and the init
    /// has exec'd the container's program (busybox, in the test rootfs).
    pub fn create_started(&self, id: &str, bundle: &Bundle) -> Result<State> {
        self.create(id, bundle)?;
        self.start(id)?;
        let st = self.wait_status(id, "running", Duration::from_secs(10))?;
        let pid = st.pid().context("running container without a pid")?;
        wait_until(Duration::from_secs(10), "the init to exec busybox", || {
            Ok(crate::proc::exe(pid)
                .is_some_and(|e| e.file_name().is_some_and(|n| n == "busybox"))
                .then_some(()))
        })
        .with_context(|| format!("init {pid} runs {:?}", crate::proc::exe(pid)))?;
        Ok(st)
    }

    /// Fails if anything but the runtime's own dot-files is left in the state root.
    pub fn assert_no_state(&self) -> anyhow::Result<()> {
        let left: Vec<PathBuf> = self
            .state_entries()
            .into_iter()
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| !n.to_string_lossy().starts_with('.'))
            })
            .collect();
        anyhow::ensure!(left.is_empty(), "state left in --root: {left:?}");
        Ok(())
    }

    /// All paths below the state root (empty if the root does not exist).
    pub fn state_entries(&self) -> Vec<PathBuf> {
        fn walk(p: &Path, out: &mut Vec<PathBuf>) {
            if let Ok(rd) = std::fs::read_dir(p) {
                for e in rd.flatten() {
                    out.push(e.path());
                    if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                        walk(&e.path(), out);
                    }
                }
            }
        }
        let mut v = Vec::new();
        walk(&self.root(), &mut v);
        v
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        let ids = std::mem::take(&mut *self.ids.lock().unwrap_or_else(|e| e.into_inner()));
        for id in ids {
            let _ = self.cmd_timeout(&["delete", "--force", &id], Duration::from_secs(30));
        }
    }
}

/// What berth's monitor recorded about how a container ended. berth adds it
/// to the runc state JSON as `berth.exit`:
/// `{"berth": {"monitorPid": N, "exit": {"exitCode": 137, "signal": 9,
/// "oomKilled": true, "startedAt": "...", "finishedAt": "..."}}}`
/// (runc has no such field).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExitInfo {
    /// The exit code, 128 + signal when a signal ended the init.
    pub exit_code: Option<i64>,
    pub signal: Option<i64>,
    pub oom_killed: Option<bool>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
}

impl State {
    /// berth's exit record (`berth.exit`), None if absent.
    pub fn berth_exit(&self) -> Option<ExitInfo> {
        let e = self.0.pointer("/berth/exit").filter(|e| e.is_object())?;
        let s = |k: &str| e[k].as_str().map(String::from);
        Some(ExitInfo {
            exit_code: e["exitCode"].as_i64(),
            signal: e["signal"].as_i64(),
            oom_killed: e["oomKilled"].as_bool(),
            started_at: s("startedAt"),
            finished_at: s("finishedAt"),
        })
    }

    /// The pid of berth's monitor (`berth.monitorPid`), None if absent.
    pub fn berth_monitor_pid(&self) -> Option<i32> {
        self.0
            .pointer("/berth/monitorPid")
            .and_then(Value::as_i64)
            .map(|p| p as i32)
    }
}
