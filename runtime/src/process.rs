//! The user process's credentials and limits: capabilities, uid/gid, rlimits,
//! oom_score_adj, and the executable lookup. Runs in the container init (or an
//! exec'd process) after the filesystem is in place.

use std::collections::HashSet;
use std::ffi::CString;
use std::path::{Path, PathBuf};

use caps::{CapSet, Capability as Cap};
use nix::errno::Errno;
use oci_spec::runtime::{Capabilities, LinuxCapabilities, PosixRlimit, PosixRlimitType, User};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ProcessError {
    #[error("capabilities: {op}: {message}")]
    Capabilities { op: &'static str, message: String },
    #[error("{op}({id}): {source}")]
    Credentials {
        op: &'static str,
        id: String,
        source: Errno,
    },
    #[error("setrlimit {name}: {source}")]
    Rlimit { name: String, source: Errno },
    #[error("setting no_new_privileges: {0}")]
    NoNewPrivs(Errno),
    #[error("chdir to cwd {path}: {source}")]
    Cwd { path: PathBuf, source: Errno },
    #[error("exec: {name:?}: {message}")]
    Executable { name: String, message: String },
    #[error("{0:?} holds a NUL byte")]
    Nul(String),
}

type Result<T> = std::result::Result<T, ProcessError>;

fn to_caps(
    set: Option<&Capabilities>,
    supported: &HashSet<Cap>,
    unknown: &mut Vec<String>,
) -> HashSet<Cap> {
    let mut out = HashSet::new();
    for c in set.into_iter().flatten() {
        let name = format!("CAP_{c}");
        match name.parse::<Cap>() {
            Ok(cap) if supported.contains(&cap) => {
                out.insert(cap);
            }
            _ => unknown.push(name),
        }
    }
    out
}

/// The five sets resolved to what this kernel knows.
#[derive(Debug, Clone, Default)]
pub struct CapSets {
    pub bounding: HashSet<Cap>,
    pub effective: HashSet<Cap>,
    pub permitted: HashSet<Cap>,
    pub inheritable: HashSet<Cap>,
    pub ambient: HashSet<Cap>,
    /// Names this kernel does not have; reported, not fatal (as runc does).
    pub unknown: Vec<String>,
}

impl CapSets {
    pub fn from_spec(c: Option<&LinuxCapabilities>) -> CapSets {
        let mut unknown = Vec::new();
        let Some(c) = c else {
            return CapSets::default();
        };
        // Probing the kernel costs a prctl per capability: do it once.
        let sup = caps::runtime::thread_all_supported();
        let s = CapSets {
            bounding: to_caps(c.bounding().as_ref(), &sup, &mut unknown),
            effective: to_caps(c.effective().as_ref(), &sup, &mut unknown),
            permitted: to_caps(c.permitted().as_ref(), &sup, &mut unknown),
            inheritable: to_caps(c.inheritable().as_ref(), &sup, &mut unknown),
            ambient: to_caps(c.ambient().as_ref(), &sup, &mut unknown),
            unknown: Vec::new(),
        };
        unknown.sort();
        unknown.dedup();
        CapSets { unknown, ..s }
    }

    /// Names of the bounding set, for the default seccomp profile.
    pub fn bounding_names(&self) -> Vec<String> {
        self.bounding.iter().map(|c| c.to_string()).collect()
    }
}

fn cap_err(op: &'static str) -> impl Fn(caps::errors::CapsError) -> ProcessError {
    move |e| ProcessError::Capabilities {
        op,
        message: e.to_string(),
    }
}

/// Drops what is not in the bounding set. Must run while we still hold CAP_SETPCAP.
pub fn apply_bounding(sets: &CapSets) -> Result<()> {
    for cap in caps::runtime::thread_all_supported() {
        if !sets.bounding.contains(&cap) {
            caps::drop(None, CapSet::Bounding, cap)
                .map_err(cap_err("dropping from bounding set"))?;
        }
    }
    Ok(())
}

/// Sets effective, permitted, inheritable and ambient, after the uid switch.
pub fn apply_caps(sets: &CapSets) -> Result<()> {
    // Each capset must leave effective within permitted: inheritable first (while
    // CAP_SETPCAP is still effective), then lower effective, then permitted.
    caps::set(None, CapSet::Inheritable, &sets.inheritable)
        .map_err(cap_err("setting inheritable"))?;
    caps::set(None, CapSet::Effective, &sets.effective).map_err(cap_err("setting effective"))?;
    caps::set(None, CapSet::Permitted, &sets.permitted)
        .map_err(cap_err("setting permitted (is effective a subset of it?)"))?;
    caps::clear(None, CapSet::Ambient).map_err(cap_err("clearing ambient"))?;
    for cap in &sets.ambient {
        // Raising an ambient cap not in permitted and inheritable is refused by the
        // kernel; runc ignores those, so do we.
        let _ = caps::raise(None, CapSet::Ambient, *cap);
    }
    Ok(())
}

/// Switches to the spec's user, keeping capabilities across the switch so that
/// `apply_caps` can set them afterwards.
pub fn switch_user(user: &User, setgroups_allowed: bool) -> Result<()> {
    // SAFETY: prctl with PR_SET_KEEPCAPS takes an integer argument and touches no memory.
    let r = unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) };
    Errno::result(r).map_err(|source| ProcessError::Credentials {
        op: "prctl(PR_SET_KEEPCAPS)",
        id: "1".into(),
        source,
    })?;
    if setgroups_allowed {
        let mut groups: Vec<nix::unistd::Gid> = user
            .additional_gids()
            .iter()
            .flatten()
            .map(|g| nix::unistd::Gid::from_raw(*g))
            .collect();
        groups.dedup();
        nix::unistd::setgroups(&groups).map_err(|source| ProcessError::Credentials {
            op: "setgroups",
            id: format!("{:?}", user.additional_gids()),
            source,
        })?;
    }
    let gid = nix::unistd::Gid::from_raw(user.gid());
    nix::unistd::setresgid(gid, gid, gid).map_err(|source| ProcessError::Credentials {
        op: "setresgid",
        id: user.gid().to_string(),
        source,
    })?;
    let uid = nix::unistd::Uid::from_raw(user.uid());
    nix::unistd::setresuid(uid, uid, uid).map_err(|source| ProcessError::Credentials {
        op: "setresuid",
        id: user.uid().to_string(),
        source,
    })?;
    // SAFETY: as above.
    let r = unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0) };
    Errno::result(r).map_err(|source| ProcessError::Credentials {
        op: "prctl(PR_SET_KEEPCAPS)",
        id: "0".into(),
        source,
    })?;
    // The init ran with umask 0 so that device nodes and mount points got the
    // exact modes asked for; the process gets the spec's umask or the usual 022.
    let mask = user.umask().unwrap_or(0o022);
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(mask & 0o777));
    Ok(())
}

pub fn set_no_new_privs() -> Result<()> {
    // SAFETY: prctl(PR_SET_NO_NEW_PRIVS, 1) takes integers only.
    let r = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    Errno::result(r).map(drop).map_err(ProcessError::NoNewPrivs)
}

fn rlimit_resource(t: PosixRlimitType) -> libc::__rlimit_resource_t {
    match t {
        PosixRlimitType::RlimitCpu => libc::RLIMIT_CPU,
        PosixRlimitType::RlimitFsize => libc::RLIMIT_FSIZE,
        PosixRlimitType::RlimitData => libc::RLIMIT_DATA,
        PosixRlimitType::RlimitStack => libc::RLIMIT_STACK,
        PosixRlimitType::RlimitCore => libc::RLIMIT_CORE,
        PosixRlimitType::RlimitRss => libc::RLIMIT_RSS,
        PosixRlimitType::RlimitNproc => libc::RLIMIT_NPROC,
        PosixRlimitType::RlimitNofile => libc::RLIMIT_NOFILE,
        PosixRlimitType::RlimitMemlock => libc::RLIMIT_MEMLOCK,
        PosixRlimitType::RlimitAs => libc::RLIMIT_AS,
        PosixRlimitType::RlimitLocks => libc::RLIMIT_LOCKS,
        PosixRlimitType::RlimitSigpending => libc::RLIMIT_SIGPENDING,
        PosixRlimitType::RlimitMsgqueue => libc::RLIMIT_MSGQUEUE,
        PosixRlimitType::RlimitNice => libc::RLIMIT_NICE,
        PosixRlimitType::RlimitRtprio => libc::RLIMIT_RTPRIO,
        PosixRlimitType::RlimitRttime => libc::RLIMIT_RTTIME,
    }
}

/// Applies rlimits. Raising a hard limit needs CAP_SYS_RESOURCE; without it the
/// limit is clamped to the current hard limit and a warning is returned, so a pod
/// is never failed for it.
pub fn apply_rlimits(limits: &[PosixRlimit]) -> Result<Vec<String>> {
    let mut warnings = Vec::new();
    for l in limits {
        let res = rlimit_resource(l.typ());
        let mut want = libc::rlimit {
            rlim_cur: l.soft(),
            rlim_max: l.hard(),
        };
        // SAFETY: `want` is a valid rlimit struct that outlives the call.
        let r = unsafe { libc::setrlimit(res, &want) };
        if r == 0 {
            continue;
        }
        let err = Errno::last();
        if err != Errno::EPERM {
            return Err(ProcessError::Rlimit {
                name: format!("{:?}", l.typ()),
                source: err,
            });
        }
        let mut cur = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: `cur` is a valid out-pointer for the duration of the call.
        unsafe { libc::getrlimit(res, &mut cur) };
        want.rlim_max = want.rlim_max.min(cur.rlim_max);
        want.rlim_cur = want.rlim_cur.min(want.rlim_max);
        // SAFETY: as above.
        let r = unsafe { libc::setrlimit(res, &want) };
        Errno::result(r).map_err(|source| ProcessError::Rlimit {
            name: format!("{:?}", l.typ()),
            source,
        })?;
        warnings.push(format!(
            "{:?}: hard limit {} clamped to {} (no CAP_SYS_RESOURCE)",
            l.typ(),
            l.hard(),
            want.rlim_max
        ));
    }
    Ok(warnings)
}

/// Writes oom_score_adj; a value below ours needs CAP_SYS_RESOURCE, so without it
/// we keep our own value and report the clamp (containerd's restrict_oom_score_adj).
pub fn set_oom_score_adj(value: i32) -> Option<String> {
    let path = "/proc/self/oom_score_adj";
    match std::fs::write(path, value.to_string()) {
        Ok(()) => None,
        Err(e) => {
            let current = std::fs::read_to_string(path)
                .ok()
                .and_then(|s| s.trim().parse::<i32>().ok())
                .unwrap_or(0);
            Some(format!(
                "oom_score_adj {value} refused ({e}); clamped to {current}"
            ))
        }
    }
}

/// Finds the executable the way execvp would, using the container's PATH, so a
/// missing binary is reported by `create` rather than lost after `start`.
pub fn find_executable(name: &str, env: &[String]) -> Result<PathBuf> {
    let err = |message: &str| ProcessError::Executable {
        name: name.to_owned(),
        message: message.to_owned(),
    };
    if name.contains('/') {
        let p = PathBuf::from(name);
        return match nix::unistd::access(&p, nix::unistd::AccessFlags::X_OK) {
            Ok(()) if !p.is_dir() => Ok(p),
            Ok(()) => Err(err("is a directory")),
            Err(e) => Err(err(&e.desc().to_lowercase())),
        };
    }
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    for dir in path.split(':') {
        let dir = if dir.is_empty() { "." } else { dir };
        let p = Path::new(dir).join(name);
        if p.is_file() && nix::unistd::access(&p, nix::unistd::AccessFlags::X_OK).is_ok() {
            return Ok(p);
        }
    }
    Err(err("executable file not found in $PATH"))
}

pub fn cstrings(list: &[String]) -> Result<Vec<CString>> {
    list.iter()
        .map(|s| CString::new(s.as_bytes()).map_err(|_| ProcessError::Nul(s.clone())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_from_spec() {
        let c: LinuxCapabilities = serde_json::from_value(serde_json::json!({
            "bounding": ["CAP_KILL", "CAP_CHOWN"],
            "effective": ["CAP_KILL"],
        }))
        .unwrap();
        let s = CapSets::from_spec(Some(&c));
        assert_eq!(s.bounding.len(), 2);
        assert!(s.effective.contains(&Cap::CAP_KILL));
        assert!(s.ambient.is_empty());
        assert!(s.unknown.is_empty());
    }

    #[test]
    fn executable_lookup() {
        let env = vec!["PATH=/nonexistent:/bin:/usr/bin".to_string()];
        assert!(find_executable("sh", &env).unwrap().ends_with("sh"));
        let e = find_executable("no-such-binary-x", &env)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not found in $PATH"), "{e}");
        assert!(find_executable("/etc", &env).is_err());
    }
}
