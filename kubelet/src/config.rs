//! The kubelet's config file: a `KubeletConfiguration`
//! (`kubelet.config.k8s.io/v1beta1`), YAML or JSON, as upstream's `--config`.
//!
//! Decoding is strict as upstream's: an unknown field is an error naming
//! it. Fields that upstream knows but berth's standalone node does not act
//! on are accepted and reported by [`KubeletConfiguration::ignored`], so
//! that a file written for the upstream kubelet loads and the operator
//! sees what has no effect. Flags given on the command line win over the
//! file, as upstream.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use thiserror::Error;

pub const API_VERSION: &str = "kubelet.config.k8s.io/v1beta1";
pub const KIND: &str = "KubeletConfiguration";

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: apiVersion {found:?} is not {API_VERSION}")]
    ApiVersion { path: PathBuf, found: String },
    #[error("{path}: kind {found:?} is not {KIND}")]
    Kind { path: PathBuf, found: String },
    #[error("{path}: {field}: {message}")]
    Field {
        path: PathBuf,
        field: String,
        message: String,
    },
}

/// The `authentication` stanza.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Authentication {
    pub anonymous: Option<Anonymous>,
    pub x509: Option<X509>,
    /// Needs an API server; accepted and ignored.
    pub webhook: Option<Value>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Anonymous {
    pub enabled: Option<bool>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct X509 {
    #[serde(rename = "clientCAFile")]
    pub client_ca_file: Option<PathBuf>,
}

/// The fields of upstream's `KubeletConfiguration` that berth applies, and
/// the rest of upstream's, accepted without effect.
// Not `deny_unknown_fields`: `other` collects the rest, checked by name.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KubeletConfiguration {
    pub api_version: Option<String>,
    pub kind: Option<String>,

    // Applied.
    pub static_pod_path: Option<PathBuf>,
    /// How often each pod is synced without a change (`1m0s`).
    pub sync_frequency: Option<String>,
    pub address: Option<String>,
    pub port: Option<u16>,
    pub healthz_port: Option<u16>,
    pub healthz_bind_address: Option<String>,
    pub tls_cert_file: Option<PathBuf>,
    pub tls_private_key_file: Option<PathBuf>,
    pub authentication: Option<Authentication>,
    pub cgroup_driver: Option<String>,
    #[serde(rename = "clusterDNS")]
    pub cluster_dns: Option<Vec<String>>,
    pub cluster_domain: Option<String>,
    pub container_runtime_endpoint: Option<String>,
    pub pod_logs_dir: Option<PathBuf>,
    #[serde(rename = "imageGCHighThresholdPercent")]
    pub image_gc_high_threshold_percent: Option<i32>,
    #[serde(rename = "imageGCLowThresholdPercent")]
    pub image_gc_low_threshold_percent: Option<i32>,
    #[serde(rename = "imageMinimumGCAge")]
    pub image_minimum_gc_age: Option<String>,
    pub serialize_image_pulls: Option<bool>,
    pub max_parallel_image_pulls: Option<i32>,
    pub seccomp_default: Option<bool>,
    /// Upstream refuses cgroup v1 by default; berth runs on it, so only
    /// `true` (refuse) changes anything.
    #[serde(rename = "failCgroupV1")]
    pub fail_cgroup_v1: Option<bool>,

    // Accepted, not applied: they need an API server, or berth does the
    // thing its own way.
    #[serde(flatten)]
    pub other: serde_json::Map<String, Value>,
}

/// Upstream's fields that berth accepts and does not act on.
const ACCEPTED: &[&str] = &[
    "authorization",
    "cgroupRoot",
    "cgroupsPerQOS",
    "containerLogMaxFiles",
    "containerLogMaxSize",
    "containerLogMaxWorkers",
    "containerLogMonitorInterval",
    "cpuCFSQuota",
    "cpuCFSQuotaPeriod",
    "cpuManagerPolicy",
    "cpuManagerReconcilePeriod",
    "enableControllerAttachDetach",
    "enableDebuggingHandlers",
    "enableProfilingHandler",
    "enableServer",
    "enableSystemLogHandler",
    "enforceNodeAllocatable",
    "eventBurst",
    "eventRecordQPS",
    "evictionHard",
    "evictionPressureTransitionPeriod",
    "evictionSoft",
    "evictionSoftGracePeriod",
    "failSwapOn",
    "featureGates",
    "fileCheckFrequency",
    "hairpinMode",
    "httpCheckFrequency",
    "imageMaximumGCAge",
    "imageServiceEndpoint",
    "kubeAPIBurst",
    "kubeAPIQPS",
    "kubeReserved",
    "logging",
    "maxOpenFiles",
    "maxPods",
    "memorySwap",
    "nodeLeaseDurationSeconds",
    "nodeStatusMaxImages",
    "nodeStatusReportFrequency",
    "nodeStatusUpdateFrequency",
    "oomScoreAdj",
    "podPidsLimit",
    "readOnlyPort",
    "registryBurst",
    "registryPullQPS",
    "resolvConf",
    "rotateCertificates",
    "runtimeRequestTimeout",
    "serverTLSBootstrap",
    "shutdownGracePeriod",
    "shutdownGracePeriodCriticalPods",
    "streamingConnectionIdleTimeout",
    "systemReserved",
    "tlsCipherSuites",
    "tlsMinVersion",
    "volumePluginDir",
    "volumeStatsAggPeriod",
];

impl KubeletConfiguration {
    /// Reads and checks the file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parses `text` (YAML, of which JSON is a subset), the file `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let parse_err = |message: String| ConfigError::Parse {
            path: path.to_owned(),
            message,
        };
        let value: Value = serde_saphyr::from_str(text).map_err(|e| parse_err(e.to_string()))?;
        if !value.is_object() {
            return Err(parse_err("not a KubeletConfiguration object".to_owned()));
        }
        let config: Self = serde_path_to_error::deserialize(value)
            .map_err(|e| parse_err(format!("{}: {}", e.path(), e.inner())))?;
        match config.api_version.as_deref() {
            Some(API_VERSION) => {}
            found => {
                return Err(ConfigError::ApiVersion {
                    path: path.to_owned(),
                    found: found.unwrap_or_default().to_owned(),
                });
            }
        }
        match config.kind.as_deref() {
            Some(KIND) => {}
            found => {
                return Err(ConfigError::Kind {
                    path: path.to_owned(),
                    found: found.unwrap_or_default().to_owned(),
                });
            }
        }
        if let Some(unknown) = config
            .other
            .keys()
            .find(|k| !ACCEPTED.contains(&k.as_str()))
        {
            return Err(parse_err(format!("unknown field \"{unknown}\"")));
        }
        config.check(path)?;
        Ok(config)
    }

    fn check(&self, path: &Path) -> Result<(), ConfigError> {
        let field = |field: &str, message: String| ConfigError::Field {
            path: path.to_owned(),
            field: field.to_owned(),
            message,
        };
        for (name, value) in [
            ("syncFrequency", &self.sync_frequency),
            ("imageMinimumGCAge", &self.image_minimum_gc_age),
        ] {
            if let Some(v) = value {
                parse_duration(v).map_err(|m| field(name, m))?;
            }
        }
        for (name, value) in [
            (
                "imageGCHighThresholdPercent",
                self.image_gc_high_threshold_percent,
            ),
            (
                "imageGCLowThresholdPercent",
                self.image_gc_low_threshold_percent,
            ),
        ] {
            if let Some(v) = value
                && !(0..=100).contains(&v)
            {
                return Err(field(name, format!("{v} is not between 0 and 100")));
            }
        }
        if let (Some(high), Some(low)) = (
            self.image_gc_high_threshold_percent,
            self.image_gc_low_threshold_percent,
        ) && low > high
        {
            return Err(field(
                "imageGCLowThresholdPercent",
                format!("{low} is above imageGCHighThresholdPercent ({high})"),
            ));
        }
        if let Some(d) = &self.cgroup_driver
            && d != "cgroupfs"
            && d != "systemd"
        {
            return Err(field(
                "cgroupDriver",
                format!("{d:?} is neither \"cgroupfs\" nor \"systemd\""),
            ));
        }
        for (i, ip) in self.cluster_dns.iter().flatten().enumerate() {
            ip.parse::<std::net::IpAddr>().map_err(|_| {
                field(
                    &format!("clusterDNS[{i}]"),
                    format!("{ip:?} is not an IP address"),
                )
            })?;
        }
        if let Some(n) = self.max_parallel_image_pulls
            && n < 1
        {
            return Err(field(
                "maxParallelImagePulls",
                format!("{n} is not a positive number"),
            ));
        }
        if self.max_parallel_image_pulls.is_some() && self.serialize_image_pulls != Some(false) {
            return Err(field(
                "maxParallelImagePulls",
                "needs serializeImagePulls: false".to_owned(),
            ));
        }
        if self.fail_cgroup_v1 == Some(true) && cgroup_v1_in_use() {
            return Err(field(
                "failCgroupV1",
                "this machine uses cgroup v1 controllers and the file asks to refuse them"
                    .to_owned(),
            ));
        }
        Ok(())
    }

    /// The upstream fields set in the file that berth does not act on.
    pub fn ignored(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.other.keys().map(String::as_str).collect();
        if self
            .authentication
            .as_ref()
            .is_some_and(|a| a.webhook.is_some())
        {
            names.push("authentication.webhook");
        }
        names
    }

    /// `syncFrequency`, parsed.
    pub fn sync_frequency(&self) -> Option<Duration> {
        self.sync_frequency
            .as_deref()
            .and_then(|s| parse_duration(s).ok())
    }

    /// `imageMinimumGCAge`, parsed.
    pub fn image_minimum_gc_age(&self) -> Option<Duration> {
        self.image_minimum_gc_age
            .as_deref()
            .and_then(|s| parse_duration(s).ok())
    }

    /// `authentication.x509.clientCAFile`.
    pub fn client_ca_file(&self) -> Option<&Path> {
        self.authentication
            .as_ref()?
            .x509
            .as_ref()?
            .client_ca_file
            .as_deref()
    }

    /// `authentication.anonymous.enabled`.
    pub fn anonymous_auth(&self) -> Option<bool> {
        self.authentication.as_ref()?.anonymous.as_ref()?.enabled
    }
}

/// Whether any cgroup v1 hierarchy is mounted.
fn cgroup_v1_in_use() -> bool {
    std::fs::read_to_string("/proc/self/mountinfo").is_ok_and(|m| {
        m.lines().any(|l| {
            l.split(" - ")
                .nth(1)
                .is_some_and(|t| t.starts_with("cgroup "))
        })
    })
}

/// A Go duration (`1m30s`, `500ms`, `2h`, `0`), as metav1.Duration encodes
/// one.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?} is not a duration such as \"1m30s\"");
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() || s.starts_with('-') {
        return Err(bad());
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .ok_or_else(bad)?;
        if digits == 0 {
            return Err(bad());
        }
        let number: f64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        total += Duration::try_from_secs_f64(number * scale).map_err(|_| bad())?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<KubeletConfiguration, ConfigError> {
        KubeletConfiguration::parse(Path::new("kubelet.yaml"), text)
    }

    const HEAD: &str = "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n";

    #[test]
    fn a_typical_file_loads_and_reports_what_it_ignores() {
        let c = parse(&format!(
            "{HEAD}staticPodPath: /etc/kubernetes/manifests
syncFrequency: 1m30s
port: 10250
healthzPort: 10248
cgroupDriver: cgroupfs
clusterDNS: [10.96.0.10]
clusterDomain: cluster.local
authentication:
  anonymous: {{enabled: false}}
  x509: {{clientCAFile: /etc/kubernetes/pki/ca.crt}}
  webhook: {{enabled: true}}
authorization: {{mode: Webhook}}
evictionHard: {{memory.available: 100Mi}}
failSwapOn: false
"
        ))
        .unwrap();
        assert_eq!(
            c.static_pod_path.as_deref(),
            Some(Path::new("/etc/kubernetes/manifests"))
        );
        assert_eq!(c.sync_frequency(), Some(Duration::from_secs(90)));
        assert_eq!(c.port, Some(10250));
        assert_eq!(
            c.client_ca_file(),
            Some(Path::new("/etc/kubernetes/pki/ca.crt"))
        );
        assert_eq!(c.anonymous_auth(), Some(false));
        let mut ignored = c.ignored();
        ignored.sort_unstable();
        assert_eq!(
            ignored,
            [
                "authentication.webhook",
                "authorization",
                "evictionHard",
                "failSwapOn"
            ]
        );
    }

    #[test]
    fn json_loads_too() {
        let c = parse(
            r#"{"apiVersion":"kubelet.config.k8s.io/v1beta1","kind":"KubeletConfiguration","podLogsDir":"/var/log/pods"}"#,
        )
        .unwrap();
        assert_eq!(c.pod_logs_dir.as_deref(), Some(Path::new("/var/log/pods")));
    }

    #[test]
    fn unknown_fields_and_wrong_types_are_named() {
        let e = parse(&format!("{HEAD}staticPodPth: /x\n")).unwrap_err();
        assert!(e.to_string().contains("staticPodPth"), "{e}");
        let e = parse(&format!("{HEAD}port: many\n")).unwrap_err();
        assert!(e.to_string().contains("port"), "{e}");
        let e = parse(&format!(
            "{HEAD}authentication: {{x509: {{clientCaFile: /x}}}}\n"
        ))
        .unwrap_err();
        assert!(e.to_string().contains("clientCaFile"), "{e}");
    }

    #[test]
    fn the_header_must_be_a_kubelet_configuration() {
        let e = parse("apiVersion: v1\nkind: KubeletConfiguration\n").unwrap_err();
        assert!(matches!(e, ConfigError::ApiVersion { .. }), "{e}");
        let e = parse("apiVersion: kubelet.config.k8s.io/v1beta1\nkind: Pod\n").unwrap_err();
        assert!(matches!(e, ConfigError::Kind { .. }), "{e}");
        assert!(parse("- a\n").is_err());
    }

    #[test]
    fn bad_values_name_their_field() {
        for (text, field) in [
            ("syncFrequency: soon\n", "syncFrequency"),
            (
                "imageGCHighThresholdPercent: 120\n",
                "imageGCHighThresholdPercent",
            ),
            (
                "imageGCHighThresholdPercent: 50\nimageGCLowThresholdPercent: 60\n",
                "imageGCLowThresholdPercent",
            ),
            ("cgroupDriver: cgroupfsx\n", "cgroupDriver"),
            ("clusterDNS: [10.0.0.300]\n", "clusterDNS[0]"),
            ("maxParallelImagePulls: 3\n", "maxParallelImagePulls"),
            (
                "serializeImagePulls: false\nmaxParallelImagePulls: 0\n",
                "maxParallelImagePulls",
            ),
        ] {
            let e = parse(&format!("{HEAD}{text}")).unwrap_err();
            assert!(
                matches!(&e, ConfigError::Field { field: f, .. } if f == field),
                "{text}: {e}"
            );
        }
    }

    #[test]
    fn go_durations() {
        for (s, want) in [
            ("0", Duration::ZERO),
            ("10s", Duration::from_secs(10)),
            ("1m0s", Duration::from_secs(60)),
            ("2h30m", Duration::from_secs(9000)),
            ("500ms", Duration::from_millis(500)),
            ("1.5s", Duration::from_millis(1500)),
        ] {
            assert_eq!(parse_duration(s), Ok(want), "{s}");
        }
        for s in ["", "10", "s", "-1s", "1x", "1m-2s"] {
            assert!(parse_duration(s).is_err(), "{s}");
        }
    }
}
