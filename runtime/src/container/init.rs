//! The two stages that become the container, in the child processes.
//!
//! Stage 1 (forked by the creator, already in the container's cgroup) joins the
//! namespaces given by path, makes a user namespace and waits for its id maps,
//! unshares the other namespaces, and forks stage 2, which is the first process
//! of a new pid namespace. Stage 1 then exits and stage 2 is adopted by the
//! creator (a child subreaper). Stage 2 builds the filesystem, drops privileges,
//! waits at the start barrier and execs the user's program.
//!
//! Both run in a forked copy of a single-threaded process, so they may allocate;
//! they never return: they exec or `_exit`.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use nix::sched::CloneFlags;
use oci_spec::runtime::{LinuxNamespaceType, Process, Spec};

use super::channel::{Channel, Msg};
use crate::process::{self, CapSets};
use crate::rootfs::{self, Hierarchy};
use crate::syscall::Linux;

pub fn clone_flag(t: LinuxNamespaceType) -> CloneFlags {
    match t {
        LinuxNamespaceType::Mount => CloneFlags::CLONE_NEWNS,
        LinuxNamespaceType::Cgroup => CloneFlags::CLONE_NEWCGROUP,
        LinuxNamespaceType::Uts => CloneFlags::CLONE_NEWUTS,
        LinuxNamespaceType::Ipc => CloneFlags::CLONE_NEWIPC,
        LinuxNamespaceType::User => CloneFlags::CLONE_NEWUSER,
        LinuxNamespaceType::Pid => CloneFlags::CLONE_NEWPID,
        LinuxNamespaceType::Network => CloneFlags::CLONE_NEWNET,
        LinuxNamespaceType::Time => CloneFlags::empty(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A new container: build the rootfs and wait at the start barrier.
    Create,
    /// A process joining a running container.
    Exec,
}

/// Everything the stages need, built by the creator before the fork.
pub struct InitConfig {
    pub kind: Kind,
    pub id: String,
    pub bundle: PathBuf,
    pub spec: Spec,
    pub process: Process,
    pub rootfs: PathBuf,
    pub fifo: Option<PathBuf>,
    pub console: Option<OwnedFd>,
    /// Write ends of the monitor's stdout and stderr pipes, and the read end
    /// of its stdin pipe (None: /dev/null).
    pub stdio: Option<(OwnedFd, OwnedFd)>,
    pub stdin: Option<OwnedFd>,
    pub hierarchies: Vec<Hierarchy>,
    pub cgroup_path: PathBuf,
    pub seccomp: Option<crate::seccomp::Filter>,
    pub caps: CapSets,
    /// Namespaces to join, user first.
    pub joins: Vec<(CloneFlags, PathBuf)>,
    pub unshare: CloneFlags,
    /// File descriptors from 3 up that the process keeps (runc's --preserve-fds).
    pub preserve_fds: i32,
}

impl InitConfig {
    fn creates(&self, f: CloneFlags) -> bool {
        self.unshare.contains(f)
    }
}

/// What a freshly forked stage does before anything else.
pub struct Entry<'a> {
    /// v1 `tasks` files to write "0" to: the process moves itself into its
    /// cgroup (see [`crate::cgroups::Placement`]).
    pub self_join: &'a [PathBuf],
    /// Namespaces to create once in the cgroup (a cgroup namespace is rooted
    /// where it is made).
    pub late_unshare: CloneFlags,
}

impl Entry<'_> {
    fn enter(&self) -> Result<(), String> {
        for tasks in self.self_join {
            std::fs::write(tasks, b"0")
                .map_err(|e| format!("joining the cgroup through {}: {e}", tasks.display()))?;
        }
        Ok(())
    }
}

fn fail(chan: &Channel, msg: String) -> ! {
    let _ = chan.send(&Msg::Error(msg));
    // SAFETY: _exit ends this forked child without running the parent's atexit handlers.
    unsafe { libc::_exit(1) }
}

/// Stage 1. Never returns.
pub fn stage1(cfg: &InitConfig, chan: &Channel, entry: &Entry<'_>) -> ! {
    if let Err(e) = entry.enter() {
        fail(chan, e)
    }
    match stage1_inner(cfg, chan) {
        Ok(()) => {
            // SAFETY: as in `fail`.
            unsafe { libc::_exit(0) }
        }
        Err(e) => fail(chan, e),
    }
}

fn stage1_inner(cfg: &InitConfig, chan: &Channel) -> Result<(), String> {
    match chan.recv() {
        Ok(Msg::Go) => {}
        Ok(other) => return Err(format!("unexpected message {other:?}")),
        Err(e) => return Err(format!("waiting for the creator: {e}")),
    }
    // Open every namespace first: joining the mount namespace changes what paths mean.
    let mut fds = Vec::new();
    for (flag, path) in &cfg.joins {
        let fd = std::fs::File::open(path)
            .map_err(|e| format!("opening namespace {}: {e}", path.display()))?;
        fds.push((*flag, OwnedFd::from(fd), path));
    }
    for (flag, fd, path) in &fds {
        nix::sched::setns(fd, *flag)
            .map_err(|e| format!("joining namespace {}: {e}", path.display()))?;
    }
    if cfg.creates(CloneFlags::CLONE_NEWUSER) {
        nix::sched::unshare(CloneFlags::CLONE_NEWUSER)
            .map_err(|e| format!("creating the user namespace: {e}"))?;
        chan.send(&Msg::UserNsReady).map_err(|e| e.to_string())?;
        match chan.recv() {
            Ok(Msg::MapsWritten) => {}
            Ok(Msg::Error(e)) => return Err(e),
            Ok(other) => return Err(format!("unexpected message {other:?}")),
            Err(e) => return Err(e.to_string()),
        }
        let root_uid = nix::unistd::Uid::from_raw(0);
        let root_gid = nix::unistd::Gid::from_raw(0);
        nix::unistd::setresgid(root_gid, root_gid, root_gid)
            .map_err(|e| format!("setresgid(0) in the user namespace: {e}"))?;
        nix::unistd::setresuid(root_uid, root_uid, root_uid)
            .map_err(|e| format!("setresuid(0) in the user namespace: {e}"))?;
    }
    let rest = cfg.unshare - CloneFlags::CLONE_NEWUSER;
    if !rest.is_empty() {
        nix::sched::unshare(rest).map_err(|e| format!("creating namespaces {rest:?}: {e}"))?;
    }
    // SAFETY: this process is single-threaded (a fork of a single-threaded parent).
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Child) => stage2(
            cfg,
            chan,
            &Entry {
                self_join: &[],
                late_unshare: CloneFlags::empty(),
            },
        ),
        Ok(nix::unistd::ForkResult::Parent { child }) => chan
            .send(&Msg::InitPid(child.as_raw()))
            .map_err(|e| e.to_string()),
        Err(e) => Err(format!("forking the container init: {e}")),
    }
}

/// Stage 2: the container's init. Never returns.
pub(super) fn stage2(cfg: &InitConfig, chan: &Channel, entry: &Entry<'_>) -> ! {
    if let Err(e) = entry.enter() {
        fail(chan, e)
    }
    match stage2_inner(cfg, chan, entry.late_unshare) {
        Ok(never) => match never {},
        Err(e) => fail(chan, e),
    }
}

enum Never {}

fn warn(chan: &Channel, w: String) {
    let _ = chan.send(&Msg::Warn(w));
}

fn stage2_inner(
    cfg: &InitConfig,
    chan: &Channel,
    late_unshare: CloneFlags,
) -> Result<Never, String> {
    match chan.recv() {
        Ok(Msg::Go) => {}
        Ok(other) => return Err(format!("unexpected message {other:?}")),
        Err(e) => return Err(format!("waiting for the creator: {e}")),
    }
    if !late_unshare.is_empty() {
        nix::sched::unshare(late_unshare)
            .map_err(|e| format!("creating namespaces {late_unshare:?}: {e}"))?;
    }
    super::wait::reset_signals();
    nix::sys::stat::umask(nix::sys::stat::Mode::empty());
    let sys = Linux;
    let terminal = cfg.process.terminal().unwrap_or(false);
    if cfg.kind == Kind::Create || terminal {
        nix::unistd::setsid().map_err(|e| format!("setsid: {e}"))?;
    }
    if let Some((out, err)) = &cfg.stdio {
        let null =
            std::fs::File::open("/dev/null").map_err(|e| format!("opening /dev/null: {e}"))?;
        let input = cfg
            .stdin
            .as_ref()
            .map_or(null.as_raw_fd(), |i| i.as_raw_fd());
        for (from, to) in [(input, 0), (out.as_raw_fd(), 1), (err.as_raw_fd(), 2)] {
            // SAFETY: dup2 onto the standard descriptors, which this process owns.
            let r = unsafe { libc::dup2(from, to) };
            nix::errno::Errno::result(r).map_err(|e| format!("dup2 stdio: {e}"))?;
        }
    }
    let linux = cfg.spec.linux().clone().unwrap_or_default();
    let mut fifo_fd: Option<OwnedFd> = None;
    if cfg.kind == Kind::Create {
        let mounts = cfg.spec.mounts().clone().unwrap_or_default();
        let devices = linux.devices().clone().unwrap_or_default();
        let plan = rootfs::Plan {
            rootfs: &cfg.rootfs,
            mounts: &mounts,
            propagation: linux.rootfs_propagation().as_deref(),
            devices: &devices,
            in_user_ns: cfg.creates(CloneFlags::CLONE_NEWUSER)
                || cfg
                    .joins
                    .iter()
                    .any(|(f, _)| *f == CloneFlags::CLONE_NEWUSER),
            cgroup_ns: cfg.creates(CloneFlags::CLONE_NEWCGROUP),
            hierarchies: &cfg.hierarchies,
            cgroup_path: &cfg.cgroup_path,
        };
        rootfs::prepare(&sys, &plan).map_err(|e| e.to_string())?;
        // The creator runs these hooks; without any, skip the round trip.
        let creator_hooks = cfg.spec.hooks().as_ref().is_some_and(|h| {
            h.prestart().as_ref().is_some_and(|v| !v.is_empty())
                || h.create_runtime().as_ref().is_some_and(|v| !v.is_empty())
        });
        if creator_hooks {
            chan.send(&Msg::RunHooks).map_err(|e| e.to_string())?;
            match chan.recv() {
                Ok(Msg::HooksDone) => {}
                Ok(Msg::Error(e)) => return Err(e),
                Ok(other) => return Err(format!("unexpected message {other:?}")),
                Err(e) => return Err(e.to_string()),
            }
        }
        if let Some(hooks) = cfg
            .spec
            .hooks()
            .as_ref()
            .and_then(|h| h.create_container().clone())
        {
            let state = hook_state(cfg, "created");
            crate::hooks::run("createContainer", &hooks, &state).map_err(|e| e.to_string())?;
        }
        if let Some(fifo) = &cfg.fifo {
            let fd = nix::fcntl::open(
                fifo,
                nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_CLOEXEC,
                nix::sys::stat::Mode::empty(),
            )
            .map_err(|e| format!("opening the start barrier {}: {e}", fifo.display()))?;
            fifo_fd = Some(fd);
        }
        rootfs::pivot(&sys, &cfg.rootfs).map_err(|e| e.to_string())?;
        if let Some(h) = cfg.spec.hostname().as_deref().filter(|h| !h.is_empty()) {
            nix::unistd::sethostname(h).map_err(|e| format!("hostname: {e}"))?;
        }
        if let Some(d) = cfg.spec.domainname().as_deref().filter(|d| !d.is_empty()) {
            // SAFETY: setdomainname reads `len` bytes from a live buffer.
            let r = unsafe { libc::setdomainname(d.as_ptr().cast(), d.len()) };
            nix::errno::Errno::result(r).map_err(|e| format!("domainname: {e}"))?;
        }
        for (k, v) in linux.sysctl().iter().flatten() {
            let path = Path::new("/proc/sys").join(k.replace('.', "/"));
            std::fs::write(&path, v)
                .map_err(|e| format!("linux.sysctl[{k:?}]: writing {}: {e}", path.display()))?;
        }
    }
    if terminal {
        let socket = cfg
            .console
            .as_ref()
            .ok_or("process.terminal is set but no console socket was given")?;
        let (rows, cols) = cfg
            .process
            .console_size()
            .map(|b| (b.height() as u16, b.width() as u16))
            .unwrap_or((0, 0));
        let pty = crate::console::open_pty(rows, cols).map_err(|e| e.to_string())?;
        crate::console::send_master(socket, &pty.master, "/dev/ptmx").map_err(|e| e.to_string())?;
        if cfg.kind == Kind::Create {
            rootfs::mount_console(&sys, &pty.slave_path).map_err(|e| e.to_string())?;
        }
        crate::console::attach_stdio(&pty.slave).map_err(|e| e.to_string())?;
    }
    if cfg.kind == Kind::Create {
        let masked = linux.masked_paths().clone().unwrap_or_default();
        let readonly = linux.readonly_paths().clone().unwrap_or_default();
        let ro_root = cfg
            .spec
            .root()
            .as_ref()
            .and_then(|r| r.readonly())
            .unwrap_or(false);
        rootfs::finish(&sys, &masked, &readonly, ro_root).map_err(|e| e.to_string())?;
    }
    if let Some(adj) = cfg.process.oom_score_adj()
        && let Some(w) = process::set_oom_score_adj(adj)
    {
        warn(chan, w);
    }
    let rlimits = cfg.process.rlimits().clone().unwrap_or_default();
    for w in process::apply_rlimits(&rlimits).map_err(|e| e.to_string())? {
        warn(chan, w);
    }
    let nnp = cfg.process.no_new_privileges().unwrap_or(false);
    if nnp {
        process::set_no_new_privs().map_err(|e| e.to_string())?;
    }
    // Without no_new_privs, loading a filter needs CAP_SYS_ADMIN, which the user
    // switch may drop: load it now, as runc does. The profile must then allow the
    // few calls left before execve (the default profile does).
    if !nnp && let Some(f) = &cfg.seccomp {
        f.load()
            .map_err(|e| format!("loading seccomp filter: {e}"))?;
    }
    process::apply_bounding(&cfg.caps).map_err(|e| e.to_string())?;
    let in_userns_without_setgroups = false;
    process::switch_user(cfg.process.user(), !in_userns_without_setgroups)
        .map_err(|e| e.to_string())?;
    process::apply_caps(&cfg.caps).map_err(|e| e.to_string())?;
    let cwd = cfg.process.cwd();
    nix::unistd::chdir(cwd).map_err(|e| format!("process.cwd {}: {e}", cwd.display()))?;
    let args = cfg.process.args().clone().unwrap_or_default();
    let env = cfg.process.env().clone().unwrap_or_default();
    let first = args.first().ok_or("process.args is empty")?;
    let exe = process::find_executable(first, &env).map_err(|e| e.to_string())?;
    let exe_c = std::ffi::CString::new(exe.as_os_str().as_encoded_bytes())
        .map_err(|_| "executable path holds NUL")?;
    let argv = process::cstrings(&args).map_err(|e| e.to_string())?;
    let envp = process::cstrings(&env).map_err(|e| e.to_string())?;
    close_extra_fds(
        3 + cfg.preserve_fds,
        &[
            chan_fd(chan),
            fifo_fd.as_ref().map(|f| f.as_raw_fd()).unwrap_or(-1),
        ],
    );
    chan.send(&Msg::Ready).map_err(|e| e.to_string())?;
    if let Some(fd) = fifo_fd {
        // Blocks until `start` opens the other end.
        let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
        let barrier = nix::fcntl::open(
            path.as_str(),
            nix::fcntl::OFlag::O_WRONLY | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(|e| format!("waiting at the start barrier: {e}"))?;
        nix::unistd::write(&barrier, b"0")
            .map_err(|e| format!("releasing the start barrier: {e}"))?;
        drop(barrier);
        drop(fd);
        if let Some(hooks) = cfg
            .spec
            .hooks()
            .as_ref()
            .and_then(|h| h.start_container().clone())
        {
            let state = hook_state(cfg, "running");
            if let Err(e) = crate::hooks::run("startContainer", &hooks, &state) {
                // Past the barrier nobody reads the channel: say it on stderr and stop.
                eprintln!("berth: {e}");
                // SAFETY: ends the init without running destructors of the parent's state.
                unsafe { libc::_exit(127) }
            }
        }
    }
    if nnp
        && let Some(f) = &cfg.seccomp
        && let Err(e) = f.load()
    {
        eprintln!("berth: loading seccomp filter: {e}");
        // SAFETY: ends the init without running destructors of the parent's state.
        unsafe { libc::_exit(127) }
    }
    let e = nix::unistd::execve(&exe_c, &argv, &envp).unwrap_err();
    eprintln!("berth: exec {}: {e}", exe.display());
    // SAFETY: as above.
    unsafe { libc::_exit(127) }
}

fn chan_fd(chan: &Channel) -> RawFd {
    chan.raw_fd()
}

fn hook_state<'a>(cfg: &'a InitConfig, status: &'static str) -> crate::hooks::HookState<'a> {
    crate::hooks::HookState {
        oci_version: cfg.spec.version(),
        id: &cfg.id,
        status,
        pid: Some(std::process::id() as i32),
        bundle: &cfg.bundle,
        annotations: cfg.spec.annotations().as_ref(),
    }
}

/// Closes every descriptor from `from` up except `keep`. Closing (not just
/// close-on-exec) matters: the init waits at the barrier before it execs, and a
/// pipe end it still held would keep its creator waiting for EOF.
fn close_extra_fds(from: i32, keep: &[RawFd]) {
    let mut keep: Vec<RawFd> = keep.iter().copied().filter(|k| *k >= from).collect();
    keep.sort_unstable();
    let mut lo = from;
    for k in keep.into_iter().chain([RawFd::MAX]) {
        if k > lo {
            close_range(lo as u32, (k - 1) as u32);
        }
        lo = k.saturating_add(1);
    }
}

fn close_range(first: u32, last: u32) {
    // SAFETY: this process is about to exec and never returns to code that owns
    // these descriptors, so no OwnedFd is closed twice; close_range takes integers.
    let r = unsafe { libc::syscall(libc::SYS_close_range, first, last, 0u32) };
    if r != 0 {
        // Kernels before 5.9: close one by one what is open.
        let fds: Vec<RawFd> = match std::fs::read_dir("/proc/self/fd") {
            Ok(dir) => dir
                .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect(),
            Err(_) => return,
        };
        for fd in fds {
            if fd as u32 >= first && fd as u32 <= last {
                // SAFETY: as above.
                unsafe { libc::close(fd) };
            }
        }
    }
}
