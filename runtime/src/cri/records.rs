//! What the CRI daemon knows about pods and containers, kept on disk so a
//! restarted daemon finds everything it made.
//!
//! One JSON file per object (`<root>/pods/<id>/sandbox.json`,
//! `<root>/containers/<id>/container.json`), replaced atomically. A record is
//! written with state `Creating` before anything else is made, so a daemon
//! killed in the middle finds the half-made object on restart and removes
//! it; the request's config is kept as its protobuf encoding, which is
//! exact and survives API additions.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::sandbox::namespaces::Pinned;
use crate::state::{self, StateError};

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error(transparent)]
    Write(#[from] StateError),
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: corrupt record: {message}")]
    Corrupt { path: PathBuf, message: String },
}

mod b64 {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SandboxState {
    Creating,
    Ready,
    NotReady,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SandboxRecord {
    pub id: String,
    /// The reserved name: `name_namespace_uid_attempt`.
    pub name: String,
    /// The PodSandboxConfig, protobuf-encoded.
    #[serde(with = "b64")]
    pub config: Vec<u8>,
    pub runtime_handler: String,
    /// Unix nanoseconds.
    pub created_at: i64,
    pub state: SandboxState,
    #[serde(default)]
    pub namespaces: Pinned,
    /// The CNI network the pod is attached to, and the addresses it got.
    #[serde(default)]
    pub network: Option<String>,
    #[serde(default)]
    pub ips: Vec<String>,
    /// The pod's /dev/shm tmpfs.
    #[serde(default)]
    pub shm: Option<PathBuf>,
    #[serde(default)]
    pub hostname_file: Option<PathBuf>,
    #[serde(default)]
    pub resolv_conf: Option<PathBuf>,
    #[serde(default)]
    pub hosts_file: Option<PathBuf>,
    /// The init holding the pod's shared pid namespace: pid and start time.
    #[serde(default)]
    pub pod_init: Option<(i32, u64)>,
}

impl SandboxRecord {
    /// `/proc/<init>/ns/pid` while the pod's init is alive.
    pub fn pid_ns(&self) -> Option<PathBuf> {
        let (pid, start) = self.pod_init?;
        crate::state::is_alive(pid, start).then(|| PathBuf::from(format!("/proc/{pid}/ns/pid")))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContainerPhase {
    /// Being made; the engine may hold a half-made container.
    Creating,
    /// Handed to the engine: its state there is the container's state.
    Created,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerRecord {
    pub id: String,
    pub sandbox_id: String,
    /// The reserved name: `name_podname_namespace_uid_attempt`.
    pub name: String,
    /// The ContainerConfig, protobuf-encoded.
    #[serde(with = "b64")]
    pub config: Vec<u8>,
    /// The image as the request named it.
    pub image: String,
    /// The image's ID (`sha256:...`).
    pub image_id: String,
    /// A repo digest of the image, if it has one (ContainerStatus.image_ref).
    #[serde(default)]
    pub image_ref: String,
    pub log_path: Option<PathBuf>,
    pub created_at: i64,
    pub phase: ContainerPhase,
    /// Signal StopContainer sends first (the image's StopSignal, or SIGTERM).
    #[serde(default)]
    pub stop_signal: Option<String>,
    /// Set once a stop has begun, so the reason of the exit is known.
    #[serde(default)]
    pub stopping: bool,
}

/// Where records live.
#[derive(Debug, Clone)]
pub struct Records {
    root: PathBuf,
}

const SANDBOX_FILE: &str = "sandbox.json";
const CONTAINER_FILE: &str = "container.json";

impl Records {
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
        }
    }

    pub fn pod_dir(&self, id: &str) -> PathBuf {
        self.root.join("pods").join(id)
    }

    pub fn container_dir(&self, id: &str) -> PathBuf {
        self.root.join("containers").join(id)
    }

    pub fn save_sandbox(&self, r: &SandboxRecord) -> Result<(), RecordError> {
        let dir = self.pod_dir(&r.id);
        std::fs::create_dir_all(&dir).map_err(|source| RecordError::Io {
            op: "creating",
            path: dir.clone(),
            source,
        })?;
        Ok(state::write_json(&dir.join(SANDBOX_FILE), r)?)
    }

    pub fn save_container(&self, r: &ContainerRecord) -> Result<(), RecordError> {
        let dir = self.container_dir(&r.id);
        std::fs::create_dir_all(&dir).map_err(|source| RecordError::Io {
            op: "creating",
            path: dir.clone(),
            source,
        })?;
        Ok(state::write_json(&dir.join(CONTAINER_FILE), r)?)
    }

    /// The record as last written.
    pub fn read_sandbox(&self, id: &str) -> Option<SandboxRecord> {
        let bytes = std::fs::read(self.pod_dir(id).join(SANDBOX_FILE)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    pub fn read_container(&self, id: &str) -> Option<ContainerRecord> {
        let bytes = std::fs::read(self.container_dir(id).join(CONTAINER_FILE)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    pub fn remove_sandbox(&self, id: &str) -> Result<(), RecordError> {
        remove_dir(&self.pod_dir(id))
    }

    pub fn remove_container(&self, id: &str) -> Result<(), RecordError> {
        remove_dir(&self.container_dir(id))
    }

    /// Every sandbox record, and the directories holding none (a crash
    /// between mkdir and the first write), which the caller removes.
    pub fn load_sandboxes(&self) -> Result<(Vec<SandboxRecord>, Vec<PathBuf>), RecordError> {
        load_all(&self.root.join("pods"), SANDBOX_FILE)
    }

    pub fn load_containers(&self) -> Result<(Vec<ContainerRecord>, Vec<PathBuf>), RecordError> {
        load_all(&self.root.join("containers"), CONTAINER_FILE)
    }
}

fn remove_dir(dir: &Path) -> Result<(), RecordError> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(RecordError::Io {
            op: "removing",
            path: dir.to_path_buf(),
            source,
        }),
    }
}

fn load_all<T: for<'de> Deserialize<'de>>(
    dir: &Path,
    file: &str,
) -> Result<(Vec<T>, Vec<PathBuf>), RecordError> {
    let mut out = Vec::new();
    let mut orphans = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((out, orphans)),
        Err(source) => {
            return Err(RecordError::Io {
                op: "reading",
                path: dir.to_path_buf(),
                source,
            });
        }
    };
    for entry in entries.flatten() {
        let path = entry.path().join(file);
        match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(r) => out.push(r),
                Err(e) => {
                    // A record is replaced atomically, so a bad one was not
                    // written by us; keep it for the operator, say so.
                    tracing::error!(path = %path.display(), error = %e, "skipping a corrupt record");
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => orphans.push(entry.path()),
            Err(source) => {
                return Err(RecordError::Io {
                    op: "reading",
                    path,
                    source,
                });
            }
        }
    }
    Ok((out, orphans))
}

/// A fresh 64-hex-digit ID, as containerd and CRI-O make them.
pub fn new_id() -> String {
    let mut bytes = [0u8; 32];
    getrandom(&mut bytes);
    hex::encode(bytes)
}

fn getrandom(buf: &mut [u8]) {
    use std::io::Read;
    if let Ok(mut f) = std::fs::File::open("/dev/urandom")
        && f.read_exact(buf).is_ok()
    {
        return;
    }
    // No /dev/urandom: mix time and pid; IDs are names, not secrets.
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
        ^ (std::process::id() as u128) << 64;
    let digest = <sha2::Sha256 as sha2::Digest>::digest(seed.to_le_bytes());
    for (b, d) in buf.iter_mut().zip(digest.iter().cycle()) {
        *b = *d;
    }
}

/// Encodes bytes for verbose info.
pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}
