//! The HTTP side: routes `/exec/{token}`, `/attach/{token}` and
//! `/portforward/{token}` (GET or POST), spends the token, negotiates the
//! protocol and upgrades the connection to SPDY/3.1 or WebSocket.
//!
//! SPDY negotiation is upstream's httpstream.Handshake: the client lists
//! versions in `X-Stream-Protocol-Version` (repeated or comma-separated,
//! most preferred first); the first one the server speaks is echoed back in
//! the 101 response. No header is a 400; no common version a 403 listing
//! ours in `X-Accepted-Stream-Protocol-Versions`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONNECTION, UPGRADE};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role as WsRole;

use super::backend::Backend;
use super::cache::{Pending, RequestCache};
use super::remotecommand::{self, Command, Options};
use super::spdy::{Connection, Role};
use super::tunnel::WsTunnel;
use super::ws::PortForwardWs;
use super::{StreamConfig, portforward, ws};

const STREAM_PROTOCOL_HEADER: &str = "x-stream-protocol-version";
const ACCEPTED_PROTOCOLS_HEADER: &str = "x-accepted-stream-protocol-versions";

/// SPDY remotecommand versions, best first. v5 over SPDY is v4 (its close
/// signal is a WebSocket feature), as upstream.
const SPDY_REMOTECOMMAND: &[(&str, u8)] = &[
    ("v5.channel.k8s.io", 5),
    ("v4.channel.k8s.io", 4),
    ("v3.channel.k8s.io", 3),
    ("v2.channel.k8s.io", 2),
    ("channel.k8s.io", 1),
];
const SPDY_PORTFORWARD: &[(&str, u8)] = &[("portforward.k8s.io", 1)];

pub(crate) struct Shared {
    pub config: StreamConfig,
    pub backend: Arc<dyn Backend>,
    pub cache: RequestCache,
    /// The path prefix routes live under ("" or "/something").
    pub prefix: String,
    pub shutdown: watch::Receiver<bool>,
}

type Resp = Response<Full<Bytes>>;

fn text(status: StatusCode, msg: impl Into<String>) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(msg.into() + "\n")));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn header_values(h: &HeaderMap, name: &str) -> Vec<String> {
    h.get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .collect()
}

fn header_contains(h: &HeaderMap, name: http::header::HeaderName, needle: &str) -> bool {
    h.get_all(name).iter().any(|v| {
        v.to_str()
            .map(|v| v.to_ascii_lowercase().contains(needle))
            .unwrap_or(false)
    })
}

fn is_websocket(h: &HeaderMap) -> bool {
    h.get(UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
        && header_contains(h, CONNECTION, "upgrade")
}

/// The query parameters clients send (client-go's PodExecOptions); the
/// stored request wins, they are only compared with it.
fn query_pairs(req: &Request<Incoming>) -> Vec<(String, String)> {
    req.uri()
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default()
}

fn query_flag(q: &[(String, String)], name: &str) -> Option<bool> {
    q.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v == "1" || v.eq_ignore_ascii_case("true"))
}

pub(crate) async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Resp, Infallible> {
    Ok(route(shared, req).await)
}

async fn route(shared: Arc<Shared>, req: Request<Incoming>) -> Resp {
    if req.method() != Method::GET && req.method() != Method::POST {
        return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    }
    let Some(rest) = req.uri().path().strip_prefix(shared.prefix.as_str()) else {
        return text(StatusCode::NOT_FOUND, "not found");
    };
    let mut parts = rest.trim_start_matches('/').splitn(2, '/');
    let (kind, token) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if !matches!(kind, "exec" | "attach" | "portforward") || token.is_empty() || token.contains('/')
    {
        return text(StatusCode::NOT_FOUND, "not found");
    }
    // Spent whatever follows, as upstream: a token is good for one try.
    let pending = match shared.cache.consume(token) {
        Some(p) => p,
        None => return text(StatusCode::NOT_FOUND, "not found"),
    };
    let query = query_pairs(&req);
    match (kind, pending) {
        ("exec", Pending::Exec(e)) => {
            let opts = Options {
                stdin: e.stdin,
                stdout: e.stdout,
                stderr: e.stderr,
                tty: e.tty,
            };
            log_query_mismatch(&query, &opts, Some(&e.cmd));
            let command = Command::Exec {
                container_id: e.container_id,
                cmd: e.cmd,
            };
            upgrade_remotecommand(shared, req, opts, command)
        }
        ("attach", Pending::Attach(a)) => {
            let opts = Options {
                stdin: a.stdin,
                stdout: a.stdout,
                stderr: a.stderr,
                tty: a.tty,
            };
            log_query_mismatch(&query, &opts, None);
            let command = Command::Attach {
                container_id: a.container_id,
            };
            upgrade_remotecommand(shared, req, opts, command)
        }
        ("portforward", Pending::PortForward(p)) => {
            let ports: Vec<u16> = p
                .port
                .iter()
                .filter_map(|&p| u16::try_from(p).ok().filter(|&p| p > 0))
                .collect();
            upgrade_portforward(shared, req, p.pod_sandbox_id, ports, &query)
        }
        _ => text(StatusCode::NOT_FOUND, "not found"),
    }
}

fn log_query_mismatch(query: &[(String, String)], opts: &Options, cmd: Option<&Vec<String>>) {
    let flags = [
        ("stdin", opts.stdin),
        ("stdout", opts.stdout),
        ("stderr", opts.stderr),
        ("tty", opts.tty),
    ];
    for (name, stored) in flags {
        if let Some(asked) = query_flag(query, name)
            && asked != stored
        {
            tracing::debug!(
                param = name,
                asked,
                stored,
                "query parameter differs from the CRI request; using the request"
            );
        }
    }
    if let Some(cmd) = cmd {
        let asked: Vec<&str> = query
            .iter()
            .filter(|(k, _)| k == "command")
            .map(|(_, v)| v.as_str())
            .collect();
        if !asked.is_empty() && asked != cmd.iter().map(String::as_str).collect::<Vec<_>>() {
            tracing::debug!(
                ?asked,
                ?cmd,
                "query command differs from the CRI request; using the request"
            );
        }
    }
}

/// Upstream's Handshake: picks the first client version we speak.
fn spdy_handshake(
    h: &HeaderMap,
    supported: &'static [(&'static str, u8)],
) -> Result<(&'static str, u8), Box<Resp>> {
    let offered = header_values(h, STREAM_PROTOCOL_HEADER);
    if offered.is_empty() {
        return Err(Box::new(text(
            StatusCode::BAD_REQUEST,
            "unable to upgrade: header X-Stream-Protocol-Version does not exist or is empty",
        )));
    }
    for o in &offered {
        if let Some(&(name, v)) = supported.iter().find(|(n, _)| n == o) {
            return Ok((name, v));
        }
    }
    let ours: Vec<&str> = supported.iter().map(|(n, _)| *n).collect();
    let mut r = text(
        StatusCode::FORBIDDEN,
        format!(
            "unable to upgrade: unable to negotiate protocol: client supports {offered:?}, server accepts {ours:?}"
        ),
    );
    for n in ours {
        r.headers_mut()
            .append(ACCEPTED_PROTOCOLS_HEADER, HeaderValue::from_static(n));
    }
    Err(Box::new(r))
}

fn spdy_upgrade_ok(h: &HeaderMap) -> bool {
    header_contains(h, CONNECTION, "upgrade") && header_contains(h, UPGRADE, "spdy/3.1")
}

fn switching(upgrade: &'static str) -> Resp {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    r.headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    r.headers_mut()
        .insert(UPGRADE, HeaderValue::from_static(upgrade));
    r
}

/// The ports of a channel-protocol WebSocket port forward whose CRI request
/// named none: that protocol needs them up front, and the URL's `port`
/// parameters may carry them (upstream NewV4Options).
fn query_ports(query: &[(String, String)]) -> Result<Vec<u16>, Box<Resp>> {
    let mut ports = Vec::new();
    for (k, v) in query {
        if k == "port" {
            for p in v.split(',') {
                match p.trim().parse::<u16>() {
                    Ok(p) if p > 0 => ports.push(p),
                    _ => {
                        return Err(Box::new(text(
                            StatusCode::BAD_REQUEST,
                            format!("unable to parse {p:?} as a port"),
                        )));
                    }
                }
            }
        }
    }
    if ports.is_empty() {
        return Err(Box::new(text(
            StatusCode::BAD_REQUEST,
            "query parameter \"port\" is required",
        )));
    }
    Ok(ports)
}

/// Prepares a WebSocket 101, or says why not. `unnamed` is what a client
/// offering no subprotocol gets.
fn websocket_accept<T: Copy>(
    req: &Request<Incoming>,
    supported: &[(&'static str, T)],
    unnamed: T,
) -> Result<(Resp, T), Box<Resp>> {
    let h = req.headers();
    let Some(key) = h.get("sec-websocket-key") else {
        return Err(Box::new(text(
            StatusCode::BAD_REQUEST,
            "missing Sec-WebSocket-Key header",
        )));
    };
    if h.get("sec-websocket-version")
        .is_some_and(|v| v.as_bytes() != b"13")
    {
        let mut r = text(
            StatusCode::UPGRADE_REQUIRED,
            "unsupported WebSocket version; 13 is spoken",
        );
        r.headers_mut()
            .insert("sec-websocket-version", HeaderValue::from_static("13"));
        return Err(Box::new(r));
    }
    let offered = header_values(h, "sec-websocket-protocol");
    let Some((name, proto)) = ws::negotiate(&offered, supported, unnamed) else {
        let ours: Vec<&str> = supported.iter().map(|(n, _)| *n).collect();
        return Err(Box::new(text(
            StatusCode::BAD_REQUEST,
            format!("requested protocol(s) are not supported: {offered:?}; supports {ours:?}"),
        )));
    };
    let mut r = switching("websocket");
    if let Ok(v) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
        r.headers_mut().insert("sec-websocket-accept", v);
    }
    if let Some(name) = name {
        r.headers_mut()
            .insert("sec-websocket-protocol", HeaderValue::from_static(name));
    }
    Ok((r, proto))
}

/// Stops a SPDY connection's tasks when the session future is dropped
/// (server shutdown), not only when the peer leaves.
struct AbortOnDrop(Connection);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs `session` on the upgraded connection once hyper hands it over,
/// until it ends or the server shuts down.
fn spawn_upgraded<F, Fut>(shared: &Shared, mut req: Request<Incoming>, session: F)
where
    F: FnOnce(TokioIo<hyper::upgrade::Upgraded>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let on_upgrade = hyper::upgrade::on(&mut req);
    let mut shutdown = shared.shutdown.clone();
    tokio::spawn(async move {
        let io = match on_upgrade.await {
            Ok(u) => TokioIo::new(u),
            Err(e) => {
                tracing::debug!(error = %e, "connection upgrade failed");
                return;
            }
        };
        tokio::select! {
            _ = session(io) => {}
            _ = super::stopped(&mut shutdown) => {}
        }
    });
}

fn upgrade_remotecommand(
    shared: Arc<Shared>,
    req: Request<Incoming>,
    opts: Options,
    command: Command,
) -> Resp {
    let backend = shared.backend.clone();
    if is_websocket(req.headers()) {
        let (resp, proto) = match websocket_accept(&req, ws::REMOTECOMMAND_PROTOCOLS, ws::UNNAMED) {
            Ok(v) => v,
            Err(r) => return *r,
        };
        let idle = nonzero(shared.config.stream_idle_timeout);
        spawn_upgraded(&shared, req, move |io| async move {
            let socket = WebSocketStream::from_raw_socket(io, WsRole::Server, None).await;
            remotecommand::serve_ws(socket, proto, opts, command, backend, idle).await;
        });
        return resp;
    }
    let (name, version) = match spdy_handshake(req.headers(), SPDY_REMOTECOMMAND) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    if !spdy_upgrade_ok(req.headers()) {
        return text(
            StatusCode::BAD_REQUEST,
            "unable to upgrade: missing upgrade headers in request",
        );
    }
    let idle = shared.config.stream_idle_timeout;
    let creation = shared.config.stream_creation_timeout;
    spawn_upgraded(&shared, req, move |io| async move {
        let (conn, incoming) = Connection::start(io, Role::Server, nonzero(idle));
        let _guard = AbortOnDrop(conn.clone());
        if let Err(e) =
            remotecommand::serve_spdy(conn, incoming, version, opts, command, backend, creation)
                .await
        {
            tracing::warn!(error = %e, "streaming session not started");
        }
    });
    let mut resp = switching("SPDY/3.1");
    resp.headers_mut()
        .insert(STREAM_PROTOCOL_HEADER, HeaderValue::from_static(name));
    resp
}

fn upgrade_portforward(
    shared: Arc<Shared>,
    req: Request<Incoming>,
    pod_sandbox_id: String,
    ports: Vec<u16>,
    query: &[(String, String)],
) -> Resp {
    let backend = shared.backend.clone();
    let idle = shared.config.stream_idle_timeout;
    let creation = shared.config.stream_creation_timeout;
    if is_websocket(req.headers()) {
        let unnamed = PortForwardWs::Channels(ws::UNNAMED);
        let (resp, transport) = match websocket_accept(&req, ws::PORTFORWARD_PROTOCOLS, unnamed) {
            Ok(v) => v,
            Err(r) => return *r,
        };
        match transport {
            // Each SPDY stream pair names its port, so none are needed up
            // front: no ports in the request means any, as on plain SPDY.
            PortForwardWs::SpdyTunnel => spawn_upgraded(&shared, req, move |io| async move {
                let socket = WebSocketStream::from_raw_socket(io, WsRole::Server, None).await;
                spdy_portforward(
                    WsTunnel::new(socket),
                    pod_sandbox_id,
                    ports,
                    backend,
                    idle,
                    creation,
                )
                .await;
            }),
            PortForwardWs::Channels(proto) => {
                let ports = if ports.is_empty() {
                    match query_ports(query) {
                        Ok(p) => p,
                        Err(r) => return *r,
                    }
                } else {
                    ports
                };
                let idle = nonzero(idle);
                spawn_upgraded(&shared, req, move |io| async move {
                    let socket = WebSocketStream::from_raw_socket(io, WsRole::Server, None).await;
                    portforward::serve_ws(socket, proto, pod_sandbox_id, ports, backend, idle)
                        .await;
                });
            }
        }
        return resp;
    }
    let (name, _) = match spdy_handshake(req.headers(), SPDY_PORTFORWARD) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    if !spdy_upgrade_ok(req.headers()) {
        return text(
            StatusCode::BAD_REQUEST,
            "unable to upgrade: missing upgrade headers in request",
        );
    }
    spawn_upgraded(&shared, req, move |io| {
        spdy_portforward(io, pod_sandbox_id, ports, backend, idle, creation)
    });
    let mut resp = switching("SPDY/3.1");
    resp.headers_mut()
        .insert(STREAM_PROTOCOL_HEADER, HeaderValue::from_static(name));
    resp
}

/// A SPDY port-forward session on `io`: the upgraded connection itself, or
/// the byte stream tunnelled through a WebSocket.
async fn spdy_portforward<T>(
    io: T,
    pod_sandbox_id: String,
    ports: Vec<u16>,
    backend: Arc<dyn Backend>,
    idle: Duration,
    creation: Duration,
) where
    T: AsyncRead + AsyncWrite + Send + 'static,
{
    let (conn, incoming) = Connection::start(io, Role::Server, nonzero(idle));
    let _guard = AbortOnDrop(conn.clone());
    portforward::serve_spdy(conn, incoming, pod_sandbox_id, ports, backend, creation).await;
}

fn nonzero(d: Duration) -> Option<Duration> {
    (!d.is_zero()).then_some(d)
}
