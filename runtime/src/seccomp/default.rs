//! The built-in `RuntimeDefault` profile, kept as Rust data.
//!
//! The content follows containerd's `contrib/seccomp/seccomp_default.go`
//! (`DefaultProfile`): default action `SCMP_ACT_ERRNO` (EPERM), the
//! host-architecture list, one big allow list, argument-filtered rules for
//! `socket`, `personality` and `clone`, and extra syscalls for the
//! capabilities in the container's bounding set. Rules are emitted in the
//! same order as containerd emits them, capability rules following the order
//! of the capability list.

use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompArgBuilder,
    LinuxSeccompOperator, LinuxSyscall,
};

/// One argument comparison of a [`Rule`].
struct Cmp {
    index: usize,
    value: u64,
    value_two: u64,
    op: LinuxSeccompOperator,
}

/// One entry of the profile's `syscalls` list.
struct Rule {
    names: &'static [&'static str],
    action: LinuxSeccompAction,
    errno_ret: Option<u32>,
    args: &'static [Cmp],
}

impl Rule {
    const fn allow(names: &'static [&'static str]) -> Self {
        Rule {
            names,
            action: LinuxSeccompAction::ScmpActAllow,
            errno_ret: None,
            args: &[],
        }
    }

    const fn allow_if(names: &'static [&'static str], args: &'static [Cmp]) -> Self {
        Rule {
            names,
            action: LinuxSeccompAction::ScmpActAllow,
            errno_ret: None,
            args,
        }
    }

    /// The rule as spec data. `None` only if oci-spec's builder refuses an
    /// argument, which its defaults make impossible; the rule is then left
    /// out, which for these allow rules fails closed.
    fn to_spec(&self) -> Option<LinuxSyscall> {
        let mut syscall = LinuxSyscall::default();
        syscall.set_names(self.names.iter().map(|n| (*n).to_owned()).collect());
        syscall.set_action(self.action);
        syscall.set_errno_ret(self.errno_ret);
        if !self.args.is_empty() {
            let args = self
                .args
                .iter()
                .map(|c| {
                    let builder = LinuxSeccompArgBuilder::default()
                        .index(c.index)
                        .value(c.value)
                        .op(c.op);
                    let builder = if c.value_two == 0 {
                        builder
                    } else {
                        builder.value_two(c.value_two)
                    };
                    builder.build().ok()
                })
                .collect::<Option<Vec<LinuxSeccompArg>>>()?;
            syscall.set_args(Some(args));
        }
        Some(syscall)
    }
}

const fn arg_eq(index: usize, value: u64) -> Cmp {
    Cmp {
        index,
        value,
        value_two: 0,
        op: LinuxSeccompOperator::ScmpCmpEq,
    }
}

/// Syscalls every container may use.
const ALLOWED: &[&str] = &[
    "accept",
    "accept4",
    "access",
    "adjtimex",
    "alarm",
    "bind",
    "brk",
    "cachestat",
    "capget",
    "capset",
    "chdir",
    "chmod",
    "chown",
    "chown32",
    "clock_adjtime",
    "clock_adjtime64",
    "clock_getres",
    "clock_getres_time64",
    "clock_gettime",
    "clock_gettime64",
    "clock_nanosleep",
    "clock_nanosleep_time64",
    "close",
    "close_range",
    "connect",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_ctl_old",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "epoll_wait_old",
    "eventfd",
    "eventfd2",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fadvise64_64",
    "fallocate",
    "fanotify_mark",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchmodat2",
    "fchown",
    "fchown32",
    "fchownat",
    "fcntl",
    "fcntl64",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fork",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstat64",
    "fstatat64",
    "fstatfs",
    "fstatfs64",
    "fsync",
    "ftruncate",
    "ftruncate64",
    "futex",
    "futex_requeue",
    "futex_time64",
    "futex_wait",
    "futex_waitv",
    "futex_wake",
    "futimesat",
    "getcpu",
    "getcwd",
    "getdents",
    "getdents64",
    "getegid",
    "getegid32",
    "geteuid",
    "geteuid32",
    "getgid",
    "getgid32",
    "getgroups",
    "getgroups32",
    "getitimer",
    "getpeername",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getresgid",
    "getresgid32",
    "getresuid",
    "getresuid32",
    "getrlimit",
    "get_robust_list",
    "getrusage",
    "getsid",
    "getsockname",
    "getsockopt",
    "get_thread_area",
    "gettid",
    "gettimeofday",
    "getuid",
    "getuid32",
    "getxattr",
    "getxattrat",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "io_cancel",
    "ioctl",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "io_pgetevents_time64",
    "ioprio_get",
    "ioprio_set",
    "io_setup",
    "io_submit",
    "ipc",
    "kill",
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    "lchown",
    "lchown32",
    "lgetxattr",
    "link",
    "linkat",
    "listen",
    "listmount",
    "listxattr",
    "listxattrat",
    "llistxattr",
    "_llseek",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "lsm_get_self_attr",
    "lsm_list_modules",
    "lsm_set_self_attr",
    "lstat",
    "lstat64",
    "madvise",
    "membarrier",
    "memfd_create",
    "memfd_secret",
    "mincore",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "mlock",
    "mlock2",
    "mlockall",
    "map_shadow_stack",
    "mmap",
    "mmap2",
    "mprotect",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedreceive_time64",
    "mq_timedsend",
    "mq_timedsend_time64",
    "mq_unlink",
    "mremap",
    "mseal",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "name_to_handle_at",
    "nanosleep",
    "newfstatat",
    "_newselect",
    "open",
    "openat",
    "openat2",
    "pause",
    "pidfd_open",
    "pidfd_send_signal",
    "pipe",
    "pipe2",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "poll",
    "ppoll",
    "ppoll_time64",
    "prctl",
    "pread64",
    "preadv",
    "preadv2",
    "prlimit64",
    "process_mrelease",
    "pselect6",
    "pselect6_time64",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "recv",
    "recvfrom",
    "recvmmsg",
    "recvmmsg_time64",
    "recvmsg",
    "remap_file_pages",
    "removexattr",
    "removexattrat",
    "rename",
    "renameat",
    "renameat2",
    "restart_syscall",
    "rmdir",
    "rseq",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_sigtimedwait_time64",
    "rt_tgsigqueueinfo",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_rr_get_interval_time64",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "seccomp",
    "select",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "semtimedop_time64",
    "send",
    "sendfile",
    "sendfile64",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "setfsgid",
    "setfsgid32",
    "setfsuid",
    "setfsuid32",
    "setgid",
    "setgid32",
    "setgroups",
    "setgroups32",
    "setitimer",
    "setpgid",
    "setpriority",
    "setregid",
    "setregid32",
    "setresgid",
    "setresgid32",
    "setresuid",
    "setresuid32",
    "setreuid",
    "setreuid32",
    "setrlimit",
    "set_robust_list",
    "setsid",
    "setsockopt",
    "set_thread_area",
    "set_tid_address",
    "setuid",
    "setuid32",
    "setxattr",
    "setxattrat",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "shutdown",
    "sigaltstack",
    "signalfd",
    "signalfd4",
    "sigprocmask",
    "sigreturn",
    "socketcall",
    "socketpair",
    "splice",
    "stat",
    "stat64",
    "statfs",
    "statfs64",
    "statmount",
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "sysinfo",
    "tee",
    "tgkill",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_gettime64",
    "timer_settime",
    "timer_settime64",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_gettime64",
    "timerfd_settime",
    "timerfd_settime64",
    "times",
    "tkill",
    "truncate",
    "truncate64",
    "ugetrlimit",
    "umask",
    "uname",
    "unlink",
    "unlinkat",
    "uretprobe",
    "utime",
    "utimensat",
    "utimensat_time64",
    "utimes",
    "vfork",
    "vmsplice",
    "wait4",
    "waitid",
    "waitpid",
    "write",
    "writev",
];

// Address families refused by the default profile (linux/socket.h).
const AF_ALG: u64 = 38;
const AF_VSOCK: u64 = 40;

/// `socket(2)` for every address family except AF_ALG and AF_VSOCK. Three
/// single-condition rules (OR-ed) rather than one rule with two `!=`
/// conditions on the same argument, which would be split into OR-ed rules and
/// allow everything.
const SOCKET: [Rule; 3] = [
    Rule::allow_if(
        &["socket"],
        &[Cmp {
            index: 0,
            value: AF_ALG,
            value_two: 0,
            op: LinuxSeccompOperator::ScmpCmpLt,
        }],
    ),
    Rule::allow_if(&["socket"], &[arg_eq(0, AF_ALG + 1)]),
    Rule::allow_if(
        &["socket"],
        &[Cmp {
            index: 0,
            value: AF_VSOCK,
            value_two: 0,
            op: LinuxSeccompOperator::ScmpCmpGt,
        }],
    ),
];

/// `personality(2)` only for PER_LINUX, PER_LINUX32, UNAME26, UNAME26|PER_LINUX32
/// and the 0xffffffff query.
const PERSONALITY: [Rule; 5] = [
    Rule::allow_if(&["personality"], &[arg_eq(0, 0x0)]),
    Rule::allow_if(&["personality"], &[arg_eq(0, 0x0008)]),
    Rule::allow_if(&["personality"], &[arg_eq(0, 0x20000)]),
    Rule::allow_if(&["personality"], &[arg_eq(0, 0x20008)]),
    Rule::allow_if(&["personality"], &[arg_eq(0, 0xffff_ffff)]),
];

/// Allowed when the kernel is 4.8 or newer (ptrace can no longer be used to
/// bypass seccomp).
const KERNEL_4_8: Rule = Rule::allow(&["process_vm_readv", "process_vm_writev", "ptrace"]);

/// Architecture-specific syscalls.
#[cfg(target_arch = "x86_64")]
const ARCH_SPECIFIC: Option<Rule> = Some(Rule::allow(&["arch_prctl", "modify_ldt"]));
#[cfg(target_arch = "x86")]
const ARCH_SPECIFIC: Option<Rule> = Some(Rule::allow(&["modify_ldt"]));
#[cfg(any(target_arch = "arm", target_arch = "aarch64"))]
const ARCH_SPECIFIC: Option<Rule> = Some(Rule::allow(&[
    "arm_fadvise64_64",
    "arm_sync_file_range",
    "sync_file_range2",
    "breakpoint",
    "cacheflush",
    "set_tls",
]));
#[cfg(all(target_arch = "powerpc64", target_endian = "little"))]
const ARCH_SPECIFIC: Option<Rule> = Some(Rule::allow(&["sync_file_range2", "swapcontext"]));
#[cfg(target_arch = "s390x")]
const ARCH_SPECIFIC: Option<Rule> = Some(Rule::allow(&[
    "s390_pci_mmio_read",
    "s390_pci_mmio_write",
    "s390_runtime_instr",
]));
#[cfg(target_arch = "riscv64")]
const ARCH_SPECIFIC: Option<Rule> = Some(Rule::allow(&["riscv_flush_icache", "riscv_hwprobe"]));
#[cfg(not(any(
    target_arch = "x86_64",
    target_arch = "x86",
    target_arch = "arm",
    target_arch = "aarch64",
    all(target_arch = "powerpc64", target_endian = "little"),
    target_arch = "s390x",
    target_arch = "riscv64",
)))]
const ARCH_SPECIFIC: Option<Rule> = None;

/// The seccomp architectures of the host (containerd's `arches()`).
#[cfg(target_arch = "x86_64")]
const ARCHES: &[Arch] = &[Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32];
#[cfg(target_arch = "aarch64")]
const ARCHES: &[Arch] = &[Arch::ScmpArchArm, Arch::ScmpArchAarch64];
#[cfg(all(target_arch = "mips64", target_endian = "big"))]
const ARCHES: &[Arch] = &[
    Arch::ScmpArchMips,
    Arch::ScmpArchMips64,
    Arch::ScmpArchMips64n32,
];
#[cfg(all(target_arch = "mips64", target_endian = "little"))]
const ARCHES: &[Arch] = &[
    Arch::ScmpArchMipsel,
    Arch::ScmpArchMipsel64,
    Arch::ScmpArchMipsel64n32,
];
#[cfg(target_arch = "s390x")]
const ARCHES: &[Arch] = &[Arch::ScmpArchS390, Arch::ScmpArchS390x];
#[cfg(target_arch = "riscv64")]
const ARCHES: &[Arch] = &[Arch::ScmpArchRiscv64];
#[cfg(target_arch = "loongarch64")]
const ARCHES: &[Arch] = &[Arch::ScmpArchLoongarch64];
#[cfg(not(any(
    target_arch = "x86_64",
    target_arch = "aarch64",
    target_arch = "mips64",
    target_arch = "s390x",
    target_arch = "riscv64",
    target_arch = "loongarch64",
)))]
const ARCHES: &[Arch] = &[];

/// Extra syscalls per capability of the bounding set. CAP_SYS_ADMIN also
/// lifts the namespace restriction on `clone` and the ENOSYS on `clone3`.
const BY_CAPABILITY: &[(&str, Rule)] = &[
    ("CAP_DAC_READ_SEARCH", Rule::allow(&["open_by_handle_at"])),
    (
        CAP_SYS_ADMIN,
        Rule::allow(&[
            "bpf",
            "clone",
            "clone3",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "mount",
            "mount_setattr",
            "move_mount",
            "open_tree",
            "perf_event_open",
            "quotactl",
            "quotactl_fd",
            "setdomainname",
            "sethostname",
            "setns",
            "syslog",
            "umount",
            "umount2",
            "unshare",
        ]),
    ),
    ("CAP_SYS_BOOT", Rule::allow(&["reboot"])),
    ("CAP_SYS_CHROOT", Rule::allow(&["chroot"])),
    (
        "CAP_SYS_MODULE",
        Rule::allow(&["delete_module", "init_module", "finit_module"]),
    ),
    ("CAP_SYS_PACCT", Rule::allow(&["acct"])),
    (
        "CAP_SYS_PTRACE",
        Rule::allow(&[
            "kcmp",
            "pidfd_getfd",
            "process_madvise",
            "process_vm_readv",
            "process_vm_writev",
            "ptrace",
        ]),
    ),
    ("CAP_SYS_RAWIO", Rule::allow(&["iopl", "ioperm"])),
    (
        "CAP_SYS_TIME",
        Rule::allow(&["settimeofday", "stime", "clock_settime", "clock_settime64"]),
    ),
    ("CAP_SYS_TTY_CONFIG", Rule::allow(&["vhangup"])),
    (
        "CAP_SYS_NICE",
        Rule::allow(&[
            "get_mempolicy",
            "mbind",
            "set_mempolicy",
            "set_mempolicy_home_node",
        ]),
    ),
    ("CAP_SYSLOG", Rule::allow(&["syslog"])),
    ("CAP_BPF", Rule::allow(&["bpf"])),
    ("CAP_PERFMON", Rule::allow(&["perf_event_open"])),
];

const CAP_SYS_ADMIN: &str = "CAP_SYS_ADMIN";

/// The namespace flags `clone` may not carry without CAP_SYS_ADMIN.
const CLONE_NAMESPACE_FLAGS: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWCGROUP) as u64;

/// The argument of `clone` holding the flags (s390 swaps the first two).
#[cfg(target_arch = "s390x")]
const CLONE_FLAGS_ARG: usize = 1;
#[cfg(not(target_arch = "s390x"))]
const CLONE_FLAGS_ARG: usize = 0;

/// Without CAP_SYS_ADMIN: `clone` without namespace flags only.
const CLONE_WITHOUT_NAMESPACES: Rule = Rule::allow_if(
    &["clone"],
    &[Cmp {
        index: CLONE_FLAGS_ARG,
        value: CLONE_NAMESPACE_FLAGS,
        value_two: 0,
        op: LinuxSeccompOperator::ScmpCmpMaskedEq,
    }],
);

/// Without CAP_SYS_ADMIN: `clone3` fails with ENOSYS so that libc falls back
/// to `clone`, whose flags can be inspected.
const CLONE3_ENOSYS: Rule = Rule {
    names: &["clone3"],
    action: LinuxSeccompAction::ScmpActErrno,
    errno_ret: Some(libc::ENOSYS as u32),
    args: &[],
};

/// The built-in profile for a container whose bounding set is
/// `capabilities`; see [`crate::seccomp::default_profile`].
pub(super) fn profile(capabilities: &[String]) -> LinuxSeccomp {
    let mut syscalls: Vec<LinuxSyscall> = Vec::with_capacity(16 + capabilities.len());
    syscalls.extend(Rule::allow(ALLOWED).to_spec());
    syscalls.extend(SOCKET.iter().filter_map(Rule::to_spec));
    syscalls.extend(PERSONALITY.iter().filter_map(Rule::to_spec));
    if kernel_at_least(4, 8) {
        syscalls.extend(KERNEL_4_8.to_spec());
    }
    if let Some(rule) = &ARCH_SPECIFIC {
        syscalls.extend(rule.to_spec());
    }

    let mut admin = false;
    for cap in capabilities {
        admin |= cap == CAP_SYS_ADMIN;
        if let Some((_, rule)) = BY_CAPABILITY.iter().find(|(name, _)| name == cap) {
            syscalls.extend(rule.to_spec());
        }
    }
    if !admin {
        syscalls.extend(CLONE_WITHOUT_NAMESPACES.to_spec());
        syscalls.extend(CLONE3_ENOSYS.to_spec());
    }

    let mut profile = LinuxSeccomp::default();
    profile.set_default_action(LinuxSeccompAction::ScmpActErrno);
    profile.set_architectures(Some(ARCHES.to_vec()));
    profile.set_syscalls(Some(syscalls));
    profile
}

/// Whether the running kernel's version is at least `major.minor`. Like
/// containerd, an unreadable version counts as "no".
fn kernel_at_least(major: u32, minor: u32) -> bool {
    let Ok(uts) = nix::sys::utsname::uname() else {
        return false;
    };
    uts.release()
        .to_str()
        .and_then(parse_kernel_release)
        .is_some_and(|version| version >= (major, minor))
}

/// `"6.1.0-18-amd64"` -> `(6, 1)`.
fn parse_kernel_release(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_release_parsing() {
        assert_eq!(parse_kernel_release("6.1.0-18-amd64"), Some((6, 1)));
        assert_eq!(parse_kernel_release("4.8"), Some((4, 8)));
        assert_eq!(parse_kernel_release("5.15.153.1-microsoft"), Some((5, 15)));
        assert_eq!(parse_kernel_release("garbage"), None);
        assert_eq!(parse_kernel_release(""), None);
    }

    #[test]
    fn allow_list_has_no_duplicates() {
        let mut names = ALLOWED.to_vec();
        names.sort_unstable();
        let before = names.len();
        names.dedup();
        assert_eq!(before, names.len());
    }
}
