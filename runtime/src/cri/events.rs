//! GetContainerEvents: container created, started, stopped and deleted
//! events for the kubelet's evented PLEG.
//!
//! Created, started and deleted are queued by the RPCs that do them, and
//! stopped by StopContainer and RemoveContainer; a container also stops on
//! its own, so a watcher thread compares every container's state with the
//! last it saw (a few file reads per container, five times a second). That
//! thread sends the queued events with the pod's and containers' statuses,
//! which it reads holding no other lock, so an RPC may queue an event
//! whatever locks it holds. Each container's stop is reported once.

use std::collections::{HashMap, HashSet};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use berth_proto::v1;
use tokio::sync::broadcast;

use super::daemon::{Daemon, lock};
use super::records::now_nanos;
use crate::state::Status as EngineStatus;

/// Events a slow subscriber may lag behind before it misses some.
const BACKLOG: usize = 1024;

const WATCH_PERIOD: Duration = Duration::from_millis(200);

type Queued = (String, String, v1::ContainerEventType);

pub struct Events {
    tx: broadcast::Sender<v1::ContainerEventResponse>,
    queue: mpsc::Sender<Queued>,
    /// Taken by the watcher thread.
    queued: Mutex<Option<mpsc::Receiver<Queued>>>,
    /// Containers whose stop was reported.
    stopped: Mutex<HashSet<String>>,
}

impl Default for Events {
    fn default() -> Self {
        let (queue, queued) = mpsc::channel();
        Self {
            tx: broadcast::channel(BACKLOG).0,
            queue,
            queued: Mutex::new(Some(queued)),
            stopped: Mutex::new(HashSet::new()),
        }
    }
}

impl Events {
    pub fn subscribe(&self) -> broadcast::Receiver<v1::ContainerEventResponse> {
        self.tx.subscribe()
    }
}

impl Daemon {
    /// Queues an event about container `id` of pod `sandbox_id`.
    pub fn emit(&self, id: &str, sandbox_id: &str, kind: v1::ContainerEventType) {
        match kind {
            v1::ContainerEventType::ContainerStoppedEvent
                if !lock(&self.events.stopped).insert(id.to_string()) =>
            {
                return;
            }
            v1::ContainerEventType::ContainerDeletedEvent => {
                lock(&self.events.stopped).remove(id);
            }
            _ => {}
        }
        let _ = self
            .events
            .queue
            .send((id.to_string(), sandbox_id.to_string(), kind));
    }

    /// Sends a queued event with the statuses of its pod and containers.
    fn send_event(&self, id: &str, sandbox_id: &str, kind: v1::ContainerEventType) {
        if self.events.tx.receiver_count() == 0 {
            return;
        }
        let pod = self.pod_sandbox_status(sandbox_id, false).ok();
        let (pod_sandbox_status, containers_statuses) = match pod {
            Some(p) => (p.status, p.containers_statuses),
            None => (None, Vec::new()),
        };
        let _ = self.events.tx.send(v1::ContainerEventResponse {
            container_id: id.to_string(),
            container_event_type: kind as i32,
            created_at: now_nanos(),
            pod_sandbox_status,
            containers_statuses,
        });
    }
}

/// Starts the thread that reports containers that stopped on their own.
pub fn watch(daemon: &Arc<Daemon>) {
    let weak: Weak<Daemon> = Arc::downgrade(daemon);
    let Some(queued) = lock(&daemon.events.queued).take() else {
        return;
    };
    let spawned = std::thread::Builder::new()
        .name("berth-events".into())
        .spawn(move || {
            let mut last: HashMap<String, EngineStatus> = HashMap::new();
            loop {
                let next = queued.recv_timeout(WATCH_PERIOD);
                let Some(d) = weak.upgrade() else { return };
                match next {
                    Ok((id, sandbox, kind)) => {
                        d.send_event(&id, &sandbox, kind);
                        continue;
                    }
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    Err(mpsc::RecvTimeoutError::Disconnected) => return,
                }
                let mut seen = HashMap::new();
                for c in d.all_containers() {
                    let Some((id, sandbox)) = d.peek_container(&c).map(|r| (r.id, r.sandbox_id))
                    else {
                        continue;
                    };
                    let Ok(snap) = d.engine.state(&id) else {
                        continue;
                    };
                    let before = last.get(&id).copied();
                    if snap.status == EngineStatus::Stopped
                        && matches!(before, Some(EngineStatus::Running | EngineStatus::Paused))
                    {
                        // Queued like the others, so it follows a started
                        // event still in the queue.
                        d.emit(&id, &sandbox, v1::ContainerEventType::ContainerStoppedEvent);
                    }
                    seen.insert(id, snap.status);
                }
                last = seen;
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "starting the exit watcher; no stopped events will be sent");
    }
}
