//! The engine's fork server: how the CRI daemon runs `berth oci` commands
//! without paying for an exec each time.
//!
//! Creating a container means running the engine's command line in a
//! process of its own: it forks the container's monitor, and the daemon's
//! own process is multi-threaded, so it may not fork and go on running Rust
//! code. An exec of `berth oci create` per container costs the dynamic
//! loader, the binary's page faults and the argument parser, about 2 ms of a
//! pod's start. So the daemon starts one `berth forkserver` at startup: a
//! single-threaded process that receives command lines and forks a child for
//! each, which runs the command as `berth` would and exits. The child is a
//! fork of a process that did nothing yet, so the same command line behaves
//! exactly as if it had been exec'd.
//!
//! Protocol, over a `SOCK_SEQPACKET` socket pair (the server's end is its
//! stdin): one request is one message whose body is the arguments after
//! `berth`, each ended by a NUL, carrying two descriptors: where to send the
//! exit status, and what to use as the command's stderr. When the command's
//! process exits, the server writes its status to the first descriptor as a
//! 4-byte little-endian `i32` (the exit code, or 128 plus the signal number)
//! and closes it. The server exits when the daemon's end closes; commands
//! still running then finish on their own.

use std::ffi::OsString;
use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, recvmsg,
    sendmsg, socketpair,
};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid};

/// The hidden subcommand that runs [`serve`].
pub const SUBCOMMAND: &str = "forkserver";

/// Requests are command lines: paths and IDs, far below this.
const MAX_REQUEST: usize = 64 * 1024;

/// Bytes of the server's own command line kept free for its children's.
const TITLE_ROOM: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum ForkServerError {
    #[error("starting the fork server {exe}: {source}")]
    Spawn {
        exe: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{op}: {source}")]
    Sys {
        op: &'static str,
        #[source]
        source: Errno,
    },
    /// The request was not delivered: the command did not run.
    #[error("sending a request to the fork server: {0}")]
    NotSent(Errno),
    #[error("the command line is too long for the fork server ({0} bytes)")]
    TooLong(usize),
    #[error("the fork server closed the request without an exit status (it exited?)")]
    NoStatus,
}

fn sys(op: &'static str) -> impl FnOnce(Errno) -> ForkServerError {
    move |source| ForkServerError::Sys { op, source }
}

/// The daemon's side: a running fork server.
pub struct Client {
    sock: OwnedFd,
    child: Child,
}

impl Client {
    /// Starts `exe forkserver` with its end of a new socket pair as stdin.
    pub fn spawn(exe: &Path) -> Result<Client, ForkServerError> {
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(sys("socketpair for the fork server"))?;
        let child = Command::new(exe)
            .arg(SUBCOMMAND)
            // Room for the children's command lines (see `retitle`).
            .arg(" ".repeat(TITLE_ROOM))
            .stdin(Stdio::from(theirs))
            .spawn()
            .map_err(|source| ForkServerError::Spawn {
                exe: exe.display().to_string(),
                source,
            })?;
        Ok(Client { sock: ours, child })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Runs `berth <args>` with `stderr` as its stderr (stdin and stdout are
    /// /dev/null) and waits for it: its exit code, or 128 plus the signal
    /// that ended it. Blocks; several calls may run at once.
    pub fn run(&self, args: &[OsString], stderr: BorrowedFd<'_>) -> Result<i32, ForkServerError> {
        let body = encode(args);
        if body.len() > MAX_REQUEST {
            return Err(ForkServerError::TooLong(body.len()));
        }
        let (reply, reply_theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(sys("socketpair for a fork server reply"))?;
        let fds = [reply_theirs.as_raw_fd(), stderr.as_raw_fd()];
        let cmsg = [ControlMessage::ScmRights(&fds)];
        sendmsg::<()>(
            self.sock.as_raw_fd(),
            &[IoSlice::new(&body)],
            &cmsg,
            MsgFlags::MSG_NOSIGNAL,
            None,
        )
        .map_err(ForkServerError::NotSent)?;
        drop(reply_theirs);
        let mut status = [0u8; 4];
        loop {
            match nix::unistd::read(&reply, &mut status) {
                Ok(4) => return Ok(i32::from_le_bytes(status)),
                Ok(_) => return Err(ForkServerError::NoStatus),
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(sys("reading the fork server's reply")(e)),
            }
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        // Closing our end is what stops the server; reap it so that it does
        // not linger as a zombie of a daemon that goes on running.
        let _ = nix::sys::socket::shutdown(self.sock.as_raw_fd(), nix::sys::socket::Shutdown::Both);
        let _ = self.child.wait();
    }
}

/// NUL-terminated arguments.
fn encode(args: &[OsString]) -> Vec<u8> {
    let mut out = Vec::new();
    for a in args {
        out.extend_from_slice(a.as_bytes());
        out.push(0);
    }
    out
}

fn decode(body: &[u8]) -> Option<Vec<OsString>> {
    let body = body.strip_suffix(&[0])?;
    Some(
        body.split(|b| *b == 0)
            .map(|a| OsString::from_vec(a.to_vec()))
            .collect(),
    )
}

/// A command that is running: its process, a descriptor that becomes
/// readable when it exits, and where its status goes.
struct Running {
    pid: Pid,
    pidfd: OwnedFd,
    reply: OwnedFd,
}

/// The server's loop, on `sock` (its stdin). `run` executes one command
/// line in a forked child and returns its exit code. Returns when the
/// daemon's end closes.
///
/// Must be called by a single-threaded process: it forks, and the children
/// run arbitrary code.
pub fn serve(sock: BorrowedFd<'_>, run: fn(Vec<OsString>) -> i32) -> i32 {
    let mut running: Vec<Running> = Vec::new();
    let mut buf = vec![0u8; MAX_REQUEST + 1];
    loop {
        let mut fds = vec![PollFd::new(sock, PollFlags::POLLIN)];
        fds.extend(
            running
                .iter()
                .map(|r| PollFd::new(r.pidfd.as_fd(), PollFlags::POLLIN)),
        );
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => {
                eprintln!("berth forkserver: poll: {e}");
                return 1;
            }
        }
        let ready: Vec<bool> = fds
            .iter()
            .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        drop(fds);
        for i in finished(&ready[1..]) {
            let r = running.swap_remove(i);
            let code = wait_code(r.pid);
            let _ = nix::unistd::write(&r.reply, &code.to_le_bytes());
        }
        if !ready[0] {
            continue;
        }
        match receive(sock, &mut buf) {
            Ok(None) => return 0,
            Ok(Some((args, reply, stderr))) => match start(args, sock, &stderr, run) {
                Ok((pid, pidfd)) => running.push(Running { pid, pidfd, reply }),
                Err(e) => {
                    // Said on the command's stderr, where the daemon looks.
                    let msg = format!("berth forkserver: {e}\n");
                    let _ = nix::unistd::write(&stderr, msg.as_bytes());
                    let _ = nix::unistd::write(&reply, &127i32.to_le_bytes());
                }
            },
            Err(e) => eprintln!("berth forkserver: {e}"),
        }
    }
}

/// The indices whose pidfd is ready, highest first: removed in this order
/// with `swap_remove`, each removal moves only an entry already looked at,
/// so no running command is mistaken for a finished one (and waited for).
fn finished(ready: &[bool]) -> Vec<usize> {
    (0..ready.len()).rev().filter(|&i| ready[i]).collect()
}

type Request = (Vec<OsString>, OwnedFd, OwnedFd);

/// One request; `None` when the daemon's end is closed.
fn receive(sock: BorrowedFd<'_>, buf: &mut [u8]) -> Result<Option<Request>, String> {
    let mut space = nix::cmsg_space!([RawFd; 2]);
    let mut iov = [std::io::IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(|e| format!("receiving a request: {e}"))?;
    let mut fds: Vec<OwnedFd> = Vec::new();
    for c in msg.cmsgs().map_err(|e| format!("reading a request: {e}"))? {
        if let ControlMessageOwned::ScmRights(raw) = c {
            // SAFETY: the kernel just installed these descriptors for us;
            // nothing else owns them.
            fds.extend(
                raw.into_iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
            );
        }
    }
    let len = msg.bytes;
    let truncated = msg.flags.contains(MsgFlags::MSG_TRUNC);
    if len == 0 && fds.is_empty() {
        return Ok(None);
    }
    if truncated || len > MAX_REQUEST {
        return Err("a request longer than the limit was dropped".into());
    }
    let mut fds = fds.into_iter();
    let (Some(reply), Some(stderr), None) = (fds.next(), fds.next(), fds.next()) else {
        return Err("a request without its two descriptors was dropped".into());
    };
    let args = decode(&buf[..len]).ok_or("a request with malformed arguments was dropped")?;
    Ok(Some((args, reply, stderr)))
}

/// Forks the child that runs `args`.
fn start(
    args: Vec<OsString>,
    sock: BorrowedFd<'_>,
    stderr: &OwnedFd,
    run: fn(Vec<OsString>) -> i32,
) -> Result<(Pid, OwnedFd), String> {
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|e| format!("opening /dev/null: {e}"))?;
    // SAFETY: the server is single-threaded (see `serve`), so the child may
    // run any code.
    match unsafe { nix::unistd::fork() } {
        Err(e) => Err(format!("fork: {e}")),
        Ok(ForkResult::Child) => {
            // The daemon's end must close when the daemon goes, not when
            // this command's descendants do.
            let _ = nix::unistd::close(sock.as_raw_fd());
            for (from, to) in [
                (null.as_raw_fd(), 0),
                (null.as_raw_fd(), 1),
                (stderr.as_raw_fd(), 2),
            ] {
                // SAFETY: dup2 onto our own standard descriptors.
                if unsafe { libc::dup2(from, to) } < 0 {
                    // SAFETY: ends the child without unwinding into the server.
                    unsafe { libc::_exit(127) };
                }
            }
            // As an exec would: no descriptor of the server's (other
            // requests' replies, their pidfds) reaches the command.
            // SAFETY: close_range takes integers; the descriptors from 3 up
            // are the server's own.
            unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
            retitle(&args);
            // A panic must end this child, never unwind into the server's loop.
            let code = std::panic::catch_unwind(|| run(args)).unwrap_or(101);
            // SAFETY: as above; `run` flushed what it wrote.
            unsafe { libc::_exit(code) }
        }
        Ok(ForkResult::Parent { child }) => {
            // SAFETY: pidfd_open takes a pid and flags; the child is ours and
            // not yet reaped, so the pid cannot have been reused.
            let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, child.as_raw(), 0) };
            if fd < 0 {
                let e = Errno::last();
                // Without a pidfd we could not tell when it exits: wait now.
                let _ = waitpid(child, None);
                return Err(format!("pidfd_open: {e}"));
            }
            // SAFETY: a descriptor the kernel just returned to us.
            Ok((child, unsafe { OwnedFd::from_raw_fd(fd as RawFd) }))
        }
    }
}

/// Makes this child's command line (what `ps` and /proc/PID/cmdline show)
/// the one it runs, `berth oci ... create ... ID`, as if it had been
/// exec'd: a container's monitor, which this child becomes, stays
/// recognizable. The text is written over the server's own arguments, for
/// which [`Client::spawn`] reserved room; a longer one is cut.
fn retitle(args: &[OsString]) {
    let Some((start, end)) = arg_area() else {
        return;
    };
    let len = end - start;
    if len < 2 {
        return;
    }
    let mut title = b"berth".to_vec();
    for a in args {
        title.push(0);
        title.extend_from_slice(a.as_bytes());
    }
    title.truncate(len - 1);
    title.resize(len, 0);
    // SAFETY: [start, end) is this process's argument area as the kernel
    // recorded it at exec: writable memory of ours that only argv's strings
    // occupy, which nothing in this child reads any more (its command line
    // came over the socket). The write stays inside it.
    unsafe { std::ptr::copy_nonoverlapping(title.as_ptr(), start as *mut u8, len) };
}

/// Where exec put this process's arguments: fields 48 and 49 of
/// /proc/self/stat.
fn arg_area() -> Option<(usize, usize)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The fields after the command name, which is in parentheses and may
    // hold spaces; the first of them is field 3.
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let start = fields.get(48 - 3)?.parse::<usize>().ok()?;
    let end = fields.get(49 - 3)?.parse::<usize>().ok()?;
    (start != 0 && end > start).then_some((start, end))
}

fn wait_code(pid: Pid) -> i32 {
    loop {
        match waitpid(pid, None) {
            Ok(WaitStatus::Exited(_, code)) => return code,
            Ok(WaitStatus::Signaled(_, sig, _)) => return 128 + sig as i32,
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(_) => return 127,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_finished_commands_are_taken_out() {
        for ready in [
            vec![true, true, false],
            vec![true, false, true, true, false],
            vec![false, false],
            vec![true; 4],
        ] {
            let mut running: Vec<usize> = (0..ready.len()).collect();
            let mut taken: Vec<usize> = finished(&ready)
                .into_iter()
                .map(|i| running.swap_remove(i))
                .collect();
            taken.sort();
            let want: Vec<usize> = (0..ready.len()).filter(|&i| ready[i]).collect();
            assert_eq!(taken, want, "ready {ready:?}");
        }
    }

    #[test]
    fn arguments_survive_the_encoding() {
        let args: Vec<OsString> = ["oci", "--root", "/a b", "", "create", "id"]
            .iter()
            .map(OsString::from)
            .collect();
        assert_eq!(decode(&encode(&args)), Some(args));
        assert_eq!(decode(b"no-terminator"), None);
        assert_eq!(decode(b"\0"), Some(vec![OsString::new()]));
    }
}
