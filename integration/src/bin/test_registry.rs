//! A local registry with the standard test images, for trying things by
//! hand (`crictl pull`, `ctr image pull --plain-http`, `berth image pull`):
//!
//! cargo run -p berth-integration --bin test_registry -- \
//!     [--token USER:PASSWORD | --basic USER:PASSWORD] [--big] [--empty] [--proxy]
//!
//! Starts Debian's docker-registry on a free 127.0.0.1 port (in token mode
//! with `--token`, wanting HTTP Basic credentials with `--basic`), pushes the images of `berth_integration::images`
//! (`--big` adds the ~100 MB `big:latest`, `--empty` pushes nothing),
//! optionally starts the fault-injecting proxy in front of it, prints where
//! everything is, and serves until stdin closes (Ctrl-D) or it is killed:
//! the registry dies with it, even on SIGKILL (a directory left in $TMPDIR
//! is removed by the next fixture run). In the background:
//! `sleep infinity | test_registry &`.

use std::io::{BufRead, Write};

use anyhow::{Context, Result, bail};
use berth_integration::images;
use berth_integration::registry::Registry;
use berth_integration::registry_proxy::RegistryProxy;

fn main() -> Result<()> {
    let mut token: Option<(String, String)> = None;
    let mut basic: Option<(String, String)> = None;
    let mut big = false;
    let mut proxy = false;
    let mut empty = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--token" | "--basic" => {
                let v = args.next().context("--token/--basic need USER:PASSWORD")?;
                let (u, p) = v
                    .split_once(':')
                    .context("--token/--basic need USER:PASSWORD")?;
                let creds = Some((u.to_string(), p.to_string()));
                if a == "--token" {
                    token = creds;
                } else {
                    basic = creds;
                }
            }
            "--big" => big = true,
            "--proxy" => proxy = true,
            "--empty" => empty = true,
            other => bail!(
                "unknown argument {other}\nusage: test_registry [--token|--basic USER:PASSWORD] [--big] [--empty] [--proxy]"
            ),
        }
    }
    let reg = match (&token, &basic) {
        (Some(_), Some(_)) => bail!("--token and --basic exclude each other"),
        (Some((u, p)), None) => Registry::start_with_token_auth(u, p)?,
        (None, Some((u, p))) => Registry::start_with_basic_auth(u, p)?,
        (None, None) => Registry::start()?,
    };
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "registry {} pid {} dir {}",
        reg.addr(),
        reg.pid().unwrap_or(0),
        reg.dir().display()
    )?;
    if let Some(realm) = reg.token_realm() {
        writeln!(out, "token realm {realm}")?;
    }
    out.flush()?;
    if !empty {
        images::push_standard(&reg)?;
        for name in images::STANDARD_NAMES {
            writeln!(out, "image {}", reg.reference(name))?;
        }
    }
    if big {
        reg.push("big", "latest", images::big()?)?;
        writeln!(out, "image {}", reg.reference("big:latest"))?;
    }
    let p = if proxy {
        let p = RegistryProxy::start(&reg)?;
        writeln!(out, "proxy {} blobstore {}", p.addr(), p.blobstore_addr())?;
        Some(p)
    } else {
        None
    };
    writeln!(out, "ready")?;
    out.flush()?;
    drop(out);
    // Serve until stdin closes.
    let mut line = String::new();
    while std::io::stdin().lock().read_line(&mut line)? > 0 {
        line.clear();
    }
    drop(p);
    drop(reg);
    Ok(())
}
