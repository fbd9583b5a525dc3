use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::Path;

use berth_proto::v1::MountPropagation;
use k8s_openapi::api::core::v1::{Container, HostPathVolumeSource, Pod};
use rstest::rstest;
use serde_json::{Value, json};
use tempfile::TempDir;

use super::atomic_writer::{self, DATA_DIR, DATA_DIR_TMP, FileProjection, Payload, WriteOutcome};
use super::*;
use crate::cri_config::{Allocatable, NodeContext};

const MI: i64 = 1 << 20;

fn pod(volumes: Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {
            "name": "web",
            "namespace": "ns1",
            "uid": "uid-1",
            "labels": {"tier": "front", "app": "web"},
            "annotations": {"note": "a \"b\"\nc"},
        },
        "spec": {
            "containers": [{
                "name": "c",
                "image": "busybox",
                "resources": {"limits": {"memory": "64Mi"}, "requests": {"cpu": "250m"}},
            }],
            "volumes": volumes,
        },
    }))
    .unwrap()
}

fn node() -> NodeContext {
    NodeContext {
        allocatable: Allocatable {
            cpu_millis: 2000,
            memory: 512 * MI,
            ephemeral_storage: 0,
        },
        ..NodeContext::default()
    }
}

struct Env {
    tmp: TempDir,
    manager: VolumeManager,
}

fn env() -> Env {
    let tmp = TempDir::new().unwrap();
    let manager =
        VolumeManager::new(tmp.path().join("root"), tmp.path().join("config")).memory_backed(false);
    Env { tmp, manager }
}

impl Env {
    fn object(&self, kind: &str, name: &str, keys: &[(&str, &str)]) {
        let dir = self
            .tmp
            .path()
            .join("config")
            .join(kind)
            .join("ns1")
            .join(name);
        fs::create_dir_all(&dir).unwrap();
        for (k, v) in keys {
            fs::write(dir.join(k), v).unwrap();
        }
    }
}

fn file(data: &str, mode: u32) -> FileProjection {
    FileProjection {
        data: data.as_bytes().to_vec(),
        mode,
    }
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

fn mode_of(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

// --- hostPath ---

#[rstest]
#[case::none("", "missing", true)]
#[case::dir_or_create("DirectoryOrCreate", "missing/deep", true)]
#[case::dir_or_create_on_file("DirectoryOrCreate", "file", false)]
#[case::dir("Directory", "dir", true)]
#[case::dir_missing("Directory", "missing", false)]
#[case::dir_on_file("Directory", "file", false)]
#[case::file_or_create("FileOrCreate", "new/parent/f", true)]
#[case::file_or_create_on_dir("FileOrCreate", "dir", false)]
#[case::file("File", "file", true)]
#[case::file_on_dir("File", "dir", false)]
#[case::socket("Socket", "sock", true)]
#[case::socket_on_file("Socket", "file", false)]
#[case::char_device_on_file("CharDevice", "file", false)]
#[case::block_device_on_dir("BlockDevice", "dir", false)]
#[case::unknown("Fifo", "file", false)]
fn host_path_types(#[case] kind: &str, #[case] rel: &str, #[case] ok: bool) {
    let tmp = TempDir::new().unwrap();
    fs::create_dir(tmp.path().join("dir")).unwrap();
    fs::write(tmp.path().join("file"), "x").unwrap();
    let _listener = UnixListener::bind(tmp.path().join("sock")).unwrap();
    let path = tmp.path().join(rel);
    let source = HostPathVolumeSource {
        path: path.to_string_lossy().into_owned(),
        type_: Some(kind.to_owned()),
    };
    let result = host_path::prepare(&source);
    assert_eq!(result.is_ok(), ok, "{result:?}");
    match kind {
        "DirectoryOrCreate" if ok => {
            assert!(path.is_dir());
            assert_eq!(mode_of(&path), 0o755 & !umask());
        }
        "FileOrCreate" if ok => {
            assert!(path.is_file());
            assert_eq!(mode_of(&path), 0o644 & !umask());
        }
        _ => {}
    }
    if let Err(e) = result {
        assert!(e.to_string().contains(tmp.path().to_str().unwrap()), "{e}");
    }
}

fn umask() -> u32 {
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    nix::sys::stat::umask(old);
    old.bits()
}

#[test]
fn host_path_devices_and_paths() {
    let ok = |path: &str, kind: &str| {
        host_path::prepare(&HostPathVolumeSource {
            path: path.to_owned(),
            type_: Some(kind.to_owned()),
        })
    };
    assert!(ok("/dev/null", "CharDevice").is_ok());
    let err = ok("/dev/null", "BlockDevice").unwrap_err();
    assert_eq!(
        err.to_string(),
        "hostPath type check failed: /dev/null is not a block device"
    );
    assert!(ok("relative/path", "").is_err());
    assert!(ok("/tmp/../etc", "").is_err());
}

#[test]
fn host_path_volume_makes_nothing_under_the_pod() {
    let e = env();
    let target = e.tmp.path().join("host");
    let p = pod(json!([{"name": "h", "hostPath": {"path": target, "type": "DirectoryOrCreate"}}]));
    let vols = e.manager.setup(&p, &node()).unwrap();
    assert_eq!(vols.volumes["h"].path, target);
    assert!(!e.manager.pod_dir("uid-1").join("volumes").exists());
}

#[test]
fn host_path_error_names_the_volume() {
    let e = env();
    let p = pod(json!([{"name": "h", "hostPath": {"path": "/nonexistent/x", "type": "File"}}]));
    let err = e.manager.setup(&p, &node()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "volume \"h\": hostPath type check failed: /nonexistent/x does not exist (type File)"
    );
}

// --- atomic writer ---

#[test]
fn atomic_writer_initial_write() {
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path();
    let payload = Payload::from([
        ("a".to_owned(), file("1", 0o644)),
        ("sub/b".to_owned(), file("2", 0o600)),
    ]);
    assert_eq!(
        atomic_writer::write(dir, &payload).unwrap(),
        WriteOutcome::Written
    );
    let ts = fs::read_link(dir.join(DATA_DIR)).unwrap();
    let ts = ts.to_str().unwrap();
    assert!(ts.starts_with("..20") && ts.len() == "..2026_11_24_05_43_54.123456789".len());
    assert_eq!(
        names(dir),
        [ts.to_owned(), DATA_DIR.to_owned(), "a".into(), "sub".into()]
    );
    assert_eq!(fs::read_link(dir.join("a")).unwrap(), Path::new("..data/a"));
    assert_eq!(
        fs::read_link(dir.join("sub")).unwrap(),
        Path::new("..data/sub")
    );
    assert_eq!(fs::read_to_string(dir.join("sub/b")).unwrap(), "2");
    assert_eq!(mode_of(&dir.join("a")), 0o644);
    assert_eq!(mode_of(&dir.join("sub/b")), 0o600);
    assert_eq!(mode_of(&dir.join(ts)), 0o755);
}

#[test]
fn atomic_writer_updates_only_on_change() {
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path();
    let mut payload = Payload::from([
        ("a".to_owned(), file("1", 0o644)),
        ("b".to_owned(), file("2", 0o644)),
    ]);
    atomic_writer::write(dir, &payload).unwrap();
    let first = fs::read_link(dir.join(DATA_DIR)).unwrap();

    assert_eq!(
        atomic_writer::write(dir, &payload).unwrap(),
        WriteOutcome::Unchanged
    );
    assert_eq!(fs::read_link(dir.join(DATA_DIR)).unwrap(), first);

    // A mode change alone is a change.
    payload.insert("b".to_owned(), file("2", 0o400));
    assert_eq!(
        atomic_writer::write(dir, &payload).unwrap(),
        WriteOutcome::Written
    );
    let second = fs::read_link(dir.join(DATA_DIR)).unwrap();
    assert_ne!(second, first);
    assert_eq!(mode_of(&dir.join("b")), 0o400);

    payload.insert("a".to_owned(), file("changed", 0o644));
    atomic_writer::write(dir, &payload).unwrap();
    let third = fs::read_link(dir.join(DATA_DIR)).unwrap();
    assert_ne!(third, second);
    assert_eq!(fs::read_to_string(dir.join("a")).unwrap(), "changed");
    // Only the current generation is left, and no temporary link.
    assert_eq!(
        names(dir),
        [
            third.to_str().unwrap().to_owned(),
            DATA_DIR.to_owned(),
            "a".into(),
            "b".into()
        ]
    );
    assert!(!dir.join(DATA_DIR_TMP).exists());
}

#[test]
fn atomic_writer_removes_links_of_removed_keys() {
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path();
    let mut payload = Payload::from([
        ("a".to_owned(), file("1", 0o644)),
        ("gone".to_owned(), file("2", 0o644)),
        ("d/x".to_owned(), file("3", 0o644)),
    ]);
    atomic_writer::write(dir, &payload).unwrap();
    payload.remove("gone");
    payload.remove("d/x");
    assert_eq!(
        atomic_writer::write(dir, &payload).unwrap(),
        WriteOutcome::Written
    );
    let ts = fs::read_link(dir.join(DATA_DIR)).unwrap();
    assert_eq!(
        names(dir),
        [
            ts.to_str().unwrap().to_owned(),
            DATA_DIR.to_owned(),
            "a".into()
        ]
    );
    assert_eq!(names(&dir.join(&ts)), ["a"]);
}

#[test]
fn atomic_writer_cleans_a_crashed_write() {
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path();
    fs::create_dir(dir.join("..2020_01_01_00_00_00.000000001")).unwrap();
    std::os::unix::fs::symlink("nowhere", dir.join(DATA_DIR_TMP)).unwrap();
    let payload = Payload::from([("a".to_owned(), file("1", 0o644))]);
    atomic_writer::write(dir, &payload).unwrap();
    let ts = fs::read_link(dir.join(DATA_DIR)).unwrap();
    assert_eq!(
        names(dir),
        [
            ts.to_str().unwrap().to_owned(),
            DATA_DIR.to_owned(),
            "a".into()
        ]
    );
}

#[rstest]
#[case("/abs")]
#[case("../up")]
#[case("a/../b")]
#[case("..data")]
#[case("..hidden")]
#[case("")]
#[case("./")]
fn atomic_writer_refuses_paths(#[case] path: &str) {
    let tmp = TempDir::new().unwrap();
    let payload = Payload::from([(path.to_owned(), file("1", 0o644))]);
    assert!(matches!(
        atomic_writer::write(tmp.path(), &payload),
        Err(atomic_writer::AtomicWriteError::InvalidPath { .. })
    ));
    assert!(names(tmp.path()).is_empty());
}

#[test]
fn atomic_writer_cleans_paths() {
    assert_eq!(atomic_writer::clean_path("./a//b/").unwrap(), "a/b");
    assert_eq!(atomic_writer::clean_path("a..b").unwrap(), "a..b");
}

// --- configMap and secret ---

fn volume_dir(e: &Env, plugin: &str, name: &str) -> std::path::PathBuf {
    e.manager
        .pod_dir("uid-1")
        .join("volumes")
        .join(format!("kubernetes.io~{plugin}"))
        .join(name)
}

#[test]
fn config_map_all_keys_default_mode() {
    let e = env();
    e.object("configmaps", "cfg", &[("app.conf", "x=1"), ("other", "y")]);
    let p = pod(json!([{"name": "v", "configMap": {"name": "cfg"}}]));
    e.manager.setup(&p, &node()).unwrap();
    let dir = volume_dir(&e, "configmap", "v");
    assert_eq!(fs::read_to_string(dir.join("app.conf")).unwrap(), "x=1");
    assert_eq!(mode_of(&dir.join("app.conf")), 0o644);
    assert_eq!(mode_of(&dir.join("other")), 0o644);
}

#[test]
fn config_map_items_and_modes() {
    let e = env();
    e.object("configmaps", "cfg", &[("a", "1"), ("b", "2")]);
    let p = pod(json!([{"name": "v", "configMap": {
        "name": "cfg",
        "defaultMode": 0o640,
        "items": [{"key": "a", "path": "dir/a.txt"}, {"key": "b", "path": "b", "mode": 0o400}],
    }}]));
    e.manager.setup(&p, &node()).unwrap();
    let dir = volume_dir(&e, "configmap", "v");
    assert_eq!(
        names(&dir)
            .into_iter()
            .filter(|n| !n.starts_with(".."))
            .collect::<Vec<_>>(),
        ["b", "dir"]
    );
    assert_eq!(fs::read_to_string(dir.join("dir/a.txt")).unwrap(), "1");
    assert_eq!(mode_of(&dir.join("dir/a.txt")), 0o640);
    assert_eq!(mode_of(&dir.join("b")), 0o400);
}

#[test]
fn config_map_missing_fails_unless_optional() {
    let e = env();
    let p = pod(json!([{"name": "v", "configMap": {"name": "nope"}}]));
    let err = e.manager.setup(&p, &node()).unwrap_err();
    assert!(
        err.to_string().contains("configMap ns1/nope not found"),
        "{err}"
    );
    // All or nothing: no trace of the pod.
    assert!(!e.manager.pod_dir("uid-1").exists());

    let p = pod(json!([{"name": "v", "configMap": {"name": "nope", "optional": true}}]));
    e.manager.setup(&p, &node()).unwrap();
    let dir = volume_dir(&e, "configmap", "v");
    assert_eq!(
        names(
            &fs::read_link(dir.join(DATA_DIR))
                .map(|t| dir.join(t))
                .unwrap()
        )
        .len(),
        0
    );
}

#[test]
fn missing_key_fails_unless_optional() {
    let e = env();
    e.object("secrets", "s", &[("a", "1")]);
    let items = json!([{"key": "a", "path": "a"}, {"key": "nokey", "path": "n"}]);
    let p = pod(json!([{"name": "v", "secret": {"secretName": "s", "items": items}}]));
    let err = e.manager.setup(&p, &node()).unwrap_err();
    assert!(err.to_string().contains("has no key \"nokey\""), "{err}");

    let p = pod(
        json!([{"name": "v", "secret": {"secretName": "s", "items": items, "optional": true}}]),
    );
    e.manager.setup(&p, &node()).unwrap();
    let dir = volume_dir(&e, "secret", "v");
    assert_eq!(fs::read_to_string(dir.join("a")).unwrap(), "1");
    assert!(!dir.join("n").exists());
}

#[test]
fn setup_undoes_earlier_volumes_on_error() {
    let e = env();
    e.object("configmaps", "cfg", &[("a", "1")]);
    let p = pod(json!([
        {"name": "ok", "configMap": {"name": "cfg"}},
        {"name": "scratch", "emptyDir": {}},
        {"name": "bad", "secret": {"secretName": "missing"}},
    ]));
    assert!(e.manager.setup(&p, &node()).is_err());
    assert!(!e.manager.pod_dir("uid-1").exists());
}

#[test]
fn update_rewrites_changed_content() {
    let e = env();
    e.object("configmaps", "cfg", &[("a", "1"), ("b", "2")]);
    let p = pod(json!([{"name": "v", "configMap": {"name": "cfg"}}]));
    e.manager.setup(&p, &node()).unwrap();
    let dir = volume_dir(&e, "configmap", "v");
    let first = fs::read_link(dir.join(DATA_DIR)).unwrap();
    e.manager.update(&p, &node()).unwrap();
    assert_eq!(fs::read_link(dir.join(DATA_DIR)).unwrap(), first);

    e.object("configmaps", "cfg", &[("a", "new")]);
    fs::remove_file(e.tmp.path().join("config/configmaps/ns1/cfg/b")).unwrap();
    e.manager.update(&p, &node()).unwrap();
    assert_ne!(fs::read_link(dir.join(DATA_DIR)).unwrap(), first);
    assert_eq!(fs::read_to_string(dir.join("a")).unwrap(), "new");
    assert!(fs::symlink_metadata(dir.join("b")).is_err());
}

#[test]
fn invalid_mode_is_refused() {
    let e = env();
    e.object("configmaps", "cfg", &[("a", "1")]);
    let p = pod(json!([{"name": "v", "configMap": {"name": "cfg", "defaultMode": 0o1777}}]));
    let err = e.manager.setup(&p, &node()).unwrap_err();
    assert!(err.to_string().contains("not within 0 and 0777"), "{err}");
}

// --- downwardAPI and projected ---

#[test]
fn downward_api_formats_as_upstream() {
    let e = env();
    let p = pod(
        json!([{"name": "d", "downwardAPI": {"defaultMode": 0o600, "items": [
            {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}},
            {"path": "ns", "fieldRef": {"fieldPath": "metadata.namespace"}},
            {"path": "uid", "fieldRef": {"fieldPath": "metadata.uid"}},
            {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}, "mode": 0o444},
            {"path": "annotations", "fieldRef": {"fieldPath": "metadata.annotations"}},
            {"path": "tier", "fieldRef": {"fieldPath": "metadata.labels['tier']"}},
            {"path": "mem", "resourceFieldRef": {"containerName": "c", "resource": "limits.memory", "divisor": "1Mi"}},
            {"path": "cpu", "resourceFieldRef": {"containerName": "c", "resource": "limits.cpu", "divisor": "1m"}},
            {"path": "cpu-req", "resourceFieldRef": {"containerName": "c", "resource": "requests.cpu"}},
        ]}}]),
    );
    e.manager.setup(&p, &node()).unwrap();
    let dir = volume_dir(&e, "downward-api", "d");
    let read = |f: &str| fs::read_to_string(dir.join(f)).unwrap();
    assert_eq!(read("name"), "web");
    assert_eq!(read("ns"), "ns1");
    assert_eq!(read("uid"), "uid-1");
    assert_eq!(read("labels"), "app=\"web\"\ntier=\"front\"");
    assert_eq!(read("annotations"), "note=\"a \\\"b\\\"\\nc\"");
    assert_eq!(read("tier"), "front");
    assert_eq!(read("mem"), "64");
    // No CPU limit: the node's allocatable.
    assert_eq!(read("cpu"), "2000");
    // 250m in whole cores, rounded up.
    assert_eq!(read("cpu-req"), "1");
    assert_eq!(mode_of(&dir.join("labels")), 0o444);
    assert_eq!(mode_of(&dir.join("name")), 0o600);
}

#[rstest]
#[case(json!({"path": "x", "fieldRef": {"fieldPath": "spec.nodeName"}}), "fieldPath")]
#[case(json!({"path": "x", "resourceFieldRef": {"resource": "limits.cpu"}}), "no container named")]
#[case(json!({"path": "x", "resourceFieldRef": {"containerName": "c", "resource": "limits.gpu"}}), "unsupported resource")]
#[case(json!({"path": "x"}), "neither fieldRef")]
fn downward_api_errors(#[case] item: Value, #[case] message: &str) {
    let e = env();
    let p = pod(json!([{"name": "d", "downwardAPI": {"items": [item]}}]));
    let err = e.manager.setup(&p, &node()).unwrap_err();
    assert!(err.to_string().contains(message), "{err}");
}

#[test]
fn projected_combines_sources() {
    let e = env();
    e.object("configmaps", "cfg", &[("conf", "c")]);
    e.object("secrets", "s", &[("token", "t"), ("other", "o")]);
    let p = pod(
        json!([{"name": "p", "projected": {"defaultMode": 0o440, "sources": [
            {"configMap": {"name": "cfg"}},
            {"secret": {"name": "s", "items": [{"key": "token", "path": "sec/token", "mode": 0o400}]}},
            {"downwardAPI": {"items": [{"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]}},
            {"configMap": {"name": "absent", "optional": true}},
        ]}}]),
    );
    e.manager.setup(&p, &node()).unwrap();
    let dir = volume_dir(&e, "projected", "p");
    assert_eq!(fs::read_to_string(dir.join("conf")).unwrap(), "c");
    assert_eq!(fs::read_to_string(dir.join("sec/token")).unwrap(), "t");
    assert!(
        fs::read_to_string(dir.join("labels"))
            .unwrap()
            .starts_with("app=")
    );
    assert_eq!(mode_of(&dir.join("conf")), 0o440);
    assert_eq!(mode_of(&dir.join("sec/token")), 0o400);
    assert!(!dir.join("other").exists());
}

#[test]
fn projected_refuses_what_needs_the_api_server_and_conflicts() {
    let e = env();
    let p = pod(json!([{"name": "p", "projected": {"sources": [
        {"serviceAccountToken": {"path": "token"}},
    ]}}]));
    let err = e.manager.setup(&p, &node()).unwrap_err();
    assert!(matches!(
        &err,
        VolumeError::Payload { source, .. }
            if matches!(**source, payload::PayloadError::Unsupported("serviceAccountToken"))
    ));
    assert!(err.to_string().contains("unsupported in standalone mode"));

    e.object("configmaps", "a", &[("k", "1")]);
    e.object("configmaps", "b", &[("k", "2")]);
    let p = pod(json!([{"name": "p", "projected": {"sources": [
        {"configMap": {"name": "a"}},
        {"configMap": {"name": "b"}},
    ]}}]));
    let err = e.manager.setup(&p, &node()).unwrap_err();
    assert!(err.to_string().contains("both write \"k\""), "{err}");
}

// --- mounts ---

fn container(mounts: Value, privileged: bool) -> Container {
    serde_json::from_value(json!({
        "name": "c",
        "image": "busybox",
        "volumeMounts": mounts,
        "securityContext": {"privileged": privileged},
    }))
    .unwrap()
}

#[test]
fn mounts_for_maps_volumes() {
    let e = env();
    e.object("configmaps", "cfg", &[("a", "1")]);
    let host = e.tmp.path().join("host");
    let p = pod(json!([
        {"name": "scratch", "emptyDir": {}},
        {"name": "cfg", "configMap": {"name": "cfg"}},
        {"name": "h", "hostPath": {"path": host, "type": "DirectoryOrCreate"}},
    ]));
    let vols = e.manager.setup(&p, &node()).unwrap();
    let scratch = volume_dir(&e, "empty-dir", "scratch");
    assert_eq!(mode_of(&scratch), 0o777);
    let c = container(
        json!([
            {"name": "scratch", "mountPath": "/scratch"},
            {"name": "scratch", "mountPath": "/sub", "subPath": "a/b", "readOnly": true},
            {"name": "cfg", "mountPath": "/etc/cfg"},
            {"name": "h", "mountPath": "/h", "mountPropagation": "HostToContainer"},
            {"name": "h", "mountPath": "/h2", "mountPropagation": "Bidirectional"},
        ]),
        true,
    );
    let mounts = vols.mounts_for(&c).unwrap();
    let m: Vec<(&str, String, bool, i32, bool)> = mounts
        .iter()
        .map(|m| {
            (
                m.container_path.as_str(),
                m.host_path.clone(),
                m.readonly,
                m.propagation,
                m.selinux_relabel,
            )
        })
        .collect();
    let s = |p: &Path| p.to_string_lossy().into_owned();
    let private = MountPropagation::PropagationPrivate as i32;
    assert_eq!(
        m,
        [
            ("/scratch", s(&scratch), false, private, true),
            ("/sub", s(&scratch.join("a/b")), true, private, true),
            (
                "/etc/cfg",
                s(&volume_dir(&e, "configmap", "cfg")),
                true,
                private,
                true
            ),
            (
                "/h",
                s(&host),
                false,
                MountPropagation::PropagationHostToContainer as i32,
                false
            ),
            (
                "/h2",
                s(&host),
                false,
                MountPropagation::PropagationBidirectional as i32,
                false
            ),
        ]
    );
    assert!(scratch.join("a/b").is_dir());
}

#[rstest]
#[case(json!({"name": "scratch", "mountPath": "/x", "subPath": "/etc"}), "must be relative")]
#[case(json!({"name": "scratch", "mountPath": "/x", "subPath": "a/../../b"}), "must not contain '..'")]
#[case(json!({"name": "scratch", "mountPath": "/x", "subPath": "escape"}), "leaves the volume")]
#[case(json!({"name": "scratch", "mountPath": "/x", "mountPropagation": "Bidirectional"}), "only to privileged")]
#[case(json!({"name": "scratch", "mountPath": "/x", "mountPropagation": "Sideways"}), "unknown mountPropagation")]
#[case(json!({"name": "scratch", "mountPath": "/x", "subPathExpr": "$(X)"}), "subPathExpr")]
#[case(json!({"name": "nope", "mountPath": "/x"}), "names no volume")]
fn mounts_for_refuses(#[case] mount: Value, #[case] message: &str) {
    let e = env();
    let p = pod(json!([{"name": "scratch", "emptyDir": {}}]));
    let vols = e.manager.setup(&p, &node()).unwrap();
    std::os::unix::fs::symlink(
        "/etc",
        volume_dir(&e, "empty-dir", "scratch").join("escape"),
    )
    .unwrap();
    let err = vols
        .mounts_for(&container(json!([mount]), false))
        .unwrap_err();
    assert!(err.to_string().contains(message), "{err}");
}

// --- emptyDir, teardown ---

#[test]
fn teardown_removes_the_pod() {
    let e = env();
    e.object("secrets", "s", &[("a", "1")]);
    let p = pod(json!([
        {"name": "scratch", "emptyDir": {}},
        {"name": "s", "secret": {"secretName": "s"}},
    ]));
    e.manager.setup(&p, &node()).unwrap();
    fs::write(volume_dir(&e, "empty-dir", "scratch").join("f"), "x").unwrap();
    e.manager.teardown("uid-1").unwrap();
    assert!(!e.manager.pod_dir("uid-1").exists());
    // Twice is fine.
    e.manager.teardown("uid-1").unwrap();
    assert!(e.manager.teardown("../x").is_err());
}

#[test]
fn unsupported_media_and_volumes() {
    let e = env();
    let p = pod(json!([{"name": "v", "emptyDir": {"medium": "HugePages"}}]));
    assert!(
        e.manager
            .setup(&p, &node())
            .unwrap_err()
            .to_string()
            .contains("HugePages")
    );
    let p = pod(json!([{"name": "v", "emptyDir": {"medium": "Memory", "sizeLimit": "-1"}}]));
    assert!(
        e.manager
            .setup(&p, &node())
            .unwrap_err()
            .to_string()
            .contains("negative")
    );
    let p = pod(json!([{"name": "v", "persistentVolumeClaim": {"claimName": "x"}}]));
    assert!(matches!(
        e.manager.setup(&p, &node()),
        Err(VolumeError::Unsupported(_))
    ));
    let p: Pod =
        serde_json::from_value(json!({"metadata": {"name": "x"}, "spec": {"containers": []}}))
            .unwrap();
    assert!(matches!(
        e.manager.setup(&p, &node()),
        Err(VolumeError::PodUid { .. })
    ));
}

/// The tmpfs options of the mount on `dir`, from mountinfo.
fn mount_options(dir: &Path) -> Option<String> {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let dir = dir.to_str().unwrap();
    info.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        let sep = fields.iter().position(|f| *f == "-")?;
        (fields.get(4) == Some(&dir) && fields.get(sep + 1) == Some(&"tmpfs"))
            .then(|| fields.get(sep + 3).map(|s| (*s).to_owned()))?
    })
}

#[test]
fn memory_empty_dir_and_secrets_on_tmpfs() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root to mount tmpfs");
        return;
    }
    let e = env();
    let manager = e.manager.clone().memory_backed(true);
    e.object("secrets", "s", &[("a", "1")]);
    let p = pod(json!([
        {"name": "mem", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}},
        {"name": "unsized", "emptyDir": {"medium": "Memory"}},
        {"name": "s", "secret": {"secretName": "s"}},
    ]));
    let result = std::panic::catch_unwind(|| {
        manager.setup(&p, &node()).unwrap();
        // Twice: the mounts are kept, not stacked.
        manager.setup(&p, &node()).unwrap();
        let mem = volume_dir(&e, "empty-dir", "mem");
        let options = mount_options(&mem).expect("a tmpfs on the emptyDir");
        assert!(options.contains("size=1024k"), "{options}");
        assert!(options.contains("mode=777"), "{options}");
        let whole = mount_options(&volume_dir(&e, "empty-dir", "unsized")).unwrap();
        assert!(whole.contains("size=524288k"), "{whole}");
        let secret = volume_dir(&e, "secret", "s");
        assert!(mount_options(&secret).is_some());
        assert_eq!(fs::read_to_string(secret.join("a")).unwrap(), "1");
        let count = fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter(|l| l.contains(mem.to_str().unwrap()))
            .count();
        assert_eq!(count, 1);
    });
    manager.teardown("uid-1").unwrap();
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!info.contains(e.tmp.path().to_str().unwrap()));
    assert!(!manager.pod_dir("uid-1").exists());
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}
