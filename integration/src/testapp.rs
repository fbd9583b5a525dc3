//! The static test program (`integration/testapp`, package `berth-testapp`;
//! its commands are documented in its main.rs): built once per test process
//! and run on the host or packed into the `testapp` image.
//!
//! It is built with `cargo rustc --release -- -C target-feature=+crt-static`
//! into its own target directory (`<target>/testapp`), so it is a static-pie
//! executable that runs in an empty image, and the flags touch nothing else
//! in the workspace. `BERTH_TESTAPP=PATH` uses a ready binary instead.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};

use crate::exec::{Spawned, spawn_daemon};
use crate::rootfs::is_static_elf;
use crate::runtime::{target_dir, workspace_root};
use crate::workdir::base_dir;

/// The ports the testapp image serves on by default (its Cmd).
pub const HTTP_PORT: u16 = 8080;
pub const TCP_PORT: u16 = 9000;
pub const UDP_PORT: u16 = 9001;

static BINARY: OnceLock<Result<PathBuf, String>> = OnceLock::new();

/// The static testapp binary, built on first use.
pub fn binary() -> Result<&'static Path> {
    BINARY
        .get_or_init(|| build().map_err(|e| format!("{e:#}")))
        .as_deref()
        .map_err(|e| anyhow!("building the static testapp: {e}"))
}

fn build() -> Result<PathBuf> {
    let bin = match std::env::var_os("BERTH_TESTAPP") {
        Some(p) => PathBuf::from(p),
        None => {
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let dir = target_dir().join("testapp");
            let out = Command::new(&cargo)
                .args([
                    "rustc",
                    "--release",
                    "-p",
                    "berth-testapp",
                    "--bin",
                    "testapp",
                ])
                .arg("--target-dir")
                .arg(&dir)
                .args([
                    "--",
                    "-C",
                    "target-feature=+crt-static",
                    "-C",
                    "strip=symbols",
                ])
                .current_dir(workspace_root())
                .env_remove("RUSTFLAGS")
                .env_remove("CARGO_ENCODED_RUSTFLAGS")
                .output()
                .with_context(|| {
                    format!("running {} rustc -p berth-testapp", cargo.to_string_lossy())
                })?;
            ensure!(
                out.status.success(),
                "cargo rustc -p berth-testapp failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            dir.join("release/testapp")
        }
    };
    ensure!(bin.is_file(), "{} missing", bin.display());
    ensure!(
        is_static_elf(&bin)?,
        "{} is dynamically linked: it must run in an empty image",
        bin.display()
    );
    Ok(bin)
}

/// `testapp serve` running on the host, with the addresses it bound.
pub struct Served {
    pub process: Spawned,
    pub http: Option<SocketAddr>,
    pub tcp: Option<SocketAddr>,
    pub udp: Option<SocketAddr>,
}

impl Served {
    /// Starts `testapp [pre...] serve --bind 127.0.0.1 ARGS...` (e.g.
    /// `["--http", "0"]`) and waits for its "listening" lines.
    pub fn start(pre: &[&str], args: &[&str]) -> Result<Served> {
        let mut cmd = Command::new(binary()?);
        cmd.args(pre)
            .args(["serve", "--bind", "127.0.0.1"])
            .args(args);
        let dir = base_dir().join(crate::workdir::unique_id("testapp"));
        // Tied to this process: it dies with it even if never dropped.
        let process = spawn_daemon(cmd, &dir)?;
        let wanted = ["--http", "--tcp", "--udp"]
            .iter()
            .filter(|f| args.contains(f))
            .count();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let out = process.stdout_so_far();
            let found: Vec<(String, SocketAddr)> = BufReader::new(out.as_bytes())
                .lines()
                .map_while(Result::ok)
                .filter_map(|l| {
                    let rest = l.strip_prefix("testapp: listening ")?;
                    let (proto, addr) = rest.split_once(' ')?;
                    Some((proto.to_string(), addr.parse().ok()?))
                })
                .collect();
            if found.len() >= wanted {
                let get = |p: &str| found.iter().find(|(q, _)| q == p).map(|(_, a)| *a);
                return Ok(Served {
                    http: get("http"),
                    tcp: get("tcp"),
                    udp: get("udp"),
                    process,
                });
            }
            if Instant::now() > deadline {
                bail!("testapp serve did not announce its servers: {out}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn pid(&self) -> i32 {
        self.process.pid()
    }
}
