//! A pod's QoS class and the cgroup its containers live under, as upstream's
//! `ComputePodQOS` and pod container manager lay them out.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;

use super::quantity::Quantity;
use super::resources::{CPU, MEMORY, Requirements, ResourcesError};

/// The QoS class of a pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QosClass {
    /// Every container limits CPU and memory, and requests what it limits.
    Guaranteed,
    /// Something is requested or limited, but not as for `Guaranteed`.
    Burstable,
    /// Nothing is requested or limited.
    BestEffort,
}

impl QosClass {
    /// The class as the API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Guaranteed => "Guaranteed",
            Self::Burstable => "Burstable",
            Self::BestEffort => "BestEffort",
        }
    }
}

/// How the node's cgroups are managed; the runtime must use the same.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum CgroupDriver {
    /// Paths in the cgroup file system.
    #[default]
    Cgroupfs,
    /// systemd slices.
    Systemd,
}

/// The QoS class of `pod`, from the CPU and memory of all its containers,
/// init containers included; other resources do not count.
pub fn qos_class(pod: &Pod) -> Result<QosClass, ResourcesError> {
    let spec = pod.spec.as_ref();
    let containers = spec.into_iter().flat_map(|s| {
        s.containers
            .iter()
            .chain(s.init_containers.iter().flatten())
    });
    let counted = |name: &str| name == CPU || name == MEMORY;
    let mut requests: BTreeMap<String, Quantity> = BTreeMap::new();
    let mut limits: BTreeMap<String, Quantity> = BTreeMap::new();
    let mut guaranteed = true;
    for container in containers {
        let r = Requirements::of(container)?;
        for (name, q) in r
            .requests
            .iter()
            .filter(|(n, q)| counted(n) && q.is_positive())
        {
            let sum = requests.entry(name.clone()).or_default();
            *sum = *sum + *q;
        }
        let mut limited = 0;
        for (name, q) in r
            .limits
            .iter()
            .filter(|(n, q)| counted(n) && q.is_positive())
        {
            limited += 1;
            let sum = limits.entry(name.clone()).or_default();
            *sum = *sum + *q;
        }
        if limited < 2 {
            guaranteed = false;
        }
    }
    if requests.is_empty() && limits.is_empty() {
        return Ok(QosClass::BestEffort);
    }
    if guaranteed && requests == limits {
        Ok(QosClass::Guaranteed)
    } else {
        Ok(QosClass::Burstable)
    }
}

/// The cgroup parent of a pod with `uid` and class `qos`: under `kubepods`,
/// in a class cgroup except for guaranteed pods.
///
/// For systemd this is the expanded slice path upstream passes, e.g.
/// `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid>.slice`,
/// with `-` in the UID written `_` because `-` nests slices.
pub fn cgroup_parent(qos: QosClass, uid: &str, driver: CgroupDriver) -> String {
    let mut parts = vec!["kubepods"];
    match qos {
        QosClass::Guaranteed => {}
        QosClass::Burstable => parts.push("burstable"),
        QosClass::BestEffort => parts.push("besteffort"),
    }
    let pod = format!("pod{uid}");
    match driver {
        CgroupDriver::Cgroupfs => {
            parts.push(&pod);
            format!("/{}", parts.join("/"))
        }
        CgroupDriver::Systemd => {
            let pod = pod.replace('-', "_");
            parts.push(&pod);
            let mut path = String::new();
            for depth in 1..=parts.len() {
                path.push('/');
                path.push_str(&parts[..depth].join("-"));
                path.push_str(".slice");
            }
            path
        }
    }
}

/// `parent` below the node's cgroup root `root` (`/` or empty: the
/// hierarchy's root); a path for cgroupfs, where upstream's `--cgroup-root`
/// is a path too.
pub fn under_root(root: &str, parent: String) -> String {
    let root = root.trim_end_matches('/');
    if root.is_empty() {
        parent
    } else {
        format!("{root}{parent}")
    }
}
