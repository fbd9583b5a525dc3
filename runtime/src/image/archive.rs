//! Image tarballs for air-gapped nodes: `berth image import` reads OCI image
//! layouts and `docker save` archives (as `ctr images import` and k3s's
//! airgap images do), `berth image export` writes an OCI layout that also
//! carries Docker's `manifest.json`, so both `docker load` and `ctr import`
//! take it.
//!
//! An archive is read in one pass: every blob streams straight into the
//! content store (verified against its name when it has one), and only the
//! small JSON index files are kept in memory. Then the images it names are
//! assembled from the store, their layers unpacked, and their records written.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, BufReader, Read, Write};
use std::path::{Component, Path, PathBuf};

use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest};
use serde::{Deserialize, Serialize};

use super::content::ContentError;
use super::digest::{Digest, Digester};
use super::layer::{Compression, LayerError};
use super::meta::{ImageRecord, LayerRef, MetaError, RunConfig};
use super::pull::{MAX_CONFIG, now};
use super::reference::Reference;
use super::registry::Platform;
use super::store::{ImageError, ImageStore};

/// Largest JSON file of an archive (index.json, manifest.json) we read.
const MAX_JSON: u64 = 4 << 20;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";
const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";
const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("{archive}: {source}")]
    Read { archive: PathBuf, source: io::Error },
    #[error("{archive}: writing: {source}")]
    Write { archive: PathBuf, source: io::Error },
    #[error("{archive}: entry {entry:?}: {message}")]
    Entry {
        archive: PathBuf,
        entry: String,
        message: String,
    },
    #[error(
        "{archive}: neither an OCI image layout (index.json) nor a docker save archive (manifest.json)"
    )]
    Format { archive: PathBuf },
    #[error("{archive}: {file} is not valid: {source}")]
    Json {
        archive: PathBuf,
        file: String,
        source: serde_json::Error,
    },
    #[error("{archive}: {message}")]
    Invalid { archive: PathBuf, message: String },
    #[error(transparent)]
    Content(#[from] ContentError),
    #[error(transparent)]
    Layer(#[from] LayerError),
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error(transparent)]
    Store(#[from] ImageError),
}

type Result<T> = std::result::Result<T, ArchiveError>;

/// docker save's `manifest.json`: one entry per image.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// What one pass over an archive found.
#[derive(Default)]
struct Scan {
    /// Every regular file stored as a blob: archive path -> digest, size.
    files: HashMap<String, (Digest, u64)>,
    index: Option<Vec<u8>>,
    docker: Option<Vec<u8>>,
}

impl ImageStore {
    /// Imports every image of an OCI layout or `docker save` tarball.
    pub fn import(&self, archive: &Path) -> Result<Vec<ImageRecord>> {
        let _lease = self.lease()?;
        let file = File::open(archive).map_err(|source| ArchiveError::Read {
            archive: archive.to_owned(),
            source,
        })?;
        let scan = self.scan(archive, BufReader::with_capacity(1 << 20, file))?;
        let platform = Platform::host();
        let mut out = Vec::new();
        if let Some(index) = &scan.index {
            let index: ImageIndex =
                serde_json::from_slice(index).map_err(|source| ArchiveError::Json {
                    archive: archive.to_owned(),
                    file: "index.json".into(),
                    source,
                })?;
            for desc in index.manifests() {
                let names = desc_names(desc.annotations().as_ref());
                let digest =
                    Digest::try_from(desc.digest()).map_err(|e| ArchiveError::Invalid {
                        archive: archive.to_owned(),
                        message: format!("index.json: {e}"),
                    })?;
                let media = desc.media_type().to_string();
                let Some((manifest_digest, media, index_digest)) =
                    self.pick_manifest(archive, &digest, &media, &platform)?
                else {
                    continue;
                };
                out.push(self.assemble(archive, &manifest_digest, &media, index_digest, &names)?);
            }
        } else if let Some(docker) = &scan.docker {
            let entries: Vec<DockerEntry> =
                serde_json::from_slice(docker).map_err(|source| ArchiveError::Json {
                    archive: archive.to_owned(),
                    file: "manifest.json".into(),
                    source,
                })?;
            for e in entries {
                let manifest = self.docker_manifest(archive, &scan, &e)?;
                let names = e.repo_tags.clone().unwrap_or_default();
                out.push(self.assemble(archive, &manifest, DOCKER_MANIFEST, None, &names)?);
            }
        } else {
            return Err(ArchiveError::Format {
                archive: archive.to_owned(),
            });
        }
        Ok(out)
    }

    /// Imports each `*.tar` of `dir` that was not imported before (same path,
    /// size and modification time), in name order. Returns what it imported.
    pub fn preload(&self, dir: &Path) -> Result<Vec<ImageRecord>> {
        let read = |source| ArchiveError::Read {
            archive: dir.to_owned(),
            source,
        };
        let mut tars: Vec<PathBuf> = fs::read_dir(dir)
            .map_err(read)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "tar") && p.is_file())
            .collect();
        tars.sort();
        let marks = self.root().join("images").join("preloaded");
        fs::create_dir_all(&marks).map_err(read)?;
        let mut out = Vec::new();
        for tar in tars {
            let md = fs::metadata(&tar).map_err(read)?;
            let key = {
                use std::os::unix::fs::MetadataExt;
                let mut d = Digester::new();
                d.update(tar.as_os_str().as_encoded_bytes());
                d.update(&md.len().to_le_bytes());
                d.update(&md.mtime().to_le_bytes());
                d.update(&md.mtime_nsec().to_le_bytes());
                d.finish()
            };
            let mark = marks.join(key.hex());
            if mark.exists() {
                tracing::debug!(archive = %tar.display(), "already imported");
                continue;
            }
            let images = self.import(&tar)?;
            tracing::info!(archive = %tar.display(), images = images.len(), "imported");
            super::meta::write_durably(&mark, tar.as_os_str().as_encoded_bytes())?;
            out.extend(images);
        }
        Ok(out)
    }

    fn scan(&self, archive: &Path, reader: impl Read) -> Result<Scan> {
        let entry_err = |entry: &str, message: String| ArchiveError::Entry {
            archive: archive.to_owned(),
            entry: entry.to_string(),
            message,
        };
        let read = |source| ArchiveError::Read {
            archive: archive.to_owned(),
            source,
        };
        let mut scan = Scan::default();
        let mut tar = tar::Archive::new(reader);
        for entry in tar.entries().map_err(read)? {
            let mut entry = entry.map_err(read)?;
            let path = entry.path().map_err(read)?.into_owned();
            let name = normalize(&path).ok_or_else(|| {
                entry_err(&path.to_string_lossy(), "path leaves the archive".into())
            })?;
            if !entry.header().entry_type().is_file() {
                continue;
            }
            let size = entry.size();
            match name.as_str() {
                "index.json" | "manifest.json" => {
                    if size > MAX_JSON {
                        return Err(entry_err(&name, format!("{size} bytes is too large")));
                    }
                    let mut buf = Vec::with_capacity(size as usize);
                    entry.read_to_end(&mut buf).map_err(read)?;
                    if name == "index.json" {
                        scan.index = Some(buf);
                    } else {
                        scan.docker = Some(buf);
                    }
                    continue;
                }
                "oci-layout" | "repositories" => continue,
                _ => {}
            }
            let expected = name
                .strip_prefix("blobs/sha256/")
                .map(|hex| {
                    Digest::from_hex(hex)
                        .map_err(|e| entry_err(&name, format!("bad blob name: {e}")))
                })
                .transpose()?;
            let digest = self
                .content()
                .write_from(&mut entry, expected.as_ref(), Some(size))
                .map_err(|e| entry_err(&name, e.to_string()))?;
            scan.files.insert(name, (digest, size));
        }
        Ok(scan)
    }

    /// Follows an index entry to the manifest for `platform`.
    fn pick_manifest(
        &self,
        archive: &Path,
        digest: &Digest,
        media: &str,
        platform: &Platform,
    ) -> Result<Option<(Digest, String, Option<Digest>)>> {
        match media {
            OCI_MANIFEST | DOCKER_MANIFEST => Ok(Some((digest.clone(), media.to_string(), None))),
            OCI_INDEX | DOCKER_LIST => {
                let bytes = self.content().read_blob(digest, MAX_JSON)?;
                let index: ImageIndex =
                    serde_json::from_slice(&bytes).map_err(|source| ArchiveError::Json {
                        archive: archive.to_owned(),
                        file: digest.to_string(),
                        source,
                    })?;
                for m in index.manifests() {
                    let Ok(d) = Digest::try_from(m.digest()) else {
                        continue;
                    };
                    let fits = m.platform().as_ref().is_none_or(|p| {
                        let c = Platform::new(
                            &p.os().to_string(),
                            &p.architecture().to_string(),
                            p.variant().as_deref(),
                        );
                        platform.rank(&c).is_some()
                    });
                    if fits && self.content().contains(&d) {
                        return Ok(Some((d, m.media_type().to_string(), Some(digest.clone()))));
                    }
                }
                tracing::warn!(index = %digest, "no manifest for this platform in the archive");
                Ok(None)
            }
            other => Err(ArchiveError::Invalid {
                archive: archive.to_owned(),
                message: format!("index entry {digest} has unsupported media type {other:?}"),
            }),
        }
    }

    /// Writes the Docker schema2 manifest that a docker save entry implies.
    fn docker_manifest(&self, archive: &Path, scan: &Scan, e: &DockerEntry) -> Result<Digest> {
        let file = |p: &str| {
            let key = normalize(Path::new(p)).unwrap_or_default();
            scan.files
                .get(&key)
                .cloned()
                .ok_or_else(|| ArchiveError::Invalid {
                    archive: archive.to_owned(),
                    message: format!("manifest.json names {p:?}, which the archive lacks"),
                })
        };
        let (config, config_size) = file(&e.config)?;
        let mut layers = Vec::new();
        for l in &e.layers {
            let (digest, size) = file(l)?;
            let mut head = [0u8; 4];
            let n = self
                .content()
                .open_blob(&digest)?
                .read(&mut head)
                .unwrap_or(0);
            let media = match Compression::detect(&head[..n]) {
                Compression::Gzip => DOCKER_LAYER_GZIP,
                Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
                Compression::None => DOCKER_LAYER,
            };
            layers.push(serde_json::json!({"mediaType": media, "size": size, "digest": digest}));
        }
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": {"mediaType": DOCKER_CONFIG, "size": config_size, "digest": config},
            "layers": layers,
        });
        let bytes = serde_json::to_vec(&manifest).map_err(|source| ArchiveError::Json {
            archive: archive.to_owned(),
            file: "manifest.json".into(),
            source,
        })?;
        Ok(self.content().write_blob(&bytes, None)?)
    }

    /// Builds an image from a manifest in the store: unpacks its layers and
    /// writes its record under `names`.
    fn assemble(
        &self,
        archive: &Path,
        manifest_digest: &Digest,
        media: &str,
        index: Option<Digest>,
        names: &[String],
    ) -> Result<ImageRecord> {
        let invalid = |message: String| ArchiveError::Invalid {
            archive: archive.to_owned(),
            message,
        };
        let manifest_bytes = self.content().read_blob(manifest_digest, MAX_JSON)?;
        let manifest: ImageManifest =
            serde_json::from_slice(&manifest_bytes).map_err(|source| ArchiveError::Json {
                archive: archive.to_owned(),
                file: manifest_digest.to_string(),
                source,
            })?;
        let config_digest = Digest::try_from(manifest.config().digest())
            .map_err(|e| invalid(format!("manifest {manifest_digest}: {e}")))?;
        let config_bytes = self.content().read_blob(&config_digest, MAX_CONFIG)?;
        let config: ImageConfiguration =
            serde_json::from_slice(&config_bytes).map_err(|source| ArchiveError::Json {
                archive: archive.to_owned(),
                file: config_digest.to_string(),
                source,
            })?;
        let diff_ids = config.rootfs().diff_ids();
        if diff_ids.len() != manifest.layers().len() {
            return Err(invalid(format!(
                "manifest {manifest_digest} lists {} layers but its config names {} diff IDs",
                manifest.layers().len(),
                diff_ids.len()
            )));
        }
        let mut layers = Vec::new();
        for (desc, diff) in manifest.layers().iter().zip(diff_ids) {
            let blob = Digest::try_from(desc.digest())
                .map_err(|e| invalid(format!("manifest {manifest_digest}: {e}")))?;
            let diff_id: Digest = diff
                .parse()
                .map_err(|e| invalid(format!("config {config_digest}: {e}")))?;
            let media_type = desc.media_type().to_string();
            if self.layers().get(&diff_id).is_none() {
                let compression = Compression::from_media_type(&media_type)?;
                let f = self.content().open_blob(&blob)?;
                self.layers().unpack(
                    BufReader::with_capacity(1 << 20, f),
                    compression,
                    &diff_id,
                )?;
            }
            layers.push(LayerRef {
                blob,
                diff_id,
                size: desc.size(),
                media_type,
            });
        }
        let mut repo_tags = Vec::new();
        let mut repo_digests = Vec::new();
        for n in names {
            match n.parse::<Reference>() {
                Ok(r) => {
                    repo_tags.extend(r.repo_tag());
                    repo_digests.push(r.repo_digest(index.as_ref().unwrap_or(manifest_digest)));
                }
                Err(e) => tracing::warn!(name = %n, error = %e, "ignoring an image name"),
            }
        }
        let size = manifest_bytes.len() as u64
            + config_bytes.len() as u64
            + layers.iter().map(|l| l.size).sum::<u64>();
        let record = ImageRecord {
            id: config_digest,
            manifest: manifest_digest.clone(),
            manifest_media_type: media.to_string(),
            index,
            repo_tags,
            repo_digests,
            layers,
            size,
            os: config.os().to_string(),
            architecture: config.architecture().to_string(),
            run: RunConfig::from_config(&config),
            added: now(),
        };
        Ok(self.meta().put(record)?)
    }

    /// Writes `images` (names or IDs) to `out` as an OCI image layout tarball
    /// with Docker's manifest.json beside its index.json.
    pub fn export(&self, images: &[String], out: &Path) -> Result<()> {
        let write = |source| ArchiveError::Write {
            archive: out.to_owned(),
            source,
        };
        let mut records = Vec::new();
        for i in images {
            records.push(self.meta().resolve(i)?);
        }
        let tmp = out.with_extension(format!("tmp{}", std::process::id()));
        let result = (|| -> Result<()> {
            let file = File::create(&tmp).map_err(write)?;
            let mut tar = tar::Builder::new(io::BufWriter::with_capacity(1 << 20, file));
            let mut manifests = Vec::new();
            let mut docker = Vec::new();
            let mut written = std::collections::HashSet::new();
            for r in &records {
                for blob in [&r.manifest, &r.id]
                    .into_iter()
                    .chain(r.layers.iter().map(|l| &l.blob))
                {
                    if written.insert(blob.clone()) {
                        let f = self.content().open_blob(blob)?;
                        let len = f.metadata().map_err(write)?.len();
                        append(&mut tar, &format!("blobs/sha256/{}", blob.hex()), len, f)
                            .map_err(write)?;
                    }
                }
                let manifest_size = self
                    .content()
                    .open_blob(&r.manifest)?
                    .metadata()
                    .map_err(write)?
                    .len();
                let media = if r.manifest_media_type == DOCKER_MANIFEST {
                    DOCKER_MANIFEST
                } else {
                    OCI_MANIFEST
                };
                let names = if r.repo_tags.is_empty() {
                    vec![None]
                } else {
                    r.repo_tags.iter().map(Some).collect()
                };
                for name in names {
                    let mut desc = serde_json::json!({
                        "mediaType": media,
                        "digest": r.manifest,
                        "size": manifest_size,
                        "platform": {"os": r.os, "architecture": r.architecture},
                    });
                    if let Some(n) = name {
                        let tag = n.rsplit_once(':').map(|(_, t)| t).unwrap_or("latest");
                        desc["annotations"] = serde_json::json!({
                            ANNOTATION_CONTAINERD_NAME: n,
                            ANNOTATION_REF_NAME: tag,
                        });
                    }
                    manifests.push(desc);
                }
                docker.push(DockerEntry {
                    config: format!("blobs/sha256/{}", r.id.hex()),
                    repo_tags: Some(r.repo_tags.clone()),
                    layers: r
                        .layers
                        .iter()
                        .map(|l| format!("blobs/sha256/{}", l.blob.hex()))
                        .collect(),
                });
            }
            let index = serde_json::json!({
                "schemaVersion": 2,
                "mediaType": OCI_INDEX,
                "manifests": manifests,
            });
            let json = |v: serde_json::Result<Vec<u8>>| v.map_err(|e| write(io::Error::other(e)));
            for (name, bytes) in [
                ("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec()),
                ("index.json", json(serde_json::to_vec(&index))?),
                ("manifest.json", json(serde_json::to_vec(&docker))?),
            ] {
                append(&mut tar, name, bytes.len() as u64, bytes.as_slice()).map_err(write)?;
            }
            let mut w = tar.into_inner().map_err(write)?;
            w.flush().map_err(write)?;
            w.into_inner()
                .map_err(|e| write(e.into_error()))?
                .sync_all()
                .map_err(write)?;
            fs::rename(&tmp, out).map_err(write)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }
}

fn append(
    tar: &mut tar::Builder<impl Write>,
    name: &str,
    len: u64,
    data: impl Read,
) -> io::Result<()> {
    let mut h = tar::Header::new_ustar();
    h.set_size(len);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut h, name, data)
}

/// An archive path as a relative `a/b/c`, or None when it leaves the archive.
fn normalize(p: &Path) -> Option<String> {
    let mut parts = Vec::new();
    for c in p.components() {
        match c {
            Component::Normal(s) => parts.push(s.to_str()?.to_string()),
            Component::CurDir => {}
            Component::RootDir | Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(parts.join("/"))
}

/// The image names an index entry carries.
fn desc_names(annotations: Option<&HashMap<String, String>>) -> Vec<String> {
    let Some(a) = annotations else {
        return Vec::new();
    };
    if let Some(n) = a.get(ANNOTATION_CONTAINERD_NAME) {
        return vec![n.clone()];
    }
    // A bare tag ("latest") names no repository; a full reference does.
    match a.get(ANNOTATION_REF_NAME) {
        Some(n) if n.contains('/') || n.contains(':') || n.contains('@') => vec![n.clone()],
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_refuses_escapes() {
        assert_eq!(
            normalize(Path::new("./blobs/sha256/ab")).as_deref(),
            Some("blobs/sha256/ab")
        );
        assert_eq!(normalize(Path::new("../x")), None);
        assert_eq!(normalize(Path::new("/etc/x")), None);
    }

    #[test]
    fn names_from_annotations() {
        let mut a = HashMap::new();
        a.insert(ANNOTATION_REF_NAME.to_string(), "latest".to_string());
        assert!(desc_names(Some(&a)).is_empty());
        a.insert(
            ANNOTATION_REF_NAME.to_string(),
            "example.com/x:1".to_string(),
        );
        assert_eq!(desc_names(Some(&a)), vec!["example.com/x:1".to_string()]);
        a.insert(
            ANNOTATION_CONTAINERD_NAME.to_string(),
            "docker.io/library/busybox:latest".to_string(),
        );
        assert_eq!(
            desc_names(Some(&a)),
            vec!["docker.io/library/busybox:latest".to_string()]
        );
    }
}
