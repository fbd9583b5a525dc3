//! maskedPaths are empty inside the container, readonlyPaths are mounted
//! read-only (the default runc-spec lists).

use std::path::Path;

use anyhow::{Result, ensure};
use berth_integration::proc::parse_mountinfo;
use berth_integration::{Bundle, Runtime, Spec, unique_id};

/// Entries of a directory, or bytes readable from a file (0 if unreadable).
fn host_content(p: &Path) -> usize {
    if p.is_dir() {
        std::fs::read_dir(p).map(|d| d.count()).unwrap_or(0)
    } else {
        std::fs::read(p).map(|b| b.len()).unwrap_or(0)
    }
}

#[test]
fn masked_paths_are_empty() -> Result<()> {
    let spec0 = Spec::runc_default();
    let present: Vec<String> = spec0
        .masked_paths()
        .into_iter()
        .filter(|p| Path::new(p).exists())
        .collect();
    // At least one masked path must have content on the host, or masking
    // would be unobservable (/proc/timer_list and /sys/firmware usually do).
    ensure!(
        present.iter().any(|p| host_content(Path::new(p)) > 0),
        "no masked path has content on this host: {present:?}"
    );
    let script = format!(
        "for p in {}; do if [ -d $p ]; then echo \"$p $(ls -A $p | wc -l)\"; else echo \"$p $(cat $p 2>/dev/null | wc -c)\"; fi; done; cat /proc/self/mountinfo",
        present.join(" ")
    );
    let rt = Runtime::new()?;
    let id = unique_id("mask");
    let b = Bundle::new(&Spec::sh(&id, &script))?;
    let out = rt.run(&id, &b)?;
    ensure!(out.success(), "{out}");
    let mounts = parse_mountinfo(&out.stdout);
    for p in &present {
        assert!(
            out.stdout.lines().any(|l| l == format!("{p} 0")),
            "{p} is not empty inside: {out}"
        );
        assert!(
            mounts.iter().any(|m| m.mount_point == Path::new(p)),
            "nothing is mounted over {p}: {out}"
        );
    }
    Ok(())
}

#[test]
fn readonly_paths_are_readonly_mounts() -> Result<()> {
    let spec0 = Spec::runc_default();
    let rt = Runtime::new()?;
    let id = unique_id("ropath");
    let script = "cat /proc/self/mountinfo; echo x > /proc/sys/kernel/hostname; echo \"write=$?\"";
    let b = Bundle::new(&Spec::sh(&id, script))?;
    let out = rt.run(&id, &b)?;
    ensure!(out.success(), "{out}");
    assert!(
        out.stdout.contains("write=1"),
        "/proc/sys must not be writable: {out}"
    );
    let mounts = parse_mountinfo(&out.stdout);
    for p in spec0.readonly_paths() {
        if !Path::new(&p).exists() {
            continue;
        }
        let m = mounts
            .iter()
            .rev()
            .find(|m| m.mount_point == Path::new(&p))
            .unwrap_or_else(|| panic!("no mount at {p}: {out}"));
        assert!(
            m.options.split(',').any(|o| o == "ro"),
            "{p} mounted {} (not ro)",
            m.options
        );
    }
    Ok(())
}
