//! Container probes and lifecycle hooks, as upstream's `prober` and
//! `lifecycle` packages:
//! - [`handler`]: one run of an exec, tcpSocket, httpGet (HTTP or HTTPS,
//!   see [`tls`]) or gRPC ([`grpc`]) action against a container (probes and
//!   hooks share it);
//! - [`state`]: a probe's timing and thresholds, pure, deciding when a
//!   container is live, ready or started;
//! - [`runner`]: a task per probed container that probes it on its period
//!   and reports to the pod worker.

pub mod grpc;
pub mod handler;
pub mod runner;
pub mod state;
pub mod tls;

#[cfg(test)]
mod tests;

pub use handler::{Action, ProbeError, ProbeResult, Target};
pub use runner::{ContainerProbes, ProbeReport};
pub use state::{ProbeKind, ProbeState, Settings};
