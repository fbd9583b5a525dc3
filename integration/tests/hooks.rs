//! OCI hooks run in the runtime namespace get the state on stdin.

use std::time::Duration;

use anyhow::{Context, Result};
use berth_integration::{Bundle, Flavor, Runtime, Spec, unique_id, wait_until};
use serde_json::Value;

#[test]
fn create_runtime_poststart_and_poststop_hooks_run_with_the_state() -> Result<()> {
    let rt = Runtime::new()?;
    let id = unique_id("hooks");
    let dir = rt.scratch().join("hooks");
    std::fs::create_dir(&dir)?;
    let mut spec = Spec::test(&id, &["sleep", "1000"]);
    for kind in ["createRuntime", "poststart", "poststop"] {
        let out = dir.join(format!("{kind}.json"));
        let script = format!("cat > {}.tmp && mv {0}.tmp {0}", out.display());
        spec = spec.hook(kind, "/bin/sh", &["sh", "-c", &script]);
    }
    let b = Bundle::new(&spec)?;
    let read = |kind: &str| -> Result<Value> {
        let p = dir.join(format!("{kind}.json"));
        let text =
            std::fs::read_to_string(&p).with_context(|| format!("{kind} hook did not run"))?;
        serde_json::from_str(&text).with_context(|| format!("{kind} hook stdin: {text:?}"))
    };

    rt.create(&id, &b)?;
    let created = rt.state(&id)?;
    let cr = read("createRuntime")?;
    assert_eq!(cr["id"], id.as_str(), "{cr}");
    assert_eq!(cr["bundle"], b.path_str(), "{cr}");
    assert_eq!(cr["status"], "creating", "{cr}");
    assert_eq!(cr["pid"].as_i64(), created.pid().map(i64::from), "{cr}");
    // runc 1.1 runs poststart hooks during create (fixed in runc 1.2); the
    // spec, and berth, run them after start.
    let strict = rt.flavor() == Flavor::Berth;
    if strict {
        assert!(
            !dir.join("poststart.json").exists(),
            "poststart ran before start"
        );
    }

    rt.start(&id)?;
    let ps = wait_until(Duration::from_secs(10), "poststart hook", || {
        Ok(read("poststart").ok())
    })?;
    assert_eq!(ps["id"], id.as_str(), "{ps}");
    if strict {
        assert_eq!(ps["status"], "running", "{ps}");
    } else {
        eprintln!("runc poststart hook saw status {}", ps["status"]);
    }
    assert!(!dir.join("poststop.json").exists(), "poststop ran early");

    rt.delete_force(&id)?;
    let pst = read("poststop")?;
    assert_eq!(pst["id"], id.as_str(), "{pst}");
    assert_eq!(pst["status"], "stopped", "{pst}");
    Ok(())
}

#[test]
fn a_failing_create_runtime_hook_fails_create_and_cleans_up() -> Result<()> {
    let rt = Runtime::new()?;
    let id = unique_id("badhook");
    let spec = Spec::test(&id, &["sleep", "1000"]).hook(
        "createRuntime",
        "/bin/sh",
        &["sh", "-c", "exit 1"],
    );
    let b = Bundle::new(&spec)?;
    let out = rt.cmd(&["create", "--bundle", b.path_str(), &id])?;
    assert!(!out.success(), "{out}");
    assert!(
        !rt.cmd(&["state", &id])?.success(),
        "container exists after a failed create"
    );
    Ok(())
}
