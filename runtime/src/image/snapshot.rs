//! Snapshots: a container's root filesystem, an overlay mount of its image's
//! layer dirs under its own upper and work dirs.
//!
//! Layout: `<root>/snapshots/<id>/{upper,work,rootfs}` (plus `empty`, the lower
//! dir of an image with no layers). `id` is a container ID (see [`crate::id`]).
//!
//! Lower dirs are given to [`Snapshotter::prepare`] in image order: the base
//! layer first, the top-most layer last (as a manifest lists them); overlayfs
//! wants the reverse, which is done here.
//!
//! The overlay is mounted with the new mount API, one `lowerdir+` per layer,
//! which has no limit but overlayfs's own (500 layers); a kernel without
//! `lowerdir+` (before 6.8) gets mount(2) with a `lowerdir=a:b:c` option string,
//! which must fit in one page. The system calls sit behind [`OverlaySys`], so
//! that the logic around them is tested without root.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use thiserror::Error;

use super::content::{Usage, disk_usage};
use crate::id::{self, IdError};

/// What mount(2) accepts as its data argument: one page, NUL included.
const MAX_MOUNT_DATA: usize = 4095;

#[derive(Debug, Error)]
pub enum MountError {
    /// This kernel's overlayfs cannot take lower dirs one by one.
    #[error("no fsconfig lowerdir+ on this kernel ({0})")]
    Unsupported(String),
    #[error("{step}: {errno}{}", if .log.is_empty() { String::new() } else { format!(" ({})", .log) })]
    Failed {
        step: &'static str,
        errno: Errno,
        /// What the kernel logged about it, when it says (the fs context log).
        log: String,
    },
}

#[derive(Debug, Error)]
pub enum SnapshotError {
    #[error("invalid snapshot ID: {0}")]
    Id(#[from] IdError),
    #[error("snapshot {0:?} already exists")]
    Exists(String),
    #[error("snapshot {0:?} does not exist")]
    NotFound(String),
    #[error("snapshot {id:?}: lower dir {path} {reason}")]
    Lower {
        id: String,
        path: PathBuf,
        reason: String,
    },
    #[error("snapshot store: cannot {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("snapshot {id:?}: cannot mount the overlay of {layers} layers on {target}: {source}")]
    Mount {
        id: String,
        layers: usize,
        target: PathBuf,
        #[source]
        source: MountError,
    },
    #[error(
        "snapshot {id:?}: the overlay options for {layers} layers take {len} bytes, over mount(2)'s \
         limit of {MAX_MOUNT_DATA}, and this kernel lacks fsconfig lowerdir+ (Linux 6.8+)"
    )]
    TooManyLayers {
        id: String,
        layers: usize,
        len: usize,
    },
    #[error("snapshot {id:?}: cannot unmount {path}: {errno}")]
    Unmount {
        id: String,
        path: PathBuf,
        errno: Errno,
    },
    #[error("snapshot {id:?}: {path} is still a mount point; not deleting through it")]
    StillMounted { id: String, path: PathBuf },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> SnapshotError + 'a {
    move |source| SnapshotError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// The system calls of a snapshot, so that tests can record them instead.
pub trait OverlaySys: Send + Sync {
    /// Mounts an overlay on `target` with the new mount API, one `lowerdir+` per
    /// lower dir, `lowers` top-most first. [`MountError::Unsupported`] when the
    /// kernel cannot.
    fn mount_overlay(
        &self,
        target: &Path,
        lowers: &[&Path],
        upper: &Path,
        work: &Path,
    ) -> Result<(), MountError>;
    /// mount(2) of an overlay with a whole option string.
    fn mount_legacy(&self, target: &Path, data: &str) -> Result<(), MountError>;
    fn umount(&self, target: &Path, flags: MntFlags) -> nix::Result<()>;
}

/// The real kernel.
#[derive(Debug, Default, Clone, Copy)]
pub struct Linux;

// From <linux/mount.h>; the libc crate does not export them for this target.
const FSOPEN_CLOEXEC: libc::c_uint = 0x1;
const FSCONFIG_SET_STRING: libc::c_uint = 1;
const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
const FSMOUNT_CLOEXEC: libc::c_uint = 0x1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;

fn cstr(p: &[u8], step: &'static str) -> Result<CString, MountError> {
    CString::new(p).map_err(|_| MountError::Failed {
        step,
        errno: Errno::EINVAL,
        log: "path contains a NUL byte".into(),
    })
}

/// Drains an fs context's message log: the kernel's explanation of a failure.
fn fs_log(fs: &OwnedFd) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    // The log holds at most 8 messages; the bound only guards against surprises.
    for _ in 0..16 {
        // SAFETY: read(2) into a buffer we own, at most its length.
        let n = unsafe { libc::read(fs.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            break;
        }
        out.push(
            String::from_utf8_lossy(&buf[..n as usize])
                .trim_end()
                .to_string(),
        );
    }
    out.join("; ")
}

impl Linux {
    fn fsconfig(
        fs: &OwnedFd,
        key: &str,
        value: Option<&[u8]>,
        cmd: libc::c_uint,
    ) -> Result<(), Errno> {
        let key = CString::new(key).map_err(|_| Errno::EINVAL)?;
        let value = value
            .map(|v| CString::new(v).map_err(|_| Errno::EINVAL))
            .transpose()?;
        let (k, v) = if cmd == FSCONFIG_CMD_CREATE {
            (std::ptr::null(), std::ptr::null())
        } else {
            (
                key.as_ptr(),
                value.as_ref().map_or(std::ptr::null(), |v| v.as_ptr()),
            )
        };
        // SAFETY: fsconfig reads NUL-terminated strings (or nothing, for CREATE)
        // that live until it returns, on an fs context fd we own.
        let r = unsafe { libc::syscall(libc::SYS_fsconfig, fs.as_raw_fd(), cmd, k, v, 0) };
        Errno::result(r).map(drop)
    }
}

impl OverlaySys for Linux {
    fn mount_overlay(
        &self,
        target: &Path,
        lowers: &[&Path],
        upper: &Path,
        work: &Path,
    ) -> Result<(), MountError> {
        let name = c"overlay";
        // SAFETY: fsopen reads a NUL-terminated string and returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_fsopen, name.as_ptr(), FSOPEN_CLOEXEC) };
        let fd = match Errno::result(fd) {
            Ok(fd) => fd as libc::c_int,
            Err(e @ (Errno::ENOSYS | Errno::ENODEV)) => {
                return Err(MountError::Unsupported(format!("fsopen(overlay): {e}")));
            }
            Err(errno) => {
                return Err(MountError::Failed {
                    step: "fsopen(overlay)",
                    errno,
                    log: String::new(),
                });
            }
        };
        // SAFETY: fsopen just returned this fd, and nothing else owns it.
        let fs = unsafe { OwnedFd::from_raw_fd(fd) };
        let failed = |step, errno| MountError::Failed {
            step,
            errno,
            log: fs_log(&fs),
        };
        for (i, lower) in lowers.iter().enumerate() {
            let path = lower.as_os_str().as_bytes();
            match Self::fsconfig(&fs, "lowerdir+", Some(path), FSCONFIG_SET_STRING) {
                Ok(()) => {}
                // Kernels before 6.8 do not know the parameter.
                Err(Errno::EINVAL) if i == 0 => {
                    return Err(MountError::Unsupported(format!(
                        "fsconfig lowerdir+: {}",
                        fs_log(&fs)
                    )));
                }
                Err(e) => {
                    let log = fs_log(&fs);
                    return Err(MountError::Failed {
                        step: "fsconfig lowerdir+",
                        errno: e,
                        log: format!("{}: {log}", lower.display()),
                    });
                }
            }
        }
        for (key, value) in [
            ("upperdir", upper.as_os_str().as_bytes()),
            ("workdir", work.as_os_str().as_bytes()),
            // The index ties upper dirs to lower file handles; we never reuse an
            // upper dir with other lowers, and it costs xattr writes on copy-up.
            ("index", b"off".as_slice()),
        ] {
            Self::fsconfig(&fs, key, Some(value), FSCONFIG_SET_STRING).map_err(|e| {
                failed(
                    if key == "index" {
                        "fsconfig index"
                    } else {
                        "fsconfig upperdir/workdir"
                    },
                    e,
                )
            })?;
        }
        Self::fsconfig(&fs, "", None, FSCONFIG_CMD_CREATE)
            .map_err(|e| failed("fsconfig create", e))?;
        // SAFETY: fsmount takes our fs context fd and returns a new mount fd or -1.
        let m = unsafe { libc::syscall(libc::SYS_fsmount, fs.as_raw_fd(), FSMOUNT_CLOEXEC, 0) };
        let m = Errno::result(m).map_err(|e| failed("fsmount", e))? as libc::c_int;
        // SAFETY: fsmount just returned this fd, and nothing else owns it.
        let mnt = unsafe { OwnedFd::from_raw_fd(m) };
        let target_c = cstr(target.as_os_str().as_bytes(), "move_mount")?;
        // SAFETY: move_mount reads two NUL-terminated strings alive for the call;
        // the mount fd is ours.
        let r = unsafe {
            libc::syscall(
                libc::SYS_move_mount,
                mnt.as_raw_fd(),
                c"".as_ptr(),
                libc::AT_FDCWD,
                target_c.as_ptr(),
                MOVE_MOUNT_F_EMPTY_PATH,
            )
        };
        Errno::result(r).map_err(|errno| MountError::Failed {
            step: "move_mount",
            errno,
            log: String::new(),
        })?;
        Ok(())
    }

    fn mount_legacy(&self, target: &Path, data: &str) -> Result<(), MountError> {
        nix::mount::mount(
            Some("overlay"),
            target,
            Some("overlay"),
            MsFlags::empty(),
            Some(data),
        )
        .map_err(|errno| MountError::Failed {
            step: "mount(2)",
            errno,
            log: String::new(),
        })
    }

    fn umount(&self, target: &Path, flags: MntFlags) -> nix::Result<()> {
        nix::mount::umount2(target, flags)
    }
}

/// Escapes what overlayfs's option parser treats as separators.
fn escape(p: &Path) -> String {
    let mut out = String::new();
    for c in p.to_string_lossy().chars() {
        if matches!(c, '\\' | ':' | ',') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The mount(2) option string, lowers top-most first.
fn legacy_options(lowers: &[&Path], upper: &Path, work: &Path) -> String {
    let lowers: Vec<String> = lowers.iter().map(|l| escape(l)).collect();
    format!(
        "lowerdir={},upperdir={},workdir={},index=off",
        lowers.join(":"),
        escape(upper),
        escape(work)
    )
}

/// Creates, lists and removes snapshots. Cheap to clone.
#[derive(Clone)]
pub struct Snapshotter {
    dir: PathBuf,
    sys: Arc<dyn OverlaySys>,
}

impl std::fmt::Debug for Snapshotter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshotter")
            .field("dir", &self.dir)
            .finish()
    }
}

impl Snapshotter {
    pub fn open(root: &Path) -> Result<Self, SnapshotError> {
        Self::with_sys(root, Arc::new(Linux))
    }

    /// With other system calls (tests).
    pub fn with_sys(root: &Path, sys: Arc<dyn OverlaySys>) -> Result<Self, SnapshotError> {
        let dir = root.join("snapshots");
        fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        Ok(Snapshotter { dir, sys })
    }

    fn path(&self, id: &str) -> Result<PathBuf, SnapshotError> {
        id::validate(id)?;
        Ok(self.dir.join(id))
    }

    /// Creates snapshot `id` over `lowers` (layer fs dirs in image order: base
    /// first, top-most last; none for an empty image) and returns its mounted
    /// rootfs. On error nothing is left of it.
    pub fn prepare(&self, id: &str, lowers: &[PathBuf]) -> Result<PathBuf, SnapshotError> {
        let dir = self.path(id)?;
        for l in lowers {
            let reason = match fs::metadata(l) {
                Ok(m) if m.is_dir() => continue,
                Ok(_) => "is not a directory".to_string(),
                Err(e) => e.to_string(),
            };
            return Err(SnapshotError::Lower {
                id: id.to_string(),
                path: l.clone(),
                reason,
            });
        }
        match fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(SnapshotError::Exists(id.to_string()));
            }
            Err(e) => return Err(io_err("create", &dir)(e)),
        }
        let result = self.prepare_in(id, &dir, lowers);
        if result.is_err()
            && let Err(e) = fs::remove_dir_all(&dir)
        {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot clean up a failed snapshot");
        }
        result
    }

    fn prepare_in(
        &self,
        id: &str,
        dir: &Path,
        lowers: &[PathBuf],
    ) -> Result<PathBuf, SnapshotError> {
        let upper = dir.join("upper");
        let work = dir.join("work");
        let rootfs = dir.join("rootfs");
        for d in [&upper, &work, &rootfs] {
            fs::create_dir(d).map_err(io_err("create", d))?;
        }
        let empty;
        let mut top_first: Vec<&Path> = lowers.iter().rev().map(PathBuf::as_path).collect();
        if top_first.is_empty() {
            // overlayfs needs a lower dir; an image without layers is an empty one.
            empty = dir.join("empty");
            fs::create_dir(&empty).map_err(io_err("create", &empty))?;
            top_first.push(&empty);
        }
        let mount_err = |source| SnapshotError::Mount {
            id: id.to_string(),
            layers: lowers.len(),
            target: rootfs.clone(),
            source,
        };
        match self.sys.mount_overlay(&rootfs, &top_first, &upper, &work) {
            Ok(()) => {}
            Err(MountError::Unsupported(why)) => {
                tracing::debug!(%why, "mounting the overlay with mount(2)");
                let data = legacy_options(&top_first, &upper, &work);
                if data.len() > MAX_MOUNT_DATA {
                    return Err(SnapshotError::TooManyLayers {
                        id: id.to_string(),
                        layers: lowers.len(),
                        len: data.len(),
                    });
                }
                self.sys.mount_legacy(&rootfs, &data).map_err(mount_err)?;
            }
            Err(e) => return Err(mount_err(e)),
        }
        Ok(rootfs)
    }

    /// Unmounts and deletes snapshot `id`; a missing one is fine. A mount still
    /// busy (a process left inside) is detached rather than failing the removal:
    /// the container is gone, and its files go once the last user lets go.
    pub fn remove(&self, id: &str) -> Result<(), SnapshotError> {
        let dir = self.path(id)?;
        let dir_md = match fs::symlink_metadata(&dir) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err("stat", &dir)(e)),
        };
        let rootfs = dir.join("rootfs");
        // Mounts can be stacked; the bound only guards against a loop.
        for _ in 0..16 {
            match self.sys.umount(&rootfs, MntFlags::empty()) {
                Ok(()) => continue,
                Err(Errno::EINVAL) | Err(Errno::ENOENT) => break,
                Err(Errno::EBUSY) => {
                    tracing::warn!(snapshot = id, "rootfs busy; detaching it");
                    self.sys
                        .umount(&rootfs, MntFlags::MNT_DETACH)
                        .map_err(|errno| SnapshotError::Unmount {
                            id: id.to_string(),
                            path: rootfs.clone(),
                            errno,
                        })?;
                }
                Err(errno) => {
                    return Err(SnapshotError::Unmount {
                        id: id.to_string(),
                        path: rootfs.clone(),
                        errno,
                    });
                }
            }
        }
        // Deleting through a live overlay would write whiteouts, not free space.
        if let Ok(m) = fs::symlink_metadata(&rootfs)
            && m.dev() != dir_md.dev()
        {
            return Err(SnapshotError::StillMounted {
                id: id.to_string(),
                path: rootfs,
            });
        }
        match fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("remove", &dir)(e)),
            _ => Ok(()),
        }
    }

    /// The IDs of the snapshots.
    pub fn list(&self) -> Result<Vec<String>, SnapshotError> {
        let mut out = Vec::new();
        for e in fs::read_dir(&self.dir).map_err(io_err("list", &self.dir))? {
            let e = e.map_err(io_err("list", &self.dir))?;
            if let Some(name) = e.file_name().to_str()
                && id::validate(name).is_ok()
                && e.file_type().is_ok_and(|t| t.is_dir())
            {
                out.push(name.to_string());
            }
        }
        out.sort();
        Ok(out)
    }

    /// Space used by the snapshot's own files (its upper and work dirs; the
    /// layers are shared and counted by the layer store).
    pub fn usage(&self, id: &str) -> Result<Usage, SnapshotError> {
        let dir = self.path(id)?;
        let md = match fs::symlink_metadata(&dir) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(SnapshotError::NotFound(id.to_string()));
            }
            Err(e) => return Err(io_err("stat", &dir)(e)),
        };
        // Not a walk of `dir`: that would descend into the mounted rootfs.
        let mut total = Usage {
            bytes: md.blocks() * 512,
            inodes: 1,
        };
        for sub in ["upper", "work", "empty"] {
            let p = dir.join(sub);
            total += disk_usage(&p).map_err(io_err("measure", &p))?;
        }
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Records calls; the new mount API answers as told.
    struct Fake {
        calls: Mutex<Vec<String>>,
        new_api: Result<(), Errno>,
        supported: bool,
        legacy: Result<(), Errno>,
    }

    impl Fake {
        fn new(supported: bool) -> Self {
            Fake {
                calls: Mutex::new(Vec::new()),
                new_api: Ok(()),
                supported,
                legacy: Ok(()),
            }
        }
        fn calls(&self) -> Vec<String> {
            self.calls.lock().unwrap().clone()
        }
    }

    impl OverlaySys for Fake {
        fn mount_overlay(
            &self,
            target: &Path,
            lowers: &[&Path],
            upper: &Path,
            work: &Path,
        ) -> Result<(), MountError> {
            if !self.supported {
                return Err(MountError::Unsupported("fake".into()));
            }
            let lowers: Vec<String> = lowers.iter().map(|l| l.display().to_string()).collect();
            self.calls.lock().unwrap().push(format!(
                "fsmount {} lowers={} upper={} work={}",
                target.display(),
                lowers.join(","),
                upper.display(),
                work.display()
            ));
            self.new_api.map_err(|errno| MountError::Failed {
                step: "fsconfig create",
                errno,
                log: "e overlay: bad".into(),
            })
        }
        fn mount_legacy(&self, target: &Path, data: &str) -> Result<(), MountError> {
            self.calls
                .lock()
                .unwrap()
                .push(format!("mount {} {data}", target.display()));
            self.legacy.map_err(|errno| MountError::Failed {
                step: "mount(2)",
                errno,
                log: String::new(),
            })
        }
        fn umount(&self, target: &Path, flags: MntFlags) -> nix::Result<()> {
            self.calls
                .lock()
                .unwrap()
                .push(format!("umount {} {flags:?}", target.display()));
            Err(Errno::EINVAL)
        }
    }

    fn lowers(t: &Path, n: usize) -> Vec<PathBuf> {
        (0..n)
            .map(|i| {
                let p = t.join(format!("layers/{i:03}"));
                fs::create_dir_all(&p).unwrap();
                p
            })
            .collect()
    }

    fn fake(supported: bool) -> (tempfile::TempDir, Snapshotter, Arc<Fake>) {
        let t = tempfile::tempdir().unwrap();
        let f = Arc::new(Fake::new(supported));
        let s = Snapshotter::with_sys(t.path(), f.clone()).unwrap();
        (t, s, f)
    }

    #[test]
    fn lowers_go_to_the_kernel_top_most_first() {
        let (t, s, f) = fake(true);
        let l = lowers(t.path(), 3);
        let rootfs = s.prepare("c1", &l).unwrap();
        let dir = s.dir.join("c1");
        assert_eq!(rootfs, dir.join("rootfs"));
        assert_eq!(
            f.calls(),
            vec![format!(
                "fsmount {} lowers={},{},{} upper={} work={}",
                rootfs.display(),
                l[2].display(),
                l[1].display(),
                l[0].display(),
                dir.join("upper").display(),
                dir.join("work").display()
            )]
        );
        assert_eq!(s.list().unwrap(), vec!["c1".to_string()]);
    }

    #[test]
    fn falls_back_to_mount_with_an_option_string() {
        let (t, s, f) = fake(false);
        let mut l = lowers(t.path(), 2);
        let odd = t.path().join("a:b,c\\d");
        fs::create_dir(&odd).unwrap();
        l.push(odd.clone());
        let rootfs = s.prepare("c1", &l).unwrap();
        let dir = s.dir.join("c1");
        let want = format!(
            "mount {} lowerdir={}:{}:{},upperdir={},workdir={},index=off",
            rootfs.display(),
            escape(&odd),
            l[1].display(),
            l[0].display(),
            dir.join("upper").display(),
            dir.join("work").display()
        );
        assert_eq!(f.calls(), vec![want]);
        assert!(escape(&odd).ends_with("a\\:b\\,c\\\\d"));
    }

    #[test]
    fn too_many_layers_for_mount_2_is_a_clear_error_and_leaves_nothing() {
        let (t, s, f) = fake(false);
        let l = lowers(t.path(), 150);
        let err = s.prepare("c1", &l).unwrap_err();
        assert!(
            matches!(err, SnapshotError::TooManyLayers { layers: 150, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("150 layers"), "{err}");
        assert!(f.calls().is_empty());
        assert!(s.list().unwrap().is_empty());
        assert!(!s.dir.join("c1").exists());
    }

    #[test]
    fn a_failed_mount_leaves_nothing() {
        let t = tempfile::tempdir().unwrap();
        let mut fake = Fake::new(true);
        fake.new_api = Err(Errno::EINVAL);
        let s = Snapshotter::with_sys(t.path(), Arc::new(fake)).unwrap();
        let l = lowers(t.path(), 2);
        let err = s.prepare("c1", &l).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("c1") && msg.contains("e overlay: bad"),
            "{msg}"
        );
        assert!(!s.dir.join("c1").exists());

        let mut fake = Fake::new(false);
        fake.legacy = Err(Errno::EPERM);
        let s = Snapshotter::with_sys(t.path(), Arc::new(fake)).unwrap();
        let err = s.prepare("c1", &l).unwrap_err();
        assert!(matches!(err, SnapshotError::Mount { .. }), "{err}");
        assert!(!s.dir.join("c1").exists());
    }

    #[test]
    fn bad_ids_lowers_and_duplicates_are_refused() {
        let (t, s, f) = fake(true);
        for id in ["", "..", "a/b", "../x"] {
            assert!(
                matches!(s.prepare(id, &[]), Err(SnapshotError::Id(_))),
                "{id:?}"
            );
            assert!(matches!(s.remove(id), Err(SnapshotError::Id(_))), "{id:?}");
        }
        let missing = t.path().join("nope");
        let err = s.prepare("c1", std::slice::from_ref(&missing)).unwrap_err();
        assert!(
            err.to_string().contains(&missing.display().to_string()),
            "{err}"
        );
        let file = t.path().join("file");
        fs::write(&file, b"").unwrap();
        let err = s.prepare("c1", &[file]).unwrap_err();
        assert!(err.to_string().contains("not a directory"), "{err}");
        assert!(!s.dir.join("c1").exists());
        s.prepare("c1", &[]).unwrap();
        assert!(matches!(
            s.prepare("c1", &[]),
            Err(SnapshotError::Exists(_))
        ));
        // The first mount of c1 is untouched by the refused second one.
        assert_eq!(f.calls().len(), 1);
        assert!(s.dir.join("c1/upper").is_dir());
    }

    #[test]
    fn an_empty_image_gets_an_empty_lower() {
        let (_t, s, f) = fake(true);
        s.prepare("c1", &[]).unwrap();
        let empty = s.dir.join("c1/empty");
        assert!(empty.is_dir());
        assert!(
            f.calls()[0].contains(&format!("lowers={} ", empty.display())),
            "{:?}",
            f.calls()
        );
    }

    #[test]
    fn removing_a_missing_snapshot_is_fine() {
        let (_t, s, f) = fake(true);
        s.remove("ghost").unwrap();
        assert!(f.calls().is_empty());
    }

    // --- With the kernel (tests run as root) ---

    fn mounted(p: &Path) -> bool {
        let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
        let p = p.to_str().unwrap();
        info.lines().any(|l| l.split(' ').nth(4) == Some(p))
    }

    /// Unmounts on drop, so that a failing test leaves no mount behind.
    struct Cleanup<'a>(&'a Snapshotter, Vec<&'static str>);
    impl Drop for Cleanup<'_> {
        fn drop(&mut self) {
            for id in &self.1 {
                let _ = self.0.remove(id);
            }
        }
    }

    fn real() -> (tempfile::TempDir, Snapshotter) {
        let t = tempfile::tempdir().unwrap();
        let s = Snapshotter::open(t.path()).unwrap();
        (t, s)
    }

    #[test]
    fn mounts_an_overlay_whose_writes_land_in_upper() {
        let (t, s) = real();
        let _c = Cleanup(&s, vec!["c1"]);
        let l = lowers(t.path(), 2);
        fs::write(l[0].join("base"), b"base").unwrap();
        fs::write(l[0].join("shadowed"), b"from base").unwrap();
        fs::write(l[1].join("shadowed"), b"from top").unwrap();
        let rootfs = s.prepare("c1", &l).unwrap();
        assert!(mounted(&rootfs));
        assert_eq!(fs::read(rootfs.join("base")).unwrap(), b"base");
        assert_eq!(fs::read(rootfs.join("shadowed")).unwrap(), b"from top");
        fs::write(rootfs.join("new"), b"written").unwrap();
        fs::write(rootfs.join("base"), b"changed").unwrap();
        let upper = s.dir.join("c1/upper");
        assert_eq!(fs::read(upper.join("new")).unwrap(), b"written");
        assert_eq!(fs::read(upper.join("base")).unwrap(), b"changed");
        assert_eq!(fs::read(l[0].join("base")).unwrap(), b"base");
        let u = s.usage("c1").unwrap();
        assert!(u.inodes >= 4 && u.bytes > 0, "{u:?}");

        s.remove("c1").unwrap();
        assert!(!mounted(&rootfs));
        assert!(!s.dir.join("c1").exists());
        assert!(s.list().unwrap().is_empty());
        assert!(matches!(s.usage("c1"), Err(SnapshotError::NotFound(_))));
        // The layers are untouched.
        assert_eq!(fs::read(l[1].join("shadowed")).unwrap(), b"from top");
    }

    #[test]
    fn whiteouts_and_opaque_dirs_from_unpacked_layers_hide_lower_files() {
        use super::super::layer::{Compression, LayerStore};
        fn tar(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
            let mut b = tar::Builder::new(Vec::new());
            build(&mut b);
            b.into_inner().unwrap()
        }
        fn file(b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]) {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            b.append_data(&mut h, path, data).unwrap();
        }
        let (t, s) = real();
        let _c = Cleanup(&s, vec!["c1"]);
        let layers = LayerStore::open(t.path()).unwrap();
        let base = tar(|b| {
            file(b, "etc/hosts", b"127.0.0.1 localhost\n");
            file(b, "etc/keep", b"kept");
            file(b, "var/lib/old/a", b"a");
            file(b, "var/lib/old2", b"b");
        });
        let top = tar(|b| {
            file(b, "etc/.wh.hosts", b"");
            file(b, "var/lib/.wh..wh..opq", b"");
            file(b, "var/lib/new", b"n");
        });
        let l1 = layers
            .unpack(
                &base[..],
                Compression::None,
                &super::super::digest::Digest::of(&base),
            )
            .unwrap();
        let l2 = layers
            .unpack(
                &top[..],
                Compression::None,
                &super::super::digest::Digest::of(&top),
            )
            .unwrap();
        let rootfs = s
            .prepare("c1", &[l1.path.clone(), l2.path.clone()])
            .unwrap();
        assert!(!rootfs.join("etc/hosts").exists());
        assert_eq!(fs::read(rootfs.join("etc/keep")).unwrap(), b"kept");
        let mut in_lib: Vec<_> = fs::read_dir(rootfs.join("var/lib"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        in_lib.sort();
        assert_eq!(in_lib, vec!["new"]);
        // Deleting a lower file in the container makes a whiteout in upper.
        fs::remove_file(rootfs.join("etc/keep")).unwrap();
        assert!(l1.path.join("etc/keep").exists());
        s.remove("c1").unwrap();
        assert!(!mounted(&rootfs));
    }

    #[test]
    fn one_hundred_fifty_layers() {
        let (t, s) = real();
        let _c = Cleanup(&s, vec!["c1"]);
        // Long paths, so that the legacy option string could never hold them.
        let l: Vec<PathBuf> = (0..150)
            .map(|i| {
                let p = t.path().join(format!("layers/{i:03}-{}", "x".repeat(40)));
                fs::create_dir_all(&p).unwrap();
                fs::write(p.join(format!("f{i}")), i.to_string()).unwrap();
                fs::write(p.join("top"), i.to_string()).unwrap();
                p
            })
            .collect();
        let rootfs = s.prepare("c1", &l).unwrap();
        for i in 0..150 {
            assert!(rootfs.join(format!("f{i}")).exists(), "f{i}");
        }
        assert_eq!(fs::read_to_string(rootfs.join("top")).unwrap(), "149");
        s.remove("c1").unwrap();
        assert!(!mounted(&rootfs));
        assert!(!s.dir.join("c1").exists());
    }

    /// The real kernel, minus the new mount API.
    struct OldKernel;
    impl OverlaySys for OldKernel {
        fn mount_overlay(
            &self,
            _: &Path,
            _: &[&Path],
            _: &Path,
            _: &Path,
        ) -> Result<(), MountError> {
            Err(MountError::Unsupported("pretending to be Linux 6.7".into()))
        }
        fn mount_legacy(&self, target: &Path, data: &str) -> Result<(), MountError> {
            Linux.mount_legacy(target, data)
        }
        fn umount(&self, target: &Path, flags: MntFlags) -> nix::Result<()> {
            Linux.umount(target, flags)
        }
    }

    #[test]
    fn the_mount_2_fallback_mounts_the_same_overlay() {
        let t = tempfile::tempdir().unwrap();
        let s = Snapshotter::with_sys(t.path(), Arc::new(OldKernel)).unwrap();
        let _c = Cleanup(&s, vec!["c1", "c2"]);
        let l = lowers(t.path(), 3);
        for (i, d) in l.iter().enumerate() {
            fs::write(d.join("top"), i.to_string()).unwrap();
        }
        let rootfs = s.prepare("c1", &l).unwrap();
        assert!(mounted(&rootfs));
        assert_eq!(fs::read_to_string(rootfs.join("top")).unwrap(), "2");
        let empty = s.prepare("c2", &[]).unwrap();
        assert_eq!(fs::read_dir(&empty).unwrap().count(), 0);
        s.remove("c1").unwrap();
        s.remove("c2").unwrap();
        assert!(!mounted(&rootfs) && !mounted(&empty));
    }

    #[test]
    fn an_empty_image_mounts() {
        let (_t, s) = real();
        let _c = Cleanup(&s, vec!["c1"]);
        let rootfs = s.prepare("c1", &[]).unwrap();
        assert!(mounted(&rootfs));
        fs::create_dir(rootfs.join("etc")).unwrap();
        assert!(s.dir.join("c1/upper/etc").is_dir());
        s.remove("c1").unwrap();
        assert!(!s.dir.join("c1").exists());
    }

    #[test]
    fn a_busy_rootfs_is_detached_and_deleted() {
        let (t, s) = real();
        let _c = Cleanup(&s, vec!["c1"]);
        let l = lowers(t.path(), 1);
        let rootfs = s.prepare("c1", &l).unwrap();
        // An open directory inside keeps the mount busy.
        let busy = fs::File::open(&rootfs).unwrap();
        let inner = nix::fcntl::open(
            &rootfs,
            nix::fcntl::OFlag::O_PATH,
            nix::sys::stat::Mode::empty(),
        )
        .unwrap();
        s.remove("c1").unwrap();
        assert!(!mounted(&rootfs));
        assert!(!s.dir.join("c1").exists());
        drop((busy, inner));
    }

    #[test]
    fn prepare_speed() {
        let (t, s) = real();
        let l = lowers(t.path(), 5);
        fs::write(l[4].join("marker"), b"m").unwrap();
        let mut times = Vec::new();
        for i in 0..100 {
            let id = format!("speed-{i}");
            let start = std::time::Instant::now();
            let rootfs = s.prepare(&id, &l).unwrap();
            times.push(start.elapsed());
            assert!(rootfs.join("marker").exists());
            s.remove(&id).unwrap();
        }
        times.sort();
        println!(
            "snapshot prepare, 5 layers: median {:?}, p90 {:?}, min {:?}",
            times[50], times[90], times[0]
        );
        assert!(s.list().unwrap().is_empty());
    }
}
