//! Terminals: a pty made inside the container, its master handed to whoever
//! listens on the console socket (runc's protocol), its slave the process's stdio
//! and /dev/console.
//!
//! The receiving side is here too: the CRI daemon takes an exec's master this
//! way, and a container's monitor takes the init's when it holds the terminal
//! itself (a CRI container with `tty`).

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ConsoleError {
    #[error("{op}: {source}")]
    Pty { op: &'static str, source: Errno },
    #[error("sending the pty master to the console socket: {0}")]
    Send(Errno),
    #[error("receiving the pty master from the console socket: {0}")]
    Receive(Errno),
    #[error("the console socket closed without carrying a pty master")]
    NoMaster,
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
    let master = OwnedFd::from(master);
    if rows > 0 || cols > 0 {
        set_window_size(&master, rows, cols)?;
    }
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

/// Receives the pty master that [`send_master`] sent on `socket` (blocking,
/// within the socket's read timeout). The descriptor arrives close-on-exec.
pub fn receive_master(socket: impl AsFd) -> Result<OwnedFd, ConsoleError> {
    // The message body is the pty's name, which nobody here needs; a buffer
    // too small for it only truncates the name, never the descriptor.
    let mut buf = [0u8; 256];
    let mut iov = [IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([RawFd; 4]);
    let msg = recvmsg::<()>(
        socket.as_fd().as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(ConsoleError::Receive)?;
    let mut master = None;
    for c in msg.cmsgs().map_err(ConsoleError::Receive)? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            for fd in fds {
                // SAFETY: the kernel just installed this descriptor in our
                // table for this message; nothing else owns it. Extra ones
                // (a misbehaving sender) are owned too, so they get closed.
                let owned = unsafe { OwnedFd::from_raw_fd(fd) };
                if master.is_none() {
                    master = Some(owned);
                }
            }
        }
    }
    master.ok_or(ConsoleError::NoMaster)
}

/// Sets the terminal size of the pty whose master is `master`; the kernel
/// signals SIGWINCH to the terminal's foreground process group.
pub fn set_window_size(master: impl AsFd, rows: u16, cols: u16) -> Result<(), ConsoleError> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize struct that lives across the call.
    let r = unsafe { libc::ioctl(master.as_fd().as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    Errno::result(r)
        .map(drop)
        .map_err(pty("setting the window size"))
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

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};

    fn window_size(fd: &OwnedFd) -> (u16, u16) {
        let mut ws = libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ writes a winsize struct that lives across the call.
        let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
        Errno::result(r).unwrap();
        (ws.ws_row, ws.ws_col)
    }

    #[test]
    fn the_master_crosses_the_socket_and_resizes_the_terminal() {
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::Stream,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        let p = open_pty(24, 80).unwrap();
        assert_eq!(window_size(&p.slave), (24, 80));
        send_master(&a, &p.master, "/dev/ptmx").unwrap();
        let got = receive_master(&b).unwrap();
        // The received descriptor is the same terminal: a size set through
        // it is what the slave sees.
        set_window_size(&got, 33, 77).unwrap();
        assert_eq!(window_size(&p.slave), (33, 77));
        nix::unistd::write(&p.slave, b"x").unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(nix::unistd::read(&got, &mut buf).unwrap(), 1);
        assert_eq!(buf[0], b'x');
    }

    #[test]
    fn a_socket_closed_without_a_master_is_an_error() {
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::Stream,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        drop(a);
        assert!(matches!(receive_master(&b), Err(ConsoleError::NoMaster)));
    }
}
