//! Running a plugin executable as the spec says a runtime (or a plugin that
//! delegates to an IPAM plugin) does: find it in `CNI_PATH`, pass `CNI_*` and
//! the config on stdin, read a result or an error from stdout.

use std::io::Write;
use std::os::fd::{AsFd, FromRawFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::protocol::Invocation;
use crate::types::{CniError, code};

/// How long one plugin invocation may take (the kubelet's own CRI timeout
/// for a sandbox is 4 minutes; a plugin is one step of it).
pub const PLUGIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// Waits until process `pid` (our child, not yet reaped) exits, at most
/// `timeout`; false if it is still running then. A pidfd wakes us at once.
fn exited_within(pid: u32, timeout: std::time::Duration) -> bool {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        // Kernels before 5.3: no bound rather than a busy loop.
        return true;
    }
    // SAFETY: the descriptor was just returned to us and is owned here only.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) };
    let mut pfd = [nix::poll::PollFd::new(
        fd.as_fd(),
        nix::poll::PollFlags::POLLIN,
    )];
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return false;
        }
        let ms = u16::try_from(left.as_millis().max(1)).unwrap_or(u16::MAX);
        match nix::poll::poll(&mut pfd, nix::poll::PollTimeout::from(ms)) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            _ => return true,
        }
    }
}

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
    // Drain the pipes on threads so a chatty plugin never blocks on them,
    // and wait with a deadline: a hung plugin must not hang the pod's setup.
    let drain = |r: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            buf
        })
    };
    let stdout = drain(child.stdout.take().map(|s| Box::new(s) as _));
    let stderr = drain(child.stderr.take().map(|s| Box::new(s) as _));
    if !exited_within(child.id(), PLUGIN_TIMEOUT) {
        let _ = child.kill();
        let _ = child.wait();
        return Err(CniError::new(
            code::TRY_AGAIN_LATER,
            format!(
                "plugin {} did not finish {} within {}s; it was killed",
                exe.display(),
                inv.command.as_str(),
                PLUGIN_TIMEOUT.as_secs()
            ),
        ));
    }
    let status = child.wait().map_err(|e| io("waiting for", e))?;
    let out = std::process::Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    };
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
    fn a_quick_child_is_seen_exiting_and_a_slow_one_is_not() {
        let mut quick = std::process::Command::new("true").spawn().unwrap();
        assert!(exited_within(quick.id(), std::time::Duration::from_secs(5)));
        quick.wait().unwrap();
        let mut slow = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        assert!(!exited_within(
            slow.id(),
            std::time::Duration::from_millis(50)
        ));
        slow.kill().unwrap();
        slow.wait().unwrap();
    }

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
