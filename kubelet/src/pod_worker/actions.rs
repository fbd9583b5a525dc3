//! What one sync of a pod must do, from its spec and what the runtime holds
//! of it, as upstream's `computePodActions`. Pure: the worker observes and
//! executes, this only decides.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Pod};

use crate::cri_config::container::container_hash;

/// The first crash-loop delay; it doubles on each restart.
pub const BACKOFF_INITIAL: Duration = Duration::from_secs(10);
/// The longest crash-loop delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// A container that ran this long before exiting restarts without delay,
/// its back-off forgotten.
pub const BACKOFF_RESET: Duration = Duration::from_secs(600);

/// A sandbox of the pod as the runtime reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SandboxState {
    pub id: String,
    pub attempt: u32,
    pub ready: bool,
    /// Unix nanoseconds; the newest sandbox is the pod's current one.
    pub created_at: i64,
}

/// Where a container is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunState {
    Created,
    Running,
    /// Times in unix nanoseconds.
    Exited {
        code: i32,
        started_at: i64,
        finished_at: i64,
    },
    Unknown,
}

/// A container of the pod as the runtime reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerState {
    pub id: String,
    pub sandbox_id: String,
    /// `io.kubernetes.container.name`.
    pub name: String,
    /// The restart count it was created with (CRI metadata attempt).
    pub attempt: u32,
    /// `io.kubernetes.container.hash`; empty when missing.
    pub hash: String,
    pub state: RunState,
    pub created_at: i64,
}

/// All the runtime holds of one pod (by its UID label), and what its worker
/// knows of it besides.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    pub sandboxes: Vec<SandboxState>,
    pub containers: Vec<ContainerState>,
    /// Running containers whose startup probe has not passed yet: a sidecar
    /// among them holds back the init containers after it.
    pub unstarted: HashSet<String>,
}

/// Init containers and regular containers are numbered apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Init,
    Regular,
}

/// A container to create and start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Start {
    pub kind: Kind,
    /// Its index in `initContainers` or `containers`.
    pub index: usize,
    pub name: String,
    pub restart_count: u32,
    /// The instance this one replaces, if it exited: recorded in the
    /// back-off, and kept (for `lastState` and `logs --previous`) until
    /// garbage collection removes it for a newer exited one.
    pub replaces: Option<Replaced>,
}

/// An exited instance that a start replaces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replaced {
    pub id: String,
    pub started_at: i64,
    pub finished_at: i64,
}

/// A container to stop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kill {
    pub id: String,
    pub name: String,
    pub reason: &'static str,
}

/// Where the pod stands after this sync.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Its containers run or will be restarted.
    Running,
    /// Every container exited 0 and none restarts.
    Succeeded,
    /// A container failed and none restarts (or an init container failed
    /// under `restartPolicy: Never`).
    Failed,
}

/// What one sync does, in this order: kill the pod, kill containers, create
/// the sandbox, start containers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodActions {
    /// Stop every container and sandbox of the pod.
    pub kill_pod: bool,
    /// Create a sandbox with this attempt.
    pub create_sandbox: Option<u32>,
    /// The current, ready sandbox (None when one is created).
    pub sandbox: Option<SandboxState>,
    pub kill: Vec<Kill>,
    pub start: Vec<Start>,
    /// Containers waiting out their crash-loop back-off, with the time left.
    pub backing_off: Vec<(String, Duration)>,
    pub outcome: Outcome,
}

/// `restartPolicy`, `Always` when unset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

impl RestartPolicy {
    pub fn of(pod: &Pod) -> Self {
        match pod.spec.as_ref().and_then(|s| s.restart_policy.as_deref()) {
            Some("OnFailure") => Self::OnFailure,
            Some("Never") => Self::Never,
            _ => Self::Always,
        }
    }

    fn restarts(self, exit_code: i32) -> bool {
        match self {
            Self::Always => true,
            Self::OnFailure => exit_code != 0,
            Self::Never => false,
        }
    }
}

/// The crash-loop back-off of a pod's containers, kept by its worker. Keyed
/// by name and spec hash, so that a changed container starts afresh.
#[derive(Clone, Debug, Default)]
pub struct Backoff {
    delays: HashMap<String, Duration>,
}

impl Backoff {
    fn key(name: &str, hash: &str) -> String {
        format!("{name}/{hash}")
    }

    /// How long the container must still wait, at `now`, to restart after
    /// an instance that exited at `finished_at` (unix nanoseconds).
    pub fn remaining(
        &self,
        name: &str,
        hash: &str,
        finished_at: i64,
        now: i64,
    ) -> Option<Duration> {
        let delay = *self.delays.get(&Self::key(name, hash))?;
        let since =
            Duration::from_nanos(u64::try_from(now.saturating_sub(finished_at)).unwrap_or(0));
        delay.checked_sub(since).filter(|d| !d.is_zero())
    }

    /// Records a restart after an instance that ran from `started_at` to
    /// `finished_at`: the next one waits 10 s, then double, up to 5 min;
    /// a long run starts over.
    pub fn restarted(&mut self, name: &str, hash: &str, started_at: i64, finished_at: i64) {
        let ran = Duration::from_nanos(
            u64::try_from(finished_at.saturating_sub(started_at)).unwrap_or(0),
        );
        let key = Self::key(name, hash);
        let next = match self.delays.get(&key) {
            Some(d) if ran < BACKOFF_RESET => (*d * 2).min(BACKOFF_MAX),
            _ => BACKOFF_INITIAL,
        };
        self.delays.insert(key, next);
    }
}

/// Whether `c` is a sidecar: an init container with `restartPolicy: Always`
/// (KEP-753), which keeps running beside the regular containers.
pub fn is_sidecar(c: &Container) -> bool {
    c.restart_policy.as_deref() == Some("Always")
}

fn latest<'a>(
    observed: &'a Observed,
    name: &str,
    sandbox: Option<&str>,
) -> Option<&'a ContainerState> {
    observed
        .containers
        .iter()
        .filter(|c| c.name == name && sandbox.is_none_or(|s| c.sandbox_id == s))
        .max_by_key(|c| (c.attempt, c.created_at))
}

/// The restart count of the next instance of `name`: one more than the
/// latest, in any of the pod's sandboxes.
fn next_restart_count(observed: &Observed, name: &str) -> u32 {
    latest(observed, name, None).map_or(0, |c| c.attempt.saturating_add(1))
}

fn start(
    kind: Kind,
    index: usize,
    c: &Container,
    observed: &Observed,
    replaces: Option<Replaced>,
) -> Start {
    Start {
        kind,
        index,
        name: c.name.clone(),
        restart_count: next_restart_count(observed, &c.name),
        replaces,
    }
}

/// What the sync of `pod` must do given `observed`, at `now` (unix nanoseconds).
pub fn compute(pod: &Pod, observed: &Observed, backoff: &Backoff, now: i64) -> PodActions {
    let policy = RestartPolicy::of(pod);
    let empty = Vec::new();
    let spec = pod.spec.as_ref();
    let inits = spec
        .and_then(|s| s.init_containers.as_ref())
        .unwrap_or(&empty);
    let regulars = spec.map_or(&empty, |s| &s.containers);
    let mut actions = PodActions {
        kill_pod: false,
        create_sandbox: None,
        sandbox: None,
        kill: Vec::new(),
        start: Vec::new(),
        backing_off: Vec::new(),
        outcome: Outcome::Running,
    };

    let newest = observed
        .sandboxes
        .iter()
        .max_by_key(|s| (s.created_at, s.attempt));
    let ready = observed.sandboxes.iter().filter(|s| s.ready).count();
    let sandbox = match newest {
        Some(s) if s.ready && ready == 1 => s,
        _ => return new_sandbox(actions, policy, newest, inits, regulars, observed),
    };
    actions.sandbox = Some(sandbox.clone());
    let current = Some(sandbox.id.as_str());

    // Containers the spec no longer has.
    for c in &observed.containers {
        let known = inits.iter().chain(regulars).any(|s| s.name == c.name);
        if !known && c.sandbox_id == sandbox.id && !matches!(c.state, RunState::Exited { .. }) {
            actions.kill.push(Kill {
                id: c.id.clone(),
                name: c.name.clone(),
                reason: "not in the pod's spec",
            });
        }
    }

    if !init_actions(
        &mut actions,
        policy,
        inits,
        regulars,
        observed,
        backoff,
        now,
    ) {
        return actions;
    }

    // Sidecars restarting do not keep a finished pod alive.
    let sidecar_starts = actions.start.len();
    let sidecar_waits = actions.backing_off.len();
    let mut keep = 0;
    let mut all_succeeded = true;
    for (i, c) in regulars.iter().enumerate() {
        let Some(inst) = latest(observed, &c.name, current) else {
            actions
                .start
                .push(start(Kind::Regular, i, c, observed, None));
            continue;
        };
        match inst.state {
            RunState::Running if inst.hash == container_hash(c) => keep += 1,
            RunState::Running => {
                actions.kill.push(kill(inst, "its spec changed"));
                actions
                    .start
                    .push(start(Kind::Regular, i, c, observed, None));
            }
            RunState::Created | RunState::Unknown => {
                actions.kill.push(kill(inst, "created but not running"));
                if policy.restarts(1) {
                    actions
                        .start
                        .push(start(Kind::Regular, i, c, observed, None));
                }
            }
            RunState::Exited {
                code,
                started_at,
                finished_at,
            } => {
                all_succeeded &= code == 0;
                if policy.restarts(code) {
                    restart(
                        &mut actions,
                        Kind::Regular,
                        i,
                        c,
                        inst,
                        observed,
                        backoff,
                        now,
                        started_at,
                        finished_at,
                    );
                }
            }
        }
    }
    if keep == 0
        && actions.start.len() == sidecar_starts
        && actions.backing_off.len() == sidecar_waits
    {
        // Nothing runs and nothing will: the pod is done, its sidecars
        // stopped with it.
        actions.start.clear();
        actions.backing_off.clear();
        actions.kill_pod = true;
        actions.outcome = if all_succeeded {
            Outcome::Succeeded
        } else {
            Outcome::Failed
        };
    }
    actions
}

/// The init containers' part of a sync, as upstream's
/// `computeInitContainerActions`; true once the pod is initialized, when
/// its regular containers may run.
///
/// Walking backwards finds the last init container that ran: those before
/// it are done, except sidecars, which are kept running (restarted whatever
/// the pod's policy, with back-off). The one after it starts once it
/// succeeded or, for a sidecar, once it runs and its startup probe passed.
/// A regular container in the sandbox means the init containers all ran,
/// even if their instances are gone.
fn init_actions(
    actions: &mut PodActions,
    policy: RestartPolicy,
    inits: &[Container],
    regulars: &[Container],
    observed: &Observed,
    backoff: &Backoff,
    now: i64,
) -> bool {
    if inits.is_empty() {
        return true;
    }
    let sandbox = actions.sandbox.as_ref().map(|s| s.id.clone());
    let current = sandbox.as_deref();
    let initialized_before = regulars
        .iter()
        .any(|c| latest(observed, &c.name, current).is_some());
    let mut initialized = initialized_before;
    let mut seen_later = initialized_before;
    for (i, c) in inits.iter().enumerate().rev() {
        let sidecar = is_sidecar(c);
        let is_last = i + 1 == inits.len();
        let Some(inst) = latest(observed, &c.name, current) else {
            if seen_later && sidecar {
                actions.start.push(start(Kind::Init, i, c, observed, None));
            }
            continue;
        };
        if seen_later && !sidecar {
            continue;
        }
        // The init container after this one, when this one is done.
        let next_done = |actions: &mut PodActions, initialized: &mut bool| {
            if is_last {
                *initialized = true;
            } else if !seen_later && let Some(next) = inits.get(i + 1) {
                actions
                    .start
                    .push(start(Kind::Init, i + 1, next, observed, None));
            }
        };
        match inst.state {
            RunState::Running if !sidecar => {}
            RunState::Running => {
                if !observed.unstarted.contains(&inst.id) {
                    next_done(actions, &mut initialized);
                    if inst.hash != container_hash(c) {
                        actions.kill.push(kill(inst, "its spec changed"));
                        actions.start.push(start(Kind::Init, i, c, observed, None));
                    }
                }
            }
            RunState::Created | RunState::Unknown => {
                actions.kill.push(kill(inst, "init container not running"));
                actions.start.push(start(Kind::Init, i, c, observed, None));
            }
            RunState::Exited {
                started_at,
                finished_at,
                ..
            } if sidecar => restart(
                actions,
                Kind::Init,
                i,
                c,
                inst,
                observed,
                backoff,
                now,
                started_at,
                finished_at,
            ),
            RunState::Exited { code: 0, .. } => next_done(actions, &mut initialized),
            RunState::Exited {
                started_at,
                finished_at,
                ..
            } => {
                if policy == RestartPolicy::Never {
                    actions.kill_pod = true;
                    actions.outcome = Outcome::Failed;
                    actions.start.clear();
                    actions.backing_off.clear();
                    return false;
                }
                restart(
                    actions,
                    Kind::Init,
                    i,
                    c,
                    inst,
                    observed,
                    backoff,
                    now,
                    started_at,
                    finished_at,
                );
            }
        }
        seen_later = true;
    }
    if !seen_later && let Some(first) = inits.first() {
        actions
            .start
            .push(start(Kind::Init, 0, first, observed, None));
    }
    initialized
}

fn kill(inst: &ContainerState, reason: &'static str) -> Kill {
    Kill {
        id: inst.id.clone(),
        name: inst.name.clone(),
        reason,
    }
}

#[allow(clippy::too_many_arguments)]
fn restart(
    actions: &mut PodActions,
    kind: Kind,
    index: usize,
    c: &Container,
    inst: &ContainerState,
    observed: &Observed,
    backoff: &Backoff,
    now: i64,
    started_at: i64,
    finished_at: i64,
) {
    match backoff.remaining(&c.name, &container_hash(c), finished_at, now) {
        Some(wait) => actions.backing_off.push((c.name.clone(), wait)),
        None => actions.start.push(start(
            kind,
            index,
            c,
            observed,
            Some(Replaced {
                id: inst.id.clone(),
                started_at,
                finished_at,
            }),
        )),
    }
}

/// No sandbox, or one not ready (or several): everything goes and a new
/// sandbox starts with the first init container or all regular ones.
fn new_sandbox(
    mut actions: PodActions,
    policy: RestartPolicy,
    newest: Option<&SandboxState>,
    inits: &[Container],
    regulars: &[Container],
    observed: &Observed,
) -> PodActions {
    // What is already stopped needs no second stop at every sync.
    actions.kill_pod = observed.sandboxes.iter().any(|s| s.ready)
        || observed
            .containers
            .iter()
            .any(|c| !matches!(c.state, RunState::Exited { .. }));
    let succeeded = |c: &Container| {
        latest(observed, &c.name, None)
            .is_some_and(|i| matches!(i.state, RunState::Exited { code: 0, .. }))
    };
    // Under Never, a pod whose containers ran is over once its sandbox is.
    if policy == RestartPolicy::Never && newest.is_some() && !observed.containers.is_empty() {
        actions.outcome = if regulars.iter().all(succeeded) {
            Outcome::Succeeded
        } else {
            Outcome::Failed
        };
        return actions;
    }
    for (i, c) in regulars.iter().enumerate() {
        if policy == RestartPolicy::OnFailure && succeeded(c) {
            continue;
        }
        actions
            .start
            .push(start(Kind::Regular, i, c, observed, None));
    }
    // A pod with nothing left to run is not initialized again.
    if !actions.start.is_empty()
        && let Some(first) = inits.first()
    {
        actions.start = vec![start(Kind::Init, 0, first, observed, None)];
    }
    if actions.start.is_empty() {
        actions.outcome = Outcome::Succeeded;
        return actions;
    }
    actions.create_sandbox = Some(newest.map_or(0, |s| s.attempt.saturating_add(1)));
    actions
}
