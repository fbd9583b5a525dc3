//! The client against in-process fake plugins that record what they are
//! given (no root, no netns), and against a shell-script executable.

use std::cell::RefCell;
use std::path::Path;

use serde_json::json;

use super::*;
use crate::types::NetConf;

/// What one fake plugin invocation saw.
#[derive(Debug, Clone)]
struct Call {
    command: &'static str,
    index: u64,
    stdin: Value,
    container_id: String,
    netns: Option<PathBuf>,
    ifname: String,
    args: Vec<(String, String)>,
    path: Vec<PathBuf>,
}

thread_local! {
    // Builtins run on the calling thread, so each test sees its own calls.
    static LOG: RefCell<Vec<Call>> = const { RefCell::new(Vec::new()) };
}

fn take_log() -> Vec<Call> {
    LOG.with(|l| std::mem::take(&mut *l.borrow_mut()))
}

fn summary(log: &[Call]) -> Vec<(&'static str, u64)> {
    log.iter().map(|c| (c.command, c.index)).collect()
}

/// A plugin driven by its config: `"index"` tags its calls, `"addIp"`
/// adds an interface and address to the result, `"failOn"` lists the
/// commands it fails with code `"failCode"`.
struct Fake;

impl Fake {
    fn record(&self, command: &'static str, inv: &Invocation, raw: &Value) -> Result<(), CniError> {
        LOG.with(|l| {
            l.borrow_mut().push(Call {
                command,
                index: raw["index"].as_u64().unwrap_or(0),
                stdin: serde_json::from_slice(&inv.stdin).unwrap_or(Value::Null),
                container_id: inv.container_id.clone(),
                netns: inv.netns.clone(),
                ifname: inv.ifname.clone(),
                args: inv.args.clone(),
                path: inv.path.clone(),
            })
        });
        let fails = raw["failOn"]
            .as_array()
            .is_some_and(|a| a.iter().any(|c| c == command));
        if fails {
            let code = raw["failCode"].as_u64().unwrap_or(7) as u32;
            return Err(CniError::new(code, format!("fake {command} failure")));
        }
        Ok(())
    }
}

impl Plugin for Fake {
    fn add(&self, inv: &Invocation, conf: &NetConf, raw: &Value) -> Result<CniResult, CniError> {
        self.record("ADD", inv, raw)?;
        let mut r = match &conf.prev_result {
            Some(p) => CniResult::from_value(p)?,
            None => CniResult::default(),
        };
        if let Some(ip) = raw["addIp"].as_str() {
            r.interfaces.push(crate::types::Interface {
                name: inv.ifname.clone(),
                mac: "0a:58:0a:00:00:05".into(),
                mtu: None,
                sandbox: inv
                    .netns
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
            });
            r.ips.push(crate::types::IpConfig {
                address: ip.parse().map_err(|_| CniError::new(7, "bad addIp"))?,
                gateway: None,
                interface: Some(r.interfaces.len() - 1),
            });
        }
        Ok(r)
    }
    fn del(&self, inv: &Invocation, _: &NetConf, raw: &Value) -> Result<(), CniError> {
        self.record("DEL", inv, raw)
    }
    fn check(&self, inv: &Invocation, _: &NetConf, raw: &Value) -> Result<(), CniError> {
        self.record("CHECK", inv, raw)
    }
    fn status(&self, inv: &Invocation, _: &NetConf, raw: &Value) -> Result<(), CniError> {
        self.record("STATUS", inv, raw)
    }
    fn gc(&self, inv: &Invocation, _: &NetConf, raw: &Value) -> Result<(), CniError> {
        self.record("GC", inv, raw)
    }
}

fn fakes(name: &str) -> Option<Box<dyn Plugin>> {
    (name == "fake").then(|| Box::new(Fake) as Box<dyn Plugin>)
}

struct Env {
    _dir: tempfile::TempDir,
    bin: PathBuf,
    cache: PathBuf,
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let cache = dir.path().join("cache");
        take_log();
        Env {
            _dir: dir,
            bin,
            cache,
        }
    }

    fn client(&self) -> Client {
        Client::new(vec![self.bin.clone()], self.cache.clone()).with_builtin(fakes)
    }
}

fn list(version: &str, plugins: Value) -> NetworkConfig {
    named_list("podnet", version, plugins)
}

fn named_list(name: &str, version: &str, plugins: Value) -> NetworkConfig {
    NetworkConfig::from_list_value(
        &json!({"cniVersion": version, "name": name, "plugins": plugins}),
        "test",
    )
    .unwrap()
}

fn three(version: &str) -> NetworkConfig {
    list(
        version,
        json!([
            {"type": "fake", "index": 0, "addIp": "10.0.0.5/24", "capabilities": {"ips": true}},
            {"type": "fake", "index": 1, "capabilities": {"portMappings": true}},
            {"type": "fake", "index": 2},
        ]),
    )
}

fn pod(id: &str) -> Attachment {
    let mut a = Attachment::new(id, Some(Path::new("/run/netns/pod-1")), "eth0");
    a.args = vec![("K8S_POD_NAME".into(), "web".into())];
    a.capability_args = json!({
        "portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}],
        "ips": ["10.0.0.5/24"],
        "bandwidth": {"ingressRate": 1000}
    })
    .as_object()
    .unwrap()
    .clone();
    a
}

#[test]
fn add_chains_results_and_gives_each_plugin_its_capabilities() {
    let env = Env::new();
    let net = three("0.4.0");
    let r = env.client().add(&net, &pod("c1")).unwrap();
    assert_eq!(r.cni_version, "0.4.0");
    assert_eq!(r.ips[0].address.to_string(), "10.0.0.5/24");
    assert_eq!(r.interfaces[0].name, "eth0");

    let log = take_log();
    assert_eq!(summary(&log), [("ADD", 0), ("ADD", 1), ("ADD", 2)]);
    let first = &log[0];
    assert_eq!(first.container_id, "c1");
    assert_eq!(first.netns.as_deref(), Some(Path::new("/run/netns/pod-1")));
    assert_eq!(first.ifname, "eth0");
    assert_eq!(
        first.args,
        [("K8S_POD_NAME".to_string(), "web".to_string())]
    );
    assert_eq!(first.path, std::slice::from_ref(&env.bin));
    assert!(first.stdin.get("prevResult").is_none());
    assert_eq!(
        first.stdin["runtimeConfig"],
        json!({"ips": ["10.0.0.5/24"]})
    );
    assert_eq!(first.stdin["name"], "podnet");
    // The previous result, in the list's version (0.4.0 writes ip versions).
    let prev = &log[1].stdin["prevResult"];
    assert_eq!(prev["cniVersion"], "0.4.0");
    assert_eq!(prev["ips"][0]["address"], "10.0.0.5/24");
    assert_eq!(prev["ips"][0]["version"], "4");
    assert_eq!(
        log[1].stdin["runtimeConfig"],
        json!({"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]})
    );
    assert!(log[2].stdin.get("runtimeConfig").is_none());
    assert_eq!(log[2].stdin["prevResult"], *prev);

    let e = env.client().add(&net, &pod("c1")).unwrap_err();
    assert!(matches!(e, ClientError::AlreadyAttached { .. }), "{e}");
    assert!(take_log().is_empty());

    let cached = env
        .client()
        .cached_result("podnet", "c1", "eth0")
        .unwrap()
        .unwrap();
    assert_eq!(cached.ips, r.ips);
    let cfg = env
        .client()
        .cached_config("podnet", "c1", "eth0")
        .unwrap()
        .unwrap();
    assert_eq!(cfg.plugins, net.plugins);
}

#[test]
fn del_after_a_restart_uses_what_add_had_and_is_idempotent() {
    let env = Env::new();
    let net = three("1.0.0");
    env.client().add(&net, &pod("c1")).unwrap();
    take_log();

    // A new client over the same cache; the caller knows only the names.
    let restarted = env.client();
    restarted
        .del(&net, &Attachment::new("c1", None, "eth0"))
        .unwrap();
    let log = take_log();
    assert_eq!(summary(&log), [("DEL", 2), ("DEL", 1), ("DEL", 0)]);
    for c in &log {
        assert_eq!(c.stdin["prevResult"]["ips"][0]["address"], "10.0.0.5/24");
        assert_eq!(c.netns.as_deref(), Some(Path::new("/run/netns/pod-1")));
        assert_eq!(c.args[0].1, "web");
    }
    assert_eq!(
        log[1].stdin["runtimeConfig"]["portMappings"][0]["hostPort"],
        8080
    );
    assert!(
        restarted
            .cached_result("podnet", "c1", "eth0")
            .unwrap()
            .is_none()
    );
    assert!(restarted.cache().list(None).unwrap().is_empty());

    // Again: no cache, no netns; the plugins still get their DEL.
    restarted
        .del(&net, &Attachment::new("c1", None, "eth0"))
        .unwrap();
    let log = take_log();
    assert_eq!(summary(&log), [("DEL", 2), ("DEL", 1), ("DEL", 0)]);
    assert!(
        log.iter()
            .all(|c| c.stdin.get("prevResult").is_none() && c.netns.is_none())
    );
}

#[test]
fn a_failing_plugin_undoes_itself_and_those_before_it() {
    let env = Env::new();
    let net = list(
        "1.0.0",
        json!([
            {"type": "fake", "index": 0, "addIp": "10.0.0.5/24"},
            {"type": "fake", "index": 1, "failOn": ["ADD"], "failCode": 11},
            {"type": "fake", "index": 2},
        ]),
    );
    let e = env.client().add(&net, &pod("c1")).unwrap_err();
    match &e {
        ClientError::Plugin {
            plugin,
            index,
            command,
            source,
            ..
        } => {
            assert_eq!((plugin.as_str(), *index, *command), ("fake", 1, "ADD"));
            assert_eq!(source.code, 11);
        }
        other => panic!("unexpected {other}"),
    }
    assert_eq!(e.cni_error().unwrap().code, 11);
    assert!(e.to_string().contains("#1"), "{e}");
    let log = take_log();
    assert_eq!(
        summary(&log),
        [("ADD", 0), ("ADD", 1), ("DEL", 1), ("DEL", 0)]
    );
    // The undoing DELs get what the chain had produced so far.
    assert_eq!(
        log[2].stdin["prevResult"]["ips"][0]["address"],
        "10.0.0.5/24"
    );
    assert!(env.client().cache().list(None).unwrap().is_empty());
}

#[test]
fn an_undo_that_fails_is_kept_for_del_and_gc_to_finish() {
    let env = Env::new();
    let broken = list(
        "1.0.0",
        json!([
            {"type": "fake", "index": 0, "addIp": "10.0.0.5/24"},
            {"type": "fake", "index": 1, "failOn": ["ADD", "DEL"]},
        ]),
    );
    let e = env.client().add(&broken, &pod("c1")).unwrap_err();
    assert!(matches!(e, ClientError::RollbackFailed { .. }), "{e}");
    assert!(e.to_string().contains("undoing it also failed"), "{e}");
    let entries = env.client().cache().list(Some("podnet")).unwrap();
    assert_eq!(entries.len(), 1);
    assert!(!entries[0].complete);
    assert!(
        env.client()
            .cached_result("podnet", "c1", "eth0")
            .unwrap()
            .is_none()
    );
    take_log();

    // The config is fixed; GC of an attachment the runtime does not know:
    // the cached (broken) config fails, the current one undoes it.
    let fixed = list(
        "1.0.0",
        json!([{"type": "fake", "index": 0}, {"type": "fake", "index": 1}]),
    );
    env.client().gc(&fixed, &[]).unwrap();
    let log = take_log();
    assert_eq!(
        summary(&log),
        [("DEL", 1), ("DEL", 0), ("DEL", 1), ("DEL", 0)]
    );
    assert_eq!(
        log[3].stdin["prevResult"]["ips"][0]["address"],
        "10.0.0.5/24"
    );
    assert!(env.client().cache().list(None).unwrap().is_empty());
}

#[test]
fn a_missing_plugin_fails_add_before_anything_runs() {
    let env = Env::new();
    let net = list(
        "1.0.0",
        json!([{"type": "fake", "index": 0}, {"type": "no-such-plugin"}]),
    );
    let e = env.client().add(&net, &pod("c1")).unwrap_err();
    assert!(
        matches!(&e, ClientError::PluginNotFound { plugin, .. } if plugin == "no-such-plugin"),
        "{e}"
    );
    assert!(
        e.to_string().contains(&env.bin.display().to_string()),
        "{e}"
    );
    assert!(take_log().is_empty());
    assert!(env.client().cache().list(None).unwrap().is_empty());
}

#[test]
fn names_that_could_leave_the_cache_dir_are_refused() {
    let env = Env::new();
    let net = three("1.0.0");
    for (cid, ifname) in [
        ("../c", "eth0"),
        ("c", "a/b"),
        ("c", "averyveryverylongname"),
        ("", "eth0"),
    ] {
        let e = env
            .client()
            .add(&net, &Attachment::new(cid, None, ifname))
            .unwrap_err();
        assert!(
            matches!(e, ClientError::InvalidName { .. }),
            "{cid} {ifname}: {e}"
        );
    }
    assert!(take_log().is_empty());
}

#[test]
fn check_runs_forward_with_the_cached_result() {
    let env = Env::new();
    let net = three("1.0.0");
    let c = env.client();
    let e = c.check(&net, &pod("c1")).unwrap_err();
    assert!(matches!(e, ClientError::NotAttached { .. }), "{e}");
    c.add(&net, &pod("c1")).unwrap();
    take_log();
    c.check(&net, &Attachment::new("c1", None, "eth0")).unwrap();
    let log = take_log();
    assert_eq!(summary(&log), [("CHECK", 0), ("CHECK", 1), ("CHECK", 2)]);
    assert!(
        log.iter()
            .all(|c| c.stdin["prevResult"]["ips"][0]["address"] == "10.0.0.5/24")
    );
    assert_eq!(
        log[1].stdin["runtimeConfig"]["portMappings"][0]["containerPort"],
        80
    );
    assert_eq!(log[0].netns.as_deref(), Some(Path::new("/run/netns/pod-1")));

    let failing = list(
        "1.0.0",
        json!([{"type": "fake", "index": 0}, {"type": "fake", "index": 1, "failOn": ["CHECK"]}]),
    );
    let e = c.check(&failing, &pod("c1")).unwrap_err();
    assert_eq!(e.cni_error().unwrap().code, 7);
    take_log();

    let mut disabled = net.clone();
    disabled.disable_check = true;
    c.check(&disabled, &pod("c1")).unwrap();
    assert!(take_log().is_empty());
    let e = c.check(&three("0.3.1"), &pod("c1")).unwrap_err();
    assert!(e.to_string().contains("0.4.0"), "{e}");
}

#[test]
fn status_asks_plugins_from_1_1_and_finds_them_before() {
    let env = Env::new();
    let c = env.client();
    c.status(&three("1.1.0")).unwrap();
    let log = take_log();
    assert_eq!(summary(&log), [("STATUS", 0), ("STATUS", 1), ("STATUS", 2)]);
    assert_eq!(log[0].stdin["cniVersion"], "1.1.0");
    assert!(log[0].stdin.get("runtimeConfig").is_none());

    c.status(&three("1.0.0")).unwrap();
    assert!(take_log().is_empty());
    let e = c
        .status(&list(
            "1.0.0",
            json!([{"type": "fake"}, {"type": "absent"}]),
        ))
        .unwrap_err();
    assert!(matches!(e, ClientError::PluginNotFound { .. }), "{e}");

    let not_ready = list(
        "1.1.0",
        json!([{"type": "fake", "failOn": ["STATUS"], "failCode": 50}]),
    );
    let e = c.status(&not_ready).unwrap_err();
    assert_eq!(
        e.cni_error().unwrap().code,
        crate::types::code::NOT_AVAILABLE
    );
}

#[test]
fn gc_deletes_what_is_not_valid_and_tells_plugins_what_is() {
    let env = Env::new();
    let net = three("1.1.0");
    let c = env.client();
    c.add(&net, &pod("c1")).unwrap();
    c.add(&net, &pod("c2")).unwrap();
    // Another network's attachment is not this GC's business.
    let other = named_list("other", "1.1.0", json!([{"type": "fake", "index": 9}]));
    c.add(&other, &pod("c3")).unwrap();
    take_log();

    c.gc(&net, &[Attachment::new("c1", None, "eth0")]).unwrap();
    let log = take_log();
    assert_eq!(
        summary(&log),
        [
            ("DEL", 2),
            ("DEL", 1),
            ("DEL", 0),
            ("GC", 0),
            ("GC", 1),
            ("GC", 2)
        ]
    );
    assert!(log[..3].iter().all(|c| c.container_id == "c2"));
    let valid = json!([{"containerID": "c1", "ifname": "eth0"}]);
    assert!(
        log[3..]
            .iter()
            .all(|c| c.stdin["cni.dev/valid-attachments"] == valid)
    );
    let left: Vec<_> = c
        .cache()
        .list(None)
        .unwrap()
        .into_iter()
        .map(|e| (e.network, e.container_id))
        .collect();
    assert_eq!(
        left,
        [
            ("podnet".to_string(), "c1".to_string()),
            ("other".to_string(), "c3".to_string())
        ]
    );

    let mut disabled = net.clone();
    disabled.disable_gc = true;
    c.gc(&disabled, &[]).unwrap();
    assert!(take_log().is_empty());
    // 1.0: no GC command, only the stale attachments.
    c.gc(&three("1.0.0"), &[]).unwrap();
    assert_eq!(summary(&take_log()), [("DEL", 2), ("DEL", 1), ("DEL", 0)]);
}

#[test]
fn the_list_can_turn_the_in_process_path_off() {
    let env = Env::new();
    let mut net = three("1.0.0");
    net.in_process = false;
    let e = env.client().add(&net, &pod("c1")).unwrap_err();
    assert!(matches!(e, ClientError::PluginNotFound { .. }), "{e}");
    assert!(take_log().is_empty());
}

/// A plugin executable that records its stdin and CNI_* environment.
fn script_plugin(bin: &Path, name: &str, out: &Path) {
    let script = format!(
        r#"#!/bin/sh
cat > {out}/stdin.$CNI_COMMAND
env | grep '^CNI_' | sort > {out}/env.$CNI_COMMAND
case "$CNI_COMMAND" in
ADD) printf '%s' '{{"cniVersion":"1.0.0","interfaces":[{{"name":"eth0"}}],"ips":[{{"address":"10.9.0.2/24","interface":0}}]}}' ;;
CHECK) printf '%s' '{{"cniVersion":"1.0.0","code":4,"msg":"scripted failure"}}'; exit 1 ;;
esac
"#,
        out = out.display()
    );
    // Written by a child process, so that no descriptor open for writing
    // in this (multi-threaded) process makes exec fail with ETXTBSY.
    let staged = out.join(format!("{name}.src"));
    std::fs::write(&staged, script).unwrap();
    let dest = bin.join(name);
    let ok = std::process::Command::new("install")
        .arg("-m755")
        .arg(&staged)
        .arg(&dest)
        .status()
        .unwrap();
    assert!(ok.success());
}

#[test]
fn executables_get_the_same_stdin_and_environment_as_builtins() {
    let env = Env::new();
    let out = env.cache.with_file_name("out");
    std::fs::create_dir_all(&out).unwrap();
    script_plugin(&env.bin, "scripted", &out);
    let net = list(
        "1.0.0",
        json!([
            {"type": "fake", "index": 0, "addIp": "10.0.0.5/24"},
            {"type": "scripted", "index": 1, "capabilities": {"portMappings": true}},
        ]),
    );
    let c = env.client();
    let r = c.add(&net, &pod("c1")).unwrap();
    // The last plugin's result is the chain's.
    assert_eq!(r.ips[0].address.to_string(), "10.9.0.2/24");
    let stdin: Value =
        serde_json::from_slice(&std::fs::read(out.join("stdin.ADD")).unwrap()).unwrap();
    assert_eq!(stdin["prevResult"]["ips"][0]["address"], "10.0.0.5/24");
    assert_eq!(stdin["runtimeConfig"]["portMappings"][0]["hostPort"], 8080);
    assert_eq!(stdin["name"], "podnet");
    let envs = std::fs::read_to_string(out.join("env.ADD")).unwrap();
    for want in [
        "CNI_COMMAND=ADD",
        "CNI_CONTAINERID=c1",
        "CNI_NETNS=/run/netns/pod-1",
        "CNI_IFNAME=eth0",
        "CNI_ARGS=K8S_POD_NAME=web",
        &format!("CNI_PATH={}", env.bin.display()),
    ] {
        assert!(envs.lines().any(|l| l == want), "{want} not in {envs}");
    }

    // The same list with the fake in the executable's place: the same
    // stdin (but for the type) and the same CNI_* values.
    take_log();
    let as_fake = list(
        "1.0.0",
        json!([
            {"type": "fake", "index": 0, "addIp": "10.0.0.5/24"},
            {"type": "fake", "index": 1, "capabilities": {"portMappings": true}},
        ]),
    );
    c.add(&as_fake, &pod("c2")).unwrap();
    let fake = &take_log()[1];
    let mut exec_stdin = stdin.clone();
    exec_stdin["type"] = "fake".into();
    assert_eq!(exec_stdin, fake.stdin);
    let netns = fake.netns.as_ref().unwrap().display().to_string();
    assert!(envs.contains(&format!("CNI_NETNS={netns}\n")), "{envs}");
    assert!(
        envs.contains(&format!("CNI_IFNAME={}\n", fake.ifname)),
        "{envs}"
    );

    // DEL after the chain: both get the cached (final) result.
    c.del(&net, &Attachment::new("c1", None, "eth0")).unwrap();
    let del_stdin: Value =
        serde_json::from_slice(&std::fs::read(out.join("stdin.DEL")).unwrap()).unwrap();
    let fake_del = &take_log()[0];
    assert_eq!(fake_del.command, "DEL");
    assert_eq!(del_stdin["prevResult"], fake_del.stdin["prevResult"]);
    assert_eq!(del_stdin["prevResult"]["ips"][0]["address"], "10.9.0.2/24");
    let env_del = std::fs::read_to_string(out.join("env.DEL")).unwrap();
    assert!(env_del.contains("CNI_NETNS=/run/netns/pod-1"), "{env_del}");

    // A plugin's error result keeps its code and message.
    c.add(&net, &pod("c1")).unwrap();
    let e = c.check(&net, &pod("c1")).unwrap_err();
    let ce = e.cni_error().unwrap();
    assert_eq!((ce.code, ce.msg.as_str()), (4, "scripted failure"));
    assert!(e.to_string().contains("scripted"), "{e}");
}
