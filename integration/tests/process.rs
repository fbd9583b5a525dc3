//! process.user, rlimits, oomScoreAdj.

use anyhow::{Result, ensure};
use berth_integration::rootfs::USER_UID;
use berth_integration::{Bundle, Runtime, Spec, unique_id};
use serde_json::json;

fn run(spec: Spec, id: &str) -> Result<String> {
    let rt = Runtime::new()?;
    let b = Bundle::new(&spec)?;
    let out = rt.run(id, &b)?;
    ensure!(out.success(), "{out}");
    Ok(out.stdout)
}

#[test]
fn user_and_additional_groups() -> Result<()> {
    let id = unique_id("user");
    let out = run(
        Spec::sh(&id, "id -u; id -g; id -G; id -un; echo $HOME")
            .user(USER_UID, USER_UID)
            .additional_gids(&[10, 20])
            .add_env("HOME=/home/user"),
        &id,
    )?;
    assert_eq!(
        out,
        format!("{USER_UID}\n{USER_UID}\n{USER_UID} 10 20\nuser\n/home/user\n")
    );
    Ok(())
}

#[test]
fn non_root_cannot_write_roots_files() -> Result<()> {
    let id = unique_id("userperm");
    let out = run(
        Spec::sh(&id, "echo x >> /etc/passwd; echo \"append=$?\"")
            .user(USER_UID, USER_UID)
            .readonly(false),
        &id,
    )?;
    assert!(out.contains("append=1"), "{out}");
    Ok(())
}

#[test]
fn rlimits_are_applied() -> Result<()> {
    let id = unique_id("rlimit");
    let out = run(
        Spec::sh(
            &id,
            "grep -E '^Max (open files|processes)' /proc/self/limits",
        )
        .rlimit("RLIMIT_NOFILE", 777, 888)
        .rlimit("RLIMIT_NPROC", 300, 400),
        &id,
    )?;
    let fields = |name: &str| -> Vec<String> {
        out.lines()
            .find(|l| l.starts_with(name))
            .map(|l| {
                l[name.len()..]
                    .split_whitespace()
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(fields("Max open files")[..2], ["777", "888"], "{out}");
    assert_eq!(fields("Max processes")[..2], ["300", "400"], "{out}");
    Ok(())
}

#[test]
fn oom_score_adj_is_applied() -> Result<()> {
    let id = unique_id("oomadj");
    let out = run(
        Spec::sh(&id, "cat /proc/self/oom_score_adj").set("/process/oomScoreAdj", json!(423)),
        &id,
    )?;
    assert_eq!(out, "423\n");
    Ok(())
}
