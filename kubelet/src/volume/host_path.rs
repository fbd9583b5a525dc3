//! hostPath volumes: a path of the node, checked against the volume's `type`
//! as upstream's `hostpath` plugin checks it (`stat`, so through symlinks).
//! Nothing is made under the pod's directory.

use std::fs::{self, DirBuilder, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use k8s_openapi::api::core::v1::HostPathVolumeSource;
use thiserror::Error;

/// Errors of this module.
#[derive(Debug, Error)]
pub enum HostPathError {
    /// A relative path, or one with `..`.
    #[error("hostPath {path:?} must be absolute and without '..'")]
    Path {
        /// The path as written.
        path: String,
    },
    /// A `type` upstream does not know.
    #[error("hostPath {path:?}: unknown type {kind:?}")]
    UnknownType {
        /// The path.
        path: String,
        /// The type as written.
        kind: String,
    },
    /// Nothing at the path, for a type that does not create.
    #[error("hostPath type check failed: {path} does not exist (type {kind})")]
    Missing {
        /// The path.
        path: String,
        /// The type asked for.
        kind: String,
    },
    /// Something else than the type asked for.
    #[error("hostPath type check failed: {path} is not a {what}")]
    WrongType {
        /// The path.
        path: String,
        /// What it should have been.
        what: &'static str,
    },
    /// A file system call failed.
    #[error("hostPath {path}: {action}: {source}")]
    Io {
        /// The path.
        path: String,
        /// What was being done.
        action: &'static str,
        /// The error.
        source: io::Error,
    },
}

/// Checks (and for the `OrCreate` types, creates) the volume's path; returns it.
pub fn prepare(source: &HostPathVolumeSource) -> Result<PathBuf, HostPathError> {
    let path = Path::new(&source.path);
    let shown = || source.path.clone();
    if !path.is_absolute() || path.components().any(|c| c == Component::ParentDir) {
        return Err(HostPathError::Path { path: shown() });
    }
    let kind = source.type_.as_deref().unwrap_or("");
    let io = |action| {
        move |source| HostPathError::Io {
            path: shown(),
            action,
            source,
        }
    };
    let stat = match fs::metadata(path) {
        Ok(m) => Some(m),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(io("stat")(e)),
    };
    let want: (&'static str, fn(&fs::FileType) -> bool) = match kind {
        "" => return Ok(path.to_path_buf()),
        "DirectoryOrCreate" | "Directory" => ("directory", fs::FileType::is_dir),
        "FileOrCreate" | "File" => ("file", fs::FileType::is_file),
        "Socket" => ("socket file", FileTypeExt::is_socket),
        "CharDevice" => ("character device", FileTypeExt::is_char_device),
        "BlockDevice" => ("block device", FileTypeExt::is_block_device),
        other => {
            return Err(HostPathError::UnknownType {
                path: shown(),
                kind: other.to_owned(),
            });
        }
    };
    match stat {
        Some(meta) if (want.1)(&meta.file_type()) => {}
        Some(_) => {
            return Err(HostPathError::WrongType {
                path: shown(),
                what: want.0,
            });
        }
        None if kind == "DirectoryOrCreate" => {
            DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(path)
                .map_err(io("creating the directory"))?;
        }
        None if kind == "FileOrCreate" => {
            if let Some(parent) = path.parent() {
                DirBuilder::new()
                    .recursive(true)
                    .mode(0o755)
                    .create(parent)
                    .map_err(io("creating the parent directories"))?;
            }
            // create, not create_new: another pod may have made it meanwhile.
            OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o644)
                .open(path)
                .map_err(io("creating the file"))?;
        }
        None => {
            return Err(HostPathError::Missing {
                path: shown(),
                kind: kind.to_owned(),
            });
        }
    }
    Ok(path.to_path_buf())
}
