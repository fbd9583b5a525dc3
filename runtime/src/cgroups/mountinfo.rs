//! Finding the cgroup mounts (ours, not cgroups-rs's: its parser keeps only
//! v1 entries, does not decode `\040` escapes and hard-codes `/sys/fs/cgroup`
//! for v2).

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use super::{CgroupError, Hierarchy};

const MOUNTINFO: &str = "/proc/self/mountinfo";

/// One `cgroup` or `cgroup2` line of mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MountEntry {
    pub(crate) mount_point: PathBuf,
    /// `cgroup` or `cgroup2`.
    pub(crate) fstype: String,
    /// Superblock options: for v1 these name the controllers.
    pub(crate) super_opts: Vec<String>,
}

impl MountEntry {
    pub(crate) fn is_v1(&self) -> bool {
        self.fstype == "cgroup"
    }

    pub(crate) fn is_v2(&self) -> bool {
        self.fstype == "cgroup2"
    }

    pub(crate) fn has_option(&self, name: &str) -> bool {
        self.super_opts.iter().any(|o| o == name)
    }
}

/// The cgroup mounts of this process's mount namespace, read once: the
/// hierarchies stay where they are while a process runs, and mountinfo is
/// costly on a node whose pods each add mounts (the kernel formats every
/// line on each read), which the CRI daemon would otherwise pay on every
/// container status.
pub(crate) fn read() -> Result<Vec<MountEntry>, CgroupError> {
    static CACHE: std::sync::OnceLock<Vec<MountEntry>> = std::sync::OnceLock::new();
    if let Some(m) = CACHE.get() {
        return Ok(m.clone());
    }
    let text = cgroup_lines()?;
    Ok(CACHE.get_or_init(|| parse(text)).clone())
}

/// The cgroup and cgroup2 lines of this process's mountinfo, read once (see
/// [`read`]); the container's init bind-mounts the same hierarchies.
pub fn cgroup_lines() -> Result<&'static str, CgroupError> {
    static LINES: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    if let Some(t) = LINES.get() {
        return Ok(t);
    }
    let text = std::fs::read_to_string(MOUNTINFO).map_err(|source| CgroupError::Read {
        path: PathBuf::from(MOUNTINFO),
        source,
    })?;
    let lines: String = text
        .lines()
        .filter(|l| l.contains(" - cgroup"))
        .flat_map(|l| [l, "\n"])
        .collect();
    Ok(LINES.get_or_init(|| lines))
}

/// Parse mountinfo text, keeping only cgroup and cgroup2 mounts.
pub(crate) fn parse(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter(|line| line.contains(" - cgroup"))
        .filter_map(parse_line)
        .collect()
}

/// `36 31 0:33 / /sys/fs/cgroup/devices rw,relatime shared:9 - cgroup cgroup rw,devices`
fn parse_line(line: &str) -> Option<MountEntry> {
    let (left, right) = line.split_once(" - ")?;
    let mount_point = left.split(' ').nth(4)?;
    let mut right = right.split(' ');
    let fstype = right.next()?;
    if fstype != "cgroup" && fstype != "cgroup2" {
        return None;
    }
    let _source = right.next()?;
    let super_opts = right
        .next()
        .unwrap_or("")
        .split(',')
        .map(str::to_string)
        .collect();
    Some(MountEntry {
        mount_point: unescape(mount_point),
        fstype: fstype.to_string(),
        super_opts,
    })
}

/// Undo mountinfo's octal escapes (`\040` for space and so on).
fn unescape(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'\\'
            && let Some(digits) = bytes.get(i + 1..i + 4)
            && digits.iter().all(|d| (b'0'..=b'7').contains(d))
        {
            let value = digits
                .iter()
                .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
            if let Ok(byte) = u8::try_from(value) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(b);
        i += 1;
    }
    PathBuf::from(OsString::from_vec(out))
}

/// Which hierarchy layout lives at `root`.
///
/// The last mount listed on `root` itself is the visible one: cgroup2 there
/// means pure v2. Otherwise v1 hierarchies directly below `root` mean v1, or
/// hybrid when a cgroup2 mount (usually `unified`) sits below `root` too.
pub(crate) fn classify(mounts: &[MountEntry], root: &Path) -> Result<Hierarchy, CgroupError> {
    if let Some(top) = mounts.iter().rev().find(|m| m.mount_point == root)
        && top.is_v2()
    {
        return Ok(Hierarchy::V2);
    }
    let v1 = mounts
        .iter()
        .any(|m| m.is_v1() && m.mount_point.parent() == Some(root) && has_real_controller(m));
    if !v1 {
        return Err(CgroupError::NotMounted {
            mount_root: root.to_path_buf(),
            reason: "neither a cgroup2 mount on it nor cgroup v1 controller mounts below it"
                .to_string(),
        });
    }
    let v2_below = mounts
        .iter()
        .any(|m| m.is_v2() && m.mount_point.starts_with(root) && m.mount_point != root);
    Ok(if v2_below {
        Hierarchy::Hybrid
    } else {
        Hierarchy::V1
    })
}

fn has_real_controller(m: &MountEntry) -> bool {
    super::v1::Ctl::ALL.iter().any(|c| m.has_option(c.name()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime shared:7 - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
50 23 0:40 / /mnt/with\\040space rw - cgroup cgroup rw,pids
";

    #[test]
    fn parses_only_cgroup_mounts_and_unescapes() {
        let mounts = parse(HYBRID);
        assert_eq!(mounts.len(), 6);
        assert_eq!(mounts[0].mount_point, Path::new("/sys/fs/cgroup/cpu"));
        assert!(mounts[0].has_option("cpu") && !mounts[0].has_option("cpuacct"));
        assert!(mounts[4].is_v2());
        assert_eq!(mounts[5].mount_point, Path::new("/mnt/with space"));
    }

    #[test]
    fn classifies_layouts() {
        let root = Path::new("/sys/fs/cgroup");
        assert_eq!(classify(&parse(HYBRID), root).ok(), Some(Hierarchy::Hybrid));

        let v1: String = HYBRID
            .lines()
            .filter(|l| !l.contains("cgroup2"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(classify(&parse(&v1), root).ok(), Some(Hierarchy::V1));

        let v2 = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(classify(&parse(v2), root).ok(), Some(Hierarchy::V2));

        // Only systemd's named hierarchy: no controllers, so nothing usable.
        let named = "40 31 0:37 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,name=systemd\n";
        let err = classify(&parse(named), root)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("/sys/fs/cgroup"), "{err}");

        assert!(classify(&parse(HYBRID), Path::new("/elsewhere")).is_err());
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_text_does_not_panic(text in "(.{0,30}( - cgroup2? )?.{0,30}\n){0,4}") {
            let mounts = parse(&text);
            let _ = classify(&mounts, Path::new("/sys/fs/cgroup"));
        }
    }

    #[test]
    fn garbage_does_not_panic() {
        for line in [
            "",
            " - cgroup",
            "1 2 3 - cgroup",
            "a b c d e f - cgroup2",
            "\\",
            "x - cgroup x \\777",
        ] {
            let _ = parse(line);
        }
        assert_eq!(unescape("a\\040b\\9\\"), PathBuf::from("a b\\9\\"));
    }
}
