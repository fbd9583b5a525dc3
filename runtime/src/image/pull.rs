//! Pulling an image: resolve, then fetch every layer at once, each written to
//! the content store and unpacked in the same pass.
//!
//! A layer's bytes go from the network through one blocking thread that
//! appends them to the blob's ingest file (hashing the compressed stream) and
//! feeds the same buffers to the unpacker (hashing the uncompressed tar). So a
//! layer is on disk and unpacked as soon as its last byte arrives, and layers
//! unpack in parallel, in any order: each has its own directory.
//!
//! The blob is committed only if its digest matches; the unpacked layer is
//! verified by its diff ID, which the (verified) config names, so it is sound
//! even when it was fed before the blob's check.

use std::io::{self, Read};
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use oci_spec::image::{ImageConfiguration, ImageManifest};

use super::content::{ContentError, Ingest, IngestWriter};
use super::digest::{Digest, DigestError};
use super::layer::{Compression, LayerError};
use super::meta::{ImageRecord, LayerRef, MetaError, RunConfig};
use super::reference::{Reference, ReferenceError};
use super::registry::{Credentials, Platform, RegistryError};
use super::store::ImageStore;

/// The largest image config we read; real ones are a few KiB.
pub const MAX_CONFIG: u64 = 8 << 20;
/// Layers fetched at once.
const PARALLEL_LAYERS: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Content(#[from] ContentError),
    #[error(transparent)]
    Layer(#[from] LayerError),
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error("{image}: {what} has a bad digest: {source}")]
    Digest {
        image: String,
        what: String,
        source: DigestError,
    },
    #[error("{image}: config {digest} is not a valid image config: {source}")]
    Config {
        image: String,
        digest: Digest,
        source: serde_json::Error,
    },
    #[error(
        "{image}: manifest {manifest} lists {layers} layers but its config names {diff_ids} diff IDs"
    )]
    LayerCount {
        image: String,
        manifest: Digest,
        layers: usize,
        diff_ids: usize,
    },
    #[error("taking the store's pull lease: {0}")]
    Lease(String),
    #[error("a worker thread failed: {0}")]
    Worker(String),
    #[error("{image}: layer {blob}: {message}")]
    Pipeline {
        image: String,
        blob: Digest,
        message: String,
    },
}

/// Hears how a pull goes; the command line draws progress bars from it.
pub trait Progress: Send + Sync {
    /// The image resolved; these blobs (digest, size) will be fetched.
    fn resolved(&self, _image: &str, _layers: &[(Digest, u64)]) {}
    /// `done` bytes of a layer's blob are in.
    fn layer_bytes(&self, _blob: &Digest, _done: u64) {}
    /// A layer is stored and unpacked (`cached`: it was already there).
    fn layer_done(&self, _blob: &Digest, _cached: bool) {}
}

/// Progress that nobody hears.
pub struct Silent;
impl Progress for Silent {}

#[derive(Debug, Clone, Default)]
pub struct PullOptions {
    pub credentials: Option<Credentials>,
    pub platform: Option<Platform>,
}

impl ImageStore {
    /// Pulls `image` (`busybox`, `registry:5000/x:tag`, `name@sha256:…`) and
    /// returns its record. Blobs and layers already present are not fetched
    /// again.
    pub async fn pull(
        &self,
        image: &str,
        opts: &PullOptions,
        progress: Arc<dyn Progress>,
    ) -> Result<ImageRecord, PullError> {
        let r: Reference = image.parse()?;
        let name = r.to_string();
        let _lease = self.lease().map_err(|e| PullError::Lease(e.to_string()))?;
        let platform = opts.platform.clone().unwrap_or_else(Platform::host);
        let creds = opts.credentials.as_ref();
        let resolved = self.registry().resolve(&r, &platform, creds).await?;
        tracing::debug!(image = %name, manifest = %resolved.manifest_digest, "resolved");

        let content = self.content().clone();
        let manifest_bytes = resolved.manifest_bytes.clone();
        let manifest_digest = resolved.manifest_digest.clone();
        let index = resolved
            .index_bytes
            .clone()
            .map(|b| (b, resolved.repo_digest.clone()));
        blocking(move || -> Result<(), ContentError> {
            content.write_blob(&manifest_bytes, Some(&manifest_digest))?;
            if let Some((bytes, digest)) = index {
                content.write_blob(&bytes, Some(&digest))?;
            }
            Ok(())
        })
        .await??;

        let manifest = &resolved.manifest;
        let config_digest = digest_of(&name, "config", manifest.config().digest())?;
        // Through the blob's lock, so concurrent pulls fetch it once.
        let content = self.content().clone();
        let (d, size) = (config_digest.clone(), manifest.config().size());
        let config_bytes = match blocking(move || content.ingest(&d, Some(size))).await?? {
            Ingest::Present => {
                let content = self.content().clone();
                let d = config_digest.clone();
                blocking(move || content.read_blob(&d, MAX_CONFIG)).await??
            }
            Ingest::Writer(mut w) => {
                let bytes = self
                    .registry()
                    .fetch_blob_bytes(&r, &config_digest, MAX_CONFIG, creds)
                    .await?;
                let b = bytes.clone();
                blocking(move || -> Result<(), ContentError> {
                    w.truncate_to(0)?;
                    w.write_all(&b)?;
                    w.commit()
                })
                .await??;
                bytes
            }
        };
        let config: ImageConfiguration =
            serde_json::from_slice(&config_bytes).map_err(|source| PullError::Config {
                image: name.clone(),
                digest: config_digest.clone(),
                source,
            })?;
        let layers = layer_refs(&name, &resolved.manifest_digest, manifest, &config)?;
        progress.resolved(
            &name,
            &layers
                .iter()
                .map(|l| (l.blob.clone(), l.size))
                .collect::<Vec<_>>(),
        );

        let results: Vec<Result<(), PullError>> = futures::stream::iter(layers.iter().cloned())
            .map(|l| {
                let (r, name, progress) = (&r, &name, progress.clone());
                async move { self.fetch_layer(r, name, &l, creds, progress).await }
            })
            .buffer_unordered(PARALLEL_LAYERS)
            .collect()
            .await;
        results.into_iter().collect::<Result<Vec<()>, _>>()?;

        let size = resolved.manifest_bytes.len() as u64
            + config_bytes.len() as u64
            + layers.iter().map(|l| l.size).sum::<u64>();
        let record = ImageRecord {
            id: config_digest,
            manifest: resolved.manifest_digest.clone(),
            manifest_media_type: resolved.media_type.clone(),
            index: resolved
                .index_bytes
                .as_ref()
                .map(|_| resolved.repo_digest.clone()),
            repo_tags: r.repo_tag().into_iter().collect(),
            repo_digests: vec![r.repo_digest(&resolved.repo_digest)],
            layers,
            size,
            os: config.os().to_string(),
            architecture: config.architecture().to_string(),
            run: RunConfig::from_config(&config),
            added: now(),
        };
        let meta = self.meta().clone();
        let record = blocking(move || meta.put(record)).await??;
        tracing::info!(image = %name, id = %record.id, "pulled");
        Ok(record)
    }

    async fn fetch_layer(
        &self,
        r: &Reference,
        name: &str,
        l: &LayerRef,
        creds: Option<&Credentials>,
        progress: Arc<dyn Progress>,
    ) -> Result<(), PullError> {
        let compression = Compression::from_media_type(&l.media_type)?;
        let unpacked = self.layers().get(&l.diff_id).is_some();
        if unpacked && self.content().contains(&l.blob) {
            progress.layer_done(&l.blob, true);
            return Ok(());
        }
        let content = self.content().clone();
        let (blob, size) = (l.blob.clone(), l.size);
        // May wait for a concurrent pull of the same blob, here or in another process.
        let ingest = blocking(move || content.ingest(&blob, Some(size))).await??;
        let mut writer = match ingest {
            Ingest::Present => {
                if !unpacked {
                    self.unpack_stored(l, compression).await?;
                }
                progress.layer_done(&l.blob, true);
                return Ok(());
            }
            Ingest::Writer(w) => w,
        };
        let offset = writer.offset();
        let mut stream = self
            .registry()
            .fetch_blob(r, &l.blob, l.size, offset, creds)
            .await?;
        if stream.start != offset {
            writer.truncate_to(stream.start)?;
        }
        // Unpack while downloading when the tar starts with this stream; a
        // resumed download is unpacked from the blob once it is whole.
        let live = !unpacked && stream.start == 0;
        // A short queue: on a fast network the download outruns the unpacker,
        // and every queued chunk is memory held (hyper's buffers are large).
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, String>>(4);
        let layers = self.layers().clone();
        let diff_id = l.diff_id.clone();
        let sink = tokio::task::spawn_blocking(move || -> Result<(), String> {
            let mut tee = Tee {
                rx,
                writer,
                pending: Bytes::new(),
                failed: None,
            };
            if live {
                let unpacked = layers.unpack(&mut tee, compression, &diff_id);
                if let Some(e) = tee.failed.take() {
                    return Err(e);
                }
                unpacked.map_err(|e| e.to_string())?;
            }
            // Whatever the unpacker did not read still belongs to the blob.
            io::copy(&mut tee, &mut io::sink()).map_err(|e| e.to_string())?;
            if let Some(e) = tee.failed.take() {
                return Err(e);
            }
            tee.writer.commit().map_err(|e| e.to_string())
        });
        let mut done = stream.start;
        while let Some(chunk) = stream.next().await {
            let item = chunk.map_err(|e| e.to_string());
            if let Ok(b) = &item {
                done += b.len() as u64;
                progress.layer_bytes(&l.blob, done);
            }
            let stop = item.is_err();
            if tx.send(item).await.is_err() || stop {
                break;
            }
        }
        drop(tx);
        let pipeline = |message: String| PullError::Pipeline {
            image: name.to_string(),
            blob: l.blob.clone(),
            message,
        };
        sink.await
            .map_err(|e| pipeline(format!("the writer thread failed: {e}")))?
            .map_err(pipeline)?;
        if !live && self.layers().get(&l.diff_id).is_none() {
            self.unpack_stored(l, compression).await?;
        }
        progress.layer_done(&l.blob, false);
        Ok(())
    }

    async fn unpack_stored(&self, l: &LayerRef, compression: Compression) -> Result<(), PullError> {
        let (content, layers) = (self.content().clone(), self.layers().clone());
        let (blob, diff_id) = (l.blob.clone(), l.diff_id.clone());
        blocking(move || -> Result<(), PullError> {
            let f = content.open_blob(&blob)?;
            layers.unpack(
                io::BufReader::with_capacity(1 << 20, f),
                compression,
                &diff_id,
            )?;
            Ok(())
        })
        .await?
    }
}

/// Reads the download's chunks, appending each to the blob as it passes.
struct Tee {
    rx: tokio::sync::mpsc::Receiver<Result<Bytes, String>>,
    writer: IngestWriter,
    pending: Bytes,
    failed: Option<String>,
}

impl Read for Tee {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pending.is_empty() {
            match self.rx.blocking_recv() {
                None => return Ok(0),
                Some(Ok(b)) => {
                    if let Err(e) = self.writer.write_all(&b) {
                        self.failed = Some(e.to_string());
                        return Err(io::Error::other(e.to_string()));
                    }
                    self.pending = b;
                }
                Some(Err(e)) => {
                    self.failed = Some(e.clone());
                    return Err(io::Error::other(e));
                }
            }
        }
        let n = buf.len().min(self.pending.len());
        buf[..n].copy_from_slice(&self.pending.split_to(n));
        Ok(n)
    }
}

fn layer_refs(
    image: &str,
    manifest_digest: &Digest,
    manifest: &ImageManifest,
    config: &ImageConfiguration,
) -> Result<Vec<LayerRef>, PullError> {
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != manifest.layers().len() {
        return Err(PullError::LayerCount {
            image: image.to_string(),
            manifest: manifest_digest.clone(),
            layers: manifest.layers().len(),
            diff_ids: diff_ids.len(),
        });
    }
    manifest
        .layers()
        .iter()
        .zip(diff_ids)
        .enumerate()
        .map(|(i, (desc, diff))| {
            let blob = digest_of(image, &format!("layer {i}"), desc.digest())?;
            let diff_id = diff.parse().map_err(|source| PullError::Digest {
                image: image.to_string(),
                what: format!("diff ID {i}"),
                source,
            })?;
            Ok(LayerRef {
                blob,
                diff_id,
                size: desc.size(),
                media_type: desc.media_type().to_string(),
            })
        })
        .collect()
}

fn digest_of(image: &str, what: &str, d: &oci_spec::image::Digest) -> Result<Digest, PullError> {
    Digest::try_from(d).map_err(|source| PullError::Digest {
        image: image.to_string(),
        what: what.to_string(),
        source,
    })
}

pub(crate) fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Runs blocking store work off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, PullError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| PullError::Worker(e.to_string()))
}
