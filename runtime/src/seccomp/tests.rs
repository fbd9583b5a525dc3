//! Tests of the seccomp module. The `load_*` tests install filters for real in
//! forked children (they need root or no_new_privs, which the child sets).

use super::*;
use std::ffi::CString;
use std::io;

fn caps(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| (*n).to_owned()).collect()
}

fn profile(json: &str) -> LinuxSeccomp {
    match parse_profile(json.as_bytes(), ROOT) {
        Ok(p) => p,
        Err(e) => panic!("test profile does not parse: {e}"),
    }
}

fn compile_err(json: &str) -> String {
    match compile(&profile(json)) {
        Ok(f) => panic!("expected an error, got {f:?}"),
        Err(e) => e.to_string(),
    }
}

/// Rules of `p` that apply to `name` with `action`.
fn rules_for<'a>(
    p: &'a LinuxSeccomp,
    name: &str,
    action: LinuxSeccompAction,
) -> Vec<&'a oci_spec::runtime::LinuxSyscall> {
    p.syscalls()
        .iter()
        .flatten()
        .filter(|s| s.action() == action && s.names().iter().any(|n| n == name))
        .collect()
}

fn unconditionally_allowed(p: &LinuxSeccomp, name: &str) -> bool {
    rules_for(p, name, LinuxSeccompAction::ScmpActAllow)
        .iter()
        .any(|s| s.args().as_ref().is_none_or(|a| a.is_empty()))
}

// ---------------------------------------------------------------------------
// The default profile as data.

#[test]
fn default_profile_round_trips_through_json() {
    let p = default_profile(&caps(&["CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_NET_RAW"]));
    let json = serde_json::to_string_pretty(&p).expect("serialize");
    let back: LinuxSeccomp = serde_json::from_str(&json).expect("deserialize");
    assert_eq!(p, back);
    let parsed = parse_profile(json.as_bytes(), ROOT).expect("parse_profile");
    assert_eq!(p, parsed);
    assert!(
        json.contains("\"defaultAction\": \"SCMP_ACT_ERRNO\""),
        "{json}"
    );
}

#[test]
fn default_profile_basics() {
    let p = default_profile(&[]);
    assert_eq!(p.default_action(), LinuxSeccompAction::ScmpActErrno);
    assert_eq!(p.default_errno_ret(), None);
    for name in [
        "read",
        "write",
        "execve",
        "exit_group",
        "openat",
        "futex",
        "mkdir",
    ] {
        assert!(unconditionally_allowed(&p, name), "{name} not allowed");
    }
    for name in [
        "reboot",
        "mount",
        "unshare",
        "setns",
        "bpf",
        "ptrace_nonexistent",
        "io_uring_setup",
        "io_uring_enter",
        "io_uring_register",
        "kexec_load",
        "open_by_handle_at",
        "chroot",
        "init_module",
        "syslog",
    ] {
        assert!(
            rules_for(&p, name, LinuxSeccompAction::ScmpActAllow).is_empty(),
            "{name} allowed without capabilities"
        );
    }
    #[cfg(target_arch = "x86_64")]
    {
        assert_eq!(
            p.architectures().as_deref(),
            Some(&[Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32][..])
        );
        assert!(unconditionally_allowed(&p, "arch_prctl"));
    }
}

#[test]
fn default_profile_capabilities() {
    let none = default_profile(&[]);
    let boot = default_profile(&caps(&["CAP_SYS_BOOT"]));
    assert!(!unconditionally_allowed(&none, "reboot"));
    assert!(unconditionally_allowed(&boot, "reboot"));

    for (cap, names) in [
        ("CAP_DAC_READ_SEARCH", &["open_by_handle_at"][..]),
        (
            "CAP_SYS_ADMIN",
            &["mount", "unshare", "setns", "clone3", "bpf"],
        ),
        ("CAP_SYS_CHROOT", &["chroot"]),
        (
            "CAP_SYS_MODULE",
            &["init_module", "finit_module", "delete_module"],
        ),
        ("CAP_SYS_PACCT", &["acct"]),
        (
            "CAP_SYS_PTRACE",
            &["kcmp", "pidfd_getfd", "process_madvise"],
        ),
        ("CAP_SYS_RAWIO", &["iopl", "ioperm"]),
        ("CAP_SYS_TIME", &["settimeofday", "clock_settime"]),
        ("CAP_SYS_TTY_CONFIG", &["vhangup"]),
        ("CAP_SYS_NICE", &["mbind", "set_mempolicy"]),
        ("CAP_SYSLOG", &["syslog"]),
        ("CAP_BPF", &["bpf"]),
        ("CAP_PERFMON", &["perf_event_open"]),
    ] {
        let p = default_profile(&caps(&[cap]));
        for name in names {
            assert!(unconditionally_allowed(&p, name), "{cap}: {name}");
            assert!(
                !unconditionally_allowed(&none, name),
                "{name} without {cap}"
            );
        }
    }
    // Unknown capabilities change nothing.
    assert_eq!(default_profile(&caps(&["CAP_CHOWN", "bogus"])), none);
}

#[test]
fn default_profile_clone_rules() {
    let ns_flags: u64 = 0x7E02_0000; // NEWNS|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET|NEWCGROUP
    let p = default_profile(&[]);
    let clone = rules_for(&p, "clone", LinuxSeccompAction::ScmpActAllow);
    assert_eq!(clone.len(), 1);
    let args = clone[0].args().as_deref().expect("clone has args");
    assert_eq!(args.len(), 1);
    assert_eq!(args[0].op(), LinuxSeccompOperator::ScmpCmpMaskedEq);
    assert_eq!(args[0].value(), ns_flags);
    assert_eq!(args[0].value_two().unwrap_or(0), 0);
    let clone3 = rules_for(&p, "clone3", LinuxSeccompAction::ScmpActErrno);
    assert_eq!(clone3.len(), 1);
    assert_eq!(clone3[0].errno_ret(), Some(libc::ENOSYS as u32));

    let admin = default_profile(&caps(&["CAP_SYS_ADMIN"]));
    assert!(unconditionally_allowed(&admin, "clone"));
    assert!(unconditionally_allowed(&admin, "clone3"));
    assert!(rules_for(&admin, "clone3", LinuxSeccompAction::ScmpActErrno).is_empty());
    assert_eq!(
        rules_for(&admin, "clone", LinuxSeccompAction::ScmpActAllow).len(),
        1,
        "no masked clone rule with CAP_SYS_ADMIN"
    );
}

#[test]
fn default_profile_argument_rules() {
    let p = default_profile(&[]);
    let socket = rules_for(&p, "socket", LinuxSeccompAction::ScmpActAllow);
    let conds: Vec<(LinuxSeccompOperator, u64)> = socket
        .iter()
        .flat_map(|s| s.args().iter().flatten())
        .map(|a| (a.op(), a.value()))
        .collect();
    assert_eq!(
        conds,
        [
            (LinuxSeccompOperator::ScmpCmpLt, 38),
            (LinuxSeccompOperator::ScmpCmpEq, 39),
            (LinuxSeccompOperator::ScmpCmpGt, 40),
        ]
    );
    let personality: Vec<u64> = rules_for(&p, "personality", LinuxSeccompAction::ScmpActAllow)
        .iter()
        .flat_map(|s| s.args().iter().flatten())
        .map(|a| a.value())
        .collect();
    assert_eq!(personality, [0, 8, 0x20000, 0x20008, 0xffff_ffff]);
}

#[test]
fn default_profile_compiles_with_any_capabilities() {
    let all = caps(&[
        "CAP_DAC_READ_SEARCH",
        "CAP_SYS_ADMIN",
        "CAP_SYS_BOOT",
        "CAP_SYS_CHROOT",
        "CAP_SYS_MODULE",
        "CAP_SYS_PACCT",
        "CAP_SYS_PTRACE",
        "CAP_SYS_RAWIO",
        "CAP_SYS_TIME",
        "CAP_SYS_TTY_CONFIG",
        "CAP_SYS_NICE",
        "CAP_SYSLOG",
        "CAP_BPF",
        "CAP_PERFMON",
    ]);
    for set in [&[][..], &all[..], &all[..1], &all[1..2]] {
        let filter = compile(&default_profile(set)).expect("default profile compiles");
        assert!(filter.instructions() > 10 && filter.instructions() <= BPF_MAX_INSTRUCTIONS);
    }
}

// ---------------------------------------------------------------------------
// Validation errors name the field.

#[test]
fn unknown_enum_values_name_the_field() {
    let json = r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
        {"names":["a"],"action":"SCMP_ACT_ALLOW"},
        {"names":["b"],"action":"SCMP_ACT_ALLOW"},
        {"names":["c"],"action":"SCMP_ACT_ALLOW"},
        {"names":["d"],"action":"SCMP_ACT_FOO"}]}"#;
    let err = parse_profile(json.as_bytes(), ROOT).unwrap_err();
    assert_eq!(
        err.to_string(),
        r#"linux.seccomp.syscalls[3].action: unknown action "SCMP_ACT_FOO""#
    );

    let cases = [
        (
            r#"{"defaultAction":"SCMP_ACT_NOPE"}"#,
            r#"linux.seccomp.defaultAction: unknown action "SCMP_ACT_NOPE""#,
        ),
        (
            r#"{"defaultAction":"SCMP_ACT_ALLOW","architectures":["SCMP_ARCH_X86_64","SCMP_ARCH_Z80"]}"#,
            r#"linux.seccomp.architectures[1]: unknown architecture "SCMP_ARCH_Z80""#,
        ),
        (
            r#"{"defaultAction":"SCMP_ACT_ALLOW","flags":["SECCOMP_FILTER_FLAG_FAST"]}"#,
            r#"linux.seccomp.flags[0]: unknown flag "SECCOMP_FILTER_FLAG_FAST""#,
        ),
        (
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["read"],"action":"SCMP_ACT_ERRNO","args":[{"index":0,"value":1,"op":"SCMP_CMP_XOR"}]}]}"#,
            r#"linux.seccomp.syscalls[0].args[0].op: unknown operator "SCMP_CMP_XOR""#,
        ),
        (
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":{"names":["read"]}}"#,
            r#"linux.seccomp.syscalls: expected an array, found {"names":["read"]}"#,
        ),
        (r#"[1]"#, "linux.seccomp: expected a JSON object"),
    ];
    for (json, expected) in cases {
        let err = parse_profile(json.as_bytes(), ROOT).unwrap_err();
        assert_eq!(err.to_string(), expected, "{json}");
    }

    let err = parse_profile(b"{not json", "/etc/profile.json").unwrap_err();
    assert!(matches!(err, SeccompError::Json { .. }), "{err:?}");
    assert!(err.to_string().starts_with("/etc/profile.json: "), "{err}");
}

#[test]
fn compile_errors_name_the_field() {
    let cases = [
        (
            r#"{"defaultAction":"SCMP_ACT_NOTIFY"}"#,
            "linux.seccomp.defaultAction: SCMP_ACT_NOTIFY is not supported yet",
        ),
        (
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["read"],"action":"SCMP_ACT_ERRNO"},{"names":["write"],"action":"SCMP_ACT_NOTIFY"}]}"#,
            "linux.seccomp.syscalls[1].action: SCMP_ACT_NOTIFY is not supported yet",
        ),
        (
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["read"],"action":"SCMP_ACT_ERRNO","args":[{"index":1,"value":0,"op":"SCMP_CMP_EQ"},{"index":6,"value":0,"op":"SCMP_CMP_EQ"}]}]}"#,
            "linux.seccomp.syscalls[0].args[1].index: 6 is out of range (0 to 5)",
        ),
        (
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["read"],"action":"SCMP_ACT_ERRNO","errnoRet":70000}]}"#,
            "linux.seccomp.syscalls[0].errnoRet: 70000 does not fit the 16 bits of a seccomp return value",
        ),
        (
            r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{"names":["read"],"action":"SCMP_ACT_ALLOW","errnoRet":1}]}"#,
            "linux.seccomp.syscalls[0].errnoRet: only SCMP_ACT_ERRNO and SCMP_ACT_TRACE take an errno, not SCMP_ACT_ALLOW",
        ),
        (
            r#"{"defaultAction":"SCMP_ACT_KILL","defaultErrnoRet":1}"#,
            "linux.seccomp.defaultErrnoRet: only SCMP_ACT_ERRNO and SCMP_ACT_TRACE take an errno, not SCMP_ACT_KILL",
        ),
        (
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":[],"action":"SCMP_ACT_ERRNO"}]}"#,
            "linux.seccomp.syscalls[0].names: must name at least one syscall",
        ),
        (
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["read",""],"action":"SCMP_ACT_ERRNO"}]}"#,
            r#"linux.seccomp.syscalls[0].names[1]: "" is not a syscall name"#,
        ),
    ];
    for (json, expected) in cases {
        assert_eq!(compile_err(json), expected, "{json}");
    }
}

#[test]
fn architectures_unknown_to_libseccomp_name_the_field() {
    let json = r#"{"defaultAction":"SCMP_ACT_ALLOW",
        "architectures":["SCMP_ARCH_X86_64","SCMP_ARCH_LOONGARCH64"]}"#;
    let v = libseccomp::ScmpVersion::current().expect("libseccomp version");
    if (v.major, v.minor) >= (2, 6) {
        // LoongArch is known from libseccomp 2.6 on.
        compile(&profile(json)).expect("compiles");
        return;
    }
    let err = compile_err(json);
    assert!(
        err.starts_with(
            "linux.seccomp.architectures[1]: libseccomp refused architecture \
             SCMP_ARCH_LOONGARCH64: "
        ),
        "{err}"
    );
}

#[test]
fn compile_accepts_every_action_operator_and_flag() {
    let filter = compile(&profile(
        r#"{"defaultAction":"SCMP_ACT_ERRNO","defaultErrnoRet":38,
            "architectures":["SCMP_ARCH_NATIVE"],
            "flags":["SECCOMP_FILTER_FLAG_TSYNC","SECCOMP_FILTER_FLAG_LOG","SECCOMP_FILTER_FLAG_SPEC_ALLOW","SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"],
            "syscalls":[
            {"names":["read"],"action":"SCMP_ACT_ALLOW"},
            {"names":["write"],"action":"SCMP_ACT_LOG"},
            {"names":["getpid"],"action":"SCMP_ACT_TRACE","errnoRet":5},
            {"names":["getppid"],"action":"SCMP_ACT_TRAP"},
            {"names":["getuid"],"action":"SCMP_ACT_KILL"},
            {"names":["getgid"],"action":"SCMP_ACT_KILL_THREAD"},
            {"names":["geteuid"],"action":"SCMP_ACT_KILL_PROCESS"},
            {"names":["getegid"],"action":"SCMP_ACT_ERRNO"},
            {"names":["close"],"action":"SCMP_ACT_ERRNO","errnoRet":38},
            {"names":["this_syscall_does_not_exist","dup"],"action":"SCMP_ACT_ALLOW"},
            {"names":["lseek"],"action":"SCMP_ACT_ALLOW","args":[
                {"index":0,"value":1,"op":"SCMP_CMP_NE"},
                {"index":1,"value":2,"op":"SCMP_CMP_LT"},
                {"index":2,"value":3,"op":"SCMP_CMP_LE"}]},
            {"names":["pread64"],"action":"SCMP_ACT_ALLOW","args":[
                {"index":0,"value":1,"op":"SCMP_CMP_EQ"},
                {"index":1,"value":2,"op":"SCMP_CMP_GE"},
                {"index":2,"value":3,"op":"SCMP_CMP_GT"},
                {"index":3,"value":255,"valueTwo":7,"op":"SCMP_CMP_MASKED_EQ"}]},
            {"names":["pwrite64"],"action":"SCMP_ACT_ALLOW","args":[
                {"index":0,"value":1,"op":"SCMP_CMP_EQ"},
                {"index":0,"value":2,"op":"SCMP_CMP_EQ"},
                {"index":1,"value":3,"op":"SCMP_CMP_EQ"}]}]}"#,
    ))
    .expect("compiles");
    assert_eq!(
        filter.flags,
        libc::SECCOMP_FILTER_FLAG_TSYNC
            | libc::SECCOMP_FILTER_FLAG_LOG
            | libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW
    );
    assert!(!filter.implicit_spec_allow);

    let implicit = compile(&profile(r#"{"defaultAction":"SCMP_ACT_ALLOW"}"#)).expect("compiles");
    assert_eq!(implicit.flags, libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW);
    assert!(implicit.implicit_spec_allow);
    let none = compile(&profile(r#"{"defaultAction":"SCMP_ACT_ALLOW","flags":[]}"#)).unwrap();
    assert_eq!(none.flags, 0);
}

// ---------------------------------------------------------------------------
// Real filters in forked children.

#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Exited(i32),
    Signaled(i32),
}

fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Runs `child` in a forked child which exits with the code it returns.
///
/// The test harness is multi-threaded, so `child` may only make
/// async-signal-safe calls: no allocation, no locking, no panicking. The child
/// is made non-dumpable (no core files when a filter kills it) and gets
/// no_new_privs (so loading a filter works without CAP_SYS_ADMIN too).
fn in_child(child: impl FnOnce() -> i32) -> Outcome {
    // SAFETY: fork has no memory-safety preconditions; the child below only
    // makes async-signal-safe calls and leaves with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", io::Error::last_os_error());
    if pid == 0 {
        let zero = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: plain syscalls on the child itself with valid arguments;
        // _exit never returns.
        unsafe {
            libc::setrlimit(libc::RLIMIT_CORE, &zero);
            libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                libc::_exit(250);
            }
            libc::_exit(child())
        }
    }
    wait_for(pid)
}

fn wait_for(pid: libc::pid_t) -> Outcome {
    let mut status = 0;
    loop {
        // SAFETY: waits for our own child, writing into a local.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            break;
        }
        assert!(
            r == -1 && errno() == libc::EINTR,
            "waitpid: {}",
            io::Error::last_os_error()
        );
    }
    if libc::WIFEXITED(status) {
        Outcome::Exited(libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        Outcome::Signaled(libc::WTERMSIG(status))
    } else {
        panic!("unexpected wait status {status:#x}")
    }
}

/// Exit code of a child whose filter did not load.
const LOAD_FAILED: i32 = 200;

#[test]
fn load_filter_denying_mkdir() {
    let dir = tempfile::tempdir().expect("tempdir");
    let blocked = dir.path().join("blocked");
    let c_blocked = CString::new(blocked.as_os_str().as_encoded_bytes()).unwrap();
    let filter = compile(&profile(
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
            {"names":["mkdir","mkdirat"],"action":"SCMP_ACT_ERRNO"}]}"#,
    ))
    .expect("compiles");

    let outcome = in_child(|| {
        if filter.load().is_err() {
            return LOAD_FAILED;
        }
        // SAFETY: valid NUL-terminated path; plain syscalls.
        unsafe {
            if libc::mkdir(c_blocked.as_ptr(), 0o755) != -1 {
                return 1;
            }
            if errno() != libc::EPERM {
                return 2;
            }
            if libc::getppid() <= 0 || libc::getpid() <= 0 {
                return 3;
            }
        }
        42
    });
    assert_eq!(outcome, Outcome::Exited(42));
    assert!(!blocked.exists(), "mkdir went through");
    // The parent is not affected.
    std::fs::create_dir(&blocked).expect("mkdir in the parent");
}

#[test]
fn load_default_profile_without_capabilities() {
    let dir = tempfile::tempdir().expect("tempdir");
    let allowed = dir.path().join("allowed");
    let c_allowed = CString::new(allowed.as_os_str().as_encoded_bytes()).unwrap();
    let filter = compile(&default_profile(&[])).expect("compiles");

    let outcome = in_child(|| {
        if filter.load().is_err() {
            return LOAD_FAILED;
        }
        // SAFETY: plain syscalls with valid (or deliberately invalid but
        // harmless) arguments; nothing here touches the parent's memory.
        unsafe {
            // Allowed: mkdir, getpid, write to a pipe.
            if libc::mkdir(c_allowed.as_ptr(), 0o755) != 0 {
                return 1;
            }
            let mut fds = [0; 2];
            if libc::pipe(fds.as_mut_ptr()) != 0
                || libc::write(fds[1], b"x".as_ptr().cast(), 1) != 1
            {
                return 2;
            }
            // Refused with EPERM: unshare, reboot (bad magic: EINVAL if it got through).
            if libc::syscall(libc::SYS_unshare, 0) != -1 || errno() != libc::EPERM {
                return 3;
            }
            if libc::syscall(libc::SYS_reboot, 0, 0, 0, 0) != -1 || errno() != libc::EPERM {
                return 4;
            }
            // socket: AF_VSOCK and AF_ALG refused, AF_UNIX allowed.
            for family in [libc::AF_VSOCK, libc::AF_ALG] {
                if libc::socket(family, libc::SOCK_STREAM, 0) != -1 || errno() != libc::EPERM {
                    return 5;
                }
            }
            let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
            if fd < 0 || libc::close(fd) != 0 {
                return 6;
            }
            // personality: queries allowed, other values refused.
            if libc::personality(0xffff_ffff) == -1 {
                return 7;
            }
            if libc::personality(0x0040_0000) != -1 || errno() != libc::EPERM {
                return 8;
            }
            // clone3 gives ENOSYS so that libc falls back to clone.
            if libc::syscall(libc::SYS_clone3, 0, 0) != -1 || errno() != libc::ENOSYS {
                return 9;
            }
            // clone with a namespace flag is refused...
            let r = libc::syscall(
                libc::SYS_clone,
                libc::CLONE_NEWUSER | libc::SIGCHLD,
                0,
                0,
                0,
                0,
            );
            if r == 0 {
                libc::_exit(0);
            }
            if r != -1 || errno() != libc::EPERM {
                return 10;
            }
            // ... and a plain fork works.
            let pid = libc::fork();
            if pid == 0 {
                libc::_exit(7);
            }
            let mut status = 0;
            if pid < 0 || libc::waitpid(pid, &mut status, 0) != pid {
                return 11;
            }
            if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 7 {
                return 12;
            }
        }
        0
    });
    assert_eq!(outcome, Outcome::Exited(0));
    assert!(allowed.is_dir());
}

#[test]
fn load_default_profile_with_sys_admin() {
    let filter = compile(&default_profile(&caps(&["CAP_SYS_ADMIN"]))).expect("compiles");
    let outcome = in_child(|| {
        if filter.load().is_err() {
            return LOAD_FAILED;
        }
        // SAFETY: harmless syscalls: unshare(0) does nothing and clone3 with
        // a zero size is rejected by the kernel with EINVAL.
        unsafe {
            if libc::syscall(libc::SYS_unshare, 0) != 0 {
                return 1;
            }
            if libc::syscall(libc::SYS_clone3, 0, 0) != -1 || errno() != libc::EINVAL {
                return 2;
            }
        }
        0
    });
    assert_eq!(outcome, Outcome::Exited(0));
}

#[test]
fn load_every_action() {
    let sigsys = Outcome::Signaled(libc::SIGSYS);
    let cases = [
        ("SCMP_ACT_KILL", "", &sigsys),
        ("SCMP_ACT_KILL_THREAD", "", &sigsys),
        ("SCMP_ACT_KILL_PROCESS", "", &sigsys),
        ("SCMP_ACT_TRAP", "", &sigsys),
        ("SCMP_ACT_ERRNO", "", &Outcome::Exited(libc::EPERM)),
        ("SCMP_ACT_ERRNO", r#","errnoRet":99"#, &Outcome::Exited(99)),
        // No tracer attached: the syscall fails with ENOSYS.
        ("SCMP_ACT_TRACE", "", &Outcome::Exited(libc::ENOSYS)),
        ("SCMP_ACT_LOG", "", &Outcome::Exited(0)),
        // Same as the default action: dropped.
        ("SCMP_ACT_ALLOW", "", &Outcome::Exited(0)),
    ];
    for (action, extra, expected) in cases {
        let filter = compile(&profile(&format!(
            r#"{{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
                {{"names":["getppid"],"action":"{action}"{extra}}}]}}"#
        )))
        .expect("compiles");
        let outcome = in_child(|| {
            if filter.load().is_err() {
                return LOAD_FAILED;
            }
            // SAFETY: getppid has no arguments or side effects.
            if unsafe { libc::syscall(libc::SYS_getppid) } >= 0 {
                0
            } else {
                errno()
            }
        });
        assert_eq!(&outcome, expected, "{action}{extra}");
    }
}

#[test]
fn load_argument_rules_like_runc() {
    // Two conditions on the same argument: one rule each (OR).
    // Conditions on different arguments: one rule (AND).
    let filter = compile(&profile(
        r#"{"defaultAction":"SCMP_ACT_ALLOW","flags":["SECCOMP_FILTER_FLAG_TSYNC","SECCOMP_FILTER_FLAG_LOG","SECCOMP_FILTER_FLAG_SPEC_ALLOW"],
            "syscalls":[
            {"names":["getpgid"],"action":"SCMP_ACT_ERRNO","errnoRet":77,"args":[
                {"index":0,"value":1111111,"op":"SCMP_CMP_EQ"},
                {"index":0,"value":2222222,"op":"SCMP_CMP_EQ"}]},
            {"names":["getpriority"],"action":"SCMP_ACT_ERRNO","errnoRet":78,"args":[
                {"index":0,"value":0,"op":"SCMP_CMP_EQ"},
                {"index":1,"value":2147483632,"op":"SCMP_CMP_EQ"}]},
            {"names":["getsid"],"action":"SCMP_ACT_ERRNO","errnoRet":79,"args":[
                {"index":0,"value":65280,"valueTwo":4352,"op":"SCMP_CMP_MASKED_EQ"}]}]}"#,
    ))
    .expect("compiles");
    let outcome = in_child(|| {
        if filter.load().is_err() {
            return LOAD_FAILED;
        }
        let huge: libc::c_long = 2_147_483_632; // never a pid
        // SAFETY: query syscalls without side effects.
        unsafe {
            for pid in [1_111_111, 2_222_222] {
                if libc::syscall(libc::SYS_getpgid, pid) != -1 || errno() != 77 {
                    return 1;
                }
            }
            if libc::syscall(libc::SYS_getpgid, 0) < 0 {
                return 2;
            }
            if libc::syscall(libc::SYS_getpriority, libc::PRIO_PROCESS, huge) != -1 || errno() != 78
            {
                return 3;
            }
            if libc::syscall(libc::SYS_getpriority, libc::PRIO_PGRP, huge) != -1
                || errno() != libc::ESRCH
            {
                return 4;
            }
            // (pid & 0xff00) == 0x1100
            if libc::syscall(libc::SYS_getsid, 0x1234_11ff) != -1 || errno() != 79 {
                return 5;
            }
            if libc::syscall(libc::SYS_getsid, 0x1234_12ff) != -1 || errno() != libc::ESRCH {
                return 6;
            }
        }
        0
    });
    assert_eq!(outcome, Outcome::Exited(0));
}

#[test]
fn load_error_is_reported() {
    let filter = compile(&profile(r#"{"defaultAction":"SCMP_ACT_ALLOW","flags":[]}"#)).unwrap();
    // Without no_new_privs and without CAP_SYS_ADMIN the kernel refuses.
    // SAFETY: as in in_child: async-signal-safe calls only, then _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        // SAFETY: drops all capabilities of this child only.
        unsafe {
            let header = [0x2008_0522u32, 0]; // _LINUX_CAPABILITY_VERSION_3, this process
            let data = [0u32; 6];
            if libc::syscall(libc::SYS_capset, header.as_ptr(), data.as_ptr()) != 0 {
                libc::_exit(LOAD_FAILED);
            }
            let code = match filter.load() {
                Err(SeccompError::Load { source, hint })
                    if source.raw_os_error() == Some(libc::EACCES) && !hint.is_empty() =>
                {
                    0
                }
                Ok(()) => 1,
                Err(_) => 2,
            };
            libc::_exit(code)
        }
    }
    assert_eq!(wait_for(pid), Outcome::Exited(0));
}

// ---------------------------------------------------------------------------
// The compiled program, run by a small classic-BPF interpreter: checks the
// parts the forked tests cannot reach (other architectures, x32).

/// Runs `program` on a `struct seccomp_data`; `None` on an instruction the
/// interpreter does not know or a jump out of the program.
fn run_bpf(program: &[libc::sock_filter], arch: u32, nr: u32, args: [u64; 6]) -> Option<u32> {
    let mut data = [0u8; 64];
    data[0..4].copy_from_slice(&nr.to_ne_bytes());
    data[4..8].copy_from_slice(&arch.to_ne_bytes());
    for (i, arg) in args.iter().enumerate() {
        data[16 + 8 * i..24 + 8 * i].copy_from_slice(&arg.to_ne_bytes());
    }
    let load = |off: u32| -> Option<u32> {
        let off = usize::try_from(off).ok()?;
        let bytes: [u8; 4] = data.get(off..off + 4)?.try_into().ok()?;
        Some(u32::from_ne_bytes(bytes))
    };
    let (mut a, mut x, mut mem) = (0u32, 0u32, [0u32; 16]);
    let mut pc = 0usize;
    loop {
        let insn = program.get(pc)?;
        pc += 1;
        let k = insn.k;
        let cond = |taken: bool| usize::from(if taken { insn.jt } else { insn.jf });
        match insn.code {
            0x20 => a = load(k)?,                  // ld [k]
            0x00 => a = k,                         // ld #k
            0x01 => x = k,                         // ldx #k
            0x60 => a = *mem.get(k as usize)?,     // ld M[k]
            0x61 => x = *mem.get(k as usize)?,     // ldx M[k]
            0x02 => *mem.get_mut(k as usize)? = a, // st M[k]
            0x03 => *mem.get_mut(k as usize)? = x, // stx M[k]
            0x54 => a &= k,                        // and #k
            0x05 => pc += k as usize,              // ja
            0x15 => pc += cond(a == k),            // jeq #k
            0x25 => pc += cond(a > k),             // jgt #k
            0x35 => pc += cond(a >= k),            // jge #k
            0x45 => pc += cond(a & k != 0),        // jset #k
            0x1d => pc += cond(a == x),            // jeq x
            0x2d => pc += cond(a > x),             // jgt x
            0x3d => pc += cond(a >= x),            // jge x
            0x06 => return Some(k),                // ret #k
            0x16 => return Some(a),                // ret a
            0x07 => x = a,                         // tax
            0x87 => a = x,                         // txa
            _ => return None,
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86_64_program {
    use super::*;

    const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
    const AUDIT_ARCH_I386: u32 = 0x4000_0003;
    const AUDIT_ARCH_AARCH64: u32 = 0xc000_00b7;
    const X32: u32 = 0x4000_0000;
    const ALLOW: u32 = libc::SECCOMP_RET_ALLOW;
    const EPERM: u32 = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;
    const ENOSYS: u32 = libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;
    const KILL: u32 = libc::SECCOMP_RET_KILL_THREAD;

    fn default_program(caps: &[String]) -> Vec<libc::sock_filter> {
        compile(&default_profile(caps)).expect("compiles").program
    }

    fn x86_64(program: &[libc::sock_filter], nr: libc::c_long, arg0: u64) -> Option<u32> {
        run_bpf(program, AUDIT_ARCH_X86_64, nr as u32, [arg0, 0, 0, 0, 0, 0])
    }

    #[test]
    fn default_profile_decisions() {
        let p = default_program(&[]);
        assert_eq!(x86_64(&p, libc::SYS_read, 0), Some(ALLOW));
        assert_eq!(x86_64(&p, libc::SYS_reboot, 0), Some(EPERM));
        assert_eq!(x86_64(&p, libc::SYS_mount, 0), Some(EPERM));
        // personality: allowed values only.
        for (persona, expected) in [
            (0, ALLOW),
            (8, ALLOW),
            (0x20000, ALLOW),
            (0x20008, ALLOW),
            (0xffff_ffff, ALLOW),
            (4, EPERM),
            (0x0040_0000, EPERM),
        ] {
            assert_eq!(
                x86_64(&p, libc::SYS_personality, persona),
                Some(expected),
                "personality({persona:#x})"
            );
        }
        // socket: every family but AF_ALG (38) and AF_VSOCK (40).
        for (family, expected) in [
            (1, ALLOW),
            (2, ALLOW),
            (10, ALLOW),
            (16, ALLOW),
            (37, ALLOW),
            (38, EPERM),
            (39, ALLOW),
            (40, EPERM),
            (41, ALLOW),
            (44, ALLOW),
        ] {
            assert_eq!(
                x86_64(&p, libc::SYS_socket, family),
                Some(expected),
                "socket({family})"
            );
        }
        // clone: no namespace flags.
        let fork_flags =
            (libc::SIGCHLD | libc::CLONE_CHILD_SETTID | libc::CLONE_CHILD_CLEARTID) as u64;
        assert_eq!(x86_64(&p, libc::SYS_clone, fork_flags), Some(ALLOW));
        for ns in [
            libc::CLONE_NEWUSER,
            libc::CLONE_NEWNS,
            libc::CLONE_NEWNET,
            libc::CLONE_NEWCGROUP,
        ] {
            assert_eq!(
                x86_64(&p, libc::SYS_clone, fork_flags | ns as u64),
                Some(EPERM),
                "clone({ns:#x})"
            );
        }
        assert_eq!(x86_64(&p, libc::SYS_clone3, 0), Some(ENOSYS));

        let admin = default_program(&caps(&["CAP_SYS_ADMIN"]));
        assert_eq!(
            x86_64(&admin, libc::SYS_clone, libc::CLONE_NEWUSER as u64),
            Some(ALLOW)
        );
        assert_eq!(x86_64(&admin, libc::SYS_mount, 0), Some(ALLOW));
        assert_eq!(x86_64(&admin, libc::SYS_clone3, 0), Some(ALLOW));
    }

    #[test]
    fn other_abis_and_bad_arch() {
        let p = default_program(&[]);
        // i386: read is 3, reboot is 88.
        assert_eq!(run_bpf(&p, AUDIT_ARCH_I386, 3, [0; 6]), Some(ALLOW));
        assert_eq!(run_bpf(&p, AUDIT_ARCH_I386, 88, [0; 6]), Some(EPERM));
        // x32: read is 0 | X32 bit.
        assert_eq!(run_bpf(&p, AUDIT_ARCH_X86_64, X32, [0; 6]), Some(ALLOW));
        assert_eq!(
            run_bpf(&p, AUDIT_ARCH_X86_64, X32 | libc::SYS_reboot as u32, [0; 6]),
            Some(EPERM)
        );
        // An architecture not in the filter is killed.
        assert_eq!(run_bpf(&p, AUDIT_ARCH_AARCH64, 63, [0; 6]), Some(KILL));
    }

    #[test]
    fn enosys_above_the_largest_known_syscall() {
        let p = default_program(&[]);
        for arch_nr in [
            (AUDIT_ARCH_X86_64, 1000),
            (AUDIT_ARCH_X86_64, X32 | 1000),
            (AUDIT_ARCH_I386, 1000),
        ] {
            assert_eq!(
                run_bpf(&p, arch_nr.0, arch_nr.1, [0; 6]),
                Some(ENOSYS),
                "{arch_nr:x?}"
            );
        }
        // A hole below the largest known syscall keeps the default action.
        assert_eq!(run_bpf(&p, AUDIT_ARCH_X86_64, 400, [0; 6]), Some(EPERM));

        // No stub when the default action lets syscalls through or already
        // is ENOSYS.
        for json in [
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir"],"action":"SCMP_ACT_ERRNO"}]}"#,
            r#"{"defaultAction":"SCMP_ACT_LOG","syscalls":[{"names":["mkdir"],"action":"SCMP_ACT_ERRNO"}]}"#,
            r#"{"defaultAction":"SCMP_ACT_ERRNO","defaultErrnoRet":38,"syscalls":[{"names":["read"],"action":"SCMP_ACT_ALLOW"}]}"#,
        ] {
            let spec = profile(json);
            let action = action(
                spec.default_action(),
                spec.default_errno_ret(),
                String::new,
                String::new,
            )
            .unwrap();
            assert!(enosys::stub(&spec, action).unwrap().is_empty(), "{json}");
        }

        // Only x86-64 listed (no x32): x32 syscalls reach libseccomp's
        // program, which kills them as a foreign architecture.
        let only = compile(&profile(
            r#"{"defaultAction":"SCMP_ACT_ERRNO","architectures":["SCMP_ARCH_X86_64"],
                "syscalls":[{"names":["read","write"],"action":"SCMP_ACT_ALLOW"}]}"#,
        ))
        .unwrap()
        .program;
        assert_eq!(x86_64(&only, libc::SYS_write, 0), Some(ALLOW));
        assert_eq!(x86_64(&only, libc::SYS_write + 1, 0), Some(ENOSYS));
        assert_eq!(x86_64(&only, 0, 0), Some(ALLOW));
        assert_eq!(
            run_bpf(&only, AUDIT_ARCH_X86_64, X32 | 1000, [0; 6]),
            Some(KILL)
        );
        assert_eq!(run_bpf(&only, AUDIT_ARCH_I386, 1000, [0; 6]), Some(KILL));
    }

    #[test]
    fn libseccomp_numbers_x32_syscalls_with_the_x32_bit() {
        let nr = ScmpSyscall::from_name_by_arch("write", libseccomp::ScmpArch::X32)
            .unwrap()
            .as_raw_syscall();
        assert_eq!(nr as u32, X32 | 1);
    }

    #[test]
    fn load_default_profile_enosys_for_unknown_syscalls() {
        let filter = compile(&default_profile(&[])).expect("compiles");
        let outcome = in_child(|| {
            if filter.load().is_err() {
                return LOAD_FAILED;
            }
            // SAFETY: syscall numbers no kernel implements: no effect.
            unsafe {
                if libc::syscall(1000) != -1 || errno() != libc::ENOSYS {
                    return 1;
                }
                // 400 lies in x86-64's unused 335-423 range: default action.
                if libc::syscall(400) != -1 || errno() != libc::EPERM {
                    return 2;
                }
            }
            0
        });
        assert_eq!(outcome, Outcome::Exited(0));
    }
}
