//! A container's requests and limits as numbers, and what the runtime gets
//! from them: cgroup CPU shares and quota, the memory limit and the OOM score
//! adjustment, as upstream's `kuberuntime` and `qos` packages compute them.
//!
//! The burstable OOM floor is `1000 + GUARANTEED_OOM_SCORE_ADJ` = 3, as in
//! upstream's code; its documentation still says 2, from when guaranteed
//! containers had -998. Not done here: the CPU CFS period is always 100 ms
//! (upstream's `cpuCFSQuotaPeriod` and disabling `cpuCFSQuota` are not
//! offered), and sidecar (restartable init) containers get no special score.

use std::collections::BTreeMap;

use berth_proto::v1::LinuxContainerResources;
use k8s_openapi::api::core::v1::{Container, Pod};
use thiserror::Error;

use super::qos::QosClass;
use super::quantity::{Quantity, QuantityError};

/// Errors of this module.
#[derive(Debug, Error)]
pub enum ResourcesError {
    /// A request or limit that is not a quantity.
    #[error("container {container:?}: resources.{list}[{resource}]: {source}")]
    Quantity {
        /// The container's name.
        container: String,
        /// `requests` or `limits`.
        list: &'static str,
        /// The resource's name.
        resource: String,
        /// What is wrong with the value.
        source: QuantityError,
    },
}

/// `cpu`: cores.
pub const CPU: &str = "cpu";
/// `memory`: bytes.
pub const MEMORY: &str = "memory";
/// `ephemeral-storage`: bytes.
pub const EPHEMERAL_STORAGE: &str = "ephemeral-storage";

/// The CFS period upstream uses unless `cpuCFSQuotaPeriod` is configured, in µs.
pub const CPU_PERIOD_US: i64 = 100_000;
/// The kernel's smallest CFS quota, in µs.
pub const MIN_CPU_QUOTA_US: i64 = 1_000;
/// The kernel's smallest `cpu.shares`.
pub const MIN_CPU_SHARES: i64 = 2;
/// The kernel's largest `cpu.shares`.
pub const MAX_CPU_SHARES: i64 = 262_144;

/// OOM score adjustment of guaranteed containers and node-critical pods.
pub const GUARANTEED_OOM_SCORE_ADJ: i64 = -997;
/// OOM score adjustment of best-effort containers: killed first.
pub const BEST_EFFORT_OOM_SCORE_ADJ: i64 = 1000;

/// A container's requests and limits, parsed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Requirements {
    /// Requests; a resource with a limit and no request requests its limit,
    /// as API defaulting sets it (manifest pods are not defaulted).
    pub requests: BTreeMap<String, Quantity>,
    /// Limits.
    pub limits: BTreeMap<String, Quantity>,
}

impl Requirements {
    /// Parses `container`'s `resources`.
    pub fn of(container: &Container) -> Result<Self, ResourcesError> {
        let resources = container.resources.as_ref();
        let parse = |list: &'static str, map: Option<&BTreeMap<String, _>>| {
            map.into_iter()
                .flatten()
                .map(
                    |(name, q): (
                        &String,
                        &k8s_openapi::apimachinery::pkg::api::resource::Quantity,
                    )| {
                        Quantity::parse(&q.0)
                            .map(|q| (name.clone(), q))
                            .map_err(|source| ResourcesError::Quantity {
                                container: container.name.clone(),
                                list,
                                resource: name.clone(),
                                source,
                            })
                    },
                )
                .collect::<Result<BTreeMap<_, _>, _>>()
        };
        let limits = parse("limits", resources.and_then(|r| r.limits.as_ref()))?;
        let mut requests = parse("requests", resources.and_then(|r| r.requests.as_ref()))?;
        for (name, limit) in &limits {
            requests.entry(name.clone()).or_insert(*limit);
        }
        Ok(Self { requests, limits })
    }

    /// The request for `resource`, zero when there is none.
    pub fn request(&self, resource: &str) -> Quantity {
        self.requests.get(resource).copied().unwrap_or_default()
    }

    /// The limit on `resource`, zero when there is none.
    pub fn limit(&self, resource: &str) -> Quantity {
        self.limits.get(resource).copied().unwrap_or_default()
    }
}

/// `cpu.shares` for a CPU request: 1024 per core, at least the kernel's minimum
/// (so no request still gets the minimum, not the default of 1024).
pub fn milli_cpu_to_shares(milli_cpu: i64) -> i64 {
    (milli_cpu.saturating_mul(1024) / 1000).clamp(MIN_CPU_SHARES, MAX_CPU_SHARES)
}

/// The CFS quota for a CPU limit over `period` µs; 0 (no quota) without a limit.
pub fn milli_cpu_to_quota(milli_cpu: i64, period: i64) -> i64 {
    if milli_cpu == 0 {
        return 0;
    }
    (milli_cpu.saturating_mul(period) / 1000).max(MIN_CPU_QUOTA_US)
}

/// The Linux resources of a container with `requirements`.
///
/// Shares come from the CPU request (its limit when only that is set), quota
/// from the CPU limit with the period always set, as upstream with CFS quota
/// enforcement on. Swap, hugepages and `unified` (memory QoS) depend on the
/// node and are left to the caller.
pub fn linux_resources(requirements: &Requirements, oom_score_adj: i64) -> LinuxContainerResources {
    let cpu_request = requirements.request(CPU);
    let cpu_limit = requirements.limit(CPU);
    let shares_from = if cpu_request.is_zero() && !cpu_limit.is_zero() {
        cpu_limit
    } else {
        cpu_request
    };
    LinuxContainerResources {
        cpu_period: CPU_PERIOD_US,
        cpu_quota: milli_cpu_to_quota(cpu_limit.milli_value(), CPU_PERIOD_US),
        cpu_shares: milli_cpu_to_shares(shares_from.milli_value()),
        memory_limit_in_bytes: requirements.limit(MEMORY).value().max(0),
        oom_score_adj,
        ..LinuxContainerResources::default()
    }
}

/// The OOM score adjustment of a container of `pod`, per upstream's policy:
/// node-critical pods and guaranteed containers are protected, best-effort
/// ones go first, burstable ones in between by the share of the node's memory
/// they request, always above guaranteed and below best-effort.
pub fn oom_score_adj(
    pod: &Pod,
    qos: QosClass,
    requirements: &Requirements,
    memory_capacity: i64,
) -> i64 {
    let node_critical = pod
        .spec
        .as_ref()
        .and_then(|s| s.priority_class_name.as_deref())
        == Some("system-node-critical");
    if node_critical {
        return GUARANTEED_OOM_SCORE_ADJ;
    }
    match qos {
        QosClass::Guaranteed => GUARANTEED_OOM_SCORE_ADJ,
        QosClass::BestEffort => BEST_EFFORT_OOM_SCORE_ADJ,
        QosClass::Burstable => {
            let request = i128::from(requirements.request(MEMORY).value());
            let capacity = i128::from(memory_capacity.max(1));
            let adj = 1000 - (1000 * request) / capacity;
            let floor = i128::from(1000 + GUARANTEED_OOM_SCORE_ADJ);
            let adj = if adj < floor {
                floor
            } else if adj == i128::from(BEST_EFFORT_OOM_SCORE_ADJ) {
                adj - 1
            } else {
                adj
            };
            // Between floor and 999 by now.
            i64::try_from(adj).unwrap_or(BEST_EFFORT_OOM_SCORE_ADJ - 1)
        }
    }
}
