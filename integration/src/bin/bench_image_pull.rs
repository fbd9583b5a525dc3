//! Benchmark: pull and unpack of a ~100 MB multi-layer image from a local
//! registry, berth against containerd 1.6; then the time to create a
//! container's overlay snapshot of it.
//!
//! cargo run --release -p berth-integration --bin bench_image_pull -- \
//!     [--n 5] [--berth PATH] [--snapshots 50]
//!
//! Starts Debian's docker-registry on 127.0.0.1, pushes the fixtures' `big`
//! image, then alternately runs `berth image pull` (fresh empty root each
//! time) and `ctr images pull --plain-http` (fresh private containerd each
//! time), 1 warm-up + N timed runs each. Prints median / p90 wall time and
//! peak memory of each, with berth/containerd ratios, then median / p90 of
//! `ImageStore::prepare_rootfs` on the pulled image, called in-process.
//! See bench/README.md.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use berth_integration::bench::{default_berth, percentile};
use berth_integration::containerd::{self, Containerd};
use berth_integration::images;
use berth_integration::proc;
use berth_integration::registry::{Client, Registry};
use berth_integration::workdir::{mounts_below, tempdir};
use berth_runtime::config::RegistryConfig;
use berth_runtime::image::store::ImageStore;

struct Args {
    n: usize,
    berth: PathBuf,
    snapshots: usize,
}

fn usage() -> ! {
    eprintln!("usage: bench_image_pull [--n N (>= 3)] [--berth PATH] [--snapshots M (>= 1)]");
    std::process::exit(2);
}

fn parse_args() -> Result<Args> {
    let mut n = 5;
    let mut snapshots = 50;
    let mut berth = None;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "--n" => n = val().parse().context("--n")?,
            "--snapshots" => snapshots = val().parse().context("--snapshots")?,
            "--berth" => berth = Some(PathBuf::from(val())),
            _ => usage(),
        }
    }
    ensure!(n >= 3, "--n must be at least 3");
    ensure!(snapshots >= 1, "--snapshots must be at least 1");
    let berth = match berth {
        Some(p) => p,
        None => default_berth()?,
    };
    Ok(Args {
        n,
        berth: std::fs::canonicalize(&berth).with_context(|| berth.display().to_string())?,
        snapshots,
    })
}

/// Runs `cmd` to completion with stdout discarded and stderr to `err_file`;
/// returns the wall time from spawn to exit and ru_maxrss (KiB).
fn timed(mut cmd: Command, err_file: &Path) -> Result<(Duration, u64)> {
    let what = format!("{cmd:?}");
    let t0 = Instant::now();
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(err_file)?)
        .spawn()
        .with_context(|| format!("spawning {what}"))?;
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: zeroed rusage is a valid initial value; wait4 reaps our child
    // (std's Child is not waited on afterwards).
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    let wall = t0.elapsed();
    ensure!(r == pid, "wait4: {}", std::io::Error::last_os_error());
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        bail!(
            "{what} failed (status {status:#x}): {}",
            std::fs::read_to_string(err_file).unwrap_or_default()
        );
    }
    Ok((wall, ru.ru_maxrss as u64))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Writes back every dirty page, so that one run's writeback does not land
/// in the next run's timing (both pullers leave ~200 MB to write).
fn sync_all() {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
}

/// The name of the filesystem type holding `p`, for the report.
fn fs_type(p: &Path) -> Result<String> {
    let c = std::ffi::CString::new(p.as_os_str().as_bytes())?;
    // SAFETY: zeroed statfs is a valid out-parameter; `c` is a valid C string.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    ensure!(
        r == 0,
        "statfs {}: {}",
        p.display(),
        std::io::Error::last_os_error()
    );
    Ok(match st.f_type {
        0xEF53 => "ext4".into(),
        0x0102_1994 => "tmpfs".into(),
        0x5846_5342 => "xfs".into(),
        0x9123_683E => "btrfs".into(),
        0x794C_7630 => "overlayfs".into(),
        t => format!("fs type {t:#x}"),
    })
}

/// VmHWM (peak resident set) of a process, KiB.
fn hwm_kib(pid: i32) -> Result<u64> {
    proc::status_field(pid, "VmHWM")
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| anyhow!("no VmHWM for pid {pid}"))
}

/// The pid of the daemon of `c` (the fixture does not expose it): the
/// `containerd` process whose command line names its config file.
fn daemon_pid(c: &Containerd) -> Result<i32> {
    let config = c.dir().join("config.toml");
    let config = config.to_string_lossy();
    proc::pids()
        .into_iter()
        .find(|&p| {
            let cl = proc::cmdline(p);
            cl.starts_with("containerd ") && cl.contains(config.as_ref())
        })
        .ok_or_else(|| anyhow!("containerd daemon of {} not found", c.dir().display()))
}

fn ctr_pull(c: &Containerd, reference: &str) -> Command {
    let mut cmd = Command::new("ctr");
    cmd.arg("--address")
        .arg(&c.socket)
        .arg("--namespace")
        .arg(&c.namespace)
        .args(["images", "pull", "--plain-http", reference]);
    cmd
}

/// Detaches whatever is still mounted below the bench's directory, so that
/// its removal cannot fail (or reach into a mount) after an error.
struct Unmounter(PathBuf);

impl Drop for Unmounter {
    fn drop(&mut self) {
        for m in mounts_below(&self.0).into_iter().rev() {
            let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

#[derive(Default)]
struct Samples {
    berth_wall: Vec<Duration>,
    berth_rss: Vec<u64>,
    ctrd_wall: Vec<Duration>,
    ctr_rss: Vec<u64>,
    daemon_hwm: Vec<u64>,
    daemon_base: Vec<u64>,
}

impl Samples {
    fn daemon_delta(&self) -> Vec<u64> {
        self.daemon_hwm
            .iter()
            .zip(&self.daemon_base)
            .map(|(h, b)| h.saturating_sub(*b))
            .collect()
    }
}

/// Hidden mode of this binary, run as a child: builds the `big` image,
/// pushes it to the registry at `url` and prints its layer count and size.
/// The image (~200 MB with its tar) must never be in the bench process:
/// a child spawned with posix_spawn (CLONE_VM) inherits its parent's peak
/// RSS as the start of its own ru_maxrss, which would then hide the
/// pullers' real peak.
const PUSH_MODE: &str = "--push-big-to";

fn push_big(url: &str) -> Result<()> {
    let image = images::big()?;
    Client::new(url, None).push("big", "latest", image)?;
    let size: usize = image.layers.iter().map(|l| l.data.len()).sum();
    println!("{} {size}", image.layers.len());
    Ok(())
}

/// Builds and pushes `big` in a child process (see [`PUSH_MODE`]); returns
/// its layer count and compressed size.
fn push_big_in_child(reg: &Registry) -> Result<(usize, usize)> {
    let exe = std::env::current_exe().context("locating this binary")?;
    let out = Command::new(exe)
        .args([PUSH_MODE, &reg.url()])
        .stderr(Stdio::inherit())
        .output()
        .context("running the push child")?;
    ensure!(out.status.success(), "pushing the big image failed");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut it = text.split_whitespace().map(str::parse::<usize>);
    match (it.next(), it.next()) {
        (Some(Ok(layers)), Some(Ok(size))) => Ok((layers, size)),
        _ => bail!("unexpected output of the push child: {text:?}"),
    }
}

fn main() -> Result<()> {
    let mut argv = std::env::args().skip(1);
    if argv.next().as_deref() == Some(PUSH_MODE) {
        let url = argv.next().unwrap_or_else(|| usage());
        return push_big(&url);
    }
    let args = parse_args()?;
    // SAFETY: geteuid has no preconditions.
    ensure!(
        unsafe { libc::geteuid() } == 0,
        "run as root (containerd and overlay mounts)"
    );
    containerd::check_installed()?;

    let work = tempdir("bench-pull-")?;
    let _unmount = Unmounter(work.path().to_path_buf());
    let fs = fs_type(work.path())?;
    if fs == "tmpfs" {
        eprintln!(
            "bench: WARNING: {} is on tmpfs, not a disk",
            work.path().display()
        );
    }
    // An empty runtime config: /etc/berth/runtime.toml must not count.
    let config = work.path().join("runtime.toml");
    std::fs::write(&config, "")?;
    let err_file = work.path().join("stderr");

    let t = Instant::now();
    let reg = Registry::start()?;
    let (n_layers, size) = push_big_in_child(&reg)?;
    let reference = reg.reference("big:latest");
    eprintln!(
        "bench: built and pushed {reference} ({n_layers} layers, {:.1} MB) in {:.1} s",
        size as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );
    eprintln!(
        "bench: {} runs each of {} and containerd {} after 1 warm-up each; scratch {} ({fs}); \
         bench process VmHWM {} KiB",
        args.n,
        args.berth.display(),
        containerd_version(),
        work.path().display(),
        hwm_kib(std::process::id() as i32).unwrap_or(0)
    );

    let mut s = Samples::default();
    let mut last_root = None;
    for i in 0..=args.n {
        let measured = i > 0;

        let root = work.path().join(format!("berth-{i}"));
        std::fs::create_dir(&root)?;
        let mut cmd = Command::new(&args.berth);
        cmd.arg("image")
            .arg("--root")
            .arg(&root)
            .arg("--config")
            .arg(&config)
            .args(["pull", &reference]);
        sync_all();
        let (wall, rss) = timed(cmd, &err_file).context("berth image pull")?;
        if !measured {
            let layers = count_layers(&root)?;
            ensure!(
                layers == n_layers,
                "berth unpacked {layers} layers, expected {n_layers}"
            );
            eprintln!("bench: berth warm-up: {layers} layers unpacked");
        }
        if measured {
            s.berth_wall.push(wall);
            s.berth_rss.push(rss);
        }
        // Keep the last store for the snapshot timing; free the disk of the others.
        if let Some(prev) = last_root.replace(root) {
            std::fs::remove_dir_all(&prev)
                .with_context(|| format!("removing {}", Path::display(&prev)))?;
        }

        let c = Containerd::start()?;
        let pid = daemon_pid(&c)?;
        let base = hwm_kib(pid)?;
        sync_all();
        let r = timed(ctr_pull(&c, &reference), &err_file);
        let (wall, rss) = containerd::with_log(&c, r).context("ctr images pull")?;
        let hwm = hwm_kib(pid)?;
        if !measured {
            check_unpacked(&c, n_layers)?;
        }
        if measured {
            s.ctrd_wall.push(wall);
            s.ctr_rss.push(rss);
            s.daemon_hwm.push(hwm);
            s.daemon_base.push(base);
        }
        drop(c);
    }

    report(&args, &reference, n_layers, size, &s);

    let root = last_root.context("no berth store")?;
    // The last containerd run's writes would otherwise land in the first
    // snapshots' fsyncs.
    sync_all();
    snapshot_bench(&root, &reference, args.snapshots)
}

fn containerd_version() -> String {
    Command::new("containerd")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .nth(2)
                .map(String::from)
        })
        .unwrap_or_else(|| "?".into())
}

/// Unpacked layers in a berth store (entries of `layers/` not hidden).
fn count_layers(root: &Path) -> Result<usize> {
    let mut n = 0;
    for e in std::fs::read_dir(root.join("layers"))? {
        if !e?.file_name().as_bytes().starts_with(b".") {
            n += 1;
        }
    }
    Ok(n)
}

/// `ctr images pull` unpacks into the default (overlayfs) snapshotter; checks
/// it did, so that both pullers do the same work.
fn check_unpacked(c: &Containerd, n_layers: usize) -> Result<()> {
    let out = c
        .ctr(&["snapshots", "--snapshotter", "overlayfs", "ls"])?
        .check()?;
    let committed = out
        .stdout
        .lines()
        .filter(|l| l.split_whitespace().last() == Some("Committed"))
        .count();
    ensure!(
        committed == n_layers,
        "containerd has {committed} committed overlayfs snapshots, expected {n_layers}:\n{}",
        out.stdout
    );
    eprintln!("bench: containerd warm-up: {committed} overlayfs snapshots committed");
    Ok(())
}

fn report(args: &Args, reference: &str, n_layers: usize, size: usize, s: &Samples) {
    let delta = s.daemon_delta();
    let ctrd_total: Vec<u64> = s.ctr_rss.iter().zip(&delta).map(|(a, b)| a + b).collect();
    let row = |name: &str, wall: Option<&[Duration]>, rss: &[u64]| {
        let (m, p) = match wall {
            Some(w) => (
                format!("{:.0}", ms(percentile(w, 50.0))),
                format!("{:.0}", ms(percentile(w, 90.0))),
            ),
            None => (String::new(), String::new()),
        };
        println!(
            "{name:<26} {m:>10} {p:>10} {:>15} {:>15}",
            percentile(rss, 50.0),
            rss.iter().max().unwrap_or(&0)
        );
    };
    println!();
    println!(
        "pull + unpack of {reference} ({n_layers} layers, {:.1} MB), {} runs each (alternating)",
        size as f64 / 1e6,
        args.n
    );
    println!(
        "{:<26} {:>10} {:>10} {:>15} {:>15}",
        "", "median ms", "p90 ms", "median RSS KiB", "max RSS KiB"
    );
    row("berth image pull", Some(&s.berth_wall), &s.berth_rss);
    row(
        "containerd (ctr + Δdaemon)",
        Some(&s.ctrd_wall),
        &ctrd_total,
    );
    row("  ctr images pull", None, &s.ctr_rss);
    row("  daemon VmHWM delta", None, &delta);
    row("  daemon VmHWM", None, &s.daemon_hwm);
    let r = |b: f64, c: f64| if c > 0.0 { b / c } else { f64::NAN };
    let bw = ms(percentile(&s.berth_wall, 50.0));
    let cw = ms(percentile(&s.ctrd_wall, 50.0));
    let bm = percentile(&s.berth_rss, 50.0) as f64;
    println!(
        "{:<26} {:>10.2} {:>10.2} {:>15.2} {:>15.2}",
        "berth/containerd",
        r(bw, cw),
        r(
            ms(percentile(&s.berth_wall, 90.0)),
            ms(percentile(&s.ctrd_wall, 90.0))
        ),
        r(bm, percentile(&ctrd_total, 50.0) as f64),
        r(
            *s.berth_rss.iter().max().unwrap_or(&0) as f64,
            *ctrd_total.iter().max().unwrap_or(&0) as f64
        ),
    );
    let abs: Vec<u64> = s
        .ctr_rss
        .iter()
        .zip(&s.daemon_hwm)
        .map(|(a, b)| a + b)
        .collect();
    println!(
        "berth / (ctr + whole daemon VmHWM), median RSS: {:.2}",
        r(bm, percentile(&abs, 50.0) as f64)
    );
    println!(
        "throughput (median): berth {:.0} MB/s, containerd {:.0} MB/s",
        size as f64 / 1e6 / (bw / 1000.0),
        size as f64 / 1e6 / (cw / 1000.0)
    );
}

/// Times `prepare_rootfs` (and `remove_rootfs`) in-process on the pulled
/// image: a `berth image mount` would mostly measure process start-up.
fn snapshot_bench(root: &Path, reference: &str, m: usize) -> Result<()> {
    let store = ImageStore::open(root, &RegistryConfig::default())
        .with_context(|| format!("opening {}", root.display()))?;
    let mut prepare = Vec::with_capacity(m);
    let mut remove = Vec::with_capacity(m);
    let warmup = 3;
    for i in 0..m + warmup {
        let id = format!("bench-snap-{i}");
        let t0 = Instant::now();
        let rootfs = store
            .prepare_rootfs(reference, &id)
            .with_context(|| format!("prepare_rootfs {id}"))?;
        let tp = t0.elapsed();
        let checked = rootfs.join("data/layer0/file0.bin").is_file();
        let t1 = Instant::now();
        store
            .remove_rootfs(&id)
            .with_context(|| format!("remove_rootfs {id}"))?;
        let tr = t1.elapsed();
        ensure!(
            checked,
            "snapshot {id}: {} lacks the image's files",
            rootfs.display()
        );
        if i >= warmup {
            prepare.push(tp);
            remove.push(tr);
        }
    }
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!();
    println!(
        "overlay snapshot of the pulled image ({m} times, in-process ImageStore calls, after {warmup} warm-up)"
    );
    println!(
        "{:<26} {:>10} {:>10} {:>15}",
        "", "median µs", "p90 µs", "max µs"
    );
    for (name, v) in [("prepare_rootfs", &prepare), ("remove_rootfs", &remove)] {
        println!(
            "{name:<26} {:>10.0} {:>10.0} {:>15.0}",
            us(percentile(v, 50.0)),
            us(percentile(v, 90.0)),
            us(*v.iter().max().unwrap_or(&Duration::ZERO))
        );
    }
    let goal = Duration::from_millis(2);
    println!(
        "prepare_rootfs median {} the 2 ms goal",
        if percentile(&prepare, 50.0) <= goal {
            "meets"
        } else {
            "misses"
        }
    );
    Ok(())
}
