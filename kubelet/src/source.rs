//! The manifest directory as a source of pods: `berth node --manifests DIR`.
//!
//! A thread watches the directory with inotify and publishes, on a
//! [`tokio::sync::watch`] channel, the full current set of pods by file (a
//! [`Snapshot`]) whenever something in it changes: a consumer only ever
//! needs the latest set, which a watch channel keeps without queueing, and
//! it is read from async code (`changed().await`) or plain code (`borrow()`).
//!
//! What is read, as upstream's file source (`pkg/kubelet/config/file.go`):
//! regular files directly in the directory (symlinks followed), in name
//! order; no recursion into subdirectories; names starting with `.` are
//! ignored (editors' swap files, atomic writers' temporary files). berth also
//! ignores Emacs' backups and autosaves (`name~`, `#name#`), which upstream
//! would read as a second copy of the pod. A pod defined again (same
//! `namespace/name`) in a later file makes that later file an error.
//!
//! When: events are debounced (100 ms of quiet, at most 1 s after the first
//! event), so that a burst of files gives one update; the whole directory is
//! read again then, and every 20 s anyway (upstream's default check
//! frequency), which also covers lost events and symlinked files whose target
//! changes elsewhere. An update is published only when the set differs.
//!
//! A directory that does not exist (yet) is not an error of `start`: the
//! snapshot says [`SourceError::Missing`] with no files, and the directory is
//! looked for every second; the same when it is removed later. The consumer
//! decides what an unavailable directory means for running pods (upstream
//! keeps them); berth's kubelet starts with an empty node either way.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask};
use k8s_openapi::api::core::v1::Pod;
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use thiserror::Error;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::manifest::{self, ManifestError};
use crate::static_pod::{self, CONFIG_SEEN_ANNOTATION, NodeName};

/// Why the directory could not be read or watched.
#[derive(Debug, Error)]
pub enum SourceError {
    /// The directory does not exist; it is looked for every second.
    #[error("manifest directory {} does not exist (waiting for it)", dir.display())]
    Missing {
        /// The directory.
        dir: PathBuf,
    },
    /// The path is not a directory.
    #[error("manifest path {} is not a directory", dir.display())]
    NotADirectory {
        /// The path.
        dir: PathBuf,
    },
    /// Listing the directory failed.
    #[error("cannot list manifest directory {}: {source}", dir.display())]
    List {
        /// The directory.
        dir: PathBuf,
        /// The failure.
        source: io::Error,
    },
    /// An inotify watch could not be added (e.g. `fs.inotify.max_user_watches`).
    #[error("cannot watch manifest directory {}: {source}", dir.display())]
    Watch {
        /// The directory.
        dir: PathBuf,
        /// The failure.
        source: io::Error,
    },
    /// The watcher could not be set up (inotify instance, pipe, thread).
    #[error("cannot start the manifest watcher: {what}: {source}")]
    Setup {
        /// The step that failed.
        what: &'static str,
        /// The failure.
        source: io::Error,
    },
}

/// One manifest file and what it yields: all its pods, or all its errors.
#[derive(Debug)]
pub struct ManifestFile {
    /// The file (the directory joined with its name, as hashed into the UIDs).
    pub path: PathBuf,
    /// Its pods with their static identity and `config.seen`, or why none runs.
    pub pods: Result<Vec<Pod>, Vec<ManifestError>>,
}

/// The pods of the manifest directory at one moment.
#[derive(Debug)]
pub struct Snapshot {
    /// The directory.
    pub dir: PathBuf,
    /// Counts published snapshots, from 1; for logs and tests.
    pub generation: u64,
    /// Set when the directory could not be listed; `files` is empty then.
    pub unavailable: Option<SourceError>,
    /// The manifest files, in name order.
    pub files: Vec<ManifestFile>,
}

impl Snapshot {
    /// The pods of all valid files.
    pub fn pods(&self) -> impl Iterator<Item = &Pod> {
        self.files
            .iter()
            .filter_map(|f| f.pods.as_ref().ok())
            .flatten()
    }

    /// The errors of all invalid files.
    pub fn errors(&self) -> impl Iterator<Item = &ManifestError> {
        self.files
            .iter()
            .filter_map(|f| f.pods.as_ref().err())
            .flatten()
    }

    /// Same files, pods and errors (errors compared by their message);
    /// `generation` aside.
    fn same_content(&self, other: &Snapshot) -> bool {
        let messages =
            |errors: &[ManifestError]| errors.iter().map(ToString::to_string).collect::<Vec<_>>();
        self.dir == other.dir
            && self.unavailable.as_ref().map(ToString::to_string)
                == other.unavailable.as_ref().map(ToString::to_string)
            && self.files.len() == other.files.len()
            && self.files.iter().zip(&other.files).all(|(a, b)| {
                a.path == b.path
                    && match (&a.pods, &b.pods) {
                        (Ok(a), Ok(b)) => a == b,
                        (Err(a), Err(b)) => messages(a) == messages(b),
                        _ => false,
                    }
            })
    }
}

/// Whether a directory entry is not a manifest: hidden files (upstream's
/// rule), Emacs backups and autosaves (berth's addition).
pub fn is_ignored(name: &OsStr) -> bool {
    let name = name.as_encoded_bytes();
    name.starts_with(b".")
        || name.ends_with(b"~")
        || (name.starts_with(b"#") && name.ends_with(b"#"))
}

/// Reads the directory once, without watching it (every pod's `config.seen` is now).
pub fn scan(dir: &Path, node: &NodeName) -> Snapshot {
    Scanner::new(dir.to_owned(), node.clone()).scan()
}

/// Reads the directory into snapshots, remembering when each UID was first seen.
struct Scanner {
    dir: PathBuf,
    node: NodeName,
    first_seen: HashMap<String, String>,
}

impl Scanner {
    fn new(dir: PathBuf, node: NodeName) -> Self {
        Self {
            dir,
            node,
            first_seen: HashMap::new(),
        }
    }

    fn scan(&mut self) -> Snapshot {
        let (mut files, unavailable) = match list(&self.dir) {
            Ok(paths) => {
                let files = paths
                    .into_iter()
                    .map(|path| {
                        let pods = manifest::load(&path, &self.node);
                        ManifestFile { path, pods }
                    })
                    .collect();
                (files, None)
            }
            Err(error) => (Vec::new(), Some(error)),
        };
        reject_duplicates(&mut files);
        self.stamp_seen(&mut files);
        Snapshot {
            dir: self.dir.clone(),
            generation: 1,
            unavailable,
            files,
        }
    }

    /// As upstream, `config.seen` is when this UID was first seen; a changed
    /// manifest is a new UID, so it is seen anew. UIDs gone are forgotten.
    fn stamp_seen(&mut self, files: &mut [ManifestFile]) {
        let now = static_pod::seen_now();
        let mut present = HashSet::new();
        for pod in files
            .iter_mut()
            .filter_map(|f| f.pods.as_mut().ok())
            .flatten()
        {
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            let seen = self
                .first_seen
                .entry(uid.clone())
                .or_insert_with(|| now.clone())
                .clone();
            pod.metadata
                .annotations
                .get_or_insert_default()
                .insert(CONFIG_SEEN_ANNOTATION.to_owned(), seen);
            present.insert(uid);
        }
        self.first_seen.retain(|uid, _| present.contains(uid));
    }
}

/// The candidate manifest files of `dir`, in name order.
fn list(dir: &Path) -> Result<Vec<PathBuf>, SourceError> {
    let entries = fs::read_dir(dir).map_err(|source| dir_error(dir, source))?;
    let mut paths = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| SourceError::List {
            dir: dir.to_owned(),
            source,
        })?;
        let name = entry.file_name();
        if is_ignored(&name) {
            continue;
        }
        let path = dir.join(&name);
        match fs::metadata(&path) {
            // A regular file, or a symlink to one.
            Ok(meta) if meta.is_file() => paths.push(path),
            Ok(meta) if meta.is_dir() => {
                debug!(path = %path.display(), "not a manifest: a directory (no recursion)")
            }
            // FIFOs, sockets and devices are never read: a FIFO would block the watcher.
            Ok(_) => warn!(path = %path.display(), "not a manifest: not a regular file"),
            // Removed since the listing, or a dangling symlink.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            // Kept, so that the read reports the error under the file's name.
            Err(_) => paths.push(path),
        }
    }
    paths.sort();
    Ok(paths)
}

fn dir_error(dir: &Path, source: io::Error) -> SourceError {
    let dir = dir.to_owned();
    match source.kind() {
        io::ErrorKind::NotFound => SourceError::Missing { dir },
        io::ErrorKind::NotADirectory => SourceError::NotADirectory { dir },
        _ => SourceError::List { dir, source },
    }
}

/// A pod name already taken by an earlier file (name order) makes the later file an error.
fn reject_duplicates(files: &mut [ManifestFile]) {
    let mut owners: HashMap<String, PathBuf> = HashMap::new();
    for file in files {
        let Ok(pods) = &file.pods else {
            continue;
        };
        let duplicates: Vec<ManifestError> = pods
            .iter()
            .filter_map(|pod| {
                let name = manifest::full_name(pod);
                owners.get(&name).map(|first| ManifestError::Duplicate {
                    path: file.path.clone(),
                    pod: name,
                    first: first.clone(),
                })
            })
            .collect();
        if duplicates.is_empty() {
            for pod in pods {
                owners.insert(manifest::full_name(pod), file.path.clone());
            }
        } else {
            file.pods = Err(duplicates);
        }
    }
}

/// How the watcher runs; [`SourceConfig::new`] has upstream-like defaults.
#[derive(Clone, Debug)]
pub struct SourceConfig {
    /// The manifest directory. Give it as the kubelet always will: the path
    /// of each file, joined to it, is part of its pods' UIDs.
    pub dir: PathBuf,
    /// This node.
    pub node: NodeName,
    /// Quiet time after an event before the directory is read (100 ms).
    pub debounce: Duration,
    /// Longest delay from the first event of a burst to the read (1 s).
    pub max_delay: Duration,
    /// Full re-read period, events or not (20 s).
    pub resync: Duration,
    /// How often a missing directory is looked for (1 s).
    pub retry: Duration,
}

impl SourceConfig {
    /// Defaults for `dir` on `node`.
    pub fn new(dir: impl Into<PathBuf>, node: NodeName) -> Self {
        Self {
            dir: dir.into(),
            node,
            debounce: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
            resync: Duration::from_secs(20),
            retry: Duration::from_secs(1),
        }
    }
}

/// The running watcher. Dropping it stops the thread; receivers then see the channel closed.
pub struct ManifestSource {
    updates: watch::Receiver<Arc<Snapshot>>,
    /// Closing this pipe end wakes the thread to stop.
    stop: Option<OwnedFd>,
    thread: Option<JoinHandle<()>>,
}

impl ManifestSource {
    /// Reads the directory and starts watching it. The first snapshot is
    /// already in the channel (`borrow()` it); `changed()` wakes on later ones.
    pub fn start(config: SourceConfig) -> Result<Self, SourceError> {
        let setup = |what| move |source| SourceError::Setup { what, source };
        let inotify = Inotify::init().map_err(setup("inotify_init"))?;
        let (stop_rx, stop_tx) =
            nix::unistd::pipe().map_err(|e| setup("pipe")(io::Error::from(e)))?;
        let mut watcher = Watcher {
            scanner: Scanner::new(config.dir.clone(), config.node.clone()),
            config,
            inotify,
            watch: None,
            watch_error: None,
            stop: stop_rx,
            updates: None,
        };
        // Watch before reading, so that no change falls between the two.
        watcher.try_watch();
        let first = watcher.scanner.scan();
        log_changes(None, &first);
        let (sender, updates) = watch::channel(Arc::new(first));
        watcher.updates = Some(sender);
        let thread = std::thread::Builder::new()
            .name("manifest-source".to_owned())
            .spawn(move || watcher.run())
            .map_err(setup("thread"))?;
        Ok(Self {
            updates,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// A receiver of the snapshots.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.updates.clone()
    }

    /// The latest snapshot.
    pub fn current(&self) -> Arc<Snapshot> {
        self.updates.borrow().clone()
    }
}

impl Drop for ManifestSource {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            warn!("the manifest watcher thread panicked");
        }
    }
}

/// What the directory's events are watched for: any change of its entries, and its own end.
fn watch_mask() -> WatchMask {
    WatchMask::CREATE
        | WatchMask::CLOSE_WRITE
        | WatchMask::MODIFY
        | WatchMask::ATTRIB
        | WatchMask::DELETE
        | WatchMask::MOVED_FROM
        | WatchMask::MOVED_TO
        | WatchMask::DELETE_SELF
        | WatchMask::MOVE_SELF
        | WatchMask::ONLYDIR
}

/// The directory by identity, to notice when the path comes to name another
/// directory (a symlink swapped, a directory replaced) and watch that one.
type DirId = (u64, u64);

struct Watcher {
    config: SourceConfig,
    scanner: Scanner,
    inotify: Inotify,
    watch: Option<(WatchDescriptor, DirId)>,
    /// The last failure to watch, logged once until it changes.
    watch_error: Option<String>,
    stop: OwnedFd,
    updates: Option<watch::Sender<Arc<Snapshot>>>,
}

enum Wake {
    Stop,
    Events,
    Timeout,
}

impl Watcher {
    fn run(mut self) {
        // The kernel writes whole events only; this holds many of them.
        let mut buffer = vec![0u8; 64 * 1024];
        let mut burst: Option<(Instant, Instant)> = None;
        let mut next_resync = Instant::now() + self.config.resync;
        let mut next_retry = Instant::now() + self.config.retry;
        loop {
            let now = Instant::now();
            let deadline = match burst {
                Some((first, last)) => {
                    (last + self.config.debounce).min(first + self.config.max_delay)
                }
                None if self.watch.is_none() => next_resync.min(next_retry),
                None => next_resync,
            };
            match self.wait(deadline.saturating_duration_since(now)) {
                Wake::Stop => return,
                Wake::Events => {
                    if self.drain_events(&mut buffer) {
                        let now = Instant::now();
                        burst = Some((burst.map_or(now, |(first, _)| first), now));
                    }
                }
                Wake::Timeout => {}
            }

            let now = Instant::now();
            let mut read = false;
            if self.watch.is_none() && now >= next_retry {
                next_retry = now + self.config.retry;
                read = self.try_watch();
            }
            if let Some((first, last)) = burst
                && (now >= last + self.config.debounce || now >= first + self.config.max_delay)
            {
                read = true;
            }
            if now >= next_resync {
                read = true;
            }
            if read {
                burst = None;
                next_resync = now + self.config.resync;
                if self.watch.is_some() {
                    self.try_watch();
                }
                self.publish();
            }
        }
    }

    /// Sleeps until inotify has events, the stop pipe closes, or `timeout`.
    fn wait(&self, timeout: Duration) -> Wake {
        // Rounded up: rounding down would spin until the deadline.
        let millis = timeout.as_micros().div_ceil(1000);
        let timeout = PollTimeout::try_from(millis).unwrap_or(PollTimeout::MAX);
        let mut fds = [
            PollFd::new(self.stop.as_fd(), PollFlags::POLLIN),
            PollFd::new(self.inotify.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, timeout) {
            Ok(0) | Err(Errno::EINTR) => Wake::Timeout,
            Ok(_) => {
                if fds[0].revents().is_some_and(|r| !r.is_empty()) {
                    Wake::Stop
                } else {
                    Wake::Events
                }
            }
            Err(error) => {
                // Not expected with two valid descriptors; do not spin on it.
                warn!(%error, "poll on the manifest watcher failed");
                std::thread::sleep(Duration::from_millis(100));
                Wake::Timeout
            }
        }
    }

    /// Reads all pending events; true when one of them may change the set.
    fn drain_events(&mut self, buffer: &mut [u8]) -> bool {
        let mut changed = false;
        let mut lost = false;
        loop {
            let events = match self.inotify.read_events(buffer) {
                Ok(events) => events,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => {
                    warn!(%error, "reading inotify events failed; reading the directory again");
                    changed = true;
                    break;
                }
            };
            for event in events {
                if event.mask.contains(EventMask::Q_OVERFLOW) {
                    debug!("inotify queue overflowed");
                    changed = true;
                    continue;
                }
                // Events of a watch replaced since are stale.
                if self.watch.as_ref().is_none_or(|(wd, _)| *wd != event.wd) {
                    continue;
                }
                if event.mask.intersects(
                    EventMask::DELETE_SELF
                        | EventMask::MOVE_SELF
                        | EventMask::IGNORED
                        | EventMask::UNMOUNT,
                ) {
                    lost = true;
                    changed = true;
                    continue;
                }
                match event.name {
                    Some(name) if is_ignored(name) => {}
                    name => {
                        debug!(?name, mask = ?event.mask, "manifest directory event");
                        changed = true;
                    }
                }
            }
        }
        if lost && let Some((wd, _)) = self.watch.take() {
            info!(dir = %self.config.dir.display(), "manifest directory removed or moved away");
            // Already gone after IN_IGNORED; the error is expected then.
            let _ = self.inotify.watches().remove(wd);
        }
        changed
    }

    /// Watches the directory now at the path, if not already; true when a
    /// new watch was set up (the directory must be read then).
    fn try_watch(&mut self) -> bool {
        let dir = self.config.dir.clone();
        let id = match fs::metadata(&dir) {
            Ok(meta) => (meta.dev(), meta.ino()),
            Err(source) => {
                self.note_watch_error(dir_error(&dir, source));
                return false;
            }
        };
        if self
            .watch
            .as_ref()
            .is_some_and(|(_, watched)| *watched == id)
        {
            return false;
        }
        match self.inotify.watches().add(&dir, watch_mask()) {
            Ok(wd) => {
                if let Some((old, _)) = self.watch.replace((wd.clone(), id))
                    && old != wd
                {
                    let _ = self.inotify.watches().remove(old);
                }
                self.watch_error = None;
                info!(dir = %dir.display(), "watching the manifest directory");
                true
            }
            Err(source) => {
                let error = match source.kind() {
                    io::ErrorKind::NotFound | io::ErrorKind::NotADirectory => {
                        dir_error(&dir, source)
                    }
                    _ => SourceError::Watch { dir, source },
                };
                self.note_watch_error(error);
                false
            }
        }
    }

    fn note_watch_error(&mut self, error: SourceError) {
        let message = error.to_string();
        if self.watch_error.as_ref() != Some(&message) {
            warn!(%error, "manifest directory not watched; retrying every {:?}", self.config.retry);
            self.watch_error = Some(message);
        }
    }

    fn publish(&mut self) {
        let Some(updates) = &self.updates else {
            return;
        };
        let mut next = Some(self.scanner.scan());
        updates.send_if_modified(|current| {
            let Some(mut next) = next.take() else {
                return false;
            };
            if current.same_content(&next) {
                return false;
            }
            next.generation = current.generation + 1;
            log_changes(Some(current), &next);
            *current = Arc::new(next);
            true
        });
    }
}

/// Logs a new snapshot, and each error not already in the previous one.
fn log_changes(previous: Option<&Snapshot>, next: &Snapshot) {
    let known: HashSet<String> = previous
        .map(|p| p.errors().map(ToString::to_string).collect())
        .unwrap_or_default();
    if let Some(error) = &next.unavailable {
        warn!(%error, "manifest directory unavailable");
    }
    for error in next.errors() {
        let message = error.to_string();
        if !known.contains(&message) {
            warn!(error = %message, "manifest rejected");
        }
    }
    info!(
        dir = %next.dir.display(),
        generation = next.generation,
        files = next.files.len(),
        pods = next.pods().count(),
        errors = next.errors().count(),
        "manifest directory read"
    );
}

#[cfg(test)]
mod tests;
