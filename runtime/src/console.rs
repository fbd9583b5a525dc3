//! Terminals: a pty made inside the container, its master handed to whoever
//! listens on the console socket (runc's protocol), its slave the process's stdio
//! and /dev/console.

use std::io::IoSlice;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ConsoleError {
    #[error("{op}: {source}")]
    Pty { op: &'static str, source: Errno },
    #[error("sending the pty master to the console socket: {0}")]
    Send(Errno),
}

fn pty(op: &'static str) -> impl FnOnce(Errno) -> ConsoleError {
    move |source| ConsoleError::Pty { op, source }
}

pub struct Pty {
    pub master: OwnedFd,
    pub slave: OwnedFd,
    pub slave_path: PathBuf,
}

/// Opens a new pty from the devpts instance at /dev/pts of the current root.
pub fn open_pty(rows: u16, cols: u16) -> Result<Pty, ConsoleError> {
    let master = nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .map_err(pty("opening /dev/ptmx"))?;
    nix::pty::grantpt(&master).map_err(pty("grantpt"))?;
    nix::pty::unlockpt(&master).map_err(pty("unlockpt"))?;
    let name = nix::pty::ptsname_r(&master).map_err(pty("ptsname"))?;
    let slave = nix::fcntl::open(
        name.as_str(),
        OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(pty("opening the pty slave"))?;
    if rows > 0 || cols > 0 {
        let ws = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads a winsize struct that lives across the call.
        let r = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
        Errno::result(r).map_err(pty("setting the window size"))?;
    }
    let master = OwnedFd::from(master);
    Ok(Pty {
        master,
        slave,
        slave_path: PathBuf::from(name),
    })
}

/// Sends the master fd with its name as the message body, as runc does.
pub fn send_master(socket: &OwnedFd, master: &OwnedFd, name: &str) -> Result<(), ConsoleError> {
    let fds = [master.as_raw_fd()];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    let iov = [IoSlice::new(name.as_bytes())];
    sendmsg::<()>(socket.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None)
        .map(drop)
        .map_err(ConsoleError::Send)
}

/// Makes the slave the controlling terminal and stdio of the calling process.
pub fn attach_stdio(slave: &OwnedFd) -> Result<(), ConsoleError> {
    for fd in 0..3 {
        // SAFETY: dup2 on descriptors we own; the old 0-2 are replaced on purpose.
        let r = unsafe { libc::dup2(slave.as_raw_fd(), fd) };
        Errno::result(r).map_err(pty("dup2 of the pty slave"))?;
    }
    // SAFETY: TIOCSCTTY takes an integer argument.
    let r = unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) };
    Errno::result(r).map(drop).map_err(pty("TIOCSCTTY"))
}
