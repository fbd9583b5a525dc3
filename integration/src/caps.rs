//! Linux capabilities: names, bit masks, /proc/PID/status parsing, and what
//! the kernel leaves after execve for a spec's capability sets.

use anyhow::{Context, Result, anyhow};

use crate::spec::CapSpec;

/// Capability names by bit number (linux/capability.h).
pub const CAP_NAMES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// The bit of a capability name ("CAP_KILL" or "KILL").
pub fn cap_bit(name: &str) -> Option<u32> {
    let full = if name.starts_with("CAP_") {
        name.to_string()
    } else {
        format!("CAP_{name}")
    };
    CAP_NAMES.iter().position(|n| *n == full).map(|i| i as u32)
}

/// The mask of a list of names; unknown names are an error.
pub fn mask<S: AsRef<str>>(names: &[S]) -> Result<u64> {
    names.iter().try_fold(0u64, |m, n| {
        let b = cap_bit(n.as_ref()).ok_or_else(|| anyhow!("unknown capability {}", n.as_ref()))?;
        Ok(m | (1u64 << b))
    })
}

/// The names of the bits set in a mask (unknown bits as "bit N").
pub fn names(mask: u64) -> Vec<String> {
    (0..64)
        .filter(|b| mask & (1u64 << b) != 0)
        .map(|b| {
            CAP_NAMES
                .get(b)
                .map(|n| n.to_string())
                .unwrap_or_else(|| format!("bit {b}"))
        })
        .collect()
}

/// The five capability sets of a process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CapSets {
    pub inheritable: u64,
    pub permitted: u64,
    pub effective: u64,
    pub bounding: u64,
    pub ambient: u64,
}

impl CapSets {
    /// Parses CapInh/CapPrm/CapEff/CapBnd/CapAmb from /proc/PID/status text.
    pub fn parse_status(text: &str) -> Result<CapSets> {
        let get = |key: &str| -> Result<u64> {
            let v = text
                .lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
                .ok_or_else(|| anyhow!("{key} missing from status:\n{text}"))?;
            u64::from_str_radix(v.trim(), 16).with_context(|| format!("{key}: {v:?}"))
        };
        Ok(CapSets {
            inheritable: get("CapInh")?,
            permitted: get("CapPrm")?,
            effective: get("CapEff")?,
            bounding: get("CapBnd")?,
            ambient: get("CapAmb")?,
        })
    }

    /// Keeps only bits this kernel knows (CapBnd of this process tells).
    pub fn masked(self, known: u64) -> CapSets {
        CapSets {
            inheritable: self.inheritable & known,
            permitted: self.permitted & known,
            effective: self.effective & known,
            bounding: self.bounding & known,
            ambient: self.ambient & known,
        }
    }

    /// A readable listing for failure messages.
    pub fn describe(&self) -> String {
        format!(
            "inh={:?}\nprm={:?}\neff={:?}\nbnd={:?}\namb={:?}",
            names(self.inheritable),
            names(self.permitted),
            names(self.effective),
            names(self.bounding),
            names(self.ambient)
        )
    }
}

/// The sets a process has after the runtime applied `spec` (bounding,
/// inheritable, permitted, effective, then ambient raised where allowed)
/// and exec'd a binary without file capabilities, as user `uid`, following
/// the kernel's execve rules (security/commoncap.c):
///
/// - ambient keeps only the spec's ambient caps also in permitted and
///   inheritable (the kernel refuses to raise others);
/// - uid 0: P' = bounding | inheritable, cut to the previous permitted set
///   when no_new_privs is set and P' would grow; P' |= ambient; E' = P';
/// - other uids: P' = E' = ambient.
pub fn expected_after_exec(spec: &CapSpec, uid: u32, no_new_privs: bool) -> Result<CapSets> {
    let b = mask(&spec.bounding)?;
    let i = mask(&spec.inheritable)?;
    let p = mask(&spec.permitted)?;
    let a = mask(&spec.ambient)? & p & i;
    let (prm, eff) = if uid == 0 {
        let mut prm = b | i;
        if no_new_privs && prm & !p != 0 {
            prm &= p;
        }
        prm |= a;
        (prm, prm)
    } else {
        (a, a)
    };
    Ok(CapSets {
        inheritable: i,
        permitted: prm,
        effective: eff,
        bounding: b,
        ambient: a,
    })
}
