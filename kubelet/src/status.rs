//! What the node reports of its pods: each pod's `status` (phase,
//! conditions, container statuses) as upstream's status manager keeps it,
//! computed by the pod's worker after every sync and read by the kubelet's
//! HTTP API and `berth pods`.
//!
//! - [`compute`]: pure, from the spec, what the runtime holds and the
//!   probes' verdicts, the `PodStatus` upstream would report;
//! - [`PodStatusStore`]: the latest pod of every worker, with its status.

pub mod compute;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use k8s_openapi::api::core::v1::Pod;

pub use compute::{Instance, PodView, Waiting, pod_status};

/// The pods of the node with their latest status, by UID. Cheap to clone;
/// every clone sees the same pods.
#[derive(Clone, Debug, Default)]
pub struct PodStatusStore {
    pods: Arc<RwLock<BTreeMap<String, Arc<Pod>>>>,
}

impl PodStatusStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records `pod` (its `status` filled) under its UID, replacing what
    /// was there.
    pub fn set(&self, pod: Pod) {
        let Some(uid) = pod.metadata.uid.clone() else {
            return;
        };
        self.write().insert(uid, Arc::new(pod));
    }

    /// Forgets the pod `uid`, once it is terminated and removed.
    pub fn remove(&self, uid: &str) {
        self.write().remove(uid);
    }

    /// Every pod, ordered by namespace then name.
    pub fn list(&self) -> Vec<Arc<Pod>> {
        let mut pods: Vec<Arc<Pod>> = self.read().values().cloned().collect();
        pods.sort_by(|a, b| {
            let key = |p: &Pod| (p.metadata.namespace.clone(), p.metadata.name.clone());
            key(a).cmp(&key(b))
        });
        pods
    }

    /// The pod `name` in `namespace`.
    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<Pod>> {
        self.read()
            .values()
            .find(|p| {
                p.metadata.namespace.as_deref().unwrap_or("default") == namespace
                    && p.metadata.name.as_deref() == Some(name)
            })
            .cloned()
    }

    /// The pod with `uid`.
    pub fn get_uid(&self, uid: &str) -> Option<Arc<Pod>> {
        self.read().get(uid).cloned()
    }

    // A panic elsewhere while holding the lock leaves the map whole (every
    // update is one insert or remove), so a poisoned lock is still usable.
    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<Pod>>> {
        self.pods.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Arc<Pod>>> {
        self.pods.write().unwrap_or_else(|e| e.into_inner())
    }
}
