//! Garbage collection of what the pods leave in the runtime, as upstream's
//! container and image GC, run by the pod manager every minute.
//!
//! Containers: an exited instance is kept for `lastState` and
//! `logs --previous`, so each pod's container (by pod UID and name) keeps
//! its newest exited instances (`maxPerPodContainer`, 1) and loses older
//! ones once they are `minimumGCAge` (0) old; the node may cap the total
//! (`maxContainers`, -1: no cap). Only exited instances go: a created one
//! may be about to be started by its worker; and a live pod's container
//! whose latest instance exited keeps it whatever the knobs, since the
//! worker's restart count and back-off read it. Pods that no worker
//! runs any more lose all their exited containers. Sandboxes go once not
//! ready, empty, and either of no live pod or not their pod's newest.
//!
//! Images: when the image filesystem is used above `imageGCHighThresholdPercent`
//! (85), images no container uses, pinned ones aside, are removed least
//! recently used first until usage is back under
//! `imageGCLowThresholdPercent` (80); an image seen for the first time less
//! than `imageMinimumGCAge` (2 min) ago is spared.
//!
//! The policies are pure ([`containers_to_remove`], [`sandboxes_to_remove`],
//! [`images_to_remove`]); [`GarbageCollector`] feeds them from the CRI.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use berth_proto::v1;
use thiserror::Error;

use crate::cri_client::{CriClient, CriClientError};
use crate::cri_config::container::CONTAINER_NAME_LABEL;
use crate::cri_config::sandbox::POD_UID_LABEL;

/// How often the pod manager collects.
pub const GC_PERIOD: Duration = Duration::from_secs(60);

/// Errors of this module.
#[derive(Debug, Error)]
pub enum GcError {
    #[error(transparent)]
    Cri(#[from] CriClientError),
    #[error(
        "image GC thresholds: high {high}% and low {low}% must be at most 100 with low below high"
    )]
    Thresholds { high: u8, low: u8 },
    #[error("the runtime reports no image filesystem")]
    NoImageFs,
    #[error("measuring the image filesystem at {path}: {source}")]
    Statvfs { path: String, source: nix::Error },
}

/// Upstream's container GC knobs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ContainerPolicy {
    /// How old an exited instance must be before it may go.
    pub min_age: Duration,
    /// Exited instances kept per pod and container name; negative: all.
    pub max_per_pod_container: i32,
    /// Exited instances kept on the node; negative: no cap.
    pub max_containers: i32,
}

impl Default for ContainerPolicy {
    fn default() -> Self {
        Self {
            min_age: Duration::ZERO,
            max_per_pod_container: 1,
            max_containers: -1,
        }
    }
}

/// Upstream's image GC knobs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImagePolicy {
    pub high_threshold_percent: u8,
    pub low_threshold_percent: u8,
    pub min_age: Duration,
}

impl Default for ImagePolicy {
    fn default() -> Self {
        Self {
            high_threshold_percent: 85,
            low_threshold_percent: 80,
            min_age: Duration::from_secs(120),
        }
    }
}

impl ImagePolicy {
    pub fn validate(&self) -> Result<(), GcError> {
        let (high, low) = (self.high_threshold_percent, self.low_threshold_percent);
        if high > 100 || low >= high {
            return Err(GcError::Thresholds { high, low });
        }
        Ok(())
    }
}

/// A container as the policy sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GcContainer {
    pub id: String,
    pub pod_uid: String,
    pub name: String,
    pub sandbox_id: String,
    /// The restart count it was created with (CRI metadata attempt).
    pub attempt: u32,
    pub exited: bool,
    /// Unix nanoseconds.
    pub created_at: i64,
}

/// A sandbox as the policy sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GcSandbox {
    pub id: String,
    pub pod_uid: String,
    pub ready: bool,
    /// Unix nanoseconds.
    pub created_at: i64,
}

/// The exited containers to remove at `now` (unix nanoseconds), given the
/// UIDs of the pods that still have a worker.
pub fn containers_to_remove(
    policy: &ContainerPolicy,
    containers: &[GcContainer],
    live: &HashSet<String>,
    now: i64,
) -> Vec<String> {
    let min_age = i64::try_from(policy.min_age.as_nanos()).unwrap_or(i64::MAX);
    let cutoff = now.saturating_sub(min_age);
    let mut remove = Vec::new();
    // Evictable instances by pod and container name, newest first.
    let mut units: HashMap<(&str, &str), Vec<&GcContainer>> = HashMap::new();
    for c in containers {
        if !c.exited || c.created_at > cutoff {
            continue;
        }
        if !live.contains(&c.pod_uid) {
            remove.push(c.id.clone());
            continue;
        }
        units
            .entry((c.pod_uid.as_str(), c.name.as_str()))
            .or_default()
            .push(c);
    }
    for unit in units.values_mut() {
        unit.sort_by_key(|c| std::cmp::Reverse((c.created_at, c.id.clone())));
    }
    let keep_each = |units: &mut HashMap<(&str, &str), Vec<&GcContainer>>,
                     keep: usize,
                     remove: &mut Vec<String>| {
        for unit in units.values_mut() {
            if unit.len() > keep {
                remove.extend(unit.drain(keep..).map(|c| c.id.clone()));
            }
        }
    };
    if let Ok(keep) = usize::try_from(policy.max_per_pod_container) {
        keep_each(&mut units, keep, &mut remove);
    }
    if let Ok(max) = usize::try_from(policy.max_containers) {
        let total: usize = units.values().map(Vec::len).sum();
        if total > max {
            // An equal share per unit (at least one), then the oldest.
            let share = (max / units.len().max(1)).max(1);
            keep_each(&mut units, share, &mut remove);
            let mut rest: Vec<&GcContainer> = units.values().flatten().copied().collect();
            if rest.len() > max {
                rest.sort_by_key(|c| (c.created_at, c.id.clone()));
                let excess = rest.len() - max;
                remove.extend(rest.into_iter().take(excess).map(|c| c.id.clone()));
            }
        }
    }
    // Whatever the knobs, a live pod's container keeps its latest instance
    // when that one exited: its worker numbers the next restart and times
    // the back-off from it.
    let mut latest: HashMap<(&str, &str), &GcContainer> = HashMap::new();
    for c in containers.iter().filter(|c| live.contains(&c.pod_uid)) {
        let entry = latest
            .entry((c.pod_uid.as_str(), c.name.as_str()))
            .or_insert(c);
        // Newest as the worker sees it (`actions::latest`).
        if (c.attempt, c.created_at) > (entry.attempt, entry.created_at) {
            *entry = c;
        }
    }
    let needed: HashSet<&str> = latest
        .values()
        .filter(|c| c.exited)
        .map(|c| c.id.as_str())
        .collect();
    remove.retain(|id| !needed.contains(id.as_str()));
    remove.sort();
    remove
}

/// The sandboxes to remove: not ready, holding no container, and either of
/// a pod with no worker or older than their pod's newest sandbox (which
/// numbers the next one).
pub fn sandboxes_to_remove(
    sandboxes: &[GcSandbox],
    containers: &[GcContainer],
    live: &HashSet<String>,
) -> Vec<String> {
    let used: HashSet<&str> = containers.iter().map(|c| c.sandbox_id.as_str()).collect();
    let mut newest: HashMap<&str, (i64, &str)> = HashMap::new();
    for s in sandboxes {
        let entry = newest
            .entry(s.pod_uid.as_str())
            .or_insert((s.created_at, s.id.as_str()));
        if (s.created_at, s.id.as_str()) > *entry {
            *entry = (s.created_at, s.id.as_str());
        }
    }
    let mut remove: Vec<String> = sandboxes
        .iter()
        .filter(|s| !s.ready && !used.contains(s.id.as_str()))
        .filter(|s| {
            !live.contains(&s.pod_uid)
                || newest
                    .get(s.pod_uid.as_str())
                    .is_some_and(|(_, id)| *id != s.id)
        })
        .map(|s| s.id.clone())
        .collect();
    remove.sort();
    remove
}

/// When an image was first seen and last seen in use, as upstream's image
/// manager records them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageRecord {
    pub first_detected: Instant,
    pub last_used: Instant,
}

/// The images the runtime has, by ID.
#[derive(Clone, Debug, Default)]
pub struct ImageTracker {
    records: HashMap<String, ImageRecord>,
}

impl ImageTracker {
    /// Records the images present at `now` and which are in use; forgets
    /// those gone.
    pub fn observe(&mut self, images: &[GcImage], in_use: &HashSet<String>, now: Instant) {
        self.records
            .retain(|id, _| images.iter().any(|i| &i.id == id));
        for image in images {
            let r = self.records.entry(image.id.clone()).or_insert(ImageRecord {
                first_detected: now,
                last_used: now,
            });
            if in_use.contains(&image.id) {
                r.last_used = now;
            }
        }
    }

    pub fn get(&self, id: &str) -> Option<&ImageRecord> {
        self.records.get(id)
    }
}

/// An image as the policy sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GcImage {
    pub id: String,
    pub size: u64,
    pub pinned: bool,
}

/// The image filesystem's size and free space, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FsUsage {
    pub capacity: u64,
    pub available: u64,
}

impl FsUsage {
    pub fn used_percent(&self) -> u64 {
        if self.capacity == 0 {
            return 0;
        }
        let free = u128::from(self.available) * 100 / u128::from(self.capacity);
        100u64.saturating_sub(u64::try_from(free).unwrap_or(100))
    }
}

/// The images to remove at `now`, least recently used first, and the bytes
/// that frees; nothing while usage is under the high threshold.
pub fn images_to_remove(
    policy: &ImagePolicy,
    tracker: &ImageTracker,
    images: &[GcImage],
    in_use: &HashSet<String>,
    fs: FsUsage,
    now: Instant,
) -> Vec<String> {
    if fs.used_percent() < u64::from(policy.high_threshold_percent) {
        return Vec::new();
    }
    let target_free =
        u128::from(fs.capacity) * u128::from(100 - policy.low_threshold_percent.min(100)) / 100;
    let mut to_free = target_free.saturating_sub(u128::from(fs.available));
    let mut candidates: Vec<(&GcImage, ImageRecord)> = images
        .iter()
        .filter(|i| !i.pinned && !in_use.contains(&i.id))
        .filter_map(|i| Some((i, *tracker.get(&i.id)?)))
        .filter(|(_, r)| now.saturating_duration_since(r.first_detected) >= policy.min_age)
        .collect();
    candidates.sort_by_key(|(i, r)| (r.last_used, r.first_detected, i.id.clone()));
    let mut remove = Vec::new();
    for (image, _) in candidates {
        if to_free == 0 {
            break;
        }
        remove.push(image.id.clone());
        to_free = to_free.saturating_sub(u128::from(image.size));
    }
    remove
}

/// Runs the policies against the runtime.
#[derive(Debug)]
pub struct GarbageCollector {
    cri: CriClient,
    containers: ContainerPolicy,
    images: ImagePolicy,
    tracker: ImageTracker,
}

impl GarbageCollector {
    pub fn new(
        cri: CriClient,
        containers: ContainerPolicy,
        images: ImagePolicy,
    ) -> Result<Self, GcError> {
        images.validate()?;
        Ok(Self {
            cri,
            containers,
            images,
            tracker: ImageTracker::default(),
        })
    }

    /// One collection: containers, sandboxes, then images; `live` holds the
    /// UIDs of the pods that have a worker.
    pub async fn collect(&mut self, live: &HashSet<String>) -> Result<(), GcError> {
        let listed = self.cri.list_containers(None).await?;
        let containers: Vec<GcContainer> = listed
            .iter()
            .filter_map(|c| {
                Some(GcContainer {
                    id: c.id.clone(),
                    pod_uid: c.labels.get(POD_UID_LABEL)?.clone(),
                    name: c.labels.get(CONTAINER_NAME_LABEL)?.clone(),
                    sandbox_id: c.pod_sandbox_id.clone(),
                    attempt: c.metadata.as_ref().map_or(0, |m| m.attempt),
                    exited: c.state == v1::ContainerState::ContainerExited as i32,
                    created_at: c.created_at,
                })
            })
            .collect();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
        let dead = containers_to_remove(&self.containers, &containers, live, now);
        for id in &dead {
            tracing::info!(container = %id, "garbage collecting an exited container");
            if let Err(e) = self.cri.remove_container(id).await {
                tracing::warn!(container = %id, "removing the exited container: {e}");
            }
        }
        let remaining: Vec<GcContainer> = containers
            .into_iter()
            .filter(|c| !dead.contains(&c.id))
            .collect();
        let sandboxes: Vec<GcSandbox> = self
            .cri
            .list_pod_sandbox(None::<v1::PodSandboxFilter>)
            .await?
            .into_iter()
            .filter_map(|s| {
                Some(GcSandbox {
                    pod_uid: s.labels.get(POD_UID_LABEL)?.clone(),
                    ready: s.state == v1::PodSandboxState::SandboxReady as i32,
                    created_at: s.created_at,
                    id: s.id,
                })
            })
            .collect();
        for id in sandboxes_to_remove(&sandboxes, &remaining, live) {
            tracing::info!(sandbox = %id, "garbage collecting a sandbox");
            if let Err(e) = self.cri.remove_pod_sandbox(&id).await {
                tracing::warn!(sandbox = %id, "removing the sandbox: {e}");
            }
        }
        self.collect_images(&listed).await
    }

    async fn collect_images(&mut self, listed: &[v1::Container]) -> Result<(), GcError> {
        let images: Vec<GcImage> = self
            .cri
            .list_images(None)
            .await?
            .into_iter()
            .map(|i| GcImage {
                id: i.id,
                size: i.size,
                pinned: i.pinned,
            })
            .collect();
        // Any container, exited ones too, holds its image.
        let in_use: HashSet<String> = listed
            .iter()
            .flat_map(|c| {
                let by_spec = c.image.as_ref().map(|i| i.image.clone());
                std::iter::once(c.image_ref.clone()).chain(by_spec)
            })
            .filter(|i| !i.is_empty())
            .collect();
        let now = Instant::now();
        self.tracker.observe(&images, &in_use, now);
        let fs = self.image_fs().await?;
        let remove = images_to_remove(&self.images, &self.tracker, &images, &in_use, fs, now);
        if !remove.is_empty() {
            tracing::info!(
                used_percent = fs.used_percent(),
                high = self.images.high_threshold_percent,
                images = remove.len(),
                "image filesystem above its high threshold, removing unused images"
            );
        }
        for id in remove {
            let spec = v1::ImageSpec {
                image: id.clone(),
                ..Default::default()
            };
            if let Err(e) = self.cri.remove_image(spec).await {
                tracing::warn!(image = %id, "removing the unused image: {e}");
            }
        }
        Ok(())
    }

    /// The size and free space of the filesystem holding the runtime's
    /// images, as upstream reads it through cAdvisor.
    async fn image_fs(&self) -> Result<FsUsage, GcError> {
        let info = self.cri.image_fs_info().await?;
        let mountpoint = info
            .image_filesystems
            .first()
            .and_then(|f| f.fs_id.as_ref())
            .map(|f| f.mountpoint.clone())
            .filter(|m| !m.is_empty())
            .ok_or(GcError::NoImageFs)?;
        let stat = nix::sys::statvfs::statvfs(Path::new(&mountpoint)).map_err(|source| {
            GcError::Statvfs {
                path: mountpoint.clone(),
                source,
            }
        })?;
        let block = stat.fragment_size();
        Ok(FsUsage {
            capacity: stat.blocks().saturating_mul(block),
            available: stat.blocks_available().saturating_mul(block),
        })
    }
}

#[cfg(test)]
mod tests;
