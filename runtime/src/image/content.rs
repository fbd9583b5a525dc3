//! The content store: blobs (manifests, configs, layers) addressed by their sha256.
//!
//! Layout under the store's root:
//!
//! ```text
//! blobs/sha256/<hex>          committed blobs, verified, read-only
//! ingest/<hex>/data           the partial data of a download, kept for resuming
//! ingest/<hex>/lock           flock'ed by whoever writes that digest
//! ```
//!
//! A blob only ever appears under `blobs/` by `rename(2)` of a complete file whose
//! size and digest were checked and whose data was fsynced, so a `kill -9` (or a
//! power cut) at any moment leaves either no blob or the whole blob. Writers of
//! one digest are serialized by an flock on its ingest lock file, which covers
//! both the threads of this process and other processes: two pulls of the same
//! image download each blob once, the second finding it [`Ingest::Present`].

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use thiserror::Error;

use super::digest::{Digest, Digester};

/// Data a write buffers before it reaches the kernel: network reads are small,
/// and one large write costs less than many small ones.
const WRITE_BUFFER: usize = 256 * 1024;

#[derive(Debug, Error)]
pub enum ContentError {
    #[error("content store: cannot {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("blob {0} is not in the content store")]
    NotFound(Digest),
    #[error("blob {digest} is {size} bytes, over the limit of {max} bytes")]
    TooLarge { digest: Digest, size: u64, max: u64 },
    #[error("blob {digest}: received more than the expected {expected} bytes ({written} so far)")]
    Overflow {
        digest: Digest,
        expected: u64,
        written: u64,
    },
    #[error("blob {digest} is truncated: expected {expected} bytes, got {actual}")]
    Truncated {
        digest: Digest,
        expected: u64,
        actual: u64,
    },
    #[error(
        "blob digest mismatch: expected {expected} ({}), got {actual} ({actual_size} bytes)",
        match .expected_size { Some(n) => format!("{n} bytes"), None => "size unknown".to_string() }
    )]
    Mismatch {
        expected: Digest,
        actual: Digest,
        expected_size: Option<u64>,
        actual_size: u64,
    },
    #[error("blob {digest} is corrupt on disk: its content hashes to {actual}")]
    Corrupt { digest: Digest, actual: Digest },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ContentError + 'a {
    move |source| ContentError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Space taken on disk: allocated bytes (as `du` counts them) and inodes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub bytes: u64,
    pub inodes: u64,
}

impl std::ops::Add for Usage {
    type Output = Usage;
    fn add(self, o: Usage) -> Usage {
        Usage {
            bytes: self.bytes + o.bytes,
            inodes: self.inodes + o.inodes,
        }
    }
}

impl std::ops::AddAssign for Usage {
    fn add_assign(&mut self, o: Usage) {
        *self = *self + o;
    }
}

/// Walks `path` without following symlinks and counts each inode once (hardlinks
/// share an inode; counting them twice would overstate what deleting frees).
/// A missing `path` uses nothing.
pub fn disk_usage(path: &Path) -> io::Result<Usage> {
    let mut usage = Usage::default();
    let mut seen = std::collections::HashSet::new();
    let mut stack = vec![path.to_path_buf()];
    while let Some(p) = stack.pop() {
        let md = match fs::symlink_metadata(&p) {
            Ok(md) => md,
            // Removed while we walk: it no longer uses anything.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if md.nlink() > 1 && !md.is_dir() && !seen.insert((md.dev(), md.ino())) {
            continue;
        }
        usage.bytes += md.blocks() * 512;
        usage.inodes += 1;
        if md.is_dir() {
            let entries = match fs::read_dir(&p) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            for e in entries {
                stack.push(e?.path());
            }
        }
    }
    Ok(usage)
}

/// An exclusive flock on a lock file that may be unlinked by its holder.
///
/// Unlinking lock files keeps the store from filling with them, but then a
/// waiter can end up locking an inode that is no longer at `path`; so after
/// locking we check that `path` still names our inode, and start over if not.
pub(crate) struct PathLock {
    lock: Flock<File>,
    path: PathBuf,
}

impl PathLock {
    /// Takes the lock, waiting for it unless `wait` is false (then `None` if held).
    /// Creates the lock file and its parent directory as needed.
    pub(crate) fn acquire(path: &Path, wait: bool) -> io::Result<Option<PathLock>> {
        let parent = path.parent().unwrap_or(Path::new("/"));
        loop {
            match fs::create_dir_all(parent) {
                Ok(()) => {}
                // mkdir found the directory, and its holder removed it before
                // create_dir_all checked that it is one: make it again. Only
                // a non-directory in the way is an error (it would not go away).
                Err(e)
                    if e.kind() == io::ErrorKind::AlreadyExists
                        && !fs::metadata(parent).is_ok_and(|m| !m.is_dir()) =>
                {
                    continue;
                }
                Err(e) => return Err(e),
            }
            let file = match OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(path)
            {
                Ok(f) => f,
                // The holder removed the directory between our mkdir and open.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            let arg = if wait {
                FlockArg::LockExclusive
            } else {
                FlockArg::LockExclusiveNonblock
            };
            let lock = match Flock::lock(file, arg) {
                Ok(l) => l,
                Err((_, nix::errno::Errno::EWOULDBLOCK)) if !wait => return Ok(None),
                Err((_, nix::errno::Errno::EINTR)) => continue,
                Err((_, e)) => return Err(e.into()),
            };
            let ours = lock.metadata()?;
            match fs::metadata(path) {
                Ok(now) if now.dev() == ours.dev() && now.ino() == ours.ino() => {
                    return Ok(Some(PathLock {
                        lock,
                        path: path.to_path_buf(),
                    }));
                }
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Removes the lock file while still holding the lock, then releases it.
    pub(crate) fn unlink(self) -> io::Result<()> {
        let r = fs::remove_file(&self.path);
        drop(self.lock);
        match r {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// fsyncs a directory so that a rename into it survives a power cut.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The content-addressed blob store. Cheap to clone; every method is blocking
/// I/O (call it from `spawn_blocking` in async code).
#[derive(Debug, Clone)]
pub struct ContentStore {
    blobs: PathBuf,
    ingest: PathBuf,
    root: PathBuf,
}

/// The outcome of [`ContentStore::ingest`].
// One per blob, moved straight into a match: boxing the writer would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum Ingest {
    /// The blob is already committed (perhaps by a concurrent writer we waited for).
    Present,
    /// Write the blob through this; it holds the digest's lock until dropped or committed.
    Writer(IngestWriter),
}

impl std::fmt::Debug for Ingest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ingest::Present => f.write_str("Present"),
            Ingest::Writer(w) => write!(f, "Writer({} at {})", w.expected, w.offset),
        }
    }
}

impl ContentStore {
    /// Opens (creating if needed) the store at `root`. Nothing is cleaned up:
    /// partial data under `ingest/` may belong to a live writer in another
    /// process, or be resumed by the next pull.
    pub fn open(root: &Path) -> Result<Self, ContentError> {
        let blobs = root.join("blobs").join("sha256");
        let ingest = root.join("ingest");
        for d in [&blobs, &ingest] {
            fs::create_dir_all(d).map_err(io_err("create", d))?;
        }
        let store = ContentStore {
            blobs,
            ingest,
            root: root.to_path_buf(),
        };
        store.remove_dead_imports();
        Ok(store)
    }

    /// Removes the temporary files of imports whose process is gone (the pid
    /// is in the name: `.import-<pid>-<n>`).
    fn remove_dead_imports(&self) {
        let Ok(dir) = fs::read_dir(&self.ingest) else {
            return;
        };
        for e in dir.flatten() {
            let name = e.file_name();
            let Some(pid) = name
                .to_str()
                .and_then(|n| n.strip_prefix(".import-"))
                .and_then(|r| r.split('-').next())
                .and_then(|p| p.parse::<i32>().ok())
            else {
                continue;
            };
            let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok();
            if !alive {
                let _ = fs::remove_file(e.path());
            }
        }
    }

    /// Where the blob is (or would be) stored.
    pub fn path(&self, d: &Digest) -> PathBuf {
        self.blobs.join(d.hex())
    }

    pub fn contains(&self, d: &Digest) -> bool {
        fs::symlink_metadata(self.path(d)).is_ok_and(|m| m.is_file())
    }

    pub fn open_blob(&self, d: &Digest) -> Result<File, ContentError> {
        let path = self.path(d);
        File::open(&path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => ContentError::NotFound(d.clone()),
            _ => io_err("open", &path)(e),
        })
    }

    /// Reads a whole blob of at most `max` bytes, checking its digest: small blobs
    /// (manifests, configs) are parsed right after, so a bad one must not get that far.
    pub fn read_blob(&self, d: &Digest, max: u64) -> Result<Vec<u8>, ContentError> {
        let path = self.path(d);
        let file = self.open_blob(d)?;
        let size = file.metadata().map_err(io_err("stat", &path))?.len();
        if size > max {
            return Err(ContentError::TooLarge {
                digest: d.clone(),
                size,
                max,
            });
        }
        let mut data = Vec::with_capacity(size as usize);
        file.take(max.saturating_add(1))
            .read_to_end(&mut data)
            .map_err(io_err("read", &path))?;
        if data.len() as u64 > max {
            return Err(ContentError::TooLarge {
                digest: d.clone(),
                size: data.len() as u64,
                max,
            });
        }
        let actual = Digest::of(&data);
        if actual != *d {
            return Err(ContentError::Corrupt {
                digest: d.clone(),
                actual,
            });
        }
        Ok(data)
    }

    /// Stores a small blob held in memory; returns its digest. With `expected`,
    /// refuses data that does not hash to it (nothing is written then).
    pub fn write_blob(
        &self,
        data: &[u8],
        expected: Option<&Digest>,
    ) -> Result<Digest, ContentError> {
        let actual = Digest::of(data);
        if let Some(e) = expected
            && *e != actual
        {
            return Err(ContentError::Mismatch {
                expected: e.clone(),
                actual,
                expected_size: None,
                actual_size: data.len() as u64,
            });
        }
        if self.contains(&actual) {
            return Ok(actual);
        }
        match self.ingest(&actual, Some(data.len() as u64))? {
            Ingest::Present => {}
            Ingest::Writer(mut w) => {
                // Any partial data is of no use: we have the whole blob.
                w.truncate_to(0)?;
                w.write_all(data)?;
                w.commit()?;
            }
        }
        Ok(actual)
    }

    /// Stores a blob read from `r` (of `size` bytes if known), streaming; returns
    /// its digest. With `expected`, goes through [`ContentStore::ingest`] and
    /// refuses data that does not hash to it; without, hashes while writing a
    /// temporary file that is renamed under the digest found.
    pub fn write_from(
        &self,
        r: &mut impl io::Read,
        expected: Option<&Digest>,
        size: Option<u64>,
    ) -> Result<Digest, ContentError> {
        let mut buf = vec![0u8; 1 << 20];
        if let Some(e) = expected {
            match self.ingest(e, size)? {
                Ingest::Present => {}
                Ingest::Writer(mut w) => {
                    w.truncate_to(0)?;
                    loop {
                        let n = r
                            .read(&mut buf)
                            .map_err(io_err("read", &self.ingest_dir(e)))?;
                        if n == 0 {
                            break;
                        }
                        w.write_all(&buf[..n])?;
                    }
                    w.commit()?;
                }
            }
            return Ok(e.clone());
        }
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = self
            .ingest
            .join(format!(".import-{}-{n}", std::process::id()));
        let result = (|| {
            let mut f = File::create(&tmp).map_err(io_err("create", &tmp))?;
            let mut d = super::digest::Digester::new();
            loop {
                let n = r.read(&mut buf).map_err(io_err("read", &tmp))?;
                if n == 0 {
                    break;
                }
                d.update(&buf[..n]);
                io::Write::write_all(&mut f, &buf[..n]).map_err(io_err("write", &tmp))?;
            }
            if let Some(want) = size
                && d.len() != want
            {
                return Err(ContentError::Io {
                    op: "read",
                    path: tmp.clone(),
                    source: io::Error::other(format!("{} bytes, expected {want}", d.len())),
                });
            }
            let digest = d.finish();
            if !self.contains(&digest) {
                f.sync_all().map_err(io_err("sync", &tmp))?;
                let dest = self.path(&digest);
                fs::rename(&tmp, &dest).map_err(io_err("rename", &dest))?;
                sync_dir(&self.blobs).map_err(io_err("sync", &self.blobs))?;
            }
            Ok(digest)
        })();
        let _ = fs::remove_file(&tmp);
        result
    }

    fn ingest_dir(&self, d: &Digest) -> PathBuf {
        self.ingest.join(d.hex())
    }

    /// Begins (or resumes) writing the blob `expected`, of `size` bytes if known.
    ///
    /// Waits for the digest's lock (held by any other writer of it, in this
    /// process or another); if the blob was committed meanwhile, returns
    /// [`Ingest::Present`]. Otherwise the writer is positioned after the partial
    /// data of an earlier interrupted attempt, if any ([`IngestWriter::offset`]);
    /// partial data longer than `size` is discarded.
    pub fn ingest(&self, expected: &Digest, size: Option<u64>) -> Result<Ingest, ContentError> {
        let dir = self.ingest_dir(expected);
        let lock_path = dir.join("lock");
        let lock = PathLock::acquire(&lock_path, true)
            .map_err(io_err("lock", &lock_path))?
            .ok_or_else(|| io_err("lock", &lock_path)(io::ErrorKind::WouldBlock.into()))?;
        if self.contains(expected) {
            // A concurrent writer finished it; leave no ingest behind.
            let data = dir.join("data");
            match fs::remove_file(&data) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(io_err("remove", &data)(e));
                }
                _ => {}
            }
            remove_ingest_dir(&dir, lock);
            return Ok(Ingest::Present);
        }
        let data_path = dir.join("data");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(&data_path)
            .map_err(io_err("create", &data_path))?;
        let mut len = file.metadata().map_err(io_err("stat", &data_path))?.len();
        if size.is_some_and(|s| len > s) {
            file.set_len(0).map_err(io_err("truncate", &data_path))?;
            len = 0;
        }
        let mut w = IngestWriter {
            store: self.clone(),
            expected: expected.clone(),
            size,
            file: BufWriter::with_capacity(WRITE_BUFFER, file),
            data_path,
            offset: len,
            digester: (len == 0).then(Digester::new),
            lock: Some(lock),
        };
        // BufWriter would write at the file's current offset, which is 0.
        w.seek_end()?;
        if len > 0 {
            tracing::debug!(digest = %expected, offset = len, "resuming blob ingest");
        }
        Ok(Ingest::Writer(w))
    }

    /// Removes a blob (a missing one is fine) and any partial data of it that
    /// nobody is writing right now.
    pub fn delete(&self, d: &Digest) -> Result<(), ContentError> {
        let path = self.path(d);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(io_err("remove", &path)(e));
            }
            _ => {}
        }
        let dir = self.ingest_dir(d);
        if dir.exists() {
            let lock_path = dir.join("lock");
            if let Some(lock) =
                PathLock::acquire(&lock_path, false).map_err(io_err("lock", &lock_path))?
            {
                let data = dir.join("data");
                match fs::remove_file(&data) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => {
                        return Err(io_err("remove", &data)(e));
                    }
                    _ => {}
                }
                remove_ingest_dir(&dir, lock);
            }
        }
        Ok(())
    }

    /// Every committed blob with its size in bytes.
    pub fn list(&self) -> Result<Vec<(Digest, u64)>, ContentError> {
        let mut out = Vec::new();
        for e in fs::read_dir(&self.blobs).map_err(io_err("list", &self.blobs))? {
            let e = e.map_err(io_err("list", &self.blobs))?;
            let Some(d) = e
                .file_name()
                .to_str()
                .and_then(|n| Digest::from_hex(n).ok())
            else {
                tracing::debug!(name = ?e.file_name(), "ignoring a stray file among blobs");
                continue;
            };
            match e.metadata() {
                Ok(md) if md.is_file() => out.push((d, md.len())),
                Ok(_) => {}
                // Deleted while we list.
                Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                Err(err) => return Err(io_err("stat", &e.path())(err)),
            }
        }
        out.sort();
        Ok(out)
    }

    /// Disk used by the store: committed blobs and partial downloads.
    pub fn usage(&self) -> Result<Usage, ContentError> {
        disk_usage(&self.root).map_err(io_err("measure", &self.root))
    }
}

/// Drops an ingest's lock file and its directory; best effort, since leftovers
/// are harmless and are reused by the next ingest of that digest.
fn remove_ingest_dir(dir: &Path, lock: PathLock) {
    if let Err(e) = lock.unlink() {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot remove ingest lock");
        return;
    }
    // Fails with ENOTEMPTY when the next writer already created its lock: fine.
    let _ = fs::remove_dir(dir);
}

/// Writes one blob: hashes on the way, checks the size as it goes, and makes the
/// blob visible only on a successful [`commit`](IngestWriter::commit).
///
/// Dropping it without commit keeps the data written so far for a later resume
/// and releases the digest's lock.
pub struct IngestWriter {
    store: ContentStore,
    expected: Digest,
    size: Option<u64>,
    file: BufWriter<File>,
    data_path: PathBuf,
    offset: u64,
    /// The hash of bytes `[0, offset)`; `None` while a resumed prefix is not yet
    /// hashed (hashing it is deferred so that a `truncate_to(0)` right after
    /// resuming, when the server ignored the Range, costs nothing).
    digester: Option<Digester>,
    lock: Option<PathLock>,
}

impl IngestWriter {
    /// Bytes already written: where a resumed download should start (`Range: bytes=<offset>-`).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    pub fn digest(&self) -> &Digest {
        &self.expected
    }

    fn seek_end(&mut self) -> Result<(), ContentError> {
        use std::io::Seek;
        self.file
            .seek(io::SeekFrom::Start(self.offset))
            .map_err(io_err("seek", &self.data_path))
            .map(drop)
    }

    /// Drops everything after the first `n` bytes (e.g. all of it, when the server
    /// answered a Range request with the whole blob).
    pub fn truncate_to(&mut self, n: u64) -> Result<(), ContentError> {
        self.file
            .flush()
            .map_err(io_err("write", &self.data_path))?;
        let n = n.min(self.offset);
        self.file
            .get_ref()
            .set_len(n)
            .map_err(io_err("truncate", &self.data_path))?;
        if n != self.offset {
            self.offset = n;
            self.digester = (n == 0).then(Digester::new);
        }
        self.seek_end()
    }

    fn hash_prefix(&mut self) -> Result<&mut Digester, ContentError> {
        if self.digester.is_none() {
            self.file
                .flush()
                .map_err(io_err("write", &self.data_path))?;
            let mut d = Digester::new();
            let mut buf = vec![0u8; 1 << 20];
            let f = self.file.get_ref();
            while d.len() < self.offset {
                let want = (self.offset - d.len()).min(buf.len() as u64) as usize;
                let n = f
                    .read_at(&mut buf[..want], d.len())
                    .map_err(io_err("read", &self.data_path))?;
                if n == 0 {
                    // Shrunk under us: only possible if someone bypassed the lock.
                    return Err(io_err("read", &self.data_path)(
                        io::ErrorKind::UnexpectedEof.into(),
                    ));
                }
                d.update(&buf[..n]);
            }
            self.digester = Some(d);
        }
        Ok(self.digester.get_or_insert_with(Digester::new))
    }

    pub fn write_all(&mut self, b: &[u8]) -> Result<(), ContentError> {
        if let Some(size) = self.size {
            let total = self.offset + b.len() as u64;
            if total > size {
                // The source is not sending this blob; the partial data is worthless.
                self.truncate_to(0)?;
                return Err(ContentError::Overflow {
                    digest: self.expected.clone(),
                    expected: size,
                    written: total,
                });
            }
        }
        self.hash_prefix()?.update(b);
        self.file
            .write_all(b)
            .map_err(io_err("write", &self.data_path))?;
        self.offset += b.len() as u64;
        Ok(())
    }

    /// Verifies size and digest, makes the data durable and moves it into `blobs/`.
    ///
    /// A short blob fails with [`ContentError::Truncated`] and keeps its data (it
    /// is a prefix to resume from); a wrong digest deletes the data and fails with
    /// [`ContentError::Mismatch`].
    pub fn commit(mut self) -> Result<(), ContentError> {
        self.file
            .flush()
            .map_err(io_err("write", &self.data_path))?;
        if let Some(size) = self.size
            && self.offset < size
        {
            return Err(ContentError::Truncated {
                digest: self.expected.clone(),
                expected: size,
                actual: self.offset,
            });
        }
        let actual = self.hash_prefix()?.clone().finish();
        if actual != self.expected {
            let _ = fs::remove_file(&self.data_path);
            if let Some(lock) = self.lock.take() {
                remove_ingest_dir(&self.store.ingest_dir(&self.expected), lock);
            }
            return Err(ContentError::Mismatch {
                expected: self.expected.clone(),
                actual,
                expected_size: self.size,
                actual_size: self.offset,
            });
        }
        let file = self.file.get_ref();
        file.set_permissions(fs::Permissions::from_mode(0o444))
            .map_err(io_err("chmod", &self.data_path))?;
        file.sync_data().map_err(io_err("sync", &self.data_path))?;
        let dest = self.store.path(&self.expected);
        fs::rename(&self.data_path, &dest).map_err(io_err("commit", &dest))?;
        sync_dir(&self.store.blobs).map_err(io_err("sync", &self.store.blobs))?;
        if let Some(lock) = self.lock.take() {
            remove_ingest_dir(&self.store.ingest_dir(&self.expected), lock);
        }
        tracing::debug!(digest = %self.expected, size = self.offset, "blob committed");
        Ok(())
    }
}

impl Drop for IngestWriter {
    fn drop(&mut self) {
        // Keep what was received for a resume; the lock is released after the flush.
        if self.lock.is_some()
            && let Err(e) = self.file.flush()
        {
            tracing::warn!(digest = %self.expected, error = %e, "cannot save partial blob");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Barrier};

    fn store() -> (tempfile::TempDir, ContentStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = ContentStore::open(dir.path()).unwrap();
        (dir, s)
    }

    fn writer(s: &ContentStore, d: &Digest, size: Option<u64>) -> IngestWriter {
        match s.ingest(d, size).unwrap() {
            Ingest::Writer(w) => w,
            Ingest::Present => panic!("unexpectedly present"),
        }
    }

    fn blob_files(s: &ContentStore) -> Vec<String> {
        fs::read_dir(&s.blobs)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect()
    }

    #[test]
    fn write_then_read_and_list() {
        let (_t, s) = store();
        let d = s.write_blob(b"hello", None).unwrap();
        assert_eq!(d, Digest::of(b"hello"));
        assert!(s.contains(&d));
        assert_eq!(s.read_blob(&d, 5).unwrap(), b"hello");
        assert_eq!(s.list().unwrap(), vec![(d.clone(), 5)]);
        // Idempotent.
        assert_eq!(s.write_blob(b"hello", Some(&d)).unwrap(), d);
        let mut buf = String::new();
        s.open_blob(&d).unwrap().read_to_string(&mut buf).unwrap();
        assert_eq!(buf, "hello");
        // Nothing left in ingest.
        assert_eq!(fs::read_dir(&s.ingest).unwrap().count(), 0);
    }

    #[test]
    fn read_blob_is_bounded() {
        let (_t, s) = store();
        let d = s.write_blob(b"0123456789", None).unwrap();
        let err = s.read_blob(&d, 9).unwrap_err();
        assert!(
            matches!(
                err,
                ContentError::TooLarge {
                    size: 10,
                    max: 9,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains(&d.to_string()));
    }

    #[test]
    fn missing_blob_is_not_found() {
        let (_t, s) = store();
        let d = Digest::of(b"nope");
        assert!(!s.contains(&d));
        let err = s.open_blob(&d).unwrap_err();
        assert!(matches!(err, ContentError::NotFound(_)));
        assert!(err.to_string().contains(d.hex()));
        // Deleting a missing blob is fine.
        s.delete(&d).unwrap();
    }

    #[test]
    fn write_blob_with_wrong_expected_stores_nothing() {
        let (_t, s) = store();
        let wrong = Digest::of(b"other");
        let err = s.write_blob(b"data", Some(&wrong)).unwrap_err();
        assert!(err.to_string().contains(&wrong.to_string()), "{err}");
        assert!(blob_files(&s).is_empty());
    }

    #[test]
    fn ingest_streams_and_commits() {
        let (_t, s) = store();
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        let d = Digest::of(&data);
        let mut w = writer(&s, &d, Some(data.len() as u64));
        assert_eq!(w.offset(), 0);
        for chunk in data.chunks(7_000) {
            w.write_all(chunk).unwrap();
        }
        w.commit().unwrap();
        assert!(s.contains(&d));
        assert_eq!(s.read_blob(&d, u64::MAX).unwrap(), data);
        let mode = fs::metadata(s.path(&d)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o444);
        assert!(matches!(s.ingest(&d, None).unwrap(), Ingest::Present));
        assert_eq!(fs::read_dir(&s.ingest).unwrap().count(), 0);
    }

    #[test]
    fn wrong_digest_is_refused_and_deleted() {
        let (_t, s) = store();
        let expected = Digest::of(b"the real thing");
        let mut w = writer(&s, &expected, Some(14));
        w.write_all(b"something else").unwrap();
        let err = w.commit().unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(&expected.to_string()), "{msg}");
        assert!(
            msg.contains(&Digest::of(b"something else").to_string()),
            "{msg}"
        );
        assert!(msg.contains("14 bytes"), "{msg}");
        assert!(!s.contains(&expected));
        assert!(blob_files(&s).is_empty());
        assert_eq!(fs::read_dir(&s.ingest).unwrap().count(), 0);
        // The bad data is gone: a new attempt starts from zero.
        let w = writer(&s, &expected, Some(14));
        assert_eq!(w.offset(), 0);
    }

    #[test]
    fn wrong_digest_without_size() {
        let (_t, s) = store();
        let expected = Digest::of(b"abc");
        let mut w = writer(&s, &expected, None);
        w.write_all(b"abd").unwrap();
        let err = w.commit().unwrap_err();
        assert!(
            matches!(
                err,
                ContentError::Mismatch {
                    expected_size: None,
                    actual_size: 3,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("size unknown"));
    }

    #[test]
    fn truncated_blob_fails_and_keeps_prefix() {
        let (_t, s) = store();
        let data = b"0123456789";
        let d = Digest::of(data);
        let mut w = writer(&s, &d, Some(10));
        w.write_all(&data[..6]).unwrap();
        let err = w.commit().unwrap_err();
        assert!(
            matches!(
                err,
                ContentError::Truncated {
                    expected: 10,
                    actual: 6,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains(&d.to_string()));
        assert!(!s.contains(&d));
        assert!(blob_files(&s).is_empty());
        let mut w = writer(&s, &d, Some(10));
        assert_eq!(w.offset(), 6);
        w.write_all(&data[6..]).unwrap();
        w.commit().unwrap();
        assert_eq!(s.read_blob(&d, 10).unwrap(), data);
    }

    #[test]
    fn overflow_fails_immediately() {
        let (_t, s) = store();
        let d = Digest::of(b"abc");
        let mut w = writer(&s, &d, Some(3));
        w.write_all(b"ab").unwrap();
        let err = w.write_all(b"cd").unwrap_err();
        assert!(
            matches!(
                err,
                ContentError::Overflow {
                    expected: 3,
                    written: 4,
                    ..
                }
            ),
            "{err}"
        );
        drop(w);
        assert!(blob_files(&s).is_empty());
        assert_eq!(writer(&s, &d, Some(3)).offset(), 0);
    }

    #[test]
    fn resume_after_drop() {
        let (_t, s) = store();
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 253) as u8).collect();
        let d = Digest::of(&data);
        let mut w = writer(&s, &d, Some(data.len() as u64));
        w.write_all(&data[..1_234_567]).unwrap();
        drop(w); // connection broke
        assert!(!s.contains(&d));
        let mut w = writer(&s, &d, Some(data.len() as u64));
        assert_eq!(w.offset(), 1_234_567);
        w.write_all(&data[1_234_567..]).unwrap();
        w.commit().unwrap();
        assert_eq!(s.read_blob(&d, u64::MAX).unwrap(), data);
    }

    #[test]
    fn resume_with_unknown_size_and_partial_truncate() {
        let (_t, s) = store();
        let data = b"abcdefghij";
        let d = Digest::of(data);
        let mut w = writer(&s, &d, None);
        w.write_all(b"abcdefXYZ").unwrap();
        drop(w);
        let mut w = writer(&s, &d, None);
        assert_eq!(w.offset(), 9);
        // Say we only trust the first 6 bytes: the prefix must be re-hashed.
        w.truncate_to(6).unwrap();
        assert_eq!(w.offset(), 6);
        w.write_all(&data[6..]).unwrap();
        w.commit().unwrap();
        assert_eq!(s.read_blob(&d, 10).unwrap(), data);
    }

    #[test]
    fn resume_with_a_bad_prefix_is_caught() {
        let (_t, s) = store();
        let data = b"abcdefghij";
        let d = Digest::of(data);
        let mut w = writer(&s, &d, Some(10));
        w.write_all(b"XXXXX").unwrap();
        drop(w);
        let mut w = writer(&s, &d, Some(10));
        assert_eq!(w.offset(), 5);
        w.write_all(&data[5..]).unwrap();
        let err = w.commit().unwrap_err();
        assert!(matches!(err, ContentError::Mismatch { .. }), "{err}");
        assert!(!s.contains(&d));
    }

    #[test]
    fn server_ignoring_range_truncates_to_zero() {
        let (_t, s) = store();
        let data = b"0123456789";
        let d = Digest::of(data);
        let mut w = writer(&s, &d, Some(10));
        w.write_all(&data[..4]).unwrap();
        drop(w);
        let mut w = writer(&s, &d, Some(10));
        assert_eq!(w.offset(), 4);
        w.truncate_to(0).unwrap();
        w.write_all(data).unwrap();
        w.commit().unwrap();
        assert_eq!(s.read_blob(&d, 10).unwrap(), data);
    }

    #[test]
    fn partial_longer_than_size_is_discarded() {
        let (_t, s) = store();
        let d = Digest::of(b"abc");
        let mut w = writer(&s, &d, None);
        w.write_all(b"abcdef").unwrap();
        drop(w);
        let w = writer(&s, &d, Some(3));
        assert_eq!(w.offset(), 0);
    }

    #[test]
    fn two_threads_ingest_the_same_digest_once() {
        let (_t, s) = store();
        let data: Vec<u8> = vec![42; 500_000];
        let d = Digest::of(&data);
        let barrier = Arc::new(Barrier::new(2));
        let handles: Vec<_> = (0..2)
            .map(|_| {
                let (s, d, data, barrier) = (s.clone(), d.clone(), data.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    match s.ingest(&d, Some(data.len() as u64)).unwrap() {
                        Ingest::Present => false,
                        Ingest::Writer(mut w) => {
                            // Give the other thread time to block on the lock.
                            std::thread::sleep(std::time::Duration::from_millis(50));
                            w.write_all(&data).unwrap();
                            w.commit().unwrap();
                            true
                        }
                    }
                })
            })
            .collect();
        let wrote: Vec<bool> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert_eq!(wrote.iter().filter(|w| **w).count(), 1, "{wrote:?}");
        assert_eq!(s.read_blob(&d, u64::MAX).unwrap(), data);
        assert_eq!(fs::read_dir(&s.ingest).unwrap().count(), 0);
    }

    /// Parallel pulls of one image (critest --parallel) once failed with
    /// "cannot lock …/lock: File exists": mkdir found the ingest dir, and its
    /// holder removed it before create_dir_all checked that it was a dir.
    #[test]
    fn lockers_racing_with_the_holders_removal_all_get_the_lock() {
        let (_t, s) = store();
        let dir = s.ingest_dir(&Digest::of(b"contended"));
        let lock_path = dir.join("lock");
        let barrier = Arc::new(Barrier::new(8));
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let (dir, lock_path, barrier) = (dir.clone(), lock_path.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    for _ in 0..500 {
                        let lock = PathLock::acquire(&lock_path, true)?
                            .expect("a waiting acquire returns the lock");
                        remove_ingest_dir(&dir, lock);
                    }
                    Ok::<_, io::Error>(())
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap().unwrap();
        }
        assert!(!dir.exists());
    }

    #[test]
    fn lock_serializes_across_processes_too() {
        // A child process (a separate open file description) holds the lock; we
        // must not get it until the child exits.
        let (_t, s) = store();
        let d = Digest::of(b"x");
        let lock = s.ingest_dir(&d).join("lock");
        fs::create_dir_all(lock.parent().unwrap()).unwrap();
        fs::write(&lock, b"").unwrap();
        let mut child = std::process::Command::new("flock")
            .arg(&lock)
            .args(["sleep", "0.3"])
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(PathLock::acquire(&lock, false).unwrap().is_none());
        let start = std::time::Instant::now();
        let w = writer(&s, &d, Some(1));
        assert!(start.elapsed() >= std::time::Duration::from_millis(100));
        drop(w);
        child.wait().unwrap();
    }

    #[test]
    fn delete_removes_blob_and_stale_partial() {
        let (_t, s) = store();
        let d = s.write_blob(b"bye", None).unwrap();
        let other = Digest::of(b"partial");
        let mut w = writer(&s, &other, None);
        w.write_all(b"part").unwrap();
        drop(w);
        s.delete(&d).unwrap();
        s.delete(&other).unwrap();
        assert!(!s.contains(&d));
        assert!(s.list().unwrap().is_empty());
        assert_eq!(fs::read_dir(&s.ingest).unwrap().count(), 0);
    }

    #[test]
    fn corrupt_blob_on_disk_is_detected() {
        let (_t, s) = store();
        let d = s.write_blob(b"good", None).unwrap();
        let p = s.path(&d);
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        fs::write(&p, b"evil").unwrap();
        let err = s.read_blob(&d, 100).unwrap_err();
        assert!(matches!(err, ContentError::Corrupt { .. }), "{err}");
    }

    #[test]
    fn usage_counts_blobs_and_partials() {
        let (_t, s) = store();
        let before = s.usage().unwrap();
        s.write_blob(&vec![1u8; 100_000], None).unwrap();
        let after = s.usage().unwrap();
        assert!(
            after.bytes >= before.bytes + 100_000,
            "{before:?} {after:?}"
        );
        assert_eq!(after.inodes, before.inodes + 1);
    }

    #[test]
    fn list_ignores_strays() {
        let (_t, s) = store();
        fs::write(s.blobs.join("not-a-digest"), b"").unwrap();
        let d = s.write_blob(b"a", None).unwrap();
        assert_eq!(s.list().unwrap(), vec![(d, 1)]);
    }

    #[test]
    fn kill_during_ingest_leaves_no_visible_blob() {
        // A child process writes part of a blob and is killed with SIGKILL while
        // holding the lock; the store must show no blob, and the next ingest
        // resumes from what reached the file.
        let (t, s) = store();
        let data = vec![7u8; 1 << 20];
        let d = Digest::of(&data);
        // SAFETY: glibc keeps malloc usable in a forked child; the child touches no
        // state shared with other test threads and leaves with _exit.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                let s = ContentStore::open(t.path()).unwrap();
                if let Ok(Ingest::Writer(mut w)) = s.ingest(&d, Some(data.len() as u64)) {
                    let _ = w.write_all(&data[..300_000]);
                    let _ = w.file.flush();
                    std::thread::sleep(std::time::Duration::from_secs(30));
                }
                // SAFETY: ends the child without running the parent's exit handlers.
                unsafe { libc::_exit(0) };
            }
            nix::unistd::ForkResult::Parent { child } => {
                let data_path = s.ingest_dir(&d).join("data");
                let start = std::time::Instant::now();
                while fs::metadata(&data_path).map(|m| m.len()).unwrap_or(0) < 300_000 {
                    assert!(start.elapsed().as_secs() < 10, "child did not write");
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                nix::sys::signal::kill(child, nix::sys::signal::SIGKILL).unwrap();
                nix::sys::wait::waitpid(child, None).unwrap();
                assert!(!s.contains(&d));
                assert!(blob_files(&s).is_empty());
                let mut w = writer(&s, &d, Some(data.len() as u64));
                assert_eq!(w.offset(), 300_000);
                w.write_all(&data[300_000..]).unwrap();
                w.commit().unwrap();
                assert!(s.contains(&d));
            }
        }
    }
}
