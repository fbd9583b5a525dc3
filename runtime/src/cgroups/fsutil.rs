//! Small file helpers shared by the v1 and v2 managers.

use std::fmt::Display;
use std::fs::OpenOptions;
use std::io::{self, ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::CgroupError;

/// Write `value` to an existing cgroup file (no O_CREAT: cgroupfs answers
/// EACCES to that for a missing file, which would hide the real problem).
pub(crate) fn write(field: &str, path: &Path, value: &str) -> Result<(), CgroupError> {
    let result = OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|mut f| f.write_all(value.as_bytes()));
    result.map_err(|source| write_error(field, path, value, source))
}

/// The error for a failed write: a missing file means the kernel or the
/// hierarchy lacks the feature, anything else is the kernel refusing the value.
pub(crate) fn write_error(field: &str, path: &Path, value: &str, source: io::Error) -> CgroupError {
    if source.kind() == ErrorKind::NotFound
        || (source.kind() == ErrorKind::PermissionDenied && !path.exists())
    {
        let reason = if path.parent().is_some_and(Path::exists) {
            "the cgroup file does not exist (controller not enabled or kernel too old)"
        } else {
            "the cgroup does not exist"
        };
        return CgroupError::Unsupported {
            field: field.to_string(),
            path: path.to_path_buf(),
            reason: reason.to_string(),
        };
    }
    CgroupError::Write {
        field: field.to_string(),
        path: path.to_path_buf(),
        value: value.to_string(),
        source,
    }
}

/// Write several values to one cgroup file, one write(2) each (the kernel
/// parses every write on its own, e.g. one `devices.allow` rule), opening it
/// once. Each value comes with the field to blame if it is refused.
pub(crate) fn write_each<'a>(
    path: &Path,
    values: impl IntoIterator<Item = (String, &'a str)>,
) -> Result<(), CgroupError> {
    let mut values = values.into_iter().peekable();
    let Some((first_field, first_value)) = values.peek() else {
        return Ok(());
    };
    let mut file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|source| write_error(first_field, path, first_value, source))?;
    for (field, value) in values {
        file.write_all(value.as_bytes())
            .map_err(|source| write_error(&field, path, value, source))?;
    }
    Ok(())
}

/// Map the result of a cgroups-rs write to our error, naming the OCI field
/// and the full file path (cgroups-rs only names the file, and its
/// `File::create` turns a missing file into EACCES).
pub(crate) fn via_rs(
    field: &str,
    path: PathBuf,
    value: impl Display,
    result: cgroups_rs::fs::error::Result<()>,
) -> Result<(), CgroupError> {
    result.map_err(|e| write_error(field, &path, &value.to_string(), rs_io_error(&e)))
}

/// The io::Error inside a cgroups-rs error (or its text when there is none).
pub(crate) fn rs_io_error(e: &cgroups_rs::fs::error::Error) -> io::Error {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<io::Error>() {
            return match io.raw_os_error() {
                Some(code) => io::Error::from_raw_os_error(code),
                None => io::Error::new(io.kind(), io.to_string()),
            };
        }
        cause = c.source();
    }
    io::Error::other(e.to_string())
}

/// Read a whole cgroup file.
pub(crate) fn read(path: &Path) -> Result<String, CgroupError> {
    std::fs::read_to_string(path).map_err(|source| CgroupError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Read a cgroup file that may legitimately be absent (controller not
/// enabled, kernel feature missing): `None` then.
pub(crate) fn read_opt(path: &Path) -> Result<Option<String>, CgroupError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENODEV)) => Ok(None),
        Err(source) => Err(CgroupError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// mkdir -p.
pub(crate) fn mkdir_p(path: &Path) -> Result<(), CgroupError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .create(path)
        .map_err(|source| CgroupError::Create {
            path: path.to_path_buf(),
            source,
        })
}

/// Write a pid into `<dir>/cgroup.procs`.
pub(crate) fn add_pid(dir: &Path, pid: i32) -> Result<(), CgroupError> {
    let path = dir.join("cgroup.procs");
    if pid <= 0 {
        return Err(CgroupError::AddProcess {
            pid,
            path,
            source: io::Error::from_raw_os_error(libc::ESRCH),
        });
    }
    OpenOptions::new()
        .write(true)
        .open(&path)
        .and_then(|mut f| f.write_all(pid.to_string().as_bytes()))
        .map_err(|source| CgroupError::AddProcess { pid, path, source })
}

/// Every pid in `dir` and the cgroups below it, sorted, without duplicates.
pub(crate) fn pids_recursive(dir: &Path) -> Result<Vec<i32>, CgroupError> {
    if !dir.is_dir() {
        return Err(CgroupError::NotFound {
            path: dir.to_path_buf(),
        });
    }
    let mut out = Vec::new();
    collect_pids(dir, &mut out)?;
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

fn collect_pids(dir: &Path, out: &mut Vec<i32>) -> Result<(), CgroupError> {
    // A child cgroup may vanish while we walk: that is not an error.
    let Some(procs) = read_opt(&dir.join("cgroup.procs"))? else {
        return Ok(());
    };
    out.extend(procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
    for sub in subdirs(dir)? {
        collect_pids(&sub, out)?;
    }
    Ok(())
}

fn subdirs(dir: &Path) -> Result<Vec<PathBuf>, CgroupError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(CgroupError::Read {
                path: dir.to_path_buf(),
                source,
            });
        }
    };
    Ok(entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect())
}

/// Remove a cgroup directory and any cgroups below it (children first),
/// retrying briefly on EBUSY (exiting processes are still being reaped).
/// A directory that is already gone is fine.
pub(crate) fn remove_tree(dir: &Path) -> Result<(), CgroupError> {
    // Fast path: a leaf without children.
    match std::fs::remove_dir(dir) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(_) => {}
    }
    for sub in subdirs(dir)? {
        remove_tree(&sub)?;
    }
    let mut delay = Duration::from_millis(1);
    let deadline = Instant::now() + Duration::from_millis(500);
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                std::thread::sleep(delay);
                delay = (delay * 2).min(Duration::from_millis(50));
            }
            Err(source) => {
                return Err(CgroupError::Remove {
                    path: dir.to_path_buf(),
                    source,
                });
            }
        }
    }
}

/// Poll `check` until it returns true or `timeout` passes, sleeping a little
/// longer each round. `every` is called every ~50 ms (to re-request a state).
pub(crate) fn poll_until(
    timeout: Duration,
    mut check: impl FnMut() -> Result<bool, CgroupError>,
    mut every: impl FnMut() -> Result<(), CgroupError>,
) -> Result<bool, CgroupError> {
    let start = Instant::now();
    let mut delay = Duration::from_micros(50);
    let mut last_kick = start;
    loop {
        if check()? {
            return Ok(true);
        }
        if start.elapsed() >= timeout {
            return Ok(false);
        }
        if last_kick.elapsed() >= Duration::from_millis(50) {
            every()?;
            last_kick = Instant::now();
        }
        std::thread::sleep(delay);
        delay = (delay * 2).min(Duration::from_millis(10));
    }
}

/// The first line of `text` starting with `key` followed by whitespace, as a
/// number (`"frozen 1"`, `"oom_kill 3"`).
pub(crate) fn keyed_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let mut parts = line.split_whitespace();
        (parts.next() == Some(key))
            .then(|| parts.next())
            .flatten()
            .and_then(|v| v.parse().ok())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_values() {
        let text = "oom 2\noom_kill 7\noom_group_kill 0\n";
        assert_eq!(keyed_value(text, "oom_kill"), Some(7));
        assert_eq!(keyed_value(text, "oom"), Some(2));
        assert_eq!(keyed_value(text, "max"), None);
        assert_eq!(keyed_value("populated 1\nfrozen x\n", "frozen"), None);
    }

    #[test]
    fn rs_errors_keep_the_errno() {
        let mem = cgroups_rs::fs::memory::MemController::new(
            PathBuf::from("/nonexistent/berth/x"),
            PathBuf::from("/nonexistent"),
            false,
        );
        let err = mem.set_limit(1).err().map(|e| rs_io_error(&e));
        assert_eq!(err.and_then(|e| e.raw_os_error()), Some(libc::ENOENT));
        let converted = via_rs(
            "linux.resources.memory.limit",
            PathBuf::from("/nonexistent/berth/x/memory.limit_in_bytes"),
            1,
            mem.set_limit(1),
        );
        let msg = converted.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains("linux.resources.memory.limit"), "{msg}");
        assert!(
            msg.contains("/nonexistent/berth/x/memory.limit_in_bytes"),
            "{msg}"
        );
    }
}
