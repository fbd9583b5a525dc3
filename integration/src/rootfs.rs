//! A busybox root filesystem built from Debian's busybox-static.
//!
//! The template is built once per test process; [`clone_rootfs`] makes a
//! private copy cheaply (the 2 MB busybox binary is hard-linked, the rest is
//! a few hundred symlinks and small files).

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{Context, Result, anyhow, bail, ensure};

use crate::workdir::base_dir;

/// The uid and gid of the unprivileged user in the rootfs.
pub const USER_UID: u32 = 1000;
/// The name of the unprivileged user in the rootfs.
pub const USER_NAME: &str = "user";

/// Path of the static busybox: `$BUSYBOX`, else /bin/busybox, else /usr/bin/busybox.
pub fn busybox_path() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("BUSYBOX") {
        return Ok(PathBuf::from(p));
    }
    ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .ok_or_else(|| {
            anyhow!("busybox not found: install busybox-static (apt-get install busybox-static)")
        })
}

/// True if the ELF file has no program interpreter (is statically linked).
pub fn is_static_elf(path: &Path) -> Result<bool> {
    let b = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    ensure!(
        b.len() > 64 && &b[..4] == b"\x7fELF" && b[4] == 2,
        "{} is not a 64-bit ELF file",
        path.display()
    );
    let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(b[0x20..0x28].try_into()?) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    for i in 0..phnum {
        let o = phoff + i * phentsize;
        ensure!(o + 4 <= b.len(), "truncated ELF program headers");
        if u32::from_le_bytes(b[o..o + 4].try_into()?) == 3 {
            return Ok(false); // PT_INTERP
        }
    }
    Ok(true)
}

/// Builds a busybox rootfs at `dest` (which must not exist yet).
pub fn build_rootfs(dest: &Path) -> Result<()> {
    let busybox = busybox_path()?;
    ensure!(
        is_static_elf(&busybox)?,
        "{} is dynamically linked; install busybox-static",
        busybox.display()
    );
    let list = Command::new(&busybox)
        .arg("--list")
        .output()
        .with_context(|| format!("running {} --list", busybox.display()))?;
    ensure!(list.status.success(), "busybox --list failed");
    let applets = String::from_utf8(list.stdout)?;

    fs::create_dir(dest).with_context(|| format!("creating {}", dest.display()))?;
    for (dir, mode) in [
        ("bin", 0o755),
        ("etc", 0o755),
        ("proc", 0o555),
        ("sys", 0o555),
        ("dev", 0o755),
        ("tmp", 0o1777),
        ("root", 0o700),
        ("home", 0o755),
        ("var", 0o755),
        ("run", 0o755),
        ("usr", 0o755),
    ] {
        let p = dest.join(dir);
        fs::create_dir(&p)?;
        fs::set_permissions(&p, fs::Permissions::from_mode(mode))?;
    }
    fs::copy(&busybox, dest.join("bin/busybox"))?;
    fs::set_permissions(dest.join("bin/busybox"), fs::Permissions::from_mode(0o755))?;
    for applet in applets.lines().map(str::trim).filter(|a| !a.is_empty()) {
        // `busybox --list` names busybox itself; linking it would replace the binary.
        if applet == "busybox" || applet.contains('/') {
            continue;
        }
        symlink("busybox", dest.join("bin").join(applet))?;
    }
    symlink("bin", dest.join("sbin"))?;
    symlink("../bin", dest.join("usr/bin"))?;
    symlink("../bin", dest.join("usr/sbin"))?;
    let home = dest.join("home").join(USER_NAME);
    fs::create_dir(&home)?;
    std::os::unix::fs::chown(&home, Some(USER_UID), Some(USER_UID))?;
    fs::write(
        dest.join("etc/passwd"),
        format!(
            "root:x:0:0:root:/root:/bin/sh\n\
             {USER_NAME}:x:{USER_UID}:{USER_UID}:{USER_NAME}:/home/{USER_NAME}:/bin/sh\n\
             nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
        ),
    )?;
    fs::write(
        dest.join("etc/group"),
        format!("root:x:0:\n{USER_NAME}:x:{USER_UID}:\nnogroup:x:65534:\n"),
    )?;
    fs::write(dest.join("etc/hosts"), "127.0.0.1 localhost\n")?;
    fs::write(dest.join("etc/resolv.conf"), "")?;
    Ok(())
}

static TEMPLATE: OnceLock<Result<PathBuf, String>> = OnceLock::new();

/// The rootfs template of this process, built on first use. Do not modify it.
pub fn template() -> Result<&'static Path> {
    TEMPLATE
        .get_or_init(|| {
            let p = base_dir().join("rootfs-template");
            build_rootfs(&p).map(|()| p).map_err(|e| format!("{e:#}"))
        })
        .as_deref()
        .map_err(|e| anyhow!("building the busybox rootfs: {e}"))
}

/// Makes a private copy of the template at `dest` (which must not exist).
/// Large files are hard-linked, small ones copied, symlinks recreated.
pub fn clone_rootfs(dest: &Path) -> Result<()> {
    copy_tree(template()?, dest)
}

fn copy_tree(src: &Path, dest: &Path) -> Result<()> {
    let meta = fs::symlink_metadata(src)?;
    let ft = meta.file_type();
    if ft.is_symlink() {
        symlink(fs::read_link(src)?, dest)?;
    } else if ft.is_dir() {
        fs::create_dir(dest)?;
        for e in fs::read_dir(src)? {
            let e = e?;
            copy_tree(&e.path(), &dest.join(e.file_name()))?;
        }
        fs::set_permissions(dest, meta.permissions())?;
        std::os::unix::fs::chown(dest, Some(meta.uid()), Some(meta.gid()))?;
    } else if ft.is_file() {
        if meta.len() > 64 * 1024 && fs::hard_link(src, dest).is_ok() {
            return Ok(());
        }
        fs::copy(src, dest)?;
    } else {
        bail!("unexpected file type at {}", src.display());
    }
    Ok(())
}
