//! The per-process scratch directory every fixture lives in, and unique names.
//!
//! Everything a test process creates on disk (rootfs template, bundles,
//! runtime state roots, containerd dirs) lives below one directory,
//! `$TMPDIR/berth-it-<pid>-XXXX`, removed when the process exits. Directories
//! left by processes that died (a killed test run) are removed on the next start.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result};
use tempfile::TempDir;

const PREFIX: &str = "berth-it-";

static BASE: OnceLock<PathBuf> = OnceLock::new();

/// The scratch directory of this test process (created on first use).
pub fn base_dir() -> &'static Path {
    BASE.get_or_init(|| {
        let tmp = std::env::temp_dir();
        remove_stale(&tmp);
        let dir = tempfile::Builder::new()
            .prefix(&format!("{PREFIX}{}-", std::process::id()))
            .tempdir_in(&tmp)
            .expect("cannot create the test scratch directory")
            .keep();
        // SAFETY: registering a plain extern "C" function without captures.
        unsafe { libc::atexit(remove_base_at_exit) };
        dir
    })
}

extern "C" fn remove_base_at_exit() {
    if let Some(dir) = BASE.get() {
        crate::leak::kill_strays();
        remove_tree_if_unmounted(dir);
    }
}

/// Removes `dir` recursively unless something is still mounted below it
/// (then deleting could reach into a mounted filesystem; it is left alone).
pub fn remove_tree_if_unmounted(dir: &Path) -> bool {
    if !mounts_below(dir).is_empty() {
        eprintln!(
            "berth-integration: not removing {}: mounts remain below it",
            dir.display()
        );
        return false;
    }
    std::fs::remove_dir_all(dir).is_ok()
}

/// Mount points (from /proc/self/mountinfo) at or below `dir`.
pub fn mounts_below(dir: &Path) -> Vec<PathBuf> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(unescape_mountinfo(m)))
        .filter(|m| m.starts_with(dir))
        .collect()
}

/// Undoes the octal escapes (`\040` for a space) of /proc/self/mountinfo fields.
pub fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn remove_stale(tmp: &Path) {
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            remove_tree_if_unmounted(&e.path());
        }
    }
}

/// A new temporary directory below [`base_dir`], removed when dropped.
pub fn tempdir(prefix: &str) -> Result<TempDir> {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(base_dir())
        .with_context(|| format!("creating a temp dir in {}", base_dir().display()))
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A container ID unique on this machine: `<tag>-<pid>-<n>`.
pub fn unique_id(tag: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{tag}-{}-{n}", std::process::id())
}
