//! A plugin as an executable: what `berth` runs when invoked under a
//! plugin's name (a link in a CNI bin dir).

use std::io::{Read, Write};

use crate::plugins;
use crate::protocol::{self, Invocation};
use crate::types::{CniError, SUPPORTED_VERSIONS, code};

/// Runs plugin `name` for this process: `CNI_*` from the environment, the
/// config from stdin, the result or error to stdout. Returns the exit code.
///
/// Without `CNI_COMMAND` at all (someone ran it by hand) it only says what
/// it is on stderr and exits 0, as the reference plugins do.
pub fn plugin_main(name: &str) -> i32 {
    let Some(plugin) = plugins::by_name(name) else {
        eprintln!(
            "berth: {name:?} is not a CNI plugin of berth (plugins: {})",
            plugins::NAMES.join(", ")
        );
        return 1;
    };
    if std::env::var_os("CNI_COMMAND").is_none() {
        eprintln!(
            "berth CNI plugin {name} (CNI versions {})",
            SUPPORTED_VERSIONS.join(", ")
        );
        return 0;
    }
    crate::detach::set_executable();
    let mut stdin = Vec::new();
    let out = match std::io::stdin().read_to_end(&mut stdin) {
        Err(e) => error_outcome(
            CniError::new(
                code::IO_FAILURE,
                "cannot read the network configuration from stdin",
            )
            .with_details(e.to_string()),
        ),
        Ok(_) => match Invocation::from_env(|k| std::env::var(k).ok(), stdin) {
            Ok(inv) => protocol::run(plugin.as_ref(), &inv),
            Err(e) => error_outcome(e),
        },
    };
    let mut stdout = std::io::stdout().lock();
    // Nothing more can be reported if stdout is gone; the code still says it.
    let _ = stdout.write_all(&out.stdout).and_then(|()| stdout.flush());
    out.exit_code
}

fn error_outcome(e: CniError) -> protocol::Outcome {
    protocol::Outcome {
        stdout: serde_json::to_vec(&e).unwrap_or_default(),
        exit_code: 1,
    }
}
