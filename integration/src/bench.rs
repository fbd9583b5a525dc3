//! What the benchmarks (src/bin/bench_*.rs) share: the berth binary they
//! measure, the registry they pull from, and the statistics they print.

use std::path::PathBuf;

use anyhow::{Result, bail};

use crate::images;
use crate::oci::{Format, Image, ImageConfig};
use crate::registry::Registry;
use crate::runtime::target_dir;

/// The workload image in [`registry`]: busybox.
pub const BUSYBOX: &str = "bench/busybox:1";
/// The sandbox image in [`registry`]: containerd needs one; a long sleep in
/// busybox plays pause.
pub const PAUSE: &str = "bench/pause:1";
const PAUSE_ENTRYPOINT: [&str; 2] = ["/bin/sleep", "2147483647"];

/// A registry holding [`BUSYBOX`] and [`PAUSE`].
pub fn registry() -> Result<Registry> {
    let registry = Registry::start()?;
    let (repo, tag) = split(BUSYBOX);
    registry.push(repo, tag, images::busybox()?)?;
    let pause = Image::new(
        Format::Oci,
        &ImageConfig {
            entrypoint: Some(PAUSE_ENTRYPOINT.map(String::from).to_vec()),
            cmd: None,
            ..images::busybox_config()
        },
        images::busybox()?.layers.clone(),
    )?;
    let (repo, tag) = split(PAUSE);
    registry.push(repo, tag, &pause)?;
    Ok(registry)
}

/// `repo:tag` as (repo, tag); the constants above all have a tag.
fn split(reference: &str) -> (&str, &str) {
    reference.rsplit_once(':').unwrap_or((reference, "latest"))
}

/// The 1, 5 and 15 minute load averages, as /proc/loadavg has them.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// `target/release/berth`, else the debug build with a warning (it is much
/// slower), else an error saying how to build it.
pub fn default_berth() -> Result<PathBuf> {
    let release = target_dir().join("release/berth");
    let debug = target_dir().join("debug/berth");
    if release.is_file() {
        Ok(release)
    } else if debug.is_file() {
        eprintln!(
            "bench: WARNING: no target/release/berth, using the debug build {} \
             (much slower; run `cargo build --release -p berth`)",
            debug.display()
        );
        Ok(debug)
    } else {
        bail!(
            "no target/{{release,debug}}/berth: run `cargo build --release -p berth` or pass --berth"
        )
    }
}

/// The berth binary a bench runs: `given`, else [`default_berth`]; checked
/// to exist and made absolute, since containerd runs berth's CNI plugins
/// through symlinks to it, which must resolve from any directory.
pub fn berth_path(given: Option<PathBuf>) -> Result<PathBuf> {
    let berth = match given {
        Some(b) => b,
        None => default_berth()?,
    };
    anyhow::ensure!(
        berth.is_file(),
        "{} not found: cargo build --release -p berth",
        berth.display()
    );
    Ok(std::fs::canonicalize(&berth)?)
}

/// The nearest-rank `p`th percentile (`p` in 0..=100) of a non-empty sample.
pub fn percentile<T: Copy + Ord>(v: &[T], p: f64) -> T {
    let mut s = v.to_vec();
    s.sort();
    let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
    s[rank.clamp(1, s.len()) - 1]
}

/// (Pss, Rss) in KiB from /proc/PID/smaps_rollup.
pub fn rollup(pid: i32) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let field = |key: &str| -> Option<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(key))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    Some((field("Pss:")?, field("Rss:")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), 50);
        assert_eq!(percentile(&v, 99.0), 99);
        assert_eq!(percentile(&v, 100.0), 100);
        assert_eq!(percentile(&[7], 90.0), 7);
    }
}
