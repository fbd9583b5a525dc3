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
