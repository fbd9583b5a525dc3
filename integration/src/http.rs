//! Just enough HTTP/1.1 for the fixtures' own servers (the token server,
//! the fault-injecting registry proxy) and for raw requests in tests: read a
//! request or response head, write a response, decode query strings.
//!
//! The fixtures' servers run one thread per connection on 127.0.0.1 and stop
//! when their [`Server`] handle is dropped.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// Largest request or response head read.
const MAX_HEAD: usize = 64 * 1024;
/// Largest request body a fixture server buffers.
const MAX_BODY: usize = 64 * 1024 * 1024;

/// A parsed request or response head.
#[derive(Clone, Debug, Default)]
pub struct Head {
    /// Request: method, target, version. Response: version, status, reason.
    pub start: [String; 3],
    pub headers: Vec<(String, String)>,
}

impl Head {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Content-Length, if present and valid.
    pub fn content_length(&self) -> Option<u64> {
        self.header("content-length")?.trim().parse().ok()
    }

    pub fn is_chunked(&self) -> bool {
        self.header("transfer-encoding")
            .is_some_and(|t| t.to_ascii_lowercase().contains("chunked"))
    }
}

/// Reads a head up to the blank line; None on a clean end of stream.
pub fn read_head(r: &mut impl BufRead) -> Result<Option<Head>> {
    let mut lines: Vec<String> = Vec::new();
    let mut total = 0;
    loop {
        let mut line = Vec::new();
        let n = r
            .take((MAX_HEAD - total + 1) as u64)
            .read_until(b'\n', &mut line)?;
        if n == 0 {
            if lines.is_empty() {
                return Ok(None);
            }
            bail!("connection closed inside an HTTP head");
        }
        total += n;
        if total > MAX_HEAD {
            bail!("HTTP head larger than {MAX_HEAD} bytes");
        }
        let line = String::from_utf8_lossy(&line)
            .trim_end_matches(['\r', '\n'])
            .to_string();
        if line.is_empty() {
            if lines.is_empty() {
                continue;
            }
            break;
        }
        lines.push(line);
    }
    let mut parts = lines[0].splitn(3, ' ').map(str::to_string);
    let start = [
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    ];
    let headers = lines[1..]
        .iter()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Ok(Some(Head { start, headers }))
}

/// Reads a body by Content-Length or chunked encoding (no length: empty,
/// as for requests).
pub fn read_body(r: &mut impl BufRead, head: &Head) -> Result<Vec<u8>> {
    if head.is_chunked() {
        let mut body = Vec::new();
        loop {
            let mut line = String::new();
            r.read_line(&mut line)?;
            let size = line.trim().split(';').next().unwrap_or_default();
            let size = usize::from_str_radix(size, 16)
                .with_context(|| format!("bad chunk size line {line:?}"))?;
            if size == 0 {
                loop {
                    line.clear();
                    if r.read_line(&mut line)? == 0 || line.trim().is_empty() {
                        return Ok(body);
                    }
                }
            }
            if body.len() + size > MAX_BODY {
                bail!("chunked body larger than {MAX_BODY} bytes");
            }
            let start = body.len();
            body.resize(start + size, 0);
            r.read_exact(&mut body[start..])?;
            line.clear();
            r.read_line(&mut line)?;
        }
    }
    let len = head.content_length().unwrap_or(0);
    if len > MAX_BODY as u64 {
        bail!("body of {len} bytes is larger than {MAX_BODY}");
    }
    let mut body = vec![0u8; len as usize];
    r.read_exact(&mut body)?;
    Ok(body)
}

/// A request a fixture server received.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    /// Path and query, as sent.
    pub target: String,
    pub path: String,
    pub query: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub peer: SocketAddr,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The decoded `key=value` pairs of the query string, in order.
    pub fn query_params(&self) -> Vec<(String, String)> {
        parse_form(&self.query)
    }
}

/// Decodes `a=b&c=d` (percent escapes, `+` as space).
pub fn parse_form(s: &str) -> Vec<(String, String)> {
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k, true), percent_decode(v, true))
        })
        .collect()
}

/// Decodes `%XX` escapes (and `+` as a space if asked).
pub fn percent_decode(s: &str, plus_is_space: bool) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = b
                    .get(i + 1..i + 3)
                    .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                if let Some(v) = hex {
                    out.push(v);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            b'+' if plus_is_space => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Escapes everything but unreserved characters, for query values.
pub fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A response a fixture server sends.
#[derive(Clone, Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn new(status: u16, body: impl Into<Vec<u8>>) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: body.into(),
        }
    }

    pub fn header(mut self, name: &str, value: impl Into<String>) -> Response {
        self.headers.push((name.to_string(), value.into()));
        self
    }

    /// A JSON body with its Content-Type.
    pub fn json(status: u16, v: &serde_json::Value) -> Response {
        Response::new(status, v.to_string()).header("Content-Type", "application/json")
    }
}

/// The reason phrase of common status codes.
pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        206 => "Partial Content",
        301 => "Moved Permanently",
        302 => "Found",
        307 => "Temporary Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        416 => "Range Not Satisfiable",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

/// Writes a response head; Content-Length is added unless a header sets it.
pub fn write_head(
    w: &mut impl Write,
    status: u16,
    headers: &[(String, String)],
    content_length: Option<u64>,
) -> io::Result<()> {
    let mut out = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(n) = content_length
        && !headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("content-length"))
    {
        out.push_str(&format!("Content-Length: {n}\r\n"));
    }
    out.push_str("\r\n");
    w.write_all(out.as_bytes())
}

pub fn write_response(w: &mut impl Write, resp: &Response, head_only: bool) -> io::Result<()> {
    write_head(w, resp.status, &resp.headers, Some(resp.body.len() as u64))?;
    if !head_only {
        w.write_all(&resp.body)?;
    }
    w.flush()
}

/// What a server does with one connection.
pub type ConnHandler = Arc<dyn Fn(TcpStream) + Send + Sync>;

/// A listening fixture server; stops accepting when dropped.
pub struct Server {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Listens on 127.0.0.1 (a free port) and runs `handler` on a thread
    /// per connection.
    pub fn start(name: &str, handler: ConnHandler) -> Result<Server> {
        let listener = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name(format!("{name}-accept"))
            .spawn(move || {
                for conn in listener.incoming() {
                    if stop2.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let h = handler.clone();
                    let _ = std::thread::Builder::new()
                        .name("fixture-conn".into())
                        .spawn(move || h(conn));
                }
            })?;
        Ok(Server {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    /// Serves requests: each is read whole and answered by `handler`;
    /// connections are kept alive.
    pub fn start_simple(
        name: &str,
        handler: impl Fn(Request) -> Response + Send + Sync + 'static,
    ) -> Result<Server> {
        let handler = Arc::new(handler);
        Server::start(
            name,
            Arc::new(move |conn: TcpStream| {
                let _ = serve_requests(conn, &*handler);
            }),
        )
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve_requests(conn: TcpStream, handler: &dyn Fn(Request) -> Response) -> Result<()> {
    let peer = conn.peer_addr()?;
    conn.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut w = conn.try_clone()?;
    let mut r = BufReader::new(conn);
    while let Some(head) = read_head(&mut r)? {
        let body = read_body(&mut r, &head)?;
        let [method, target, _] = head.start.clone();
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        let req = Request {
            method: method.clone(),
            path: path.to_string(),
            query: query.to_string(),
            target: target.clone(),
            headers: head.headers,
            body,
            peer,
        };
        let close = req
            .header("connection")
            .is_some_and(|c| c.eq_ignore_ascii_case("close"));
        let resp = handler(req);
        write_response(&mut w, &resp, method == "HEAD")?;
        if close {
            break;
        }
    }
    let _ = w.shutdown(Shutdown::Both);
    Ok(())
}

/// A raw HTTP/1.1 request on a new connection (`Connection: close`), for
/// tests that need exact control or to see exactly what a server sends.
/// Returns the response head and body.
pub fn raw_request(
    addr: &str,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<(Head, Vec<u8>)> {
    let mut conn = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut req = format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    conn.write_all(req.as_bytes())?;
    conn.write_all(body)?;
    let mut r = BufReader::new(conn);
    let head = read_head(&mut r)?.context("no response")?;
    let mut out = Vec::new();
    if method != "HEAD" {
        if head.is_chunked() || head.content_length().is_some() {
            out = read_body(&mut r, &head)?;
        } else {
            r.read_to_end(&mut out)?;
        }
    }
    Ok((head, out))
}
