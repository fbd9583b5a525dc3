//! The CRI streaming server: where Exec, Attach and PortForward happen.
//!
//! Those CRI calls do not stream over gRPC. The runtime validates the
//! request, stores it under a random single-use token that expires after a
//! minute, and answers with a URL on this server (`{base}/exec/{token}`,
//! `/attach/{token}`, `/portforward/{token}`). The client — the kubelet
//! proxying kubectl, crictl, critest — then connects there with an HTTP
//! upgrade, and the session runs on the upgraded connection. This is the
//! kubelet's `k8s.io/kubelet/pkg/cri/streaming` server, which containerd and
//! CRI-O embed, spoken on the wire the same way:
//!
//! - **SPDY/3.1** (`Upgrade: SPDY/3.1`, version chosen through
//!   `X-Stream-Protocol-Version`): exec/attach in `v5.channel.k8s.io`
//!   (= v4 on SPDY), `v4` (JSON `metav1.Status` with the exit code on the
//!   error stream), `v3` (adds the resize stream), `v2` and `channel.k8s.io`
//!   (text errors); port forwarding in `portforward.k8s.io`.
//! - **WebSocket** (`Sec-WebSocket-Protocol`): exec/attach in
//!   `v5.channel.k8s.io` (stdin close signal), `v4.channel.k8s.io`,
//!   `v4.base64.channel.k8s.io`, `v3`/`v2.channel.k8s.io`,
//!   `channel.k8s.io`, `base64.channel.k8s.io` or none; port forwarding in
//!   `SPDY/3.1+portforward.k8s.io` (the SPDY session tunnelled in binary
//!   messages: client-go's WebSocket dialer, kubectl 1.31+, critest
//!   `--websocket-portforward`), or in `v4.channel.k8s.io`, `v4.base64…`,
//!   `channel.k8s.io`, `base64…` (channels per port).
//!
//! The module knows nothing of containers: the daemon implements
//! [`Backend`] (exec a command, attach to a container, connect to a port in
//! a pod) on plain async byte streams, and this module does the protocols.
//!
//! ## Implementing a backend
//!
//! Each call gets the session's streams and lasts as long as the session;
//! see [`Backend`] for what exec, attach and port forwarding are expected to
//! do. The server's side of the contract:
//!
//! - stdin reaches end of file when the client closes it (SPDY half-close,
//!   WebSocket v5 close signal) or leaves;
//! - writes to stdout/stderr wait while the client reads slowly and fail
//!   (broken pipe) once it has left;
//! - when the call returns, what was written is delivered, then the result
//!   goes on the error stream (exit code, or the error's message) and the
//!   connection is closed;
//! - a port-forward error reaches the client as text on that connection's
//!   error stream; `BrokenPipe`/`ConnectionReset` from the pod side resets
//!   the forwarded connection instead, and the session goes on.
//!
//! ```text
//! let server = StreamServer::start(StreamConfig::default(), Arc::new(MyBackend)).await?;
//! // in the Exec RPC:
//! let resp = server.get_exec(&req).map_err(|e| Status::new(e.grpc_code(), e.to_string()))?;
//! ```
//!
//! Files: `http.rs` routes and upgrades; `remotecommand.rs` runs exec and
//! attach sessions on either transport; `portforward.rs` port forwarding;
//! `spdy/` the SPDY framing and connection; `ws.rs` the WebSocket channel
//! protocol; `tunnel.rs` a WebSocket as the SPDY byte stream it tunnels; `status.rs` the error-stream status; `cache.rs` the tokens;
//! `backend.rs` the trait.

mod backend;
mod cache;
mod http;
mod portforward;
mod remotecommand;
pub mod spdy;
mod status;
mod tunnel;
mod ws;

#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use berth_proto::v1::{
    AttachRequest, AttachResponse, ExecRequest, ExecResponse, PortForwardRequest,
    PortForwardResponse,
};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use backend::{
    Backend, BackendError, ExitCode, Input, Output, PortStream, StreamIo, TerminalSize,
};
pub use cache::CacheError;

/// Settings of the streaming server; `Default` is containerd's: loopback,
/// a free port, upstream's timeouts.
#[derive(Debug, Clone)]
pub struct StreamConfig {
    /// Where to listen; port 0 picks a free one.
    pub addr: SocketAddr,
    /// The URL clients are given, when it is not `http://{addr}` (behind a
    /// proxy, or with a path prefix that routes then live under).
    pub base_url: Option<String>,
    /// A connection with no traffic either way for this long is closed
    /// (upstream: 4 hours). Zero disables it.
    pub stream_idle_timeout: Duration,
    /// How long a SPDY client has to open its streams (upstream: 30 s).
    pub stream_creation_timeout: Duration,
    /// How long a URL stays valid before it is used (upstream: 1 minute).
    pub token_ttl: Duration,
    /// Serve HTTPS with this configuration (URLs then say `https`). Its ALPN
    /// list is replaced by `http/1.1`: upgrades need HTTP/1.1.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl Default for StreamConfig {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            base_url: None,
            stream_idle_timeout: Duration::from_secs(4 * 3600),
            stream_creation_timeout: Duration::from_secs(30),
            token_ttl: Duration::from_secs(60),
            tls: None,
        }
    }
}

/// Errors of the streaming server's API.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The CRI request is malformed; the message says which field.
    #[error("{0}")]
    InvalidArgument(&'static str),
    /// Too many URLs handed out and not yet used.
    #[error(transparent)]
    ResourceExhausted(CacheError),
    /// No token could be made.
    #[error(transparent)]
    Internal(CacheError),
    #[error("streaming server: cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("streaming server: base URL {url:?} is not an http(s) URL")]
    BadBaseUrl { url: String },
}

impl StreamError {
    /// The gRPC status code the CRI call should answer with.
    pub fn grpc_code(&self) -> tonic::Code {
        match self {
            StreamError::InvalidArgument(_) | StreamError::BadBaseUrl { .. } => {
                tonic::Code::InvalidArgument
            }
            StreamError::ResourceExhausted(_) => tonic::Code::ResourceExhausted,
            StreamError::Internal(_) | StreamError::Bind { .. } => tonic::Code::Internal,
        }
    }
}

impl From<CacheError> for StreamError {
    fn from(e: CacheError) -> Self {
        match e {
            CacheError::Full => StreamError::ResourceExhausted(e),
            CacheError::Random(_) => StreamError::Internal(e),
        }
    }
}

/// A running streaming server.
pub struct StreamServer {
    shared: Arc<http::Shared>,
    local_addr: SocketAddr,
    base_url: String,
    shutdown: watch::Sender<bool>,
    accept: JoinHandle<()>,
}

impl StreamServer {
    /// Binds `config.addr` and serves on the current tokio runtime until
    /// [`StreamServer::shutdown`] (or drop).
    pub async fn start(
        config: StreamConfig,
        backend: Arc<dyn Backend>,
    ) -> Result<StreamServer, StreamError> {
        let listener =
            TcpListener::bind(config.addr)
                .await
                .map_err(|source| StreamError::Bind {
                    addr: config.addr,
                    source,
                })?;
        let local_addr = listener.local_addr().map_err(|source| StreamError::Bind {
            addr: config.addr,
            source,
        })?;
        let scheme = if config.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let (base_url, prefix) = match &config.base_url {
            None => (format!("{scheme}://{local_addr}"), String::new()),
            Some(url) => split_base_url(url)?,
        };
        let tls = config.tls.as_ref().map(|c| {
            let mut c = (**c).clone();
            c.alpn_protocols = vec![b"http/1.1".to_vec()];
            tokio_rustls::TlsAcceptor::from(Arc::new(c))
        });
        let (shutdown, shutdown_rx) = watch::channel(false);
        let shared = Arc::new(http::Shared {
            cache: cache::RequestCache::new(config.token_ttl),
            config,
            backend,
            prefix,
            shutdown: shutdown_rx.clone(),
        });
        let accept = tokio::spawn(accept_loop(listener, tls, shared.clone(), shutdown_rx));
        tracing::info!(%local_addr, %base_url, "CRI streaming server listening");
        Ok(StreamServer {
            shared,
            local_addr,
            base_url,
            shutdown,
            accept,
        })
    }

    /// The address the server listens on (with the port picked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The base of the URLs handed out, e.g. `http://127.0.0.1:34567`.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    fn url(&self, kind: &str, token: &str) -> String {
        format!("{}{}/{kind}/{token}", self.base_url, self.shared.prefix)
    }

    /// Validates an Exec request and returns the URL to stream it on.
    pub fn get_exec(&self, req: &ExecRequest) -> Result<ExecResponse, StreamError> {
        if req.container_id.is_empty() {
            return Err(StreamError::InvalidArgument(
                "missing required container_id",
            ));
        }
        if req.cmd.is_empty() || req.cmd[0].is_empty() {
            return Err(StreamError::InvalidArgument("cmd must not be empty"));
        }
        validate_streams(req.tty, req.stdin, req.stdout, req.stderr)?;
        let token = self
            .shared
            .cache
            .insert(cache::Pending::Exec(req.clone()))?;
        Ok(ExecResponse {
            url: self.url("exec", &token),
        })
    }

    /// Validates an Attach request and returns the URL to stream it on.
    pub fn get_attach(&self, req: &AttachRequest) -> Result<AttachResponse, StreamError> {
        if req.container_id.is_empty() {
            return Err(StreamError::InvalidArgument(
                "missing required container_id",
            ));
        }
        validate_streams(req.tty, req.stdin, req.stdout, req.stderr)?;
        let token = self
            .shared
            .cache
            .insert(cache::Pending::Attach(req.clone()))?;
        Ok(AttachResponse {
            url: self.url("attach", &token),
        })
    }

    /// Validates a PortForward request and returns the URL to stream it on.
    pub fn get_port_forward(
        &self,
        req: &PortForwardRequest,
    ) -> Result<PortForwardResponse, StreamError> {
        if req.pod_sandbox_id.is_empty() {
            return Err(StreamError::InvalidArgument(
                "missing required pod_sandbox_id",
            ));
        }
        if req.port.iter().any(|&p| !(1..=65535).contains(&p)) {
            return Err(StreamError::InvalidArgument(
                "port must be between 1 and 65535",
            ));
        }
        let token = self
            .shared
            .cache
            .insert(cache::Pending::PortForward(req.clone()))?;
        Ok(PortForwardResponse {
            url: self.url("portforward", &token),
        })
    }

    /// Stops accepting, ends every session, and waits for the accept loop.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        let _ = (&mut self.accept).await;
    }
}

impl Drop for StreamServer {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

fn validate_streams(tty: bool, stdin: bool, stdout: bool, stderr: bool) -> Result<(), StreamError> {
    if tty && stderr {
        // A terminal has one output; there is nothing to demultiplex.
        return Err(StreamError::InvalidArgument(
            "tty and stderr cannot both be true",
        ));
    }
    if !stdin && !stdout && !stderr {
        return Err(StreamError::InvalidArgument(
            "one of stdin, stdout, or stderr must be set",
        ));
    }
    Ok(())
}

/// Splits a base URL into scheme+authority and a path prefix without a
/// trailing slash.
fn split_base_url(url: &str) -> Result<(String, String), StreamError> {
    let bad = || StreamError::BadBaseUrl {
        url: url.to_owned(),
    };
    let uri: ::http::Uri = url.parse().map_err(|_| bad())?;
    let scheme = uri.scheme_str().ok_or_else(bad)?;
    if scheme != "http" && scheme != "https" {
        return Err(bad());
    }
    let authority = uri.authority().ok_or_else(bad)?;
    let prefix = uri.path().trim_end_matches('/').to_owned();
    Ok((format!("{scheme}://{authority}"), prefix))
}

/// A TLS handshake that takes longer than this is abandoned.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

async fn accept_loop(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shared: Arc<http::Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(v) => v,
                Err(e) => {
                    // Out of descriptors and the like: back off, keep serving.
                    tracing::warn!(error = %e, "streaming server accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stopped(&mut shutdown) => return,
        };
        let _ = tcp.set_nodelay(true);
        let shared = shared.clone();
        let shutdown = shutdown.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => serve_http(TokioIo::new(tcp), peer, shared, shutdown).await,
                Some(acceptor) => {
                    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            serve_http(TokioIo::new(stream), peer, shared, shutdown).await
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
        });
    }
}

async fn serve_http<I>(
    io: I,
    peer: SocketAddr,
    shared: Arc<http::Shared>,
    mut shutdown: watch::Receiver<bool>,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = service_fn(move |req| http::handle(shared.clone(), req));
    let conn = http1::Builder::new()
        .serve_connection(io, service)
        .with_upgrades();
    tokio::select! {
        r = conn => if let Err(e) = r {
            tracing::debug!(%peer, error = %e, "streaming HTTP connection ended with an error");
        },
        _ = stopped(&mut shutdown) => {}
    }
}

/// Resolves once `flag` turns true (or its sender is gone).
pub(crate) async fn stopped(flag: &mut watch::Receiver<bool>) {
    let _ = flag.wait_for(|s| *s).await;
}
