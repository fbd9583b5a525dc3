//! One pod's worker: observes the pod in the runtime, computes its actions
//! and carries them out through the CRI client, as upstream's `SyncPod`; and
//! tears it all down when the pod goes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use berth_proto::v1;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Container, Pod, PodStatus};
use thiserror::Error;
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;

use super::actions::{
    Backoff, ContainerState, Kind, Observed, Outcome, RunState, SandboxState, Start, compute,
    is_sidecar,
};
use crate::cri_client::{CriClient, CriClientError};
use crate::cri_config::container::{
    CONTAINER_HASH_ANNOTATION, CONTAINER_NAME_LABEL, ContainerError,
    TERMINATION_GRACE_PERIOD_ANNOTATION, container_config,
};
use crate::cri_config::sandbox::{POD_UID_LABEL, SandboxError, sandbox_config};
use crate::cri_config::{NodeContext, PodContext};
use crate::image_pull::{PullBackoff, PullLimiter};
use crate::pod_cgroup::{PodCgroupError, PodCgroups};
use crate::probe::handler::{Action, Target, run as run_action};
use crate::probe::{ContainerProbes, ProbeKind, ProbeReport};
use crate::status::{Instance, PodStatusStore, PodView, Waiting, pod_status};
use crate::termination::{self, TerminationError};
use crate::volume::{PodVolumes, VolumeError, VolumeManager};

/// Upstream's default `terminationGracePeriodSeconds`.
pub const DEFAULT_GRACE_SECONDS: i64 = 30;

/// What a container keeps of its grace period however long its preStop hook
/// took, as upstream's `minimumGracePeriodInSeconds`.
const MINIMUM_GRACE_SECONDS: i64 = 2;

/// Upstream lets a postStart hook run unbounded; a bound keeps a hung hook
/// from stalling the pod's worker for good.
const POST_START_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, Error)]
pub enum WorkerError {
    #[error(transparent)]
    Cri(#[from] CriClientError),
    #[error("pod {pod}: {source}")]
    Sandbox { pod: String, source: SandboxError },
    #[error("pod {pod}, container {container}: {source}")]
    Container {
        pod: String,
        container: String,
        source: ContainerError,
    },
    #[error("pod {pod}: {source}")]
    Volume { pod: String, source: VolumeError },
    #[error(
        "pod {pod}, container {container}: image {image:?} is not on the node and imagePullPolicy is Never; pull it or change the policy"
    )]
    ImageNeverPull {
        pod: String,
        container: String,
        image: String,
    },
    #[error("pod {pod}, container {container}: no image given")]
    NoImage { pod: String, container: String },
    #[error("pod {pod}: {source}")]
    Cgroup { pod: String, source: PodCgroupError },
    #[error("pod {pod}: {source}")]
    Termination {
        pod: String,
        source: TerminationError,
    },
    #[error("pod {pod}, container {container}: pulling image {image:?}: {source}")]
    ImagePull {
        pod: String,
        container: String,
        image: String,
        source: CriClientError,
    },
    #[error(
        "pod {pod}, container {container}: Back-off pulling image {image:?}: {wait:.0?} before the next try"
    )]
    ImagePullBackOff {
        pod: String,
        container: String,
        image: String,
        wait: Duration,
    },
    #[error("pod {pod}, container {container}: creating the container: {source}")]
    CreateContainer {
        pod: String,
        container: String,
        source: CriClientError,
    },
    #[error("pod {pod}, container {container}: starting the container: {source}")]
    StartContainer {
        pod: String,
        container: String,
        source: CriClientError,
    },
    #[error("creating the log directory {path}: {source}")]
    LogDir {
        path: String,
        source: std::io::Error,
    },
}

impl WorkerError {
    /// The waiting reason upstream gives a container whose start failed so.
    pub fn waiting_reason(&self) -> &'static str {
        match self {
            Self::ImagePull { .. } => "ErrImagePull",
            Self::ImagePullBackOff { .. } => "ImagePullBackOff",
            Self::ImageNeverPull { .. } => "ErrImageNeverPull",
            Self::NoImage { .. } => "InvalidImageName",
            Self::Container { .. } | Self::Volume { .. } => "CreateContainerConfigError",
            Self::StartContainer { .. } => "RunContainerError",
            Self::Cri(_)
            | Self::Sandbox { .. }
            | Self::LogDir { .. }
            | Self::Cgroup { .. }
            | Self::Termination { .. }
            | Self::CreateContainer { .. } => "CreateContainerError",
        }
    }
}

/// What every worker shares.
#[derive(Clone, Debug)]
pub struct Shared {
    pub cri: CriClient,
    pub volumes: VolumeManager,
    pub node: NodeContext,
    /// How often a pod is synced without a change or event.
    pub resync: Duration,
    /// Every pod's latest status, for the HTTP API.
    pub statuses: PodStatusStore,
    /// The runtime's name, the scheme of the container IDs in pod statuses.
    pub runtime_name: String,
    /// The pods' cgroups, when the kubelet makes them (`cgroupsPerQOS`).
    pub pod_cgroups: Option<PodCgroups>,
    /// The limit on image pulls running at once.
    pub pulls: PullLimiter,
}

fn now_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

fn uid_filter(uid: &str) -> HashMap<String, String> {
    HashMap::from([(POD_UID_LABEL.to_owned(), uid.to_owned())])
}

/// Everything the runtime has of the pod `uid`: its sandboxes and its
/// containers, exited ones with their exit codes.
pub async fn observe(cri: &CriClient, uid: &str) -> Result<Observed, CriClientError> {
    let sandboxes = cri
        .list_pod_sandbox(Some(v1::PodSandboxFilter {
            label_selector: uid_filter(uid),
            ..Default::default()
        }))
        .await?
        .into_iter()
        .map(|s| SandboxState {
            attempt: s.metadata.as_ref().map_or(0, |m| m.attempt),
            ready: s.state == v1::PodSandboxState::SandboxReady as i32,
            created_at: s.created_at,
            id: s.id,
        })
        .collect();
    let listed = cri
        .list_containers(Some(v1::ContainerFilter {
            label_selector: uid_filter(uid),
            ..Default::default()
        }))
        .await?;
    let mut containers = Vec::with_capacity(listed.len());
    for c in listed {
        let state = match v1::ContainerState::try_from(c.state) {
            Ok(v1::ContainerState::ContainerCreated) => RunState::Created,
            Ok(v1::ContainerState::ContainerRunning) => RunState::Running,
            Ok(v1::ContainerState::ContainerExited) => {
                match cri.container_status(&c.id, false).await {
                    Ok(s) => RunState::Exited {
                        code: s.status.exit_code,
                        started_at: s.status.started_at,
                        finished_at: s.status.finished_at,
                    },
                    // Removed meanwhile: the next sync sees it gone.
                    Err(e) if e.is_not_found() => continue,
                    Err(e) => return Err(e),
                }
            }
            _ => RunState::Unknown,
        };
        containers.push(ContainerState {
            name: c
                .labels
                .get(CONTAINER_NAME_LABEL)
                .cloned()
                .or_else(|| c.metadata.as_ref().map(|m| m.name.clone()))
                .unwrap_or_default(),
            attempt: c.metadata.as_ref().map_or(0, |m| m.attempt),
            hash: c
                .annotations
                .get(CONTAINER_HASH_ANNOTATION)
                .cloned()
                .unwrap_or_default(),
            sandbox_id: c.pod_sandbox_id,
            created_at: c.created_at,
            state,
            id: c.id,
        });
    }
    Ok(Observed {
        sandboxes,
        containers,
        ..Observed::default()
    })
}

/// Stops and removes every container and sandbox of the pod `uid`, giving
/// running containers `grace` seconds, then tears down its volumes.
/// With `pod`, its containers' preStop hooks run first (a leftover found in
/// the runtime has no spec, hence no hooks).
pub async fn remove_pod(
    shared: &Shared,
    uid: &str,
    grace: Option<i64>,
    pod: Option<(&Pod, IpAddr)>,
) -> Result<(), WorkerError> {
    let observed = observe(&shared.cri, uid).await?;
    stop_all(&shared.cri, &observed, grace, pod).await?;
    for c in &observed.containers {
        shared.cri.remove_container(&c.id).await?;
    }
    for s in &observed.sandboxes {
        shared.cri.remove_pod_sandbox(&s.id).await?;
    }
    if let Some(cgroups) = &shared.pod_cgroups {
        cgroups
            .remove_pod(uid)
            .map_err(|source| WorkerError::Cgroup {
                pod: uid.to_owned(),
                source,
            })?;
    }
    shared
        .volumes
        .teardown(uid)
        .map_err(|source| WorkerError::Volume {
            pod: uid.to_owned(),
            source,
        })
}

/// Stops the running containers, then the sandboxes: the regular (and init)
/// containers together, as upstream, then the sidecars one by one in
/// reverse order (KEP-753), so that what the main containers lean on
/// outlives them; all within one grace period.
async fn stop_all(
    cri: &CriClient,
    observed: &Observed,
    grace: Option<i64>,
    pod: Option<(&Pod, IpAddr)>,
) -> Result<(), CriClientError> {
    let grace = grace.unwrap_or(DEFAULT_GRACE_SECONDS);
    let began = Instant::now();
    let running: Vec<&ContainerState> = observed
        .containers
        .iter()
        .filter(|c| !matches!(c.state, RunState::Exited { .. }))
        .collect();
    let sidecar_index = |c: &ContainerState| {
        let inits = pod?.0.spec.as_ref()?.init_containers.as_ref()?;
        inits
            .iter()
            .position(|s| s.name == c.name)
            .filter(|i| inits.get(*i).is_some_and(is_sidecar))
    };
    let spec_of =
        |c: &ContainerState| pod.and_then(|(p, ip)| Some((spec_container(p, &c.name)?, ip)));
    let (mut sidecars, mains): (Vec<&ContainerState>, Vec<&ContainerState>) = running
        .into_iter()
        .partition(|c| sidecar_index(c).is_some());
    let stops = mains
        .iter()
        .map(|c| stop_container(cri, &c.id, grace, spec_of(c)));
    for r in futures::future::join_all(stops).await {
        match r {
            Err(e) if !e.is_not_found() => return Err(e),
            _ => {}
        }
    }
    sidecars.sort_by_key(|c| std::cmp::Reverse(sidecar_index(c)));
    for c in sidecars {
        let spent = i64::try_from(began.elapsed().as_secs()).unwrap_or(i64::MAX);
        let left = grace.saturating_sub(spent).max(MINIMUM_GRACE_SECONDS);
        match stop_container(cri, &c.id, left, spec_of(c)).await {
            Err(e) if !e.is_not_found() => return Err(e),
            _ => {}
        }
    }
    for s in &observed.sandboxes {
        match cri.stop_pod_sandbox(&s.id).await {
            Err(e) if !e.is_not_found() => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

/// The container of `pod` named `name`, init or regular.
fn spec_container<'a>(pod: &'a Pod, name: &str) -> Option<&'a Container> {
    let spec = pod.spec.as_ref()?;
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .find(|c| c.name == name)
}

/// Stops the container `id`, running its preStop hook first when `spec` has
/// one; the hook's time comes out of the grace period, as upstream.
async fn stop_container(
    cri: &CriClient,
    id: &str,
    grace: i64,
    spec: Option<(&Container, IpAddr)>,
) -> Result<(), CriClientError> {
    let mut grace = grace;
    let hook = spec.and_then(|(c, ip)| Some((c, ip, c.lifecycle.as_ref()?.pre_stop.as_ref()?)));
    if let Some((container, pod_ip, hook)) = hook {
        let began = Instant::now();
        let target = Target {
            cri: Some(cri),
            container_id: id,
            container,
            pod_ip,
        };
        let limit = Duration::from_secs(u64::try_from(grace).unwrap_or(0));
        match Action::of_hook(hook) {
            Ok(action) => {
                let r = run_action(action, &target, limit).await;
                if !r.is_success() {
                    tracing::warn!(container = %container.name, id, "FailedPreStopHook: {r:?}");
                }
            }
            Err(e) => tracing::warn!(container = %container.name, id, "FailedPreStopHook: {e}"),
        }
        let spent = i64::try_from(began.elapsed().as_secs()).unwrap_or(i64::MAX);
        grace = grace.saturating_sub(spent).max(MINIMUM_GRACE_SECONDS);
    }
    cri.stop_container(id, grace).await
}

/// The grace period an adopted pod's containers were created with.
pub async fn recorded_grace(cri: &CriClient, uid: &str) -> Option<i64> {
    let listed = cri
        .list_containers(Some(v1::ContainerFilter {
            label_selector: uid_filter(uid),
            ..Default::default()
        }))
        .await
        .ok()?;
    listed.iter().find_map(|c| {
        c.annotations
            .get(TERMINATION_GRACE_PERIOD_ANNOTATION)?
            .parse()
            .ok()
    })
}

/// The sandbox a sync starts containers in.
struct Placement<'a> {
    sandbox_id: &'a str,
    attempt: u32,
    pod_ips: &'a [IpAddr],
    sandbox_config: &'a v1::PodSandboxConfig,
    volumes: &'a PodVolumes,
}

/// One pod's state between syncs.
pub struct PodWorker {
    pod: Pod,
    name: String,
    uid: String,
    shared: Arc<Shared>,
    backoff: Backoff,
    volumes: Option<PodVolumes>,
    outcome: Option<Outcome>,
    /// Containers whose back-off is logged.
    backing_off: HashSet<String>,
    /// The probes of each running container, by container ID.
    probes: HashMap<String, ContainerProbes>,
    reports: mpsc::UnboundedSender<ProbeReport>,
    /// The last readiness reported of each probed container, by ID.
    ready: HashMap<String, bool>,
    /// The pod's IP as its sandbox reported it.
    pod_ip: Option<IpAddr>,
    /// What the status reports beyond the runtime's view.
    report: StatusInputs,
    /// Running containers, by ID, with their names, as last listed.
    running: HashMap<String, String>,
    /// Containers whose startup probe passed, by ID.
    startup_passed: HashSet<String>,
    /// Failed image pulls waiting out their back-off.
    pull_backoff: PullBackoff,
    /// Why each container that is not running waits, by name: reason and
    /// message.
    waiting: HashMap<String, (String, String)>,
}

/// What the pod's status needs beyond what the runtime lists.
#[derive(Debug)]
struct StatusInputs {
    /// When the worker took the pod in (`status.startTime`).
    start_time: Timestamp,
    /// Each container's status in the runtime, fetched once per instance
    /// and state.
    details: HashMap<String, (RunState, v1::ContainerStatus)>,
    /// The current sandbox's ID and addresses.
    sandbox_ips: Option<(String, Vec<IpAddr>)>,
    /// The status published last.
    last: Option<PodStatus>,
    /// What the last sync saw, when it changed nothing.
    unchanged: Option<Observed>,
}

/// Whether two observations of an instance are the same state (a running
/// instance's details do not change; an exited one's are final).
fn same_state(a: RunState, b: RunState) -> bool {
    std::mem::discriminant(&a) == std::mem::discriminant(&b)
}

/// A back-off as upstream prints durations (`40s`, `2m40s`).
fn go_duration(d: Duration) -> String {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    match secs / 60 {
        0 => format!("{secs}s"),
        m => format!("{m}m{}s", secs % 60),
    }
}

impl PodWorker {
    pub fn new(pod: Pod, shared: Arc<Shared>, reports: mpsc::UnboundedSender<ProbeReport>) -> Self {
        Self {
            probes: HashMap::new(),
            reports,
            ready: HashMap::new(),
            pod_ip: None,
            report: StatusInputs {
                start_time: Timestamp::now(),
                details: HashMap::new(),
                sandbox_ips: None,
                last: None,
                unchanged: None,
            },
            running: HashMap::new(),
            startup_passed: HashSet::new(),
            pull_backoff: PullBackoff::default(),
            waiting: HashMap::new(),
            name: pod.metadata.name.clone().unwrap_or_default(),
            uid: pod.metadata.uid.clone().unwrap_or_default(),
            pod,
            shared,
            backoff: Backoff::default(),
            volumes: None,
            outcome: None,
            backing_off: HashSet::new(),
        }
    }

    fn grace(&self) -> i64 {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.termination_grace_period_seconds)
            .unwrap_or(DEFAULT_GRACE_SECONDS)
    }

    /// Where network probes and hooks go when they name no host: the pod's
    /// IP, which for a hostNetwork pod is the node's.
    fn probe_ip(&self) -> IpAddr {
        let host_network = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.host_network)
            .unwrap_or(false);
        let node = self.shared.node.host_ips.first().copied();
        let ip = if host_network { node } else { self.pod_ip };
        ip.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
    }

    /// Whether the container `id`'s readiness probe last reported it ready;
    /// `None` when it has no readiness probe running.
    pub fn ready(&self, id: &str) -> Option<bool> {
        self.ready.get(id).copied()
    }

    /// Why containers wait, by name: (reason, message), as upstream's
    /// `ContainerStateWaiting` (`CrashLoopBackOff`, `ErrImagePull`,
    /// `ImagePullBackOff`, `CreateContainerConfigError`,
    /// `CreateContainerError`...). A container not here either runs or
    /// waits for no reason of its own (e.g. init containers before it).
    pub fn waiting(&self) -> &HashMap<String, (String, String)> {
        &self.waiting
    }

    /// Whether the container `id` runs and has started: its startup probe
    /// passed, or it has none.
    pub fn started(&self, id: &str) -> bool {
        let Some(name) = self.running.get(id) else {
            return false;
        };
        let probed = spec_container(&self.pod, name).is_some_and(|c| c.startup_probe.is_some());
        !probed || self.startup_passed.contains(id)
    }

    /// The running containers of `observed` whose startup probe has not
    /// passed yet (even if their probes are not running yet).
    fn unstarted(&self, observed: &Observed) -> HashSet<String> {
        observed
            .containers
            .iter()
            .filter(|c| c.state == RunState::Running && !self.startup_passed.contains(&c.id))
            .filter(|c| {
                spec_container(&self.pod, &c.name).is_some_and(|s| s.startup_probe.is_some())
            })
            .map(|c| c.id.clone())
            .collect()
    }

    /// Starts the probes of containers that run and have none yet, and drops
    /// those of containers that no longer run.
    pub async fn update_probes(&mut self) -> Result<(), WorkerError> {
        let running: Vec<(String, String)> = self
            .shared
            .cri
            .list_containers(Some(v1::ContainerFilter {
                label_selector: uid_filter(&self.uid),
                state: Some(v1::ContainerStateValue {
                    state: v1::ContainerState::ContainerRunning as i32,
                }),
                ..Default::default()
            }))
            .await?
            .into_iter()
            .filter_map(|c| Some((c.id, c.labels.get(CONTAINER_NAME_LABEL)?.clone())))
            .collect();
        self.probes
            .retain(|id, _| running.iter().any(|(r, _)| r == id));
        self.ready.retain(|id, _| self.probes.contains_key(id));
        self.running = running.iter().cloned().collect();
        self.startup_passed
            .retain(|id| self.running.contains_key(id));
        let pod_ip = self.probe_ip();
        let spec = self.pod.spec.clone().unwrap_or_default();
        for (id, name) in running {
            if self.probes.contains_key(&id) {
                continue;
            }
            // Init containers are not probed, sidecars are.
            let sidecars = spec
                .init_containers
                .iter()
                .flatten()
                .filter(|c| is_sidecar(c));
            let Some(container) = spec
                .containers
                .iter()
                .chain(sidecars)
                .find(|c| c.name == name)
            else {
                continue;
            };
            if let Some(p) = ContainerProbes::start(
                self.shared.cri.clone(),
                pod_ip,
                container,
                &id,
                self.reports.clone(),
            ) {
                tracing::debug!(pod = %self.name, container = %name, "probing");
                self.probes.insert(id, p);
            }
        }
        Ok(())
    }

    /// Acts on a probe's report: keeps readiness, kills a container that
    /// failed its liveness or startup probe so that its restart policy
    /// decides what follows.
    pub async fn on_report(&mut self, r: ProbeReport) -> Result<(), WorkerError> {
        if !self.probes.contains_key(&r.container_id) {
            return Ok(());
        }
        match r.kind {
            ProbeKind::Readiness => {
                if self.ready.insert(r.container_id.clone(), r.success) != Some(r.success) {
                    tracing::info!(pod = %self.name, container = %r.container_name, ready = r.success, "readiness {}", if r.success { "" } else { r.reason.as_str() });
                }
            }
            ProbeKind::Startup if r.success => {
                self.startup_passed.insert(r.container_id.clone());
                tracing::info!(pod = %self.name, container = %r.container_name, "startup probe passed");
            }
            ProbeKind::Liveness if r.success => {}
            ProbeKind::Liveness | ProbeKind::Startup => {
                tracing::info!(pod = %self.name, container = %r.container_name, "Container {} failed {} probe, will be restarted: {}", r.container_name, r.kind.name(), r.reason);
                self.probes.remove(&r.container_id);
                self.ready.remove(&r.container_id);
                let spec =
                    spec_container(&self.pod, &r.container_name).map(|c| (c, self.probe_ip()));
                match stop_container(&self.shared.cri, &r.container_id, self.grace(), spec).await {
                    Err(e) if !e.is_not_found() => return Err(e.into()),
                    _ => {}
                }
            }
        }
        Ok(())
    }

    fn context(&self, attempt: u32, pod_ips: Vec<IpAddr>) -> PodContext<'_> {
        let mut ctx = PodContext::new(&self.pod);
        ctx.attempt = attempt;
        ctx.pod_ips = pod_ips;
        ctx
    }

    /// One sync: observe, compute, act.
    pub async fn sync(&mut self) -> Result<Outcome, WorkerError> {
        let cri = self.shared.cri.clone();
        self.report.unchanged = None;
        let mut observed = observe(&cri, &self.uid).await?;
        observed.unstarted = self.unstarted(&observed);
        let actions = compute(&self.pod, &observed, &self.backoff, now_nanos());
        // Once per wait, not at every sync of it.
        self.backing_off
            .retain(|n| actions.backing_off.iter().any(|(b, _)| b == n));
        self.waiting.retain(|n, (reason, _)| {
            reason != "CrashLoopBackOff" || actions.backing_off.iter().any(|(b, _)| b == n)
        });
        for (name, wait) in &actions.backing_off {
            if self.backing_off.insert(name.clone()) {
                tracing::info!(pod = %self.name, container = %name, "back-off {wait:.0?} restarting the failed container");
            }
            let message = format!(
                "back-off {} restarting failed container={name} pod={}_{}({})",
                go_duration(*wait),
                self.name,
                self.pod.metadata.namespace.as_deref().unwrap_or("default"),
                self.uid
            );
            self.waiting
                .insert(name.clone(), ("CrashLoopBackOff".to_owned(), message));
        }
        if actions.kill_pod {
            tracing::info!(pod = %self.name, "killing the pod's containers and sandbox");
            stop_all(
                &cri,
                &observed,
                Some(self.grace()),
                Some((&self.pod, self.probe_ip())),
            )
            .await?;
        }
        for k in &actions.kill {
            tracing::info!(pod = %self.name, container = %k.name, "stopping the container: {}", k.reason);
            let spec = spec_container(&self.pod, &k.name).map(|c| (c, self.probe_ip()));
            stop_container(&cri, &k.id, self.grace(), spec).await?;
        }
        if self.outcome != Some(actions.outcome) {
            tracing::info!(pod = %self.name, outcome = ?actions.outcome, "pod state");
            self.outcome = Some(actions.outcome);
        }
        if actions.start.is_empty() {
            if !actions.kill_pod && actions.kill.is_empty() {
                // Nothing changed: the status can use this look.
                self.report.unchanged = Some(observed);
            }
            return Ok(actions.outcome);
        }

        let volumes = match &self.volumes {
            Some(v) => v.clone(),
            None => {
                let v = self
                    .shared
                    .volumes
                    .setup(&self.pod, &self.shared.node)
                    .map_err(|source| WorkerError::Volume {
                        pod: self.name.clone(),
                        source,
                    })?;
                self.volumes = Some(v.clone());
                v
            }
        };
        let sandbox_err = |source| WorkerError::Sandbox {
            pod: self.name.clone(),
            source,
        };
        let (sandbox_id, attempt) = match (&actions.create_sandbox, &actions.sandbox) {
            (Some(attempt), _) => {
                // Old sandboxes go once a new one replaces them.
                for s in &observed.sandboxes {
                    cri.remove_pod_sandbox(&s.id).await?;
                }
                let config = sandbox_config(&self.context(*attempt, Vec::new()), &self.shared.node)
                    .map_err(sandbox_err)?;
                let dir = Path::new(&config.log_directory);
                std::fs::create_dir_all(dir).map_err(|source| WorkerError::LogDir {
                    path: dir.display().to_string(),
                    source,
                })?;
                if let Some(cgroups) = &self.shared.pod_cgroups {
                    cgroups
                        .ensure_pod(&self.pod)
                        .map_err(|source| WorkerError::Cgroup {
                            pod: self.name.clone(),
                            source,
                        })?;
                }
                let id = cri.run_pod_sandbox(config, "").await?;
                tracing::info!(pod = %self.name, sandbox = %id, attempt, "sandbox running");
                (id, *attempt)
            }
            (None, Some(s)) => (s.id.clone(), s.attempt),
            (None, None) => return Ok(actions.outcome),
        };
        let pod_ips = match cri.pod_sandbox_status(&sandbox_id, false).await {
            Ok(s) => sandbox_ips(&s.status),
            Err(_) => Vec::new(),
        };
        if let Some(ip) = pod_ips.first() {
            self.pod_ip = Some(*ip);
        }
        let sandbox_config =
            sandbox_config(&self.context(attempt, pod_ips.clone()), &self.shared.node)
                .map_err(sandbox_err)?;

        let spec = self.pod.spec.clone().unwrap_or_default();
        for s in &actions.start {
            let container = match s.kind {
                Kind::Init => spec.init_containers.as_ref().and_then(|c| c.get(s.index)),
                Kind::Regular => spec.containers.get(s.index),
            };
            let Some(container) = container else { continue };
            let into = Placement {
                sandbox_id: &sandbox_id,
                attempt,
                pod_ips: &pod_ips,
                sandbox_config: &sandbox_config,
                volumes: &volumes,
            };
            let started = self.start_one(s, container, &into).await;
            match started {
                Ok(()) => {
                    self.waiting.remove(&container.name);
                }
                Err(e) => {
                    let reason = e.waiting_reason();
                    // Once per reason, not at every sync of a back-off.
                    let before = self.waiting.get(&container.name).map(|(r, _)| r.as_str());
                    if before == Some(reason) {
                        tracing::debug!(pod = %self.name, container = %container.name, reason, "{e}");
                    } else {
                        tracing::error!(pod = %self.name, container = %container.name, reason, "{e}");
                    }
                    self.waiting
                        .insert(container.name.clone(), (reason.to_owned(), e.to_string()));
                }
            }
        }
        Ok(actions.outcome)
    }

    /// Creates and starts one container of `actions`, with its image and
    /// config, in the sandbox of `into`; a failure leaves the others to
    /// start.
    async fn start_one(
        &mut self,
        s: &Start,
        container: &Container,
        into: &Placement<'_>,
    ) -> Result<(), WorkerError> {
        let cri = self.shared.cri.clone();
        let image = self.ensure_image(container, into.sandbox_config).await?;
        let mut ctx = self.context(into.attempt, into.pod_ips.to_vec());
        ctx.restart_counts = BTreeMap::from([(container.name.clone(), s.restart_count)]);
        let container_err = |source| WorkerError::Container {
            pod: self.name.clone(),
            container: container.name.clone(),
            source,
        };
        let mut config =
            container_config(&ctx, &self.shared.node, container, &image).map_err(container_err)?;
        config.mounts =
            into.volumes
                .mounts_for(container)
                .map_err(|source| WorkerError::Volume {
                    pod: self.name.clone(),
                    source,
                })?;
        let pod_dir = self.shared.volumes.pod_dir(&self.uid);
        let message_file = termination::prepare(&pod_dir, container).map_err(|source| {
            WorkerError::Termination {
                pod: self.name.clone(),
                source,
            }
        })?;
        config.mounts.extend(message_file);
        let id = cri
            .create_container(into.sandbox_id, config, into.sandbox_config.clone())
            .await
            .map_err(|source| WorkerError::CreateContainer {
                pod: self.name.clone(),
                container: container.name.clone(),
                source,
            })?;
        cri.start_container(&id)
            .await
            .map_err(|source| WorkerError::StartContainer {
                pod: self.name.clone(),
                container: container.name.clone(),
                source,
            })?;
        tracing::info!(pod = %self.name, container = %container.name, restarts = s.restart_count, id = %id, "container started");
        self.post_start(container, &id).await?;
        if let Some(prev) = &s.replaces {
            let hash = crate::cri_config::container::container_hash(container);
            self.backoff
                .restarted(&container.name, &hash, prev.started_at, prev.finished_at);
            // The exited instance stays, for `lastState` and
            // `logs --previous`; garbage collection removes older ones.
        }
        Ok(())
    }

    /// Runs `container`'s postStart hook, if any; killing it when the hook
    /// fails, as upstream (`FailedPostStartHook`), leaves its restart to the
    /// restart policy.
    async fn post_start(&self, container: &Container, id: &str) -> Result<(), WorkerError> {
        let Some(hook) = container
            .lifecycle
            .as_ref()
            .and_then(|l| l.post_start.as_ref())
        else {
            return Ok(());
        };
        let target = Target {
            cri: Some(&self.shared.cri),
            container_id: id,
            container,
            pod_ip: self.probe_ip(),
        };
        let failure = match Action::of_hook(hook) {
            Ok(action) => match run_action(action, &target, POST_START_TIMEOUT).await {
                crate::probe::ProbeResult::Success => return Ok(()),
                r => format!("{r:?}"),
            },
            Err(e) => e.to_string(),
        };
        tracing::warn!(pod = %self.name, container = %container.name, id, "FailedPostStartHook: {failure}; killing the container");
        // The hook failed; preStop still runs, as upstream's killContainer.
        match stop_container(
            &self.shared.cri,
            id,
            self.grace(),
            Some((container, self.probe_ip())),
        )
        .await
        {
            Err(e) if !e.is_not_found() => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// The image reference to create `container` with, pulled per its
    /// `imagePullPolicy` (`Always` for `:latest` or no tag, else `IfNotPresent`).
    async fn ensure_image(
        &mut self,
        container: &Container,
        sandbox: &v1::PodSandboxConfig,
    ) -> Result<String, WorkerError> {
        let image = container
            .image
            .clone()
            .filter(|i| !i.is_empty())
            .ok_or_else(|| WorkerError::NoImage {
                pod: self.name.clone(),
                container: container.name.clone(),
            })?;
        let spec = v1::ImageSpec {
            image: image.clone(),
            user_specified_image: image.clone(),
            ..Default::default()
        };
        let policy = container
            .image_pull_policy
            .clone()
            .unwrap_or_else(|| default_pull_policy(&image));
        if policy != "Always" {
            if let Some(found) = self
                .shared
                .cri
                .image_status(spec.clone(), false)
                .await?
                .status
            {
                return Ok(found.id);
            }
            if policy == "Never" {
                return Err(WorkerError::ImageNeverPull {
                    pod: self.name.clone(),
                    container: container.name.clone(),
                    image,
                });
            }
        }
        if let Some(wait) = self.pull_backoff.remaining(&image, Instant::now()) {
            return Err(WorkerError::ImagePullBackOff {
                pod: self.name.clone(),
                container: container.name.clone(),
                image,
                wait,
            });
        }
        let permit = self.shared.pulls.acquire().await;
        tracing::info!(pod = %self.name, container = %container.name, image = %image, "pulling");
        let pulled = self
            .shared
            .cri
            .pull_image(spec, None, Some(sandbox.clone()))
            .await;
        drop(permit);
        match pulled {
            Ok(id) => {
                self.pull_backoff.succeeded(&image);
                Ok(id)
            }
            Err(source) => {
                self.pull_backoff.failed(&image, Instant::now());
                Err(WorkerError::ImagePull {
                    pod: self.name.clone(),
                    container: container.name.clone(),
                    image,
                    source,
                })
            }
        }
    }

    /// Computes the pod's status from a fresh look at the runtime and
    /// publishes it in the shared store.
    pub async fn publish_status(&mut self) -> Result<(), WorkerError> {
        let cri = self.shared.cri.clone();
        // The sync's own look when it changed nothing, else a fresh one.
        let observed = match self.report.unchanged.take() {
            Some(o) => o,
            None => observe(&cri, &self.uid).await?,
        };
        let report = &mut self.report;
        report
            .details
            .retain(|id, _| observed.containers.iter().any(|c| &c.id == id));
        let mut instances = Vec::with_capacity(observed.containers.len());
        for c in &observed.containers {
            let known = report
                .details
                .get(&c.id)
                .is_some_and(|(s, _)| same_state(*s, c.state));
            if !known {
                match cri.container_status(&c.id, false).await {
                    Ok(s) => {
                        let mut status = s.status;
                        // An exited instance's message is final: read once.
                        if matches!(c.state, RunState::Exited { .. }) {
                            let message =
                                termination::read(&status, spec_container(&self.pod, &c.name));
                            if !message.is_empty() {
                                status.message = message;
                            }
                        }
                        report.details.insert(c.id.clone(), (c.state, status));
                    }
                    Err(e) if e.is_not_found() => continue,
                    Err(e) => return Err(e.into()),
                }
            }
            let Some((_, d)) = report.details.get(&c.id) else {
                continue;
            };
            instances.push(Instance {
                id: c.id.clone(),
                name: c.name.clone(),
                attempt: c.attempt,
                created_at: c.created_at,
                state: c.state,
                started_at: d.started_at,
                reason: d.reason.clone(),
                message: d.message.clone(),
                image: d
                    .image
                    .as_ref()
                    .map(|i| i.image.clone())
                    .unwrap_or_default(),
                image_ref: d.image_ref.clone(),
                ready: self.ready.get(&c.id).copied(),
                started: self.startup_passed.contains(&c.id).then_some(true),
            });
        }
        let sandbox = observed.sandboxes.iter().max_by_key(|s| s.created_at);
        let sandbox_ready = sandbox.is_some_and(|s| s.ready);
        match sandbox {
            Some(s)
                if report
                    .sandbox_ips
                    .as_ref()
                    .is_none_or(|(id, _)| *id != s.id) =>
            {
                let ips = match cri.pod_sandbox_status(&s.id, false).await {
                    Ok(st) => sandbox_ips(&st.status),
                    Err(e) if e.is_not_found() => Vec::new(),
                    Err(e) => return Err(e.into()),
                };
                report.sandbox_ips = Some((s.id.clone(), ips));
            }
            Some(_) => {}
            None => report.sandbox_ips = None,
        }
        let waiting: BTreeMap<String, Waiting> = self
            .waiting
            .iter()
            .map(|(name, (reason, message))| {
                let w = Waiting {
                    reason: reason.clone(),
                    message: message.clone(),
                };
                (name.clone(), w)
            })
            .collect();
        let no_ips = Vec::new();
        let pod_ips = report.sandbox_ips.as_ref().map_or(&no_ips, |(_, ips)| ips);
        let status = pod_status(&PodView {
            pod: &self.pod,
            runtime_name: &self.shared.runtime_name,
            sandbox_ready,
            pod_ips,
            host_ips: &self.shared.node.host_ips,
            start_time: report.start_time,
            instances: &instances,
            waiting: &waiting,
            previous: report.last.as_ref(),
            now: Timestamp::now(),
        });
        if report.last.as_ref() != Some(&status) {
            let mut pod = self.pod.clone();
            pod.status = Some(status.clone());
            self.shared.statuses.set(pod);
            report.last = Some(status);
        }
        Ok(())
    }

    /// Stops the containers with the pod's grace period, then the sandbox,
    /// removes them and tears down the volumes.
    pub async fn terminate(&mut self) -> Result<(), WorkerError> {
        // Probes must not kill what is being stopped.
        self.probes.clear();
        self.ready.clear();
        let ip = self.probe_ip();
        remove_pod(
            &self.shared,
            &self.uid,
            Some(self.grace()),
            Some((&self.pod, ip)),
        )
        .await?;
        self.volumes = None;
        tracing::info!(pod = %self.name, "pod terminated and removed");
        Ok(())
    }
}

/// The addresses a sandbox reports, primary first.
fn sandbox_ips(status: &v1::PodSandboxStatus) -> Vec<IpAddr> {
    status
        .network
        .iter()
        .flat_map(|n| {
            std::iter::once(n.ip.as_str()).chain(n.additional_ips.iter().map(|a| a.ip.as_str()))
        })
        .filter_map(|ip| ip.parse().ok())
        .collect()
}

/// Upstream's default: `Always` for `:latest` or no tag, unless pinned by digest.
pub fn default_pull_policy(image: &str) -> String {
    if image.contains('@') {
        return "IfNotPresent".to_owned();
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.split_once(':') {
        Some((_, tag)) if tag != "latest" => "IfNotPresent".to_owned(),
        _ => "Always".to_owned(),
    }
}

/// A running worker task.
pub struct WorkerHandle {
    stop: watch::Sender<bool>,
    poke: Arc<Notify>,
    task: JoinHandle<()>,
}

impl WorkerHandle {
    /// Asks for a sync now.
    pub fn poke(&self) {
        self.poke.notify_one();
    }

    /// Asks the worker to terminate its pod; await [`WorkerHandle::join`].
    pub fn terminate(&self) {
        let _ = self.stop.send(true);
    }

    /// Waits for the worker to have terminated its pod.
    pub async fn join(self) {
        if let Err(e) = self.task.await {
            tracing::error!("pod worker task failed: {e}");
        }
    }
}

/// The time to the next multiple of `resync` on the wall clock. Every
/// worker resyncs on the same grid, so their list calls overlap and share
/// requests ([`crate::cri_client`]); each on its own phase, a node with
/// hundreds of pods would list all the time.
pub(super) fn until_resync(resync: Duration) -> Duration {
    let period = resync.as_nanos().max(1);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let left = period - now % period;
    Duration::from_nanos(u64::try_from(left).unwrap_or(u64::MAX))
}

/// Starts the worker of `pod`: syncs it now, on pokes and every `resync`,
/// until told to terminate.
pub fn spawn(pod: Pod, shared: Arc<Shared>) -> WorkerHandle {
    let (stop, mut stopped) = watch::channel(false);
    let poke = Arc::new(Notify::new());
    let poked = poke.clone();
    let resync = shared.resync;
    let (reports, mut reported) = mpsc::unbounded_channel();
    let mut worker = PodWorker::new(pod, shared, reports);
    let task = tokio::spawn(async move {
        while !*stopped.borrow() {
            if let Err(e) = worker.sync().await {
                tracing::error!(pod = %worker.name, "sync failed: {e}");
            }
            if let Err(e) = worker.update_probes().await {
                tracing::error!(pod = %worker.name, "updating the probes: {e}");
            }
            if let Err(e) = worker.publish_status().await {
                tracing::warn!(pod = %worker.name, "computing the pod's status: {e}");
            }
            tokio::select! {
                _ = stopped.changed() => {}
                () = poked.notified() => {}
                () = tokio::time::sleep(until_resync(resync)) => {}
                Some(r) = reported.recv() => {
                    // A killed container is restarted at the next sync, and
                    // a started sidecar lets the next init container start;
                    // readiness alone needs none.
                    let resync = r.kind != ProbeKind::Readiness;
                    if let Err(e) = worker.on_report(r).await {
                        tracing::error!(pod = %worker.name, "acting on a probe: {e}");
                    }
                    if !resync {
                        continue;
                    }
                }
            }
        }
        // A runtime that is briefly away should not leave the pod behind.
        for attempt in 1..=3 {
            match worker.terminate().await {
                Ok(()) => {
                    worker.shared.statuses.remove(&worker.uid);
                    return;
                }
                Err(e) => {
                    tracing::error!(pod = %worker.name, attempt, "terminating the pod: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    });
    WorkerHandle { stop, poke, task }
}
