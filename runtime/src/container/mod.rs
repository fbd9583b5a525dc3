//! The container lifecycle: create, start, state, kill, delete, pause, resume,
//! exec, run. Each operation is a short-lived call working from the state dir;
//! nothing lives in memory between calls except berth's per-container monitor.

mod channel;
mod clone;
mod create;
mod exec;
pub mod init;
mod wait;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use thiserror::Error;

use crate::bundle::BundleError;
use crate::cgroups::{self, CgroupConfig, CgroupError};
use crate::hooks::{HookError, HookState};
use crate::id::IdError;
use crate::state::{self, ContainerState, ExitRecord, Root, StateError, Status};

pub use create::{CreateOptions, MonitorMode};
pub use exec::ExecOptions;

#[derive(Debug, Error)]
pub enum EngineError {
    #[error(transparent)]
    Id(#[from] IdError),
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("cgroup: {0}")]
    Cgroup(#[from] CgroupError),
    #[error("seccomp: {0}")]
    Seccomp(#[from] crate::seccomp::SeccompError),
    #[error(transparent)]
    Hook(#[from] HookError),
    #[error("container {id:?}: {message}")]
    Setup { id: String, message: String },
    /// An error the monitor process met, already formatted.
    #[error("{0}")]
    Reported(String),
    #[error("container {id:?} is {status}; {what}")]
    WrongStatus {
        id: String,
        status: Status,
        what: &'static str,
    },
    #[error("{op}: {source}")]
    Sys { op: String, source: nix::Error },
    #[error("{op}: {source}")]
    Io { op: String, source: std::io::Error },
}

pub type Result<T> = std::result::Result<T, EngineError>;

fn sys(op: impl Into<String>) -> impl FnOnce(nix::Error) -> EngineError {
    let op = op.into();
    move |source| EngineError::Sys { op, source }
}

fn io(op: impl Into<String>) -> impl FnOnce(std::io::Error) -> EngineError {
    let op = op.into();
    move |source| EngineError::Io { op, source }
}

/// The engine: a state root and a cgroup parent.
#[derive(Debug, Clone)]
pub struct Engine {
    pub root: Root,
    pub cgroups: CgroupConfig,
}

/// A container as `state` reports it.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub state: ContainerState,
    pub status: Status,
    pub exit: Option<ExitRecord>,
}

impl Engine {
    pub fn new(root: impl Into<PathBuf>, cgroups: CgroupConfig) -> Engine {
        Engine {
            root: Root::new(root),
            cgroups,
        }
    }

    fn cgroup_of(&self, st: &ContainerState) -> Result<Box<dyn cgroups::Cgroup>> {
        let cfg = CgroupConfig {
            mount_root: st.cgroup_mount_root.clone(),
            parent: st.cgroup_parent.clone(),
        };
        Ok(cgroups::open(&cfg, &st.cgroup)?)
    }

    pub fn state(&self, id: &str) -> Result<Snapshot> {
        crate::id::validate(id)?;
        let st = self.root.load(id)?;
        let mut exit = self.root.exit_record(id)?;
        let mut status = self.status_of(&st, exit.as_ref());
        // The init is gone but its monitor, still alive, has not recorded
        // the exit yet: it records it once the output is drained (at most
        // DRAIN later, more on a loaded machine), and a caller told
        // "stopped" expects the record. The monitor exits right after
        // writing it, so the wait ends early when there is nothing to wait for.
        if status == Status::Stopped
            && exit.is_none()
            && let Some(m) = st.monitor_pid
            && monitor_alive(m)
        {
            let deadline = Instant::now() + crate::monitor::DRAIN + Duration::from_secs(3);
            while exit.is_none() && Instant::now() < deadline && monitor_alive(m) {
                std::thread::sleep(Duration::from_millis(2));
                exit = self.root.exit_record(id)?;
            }
            status = self.status_of(&st, exit.as_ref());
        }
        Ok(Snapshot {
            state: st,
            status,
            exit,
        })
    }

    fn status_of(&self, st: &ContainerState, exit: Option<&ExitRecord>) -> Status {
        if exit.is_some() || !state::is_alive(st.pid, st.pid_start) {
            return Status::Stopped;
        }
        if self
            .root
            .container_dir(&st.id)
            .join(state::FIFO_FILE)
            .exists()
        {
            return Status::Created;
        }
        match self.cgroup_of(st).and_then(|c| Ok(c.is_frozen()?)) {
            Ok(true) => Status::Paused,
            _ => Status::Running,
        }
    }

    pub fn list(&self) -> Result<Vec<Snapshot>> {
        let mut out = Vec::new();
        for id in self.root.list()? {
            // A container deleted meanwhile is simply not listed.
            if let Ok(s) = self.state(&id) {
                out.push(s);
            }
        }
        Ok(out)
    }

    /// Releases the start barrier: the init execs the user's program.
    pub fn start(&self, id: &str) -> Result<()> {
        let snap = self.state(id)?;
        if snap.status != Status::Created {
            return Err(EngineError::WrongStatus {
                id: id.into(),
                status: snap.status,
                what: "only a created container can be started",
            });
        }
        let dir = self.root.container_dir(id);
        let fifo = dir.join(state::FIFO_FILE);
        wait::release_barrier(&fifo, snap.state.pid, snap.state.pid_start).map_err(|message| {
            EngineError::Setup {
                id: id.into(),
                message,
            }
        })?;
        let _ = std::fs::remove_file(&fifo);
        if snap.state.monitor_pid.is_some() {
            // For the monitor's exit record; nobody else needs it.
            let _ = state::write_atomic(
                &dir.join(state::STARTED_FILE),
                crate::crilog::format_timestamp(std::time::SystemTime::now()).as_bytes(),
            );
        }
        let spec = snap.state.spec.clone().unwrap_or_default();
        if let Some(hooks) = spec.hooks().as_ref().and_then(|h| h.poststart().clone()) {
            let hs = hook_state(&snap.state, &spec, "running");
            if let Err(e) = crate::hooks::run("poststart", &hooks, &hs) {
                tracing::warn!(id, error = %e, "poststart hook failed");
            }
        }
        Ok(())
    }

    /// The spec the container was created from (kept in its state, so that exec
    /// and hooks do not depend on the bundle staying put).
    pub fn saved_spec(&self, id: &str) -> Result<oci_spec::runtime::Spec> {
        let st = self.root.load(id)?;
        st.spec.ok_or_else(|| EngineError::Setup {
            id: id.into(),
            message: "state.json holds no spec".into(),
        })
    }

    /// Sends `signal` to the init, or with `all` to every process of the container.
    pub fn kill(&self, id: &str, signal: Signal, all: bool) -> Result<()> {
        let snap = self.state(id)?;
        if all {
            return self.signal_all(&snap.state, signal);
        }
        if snap.status == Status::Stopped {
            return Err(EngineError::WrongStatus {
                id: id.into(),
                status: snap.status,
                what: "container not running",
            });
        }
        nix::sys::signal::kill(Pid::from_raw(snap.state.pid), signal)
            .map_err(sys(format!("kill {signal} to pid {}", snap.state.pid)))
    }

    fn signal_all(&self, st: &ContainerState, signal: Signal) -> Result<()> {
        let cg = self.cgroup_of(st)?;
        // Frozen processes cannot fork between our listing and the signal.
        let froze = signal == Signal::SIGKILL && cg.freeze().is_ok();
        let pids = cg.pids().unwrap_or_default();
        for pid in pids {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), signal);
        }
        if state::is_alive(st.pid, st.pid_start) {
            let _ = nix::sys::signal::kill(Pid::from_raw(st.pid), signal);
        }
        if froze {
            let _ = cg.thaw();
        }
        Ok(())
    }

    /// Removes everything the container made: processes (with `force`), cgroup, state.
    pub fn delete(&self, id: &str, force: bool) -> Result<()> {
        let snap = self.state(id)?;
        match snap.status {
            Status::Stopped => {}
            Status::Created => self.signal_all(&snap.state, Signal::SIGKILL)?,
            _ if force => self.signal_all(&snap.state, Signal::SIGKILL)?,
            status => {
                return Err(EngineError::WrongStatus {
                    id: id.into(),
                    status,
                    what: "stop it first or use --force",
                });
            }
        }
        let cg = self.cgroup_of(&snap.state)?;
        wait_until(Duration::from_secs(10), || {
            !state::is_alive(snap.state.pid, snap.state.pid_start)
                && cg.pids().map(|p| p.is_empty()).unwrap_or(true)
        });
        cg.destroy()?;
        let spec = snap.state.spec.clone();
        self.root.remove(id)?;
        if let Some(spec) = spec
            && let Some(hooks) = spec.hooks().as_ref().and_then(|h| h.poststop().clone())
        {
            let hs = hook_state(&snap.state, &spec, "stopped");
            if let Err(e) = crate::hooks::run("poststop", &hooks, &hs) {
                tracing::warn!(id, error = %e, "poststop hook failed");
            }
        }
        Ok(())
    }

    pub fn pause(&self, id: &str) -> Result<()> {
        let snap = self.state(id)?;
        if snap.status != Status::Running {
            return Err(EngineError::WrongStatus {
                id: id.into(),
                status: snap.status,
                what: "only a running container can be paused",
            });
        }
        Ok(self.cgroup_of(&snap.state)?.freeze()?)
    }

    pub fn resume(&self, id: &str) -> Result<()> {
        let snap = self.state(id)?;
        if snap.status != Status::Paused {
            return Err(EngineError::WrongStatus {
                id: id.into(),
                status: snap.status,
                what: "only a paused container can be resumed",
            });
        }
        Ok(self.cgroup_of(&snap.state)?.thaw()?)
    }

    pub fn pids(&self, id: &str) -> Result<Vec<i32>> {
        let snap = self.state(id)?;
        Ok(self.cgroup_of(&snap.state)?.pids()?)
    }

    pub fn stats(&self, id: &str) -> Result<cgroups::CgroupStats> {
        let snap = self.state(id)?;
        Ok(self.cgroup_of(&snap.state)?.stats()?)
    }

    pub fn update(&self, id: &str, resources: &oci_spec::runtime::LinuxResources) -> Result<()> {
        let snap = self.state(id)?;
        Ok(self.cgroup_of(&snap.state)?.apply(resources)?)
    }
}

fn hook_state<'a>(
    st: &'a ContainerState,
    spec: &'a oci_spec::runtime::Spec,
    status: &'static str,
) -> HookState<'a> {
    HookState {
        oci_version: spec.version(),
        id: &st.id,
        status,
        pid: Some(st.pid),
        bundle: &st.bundle,
        annotations: spec.annotations().as_ref(),
    }
}

/// Polls `done` with a growing pause until it holds or `limit` passes.
fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    let mut pause = Duration::from_micros(100);
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// `path` exists and is a directory we can use as a state root.
pub fn ensure_dir(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path).map_err(io(format!("creating {}", path.display())))
}

/// (exit code, signal) of a finished process; 128 + signal when signalled.
pub fn init_exit_code(status: nix::sys::wait::WaitStatus) -> (i32, Option<i32>) {
    wait::exit_code(status).unwrap_or((255, None))
}

/// Whether a monitor process still runs (not a zombie).
fn monitor_alive(pid: i32) -> bool {
    state::proc_stat(pid).is_some_and(|s| s.state != 'Z' && s.state != 'X')
}
