//! Benchmark: `berth node` running static pods, on `berth runtime` and on
//! Debian's containerd 1.6 (CRI plugin, runc) in one run.
//!
//! cargo build --release -p berth -p berth-integration && \
//! target/release/bench_node [--pods 100,250] [--idle-seconds 30] [--berth PATH]
//!     [--berth-only] [--show-processes] [--node-logs DIR]
//!
//! Per configuration a runtime runs in a "node" network namespace of its
//! own (pods use the host network, which is that namespace), pulls busybox
//! from a local registry, and `berth node` runs against it. For each size
//! N, N manifests (busybox `sleep 3600`) are written into the manifest
//! directory at once; the figures are the time until all N containers run
//! and each pod's start latency (its container's `started_at`, as the CRI
//! reports it, minus the time its manifest was written), the memory of the
//! node agent, the runtime daemon and the per-pod processes (berth's
//! monitors; containerd's shims and pause), and, at the first size, the
//! node agent's CPU use while nothing changes. Then the manifests go and
//! the node removes the pods. See bench/README.md.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use berth_integration::bench::{self, BUSYBOX, PAUSE, berth_path, loadavg, percentile, rollup};
use berth_integration::containerd_cri::{ContainerdCri, conflist, tail};
use berth_integration::cri::{CriDaemon, Options};
use berth_integration::exec::{Spawned, spawn_daemon};
use berth_integration::forward::Forwarder;
use berth_integration::netns::NetNs;
use berth_integration::proc;
use berth_integration::runtime::which;
use berth_integration::workdir::tempdir;
use berth_kubelet::cri_client::CriClient;
use berth_proto::v1;

/// The container's command; its processes are the workload, not the
/// runtime's cost, and are left out of the memory figures by this cmdline.
const WORKLOAD: [&str; 2] = ["sleep", "3600"];
const NODE_NAME: &str = "bench";
const MIB: f64 = 1024.0;
/// How often the runtime is asked how many containers run: often enough
/// for the time to all running, rarely enough not to load the runtime.
const POLL: Duration = Duration::from_millis(250);

struct Args {
    pods: Vec<usize>,
    idle: Duration,
    berth: PathBuf,
    show_processes: bool,
    berth_only: bool,
    /// Where berth node's logs are kept (with `--debug`); None: not kept.
    node_logs: Option<PathBuf>,
}

fn parse_args() -> Result<Args> {
    let mut pods = vec![100, 250];
    let mut idle = 30;
    let mut berth = None;
    let mut show_processes = false;
    let mut berth_only = false;
    let mut node_logs = None;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--pods" => {
                let list = it.next().context("--pods N[,N...]")?;
                pods = list
                    .split(',')
                    .map(|n| {
                        n.trim()
                            .parse::<usize>()
                            .with_context(|| format!("--pods {list}: {n:?} is not a count"))
                    })
                    .collect::<Result<_>>()?;
            }
            "--idle-seconds" => {
                idle = it.next().context("--idle-seconds S")?.parse()?;
            }
            "--berth" => berth = Some(PathBuf::from(it.next().context("--berth PATH")?)),
            "--show-processes" => show_processes = true,
            "--berth-only" => berth_only = true,
            "--node-logs" => {
                node_logs = Some(PathBuf::from(it.next().context("--node-logs DIR")?));
            }
            _ => bail!(
                "usage: bench_node [--pods N[,N...]] [--idle-seconds S] [--berth PATH] \
                 [--show-processes] [--berth-only] [--node-logs DIR]"
            ),
        }
    }
    ensure!(
        !pods.is_empty() && pods.iter().all(|&n| n >= 1),
        "--pods: counts of at least 1"
    );
    ensure!(idle >= 1, "--idle-seconds must be at least 1");
    let berth = berth_path(berth)?;
    if let Some(d) = &node_logs {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    Ok(Args {
        pods,
        idle: Duration::from_secs(idle),
        berth,
        show_processes,
        berth_only,
        node_logs,
    })
}

fn manifest(name: &str, image: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
spec:
  hostNetwork: true
  terminationGracePeriodSeconds: 1
  containers:
  - name: sleep
    image: {image}
    imagePullPolicy: IfNotPresent
    command: ["{}", "{}"]
"#,
        WORKLOAD[0], WORKLOAD[1]
    )
}

/// The runtime a configuration runs on.
enum Runtime {
    Berth(CriDaemon),
    Containerd(ContainerdCri),
}

impl Runtime {
    fn name(&self) -> &'static str {
        match self {
            Runtime::Berth(_) => "berth",
            Runtime::Containerd(_) => "containerd",
        }
    }

    fn socket(&self) -> PathBuf {
        match self {
            Runtime::Berth(d) => d.socket(),
            Runtime::Containerd(c) => c.socket.clone(),
        }
    }

    fn daemon_pid(&self) -> Result<i32> {
        match self {
            Runtime::Berth(d) => Ok(i32::try_from(d.pid().context("berth runtime exited")?)?),
            Runtime::Containerd(c) => c.pid().context("containerd exited"),
        }
    }

    fn log(&self) -> String {
        match self {
            Runtime::Berth(d) => tail(&d.log(), 30),
            Runtime::Containerd(c) => c.log(),
        }
    }

    /// The `--cgroup-root` berth node is given: berth runtime puts pods
    /// under its own root anyway; containerd's runc takes the kubelet's
    /// paths as they are, so they go under the fixture's parent.
    fn cgroup_root(&self) -> String {
        match self {
            Runtime::Berth(_) => "/".into(),
            Runtime::Containerd(c) => format!("/{}", c.cgroup_parent),
        }
    }

    /// The daemon and every process it keeps (helpers such as berth's fork
    /// server, monitors, shims, pause), not the workload nor `node`.
    fn processes(&self, node: i32) -> Vec<i32> {
        let Ok(daemon) = self.daemon_pid() else {
            return Vec::new();
        };
        let all = proc::pids();
        let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
        for &p in &all {
            if let Some(pp) = proc::ppid(p) {
                children.entry(pp).or_default().push(p);
            }
        }
        let mut todo = vec![daemon];
        for &p in &all {
            let cl = proc::cmdline(p);
            let ours = match self {
                // Monitors are forks of `berth oci --root <its state>`.
                Runtime::Berth(d) => {
                    cl.contains(d.path("").to_string_lossy().as_ref())
                        && proc::exe(p).is_some_and(|e| e.file_name() == Some("berth".as_ref()))
                }
                Runtime::Containerd(c) => {
                    cl.contains("containerd-shim")
                        && cl.contains(c.socket.to_string_lossy().as_ref())
                }
            };
            if ours {
                todo.push(p);
            }
        }
        let workload = WORKLOAD.join(" ");
        let mut seen = HashSet::new();
        while let Some(p) = todo.pop() {
            if p == node || !seen.insert(p) {
                continue;
            }
            if let Some(c) = children.get(&p) {
                todo.extend(c);
            }
        }
        let mut out: Vec<i32> = seen
            .into_iter()
            .filter(|&p| proc::cmdline(p) != workload)
            .collect();
        out.sort();
        out
    }
}

/// Memory of one moment, KiB.
#[derive(Clone, Copy, Default)]
struct Memory {
    node_rss: u64,
    node_pss: u64,
    daemon_rss: u64,
    daemon_pss: u64,
    /// The runtime's processes besides the daemon (helpers, monitors,
    /// shims, pause), PSS summed.
    others_pss: u64,
    others: usize,
}

/// What one size measured.
struct Round {
    pods: usize,
    /// From the first manifest written to the last container started (its
    /// CRI `started_at`).
    all_running: Duration,
    /// Until the poll saw them all running.
    all_running_polled: Duration,
    /// Per pod: its container's `started_at` minus its manifest's write.
    latencies: Vec<Duration>,
    mem: Memory,
    /// Node agent and runtime daemon CPU, % of one core, with nothing
    /// changing (the first size only).
    idle_cpu: Option<(f64, f64)>,
    /// From the manifests' removal until the runtime lists no pods.
    removed: Duration,
}

struct Figures {
    baseline: Memory,
    rounds: Vec<Round>,
}

/// A running `berth node` in the runtime's namespace.
struct Node {
    daemon: Option<Spawned>,
    log: PathBuf,
}

impl Node {
    fn start(
        args: &Args,
        ns: &NetNs,
        runtime: &Runtime,
        work: &Path,
        manifests: &Path,
    ) -> Result<Node> {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", ns.path().display()))
            .arg("--")
            .arg(&args.berth)
            .arg("node")
            .arg("--manifests")
            .arg(manifests)
            .arg("--runtime-endpoint")
            .arg(format!("unix://{}", runtime.socket().display()))
            .arg("--root")
            .arg(work.join("root"))
            .arg("--pod-log-dir")
            .arg(work.join("logs"))
            .args(["--node-name", NODE_NAME, "--cgroup-root"])
            .arg(runtime.cgroup_root());
        if args.node_logs.is_some() {
            cmd.arg("--debug");
        }
        let prefix = work.join("node");
        let daemon = spawn_daemon(cmd, &prefix)?;
        Ok(Node {
            daemon: Some(daemon),
            log: prefix.with_extension("stderr"),
        })
    }

    fn pid(&self) -> i32 {
        self.daemon.as_ref().map_or(0, |d| d.pid())
    }

    fn log(&self) -> String {
        tail(&std::fs::read_to_string(&self.log).unwrap_or_default(), 30)
    }

    /// SIGTERM, as a node's shutdown: it stops what pods are left.
    fn stop(&mut self) -> Result<()> {
        let Some(d) = self.daemon.take() else {
            return Ok(());
        };
        // SAFETY: signalling the node agent we started.
        unsafe { libc::kill(d.pid(), libc::SIGTERM) };
        let out = d.wait(Duration::from_secs(120))?;
        ensure!(out.success(), "berth node exited with {:?}", out.status);
        Ok(())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("bench: stopping berth node: {e:#}");
        }
    }
}

/// utime + stime of `pid` in clock ticks.
fn cpu_ticks(pid: i32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of stat(5); `rest` starts at field 3.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// CPU use of each of `pids` over `span`, in % of one core.
async fn cpu_percent(pids: &[i32], span: Duration) -> Result<Vec<f64>> {
    let before: Vec<u64> = pids
        .iter()
        .map(|&p| cpu_ticks(p).with_context(|| format!("/proc/{p}/stat")))
        .collect::<Result<_>>()?;
    let t0 = Instant::now();
    tokio::time::sleep(span).await;
    let elapsed = t0.elapsed().as_secs_f64();
    pids.iter()
        .zip(before)
        .map(|(&p, b)| {
            let a = cpu_ticks(p).with_context(|| format!("/proc/{p}/stat"))?;
            Ok((a.saturating_sub(b)) as f64 / ticks_per_second() / elapsed * 100.0)
        })
        .collect()
}

fn memory(runtime: &Runtime, node: i32, show: bool) -> Result<Memory> {
    let daemon = runtime.daemon_pid()?;
    let (node_pss, node_rss) = rollup(node).context("berth node exited")?;
    let (daemon_pss, daemon_rss) = rollup(daemon).context("the runtime exited")?;
    let mut m = Memory {
        node_rss,
        node_pss,
        daemon_rss,
        daemon_pss,
        ..Memory::default()
    };
    let procs = runtime.processes(node);
    if show {
        eprintln!("{} processes:   PSS KiB   RSS KiB  command", runtime.name());
    }
    for p in procs {
        let Some((pss, rss)) = rollup(p) else {
            continue;
        };
        if show {
            let cl: String = proc::cmdline(p).chars().take(110).collect();
            eprintln!("{p:>8} {pss:>17} {rss:>9}  {cl}");
        }
        if p != daemon {
            m.others_pss += pss;
            m.others += 1;
        }
    }
    Ok(m)
}

/// Lets lazily started work begin and freed memory return before a
/// measurement.
async fn settle() {
    tokio::time::sleep(Duration::from_secs(3)).await;
}

fn unix_nanos(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

async fn running(cri: &CriClient) -> Result<Vec<v1::Container>> {
    Ok(cri
        .list_containers(Some(v1::ContainerFilter {
            state: Some(v1::ContainerStateValue {
                state: v1::ContainerState::ContainerRunning as i32,
            }),
            ..Default::default()
        }))
        .await?)
}

/// One size: N manifests written at once, all running, measured, removed.
#[allow(clippy::too_many_arguments)]
async fn round(
    args: &Args,
    runtime: &Runtime,
    cri: &CriClient,
    node: &Node,
    manifests: &Path,
    image: &str,
    n: usize,
    measure_idle: bool,
) -> Result<Round> {
    let names: Vec<String> = (0..n).map(|i| format!("p{n}-{i:04}")).collect();
    let mut written = HashMap::new();
    let t0 = Instant::now();
    let first = SystemTime::now();
    for name in &names {
        std::fs::write(
            manifests.join(format!("{name}.yaml")),
            manifest(name, image),
        )?;
        written.insert(format!("{name}-{NODE_NAME}"), unix_nanos(SystemTime::now()));
    }
    let timeout = Duration::from_secs(60) + Duration::from_millis(2000) * n as u32;
    let ctrs = loop {
        let ctrs = running(cri).await?;
        if ctrs.len() >= n {
            break ctrs;
        }
        if t0.elapsed() > timeout {
            bail!(
                "{}: {} of {n} containers running after {timeout:?}; berth node's log:\n{}",
                runtime.name(),
                ctrs.len(),
                node.log()
            );
        }
        tokio::time::sleep(POLL).await;
    };
    let all_running_polled = t0.elapsed();
    let mut latencies = Vec::new();
    let mut last = 0i64;
    for c in &ctrs {
        let pod = c
            .labels
            .get("io.kubernetes.pod.name")
            .context("a container without its pod's name label")?;
        let at = *written
            .get(pod)
            .with_context(|| format!("a running container of pod {pod}, not of this round"))?;
        let started = cri.container_status(&c.id, false).await?.status.started_at;
        ensure!(started > 0, "container {} running without started_at", c.id);
        last = last.max(started);
        latencies.push(Duration::from_nanos(
            u64::try_from(started - at).unwrap_or(0),
        ));
    }
    let all_running = Duration::from_nanos(u64::try_from(last - unix_nanos(first)).unwrap_or(0));
    settle().await;
    let mem = memory(runtime, node.pid(), args.show_processes)?;
    let idle_cpu = if measure_idle {
        eprintln!(
            "bench: {}: CPU over {:?} with {n} pods running",
            runtime.name(),
            args.idle
        );
        let cpu = cpu_percent(&[node.pid(), runtime.daemon_pid()?], args.idle).await?;
        Some((cpu[0], cpu[1]))
    } else {
        None
    };

    let t1 = Instant::now();
    for name in &names {
        std::fs::remove_file(manifests.join(format!("{name}.yaml")))?;
    }
    loop {
        let left = cri.list_pod_sandbox(None).await?.len();
        if left == 0 {
            break;
        }
        if t1.elapsed() > timeout {
            bail!(
                "{}: {left} pods still there {timeout:?} after their manifests went; berth node's log:\n{}",
                runtime.name(),
                node.log()
            );
        }
        tokio::time::sleep(POLL).await;
    }
    Ok(Round {
        pods: n,
        all_running,
        all_running_polled,
        latencies,
        mem,
        idle_cpu,
        removed: t1.elapsed(),
    })
}

/// One configuration: berth node on `runtime`, every size in turn.
async fn configuration(
    args: &Args,
    ns: &NetNs,
    runtime: &Runtime,
    image: &str,
    pause: Option<&str>,
) -> Result<Figures> {
    let cri = connect(runtime).await?;
    wait_ready(&cri, runtime).await?;
    for i in std::iter::once(image).chain(pause) {
        cri.pull_image(
            v1::ImageSpec {
                image: i.into(),
                ..Default::default()
            },
            None,
            None,
        )
        .await
        .with_context(|| format!("{} PullImage {i}", runtime.name()))?;
    }
    let work = tempdir("bench-node-")?;
    let manifests = work.path().join("manifests");
    std::fs::create_dir_all(&manifests)?;
    let mut node = Node::start(args, ns, runtime, work.path(), &manifests)?;
    let result = async {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !std::fs::read_to_string(&node.log)
            .unwrap_or_default()
            .contains("berth node running static pods")
        {
            ensure!(
                proc::alive(node.pid()) && Instant::now() < deadline,
                "berth node did not start:\n{}",
                node.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        settle().await;
        let baseline = memory(runtime, node.pid(), false)?;
        let mut rounds = Vec::new();
        for (i, &n) in args.pods.iter().enumerate() {
            eprintln!("bench: {}: {n} static pods", runtime.name());
            rounds.push(round(args, runtime, &cri, &node, &manifests, image, n, i == 0).await?);
        }
        Ok(Figures { baseline, rounds })
    }
    .await;
    let stopped = node.stop();
    if let Some(dir) = &args.node_logs {
        let to = dir.join(format!("node-{}.log", runtime.name()));
        if let Err(e) = std::fs::copy(&node.log, &to) {
            eprintln!("bench: keeping {}: {e}", to.display());
        }
    }
    let figs = result?;
    stopped?;
    Ok(figs)
}

/// A client of the runtime once its socket answers (containerd makes it
/// after loading its plugins).
async fn connect(runtime: &Runtime) -> Result<CriClient> {
    let endpoint = format!("unix://{}", runtime.socket().display());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match CriClient::connect(&endpoint, Duration::from_secs(10)).await {
            Ok(c) => return Ok(c.with_request_timeout(Duration::from_secs(120))),
            Err(e) if Instant::now() > deadline => {
                return Err(e).with_context(|| format!("connecting to {}", runtime.name()));
            }
            Err(_) => {
                if let Runtime::Containerd(c) = runtime {
                    ensure!(c.alive(), "containerd exited:\n{}", c.log());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Until the runtime reports RuntimeReady (NetworkReady does not matter to
/// host-network pods, but containerd reports it only once its CNI config is
/// loaded, which is waited for to keep that out of the figures).
async fn wait_ready(cri: &CriClient, runtime: &Runtime) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(s) = cri.status(false).await {
            let conds = s.status.conditions;
            if ["RuntimeReady", "NetworkReady"]
                .iter()
                .all(|t| conds.iter().any(|c| c.r#type == *t && c.status))
            {
                return Ok(());
            }
        }
        ensure!(
            Instant::now() < deadline,
            "{} not ready in 60 s:\n{}",
            runtime.name(),
            runtime.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn kib(k: u64) -> f64 {
    k as f64 / MIB
}

fn print(figs: &[Figures], load: (&str, &str)) {
    println!(
        "\nberth node, N busybox static pods (hostNetwork, `sleep 3600`) written at once; \
         load average {} before, {} after",
        load.0, load.1
    );
    println!(
        "{:<44} {:>10} {:>11} {:>17}",
        "", "berth", "containerd", "berth/containerd"
    );
    let row = |label: &str, b: f64, c: Option<f64>| match c {
        Some(c) if c != 0.0 => println!("{label:<44} {b:>10.2} {c:>11.2} {:>17.2}", b / c),
        Some(c) => println!("{label:<44} {b:>10.2} {c:>11.2}"),
        None => println!("{label:<44} {b:>10.2}"),
    };
    let b = &figs[0];
    let c = figs.get(1);
    row(
        "node agent RSS MiB, no pods",
        kib(b.baseline.node_rss),
        c.map(|c| kib(c.baseline.node_rss)),
    );
    row(
        "runtime daemon RSS MiB, no pods",
        kib(b.baseline.daemon_rss),
        c.map(|c| kib(c.baseline.daemon_rss)),
    );
    for (i, r) in b.rounds.iter().enumerate() {
        let other = c.and_then(|c| c.rounds.get(i));
        let n = r.pods;
        type Get = fn(&Figures, &Round) -> f64;
        let rows: [(&str, Get); 12] = [
            ("all running s", |_, r| secs(r.all_running)),
            ("all running, as polled s", |_, r| {
                secs(r.all_running_polled)
            }),
            ("start latency p50 s", |_, r| {
                secs(percentile(&r.latencies, 50.0))
            }),
            ("start latency p99 s", |_, r| {
                secs(percentile(&r.latencies, 99.0))
            }),
            ("node agent RSS MiB", |_, r| kib(r.mem.node_rss)),
            ("node agent PSS MiB", |_, r| kib(r.mem.node_pss)),
            ("runtime daemon RSS MiB", |_, r| kib(r.mem.daemon_rss)),
            ("runtime daemon PSS MiB", |_, r| kib(r.mem.daemon_pss)),
            ("monitors (shims, pause) PSS MiB", |_, r| {
                kib(r.mem.others_pss)
            }),
            ("monitors (shims, pause) processes", |_, r| {
                r.mem.others as f64
            }),
            ("runtime+monitors PSS per pod MiB", per_pod_pss),
            ("all removed s", |_, r| secs(r.removed)),
        ];
        for (label, get) in rows {
            row(
                &format!("{n} pods: {label}"),
                get(b, r),
                c.zip(other).map(|(c, o)| get(c, o)),
            );
        }
        if let Some((node, daemon)) = r.idle_cpu {
            let o = other.and_then(|o| o.idle_cpu);
            row(
                &format!("{n} pods: node agent idle CPU % of a core"),
                node,
                o.map(|o| o.0),
            );
            row(
                &format!("{n} pods: runtime daemon idle CPU %"),
                daemon,
                o.map(|o| o.1),
            );
        }
    }

    let met = |ok: bool| if ok { "met" } else { "NOT met" };
    println!("\ngoals (berth node on berth runtime)");
    for r in &b.rounds {
        let goal = match r.pods {
            100 => 5.0,
            250 => 15.0,
            _ => continue,
        };
        let s = secs(r.all_running);
        println!(
            "{:<38} {s:>6.2}  {}",
            format!("{} pods all running <= {goal} s:", r.pods),
            met(s <= goal)
        );
    }
    if let Some((cpu, _)) = b.rounds.first().and_then(|r| r.idle_cpu) {
        println!(
            "{:<38} {cpu:>6.2}  {}",
            "node agent idle CPU <= 1% of a core:",
            met(cpu <= 1.0)
        );
    }
    let rss = b
        .rounds
        .iter()
        .map(|r| r.mem.node_rss)
        .max()
        .unwrap_or(0)
        .max(b.baseline.node_rss);
    println!(
        "{:<38} {:>6.2}  {}",
        "node agent RSS <= 50 MiB:",
        kib(rss),
        met(kib(rss) <= 50.0)
    );
    for r in &b.rounds {
        let per = per_pod_pss(b, r);
        println!(
            "{:<38} {per:>6.2}  {}",
            format!("runtime+monitors <= 1 MiB/pod ({}):", r.pods),
            met(per <= 1.0)
        );
    }
}

/// The runtime's PSS (daemon, helpers, monitors) added per running pod,
/// MiB.
fn per_pod_pss(f: &Figures, r: &Round) -> f64 {
    let total = r.mem.daemon_pss + r.mem.others_pss;
    let base = f.baseline.daemon_pss + f.baseline.others_pss;
    (total as f64 - base as f64) / r.pods as f64 / MIB
}

fn main() -> Result<()> {
    let args = parse_args()?;
    for tool in ["ip", "nsenter"] {
        ensure!(which(tool).is_some(), "{tool} is needed");
    }
    let load_before = loadavg();

    // Dropped in reverse order: daemons before forwarders, namespaces and
    // the registry.
    let registry = bench::registry()?;
    let upstream: SocketAddr = registry.addr().parse()?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut figs = Vec::new();
    let configs: &[bool] = if args.berth_only {
        &[false]
    } else {
        &[false, true]
    };
    for &containerd in configs {
        let ns = NetNs::new(if containerd {
            "bench-node-ctrd"
        } else {
            "bench-node-berth"
        })?;
        let port = Forwarder::port(&ns)?;
        let _fwd = Forwarder::start(&ns, port, upstream)?;
        let local = format!("127.0.0.1:{port}");
        let image = format!("{local}/{BUSYBOX}");
        let pause_ref = format!("{local}/{PAUSE}");
        let ipam = tempdir("ipam-node-")?;
        let cni = conflist("berth-bench-node", ipam.path());
        let mut runtime = if containerd {
            Runtime::Containerd(ContainerdCri::start(
                &ns,
                &args.berth,
                &local,
                &pause_ref,
                &cni,
            )?)
        } else {
            Runtime::Berth(CriDaemon::start(Options {
                netns: Some(ns.path()),
                conflist: Some(cni),
                berth: Some(args.berth.clone()),
                quiet: true,
                state_tmpfs: true,
                ..Default::default()
            })?)
        };
        let pause = containerd.then_some(pause_ref.as_str());
        let result = rt.block_on(configuration(&args, &ns, &runtime, &image, pause));
        let result = result.map_err(|e| {
            e.context(format!(
                "{} log (last lines):\n{}",
                runtime.name(),
                runtime.log()
            ))
        });
        match &mut runtime {
            Runtime::Berth(d) => {
                if let Err(e) = d.terminate() {
                    eprintln!("bench: stopping berth runtime: {e:#}");
                }
            }
            Runtime::Containerd(c) => c.shutdown(),
        }
        match result {
            Ok(f) => figs.push(f),
            Err(e) => {
                // What was measured before the failure is still worth seeing.
                if !figs.is_empty() {
                    print(&figs, (&load_before, &loadavg()));
                }
                return Err(e);
            }
        }
    }
    print(&figs, (&load_before, &loadavg()));
    Ok(())
}
