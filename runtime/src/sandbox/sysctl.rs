//! Which sysctls a pod may set, and where they live under /proc/sys.
//!
//! Only namespaced sysctls are accepted, and only when the pod has the
//! namespace of its own: `net.*` needs the pod's network namespace, the
//! SysV IPC and POSIX message queue ones need its IPC namespace. Anything
//! else would change the node for every pod, which a pod spec must not do.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SysctlError {
    #[error("sysctl {0:?}: the name is empty or malformed")]
    Malformed(String),
    #[error("sysctl {name:?} is not namespaced: it would change the whole node")]
    NotNamespaced { name: String },
    #[error(
        "sysctl {name:?} needs the pod's own {namespace} namespace, but the pod uses the host's"
    )]
    HostNamespace {
        name: String,
        namespace: &'static str,
    },
}

/// The namespace a sysctl belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Net,
    Ipc,
}

const IPC_SYSCTLS: &[&str] = &[
    "kernel.msgmax",
    "kernel.msgmnb",
    "kernel.msgmni",
    "kernel.sem",
    "kernel.shmall",
    "kernel.shmmax",
    "kernel.shmmni",
    "kernel.shm_rmid_forced",
];

/// The dotted form of a name: the kubelet accepts both `net.ipv4.ip_forward`
/// and `net/ipv4/ip_forward`. In the slash form a dot is part of a component
/// (an interface name such as `eth0.100`); in the dotted form that dot is
/// written `/`, as sysctl(8) does.
fn normalize(name: &str) -> String {
    if name.contains('/') {
        name.replace('.', "\u{0}")
            .replace('/', ".")
            .replace('\u{0}', "/")
    } else {
        name.to_string()
    }
}

/// The scope of `name`, if it is a sysctl a pod may set.
pub fn scope(name: &str) -> Result<Scope, SysctlError> {
    let dotted = normalize(name);
    if dotted.is_empty()
        || dotted.starts_with('.')
        || dotted.ends_with('.')
        || dotted.contains("..")
        || dotted.contains('\0')
    {
        return Err(SysctlError::Malformed(name.to_string()));
    }
    if dotted.starts_with("net.") {
        return Ok(Scope::Net);
    }
    if IPC_SYSCTLS.contains(&dotted.as_str()) || dotted.starts_with("fs.mqueue.") {
        return Ok(Scope::Ipc);
    }
    Err(SysctlError::NotNamespaced {
        name: name.to_string(),
    })
}

/// Checks `name` for a pod with (or without) its own net and IPC namespaces.
pub fn check(name: &str, own_net: bool, own_ipc: bool) -> Result<Scope, SysctlError> {
    let s = scope(name)?;
    match s {
        Scope::Net if !own_net => Err(SysctlError::HostNamespace {
            name: name.to_string(),
            namespace: "network",
        }),
        Scope::Ipc if !own_ipc => Err(SysctlError::HostNamespace {
            name: name.to_string(),
            namespace: "IPC",
        }),
        _ => Ok(s),
    }
}

/// The file under /proc/sys that holds `name`.
pub fn proc_path(name: &str) -> PathBuf {
    let dotted = normalize(name);
    let mut p = PathBuf::from("/proc/sys");
    // In the dotted form a slash stands for a dot inside a component (as in
    // sysctl(8)), e.g. the interface `eth0.100`.
    for c in dotted.split('.') {
        p.push(c.replace('/', "."));
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_and_ipc_sysctls_are_namespaced() {
        assert_eq!(scope("net.ipv4.ip_forward"), Ok(Scope::Net));
        assert_eq!(scope("net/ipv4/conf/eth0.100/forwarding"), Ok(Scope::Net));
        assert_eq!(scope("kernel.shm_rmid_forced"), Ok(Scope::Ipc));
        assert_eq!(scope("fs.mqueue.msg_max"), Ok(Scope::Ipc));
    }

    #[test]
    fn node_wide_sysctls_are_refused_by_name() {
        let e = scope("kernel.panic").unwrap_err();
        assert!(e.to_string().contains("kernel.panic"), "{e}");
        assert!(matches!(
            scope("vm.swappiness"),
            Err(SysctlError::NotNamespaced { .. })
        ));
        assert!(matches!(scope("net..x"), Err(SysctlError::Malformed(_))));
        assert!(matches!(scope(""), Err(SysctlError::Malformed(_))));
    }

    #[test]
    fn a_host_namespace_refuses_its_sysctls() {
        assert!(check("net.ipv4.ip_forward", true, false).is_ok());
        let e = check("net.ipv4.ip_forward", false, true).unwrap_err();
        assert!(e.to_string().contains("network"), "{e}");
        assert!(check("kernel.sem", true, false).is_err());
    }

    #[test]
    fn the_slash_form_keeps_dots_inside_components() {
        assert_eq!(
            proc_path("net/ipv4/conf/eth0.100/forwarding"),
            PathBuf::from("/proc/sys/net/ipv4/conf/eth0.100/forwarding")
        );
        assert_eq!(
            proc_path("net.ipv4.ip_forward"),
            PathBuf::from("/proc/sys/net/ipv4/ip_forward")
        );
    }
}
