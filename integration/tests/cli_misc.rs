//! list, ps, events --stats, features, --log/--log-format, --version.

use anyhow::{Context, Result, ensure};
use berth_integration::{Bundle, Runtime, Spec, unique_id};
use serde_json::Value;

fn json(s: &str) -> Result<Value> {
    serde_json::from_str(s).with_context(|| format!("not JSON: {s}"))
}

#[test]
fn list_shows_containers_with_their_status() -> Result<()> {
    let rt = Runtime::new()?;
    let id = unique_id("list");
    let b = Bundle::new(&Spec::test(&id, &["sleep", "1000"]))?;
    rt.create(&id, &b)?;
    let text = rt.cmd(&["list"])?.check()?;
    let line = text
        .stdout
        .lines()
        .find(|l| l.split_whitespace().next() == Some(id.as_str()))
        .with_context(|| format!("{id} not listed: {text}"))?;
    assert!(line.contains("created"), "{line}");
    rt.start(&id)?;
    let all = json(&rt.cmd(&["list", "--format", "json"])?.check()?.stdout)?;
    let mine = all
        .as_array()
        .context("list json is not an array")?
        .iter()
        .find(|c| c["id"] == id.as_str())
        .context("not in list json")?;
    assert_eq!(mine["status"], "running");
    assert!(mine["pid"].as_i64().unwrap_or(0) > 0);
    let quiet = rt.cmd(&["list", "-q"])?.check()?;
    assert_eq!(quiet.stdout.trim(), id, "{quiet}");
    rt.delete_force(&id)?;
    let empty = rt.cmd(&["list", "-q"])?.check()?;
    assert_eq!(empty.stdout.trim(), "", "{empty}");
    Ok(())
}

#[test]
fn ps_lists_the_container_processes() -> Result<()> {
    let rt = Runtime::new()?;
    let id = unique_id("ps");
    let b = Bundle::new(&Spec::test(&id, &["sleep", "1000"]))?;
    let pid = rt.create_started(&id, &b)?.pid().context("no pid")?;
    let pids = json(&rt.cmd(&["ps", "--format", "json", &id])?.check()?.stdout)?;
    assert_eq!(pids, serde_json::json!([pid]));
    let table = rt.cmd(&["ps", &id])?.check()?;
    assert!(
        table
            .stdout
            .lines()
            .any(|l| l.contains(&pid.to_string()) && l.contains("sleep 1000")),
        "{table}"
    );
    rt.delete_force(&id)?;
    Ok(())
}

#[test]
fn events_stats_reports_pids_and_memory() -> Result<()> {
    let rt = Runtime::new()?;
    let id = unique_id("events");
    let b = Bundle::new(&Spec::sh(&id, "sleep 1000 & sleep 1000").pids_limit(50))?;
    rt.create_started(&id, &b)?;
    let out = rt.cmd(&["events", "--stats", &id])?.check()?;
    let ev = json(out.stdout.lines().next().unwrap_or(""))?;
    assert_eq!(ev["type"], "stats", "{ev}");
    assert_eq!(ev["id"], id.as_str(), "{ev}");
    assert_eq!(ev["data"]["pids"]["current"], 2, "{ev}");
    assert_eq!(ev["data"]["pids"]["limit"], 50, "{ev}");
    assert!(
        ev["data"]["memory"]["usage"]["usage"].as_u64().unwrap_or(0) > 0,
        "{ev}"
    );
    assert!(
        ev["data"]["cpu"]["usage"]["total"].as_u64().unwrap_or(0) > 0,
        "{ev}"
    );
    rt.delete_force(&id)?;
    Ok(())
}

#[test]
fn features_describes_the_runtime() -> Result<()> {
    let rt = Runtime::new()?;
    let f = json(&rt.cmd(&["features"])?.check()?.stdout)?;
    assert!(
        f["ociVersionMin"]
            .as_str()
            .is_some_and(|v| v.starts_with("1.")),
        "{f}"
    );
    assert!(
        f["ociVersionMax"]
            .as_str()
            .is_some_and(|v| v.starts_with("1.")),
        "{f}"
    );
    let list = |p: &str| -> Vec<String> {
        f.pointer(p)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    for h in ["createRuntime", "poststart", "poststop"] {
        assert!(list("/hooks").iter().any(|x| x == h), "hook {h}: {f}");
    }
    for ns in ["pid", "network", "ipc", "uts", "mount", "cgroup"] {
        assert!(
            list("/linux/namespaces").iter().any(|x| x == ns),
            "ns {ns}: {f}"
        );
    }
    for c in ["CAP_SYS_ADMIN", "CAP_KILL", "CAP_NET_BIND_SERVICE"] {
        assert!(
            list("/linux/capabilities").iter().any(|x| x == c),
            "cap {c}: {f}"
        );
    }
    assert!(list("/mountOptions").iter().any(|x| x == "ro"), "{f}");
    assert_eq!(f["linux"]["seccomp"]["enabled"], true, "{f}");
    Ok(())
}

#[test]
fn errors_go_to_the_json_log() -> Result<()> {
    let rt = Runtime::new()?;
    let log = rt.scratch().join("runtime.log");
    let id = unique_id("nolog");
    let out = rt.cmd(&[
        "--log",
        log.to_str().unwrap(),
        "--log-format",
        "json",
        "start",
        &id,
    ])?;
    assert!(!out.success(), "{out}");
    let text = std::fs::read_to_string(&log).context("no log file written")?;
    let lines: Vec<Value> = text
        .lines()
        .map(json)
        .collect::<Result<_>>()
        .context("every log line must be JSON")?;
    ensure!(!lines.is_empty(), "empty log");
    let err = lines
        .iter()
        .find(|l| l["level"] == "error")
        .with_context(|| format!("no error entry: {text}"))?;
    assert!(err["msg"].as_str().is_some_and(|m| !m.is_empty()), "{err}");
    assert!(err["time"].is_string(), "{err}");
    Ok(())
}

#[test]
fn version_is_printed() -> Result<()> {
    let rt = Runtime::new()?;
    let out = rt.cmd(&["--version"])?.check()?;
    ensure!(!out.stdout.trim().is_empty(), "{out}");
    Ok(())
}
