//! A `berth runtime` CRI daemon for tests: private socket, root, state dir,
//! CNI dirs and cgroup root, optionally inside a "node" network namespace;
//! the generated CRI clients over its socket; `kill -9` and restart on the
//! same state; and a cleanup on drop that leaves nothing behind (processes,
//! cgroups, mounts) even when a test fails half-way.

use std::fs::File;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use berth_proto::v1::image_service_client::ImageServiceClient;
use berth_proto::v1::runtime_service_client::RuntimeServiceClient;
use hyper_util::rt::TokioIo;
use tempfile::TempDir;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::oci::{Artifact, write_oci_archive};
use crate::runtime::berth_binary;
use crate::workdir::{tempdir, unique_id};

const START_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// How to start the daemon.
#[derive(Default)]
pub struct Options {
    /// runtime.toml text; None: no file (the defaults).
    pub config: Option<String>,
    /// Run the daemon in this network namespace (`nsenter --net=`).
    pub netns: Option<PathBuf>,
    /// A conflist written into the CNI config dir.
    pub conflist: Option<serde_json::Value>,
    /// CNI plugin dirs; empty: a dir with nothing (berth's plugins run in-process).
    pub cni_bin_dirs: Vec<PathBuf>,
    /// Leave a stale socket file where the daemon will serve, as a crashed
    /// daemon leaves it: the daemon must replace it.
    pub stale_socket: bool,
    /// The berth executable; None: the debug build the harness makes.
    /// Benchmarks pass the release build.
    pub berth: Option<PathBuf>,
    /// Leave out `--debug`: debug logging would be part of what a benchmark
    /// times.
    pub quiet: bool,
    /// Put the state dir on its own tmpfs, as `/run/berth` is on a node
    /// (benchmarks; unmounted with the rest on drop).
    pub state_tmpfs: bool,
}

pub struct CriDaemon {
    dir: TempDir,
    child: Option<Child>,
    netns: Option<PathBuf>,
    bin_dirs: Vec<PathBuf>,
    cgroup_root: String,
    berth: PathBuf,
    quiet: bool,
}

impl CriDaemon {
    pub fn start(opts: Options) -> Result<CriDaemon> {
        let dir = tempdir("cri-")?;
        if let Some(text) = &opts.config {
            std::fs::write(dir.path().join("runtime.toml"), text)?;
        }
        for d in [
            "run",
            "root",
            "state",
            "cni/net.d",
            "cni/bin",
            "cni/cache",
            "logs",
        ] {
            std::fs::create_dir_all(dir.path().join(d))?;
        }
        if opts.state_tmpfs {
            let state = dir.path().join("state");
            nix::mount::mount(
                Some("tmpfs"),
                &state,
                Some("tmpfs"),
                nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
                Some("mode=0711"),
            )
            .with_context(|| format!("mounting a tmpfs on {}", state.display()))?;
        }
        if opts.stale_socket {
            drop(std::os::unix::net::UnixListener::bind(
                dir.path().join("run/berth.sock"),
            )?);
        }
        if let Some(c) = &opts.conflist {
            std::fs::write(
                dir.path().join("cni/net.d/10-test.conflist"),
                serde_json::to_vec_pretty(c)?,
            )?;
        }
        let mut bin_dirs = opts.cni_bin_dirs.clone();
        if bin_dirs.is_empty() {
            bin_dirs.push(dir.path().join("cni/bin"));
        }
        let mut d = CriDaemon {
            dir,
            child: None,
            netns: opts.netns.clone(),
            bin_dirs,
            cgroup_root: format!("berth-it-{}", unique_id("cri")),
            berth: match opts.berth {
                Some(b) => b,
                None => berth_binary()?.to_path_buf(),
            },
            quiet: opts.quiet,
        };
        d.spawn()?;
        Ok(d)
    }

    /// Starts the daemon process on this fixture's dirs.
    fn spawn(&mut self) -> Result<()> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.path("daemon.log"))?;
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={}", ns.display()))
                    .arg("--")
                    .arg(&self.berth);
                c
            }
            None => Command::new(&self.berth),
        };
        let bin_dirs = std::env::join_paths(&self.bin_dirs)?;
        cmd.arg("runtime")
            .arg("--socket")
            .arg(self.socket())
            .arg("--root")
            .arg(self.root())
            .arg("--state")
            .arg(self.state())
            .arg("--config")
            .arg(self.path("runtime.toml"))
            .arg("--cni-conf-dir")
            .arg(self.path("cni/net.d"))
            .arg("--cni-bin-dir")
            .arg(bin_dirs)
            .arg("--cni-cache-dir")
            .arg(self.path("cni/cache"))
            .arg("--cgroup-root")
            .arg(&self.cgroup_root)
            .args((!self.quiet).then_some("--debug"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = cmd.spawn().context("starting berth runtime")?;
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        while StdUnixStream::connect(self.socket()).is_err() {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!("berth runtime exited with {status}:\n{}", self.log());
            }
            if Instant::now() > deadline {
                bail!(
                    "berth runtime did not serve on its socket in {START_TIMEOUT:?}:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn socket(&self) -> PathBuf {
        self.path("run/berth.sock")
    }

    pub fn root(&self) -> PathBuf {
        self.path("root")
    }

    pub fn state(&self) -> PathBuf {
        self.path("state")
    }

    /// A dir for pod logs (PodSandboxConfig.log_directory).
    pub fn log_dir(&self, pod: &str) -> PathBuf {
        self.path("logs").join(pod)
    }

    pub fn cgroup_root(&self) -> &str {
        &self.cgroup_root
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.path("daemon.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Puts images into the daemon's store (`berth image import`), as an
    /// air-gapped node is preloaded.
    pub fn import(&self, refs: &[(&str, &dyn Artifact)]) -> Result<()> {
        let archive = self.path(&format!("{}.tar", unique_id("images")));
        write_oci_archive(&archive, refs)?;
        let out = Command::new(&self.berth)
            .arg("image")
            .arg("--root")
            .arg(self.root())
            .arg("--config")
            .arg(self.path("runtime.toml"))
            .arg("import")
            .arg(&archive)
            .output()?;
        if !out.status.success() {
            bail!(
                "berth image import: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let _ = std::fs::remove_file(archive);
        Ok(())
    }

    /// SIGTERM, then waits for the exit.
    pub fn terminate(&mut self) -> Result<ExitStatus> {
        let child = self.child.as_mut().context("the daemon is not running")?;
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id())?);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait()? {
                self.child = None;
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("berth runtime still running {STOP_TIMEOUT:?} after SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `kill -9` of the daemon (its containers live on).
    pub fn kill9(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            c.kill()?;
            c.wait()?;
        }
        Ok(())
    }

    /// Starts the daemon again on the same state.
    pub fn restart(&mut self) -> Result<()> {
        self.kill9()?;
        self.spawn()
    }

    pub async fn clients(&self) -> Result<Clients> {
        let socket = self.socket();
        let channel = Endpoint::try_from("http://berth.invalid")?
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let socket = socket.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(socket).await?;
                    Ok::<_, std::io::Error>(TokioIo::new(stream))
                }
            }))
            .await
            .context("connecting to the CRI socket")?;
        Ok(Clients {
            images: berth_proto::image_service_client(channel.clone()),
            runtime: berth_proto::runtime_service_client(channel),
        })
    }

    /// Mounts below this fixture's dir, deepest first.
    pub fn mounts(&self) -> Vec<PathBuf> {
        let base = self.dir.path().to_path_buf();
        let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut out: Vec<PathBuf> = text
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .map(|p| PathBuf::from(p.replace("\\040", " ")))
            .filter(|p| p.starts_with(&base))
            .collect();
        out.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        out.dedup();
        out
    }

    /// cgroup dirs of this daemon's root, in every hierarchy.
    pub fn cgroup_dirs(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        if let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") {
            for e in entries.flatten() {
                let p = e.path().join(&self.cgroup_root);
                if p.is_dir() {
                    out.push(p);
                }
            }
        }
        let v2 = Path::new("/sys/fs/cgroup").join(&self.cgroup_root);
        if v2.is_dir() && !out.contains(&v2) {
            out.push(v2);
        }
        out
    }

    fn cleanup(&mut self) {
        let _ = self.kill9();
        // Containers' processes, then their (now empty) cgroups.
        for root in self.cgroup_dirs() {
            crate::containerd::kill_and_remove_cgroup(&root);
        }
        for m in self.mounts() {
            let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

impl Drop for CriDaemon {
    fn drop(&mut self) {
        self.cleanup();
    }
}

pub struct Clients {
    pub images: ImageServiceClient<Channel>,
    pub runtime: RuntimeServiceClient<Channel>,
}
