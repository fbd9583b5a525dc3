//! Running a plugin executable as the spec says a runtime (or a plugin that
//! delegates to an IPAM plugin) does: find it in `CNI_PATH`, pass `CNI_*` and
//! the config on stdin, read a result or an error from stdout.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::protocol::Invocation;
use crate::types::{CniError, code};

/// Finds plugin `name` in `path` (the CNI_PATH dirs), refusing names that
/// are not plain file names.
pub fn find(name: &str, path: &[PathBuf]) -> Result<PathBuf, CniError> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            format!("plugin type {name:?} is not a plain name"),
        ));
    }
    path.iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            CniError::new(
                code::INVALID_CONFIG,
                format!(
                    "plugin {name:?} not found in CNI_PATH ({})",
                    path.iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(":")
                ),
            )
        })
}

/// Runs `exe` for `inv` (its command, container, netns, ifname, args, path)
/// with `config` on stdin. Returns the parsed stdout (None when empty, as
/// for DEL), or the plugin's error.
pub fn run(exe: &Path, inv: &Invocation, config: &Value) -> Result<Option<Value>, CniError> {
    let stdin = serde_json::to_vec(config).map_err(|e| {
        CniError::new(code::IO_FAILURE, "cannot encode the config").with_details(e.to_string())
    })?;
    let args: Vec<String> = inv.args.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let path: Vec<String> = inv.path.iter().map(|p| p.display().to_string()).collect();
    let mut cmd = Command::new(exe);
    cmd.env_clear()
        .env("CNI_COMMAND", inv.command.as_str())
        .env("CNI_CONTAINERID", &inv.container_id)
        .env("CNI_IFNAME", &inv.ifname)
        .env("CNI_ARGS", args.join(";"))
        .env("CNI_PATH", path.join(":"))
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(ns) = &inv.netns {
        cmd.env("CNI_NETNS", ns);
    }
    let io = |what: &str, e: std::io::Error| {
        CniError::new(code::IO_FAILURE, format!("{what} {}", exe.display()))
            .with_details(e.to_string())
    };
    let mut child = cmd.spawn().map_err(|e| io("running", e))?;
    if let Some(mut s) = child.stdin.take() {
        // A plugin that exits without reading closes the pipe: its exit says why.
        let _ = s.write_all(&stdin);
    }
    let out = child.wait_with_output().map_err(|e| io("waiting for", e))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(match serde_json::from_slice::<CniError>(&out.stdout) {
            Ok(e) => e,
            Err(_) => CniError::new(
                code::IO_FAILURE,
                format!("plugin {} failed ({})", exe.display(), out.status),
            )
            .with_details(format!(
                "stdout: {} stderr: {}",
                text.trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            )),
        });
    }
    if text.trim().is_empty() {
        return Ok(None);
    }
    serde_json::from_slice(&out.stdout).map(Some).map_err(|e| {
        CniError::new(
            code::DECODE_FAILURE,
            format!("plugin {} printed no JSON result", exe.display()),
        )
        .with_details(e.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_with_slashes_are_refused() {
        assert_eq!(
            find("../x", &[PathBuf::from("/usr/lib/cni")])
                .unwrap_err()
                .code,
            code::INVALID_CONFIG
        );
    }

    #[test]
    fn a_missing_plugin_names_the_path() {
        let e = find("no-such-plugin", &[PathBuf::from("/nonexistent")]).unwrap_err();
        assert!(e.msg.contains("/nonexistent"), "{e}");
    }
}
