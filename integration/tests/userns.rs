//! A container in a new user namespace: root inside is host uid 100000,
//! files it creates on a bind mount belong to that host uid, and the default
//! devices work (they are bind-mounted from the host, as mknod is refused in
//! a user namespace). Every test here holds a LeakCheck.

use std::fs;
use std::os::unix::fs::{MetadataExt, lchown};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use berth_integration::proc::ns_link;
use berth_integration::workdir::tempdir;
use berth_integration::{Bundle, LeakCheck, Runtime, Spec, unique_id};
use serde_json::json;

const SETTLE: Duration = Duration::from_secs(10);
/// Container id 0 is this host id; the mapping covers this many ids.
const HOST_ID: u32 = 100_000;
const MAP_SIZE: u32 = 65_536;

/// Gives `path` and everything below it to `uid:gid` (symlinks themselves,
/// not their targets). Hard-linked files (the rootfs clone shares its large
/// files with the process-wide template) are first replaced by copies, so
/// the template keeps its owner.
fn chown_tree(path: &Path, uid: u32, gid: u32) -> Result<()> {
    let meta = fs::symlink_metadata(path)?;
    if meta.is_dir() {
        for e in fs::read_dir(path)? {
            chown_tree(&e?.path(), uid, gid)?;
        }
    } else if meta.is_file() && meta.nlink() > 1 {
        let copy = path.with_extension("chown-copy");
        fs::copy(path, &copy)?;
        fs::set_permissions(&copy, meta.permissions())?;
        fs::rename(&copy, path)?;
    }
    lchown(path, Some(uid), Some(gid)).with_context(|| format!("chown {}", path.display()))
}

#[test]
fn root_in_a_user_namespace_is_an_unprivileged_host_uid() -> Result<()> {
    let check = LeakCheck::start();
    let rt = Runtime::new()?;
    let id = unique_id("userns");
    let host = tempdir("userns-bind-")?;
    fs::write(host.path().join("from-host"), "host-file\n")?;
    chown_tree(host.path(), HOST_ID, HOST_ID)?;
    let map = json!([{ "containerID": 0, "hostID": HOST_ID, "size": MAP_SIZE }]);
    let script = "id -u; id -g; cat /proc/self/uid_map /proc/self/gid_map; \
                  readlink /proc/self/ns/user; \
                  cat /host/from-host; echo made-inside > /host/new; \
                  echo x > /dev/null && echo null-ok; \
                  head -c 5 /dev/zero | wc -c; head -c 5 /dev/urandom | wc -c; \
                  stat -c '%F %t:%T %u' /dev/null";
    let spec = Spec::sh(&id, script)
        .add_namespace("user")
        .set("/linux/uidMappings", map.clone())
        .set("/linux/gidMappings", map)
        .bind_mount(host.path(), "/host", false);
    let b = Bundle::new(&spec)?;
    chown_tree(&b.rootfs(), HOST_ID, HOST_ID)?;

    let out = rt.run(&id, &b)?;
    ensure!(out.success(), "{out}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    ensure!(lines.len() == 10, "{out}");
    assert_eq!(lines[0], "0", "id -u: {out}");
    assert_eq!(lines[1], "0", "id -g: {out}");
    for (i, which) in [(2, "uid_map"), (3, "gid_map")] {
        let fields: Vec<&str> = lines[i].split_whitespace().collect();
        assert_eq!(
            fields,
            ["0", "100000", "65536"],
            "{which} {:?}: {out}",
            lines[i]
        );
    }
    assert!(lines[4].starts_with("user:["), "{out}");
    assert_ne!(
        lines[4],
        ns_link(None, "user")?,
        "the host's user namespace"
    );
    assert_eq!(lines[5], "host-file", "{out}");
    assert_eq!(lines[6], "null-ok", "{out}");
    assert_eq!(lines[7].trim(), "5", "/dev/zero: {out}");
    assert_eq!(lines[8].trim(), "5", "/dev/urandom: {out}");
    // The host's /dev/null, bound in: owned by host root, which is unmapped
    // in the container and so shows as the overflow uid.
    let overflow = fs::read_to_string("/proc/sys/kernel/overflowuid")?;
    assert_eq!(
        lines[9],
        format!("character special file 1:3 {}", overflow.trim()),
        "/dev/null: {out}"
    );

    let made = fs::metadata(host.path().join("new"))?;
    assert_eq!(
        (made.uid(), made.gid()),
        (HOST_ID, HOST_ID),
        "owner on the host of a file root made inside"
    );
    assert_eq!(
        fs::read_to_string(host.path().join("new"))?,
        "made-inside\n"
    );
    // The chown did not reach the shared rootfs template.
    let tmpl = fs::metadata(berth_integration::rootfs::template()?.join("bin/busybox"))?;
    assert_eq!(
        (tmpl.uid(), tmpl.gid()),
        (0, 0),
        "the rootfs template changed owner"
    );
    check.assert_clean(SETTLE)?;
    let left = rt.state_entries();
    ensure!(
        left.iter().all(|p| p
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'))),
        "state left in --root: {left:?}"
    );
    Ok(())
}
