//! berth's container runtime: the engine that turns an OCI bundle into a running, supervised container.

pub mod cgroups;
pub mod crilog;
pub mod seccomp;
