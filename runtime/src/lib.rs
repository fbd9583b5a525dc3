//! berth's container runtime: the engine that turns an OCI bundle into a running, supervised container.

pub mod attach;
pub mod bundle;
pub mod cgroups;
pub mod config;
pub mod console;
pub mod container;
pub mod cri;
pub mod crilog;
pub mod forkserver;
pub mod hooks;
pub mod id;
pub mod image;
pub mod monitor;
pub mod process;
pub mod rootfs;
pub mod sandbox;
pub mod seccomp;
pub mod state;
pub mod stream;
pub mod syscall;
