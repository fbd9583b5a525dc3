//! A real OCI distribution registry for tests: Debian's `docker-registry`
//! (distribution 2.8) on a free 127.0.0.1 port, with its storage in a temp
//! dir; optionally wanting credentials: HTTP Basic (its htpasswd mode) or
//! bearer tokens from a token server of our own.
//! And [`Client`], a small blocking registry client to push (and read back)
//! what [`crate::oci`] builds.
//!
//! The registry process is killed and its directory removed when the
//! [`Registry`] is dropped (also when a test panics); it is started with
//! `PR_SET_PDEATHSIG`, so it dies with the test process even on `kill -9`.
//!
//! # Token mode
//!
//! [`Registry::start_with_token_auth`] configures `auth: token` (realm,
//! service, issuer, rootcertbundle) and starts a token server on another
//! port. The token server answers `GET /token?service=&scope=` (HTTP Basic
//! credentials) and `POST /token` (OAuth2 password grant form), as Docker's
//! and containerd's clients send them. Right credentials get every action
//! asked for; no credentials get a token granting nothing (so the registry
//! answers 401 `insufficient_scope`, as Docker Hub does for private
//! repositories); wrong credentials get 401. Tokens are JWTs signed ES256
//! with a fresh P-256 key whose self-signed certificate is the registry's
//! rootcertbundle and travels in the `x5c` header: distribution 2.8 checks
//! `iss`, `aud` (= service), `exp`/`nbf` (60 s leeway), the signature, and
//! the `access` claim (`[{type, name, actions}]`).

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail, ensure};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Value, json};

use crate::exec::{Spawned, spawn_daemon};
use crate::http::{self, Server, percent_encode};
use crate::oci::{
    Artifact, Blob, DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST, sha256_digest,
};
use crate::proc;
use crate::runtime::which;
use crate::workdir::{remove_tree_if_unmounted, tempdir};

/// The `service` the registry names in its challenges (the token's `aud`).
pub const TOKEN_SERVICE: &str = "berth-test-registry";
/// The `iss` of our tokens.
pub const TOKEN_ISSUER: &str = "berth-test-token-server";
/// How long tokens last.
pub const TOKEN_LIFETIME_SECS: u64 = 300;

/// Every manifest media type, for Accept headers.
pub const MANIFEST_TYPES: [&str; 4] = [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST];

/// The registry binary: `$BERTH_DOCKER_REGISTRY`, else `docker-registry`
/// from PATH.
pub fn registry_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("BERTH_DOCKER_REGISTRY") {
        return Ok(PathBuf::from(p));
    }
    which("docker-registry").ok_or_else(|| {
        anyhow!("docker-registry not found: install Debian's docker-registry package (apt-get install docker-registry)")
    })
}

/// The realm of the registry's Basic challenge in basic-auth mode.
pub const BASIC_REALM: &str = "berth-test-basic";

#[derive(Clone, Copy, PartialEq, Eq)]
enum AuthMode {
    None,
    Basic,
    Token,
}

/// A running registry.
pub struct Registry {
    dir: PathBuf,
    addr: SocketAddr,
    daemon: Option<Spawned>,
    creds: Option<(String, String)>,
    token: Option<TokenServer>,
}

impl Registry {
    /// Starts an open registry (no auth).
    pub fn start() -> Result<Registry> {
        Registry::start_inner(AuthMode::None, None)
    }

    /// Starts a registry that wants bearer tokens, and the token server
    /// that issues them to `user`/`password` (see the module doc).
    pub fn start_with_token_auth(user: &str, password: &str) -> Result<Registry> {
        Registry::start_inner(AuthMode::Token, Some((user, password)))
    }

    /// Starts a registry that wants HTTP Basic credentials (its htpasswd
    /// mode, realm [`BASIC_REALM`]) for everything.
    pub fn start_with_basic_auth(user: &str, password: &str) -> Result<Registry> {
        Registry::start_inner(AuthMode::Basic, Some((user, password)))
    }

    fn start_inner(mode: AuthMode, creds: Option<(&str, &str)>) -> Result<Registry> {
        let bin = registry_binary()?;
        let dir = tempdir("registry-")?.keep();
        let mut reg = Registry {
            dir,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            daemon: None,
            creds: creds.map(|(u, p)| (u.to_string(), p.to_string())),
            token: None,
        };
        if let Some((user, password)) = creds {
            match mode {
                AuthMode::Token => {
                    reg.token = Some(TokenServer::start(user, password, &reg.dir)?);
                }
                AuthMode::Basic => {
                    // The minimum cost: the registry checks every request.
                    let hash = bcrypt::hash(password, 4).context("hashing the password")?;
                    std::fs::write(reg.dir.join("htpasswd"), format!("{user}:{hash}\n"))?;
                }
                AuthMode::None => {}
            }
        }
        // The port is found free, then handed to the registry: another
        // process may take it in between, so a clash is retried.
        let mut last_err = None;
        for attempt in 0..8 {
            let port = free_port()?;
            reg.addr = SocketAddr::from(([127, 0, 0, 1], port));
            let config = reg.dir.join("config.yml");
            std::fs::write(&config, reg.config_yaml())
                .with_context(|| format!("writing {}", config.display()))?;
            let mut cmd = Command::new(&bin);
            cmd.arg("serve").arg(&config);
            let daemon = spawn_daemon(cmd, &reg.dir.join(format!("registry-{attempt}")))?;
            reg.daemon = Some(daemon);
            match reg.wait_ready(attempt) {
                Ok(()) => return Ok(reg),
                Err(e) => {
                    reg.kill();
                    let clash = reg.log_of(attempt).contains("address already in use");
                    last_err = Some(e);
                    if !clash {
                        break;
                    }
                }
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow!("registry did not start")))
    }

    fn config_yaml(&self) -> String {
        let auth = match (&self.token, &self.creds) {
            (Some(t), _) => format!(
                "auth:\n  token:\n    realm: {realm}\n    service: {TOKEN_SERVICE}\n    issuer: {TOKEN_ISSUER}\n    rootcertbundle: {cert}\n",
                realm = t.realm(),
                cert = t.cert_path.display()
            ),
            (None, Some(_)) => format!(
                "auth:\n  htpasswd:\n    realm: {BASIC_REALM}\n    path: {}\n",
                self.dir.join("htpasswd").display()
            ),
            (None, None) => String::new(),
        };
        format!(
            "version: 0.1\n\
             log:\n  level: info\n  formatter: text\n\
             storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n  maintenance:\n    uploadpurging:\n      enabled: false\n\
             http:\n  addr: {addr}\n  secret: berth-integration-test-secret\n\
             {auth}",
            storage = self.storage_dir().display(),
            addr = self.addr,
        )
    }

    fn wait_ready(&self, attempt: usize) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(d) = &self.daemon
                && !proc::alive(d.pid())
            {
                bail!("docker-registry exited:\n{}", self.log_of(attempt));
            }
            if let Ok((head, _)) = http::raw_request(&self.addr(), "GET", "/v2/", &[], &[]) {
                let status = head.start[1].as_str();
                if status == "200" || status == "401" {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "docker-registry did not answer GET /v2/ within 20 s:\n{}",
                    self.log_of(attempt)
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn log_of(&self, attempt: usize) -> String {
        std::fs::read_to_string(self.dir.join(format!("registry-{attempt}.stderr")))
            .unwrap_or_default()
    }

    /// The registry's log (stderr of the last start attempt).
    pub fn log(&self) -> String {
        (0..8)
            .rev()
            .map(|a| self.log_of(a))
            .find(|l| !l.is_empty())
            .unwrap_or_default()
    }

    /// "127.0.0.1:PORT", the host part of image references.
    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// "http://127.0.0.1:PORT".
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// "127.0.0.1:PORT/<repo_tag>", e.g. `reference("busybox:latest")`.
    pub fn reference(&self, repo_tag: &str) -> String {
        format!("{}/{repo_tag}", self.addr)
    }

    /// The user and password it wants (token or basic mode).
    pub fn credentials(&self) -> Option<(&str, &str)> {
        self.creds.as_ref().map(|(u, p)| (u.as_str(), p.as_str()))
    }

    /// A Docker-style `config.json` holding this registry's credentials
    /// (`{"auths": {"127.0.0.1:PORT": {"auth": base64("user:password")}}}`),
    /// as a kubelet or `docker login` would leave it; None without auth.
    pub fn docker_config_json(&self) -> Option<String> {
        let (u, p) = self.credentials()?;
        let auth = STANDARD.encode(format!("{u}:{p}"));
        Some(json!({ "auths": { self.addr(): { "auth": auth } } }).to_string())
    }

    /// The token server's realm URL (token mode only).
    pub fn token_realm(&self) -> Option<String> {
        self.token.as_ref().map(TokenServer::realm)
    }

    /// How many requests the token server has answered (0 without one).
    pub fn token_requests(&self) -> u64 {
        self.token
            .as_ref()
            .map_or(0, |t| t.state.requests.load(Ordering::SeqCst))
    }

    /// How many tokens the token server has issued (0 without one).
    pub fn tokens_issued(&self) -> u64 {
        self.token
            .as_ref()
            .map_or(0, |t| t.state.issued.load(Ordering::SeqCst))
    }

    /// The registry's filesystem storage root.
    pub fn storage_dir(&self) -> PathBuf {
        self.dir.join("storage")
    }

    /// This fixture's directory (config, storage, logs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The registry process id.
    pub fn pid(&self) -> Option<i32> {
        self.daemon.as_ref().map(Spawned::pid)
    }

    /// A client with this registry's credentials (if any).
    pub fn client(&self) -> Client {
        Client::new(&self.url(), self.credentials())
    }

    /// A client without credentials.
    pub fn anonymous_client(&self) -> Client {
        Client::new(&self.url(), None)
    }

    /// Pushes an image or index as `repo:tag` with [`Registry::client`].
    pub fn push(&self, repo: &str, tag: &str, art: &dyn Artifact) -> Result<()> {
        self.client().push(repo, tag, art)
    }

    fn v2(&self) -> PathBuf {
        self.storage_dir().join("docker/registry/v2")
    }

    /// Writes a blob straight into the storage as if it had been uploaded
    /// to `repo` under `digest`, whatever its content: the only way to make
    /// the registry serve a blob that does not match its digest (uploads
    /// are verified).
    pub fn put_raw_blob(&self, repo: &str, digest: &str, data: &[u8]) -> Result<()> {
        let hex = digest_hex(digest)?;
        let blob_dir = self.v2().join("blobs/sha256").join(&hex[..2]).join(hex);
        std::fs::create_dir_all(&blob_dir)?;
        std::fs::write(blob_dir.join("data"), data)
            .with_context(|| format!("writing blob {digest}"))?;
        self.write_link(
            &format!("repositories/{repo}/_layers/sha256/{hex}/link"),
            digest,
        )
    }

    fn write_link(&self, rel: &str, digest: &str) -> Result<()> {
        let p = self.v2().join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&p, digest).with_context(|| format!("writing {}", p.display()))
    }

    fn kill(&mut self) {
        if let Some(d) = self.daemon.take() {
            d.kill_group();
            let _ = d.wait(Duration::from_secs(10));
        }
    }

    /// Stops the registry and removes its directory (what drop does).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.kill();
        self.token = None;
        if self.dir.exists() {
            remove_tree_if_unmounted(&self.dir);
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A port that was free a moment ago.
fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

/// The hex of a `sha256:` digest, checked.
fn digest_hex(digest: &str) -> Result<&str> {
    let hex = digest
        .strip_prefix("sha256:")
        .ok_or_else(|| anyhow!("not a sha256 digest: {digest}"))?;
    ensure!(
        hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
        "not a sha256 digest: {digest}"
    );
    Ok(hex)
}

struct TokenState {
    user: String,
    password: String,
    key: ring::signature::EcdsaKeyPair,
    /// DER of the certificate, base64 (standard), for the x5c header.
    cert_b64: String,
    requests: AtomicU64,
    issued: AtomicU64,
}

/// The token server of a token-mode registry.
struct TokenServer {
    state: Arc<TokenState>,
    cert_path: PathBuf,
    server: Server,
}

impl TokenServer {
    fn start(user: &str, password: &str, dir: &Path) -> Result<TokenServer> {
        let key_pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .context("generating the token signing key")?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, TOKEN_ISSUER);
        let cert = params
            .self_signed(&key_pair)
            .context("self-signing the token certificate")?;
        let cert_path = dir.join("token-cert.pem");
        std::fs::write(&cert_path, cert.pem())?;
        let rng = ring::rand::SystemRandom::new();
        let key = ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &key_pair.serialize_der(),
            &rng,
        )
        .map_err(|e| anyhow!("loading the token signing key: {e}"))?;
        let state = Arc::new(TokenState {
            user: user.to_string(),
            password: password.to_string(),
            key,
            cert_b64: STANDARD.encode(cert.der()),
            requests: AtomicU64::new(0),
            issued: AtomicU64::new(0),
        });
        let s = state.clone();
        let server = Server::start_simple("token-server", move |req| token_response(&s, &req))?;
        Ok(TokenServer {
            state,
            cert_path,
            server,
        })
    }

    fn realm(&self) -> String {
        format!("{}/token", self.server.url())
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn token_error(status: u16, code: &str, msg: &str) -> http::Response {
    http::Response::json(
        status,
        &json!({ "errors": [ { "code": code, "message": msg } ] }),
    )
}

/// Answers one token request (see the module doc).
fn token_response(s: &TokenState, req: &http::Request) -> http::Response {
    s.requests.fetch_add(1, Ordering::SeqCst);
    if req.path != "/token" {
        return token_error(404, "NOT_FOUND", "only /token here");
    }
    let (creds, scopes) = match req.method.as_str() {
        "GET" => {
            let creds = req
                .header("authorization")
                .and_then(|a| a.strip_prefix("Basic "))
                .and_then(|b| STANDARD.decode(b.trim()).ok())
                .and_then(|b| String::from_utf8(b).ok())
                .and_then(|up| {
                    up.split_once(':')
                        .map(|(u, p)| (u.to_string(), p.to_string()))
                });
            let scopes: Vec<String> = req
                .query_params()
                .into_iter()
                .filter(|(k, _)| k == "scope")
                .flat_map(|(_, v)| v.split(' ').map(String::from).collect::<Vec<_>>())
                .collect();
            (creds, scopes)
        }
        "POST" => {
            let form = http::parse_form(&String::from_utf8_lossy(&req.body));
            let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
            if get("grant_type").as_deref() != Some("password") {
                return token_error(400, "UNSUPPORTED", "only grant_type=password");
            }
            let creds = get("username").zip(get("password"));
            let scopes = get("scope")
                .map(|s| s.split(' ').map(String::from).collect())
                .unwrap_or_default();
            (creds, scopes)
        }
        _ => return token_error(405, "UNSUPPORTED", "GET or POST"),
    };
    let subject = match &creds {
        Some((u, p)) if *u == s.user && *p == s.password => u.clone(),
        Some((u, _)) => {
            return token_error(401, "UNAUTHORIZED", &format!("wrong credentials for {u}"))
                .header("WWW-Authenticate", "Basic realm=\"berth-test\"");
        }
        None => String::new(),
    };
    // Anonymous tokens grant nothing.
    let access: Vec<Value> = if subject.is_empty() {
        Vec::new()
    } else {
        scopes
            .iter()
            .filter(|sc| !sc.is_empty())
            .filter_map(|sc| {
                let (typ, rest) = sc.split_once(':')?;
                let (name, actions) = rest.rsplit_once(':')?;
                let actions: Vec<&str> = actions.split(',').filter(|a| !a.is_empty()).collect();
                Some(json!({ "type": typ, "name": name, "actions": actions }))
            })
            .collect()
    };
    match sign_token(s, &subject, access) {
        Ok(token) => {
            s.issued.fetch_add(1, Ordering::SeqCst);
            http::Response::json(
                200,
                &json!({
                    "token": token,
                    "access_token": token,
                    "expires_in": TOKEN_LIFETIME_SECS,
                }),
            )
        }
        Err(e) => token_error(500, "INTERNAL", &format!("{e:#}")),
    }
}

static JTI: AtomicU64 = AtomicU64::new(0);

fn sign_token(s: &TokenState, subject: &str, access: Vec<Value>) -> Result<String> {
    let now = now_secs();
    let header = json!({ "typ": "JWT", "alg": "ES256", "x5c": [s.cert_b64] });
    let claims = json!({
        "iss": TOKEN_ISSUER,
        "sub": subject,
        "aud": TOKEN_SERVICE,
        "exp": now + TOKEN_LIFETIME_SECS,
        "nbf": now.saturating_sub(5),
        "iat": now,
        "jti": format!("{}-{}", std::process::id(), JTI.fetch_add(1, Ordering::SeqCst)),
        "access": access,
    });
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let sig = s
        .key
        .sign(&ring::rand::SystemRandom::new(), input.as_bytes())
        .map_err(|e| anyhow!("signing a token: {e}"))?;
    Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref())))
}

/// The parameters of a `WWW-Authenticate: Bearer k="v",...` challenge.
pub fn parse_bearer_challenge(header: &str) -> Option<HashMap<String, String>> {
    let rest = header.trim().strip_prefix("Bearer ")?;
    let mut out = HashMap::new();
    let mut s = rest.trim();
    while !s.is_empty() {
        let (k, after) = s.split_once('=')?;
        let k = k.trim().trim_start_matches(',').trim().to_ascii_lowercase();
        let (v, next) = if let Some(quoted) = after.strip_prefix('"') {
            let end = quoted.find('"')?;
            (&quoted[..end], &quoted[end + 1..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        out.insert(k, v.to_string());
        s = next.trim_start_matches(|c: char| c == ',' || c.is_whitespace());
    }
    Some(out)
}

/// A response as [`Client`] returns it.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn check(self, what: &str, expected: &[u16]) -> Result<Response> {
        if expected.contains(&self.status) {
            Ok(self)
        } else {
            bail!("{what}: HTTP {}: {}", self.status, self.text())
        }
    }
}

/// A minimal blocking distribution-API client (push, read back, delete),
/// with anonymous, basic and bearer-token auth.
pub struct Client {
    agent: ureq::Agent,
    base: String,
    creds: Option<(String, String)>,
    /// Bearer tokens by scope.
    tokens: Mutex<HashMap<String, String>>,
    /// Set once the registry asked for Basic credentials: then they are
    /// sent up front.
    basic_wanted: std::sync::atomic::AtomicBool,
}

impl Client {
    /// A client of the registry at `base_url` ("http://127.0.0.1:PORT").
    pub fn new(base_url: &str, creds: Option<(&str, &str)>) -> Client {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_global(Some(Duration::from_secs(300)))
            .build()
            .into();
        Client {
            agent,
            base: base_url.trim_end_matches('/').to_string(),
            creds: creds.map(|(u, p)| (u.to_string(), p.to_string())),
            tokens: Mutex::new(HashMap::new()),
            basic_wanted: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn basic(&self) -> Option<String> {
        self.creds
            .as_ref()
            .map(|(u, p)| format!("Basic {}", STANDARD.encode(format!("{u}:{p}"))))
    }

    fn send(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        auth: Option<&str>,
        body: &[u8],
    ) -> Result<Response> {
        let mut b = ureq::http::Request::builder().method(method).uri(url);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        if let Some(a) = auth {
            b = b.header("Authorization", a);
        }
        let req = b.body(body)?;
        let resp = self
            .agent
            .run(req)
            .with_context(|| format!("{method} {url}"))?;
        let status = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let body = if method == "HEAD" {
            Vec::new()
        } else {
            resp.into_body()
                .with_config()
                .limit(u64::MAX)
                .read_to_vec()
                .with_context(|| format!("reading the body of {method} {url}"))?
        };
        Ok(Response {
            status,
            headers,
            body,
        })
    }

    /// A request to `path` (below the base URL, or an absolute URL) with
    /// auth: a cached token for `scope`, else whatever the registry's 401
    /// challenge asks for, once.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        scope: &str,
    ) -> Result<Response> {
        let url = if path.starts_with("http://") || path.starts_with("https://") {
            path.to_string()
        } else {
            format!("{}{path}", self.base)
        };
        let cached = if self.basic_wanted.load(Ordering::Relaxed) {
            self.basic()
        } else {
            self.tokens
                .lock()
                .map_err(|_| anyhow!("token cache poisoned"))?
                .get(scope)
                .map(|t| format!("Bearer {t}"))
        };
        let resp = self.send(method, &url, headers, cached.as_deref(), body)?;
        if resp.status != 401 {
            return Ok(resp);
        }
        let challenge = resp
            .header("www-authenticate")
            .unwrap_or_default()
            .to_string();
        let auth = if challenge.starts_with("Bearer ") {
            let token = self.fetch_token(&challenge, scope)?;
            self.tokens
                .lock()
                .map_err(|_| anyhow!("token cache poisoned"))?
                .insert(scope.to_string(), token.clone());
            format!("Bearer {token}")
        } else if challenge.starts_with("Basic ") {
            match self.basic() {
                Some(b) if cached.is_none() => {
                    self.basic_wanted.store(true, Ordering::Relaxed);
                    b
                }
                _ => return Ok(resp),
            }
        } else {
            return Ok(resp);
        };
        self.send(method, &url, headers, Some(&auth), body)
    }

    /// Gets a token from the challenge's realm for `scope` (with this
    /// client's credentials, if any).
    pub fn fetch_token(&self, challenge: &str, scope: &str) -> Result<String> {
        let params = parse_bearer_challenge(challenge)
            .ok_or_else(|| anyhow!("cannot parse the challenge {challenge:?}"))?;
        let realm = params
            .get("realm")
            .ok_or_else(|| anyhow!("no realm in the challenge {challenge:?}"))?;
        let mut url = format!("{realm}?");
        if let Some(service) = params.get("service") {
            url.push_str(&format!("service={}&", percent_encode(service)));
        }
        url.push_str(&format!("scope={}", percent_encode(scope)));
        let basic = self.basic();
        let resp = self.send("GET", &url, &[], basic.as_deref(), &[])?;
        let resp = resp.check(&format!("token request to {realm}"), &[200])?;
        let v: Value = serde_json::from_slice(&resp.body)
            .with_context(|| format!("token response from {realm}"))?;
        v.get("token")
            .or_else(|| v.get("access_token"))
            .and_then(Value::as_str)
            .map(String::from)
            .ok_or_else(|| anyhow!("no token in the answer of {realm}: {v}"))
    }

    fn scope(repo: &str, push: bool) -> String {
        if push {
            format!("repository:{repo}:pull,push")
        } else {
            format!("repository:{repo}:pull")
        }
    }

    /// Whether the registry has `digest` in `repo`.
    pub fn blob_exists(&self, repo: &str, digest: &str) -> Result<bool> {
        let r = self.request(
            "HEAD",
            &format!("/v2/{repo}/blobs/{digest}"),
            &[],
            &[],
            &Client::scope(repo, true),
        )?;
        Ok(r.status == 200)
    }

    /// Uploads `data` claiming it has `digest` (monolithic: POST, then PUT
    /// with `?digest=`); returns the registry's answer to the PUT, whatever
    /// it is (tests of bad digests want to see the refusal).
    pub fn upload_blob(&self, repo: &str, digest: &str, data: &[u8]) -> Result<Response> {
        let scope = Client::scope(repo, true);
        let start = self
            .request(
                "POST",
                &format!("/v2/{repo}/blobs/uploads/"),
                &[],
                &[],
                &scope,
            )?
            .check(&format!("starting an upload to {repo}"), &[202])?;
        let location = start
            .header("location")
            .ok_or_else(|| anyhow!("no Location in the upload answer"))?;
        let sep = if location.contains('?') { '&' } else { '?' };
        let url = format!("{location}{sep}digest={}", percent_encode(digest));
        let len = data.len().to_string();
        self.request(
            "PUT",
            &url,
            &[
                ("Content-Type", "application/octet-stream"),
                ("Content-Length", &len),
            ],
            data,
            &scope,
        )
    }

    /// Pushes a blob unless the registry has it.
    pub fn push_blob(&self, repo: &str, blob: &Blob) -> Result<()> {
        if self.blob_exists(repo, &blob.digest)? {
            return Ok(());
        }
        self.upload_blob(repo, &blob.digest, &blob.data)?
            .check(&format!("uploading {} to {repo}", blob.digest), &[201])?;
        Ok(())
    }

    /// PUTs a manifest as `repo:reference`; returns the registry's answer.
    pub fn put_manifest_raw(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        data: &[u8],
    ) -> Result<Response> {
        self.request(
            "PUT",
            &format!("/v2/{repo}/manifests/{reference}"),
            &[("Content-Type", media_type)],
            data,
            &Client::scope(repo, true),
        )
    }

    /// PUTs a manifest; fails unless the registry stored it.
    pub fn put_manifest(&self, repo: &str, reference: &str, manifest: &Blob) -> Result<()> {
        let r = self
            .put_manifest_raw(repo, reference, &manifest.media_type, &manifest.data)?
            .check(
                &format!("putting manifest {} as {repo}:{reference}", manifest.digest),
                &[201],
            )?;
        if let Some(d) = r.header("docker-content-digest") {
            ensure!(
                d == manifest.digest,
                "the registry computed {d} for manifest {}",
                manifest.digest
            );
        }
        Ok(())
    }

    /// Pushes an image or index: its blobs, the manifests it lists (by
    /// digest), then its manifest as `repo:tag`.
    pub fn push(&self, repo: &str, tag: &str, art: &dyn Artifact) -> Result<()> {
        for b in art.blobs() {
            if MANIFEST_TYPES.contains(&b.media_type.as_str()) {
                self.put_manifest(repo, &b.digest, b)?;
            } else {
                self.push_blob(repo, b)?;
            }
        }
        self.put_manifest(repo, tag, art.manifest())
    }

    /// GETs a manifest (accepting every manifest type); returns its
    /// Content-Type and bytes.
    pub fn get_manifest(&self, repo: &str, reference: &str) -> Result<(String, Vec<u8>)> {
        let accept = MANIFEST_TYPES.join(", ");
        let r = self
            .request(
                "GET",
                &format!("/v2/{repo}/manifests/{reference}"),
                &[("Accept", &accept)],
                &[],
                &Client::scope(repo, false),
            )?
            .check(&format!("getting manifest {repo}:{reference}"), &[200])?;
        let ct = r.header("content-type").unwrap_or_default().to_string();
        Ok((ct, r.body))
    }

    /// GETs a blob and checks its digest.
    pub fn get_blob(&self, repo: &str, digest: &str) -> Result<Vec<u8>> {
        let r = self
            .request(
                "GET",
                &format!("/v2/{repo}/blobs/{digest}"),
                &[],
                &[],
                &Client::scope(repo, false),
            )?
            .check(&format!("getting blob {digest} of {repo}"), &[200])?;
        let got = sha256_digest(&r.body);
        ensure!(got == digest, "blob {digest} of {repo} has digest {got}");
        Ok(r.body)
    }

    /// The tags of `repo`.
    pub fn tags(&self, repo: &str) -> Result<Vec<String>> {
        let r = self
            .request(
                "GET",
                &format!("/v2/{repo}/tags/list"),
                &[],
                &[],
                &Client::scope(repo, false),
            )?
            .check(&format!("listing the tags of {repo}"), &[200])?;
        let v: Value = serde_json::from_slice(&r.body)?;
        Ok(v["tags"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|t| t.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Deletes a manifest by digest.
    pub fn delete_manifest(&self, repo: &str, digest: &str) -> Result<()> {
        self.request(
            "DELETE",
            &format!("/v2/{repo}/manifests/{digest}"),
            &[],
            &[],
            &format!("repository:{repo}:delete"),
        )?
        .check(&format!("deleting manifest {digest} of {repo}"), &[202])?;
        Ok(())
    }
}
