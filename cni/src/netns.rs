//! Running work inside another network namespace.
//!
//! setns(2) changes the namespace of the calling thread only, and a thread
//! that has switched must never run anything else (a tokio worker would carry
//! the pod's namespace into unrelated tasks). So each call gets a fresh OS
//! thread that enters the namespace, runs the closure, and ends.

use std::fs::File;
use std::path::{Path, PathBuf};

use nix::sched::{CloneFlags, setns};

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("network namespace {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("entering network namespace {path}: {source}")]
    Enter { path: PathBuf, source: nix::Error },
    #[error("the thread working in network namespace {path} panicked")]
    Panicked { path: PathBuf },
    #[error("starting a thread for network namespace {path}: {source}")]
    Spawn {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Runs `f` on a new thread inside the network namespace at `path` (a
/// `/proc/<pid>/ns/net` or a bind-mounted `/run/netns/<name>`), and returns
/// its value.
pub fn run_in<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, NetnsError> {
    let file = File::open(path).map_err(|source| NetnsError::Open {
        path: path.to_owned(),
        source,
    })?;
    let p = path.to_owned();
    let handle = std::thread::Builder::new()
        .name("netns".into())
        .spawn(move || -> Result<T, NetnsError> {
            setns(&file, CloneFlags::CLONE_NEWNET)
                .map_err(|source| NetnsError::Enter { path: p, source })?;
            Ok(f())
        })
        .map_err(|source| NetnsError::Spawn {
            path: path.to_owned(),
            source,
        })?;
    handle.join().map_err(|_| NetnsError::Panicked {
        path: path.to_owned(),
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn netns_id(p: &str) -> String {
        std::fs::read_link(p)
            .map(|l| l.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    #[test]
    fn work_runs_in_the_namespace_and_the_caller_stays_out() {
        // Our own namespace, entered again: works without root.
        let mine = netns_id("/proc/thread-self/ns/net");
        let seen = run_in(Path::new("/proc/self/ns/net"), || {
            netns_id("/proc/thread-self/ns/net")
        })
        .unwrap();
        assert_eq!(seen, mine);
        assert_eq!(netns_id("/proc/thread-self/ns/net"), mine);
    }

    #[test]
    fn a_missing_namespace_is_named() {
        let e = run_in(Path::new("/run/netns/does-not-exist-berth"), || ()).unwrap_err();
        assert!(e.to_string().contains("does-not-exist-berth"), "{e}");
    }
}
