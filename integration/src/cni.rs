//! CNI plugins under test, run as a runtime runs them: berth's (links to the
//! berth binary that `berth cni install` makes in a private bin dir) and
//! Debian's reference plugins in [`REFERENCE_DIR`].

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;
use tempfile::TempDir;

use crate::runtime::berth_binary;
use crate::workdir::tempdir;

/// Where Debian's containernetworking-plugins are.
pub const REFERENCE_DIR: &str = "/usr/lib/cni";

/// A reference plugin, or an error saying what to install.
pub fn reference(name: &str) -> Result<PathBuf> {
    let p = Path::new(REFERENCE_DIR).join(name);
    if !p.is_file() {
        bail!(
            "{} missing: install Debian's containernetworking-plugins",
            p.display()
        );
    }
    Ok(p)
}

/// A CNI bin dir holding berth's plugins.
pub struct BinDir {
    dir: TempDir,
}

impl BinDir {
    /// A new bin dir filled by `berth cni install --dir`.
    pub fn berth() -> Result<BinDir> {
        let dir = tempdir("cni-bin-")?;
        let out = Command::new(berth_binary()?)
            .args(["cni", "install", "--dir"])
            .arg(dir.path())
            .output()
            .context("running berth cni install")?;
        if !out.status.success() {
            bail!(
                "berth cni install failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(BinDir { dir })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The plugin `name` in this dir.
    pub fn plugin(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// One plugin invocation's environment (the `CNI_*` variables).
#[derive(Debug, Clone)]
pub struct Call {
    pub command: String,
    pub container_id: String,
    pub ifname: String,
    pub netns: Option<PathBuf>,
    pub args: String,
    pub cni_path: String,
}

impl Call {
    /// `command` for container `container_id`, interface eth0, a netns path
    /// that plugins without netns work never open, CNI_PATH the reference dir.
    pub fn new(command: &str, container_id: &str) -> Call {
        Call {
            command: command.into(),
            container_id: container_id.into(),
            ifname: "eth0".into(),
            netns: Some(PathBuf::from("/run/netns/berth-unused")),
            args: String::new(),
            cni_path: REFERENCE_DIR.into(),
        }
    }

    pub fn ifname(mut self, ifname: &str) -> Call {
        self.ifname = ifname.into();
        self
    }

    pub fn netns(mut self, netns: Option<&Path>) -> Call {
        self.netns = netns.map(Path::to_path_buf);
        self
    }

    pub fn args(mut self, args: &str) -> Call {
        self.args = args.into();
        self
    }

    /// The process, with only the CNI variables (and PATH) set.
    pub fn command(&self, exe: &Path) -> Command {
        let mut c = Command::new(exe);
        c.env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("CNI_COMMAND", &self.command)
            .env("CNI_CONTAINERID", &self.container_id)
            .env("CNI_IFNAME", &self.ifname)
            .env("CNI_ARGS", &self.args)
            .env("CNI_PATH", &self.cni_path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(ns) = &self.netns {
            c.env("CNI_NETNS", ns);
        }
        c
    }

    /// Starts `exe` with `stdin` written (and closed).
    pub fn spawn(&self, exe: &Path, stdin: &[u8]) -> Result<Child> {
        let mut child = self
            .command(exe)
            .spawn()
            .with_context(|| format!("running {}", exe.display()))?;
        if let Some(mut s) = child.stdin.take() {
            // A plugin killed early closes the pipe; its status tells.
            let _ = s.write_all(stdin);
        }
        Ok(child)
    }

    /// Runs `exe` to the end with the JSON `config` on stdin.
    pub fn run(&self, exe: &Path, config: &Value) -> Result<Reply> {
        self.run_raw(exe, &serde_json::to_vec(config)?)
    }

    pub fn run_raw(&self, exe: &Path, stdin: &[u8]) -> Result<Reply> {
        Reply::of(self.spawn(exe, stdin)?)
    }
}

/// What a plugin printed and how it ended.
#[derive(Debug)]
pub struct Reply {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl Reply {
    pub fn of(child: Child) -> Result<Reply> {
        let out = child.wait_with_output().context("waiting for a plugin")?;
        Ok(Reply {
            status: out.status,
            stdout: out.stdout,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    fn describe(&self) -> String {
        format!(
            "{}; stdout: {}; stderr: {}",
            self.status,
            String::from_utf8_lossy(&self.stdout).trim(),
            self.stderr.trim()
        )
    }

    /// The JSON result of a successful ADD.
    pub fn result(&self) -> Result<Value> {
        if !self.status.success() {
            bail!("the plugin failed: {}", self.describe());
        }
        serde_json::from_slice(&self.stdout).map_err(|e| {
            anyhow!(
                "the plugin printed no JSON result ({e}): {}",
                self.describe()
            )
        })
    }

    /// Success with nothing printed (DEL, CHECK, GC, STATUS).
    pub fn done(&self) -> Result<()> {
        if !self.status.success() || !String::from_utf8_lossy(&self.stdout).trim().is_empty() {
            bail!("expected success with no output: {}", self.describe());
        }
        Ok(())
    }

    /// The spec's error result: exit code 1 and `{code, msg, ...}` on stdout.
    pub fn error(&self) -> Result<(u64, String)> {
        if self.status.code() != Some(1) {
            bail!("expected exit code 1 and an error: {}", self.describe());
        }
        let v: Value = serde_json::from_slice(&self.stdout)
            .map_err(|e| anyhow!("the error is not JSON ({e}): {}", self.describe()))?;
        let code = v["code"]
            .as_u64()
            .ok_or_else(|| anyhow!("the error has no code: {}", self.describe()))?;
        let msg = v["msg"]
            .as_str()
            .ok_or_else(|| anyhow!("the error has no msg: {}", self.describe()))?;
        Ok((code, msg.to_string()))
    }
}

/// The addresses (`ips[].address`) of an ADD result.
pub fn addresses(result: &Value) -> Vec<String> {
    result["ips"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|i| i["address"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// host-local's store of one network, as files.
#[derive(Debug, Default)]
pub struct StoreFiles {
    /// Allocated address (file name) and its content
    /// (`<containerID>\r\n<ifname>`), sorted.
    pub ips: Vec<(String, String)>,
    /// The other names (lock, last_reserved_ip.N, ...), sorted.
    pub other: Vec<String>,
}

/// host-local's store of `network` under `data_dir`.
pub fn store_files(data_dir: &Path, network: &str) -> Result<StoreFiles> {
    let dir = data_dir.join(network);
    let mut out = StoreFiles::default();
    if !dir.exists() {
        return Ok(out);
    }
    for e in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.parse::<std::net::IpAddr>().is_ok() {
            let content = std::fs::read_to_string(e.path())?;
            out.ips.push((name, content));
        } else {
            out.other.push(name);
        }
    }
    out.ips.sort();
    out.other.sort();
    Ok(out)
}
