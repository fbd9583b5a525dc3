//! OCI bundles: a directory with config.json and a rootfs.

use std::path::{Path, PathBuf};

use anyhow::Result;
use tempfile::TempDir;

use crate::rootfs::clone_rootfs;
use crate::spec::Spec;
use crate::workdir::tempdir;

/// A bundle in a temp directory, removed on drop.
pub struct Bundle {
    dir: TempDir,
    spec: Spec,
}

impl Bundle {
    /// A bundle with a private copy of the busybox rootfs at `rootfs/`.
    /// (`root.path` of the spec must be "rootfs", as in the default.)
    pub fn new(spec: &Spec) -> Result<Bundle> {
        let dir = tempdir("bundle-")?;
        clone_rootfs(&dir.path().join("rootfs"))?;
        let b = Bundle {
            dir,
            spec: spec.clone(),
        };
        spec.write(&b.config_path())?;
        Ok(b)
    }

    /// A bundle whose `root.path` is the absolute path of an existing rootfs
    /// (shared by many bundles; keep it read-only).
    pub fn with_rootfs(spec: &Spec, rootfs: &Path) -> Result<Bundle> {
        let spec = spec.clone().root_path(rootfs);
        let b = Bundle {
            dir: tempdir("bundle-")?,
            spec,
        };
        b.spec.write(&b.config_path())?;
        Ok(b)
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The bundle path as a string (for command lines).
    pub fn path_str(&self) -> &str {
        self.dir.path().to_str().expect("temp paths are UTF-8")
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.json")
    }

    pub fn spec(&self) -> &Spec {
        &self.spec
    }

    /// Replaces config.json.
    pub fn write_spec(&mut self, spec: &Spec) -> Result<()> {
        spec.write(&self.config_path())?;
        self.spec = spec.clone();
        Ok(())
    }

    /// The rootfs directory (root.path resolved against the bundle).
    pub fn rootfs(&self) -> PathBuf {
        let p = self.spec.0["root"]["path"].as_str().unwrap_or("rootfs");
        self.dir.path().join(p)
    }

    /// A path inside the bundle directory (for pid files, hook output, ...).
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}
