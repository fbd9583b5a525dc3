//! `/exec`, `/attach` and `/portForward`: the runtime serves these sessions
//! on its streaming server; the kubelet asks it (CRI Exec, Attach,
//! PortForward) for a one-time URL and proxies the client's upgrade request
//! there, then copies bytes both ways, as upstream's kubelet does when the
//! runtime's URL is not handed to the client. The protocols (SPDY/3.1,
//! WebSocket channel protocols v1–v5, port forwarding) pass through
//! untouched: the upgrade headers are forwarded and the runtime negotiates.

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use http::header::{CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::{HeaderValue, StatusCode, Uri};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use berth_proto::v1;

/// Errors of the stream proxy.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("{0}")]
    BadRequest(String),
    #[error("the runtime's streaming URL {url:?} is not usable: {reason}")]
    BadUrl { url: String, reason: &'static str },
    #[error("connecting to the runtime's streaming server at {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("proxying to the runtime's streaming server: {0}")]
    Proxy(#[from] hyper::Error),
}

impl StreamError {
    pub fn status(&self) -> StatusCode {
        match self {
            StreamError::BadRequest(_) => StatusCode::BAD_REQUEST,
            _ => StatusCode::BAD_GATEWAY,
        }
    }
}

/// Exec and attach options from the query string (`command` repeated,
/// `input`, `output`, `error`, `tty` as "1"), as upstream's
/// `remotecommand.NewOptions`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamOptions {
    pub command: Vec<String>,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

impl StreamOptions {
    pub fn from_query(pairs: &[(String, String)]) -> Result<Self, StreamError> {
        let mut o = StreamOptions::default();
        for (k, v) in pairs {
            let on = v == "1" || v.eq_ignore_ascii_case("true");
            match k.as_str() {
                "command" => o.command.push(v.clone()),
                "input" | "stdin" => o.stdin = on,
                "output" | "stdout" => o.stdout = on,
                "error" | "stderr" => o.stderr = on,
                "tty" => o.tty = on,
                _ => {}
            }
        }
        if !(o.stdin || o.stdout || o.stderr) {
            return Err(StreamError::BadRequest(
                "you must specify at least 1 of stdin, stdout, stderr".into(),
            ));
        }
        // A terminal merges stderr into stdout; the runtime refuses both.
        if o.tty {
            o.stderr = false;
        }
        Ok(o)
    }

    pub fn exec_request(&self, container_id: &str) -> Result<v1::ExecRequest, StreamError> {
        if self.command.is_empty() {
            return Err(StreamError::BadRequest(
                "no command given: add command=... to the query, once per argument".into(),
            ));
        }
        Ok(v1::ExecRequest {
            container_id: container_id.to_owned(),
            cmd: self.command.clone(),
            tty: self.tty,
            stdin: self.stdin,
            stdout: self.stdout,
            stderr: self.stderr,
        })
    }

    pub fn attach_request(&self, container_id: &str) -> v1::AttachRequest {
        v1::AttachRequest {
            container_id: container_id.to_owned(),
            stdin: self.stdin,
            tty: self.tty,
            stdout: self.stdout,
            stderr: self.stderr,
        }
    }
}

/// The ports of `/portForward?port=80&port=8080`; none is fine (SPDY
/// clients name them per stream).
pub fn query_ports(pairs: &[(String, String)]) -> Result<Vec<i32>, StreamError> {
    pairs
        .iter()
        .filter(|(k, _)| k == "port")
        .flat_map(|(_, v)| v.split(','))
        .map(|p| match p.trim().parse::<u16>() {
            Ok(n) if n > 0 => Ok(i32::from(n)),
            _ => Err(StreamError::BadRequest(format!(
                "port {p:?}: not a port number between 1 and 65535"
            ))),
        })
        .collect()
}

/// The runtime's URL split into where to connect and what to ask for; the
/// client's query goes along when the URL has none (the runtime checks it
/// against the session it stored).
pub fn target(url: &str, client_query: Option<&str>) -> Result<(String, String), StreamError> {
    let bad = |reason| StreamError::BadUrl {
        url: url.to_owned(),
        reason,
    };
    let uri: Uri = url.parse().map_err(|_| bad("not a URL"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => return Err(bad("https streaming servers are not supported yet")),
        _ => return Err(bad("not an http URL")),
    }
    let authority = uri.authority().ok_or_else(|| bad("no host"))?;
    let addr = match authority.port_u16() {
        Some(_) => authority.as_str().to_owned(),
        None => format!("{}:80", authority.host()),
    };
    let mut path = uri.path().to_owned();
    match (uri.query(), client_query) {
        (Some(q), _) => {
            path.push('?');
            path.push_str(q);
        }
        (None, Some(q)) if !q.is_empty() => {
            path.push('?');
            path.push_str(q);
        }
        _ => {}
    }
    Ok((addr, path))
}

/// Forwards `req` to the runtime's `url` and, when the runtime switches
/// protocols, joins the two upgraded connections.
pub async fn proxy(mut req: Request, url: &str) -> Result<Response, StreamError> {
    let (addr, path) = target(url, req.uri().query())?;
    let client_upgrade = hyper::upgrade::on(&mut req);
    let tcp = TcpStream::connect(&addr)
        .await
        .map_err(|source| StreamError::Connect {
            addr: addr.clone(),
            source,
        })?;
    let _ = tcp.set_nodelay(true);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "streaming server connection");
        }
    });
    let mut out = http::Request::builder()
        .method(req.method().clone())
        .uri(&path)
        .body(Empty::<axum::body::Bytes>::new())
        .map_err(|_| StreamError::BadUrl {
            url: url.to_owned(),
            reason: "not a valid request path",
        })?;
    for (k, v) in req.headers() {
        if k != HOST && k != CONTENT_LENGTH && k != TRANSFER_ENCODING {
            out.headers_mut().append(k.clone(), v.clone());
        }
    }
    if let Ok(h) = HeaderValue::from_str(&addr) {
        out.headers_mut().insert(HOST, h);
    }
    let mut resp = sender.send_request(out).await?;
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        // The runtime's refusal (bad token, protocol negotiation) as it is.
        let (parts, body) = resp.into_parts();
        return Ok(Response::from_parts(parts, Body::new(body)));
    }
    let runtime_upgrade = hyper::upgrade::on(&mut resp);
    let mut answer = Response::builder().status(StatusCode::SWITCHING_PROTOCOLS);
    for (k, v) in resp.headers() {
        answer = answer.header(k, v);
    }
    tokio::spawn(async move {
        let (client, runtime) = match tokio::join!(client_upgrade, runtime_upgrade) {
            (Ok(c), Ok(r)) => (c, r),
            (Err(e), _) | (_, Err(e)) => {
                tracing::debug!(error = %e, "stream upgrade failed");
                return;
            }
        };
        let mut client = TokioIo::new(client);
        let mut runtime = TokioIo::new(runtime);
        if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut runtime).await {
            tracing::debug!(error = %e, "stream session ended");
        }
    });
    answer.body(Body::empty()).map_err(|_| StreamError::BadUrl {
        url: url.to_owned(),
        reason: "its answer's headers are not valid",
    })
}
