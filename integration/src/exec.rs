//! Running a command with a deadline, its output going to files.
//!
//! Output goes to files, not pipes: a container started by `create` or
//! `run -d` inherits the runtime's stdout/stderr, so a pipe would not reach
//! EOF until the container exits. The files also keep what the container
//! writes after the runtime command returned.

use std::fmt;
use std::fs::File;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// The result of a finished command.
#[derive(Debug)]
pub struct Output {
    pub args: Vec<String>,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub stdout_path: PathBuf,
    pub stderr_path: PathBuf,
    pub elapsed: Duration,
}

impl Output {
    /// The exit code, None if killed by a signal.
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// The signal that killed the command, if any.
    pub fn signal(&self) -> Option<i32> {
        self.status.signal()
    }

    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// Ok(self) if the command exited 0, else an error showing everything.
    pub fn check(self) -> Result<Output> {
        if self.success() {
            Ok(self)
        } else {
            bail!("command failed: {self}")
        }
    }

    /// Ok(self) if the command exited with `code`, else an error.
    pub fn expect_code(self, code: i32) -> Result<Output> {
        if self.code() == Some(code) {
            Ok(self)
        } else {
            bail!("expected exit code {code}: {self}")
        }
    }

    /// Re-reads the stdout file (a detached container may still write to it).
    pub fn stdout_now(&self) -> String {
        std::fs::read_to_string(&self.stdout_path).unwrap_or_default()
    }

    /// Re-reads the stderr file.
    pub fn stderr_now(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }
}

impl fmt::Display for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}` -> {} after {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.args.join(" "),
            self.status,
            self.elapsed,
            self.stdout.trim_end(),
            self.stderr.trim_end()
        )
    }
}

/// A started command.
pub struct Spawned {
    pid: i32,
    args: Vec<String>,
    rx: mpsc::Receiver<std::io::Result<ExitStatus>>,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
    started: Instant,
    finished: bool,
}

impl Drop for Spawned {
    /// A command dropped before it was waited for (a test failed midway) is
    /// killed with its process group, so nothing outlives the test.
    fn drop(&mut self) {
        if !self.finished && self.rx.try_recv().is_err() {
            self.kill_group();
            let _ = self.rx.recv_timeout(Duration::from_secs(10));
        }
    }
}

impl Spawned {
    /// Starts `cmd` in its own process group, stdout/stderr to
    /// `<out_prefix>.stdout`/`.stderr`, stdin from /dev/null unless set.
    pub fn start(mut cmd: Command, out_prefix: &Path) -> Result<Spawned> {
        let stdout_path = out_prefix.with_extension("stdout");
        let stderr_path = out_prefix.with_extension("stderr");
        let args: Vec<String> = std::iter::once(cmd.get_program())
            .chain(cmd.get_args())
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        cmd.stdin(Stdio::null())
            .stdout(File::create(&stdout_path)?)
            .stderr(File::create(&stderr_path)?)
            .process_group(0);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("spawning `{}`", args.join(" ")))?;
        let pid = child.id() as i32;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait());
        });
        Ok(Spawned {
            pid,
            args,
            rx,
            stdout_path,
            stderr_path,
            started: Instant::now(),
            finished: false,
        })
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// SIGKILLs the command's process group (it leads its own).
    pub fn kill_group(&self) {
        // SAFETY: signalling the process group we created.
        unsafe { libc::kill(-self.pid, libc::SIGKILL) };
    }

    /// What the command wrote to stdout so far.
    pub fn stdout_so_far(&self) -> String {
        std::fs::read_to_string(&self.stdout_path).unwrap_or_default()
    }

    /// Waits for the exit; after `timeout` the whole process group is
    /// killed and an error returned.
    pub fn wait(mut self, timeout: Duration) -> Result<Output> {
        let status = match self.rx.recv_timeout(timeout) {
            Ok(s) => s,
            Err(_) => {
                self.kill_group();
                let _ = self.rx.recv_timeout(Duration::from_secs(10));
                self.finished = true;
                let out = self.output(ExitStatus::from_raw(libc::SIGKILL));
                bail!("timed out after {timeout:?}, killed: {out}");
            }
        };
        self.finished = true;
        Ok(self.output(status?))
    }

    fn output(&self, status: ExitStatus) -> Output {
        Output {
            args: self.args.clone(),
            status,
            stdout: std::fs::read_to_string(&self.stdout_path).unwrap_or_default(),
            stderr: std::fs::read_to_string(&self.stderr_path).unwrap_or_default(),
            stdout_path: self.stdout_path.clone(),
            stderr_path: self.stderr_path.clone(),
            elapsed: self.started.elapsed(),
        }
    }
}

/// Runs `cmd` to completion within `timeout` (see [`Spawned::start`]).
pub fn run(cmd: Command, out_prefix: &Path, timeout: Duration) -> Result<Output> {
    Spawned::start(cmd, out_prefix)?.wait(timeout)
}

/// Polls `f` every 20 ms until it returns Some, or fails after `timeout`.
pub fn wait_until<T>(
    timeout: Duration,
    what: &str,
    mut f: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f()? {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts a daemon that dies with this process, even on `kill -9` of the
/// test run: it gets `PR_SET_PDEATHSIG(SIGKILL)`. The signal follows the
/// *thread* that forked, and test threads end, so the fork happens on one
/// thread that lives as long as the process.
pub fn spawn_daemon(mut cmd: Command, out_prefix: &Path) -> Result<Spawned> {
    use std::sync::{Mutex, OnceLock};
    type Job = Box<dyn FnOnce() + Send>;
    static KEEPER: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();

    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    // SAFETY: only async-signal-safe calls (prctl, getppid, _exit) run
    // between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before prctl took effect.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    let keeper = KEEPER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("daemon-keeper".into())
            .spawn(move || {
                for job in rx {
                    job();
                }
            })
            .expect("cannot start the daemon-keeper thread");
        Mutex::new(tx)
    });
    let (tx, rx) = mpsc::channel();
    let out_prefix = out_prefix.to_path_buf();
    let job: Job = Box::new(move || {
        let _ = tx.send(Spawned::start(cmd, &out_prefix));
    });
    keeper
        .lock()
        .map_err(|_| anyhow::anyhow!("daemon-keeper lock poisoned"))?
        .send(job)
        .map_err(|_| anyhow::anyhow!("daemon-keeper thread is gone"))?;
    rx.recv()
        .map_err(|_| anyhow::anyhow!("daemon-keeper thread dropped the job"))?
}
