//! Port forwarding sessions.
//!
//! Over SPDY (`portforward.k8s.io`) one connection carries many forwarded
//! connections: for each, the client opens an `error` and a `data` stream,
//! both with headers `port` and `requestid`. A complete pair is handed to
//! the backend; its failure is written as text on the error stream (client-go
//! prints it and drops the connection). A reset from the pod side (EPIPE,
//! ECONNRESET) resets both streams instead, which keeps the session.
//!
//! client-go's WebSocket dialer tunnels that same SPDY session through a
//! WebSocket (`tunnel.rs`); it is served by [`serve_spdy`] too.
//!
//! The older WebSocket channel protocol has one forwarded connection per
//! port in the request, on channels 2i (data) and 2i+1 (error); the first
//! message on each carries the port as two little-endian bytes.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::backend::{Backend, BackendError};
use super::spdy::{Connection, IncomingStream, SpdyStream, StreamReader, StreamWriter};
use super::ws::{WsConn, WsProtocol};

const PIPE_SIZE: usize = 64 * 1024;

/// Errors of a port-forward stream the client opened.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PortForwardError {
    #[error("\"port\" header is required")]
    MissingPort,
    #[error("unable to parse {0:?} as a port")]
    BadPort(String),
    #[error("\"streamType\" header is required")]
    MissingStreamType,
    #[error("invalid stream type {0:?}")]
    BadStreamType(String),
    #[error("port {port} is not among the ports of this port-forward request ({allowed:?})")]
    PortNotAllowed { port: u16, allowed: Vec<u16> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Data,
    Error,
}

fn classify(s: &IncomingStream, allowed: &[u16]) -> Result<(u16, Kind), PortForwardError> {
    let port = s.headers.get("port").ok_or(PortForwardError::MissingPort)?;
    let port = match port.parse::<u16>() {
        Ok(p) if p > 0 => p,
        _ => return Err(PortForwardError::BadPort(port.to_owned())),
    };
    let kind = match s.headers.get("streamtype") {
        None | Some("") => return Err(PortForwardError::MissingStreamType),
        Some("data") => Kind::Data,
        Some("error") => Kind::Error,
        Some(other) => return Err(PortForwardError::BadStreamType(other.to_owned())),
    };
    if !allowed.is_empty() && !allowed.contains(&port) {
        return Err(PortForwardError::PortNotAllowed {
            port,
            allowed: allowed.to_vec(),
        });
    }
    Ok((port, kind))
}

/// The request id pairing a data and an error stream. Clients before
/// request ids opened error then data back to back, so upstream derives one
/// from the stream id; so do we.
fn request_id(s: &IncomingStream, kind: Kind) -> String {
    match s.headers.get("requestid") {
        Some(id) if !id.is_empty() => id.to_owned(),
        _ => match kind {
            Kind::Error => s.id.to_string(),
            Kind::Data => s.id.saturating_sub(2).to_string(),
        },
    }
}

#[derive(Default)]
struct Pair {
    port: u16,
    data: Option<SpdyStream>,
    error: Option<SpdyStream>,
}

/// Serves a SPDY port-forward connection until the client goes away.
pub(crate) async fn serve_spdy(
    conn: Connection,
    mut incoming: mpsc::Receiver<IncomingStream>,
    pod_sandbox_id: String,
    allowed: Vec<u16>,
    backend: Arc<dyn Backend>,
    creation_timeout: Duration,
) {
    let mut pending: HashMap<String, (Pair, tokio::time::Instant)> = HashMap::new();
    // A zero period would panic; a zero timeout just expires pairs at once.
    let period = creation_timeout.clamp(Duration::from_millis(10), Duration::from_secs(1));
    let mut sweep = tokio::time::interval(period);
    loop {
        let s = tokio::select! {
            s = incoming.recv() => match s {
                Some(s) => s,
                None => break,
            },
            _ = sweep.tick() => {
                expire(&mut pending).await;
                continue;
            }
        };
        let (port, kind) = match classify(&s, &allowed) {
            Ok(v) => v,
            Err(e) => {
                tracing::debug!(error = %e, "port-forward stream refused");
                s.reject().await;
                continue;
            }
        };
        let id = request_id(&s, kind);
        let Ok(stream) = s.accept().await else {
            break;
        };
        let (pair, _) = pending.entry(id.clone()).or_insert_with(|| {
            (
                Pair {
                    port,
                    ..Pair::default()
                },
                tokio::time::Instant::now() + creation_timeout,
            )
        });
        let slot = match kind {
            Kind::Data => &mut pair.data,
            Kind::Error => &mut pair.error,
        };
        if slot.is_some() {
            let msg = format!(
                "error processing stream for request {id}: {} stream already assigned",
                if kind == Kind::Data { "data" } else { "error" }
            );
            if let Some(err) = &pair.error {
                let _ = err.writer.write(msg.as_bytes()).await;
            }
            stream.writer.reset().await;
            continue;
        }
        *slot = Some(stream);
        if pair.data.is_some()
            && pair.error.is_some()
            && let Some((pair, _)) = pending.remove(&id)
            && let (Some(data), Some(error)) = (pair.data, pair.error)
        {
            let backend = backend.clone();
            let sandbox = pod_sandbox_id.clone();
            tokio::spawn(forward_spdy(backend, sandbox, pair.port, id, data, error));
        }
    }
    conn.close().await;
}

/// Fails pairs whose second stream did not come in time.
async fn expire(pending: &mut HashMap<String, (Pair, tokio::time::Instant)>) {
    let now = tokio::time::Instant::now();
    let expired: Vec<String> = pending
        .iter()
        .filter(|(_, (_, deadline))| *deadline <= now)
        .map(|(id, _)| id.clone())
        .collect();
    for id in expired {
        if let Some((pair, _)) = pending.remove(&id) {
            if let Some(err) = &pair.error {
                let msg = format!("request {id}: timed out waiting for streams");
                let _ = err.writer.write(msg.as_bytes()).await;
                let _ = err.writer.close().await;
            }
            if let Some(data) = &pair.data {
                data.writer.reset().await;
            }
        }
    }
}

async fn forward_spdy(
    backend: Arc<dyn Backend>,
    pod_sandbox_id: String,
    port: u16,
    request_id: String,
    data: SpdyStream,
    error: SpdyStream,
) {
    let (ours, theirs) = tokio::io::duplex(PIPE_SIZE);
    let pumps = pump(ours, data.reader, data.writer.clone());
    let result = backend.port_forward(&pod_sandbox_id, port, theirs).await;
    let _ = pumps.await;
    match result {
        Ok(()) => {
            let _ = data.writer.close().await;
            let _ = error.writer.close().await;
        }
        Err(e) if is_reset(&e) => {
            tracing::debug!(port, request_id, error = %e, "pod side reset the forwarded connection");
            data.writer.reset().await;
            error.writer.reset().await;
        }
        Err(e) => {
            tracing::warn!(port, request_id, error = %e, "port forward failed");
            let msg = format!("error forwarding port {port} to pod {pod_sandbox_id}: {e}");
            let _ = error.writer.write(msg.as_bytes()).await;
            let _ = data.writer.close().await;
            let _ = error.writer.close().await;
        }
    }
}

fn is_reset(e: &BackendError) -> bool {
    matches!(e, BackendError::Io { source, .. }
        if matches!(source.kind(), ErrorKind::BrokenPipe | ErrorKind::ConnectionReset))
}

/// Copies client → backend and backend → client until both directions end
/// (or the backend drops its end); the client's FIN half-closes the pipe and
/// the pipe's end of file half-closes the stream.
fn pump(
    pipe: tokio::io::DuplexStream,
    mut from_client: StreamReader,
    to_client: StreamWriter,
) -> tokio::task::JoinHandle<()> {
    let (mut rd, mut wr) = tokio::io::split(pipe);
    let inbound = tokio::spawn(async move {
        while let Some(chunk) = from_client.recv().await {
            if wr.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = wr.shutdown().await;
    });
    tokio::spawn(async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to_client.write(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        }
        inbound.abort();
    })
}

/// Serves a WebSocket port forward: one forwarded connection per port.
pub(crate) async fn serve_ws<S>(
    socket: tokio_tungstenite::WebSocketStream<S>,
    protocol: WsProtocol,
    pod_sandbox_id: String,
    ports: Vec<u16>,
    backend: Arc<dyn Backend>,
    idle_timeout: Option<Duration>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let mut inbound = HashMap::new();
    let mut receivers = Vec::new();
    for i in 0..ports.len() {
        let (tx, rx) = mpsc::channel::<Bytes>(32);
        // Channel numbers are a byte; more ports than fit are not served.
        let Ok(ch) = u8::try_from(2 * i) else { break };
        inbound.insert(ch, tx);
        receivers.push(rx);
    }
    let conn = WsConn::start(socket, protocol, inbound, idle_timeout);
    let mut tasks = Vec::new();
    for (i, mut rx) in receivers.into_iter().enumerate() {
        let port = ports[i];
        let data = conn.writer((2 * i) as u8);
        let error = conn.writer((2 * i + 1) as u8);
        let prefix = port.to_le_bytes();
        let _ = data.write(&prefix).await;
        let _ = error.write(&prefix).await;
        let backend = backend.clone();
        let sandbox = pod_sandbox_id.clone();
        tasks.push(tokio::spawn(async move {
            let (ours, theirs) = tokio::io::duplex(PIPE_SIZE);
            let (mut rd, mut wr) = tokio::io::split(ours);
            let inbound = tokio::spawn(async move {
                while let Some(chunk) = rx.recv().await {
                    if wr.write_all(&chunk).await.is_err() {
                        return;
                    }
                }
                let _ = wr.shutdown().await;
            });
            let out = data.clone();
            let outbound = tokio::spawn(async move {
                let mut buf = vec![0u8; 32 * 1024];
                loop {
                    match rd.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if out.write(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
            });
            let result = backend.port_forward(&sandbox, port, theirs).await;
            let _ = outbound.await;
            inbound.abort();
            if let Err(e) = result {
                let msg = format!("error forwarding port {port} to pod {sandbox}: {e}");
                let _ = error.write(msg.as_bytes()).await;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    conn.close().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_read_like_upstream() {
        assert_eq!(
            PortForwardError::MissingPort.to_string(),
            "\"port\" header is required"
        );
        assert_eq!(
            PortForwardError::BadPort("x".into()).to_string(),
            "unable to parse \"x\" as a port"
        );
    }
}
