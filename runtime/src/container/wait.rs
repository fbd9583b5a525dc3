//! Waiting on processes: the start barrier, and a foreground wait that forwards
//! signals to the container as `runc run` does.

use std::os::fd::AsFd;
use std::path::Path;
use std::time::Duration;

use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use crate::state;

/// Opens the fifo's read end and takes the init's byte. Returns an error if the
/// init dies instead of writing.
pub fn release_barrier(fifo: &Path, pid: i32, start: u64) -> Result<(), String> {
    let fd = nix::fcntl::open(
        fifo,
        OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| format!("opening the start barrier {}: {e}", fifo.display()))?;
    let mut waited = Duration::ZERO;
    loop {
        let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
        let n = poll(&mut fds, PollTimeout::from(50u16)).map_err(|e| format!("poll: {e}"))?;
        if n > 0 {
            let mut b = [0u8; 1];
            match nix::unistd::read(&fd, &mut b) {
                Ok(1) => return Ok(()),
                Ok(_) => {}
                Err(nix::errno::Errno::EAGAIN) => {}
                Err(e) => return Err(format!("reading the start barrier: {e}")),
            }
        }
        if !state::is_alive(pid, start) {
            return Err("the container init exited before start".into());
        }
        waited += Duration::from_millis(50);
        if n > 0 {
            // POLLHUP without data: the writer has not opened yet; avoid spinning.
            std::thread::sleep(Duration::from_millis(1));
        }
        if waited > Duration::from_secs(30) {
            return Err("the container init did not reach the start barrier within 30s".into());
        }
    }
}

/// Signals a foreground runtime passes on to the container.
pub fn forwarded_signals() -> SigSet {
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
        Signal::SIGWINCH,
        Signal::SIGCHLD,
    ] {
        set.add(s);
    }
    set
}

/// Blocks the forwarded signals in the caller; must precede the fork so that no
/// SIGCHLD is lost. Children reset their mask before exec.
pub fn block_signals() -> Result<SignalFd, String> {
    let set = forwarded_signals();
    set.thread_block()
        .map_err(|e| format!("blocking signals: {e}"))?;
    SignalFd::with_flags(&set, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .map_err(|e| format!("signalfd: {e}"))
}

/// Exit code of a wait status: the code, or 128 + signal.
pub fn exit_code(status: WaitStatus) -> Option<(i32, Option<i32>)> {
    match status {
        WaitStatus::Exited(_, code) => Some((code, None)),
        WaitStatus::Signaled(_, sig, _) => Some((128 + sig as i32, Some(sig as i32))),
        _ => None,
    }
}

/// Waits for `pid` (a child, or adopted as subreaper), reaping others and
/// forwarding signals to it. Returns its exit code.
pub fn wait_forwarding(sfd: &SignalFd, pid: i32) -> Result<i32, String> {
    loop {
        // Reap first: the child may have exited before we got here.
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => break,
                Ok(st) => {
                    if st.pid() == Some(Pid::from_raw(pid))
                        && let Some((code, _)) = exit_code(st)
                    {
                        return Ok(code);
                    }
                }
                Err(nix::errno::Errno::ECHILD) => {
                    return Err(format!("process {pid} is not our child"));
                }
                Err(e) => return Err(format!("waitpid: {e}")),
            }
        }
        let mut fds = [PollFd::new(sfd.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(format!("poll: {e}")),
        }
        match sfd.read_signal() {
            Ok(Some(info)) => {
                let signo = info.ssi_signo as i32;
                if signo != libc::SIGCHLD
                    && let Ok(sig) = Signal::try_from(signo)
                {
                    let _ = nix::sys::signal::kill(Pid::from_raw(pid), sig);
                }
            }
            Ok(None) => {}
            Err(e) => return Err(format!("reading signals: {e}")),
        }
    }
}

/// Resets what a forked child inherited from the runtime's signal setup: the
/// blocked mask and ignored dispositions (Rust ignores SIGPIPE) survive exec.
pub fn reset_signals() {
    let _ = SigSet::empty().thread_set_mask();
    for sig in Signal::iterator() {
        if sig == Signal::SIGKILL || sig == Signal::SIGSTOP {
            continue;
        }
        // SAFETY: restoring the default disposition installs no Rust handler.
        let _ = unsafe { nix::sys::signal::signal(sig, nix::sys::signal::SigHandler::SigDfl) };
    }
}
