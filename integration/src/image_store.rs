//! `berth image` on a private store: a temp root and runtime config per test,
//! commands run with a deadline, and a consistency check of what is on disk.
//!
//! Dropping an [`ImageStore`] unmounts whatever snapshots a failed test left
//! mounted, so its directory can be removed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use sha2::{Digest, Sha256};
use tempfile::TempDir;

use crate::exec::{self, Output, Spawned};
use crate::runtime::binary;
use crate::workdir::tempdir;

/// Deadline of one `berth image` command.
pub const IMAGE_TIMEOUT: Duration = Duration::from_secs(120);

pub struct ImageStore {
    dir: TempDir,
    seq: AtomicUsize,
}

impl ImageStore {
    /// An empty store with an empty runtime config.
    pub fn new() -> Result<ImageStore> {
        Self::with_config("")
    }

    /// An empty store with `config` as its runtime.toml.
    pub fn with_config(config: &str) -> Result<ImageStore> {
        let dir = tempdir("images-")?;
        std::fs::create_dir_all(dir.path().join("root"))?;
        std::fs::create_dir_all(dir.path().join("out"))?;
        std::fs::write(dir.path().join("runtime.toml"), config)?;
        Ok(ImageStore {
            dir,
            seq: AtomicUsize::new(0),
        })
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    pub fn scratch(&self) -> &Path {
        self.dir.path()
    }

    /// `berth image --root R --config C ARGS…`
    pub fn command(&self, args: &[&str]) -> Result<Command> {
        let mut c = Command::new(&binary()?.target);
        c.arg("image")
            .arg("--root")
            .arg(self.root())
            .arg("--config")
            .arg(self.dir.path().join("runtime.toml"))
            .args(args);
        Ok(c)
    }

    fn out_prefix(&self, args: &[&str]) -> PathBuf {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let sub = args.first().copied().unwrap_or("cmd");
        self.dir.path().join("out").join(format!("{n}-{sub}"))
    }

    /// Runs a command (any exit code is Ok).
    pub fn cmd(&self, args: &[&str]) -> Result<Output> {
        exec::run(self.command(args)?, &self.out_prefix(args), IMAGE_TIMEOUT)
    }

    /// Runs a command that must succeed.
    pub fn ok(&self, args: &[&str]) -> Result<Output> {
        self.cmd(args)?.check()
    }

    /// Runs a command that must fail; returns its output.
    pub fn fails(&self, args: &[&str]) -> Result<Output> {
        let out = self.cmd(args)?;
        ensure!(!out.success(), "expected a failure: {out}");
        Ok(out)
    }

    pub fn spawn(&self, args: &[&str]) -> Result<Spawned> {
        Spawned::start(self.command(args)?, &self.out_prefix(args))
    }

    /// Image IDs (`berth image ls -q`).
    pub fn ids(&self) -> Result<Vec<String>> {
        Ok(self
            .ok(&["ls", "-q"])?
            .stdout
            .lines()
            .map(str::to_string)
            .collect())
    }

    /// `berth image inspect` as JSON.
    pub fn inspect(&self, image: &str) -> Result<serde_json::Value> {
        let out = self.ok(&["inspect", image])?;
        serde_json::from_str(&out.stdout).with_context(|| format!("inspect output: {out}"))
    }

    /// Blob digests (hex) in the content store.
    pub fn blobs(&self) -> Result<Vec<String>> {
        let dir = self.root().join("blobs/sha256");
        let mut out = Vec::new();
        if dir.is_dir() {
            for e in std::fs::read_dir(&dir)? {
                out.push(e?.file_name().to_string_lossy().into_owned());
            }
        }
        out.sort();
        Ok(out)
    }

    /// Every committed blob hashes to its name, and no unpack is left half
    /// done: what a crash or a bad input must never break.
    pub fn assert_consistent(&self) -> Result<()> {
        for hex in self.blobs()? {
            let path = self.root().join("blobs/sha256").join(&hex);
            let data = std::fs::read(&path)?;
            let actual = hex::encode(Sha256::digest(&data));
            ensure!(
                actual == hex,
                "blob {} holds content hashing to {actual}",
                path.display()
            );
        }
        let layers = self.root().join("layers");
        if layers.is_dir() {
            for e in std::fs::read_dir(&layers)? {
                let e = e?;
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') {
                    continue;
                }
                ensure!(
                    e.path().join("fs").is_dir(),
                    "layer dir {} has no fs/",
                    e.path().display()
                );
            }
        }
        Ok(())
    }

    /// `mount IMAGE NAME`: the mounted rootfs.
    pub fn mount(&self, image: &str, name: &str) -> Result<PathBuf> {
        let out = self.ok(&["mount", image, name])?;
        let p = PathBuf::from(out.stdout.trim());
        if !p.is_dir() {
            bail!("mount printed {}, not a directory", p.display());
        }
        Ok(p)
    }
}

impl Drop for ImageStore {
    fn drop(&mut self) {
        let snaps = self.root().join("snapshots");
        let Ok(dir) = std::fs::read_dir(&snaps) else {
            return;
        };
        for e in dir.flatten() {
            let rootfs = e.path().join("rootfs");
            let _ = nix::mount::umount2(&rootfs, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}
