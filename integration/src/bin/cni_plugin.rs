//! Test-only: berth's CNI plugins as an executable, picked by the name it
//! is run as (a `portmap` symlink in a CNI bin dir), so tests can run them
//! exactly as a runtime does until the `berth` binary answers to those
//! names itself.

use std::io::{Read, Write};
use std::path::Path;

use berth_cni::protocol::{Invocation, run};

fn main() {
    let argv0 = std::env::args().next().unwrap_or_default();
    let name = Path::new(&argv0)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let Some(plugin) = berth_cni::plugins::by_name(&name) else {
        eprintln!(
            "cni_plugin: run me as one of {:?}, not {name:?}",
            berth_cni::plugins::NAMES
        );
        std::process::exit(2);
    };
    let mut stdin = Vec::new();
    // A command such as VERSION may come with no stdin at all.
    let _ = std::io::stdin().read_to_end(&mut stdin);
    let out = match Invocation::from_env(|k| std::env::var(k).ok(), stdin) {
        Ok(inv) => run(plugin.as_ref(), &inv),
        Err(e) => berth_cni::protocol::Outcome {
            stdout: serde_json::to_vec(&e).unwrap_or_default(),
            exit_code: 1,
        },
    };
    let _ = std::io::stdout().write_all(&out.stdout);
    std::process::exit(out.exit_code);
}
