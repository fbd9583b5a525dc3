//! A set of files replaced all at once, as upstream's `AtomicWriter` writes
//! configMap, secret, downwardAPI and projected volumes: a reader in the
//! container sees either the old files or the new ones, never a mix.
//!
//! Under the volume's directory:
//! - `..2026_11_24_05_43_54.123456789/` holds one generation of the files;
//! - `..data -> ..2026_…` names the current generation; it is replaced by
//!   renaming a fresh symlink `..data_tmp` over it, since a rename is atomic
//!   and rewriting a symlink in place is not;
//! - `key -> ..data/key`, one per top-level path, is what the user opens, so
//!   that its path stays the same across generations.
//!
//! A write that would produce the same files (content and mode) leaves the
//! current generation alone, so that watchers in the container see no event.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use thiserror::Error;

/// The symlink to the current generation.
pub const DATA_DIR: &str = "..data";
/// The symlink renamed over [`DATA_DIR`].
pub const DATA_DIR_TMP: &str = "..data_tmp";

/// Errors of this module.
#[derive(Debug, Error)]
pub enum AtomicWriteError {
    /// A payload path that could escape the volume or hide among our names.
    #[error("file path {path:?} is not usable in a volume: {reason}")]
    InvalidPath {
        /// The path as given.
        path: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A top-level name taken by something that is not our symlink.
    #[error("{path} exists and is not a symlink into {DATA_DIR}; remove it")]
    Occupied {
        /// The path in the way.
        path: PathBuf,
    },
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

/// One file of a payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileProjection {
    /// Its content.
    pub data: Vec<u8>,
    /// Its permission bits (`0o644`).
    pub mode: u32,
}

/// Files by their relative path (`key`, `dir/key`).
pub type Payload = BTreeMap<String, FileProjection>;

/// What [`write()`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The files were already there, as given.
    Unchanged,
    /// A new generation replaced the old one (or was the first).
    Written,
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> AtomicWriteError {
    let path = path.to_path_buf();
    move |source| AtomicWriteError::Io {
        action,
        path,
        source,
    }
}

/// The path cleaned of empty and `.` components, or why it is refused: as
/// upstream, no absolute paths, no `..` component, nothing starting with `..`
/// (our own names), at most 4096 bytes with components of at most 255.
pub fn clean_path(path: &str) -> Result<String, AtomicWriteError> {
    let invalid = |reason| AtomicWriteError::InvalidPath {
        path: path.to_owned(),
        reason,
    };
    if path.len() > 4096 {
        return Err(invalid("longer than 4096 bytes"));
    }
    if path.starts_with('/') {
        return Err(invalid("must be relative"));
    }
    if path.starts_with("..") {
        return Err(invalid("must not start with '..'"));
    }
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(invalid("must not contain '..'")),
            p if p.len() > 255 => return Err(invalid("has a component longer than 255 bytes")),
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        return Err(invalid("is empty"));
    }
    if parts[0].starts_with("..") {
        return Err(invalid("must not start with '..'"));
    }
    Ok(parts.join("/"))
}

/// Makes the files under `dir` exactly `payload`, atomically for readers.
pub fn write(dir: &Path, payload: &Payload) -> Result<WriteOutcome, AtomicWriteError> {
    let mut clean = BTreeMap::new();
    for (path, file) in payload {
        if file.mode > 0o777 {
            return Err(AtomicWriteError::InvalidPath {
                path: path.clone(),
                reason: "mode is not within 0 and 0777",
            });
        }
        clean.insert(clean_path(path)?, file);
    }

    let data_link = dir.join(DATA_DIR);
    let current = match fs::read_link(&data_link) {
        Ok(target) => target
            .to_str()
            .filter(|t| is_generation(t))
            .map(str::to_owned),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(io_err("reading the symlink", &data_link)(e)),
    };
    let unchanged = match &current {
        Some(name) => same_files(&dir.join(name), &clean)?,
        None => false,
    };

    let generation = if unchanged {
        current.clone().unwrap_or_default()
    } else {
        let name = new_generation(dir)?;
        write_files(&dir.join(&name), &clean)?;
        let tmp = dir.join(DATA_DIR_TMP);
        remove_file_if_exists(&tmp)?;
        symlink(&name, &tmp).map_err(io_err("creating the symlink", &tmp))?;
        fs::rename(&tmp, &data_link).map_err(io_err("renaming into place", &tmp))?;
        name
    };

    let top: BTreeSet<&str> = clean
        .keys()
        .map(|p| p.split('/').next().unwrap_or(p))
        .collect();
    for name in &top {
        user_visible_link(dir, name)?;
    }

    for entry in fs::read_dir(dir).map_err(io_err("listing", dir))? {
        let entry = entry.map_err(io_err("listing", dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let path = entry.path();
        if is_generation(name) {
            if name != generation {
                fs::remove_dir_all(&path).map_err(io_err("removing the old generation", &path))?;
            }
        } else if !name.starts_with("..") && !top.contains(name) {
            // Only our links go: anything else was not put there by us.
            let is_link = entry.file_type().map(|t| t.is_symlink()).unwrap_or(false);
            if is_link {
                fs::remove_file(&path).map_err(io_err("removing the stale link", &path))?;
            }
        }
    }

    Ok(if unchanged {
        WriteOutcome::Unchanged
    } else {
        WriteOutcome::Written
    })
}

/// Whether `name` is a generation directory's (`..` followed by a digit).
fn is_generation(name: &str) -> bool {
    name.strip_prefix("..")
        .and_then(|rest| rest.chars().next())
        .is_some_and(|c| c.is_ascii_digit())
}

/// Creates `..YYYY_MM_DD_HH_MM_SS.NNNNNNNNN` (UTC) under `dir`, with 0755 as
/// upstream (readable by a container's non-root user).
fn new_generation(dir: &Path) -> Result<String, AtomicWriteError> {
    loop {
        let now = jiff::Timestamp::now();
        let name = format!(
            "..{}.{:09}",
            now.strftime("%Y_%m_%d_%H_%M_%S"),
            now.subsec_nanosecond()
        );
        let path = dir.join(&name);
        match fs::DirBuilder::new().mode(0o755).create(&path) {
            Ok(()) => {
                set_mode(&path, 0o755)?;
                return Ok(name);
            }
            // Two writes within one clock tick: take the next.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err("creating", &path)(e)),
        }
    }
}

fn set_mode(path: &Path, mode: u32) -> Result<(), AtomicWriteError> {
    // Explicitly, because the umask trims what create asked for.
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(io_err("setting the mode of", path))
}

fn write_files(
    generation: &Path,
    files: &BTreeMap<String, &FileProjection>,
) -> Result<(), AtomicWriteError> {
    for (rel, file) in files {
        let path = generation.join(rel);
        if let Some(parent) = path.parent() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(parent)
                .map_err(io_err("creating", parent))?;
        }
        let mut out = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(file.mode)
            .open(&path)
            .map_err(io_err("creating", &path))?;
        out.write_all(&file.data)
            .map_err(io_err("writing", &path))?;
        set_mode(&path, file.mode)?;
    }
    Ok(())
}

/// Whether the generation at `dir` holds exactly `files`, content and mode.
fn same_files(
    dir: &Path,
    files: &BTreeMap<String, &FileProjection>,
) -> Result<bool, AtomicWriteError> {
    let mut found = BTreeSet::new();
    let mut stack = vec![(dir.to_path_buf(), String::new())];
    while let Some((path, rel)) = stack.pop() {
        let entries = match fs::read_dir(&path) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io_err("listing", &path)(e)),
        };
        for entry in entries {
            let entry = entry.map_err(io_err("listing", &path))?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                return Ok(false);
            };
            let rel = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let meta = entry
                .metadata()
                .map_err(io_err("inspecting", &entry.path()))?;
            if meta.is_dir() {
                stack.push((entry.path(), rel));
                continue;
            }
            let Some(want) = files.get(&rel) else {
                return Ok(false);
            };
            if meta.permissions().mode() & 0o7777 != want.mode {
                return Ok(false);
            }
            let have = fs::read(entry.path()).map_err(io_err("reading", &entry.path()))?;
            if have != want.data {
                return Ok(false);
            }
            found.insert(rel);
        }
    }
    Ok(found.len() == files.len())
}

/// Ensures `dir/name -> ..data/name`.
fn user_visible_link(dir: &Path, name: &str) -> Result<(), AtomicWriteError> {
    let path = dir.join(name);
    let target = Path::new(DATA_DIR).join(name);
    match fs::symlink_metadata(&path) {
        Ok(meta) if meta.file_type().is_symlink() => {
            if fs::read_link(&path).map_err(io_err("reading the symlink", &path))? == target {
                return Ok(());
            }
            fs::remove_file(&path).map_err(io_err("removing the wrong link", &path))?;
        }
        Ok(_) => return Err(AtomicWriteError::Occupied { path }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("inspecting", &path)(e)),
    }
    symlink(&target, &path).map_err(io_err("creating the symlink", &path))
}

fn remove_file_if_exists(path: &Path) -> Result<(), AtomicWriteError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("removing", path)(e)),
        _ => Ok(()),
    }
}
