//! 100 containers created, started and deleted from 10 threads at once,
//! all 100 running together at one point; nothing left behind.

use std::sync::Barrier;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, ensure};
use berth_integration::workdir::tempdir;
use berth_integration::{Bundle, LeakCheck, Runtime, Spec, unique_id};

const THREADS: usize = 10;
const PER_THREAD: usize = 10;

fn start_all(
    rt: &Runtime,
    rootfs: &std::path::Path,
    out: &mut Vec<(String, Bundle)>,
) -> Result<()> {
    for _ in 0..PER_THREAD {
        let id = unique_id("many");
        let b = Bundle::with_rootfs(&Spec::test(&id, &["sleep", "1000"]), rootfs)?;
        rt.create(&id, &b)?;
        out.push((id, b));
    }
    for (id, _) in out.iter() {
        rt.start(id)?;
    }
    Ok(())
}

fn stop_all(rt: &Runtime, list: &[(String, Bundle)]) -> Result<()> {
    for (id, _) in list {
        rt.kill(id, "KILL")?;
    }
    for (id, _) in list {
        rt.wait_status(id, "stopped", Duration::from_secs(30))?;
        rt.delete(id)?;
    }
    Ok(())
}

#[test]
fn a_hundred_containers_in_parallel() -> Result<()> {
    let check = LeakCheck::start();
    let rt = Runtime::new()?;
    // One read-only rootfs shared by all bundles.
    let shared = tempdir("shared-rootfs-")?;
    let rootfs = shared.path().join("rootfs");
    berth_integration::rootfs::clone_rootfs(&rootfs)?;
    let barrier = Barrier::new(THREADS);
    let running = std::sync::Mutex::new(None);

    let results: Vec<Result<()>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let (rt, rootfs, barrier, running) = (&rt, &rootfs, &barrier, &running);
                s.spawn(move || -> Result<()> {
                    let mut mine = Vec::new();
                    let started = start_all(rt, rootfs, &mut mine);
                    // Every thread reaches the barriers, even after an error.
                    barrier.wait();
                    if t == 0 {
                        let n = rt.cmd(&["list", "--format", "json"]).and_then(|o| {
                            let v: serde_json::Value = serde_json::from_str(&o.stdout)?;
                            Ok(v.as_array()
                                .map(|a| a.iter().filter(|c| c["status"] == "running").count())
                                .unwrap_or(0))
                        });
                        *running.lock().unwrap() = Some(n);
                    }
                    barrier.wait();
                    let stopped = stop_all(rt, &mine);
                    started.and(stopped)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(anyhow!("thread panicked"))))
            .collect()
    });
    for (t, r) in results.into_iter().enumerate() {
        r.with_context(|| format!("thread {t}"))?;
    }
    let n = running.into_inner().unwrap().context("no count")??;
    assert_eq!(
        n,
        THREADS * PER_THREAD,
        "containers running at the same time"
    );
    check.assert_clean(Duration::from_secs(20))?;
    let left = rt.state_entries();
    ensure!(left.is_empty(), "state left: {left:?}");
    Ok(())
}
