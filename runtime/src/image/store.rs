//! The image store: one handle on the blobs, layers, snapshots and metadata
//! under one root, and the operations the CRI ImageService and `berth image`
//! need (pull is in `pull`, import and export in `archive`).
//!
//! Layout under the root (default `/var/lib/berth`):
//! `blobs/` and `ingest/` (content), `layers/`, `snapshots/`, `images/`.
//!
//! Garbage collection deletes blobs and layers no image refers to. A pull
//! stores its blobs before its image record exists, so each pull holds a
//! shared lock on `images/pulls` for its whole run and collection takes it
//! exclusively: collection waits for no pull and no pull waits for it; when
//! they meet, collection is skipped and the next one catches up.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use super::content::{ContentError, ContentStore, Usage};
use super::digest::Digest;
use super::layer::{LayerError, LayerStore};
use super::meta::{ImageRecord, MetaError, MetaStore};
use super::registry::{RegistryClient, RegistryError};
use super::snapshot::{SnapshotError, Snapshotter};
use crate::config::RegistryConfig;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(transparent)]
    Content(#[from] ContentError),
    #[error(transparent)]
    Layer(#[from] LayerError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Pull(#[from] super::pull::PullError),
    #[error("image {image} ({id}) is in use by {}", users.join(", "))]
    InUse {
        image: String,
        id: Digest,
        users: Vec<String>,
    },
    #[error("image {image}: layer {diff_id} is missing from the store; pull the image again")]
    MissingLayer { image: String, diff_id: Digest },
    #[error("image {image}: config {digest} is not a valid image config: {source}")]
    Config {
        image: String,
        digest: Digest,
        source: serde_json::Error,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

type Result<T> = std::result::Result<T, ImageError>;

#[derive(Debug, Clone)]
pub struct ImageStore {
    root: PathBuf,
    content: ContentStore,
    layers: LayerStore,
    snapshots: Snapshotter,
    meta: MetaStore,
    registry: RegistryClient,
}

/// What a garbage collection removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GcReport {
    pub blobs: usize,
    pub layers: usize,
    pub bytes: u64,
    /// A pull was running: nothing was collected.
    pub skipped: bool,
}

/// A shared hold on the store that keeps garbage collection away.
pub struct PullLease {
    _file: File,
}

impl ImageStore {
    pub fn open(root: &Path, registry: &RegistryConfig) -> Result<Self> {
        Ok(Self {
            root: root.to_owned(),
            content: ContentStore::open(root)?,
            layers: LayerStore::open(root)?,
            snapshots: Snapshotter::open(root)?,
            meta: MetaStore::open(root)?,
            registry: RegistryClient::new(registry)?,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn content(&self) -> &ContentStore {
        &self.content
    }
    pub fn layers(&self) -> &LayerStore {
        &self.layers
    }
    pub fn snapshots(&self) -> &Snapshotter {
        &self.snapshots
    }
    pub fn meta(&self) -> &MetaStore {
        &self.meta
    }
    pub fn registry(&self) -> &RegistryClient {
        &self.registry
    }

    fn pulls_lock(&self, mode: libc::c_int) -> Result<Option<PullLease>> {
        let path = self.root.join("images").join("pulls");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| ImageError::Io {
                path: path.clone(),
                source,
            })?;
        // SAFETY: flock on a descriptor this function owns.
        let r = unsafe { libc::flock(file.as_raw_fd(), mode) };
        if r != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Ok(None);
            }
            return Err(ImageError::Io { path, source: e });
        }
        Ok(Some(PullLease { _file: file }))
    }

    /// Keeps garbage collection away while blobs are stored that no image
    /// record names yet (a pull or an import).
    pub fn lease(&self) -> Result<PullLease> {
        self.pulls_lock(libc::LOCK_SH)?
            .ok_or_else(|| ImageError::Io {
                path: self.root.join("images").join("pulls"),
                source: std::io::Error::other("could not lock"),
            })
    }

    pub fn list(&self) -> Result<Vec<ImageRecord>> {
        Ok(self.meta.list()?)
    }

    /// The image named by ID, tag or digest; None when there is none.
    pub fn status(&self, reference: &str) -> Result<Option<ImageRecord>> {
        match self.meta.resolve(reference) {
            Ok(r) => Ok(Some(r)),
            Err(MetaError::NotFound(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The image's full config (for verbose status and inspect).
    pub fn config(&self, image: &ImageRecord) -> Result<oci_spec::image::ImageConfiguration> {
        let bytes = self.content.read_blob(&image.id, super::pull::MAX_CONFIG)?;
        serde_json::from_slice(&bytes).map_err(|source| ImageError::Config {
            image: image
                .repo_tags
                .first()
                .cloned()
                .unwrap_or_else(|| image.id.to_string()),
            digest: image.id.clone(),
            source,
        })
    }

    /// Removes an image with all its names, then collects what it alone
    /// used. Refused while a snapshot uses it.
    pub fn remove(&self, reference: &str) -> Result<ImageRecord> {
        let image = self.meta.resolve(reference)?;
        let live: HashSet<String> = self.snapshots.list()?.into_iter().collect();
        let mut users = Vec::new();
        for (snapshot, id) in self.meta.users()? {
            if id != image.id {
                continue;
            }
            if live.contains(&snapshot) {
                users.push(snapshot);
            } else {
                // Its snapshot is gone (a crash between the two removals).
                self.meta.remove_user(&snapshot)?;
            }
        }
        if !users.is_empty() {
            return Err(ImageError::InUse {
                image: reference.to_string(),
                id: image.id,
                users,
            });
        }
        self.meta.delete(&image.id)?;
        self.gc()?;
        Ok(image)
    }

    /// Deletes blobs and layers that no image refers to. Skipped (and says
    /// so) while a pull or import runs.
    pub fn gc(&self) -> Result<GcReport> {
        let Some(_exclusive) = self.pulls_lock(libc::LOCK_EX | libc::LOCK_NB)? else {
            return Ok(GcReport {
                skipped: true,
                ..GcReport::default()
            });
        };
        let _meta = self.meta.lock()?;
        let images = self.meta.list()?;
        let blobs: HashSet<&Digest> = images.iter().flat_map(|i| i.blobs()).collect();
        let layers: HashSet<&Digest> = images
            .iter()
            .flat_map(|i| i.layers.iter().map(|l| &l.diff_id))
            .collect();
        let mut report = GcReport::default();
        for (d, size) in self.content.list()? {
            if !blobs.contains(&d) {
                self.content.delete(&d)?;
                report.blobs += 1;
                report.bytes += size;
            }
        }
        for d in self.layers.list()? {
            if !layers.contains(&d) {
                self.layers.remove(&d)?;
                report.layers += 1;
            }
        }
        Ok(report)
    }

    /// Space the store takes (for the CRI's ImageFsInfo).
    pub fn usage(&self) -> Result<Usage> {
        let content = self.content.usage()?;
        let layers = self.layers.usage()?;
        Ok(Usage {
            bytes: content.bytes + layers.bytes,
            inodes: content.inodes + layers.inodes,
        })
    }

    /// Makes snapshot `id`, a writable overlay of `image`'s layers, and
    /// returns its mounted root.
    pub fn prepare_rootfs(&self, image: &str, id: &str) -> Result<PathBuf> {
        let record = self.meta.resolve(image)?;
        let lowers = record
            .layers
            .iter()
            .map(|l| {
                self.layers
                    .get(&l.diff_id)
                    .ok_or_else(|| ImageError::MissingLayer {
                        image: image.to_string(),
                        diff_id: l.diff_id.clone(),
                    })
            })
            .collect::<Result<Vec<_>>>()?;
        self.meta.add_user(id, &record.id)?;
        match self.snapshots.prepare(id, &lowers) {
            Ok(root) => Ok(root),
            Err(e) => {
                let _ = self.meta.remove_user(id);
                Err(e.into())
            }
        }
    }

    /// Unmounts and deletes snapshot `id`; Ok if it is gone already.
    pub fn remove_rootfs(&self, id: &str) -> Result<()> {
        self.snapshots.remove(id)?;
        self.meta.remove_user(id)?;
        Ok(())
    }
}
