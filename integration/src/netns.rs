//! Network namespaces for networking tests: a "node", "pods", "external
//! hosts". The root network namespace is never changed.
//!
//! Each [`NetNs`] is a bind-mounted namespace at `/run/netns/<name>` (made
//! with `ip netns add`), removed with everything in it when dropped. Commands
//! run inside with `nsenter --net=…`, not `ip netns exec`, which also remounts
//! /sys and so hides /sys/fs/cgroup.

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, Result, bail};

static SEQ: AtomicUsize = AtomicUsize::new(0);

pub struct NetNs {
    name: String,
}

impl NetNs {
    /// A new, empty namespace named `<tag>-<pid>-<n>` (at most 15 characters
    /// of `tag` are kept so derived interface names stay short).
    pub fn new(tag: &str) -> Result<NetNs> {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let tag: String = tag.chars().take(15).collect();
        let name = format!("{tag}-{}-{n}", std::process::id());
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .context("running ip netns add")?;
        if !out.status.success() {
            bail!(
                "ip netns add {name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let ns = NetNs { name };
        ns.sh("ip link set lo up")?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`: what CNI_NETNS takes.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// A command that runs inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.path().display()))
            .arg("--")
            .arg(program);
        c
    }

    /// Runs a shell command inside; fails with its output when it fails.
    pub fn sh(&self, script: &str) -> Result<String> {
        let out = self
            .command("sh")
            .args(["-c", script])
            .output()
            .with_context(|| format!("running {script:?} in {}", self.name))?;
        if !out.status.success() {
            bail!(
                "{script:?} in netns {} failed ({}):\n{}{}",
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Whether a shell command succeeds inside.
    pub fn try_sh(&self, script: &str) -> bool {
        self.command("sh")
            .args(["-c", script])
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// Connects this namespace and `other` with a veth pair named `a`/`b`,
    /// addresses `addr_a`/`addr_b` (CIDR), both up.
    pub fn link_to(
        &self,
        other: &NetNs,
        a: &str,
        addr_a: &str,
        b: &str,
        addr_b: &str,
    ) -> Result<()> {
        self.sh(&format!(
            "ip link add {a} type veth peer name {b} netns {other} && ip addr add {addr_a} dev {a} && ip link set {a} up",
            other = other.name()
        ))?;
        other.sh(&format!(
            "ip addr add {addr_b} dev {b} && ip link set {b} up"
        ))?;
        Ok(())
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Killing what still runs inside lets the namespace go away.
        let _ = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
            .map(|o| {
                for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                    if let Ok(p) = pid.parse::<i32>() {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(p),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                    }
                }
            });
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .output();
    }
}
