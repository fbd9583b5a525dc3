//! Image metadata: which images exist, under which names, what they are made
//! of, and which snapshots use them.
//!
//! One JSON file per image (`<root>/images/<id hex>.json`), written whole to a
//! temporary file and renamed, so a reader never sees half a record and a
//! `kill -9` at any point leaves either the old or the new one. Changes take
//! an exclusive flock on `<root>/images/lock`, because a tag moves between
//! images (a re-pull of `busybox:latest`) and both files change together; the
//! daemon and `berth image` on the same node may change the store at once.
//! (An embedded database such as redb admits one process at a time, which
//! would lock the command line out while the daemon runs.)
//!
//! A snapshot's use of an image is a file `<root>/images/users/<snapshot id>`
//! naming the image, written before the snapshot is made and removed after it
//! is gone, so an image in use is never removed.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::digest::Digest;
use super::reference::Reference;

#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("image metadata {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("image metadata {path} is corrupt: {source}")]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("image {0:?} not found")]
    NotFound(String),
    #[error("image reference {reference:?} is ambiguous: it matches {count} images")]
    Ambiguous { reference: String, count: usize },
    #[error("snapshot id {0:?} is not a valid name")]
    BadUser(String),
}

type Result<T> = std::result::Result<T, MetaError>;

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> MetaError + '_ {
    move |source| MetaError::Io {
        path: path.to_owned(),
        source,
    }
}

/// One layer of an image: its blob as the registry has it, and its
/// uncompressed digest, which names its unpacked directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRef {
    pub blob: Digest,
    pub diff_id: Digest,
    pub size: u64,
    pub media_type: String,
}

/// What the CRI layer needs from the image config, kept here so that status
/// and container creation do not re-read and re-parse the config blob.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunConfig {
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub entrypoint: Vec<String>,
    #[serde(default)]
    pub cmd: Vec<String>,
    #[serde(default)]
    pub working_dir: Option<String>,
    #[serde(default)]
    pub exposed_ports: Vec<String>,
    #[serde(default)]
    pub volumes: Vec<String>,
    #[serde(default)]
    pub stop_signal: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

impl RunConfig {
    /// The run-relevant part of an OCI image config.
    pub fn from_config(c: &oci_spec::image::ImageConfiguration) -> Self {
        let Some(cfg) = c.config() else {
            return Self::default();
        };
        let nonempty = |s: &Option<String>| s.clone().filter(|s| !s.is_empty());
        Self {
            user: nonempty(cfg.user()),
            env: cfg.env().clone().unwrap_or_default(),
            entrypoint: cfg.entrypoint().clone().unwrap_or_default(),
            cmd: cfg.cmd().clone().unwrap_or_default(),
            working_dir: nonempty(cfg.working_dir()),
            exposed_ports: cfg.exposed_ports().clone().unwrap_or_default(),
            volumes: cfg.volumes().clone().unwrap_or_default(),
            stop_signal: nonempty(cfg.stop_signal()),
            labels: cfg
                .labels()
                .clone()
                .unwrap_or_default()
                .into_iter()
                .collect(),
        }
    }
}

/// An image as berth knows it. Its ID is the digest of its config, as in
/// Docker, containerd and the CRI.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    pub id: Digest,
    pub manifest: Digest,
    pub manifest_media_type: String,
    /// The index (manifest list) the manifest was chosen from, if any.
    #[serde(default)]
    pub index: Option<Digest>,
    /// `docker.io/library/busybox:latest`
    #[serde(default)]
    pub repo_tags: Vec<String>,
    /// `docker.io/library/busybox@sha256:…`
    #[serde(default)]
    pub repo_digests: Vec<String>,
    pub layers: Vec<LayerRef>,
    /// Bytes of the image's blobs (manifest, config, layers as stored).
    pub size: u64,
    pub os: String,
    pub architecture: String,
    #[serde(default)]
    pub run: RunConfig,
    /// Unix seconds of the pull or import.
    pub added: u64,
}

impl ImageRecord {
    /// Every blob the image keeps alive.
    pub fn blobs(&self) -> impl Iterator<Item = &Digest> {
        [&self.id, &self.manifest]
            .into_iter()
            .chain(self.index.iter())
            .chain(self.layers.iter().map(|l| &l.blob))
    }
}

#[derive(Debug, Clone)]
pub struct MetaStore {
    dir: PathBuf,
}

/// Holds the store's lock until dropped.
pub struct Locked {
    _file: File,
}

impl MetaStore {
    pub fn open(root: &Path) -> Result<Self> {
        let dir = root.join("images");
        let users = dir.join("users");
        fs::create_dir_all(&users).map_err(io_err(&users))?;
        Ok(Self { dir })
    }

    /// Takes the store's exclusive lock (blocking).
    pub fn lock(&self) -> Result<Locked> {
        let path = self.dir.join("lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        // SAFETY: flock on a descriptor this function owns.
        let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        if r != 0 {
            return Err(MetaError::Io {
                path,
                source: io::Error::last_os_error(),
            });
        }
        Ok(Locked { _file: file })
    }

    fn record_path(&self, id: &Digest) -> PathBuf {
        self.dir.join(format!("{}.json", id.hex()))
    }

    pub fn get(&self, id: &Digest) -> Result<Option<ImageRecord>> {
        let path = self.record_path(id);
        match fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|source| MetaError::Corrupt { path, source }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(MetaError::Io { path, source: e }),
        }
    }

    /// Every image, sorted by ID.
    pub fn list(&self) -> Result<Vec<ImageRecord>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io_err(&self.dir))? {
            let entry = entry.map_err(io_err(&self.dir))?;
            let name = entry.file_name();
            let Some(hex) = name.to_str().and_then(|n| n.strip_suffix(".json")) else {
                continue;
            };
            let Ok(id) = Digest::from_hex(hex) else {
                continue;
            };
            // Removed between readdir and read: not an error.
            if let Some(r) = self.get(&id)? {
                out.push(r);
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// Adds or updates an image. Its names move to it from any other image,
    /// and the names it had before are kept.
    pub fn put(&self, mut record: ImageRecord) -> Result<ImageRecord> {
        let _l = self.lock()?;
        if let Some(old) = self.get(&record.id)? {
            for t in old.repo_tags {
                if !record.repo_tags.contains(&t) {
                    record.repo_tags.push(t);
                }
            }
            for d in old.repo_digests {
                if !record.repo_digests.contains(&d) {
                    record.repo_digests.push(d);
                }
            }
        }
        record.repo_tags.sort();
        record.repo_digests.sort();
        for mut other in self.list()? {
            if other.id == record.id {
                continue;
            }
            let before = other.repo_tags.len();
            other.repo_tags.retain(|t| !record.repo_tags.contains(t));
            if other.repo_tags.len() != before {
                self.write(&other)?;
            }
        }
        self.write(&record)?;
        Ok(record)
    }

    fn write(&self, record: &ImageRecord) -> Result<()> {
        let path = self.record_path(&record.id);
        let bytes = serde_json::to_vec_pretty(record).map_err(|source| MetaError::Corrupt {
            path: path.clone(),
            source,
        })?;
        write_durably(&path, &bytes)
    }

    /// Deletes an image's record (not its blobs or layers: see garbage collection).
    pub fn delete(&self, id: &Digest) -> Result<()> {
        let _l = self.lock()?;
        let path = self.record_path(id);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(MetaError::Io { path, source: e }),
        }
    }

    /// Finds an image by ID (`sha256:…`, or a unique hex prefix of at least
    /// 12 digits), by name (`busybox`, `docker.io/library/busybox:1.36`), or by
    /// repo digest (`busybox@sha256:…`).
    pub fn resolve(&self, reference: &str) -> Result<ImageRecord> {
        let images = self.list()?;
        let not_found = || MetaError::NotFound(reference.to_string());
        if let Ok(id) = reference.parse::<Digest>() {
            return images
                .into_iter()
                .find(|i| i.id == id)
                .ok_or_else(not_found);
        }
        let hex = reference.strip_prefix("sha256:").unwrap_or(reference);
        if hex.len() >= 12 && hex.len() < 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            let hits: Vec<_> = images
                .iter()
                .filter(|i| i.id.hex().starts_with(hex))
                .collect();
            match hits.len() {
                0 => {}
                1 => return Ok(hits[0].clone()),
                count => {
                    return Err(MetaError::Ambiguous {
                        reference: reference.to_string(),
                        count,
                    });
                }
            }
        }
        let Ok(r) = reference.parse::<Reference>() else {
            return Err(not_found());
        };
        let found = match &r.digest {
            Some(d) => {
                let want = r.repo_digest(d);
                images.into_iter().find(|i| i.repo_digests.contains(&want))
            }
            None => r
                .repo_tag()
                .and_then(|want| images.into_iter().find(|i| i.repo_tags.contains(&want))),
        };
        found.ok_or_else(not_found)
    }

    fn user_path(&self, snapshot: &str) -> Result<PathBuf> {
        crate::id::validate(snapshot).map_err(|_| MetaError::BadUser(snapshot.to_string()))?;
        Ok(self.dir.join("users").join(snapshot))
    }

    /// Records that `snapshot` is made from image `id`.
    ///
    /// Renamed into place (a reader sees all of it or nothing) but not
    /// synced: an fsync here was a third of a container's creation on a busy
    /// disk, and it protected nothing the rest does not lose anyway. Only a
    /// power cut loses the file, and then the container's own record (never
    /// synced) and every container with it are gone too; CRI never starts an
    /// exited container again, so the image is at most removed early, while
    /// no container can run on it.
    pub fn add_user(&self, snapshot: &str, id: &Digest) -> Result<()> {
        let path = self.user_path(snapshot)?;
        write_replacing(&path, id.to_string().as_bytes(), false)
    }

    pub fn remove_user(&self, snapshot: &str) -> Result<()> {
        let path = self.user_path(snapshot)?;
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(MetaError::Io { path, source: e }),
        }
    }

    /// Snapshot IDs and the image each uses.
    pub fn users(&self) -> Result<Vec<(String, Digest)>> {
        let dir = self.dir.join("users");
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_err(&dir))? {
            let entry = entry.map_err(io_err(&dir))?;
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if name.ends_with(".tmp") {
                continue;
            }
            let Ok(text) = fs::read_to_string(entry.path()) else {
                continue;
            };
            if let Ok(id) = text.trim().parse::<Digest>() {
                out.push((name, id));
            }
        }
        out.sort();
        Ok(out)
    }
}

/// Writes to a temporary file beside `path`, syncs it and renames it over
/// `path`: after a crash the file is the old or the new content, whole.
pub(crate) fn write_durably(path: &Path, bytes: &[u8]) -> Result<()> {
    write_replacing(path, bytes, true)
}

/// Writes to a temporary file beside `path` and renames it over `path`
/// (syncing it first when `sync`): a reader sees the old or the new
/// content, whole.
fn write_replacing(path: &Path, bytes: &[u8], sync: bool) -> Result<()> {
    let tmp = path.with_extension(format!("{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        if sync {
            f.sync_data()?;
        }
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(io_err(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(config: &[u8], tags: &[&str]) -> ImageRecord {
        ImageRecord {
            id: Digest::of(config),
            manifest: Digest::of(b"manifest"),
            manifest_media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            index: None,
            repo_tags: tags.iter().map(|t| t.to_string()).collect(),
            repo_digests: vec![format!(
                "docker.io/library/busybox@{}",
                Digest::of(b"manifest")
            )],
            layers: vec![LayerRef {
                blob: Digest::of(b"blob"),
                diff_id: Digest::of(b"tar"),
                size: 4,
                media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            }],
            size: 10,
            os: "linux".into(),
            architecture: "amd64".into(),
            run: RunConfig::default(),
            added: 0,
        }
    }

    #[test]
    fn put_get_list_delete() {
        let d = tempfile::tempdir().unwrap();
        let s = MetaStore::open(d.path()).unwrap();
        let r = s
            .put(record(b"a", &["docker.io/library/busybox:latest"]))
            .unwrap();
        assert_eq!(s.get(&r.id).unwrap().unwrap(), r);
        assert_eq!(s.list().unwrap(), vec![r.clone()]);
        s.delete(&r.id).unwrap();
        assert!(s.get(&r.id).unwrap().is_none());
        assert!(s.list().unwrap().is_empty());
    }

    #[test]
    fn a_tag_moves_to_the_newer_image() {
        let d = tempfile::tempdir().unwrap();
        let s = MetaStore::open(d.path()).unwrap();
        let old = s
            .put(record(
                b"old",
                &[
                    "docker.io/library/busybox:latest",
                    "docker.io/library/busybox:1",
                ],
            ))
            .unwrap();
        let new = s
            .put(record(b"new", &["docker.io/library/busybox:latest"]))
            .unwrap();
        assert_eq!(
            s.get(&old.id).unwrap().unwrap().repo_tags,
            vec!["docker.io/library/busybox:1".to_string()]
        );
        assert_eq!(s.resolve("busybox").unwrap().id, new.id);
        assert_eq!(s.resolve("busybox:1").unwrap().id, old.id);
    }

    #[test]
    fn resolve_by_id_prefix_and_digest() {
        let d = tempfile::tempdir().unwrap();
        let s = MetaStore::open(d.path()).unwrap();
        let r = s
            .put(record(b"x", &["docker.io/library/x:latest"]))
            .unwrap();
        assert_eq!(s.resolve(&r.id.to_string()).unwrap().id, r.id);
        assert_eq!(s.resolve(&r.id.hex()[..12]).unwrap().id, r.id);
        let by_digest = format!("busybox@{}", Digest::of(b"manifest"));
        assert_eq!(s.resolve(&by_digest).unwrap().id, r.id);
        assert!(matches!(
            s.resolve("nothing:here"),
            Err(MetaError::NotFound(_))
        ));
    }

    #[test]
    fn users_are_recorded_and_removed() {
        let d = tempfile::tempdir().unwrap();
        let s = MetaStore::open(d.path()).unwrap();
        let id = Digest::of(b"x");
        s.add_user("c1", &id).unwrap();
        assert_eq!(s.users().unwrap(), vec![("c1".to_string(), id)]);
        s.remove_user("c1").unwrap();
        assert!(s.users().unwrap().is_empty());
        assert!(s.add_user("../x", &Digest::of(b"x")).is_err());
    }

    #[test]
    fn a_corrupt_record_is_named() {
        let d = tempfile::tempdir().unwrap();
        let s = MetaStore::open(d.path()).unwrap();
        let id = Digest::of(b"x");
        fs::write(
            d.path().join("images").join(format!("{}.json", id.hex())),
            b"{",
        )
        .unwrap();
        let e = s.get(&id).unwrap_err().to_string();
        assert!(e.contains("corrupt"), "{e}");
    }
}
