//! The one error type of the cgroups module.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong while managing a container's cgroups.
///
/// Every variant names what a user needs to fix the problem: the file or
/// directory, the OCI field (`linux.resources...`) or the controller.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// No usable cgroup filesystem was found at the configured mount root.
    #[error("no usable cgroup filesystem under {}: {reason}", .mount_root.display())]
    NotMounted {
        /// The configured mount root (normally `/sys/fs/cgroup`).
        mount_root: PathBuf,
        /// What was looked for and not found.
        reason: String,
    },

    /// A cgroups path (OCI `linux.cgroupsPath`, container id or berth parent)
    /// cannot be used.
    #[error("invalid cgroups path {path:?}: {reason}")]
    InvalidPath {
        /// The path as given.
        path: String,
        /// Why it was rejected.
        reason: String,
    },

    /// A cgroup directory could not be created.
    #[error("creating cgroup directory {}: {source}", .path.display())]
    Create {
        /// The directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// A cgroup (or /proc) file could not be read.
    #[error("reading {}: {source}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// A cgroup file holds something we cannot interpret.
    #[error("parsing {}: unexpected content {content:?}", .path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What it held (truncated).
        content: String,
    },

    /// The kernel refused a value.
    #[error("setting {field}: writing {value:?} to {}: {source}", .path.display())]
    Write {
        /// The OCI field (e.g. `linux.resources.memory.limit`) or operation.
        field: String,
        /// The cgroup file.
        path: PathBuf,
        /// The value written.
        value: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// A resource value is invalid before it reaches the kernel.
    #[error("{field}: invalid value {value}: {reason}")]
    InvalidValue {
        /// The OCI field.
        field: String,
        /// The value as given.
        value: String,
        /// Why it was rejected.
        reason: String,
    },

    /// The resource cannot be applied on this kernel / cgroup version.
    #[error("{field} is not supported: {reason} ({})", .path.display())]
    Unsupported {
        /// The OCI field.
        field: String,
        /// The file or directory that showed the lack of support.
        path: PathBuf,
        /// Why.
        reason: String,
    },

    /// The resource needs a controller that is not mounted (v1) or not
    /// enabled (v2).
    #[error("{field} needs the {controller} cgroup controller, which is not available under {}", .mount_root.display())]
    ControllerMissing {
        /// The OCI field or operation.
        field: String,
        /// The controller (`memory`, `freezer`, ...).
        controller: &'static str,
        /// Where it was looked for.
        mount_root: PathBuf,
    },

    /// Moving a process into the cgroup failed.
    #[error("adding process {pid} to cgroup {}: {source}", .path.display())]
    AddProcess {
        /// The process.
        pid: i32,
        /// The `cgroup.procs` file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// Freezing or thawing did not complete in time.
    #[error("cgroup {} did not become {wanted} within {waited_ms} ms (last state {last:?})", .path.display())]
    StateTimeout {
        /// The state file polled.
        path: PathBuf,
        /// The state waited for.
        wanted: &'static str,
        /// How long we waited.
        waited_ms: u64,
        /// The last state read.
        last: String,
    },

    /// A cgroup directory could not be removed.
    #[error("removing cgroup {}: {source}", .path.display())]
    Remove {
        /// The directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// Loading or attaching the cgroup v2 device filter failed.
    #[error("{field}: device filter for cgroup {}: {op} failed: {source}{log}", .path.display())]
    Bpf {
        /// The OCI field (`linux.resources.devices`).
        field: String,
        /// The cgroup directory.
        path: PathBuf,
        /// The bpf(2) command that failed.
        op: &'static str,
        /// The underlying error.
        #[source]
        source: io::Error,
        /// The verifier log, if any (starts with a newline).
        log: String,
    },

    /// The cgroup does not exist (it was never created or already destroyed).
    #[error("cgroup {} does not exist", .path.display())]
    NotFound {
        /// The directory.
        path: PathBuf,
    },
}
