//! A private containerd 1.6 daemon: own socket, root, state and namespace,
//! all in a temp dir; killed and removed on drop, with its containers.
//!
//! [`Containerd::start_cri`] starts one with its CRI plugin instead, for a
//! kubelet to talk to: inside a test network namespace, with a CNI config,
//! a sandbox image the test imports, and berth-oci as its runc under a cgroup
//! root of its own.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::exec::{self, Output, Spawned, wait_until};
use crate::image::write_oci_archive;
use crate::proc;
use crate::runtime::which;
use crate::workdir::{mounts_below, remove_tree_if_unmounted, tempdir, unique_id};

/// Name under which the busybox image is imported.
pub const BUSYBOX_IMAGE: &str = "docker.io/library/berth-busybox:test";

/// A running private containerd.
pub struct Containerd {
    dir: PathBuf,
    pub socket: PathBuf,
    pub namespace: String,
    daemon: Option<Spawned>,
    seq: AtomicU64,
    /// Whether /run/containerd existed before (ctr and the shims create
    /// `fifo/` and `s/` there).
    run_dir_existed: bool,
    /// With the CRI plugin: what else to clean up.
    cri: Option<CriCleanup>,
}

/// How to start a containerd with its CRI plugin.
pub struct CriOptions {
    /// The network namespace containerd runs in (`nsenter --net=`): pod
    /// bridges, veths and nftables rules go there.
    pub netns: PathBuf,
    /// The pod sandbox ("pause") image; the test imports it before the
    /// first pod ([`Containerd::import`]), since nothing is pulled.
    pub sandbox_image: String,
    /// A conflist; its `name` should be unique (libcni's result cache in
    /// /var/lib/cni is keyed by it, and cleaned up by it).
    pub conflist: serde_json::Value,
}

/// What a CRI containerd leaves outside its temp dir.
struct CriCleanup {
    /// The cgroup berth-oci puts every container under (`BERTH_CGROUP_ROOT`).
    cgroup_root: String,
    /// The CNI network name: libcni's cache files start with it.
    network: String,
    /// Whether /var/lib/cni existed before (libcni makes `results/` there).
    cni_dir_existed: bool,
}

/// The CRI plugin's image namespace.
pub const CRI_NAMESPACE: &str = "k8s.io";
const CNI_CACHE: &str = "/var/lib/cni";

const RUN_DIR: &str = "/run/containerd";

fn path_env() -> String {
    let mut p = std::env::var("PATH").unwrap_or_default();
    for d in ["/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin"] {
        if !p.split(':').any(|x| x == d) {
            if !p.is_empty() {
                p.push(':');
            }
            p.push_str(d);
        }
    }
    p
}

/// Checks containerd, ctr and containerd-shim-runc-v2 are installed.
pub fn check_installed() -> Result<()> {
    for b in ["containerd", "ctr", "containerd-shim-runc-v2"] {
        if which(b).is_none() {
            bail!("{b} not found in PATH: install Debian's containerd package");
        }
    }
    Ok(())
}

impl Containerd {
    /// Starts containerd (CRI plugin disabled) and waits until it answers.
    pub fn start() -> Result<Containerd> {
        check_installed()?;
        let dir = tempdir("containerd-")?.keep();
        let socket = dir.join("c.sock");
        let config = base_config(&dir, &socket, &["io.containerd.grpc.v1.cri"]);
        Self::launch(dir, socket, config, None, unique_id("berth-it-ctrd"), None)
    }

    /// Starts containerd with its CRI plugin on `opts` (see [`CriOptions`])
    /// and waits until the plugin is loaded. Its socket is the CRI endpoint;
    /// ctr works in the CRI namespace ([`CRI_NAMESPACE`]).
    pub fn start_cri(opts: &CriOptions) -> Result<Containerd> {
        check_installed()?;
        let network = opts
            .conflist
            .get("name")
            .and_then(|n| n.as_str())
            .context("the conflist has no name")?
            .to_owned();
        let cni_dir_existed = Path::new(CNI_CACHE).exists();
        let dir = tempdir("containerd-")?.keep();
        let socket = dir.join("c.sock");
        let cgroup_root = unique_id("berth-it-ctrd-cri");
        let config = match cri_config(&dir, &socket, &cgroup_root, opts) {
            Ok(c) => c,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        let c = Self::launch(
            dir,
            socket,
            config,
            Some(&opts.netns),
            CRI_NAMESPACE.to_owned(),
            Some(CriCleanup {
                cgroup_root,
                network,
                cni_dir_existed,
            }),
        )?;
        let ready = wait_until(Duration::from_secs(30), "containerd's CRI plugin", || {
            let out = c.ctr_timeout(&["plugins", "ls"], Duration::from_secs(10))?;
            Ok(out
                .stdout
                .lines()
                .any(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    f.len() >= 3
                        && f[0] == "io.containerd.grpc.v1"
                        && f[1] == "cri"
                        && f[f.len() - 1] == "ok"
                })
                .then_some(()))
        });
        with_log(&c, ready)?;
        Ok(c)
    }

    /// The CRI endpoint (`unix://…`) of a [`Containerd::start_cri`] daemon.
    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// The cgroup root of a CRI daemon's containers (none without CRI).
    pub fn cgroup_root(&self) -> Option<&str> {
        self.cri.as_ref().map(|c| c.cgroup_root.as_str())
    }

    /// Imports images into this daemon's namespace (`ctr images import` of
    /// an OCI layout), as an air-gapped node is preloaded.
    pub fn import(&self, refs: &[(&str, &dyn crate::oci::Artifact)]) -> Result<()> {
        let tar = self.dir.join(format!("{}.tar", unique_id("images")));
        crate::oci::write_oci_archive(&tar, refs)?;
        let path = tar.to_string_lossy().into_owned();
        self.ctr(&["images", "import", &path])?.check()?;
        let ls = self.ctr(&["images", "ls", "-q"])?.check()?;
        for (name, _) in refs {
            if !ls.stdout.lines().any(|l| l.trim() == *name) {
                bail!("{name} not listed after import: {ls}");
            }
        }
        let _ = std::fs::remove_file(tar);
        Ok(())
    }

    fn launch(
        dir: PathBuf,
        socket: PathBuf,
        config: String,
        netns: Option<&Path>,
        namespace: String,
        cri: Option<CriCleanup>,
    ) -> Result<Containerd> {
        let run_dir_existed = Path::new(RUN_DIR).exists();
        std::fs::write(dir.join("config.toml"), config)?;
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={}", ns.display()))
                    .arg("--")
                    .arg("containerd");
                c
            }
            None => Command::new("containerd"),
        };
        cmd.arg("--config")
            .arg(dir.join("config.toml"))
            .env("PATH", path_env());
        let daemon = Spawned::start(cmd, &dir.join("containerd"))?;
        let mut c = Containerd {
            dir,
            socket,
            namespace,
            daemon: Some(daemon),
            seq: AtomicU64::new(0),
            run_dir_existed,
            cri,
        };
        let ready = wait_until(Duration::from_secs(30), "containerd to answer", || {
            if let Some(d) = &c.daemon
                && !proc::alive(d.pid())
            {
                bail!("containerd exited: {}", c.log());
            }
            Ok(c.ctr_timeout(&["version"], Duration::from_secs(5))
                .is_ok_and(|o| o.success())
                .then_some(()))
        });
        if let Err(e) = ready {
            let log = c.log();
            c.shutdown();
            bail!("{e:#}\ncontainerd log:\n{log}");
        }
        Ok(c)
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("containerd.stderr")).unwrap_or_default()
    }

    /// A private directory for runc's `--root` (ctr run --runc-root).
    pub fn runc_root(&self) -> PathBuf {
        self.dir.join("runc")
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Runs `ctr --address SOCK --namespace NS ARGS...` with a 60 s deadline.
    pub fn ctr(&self, args: &[&str]) -> Result<Output> {
        self.ctr_timeout(args, Duration::from_secs(60))
    }

    pub fn ctr_timeout(&self, args: &[&str], timeout: Duration) -> Result<Output> {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address")
            .arg(&self.socket)
            .arg("--namespace")
            .arg(&self.namespace)
            .args(args)
            .env("PATH", path_env());
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        exec::run(cmd, &self.dir.join(format!("ctr-{n}")), timeout)
    }

    /// Builds the busybox OCI image tarball and imports it; returns its name.
    pub fn import_busybox(&self) -> Result<String> {
        let tar = self.dir.join("busybox-oci.tar");
        write_oci_archive(crate::rootfs::template()?, BUSYBOX_IMAGE, &tar)?;
        let tar = tar.to_string_lossy().into_owned();
        self.ctr(&["images", "import", &tar])?.check()?;
        let ls = self.ctr(&["images", "ls", "-q"])?.check()?;
        if !ls.stdout.lines().any(|l| l.trim() == BUSYBOX_IMAGE) {
            bail!("{BUSYBOX_IMAGE} not listed after import: {ls}");
        }
        Ok(BUSYBOX_IMAGE.to_string())
    }

    fn list(&self, what: &[&str]) -> Vec<String> {
        self.ctr_timeout(what, Duration::from_secs(30))
            .map(|o| {
                o.stdout
                    .lines()
                    .filter_map(|l| l.split_whitespace().next().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Removes tasks, containers and images, stops the daemon, kills what it
    /// left running in our namespace, unmounts and removes the temp dir.
    pub fn shutdown(&mut self) {
        let Some(daemon) = self.daemon.take() else {
            return;
        };
        if proc::alive(daemon.pid()) {
            for t in self.list(&["tasks", "ls", "-q"]) {
                let _ = self.ctr_timeout(
                    &["tasks", "kill", "-s", "SIGKILL", &t],
                    Duration::from_secs(30),
                );
                let _ =
                    self.ctr_timeout(&["tasks", "delete", "--force", &t], Duration::from_secs(30));
            }
            for c in self.list(&["containers", "ls", "-q"]) {
                let _ = self.ctr_timeout(&["containers", "delete", &c], Duration::from_secs(30));
            }
            for i in self.list(&["images", "ls", "-q"]) {
                let _ = self.ctr_timeout(&["images", "rm", &i], Duration::from_secs(30));
            }
        }
        stop_with_shims(daemon, &self.socket);
        self.remove_namespace_cgroups();
        if let Some(cri) = &self.cri {
            cri.clean();
        }
        unmount_and_remove(&self.dir);
        if !self.run_dir_existed {
            // Only empty directories are removed.
            for d in ["fifo", "s", ""] {
                let _ = std::fs::remove_dir(Path::new(RUN_DIR).join(d));
            }
        }
    }

    /// Kills processes left in, and removes, cgroups named after our
    /// (unique) containerd namespace: `<hierarchy>/<ns>` (runc, cgroupsPath
    /// "/<ns>/<id>") and `<hierarchy>/berth/<ns>`.
    fn remove_namespace_cgroups(&self) {
        for h in proc::cgroup_hierarchies() {
            for base in [
                h.join(&self.namespace),
                h.join("berth").join(&self.namespace),
            ] {
                if base.is_dir() {
                    kill_and_remove_cgroup(&base);
                }
            }
        }
    }
}

impl CriCleanup {
    /// Kills and removes the containers' cgroups and drops libcni's cache
    /// entries of our network (pods that never had their CNI DEL).
    fn clean(&self) {
        for h in proc::cgroup_hierarchies() {
            let root = h.join(&self.cgroup_root);
            if root.is_dir() {
                kill_and_remove_cgroup(&root);
            }
        }
        let results = Path::new(CNI_CACHE).join("results");
        if let Ok(rd) = std::fs::read_dir(&results) {
            let prefix = format!("{}-", self.network);
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().starts_with(&prefix) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        if !self.cni_dir_existed {
            // Only empty directories are removed.
            let _ = std::fs::remove_dir(&results);
            let _ = std::fs::remove_dir(CNI_CACHE);
        }
    }
}

/// Writes a CRI daemon's files into `dir` (the berth-oci wrapper, the CNI
/// config and plugins) and returns its config.toml.
fn cri_config(dir: &Path, socket: &Path, cgroup_root: &str, opts: &CriOptions) -> Result<String> {
    use std::os::unix::fs::PermissionsExt;
    // containerd's runc options take a binary, not arguments or
    // environment: a wrapper puts berth-oci's cgroups under our root.
    let berth = crate::runtime::berth_binary()?;
    let wrapper = dir.join("berth-oci");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nBERTH_CGROUP_ROOT={cgroup_root} exec {} oci \"$@\"\n",
            berth.display()
        ),
    )?;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755))?;
    for d in ["cni/net.d", "cni/bin", "runc"] {
        std::fs::create_dir_all(dir.join(d))?;
    }
    std::fs::write(
        dir.join("cni/net.d/10-test.conflist"),
        serde_json::to_vec_pretty(&opts.conflist)?,
    )?;
    let out = Command::new(berth)
        .args(["cni", "install", "--dir"])
        .arg(dir.join("cni/bin"))
        .output()
        .context("running berth cni install")?;
    if !out.status.success() {
        bail!(
            "berth cni install: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut config = base_config(dir, socket, &[]);
    config.push_str(&cri_plugin_config(
        &opts.sandbox_image,
        &wrapper,
        &dir.join("runc"),
        dir,
    ));
    Ok(config)
}

/// The config every private containerd shares: paths in `dir`, the socket,
/// and the plugins it has no use for, plus `disabled`.
/// The CRI plugin's section of a containerd config: `sandbox_image`, runc
/// as `binary` with its state in `runc_root`, CNI from `<dir>/cni`, pod
/// namespaces in the state dir, and what this machine needs (no negative
/// oom_score_adj: root here lacks CAP_SYS_RESOURCE).
pub fn cri_plugin_config(
    sandbox_image: &str,
    binary: &Path,
    runc_root: &Path,
    dir: &Path,
) -> String {
    format!(
        r#"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{sandbox_image}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "{binary}"
        Root = "{runc_root}"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{d}/cni/bin"
    conf_dir = "{d}/cni/net.d"
    max_conf_num = 1
"#,
        binary = binary.display(),
        runc_root = runc_root.display(),
        d = dir.display(),
    )
}

/// SIGTERM to a containerd we started (SIGKILL if it lingers), then SIGKILL
/// to its shims, which carry its socket's path on their command lines.
pub fn stop_with_shims(daemon: Spawned, socket: &Path) {
    // SAFETY: signalling the daemon we started.
    unsafe { libc::kill(daemon.pid(), libc::SIGTERM) };
    if daemon.wait(Duration::from_secs(10)).is_err() {
        eprintln!("containerd did not stop on SIGTERM; killed");
    }
    let sock = socket.to_string_lossy().into_owned();
    for p in proc::pids() {
        let cl = proc::cmdline(p);
        if cl.contains("containerd-shim") && cl.contains(&sock) {
            // SAFETY: a shim of the daemon we started.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
    }
}

/// Detaches every mount below `dir` (deepest first) and removes `dir`
/// unless something is still mounted there.
pub fn unmount_and_remove(dir: &Path) {
    for m in mounts_below(dir).into_iter().rev() {
        if let Ok(c) = std::ffi::CString::new(m.to_string_lossy().as_bytes()) {
            // SAFETY: detaching a mount below our own temp dir.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
    remove_tree_if_unmounted(dir);
}

fn base_config(dir: &Path, socket: &Path, disabled: &[&str]) -> String {
    let mut plugins: Vec<&str> = disabled.to_vec();
    plugins.extend([
        "io.containerd.snapshotter.v1.aufs",
        "io.containerd.snapshotter.v1.btrfs",
        "io.containerd.snapshotter.v1.devmapper",
        "io.containerd.snapshotter.v1.zfs",
        "io.containerd.tracing.processor.v1.otlp",
        "io.containerd.internal.v1.tracing",
    ]);
    let plugins: String = plugins.iter().map(|p| format!("  \"{p}\",\n")).collect();
    format!(
        r#"version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = [
{plugins}]

[grpc]
  address = "{s}"

[ttrpc]
  address = "{s}.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
"#,
        d = dir.display(),
        s = socket.display()
    )
}

/// Kills every process in the cgroup `dir` and below, then removes the
/// (now empty) cgroups, deepest first.
pub fn kill_and_remove_cgroup(dir: &Path) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                kill_and_remove_cgroup(&e.path());
            }
        }
    }
    for _ in 0..50 {
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        let pids: Vec<i32> = procs
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        if pids.is_empty() {
            break;
        }
        for p in pids {
            // SAFETY: a process in a cgroup of our private namespace.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = std::fs::remove_dir(dir);
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Context for errors: the daemon log tail.
pub fn with_log<T>(c: &Containerd, r: Result<T>) -> Result<T> {
    r.with_context(|| {
        let log = c.log();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        format!(
            "containerd log (last lines):\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        )
    })
}
