//! The client's record of each attachment, on disk so that a DEL, CHECK or
//! GC after a daemon restart (or `kill -9`) has the config, the args and the
//! prevResult the ADD had.
//!
//! One JSON file per attachment at `<cache_dir>/results/<network>-<container
//! id>-<ifname>` (libcni's layout), replaced atomically (written to a
//! temporary file, then renamed), so a reader sees the old entry or the new
//! one, never a torn one. The names in the key are validated by the client
//! so that none leaves the directory; entries are identified by their
//! content, since `-` may occur in all three names.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

const KIND: &str = "berth.cni.cache.v1";
const TMP_PREFIX: &str = ".tmp-";

static SEQ: AtomicU64 = AtomicU64::new(0);

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("CNI cache {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("CNI cache entry {path} is corrupt: {source}")]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// What is recorded of one attachment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CacheEntry {
    pub kind: String,
    #[serde(rename = "networkName")]
    pub network: String,
    #[serde(rename = "containerId")]
    pub container_id: String,
    #[serde(rename = "ifName")]
    pub ifname: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<PathBuf>,
    #[serde(rename = "cniArgs", default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<(String, String)>,
    #[serde(
        rename = "capabilityArgs",
        default,
        skip_serializing_if = "Map::is_empty"
    )]
    pub capability_args: Map<String, Value>,
    /// The list the ADD ran (as a `.conflist`).
    pub config: Value,
    /// The chain's result in the list's version; while an ADD runs or after
    /// a failed rollback, the result of the plugins that succeeded (if any).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// False from the start of an ADD until the whole chain has succeeded:
    /// such an entry is an attachment half made (or half undone) that DEL
    /// and GC still clean up.
    #[serde(default)]
    pub complete: bool,
}

impl CacheEntry {
    pub fn new(network: &str, container_id: &str, ifname: &str, config: Value) -> Self {
        CacheEntry {
            kind: KIND.to_string(),
            network: network.to_string(),
            container_id: container_id.to_string(),
            ifname: ifname.to_string(),
            netns: None,
            args: Vec::new(),
            capability_args: Map::new(),
            config,
            result: None,
            complete: false,
        }
    }
}

/// The cache directory.
#[derive(Debug, Clone)]
pub struct Cache {
    results: PathBuf,
}

impl Cache {
    pub fn new(cache_dir: &Path) -> Self {
        Cache {
            results: cache_dir.join("results"),
        }
    }

    /// Where the entry of an attachment lives.
    pub fn path(&self, network: &str, container_id: &str, ifname: &str) -> PathBuf {
        self.results
            .join(format!("{network}-{container_id}-{ifname}"))
    }

    /// The entry of an attachment; None when there is none.
    pub fn read(
        &self,
        network: &str,
        container_id: &str,
        ifname: &str,
    ) -> Result<Option<CacheEntry>, CacheError> {
        read_entry(&self.path(network, container_id, ifname))
    }

    /// Writes (or replaces) the entry atomically.
    pub fn write(&self, entry: &CacheEntry) -> Result<(), CacheError> {
        let path = self.path(&entry.network, &entry.container_id, &entry.ifname);
        let io = |p: &Path| {
            let p = p.to_owned();
            move |source| CacheError::Io { path: p, source }
        };
        std::fs::create_dir_all(&self.results).map_err(io(&self.results))?;
        let bytes = serde_json::to_vec(entry).map_err(|e| CacheError::Io {
            path: path.clone(),
            source: std::io::Error::other(e),
        })?;
        let tmp = self.results.join(format!(
            "{TMP_PREFIX}{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let written = (|| {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)?;
            f.write_all(&bytes)?;
            // Not synced, as libcni does not sync its cache either: the wait
            // was a quarter of a pod's start on a busy disk, for a power cut
            // only (a dead daemon's writes are in the page cache all the
            // same). A power cut takes the ADD's namespace and links with it;
            // what outlives it is host-local's reservation, itself unsynced
            // and released by a DEL that lacks the entry all the same (an
            // empty or torn entry is skipped with a warning, and a DEL without
            // one still runs the chain, as libcni's does).
            std::fs::rename(&tmp, &path)
        })();
        if let Err(source) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(CacheError::Io { path, source });
        }
        Ok(())
    }

    /// Removes the entry; an entry already gone is fine.
    pub fn remove(
        &self,
        network: &str,
        container_id: &str,
        ifname: &str,
    ) -> Result<(), CacheError> {
        let path = self.path(network, container_id, ifname);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(CacheError::Io { path, source: e })
            }
            _ => Ok(()),
        }
    }

    /// The entries of `network` (all networks when None). Unreadable or
    /// corrupt entries are skipped with a warning: one bad file must not
    /// stop the others' cleanup.
    pub fn list(&self, network: Option<&str>) -> Result<Vec<CacheEntry>, CacheError> {
        let rd = match std::fs::read_dir(&self.results) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(CacheError::Io {
                    path: self.results.clone(),
                    source,
                });
            }
        };
        let mut out = Vec::new();
        for entry in rd {
            let entry = entry.map_err(|source| CacheError::Io {
                path: self.results.clone(),
                source,
            })?;
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            match read_entry(&entry.path()) {
                Ok(Some(e)) if network.is_none_or(|n| n == e.network) => out.push(e),
                Ok(_) => {}
                Err(err) => tracing::warn!(error = %err, "skipping CNI cache entry"),
            }
        }
        out.sort_by(|a, b| (&a.container_id, &a.ifname).cmp(&(&b.container_id, &b.ifname)));
        Ok(out)
    }

    /// Removes temporary files that processes killed mid-write left behind.
    pub fn remove_stale_temporaries(&self) {
        let Ok(rd) = std::fs::read_dir(&self.results) else {
            return;
        };
        for entry in rd.flatten() {
            let name = entry.file_name();
            let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(TMP_PREFIX)) else {
                continue;
            };
            let pid = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
            let alive = pid.is_some_and(|p| Path::new(&format!("/proc/{p}")).exists());
            if !alive {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

fn read_entry(path: &Path) -> Result<Option<CacheEntry>, CacheError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(CacheError::Io {
                path: path.to_owned(),
                source,
            });
        }
    };
    let entry: CacheEntry =
        serde_json::from_slice(&bytes).map_err(|source| CacheError::Corrupt {
            path: path.to_owned(),
            source,
        })?;
    if entry.kind != KIND {
        return Err(CacheError::Corrupt {
            path: path.to_owned(),
            source: serde::de::Error::custom(format!("unknown kind {:?}", entry.kind)),
        });
    }
    Ok(Some(entry))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn entries_are_written_read_listed_and_removed() {
        let d = tempfile::tempdir().unwrap();
        let c = Cache::new(d.path());
        assert!(c.read("n", "c1", "eth0").unwrap().is_none());
        assert!(c.list(None).unwrap().is_empty());
        let mut e = CacheEntry::new("n", "c1", "eth0", json!({"name":"n"}));
        e.netns = Some("/run/netns/p".into());
        e.args = vec![("K8S_POD_NAME".into(), "p".into())];
        c.write(&e).unwrap();
        e.result = Some(json!({"cniVersion":"1.0.0"}));
        e.complete = true;
        c.write(&e).unwrap();
        c.write(&CacheEntry::new("other", "c2", "eth0", json!({})))
            .unwrap();
        assert_eq!(c.read("n", "c1", "eth0").unwrap(), Some(e.clone()));
        assert!(d.path().join("results/n-c1-eth0").is_file());
        assert_eq!(c.list(Some("n")).unwrap(), vec![e]);
        assert_eq!(c.list(None).unwrap().len(), 2);
        c.remove("n", "c1", "eth0").unwrap();
        c.remove("n", "c1", "eth0").unwrap();
        assert!(c.read("n", "c1", "eth0").unwrap().is_none());
        // Only the final files: no temporaries left.
        let names: Vec<_> = std::fs::read_dir(d.path().join("results"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec!["other-c2-eth0"]);
    }

    #[test]
    fn corrupt_entries_are_reported_and_skipped_in_lists() {
        let d = tempfile::tempdir().unwrap();
        let c = Cache::new(d.path());
        c.write(&CacheEntry::new("n", "good", "eth0", json!({})))
            .unwrap();
        std::fs::write(c.path("n", "bad", "eth0"), "").unwrap();
        std::fs::write(c.path("n", "alien", "eth0"), r#"{"kind":"cniCacheV1","networkName":"n","containerId":"alien","ifName":"eth0","config":{}}"#).unwrap();
        let e = c.read("n", "bad", "eth0").unwrap_err();
        assert!(e.to_string().contains("n-bad-eth0"), "{e}");
        let e = c.read("n", "alien", "eth0").unwrap_err();
        assert!(e.to_string().contains("unknown kind"), "{e}");
        let l = c.list(Some("n")).unwrap();
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].container_id, "good");
    }

    #[test]
    fn temporaries_of_dead_writers_are_removed() {
        let d = tempfile::tempdir().unwrap();
        let c = Cache::new(d.path());
        c.write(&CacheEntry::new("n", "c", "eth0", json!({})))
            .unwrap();
        let results = d.path().join("results");
        // pid 0 never names a live process; ours does.
        std::fs::write(results.join(".tmp-0-1"), "x").unwrap();
        let mine = results.join(format!(".tmp-{}-999999", std::process::id()));
        std::fs::write(&mine, "x").unwrap();
        c.remove_stale_temporaries();
        assert!(!results.join(".tmp-0-1").exists());
        assert!(mine.exists());
        assert!(c.path("n", "c", "eth0").exists());
    }
}
