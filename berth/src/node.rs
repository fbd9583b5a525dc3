//! `berth node`: the kubelet in standalone mode. Runs the static pods of a
//! manifest directory on a CRI runtime, adopting the pods it already runs,
//! and on SIGTERM or SIGINT stops and removes them all and exits 0.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use berth_kubelet::config::KubeletConfiguration;
use berth_kubelet::cri_client::CriClient;
use berth_kubelet::cri_config::{Allocatable, CgroupDriver, NodeContext};
use berth_kubelet::gc::{ContainerPolicy, GarbageCollector, ImagePolicy};
use berth_kubelet::image_pull::PullLimiter;
use berth_kubelet::pod_cgroup::{HostCgroups, PodCgroups};
use berth_kubelet::pod_worker::{PodManager, Shared};
use berth_kubelet::server::{self, Server, ServerConfig, metrics::KubeletMetrics};
use berth_kubelet::source::{ManifestSource, SourceConfig};
use berth_kubelet::static_pod::NodeName;
use berth_kubelet::status::PodStatusStore;
use berth_kubelet::volume::{DEFAULT_ROOT, VolumeManager};
use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};

#[derive(Debug, Parser)]
pub struct Args {
    /// A KubeletConfiguration file (kubelet.config.k8s.io/v1beta1, YAML or
    /// JSON); flags given on the command line win over it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The directory of static pod manifests (YAML or JSON), watched for
    /// changes; or `staticPodPath` in --config.
    #[arg(long)]
    manifests: Option<PathBuf>,
    /// The CRI runtime's socket.
    #[arg(long, default_value = "unix:///run/berth/berth.sock")]
    runtime_endpoint: String,
    /// The kubelet's state: pods' volumes.
    #[arg(long, default_value = DEFAULT_ROOT)]
    root: PathBuf,
    /// The node's name, part of every static pod's name; default: the hostname.
    #[arg(long)]
    node_name: Option<String>,
    /// Where configMap and secret volumes read their data
    /// (`<dir>/{configmaps,secrets}/<namespace>/<name>/`); default: `<root>/config`.
    #[arg(long)]
    config_dir: Option<PathBuf>,
    /// Where containers' logs go, a directory per pod.
    #[arg(long, default_value = "/var/log/pods")]
    pod_log_dir: PathBuf,
    /// The node's address (`status.hostIP`, hostNetwork pods' IP, where
    /// their probes go); default: the source address of the default route.
    #[arg(long)]
    node_ip: Option<std::net::IpAddr>,
    /// Where the pods' cgroups go: `<root>/kubepods/{burstable,besteffort}/pod<uid>`
    /// (upstream's `--cgroup-root`). Default: the runtime's own cgroup root
    /// when it reports one (berth's does), else `/berth`.
    #[arg(long)]
    cgroup_root: Option<String>,
    /// The cgroup driver the runtime uses: cgroupfs or systemd (then systemd
    /// places the pods' slices and no pod cgroups are made here).
    #[arg(long, default_value = "cgroupfs", value_parser = ["cgroupfs", "systemd"])]
    cgroup_driver: String,
    /// The cluster DNS servers pods with `dnsPolicy: ClusterFirst` use; none:
    /// they get the node's resolver, as upstream without a cluster.
    #[arg(long, value_delimiter = ',')]
    cluster_dns: Vec<std::net::IpAddr>,
    /// The cluster's DNS domain.
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,
    /// Give containers without a seccomp profile the runtime's default
    /// (upstream's `seccompDefault`).
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    seccomp_default: bool,
    /// Unused images younger than this (seconds since first seen) are kept.
    #[arg(long, default_value_t = 120)]
    image_minimum_gc_age_seconds: u64,
    /// Make the QoS class and pod cgroups (upstream's `--cgroups-per-qos`).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    cgroups_per_qos: bool,
    /// Pull one image at a time (upstream's `serializeImagePulls`);
    /// `--serialize-image-pulls=false` lets pulls run in parallel.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    serialize_image_pulls: bool,
    /// With pulls not serialized, at most this many at once; default: no limit.
    #[arg(long)]
    max_parallel_image_pulls: Option<usize>,
    /// How often exited containers, dead sandboxes and unused images are
    /// garbage collected, in seconds.
    #[arg(long, default_value_t = 60)]
    gc_interval_seconds: u64,
    /// Exited instances kept per pod and container; negative: all.
    #[arg(long, default_value_t = 1, allow_negative_numbers = true)]
    maximum_dead_containers_per_container: i32,
    /// Exited containers kept on the node; negative: no limit.
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    maximum_dead_containers: i32,
    /// Image filesystem usage (percent) above which unused images are removed.
    #[arg(long, default_value_t = 85)]
    image_gc_high_threshold: u8,
    /// Image filesystem usage (percent) that image GC brings it down to.
    #[arg(long, default_value_t = 80)]
    image_gc_low_threshold: u8,
    /// How often each pod is synced when nothing happens, in seconds.
    #[arg(long, default_value_t = 5)]
    resync_seconds: u64,
    /// Log berth's debug messages.
    #[arg(long)]
    debug: bool,
    #[command(flatten)]
    server: ServerArgs,
}

/// The kubelet API's settings, named as upstream's flags (and its
/// KubeletConfiguration fields, which may fill them later).
#[derive(clap::Args, Clone, Debug)]
pub struct ServerArgs {
    /// The address the kubelet API listens on.
    #[arg(long, default_value = "0.0.0.0")]
    address: IpAddr,
    /// The kubelet API's port (HTTPS); 0 disables it.
    #[arg(long, default_value_t = server::DEFAULT_PORT)]
    port: u16,
    /// The plain-HTTP /healthz port; 0 disables it.
    #[arg(long, default_value_t = server::DEFAULT_HEALTHZ_PORT)]
    healthz_port: u16,
    /// The address the /healthz port listens on.
    #[arg(long, default_value = "127.0.0.1")]
    healthz_bind_address: IpAddr,
    /// The API's certificate (PEM, chain after the certificate); without it,
    /// a self-signed one is made once and kept in `<root>/pki/kubelet.crt`.
    #[arg(long, requires = "tls_private_key_file")]
    tls_cert_file: Option<PathBuf>,
    /// The key of --tls-cert-file (PEM).
    #[arg(long, requires = "tls_cert_file")]
    tls_private_key_file: Option<PathBuf>,
    /// Require client certificates signed by this CA (PEM); without it the
    /// API is open to anyone who reaches it.
    #[arg(long)]
    client_ca_file: Option<PathBuf>,
}

impl ServerArgs {
    /// The server's configuration for `node` with its state under `root`.
    pub fn config(&self, node: &str, root: &Path) -> ServerConfig {
        let mut c = ServerConfig::new(node, root);
        c.address = self.address;
        c.port = self.port;
        c.healthz_port = self.healthz_port;
        c.healthz_address = self.healthz_bind_address;
        c.tls.cert_file = self.tls_cert_file.clone();
        c.tls.key_file = self.tls_private_key_file.clone();
        c.tls.client_ca_file = self.client_ca_file.clone();
        let mut hosts = vec![node.to_owned()];
        if let Ok(h) = nix::unistd::gethostname() {
            hosts.push(h.to_string_lossy().into_owned());
        }
        hosts.push("localhost".to_owned());
        hosts.extend(local_addresses().iter().map(IpAddr::to_string));
        hosts.push("127.0.0.1".to_owned());
        let mut seen = std::collections::HashSet::new();
        hosts.retain(|h| !h.is_empty() && seen.insert(h.clone()));
        c.tls.hosts = hosts;
        c
    }
}

/// The node's addresses (IPv4 from the local routing table, IPv6 from
/// `/proc/net/if_inet6`), for the self-signed certificate's names.
fn local_addresses() -> Vec<IpAddr> {
    let mut out = Vec::new();
    // fib_trie lists each local address as "|-- ADDR" followed by "/32 host LOCAL".
    if let Ok(trie) = std::fs::read_to_string("/proc/net/fib_trie") {
        let mut last: Option<IpAddr> = None;
        for line in trie.lines() {
            let t = line.trim();
            if let Some(a) = t.strip_prefix("|-- ") {
                last = a.parse().ok();
            } else if t.contains("host LOCAL")
                && let Some(a) = last
                && !out.contains(&a)
            {
                out.push(a);
            }
        }
    }
    if let Ok(v6) = std::fs::read_to_string("/proc/net/if_inet6") {
        for line in v6.lines() {
            let Some(hex) = line.split_whitespace().next() else {
                continue;
            };
            if hex.len() != 32 {
                continue;
            }
            let bytes: Option<Vec<u8>> = (0..16)
                .map(|i| u8::from_str_radix(&hex[i * 2..i * 2 + 2], 16).ok())
                .collect();
            if let Some(b) = bytes.and_then(|b| <[u8; 16]>::try_from(b).ok()) {
                let a = IpAddr::V6(std::net::Ipv6Addr::from(b));
                if !out.contains(&a) {
                    out.push(a);
                }
            }
        }
    }
    out
}

pub fn main(mut args: Args, matches: Option<&clap::ArgMatches>) -> i32 {
    crate::daemon::init_logging(args.debug, "berth=debug,berth_kubelet=debug");
    let on_command_line = |id: &str| {
        matches.is_some_and(|m| m.value_source(id) == Some(clap::parser::ValueSource::CommandLine))
    };
    if let Some(path) = args.config.clone() {
        let applied = KubeletConfiguration::load(&path)
            .map_err(anyhow::Error::from)
            .and_then(|c| apply_config(&mut args, &c, &on_command_line).map(|()| c));
        match applied {
            Ok(c) => {
                let ignored = c.ignored();
                if !ignored.is_empty() {
                    tracing::warn!(config = %path.display(), "fields berth does not act on: {}", ignored.join(", "));
                }
            }
            Err(e) => {
                tracing::error!("{e:#}");
                eprintln!("berth node: {e:#}");
                return 1;
            }
        }
    }
    crate::daemon::main("node", || run(args))
}

/// Fills what `config` sets into `args`, except what was given on the
/// command line (`given`), as upstream's flags win over its config file.
fn apply_config(
    args: &mut Args,
    c: &KubeletConfiguration,
    given: &dyn Fn(&str) -> bool,
) -> Result<()> {
    let take = |id: &str| !given(id);
    let ip = |field: &str, v: &str| -> Result<IpAddr> {
        v.parse()
            .with_context(|| format!("{field}: {v:?} is not an IP address"))
    };
    if let Some(v) = &c.static_pod_path
        && take("manifests")
    {
        args.manifests = Some(v.clone());
    }
    if let Some(v) = &c.container_runtime_endpoint
        && take("runtime_endpoint")
    {
        args.runtime_endpoint = v.clone();
    }
    if let Some(d) = c.sync_frequency()
        && take("resync_seconds")
    {
        args.resync_seconds = d.as_secs().max(1);
    }
    if let Some(v) = &c.pod_logs_dir
        && take("pod_log_dir")
    {
        args.pod_log_dir = v.clone();
    }
    if let Some(v) = &c.cgroup_driver
        && take("cgroup_driver")
    {
        args.cgroup_driver = v.clone();
    }
    if let Some(v) = &c.cluster_dns
        && take("cluster_dns")
    {
        args.cluster_dns = v
            .iter()
            .map(|s| ip("clusterDNS", s))
            .collect::<Result<_>>()?;
    }
    if let Some(v) = &c.cluster_domain
        && take("cluster_domain")
    {
        args.cluster_domain = v.clone();
    }
    if let Some(v) = c.seccomp_default
        && take("seccomp_default")
    {
        args.seccomp_default = v;
    }
    if let Some(v) = c.serialize_image_pulls
        && take("serialize_image_pulls")
    {
        args.serialize_image_pulls = v;
    }
    if let Some(v) = c.max_parallel_image_pulls
        && take("max_parallel_image_pulls")
    {
        args.max_parallel_image_pulls = usize::try_from(v).ok();
    }
    if let Some(v) = c.image_gc_high_threshold_percent
        && take("image_gc_high_threshold")
    {
        args.image_gc_high_threshold = u8::try_from(v).unwrap_or(100);
    }
    if let Some(v) = c.image_gc_low_threshold_percent
        && take("image_gc_low_threshold")
    {
        args.image_gc_low_threshold = u8::try_from(v).unwrap_or(100);
    }
    if let Some(d) = c.image_minimum_gc_age()
        && take("image_minimum_gc_age_seconds")
    {
        args.image_minimum_gc_age_seconds = d.as_secs();
    }
    let s = &mut args.server;
    if let Some(v) = &c.address
        && take("address")
    {
        s.address = ip("address", v)?;
    }
    if let Some(v) = c.port
        && take("port")
    {
        s.port = v;
    }
    if let Some(v) = c.healthz_port
        && take("healthz_port")
    {
        s.healthz_port = v;
    }
    if let Some(v) = &c.healthz_bind_address
        && take("healthz_bind_address")
    {
        s.healthz_bind_address = ip("healthzBindAddress", v)?;
    }
    if let Some(v) = &c.tls_cert_file
        && take("tls_cert_file")
    {
        s.tls_cert_file = Some(v.clone());
    }
    if let Some(v) = &c.tls_private_key_file
        && take("tls_private_key_file")
    {
        s.tls_private_key_file = Some(v.clone());
    }
    if let Some(v) = c.client_ca_file()
        && take("client_ca_file")
    {
        s.client_ca_file = Some(v.to_owned());
    }
    anyhow::ensure!(
        s.tls_cert_file.is_some() == s.tls_private_key_file.is_some(),
        "tlsCertFile and tlsPrivateKeyFile go together"
    );
    if c.anonymous_auth() == Some(false) && s.client_ca_file.is_none() {
        anyhow::bail!(
            "authentication.anonymous.enabled is false but no clientCAFile is set: berth authenticates API clients by certificate only, so nobody could use the API"
        );
    }
    Ok(())
}

/// The address this host's traffic leaves from: the source the kernel picks
/// for the default route (a UDP connect sends nothing). `None` without a
/// default route.
fn default_route_ip() -> Option<std::net::IpAddr> {
    let probe = |bind: &str, to: &str| {
        let s = std::net::UdpSocket::bind(bind).ok()?;
        s.connect(to).ok()?;
        Some(s.local_addr().ok()?.ip())
    };
    // TEST-NET addresses: routed by the default route, never contacted.
    probe("0.0.0.0:0", "192.0.2.1:9").or_else(|| probe("[::]:0", "[2001:db8::1]:9"))
}

/// Where pod cgroups go when neither the flag nor the runtime says: inside
/// the cgroup every berth component uses.
const DEFAULT_CGROUP_ROOT: &str = "/berth";

/// The cgroup root the runtime creates containers under, from its verbose
/// status (berth's runtime reports `config.cgroupRoot`), so that the pod
/// cgroups the kubelet makes are the parents of the runtime's.
async fn runtime_cgroup_root(cri: &CriClient) -> Option<String> {
    let status = cri.status(true).await.ok()?;
    let config: serde_json::Value = serde_json::from_str(status.info.get("config")?).ok()?;
    let root = config.get("cgroupRoot")?.as_str()?.trim_matches('/');
    (!root.is_empty()).then(|| format!("/{root}"))
}

/// The machine's memory in bytes, from `/proc/meminfo`; 0 when unreadable.
fn memory_capacity() -> i64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            let line = m.lines().find(|l| l.starts_with("MemTotal:"))?;
            let kib: i64 = line.split_whitespace().nth(1)?.parse().ok()?;
            kib.checked_mul(1024)
        })
        .unwrap_or(0)
}

async fn run(args: Args) -> Result<()> {
    let manifests = args
        .manifests
        .clone()
        .context("no manifest directory: pass --manifests, or staticPodPath in --config")?;
    let cgroup_driver = if args.cgroup_driver == "systemd" {
        CgroupDriver::Systemd
    } else {
        CgroupDriver::Cgroupfs
    };
    // systemd places the pods' slices; cgroupfs pods get theirs from here.
    let pod_cgroups_here = args.cgroups_per_qos && cgroup_driver == CgroupDriver::Cgroupfs;
    let name = match &args.node_name {
        Some(n) => n.clone(),
        None => nix::unistd::gethostname()
            .context("reading the hostname; pass --node-name")?
            .to_string_lossy()
            .to_lowercase(),
    };
    let node = NodeName::new(&name)?;
    // Signals first, so that one during start-up still ends in a clean exit.
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;

    let metrics = KubeletMetrics::new();
    let cri = CriClient::connect(&args.runtime_endpoint, Duration::from_secs(30))
        .await
        .with_context(|| format!("connecting to the runtime at {}", args.runtime_endpoint))?
        .with_observer(Arc::new(metrics.clone()));
    let runtime_name = cri
        .version()
        .await
        .context("asking the runtime for its version")?
        .runtime_name;
    let cgroup_root = match &args.cgroup_root {
        Some(r) => r.clone(),
        None => runtime_cgroup_root(&cri)
            .await
            .unwrap_or_else(|| DEFAULT_CGROUP_ROOT.to_owned()),
    };
    anyhow::ensure!(
        cgroup_root.starts_with('/') && !cgroup_root.split('/').any(|c| c == ".." || c == "."),
        "--cgroup-root {cgroup_root:?}: an absolute cgroup path without . or .. is needed"
    );
    let memory = memory_capacity();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let config_dir = args
        .config_dir
        .clone()
        .unwrap_or_else(|| args.root.join("config"));
    let node_ctx = NodeContext {
        node_name: node.as_str().to_owned(),
        memory_capacity: memory,
        allocatable: Allocatable {
            cpu_millis: i64::try_from(cpus).unwrap_or(1).saturating_mul(1000),
            memory,
            ephemeral_storage: 0,
        },
        pod_log_root: args.pod_log_dir.clone(),
        cgroup_driver,
        cluster_dns: args.cluster_dns.clone(),
        cluster_domain: args.cluster_domain.clone(),
        seccomp_default: args.seccomp_default,
        cgroup_root: if pod_cgroups_here {
            cgroup_root.clone()
        } else {
            String::new()
        },
        host_ips: args.node_ip.or_else(default_route_ip).into_iter().collect(),
        config_dir: config_dir.clone(),
        ..NodeContext::default()
    };
    let pod_cgroups = if pod_cgroups_here {
        let fs = HostCgroups::discover().context("finding the cgroup hierarchies")?;
        let cgroups = PodCgroups::new(Arc::new(fs), &cgroup_root);
        cgroups
            .ensure_classes()
            .context("creating the QoS class cgroups (--cgroups-per-qos=false to leave cgroups to the runtime)")?;
        Some(cgroups)
    } else {
        None
    };
    let pulls = PullLimiter::new(args.serialize_image_pulls, args.max_parallel_image_pulls)?;
    let source = ManifestSource::start(SourceConfig::new(&manifests, node.clone()))
        .with_context(|| format!("watching {}", manifests.display()))?;
    tracing::info!(node = %node.as_str(), manifests = %manifests.display(), "berth node running static pods");
    let gc = GarbageCollector::new(
        cri.clone(),
        ContainerPolicy {
            max_per_pod_container: args.maximum_dead_containers_per_container,
            max_containers: args.maximum_dead_containers,
            ..ContainerPolicy::default()
        },
        ImagePolicy {
            high_threshold_percent: args.image_gc_high_threshold,
            low_threshold_percent: args.image_gc_low_threshold,
            min_age: Duration::from_secs(args.image_minimum_gc_age_seconds),
        },
    )?;
    let statuses = PodStatusStore::new();
    let api = Server::start(
        args.server.config(node.as_str(), &args.root),
        cri.clone(),
        statuses.clone(),
        metrics,
    )
    .await?;
    let manager = PodManager::new(Shared {
        cri,
        volumes: VolumeManager::new(&args.root, config_dir),
        node: node_ctx,
        resync: Duration::from_secs(args.resync_seconds.max(1)),
        statuses,
        runtime_name,
        pod_cgroups,
        pulls,
    })
    .with_gc(gc, Duration::from_secs(args.gc_interval_seconds.max(1)));
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: stopping all pods"),
            _ = int.recv() => tracing::info!("SIGINT: stopping all pods"),
        }
    };
    manager.run(source.subscribe(), shutdown).await?;
    drop(source);
    api.shutdown().await;
    tracing::info!("all pods stopped, exiting");
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, FromArgMatches};

    use super::*;

    fn with_config(argv: &[&str], config: &str) -> Result<Args> {
        let m = Args::command()
            .try_get_matches_from(std::iter::once("node").chain(argv.iter().copied()))?;
        let mut args = Args::from_arg_matches(&m)?;
        let c = KubeletConfiguration::parse(Path::new("kubelet.yaml"), config)?;
        let given = |id: &str| m.value_source(id) == Some(clap::parser::ValueSource::CommandLine);
        apply_config(&mut args, &c, &given)?;
        Ok(args)
    }

    const CONFIG: &str = "apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
staticPodPath: /etc/kubernetes/manifests
syncFrequency: 1m
port: 11250
healthzPort: 0
clusterDNS: [10.96.0.10]
clusterDomain: example.local
cgroupDriver: systemd
serializeImagePulls: false
maxParallelImagePulls: 3
imageMinimumGCAge: 5m
authentication:
  x509: {clientCAFile: /etc/ca.crt}
";

    #[test]
    fn the_file_fills_what_the_flags_leave() {
        let a = with_config(&[], CONFIG).unwrap();
        assert_eq!(
            a.manifests.as_deref(),
            Some(Path::new("/etc/kubernetes/manifests"))
        );
        assert_eq!(a.resync_seconds, 60);
        assert_eq!((a.server.port, a.server.healthz_port), (11250, 0));
        assert_eq!(a.cluster_dns, ["10.96.0.10".parse::<IpAddr>().unwrap()]);
        assert_eq!(a.cluster_domain, "example.local");
        assert_eq!(a.cgroup_driver, "systemd");
        assert!(!a.serialize_image_pulls);
        assert_eq!(a.max_parallel_image_pulls, Some(3));
        assert_eq!(a.image_minimum_gc_age_seconds, 300);
        assert_eq!(
            a.server.client_ca_file.as_deref(),
            Some(Path::new("/etc/ca.crt"))
        );
    }

    #[test]
    fn flags_on_the_command_line_win() {
        let a = with_config(
            &[
                "--manifests",
                "/srv/pods",
                "--port",
                "12000",
                "--resync-seconds",
                "7",
            ],
            CONFIG,
        )
        .unwrap();
        assert_eq!(a.manifests.as_deref(), Some(Path::new("/srv/pods")));
        assert_eq!(a.server.port, 12000);
        assert_eq!(a.resync_seconds, 7);
        // What the flags left still comes from the file.
        assert_eq!(a.cluster_domain, "example.local");
    }

    #[test]
    fn an_api_nobody_could_use_is_refused() {
        let e = with_config(
            &[],
            "apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
authentication: {anonymous: {enabled: false}}
",
        )
        .unwrap_err();
        assert!(e.to_string().contains("clientCAFile"), "{e}");
        let e = with_config(
            &[],
            "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\naddress: here\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("address"), "{e}");
    }
}
