//! Pod cgroups per QoS class, as upstream's QoS and pod container managers
//! lay them out (`cgroupsPerQOS`): `<root>/kubepods` for all pods,
//! `kubepods/burstable` and `kubepods/besteffort` below it, and a
//! `pod<uid>` cgroup per pod (guaranteed pods directly in `kubepods`) with
//! the pod's summed requests and limits; the runtime creates the
//! containers' cgroups inside. Made before the pod's sandbox, removed after
//! it.
//!
//! cgroupfs driver only: with the systemd driver systemd owns the slices.
//! cgroup v1 (a hierarchy per controller) and v2 (one unified hierarchy).
//! File access goes through [`CgroupFs`] so that the layout and values are
//! tested without root.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::Pod;
use thiserror::Error;

use crate::cri_config::quantity::Quantity;
use crate::cri_config::resources::{
    CPU, MEMORY, Requirements, ResourcesError, milli_cpu_to_quota, milli_cpu_to_shares,
};
use crate::cri_config::{QosClass, qos_class};

/// CFS period for pod quotas, as upstream.
const CPU_PERIOD: i64 = 100_000;
/// The CPU shares of the besteffort class and of a besteffort pod.
const MIN_SHARES: i64 = 2;

#[derive(Debug, Error)]
pub enum PodCgroupError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("pod {pod}: {source}")]
    Resources { pod: String, source: ResourcesError },
    #[error("no cgroup hierarchy found for the {0} controller")]
    NoController(&'static str),
}

/// A pod's or class's cgroup settings, in cgroup v1 units.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    pub cpu_shares: Option<i64>,
    /// With [`CPU_PERIOD`].
    pub cpu_quota: Option<i64>,
    /// Bytes.
    pub memory: Option<i64>,
}

/// What a pod asks of its cgroup: the sum of its containers' requests
/// (an init container's, when larger, as it runs alone), and limits only
/// when every container has one, as upstream's `ResourceConfigForPod`.
pub fn pod_limits(pod: &Pod) -> Result<(QosClass, Limits), ResourcesError> {
    let qos = qos_class(pod)?;
    let spec = pod.spec.clone().unwrap_or_default();
    let mut cpu_req = Quantity::default();
    let mut cpu_lim = Quantity::default();
    let mut mem_lim = Quantity::default();
    let (mut all_cpu_limited, mut all_mem_limited) = (true, true);
    for c in &spec.containers {
        let r = Requirements::of(c)?;
        cpu_req = cpu_req + r.request(CPU);
        let (cl, ml) = (r.limit(CPU), r.limit(MEMORY));
        all_cpu_limited &= cl.is_positive();
        all_mem_limited &= ml.is_positive();
        cpu_lim = cpu_lim + cl;
        mem_lim = mem_lim + ml;
    }
    for c in spec.init_containers.iter().flatten() {
        let r = Requirements::of(c)?;
        if r.request(CPU).milli_value() > cpu_req.milli_value() {
            cpu_req = r.request(CPU);
        }
    }
    let limits = match qos {
        QosClass::BestEffort => Limits {
            cpu_shares: Some(MIN_SHARES),
            ..Limits::default()
        },
        _ => Limits {
            cpu_shares: Some(milli_cpu_to_shares(cpu_req.milli_value())),
            cpu_quota: all_cpu_limited
                .then(|| milli_cpu_to_quota(cpu_lim.milli_value(), CPU_PERIOD)),
            memory: all_mem_limited.then(|| mem_lim.value()),
        },
    };
    Ok((qos, limits))
}

/// The few file operations pod cgroups need; the real one is [`HostCgroups`].
pub trait CgroupFs: Send + Sync + std::fmt::Debug {
    /// Creates the cgroup `path` (relative, e.g. `berth/kubepods/pod1`) and
    /// its parents in every hierarchy the settings need.
    fn create(&self, path: &Path) -> Result<(), PodCgroupError>;
    /// Applies `limits` to the cgroup `path`.
    fn apply(&self, path: &Path, limits: &Limits) -> Result<(), PodCgroupError>;
    /// Removes the cgroup `path` (empty of processes and children).
    fn remove(&self, path: &Path) -> Result<(), PodCgroupError>;
}

/// The node's pod cgroups.
#[derive(Clone, Debug)]
pub struct PodCgroups {
    fs: Arc<dyn CgroupFs>,
    /// The cgroup root (`cgroupRoot`) as a relative path: `berth`.
    root: PathBuf,
    /// Burstable pods' CPU requests, by UID: the burstable class's shares.
    burstable: Arc<Mutex<BTreeMap<String, i64>>>,
}

impl PodCgroups {
    pub fn new(fs: Arc<dyn CgroupFs>, cgroup_root: &str) -> Self {
        Self {
            fs,
            root: PathBuf::from(cgroup_root.trim_matches('/')),
            burstable: Arc::default(),
        }
    }

    fn kubepods(&self) -> PathBuf {
        self.root.join("kubepods")
    }

    /// The pod cgroup of `uid` in class `qos`, relative to the hierarchy.
    pub fn pod_path(&self, qos: QosClass, uid: &str) -> PathBuf {
        let class = match qos {
            QosClass::Guaranteed => self.kubepods(),
            QosClass::Burstable => self.kubepods().join("burstable"),
            QosClass::BestEffort => self.kubepods().join("besteffort"),
        };
        class.join(format!("pod{uid}"))
    }

    /// Creates `kubepods` and the class cgroups.
    pub fn ensure_classes(&self) -> Result<(), PodCgroupError> {
        self.fs.create(&self.kubepods().join("burstable"))?;
        self.fs.create(&self.kubepods().join("besteffort"))?;
        self.fs.apply(
            &self.kubepods().join("besteffort"),
            &Limits {
                cpu_shares: Some(MIN_SHARES),
                ..Limits::default()
            },
        )?;
        self.update_burstable()
    }

    fn update_burstable(&self) -> Result<(), PodCgroupError> {
        let sum: i64 = self
            .burstable
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .sum();
        self.fs.apply(
            &self.kubepods().join("burstable"),
            &Limits {
                cpu_shares: Some(milli_cpu_to_shares(sum)),
                ..Limits::default()
            },
        )
    }

    /// Creates the cgroup of `pod` with its limits.
    pub fn ensure_pod(&self, pod: &Pod) -> Result<(), PodCgroupError> {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let (qos, limits) = pod_limits(pod).map_err(|source| PodCgroupError::Resources {
            pod: pod.metadata.name.clone().unwrap_or_default(),
            source,
        })?;
        let path = self.pod_path(qos, &uid);
        self.fs.create(&path)?;
        self.fs.apply(&path, &limits)?;
        if qos == QosClass::Burstable {
            let cpu: i64 = pod
                .spec
                .iter()
                .flat_map(|s| s.containers.iter())
                .filter_map(|c| Requirements::of(c).ok())
                .map(|r| r.request(CPU).milli_value())
                .sum();
            self.burstable
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(uid, cpu);
            self.update_burstable()?;
        }
        Ok(())
    }

    /// Removes the cgroup of the pod `uid`, whatever its class was.
    pub fn remove_pod(&self, uid: &str) -> Result<(), PodCgroupError> {
        for qos in [
            QosClass::Guaranteed,
            QosClass::Burstable,
            QosClass::BestEffort,
        ] {
            self.fs.remove(&self.pod_path(qos, uid))?;
        }
        let was_burstable = self
            .burstable
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(uid)
            .is_some();
        if was_burstable {
            self.update_burstable()?;
        }
        Ok(())
    }
}

/// The cgroup hierarchies of this machine, found in `/proc/self/mountinfo`.
#[derive(Clone, Debug)]
pub struct HostCgroups {
    /// v1: the mount point of each controller the settings use.
    v1: BTreeMap<&'static str, PathBuf>,
    /// v2: the unified hierarchy's mount, when it has the controllers.
    v2: Option<PathBuf>,
}

/// The v1 controllers pod cgroups are made in; the runtime makes the
/// containers' cgroups in the others itself.
const V1_CONTROLLERS: [&str; 3] = ["cpu", "memory", "pids"];

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> PodCgroupError {
    let path = path.to_owned();
    move |source| PodCgroupError::Io { op, path, source }
}

impl HostCgroups {
    /// The hierarchies mounted here: v1 controllers when mounted (hybrid
    /// machines), else the unified hierarchy.
    pub fn discover() -> Result<Self, PodCgroupError> {
        let info = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(io_err("reading", Path::new("/proc/self/mountinfo")))?;
        Ok(Self::from_mountinfo(&info))
    }

    fn from_mountinfo(info: &str) -> Self {
        let mut v1 = BTreeMap::new();
        let mut v2 = None;
        for line in info.lines() {
            let Some((pre, post)) = line.split_once(" - ") else {
                continue;
            };
            let mount_point = pre.split(' ').nth(4).map(PathBuf::from);
            let mut post = post.split(' ');
            let (fstype, options) = (post.next(), post.nth(1).unwrap_or(""));
            match (fstype, mount_point) {
                (Some("cgroup"), Some(mp)) => {
                    for c in V1_CONTROLLERS {
                        if options.split(',').any(|o| o == c) {
                            v1.entry(c).or_insert_with(|| mp.clone());
                        }
                    }
                }
                (Some("cgroup2"), Some(mp)) if v2.is_none() => v2 = Some(mp),
                _ => {}
            }
        }
        // A v2 mount next to v1 controllers (hybrid) holds none of them.
        let v2 = if v1.is_empty() { v2 } else { None };
        Self { v1, v2 }
    }

    fn dirs(&self, path: &Path) -> Vec<(Option<&'static str>, PathBuf)> {
        match &self.v2 {
            Some(root) => vec![(None, root.join(path))],
            None => self
                .v1
                .iter()
                .map(|(c, mp)| (Some(*c), mp.join(path)))
                .collect(),
        }
    }

    fn write(dir: &Path, file: &str, value: &str) -> Result<(), PodCgroupError> {
        let path = dir.join(file);
        std::fs::write(&path, value).map_err(io_err("writing", &path))
    }
}

/// cgroup v2's `cpu.weight` for v1 shares, as the OCI runtimes convert.
fn shares_to_weight(shares: i64) -> i64 {
    if shares <= 0 {
        return 100;
    }
    1 + ((shares.clamp(2, 262_144) - 2) * 9999) / 262_142
}

impl CgroupFs for HostCgroups {
    fn create(&self, path: &Path) -> Result<(), PodCgroupError> {
        if self.v1.is_empty() && self.v2.is_none() {
            return Err(PodCgroupError::NoController("cpu"));
        }
        for (_, dir) in self.dirs(path) {
            std::fs::create_dir_all(&dir).map_err(io_err("creating", &dir))?;
        }
        if let Some(root) = &self.v2 {
            // Each level hands the controllers down to the next.
            let mut dir = root.clone();
            for part in path.iter() {
                Self::write(&dir, "cgroup.subtree_control", "+cpu +memory +pids")?;
                dir.push(part);
            }
        }
        Ok(())
    }

    fn apply(&self, path: &Path, limits: &Limits) -> Result<(), PodCgroupError> {
        for (controller, dir) in self.dirs(path) {
            match controller {
                Some("cpu") => {
                    if let Some(s) = limits.cpu_shares {
                        Self::write(&dir, "cpu.shares", &s.to_string())?;
                    }
                    Self::write(&dir, "cpu.cfs_period_us", &CPU_PERIOD.to_string())?;
                    let quota = limits.cpu_quota.unwrap_or(-1);
                    Self::write(&dir, "cpu.cfs_quota_us", &quota.to_string())?;
                }
                Some("memory") => {
                    let limit = limits.memory.unwrap_or(-1);
                    Self::write(&dir, "memory.limit_in_bytes", &limit.to_string())?;
                }
                Some(_) => {}
                None => {
                    if let Some(s) = limits.cpu_shares {
                        Self::write(&dir, "cpu.weight", &shares_to_weight(s).to_string())?;
                    }
                    let max = limits
                        .cpu_quota
                        .map_or_else(|| "max".to_owned(), |q| q.to_string());
                    Self::write(&dir, "cpu.max", &format!("{max} {CPU_PERIOD}"))?;
                    let mem = limits
                        .memory
                        .map_or_else(|| "max".to_owned(), |m| m.to_string());
                    Self::write(&dir, "memory.max", &mem)?;
                }
            }
        }
        Ok(())
    }

    fn remove(&self, path: &Path) -> Result<(), PodCgroupError> {
        for (_, dir) in self.dirs(path) {
            match std::fs::remove_dir(&dir) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(io_err("removing", &dir)(e));
                }
                _ => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(yaml: &str) -> Pod {
        serde_saphyr::from_str(yaml).unwrap()
    }

    #[test]
    fn limits_sum_requests_and_limit_only_when_every_container_does() {
        let guaranteed = pod("
metadata: {name: g, uid: u1}
spec:
  containers:
  - {name: a, image: x, resources: {limits: {cpu: 500m, memory: 64Mi}}}
  - {name: b, image: x, resources: {limits: {cpu: 250m, memory: 64Mi}}}
");
        let (qos, l) = pod_limits(&guaranteed).unwrap();
        assert_eq!(qos, QosClass::Guaranteed);
        assert_eq!(l.cpu_shares, Some(768));
        assert_eq!(l.cpu_quota, Some(75_000));
        assert_eq!(l.memory, Some(128 << 20));

        let burstable = pod("
metadata: {name: b, uid: u2}
spec:
  initContainers:
  - {name: i, image: x, resources: {requests: {cpu: '2'}}}
  containers:
  - {name: a, image: x, resources: {requests: {cpu: 100m}, limits: {memory: 32Mi}}}
  - {name: b, image: x}
");
        let (qos, l) = pod_limits(&burstable).unwrap();
        assert_eq!(qos, QosClass::Burstable);
        // The init container asks more than the regular ones together.
        assert_eq!(l.cpu_shares, Some(2048));
        assert_eq!((l.cpu_quota, l.memory), (None, None));

        let best = pod("metadata: {name: e, uid: u3}\nspec: {containers: [{name: a, image: x}]}");
        assert_eq!(
            pod_limits(&best).unwrap(),
            (
                QosClass::BestEffort,
                Limits {
                    cpu_shares: Some(2),
                    ..Limits::default()
                }
            )
        );
    }

    /// Records what the manager asks of the file system.
    #[derive(Debug, Default)]
    struct Recorder(Mutex<Vec<String>>);

    impl CgroupFs for Recorder {
        fn create(&self, path: &Path) -> Result<(), PodCgroupError> {
            self.0
                .lock()
                .unwrap()
                .push(format!("create {}", path.display()));
            Ok(())
        }
        fn apply(&self, path: &Path, l: &Limits) -> Result<(), PodCgroupError> {
            self.0.lock().unwrap().push(format!(
                "apply {} {:?} {:?} {:?}",
                path.display(),
                l.cpu_shares,
                l.cpu_quota,
                l.memory
            ));
            Ok(())
        }
        fn remove(&self, path: &Path) -> Result<(), PodCgroupError> {
            self.0
                .lock()
                .unwrap()
                .push(format!("remove {}", path.display()));
            Ok(())
        }
    }

    #[test]
    fn pods_go_under_their_class_and_burstable_shares_follow_its_pods() {
        let rec = Arc::new(Recorder::default());
        let cgroups = PodCgroups::new(rec.clone(), "/berth");
        cgroups.ensure_classes().unwrap();
        let burstable = pod("
metadata: {name: b, uid: u2}
spec:
  containers:
  - {name: a, image: x, resources: {requests: {cpu: 300m}}}
");
        cgroups.ensure_pod(&burstable).unwrap();
        cgroups.remove_pod("u2").unwrap();
        let log = rec.0.lock().unwrap().clone();
        assert_eq!(
            log,
            [
                "create berth/kubepods/burstable",
                "create berth/kubepods/besteffort",
                "apply berth/kubepods/besteffort Some(2) None None",
                "apply berth/kubepods/burstable Some(2) None None",
                "create berth/kubepods/burstable/podu2",
                "apply berth/kubepods/burstable/podu2 Some(307) None None",
                "apply berth/kubepods/burstable Some(307) None None",
                "remove berth/kubepods/podu2",
                "remove berth/kubepods/burstable/podu2",
                "remove berth/kubepods/besteffort/podu2",
                "apply berth/kubepods/burstable Some(2) None None",
            ]
        );
    }

    #[test]
    fn hierarchies_come_from_mountinfo() {
        let hybrid = "\
30 1 0:26 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw
31 1 0:27 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
32 1 0:28 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
33 1 0:29 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids
34 1 0:30 / /sys/fs/cgroup/cpuset rw - cgroup cgroup rw,cpuset
";
        let h = HostCgroups::from_mountinfo(hybrid);
        assert_eq!(h.v2, None);
        assert_eq!(
            h.v1.get("cpu").unwrap(),
            Path::new("/sys/fs/cgroup/cpu,cpuacct")
        );
        assert_eq!(h.v1.len(), 3);
        let pure = "30 1 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        let h = HostCgroups::from_mountinfo(pure);
        assert_eq!(h.v2.as_deref(), Some(Path::new("/sys/fs/cgroup")));
        assert_eq!(
            h.dirs(Path::new("berth/kubepods")),
            [(None, PathBuf::from("/sys/fs/cgroup/berth/kubepods"))]
        );
    }

    #[test]
    fn shares_map_to_weights_as_the_runtimes_do() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(262_144), 10_000);
    }
}
