//! berth's runtime configuration file, `/etc/berth/runtime.toml`.
//!
//! One TOML document with a table per concern; today only `[registry]`. Unknown
//! keys are refused with the key's full path named, so that a typo such as
//! `plain-http` fails at start instead of being silently ignored. Every key is
//! optional: an empty file (or no file, see [`RuntimeConfig::load_or_default`])
//! gives the defaults.
//!
//! ```toml
//! [registry]
//! config_path = "/root/.docker/config.json"   # Docker-style credentials (`auths`)
//!
//! [registry.mirrors."docker.io"]
//! endpoints = ["http://127.0.0.1:5000", "https://mirror.example.com"]
//!
//! [registry.hosts."127.0.0.1:5000"]
//! plain_http = true
//! insecure_skip_verify = false
//! username = "me"
//! password = "secret"
//!
//! [registry.retry]
//! attempts = 5
//! initial_backoff = "200ms"
//! max_backoff = "5s"
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// Where the daemon reads its configuration unless told otherwise.
pub const DEFAULT_PATH: &str = "/etc/berth/runtime.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading runtime config {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("runtime config {origin}: key {key}: {message}")]
    Parse {
        origin: String,
        key: String,
        message: String,
    },
    #[error("runtime config {origin}: key {key}: {message}")]
    Invalid {
        origin: String,
        key: String,
        message: String,
    },
}

/// The whole configuration file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// `[registry]`: how images are pulled.
    pub registry: RegistryConfig,
    /// `[cni]`: pod networking.
    pub cni: CniConfig,
    /// `[cgroup]`: where containers' cgroups go.
    pub cgroup: CgroupSettings,
    /// `[stream]`: the exec, attach and port-forward server.
    pub stream: StreamConfig,
}

/// `[cni]`: where network configs and plugins are, as containerd's CRI
/// plugin names them.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CniConfig {
    /// The first valid `.conflist`/`.conf` here (by name) is the pod network.
    pub conf_dir: PathBuf,
    /// Plugin executables are looked up here, in order.
    pub bin_dirs: Vec<PathBuf>,
    /// Results of ADD, kept for DEL after a restart.
    pub cache_dir: PathBuf,
    /// A conflist with `{{.PodCIDR}}` (and `{{.PodCIDRRanges}}`), written to
    /// `conf_dir/10-berth.conflist` when the kubelet sends the node's pod
    /// CIDR (UpdateRuntimeConfig). Empty: the kubelet's CIDR is only logged.
    pub conf_template: Option<PathBuf>,
    /// Run the plugin types berth has built in (bridge, host-local,
    /// portmap, loopback) inside the daemon instead of executing them; a
    /// list with `"berth.dev/in-process": false` still runs executables.
    pub builtin: bool,
}

impl Default for CniConfig {
    fn default() -> Self {
        Self {
            conf_dir: PathBuf::from("/etc/cni/net.d"),
            bin_dirs: vec![PathBuf::from("/opt/cni/bin")],
            cache_dir: PathBuf::from("/var/lib/cni"),
            conf_template: None,
            builtin: true,
        }
    }
}

/// `[cgroup]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CgroupSettings {
    /// The cgroup (in every hierarchy) that holds all of berth's; pod cgroup
    /// parents from the kubelet are laid out below it.
    pub root: String,
    /// `cgroupfs` or `systemd` (names such as `kubepods-pod1.slice`, laid
    /// out as systemd would, without talking to systemd).
    pub driver: CgroupDriver,
}

impl Default for CgroupSettings {
    fn default() -> Self {
        Self {
            root: "berth".into(),
            driver: CgroupDriver::Cgroupfs,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum CgroupDriver {
    #[default]
    Cgroupfs,
    Systemd,
}

/// `[stream]`: where the streaming server listens (containerd's
/// `stream_server_address` and `stream_server_port`; port 0 picks one).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamConfig {
    pub address: String,
    pub port: u16,
}

impl Default for StreamConfig {
    fn default() -> Self {
        Self {
            address: "127.0.0.1".into(),
            port: 0,
        }
    }
}

impl RuntimeConfig {
    /// Reads and validates the file at `path`; a missing file is an error.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// As [`load`](Self::load), but a missing file means the defaults: a node
    /// needs no configuration file to pull public images.
    pub fn load_or_default(path: &Path) -> Result<Self, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text, &path.display().to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(source) => Err(ConfigError::Read {
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// Parses and validates TOML text; `origin` (a path, or e.g. `"<test>"`)
    /// names the source in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let parse_error = |key: String, message: String| ConfigError::Parse {
            origin: origin.to_string(),
            key,
            message,
        };
        let with_line = |e: &toml::de::Error| match e.span() {
            Some(span) => format!("{} (line {})", e.message(), line_of(text, span.start)),
            None => e.message().to_string(),
        };
        let de = toml::Deserializer::parse(text)
            .map_err(|e| parse_error("(document)".into(), with_line(&e)))?;
        let config: RuntimeConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let key = if key == "." {
                "(top level)".to_string()
            } else {
                key
            };
            parse_error(key, with_line(&e.into_inner()))
        })?;
        config.validate(origin)?;
        Ok(config)
    }

    fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        self.registry
            .validate()
            .map_err(|(key, message)| ConfigError::Invalid {
                origin: origin.to_string(),
                key,
                message,
            })
    }
}

fn line_of(text: &str, byte: usize) -> usize {
    text.as_bytes()[..byte.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// `[registry]`: mirrors, per-host connection settings, credentials, retries.
///
/// Names follow containerd's CRI plugin (`mirrors`, `endpoints`) and its
/// `hosts.toml` (`plain_http`, `skip_verify` → `insecure_skip_verify`,
/// `ca`→`ca_file`), so that an operator's existing configuration maps over key
/// for key.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// A Docker-style `config.json` whose `auths` supply credentials per
    /// registry (`auth`, `username`/`password`, `identitytoken`,
    /// `registrytoken`). Read on every pull, so `docker login` takes effect
    /// without a restart. Credential helpers (`credsStore`) are not run.
    pub config_path: Option<PathBuf>,
    /// `[registry.mirrors."<registry>"]`: endpoints tried, in order, before the
    /// registry itself. The key is a registry name as it appears in image
    /// references (`docker.io`, `quay.io`, `127.0.0.1:5000`), or `*` for every
    /// registry that has no entry of its own.
    pub mirrors: BTreeMap<String, MirrorConfig>,
    /// `[registry.hosts."<host[:port]>"]`: how to talk to one host, be it a
    /// registry or a mirror endpoint's host.
    pub hosts: BTreeMap<String, HostConfig>,
    /// `[registry.retry]`: back-off for 5xx, 429 and broken connections.
    pub retry: RetryConfig,
    /// Time allowed to establish a TCP (and TLS) connection. Default `30s`.
    #[serde(deserialize_with = "duration")]
    pub connect_timeout: Duration,
    /// Longest silence on an open connection before it is treated as broken
    /// (and a blob download resumed). Default `60s`.
    #[serde(deserialize_with = "duration")]
    pub read_timeout: Duration,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            config_path: None,
            mirrors: BTreeMap::new(),
            hosts: BTreeMap::new(),
            retry: RetryConfig::default(),
            connect_timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(60),
        }
    }
}

impl RegistryConfig {
    /// The settings for `host` (`host[:port]`), defaults if it has no entry.
    pub fn host(&self, host: &str) -> HostConfig {
        self.hosts.get(host).cloned().unwrap_or_default()
    }

    /// Whether to talk plain HTTP to `host`: its `plain_http` if set, else true
    /// exactly for loopback hosts (`localhost`, `127.0.0.0/8`, `::1`), as
    /// containerd's CRI plugin does, unless the host's entry has TLS settings
    /// (`insecure_skip_verify`, `ca_file`), which say it speaks https. There is
    /// no https→http fallback: a fallback would turn a TLS misconfiguration
    /// into a silent downgrade, and traffic to loopback never leaves the node,
    /// so TLS adds nothing there. Set `plain_http = false` to force https.
    pub fn plain_http(&self, host: &str) -> bool {
        match self.hosts.get(host) {
            Some(HostConfig {
                plain_http: Some(p),
                ..
            }) => *p,
            Some(h) if h.insecure_skip_verify || h.ca_file.is_some() => false,
            _ => is_loopback(host),
        }
    }

    /// The mirror endpoints for `registry`, its own entry first, else `*`'s.
    pub fn mirror_endpoints(&self, registry: &str) -> &[String] {
        self.mirrors
            .get(registry)
            .or_else(|| self.mirrors.get("*"))
            .map_or(&[], |m| m.endpoints.as_slice())
    }

    fn validate(&self) -> Result<(), (String, String)> {
        for (name, mirror) in &self.mirrors {
            if name != "*" && !crate::image::reference::valid_registry(name) {
                return Err((
                    format!("registry.mirrors.{name:?}"),
                    "not a registry name (host[:port]) or \"*\"".into(),
                ));
            }
            for (i, ep) in mirror.endpoints.iter().enumerate() {
                validate_endpoint(ep)
                    .map_err(|m| (format!("registry.mirrors.{name:?}.endpoints[{i}]"), m))?;
            }
        }
        for (name, host) in &self.hosts {
            let key = format!("registry.hosts.{name:?}");
            if !crate::image::reference::valid_registry(name) {
                return Err((key, "not a host[:port]".into()));
            }
            if host.username.is_some() != host.password.is_some() {
                return Err((key, "username and password must be given together".into()));
            }
            if host.identity_token.is_some() && host.username.is_some() {
                return Err((
                    key,
                    "give either username/password or identity_token".into(),
                ));
            }
        }
        if self.retry.attempts == 0 {
            return Err((
                "registry.retry.attempts".into(),
                "must be at least 1".into(),
            ));
        }
        if self.retry.max_backoff < self.retry.initial_backoff {
            return Err((
                "registry.retry.max_backoff".into(),
                "must not be less than initial_backoff".into(),
            ));
        }
        Ok(())
    }
}

/// Checks a mirror endpoint: an absolute `http` or `https` URL with a host.
pub fn validate_endpoint(ep: &str) -> Result<reqwest::Url, String> {
    let url = reqwest::Url::parse(ep).map_err(|e| format!("{ep:?} is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("{ep:?}: scheme must be http or https"));
    }
    if url.host_str().is_none() {
        return Err(format!("{ep:?} has no host"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("{ep:?} must not have a query or fragment"));
    }
    Ok(url)
}

/// True for `localhost`, `127.0.0.0/8` and `::1`, with or without a port.
pub fn is_loopback(host: &str) -> bool {
    let bare = if let Some(v6) = host.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    bare == "localhost"
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// `[registry.mirrors."<registry>"]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MirrorConfig {
    /// Base URLs (`scheme://host[:port][/prefix]`); `/v2/…` is appended. The
    /// scheme decides http vs https; the host's `[registry.hosts]` entry gives
    /// its TLS settings and credentials. If the registry's own endpoint is
    /// listed it is tried at that position and not again at the end.
    pub endpoints: Vec<String>,
}

/// `[registry.hosts."<host[:port]>"]`.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HostConfig {
    /// Talk HTTP instead of HTTPS. Unset: plain HTTP for loopback hosts only
    /// (see [`RegistryConfig::plain_http`]).
    pub plain_http: Option<bool>,
    /// Accept any TLS certificate from this host. For test registries only.
    pub insecure_skip_verify: bool,
    /// PEM file of CA certificates trusted for this host, on top of the system's.
    pub ca_file: Option<PathBuf>,
    /// Static credentials for this host, used when a pull brings none.
    pub username: Option<String>,
    pub password: Option<String>,
    /// An OAuth2 refresh token for this host (what `docker login` stores as
    /// `identitytoken`), used when a pull brings no credentials.
    pub identity_token: Option<String>,
}

impl fmt::Debug for HostConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Secrets never reach logs.
        f.debug_struct("HostConfig")
            .field("plain_http", &self.plain_http)
            .field("insecure_skip_verify", &self.insecure_skip_verify)
            .field("ca_file", &self.ca_file)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field(
                "identity_token",
                &self.identity_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// `[registry.retry]`: exponential back-off, `initial_backoff` doubling up to
/// `max_backoff`, with up to a quarter of jitter; at most `attempts` tries per
/// request and endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Tries per request, the first included. Default 5.
    pub attempts: u32,
    /// Default `200ms`.
    #[serde(deserialize_with = "duration")]
    pub initial_backoff: Duration,
    /// Default `5s`.
    #[serde(deserialize_with = "duration")]
    pub max_backoff: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            attempts: 5,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(5),
        }
    }
}

impl RetryConfig {
    /// The pause before retry number `retry` (1 for the first retry).
    pub fn backoff(&self, retry: u32) -> Duration {
        let exp = self
            .initial_backoff
            .saturating_mul(1u32 << retry.saturating_sub(1).min(20));
        let base = exp.min(self.max_backoff);
        // Jitter spreads out the retries of many concurrent downloads that
        // failed together; RandomState is seeded randomly per instance.
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(retry);
        let quarter = base.as_micros() as u64 / 4;
        let jitter = if quarter == 0 {
            0
        } else {
            h.finish() % quarter
        };
        base + Duration::from_micros(jitter)
    }
}

/// A duration written as `<number><unit>`, unit one of `ms`, `s`, `m`, `h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("duration {s:?} has no unit (ms, s, m, h)"))?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("duration {s:?} must start with a whole number"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        other => {
            return Err(format!(
                "duration {s:?}: unknown unit {other:?} (ms, s, m, h)"
            ));
        }
    };
    Ok(d)
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s).map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<RuntimeConfig, ConfigError> {
        RuntimeConfig::parse(text, "<test>")
    }

    #[test]
    fn empty_is_default() {
        assert_eq!(parse("").unwrap(), RuntimeConfig::default());
        assert_eq!(parse("[registry]\n").unwrap(), RuntimeConfig::default());
        let d = RuntimeConfig::default();
        assert_eq!(d.registry.retry.attempts, 5);
        assert_eq!(d.registry.connect_timeout, Duration::from_secs(30));
    }

    #[test]
    fn full_example() {
        let c = parse(
            r#"
            [registry]
            config_path = "/root/.docker/config.json"
            connect_timeout = "5s"
            read_timeout = "2m"
            [registry.mirrors."docker.io"]
            endpoints = ["http://127.0.0.1:5000", "https://mirror.example.com/prefix"]
            [registry.mirrors."*"]
            endpoints = ["https://catch-all.example.com"]
            [registry.hosts."127.0.0.1:5000"]
            plain_http = true
            insecure_skip_verify = false
            username = "u"
            password = "p"
            [registry.hosts."mirror.example.com"]
            insecure_skip_verify = true
            [registry.retry]
            attempts = 3
            initial_backoff = "10ms"
            max_backoff = "1s"
            "#,
        )
        .unwrap();
        let r = &c.registry;
        assert_eq!(
            r.config_path.as_deref(),
            Some(Path::new("/root/.docker/config.json"))
        );
        assert_eq!(
            r.mirror_endpoints("docker.io"),
            ["http://127.0.0.1:5000", "https://mirror.example.com/prefix"]
        );
        assert_eq!(
            r.mirror_endpoints("quay.io"),
            ["https://catch-all.example.com"]
        );
        let h = r.host("127.0.0.1:5000");
        assert_eq!(h.plain_http, Some(true));
        assert_eq!(h.username.as_deref(), Some("u"));
        assert!(r.host("mirror.example.com").insecure_skip_verify);
        assert_eq!(r.retry.attempts, 3);
        assert_eq!(r.retry.initial_backoff, Duration::from_millis(10));
        assert_eq!(r.connect_timeout, Duration::from_secs(5));
        assert_eq!(r.read_timeout, Duration::from_secs(120));
        // The password stays out of Debug output.
        assert!(!format!("{h:?}").contains("\"p\""));
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = parse("[registry]\nplain-http = true\n").unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("plain-http"), "{msg}");
        assert!(msg.contains("<test>"), "{msg}");

        let e = parse("[registry.hosts.\"a.io\"]\nplain_htp = true\n").unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("plain_htp") && msg.contains("a.io"), "{msg}");
        assert!(msg.contains("line 2"), "{msg}");

        let e = parse("[registri]\n").unwrap_err();
        assert!(e.to_string().contains("registri"), "{e}");
    }

    #[test]
    fn type_errors_and_bad_toml_are_reported() {
        let e = parse("[registry.retry]\nattempts = \"many\"\n").unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("registry.retry.attempts"), "{msg}");
        let e = parse("[registry\n").unwrap_err();
        assert!(matches!(e, ConfigError::Parse { .. }), "{e}");
        let e = parse("[registry.retry]\ninitial_backoff = \"10 parsecs\"\n").unwrap_err();
        assert!(e.to_string().contains("initial_backoff"), "{e}");
    }

    #[test]
    fn invalid_values_are_refused() {
        let cases = [
            (
                "[registry.mirrors.\"docker.io\"]\nendpoints = [\"ftp://x\"]\n",
                "endpoints[0]",
            ),
            (
                "[registry.mirrors.\"docker.io\"]\nendpoints = [\"not a url\"]\n",
                "endpoints[0]",
            ),
            (
                "[registry.mirrors.\"bad host!\"]\nendpoints = []\n",
                "bad host!",
            ),
            ("[registry.hosts.\"a.io\"]\nusername = \"u\"\n", "a.io"),
            ("[registry.retry]\nattempts = 0\n", "attempts"),
            (
                "[registry.retry]\ninitial_backoff = \"10s\"\nmax_backoff = \"1s\"\n",
                "max_backoff",
            ),
        ];
        for (text, key) in cases {
            let e = parse(text).unwrap_err();
            assert!(matches!(e, ConfigError::Invalid { .. }), "{text}: {e}");
            assert!(e.to_string().contains(key), "{text}: {e}");
        }
    }

    #[test]
    fn loopback_hosts_default_to_plain_http() {
        let c = parse("[registry.hosts.\"localhost:5000\"]\nplain_http = false\n").unwrap();
        let r = &c.registry;
        assert!(r.plain_http("127.0.0.1:5000"));
        assert!(r.plain_http("127.1.2.3"));
        assert!(r.plain_http("localhost"));
        assert!(r.plain_http("[::1]:5000"));
        assert!(!r.plain_http("localhost:5000"), "explicit setting wins");
        let c =
            parse("[registry.hosts.\"127.0.0.1:5000\"]\ninsecure_skip_verify = true\n").unwrap();
        assert!(
            !c.registry.plain_http("127.0.0.1:5000"),
            "TLS settings mean https"
        );
        assert!(!r.plain_http("docker.io"));
        assert!(!r.plain_http("10.0.0.1:5000"));
    }

    #[test]
    fn load_reads_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("runtime.toml");
        assert!(matches!(
            RuntimeConfig::load(&path),
            Err(ConfigError::Read { .. })
        ));
        assert_eq!(
            RuntimeConfig::load_or_default(&path).unwrap(),
            RuntimeConfig::default()
        );
        std::fs::write(&path, "[registry.retry]\nattempts = 2\n").unwrap();
        assert_eq!(
            RuntimeConfig::load(&path).unwrap().registry.retry.attempts,
            2
        );
        std::fs::write(&path, "bogus = 1\n").unwrap();
        let e = RuntimeConfig::load(&path).unwrap_err();
        assert!(e.to_string().contains(&path.display().to_string()), "{e}");
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let r = RetryConfig {
            attempts: 5,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(350),
        };
        let within = |d: Duration, base: u64| {
            d >= Duration::from_millis(base) && d <= Duration::from_millis(base + base / 4)
        };
        assert!(within(r.backoff(1), 100));
        assert!(within(r.backoff(2), 200));
        assert!(within(r.backoff(3), 350));
        assert!(within(r.backoff(40), 350));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("3m"), Ok(Duration::from_secs(180)));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("5d").is_err());
    }
}
