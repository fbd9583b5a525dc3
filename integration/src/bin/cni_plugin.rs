//! Test-only stand-in for berth's plugin executables: runs the berth CNI
//! plugin named by argv[0] (a symlink `bridge` to this binary is the bridge
//! plugin) with the CNI protocol on its environment, stdin and stdout.

use std::io::{Read, Write};

use berth_cni::protocol::{self, Invocation};
use berth_cni::types::{CniError, code};

fn main() {
    let argv0 = std::env::args_os().next().unwrap_or_default();
    let name = std::path::Path::new(&argv0)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut stdin = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut stdin);
    let out = match (
        berth_cni::plugins::by_name(&name),
        Invocation::from_env(|k| std::env::var(k).ok(), stdin),
    ) {
        (Some(p), Ok(inv)) => protocol::run(&*p, &inv),
        (None, _) => error(CniError::new(
            code::INVALID_ENVIRONMENT,
            format!("no berth CNI plugin is called {name:?}"),
        )),
        (_, Err(e)) => error(e),
    };
    let _ = std::io::stdout().write_all(&out.stdout);
    std::process::exit(out.exit_code);
}

fn error(e: CniError) -> protocol::Outcome {
    protocol::Outcome {
        stdout: serde_json::to_vec(&e).unwrap_or_default(),
        exit_code: 1,
    }
}
