//! The pods of the node, each kept in the state its spec asks for, as
//! upstream's pod workers and `kuberuntime` manager:
//! - [`actions`]: pure, from the spec and the runtime's view of the pod, what
//!   one sync does (sandbox, init containers in order with sidecars kept
//!   running, restarts per `restartPolicy` with a crash-loop back-off,
//!   containers to kill);
//! - [`worker`]: a task per pod that observes it through the CRI client,
//!   carries out its actions (images, volumes, containers) and at the end
//!   stops and removes it all;
//! - [`manager`]: a worker per pod of the manifest source, started and
//!   terminated as pods come and go, and the runtime's leftovers removed on
//!   start.

pub mod actions;
pub mod manager;
pub mod worker;

#[cfg(test)]
mod tests;

pub use actions::{Backoff, Outcome, PodActions, compute};
pub use manager::{ManagerError, PodManager};
pub use worker::{PodWorker, Shared, WorkerError};
