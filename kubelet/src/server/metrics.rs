//! `/metrics` and `/metrics/cadvisor` in the Prometheus text format, with
//! upstream's metric names.
//!
//! The kubelet's own metrics live in [`KubeletMetrics`]: counters fed as
//! things happen (every CRI call, through [`OperationObserver`]) and gauges
//! set from the runtime at each scrape. The cAdvisor ones are the
//! containers' CRI stats at the time of the scrape.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::cri_client::OperationObserver;
use crate::server::stats::ContainerSample;

/// What a metric set could not be written as text.
#[derive(Debug, thiserror::Error)]
#[error("encoding the metrics as text: {0}")]
pub struct MetricsError(#[from] std::fmt::Error);

type Labels = Vec<(&'static str, String)>;

/// Upstream's `DefBuckets`, the runtime operations' histogram buckets.
const DEFAULT_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

fn duration_histogram() -> Histogram {
    Histogram::new(DEFAULT_BUCKETS)
}

/// The kubelet's metrics. Cheap to clone; clones share the counters.
#[derive(Clone)]
pub struct KubeletMetrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    running_pods: Gauge,
    running_containers: Family<Labels, Gauge>,
    started_pods: Counter,
    started_pods_errors: Counter,
    started_containers: Family<Labels, Counter>,
    started_containers_errors: Family<Labels, Counter>,
    operations: Family<Labels, Counter>,
    operation_errors: Family<Labels, Counter>,
    operation_seconds: Family<Labels, Histogram, fn() -> Histogram>,
    process: ProcessMetrics,
}

struct ProcessMetrics {
    cpu_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    resident_bytes: Gauge,
    virtual_bytes: Gauge,
    open_fds: Gauge,
    start_time: Gauge<f64, std::sync::atomic::AtomicU64>,
}

impl std::fmt::Debug for KubeletMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeletMetrics").finish_non_exhaustive()
    }
}

impl Default for KubeletMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// `RunPodSandbox` → `run_podsandbox`, upstream's operation_type values.
pub fn operation_type(rpc: &str) -> String {
    let mut out = String::with_capacity(rpc.len() + 4);
    for (i, c) in rpc.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out.replace("pod_sandbox", "podsandbox")
}

impl KubeletMetrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let running_pods = Gauge::default();
        registry.register(
            "kubelet_running_pods",
            "Number of pods that have a running pod sandbox",
            running_pods.clone(),
        );
        let running_containers = Family::<Labels, Gauge>::default();
        registry.register(
            "kubelet_running_containers",
            "Number of containers currently running",
            running_containers.clone(),
        );
        let started_pods = Counter::default();
        registry.register(
            "kubelet_started_pods",
            "Cumulative number of pods started",
            started_pods.clone(),
        );
        let started_pods_errors = Counter::default();
        registry.register(
            "kubelet_started_pods_errors",
            "Cumulative number of errors when starting pods",
            started_pods_errors.clone(),
        );
        let started_containers = Family::<Labels, Counter>::default();
        registry.register(
            "kubelet_started_containers",
            "Cumulative number of containers started",
            started_containers.clone(),
        );
        let started_containers_errors = Family::<Labels, Counter>::default();
        registry.register(
            "kubelet_started_containers_errors",
            "Cumulative number of errors when starting containers",
            started_containers_errors.clone(),
        );
        let operations = Family::<Labels, Counter>::default();
        registry.register(
            "kubelet_runtime_operations",
            "Cumulative number of runtime operations by operation type.",
            operations.clone(),
        );
        let operation_errors = Family::<Labels, Counter>::default();
        registry.register(
            "kubelet_runtime_operations_errors",
            "Cumulative number of runtime operation errors by operation type.",
            operation_errors.clone(),
        );
        let operation_seconds =
            Family::<Labels, Histogram, fn() -> Histogram>::new_with_constructor(
                duration_histogram,
            );
        registry.register(
            "kubelet_runtime_operations_duration_seconds",
            "Duration in seconds of runtime operations. Broken down by operation type.",
            operation_seconds.clone(),
        );
        let process = ProcessMetrics {
            cpu_seconds: Gauge::default(),
            resident_bytes: Gauge::default(),
            virtual_bytes: Gauge::default(),
            open_fds: Gauge::default(),
            start_time: Gauge::default(),
        };
        registry.register(
            "process_cpu_seconds_total",
            "Total user and system CPU time spent in seconds.",
            process.cpu_seconds.clone(),
        );
        registry.register(
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            process.resident_bytes.clone(),
        );
        registry.register(
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes.",
            process.virtual_bytes.clone(),
        );
        registry.register(
            "process_open_fds",
            "Number of open file descriptors.",
            process.open_fds.clone(),
        );
        registry.register(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
            process.start_time.clone(),
        );
        KubeletMetrics {
            inner: Arc::new(Inner {
                registry,
                running_pods,
                running_containers,
                started_pods,
                started_pods_errors,
                started_containers,
                started_containers_errors,
                operations,
                operation_errors,
                operation_seconds,
                process,
            }),
        }
    }

    /// The text exposition, the gauges set from `running_pods` (pods with a
    /// ready sandbox) and `containers` (the runtime's containers).
    pub fn render(
        &self,
        running_pods: usize,
        containers: &[ContainerSample],
    ) -> Result<String, MetricsError> {
        let i = &self.inner;
        i.running_pods
            .set(i64::try_from(running_pods).unwrap_or(i64::MAX));
        i.running_containers.clear();
        for c in containers {
            i.running_containers
                .get_or_create(&vec![("container_state", c.state.to_owned())])
                .inc();
        }
        i.process.update();
        let mut out = String::new();
        encode(&mut out, &i.registry)?;
        Ok(out)
    }
}

impl OperationObserver for KubeletMetrics {
    fn observe(&self, rpc: &'static str, elapsed: Duration, ok: bool) {
        let i = &self.inner;
        let labels = vec![("operation_type", operation_type(rpc))];
        i.operations.get_or_create(&labels).inc();
        i.operation_seconds
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
        if !ok {
            i.operation_errors.get_or_create(&labels).inc();
        }
        // Upstream counts these in SyncPod; each start is one of these calls.
        match (rpc, ok) {
            ("RunPodSandbox", true) => {
                i.started_pods.inc();
            }
            ("RunPodSandbox", false) => {
                i.started_pods_errors.inc();
            }
            ("StartContainer", true) => {
                i.started_containers
                    .get_or_create(&vec![("container_type", "container".to_owned())])
                    .inc();
            }
            ("StartContainer", false) => {
                i.started_containers_errors
                    .get_or_create(&vec![("container_type", "container".to_owned())])
                    .inc();
            }
            _ => {}
        }
    }
}

impl ProcessMetrics {
    /// From `/proc/self`: what Prometheus' process collector reports.
    fn update(&self) {
        let ticks = clock_ticks();
        if let Ok(stat) = std::fs::read_to_string("/proc/self/stat")
            // The command name may hold spaces; the fields follow its ')'.
            && let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r)
        {
            let f: Vec<&str> = rest.split_whitespace().collect();
            // Fields 14, 15 (utime, stime), 22 (starttime), 23 (vsize), 24 (rss)
            // of proc(5), counted from the state field (3) here at index 0.
            let field = |n: usize| f.get(n - 3).and_then(|v| v.parse::<u64>().ok());
            if let (Some(u), Some(s)) = (field(14), field(15)) {
                self.cpu_seconds.set((u + s) as f64 / ticks);
            }
            if let Some(v) = field(23) {
                self.virtual_bytes.set(i64::try_from(v).unwrap_or(i64::MAX));
            }
            if let Some(pages) = field(24) {
                let bytes = pages.saturating_mul(page_size());
                self.resident_bytes
                    .set(i64::try_from(bytes).unwrap_or(i64::MAX));
            }
            if let (Some(start), Some(boot)) = (field(22), boot_time()) {
                self.start_time.set(boot + start as f64 / ticks);
            }
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            self.open_fds
                .set(i64::try_from(fds.count()).unwrap_or(i64::MAX));
        }
    }
}

fn clock_ticks() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map_or(100.0, |t| t as f64)
}

fn page_size() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .and_then(|p| u64::try_from(p).ok())
        .unwrap_or(4096)
}

/// The boot time, in seconds since the epoch (`btime` of `/proc/stat`).
fn boot_time() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("btime "))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// `/metrics/cadvisor`: the containers' CPU and memory as cAdvisor names
/// them, labelled as the kubelet's cAdvisor labels them.
pub fn render_cadvisor(containers: &[ContainerSample]) -> Result<String, MetricsError> {
    let mut registry = Registry::default();
    let cpu = Family::<Labels, Counter<f64, std::sync::atomic::AtomicU64>>::default();
    let working_set = Family::<Labels, Gauge>::default();
    let usage = Family::<Labels, Gauge>::default();
    let rss = Family::<Labels, Gauge>::default();
    registry.register(
        "container_cpu_usage_seconds",
        "Cumulative cpu time consumed in seconds.",
        cpu.clone(),
    );
    registry.register(
        "container_memory_working_set_bytes",
        "Current working set in bytes.",
        working_set.clone(),
    );
    registry.register(
        "container_memory_usage_bytes",
        "Current memory usage in bytes, including all memory regardless of when it was accessed",
        usage.clone(),
    );
    registry.register("container_memory_rss", "Size of RSS in bytes.", rss.clone());
    for c in containers {
        let labels: Labels = vec![
            ("container", c.name.clone()),
            ("id", format!("/{}", c.id)),
            ("image", c.image.clone()),
            ("name", c.id.clone()),
            ("namespace", c.pod_namespace.clone()),
            ("pod", c.pod_name.clone()),
        ];
        let gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        if let Some(ns) = c.cpu_core_nanos {
            cpu.get_or_create(&labels).inc_by(ns as f64 / 1e9);
        }
        if let Some(m) = &c.memory {
            if let Some(v) = m.working_set {
                working_set.get_or_create(&labels).set(gauge(v));
            }
            if let Some(v) = m.usage {
                usage.get_or_create(&labels).set(gauge(v));
            }
            if let Some(v) = m.rss {
                rss.get_or_create(&labels).set(gauge(v));
            }
        }
    }
    let mut out = String::new();
    encode(&mut out, &registry)?;
    Ok(out)
}
