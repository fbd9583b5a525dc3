//! Where a container's cgroup lives, and that resources are written to it.
//! runc: `<hierarchy>/<cgroupsPath>`; berth: below its parent
//! `<hierarchy>/berth/` (global `--cgroup-root NAME` moves the parent).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use berth_integration::proc::{cgroup_dir, cgroup_hierarchies, cgroup_mount};
use berth_integration::spec::test_cgroups_path;
use berth_integration::{Bundle, Flavor, Runtime, Spec, skip_unless_berth, unique_id};
use serde_json::json;

/// v1 controllers and the v2 hierarchy ("") mounted on this machine.
fn controllers() -> Vec<&'static str> {
    ["memory", "pids", "cpu", "freezer", "devices", ""]
        .into_iter()
        .filter(|c| cgroup_mount(c).is_some())
        .collect()
}

fn cgroup_dirs(pid: i32) -> Result<Vec<(String, PathBuf, PathBuf)>> {
    controllers()
        .into_iter()
        .map(|c| {
            let mount = cgroup_mount(c).context("mount")?;
            let dir = cgroup_dir(pid, c).with_context(|| format!("no {c:?} cgroup for {pid}"))?;
            Ok((c.to_string(), mount, dir))
        })
        .collect()
}

#[test]
fn the_container_cgroup_is_where_the_runtime_puts_it() -> Result<()> {
    let rt = Runtime::new()?;
    let id = unique_id("cgplace");
    let b = Bundle::new(&Spec::test(&id, &["sleep", "1000"]))?;
    let pid = rt.create_started(&id, &b)?.pid().context("no pid")?;
    let dirs = cgroup_dirs(pid)?;
    ensure!(!dirs.is_empty(), "no cgroup hierarchy found");
    for (c, mount, dir) in &dirs {
        match rt.flavor() {
            Flavor::Runc => assert_eq!(
                dir,
                &mount.join(test_cgroups_path(&id).trim_start_matches('/')),
                "{c}"
            ),
            Flavor::Berth => {
                assert!(
                    dir.starts_with(mount.join("berth")),
                    "{c}: {}",
                    dir.display()
                );
                assert!(
                    dir.to_string_lossy().contains(&id),
                    "{c}: {}",
                    dir.display()
                );
            }
        }
        assert!(dir.is_dir(), "{}", dir.display());
    }
    rt.delete_force(&id)?;
    for (c, _, dir) in &dirs {
        assert!(
            !dir.exists(),
            "{c} cgroup {} left after delete",
            dir.display()
        );
    }
    Ok(())
}

#[test]
fn cpu_shares_reach_the_cgroup() -> Result<()> {
    let rt = Runtime::new()?;
    let id = unique_id("cpushares");
    let b = Bundle::new(
        &Spec::test(&id, &["sleep", "1000"]).resource("cpu", json!({ "shares": 512 })),
    )?;
    let pid = rt.create_started(&id, &b)?.pid().context("no pid")?;
    if cgroup_mount("cpu").is_some() {
        let dir = cgroup_dir(pid, "cpu").context("no cpu cgroup")?;
        assert_eq!(
            std::fs::read_to_string(dir.join("cpu.shares"))?.trim(),
            "512"
        );
    } else {
        // cgroup v2: shares are converted to a weight (runc's formula).
        let dir = cgroup_dir(pid, "").context("no cgroup")?;
        assert_eq!(
            std::fs::read_to_string(dir.join("cpu.weight"))?.trim(),
            "20"
        );
    }
    rt.delete_force(&id)?;
    Ok(())
}

#[test]
fn berth_cgroup_root_option_moves_the_parent() -> Result<()> {
    if skip_unless_berth("--cgroup-root")? {
        return Ok(());
    }
    let parent = format!("berth-it-root-{}", std::process::id());
    let rt = Runtime::with_globals(&["--cgroup-root", &parent])?;
    let id = unique_id("cgroot");
    let b = Bundle::new(&Spec::test(&id, &["sleep", "1000"]))?;
    let result = (|| -> Result<()> {
        let pid = rt.create_started(&id, &b)?.pid().context("no pid")?;
        for (c, mount, dir) in cgroup_dirs(pid)? {
            assert!(
                dir.starts_with(mount.join(&parent)),
                "{c}: {}",
                dir.display()
            );
        }
        rt.delete_force(&id)?;
        Ok(())
    })();
    std::thread::sleep(Duration::from_millis(100));
    // The parent is ours (a unique name): remove it if berth left it empty.
    for h in cgroup_hierarchies() {
        let _ = std::fs::remove_dir(h.join(&parent));
    }
    result
}
