//! One run of a probe or hook action against a container.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::{
    Container, ExecAction, GRPCAction, HTTPGetAction, LifecycleHandler, Probe, TCPSocketAction,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use thiserror::Error;
use tokio::net::TcpStream;

use crate::cri_client::{CriClient, CriClientError};

/// Upstream sends this user agent (with its version) so that applications
/// can tell probes from users.
pub(crate) const USER_AGENT: &str = "kube-probe/berth";

/// Why a probe could not give an answer.
#[derive(Debug, Error)]
pub enum ProbeError {
    #[error("the probe has no action (exec, httpGet, tcpSocket or grpc)")]
    NoAction,
    #[error("{0} probes are not supported yet")]
    Unsupported(&'static str),
    #[error("port {name:?} is not among the container's named ports")]
    NamedPort { name: String },
    #[error("port {0} is out of range 1-65535")]
    PortRange(i64),
    #[error("host {host:?}: {reason}")]
    Host { host: String, reason: String },
    #[error("header {name:?}: {source}")]
    Header { name: String, source: http::Error },
    #[error("gRPC mode {0:?} is neither TLS nor Plaintext")]
    GrpcMode(String),
    #[error("scheme {0:?} is neither HTTP nor HTTPS")]
    Scheme(String),
    #[error("exec in the container: {0}")]
    Exec(#[source] CriClientError),
}

/// The answer of one run, as upstream's `probe.Result`.
#[derive(Debug)]
pub enum ProbeResult {
    Success,
    Failure(String),
    /// The probe could not run; upstream neither counts it as success nor
    /// as failure.
    Unknown(ProbeError),
}

impl ProbeResult {
    pub fn is_success(&self) -> bool {
        matches!(self, ProbeResult::Success)
    }
}

/// What a probe or a hook does, borrowed from the spec.
#[derive(Clone, Copy, Debug)]
pub enum Action<'a> {
    Exec(&'a ExecAction),
    HttpGet(&'a HTTPGetAction),
    TcpSocket(&'a TCPSocketAction),
    Grpc(&'a GRPCAction),
    /// A hook's `sleep` action.
    Sleep(i64),
}

impl<'a> Action<'a> {
    pub fn of_probe(p: &'a Probe) -> Result<Self, ProbeError> {
        if let Some(e) = &p.exec {
            Ok(Action::Exec(e))
        } else if let Some(h) = &p.http_get {
            Ok(Action::HttpGet(h))
        } else if let Some(t) = &p.tcp_socket {
            Ok(Action::TcpSocket(t))
        } else if let Some(g) = &p.grpc {
            Ok(Action::Grpc(g))
        } else {
            Err(ProbeError::NoAction)
        }
    }

    pub fn of_hook(h: &'a LifecycleHandler) -> Result<Self, ProbeError> {
        if let Some(e) = &h.exec {
            Ok(Action::Exec(e))
        } else if let Some(g) = &h.http_get {
            Ok(Action::HttpGet(g))
        } else if let Some(t) = &h.tcp_socket {
            Ok(Action::TcpSocket(t))
        } else if let Some(s) = &h.sleep {
            Ok(Action::Sleep(s.seconds))
        } else {
            Err(ProbeError::NoAction)
        }
    }
}

/// The container an action runs against.
#[derive(Clone, Debug)]
pub struct Target<'a> {
    /// Needed by exec actions only.
    pub cri: Option<&'a CriClient>,
    pub container_id: &'a str,
    pub container: &'a Container,
    /// The pod's IP, the default host of network actions; the node's for
    /// hostNetwork pods.
    pub pod_ip: IpAddr,
}

/// Runs `action` once against `target`, giving up after `timeout`.
pub async fn run(action: Action<'_>, target: &Target<'_>, timeout: Duration) -> ProbeResult {
    match action {
        Action::Exec(e) => exec(e, target, timeout).await,
        Action::TcpSocket(t) => {
            let port = IntOrString::clone(&t.port);
            match address(t.host.as_deref(), &port, target, timeout).await {
                Ok((addr, _)) => tcp(addr, timeout).await,
                Err(e) => ProbeResult::Unknown(e),
            }
        }
        Action::HttpGet(h) => http_get(h, target, timeout).await,
        Action::Grpc(g) => match u16::try_from(g.port).ok().filter(|p| *p != 0) {
            // gRPC probes have no host: always the pod.
            Some(port) => {
                super::grpc::check(g, SocketAddr::new(target.pod_ip, port), timeout).await
            }
            None => ProbeResult::Unknown(ProbeError::PortRange(i64::from(g.port))),
        },
        Action::Sleep(seconds) => {
            let d = Duration::from_secs(u64::try_from(seconds).unwrap_or(0));
            tokio::time::sleep(d.min(timeout)).await;
            ProbeResult::Success
        }
    }
}

async fn exec(e: &ExecAction, target: &Target<'_>, timeout: Duration) -> ProbeResult {
    let Some(cri) = target.cri else {
        return ProbeResult::Unknown(ProbeError::Unsupported("exec without a runtime"));
    };
    let cmd = e.command.clone().unwrap_or_default();
    let seconds = i64::try_from(timeout.as_secs().max(1)).unwrap_or(i64::MAX);
    match cri.exec_sync(target.container_id, cmd, seconds).await {
        Ok(r) if r.exit_code == 0 => ProbeResult::Success,
        Ok(r) => ProbeResult::Failure(format!(
            "command exited {}: {}",
            r.exit_code,
            String::from_utf8_lossy(&r.stdout).trim()
        )),
        // Upstream counts an exec that outlives its timeout as a failure.
        Err(e) if e.code() == Some(tonic::Code::DeadlineExceeded) => {
            ProbeResult::Failure(format!("command timed out after {timeout:?}"))
        }
        Err(e) => ProbeResult::Unknown(ProbeError::Exec(e)),
    }
}

/// The container port `port` names: a number, or the name of one of
/// `container.ports`.
pub fn resolve_port(port: &IntOrString, container: &Container) -> Result<u16, ProbeError> {
    let n = match port {
        IntOrString::Int(n) => i64::from(*n),
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .map(|p| i64::from(p.container_port))
            .ok_or_else(|| ProbeError::NamedPort { name: name.clone() })?,
    };
    u16::try_from(n)
        .ok()
        .filter(|p| *p != 0)
        .ok_or(ProbeError::PortRange(n))
}

/// Where a network action goes, and the authority (`host:port`) it names:
/// the probe's `host` (an IP, or a name resolved on the node, as upstream)
/// or else the pod's IP.
async fn address(
    host: Option<&str>,
    port: &IntOrString,
    target: &Target<'_>,
    timeout: Duration,
) -> Result<(SocketAddr, String), ProbeError> {
    let port = resolve_port(port, target.container)?;
    let Some(host) = host.filter(|h| !h.is_empty()) else {
        let addr = SocketAddr::new(target.pod_ip, port);
        return Ok((addr, addr.to_string()));
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        let addr = SocketAddr::new(ip, port);
        return Ok((addr, addr.to_string()));
    }
    let host_err = |reason: String| ProbeError::Host {
        host: host.to_owned(),
        reason,
    };
    let found = tokio::time::timeout(timeout, tokio::net::lookup_host((bare, port)))
        .await
        .map_err(|_| host_err(format!("name resolution timed out after {timeout:?}")))?
        .map_err(|e| host_err(e.to_string()))?
        .next()
        .ok_or_else(|| host_err("the name resolves to no address".to_owned()))?;
    Ok((found, format!("{bare}:{port}")))
}

async fn tcp(addr: SocketAddr, timeout: Duration) -> ProbeResult {
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(_)) => ProbeResult::Success,
        Ok(Err(e)) => ProbeResult::Failure(format!("dial tcp {addr}: {e}")),
        Err(_) => ProbeResult::Failure(format!("dial tcp {addr}: timeout after {timeout:?}")),
    }
}

async fn http_get(h: &HTTPGetAction, target: &Target<'_>, timeout: Duration) -> ProbeResult {
    let tls = match h.scheme.as_deref() {
        None | Some("") => false,
        Some(s) if s.eq_ignore_ascii_case("HTTP") => false,
        Some(s) if s.eq_ignore_ascii_case("HTTPS") => true,
        Some(s) => return ProbeResult::Unknown(ProbeError::Scheme(s.to_owned())),
    };
    let (addr, authority) = match address(h.host.as_deref(), &h.port, target, timeout).await {
        Ok(a) => a,
        Err(e) => return ProbeResult::Unknown(e),
    };
    let request = match build_request(h, &authority) {
        Ok(r) => r,
        Err(e) => return ProbeResult::Unknown(e),
    };
    let scheme = if tls { "https" } else { "http" };
    let server = h
        .host
        .as_deref()
        .filter(|h| !h.is_empty() && h.parse::<IpAddr>().is_err())
        .and_then(|h| rustls::pki_types::ServerName::try_from(h.to_owned()).ok())
        .unwrap_or_else(|| addr.ip().into());
    let exchange = async {
        let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        if tls {
            let config = super::tls::insecure_client(super::tls::Alpn::Http1)
                .map_err(|e| format!("TLS client: {e}"))?;
            let stream = tokio_rustls::TlsConnector::from(config)
                .connect(server, stream)
                .await
                .map_err(|e| format!("TLS handshake: {e}"))?;
            send(stream, request).await
        } else {
            send(stream, request).await
        }
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok(status)) if (200..400).contains(&status) => ProbeResult::Success,
        Ok(Ok(status)) => {
            ProbeResult::Failure(format!("HTTP probe failed with statuscode: {status}"))
        }
        Ok(Err(e)) => ProbeResult::Failure(format!("GET {scheme}://{authority}: {e}")),
        Err(_) => ProbeResult::Failure(format!(
            "GET {scheme}://{authority}: timeout after {timeout:?}"
        )),
    }
}

fn build_request(
    h: &HTTPGetAction,
    authority: &str,
) -> Result<http::Request<Empty<Bytes>>, ProbeError> {
    let path = match h.path.as_deref() {
        None | Some("") => "/".to_owned(),
        Some(p) if p.starts_with('/') => p.to_owned(),
        Some(p) => format!("/{p}"),
    };
    let mut b = http::Request::get(path)
        .header(http::header::HOST, authority)
        .header(http::header::USER_AGENT, USER_AGENT)
        .header(http::header::ACCEPT, "*/*");
    // The spec's headers replace the defaults of the same name, Host included.
    if let Some(headers) = b.headers_mut() {
        for hd in h.http_headers.iter().flatten() {
            let header_err = |source: http::Error| ProbeError::Header {
                name: hd.name.clone(),
                source,
            };
            let name =
                http::HeaderName::try_from(hd.name.as_str()).map_err(|e| header_err(e.into()))?;
            let value =
                http::HeaderValue::try_from(hd.value.as_str()).map_err(|e| header_err(e.into()))?;
            headers.remove(&name);
            headers.append(name, value);
        }
    }
    let name = "request".to_owned();
    b.body(Empty::new())
        .map_err(|source| ProbeError::Header { name, source })
}

/// The response's status; a transport error is the probe's failure message.
async fn send<S>(stream: S, request: http::Request<Empty<Bytes>>) -> Result<u16, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    let conn = tokio::spawn(conn);
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    // Upstream reads (a bounded part of) the body; draining lets the server
    // finish its write instead of seeing a reset.
    let mut body = response.into_body();
    let mut read = 0usize;
    while read < 10 * 1024 {
        match body.frame().await {
            Some(Ok(f)) => read += f.data_ref().map_or(0, |d| d.len()),
            _ => break,
        }
    }
    conn.abort();
    Ok(status)
}
