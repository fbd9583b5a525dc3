//! host-local's allocations on disk, in the reference plugin's layout so a
//! node can switch between the two (and both can even run side by side):
//!
//! - `<dataDir>/<network>/<ip>`: one file per allocated address, holding
//!   `<containerID>\r\n<ifname>` (older reference versions wrote only the
//!   container ID; such files belong to every interface of that container);
//! - `last_reserved_ip.<n>`: the address handed out last from range set `n`;
//! - `lock`: flock(2)ed exclusively around every operation, by both plugins.
//!
//! An allocation *is* its file, and the file appears complete or not at all:
//! the owner is written to a scratch file that is then hard-linked to the
//! address's name, which, like O_EXCL, fails when the name exists. So a
//! process killed at any point leaves either no allocation or a complete one
//! with its owner named (which DEL or GC of that owner frees), never an
//! address held twice or held by nobody knows whom. Scratch files of killed
//! processes are removed by the next holder of the lock.

use std::collections::HashSet;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use super::config::Location;

const LOCK_FILE: &str = "lock";
const LAST_PREFIX: &str = "last_reserved_ip.";
const LINE_BREAK: &str = "\r\n";
/// Scratch files: dot names, which no address parses as.
const SCRATCH_IP: &str = ".berth-reserve.tmp";
const SCRATCH_LAST: &str = ".berth-last.tmp";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("creating the allocation directory {path}: {source}")]
    CreateDir { path: PathBuf, source: io::Error },
    #[error("opening the lock file {path}: {source}")]
    OpenLock { path: PathBuf, source: io::Error },
    #[error("locking {path}: {source}")]
    Lock { path: PathBuf, source: Errno },
    #[error("reading the allocation directory {path}: {source}")]
    ReadDir { path: PathBuf, source: io::Error },
    #[error("reading allocation {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("writing allocation {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("removing allocation {path}: {source}")]
    Remove { path: PathBuf, source: io::Error },
}

/// Who holds an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub container_id: String,
    /// `None` for files of old reference versions (container ID only).
    pub ifname: Option<String>,
}

impl Owner {
    fn parse(content: &str) -> Owner {
        let content = content.trim();
        match content.split_once(LINE_BREAK) {
            Some((id, ifname)) => Owner {
                container_id: id.trim().to_string(),
                ifname: Some(ifname.trim().to_string()),
            },
            None => Owner {
                container_id: content.to_string(),
                ifname: None,
            },
        }
    }

    /// Whether this is the attachment (`container_id`, `ifname`).
    pub fn is(&self, container_id: &str, ifname: &str) -> bool {
        !self.container_id.is_empty()
            && self.container_id == container_id.trim()
            && self.ifname.as_deref().is_none_or(|i| i == ifname)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    pub ip: IpAddr,
    pub owner: Owner,
}

/// The store of one network, locked for as long as the value lives.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    _lock: Flock<File>,
}

impl Store {
    /// Opens (creating it if needed) and locks the store of `loc`.
    pub fn open(loc: &Location) -> Result<Store, StoreError> {
        let dir = loc.data_dir.join(&loc.network);
        DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&dir)
            .map_err(|source| StoreError::CreateDir {
                path: dir.clone(),
                source,
            })?;
        Self::lock(dir)
    }

    /// Opens and locks the store of `loc` if it exists: DEL, CHECK, GC and
    /// STATUS create nothing.
    pub fn open_existing(loc: &Location) -> Result<Option<Store>, StoreError> {
        let dir = loc.data_dir.join(&loc.network);
        if !dir.is_dir() {
            return Ok(None);
        }
        Self::lock(dir).map(Some)
    }

    fn lock(dir: PathBuf) -> Result<Store, StoreError> {
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(&path)
            .map_err(|source| StoreError::OpenLock {
                path: path.clone(),
                source,
            })?;
        let lock = loop {
            match Flock::lock(file, FlockArg::LockExclusive) {
                Ok(l) => break l,
                Err((f, Errno::EINTR)) => file = f,
                Err((_, source)) => return Err(StoreError::Lock { path, source }),
            }
        };
        let store = Store { dir, _lock: lock };
        // Whoever wrote these died holding the lock, before finishing.
        for s in [SCRATCH_IP, SCRATCH_LAST] {
            let _ = fs::remove_file(store.dir.join(s));
        }
        Ok(store)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every allocated address (files named by an address), with its owner.
    pub fn allocations(&self) -> Result<Vec<Allocation>, StoreError> {
        let mut out = Vec::new();
        for ip in self.taken()? {
            let path = self.dir.join(ip.to_string());
            match fs::read(&path) {
                Ok(bytes) => out.push(Allocation {
                    ip,
                    owner: Owner::parse(&String::from_utf8_lossy(&bytes)),
                }),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => return Err(StoreError::Read { path, source }),
            }
        }
        out.sort_by_key(|a| a.ip);
        Ok(out)
    }

    /// The allocated addresses, from the file names alone.
    pub fn taken(&self) -> Result<HashSet<IpAddr>, StoreError> {
        let read_dir = |source| StoreError::ReadDir {
            path: self.dir.clone(),
            source,
        };
        let mut out = HashSet::new();
        for entry in fs::read_dir(&self.dir).map_err(read_dir)? {
            let entry = entry.map_err(read_dir)?;
            if let Some(ip) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<IpAddr>().ok())
                && entry.file_type().is_ok_and(|t| t.is_file())
            {
                out.insert(ip);
            }
        }
        Ok(out)
    }

    /// Allocates `ip` to (`container_id`, `ifname`) unless it is taken
    /// (`Ok(false)`), and remembers it as the last one of range set `set`.
    pub fn reserve(
        &self,
        ip: IpAddr,
        container_id: &str,
        ifname: &str,
        set: usize,
    ) -> Result<bool, StoreError> {
        let scratch = self.dir.join(SCRATCH_IP);
        let target = self.dir.join(ip.to_string());
        let content = format!("{}{LINE_BREAK}{ifname}", container_id.trim());
        write_file(&scratch, content.as_bytes()).map_err(|source| StoreError::Write {
            path: target.clone(),
            source,
        })?;
        let mut linked = fs::hard_link(&scratch, &target);
        let _ = fs::remove_file(&scratch);
        if let Err(e) = &linked
            && matches!(e.raw_os_error(), Some(libc_errno) if libc_errno == Errno::EPERM as i32 || libc_errno == Errno::EOPNOTSUPP as i32)
        {
            // A filesystem without hard links: O_EXCL gives the same
            // exclusion, with a window where the file is still empty (an
            // owner-less allocation that GC frees).
            linked = create_new(&target, content.as_bytes());
        }
        match linked {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(false),
            Err(source) => {
                return Err(StoreError::Write {
                    path: target,
                    source,
                });
            }
        }
        // Only a hint for the next allocation: failing to record it must not
        // fail one that succeeded.
        let last = self.dir.join(format!("{LAST_PREFIX}{set}"));
        let scratch = self.dir.join(SCRATCH_LAST);
        if let Err(e) = write_file(&scratch, ip.to_string().as_bytes())
            .and_then(|()| fs::rename(&scratch, &last))
        {
            tracing::warn!(path = %last.display(), error = %e, "cannot record the last reserved address");
            let _ = fs::remove_file(&scratch);
        }
        Ok(true)
    }

    /// The address handed out last from range set `set`, if recorded.
    pub fn last_reserved(&self, set: usize) -> Option<IpAddr> {
        fs::read_to_string(self.dir.join(format!("{LAST_PREFIX}{set}")))
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }

    /// Frees `ip` (freeing a free address is fine).
    pub fn release(&self, ip: IpAddr) -> Result<(), StoreError> {
        let path = self.dir.join(ip.to_string());
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StoreError::Remove { path, source }),
        }
    }

    /// Frees every address of (`container_id`, `ifname`); returns them.
    pub fn release_owner(
        &self,
        container_id: &str,
        ifname: &str,
    ) -> Result<Vec<IpAddr>, StoreError> {
        let mut freed = Vec::new();
        for a in self.allocations()? {
            if a.owner.is(container_id, ifname) {
                self.release(a.ip)?;
                freed.push(a.ip);
            }
        }
        Ok(freed)
    }
}

fn create_new(path: &Path, content: &[u8]) -> io::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(path)?;
    f.write_all(content).inspect_err(|_| {
        let _ = fs::remove_file(path);
    })
}

fn write_file(path: &Path, content: &[u8]) -> io::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(path)?;
    f.write_all(content)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(dir: &Path) -> Location {
        Location {
            data_dir: dir.to_path_buf(),
            network: "net".into(),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn reserve_writes_the_reference_layout() {
        let tmp = tempfile::tempdir().unwrap();
        let s = Store::open(&loc(tmp.path())).unwrap();
        assert!(s.reserve(ip("10.0.0.2"), "c1", "eth0", 0).unwrap());
        assert!(!s.reserve(ip("10.0.0.2"), "c2", "eth0", 0).unwrap());
        assert!(s.reserve(ip("fd00::2"), "c1", "eth0", 1).unwrap());
        let dir = tmp.path().join("net");
        assert_eq!(fs::read(dir.join("10.0.0.2")).unwrap(), b"c1\r\neth0");
        assert_eq!(
            fs::read(dir.join("last_reserved_ip.0")).unwrap(),
            b"10.0.0.2"
        );
        assert_eq!(s.last_reserved(1), Some(ip("fd00::2")));
        assert!(dir.join("lock").is_file());
        let mut names: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "10.0.0.2",
                "fd00::2",
                "last_reserved_ip.0",
                "last_reserved_ip.1",
                "lock"
            ]
        );
    }

    #[test]
    fn release_by_owner_and_legacy_files() {
        let tmp = tempfile::tempdir().unwrap();
        let s = Store::open(&loc(tmp.path())).unwrap();
        s.reserve(ip("10.0.0.2"), "c1", "eth0", 0).unwrap();
        s.reserve(ip("10.0.0.3"), "c1", "eth1", 0).unwrap();
        fs::write(s.dir().join("10.0.0.4"), "c1\n").unwrap();
        fs::write(s.dir().join("10.0.0.5"), "").unwrap();
        let freed = s.release_owner("c1", "eth0").unwrap();
        assert_eq!(freed, [ip("10.0.0.2"), ip("10.0.0.4")]);
        let left: Vec<IpAddr> = s.allocations().unwrap().iter().map(|a| a.ip).collect();
        assert_eq!(left, [ip("10.0.0.3"), ip("10.0.0.5")]);
        // An empty file (written by a process killed mid-write) has no owner.
        assert!(s.release_owner("", "eth0").unwrap().is_empty());
    }

    #[test]
    fn scratch_files_of_dead_writers_are_removed_and_do_not_count() {
        let tmp = tempfile::tempdir().unwrap();
        {
            let s = Store::open(&loc(tmp.path())).unwrap();
            // As if killed between writing the scratch file and linking it.
            fs::write(s.dir().join(SCRATCH_IP), "c9\r\neth0").unwrap();
            fs::write(s.dir().join(SCRATCH_LAST), "10.0.0.9").unwrap();
            assert!(s.taken().unwrap().is_empty());
        }
        let s = Store::open(&loc(tmp.path())).unwrap();
        assert!(!s.dir().join(SCRATCH_IP).exists());
        assert!(!s.dir().join(SCRATCH_LAST).exists());
        assert_eq!(s.last_reserved(0), None);
    }

    #[test]
    fn open_existing_creates_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(Store::open_existing(&loc(tmp.path())).unwrap().is_none());
        assert!(!tmp.path().join("net").exists());
    }

    #[test]
    fn the_lock_excludes_other_holders() {
        let tmp = tempfile::tempdir().unwrap();
        let l = loc(tmp.path());
        let first = Store::open(&l).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let l2 = l.clone();
        let t = std::thread::spawn(move || {
            // flock locks belong to the open file description: a second
            // open in the same process waits like another process would.
            let _s = Store::open(&l2).unwrap();
            tx.send(()).unwrap();
        });
        assert!(
            rx.recv_timeout(std::time::Duration::from_millis(200))
                .is_err()
        );
        drop(first);
        rx.recv_timeout(std::time::Duration::from_secs(5)).unwrap();
        t.join().unwrap();
    }
}
