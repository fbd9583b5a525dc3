//! The container monitor's attach socket: how a CRI Attach reaches a
//! running container's stdio after the fact.
//!
//! The monitor listens on `<state dir>/attach` (a unix stream socket) for
//! containers whose output it copies to a CRI log. Every connected client
//! gets what the container writes, as frames `[stream: u8][length: u32 big
//! endian][bytes]` (stream 1 stdout, 2 stderr), from the moment it connects
//! until the container exits, when the monitor closes the connection. What a
//! client sends is raw input for the container's stdin, when the container
//! was created with one (`--cri-stdin`); a client that shuts down its
//! writing side has detached its input, and with `stdin_once` that closes
//! the container's stdin, as Docker and the CRI define it.
//!
//! Paths under a state dir can be longer than a socket address allows (108
//! bytes), so both sides name the socket through `/proc/self/fd/<dir>/`.

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::crilog::Stream;

/// The socket's name in a container's state dir.
pub const SOCKET: &str = "attach";

/// A client slower than this at taking output is dropped rather than
/// allowed to stall the container.
const WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// A short address for `name` in `dir` (valid while `dir_fd` is open).
fn short_path(dir_fd: &OwnedFd, name: &str) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}/{name}", dir_fd.as_raw_fd()))
}

fn open_dir(dir: &Path) -> std::io::Result<OwnedFd> {
    Ok(std::fs::File::open(dir)?.into())
}

/// Connects to the attach socket of the container whose state dir is `dir`.
pub fn connect(dir: &Path) -> std::io::Result<UnixStream> {
    let fd = open_dir(dir)?;
    UnixStream::connect(short_path(&fd, SOCKET))
}

/// The monitor's side.
pub struct AttachServer {
    listener: UnixListener,
    clients: Vec<Client>,
    stdin: Option<OwnedFd>,
    stdin_once: bool,
}

struct Client {
    sock: UnixStream,
    /// Still sending input.
    reading: bool,
}

impl AttachServer {
    pub fn bind(dir: &Path, stdin: Option<OwnedFd>, stdin_once: bool) -> std::io::Result<Self> {
        let fd = open_dir(dir)?;
        let listener = UnixListener::bind(short_path(&fd, SOCKET))?;
        listener.set_nonblocking(true)?;
        Ok(Self {
            listener,
            clients: Vec::new(),
            stdin,
            stdin_once,
        })
    }

    /// What to poll for input: the listener, then each client still sending.
    pub fn poll_fds(&self) -> Vec<BorrowedFd<'_>> {
        let mut out = vec![self.listener.as_fd()];
        out.extend(
            self.clients
                .iter()
                .filter(|c| c.reading)
                .map(|c| c.sock.as_fd()),
        );
        out
    }

    /// Handles readiness, `ready` in the order of [`poll_fds`](Self::poll_fds).
    pub fn on_ready(&mut self, ready: &[bool]) {
        if ready.first().copied().unwrap_or(false) {
            while let Ok((sock, _)) = self.listener.accept() {
                if sock.set_nonblocking(false).is_ok()
                    && sock.set_write_timeout(Some(WRITE_TIMEOUT)).is_ok()
                {
                    self.clients.push(Client {
                        sock,
                        reading: true,
                    });
                }
            }
        }
        let mut buf = [0u8; 16 * 1024];
        let mut detached = false;
        for (i, c) in (1..).zip(self.clients.iter_mut().filter(|c| c.reading)) {
            if !ready.get(i).copied().unwrap_or(false) {
                continue;
            }
            match c.sock.read(&mut buf) {
                Ok(0) | Err(_) => {
                    c.reading = false;
                    detached = true;
                }
                Ok(n) => {
                    if let Some(stdin) = &self.stdin {
                        let mut f = std::fs::File::from(match stdin.try_clone() {
                            Ok(f) => f,
                            Err(_) => continue,
                        });
                        if f.write_all(&buf[..n]).is_err() {
                            // The container closed its stdin.
                            self.stdin = None;
                        }
                    }
                }
            }
        }
        if detached && self.stdin_once {
            self.stdin = None;
        }
    }

    /// Sends container output to every client; drops those that fail.
    pub fn broadcast(&mut self, stream: Stream, data: &[u8]) {
        if self.clients.is_empty() {
            return;
        }
        let tag = match stream {
            Stream::Stdout => 1u8,
            Stream::Stderr => 2u8,
        };
        let mut frame = Vec::with_capacity(5 + data.len());
        frame.push(tag);
        frame.extend_from_slice(&(data.len() as u32).to_be_bytes());
        frame.extend_from_slice(data);
        self.clients
            .retain_mut(|c| c.sock.write_all(&frame).is_ok());
    }
}

/// Reads one output frame: `None` at the end of the connection.
pub fn read_frame(r: &mut impl Read) -> std::io::Result<Option<(Stream, Vec<u8>)>> {
    let mut head = [0u8; 5];
    match r.read_exact(&mut head) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let stream = match head[0] {
        1 => Stream::Stdout,
        2 => Stream::Stderr,
        other => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("attach frame for unknown stream {other}"),
            ));
        }
    };
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    let mut data = vec![0u8; len];
    r.read_exact(&mut data)?;
    Ok(Some((stream, data)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_reaches_clients_and_input_reaches_stdin() {
        let dir = tempfile::tempdir().unwrap();
        let (stdin_r, stdin_w) = nix::unistd::pipe().unwrap();
        let mut server = AttachServer::bind(dir.path(), Some(stdin_w), true).unwrap();
        let mut client = connect(dir.path()).unwrap();
        server.on_ready(&[true]);
        server.broadcast(Stream::Stdout, b"hello\n");
        server.broadcast(Stream::Stderr, b"oops");
        let (s, d) = read_frame(&mut client).unwrap().unwrap();
        assert_eq!((s, d.as_slice()), (Stream::Stdout, b"hello\n".as_slice()));
        let (s, d) = read_frame(&mut client).unwrap().unwrap();
        assert_eq!((s, d.as_slice()), (Stream::Stderr, b"oops".as_slice()));

        client.write_all(b"input").unwrap();
        client.shutdown(std::net::Shutdown::Write).unwrap();
        server.on_ready(&[false, true]);
        server.on_ready(&[false, true]);
        // stdin_once: the client's end of input closed the container's stdin.
        let mut got = Vec::new();
        std::fs::File::from(stdin_r).read_to_end(&mut got).unwrap();
        assert_eq!(got, b"input");
        drop(server);
        assert!(read_frame(&mut client).unwrap().is_none());
    }

    #[test]
    fn a_bad_frame_is_an_error() {
        let mut bytes: &[u8] = &[9, 0, 0, 0, 1, b'x'];
        assert!(read_frame(&mut bytes).is_err());
        let mut short: &[u8] = &[1, 0, 0];
        assert!(read_frame(&mut short).unwrap().is_none());
    }
}
