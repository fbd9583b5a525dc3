//! emptyDir volumes, and the tmpfs that memory-backed volumes live on.
//!
//! As upstream's `empty_dir` plugin: the directory is mode 0777 so that any
//! user of the pod's containers may write it; medium `Memory` mounts a tmpfs
//! there, sized by `sizeLimit` or else the node's allocatable memory. The
//! mount point is found by comparing the directory's device with its
//! parent's, which needs no parsing of mountinfo.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use thiserror::Error;

/// Errors of this module.
#[derive(Debug, Error)]
pub enum EmptyDirError {
    /// A medium upstream knows but berth does not offer.
    #[error("emptyDir medium {0:?} is not supported (use \"\" or \"Memory\")")]
    Medium(String),
    /// A size that is no size.
    #[error("emptyDir size {0} is negative")]
    Size(i64),
    /// A file system call failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// On what.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> EmptyDirError {
    let path = path.to_path_buf();
    move |source| EmptyDirError::Io {
        action,
        path,
        source,
    }
}

/// Where an emptyDir's content is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Medium {
    /// The node's disk, under the kubelet's root.
    Disk,
    /// A tmpfs of this many bytes (0: the kernel's default).
    Memory(u64),
}

impl Medium {
    /// The medium named in the spec; `size` is what a `Memory` tmpfs may
    /// hold, 0 for the kernel's default (half the RAM), as when the node's
    /// allocatable memory is not known.
    pub fn parse(name: Option<&str>, size: i64) -> Result<Self, EmptyDirError> {
        match name.unwrap_or("") {
            "" => Ok(Self::Disk),
            "Memory" => u64::try_from(size)
                .map(Self::Memory)
                .map_err(|_| EmptyDirError::Size(size)),
            other => Err(EmptyDirError::Medium(other.to_owned())),
        }
    }
}

/// Makes `dir` with `mode` and, for `Memory`, a tmpfs on it. Idempotent: an
/// existing mount is kept as it is.
pub fn set_up(dir: &Path, medium: Medium, mode: u32) -> Result<(), EmptyDirError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o750)
        .create(dir)
        .map_err(io_err("creating", dir))?;
    if let Medium::Memory(size) = medium
        && !is_mount_point(dir)?
    {
        let options = if size == 0 {
            format!("mode={mode:o}")
        } else {
            format!("mode={mode:o},size={size}")
        };
        mount(
            Some("tmpfs"),
            dir,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(options.as_str()),
        )
        .map_err(|e| io_err("mounting tmpfs on", dir)(e.into()))?;
    }
    // Explicitly, because the umask trims what mkdir asked for.
    fs::set_permissions(dir, fs::Permissions::from_mode(mode))
        .map_err(io_err("setting the mode of", dir))
}

/// Whether something is mounted on `dir` (it is on another device than its parent).
pub fn is_mount_point(dir: &Path) -> Result<bool, EmptyDirError> {
    let own = fs::symlink_metadata(dir).map_err(io_err("inspecting", dir))?;
    let parent = dir.join("..");
    let up = fs::metadata(&parent).map_err(io_err("inspecting", &parent))?;
    Ok(own.dev() != up.dev())
}

/// Unmounts whatever is on `dir` (if anything) and removes it.
pub fn tear_down(dir: &Path) -> Result<(), EmptyDirError> {
    match fs::symlink_metadata(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("inspecting", dir)(e)),
        Ok(_) => {}
    }
    while is_mount_point(dir)? {
        umount2(dir, MntFlags::empty()).map_err(|e| io_err("unmounting", dir)(e.into()))?;
    }
    // Never reached while a mount remains: removal would empty the mount.
    fs::remove_dir_all(dir).map_err(io_err("removing", dir))
}
