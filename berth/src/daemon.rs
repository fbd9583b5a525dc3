//! What the long-running subcommands (`berth runtime`, `berth node`) share:
//! their logging, their allocator setting and their async main.

use std::future::Future;
use std::io::IsTerminal;

/// A daemon logs what it does at info level, unlike the one-shot commands.
/// With `debug`, `debug_targets` (berth's own crates) log at debug; the
/// HTTP/2 and TLS stacks stay at info. `BERTH_LOG` overrides both.
pub fn init_logging(debug: bool, debug_targets: &str) {
    let default = if debug {
        format!("info,{debug_targets}")
    } else {
        "info".to_owned()
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("BERTH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal, not for a journal or log file.
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

/// glibc gives each thread that allocates its own arena (up to eight per
/// core), and memory freed into one arena is not reused by another: with the
/// async workers and the blocking pool, a daemon that pulled an image and ran
/// some pods would keep a dozen partly filled arenas. Two are plenty for a
/// daemon whose threads mostly wait.
fn limit_malloc_arenas() {
    // SAFETY: mallopt takes two integers; called before any other thread exists.
    if unsafe { libc::mallopt(libc::M_ARENA_MAX, 2) } != 1 {
        tracing::debug!("mallopt(M_ARENA_MAX) refused; keeping glibc's arenas");
    }
}

/// Runs `serve` on a multi-threaded runtime; the exit code, with an error
/// logged and printed as `berth NAME: ...`.
pub fn main<F>(name: &str, serve: impl FnOnce() -> F) -> i32
where
    F: Future<Output = anyhow::Result<()>>,
{
    limit_malloc_arenas();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("berth {name}: starting the async runtime: {e}");
            return 1;
        }
    };
    match rt.block_on(serve()) {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("berth {name}: {e:#}");
            1
        }
    }
}
