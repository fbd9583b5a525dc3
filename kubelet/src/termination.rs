//! Termination messages, as upstream: each container instance gets an empty
//! file of the pod's, `<pod dir>/containers/<name>/<instance>`, mounted at
//! its `terminationMessagePath` (`/dev/termination-log`), where a program
//! writes why it ended; the kubelet reads it back into the exited state's
//! `message`. With `terminationMessagePolicy: FallbackToLogsOnError`, a
//! container that failed and wrote nothing gets the tail of its log.

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use berth_proto::v1;
use k8s_openapi::api::core::v1::Container;
use thiserror::Error;

use crate::server::logs::{Assembler, LogOptions, Renderer, read_messages};

/// Upstream's default `terminationMessagePath`.
pub const DEFAULT_PATH: &str = "/dev/termination-log";
/// The most of a message file that is read, as upstream.
pub const MAX_MESSAGE_BYTES: u64 = 4096;
/// The log tail a failed container falls back to: lines, then bytes.
pub const FALLBACK_LINES: u64 = 80;
pub const FALLBACK_BYTES: usize = 2048;

#[derive(Debug, Error)]
pub enum TerminationError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> TerminationError {
    let path = path.to_owned();
    move |source| TerminationError::Io { op, path, source }
}

/// The path a container's message is written to; `None` when its spec
/// sets an empty one (no message file, as upstream).
pub fn message_path(container: &Container) -> Option<&str> {
    match container.termination_message_path.as_deref() {
        Some("") => None,
        Some(p) => Some(p),
        None => Some(DEFAULT_PATH),
    }
}

/// Makes the message file of a new instance of `container` in `pod_dir`
/// and returns its mount, or `None` when the container has no message path.
/// The file is world-writable: the container's user may be anyone.
pub fn prepare(
    pod_dir: &Path,
    container: &Container,
) -> Result<Option<v1::Mount>, TerminationError> {
    let Some(container_path) = message_path(container) else {
        return Ok(None);
    };
    let dir = pod_dir.join("containers").join(&container.name);
    fs::create_dir_all(&dir).map_err(io_err("creating", &dir))?;
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    // A name per instance, never reused: an exited instance keeps its file.
    let mut n = 0u32;
    let (file, host) = loop {
        let host = dir.join(format!("{:08x}", (nanos as u32).wrapping_add(n)));
        match fs::File::options().write(true).create_new(true).open(&host) {
            Ok(f) => break (f, host),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && n < 1000 => n += 1,
            Err(e) => return Err(io_err("creating", &host)(e)),
        }
    };
    file.set_permissions(fs::Permissions::from_mode(0o666))
        .map_err(io_err("setting the mode of", &host))?;
    Ok(Some(v1::Mount {
        container_path: container_path.to_owned(),
        host_path: host.display().to_string(),
        readonly: false,
        ..Default::default()
    }))
}

/// The message of an exited instance: its message file's content, or with
/// `FallbackToLogsOnError` and a non-zero exit and no message, its log's
/// tail. `status` is the runtime's status of the instance (its mounts and
/// log path); `container` its spec, when the pod still has it.
pub fn read(status: &v1::ContainerStatus, container: Option<&Container>) -> String {
    let Some(container) = container else {
        return String::new();
    };
    let Some(path) = message_path(container) else {
        return String::new();
    };
    let file = status
        .mounts
        .iter()
        .find(|m| m.container_path == path)
        .map(|m| PathBuf::from(&m.host_path));
    let mut message = String::new();
    if let Some(file) = file
        && let Ok(f) = fs::File::open(&file)
    {
        let mut buf = Vec::new();
        if f.take(MAX_MESSAGE_BYTES).read_to_end(&mut buf).is_ok() {
            message = String::from_utf8_lossy(&buf).into_owned();
        }
    }
    let fallback = container.termination_message_policy.as_deref() == Some("FallbackToLogsOnError");
    if message.is_empty() && fallback && status.exit_code != 0 && !status.log_path.is_empty() {
        message = log_tail(Path::new(&status.log_path)).unwrap_or_default();
    }
    message
}

/// The last [`FALLBACK_LINES`] messages of a CRI log, at most
/// [`FALLBACK_BYTES`] from their end.
fn log_tail(path: &Path) -> Option<String> {
    let f = fs::File::open(path).ok()?;
    let opts = LogOptions::default();
    let messages = read_messages(
        io::BufReader::new(f),
        Some(FALLBACK_LINES),
        &Renderer::new(&opts),
        &mut Assembler::default(),
    )
    .ok()?;
    let mut text = Vec::new();
    for m in messages {
        text.extend_from_slice(&m.content);
        text.push(b'\n');
    }
    let start = text.len().saturating_sub(FALLBACK_BYTES);
    Some(String::from_utf8_lossy(&text[start..]).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(yaml: &str) -> Container {
        serde_saphyr::from_str(yaml).unwrap()
    }

    #[test]
    fn each_instance_gets_its_own_world_writable_file() {
        let dir = tempfile::tempdir().unwrap();
        let c = container("{name: web, image: x}");
        let a = prepare(dir.path(), &c).unwrap().unwrap();
        let b = prepare(dir.path(), &c).unwrap().unwrap();
        assert_eq!(a.container_path, DEFAULT_PATH);
        assert_ne!(a.host_path, b.host_path);
        assert!(
            a.host_path
                .starts_with(&dir.path().join("containers/web").display().to_string())
        );
        let mode = fs::metadata(&a.host_path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o666);
        let none = container("{name: web, image: x, terminationMessagePath: ''}");
        assert!(prepare(dir.path(), &none).unwrap().is_none());
    }

    fn status(mount: &v1::Mount, exit_code: i32, log: &Path) -> v1::ContainerStatus {
        v1::ContainerStatus {
            mounts: vec![mount.clone()],
            exit_code,
            log_path: log.display().to_string(),
            ..Default::default()
        }
    }

    #[test]
    fn the_file_is_the_message_and_the_log_the_fallback() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("0.log");
        fs::write(
            &log,
            "2026-01-01T00:00:00.000000000Z stdout F first\n\
             2026-01-01T00:00:01.000000000Z stderr P part \n\
             2026-01-01T00:00:02.000000000Z stderr F two\n",
        )
        .unwrap();
        let file_policy = container("{name: web, image: x}");
        let fallback =
            container("{name: web, image: x, terminationMessagePolicy: FallbackToLogsOnError}");
        let m = prepare(dir.path(), &file_policy).unwrap().unwrap();
        // Nothing written: no message under File, the log under the fallback.
        assert_eq!(read(&status(&m, 1, &log), Some(&file_policy)), "");
        assert_eq!(
            read(&status(&m, 1, &log), Some(&fallback)),
            "first\npart two\n"
        );
        // Not for a success.
        assert_eq!(read(&status(&m, 0, &log), Some(&fallback)), "");
        fs::write(&m.host_path, "disk full").unwrap();
        assert_eq!(read(&status(&m, 1, &log), Some(&fallback)), "disk full");
        fs::write(&m.host_path, "x".repeat(10_000)).unwrap();
        assert_eq!(read(&status(&m, 1, &log), Some(&file_policy)).len(), 4096);
        assert_eq!(read(&status(&m, 1, &log), None), "");
    }

    #[test]
    fn the_fallback_keeps_the_end_of_a_long_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("0.log");
        let mut text = String::new();
        for i in 0..200 {
            text.push_str(&format!(
                "2026-01-01T00:00:00.000000000Z stdout F line {i:03} {}\n",
                "y".repeat(20)
            ));
        }
        fs::write(&log, text).unwrap();
        let tail = log_tail(&log).unwrap();
        assert_eq!(tail.len(), FALLBACK_BYTES);
        assert!(tail.ends_with(&format!("line 199 {}\n", "y".repeat(20))));
    }
}
