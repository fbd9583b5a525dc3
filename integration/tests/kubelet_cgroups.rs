//! `berth node`'s pod cgroups against a real `berth runtime`: a guaranteed
//! pod's cgroup sits directly in `kubepods` with its summed limits, a
//! best-effort pod's in `kubepods/besteffort` with the minimum CPU shares,
//! the runtime creates each container's cgroup inside its pod's, and a pod
//! removed from the manifests leaves no cgroup behind.
//!
//! The node takes its cgroup root from the runtime's verbose status, so
//! both live under the test runtime's own cgroup root (cgroup v1 here).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use berth_integration::node::{NodeTest, containers, sandboxes, wait_for};
use berth_proto::v1;

fn pod(name: &str, image: &str, resources: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
spec:
  hostNetwork: true
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: {image}
    imagePullPolicy: IfNotPresent
    command: ["sleep", "1000"]
    resources: {resources}
"#
    )
}

fn read(path: &Path) -> Result<String> {
    Ok(std::fs::read_to_string(path)
        .with_context(|| format!("reading {}", path.display()))?
        .trim()
        .to_owned())
}

/// The subdirectories of `dir`: the container cgroups the runtime made.
fn children(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            out.push(e.path());
        }
    }
    Ok(out)
}

#[test]
fn pods_get_qos_cgroups_that_go_with_them() -> Result<()> {
    let memory_root = Path::new("/sys/fs/cgroup/memory");
    let cpu_root = Path::new("/sys/fs/cgroup/cpu");
    ensure!(
        memory_root.join("cgroup.procs").exists() && cpu_root.join("cgroup.procs").exists(),
        "this test needs the cgroup v1 cpu and memory hierarchies"
    );
    let t = NodeTest::start()?;
    let (image, log) = (t.image(), t.log());
    let kubepods = |root: &Path| root.join(t.daemon().cgroup_root()).join("kubepods");
    t.write("g", &pod("g", image, "{limits: {cpu: 500m, memory: 64Mi}}"))?;
    t.write("e", &pod("e", image, "{}"))?;
    let _node = t.node()?;

    t.runtime()?.block_on(async {
        let c = t.cri().await?;
        for name in ["g", "e"] {
            wait_for(
                &format!("pod {name} running"),
                Duration::from_secs(30),
                log,
                || async {
                    Ok(containers(&c, name)
                        .await?
                        .iter()
                        .any(|x| x.state == v1::ContainerState::ContainerRunning as i32))
                },
            )
            .await?;
        }
        let uid = |s: &v1::PodSandbox| s.labels.get("io.kubernetes.pod.uid").cloned();
        let g_uid = sandboxes(&c, "g")
            .await?
            .iter()
            .find_map(uid)
            .context("g's uid")?;
        let e_uid = sandboxes(&c, "e")
            .await?
            .iter()
            .find_map(uid)
            .context("e's uid")?;

        let g_mem = kubepods(memory_root).join(format!("pod{g_uid}"));
        let g_cpu = kubepods(cpu_root).join(format!("pod{g_uid}"));
        ensure!(read(&g_mem.join("memory.limit_in_bytes"))? == (64u64 << 20).to_string());
        ensure!(read(&g_cpu.join("cpu.cfs_quota_us"))? == "50000");
        ensure!(read(&g_cpu.join("cpu.shares"))? == "512");
        ensure!(
            children(&g_mem)?.len() == 1,
            "the runtime did not put g's container in its pod cgroup: {:?}",
            children(&g_mem)?
        );
        let e_cpu = kubepods(cpu_root)
            .join("besteffort")
            .join(format!("pod{e_uid}"));
        ensure!(read(&e_cpu.join("cpu.shares"))? == "2");
        ensure!(read(&kubepods(cpu_root).join("besteffort/cpu.shares"))? == "2");

        t.remove("g")?;
        wait_for(
            "g's cgroup removed",
            Duration::from_secs(30),
            log,
            || async { Ok(!g_mem.exists() && !g_cpu.exists()) },
        )
        .await?;
        ensure!(e_cpu.exists(), "e's cgroup went with g's");
        anyhow::Ok(())
    })
}
