//! The ENOSYS stub placed in front of libseccomp's program, as runc does.
//!
//! A profile can only list syscalls libseccomp knows; everything else gets
//! the default action, usually EPERM. But libc probes new syscalls and falls
//! back to older ones only on ENOSYS (glibc tries `fchmodat2` before emulating
//! `lchmod`, for instance), so EPERM for a syscall newer than the profile
//! breaks programs. runc therefore returns ENOSYS for every syscall number
//! above the largest one the profile names, per architecture; this module
//! builds the same stub.
//!
//! Layout (all jumps forward):
//! ```text
//!     ld  [arch]
//!     jeq AUDIT_ARCH_a, section_a      (one per architecture)
//!     ja  filter
//! section_a:
//!     ld  [nr]
//!     ... (x86-64: jset X32 bit; s390: jeq 0 -> enosys)
//!     jgt max_a, enosys, filter
//! enosys:
//!     ret ERRNO(ENOSYS)
//! filter:
//!     libseccomp's program
//! ```

use std::collections::BTreeMap;

use libseccomp::{ScmpAction, ScmpArch, ScmpSyscall};
use oci_spec::runtime::{Arch, LinuxSeccomp};

use super::SeccompError;

/// Offsets in `struct seccomp_data`.
const OFFSET_NR: u32 = 0;
const OFFSET_ARCH: u32 = 4;

/// Set in the syscall number of x32 syscalls (which share x86-64's audit arch).
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;

/// The s390 multiplexer for syscall numbers above 255: numbers the kernel does
/// not know stay 0, so 0 must get ENOSYS too.
const S390_MULTIPLEX_SYSCALL: u32 = 0;

const LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
const JMP_JA: u16 = (libc::BPF_JMP | libc::BPF_JA) as u16;
const JMP_JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
const JMP_JGT_K: u16 = (libc::BPF_JMP | libc::BPF_JGT | libc::BPF_K) as u16;
const JMP_JSET_K: u16 = (libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K) as u16;
const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;

const RET_ENOSYS: u32 = libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;

/// Where a jump goes.
#[derive(Clone, Copy)]
enum Target {
    /// The next instruction.
    Next,
    /// Skip that many instructions after the next one.
    Skip(usize),
    /// The n-th architecture section.
    Section(usize),
    /// The ENOSYS return.
    Enosys,
    /// The first instruction of libseccomp's program.
    Filter,
}

/// A stub instruction whose jumps are not resolved yet.
struct Insn {
    code: u16,
    k: u32,
    jt: Target,
    jf: Target,
}

impl Insn {
    fn load(offset: u32) -> Self {
        Insn {
            code: LD_W_ABS,
            k: offset,
            jt: Target::Next,
            jf: Target::Next,
        }
    }

    fn jump(code: u16, k: u32, jt: Target, jf: Target) -> Self {
        Insn { code, k, jt, jf }
    }
}

/// The largest syscall number the profile names, per ScmpArch, grouped by
/// the audit architecture the kernel reports.
type LastSyscalls = BTreeMap<u32, Vec<(ScmpArch, u32)>>;

/// The stub for `spec`, or an empty program when none is needed: the default
/// action lets syscalls through (allow, log, trace) or already is ENOSYS.
pub(super) fn stub(
    spec: &LinuxSeccomp,
    default_action: ScmpAction,
) -> Result<Vec<libc::sock_filter>, SeccompError> {
    match default_action {
        ScmpAction::Allow | ScmpAction::Log | ScmpAction::Trace(_) => return Ok(Vec::new()),
        ScmpAction::Errno(e) if e == libc::ENOSYS => return Ok(Vec::new()),
        _ => {}
    }
    assemble(&last_syscalls(spec))
}

fn last_syscalls(spec: &LinuxSeccomp) -> LastSyscalls {
    // The listed architectures and, even if the list omits it, the native one.
    let mut arches: Vec<Arch> = spec
        .architectures()
        .iter()
        .flatten()
        .copied()
        .chain(std::iter::once(Arch::ScmpArchNative))
        .filter_map(|a| match a {
            Arch::ScmpArchNative => super::NATIVE_ARCH,
            other => Some(other),
        })
        .collect();
    arches.sort_by_key(|a| *a as u32);
    arches.dedup();

    let names: Vec<&str> = spec
        .syscalls()
        .iter()
        .flatten()
        .flat_map(|s| s.names().iter().map(String::as_str))
        .collect();

    let mut last = LastSyscalls::new();
    for arch in arches {
        let scmp = super::scmp_arch(arch);
        let largest = names
            .iter()
            .filter_map(|name| ScmpSyscall::from_name_by_arch(name, scmp).ok())
            .map(ScmpSyscall::as_raw_syscall)
            .filter_map(|nr| u32::try_from(nr).ok())
            .max();
        let Some(mut largest) = largest.filter(|&nr| nr != 0) else {
            tracing::debug!(arch = %arch, "seccomp: no syscall of the profile exists on this architecture");
            continue;
        };
        if arch == Arch::ScmpArchX32 {
            largest |= X32_SYSCALL_BIT;
        }
        last.entry(audit_arch(arch))
            .or_default()
            .push((scmp, largest));
    }
    last
}

/// The `AUDIT_ARCH_*` value the kernel puts in `seccomp_data.arch`.
/// libseccomp's `SCMP_ARCH_*` tokens (the values of oci-spec's `Arch`) are
/// the same except for x32, which the kernel reports as x86-64.
fn audit_arch(arch: Arch) -> u32 {
    match arch {
        Arch::ScmpArchX32 => AUDIT_ARCH_X86_64,
        other => other as u32,
    }
}

fn assemble(last: &LastSyscalls) -> Result<Vec<libc::sock_filter>, SeccompError> {
    if last.is_empty() {
        return Ok(Vec::new());
    }
    let mut head = vec![Insn::load(OFFSET_ARCH)];
    let mut sections: Vec<Vec<Insn>> = Vec::new();
    for (&audit, maxima) in last {
        head.push(Insn::jump(
            JMP_JEQ_K,
            audit,
            Target::Section(sections.len()),
            Target::Next,
        ));
        sections.push(section(audit, maxima)?);
    }
    head.push(Insn::jump(JMP_JA, 0, Target::Filter, Target::Filter));

    // Lay out: head, sections, ENOSYS return; then resolve the jumps.
    let mut starts = Vec::with_capacity(sections.len());
    let mut pos = head.len();
    for s in &sections {
        starts.push(pos);
        pos += s.len();
    }
    let enosys = pos;
    let filter = pos + 1;
    let insns = head
        .into_iter()
        .chain(sections.into_iter().flatten())
        .chain(std::iter::once(Insn::jump(
            RET_K,
            RET_ENOSYS,
            Target::Next,
            Target::Next,
        )));

    let mut program = Vec::with_capacity(filter);
    for (pc, insn) in insns.enumerate() {
        let resolve = |t: Target| -> Result<u32, SeccompError> {
            let to = match t {
                Target::Next => pc + 1,
                Target::Skip(n) => pc + 1 + n,
                Target::Section(i) => starts.get(i).copied().unwrap_or(filter),
                Target::Enosys => enosys,
                Target::Filter => filter,
            };
            to.checked_sub(pc + 1)
                .and_then(|d| u32::try_from(d).ok())
                .ok_or_else(|| stub_error("backward jump"))
        };
        let (k, jt, jf) = if insn.code == JMP_JA {
            (resolve(insn.jt)?, 0, 0)
        } else if insn.code == LD_W_ABS || insn.code == RET_K {
            (insn.k, 0, 0)
        } else {
            let short = |d: u32| u8::try_from(d).map_err(|_| stub_error("jump too long"));
            (insn.k, short(resolve(insn.jt)?)?, short(resolve(insn.jf)?)?)
        };
        program.push(libc::sock_filter {
            code: insn.code,
            jt,
            jf,
            k,
        });
    }
    Ok(program)
}

/// The checks for one audit architecture; the syscall number is loaded first.
fn section(audit: u32, maxima: &[(ScmpArch, u32)]) -> Result<Vec<Insn>, SeccompError> {
    let mut insns = vec![Insn::load(OFFSET_NR)];
    let above = |max: u32| Insn::jump(JMP_JGT_K, max, Target::Enosys, Target::Filter);
    match maxima {
        [(arch, max)] => {
            if matches!(arch, ScmpArch::S390 | ScmpArch::S390X) {
                insns.push(Insn::jump(
                    JMP_JEQ_K,
                    S390_MULTIPLEX_SYSCALL,
                    Target::Enosys,
                    Target::Next,
                ));
            }
            if audit == AUDIT_ARCH_X86_64 {
                // Only one of x86-64 and x32 is in the filter: the other
                // mode's syscalls go to the filter unchanged.
                let (jt, jf) = if *arch == ScmpArch::X32 {
                    (Target::Next, Target::Filter)
                } else {
                    (Target::Filter, Target::Next)
                };
                insns.push(Insn::jump(JMP_JSET_K, X32_SYSCALL_BIT, jt, jf));
            }
            insns.push(above(*max));
        }
        [_, _] if audit == AUDIT_ARCH_X86_64 => {
            let find = |want: ScmpArch| {
                maxima
                    .iter()
                    .find(|(a, _)| *a == want)
                    .map(|(_, max)| *max)
                    .ok_or_else(|| stub_error("x86-64 and x32 expected"))
            };
            let (x86_64, x32) = (find(ScmpArch::X8664)?, find(ScmpArch::X32)?);
            // An x32 syscall skips the x86-64 check.
            insns.push(Insn::jump(
                JMP_JSET_K,
                X32_SYSCALL_BIT,
                Target::Skip(1),
                Target::Next,
            ));
            insns.push(above(x86_64));
            insns.push(above(x32));
        }
        _ => return Err(stub_error("unexpected architecture overlap")),
    }
    Ok(insns)
}

fn stub_error(what: &str) -> SeccompError {
    SeccompError::InvalidField {
        field: super::ROOT.to_owned(),
        reason: format!("building the ENOSYS stub: {what}"),
    }
}
