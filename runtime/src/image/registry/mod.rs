//! The OCI distribution client: resolves references to image manifests and
//! streams blobs, over `reqwest` (rustls) and `tokio`.
//!
//! We write our own instead of using the `oci-client` crate because a pull
//! needs three things it does not give: mirror fallback per registry (each
//! mirror endpoint in order, then the registry itself), blob streams that
//! resume a broken download with a `Range` request at the byte where it broke,
//! and chunks handed to the caller as they arrive so that the content store
//! hashes, decompresses and writes while downloading.
//!
//! What it speaks: OCI image manifests and indexes and Docker schema2
//! manifests and manifest lists (normalized to oci-spec types, media types
//! kept); anonymous, Basic and bearer-token auth (`auth`); redirects to blob
//! storage, dropping the registry's `Authorization` when the redirect leaves
//! the registry's origin; retries with exponential back-off on 5xx, 429, 408
//! and connection errors; plain HTTP, custom CAs and unverified TLS per host
//! from berth's runtime config ([`crate::config::RegistryConfig`]).
//!
//! Credentials: the ones a pull brings (a CRI `AuthConfig`) are sent only to
//! the reference's own registry, never to a mirror, so that a mirror cannot
//! collect users' registry passwords; a mirror gets credentials only from its
//! `[registry.hosts]` entry or the Docker `config.json`. A host's TLS settings
//! also apply to the token server and blob storage it sends us to.

mod auth;
mod blob;
mod manifest;

#[cfg(test)]
mod fake;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use oci_spec::image::{ImageIndex, ImageManifest};
use reqwest::Url;
use reqwest::header::{
    ACCEPT, AUTHORIZATION, HeaderMap, HeaderValue, LOCATION, RANGE, WWW_AUTHENTICATE,
};

pub use auth::Credentials;
pub use blob::BlobStream;
pub use manifest::{
    DOCKER_LIST, DOCKER_MANIFEST, MAX_MANIFEST_SIZE, OCI_INDEX, OCI_MANIFEST, Platform,
    PlatformParseError,
};

use crate::config::RegistryConfig;
use crate::image::digest::Digest;
use crate::image::reference::{DOCKER_HUB, Reference};
use auth::{AuthCache, AuthFailure, Scope};
use manifest::Kind;

/// Where Docker Hub's registry API lives; `docker.io` is only its name.
const DOCKER_HUB_ENDPOINT: &str = "registry-1.docker.io";
/// Enough for registry → CDN → signed URL chains, few enough to stop loops.
const MAX_REDIRECTS: usize = 10;
/// How much of an error response body is read for its message.
const MAX_ERROR_BODY: u64 = 16 << 10;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("registry client setup: {0}")]
    Setup(String),
    #[error("registry endpoint {endpoint:?}: {message}")]
    Endpoint { endpoint: String, message: String },
    #[error("credentials: {0}")]
    Credentials(String),
    #[error("{url}: {reference}: {cause}")]
    Connection {
        url: String,
        reference: String,
        cause: String,
    },
    #[error("{url}: {reference}: HTTP {status}{detail}")]
    Status {
        url: String,
        reference: String,
        status: u16,
        detail: String,
    },
    #[error("{url}: {reference}: not found (HTTP 404){detail}")]
    NotFound {
        url: String,
        reference: String,
        detail: String,
    },
    #[error("{url}: {reference}: access denied (HTTP {status}): {detail}")]
    Unauthorized {
        url: String,
        reference: String,
        status: u16,
        detail: String,
    },
    #[error("{url}: {reference}: authentication failed: {message}")]
    Auth {
        url: String,
        reference: String,
        message: String,
    },
    #[error("{url}: {reference}: more than {MAX_REDIRECTS} redirects")]
    Redirects { url: String, reference: String },
    #[error("{url}: {reference}: unusable redirect Location {location:?}")]
    Redirect {
        url: String,
        reference: String,
        location: String,
    },
    #[error(
        "{url}: {reference}: unsupported manifest media type {media_type:?} (berth pulls OCI image manifests and indexes, and Docker schema2 manifests and manifest lists)"
    )]
    UnsupportedMediaType {
        url: String,
        reference: String,
        media_type: String,
    },
    #[error("{url}: {reference}: manifest is larger than the {limit}-byte limit")]
    ManifestTooLarge {
        url: String,
        reference: String,
        limit: u64,
    },
    #[error("{url}: {reference}: manifest has digest {actual}, expected {expected}")]
    ManifestDigest {
        url: String,
        reference: String,
        expected: Digest,
        actual: Digest,
    },
    #[error("{url}: {reference}: invalid manifest: {message}")]
    ManifestInvalid {
        url: String,
        reference: String,
        message: String,
    },
    #[error("{reference}: index {index} has no image for platform {wanted} (it has: {available})")]
    NoMatchingPlatform {
        reference: String,
        index: Digest,
        wanted: String,
        available: String,
    },
    #[error("{url}: {reference}: blob {digest}: received {received} bytes, expected {expected}")]
    BlobSize {
        url: String,
        reference: String,
        digest: Digest,
        expected: u64,
        received: u64,
    },
    #[error("{url}: {reference}: blob {digest} is larger than the {limit}-byte limit")]
    BlobTooLarge {
        url: String,
        reference: String,
        digest: Digest,
        limit: u64,
    },
    #[error("{url}: {reference}: blob {digest} has content with digest {actual}")]
    BlobDigest {
        url: String,
        reference: String,
        digest: Digest,
        actual: Digest,
    },
    #[error(
        "{url}: {reference}: blob {digest}: asked for bytes from {requested}, got Content-Range {content_range:?}"
    )]
    ContentRange {
        url: String,
        reference: String,
        digest: Digest,
        requested: u64,
        content_range: String,
    },
    #[error("{reference}: blob {digest}: offset {offset} is beyond its size {size}")]
    Offset {
        reference: String,
        digest: Digest,
        offset: u64,
        size: u64,
    },
    #[error("{reference}: every endpoint failed: {}", list(.errors))]
    AllEndpoints {
        reference: String,
        errors: Vec<RegistryError>,
    },
}

fn list(errors: &[RegistryError]) -> String {
    errors
        .iter()
        .enumerate()
        .map(|(i, e)| format!("[{}] {e}", i + 1))
        .collect::<Vec<_>>()
        .join("; ")
}

impl RegistryError {
    /// Whether trying the same request again may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            RegistryError::Connection { .. } => true,
            RegistryError::Status { status, .. } => {
                *status >= 500 || *status == 429 || *status == 408
            }
            _ => false,
        }
    }

    /// Whether this says the content does not exist (on every endpoint tried).
    pub fn is_not_found(&self) -> bool {
        match self {
            RegistryError::NotFound { .. } => true,
            RegistryError::AllEndpoints { errors, .. } => {
                errors.iter().all(RegistryError::is_not_found)
            }
            _ => false,
        }
    }
}

/// What a reference resolves to for one platform.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The digest of what the tag (or digest) names: the index or manifest
    /// list if there is one, else the manifest. What `RepoDigests` shows.
    pub repo_digest: Digest,
    /// The digest of the platform's image manifest.
    pub manifest_digest: Digest,
    /// The image manifest; Docker schema2 in oci-spec's types, media types kept.
    pub manifest: ImageManifest,
    /// The manifest exactly as the registry sent it (its digest is `manifest_digest`).
    pub manifest_bytes: Vec<u8>,
    /// The index or manifest list, when the reference named one.
    pub index_bytes: Option<Vec<u8>>,
    /// The image manifest's media type (OCI or Docker schema2).
    pub media_type: String,
}

/// A client for one node: cheap to clone, shares connections and tokens.
#[derive(Clone)]
pub struct RegistryClient {
    inner: Arc<Inner>,
}

struct Inner {
    config: RegistryConfig,
    default_http: reqwest::Client,
    /// Hosts with their own TLS settings (`insecure_skip_verify`, `ca_file`).
    host_http: HashMap<String, reqwest::Client>,
    auth: AuthCache,
}

impl fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryClient")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

/// One place to fetch from: a mirror or the registry itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Endpoint {
    /// `scheme://host[:port][/prefix]/v2`.
    base: Url,
    /// `host[:port]` of `base`: the key of cached tokens.
    authority: String,
    /// The `[registry.hosts]` key and credentials lookup name: the registry's
    /// name (`docker.io`) for the registry itself, the authority for a mirror.
    config_host: String,
    mirror: bool,
}

impl Endpoint {
    fn new(url: &str, config_host: Option<&str>, mirror: bool) -> Result<Self, RegistryError> {
        let mut base =
            crate::config::validate_endpoint(url).map_err(|message| RegistryError::Endpoint {
                endpoint: url.to_string(),
                message,
            })?;
        // Mirrors may be given with or without the API's /v2 root, as containerd allows.
        let path = base.path().trim_end_matches('/').to_string();
        if !path.ends_with("/v2") {
            base.set_path(&format!("{path}/v2"));
        } else {
            base.set_path(&path);
        }
        let authority = authority(&base);
        Ok(Endpoint {
            config_host: config_host.map_or_else(|| authority.clone(), str::to_string),
            authority,
            base,
            mirror,
        })
    }

    fn url(&self, repository: &str, tail: &str) -> Result<Url, RegistryError> {
        let s = format!(
            "{}/{repository}/{tail}",
            self.base.as_str().trim_end_matches('/')
        );
        Url::parse(&s).map_err(|e| RegistryError::Endpoint {
            endpoint: self.base.to_string(),
            message: format!("cannot form a URL for {repository:?}: {e}"),
        })
    }
}

fn authority(url: &Url) -> String {
    let host = url.host_str().unwrap_or_default();
    match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_string(),
    }
}

fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str() == b.host_str()
        && a.port_or_known_default() == b.port_or_known_default()
}

/// A URL for messages: the query is dropped because blob storage puts
/// signatures there.
fn shown(url: &Url) -> String {
    let mut u = url.clone();
    u.set_query(None);
    u.to_string()
}

/// A reqwest error with its causes, which is where the useful part is
/// ("connection refused"), without the URL, which our messages carry.
fn error_chain(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut out = String::new();
    let mut cur: Option<&dyn std::error::Error> = Some(&e);
    while let Some(err) = cur {
        let text = err.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
        cur = err.source();
    }
    out
}

/// Reads a body of at most `limit` bytes; `None` if it is longer.
async fn read_limited(
    mut response: reqwest::Response,
    limit: u64,
) -> Result<Option<Vec<u8>>, reqwest::Error> {
    if response.content_length().is_some_and(|n| n > limit) {
        return Ok(None);
    }
    let mut out = Vec::with_capacity(response.content_length().unwrap_or(0) as usize);
    while let Some(chunk) = response.chunk().await? {
        if out.len() as u64 + chunk.len() as u64 > limit {
            return Ok(None);
        }
        out.extend_from_slice(&chunk);
    }
    Ok(Some(out))
}

/// Reads the registry's error document (`{"errors":[{"code","message"}]}`),
/// or the start of whatever text came instead, as `": …"`.
async fn error_detail(response: reqwest::Response) -> String {
    let Ok(Some(body)) = read_limited(response, MAX_ERROR_BODY).await else {
        return String::new();
    };
    #[derive(serde::Deserialize)]
    struct Errors {
        errors: Vec<ErrorEntry>,
    }
    #[derive(serde::Deserialize)]
    struct ErrorEntry {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    if let Ok(doc) = serde_json::from_slice::<Errors>(&body)
        && !doc.errors.is_empty()
    {
        let parts: Vec<String> = doc
            .errors
            .iter()
            .map(|e| match (e.code.is_empty(), e.message.is_empty()) {
                (false, false) => format!("{} ({})", e.code, e.message),
                (false, true) => e.code.clone(),
                _ => e.message.clone(),
            })
            .collect();
        return format!(": {}", parts.join("; "));
    }
    let text = String::from_utf8_lossy(&body);
    let text: String = text.trim().chars().take(200).collect();
    if text.is_empty() {
        String::new()
    } else {
        format!(": {text}")
    }
}

/// One GET to the registry API, before auth and redirects.
struct Request<'a> {
    ep: &'a Endpoint,
    reference: &'a Reference,
    url: Url,
    accept: Option<&'static str>,
    range_from: Option<u64>,
    credentials: Option<&'a Credentials>,
}

/// A manifest as fetched, digest computed.
struct Fetched {
    bytes: Vec<u8>,
    media_type: String,
    kind: Kind,
    digest: Digest,
}

/// rustls needs a process-wide crypto provider; we ship ring. An application
/// that installed another one first keeps it.
fn ensure_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing the race to another thread is fine: some provider is installed.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

impl RegistryClient {
    pub fn new(config: &RegistryConfig) -> Result<Self, RegistryError> {
        ensure_crypto_provider();
        let builder = || {
            reqwest::Client::builder()
                // Redirects are followed by hand: see `follow`.
                .redirect(reqwest::redirect::Policy::none())
                .connect_timeout(config.connect_timeout)
                .read_timeout(config.read_timeout)
                .user_agent(concat!("berth/", env!("CARGO_PKG_VERSION")))
        };
        let default_http = builder()
            .build()
            .map_err(|e| RegistryError::Setup(error_chain(e)))?;
        let mut host_http = HashMap::new();
        for (host, hc) in &config.hosts {
            if !hc.insecure_skip_verify && hc.ca_file.is_none() {
                continue;
            }
            let mut b = builder();
            if hc.insecure_skip_verify {
                b = b.danger_accept_invalid_certs(true);
            }
            if let Some(ca) = &hc.ca_file {
                let pem = std::fs::read(ca).map_err(|e| {
                    RegistryError::Setup(format!("host {host}: ca_file {}: {e}", ca.display()))
                })?;
                let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                    RegistryError::Setup(format!(
                        "host {host}: ca_file {}: {}",
                        ca.display(),
                        error_chain(e)
                    ))
                })?;
                if certs.is_empty() {
                    return Err(RegistryError::Setup(format!(
                        "host {host}: ca_file {} holds no PEM certificate",
                        ca.display()
                    )));
                }
                for c in certs {
                    b = b.add_root_certificate(c);
                }
            }
            let client = b
                .build()
                .map_err(|e| RegistryError::Setup(format!("host {host}: {}", error_chain(e))))?;
            host_http.insert(host.clone(), client);
        }
        // Catch bad mirror URLs now rather than at the first pull.
        for (registry, m) in &config.mirrors {
            for ep in &m.endpoints {
                Endpoint::new(ep, None, true)
                    .map_err(|e| RegistryError::Setup(format!("mirror of {registry}: {e}")))?;
            }
        }
        Ok(RegistryClient {
            inner: Arc::new(Inner {
                config: config.clone(),
                default_http,
                host_http,
                auth: AuthCache::default(),
            }),
        })
    }

    /// Resolves a reference to the image manifest for `platform`: fetches the
    /// tag or digest; if that is an index or manifest list, picks the
    /// platform's entry and fetches it. Manifests fetched by digest are
    /// verified against it.
    pub async fn resolve(
        &self,
        r: &Reference,
        platform: &Platform,
        creds: Option<&Credentials>,
    ) -> Result<Resolved, RegistryError> {
        let mut errors = Vec::new();
        for ep in self.endpoints(r)? {
            match self.resolve_on(&ep, r, platform, creds).await {
                Ok(resolved) => return Ok(resolved),
                Err(e) => self.endpoint_failed(&ep, r, e, &mut errors),
            }
        }
        Err(combine(r, errors))
    }

    async fn resolve_on(
        &self,
        ep: &Endpoint,
        r: &Reference,
        platform: &Platform,
        creds: Option<&Credentials>,
    ) -> Result<Resolved, RegistryError> {
        let creds = self.credentials(ep, creds)?;
        let creds = creds.as_ref();
        let top = self
            .fetch_manifest(ep, r, creds, &r.manifest_reference(), r.digest.as_ref())
            .await?;
        match top.kind {
            Kind::Manifest => {
                let url = ep.url(
                    &r.repository,
                    &format!("manifests/{}", r.manifest_reference()),
                )?;
                let manifest = parse_manifest(&top.bytes, &url, r)?;
                Ok(Resolved {
                    repo_digest: top.digest.clone(),
                    manifest_digest: top.digest,
                    manifest,
                    manifest_bytes: top.bytes,
                    index_bytes: None,
                    media_type: top.media_type,
                })
            }
            Kind::Index => {
                let index_url = ep.url(
                    &r.repository,
                    &format!("manifests/{}", r.manifest_reference()),
                )?;
                let invalid = |message: String| RegistryError::ManifestInvalid {
                    url: shown(&index_url),
                    reference: r.to_string(),
                    message,
                };
                let index: ImageIndex = serde_json::from_slice(&top.bytes)
                    .map_err(|e| invalid(format!("index: {e}")))?;
                let entry = manifest::select(&index, platform).map_err(|available| {
                    RegistryError::NoMatchingPlatform {
                        reference: r.to_string(),
                        index: top.digest.clone(),
                        wanted: platform.to_string(),
                        available,
                    }
                })?;
                let entry_type = entry.media_type().to_string();
                if manifest::kind(&entry_type) != Some(Kind::Manifest) {
                    return Err(RegistryError::UnsupportedMediaType {
                        url: shown(&index_url),
                        reference: format!("{r} (index entry for {platform})"),
                        media_type: entry_type,
                    });
                }
                let digest = Digest::try_from(entry.digest())
                    .map_err(|e| invalid(format!("entry for {platform}: {e}")))?;
                let child = self
                    .fetch_manifest(ep, r, creds, &digest.to_string(), Some(&digest))
                    .await?;
                let url = ep.url(&r.repository, &format!("manifests/{digest}"))?;
                if child.kind != Kind::Manifest {
                    return Err(RegistryError::UnsupportedMediaType {
                        url: shown(&url),
                        reference: r.to_string(),
                        media_type: child.media_type,
                    });
                }
                if child.bytes.len() as u64 != entry.size() {
                    return Err(invalid(format!(
                        "entry {digest} says {} bytes, the manifest has {}",
                        entry.size(),
                        child.bytes.len()
                    )));
                }
                let manifest = parse_manifest(&child.bytes, &url, r)?;
                Ok(Resolved {
                    repo_digest: top.digest,
                    manifest_digest: child.digest,
                    manifest,
                    manifest_bytes: child.bytes,
                    index_bytes: Some(top.bytes),
                    media_type: child.media_type,
                })
            }
        }
    }

    async fn fetch_manifest(
        &self,
        ep: &Endpoint,
        r: &Reference,
        creds: Option<&Credentials>,
        tag_or_digest: &str,
        expected: Option<&Digest>,
    ) -> Result<Fetched, RegistryError> {
        let url = ep.url(&r.repository, &format!("manifests/{tag_or_digest}"))?;
        let req = Request {
            ep,
            reference: r,
            url: url.clone(),
            accept: Some(manifest::ACCEPT),
            range_from: None,
            credentials: creds,
        };
        let (req, this) = (&req, self);
        let (bytes, content_type, header_digest) = self
            .retrying(move || async move {
                let response = this.send(req).await?;
                let header = |name: &str| {
                    response
                        .headers()
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string)
                };
                let content_type = header("content-type");
                let header_digest = header("docker-content-digest");
                let bytes = read_limited(response, MAX_MANIFEST_SIZE)
                    .await
                    .map_err(|e| this.connection_error(req, &req.url, e))?
                    .ok_or_else(|| RegistryError::ManifestTooLarge {
                        url: shown(&req.url),
                        reference: r.to_string(),
                        limit: MAX_MANIFEST_SIZE,
                    })?;
                Ok((bytes, content_type, header_digest))
            })
            .await?;
        let digest = Digest::of(&bytes);
        match expected {
            Some(want) if *want != digest => {
                return Err(RegistryError::ManifestDigest {
                    url: shown(&url),
                    reference: r.to_string(),
                    expected: want.clone(),
                    actual: digest,
                });
            }
            Some(_) => {}
            None => {
                if let Some(h) = header_digest
                    && h.parse::<Digest>().ok().as_ref() != Some(&digest)
                {
                    // Not fatal: what we hashed is what we store and report.
                    tracing::warn!(url = %shown(&url), header = h, computed = %digest,
                        "Docker-Content-Digest differs from the manifest's digest");
                }
            }
        }
        let unsupported = |media_type: String| RegistryError::UnsupportedMediaType {
            url: shown(&url),
            reference: r.to_string(),
            media_type,
        };
        let media_type = manifest::media_type(&bytes, content_type.as_deref())
            .ok_or_else(|| unsupported("(none given)".to_string()))?;
        let kind = manifest::kind(&media_type).ok_or_else(|| unsupported(media_type.clone()))?;
        tracing::debug!(url = %shown(&url), %digest, media_type, "fetched manifest");
        Ok(Fetched {
            bytes,
            media_type,
            kind,
            digest,
        })
    }

    /// The endpoints for `r`'s registry, in the order to try them.
    pub(super) fn endpoints(&self, r: &Reference) -> Result<Vec<Endpoint>, RegistryError> {
        let config = &self.inner.config;
        let host = if r.registry == DOCKER_HUB {
            DOCKER_HUB_ENDPOINT
        } else {
            &r.registry
        };
        let scheme = if config.plain_http(&r.registry) {
            "http"
        } else {
            "https"
        };
        let upstream = Endpoint::new(&format!("{scheme}://{host}"), Some(&r.registry), false)?;
        let mut out = Vec::new();
        for url in config.mirror_endpoints(&r.registry) {
            let ep = Endpoint::new(url, None, true)?;
            if ep.base == upstream.base {
                out.push(upstream.clone());
            } else if !out.contains(&ep) {
                out.push(ep);
            }
        }
        if !out.contains(&upstream) {
            out.push(upstream);
        }
        Ok(out)
    }

    fn endpoint_failed(
        &self,
        ep: &Endpoint,
        r: &Reference,
        e: RegistryError,
        errors: &mut Vec<RegistryError>,
    ) {
        tracing::warn!(endpoint = %ep.base, reference = %r, error = %e,
            "registry endpoint failed; trying the next one if any");
        errors.push(e);
    }

    /// The credentials to present to `ep`; see the module doc for whose go where.
    fn credentials(
        &self,
        ep: &Endpoint,
        given: Option<&Credentials>,
    ) -> Result<Option<Credentials>, RegistryError> {
        if !ep.mirror
            && let Some(c) = given
        {
            return Ok(Some(c.clone()));
        }
        let config = &self.inner.config;
        if let Some(h) = config.hosts.get(&ep.config_host) {
            if let (Some(username), Some(password)) = (&h.username, &h.password) {
                return Ok(Some(Credentials::Basic {
                    username: username.clone(),
                    password: password.clone(),
                }));
            }
            if let Some(t) = &h.identity_token {
                return Ok(Some(Credentials::IdentityToken(t.clone())));
            }
        }
        match &config.config_path {
            Some(path) => Credentials::from_docker_config(path, &ep.config_host),
            None => Ok(None),
        }
    }

    fn http(&self, ep: &Endpoint) -> &reqwest::Client {
        self.inner
            .host_http
            .get(&ep.config_host)
            .unwrap_or(&self.inner.default_http)
    }

    /// Runs `op` until it succeeds, fails for good, or runs out of attempts.
    async fn retrying<T, F, Fut>(&self, mut op: F) -> Result<T, RegistryError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, RegistryError>>,
    {
        let retry = &self.inner.config.retry;
        let mut attempt = 1;
        loop {
            match op().await {
                Err(e) if e.is_retryable() && attempt < retry.attempts => {
                    let delay = retry.backoff(attempt);
                    tracing::warn!(error = %e, attempt, ?delay, "registry request failed; retrying");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    /// Sends `req`, answering auth challenges and following redirects.
    /// Returns only 2xx responses; everything else becomes an error.
    async fn send(&self, req: &Request<'_>) -> Result<reqwest::Response, RegistryError> {
        let scope_text = format!("repository:{}:pull", req.reference.repository);
        let scope = Scope {
            authority: &req.ep.authority,
            scope: &scope_text,
            credentials: req.credentials,
        };
        let mut answered = false;
        loop {
            let auth = self.inner.auth.header(&scope);
            let mut headers = HeaderMap::new();
            if let Some(accept) = req.accept {
                headers.insert(ACCEPT, HeaderValue::from_static(accept));
            }
            if let Some(from) = req.range_from
                && let Ok(v) = HeaderValue::from_str(&format!("bytes={from}-"))
            {
                headers.insert(RANGE, v);
            }
            if let Some(a) = &auth {
                headers.insert(AUTHORIZATION, a.clone());
            }
            let (response, url) = self.follow(req, headers).await?;
            let status = response.status();
            // Only the registry's own 401 is a challenge; blob storage's is final.
            if status.as_u16() == 401 && same_origin(&url, &req.url) {
                let challenges: Vec<_> = response
                    .headers()
                    .get_all(WWW_AUTHENTICATE)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .flat_map(auth::parse_challenges)
                    .collect();
                let denied = |detail: String| RegistryError::Unauthorized {
                    url: shown(&url),
                    reference: req.reference.to_string(),
                    status: 401,
                    detail,
                };
                if answered {
                    return Err(denied(match req.credentials {
                        Some(_) => "the registry refused the credentials".into(),
                        None => "the registry wants credentials and none were given".into(),
                    }));
                }
                if challenges.is_empty() {
                    return Err(denied("no WWW-Authenticate challenge".into()));
                }
                self.inner
                    .auth
                    .answer(self.http(req.ep), &challenges, &scope, auth.as_ref())
                    .await
                    .map_err(|f| match f {
                        AuthFailure::Denied(m) => denied(m),
                        AuthFailure::Challenge(m) | AuthFailure::Token(m) => RegistryError::Auth {
                            url: shown(&url),
                            reference: req.reference.to_string(),
                            message: m,
                        },
                    })?;
                answered = true;
                continue;
            }
            if status.is_success() {
                return Ok(response);
            }
            return Err(self.status_error(req, &url, response).await);
        }
    }

    /// One GET, following redirects by hand so that `Authorization` is
    /// dropped once the chain leaves the registry's origin.
    async fn follow(
        &self,
        req: &Request<'_>,
        mut headers: HeaderMap,
    ) -> Result<(reqwest::Response, Url), RegistryError> {
        let http = self.http(req.ep);
        let mut url = req.url.clone();
        for _ in 0..=MAX_REDIRECTS {
            tracing::trace!(url = %shown(&url), "GET");
            let response = http
                .get(url.clone())
                .headers(headers.clone())
                .send()
                .await
                .map_err(|e| self.connection_error(req, &url, e))?;
            if !response.status().is_redirection() {
                return Ok((response, url));
            }
            let Some(location) = response.headers().get(LOCATION) else {
                return Ok((response, url));
            };
            let bad = || RegistryError::Redirect {
                url: shown(&url),
                reference: req.reference.to_string(),
                location: String::from_utf8_lossy(location.as_bytes()).into_owned(),
            };
            let next = location
                .to_str()
                .ok()
                .and_then(|l| url.join(l).ok())
                .filter(|u| matches!(u.scheme(), "http" | "https"))
                .ok_or_else(bad)?;
            if !same_origin(&next, &url) {
                headers.remove(AUTHORIZATION);
            }
            tracing::debug!(from = %shown(&url), to = %shown(&next), "following redirect");
            url = next;
        }
        Err(RegistryError::Redirects {
            url: shown(&req.url),
            reference: req.reference.to_string(),
        })
    }

    fn connection_error(&self, req: &Request<'_>, url: &Url, e: reqwest::Error) -> RegistryError {
        RegistryError::Connection {
            url: shown(url),
            reference: req.reference.to_string(),
            cause: error_chain(e),
        }
    }

    async fn status_error(
        &self,
        req: &Request<'_>,
        url: &Url,
        response: reqwest::Response,
    ) -> RegistryError {
        let status = response.status().as_u16();
        let detail = error_detail(response).await;
        let (url, reference) = (shown(url), req.reference.to_string());
        match status {
            404 => RegistryError::NotFound {
                url,
                reference,
                detail,
            },
            401 | 403 => RegistryError::Unauthorized {
                url,
                reference,
                status,
                detail: match detail.trim_start_matches(": ") {
                    "" => "the registry gave no reason".to_string(),
                    d => d.to_string(),
                },
            },
            _ => RegistryError::Status {
                url,
                reference,
                status,
                detail,
            },
        }
    }
}

fn combine(r: &Reference, mut errors: Vec<RegistryError>) -> RegistryError {
    match errors.len() {
        1 => errors.remove(0),
        _ => RegistryError::AllEndpoints {
            reference: r.to_string(),
            errors,
        },
    }
}

fn parse_manifest(bytes: &[u8], url: &Url, r: &Reference) -> Result<ImageManifest, RegistryError> {
    let invalid = |message: String| RegistryError::ManifestInvalid {
        url: shown(url),
        reference: r.to_string(),
        message,
    };
    let manifest: ImageManifest =
        serde_json::from_slice(bytes).map_err(|e| invalid(e.to_string()))?;
    if manifest.schema_version() != 2 {
        return Err(invalid(format!(
            "schemaVersion {}, expected 2",
            manifest.schema_version()
        )));
    }
    Ok(manifest)
}
