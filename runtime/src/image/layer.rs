//! Layers: each image layer unpacked once, into its own directory, and shared by
//! every image that has it.
//!
//! Layout under the store's root:
//!
//! ```text
//! layers/<diffid hex>/fs          the layer's files, ready to be an overlay lower dir
//! layers/<diffid hex>/meta.json   sizes measured while unpacking
//! layers/.tmp-<diffid hex>/       an unpack (or removal) in progress
//! layers/.lock-<diffid hex>       flock'ed by whoever unpacks or removes that layer
//! ```
//!
//! A layer is unpacked into its temp dir, its tar stream's sha256 checked against
//! the diffID, the filesystem synced once, and the dir renamed into place; so a
//! layer dir exists only when complete. Temp dirs are only touched under the
//! layer's lock, which the kernel drops when a process dies: [`LayerStore::open`]
//! removes the temp dirs whose lock is free (left by a crash) and leaves those of
//! a live unpacker alone.
//!
//! Placement is done here rather than by the `tar` crate so that every entry is
//! created relative to a directory fd resolved with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS)`: no entry can land outside the layer, whatever the
//! symlinks earlier entries made. Entries that try are refused, and with them the
//! whole layer.
//!
//! OCI whiteouts become overlayfs ones: `.wh.NAME` a 0/0 character device `NAME`,
//! `.wh..wh..opq` the xattr `trusted.overlay.opaque=y` on its directory.

use std::collections::HashMap;
use std::ffi::{CString, OsStr, OsString};
use std::fs::{self, File};
use std::io::{self, BufReader, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::content::{PathLock, Usage, sync_dir};
use super::digest::{Digest, HashingReader};

/// Buffers between the compressed stream, the decompressor, the tar parser and
/// the files: large enough that each layer of the pipeline works in big chunks.
const BUFFER: usize = 256 * 1024;
const COPY_BUFFER: usize = 1024 * 1024;

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";
const OVERLAY_OPAQUE_XATTR: &str = "trusted.overlay.opaque";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// The compression of a layer with this OCI or Docker media type.
    pub fn from_media_type(media_type: &str) -> Result<Self, LayerError> {
        Ok(match media_type {
            "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar"
            | "application/vnd.docker.image.rootfs.diff.tar" => Compression::None,
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Compression::Gzip,
            "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => Compression::Zstd,
            other => return Err(LayerError::UnknownMediaType(other.to_string())),
        })
    }

    /// Guesses from a stream's first bytes (for `docker save` tarballs, whose
    /// layers carry no media type); anything unrecognized is taken as plain tar.
    pub fn detect(head: &[u8]) -> Self {
        if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

/// Why an entry (and so its whole layer) is refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum Refusal {
    #[error("its path climbs out of the layer with \"..\"")]
    DotDot,
    #[error("its path is absolute")]
    Absolute,
    #[error("its path goes through the symlink {0:?}")]
    ThroughSymlink(String),
    #[error("its parent {0:?} is not a directory")]
    ParentNotDir(String),
    #[error("it is a hardlink to {0:?}, outside the layer")]
    HardlinkOutside(String),
    #[error("it is a hardlink to {0:?}, which is not an earlier file of this layer")]
    HardlinkUnknown(String),
    #[error("it is a {0} at the layer's root")]
    RootNotDir(&'static str),
    #[error("it is an invalid whiteout")]
    BadWhiteout,
    #[error("its name contains a NUL byte")]
    Nul,
    #[error("its tar entry type {0:?} is not supported")]
    UnsupportedType(char),
    #[error("its {0} is out of range")]
    BadField(&'static str),
}

#[derive(Debug, Error)]
pub enum LayerError {
    #[error("layer store: cannot {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("unknown layer media type {0:?}")]
    UnknownMediaType(String),
    #[error("layer {diff_id}: cannot read the layer stream{}: {source}",
        match .entry { Some(e) => format!(" (at entry {e:?})"), None => String::new() })]
    Read {
        diff_id: Digest,
        entry: Option<String>,
        #[source]
        source: io::Error,
    },
    #[error("layer {diff_id}: refusing entry {entry:?}: {reason}")]
    Refused {
        diff_id: Digest,
        entry: String,
        reason: Refusal,
    },
    #[error("layer {diff_id}: cannot {op} entry {entry:?}: {source}")]
    Entry {
        diff_id: Digest,
        entry: String,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error(
        "layer diffID mismatch: expected {expected}, the uncompressed tar is {actual} ({size} bytes)"
    )]
    DiffIdMismatch {
        expected: Digest,
        actual: Digest,
        size: u64,
    },
    #[error("layer {diff_id}: corrupt metadata {path}: {source}")]
    Meta {
        diff_id: Digest,
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> LayerError + 'a {
    move |source| LayerError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// An unpacked layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    pub diff_id: Digest,
    /// The `fs` dir: the layer's root, to be used as an overlay lower dir.
    pub path: PathBuf,
    /// The apparent size of its files' contents, in bytes.
    pub size: u64,
}

/// What we record about a layer when it is unpacked, so that sizes need no walk later.
#[derive(Debug, Serialize, Deserialize)]
struct Meta {
    size: u64,
    bytes: u64,
    inodes: u64,
}

/// The layer directories. Cheap to clone; every method is blocking I/O.
#[derive(Debug, Clone)]
pub struct LayerStore {
    layers: PathBuf,
}

impl LayerStore {
    /// Opens (creating if needed) the store at `<root>/layers`, removing what
    /// crashed unpacks and removals left behind.
    pub fn open(root: &Path) -> Result<Self, LayerError> {
        let layers = root.join("layers");
        fs::create_dir_all(&layers).map_err(io_err("create", &layers))?;
        let store = LayerStore { layers };
        store.clean_leftovers()?;
        Ok(store)
    }

    fn clean_leftovers(&self) -> Result<(), LayerError> {
        let dir = &self.layers;
        for e in fs::read_dir(dir).map_err(io_err("list", dir))? {
            let e = e.map_err(io_err("list", dir))?;
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            let (hex, is_tmp) = if let Some(h) = name.strip_prefix(".tmp-") {
                (h, true)
            } else if let Some(h) = name.strip_prefix(".lock-") {
                (h, false)
            } else {
                continue;
            };
            let Ok(d) = Digest::from_hex(hex) else {
                continue;
            };
            let lock_path = self.lock_path(&d);
            // Held: a live unpacker or remover owns the temp dir.
            let Some(lock) =
                PathLock::acquire(&lock_path, false).map_err(io_err("lock", &lock_path))?
            else {
                continue;
            };
            let tmp = self.tmp_dir(&d);
            if is_tmp || tmp.exists() {
                tracing::info!(dir = %tmp.display(), "removing an interrupted layer unpack");
                remove_tree(&tmp).map_err(io_err("remove", &tmp))?;
            }
            lock.unlink().map_err(io_err("remove", &lock_path))?;
        }
        Ok(())
    }

    fn dir(&self, d: &Digest) -> PathBuf {
        self.layers.join(d.hex())
    }

    fn tmp_dir(&self, d: &Digest) -> PathBuf {
        self.layers.join(format!(".tmp-{}", d.hex()))
    }

    fn lock_path(&self, d: &Digest) -> PathBuf {
        self.layers.join(format!(".lock-{}", d.hex()))
    }

    /// The layer's fs dir, when it is fully unpacked.
    pub fn get(&self, diff_id: &Digest) -> Option<PathBuf> {
        let fs = self.dir(diff_id).join("fs");
        fs.is_dir().then_some(fs)
    }

    fn meta(&self, diff_id: &Digest) -> Result<Option<Meta>, LayerError> {
        let path = self.dir(diff_id).join("meta.json");
        match fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|source| LayerError::Meta {
                    diff_id: diff_id.clone(),
                    path,
                    source,
                }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("read", &path)(e)),
        }
    }

    fn existing(&self, diff_id: &Digest) -> Result<Option<Layer>, LayerError> {
        let Some(path) = self.get(diff_id) else {
            return Ok(None);
        };
        let size = self.meta(diff_id)?.map(|m| m.size).unwrap_or(0);
        Ok(Some(Layer {
            diff_id: diff_id.clone(),
            path,
            size,
        }))
    }

    /// Unpacks `reader` (compressed as given), checking that the uncompressed tar
    /// hashes to `diff_id`. The stream is read once and never held in memory.
    ///
    /// Idempotent and safe under concurrency (threads and processes): an
    /// existing layer is returned at once, and an unpacker that finds another at
    /// work on the same layer waits for it and returns its result, without
    /// reading `reader`. On error nothing is left behind.
    pub fn unpack(
        &self,
        reader: impl Read,
        compression: Compression,
        diff_id: &Digest,
    ) -> Result<Layer, LayerError> {
        if let Some(l) = self.existing(diff_id)? {
            return Ok(l);
        }
        let lock_path = self.lock_path(diff_id);
        let lock = PathLock::acquire(&lock_path, true)
            .map_err(io_err("lock", &lock_path))?
            .ok_or_else(|| io_err("lock", &lock_path)(io::ErrorKind::WouldBlock.into()))?;
        if let Some(l) = self.existing(diff_id)? {
            if let Err(e) = lock.unlink() {
                tracing::warn!(path = %lock_path.display(), error = %e, "cannot remove layer lock");
            }
            return Ok(l);
        }
        let tmp = self.tmp_dir(diff_id);
        // Left by a crash: the lock was free, so nobody owns it.
        if tmp.exists() {
            remove_tree(&tmp).map_err(io_err("remove", &tmp))?;
        }
        let result = self.unpack_locked(&tmp, reader, compression, diff_id);
        if result.is_err()
            && let Err(e) = remove_tree(&tmp)
        {
            tracing::warn!(dir = %tmp.display(), error = %e, "cannot remove a failed unpack");
        }
        // Only after the rename: a waiter that then takes the lock finds the layer.
        if let Err(e) = lock.unlink() {
            tracing::warn!(path = %lock_path.display(), error = %e, "cannot remove layer lock");
        }
        result
    }

    fn unpack_locked(
        &self,
        tmp: &Path,
        reader: impl Read,
        compression: Compression,
        diff_id: &Digest,
    ) -> Result<Layer, LayerError> {
        let start = std::time::Instant::now();
        let fs_dir = tmp.join("fs");
        fs::create_dir(tmp).map_err(io_err("create", tmp))?;
        fs::create_dir(&fs_dir).map_err(io_err("create", &fs_dir))?;

        let input = BufReader::with_capacity(BUFFER, reader);
        let read_err = |source| LayerError::Read {
            diff_id: diff_id.clone(),
            entry: None,
            source,
        };
        let decoded: Box<dyn Read + '_> = match compression {
            Compression::None => Box::new(input),
            Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(input)),
            Compression::Zstd => {
                Box::new(zstd::stream::read::Decoder::with_buffer(input).map_err(read_err)?)
            }
        };
        // Hash what the decompressor yields; buffer after the hash so that the
        // tar parser's 512-byte header reads do not each cost a decompress call.
        let hashed = BufReader::with_capacity(BUFFER, HashingReader::new(decoded));
        let mut archive = tar::Archive::new(hashed);
        let root = open_dir(&fs_dir).map_err(io_err("open", &fs_dir))?;
        let mut unpacker = Unpacker::new(diff_id, root);
        let entries = archive.entries().map_err(read_err)?;
        for entry in entries {
            let entry = entry.map_err(|source| LayerError::Read {
                diff_id: diff_id.clone(),
                entry: unpacker.last.clone(),
                source,
            })?;
            unpacker.entry(entry)?;
        }
        let meta = unpacker.finish()?;

        // The diffID covers the whole stream, including the end-of-archive blocks
        // and any padding after them, which the tar parser does not read.
        let mut rest = archive.into_inner();
        io::copy(&mut rest, &mut io::sink()).map_err(read_err)?;
        let (_, actual, size) = rest.into_inner().finish();
        if actual != *diff_id {
            return Err(LayerError::DiffIdMismatch {
                expected: diff_id.clone(),
                actual,
                size,
            });
        }

        let meta_path = tmp.join("meta.json");
        let json = serde_json::to_vec(&meta).map_err(|source| LayerError::Meta {
            diff_id: diff_id.clone(),
            path: meta_path.clone(),
            source,
        })?;
        fs::write(&meta_path, json).map_err(io_err("write", &meta_path))?;
        // One sync of the filesystem instead of an fsync per file: the layer is
        // complete on disk before its name says so.
        let tmp_fd = File::open(tmp).map_err(io_err("open", tmp))?;
        nix::unistd::syncfs(tmp_fd.as_fd()).map_err(|e| io_err("sync", tmp)(e.into()))?;
        let dest = self.dir(diff_id);
        fs::rename(tmp, &dest).map_err(io_err("rename into place", &dest))?;
        sync_dir(&self.layers).map_err(io_err("sync", &self.layers))?;
        tracing::debug!(
            diff_id = %diff_id,
            tar_bytes = size,
            files_bytes = meta.size,
            inodes = meta.inodes,
            elapsed_ms = start.elapsed().as_millis() as u64,
            "layer unpacked"
        );
        Ok(Layer {
            diff_id: diff_id.clone(),
            path: dest.join("fs"),
            size: meta.size,
        })
    }

    /// Deletes a layer; a missing one is fine. The layer disappears at once (by
    /// rename); a crash while its files are deleted leaves a temp dir that
    /// [`LayerStore::open`] removes.
    pub fn remove(&self, diff_id: &Digest) -> Result<(), LayerError> {
        let lock_path = self.lock_path(diff_id);
        let lock = PathLock::acquire(&lock_path, true)
            .map_err(io_err("lock", &lock_path))?
            .ok_or_else(|| io_err("lock", &lock_path)(io::ErrorKind::WouldBlock.into()))?;
        let dir = self.dir(diff_id);
        let tmp = self.tmp_dir(diff_id);
        let result = (|| {
            if tmp.exists() {
                remove_tree(&tmp).map_err(io_err("remove", &tmp))?;
            }
            match fs::rename(&dir, &tmp) {
                Ok(()) => remove_tree(&tmp).map_err(io_err("remove", &tmp)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(io_err("remove", &dir)(e)),
            }
        })();
        lock.unlink().map_err(io_err("remove", &lock_path))?;
        result
    }

    /// The diffIDs of the fully unpacked layers.
    pub fn list(&self) -> Result<Vec<Digest>, LayerError> {
        let dir = &self.layers;
        let mut out = Vec::new();
        for e in fs::read_dir(dir).map_err(io_err("list", dir))? {
            let e = e.map_err(io_err("list", dir))?;
            if let Some(d) = e
                .file_name()
                .to_str()
                .and_then(|n| Digest::from_hex(n).ok())
                && e.file_type().is_ok_and(|t| t.is_dir())
            {
                out.push(d);
            }
        }
        out.sort();
        Ok(out)
    }

    /// Disk used by the unpacked layers, from what was measured when each was
    /// unpacked (no walk of the files).
    pub fn usage(&self) -> Result<Usage, LayerError> {
        let mut total = stat_usage(&self.layers).map_err(io_err("stat", &self.layers))?;
        for d in self.list()? {
            let dir = self.dir(&d);
            let Some(meta) = self.meta(&d)? else { continue };
            total += Usage {
                bytes: meta.bytes,
                inodes: meta.inodes,
            };
            for p in [dir.clone(), dir.join("meta.json")] {
                match stat_usage(&p) {
                    Ok(u) => total += u,
                    // Removed while we count.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_err("stat", &p)(e)),
                }
            }
        }
        Ok(total)
    }
}

fn stat_usage(p: &Path) -> io::Result<Usage> {
    let md = fs::symlink_metadata(p)?;
    Ok(Usage {
        bytes: md.blocks() * 512,
        inodes: 1,
    })
}

/// Removes a tree; missing is fine. `remove_dir_all` opens each directory
/// relative to its parent without following symlinks, so a layer's symlinks
/// cannot make it delete anything outside.
fn remove_tree(p: &Path) -> io::Result<()> {
    match fs::remove_dir_all(p) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

fn open_dir(p: &Path) -> io::Result<OwnedFd> {
    Ok(nix::fcntl::open(
        p,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?)
}

/// Resolves `rel` strictly inside `root`: no symlink, no `..` above it, no
/// magic link, no other mount.
fn open_beneath(root: BorrowedFd<'_>, rel: &Path) -> nix::Result<OwnedFd> {
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
        .resolve(
            ResolveFlag::RESOLVE_BENEATH
                | ResolveFlag::RESOLVE_NO_SYMLINKS
                | ResolveFlag::RESOLVE_NO_MAGICLINKS
                | ResolveFlag::RESOLVE_NO_XDEV,
        );
    loop {
        match nix::fcntl::openat2(root, rel, how) {
            // openat2 asks to retry when a concurrent rename could have raced.
            Err(Errno::EAGAIN) | Err(Errno::EINTR) => continue,
            r => return r,
        }
    }
}

/// A path inside the layer, lexically normalized: no `.`, no `..`, no empty
/// components. Empty means the layer's root.
fn normalize(raw: &[u8]) -> Result<PathBuf, Refusal> {
    if raw.first() == Some(&b'/') {
        return Err(Refusal::Absolute);
    }
    let mut parts: Vec<&[u8]> = Vec::new();
    for c in raw.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                if parts.pop().is_none() {
                    return Err(Refusal::DotDot);
                }
            }
            c => parts.push(c),
        }
    }
    Ok(PathBuf::from(OsString::from_vec(parts.join(&b'/'))))
}

fn show(raw: &[u8]) -> String {
    String::from_utf8_lossy(raw).into_owned()
}

/// The metadata of one entry that is applied to what it creates.
struct Attrs {
    uid: u32,
    gid: u32,
    mode: Mode,
    atime: TimeSpec,
    mtime: TimeSpec,
    xattrs: Vec<(CString, Vec<u8>)>,
}

/// A PAX time: decimal seconds with an optional fraction (possibly negative).
fn pax_time(v: &[u8]) -> Option<TimeSpec> {
    let s = std::str::from_utf8(v).ok()?;
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    let secs: i64 = secs.parse().ok()?;
    let digits: String = frac.chars().take(9).collect();
    if !digits.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let mut nanos: i64 = if digits.is_empty() {
        0
    } else {
        digits.parse().ok()?
    };
    for _ in digits.len()..9 {
        nanos *= 10;
    }
    if s.starts_with('-') && nanos > 0 {
        // -1.5 is 2 seconds back plus half a second.
        Some(TimeSpec::new(secs - 1, 1_000_000_000 - nanos))
    } else {
        Some(TimeSpec::new(secs, nanos))
    }
}

/// Whether an xattr from a layer may be set. overlayfs's own `trusted.overlay.*`
/// xattrs steer how it merges layers (redirects, metacopy, opacity): only the
/// whiteout conversion sets them, never the image.
fn xattr_allowed(name: &str) -> bool {
    !name.starts_with("trusted.overlay.")
}

/// What errors need to name: the layer and the entry.
#[derive(Clone, Copy)]
struct Ctx<'a> {
    diff_id: &'a Digest,
    name: &'a str,
}

impl<'a> Ctx<'a> {
    fn refuse(&self, reason: Refusal) -> LayerError {
        LayerError::Refused {
            diff_id: self.diff_id.clone(),
            entry: self.name.to_string(),
            reason,
        }
    }

    fn io(&self, op: &'static str) -> impl FnOnce(io::Error) -> LayerError + 'a {
        let Ctx { diff_id, name } = *self;
        move |source| LayerError::Entry {
            diff_id: diff_id.clone(),
            entry: name.to_string(),
            op,
            source,
        }
    }

    fn errno(&self, op: &'static str) -> impl FnOnce(Errno) -> LayerError + 'a {
        let io = self.io(op);
        move |e| io(e.into())
    }

    fn read(&self) -> impl FnOnce(io::Error) -> LayerError + 'a {
        let Ctx { diff_id, name } = *self;
        move |source| LayerError::Read {
            diff_id: diff_id.clone(),
            entry: Some(name.to_string()),
            source,
        }
    }

    fn resolve(&self, rel: &Path, e: Errno) -> LayerError {
        let shown = rel.display().to_string();
        match e {
            Errno::ELOOP => self.refuse(Refusal::ThroughSymlink(shown)),
            Errno::ENOTDIR => self.refuse(Refusal::ParentNotDir(shown)),
            e => self.errno("resolve the parent of")(e),
        }
    }
}

/// What deleting the tree at `path` frees of the non-directories we counted
/// (directories are counted at the end), and the apparent size of its regular
/// files. Best effort: it only adjusts figures.
fn files_usage(path: &Path) -> (Usage, u64) {
    let mut usage = Usage::default();
    let mut size = 0;
    let mut stack = vec![path.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(md) = fs::symlink_metadata(&p) else {
            continue;
        };
        if md.is_dir() {
            if let Ok(rd) = fs::read_dir(&p) {
                stack.extend(rd.flatten().map(|e| e.path()));
            }
        } else if md.nlink() <= 1 {
            usage.bytes += md.blocks() * 512;
            usage.inodes += 1;
            if md.is_file() {
                size += md.len();
            }
        }
    }
    (usage, size)
}

fn is_dir(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

/// Splits a normalized path into its parent and its name (`.` for the root).
fn split(path: &Path) -> (&Path, &OsStr) {
    match path.file_name() {
        Some(n) => (path.parent().unwrap_or(Path::new("")), n),
        None => (Path::new(""), OsStr::new(".")),
    }
}

/// The layer's directory tree as we build it, reached only through fds.
struct Tree {
    root: OwnedFd,
    /// The last parent dir resolved: consecutive entries mostly share one.
    parent: Option<(PathBuf, OwnedFd)>,
    /// Every directory made, with the times its entry asked for (`None` when it
    /// was made only to hold other entries); times are set at the end, since
    /// adding entries to a directory changes its mtime.
    dirs: HashMap<PathBuf, Option<(TimeSpec, TimeSpec)>>,
    /// Apparent bytes of regular files.
    size: u64,
    /// Space of everything but directories, which are counted at the end.
    usage: Usage,
}

impl Tree {
    /// An fd for directory `rel`, creating missing directories on the way;
    /// refuses symlinks and non-directories on the way.
    fn dir(&mut self, rel: &Path, cx: &Ctx<'_>) -> Result<BorrowedFd<'_>, LayerError> {
        if rel.as_os_str().is_empty() {
            return Ok(self.root.as_fd());
        }
        let cached = matches!(&self.parent, Some((p, _)) if p == rel);
        if !cached {
            let fd = match open_beneath(self.root.as_fd(), rel) {
                Ok(fd) => fd,
                Err(Errno::ENOENT) => self.make_dirs(rel, cx)?,
                Err(e @ (Errno::ELOOP | Errno::ENOTDIR)) => {
                    return Err(cx.resolve(&self.culprit(rel), e));
                }
                Err(e) => return Err(cx.resolve(rel, e)),
            };
            self.parent = Some((rel.to_path_buf(), fd));
        }
        match &self.parent {
            Some((_, fd)) => Ok(fd.as_fd()),
            None => Ok(self.root.as_fd()),
        }
    }

    /// The first prefix of `rel` that cannot be resolved (the symlink or file in
    /// the way), for an error that points at it.
    fn culprit(&self, rel: &Path) -> PathBuf {
        let mut cur = PathBuf::new();
        for c in rel.components() {
            cur.push(c);
            if open_beneath(self.root.as_fd(), &cur).is_err() {
                return cur;
            }
        }
        rel.to_path_buf()
    }

    /// Makes the missing directories of `rel` one component at a time, each
    /// resolved like any parent.
    fn make_dirs(&mut self, rel: &Path, cx: &Ctx<'_>) -> Result<OwnedFd, LayerError> {
        let mut cur = PathBuf::new();
        let mut fd: Option<OwnedFd> = None;
        for c in rel.components() {
            cur.push(c);
            let c = Path::new(c.as_os_str());
            let at = fd.as_ref().unwrap_or(&self.root).as_fd();
            let next = match open_beneath(at, c) {
                Ok(f) => f,
                Err(Errno::ENOENT) => {
                    match nix::sys::stat::mkdirat(at, c, Mode::from_bits_truncate(0o755)) {
                        Ok(()) => {
                            self.dirs.insert(cur.clone(), None);
                        }
                        Err(Errno::EEXIST) => {}
                        Err(e) => return Err(cx.errno("create a parent directory of")(e)),
                    }
                    open_beneath(at, c).map_err(|e| cx.resolve(&cur, e))?
                }
                Err(e) => return Err(cx.resolve(&cur, e)),
            };
            fd = Some(next);
        }
        match fd {
            Some(f) => Ok(f),
            None => open_beneath(self.root.as_fd(), Path::new(".")).map_err(|e| cx.resolve(rel, e)),
        }
    }

    /// Removes what an earlier entry put at `path`, so that a later one replaces it.
    fn clear(&mut self, path: &Path, cx: &Ctx<'_>) -> Result<(), LayerError> {
        let (parent, file_name) = split(path);
        let pfd = self.dir(parent, cx)?;
        let st = match nix::sys::stat::fstatat(pfd, file_name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::ENOENT) => return Ok(()),
            Err(e) => return Err(cx.errno("inspect what is in the way of")(e)),
        };
        if is_dir(&st) {
            let proc = proc_path(pfd, file_name);
            let (freed, freed_size) = files_usage(&proc);
            remove_tree(&proc).map_err(cx.io("replace the directory at"))?;
            self.usage.inodes = self.usage.inodes.saturating_sub(freed.inodes);
            self.usage.bytes = self.usage.bytes.saturating_sub(freed.bytes);
            self.size = self.size.saturating_sub(freed_size);
            self.dirs.retain(|d, _| !d.starts_with(path));
            self.parent = None;
        } else {
            nix::unistd::unlinkat(pfd, file_name, nix::unistd::UnlinkatFlags::NoRemoveDir)
                .map_err(cx.errno("replace"))?;
            if st.st_nlink <= 1 {
                self.usage.inodes = self.usage.inodes.saturating_sub(1);
                self.usage.bytes = self.usage.bytes.saturating_sub(st.st_blocks as u64 * 512);
                if st.st_mode & libc::S_IFMT == libc::S_IFREG {
                    self.size = self.size.saturating_sub(st.st_size as u64);
                }
            }
        }
        Ok(())
    }

    /// Runs `create` in the parent of `path`; if something is in the way,
    /// removes it (later entries replace earlier ones) and tries once more.
    fn create<T>(
        &mut self,
        path: &Path,
        cx: &Ctx<'_>,
        op: &'static str,
        mut create: impl FnMut(BorrowedFd<'_>, &OsStr) -> nix::Result<T>,
    ) -> Result<T, LayerError> {
        let (parent, file_name) = split(path);
        let pfd = self.dir(parent, cx)?;
        match create(pfd, file_name) {
            Ok(t) => return Ok(t),
            Err(Errno::EEXIST) => {}
            Err(e) => return Err(cx.errno(op)(e)),
        }
        self.clear(path, cx)?;
        let pfd = self.dir(parent, cx)?;
        create(pfd, file_name).map_err(cx.errno(op))
    }

    /// chown, then chmod (chown clears setuid bits), then xattrs (chown clears
    /// file capabilities), then times, for anything but a regular file.
    fn apply(
        &mut self,
        path: &Path,
        attrs: &Attrs,
        cx: &Ctx<'_>,
        symlink: bool,
        times: bool,
    ) -> Result<(), LayerError> {
        let (parent, f) = split(path);
        let pfd = self.dir(parent, cx)?;
        nix::unistd::fchownat(
            pfd,
            f,
            Some(nix::unistd::Uid::from_raw(attrs.uid)),
            Some(nix::unistd::Gid::from_raw(attrs.gid)),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(cx.errno("chown"))?;
        if !symlink {
            // We just made this entry, as a non-symlink, in a tree only we
            // write to: following is no risk.
            nix::sys::stat::fchmodat(
                pfd,
                f,
                attrs.mode,
                nix::sys::stat::FchmodatFlags::FollowSymlink,
            )
            .map_err(cx.errno("chmod"))?;
        }
        if !attrs.xattrs.is_empty() {
            let proc = proc_path(pfd, f);
            for (k, v) in &attrs.xattrs {
                set_xattr_path(&proc, k, v, cx)?;
            }
        }
        if times {
            nix::sys::stat::utimensat(
                pfd,
                f,
                &attrs.atime,
                &attrs.mtime,
                UtimensatFlags::NoFollowSymlink,
            )
            .map_err(cx.errno("set the times of"))?;
        }
        Ok(())
    }

    fn count(&mut self, path: &Path, cx: &Ctx<'_>) -> Result<(), LayerError> {
        let (parent, f) = split(path);
        let pfd = self.dir(parent, cx)?;
        let st = nix::sys::stat::fstatat(pfd, f, AtFlags::AT_SYMLINK_NOFOLLOW)
            .map_err(cx.errno("stat"))?;
        self.usage.bytes += st.st_blocks as u64 * 512;
        self.usage.inodes += 1;
        Ok(())
    }

    fn mkdir(&mut self, path: &Path, attrs: &Attrs, cx: &Ctx<'_>) -> Result<(), LayerError> {
        if !path.as_os_str().is_empty() {
            let (parent, f) = split(path);
            let pfd = self.dir(parent, cx)?;
            match nix::sys::stat::mkdirat(pfd, f, Mode::from_bits_truncate(0o700)) {
                Ok(()) => {}
                Err(Errno::EEXIST) => {
                    let st = nix::sys::stat::fstatat(pfd, f, AtFlags::AT_SYMLINK_NOFOLLOW)
                        .map_err(cx.errno("inspect"))?;
                    // An existing directory is kept (tar semantics); anything else replaced.
                    if !is_dir(&st) {
                        self.clear(path, cx)?;
                        let pfd = self.dir(parent, cx)?;
                        nix::sys::stat::mkdirat(pfd, f, Mode::from_bits_truncate(0o700))
                            .map_err(cx.errno("create directory"))?;
                    }
                }
                Err(e) => return Err(cx.errno("create directory")(e)),
            }
        }
        self.apply(path, attrs, cx, false, false)?;
        self.dirs
            .insert(path.to_path_buf(), Some((attrs.atime, attrs.mtime)));
        Ok(())
    }

    fn symlink(
        &mut self,
        path: &Path,
        target: &[u8],
        attrs: &Attrs,
        cx: &Ctx<'_>,
    ) -> Result<(), LayerError> {
        // Stored as is: it is only ever resolved inside the container's root,
        // and never followed here.
        let target = CString::new(target).map_err(|_| cx.refuse(Refusal::Nul))?;
        self.create(path, cx, "create symlink", |pfd, f| {
            nix::unistd::symlinkat(target.as_c_str(), pfd, f)
        })?;
        self.apply(path, attrs, cx, true, true)?;
        self.count(path, cx)
    }

    fn hardlink(&mut self, path: &Path, target: &[u8], cx: &Ctx<'_>) -> Result<(), LayerError> {
        let shown = show(target);
        let target = match normalize(target) {
            Ok(t) if !t.as_os_str().is_empty() => t,
            Ok(_) => return Err(cx.refuse(Refusal::HardlinkUnknown(shown))),
            Err(_) => return Err(cx.refuse(Refusal::HardlinkOutside(shown))),
        };
        if target == path {
            return Ok(());
        }
        let (tparent, tname) = split(&target);
        // The target must be a non-directory this layer already made, reached
        // without symlinks: then it cannot be outside.
        let at = if tparent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            tparent
        };
        let tfd = match open_beneath(self.root.as_fd(), at) {
            Ok(fd) => fd,
            Err(Errno::ELOOP) | Err(Errno::EXDEV) => {
                return Err(cx.refuse(Refusal::HardlinkOutside(shown)));
            }
            Err(_) => return Err(cx.refuse(Refusal::HardlinkUnknown(shown))),
        };
        match nix::sys::stat::fstatat(&tfd, tname, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) if !is_dir(&st) => {}
            _ => return Err(cx.refuse(Refusal::HardlinkUnknown(shown))),
        }
        self.create(path, cx, "create hardlink", |pfd, f| {
            nix::unistd::linkat(&tfd, tname, pfd, f, AtFlags::empty())
        })
    }

    fn node(
        &mut self,
        path: &Path,
        kind: SFlag,
        dev: u64,
        attrs: &Attrs,
        cx: &Ctx<'_>,
    ) -> Result<(), LayerError> {
        self.create(path, cx, "create device node or fifo", |pfd, f| {
            nix::sys::stat::mknodat(pfd, f, kind, Mode::from_bits_truncate(0o600), dev)
        })?;
        self.apply(path, attrs, cx, false, true)?;
        self.count(path, cx)
    }

    /// `.wh.NAME`: a 0/0 character device hides NAME of the lower layers. If
    /// this layer itself has NAME, it stays: whiteouts only hide lower layers.
    fn whiteout(&mut self, parent: &Path, hidden: &OsStr, cx: &Ctx<'_>) -> Result<(), LayerError> {
        let pfd = self.dir(parent, cx)?;
        match nix::sys::stat::mknodat(pfd, hidden, SFlag::S_IFCHR, Mode::empty(), 0) {
            Ok(()) => {
                self.usage.inodes += 1;
                Ok(())
            }
            Err(Errno::EEXIST) => Ok(()),
            Err(e) => Err(cx.errno("create the whiteout of")(e)),
        }
    }

    /// `.wh..wh..opq`: the directory hides everything below it in lower layers.
    fn opaque(&mut self, dir: &Path, cx: &Ctx<'_>) -> Result<(), LayerError> {
        let fd = self.dir(dir, cx)?;
        // An O_PATH fd has no xattr calls of its own; its /proc link, followed,
        // is the directory itself, already resolved beneath the root.
        let proc = format!("/proc/self/fd/{}", fd.as_raw_fd());
        let c = CString::new(proc).map_err(|_| cx.refuse(Refusal::Nul))?;
        let k = CString::new(OVERLAY_OPAQUE_XATTR).map_err(|_| cx.refuse(Refusal::Nul))?;
        // SAFETY: setxattr reads two NUL-terminated strings and one byte, all
        // alive for the call.
        let r = unsafe { libc::setxattr(c.as_ptr(), k.as_ptr(), b"y".as_ptr().cast(), 1, 0) };
        Errno::result(r).map_err(cx.errno("mark opaque the directory of"))?;
        Ok(())
    }

    /// Sets directory times, now that nothing more is added to them, and counts
    /// the directories' space.
    fn finish(mut self, diff_id: &Digest) -> Result<Meta, LayerError> {
        self.parent = None;
        let dirs = std::mem::take(&mut self.dirs);
        let mut root_seen = false;
        for (path, times) in &dirs {
            let name = path.display().to_string();
            let cx = Ctx {
                diff_id,
                name: &name,
            };
            let (parent, f) = split(path);
            root_seen |= path.as_os_str().is_empty();
            let pfd = self.dir(parent, &cx)?;
            let st = nix::sys::stat::fstatat(pfd, f, AtFlags::AT_SYMLINK_NOFOLLOW)
                .map_err(cx.errno("stat"))?;
            if let Some((atime, mtime)) = times {
                nix::sys::stat::utimensat(pfd, f, atime, mtime, UtimensatFlags::NoFollowSymlink)
                    .map_err(cx.errno("set the times of"))?;
            }
            self.usage.bytes += st.st_blocks as u64 * 512;
            self.usage.inodes += 1;
        }
        if !root_seen {
            let st = nix::sys::stat::fstat(&self.root).map_err(|e| LayerError::Entry {
                diff_id: diff_id.clone(),
                entry: ".".into(),
                op: "stat",
                source: e.into(),
            })?;
            self.usage.bytes += st.st_blocks as u64 * 512;
            self.usage.inodes += 1;
        }
        Ok(Meta {
            size: self.size,
            bytes: self.usage.bytes,
            inodes: self.usage.inodes,
        })
    }
}

/// Places the entries of one tar into a layer's root dir.
struct Unpacker<'a> {
    diff_id: &'a Digest,
    tree: Tree,
    buf: Vec<u8>,
    /// For errors in the stream: the last entry seen.
    last: Option<String>,
}

enum Kind {
    File,
    Dir,
    Symlink(Vec<u8>),
    Hardlink(Vec<u8>),
    Node(SFlag, u64),
}

impl<'a> Unpacker<'a> {
    fn new(diff_id: &'a Digest, root: OwnedFd) -> Self {
        Unpacker {
            diff_id,
            tree: Tree {
                root,
                parent: None,
                dirs: HashMap::new(),
                size: 0,
                usage: Usage::default(),
            },
            buf: vec![0; COPY_BUFFER],
            last: None,
        }
    }

    fn finish(self) -> Result<Meta, LayerError> {
        self.tree.finish(self.diff_id)
    }

    fn attrs<R: Read>(entry: &mut tar::Entry<'_, R>, cx: &Ctx<'_>) -> Result<Attrs, LayerError> {
        let h = entry.header();
        let old = h.as_old();
        // An empty numeric field (all NULs or spaces, as some writers leave
        // them) is zero, as other tar readers take it.
        let num = |r: io::Result<u64>, raw: &[u8], what| {
            if raw.iter().all(|b| *b == 0 || *b == b' ') {
                return Ok(0);
            }
            r.map_err(|_| cx.refuse(Refusal::BadField(what)))
        };
        let id = |r, raw, what| {
            u32::try_from(num(r, raw, what)?).map_err(|_| cx.refuse(Refusal::BadField(what)))
        };
        let uid = id(h.uid(), &old.uid, "uid")?;
        let gid = id(h.gid(), &old.gid, "gid")?;
        let mode = num(h.mode().map(u64::from), &old.mode, "mode")?;
        let mode = Mode::from_bits_truncate((mode & 0o7777) as libc::mode_t);
        let secs = i64::try_from(num(h.mtime(), &old.mtime, "mtime")?)
            .map_err(|_| cx.refuse(Refusal::BadField("mtime")))?;
        let mut mtime = TimeSpec::new(secs, 0);
        let mut atime = None;
        let mut xattrs = Vec::new();
        if let Some(pax) = entry.pax_extensions().map_err(cx.read())? {
            for ext in pax {
                let ext = ext.map_err(cx.read())?;
                let Ok(key) = ext.key() else { continue };
                match key {
                    "mtime" => {
                        mtime = pax_time(ext.value_bytes())
                            .ok_or_else(|| cx.refuse(Refusal::BadField("PAX mtime")))?;
                    }
                    "atime" => atime = pax_time(ext.value_bytes()),
                    _ => {
                        let Some(x) = key.strip_prefix("SCHILY.xattr.") else {
                            continue;
                        };
                        if !xattr_allowed(x) {
                            tracing::warn!(diff_id = %cx.diff_id, entry = cx.name, xattr = x, "ignoring an overlayfs xattr in a layer");
                            continue;
                        }
                        let x = CString::new(x).map_err(|_| cx.refuse(Refusal::Nul))?;
                        xattrs.push((x, ext.value_bytes().to_vec()));
                    }
                }
            }
        }
        Ok(Attrs {
            uid,
            gid,
            mode,
            atime: atime.unwrap_or(mtime),
            mtime,
            xattrs,
        })
    }

    fn entry<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<(), LayerError> {
        let etype = entry.header().entry_type();
        if etype.is_pax_global_extensions() {
            return Ok(());
        }
        let raw = entry.path_bytes().into_owned();
        let name = show(&raw);
        self.last = Some(name.clone());
        let cx = Ctx {
            diff_id: self.diff_id,
            name: &name,
        };
        let path = normalize(&raw).map_err(|r| cx.refuse(r))?;

        if let Some(file_name) = path.file_name().and_then(|n| n.to_str())
            && let Some(hidden) = file_name.strip_prefix(WHITEOUT_PREFIX)
        {
            let parent = path.parent().unwrap_or(Path::new(""));
            if file_name == OPAQUE {
                return self.tree.opaque(parent, &cx);
            }
            if hidden.starts_with(WHITEOUT_PREFIX) {
                // Other `.wh..wh.` names are AUFS bookkeeping, meaningless here.
                tracing::debug!(diff_id = %self.diff_id, entry = name, "skipping AUFS metadata");
                return Ok(());
            }
            if hidden.is_empty() || hidden == "." || hidden == ".." {
                return Err(cx.refuse(Refusal::BadWhiteout));
            }
            return self.tree.whiteout(parent, OsStr::new(hidden), &cx);
        }

        let kind = match etype {
            tar::EntryType::Directory => Kind::Dir,
            // Pre-POSIX archives mark directories with a trailing slash only.
            tar::EntryType::Regular if raw.ends_with(b"/") => Kind::Dir,
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                Kind::File
            }
            tar::EntryType::Symlink => Kind::Symlink(
                entry
                    .link_name_bytes()
                    .map(|l| l.into_owned())
                    .unwrap_or_default(),
            ),
            tar::EntryType::Link => Kind::Hardlink(
                entry
                    .link_name_bytes()
                    .map(|l| l.into_owned())
                    .unwrap_or_default(),
            ),
            tar::EntryType::Char | tar::EntryType::Block => {
                let h = entry.header();
                let major = h
                    .device_major()
                    .map_err(|_| cx.refuse(Refusal::BadField("device major")))?
                    .unwrap_or(0);
                let minor = h
                    .device_minor()
                    .map_err(|_| cx.refuse(Refusal::BadField("device minor")))?
                    .unwrap_or(0);
                let kind = if etype == tar::EntryType::Char {
                    SFlag::S_IFCHR
                } else {
                    SFlag::S_IFBLK
                };
                Kind::Node(kind, nix::sys::stat::makedev(major.into(), minor.into()))
            }
            tar::EntryType::Fifo => Kind::Node(SFlag::S_IFIFO, 0),
            other => return Err(cx.refuse(Refusal::UnsupportedType(other.as_byte() as char))),
        };
        let attrs = Self::attrs(&mut entry, &cx)?;

        if path.as_os_str().is_empty() {
            // The layer's root can only take on a directory's attributes.
            let what = match kind {
                Kind::Dir => return self.tree.mkdir(&path, &attrs, &cx),
                Kind::File => "file",
                Kind::Symlink(_) => "symlink",
                Kind::Hardlink(_) => "hardlink",
                Kind::Node(..) => "device or fifo",
            };
            return Err(cx.refuse(Refusal::RootNotDir(what)));
        }
        match kind {
            Kind::Dir => self.tree.mkdir(&path, &attrs, &cx),
            Kind::File => self.file(&path, &attrs, &mut entry, &cx),
            Kind::Symlink(target) => self.tree.symlink(&path, &target, &attrs, &cx),
            Kind::Hardlink(target) => self.tree.hardlink(&path, &target, &cx),
            Kind::Node(kind, dev) => self.tree.node(&path, kind, dev, &attrs, &cx),
        }
    }

    fn file<R: Read>(
        &mut self,
        path: &Path,
        attrs: &Attrs,
        entry: &mut tar::Entry<'_, R>,
        cx: &Ctx<'_>,
    ) -> Result<(), LayerError> {
        let flags =
            OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        // Created with its final permission bits, so that with the usual umask
        // and owner no chmod or chown is needed: at tens of thousands of files
        // per layer, syscalls saved are time saved.
        let create_mode = Mode::from_bits_truncate(attrs.mode.bits() & 0o777);
        let fd = self.tree.create(path, cx, "create file", |pfd, f| {
            nix::fcntl::openat(pfd, f, flags, create_mode)
        })?;
        let mut file = File::from(fd);
        let mut written = 0u64;
        loop {
            let n = match entry.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(cx.read()(e)),
            };
            file.write_all(&self.buf[..n]).map_err(cx.io("write"))?;
            written += n as u64;
        }
        let st = nix::sys::stat::fstat(&file).map_err(cx.errno("stat"))?;
        let chown = st.st_uid != attrs.uid || st.st_gid != attrs.gid;
        if chown {
            nix::unistd::fchown(
                &file,
                Some(nix::unistd::Uid::from_raw(attrs.uid)),
                Some(nix::unistd::Gid::from_raw(attrs.gid)),
            )
            .map_err(cx.errno("chown"))?;
        }
        // After chown, which clears setuid and setgid.
        if chown || st.st_mode & 0o7777 != attrs.mode.bits() {
            nix::sys::stat::fchmod(&file, attrs.mode).map_err(cx.errno("chmod"))?;
        }
        for (k, v) in &attrs.xattrs {
            // SAFETY: fsetxattr reads a NUL-terminated name and `v.len()` bytes
            // of `v`, both alive for the call, on an fd we own.
            let r = unsafe {
                libc::fsetxattr(file.as_raw_fd(), k.as_ptr(), v.as_ptr().cast(), v.len(), 0)
            };
            xattr_result(Errno::result(r).map(drop), k, cx)?;
        }
        nix::sys::stat::futimens(&file, &attrs.atime, &attrs.mtime)
            .map_err(cx.errno("set the times of"))?;
        self.tree.usage.bytes += st.st_blocks as u64 * 512;
        self.tree.usage.inodes += 1;
        self.tree.size += written;
        Ok(())
    }
}

/// `/proc/self/fd/<dir>/<name>`: a path whose directory part is already
/// resolved, for the calls that have no `*at` form (lsetxattr, remove_dir_all).
fn proc_path(dir: BorrowedFd<'_>, name: &OsStr) -> PathBuf {
    let mut p = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
    p.push(name);
    p
}

fn set_xattr_path(path: &Path, k: &CString, v: &[u8], cx: &Ctx<'_>) -> Result<(), LayerError> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| cx.refuse(Refusal::Nul))?;
    // SAFETY: lsetxattr reads two NUL-terminated strings and `v.len()` bytes of
    // `v`, all alive for the call; it does not follow a final symlink.
    let r = unsafe { libc::lsetxattr(c.as_ptr(), k.as_ptr(), v.as_ptr().cast(), v.len(), 0) };
    xattr_result(Errno::result(r).map(drop), k, cx)
}

/// An xattr the filesystem cannot hold (or, for `user.*`, a symlink or device
/// cannot) is dropped with a warning, as other runtimes do; other failures
/// fail the layer.
fn xattr_result(r: nix::Result<()>, k: &CString, cx: &Ctx<'_>) -> Result<(), LayerError> {
    match r {
        Ok(()) => Ok(()),
        Err(Errno::EPERM) if k.as_bytes().starts_with(b"user.") => {
            tracing::warn!(diff_id = %cx.diff_id, entry = cx.name, xattr = ?k, "xattr not allowed here; skipped");
            Ok(())
        }
        Err(Errno::EOPNOTSUPP) => {
            tracing::warn!(diff_id = %cx.diff_id, entry = cx.name, xattr = ?k, "xattr not supported here; skipped");
            Ok(())
        }
        Err(e) => Err(cx.errno("set an xattr on")(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::super::content::disk_usage;
    use super::*;
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    use std::sync::{Arc, Barrier};

    /// Writes tar bytes by hand, so that tests can make the entries that
    /// `tar::Builder` refuses to (`..`, absolute paths).
    #[derive(Default)]
    struct Tar {
        out: Vec<u8>,
    }

    struct E<'a> {
        name: &'a str,
        kind: tar::EntryType,
        data: &'a [u8],
        mode: u32,
        uid: u64,
        gid: u64,
        mtime: u64,
        link: &'a str,
        dev: (u32, u32),
    }

    fn e(name: &str, kind: tar::EntryType) -> E<'_> {
        E {
            name,
            kind,
            data: b"",
            mode: if kind == tar::EntryType::Directory {
                0o755
            } else {
                0o644
            },
            uid: 0,
            gid: 0,
            mtime: 1_600_000_000,
            link: "",
            dev: (0, 0),
        }
    }

    impl Tar {
        fn raw(&mut self, e: &E<'_>) {
            let mut h = tar::Header::new_ustar();
            let name = e.name.as_bytes();
            assert!(name.len() <= 100, "test names must fit the ustar field");
            h.as_old_mut().name[..name.len()].copy_from_slice(name);
            let link = e.link.as_bytes();
            h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
            h.set_entry_type(e.kind);
            h.set_size(e.data.len() as u64);
            h.set_mode(e.mode);
            h.set_uid(e.uid);
            h.set_gid(e.gid);
            h.set_mtime(e.mtime);
            h.set_device_major(e.dev.0).unwrap();
            h.set_device_minor(e.dev.1).unwrap();
            h.set_cksum();
            self.out.extend_from_slice(h.as_bytes());
            self.out.extend_from_slice(e.data);
            let pad = (512 - e.data.len() % 512) % 512;
            self.out.extend(std::iter::repeat_n(0, pad));
        }

        fn add(mut self, e: E<'_>) -> Self {
            self.raw(&e);
            self
        }

        fn file(self, name: &str, data: &[u8]) -> Self {
            let mut x = e(name, tar::EntryType::Regular);
            x.data = data;
            self.add(x)
        }

        fn dir(self, name: &str) -> Self {
            self.add(e(name, tar::EntryType::Directory))
        }

        fn symlink(self, name: &str, target: &str) -> Self {
            let mut x = e(name, tar::EntryType::Symlink);
            x.link = target;
            self.add(x)
        }

        fn hardlink(self, name: &str, target: &str) -> Self {
            let mut x = e(name, tar::EntryType::Link);
            x.link = target;
            self.add(x)
        }

        /// A PAX header for the next entry.
        fn pax(mut self, records: &[(&str, &[u8])]) -> Self {
            let mut data = Vec::new();
            for (k, v) in records {
                let body = k.len() + v.len() + 3; // ' ', '=', '\n'
                let mut len = body + 1;
                while len != body + len.to_string().len() {
                    len = body + len.to_string().len();
                }
                data.extend_from_slice(format!("{len} {k}=").as_bytes());
                data.extend_from_slice(v);
                data.push(b'\n');
            }
            let mut x = e("././@PaxHeader", tar::EntryType::XHeader);
            x.data = &data;
            self.raw(&x);
            self
        }

        fn finish(mut self) -> Vec<u8> {
            self.out.extend(std::iter::repeat_n(0, 1024));
            self.out
        }
    }

    fn store() -> (tempfile::TempDir, LayerStore) {
        let t = tempfile::tempdir().unwrap();
        let s = LayerStore::open(t.path()).unwrap();
        (t, s)
    }

    fn unpack(s: &LayerStore, tar: &[u8]) -> Result<Layer, LayerError> {
        s.unpack(tar, Compression::None, &Digest::of(tar))
    }

    fn xattr(p: &Path, name: &str) -> Option<Vec<u8>> {
        let c = CString::new(p.as_os_str().as_bytes()).unwrap();
        let n = CString::new(name).unwrap();
        let mut buf = vec![0u8; 256];
        // SAFETY: reads at most buf.len() bytes into buf; strings are NUL-terminated.
        let r =
            unsafe { libc::lgetxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        (r >= 0).then(|| buf[..r as usize].to_vec())
    }

    fn md(p: &Path) -> fs::Metadata {
        fs::symlink_metadata(p).unwrap()
    }

    /// No temp dir, no lock and no layer dir: a failed unpack leaves nothing.
    fn assert_empty(s: &LayerStore) {
        let left: Vec<_> = fs::read_dir(&s.layers)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(left.is_empty(), "left behind: {left:?}");
    }

    #[test]
    fn media_types_and_magic() {
        use Compression::*;
        for (mt, c) in [
            ("application/vnd.oci.image.layer.v1.tar", None),
            ("application/vnd.oci.image.layer.v1.tar+gzip", Gzip),
            ("application/vnd.oci.image.layer.v1.tar+zstd", Zstd),
            ("application/vnd.docker.image.rootfs.diff.tar.gzip", Gzip),
            (
                "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
                Gzip,
            ),
        ] {
            assert_eq!(Compression::from_media_type(mt).unwrap(), c, "{mt}");
        }
        let err = Compression::from_media_type("application/x-rar").unwrap_err();
        assert!(err.to_string().contains("application/x-rar"), "{err}");
        assert_eq!(Compression::detect(&[0x1f, 0x8b, 8]), Gzip);
        assert_eq!(Compression::detect(&[0x28, 0xb5, 0x2f, 0xfd, 0]), Zstd);
        assert_eq!(Compression::detect(b"etc/\0\0\0"), None);
    }

    #[test]
    fn normalize_paths() {
        assert_eq!(normalize(b"./a//b/./c/").unwrap(), Path::new("a/b/c"));
        assert_eq!(normalize(b"a/../b").unwrap(), Path::new("b"));
        assert_eq!(normalize(b"./").unwrap(), Path::new(""));
        assert_eq!(normalize(b"a/../../b"), Err(Refusal::DotDot));
        assert_eq!(normalize(b"/etc/passwd"), Err(Refusal::Absolute));
    }

    #[test]
    fn pax_times() {
        assert_eq!(
            pax_time(b"1700000000.123456789"),
            Some(TimeSpec::new(1_700_000_000, 123_456_789))
        );
        assert_eq!(pax_time(b"5.5"), Some(TimeSpec::new(5, 500_000_000)));
        assert_eq!(pax_time(b"7"), Some(TimeSpec::new(7, 0)));
        assert_eq!(pax_time(b"-1.5"), Some(TimeSpec::new(-2, 500_000_000)));
        assert_eq!(pax_time(b"x"), Option::None);
    }

    #[test]
    fn unpacks_files_dirs_links_devices_with_their_metadata() {
        let (_t, s) = store();
        let mut setuid = e("bin/su", tar::EntryType::Regular);
        setuid.data = b"#!/bin/sh\n";
        setuid.mode = 0o4755;
        setuid.uid = 1000;
        setuid.gid = 2000;
        setuid.mtime = 1_234_567_890;
        let mut sticky = e("tmp/", tar::EntryType::Directory);
        sticky.mode = 0o1777;
        let mut dir = e("etc/", tar::EntryType::Directory);
        dir.mtime = 1_000_000_000;
        dir.uid = 7;
        let mut null = e("dev/null", tar::EntryType::Char);
        null.dev = (1, 3);
        null.mode = 0o666;
        let mut blk = e("dev/sda", tar::EntryType::Block);
        blk.dev = (8, 0);
        let fifo = e("run/fifo", tar::EntryType::Fifo);
        let mut owned_link = e("etc/owned-link", tar::EntryType::Symlink);
        owned_link.link = "passwd";
        owned_link.uid = 33;
        let tar = Tar::default()
            .dir("./")
            .add(dir)
            .file("etc/passwd", b"root:x:0:0::/root:/bin/sh\n")
            .pax(&[
                ("mtime", b"1500000000.25"),
                ("SCHILY.xattr.user.comment", b"hello"),
                (
                    "SCHILY.xattr.security.capability",
                    &[
                        1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                    ],
                ),
                ("SCHILY.xattr.trusted.overlay.redirect", b"/elsewhere"),
            ])
            .file("usr/bin/ping", b"ELF")
            .add(setuid)
            .add(sticky)
            .symlink("etc/localtime", "/usr/share/zoneinfo/UTC")
            .add(owned_link)
            .hardlink("etc/passwd-", "etc/passwd")
            .add(null)
            .add(blk)
            .add(fifo)
            .finish();
        let layer = unpack(&s, &tar).unwrap();
        let fs_dir = layer.path.clone();
        assert_eq!(s.get(&layer.diff_id), Some(fs_dir.clone()));
        assert_eq!(layer.size, 26 + 3 + 10);

        assert_eq!(
            fs::read(fs_dir.join("etc/passwd")).unwrap(),
            b"root:x:0:0::/root:/bin/sh\n"
        );
        // Implicit parents exist.
        assert!(md(&fs_dir.join("usr/bin")).is_dir());
        let su = md(&fs_dir.join("bin/su"));
        assert_eq!(su.permissions().mode() & 0o7777, 0o4755);
        assert_eq!((su.uid(), su.gid()), (1000, 2000));
        assert_eq!(su.mtime(), 1_234_567_890);
        assert_eq!(
            md(&fs_dir.join("tmp")).permissions().mode() & 0o7777,
            0o1777
        );
        // The directory's mtime survives the entries added to it afterwards.
        let etc = md(&fs_dir.join("etc"));
        assert_eq!(etc.mtime(), 1_000_000_000);
        assert_eq!(etc.uid(), 7);
        // PAX: nanosecond mtime and xattrs; overlayfs's own xattrs are dropped.
        let ping = md(&fs_dir.join("usr/bin/ping"));
        assert_eq!(
            (ping.mtime(), ping.mtime_nsec()),
            (1_500_000_000, 250_000_000)
        );
        assert_eq!(
            xattr(&fs_dir.join("usr/bin/ping"), "user.comment").unwrap(),
            b"hello"
        );
        assert!(xattr(&fs_dir.join("usr/bin/ping"), "security.capability").is_some());
        assert!(xattr(&fs_dir.join("usr/bin/ping"), "trusted.overlay.redirect").is_none());
        // Symlinks are stored, not followed, and keep their owner.
        assert_eq!(
            fs::read_link(fs_dir.join("etc/localtime")).unwrap(),
            Path::new("/usr/share/zoneinfo/UTC")
        );
        assert_eq!(md(&fs_dir.join("etc/owned-link")).uid(), 33);
        // Hardlinks share the inode.
        assert_eq!(
            md(&fs_dir.join("etc/passwd-")).ino(),
            md(&fs_dir.join("etc/passwd")).ino()
        );
        let null = md(&fs_dir.join("dev/null"));
        assert!(null.file_type().is_char_device());
        assert_eq!(null.rdev(), nix::sys::stat::makedev(1, 3));
        assert_eq!(null.permissions().mode() & 0o777, 0o666);
        assert!(md(&fs_dir.join("dev/sda")).file_type().is_block_device());
        assert!(md(&fs_dir.join("run/fifo")).file_type().is_fifo());

        assert_eq!(s.list().unwrap(), vec![layer.diff_id.clone()]);
        let u = s.usage().unwrap();
        let walked = disk_usage(&s.layers).unwrap();
        // One hardlink is one inode; measured-at-unpack must match a walk.
        assert_eq!(u, walked, "recorded {u:?}, walked {walked:?}");
    }

    #[test]
    fn whiteouts_and_opaque_dirs_become_overlay_ones() {
        let (_t, s) = store();
        let tar = Tar::default()
            .dir("etc/")
            .file("etc/.wh.hosts", b"")
            .file("var/lib/.wh..wh..opq", b"")
            .file("var/lib/kept", b"x")
            .file("same/file", b"mine")
            .file("same/.wh.file", b"")
            .file("a/.wh..wh.plnk", b"")
            .finish();
        let layer = unpack(&s, &tar).unwrap();
        let hosts = md(&layer.path.join("etc/hosts"));
        assert!(hosts.file_type().is_char_device());
        assert_eq!(hosts.rdev(), 0);
        assert!(!layer.path.join("etc/.wh.hosts").exists());
        assert_eq!(
            xattr(&layer.path.join("var/lib"), "trusted.overlay.opaque").unwrap(),
            b"y"
        );
        assert!(!layer.path.join("var/lib/.wh..wh..opq").exists());
        assert!(layer.path.join("var/lib/kept").exists());
        // A whiteout hides lower layers only, not this layer's own file.
        assert_eq!(fs::read(layer.path.join("same/file")).unwrap(), b"mine");
        // AUFS bookkeeping is dropped.
        assert!(!layer.path.join("a/.wh..wh.plnk").exists());
        assert!(!layer.path.join("a/.wh.plnk").exists());
        let err = unpack(&s, &Tar::default().file("x/.wh.", b"").finish()).unwrap_err();
        assert!(
            matches!(
                err,
                LayerError::Refused {
                    reason: Refusal::BadWhiteout,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn later_entries_replace_earlier_ones() {
        let (_t, s) = store();
        let tar = Tar::default()
            .file("a", b"first")
            .file("a", b"second")
            .file("b", b"file")
            .dir("b/")
            .file("b/inside", b"x")
            .dir("c/")
            .file("c/old", b"gone")
            .file("c", b"now a file")
            .symlink("d", "a")
            .file("d", b"no longer a link")
            .finish();
        let layer = unpack(&s, &tar).unwrap();
        let p = &layer.path;
        assert_eq!(fs::read(p.join("a")).unwrap(), b"second");
        assert!(md(&p.join("b")).is_dir());
        assert!(p.join("b/inside").exists());
        assert_eq!(fs::read(p.join("c")).unwrap(), b"now a file");
        assert!(md(&p.join("d")).is_file());
        assert_eq!(fs::read(p.join("a")).unwrap(), b"second");
        assert_eq!(s.usage().unwrap(), disk_usage(&s.layers).unwrap());
    }

    /// Every malicious layer is refused with an error naming the entry, writes
    /// nothing outside, and leaves nothing in the store.
    #[test]
    fn malicious_layers_are_refused() {
        let (t, s) = store();
        let victim = t.path().join("victim");
        fs::create_dir(&victim).unwrap();
        // The layer's temp root is <t>/layers/.tmp-<hex>/fs: three levels up is <t>.
        let cases: Vec<(Vec<u8>, &str, Refusal)> = vec![
            (
                Tar::default().file("../../../evil", b"x").finish(),
                "../../../evil",
                Refusal::DotDot,
            ),
            (
                Tar::default().file("ok/../../../../evil", b"x").finish(),
                "ok/../../../../evil",
                Refusal::DotDot,
            ),
            (
                Tar::default().file("/evil", b"x").finish(),
                "/evil",
                Refusal::Absolute,
            ),
            (
                Tar::default()
                    .symlink("a", victim.to_str().unwrap())
                    .file("a/pwned", b"x")
                    .finish(),
                "a/pwned",
                Refusal::ThroughSymlink("a".into()),
            ),
            (
                Tar::default()
                    .symlink("root", "/")
                    .file("root/etc/passwd", b"x")
                    .finish(),
                "root/etc/passwd",
                Refusal::ThroughSymlink("root".into()),
            ),
            (
                Tar::default()
                    .symlink("up", "../../..")
                    .dir("up/evil/")
                    .finish(),
                "up/evil/",
                Refusal::ThroughSymlink("up".into()),
            ),
            (
                Tar::default()
                    .hardlink("h", "../../../../etc/passwd")
                    .finish(),
                "h",
                Refusal::HardlinkOutside("../../../../etc/passwd".into()),
            ),
            (
                Tar::default().hardlink("h", "/etc/passwd").finish(),
                "h",
                Refusal::HardlinkOutside("/etc/passwd".into()),
            ),
            (
                Tar::default()
                    .symlink("r", "/")
                    .hardlink("h", "r/etc/passwd")
                    .finish(),
                "h",
                Refusal::HardlinkOutside("r/etc/passwd".into()),
            ),
            (
                Tar::default().hardlink("h", "etc/passwd").finish(),
                "h",
                Refusal::HardlinkUnknown("etc/passwd".into()),
            ),
            (
                Tar::default().dir("d/").hardlink("h", "d").finish(),
                "h",
                Refusal::HardlinkUnknown("d".into()),
            ),
            (
                Tar::default().file("f", b"x").file("f/x", b"y").finish(),
                "f/x",
                Refusal::ParentNotDir("f".into()),
            ),
            (
                Tar::default().file(".", b"x").finish(),
                ".",
                Refusal::RootNotDir("file"),
            ),
        ];
        for (tar, entry, reason) in cases {
            let err = unpack(&s, &tar).unwrap_err();
            let msg = err.to_string();
            match &err {
                LayerError::Refused {
                    entry: got,
                    reason: r,
                    ..
                } => {
                    assert_eq!(got, entry, "{msg}");
                    assert_eq!(r, &reason, "{msg}");
                }
                other => panic!("{entry}: expected a refusal, got {other}"),
            }
            assert!(msg.contains(entry), "{msg}");
            assert!(msg.contains(&Digest::of(&tar).to_string()), "{msg}");
            assert!(!t.path().join("evil").exists(), "{entry} escaped");
            assert!(!t.path().join("layers/evil").exists(), "{entry} escaped");
            assert_eq!(fs::read_dir(&victim).unwrap().count(), 0, "{entry} escaped");
            assert_empty(&s);
        }
        // The store still works.
        unpack(&s, &Tar::default().file("fine", b"ok").finish()).unwrap();
    }

    #[test]
    fn a_symlink_replacing_a_dir_cannot_be_written_through() {
        // `d/` is a real dir, then `d` becomes a symlink out, then `d/x` must
        // not follow it (the parent-fd cache must not hide the replacement).
        let (t, s) = store();
        let victim = t.path().join("victim");
        fs::create_dir(&victim).unwrap();
        let tar = Tar::default()
            .dir("d/")
            .file("d/a", b"1")
            .symlink("d", victim.to_str().unwrap())
            .file("d/x", b"2")
            .finish();
        let err = unpack(&s, &tar).unwrap_err();
        assert!(
            matches!(
                &err,
                LayerError::Refused {
                    reason: Refusal::ThroughSymlink(_),
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(fs::read_dir(&victim).unwrap().count(), 0);
        assert_empty(&s);
    }

    #[test]
    fn diff_id_mismatch_fails_and_leaves_nothing() {
        let (_t, s) = store();
        let tar = Tar::default().file("f", b"data").finish();
        let wrong = Digest::of(b"not this layer");
        let err = s.unpack(&tar[..], Compression::None, &wrong).unwrap_err();
        match &err {
            LayerError::DiffIdMismatch {
                expected,
                actual,
                size,
            } => {
                assert_eq!(expected, &wrong);
                assert_eq!(actual, &Digest::of(&tar));
                assert_eq!(*size, tar.len() as u64);
            }
            other => panic!("{other}"),
        }
        assert!(err.to_string().contains(&wrong.to_string()));
        assert_empty(&s);
        assert!(s.get(&wrong).is_none());
    }

    #[test]
    fn truncated_and_corrupt_streams_fail() {
        let (_t, s) = store();
        let tar = Tar::default().file("f", &[7u8; 5000]).finish();
        let d = Digest::of(&tar);
        let err = s.unpack(&tar[..3000], Compression::None, &d).unwrap_err();
        assert!(matches!(err, LayerError::Read { .. }), "{err}");
        assert_empty(&s);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        let mut gz = gz.finish().unwrap();
        let n = gz.len();
        gz[n / 2] ^= 0xff;
        let err = s.unpack(&gz[..], Compression::Gzip, &d).unwrap_err();
        assert!(
            matches!(
                err,
                LayerError::Read { .. } | LayerError::DiffIdMismatch { .. }
            ),
            "{err}"
        );
        assert_empty(&s);
    }

    fn big_tar() -> Vec<u8> {
        let mut t = Tar::default().dir("data/");
        let blob: Vec<u8> = (0..300_000u32).map(|i| (i * 31 % 251) as u8).collect();
        for i in 0..20 {
            let name = format!("data/f{i}");
            let mut x = e(&name, tar::EntryType::Regular);
            x.data = &blob;
            t.raw(&x);
        }
        t.finish()
    }

    #[test]
    fn gzip_zstd_and_plain() {
        let tar = big_tar();
        let d = Digest::of(&tar);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&tar).unwrap();
        let gz = gz.finish().unwrap();
        let zst = zstd::stream::encode_all(&tar[..], 3).unwrap();
        for (c, bytes) in [
            (Compression::None, &tar),
            (Compression::Gzip, &gz),
            (Compression::Zstd, &zst),
        ] {
            let (_t, s) = store();
            assert_eq!(Compression::detect(bytes), c);
            let l = s.unpack(&bytes[..], c, &d).unwrap();
            assert_eq!(
                fs::read(l.path.join("data/f19")).unwrap().len(),
                300_000,
                "{c:?}"
            );
            assert_eq!(l.size, 20 * 300_000);
        }
    }

    #[test]
    fn trailing_padding_counts_for_the_diff_id() {
        // Real tars end with more than two zero blocks (records of 10 KiB).
        let (_t, s) = store();
        let mut tar = Tar::default().file("f", b"x").finish();
        tar.extend(std::iter::repeat_n(0, 10240 - tar.len() % 10240));
        unpack(&s, &tar).unwrap();
    }

    /// A reader that fails the test if read: an existing layer must not be read.
    struct Untouchable;
    impl Read for Untouchable {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            Err(io::Error::other("the stream of an existing layer was read"))
        }
    }

    #[test]
    fn unpack_is_idempotent() {
        let (_t, s) = store();
        let tar = Tar::default().file("f", b"x").finish();
        let a = unpack(&s, &tar).unwrap();
        let b = s
            .unpack(Untouchable, Compression::None, &a.diff_id)
            .unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn concurrent_unpacks_of_one_layer() {
        let (_t, s) = store();
        let tar = Arc::new(big_tar());
        let d = Digest::of(&tar);
        let barrier = Arc::new(Barrier::new(2));
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let (s, tar, d, barrier) = (s.clone(), tar.clone(), d.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    s.unpack(&tar[..], Compression::None, &d).unwrap()
                })
            })
            .collect();
        let layers: Vec<Layer> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        assert_eq!(layers[0], layers[1]);
        assert_eq!(s.list().unwrap(), vec![d]);
        let names: Vec<_> = fs::read_dir(&s.layers)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn open_removes_crashed_unpacks_but_not_live_ones() {
        let t = tempfile::tempdir().unwrap();
        let s = LayerStore::open(t.path()).unwrap();
        let crashed = Digest::of(b"crashed");
        let live = Digest::of(b"live");
        fs::create_dir_all(s.tmp_dir(&crashed).join("fs/etc")).unwrap();
        fs::create_dir_all(s.tmp_dir(&live).join("fs")).unwrap();
        let held = PathLock::acquire(&s.lock_path(&live), true)
            .unwrap()
            .unwrap();
        // Opening from another "process" (a new open file description).
        LayerStore::open(t.path()).unwrap();
        assert!(!s.tmp_dir(&crashed).exists());
        assert!(s.tmp_dir(&live).exists());
        drop(held);
        LayerStore::open(t.path()).unwrap();
        assert_empty(&s);
    }

    #[test]
    fn remove_and_list() {
        let (_t, s) = store();
        let a = unpack(&s, &Tar::default().file("a", b"a").finish()).unwrap();
        let b = unpack(&s, &Tar::default().file("b", b"b").finish()).unwrap();
        let mut both = vec![a.diff_id.clone(), b.diff_id.clone()];
        both.sort();
        assert_eq!(s.list().unwrap(), both);
        s.remove(&a.diff_id).unwrap();
        assert!(s.get(&a.diff_id).is_none());
        assert_eq!(s.list().unwrap(), vec![b.diff_id.clone()]);
        // Removing again is fine.
        s.remove(&a.diff_id).unwrap();
        s.remove(&b.diff_id).unwrap();
        assert_empty(&s);
        assert_eq!(s.usage().unwrap(), disk_usage(&s.layers).unwrap());
    }
}
