//! SPDY tunnelled through a WebSocket: how client-go's WebSocket port
//! forwarding (`NewSPDYOverWebsocketDialer`, kubectl 1.31+, critest
//! `--websocket-portforward`) reaches a server.
//!
//! The client offers the subprotocol `SPDY/3.1+portforward.k8s.io` (the
//! SPDY protocol it wants behind the `SPDY/3.1+` prefix) and the server
//! echoes it. From then on every binary message carries the next bytes of an
//! ordinary SPDY/3.1 connection in that direction: no channel byte, and
//! message boundaries mean nothing to the frames inside. A close frame with
//! a normal-closure code is the end of the byte stream. [`WsTunnel`] turns
//! the WebSocket back into that byte stream, so the SPDY port-forward
//! session runs on it exactly as on a plain `Upgrade: SPDY/3.1`.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// Writes larger than this go out as several messages, so one SPDY batch
/// (up to 256 KiB) does not become one large allocation on either side.
const MAX_MESSAGE: usize = 64 * 1024;

/// A WebSocket seen as the byte stream it tunnels.
///
/// Pings are answered by tungstenite itself while reading (a pong waits for
/// the next read or write, and the SPDY reader is always reading).
pub(crate) struct WsTunnel<S> {
    ws: WebSocketStream<S>,
    /// The unread rest of the last binary message.
    pending: Bytes,
    /// The peer closed, or the connection failed: reads return end of file.
    read_done: bool,
    /// Our close frame is queued; nothing more may be written.
    close_sent: bool,
}

impl<S> WsTunnel<S> {
    pub fn new(ws: WebSocketStream<S>) -> Self {
        Self {
            ws,
            pending: Bytes::new(),
            read_done: false,
            close_sent: false,
        }
    }
}

fn to_io(e: WsError) -> io::Error {
    match e {
        WsError::Io(e) => e,
        WsError::ConnectionClosed | WsError::AlreadyClosed => {
            io::Error::new(io::ErrorKind::BrokenPipe, "WebSocket connection is closed")
        }
        other => io::Error::other(other),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsTunnel<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            if !this.pending.is_empty() {
                let n = this.pending.len().min(buf.remaining());
                buf.put_slice(&this.pending.split_to(n));
                return Poll::Ready(Ok(()));
            }
            if this.read_done {
                return Poll::Ready(Ok(()));
            }
            match ready!(this.ws.poll_next_unpin(cx)) {
                Some(Ok(Message::Binary(b))) => this.pending = b,
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Text(_))) => {
                    // client-go fails the same way: text cannot be SPDY bytes.
                    this.read_done = true;
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "text message in a SPDY-over-WebSocket tunnel",
                    )));
                }
                Some(Ok(Message::Close(frame))) => {
                    this.read_done = true;
                    // tungstenite queued the close reply; push it out now,
                    // as nothing may read or write after end of file.
                    let _ = this.ws.poll_flush_unpin(cx);
                    // Only a normal closure is a clean end, as client-go's
                    // tunnel reads it; anything else is a broken stream.
                    let code = frame.as_ref().map(|f| f.code);
                    if code != Some(CloseCode::Normal) {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::ConnectionAborted,
                            format!("SPDY-over-WebSocket tunnel closed with {code:?}"),
                        )));
                    }
                }
                Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)) | None => {
                    this.read_done = true;
                }
                Some(Err(e)) => {
                    this.read_done = true;
                    return Poll::Ready(Err(to_io(e)));
                }
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsTunnel<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.close_sent {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "SPDY-over-WebSocket tunnel is shut down",
            )));
        }
        if data.is_empty() {
            // An empty message would mean nothing; send none.
            return Poll::Ready(Ok(0));
        }
        ready!(this.ws.poll_ready_unpin(cx)).map_err(to_io)?;
        let n = data.len().min(MAX_MESSAGE);
        this.ws
            .start_send_unpin(Message::Binary(Bytes::copy_from_slice(&data[..n])))
            .map_err(to_io)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().ws.poll_flush_unpin(cx).map_err(to_io)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.close_sent {
            ready!(this.ws.poll_ready_unpin(cx)).map_err(to_io)?;
            // Normal closure, not tungstenite's default empty close frame:
            // client-go reads only code 1000 as end of stream.
            this.ws
                .start_send_unpin(Message::Close(Some(CloseFrame {
                    code: CloseCode::Normal,
                    reason: "".into(),
                })))
                .map_err(to_io)?;
            this.close_sent = true;
        }
        match ready!(this.ws.poll_flush_unpin(cx)) {
            Ok(()) | Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => Poll::Ready(Ok(())),
            Err(e) => Poll::Ready(Err(to_io(e))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_tungstenite::tungstenite::protocol::Role;

    async fn pair() -> (
        WsTunnel<tokio::io::DuplexStream>,
        WebSocketStream<tokio::io::DuplexStream>,
    ) {
        let (a, b) = tokio::io::duplex(1 << 20);
        let server = WebSocketStream::from_raw_socket(a, Role::Server, None).await;
        let client = WebSocketStream::from_raw_socket(b, Role::Client, None).await;
        (WsTunnel::new(server), client)
    }

    #[tokio::test]
    async fn messages_are_one_byte_stream_and_normal_close_is_eof() {
        let (mut tunnel, mut client) = pair().await;
        client.send(Message::binary(b"hel".to_vec())).await.unwrap();
        client
            .send(Message::Ping(b"p".to_vec().into()))
            .await
            .unwrap();
        client.send(Message::binary(b"lo".to_vec())).await.unwrap();
        client
            .send(Message::Close(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            })))
            .await
            .unwrap();
        let mut got = Vec::new();
        tunnel.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"hello");
        // The ping was answered, and so was the close.
        let mut pong = false;
        while let Some(Ok(m)) = client.next().await {
            pong |= m == Message::Pong(b"p".to_vec().into());
            if let Message::Close(_) = m {
                break;
            }
        }
        assert!(pong);
    }

    #[tokio::test]
    async fn writes_are_binary_messages_and_shutdown_is_a_normal_close() {
        let (mut tunnel, mut client) = pair().await;
        let big = vec![7u8; MAX_MESSAGE + 10];
        tunnel.write_all(&big).await.unwrap();
        tunnel.flush().await.unwrap();
        tunnel.shutdown().await.unwrap();
        let mut sizes = Vec::new();
        let mut close = None;
        while let Some(Ok(m)) = client.next().await {
            match m {
                Message::Binary(b) => sizes.push(b.len()),
                Message::Close(f) => {
                    close = f.map(|f| f.code);
                    break;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(sizes, [MAX_MESSAGE, 10]);
        assert_eq!(close, Some(CloseCode::Normal));
    }

    #[tokio::test]
    async fn text_and_abnormal_closes_are_errors() {
        let (mut tunnel, mut client) = pair().await;
        client.send(Message::text("x")).await.unwrap();
        let mut b = [0u8; 4];
        assert!(tunnel.read(&mut b).await.is_err());

        let (mut tunnel, mut client) = pair().await;
        client
            .send(Message::Close(Some(CloseFrame {
                code: CloseCode::Away,
                reason: "".into(),
            })))
            .await
            .unwrap();
        assert!(tunnel.read(&mut b).await.is_err());
    }
}
