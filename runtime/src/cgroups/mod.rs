//! Control groups for containers, v1 and v2, behind one trait.
//!
//! Everything berth creates lives below one parent directory (`berth` by
//! default) in each hierarchy; a container's cgroup is
//! `<mount>/<parent>/<relative>`, where `relative` comes from
//! [`resolve_path`]. [`open`] picks the manager from the host's layout
//! ([`detect`]): v1 (and hybrid, managed as v1 through the v1 controller
//! mounts) or v2. [`open_v2`] opens a v2 manager on an explicit cgroup2 mount.
//!
//! Built on the `cgroups-rs` controllers for the typed file writes; mounts,
//! directories, stats, freezing waits and the v2 device filter are ours (see
//! each submodule for why).

mod common;
mod devices;
pub use devices::rule as device_rule;
mod error;
mod fsutil;
mod mountinfo;
pub use mountinfo::cgroup_lines;
mod path;
mod stats;
mod v1;
mod v2;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

pub use common::{blkio_weight_to_io_weight, cpu_shares_to_weight};
pub use error::CgroupError;
pub use path::{below_parent, resolve_path};
pub use stats::{BlkioStats, CgroupStats, CpuStats, CpuThrottling, MemoryStats, PidsStats};

/// Where berth's cgroups live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupConfig {
    /// Where the cgroup filesystem(s) are mounted; default `/sys/fs/cgroup`.
    pub mount_root: PathBuf,
    /// The directory (below the mount root, in every hierarchy) holding all
    /// of berth's cgroups; default `berth`.
    pub parent: String,
}

impl Default for CgroupConfig {
    fn default() -> Self {
        Self {
            mount_root: PathBuf::from("/sys/fs/cgroup"),
            parent: "berth".to_string(),
        }
    }
}

/// The cgroup layout of a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hierarchy {
    /// Only v1 controller hierarchies.
    V1,
    /// A single cgroup2 hierarchy at the mount root.
    V2,
    /// v1 controllers plus a controller-less cgroup2 mount (usually
    /// `unified`); managed as v1.
    Hybrid,
}

/// Detect the layout at `cfg.mount_root` from `/proc/self/mountinfo`.
pub fn detect(cfg: &CgroupConfig) -> Result<Hierarchy, CgroupError> {
    mountinfo::classify(&mountinfo::read()?, &cfg.mount_root)
}

/// One container's cgroup, in every hierarchy it lives in.
pub trait Cgroup: Send + Sync + std::fmt::Debug {
    /// `mkdir -p` in every hierarchy; on v1 the new cpuset directories get
    /// their parent's `cpuset.cpus`/`cpuset.mems`, on v2 the available
    /// controllers are enabled from berth's parent down. Idempotent.
    fn create(&self) -> Result<(), CgroupError>;
    /// Apply OCI resources. Only the fields that are set are written
    /// (`devices` replaces the whole device policy when present). Errors
    /// name the OCI field and the file.
    fn apply(&self, res: &oci_spec::runtime::LinuxResources) -> Result<(), CgroupError>;
    /// Move a process (all its threads) into the cgroup.
    fn add_process(&self, pid: i32) -> Result<(), CgroupError>;
    /// Every process in the cgroup and the cgroups below it, sorted.
    fn pids(&self) -> Result<Vec<i32>, CgroupError>;
    /// Freeze every process and wait until the kernel reports it frozen.
    fn freeze(&self) -> Result<(), CgroupError>;
    /// Thaw and wait until the kernel reports it thawed.
    fn thaw(&self) -> Result<(), CgroupError>;
    /// Whether the cgroup is (completely) frozen.
    fn is_frozen(&self) -> Result<bool, CgroupError>;
    /// Resource usage.
    fn stats(&self) -> Result<CgroupStats, CgroupError>;
    /// Processes the OOM killer has killed in the cgroup; 0 when the kernel
    /// does not report it.
    fn oom_kills(&self) -> Result<u64, CgroupError>;
    /// Remove the container's own directories (and any cgroups nested inside
    /// them), retrying briefly on EBUSY. Parents are left alone. Ok if
    /// already gone.
    fn destroy(&self) -> Result<(), CgroupError>;
    /// The absolute directories, one per hierarchy.
    fn paths(&self) -> Vec<PathBuf>;
    /// How a new child can enter the cgroup without the creator migrating it;
    /// None: the creator must call [`Cgroup::add_process`].
    fn placement(&self) -> Option<Placement> {
        None
    }
}

/// Moving another process into a cgroup takes a host-wide lock whose release
/// waits for an RCU grace period: milliseconds on a busy host, the largest
/// single cost of a container start. Two ways avoid it: clone3 with
/// CLONE_INTO_CGROUP (cgroup2 only), and a single-threaded process moving
/// itself, by writing "0" to a v1 `tasks` file (the kernel skips the lock for
/// the current thread). The child is placed when the clone into
/// `clone_into` worked (or there is none) and it then wrote `self_join`.
#[derive(Debug, Clone, Default)]
pub struct Placement {
    /// The cgroup2 directory to clone the child into.
    pub clone_into: Option<PathBuf>,
    /// v1 `tasks` files the child writes "0" to.
    pub self_join: Vec<PathBuf>,
}

/// Open the manager for the container cgroup `relative` (see
/// [`resolve_path`]) below `cfg.parent`: v1 for v1 and hybrid hosts, v2 for
/// pure v2. Creates nothing.
pub fn open(cfg: &CgroupConfig, relative: &Path) -> Result<Box<dyn Cgroup>, CgroupError> {
    path::check_relative(relative)?;
    let parent = path::parent_path(&cfg.parent)?;
    let mounts = mountinfo::read()?;
    match mountinfo::classify(&mounts, &cfg.mount_root)? {
        Hierarchy::V2 => Ok(Box::new(v2::V2Cgroup::new(
            &cfg.mount_root,
            &parent,
            relative,
        ))),
        Hierarchy::V1 | Hierarchy::Hybrid => Ok(Box::new(v1::V1Cgroup::new(
            &cfg.mount_root,
            &mounts,
            &parent,
            relative,
        )?)),
    }
}

/// Open a v2 manager on an explicit cgroup2 mount (e.g. a hybrid host's
/// `/sys/fs/cgroup/unified`). Creates nothing.
pub fn open_v2(
    mount: &Path,
    parent: &str,
    relative: &Path,
) -> Result<Box<dyn Cgroup>, CgroupError> {
    path::check_relative(relative)?;
    let parent = path::parent_path(parent)?;
    let is_cgroup2 = nix::sys::statfs::statfs(mount)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC);
    if !is_cgroup2 {
        return Err(CgroupError::NotMounted {
            mount_root: mount.to_path_buf(),
            reason: "not a cgroup2 mount".to_string(),
        });
    }
    Ok(Box::new(v2::V2Cgroup::new(mount, &parent, relative)))
}
