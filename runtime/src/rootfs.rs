//! The container's root filesystem: mounts, devices, pivot_root, masked and
//! read-only paths.
//!
//! Runs in the container init, in its new mount namespace, before the user's
//! process. Every destination is resolved inside the rootfs with
//! `openat2(RESOLVE_IN_ROOT)`, so `..` and symlinks in an image can never send a
//! mount to the host; the mount is then made on the resolved inode through
//! /proc/self/fd.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::mount::MsFlags;
use nix::sys::stat::{Mode, SFlag};
use oci_spec::runtime::{LinuxDevice, LinuxDeviceType, Mount};
use thiserror::Error;

use crate::syscall::{FdPath, Syscall};

#[derive(Debug, Error)]
pub enum RootfsError {
    #[error("resolving {path} inside the rootfs: {source}")]
    Resolve { path: PathBuf, source: Errno },
    #[error("{path} inside the rootfs is a dangling symlink or not a directory")]
    NotADirectory { path: PathBuf },
    #[error("{what} on {target}: {source}")]
    Mount {
        what: String,
        target: PathBuf,
        source: Errno,
    },
    #[error("mount source {path}: {source}")]
    Source {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("creating device {path}: {source}")]
    Device { path: PathBuf, source: Errno },
    #[error("pivot_root to {path}: {source}")]
    Pivot { path: PathBuf, source: Errno },
    #[error(
        "rootfs propagation {0:?} is not one of shared, slave, private, unbindable and their r-forms"
    )]
    Propagation(String),
    #[error("reading /proc/self/mountinfo: {0}")]
    MountInfo(std::io::Error),
}

type Result<T> = std::result::Result<T, RootfsError>;

/// Mount options split into what mount(2) takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountOptions {
    pub flags: MsFlags,
    pub propagation: MsFlags,
    pub data: Vec<String>,
    pub bind: bool,
    /// "rro": read-only for every mount below the bind too.
    pub recursive_ro: bool,
}

/// Parses the fstab-style options of a spec mount.
pub fn parse_options(options: &[String]) -> MountOptions {
    let mut o = MountOptions {
        flags: MsFlags::empty(),
        propagation: MsFlags::empty(),
        data: Vec::new(),
        bind: false,
        recursive_ro: false,
    };
    for opt in options {
        let (set, clear, prop) = match opt.as_str() {
            "defaults" | "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY, MsFlags::empty()),
            "ro" => (MsFlags::MS_RDONLY, MsFlags::empty(), MsFlags::empty()),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty(), MsFlags::empty()),
            "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID, MsFlags::empty()),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty(), MsFlags::empty()),
            "dev" => (MsFlags::empty(), MsFlags::MS_NODEV, MsFlags::empty()),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty(), MsFlags::empty()),
            "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC, MsFlags::empty()),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty(), MsFlags::empty()),
            "async" => (MsFlags::empty(), MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
            "dirsync" => (MsFlags::MS_DIRSYNC, MsFlags::empty(), MsFlags::empty()),
            "remount" => (MsFlags::MS_REMOUNT, MsFlags::empty(), MsFlags::empty()),
            "mand" => (MsFlags::MS_MANDLOCK, MsFlags::empty(), MsFlags::empty()),
            "nomand" => (MsFlags::empty(), MsFlags::MS_MANDLOCK, MsFlags::empty()),
            "atime" => (MsFlags::empty(), MsFlags::MS_NOATIME, MsFlags::empty()),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty(), MsFlags::empty()),
            "diratime" => (MsFlags::empty(), MsFlags::MS_NODIRATIME, MsFlags::empty()),
            "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty(), MsFlags::empty()),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty(), MsFlags::empty()),
            "norelatime" => (MsFlags::empty(), MsFlags::MS_RELATIME, MsFlags::empty()),
            "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty(), MsFlags::empty()),
            "nostrictatime" => (MsFlags::empty(), MsFlags::MS_STRICTATIME, MsFlags::empty()),
            "bind" => {
                o.bind = true;
                (MsFlags::MS_BIND, MsFlags::empty(), MsFlags::empty())
            }
            "rbind" => {
                o.bind = true;
                (
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    MsFlags::empty(),
                    MsFlags::empty(),
                )
            }
            "private" => (MsFlags::empty(), MsFlags::empty(), MsFlags::MS_PRIVATE),
            "rprivate" => (
                MsFlags::empty(),
                MsFlags::empty(),
                MsFlags::MS_PRIVATE | MsFlags::MS_REC,
            ),
            "shared" => (MsFlags::empty(), MsFlags::empty(), MsFlags::MS_SHARED),
            "rshared" => (
                MsFlags::empty(),
                MsFlags::empty(),
                MsFlags::MS_SHARED | MsFlags::MS_REC,
            ),
            "slave" => (MsFlags::empty(), MsFlags::empty(), MsFlags::MS_SLAVE),
            "rslave" => (
                MsFlags::empty(),
                MsFlags::empty(),
                MsFlags::MS_SLAVE | MsFlags::MS_REC,
            ),
            "unbindable" => (MsFlags::empty(), MsFlags::empty(), MsFlags::MS_UNBINDABLE),
            "runbindable" => (
                MsFlags::empty(),
                MsFlags::empty(),
                MsFlags::MS_UNBINDABLE | MsFlags::MS_REC,
            ),
            // SELinux relabel requests and runc's own markers: accepted, nothing to do here.
            "z" | "Z" | "rrw" => continue,
            "rro" => {
                o.recursive_ro = true;
                continue;
            }
            other => {
                o.data.push(other.to_owned());
                continue;
            }
        };
        o.flags.insert(set);
        o.flags.remove(clear);
        o.propagation.insert(prop);
    }
    o
}

pub fn propagation_flags(name: &str) -> Result<MsFlags> {
    let o = parse_options(&[name.to_owned()]);
    if o.propagation.is_empty() {
        return Err(RootfsError::Propagation(name.to_owned()));
    }
    Ok(o.propagation)
}

/// openat2, retried while the kernel answers EAGAIN: with RESOLVE_IN_ROOT it
/// does so when a rename or mount anywhere on the host raced the lookup and
/// it cannot prove `..` stayed inside (busy hosts see this; one retry usually
/// suffices), and EINTR.
fn openat2<P: ?Sized + nix::NixPath>(
    dir: &impl AsFd,
    path: &P,
    how: OpenHow,
) -> nix::Result<std::os::fd::OwnedFd> {
    let mut tries = 0;
    loop {
        match nix::fcntl::openat2(dir, path, how) {
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) if tries < 128 => tries += 1,
            other => return other,
        }
    }
}

fn open_how(flags: OFlag) -> OpenHow {
    OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS)
}

fn relative(path: &Path) -> PathBuf {
    path.components()
        .filter(|c| {
            !matches!(
                c,
                Component::RootDir | Component::Prefix(_) | Component::CurDir
            )
        })
        .collect()
}

fn fd_path(fd: OwnedFd) -> FdPath {
    let path = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
    FdPath { fd, path }
}

/// What to create at the end of a path that does not exist yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Create {
    Nothing,
    Dir,
    File,
}

/// Opens `path` as seen from inside `root` (symlinks and `..` cannot leave it),
/// creating missing directories, and the last component as `create` says.
pub fn resolve_in_root(root: &impl AsFd, path: &Path, create: Create) -> Result<FdPath> {
    let rel = relative(path);
    let err = |source| RootfsError::Resolve {
        path: path.to_owned(),
        source,
    };
    if rel.as_os_str().is_empty() {
        let fd = openat2(root, ".", open_how(OFlag::O_PATH)).map_err(err)?;
        return Ok(fd_path(fd));
    }
    match openat2(root, &rel, open_how(OFlag::O_PATH)) {
        Ok(fd) => return Ok(fd_path(fd)),
        Err(Errno::ENOENT) if create != Create::Nothing => {}
        Err(e) => return Err(err(e)),
    }
    // Mostly only the last component is missing (the mount points of a
    // spec's mounts, of a cgroup hierarchy each): make it in its parent at
    // once rather than walking the path from the root, three lookups a
    // component. Anything else (a missing parent, a dangling symlink) takes
    // the walk.
    if let Some(fd) = create_last(root, &rel, create) {
        return Ok(fd_path(fd));
    }
    let mut target = rel;
    let mut links = 0;
    'walk: loop {
        let parts: Vec<std::ffi::OsString> = target.iter().map(|c| c.to_owned()).collect();
        let mut prefix = PathBuf::new();
        for (i, part) in parts.iter().enumerate() {
            let parent = openat2(
                root,
                if prefix.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    &prefix
                },
                open_how(OFlag::O_PATH | OFlag::O_DIRECTORY),
            )
            .map_err(|e| match e {
                Errno::ENOTDIR | Errno::ENOENT => RootfsError::NotADirectory {
                    path: prefix.clone(),
                },
                e => err(e),
            })?;
            let parent_path = prefix.clone();
            prefix.push(part);
            match openat2(root, &prefix, open_how(OFlag::O_PATH)) {
                Ok(_) => continue,
                Err(Errno::ENOENT) => {}
                Err(e) => return Err(err(e)),
            }
            if part == ".." || part == "." {
                return Err(RootfsError::NotADirectory { path: prefix });
            }
            let last = i + 1 == parts.len();
            let made = if last && create == Create::File {
                nix::fcntl::openat(
                    &parent,
                    part.as_os_str(),
                    OFlag::O_CREAT | OFlag::O_WRONLY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
                    Mode::from_bits_truncate(0o644),
                )
                .map(drop)
            } else {
                nix::sys::stat::mkdirat(&parent, part.as_os_str(), Mode::from_bits_truncate(0o755))
            };
            match made {
                Ok(()) => {}
                // It exists but did not resolve: a symlink to something missing.
                // Create its target instead; resolving it again with
                // RESOLVE_IN_ROOT keeps it inside the rootfs.
                Err(Errno::EEXIST) => {
                    links += 1;
                    if links > 40 {
                        return Err(err(Errno::ELOOP));
                    }
                    let link = nix::fcntl::readlinkat(&parent, part.as_os_str()).map_err(|_| {
                        RootfsError::NotADirectory {
                            path: prefix.clone(),
                        }
                    })?;
                    let link = PathBuf::from(link);
                    let mut next = if link.is_absolute() {
                        relative(&link)
                    } else {
                        parent_path.join(link)
                    };
                    for rest in &parts[i + 1..] {
                        next.push(rest);
                    }
                    target = next;
                    continue 'walk;
                }
                Err(e) => return Err(err(e)),
            }
        }
        break;
    }
    let fd = openat2(root, &target, open_how(OFlag::O_PATH)).map_err(err)?;
    Ok(fd_path(fd))
}

/// The fast path of [`resolve_in_root`]: creates the last component of
/// `rel` in its existing parent and opens it; None when that does not
/// simply work.
fn create_last(root: &impl AsFd, rel: &Path, create: Create) -> Option<OwnedFd> {
    let name = match rel.components().next_back()? {
        Component::Normal(n) => n,
        _ => return None,
    };
    let parent = match rel.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let dir = openat2(root, parent, open_how(OFlag::O_PATH | OFlag::O_DIRECTORY)).ok()?;
    let made = if create == Create::File {
        nix::fcntl::openat(
            &dir,
            name,
            OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
            Mode::from_bits_truncate(0o644),
        )
        .map(drop)
    } else {
        nix::sys::stat::mkdirat(&dir, name, Mode::from_bits_truncate(0o755))
    };
    made.ok()?;
    openat2(&dir, name, open_how(OFlag::O_PATH)).ok()
}

/// A cgroup hierarchy of the host, from mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    pub mount_point: PathBuf,
    /// "cgroup" or "cgroup2".
    pub fstype: String,
    /// For v1: the controllers or name= option, e.g. "cpu,cpuacct" or "name=systemd".
    pub options: String,
    /// The root of this mount inside the hierarchy (field 4 of mountinfo).
    pub root: PathBuf,
}

/// Parses cgroup mounts out of /proc/self/mountinfo text.
pub fn parse_cgroup_mounts(mountinfo: &str) -> Vec<Hierarchy> {
    let mut out = Vec::new();
    for line in mountinfo.lines() {
        let Some((pre, post)) = line.split_once(" - ") else {
            continue;
        };
        let pre: Vec<&str> = pre.split(' ').collect();
        let post: Vec<&str> = post.split(' ').collect();
        if pre.len() < 5 || post.len() < 3 {
            continue;
        }
        let fstype = post[0];
        if fstype != "cgroup" && fstype != "cgroup2" {
            continue;
        }
        let options = post[2]
            .split(',')
            .filter(|o| {
                !matches!(
                    *o,
                    "rw" | "ro"
                        | "nsdelegate"
                        | "memory_recursiveprot"
                        | "xattr"
                        | "clone_children"
                ) && !o.starts_with("release_agent")
            })
            .collect::<Vec<_>>()
            .join(",");
        out.push(Hierarchy {
            mount_point: PathBuf::from(unescape(pre[4])),
            fstype: fstype.to_owned(),
            options,
            root: PathBuf::from(unescape(pre[3])),
        });
    }
    out
}

fn unescape(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// Everything the rootfs needs to know before pivot_root.
#[derive(Debug)]
pub struct Plan<'a> {
    pub rootfs: &'a Path,
    pub mounts: &'a [Mount],
    pub propagation: Option<&'a str>,
    pub devices: &'a [LinuxDevice],
    /// Device nodes cannot be made in a user namespace; bind the host's instead.
    pub in_user_ns: bool,
    /// With a cgroup namespace, cgroup filesystems are mounted fresh; without,
    /// the container's own cgroup dirs are bound.
    pub cgroup_ns: bool,
    pub hierarchies: &'a [Hierarchy],
    /// The container's cgroup path inside each hierarchy (same for all).
    pub cgroup_path: &'a Path,
}

fn mount_err(what: impl Into<String>, target: &Path) -> impl FnOnce(Errno) -> RootfsError {
    let what = what.into();
    let target = target.to_owned();
    move |source| RootfsError::Mount {
        what,
        target,
        source,
    }
}

/// The default device nodes every container gets (major, minor, name).
pub const DEFAULT_DEVICES: [(&str, u64, u64); 6] = [
    ("/dev/null", 1, 3),
    ("/dev/zero", 1, 5),
    ("/dev/full", 1, 7),
    ("/dev/random", 1, 8),
    ("/dev/urandom", 1, 9),
    ("/dev/tty", 5, 0),
];

/// Everything up to pivot_root: propagation, the rootfs bind, the spec's mounts, devices.
pub fn prepare(sys: &dyn Syscall, plan: &Plan) -> Result<()> {
    let root_prop = match plan.propagation {
        Some(p) if !p.is_empty() => propagation_flags(p)?,
        _ => MsFlags::MS_SLAVE | MsFlags::MS_REC,
    };
    // Nothing we mount may propagate back to the host, so start as slave (or what
    // the spec asks) for the whole tree.
    sys.mount(
        None,
        Path::new("/"),
        None,
        root_prop | MsFlags::MS_REC,
        None,
    )
    .map_err(mount_err("setting propagation", Path::new("/")))?;
    // pivot_root refuses a shared parent of the new root and a shared
    // parent of the current one. With shared propagation asked for, make
    // just those two mounts private (not their children, which keep
    // propagating): the mount holding the rootfs (the image's overlay, when
    // the rootfs is a mount point; otherwise this fails harmlessly) and "/".
    if root_prop.contains(MsFlags::MS_SHARED) {
        let _ = sys.mount(None, plan.rootfs, None, MsFlags::MS_PRIVATE, None);
        sys.mount(None, Path::new("/"), None, MsFlags::MS_PRIVATE, None)
            .map_err(mount_err("making / private for pivot_root", Path::new("/")))?;
    }
    // pivot_root needs the new root to be a mount point whose parent is not shared.
    sys.mount(
        Some(plan.rootfs),
        plan.rootfs,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
    )
    .map_err(mount_err("binding the rootfs onto itself", plan.rootfs))?;
    if root_prop.contains(MsFlags::MS_SHARED) {
        sys.mount(None, plan.rootfs, None, MsFlags::MS_PRIVATE, None)
            .map_err(mount_err(
                "making the rootfs private for pivot_root",
                plan.rootfs,
            ))?;
    }
    let root = nix::fcntl::open(
        plan.rootfs,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|source| RootfsError::Resolve {
        path: plan.rootfs.to_owned(),
        source,
    })?;
    let mut dev_is_tmpfs = false;
    for m in plan.mounts {
        mount_one(sys, plan, &root, m)?;
        if m.destination() == Path::new("/dev") && m.typ().as_deref() == Some("tmpfs") {
            dev_is_tmpfs = true;
        }
    }
    if dev_is_tmpfs {
        for (path, major, minor) in DEFAULT_DEVICES {
            make_device(
                sys,
                plan,
                &root,
                Path::new(path),
                SFlag::S_IFCHR,
                major,
                minor,
                0o666,
                None,
                None,
            )?;
        }
        let links = [
            ("/proc/self/fd", "/dev/fd"),
            ("/proc/self/fd/0", "/dev/stdin"),
            ("/proc/self/fd/1", "/dev/stdout"),
            ("/proc/self/fd/2", "/dev/stderr"),
            ("pts/ptmx", "/dev/ptmx"),
        ];
        for (target, link) in links {
            let dir = resolve_in_root(&root, Path::new("/dev"), Create::Dir)?;
            let name = Path::new(link).file_name().unwrap_or_default();
            match sys.symlink(Path::new(target), &dir.path.join(name)) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(source) => {
                    return Err(RootfsError::Device {
                        path: link.into(),
                        source,
                    });
                }
            }
        }
    }
    for d in plan.devices {
        let (kind, major, minor) = match d.typ() {
            LinuxDeviceType::C | LinuxDeviceType::U => (SFlag::S_IFCHR, d.major(), d.minor()),
            LinuxDeviceType::B => (SFlag::S_IFBLK, d.major(), d.minor()),
            LinuxDeviceType::P => (SFlag::S_IFIFO, 0, 0),
            LinuxDeviceType::A => continue,
        };
        let mode = d.file_mode().unwrap_or(0o666) & 0o7777;
        make_device(
            sys,
            plan,
            &root,
            d.path(),
            kind,
            major as u64,
            minor as u64,
            mode,
            d.uid(),
            d.gid(),
        )?;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn make_device(
    sys: &dyn Syscall,
    plan: &Plan,
    root: &OwnedFd,
    path: &Path,
    kind: SFlag,
    major: u64,
    minor: u64,
    mode: u32,
    uid: Option<u32>,
    gid: Option<u32>,
) -> Result<()> {
    let err = |source| RootfsError::Device {
        path: path.to_owned(),
        source,
    };
    if plan.in_user_ns {
        // mknod is refused in a user namespace: bind the host's node instead.
        let target = resolve_in_root(root, path, Create::File)?;
        return sys
            .mount(Some(path), &target.path, None, MsFlags::MS_BIND, None)
            .map_err(err);
    }
    let parent = path.parent().unwrap_or(Path::new("/"));
    let name = path.file_name().ok_or(RootfsError::Device {
        path: path.to_owned(),
        source: Errno::EINVAL,
    })?;
    let dir = resolve_in_root(root, parent, Create::Dir)?;
    let node = dir.path.join(name);
    // A leftover from the image (or a default device the spec redefines) is replaced.
    let _ = nix::unistd::unlinkat(&dir.fd, name, nix::unistd::UnlinkatFlags::NoRemoveDir);
    sys.mknod(
        &node,
        kind,
        Mode::from_bits_truncate(mode),
        libc::makedev(major as u32, minor as u32),
    )
    .map_err(err)?;
    if uid.is_some() || gid.is_some() {
        sys.chown(&node, uid, gid).map_err(err)?;
    }
    Ok(())
}

fn mount_one(sys: &dyn Syscall, plan: &Plan, root: &OwnedFd, m: &Mount) -> Result<()> {
    let opts = parse_options(m.options().as_deref().unwrap_or_default());
    let fstype = m.typ().as_deref().unwrap_or("");
    let dest = m.destination();
    let data = if opts.data.is_empty() {
        None
    } else {
        Some(opts.data.join(","))
    };
    if opts.bind || fstype == "bind" {
        let source = m.source().as_deref().unwrap_or(Path::new(""));
        let meta = std::fs::metadata(source).map_err(|e| RootfsError::Source {
            path: source.to_owned(),
            source: e,
        })?;
        let target = resolve_in_root(
            root,
            dest,
            if meta.is_dir() {
                Create::Dir
            } else {
                Create::File
            },
        )?;
        let bind = MsFlags::MS_BIND | (opts.flags & MsFlags::MS_REC);
        sys.mount(Some(source), &target.path, None, bind, None)
            .map_err(mount_err(
                format!("bind mount of {}", source.display()),
                dest,
            ))?;
        // Bind ignores other flags; they take effect on a remount.
        let extra = opts.flags & !(MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_REMOUNT);
        if !extra.is_empty() {
            let target = resolve_in_root(root, dest, Create::Nothing)?;
            let keep = locked_flags(&target.path);
            sys.mount(
                None,
                &target.path,
                None,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | extra | keep,
                None,
            )
            .map_err(mount_err("remounting bind mount with its options", dest))?;
        }
        if opts.recursive_ro {
            let target = resolve_in_root(root, dest, Create::Nothing)?;
            sys.mount_setattr(&target.path, true, MsFlags::MS_RDONLY)
                .map_err(mount_err(
                    "making the bind mount recursively read-only",
                    dest,
                ))?;
        }
        return apply_propagation(sys, root, dest, opts.propagation);
    }
    match fstype {
        "cgroup" | "cgroup2" => return mount_cgroups(sys, plan, root, dest, &opts),
        _ => {}
    }
    let target = resolve_in_root(root, dest, Create::Dir)?;
    let source = m.source().clone().unwrap_or_else(|| PathBuf::from(fstype));
    let flags = opts.flags & !MsFlags::MS_REMOUNT;
    let result = sys.mount(
        Some(&source),
        &target.path,
        Some(fstype),
        flags,
        data.as_deref(),
    );
    match result {
        Ok(()) => {}
        // sysfs needs a network namespace of our own and mqueue an ipc one; when the
        // container shares the host's, bind the host's instead, as runc does.
        Err(Errno::EPERM | Errno::EBUSY) if fstype == "sysfs" || fstype == "mqueue" => {
            let host = if fstype == "sysfs" {
                "/sys"
            } else {
                "/dev/mqueue"
            };
            sys.mount(
                Some(Path::new(host)),
                &target.path,
                None,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None,
            )
            .map_err(mount_err(format!("binding host {host}"), dest))?;
            if flags.contains(MsFlags::MS_RDONLY) {
                let target = resolve_in_root(root, dest, Create::Nothing)?;
                sys.mount(
                    None,
                    &target.path,
                    None,
                    MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | flags,
                    None,
                )
                .map_err(mount_err(format!("remounting host {host} read-only"), dest))?;
            }
        }
        Err(e) => return Err(mount_err(format!("mounting {fstype}"), dest)(e)),
    }
    apply_propagation(sys, root, dest, opts.propagation)
}

fn apply_propagation(sys: &dyn Syscall, root: &OwnedFd, dest: &Path, prop: MsFlags) -> Result<()> {
    if prop.is_empty() {
        return Ok(());
    }
    let target = resolve_in_root(root, dest, Create::Nothing)?;
    sys.mount(None, &target.path, None, prop, None)
        .map_err(mount_err("setting propagation", dest))
}

/// Flags that an unprivileged remount may not clear; keeping them makes the remount legal.
fn locked_flags(path: &Path) -> MsFlags {
    let Ok(st) = nix::sys::statvfs::statvfs(path) else {
        return MsFlags::empty();
    };
    let f = st.flags();
    let mut out = MsFlags::empty();
    use nix::sys::statvfs::FsFlags;
    for (from, to) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if f.contains(from) {
            out |= to;
        }
    }
    out
}

/// /sys/fs/cgroup inside the container: the container's own cgroups as roots.
fn mount_cgroups(
    sys: &dyn Syscall,
    plan: &Plan,
    root: &OwnedFd,
    dest: &Path,
    opts: &MountOptions,
) -> Result<()> {
    let flags = opts.flags & !(MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_REC);
    let pure_v2 = plan.hierarchies.len() == 1 && plan.hierarchies[0].fstype == "cgroup2";
    let rel = relative(plan.cgroup_path);
    if pure_v2 {
        let target = resolve_in_root(root, dest, Create::Dir)?;
        if plan.cgroup_ns {
            return sys
                .mount(
                    Some(Path::new("cgroup2")),
                    &target.path,
                    Some("cgroup2"),
                    flags,
                    None,
                )
                .map_err(mount_err("mounting cgroup2", dest));
        }
        let host = plan.hierarchies[0].mount_point.join(&rel);
        sys.mount(Some(&host), &target.path, None, MsFlags::MS_BIND, None)
            .map_err(mount_err(format!("binding {}", host.display()), dest))?;
        let on_top = resolve_in_root(root, dest, Create::Nothing)?;
        return sys
            .mount(
                None,
                &on_top.path,
                None,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | flags,
                None,
            )
            .map_err(mount_err("remounting cgroup bind", dest));
    }
    // v1 (or hybrid): a tmpfs holding one mount per hierarchy, named as on the host.
    let own_cgroups =
        parse_proc_cgroup(&std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default());
    let mut binds = Vec::new();
    let target = resolve_in_root(root, dest, Create::Dir)?;
    sys.mount(
        Some(Path::new("tmpfs")),
        &target.path,
        Some("tmpfs"),
        flags & !MsFlags::MS_RDONLY,
        Some("mode=755"),
    )
    .map_err(mount_err("mounting tmpfs for cgroups", dest))?;
    for h in plan.hierarchies {
        let Some(name) = h.mount_point.file_name() else {
            continue;
        };
        let sub = dest.join(name);
        let t = resolve_in_root(root, &sub, Create::Dir)?;
        let result = if plan.cgroup_ns {
            let (src, data) = if h.fstype == "cgroup2" {
                ("cgroup2", None)
            } else {
                ("cgroup", Some(h.options.as_str()))
            };
            sys.mount(Some(Path::new(src)), &t.path, Some(&h.fstype), flags, data)
        } else {
            // Bind the init's own cgroup in this hierarchy (berth made it for the
            // controllers; for others, such as name=systemd, it is where we run).
            let own = own_cgroups
                .iter()
                .find(|(ctrl, _)| *ctrl == h.options || (h.fstype == "cgroup2" && ctrl.is_empty()));
            let path = own
                .map(|(_, p)| p.clone())
                .unwrap_or_else(|| Path::new("/").join(&rel));
            let inside = path.strip_prefix(&h.root).unwrap_or(&path);
            let host = h.mount_point.join(relative(inside));
            binds.push(sub.clone());
            sys.mount(Some(&host), &t.path, None, MsFlags::MS_BIND, None)
        };
        result.map_err(mount_err(
            format!("mounting cgroup hierarchy {}", h.options),
            &sub,
        ))?;
    }
    if !plan.cgroup_ns {
        // One recursive mount_setattr gives the tmpfs and every bind its flags;
        // kernels without it get one remount per mount.
        let on_top = resolve_in_root(root, dest, Create::Nothing)?;
        match sys.mount_setattr(&on_top.path, true, flags) {
            Ok(()) => return Ok(()),
            Err(Errno::ENOSYS) => {}
            Err(e) => return Err(mount_err("setting cgroup mount flags", dest)(e)),
        }
        for sub in &binds {
            // The fd of the mount point names the covered directory; resolve again
            // to reach the mount on top.
            let on_top = resolve_in_root(root, sub, Create::Nothing)?;
            sys.mount(
                None,
                &on_top.path,
                None,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | flags,
                None,
            )
            .map_err(mount_err("remounting cgroup bind", sub))?;
        }
    }
    // The host's cpu,cpuacct style symlinks are not recreated; tools look up controllers by mountinfo.
    if flags.contains(MsFlags::MS_RDONLY) {
        let target = resolve_in_root(root, dest, Create::Nothing)?;
        sys.mount(
            None,
            &target.path,
            None,
            MsFlags::MS_REMOUNT | flags,
            Some("mode=755"),
        )
        .map_err(mount_err("remounting cgroup tmpfs read-only", dest))?;
    }
    Ok(())
}

/// Parses /proc/PID/cgroup into (controllers, path); v2's line has no controllers.
pub fn parse_proc_cgroup(text: &str) -> Vec<(String, PathBuf)> {
    text.lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, ':');
            let _id = parts.next()?;
            let ctrl = parts.next()?;
            let path = parts.next()?;
            Some((ctrl.to_owned(), PathBuf::from(path)))
        })
        .collect()
}

/// pivot_root into the prepared rootfs.
pub fn pivot(sys: &dyn Syscall, rootfs: &Path) -> Result<()> {
    sys.pivot_root(rootfs).map_err(|source| RootfsError::Pivot {
        path: rootfs.to_owned(),
        source,
    })
}

/// After pivot_root: masked and read-only paths, and a read-only root.
pub fn finish(
    sys: &dyn Syscall,
    masked: &[String],
    readonly: &[String],
    readonly_root: bool,
) -> Result<()> {
    for p in masked {
        let path = Path::new(p);
        let meta = match std::fs::symlink_metadata(path) {
            Ok(m) => m,
            Err(_) => continue,
        };
        let result = if meta.is_dir() {
            sys.mount(
                Some(Path::new("tmpfs")),
                path,
                Some("tmpfs"),
                MsFlags::MS_RDONLY,
                Some("size=0"),
            )
        } else {
            sys.mount(
                Some(Path::new("/dev/null")),
                path,
                None,
                MsFlags::MS_BIND,
                None,
            )
        };
        match result {
            Ok(()) | Err(Errno::ENOENT) => {}
            Err(e) => return Err(mount_err("masking", path)(e)),
        }
    }
    for p in readonly {
        let path = Path::new(p);
        match sys.mount(
            Some(path),
            path,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
        ) {
            Ok(()) => {}
            Err(Errno::ENOENT) => continue,
            Err(e) => return Err(mount_err("binding read-only path", path)(e)),
        }
        let keep = locked_flags(path);
        sys.mount(
            None,
            path,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_REC | keep,
            None,
        )
        .map_err(mount_err("remounting read-only path", path))?;
    }
    if readonly_root {
        let keep = locked_flags(Path::new("/"));
        sys.mount(
            None,
            Path::new("/"),
            None,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | keep,
            None,
        )
        .map_err(mount_err("remounting the root read-only", Path::new("/")))?;
    }
    Ok(())
}

/// Bind-mounts the console's pty slave onto /dev/console (after pivot_root).
pub fn mount_console(sys: &dyn Syscall, slave: &Path) -> Result<()> {
    let console = Path::new("/dev/console");
    if std::fs::symlink_metadata(console).is_err() {
        std::fs::File::create(console).map_err(|e| RootfsError::Source {
            path: console.to_owned(),
            source: e,
        })?;
    }
    sys.mount(Some(slave), console, None, MsFlags::MS_BIND, None)
        .map_err(mount_err("binding the console", console))
}

/// Reads at most `limit` bytes of `path` inside `root` (a container's root
/// filesystem, before it runs), resolving `..` and symlinks as if `root` were
/// `/`, so an image cannot point the read at the host. `None` when the file
/// does not exist.
pub fn read_in_root(root: &Path, path: &Path, limit: u64) -> std::io::Result<Option<Vec<u8>>> {
    use std::io::Read;
    let dir = std::fs::File::open(root)?;
    match openat2(&dir, relative(path).as_path(), open_how(OFlag::O_RDONLY)) {
        Ok(fd) => {
            let mut out = Vec::new();
            std::fs::File::from(fd).take(limit).read_to_end(&mut out)?;
            Ok(Some(out))
        }
        Err(Errno::ENOENT) | Err(Errno::ENOTDIR) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::syscall::Recorder;

    fn opts(list: &[&str]) -> MountOptions {
        parse_options(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn options_split() {
        let o = opts(&["nosuid", "strictatime", "mode=755", "size=65536k"]);
        assert_eq!(o.flags, MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME);
        assert_eq!(o.data, vec!["mode=755", "size=65536k"]);
        let o = opts(&["rbind", "ro", "rslave"]);
        assert!(o.bind);
        assert_eq!(
            o.flags,
            MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_RDONLY
        );
        assert_eq!(o.propagation, MsFlags::MS_SLAVE | MsFlags::MS_REC);
        let o = opts(&["ro", "rw"]);
        assert_eq!(o.flags, MsFlags::empty());
    }

    #[test]
    fn propagation_names() {
        assert_eq!(
            propagation_flags("rshared").unwrap(),
            MsFlags::MS_SHARED | MsFlags::MS_REC
        );
        assert!(propagation_flags("sideways").is_err());
    }

    fn root_of(dir: &Path) -> OwnedFd {
        nix::fcntl::open(dir, OFlag::O_PATH | OFlag::O_DIRECTORY, Mode::empty()).unwrap()
    }

    #[test]
    fn resolve_stays_inside_root() {
        let t = tempfile::tempdir().unwrap();
        let rootfs = t.path().join("rootfs");
        std::fs::create_dir_all(rootfs.join("etc")).unwrap();
        std::fs::create_dir_all(t.path().join("outside")).unwrap();
        // Both escape attempts must land inside rootfs.
        std::os::unix::fs::symlink("/../../outside", rootfs.join("etc/abs")).unwrap();
        std::os::unix::fs::symlink("../../../outside", rootfs.join("etc/rel")).unwrap();
        let root = root_of(&rootfs);
        resolve_in_root(&root, Path::new("/etc/abs/x"), Create::Dir).unwrap();
        resolve_in_root(&root, Path::new("/etc/rel/y"), Create::File).unwrap();
        resolve_in_root(&root, Path::new("/../../../z"), Create::Dir).unwrap();
        assert!(rootfs.join("outside/x").is_dir());
        assert!(rootfs.join("outside/y").is_file());
        assert!(rootfs.join("z").is_dir());
        assert!(!t.path().join("outside/x").exists());
        assert!(!t.path().join("z").exists());
    }

    #[test]
    fn resolve_creates_the_target_of_a_dangling_symlink_inside_root() {
        let t = tempfile::tempdir().unwrap();
        let rootfs = t.path().join("rootfs");
        std::fs::create_dir(&rootfs).unwrap();
        std::os::unix::fs::symlink("/nonexistent-target", rootfs.join("dangling")).unwrap();
        std::os::unix::fs::symlink("loop", rootfs.join("loop")).unwrap();
        let root = root_of(&rootfs);
        resolve_in_root(&root, Path::new("/dangling/x"), Create::Dir).unwrap();
        assert!(rootfs.join("nonexistent-target/x").is_dir());
        assert!(!Path::new("/nonexistent-target").exists());
        let e = resolve_in_root(&root, Path::new("/loop/x"), Create::Dir).unwrap_err();
        assert!(e.to_string().contains("symbolic links"), "{e}");
    }

    #[test]
    fn default_mounts_make_expected_calls() {
        let t = tempfile::tempdir().unwrap();
        let mounts: Vec<Mount> = serde_json::from_value(serde_json::json!([
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/data", "type": "bind", "source": t.path().to_str().unwrap(), "options": ["rbind", "ro", "rprivate"]}
        ]))
        .unwrap();
        let rootfs = t.path().join("rootfs");
        std::fs::create_dir(&rootfs).unwrap();
        let plan = Plan {
            rootfs: &rootfs,
            mounts: &mounts,
            propagation: None,
            devices: &[],
            in_user_ns: false,
            cgroup_ns: true,
            hierarchies: &[],
            cgroup_path: Path::new("/berth/x"),
        };
        let rec = Recorder {
            fail: vec![("mount sysfs".into(), Errno::EPERM)],
            ..Default::default()
        };
        prepare(&rec, &plan).unwrap();
        let calls = rec.take();
        let text = calls.join("\n");
        assert!(
            calls[0].starts_with("mount - / - MsFlags(MS_REC | MS_SLAVE)"),
            "{text}"
        );
        assert!(calls[1].contains("MS_BIND | MS_REC"), "{text}");
        assert!(text.contains(" proc MsFlags(0x0) -"), "{text}");
        assert!(
            text.contains("tmpfs MsFlags(MS_NOSUID | MS_STRICTATIME) mode=755,size=65536k"),
            "{text}"
        );
        // sysfs refused (host netns): fall back to a read-only bind of the host's /sys.
        assert!(text.contains("mount /sys "), "{text}");
        assert!(
            calls
                .iter()
                .any(|c| c.contains("MS_RDONLY") && c.contains("MS_REMOUNT | MS_BIND")),
            "{text}"
        );
        assert!(text.contains("mknod") && text.contains("1:3"), "{text}");
        assert!(text.contains("symlink /proc/self/fd "), "{text}");
        assert!(rootfs.join("data").is_dir() && rootfs.join("dev").is_dir());
    }

    #[test]
    fn cgroup_mountinfo() {
        let text = "30 25 0:26 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate\n\
                    33 25 0:29 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:8 - cgroup cgroup rw,memory\n\
                    31 25 0:27 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd\n\
                    40 25 0:35 / /tmp rw - tmpfs tmpfs rw\n";
        let h = parse_cgroup_mounts(text);
        assert_eq!(h.len(), 3);
        assert_eq!(h[0].fstype, "cgroup2");
        assert_eq!(h[1].options, "memory");
        assert_eq!(h[2].options, "name=systemd");
    }
}
