//! The `ContainerConfig` of a container of a pod, as upstream's
//! `generateContainerConfig` builds it (mounts and devices come with volumes,
//! later).
//!
//! Not the same as upstream:
//! - `io.kubernetes.container.hash` is FNV-1a 32 over the container's JSON as
//!   k8s-openapi writes it, where upstream hashes a Go dump of its own type:
//!   as stable (it changes when the spec does), but another number;
//! - `io.kubernetes.container.ports` holds the same ports with the same JSON
//!   names, its keys in k8s-openapi's order instead of Go's;
//! - the API defaults manifest pods lack are applied where they matter here:
//!   `terminationMessagePath` `/dev/termination-log`, policy `File`,
//!   `terminationGracePeriodSeconds` 30, port protocol `TCP`.

use std::collections::HashMap;

use berth_proto::v1::{
    Capability, ContainerConfig, ContainerMetadata, ImageSpec, Int64Value, KeyValue,
    LinuxContainerConfig, LinuxContainerSecurityContext, SecurityProfile,
    security_profile::ProfileType,
};
use k8s_openapi::api::core::v1::{self as api, Container, PodSpec};
use thiserror::Error;

use super::env::{self, EnvError};
use super::qos;
use super::resources::{self, Requirements, ResourcesError};
use super::sandbox::{self, Identity, SandboxError, namespace_options};
use super::{NodeContext, PodContext};

/// Errors of this module.
#[derive(Debug, Error)]
pub enum ContainerError {
    /// The pod's identity (see the sandbox).
    #[error(transparent)]
    Pod(#[from] SandboxError),
    /// The container's environment.
    #[error(transparent)]
    Env(#[from] EnvError),
    /// The container's or pod's resources.
    #[error(transparent)]
    Resources(#[from] ResourcesError),
}

/// Label with the container's name.
pub const CONTAINER_NAME_LABEL: &str = "io.kubernetes.container.name";
/// Annotation with the hash of the container's spec, to see it changed.
pub const CONTAINER_HASH_ANNOTATION: &str = "io.kubernetes.container.hash";
/// Annotation with the container's restart count.
pub const RESTART_COUNT_ANNOTATION: &str = "io.kubernetes.container.restartCount";
/// Annotation with where the container writes its termination message.
pub const TERMINATION_MESSAGE_PATH_ANNOTATION: &str =
    "io.kubernetes.container.terminationMessagePath";
/// Annotation with how the termination message is read.
pub const TERMINATION_MESSAGE_POLICY_ANNOTATION: &str =
    "io.kubernetes.container.terminationMessagePolicy";
/// Annotation with the pod's termination grace period, in seconds.
pub const TERMINATION_GRACE_PERIOD_ANNOTATION: &str = "io.kubernetes.pod.terminationGracePeriod";
/// Annotation with the pod's deletion grace period, when it is being deleted.
pub const DELETION_GRACE_PERIOD_ANNOTATION: &str = "io.kubernetes.pod.deletionGracePeriod";
/// Annotation with the container's ports as JSON.
pub const CONTAINER_PORTS_ANNOTATION: &str = "io.kubernetes.container.ports";
/// Annotation with the container's preStop hook as JSON.
pub const PRE_STOP_ANNOTATION: &str = "io.kubernetes.container.preStopHandler";

/// The masked paths upstream sends unless `procMount: Unmasked`.
pub const DEFAULT_MASKED_PATHS: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];
/// The read-only paths upstream sends unless `procMount: Unmasked`.
pub const DEFAULT_READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// FNV-1a, 32 bits.
pub fn fnv1a32(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5, |hash: u32, b| {
        (hash ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

/// The hash of `container`'s spec, in hex as the annotation carries it.
pub fn container_hash(container: &Container) -> String {
    // Serializing k8s-openapi types does not fail (string keys only).
    let json = serde_json::to_vec(container).unwrap_or_default();
    format!("{:x}", fnv1a32(&json))
}

/// The config of `container` of the pod in `ctx`, its image given as `image`
/// (the reference the image service resolved).
pub fn container_config(
    ctx: &PodContext<'_>,
    node: &NodeContext,
    container: &Container,
    image: &str,
) -> Result<ContainerConfig, ContainerError> {
    let pod = ctx.pod;
    let id = Identity::of(pod)?;
    let default_spec = PodSpec::default();
    let spec = pod.spec.as_ref().unwrap_or(&default_spec);
    let restart_count = ctx.restart_count(&container.name);

    let env = env::container_env(ctx, node, container)?;
    let lookup: HashMap<&str, &str> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let expand = |items: &Option<Vec<String>>| -> Vec<String> {
        items
            .iter()
            .flatten()
            .map(|s| env::expand(s, |n| lookup.get(n).copied()))
            .collect()
    };
    let command = expand(&container.command);
    let args = expand(&container.args);

    let requirements = Requirements::of(container)?;
    let qos = qos::qos_class(pod)?;
    let oom = resources::oom_score_adj(pod, qos, &requirements, node.memory_capacity);

    let mut labels = id.labels();
    labels.insert(CONTAINER_NAME_LABEL.to_owned(), container.name.clone());

    Ok(ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: container.name.clone(),
            attempt: restart_count,
        }),
        image: Some(ImageSpec {
            image: image.to_owned(),
            user_specified_image: container.image.clone().unwrap_or_default(),
            ..ImageSpec::default()
        }),
        command,
        args,
        working_dir: container.working_dir.clone().unwrap_or_default(),
        envs: env
            .into_iter()
            .map(|(key, value)| KeyValue {
                key,
                value: value.into_bytes(),
            })
            .collect(),
        labels,
        annotations: annotations(pod, spec, container, restart_count),
        log_path: format!("{}/{restart_count}.log", container.name),
        stdin: container.stdin.unwrap_or(false),
        stdin_once: container.stdin_once.unwrap_or(false),
        tty: container.tty.unwrap_or(false),
        linux: Some(LinuxContainerConfig {
            resources: Some(resources::linux_resources(&requirements, oom)),
            security_context: Some(security_context(spec, container, node)),
        }),
        ..ContainerConfig::default()
    })
}

/// The directory of the pod's logs, which `log_path` is relative to.
pub fn log_directory(ctx: &PodContext<'_>, node: &NodeContext) -> Result<String, ContainerError> {
    Ok(sandbox::pod_log_dir(node, &Identity::of(ctx.pod)?))
}

fn annotations(
    pod: &api::Pod,
    spec: &PodSpec,
    container: &Container,
    restart_count: u32,
) -> HashMap<String, String> {
    let mut a = HashMap::new();
    let mut put = |k: &str, v: String| {
        a.insert(k.to_owned(), v);
    };
    put(CONTAINER_HASH_ANNOTATION, container_hash(container));
    put(RESTART_COUNT_ANNOTATION, restart_count.to_string());
    put(
        TERMINATION_MESSAGE_PATH_ANNOTATION,
        container
            .termination_message_path
            .clone()
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| "/dev/termination-log".to_owned()),
    );
    put(
        TERMINATION_MESSAGE_POLICY_ANNOTATION,
        container
            .termination_message_policy
            .clone()
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| "File".to_owned()),
    );
    if let Some(seconds) = pod.metadata.deletion_grace_period_seconds {
        put(DELETION_GRACE_PERIOD_ANNOTATION, seconds.to_string());
    }
    put(
        TERMINATION_GRACE_PERIOD_ANNOTATION,
        spec.termination_grace_period_seconds
            .unwrap_or(30)
            .to_string(),
    );
    if let Some(pre_stop) = container
        .lifecycle
        .as_ref()
        .and_then(|l| l.pre_stop.as_ref())
    {
        put(
            PRE_STOP_ANNOTATION,
            serde_json::to_string(pre_stop).unwrap_or_default(),
        );
    }
    if let Some(ports) = container.ports.as_ref().filter(|p| !p.is_empty()) {
        let ports: Vec<api::ContainerPort> = ports
            .iter()
            .map(|p| api::ContainerPort {
                protocol: Some(p.protocol.clone().unwrap_or_else(|| "TCP".to_owned())),
                ..p.clone()
            })
            .collect();
        put(
            CONTAINER_PORTS_ANNOTATION,
            serde_json::to_string(&ports).unwrap_or_default(),
        );
    }
    a
}

/// The container's security context: its own settings over the pod's, as
/// upstream's `determineEffectiveSecurityContext`.
fn security_context(
    spec: &PodSpec,
    container: &Container,
    node: &NodeContext,
) -> LinuxContainerSecurityContext {
    let pod_sc = spec.security_context.as_ref();
    let own = container.security_context.as_ref();
    let run_as_user = own
        .and_then(|s| s.run_as_user)
        .or_else(|| pod_sc.and_then(|s| s.run_as_user));
    let run_as_group = own
        .and_then(|s| s.run_as_group)
        .or_else(|| pod_sc.and_then(|s| s.run_as_group));
    let mut supplemental_groups: Vec<i64> = pod_sc.and_then(|s| s.fs_group).into_iter().collect();
    supplemental_groups.extend(
        pod_sc
            .iter()
            .flat_map(|s| s.supplemental_groups.iter().flatten()),
    );
    let seccomp = own
        .and_then(|s| s.seccomp_profile.as_ref())
        .or_else(|| pod_sc.and_then(|s| s.seccomp_profile.as_ref()));
    let unmasked = own.and_then(|s| s.proc_mount.as_deref()) == Some("Unmasked");
    let paths = |defaults: &[&str]| {
        if unmasked {
            Vec::new()
        } else {
            defaults.iter().map(|p| (*p).to_owned()).collect()
        }
    };
    let capabilities = own
        .and_then(|s| s.capabilities.as_ref())
        .map(|c| Capability {
            add_capabilities: c.add.clone().unwrap_or_default(),
            drop_capabilities: c.drop.clone().unwrap_or_default(),
            add_ambient_capabilities: Vec::new(),
        });
    LinuxContainerSecurityContext {
        capabilities,
        privileged: own.and_then(|s| s.privileged).unwrap_or(false),
        namespace_options: Some(namespace_options(spec)),
        run_as_user: run_as_user.map(|value| Int64Value { value }),
        run_as_group: run_as_group.map(|value| Int64Value { value }),
        readonly_rootfs: own
            .and_then(|s| s.read_only_root_filesystem)
            .unwrap_or(false),
        supplemental_groups,
        // Only an explicit `allowPrivilegeEscalation: false` sets it.
        no_new_privs: own.and_then(|s| s.allow_privilege_escalation) == Some(false),
        masked_paths: paths(DEFAULT_MASKED_PATHS),
        readonly_paths: paths(DEFAULT_READONLY_PATHS),
        seccomp: Some(seccomp_profile(seccomp, node)),
        ..LinuxContainerSecurityContext::default()
    }
}

/// The container's seccomp profile; without one, the runtime's default if the
/// node is configured so (`seccompDefault`), else unconfined, as upstream.
fn seccomp_profile(profile: Option<&api::SeccompProfile>, node: &NodeContext) -> SecurityProfile {
    let (profile_type, localhost_ref) = match profile {
        None if node.seccomp_default => (ProfileType::RuntimeDefault, String::new()),
        None => (ProfileType::Unconfined, String::new()),
        Some(p) => match p.type_.as_str() {
            "RuntimeDefault" => (ProfileType::RuntimeDefault, String::new()),
            "Localhost" => (
                ProfileType::Localhost,
                node.seccomp_profile_root
                    .join(p.localhost_profile.as_deref().unwrap_or_default())
                    .to_string_lossy()
                    .into_owned(),
            ),
            _ => (ProfileType::Unconfined, String::new()),
        },
    };
    SecurityProfile {
        profile_type: profile_type.into(),
        localhost_ref,
    }
}
