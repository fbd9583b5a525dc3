//! The pods of the manifest source, each with a worker: a new UID starts
//! one, a UID gone terminates its pod. A changed manifest is a new UID
//! (see [`crate::static_pod`]), so the old pod goes and the new one comes.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use berth_proto::v1;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use thiserror::Error;
use tokio::sync::watch;

use super::worker::{Shared, WorkerHandle, recorded_grace, remove_pod, spawn};
use crate::cri_client::CriClientError;
use crate::cri_config::sandbox::POD_UID_LABEL;
use crate::gc::GarbageCollector;
use crate::source::Snapshot;

#[derive(Debug, Error)]
pub enum ManagerError {
    #[error("listing the runtime's pods: {0}")]
    List(#[from] CriClientError),
    #[error("the manifest source stopped")]
    SourceClosed,
}

/// Runs the pods of `snapshots` until `shutdown` completes, then terminates
/// them all and returns.
pub struct PodManager {
    shared: Arc<Shared>,
    workers: HashMap<String, WorkerHandle>,
    /// Workers told to terminate, awaited at shutdown.
    leaving: Vec<WorkerHandle>,
    last_generation: u64,
    /// The garbage collector and how often it runs.
    gc: Option<(GarbageCollector, Duration)>,
    /// The UIDs of the pods with a worker, for the garbage collector.
    live: watch::Sender<HashSet<String>>,
}

impl PodManager {
    pub fn new(shared: Shared) -> Self {
        Self {
            shared: Arc::new(shared),
            workers: HashMap::new(),
            leaving: Vec::new(),
            last_generation: 0,
            gc: None,
            live: watch::Sender::new(HashSet::new()),
        }
    }

    /// Runs `gc` every `period` beside the pods.
    pub fn with_gc(mut self, gc: GarbageCollector, period: Duration) -> Self {
        self.gc = Some((gc, period));
        self
    }

    /// Runs the garbage collector, if any, on its period until dropped.
    fn spawn_gc(&mut self) -> Option<tokio::task::JoinHandle<()>> {
        let (mut gc, period) = self.gc.take()?;
        let live = self.live.subscribe();
        Some(tokio::spawn(async move {
            let mut ticks = tokio::time::interval(period);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let uids = live.borrow().clone();
                if let Err(e) = gc.collect(&uids).await {
                    tracing::warn!("garbage collection: {e}");
                }
            }
        }))
    }

    /// Removes what the runtime has of pods the manifests no longer name
    /// (they went while the node was down). Pods still named are adopted
    /// by their workers, which see their running containers and keep them.
    async fn remove_orphans(&self, snapshot: &Snapshot) -> Result<(), ManagerError> {
        let wanted: BTreeSet<&str> = snapshot
            .pods()
            .filter_map(|p| p.metadata.uid.as_deref())
            .collect();
        let found: BTreeSet<String> = self
            .shared
            .cri
            .list_pod_sandbox(None::<v1::PodSandboxFilter>)
            .await?
            .into_iter()
            .filter_map(|s| s.labels.get(POD_UID_LABEL).cloned())
            .collect();
        for uid in found.iter().filter(|u| !wanted.contains(u.as_str())) {
            tracing::info!(uid = %uid, "removing a pod no manifest names any more");
            let grace = recorded_grace(&self.shared.cri, uid).await;
            if let Err(e) = remove_pod(&self.shared, uid, grace, None).await {
                tracing::error!(uid = %uid, "removing the pod: {e}");
            }
        }
        Ok(())
    }

    fn reconcile(&mut self, snapshot: &Snapshot) {
        if snapshot.generation != self.last_generation {
            self.last_generation = snapshot.generation;
            for e in snapshot.errors() {
                tracing::error!("manifest error, its pods are not run: {e}");
            }
        }
        if let Some(e) = &snapshot.unavailable {
            // A directory briefly unreadable must not stop every pod.
            tracing::error!("manifest directory unavailable, keeping the pods as they are: {e}");
            return;
        }
        let desired: HashMap<&str, &Pod> = snapshot
            .pods()
            .filter_map(|p| Some((p.metadata.uid.as_deref()?, p)))
            .collect();
        let gone: Vec<String> = self
            .workers
            .keys()
            .filter(|uid| !desired.contains_key(uid.as_str()))
            .cloned()
            .collect();
        for uid in gone {
            if let Some(w) = self.workers.remove(&uid) {
                tracing::info!(uid = %uid, "pod removed from the manifests, terminating it");
                w.terminate();
                self.leaving.push(w);
            }
            // As upstream's pod manager: a pod gone from the config is gone
            // from the API at once, while it is still being stopped.
            self.shared.statuses.remove(&uid);
        }
        for (uid, pod) in desired {
            if !self.workers.contains_key(uid) {
                tracing::info!(
                    pod = pod.metadata.name.as_deref().unwrap_or(""),
                    uid = %uid,
                    "starting the pod's worker"
                );
                // Listed by the API from now on; its worker fills in the status.
                if self.shared.statuses.get_uid(uid).is_none() {
                    self.shared.statuses.set(pod.clone());
                }
                self.workers
                    .insert(uid.to_owned(), spawn(pod.clone(), self.shared.clone()));
            }
        }
        self.live
            .send_replace(self.workers.keys().cloned().collect());
    }

    /// Syncs the pods of `snapshots` until `shutdown`, then terminates them
    /// gracefully.
    pub async fn run(
        mut self,
        mut snapshots: watch::Receiver<Arc<Snapshot>>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ManagerError> {
        let first = snapshots.borrow_and_update().clone();
        if first.unavailable.is_none() {
            self.remove_orphans(&first).await?;
        }
        self.reconcile(&first);
        let gc = self.spawn_gc();
        // Events wake the pod's worker at once instead of at its next resync.
        let mut events = match self.shared.cri.get_container_events().await {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!("no container events, syncing periodically only: {e}");
                None
            }
        };
        tokio::pin!(shutdown);
        let result = loop {
            tokio::select! {
                () = &mut shutdown => break Ok(()),
                changed = snapshots.changed() => {
                    if changed.is_err() {
                        break Err(ManagerError::SourceClosed);
                    }
                    let s = snapshots.borrow_and_update().clone();
                    self.reconcile(&s);
                }
                ev = async { events.as_mut()?.next().await }, if events.is_some() => match ev {
                    Some(Ok(ev)) => {
                        let uid = ev.pod_sandbox_status.as_ref().and_then(|s| s.metadata.as_ref()).map(|m| m.uid.clone());
                        match uid.and_then(|u| self.workers.get(&u)) {
                            Some(w) => w.poke(),
                            None => self.workers.values().for_each(WorkerHandle::poke),
                        }
                    }
                    _ => {
                        tracing::warn!("the container event stream ended, syncing periodically only");
                        events = None;
                    }
                },
            }
        };
        if let Some(gc) = gc {
            gc.abort();
        }
        tracing::info!(pods = self.workers.len(), "terminating all pods");
        for w in self.workers.values() {
            w.terminate();
        }
        let all: Vec<WorkerHandle> = self
            .workers
            .drain()
            .map(|(_, w)| w)
            .chain(self.leaving.drain(..))
            .collect();
        futures::future::join_all(all.into_iter().map(WorkerHandle::join)).await;
        result
    }
}
