//! Resource usage of a container cgroup.
//!
//! Parsed here rather than with cgroups-rs's stat readers: those read ~20
//! files per call (numa_stat, kmem, per-cpu strings), turn every error into
//! 0, `unwrap()` kernel text (`parse_oom_control`, `parse_numa_stat`) and have
//! no v2 working set or structured throttling data.

use serde::Serialize;

use super::CgroupError;
use super::fsutil::keyed_value;
use super::v1::Ctl;

/// Limits at or above this are "unlimited" (v1 reports unlimited as the
/// largest page-aligned i64, e.g. 9223372036854771712).
const UNLIMITED: u64 = 1 << 62;

/// A snapshot of a container cgroup's resource usage. Counters a kernel or
/// hierarchy does not provide are 0; limits are `None` when unlimited or
/// unknown.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CgroupStats {
    /// CPU time and throttling.
    pub cpu: CpuStats,
    /// Memory usage and limits.
    pub memory: MemoryStats,
    /// Process counts.
    pub pids: PidsStats,
    /// Block I/O totals over all devices.
    pub blkio: BlkioStats,
}

/// CPU usage.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CpuStats {
    /// Total CPU time consumed, in nanoseconds.
    pub usage_total_ns: u64,
    /// User-mode CPU time, in nanoseconds.
    pub usage_user_ns: u64,
    /// Kernel-mode CPU time, in nanoseconds.
    pub usage_system_ns: u64,
    /// CFS bandwidth throttling.
    pub throttling: CpuThrottling,
}

/// CFS bandwidth throttling counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CpuThrottling {
    /// Enforcement periods that have elapsed.
    pub periods: u64,
    /// Periods in which the cgroup was throttled.
    pub throttled_periods: u64,
    /// Total time throttled, in nanoseconds.
    pub throttled_time_ns: u64,
}

/// Memory usage.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MemoryStats {
    /// Current usage (page cache included), in bytes.
    pub usage_bytes: u64,
    /// The hard limit, `None` when unlimited.
    pub limit_bytes: Option<u64>,
    /// Usage minus inactive file cache: what the kubelet evicts on.
    pub working_set_bytes: u64,
    /// Anonymous memory (v1 `total_rss`, v2 `anon`).
    pub rss_bytes: u64,
    /// Page cache (v1 `total_cache`, v2 `file`).
    pub cache_bytes: u64,
    /// Swap in use.
    pub swap_usage_bytes: u64,
    /// Swap allowed on top of the memory limit, `None` when unlimited or
    /// swap accounting is off.
    pub swap_limit_bytes: Option<u64>,
    /// Highest usage seen (v1 `max_usage_in_bytes`, v2 `memory.peak`).
    pub max_usage_bytes: u64,
    /// Processes killed by the OOM killer in this cgroup.
    pub oom_kills: u64,
}

/// Process counts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PidsStats {
    /// Tasks currently in the cgroup.
    pub current: u64,
    /// `pids.max`, `None` when unlimited.
    pub limit: Option<u64>,
}

/// Block I/O totals, summed over devices.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BlkioStats {
    /// Bytes read.
    pub read_bytes: u64,
    /// Bytes written.
    pub write_bytes: u64,
    /// Read operations.
    pub read_ops: u64,
    /// Write operations.
    pub write_ops: u64,
}

/// Reads a file of a v1 controller's cgroup dir; `None` when absent.
pub(crate) type V1Reader<'a> = dyn Fn(Ctl, &str) -> Result<Option<String>, CgroupError> + 'a;
/// Reads a file of the v2 cgroup dir; `None` when absent.
pub(crate) type V2Reader<'a> = dyn Fn(&str) -> Result<Option<String>, CgroupError> + 'a;

/// Build stats from v1 files. `clk_tck` converts `cpuacct.stat` ticks.
pub(crate) fn from_v1(read: &V1Reader<'_>, clk_tck: u64) -> Result<CgroupStats, CgroupError> {
    let mut st = CgroupStats::default();

    st.cpu.usage_total_ns = number(read(Ctl::CpuAcct, "cpuacct.usage")?.as_deref());
    let user = read(Ctl::CpuAcct, "cpuacct.usage_user")?;
    let sys = read(Ctl::CpuAcct, "cpuacct.usage_sys")?;
    if let (Some(user), Some(sys)) = (user, sys) {
        st.cpu.usage_user_ns = number(Some(&user));
        st.cpu.usage_system_ns = number(Some(&sys));
    } else if let Some(stat) = read(Ctl::CpuAcct, "cpuacct.stat")? {
        let ns_per_tick = 1_000_000_000u64.checked_div(clk_tck).unwrap_or(0);
        let ticks = |key| keyed_value(&stat, key).unwrap_or(0);
        st.cpu.usage_user_ns = ticks("user").saturating_mul(ns_per_tick);
        st.cpu.usage_system_ns = ticks("system").saturating_mul(ns_per_tick);
    }
    if let Some(stat) = read(Ctl::Cpu, "cpu.stat")? {
        let get = |key| keyed_value(&stat, key).unwrap_or(0);
        st.cpu.throttling = CpuThrottling {
            periods: get("nr_periods"),
            throttled_periods: get("nr_throttled"),
            throttled_time_ns: get("throttled_time"),
        };
    }

    let m = &mut st.memory;
    m.usage_bytes = number(read(Ctl::Memory, "memory.usage_in_bytes")?.as_deref());
    m.limit_bytes = limit(read(Ctl::Memory, "memory.limit_in_bytes")?.as_deref());
    m.max_usage_bytes = number(read(Ctl::Memory, "memory.max_usage_in_bytes")?.as_deref());
    if let Some(stat) = read(Ctl::Memory, "memory.stat")? {
        let get = |total: &str, local: &str| {
            keyed_value(&stat, total)
                .or_else(|| keyed_value(&stat, local))
                .unwrap_or(0)
        };
        m.rss_bytes = get("total_rss", "rss");
        m.cache_bytes = get("total_cache", "cache");
        let inactive_file = get("total_inactive_file", "inactive_file");
        m.working_set_bytes = m.usage_bytes.saturating_sub(inactive_file);
    } else {
        m.working_set_bytes = m.usage_bytes;
    }
    if let Some(memsw) = read(Ctl::Memory, "memory.memsw.usage_in_bytes")? {
        m.swap_usage_bytes = number(Some(&memsw)).saturating_sub(m.usage_bytes);
        let memsw_limit = limit(read(Ctl::Memory, "memory.memsw.limit_in_bytes")?.as_deref());
        m.swap_limit_bytes = match (memsw_limit, m.limit_bytes) {
            (Some(total), Some(mem)) => Some(total.saturating_sub(mem)),
            _ => None,
        };
    }
    if let Some(oom) = read(Ctl::Memory, "memory.oom_control")? {
        m.oom_kills = keyed_value(&oom, "oom_kill").unwrap_or(0);
    }

    st.pids = PidsStats {
        current: number(read(Ctl::Pids, "pids.current")?.as_deref()),
        limit: limit(read(Ctl::Pids, "pids.max")?.as_deref()),
    };

    let bytes = match read(Ctl::BlkIo, "blkio.throttle.io_service_bytes_recursive")? {
        Some(text) => Some(text),
        None => read(Ctl::BlkIo, "blkio.throttle.io_service_bytes")?,
    };
    let ops = match read(Ctl::BlkIo, "blkio.throttle.io_serviced_recursive")? {
        Some(text) => Some(text),
        None => read(Ctl::BlkIo, "blkio.throttle.io_serviced")?,
    };
    (st.blkio.read_bytes, st.blkio.write_bytes) = blkio_v1_totals(bytes.as_deref());
    (st.blkio.read_ops, st.blkio.write_ops) = blkio_v1_totals(ops.as_deref());
    Ok(st)
}

/// Build stats from v2 files.
pub(crate) fn from_v2(read: &V2Reader<'_>) -> Result<CgroupStats, CgroupError> {
    let mut st = CgroupStats::default();
    let us = |v: Option<u64>| v.unwrap_or(0).saturating_mul(1000);

    if let Some(stat) = read("cpu.stat")? {
        st.cpu = CpuStats {
            usage_total_ns: us(keyed_value(&stat, "usage_usec")),
            usage_user_ns: us(keyed_value(&stat, "user_usec")),
            usage_system_ns: us(keyed_value(&stat, "system_usec")),
            throttling: CpuThrottling {
                periods: keyed_value(&stat, "nr_periods").unwrap_or(0),
                throttled_periods: keyed_value(&stat, "nr_throttled").unwrap_or(0),
                throttled_time_ns: us(keyed_value(&stat, "throttled_usec")),
            },
        };
    }

    let m = &mut st.memory;
    m.usage_bytes = number(read("memory.current")?.as_deref());
    m.limit_bytes = limit(read("memory.max")?.as_deref());
    m.max_usage_bytes = number(read("memory.peak")?.as_deref());
    if let Some(stat) = read("memory.stat")? {
        let get = |key| keyed_value(&stat, key).unwrap_or(0);
        m.rss_bytes = get("anon");
        m.cache_bytes = get("file");
        m.working_set_bytes = m.usage_bytes.saturating_sub(get("inactive_file"));
    } else {
        m.working_set_bytes = m.usage_bytes;
    }
    m.swap_usage_bytes = number(read("memory.swap.current")?.as_deref());
    m.swap_limit_bytes = limit(read("memory.swap.max")?.as_deref());
    if let Some(events) = read("memory.events")? {
        m.oom_kills = keyed_value(&events, "oom_kill").unwrap_or(0);
    }

    st.pids = PidsStats {
        current: number(read("pids.current")?.as_deref()),
        limit: limit(read("pids.max")?.as_deref()),
    };

    if let Some(io) = read("io.stat")? {
        st.blkio = io_stat_totals(&io);
    }
    Ok(st)
}

/// A single number; absent or unparsable is 0.
fn number(text: Option<&str>) -> u64 {
    text.and_then(|t| t.trim().parse().ok()).unwrap_or(0)
}

/// A limit: `"max"`, huge values, absent or unparsable are `None`.
fn limit(text: Option<&str>) -> Option<u64> {
    text.and_then(|t| t.trim().parse::<u64>().ok())
        .filter(|&v| v < UNLIMITED)
}

/// Sum `"8:0 Read 4096"` / `"8:0 Write 512"` lines (the `Total` lines and
/// other operations are skipped).
fn blkio_v1_totals(text: Option<&str>) -> (u64, u64) {
    let mut totals = (0u64, 0u64);
    for line in text.unwrap_or("").lines() {
        let mut parts = line.split_whitespace();
        let (Some(dev), Some(op), Some(value), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if !dev.contains(':') {
            continue;
        }
        let value: u64 = value.parse().unwrap_or(0);
        match op {
            "Read" => totals.0 = totals.0.saturating_add(value),
            "Write" => totals.1 = totals.1.saturating_add(value),
            _ => {}
        }
    }
    totals
}

/// Sum `io.stat` lines: `"8:0 rbytes=1 wbytes=2 rios=3 wios=4 dbytes=0 dios=0"`.
fn io_stat_totals(text: &str) -> BlkioStats {
    let mut out = BlkioStats::default();
    for line in text.lines() {
        for pair in line.split_whitespace().skip(1) {
            let Some((key, value)) = pair.split_once('=') else {
                continue;
            };
            let value: u64 = value.parse().unwrap_or(0);
            let slot = match key {
                "rbytes" => &mut out.read_bytes,
                "wbytes" => &mut out.write_bytes,
                "rios" => &mut out.read_ops,
                "wios" => &mut out.write_ops,
                _ => continue,
            };
            *slot = slot.saturating_add(value);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn v1_reader(
        files: &[(Ctl, &str, &str)],
    ) -> impl Fn(Ctl, &str) -> Result<Option<String>, CgroupError> {
        let map: HashMap<(Ctl, String), String> = files
            .iter()
            .map(|(c, f, v)| ((*c, f.to_string()), v.to_string()))
            .collect();
        move |c, f| Ok(map.get(&(c, f.to_string())).cloned())
    }

    #[test]
    fn v1_sample_files() {
        let read = v1_reader(&[
            (Ctl::CpuAcct, "cpuacct.usage", "5000000000\n"),
            (Ctl::CpuAcct, "cpuacct.usage_user", "3000000000\n"),
            (Ctl::CpuAcct, "cpuacct.usage_sys", "2000000000\n"),
            (
                Ctl::Cpu,
                "cpu.stat",
                "nr_periods 10\nnr_throttled 4\nthrottled_time 123456\nnr_bursts 0\n",
            ),
            (Ctl::Memory, "memory.usage_in_bytes", "104857600\n"),
            (Ctl::Memory, "memory.limit_in_bytes", "209715200\n"),
            (Ctl::Memory, "memory.max_usage_in_bytes", "157286400\n"),
            (
                Ctl::Memory,
                "memory.stat",
                "cache 1\nrss 2\ninactive_file 3\ntotal_cache 41943040\ntotal_rss 52428800\ntotal_inactive_file 20971520\n",
            ),
            (Ctl::Memory, "memory.memsw.usage_in_bytes", "110100480\n"),
            (Ctl::Memory, "memory.memsw.limit_in_bytes", "314572800\n"),
            (
                Ctl::Memory,
                "memory.oom_control",
                "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
            ),
            (Ctl::Pids, "pids.current", "3\n"),
            (Ctl::Pids, "pids.max", "max\n"),
            (
                Ctl::BlkIo,
                "blkio.throttle.io_service_bytes_recursive",
                "8:0 Read 4096\n8:0 Write 8192\n8:0 Sync 0\n8:0 Total 12288\n8:16 Read 1\nTotal 12289\n",
            ),
            (
                Ctl::BlkIo,
                "blkio.throttle.io_serviced",
                "8:0 Read 3\n8:0 Write 5\n",
            ),
        ]);
        let st = from_v1(&read, 100).expect("stats");
        assert_eq!(st.cpu.usage_total_ns, 5_000_000_000);
        assert_eq!(st.cpu.usage_user_ns, 3_000_000_000);
        assert_eq!(st.cpu.usage_system_ns, 2_000_000_000);
        assert_eq!(
            st.cpu.throttling,
            CpuThrottling {
                periods: 10,
                throttled_periods: 4,
                throttled_time_ns: 123_456
            }
        );
        let m = &st.memory;
        assert_eq!(m.usage_bytes, 104_857_600);
        assert_eq!(m.limit_bytes, Some(209_715_200));
        assert_eq!(m.working_set_bytes, 104_857_600 - 20_971_520);
        assert_eq!((m.rss_bytes, m.cache_bytes), (52_428_800, 41_943_040));
        assert_eq!(m.swap_usage_bytes, 110_100_480 - 104_857_600);
        assert_eq!(m.swap_limit_bytes, Some(314_572_800 - 209_715_200));
        assert_eq!(m.max_usage_bytes, 157_286_400);
        assert_eq!(m.oom_kills, 2);
        assert_eq!(
            st.pids,
            PidsStats {
                current: 3,
                limit: None
            }
        );
        assert_eq!(
            st.blkio,
            BlkioStats {
                read_bytes: 4097,
                write_bytes: 8192,
                read_ops: 3,
                write_ops: 5
            }
        );
    }

    #[test]
    fn v1_fallbacks_and_unlimited() {
        let read = v1_reader(&[
            (Ctl::CpuAcct, "cpuacct.stat", "user 150\nsystem 50\n"),
            (Ctl::Memory, "memory.usage_in_bytes", "4096"),
            (Ctl::Memory, "memory.limit_in_bytes", "9223372036854771712"),
            (Ctl::Pids, "pids.max", "64"),
        ]);
        let st = from_v1(&read, 100).expect("stats");
        assert_eq!(st.cpu.usage_user_ns, 1_500_000_000);
        assert_eq!(st.cpu.usage_system_ns, 500_000_000);
        assert_eq!(st.memory.limit_bytes, None);
        assert_eq!(st.memory.working_set_bytes, 4096);
        assert_eq!(st.memory.swap_limit_bytes, None);
        assert_eq!(st.pids.limit, Some(64));
        // clk_tck 0 must not divide by zero.
        assert!(from_v1(&read, 0).is_ok());
    }

    #[test]
    fn v2_sample_files() {
        let files: HashMap<&str, &str> = [
            ("cpu.stat", "usage_usec 2500\nuser_usec 2000\nsystem_usec 500\nnr_periods 7\nnr_throttled 1\nthrottled_usec 30\n"),
            ("memory.current", "1048576\n"),
            ("memory.max", "max\n"),
            ("memory.peak", "2097152\n"),
            ("memory.stat", "anon 524288\nfile 262144\ninactive_file 131072\n"),
            ("memory.swap.current", "4096\n"),
            ("memory.swap.max", "8192\n"),
            ("memory.events", "low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\noom_group_kill 0\n"),
            ("pids.current", "2\n"),
            ("pids.max", "100\n"),
            ("io.stat", "8:0 rbytes=100 wbytes=200 rios=1 wios=2 dbytes=0 dios=0\n259:0 rbytes=1 wbytes=1 rios=1 wios=1\n"),
        ]
        .into_iter()
        .collect();
        let read = |f: &str| Ok(files.get(f).map(|s| s.to_string()));
        let st = from_v2(&read).expect("stats");
        assert_eq!(
            st.cpu,
            CpuStats {
                usage_total_ns: 2_500_000,
                usage_user_ns: 2_000_000,
                usage_system_ns: 500_000,
                throttling: CpuThrottling {
                    periods: 7,
                    throttled_periods: 1,
                    throttled_time_ns: 30_000
                },
            }
        );
        let m = &st.memory;
        assert_eq!(
            (m.usage_bytes, m.limit_bytes, m.max_usage_bytes),
            (1_048_576, None, 2_097_152)
        );
        assert_eq!(m.working_set_bytes, 1_048_576 - 131_072);
        assert_eq!((m.rss_bytes, m.cache_bytes), (524_288, 262_144));
        assert_eq!((m.swap_usage_bytes, m.swap_limit_bytes), (4096, Some(8192)));
        assert_eq!(m.oom_kills, 1);
        assert_eq!(
            st.pids,
            PidsStats {
                current: 2,
                limit: Some(100)
            }
        );
        assert_eq!(
            st.blkio,
            BlkioStats {
                read_bytes: 101,
                write_bytes: 201,
                read_ops: 2,
                write_ops: 3
            }
        );
        let json = serde_json::to_value(&st).expect("serialize");
        assert_eq!(json["memory"]["working_set_bytes"], 917_504);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_files_do_not_panic(content in "([a-z_:0-9= ]{0,20}\n){0,5}") {
            let read = |_: &str| Ok(Some(content.clone()));
            proptest::prop_assert!(from_v2(&read).is_ok());
            let read1 = |_: Ctl, _: &str| Ok(Some(content.clone()));
            proptest::prop_assert!(from_v1(&read1, 100).is_ok());
        }
    }

    #[test]
    fn garbage_is_zero_not_a_panic() {
        let read = |_: &str| {
            Ok(Some(
                "x y z\n= == =x\n-1\n18446744073709551616 \u{0}".to_string(),
            ))
        };
        let st = from_v2(&read).expect("stats");
        assert_eq!(st, CgroupStats::default());
        let read1 = |_: Ctl, _: &str| Ok(Some("8:0 Read\n8:0 Read x y\n:".to_string()));
        assert!(from_v1(&read1, 100).is_ok());
    }
}
