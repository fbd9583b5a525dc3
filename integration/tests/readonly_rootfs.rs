//! `root.readonly`: the rootfs cannot be written; mounts on it still can.

use anyhow::{Result, ensure};
use berth_integration::{Bundle, Runtime, Spec, unique_id};

#[test]
fn readonly_rootfs_refuses_writes() -> Result<()> {
    let rt = Runtime::new()?;
    let id = unique_id("ro");
    let spec = Spec::sh(
        &id,
        "touch /newfile; echo \"touch=$?\"; echo x > /etc/hosts; echo \"write=$?\"; touch /dev/shm/ok && echo shm-ok",
    )
    .readonly(true);
    let b = Bundle::new(&spec)?;
    let out = rt.run(&id, &b)?;
    ensure!(out.success(), "{out}");
    assert!(out.stdout.contains("touch=1"), "{out}");
    assert!(out.stdout.contains("write=1"), "{out}");
    assert!(out.stderr.contains("Read-only file system"), "{out}");
    assert!(
        out.stdout.contains("shm-ok"),
        "tmpfs on a read-only rootfs must stay writable: {out}"
    );
    assert!(!b.rootfs().join("newfile").exists());
    Ok(())
}

#[test]
fn writable_rootfs_accepts_writes() -> Result<()> {
    let rt = Runtime::new()?;
    let id = unique_id("rw");
    let spec = Spec::sh(&id, "echo data > /newfile && cat /newfile").readonly(false);
    let b = Bundle::new(&spec)?;
    let out = rt.run(&id, &b)?;
    ensure!(out.success(), "{out}");
    assert_eq!(out.stdout, "data\n", "{out}");
    assert_eq!(
        std::fs::read_to_string(b.rootfs().join("newfile"))?,
        "data\n"
    );
    Ok(())
}
