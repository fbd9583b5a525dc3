//! What the streaming server asks of the runtime: the `Backend` trait and
//! the streams it hands over.

use std::pin::Pin;

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream};
use tokio::sync::mpsc;

/// A terminal size as the client sends it (JSON `{"Width":..,"Height":..}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub struct TerminalSize {
    #[serde(rename = "Width")]
    pub width: u16,
    #[serde(rename = "Height")]
    pub height: u16,
}

/// Bytes from the client (the process's stdin).
pub type Input = Pin<Box<dyn AsyncRead + Send>>;
/// Bytes to the client (the process's stdout or stderr).
pub type Output = Pin<Box<dyn AsyncWrite + Send>>;

/// The client's end of an exec or attach session.
///
/// Only the streams the CRI request asked for are present. `stdin` reaches
/// end of file when the client closes it (SPDY FIN, WebSocket v5 close
/// signal) or goes away. Writes to `stdout`/`stderr` wait while the client is
/// slow; they fail once it has gone.
///
/// The server forwards what was written to the outputs until they are
/// dropped or shut down, and only then reports the result to the client, so
/// a backend must drop (or `shutdown`) them before returning — which it does
/// naturally by moving `StreamIo` into the call and not leaking the halves
/// into tasks that outlive it.
pub struct StreamIo {
    /// The session has a terminal: stdout carries the pty's output, there is
    /// no stderr, and `resize` delivers size changes.
    pub tty: bool,
    pub stdin: Option<Input>,
    pub stdout: Option<Output>,
    pub stderr: Option<Output>,
    /// Terminal size changes, in order; closed when the client stops
    /// sending them. Only the newest size matters, so when the backend lags
    /// more than a few events behind, intermediate ones are dropped.
    pub resize: mpsc::Receiver<TerminalSize>,
}

/// How an exec'd process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitCode(pub i32);

/// The connection to a forwarded port: read what the client sends, write
/// what the pod answers; shut down the write side to half-close. End of file
/// on read means the client closed its side.
pub type PortStream = DuplexStream;

/// Errors a backend reports; the server turns them into the status the
/// client sees.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("container {0} not found")]
    ContainerNotFound(String),
    #[error("container {0} is not running")]
    ContainerNotRunning(String),
    #[error("pod sandbox {0} not found")]
    SandboxNotFound(String),
    /// An I/O failure; for port forwarding, `BrokenPipe` and
    /// `ConnectionReset` mean the pod's side dropped the connection, which
    /// resets this forwarded connection but keeps the session.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Other(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// The runtime's side of exec, attach and port forwarding, implemented by
/// the CRI daemon.
///
/// The server calls these once the client has connected and its streams are
/// set up; the call lasts as long as the session. Typical implementations:
///
/// - `exec`: start the command in the container (berth's `container::exec`
///   with pipes, or a pty when `io.tty`), copy `stdin` into it and its output
///   into `stdout`/`stderr` (e.g. `tokio::io::copy`), apply `resize` events
///   to the pty (TIOCSWINSZ), wait for it and return its exit code. Return
///   `ExitCode(128 + signal)` for a process killed by a signal, as shells
///   do; clients expect 0..=255.
/// - `attach`: connect the same streams to the container monitor's attach
///   socket (or the console) of a running container; return when the client
///   detaches (stdin end of file, for a non-tty session) or the container
///   exits.
/// - `port_forward`: connect to `port` inside the pod's network namespace
///   (e.g. a TCP connect from a thread that joined the netns) and copy both
///   ways between that socket and `stream` until both sides are done.
///
/// Errors reach the client: for exec/attach as a failure status on the
/// error stream, for port forwarding as a message on the connection's error
/// stream.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// Runs `cmd` in the container and returns its exit code.
    async fn exec(
        &self,
        container_id: &str,
        cmd: &[String],
        io: StreamIo,
    ) -> Result<ExitCode, BackendError>;

    /// Attaches to the container's main process.
    async fn attach(&self, container_id: &str, io: StreamIo) -> Result<(), BackendError>;

    /// Forwards one client connection to `port` in the pod sandbox.
    async fn port_forward(
        &self,
        pod_sandbox_id: &str,
        port: u16,
        stream: PortStream,
    ) -> Result<(), BackendError>;
}
