//! The UTS namespace gets the spec's hostname; the host's stays as it was.
//! (Not `domainname`: runc 1.1 ignores that field.)

use anyhow::{Result, ensure};
use berth_integration::{Bundle, Runtime, Spec, unique_id};

fn host_hostname() -> Result<String> {
    Ok(std::fs::read_to_string("/proc/sys/kernel/hostname")?
        .trim()
        .to_string())
}

#[test]
fn hostname_is_set_inside_only() -> Result<()> {
    let before = host_hostname()?;
    let rt = Runtime::new()?;
    let id = unique_id("host");
    let spec = Spec::sh(&id, "hostname; uname -n").hostname("berth-box");
    let b = Bundle::new(&spec)?;
    let out = rt.run(&id, &b)?;
    ensure!(out.success(), "{out}");
    assert_eq!(out.stdout, "berth-box\nberth-box\n", "{out}");
    assert_eq!(host_hostname()?, before, "the host's hostname changed");
    Ok(())
}

#[test]
fn changing_the_hostname_inside_does_not_leak_out() -> Result<()> {
    let before = host_hostname()?;
    let rt = Runtime::new()?;
    let id = unique_id("sethost");
    let caps = ["CAP_SYS_ADMIN", "CAP_KILL"];
    let spec = Spec::sh(&id, "hostname changed-inside && hostname")
        .capabilities(&berth_integration::CapSpec::all(&caps));
    let b = Bundle::new(&spec)?;
    let out = rt.run(&id, &b)?;
    ensure!(out.success(), "{out}");
    assert_eq!(out.stdout, "changed-inside\n", "{out}");
    assert_eq!(host_hostname()?, before, "the host's hostname changed");
    Ok(())
}
