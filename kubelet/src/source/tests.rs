//! The watcher against a real directory (a tempdir; no root needed).

use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::*;

fn pod_yaml(name: &str, image: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  containers:\n  - name: app\n    image: {image}\n"
    )
}

fn node() -> NodeName {
    NodeName::new("node1").unwrap()
}

fn start(dir: &Path) -> (ManifestSource, watch::Receiver<Arc<Snapshot>>) {
    let source = ManifestSource::start(SourceConfig::new(dir, node())).unwrap();
    let updates = source.subscribe();
    (source, updates)
}

fn names(snapshot: &Snapshot) -> Vec<String> {
    let mut names: Vec<String> = snapshot
        .pods()
        .map(|p| p.metadata.name.clone().unwrap_or_default())
        .collect();
    names.sort();
    names
}

fn uid_of(snapshot: &Snapshot, name: &str) -> Option<String> {
    snapshot
        .pods()
        .find(|p| p.metadata.name.as_deref() == Some(name))
        .and_then(|p| p.metadata.uid.clone())
}

fn seen_of(snapshot: &Snapshot, name: &str) -> Option<String> {
    snapshot
        .pods()
        .find(|p| p.metadata.name.as_deref() == Some(name))
        .and_then(|p| {
            p.metadata
                .annotations
                .as_ref()?
                .get(CONFIG_SEEN_ANNOTATION)
                .cloned()
        })
}

/// The first snapshot (the current one included) that satisfies `done`, within 5 s.
async fn wait_for(
    updates: &mut watch::Receiver<Arc<Snapshot>>,
    what: &str,
    done: impl Fn(&Snapshot) -> bool,
) -> Arc<Snapshot> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let snapshot = updates.borrow_and_update().clone();
        if done(&snapshot) {
            return snapshot;
        }
        match tokio::time::timeout_at(deadline, updates.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => panic!("channel closed waiting for {what}"),
            Err(_) => panic!(
                "timed out waiting for {what}; last: {:?} {:?}",
                names(&snapshot),
                snapshot.unavailable
            ),
        }
    }
}

#[test]
fn ignored_names() {
    for name in [
        ".web.yaml",
        ".web.yaml.swp",
        "web.yaml~",
        "#web.yaml#",
        "..data",
    ] {
        assert!(is_ignored(OsStr::new(name)), "{name}");
    }
    for name in ["web.yaml", "web", "web#1.yaml", "a~b"] {
        assert!(!is_ignored(OsStr::new(name)), "{name}");
    }
}

#[test]
fn scan_reads_files_in_name_order_and_skips_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("b.yaml"), pod_yaml("b", "busybox")).unwrap();
    fs::write(dir.path().join("a.json"), r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"a"},"spec":{"containers":[{"name":"c","image":"i"}]}}"#).unwrap();
    fs::write(
        dir.path().join(".hidden.yaml"),
        pod_yaml("hidden", "busybox"),
    )
    .unwrap();
    fs::write(dir.path().join("b.yaml~"), pod_yaml("b", "busybox")).unwrap();
    fs::create_dir(dir.path().join("sub")).unwrap();
    fs::write(dir.path().join("sub/c.yaml"), pod_yaml("c", "busybox")).unwrap();
    nix::unistd::mkfifo(&dir.path().join("fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    std::os::unix::fs::symlink(dir.path().join("b.yaml"), dir.path().join("link.yaml")).unwrap();
    std::os::unix::fs::symlink(dir.path().join("gone"), dir.path().join("dangling.yaml")).unwrap();

    let snapshot = scan(dir.path(), &node());
    let paths: Vec<_> = snapshot
        .files
        .iter()
        .map(|f| f.path.file_name().unwrap().to_owned())
        .collect();
    assert_eq!(paths, ["a.json", "b.yaml", "link.yaml"]);
    assert_eq!(names(&snapshot), ["a-node1", "b-node1"]);
    // link.yaml defines b again: the later file is the error.
    let errors: Vec<String> = snapshot.errors().map(ToString::to_string).collect();
    assert_eq!(
        errors,
        [format!(
            "{}: pod default/b-node1 is also defined in {}",
            dir.path().join("link.yaml").display(),
            dir.path().join("b.yaml").display()
        )]
    );
    assert!(snapshot.unavailable.is_none());
}

#[test]
fn scan_of_a_missing_directory() {
    let dir = tempfile::tempdir().unwrap();
    let snapshot = scan(&dir.path().join("nope"), &node());
    assert!(matches!(
        snapshot.unavailable,
        Some(SourceError::Missing { .. })
    ));
    assert!(snapshot.files.is_empty());

    let file = dir.path().join("file");
    fs::write(&file, "").unwrap();
    let snapshot = scan(&file, &node());
    assert!(matches!(
        snapshot.unavailable,
        Some(SourceError::NotADirectory { .. })
    ));
}

#[tokio::test]
async fn add_modify_remove() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("a.yaml"), pod_yaml("a", "busybox:1")).unwrap();
    let (_source, mut updates) = start(dir.path());
    let first = updates.borrow_and_update().clone();
    assert_eq!(first.generation, 1);
    assert_eq!(names(&first), ["a-node1"]);
    let a_uid = uid_of(&first, "a-node1").unwrap();
    let a_seen = seen_of(&first, "a-node1").unwrap();

    let written = Instant::now();
    fs::write(dir.path().join("b.yaml"), pod_yaml("b", "busybox:1")).unwrap();
    let added = wait_for(&mut updates, "b added", |s| {
        names(s) == ["a-node1", "b-node1"]
    })
    .await;
    assert!(
        written.elapsed() < Duration::from_secs(1),
        "took {:?}",
        written.elapsed()
    );
    // The unchanged pod keeps its UID and the time it was first seen.
    assert_eq!(uid_of(&added, "a-node1").unwrap(), a_uid);
    assert_eq!(seen_of(&added, "a-node1").unwrap(), a_seen);

    fs::write(dir.path().join("a.yaml"), pod_yaml("a", "busybox:2")).unwrap();
    let modified = wait_for(&mut updates, "a modified", |s| {
        uid_of(s, "a-node1").is_some_and(|uid| uid != a_uid)
    })
    .await;
    assert_ne!(seen_of(&modified, "a-node1"), None);

    fs::remove_file(dir.path().join("a.yaml")).unwrap();
    wait_for(&mut updates, "a removed", |s| names(s) == ["b-node1"]).await;
}

#[tokio::test]
async fn renames() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("a.yaml"), pod_yaml("a", "busybox")).unwrap();
    let (_source, mut updates) = start(dir.path());
    let first = updates.borrow_and_update().clone();
    let uid = uid_of(&first, "a-node1").unwrap();

    // Another file name is another pod (the path is part of the UID).
    fs::rename(dir.path().join("a.yaml"), dir.path().join("z.yaml")).unwrap();
    let renamed = wait_for(&mut updates, "rename", |s| {
        s.files.len() == 1 && s.files[0].path.ends_with("z.yaml")
    })
    .await;
    assert_ne!(uid_of(&renamed, "a-node1").unwrap(), uid);

    // Renamed to a hidden name, it is gone.
    fs::rename(dir.path().join("z.yaml"), dir.path().join(".z.yaml")).unwrap();
    wait_for(&mut updates, "hidden", |s| s.files.is_empty()).await;

    // An atomic write: a hidden temporary renamed into place.
    fs::write(dir.path().join(".tmp-b"), pod_yaml("b", "busybox")).unwrap();
    fs::rename(dir.path().join(".tmp-b"), dir.path().join("b.yaml")).unwrap();
    wait_for(&mut updates, "atomic write", |s| names(s) == ["b-node1"]).await;
}

#[tokio::test]
async fn hidden_files_cause_no_update() {
    let dir = tempfile::tempdir().unwrap();
    let (_source, mut updates) = start(dir.path());
    updates.borrow_and_update();
    fs::write(dir.path().join(".swap"), pod_yaml("x", "busybox")).unwrap();
    fs::write(dir.path().join("x.yaml~"), pod_yaml("x", "busybox")).unwrap();
    let changed = tokio::time::timeout(Duration::from_millis(600), updates.changed()).await;
    assert!(changed.is_err(), "an ignored file published an update");
    assert!(updates.borrow().files.is_empty());
}

#[tokio::test]
async fn bad_files_do_not_hide_good_ones() {
    let dir = tempfile::tempdir().unwrap();
    let (_source, mut updates) = start(dir.path());
    fs::write(dir.path().join("good.yaml"), pod_yaml("good", "busybox")).unwrap();
    fs::write(dir.path().join("bad.yaml"), pod_yaml("Bad", "")).unwrap();
    fs::write(dir.path().join("junk.yaml"), "{ not yaml: [").unwrap();
    let snapshot = wait_for(&mut updates, "three files", |s| s.files.len() == 3).await;
    assert_eq!(names(&snapshot), ["good-node1"]);
    let errors: Vec<String> = snapshot.errors().map(ToString::to_string).collect();
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert!(errors[0].contains("invalid pod \"Bad\""), "{}", errors[0]);
    assert!(
        errors[0].contains("spec.containers[0].image: Required value"),
        "{}",
        errors[0]
    );
    assert!(
        errors[1].contains("junk.yaml: not valid JSON"),
        "{}",
        errors[1]
    );

    // Fixing the bad file brings its pod.
    fs::write(dir.path().join("bad.yaml"), pod_yaml("bad", "busybox")).unwrap();
    wait_for(&mut updates, "bad fixed", |s| {
        names(s) == ["bad-node1", "good-node1"]
    })
    .await;
}

#[tokio::test]
async fn a_burst_of_files_is_few_updates() {
    let dir = tempfile::tempdir().unwrap();
    let (_source, mut updates) = start(dir.path());
    let before = updates.borrow_and_update().generation;
    let written = Instant::now();
    for i in 0..100 {
        fs::write(
            dir.path().join(format!("pod-{i:03}.yaml")),
            pod_yaml(&format!("pod-{i}"), "busybox"),
        )
        .unwrap();
    }
    let snapshot = wait_for(&mut updates, "100 pods", |s| s.pods().count() == 100).await;
    assert!(
        written.elapsed() < Duration::from_secs(2),
        "took {:?}",
        written.elapsed()
    );
    let published = snapshot.generation - before;
    assert!(published <= 3, "{published} updates for one burst");
    assert_eq!(snapshot.errors().count(), 0);
}

#[tokio::test]
async fn a_directory_that_comes_and_goes() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("manifests");
    let (_source, mut updates) = start(&dir);
    assert!(matches!(
        updates.borrow_and_update().unavailable,
        Some(SourceError::Missing { .. })
    ));

    fs::create_dir(&dir).unwrap();
    fs::write(dir.join("a.yaml"), pod_yaml("a", "busybox")).unwrap();
    wait_for(&mut updates, "directory created", |s| {
        names(s) == ["a-node1"]
    })
    .await;

    fs::remove_dir_all(&dir).unwrap();
    wait_for(&mut updates, "directory removed", |s| {
        matches!(s.unavailable, Some(SourceError::Missing { .. })) && s.files.is_empty()
    })
    .await;

    fs::create_dir(&dir).unwrap();
    fs::write(dir.join("b.yaml"), pod_yaml("b", "busybox")).unwrap();
    wait_for(&mut updates, "directory back", |s| names(s) == ["b-node1"]).await;
}

#[tokio::test]
async fn dropping_the_source_closes_the_channel() {
    let dir = tempfile::tempdir().unwrap();
    let (source, mut updates) = start(dir.path());
    updates.borrow_and_update();
    let stopped = Instant::now();
    drop(source);
    assert!(stopped.elapsed() < Duration::from_millis(500));
    assert!(updates.changed().await.is_err());
}
