//! Pod sandboxes: RunPodSandbox, StopPodSandbox, RemovePodSandbox,
//! PodSandboxStatus and ListPodSandbox.
//!
//! A sandbox is its pinned namespaces, its shared files and /dev/shm, and
//! its CNI attachment; no process runs for it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use berth_proto::v1;
use prost::Message;
use serde_json::json;
use tonic::Status;

use super::daemon::{Daemon, lock, remove_tree};
use super::records::{SandboxRecord, SandboxState, new_id, now_nanos};
use crate::sandbox::files::{self, Dns};
use crate::sandbox::namespaces::{self, NsSpec};

/// Size of a pod's /dev/shm, as containerd and the kubelet default it.
const SHM_SIZE: &str = "64m";

fn mode(
    o: Option<&v1::NamespaceOption>,
    f: impl Fn(&v1::NamespaceOption) -> i32,
) -> v1::NamespaceMode {
    o.and_then(|o| v1::NamespaceMode::try_from(f(o)).ok())
        .unwrap_or(v1::NamespaceMode::Pod)
}

/// The namespace options of a pod config.
pub fn ns_options(c: &v1::PodSandboxConfig) -> Option<&v1::NamespaceOption> {
    c.linux
        .as_ref()?
        .security_context
        .as_ref()?
        .namespace_options
        .as_ref()
}

pub fn host_network(c: &v1::PodSandboxConfig) -> bool {
    mode(ns_options(c), |o| o.network) == v1::NamespaceMode::Node
}

pub fn host_ipc(c: &v1::PodSandboxConfig) -> bool {
    mode(ns_options(c), |o| o.ipc) == v1::NamespaceMode::Node
}

pub fn host_pid(c: &v1::PodSandboxConfig) -> bool {
    mode(ns_options(c), |o| o.pid) == v1::NamespaceMode::Node
}

pub fn decode_config(r: &SandboxRecord) -> v1::PodSandboxConfig {
    v1::PodSandboxConfig::decode(r.config.as_slice()).unwrap_or_default()
}

fn required(field: &str, value: &str) -> Result<(), Status> {
    if value.is_empty() {
        return Err(Status::invalid_argument(format!("{field} is required")));
    }
    Ok(())
}

impl Daemon {
    pub fn run_pod_sandbox(&self, req: v1::RunPodSandboxRequest) -> Result<String, Status> {
        let config = req
            .config
            .ok_or_else(|| Status::invalid_argument("config is required"))?;
        let meta = config
            .metadata
            .clone()
            .ok_or_else(|| Status::invalid_argument("config.metadata is required"))?;
        required("config.metadata.name", &meta.name)?;
        required("config.metadata.namespace", &meta.namespace)?;
        required("config.metadata.uid", &meta.uid)?;
        for (field, v) in [
            ("name", &meta.name),
            ("namespace", &meta.namespace),
            ("uid", &meta.uid),
        ] {
            if v.contains('/') || v.contains('\0') {
                return Err(Status::invalid_argument(format!(
                    "config.metadata.{field} {v:?} holds a character it may not ('/', NUL)"
                )));
            }
        }
        if !req.runtime_handler.is_empty()
            && req.runtime_handler != "berth"
            && req.runtime_handler != "runc"
        {
            return Err(Status::not_found(format!(
                "runtime handler {:?} is not configured (berth serves the default handler)",
                req.runtime_handler
            )));
        }
        let name = format!(
            "{}_{}_{}_{}",
            meta.name, meta.namespace, meta.uid, meta.attempt
        );
        let encoded = config.encode_to_vec();

        let id = new_id();
        if let Err(e) = self.reserve_name(&name, &id, "pod sandbox") {
            // A retry of a create still in flight (or done with the very same
            // config) gets that sandbox, as CRI-O hands it over.
            if let Some(holder) = self.name_holder(&name)
                && let Ok(rec) = self.sandbox(&holder)
            {
                let r = lock(&rec);
                if r.state == SandboxState::Ready && r.config == encoded {
                    return Ok(r.id.clone());
                }
            }
            return Err(e);
        }
        let record = SandboxRecord {
            id: id.clone(),
            name: name.clone(),
            config: encoded,
            runtime_handler: req.runtime_handler.clone(),
            created_at: now_nanos(),
            state: SandboxState::Creating,
            namespaces: Default::default(),
            network: None,
            ips: Vec::new(),
            shm: None,
            hostname_file: None,
            resolv_conf: None,
            hosts_file: None,
            pod_init: None,
        };
        let shared = Arc::new(Mutex::new(record));
        // Held until the sandbox is made: a retry waits on it.
        let mut r = lock(&shared);
        lock(&self.sandboxes).insert(id.clone(), Arc::clone(&shared));
        let made = self.make_sandbox(&mut r, &config);
        match made {
            Ok(()) => {
                r.state = SandboxState::Ready;
                if let Err(e) = self.records.save_sandbox(&r) {
                    self.undo_sandbox(&r);
                    lock(&self.sandboxes).remove(&id);
                    self.release_name(&name, &id);
                    return Err(Status::internal(e.to_string()));
                }
                tracing::info!(id = %id, pod = %name, ips = ?r.ips, "pod sandbox ready");
                Ok(id)
            }
            Err(e) => {
                self.undo_sandbox(&r);
                lock(&self.sandboxes).remove(&id);
                self.release_name(&name, &id);
                Err(e)
            }
        }
    }

    fn make_sandbox(
        &self,
        r: &mut SandboxRecord,
        config: &v1::PodSandboxConfig,
    ) -> Result<(), Status> {
        let host_net = host_network(config);
        let host_ipc = host_ipc(config);
        if ns_options(config)
            .and_then(|o| o.userns_options.as_ref())
            .is_some_and(|u| u.mode != v1::NamespaceMode::Node as i32)
        {
            return Err(Status::unimplemented(
                "user namespaces for pods are not supported yet",
            ));
        }
        // No hostname asked for: the pod keeps the node's, as with
        // containerd (its UTS namespace starts as a copy of the host's).
        let own_hostname = !host_net && !config.hostname.is_empty();
        let hostname = if own_hostname {
            config.hostname.clone()
        } else {
            nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_default()
        };
        if own_hostname {
            files::check_hostname(&hostname)
                .map_err(|e| Status::invalid_argument(format!("config.hostname: {e}")))?;
        }
        let sysctls: Vec<(String, String)> = config
            .linux
            .as_ref()
            .map(|l| {
                let mut v: Vec<_> = l
                    .sysctls
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                v.sort();
                v
            })
            .unwrap_or_default();
        for (k, _) in &sysctls {
            crate::sandbox::sysctl::check(k, !host_net, !host_ipc)
                .map_err(|e| Status::invalid_argument(format!("config.linux.sysctls: {e}")))?;
        }

        // What is about to be made is recorded first, in one write, so that
        // a restart after a crash knows what to undo; each undo step
        // tolerates a part that was never made. (One write instead of one
        // per step: every file written costs an inode on the pod's path.)
        let state_dir = self.paths.pod_state_dir(&r.id);
        let shm = (!host_ipc).then(|| state_dir.join("shm"));
        r.shm = Some(shm.clone().unwrap_or_else(|| PathBuf::from("/dev/shm")));
        let spec = NsSpec {
            net: !host_net,
            ipc: !host_ipc,
            uts: !host_net,
            hostname: own_hostname.then(|| hostname.clone()),
            sysctls,
        };
        let ns_dir = state_dir.join("ns");
        r.namespaces = namespaces::Pinned::planned(&ns_dir, &spec);
        if !host_net {
            r.network = Some(
                self.network
                    .config()
                    .map_err(Status::failed_precondition)?
                    .name,
            );
        }
        self.records
            .save_sandbox(r)
            .map_err(|e| Status::internal(e.to_string()))?;

        // Files shared by the pod's containers, in its state dir (a tmpfs on
        // a node, as CRI-O keeps them): they live no longer than the pod's
        // namespaces, and on disk each would cost an inode on the pod's path.
        let dir = state_dir.clone();
        std::fs::create_dir_all(&dir)
            .map_err(|e| Status::internal(format!("creating {}: {e}", dir.display())))?;
        let write = |name: &str, text: &str| -> Result<PathBuf, Status> {
            let p = dir.join(name);
            crate::state::write_atomic(&p, text.as_bytes())
                .map_err(|e| Status::internal(format!("writing {}: {e}", p.display())))?;
            Ok(p)
        };
        r.hostname_file = Some(write("hostname", &format!("{hostname}\n"))?);
        let dns = config
            .dns_config
            .as_ref()
            .map(|d| Dns {
                servers: d.servers.clone(),
                searches: d.searches.clone(),
                options: d.options.clone(),
            })
            .unwrap_or_default();
        let resolv = match files::resolv_conf(&dns) {
            Some(t) => t,
            None => std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
        };
        r.resolv_conf = Some(write("resolv.conf", &resolv)?);
        let hosts = if host_net {
            std::fs::read_to_string("/etc/hosts").unwrap_or_else(|_| files::hosts(&hostname))
        } else {
            files::hosts(&hostname)
        };
        r.hosts_file = Some(write("hosts", &hosts)?);

        // /dev/shm: the pod's own tmpfs, or the host's with host IPC.
        if let Some(shm) = shm {
            std::fs::create_dir_all(&shm)
                .map_err(|e| Status::internal(format!("creating {}: {e}", shm.display())))?;
            nix::mount::mount(
                Some("shm"),
                &shm,
                Some("tmpfs"),
                nix::mount::MsFlags::MS_NOSUID
                    | nix::mount::MsFlags::MS_NODEV
                    | nix::mount::MsFlags::MS_NOEXEC,
                Some(format!("mode=1777,size={SHM_SIZE}").as_str()),
            )
            .map_err(|e| {
                Status::internal(format!(
                    "mounting the pod's /dev/shm on {}: {e}",
                    shm.display()
                ))
            })?;
        }

        // Namespaces.
        r.namespaces = namespaces::pin(&ns_dir, &spec).map_err(|e| match e {
            namespaces::NsError::Sysctl(s) => {
                Status::invalid_argument(format!("config.linux.sysctls: {s}"))
            }
            other => Status::internal(format!("making the pod's namespaces: {other}")),
        })?;

        // A shared process namespace needs a process to hold it.
        if mode(ns_options(config), |o| o.pid) == v1::NamespaceMode::Pod {
            let pid = crate::sandbox::pidns::start(&self.exe, &state_dir)
                .map_err(|e| Status::internal(e.to_string()))?;
            let start = crate::state::proc_stat(pid)
                .map(|s| s.start_time)
                .ok_or_else(|| Status::internal("the pod's init exited at once"))?;
            r.pod_init = Some((pid, start));
            self.records
                .save_sandbox(r)
                .map_err(|e| Status::internal(e.to_string()))?;
        }

        // The network, last: its ADD is the slowest and most likely to fail.
        // (Its name was recorded above, so an interrupted ADD is undone on
        // restart.)
        if let Some(netns) = r.namespaces.net.clone() {
            let (_, ips) = self
                .network
                .setup(&r.id, &netns, config)
                .map_err(|e| Status::unknown(format!("setting up the pod network: {e}")))?;
            r.ips = ips;
        }
        Ok(())
    }

    /// Undoes whatever part of a sandbox exists; every step tolerates a
    /// part that was never made.
    pub fn undo_sandbox(&self, r: &SandboxRecord) {
        self.release_sandbox_resources(r);
        remove_tree(&self.paths.pod_state_dir(&r.id));
        if let Err(e) = self.records.remove_sandbox(&r.id) {
            tracing::warn!(id = %r.id, error = %e, "removing the sandbox record");
        }
    }

    /// Network, namespaces and shm of a sandbox: what stopping it releases.
    fn release_sandbox_resources(&self, r: &SandboxRecord) -> Vec<String> {
        let mut errors = Vec::new();
        let config = decode_config(r);
        if let Some(net) = &r.network
            && let Err(e) = self
                .network
                .teardown(&r.id, net, r.namespaces.net.as_deref(), &config)
        {
            errors.push(format!("tearing down the pod network: {e}"));
        }
        if let Some((pid, start)) = r.pod_init
            && crate::state::is_alive(pid, start)
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        for p in r.namespaces.paths() {
            if let Err(e) = namespaces::unpin(p) {
                errors.push(e.to_string());
            }
        }
        if let Some(shm) = &r.shm
            && shm != Path::new("/dev/shm")
        {
            match nix::mount::umount2(shm.as_path(), nix::mount::MntFlags::MNT_DETACH) {
                Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
                Err(e) => errors.push(format!("unmounting {}: {e}", shm.display())),
            }
        }
        for e in &errors {
            tracing::warn!(id = %r.id, error = %e, "releasing the sandbox");
        }
        errors
    }

    pub fn stop_pod_sandbox(&self, id: &str) -> Result<(), Status> {
        let shared = match self.sandbox(id) {
            Ok(s) => s,
            // Idempotent: a sandbox that is gone is stopped.
            Err(e) if e.code() == tonic::Code::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let mut r = lock(&shared);
        for c in self.containers_of(&r.id) {
            let cid = lock(&c).id.clone();
            self.stop_container(&cid, 0)?;
        }
        if r.state == SandboxState::NotReady {
            return Ok(());
        }
        let errors = self.release_sandbox_resources(&r);
        if !errors.is_empty() {
            return Err(Status::unknown(format!(
                "stopping pod sandbox {}: {}",
                r.id,
                errors.join("; ")
            )));
        }
        r.state = SandboxState::NotReady;
        r.namespaces = Default::default();
        r.network = None;
        r.pod_init = None;
        self.records
            .save_sandbox(&r)
            .map_err(|e| Status::internal(e.to_string()))?;
        tracing::info!(id = %r.id, "pod sandbox stopped");
        Ok(())
    }

    pub fn remove_pod_sandbox(&self, id: &str) -> Result<(), Status> {
        let shared = match self.sandbox(id) {
            Ok(s) => s,
            Err(e) if e.code() == tonic::Code::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let full = lock(&shared).id.clone();
        self.stop_pod_sandbox(&full)?;
        for c in self.containers_of(&full) {
            let cid = lock(&c).id.clone();
            self.remove_container(&cid)?;
        }
        let r = lock(&shared);
        self.undo_sandbox(&r);
        lock(&self.sandboxes).remove(&r.id);
        self.release_name(&r.name, &r.id);
        tracing::info!(id = %r.id, "pod sandbox removed");
        Ok(())
    }

    fn sandbox_message(&self, r: &SandboxRecord) -> (v1::PodSandboxConfig, v1::PodSandboxState) {
        let state = match r.state {
            SandboxState::Ready => v1::PodSandboxState::SandboxReady,
            _ => v1::PodSandboxState::SandboxNotready,
        };
        (decode_config(r), state)
    }

    pub fn pod_sandbox_status(
        &self,
        id: &str,
        verbose: bool,
    ) -> Result<v1::PodSandboxStatusResponse, Status> {
        let shared = self.sandbox(id)?;
        let r = self
            .peek_sandbox(&shared)
            .ok_or_else(|| Status::not_found(format!("pod sandbox {id:?} not found")))?;
        let (config, state) = self.sandbox_message(&r);
        let network = (!r.ips.is_empty()).then(|| v1::PodSandboxNetworkStatus {
            ip: r.ips[0].clone(),
            additional_ips: r.ips[1..]
                .iter()
                .map(|ip| v1::PodIp { ip: ip.clone() })
                .collect(),
        });
        let options = ns_options(&config).cloned().unwrap_or_default();
        let status = v1::PodSandboxStatus {
            id: r.id.clone(),
            metadata: config.metadata.clone(),
            state: state as i32,
            created_at: r.created_at,
            network,
            linux: Some(v1::LinuxPodSandboxStatus {
                namespaces: Some(v1::Namespace {
                    options: Some(v1::NamespaceOption {
                        network: options.network,
                        pid: options.pid,
                        ipc: options.ipc,
                        ..Default::default()
                    }),
                }),
            }),
            labels: config.labels.clone(),
            annotations: config.annotations.clone(),
            runtime_handler: r.runtime_handler.clone(),
        };
        let mut info = HashMap::new();
        if verbose {
            info.insert(
                "info".to_string(),
                json!({
                    "id": r.id,
                    "state": r.state,
                    "namespaces": r.namespaces,
                    "network": r.network,
                    "ips": r.ips,
                    "shm": r.shm,
                    "podInit": r.pod_init.map(|(pid, _)| pid),
                    "runtimeHandler": r.runtime_handler,
                })
                .to_string(),
            );
        }
        let containers_statuses = self
            .containers_of(&r.id)
            .into_iter()
            .filter_map(|c| {
                let cid = self.peek_container(&c)?.id;
                self.container_status(&cid, false).ok()?.status
            })
            .collect();
        Ok(v1::PodSandboxStatusResponse {
            status: Some(status),
            info,
            containers_statuses,
            timestamp: now_nanos(),
        })
    }

    pub fn list_pod_sandbox(&self, filter: Option<v1::PodSandboxFilter>) -> Vec<v1::PodSandbox> {
        let mut out: Vec<v1::PodSandbox> = Vec::new();
        for s in self.all_sandboxes() {
            let Some(r) = self.peek_sandbox(&s) else {
                continue;
            };
            if r.state == SandboxState::Creating {
                continue;
            }
            let (config, state) = self.sandbox_message(&r);
            if let Some(f) = &filter {
                if !f.id.is_empty() && !r.id.starts_with(&f.id) {
                    continue;
                }
                if let Some(st) = &f.state
                    && st.state != state as i32
                {
                    continue;
                }
                if !labels_match(&f.label_selector, &config.labels) {
                    continue;
                }
            }
            out.push(v1::PodSandbox {
                id: r.id.clone(),
                metadata: config.metadata.clone(),
                state: state as i32,
                created_at: r.created_at,
                labels: config.labels.clone(),
                annotations: config.annotations.clone(),
                runtime_handler: r.runtime_handler.clone(),
            });
        }
        out.sort_by_key(|p| p.created_at);
        out
    }
}

/// Whether `labels` has every key/value of `selector`.
pub fn labels_match(selector: &HashMap<String, String>, labels: &HashMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}
