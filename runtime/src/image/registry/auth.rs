//! Registry authentication: credentials (from a CRI `AuthConfig`, a Docker
//! `config.json` or berth's config), `WWW-Authenticate` challenges, and the
//! bearer-token flow of the distribution token spec with a token cache.
//!
//! A registry answers an unauthenticated request with 401 and a challenge. For
//! `Basic` we resend with the credentials; for `Bearer` we ask the challenge's
//! `realm` for a token for `service` and `scope` (GET with basic credentials or
//! anonymously, or an OAuth2 POST with a refresh token), then resend with it.
//! Tokens are cached per (host, scope, credentials) until shortly before they
//! expire, so a pull of many layers asks the token server once.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use reqwest::header::HeaderValue;

use super::RegistryError;
use crate::image::digest::Digest;
use crate::image::reference::DOCKER_HUB;

/// Where `docker login` files Docker Hub credentials.
const DOCKER_HUB_LOGIN_KEY: &str = "https://index.docker.io/v1/";
/// Docker Hub's other names; `auths` keys under any of them apply to `docker.io`.
const DOCKER_HUB_ALIASES: [&str; 3] = [DOCKER_HUB, "index.docker.io", "registry-1.docker.io"];
/// Token responses are small JSON documents; anything bigger is not one.
const MAX_TOKEN_RESPONSE: u64 = 1 << 20;
/// The token spec's minimum lifetime when `expires_in` is missing or smaller.
const MIN_TOKEN_LIFETIME: Duration = Duration::from_secs(60);

/// Credentials for one registry.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum Credentials {
    Basic {
        username: String,
        password: String,
    },
    /// An OAuth2 refresh token, exchanged at the token server with a POST.
    IdentityToken(String),
    /// A bearer token sent as is, without asking a token server.
    RegistryToken(String),
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Secrets never reach logs.
        match self {
            Credentials::Basic { username, .. } => f
                .debug_struct("Basic")
                .field("username", username)
                .field("password", &"<redacted>")
                .finish(),
            Credentials::IdentityToken(_) => f.write_str("IdentityToken(<redacted>)"),
            Credentials::RegistryToken(_) => f.write_str("RegistryToken(<redacted>)"),
        }
    }
}

impl Credentials {
    /// From the fields of a CRI `AuthConfig` (or a Docker `auths` entry);
    /// empty strings count as absent. Precedence: `registry_token`,
    /// `identity_token`, `username`/`password`, then `auth` (base64 of
    /// `user:password`). `None` when every field is empty.
    pub fn from_auth_config(
        username: &str,
        password: &str,
        auth: &str,
        identity_token: &str,
        registry_token: &str,
    ) -> Result<Option<Self>, RegistryError> {
        if !registry_token.is_empty() {
            return Ok(Some(Credentials::RegistryToken(registry_token.to_string())));
        }
        if !identity_token.is_empty() {
            return Ok(Some(Credentials::IdentityToken(identity_token.to_string())));
        }
        if !username.is_empty() {
            return Ok(Some(Credentials::Basic {
                username: username.to_string(),
                password: password.to_string(),
            }));
        }
        if !auth.is_empty() {
            // The decoded value is a secret: errors describe it, never quote it.
            let raw = BASE64.decode(auth.trim()).map_err(|e| {
                RegistryError::Credentials(format!("\"auth\" is not valid base64: {e}"))
            })?;
            let text = String::from_utf8(raw).map_err(|_| {
                RegistryError::Credentials("\"auth\" does not decode to UTF-8 text".into())
            })?;
            let (user, pass) = text.split_once(':').ok_or_else(|| {
                RegistryError::Credentials("\"auth\" does not decode to \"user:password\"".into())
            })?;
            return Ok(Some(Credentials::Basic {
                username: user.to_string(),
                password: pass.to_string(),
            }));
        }
        Ok(None)
    }

    /// Looks up `registry` (`host[:port]` as in references) in a Docker
    /// `config.json`. A missing file means no credentials.
    pub fn from_docker_config(path: &Path, registry: &str) -> Result<Option<Self>, RegistryError> {
        match std::fs::read(path) {
            Ok(text) => Self::from_docker_config_json(&text, registry)
                .map_err(|e| RegistryError::Credentials(format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::debug!(path = %path.display(), "no Docker credentials file");
                Ok(None)
            }
            Err(e) => Err(RegistryError::Credentials(format!(
                "reading {}: {e}",
                path.display()
            ))),
        }
    }

    /// As [`from_docker_config`](Self::from_docker_config), on the file's text.
    /// `auths` keys may be bare hosts or URLs (`https://host/v1/`); for
    /// `docker.io` the key `https://index.docker.io/v1/` that `docker login`
    /// writes is preferred, then any other of Docker Hub's names.
    pub fn from_docker_config_json(text: &[u8], registry: &str) -> Result<Option<Self>, String> {
        #[derive(serde::Deserialize)]
        struct File {
            #[serde(default)]
            auths: HashMap<String, Entry>,
        }
        #[derive(serde::Deserialize, Default)]
        #[serde(default)]
        struct Entry {
            auth: String,
            username: String,
            password: String,
            identitytoken: String,
            registrytoken: String,
        }
        let file: File =
            serde_json::from_slice(text).map_err(|e| format!("not a Docker config.json: {e}"))?;
        let hub = DOCKER_HUB_ALIASES.contains(&registry);
        let matches = |key: &str| {
            let host = key_host(key);
            host == registry || (hub && DOCKER_HUB_ALIASES.contains(&host))
        };
        let mut keys: Vec<&String> = file.auths.keys().filter(|k| matches(k)).collect();
        // Deterministic choice: docker login's own key first, then exact names.
        keys.sort_by_key(|k| {
            (
                k.as_str() != DOCKER_HUB_LOGIN_KEY,
                k.as_str() != registry,
                *k,
            )
        });
        let Some(key) = keys.first() else {
            return Ok(None);
        };
        let e = &file.auths[*key];
        Self::from_auth_config(
            &e.username,
            &e.password,
            &e.auth,
            &e.identitytoken,
            &e.registrytoken,
        )
        .map_err(|err| format!("auths.{key:?}: {err}"))
    }

    /// Identifies the credentials in cache keys without keeping them in clear.
    fn fingerprint(&self) -> Digest {
        let text = match self {
            Credentials::Basic { username, password } => format!("basic\0{username}\0{password}"),
            Credentials::IdentityToken(t) => format!("identity\0{t}"),
            Credentials::RegistryToken(t) => format!("registry\0{t}"),
        };
        Digest::of(text.as_bytes())
    }
}

/// `https://host:port/v1/` → `host:port`.
fn key_host(key: &str) -> &str {
    let rest = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    rest.split('/').next().unwrap_or(rest)
}

/// One challenge of a `WWW-Authenticate` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Challenge {
    /// Lowercase: `bearer`, `basic`.
    pub scheme: String,
    /// Parameter names lowercased.
    pub params: HashMap<String, String>,
}

/// Parses `WWW-Authenticate` (RFC 7235): one or more challenges, each a scheme
/// followed by comma-separated `name=value` parameters, values plain or quoted.
pub(super) fn parse_challenges(header: &str) -> Vec<Challenge> {
    let s = header.as_bytes();
    let mut i = 0;
    let mut out = Vec::new();
    let is_tchar = |b: u8| !b.is_ascii_whitespace() && b != b',' && b != b'=' && b != b'"';
    let skip_ws = |i: &mut usize| {
        while *i < s.len() && s[*i].is_ascii_whitespace() {
            *i += 1;
        }
    };
    let token = |i: &mut usize| {
        let start = *i;
        while *i < s.len() && is_tchar(s[*i]) {
            *i += 1;
        }
        &header[start..*i]
    };
    loop {
        while i < s.len() && (s[i].is_ascii_whitespace() || s[i] == b',') {
            i += 1;
        }
        if i >= s.len() {
            break;
        }
        let scheme = token(&mut i);
        if scheme.is_empty() {
            // A stray character; skip it rather than loop forever.
            i += 1;
            continue;
        }
        let mut params = HashMap::new();
        loop {
            skip_ws(&mut i);
            let save = i;
            let name = token(&mut i);
            skip_ws(&mut i);
            if name.is_empty() || i >= s.len() || s[i] != b'=' {
                // Not a parameter: the next challenge's scheme (or the end).
                i = save;
                break;
            }
            i += 1;
            skip_ws(&mut i);
            let value = if i < s.len() && s[i] == b'"' {
                i += 1;
                let mut v = String::new();
                while i < s.len() && s[i] != b'"' {
                    if s[i] == b'\\' && i + 1 < s.len() {
                        i += 1;
                    }
                    // Push whole UTF-8 sequences: advance to the next char boundary.
                    let start = i;
                    i += 1;
                    while i < s.len() && !header.is_char_boundary(i) {
                        i += 1;
                    }
                    v.push_str(&header[start..i]);
                }
                i += 1; // closing quote (or past the end)
                v
            } else {
                token(&mut i).to_string()
            };
            params.insert(name.to_ascii_lowercase(), value);
            skip_ws(&mut i);
            if i < s.len() && s[i] == b',' {
                i += 1;
            } else {
                break;
            }
        }
        out.push(Challenge {
            scheme: scheme.to_ascii_lowercase(),
            params,
        });
    }
    out
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct TokenKey {
    authority: String,
    scope: String,
    credentials: Option<Digest>,
}

struct CachedToken {
    header: HeaderValue,
    valid_until: Instant,
}

/// Tokens and learned auth schemes, shared by all clones of a client.
#[derive(Default)]
pub(super) struct AuthCache {
    tokens: Mutex<HashMap<TokenKey, CachedToken>>,
    /// Hosts that asked for Basic: later requests send it without a round trip.
    basic_hosts: Mutex<HashSet<String>>,
    /// One token request at a time per key, so that many layer downloads
    /// hitting a 401 together cause one token request, not one each.
    inflight: Mutex<HashMap<TokenKey, Arc<tokio::sync::Mutex<()>>>>,
}

/// What the caller needs to know to ask again after a challenge.
pub(super) struct Scope<'a> {
    /// `host[:port]` of the endpoint.
    pub authority: &'a str,
    /// `repository:<name>:pull`.
    pub scope: &'a str,
    pub credentials: Option<&'a Credentials>,
}

impl AuthCache {
    fn key(s: &Scope<'_>) -> TokenKey {
        TokenKey {
            authority: s.authority.to_string(),
            scope: s.scope.to_string(),
            credentials: s.credentials.map(Credentials::fingerprint),
        }
    }

    /// The `Authorization` to send before any challenge, if one is known.
    pub fn header(&self, s: &Scope<'_>) -> Option<HeaderValue> {
        match s.credentials {
            Some(Credentials::RegistryToken(t)) => return bearer(t),
            Some(Credentials::Basic { username, password })
                if lock(&self.basic_hosts).contains(s.authority) =>
            {
                return basic(username, password);
            }
            _ => {}
        }
        let key = Self::key(s);
        let mut tokens = lock(&self.tokens);
        match tokens.get(&key) {
            Some(t) if t.valid_until > Instant::now() => Some(t.header.clone()),
            Some(_) => {
                tokens.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Answers a 401: learns Basic, or gets (or reuses a fresher) bearer
    /// token. `sent` is the `Authorization` the refused request carried.
    /// Errors are messages; the caller adds the URL and reference.
    pub async fn answer(
        &self,
        http: &reqwest::Client,
        challenges: &[Challenge],
        s: &Scope<'_>,
        sent: Option<&HeaderValue>,
    ) -> Result<(), AuthFailure> {
        let bearer_ch = challenges.iter().find(|c| c.scheme == "bearer");
        let basic_ch = challenges.iter().find(|c| c.scheme == "basic");
        match (bearer_ch, basic_ch, s.credentials) {
            (_, _, Some(Credentials::RegistryToken(_))) => Err(AuthFailure::Denied(
                "the registry refused the given registry token".into(),
            )),
            (Some(ch), _, _) => self.refresh_token(http, ch, s, sent).await,
            (None, Some(_), Some(Credentials::Basic { .. })) => {
                let newly = lock(&self.basic_hosts).insert(s.authority.to_string());
                if newly {
                    Ok(())
                } else {
                    Err(AuthFailure::Denied(
                        "the registry refused the username and password".into(),
                    ))
                }
            }
            (None, Some(_), _) => Err(AuthFailure::Denied(
                "the registry asks for a username and password and none were given".into(),
            )),
            (None, None, _) => Err(AuthFailure::Challenge(format!(
                "no supported challenge (Basic or Bearer) in WWW-Authenticate: {:?}",
                challenges
                    .iter()
                    .map(|c| c.scheme.as_str())
                    .collect::<Vec<_>>()
            ))),
        }
    }

    async fn refresh_token(
        &self,
        http: &reqwest::Client,
        ch: &Challenge,
        s: &Scope<'_>,
        sent: Option<&HeaderValue>,
    ) -> Result<(), AuthFailure> {
        let key = Self::key(s);
        let gate = lock(&self.inflight).entry(key.clone()).or_default().clone();
        let _turn = gate.lock().await;
        {
            let mut tokens = lock(&self.tokens);
            if let Some(t) = tokens.get(&key) {
                if Some(&t.header) != sent && t.valid_until > Instant::now() {
                    // Another task got a new token while we waited.
                    return Ok(());
                }
                tokens.remove(&key);
            }
        }
        let realm = ch
            .params
            .get("realm")
            .ok_or_else(|| AuthFailure::Challenge("Bearer challenge without realm".into()))?;
        let realm_url = reqwest::Url::parse(realm).map_err(|e| {
            AuthFailure::Challenge(format!("Bearer realm {realm:?} is not a URL: {e}"))
        })?;
        if !matches!(realm_url.scheme(), "http" | "https") {
            return Err(AuthFailure::Challenge(format!(
                "Bearer realm {realm:?} is not http(s)"
            )));
        }
        let service = ch.params.get("service").map(String::as_str);
        // The registry's scope says what this request needs; fall back to ours.
        let scope = ch
            .params
            .get("scope")
            .map(String::as_str)
            .unwrap_or(s.scope);
        let token = fetch_token(http, &realm_url, service, scope, s.credentials).await?;
        let header = bearer(&token.value).ok_or_else(|| {
            AuthFailure::Token(format!("{realm}: token is not a valid header value"))
        })?;
        lock(&self.tokens).insert(
            key,
            CachedToken {
                header,
                valid_until: Instant::now() + token.lifetime.mul_f32(0.9),
            },
        );
        Ok(())
    }
}

/// Why a challenge could not be answered.
#[derive(Debug)]
pub(super) enum AuthFailure {
    /// The registry does not accept what we have (401 stands).
    Denied(String),
    /// The challenge itself is unusable.
    Challenge(String),
    /// The token server failed.
    Token(String),
}

struct Token {
    value: String,
    lifetime: Duration,
}

async fn fetch_token(
    http: &reqwest::Client,
    realm: &reqwest::Url,
    service: Option<&str>,
    scope: &str,
    credentials: Option<&Credentials>,
) -> Result<Token, AuthFailure> {
    let mut params: Vec<(&str, &str)> = Vec::new();
    if let Some(service) = service {
        params.push(("service", service));
    }
    if !scope.is_empty() {
        params.push(("scope", scope));
    }
    let request = match credentials {
        Some(Credentials::IdentityToken(refresh)) => {
            params.push(("grant_type", "refresh_token"));
            params.push(("refresh_token", refresh));
            params.push(("client_id", "berth"));
            http.post(realm.clone()).form(&params)
        }
        Some(Credentials::Basic { username, password }) => http
            .get(realm.clone())
            .query(&params)
            .basic_auth(username, Some(password)),
        _ => http.get(realm.clone()).query(&params),
    };
    tracing::debug!(%realm, scope, "asking for a bearer token");
    let response = request
        .send()
        .await
        .map_err(|e| AuthFailure::Token(format!("{realm}: {}", super::error_chain(e))))?;
    let status = response.status();
    if status.as_u16() == 401 || status.as_u16() == 403 {
        let whom = if credentials.is_some() {
            "the credentials"
        } else {
            "anonymous access (no credentials were given)"
        };
        return Err(AuthFailure::Denied(format!(
            "token server {realm} refused {whom} (HTTP {status})"
        )));
    }
    if !status.is_success() {
        return Err(AuthFailure::Token(format!("{realm}: HTTP {status}")));
    }
    let body = super::read_limited(response, MAX_TOKEN_RESPONSE)
        .await
        .map_err(|e| AuthFailure::Token(format!("{realm}: {e}")))?
        .ok_or_else(|| AuthFailure::Token(format!("{realm}: response over 1 MiB")))?;
    #[derive(serde::Deserialize)]
    struct Response {
        token: Option<String>,
        access_token: Option<String>,
        expires_in: Option<u64>,
    }
    let r: Response = serde_json::from_slice(&body)
        .map_err(|e| AuthFailure::Token(format!("{realm}: invalid token response: {e}")))?;
    let value = r
        .access_token
        .filter(|t| !t.is_empty())
        .or(r.token.filter(|t| !t.is_empty()))
        .ok_or_else(|| AuthFailure::Token(format!("{realm}: response has no token")))?;
    let lifetime = Duration::from_secs(r.expires_in.unwrap_or(0)).max(MIN_TOKEN_LIFETIME);
    Ok(Token { value, lifetime })
}

fn bearer(token: &str) -> Option<HeaderValue> {
    let mut v = HeaderValue::from_str(&format!("Bearer {token}")).ok()?;
    v.set_sensitive(true);
    Some(v)
}

fn basic(username: &str, password: &str) -> Option<HeaderValue> {
    let encoded = BASE64.encode(format!("{username}:{password}"));
    let mut v = HeaderValue::from_str(&format!("Basic {encoded}")).ok()?;
    v.set_sensitive(true);
    Some(v)
}

/// A poisoned lock only means another task panicked mid-update of a cache;
/// the cache is still usable, so recover its contents.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cri_auth_config_precedence() {
        let b = |u: &str, p: &str| {
            Some(Credentials::Basic {
                username: u.into(),
                password: p.into(),
            })
        };
        assert_eq!(
            Credentials::from_auth_config("", "", "", "", "").unwrap(),
            None
        );
        assert_eq!(
            Credentials::from_auth_config("u", "p", "", "", "").unwrap(),
            b("u", "p")
        );
        let auth = BASE64.encode("me:pa:ss");
        assert_eq!(
            Credentials::from_auth_config("", "", &auth, "", "").unwrap(),
            b("me", "pa:ss")
        );
        assert_eq!(
            Credentials::from_auth_config("u", "p", &auth, "idt", "").unwrap(),
            Some(Credentials::IdentityToken("idt".into()))
        );
        assert_eq!(
            Credentials::from_auth_config("u", "p", "", "idt", "rt").unwrap(),
            Some(Credentials::RegistryToken("rt".into()))
        );
        let e = Credentials::from_auth_config("", "", "!!!", "", "").unwrap_err();
        assert!(e.to_string().contains("base64"), "{e}");
        let e =
            Credentials::from_auth_config("", "", &BASE64.encode("nocolon"), "", "").unwrap_err();
        assert!(e.to_string().contains("user:password"), "{e}");
    }

    #[test]
    fn docker_config_lookup() {
        let hub = BASE64.encode("hubuser:hubpass");
        let text = format!(
            r#"{{"auths": {{
                "https://index.docker.io/v1/": {{"auth": "{hub}"}},
                "registry-1.docker.io": {{"username": "other", "password": "x"}},
                "http://127.0.0.1:5000/v2/": {{"identitytoken": "refresh"}},
                "quay.io": {{}}
            }}, "credsStore": "desktop"}}"#
        );
        let get = |r| Credentials::from_docker_config_json(text.as_bytes(), r).unwrap();
        assert_eq!(
            get("docker.io"),
            Some(Credentials::Basic {
                username: "hubuser".into(),
                password: "hubpass".into()
            })
        );
        assert_eq!(
            get("127.0.0.1:5000"),
            Some(Credentials::IdentityToken("refresh".into()))
        );
        assert_eq!(get("quay.io"), None, "an empty entry gives nothing");
        assert_eq!(get("ghcr.io"), None);
        assert!(Credentials::from_docker_config_json(b"[1]", "x").is_err());
        let bad = r#"{"auths": {"a.io": {"auth": "%%%"}}}"#;
        let e = Credentials::from_docker_config_json(bad.as_bytes(), "a.io").unwrap_err();
        assert!(e.contains("a.io") && e.contains("base64"), "{e}");
    }

    #[test]
    fn docker_config_file_missing_is_no_credentials() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        assert_eq!(
            Credentials::from_docker_config(&path, "docker.io").unwrap(),
            None
        );
        std::fs::write(&path, "not json").unwrap();
        let e = Credentials::from_docker_config(&path, "docker.io").unwrap_err();
        assert!(e.to_string().contains("config.json"), "{e}");
    }

    #[test]
    fn debug_hides_secrets() {
        let c = Credentials::Basic {
            username: "u".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
        assert!(!format!("{:?}", Credentials::IdentityToken("tok".into())).contains("tok"));
    }

    #[test]
    fn challenges() {
        let c = parse_challenges(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#,
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].scheme, "bearer");
        assert_eq!(c[0].params["realm"], "https://auth.docker.io/token");
        assert_eq!(c[0].params["service"], "registry.docker.io");
        assert_eq!(c[0].params["scope"], "repository:library/busybox:pull");

        let c = parse_challenges(r#"Basic realm="Registry Realm", Bearer Realm=x, error="a\"b""#);
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].scheme, "basic");
        assert_eq!(c[0].params["realm"], "Registry Realm");
        assert_eq!(c[1].scheme, "bearer");
        assert_eq!(c[1].params["realm"], "x");
        assert_eq!(c[1].params["error"], "a\"b");

        assert_eq!(parse_challenges("").len(), 0);
        let c = parse_challenges("Basic");
        assert_eq!(c[0].scheme, "basic");
        assert!(c[0].params.is_empty());
        // Unterminated quotes and odd bytes end parsing without panicking.
        let c = parse_challenges("Bearer realm=\"héllo");
        assert_eq!(c[0].params["realm"], "héllo");
        let _ = parse_challenges("=,=\"\\");
    }

    proptest::proptest! {
        #[test]
        fn challenge_parser_takes_anything(h in "\\PC{0,120}") {
            for c in parse_challenges(&h) {
                proptest::prop_assert!(!c.scheme.is_empty());
                proptest::prop_assert_eq!(c.scheme.to_ascii_lowercase(), c.scheme);
            }
        }

        #[test]
        fn quoted_values_round_trip(v in "[^\"\\\\]{0,40}") {
            let c = parse_challenges(&format!("Bearer realm=\"{v}\",service=s"));
            proptest::prop_assert_eq!(&c[0].params["realm"], &v);
            proptest::prop_assert_eq!(&c[0].params["service"], "s");
        }
    }
}
