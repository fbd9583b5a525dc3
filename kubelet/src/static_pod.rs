//! The identity of a pod read from a manifest file: its name on this node,
//! its UID and the `kubernetes.io/config.*` annotations, as upstream's file
//! source gives them (`pkg/kubelet/config/common.go`, `applyDefaults`).
//!
//! Same as upstream:
//! - the name becomes `<name>-<node name>`, the node name lower-cased;
//! - an empty namespace becomes `default`;
//! - the UID is the hex MD5 of the pod as decoded, followed by
//!   `host:<node name>` and `file:<manifest path>`, so the same pod in
//!   another file or on another node is another pod; the hash is taken before
//!   the name and namespace are changed;
//! - `kubernetes.io/config.hash` holds the UID, `kubernetes.io/config.source`
//!   is `file`, `kubernetes.io/config.seen` the time the source first saw this
//!   UID (set by [`crate::source`], kept while the pod is unchanged);
//! - `spec.nodeName` is the node, a toleration of every `NoExecute` taint is
//!   added, and `status.phase` is `Pending`.
//!
//! Not the same:
//! - upstream hashes Go's debug dump of its internal pod type after API
//!   defaulting; berth hashes the pod's JSON as k8s-openapi writes it, without
//!   defaulting. The hash is as deterministic (fields in a fixed order, maps
//!   sorted, unknown fields and formatting ignored) but its value differs from
//!   upstream's, and spelling out a default (`restartPolicy: Always`) changes it;
//! - upstream keeps a `metadata.uid` written in the manifest; berth always
//!   derives the UID (the written one is hashed with the rest), so that every
//!   change of a manifest replaces its pod;
//! - `config.seen` is written in UTC (`...Z`) instead of the local zone.

use std::path::Path;

use k8s_openapi::api::core::v1::{Pod, PodSpec, PodStatus, Toleration};
use md5::{Digest, Md5};
use thiserror::Error;

use crate::validation::names;

/// Annotation holding the hash of the manifest's pod, equal to its UID.
pub const CONFIG_HASH_ANNOTATION: &str = "kubernetes.io/config.hash";
/// Annotation naming where the pod came from.
pub const CONFIG_SOURCE_ANNOTATION: &str = "kubernetes.io/config.source";
/// Annotation with the time the kubelet first saw the pod (RFC 3339).
pub const CONFIG_SEEN_ANNOTATION: &str = "kubernetes.io/config.seen";
/// The `config.source` of pods read from a manifest directory.
pub const FILE_SOURCE: &str = "file";

/// Errors of this module.
#[derive(Debug, Error)]
pub enum StaticPodError {
    /// The node name cannot be part of a pod name.
    #[error("node name {name:?} is not usable in pod names: {}", reasons.join("; "))]
    InvalidNodeName {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        reasons: Vec<String>,
    },
}

/// The node's name as pod names carry it: lower-cased, an RFC 1123 subdomain.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct NodeName(String);

impl NodeName {
    /// Lower-cases `name` (upstream lower-cases host names) and checks it.
    pub fn new(name: &str) -> Result<Self, StaticPodError> {
        let lower = name.to_lowercase();
        let reasons = names::dns1123_subdomain(&lower);
        if reasons.is_empty() {
            Ok(Self(lower))
        } else {
            Err(StaticPodError::InvalidNodeName {
                name: name.to_owned(),
                reasons,
            })
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for NodeName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The name a manifest's pod gets on `node`.
pub fn pod_name(name: &str, node: &NodeName) -> String {
    format!("{name}-{node}")
}

/// The UID and `config.hash` of `pod`, read from `manifest`, on `node`.
pub fn config_hash(pod: &Pod, manifest: &Path, node: &NodeName) -> String {
    let mut hasher = Md5::new();
    // Serializing k8s-openapi types into a writer that cannot fail does not
    // fail (string keys only); were it to, what was written is still a
    // deterministic function of the pod.
    let _ = serde_json::to_writer(&mut hasher, pod);
    hasher.update(format!("host:{node}"));
    hasher.update(format!("file:{}", manifest.display()));
    hex::encode(hasher.finalize())
}

/// Gives the pod decoded from `manifest` its identity on `node` (see the module's doc).
/// `config.seen` is left to the caller, which knows when it first saw the UID.
pub fn identify(mut pod: Pod, manifest: &Path, node: &NodeName) -> Pod {
    let hash = config_hash(&pod, manifest, node);
    let meta = &mut pod.metadata;
    meta.name = Some(pod_name(meta.name.as_deref().unwrap_or_default(), node));
    if meta.namespace.as_deref().unwrap_or_default().is_empty() {
        meta.namespace = Some("default".to_owned());
    }
    meta.uid = Some(hash.clone());
    let annotations = meta.annotations.get_or_insert_default();
    annotations.insert(CONFIG_HASH_ANNOTATION.to_owned(), hash);
    annotations.insert(CONFIG_SOURCE_ANNOTATION.to_owned(), FILE_SOURCE.to_owned());

    let spec = pod.spec.get_or_insert_with(PodSpec::default);
    spec.node_name = Some(node.as_str().to_owned());
    tolerate_no_execute(spec);
    pod.status.get_or_insert_with(PodStatus::default).phase = Some("Pending".to_owned());
    pod
}

/// Static pods tolerate every `NoExecute` taint so that node problems do not
/// evict them. As upstream's `AddOrUpdateTolerationInPod`: a toleration
/// matching on key, operator, value and effect is replaced, else one is added.
fn tolerate_no_execute(spec: &mut PodSpec) {
    let ours = Toleration {
        operator: Some("Exists".to_owned()),
        effect: Some("NoExecute".to_owned()),
        ..Toleration::default()
    };
    let text = |s: &Option<String>| s.clone().unwrap_or_default();
    let tolerations = spec.tolerations.get_or_insert_default();
    let matching = tolerations.iter_mut().find(|t| {
        text(&t.key) == text(&ours.key)
            && text(&t.operator) == text(&ours.operator)
            && text(&t.value) == text(&ours.value)
            && text(&t.effect) == text(&ours.effect)
    });
    match matching {
        Some(existing) => *existing = ours,
        None => tolerations.push(ours),
    }
}

/// The RFC 3339 time for `config.seen`, now.
pub fn seen_now() -> String {
    jiff::Timestamp::now().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Container;

    fn pod(name: &str, image: &str) -> Pod {
        let mut pod = Pod::default();
        pod.metadata.name = Some(name.to_owned());
        pod.spec = Some(PodSpec {
            containers: vec![Container {
                name: "app".to_owned(),
                image: Some(image.to_owned()),
                ..Container::default()
            }],
            ..PodSpec::default()
        });
        pod
    }

    fn node() -> NodeName {
        NodeName::new("Node-1").unwrap()
    }

    #[test]
    fn node_name_is_lower_cased_and_checked() {
        assert_eq!(node().as_str(), "node-1");
        assert!(NodeName::new("bad_name").is_err());
        assert!(NodeName::new("").is_err());
    }

    #[test]
    fn identity_as_upstream() {
        let path = Path::new("/etc/kubernetes/manifests/web.yaml");
        let out = identify(pod("web", "nginx"), path, &node());
        let meta = &out.metadata;
        assert_eq!(meta.name.as_deref(), Some("web-node-1"));
        assert_eq!(meta.namespace.as_deref(), Some("default"));
        let uid = meta.uid.clone().unwrap();
        assert_eq!(uid.len(), 32);
        assert!(uid.bytes().all(|b| b.is_ascii_hexdigit()));
        let annotations = meta.annotations.as_ref().unwrap();
        assert_eq!(annotations[CONFIG_HASH_ANNOTATION], uid);
        assert_eq!(annotations[CONFIG_SOURCE_ANNOTATION], "file");
        let spec = out.spec.as_ref().unwrap();
        assert_eq!(spec.node_name.as_deref(), Some("node-1"));
        assert_eq!(spec.tolerations.as_ref().unwrap().len(), 1);
        assert_eq!(out.status.unwrap().phase.as_deref(), Some("Pending"));
    }

    #[test]
    fn hash_is_stable_and_change_sensitive() {
        let path = Path::new("/m/web.yaml");
        let base = config_hash(&pod("web", "nginx:1"), path, &node());
        assert_eq!(base, config_hash(&pod("web", "nginx:1"), path, &node()));
        assert_ne!(base, config_hash(&pod("web", "nginx:2"), path, &node()));
        assert_ne!(
            base,
            config_hash(&pod("web", "nginx:1"), Path::new("/m/other.yaml"), &node())
        );
        assert_ne!(
            base,
            config_hash(
                &pod("web", "nginx:1"),
                path,
                &NodeName::new("node-2").unwrap()
            )
        );
    }

    #[test]
    fn a_given_namespace_is_kept() {
        let mut p = pod("web", "nginx");
        p.metadata.namespace = Some("kube-system".to_owned());
        let out = identify(p, Path::new("/m/a"), &node());
        assert_eq!(out.metadata.namespace.as_deref(), Some("kube-system"));
    }

    #[test]
    fn matching_toleration_is_replaced_not_doubled() {
        let mut p = pod("web", "nginx");
        let spec = p.spec.as_mut().unwrap();
        spec.tolerations = Some(vec![
            Toleration {
                operator: Some("Exists".to_owned()),
                effect: Some("NoExecute".to_owned()),
                toleration_seconds: Some(30),
                ..Toleration::default()
            },
            Toleration {
                key: Some("dedicated".to_owned()),
                operator: Some("Exists".to_owned()),
                ..Toleration::default()
            },
        ]);
        let out = identify(p, Path::new("/m/a"), &node());
        let tolerations = out.spec.unwrap().tolerations.unwrap();
        assert_eq!(tolerations.len(), 2);
        assert_eq!(tolerations[0].toleration_seconds, None);
    }

    #[test]
    fn seen_is_rfc3339_utc() {
        let seen = seen_now();
        assert!(seen.ends_with('Z'), "{seen}");
        assert!(seen.parse::<jiff::Timestamp>().is_ok());
    }
}
