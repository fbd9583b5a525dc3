//! A pod's shared process namespace, held by a minimal init.
//!
//! Unlike the network, IPC and UTS namespaces, a pid namespace cannot be
//! pinned by a mount: once its first process (its init) exits, no process
//! can enter it again. So a pod that shares one process namespace
//! (`shareProcessNamespace`, or a CRI client that leaves the pid mode at
//! POD) gets `berth pod-init`: pid 1 of the new namespace, which reaps the
//! orphans its containers leave and exits on SIGTERM. It is a few hundred
//! KiB of memory and runs only for such pods.

use std::path::Path;
use std::process::{Command, Stdio};

use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid};

/// The hidden subcommand that runs [`init_main`].
pub const SUBCOMMAND: &str = "pod-init";

#[derive(Debug, thiserror::Error)]
pub enum PidNsError {
    #[error("starting the pod's init: {0}")]
    Start(String),
}

/// Starts the init of a new pid namespace and returns its pid (in ours).
pub fn start(exe: &Path, scratch: &Path) -> Result<i32, PidNsError> {
    std::fs::create_dir_all(scratch)
        .map_err(|e| PidNsError::Start(format!("{}: {e}", scratch.display())))?;
    let pid_file = scratch.join("pod-init.pid");
    let _ = std::fs::remove_file(&pid_file);
    let out = Command::new(exe)
        .arg(SUBCOMMAND)
        .arg(&pid_file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| PidNsError::Start(format!("running {}: {e}", exe.display())))?;
    if !out.status.success() {
        return Err(PidNsError::Start(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    std::fs::read_to_string(&pid_file)
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .ok_or_else(|| PidNsError::Start(format!("no pid in {}", pid_file.display())))
}

/// `berth pod-init PIDFILE`: makes the namespace, forks its init, writes the
/// init's pid and returns; the init lives on, adopted by the host's init.
pub fn init_main(pid_file: &Path) -> i32 {
    if let Err(e) = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWPID) {
        eprintln!("berth pod-init: unshare(CLONE_NEWPID): {e}");
        return 1;
    }
    // SAFETY: this process is single-threaded (it was just exec'd and has
    // started no threads), so the child may run any code.
    match unsafe { nix::unistd::fork() } {
        Ok(ForkResult::Parent { child }) => {
            match crate::state::write_atomic(pid_file, child.as_raw().to_string().as_bytes()) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("berth pod-init: {e}");
                    let _ = nix::sys::signal::kill(child, Signal::SIGKILL);
                    1
                }
            }
        }
        Ok(ForkResult::Child) => {
            // The daemon reads our parent's stderr to its end: the init must
            // not hold it open.
            if let Ok(null) = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/null")
            {
                for fd in 0..3 {
                    // SAFETY: replaces our own standard descriptors, which
                    // nothing else in this process holds as owned fds.
                    let _ = unsafe { nix::unistd::dup2_raw(&null, fd) };
                }
            }
            let _ = nix::unistd::setsid();
            let _ = std::env::set_current_dir("/");
            run_init()
        }
        Err(e) => {
            eprintln!("berth pod-init: fork: {e}");
            1
        }
    }
}

/// pid 1's loop: reap every child, leave on SIGTERM or SIGINT.
fn run_init() -> i32 {
    let mut set = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGCHLD] {
        set.add(s);
    }
    if set.thread_block().is_err() {
        return 1;
    }
    loop {
        let sig = set.wait().unwrap_or(Signal::SIGCHLD);
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => {}
            }
        }
        if matches!(sig, Signal::SIGTERM | Signal::SIGINT) {
            return 0;
        }
    }
}
