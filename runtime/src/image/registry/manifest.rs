//! Manifest media types, platforms, and choosing an index entry for a platform.
//!
//! Docker schema2 manifests and manifest lists have the same shape as OCI image
//! manifests and indexes, so both parse into oci-spec's types; their Docker
//! media types are kept (as `MediaType::Other`) for the layer code to read.

use std::fmt;
use std::str::FromStr;

use oci_spec::image::{Descriptor, ImageIndex};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// Manifests larger than this are refused: real ones are a few KiB, and a
/// limit keeps a hostile registry from filling memory.
pub const MAX_MANIFEST_SIZE: u64 = 4 << 20;

/// The `Accept` header for manifest requests: only what we can use, so that a
/// registry that converts (e.g. to schema1) answers in a type we understand.
pub(super) const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.docker.distribution.manifest.v2+json";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Manifest,
    Index,
}

pub(super) fn kind(media_type: &str) -> Option<Kind> {
    match media_type {
        OCI_MANIFEST | DOCKER_MANIFEST => Some(Kind::Manifest),
        OCI_INDEX | DOCKER_LIST => Some(Kind::Index),
        _ => None,
    }
}

/// The media type of a fetched manifest: the document's own `mediaType` when
/// it has one (registries are sloppy with `Content-Type`, e.g. `text/plain`),
/// else the `Content-Type` without parameters.
pub(super) fn media_type(body: &[u8], content_type: Option<&str>) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Head {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
    }
    let from_body = serde_json::from_slice::<Head>(body)
        .ok()
        .and_then(|h| h.media_type)
        .filter(|m| !m.is_empty());
    from_body.or_else(|| {
        content_type
            .map(|ct| ct.split(';').next().unwrap_or(ct).trim().to_string())
            .filter(|m| !m.is_empty())
    })
}

/// The platform an image is for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Platform {
    /// `linux`.
    pub os: String,
    /// GOARCH names: `amd64`, `arm64`, `arm`, `386`, `ppc64le`, `s390x`, `riscv64`.
    pub architecture: String,
    /// `v7`, `v8`, `v3`; `None` means the architecture's baseline.
    pub variant: Option<String>,
}

impl Default for Platform {
    /// linux/amd64: what a pull is for when nothing else is said.
    fn default() -> Self {
        Platform::new("linux", "amd64", None)
    }
}

impl Platform {
    pub fn new(os: &str, architecture: &str, variant: Option<&str>) -> Self {
        Platform {
            os: os.to_string(),
            architecture: architecture.to_string(),
            variant: variant.map(str::to_string),
        }
    }

    /// The platform of the machine berth runs on.
    pub fn host() -> Self {
        let (arch, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "aarch64" => ("arm64", None),
            // Rust's 32-bit ARM Linux targets that matter (armv7-*-gnueabihf).
            "arm" => ("arm", Some("v7")),
            "x86" => ("386", None),
            "powerpc64" if cfg!(target_endian = "little") => ("ppc64le", None),
            "powerpc64" => ("ppc64", None),
            "loongarch64" => ("loong64", None),
            other => (other, None),
        };
        Platform::new(std::env::consts::OS, arch, variant)
    }

    /// The canonical form used for matching: architecture aliases resolved,
    /// and the baseline variant spelled out (`arm64` = `arm64/v8`, `arm` =
    /// `arm/v7`, `amd64` = `amd64/v1`).
    fn normalized(&self) -> (String, String, String) {
        let os = self.os.to_ascii_lowercase();
        let variant = self.variant.as_deref().unwrap_or("").to_ascii_lowercase();
        let (arch, variant) = match (self.architecture.to_ascii_lowercase().as_str(), variant) {
            ("x86_64" | "x86-64" | "amd64", v) => ("amd64".to_string(), or(v, "v1")),
            ("aarch64" | "arm64", v) => {
                let v = match v.as_str() {
                    "8" | "v8.0" => "v8".to_string(),
                    "9" | "v9.0" => "v9".to_string(),
                    _ => v,
                };
                ("arm64".to_string(), or(v, "v8"))
            }
            ("armhf", _) => ("arm".to_string(), "v7".to_string()),
            ("armel", _) => ("arm".to_string(), "v6".to_string()),
            ("arm", v) => {
                let v = match v.as_str() {
                    "5" | "6" | "7" | "8" => format!("v{v}"),
                    _ => v,
                };
                ("arm".to_string(), or(v, "v7"))
            }
            ("i386" | "i686" | "x86", v) => ("386".to_string(), v),
            (a, v) => (a.to_string(), v),
        };
        (os, arch, variant)
    }

    /// How well an image for `candidate` runs here: `Some(0)` for an exact
    /// match, `Some(n)` for an older variant of the same architecture that this
    /// platform also runs (amd64 v3 runs v2 and v1; arm v7 runs v6 and v5), n
    /// levels down; `None` if it does not run.
    pub fn rank(&self, candidate: &Platform) -> Option<u32> {
        let (os, arch, variant) = self.normalized();
        let (c_os, c_arch, c_variant) = candidate.normalized();
        if os != c_os || arch != c_arch {
            return None;
        }
        if variant == c_variant {
            return Some(0);
        }
        let level = |v: &str| v.strip_prefix('v').and_then(|n| n.parse::<u32>().ok());
        match (level(&variant), level(&c_variant)) {
            (Some(want), Some(have)) if have <= want => Some(want - have),
            _ => None,
        }
    }
}

fn or(v: String, default: &str) -> String {
    if v.is_empty() { default.to_string() } else { v }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("platform {0:?} is not os/architecture[/variant]")]
pub struct PlatformParseError(String);

impl FromStr for Platform {
    type Err = PlatformParseError;
    /// `linux/arm64`, `linux/arm/v7`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split('/').collect();
        if parts.iter().any(|p| p.is_empty()) {
            return Err(PlatformParseError(s.to_string()));
        }
        match parts.as_slice() {
            [os, arch] => Ok(Platform::new(os, arch, None)),
            [os, arch, variant] => Ok(Platform::new(os, arch, Some(variant))),
            _ => Err(PlatformParseError(s.to_string())),
        }
    }
}

fn descriptor_platform(d: &Descriptor) -> Option<Platform> {
    d.platform().as_ref().map(|p| Platform {
        os: p.os().to_string(),
        architecture: p.architecture().to_string(),
        variant: p.variant().clone(),
    })
}

/// The index entry to pull for `wanted`: the best-ranked manifest, the first
/// in the index among equals. Entries without a platform are used only when
/// they are the index's single entry: otherwise they are attestations,
/// signatures and the like, not something to run.
pub(super) fn select<'a>(
    index: &'a ImageIndex,
    wanted: &Platform,
) -> Result<&'a Descriptor, String> {
    let manifests = index.manifests();
    if let [only] = manifests.as_slice()
        && only.platform().is_none()
    {
        return Ok(only);
    }
    manifests
        .iter()
        .enumerate()
        .filter_map(|(i, d)| {
            let p = descriptor_platform(d)?;
            wanted.rank(&p).map(|rank| (rank, i, d))
        })
        .min_by_key(|&(rank, i, _)| (rank, i))
        .map(|(_, _, d)| d)
        .ok_or_else(|| {
            let available: Vec<String> = manifests
                .iter()
                .filter_map(descriptor_platform)
                .map(|p| p.to_string())
                .collect();
            if available.is_empty() {
                "none with a platform".to_string()
            } else {
                available.join(", ")
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Platform {
        s.parse().unwrap()
    }

    #[test]
    fn ranks() {
        assert_eq!(p("linux/amd64").rank(&p("linux/amd64")), Some(0));
        assert_eq!(p("linux/amd64").rank(&p("linux/x86_64")), Some(0));
        assert_eq!(p("linux/amd64").rank(&p("linux/amd64/v1")), Some(0));
        assert_eq!(p("linux/amd64").rank(&p("linux/amd64/v3")), None);
        assert_eq!(p("linux/amd64/v3").rank(&p("linux/amd64")), Some(2));
        assert_eq!(p("linux/arm64").rank(&p("linux/arm64/v8")), Some(0));
        assert_eq!(p("linux/aarch64").rank(&p("linux/arm64")), Some(0));
        assert_eq!(p("linux/arm64/v8").rank(&p("linux/arm64/v9")), None);
        assert_eq!(p("linux/arm").rank(&p("linux/arm/v7")), Some(0));
        assert_eq!(p("linux/arm/v7").rank(&p("linux/arm/v6")), Some(1));
        assert_eq!(p("linux/arm/v6").rank(&p("linux/arm/v7")), None);
        assert_eq!(p("linux/arm64").rank(&p("linux/amd64")), None);
        assert_eq!(p("linux/amd64").rank(&p("windows/amd64")), None);
        assert_eq!(p("linux/riscv64").rank(&p("linux/riscv64")), Some(0));
    }

    #[test]
    fn parse_and_display() {
        assert_eq!(p("linux/arm/v7").to_string(), "linux/arm/v7");
        assert_eq!(p("linux/amd64").variant, None);
        assert!("linux".parse::<Platform>().is_err());
        assert!("linux//v7".parse::<Platform>().is_err());
        assert!("a/b/c/d".parse::<Platform>().is_err());
        assert_eq!(Platform::default().to_string(), "linux/amd64");
        let host = Platform::host();
        assert_eq!(host.os, "linux");
        assert!(host.rank(&host).is_some());
    }

    fn index(entries: &[(&str, Option<&str>)]) -> ImageIndex {
        let manifests: Vec<serde_json::Value> = entries
            .iter()
            .enumerate()
            .map(|(i, (plat, _))| {
                let mut d = serde_json::json!({
                    "mediaType": OCI_MANIFEST,
                    "size": 100 + i,
                    "digest": format!("sha256:{:064x}", i),
                });
                if !plat.is_empty() {
                    let pl = p(plat);
                    let mut j = serde_json::json!({"os": pl.os, "architecture": pl.architecture});
                    if let Some(v) = pl.variant {
                        j["variant"] = v.into();
                    }
                    d["platform"] = j;
                }
                d
            })
            .collect();
        serde_json::from_value(serde_json::json!({
            "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests
        }))
        .unwrap()
    }

    #[test]
    fn selects_best_entry() {
        let idx = index(&[
            ("linux/arm/v6", None),
            ("linux/arm/v7", None),
            ("linux/arm64/v8", None),
            ("linux/amd64", None),
            ("unknown/unknown", None),
        ]);
        assert_eq!(select(&idx, &p("linux/amd64")).unwrap().size(), 103);
        assert_eq!(select(&idx, &p("linux/arm64")).unwrap().size(), 102);
        assert_eq!(select(&idx, &p("linux/arm/v7")).unwrap().size(), 101);
        assert_eq!(select(&idx, &p("linux/arm/v6")).unwrap().size(), 100);
        let e = select(&idx, &p("linux/s390x")).unwrap_err();
        assert!(
            e.contains("linux/arm64/v8") && e.contains("linux/amd64"),
            "{e}"
        );

        let single = index(&[("", None)]);
        assert!(select(&single, &p("linux/amd64")).is_ok());
        let two = index(&[("", None), ("", None)]);
        assert_eq!(
            select(&two, &p("linux/amd64")).unwrap_err(),
            "none with a platform"
        );
    }

    #[test]
    fn media_type_prefers_the_document() {
        let doc = format!(r#"{{"mediaType": "{DOCKER_MANIFEST}"}}"#);
        assert_eq!(
            media_type(doc.as_bytes(), Some("text/plain")).as_deref(),
            Some(DOCKER_MANIFEST)
        );
        assert_eq!(
            media_type(
                b"{}",
                Some("application/vnd.oci.image.index.v1+json; charset=utf-8")
            )
            .as_deref(),
            Some(OCI_INDEX)
        );
        assert_eq!(media_type(b"{}", None), None);
        assert_eq!(kind(DOCKER_LIST), Some(Kind::Index));
        assert_eq!(
            kind("application/vnd.docker.distribution.manifest.v1+prettyjws"),
            None
        );
    }
}
