//! The system calls that build a container's filesystem, behind a trait.
//!
//! Rootfs logic calls these through `&dyn Syscall`, so the order and flags of the
//! mounts it makes are unit-tested with [`Recorder`] and no root; only `Linux`
//! touches the kernel.

use std::cell::RefCell;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};
use nix::sys::stat::{Mode, SFlag};

pub trait Syscall {
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> nix::Result<()>;
    fn umount(&self, target: &Path, flags: MntFlags) -> nix::Result<()>;
    fn mknod(&self, path: &Path, kind: SFlag, perm: Mode, dev: u64) -> nix::Result<()>;
    fn chown(&self, path: &Path, uid: Option<u32>, gid: Option<u32>) -> nix::Result<()>;
    fn symlink(&self, target: &Path, link: &Path) -> nix::Result<()>;
    /// Makes `new_root` the root of the calling process's mount namespace and
    /// detaches the old root.
    fn pivot_root(&self, new_root: &Path) -> nix::Result<()>;
    /// Sets read-only/nosuid/nodev/noexec (from `flags`) on the mount at `path`,
    /// and with `recursive` on every mount below it, in one call.
    fn mount_setattr(&self, path: &Path, recursive: bool, flags: MsFlags) -> nix::Result<()>;
}

/// MOUNT_ATTR_* bits of mount_setattr(2) for the MS_* flags it covers.
pub fn mount_attrs(flags: MsFlags) -> u64 {
    let mut attr = 0u64;
    for (ms, bit) in [
        (MsFlags::MS_RDONLY, 0x1),
        (MsFlags::MS_NOSUID, 0x2),
        (MsFlags::MS_NODEV, 0x4),
        (MsFlags::MS_NOEXEC, 0x8),
    ] {
        if flags.contains(ms) {
            attr |= bit;
        }
    }
    attr
}

/// The real kernel.
#[derive(Debug, Default, Clone, Copy)]
pub struct Linux;

impl Syscall for Linux {
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> nix::Result<()> {
        nix::mount::mount(source, target, fstype, flags, data)
    }

    fn umount(&self, target: &Path, flags: MntFlags) -> nix::Result<()> {
        nix::mount::umount2(target, flags)
    }

    fn mknod(&self, path: &Path, kind: SFlag, perm: Mode, dev: u64) -> nix::Result<()> {
        nix::sys::stat::mknod(path, kind, perm, dev)
    }

    fn chown(&self, path: &Path, uid: Option<u32>, gid: Option<u32>) -> nix::Result<()> {
        nix::unistd::chown(
            path,
            uid.map(nix::unistd::Uid::from_raw),
            gid.map(nix::unistd::Gid::from_raw),
        )
    }

    fn symlink(&self, target: &Path, link: &Path) -> nix::Result<()> {
        nix::unistd::symlinkat(target, nix::fcntl::AT_FDCWD, link)
    }

    fn mount_setattr(&self, path: &Path, recursive: bool, flags: MsFlags) -> nix::Result<()> {
        #[repr(C)]
        struct MountAttr {
            attr_set: u64,
            attr_clr: u64,
            propagation: u64,
            userns_fd: u64,
        }
        let attr = MountAttr {
            attr_set: mount_attrs(flags),
            attr_clr: 0,
            propagation: 0,
            userns_fd: 0,
        };
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|_| nix::Error::EINVAL)?;
        let at = if recursive { libc::AT_RECURSIVE } else { 0 };
        // SAFETY: mount_setattr reads a NUL-terminated path and `size` bytes of
        // a mount_attr struct, both alive for the duration of the call.
        let r = unsafe {
            libc::syscall(
                libc::SYS_mount_setattr,
                libc::AT_FDCWD,
                c.as_ptr(),
                at as libc::c_uint,
                &attr as *const MountAttr,
                std::mem::size_of::<MountAttr>(),
            )
        };
        nix::errno::Errno::result(r).map(drop)
    }

    fn pivot_root(&self, new_root: &Path) -> nix::Result<()> {
        // A handle on the old root: after pivot_root(".", ".") it is stacked on
        // the new one, and only a chdir through this fd reliably names that
        // mount rather than the new root below it.
        let old_root = nix::fcntl::open(
            "/",
            nix::fcntl::OFlag::O_RDONLY
                | nix::fcntl::OFlag::O_DIRECTORY
                | nix::fcntl::OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        // pivot_root(".", ".") stacks the old root over the new one without needing
        // a directory for it; unmounting "." then drops the old root.
        nix::unistd::chdir(new_root)?;
        nix::unistd::pivot_root(".", ".")?;
        nix::unistd::fchdir(&old_root)?;
        // With "rshared" rootfs propagation the old root's submounts are still
        // peers of the host's (e.g. /run/netns, a kubelet's shared volume dir):
        // detaching them here would unmount their children (/run/netns/<name>)
        // on the host too. As slaves they still receive, but no longer send.
        nix::mount::mount(
            None::<&str>,
            ".",
            None::<&str>,
            MsFlags::MS_SLAVE | MsFlags::MS_REC,
            None::<&str>,
        )?;
        nix::mount::umount2(".", MntFlags::MNT_DETACH)?;
        nix::unistd::chdir("/")
    }
}

/// One recorded call, as text that tests compare.
pub type Call = String;

/// Records calls instead of making them; every call succeeds unless told otherwise.
#[derive(Debug, Default)]
pub struct Recorder {
    pub calls: RefCell<Vec<Call>>,
    /// Calls whose text starts with one of these fail with the errno.
    pub fail: Vec<(String, nix::Error)>,
}

impl Recorder {
    fn record(&self, call: String) -> nix::Result<()> {
        let result = match self.fail.iter().find(|(p, _)| call.starts_with(p.as_str())) {
            Some((_, e)) => Err(*e),
            None => Ok(()),
        };
        self.calls.borrow_mut().push(call);
        result
    }

    pub fn take(&self) -> Vec<Call> {
        std::mem::take(&mut self.calls.borrow_mut())
    }
}

fn show(p: Option<&Path>) -> String {
    p.map(|p| p.display().to_string())
        .unwrap_or_else(|| "-".into())
}

impl Syscall for Recorder {
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> nix::Result<()> {
        self.record(format!(
            "mount {} {} {} {:?} {}",
            show(source),
            target.display(),
            fstype.unwrap_or("-"),
            flags,
            data.unwrap_or("-")
        ))
    }

    fn umount(&self, target: &Path, flags: MntFlags) -> nix::Result<()> {
        self.record(format!("umount {} {:?}", target.display(), flags))
    }

    fn mknod(&self, path: &Path, kind: SFlag, perm: Mode, dev: u64) -> nix::Result<()> {
        self.record(format!(
            "mknod {} {:?} {:o} {}:{}",
            path.display(),
            kind,
            perm.bits(),
            libc::major(dev),
            libc::minor(dev)
        ))
    }

    fn chown(&self, path: &Path, uid: Option<u32>, gid: Option<u32>) -> nix::Result<()> {
        self.record(format!("chown {} {:?} {:?}", path.display(), uid, gid))
    }

    fn symlink(&self, target: &Path, link: &Path) -> nix::Result<()> {
        self.record(format!("symlink {} {}", target.display(), link.display()))
    }

    fn pivot_root(&self, new_root: &Path) -> nix::Result<()> {
        self.record(format!("pivot_root {}", new_root.display()))
    }

    fn mount_setattr(&self, path: &Path, recursive: bool, flags: MsFlags) -> nix::Result<()> {
        self.record(format!(
            "mount_setattr {} recursive={recursive} attr={:#x}",
            path.display(),
            mount_attrs(flags)
        ))
    }
}

/// A path that names an open file through /proc/self/fd, so a later mount lands
/// on exactly the inode that was resolved, whatever the container does to the
/// path meanwhile.
#[derive(Debug)]
pub struct FdPath {
    pub fd: std::os::fd::OwnedFd,
    pub path: PathBuf,
}
