//! The CRI daemon's state: its stores, its pods and containers (in memory,
//! mirrored on disk by [`Records`]), the name reservations, and the
//! recovery a restarted daemon runs.
//!
//! Every operation here blocks (files, mounts, netlink, child processes); the
//! gRPC handlers run them on tokio's blocking pool. A pod's or a container's
//! own mutex serializes the operations on it, so different pods proceed in
//! parallel.

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};

use tonic::Status;

use super::network::Network;
use super::records::{ContainerPhase, ContainerRecord, Records, SandboxRecord, SandboxState};
use crate::cgroups::CgroupConfig;
use crate::config::{CgroupDriver, RuntimeConfig};
use crate::container::Engine;
use crate::image::store::ImageStore;

/// Where the daemon keeps things.
#[derive(Debug, Clone)]
pub struct Paths {
    /// Persistent: records, pod files, images (`/var/lib/berth`).
    pub root: PathBuf,
    /// Volatile: pinned namespaces, shm mounts, engine state (`/run/berth`).
    pub state: PathBuf,
}

impl Paths {
    pub fn engine_root(&self) -> PathBuf {
        self.state.join("containers")
    }

    pub fn pod_state_dir(&self, id: &str) -> PathBuf {
        self.state.join("pods").join(id)
    }

    /// A container's OCI bundle (its config.json).
    pub fn bundle_dir(&self, id: &str) -> PathBuf {
        self.state.join("bundles").join(id)
    }
}

pub type Shared<T> = Arc<Mutex<T>>;

/// Locks, recovering the data of a mutex whose holder panicked: a record is
/// always written whole, so it stays usable.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub struct Daemon {
    pub images: Arc<ImageStore>,
    pub engine: Engine,
    pub paths: Paths,
    pub records: Records,
    pub network: Network,
    pub systemd_cgroup: bool,
    /// The `berth` executable, run as `berth oci` to create containers and
    /// exec in them: a fork from this multi-threaded daemon would be unsafe.
    pub exe: PathBuf,
    /// Runs `berth oci create` without an exec each time; None: it could not
    /// be started, and commands are exec'd.
    pub forkserver: Option<crate::forkserver::Client>,
    pub cgroup_root: String,
    pub sandboxes: Mutex<HashMap<String, Shared<SandboxRecord>>>,
    pub containers: Mutex<HashMap<String, Shared<ContainerRecord>>>,
    /// Reserved names (pods' and containers') → the ID holding each.
    pub names: Mutex<HashMap<String, String>>,
    pub events: super::events::Events,
    pub cpu_samples: super::stats::CpuSamples,
}

impl Daemon {
    pub fn open(
        config: &RuntimeConfig,
        images: Arc<ImageStore>,
        paths: Paths,
        exe: PathBuf,
    ) -> Result<Arc<Daemon>, String> {
        for dir in [&paths.root, &paths.state] {
            std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        }
        let engine = Engine::new(
            paths.engine_root(),
            CgroupConfig {
                parent: config.cgroup.root.clone(),
                ..Default::default()
            },
        );
        let d = Daemon {
            images,
            engine,
            records: Records::new(&paths.root),
            network: Network::new(&config.cni),
            paths,
            systemd_cgroup: config.cgroup.driver == CgroupDriver::Systemd,
            forkserver: match crate::forkserver::Client::spawn(&exe) {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::warn!(error = %e, "no fork server; the engine is exec'd for each container");
                    None
                }
            },
            exe,
            cgroup_root: config.cgroup.root.clone(),
            sandboxes: Mutex::new(HashMap::new()),
            containers: Mutex::new(HashMap::new()),
            names: Mutex::new(HashMap::new()),
            events: Default::default(),
            cpu_samples: Default::default(),
        };
        d.recover()?;
        let d = Arc::new(d);
        super::events::watch(&d);
        Ok(d)
    }

    /// Loads what a previous daemon left: finished objects are adopted as
    /// they are (running containers are never touched); half-made ones are
    /// undone.
    fn recover(&self) -> Result<(), String> {
        let (sandboxes, orphans) = self.records.load_sandboxes().map_err(|e| e.to_string())?;
        for dir in orphans {
            let _ = std::fs::remove_dir_all(&dir);
        }
        for r in sandboxes {
            if r.state == SandboxState::Creating {
                tracing::info!(id = %r.id, "removing a pod sandbox whose creation was interrupted");
                self.undo_sandbox(&r);
                continue;
            }
            lock(&self.names).insert(r.name.clone(), r.id.clone());
            lock(&self.sandboxes).insert(r.id.clone(), Arc::new(Mutex::new(r)));
        }
        let (containers, orphans) = self.records.load_containers().map_err(|e| e.to_string())?;
        for dir in orphans {
            let _ = std::fs::remove_dir_all(&dir);
        }
        for r in containers {
            let pod_known = lock(&self.sandboxes).contains_key(&r.sandbox_id);
            if r.phase == ContainerPhase::Creating || !pod_known {
                tracing::info!(id = %r.id, "removing a container whose creation was interrupted");
                self.undo_container(&r);
                continue;
            }
            lock(&self.names).insert(r.name.clone(), r.id.clone());
            lock(&self.containers).insert(r.id.clone(), Arc::new(Mutex::new(r)));
        }
        // Bundles whose container record is gone (a crash between the two
        // removals).
        if let Ok(entries) = std::fs::read_dir(self.paths.state.join("bundles")) {
            let known = lock(&self.containers);
            for e in entries.flatten() {
                let name = e.file_name();
                if !name.to_str().is_some_and(|id| known.contains_key(id)) {
                    remove_tree(&e.path());
                }
            }
        }
        tracing::info!(
            pods = lock(&self.sandboxes).len(),
            containers = lock(&self.containers).len(),
            "state recovered"
        );
        Ok(())
    }

    /// Reserves `name` for `id`; a name held by another ID is refused.
    pub fn reserve_name(&self, name: &str, id: &str, what: &str) -> Result<(), Status> {
        let mut names = lock(&self.names);
        match names.get(name) {
            Some(holder) if holder != id => Err(Status::already_exists(format!(
                "the {what} name {name:?} is reserved for {holder}"
            ))),
            _ => {
                names.insert(name.to_string(), id.to_string());
                Ok(())
            }
        }
    }

    pub fn release_name(&self, name: &str, id: &str) {
        let mut names = lock(&self.names);
        if names.get(name).is_some_and(|h| h == id) {
            names.remove(name);
        }
    }

    /// The holder of a reserved name.
    pub fn name_holder(&self, name: &str) -> Option<String> {
        lock(&self.names).get(name).cloned()
    }

    /// A sandbox by ID or unique ID prefix.
    pub fn sandbox(&self, id: &str) -> Result<Shared<SandboxRecord>, Status> {
        find(&lock(&self.sandboxes), id, "pod sandbox")
    }

    pub fn container(&self, id: &str) -> Result<Shared<ContainerRecord>, Status> {
        find(&lock(&self.containers), id, "container")
    }

    pub fn all_sandboxes(&self) -> Vec<Shared<SandboxRecord>> {
        lock(&self.sandboxes).values().cloned().collect()
    }

    pub fn all_containers(&self) -> Vec<Shared<ContainerRecord>> {
        lock(&self.containers).values().cloned().collect()
    }

    /// A copy of a sandbox's record without waiting for an operation in
    /// progress on it (which may take long, e.g. a CNI plugin): then the
    /// record as last written to disk. Status and list calls use it.
    pub fn peek_sandbox(&self, shared: &Shared<SandboxRecord>) -> Option<SandboxRecord> {
        match shared.try_lock() {
            Ok(r) => Some(r.clone()),
            Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner().clone()),
            Err(std::sync::TryLockError::WouldBlock) => {
                let id = self
                    .sandboxes
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .iter()
                    .find(|(_, v)| Arc::ptr_eq(v, shared))
                    .map(|(k, _)| k.clone())?;
                self.records.read_sandbox(&id)
            }
        }
    }

    pub fn peek_container(&self, shared: &Shared<ContainerRecord>) -> Option<ContainerRecord> {
        match shared.try_lock() {
            Ok(r) => Some(r.clone()),
            Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner().clone()),
            Err(std::sync::TryLockError::WouldBlock) => {
                let id = self
                    .containers
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .iter()
                    .find(|(_, v)| Arc::ptr_eq(v, shared))
                    .map(|(k, _)| k.clone())?;
                self.records.read_container(&id)
            }
        }
    }

    /// Containers of one pod.
    pub fn containers_of(&self, sandbox_id: &str) -> Vec<Shared<ContainerRecord>> {
        self.all_containers()
            .into_iter()
            .filter(|c| {
                self.peek_container(c)
                    .is_some_and(|r| r.sandbox_id == sandbox_id)
            })
            .collect()
    }

    /// The arguments of `berth oci` with this daemon's engine settings.
    pub fn oci_args(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = vec![
            "oci".into(),
            "--root".into(),
            self.paths.engine_root().into(),
            "--cgroup-root".into(),
            self.cgroup_root.clone().into(),
            "--monitor".into(),
            "always".into(),
        ];
        if self.systemd_cgroup {
            a.push("--systemd-cgroup".into());
        }
        a
    }

    /// `berth oci` with this daemon's engine settings.
    pub fn oci(&self) -> Command {
        let mut c = Command::new(&self.exe);
        c.args(self.oci_args()).stdin(Stdio::null());
        c
    }

    /// Runs `berth <args>` (a `berth oci` command line), through the fork
    /// server when there is one, turning a failure into its stderr.
    pub fn run_engine(&self, args: Vec<OsString>, what: &str) -> Result<(), String> {
        let errfile = std::fs::File::from(
            nix::sys::memfd::memfd_create(
                c"berth-engine-stderr",
                nix::sys::memfd::MFdFlags::MFD_CLOEXEC,
            )
            .map_err(|e| format!("{what}: a file for the engine's errors: {e}"))?,
        );
        let code = match &self.forkserver {
            Some(fs) => match fs.run(&args, errfile.as_fd()) {
                Ok(code) => code,
                // Never delivered, so never run: exec it instead.
                Err(crate::forkserver::ForkServerError::NotSent(e)) => {
                    tracing::warn!(error = %e, "the fork server is gone; exec'ing the engine");
                    exec_code(&self.exe, &args, &errfile, what)?
                }
                Err(e) => return Err(format!("{what}: {e}")),
            },
            None => exec_code(&self.exe, &args, &errfile, what)?,
        };
        engine_result(code, errfile, what)
    }
}

fn find<T>(map: &HashMap<String, Shared<T>>, id: &str, what: &str) -> Result<Shared<T>, Status> {
    if id.is_empty() {
        return Err(Status::invalid_argument(format!("the {what} ID is empty")));
    }
    if let Some(v) = map.get(id) {
        return Ok(Arc::clone(v));
    }
    let mut hits = map.iter().filter(|(k, _)| k.starts_with(id));
    match (hits.next(), hits.next()) {
        (Some((_, v)), None) => Ok(Arc::clone(v)),
        (Some(_), Some(_)) => Err(Status::invalid_argument(format!(
            "the {what} ID prefix {id:?} is ambiguous"
        ))),
        _ => Err(Status::not_found(format!("{what} {id:?} not found"))),
    }
}

/// Execs `exe <args>` with `errfile` as stderr; its exit code (128 plus
/// the signal for one that was killed).
///
/// Its stderr goes to a memory file, not a pipe: a process it leaves
/// behind (a container's init waiting to be started) may hold the
/// descriptor, and a pipe would then never reach end of file. (A memory
/// file rather than an unlinked one on disk: no inode to allocate on every
/// create.)
fn exec_code(
    exe: &Path,
    args: &[OsString],
    errfile: &std::fs::File,
    what: &str,
) -> Result<i32, String> {
    let errclone = errfile
        .try_clone()
        .map_err(|e| format!("{what}: a file for the engine's errors: {e}"))?;
    let status = Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(errclone))
        .status()
        .map_err(|e| format!("{what}: running the engine: {e}"))?;
    use std::os::unix::process::ExitStatusExt;
    Ok(status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}

/// Success, or the engine's stderr as the error.
fn engine_result(code: i32, mut errfile: std::fs::File, what: &str) -> Result<(), String> {
    if code == 0 {
        return Ok(());
    }
    let mut text = String::new();
    use std::io::{Read, Seek};
    let _ = errfile.seek(std::io::SeekFrom::Start(0));
    let _ = errfile.take(64 * 1024).read_to_string(&mut text);
    let text = text.trim();
    Err(format!(
        "{what}: {}",
        if text.is_empty() {
            format!("the engine exited with code {code}")
        } else {
            text.strip_prefix("berth-oci: ").unwrap_or(text).to_string()
        }
    ))
}

/// Removes a directory tree, ignoring one that is gone.
pub fn remove_tree(path: &Path) {
    if let Err(e) = std::fs::remove_dir_all(path)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(path = %path.display(), error = %e, "removing");
    }
}
