//! What the benchmarks (src/bin/bench_*.rs) share: the berth binary they
//! measure and the statistics they print.

use std::path::PathBuf;

use anyhow::{Result, bail};

use crate::runtime::target_dir;

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
