//! An in-process registry for the client's tests: serves manifests and blobs
//! from memory on 127.0.0.1, with switchable auth (none, Basic, bearer tokens
//! from its own `/token`) and faults (5xx, connections cut mid-blob, `Range`
//! ignored, redirects to another server), and records every request.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use crate::image::digest::Digest;

#[derive(Clone, Debug, Default)]
pub enum FakeAuth {
    #[default]
    None,
    Basic {
        user: String,
        pass: String,
    },
    /// Bearer tokens from `/token`; GETs need `user_pass` as Basic if set,
    /// POSTs need `refresh_token`.
    Bearer {
        user_pass: Option<(String, String)>,
        refresh_token: Option<String>,
    },
}

#[derive(Clone, Debug)]
pub struct Logged {
    pub method: String,
    pub path: String,
    pub query: String,
    pub authorization: Option<String>,
    pub range: Option<String>,
    pub accept: Option<String>,
    pub body: String,
}

#[derive(Default)]
pub struct FakeState {
    pub addr: Option<SocketAddr>,
    /// (repository, tag or digest) → (Content-Type, body).
    pub manifests: HashMap<(String, String), (String, Vec<u8>)>,
    /// digest → content.
    pub blobs: HashMap<String, Vec<u8>>,
    pub auth: FakeAuth,
    /// Answer 503 to this many of the next API requests.
    pub fail_next: usize,
    /// The next `cuts` blob responses break after this many bytes.
    pub cut_after: usize,
    pub cuts: usize,
    pub ignore_range: bool,
    /// Serve blobs cut to this length, chunked (no Content-Length), ending cleanly.
    pub truncate_to: Option<usize>,
    /// Answer blob GETs with a 307 to `<this>/storage/<digest>?sig=…`.
    pub redirect_blobs_to: Option<String>,
    pub log: Vec<Logged>,
    pub token_requests: Vec<Logged>,
    pub tokens: Vec<String>,
    pub token_expires_in: u64,
}

#[derive(Clone)]
pub struct Fake {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<FakeState>>,
}

type Shared = Arc<Mutex<FakeState>>;

impl Fake {
    pub async fn start() -> Fake {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state: Shared = Arc::new(Mutex::new(FakeState {
            addr: Some(addr),
            token_expires_in: 300,
            ..Default::default()
        }));
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(state.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Fake { addr, state }
    }

    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn with<T>(&self, f: impl FnOnce(&mut FakeState) -> T) -> T {
        f(&mut self.state.lock().unwrap())
    }

    pub fn add_blob(&self, data: &[u8]) -> Digest {
        let d = Digest::of(data);
        self.with(|s| s.blobs.insert(d.to_string(), data.to_vec()));
        d
    }

    /// Serves `body` under each of `refs` (tags, or digests) of `repo`.
    pub fn add_manifest(&self, repo: &str, refs: &[&str], content_type: &str, body: &[u8]) {
        self.with(|s| {
            for r in refs {
                s.manifests.insert(
                    (repo.to_string(), r.to_string()),
                    (content_type.to_string(), body.to_vec()),
                );
            }
        });
    }

    /// API requests (not `/token`, not `/storage`) whose path contains `part`.
    pub fn requests(&self, part: &str) -> Vec<Logged> {
        self.with(|s| {
            s.log
                .iter()
                .filter(|l| l.path.contains(part))
                .cloned()
                .collect()
        })
    }

    pub fn token_requests(&self) -> Vec<Logged> {
        self.with(|s| s.token_requests.clone())
    }
}

fn header_str(h: &HeaderMap, name: header::HeaderName) -> Option<String> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

fn json_error(status: StatusCode, code: &str, message: &str) -> Response {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(format!(
            r#"{{"errors":[{{"code":"{code}","message":"{message}"}}]}}"#
        )))
        .unwrap()
}

async fn handle(State(state): State<Shared>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();
    let logged = Logged {
        method: parts.method.to_string(),
        path: parts.uri.path().to_string(),
        query: parts.uri.query().unwrap_or("").to_string(),
        authorization: header_str(&parts.headers, header::AUTHORIZATION),
        range: header_str(&parts.headers, header::RANGE),
        accept: header_str(&parts.headers, header::ACCEPT),
        body: String::from_utf8_lossy(&body).into_owned(),
    };
    let path = logged.path.clone();
    if path == "/token" {
        return token(&state, logged);
    }
    if let Some(digest) = path.strip_prefix("/storage/") {
        state.lock().unwrap().log.push(logged.clone());
        return serve_blob(&state, digest, logged.range.as_deref());
    }
    let mut s = state.lock().unwrap();
    s.log.push(logged.clone());
    if s.fail_next > 0 {
        s.fail_next -= 1;
        return json_error(StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE", "try later");
    }
    let Some(rest) = path.strip_prefix("/v2/") else {
        return json_error(StatusCode::NOT_FOUND, "NOT_FOUND", "no such path");
    };
    let (repo, kind, reference) = if let Some((repo, r)) = rest.rsplit_once("/manifests/") {
        (repo, "manifests", r)
    } else if let Some((repo, r)) = rest.rsplit_once("/blobs/") {
        (repo, "blobs", r)
    } else {
        return json_error(StatusCode::NOT_FOUND, "NOT_FOUND", "no such path");
    };
    if let Some(challenge) = check_auth(&s, repo, logged.authorization.as_deref()) {
        return Response::builder()
            .status(StatusCode::UNAUTHORIZED)
            .header(header::WWW_AUTHENTICATE, challenge)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(
                r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#,
            ))
            .unwrap();
    }
    if kind == "manifests" {
        return match s.manifests.get(&(repo.to_string(), reference.to_string())) {
            Some((ct, body)) => Response::builder()
                .header(header::CONTENT_TYPE, ct)
                .header("Docker-Content-Digest", Digest::of(body).to_string())
                .body(Body::from(body.clone()))
                .unwrap(),
            None => json_error(
                StatusCode::NOT_FOUND,
                "MANIFEST_UNKNOWN",
                "manifest unknown",
            ),
        };
    }
    if let Some(to) = &s.redirect_blobs_to {
        return Response::builder()
            .status(StatusCode::TEMPORARY_REDIRECT)
            .header(
                header::LOCATION,
                format!("{to}/storage/{reference}?sig=secret"),
            )
            .body(Body::empty())
            .unwrap();
    }
    drop(s);
    serve_blob(&state, reference, logged.range.as_deref())
}

fn check_auth(s: &FakeState, repo: &str, authorization: Option<&str>) -> Option<String> {
    match &s.auth {
        FakeAuth::None => None,
        FakeAuth::Basic { user, pass } => {
            let want = format!("Basic {}", BASE64.encode(format!("{user}:{pass}")));
            (authorization != Some(want.as_str())).then(|| r#"Basic realm="fake""#.to_string())
        }
        FakeAuth::Bearer { .. } => {
            let ok = authorization
                .and_then(|a| a.strip_prefix("Bearer "))
                .is_some_and(|t| s.tokens.iter().any(|k| k == t));
            (!ok).then(|| {
                format!(
                    r#"Bearer realm="http://{}/token",service="fake-registry",scope="repository:{repo}:pull""#,
                    s.addr.unwrap()
                )
            })
        }
    }
}

fn token(state: &Shared, logged: Logged) -> Response {
    let mut s = state.lock().unwrap();
    s.token_requests.push(logged.clone());
    let FakeAuth::Bearer {
        user_pass,
        refresh_token,
    } = s.auth.clone()
    else {
        return json_error(StatusCode::NOT_FOUND, "NOT_FOUND", "no token server");
    };
    let allowed = if logged.method == "POST" {
        let form: HashMap<String, String> = logged
            .body
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        form.get("grant_type").map(String::as_str) == Some("refresh_token")
            && refresh_token.is_some()
            && form.get("refresh_token") == refresh_token.as_ref()
    } else {
        match &user_pass {
            None => true,
            Some((u, p)) => {
                logged.authorization.as_deref()
                    == Some(format!("Basic {}", BASE64.encode(format!("{u}:{p}"))).as_str())
            }
        }
    };
    if !allowed {
        return json_error(StatusCode::UNAUTHORIZED, "DENIED", "bad credentials");
    }
    let t = format!("tok-{}", s.tokens.len() + 1);
    s.tokens.push(t.clone());
    let field = if logged.method == "POST" {
        "access_token"
    } else {
        "token"
    };
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(format!(
            r#"{{"{field}":"{t}","expires_in":{}}}"#,
            s.token_expires_in
        )))
        .unwrap()
}

fn serve_blob(state: &Shared, digest: &str, range: Option<&str>) -> Response {
    let mut s = state.lock().unwrap();
    let Some(mut data) = s.blobs.get(digest).cloned() else {
        return json_error(StatusCode::NOT_FOUND, "BLOB_UNKNOWN", "blob unknown");
    };
    if let Some(t) = s.truncate_to {
        data.truncate(t);
    }
    let from = range
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse::<usize>().ok());
    let (status, from) = match from {
        Some(f) if !s.ignore_range => {
            if f >= data.len() {
                return json_error(StatusCode::RANGE_NOT_SATISFIABLE, "RANGE", "bad range");
            }
            (StatusCode::PARTIAL_CONTENT, f)
        }
        _ => (StatusCode::OK, 0),
    };
    let part = data[from..].to_vec();
    let mut builder = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/octet-stream");
    if s.truncate_to.is_some() {
        let chunks: Vec<Result<bytes::Bytes, std::io::Error>> = vec![Ok(part.into())];
        return builder
            .body(Body::from_stream(futures::stream::iter(chunks)))
            .unwrap();
    }
    builder = builder.header(header::CONTENT_LENGTH, part.len());
    if status == StatusCode::PARTIAL_CONTENT {
        builder = builder.header(
            header::CONTENT_RANGE,
            format!("bytes {from}-{}/{}", data.len() - 1, data.len()),
        );
    }
    if s.cuts > 0 && part.len() > s.cut_after {
        s.cuts -= 1;
        let head = bytes::Bytes::copy_from_slice(&part[..s.cut_after]);
        // The error after the first part makes hyper drop the connection
        // short of Content-Length: what a client sees when a link breaks.
        let chunks: Vec<Result<bytes::Bytes, std::io::Error>> =
            vec![Ok(head), Err(std::io::Error::other("cut"))];
        // The pause lets hyper flush the first part before the break.
        let stream = futures::StreamExt::then(futures::stream::iter(chunks), |c| async move {
            if c.is_err() {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            c
        });
        return builder.body(Body::from_stream(stream)).unwrap();
    }
    builder.body(Body::from(part)).unwrap()
}
