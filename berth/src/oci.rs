//! The runc-compatible command line (`berth-oci`), a thin layer over
//! `berth_runtime::container::Engine`.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{Context, Result, anyhow, bail};
use berth_runtime::cgroups::CgroupConfig;
use berth_runtime::container::{CreateOptions, Engine, ExecOptions, MonitorMode, Snapshot};
use berth_runtime::state::Status;
use clap::{Parser, Subcommand, ValueEnum};
use nix::sys::signal::Signal;

#[derive(Parser)]
#[command(
    name = "berth-oci",
    version,
    about = "berth's OCI runtime, command-compatible with runc"
)]
pub struct Args {
    /// Where container state lives.
    #[arg(
        long,
        global = true,
        default_value = "/run/berth-oci",
        env = "BERTH_OCI_ROOT"
    )]
    root: PathBuf,
    /// Log file (runc's --log); errors are also printed on stderr.
    #[arg(long, global = true)]
    log: Option<PathBuf>,
    #[arg(long = "log-format", global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    #[arg(long, global = true)]
    debug: bool,
    /// Accepted for compatibility: cgroupsPath "slice:prefix:name" is laid out as
    /// systemd would, without talking to systemd.
    #[arg(long = "systemd-cgroup", global = true)]
    systemd_cgroup: bool,
    /// Accepted for compatibility; berth runs as root.
    #[arg(long, global = true, hide = true)]
    rootless: Option<String>,
    /// Accepted for compatibility; checkpointing is not supported.
    #[arg(long, global = true, hide = true)]
    criu: Option<String>,
    /// Who supervises containers after create: berth's monitor (always), the
    /// caller (never), or berth's unless a child subreaper such as containerd's
    /// shim adopts the container (auto).
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "auto",
        env = "BERTH_MONITOR"
    )]
    monitor: Monitor,
    /// The cgroup every container's cgroup is placed under.
    #[arg(
        long = "cgroup-root",
        global = true,
        default_value = "berth",
        env = "BERTH_CGROUP_ROOT"
    )]
    cgroup_root: String,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum Monitor {
    Auto,
    Always,
    Never,
}

#[derive(Clone, Copy, ValueEnum, Default)]
enum Format {
    #[default]
    Table,
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a container; its process waits until `start`.
    Create {
        #[command(flatten)]
        c: CreateArgs,
    },
    /// Start a created container.
    Start { id: String },
    /// Print the container's state as JSON.
    State { id: String },
    /// Send a signal to the container's init (or all its processes).
    Kill {
        #[arg(short, long)]
        all: bool,
        id: String,
        #[arg(default_value = "SIGTERM")]
        signal: String,
    },
    /// Remove a container and everything it made.
    Delete {
        #[arg(short, long)]
        force: bool,
        id: String,
    },
    /// Create and start a container; without --detach, wait and exit with its code.
    Run {
        #[command(flatten)]
        c: CreateArgs,
        #[arg(short, long)]
        detach: bool,
        /// Accepted for compatibility: keep the container after it exits.
        #[arg(long)]
        keep: bool,
    },
    /// Run another process in a running container.
    Exec {
        #[arg(short, long)]
        process: Option<PathBuf>,
        #[arg(long = "pid-file")]
        pid_file: Option<PathBuf>,
        #[arg(short, long)]
        detach: bool,
        #[arg(short, long)]
        tty: bool,
        #[arg(long = "console-socket")]
        console_socket: Option<PathBuf>,
        #[arg(long)]
        cwd: Option<PathBuf>,
        #[arg(short, long)]
        env: Vec<String>,
        /// UID[:GID]
        #[arg(short, long)]
        user: Option<String>,
        #[arg(short = 'g', long = "additional-gids")]
        additional_gids: Vec<u32>,
        #[arg(short, long)]
        cap: Vec<String>,
        #[arg(long = "no-new-privs")]
        no_new_privs: bool,
        #[arg(long = "preserve-fds", default_value_t = 0)]
        preserve_fds: i32,
        #[arg(long = "process-label", hide = true)]
        process_label: Option<String>,
        #[arg(long = "apparmor", hide = true)]
        apparmor: Option<String>,
        id: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Freeze every process of the container.
    Pause { id: String },
    /// Thaw a paused container.
    Resume { id: String },
    /// List the container's processes.
    Ps {
        #[arg(short, long, value_enum, default_value = "table")]
        format: Format,
        id: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        ps_args: Vec<String>,
    },
    /// Print resource usage (once with --stats, else every --interval).
    Events {
        #[arg(long)]
        stats: bool,
        #[arg(long, default_value = "5s")]
        interval: String,
        id: String,
    },
    /// Change a running container's resources (JSON LinuxResources from a file or "-").
    Update {
        #[arg(short, long)]
        resources: Option<PathBuf>,
        #[arg(long)]
        memory: Option<i64>,
        #[arg(long = "pids-limit")]
        pids_limit: Option<i64>,
        #[arg(long = "cpu-shares")]
        cpu_shares: Option<u64>,
        #[arg(long = "cpu-quota")]
        cpu_quota: Option<i64>,
        #[arg(long = "cpu-period")]
        cpu_period: Option<u64>,
        id: String,
    },
    /// Print what this runtime supports (runtime-spec features.md).
    Features,
    /// List containers.
    List {
        #[arg(short, long, value_enum, default_value = "table")]
        format: Format,
        #[arg(short, long)]
        quiet: bool,
    },
    /// Write a default config.json into the bundle directory.
    Spec {
        #[arg(short, long, default_value = ".")]
        bundle: PathBuf,
    },
}

#[derive(clap::Args)]
struct CreateArgs {
    #[arg(short, long, default_value = ".")]
    bundle: PathBuf,
    #[arg(long = "pid-file")]
    pid_file: Option<PathBuf>,
    #[arg(long = "console-socket")]
    console_socket: Option<PathBuf>,
    /// Accepted for compatibility; berth always uses pivot_root.
    #[arg(long = "no-pivot")]
    no_pivot: bool,
    /// Accepted for compatibility; berth makes no session keyring.
    #[arg(long = "no-new-keyring")]
    no_new_keyring: bool,
    #[arg(long = "preserve-fds", default_value_t = 0)]
    preserve_fds: i32,
    /// Write the container's stdout and stderr to this file in the CRI log format.
    /// With process.terminal the monitor holds the terminal (no
    /// --console-socket) and logs its output as stdout.
    #[arg(long = "cri-log")]
    cri_log: Option<PathBuf>,
    /// With --cri-log: a stdin pipe that attach clients write to (with a
    /// terminal, their input is typed into it).
    #[arg(long = "cri-stdin", requires = "cri_log")]
    cri_stdin: bool,
    /// With --cri-stdin: close the container's stdin when the first attach
    /// client detaches.
    #[arg(long = "cri-stdin-once", requires = "cri_stdin")]
    cri_stdin_once: bool,
    id: String,
}

impl CreateArgs {
    fn options(&self, monitor: MonitorMode) -> CreateOptions {
        CreateOptions {
            id: self.id.clone(),
            bundle: self.bundle.clone(),
            pid_file: self.pid_file.clone(),
            console_socket: self.console_socket.clone(),
            cri_log: self.cri_log.clone(),
            cri_stdin: self.cri_stdin,
            cri_stdin_once: self.cri_stdin_once,
            monitor,
            preserve_fds: self.preserve_fds,
        }
    }
}

pub fn main(args: Args) -> i32 {
    let format = match args.log_format {
        LogFormat::Text => crate::log::Format::Text,
        LogFormat::Json => crate::log::Format::Json,
    };
    crate::log::init(args.log.as_deref(), format, args.debug);
    tracing::debug!("berth-oci started");
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            let msg = format!("{e:#}");
            tracing::error!("{msg}");
            eprintln!("berth-oci: {msg}");
            1
        }
    }
}

fn run(args: Args) -> Result<i32> {
    let engine = Engine::new(
        &args.root,
        CgroupConfig {
            parent: args.cgroup_root.clone(),
            ..CgroupConfig::default()
        },
    );
    let monitor = match args.monitor {
        Monitor::Auto => MonitorMode::Auto,
        Monitor::Always => MonitorMode::Always,
        Monitor::Never => MonitorMode::Never,
    };
    match args.command {
        Cmd::Create { c } => {
            engine.create(&c.options(monitor))?;
        }
        Cmd::Start { id } => engine.start(&id)?,
        Cmd::State { id } => {
            let snap = engine.state(&id)?;
            println!("{}", serde_json::to_string_pretty(&state_json(&snap))?);
        }
        Cmd::Kill { all, id, signal } => engine.kill(&id, parse_signal(&signal)?, all)?,
        Cmd::Delete { force, id } => match engine.delete(&id, force) {
            Ok(()) => {}
            // Deleting what is not there succeeds with --force, as with runc.
            Err(berth_runtime::container::EngineError::State(
                berth_runtime::state::StateError::NotFound(_),
            )) if force => {}
            Err(e) => return Err(e.into()),
        },
        Cmd::Run { c, detach, keep: _ } => {
            if detach {
                engine.create(&c.options(monitor))?;
                if let Err(e) = engine.start(&c.id) {
                    let _ = engine.delete(&c.id, true);
                    return Err(e.into());
                }
            } else {
                return Ok(engine.run(&c.options(MonitorMode::Never))?);
            }
        }
        Cmd::Exec {
            process,
            pid_file,
            detach,
            tty,
            console_socket,
            cwd,
            env,
            user,
            additional_gids,
            cap,
            no_new_privs,
            preserve_fds,
            process_label: _,
            apparmor: _,
            id,
            args: cmd,
        } => {
            let p = match process {
                Some(path) => {
                    let text = if path == Path::new("-") {
                        let mut s = Vec::new();
                        std::io::Read::read_to_end(&mut std::io::stdin(), &mut s)?;
                        s
                    } else {
                        std::fs::read(&path)
                            .with_context(|| format!("reading {}", path.display()))?
                    };
                    berth_runtime::bundle::parse_process(&path, &text)?
                }
                None => {
                    if cmd.is_empty() {
                        bail!("exec needs a command or --process");
                    }
                    let spec = engine.saved_spec(&id)?;
                    let mut p = spec.process().clone().unwrap_or_default();
                    p.set_args(Some(cmd));
                    if let Some(cwd) = cwd {
                        p.set_cwd(cwd);
                    }
                    let mut e = p.env().clone().unwrap_or_default();
                    e.extend(env);
                    p.set_env(Some(e));
                    p.set_terminal(Some(tty));
                    if let Some(u) = user {
                        let (uid, gid) = match u.split_once(':') {
                            Some((a, b)) => (a.parse()?, b.parse()?),
                            None => (u.parse()?, 0),
                        };
                        let mut usr = p.user().clone();
                        usr.set_uid(uid);
                        usr.set_gid(gid);
                        if !additional_gids.is_empty() {
                            usr.set_additional_gids(Some(additional_gids));
                        }
                        p.set_user(usr);
                    }
                    if no_new_privs {
                        p.set_no_new_privileges(Some(true));
                    }
                    if !cap.is_empty() {
                        let mut caps = p.capabilities().clone().unwrap_or_default();
                        let extra: Vec<OciCap> =
                            cap.iter().map(|c| parse_cap(c)).collect::<Result<_>>()?;
                        // runc's --cap adds to every set but ambient.
                        let with = |set: &Option<oci_spec::runtime::Capabilities>| {
                            let mut s = set.clone().unwrap_or_default();
                            s.extend(extra.iter().copied());
                            Some(s)
                        };
                        caps.set_bounding(with(caps.bounding()));
                        caps.set_effective(with(caps.effective()));
                        caps.set_permitted(with(caps.permitted()));
                        caps.set_inheritable(with(caps.inheritable()));
                        p.set_capabilities(Some(caps));
                    }
                    p
                }
            };
            let o = ExecOptions {
                pid_file,
                console_socket,
                detach,
                preserve_fds,
            };
            let r = engine.exec(&id, p, &o)?;
            return Ok(if detach { 0 } else { r });
        }
        Cmd::Pause { id } => engine.pause(&id)?,
        Cmd::Resume { id } => engine.resume(&id)?,
        Cmd::Ps {
            format,
            id,
            ps_args,
        } => {
            let pids = engine.pids(&id)?;
            match format {
                Format::Json => println!("{}", serde_json::to_string(&pids)?),
                Format::Table => {
                    let args = if ps_args.is_empty() {
                        vec!["-ef".to_string()]
                    } else {
                        ps_args
                    };
                    let out = std::process::Command::new("ps")
                        .args(&args)
                        .output()
                        .context("running ps")?;
                    let text = String::from_utf8_lossy(&out.stdout);
                    let mut lines = text.lines();
                    let header = lines.next().unwrap_or_default();
                    let col = header
                        .split_whitespace()
                        .position(|h| h == "PID")
                        .ok_or_else(|| anyhow!("ps output has no PID column"))?;
                    println!("{header}");
                    for l in lines {
                        if let Some(pid) = l
                            .split_whitespace()
                            .nth(col)
                            .and_then(|p| p.parse::<i32>().ok())
                            && pids.contains(&pid)
                        {
                            println!("{l}");
                        }
                    }
                }
            }
        }
        Cmd::Events {
            stats,
            interval,
            id,
        } => {
            let every = parse_duration(&interval)?;
            loop {
                let s = engine.stats(&id)?;
                let ev = serde_json::json!({"type": "stats", "id": id, "data": runc_stats(&s)});
                println!("{ev}");
                if stats {
                    break;
                }
                std::thread::sleep(every);
                if engine.state(&id)?.status == Status::Stopped {
                    break;
                }
            }
        }
        Cmd::Update {
            resources,
            memory,
            pids_limit,
            cpu_shares,
            cpu_quota,
            cpu_period,
            id,
        } => {
            let mut r: oci_spec::runtime::LinuxResources = match resources {
                Some(p) => {
                    let text = if p == Path::new("-") {
                        let mut s = Vec::new();
                        std::io::Read::read_to_end(&mut std::io::stdin(), &mut s)?;
                        s
                    } else {
                        std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?
                    };
                    serde_json::from_slice(&text).context("parsing resources JSON")?
                }
                None => Default::default(),
            };
            if let Some(m) = memory {
                let mut mem = r.memory().unwrap_or_default();
                mem.set_limit(Some(m));
                r.set_memory(Some(mem));
            }
            if let Some(p) = pids_limit {
                r.set_pids(Some(
                    oci_spec::runtime::LinuxPidsBuilder::default()
                        .limit(p)
                        .build()?,
                ));
            }
            if cpu_shares.is_some() || cpu_quota.is_some() || cpu_period.is_some() {
                let mut cpu = r.cpu().clone().unwrap_or_default();
                if cpu_shares.is_some() {
                    cpu.set_shares(cpu_shares);
                }
                if cpu_quota.is_some() {
                    cpu.set_quota(cpu_quota);
                }
                if cpu_period.is_some() {
                    cpu.set_period(cpu_period);
                }
                r.set_cpu(Some(cpu));
            }
            engine.update(&id, &r)?;
        }
        Cmd::Features => println!("{}", serde_json::to_string_pretty(&features())?),
        Cmd::List { format, quiet } => {
            let all = engine.list()?;
            if quiet {
                for s in &all {
                    println!("{}", s.state.id);
                }
            } else {
                match format {
                    Format::Json => {
                        let v: Vec<_> = all.iter().map(state_json).collect();
                        println!("{}", serde_json::to_string(&v)?);
                    }
                    Format::Table => {
                        println!(
                            "{:<24} {:<8} {:<10} {:<40} {:<32} OWNER",
                            "ID", "PID", "STATUS", "BUNDLE", "CREATED"
                        );
                        for s in &all {
                            let pid = if s.status == Status::Stopped {
                                0
                            } else {
                                s.state.pid
                            };
                            println!(
                                "{:<24} {:<8} {:<10} {:<40} {:<32} root",
                                s.state.id,
                                pid,
                                s.status,
                                s.state.bundle.display(),
                                s.state.created
                            );
                        }
                    }
                }
            }
        }
        Cmd::Spec { bundle } => {
            let path = bundle.join("config.json");
            if path.exists() {
                bail!("{} exists; remove it first", path.display());
            }
            let mut spec = oci_spec::runtime::Spec::default();
            spec.set_hostname(Some("berth".into()));
            std::fs::write(&path, serde_json::to_vec_pretty(&spec)?)
                .with_context(|| format!("writing {}", path.display()))?;
        }
    }
    Ok(0)
}

type OciCap = oci_spec::runtime::Capability;

fn parse_cap(name: &str) -> Result<OciCap> {
    let n = name.strip_prefix("CAP_").unwrap_or(name);
    OciCap::from_str(n).map_err(|_| anyhow!("unknown capability {name:?}"))
}

/// runc's state JSON; berth adds the recorded exit under "berth".
fn state_json(s: &Snapshot) -> serde_json::Value {
    let pid = if s.status == Status::Stopped {
        0
    } else {
        s.state.pid
    };
    let mut v = serde_json::json!({
        "ociVersion": "1.0.2",
        "id": s.state.id,
        "pid": pid,
        "status": s.status.to_string(),
        "bundle": s.state.bundle,
        "rootfs": s.state.rootfs,
        "created": s.state.created,
        "owner": "",
    });
    if !s.state.annotations.is_empty() {
        v["annotations"] = serde_json::to_value(&s.state.annotations).unwrap_or_default();
    }
    let mut b = serde_json::json!({"monitorPid": s.state.monitor_pid});
    if let Some(e) = &s.exit {
        b["exit"] = serde_json::to_value(e).unwrap_or_default();
    }
    v["berth"] = b;
    v
}

fn parse_signal(s: &str) -> Result<Signal> {
    if let Ok(n) = s.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| anyhow!("unknown signal {s:?}"));
    }
    let up = s.to_ascii_uppercase();
    let name = if up.starts_with("SIG") {
        up
    } else {
        format!("SIG{up}")
    };
    Signal::from_str(&name).map_err(|_| anyhow!("unknown signal {s:?}"))
}

fn parse_duration(s: &str) -> Result<std::time::Duration> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().with_context(|| format!("bad interval {s:?}"))?;
    Ok(match unit {
        "" | "s" => std::time::Duration::from_secs(n),
        "ms" => std::time::Duration::from_millis(n),
        "m" => std::time::Duration::from_secs(n * 60),
        _ => bail!("bad interval unit in {s:?}"),
    })
}

fn features() -> serde_json::Value {
    let mut caps: Vec<String> = caps::all().iter().map(|c| c.to_string()).collect();
    caps.sort();
    serde_json::json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": "1.2.0",
        "hooks": ["prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"],
        "mountOptions": ["async", "atime", "bind", "defaults", "dev", "diratime", "dirsync", "exec", "mand", "noatime", "nodev", "nodiratime", "noexec", "nomand", "norelatime", "nostrictatime", "nosuid", "private", "rbind", "relatime", "remount", "ro", "rprivate", "rro", "rrw", "rshared", "rslave", "runbindable", "rw", "shared", "slave", "strictatime", "suid", "sync", "unbindable"],
        "linux": {
            "namespaces": ["cgroup", "ipc", "mount", "network", "pid", "user", "uts"],
            "capabilities": caps,
            "cgroup": {"v1": true, "v2": true, "systemd": false, "systemdUser": false},
            "seccomp": {
                "enabled": true,
                "actions": ["SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_KILL_THREAD", "SCMP_ACT_LOG", "SCMP_ACT_TRACE", "SCMP_ACT_TRAP"],
                "operators": ["SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT", "SCMP_CMP_LE", "SCMP_CMP_LT", "SCMP_CMP_MASKED_EQ", "SCMP_CMP_NE"],
                "archs": ["SCMP_ARCH_X86", "SCMP_ARCH_X86_64", "SCMP_ARCH_X32", "SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]
            },
            "apparmor": {"enabled": false},
            "selinux": {"enabled": false}
        },
        "annotations": {"io.berth.monitor": "auto|always|never (global --monitor)"}
    })
}

/// Stats in the shape of runc's `events` types (libcontainer/types), which
/// tools parsing `runc events` expect.
fn runc_stats(s: &berth_runtime::cgroups::CgroupStats) -> serde_json::Value {
    let m = &s.memory;
    serde_json::json!({
        "cpu": {
            "usage": {
                "total": s.cpu.usage_total_ns,
                "kernel": s.cpu.usage_system_ns,
                "user": s.cpu.usage_user_ns,
            },
            "throttling": {
                "periods": s.cpu.throttling.periods,
                "throttledPeriods": s.cpu.throttling.throttled_periods,
                "throttledTime": s.cpu.throttling.throttled_time_ns,
            },
        },
        "memory": {
            "cache": m.cache_bytes,
            "usage": {"limit": m.limit_bytes.unwrap_or(u64::MAX), "usage": m.usage_bytes, "max": m.max_usage_bytes, "failcnt": 0},
            "swap": {"limit": m.swap_limit_bytes.unwrap_or(u64::MAX), "usage": m.swap_usage_bytes, "failcnt": 0},
            "raw": {"rss": m.rss_bytes, "working_set": m.working_set_bytes, "oom_kill": m.oom_kills},
        },
        "pids": {"current": s.pids.current, "limit": s.pids.limit.unwrap_or(0)},
        "blkio": {
            "ioServiceBytesRecursive": [
                {"op": "Read", "value": s.blkio.read_bytes},
                {"op": "Write", "value": s.blkio.write_bytes},
            ],
            "ioServicedRecursive": [
                {"op": "Read", "value": s.blkio.read_ops},
                {"op": "Write", "value": s.blkio.write_ops},
            ],
        },
    })
}
