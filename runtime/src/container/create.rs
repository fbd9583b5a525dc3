//! `create`: from a bundle to an init waiting at the start barrier.
//!
//! The order, each step undone if a later one fails:
//! 1. validate the ID, config.json, seccomp profile (nothing exists yet);
//! 2. reserve the state dir (the atomic "already exists" check), copy the config;
//! 3. make the cgroup and apply resources;
//! 4. fork the monitor (unless told not to), which forks stage 1 of the
//!    container (see `init`), puts it in the cgroup, writes its id maps, runs
//!    prestart/createRuntime hooks when stage 2 asks, and records the state once
//!    stage 2 waits at the barrier.

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::sched::CloneFlags;
use nix::unistd::{ForkResult, Pid};
use oci_spec::runtime::LinuxNamespaceType;

use super::channel::{Channel, Msg};
use super::clone::Forked;
use super::init::{self, InitConfig, Kind};
use super::{Engine, EngineError, Result, io, sys};
use crate::bundle::Bundle;
use crate::cgroups::{self, Cgroup};
use crate::crilog::Stream;
use crate::process::CapSets;
use crate::state::{self, ContainerState};

/// Who supervises the init after `create` returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MonitorMode {
    /// berth's monitor, unless a child subreaper (containerd's shim, conmon)
    /// adopts it: then the caller already supervises, and the init is handed to it
    /// as runc would.
    #[default]
    Auto,
    Always,
    /// The caller supervises (runc's model).
    Never,
}

#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    pub id: String,
    pub bundle: PathBuf,
    pub pid_file: Option<PathBuf>,
    pub console_socket: Option<PathBuf>,
    /// Container stdout/stderr go here in the CRI log format (needs the monitor).
    pub cri_log: Option<PathBuf>,
    /// With a CRI log: give the container a stdin pipe that attach clients
    /// write to (the CRI's `stdin`), closed after the first client detaches
    /// with `cri_stdin_once`. With `process.terminal` the monitor holds the
    /// terminal instead of a console socket, and input is typed into it
    /// (see [`crate::attach`]).
    pub cri_stdin: bool,
    pub cri_stdin_once: bool,
    pub monitor: MonitorMode,
    pub preserve_fds: i32,
}

/// Undoes a half-made container unless disarmed.
struct Undo<'a> {
    engine: &'a Engine,
    id: String,
    cgroup: Option<Box<dyn Cgroup>>,
    armed: bool,
}

impl Drop for Undo<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Some(cg) = &self.cgroup {
            for pid in cg.pids().unwrap_or_default() {
                let _ =
                    nix::sys::signal::kill(Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            }
            super::wait_until(std::time::Duration::from_secs(5), || {
                cg.pids().map(|p| p.is_empty()).unwrap_or(true)
            });
            if let Err(e) = cg.destroy() {
                tracing::warn!(id = %self.id, error = %e, "removing the cgroup of a failed create");
            }
        }
        let _ = self.engine.root.remove(&self.id);
    }
}

impl Engine {
    pub fn create(&self, o: &CreateOptions) -> Result<ContainerState> {
        crate::id::validate(&o.id)?;
        let bundle = Bundle::load(&o.bundle)?;
        tracing::debug!(id = %o.id, "config parsed");
        let process = bundle.spec.process().clone().ok_or_else(|| {
            EngineError::Bundle(crate::bundle::BundleError::Invalid {
                field: "process".into(),
                message: "missing; nothing to run".into(),
            })
        })?;
        let linux = bundle.spec.linux().clone().unwrap_or_default();
        let seccomp = match linux.seccomp() {
            Some(s) => Some(crate::seccomp::compile(s)?),
            None => None,
        };
        if o.cri_log.is_some() && o.monitor == MonitorMode::Never {
            return Err(EngineError::Setup {
                id: o.id.clone(),
                message: "a CRI log needs berth's monitor".into(),
            });
        }
        let terminal = process.terminal().unwrap_or(false);
        if terminal && o.console_socket.is_none() && o.cri_log.is_none() {
            return Err(EngineError::Setup {
                id: o.id.clone(),
                message: "process.terminal is set: --console-socket is required \
                          (or --cri-log, with which berth's monitor holds the terminal)"
                    .into(),
            });
        }
        if terminal && o.console_socket.is_some() && o.cri_log.is_some() {
            return Err(EngineError::Setup {
                id: o.id.clone(),
                message: "process.terminal with --cri-log: the monitor holds the terminal, \
                          so --console-socket cannot be given too"
                    .into(),
            });
        }
        let dir = self.root.reserve(&o.id)?;
        let mut undo = Undo {
            engine: self,
            id: o.id.clone(),
            cgroup: None,
            armed: true,
        };

        let rel = cgroups::resolve_path(
            linux.cgroups_path().as_ref().and_then(|p| p.to_str()),
            &o.id,
        )?;
        let rel = cgroups::below_parent(rel, &self.cgroups.parent);
        let cg = cgroups::open(&self.cgroups, &rel)?;
        tracing::debug!(id = %o.id, "bundle loaded");
        cg.create()?;
        undo.cgroup = Some(cg);
        let cg = undo
            .cgroup
            .as_ref()
            .map(|c| c.as_ref())
            .ok_or_else(|| EngineError::Setup {
                id: o.id.clone(),
                message: "cgroup".into(),
            })?;
        let resources = with_default_devices(linux.resources().clone().unwrap_or_default());
        cg.apply(&resources)?;
        tracing::debug!(id = %o.id, "cgroup ready");
        let fifo = dir.join(state::FIFO_FILE);
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o200))
            .map_err(sys(format!("mkfifo {}", fifo.display())))?;
        // The init opens the barrier after it switched to the container's user.
        let (uid, gid) = host_ids(&linux, process.user().uid(), process.user().gid());
        nix::unistd::chown(
            &fifo,
            Some(nix::unistd::Uid::from_raw(uid)),
            Some(nix::unistd::Gid::from_raw(gid)),
        )
        .map_err(sys(format!("chown {}", fifo.display())))?;
        let console = match &o.console_socket {
            Some(p) => Some(connect_console(p)?),
            None => None,
        };

        let mut joins = Vec::new();
        let mut unshare = CloneFlags::empty();
        let mut new_pid = false;
        let namespaces = linux.namespaces().clone().unwrap_or_default();
        for ns in &namespaces {
            let flag = init::clone_flag(ns.typ());
            match ns.path() {
                Some(p) => joins.push((flag, p.clone())),
                None => {
                    unshare |= flag;
                    new_pid |= ns.typ() == LinuxNamespaceType::Pid;
                }
            }
        }
        // The user namespace is joined first: the others' permissions depend on it.
        joins.sort_by_key(|(f, _)| *f != CloneFlags::CLONE_NEWUSER);
        let hierarchies = cgroups::cgroup_lines()
            .map(crate::rootfs::parse_cgroup_mounts)
            .unwrap_or_default()
            .into_iter()
            .filter(|h| h.mount_point.starts_with(&self.cgroups.mount_root))
            .collect();
        let caps = CapSets::from_spec(process.capabilities().as_ref());
        let cfg = InitConfig {
            kind: Kind::Create,
            id: o.id.clone(),
            bundle: bundle.dir.clone(),
            spec: bundle.spec.clone(),
            process,
            rootfs: bundle.rootfs.clone(),
            fifo: Some(fifo),
            console,
            stdio: None,
            stdin: None,
            hierarchies,
            cgroup_path: Path::new("/").join(&self.cgroups.parent).join(&rel),
            seccomp,
            caps,
            joins,
            unshare,
            preserve_fds: o.preserve_fds,
        };
        let record = ContainerState {
            id: o.id.clone(),
            bundle: bundle.dir.clone(),
            rootfs: bundle.rootfs.clone(),
            pid: 0,
            pid_start: 0,
            created: crate::crilog::format_timestamp(std::time::SystemTime::now()),
            cgroup: rel,
            cgroup_mount_root: self.cgroups.mount_root.clone(),
            cgroup_parent: self.cgroups.parent.clone(),
            monitor_pid: None,
            owner: String::new(),
            annotations: bundle.spec.annotations().clone().unwrap_or_default(),
            new_pid_namespace: new_pid,
            spec: Some(bundle.spec.clone()),
        };
        let st = match o.monitor {
            MonitorMode::Never => {
                set_subreaper()?;
                self.spawn_and_record(cfg, cg, record, &dir)?
            }
            mode => self.create_under_monitor(cfg, cg, record, &dir, mode, o)?,
        };
        if let Some(p) = &o.pid_file {
            state::write_atomic(p, st.pid.to_string().as_bytes())?;
        }
        undo.armed = false;
        Ok(st)
    }

    fn spawn_and_record(
        &self,
        cfg: InitConfig,
        cg: &dyn Cgroup,
        mut record: ContainerState,
        dir: &Path,
    ) -> Result<ContainerState> {
        let pid = spawn(&cfg, cg, |pid| run_create_hooks(&cfg, pid)).map_err(|message| {
            EngineError::Setup {
                id: cfg.id.clone(),
                message,
            }
        })?;
        record.pid = pid;
        record.pid_start = state::proc_stat(pid).map(|s| s.start_time).unwrap_or(0);
        tracing::debug!(container = %cfg.id, pid, "init waits at the barrier");
        state::write_json(&dir.join(state::STATE_FILE), &record)?;
        Ok(record)
    }

    /// Forks the monitor (through an intermediate when it may stand aside) and
    /// lets it create the container; returns what it reports.
    fn create_under_monitor(
        &self,
        mut cfg: InitConfig,
        cg: &dyn Cgroup,
        record: ContainerState,
        dir: &Path,
        mode: MonitorMode,
        o: &CreateOptions,
    ) -> Result<ContainerState> {
        let cri_log = o.cri_log.as_deref();
        let (report_r, report_w) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(sys("pipe"))?;
        let log = match cri_log {
            Some(p) => {
                Some(
                    crate::crilog::CriLogWriter::open(p).map_err(|e| EngineError::Setup {
                        id: cfg.id.clone(),
                        message: format!("CRI log {}: {e}", p.display()),
                    })?,
                )
            }
            None => None,
        };
        let terminal = cfg.process.terminal().unwrap_or(false);
        let mut mon_io = MonitorIo {
            log,
            pipes: None,
            stdin: None,
            console: None,
            terminal_input: false,
            stdin_once: o.cri_stdin_once,
        };
        if mon_io.log.is_some() && terminal {
            // The pty is the container's stdio: the init sends its master
            // here, as it would to a console socket.
            let (ours, theirs) = nix::sys::socket::socketpair(
                nix::sys::socket::AddressFamily::Unix,
                nix::sys::socket::SockType::Stream,
                None,
                nix::sys::socket::SockFlag::SOCK_CLOEXEC,
            )
            .map_err(sys("socketpair"))?;
            cfg.console = Some(theirs);
            mon_io.console = Some(ours);
            mon_io.terminal_input = o.cri_stdin;
        } else if mon_io.log.is_some() {
            let out = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(sys("pipe"))?;
            let err = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(sys("pipe"))?;
            cfg.stdio = Some((out.1, err.1));
            mon_io.pipes = Some((out.0, err.0));
            if o.cri_stdin {
                let (r, w) =
                    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(sys("pipe"))?;
                cfg.stdin = Some(r);
                mon_io.stdin = Some(w);
            }
        }
        // A monitor that may stand aside needs to see who adopts it, so it
        // is forked through an intermediate that exits at once; one that
        // stays (a CRI container's, which copies its log) is forked
        // directly, a fork and an exit fewer on the container's creation,
        // and is orphaned when we exit after its report all the same.
        if !(mode == MonitorMode::Auto && mon_io.log.is_none()) {
            return self
                .fork_monitor_directly(cfg, cg, record, dir, mode, report_r, report_w, mon_io);
        }
        // SAFETY: the CLI is single-threaded when it creates containers.
        match unsafe { nix::unistd::fork() }.map_err(sys("fork"))? {
            ForkResult::Child => {
                drop(report_r);
                let _ = nix::unistd::setsid();
                // Taken before the fork: once we exit, the monitor's getppid() no longer names us.
                let middle = nix::unistd::getpid();
                // SAFETY: still single-threaded.
                match unsafe { nix::unistd::fork() } {
                    Ok(ForkResult::Child) => {
                        let code =
                            self.monitor_main(cfg, cg, record, dir, mode, middle, report_w, mon_io);
                        // SAFETY: ends the monitor without unwinding into the CLI's main.
                        unsafe { libc::_exit(code) }
                    }
                    // SAFETY: the intermediate's only job was to fork.
                    _ => unsafe { libc::_exit(0) },
                }
            }
            ForkResult::Parent { child } => {
                drop(report_w);
                drop(cfg);
                drop(mon_io);
                let _ = nix::sys::wait::waitpid(child, None);
                read_report(report_r, record.id)
            }
        }
    }

    /// [`Self::create_under_monitor`] without the intermediate: the monitor
    /// is our child until we exit, so it must not wait to be adopted.
    #[allow(clippy::too_many_arguments)]
    fn fork_monitor_directly(
        &self,
        cfg: InitConfig,
        cg: &dyn Cgroup,
        record: ContainerState,
        dir: &Path,
        mode: MonitorMode,
        report_r: OwnedFd,
        report_w: OwnedFd,
        mon_io: MonitorIo,
    ) -> Result<ContainerState> {
        // SAFETY: the CLI is single-threaded when it creates containers.
        match unsafe { nix::unistd::fork() }.map_err(sys("fork"))? {
            ForkResult::Child => {
                drop(report_r);
                // Out of the caller's session and process group, as the
                // intermediate's child was: a signal to the caller's
                // terminal must not reach the monitor.
                let _ = nix::unistd::setsid();
                // No pid is ours to wait out: nobody adopts us before the
                // report, and we stay whoever does.
                let code = self.monitor_main(
                    cfg,
                    cg,
                    record,
                    dir,
                    mode,
                    Pid::from_raw(0),
                    report_w,
                    mon_io,
                );
                // SAFETY: ends the monitor without unwinding into the CLI's main.
                unsafe { libc::_exit(code) }
            }
            ForkResult::Parent { .. } => {
                drop(report_w);
                drop(cfg);
                drop(mon_io);
                read_report(report_r, record.id)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn monitor_main(
        &self,
        cfg: InitConfig,
        cg: &dyn Cgroup,
        mut record: ContainerState,
        dir: &Path,
        mode: MonitorMode,
        middle: Pid,
        report: OwnedFd,
        mon_io: MonitorIo,
    ) -> i32 {
        let MonitorIo {
            log,
            pipes,
            stdin,
            console,
            terminal_input,
            stdin_once,
        } = mon_io;
        let mut report = std::fs::File::from(report);
        let sfd = match super::wait::block_signals() {
            Ok(s) => s,
            Err(e) => {
                let _ = report.write_all(
                    &serde_json::to_vec(&Err::<ContainerState, _>(e)).unwrap_or_default(),
                );
                return 1;
            }
        };
        if let Err(e) = set_subreaper() {
            let _ = report.write_all(
                &serde_json::to_vec(&Err::<ContainerState, _>(e.to_string())).unwrap_or_default(),
            );
            return 1;
        }
        // Assume we stay; corrected below if a subreaper adopted us.
        let may_stand_aside = mode == MonitorMode::Auto && log.is_none();
        if mode != MonitorMode::Never {
            record.monitor_pid = Some(std::process::id() as i32);
        }
        let result = self.spawn_and_record(cfg, cg, record, dir);
        // The init sent its terminal's master before it reported ready, and
        // nobody holds the init's end of the pair any more (the init closed
        // it, our copy went with `cfg`): the master is queued, or the read
        // ends at once.
        let result = result.and_then(|st| match console {
            Some(sock) => receive_terminal(sock, &st.id, terminal_input).map(|t| (st, Some(t))),
            None => Ok((st, None)),
        });
        let result = result.and_then(|(mut st, terminal)| {
            // The intermediate exits right after forking us, so by now (the
            // container is made) we are orphaned; see who adopted us.
            let mut spins = 0;
            while middle.as_raw() != 0 && nix::unistd::getppid() == middle && spins < 20_000 {
                std::thread::sleep(std::time::Duration::from_micros(50));
                spins += 1;
            }
            if may_stand_aside && nix::unistd::getppid().as_raw() > 1 {
                st.monitor_pid = None;
                state::write_json(&dir.join(state::STATE_FILE), &st)?;
            }
            Ok((st, terminal))
        });
        let stand_aside = result
            .as_ref()
            .is_ok_and(|(st, _)| st.monitor_pid.is_none());
        let (st, terminal) = match result {
            Ok(r) => r,
            Err(e) => {
                let _ = report.write_all(
                    &serde_json::to_vec(&Err::<ContainerState, _>(e.to_string()))
                        .unwrap_or_default(),
                );
                return 1;
            }
        };
        let (output, attach_server) = if let Some(t) = terminal {
            let server = bind_attach(dir, &st.id, t.input, stdin_once, Some(t.resize));
            (vec![(t.master, Stream::Stdout)], server)
        } else if let Some((out, err)) = pipes {
            let server = bind_attach(dir, &st.id, stdin, stdin_once, None);
            (vec![(out, Stream::Stdout), (err, Stream::Stderr)], server)
        } else {
            (Vec::new(), None)
        };
        let _ =
            report.write_all(&serde_json::to_vec(&Ok::<_, String>(st.clone())).unwrap_or_default());
        drop(report);
        if stand_aside {
            // The init is handed to the subreaper that adopted us.
            return 0;
        }
        // The caller's stdio belongs to the container now; holding it would keep a
        // reader of the caller's output waiting after the container exits.
        if let Ok(null) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")
        {
            for fd in 0..3 {
                // SAFETY: dup2 onto our own standard descriptors.
                unsafe { libc::dup2(null.as_raw_fd(), fd) };
            }
        }
        crate::monitor::shed_clean_mappings();
        crate::monitor::run(crate::monitor::Monitor {
            init_pid: st.pid,
            state_dir: dir.to_owned(),
            signals: sfd,
            output,
            log,
            cgroup: cg,
            attach: attach_server,
        });
        0
    }
}

/// The monitor's report on the container's creation, read until the
/// monitor closes its end.
fn read_report(report_r: OwnedFd, id: String) -> Result<ContainerState> {
    let mut buf = Vec::new();
    std::fs::File::from(report_r)
        .read_to_end(&mut buf)
        .map_err(io("reading the monitor's report"))?;
    match serde_json::from_slice::<std::result::Result<ContainerState, String>>(&buf) {
        Ok(Ok(st)) => Ok(st),
        Ok(Err(message)) => Err(EngineError::Reported(message)),
        Err(_) => Err(EngineError::Setup {
            id,
            message: "the monitor exited without a report".into(),
        }),
    }
}

/// What the monitor copies and serves, made before the fork.
struct MonitorIo {
    log: Option<crate::crilog::CriLogWriter>,
    /// Read ends of the container's stdout and stderr pipes.
    pipes: Option<(OwnedFd, OwnedFd)>,
    /// Write end of the container's stdin pipe.
    stdin: Option<OwnedFd>,
    /// For a container with a terminal: where the init sends its master.
    console: Option<OwnedFd>,
    /// Attach clients type into the terminal (the container has stdin).
    terminal_input: bool,
    stdin_once: bool,
}

/// The terminal of a container whose monitor holds it: one descriptor of
/// the master for each use.
struct Terminal {
    /// Read for the container's output.
    master: OwnedFd,
    /// Resized through the winsize socket.
    resize: OwnedFd,
    /// Attach input is typed into it (the container has stdin).
    input: Option<OwnedFd>,
}

/// Takes the pty master the init sent on the console socket pair.
fn receive_terminal(sock: OwnedFd, id: &str, with_input: bool) -> Result<Terminal> {
    let sock = std::os::unix::net::UnixStream::from(sock);
    // The message is already queued; the bound only guards against a
    // mistake elsewhere turning into a monitor that never reports.
    sock.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .map_err(io("console socket"))?;
    let master = crate::console::receive_master(&sock).map_err(|e| EngineError::Setup {
        id: id.to_string(),
        message: e.to_string(),
    })?;
    // The poll loop reads it, and attach input is written to it, without
    // blocking (the flag is shared by every descriptor of the master).
    let flags = nix::fcntl::fcntl(&master, nix::fcntl::FcntlArg::F_GETFL).map_err(sys("fcntl"))?;
    nix::fcntl::fcntl(
        &master,
        nix::fcntl::FcntlArg::F_SETFL(
            nix::fcntl::OFlag::from_bits_retain(flags) | nix::fcntl::OFlag::O_NONBLOCK,
        ),
    )
    .map_err(sys("fcntl"))?;
    let dup = |m: &OwnedFd| m.try_clone().map_err(io("duplicating the pty master"));
    Ok(Terminal {
        resize: dup(&master)?,
        input: if with_input {
            Some(dup(&master)?)
        } else {
            None
        },
        master,
    })
}

/// Binds the attach socket, before the report so it exists once create
/// returns; without it the container still runs and logs.
fn bind_attach(
    dir: &Path,
    id: &str,
    stdin: Option<OwnedFd>,
    stdin_once: bool,
    terminal: Option<OwnedFd>,
) -> Option<crate::attach::AttachServer> {
    crate::attach::AttachServer::bind(dir, stdin, stdin_once, terminal)
        .map_err(|e| tracing::warn!(id = %id, error = %e, "no attach socket"))
        .ok()
}

fn set_subreaper() -> Result<()> {
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER, 1) takes integers only.
    let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    nix::errno::Errno::result(r)
        .map(drop)
        .map_err(sys("prctl(PR_SET_CHILD_SUBREAPER)"))
}

fn connect_console(path: &Path) -> Result<OwnedFd> {
    let s = std::os::unix::net::UnixStream::connect(path).map_err(io(format!(
        "connecting to console socket {}",
        path.display()
    )))?;
    Ok(OwnedFd::from(s))
}

/// Hooks the creator runs (in the runtime's namespaces) while the init
/// waits.
fn has_creator_hooks(spec: &oci_spec::runtime::Spec) -> bool {
    spec.hooks().as_ref().is_some_and(|h| {
        h.prestart().as_ref().is_some_and(|v| !v.is_empty())
            || h.create_runtime().as_ref().is_some_and(|v| !v.is_empty())
    })
}

/// setns(2) into each namespace of `joins` (all opened first, as in stage 1).
fn join_namespaces(joins: &[(CloneFlags, PathBuf)]) -> std::result::Result<(), String> {
    let mut fds = Vec::new();
    for (flag, path) in joins {
        let fd = std::fs::File::open(path)
            .map_err(|e| format!("opening namespace {}: {e}", path.display()))?;
        fds.push((*flag, fd, path));
    }
    for (flag, fd, path) in &fds {
        nix::sched::setns(fd, *flag)
            .map_err(|e| format!("joining namespace {}: {e}", path.display()))?;
    }
    Ok(())
}

fn run_create_hooks(cfg: &InitConfig, pid: i32) -> std::result::Result<(), String> {
    let Some(hooks) = cfg.spec.hooks() else {
        return Ok(());
    };
    let st = crate::hooks::HookState {
        oci_version: cfg.spec.version(),
        id: &cfg.id,
        status: "creating",
        pid: Some(pid),
        bundle: &cfg.bundle,
        annotations: cfg.spec.annotations().as_ref(),
    };
    crate::hooks::run(
        "prestart",
        hooks.prestart().as_deref().unwrap_or_default(),
        &st,
    )
    .map_err(|e| e.to_string())?;
    crate::hooks::run(
        "createRuntime",
        hooks.create_runtime().as_deref().unwrap_or_default(),
        &st,
    )
    .map_err(|e| e.to_string())
}

/// Forks stage 1, drives the setup conversation, and returns the init's pid once
/// it is ready (create: waiting at the barrier; exec: about to exec).
pub(super) fn spawn(
    cfg: &InitConfig,
    cg: &dyn Cgroup,
    mut on_hooks: impl FnMut(i32) -> std::result::Result<(), String>,
) -> std::result::Result<i32, String> {
    let (parent, child) = Channel::pair().map_err(|e| format!("socketpair: {e}"))?;
    // Stage 1 only exists to join namespaces and to map a new user namespace
    // between fork and unshare; without either, one clone makes the init.
    // Joining only a pod's network, IPC, UTS or pid namespace (every CRI
    // container) needs no stage 1 either: this process joins them itself and
    // the clone inherits them, which saves a fork and a round trip on each
    // container start. Those namespaces change nothing for this process (a
    // monitor, or a CLI about to exit) but where its children start; hooks
    // that must run in the runtime's namespaces keep stage 1.
    let no_userns = !cfg.unshare.contains(CloneFlags::CLONE_NEWUSER);
    let join_here = no_userns
        && !cfg.joins.is_empty()
        && cfg.joins.iter().all(|(f, _)| {
            matches!(
                *f,
                CloneFlags::CLONE_NEWNET
                    | CloneFlags::CLONE_NEWIPC
                    | CloneFlags::CLONE_NEWUTS
                    | CloneFlags::CLONE_NEWPID
            )
        })
        && !has_creator_hooks(&cfg.spec);
    let direct = (cfg.joins.is_empty() && no_userns) || join_here;
    if join_here {
        join_namespaces(&cfg.joins)?;
    }
    let placement = cg.placement();
    let clone_into = placement
        .as_ref()
        .and_then(|p| p.clone_into.as_ref())
        .and_then(|d| {
            nix::fcntl::open(
                d,
                nix::fcntl::OFlag::O_RDONLY
                    | nix::fcntl::OFlag::O_DIRECTORY
                    | nix::fcntl::OFlag::O_CLOEXEC,
                nix::sys::stat::Mode::empty(),
            )
            .ok()
        });
    let wants_clone_into = placement.as_ref().is_some_and(|p| p.clone_into.is_some());
    // A cgroup namespace is rooted where it is made: after the cgroup move.
    let late = if direct {
        cfg.unshare & CloneFlags::CLONE_NEWCGROUP
    } else {
        CloneFlags::empty()
    };
    let flags = if direct {
        cfg.unshare - late
    } else {
        CloneFlags::empty()
    };
    let (forked, cloned_into) =
        super::clone::fork_into(flags, clone_into.as_ref().map(|f| f.as_fd()))
            .map_err(|e| format!("clone: {e}"))?;
    let self_join = match &placement {
        Some(p) if cloned_into || !wants_clone_into => Some(p.self_join.as_slice()),
        _ => None,
    };
    let first = match forked {
        Forked::Child => {
            drop(parent);
            let entry = init::Entry {
                self_join: self_join.unwrap_or_default(),
                late_unshare: late,
            };
            if direct {
                init::stage2(cfg, &child, &entry)
            } else {
                init::stage1(cfg, &child, &entry)
            }
        }
        Forked::Parent(pid) => pid,
    };
    drop(child);
    let stage1 = first;
    let mut init_pid: Option<i32> = direct.then_some(first.as_raw());
    let result = (|| {
        if self_join.is_none() {
            cg.add_process(first.as_raw()).map_err(|e| e.to_string())?;
        }
        tracing::debug!(container = %cfg.id, "first process in the cgroup");
        parent.send(&Msg::Go).map_err(|e| e.to_string())?;
        loop {
            match parent.recv() {
                Ok(Msg::UserNsReady) => {
                    write_id_maps(cfg, stage1.as_raw())?;
                    parent.send(&Msg::MapsWritten).map_err(|e| e.to_string())?;
                }
                Ok(Msg::InitPid(p)) => {
                    init_pid = Some(p);
                    let _ = nix::sys::wait::waitpid(stage1, None);
                    // The init speaks only after this, so its messages cannot
                    // overtake stage 1's on the shared socket.
                    parent.send(&Msg::Go).map_err(|e| e.to_string())?;
                }
                Ok(Msg::RunHooks) => {
                    tracing::debug!(container = %cfg.id, "mounts done");
                    let pid = init_pid.ok_or("hooks requested before the init existed")?;
                    match on_hooks(pid) {
                        Ok(()) => parent.send(&Msg::HooksDone).map_err(|e| e.to_string())?,
                        Err(e) => {
                            let _ = parent.send(&Msg::Error(e.clone()));
                            return Err(e);
                        }
                    }
                }
                Ok(Msg::Warn(w)) => tracing::warn!(container = %cfg.id, "{w}"),
                Ok(Msg::Ready) => {
                    return init_pid.ok_or_else(|| "ready before the init existed".to_string());
                }
                Ok(Msg::Error(e)) => return Err(e),
                Ok(other) => return Err(format!("unexpected message {other:?}")),
                Err(e) => return Err(e.to_string()),
            }
        }
    })();
    if result.is_err() {
        let _ = nix::sys::signal::kill(stage1, nix::sys::signal::Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(stage1, None);
        if let Some(p) = init_pid.filter(|p| *p != stage1.as_raw()) {
            let _ = nix::sys::signal::kill(Pid::from_raw(p), nix::sys::signal::Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(Pid::from_raw(p), None);
        }
    }
    result
}

fn write_id_maps(cfg: &InitConfig, pid: i32) -> std::result::Result<(), String> {
    let linux = cfg.spec.linux().clone().unwrap_or_default();
    let fmt = |maps: &Option<Vec<oci_spec::runtime::LinuxIdMapping>>| {
        maps.iter()
            .flatten()
            .map(|m| format!("{} {} {}\n", m.container_id(), m.host_id(), m.size()))
            .collect::<String>()
    };
    for (file, text) in [
        ("uid_map", fmt(linux.uid_mappings())),
        ("gid_map", fmt(linux.gid_mappings())),
    ] {
        let path = format!("/proc/{pid}/{file}");
        std::fs::write(&path, &text)
            .map_err(|e| format!("writing {path} ({:?}): {e}", text.trim()))?;
    }
    Ok(())
}

/// The device rules every container gets on top of the spec's, as runc adds them:
/// mknod of anything, and use of the default nodes and ptys. The spec's own
/// devices are not allowed implicitly: its rules decide, as with runc.
/// The cgroup starts from deny-all, so without these even /dev/null is refused.
fn with_default_devices(
    mut r: oci_spec::runtime::LinuxResources,
) -> oci_spec::runtime::LinuxResources {
    use crate::cgroups::device_rule;
    use oci_spec::runtime::LinuxDeviceType;
    let rule = |typ, major, minor, access| device_rule(true, typ, major, minor, access);
    let mut rules = r.devices().clone().unwrap_or_default();
    rules.push(rule(LinuxDeviceType::C, None, None, "m"));
    rules.push(rule(LinuxDeviceType::B, None, None, "m"));
    for (_, major, minor) in crate::rootfs::DEFAULT_DEVICES {
        rules.push(rule(
            LinuxDeviceType::C,
            Some(major as i64),
            Some(minor as i64),
            "rwm",
        ));
    }
    rules.push(rule(LinuxDeviceType::C, Some(5), Some(1), "rwm")); // /dev/console
    rules.push(rule(LinuxDeviceType::C, Some(5), Some(2), "rwm")); // /dev/ptmx
    rules.push(rule(LinuxDeviceType::C, Some(136), None, "rwm")); // /dev/pts/*
    r.set_devices(Some(rules));
    r
}

/// The host uid and gid that a container uid and gid map to (identity without a user namespace).
fn host_ids(linux: &oci_spec::runtime::Linux, uid: u32, gid: u32) -> (u32, u32) {
    let map = |maps: &Option<Vec<oci_spec::runtime::LinuxIdMapping>>, id: u32| {
        for m in maps.iter().flatten() {
            if id >= m.container_id() && id - m.container_id() < m.size() {
                return m.host_id() + (id - m.container_id());
            }
        }
        id
    };
    (
        map(linux.uid_mappings(), uid),
        map(linux.gid_mappings(), gid),
    )
}
