//! linux.seccomp: a profile denying mkdir makes it fail with the given errno.

use anyhow::{Result, ensure};
use berth_integration::spec::seccomp_deny;
use berth_integration::{Bundle, Runtime, Spec, unique_id};

const SCRIPT: &str = "grep '^Seccomp:' /proc/self/status; mkdir /tmp/x; echo \"mkdir=$?\"; [ -d /tmp/x ] && echo exists; true";

fn run(spec: Spec, id: &str) -> Result<berth_integration::Output> {
    let rt = Runtime::new()?;
    let b = Bundle::new(&spec.readonly(false))?;
    let out = rt.run(id, &b)?;
    ensure!(out.success(), "{out}");
    Ok(out)
}

#[test]
fn denied_mkdir_fails_with_eperm() -> Result<()> {
    let id = unique_id("seccomp");
    let out = run(
        Spec::sh(&id, SCRIPT).seccomp(seccomp_deny(&["mkdir", "mkdirat"], 1)),
        &id,
    )?;
    assert!(
        out.stdout.contains("Seccomp:\t2"),
        "no seccomp filter installed: {out}"
    );
    assert!(out.stdout.contains("mkdir=1"), "{out}");
    assert!(out.stderr.contains("Operation not permitted"), "{out}");
    assert!(!out.stdout.contains("exists"), "{out}");
    Ok(())
}

#[test]
fn errno_ret_is_honoured() -> Result<()> {
    let id = unique_id("seccomp13");
    let out = run(
        Spec::sh(&id, SCRIPT).seccomp(seccomp_deny(&["mkdir", "mkdirat"], 13)),
        &id,
    )?;
    assert!(out.stdout.contains("mkdir=1"), "{out}");
    assert!(out.stderr.contains("Permission denied"), "{out}");
    Ok(())
}

#[test]
fn without_a_profile_mkdir_works() -> Result<()> {
    let id = unique_id("noseccomp");
    let out = run(Spec::sh(&id, SCRIPT), &id)?;
    assert!(out.stdout.contains("Seccomp:\t0"), "{out}");
    assert!(out.stdout.contains("mkdir=0"), "{out}");
    assert!(out.stdout.contains("exists"), "{out}");
    Ok(())
}
