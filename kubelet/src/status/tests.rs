use std::collections::BTreeMap;
use std::net::IpAddr;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Pod, PodStatus};

use super::compute::{CONTAINER_CREATING, POD_INITIALIZING, phase};
use super::*;
use crate::pod_worker::actions::RunState;

fn pod(yaml: &str) -> Pod {
    serde_saphyr::from_str(yaml).unwrap()
}

const WEB: &str = "
metadata: {name: web-node, namespace: default, uid: u1}
spec:
  containers:
  - {name: web, image: busybox}
";

fn instance(name: &str, attempt: u32, state: RunState) -> Instance {
    Instance {
        id: format!("{name}-{attempt}"),
        name: name.to_owned(),
        attempt,
        created_at: 1_000 + i64::from(attempt),
        state,
        started_at: 1_700_000_000_000_000_000,
        reason: String::new(),
        message: String::new(),
        image: "docker.io/library/busybox:latest".to_owned(),
        image_ref: "sha256:abc".to_owned(),
        ready: None,
        started: None,
    }
}

fn exited(name: &str, attempt: u32, code: i32) -> Instance {
    let mut i = instance(
        name,
        attempt,
        RunState::Exited {
            code,
            started_at: 1_700_000_000_000_000_000,
            finished_at: 1_700_000_001_000_000_000,
        },
    );
    i.reason = if code == 0 { "Completed" } else { "Error" }.to_owned();
    i
}

struct Case {
    pod: Pod,
    instances: Vec<Instance>,
    waiting: BTreeMap<String, Waiting>,
    sandbox_ready: bool,
    previous: Option<PodStatus>,
    now: Timestamp,
}

impl Case {
    fn new(yaml: &str, instances: Vec<Instance>) -> Self {
        Self {
            pod: pod(yaml),
            instances,
            waiting: BTreeMap::new(),
            sandbox_ready: true,
            previous: None,
            now: Timestamp::from_second(1_800_000_000).unwrap(),
        }
    }

    fn status(&self) -> PodStatus {
        let host: [IpAddr; 1] = ["10.0.0.5".parse().unwrap()];
        let pod_ips: [IpAddr; 1] = ["10.88.0.7".parse().unwrap()];
        pod_status(&PodView {
            pod: &self.pod,
            runtime_name: "berth",
            sandbox_ready: self.sandbox_ready,
            pod_ips: &pod_ips,
            host_ips: &host,
            start_time: Timestamp::from_second(1_700_000_000).unwrap(),
            instances: &self.instances,
            waiting: &self.waiting,
            previous: self.previous.as_ref(),
            now: self.now,
        })
    }
}

fn cond(s: &PodStatus, kind: &str) -> (String, Option<String>, Option<String>) {
    let c = s
        .conditions
        .as_ref()
        .unwrap()
        .iter()
        .find(|c| c.type_ == kind)
        .unwrap();
    (c.status.clone(), c.reason.clone(), c.message.clone())
}

#[test]
fn a_running_container_without_probes_is_ready_and_started() {
    let s = Case::new(WEB, vec![instance("web", 0, RunState::Running)]).status();
    assert_eq!(s.phase.as_deref(), Some("Running"));
    assert_eq!(cond(&s, "Ready").0, "True");
    assert_eq!(cond(&s, "ContainersReady").0, "True");
    assert_eq!(cond(&s, "Initialized").0, "True");
    assert_eq!(cond(&s, "PodReadyToStartContainers").0, "True");
    assert_eq!(cond(&s, "PodScheduled").0, "True");
    let c = &s.container_statuses.as_ref().unwrap()[0];
    assert_eq!(c.container_id.as_deref(), Some("berth://web-0"));
    assert!(c.ready);
    assert_eq!(c.started, Some(true));
    assert_eq!(c.image_id, "sha256:abc");
    let running = c.state.as_ref().unwrap().running.as_ref().unwrap();
    assert_eq!(
        running.started_at.as_ref().unwrap().0,
        Timestamp::from_second(1_700_000_000).unwrap()
    );
    assert_eq!(s.pod_ip.as_deref(), Some("10.88.0.7"));
    assert_eq!(s.host_ip.as_deref(), Some("10.0.0.5"));
    assert_eq!(s.qos_class.as_deref(), Some("BestEffort"));
}

#[test]
fn readiness_waits_for_the_probe_and_names_the_unready_container() {
    let yaml = "
metadata: {name: web-node, uid: u1}
spec:
  containers:
  - name: web
    image: busybox
    readinessProbe: {exec: {command: [true]}}
  - {name: side, image: busybox}
";
    let mut case = Case::new(
        yaml,
        vec![
            instance("web", 0, RunState::Running),
            instance("side", 0, RunState::Running),
        ],
    );
    let s = case.status();
    assert_eq!(s.phase.as_deref(), Some("Running"));
    assert_eq!(
        cond(&s, "Ready"),
        (
            "False".to_owned(),
            Some("ContainersNotReady".to_owned()),
            Some("containers with unready status: [web]".to_owned())
        )
    );
    case.instances[0].ready = Some(true);
    assert_eq!(cond(&case.status(), "Ready").0, "True");
    case.instances[0].ready = Some(false);
    assert_eq!(cond(&case.status(), "ContainersReady").0, "False");
}

#[test]
fn a_startup_probe_gates_started_and_ready() {
    let yaml = "
metadata: {name: web-node, uid: u1}
spec:
  containers:
  - name: web
    image: busybox
    startupProbe: {exec: {command: [true]}}
";
    let mut case = Case::new(yaml, vec![instance("web", 0, RunState::Running)]);
    let c = &case.status().container_statuses.unwrap()[0];
    assert_eq!((c.started, c.ready), (Some(false), false));
    case.instances[0].started = Some(true);
    let c = &case.status().container_statuses.unwrap()[0];
    assert_eq!((c.started, c.ready), (Some(true), true));
}

#[test]
fn a_crash_looping_container_waits_with_its_last_termination() {
    let mut case = Case::new(WEB, vec![exited("web", 2, 1), exited("web", 1, 1)]);
    case.waiting.insert(
        "web".to_owned(),
        Waiting {
            reason: "CrashLoopBackOff".to_owned(),
            message: "back-off 20s restarting failed container=web pod=web-node_default(u1)"
                .to_owned(),
        },
    );
    let s = case.status();
    assert_eq!(s.phase.as_deref(), Some("Running"));
    let c = &s.container_statuses.as_ref().unwrap()[0];
    assert_eq!(c.restart_count, 2);
    let waiting = c.state.as_ref().unwrap().waiting.as_ref().unwrap();
    assert_eq!(waiting.reason.as_deref(), Some("CrashLoopBackOff"));
    let last = c.last_state.as_ref().unwrap().terminated.as_ref().unwrap();
    assert_eq!(last.exit_code, 1);
    assert_eq!(last.reason.as_deref(), Some("Error"));
    assert_eq!(last.container_id.as_deref(), Some("berth://web-2"));
    assert!(!c.ready);
}

#[test]
fn the_previous_instance_is_the_last_state_of_a_running_container() {
    let mut oom = exited("web", 0, 137);
    oom.reason = "OOMKilled".to_owned();
    let s = Case::new(WEB, vec![oom, instance("web", 1, RunState::Running)]).status();
    let c = &s.container_statuses.as_ref().unwrap()[0];
    assert!(c.state.as_ref().unwrap().running.is_some());
    let last = c.last_state.as_ref().unwrap().terminated.as_ref().unwrap();
    assert_eq!(
        (last.exit_code, last.reason.as_deref()),
        (137, Some("OOMKilled"))
    );
    assert_eq!(c.restart_count, 1);
}

#[test]
fn a_pod_not_yet_created_is_pending_with_containers_creating() {
    let mut case = Case::new(WEB, vec![]);
    case.sandbox_ready = false;
    let s = case.status();
    assert_eq!(s.phase.as_deref(), Some("Pending"));
    assert_eq!(cond(&s, "PodReadyToStartContainers").0, "False");
    let c = &s.container_statuses.as_ref().unwrap()[0];
    let w = c.state.as_ref().unwrap().waiting.as_ref().unwrap();
    assert_eq!(w.reason.as_deref(), Some(CONTAINER_CREATING));
    assert_eq!(c.container_id, None);
    assert_eq!(c.image, "busybox");
}

const INIT: &str = "
metadata: {name: app-node, uid: u2}
spec:
  restartPolicy: Never
  initContainers:
  - {name: one, image: busybox}
  - {name: two, image: busybox}
  containers:
  - {name: main, image: busybox}
";

#[test]
fn init_containers_keep_the_pod_pending_and_uninitialized() {
    let s = Case::new(
        INIT,
        vec![exited("one", 0, 0), instance("two", 0, RunState::Running)],
    )
    .status();
    assert_eq!(s.phase.as_deref(), Some("Pending"));
    assert_eq!(
        cond(&s, "Initialized"),
        (
            "False".to_owned(),
            Some("ContainersNotInitialized".to_owned()),
            Some("containers with incomplete status: [two]".to_owned())
        )
    );
    let main = &s.container_statuses.as_ref().unwrap()[0];
    let w = main.state.as_ref().unwrap().waiting.as_ref().unwrap();
    assert_eq!(w.reason.as_deref(), Some(POD_INITIALIZING));
    // Init statuses keep the spec's order.
    let names: Vec<&str> = s
        .init_container_statuses
        .as_ref()
        .unwrap()
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(names, ["one", "two"]);
}

#[test]
fn a_failed_init_container_fails_a_never_restarting_pod() {
    let s = Case::new(INIT, vec![exited("one", 0, 3)]).status();
    assert_eq!(s.phase.as_deref(), Some("Failed"));
}

#[test]
fn completed_containers_make_the_phase_by_restart_policy() {
    let all_ok = vec![
        exited("one", 0, 0),
        exited("two", 0, 0),
        exited("main", 0, 0),
    ];
    let s = Case::new(INIT, all_ok).status();
    assert_eq!(s.phase.as_deref(), Some("Succeeded"));
    assert_eq!(cond(&s, "Ready").1.as_deref(), Some("PodCompleted"));
    assert_eq!(cond(&s, "Initialized").0, "True");

    let failed = vec![
        exited("one", 0, 0),
        exited("two", 0, 0),
        exited("main", 0, 1),
    ];
    assert_eq!(
        Case::new(INIT, failed.clone()).status().phase.as_deref(),
        Some("Failed")
    );
    let on_failure = INIT.replace("Never", "OnFailure");
    assert_eq!(
        Case::new(&on_failure, failed.clone())
            .status()
            .phase
            .as_deref(),
        Some("Running")
    );
    let always = INIT.replace("Never", "Always");
    assert_eq!(
        Case::new(&always, failed).status().phase.as_deref(),
        Some("Running")
    );
}

#[test]
fn a_sidecar_must_start_before_the_pod_is_initialized() {
    let yaml = "
metadata: {name: app-node, uid: u3}
spec:
  initContainers:
  - name: proxy
    image: busybox
    restartPolicy: Always
    startupProbe: {exec: {command: [true]}}
  containers:
  - {name: main, image: busybox}
";
    let mut case = Case::new(yaml, vec![instance("proxy", 0, RunState::Running)]);
    let s = case.status();
    assert_eq!(s.phase.as_deref(), Some("Pending"));
    assert_eq!(cond(&s, "Initialized").0, "False");
    case.instances[0].started = Some(true);
    case.instances.push(instance("main", 0, RunState::Running));
    let s = case.status();
    assert_eq!(s.phase.as_deref(), Some("Running"));
    assert_eq!(cond(&s, "Initialized").0, "True");
    assert_eq!(cond(&s, "Ready").0, "True");
    // A sidecar that exits later does not make the pod pending again.
    case.instances[0] = exited("proxy", 0, 1);
    assert_eq!(case.status().phase.as_deref(), Some("Running"));
}

#[test]
fn condition_transition_times_carry_over_while_unchanged() {
    let mut case = Case::new(WEB, vec![instance("web", 0, RunState::Running)]);
    let first = case.status();
    let t0 = case.now;
    case.now = Timestamp::from_second(1_800_000_100).unwrap();
    case.previous = Some(first);
    let second = case.status();
    let ready = |s: &PodStatus| {
        s.conditions
            .as_ref()
            .unwrap()
            .iter()
            .find(|c| c.type_ == "Ready")
            .unwrap()
            .last_transition_time
            .clone()
            .unwrap()
            .0
    };
    assert_eq!(ready(&second), t0);
    case.instances[0] = exited("web", 0, 1);
    case.previous = Some(second);
    assert_eq!(ready(&case.status()), case.now);
}

#[test]
fn a_host_network_pod_has_the_nodes_address() {
    let yaml = "
metadata: {name: h-node, uid: u4}
spec:
  hostNetwork: true
  containers: [{name: c, image: busybox}]
";
    let s = Case::new(yaml, vec![instance("c", 0, RunState::Running)]).status();
    assert_eq!(s.pod_ip.as_deref(), Some("10.0.0.5"));
}

#[test]
fn unknown_containers_keep_the_pod_pending() {
    let p = pod(WEB);
    assert_eq!(phase(&p, &[], &[]), "Pending");
}

#[test]
fn the_store_lists_by_namespace_and_name_and_forgets_removed_pods() {
    let store = PodStatusStore::new();
    let mut a = pod("metadata: {name: b, namespace: default, uid: u1}");
    store.set(a.clone());
    store.set(pod("metadata: {name: a, namespace: kube-system, uid: u2}"));
    store.set(pod("metadata: {name: a, namespace: default, uid: u3}"));
    let names: Vec<_> = store
        .list()
        .iter()
        .map(|p| p.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(names, ["a", "b", "a"]);
    assert!(store.get("kube-system", "a").is_some());
    a.status = Some(PodStatus {
        phase: Some("Running".to_owned()),
        ..Default::default()
    });
    store.set(a);
    assert_eq!(
        store
            .get_uid("u1")
            .unwrap()
            .status
            .as_ref()
            .unwrap()
            .phase
            .as_deref(),
        Some("Running")
    );
    store.remove("u1");
    assert!(store.get("default", "b").is_none());
    assert_eq!(store.list().len(), 2);
}
