//! The OCI runtime spec of a CRI container: the image's config merged with
//! the CreateContainer request and its pod, as containerd's CRI plugin and
//! CRI-O build it.
//!
//! Pure: every input (the image's `/etc/passwd`, device nodes on the host)
//! is read by the caller, so the whole merge is unit-tested without root.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use berth_proto::v1;
use serde_json::{Value, json};

use super::user::{self, Identity, UserRequest};
use crate::image::meta::RunConfig;

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error(transparent)]
    User(#[from] user::UserError),
    #[error("seccomp profile {path}: {message}")]
    Seccomp { path: String, message: String },
}

fn invalid(field: &str, message: impl Into<String>) -> SpecError {
    SpecError::Invalid {
        field: field.to_string(),
        message: message.into(),
    }
}

/// What a container needs to know about its pod.
#[derive(Debug, Clone, Default)]
pub struct PodView {
    pub netns: Option<PathBuf>,
    pub ipc_ns: Option<PathBuf>,
    pub uts_ns: Option<PathBuf>,
    /// The pod's shared pid namespace (PID mode POD), if it has one.
    pub pid_ns: Option<PathBuf>,
    pub hostname: Option<PathBuf>,
    pub resolv_conf: Option<PathBuf>,
    pub hosts: Option<PathBuf>,
    /// The pod's /dev/shm (a tmpfs shared by its containers).
    pub shm: Option<PathBuf>,
    pub host_pid: bool,
    pub cgroup_parent: String,
    pub systemd_cgroup: bool,
}

/// A host device a CRI `devices` entry names, as the caller found it.
#[derive(Debug, Clone)]
pub struct HostDevice {
    pub container_path: String,
    pub kind: char,
    pub major: i64,
    pub minor: i64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub permissions: String,
}

/// Everything the merge reads.
pub struct SpecInput<'a> {
    pub id: &'a str,
    pub config: &'a v1::ContainerConfig,
    pub image: &'a RunConfig,
    pub rootfs: &'a Path,
    pub pod: &'a PodView,
    pub passwd: &'a str,
    pub group: &'a str,
    pub devices: Vec<HostDevice>,
    /// Every device node of the host, for privileged containers.
    pub host_devices: Vec<HostDevice>,
    /// A Localhost seccomp profile, already read.
    pub seccomp_profile: Option<(String, Vec<u8>)>,
    /// PID of the TARGET container's init for pid mode TARGET.
    pub target_pid: Option<i32>,
}

/// The capabilities containerd and CRI-O give a container by default.
pub const DEFAULT_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Paths hidden from unprivileged containers when the request names none.
pub const DEFAULT_MASKED: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

pub const DEFAULT_READONLY: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

const DEFAULT_PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Every capability this daemon may hand out (its bounding set), for
/// privileged containers and "ALL": the kernel may know more than root here
/// holds (a node without CAP_SYS_RESOURCE), and asking for those fails.
pub fn all_caps() -> Vec<String> {
    caps::read(None, caps::CapSet::Bounding)
        .unwrap_or_else(|_| caps::all())
        .into_iter()
        .map(|c| c.to_string())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect()
}

fn cap_name(raw: &str) -> String {
    let up = raw.trim().to_ascii_uppercase();
    if up.starts_with("CAP_") {
        up
    } else {
        format!("CAP_{up}")
    }
}

/// The process arguments: the request's command and args over the image's
/// entrypoint and cmd, as Docker and the kubelet define them.
pub fn argv(config: &v1::ContainerConfig, image: &RunConfig) -> Result<Vec<String>, SpecError> {
    let mut out = Vec::new();
    if !config.command.is_empty() {
        out.extend(config.command.iter().cloned());
        out.extend(config.args.iter().cloned());
    } else {
        out.extend(image.entrypoint.iter().cloned());
        if config.args.is_empty() {
            out.extend(image.cmd.iter().cloned());
        } else {
            out.extend(config.args.iter().cloned());
        }
    }
    if out.is_empty() {
        return Err(invalid(
            "config.command",
            "no command: neither the request nor the image names one",
        ));
    }
    Ok(out)
}

/// The environment: the image's, then the request's, a later key replacing
/// an earlier one in place.
pub fn env(config: &v1::ContainerConfig, image: &RunConfig) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut set = |kv: String| {
        let key = kv.split('=').next().unwrap_or("").to_string();
        match out.iter_mut().find(|e| e.split('=').next() == Some(&key)) {
            Some(e) => *e = kv,
            None => out.push(kv),
        }
    };
    for e in &image.env {
        set(e.clone());
    }
    for kv in &config.envs {
        // `value` is bytes on the wire since cri-api 1.35; it is text in practice.
        set(format!("{}={}", kv.key, String::from_utf8_lossy(&kv.value)));
    }
    if !out.iter().any(|e| e.starts_with("PATH=")) {
        out.insert(0, DEFAULT_PATH_ENV.to_string());
    }
    out
}

fn capabilities(
    sc: &v1::LinuxContainerSecurityContext,
    privileged: bool,
) -> Result<(Vec<String>, Vec<String>), SpecError> {
    if privileged {
        return Ok((all_caps(), Vec::new()));
    }
    let known = all_caps();
    let check = |c: &str| -> Result<String, SpecError> {
        let n = cap_name(c);
        if n == "CAP_ALL" || known.contains(&n) {
            Ok(n)
        } else {
            Err(invalid(
                "linux.security_context.capabilities",
                format!("unknown capability {c:?}"),
            ))
        }
    };
    let mut set: Vec<String> = DEFAULT_CAPS.iter().map(|s| s.to_string()).collect();
    let mut ambient = Vec::new();
    if let Some(c) = &sc.capabilities {
        let add: Vec<String> = c
            .add_capabilities
            .iter()
            .map(|c| check(c))
            .collect::<Result<_, _>>()?;
        let drop: Vec<String> = c
            .drop_capabilities
            .iter()
            .map(|c| check(c))
            .collect::<Result<_, _>>()?;
        // containerd's order: "ALL" in add, then "ALL" in drop, then each name.
        if add.iter().any(|c| c == "CAP_ALL") {
            set = known.clone();
        }
        if drop.iter().any(|c| c == "CAP_ALL") {
            set.clear();
        }
        for a in add.iter().filter(|c| *c != "CAP_ALL") {
            if !set.contains(a) {
                set.push(a.clone());
            }
        }
        set.retain(|c| !drop.contains(c));
        for a in &c.add_ambient_capabilities {
            let n = check(a)?;
            if !set.contains(&n) {
                set.push(n.clone());
            }
            ambient.push(n);
        }
    }
    set.sort();
    Ok((set, ambient))
}

fn propagation(p: i32) -> (&'static str, Option<&'static str>) {
    match v1::MountPropagation::try_from(p) {
        Ok(v1::MountPropagation::PropagationBidirectional) => ("rshared", Some("rshared")),
        Ok(v1::MountPropagation::PropagationHostToContainer) => ("rslave", Some("rslave")),
        _ => ("rprivate", None),
    }
}

fn ns_mode(
    o: Option<&v1::NamespaceOption>,
    f: impl Fn(&v1::NamespaceOption) -> i32,
) -> v1::NamespaceMode {
    o.map(|o| v1::NamespaceMode::try_from(f(o)).unwrap_or(v1::NamespaceMode::Pod))
        .unwrap_or(v1::NamespaceMode::Pod)
}

/// The cgroupsPath of the container under its pod's cgroup parent.
pub fn cgroups_path(pod: &PodView, id: &str) -> String {
    if pod.systemd_cgroup {
        let slice = if pod.cgroup_parent.is_empty() {
            "system.slice"
        } else {
            pod.cgroup_parent.as_str()
        };
        format!("{slice}:cri-berth:{id}")
    } else if pod.cgroup_parent.is_empty() {
        format!("/{id}")
    } else {
        format!("/{}/{id}", pod.cgroup_parent.trim_matches('/'))
    }
}

/// Linux resources from the CRI's.
pub fn resources(r: &v1::LinuxContainerResources) -> Value {
    let mut out = serde_json::Map::new();
    let mut cpu = serde_json::Map::new();
    if r.cpu_shares > 0 {
        cpu.insert("shares".into(), json!(r.cpu_shares));
    }
    if r.cpu_quota != 0 {
        cpu.insert("quota".into(), json!(r.cpu_quota));
    }
    if r.cpu_period > 0 {
        cpu.insert("period".into(), json!(r.cpu_period));
    }
    if !r.cpuset_cpus.is_empty() {
        cpu.insert("cpus".into(), json!(r.cpuset_cpus));
    }
    if !r.cpuset_mems.is_empty() {
        cpu.insert("mems".into(), json!(r.cpuset_mems));
    }
    if !cpu.is_empty() {
        out.insert("cpu".into(), Value::Object(cpu));
    }
    let mut mem = serde_json::Map::new();
    if r.memory_limit_in_bytes > 0 {
        mem.insert("limit".into(), json!(r.memory_limit_in_bytes));
    }
    if r.memory_swap_limit_in_bytes > 0 {
        mem.insert("swap".into(), json!(r.memory_swap_limit_in_bytes));
    }
    if !mem.is_empty() {
        out.insert("memory".into(), Value::Object(mem));
    }
    if !r.hugepage_limits.is_empty() {
        out.insert(
            "hugepageLimits".into(),
            Value::Array(
                r.hugepage_limits
                    .iter()
                    .map(|h| json!({"pageSize": h.page_size, "limit": h.limit}))
                    .collect(),
            ),
        );
    }
    if !r.unified.is_empty() {
        let u: BTreeMap<_, _> = r.unified.iter().collect();
        out.insert("unified".into(), json!(u));
    }
    Value::Object(out)
}

fn mount(dest: &str, kind: &str, source: &str, options: &[&str]) -> Value {
    json!({"destination": dest, "type": kind, "source": source, "options": options})
}

fn seccomp(
    sc: &v1::LinuxContainerSecurityContext,
    caps: &[String],
    profile: Option<&(String, Vec<u8>)>,
) -> Result<Option<Value>, SpecError> {
    use v1::security_profile::ProfileType;
    let to_value = |s: oci_spec::runtime::LinuxSeccomp| {
        serde_json::to_value(s).map_err(|e| SpecError::Seccomp {
            path: "runtime/default".into(),
            message: e.to_string(),
        })
    };
    let localhost = |path: &str| -> Result<Option<Value>, SpecError> {
        let (p, bytes) = profile
            .filter(|(p, _)| p == path)
            .ok_or_else(|| SpecError::Seccomp {
                path: path.to_string(),
                message: "not read".into(),
            })?;
        let s = crate::seccomp::parse_profile(bytes, p).map_err(|e| SpecError::Seccomp {
            path: p.clone(),
            message: e.to_string(),
        })?;
        Ok(Some(to_value(s)?))
    };
    if let Some(p) = &sc.seccomp {
        return match ProfileType::try_from(p.profile_type) {
            Ok(ProfileType::RuntimeDefault) => {
                Ok(Some(to_value(crate::seccomp::default_profile(caps))?))
            }
            Ok(ProfileType::Unconfined) => Ok(None),
            Ok(ProfileType::Localhost) => localhost(&p.localhost_ref),
            Err(_) => Err(invalid(
                "linux.security_context.seccomp.profile_type",
                format!("unknown profile type {}", p.profile_type),
            )),
        };
    }
    #[allow(deprecated)]
    let legacy = sc.seccomp_profile_path.as_str();
    match legacy {
        "" | "unconfined" => Ok(None),
        "runtime/default" | "docker/default" => {
            Ok(Some(to_value(crate::seccomp::default_profile(caps))?))
        }
        other => match other.strip_prefix("localhost/") {
            Some(path) => localhost(path),
            None => Err(invalid(
                "linux.security_context.seccomp_profile_path",
                format!("{other:?} is not runtime/default, unconfined or localhost/<path>"),
            )),
        },
    }
}

/// The path of a Localhost seccomp profile the request names, for the
/// caller to read before [`build`].
pub fn seccomp_profile_path(config: &v1::ContainerConfig) -> Option<String> {
    let sc = config.linux.as_ref()?.security_context.as_ref()?;
    if let Some(p) = &sc.seccomp {
        return (p.profile_type == v1::security_profile::ProfileType::Localhost as i32)
            .then(|| p.localhost_ref.clone());
    }
    #[allow(deprecated)]
    let legacy = &sc.seccomp_profile_path;
    legacy.strip_prefix("localhost/").map(str::to_string)
}

/// The user the process runs as.
pub fn identity(
    config: &v1::ContainerConfig,
    image: &RunConfig,
    passwd: &str,
    group: &str,
) -> Result<Identity, SpecError> {
    let default = v1::LinuxContainerSecurityContext::default();
    let sc = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .unwrap_or(&default);
    // The CRI: a group without a user is an error, not the image's user
    // with another group.
    if sc.run_as_group.is_some() && sc.run_as_user.is_none() && sc.run_as_username.is_empty() {
        return Err(invalid(
            "linux.security_context.run_as_group",
            "is set without run_as_user or run_as_username",
        ));
    }
    let req = UserRequest {
        image_user: image.user.as_deref().unwrap_or(""),
        run_as_user: sc.run_as_user.as_ref().map(|v| v.value),
        run_as_username: &sc.run_as_username,
        run_as_group: sc.run_as_group.as_ref().map(|v| v.value),
        supplemental_groups: &sc.supplemental_groups,
        strict: sc.supplemental_groups_policy == v1::SupplementalGroupsPolicy::Strict as i32,
    };
    Ok(user::resolve(&req, passwd, group)?)
}

/// Builds the spec (config.json) of a container.
pub fn build(input: &SpecInput) -> Result<Value, SpecError> {
    let c = input.config;
    let default_sc = v1::LinuxContainerSecurityContext::default();
    let sc = c
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .unwrap_or(&default_sc);
    let privileged = sc.privileged;
    let args = argv(c, input.image)?;
    let env = env(c, input.image);
    let cwd = if !c.working_dir.is_empty() {
        c.working_dir.clone()
    } else {
        input
            .image
            .working_dir
            .clone()
            .filter(|w| !w.is_empty())
            .unwrap_or_else(|| "/".into())
    };
    if !cwd.starts_with('/') {
        return Err(invalid(
            "working_dir",
            format!("{cwd:?} is not an absolute path"),
        ));
    }
    let who = identity(c, input.image, input.passwd, input.group)?;
    let (caps, ambient) = capabilities(sc, privileged)?;

    // Mounts: the standard set, then the pod's files, then the request's,
    // a request mount replacing a default one at the same destination.
    let requested: Vec<&str> = c.mounts.iter().map(|m| m.container_path.as_str()).collect();
    let mut mounts: Vec<Value> = Vec::new();
    let mut add_default = |m: Value| {
        let dest = m["destination"].as_str().unwrap_or_default().to_string();
        if !requested.contains(&dest.as_str()) {
            mounts.push(m);
        }
    };
    add_default(mount(
        "/proc",
        "proc",
        "proc",
        &["nosuid", "noexec", "nodev"],
    ));
    add_default(mount(
        "/dev",
        "tmpfs",
        "tmpfs",
        &["nosuid", "strictatime", "mode=755", "size=65536k"],
    ));
    add_default(mount(
        "/dev/pts",
        "devpts",
        "devpts",
        &[
            "nosuid",
            "noexec",
            "newinstance",
            "ptmxmode=0666",
            "mode=0620",
            "gid=5",
        ],
    ));
    add_default(mount(
        "/dev/mqueue",
        "mqueue",
        "mqueue",
        &["nosuid", "noexec", "nodev"],
    ));
    let sys_mode = if privileged { "rw" } else { "ro" };
    add_default(mount(
        "/sys",
        "sysfs",
        "sysfs",
        &["nosuid", "noexec", "nodev", sys_mode],
    ));
    add_default(mount(
        "/sys/fs/cgroup",
        "cgroup",
        "cgroup",
        &["nosuid", "noexec", "nodev", "relatime", sys_mode],
    ));
    match &input.pod.shm {
        Some(shm) => add_default(mount(
            "/dev/shm",
            "bind",
            &shm.to_string_lossy(),
            &["rbind", "rprivate", "rw"],
        )),
        None => add_default(mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        )),
    }
    let ro_root = sc.readonly_rootfs;
    for (dest, file) in [
        ("/etc/hostname", &input.pod.hostname),
        ("/etc/resolv.conf", &input.pod.resolv_conf),
        ("/etc/hosts", &input.pod.hosts),
    ] {
        if let Some(f) = file {
            let mode = if ro_root { "ro" } else { "rw" };
            add_default(mount(
                dest,
                "bind",
                &f.to_string_lossy(),
                &["rbind", "rprivate", mode],
            ));
        }
    }
    let mut rootfs_propagation: Option<&str> = None;
    for (i, m) in c.mounts.iter().enumerate() {
        let field = format!("mounts[{i}]");
        if !m.container_path.starts_with('/') {
            return Err(invalid(
                &format!("{field}.container_path"),
                format!("{:?} is not an absolute path", m.container_path),
            ));
        }
        if m.image.as_ref().is_some_and(|i| !i.image.is_empty()) {
            return Err(invalid(
                &format!("{field}.image"),
                "image volume mounts are not supported",
            ));
        }
        if !m.host_path.starts_with('/') {
            return Err(invalid(
                &format!("{field}.host_path"),
                format!("{:?} is not an absolute path", m.host_path),
            ));
        }
        let (prop, rootfs_prop) = propagation(m.propagation);
        if let Some(p) = rootfs_prop
            && rootfs_propagation != Some("rshared")
        {
            rootfs_propagation = Some(p);
        }
        let mut options = vec!["rbind", prop];
        options.push(if m.readonly { "ro" } else { "rw" });
        if m.recursive_read_only {
            if !m.readonly {
                return Err(invalid(
                    &format!("{field}.recursive_read_only"),
                    "needs readonly as well",
                ));
            }
            options.push("rro");
        }
        mounts.push(mount(&m.container_path, "bind", &m.host_path, &options));
    }

    // Namespaces: the pod's net, ipc and uts; pid as asked; a new mount ns.
    let nso = sc.namespace_options.as_ref();
    let mut namespaces = vec![json!({"type": "mount"})];
    let mut ns_path = |kind: &str, path: &Option<PathBuf>| {
        if let Some(p) = path {
            namespaces.push(json!({"type": kind, "path": p}));
        }
    };
    ns_path("network", &input.pod.netns);
    ns_path("ipc", &input.pod.ipc_ns);
    ns_path("uts", &input.pod.uts_ns);
    match ns_mode(nso, |o| o.pid) {
        v1::NamespaceMode::Node => {}
        v1::NamespaceMode::Pod => match &input.pod.pid_ns {
            Some(p) => namespaces.push(json!({"type": "pid", "path": p})),
            None if input.pod.host_pid => {}
            None => namespaces.push(json!({"type": "pid"})),
        },
        v1::NamespaceMode::Container => namespaces.push(json!({"type": "pid"})),
        v1::NamespaceMode::Target => {
            let pid = input.target_pid.ok_or_else(|| {
                invalid(
                    "linux.security_context.namespace_options.target_id",
                    "the target container is not running",
                )
            })?;
            namespaces.push(json!({"type": "pid", "path": format!("/proc/{pid}/ns/pid")}));
        }
    }

    let mut devices: Vec<Value> = Vec::new();
    let mut allow: Vec<Value> = vec![json!({"allow": false, "access": "rwm"})];
    if privileged {
        allow = vec![json!({"allow": true, "access": "rwm"})];
        for d in &input.host_devices {
            devices.push(device_json(d));
        }
    }
    for d in &input.devices {
        devices.retain(|x| x["path"] != json!(d.container_path));
        devices.push(device_json(d));
        if !privileged {
            allow.push(json!({
                "allow": true, "type": d.kind.to_string(), "major": d.major, "minor": d.minor,
                "access": if d.permissions.is_empty() { "rwm" } else { d.permissions.as_str() }
            }));
        }
    }

    let mut res = c
        .linux
        .as_ref()
        .and_then(|l| l.resources.as_ref())
        .map(resources)
        .unwrap_or_else(|| json!({}));
    res["devices"] = Value::Array(allow);
    let oom = c
        .linux
        .as_ref()
        .and_then(|l| l.resources.as_ref())
        .map(|r| r.oom_score_adj)
        .unwrap_or(0);

    let (masked, readonly): (Vec<String>, Vec<String>) = if privileged {
        (Vec::new(), Vec::new())
    } else {
        (
            if sc.masked_paths.is_empty() {
                DEFAULT_MASKED.iter().map(|s| s.to_string()).collect()
            } else {
                sc.masked_paths.clone()
            },
            if sc.readonly_paths.is_empty() {
                DEFAULT_READONLY.iter().map(|s| s.to_string()).collect()
            } else {
                sc.readonly_paths.clone()
            },
        )
    };

    let seccomp = if privileged {
        None
    } else {
        seccomp(sc, &caps, input.seccomp_profile.as_ref())?
    };

    let mut annotations: BTreeMap<&str, &str> = c
        .annotations
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    annotations.insert("io.kubernetes.cri.container-type", "container");

    let mut linux = json!({
        "namespaces": namespaces,
        "resources": res,
        "cgroupsPath": cgroups_path(input.pod, input.id),
        "devices": devices,
        "maskedPaths": masked,
        "readonlyPaths": readonly,
    });
    if let Some(s) = seccomp {
        linux["seccomp"] = s;
    }
    if let Some(p) = rootfs_propagation {
        linux["rootfsPropagation"] = json!(p);
    }

    let mut process = json!({
        "terminal": c.tty,
        "user": {"uid": who.uid, "gid": who.gid, "additionalGids": who.additional_gids},
        "args": args,
        "env": env,
        "cwd": cwd,
        "capabilities": {
            "bounding": caps, "effective": caps, "permitted": caps, "ambient": ambient,
        },
        "noNewPrivileges": sc.no_new_privs,
    });
    if oom != 0 {
        process["oomScoreAdj"] = json!(oom);
    }

    Ok(json!({
        "ociVersion": "1.1.0",
        "process": process,
        "root": {"path": input.rootfs, "readonly": ro_root},
        "mounts": mounts,
        "annotations": annotations,
        "linux": linux,
    }))
}

fn device_json(d: &HostDevice) -> Value {
    json!({
        "path": d.container_path, "type": d.kind.to_string(), "major": d.major, "minor": d.minor,
        "fileMode": d.mode, "uid": d.uid, "gid": d.gid,
    })
}

#[cfg(test)]
mod tests;
