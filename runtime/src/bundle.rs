//! OCI bundles: config.json read and checked before anything is created.
//!
//! Every check here runs before a state dir, cgroup or process exists, so a bad
//! config leaves nothing behind. Errors name the JSON field at fault.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, Spec};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum BundleError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: field {field}: {message}")]
    Parse {
        path: PathBuf,
        field: String,
        message: String,
    },
    #[error("config.json: {field}: {message}")]
    Invalid { field: String, message: String },
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> BundleError {
    BundleError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// A bundle whose config passed validation, with the rootfs made absolute.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub dir: PathBuf,
    pub rootfs: PathBuf,
    pub spec: Spec,
}

impl Bundle {
    pub fn load(dir: &Path) -> Result<Bundle, BundleError> {
        let dir = std::path::absolute(dir).map_err(|source| BundleError::Read {
            path: dir.to_owned(),
            source,
        })?;
        let path = dir.join("config.json");
        let text = std::fs::read(&path).map_err(|source| BundleError::Read {
            path: path.clone(),
            source,
        })?;
        let spec = parse_spec(&path, &text)?;
        let root = spec
            .root()
            .as_ref()
            .ok_or_else(|| invalid("root", "missing; a bundle needs root.path"))?;
        let rootfs = dir.join(root.path());
        let meta = std::fs::metadata(&rootfs)
            .map_err(|e| invalid("root.path", format!("{}: {e}", rootfs.display())))?;
        if !meta.is_dir() {
            return Err(invalid(
                "root.path",
                format!("{} is not a directory", rootfs.display()),
            ));
        }
        validate(&spec)?;
        Ok(Bundle { dir, rootfs, spec })
    }
}

/// Parses config.json, naming the field path of the first error.
pub fn parse_spec(path: &Path, text: &[u8]) -> Result<Spec, BundleError> {
    let de = &mut serde_json::Deserializer::from_slice(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let field = e.path().to_string();
        BundleError::Parse {
            path: path.to_owned(),
            field: if field == "." {
                "(top level)".into()
            } else {
                field
            },
            message: e.into_inner().to_string(),
        }
    })
}

pub fn namespace_name(t: LinuxNamespaceType) -> &'static str {
    match t {
        LinuxNamespaceType::Mount => "mount",
        LinuxNamespaceType::Cgroup => "cgroup",
        LinuxNamespaceType::Uts => "uts",
        LinuxNamespaceType::Ipc => "ipc",
        LinuxNamespaceType::User => "user",
        LinuxNamespaceType::Pid => "pid",
        LinuxNamespaceType::Network => "network",
        LinuxNamespaceType::Time => "time",
    }
}

/// Checks that do not depend on the host, in the order a reader meets the fields.
pub fn validate(spec: &Spec) -> Result<(), BundleError> {
    if !spec.version().starts_with("1.") {
        return Err(invalid(
            "ociVersion",
            format!("{:?} is not a 1.x runtime spec version", spec.version()),
        ));
    }
    if let Some(process) = spec.process() {
        validate_process(process, "process")?;
    }
    let linux = spec
        .linux()
        .as_ref()
        .ok_or_else(|| invalid("linux", "missing; berth runs Linux containers only"))?;
    let mut new_ns = HashSet::new();
    let mut seen = HashSet::new();
    for (i, ns) in linux.namespaces().iter().flatten().enumerate() {
        let field = format!("linux.namespaces[{i}]");
        if !seen.insert(ns.typ()) {
            return Err(invalid(
                field,
                format!("namespace {:?} is listed twice", namespace_name(ns.typ())),
            ));
        }
        if ns.typ() == LinuxNamespaceType::Time {
            return Err(invalid(field, "time namespaces are not supported yet"));
        }
        match ns.path() {
            Some(p) => {
                if !p.is_absolute() {
                    return Err(invalid(
                        format!("{field}.path"),
                        format!("{} is not absolute", p.display()),
                    ));
                }
                if let Err(e) = std::fs::metadata(p) {
                    return Err(invalid(
                        format!("{field}.path"),
                        format!("{}: {e}", p.display()),
                    ));
                }
            }
            None => {
                new_ns.insert(ns.typ());
            }
        }
    }
    // Fields berth does not implement yet are refused rather than silently ignored.
    let unsupported = [
        ("linux.personality", linux.personality().is_some()),
        ("linux.intelRdt", linux.intel_rdt().is_some()),
        ("linux.timeOffsets", linux.time_offsets().is_some()),
        ("linux.memoryPolicy", linux.memory_policy().is_some()),
        (
            "linux.netDevices",
            linux.net_devices().as_ref().is_some_and(|d| !d.is_empty()),
        ),
    ];
    for (field, present) in unsupported {
        if present {
            return Err(invalid(field, "not supported by berth yet"));
        }
    }
    if !seen.contains(&LinuxNamespaceType::Mount) {
        return Err(invalid(
            "linux.namespaces",
            "a mount namespace is required (berth never mounts in the host's namespace)",
        ));
    }
    let has_maps = linux.uid_mappings().as_ref().is_some_and(|m| !m.is_empty())
        || linux.gid_mappings().as_ref().is_some_and(|m| !m.is_empty());
    if new_ns.contains(&LinuxNamespaceType::User) {
        if linux.uid_mappings().as_ref().is_none_or(|m| m.is_empty()) {
            return Err(invalid(
                "linux.uidMappings",
                "required when a new user namespace is created",
            ));
        }
        if linux.gid_mappings().as_ref().is_none_or(|m| m.is_empty()) {
            return Err(invalid(
                "linux.gidMappings",
                "required when a new user namespace is created",
            ));
        }
    } else if has_maps && !seen.contains(&LinuxNamespaceType::User) {
        return Err(invalid(
            "linux.uidMappings",
            "given, but the container has no user namespace",
        ));
    }
    if spec.hostname().as_ref().is_some_and(|h| !h.is_empty())
        && !new_ns.contains(&LinuxNamespaceType::Uts)
    {
        return Err(invalid(
            "hostname",
            "set, but the container does not get a new uts namespace",
        ));
    }
    for (i, m) in spec.mounts().iter().flatten().enumerate() {
        if !m.destination().is_absolute() {
            return Err(invalid(
                format!("mounts[{i}].destination"),
                format!("{} is not absolute", m.destination().display()),
            ));
        }
        let is_bind = m
            .options()
            .iter()
            .flatten()
            .any(|o| o == "bind" || o == "rbind");
        if m.typ().as_deref().is_none_or(str::is_empty) && !is_bind {
            return Err(invalid(
                format!("mounts[{i}].type"),
                "missing (and the options hold no \"bind\")",
            ));
        }
        if m.uid_mappings().is_some() || m.gid_mappings().is_some() {
            return Err(invalid(
                format!("mounts[{i}].uidMappings"),
                "id-mapped mounts are not supported by berth yet",
            ));
        }
        if is_bind && m.source().is_none() {
            return Err(invalid(
                format!("mounts[{i}].source"),
                "a bind mount needs a source",
            ));
        }
    }
    for (name, _) in linux.sysctl().iter().flatten() {
        validate_sysctl(name, &new_ns)?;
    }
    for (i, d) in linux.devices().iter().flatten().enumerate() {
        if !d.path().is_absolute() {
            return Err(invalid(
                format!("linux.devices[{i}].path"),
                format!("{} is not absolute", d.path().display()),
            ));
        }
    }
    if let Some(hooks) = spec.hooks() {
        let lists = [
            ("prestart", hooks.prestart()),
            ("createRuntime", hooks.create_runtime()),
            ("createContainer", hooks.create_container()),
            ("startContainer", hooks.start_container()),
            ("poststart", hooks.poststart()),
            ("poststop", hooks.poststop()),
        ];
        for (name, list) in lists {
            for (i, h) in list.iter().flatten().enumerate() {
                if !h.path().is_absolute() {
                    return Err(invalid(
                        format!("hooks.{name}[{i}].path"),
                        format!("{} is not absolute", h.path().display()),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Checks a process, either the container's or one given to exec.
pub fn validate_process(
    process: &oci_spec::runtime::Process,
    field: &str,
) -> Result<(), BundleError> {
    if process.args().as_ref().is_none_or(|a| a.is_empty()) {
        return Err(invalid(format!("{field}.args"), "empty; nothing to run"));
    }
    if !process.cwd().is_absolute() {
        return Err(invalid(
            format!("{field}.cwd"),
            format!("{:?} is not absolute", process.cwd()),
        ));
    }
    for (i, e) in process.env().iter().flatten().enumerate() {
        if !e.contains('=') || e.starts_with('=') {
            return Err(invalid(
                format!("{field}.env[{i}]"),
                format!("{e:?} is not NAME=value"),
            ));
        }
        if e.contains('\0') {
            return Err(invalid(format!("{field}.env[{i}]"), "contains a NUL byte"));
        }
    }
    let mut seen = HashSet::new();
    for (i, r) in process.rlimits().iter().flatten().enumerate() {
        if !seen.insert(format!("{:?}", r.typ())) {
            return Err(invalid(
                format!("{field}.rlimits[{i}]"),
                format!("{:?} is given twice", r.typ()),
            ));
        }
        if r.soft() > r.hard() {
            return Err(invalid(
                format!("{field}.rlimits[{i}]"),
                format!("soft limit {} is above hard limit {}", r.soft(), r.hard()),
            ));
        }
    }
    let unsupported = [
        ("ioPriority", process.io_priority().is_some()),
        ("scheduler", process.scheduler().is_some()),
        ("execCPUAffinity", process.exec_cpu_affinity().is_some()),
    ];
    for (name, present) in unsupported {
        if present {
            return Err(invalid(
                format!("{field}.{name}"),
                "not supported by berth yet",
            ));
        }
    }
    if let Some(adj) = process.oom_score_adj()
        && !(-1000..=1000).contains(&adj)
    {
        return Err(invalid(
            format!("{field}.oomScoreAdj"),
            format!("{adj} is outside -1000..=1000"),
        ));
    }
    Ok(())
}

/// Sysctls are namespaced only for the namespaces the container owns; writing
/// one the container shares with the host would change the host.
fn validate_sysctl(name: &str, new_ns: &HashSet<LinuxNamespaceType>) -> Result<(), BundleError> {
    let field = format!("linux.sysctl[{name:?}]");
    if name.is_empty() || name.contains("..") || name.contains('\0') || name.starts_with('/') {
        return Err(invalid(field, "not a sysctl name"));
    }
    let ipc = [
        "kernel.msgmax",
        "kernel.msgmnb",
        "kernel.msgmni",
        "kernel.sem",
        "kernel.shmall",
        "kernel.shmmax",
        "kernel.shmmni",
        "kernel.shm_rmid_forced",
    ];
    if ipc.contains(&name) || name.starts_with("fs.mqueue.") {
        if new_ns.contains(&LinuxNamespaceType::Ipc) {
            return Ok(());
        }
        return Err(invalid(field, "needs a new ipc namespace"));
    }
    if name.starts_with("net.") {
        if new_ns.contains(&LinuxNamespaceType::Network) {
            return Ok(());
        }
        return Err(invalid(field, "needs a new network namespace"));
    }
    if name == "kernel.hostname" || name == "kernel.domainname" {
        return Err(invalid(
            field,
            "set hostname/domainname in the spec instead",
        ));
    }
    Err(invalid(
        field,
        "not a namespaced sysctl; it would change the host",
    ))
}

/// Parses a process.json (`exec --process`), naming the field path of an error.
pub fn parse_process(path: &Path, text: &[u8]) -> Result<oci_spec::runtime::Process, BundleError> {
    let de = &mut serde_json::Deserializer::from_slice(text);
    serde_path_to_error::deserialize(de).map_err(|e| BundleError::Parse {
        path: path.to_owned(),
        field: e.path().to_string(),
        message: e.into_inner().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> serde_json::Value {
        serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs"},
            "process": {"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
            "linux": {"namespaces": [{"type": "mount"}, {"type": "pid"}, {"type": "uts"}]},
            "hostname": "x"
        })
    }

    fn check(v: serde_json::Value) -> Result<(), BundleError> {
        let spec = parse_spec(Path::new("config.json"), v.to_string().as_bytes())?;
        validate(&spec)
    }

    #[test]
    fn base_is_valid() {
        check(base()).unwrap();
    }

    #[test]
    fn parse_error_names_field() {
        let mut v = base();
        v["process"]["capabilities"] = serde_json::json!({"bounding": ["CAP_NOPE"]});
        let e = check(v).unwrap_err().to_string();
        assert!(e.contains("process.capabilities.bounding"), "{e}");
    }

    #[test]
    fn rejects_bad_fields() {
        type Edit = fn(&mut serde_json::Value);
        let cases: Vec<(Edit, &str)> = vec![
            (
                |v| v["process"]["args"] = serde_json::json!([]),
                "process.args",
            ),
            (|v| v["process"]["cwd"] = "rel".into(), "process.cwd"),
            (|v| v["ociVersion"] = "2.0".into(), "ociVersion"),
            (
                |v| v["process"]["env"] = serde_json::json!(["NOEQUALS"]),
                "process.env[0]",
            ),
            (
                |v| v["linux"]["namespaces"] = serde_json::json!([{"type": "pid"}]),
                "mount namespace is required",
            ),
            (
                |v| {
                    v["linux"]["namespaces"] =
                        serde_json::json!([{"type": "mount"}, {"type": "mount"}])
                },
                "linux.namespaces[1]",
            ),
            (
                |v| v["linux"]["namespaces"] = serde_json::json!([{"type": "mount"}, {"type": "network", "path": "/nonexistent/ns"}]),
                "linux.namespaces[1].path",
            ),
            (
                |v| v["linux"]["namespaces"][2] = serde_json::json!({"type": "user"}),
                "linux.uidMappings",
            ),
            (
                |v| v["linux"]["sysctl"] = serde_json::json!({"net.ipv4.ip_forward": "1"}),
                "needs a new network namespace",
            ),
            (
                |v| v["linux"]["sysctl"] = serde_json::json!({"vm.swappiness": "1"}),
                "would change the host",
            ),
            (
                |v| v["mounts"] = serde_json::json!([{"destination": "/x", "options": ["rw"]}]),
                "mounts[0].type",
            ),
            (
                |v| {
                    v["process"]["rlimits"] =
                        serde_json::json!([{"type": "RLIMIT_NOFILE", "soft": 10, "hard": 5}])
                },
                "process.rlimits[0]",
            ),
            (
                |v| v["hooks"] = serde_json::json!({"prestart": [{"path": "rel"}]}),
                "hooks.prestart[0].path",
            ),
            (
                |v| v["linux"]["personality"] = serde_json::json!({"domain": "LINUX32"}),
                "linux.personality",
            ),
            (
                |v| v["process"]["scheduler"] = serde_json::json!({"policy": "SCHED_BATCH"}),
                "process.scheduler",
            ),
        ];
        for (edit, expect) in cases {
            let mut v = base();
            edit(&mut v);
            let e = check(v).unwrap_err().to_string();
            assert!(e.contains(expect), "expected {expect:?} in {e:?}");
        }
    }
}
