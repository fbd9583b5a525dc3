use std::collections::HashSet;
use std::time::{Duration, Instant};

use rstest::rstest;

use super::*;

const S: i64 = 1_000_000_000;

fn c(id: &str, pod: &str, name: &str, exited: bool, created_s: i64) -> GcContainer {
    GcContainer {
        id: id.to_owned(),
        pod_uid: pod.to_owned(),
        name: name.to_owned(),
        sandbox_id: format!("sb-{pod}"),
        attempt: u32::try_from(created_s).unwrap_or(0),
        exited,
        created_at: created_s * S,
    }
}

fn live(uids: &[&str]) -> HashSet<String> {
    uids.iter().map(|u| (*u).to_owned()).collect()
}

#[test]
fn the_newest_exited_instance_stays_and_running_ones_are_not_counted() {
    let containers = [
        c("a0", "p", "a", true, 1),
        c("a1", "p", "a", true, 2),
        c("a2", "p", "a", true, 3),
        c("a3", "p", "a", false, 4),
        c("b0", "p", "b", true, 1),
        c("i0", "p", "init", true, 0),
    ];
    let remove = containers_to_remove(
        &ContainerPolicy::default(),
        &containers,
        &live(&["p"]),
        100 * S,
    );
    assert_eq!(remove, ["a0", "a1"]);
}

#[test]
fn the_latest_instance_stays_even_with_no_exited_instance_kept() {
    let policy = ContainerPolicy {
        max_per_pod_container: 0,
        max_containers: 0,
        ..ContainerPolicy::default()
    };
    let containers = [
        // Backing off: its latest instance exited, the worker needs it.
        c("a0", "p", "a", true, 1),
        c("a1", "p", "a", true, 2),
        // Running again: the exited ones may all go.
        c("b0", "p", "b", true, 1),
        c("b1", "p", "b", false, 2),
        // No worker: nothing is needed.
        c("g0", "gone", "a", true, 3),
    ];
    let remove = containers_to_remove(&policy, &containers, &live(&["p"]), 100 * S);
    assert_eq!(remove, ["a0", "b0", "g0"]);
}

#[test]
fn a_pod_without_a_worker_loses_every_exited_container() {
    let containers = [
        c("a0", "gone", "a", true, 1),
        c("a1", "gone", "a", true, 2),
        c("r", "gone", "r", false, 2),
    ];
    let remove = containers_to_remove(
        &ContainerPolicy::default(),
        &containers,
        &live(&[]),
        100 * S,
    );
    assert_eq!(remove, ["a0", "a1"]);
}

#[test]
fn young_instances_wait_for_the_minimum_age() {
    let policy = ContainerPolicy {
        min_age: Duration::from_secs(60),
        ..ContainerPolicy::default()
    };
    let containers = [
        c("a0", "p", "a", true, 1),
        c("a1", "p", "a", true, 30),
        c("a2", "p", "a", true, 90),
    ];
    // At 100 s only a0 and a1 are old enough; a1 is the newest of those,
    // kept as upstream keeps the newest evictable ones.
    let remove = containers_to_remove(&policy, &containers, &live(&["p"]), 100 * S);
    assert_eq!(remove, ["a0"]);
}

#[rstest]
// No per-unit limit, a cap of 2: the oldest go.
#[case(-1, 2, &["a0", "a1", "b0"])]
// A cap of 3 over two units: an equal share, one each.
#[case(5, 3, &["a0", "a1", "b0"])]
// A cap of 4: two each, and then one too many: the oldest.
#[case(5, 4, &["a0"])]
// Keep all: nothing.
#[case(-1, -1, &[])]
fn the_node_cap(#[case] per: i32, #[case] max: i32, #[case] expected: &[&str]) {
    let policy = ContainerPolicy {
        min_age: Duration::ZERO,
        max_per_pod_container: per,
        max_containers: max,
    };
    let containers = [
        c("a0", "p", "a", true, 1),
        c("a1", "p", "a", true, 2),
        c("a2", "p", "a", true, 5),
        c("b0", "q", "b", true, 3),
        c("b1", "q", "b", true, 4),
    ];
    let remove = containers_to_remove(&policy, &containers, &live(&["p", "q"]), 100 * S);
    assert_eq!(remove, expected);
}

fn sb(id: &str, pod: &str, ready: bool, created_s: i64) -> GcSandbox {
    GcSandbox {
        id: id.to_owned(),
        pod_uid: pod.to_owned(),
        ready,
        created_at: created_s * S,
    }
}

#[test]
fn sandboxes_go_when_dead_empty_and_not_current() {
    let sandboxes = [
        // A live pod: its newest stays even if dead and empty.
        sb("p-old", "p", false, 1),
        sb("p-new", "p", false, 2),
        // A gone pod: empty and dead goes, with containers stays.
        sb("g-empty", "g", false, 1),
        sb("g-used", "g", false, 2),
        // Ready sandboxes stay.
        sb("h-ready", "h", true, 1),
    ];
    let mut used = c("x", "g", "a", true, 1);
    used.sandbox_id = "g-used".to_owned();
    let remove = sandboxes_to_remove(&sandboxes, &[used], &live(&["p"]));
    assert_eq!(remove, ["g-empty", "p-old"]);
}

fn img(id: &str, size: u64) -> GcImage {
    GcImage {
        id: id.to_owned(),
        size,
        pinned: false,
    }
}

#[test]
fn images_go_least_recently_used_first_until_under_the_low_threshold() {
    let t0 = Instant::now();
    let policy = ImagePolicy::default();
    let images = [
        img("old", 30),
        img("used", 50),
        img("recent", 30),
        img("new", 30),
    ];
    let mut pinned = img("pinned", 100);
    pinned.pinned = true;
    let mut all = images.to_vec();
    all.push(pinned);
    let mut tracker = ImageTracker::default();
    // "old" and "recent" last used at t0 and t0+1m; "new" appears at t0+5m.
    tracker.observe(&all[..2], &live(&["old", "used"]), t0);
    let mut later: Vec<GcImage> = all.clone();
    later.retain(|i| i.id != "new");
    tracker.observe(
        &later,
        &live(&["recent", "used"]),
        t0 + Duration::from_secs(60),
    );
    let now = t0 + Duration::from_secs(300);
    tracker.observe(&all, &live(&["used"]), now);
    let in_use = live(&["used"]);

    // 90% used of 1000: down to 80% frees 100 bytes: "old" then "recent"
    // (30 + 30 is not enough, "new" is too young).
    let fs = FsUsage {
        capacity: 1000,
        available: 100,
    };
    assert_eq!(
        images_to_remove(&policy, &tracker, &all, &in_use, fs, now),
        ["old", "recent"]
    );
    // Under the high threshold: nothing.
    let fs = FsUsage {
        capacity: 1000,
        available: 160,
    };
    assert!(images_to_remove(&policy, &tracker, &all, &in_use, fs, now).is_empty());
    // Just above it, freeing 45 bytes takes "old" and "recent".
    let fs = FsUsage {
        capacity: 1000,
        available: 155,
    };
    assert_eq!(
        images_to_remove(&policy, &tracker, &all, &in_use, fs, now),
        ["old", "recent"]
    );
    // A removed image is forgotten.
    tracker.observe(&all[1..], &in_use, now);
    assert!(tracker.get("old").is_none());
}

#[test]
fn usage_percent_and_thresholds() {
    let fs = FsUsage {
        capacity: 1000,
        available: 150,
    };
    assert_eq!(fs.used_percent(), 85);
    assert_eq!(
        FsUsage {
            capacity: 0,
            available: 0
        }
        .used_percent(),
        0
    );
    assert!(ImagePolicy::default().validate().is_ok());
    let bad = ImagePolicy {
        high_threshold_percent: 70,
        low_threshold_percent: 80,
        min_age: Duration::ZERO,
    };
    assert!(matches!(
        bad.validate(),
        Err(GcError::Thresholds { high: 70, low: 80 })
    ));
}
