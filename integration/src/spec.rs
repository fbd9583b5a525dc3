//! OCI runtime spec (config.json) documents: exactly what `runc spec` writes,
//! plus chainable edits.

use std::path::Path;

use anyhow::{Context, Result};
use serde_json::{Map, Value, json};

/// The cgroupsPath the test specs use for container `id`. Absolute, so runc
/// does not nest it below the cgroup of the test process.
pub fn test_cgroups_path(id: &str) -> String {
    format!("/berth-it-{id}")
}

/// The PATH of `runc spec`.
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// An OCI runtime spec, kept as JSON so any field can be edited.
#[derive(Clone, Debug, PartialEq)]
pub struct Spec(pub Value);

/// The five capability sets of `process.capabilities`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CapSpec {
    pub bounding: Vec<String>,
    pub effective: Vec<String>,
    pub permitted: Vec<String>,
    pub inheritable: Vec<String>,
    pub ambient: Vec<String>,
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

impl CapSpec {
    /// The same names in all five sets.
    pub fn all(names: &[&str]) -> CapSpec {
        CapSpec {
            bounding: strings(names),
            effective: strings(names),
            permitted: strings(names),
            inheritable: strings(names),
            ambient: strings(names),
        }
    }

    /// Each set given explicitly, in the order bounding, effective, permitted,
    /// inheritable, ambient.
    pub fn sets(b: &[&str], e: &[&str], p: &[&str], i: &[&str], a: &[&str]) -> CapSpec {
        CapSpec {
            bounding: strings(b),
            effective: strings(e),
            permitted: strings(p),
            inheritable: strings(i),
            ambient: strings(a),
        }
    }

    /// Reads `process.capabilities` of a spec (absent sets are empty).
    pub fn from_spec(spec: &Spec) -> CapSpec {
        let get = |k: &str| -> Vec<String> {
            spec.0
                .pointer(&format!("/process/capabilities/{k}"))
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default()
        };
        CapSpec {
            bounding: get("bounding"),
            effective: get("effective"),
            permitted: get("permitted"),
            inheritable: get("inheritable"),
            ambient: get("ambient"),
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "bounding": self.bounding,
            "effective": self.effective,
            "permitted": self.permitted,
            "inheritable": self.inheritable,
            "ambient": self.ambient,
        })
    }
}

impl Spec {
    /// Exactly the config.json `runc spec` (runc 1.1) writes.
    pub fn runc_default() -> Spec {
        let caps = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"];
        Spec(json!({
            "ociVersion": "1.0.2-dev",
            "process": {
                "terminal": true,
                "user": { "uid": 0, "gid": 0 },
                "args": ["sh"],
                "env": [DEFAULT_PATH, "TERM=xterm"],
                "cwd": "/",
                "capabilities": {
                    "bounding": caps,
                    "effective": caps,
                    "permitted": caps,
                    "ambient": caps
                },
                "rlimits": [ { "type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024 } ],
                "noNewPrivileges": true
            },
            "root": { "path": "rootfs", "readonly": true },
            "hostname": "runc",
            "mounts": [
                { "destination": "/proc", "type": "proc", "source": "proc" },
                { "destination": "/dev", "type": "tmpfs", "source": "tmpfs",
                  "options": ["nosuid", "strictatime", "mode=755", "size=65536k"] },
                { "destination": "/dev/pts", "type": "devpts", "source": "devpts",
                  "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"] },
                { "destination": "/dev/shm", "type": "tmpfs", "source": "shm",
                  "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"] },
                { "destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
                  "options": ["nosuid", "noexec", "nodev"] },
                { "destination": "/sys", "type": "sysfs", "source": "sysfs",
                  "options": ["nosuid", "noexec", "nodev", "ro"] },
                { "destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
                  "options": ["nosuid", "noexec", "nodev", "relatime", "ro"] }
            ],
            "linux": {
                "resources": { "devices": [ { "allow": false, "access": "rwm" } ] },
                "namespaces": [
                    { "type": "pid" }, { "type": "network" }, { "type": "ipc" },
                    { "type": "uts" }, { "type": "mount" }
                ],
                "maskedPaths": [
                    "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys",
                    "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
                    "/proc/sched_debug", "/sys/firmware", "/proc/scsi"
                ],
                "readonlyPaths": [
                    "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"
                ]
            }
        }))
    }

    /// The runc default with what nearly every test wants: no terminal, the
    /// given args, and a cgroupsPath derived from the container ID.
    pub fn test(id: &str, args: &[&str]) -> Spec {
        Spec::runc_default()
            .terminal(false)
            .args(args)
            .cgroups_path(&test_cgroups_path(id))
    }

    /// `sh -c SCRIPT` as a test spec.
    pub fn sh(id: &str, script: &str) -> Spec {
        Spec::test(id, &["sh", "-c", script])
    }

    /// Sets the value at a JSON pointer, creating objects along the way.
    pub fn set(mut self, pointer: &str, value: Value) -> Spec {
        let mut cur = &mut self.0;
        for raw in pointer.split('/').skip(1) {
            let key = raw.replace("~1", "/").replace("~0", "~");
            if !cur.is_object() {
                *cur = Value::Object(Map::new());
            }
            cur = cur
                .as_object_mut()
                .expect("just made an object")
                .entry(key)
                .or_insert(Value::Null);
        }
        *cur = value;
        self
    }

    /// Removes the value at a JSON pointer, if present.
    pub fn remove(mut self, pointer: &str) -> Spec {
        if let Some((parent, key)) = pointer.rsplit_once('/')
            && let Some(Value::Object(m)) = self.0.pointer_mut(parent)
        {
            m.remove(&key.replace("~1", "/").replace("~0", "~"));
        }
        self
    }

    /// Appends to the array at a JSON pointer (created if absent).
    pub fn push(mut self, pointer: &str, value: Value) -> Spec {
        if !matches!(self.0.pointer(pointer), Some(Value::Array(_))) {
            self = self.set(pointer, json!([]));
        }
        if let Some(Value::Array(a)) = self.0.pointer_mut(pointer) {
            a.push(value);
        }
        self
    }

    pub fn args(self, args: &[&str]) -> Spec {
        self.set("/process/args", json!(args))
    }

    pub fn env(self, env: &[&str]) -> Spec {
        self.set("/process/env", json!(env))
    }

    pub fn add_env(self, kv: &str) -> Spec {
        self.push("/process/env", json!(kv))
    }

    pub fn cwd(self, cwd: &str) -> Spec {
        self.set("/process/cwd", json!(cwd))
    }

    pub fn user(self, uid: u32, gid: u32) -> Spec {
        self.set("/process/user", json!({ "uid": uid, "gid": gid }))
    }

    pub fn additional_gids(self, gids: &[u32]) -> Spec {
        self.set("/process/user/additionalGids", json!(gids))
    }

    pub fn terminal(self, on: bool) -> Spec {
        self.set("/process/terminal", json!(on))
    }

    pub fn readonly(self, on: bool) -> Spec {
        self.set("/root/readonly", json!(on))
    }

    /// `root.path`: relative to the bundle, or absolute.
    pub fn root_path(self, path: &Path) -> Spec {
        self.set("/root/path", json!(path))
    }

    pub fn hostname(self, name: &str) -> Spec {
        self.set("/hostname", json!(name))
    }

    pub fn capabilities(self, caps: &CapSpec) -> Spec {
        self.set("/process/capabilities", caps.to_json())
    }

    pub fn no_new_privileges(self, on: bool) -> Spec {
        self.set("/process/noNewPrivileges", json!(on))
    }

    /// Replaces the limit of that type (e.g. "RLIMIT_NOFILE") or adds it.
    pub fn rlimit(mut self, kind: &str, soft: u64, hard: u64) -> Spec {
        let new = json!({ "type": kind, "hard": hard, "soft": soft });
        if let Some(Value::Array(a)) = self.0.pointer_mut("/process/rlimits") {
            a.retain(|r| r["type"] != kind);
        }
        self.push("/process/rlimits", new)
    }

    pub fn mount(self, m: Value) -> Spec {
        self.push("/mounts", m)
    }

    pub fn bind_mount(self, host: &Path, dest: &str, readonly: bool) -> Spec {
        let mut opts = vec!["rbind", "nosuid", "nodev"];
        if readonly {
            opts.push("ro");
        }
        self.mount(json!({ "destination": dest, "type": "bind", "source": host, "options": opts }))
    }

    pub fn tmpfs(self, dest: &str) -> Spec {
        self.mount(json!({
            "destination": dest, "type": "tmpfs", "source": "tmpfs",
            "options": ["nosuid", "nodev", "mode=1777", "size=16m"]
        }))
    }

    /// Replaces the namespace list with these types (e.g. "pid", "network").
    pub fn namespaces(self, types: &[&str]) -> Spec {
        let list: Vec<Value> = types.iter().map(|t| json!({ "type": t })).collect();
        self.set("/linux/namespaces", Value::Array(list))
    }

    pub fn add_namespace(self, kind: &str) -> Spec {
        self.push("/linux/namespaces", json!({ "type": kind }))
    }

    pub fn remove_namespace(mut self, kind: &str) -> Spec {
        if let Some(Value::Array(a)) = self.0.pointer_mut("/linux/namespaces") {
            a.retain(|n| n["type"] != kind);
        }
        self
    }

    pub fn seccomp(self, profile: Value) -> Spec {
        self.set("/linux/seccomp", profile)
    }

    pub fn cgroups_path(self, path: &str) -> Spec {
        self.set("/linux/cgroupsPath", json!(path))
    }

    /// Sets one field of `linux.resources`, e.g. `resource("pids", json!({"limit": 10}))`.
    pub fn resource(self, key: &str, value: Value) -> Spec {
        self.set(&format!("/linux/resources/{key}"), value)
    }

    /// A memory limit; swap is limited to the same amount (no swap use) when
    /// the machine's memory cgroup accounts swap.
    pub fn memory_limit(self, bytes: i64) -> Spec {
        let mut mem = json!({ "limit": bytes });
        if crate::cgroup::swap_accounting() {
            mem["swap"] = json!(bytes);
        }
        self.resource("memory", mem)
    }

    pub fn pids_limit(self, n: i64) -> Spec {
        self.resource("pids", json!({ "limit": n }))
    }

    /// Adds a hook of that kind ("createRuntime", "poststart", "poststop", ...).
    pub fn hook(self, kind: &str, path: &str, args: &[&str]) -> Spec {
        self.push(
            &format!("/hooks/{kind}"),
            json!({ "path": path, "args": args, "timeout": 10 }),
        )
    }

    pub fn annotation(self, key: &str, value: &str) -> Spec {
        let k = key.replace('~', "~0").replace('/', "~1");
        self.set(&format!("/annotations/{k}"), json!(value))
    }

    /// Writes the spec as pretty JSON.
    pub fn write(&self, path: &Path) -> Result<()> {
        std::fs::write(path, serde_json::to_vec_pretty(&self.0)?)
            .with_context(|| format!("writing {}", path.display()))
    }

    /// The masked paths listed in the spec.
    pub fn masked_paths(&self) -> Vec<String> {
        self.string_list("/linux/maskedPaths")
    }

    /// The read-only paths listed in the spec.
    pub fn readonly_paths(&self) -> Vec<String> {
        self.string_list("/linux/readonlyPaths")
    }

    fn string_list(&self, pointer: &str) -> Vec<String> {
        self.0
            .pointer(pointer)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// The libseccomp architecture names of this machine, for seccomp profiles.
pub fn seccomp_architectures() -> Vec<&'static str> {
    match std::env::consts::ARCH {
        "x86_64" => vec!["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "aarch64" => vec!["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
        "riscv64" => vec!["SCMP_ARCH_RISCV64"],
        "s390x" => vec!["SCMP_ARCH_S390X"],
        // An empty list means the native architecture only.
        _ => vec![],
    }
}

/// A profile allowing everything except `syscalls`, which fail with `errno`.
pub fn seccomp_deny(syscalls: &[&str], errno: u32) -> Value {
    json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": seccomp_architectures(),
        "syscalls": [ { "names": syscalls, "action": "SCMP_ACT_ERRNO", "errnoRet": errno } ]
    })
}
