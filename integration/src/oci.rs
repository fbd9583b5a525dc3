//! OCI and Docker schema2 images built in memory, for tests.
//!
//! - [`LayerBuilder`]: a layer from a list of [`Entry`]s (files, dirs,
//!   symlinks, hard links, devices, whiteouts, opaque dirs, modes, owners,
//!   times, xattrs) or a directory on disk, compressed with gzip, zstd or
//!   not at all; [`Layer::from_tar`] takes hand-made tar bytes.
//! - [`Image`]: image config ([`ImageConfig`]), layers and manifest, in OCI
//!   or Docker media types ([`Format`]); [`Index`]: a multi-platform index
//!   (OCI image index or Docker manifest list).
//! - Outputs: an OCI image layout directory or tarball
//!   ([`write_oci_layout`], [`write_oci_archive`]) and a `docker save`
//!   tarball ([`write_docker_archive`]); pushing is
//!   [`crate::registry::Client::push`].
//! - Bad input: [`evil_layer`] (entries that point out of the layer),
//!   [`truncated_tar_layer`], [`huge_manifest`].
//!
//! Everything is deterministic (fixed times, sorted maps), so the same
//! content gives the same digests in every test process.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::image::{Entry, TarWriter, hex, oci_arch, read_tree, sha256_hex};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// Uncompressed Docker layers: not in Docker's spec, but containerd and the
/// registry accept it.
pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";
/// The annotations an OCI layout's index.json names images with.
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
pub const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";

/// `sha256:<hex>` of `data`.
pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(data))
}

/// Bytes with their media type and digest.
#[derive(Clone)]
pub struct Blob {
    pub media_type: String,
    pub data: Arc<Vec<u8>>,
    pub digest: String,
}

impl fmt::Debug for Blob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Blob({} {} {} bytes)",
            self.media_type,
            self.digest,
            self.data.len()
        )
    }
}

impl Blob {
    pub fn new(media_type: &str, data: Vec<u8>) -> Blob {
        Blob {
            media_type: media_type.to_string(),
            digest: sha256_digest(&data),
            data: Arc::new(data),
        }
    }

    /// A blob whose bytes are already shared (a layer's).
    fn shared(media_type: &str, data: Arc<Vec<u8>>, digest: &str) -> Blob {
        Blob {
            media_type: media_type.to_string(),
            data,
            digest: digest.to_string(),
        }
    }

    pub fn size(&self) -> u64 {
        self.data.len() as u64
    }

    /// The hex part of the digest.
    pub fn hex(&self) -> &str {
        self.digest.strip_prefix("sha256:").unwrap_or(&self.digest)
    }

    /// `{mediaType, digest, size}`.
    pub fn descriptor(&self) -> Value {
        json!({ "mediaType": self.media_type, "digest": self.digest, "size": self.size() })
    }
}

/// How a layer's tar is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

/// Which family of media types an image uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Oci,
    Docker,
}

impl Format {
    pub fn manifest_type(self) -> &'static str {
        match self {
            Format::Oci => OCI_MANIFEST,
            Format::Docker => DOCKER_MANIFEST,
        }
    }

    pub fn index_type(self) -> &'static str {
        match self {
            Format::Oci => OCI_INDEX,
            Format::Docker => DOCKER_LIST,
        }
    }

    pub fn config_type(self) -> &'static str {
        match self {
            Format::Oci => OCI_CONFIG,
            Format::Docker => DOCKER_CONFIG,
        }
    }
}

/// A writer that hashes what goes through it (the uncompressed tar, for the
/// layer's diff ID).
struct Hashing<W> {
    inner: W,
    hash: Sha256,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

enum Encoder {
    None(Vec<u8>),
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
    Zstd(zstd::Encoder<'static, Vec<u8>>),
}

impl Encoder {
    fn new(c: Compression, level: Option<u32>) -> Result<Encoder> {
        Ok(match c {
            Compression::None => Encoder::None(Vec::new()),
            Compression::Gzip => Encoder::Gzip(flate2::write::GzEncoder::new(
                Vec::new(),
                flate2::Compression::new(level.unwrap_or(6)),
            )),
            Compression::Zstd => Encoder::Zstd(zstd::Encoder::new(
                Vec::new(),
                level.map_or(3, |l| l as i32),
            )?),
        })
    }

    fn finish(self) -> Result<Vec<u8>> {
        Ok(match self {
            Encoder::None(v) => v,
            Encoder::Gzip(e) => e.finish()?,
            Encoder::Zstd(e) => e.finish()?,
        })
    }
}

impl Write for Encoder {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Encoder::None(v) => v.write(buf),
            Encoder::Gzip(e) => e.write(buf),
            Encoder::Zstd(e) => e.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Encoder::None(v) => v.flush(),
            Encoder::Gzip(e) => e.flush(),
            Encoder::Zstd(e) => e.flush(),
        }
    }
}

/// The entries of one layer, in archive order.
#[derive(Clone, Debug, Default)]
pub struct LayerBuilder {
    entries: Vec<Entry>,
    level: Option<u32>,
}

impl LayerBuilder {
    pub fn new() -> LayerBuilder {
        LayerBuilder::default()
    }

    /// Any entry, with all its metadata (see [`Entry`]).
    pub fn entry(mut self, e: Entry) -> LayerBuilder {
        self.entries.push(e);
        self
    }

    /// A directory, mode 0755, owned by root.
    pub fn dir(self, path: &str) -> LayerBuilder {
        self.entry(Entry::dir(path))
    }

    /// A regular file, mode 0644, owned by root.
    pub fn file(self, path: &str, data: impl Into<Vec<u8>>) -> LayerBuilder {
        self.entry(Entry::file(path, data))
    }

    /// An executable file, mode 0755.
    pub fn exec(self, path: &str, data: impl Into<Vec<u8>>) -> LayerBuilder {
        self.entry(Entry::file(path, data).mode(0o755))
    }

    pub fn symlink(self, path: &str, target: &str) -> LayerBuilder {
        self.entry(Entry::symlink(path, target))
    }

    /// A hard link to `target`, an earlier entry of this layer.
    pub fn hardlink(self, path: &str, target: &str) -> LayerBuilder {
        self.entry(Entry::hardlink(path, target))
    }

    /// Deletes `path` of the layers below: `dir/.wh.name`.
    pub fn whiteout(self, path: &str) -> LayerBuilder {
        let (dir, name) = match path.rsplit_once('/') {
            Some((d, n)) => (format!("{d}/"), n),
            None => (String::new(), path),
        };
        self.entry(Entry::file(&format!("{dir}.wh.{name}"), Vec::new()))
    }

    /// Hides what the layers below have in `dir`: `dir/.wh..wh..opq`.
    pub fn opaque(self, dir: &str) -> LayerBuilder {
        self.entry(Entry::file(&format!("{dir}/.wh..wh..opq"), Vec::new()))
    }

    /// The tree at `dir` on disk, named below `prefix` ("" for the root).
    pub fn tree(mut self, dir: &Path, prefix: &str) -> Result<LayerBuilder> {
        self.entries.extend(read_tree(dir, prefix)?);
        Ok(self)
    }

    /// The compression level (gzip 0-9, zstd 1-22); defaults 6 and 3.
    pub fn level(mut self, level: u32) -> LayerBuilder {
        self.level = Some(level);
        self
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Writes the tar, compressed as asked.
    pub fn build(&self, compression: Compression) -> Result<Layer> {
        let mut tar = TarWriter::to_writer(Hashing {
            inner: Encoder::new(compression, self.level)?,
            hash: Sha256::new(),
        });
        for e in &self.entries {
            tar.append_entry(e)
                .with_context(|| format!("layer entry {}", e.path))?;
        }
        let hashing = tar.into_inner()?;
        let diff_id = format!("sha256:{}", hex(&hashing.hash.finalize()));
        let data = hashing.inner.finish()?;
        Ok(Layer {
            digest: sha256_digest(&data),
            data: Arc::new(data),
            diff_id,
            compression,
            media_type: None,
        })
    }
}

/// A layer blob: the (compressed) tar and its digests.
#[derive(Clone)]
pub struct Layer {
    pub data: Arc<Vec<u8>>,
    /// Digest of `data`.
    pub digest: String,
    /// Digest of the uncompressed tar (what the image config lists).
    pub diff_id: String,
    pub compression: Compression,
    /// A media type to use instead of the one the format and compression
    /// give (an unknown type, for bad-input tests).
    pub media_type: Option<String>,
}

impl fmt::Debug for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Layer({} {:?} {} bytes)",
            self.digest,
            self.compression,
            self.data.len()
        )
    }
}

impl Layer {
    /// A layer from tar bytes made by hand (possibly broken on purpose).
    pub fn from_tar(tar: &[u8], compression: Compression) -> Result<Layer> {
        let mut enc = Encoder::new(compression, None)?;
        enc.write_all(tar)?;
        let data = enc.finish()?;
        Ok(Layer {
            digest: sha256_digest(&data),
            data: Arc::new(data),
            diff_id: sha256_digest(tar),
            compression,
            media_type: None,
        })
    }

    /// The same layer announced with another media type.
    pub fn with_media_type(mut self, media_type: &str) -> Layer {
        self.media_type = Some(media_type.to_string());
        self
    }

    pub fn size(&self) -> u64 {
        self.data.len() as u64
    }

    /// The media type in a manifest of `format`.
    pub fn media_type(&self, format: Format) -> Result<String> {
        if let Some(mt) = &self.media_type {
            return Ok(mt.clone());
        }
        Ok(match (format, self.compression) {
            (Format::Oci, Compression::None) => OCI_LAYER,
            (Format::Oci, Compression::Gzip) => OCI_LAYER_GZIP,
            (Format::Oci, Compression::Zstd) => OCI_LAYER_ZSTD,
            (Format::Docker, Compression::None) => DOCKER_LAYER,
            (Format::Docker, Compression::Gzip) => DOCKER_LAYER_GZIP,
            (Format::Docker, Compression::Zstd) => {
                bail!("Docker schema2 has no zstd layer media type: use Format::Oci")
            }
        }
        .to_string())
    }

    /// The uncompressed tar.
    pub fn tar(&self) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        match self.compression {
            Compression::None => out.extend_from_slice(&self.data),
            Compression::Gzip => {
                flate2::read::GzDecoder::new(&self.data[..]).read_to_end(&mut out)?;
            }
            Compression::Zstd => {
                zstd::Decoder::new(&self.data[..])?.read_to_end(&mut out)?;
            }
        }
        Ok(out)
    }
}

/// An OS/architecture/variant triple.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("architecture".into(), json!(self.architecture));
        m.insert("os".into(), json!(self.os));
        if let Some(v) = &self.variant {
            m.insert("variant".into(), json!(v));
        }
        Value::Object(m)
    }
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

/// What goes into an image config (the `config` object and the platform).
/// Unset fields are left out of the JSON, as Docker does.
#[derive(Clone, Debug)]
pub struct ImageConfig {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
    pub user: Option<String>,
    pub env: Vec<String>,
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub working_dir: Option<String>,
    /// "8080/tcp", "53/udp".
    pub exposed_ports: Vec<String>,
    pub volumes: Vec<String>,
    pub stop_signal: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// What each layer's history entry says created it.
    pub history: Vec<String>,
}

impl Default for ImageConfig {
    /// linux on this machine's architecture, nothing else set.
    fn default() -> ImageConfig {
        ImageConfig {
            os: "linux".into(),
            architecture: oci_arch().into(),
            variant: None,
            user: None,
            env: Vec::new(),
            entrypoint: None,
            cmd: None,
            working_dir: None,
            exposed_ports: Vec::new(),
            volumes: Vec::new(),
            stop_signal: None,
            labels: BTreeMap::new(),
            history: Vec::new(),
        }
    }
}

/// [`crate::image::DEFAULT_MTIME`] as RFC 3339.
const CREATED: &str = "2020-09-13T12:26:40Z";

impl ImageConfig {
    pub fn platform(&self) -> Platform {
        Platform {
            os: self.os.clone(),
            architecture: self.architecture.clone(),
            variant: self.variant.clone(),
        }
    }

    /// The config JSON for layers with these diff IDs.
    pub fn to_json(&self, diff_ids: &[&str]) -> Value {
        let mut c = Map::new();
        let mut put = |k: &str, v: Value| {
            c.insert(k.into(), v);
        };
        if let Some(u) = &self.user {
            put("User", json!(u));
        }
        if !self.exposed_ports.is_empty() {
            let ports: Map<String, Value> = self
                .exposed_ports
                .iter()
                .map(|p| (p.clone(), json!({})))
                .collect();
            put("ExposedPorts", Value::Object(ports));
        }
        if !self.env.is_empty() {
            put("Env", json!(self.env));
        }
        if let Some(e) = &self.entrypoint {
            put("Entrypoint", json!(e));
        }
        if let Some(cmd) = &self.cmd {
            put("Cmd", json!(cmd));
        }
        if !self.volumes.is_empty() {
            let vols: Map<String, Value> = self
                .volumes
                .iter()
                .map(|v| (v.clone(), json!({})))
                .collect();
            put("Volumes", Value::Object(vols));
        }
        if let Some(w) = &self.working_dir {
            put("WorkingDir", json!(w));
        }
        if !self.labels.is_empty() {
            put("Labels", json!(self.labels));
        }
        if let Some(s) = &self.stop_signal {
            put("StopSignal", json!(s));
        }
        let history: Vec<Value> = (0..diff_ids.len())
            .map(|i| {
                let by = self
                    .history
                    .get(i)
                    .cloned()
                    .unwrap_or_else(|| format!("berth-integration layer {i}"));
                json!({ "created": CREATED, "created_by": by })
            })
            .collect();
        let mut m = Map::new();
        m.insert("created".into(), json!(CREATED));
        m.insert("architecture".into(), json!(self.architecture));
        if let Some(v) = &self.variant {
            m.insert("variant".into(), json!(v));
        }
        m.insert("os".into(), json!(self.os));
        m.insert("config".into(), Value::Object(c));
        m.insert(
            "rootfs".into(),
            json!({ "type": "layers", "diff_ids": diff_ids }),
        );
        m.insert("history".into(), Value::Array(history));
        Value::Object(m)
    }
}

/// Something with a top manifest that can be pushed or written to a layout.
pub trait Artifact {
    /// The top manifest (an image manifest or an index).
    fn manifest(&self) -> &Blob;
    /// Every other blob, in push order: for an index, each image's blobs
    /// and then its manifest.
    fn blobs(&self) -> Vec<&Blob>;
    /// The platform of a single-platform image.
    fn platform(&self) -> Option<Platform>;

    fn digest(&self) -> &str {
        &self.manifest().digest
    }
}

/// A single-platform image.
#[derive(Clone, Debug)]
pub struct Image {
    pub format: Format,
    pub config: Blob,
    pub layers: Vec<Layer>,
    /// The layers as blobs with the media types of the manifest.
    pub layer_blobs: Vec<Blob>,
    pub manifest: Blob,
    pub image_config: ImageConfig,
}

impl Image {
    pub fn new(format: Format, config: &ImageConfig, layers: Vec<Layer>) -> Result<Image> {
        Image::annotated(format, config, layers, &BTreeMap::new())
    }

    /// An image whose manifest carries `annotations` (OCI only).
    pub fn annotated(
        format: Format,
        config: &ImageConfig,
        layers: Vec<Layer>,
        annotations: &BTreeMap<String, String>,
    ) -> Result<Image> {
        ensure!(
            annotations.is_empty() || format == Format::Oci,
            "Docker schema2 manifests have no annotations"
        );
        let diff_ids: Vec<&str> = layers.iter().map(|l| l.diff_id.as_str()).collect();
        let config_blob = Blob::new(
            format.config_type(),
            serde_json::to_vec(&config.to_json(&diff_ids))?,
        );
        let layer_blobs = layers
            .iter()
            .map(|l| {
                Ok(Blob::shared(
                    &l.media_type(format)?,
                    l.data.clone(),
                    &l.digest,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let mut m = Map::new();
        m.insert("schemaVersion".into(), json!(2));
        m.insert("mediaType".into(), json!(format.manifest_type()));
        m.insert("config".into(), config_blob.descriptor());
        m.insert(
            "layers".into(),
            Value::Array(layer_blobs.iter().map(Blob::descriptor).collect()),
        );
        if !annotations.is_empty() {
            m.insert("annotations".into(), json!(annotations));
        }
        let manifest = Blob::new(
            format.manifest_type(),
            serde_json::to_vec(&Value::Object(m))?,
        );
        Ok(Image {
            format,
            config: config_blob,
            layers,
            layer_blobs,
            manifest,
            image_config: config.clone(),
        })
    }

    pub fn digest(&self) -> &str {
        &self.manifest.digest
    }

    /// Total size of the config and layer blobs.
    pub fn size(&self) -> u64 {
        self.config.size() + self.layer_blobs.iter().map(Blob::size).sum::<u64>()
    }

    /// The manifest's descriptor in an index, with the platform.
    pub fn index_descriptor(&self) -> Value {
        let mut d = self.manifest.descriptor();
        d["platform"] = self.image_config.platform().to_json();
        d
    }
}

impl Artifact for Image {
    fn manifest(&self) -> &Blob {
        &self.manifest
    }

    fn blobs(&self) -> Vec<&Blob> {
        std::iter::once(&self.config)
            .chain(self.layer_blobs.iter())
            .collect()
    }

    fn platform(&self) -> Option<Platform> {
        Some(self.image_config.platform())
    }
}

/// One manifest of an [`Index`], with what its descriptor says.
#[derive(Clone, Debug)]
pub struct IndexEntry {
    pub image: Image,
    pub annotations: BTreeMap<String, String>,
    /// A descriptor media type other than the image manifest's own.
    pub media_type: Option<String>,
}

impl From<Image> for IndexEntry {
    fn from(image: Image) -> IndexEntry {
        IndexEntry {
            image,
            annotations: BTreeMap::new(),
            media_type: None,
        }
    }
}

/// A multi-platform image: an OCI index or a Docker manifest list.
#[derive(Clone, Debug)]
pub struct Index {
    pub format: Format,
    pub entries: Vec<IndexEntry>,
    pub manifest: Blob,
}

impl Index {
    pub fn new(format: Format, images: Vec<Image>) -> Result<Index> {
        Index::with_entries(format, images.into_iter().map(IndexEntry::from).collect())
    }

    pub fn with_entries(format: Format, entries: Vec<IndexEntry>) -> Result<Index> {
        let manifests: Vec<Value> = entries
            .iter()
            .map(|e| {
                let mut d = e.image.index_descriptor();
                if let Some(mt) = &e.media_type {
                    d["mediaType"] = json!(mt);
                }
                if !e.annotations.is_empty() {
                    d["annotations"] = json!(e.annotations);
                }
                d
            })
            .collect();
        let body = json!({
            "schemaVersion": 2,
            "mediaType": format.index_type(),
            "manifests": manifests,
        });
        Ok(Index {
            format,
            manifest: Blob::new(format.index_type(), serde_json::to_vec(&body)?),
            entries,
        })
    }

    pub fn digest(&self) -> &str {
        &self.manifest.digest
    }

    /// The image for a platform ("linux/arm64/v8"), if listed.
    pub fn image_for(&self, platform: &str) -> Option<&Image> {
        self.entries
            .iter()
            .map(|e| &e.image)
            .find(|i| i.image_config.platform().to_string() == platform)
    }
}

impl Artifact for Index {
    fn manifest(&self) -> &Blob {
        &self.manifest
    }

    fn blobs(&self) -> Vec<&Blob> {
        let mut out = Vec::new();
        for e in &self.entries {
            out.extend(e.image.blobs());
            out.push(&e.image.manifest);
        }
        out
    }

    fn platform(&self) -> Option<Platform> {
        None
    }
}

/// Splits "name:tag" (the tag is what follows the last ':' after the last
/// '/'); "latest" when there is none.
fn tag_of(name: &str) -> &str {
    let last = name.rsplit('/').next().unwrap_or(name);
    last.rsplit_once(':').map_or("latest", |(_, t)| t)
}

/// The files of an OCI image layout: (path, bytes), directories implied.
fn layout_files(refs: &[(&str, &dyn Artifact)]) -> Result<Vec<(String, Arc<Vec<u8>>)>> {
    let mut blobs: BTreeMap<String, Arc<Vec<u8>>> = BTreeMap::new();
    let mut manifests = Vec::new();
    for (name, art) in refs {
        for b in art.blobs().into_iter().chain([art.manifest()]) {
            blobs.insert(b.hex().to_string(), b.data.clone());
        }
        let mut d = art.manifest().descriptor();
        if let Some(p) = art.platform() {
            d["platform"] = p.to_json();
        }
        d["annotations"] = json!({
            ANNOTATION_CONTAINERD_NAME: name,
            ANNOTATION_REF_NAME: tag_of(name),
        });
        manifests.push(d);
    }
    let index = json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": manifests,
    });
    let mut files = vec![
        (
            "oci-layout".to_string(),
            Arc::new(br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec()),
        ),
        (
            "index.json".to_string(),
            Arc::new(serde_json::to_vec(&index)?),
        ),
    ];
    files.extend(
        blobs
            .into_iter()
            .map(|(hex, data)| (format!("blobs/sha256/{hex}"), data)),
    );
    Ok(files)
}

/// Writes an OCI image layout directory at `dir` (created if missing) with
/// the artifacts named as given ("registry/repo:tag"): index.json names each
/// with `io.containerd.image.name` (the whole name) and
/// `org.opencontainers.image.ref.name` (the tag).
pub fn write_oci_layout(dir: &Path, refs: &[(&str, &dyn Artifact)]) -> Result<()> {
    std::fs::create_dir_all(dir.join("blobs/sha256"))
        .with_context(|| format!("creating {}", dir.display()))?;
    for (path, data) in layout_files(refs)? {
        let p = dir.join(&path);
        std::fs::write(&p, &data[..]).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

/// The same layout as a tar file (what `ctr images import` and
/// `berth image import` read).
pub fn write_oci_archive(path: &Path, refs: &[(&str, &dyn Artifact)]) -> Result<()> {
    let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut tar = TarWriter::to_writer(BufWriter::new(file));
    tar.append_entry(&Entry::dir("blobs"))?;
    tar.append_entry(&Entry::dir("blobs/sha256"))?;
    for (name, data) in layout_files(refs)? {
        tar.append_entry(&Entry::file(&name, data.to_vec()))?;
    }
    tar.into_inner()?
        .flush()
        .with_context(|| format!("writing {}", path.display()))
}

/// Writes a `docker save` tarball: `manifest.json` (Config, RepoTags,
/// Layers), `repositories`, the config as `<hex>.json`, and each layer
/// uncompressed as `<id>/layer.tar` with `<id>/VERSION` and `<id>/json`.
/// `refs` are ("repo:tag", image); an image listed under several tags gets
/// one manifest.json entry with all of them.
pub fn write_docker_archive(path: &Path, refs: &[(&str, &Image)]) -> Result<()> {
    let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut tar = TarWriter::to_writer(BufWriter::new(file));
    let mut entries: Vec<(&Image, Vec<String>)> = Vec::new();
    for (name, img) in refs {
        match entries.iter_mut().find(|(i, _)| i.digest() == img.digest()) {
            Some((_, tags)) => tags.push(name.to_string()),
            None => entries.push((img, vec![name.to_string()])),
        }
    }
    let mut manifest = Vec::new();
    let mut repositories: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut written = std::collections::HashSet::new();
    for (img, tags) in entries {
        let config_name = format!("{}.json", img.config.hex());
        if written.insert(config_name.clone()) {
            tar.append_entry(&Entry::file(&config_name, img.config.data.to_vec()))?;
        }
        // Docker's v1 layer IDs depend on the whole chain below; any
        // chain-dependent ID will do for loaders.
        let mut parent = String::new();
        let mut layer_paths = Vec::new();
        for layer in &img.layers {
            let id = sha256_hex(format!("{parent}\n{}", layer.diff_id).as_bytes());
            if written.insert(id.clone()) {
                tar.append_entry(&Entry::dir(&id))?;
                tar.append_entry(&Entry::file(&format!("{id}/VERSION"), "1.0"))?;
                let mut json = json!({ "id": id, "created": CREATED });
                if !parent.is_empty() {
                    json["parent"] = json!(parent);
                }
                tar.append_entry(&Entry::file(
                    &format!("{id}/json"),
                    serde_json::to_vec(&json)?,
                ))?;
                tar.append_entry(&Entry::file(&format!("{id}/layer.tar"), layer.tar()?))?;
            }
            layer_paths.push(format!("{id}/layer.tar"));
            parent = id;
        }
        for t in &tags {
            let (repo, tag) = match t.rsplit_once(':').filter(|(_, tag)| !tag.contains('/')) {
                Some((r, tag)) => (r.to_string(), tag.to_string()),
                None => (t.clone(), "latest".to_string()),
            };
            repositories
                .entry(repo)
                .or_default()
                .insert(tag, parent.clone());
        }
        manifest.push(json!({ "Config": config_name, "RepoTags": tags, "Layers": layer_paths }));
    }
    tar.append_entry(&Entry::file(
        "manifest.json",
        serde_json::to_vec(&manifest)?,
    ))?;
    tar.append_entry(&Entry::file(
        "repositories",
        serde_json::to_vec(&repositories)?,
    ))?;
    tar.into_inner()?
        .flush()
        .with_context(|| format!("writing {}", path.display()))
}

/// Layers that try to write outside the directory they are unpacked in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EvilLayer {
    /// A file named `../../etc/passwd`.
    ParentEscape,
    /// A file named `/etc/berth-evil` (absolute).
    AbsolutePath,
    /// A symlink `a -> /`, then a file `a/etc/passwd`.
    SymlinkEscape,
    /// A symlink `b -> ../../..`, then a file `b/etc/berth-evil`.
    SymlinkParentEscape,
    /// A hard link `passwd-link -> ../../etc/passwd`.
    HardlinkEscape,
    /// A hard link `shadow-link -> /etc/shadow`.
    HardlinkAbsolute,
}

impl EvilLayer {
    pub const ALL: [EvilLayer; 6] = [
        EvilLayer::ParentEscape,
        EvilLayer::AbsolutePath,
        EvilLayer::SymlinkEscape,
        EvilLayer::SymlinkParentEscape,
        EvilLayer::HardlinkEscape,
        EvilLayer::HardlinkAbsolute,
    ];

    /// The offending entry's name in the tar, as tests expect an error to
    /// mention it.
    pub fn offending_path(self) -> &'static str {
        match self {
            EvilLayer::ParentEscape => "../../etc/passwd",
            EvilLayer::AbsolutePath => "/etc/berth-evil",
            EvilLayer::SymlinkEscape => "a/etc/passwd",
            EvilLayer::SymlinkParentEscape => "b/etc/berth-evil",
            EvilLayer::HardlinkEscape => "passwd-link",
            EvilLayer::HardlinkAbsolute => "shadow-link",
        }
    }
}

/// What evil layers write: if a test finds it anywhere outside the store,
/// the unpacker escaped.
pub const EVIL_CONTENT: &str = "berth-evil-layer-was-here\n";

/// A layer with a harmless file (`ok.txt`) and then the evil entry.
pub fn evil_layer(kind: EvilLayer, compression: Compression) -> Result<Layer> {
    let b = LayerBuilder::new().file("ok.txt", "fine\n");
    let b = match kind {
        EvilLayer::ParentEscape | EvilLayer::AbsolutePath => {
            b.file(kind.offending_path(), EVIL_CONTENT)
        }
        EvilLayer::SymlinkEscape => b.symlink("a", "/").file("a/etc/passwd", EVIL_CONTENT),
        EvilLayer::SymlinkParentEscape => b
            .symlink("b", "../../..")
            .file("b/etc/berth-evil", EVIL_CONTENT),
        EvilLayer::HardlinkEscape => b.hardlink("passwd-link", "../../etc/passwd"),
        EvilLayer::HardlinkAbsolute => b.hardlink("shadow-link", "/etc/shadow"),
    };
    b.build(compression)
}

/// A layer whose tar stops in the middle of a file (the header announces
/// 4096 bytes, 100 follow, no end-of-archive blocks); its digests match
/// what it is, so only unpacking can fail.
pub fn truncated_tar_layer(compression: Compression) -> Result<Layer> {
    let whole = LayerBuilder::new()
        .file("ok.txt", "fine\n")
        .file("cut.bin", vec![b'x'; 4096])
        .build(Compression::None)?;
    // ok.txt: header + one data block; cut.bin: header + 100 bytes.
    let cut = &whole.data[..512 * 3 + 100];
    Layer::from_tar(cut, compression)
}

/// The manifest of `image` padded with an annotation to at least `size`
/// bytes: still a valid manifest, only too big.
pub fn huge_manifest(image: &Image, size: usize) -> Result<Blob> {
    ensure!(
        image.format == Format::Oci,
        "huge_manifest needs an OCI image"
    );
    let mut m: Value = serde_json::from_slice(&image.manifest.data)?;
    m["annotations"] = json!({ "berth.test/padding": "x".repeat(size) });
    Ok(Blob::new(OCI_MANIFEST, serde_json::to_vec(&m)?))
}
