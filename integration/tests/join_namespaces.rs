//! Joining another container's namespaces by path (`linux.namespaces[].path`):
//! network, ipc and uts, and pid. Every test here holds a LeakCheck.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use berth_integration::proc::{self, ns_link};
use berth_integration::{Bundle, LeakCheck, Runtime, Spec, unique_id};
use serde_json::{Value, json};

const SETTLE: Duration = Duration::from_secs(10);

const PRINT_NS: &str =
    "for ns in pid net ipc uts mnt; do echo \"ns $ns $(readlink /proc/self/ns/$ns)\"; done";

fn inside_links(stdout: &str) -> BTreeMap<String, String> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("ns "))
        .filter_map(|l| l.split_once(' '))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The spec's namespace list with `joined` types taken from process `pid`
/// (by /proc/PID/ns/<name> path); the other types stay new.
fn join(spec: Spec, pid: i32, joined: &[(&str, &str)]) -> Spec {
    let mut list: Vec<Value> = spec
        .0
        .pointer("/linux/namespaces")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    list.retain(|n| !joined.iter().any(|(t, _)| n["type"] == *t));
    for (kind, file) in joined {
        list.push(json!({ "type": kind, "path": format!("/proc/{pid}/ns/{file}") }));
    }
    spec.set("/linux/namespaces", Value::Array(list))
}

#[test]
fn network_ipc_and_uts_namespaces_are_joined_by_path() -> Result<()> {
    let check = LeakCheck::start();
    let rt = Runtime::new()?;
    let a_id = unique_id("joina");
    let a = Bundle::new(&Spec::test(&a_id, &["sleep", "1000"]).hostname("box-a"))?;
    let a_pid = rt
        .create_started(&a_id, &a)?
        .pid()
        .context("A has no pid")?;

    let b_id = unique_id("joinb");
    // B joins A's uts namespace, so it must not set a hostname of its own.
    let b_spec = join(
        Spec::sh(&b_id, &format!("{PRINT_NS}; hostname")).remove("/hostname"),
        a_pid,
        &[("network", "net"), ("ipc", "ipc"), ("uts", "uts")],
    );
    let b = Bundle::new(&b_spec)?;
    let out = rt.run(&b_id, &b)?;
    ensure!(out.success(), "{out}");
    let inside = inside_links(&out.stdout);
    for ns in ["net", "ipc", "uts"] {
        let a_link = ns_link(Some(a_pid), ns)?;
        assert_ne!(a_link, ns_link(None, ns)?, "A shares the host's {ns} ns");
        assert_eq!(inside.get(ns), Some(&a_link), "{ns}: {out}");
    }
    // The namespaces not joined are B's own.
    for ns in ["pid", "mnt"] {
        let theirs = inside
            .get(ns)
            .with_context(|| format!("no {ns} link: {out}"))?;
        assert_ne!(theirs, &ns_link(Some(a_pid), ns)?, "{ns}: {out}");
        assert_ne!(theirs, &ns_link(None, ns)?, "{ns}: {out}");
    }
    assert!(out.stdout.ends_with("box-a\n"), "B's hostname: {out}");
    // A is untouched by B's coming and going.
    assert_eq!(rt.state(&a_id)?.status(), "running");
    assert_eq!(proc::cmdline(a_pid), "sleep 1000");

    rt.delete_force(&a_id)?;
    ensure!(proc::wait_gone(a_pid, SETTLE), "A's init survived");
    check.assert_clean(SETTLE)?;
    rt.assert_no_state()
}

#[test]
fn the_pid_namespace_is_joined_by_path() -> Result<()> {
    let check = LeakCheck::start();
    let rt = Runtime::new()?;
    let a_id = unique_id("joinpida");
    let a = Bundle::new(&Spec::test(&a_id, &["sleep", "1000"]))?;
    let a_pid = rt
        .create_started(&a_id, &a)?
        .pid()
        .context("A has no pid")?;

    let b_id = unique_id("joinpidb");
    let b_spec = join(
        Spec::sh(
            &b_id,
            &format!("{PRINT_NS}; echo \"me $$\"; ps -o pid,args"),
        ),
        a_pid,
        &[("pid", "pid")],
    );
    let b = Bundle::new(&b_spec)?;
    let out = rt.run(&b_id, &b)?;
    ensure!(out.success(), "{out}");
    let inside = inside_links(&out.stdout);
    assert_eq!(
        inside.get("pid"),
        Some(&ns_link(Some(a_pid), "pid")?),
        "{out}"
    );
    // A's sleep is pid 1 of the shared namespace; B's shell is not.
    let ps: Vec<(String, String)> = out
        .stdout
        .lines()
        .filter_map(|l| {
            let (pid, args) = l.trim().split_once(char::is_whitespace)?;
            pid.parse::<u32>()
                .ok()
                .map(|_| (pid.to_string(), args.trim().to_string()))
        })
        .collect();
    assert!(
        ps.iter().any(|(p, a)| p == "1" && a == "sleep 1000"),
        "A's sleep is not pid 1 in B's ps: {out}"
    );
    let me = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("me "))
        .context("no pid printed")?;
    assert_ne!(me, "1", "B's shell is pid 1: {out}");
    assert!(
        ps.iter().any(|(p, _)| p == me),
        "B's shell not in ps: {out}"
    );
    assert_eq!(rt.state(&a_id)?.status(), "running");

    rt.delete_force(&a_id)?;
    ensure!(proc::wait_gone(a_pid, SETTLE), "A's init survived");
    check.assert_clean(SETTLE)?;
    rt.assert_no_state()
}
