//! Turning OCI `linux.cgroupsPath` into a directory below berth's parent.

use std::path::{Component, Path, PathBuf};

use super::CgroupError;

const SLICE_SUFFIX: &str = ".slice";
/// The slice runc uses when a systemd-style path leaves the slice empty.
const DEFAULT_SLICE: &str = "system.slice";

/// Resolve the OCI `linux.cgroupsPath` (`None` => `"<id>"`) to a path
/// relative to the berth parent.
///
/// * `"/a/b"` and `"a/b"` both become `a/b` (below the parent);
/// * systemd style `"slice:prefix:name"` becomes
///   `"<slice path>/<prefix>-<name>.scope"` in the cgroupfs layout systemd
///   itself uses (`"a-b.slice"` expands to `a.slice/a-b.slice`, an empty
///   slice means `system.slice`, `"-.slice"` is the root, an empty prefix
///   gives `<name>.scope`, a name ending in `.slice` is used as is);
/// * `..`, `.`, empty components, NUL and newline are errors naming the path.
pub fn resolve_path(cgroups_path: Option<&str>, id: &str) -> Result<PathBuf, CgroupError> {
    let Some(raw) = cgroups_path else {
        check_component(id, id)?;
        return Ok(PathBuf::from(id));
    };
    if let Some((slice, prefix, name)) = split_systemd(raw) {
        return systemd_path(raw, slice, prefix, name);
    }
    let trimmed = raw.strip_prefix('/').unwrap_or(raw);
    if trimmed.is_empty() {
        return Err(invalid(
            raw,
            "the path is empty (it would be berth's parent itself)",
        ));
    }
    let mut out = PathBuf::new();
    for component in trimmed.split('/') {
        check_component(raw, component)?;
        out.push(component);
    }
    Ok(out)
}

/// A resolved path that already starts with berth's parent is taken as
/// relative to it: a kubelet whose `cgroupRoot` is that parent (`/berth`,
/// as `berth node`'s default) names it in every pod's cgroup parent, as it
/// would for runc, which has no parent of its own.
pub fn below_parent(rel: PathBuf, parent: &str) -> PathBuf {
    let parent = Path::new(parent.trim_matches('/'));
    if parent.as_os_str().is_empty() {
        return rel;
    }
    match rel.strip_prefix(parent) {
        Ok(rest) if !rest.as_os_str().is_empty() => rest.to_owned(),
        _ => rel,
    }
}

/// `"slice:prefix:name"` where the slice is empty or ends in `.slice`.
fn split_systemd(raw: &str) -> Option<(&str, &str, &str)> {
    if raw.starts_with('/') {
        return None;
    }
    let mut parts = raw.split(':');
    let (slice, prefix, name) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    (slice.is_empty() || slice.ends_with(SLICE_SUFFIX)).then_some((slice, prefix, name))
}

fn systemd_path(raw: &str, slice: &str, prefix: &str, name: &str) -> Result<PathBuf, CgroupError> {
    let slice = if slice.is_empty() {
        DEFAULT_SLICE
    } else {
        slice
    };
    let mut out = expand_slice(raw, slice)?;
    if name.is_empty() {
        return Err(invalid(
            raw,
            "the unit name (after the second ':') is empty",
        ));
    }
    check_component(raw, name)?;
    if !prefix.is_empty() {
        check_component(raw, prefix)?;
    }
    let unit = if name.ends_with(SLICE_SUFFIX) {
        name.to_string()
    } else if prefix.is_empty() {
        format!("{name}.scope")
    } else {
        format!("{prefix}-{name}.scope")
    };
    check_component(raw, &unit)?;
    out.push(unit);
    Ok(out)
}

/// systemd's slice expansion: `a-b-c.slice` => `a.slice/a-b.slice/a-b-c.slice`.
fn expand_slice(raw: &str, slice: &str) -> Result<PathBuf, CgroupError> {
    let bad = || invalid(raw, &format!("invalid systemd slice name {slice:?}"));
    let stem = slice.strip_suffix(SLICE_SUFFIX).ok_or_else(bad)?;
    if slice.contains('/') {
        return Err(bad());
    }
    let mut out = PathBuf::new();
    if stem == "-" {
        return Ok(out);
    }
    let mut prefix = String::new();
    for part in stem.split('-') {
        if part.is_empty() {
            return Err(bad());
        }
        let component = format!("{prefix}{part}{SLICE_SUFFIX}");
        check_component(raw, &component)?;
        out.push(component);
        prefix.push_str(part);
        prefix.push('-');
    }
    Ok(out)
}

/// One directory name: non-empty, not `.`/`..`, no `/`, NUL or newline.
pub(crate) fn check_component(whole: &str, component: &str) -> Result<(), CgroupError> {
    let reason = if component.is_empty() {
        "empty path component"
    } else if component == "." || component == ".." {
        "'.' and '..' components are not allowed"
    } else if component.contains('/') {
        "a name may not contain '/'"
    } else if component.contains('\0') || component.contains('\n') {
        "NUL and newline are not allowed"
    } else {
        return Ok(());
    };
    Err(invalid(whole, reason))
}

/// Validate a relative cgroup path (as passed to `open`): non-empty and only
/// plain components.
pub(crate) fn check_relative(path: &Path) -> Result<(), CgroupError> {
    let shown = || path.display().to_string();
    if path.as_os_str().is_empty() {
        return Err(invalid(&shown(), "the path is empty"));
    }
    for component in path.components() {
        match component {
            Component::Normal(name) => {
                let bytes = name.as_encoded_bytes();
                if bytes.contains(&0) || bytes.contains(&b'\n') {
                    return Err(invalid(&shown(), "NUL and newline are not allowed"));
                }
            }
            _ => {
                return Err(invalid(
                    &shown(),
                    "must be relative, without '.' or '..' components",
                ));
            }
        }
    }
    Ok(())
}

/// Validate berth's parent name (`"berth"`, or a few components like
/// `"system.slice/berth"`); a leading `/` is ignored.
pub(crate) fn parent_path(parent: &str) -> Result<PathBuf, CgroupError> {
    let trimmed = parent.strip_prefix('/').unwrap_or(parent);
    let mut out = PathBuf::new();
    for component in trimmed.split('/') {
        check_component(parent, component)?;
        out.push(component);
    }
    Ok(out)
}

fn invalid(path: &str, reason: &str) -> CgroupError {
    CgroupError::InvalidPath {
        path: path.to_string(),
        reason: reason.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(p: Option<&str>, id: &str) -> String {
        resolve_path(p, id)
            .unwrap_or_else(|e| panic!("{p:?}: {e}"))
            .display()
            .to_string()
    }

    fn err(p: Option<&str>, id: &str) -> String {
        match resolve_path(p, id) {
            Ok(path) => panic!("{p:?} resolved to {}", path.display()),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_path_inside_the_parent_is_taken_relative_to_it() {
        let b = |p: &str, parent: &str| below_parent(PathBuf::from(p), parent);
        assert_eq!(
            b("berth/kubepods/burstable/pod1/c1", "berth"),
            Path::new("kubepods/burstable/pod1/c1")
        );
        assert_eq!(
            b("kubepods/pod1/c1", "berth"),
            Path::new("kubepods/pod1/c1")
        );
        // Whole components only, and never the parent itself.
        assert_eq!(b("berthday/c1", "berth"), Path::new("berthday/c1"));
        assert_eq!(b("berth", "berth"), Path::new("berth"));
        assert_eq!(b("a/b/c", "/a/b/"), Path::new("c"));
        assert_eq!(b("a/b", ""), Path::new("a/b"));
    }

    #[test]
    fn none_uses_the_id() {
        assert_eq!(ok(None, "abc123"), "abc123");
        assert!(err(None, "a/b").contains("a/b"));
        assert!(err(None, "..").contains("'..'"));
        assert!(err(None, "").contains("empty"));
    }

    #[test]
    fn plain_paths_go_under_the_parent() {
        assert_eq!(
            ok(Some("/kubepods/burstable/pod1/c1"), "x"),
            "kubepods/burstable/pod1/c1"
        );
        assert_eq!(ok(Some("a/b"), "x"), "a/b");
        assert_eq!(ok(Some("/single"), "x"), "single");
        // Colons alone do not make a systemd path.
        assert_eq!(ok(Some("a:b:c"), "x"), "a:b:c");
        assert_eq!(ok(Some("/x.slice:p:n"), "x"), "x.slice:p:n");
    }

    #[test]
    fn bad_plain_paths_name_the_path() {
        for bad in [
            "/", "", "a//b", "a/b/", "/a/../b", "..", "a/./b", "a/b\0c", "a\nb",
        ] {
            let msg = err(Some(bad), "x");
            assert!(msg.contains(&format!("{bad:?}")), "{bad:?}: {msg}");
        }
    }

    #[test]
    fn systemd_paths_expand_like_systemd() {
        assert_eq!(
            ok(Some("system.slice:docker:abc"), "x"),
            "system.slice/docker-abc.scope"
        );
        assert_eq!(
            ok(
                Some("kubepods-besteffort-pod12.slice:cri-containerd:abc"),
                "x"
            ),
            "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod12.slice/cri-containerd-abc.scope"
        );
        assert_eq!(ok(Some(":berth:abc"), "x"), "system.slice/berth-abc.scope");
        assert_eq!(ok(Some("-.slice:p:abc"), "x"), "p-abc.scope");
        assert_eq!(ok(Some("user.slice::abc"), "x"), "user.slice/abc.scope");
        assert_eq!(ok(Some("a.slice:p:b-c.slice"), "x"), "a.slice/b-c.slice");
    }

    #[test]
    fn bad_systemd_paths_are_errors() {
        for bad in [
            "a--b.slice:p:n",
            "-a.slice:p:n",
            "a-.slice:p:n",
            ".slice:p:n",
            "a.slice:p:",
            "a.slice:p/q:n",
            "a.slice:p:..",
            "a.slice:p:x/y",
        ] {
            let msg = err(Some(bad), "x");
            assert!(msg.contains(&format!("{bad:?}")), "{bad:?}: {msg}");
        }
    }

    proptest::proptest! {
        #[test]
        fn any_input_resolves_safely_or_errors(raw in ".{0,40}", id in "[a-z./:-]{0,8}") {
            for path in [resolve_path(Some(&raw), &id), resolve_path(None, &id)].into_iter().flatten() {
                proptest::prop_assert!(check_relative(&path).is_ok(), "{}", path.display());
            }
        }
    }

    #[test]
    fn relative_and_parent_checks() {
        assert!(check_relative(Path::new("a/b")).is_ok());
        assert!(check_relative(Path::new("")).is_err());
        assert!(check_relative(Path::new("/a")).is_err());
        assert!(check_relative(Path::new("a/../b")).is_err());
        assert_eq!(parent_path("berth").ok(), Some(PathBuf::from("berth")));
        assert_eq!(parent_path("/a/berth").ok(), Some(PathBuf::from("a/berth")));
        assert!(parent_path("").is_err());
        assert!(parent_path("a/../b").is_err());
    }
}
