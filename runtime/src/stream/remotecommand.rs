//! Exec and attach sessions: collecting the client's streams (SPDY or
//! WebSocket), running the backend with them, and reporting the result.
//!
//! Over SPDY the client opens one stream per channel, named by its
//! `streamtype` header: `error` always, `stdin`/`stdout`/`stderr` as asked,
//! `resize` with a tty from v3 on. The session starts once all expected
//! streams are there (or fails after the creation timeout). At the end the
//! status goes on the error stream, every stream is half-closed (client-go
//! waits for stdout/stderr to end, then reads the error stream to its end)
//! and the connection says GOAWAY.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::backend::{Backend, ExitCode, Input, Output, StreamIo, TerminalSize};
use super::spdy::{Connection, IncomingStream, StreamReader, StreamWriter};
use super::status::{Outcome, StatusFormat};
use super::ws::{self, WsConn, WsProtocol};

/// Size of the pipes between the connection and the backend.
const PIPE_SIZE: usize = 64 * 1024;
/// How long output already written may take to reach the client once the
/// backend has returned.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Errors while setting a session up.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("timed out waiting for the client to create streams")]
    StreamCreationTimeout,
    #[error("the client went away before creating its streams")]
    ClientGone,
}

/// What the session runs.
pub(crate) enum Command {
    Exec {
        container_id: String,
        cmd: Vec<String>,
    },
    Attach {
        container_id: String,
    },
}

/// Which streams the stored request asked for.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Options {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

/// Where the session writes one channel.
#[derive(Clone)]
enum Sink {
    Spdy(StreamWriter),
    Ws(ws::ChannelWriter),
}

impl Sink {
    async fn write(&self, data: &[u8]) -> bool {
        match self {
            Sink::Spdy(w) => w.write(data).await.is_ok(),
            Sink::Ws(w) => w.write(data).await.is_ok(),
        }
    }
}

/// Where the session reads one channel.
enum Source {
    Spdy(StreamReader),
    Ws(mpsc::Receiver<Bytes>),
}

impl Source {
    async fn recv(&mut self) -> Option<Bytes> {
        match self {
            Source::Spdy(r) => r.recv().await,
            Source::Ws(r) => r.recv().await,
        }
    }
}

/// A session's channels, whatever the transport.
struct Channels {
    stdin: Option<Source>,
    stdout: Option<Sink>,
    stderr: Option<Sink>,
    error: Option<Sink>,
    resize: Option<Source>,
    format: StatusFormat,
}

/// Runs an exec/attach over an upgraded SPDY connection.
pub(crate) async fn serve_spdy(
    conn: Connection,
    mut incoming: mpsc::Receiver<IncomingStream>,
    version: u8,
    opts: Options,
    command: Command,
    backend: Arc<dyn Backend>,
    creation_timeout: Duration,
) -> Result<(), SessionError> {
    let resize_supported = version >= 3;
    let expected = 1
        + usize::from(opts.stdin)
        + usize::from(opts.stdout)
        + usize::from(opts.stderr)
        + usize::from(opts.tty && resize_supported);
    let mut streams: HashMap<String, (StreamReader, StreamWriter)> = HashMap::new();
    let deadline = tokio::time::Instant::now() + creation_timeout;
    while streams.len() < expected {
        let s = tokio::select! {
            s = incoming.recv() => s.ok_or(SessionError::ClientGone)?,
            _ = tokio::time::sleep_until(deadline) => {
                conn.close().await;
                return Err(SessionError::StreamCreationTimeout);
            }
        };
        let kind = s.headers.get("streamtype").unwrap_or("").to_owned();
        let wanted = match kind.as_str() {
            "error" => true,
            "stdin" => opts.stdin,
            "stdout" => opts.stdout,
            "stderr" => opts.stderr,
            "resize" => opts.tty && resize_supported,
            _ => false,
        };
        let Ok(stream) = s.accept().await else {
            return Err(SessionError::ClientGone);
        };
        if !wanted || streams.contains_key(&kind) {
            // Upstream answers every stream and ignores those it does not
            // use (client-go opens stderr whatever the CRI request said);
            // ending ours at once lets the client's reader finish.
            tracing::debug!(stream_type = %kind, "stream not used by this session");
            let _ = stream.writer.close().await;
            continue;
        }
        streams.insert(kind, (stream.reader, stream.writer));
    }
    let mut take = |k: &str| streams.remove(k);
    let stdin = take("stdin");
    let stdout = take("stdout");
    let stderr = take("stderr");
    let error = take("error");
    let resize = take("resize");
    // Our write sides of streams we never write on.
    let mut idle_writers: Vec<StreamWriter> = Vec::new();
    if let Some((_, w)) = &stdin {
        idle_writers.push(w.clone());
    }
    if let Some((_, w)) = &resize {
        idle_writers.push(w.clone());
    }
    // channel.k8s.io (v1) servers closed stdin at once; v1 clients expect it.
    if version == 1 {
        for w in &idle_writers {
            let _ = w.close().await;
        }
    }
    let mut all_writers: Vec<StreamWriter> = idle_writers;
    for (_, w) in [&stdout, &stderr, &error].into_iter().flatten() {
        all_writers.push(w.clone());
    }
    let channels = Channels {
        stdin: stdin.map(|(r, _)| Source::Spdy(r)),
        stdout: stdout.map(|(_, w)| Sink::Spdy(w)),
        stderr: stderr.map(|(_, w)| Sink::Spdy(w)),
        error: error.map(|(_, w)| Sink::Spdy(w)),
        resize: resize.map(|(r, _)| Source::Spdy(r)),
        format: if version >= 4 {
            StatusFormat::Json
        } else {
            StatusFormat::Text
        },
    };
    // Streams opened after setup are not used either (see above).
    let extra_streams = tokio::spawn(async move {
        while let Some(s) = incoming.recv().await {
            if let Ok(stream) = s.accept().await {
                let _ = stream.writer.close().await;
            }
        }
    });
    run(channels, opts, command, backend).await;
    for w in &all_writers {
        let _ = w.close().await;
    }
    extra_streams.abort();
    conn.close().await;
    Ok(())
}

/// Runs an exec/attach over an upgraded WebSocket.
pub(crate) async fn serve_ws<S>(
    socket: tokio_tungstenite::WebSocketStream<S>,
    protocol: WsProtocol,
    opts: Options,
    command: Command,
    backend: Arc<dyn Backend>,
    idle_timeout: Option<Duration>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    // Channels 0 stdin, 1 stdout, 2 stderr, 3 error, 4 resize; resize is
    // read whatever the options, as upstream.
    let mut inbound = HashMap::new();
    let (stdin_tx, stdin_rx) = mpsc::channel(32);
    if opts.stdin {
        inbound.insert(0u8, stdin_tx);
    }
    let (resize_tx, resize_rx) = mpsc::channel(8);
    inbound.insert(4u8, resize_tx);
    let conn = WsConn::start(socket, protocol, inbound, idle_timeout);
    // An empty message on the lowest writable channel tells the client the
    // session is up.
    let first = if opts.stdout {
        1
    } else if opts.stderr {
        2
    } else {
        3
    };
    let _ = conn.writer(first).write(&[]).await;
    let channels = Channels {
        stdin: opts.stdin.then_some(Source::Ws(stdin_rx)),
        stdout: opts.stdout.then(|| Sink::Ws(conn.writer(1))),
        stderr: opts.stderr.then(|| Sink::Ws(conn.writer(2))),
        error: Some(Sink::Ws(conn.writer(3))),
        resize: Some(Source::Ws(resize_rx)),
        format: if protocol.version >= 4 {
            StatusFormat::Json
        } else {
            StatusFormat::Text
        },
    };
    run(channels, opts, command, backend).await;
    conn.close().await;
}

/// Connects the channels to the backend through pipes, runs it, and writes
/// the outcome on the error channel.
async fn run(channels: Channels, opts: Options, command: Command, backend: Arc<dyn Backend>) {
    let mut tasks: Vec<JoinHandle<()>> = Vec::new();
    let stdin: Option<Input> = channels.stdin.map(|mut src| {
        // Duplex rather than simplex halves: dropping either end is end of
        // file for the other, so a backend that just drops its streams is
        // seen as done.
        let (mut w, r) = tokio::io::duplex(PIPE_SIZE);
        tasks.push(tokio::spawn(async move {
            while let Some(chunk) = src.recv().await {
                if w.write_all(&chunk).await.is_err() {
                    return;
                }
            }
            let _ = w.shutdown().await;
        }));
        Box::pin(r) as Input
    });
    let mut drains: Vec<JoinHandle<()>> = Vec::new();
    let mut output = |sink: Option<Sink>| {
        sink.map(|sink| {
            let (mut r, w) = tokio::io::duplex(PIPE_SIZE);
            drains.push(tokio::spawn(async move {
                let mut buf = vec![0u8; 32 * 1024];
                loop {
                    match r.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        // Once the client is gone this end is dropped, so
                        // the backend's writes fail (broken pipe) and it
                        // learns the session is over.
                        Ok(n) => {
                            if !sink.write(&buf[..n]).await {
                                break;
                            }
                        }
                    }
                }
            }));
            Box::pin(w) as Output
        })
    };
    let stdout = output(channels.stdout);
    let stderr = output(channels.stderr);
    let (resize_tx, resize_rx) = mpsc::channel(4);
    if let Some(src) = channels.resize {
        tasks.push(tokio::spawn(decode_resizes(src, resize_tx)));
    }
    let io = StreamIo {
        tty: opts.tty,
        stdin,
        stdout,
        stderr,
        resize: resize_rx,
    };
    let outcome = match command {
        Command::Exec { container_id, cmd } => match backend.exec(&container_id, &cmd, io).await {
            Ok(ExitCode(0)) => Outcome::Success,
            Ok(ExitCode(code)) => Outcome::ExitCode(code),
            Err(e) => {
                tracing::warn!(container_id, error = %e, "exec failed");
                Outcome::Internal(format!("error executing command in container: {e}"))
            }
        },
        Command::Attach { container_id } => match backend.attach(&container_id, io).await {
            Ok(()) => Outcome::Success,
            Err(e) => {
                tracing::warn!(container_id, error = %e, "attach failed");
                Outcome::Internal(format!("error attaching to container: {e}"))
            }
        },
    };
    for d in drains {
        let abort = d.abort_handle();
        if tokio::time::timeout(DRAIN_TIMEOUT, d).await.is_err() {
            tracing::warn!("backend kept an output stream open after returning; cut off");
            abort.abort();
        }
    }
    for t in tasks {
        t.abort();
    }
    let report = outcome.encode(channels.format);
    if let Some(error) = channels.error
        && !report.is_empty()
    {
        let _ = error.write(&report).await;
    }
}

/// Decodes the resize channel: a stream of JSON objects, as Go's
/// json.Encoder writes them. A malformed one ends the channel (as upstream).
async fn decode_resizes(mut src: Source, tx: mpsc::Sender<TerminalSize>) {
    let mut buf: Vec<u8> = Vec::new();
    while let Some(chunk) = src.recv().await {
        buf.extend_from_slice(&chunk);
        let mut consumed = 0;
        let mut stream = serde_json::Deserializer::from_slice(&buf).into_iter::<TerminalSize>();
        loop {
            match stream.next() {
                Some(Ok(size)) => {
                    consumed = stream.byte_offset();
                    // Only the newest size matters: drop when the backend lags.
                    if let Err(mpsc::error::TrySendError::Closed(_)) = tx.try_send(size) {
                        return;
                    }
                }
                Some(Err(e)) if e.is_eof() => break,
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "bad terminal size; ignoring further resizes");
                    return;
                }
                None => {
                    consumed = buf.len();
                    break;
                }
            }
        }
        buf.drain(..consumed);
        if buf.len() > 64 * 1024 {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn resizes_decode_across_chunk_boundaries() {
        let (tx, rx) = mpsc::channel(8);
        let (out_tx, mut out_rx) = mpsc::channel(8);
        let t = tokio::spawn(decode_resizes(Source::Ws(rx), out_tx));
        tx.send(Bytes::from_static(b"{\"Width\":80,\"Hei"))
            .await
            .unwrap();
        tx.send(Bytes::from_static(
            b"ght\":24}\n{\"Width\":100,\"Height\":50}\n",
        ))
        .await
        .unwrap();
        assert_eq!(
            out_rx.recv().await,
            Some(TerminalSize {
                width: 80,
                height: 24
            })
        );
        assert_eq!(
            out_rx.recv().await,
            Some(TerminalSize {
                width: 100,
                height: 50
            })
        );
        tx.send(Bytes::from_static(b"garbage")).await.unwrap();
        t.await.unwrap();
        assert_eq!(out_rx.recv().await, None);
    }
}
