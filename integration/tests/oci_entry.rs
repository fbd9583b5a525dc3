//! The runc-compatible CLI answers both as `berth-oci ...` (argv[0]) and as
//! `berth oci ...`. berth-only.

use std::process::Command;

use anyhow::{Result, ensure};
use berth_integration::{Bundle, Runtime, Spec, skip_unless_berth, unique_id};
use serde_json::Value;

#[test]
fn berth_oci_subcommand_sees_the_same_containers() -> Result<()> {
    if skip_unless_berth("`berth oci` entry point")? {
        return Ok(());
    }
    let rt = Runtime::new()?;
    let id = unique_id("entry");
    let b = Bundle::new(&Spec::test(&id, &["sleep", "1000"]))?;
    rt.create(&id, &b)?;
    let root = rt.root();
    let out = Command::new(&rt.binary().target)
        .arg("oci")
        .arg("--root")
        .arg(&root)
        .args(["state", &id])
        .output()?;
    ensure!(out.status.success(), "berth oci state failed: {out:?}");
    let st: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(st["status"], "created", "{st}");
    assert_eq!(st["id"], id.as_str(), "{st}");
    let via_link: Value = serde_json::from_str(&rt.cmd(&["state", &id])?.check()?.stdout)?;
    assert_eq!(st, via_link, "the two entry points disagree");
    let del = Command::new(&rt.binary().target)
        .arg("oci")
        .arg("--root")
        .arg(&root)
        .args(["delete", "--force", &id])
        .output()?;
    ensure!(del.status.success(), "berth oci delete failed: {del:?}");
    assert!(!rt.cmd(&["state", &id])?.success());
    Ok(())
}

#[test]
fn features_is_the_same_through_both_entry_points() -> Result<()> {
    if skip_unless_berth("`berth oci` entry point")? {
        return Ok(());
    }
    let rt = Runtime::new()?;
    let link: Value = serde_json::from_str(&rt.cmd(&["features"])?.check()?.stdout)?;
    let out = Command::new(&rt.binary().target)
        .args(["oci", "features"])
        .output()?;
    ensure!(out.status.success(), "{out:?}");
    let sub: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(link, sub);
    Ok(())
}
