//! `berth node`: the kubelet in standalone mode. Runs the static pods of a
//! manifest directory on a CRI runtime, adopting the pods it already runs,
//! and on SIGTERM or SIGINT stops and removes them all and exits 0.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use berth_kubelet::cri_client::CriClient;
use berth_kubelet::cri_config::{Allocatable, NodeContext};
use berth_kubelet::pod_worker::{PodManager, Shared};
use berth_kubelet::source::{ManifestSource, SourceConfig};
use berth_kubelet::static_pod::NodeName;
use berth_kubelet::status::PodStatusStore;
use berth_kubelet::volume::{DEFAULT_ROOT, VolumeManager};
use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};

#[derive(Parser)]
pub struct Args {
    /// The directory of static pod manifests (YAML or JSON), watched for changes.
    #[arg(long)]
    manifests: PathBuf,
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
    /// The cgroup (a cgroupfs path) the pods' `kubepods` tree goes under;
    /// default: the hierarchy's root.
    #[arg(long, default_value = "/")]
    cgroup_root: String,
    /// How often each pod is synced when nothing happens, in seconds.
    #[arg(long, default_value_t = 5)]
    resync_seconds: u64,
    /// Log berth's debug messages.
    #[arg(long)]
    debug: bool,
}

pub fn main(args: Args) -> i32 {
    crate::daemon::init_logging(args.debug, "berth=debug,berth_kubelet=debug");
    crate::daemon::main("node", || run(args))
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

    let cri = CriClient::connect(&args.runtime_endpoint, Duration::from_secs(30))
        .await
        .with_context(|| format!("connecting to the runtime at {}", args.runtime_endpoint))?;
    anyhow::ensure!(
        args.cgroup_root.starts_with('/')
            && !args.cgroup_root.split('/').any(|c| c == ".." || c == "."),
        "--cgroup-root {:?}: an absolute cgroup path without . or .. is needed",
        args.cgroup_root
    );
    let memory = memory_capacity();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let node_ctx = NodeContext {
        node_name: node.as_str().to_owned(),
        memory_capacity: memory,
        allocatable: Allocatable {
            cpu_millis: i64::try_from(cpus).unwrap_or(1).saturating_mul(1000),
            memory,
            ephemeral_storage: 0,
        },
        pod_log_root: args.pod_log_dir.clone(),
        cgroup_root: args.cgroup_root.clone(),
        ..NodeContext::default()
    };
    let config_dir = args
        .config_dir
        .clone()
        .unwrap_or_else(|| args.root.join("config"));
    let source = ManifestSource::start(SourceConfig::new(&args.manifests, node.clone()))
        .with_context(|| format!("watching {}", args.manifests.display()))?;
    tracing::info!(node = %node.as_str(), manifests = %args.manifests.display(), "berth node running static pods");
    let manager = PodManager::new(Shared {
        cri,
        volumes: VolumeManager::new(&args.root, config_dir),
        node: node_ctx,
        resync: Duration::from_secs(args.resync_seconds.max(1)),
        statuses: PodStatusStore::new(),
    });
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: stopping all pods"),
            _ = int.recv() => tracing::info!("SIGINT: stopping all pods"),
        }
    };
    manager.run(source.subscribe(), shutdown).await?;
    drop(source);
    tracing::info!("all pods stopped, exiting");
    Ok(())
}
