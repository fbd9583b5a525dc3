//! A pod's network, IPC and UTS namespaces, pinned by bind mounts.
//!
//! The namespaces are made by a fresh OS thread that unshares them (they are
//! per-thread attributes), sets the pod's hostname and sysctls inside them,
//! and bind-mounts `/proc/thread-self/ns/<kind>` onto a file in the pod's
//! state dir. The thread then ends; the mounts keep the namespaces alive
//! until [`unpin`]. Containers join them by path, CNI plugins get the
//! network one's path, and no process has to stay around for it.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;

use super::sysctl;

#[derive(Debug, thiserror::Error)]
pub enum NsError {
    #[error("{op}: {source}")]
    Sys {
        op: String,
        #[source]
        source: nix::Error,
    },
    #[error("{op}: {source}")]
    Io {
        op: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Sysctl(#[from] sysctl::SysctlError),
    #[error("the namespace thread failed: {0}")]
    Thread(String),
}

/// Which namespaces a pod gets of its own, and what goes into them.
#[derive(Debug, Clone, Default)]
pub struct NsSpec {
    pub net: bool,
    pub ipc: bool,
    pub uts: bool,
    /// Set in the new UTS namespace.
    pub hostname: Option<String>,
    /// Written inside the new namespaces; checked with [`sysctl::check`].
    pub sysctls: Vec<(String, String)>,
}

/// The files holding the pinned namespaces (None: the host's is used).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Pinned {
    pub net: Option<PathBuf>,
    pub ipc: Option<PathBuf>,
    pub uts: Option<PathBuf>,
}

impl Pinned {
    /// The files [`pin`] will make in `dir` for `spec`: recorded before it
    /// runs, so that a crash in between leaves a record of what to undo.
    pub fn planned(dir: &Path, spec: &NsSpec) -> Pinned {
        let at = |own: bool, kind: &str| own.then(|| dir.join(kind));
        Pinned {
            net: at(spec.net, "net"),
            ipc: at(spec.ipc, "ipc"),
            uts: at(spec.uts, "uts"),
        }
    }

    pub fn paths(&self) -> impl Iterator<Item = &PathBuf> {
        self.net
            .iter()
            .chain(self.ipc.iter())
            .chain(self.uts.iter())
    }
}

/// Makes the namespaces `spec` asks for and pins them as `dir/net`,
/// `dir/ipc` and `dir/uts`. On failure nothing is left pinned.
pub fn pin(dir: &Path, spec: &NsSpec) -> Result<Pinned, NsError> {
    for (name, _) in &spec.sysctls {
        sysctl::check(name, spec.net, spec.ipc)?;
    }
    std::fs::create_dir_all(dir).map_err(|source| NsError::Io {
        op: format!("creating {}", dir.display()),
        source,
    })?;
    let dir = dir.to_path_buf();
    let spec = spec.clone();
    // The thread's namespaces die with it; only the mounts outlive it. It
    // never returns to a pool, so no other work runs in the pod's namespaces.
    let handle = std::thread::Builder::new()
        .name("berth-podns".into())
        .spawn(move || pin_on_this_thread(&dir, &spec))
        .map_err(|source| NsError::Io {
            op: "starting the namespace thread".into(),
            source,
        })?;
    handle
        .join()
        .map_err(|_| NsError::Thread("it panicked".into()))?
}

fn pin_on_this_thread(dir: &Path, spec: &NsSpec) -> Result<Pinned, NsError> {
    let mut flags = CloneFlags::empty();
    if spec.net {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    if spec.ipc {
        flags |= CloneFlags::CLONE_NEWIPC;
    }
    if spec.uts {
        flags |= CloneFlags::CLONE_NEWUTS;
    }
    let mut pinned = Pinned::default();
    if flags.is_empty() {
        return Ok(pinned);
    }
    nix::sched::unshare(flags).map_err(|source| NsError::Sys {
        op: "unshare of the pod's namespaces".into(),
        source,
    })?;
    let result = (|| {
        if spec.uts
            && let Some(h) = &spec.hostname
        {
            nix::unistd::sethostname(h).map_err(|source| NsError::Sys {
                op: format!("setting the hostname {h:?}"),
                source,
            })?;
        }
        for (name, value) in &spec.sysctls {
            write_sysctl(name, value)?;
        }
        for (kind, wanted) in [("net", spec.net), ("ipc", spec.ipc), ("uts", spec.uts)] {
            if !wanted {
                continue;
            }
            let target = dir.join(kind);
            pin_one(kind, &target)?;
            match kind {
                "net" => pinned.net = Some(target),
                "ipc" => pinned.ipc = Some(target),
                _ => pinned.uts = Some(target),
            }
        }
        Ok(())
    })();
    match result {
        Ok(()) => Ok(pinned),
        Err(e) => {
            for p in pinned.paths() {
                let _ = unpin(p);
            }
            Err(e)
        }
    }
}

fn write_sysctl(name: &str, value: &str) -> Result<(), NsError> {
    let path = sysctl::proc_path(name);
    let op = || format!("setting sysctl {name}={value} ({})", path.display());
    let mut f = OpenOptions::new()
        .write(true)
        .open(&path)
        .map_err(|source| NsError::Io { op: op(), source })?;
    f.write_all(value.as_bytes())
        .map_err(|source| NsError::Io { op: op(), source })
}

fn pin_one(kind: &str, target: &Path) -> Result<(), NsError> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o444)
        .open(target)
        .map_err(|source| NsError::Io {
            op: format!("creating {}", target.display()),
            source,
        })?;
    let source = format!("/proc/thread-self/ns/{kind}");
    if let Err(e) = nix::mount::mount(
        Some(source.as_str()),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    ) {
        let _ = std::fs::remove_file(target);
        return Err(NsError::Sys {
            op: format!("bind-mounting {source} on {}", target.display()),
            source: e,
        });
    }
    Ok(())
}

/// Releases a pinned namespace: unmounts and removes its file. A file that
/// is already gone, or no longer mounted, is fine.
pub fn unpin(path: &Path) -> Result<(), NsError> {
    match nix::mount::umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
        Err(source) => {
            return Err(NsError::Sys {
                op: format!("unmounting {}", path.display()),
                source,
            });
        }
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(NsError::Io {
            op: format!("removing {}", path.display()),
            source,
        }),
    }
}

/// Whether `path` is a pinned namespace (an nsfs mount) right now.
pub fn is_pinned(path: &Path) -> bool {
    // nsfs files report the namespace's inode on the nsfs device; a plain
    // file left by a crash between create and mount is on the state dir's.
    const NSFS_MAGIC: i64 = 0x6e73_6673;
    nix::sys::statfs::statfs(path)
        .map(|s| s.filesystem_type().0 == NSFS_MAGIC)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(net: bool, ipc: bool, uts: bool) -> NsSpec {
        NsSpec {
            net,
            ipc,
            uts,
            ..Default::default()
        }
    }

    #[test]
    fn the_plan_names_one_file_per_own_namespace() {
        let p = Pinned::planned(Path::new("/s/ns"), &spec(true, false, true));
        assert_eq!(p.net.as_deref(), Some(Path::new("/s/ns/net")));
        assert_eq!(p.ipc, None);
        assert_eq!(p.uts.as_deref(), Some(Path::new("/s/ns/uts")));
        assert_eq!(
            Pinned::planned(Path::new("/s/ns"), &spec(false, false, false)),
            Pinned::default()
        );
    }

    /// Needs root (CI runs as root): unshares on a thread and bind-mounts.
    #[test]
    fn pin_makes_what_was_planned_and_unpin_removes_it() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let ns = dir.path().join("ns");
        let s = spec(true, true, false);
        let pinned = pin(&ns, &s).unwrap();
        assert_eq!(pinned, Pinned::planned(&ns, &s));
        for p in pinned.paths() {
            assert!(is_pinned(p), "{} is not an nsfs mount", p.display());
        }
        for p in pinned.paths() {
            unpin(p).unwrap();
            assert!(!p.exists(), "{} left behind", p.display());
        }
    }
}
