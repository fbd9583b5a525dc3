//! A pod's volumes on the node, and the CRI mounts that bring them into its
//! containers, as upstream's volume plugins and `makeMounts` do.
//!
//! Each volume that needs a directory gets one at upstream's place,
//! `<root>/pods/<pod uid>/volumes/kubernetes.io~<plugin>/<volume name>`
//! (root by default `/var/lib/berth/kubelet`):
//!
//! | volume | plugin directory | content |
//! |---|---|---|
//! | `emptyDir` | `empty-dir` | a directory (0777); medium `Memory`: a tmpfs sized by `sizeLimit`, else the node's allocatable memory (else the kernel's default) |
//! | `hostPath` | none | the node's path, checked against `type` ([`host_path`]) |
//! | `configMap` | `configmap` | the ConfigMap's keys, on disk |
//! | `secret` | `secret` | the Secret's keys, on tmpfs |
//! | `downwardAPI` | `downward-api` | the pod's fields and resources, on tmpfs |
//! | `projected` | `projected` | configMap, secret and downwardAPI sources together, on tmpfs |
//!
//! Files are written by the [`atomic_writer`], so that [`VolumeManager::update`]
//! replaces them all at once. "On tmpfs" is upstream's rule that secrets never
//! reach the disk; it needs root (to mount), so it applies when the manager
//! runs as root, and [`VolumeManager::memory_backed`] turns it off for tests.
//!
//! A standalone node has no API server to read ConfigMaps and Secrets from:
//! they are directories of the node, one regular file per key, the file's
//! content the value (for a Secret, the decoded bytes):
//!
//! ```text
//! <config dir>/configmaps/<namespace>/<name>/<key>
//! <config dir>/secrets/<namespace>/<name>/<key>
//! ```
//!
//! `items`, `defaultMode` (0644 unless given) and `optional` mean what they
//! mean upstream. `serviceAccountToken`, `clusterTrustBundle` and
//! `podCertificate` projections need the API server and are refused.
//!
//! Left out: other volume types (PVCs, CSI, image, ephemeral), `fsGroup`
//! ownership and `defaultUser`, `subPathExpr`, `recursiveReadOnly`, hugepages
//! media, the size of memory-backed volumes from the pod's memory limits.

pub mod atomic_writer;
pub mod empty_dir;
pub mod host_path;
pub mod payload;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};

use berth_proto::v1::{Mount, MountPropagation};
use k8s_openapi::api::core::v1::{Container, Pod, Volume};
use thiserror::Error;

use crate::cri_config::NodeContext;
use crate::cri_config::quantity::{Quantity, QuantityError};
use atomic_writer::AtomicWriteError;
use atomic_writer::Payload;
use empty_dir::{EmptyDirError, Medium};
use host_path::HostPathError;
use payload::{DEFAULT_MODE, KeyKind, PayloadError, Sources};

/// The kubelet's default root directory.
pub const DEFAULT_ROOT: &str = "/var/lib/berth/kubelet";

/// Errors of this module.
#[derive(Debug, Error)]
pub enum VolumeError {
    /// A pod without a UID, or one that is not a file name.
    #[error("pod {pod:?} has no usable metadata.uid ({uid:?})")]
    PodUid {
        /// The pod's name.
        pod: String,
        /// The UID as given.
        uid: String,
    },
    /// A volume name that is not a file name.
    #[error("volume name {0:?} is not usable as a file name")]
    Name(String),
    /// Two volumes of one name.
    #[error("volume {0:?} is declared twice")]
    Duplicate(String),
    /// A volume type berth does not set up.
    #[error(
        "volume {0:?}: only emptyDir, hostPath, configMap, secret, downwardAPI and projected are supported"
    )]
    Unsupported(String),
    /// An unparsable size.
    #[error("volume {volume:?}: sizeLimit: {source}")]
    Size {
        /// The volume.
        volume: String,
        /// Why.
        source: QuantityError,
    },
    /// An emptyDir (or the tmpfs of a memory-backed volume) failed.
    #[error("volume {volume:?}: {source}")]
    EmptyDir {
        /// The volume.
        volume: String,
        /// Why.
        source: EmptyDirError,
    },
    /// A hostPath failed its checks.
    #[error("volume {volume:?}: {source}")]
    HostPath {
        /// The volume.
        volume: String,
        /// Why.
        source: HostPathError,
    },
    /// The files of a volume could not be computed.
    #[error("volume {volume:?}: {source}")]
    Payload {
        /// The volume.
        volume: String,
        /// Why (boxed: it is the largest error by far).
        source: Box<PayloadError>,
    },
    /// The files of a volume could not be written.
    #[error("volume {volume:?}: {source}")]
    Write {
        /// The volume.
        volume: String,
        /// Why.
        source: AtomicWriteError,
    },
    /// A volumeMount naming no volume of the pod.
    #[error("container {container:?}: volumeMount {mount:?} names no volume of the pod")]
    NoSuchVolume {
        /// The container.
        container: String,
        /// The mount's volume name.
        mount: String,
    },
    /// A subPath that is absolute, has `..`, or leaves the volume.
    #[error("container {container:?}: volumeMount {volume:?}: subPath {sub_path:?} {reason}")]
    SubPath {
        /// The container.
        container: String,
        /// The volume.
        volume: String,
        /// The subPath.
        sub_path: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A volumeMount field berth does not implement, or a value it does not know.
    #[error("container {container:?}: volumeMount {volume:?}: {what}")]
    Mount {
        /// The container.
        container: String,
        /// The volume.
        volume: String,
        /// What is wrong.
        what: String,
    },
    /// A file system call failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// On what.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> VolumeError {
    let path = path.to_path_buf();
    move |source| VolumeError::Io {
        action,
        path,
        source,
    }
}

/// The kind of a set-up volume.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VolumeKind {
    /// `emptyDir`.
    EmptyDir,
    /// `hostPath`.
    HostPath,
    /// `configMap`.
    ConfigMap,
    /// `secret`.
    Secret,
    /// `downwardAPI`.
    DownwardApi,
    /// `projected`.
    Projected,
}

impl VolumeKind {
    /// The plugin's directory name, `None` for hostPath.
    pub fn plugin_dir(self) -> Option<&'static str> {
        match self {
            Self::EmptyDir => Some("kubernetes.io~empty-dir"),
            Self::HostPath => None,
            Self::ConfigMap => Some("kubernetes.io~configmap"),
            Self::Secret => Some("kubernetes.io~secret"),
            Self::DownwardApi => Some("kubernetes.io~downward-api"),
            Self::Projected => Some("kubernetes.io~projected"),
        }
    }

    /// Whether containers only read it, whatever the mount says (upstream's
    /// read-only attribute of the file-based plugins).
    pub fn forces_read_only(self) -> bool {
        matches!(
            self,
            Self::ConfigMap | Self::Secret | Self::DownwardApi | Self::Projected
        )
    }

    /// Whether the runtime may relabel it: everything the kubelet made; never
    /// a node's own path.
    pub fn selinux_relabel(self) -> bool {
        self != Self::HostPath
    }

    fn of(volume: &Volume) -> Option<Self> {
        if volume.empty_dir.is_some() {
            Some(Self::EmptyDir)
        } else if volume.host_path.is_some() {
            Some(Self::HostPath)
        } else if volume.config_map.is_some() {
            Some(Self::ConfigMap)
        } else if volume.secret.is_some() {
            Some(Self::Secret)
        } else if volume.downward_api.is_some() {
            Some(Self::DownwardApi)
        } else if volume.projected.is_some() {
            Some(Self::Projected)
        } else {
            None
        }
    }
}

/// One set-up volume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetUpVolume {
    /// Its kind.
    pub kind: VolumeKind,
    /// Where it is on the node.
    pub path: PathBuf,
}

/// A pod's set-up volumes, by name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodVolumes {
    /// The volumes.
    pub volumes: BTreeMap<String, SetUpVolume>,
}

/// Sets up and tears down pods' volumes under one root.
#[derive(Clone, Debug)]
pub struct VolumeManager {
    root: PathBuf,
    config_dir: PathBuf,
    memory_backed: bool,
}

impl VolumeManager {
    /// A manager keeping pods under `root` (see [`DEFAULT_ROOT`]) and reading
    /// ConfigMaps and Secrets from `config_dir`. Secrets and other sensitive
    /// files go on tmpfs when running as root.
    pub fn new(root: impl Into<PathBuf>, config_dir: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            config_dir: config_dir.into(),
            memory_backed: nix::unistd::geteuid().is_root(),
        }
    }

    /// Whether secret, downwardAPI and projected volumes go on tmpfs.
    #[must_use]
    pub fn memory_backed(mut self, on: bool) -> Self {
        self.memory_backed = on;
        self
    }

    /// `<root>/pods/<uid>`.
    pub fn pod_dir(&self, pod_uid: &str) -> PathBuf {
        self.root.join("pods").join(pod_uid)
    }

    /// Sets up every volume of `pod`, all or nothing: on an error, the
    /// volumes this call made are torn down again. Volumes already set up
    /// (a second call for the same pod) are kept and their files refreshed.
    pub fn setup(&self, pod: &Pod, node: &NodeContext) -> Result<PodVolumes, VolumeError> {
        let uid = pod_uid(pod)?;
        let pod_dir = self.pod_dir(uid);
        let pod_dir_existed = pod_dir.exists();
        let mut made = Vec::new();
        let result = self.setup_all(pod, node, uid, &mut made);
        if result.is_err() {
            for dir in made.iter().rev() {
                if let Err(e) = empty_dir::tear_down(dir) {
                    tracing::warn!(path = %dir.display(), error = %e, "undoing a volume");
                }
            }
            if !pod_dir_existed && let Err(e) = self.teardown(uid) {
                tracing::warn!(pod_uid = uid, error = %e, "undoing the pod's volumes");
            }
        }
        result
    }

    fn setup_all(
        &self,
        pod: &Pod,
        node: &NodeContext,
        uid: &str,
        made: &mut Vec<PathBuf>,
    ) -> Result<PodVolumes, VolumeError> {
        let mut volumes = PodVolumes::default();
        for volume in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
            let name = &volume.name;
            if name.is_empty() || name.starts_with('.') || name.contains('/') {
                return Err(VolumeError::Name(name.clone()));
            }
            if volumes.volumes.contains_key(name) {
                return Err(VolumeError::Duplicate(name.clone()));
            }
            let kind =
                VolumeKind::of(volume).ok_or_else(|| VolumeError::Unsupported(name.clone()))?;
            let path = match (kind, &volume.host_path) {
                (VolumeKind::HostPath, Some(source)) => {
                    host_path::prepare(source).map_err(|source| VolumeError::HostPath {
                        volume: name.clone(),
                        source,
                    })?
                }
                _ => {
                    let dir = self.volume_dir(uid, kind, name);
                    if !dir.exists() {
                        made.push(dir.clone());
                    }
                    self.setup_dir(pod, node, volume, kind, &dir)?;
                    dir
                }
            };
            volumes
                .volumes
                .insert(name.clone(), SetUpVolume { kind, path });
        }
        Ok(volumes)
    }

    fn volume_dir(&self, uid: &str, kind: VolumeKind, name: &str) -> PathBuf {
        let plugin = kind.plugin_dir().unwrap_or("kubernetes.io~host-path");
        self.pod_dir(uid).join("volumes").join(plugin).join(name)
    }

    fn setup_dir(
        &self,
        pod: &Pod,
        node: &NodeContext,
        volume: &Volume,
        kind: VolumeKind,
        dir: &Path,
    ) -> Result<(), VolumeError> {
        let name = &volume.name;
        let empty_dir_err = |source| VolumeError::EmptyDir {
            volume: name.clone(),
            source,
        };
        let medium = match (kind, &volume.empty_dir) {
            (VolumeKind::EmptyDir, Some(source)) => {
                let size = match &source.size_limit {
                    Some(q) => Quantity::parse(&q.0)
                        .map_err(|source| VolumeError::Size {
                            volume: name.clone(),
                            source,
                        })?
                        .value(),
                    None => 0,
                };
                // A zero limit is no limit, as upstream.
                let size = if size == 0 {
                    node.allocatable.memory
                } else {
                    size
                };
                Medium::parse(source.medium.as_deref(), size).map_err(empty_dir_err)?
            }
            (VolumeKind::Secret | VolumeKind::DownwardApi | VolumeKind::Projected, _)
                if self.memory_backed =>
            {
                Medium::parse(Some("Memory"), node.allocatable.memory).map_err(empty_dir_err)?
            }
            _ => Medium::Disk,
        };
        let mode = if kind == VolumeKind::EmptyDir {
            0o777
        } else {
            0o755
        };
        empty_dir::set_up(dir, medium, mode).map_err(empty_dir_err)?;
        self.write_files(pod, node, volume, dir)
    }

    /// Computes and atomically writes a file-based volume's files; nothing
    /// for other volumes.
    fn write_files(
        &self,
        pod: &Pod,
        node: &NodeContext,
        volume: &Volume,
        dir: &Path,
    ) -> Result<(), VolumeError> {
        let name = &volume.name;
        let Some(payload) =
            self.payload(pod, node, volume)
                .map_err(|source| VolumeError::Payload {
                    volume: name.clone(),
                    source: Box::new(source),
                })?
        else {
            return Ok(());
        };
        atomic_writer::write(dir, &payload).map_err(|source| VolumeError::Write {
            volume: name.clone(),
            source,
        })?;
        Ok(())
    }

    fn payload(
        &self,
        pod: &Pod,
        node: &NodeContext,
        volume: &Volume,
    ) -> Result<Option<Payload>, PayloadError> {
        let src = Sources {
            config_dir: &self.config_dir,
            pod,
            node,
        };
        let payload = if let Some(cm) = &volume.config_map {
            payload::key_files(
                &src,
                KeyKind::ConfigMap,
                &cm.name,
                cm.items.as_deref(),
                payload::mode(cm.default_mode, DEFAULT_MODE, "defaultMode")?,
                cm.optional.unwrap_or(false),
            )?
        } else if let Some(secret) = &volume.secret {
            payload::key_files(
                &src,
                KeyKind::Secret,
                secret.secret_name.as_deref().unwrap_or(""),
                secret.items.as_deref(),
                payload::mode(secret.default_mode, DEFAULT_MODE, "defaultMode")?,
                secret.optional.unwrap_or(false),
            )?
        } else if let Some(downward) = &volume.downward_api {
            payload::downward_api(
                &src,
                downward.items.as_deref().unwrap_or(&[]),
                payload::mode(downward.default_mode, DEFAULT_MODE, "defaultMode")?,
            )?
        } else if let Some(projected) = &volume.projected {
            payload::projected(&src, projected)?
        } else {
            return Ok(None);
        };
        Ok(Some(payload))
    }

    /// Rewrites the files of `pod`'s configMap, secret, downwardAPI and
    /// projected volumes where their content changed; the pod's volumes must
    /// have been set up.
    pub fn update(&self, pod: &Pod, node: &NodeContext) -> Result<(), VolumeError> {
        let uid = pod_uid(pod)?;
        for volume in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
            let Some(kind) = VolumeKind::of(volume) else {
                continue;
            };
            if !kind.forces_read_only() {
                continue;
            }
            let dir = self.volume_dir(uid, kind, &volume.name);
            if !dir.is_dir() {
                return Err(io_err("updating", &dir)(io::ErrorKind::NotFound.into()));
            }
            self.write_files(pod, node, volume, &dir)?;
        }
        Ok(())
    }

    /// Unmounts and removes everything under the pod's directory. An
    /// unmount that fails stops the teardown, so that nothing is removed
    /// through a mount.
    pub fn teardown(&self, pod_uid: &str) -> Result<(), VolumeError> {
        if !is_file_name(pod_uid) {
            return Err(VolumeError::PodUid {
                pod: String::new(),
                uid: pod_uid.to_owned(),
            });
        }
        let pod_dir = self.pod_dir(pod_uid);
        let volumes = pod_dir.join("volumes");
        match fs::read_dir(&volumes) {
            Ok(plugins) => {
                for plugin in plugins {
                    let plugin = plugin.map_err(io_err("listing", &volumes))?.path();
                    if !fs::symlink_metadata(&plugin)
                        .map_err(io_err("inspecting", &plugin))?
                        .is_dir()
                    {
                        continue;
                    }
                    for volume in fs::read_dir(&plugin).map_err(io_err("listing", &plugin))? {
                        let volume = volume.map_err(io_err("listing", &plugin))?.path();
                        empty_dir::tear_down(&volume).map_err(|source| VolumeError::EmptyDir {
                            volume: volume.display().to_string(),
                            source,
                        })?;
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("listing", &volumes)(e)),
        }
        match fs::remove_dir_all(&pod_dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("removing", &pod_dir)(e)),
            _ => Ok(()),
        }
    }
}

fn is_file_name(s: &str) -> bool {
    !s.is_empty() && !s.starts_with('.') && !s.contains('/') && !s.contains('\0')
}

fn pod_uid(pod: &Pod) -> Result<&str, VolumeError> {
    let uid = pod.metadata.uid.as_deref().unwrap_or("");
    if is_file_name(uid) {
        Ok(uid)
    } else {
        Err(VolumeError::PodUid {
            pod: pod.metadata.name.clone().unwrap_or_default(),
            uid: uid.to_owned(),
        })
    }
}

impl PodVolumes {
    /// The CRI mounts of `container`'s `volumeMounts`, as upstream's
    /// `makeMounts`: the volume (or its `subPath`, made if missing) at
    /// `mountPath`, read-only if the mount or the volume says so, with the
    /// mount's propagation (`Bidirectional` only for privileged containers).
    pub fn mounts_for(&self, container: &Container) -> Result<Vec<Mount>, VolumeError> {
        let mut mounts = Vec::new();
        for vm in container.volume_mounts.iter().flatten() {
            let mount_err = |what: String| VolumeError::Mount {
                container: container.name.clone(),
                volume: vm.name.clone(),
                what,
            };
            let volume = self
                .volumes
                .get(&vm.name)
                .ok_or_else(|| VolumeError::NoSuchVolume {
                    container: container.name.clone(),
                    mount: vm.name.clone(),
                })?;
            if vm.sub_path_expr.as_deref().is_some_and(|s| !s.is_empty()) {
                return Err(mount_err("subPathExpr is not supported".to_owned()));
            }
            let host_path = match vm.sub_path.as_deref().filter(|s| !s.is_empty()) {
                None => volume.path.clone(),
                Some(sub) => sub_path(container, &vm.name, &volume.path, sub)?,
            };
            let privileged = container
                .security_context
                .as_ref()
                .and_then(|s| s.privileged)
                .unwrap_or(false);
            let propagation = match vm.mount_propagation.as_deref() {
                None | Some("None") => MountPropagation::PropagationPrivate,
                Some("HostToContainer") => MountPropagation::PropagationHostToContainer,
                Some("Bidirectional") if privileged => MountPropagation::PropagationBidirectional,
                Some("Bidirectional") => {
                    return Err(mount_err(
                        "Bidirectional mount propagation is available only to privileged containers"
                            .to_owned(),
                    ));
                }
                Some(other) => {
                    return Err(mount_err(format!("unknown mountPropagation {other:?}")));
                }
            };
            mounts.push(Mount {
                container_path: vm.mount_path.clone(),
                host_path: host_path.to_string_lossy().into_owned(),
                readonly: vm.read_only.unwrap_or(false) || volume.kind.forces_read_only(),
                selinux_relabel: volume.kind.selinux_relabel(),
                propagation: propagation as i32,
                ..Mount::default()
            });
        }
        Ok(mounts)
    }
}

/// `volume/sub`, made as a directory if missing (as upstream, with the
/// volume's mode), refused when it is absolute, has `..`, or resolves (through
/// symlinks) outside the volume.
fn sub_path(
    container: &Container,
    volume_name: &str,
    volume: &Path,
    sub: &str,
) -> Result<PathBuf, VolumeError> {
    let refuse = |reason| VolumeError::SubPath {
        container: container.name.clone(),
        volume: volume_name.to_owned(),
        sub_path: sub.to_owned(),
        reason,
    };
    let rel = Path::new(sub);
    if rel.is_absolute() {
        return Err(refuse("must be relative"));
    }
    if rel.components().any(|c| c == Component::ParentDir) {
        return Err(refuse("must not contain '..'"));
    }
    let path = volume.join(rel);
    if fs::symlink_metadata(&path).is_err() {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        let mode = fs::metadata(volume)
            .map(|m| m.permissions().mode() & 0o7777)
            .unwrap_or(0o755);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(&path)
            .map_err(io_err("creating the subPath", &path))?;
    }
    let real_volume = fs::canonicalize(volume).map_err(io_err("resolving", volume))?;
    let real = fs::canonicalize(&path).map_err(io_err("resolving", &path))?;
    if !real.starts_with(&real_volume) {
        return Err(refuse("leaves the volume through a symlink"));
    }
    Ok(path)
}
