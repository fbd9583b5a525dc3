//! Fixtures for black-box tests of the built berth binaries.
//!
//! - [`rootfs`]: a busybox rootfs from Debian's busybox-static, built once
//!   per process and cloned cheaply;
//! - [`spec`], [`bundle`]: config.json as `runc spec` writes it, with edits;
//! - [`runtime`]: the runtime under test (berth as `berth-oci`, or runc when
//!   `BERTH_OCI=/usr/sbin/runc`) with a private `--root`;
//! - [`leak`]: before/after snapshots of mounts, cgroups and processes;
//! - [`caps`], [`cgroup`], [`console`], [`proc`]: capability sets, cgroup
//!   files, console sockets, /proc;
//! - [`image`], [`containerd`]: a tar writer, an OCI image tarball and a
//!   private containerd; [`containerd_cri`]: one with its CRI plugin in a
//!   node namespace, for the benchmarks; [`forward`]: a port in a namespace
//!   relayed outside;
//! - [`oci`]: OCI and Docker images built in memory (layers, configs,
//!   manifests, indexes), written as OCI layouts and `docker save` tarballs;
//! - [`registry`]: Debian's docker-registry on a free port (optionally
//!   wanting Basic credentials, or tokens from our token server), and a
//!   small push client;
//!   [`registry_proxy`]: a fault-injecting proxy in front of it;
//! - [`images`]: the standard test images (busybox, testapp, multi-arch,
//!   zstd, big) and bad ones; [`testapp`]: the static test program;
//! - [`http`]: the bits of HTTP/1.1 the fixture servers need;
//! - [`netns`]: network namespaces as nodes, pods and external hosts;
//!   [`cni`]: berth's CNI plugins (linked by `berth cni install`) and the
//!   reference ones, run as a runtime runs them.
//!
//! # Running
//!
//! The tests need root, runc, containerd (with containerd-shim-runc-v2),
//! busybox-static, docker-registry, skopeo and file; `.ci/run` installs
//! them and runs everything. By default
//! they test berth: the harness runs `cargo build -p berth` (a no-op when up
//! to date) and calls `target/debug/berth` through a symlink named
//! `berth-oci`. `BERTH_OCI=/usr/sbin/runc cargo test -p berth-integration`
//! runs the same tests against runc instead, which validates the tests;
//! berth-only tests (monitor, `--cri-log`, `--cgroup-root`, `berth oci`) then
//! print `SKIPPED (berth-only: ...)` and pass. `BUSYBOX=PATH` picks another
//! static busybox, `BERTH_DOCKER_REGISTRY=PATH` another registry binary,
//! `BERTH_TESTAPP=PATH` a ready static testapp (else it is built with
//! `cargo rustc` into `target/testapp/`).
//!
//! Everything a test process creates lives below `$TMPDIR/berth-it-<pid>-*`
//! and in cgroups and container IDs carrying its pid; it is removed when the
//! process exits, with processes a broken runtime left behind
//! ([`leak::kill_strays`]).

pub mod bench;
pub mod bundle;
pub mod caps;
pub mod cgroup;
pub mod cni;
pub mod console;
pub mod containerd;
pub mod containerd_cri;
pub mod cri;
pub mod exec;
pub mod forward;
pub mod http;
pub mod image;
pub mod image_store;
pub mod images;
pub mod leak;
pub mod netns;
pub mod node;
pub mod oci;
pub mod proc;
pub mod registry;
pub mod registry_proxy;
pub mod rootfs;
pub mod runtime;
pub mod spec;
pub mod testapp;
pub mod workdir;

pub use bundle::Bundle;
pub use exec::{Output, wait_until};
pub use leak::LeakCheck;
pub use runtime::{Flavor, Runtime, State, skip_unless_berth};
pub use spec::{CapSpec, Spec};
pub use workdir::unique_id;
