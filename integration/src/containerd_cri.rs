//! containerd 1.6 with its CRI plugin (runc, cgroupfs, overlayfs), private:
//! config, root, state, socket, CNI dirs and registry hosts in a temp dir,
//! running in a "node" network namespace, for the benchmarks that compare
//! berth against it over the CRI.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, ensure};
use serde_json::json;

use crate::containerd::{kill_and_remove_cgroup, stop_with_shims, unmount_and_remove};
use crate::exec::{Spawned, spawn_daemon};
use crate::netns::NetNs;
use crate::proc;
use crate::runtime::which;
use crate::workdir::tempdir;

const CONTAINERD: &str = "/usr/bin/containerd";
const RUNC: &str = "/usr/sbin/runc";
const RUN_DIR: &str = "/run/containerd";

/// A private containerd with its CRI plugin: config, root, state, socket,
/// CNI dirs and registry hosts in a temp dir, running in a node namespace;
/// its pods' cgroups under one parent of ours. Stopped, with everything it
/// started, on drop.
pub struct ContainerdCri {
    dir: PathBuf,
    /// Its CRI socket.
    pub socket: PathBuf,
    /// The cgroup (in every hierarchy) that pods are to be put under, e.g. as
    /// the kubelet's `--cgroup-root`; removed with whatever is in it.
    pub cgroup_parent: String,
    daemon: Option<Spawned>,
    /// Whether /run/containerd existed before (the shims put their sockets
    /// in `s/` there whatever the config says).
    run_dir_existed: bool,
}

impl ContainerdCri {
    pub fn start(
        ns: &NetNs,
        berth: &Path,
        registry: &str,
        sandbox_image: &str,
        conflist: &serde_json::Value,
    ) -> Result<ContainerdCri> {
        for b in [CONTAINERD, RUNC] {
            ensure!(
                Path::new(b).is_file(),
                "{b} not found: apt-get install containerd runc"
            );
        }
        ensure!(
            which("containerd-shim-runc-v2").is_some(),
            "containerd-shim-runc-v2 not found: apt-get install containerd"
        );
        let run_dir_existed = Path::new(RUN_DIR).exists();
        let dir = tempdir("bench-ctrd-")?.keep();
        let mut c = ContainerdCri {
            socket: dir.join("c.sock"),
            cgroup_parent: format!("berth-bench-ctrd-{}", std::process::id()),
            dir,
            daemon: None,
            run_dir_existed,
        };
        let d = c.dir.clone();
        for sub in ["cni/net.d", "logs", "run"] {
            std::fs::create_dir_all(d.join(sub))?;
        }
        // State on a tmpfs, as /run is on a node; berth's gets the same.
        mount_tmpfs(&d.join("run"))?;
        std::fs::write(
            d.join("cni/net.d/10-bench.conflist"),
            serde_json::to_vec_pretty(conflist)?,
        )?;
        let out = Command::new(berth)
            .args(["cni", "install", "--dir"])
            .arg(d.join("cni/bin"))
            .output()
            .context("running berth cni install")?;
        ensure!(
            out.status.success(),
            "berth cni install: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // containerd 1.6 ignores a hosts.toml without a [host] table and
        // would try https.
        let hosts = d.join("certs.d").join(registry);
        std::fs::create_dir_all(&hosts)?;
        std::fs::write(
            hosts.join("hosts.toml"),
            format!(
                "server = \"http://{registry}\"\n\n[host.\"http://{registry}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
            ),
        )?;
        std::fs::write(d.join("config.toml"), c.config(sandbox_image))?;
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", ns.path().display()))
            .arg("--")
            .arg(CONTAINERD)
            .arg("--config")
            .arg(d.join("config.toml"))
            .env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin");
        c.daemon = Some(spawn_daemon(cmd, &d.join("containerd"))?);
        Ok(c)
    }

    fn config(&self, sandbox_image: &str) -> String {
        format!(
            r#"version = 2
root = "{d}/root"
state = "{d}/run/state"
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing",
]

[grpc]
  address = "{s}"

[ttrpc]
  address = "{s}.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"

{cri}  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{d}/certs.d"
"#,
            d = self.dir.display(),
            s = self.socket.display(),
            cri = crate::containerd::cri_plugin_config(
                sandbox_image,
                Path::new(RUNC),
                &self.dir.join("run/runc"),
                &self.dir,
            )
            .trim_start(),
        )
    }

    /// The daemon's pid, while it runs.
    pub fn pid(&self) -> Option<i32> {
        self.daemon.as_ref().map(|d| d.pid())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn alive(&self) -> bool {
        self.pid().is_some_and(proc::alive)
    }

    /// The last 30 lines of its log.
    pub fn log(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("containerd.stderr")).unwrap_or_default();
        tail(&log, 30)
    }

    /// SIGTERM to the daemon; SIGKILL to its shims and whatever is left in
    /// our cgroups; unmounts and removes the temp dir.
    pub fn shutdown(&mut self) {
        let Some(daemon) = self.daemon.take() else {
            return;
        };
        stop_with_shims(daemon, &self.socket);
        for h in proc::cgroup_hierarchies() {
            let base = h.join(&self.cgroup_parent);
            if base.is_dir() {
                kill_and_remove_cgroup(&base);
            }
        }
        unmount_and_remove(&self.dir);
        if !self.run_dir_existed {
            // Only empty directories go.
            for d in ["s", ""] {
                let _ = std::fs::remove_dir(Path::new(RUN_DIR).join(d));
            }
        }
    }
}

impl Drop for ContainerdCri {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A tmpfs on `at`, as /run is on a node.
pub fn mount_tmpfs(at: &Path) -> Result<()> {
    nix::mount::mount(
        Some("tmpfs"),
        at,
        Some("tmpfs"),
        nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
        Some("mode=0711"),
    )
    .with_context(|| format!("mounting a tmpfs on {}", at.display()))
}

/// The CNI chain the benchmarks give both runtimes: bridge + host-local +
/// portmap + loopback.
pub fn conflist(name: &str, ipam_dir: &Path) -> serde_json::Value {
    json!({
        "cniVersion": "1.0.0",
        "name": name,
        "plugins": [
            {
                "type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": true,
                "ipam": {
                    "type": "host-local", "dataDir": ipam_dir,
                    "ranges": [[{"subnet": "10.89.0.0/16"}]],
                    "routes": [{"dst": "0.0.0.0/0"}]
                }
            },
            {"type": "portmap", "capabilities": {"portMappings": true}},
            {"type": "loopback"}
        ]
    })
}
