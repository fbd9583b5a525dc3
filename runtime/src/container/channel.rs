//! Messages between the process that creates a container and the container's
//! own stages, over a SOCK_SEQPACKET pair (one datagram per message).

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use nix::sys::socket::{AddressFamily, MsgFlags, SockFlag, SockType, recv, send, socketpair};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum Msg {
    /// Parent to stage 1: you are in the cgroup, go on.
    Go,
    /// Stage 1 made a new user namespace and waits for its id maps.
    UserNsReady,
    MapsWritten,
    /// Stage 1 forked the init; its pid as the parent sees it.
    InitPid(i32),
    /// The init's namespaces and mounts exist: run prestart and createRuntime hooks.
    RunHooks,
    HooksDone,
    /// Something the user should know that does not fail the container.
    Warn(String),
    /// The init waits at the start barrier.
    Ready,
    Error(String),
}

pub struct Channel {
    fd: OwnedFd,
}

impl Channel {
    pub fn pair() -> io::Result<(Channel, Channel)> {
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )?;
        Ok((Channel { fd: a }, Channel { fd: b }))
    }

    pub fn send(&self, msg: &Msg) -> io::Result<()> {
        let bytes = serde_json::to_vec(msg).map_err(io::Error::other)?;
        let raw = std::os::fd::AsRawFd::as_raw_fd(&self.fd.as_fd());
        loop {
            match send(raw, &bytes, MsgFlags::MSG_NOSIGNAL) {
                Ok(_) => return Ok(()),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The next message; EOF (the peer died) is `UnexpectedEof`.
    pub fn recv(&self) -> io::Result<Msg> {
        let mut buf = vec![0u8; 64 * 1024];
        let raw = std::os::fd::AsRawFd::as_raw_fd(&self.fd.as_fd());
        let n = loop {
            match recv(raw, &mut buf, MsgFlags::empty()) {
                Ok(n) => break n,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        };
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "container process exited during setup",
            ));
        }
        serde_json::from_slice(&buf[..n]).map_err(io::Error::other)
    }
}

impl Channel {
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&self.fd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_eof() {
        let (a, b) = Channel::pair().unwrap();
        a.send(&Msg::InitPid(7)).unwrap();
        a.send(&Msg::Warn("w".into())).unwrap();
        assert_eq!(b.recv().unwrap(), Msg::InitPid(7));
        assert_eq!(b.recv().unwrap(), Msg::Warn("w".into()));
        drop(a);
        assert_eq!(b.recv().unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
    }
}
