//! A pod's `status` as upstream's kubelet reports it (`generateAPIPodStatus`,
//! `convertToAPIContainerStatuses`, `getPhase` and the condition
//! generators), from its spec, the runtime's instances of its containers
//! and what the pod worker knows beyond the runtime (probe verdicts,
//! back-offs, pull failures). Pure: the worker gathers, this decides.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateRunning, ContainerStateTerminated,
    ContainerStateWaiting, ContainerStatus, HostIP, Pod, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::cri_config::qos_class;
use crate::pod_worker::actions::RunState;

/// The waiting reason of a container not yet created, in a pod without
/// init containers.
pub const CONTAINER_CREATING: &str = "ContainerCreating";
/// The waiting reason of a regular container while init containers run.
pub const POD_INITIALIZING: &str = "PodInitializing";

/// One instance of a container in the runtime.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instance {
    pub id: String,
    /// The container's name in the spec.
    pub name: String,
    /// Its restart count (the CRI attempt it was created with).
    pub attempt: u32,
    /// Unix nanoseconds; the newest instance is the container's current one.
    pub created_at: i64,
    pub state: RunState,
    /// Unix nanoseconds, 0 when unknown; for a running instance.
    pub started_at: i64,
    /// The runtime's reason and message for an exited instance
    /// (`Completed`, `Error`, `OOMKilled`; the termination message).
    pub reason: String,
    pub message: String,
    /// The image as the spec named it, and the image's ID.
    pub image: String,
    pub image_ref: String,
    /// The readiness probe's last verdict; `None` before the first.
    pub ready: Option<bool>,
    /// Whether the startup probe passed; `None` before it did or failed.
    pub started: Option<bool>,
}

/// Why a container that is to be (re)started is not running, as upstream's
/// reason cache: `CrashLoopBackOff`, `ErrImagePull`, `ImagePullBackOff`,
/// `CreateContainerConfigError`, `CreateContainerError`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Waiting {
    pub reason: String,
    pub message: String,
}

/// Everything the status of one pod is computed from.
#[derive(Clone, Debug)]
pub struct PodView<'a> {
    /// The pod as the manifest gave it (named, with its UID).
    pub pod: &'a Pod,
    /// The runtime's name, the scheme of container IDs (`berth://…`).
    pub runtime_name: &'a str,
    /// Whether the pod's current sandbox is ready (its network set up).
    pub sandbox_ready: bool,
    /// The pod's addresses as its sandbox reports them, primary first.
    pub pod_ips: &'a [IpAddr],
    /// The node's addresses, primary first.
    pub host_ips: &'a [IpAddr],
    /// When the node first took the pod in.
    pub start_time: Timestamp,
    /// Every instance of the pod's containers in the runtime.
    pub instances: &'a [Instance],
    /// Containers waiting to be (re)started, by name, with why.
    pub waiting: &'a BTreeMap<String, Waiting>,
    /// The status computed last, whose condition transition times carry
    /// over while a condition does not change.
    pub previous: Option<&'a PodStatus>,
    pub now: Timestamp,
}

fn time(nanos: i64) -> Option<Time> {
    (nanos > 0)
        .then(|| Timestamp::from_nanosecond(i128::from(nanos)).ok())
        .flatten()
        .map(Time)
}

fn is_restartable(c: &Container) -> bool {
    c.restart_policy.as_deref() == Some("Always")
}

/// The instance's own state, as upstream's `convertContainerStatus`.
fn instance_state(i: &Instance, container_id: &str) -> ContainerState {
    match i.state {
        RunState::Running => ContainerState {
            running: Some(ContainerStateRunning {
                started_at: time(i.started_at),
            }),
            ..Default::default()
        },
        RunState::Exited {
            code,
            started_at,
            finished_at,
        } => ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code: code,
                reason: Some(i.reason.clone()).filter(|r| !r.is_empty()),
                message: Some(i.message.clone()).filter(|m| !m.is_empty()),
                started_at: time(started_at),
                finished_at: time(finished_at),
                container_id: Some(container_id.to_owned()),
                signal: None,
            }),
            ..Default::default()
        },
        // Created but not started, or unknown: "waiting to be running".
        RunState::Created | RunState::Unknown => ContainerState {
            waiting: Some(ContainerStateWaiting::default()),
            ..Default::default()
        },
    }
}

/// The statuses of `containers` (the regular ones, or the init ones), in
/// upstream's order: init containers as in the spec, regular ones by name.
fn container_statuses(
    view: &PodView<'_>,
    containers: &[Container],
    has_init: bool,
    init: bool,
) -> Vec<ContainerStatus> {
    let default_reason = if has_init {
        POD_INITIALIZING
    } else {
        CONTAINER_CREATING
    };
    let mut by_name: HashMap<&str, Vec<&Instance>> = HashMap::new();
    for i in view.instances {
        by_name.entry(i.name.as_str()).or_default().push(i);
    }
    let mut out: Vec<ContainerStatus> = containers
        .iter()
        .map(|c| {
            let mut instances = by_name.remove(c.name.as_str()).unwrap_or_default();
            instances.sort_by_key(|i| std::cmp::Reverse((i.created_at, i.attempt)));
            let mut status = ContainerStatus {
                name: c.name.clone(),
                image: c.image.clone().unwrap_or_default(),
                state: Some(ContainerState {
                    waiting: Some(ContainerStateWaiting {
                        reason: Some(default_reason.to_owned()),
                        message: None,
                    }),
                    ..Default::default()
                }),
                ready: false,
                started: Some(false),
                ..Default::default()
            };
            if let Some(latest) = instances.first() {
                let cid = format!("{}://{}", view.runtime_name, latest.id);
                status.container_id = Some(cid.clone());
                status.restart_count = i32::try_from(latest.attempt).unwrap_or(i32::MAX);
                if !latest.image.is_empty() {
                    status.image = latest.image.clone();
                }
                status.image_id = latest.image_ref.clone();
                status.state = Some(instance_state(latest, &cid));
                if latest.state == RunState::Running {
                    // Without a startup probe a running container has started;
                    // with one, once it passed. Readiness likewise, and only
                    // once started.
                    let started = c.startup_probe.is_none() || latest.started == Some(true);
                    status.started = Some(started);
                    status.ready =
                        started && (c.readiness_probe.is_none() || latest.ready == Some(true));
                    // A sidecar without a readiness probe is ready once started.
                }
            }
            if let Some(prev) = instances.get(1) {
                let cid = format!("{}://{}", view.runtime_name, prev.id);
                status.last_state = Some(instance_state(prev, &cid));
            }
            // An init container that completed is not restarted.
            let init_done = init
                && !is_restartable(c)
                && matches!(
                    instances.first().map(|i| i.state),
                    Some(RunState::Exited { code: 0, .. })
                );
            if let Some(w) = view.waiting.get(&c.name).filter(|_| !init_done) {
                if status
                    .state
                    .as_ref()
                    .is_some_and(|s| s.terminated.is_some())
                {
                    status.last_state = status.state.take();
                }
                status.state = Some(ContainerState {
                    waiting: Some(ContainerStateWaiting {
                        reason: Some(w.reason.clone()),
                        message: Some(w.message.clone()).filter(|m| !m.is_empty()),
                    }),
                    ..Default::default()
                });
                status.ready = false;
                status.started = Some(false);
            }
            status
        })
        .collect();
    if !init {
        out.sort_by(|a, b| a.name.cmp(&b.name));
    }
    out
}

fn state_of(s: &ContainerStatus) -> (bool, Option<i32>, bool) {
    let st = s.state.as_ref();
    let running = st.is_some_and(|s| s.running.is_some());
    let terminated = st.and_then(|s| s.terminated.as_ref()).map(|t| t.exit_code);
    let waiting = st.is_some_and(|s| s.waiting.is_some());
    (running, terminated, waiting)
}

fn last_exit(s: &ContainerStatus) -> Option<i32> {
    s.last_state
        .as_ref()
        .and_then(|l| l.terminated.as_ref())
        .map(|t| t.exit_code)
}

/// The pod's phase, as upstream's `getPhase` for a static pod (which never
/// becomes terminal on its own account).
pub fn phase(pod: &Pod, init: &[ContainerStatus], regular: &[ContainerStatus]) -> &'static str {
    let spec = pod.spec.clone().unwrap_or_default();
    let policy = spec.restart_policy.as_deref().unwrap_or("Always");
    let init_specs = spec.init_containers.unwrap_or_default();
    let find = |list: &'_ [ContainerStatus], name: &str| -> Option<ContainerStatus> {
        list.iter().find(|s| s.name == name).cloned()
    };
    let mut pending_init = 0;
    let mut failed_init = 0;
    for c in init_specs.iter().filter(|c| !is_restartable(c)) {
        let Some(s) = find(init, &c.name) else {
            pending_init += 1;
            continue;
        };
        match state_of(&s) {
            (true, _, _) => pending_init += 1,
            (_, Some(code), _) => failed_init += usize::from(code != 0),
            (_, _, true) => match last_exit(&s) {
                Some(code) => failed_init += usize::from(code != 0),
                None => pending_init += 1,
            },
            _ => pending_init += 1,
        }
    }
    let (mut unknown, mut running, mut waiting, mut stopped, mut succeeded) = (0, 0, 0, 0, 0);
    for c in init_specs.iter().filter(|c| is_restartable(c)) {
        let Some(s) = find(init, &c.name) else {
            unknown += 1;
            continue;
        };
        match state_of(&s) {
            (true, _, _) => {
                if s.started != Some(true) {
                    pending_init += 1;
                }
                running += 1;
            }
            // A stopped sidecar does not count towards the phase.
            (_, Some(_), _) => {}
            (_, _, true) => {
                if last_exit(&s).is_none() {
                    pending_init += 1;
                    waiting += 1;
                }
            }
            _ => {
                pending_init += 1;
                unknown += 1;
            }
        }
    }
    for c in &spec.containers {
        let Some(s) = find(regular, &c.name) else {
            unknown += 1;
            continue;
        };
        match state_of(&s) {
            (true, _, _) => running += 1,
            (_, Some(code), _) => {
                stopped += 1;
                succeeded += usize::from(code == 0);
            }
            (_, _, true) => {
                if last_exit(&s).is_some() {
                    stopped += 1;
                } else {
                    waiting += 1;
                }
            }
            _ => unknown += 1,
        }
    }
    if failed_init > 0 && policy == "Never" {
        return "Failed";
    }
    // Regular containers that ran keep a pod out of Pending while its
    // sidecars restart.
    let regular_started = regular.iter().any(|s| {
        let (r, t, _) = state_of(s);
        r || t.is_some() || last_exit(s).is_some()
    });
    if (pending_init > 0 && !regular_started) || waiting > 0 {
        return "Pending";
    }
    if running > 0 && unknown == 0 {
        return "Running";
    }
    if running == 0 && stopped > 0 && unknown == 0 {
        return match policy {
            "Always" => "Running",
            _ if stopped == succeeded => "Succeeded",
            "Never" => "Failed",
            _ => "Running",
        };
    }
    "Pending"
}

fn condition(
    view: &PodView<'_>,
    kind: &str,
    ok: bool,
    reason: Option<&str>,
    message: Option<String>,
) -> PodCondition {
    let status = if ok { "True" } else { "False" };
    // The transition time stays while the condition holds its value.
    let since = view
        .previous
        .and_then(|p| p.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == kind))
        .filter(|c| c.status == status)
        .and_then(|c| c.last_transition_time.clone())
        .unwrap_or(Time(view.now));
    PodCondition {
        type_: kind.to_owned(),
        status: status.to_owned(),
        reason: reason.map(str::to_owned),
        message,
        last_transition_time: Some(since),
        last_probe_time: None,
        observed_generation: None,
    }
}

fn names_message(what: &str, names: &[&str]) -> String {
    format!("containers with {what} status: [{}]", names.join(" "))
}

/// The kubelet's pod conditions, in upstream's order.
fn conditions(
    view: &PodView<'_>,
    phase: &str,
    init: &[ContainerStatus],
    regular: &[ContainerStatus],
) -> Vec<PodCondition> {
    let spec = view.pod.spec.clone().unwrap_or_default();
    let init_specs = spec.init_containers.unwrap_or_default();
    let completed = phase == "Succeeded";

    // Initialized: every init container done (sidecars started).
    let incomplete: Vec<&str> = init_specs
        .iter()
        .filter(|c| {
            let s = init.iter().find(|s| s.name == c.name);
            let (running, exited, _) = s.map(state_of).unwrap_or((false, None, false));
            if is_restartable(c) {
                !(running && s.is_some_and(|s| s.started == Some(true)))
            } else {
                exited != Some(0)
            }
        })
        .map(|c| c.name.as_str())
        .collect();
    let regular_ran = regular.iter().any(|s| {
        let (r, t, _) = state_of(s);
        r || t.is_some()
    });
    let initialized = if incomplete.is_empty() || regular_ran || completed {
        condition(view, "Initialized", true, None, None)
    } else {
        condition(
            view,
            "Initialized",
            false,
            Some("ContainersNotInitialized"),
            Some(names_message("incomplete", &incomplete)),
        )
    };

    // ContainersReady and Ready: every regular container and sidecar ready.
    let unready: Vec<&str> = init_specs
        .iter()
        .filter(|c| is_restartable(c))
        .map(|c| c.name.as_str())
        .filter(|n| !init.iter().any(|s| s.name == *n && s.ready))
        .chain(
            spec.containers
                .iter()
                .map(|c| c.name.as_str())
                .filter(|n| !regular.iter().any(|s| s.name == *n && s.ready)),
        )
        .collect();
    let (ready, reason, message) = if completed {
        (false, Some("PodCompleted"), None)
    } else if unready.is_empty() {
        (true, None, None)
    } else {
        (
            false,
            Some("ContainersNotReady"),
            Some(names_message("unready", &unready)),
        )
    };
    vec![
        condition(
            view,
            "PodReadyToStartContainers",
            view.sandbox_ready,
            None,
            None,
        ),
        initialized,
        condition(view, "Ready", ready, reason, message.clone()),
        condition(view, "ContainersReady", ready, reason, message),
        condition(view, "PodScheduled", true, None, None),
    ]
}

/// The pod's status.
pub fn pod_status(view: &PodView<'_>) -> PodStatus {
    let spec = view.pod.spec.clone().unwrap_or_default();
    let init_specs = spec.init_containers.clone().unwrap_or_default();
    let has_init = !init_specs.is_empty();
    let regular = container_statuses(view, &spec.containers, has_init, false);
    let init = container_statuses(view, &init_specs, has_init, true);
    let phase = phase(view.pod, &init, &regular);
    let host_network = spec.host_network.unwrap_or(false);
    // Host-network pods have the node's addresses.
    let pod_ips: Vec<String> = if host_network {
        view.host_ips.iter().map(ToString::to_string).collect()
    } else {
        view.pod_ips.iter().map(ToString::to_string).collect()
    };
    PodStatus {
        phase: Some(phase.to_owned()),
        conditions: Some(conditions(view, phase, &init, &regular)),
        host_ip: view.host_ips.first().map(ToString::to_string),
        host_ips: Some(
            view.host_ips
                .iter()
                .map(|ip| HostIP { ip: ip.to_string() })
                .collect(),
        )
        .filter(|v: &Vec<HostIP>| !v.is_empty()),
        pod_ip: pod_ips.first().cloned(),
        pod_ips: Some(pod_ips.iter().map(|ip| PodIP { ip: ip.clone() }).collect())
            .filter(|v: &Vec<PodIP>| !v.is_empty()),
        start_time: Some(Time(view.start_time)),
        qos_class: qos_class(view.pod).ok().map(|q| q.as_str().to_owned()),
        container_statuses: Some(regular),
        init_container_statuses: Some(init).filter(|v| !v.is_empty()),
        ..Default::default()
    }
}
