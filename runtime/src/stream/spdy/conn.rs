//! A SPDY/3.1 connection: a reader task that demultiplexes frames into
//! streams and a writer task that owns the socket's write half and the
//! header compressor.
//!
//! Inbound data is handed to each stream through a bounded queue; when a
//! stream's consumer is slow the reader waits, which pushes back on the peer
//! through TCP (what spdystream does too, with an unbuffered channel).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch};

use super::frame::{Codec, FLAG_FIN, FLAG_UNIDIRECTIONAL, Frame, Headers, goaway, rst};

/// DATA frames we send are at most this big, so one stream cannot hold the
/// socket for long.
const MAX_DATA_CHUNK: usize = 32 * 1024;
/// Inbound chunks queued per stream before the reader waits.
const STREAM_QUEUE: usize = 32;
/// Frames queued for the writer task.
const OUT_QUEUE: usize = 64;
/// WINDOW_UPDATE is sent once this much has been consumed (half the default
/// 64 KiB window, so a strict peer never runs dry).
const WINDOW_UPDATE_THRESHOLD: u32 = 32 * 1024;
/// After we close, how long the peer gets to close its side.
const CLOSE_LINGER: Duration = Duration::from_secs(5);

/// Errors of a SPDY connection.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("SPDY connection is closed")]
    Closed,
    #[error("SPDY stream {0} was reset by the peer")]
    StreamReset(u32),
    #[error("SPDY stream {0} was refused by the peer")]
    Refused(u32),
    #[error("SPDY stream ids are exhausted on this connection")]
    IdsExhausted,
}

/// Which end of the connection this is: it decides stream id parity (client
/// streams are odd) and which PINGs are ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Server,
    Client,
}

enum Out {
    Frame(Frame),
    /// Flush, shut the write half down, stop.
    Shutdown,
}

struct StreamState {
    reset: AtomicBool,
    write_closed: AtomicBool,
}

struct Slot {
    data: Option<mpsc::Sender<Bytes>>,
    reply: Option<oneshot::Sender<()>>,
    state: Arc<StreamState>,
}

struct Shared {
    role: Role,
    out: mpsc::Sender<Out>,
    streams: Mutex<HashMap<u32, Slot>>,
    next_id: AtomicU32,
    last_received: AtomicU32,
    going_away: AtomicBool,
    started: Instant,
    last_activity_ms: AtomicU64,
    abort: watch::Sender<bool>,
    closed: watch::Receiver<bool>,
}

impl Shared {
    fn touch(&self) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.last_activity_ms.store(ms, Ordering::Relaxed);
    }

    /// Drops a stream's slot once both directions are finished, so long
    /// connections (port forwarding) do not accumulate them.
    fn forget_if_done(&self, id: u32) {
        let mut streams = self.streams();
        if let Some(slot) = streams.get(&id)
            && slot.data.is_none()
            && slot.reply.is_none()
            && slot.state.write_closed.load(Ordering::Acquire)
        {
            streams.remove(&id);
        }
    }

    fn streams(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Slot>> {
        // A panic while holding this lock cannot leave the map inconsistent
        // (every update is a single insert/remove), so poison is ignored.
        self.streams.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A handle on a SPDY connection; cheap to clone.
#[derive(Clone)]
pub struct Connection {
    shared: Arc<Shared>,
}

/// A stream the peer opened, not yet answered.
pub struct IncomingStream {
    pub id: u32,
    pub headers: Headers,
    conn: Connection,
    data: mpsc::Receiver<Bytes>,
    state: Arc<StreamState>,
}

/// An open stream: both halves.
pub struct SpdyStream {
    pub reader: StreamReader,
    pub writer: StreamWriter,
    pub headers: Headers,
}

/// The receiving half of a stream.
pub struct StreamReader {
    id: u32,
    conn: Connection,
    data: mpsc::Receiver<Bytes>,
    unacked: u32,
}

/// The sending half of a stream; clones share it.
#[derive(Clone)]
pub struct StreamWriter {
    id: u32,
    conn: Connection,
    state: Arc<StreamState>,
}

impl Connection {
    /// Starts a connection over `io`. Streams the peer opens arrive on the
    /// returned receiver; the connection lives until the peer goes away, an
    /// `idle_timeout` passes without frames either way, or `close` is called.
    pub fn start<T>(
        io: T,
        role: Role,
        idle_timeout: Option<Duration>,
    ) -> (Connection, mpsc::Receiver<IncomingStream>)
    where
        T: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (read, write) = tokio::io::split(io);
        let (out_tx, out_rx) = mpsc::channel(OUT_QUEUE);
        let (abort_tx, abort_rx) = watch::channel(false);
        let (closed_tx, closed_rx) = watch::channel(false);
        let (incoming_tx, incoming_rx) = mpsc::channel(16);
        let shared = Arc::new(Shared {
            role,
            out: out_tx,
            streams: Mutex::new(HashMap::new()),
            next_id: AtomicU32::new(if role == Role::Client { 1 } else { 2 }),
            last_received: AtomicU32::new(0),
            going_away: AtomicBool::new(false),
            started: Instant::now(),
            last_activity_ms: AtomicU64::new(0),
            abort: abort_tx,
            closed: closed_rx,
        });
        let conn = Connection { shared };
        tokio::spawn(write_loop(conn.shared.clone(), write, out_rx));
        tokio::spawn(read_loop(
            conn.clone(),
            read,
            incoming_tx,
            idle_timeout,
            abort_rx,
            closed_tx,
        ));
        (conn, incoming_rx)
    }

    async fn send(&self, frame: Frame) -> Result<(), ConnError> {
        self.shared
            .out
            .send(Out::Frame(frame))
            .await
            .map_err(|_| ConnError::Closed)
    }

    /// Opens a stream with `headers` and waits for the peer's SYN_REPLY.
    pub async fn open_stream(&self, headers: Headers) -> Result<SpdyStream, ConnError> {
        if self.shared.going_away.load(Ordering::Acquire) {
            return Err(ConnError::Closed);
        }
        let id = self.shared.next_id.fetch_add(2, Ordering::AcqRel);
        if id > 0x7fff_ffff {
            return Err(ConnError::IdsExhausted);
        }
        let (data_tx, data_rx) = mpsc::channel(STREAM_QUEUE);
        let (reply_tx, reply_rx) = oneshot::channel();
        let state = Arc::new(StreamState {
            reset: AtomicBool::new(false),
            write_closed: AtomicBool::new(false),
        });
        self.shared.streams().insert(
            id,
            Slot {
                data: Some(data_tx),
                reply: Some(reply_tx),
                state: state.clone(),
            },
        );
        self.send(Frame::SynStream {
            stream_id: id,
            associated_to: 0,
            priority: 0,
            slot: 0,
            flags: 0,
            headers: headers.clone(),
        })
        .await?;
        reply_rx.await.map_err(|_| ConnError::Refused(id))?;
        Ok(SpdyStream {
            reader: StreamReader {
                id,
                conn: self.clone(),
                data: data_rx,
                unacked: 0,
            },
            writer: StreamWriter {
                id,
                conn: self.clone(),
                state,
            },
            headers,
        })
    }

    /// Says GOAWAY, shuts our write half down after what is queued, and
    /// gives the peer a moment to close before the reader is stopped.
    pub async fn close(&self) {
        if self.shared.going_away.swap(true, Ordering::AcqRel) {
            return;
        }
        let last = self.shared.last_received.load(Ordering::Acquire);
        let _ = self
            .send(Frame::GoAway {
                last_good_stream_id: last,
                status: goaway::OK,
            })
            .await;
        let _ = self.shared.out.send(Out::Shutdown).await;
        let shared = self.shared.clone();
        tokio::spawn(async move {
            let mut closed = shared.closed.clone();
            let _ = tokio::time::timeout(CLOSE_LINGER, crate::stream::stopped(&mut closed)).await;
            let _ = shared.abort.send(true);
        });
    }

    /// Resolves once the reader has stopped (peer gone, error, or closed).
    pub async fn closed(&self) {
        let mut closed = self.shared.closed.clone();
        crate::stream::stopped(&mut closed).await;
    }

    /// Stops the connection at once, without waiting for the peer.
    pub fn abort(&self) {
        let _ = self.shared.abort.send(true);
        let _ = self.shared.out.try_send(Out::Shutdown);
    }
}

impl IncomingStream {
    /// Accepts the stream with an empty SYN_REPLY (as upstream does).
    pub async fn accept(self) -> Result<SpdyStream, ConnError> {
        self.conn
            .send(Frame::SynReply {
                stream_id: self.id,
                flags: 0,
                headers: Headers::new(),
            })
            .await?;
        Ok(SpdyStream {
            reader: StreamReader {
                id: self.id,
                conn: self.conn.clone(),
                data: self.data,
                unacked: 0,
            },
            writer: StreamWriter {
                id: self.id,
                conn: self.conn,
                state: self.state,
            },
            headers: self.headers,
        })
    }

    /// Refuses the stream with RST_STREAM.
    pub async fn reject(self) {
        self.conn.shared.streams().remove(&self.id);
        let _ = self
            .conn
            .send(Frame::RstStream {
                stream_id: self.id,
                status: rst::REFUSED_STREAM,
            })
            .await;
    }
}

impl StreamReader {
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The next chunk the peer sent, or `None` once it half-closed (FIN),
    /// reset the stream, or the connection ended.
    pub async fn recv(&mut self) -> Option<Bytes> {
        let chunk = self.data.recv().await?;
        self.unacked = self.unacked.saturating_add(chunk.len() as u32);
        if self.unacked >= WINDOW_UPDATE_THRESHOLD {
            let delta = std::mem::take(&mut self.unacked);
            for stream_id in [self.id, 0] {
                let _ = self
                    .conn
                    .shared
                    .out
                    .try_send(Out::Frame(Frame::WindowUpdate { stream_id, delta }));
            }
        }
        Some(chunk)
    }
}

impl StreamWriter {
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Sends `data` as one or more DATA frames.
    pub async fn write(&self, data: &[u8]) -> Result<(), ConnError> {
        if self.state.reset.load(Ordering::Acquire) {
            return Err(ConnError::StreamReset(self.id));
        }
        if self.state.write_closed.load(Ordering::Acquire) {
            return Err(ConnError::Closed);
        }
        for chunk in data.chunks(MAX_DATA_CHUNK) {
            self.conn
                .send(Frame::Data {
                    stream_id: self.id,
                    flags: 0,
                    data: Bytes::copy_from_slice(chunk),
                })
                .await?;
        }
        Ok(())
    }

    /// Half-closes our side with an empty DATA frame carrying FIN; the
    /// peer's reads then end. A second call does nothing.
    pub async fn close(&self) -> Result<(), ConnError> {
        if self.state.write_closed.swap(true, Ordering::AcqRel)
            || self.state.reset.load(Ordering::Acquire)
        {
            return Ok(());
        }
        self.conn.shared.forget_if_done(self.id);
        self.conn
            .send(Frame::Data {
                stream_id: self.id,
                flags: FLAG_FIN,
                data: Bytes::new(),
            })
            .await
    }

    /// Tears the stream down in both directions (RST_STREAM CANCEL).
    pub async fn reset(&self) {
        if self.state.reset.swap(true, Ordering::AcqRel) {
            return;
        }
        self.conn.shared.streams().remove(&self.id);
        let _ = self
            .conn
            .send(Frame::RstStream {
                stream_id: self.id,
                status: rst::CANCEL,
            })
            .await;
    }
}

async fn write_loop<W: AsyncWrite>(shared: Arc<Shared>, write: W, mut rx: mpsc::Receiver<Out>) {
    let mut codec = Codec::new();
    let mut buf = BytesMut::with_capacity(64 * 1024);
    tokio::pin!(write);
    'outer: while let Some(msg) = rx.recv().await {
        let mut next = Some(msg);
        let mut shutdown = false;
        // Batch what is already queued into one write.
        while let Some(msg) = next.take() {
            match msg {
                Out::Frame(frame) => {
                    if let Err(e) = codec.encode(&frame, &mut buf) {
                        tracing::warn!(error = %e, "dropping unencodable SPDY frame");
                    }
                }
                Out::Shutdown => {
                    shutdown = true;
                    break;
                }
            }
            if buf.len() >= 256 * 1024 {
                break;
            }
            next = rx.try_recv().ok();
        }
        if !buf.is_empty() {
            if let Err(e) = write.write_all(&buf).await {
                tracing::debug!(error = %e, "SPDY connection write failed");
                break 'outer;
            }
            buf.clear();
            let _ = write.flush().await;
            shared.touch();
        }
        if shutdown {
            break;
        }
    }
    let _ = write.shutdown().await;
    // Nobody can write any more: wake writers blocked on a full queue.
    rx.close();
}

async fn read_loop<R: AsyncRead>(
    conn: Connection,
    read: R,
    incoming: mpsc::Sender<IncomingStream>,
    idle_timeout: Option<Duration>,
    mut abort: watch::Receiver<bool>,
    closed: watch::Sender<bool>,
) {
    tokio::pin!(read);
    let shared = conn.shared.clone();
    let mut codec = Codec::new();
    let mut buf = BytesMut::with_capacity(64 * 1024);
    'read: loop {
        // Drain every whole frame in the buffer before reading more.
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(frame)) => {
                    shared.touch();
                    if !handle_frame(&conn, frame, &incoming).await {
                        break 'read;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(error = %e, "SPDY protocol error; closing the connection");
                    shared.going_away.store(true, Ordering::Release);
                    let last = shared.last_received.load(Ordering::Acquire);
                    let _ = conn
                        .send(Frame::GoAway {
                            last_good_stream_id: last,
                            status: goaway::PROTOCOL_ERROR,
                        })
                        .await;
                    let _ = shared.out.send(Out::Shutdown).await;
                    break 'read;
                }
            }
        }
        let idle = async {
            match idle_timeout {
                Some(t) => loop {
                    let last =
                        Duration::from_millis(shared.last_activity_ms.load(Ordering::Relaxed));
                    let deadline = shared.started + last + t;
                    if Instant::now() >= deadline {
                        return;
                    }
                    tokio::time::sleep_until(deadline.into()).await;
                },
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            n = read.read_buf(&mut buf) => match n {
                Ok(0) | Err(_) => break 'read,
                Ok(_) => {}
            },
            _ = crate::stream::stopped(&mut abort) => break 'read,
            _ = idle => {
                tracing::debug!("SPDY connection idle for too long; closing it");
                conn.abort();
                break 'read;
            }
        }
    }
    // Every stream's reader sees end of data; pending opens fail.
    let slots: Vec<Slot> = shared.streams().drain().map(|(_, s)| s).collect();
    drop(slots);
    let _ = closed.send(true);
}

/// Handles one inbound frame; false stops the reader.
async fn handle_frame(
    conn: &Connection,
    frame: Frame,
    incoming: &mpsc::Sender<IncomingStream>,
) -> bool {
    let shared = &conn.shared;
    match frame {
        Frame::SynStream {
            stream_id,
            flags,
            headers,
            ..
        } => {
            let peer_parity = if shared.role == Role::Server { 1 } else { 0 };
            let last = shared.last_received.load(Ordering::Acquire);
            if stream_id % 2 != peer_parity || stream_id <= last {
                let _ = conn
                    .send(Frame::RstStream {
                        stream_id,
                        status: rst::PROTOCOL_ERROR,
                    })
                    .await;
                return true;
            }
            shared.last_received.store(stream_id, Ordering::Release);
            if shared.going_away.load(Ordering::Acquire) {
                let _ = conn
                    .send(Frame::RstStream {
                        stream_id,
                        status: rst::REFUSED_STREAM,
                    })
                    .await;
                return true;
            }
            let (data_tx, data_rx) = mpsc::channel(STREAM_QUEUE);
            let state = Arc::new(StreamState {
                reset: AtomicBool::new(false),
                write_closed: AtomicBool::new(flags & FLAG_UNIDIRECTIONAL != 0),
            });
            let remote_done = flags & FLAG_FIN != 0;
            shared.streams().insert(
                stream_id,
                Slot {
                    data: (!remote_done).then_some(data_tx),
                    reply: None,
                    state: state.clone(),
                },
            );
            let stream = IncomingStream {
                id: stream_id,
                headers,
                conn: conn.clone(),
                data: data_rx,
                state,
            };
            if let Err(mpsc::error::SendError(stream)) = incoming.send(stream).await {
                stream.reject().await;
            }
        }
        Frame::SynReply {
            stream_id, flags, ..
        } => {
            let mut streams = shared.streams();
            if let Some(slot) = streams.get_mut(&stream_id) {
                if let Some(reply) = slot.reply.take() {
                    let _ = reply.send(());
                }
                if flags & FLAG_FIN != 0 {
                    slot.data = None;
                }
            }
        }
        Frame::Data {
            stream_id,
            flags,
            data,
        } => {
            let sender = {
                let mut streams = shared.streams();
                match streams.get_mut(&stream_id) {
                    Some(slot) => {
                        let tx = slot.data.clone();
                        if flags & FLAG_FIN != 0 {
                            slot.data = None;
                        }
                        tx
                    }
                    None => None,
                }
            };
            if flags & FLAG_FIN != 0 {
                shared.forget_if_done(stream_id);
            }
            if let Some(tx) = sender
                && !data.is_empty()
            {
                let len = data.len() as u32;
                if tx.send(data).await.is_err() {
                    // Nobody reads this stream any more: still credit the
                    // window, or a strict peer would stall its other streams.
                    for id in [stream_id, 0] {
                        let _ = shared.out.try_send(Out::Frame(Frame::WindowUpdate {
                            stream_id: id,
                            delta: len,
                        }));
                    }
                }
            }
        }
        Frame::RstStream { stream_id, .. } => {
            if let Some(slot) = shared.streams().remove(&stream_id) {
                slot.state.reset.store(true, Ordering::Release);
            }
        }
        Frame::Headers {
            stream_id, flags, ..
        } => {
            if flags & FLAG_FIN != 0
                && let Some(slot) = shared.streams().get_mut(&stream_id)
            {
                slot.data = None;
            }
        }
        Frame::Ping { id } => {
            // Our pings have our parity (server even, client odd); echo the
            // peer's.
            let ours = if shared.role == Role::Server { 0 } else { 1 };
            if id % 2 != ours {
                let _ = conn.send(Frame::Ping { id }).await;
            }
        }
        Frame::GoAway { .. } => {
            shared.going_away.store(true, Ordering::Release);
            return false;
        }
        Frame::Settings { .. } | Frame::WindowUpdate { .. } => {}
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn pair() -> (
        (Connection, mpsc::Receiver<IncomingStream>),
        (Connection, mpsc::Receiver<IncomingStream>),
    ) {
        let (a, b) = tokio::io::duplex(1 << 20);
        (
            Connection::start(a, Role::Client, None),
            Connection::start(b, Role::Server, None),
        )
    }

    #[tokio::test]
    async fn open_accept_exchange_and_half_close() {
        let ((client, _), (_server, mut incoming)) = pair().await;
        let server_task = tokio::spawn(async move {
            let s = incoming.recv().await.unwrap();
            assert_eq!(s.id, 1);
            assert_eq!(s.headers.get("streamtype"), Some("stdin"));
            let mut s = s.accept().await.unwrap();
            let mut got = Vec::new();
            while let Some(c) = s.reader.recv().await {
                got.extend_from_slice(&c);
            }
            s.writer.write(&got).await.unwrap();
            s.writer.close().await.unwrap();
            got
        });
        let mut s = client
            .open_stream(Headers::new().with("streamType", "stdin"))
            .await
            .unwrap();
        let big = vec![7u8; 200_000];
        s.writer.write(&big).await.unwrap();
        s.writer.close().await.unwrap();
        let mut back = Vec::new();
        while let Some(c) = s.reader.recv().await {
            back.extend_from_slice(&c);
        }
        assert_eq!(back, big);
        assert_eq!(server_task.await.unwrap(), big);
    }

    #[tokio::test]
    async fn reset_ends_the_peer_reader_and_rejects_writes() {
        let ((client, _), (_server, mut incoming)) = pair().await;
        let t = tokio::spawn(async move {
            let s = incoming.recv().await.unwrap().accept().await.unwrap();
            s.writer.reset().await;
            s
        });
        let mut s = client.open_stream(Headers::new()).await.unwrap();
        assert_eq!(s.reader.recv().await, None);
        // The reset may race the write; it must fail once the RST arrived.
        let _server_stream = t.await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(matches!(
            s.writer.write(b"x").await,
            Err(ConnError::StreamReset(_))
        ));
    }

    #[tokio::test]
    async fn rejected_stream_fails_to_open() {
        let ((client, _), (_server, mut incoming)) = pair().await;
        tokio::spawn(async move { incoming.recv().await.unwrap().reject().await });
        assert!(matches!(
            client.open_stream(Headers::new()).await,
            Err(ConnError::Refused(1))
        ));
    }

    #[tokio::test]
    async fn goaway_closes_the_peer() {
        let ((client, _), (server, _incoming)) = pair().await;
        client.close().await;
        tokio::time::timeout(Duration::from_secs(5), server.closed())
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn idle_connections_are_closed() {
        let (a, _b) = tokio::io::duplex(1024);
        let (conn, _) = Connection::start(a, Role::Server, Some(Duration::from_millis(100)));
        tokio::time::timeout(Duration::from_secs(5), conn.closed())
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn garbage_gets_goaway_not_a_panic() {
        let (mut a, b) = tokio::io::duplex(1024);
        let (conn, _) = Connection::start(b, Role::Server, None);
        a.write_all(&[0x80, 9, 0, 1, 0, 0, 0, 0]).await.unwrap();
        let mut resp = Vec::new();
        a.read_to_end(&mut resp).await.unwrap();
        // GOAWAY with PROTOCOL_ERROR, then the write half closes.
        assert_eq!(&resp[..4], &[0x80, 3, 0, 7]);
        assert_eq!(&resp[12..16], &1u32.to_be_bytes());
        conn.closed().await;
    }

    #[tokio::test]
    async fn peer_pings_are_echoed() {
        let (mut a, b) = tokio::io::duplex(1024);
        let (_conn, _) = Connection::start(b, Role::Server, None);
        a.write_all(&[0x80, 3, 0, 6, 0, 0, 0, 4, 0, 0, 0, 5])
            .await
            .unwrap();
        let mut resp = [0u8; 12];
        a.read_exact(&mut resp).await.unwrap();
        assert_eq!(resp, [0x80, 3, 0, 6, 0, 0, 0, 4, 0, 0, 0, 5]);
    }
}
