//! Benchmark: pods over the CRI, `berth runtime` against Debian's containerd
//! 1.6 (CRI plugin, runc) in one run.
//!
//! cargo build --release -p berth -p berth-integration && \
//! target/release/bench_cri [--n 100] [--pods 20] [--berth PATH]
//!
//! Each daemon runs in a "node" network namespace of its own with the same
//! CNI chain (bridge + host-local + portmap + loopback: berth's plugins,
//! in-process for berth, as executables from `berth cni install` for
//! containerd) and pulls from one local registry. The runtimes alternate
//! iteration by iteration (round by round when 10 pods start at a time), so
//! load from elsewhere on the machine falls on both alike. See
//! bench/README.md.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use berth_integration::bench::{self, BUSYBOX, PAUSE, berth_path, loadavg, percentile, rollup};
use berth_integration::containerd_cri::{ContainerdCri, conflist, tail};
use berth_integration::cri::{CriDaemon, Options};
use berth_integration::forward::Forwarder;
use berth_integration::netns::NetNs;
use berth_integration::proc;
use berth_integration::runtime::which;
use berth_integration::workdir::tempdir;
use berth_proto::v1;
use berth_proto::v1::image_service_client::ImageServiceClient;
use berth_proto::v1::runtime_service_client::RuntimeServiceClient;
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

/// How many pods start at once in the concurrent phase.
const WORKERS: usize = 10;
/// The container's command; its processes are the workload, not the
/// runtime's cost, and are left out of the memory figures by this cmdline.
const WORKLOAD: [&str; 2] = ["sleep", "86400"];
const MIB: f64 = 1024.0;

struct Args {
    n: usize,
    pods: usize,
    berth: PathBuf,
    /// Lists the processes counted in the memory figures.
    show_processes: bool,
    /// Skips containerd: berth's own figures only, for quick iterations.
    berth_only: bool,
}

fn parse_args() -> Result<Args> {
    let mut n = 100;
    let mut pods = 20;
    let mut berth = None;
    let mut show_processes = false;
    let mut berth_only = false;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--n" => n = it.next().context("--n N")?.parse()?,
            "--pods" => pods = it.next().context("--pods P")?.parse()?,
            "--berth" => berth = Some(PathBuf::from(it.next().context("--berth PATH")?)),
            "--show-processes" => show_processes = true,
            "--berth-only" => berth_only = true,
            _ => bail!(
                "usage: bench_cri [--n N (a multiple of {WORKERS})] [--pods P] [--berth PATH] [--show-processes] [--berth-only]"
            ),
        }
    }
    ensure!(
        n >= WORKERS && n % WORKERS == 0,
        "--n must be a multiple of {WORKERS} (the concurrent phase starts {WORKERS} pods at a time)"
    );
    ensure!(pods >= 1, "--pods must be at least 1");
    let berth = berth_path(berth)?;
    Ok(Args {
        n,
        pods,
        berth,
        show_processes,
        berth_only,
    })
}

async fn connect(
    socket: &Path,
) -> Result<(RuntimeServiceClient<Channel>, ImageServiceClient<Channel>)> {
    let socket = socket.to_path_buf();
    let channel = Endpoint::try_from("http://cri.invalid")?
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(socket).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }))
        .await
        .context("connecting to the CRI socket")?;
    Ok((
        berth_proto::runtime_service_client(channel.clone()),
        berth_proto::image_service_client(channel),
    ))
}

/// Which processes make up a runtime on the node, besides its daemon.
enum Kind {
    /// berth processes whose command line names the daemon's dir (monitors
    /// are forks of `berth oci --root <its state>`), and pod-inits.
    Berth { dir: String },
    /// Shims carrying the daemon's socket address, and their children
    /// (pause).
    Containerd { socket: String },
}

/// One runtime under test.
struct Target {
    name: &'static str,
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
    daemon_pid: i32,
    kind: Kind,
    image: String,
    log_dir: PathBuf,
    cgroup_parent: String,
}

#[derive(Default)]
struct Figures {
    seq_start: Vec<Duration>,
    /// RunPodSandbox, CreateContainer, StartContainer of each sequential
    /// start.
    seq_rpcs: Vec<[Duration; 3]>,
    seq_teardown: Vec<Duration>,
    par_start: Vec<Duration>,
    par_teardown: Vec<Duration>,
    mem: Option<Memory>,
}

struct Memory {
    daemon_rss_idle_kib: u64,
    /// The daemon with the helper processes it keeps without pods (berth's
    /// fork server), as PSS.
    idle_pss_kib: u64,
    daemon_rss_kib: u64,
    pss_per_pod_kib: f64,
    rss_per_pod_kib: f64,
    procs_per_pod: f64,
}

struct Pod {
    pod: String,
    ctr: String,
}

impl Target {
    async fn ready(&self) -> Result<bool> {
        let s = self
            .runtime
            .clone()
            .status(v1::StatusRequest { verbose: false })
            .await?
            .into_inner();
        let conds = s.status.map(|s| s.conditions).unwrap_or_default();
        Ok(["RuntimeReady", "NetworkReady"]
            .iter()
            .all(|t| conds.iter().any(|c| c.r#type == *t && c.status)))
    }

    async fn pull(&self, image: &str) -> Result<()> {
        self.images
            .clone()
            .pull_image(v1::PullImageRequest {
                image: Some(v1::ImageSpec {
                    image: image.into(),
                    ..Default::default()
                }),
                auth: None,
                sandbox_config: None,
            })
            .await
            .with_context(|| format!("{} PullImage {image}", self.name))?;
        Ok(())
    }

    fn pod_config(&self, name: &str) -> v1::PodSandboxConfig {
        v1::PodSandboxConfig {
            metadata: Some(v1::PodSandboxMetadata {
                name: name.into(),
                uid: format!("{name}-uid"),
                namespace: "bench".into(),
                attempt: 0,
            }),
            hostname: name.into(),
            log_directory: self.log_dir.join(name).display().to_string(),
            linux: Some(v1::LinuxPodSandboxConfig {
                cgroup_parent: self.cgroup_parent.clone(),
                security_context: Some(v1::LinuxSandboxSecurityContext {
                    namespace_options: Some(namespaces()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn container_config(&self) -> v1::ContainerConfig {
        v1::ContainerConfig {
            metadata: Some(v1::ContainerMetadata {
                name: "sleep".into(),
                attempt: 0,
            }),
            image: Some(v1::ImageSpec {
                image: self.image.clone(),
                ..Default::default()
            }),
            command: WORKLOAD.map(String::from).to_vec(),
            log_path: "sleep.log".into(),
            linux: Some(v1::LinuxContainerConfig {
                security_context: Some(v1::LinuxContainerSecurityContext {
                    namespace_options: Some(namespaces()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// RunPodSandbox + CreateContainer + StartContainer, timed together and
    /// each.
    async fn start(&self, name: &str) -> Result<(Pod, Duration, [Duration; 3])> {
        let mut rt = self.runtime.clone();
        let config = self.pod_config(name);
        let t0 = Instant::now();
        let pod = rt
            .run_pod_sandbox(v1::RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: String::new(),
            })
            .await
            .with_context(|| format!("{} RunPodSandbox {name}", self.name))?
            .into_inner()
            .pod_sandbox_id;
        let t1 = Instant::now();
        let ctr = rt
            .create_container(v1::CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some(self.container_config()),
                sandbox_config: Some(config),
            })
            .await
            .with_context(|| format!("{} CreateContainer in {name}", self.name))?
            .into_inner()
            .container_id;
        let t2 = Instant::now();
        rt.start_container(v1::StartContainerRequest {
            container_id: ctr.clone(),
        })
        .await
        .with_context(|| format!("{} StartContainer in {name}", self.name))?;
        let t3 = Instant::now();
        Ok((Pod { pod, ctr }, t3 - t0, [t1 - t0, t2 - t1, t3 - t2]))
    }

    /// StopContainer (no grace: `sleep` as pid 1 ignores SIGTERM, so any
    /// grace period would be waited out in full) + RemoveContainer +
    /// StopPodSandbox + RemovePodSandbox, timed together.
    async fn teardown(&self, p: &Pod) -> Result<Duration> {
        let mut rt = self.runtime.clone();
        let t0 = Instant::now();
        rt.stop_container(v1::StopContainerRequest {
            container_id: p.ctr.clone(),
            timeout: 0,
        })
        .await
        .with_context(|| format!("{} StopContainer {}", self.name, p.ctr))?;
        rt.remove_container(v1::RemoveContainerRequest {
            container_id: p.ctr.clone(),
        })
        .await
        .with_context(|| format!("{} RemoveContainer {}", self.name, p.ctr))?;
        rt.stop_pod_sandbox(v1::StopPodSandboxRequest {
            pod_sandbox_id: p.pod.clone(),
        })
        .await
        .with_context(|| format!("{} StopPodSandbox {}", self.name, p.pod))?;
        rt.remove_pod_sandbox(v1::RemovePodSandboxRequest {
            pod_sandbox_id: p.pod.clone(),
        })
        .await
        .with_context(|| format!("{} RemovePodSandbox {}", self.name, p.pod))?;
        Ok(t0.elapsed())
    }

    /// Removes every pod the daemon lists (with its containers), whatever
    /// state a failed run left it in. Returns the first error.
    async fn remove_all(&self) -> Result<()> {
        let mut rt = self.runtime.clone();
        let mut first = None;
        let ctrs = rt
            .list_containers(v1::ListContainersRequest { filter: None })
            .await
            .map(|r| r.into_inner().containers)
            .unwrap_or_default();
        for c in ctrs {
            let r = self
                .teardown_container(&mut rt, &c.id)
                .await
                .with_context(|| format!("{} removing container {}", self.name, c.id));
            first = first.or(r.err());
        }
        let pods = rt
            .list_pod_sandbox(v1::ListPodSandboxRequest { filter: None })
            .await
            .with_context(|| format!("{} ListPodSandbox", self.name))?
            .into_inner()
            .items;
        for p in pods {
            let r = async {
                rt.stop_pod_sandbox(v1::StopPodSandboxRequest {
                    pod_sandbox_id: p.id.clone(),
                })
                .await?;
                rt.remove_pod_sandbox(v1::RemovePodSandboxRequest {
                    pod_sandbox_id: p.id.clone(),
                })
                .await?;
                Ok::<_, tonic::Status>(())
            }
            .await
            .with_context(|| format!("{} removing pod {}", self.name, p.id));
            first = first.or(r.err());
        }
        first.map_or(Ok(()), Err)
    }

    async fn teardown_container(
        &self,
        rt: &mut RuntimeServiceClient<Channel>,
        id: &str,
    ) -> Result<(), tonic::Status> {
        rt.stop_container(v1::StopContainerRequest {
            container_id: id.into(),
            timeout: 0,
        })
        .await?;
        rt.remove_container(v1::RemoveContainerRequest {
            container_id: id.into(),
        })
        .await?;
        Ok(())
    }

    /// The daemon and every process it keeps for pods (not the workload).
    fn processes(&self) -> Vec<i32> {
        let all = proc::pids();
        let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
        for &p in &all {
            if let Some(pp) = proc::ppid(p) {
                children.entry(pp).or_default().push(p);
            }
        }
        let mut todo = vec![self.daemon_pid];
        for &p in &all {
            let cl = proc::cmdline(p);
            let ours = match &self.kind {
                Kind::Berth { dir } => {
                    cl.contains(dir.as_str())
                        && proc::exe(p).is_some_and(|e| e.file_name() == Some("berth".as_ref()))
                }
                Kind::Containerd { socket } => {
                    cl.contains("containerd-shim") && cl.contains(socket.as_str())
                }
            };
            if ours {
                todo.push(p);
            }
        }
        let workload = WORKLOAD.join(" ");
        let mut seen = HashSet::new();
        while let Some(p) = todo.pop() {
            if !seen.insert(p) {
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

    /// Sum of (PSS, RSS) in KiB over `pids`, and how many were readable.
    fn usage(pids: &[i32]) -> (u64, u64, usize) {
        let mut pss = 0;
        let mut rss = 0;
        let mut n = 0;
        for &p in pids {
            if let Some((ps, rs)) = rollup(p) {
                pss += ps;
                rss += rs;
                n += 1;
            }
        }
        (pss, rss, n)
    }

    fn show(&self, pids: &[i32]) {
        eprintln!("{} processes:   PSS KiB   RSS KiB  command", self.name);
        for &p in pids {
            let (pss, rss) = rollup(p).unwrap_or_default();
            let cl: String = proc::cmdline(p).chars().take(110).collect();
            eprintln!("{p:>8} {pss:>17} {rss:>9}  {cl}");
        }
    }

    /// Memory with `pods` pods running against none.
    async fn memory(&self, pods: usize, show: bool) -> Result<Memory> {
        settle().await;
        let daemon_rss_idle_kib = rollup(self.daemon_pid).map_or(0, |(_, r)| r);
        let (pss0, rss0, n0) = Target::usage(&self.processes());
        let mut running = Vec::new();
        let mut result = Ok(());
        for i in 0..pods {
            match self.start(&format!("mem-{i}")).await {
                Ok((p, ..)) => running.push(p),
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        let after = if result.is_ok() {
            settle().await;
            let daemon = rollup(self.daemon_pid).map_or(0, |(_, r)| r);
            let procs = self.processes();
            if show {
                self.show(&procs);
            }
            Some((daemon, Target::usage(&procs)))
        } else {
            None
        };
        for p in &running {
            let r = self.teardown(p).await;
            if result.is_ok() {
                result = r.map(|_| ());
            }
        }
        result?;
        let (daemon_rss_kib, (pss1, rss1, n1)) = after.context("no measurement")?;
        let per = |a: u64, b: u64| (a as f64 - b as f64) / pods as f64;
        Ok(Memory {
            daemon_rss_idle_kib,
            idle_pss_kib: pss0,
            daemon_rss_kib,
            pss_per_pod_kib: per(pss1, pss0),
            rss_per_pod_kib: per(rss1, rss0),
            procs_per_pod: per(n1 as u64, n0 as u64),
        })
    }
}

/// What the kubelet asks for a pod without `shareProcessNamespace`: the
/// CRI's zero value would be a pid namespace shared by the pod.
fn namespaces() -> v1::NamespaceOption {
    v1::NamespaceOption {
        network: v1::NamespaceMode::Pod as i32,
        pid: v1::NamespaceMode::Container as i32,
        ipc: v1::NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

/// Lets lazily started work (log readers, exit watchers) begin and freed
/// memory return before a measurement.
async fn settle() {
    tokio::time::sleep(Duration::from_secs(2)).await;
}

/// Sequential start/teardown, alternating the runtimes; iteration 0 is a
/// warm-up.
async fn sequential(targets: &[Target], figs: &mut [Figures], n: usize) -> Result<()> {
    for i in 0..=n {
        for (t, f) in targets.iter().zip(figs.iter_mut()) {
            let (pod, start, rpcs) = t.start(&format!("seq-{i}")).await?;
            let down = t.teardown(&pod).await?;
            if i > 0 {
                f.seq_start.push(start);
                f.seq_rpcs.push(rpcs);
                f.seq_teardown.push(down);
            }
        }
    }
    Ok(())
}

/// Rounds of WORKERS pods started at once, then torn down at once, the
/// runtimes alternating by round; round 0 is a warm-up.
async fn concurrent(targets: &[Target], figs: &mut [Figures], n: usize) -> Result<()> {
    for round in 0..=n / WORKERS {
        for (t, f) in targets.iter().zip(figs.iter_mut()) {
            let starts = futures::future::join_all(
                (0..WORKERS).map(|k| t.start_owned(format!("par-{round}-{k}"))),
            )
            .await;
            let mut pods = Vec::new();
            let mut first = None;
            for s in starts {
                match s {
                    Ok((p, d, _)) => {
                        pods.push(p);
                        if round > 0 {
                            f.par_start.push(d);
                        }
                    }
                    Err(e) => first = first.or(Some(e)),
                }
            }
            let downs = futures::future::join_all(pods.iter().map(|p| t.teardown(p))).await;
            for d in downs {
                match d {
                    Ok(d) if round > 0 => f.par_teardown.push(d),
                    Ok(_) => {}
                    Err(e) => first = first.or(Some(e)),
                }
            }
            if let Some(e) = first {
                return Err(e);
            }
        }
    }
    Ok(())
}

impl Target {
    async fn start_owned(&self, name: String) -> Result<(Pod, Duration, [Duration; 3])> {
        self.start(&name).await
    }
}

async fn run(targets: &[Target], args: &Args) -> Result<Vec<Figures>> {
    let mut figs: Vec<Figures> = targets.iter().map(|_| Figures::default()).collect();
    eprintln!("bench: {} sequential pods per runtime", args.n);
    sequential(targets, &mut figs, args.n).await?;
    eprintln!("bench: {} pods per runtime, {WORKERS} at a time", args.n);
    concurrent(targets, &mut figs, args.n).await?;
    for (t, f) in targets.iter().zip(figs.iter_mut()) {
        eprintln!("bench: memory of {} with {} pods", t.name, args.pods);
        f.mem = Some(t.memory(args.pods, args.show_processes).await?);
    }
    Ok(figs)
}

fn print(figs: &[Figures], args: &Args, load: (&str, &str)) {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "\nCRI pod + busybox `sleep` container, N={} each (runtimes alternating), {WORKERS} at a time in rounds; \
         load average {} before, {} after",
        args.n, load.0, load.1
    );
    println!(
        "{:<34} {:>10} {:>11} {:>17}",
        "", "berth", "containerd", "berth/containerd"
    );
    let row = |label: &str, b: f64, c: Option<f64>| match c {
        Some(c) => println!("{label:<34} {b:>10.2} {c:>11.2} {:>17.2}", b / c),
        None => println!("{label:<34} {b:>10.2}"),
    };
    let other = figs.get(1);
    type Sample = fn(&Figures) -> &Vec<Duration>;
    let samples: [(&str, Sample); 4] = [
        ("start", |f| &f.seq_start),
        ("teardown", |f| &f.seq_teardown),
        ("start, 10 at a time", |f| &f.par_start),
        ("teardown, 10 at a time", |f| &f.par_teardown),
    ];
    for (i, (label, get)) in samples.into_iter().enumerate() {
        for p in [50.0, 99.0] {
            row(
                &format!("{label} p{p} ms"),
                ms(percentile(get(&figs[0]), p)),
                other.map(|f| ms(percentile(get(f), p))),
            );
        }
        if i == 0 {
            for (k, rpc) in ["RunPodSandbox", "CreateContainer", "StartContainer"]
                .iter()
                .enumerate()
            {
                let p50 = |f: &Figures| {
                    let v: Vec<Duration> = f.seq_rpcs.iter().map(|r| r[k]).collect();
                    ms(percentile(&v, 50.0))
                };
                row(&format!("  {rpc} p50 ms"), p50(&figs[0]), other.map(p50));
            }
        }
    }
    let Some(mb) = &figs[0].mem else {
        return;
    };
    let mc = other.and_then(|f| f.mem.as_ref());
    let kib = |k: u64| k as f64 / MIB;
    row(
        "daemon RSS MiB, no pods",
        kib(mb.daemon_rss_idle_kib),
        mc.map(|m| kib(m.daemon_rss_idle_kib)),
    );
    row(
        &format!("daemon RSS MiB, {} pods", args.pods),
        kib(mb.daemon_rss_kib),
        mc.map(|m| kib(m.daemon_rss_kib)),
    );
    row(
        "daemon and helpers PSS MiB, no pods",
        kib(mb.idle_pss_kib),
        mc.map(|m| kib(m.idle_pss_kib)),
    );
    row(
        "added per running pod, PSS MiB",
        mb.pss_per_pod_kib / MIB,
        mc.map(|m| m.pss_per_pod_kib / MIB),
    );
    row(
        "added per running pod, RSS MiB",
        mb.rss_per_pod_kib / MIB,
        mc.map(|m| m.rss_per_pod_kib / MIB),
    );
    row(
        "added per running pod, processes",
        mb.procs_per_pod,
        mc.map(|m| m.procs_per_pod),
    );

    let met = |ok: bool| if ok { "met" } else { "NOT met" };
    let ratio = other
        .map(|f| ms(percentile(&figs[0].seq_start, 50.0)) / ms(percentile(&f.seq_start, 50.0)));
    let rss = kib(mb.daemon_rss_kib.max(mb.daemon_rss_idle_kib));
    let pss = mb.pss_per_pod_kib / MIB;
    println!("\ngoals (issue 5)");
    if let Some(ratio) = ratio {
        println!(
            "start p50 berth/containerd <= 0.10:   {ratio:>6.2}  {}",
            met(ratio <= 0.10)
        );
    }
    println!(
        "daemon RSS <= 20 MiB:                 {rss:>6.2}  {}",
        met(rss <= 20.0)
    );
    println!(
        "PSS per running pod <= 1 MiB:         {pss:>6.2}  {}",
        met(pss <= 1.0)
    );
}

fn main() -> Result<()> {
    let args = parse_args()?;
    for tool in ["ip", "nsenter"] {
        ensure!(which(tool).is_some(), "{tool} is needed");
    }
    let load_before = loadavg();

    // Declared in the order of their use; dropped in reverse: daemons
    // (with their pods' processes, cgroups and mounts) before forwarders,
    // namespaces and the registry.
    let registry = bench::registry()?;
    let upstream: SocketAddr = registry.addr().parse()?;

    let berth_ns = NetNs::new("bench-berth")?;
    let ctrd_ns = (!args.berth_only)
        .then(|| NetNs::new("bench-ctrd"))
        .transpose()?;
    let port = Forwarder::port(&berth_ns)?;
    let _fwd_berth = Forwarder::start(&berth_ns, port, upstream)?;
    let _fwd_ctrd = match &ctrd_ns {
        Some(ns) => Some(Forwarder::start(ns, port, upstream).with_context(|| {
            format!("port {port} taken in the containerd namespace; run again")
        })?),
        None => None,
    };
    let local = format!("127.0.0.1:{port}");
    let busybox = format!("{local}/{BUSYBOX}");
    let pause_ref = format!("{local}/{PAUSE}");

    let ipam_berth = tempdir("ipam-berth-")?;
    let ipam_ctrd = tempdir("ipam-ctrd-")?;
    let mut berth = CriDaemon::start(Options {
        netns: Some(berth_ns.path()),
        conflist: Some(conflist("berth-bench-cri", ipam_berth.path())),
        berth: Some(args.berth.clone()),
        quiet: true,
        state_tmpfs: true,
        ..Default::default()
    })?;
    let mut ctrd = match &ctrd_ns {
        Some(ns) => Some(ContainerdCri::start(
            ns,
            &args.berth,
            &local,
            &pause_ref,
            &conflist("berth-bench-cri", ipam_ctrd.path()),
        )?),
        None => None,
    };

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let result = rt.block_on(async {
        let targets = setup(&berth, ctrd.as_ref(), &busybox, &pause_ref).await?;
        let figs = run(&targets, &args).await;
        let mut cleaned = Ok(());
        for t in &targets {
            if let Err(e) = t.remove_all().await {
                eprintln!("bench: cleanup: {e:#}");
                cleaned = Err(e);
            }
        }
        let figs = figs?;
        cleaned?;
        Ok::<_, anyhow::Error>(figs)
    });
    let result = result.map_err(|e| {
        if let Some(ctrd) = &ctrd
            && !ctrd.alive()
        {
            e.context(format!("containerd exited; its log:\n{}", ctrd.log()))
        } else if let Some(ctrd) = &ctrd
            && e.chain().any(|c| c.to_string().starts_with("containerd "))
        {
            e.context(format!("containerd log (last lines):\n{}", ctrd.log()))
        } else if e.chain().any(|c| c.to_string().starts_with("berth ")) {
            e.context(format!(
                "berth runtime log (last lines):\n{}",
                tail(&berth.log(), 30)
            ))
        } else {
            e
        }
    });
    if let Err(e) = berth.terminate() {
        eprintln!("bench: stopping berth runtime: {e:#}");
    }
    if let Some(ctrd) = &mut ctrd {
        ctrd.shutdown();
    }
    let figs = result?;
    print(&figs, &args, (&load_before, &loadavg()));
    Ok(())
}

/// Connects to both daemons, waits until they are ready, and pulls the
/// images over the CRI.
async fn setup(
    berth: &CriDaemon,
    ctrd: Option<&ContainerdCri>,
    busybox: &str,
    pause: &str,
) -> Result<Vec<Target>> {
    let (runtime, images) = connect(&berth.socket()).await?;
    let b = Target {
        name: "berth",
        runtime,
        images,
        daemon_pid: i32::try_from(berth.pid().context("berth runtime is not running")?)?,
        kind: Kind::Berth {
            dir: berth.path("").display().to_string(),
        },
        image: busybox.into(),
        log_dir: berth.path("logs"),
        cgroup_parent: "bench".into(),
    };
    ensure!(b.ready().await?, "berth runtime is not ready");
    b.pull(busybox).await?;
    let Some(ctrd) = ctrd else {
        return Ok(vec![b]);
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let c = loop {
        ensure!(ctrd.alive(), "containerd exited:\n{}", ctrd.log());
        if ctrd.socket.exists()
            && let Ok((runtime, images)) = connect(&ctrd.socket).await
        {
            let t = Target {
                name: "containerd",
                runtime,
                images,
                daemon_pid: ctrd.pid().context("containerd is not running")?,
                kind: Kind::Containerd {
                    socket: ctrd.socket.display().to_string(),
                },
                image: busybox.into(),
                log_dir: ctrd.dir().join("logs"),
                cgroup_parent: format!("/{}", ctrd.cgroup_parent),
            };
            if t.ready().await.unwrap_or(false) {
                break t;
            }
        }
        ensure!(
            Instant::now() < deadline,
            "containerd's CRI not ready (RuntimeReady, NetworkReady) in 60 s:\n{}",
            ctrd.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    c.pull(busybox).await?;
    c.pull(pause).await?;
    Ok(vec![b, c])
}
