//! Namespace isolation: /proc/self/ns/* links inside the container compared
//! with the host's (this test process's).

use std::collections::BTreeMap;

use anyhow::{Context, Result, ensure};
use berth_integration::proc::ns_link;
use berth_integration::{Bundle, Runtime, Spec, unique_id};

const PRINT_NS: &str = "for ns in pid net ipc uts mnt cgroup user; do echo \"ns $ns $(readlink /proc/self/ns/$ns)\"; done";

fn inside_links(stdout: &str) -> BTreeMap<String, String> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("ns "))
        .filter_map(|l| l.split_once(' '))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn all_spec_namespaces_are_new_and_private() -> Result<()> {
    let rt = Runtime::new()?;
    let id = unique_id("ns");
    let script = format!(
        "{PRINT_NS}; echo \"pid1 $$\"; echo netdev; tail -n +3 /proc/net/dev | cut -d: -f1; echo cgroups; cat /proc/self/cgroup"
    );
    let spec = Spec::sh(&id, &script).add_namespace("cgroup");
    let b = Bundle::new(&spec)?;
    let out = rt.run(&id, &b)?;
    ensure!(out.success(), "{out}");
    let inside = inside_links(&out.stdout);
    for ns in ["pid", "net", "ipc", "uts", "mnt", "cgroup"] {
        let host = ns_link(None, ns)?;
        let theirs = inside
            .get(ns)
            .with_context(|| format!("no {ns} link printed: {out}"))?;
        assert!(theirs.starts_with(&format!("{ns}:[")), "{ns}: {theirs}");
        assert_ne!(theirs, &host, "{ns} namespace is the host's");
    }
    // No user namespace was asked for.
    assert_eq!(inside.get("user"), Some(&ns_link(None, "user")?), "{out}");
    // The shell is pid 1 of its pid namespace.
    assert!(out.stdout.lines().any(|l| l == "pid1 1"), "{out}");
    // The network namespace has only the loopback device.
    let netdevs: Vec<&str> = out
        .stdout
        .split("netdev\n")
        .nth(1)
        .and_then(|s| s.split("cgroups\n").next())
        .unwrap_or("")
        .lines()
        .map(str::trim)
        .collect();
    assert_eq!(netdevs, vec!["lo"], "{out}");
    // In its own cgroup namespace the container sees itself at the root.
    let cgroups: Vec<&str> = out
        .stdout
        .split("cgroups\n")
        .nth(1)
        .unwrap_or("")
        .lines()
        .collect();
    ensure!(!cgroups.is_empty(), "{out}");
    for l in cgroups {
        assert!(
            l.ends_with(":/"),
            "cgroup line {l:?} not at the namespace root: {out}"
        );
    }
    Ok(())
}

#[test]
fn namespaces_not_in_the_spec_are_shared_with_the_host() -> Result<()> {
    let rt = Runtime::new()?;
    let id = unique_id("nshost");
    let spec = Spec::sh(&id, PRINT_NS)
        .namespaces(&["mount"])
        .remove("/hostname");
    let b = Bundle::new(&spec)?;
    let out = rt.run(&id, &b)?;
    ensure!(out.success(), "{out}");
    let inside = inside_links(&out.stdout);
    assert_ne!(inside.get("mnt"), Some(&ns_link(None, "mnt")?), "{out}");
    for ns in ["pid", "net", "ipc", "uts", "cgroup", "user"] {
        assert_eq!(inside.get(ns), Some(&ns_link(None, ns)?), "{ns}: {out}");
    }
    Ok(())
}

#[test]
fn ipc_namespace_hides_host_message_queues_ids() -> Result<()> {
    // The host's SysV IPC objects are invisible: /proc/sysvipc lists only
    // headers inside a fresh IPC namespace.
    let rt = Runtime::new()?;
    let id = unique_id("ipc");
    let b = Bundle::new(&Spec::sh(
        &id,
        "for f in msg sem shm; do echo \"$f $(tail -n +2 /proc/sysvipc/$f | wc -l)\"; done",
    ))?;
    let out = rt.run(&id, &b)?;
    ensure!(out.success(), "{out}");
    assert_eq!(out.stdout, "msg 0\nsem 0\nshm 0\n", "{out}");
    Ok(())
}
