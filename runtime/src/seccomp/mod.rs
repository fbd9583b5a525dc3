//! seccomp: the spec's profile compiled to BPF, and the built-in RuntimeDefault profile.
//!
//! [`compile`] validates a `linux.seccomp` section and turns it into a classic
//! BPF program with libseccomp, in the runtime process, before any fork: every
//! mistake in the profile is reported there, naming the offending field.
//! [`Filter::load`] then installs the ready-made program with one `seccomp(2)`
//! call, which neither allocates nor takes locks, so it can run in a forked
//! child right before `execve`.
//!
//! Semantics follow runc:
//! - `SCMP_ACT_KILL` is `SCMP_ACT_KILL_THREAD`; `SCMP_ACT_ERRNO` and
//!   `SCMP_ACT_TRACE` without `errnoRet` return EPERM.
//! - Rules whose action equals the default action are dropped (libseccomp
//!   refuses them).
//! - Syscall names libseccomp does not know are skipped with a debug message.
//! - When several conditions of one rule compare the same argument, each
//!   condition becomes a rule of its own (so they are OR-ed); otherwise the
//!   conditions form one rule (AND-ed).
//! - Unless the default action lets syscalls through, syscalls numbered above
//!   the largest one the profile names (per architecture) fail with ENOSYS,
//!   so that libc falls back from syscalls newer than the profile (runc's
//!   "ENOSYS stub").
//! - Without `flags`, `SECCOMP_FILTER_FLAG_SPEC_ALLOW` is used, as runc does;
//!   `flags: []` means none.
//! - The filter does not set `no_new_privs`: the caller does that when the
//!   spec's `process.noNewPrivileges` asks for it. Without it, loading needs
//!   CAP_SYS_ADMIN.
//!
//! Not supported: `SCMP_ACT_NOTIFY` (refused with [`SeccompError::Unsupported`]).

mod default;
mod enosys;

use std::fs::File;
use std::io::{self, Read, Seek};

use libseccomp::{
    ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall,
};
use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompFilterFlag,
    LinuxSeccompOperator,
};

/// The kernel's limit on the length of a classic BPF program (BPF_MAXINSNS).
const BPF_MAX_INSTRUCTIONS: usize = 4096;

/// Syscalls have at most six arguments.
const SYSCALL_MAX_ARGS: usize = 6;

/// Above this many syscall names, ask libseccomp for a binary-tree filter
/// (runc's threshold: libseccomp <= 2.5.4 misbehaves with the tree and no rules).
const BINARY_TREE_THRESHOLD: usize = 32;

/// The field path of the seccomp section in the OCI spec.
const ROOT: &str = "linux.seccomp";

/// This host's seccomp architecture (`None` where berth does not know it).
const NATIVE_ARCH: Option<Arch> = if cfg!(target_arch = "x86_64") {
    Some(Arch::ScmpArchX86_64)
} else if cfg!(target_arch = "x86") {
    Some(Arch::ScmpArchX86)
} else if cfg!(target_arch = "aarch64") {
    Some(Arch::ScmpArchAarch64)
} else if cfg!(target_arch = "arm") {
    Some(Arch::ScmpArchArm)
} else if cfg!(target_arch = "riscv64") {
    Some(Arch::ScmpArchRiscv64)
} else if cfg!(target_arch = "s390x") {
    Some(Arch::ScmpArchS390x)
} else if cfg!(target_arch = "loongarch64") {
    Some(Arch::ScmpArchLoongarch64)
} else if cfg!(all(target_arch = "powerpc64", target_endian = "little")) {
    Some(Arch::ScmpArchPpc64le)
} else if cfg!(target_arch = "powerpc64") {
    Some(Arch::ScmpArchPpc64)
} else {
    None
};

/// Errors from validating, compiling or loading a seccomp profile.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// A field of the profile holds a value that cannot be used.
    #[error("{field}: {reason}")]
    InvalidField {
        /// Path of the field, e.g. `linux.seccomp.syscalls[3].args[0].index`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The profile asks for a valid feature that berth does not implement yet.
    #[error("{field}: {feature} is not supported yet")]
    Unsupported {
        /// Path of the field asking for the feature.
        field: String,
        /// The feature, e.g. `SCMP_ACT_NOTIFY`.
        feature: String,
    },

    /// A profile given as JSON could not be decoded (see [`parse_profile`]).
    #[error("{origin}: invalid seccomp profile: {source}")]
    Json {
        /// Where the JSON came from (file name or field path).
        origin: String,
        /// The decoding error.
        #[source]
        source: serde_json::Error,
    },

    /// libseccomp refused part of the profile.
    #[error("{field}: libseccomp refused {what}: {source}")]
    Libseccomp {
        /// Path of the field being compiled.
        field: String,
        /// What was being done, e.g. `the rule for syscall "read"`.
        what: String,
        /// libseccomp's error.
        #[source]
        source: libseccomp::error::SeccompError,
    },

    /// Getting the compiled BPF program out of libseccomp failed.
    #[error("exporting the compiled seccomp program: {step}: {source}")]
    Export {
        /// The step that failed.
        step: &'static str,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// The compiled program is longer than the kernel accepts.
    #[error(
        "{ROOT}: the compiled seccomp program has {instructions} BPF instructions, \
         the kernel accepts at most {BPF_MAX_INSTRUCTIONS}"
    )]
    TooLarge {
        /// Number of BPF instructions of the compiled program.
        instructions: usize,
    },

    /// The kernel refused the filter.
    #[error("loading the seccomp filter: {source}{hint}")]
    Load {
        /// The error of `seccomp(2)`.
        #[source]
        source: io::Error,
        /// An explanation of the likely cause, possibly empty.
        hint: &'static str,
    },

    /// With `SECCOMP_FILTER_FLAG_TSYNC`, another thread could not be synchronised.
    #[error(
        "loading the seccomp filter with SECCOMP_FILTER_FLAG_TSYNC: \
         thread {tid} could not be synchronised"
    )]
    TsyncFailed {
        /// The thread that could not take the filter.
        tid: i64,
    },
}

/// The built-in profile, equal in effect to containerd's `RuntimeDefault`
/// (`contrib/seccomp/seccomp_default.go`, `DefaultProfile`) on this host's
/// architecture and kernel.
///
/// `capabilities` is the container's bounding set (e.g. `"CAP_SYS_ADMIN"`):
/// each known capability adds the syscalls containerd adds for it, in the
/// order given; without `CAP_SYS_ADMIN`, `clone` is limited to flags without
/// namespace flags and `clone3` fails with ENOSYS.
pub fn default_profile(capabilities: &[String]) -> LinuxSeccomp {
    default::profile(capabilities)
}

/// Decodes a seccomp profile (the JSON of a `linux.seccomp` section, or a
/// kubelet `Localhost` profile file) and reports unknown enumeration values by
/// field, e.g. `linux.seccomp.syscalls[3].action: unknown action "SCMP_ACT_FOO"`.
///
/// `origin` prefixes the field paths: pass `"linux.seccomp"` for a spec
/// section or a file name for a profile file.
pub fn parse_profile(json: &[u8], origin: &str) -> Result<LinuxSeccomp, SeccompError> {
    let json_error = |source| SeccompError::Json {
        origin: origin.to_owned(),
        source,
    };
    let value: serde_json::Value = serde_json::from_slice(json).map_err(json_error)?;
    check_enums(&value, origin)?;
    serde_json::from_value(value).map_err(json_error)
}

/// Checks the enumeration-valued fields of a JSON profile, so that an unknown
/// value is reported with its path rather than as a bare serde error.
fn check_enums(value: &serde_json::Value, origin: &str) -> Result<(), SeccompError> {
    use std::str::FromStr;

    fn check<T: FromStr>(
        value: Option<&serde_json::Value>,
        field: impl FnOnce() -> String,
        kind: &str,
    ) -> Result<(), SeccompError> {
        match value {
            None => Ok(()),
            Some(serde_json::Value::String(s)) if T::from_str(s).is_ok() => Ok(()),
            Some(serde_json::Value::String(s)) => Err(SeccompError::InvalidField {
                field: field(),
                reason: format!("unknown {kind} {s:?}"),
            }),
            Some(other) => Err(SeccompError::InvalidField {
                field: field(),
                reason: format!("expected a string, found {other}"),
            }),
        }
    }

    fn array(
        value: Option<&serde_json::Value>,
        field: impl FnOnce() -> String,
    ) -> Result<&[serde_json::Value], SeccompError> {
        match value {
            None | Some(serde_json::Value::Null) => Ok(&[]),
            Some(serde_json::Value::Array(items)) => Ok(items),
            Some(other) => Err(SeccompError::InvalidField {
                field: field(),
                reason: format!("expected an array, found {other}"),
            }),
        }
    }

    let serde_json::Value::Object(root) = value else {
        return Err(SeccompError::InvalidField {
            field: origin.to_owned(),
            reason: "expected a JSON object".to_owned(),
        });
    };
    check::<LinuxSeccompAction>(
        root.get("defaultAction"),
        || format!("{origin}.defaultAction"),
        "action",
    )?;
    let arches = array(root.get("architectures"), || {
        format!("{origin}.architectures")
    })?;
    for (i, arch) in arches.iter().enumerate() {
        check::<Arch>(
            Some(arch),
            || format!("{origin}.architectures[{i}]"),
            "architecture",
        )?;
    }
    for (i, flag) in array(root.get("flags"), || format!("{origin}.flags"))?
        .iter()
        .enumerate()
    {
        check::<LinuxSeccompFilterFlag>(Some(flag), || format!("{origin}.flags[{i}]"), "flag")?;
    }
    let syscalls = array(root.get("syscalls"), || format!("{origin}.syscalls"))?;
    for (i, syscall) in syscalls.iter().enumerate() {
        check::<LinuxSeccompAction>(
            syscall.get("action"),
            || format!("{origin}.syscalls[{i}].action"),
            "action",
        )?;
        let args = array(syscall.get("args"), || {
            format!("{origin}.syscalls[{i}].args")
        })?;
        for (j, arg) in args.iter().enumerate() {
            check::<LinuxSeccompOperator>(
                arg.get("op"),
                || format!("{origin}.syscalls[{i}].args[{j}].op"),
                "operator",
            )?;
        }
    }
    Ok(())
}

/// A compiled seccomp filter: a classic BPF program and the `seccomp(2)`
/// flags to install it with.
#[derive(Clone)]
pub struct Filter {
    program: Vec<libc::sock_filter>,
    flags: libc::c_ulong,
    /// SPEC_ALLOW was added by default (no `flags` in the profile): drop it
    /// if the kernel refuses it, as runc only sets it where supported.
    implicit_spec_allow: bool,
}

impl std::fmt::Debug for Filter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Filter")
            .field("instructions", &self.program.len())
            .field("flags", &self.flags)
            .finish()
    }
}

impl Filter {
    /// Number of BPF instructions of the program.
    pub fn instructions(&self) -> usize {
        self.program.len()
    }

    /// Installs the filter in the calling thread (all threads with
    /// `SECCOMP_FILTER_FLAG_TSYNC`).
    ///
    /// Call it in the container init right before `execve`, after setuid and
    /// capabilities. It makes one or two `seccomp(2)` calls and neither
    /// allocates nor locks, so it is safe in a forked child of any process.
    /// Unless `no_new_privs` was set, the caller needs CAP_SYS_ADMIN.
    pub fn load(&self) -> Result<(), SeccompError> {
        match self.install(self.flags) {
            Err(SeccompError::Load { source, .. })
                if self.implicit_spec_allow && source.raw_os_error() == Some(libc::EINVAL) =>
            {
                self.install(self.flags & !libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW)
            }
            result => result,
        }
    }

    fn install(&self, flags: libc::c_ulong) -> Result<(), SeccompError> {
        // compile() guarantees 1..=BPF_MAX_INSTRUCTIONS instructions.
        let len = u16::try_from(self.program.len()).map_err(|_| SeccompError::TooLarge {
            instructions: self.program.len(),
        })?;
        let prog = libc::sock_fprog {
            len,
            filter: self.program.as_ptr().cast_mut(),
        };
        // SAFETY: `prog` points to `len` initialised instructions owned by
        // `self`, alive for the duration of the call; the kernel copies the
        // program and does not write through the pointer.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                flags,
                &raw const prog,
            )
        };
        match ret {
            0 => Ok(()),
            tid if tid > 0 => Err(SeccompError::TsyncFailed { tid }),
            _ => {
                let source = io::Error::last_os_error();
                let hint = match source.raw_os_error() {
                    Some(libc::EACCES) => {
                        " (without no_new_privs, installing a seccomp filter needs CAP_SYS_ADMIN)"
                    }
                    Some(libc::EINVAL) => {
                        " (the kernel does not support one of the filter flags or actions)"
                    }
                    _ => "",
                };
                Err(SeccompError::Load { source, hint })
            }
        }
    }
}

/// Validates `spec` and compiles it to a BPF program for this host.
///
/// Errors name the offending field, e.g.
/// `linux.seccomp.syscalls[3].args[0].index: 6 is out of range (0 to 5)`.
pub fn compile(spec: &LinuxSeccomp) -> Result<Filter, SeccompError> {
    let default_action = action(
        spec.default_action(),
        spec.default_errno_ret(),
        || format!("{ROOT}.defaultAction"),
        || format!("{ROOT}.defaultErrnoRet"),
    )?;

    let (flags, implicit_spec_allow) = match spec.flags() {
        None => (libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW, true),
        Some(list) => {
            let mut flags = 0;
            for flag in list {
                flags |= match flag {
                    LinuxSeccompFilterFlag::SeccompFilterFlagTsync => {
                        libc::SECCOMP_FILTER_FLAG_TSYNC
                    }
                    LinuxSeccompFilterFlag::SeccompFilterFlagLog => libc::SECCOMP_FILTER_FLAG_LOG,
                    LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => {
                        libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW
                    }
                    // Only meaningful with a notification listener, which is
                    // refused; the kernel rejects it without one.
                    LinuxSeccompFilterFlag::SeccompFilterFlagWaitKillableRecv => {
                        tracing::debug!(
                            "seccomp flag SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV ignored: \
                             no SCMP_ACT_NOTIFY rule"
                        );
                        0
                    }
                };
            }
            (flags, false)
        }
    };

    let mut ctx =
        ScmpFilterContext::new(default_action).map_err(|source| SeccompError::Libseccomp {
            field: format!("{ROOT}.defaultAction"),
            what: format!("the default action {}", spec.default_action()),
            source,
        })?;

    for (i, arch) in spec.architectures().iter().flatten().enumerate() {
        ctx.add_arch(scmp_arch(*arch))
            .map_err(|source| SeccompError::Libseccomp {
                field: format!("{ROOT}.architectures[{i}]"),
                what: format!("architecture {arch}"),
                source,
            })?;
    }

    let syscalls = spec.syscalls().as_deref().unwrap_or_default();
    let names: usize = syscalls.iter().map(|s| s.names().len()).sum();
    if names > BINARY_TREE_THRESHOLD {
        // Not fatal: older libseccomp versions lack the optimisation.
        let _ = ctx.set_ctl_optimize(2).inspect_err(|err| {
            tracing::debug!("seccomp binary tree optimization not available: {err}");
        });
    }

    for (i, syscall) in syscalls.iter().enumerate() {
        let field = || format!("{ROOT}.syscalls[{i}]");
        let act = action(
            syscall.action(),
            syscall.errno_ret(),
            || format!("{}.action", field()),
            || format!("{}.errnoRet", field()),
        )?;
        if syscall.names().is_empty() {
            return Err(SeccompError::InvalidField {
                field: format!("{}.names", field()),
                reason: "must name at least one syscall".to_owned(),
            });
        }
        let args = syscall.args().as_deref().unwrap_or_default();
        let conditions = conditions(args, &field)?;
        // Several conditions on one argument cannot share a rule in
        // libseccomp: like runc, give each condition its own rule.
        let mut per_arg = [0usize; SYSCALL_MAX_ARGS];
        for arg in args {
            if let Some(n) = per_arg.get_mut(arg.index()) {
                *n += 1;
            }
        }
        let split = per_arg.iter().any(|&n| n > 1);

        for (j, name) in syscall.names().iter().enumerate() {
            if name.is_empty() || name.contains('\0') {
                return Err(SeccompError::InvalidField {
                    field: format!("{}.names[{j}]", field()),
                    reason: format!("{name:?} is not a syscall name"),
                });
            }
            if act == default_action {
                // Redundant with the default action; libseccomp would refuse it.
                continue;
            }
            let Ok(nr) = ScmpSyscall::from_name(name) else {
                tracing::debug!(syscall = %name, "unknown seccomp syscall ignored");
                continue;
            };
            let result = if split {
                conditions
                    .iter()
                    .try_for_each(|c| ctx.add_rule_conditional(act, nr, &[*c]).map(drop))
            } else {
                ctx.add_rule_conditional(act, nr, &conditions).map(drop)
            };
            result.map_err(|source| SeccompError::Libseccomp {
                field: format!("{}.names[{j}]", field()),
                what: format!("the rule for syscall {name:?}"),
                source,
            })?;
        }
    }

    // Syscalls newer than the profile get ENOSYS rather than the default
    // action, as with runc.
    let mut program = enosys::stub(spec, default_action)?;
    let compiled = export(&ctx)?;
    if compiled.is_empty() {
        return Err(SeccompError::Export {
            step: "decoding the program",
            source: io::Error::new(io::ErrorKind::InvalidData, "libseccomp produced no program"),
        });
    }
    program.extend(compiled);
    if program.len() > BPF_MAX_INSTRUCTIONS {
        return Err(SeccompError::TooLarge {
            instructions: program.len(),
        });
    }
    Ok(Filter {
        program,
        flags,
        implicit_spec_allow,
    })
}

/// The libseccomp action for a spec action and its `errnoRet`.
fn action(
    action: LinuxSeccompAction,
    errno_ret: Option<u32>,
    action_field: impl FnOnce() -> String,
    errno_field: impl FnOnce() -> String,
) -> Result<ScmpAction, SeccompError> {
    let errno = match errno_ret {
        None => None,
        Some(_)
            if !matches!(
                action,
                LinuxSeccompAction::ScmpActErrno | LinuxSeccompAction::ScmpActTrace
            ) =>
        {
            return Err(SeccompError::InvalidField {
                field: errno_field(),
                reason: format!(
                    "only SCMP_ACT_ERRNO and SCMP_ACT_TRACE take an errno, not {action}"
                ),
            });
        }
        Some(n) => Some(u16::try_from(n).map_err(|_| SeccompError::InvalidField {
            field: errno_field(),
            reason: format!("{n} does not fit the 16 bits of a seccomp return value"),
        })?),
    };
    const EPERM: u16 = libc::EPERM as u16;
    Ok(match action {
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            ScmpAction::KillThread
        }
        LinuxSeccompAction::ScmpActKillProcess => ScmpAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => ScmpAction::Trap,
        LinuxSeccompAction::ScmpActErrno => ScmpAction::Errno(i32::from(errno.unwrap_or(EPERM))),
        LinuxSeccompAction::ScmpActTrace => ScmpAction::Trace(errno.unwrap_or(EPERM)),
        LinuxSeccompAction::ScmpActLog => ScmpAction::Log,
        LinuxSeccompAction::ScmpActAllow => ScmpAction::Allow,
        LinuxSeccompAction::ScmpActNotify => {
            return Err(SeccompError::Unsupported {
                field: action_field(),
                feature: "SCMP_ACT_NOTIFY".to_owned(),
            });
        }
    })
}

/// Validates a rule's `args` and converts them to libseccomp conditions.
fn conditions(
    args: &[LinuxSeccompArg],
    field: &impl Fn() -> String,
) -> Result<Vec<ScmpArgCompare>, SeccompError> {
    args.iter()
        .enumerate()
        .map(|(j, arg)| {
            let index = u32::try_from(arg.index())
                .ok()
                .filter(|&i| (i as usize) < SYSCALL_MAX_ARGS)
                .ok_or_else(|| SeccompError::InvalidField {
                    field: format!("{}.args[{j}].index", field()),
                    reason: format!(
                        "{} is out of range (0 to {})",
                        arg.index(),
                        SYSCALL_MAX_ARGS - 1
                    ),
                })?;
            let value = arg.value();
            let value_two = arg.value_two().unwrap_or(0);
            Ok(match arg.op() {
                // OCI: `value` is the mask, `valueTwo` the expected value.
                LinuxSeccompOperator::ScmpCmpMaskedEq => {
                    ScmpArgCompare::new(index, ScmpCompareOp::MaskedEqual(value), value_two)
                }
                op => ScmpArgCompare::new(index, scmp_op(op), value),
            })
        })
        .collect()
}

fn scmp_op(op: LinuxSeccompOperator) -> ScmpCompareOp {
    match op {
        LinuxSeccompOperator::ScmpCmpNe => ScmpCompareOp::NotEqual,
        LinuxSeccompOperator::ScmpCmpLt => ScmpCompareOp::Less,
        LinuxSeccompOperator::ScmpCmpLe => ScmpCompareOp::LessOrEqual,
        LinuxSeccompOperator::ScmpCmpEq => ScmpCompareOp::Equal,
        LinuxSeccompOperator::ScmpCmpGe => ScmpCompareOp::GreaterEqual,
        LinuxSeccompOperator::ScmpCmpGt => ScmpCompareOp::Greater,
        LinuxSeccompOperator::ScmpCmpMaskedEq => ScmpCompareOp::MaskedEqual(0),
    }
}

fn scmp_arch(arch: Arch) -> ScmpArch {
    match arch {
        Arch::ScmpArchNative => ScmpArch::Native,
        Arch::ScmpArchX86 => ScmpArch::X86,
        Arch::ScmpArchX86_64 => ScmpArch::X8664,
        Arch::ScmpArchX32 => ScmpArch::X32,
        Arch::ScmpArchArm => ScmpArch::Arm,
        Arch::ScmpArchAarch64 => ScmpArch::Aarch64,
        Arch::ScmpArchMips => ScmpArch::Mips,
        Arch::ScmpArchMips64 => ScmpArch::Mips64,
        Arch::ScmpArchMips64n32 => ScmpArch::Mips64N32,
        Arch::ScmpArchMipsel => ScmpArch::Mipsel,
        Arch::ScmpArchMipsel64 => ScmpArch::Mipsel64,
        Arch::ScmpArchMipsel64n32 => ScmpArch::Mipsel64N32,
        Arch::ScmpArchPpc => ScmpArch::Ppc,
        Arch::ScmpArchPpc64 => ScmpArch::Ppc64,
        Arch::ScmpArchPpc64le => ScmpArch::Ppc64Le,
        Arch::ScmpArchS390 => ScmpArch::S390,
        Arch::ScmpArchS390x => ScmpArch::S390X,
        Arch::ScmpArchParisc => ScmpArch::Parisc,
        Arch::ScmpArchParisc64 => ScmpArch::Parisc64,
        Arch::ScmpArchRiscv64 => ScmpArch::Riscv64,
        Arch::ScmpArchLoongarch64 => ScmpArch::Loongarch64,
        Arch::ScmpArchM68k => ScmpArch::M68k,
        Arch::ScmpArchSh => ScmpArch::Sh,
        Arch::ScmpArchSheb => ScmpArch::Sheb,
    }
}

/// Gets the BPF program out of libseccomp (through a memfd: libseccomp 2.5
/// only exports to a file descriptor).
fn export(ctx: &ScmpFilterContext) -> Result<Vec<libc::sock_filter>, SeccompError> {
    let fd =
        nix::sys::memfd::memfd_create(c"berth-seccomp", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
            .map_err(|errno| SeccompError::Export {
                step: "memfd_create",
                source: errno.into(),
            })?;
    let mut file = File::from(fd);
    ctx.export_bpf(&file)
        .map_err(|source| SeccompError::Libseccomp {
            field: ROOT.to_owned(),
            what: "exporting the BPF program".to_owned(),
            source,
        })?;
    let mut bytes = Vec::new();
    file.rewind()
        .and_then(|()| file.read_to_end(&mut bytes))
        .map_err(|source| SeccompError::Export {
            step: "reading the program back",
            source,
        })?;
    let chunks = bytes.chunks_exact(8);
    if !chunks.remainder().is_empty() {
        return Err(SeccompError::Export {
            step: "decoding the program",
            source: io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{} bytes is not a whole number of instructions",
                    bytes.len()
                ),
            ),
        });
    }
    Ok(chunks
        .map(|c| libc::sock_filter {
            code: u16::from_ne_bytes([c[0], c[1]]),
            jt: c[2],
            jf: c[3],
            k: u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
        })
        .collect())
}

#[cfg(test)]
mod tests;
