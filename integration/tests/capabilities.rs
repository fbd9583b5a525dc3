//! Capability sets inside the container: CapInh/CapPrm/CapEff/CapBnd/CapAmb
//! of /proc/self/status against the masks computed from the spec (with the
//! kernel's execve rules, see `caps::expected_after_exec`).

use anyhow::{Context, Result, ensure};
use berth_integration::caps::{CapSets, expected_after_exec};
use berth_integration::rootfs::USER_UID;
use berth_integration::{Bundle, CapSpec, Runtime, Spec, unique_id};

fn caps_inside(spec: Spec, id: &str) -> Result<(CapSets, String)> {
    let rt = Runtime::new()?;
    let b =
        Bundle::new(&spec.args(&["sh", "-c", "grep -E '^(Cap|NoNewPrivs)' /proc/self/status"]))?;
    let out = rt.run(id, &b)?;
    ensure!(out.success(), "{out}");
    let sets = CapSets::parse_status(&out.stdout).with_context(|| out.to_string())?;
    let nnp = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("NoNewPrivs:"))
        .map(|v| v.trim().to_string())
        .unwrap_or_default();
    Ok((sets, nnp))
}

fn host_known_caps() -> Result<u64> {
    let me = std::fs::read_to_string("/proc/self/status")?;
    Ok(CapSets::parse_status(&me)?.bounding)
}

fn check(caps: CapSpec, uid: u32, nnp: bool) -> Result<()> {
    let id = unique_id("caps");
    let spec = Spec::test(&id, &[])
        .capabilities(&caps)
        .user(uid, uid)
        .no_new_privileges(nnp);
    let (got, nnp_field) = caps_inside(spec, &id)?;
    let known = host_known_caps()?;
    let want = expected_after_exec(&caps, uid, nnp)?.masked(known);
    let got = got.masked(known);
    assert_eq!(
        got,
        want,
        "capabilities differ\n--- got ---\n{}\n--- want ---\n{}",
        got.describe(),
        want.describe()
    );
    assert_eq!(nnp_field, if nnp { "1" } else { "0" }, "NoNewPrivs");
    Ok(())
}

#[test]
fn runc_spec_default_capabilities() -> Result<()> {
    check(CapSpec::from_spec(&Spec::runc_default()), 0, true)
}

#[test]
fn root_gets_exactly_the_permitted_and_effective_sets() -> Result<()> {
    check(
        CapSpec::sets(
            &[
                "CAP_CHOWN",
                "CAP_DAC_OVERRIDE",
                "CAP_FOWNER",
                "CAP_KILL",
                "CAP_NET_BIND_SERVICE",
                "CAP_SETUID",
                "CAP_SETGID",
                "CAP_NET_RAW",
                "CAP_AUDIT_WRITE",
            ],
            &[
                "CAP_CHOWN",
                "CAP_KILL",
                "CAP_NET_BIND_SERVICE",
                "CAP_SETUID",
                "CAP_AUDIT_WRITE",
            ],
            &[
                "CAP_CHOWN",
                "CAP_KILL",
                "CAP_NET_BIND_SERVICE",
                "CAP_SETUID",
                "CAP_AUDIT_WRITE",
            ],
            &["CAP_KILL", "CAP_NET_RAW"],
            &["CAP_KILL"],
        ),
        0,
        true,
    )
}

#[test]
fn root_without_no_new_privileges_regains_the_bounding_set() -> Result<()> {
    check(
        CapSpec::sets(
            &["CAP_CHOWN", "CAP_KILL", "CAP_SYS_TIME", "CAP_MKNOD"],
            &["CAP_KILL"],
            &["CAP_KILL"],
            &[],
            &[],
        ),
        0,
        false,
    )
}

#[test]
fn non_root_keeps_only_ambient_capabilities() -> Result<()> {
    check(
        CapSpec::sets(
            &[
                "CAP_CHOWN",
                "CAP_KILL",
                "CAP_NET_BIND_SERVICE",
                "CAP_NET_RAW",
                "CAP_SYS_NICE",
            ],
            &["CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
            &["CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
            &["CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_NET_RAW"],
            &["CAP_KILL", "CAP_NET_BIND_SERVICE"],
        ),
        USER_UID,
        true,
    )
}

#[test]
fn empty_capability_sets_drop_everything() -> Result<()> {
    check(CapSpec::default(), 0, true)
}

#[test]
fn a_dropped_capability_is_really_unusable() -> Result<()> {
    // Without CAP_CHOWN root cannot chown a file it does not own.
    let rt = Runtime::new()?;
    let id = unique_id("nochown");
    let spec = Spec::sh(&id, "touch /tmp/f && chown 1000 /tmp/f; echo \"chown=$?\"")
        .readonly(false)
        .capabilities(&CapSpec::all(&["CAP_KILL"]));
    let b = Bundle::new(&spec)?;
    let out = rt.run(&id, &b)?;
    ensure!(out.success(), "{out}");
    assert!(out.stdout.contains("chown=1"), "{out}");
    assert!(out.stderr.contains("Operation not permitted"), "{out}");
    Ok(())
}
