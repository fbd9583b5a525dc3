//! Containers: CreateContainer, StartContainer, StopContainer,
//! RemoveContainer, ContainerStatus, ListContainers, ExecSync,
//! UpdateContainerResources and ReopenContainerLog.
//!
//! CreateContainer makes the container in the engine (its init waits to be
//! started), so StartContainer only releases it. Containers are created and
//! exec'd into through `berth oci`, a child process: the engine forks, and
//! this daemon is multi-threaded.

use std::collections::HashMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_proto::v1;
use nix::sys::signal::Signal;
use prost::Message;
use serde_json::json;
use tonic::Status;

use super::daemon::{Daemon, lock, remove_tree};
use super::pod::{self, decode_config, labels_match};
use super::records::{ContainerPhase, ContainerRecord, SandboxState, new_id, now_nanos};
use super::spec::{self, HostDevice, PodView, SpecInput};
use crate::container::EngineError;
use crate::state::{StateError, Status as EngineStatus};

/// What ExecSync returns of each stream at most, so the answer stays under
/// the 16 MiB message limit (probes print a few lines).
const EXEC_SYNC_OUTPUT_LIMIT: u64 = 6 << 20;

/// Files larger than this in an image's /etc are not user databases.
const USER_DB_LIMIT: u64 = 4 << 20;

fn engine_status(e: EngineError) -> Status {
    match e {
        EngineError::State(StateError::NotFound(id)) => {
            Status::not_found(format!("container {id} does not exist in the engine"))
        }
        EngineError::WrongStatus { .. } => Status::failed_precondition(e.to_string()),
        other => Status::unknown(other.to_string()),
    }
}

pub fn decode(r: &ContainerRecord) -> v1::ContainerConfig {
    v1::ContainerConfig::decode(r.config.as_slice()).unwrap_or_default()
}

/// A log path inside the pod's log directory, or an error naming it.
fn log_path(dir: &str, rel: &str) -> Result<Option<PathBuf>, Status> {
    if rel.is_empty() {
        return Ok(None);
    }
    if dir.is_empty() {
        return Err(Status::invalid_argument(format!(
            "config.log_path {rel:?} is set but the pod has no log_directory"
        )));
    }
    let p = Path::new(rel);
    if p.is_absolute() || p.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(Status::invalid_argument(format!(
            "config.log_path {rel:?} must be a relative path inside the pod's log directory {dir:?}"
        )));
    }
    Ok(Some(Path::new(dir).join(p)))
}

fn device(host: &Path, container_path: &str, permissions: &str) -> Result<HostDevice, String> {
    let m = std::fs::metadata(host).map_err(|e| format!("{}: {e}", host.display()))?;
    let ft = m.file_type();
    let kind = if ft.is_char_device() {
        'c'
    } else if ft.is_block_device() {
        'b'
    } else {
        return Err(format!("{} is not a device node", host.display()));
    };
    let rdev = m.rdev();
    Ok(HostDevice {
        container_path: container_path.to_string(),
        kind,
        major: nix::sys::stat::major(rdev) as i64,
        minor: nix::sys::stat::minor(rdev) as i64,
        mode: m.mode() & 0o7777,
        uid: m.uid(),
        gid: m.gid(),
        permissions: permissions.to_string(),
    })
}

/// Every device node under /dev, for privileged containers.
fn host_devices() -> Vec<HostDevice> {
    let mut out = Vec::new();
    let mut dirs = vec![PathBuf::from("/dev")];
    while let Some(d) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                if !matches!(p.to_str(), Some("/dev/pts" | "/dev/shm" | "/dev/mqueue")) {
                    dirs.push(p);
                }
            } else if (ft.is_char_device() || ft.is_block_device())
                && p != Path::new("/dev/console")
                && let Ok(dev) = device(&p, &p.to_string_lossy(), "rwm")
            {
                out.push(dev);
            }
        }
    }
    out
}

fn signal_by_name(name: &str) -> Option<Signal> {
    let up = name.trim().to_ascii_uppercase();
    let full = if up.starts_with("SIG") {
        up
    } else {
        format!("SIG{up}")
    };
    full.parse::<Signal>().ok().or_else(|| {
        name.parse::<i32>()
            .ok()
            .and_then(|n| Signal::try_from(n).ok())
    })
}

impl Daemon {
    pub fn create_container(&self, req: v1::CreateContainerRequest) -> Result<String, Status> {
        let config = req
            .config
            .ok_or_else(|| Status::invalid_argument("config is required"))?;
        let meta = config
            .metadata
            .clone()
            .ok_or_else(|| Status::invalid_argument("config.metadata is required"))?;
        if meta.name.is_empty() {
            return Err(Status::invalid_argument("config.metadata.name is required"));
        }
        if meta.name.contains('/') || meta.name.contains('\0') {
            return Err(Status::invalid_argument(format!(
                "config.metadata.name {:?} may not hold '/' or NUL",
                meta.name
            )));
        }
        let image_ref = config
            .image
            .as_ref()
            .map(|i| i.image.trim().to_string())
            .filter(|i| !i.is_empty())
            .ok_or_else(|| Status::invalid_argument("config.image.image is required"))?;
        if req.pod_sandbox_id.is_empty() {
            return Err(Status::invalid_argument("pod_sandbox_id is required"));
        }
        let sandbox = self.sandbox(&req.pod_sandbox_id)?;
        let sb = lock(&sandbox);
        if sb.state != SandboxState::Ready {
            return Err(Status::failed_precondition(format!(
                "pod sandbox {} is not ready",
                sb.id
            )));
        }
        let pod_config = decode_config(&sb);
        let pod_meta = pod_config.metadata.clone().unwrap_or_default();
        let image = self
            .images
            .status(&image_ref)
            .map_err(|e| Status::unknown(format!("looking up image {image_ref:?}: {e}")))?
            .ok_or_else(|| {
                Status::not_found(format!("image {image_ref:?} not found; pull it first"))
            })?;
        let log = log_path(&pod_config.log_directory, &config.log_path)?;

        let name = format!(
            "{}_{}_{}_{}_{}",
            meta.name, pod_meta.name, pod_meta.namespace, pod_meta.uid, meta.attempt
        );
        let id = new_id();
        let encoded = config.encode_to_vec();
        if let Err(e) = self.reserve_name(&name, &id, "container") {
            // The kubelet's retry of a create that outlived its deadline
            // (same pod, same config) gets that container, as CRI-O hands
            // it over, instead of "name is reserved". Creates in one pod are
            // serialized by the pod's lock, so the first one is done.
            if let Some(holder) = self.name_holder(&name)
                && let Ok(c) = self.container(&holder)
            {
                let r = lock(&c);
                if r.phase == ContainerPhase::Created
                    && r.sandbox_id == sb.id
                    && r.config == encoded
                {
                    return Ok(r.id.clone());
                }
            }
            return Err(e);
        }
        let stop_signal = if config.stop_signal != v1::Signal::RuntimeDefault as i32 {
            v1::Signal::try_from(config.stop_signal)
                .ok()
                .map(|s| s.as_str_name().trim_start_matches("SIGNAL_").to_string())
        } else {
            image.run.stop_signal.clone()
        };
        let record = ContainerRecord {
            id: id.clone(),
            sandbox_id: sb.id.clone(),
            name: name.clone(),
            config: encoded,
            image: image
                .repo_tags
                .first()
                .cloned()
                .unwrap_or_else(|| image_ref.clone()),
            image_id: image.id.to_string(),
            image_ref: image
                .repo_digests
                .first()
                .cloned()
                .unwrap_or_else(|| image.id.to_string()),
            log_path: log.clone(),
            created_at: now_nanos(),
            phase: ContainerPhase::Creating,
            stop_signal,
            stopping: false,
        };
        let shared = Arc::new(Mutex::new(record));
        let mut r = lock(&shared);
        let made = self
            .records
            .save_container(&r)
            .map_err(|e| Status::internal(e.to_string()))
            .and_then(|()| self.make_container(&r, &config, &sb, &pod_config, &image));
        let made = made.and_then(|()| {
            r.phase = ContainerPhase::Created;
            self.records
                .save_container(&r)
                .map_err(|e| Status::internal(e.to_string()))
        });
        match made {
            Ok(()) => {
                lock(&self.containers).insert(id.clone(), Arc::clone(&shared));
                tracing::info!(id = %id, name = %name, "container created");
                let pod_id = r.sandbox_id.clone();
                drop(r);
                drop(sb);
                self.emit(&id, &pod_id, v1::ContainerEventType::ContainerCreatedEvent);
                Ok(id)
            }
            Err(e) => {
                self.undo_container(&r);
                self.release_name(&name, &id);
                Err(e)
            }
        }
    }

    fn make_container(
        &self,
        r: &ContainerRecord,
        config: &v1::ContainerConfig,
        sb: &super::records::SandboxRecord,
        pod_config: &v1::PodSandboxConfig,
        image: &crate::image::meta::ImageRecord,
    ) -> Result<(), Status> {
        if let Some(log) = &r.log_path
            && let Some(parent) = log.parent()
        {
            std::fs::create_dir_all(parent)
                .map_err(|e| Status::internal(format!("creating {}: {e}", parent.display())))?;
        }
        let rootfs = self
            .images
            .prepare_rootfs(&image.id.to_string(), &r.id)
            .map_err(|e| Status::internal(format!("preparing the root filesystem: {e}")))?;
        let read = |p: &str| {
            crate::rootfs::read_in_root(&rootfs, Path::new(p), USER_DB_LIMIT)
                .ok()
                .flatten()
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default()
        };
        let (passwd, group) = (read("/etc/passwd"), read("/etc/group"));
        let mut devices = Vec::new();
        for (i, d) in config.devices.iter().enumerate() {
            let dev = device(Path::new(&d.host_path), &d.container_path, &d.permissions)
                .map_err(|e| Status::invalid_argument(format!("config.devices[{i}]: {e}")))?;
            devices.push(dev);
        }
        let privileged = config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .is_some_and(|s| s.privileged);
        let seccomp_profile = match spec::seccomp_profile_path(config) {
            Some(p) => {
                let bytes = std::fs::read(&p).map_err(|e| {
                    Status::invalid_argument(format!("reading the seccomp profile {p:?}: {e}"))
                })?;
                Some((p, bytes))
            }
            None => None,
        };
        let target_pid = config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .and_then(|s| s.namespace_options.as_ref())
            .filter(|o| o.pid == v1::NamespaceMode::Target as i32)
            .map(|o| -> Result<i32, Status> {
                let t = self.container(&o.target_id)?;
                let tid = lock(&t).id.clone();
                let snap = self.engine.state(&tid).map_err(engine_status)?;
                Ok(snap.state.pid)
            })
            .transpose()?;
        let pod = PodView {
            netns: sb.namespaces.net.clone(),
            ipc_ns: sb.namespaces.ipc.clone(),
            uts_ns: sb.namespaces.uts.clone(),
            pid_ns: sb.pid_ns(),
            hostname: sb.hostname_file.clone(),
            resolv_conf: sb.resolv_conf.clone(),
            hosts: sb.hosts_file.clone(),
            shm: sb.shm.clone(),
            host_pid: pod::host_pid(pod_config),
            cgroup_parent: pod_config
                .linux
                .as_ref()
                .map(|l| l.cgroup_parent.clone())
                .unwrap_or_default(),
            systemd_cgroup: self.systemd_cgroup,
        };
        for m in &config.mounts {
            // Docker and containerd make a missing host directory.
            if !m.host_path.is_empty() && !Path::new(&m.host_path).exists() {
                std::fs::create_dir_all(&m.host_path).map_err(|e| {
                    Status::invalid_argument(format!("mount source {:?}: {e}", m.host_path))
                })?;
            }
        }
        let spec = spec::build(&SpecInput {
            id: &r.id,
            config,
            image: &image.run,
            rootfs: &rootfs,
            pod: &pod,
            passwd: &passwd,
            group: &group,
            devices,
            host_devices: if privileged {
                host_devices()
            } else {
                Vec::new()
            },
            seccomp_profile,
            target_pid,
        })
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
        // In the state dir (a tmpfs on a node, as containerd keeps its
        // bundles under /run): the spec matters only while the container
        // exists, and the engine keeps its own copy in its state.
        let bundle = self.paths.bundle_dir(&r.id);
        std::fs::create_dir_all(&bundle)
            .map_err(|e| Status::internal(format!("creating {}: {e}", bundle.display())))?;
        let text = serde_json::to_vec(&spec).map_err(|e| Status::internal(e.to_string()))?;
        crate::state::write_atomic(&bundle.join("config.json"), &text)
            .map_err(|e| Status::internal(e.to_string()))?;
        let mut cmd = self.oci_args();
        cmd.extend(["create".into(), "--bundle".into(), bundle.into()]);
        // Without a log path the output is dropped, as containerd does; the
        // container must not inherit this daemon's descriptors.
        let log = r
            .log_path
            .clone()
            .unwrap_or_else(|| PathBuf::from("/dev/null"));
        // With `tty` the spec asks for a terminal, which the monitor holds
        // under a CRI log: stdin then goes into the terminal.
        cmd.extend(["--cri-log".into(), log.into()]);
        if config.stdin {
            cmd.push("--cri-stdin".into());
            if config.stdin_once {
                cmd.push("--cri-stdin-once".into());
            }
        }
        cmd.push(r.id.clone().into());
        self.run_engine(cmd, "creating the container")
            .map_err(Status::unknown)
    }

    /// Removes whatever part of a container exists.
    pub fn undo_container(&self, r: &ContainerRecord) {
        if let Err(e) = self.engine.delete(&r.id, true)
            && !matches!(e, EngineError::State(StateError::NotFound(_)))
        {
            tracing::warn!(id = %r.id, error = %e, "deleting the container from the engine");
        }
        if let Err(e) = self.images.remove_rootfs(&r.id) {
            tracing::warn!(id = %r.id, error = %e, "removing the container's root filesystem");
        }
        remove_tree(&self.paths.bundle_dir(&r.id));
        if let Err(e) = self.records.remove_container(&r.id) {
            tracing::warn!(id = %r.id, error = %e, "removing the container record");
        }
    }

    pub fn start_container(&self, id: &str) -> Result<(), Status> {
        let shared = self.container(id)?;
        let r = lock(&shared);
        let snap = self.engine.state(&r.id).map_err(engine_status)?;
        if snap.status != EngineStatus::Created {
            return Err(Status::failed_precondition(format!(
                "container {} is {}, not created: it can be started only once",
                r.id, snap.status
            )));
        }
        self.engine.start(&r.id).map_err(engine_status)?;
        tracing::info!(id = %r.id, "container started");
        let (cid, pod_id) = (r.id.clone(), r.sandbox_id.clone());
        drop(r);
        self.emit(&cid, &pod_id, v1::ContainerEventType::ContainerStartedEvent);
        Ok(())
    }

    fn wait_stopped(&self, id: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut pause = Duration::from_millis(2);
        loop {
            match self.engine.state(id) {
                Ok(s) if s.status == EngineStatus::Stopped => return true,
                Err(_) => return true,
                _ => {}
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(pause.min(deadline.saturating_duration_since(Instant::now())));
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    /// Stops a container: its stop signal, then SIGKILL after `timeout`
    /// seconds. A container that is gone or stopped already is fine.
    pub fn stop_container(&self, id: &str, timeout: i64) -> Result<(), Status> {
        self.stop_container_locked(id, timeout)?;
        self.note_stop(id);
        Ok(())
    }

    /// Queues the stopped event of a container that ran and is stopped
    /// (sent once per container).
    fn note_stop(&self, id: &str) {
        let Ok(shared) = self.container(id) else {
            return;
        };
        let (cid, pod) = {
            let r = lock(&shared);
            (r.id.clone(), r.sandbox_id.clone())
        };
        let ran = self
            .engine
            .root
            .container_dir(&cid)
            .join(crate::state::STARTED_FILE)
            .exists();
        let stopped =
            !matches!(self.engine.state(&cid), Ok(s) if s.status != EngineStatus::Stopped);
        if ran && stopped {
            self.emit(&cid, &pod, v1::ContainerEventType::ContainerStoppedEvent);
        }
    }

    fn stop_container_locked(&self, id: &str, timeout: i64) -> Result<(), Status> {
        let shared = match self.container(id) {
            Ok(s) => s,
            Err(e) if e.code() == tonic::Code::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let mut r = lock(&shared);
        let snap = match self.engine.state(&r.id) {
            Ok(s) => s,
            Err(EngineError::State(StateError::NotFound(_))) => return Ok(()),
            Err(e) => return Err(engine_status(e)),
        };
        if snap.status == EngineStatus::Stopped {
            return Ok(());
        }
        if !r.stopping {
            r.stopping = true;
            self.records
                .save_container(&r)
                .map_err(|e| Status::internal(e.to_string()))?;
        }
        if snap.status == EngineStatus::Paused {
            let _ = self.engine.resume(&r.id);
        }
        if timeout > 0 && snap.status == EngineStatus::Running {
            let sig = r
                .stop_signal
                .as_deref()
                .and_then(signal_by_name)
                .unwrap_or(Signal::SIGTERM);
            match self.engine.kill(&r.id, sig, false) {
                Ok(()) => {
                    if self.wait_stopped(&r.id, Duration::from_secs(timeout as u64)) {
                        tracing::info!(id = %r.id, "container stopped");
                        return Ok(());
                    }
                }
                Err(e) => tracing::debug!(id = %r.id, error = %e, "stop signal"),
            }
        }
        if let Err(e) = self.engine.kill(&r.id, Signal::SIGKILL, true) {
            tracing::debug!(id = %r.id, error = %e, "SIGKILL");
        }
        if !self.wait_stopped(&r.id, Duration::from_secs(30)) {
            return Err(Status::deadline_exceeded(format!(
                "container {} did not stop within 30 s of SIGKILL",
                r.id
            )));
        }
        tracing::info!(id = %r.id, "container killed");
        Ok(())
    }

    pub fn remove_container(&self, id: &str) -> Result<(), Status> {
        let shared = match self.container(id) {
            Ok(s) => s,
            Err(e) if e.code() == tonic::Code::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let full = lock(&shared).id.clone();
        self.stop_container(&full, 0)?;
        let r = lock(&shared);
        self.undo_container(&r);
        lock(&self.containers).remove(&r.id);
        self.release_name(&r.name, &r.id);
        self.cpu_samples.forget(&r.id);
        tracing::info!(id = %r.id, "container removed");
        let (cid, pod_id) = (r.id.clone(), r.sandbox_id.clone());
        drop(r);
        self.emit(&cid, &pod_id, v1::ContainerEventType::ContainerDeletedEvent);
        Ok(())
    }

    fn state_of(
        &self,
        r: &ContainerRecord,
    ) -> (v1::ContainerState, Option<crate::container::Snapshot>) {
        match self.engine.state(&r.id) {
            Ok(s) => {
                let st = match s.status {
                    EngineStatus::Creating | EngineStatus::Created => {
                        v1::ContainerState::ContainerCreated
                    }
                    EngineStatus::Running | EngineStatus::Paused => {
                        v1::ContainerState::ContainerRunning
                    }
                    EngineStatus::Stopped => v1::ContainerState::ContainerExited,
                };
                (st, Some(s))
            }
            Err(_) => (v1::ContainerState::ContainerExited, None),
        }
    }

    pub fn container_status(
        &self,
        id: &str,
        verbose: bool,
    ) -> Result<v1::ContainerStatusResponse, Status> {
        let shared = self.container(id)?;
        let r = self
            .peek_container(&shared)
            .ok_or_else(|| Status::not_found(format!("container {id:?} not found")))?;
        let config = decode(&r);
        let (state, snap) = self.state_of(&r);
        let started_file = self
            .engine
            .root
            .container_dir(&r.id)
            .join(crate::state::STARTED_FILE);
        let mut started_at = std::fs::read_to_string(started_file)
            .ok()
            .and_then(|t| crate::crilog::parse_timestamp(&t))
            .unwrap_or(0);
        let (mut finished_at, mut exit_code, mut reason, mut message) =
            (0, 0, String::new(), String::new());
        match (&snap, state) {
            (Some(s), v1::ContainerState::ContainerExited) => {
                if let Some(x) = &s.exit {
                    if started_at == 0 {
                        started_at = crate::crilog::parse_timestamp(&x.started_at).unwrap_or(0);
                    }
                    finished_at = crate::crilog::parse_timestamp(&x.finished_at).unwrap_or(0);
                    exit_code = x.exit_code;
                    reason = if x.oom_killed {
                        "OOMKilled".into()
                    } else if x.exit_code == 0 {
                        "Completed".into()
                    } else {
                        "Error".into()
                    };
                } else {
                    exit_code = 255;
                    reason = "Unknown".into();
                    message = "the container's monitor left no exit record".into();
                }
            }
            (None, _) => {
                exit_code = 255;
                reason = "Unknown".into();
                message =
                    "the engine has no state for this container (was the node rebooted?)".into();
            }
            _ => {}
        }
        let user = snap
            .as_ref()
            .and_then(|s| s.state.spec.as_ref())
            .and_then(|spec| {
                let u = spec.process().as_ref()?.user();
                Some(v1::ContainerUser {
                    linux: Some(v1::LinuxContainerUser {
                        uid: u.uid() as i64,
                        gid: u.gid() as i64,
                        supplemental_groups: u
                            .additional_gids()
                            .clone()
                            .unwrap_or_default()
                            .into_iter()
                            .map(i64::from)
                            .collect(),
                    }),
                })
            });
        let status = v1::ContainerStatus {
            id: r.id.clone(),
            metadata: config.metadata.clone(),
            state: state as i32,
            created_at: r.created_at,
            started_at,
            finished_at,
            exit_code,
            image: Some(v1::ImageSpec {
                image: r.image.clone(),
                ..Default::default()
            }),
            image_ref: r.image_ref.clone(),
            reason,
            message,
            labels: config.labels.clone(),
            annotations: config.annotations.clone(),
            mounts: config.mounts.clone(),
            log_path: r
                .log_path
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            resources: config
                .linux
                .as_ref()
                .and_then(|l| l.resources.clone())
                .map(|l| v1::ContainerResources {
                    linux: Some(l),
                    windows: None,
                }),
            image_id: r.image_id.clone(),
            user,
            stop_signal: config.stop_signal,
        };
        let mut info = HashMap::new();
        if verbose {
            info.insert(
                "info".to_string(),
                json!({
                    "sandboxID": r.sandbox_id,
                    "pid": snap.as_ref().map(|s| s.state.pid),
                    "bundle": snap.as_ref().map(|s| s.state.bundle.clone()),
                    "rootfs": snap.as_ref().map(|s| s.state.rootfs.clone()),
                    "runtimeSpec": snap.as_ref().and_then(|s| s.state.spec.clone()),
                })
                .to_string(),
            );
        }
        Ok(v1::ContainerStatusResponse {
            status: Some(status),
            info,
        })
    }

    pub fn list_containers(&self, filter: Option<v1::ContainerFilter>) -> Vec<v1::Container> {
        let mut out = Vec::new();
        for c in self.all_containers() {
            let Some(r) = self.peek_container(&c) else {
                continue;
            };
            let config = decode(&r);
            let (state, _) = self.state_of(&r);
            if let Some(f) = &filter {
                if !f.id.is_empty() && !r.id.starts_with(&f.id) {
                    continue;
                }
                if !f.pod_sandbox_id.is_empty() && !r.sandbox_id.starts_with(&f.pod_sandbox_id) {
                    continue;
                }
                if let Some(s) = &f.state
                    && s.state != state as i32
                {
                    continue;
                }
                if !labels_match(&f.label_selector, &config.labels) {
                    continue;
                }
            }
            out.push(v1::Container {
                id: r.id.clone(),
                pod_sandbox_id: r.sandbox_id.clone(),
                metadata: config.metadata.clone(),
                image: Some(v1::ImageSpec {
                    image: r.image.clone(),
                    ..Default::default()
                }),
                image_ref: r.image_ref.clone(),
                state: state as i32,
                created_at: r.created_at,
                labels: config.labels.clone(),
                annotations: config.annotations.clone(),
                image_id: r.image_id.clone(),
            });
        }
        out.sort_by_key(|c| c.created_at);
        out
    }

    /// Runs `cmd` in the container and collects its output; after `timeout`
    /// seconds (0: none) the process is killed and DeadlineExceeded returned.
    pub fn exec_sync(
        &self,
        id: &str,
        cmd: Vec<String>,
        timeout: i64,
    ) -> Result<v1::ExecSyncResponse, Status> {
        if cmd.is_empty() {
            return Err(Status::invalid_argument("cmd is required"));
        }
        let shared = self.container(id)?;
        let cid = lock(&shared).id.clone();
        let snap = self.engine.state(&cid).map_err(engine_status)?;
        if snap.status != EngineStatus::Running {
            return Err(Status::failed_precondition(format!(
                "container {cid} is {}, not running",
                snap.status
            )));
        }
        let tmp = tempfile::Builder::new()
            .prefix("exec-")
            .tempdir_in(&self.paths.state)
            .map_err(|e| Status::internal(format!("exec scratch dir: {e}")))?;
        let pid_file = tmp.path().join("pid");
        let mut c = self.oci();
        c.arg("exec")
            .arg("--pid-file")
            .arg(&pid_file)
            .arg(&cid)
            .args(&cmd);
        // Output goes to files, not pipes: a background process the command
        // starts (`sleep 1000 &`) inherits them and would keep a pipe open,
        // and the call with it, long after the command exited.
        let out_path = tmp.path().join("stdout");
        let err_path = tmp.path().join("stderr");
        let open = |p: &Path| {
            std::fs::File::create(p)
                .map_err(|e| Status::internal(format!("exec output file {}: {e}", p.display())))
        };
        c.stdout(open(&out_path)?).stderr(open(&err_path)?);
        let mut child = c
            .spawn()
            .map_err(|e| Status::internal(format!("running the engine: {e}")))?;
        let deadline = (timeout > 0).then(|| Instant::now() + Duration::from_secs(timeout as u64));
        let mut timed_out = false;
        let status = loop {
            match child.try_wait() {
                Ok(Some(s)) => break Some(s),
                Ok(None) => {}
                Err(e) => return Err(Status::internal(format!("waiting for exec: {e}"))),
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                timed_out = true;
                // Kill the command and let `berth oci exec`, its parent, reap
                // it: killed first, the parent would leave it a zombie under
                // the container's init, which may never reap.
                if let Some(pid) = std::fs::read_to_string(&pid_file)
                    .ok()
                    .and_then(|t| t.trim().parse::<i32>().ok())
                {
                    let _ =
                        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
                    let grace = Instant::now() + Duration::from_secs(5);
                    while matches!(child.try_wait(), Ok(None)) && Instant::now() < grace {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                }
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        let read = |p: &Path| -> Vec<u8> {
            let mut b = Vec::new();
            if let Ok(f) = std::fs::File::open(p) {
                let _ = std::io::Read::read_to_end(
                    &mut std::io::Read::take(f, EXEC_SYNC_OUTPUT_LIMIT),
                    &mut b,
                );
            }
            b
        };
        let (stdout, stderr) = (read(&out_path), read(&err_path));
        if timed_out {
            return Err(Status::deadline_exceeded(format!(
                "command {cmd:?} timed out after {timeout} s"
            )));
        }
        let code = status.and_then(|s| s.code()).unwrap_or(-1);
        // The engine's own failures (no such executable...) come on stderr
        // with exit 1-2 before the process runs; the kubelet reports them as
        // the probe's output, as it does with runc.
        Ok(v1::ExecSyncResponse {
            stdout,
            stderr,
            exit_code: code,
        })
    }

    pub fn update_container_resources(
        &self,
        id: &str,
        linux: Option<v1::LinuxContainerResources>,
    ) -> Result<(), Status> {
        let shared = self.container(id)?;
        let mut r = lock(&shared);
        let Some(res) = linux else { return Ok(()) };
        let value = spec::resources(&res);
        let parsed: oci_spec::runtime::LinuxResources = serde_json::from_value(value)
            .map_err(|e| Status::invalid_argument(format!("linux resources: {e}")))?;
        self.engine.update(&r.id, &parsed).map_err(engine_status)?;
        // Kept in the config so ContainerStatus reports what is in force.
        let mut config = decode(&r);
        if let Some(l) = config.linux.as_mut() {
            l.resources = Some(res);
        } else {
            config.linux = Some(v1::LinuxContainerConfig {
                resources: Some(res),
                security_context: None,
            });
        }
        r.config = config.encode_to_vec();
        self.records
            .save_container(&r)
            .map_err(|e| Status::internal(e.to_string()))
    }

    /// ReopenContainerLog: the monitor reopens the log file on SIGUSR1.
    pub fn reopen_container_log(&self, id: &str) -> Result<(), Status> {
        let shared = self.container(id)?;
        let r = lock(&shared);
        let snap = self.engine.state(&r.id).map_err(engine_status)?;
        if snap.status != EngineStatus::Running {
            return Err(Status::failed_precondition(format!(
                "container {} is not running",
                r.id
            )));
        }
        let monitor = snap.state.monitor_pid.ok_or_else(|| {
            Status::failed_precondition(format!("container {} has no monitor", r.id))
        })?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(monitor), Signal::SIGUSR1)
            .map_err(|e| Status::unknown(format!("signalling the monitor: {e}")))?;
        // The kubelet moved the file away and expects a new one when this
        // returns: wait for the monitor to make it.
        let Some(log) = r.log_path.clone() else {
            return Ok(());
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while !log.exists() {
            if Instant::now() >= deadline {
                return Err(Status::deadline_exceeded(format!(
                    "the monitor of container {} did not reopen {}",
                    r.id,
                    log.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(())
    }
}
