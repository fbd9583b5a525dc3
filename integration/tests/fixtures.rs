//! Self-tests of the fixtures: the busybox rootfs, the runc-spec default,
//! SHA-256 and the tar writer.

use std::process::Command;

use anyhow::{Result, ensure};
use berth_integration::image::{TarEntry, TarWriter, sha256_hex};
use berth_integration::rootfs::{self, USER_UID};
use berth_integration::runtime::which;
use berth_integration::spec::Spec;
use berth_integration::workdir::tempdir;
use serde_json::Value;

#[test]
fn rootfs_has_static_busybox_applets_and_users() -> Result<()> {
    let dir = tempdir("fixture-")?;
    let root = dir.path().join("rootfs");
    rootfs::clone_rootfs(&root)?;
    let bb = root.join("bin/busybox");
    ensure!(
        bb.is_file() && !bb.is_symlink(),
        "bin/busybox must be a file"
    );
    ensure!(rootfs::is_static_elf(&bb)?, "busybox must be static");
    for applet in [
        "sh", "echo", "sleep", "ps", "cat", "id", "tail", "mkdir", "true",
    ] {
        let p = root.join("bin").join(applet);
        ensure!(
            std::fs::read_link(&p)?.to_str() == Some("busybox"),
            "{applet} is not a busybox link"
        );
    }
    let passwd = std::fs::read_to_string(root.join("etc/passwd"))?;
    ensure!(passwd.starts_with("root:x:0:0:"), "{passwd}");
    ensure!(
        passwd.contains(&format!(":x:{USER_UID}:{USER_UID}:")),
        "{passwd}"
    );
    let group = std::fs::read_to_string(root.join("etc/group"))?;
    ensure!(group.contains(&format!(":x:{USER_UID}:")), "{group}");
    for d in ["proc", "sys", "dev", "tmp"] {
        ensure!(root.join(d).is_dir(), "{d} missing");
        ensure!(
            std::fs::read_dir(root.join(d))?.next().is_none(),
            "{d} not empty"
        );
    }
    Ok(())
}

#[test]
fn default_spec_equals_runc_spec() -> Result<()> {
    let runc = which("runc").ok_or_else(|| anyhow::anyhow!("runc not installed"))?;
    let dir = tempdir("runc-spec-")?;
    let out = Command::new(runc)
        .arg("spec")
        .current_dir(dir.path())
        .output()?;
    ensure!(out.status.success(), "runc spec failed: {out:?}");
    let theirs: Value = serde_json::from_slice(&std::fs::read(dir.path().join("config.json"))?)?;
    assert_eq!(Spec::runc_default().0, theirs);
    Ok(())
}

#[test]
fn spec_edits_land_where_the_runtime_reads_them() {
    let s = Spec::test("x", &["echo", "hi"])
        .hostname("h")
        .readonly(false)
        .pids_limit(10)
        .annotation("a/b", "c")
        .remove_namespace("network")
        .rlimit("RLIMIT_NOFILE", 7, 8);
    assert_eq!(s.0["process"]["terminal"], false);
    assert_eq!(s.0["process"]["args"], serde_json::json!(["echo", "hi"]));
    assert_eq!(s.0["linux"]["cgroupsPath"], "/berth-it-x");
    assert_eq!(s.0["linux"]["resources"]["pids"]["limit"], 10);
    assert_eq!(s.0["linux"]["resources"]["devices"][0]["allow"], false);
    assert_eq!(s.0["annotations"]["a/b"], "c");
    assert_eq!(s.0["hostname"], "h");
    assert_eq!(s.0["linux"]["namespaces"].as_array().unwrap().len(), 4);
    assert_eq!(s.0["process"]["rlimits"].as_array().unwrap().len(), 1);
    assert_eq!(s.0["process"]["rlimits"][0]["soft"], 7);
}

#[test]
fn sha256_matches_known_vectors() {
    assert_eq!(
        sha256_hex(b""),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    assert_eq!(
        sha256_hex(b"abc"),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    let million_a = vec![b'a'; 1_000_000];
    assert_eq!(
        sha256_hex(&million_a),
        "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"
    );
}

#[test]
fn tar_writer_output_is_read_by_gnu_tar() -> Result<()> {
    let dir = tempdir("tar-")?;
    let mut t = TarWriter::new();
    t.append("d", TarEntry::Dir, 0o755, 0, 0)?;
    t.append("d/f", TarEntry::File(b"hello\n"), 0o644, 1000, 1000)?;
    t.append("d/l", TarEntry::Symlink("f"), 0o777, 0, 0)?;
    let long = format!("{}/{}", "p".repeat(80), "q".repeat(60));
    t.append(&long, TarEntry::File(b"x"), 0o600, 0, 0)?;
    let path = dir.path().join("t.tar");
    std::fs::write(&path, t.finish())?;
    let out = Command::new("tar")
        .args(["-xf", "t.tar"])
        .current_dir(dir.path())
        .output()?;
    ensure!(out.status.success(), "tar -x failed: {out:?}");
    assert_eq!(std::fs::read_to_string(dir.path().join("d/f"))?, "hello\n");
    assert_eq!(
        std::fs::read_link(dir.path().join("d/l"))?.to_str(),
        Some("f")
    );
    assert_eq!(std::fs::read_to_string(dir.path().join(&long))?, "x");
    Ok(())
}

#[test]
fn tar_writer_entries_with_pax_devices_and_links_are_read_by_gnu_tar() -> Result<()> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};

    use berth_integration::image::Entry;

    let dir = tempdir("tar-pax-")?;
    let long_path = format!("{}/{}", "d".repeat(120), "f".repeat(110));
    let long_target = "t".repeat(150);
    let mut t = TarWriter::new();
    for e in [
        Entry::dir("d").mode(0o750).owner(7, 8),
        Entry::file("d/f", "data").mode(0o640).mtime(1_234_567_890),
        Entry::hardlink("d/hard", "d/f"),
        Entry::symlink("d/long-link", &long_target),
        Entry::char_dev("d/null", 1, 3),
        Entry::fifo("d/fifo"),
        Entry::file("d/big-ids", "x").owner(3_000_000, 3_000_001),
        Entry::file("d/xattr", "x").xattr("user.berth", "value"),
        Entry::dir(&"d".repeat(120)),
        Entry::file(&long_path, "long"),
    ] {
        t.append_entry(&e)?;
    }
    let tar = dir.path().join("t.tar");
    std::fs::write(&tar, t.finish())?;
    let out_dir = dir.path().join("out");
    std::fs::create_dir(&out_dir)?;
    let out = Command::new("tar")
        .args(["--xattrs", "--xattrs-include=*", "--numeric-owner", "-xpf"])
        .arg(&tar)
        .arg("-C")
        .arg(&out_dir)
        .output()?;
    ensure!(out.status.success(), "tar -x failed: {out:?}");
    let p = |n: &str| out_dir.join(n);
    let d = std::fs::symlink_metadata(p("d"))?;
    assert_eq!((d.mode() & 0o7777, d.uid(), d.gid()), (0o750, 7, 8));
    let f = std::fs::symlink_metadata(p("d/f"))?;
    assert_eq!((f.mode() & 0o7777, f.mtime()), (0o640, 1_234_567_890));
    assert_eq!(std::fs::read_to_string(p("d/f"))?, "data");
    assert_eq!(std::fs::symlink_metadata(p("d/hard"))?.ino(), f.ino());
    assert_eq!(
        std::fs::read_link(p("d/long-link"))?.to_string_lossy(),
        long_target
    );
    let null = std::fs::symlink_metadata(p("d/null"))?;
    ensure!(null.file_type().is_char_device());
    assert_eq!((libc::major(null.rdev()), libc::minor(null.rdev())), (1, 3));
    ensure!(
        std::fs::symlink_metadata(p("d/fifo"))?
            .file_type()
            .is_fifo()
    );
    let ids = std::fs::symlink_metadata(p("d/big-ids"))?;
    assert_eq!((ids.uid(), ids.gid()), (3_000_000, 3_000_001));
    assert_eq!(std::fs::read_to_string(p(&long_path))?, "long");
    let path = std::ffi::CString::new(p("d/xattr").to_string_lossy().as_bytes())?;
    let mut buf = [0u8; 64];
    // SAFETY: valid NUL-terminated strings and a buffer of the given size.
    let n = unsafe {
        libc::lgetxattr(
            path.as_ptr(),
            c"user.berth".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    ensure!(
        n >= 0,
        "no user.berth xattr: {}",
        std::io::Error::last_os_error()
    );
    assert_eq!(&buf[..n as usize], b"value");
    Ok(())
}
