//! A fault-injecting proxy in front of a [`Registry`], for the registry
//! client's robustness tests: server errors (retries), connections cut in
//! the middle of a body (resumed downloads), canned answers (a manifest
//! served with an unknown media type, or bigger than any limit), delays,
//! and redirects of blob downloads to a separate "blob store" (another
//! port, as registries redirect to S3), which serves blobs from the
//! registry's storage with Range support.
//!
//! Every request is logged ([`RegistryProxy::requests`]), so tests can
//! count downloads of a blob or see the Range a resumed download asked for.
//! Faults are [`Rule`]s: the first rule whose method and path match, and
//! that has uses left, applies.

use std::io::{BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use serde_json::json;

use crate::http::{self, Head, Server, read_body, read_head, write_head, write_response};
use crate::registry::Registry;

/// What a matching rule does.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Answer with this status and a distribution-style JSON error, without
    /// asking the registry.
    Status(u16),
    /// Forward, but close the connection after this many bytes of the
    /// response body.
    CutAfter(u64),
    /// Answer this instead of the registry.
    Respond {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    /// Answer a blob GET or HEAD with `307` to the blob store.
    RedirectToBlobStore,
    /// Wait, then forward.
    Delay(Duration),
}

/// A fault for requests whose path contains `path_contains`.
#[derive(Clone, Debug)]
pub struct Rule {
    pub method: Option<String>,
    pub path_contains: String,
    pub fault: Fault,
    /// How many requests it applies to (None: all).
    pub times: Option<usize>,
    /// Whether it applies to the blob store rather than the registry.
    pub blobstore: bool,
}

impl Rule {
    /// Any method, every time, on the registry side.
    pub fn new(path_contains: &str, fault: Fault) -> Rule {
        Rule {
            method: None,
            path_contains: path_contains.to_string(),
            fault,
            times: None,
            blobstore: false,
        }
    }

    pub fn method(mut self, m: &str) -> Rule {
        self.method = Some(m.to_string());
        self
    }

    pub fn times(mut self, n: usize) -> Rule {
        self.times = Some(n);
        self
    }

    /// Applies to blob store requests (`/blobs/sha256/<hex>`) instead.
    pub fn on_blobstore(mut self) -> Rule {
        self.blobstore = true;
        self
    }
}

/// One request the proxy or its blob store saw.
#[derive(Clone, Debug)]
pub struct Logged {
    pub method: String,
    pub target: String,
    pub range: Option<String>,
    pub status: u16,
    /// The fault applied, if any.
    pub fault: Option<String>,
    pub blobstore: bool,
}

struct State {
    upstream: SocketAddr,
    storage: PathBuf,
    rules: Mutex<Vec<Rule>>,
    log: Mutex<Vec<Logged>>,
    blobstore: Mutex<Option<SocketAddr>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking connection thread must not take the fixture down.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl State {
    fn take_fault(&self, method: &str, target: &str, blobstore: bool) -> Option<Fault> {
        let mut rules = lock(&self.rules);
        let r = rules.iter_mut().find(|r| {
            r.blobstore == blobstore
                && r.method.as_deref().is_none_or(|m| m == method)
                && target.contains(&r.path_contains)
                && r.times != Some(0)
        })?;
        if let Some(n) = &mut r.times {
            *n -= 1;
        }
        Some(r.fault.clone())
    }

    fn record(&self, head: &Head, status: u16, fault: Option<&Fault>, blobstore: bool) {
        lock(&self.log).push(Logged {
            method: head.start[0].clone(),
            target: head.start[1].clone(),
            range: head.header("range").map(String::from),
            status,
            fault: fault.map(|f| match f {
                Fault::Respond { status, .. } => format!("Respond({status})"),
                other => format!("{other:?}"),
            }),
            blobstore,
        });
    }
}

/// The proxy; stops when dropped.
pub struct RegistryProxy {
    state: Arc<State>,
    server: Server,
    blobstore: Server,
}

impl RegistryProxy {
    /// A proxy in front of `registry`, and its blob store.
    pub fn start(registry: &Registry) -> Result<RegistryProxy> {
        let state = Arc::new(State {
            upstream: registry.addr().parse().context("the registry's address")?,
            storage: registry.storage_dir(),
            rules: Mutex::new(Vec::new()),
            log: Mutex::new(Vec::new()),
            blobstore: Mutex::new(None),
        });
        let s = state.clone();
        let blobstore = Server::start(
            "blobstore",
            Arc::new(move |c| {
                let _ = blobstore_conn(&s, c);
            }),
        )?;
        *lock(&state.blobstore) = Some(blobstore.addr());
        let s = state.clone();
        let server = Server::start(
            "registry-proxy",
            Arc::new(move |c| {
                let _ = proxy_conn(&s, c);
            }),
        )?;
        Ok(RegistryProxy {
            state,
            server,
            blobstore,
        })
    }

    /// "127.0.0.1:PORT" of the proxy.
    pub fn addr(&self) -> String {
        self.server.addr().to_string()
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    /// "127.0.0.1:PORT/<repo_tag>" through the proxy.
    pub fn reference(&self, repo_tag: &str) -> String {
        format!("{}/{repo_tag}", self.addr())
    }

    /// "127.0.0.1:PORT" of the blob store.
    pub fn blobstore_addr(&self) -> String {
        self.blobstore.addr().to_string()
    }

    pub fn add_rule(&self, rule: Rule) {
        lock(&self.state.rules).push(rule);
    }

    pub fn clear_rules(&self) {
        lock(&self.state.rules).clear();
    }

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<Logged> {
        lock(&self.state.log).clone()
    }

    pub fn clear_requests(&self) {
        lock(&self.state.log).clear();
    }

    /// How many requests with `method` had a target containing `path`.
    pub fn count(&self, method: &str, path: &str) -> usize {
        lock(&self.state.log)
            .iter()
            .filter(|l| l.method == method && l.target.contains(path))
            .count()
    }
}

fn error_response(status: u16) -> http::Response {
    http::Response::json(
        status,
        &json!({ "errors": [ {
            "code": "UNKNOWN",
            "message": format!("fault injected by the berth test proxy: HTTP {status}"),
        } ] }),
    )
}

/// The blob hex of a `/v2/<name>/blobs/sha256:<hex>` path.
fn blob_hex(target: &str) -> Option<&str> {
    let path = target.split('?').next()?;
    let hex = path.rsplit_once("/blobs/sha256:")?.1;
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then_some(hex)
}

fn proxy_conn(state: &State, conn: TcpStream) -> Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut w = conn.try_clone()?;
    let mut r = BufReader::new(conn);
    while let Some(head) = read_head(&mut r)? {
        if head
            .header("expect")
            .is_some_and(|e| e.eq_ignore_ascii_case("100-continue"))
        {
            w.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        }
        let body = read_body(&mut r, &head)?;
        let [method, target, _] = head.start.clone();
        let head_only = method == "HEAD";
        let fault = state.take_fault(&method, &target, false);
        let close = head
            .header("connection")
            .is_some_and(|c| c.eq_ignore_ascii_case("close"));
        match &fault {
            Some(Fault::Status(code)) => {
                state.record(&head, *code, fault.as_ref(), false);
                write_response(&mut w, &error_response(*code), head_only)?;
            }
            Some(Fault::Respond {
                status,
                headers,
                body,
            }) => {
                state.record(&head, *status, fault.as_ref(), false);
                let resp = http::Response {
                    status: *status,
                    headers: headers.clone(),
                    body: body.clone(),
                };
                write_response(&mut w, &resp, head_only)?;
            }
            Some(Fault::RedirectToBlobStore) if blob_hex(&target).is_some() => {
                let hex = blob_hex(&target).unwrap_or_default();
                let store = lock(&state.blobstore).ok_or_else(|| anyhow!("no blob store"))?;
                let location = format!("http://{store}/blobs/sha256/{hex}?signature=berth-test");
                state.record(&head, 307, fault.as_ref(), false);
                let resp = http::Response::new(307, Vec::new()).header("Location", location);
                write_response(&mut w, &resp, head_only)?;
            }
            _ => {
                if let Some(Fault::Delay(d)) = &fault {
                    std::thread::sleep(*d);
                }
                let cut = match &fault {
                    Some(Fault::CutAfter(n)) => Some(*n),
                    _ => None,
                };
                let (status, was_cut) = forward(state, &head, &body, &mut w, cut)?;
                state.record(&head, status, fault.as_ref(), false);
                if was_cut {
                    let _ = w.shutdown(Shutdown::Both);
                    return Ok(());
                }
            }
        }
        if close {
            break;
        }
    }
    let _ = w.shutdown(Shutdown::Both);
    Ok(())
}

/// Headers that belong to one connection, not to the message.
fn hop_by_hop(name: &str) -> bool {
    [
        "connection",
        "keep-alive",
        "transfer-encoding",
        "proxy-connection",
        "te",
        "upgrade",
    ]
    .iter()
    .any(|h| name.eq_ignore_ascii_case(h))
}

/// Sends the request to the registry and relays the answer; with `cut`,
/// stops after that many body bytes. Returns the status and whether the
/// body was cut.
fn forward(
    state: &State,
    head: &Head,
    body: &[u8],
    w: &mut TcpStream,
    cut: Option<u64>,
) -> Result<(u16, bool)> {
    let [method, target, _] = &head.start;
    let mut up = TcpStream::connect(state.upstream).context("connecting to the registry")?;
    up.set_read_timeout(Some(Duration::from_secs(120)))?;
    // Host is kept: the registry builds upload Locations from it, so they
    // point back at the proxy.
    let mut req = format!("{method} {target} HTTP/1.1\r\n");
    for (k, v) in &head.headers {
        if !hop_by_hop(k) && !k.eq_ignore_ascii_case("content-length") {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
    }
    req.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    ));
    up.write_all(req.as_bytes())?;
    up.write_all(body)?;
    let mut ur = BufReader::new(up);
    let rh = read_head(&mut ur)?.context("the registry closed the connection")?;
    let status: u16 = rh.start[1].parse().unwrap_or(502);
    let headers: Vec<(String, String)> = rh
        .headers
        .iter()
        .filter(|(k, _)| !hop_by_hop(k))
        .cloned()
        .collect();
    let no_body =
        method == "HEAD" || status == 204 || status == 304 || (100..200).contains(&status);
    if no_body {
        write_head(w, status, &headers, None)?;
        w.flush()?;
        return Ok((status, false));
    }
    if rh.is_chunked() || rh.content_length().is_none() {
        let data = if rh.is_chunked() {
            read_body(&mut ur, &rh)?
        } else {
            let mut v = Vec::new();
            ur.read_to_end(&mut v)?;
            v
        };
        write_head(w, status, &headers, Some(data.len() as u64))?;
        return relay(&mut &data[..], data.len() as u64, w, cut).map(|c| (status, c));
    }
    let len = rh.content_length().unwrap_or(0);
    write_head(w, status, &headers, None)?;
    relay(&mut ur, len, w, cut).map(|c| (status, c))
}

/// Copies `len` bytes, or only `cut` of them; true if cut.
fn relay(r: &mut impl Read, len: u64, w: &mut TcpStream, cut: Option<u64>) -> Result<bool> {
    let n = cut.map_or(len, |c| c.min(len));
    let copied = std::io::copy(&mut r.take(n), w)?;
    w.flush()?;
    Ok(copied < len)
}

fn blobstore_conn(state: &State, conn: TcpStream) -> Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut w = conn.try_clone()?;
    let mut r = BufReader::new(conn);
    while let Some(head) = read_head(&mut r)? {
        let _ = read_body(&mut r, &head)?;
        let [method, target, _] = head.start.clone();
        let head_only = method == "HEAD";
        let fault = state.take_fault(&method, &target, true);
        match &fault {
            Some(Fault::Status(code)) => {
                state.record(&head, *code, fault.as_ref(), true);
                write_response(&mut w, &error_response(*code), head_only)?;
                continue;
            }
            Some(Fault::Respond {
                status,
                headers,
                body,
            }) => {
                state.record(&head, *status, fault.as_ref(), true);
                let resp = http::Response {
                    status: *status,
                    headers: headers.clone(),
                    body: body.clone(),
                };
                write_response(&mut w, &resp, head_only)?;
                continue;
            }
            Some(Fault::Delay(d)) => std::thread::sleep(*d),
            _ => {}
        }
        let path = target.split('?').next().unwrap_or_default();
        let hex = path
            .strip_prefix("/blobs/sha256/")
            .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()));
        let Some(hex) = hex else {
            state.record(&head, 404, fault.as_ref(), true);
            write_response(&mut w, &http::Response::new(404, "no such blob"), head_only)?;
            continue;
        };
        let file = state
            .storage
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data");
        let Ok(data) = std::fs::read(&file) else {
            state.record(&head, 404, fault.as_ref(), true);
            write_response(&mut w, &http::Response::new(404, "no such blob"), head_only)?;
            continue;
        };
        let total = data.len() as u64;
        let range = head.header("range").and_then(|r| parse_range(r, total));
        let (status, start, end, mut headers) = match range {
            Some((s, e)) => (
                206,
                s,
                e,
                vec![(
                    "Content-Range".to_string(),
                    format!("bytes {s}-{}/{total}", e - 1),
                )],
            ),
            None if head.header("range").is_some() && total > 0 => {
                state.record(&head, 416, fault.as_ref(), true);
                let resp = http::Response::new(416, Vec::new())
                    .header("Content-Range", format!("bytes */{total}"));
                write_response(&mut w, &resp, head_only)?;
                continue;
            }
            None => (200, 0, total, Vec::new()),
        };
        headers.push(("Content-Type".into(), "application/octet-stream".into()));
        headers.push(("Accept-Ranges".into(), "bytes".into()));
        state.record(&head, status, fault.as_ref(), true);
        write_head(&mut w, status, &headers, Some(end - start))?;
        if head_only {
            w.flush()?;
            continue;
        }
        let cut = match &fault {
            Some(Fault::CutAfter(n)) => Some(*n),
            _ => None,
        };
        let slice = &data[start as usize..end as usize];
        if relay(&mut &slice[..], end - start, &mut w, cut)? {
            let _ = w.shutdown(Shutdown::Both);
            return Ok(());
        }
    }
    Ok(())
}

/// `bytes=a-b` / `bytes=a-` / `bytes=-n` as a [start, end) range within
/// `total`; None if unsatisfiable or not understood.
fn parse_range(h: &str, total: u64) -> Option<(u64, u64)> {
    let spec = h.trim().strip_prefix("bytes=")?;
    let (a, b) = spec.split_once('-')?;
    let (start, end) = match (a.trim(), b.trim()) {
        ("", n) => {
            let n: u64 = n.parse().ok()?;
            (total.saturating_sub(n), total)
        }
        (s, "") => (s.parse().ok()?, total),
        (s, e) => (
            s.parse().ok()?,
            e.parse::<u64>().ok()?.saturating_add(1).min(total),
        ),
    };
    (start < end && start < total).then_some((start, end))
}
