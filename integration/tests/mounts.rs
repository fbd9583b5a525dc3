//! Spec mounts: bind mounts (read-only and read-write) and tmpfs.

use anyhow::{Result, ensure};
use berth_integration::proc::parse_mountinfo;
use berth_integration::workdir::tempdir;
use berth_integration::{Bundle, Runtime, Spec, unique_id};

#[test]
fn bind_mounts_share_files_with_the_host() -> Result<()> {
    let host = tempdir("binds-")?;
    let ro = host.path().join("ro");
    let rw = host.path().join("rw");
    std::fs::create_dir(&ro)?;
    std::fs::create_dir(&rw)?;
    std::fs::write(ro.join("in.txt"), "from-host\n")?;
    let rt = Runtime::new()?;
    let id = unique_id("bind");
    let spec = Spec::sh(
        &id,
        "cat /data/ro/in.txt; echo x > /data/ro/new; echo \"ro-write=$?\"; echo from-container > /data/rw/out.txt",
    )
    .bind_mount(&ro, "/data/ro", true)
    .bind_mount(&rw, "/data/rw", false);
    let b = Bundle::new(&spec)?;
    let out = rt.run(&id, &b)?;
    ensure!(out.success(), "{out}");
    assert!(out.stdout.starts_with("from-host\n"), "{out}");
    assert!(out.stdout.contains("ro-write=1"), "{out}");
    assert!(
        !ro.join("new").exists(),
        "wrote through a read-only bind mount"
    );
    assert_eq!(
        std::fs::read_to_string(rw.join("out.txt"))?,
        "from-container\n"
    );
    // The mount points were created inside the (copied) rootfs, not on the host.
    assert!(b.rootfs().join("data/ro").is_dir());
    Ok(())
}

#[test]
fn tmpfs_mount_with_options() -> Result<()> {
    let rt = Runtime::new()?;
    let id = unique_id("tmpfs");
    let spec = Spec::sh(
        &id,
        "echo hi > /scratch/f && cat /scratch/f; cat /proc/self/mountinfo",
    )
    .tmpfs("/scratch");
    let b = Bundle::new(&spec)?;
    let out = rt.run(&id, &b)?;
    ensure!(out.success(), "{out}");
    assert!(out.stdout.starts_with("hi\n"), "{out}");
    let m = parse_mountinfo(&out.stdout)
        .into_iter()
        .find(|m| m.mount_point == std::path::Path::new("/scratch"))
        .ok_or_else(|| anyhow::anyhow!("no /scratch mount: {out}"))?;
    assert_eq!(m.fs_type, "tmpfs");
    assert!(
        m.options.contains("nosuid") && m.options.contains("nodev"),
        "{m:?}"
    );
    assert!(m.super_options.contains("size=16384k"), "{m:?}");
    assert!(
        !b.rootfs().join("scratch/f").exists(),
        "tmpfs content reached the rootfs"
    );
    Ok(())
}

#[test]
fn default_mounts_are_in_place() -> Result<()> {
    let rt = Runtime::new()?;
    let id = unique_id("defmounts");
    let b = Bundle::new(&Spec::sh(&id, "cat /proc/self/mountinfo"))?;
    let out = rt.run(&id, &b)?;
    ensure!(out.success(), "{out}");
    let mounts = parse_mountinfo(&out.stdout);
    for (dest, fs) in [
        ("/proc", "proc"),
        ("/dev", "tmpfs"),
        ("/dev/pts", "devpts"),
        ("/dev/shm", "tmpfs"),
        ("/dev/mqueue", "mqueue"),
        ("/sys", "sysfs"),
    ] {
        assert!(
            mounts
                .iter()
                .any(|m| m.mount_point == std::path::Path::new(dest) && m.fs_type == fs),
            "no {fs} at {dest}: {out}"
        );
    }
    let sys = mounts
        .iter()
        .find(|m| m.mount_point == std::path::Path::new("/sys"))
        .unwrap();
    assert!(
        sys.options.split(',').any(|o| o == "ro"),
        "/sys must be ro: {sys:?}"
    );
    Ok(())
}

#[test]
fn default_devices_exist() -> Result<()> {
    let rt = Runtime::new()?;
    let id = unique_id("devices");
    let b = Bundle::new(&Spec::sh(
        &id,
        "for d in null zero full random urandom tty; do [ -c /dev/$d ] && echo $d; done; echo x > /dev/null && echo null-ok; ls -l /dev/ptmx /dev/fd /dev/stdin",
    ))?;
    let out = rt.run(&id, &b)?;
    ensure!(out.success(), "{out}");
    assert!(
        out.stdout
            .starts_with("null\nzero\nfull\nrandom\nurandom\ntty\nnull-ok\n"),
        "{out}"
    );
    Ok(())
}

/// Unmounts (lazily, innermost first) what a test mounted on the host, even
/// when the test fails half-way.
struct HostMounts(Vec<std::path::PathBuf>);

impl Drop for HostMounts {
    fn drop(&mut self) {
        for p in self.0.iter().rev() {
            let _ = nix::mount::umount2(p.as_path(), nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

fn is_mount_point(p: &std::path::Path) -> bool {
    berth_integration::proc::mounts()
        .iter()
        .any(|m| m.mount_point == p)
}

/// critest's "rshared" spec once took the kit's /run/netns/<name> off the
/// host: a container with rootfsPropagation rshared kept the old root's
/// submounts as peers of the host's, so detaching the old root after
/// pivot_root unmounted their children on the host as well.
#[test]
fn rshared_container_leaves_host_submounts_alone() -> Result<()> {
    use nix::mount::{MsFlags, mount};
    let host = tempdir("rshared-")?;
    let outer = host.path().join("outer");
    let inner = outer.join("inner");
    std::fs::create_dir_all(&inner)?;
    let mut guard = HostMounts(Vec::new());
    // A shared mount with a child, like /run/netns and /run/netns/<name>.
    mount(
        Some(&outer),
        &outer,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )?;
    guard.0.push(outer.clone());
    mount(
        None::<&str>,
        &outer,
        None::<&str>,
        MsFlags::MS_SHARED,
        None::<&str>,
    )?;
    mount(
        Some("tmpfs"),
        &inner,
        Some("tmpfs"),
        MsFlags::empty(),
        Some("size=64k"),
    )?;
    guard.0.push(inner.clone());
    ensure!(
        is_mount_point(&inner),
        "test setup: {inner:?} is not mounted"
    );

    let rt = Runtime::new()?;
    let id = unique_id("rshared");
    let spec = Spec::sh(&id, "true").set("/linux/rootfsPropagation", "rshared".into());
    let b = Bundle::new(&spec)?;
    let out = rt.run(&id, &b)?;
    ensure!(out.success(), "{out}");
    assert!(
        is_mount_point(&inner),
        "the container's exit unmounted {inner:?} on the host"
    );
    Ok(())
}
