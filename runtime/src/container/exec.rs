//! `exec`: one more process in a running container, in all of its namespaces,
//! its cgroup, and with the credentials and seccomp filter its spec asks for.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use nix::sched::CloneFlags;
use oci_spec::runtime::Process;

use super::init::{InitConfig, Kind};
use super::{Engine, EngineError, Result};
use crate::process::CapSets;
use crate::state::{self, Status};

#[derive(Debug, Clone, Default)]
pub struct ExecOptions {
    pub pid_file: Option<PathBuf>,
    pub console_socket: Option<PathBuf>,
    /// Return once the process runs, leaving it to our parent (or its subreaper).
    pub detach: bool,
    pub preserve_fds: i32,
}

const NAMESPACES: [(&str, CloneFlags); 7] = [
    ("user", CloneFlags::CLONE_NEWUSER),
    ("ipc", CloneFlags::CLONE_NEWIPC),
    ("uts", CloneFlags::CLONE_NEWUTS),
    ("net", CloneFlags::CLONE_NEWNET),
    ("pid", CloneFlags::CLONE_NEWPID),
    ("cgroup", CloneFlags::CLONE_NEWCGROUP),
    ("mnt", CloneFlags::CLONE_NEWNS),
];

impl Engine {
    /// Runs `process` in container `id`. Returns its pid when detached, else its exit code.
    pub fn exec(&self, id: &str, process: Process, o: &ExecOptions) -> Result<i32> {
        crate::bundle::validate_process(&process, "process")?;
        let snap = self.state(id)?;
        if !matches!(snap.status, Status::Running | Status::Created) {
            return Err(EngineError::WrongStatus {
                id: id.into(),
                status: snap.status,
                what: "cannot exec in a container that is not running",
            });
        }
        let spec = self.saved_spec(id)?;
        let seccomp = match spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()) {
            Some(s) => Some(crate::seccomp::compile(s)?),
            None => None,
        };
        let pid = snap.state.pid;
        let mut joins = Vec::new();
        for (name, flag) in NAMESPACES {
            let theirs = format!("/proc/{pid}/ns/{name}");
            let (Ok(a), Ok(b)) = (
                std::fs::metadata(&theirs),
                std::fs::metadata(format!("/proc/self/ns/{name}")),
            ) else {
                continue;
            };
            // Joining one's own namespace is an error for user namespaces and pointless for the rest.
            if a.ino() != b.ino() || a.dev() != b.dev() {
                joins.push((flag, PathBuf::from(theirs)));
            }
        }
        let console = match &o.console_socket {
            Some(p) => {
                let s = std::os::unix::net::UnixStream::connect(p).map_err(super::io(format!(
                    "connecting to console socket {}",
                    p.display()
                )))?;
                Some(std::os::fd::OwnedFd::from(s))
            }
            None if process.terminal().unwrap_or(false) => {
                return Err(EngineError::Setup {
                    id: id.into(),
                    message: "process.terminal is set: --console-socket is required".into(),
                });
            }
            None => None,
        };
        let caps = CapSets::from_spec(process.capabilities().as_ref());
        let cg = self.cgroup_of(&snap.state)?;
        let cfg = InitConfig {
            kind: Kind::Exec,
            id: id.to_owned(),
            bundle: snap.state.bundle.clone(),
            spec,
            process,
            rootfs: snap.state.rootfs.clone(),
            fifo: None,
            console,
            stdio: None,
            stdin: None,
            hierarchies: Vec::new(),
            cgroup_path: PathBuf::new(),
            seccomp,
            caps,
            joins,
            unshare: CloneFlags::empty(),
            preserve_fds: o.preserve_fds,
        };
        let sfd = if o.detach {
            None
        } else {
            Some(
                super::wait::block_signals().map_err(|message| EngineError::Setup {
                    id: id.into(),
                    message,
                })?,
            )
        };
        // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) takes integers only; we adopt the
        // exec'd process when its stage 1 exits.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        let child = super::create::spawn(&cfg, cg.as_ref(), |_| Ok(())).map_err(|message| {
            EngineError::Setup {
                id: id.into(),
                message,
            }
        })?;
        if let Some(p) = &o.pid_file {
            state::write_atomic(p, child.to_string().as_bytes())?;
        }
        match sfd {
            None => Ok(child),
            Some(sfd) => {
                super::wait::wait_forwarding(&sfd, child).map_err(|message| EngineError::Setup {
                    id: id.into(),
                    message,
                })
            }
        }
    }

    /// `run`: create, start, wait in the foreground, delete. Returns the exit code.
    pub fn run(&self, o: &super::CreateOptions) -> Result<i32> {
        let sfd = super::wait::block_signals().map_err(|message| EngineError::Setup {
            id: o.id.clone(),
            message,
        })?;
        let opts = super::CreateOptions {
            monitor: super::MonitorMode::Never,
            ..o.clone()
        };
        let st = self.create(&opts)?;
        tracing::debug!(id = %o.id, "created");
        if let Err(e) = self.start(&o.id) {
            let _ = self.delete(&o.id, true);
            return Err(e);
        }
        let code =
            super::wait::wait_forwarding(&sfd, st.pid).map_err(|message| EngineError::Setup {
                id: o.id.clone(),
                message,
            });
        tracing::debug!(id = %o.id, "exited");
        self.delete(&o.id, true)?;
        tracing::debug!(id = %o.id, "deleted");
        code
    }
}
