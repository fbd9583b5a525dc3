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
//! ## Containers with a terminal
//!
//! When the container has a terminal (`process.terminal` with a CRI log),
//! the monitor holds the pty master, and the terminal is the container's
//! only output: all of it comes as stream 1 (stdout), as containerd logs and
//! attaches a tty. Client input is typed into the terminal (with
//! `--cri-stdin`; without it, input is dropped and the terminal is output
//! only). A terminal has no end of file that the monitor could close, so
//! with `stdin_once` the first client's detach types an EOT (Ctrl-D, 0x04)
//! and any later input is dropped: a program reading the terminal (canonical
//! mode, or a shell's line editor) takes that as end of input on an empty
//! line, as it would a user's Ctrl-D; a program in raw mode may ignore it,
//! as it would the user's.
//!
//! Resizing goes through a second socket, `<state dir>/winsize`, which
//! exists only for containers with a terminal; the attach socket's protocol
//! is unchanged, so monitors started by older daemons keep working. A
//! client sends any number of 4-byte messages `[rows: u16 big endian][cols:
//! u16 big endian]` and may stay connected; each is applied to the terminal
//! in order (TIOCSWINSZ on the master, which signals SIGWINCH to the
//! terminal's foreground process group). The monitor sends nothing back.
//!
//! Input reaches the container without blocking the monitor: while some
//! waits for the container to read it, no more is taken from clients. A
//! blocking write could otherwise deadlock with a container that is itself
//! blocked writing output (or a terminal echoing input) that the monitor
//! would no longer read.
//!
//! Paths under a state dir can be longer than a socket address allows (108
//! bytes), so both sides name the sockets through `/proc/self/fd/<dir>/`.

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::poll::PollFlags;

use crate::crilog::Stream;

/// The socket's name in a container's state dir.
pub const SOCKET: &str = "attach";

/// The resize socket's name in the state dir of a container with a terminal.
pub const WINSIZE_SOCKET: &str = "winsize";

/// Typed into a terminal when `stdin_once` ends the input.
const EOT: u8 = 0x04;

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

/// Connects to the resize socket of the container (with a terminal) whose
/// state dir is `dir`.
pub fn connect_winsize(dir: &Path) -> std::io::Result<UnixStream> {
    let fd = open_dir(dir)?;
    UnixStream::connect(short_path(&fd, WINSIZE_SOCKET))
}

/// A terminal size, in characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Winsize {
    pub rows: u16,
    pub cols: u16,
}

impl Winsize {
    /// The message that asks for this size on the resize socket.
    pub fn to_message(self) -> [u8; 4] {
        let [r0, r1] = self.rows.to_be_bytes();
        let [c0, c1] = self.cols.to_be_bytes();
        [r0, r1, c0, c1]
    }
}

/// Takes every complete message from the front of `buf`, leaving a partial
/// one for the bytes still to come.
pub fn take_winsizes(buf: &mut Vec<u8>) -> Vec<Winsize> {
    let whole = buf.len() - buf.len() % 4;
    let sizes = buf[..whole]
        .chunks_exact(4)
        .map(|m| Winsize {
            rows: u16::from_be_bytes([m[0], m[1]]),
            cols: u16::from_be_bytes([m[2], m[3]]),
        })
        .collect();
    buf.drain(..whole);
    sizes
}

fn set_nonblocking(fd: &OwnedFd) -> std::io::Result<()> {
    let flags = OFlag::from_bits_retain(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

/// The monitor's side.
pub struct AttachServer {
    listener: UnixListener,
    clients: Vec<Client>,
    input: Option<Input>,
    stdin_once: bool,
    terminal: Option<Resizer>,
}

struct Client {
    sock: UnixStream,
    /// Still sending input.
    reading: bool,
}

/// Input on its way into the container.
struct Input {
    /// Non-blocking: the stdin pipe's write end, or the pty master.
    fd: OwnedFd,
    pending: Vec<u8>,
    /// No more is taken; the descriptor is closed once `pending` is written.
    ending: bool,
}

/// The resize socket and the terminal it resizes.
struct Resizer {
    listener: UnixListener,
    /// Connected clients and the partial message each has sent.
    clients: Vec<(UnixStream, Vec<u8>)>,
    master: OwnedFd,
}

/// What [`AttachServer::poll_fds`] returned, counted before `on_ready`
/// changes anything.
struct Layout {
    clients: Vec<usize>,
    resize_clients: usize,
    input_waits: bool,
}

impl AttachServer {
    /// Binds the attach socket in `dir`. `stdin` is where client input goes
    /// (the stdin pipe's write end, or for a terminal a descriptor of its
    /// master); `terminal` is the pty master of a container with a
    /// terminal, which also binds the resize socket.
    pub fn bind(
        dir: &Path,
        stdin: Option<OwnedFd>,
        stdin_once: bool,
        terminal: Option<OwnedFd>,
    ) -> std::io::Result<Self> {
        let fd = open_dir(dir)?;
        let input = match stdin {
            Some(fd) => {
                set_nonblocking(&fd)?;
                Some(Input {
                    fd,
                    pending: Vec::new(),
                    ending: false,
                })
            }
            None => None,
        };
        let terminal = match terminal {
            Some(master) => {
                let listener = UnixListener::bind(short_path(&fd, WINSIZE_SOCKET))?;
                listener.set_nonblocking(true)?;
                Some(Resizer {
                    listener,
                    clients: Vec::new(),
                    master,
                })
            }
            None => None,
        };
        // Bound last: a client that finds this socket finds the other too.
        let listener = UnixListener::bind(short_path(&fd, SOCKET))?;
        listener.set_nonblocking(true)?;
        Ok(Self {
            listener,
            clients: Vec::new(),
            input,
            stdin_once,
            terminal,
        })
    }

    fn input_waits(&self) -> bool {
        self.input.as_ref().is_some_and(|i| !i.pending.is_empty())
    }

    fn layout(&self) -> Layout {
        let input_waits = self.input_waits();
        Layout {
            // While input waits for the container, no more is taken.
            clients: if input_waits {
                Vec::new()
            } else {
                (0..self.clients.len())
                    .filter(|&i| self.clients[i].reading)
                    .collect()
            },
            resize_clients: self.terminal.as_ref().map_or(0, |t| t.clients.len()),
            input_waits,
        }
    }

    /// What to poll: the listener, each client whose input is taken, the
    /// resize socket and its clients, and the input while some waits.
    pub fn poll_fds(&self) -> Vec<(BorrowedFd<'_>, PollFlags)> {
        let layout = self.layout();
        let mut out = vec![(self.listener.as_fd(), PollFlags::POLLIN)];
        out.extend(
            layout
                .clients
                .iter()
                .map(|&i| (self.clients[i].sock.as_fd(), PollFlags::POLLIN)),
        );
        if let Some(t) = &self.terminal {
            out.push((t.listener.as_fd(), PollFlags::POLLIN));
            out.extend(
                t.clients
                    .iter()
                    .map(|(s, _)| (s.as_fd(), PollFlags::POLLIN)),
            );
        }
        if let Some(i) = self.input.as_ref().filter(|_| layout.input_waits) {
            out.push((i.fd.as_fd(), PollFlags::POLLOUT));
        }
        out
    }

    /// Handles readiness, `ready` in the order of [`poll_fds`](Self::poll_fds).
    pub fn on_ready(&mut self, ready: &[bool]) {
        let layout = self.layout();
        let mut ready = ready.iter().copied().chain(std::iter::repeat(false));
        let mut next = move || ready.next().unwrap_or(false);
        let accept = next();
        let clients: Vec<usize> = layout.clients.iter().copied().filter(|_| next()).collect();
        let resize_accept = self.terminal.is_some() && next();
        let resize_clients: Vec<usize> = (0..layout.resize_clients).filter(|_| next()).collect();
        let writable = layout.input_waits && next();

        if accept {
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
        // Sizes first: a client that resizes and then types expects its
        // input to meet the new size.
        if let Some(t) = self.terminal.as_mut() {
            t.on_ready(resize_accept, &resize_clients);
        }
        if writable {
            self.flush_input();
        }
        let mut buf = [0u8; 16 * 1024];
        let mut detached = false;
        for i in clients {
            let c = &mut self.clients[i];
            match c.sock.read(&mut buf) {
                Ok(0) => {
                    c.reading = false;
                    detached = true;
                }
                Ok(n) => {
                    if let Some(input) = self.input.as_mut().filter(|i| !i.ending) {
                        input.pending.extend_from_slice(&buf[..n]);
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::Interrupted | std::io::ErrorKind::WouldBlock
                    ) => {}
                Err(_) => {
                    c.reading = false;
                    detached = true;
                }
            }
        }
        if detached && self.stdin_once {
            self.end_input();
        }
        self.flush_input();
    }

    /// `stdin_once`: closes the stdin pipe once what is pending is written;
    /// a terminal gets an EOT instead (see the module doc).
    fn end_input(&mut self) {
        let terminal = self.terminal.is_some();
        if let Some(input) = self.input.as_mut().filter(|i| !i.ending) {
            if terminal {
                input.pending.push(EOT);
            }
            input.ending = true;
        }
    }

    /// Writes what input it can without blocking.
    fn flush_input(&mut self) {
        let Some(input) = self.input.as_mut() else {
            return;
        };
        let gone = loop {
            if input.pending.is_empty() {
                break input.ending;
            }
            match nix::unistd::write(&input.fd, &input.pending) {
                Ok(0) | Err(Errno::EAGAIN) => break false,
                Ok(n) => {
                    input.pending.drain(..n);
                }
                Err(Errno::EINTR) => {}
                // The container closed its stdin, or its terminal is gone.
                Err(_) => break true,
            }
        };
        if gone {
            self.input = None;
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

impl Resizer {
    fn on_ready(&mut self, accept: bool, ready: &[usize]) {
        if accept {
            while let Ok((sock, _)) = self.listener.accept() {
                if sock.set_nonblocking(true).is_ok() {
                    self.clients.push((sock, Vec::new()));
                }
            }
        }
        let mut gone = Vec::new();
        let mut buf = [0u8; 256];
        for &i in ready {
            let (sock, partial) = &mut self.clients[i];
            match sock.read(&mut buf) {
                Ok(0) => gone.push(i),
                Ok(n) => {
                    partial.extend_from_slice(&buf[..n]);
                    for ws in take_winsizes(partial) {
                        if let Err(e) =
                            crate::console::set_window_size(&self.master, ws.rows, ws.cols)
                        {
                            tracing::debug!(error = %e, "resizing the container's terminal");
                        }
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::Interrupted | std::io::ErrorKind::WouldBlock
                    ) => {}
                Err(_) => gone.push(i),
            }
        }
        for i in gone.into_iter().rev() {
            self.clients.remove(i);
        }
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
        let mut server = AttachServer::bind(dir.path(), Some(stdin_w), true, None).unwrap();
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

    /// One turn of the monitor's loop for the server alone.
    fn step(server: &mut AttachServer) {
        use nix::poll::{PollFd, PollTimeout, poll};
        let fds = server.poll_fds();
        let mut polled: Vec<PollFd> = fds.iter().map(|(fd, f)| PollFd::new(*fd, *f)).collect();
        poll(&mut polled, PollTimeout::from(200u16)).unwrap();
        let ready: Vec<bool> = polled
            .iter()
            .map(|p| p.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        drop(polled);
        drop(fds);
        server.on_ready(&ready);
    }

    #[test]
    fn winsize_messages_are_taken_whole() {
        let mut buf = Winsize { rows: 33, cols: 77 }.to_message().to_vec();
        buf.extend_from_slice(&[0, 1, 0]);
        assert_eq!(
            take_winsizes(&mut buf),
            vec![Winsize { rows: 33, cols: 77 }]
        );
        assert_eq!(buf, [0, 1, 0]);
        buf.extend_from_slice(&[2, 0xff, 0xff, 0x01, 0x00]);
        assert_eq!(
            take_winsizes(&mut buf),
            vec![
                Winsize { rows: 1, cols: 2 },
                Winsize {
                    rows: 0xffff,
                    cols: 0x0100
                }
            ]
        );
        assert!(buf.is_empty());
        assert!(take_winsizes(&mut buf).is_empty());
    }

    #[test]
    fn a_terminal_takes_input_sizes_and_an_eot_for_stdin_once() {
        let dir = tempfile::tempdir().unwrap();
        let pty = crate::console::open_pty(0, 0).unwrap();
        let input = pty.master.try_clone().unwrap();
        let master = pty.master.try_clone().unwrap();
        let mut server = AttachServer::bind(dir.path(), Some(input), true, Some(master)).unwrap();
        let mut client = connect(dir.path()).unwrap();
        let mut sizer = connect_winsize(dir.path()).unwrap();
        step(&mut server);
        // Sent in two pieces: a partial message waits for the rest.
        let msg = Winsize { rows: 33, cols: 77 }.to_message();
        sizer.write_all(&msg[..3]).unwrap();
        step(&mut server);
        sizer.write_all(&msg[3..]).unwrap();
        client.write_all(b"hello\n").unwrap();
        for _ in 0..3 {
            step(&mut server);
        }
        let mut ws = libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ writes a winsize struct that lives across the call.
        let r = unsafe { libc::ioctl(pty.slave.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
        assert_eq!(r, 0);
        assert_eq!((ws.ws_row, ws.ws_col), (33, 77));
        let mut buf = [0u8; 64];
        // Canonical mode: one read, one line.
        let n = nix::unistd::read(&pty.slave, &mut buf).unwrap();
        assert_eq!(&buf[..n], b"hello\n");

        client.shutdown(std::net::Shutdown::Write).unwrap();
        step(&mut server);
        // The EOT at the start of a line reads as end of file.
        assert_eq!(nix::unistd::read(&pty.slave, &mut buf).unwrap(), 0);
        assert!(server.input.is_none());
        // A second client's input goes nowhere once input has ended.
        let mut late = connect(dir.path()).unwrap();
        step(&mut server);
        late.write_all(b"ignored\n").unwrap();
        step(&mut server);
        let slave = pty.slave.try_clone().unwrap();
        set_nonblocking(&slave).unwrap();
        assert_eq!(nix::unistd::read(&slave, &mut buf), Err(Errno::EAGAIN));
    }

    #[test]
    fn input_the_container_does_not_read_waits_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let (stdin_r, stdin_w) = nix::unistd::pipe().unwrap();
        let mut server = AttachServer::bind(dir.path(), Some(stdin_w), false, None).unwrap();
        let mut client = connect(dir.path()).unwrap();
        step(&mut server);
        // More than a pipe holds (64 KiB by default).
        let data: Vec<u8> = (0..256 * 1024).map(|i| (i % 251) as u8).collect();
        let sender = std::thread::spawn({
            let data = data.clone();
            move || {
                client.write_all(&data).unwrap();
                client.shutdown(std::net::Shutdown::Write).unwrap();
                client
            }
        });
        // Each turn returns although the pipe is full.
        let mut waited = false;
        for _ in 0..200 {
            step(&mut server);
            waited = server
                .poll_fds()
                .iter()
                .any(|(_, f)| f.contains(PollFlags::POLLOUT));
            if waited {
                break;
            }
        }
        assert!(waited, "the input never had to wait");
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            let mut f = std::fs::File::from(stdin_r);
            let mut buf = [0u8; 8192];
            while got.len() < 256 * 1024 {
                let n = f.read(&mut buf).unwrap();
                assert_ne!(n, 0);
                got.extend_from_slice(&buf[..n]);
            }
            got
        });
        while !reader.is_finished() {
            step(&mut server);
        }
        assert_eq!(reader.join().unwrap(), data);
        let _client = sender.join().unwrap();
    }
}
