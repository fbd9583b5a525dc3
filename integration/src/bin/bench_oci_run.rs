//! Benchmark: `run` of a /bin/true container with berth-oci and runc.
//!
//! cargo run --release -p berth-integration --bin bench_oci_run -- \
//!     [--n 50] [--berth PATH] [--runc PATH] [--monitors 10]
//!
//! Runs the two runtimes alternately N times each on the same bundle and
//! prints median / p90 wall time and peak RSS (ru_maxrss from wait4) of each,
//! with berth/runc ratios; then the resident memory of berth's per-container
//! monitor, over M containers created with `--monitor always`.
//! See bench/README.md.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use berth_integration::bench::{default_berth, percentile};
use berth_integration::proc;
use berth_integration::rootfs::clone_rootfs;
use berth_integration::runtime::which;
use berth_integration::spec::Spec;
use berth_integration::workdir::tempdir;

struct Args {
    n: usize,
    berth: PathBuf,
    runc: PathBuf,
    monitors: usize,
}

fn usage() -> ! {
    eprintln!("usage: bench_oci_run [--n N (>= 50)] [--berth PATH] [--runc PATH] [--monitors M]");
    std::process::exit(2);
}

fn parse_args() -> Result<Args> {
    let mut n = 50;
    let mut monitors = 10;
    let mut berth = None;
    let mut runc = None;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "--n" => n = val().parse().context("--n")?,
            "--monitors" => monitors = val().parse().context("--monitors")?,
            "--berth" => berth = Some(PathBuf::from(val())),
            "--runc" => runc = Some(PathBuf::from(val())),
            "-h" | "--help" => usage(),
            _ => usage(),
        }
    }
    ensure!(n >= 50, "--n must be at least 50");
    let berth = match berth {
        Some(p) => p,
        None => default_berth()?,
    };
    let runc = match runc {
        Some(p) => p,
        None => which("runc").context("runc not found; pass --runc")?,
    };
    Ok(Args {
        n,
        berth: std::fs::canonicalize(&berth).with_context(|| berth.display().to_string())?,
        runc: std::fs::canonicalize(&runc).with_context(|| runc.display().to_string())?,
        monitors,
    })
}

struct Tool {
    name: &'static str,
    exec: PathBuf,
    root: PathBuf,
    wall: Vec<Duration>,
    rss_kib: Vec<u64>,
}

/// Runs `exec --root ROOT args...`, returning wall time and ru_maxrss (KiB).
fn timed(exec: &Path, root: &Path, args: &[&str], err_file: &Path) -> Result<(Duration, u64)> {
    let t0 = Instant::now();
    let child = Command::new(exec)
        .arg("--root")
        .arg(root)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(err_file)?)
        .spawn()
        .with_context(|| format!("spawning {}", exec.display()))?;
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
            "`{} {}` failed (status {status:#x}): {}",
            exec.display(),
            args.join(" "),
            std::fs::read_to_string(err_file).unwrap_or_default()
        );
    }
    Ok((wall, ru.ru_maxrss as u64))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let work = tempdir("bench-")?;
    let bundle = work.path().join("bundle");
    std::fs::create_dir(&bundle)?;
    clone_rootfs(&bundle.join("rootfs"))?;
    // runc spec's default, except: no terminal (no tty here), /bin/true, and
    // an absolute cgroupsPath (runc would otherwise nest it below the
    // caller's cgroup). Runs are sequential, so one path serves all.
    let spec = Spec::runc_default()
        .terminal(false)
        .args(&["/bin/true"])
        .cgroups_path(&format!("/berth-bench-{}", std::process::id()));
    spec.write(&bundle.join("config.json"))?;

    // State roots on tmpfs under /run, where both runtimes keep them by
    // default (/run/runc, /run/berth-oci): on a disk filesystem, inode
    // allocation for the state files would dominate what is measured.
    let state = RunDir::new()?;
    let link_dir = work.path().join("bin");
    std::fs::create_dir(&link_dir)?;
    let berth_exec = if args.berth.to_string_lossy().contains("runc") {
        args.berth.clone()
    } else {
        let l = link_dir.join("berth-oci");
        std::os::unix::fs::symlink(&args.berth, &l)?;
        l
    };
    let mut tools = [
        Tool {
            name: "berth-oci",
            exec: berth_exec,
            root: state.0.join("root-berth"),
            wall: Vec::new(),
            rss_kib: Vec::new(),
        },
        Tool {
            name: "runc",
            exec: args.runc.clone(),
            root: state.0.join("root-runc"),
            wall: Vec::new(),
            rss_kib: Vec::new(),
        },
    ];
    let b = bundle.to_string_lossy().into_owned();
    let err_file = work.path().join("stderr");
    eprintln!(
        "bench: {} runs each of {} and {} (warm-up: 3 each)",
        args.n,
        args.berth.display(),
        args.runc.display()
    );
    for i in 0..args.n + 3 {
        for t in tools.iter_mut() {
            let id = format!("bench-{}-{i}", t.name);
            let (wall, rss) = timed(&t.exec, &t.root, &["run", "--bundle", &b, &id], &err_file)?;
            if i >= 3 {
                t.wall.push(wall);
                t.rss_kib.push(rss);
            }
        }
    }

    println!();
    println!("`run` of /bin/true, {} runs each (alternating)", args.n);
    println!(
        "{:<10} {:>11} {:>11} {:>16} {:>14}",
        "runtime", "median ms", "p90 ms", "median RSS KiB", "max RSS KiB"
    );
    let mut rows = Vec::new();
    for t in &tools {
        let row = (
            ms(percentile(&t.wall, 50.0)),
            ms(percentile(&t.wall, 90.0)),
            percentile(&t.rss_kib, 50.0),
            *t.rss_kib.iter().max().unwrap_or(&0),
        );
        println!(
            "{:<10} {:>11.2} {:>11.2} {:>16} {:>14}",
            t.name, row.0, row.1, row.2, row.3
        );
        rows.push(row);
    }
    let (b, r) = (rows[0], rows[1]);
    println!(
        "{:<10} {:>11.2} {:>11.2} {:>16.2} {:>14.2}",
        "berth/runc",
        b.0 / r.0,
        b.1 / r.1,
        b.2 as f64 / r.2 as f64,
        b.3 as f64 / r.3 as f64
    );

    println!();
    if args.berth.to_string_lossy().contains("runc") || args.monitors == 0 {
        println!("monitor RSS: n/a (the berth binary is runc, or --monitors 0)");
        return Ok(());
    }
    monitor_rss(&tools[0].exec, work.path(), &bundle, args.monitors)
}

/// Creates M `sleep 1000` containers with `--monitor always`, reads the
/// VmRSS of each monitor (the parent of the container init), then deletes them.
fn monitor_rss(exec: &Path, work: &Path, bundle_dir: &Path, m: usize) -> Result<()> {
    let root = work.join("root-monitor");
    let mut ids = Vec::new();
    let mut bundles = Vec::new();
    let result = (|| -> Result<Vec<u64>> {
        let mut rss = Vec::new();
        for i in 0..m {
            let id = format!("bench-mon-{}-{i}", std::process::id());
            let dir = work.join(format!("mon-bundle-{i}"));
            std::fs::create_dir(&dir)?;
            Spec::runc_default()
                .terminal(false)
                .args(&["sleep", "1000"])
                .root_path(&bundle_dir.join("rootfs"))
                .cgroups_path(&format!("/berth-bench-{id}"))
                .write(&dir.join("config.json"))?;
            bundles.push(dir.clone());
            let d = dir.to_string_lossy().into_owned();
            let err = work.join("mon-stderr");
            ids.push(id.clone());
            let g = ["--monitor", "always"];
            timed(
                exec,
                &root,
                &[&g[..], &["create", "--bundle", &d, &id]].concat(),
                &err,
            )?;
            timed(exec, &root, &[&g[..], &["start", &id]].concat(), &err)?;
            let out = Command::new(exec)
                .arg("--root")
                .arg(&root)
                .args(["state", &id])
                .output()?;
            let st: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| {
                format!("state of {id}: {}", String::from_utf8_lossy(&out.stderr))
            })?;
            let init = st["pid"].as_i64().context("no pid in state")? as i32;
            let monitor = st
                .pointer("/berth/monitorPid")
                .and_then(|v| v.as_i64())
                .map(|p| p as i32)
                .or_else(|| proc::ppid(init))
                .context("no monitor pid")?;
            rss.push(
                proc::rss_kib(monitor).with_context(|| format!("VmRSS of monitor {monitor}"))?,
            );
        }
        Ok(rss)
    })();
    for id in &ids {
        let _ = Command::new(exec)
            .arg("--root")
            .arg(&root)
            .args(["delete", "--force", id])
            .stderr(Stdio::null())
            .status();
    }
    let rss = result?;
    println!("berth monitor (--monitor always), {m} containers running `sleep 1000`");
    println!(
        "{:<10} {:>16} {:>14} {:>14}",
        "", "median RSS KiB", "min RSS KiB", "max RSS KiB"
    );
    println!(
        "{:<10} {:>16} {:>14} {:>14}",
        "monitor",
        percentile(&rss, 50.0),
        rss.iter().min().unwrap_or(&0),
        rss.iter().max().unwrap_or(&0)
    );
    Ok(())
}

/// A scratch directory under /run (tmpfs), removed on drop.
struct RunDir(PathBuf);

impl RunDir {
    fn new() -> Result<RunDir> {
        let p = PathBuf::from(format!("/run/berth-bench-{}", std::process::id()));
        std::fs::create_dir_all(&p)?;
        Ok(RunDir(p))
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
