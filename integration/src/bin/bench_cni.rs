//! Benchmark: ADD then DEL of the chain bridge + host-local + portmap +
//! loopback, berth's plugin executables against Debian's reference plugins on
//! the same config, and berth's in-process path.
//!
//! cargo build --release -p berth && \
//! cargo run --release -p berth-integration --bin bench_cni -- [--n 100] [--berth PATH]
//!
//! Everything runs inside a private "node" network namespace; each iteration
//! gets a fresh pod namespace (made outside the timer). The three modes run
//! round-robin, one ADD+DEL each per round, through berth's CNI client, so the
//! client's own cost (config, cache) is in every figure alike. See
//! bench/README.md.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use berth_cni::client::{Attachment, Client, NetworkConfig};
use berth_integration::bench::percentile;
use berth_integration::netns::NetNs;
use berth_integration::runtime::which;
use berth_integration::workdir::tempdir;
use serde_json::json;

const REFERENCE_DIR: &str = "/usr/lib/cni";

struct Args {
    n: usize,
    berth: PathBuf,
    /// Profiling aid: run one mode only (any N).
    only: Option<Mode>,
}

fn parse_args() -> Result<Args> {
    let mut n = 100;
    let mut berth = None;
    let mut only = None;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--n" => n = it.next().context("--n N")?.parse()?,
            "--berth" => berth = Some(PathBuf::from(it.next().context("--berth PATH")?)),
            "--only" => {
                only = Some(match it.next().as_deref() {
                    Some("reference") => Mode::Reference,
                    Some("berth") => Mode::Berth,
                    Some("in-process") => Mode::InProcess,
                    _ => bail!("--only reference|berth|in-process"),
                })
            }
            _ => bail!(
                "usage: bench_cni [--n N (>= 100)] [--berth PATH] [--only reference|berth|in-process]"
            ),
        }
    }
    ensure!(
        n >= 100 || only.is_some(),
        "--n must be at least 100 (fewer only with --only, for profiling)"
    );
    let berth = match berth {
        Some(b) => b,
        None => berth_integration::bench::default_berth()?,
    };
    ensure!(
        berth.is_file(),
        "{} not found: cargo build --release -p berth",
        berth.display()
    );
    Ok(Args { n, berth, only })
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Reference,
    Berth,
    InProcess,
}

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Mode::Reference => "reference (Debian)",
            Mode::Berth => "berth executables",
            Mode::InProcess => "berth in-process",
        }
    }
}

fn conflist(data_dir: &Path) -> serde_json::Value {
    json!({
        "cniVersion": "1.0.0",
        "name": "benchnet",
        "plugins": [
            {
                "type": "bridge",
                "bridge": "bench0",
                "isGateway": true,
                "ipMasq": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": "10.88.0.0/16"}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": data_dir,
                }
            },
            {"type": "portmap", "capabilities": {"portMappings": true}},
            {"type": "loopback"}
        ]
    })
}

fn main() -> Result<()> {
    let args = parse_args()?;
    for tool in ["ip", "nsenter", "nft", "iptables"] {
        ensure!(which(tool).is_some(), "{tool} is needed");
    }
    let scratch = tempdir("bench-cni-")?;
    // berth's executables: symlinks named after the plugins, as `berth cni
    // install` makes them.
    let bin = scratch.path().join("bin");
    std::fs::create_dir_all(&bin)?;
    for name in berth_cni::plugins::NAMES {
        std::os::unix::fs::symlink(&args.berth, bin.join(name))?;
    }
    let node = NetNs::new("benchnode")?;
    let modes: Vec<Mode> = match args.only {
        Some(m) => vec![m],
        None => vec![Mode::Reference, Mode::Berth, Mode::InProcess],
    };
    let n = args.n;
    let root = scratch.path().to_owned();
    let modes_in = modes.clone();
    let results =
        berth_cni::netns::run_in(&node.path(), move || -> Result<Vec<Vec<Duration>>> {
            let modes = modes_in;
            let mut times = vec![Vec::with_capacity(n); modes.len()];
            let mut clients = Vec::new();
            let mut nets = Vec::new();
            for (i, m) in modes.iter().enumerate() {
                let dirs = match m {
                    Mode::Reference => vec![PathBuf::from(REFERENCE_DIR)],
                    Mode::Berth | Mode::InProcess => vec![bin.clone()],
                };
                let mut c = Client::new(dirs, root.join(format!("cache-{i}")));
                if *m == Mode::InProcess {
                    c = c.with_builtin(berth_cni::plugins::builtin);
                }
                clients.push(c);
                let list = conflist(&root.join(format!("ipam-{i}")));
                nets.push(NetworkConfig::from_list_value(&list, "bench")?);
            }
            // One warm-up round, then N timed rounds.
            for round in 0..=n {
                for (i, m) in modes.iter().enumerate() {
                    let pod = NetNs::new("benchpod")?;
                    let id = format!("bench-{i}-{round}");
                    let mut att = Attachment::new(&id, Some(&pod.path()), "eth0");
                    att.capability_args.insert(
                        "portMappings".into(),
                        json!([{"hostPort": 18080, "containerPort": 80, "protocol": "tcp"}]),
                    );
                    let start = Instant::now();
                    clients[i]
                        .add(&nets[i], &att)
                        .with_context(|| format!("{} ADD", m.label()))?;
                    clients[i]
                        .del(&nets[i], &att)
                        .with_context(|| format!("{} DEL", m.label()))?;
                    let took = start.elapsed();
                    if round > 0 {
                        times[i].push(took);
                    }
                }
            }
            Ok(times)
        })??;
    drop(node);

    println!("\nADD then DEL of bridge + host-local + portmap + loopback, {n} each (round-robin)");
    println!(
        "{:<22} {:>10} {:>10} {:>10}",
        "plugins", "median ms", "p99 ms", "max ms"
    );
    let mut medians = Vec::new();
    for (m, t) in modes.iter().zip(&results) {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let median = percentile(t, 50.0);
        let p99 = percentile(t, 99.0);
        let max = percentile(t, 100.0);
        medians.push((median, p99));
        println!(
            "{:<22} {:>10.2} {:>10.2} {:>10.2}",
            m.label(),
            ms(median),
            ms(p99),
            ms(max)
        );
    }
    if medians.len() == 3 {
        let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
        println!(
            "{:<22} {:>10.2} {:>10.2}",
            "executables/reference",
            ratio(medians[1].0, medians[0].0),
            ratio(medians[1].1, medians[0].1)
        );
        println!(
            "{:<22} {:>10.2} {:>10.2}",
            "in-process/reference",
            ratio(medians[2].0, medians[0].0),
            ratio(medians[2].1, medians[0].1)
        );
    }
    Ok(())
}
