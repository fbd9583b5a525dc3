//! Image references (`registry/repository[:tag][@digest]`), normalized as docker
//! and containerd do so that `busybox`, `library/busybox` and
//! `docker.io/library/busybox:latest` all name the same image.
//!
//! The grammar is the distribution project's: a registry is recognised only when
//! the first path component contains `.` or `:`, is `localhost`, or has an
//! uppercase letter; otherwise the name belongs to Docker Hub, where one-component
//! names live under `library/`. A reference without tag or digest gets `latest`.

use std::fmt;
use std::str::FromStr;

use super::digest::{Digest, DigestError};

/// Docker Hub's canonical registry name, as it appears in normalized references.
pub const DOCKER_HUB: &str = "docker.io";
/// The name older clients used for Docker Hub; normalized to [`DOCKER_HUB`].
const DOCKER_HUB_LEGACY: &str = "index.docker.io";
const DEFAULT_TAG: &str = "latest";
/// distribution's limit on `registry/repository`.
const NAME_MAX: usize = 255;
const TAG_MAX: usize = 128;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReferenceError {
    #[error("image reference is empty")]
    Empty,
    #[error("image reference {input:?}: repository {repository:?} must be lowercase")]
    Uppercase { input: String, repository: String },
    #[error(
        "image reference {input:?}: invalid repository component {component:?} (lowercase letters and digits, separated by '.', '_', '__' or dashes)"
    )]
    Repository { input: String, component: String },
    #[error("image reference {input:?}: invalid registry {registry:?} (expected host[:port])")]
    Registry { input: String, registry: String },
    #[error(
        "image reference {input:?}: invalid tag {tag:?} (1 to 128 of letters, digits, '_', '.', '-'; not starting with '.' or '-')"
    )]
    Tag { input: String, tag: String },
    #[error("image reference {input:?}: invalid digest: {source}")]
    Digest {
        input: String,
        #[source]
        source: DigestError,
    },
    #[error("image reference {input:?}: name is {len} characters long, at most {NAME_MAX} allowed")]
    TooLong { input: String, len: usize },
    #[error(
        "image reference {input:?} is 64 hex digits, which is an image ID, not a repository name"
    )]
    LooksLikeId { input: String },
}

/// A normalized image reference.
///
/// Invariant (kept by [`FromStr`], the only constructor): `registry` and
/// `repository` are valid and normalized, and at least one of `tag` and
/// `digest` is set.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Reference {
    /// `docker.io`, `quay.io`, `localhost:5000`, `127.0.0.1:5000`, `[::1]:5000`.
    pub registry: String,
    /// `library/busybox`, `foo/bar/baz`.
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

impl Reference {
    /// `docker.io/library/busybox`: the name without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// `docker.io/library/busybox:latest`, what `RepoTags` shows; `None` for a
    /// reference by digest only.
    pub fn repo_tag(&self) -> Option<String> {
        self.tag.as_ref().map(|t| format!("{}:{t}", self.name()))
    }

    /// `docker.io/library/busybox@sha256:…`, what `RepoDigests` shows.
    pub fn repo_digest(&self, digest: &Digest) -> String {
        format!("{}@{digest}", self.name())
    }

    /// What goes after `/v2/<repository>/manifests/`: the digest when there is
    /// one (it pins the content even if a tag is also given), else the tag.
    pub fn manifest_reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            // Unreachable through FromStr; kept total instead of panicking.
            (None, None) => DEFAULT_TAG.to_string(),
        }
    }

    /// The same repository pinned to `digest` (tag dropped).
    pub fn with_digest(&self, digest: Digest) -> Reference {
        Reference {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            tag: None,
            digest: Some(digest),
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl FromStr for Reference {
    type Err = ReferenceError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        if input.is_empty() {
            return Err(ReferenceError::Empty);
        }
        if input.len() == 64
            && input
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Err(ReferenceError::LooksLikeId {
                input: input.to_string(),
            });
        }
        let (rest, digest) = match input.split_once('@') {
            Some((rest, d)) => {
                let digest = d
                    .parse::<Digest>()
                    .map_err(|source| ReferenceError::Digest {
                        input: input.to_string(),
                        source,
                    })?;
                (rest, Some(digest))
            }
            None => (input, None),
        };
        // A ':' after the last '/' starts the tag; one before it is a port.
        let last_component_start = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_component_start..].find(':') {
            Some(i) => {
                let at = last_component_start + i;
                let tag = &rest[at + 1..];
                if !valid_tag(tag) {
                    return Err(ReferenceError::Tag {
                        input: input.to_string(),
                        tag: tag.to_string(),
                    });
                }
                (&rest[..at], Some(tag.to_string()))
            }
            None => (rest, None),
        };
        if name.is_empty() {
            return Err(ReferenceError::Empty);
        }

        let (registry, path) = match name.split_once('/') {
            Some((first, path)) if looks_like_registry(first) => (first, path),
            _ => (DOCKER_HUB, name),
        };
        if !valid_registry(registry) {
            return Err(ReferenceError::Registry {
                input: input.to_string(),
                registry: registry.to_string(),
            });
        }
        let registry = if registry == DOCKER_HUB_LEGACY {
            DOCKER_HUB
        } else {
            registry
        };
        let repository = if registry == DOCKER_HUB && !path.contains('/') {
            format!("library/{path}")
        } else {
            path.to_string()
        };
        if repository.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(ReferenceError::Uppercase {
                input: input.to_string(),
                repository,
            });
        }
        if let Some(bad) = repository.split('/').find(|c| !valid_path_component(c)) {
            return Err(ReferenceError::Repository {
                input: input.to_string(),
                component: bad.to_string(),
            });
        }
        let len = registry.len() + 1 + repository.len();
        if len > NAME_MAX {
            return Err(ReferenceError::TooLong {
                input: input.to_string(),
                len,
            });
        }
        let tag = match (tag, &digest) {
            (None, None) => Some(DEFAULT_TAG.to_string()),
            (tag, _) => tag,
        };
        Ok(Reference {
            registry: registry.to_string(),
            repository,
            tag,
            digest,
        })
    }
}

impl serde::Serialize for Reference {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Reference {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Docker's rule for telling `registry/repo` from `user/repo`.
fn looks_like_registry(first: &str) -> bool {
    first.contains(['.', ':'])
        || first == "localhost"
        || first.bytes().any(|b| b.is_ascii_uppercase())
}

/// `host[:port]` where host is a DNS name, an IPv4 address, or a bracketed IPv6 address.
pub(crate) fn valid_registry(registry: &str) -> bool {
    let (host, port) = if let Some(v6) = registry.strip_prefix('[') {
        let Some((addr, after)) = v6.split_once(']') else {
            return false;
        };
        if addr.parse::<std::net::Ipv6Addr>().is_err() {
            return false;
        }
        match after {
            "" => return true,
            p => match p.strip_prefix(':') {
                Some(port) => (None, Some(port)),
                None => return false,
            },
        }
    } else {
        match registry.rsplit_once(':') {
            Some((h, p)) => (Some(h), Some(p)),
            None => (Some(registry), None),
        }
    };
    if let Some(port) = port
        && (port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()))
    {
        return false;
    }
    match host {
        None => true,
        Some(h) => !h.is_empty() && h.split('.').all(valid_domain_component),
    }
}

fn valid_domain_component(c: &str) -> bool {
    let b = c.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|&x| x.is_ascii_alphanumeric() || x == b'-')
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn valid_path_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`
fn valid_tag(tag: &str) -> bool {
    let b = tag.as_bytes();
    let word = |x: u8| x.is_ascii_alphanumeric() || x == b'_';
    !b.is_empty()
        && b.len() <= TAG_MAX
        && word(b[0])
        && b[1..].iter().all(|&x| word(x) || x == b'.' || x == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(s: &str) -> Reference {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn normalizes_like_docker() {
        let cases = [
            ("busybox", "docker.io/library/busybox:latest"),
            ("busybox:1.36", "docker.io/library/busybox:1.36"),
            ("library/busybox", "docker.io/library/busybox:latest"),
            ("foo/bar", "docker.io/foo/bar:latest"),
            ("foo/bar/baz:v1", "docker.io/foo/bar/baz:v1"),
            ("docker.io/busybox", "docker.io/library/busybox:latest"),
            (
                "index.docker.io/busybox",
                "docker.io/library/busybox:latest",
            ),
            ("docker.io/foo/bar", "docker.io/foo/bar:latest"),
            ("localhost/x", "localhost/x:latest"),
            ("localhost:5000/x", "localhost:5000/x:latest"),
            ("127.0.0.1:5000/x:tag", "127.0.0.1:5000/x:tag"),
            ("[::1]:5000/a/b:c", "[::1]:5000/a/b:c"),
            ("quay.io/coreos/etcd:v3.5.0", "quay.io/coreos/etcd:v3.5.0"),
            ("registry.k8s.io/pause:3.9", "registry.k8s.io/pause:3.9"),
            ("a.b/c__d.e-f---g", "a.b/c__d.e-f---g:latest"),
        ];
        for (input, want) in cases {
            assert_eq!(parse(input).to_string(), want, "{input}");
        }
    }

    #[test]
    fn digests_with_and_without_tag() {
        let r = parse(&format!("busybox@{D}"));
        assert_eq!(r.tag, None);
        assert_eq!(r.digest.as_ref().unwrap().to_string(), D);
        assert_eq!(r.to_string(), format!("docker.io/library/busybox@{D}"));
        assert_eq!(r.repo_tag(), None);
        assert_eq!(r.manifest_reference(), D);

        let r = parse(&format!("localhost:5000/x:v1@{D}"));
        assert_eq!(r.tag.as_deref(), Some("v1"));
        assert_eq!(r.registry, "localhost:5000");
        assert_eq!(r.manifest_reference(), D, "the digest pins the content");
        assert_eq!(r.to_string(), format!("localhost:5000/x:v1@{D}"));
    }

    #[test]
    fn pieces() {
        let r = parse("busybox");
        assert_eq!(r.name(), "docker.io/library/busybox");
        assert_eq!(
            r.repo_tag().as_deref(),
            Some("docker.io/library/busybox:latest")
        );
        let d: Digest = D.parse().unwrap();
        assert_eq!(r.repo_digest(&d), format!("docker.io/library/busybox@{D}"));
        assert_eq!(r.manifest_reference(), "latest");
        let pinned = r.with_digest(d.clone());
        assert_eq!(pinned.to_string(), format!("docker.io/library/busybox@{D}"));
    }

    #[test]
    fn errors_name_what_is_wrong() {
        assert_eq!("".parse::<Reference>(), Err(ReferenceError::Empty));
        assert_eq!(":tag".parse::<Reference>(), Err(ReferenceError::Empty));
        assert!(matches!(
            "Busybox".parse::<Reference>(),
            Err(ReferenceError::Uppercase { repository, .. }) if repository == "library/Busybox"
        ));
        assert!(matches!(
            "quay.io/Foo/bar".parse::<Reference>(),
            Err(ReferenceError::Uppercase { .. })
        ));
        // An uppercase first component is a registry name (docker's rule).
        assert_eq!(parse("Foo/bar").registry, "Foo");
        assert!(matches!(
            "busybox:-x".parse::<Reference>(),
            Err(ReferenceError::Tag { tag, .. }) if tag == "-x"
        ));
        assert!(matches!(
            "busybox:".parse::<Reference>(),
            Err(ReferenceError::Tag { .. })
        ));
        let long_tag = format!("busybox:{}", "a".repeat(129));
        assert!(matches!(
            long_tag.parse::<Reference>(),
            Err(ReferenceError::Tag { .. })
        ));
        assert!(matches!(
            "busybox@sha256:abc".parse::<Reference>(),
            Err(ReferenceError::Digest { .. })
        ));
        assert!(matches!(
            "busybox@md5:abc".parse::<Reference>(),
            Err(ReferenceError::Digest { .. })
        ));
        assert!(matches!(
            "foo//bar".parse::<Reference>(),
            Err(ReferenceError::Repository { component, .. }) if component.is_empty()
        ));
        assert!(matches!(
            "foo/-bar".parse::<Reference>(),
            Err(ReferenceError::Repository { component, .. }) if component == "-bar"
        ));
        assert!(matches!(
            "foo/a..b".parse::<Reference>(),
            Err(ReferenceError::Repository { .. })
        ));
        assert!(matches!(
            "foo/a___b".parse::<Reference>(),
            Err(ReferenceError::Repository { .. })
        ));
        assert!(matches!(
            "host:port/x".parse::<Reference>(),
            Err(ReferenceError::Registry { registry, .. }) if registry == "host:port"
        ));
        assert!(matches!(
            "-bad.io/x".parse::<Reference>(),
            Err(ReferenceError::Registry { .. })
        ));
        assert!(matches!(
            "[zz]:5000/x".parse::<Reference>(),
            Err(ReferenceError::Registry { .. })
        ));
        let id = "a".repeat(64);
        assert!(matches!(
            id.parse::<Reference>(),
            Err(ReferenceError::LooksLikeId { .. })
        ));
        let long = format!("foo/{}", "a".repeat(260));
        assert!(matches!(
            long.parse::<Reference>(),
            Err(ReferenceError::TooLong { .. })
        ));
        assert!(matches!(
            "white space".parse::<Reference>(),
            Err(ReferenceError::Repository { .. })
        ));
        // The message names the input and the offending part.
        let msg = "busybox:-x".parse::<Reference>().unwrap_err().to_string();
        assert!(
            msg.contains("busybox:-x") && msg.contains("\"-x\""),
            "{msg}"
        );
    }

    #[test]
    fn serde_round_trip() {
        let r = parse("foo/bar:1");
        let j = serde_json::to_string(&r).unwrap();
        assert_eq!(j, "\"docker.io/foo/bar:1\"");
        assert_eq!(serde_json::from_str::<Reference>(&j).unwrap(), r);
    }

    fn component() -> impl Strategy<Value = String> {
        "[a-z0-9]{1,6}((\\.|_|__|-{1,3})[a-z0-9]{1,6}){0,2}"
    }

    fn registry() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(DOCKER_HUB.to_string()),
            Just("localhost".to_string()),
            "[a-z0-9]{1,8}(\\.[a-z0-9]{1,8}){1,2}(:[0-9]{1,5})?",
            "(localhost|127\\.0\\.0\\.1):[0-9]{1,5}",
            "\\[::1\\](:[0-9]{1,5})?",
        ]
    }

    fn reference() -> impl Strategy<Value = Reference> {
        (
            registry(),
            prop::collection::vec(component(), 1..4),
            prop::option::of("[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}"),
            prop::option::of("[0-9a-f]{64}"),
        )
            .prop_map(|(registry, mut path, tag, digest)| {
                if registry == DOCKER_HUB && path.len() == 1 {
                    path.insert(0, "library".to_string());
                }
                let digest = digest.map(|h| Digest::from_hex(&h).unwrap());
                let tag = if tag.is_none() && digest.is_none() {
                    Some("latest".to_string())
                } else {
                    tag
                };
                Reference {
                    registry,
                    repository: path.join("/"),
                    tag,
                    digest,
                }
            })
    }

    proptest! {
        #[test]
        fn display_parse_round_trips(r in reference()) {
            let shown = r.to_string();
            let back: Reference = shown.parse().map_err(|e| TestCaseError::fail(format!("{shown}: {e}")))?;
            prop_assert_eq!(back, r);
        }

        #[test]
        fn familiar_names_normalize_idempotently(
            // No '.' here: a first component with one would be taken for a registry.
            path in prop::collection::vec("[a-z0-9]{1,6}((_|__|-{1,3})[a-z0-9]{1,6}){0,2}", 1..3),
            tag in prop::option::of("[a-z0-9][a-z0-9.-]{0,10}"),
        ) {
            let mut s = path.join("/");
            if let Some(t) = &tag {
                s = format!("{s}:{t}");
            }
            let r: Reference = s.parse().map_err(|e| TestCaseError::fail(format!("{s}: {e}")))?;
            prop_assert_eq!(&r.registry, DOCKER_HUB);
            prop_assert_eq!(r.tag.as_deref(), Some(tag.as_deref().unwrap_or("latest")));
            let again: Reference = r.to_string().parse().map_err(|e| TestCaseError::fail(format!("{e}")))?;
            prop_assert_eq!(again, r);
        }

        #[test]
        fn arbitrary_input_parses_or_errs_and_what_parses_round_trips(s in "\\PC{0,80}") {
            if let Ok(r) = s.parse::<Reference>() {
                let again: Reference = r.to_string().parse().map_err(|e| TestCaseError::fail(format!("{r}: {e}")))?;
                prop_assert_eq!(again, r);
            }
        }
    }
}
