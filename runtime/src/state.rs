//! On-disk state of each container, the only memory berth keeps between commands.
//!
//! `<root>/<id>/` holds `state.json` (written once the init is waiting at the
//! barrier, with a copy of the spec so exec and hooks do not depend on the
//! bundle staying put), `exec.fifo` (the start barrier, present until start),
//! `started` (when a monitor will want the start time) and `exit.json`
//! (written by the monitor when the init exits). Each file is
//! written to a temporary name and renamed, so a `kill -9` at any moment leaves
//! either the old or the new content.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum StateError {
    #[error("container {0:?} does not exist")]
    NotFound(String),
    #[error("container {0:?} already exists")]
    Exists(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: corrupt state: {source}")]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.to_owned(),
        source,
    }
}

pub const STATE_FILE: &str = "state.json";
pub const STARTED_FILE: &str = "started";
pub const EXIT_FILE: &str = "exit.json";
pub const FIFO_FILE: &str = "exec.fifo";

/// What berth records about a container once it is created.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ContainerState {
    pub id: String,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    /// The init's pid in berth's pid namespace.
    pub pid: i32,
    /// Field 22 of /proc/PID/stat: tells our init apart from a later process that reuses the pid.
    pub pid_start: u64,
    /// RFC 3339 creation time.
    pub created: String,
    /// The cgroup, relative to the cgroup parent.
    pub cgroup: PathBuf,
    pub cgroup_mount_root: PathBuf,
    pub cgroup_parent: String,
    /// Set when berth's monitor supervises the init.
    #[serde(default)]
    pub monitor_pid: Option<i32>,
    #[serde(default)]
    pub owner: String,
    #[serde(default)]
    pub annotations: std::collections::HashMap<String, String>,
    /// Namespaces the container created, as /proc paths are gone once it exits.
    #[serde(default)]
    pub new_pid_namespace: bool,
    #[serde(default)]
    pub spec: Option<oci_spec::runtime::Spec>,
}

/// How the init ended, as recorded by the monitor.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ExitRecord {
    /// The exit code, or 128 + signal when a signal ended the process.
    pub exit_code: i32,
    #[serde(default)]
    pub signal: Option<i32>,
    pub oom_killed: bool,
    pub started_at: String,
    pub finished_at: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Creating,
    Created,
    Running,
    Paused,
    Stopped,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        })
    }
}

/// The state root, e.g. /run/berth-oci.
#[derive(Debug, Clone)]
pub struct Root {
    pub dir: PathBuf,
}

impl Root {
    pub fn new(dir: impl Into<PathBuf>) -> Root {
        Root { dir: dir.into() }
    }

    pub fn container_dir(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    /// Reserves the ID: the directory's creation is the atomic "does it exist" test.
    pub fn reserve(&self, id: &str) -> Result<PathBuf, StateError> {
        fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let dir = self.container_dir(id);
        match fs::create_dir(&dir) {
            Ok(()) => Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Err(StateError::Exists(id.to_owned()))
            }
            Err(e) => Err(io(&dir)(e)),
        }
    }

    pub fn load(&self, id: &str) -> Result<ContainerState, StateError> {
        let path = self.container_dir(id).join(STATE_FILE);
        let text = match fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StateError::NotFound(id.to_owned()));
            }
            Err(e) => return Err(io(&path)(e)),
        };
        serde_json::from_slice(&text).map_err(|source| StateError::Corrupt { path, source })
    }

    pub fn exit_record(&self, id: &str) -> Result<Option<ExitRecord>, StateError> {
        let path = self.container_dir(id).join(EXIT_FILE);
        match fs::read(&path) {
            Ok(t) => serde_json::from_slice(&t)
                .map(Some)
                .map_err(|source| StateError::Corrupt { path, source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&path)(e)),
        }
    }

    /// IDs of every container with a state dir, sorted.
    pub fn list(&self) -> Result<Vec<String>, StateError> {
        let mut ids = Vec::new();
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ids),
            Err(e) => return Err(io(&self.dir)(e)),
        };
        for e in entries {
            let e = e.map_err(io(&self.dir))?;
            if e.path().join(STATE_FILE).exists()
                && let Some(name) = e.file_name().to_str()
            {
                ids.push(name.to_owned());
            }
        }
        ids.sort();
        Ok(ids)
    }

    pub fn remove(&self, id: &str) -> Result<(), StateError> {
        let dir = self.container_dir(id);
        let mut tries = 0;
        loop {
            match fs::remove_dir_all(&dir) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                // The monitor may be writing exit.json at this moment.
                Err(e) if e.kind() == std::io::ErrorKind::DirectoryNotEmpty && tries < 100 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(e) => return Err(io(&dir)(e)),
            }
        }
    }
}

/// Writes `bytes` to `path` through a temporary file and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    let tmp = path.with_extension("tmp");
    let mut f = fs::File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(bytes).map_err(io(&tmp))?;
    fs::rename(&tmp, path).map_err(io(path))
}

pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), StateError> {
    let bytes = serde_json::to_vec(value).map_err(|source| StateError::Corrupt {
        path: path.to_owned(),
        source,
    })?;
    write_atomic(path, &bytes)
}

/// What /proc says about a pid: alive, and its start time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    pub state: char,
    pub ppid: i32,
    pub start_time: u64,
}

pub fn proc_stat(pid: i32) -> Option<ProcStat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

/// Parses /proc/PID/stat; the command name may contain spaces and parens, so
/// fields are counted from the last ')'.
pub fn parse_stat(text: &str) -> Option<ProcStat> {
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    // After state and ppid, starttime is the 20th of the remaining fields (field 22 overall).
    let start_time = fields.nth(17)?.parse().ok()?;
    Some(ProcStat {
        state,
        ppid,
        start_time,
    })
}

/// True when `pid` is still the process recorded at create time and not a zombie.
pub fn is_alive(pid: i32, start_time: u64) -> bool {
    matches!(proc_stat(pid), Some(s) if s.start_time == start_time && s.state != 'Z' && s.state != 'X')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_odd_comm() {
        let text = "1234 (a) b (c)) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 98765 1000 10 18446744073709551615";
        let s = parse_stat(text).unwrap();
        assert_eq!(s.state, 'S');
        assert_eq!(s.ppid, 1);
        assert_eq!(s.start_time, 98765);
    }

    #[test]
    fn own_process_is_alive() {
        let me = std::process::id() as i32;
        let s = proc_stat(me).unwrap();
        assert!(is_alive(me, s.start_time));
        assert!(!is_alive(me, s.start_time + 1));
    }

    #[test]
    fn reserve_refuses_existing() {
        let t = tempfile::tempdir().unwrap();
        let root = Root::new(t.path().join("r"));
        root.reserve("a").unwrap();
        assert!(matches!(root.reserve("a"), Err(StateError::Exists(_))));
        assert!(matches!(root.load("a"), Err(StateError::NotFound(_))));
        assert!(root.list().unwrap().is_empty());
    }
}
