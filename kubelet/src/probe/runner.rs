//! A task per probed container: runs its probes on their periods, the
//! startup probe first, and reports to the pod worker.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Container, Probe};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::handler::{Action, ProbeResult, Target, run};
use super::state::{ProbeKind, ProbeState, Settings};
use crate::cri_client::CriClient;

/// A reported probe result of one container instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeReport {
    pub container_id: String,
    pub container_name: String,
    pub kind: ProbeKind,
    pub success: bool,
    /// The last failure's message.
    pub reason: String,
}

/// The probes of one running container; dropping them stops them.
#[derive(Debug)]
pub struct ContainerProbes {
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for ContainerProbes {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl ContainerProbes {
    /// Starts the probes of `container`, running as `container_id`; `None`
    /// when it has none. Initial delays count from now, which is when the
    /// worker first sees the container running.
    pub fn start(
        cri: CriClient,
        pod_ip: IpAddr,
        container: &Container,
        container_id: &str,
        reports: mpsc::UnboundedSender<ProbeReport>,
    ) -> Option<Self> {
        let probes = [
            (ProbeKind::Startup, &container.startup_probe),
            (ProbeKind::Liveness, &container.liveness_probe),
            (ProbeKind::Readiness, &container.readiness_probe),
        ];
        if probes.iter().all(|(_, p)| p.is_none()) {
            return None;
        }
        // Without a startup probe the container counts as started at once.
        let (started_tx, started) = watch::channel(container.startup_probe.is_none());
        let tasks = probes
            .into_iter()
            .filter_map(|(kind, p)| Some((kind, p.clone()?)))
            .map(|(kind, probe)| {
                let job = Job {
                    cri: cri.clone(),
                    pod_ip,
                    container: container.clone(),
                    container_id: container_id.to_owned(),
                    kind,
                    probe,
                    reports: reports.clone(),
                    started: started.clone(),
                    started_tx: started_tx.clone(),
                };
                tokio::spawn(job.run())
            })
            .collect();
        Some(Self { tasks })
    }
}

struct Job {
    cri: CriClient,
    pod_ip: IpAddr,
    container: Container,
    container_id: String,
    kind: ProbeKind,
    probe: Probe,
    reports: mpsc::UnboundedSender<ProbeReport>,
    started: watch::Receiver<bool>,
    started_tx: watch::Sender<bool>,
}

impl Job {
    async fn run(mut self) {
        let settings = Settings::of(self.kind, &self.probe);
        let mut state = ProbeState::new(self.kind, settings);
        let action = match Action::of_probe(&self.probe) {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(container = %self.container.name, probe = self.kind.name(), "probe not run: {e}");
                return;
            }
        };
        tokio::time::sleep(settings.initial_delay).await;
        if self.kind != ProbeKind::Startup {
            // Liveness and readiness wait for the startup probe to pass.
            if self.started.wait_for(|s| *s).await.is_err() {
                return;
            }
        }
        let mut ticks = tokio::time::interval(settings.period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let target = Target {
                cri: Some(&self.cri),
                container_id: &self.container_id,
                container: &self.container,
                pod_ip: self.pod_ip,
            };
            let (success, reason) = match run(action, &target, settings.timeout).await {
                ProbeResult::Success => (true, String::new()),
                ProbeResult::Failure(reason) => (false, reason),
                // Upstream throws an errored probe's result away.
                ProbeResult::Unknown(e) => {
                    tracing::warn!(container = %self.container.name, probe = self.kind.name(), "probe errored: {e}");
                    continue;
                }
            };
            if !success {
                tracing::debug!(container = %self.container.name, probe = self.kind.name(), "probe failed: {reason}");
            }
            let before = state.reported();
            // Only changes go out, as upstream's results manager: the
            // worker acts on each report.
            if let Some(success) = state.record(success).filter(|s| before != Some(*s)) {
                if self.kind == ProbeKind::Startup && success {
                    let _ = self.started_tx.send(true);
                }
                let report = ProbeReport {
                    container_id: self.container_id.clone(),
                    container_name: self.container.name.clone(),
                    kind: self.kind,
                    success,
                    reason,
                };
                if self.reports.send(report).is_err() {
                    return;
                }
            }
            // A started container is not probed for startup again.
            if state.on_hold()
                || (self.kind == ProbeKind::Startup && state.reported() == Some(true))
            {
                return;
            }
        }
    }
}
