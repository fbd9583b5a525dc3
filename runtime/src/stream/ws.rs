//! Kubernetes' WebSocket channel protocol (apimachinery's wsstream).
//!
//! Every message starts with a channel number; the rest is that channel's
//! data. The binary subprotocols send it as a byte in a binary message, the
//! `base64.` ones as an ASCII digit (`'0' + n`) followed by the base64 of the
//! data in a text message. `v5.channel.k8s.io` adds the close signal: a
//! message `[255, n]` half-closes channel n (client-go sends it when its
//! stdin ends). Channels the session does not use are ignored, as upstream.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// The v5 close signal's channel byte.
const CLOSE_SIGNAL: u8 = 255;

/// Errors of a WebSocket channel connection.
#[derive(Debug, thiserror::Error)]
pub enum WsError {
    #[error("WebSocket connection is closed")]
    Closed,
}

/// A negotiated WebSocket subprotocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WsProtocol {
    /// Channel data as base64 text instead of binary.
    pub base64: bool,
    /// The remotecommand version it implies (1 for channel.k8s.io or none).
    pub version: u8,
}

impl WsProtocol {
    pub fn supports_close(self) -> bool {
        self.version >= 5
    }
}

/// Subprotocols the exec/attach endpoints speak.
pub(crate) const REMOTECOMMAND_PROTOCOLS: &[(&str, WsProtocol)] = &[
    (
        "v5.channel.k8s.io",
        WsProtocol {
            base64: false,
            version: 5,
        },
    ),
    (
        "v4.channel.k8s.io",
        WsProtocol {
            base64: false,
            version: 4,
        },
    ),
    (
        "v4.base64.channel.k8s.io",
        WsProtocol {
            base64: true,
            version: 4,
        },
    ),
    (
        "v3.channel.k8s.io",
        WsProtocol {
            base64: false,
            version: 3,
        },
    ),
    (
        "v2.channel.k8s.io",
        WsProtocol {
            base64: false,
            version: 2,
        },
    ),
    (
        "channel.k8s.io",
        WsProtocol {
            base64: false,
            version: 1,
        },
    ),
    (
        "base64.channel.k8s.io",
        WsProtocol {
            base64: true,
            version: 1,
        },
    ),
];

/// How a WebSocket port forward is carried, by subprotocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PortForwardWs {
    /// One forwarded connection per requested port, on channel pairs.
    Channels(WsProtocol),
    /// A whole SPDY `portforward.k8s.io` session in binary messages
    /// (`tunnel.rs`): what client-go's WebSocket dialer speaks.
    SpdyTunnel,
}

const fn channels(base64: bool, version: u8) -> PortForwardWs {
    PortForwardWs::Channels(WsProtocol { base64, version })
}

/// Subprotocols the port-forward endpoint speaks over WebSocket. The tunnel's
/// is client-go's `SPDY/3.1+` prefix before the SPDY protocol's name.
pub(crate) const PORTFORWARD_PROTOCOLS: &[(&str, PortForwardWs)] = &[
    ("SPDY/3.1+portforward.k8s.io", PortForwardWs::SpdyTunnel),
    ("v4.channel.k8s.io", channels(false, 4)),
    ("v4.base64.channel.k8s.io", channels(true, 4)),
    ("channel.k8s.io", channels(false, 1)),
    ("base64.channel.k8s.io", channels(true, 1)),
];

/// What no subprotocol at all means: the unnamed binary v1 protocol.
pub(crate) const UNNAMED: WsProtocol = WsProtocol {
    base64: false,
    version: 1,
};

/// Picks the first of the client's offered subprotocols (in its order) that
/// `supported` has. No offer at all means `unnamed`; offers with no match
/// mean refusal (`None`), as upstream's handshake.
pub(crate) fn negotiate<T: Copy>(
    offered: &[String],
    supported: &[(&'static str, T)],
    unnamed: T,
) -> Option<(Option<&'static str>, T)> {
    if offered.is_empty() {
        return Some((None, unnamed));
    }
    offered.iter().find_map(|o| {
        supported
            .iter()
            .find(|(name, _)| name == o)
            .map(|(name, p)| (Some(*name), *p))
    })
}

/// When the connection last carried a message either way.
struct Activity {
    started: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            started: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Resolves once `timeout` has passed without activity; never if `None`.
    async fn idle(&self, timeout: Option<Duration>) {
        let Some(timeout) = timeout else {
            return std::future::pending().await;
        };
        loop {
            let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let deadline = self.started + last + timeout;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline.into()).await;
        }
    }
}

/// Writes one channel's data to the client.
#[derive(Clone)]
pub(crate) struct ChannelWriter {
    out: mpsc::Sender<Message>,
    channel: u8,
    base64: bool,
}

impl ChannelWriter {
    pub async fn write(&self, data: &[u8]) -> Result<(), WsError> {
        self.out
            .send(encode(self.channel, self.base64, data))
            .await
            .map_err(|_| WsError::Closed)
    }
}

fn encode(channel: u8, base64: bool, data: &[u8]) -> Message {
    if base64 {
        let mut s = String::with_capacity(1 + data.len().div_ceil(3) * 4);
        s.push(char::from(b'0'.wrapping_add(channel)));
        base64::engine::general_purpose::STANDARD.encode_string(data, &mut s);
        Message::text(s)
    } else {
        let mut v = Vec::with_capacity(1 + data.len());
        v.push(channel);
        v.extend_from_slice(data);
        Message::binary(v)
    }
}

/// A running channel connection: a writer task owning the sink and a reader
/// task routing inbound channel data. Dropping it stops both.
pub(crate) struct WsConn {
    out: mpsc::Sender<Message>,
    protocol: WsProtocol,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
}

impl WsConn {
    /// Starts the tasks. `inbound` maps channel numbers the client may send
    /// on to where their data goes; a channel's sender is dropped (end of
    /// data) on the close signal or when the connection ends.
    pub fn start<S>(
        ws: WebSocketStream<S>,
        protocol: WsProtocol,
        inbound: HashMap<u8, mpsc::Sender<Bytes>>,
        idle_timeout: Option<Duration>,
    ) -> WsConn
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (mut sink, mut stream) = ws.split();
        let (out_tx, mut out_rx) = mpsc::channel::<Message>(64);
        let activity = Arc::new(Activity::new());
        let writer_activity = activity.clone();
        let writer = tokio::spawn(async move {
            while let Some(msg) = out_rx.recv().await {
                let is_close = matches!(msg, Message::Close(_));
                if sink.send(msg).await.is_err() || is_close {
                    break;
                }
                writer_activity.touch();
            }
            let _ = sink.close().await;
        });
        let idle_out = out_tx.clone();
        let reader = tokio::spawn(async move {
            let mut inbound = inbound;
            loop {
                let msg = tokio::select! {
                    m = stream.next() => match m {
                        Some(m) => m,
                        None => break,
                    },
                    _ = activity.idle(idle_timeout) => {
                        // As upstream's deadline: an idle connection is closed.
                        tracing::debug!("WebSocket connection idle for too long; closing it");
                        let _ = idle_out.try_send(Message::Close(None));
                        break;
                    }
                };
                activity.touch();
                let data: Vec<u8> = match msg {
                    Ok(Message::Binary(b)) if !protocol.base64 => b.to_vec(),
                    Ok(Message::Text(t)) if protocol.base64 => t.as_bytes().to_vec(),
                    Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => continue,
                    Ok(Message::Close(_)) | Err(_) => break,
                    // The wrong kind of message for the protocol: ignored.
                    Ok(_) => continue,
                };
                let Some((&first, rest)) = data.split_first() else {
                    continue;
                };
                if protocol.supports_close() && first == CLOSE_SIGNAL {
                    match rest {
                        [channel] => {
                            inbound.remove(channel);
                            continue;
                        }
                        _ => {
                            tracing::debug!("malformed WebSocket close signal; closing");
                            break;
                        }
                    }
                }
                let channel = if protocol.base64 {
                    first.wrapping_sub(b'0')
                } else {
                    first
                };
                let payload = if protocol.base64 {
                    match base64::engine::general_purpose::STANDARD.decode(rest) {
                        Ok(p) => p,
                        Err(_) => {
                            tracing::debug!(channel, "bad base64 on WebSocket channel; dropped");
                            continue;
                        }
                    }
                } else {
                    rest.to_vec()
                };
                if payload.is_empty() {
                    continue;
                }
                if let Some(tx) = inbound.get(&channel)
                    && tx.send(Bytes::from(payload)).await.is_err()
                {
                    inbound.remove(&channel);
                }
            }
        });
        WsConn {
            out: out_tx,
            protocol,
            reader,
            writer,
        }
    }

    pub fn writer(&self, channel: u8) -> ChannelWriter {
        ChannelWriter {
            out: self.out.clone(),
            channel,
            base64: self.protocol.base64,
        }
    }

    /// Sends a normal closure after everything queued, and waits (bounded)
    /// for it to go out.
    pub async fn close(mut self) {
        let _ = self
            .out
            .send(Message::Close(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            })))
            .await;
        // The writer stops after the close frame.
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut self.writer).await;
        self.reader.abort();
    }
}

impl Drop for WsConn {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offers(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn negotiation_follows_the_client_order() {
        let (name, p) = negotiate(
            &offers(&["v4.channel.k8s.io", "v5.channel.k8s.io"]),
            REMOTECOMMAND_PROTOCOLS,
            UNNAMED,
        )
        .unwrap();
        assert_eq!(name, Some("v4.channel.k8s.io"));
        assert_eq!(p.version, 4);
        let (name, p) = negotiate(
            &offers(&["nope", "base64.channel.k8s.io"]),
            REMOTECOMMAND_PROTOCOLS,
            UNNAMED,
        )
        .unwrap();
        assert_eq!(name, Some("base64.channel.k8s.io"));
        assert!(p.base64);
        assert_eq!(
            negotiate(&offers(&["nope"]), REMOTECOMMAND_PROTOCOLS, UNNAMED),
            None
        );
        assert_eq!(
            negotiate(&[], REMOTECOMMAND_PROTOCOLS, UNNAMED).unwrap().0,
            None
        );
        let pf_unnamed = PortForwardWs::Channels(UNNAMED);
        assert_eq!(
            negotiate(
                &offers(&["v5.channel.k8s.io"]),
                PORTFORWARD_PROTOCOLS,
                pf_unnamed
            ),
            None
        );
        let tunnel = "SPDY/3.1+portforward.k8s.io";
        assert_eq!(
            negotiate(
                &offers(&[tunnel, "v4.channel.k8s.io"]),
                PORTFORWARD_PROTOCOLS,
                pf_unnamed
            ),
            Some((
                Some("SPDY/3.1+portforward.k8s.io"),
                PortForwardWs::SpdyTunnel
            ))
        );
        assert_eq!(
            negotiate(
                &offers(&["v4.channel.k8s.io", tunnel]),
                PORTFORWARD_PROTOCOLS,
                pf_unnamed
            )
            .unwrap()
            .1,
            channels(false, 4)
        );
    }

    #[test]
    fn channel_encoding() {
        assert_eq!(
            encode(1, false, b"hi"),
            Message::binary(vec![1, b'h', b'i'])
        );
        assert_eq!(encode(3, true, b"hi"), Message::text("3aGk="));
    }
}
