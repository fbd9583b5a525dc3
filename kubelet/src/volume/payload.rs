//! The files of configMap, secret, downwardAPI and projected volumes, as
//! upstream's plugins compute them, for the [atomic writer](super::atomic_writer).
//!
//! Without an API server, a ConfigMap or Secret is a directory of the node
//! (see [the module](super) for where), one regular file per key, the file's
//! content the key's value (for secrets: the decoded bytes). Entries whose
//! names start with `..` are not keys, so that a directory written by an
//! atomic writer can serve as a source.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{
    Container, DownwardAPIVolumeFile, KeyToPath, Pod, ProjectedVolumeSource, ResourceFieldSelector,
};
use thiserror::Error;

use super::atomic_writer::{FileProjection, Payload};
use crate::cri_config::NodeContext;
use crate::cri_config::downward::{DownwardError, format_map, resource_value as resource_value_of};
use crate::cri_config::quantity::QuantityError;
use crate::cri_config::resources::{Requirements, ResourcesError};

/// Upstream's default mode of projected files.
pub const DEFAULT_MODE: u32 = 0o644;

/// Errors of this module.
#[derive(Debug, Error)]
pub enum PayloadError {
    /// A ConfigMap or Secret not on the node, and not optional.
    #[error(
        "{kind} {namespace}/{name} not found: create {path} with one file per key, or mark it optional"
    )]
    NotFound {
        /// `configMap` or `secret`.
        kind: &'static str,
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// The directory looked for.
        path: PathBuf,
    },
    /// An item's key that the object does not have.
    #[error("{kind} {namespace}/{name} has no key {key:?} (no file {path})")]
    MissingKey {
        /// `configMap` or `secret`.
        kind: &'static str,
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// The key asked for.
        key: String,
        /// The file looked for.
        path: PathBuf,
    },
    /// A name that is not one path component.
    #[error("{kind} name {name:?} is not usable as a file name")]
    Name {
        /// `configMap` or `secret`.
        kind: &'static str,
        /// The name.
        name: String,
    },
    /// A mode outside 0..=0777.
    #[error("mode {mode} (octal {mode:o}) of {path:?} is not within 0 and 0777")]
    Mode {
        /// The file's path, or `defaultMode`.
        path: String,
        /// The mode.
        mode: i32,
    },
    /// A downward API field that volumes do not offer.
    #[error(
        "downwardAPI file {path:?}: fieldPath {field:?} is not offered in volumes (metadata.name, namespace, uid, labels, annotations)"
    )]
    FieldPath {
        /// The file's path.
        path: String,
        /// The field.
        field: String,
    },
    /// A downward API item without a source.
    #[error("downwardAPI file {path:?} has neither fieldRef nor resourceFieldRef")]
    NoSource {
        /// The file's path.
        path: String,
    },
    /// A resourceFieldRef naming no container of the pod.
    #[error("downwardAPI file {path:?}: no container named {container:?} in the pod")]
    NoSuchContainer {
        /// The file's path.
        path: String,
        /// The name asked for (empty when missing: volumes need one).
        container: String,
    },
    /// A resourceFieldRef resource the downward API does not offer.
    #[error("downwardAPI file {path:?}: unsupported resource {resource:?}")]
    Resource {
        /// The file's path.
        path: String,
        /// The resource.
        resource: String,
    },
    /// A divisor that is not a positive quantity.
    #[error("downwardAPI file {path:?}: divisor {divisor:?} is not a positive quantity")]
    Divisor {
        /// The file's path.
        path: String,
        /// The divisor.
        divisor: String,
        /// Why, when it does not parse.
        source: Option<QuantityError>,
    },
    /// The resources of the container a resourceFieldRef reads.
    #[error(transparent)]
    Resources(#[from] ResourcesError),
    /// A projected source that needs the API server.
    #[error("projected source {0} is unsupported in standalone mode (it needs the API server)")]
    Unsupported(&'static str),
    /// Two projected sources writing one path.
    #[error("projected sources both write {0:?}")]
    Conflict(String),
    /// Reading a key failed.
    #[error("reading {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

/// What the payloads are computed from.
#[derive(Clone, Copy, Debug)]
pub struct Sources<'a> {
    /// The directory holding `configmaps/` and `secrets/`.
    pub config_dir: &'a Path,
    /// The pod.
    pub pod: &'a Pod,
    /// The node, for limits a container does not set.
    pub node: &'a NodeContext,
}

/// Which kind of object a key-file volume reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    /// `<config>/configmaps/<namespace>/<name>/`.
    ConfigMap,
    /// `<config>/secrets/<namespace>/<name>/`.
    Secret,
}

impl KeyKind {
    fn name(self) -> &'static str {
        match self {
            Self::ConfigMap => "configMap",
            Self::Secret => "secret",
        }
    }

    fn dir(self) -> &'static str {
        match self {
            Self::ConfigMap => "configmaps",
            Self::Secret => "secrets",
        }
    }
}

/// A mode from the spec, checked.
pub fn mode(value: Option<i32>, default: u32, path: &str) -> Result<u32, PayloadError> {
    match value {
        None => Ok(default),
        Some(m) => u32::try_from(m)
            .ok()
            .filter(|m| *m <= 0o777)
            .ok_or(PayloadError::Mode {
                path: path.to_owned(),
                mode: m,
            }),
    }
}

/// The files of a configMap or secret volume (or projection): every key at
/// its own name, or only `items` at their paths; a missing object or key is
/// an error unless `optional`, as upstream.
pub fn key_files(
    src: &Sources<'_>,
    kind: KeyKind,
    name: &str,
    items: Option<&[KeyToPath]>,
    default_mode: u32,
    optional: bool,
) -> Result<Payload, PayloadError> {
    let namespace = src
        .pod
        .metadata
        .namespace
        .as_deref()
        .filter(|n| !n.is_empty())
        .unwrap_or("default");
    for part in [namespace, name] {
        if part.is_empty() || part.starts_with('.') || part.contains('/') {
            return Err(PayloadError::Name {
                kind: kind.name(),
                name: part.to_owned(),
            });
        }
    }
    let dir = src.config_dir.join(kind.dir()).join(namespace).join(name);
    let keys = match read_keys(&dir)? {
        Some(keys) => keys,
        None if optional => return Ok(Payload::new()),
        None => {
            return Err(PayloadError::NotFound {
                kind: kind.name(),
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                path: dir,
            });
        }
    };
    let mut payload = Payload::new();
    match items {
        None => {
            for (key, data) in keys {
                let file = FileProjection {
                    data,
                    mode: default_mode,
                };
                payload.insert(key, file);
            }
        }
        Some(items) => {
            for item in items {
                let Some(data) = keys.get(&item.key) else {
                    if optional {
                        continue;
                    }
                    return Err(PayloadError::MissingKey {
                        kind: kind.name(),
                        namespace: namespace.to_owned(),
                        name: name.to_owned(),
                        key: item.key.clone(),
                        path: dir.join(&item.key),
                    });
                };
                let file = FileProjection {
                    data: data.clone(),
                    mode: mode(item.mode, default_mode, &item.path)?,
                };
                payload.insert(item.path.clone(), file);
            }
        }
    }
    Ok(payload)
}

/// The keys in `dir`, `None` when there is no such directory.
fn read_keys(dir: &Path) -> Result<Option<BTreeMap<String, Vec<u8>>>, PayloadError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| PayloadError::Io { path, source }
    };
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(dir)(e)),
    };
    let mut keys = BTreeMap::new();
    for entry in entries {
        let entry = entry.map_err(io(dir))?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        let path = entry.path();
        // Through symlinks, so that an atomic writer's `key -> ..data/key` is a key.
        if name.starts_with("..") || !fs::metadata(&path).map_err(io(&path))?.is_file() {
            continue;
        }
        keys.insert(name, fs::read(&path).map_err(io(&path))?);
    }
    Ok(Some(keys))
}

/// The files of a downwardAPI volume (or projection).
pub fn downward_api(
    src: &Sources<'_>,
    items: &[DownwardAPIVolumeFile],
    default_mode: u32,
) -> Result<Payload, PayloadError> {
    let mut payload = Payload::new();
    for item in items {
        let data = if let Some(field) = &item.field_ref {
            field_value(src.pod, &item.path, &field.field_path)?
        } else if let Some(resource) = &item.resource_field_ref {
            resource_value(src, &item.path, resource)?
        } else {
            return Err(PayloadError::NoSource {
                path: item.path.clone(),
            });
        };
        let file = FileProjection {
            data: data.into_bytes(),
            mode: mode(item.mode, default_mode, &item.path)?,
        };
        payload.insert(item.path.clone(), file);
    }
    Ok(payload)
}

/// The files of a projected volume: its sources' files together.
pub fn projected(
    src: &Sources<'_>,
    source: &ProjectedVolumeSource,
) -> Result<Payload, PayloadError> {
    let default_mode = mode(source.default_mode, DEFAULT_MODE, "defaultMode")?;
    let mut payload = Payload::new();
    for projection in source.sources.iter().flatten() {
        let files = if let Some(cm) = &projection.config_map {
            key_files(
                src,
                KeyKind::ConfigMap,
                &cm.name,
                cm.items.as_deref(),
                default_mode,
                cm.optional.unwrap_or(false),
            )?
        } else if let Some(secret) = &projection.secret {
            key_files(
                src,
                KeyKind::Secret,
                &secret.name,
                secret.items.as_deref(),
                default_mode,
                secret.optional.unwrap_or(false),
            )?
        } else if let Some(downward) = &projection.downward_api {
            downward_api(src, downward.items.as_deref().unwrap_or(&[]), default_mode)?
        } else if projection.service_account_token.is_some() {
            return Err(PayloadError::Unsupported("serviceAccountToken"));
        } else if projection.cluster_trust_bundle.is_some() {
            return Err(PayloadError::Unsupported("clusterTrustBundle"));
        } else if projection.pod_certificate.is_some() {
            return Err(PayloadError::Unsupported("podCertificate"));
        } else {
            continue;
        };
        for (path, file) in files {
            // Upstream's validation refuses such pods; without it, the later
            // source would silently win.
            if payload.contains_key(&path) {
                return Err(PayloadError::Conflict(path));
            }
            payload.insert(path, file);
        }
    }
    Ok(payload)
}

/// A `fieldRef` as volumes offer it: the pod's name, namespace, UID, and its
/// labels and annotations, whole or one by one.
fn field_value(pod: &Pod, path: &str, field: &str) -> Result<String, PayloadError> {
    let meta = &pod.metadata;
    let text = |s: &Option<String>| s.clone().unwrap_or_default();
    Ok(match field {
        "metadata.name" => text(&meta.name),
        "metadata.namespace" => text(&meta.namespace),
        "metadata.uid" => text(&meta.uid),
        "metadata.labels" => format_map(meta.labels.as_ref()),
        "metadata.annotations" => format_map(meta.annotations.as_ref()),
        _ => {
            let one = |prefix: &str, map: Option<&BTreeMap<String, String>>| {
                let key = field
                    .strip_prefix(prefix)?
                    .strip_prefix("['")?
                    .strip_suffix("']")?;
                Some(map.and_then(|m| m.get(key)).cloned().unwrap_or_default())
            };
            one("metadata.labels", meta.labels.as_ref())
                .or_else(|| one("metadata.annotations", meta.annotations.as_ref()))
                .ok_or_else(|| PayloadError::FieldPath {
                    path: path.to_owned(),
                    field: field.to_owned(),
                })?
        }
    })
}

/// A `resourceFieldRef`: the named container's request or limit (an unset
/// limit reads as the node's allocatable amount), divided by the divisor and
/// rounded up, as upstream.
fn resource_value(
    src: &Sources<'_>,
    path: &str,
    selector: &ResourceFieldSelector,
) -> Result<String, PayloadError> {
    let wanted = selector.container_name.as_deref().unwrap_or("");
    let container: &Container = src
        .pod
        .spec
        .iter()
        .flat_map(|s| {
            s.containers
                .iter()
                .chain(s.init_containers.iter().flatten())
        })
        .find(|c| !wanted.is_empty() && c.name == wanted)
        .ok_or_else(|| PayloadError::NoSuchContainer {
            path: path.to_owned(),
            container: wanted.to_owned(),
        })?;
    let requirements = Requirements::of(container)?;
    let divisor = selector.divisor.as_ref().map_or("", |d| d.0.as_str());
    resource_value_of(
        &requirements,
        &src.node.allocatable,
        &selector.resource,
        divisor,
    )
    .map_err(|e| match e {
        DownwardError::Divisor { divisor, source } => PayloadError::Divisor {
            path: path.to_owned(),
            divisor,
            source,
        },
        DownwardError::Resource(resource) => PayloadError::Resource {
            path: path.to_owned(),
            resource,
        },
    })
}
