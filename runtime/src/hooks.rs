//! OCI hooks: programs run at fixed points of the lifecycle with the container's
//! state JSON on stdin.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use oci_spec::runtime::Hook;
use serde::Serialize;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum HookError {
    #[error("{stage} hook {index} ({path}): {message}")]
    Failed {
        stage: &'static str,
        index: usize,
        path: String,
        message: String,
    },
}

/// The state document hooks read on stdin (runtime spec "State").
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HookState<'a> {
    pub oci_version: &'a str,
    pub id: &'a str,
    pub status: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    pub bundle: &'a std::path::Path,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub annotations: Option<&'a std::collections::HashMap<String, String>>,
}

/// Runs each hook in order; the first failure stops the list.
pub fn run(stage: &'static str, hooks: &[Hook], state: &HookState) -> Result<(), HookError> {
    if hooks.is_empty() {
        return Ok(());
    }
    let input = serde_json::to_vec(state).unwrap_or_default();
    for (index, hook) in hooks.iter().enumerate() {
        run_one(hook, &input).map_err(|message| HookError::Failed {
            stage,
            index,
            path: hook.path().display().to_string(),
            message,
        })?;
    }
    Ok(())
}

fn run_one(hook: &Hook, input: &[u8]) -> Result<(), String> {
    let mut cmd = Command::new(hook.path());
    let args = hook.args().clone().unwrap_or_default();
    if let Some(argv0) = args.first() {
        cmd.arg0(argv0);
        cmd.args(&args[1..]);
    }
    cmd.env_clear();
    for e in hook.env().iter().flatten() {
        if let Some((k, v)) = e.split_once('=') {
            cmd.env(k, v);
        }
    }
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("cannot start: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A hook that ignores stdin may close it early; that is not an error.
        let _ = stdin.write_all(input);
    }
    let deadline = hook
        .timeout()
        .filter(|t| *t > 0)
        .map(|t| Instant::now() + Duration::from_secs(t as u64));
    let mut pause = Duration::from_micros(200);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                if status.success() {
                    return Ok(());
                }
                let mut stderr = String::new();
                if let Some(mut e) = child.stderr.take() {
                    use std::io::Read;
                    let _ = e.read_to_string(&mut stderr);
                }
                return Err(format!("{status}: {}", stderr.trim()));
            }
            Ok(None) => {}
            Err(e) => return Err(format!("waiting: {e}")),
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("timed out after {}s", hook.timeout().unwrap_or(0)));
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(v: serde_json::Value) -> Hook {
        serde_json::from_value(v).unwrap()
    }

    fn state() -> HookState<'static> {
        HookState {
            oci_version: "1.0.2",
            id: "c1",
            status: "created",
            pid: Some(42),
            bundle: std::path::Path::new("/b"),
            annotations: None,
        }
    }

    #[test]
    fn hook_reads_state_and_env() {
        let t = tempfile::tempdir().unwrap();
        let out = t.path().join("out");
        let h = hook(serde_json::json!({
            "path": "/bin/sh",
            "args": ["sh", "-c", format!("cat > {}; echo \"$X\" >> {}", out.display(), out.display())],
            "env": ["X=from-env"]
        }));
        run("prestart", &[h], &state()).unwrap();
        let text = std::fs::read_to_string(&out).unwrap();
        assert!(
            text.contains("\"id\":\"c1\"") && text.contains("\"pid\":42"),
            "{text}"
        );
        assert!(text.contains("from-env"), "{text}");
    }

    #[test]
    fn failure_and_timeout_are_reported() {
        let fail = hook(
            serde_json::json!({"path": "/bin/sh", "args": ["sh", "-c", "echo bad >&2; exit 3"]}),
        );
        let e = run("poststop", &[fail], &state()).unwrap_err().to_string();
        assert!(e.contains("poststop hook 0") && e.contains("bad"), "{e}");
        let slow =
            hook(serde_json::json!({"path": "/bin/sleep", "args": ["sleep", "5"], "timeout": 1}));
        let e = run("prestart", &[slow], &state()).unwrap_err().to_string();
        assert!(e.contains("timed out"), "{e}");
    }
}
