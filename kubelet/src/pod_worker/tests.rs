// A table row's columns are the test's arguments, however many.
#![allow(clippy::too_many_arguments)]

use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};
use rstest::rstest;

use super::actions::*;
use crate::cri_config::container::container_hash;

const S: i64 = 1_000_000_000;
const NOW: i64 = 10_000 * S;

/// A container; one named `sc…` is a sidecar (`restartPolicy: Always`).
fn container(name: &str) -> Container {
    Container {
        name: name.to_owned(),
        image: Some("busybox:1".to_owned()),
        restart_policy: name.starts_with("sc").then(|| "Always".to_owned()),
        ..Container::default()
    }
}

fn pod(policy: &str, inits: &[&str], regulars: &[&str]) -> Pod {
    Pod {
        spec: Some(PodSpec {
            restart_policy: Some(policy.to_owned()),
            init_containers: (!inits.is_empty())
                .then(|| inits.iter().map(|n| container(n)).collect()),
            containers: regulars.iter().map(|n| container(n)).collect(),
            ..PodSpec::default()
        }),
        ..Pod::default()
    }
}

fn sandbox(id: &str, attempt: u32, ready: bool) -> SandboxState {
    SandboxState {
        id: id.to_owned(),
        attempt,
        ready,
        created_at: i64::from(attempt),
    }
}

/// An instance of `name` in sandbox `sb`: "run", "new", or an exit code.
fn inst(name: &str, sb: &str, attempt: u32, state: &str) -> ContainerState {
    let state = match state {
        "run" => RunState::Running,
        "new" => RunState::Created,
        code => RunState::Exited {
            code: code.parse().unwrap_or(-1),
            started_at: NOW - 5 * S,
            finished_at: NOW - S,
        },
    };
    ContainerState {
        id: format!("{name}-{attempt}"),
        sandbox_id: sb.to_owned(),
        name: name.to_owned(),
        attempt,
        hash: container_hash(&container(name)),
        state,
        created_at: i64::from(attempt),
    }
}

fn starts(a: &PodActions) -> Vec<(String, u32)> {
    a.start
        .iter()
        .map(|s| (s.name.clone(), s.restart_count))
        .collect()
}

fn kills(a: &PodActions) -> Vec<String> {
    a.kill.iter().map(|k| k.id.clone()).collect()
}

fn pairs(v: &[(&str, u32)]) -> Vec<(String, u32)> {
    v.iter().map(|(n, c)| ((*n).to_owned(), *c)).collect()
}

#[rstest]
// Nothing yet: a sandbox, and every container.
#[case::fresh("Always", &[], &["a", "b"], vec![], vec![], Some(0), false, &[("a", 0), ("b", 0)])]
// Init containers first, one at a time.
#[case::fresh_with_init("Always", &["i1", "i2"], &["a"], vec![], vec![], Some(0), false, &[("i1", 0)])]
// A sandbox that died: all goes, a new one with the next attempt.
#[case::sandbox_not_ready("Always", &[], &["a"], vec![sandbox("s", 2, false)], vec![inst("a", "s", 0, "run")], Some(3), true, &[("a", 1)])]
// Never, once its containers ran, the pod is not recreated.
#[case::never_is_over("Never", &[], &["a"], vec![sandbox("s", 0, false)], vec![inst("a", "s", 0, "0")], None, false, &[])]
// OnFailure with all succeeded: no new sandbox.
#[case::onfailure_done("OnFailure", &[], &["a"], vec![sandbox("s", 0, false)], vec![inst("a", "s", 0, "0")], None, false, &[])]
// Nor with init containers: a finished pod is not initialized again.
#[case::onfailure_done_with_init("OnFailure", &["i1"], &["a"], vec![sandbox("s", 0, false)], vec![inst("i1", "s", 0, "0"), inst("a", "s", 0, "0")], None, false, &[])]
// A failed container in a dead sandbox: initialized again from the start.
#[case::onfailure_init_again("OnFailure", &["i1"], &["a"], vec![sandbox("s", 0, false)], vec![inst("i1", "s", 0, "0"), inst("a", "s", 0, "1")], Some(1), false, &[("i1", 1)])]
fn sandbox_cases(
    #[case] policy: &str,
    #[case] inits: &[&str],
    #[case] regulars: &[&str],
    #[case] sandboxes: Vec<SandboxState>,
    #[case] containers: Vec<ContainerState>,
    #[case] create: Option<u32>,
    #[case] kill_pod: bool,
    #[case] start: &[(&str, u32)],
) {
    let observed = Observed {
        sandboxes,
        containers,
        ..Observed::default()
    };
    let a = compute(
        &pod(policy, inits, regulars),
        &observed,
        &Backoff::default(),
        NOW,
    );
    assert_eq!(a.create_sandbox, create);
    assert_eq!(a.kill_pod, kill_pod);
    assert_eq!(starts(&a), pairs(start));
}

#[rstest]
// Healthy and running: nothing to do (also how a restarted node adopts pods).
#[case::adopt("Always", &[], &["a"], vec![inst("a", "s", 0, "run")], &[], &[], false, Outcome::Running)]
#[case::always_restarts_success("Always", &[], &["a"], vec![inst("a", "s", 0, "0")], &[("a", 1)], &[], false, Outcome::Running)]
#[case::onfailure_restarts_failure("OnFailure", &[], &["a"], vec![inst("a", "s", 3, "1")], &[("a", 4)], &[], false, Outcome::Running)]
#[case::onfailure_keeps_success("OnFailure", &[], &["a", "b"], vec![inst("a", "s", 0, "0"), inst("b", "s", 0, "run")], &[], &[], false, Outcome::Running)]
#[case::never_all_done("Never", &[], &["a", "b"], vec![inst("a", "s", 0, "0"), inst("b", "s", 0, "2")], &[], &[], true, Outcome::Failed)]
#[case::onfailure_all_succeeded("OnFailure", &[], &["a"], vec![inst("a", "s", 0, "0")], &[], &[], true, Outcome::Succeeded)]
// Created but never started: killed and started again.
#[case::stuck_created("Always", &[], &["a"], vec![inst("a", "s", 0, "new")], &[("a", 1)], &["a-0"], false, Outcome::Running)]
// A container the spec does not have is killed.
#[case::unknown("Always", &[], &["a"], vec![inst("a", "s", 0, "run"), inst("x", "s", 0, "run")], &[], &["x-0"], false, Outcome::Running)]
// Init: the next one after a success; a running one blocks the rest.
#[case::init_next("Always", &["i1", "i2"], &["a"], vec![inst("i1", "s", 0, "0")], &[("i2", 0)], &[], false, Outcome::Running)]
#[case::init_running("Always", &["i1", "i2"], &["a"], vec![inst("i1", "s", 0, "run")], &[], &[], false, Outcome::Running)]
#[case::init_done("Always", &["i1"], &["a", "b"], vec![inst("i1", "s", 0, "0")], &[("a", 0), ("b", 0)], &[], false, Outcome::Running)]
#[case::init_failed_restarts("OnFailure", &["i1"], &["a"], vec![inst("i1", "s", 1, "1")], &[("i1", 2)], &[], false, Outcome::Running)]
#[case::init_failed_never("Never", &["i1"], &["a"], vec![inst("i1", "s", 0, "1")], &[], &[], true, Outcome::Failed)]
// Init containers whose instances are gone once the regular ones ran are
// not run again.
#[case::init_gone_after_init("Always", &["i1"], &["a"], vec![inst("a", "s", 0, "run")], &[], &[], false, Outcome::Running)]
// Sidecars: first of all in a new sandbox; once running, the next init
// container starts and the sidecar keeps running.
#[case::sidecar_first("Always", &["sc1", "i1"], &["a"], vec![], &[("sc1", 0)], &[], false, Outcome::Running)]
#[case::sidecar_then_init("Never", &["sc1", "i1"], &["a"], vec![inst("sc1", "s", 0, "run")], &[("i1", 0)], &[], false, Outcome::Running)]
#[case::sidecars_in_order("Always", &["sc1", "sc2"], &["a"], vec![inst("sc1", "s", 0, "run")], &[("sc2", 0)], &[], false, Outcome::Running)]
#[case::sidecar_and_regulars("Never", &["sc1", "i1"], &["a"], vec![inst("sc1", "s", 0, "run"), inst("i1", "s", 0, "0")], &[("a", 0)], &[], false, Outcome::Running)]
#[case::last_sidecar_then_regulars("Always", &["i1", "sc1"], &["a"], vec![inst("i1", "s", 0, "0"), inst("sc1", "s", 0, "run")], &[("a", 0)], &[], false, Outcome::Running)]
// A sidecar restarts whatever the pod's policy, even before the init
// containers after it are done.
#[case::sidecar_restarts_under_never("Never", &["sc1"], &["a"], vec![inst("sc1", "s", 0, "0"), inst("a", "s", 0, "run")], &[("sc1", 1)], &[], false, Outcome::Running)]
#[case::sidecar_restarts_during_init("Never", &["sc1", "i1"], &["a"], vec![inst("sc1", "s", 0, "1"), inst("i1", "s", 0, "run")], &[("sc1", 1)], &[], false, Outcome::Running)]
#[case::sidecar_gone_restarts("Never", &["sc1"], &["a"], vec![inst("a", "s", 0, "run")], &[("sc1", 0)], &[], false, Outcome::Running)]
// Sidecars do not keep a finished pod: it is killed, and a sidecar that
// exited is not restarted.
#[case::sidecar_pod_done("Never", &["sc1"], &["a"], vec![inst("sc1", "s", 0, "run"), inst("a", "s", 0, "0")], &[], &[], true, Outcome::Succeeded)]
#[case::sidecar_exited_pod_done("OnFailure", &["sc1"], &["a"], vec![inst("sc1", "s", 0, "1"), inst("a", "s", 0, "0")], &[], &[], true, Outcome::Succeeded)]
#[case::sidecar_pod_runs("Always", &["sc1"], &["a"], vec![inst("sc1", "s", 0, "run"), inst("a", "s", 0, "0")], &[("a", 1)], &[], false, Outcome::Running)]
fn container_cases(
    #[case] policy: &str,
    #[case] inits: &[&str],
    #[case] regulars: &[&str],
    #[case] containers: Vec<ContainerState>,
    #[case] start: &[(&str, u32)],
    #[case] kill: &[&str],
    #[case] kill_pod: bool,
    #[case] outcome: Outcome,
) {
    let observed = Observed {
        sandboxes: vec![sandbox("s", 0, true)],
        containers,
        ..Observed::default()
    };
    let a = compute(
        &pod(policy, inits, regulars),
        &observed,
        &Backoff::default(),
        NOW,
    );
    assert_eq!(a.create_sandbox, None);
    assert_eq!(a.sandbox.as_ref().map(|s| s.id.as_str()), Some("s"));
    assert_eq!(starts(&a), pairs(start));
    assert_eq!(kills(&a), kill);
    assert_eq!(a.kill_pod, kill_pod);
    assert_eq!(a.outcome, outcome);
}

#[test]
fn a_sidecar_holds_the_next_init_container_until_it_started() {
    let p = pod("Always", &["sc1", "i1"], &["a"]);
    let mut observed = Observed {
        sandboxes: vec![sandbox("s", 0, true)],
        containers: vec![inst("sc1", "s", 0, "run")],
        ..Observed::default()
    };
    observed.unstarted.insert("sc1-0".to_owned());
    let a = compute(&p, &observed, &Backoff::default(), NOW);
    assert!(a.start.is_empty() && a.kill.is_empty() && !a.kill_pod);
    observed.unstarted.clear();
    let a = compute(&p, &observed, &Backoff::default(), NOW);
    assert_eq!(starts(&a), pairs(&[("i1", 0)]));
}

#[test]
fn a_crash_looping_sidecar_waits_out_its_back_off() {
    let p = pod("Never", &["sc1"], &["a"]);
    let observed = Observed {
        sandboxes: vec![sandbox("s", 0, true)],
        containers: vec![inst("sc1", "s", 1, "1"), inst("a", "s", 0, "run")],
        ..Observed::default()
    };
    let mut backoff = Backoff::default();
    backoff.restarted(
        "sc1",
        &container_hash(&container("sc1")),
        NOW - 5 * S,
        NOW - S,
    );
    let a = compute(&p, &observed, &backoff, NOW);
    assert!(a.start.is_empty());
    assert_eq!(
        a.backing_off,
        vec![("sc1".to_owned(), Duration::from_secs(9))]
    );
    assert_eq!(a.outcome, Outcome::Running);
}

#[test]
fn a_changed_spec_is_killed_and_started_again() {
    let mut running = inst("a", "s", 0, "run");
    running.hash = "old".to_owned();
    let observed = Observed {
        sandboxes: vec![sandbox("s", 0, true)],
        containers: vec![running],
        ..Observed::default()
    };
    let a = compute(
        &pod("Always", &[], &["a"]),
        &observed,
        &Backoff::default(),
        NOW,
    );
    assert_eq!(kills(&a), ["a-0"]);
    assert_eq!(starts(&a), pairs(&[("a", 1)]));
}

#[test]
fn a_crash_loop_waits_out_its_back_off() {
    let p = pod("Always", &[], &["a"]);
    let hash = container_hash(&container("a"));
    let observed = Observed {
        sandboxes: vec![sandbox("s", 0, true)],
        containers: vec![inst("a", "s", 1, "1")],
        ..Observed::default()
    };
    let mut backoff = Backoff::default();
    // The first restart is at once.
    assert_eq!(
        starts(&compute(&p, &observed, &backoff, NOW)),
        pairs(&[("a", 2)])
    );
    backoff.restarted("a", &hash, NOW - 5 * S, NOW - S);
    // Then 10 s after the exit (1 s ago): 9 s left, nothing started.
    let a = compute(&p, &observed, &backoff, NOW);
    assert!(a.start.is_empty());
    assert_eq!(
        a.backing_off,
        vec![("a".to_owned(), Duration::from_secs(9))]
    );
    assert!(!a.kill_pod);
    assert_eq!(
        starts(&compute(&p, &observed, &backoff, NOW + 9 * S)),
        pairs(&[("a", 2)])
    );
}

#[rstest]
#[case::first(&[5], Duration::from_secs(10))]
#[case::doubles(&[5, 5], Duration::from_secs(20))]
#[case::caps(&[5, 5, 5, 5, 5, 5, 5, 5], Duration::from_secs(300))]
// A run of 10 min or more forgets the back-off.
#[case::resets(&[5, 5, 5, 600], Duration::from_secs(10))]
fn back_off_delays(#[case] runs: &[i64], #[case] expected: Duration) {
    let mut b = Backoff::default();
    for run in runs {
        b.restarted("a", "h", 0, run * S);
    }
    let exit = runs.last().copied().unwrap_or(0) * S;
    // Right at the exit the whole delay is left.
    assert_eq!(b.remaining("a", "h", exit, exit), Some(expected));
    // Another spec hash has its own.
    assert_eq!(b.remaining("a", "other", exit, exit), None);
}

#[rstest]
#[case("busybox", "Always")]
#[case("busybox:latest", "Always")]
#[case("busybox:1.36", "IfNotPresent")]
#[case("127.0.0.1:5000/busybox", "Always")]
#[case("127.0.0.1:5000/busybox:1", "IfNotPresent")]
#[case("busybox@sha256:abcd", "IfNotPresent")]
fn pull_policy_defaults(#[case] image: &str, #[case] policy: &str) {
    assert_eq!(super::worker::default_pull_policy(image), policy);
}

#[test]
fn start_failures_wait_with_upstream_reasons() {
    use super::worker::WorkerError;
    use crate::cri_client::CriClientError;
    use crate::cri_config::container::ContainerError;
    use crate::cri_config::env::EnvError;

    let who = || ("p".to_owned(), "c".to_owned());
    let cri = || CriClientError::Rpc {
        rpc: "PullImage",
        code: tonic::Code::NotFound,
        message: "no such image".into(),
    };
    let (pod, container) = who();
    let cases = [
        (
            WorkerError::ImagePull {
                pod: pod.clone(),
                container: container.clone(),
                image: "x".into(),
                source: cri(),
            },
            "ErrImagePull",
        ),
        (
            WorkerError::ImagePullBackOff {
                pod: pod.clone(),
                container: container.clone(),
                image: "x".into(),
                wait: Duration::from_secs(10),
            },
            "ImagePullBackOff",
        ),
        (
            WorkerError::Container {
                pod: pod.clone(),
                container: container.clone(),
                source: ContainerError::Env(EnvError::NoEnvFromSource {
                    container: container.clone(),
                    index: 0,
                }),
            },
            "CreateContainerConfigError",
        ),
        (
            WorkerError::CreateContainer {
                pod: pod.clone(),
                container: container.clone(),
                source: cri(),
            },
            "CreateContainerError",
        ),
        (
            WorkerError::StartContainer {
                pod,
                container,
                source: cri(),
            },
            "RunContainerError",
        ),
    ];
    for (e, reason) in cases {
        assert_eq!(e.waiting_reason(), reason, "{e}");
    }
}

#[test]
fn resyncs_fall_on_one_grid_for_all_workers() {
    use std::time::{SystemTime, UNIX_EPOCH};

    let period = Duration::from_secs(5);
    let wait = super::worker::until_resync(period);
    assert!(wait > Duration::ZERO && wait <= period, "{wait:?}");
    let at = SystemTime::now().duration_since(UNIX_EPOCH).unwrap() + wait;
    // Where the wait ends: on a multiple of the period, give or take the
    // time this test took.
    let off = at.as_millis() % period.as_millis();
    assert!(
        off < 100 || off > period.as_millis() - 100,
        "{off} ms off the grid"
    );
}
