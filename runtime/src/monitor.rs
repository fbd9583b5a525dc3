//! berth's per-container monitor: the init's parent once `create` returns.
//!
//! A single-threaded loop over a signalfd and the container's output (its
//! stdout and stderr pipes, or the master of its terminal). It
//! reaps the init (and any orphan it adopts as a child subreaper), copies output
//! into the CRI log, and on the init's exit writes `exit.json` (code, signal,
//! OOM, start and finish times) into the state dir, then exits. It keeps no
//! state that is not also on disk, so nothing is lost if the CLI that created it,
//! or a CRI daemon, is killed.

use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signalfd::SignalFd;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use crate::cgroups::Cgroup;
use crate::crilog::{CriLogWriter, Stream};
use crate::state::{self, ExitRecord};

pub struct Monitor<'a> {
    pub init_pid: i32,
    pub state_dir: PathBuf,
    pub signals: SignalFd,
    /// What the container writes: the read ends of its stdout and stderr
    /// pipes, or the master of its terminal as stdout.
    pub output: Vec<(OwnedFd, Stream)>,
    pub log: Option<CriLogWriter>,
    pub cgroup: &'a dyn Cgroup,
    /// Attach clients (CRI Attach) and the container's stdin.
    pub attach: Option<crate::attach::AttachServer>,
}

/// How long output may keep arriving after the init exits (from processes that
/// outlive it when the container shares a pid namespace).
/// How long after the init's exit the monitor keeps reading output that a
/// leftover process may still be writing.
pub(crate) const DRAIN: Duration = Duration::from_secs(2);

pub fn run(mut m: Monitor) {
    // The output pipes we hold open would keep the container's last writer from
    // seeing EPIPE; that is intended: we read until they close.
    let mut streams = std::mem::take(&mut m.output);
    let mut exited: Option<(WaitStatus, SystemTime)> = None;
    let mut deadline: Option<Instant> = None;
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        if exited.is_some() && (streams.is_empty() || deadline.is_some_and(|d| Instant::now() >= d))
        {
            break;
        }
        let mut fds = vec![PollFd::new(m.signals.as_fd(), PollFlags::POLLIN)];
        for (fd, _) in &streams {
            fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
        }
        let attach_fds: Vec<_> = m.attach.as_ref().map(|a| a.poll_fds()).unwrap_or_default();
        for (fd, flags) in &attach_fds {
            fds.push(PollFd::new(*fd, *flags));
        }
        let timeout = if exited.is_some() {
            PollTimeout::from(100u16)
        } else {
            PollTimeout::NONE
        };
        match poll(&mut fds, timeout) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(_) => break,
        }
        let ready: Vec<bool> = fds
            .iter()
            .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        drop(fds);
        drop(attach_fds);
        if let Some(a) = m.attach.as_mut() {
            a.on_ready(&ready[1 + streams.len()..]);
        }
        let mut closed = Vec::new();
        for (i, (fd, stream)) in streams.iter().enumerate() {
            if !ready[i + 1] {
                continue;
            }
            match read_output(fd, &mut buf) {
                Output::End => closed.push(i),
                Output::Data(n) => {
                    if let Some(a) = m.attach.as_mut() {
                        a.broadcast(*stream, &buf[..n]);
                    }
                    if let Some(log) = m.log.as_mut()
                        && let Err(e) = log.write(*stream, &buf[..n])
                    {
                        tracing::warn!(error = %e, "writing the CRI log");
                    }
                }
                Output::Later => {}
            }
        }
        for i in closed.into_iter().rev() {
            let (_, stream) = streams.remove(i);
            if let Some(log) = m.log.as_mut() {
                let _ = log.finish(stream);
            }
        }
        if ready[0] {
            while let Ok(Some(info)) = m.signals.read_signal() {
                if info.ssi_signo as i32 == libc::SIGUSR1
                    && let Some(log) = m.log.as_mut()
                {
                    // ReopenContainerLog: the kubelet rotated the file.
                    let _ = log.reopen();
                }
            }
        }
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(st) => {
                    if st.pid() == Some(Pid::from_raw(m.init_pid)) && exited.is_none() {
                        exited = Some((st, SystemTime::now()));
                        deadline = Some(Instant::now() + DRAIN);
                    }
                }
            }
        }
    }
    if let Some(log) = m.log.as_mut() {
        let _ = log.finish(Stream::Stdout);
        let _ = log.finish(Stream::Stderr);
    }
    let Some((status, finished)) = exited else {
        return;
    };
    let (exit_code, signal) = crate::container::init_exit_code(status);
    let started_at =
        std::fs::read_to_string(m.state_dir.join(state::STARTED_FILE)).unwrap_or_default();
    let record = ExitRecord {
        exit_code,
        signal,
        oom_killed: m.cgroup.oom_kills().unwrap_or(0) > 0,
        started_at,
        finished_at: crate::crilog::format_timestamp(finished),
    };
    if m.state_dir.is_dir()
        && let Err(e) = state::write_json(&m.state_dir.join(state::EXIT_FILE), &record)
    {
        tracing::warn!(error = %e, "recording the container's exit");
    }
}

/// What one read of an output stream gave.
#[derive(Debug, PartialEq, Eq)]
enum Output {
    Data(usize),
    /// Nothing yet (a spurious wakeup, or a non-blocking terminal).
    Later,
    End,
}

fn read_output(fd: &OwnedFd, buf: &mut [u8]) -> Output {
    match nix::unistd::read(fd, buf) {
        Ok(0) => Output::End,
        Ok(n) => Output::Data(n),
        Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => Output::Later,
        // A terminal's master reads EIO, not end of file, once every
        // descriptor of its slave is closed: the container and whatever
        // shared its terminal have exited. Any other error ends the stream
        // too; polling it again would only spin.
        Err(_) => Output::End,
    }
}

/// Drops the monitor's mappings of clean, file-backed code and data that setup
/// faulted in (the create path touches much of the binary; the loop needs
/// little of it), so each container's monitor stays small. Only mappings with
/// no anonymous pages are dropped: their pages refault from the page cache
/// unchanged. Writable and relocated (RELRO) mappings hold anonymous pages and
/// are left alone.
pub fn shed_clean_mappings() {
    let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else {
        return;
    };
    let mut current: Option<(usize, usize, bool)> = None;
    let mut candidates = Vec::new();
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let Some(first) = fields.next() else { continue };
        if let Some((start, end)) = first.split_once('-')
            && let (Ok(start), Ok(end)) = (
                usize::from_str_radix(start, 16),
                usize::from_str_radix(end, 16),
            )
        {
            let perms = fields.next().unwrap_or("");
            let _offset = fields.next();
            let _dev = fields.next();
            let inode = fields.next().unwrap_or("0");
            let file_backed = inode != "0";
            let eligible = file_backed && !perms.contains('w') && perms.ends_with('p');
            current = Some((start, end, eligible));
            continue;
        }
        if first == "Anonymous:"
            && let Some((start, end, true)) = current.take()
            && fields.next() == Some("0")
        {
            candidates.push((start, end));
        }
    }
    for (start, end) in candidates {
        // SAFETY: the range is a whole mapping of this process that holds only
        // clean page-cache pages; MADV_DONTNEED unmaps them and later accesses
        // fault the same file contents back in.
        unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_terminal_ends_when_its_slave_closes() {
        let pty = crate::console::open_pty(0, 0).unwrap();
        nix::unistd::write(&pty.slave, b"bye\n").unwrap();
        drop(pty.slave);
        let mut buf = [0u8; 64];
        // What was written before the close still comes, then the end
        // (EIO on the master).
        let mut got = Vec::new();
        loop {
            match read_output(&pty.master, &mut buf) {
                Output::Data(n) => got.extend_from_slice(&buf[..n]),
                Output::Later => continue,
                Output::End => break,
            }
        }
        // The terminal turns the newline into CR LF (ONLCR).
        assert_eq!(got, b"bye\r\n");
        assert_eq!(
            nix::unistd::read(&pty.master, &mut buf),
            Err(nix::errno::Errno::EIO)
        );
    }

    #[test]
    fn a_pipe_ends_at_end_of_file() {
        let (r, w) = nix::unistd::pipe().unwrap();
        nix::unistd::write(&w, b"x").unwrap();
        drop(w);
        let mut buf = [0u8; 8];
        assert_eq!(read_output(&r, &mut buf), Output::Data(1));
        assert_eq!(read_output(&r, &mut buf), Output::End);
    }
}
