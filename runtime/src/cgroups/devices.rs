//! Device access rules: normalisation of OCI rules (shared by v1 and v2) and
//! the cgroup v2 device filter, a `BPF_PROG_TYPE_CGROUP_DEVICE` program.
//!
//! cgroups-rs has no v2 device support, so the program is generated and
//! loaded here with raw bpf(2) calls (no extra crates).
//!
//! Semantics, identical for v1 and v2: the cgroup starts from "deny
//! everything", then the rules apply in order and the last matching rule
//! wins (v1 gets a leading `a` deny, v2's program checks the rules last to
//! first and denies when none matches). A type `a` rule matches every
//! device and access, like v1's `a` which resets the list. An allow rule
//! matches when it grants all the requested access; a deny rule matches when
//! it denies any of it.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType};

use super::CgroupError;

pub(crate) const FIELD: &str = "linux.resources.devices";

/// Access bits as the kernel passes them to the program (`BPF_DEVCG_ACC_*`).
pub(crate) const ACC_MKNOD: u32 = 1;
pub(crate) const ACC_READ: u32 = 2;
pub(crate) const ACC_WRITE: u32 = 4;
const ACC_ALL: u32 = ACC_MKNOD | ACC_READ | ACC_WRITE;
/// Device types as the kernel passes them (`BPF_DEVCG_DEV_*`).
pub(crate) const DEV_BLOCK: u32 = 1;
pub(crate) const DEV_CHAR: u32 = 2;

/// Which devices a rule covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    All,
    Char,
    Block,
}

/// A validated device rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rule {
    pub(crate) allow: bool,
    pub(crate) kind: Kind,
    /// `None` is the wildcard.
    pub(crate) major: Option<u32>,
    pub(crate) minor: Option<u32>,
    /// `ACC_*` bits, never 0.
    pub(crate) access: u32,
}

impl Rule {
    /// The v1 `devices.allow`/`devices.deny` line (`"c 1:3 rw"`, `"a"`).
    pub(crate) fn v1_line(&self) -> String {
        let kind = match self.kind {
            Kind::All => return "a".to_string(),
            Kind::Char => 'c',
            Kind::Block => 'b',
        };
        let num = |n: Option<u32>| n.map_or_else(|| "*".to_string(), |n| n.to_string());
        let mut access = String::new();
        for (bit, c) in [(ACC_READ, 'r'), (ACC_WRITE, 'w'), (ACC_MKNOD, 'm')] {
            if self.access & bit != 0 {
                access.push(c);
            }
        }
        format!("{kind} {}:{} {access}", num(self.major), num(self.minor))
    }
}

/// Validate OCI rules. Unset type means `a`, unset or -1 major/minor the
/// wildcard, unset or empty access `rwm`; `u` counts as `c`; `p` (fifo) is
/// not subject to the device cgroup and is an error.
/// One device cgroup rule; `None` for major or minor means any.
pub fn rule(
    allow: bool,
    typ: LinuxDeviceType,
    major: Option<i64>,
    minor: Option<i64>,
    access: &str,
) -> LinuxDeviceCgroup {
    let mut d = LinuxDeviceCgroup::default();
    d.set_allow(allow);
    d.set_typ(Some(typ));
    d.set_major(major);
    d.set_minor(minor);
    d.set_access(Some(access.to_owned()));
    d
}

pub(crate) fn normalize(rules: &[LinuxDeviceCgroup]) -> Result<Vec<Rule>, CgroupError> {
    rules
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let field = format!("{FIELD}[{i}]");
            let kind = match r.typ() {
                None | Some(LinuxDeviceType::A) => Kind::All,
                Some(LinuxDeviceType::C | LinuxDeviceType::U) => Kind::Char,
                Some(LinuxDeviceType::B) => Kind::Block,
                Some(LinuxDeviceType::P) => {
                    return Err(CgroupError::InvalidValue {
                        field: format!("{field}.type"),
                        value: "p".to_string(),
                        reason: "fifos are not controlled by the device cgroup; use a, b or c"
                            .to_string(),
                    });
                }
            };
            let number = |n: Option<i64>, name: &str| match n {
                None | Some(-1) => Ok(None),
                Some(v) => u32::try_from(v)
                    .ok()
                    .filter(|v| *v <= i32::MAX as u32)
                    .map(Some)
                    .ok_or_else(|| CgroupError::InvalidValue {
                        field: format!("{field}.{name}"),
                        value: v.to_string(),
                        reason: "must be -1 (any) or between 0 and 2^31-1".to_string(),
                    }),
            };
            let major = number(r.major(), "major")?;
            let minor = number(r.minor(), "minor")?;
            let access =
                parse_access(r.access().as_deref()).ok_or_else(|| CgroupError::InvalidValue {
                    field: format!("{field}.access"),
                    value: format!("{:?}", r.access().as_deref().unwrap_or("")),
                    reason: "only the letters r, w and m are allowed".to_string(),
                })?;
            Ok(Rule {
                allow: r.allow(),
                kind,
                major,
                minor,
                access,
            })
        })
        .collect()
}

fn parse_access(access: Option<&str>) -> Option<u32> {
    let access = access.unwrap_or("");
    if access.is_empty() {
        return Some(ACC_ALL);
    }
    access.chars().try_fold(0, |bits, c| match c {
        'r' => Some(bits | ACC_READ),
        'w' => Some(bits | ACC_WRITE),
        'm' => Some(bits | ACC_MKNOD),
        _ => None,
    })
}

/// One eBPF instruction (`struct bpf_insn`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub(crate) struct Insn {
    pub(crate) code: u8,
    /// dst_reg:4, src_reg:4 (bitfield order follows the byte order).
    pub(crate) regs: u8,
    pub(crate) off: i16,
    pub(crate) imm: i32,
}

pub(crate) const LDX_MEM_W: u8 = 0x61; // BPF_LDX | BPF_MEM | BPF_W
pub(crate) const ALU32_AND_K: u8 = 0x54; // BPF_ALU | BPF_AND | BPF_K
pub(crate) const ALU32_RSH_K: u8 = 0x74; // BPF_ALU | BPF_RSH | BPF_K
pub(crate) const ALU32_MOV_K: u8 = 0xb4; // BPF_ALU | BPF_MOV | BPF_K
pub(crate) const ALU32_MOV_X: u8 = 0xbc; // BPF_ALU | BPF_MOV | BPF_X
pub(crate) const JNE_K: u8 = 0x55; // BPF_JMP | BPF_JNE | BPF_K
pub(crate) const JEQ_K: u8 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
pub(crate) const JNE_X: u8 = 0x5d; // BPF_JMP | BPF_JNE | BPF_X
pub(crate) const EXIT: u8 = 0x95; // BPF_JMP | BPF_EXIT

impl Insn {
    const fn new(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Self {
        let regs = if cfg!(target_endian = "little") {
            (dst & 0x0f) | (src << 4)
        } else {
            (dst << 4) | (src & 0x0f)
        };
        Insn {
            code,
            regs,
            off,
            imm,
        }
    }

    #[cfg(test)]
    pub(crate) fn dst(&self) -> u8 {
        if cfg!(target_endian = "little") {
            self.regs & 0x0f
        } else {
            self.regs >> 4
        }
    }

    #[cfg(test)]
    pub(crate) fn src(&self) -> u8 {
        if cfg!(target_endian = "little") {
            self.regs >> 4
        } else {
            self.regs & 0x0f
        }
    }
}

/// Numbers fit i32 by construction (validated in `normalize`).
fn imm(v: u32) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}

/// Generate the filter program for `rules` (see the module docs).
///
/// Registers: R2 device type, R3 requested access, R4 major, R5 minor,
/// R1 scratch, R0 the verdict (1 allow, 0 deny).
pub(crate) fn program(rules: &[Rule]) -> Vec<Insn> {
    let mut p = vec![
        // struct bpf_cgroup_dev_ctx { u32 access_type; u32 major; u32 minor; }
        Insn::new(LDX_MEM_W, 2, 1, 0, 0),
        Insn::new(ALU32_AND_K, 2, 0, 0, 0xffff),
        Insn::new(LDX_MEM_W, 3, 1, 0, 0),
        Insn::new(ALU32_RSH_K, 3, 0, 0, 16),
        Insn::new(LDX_MEM_W, 4, 1, 4, 0),
        Insn::new(LDX_MEM_W, 5, 1, 8, 0),
    ];
    let verdict = |allow: bool| {
        [
            Insn::new(ALU32_MOV_K, 0, 0, 0, i32::from(allow)),
            Insn::new(EXIT, 0, 0, 0, 0),
        ]
    };
    for rule in rules.iter().rev() {
        let dev = match rule.kind {
            Kind::All => {
                // Matches everything: whatever comes after is unreachable,
                // and the verifier rejects unreachable code.
                p.extend(verdict(rule.allow));
                return p;
            }
            Kind::Char => DEV_CHAR,
            Kind::Block => DEV_BLOCK,
        };
        // Conditional jumps to the next block; offsets patched below.
        let mut block = vec![Insn::new(JNE_K, 2, 0, 0, imm(dev))];
        if rule.allow && rule.access != ACC_ALL {
            // All requested bits must be granted: (req & granted) == req.
            block.push(Insn::new(ALU32_MOV_X, 1, 3, 0, 0));
            block.push(Insn::new(ALU32_AND_K, 1, 0, 0, imm(rule.access)));
            block.push(Insn::new(JNE_X, 1, 3, 0, 0));
        } else if !rule.allow && rule.access != ACC_ALL {
            // Any requested bit denied: (req & denied) != 0.
            block.push(Insn::new(ALU32_MOV_X, 1, 3, 0, 0));
            block.push(Insn::new(ALU32_AND_K, 1, 0, 0, imm(rule.access)));
            block.push(Insn::new(JEQ_K, 1, 0, 0, 0));
        }
        if let Some(major) = rule.major {
            block.push(Insn::new(JNE_K, 4, 0, 0, imm(major)));
        }
        if let Some(minor) = rule.minor {
            block.push(Insn::new(JNE_K, 5, 0, 0, imm(minor)));
        }
        block.extend(verdict(rule.allow));
        let len = block.len();
        for (i, insn) in block.iter_mut().enumerate() {
            if matches!(insn.code, JNE_K | JEQ_K | JNE_X) {
                // Jump past the end of the block: from i+1 to len.
                insn.off = i16::try_from(len - (i + 1)).unwrap_or(i16::MAX);
            }
        }
        p.extend(block);
    }
    p.extend(verdict(false));
    p
}

// ---- bpf(2) ----------------------------------------------------------------

const BPF_PROG_LOAD: libc::c_int = 5;
const BPF_PROG_ATTACH: libc::c_int = 8;
const BPF_PROG_DETACH: libc::c_int = 9;
const BPF_PROG_GET_FD_BY_ID: libc::c_int = 13;
const BPF_PROG_QUERY: libc::c_int = 16;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 2;

/// The `BPF_PROG_LOAD` prefix of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// The `BPF_PROG_ATTACH`/`BPF_PROG_DETACH` prefix of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct AttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

/// The `BPF_PROG_QUERY` prefix of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct QueryAttr {
    target_fd: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
    _pad: u32,
}

/// The `BPF_PROG_GET_FD_BY_ID` prefix of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct GetFdAttr {
    prog_id: u32,
    next_id: u32,
    open_flags: u32,
}

/// Marker for the attr structs above: plain `repr(C)` data the kernel may
/// read and write.
trait BpfAttr {}
impl BpfAttr for ProgLoadAttr {}
impl BpfAttr for AttachAttr {}
impl BpfAttr for QueryAttr {}
impl BpfAttr for GetFdAttr {}

fn bpf<T: BpfAttr>(cmd: libc::c_int, attr: &mut T) -> io::Result<libc::c_long> {
    let size = libc::c_uint::try_from(size_of::<T>()).unwrap_or(libc::c_uint::MAX);
    // SAFETY: `attr` is an exclusively borrowed, fully initialised repr(C)
    // prefix of `union bpf_attr` for `cmd` and `size` is exactly its size, so
    // the kernel reads and writes only memory we own. Any pointers inside it
    // (instructions, license, log buffer, id array) are set by the callers to
    // buffers that outlive this call, with the lengths given alongside.
    let ret = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, size) };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn owned_fd(raw: libc::c_long) -> io::Result<OwnedFd> {
    let fd = RawFd::try_from(raw).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: `fd` was just returned by a successful bpf(2) call that creates
    // a new file descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn fd_u32(fd: &impl AsRawFd) -> u32 {
    u32::try_from(fd.as_raw_fd()).unwrap_or(u32::MAX)
}

/// Load the program; on failure the error comes with the verifier log.
fn load(insns: &[Insn]) -> Result<OwnedFd, (io::Error, String)> {
    const LICENSE: &[u8] = b"Apache-2.0\0";
    let mut name = [0u8; 16];
    name[..13].copy_from_slice(b"berth_devices");
    let insn_cnt = u32::try_from(insns.len())
        .map_err(|_| (io::Error::from_raw_os_error(libc::E2BIG), String::new()))?;
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt,
        insns: insns.as_ptr() as u64,
        license: LICENSE.as_ptr() as u64,
        prog_name: name,
        ..Default::default()
    };
    match bpf(BPF_PROG_LOAD, &mut attr) {
        Ok(fd) => owned_fd(fd).map_err(|e| (e, String::new())),
        Err(first) => {
            // Load again with a log buffer, only to explain the failure.
            let mut log = vec![0u8; 1 << 16];
            attr.log_level = 1;
            attr.log_size = u32::try_from(log.len()).unwrap_or(0);
            attr.log_buf = log.as_mut_ptr() as u64;
            if let Ok(fd) = bpf(BPF_PROG_LOAD, &mut attr) {
                return owned_fd(fd).map_err(|e| (e, String::new()));
            }
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            let text = String::from_utf8_lossy(log.get(..end).unwrap_or(&[]))
                .trim()
                .to_string();
            Err((first, text))
        }
    }
}

/// Ids of the device programs attached to `dir`.
fn query(dir: &File) -> io::Result<Vec<u32>> {
    let mut ids = vec![0u32; 64];
    for _ in 0..3 {
        let mut attr = QueryAttr {
            target_fd: fd_u32(dir),
            attach_type: BPF_CGROUP_DEVICE,
            prog_ids: ids.as_mut_ptr() as u64,
            prog_cnt: u32::try_from(ids.len()).unwrap_or(0),
            ..Default::default()
        };
        match bpf(BPF_PROG_QUERY, &mut attr) {
            Ok(_) => {
                ids.truncate(attr.prog_cnt as usize);
                return Ok(ids);
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => {
                ids = vec![0u32; (attr.prog_cnt as usize).max(ids.len() * 2)];
            }
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::from_raw_os_error(libc::ENOSPC))
}

/// Replace the device filter of the cgroup at `dir` with one for `rules`.
///
/// The new program is attached (with `BPF_F_ALLOW_MULTI`) before the old ones
/// are detached; while both are attached a device must pass both, so there
/// is never a moment with more access than either rule set grants.
pub(crate) fn apply_v2(dir: &Path, rules: &[Rule]) -> Result<(), CgroupError> {
    let err = |op: &'static str, source: io::Error, log: String| CgroupError::Bpf {
        field: FIELD.to_string(),
        path: dir.to_path_buf(),
        op,
        source,
        log: if log.is_empty() {
            log
        } else {
            format!("\nverifier log:\n{log}")
        },
    };
    let cgroup = File::open(dir).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            CgroupError::NotFound {
                path: dir.to_path_buf(),
            }
        } else {
            err("open cgroup directory", e, String::new())
        }
    })?;
    let old = query(&cgroup).map_err(|e| err("BPF_PROG_QUERY", e, String::new()))?;
    let prog = load(&program(rules)).map_err(|(e, log)| err("BPF_PROG_LOAD", e, log))?;
    let mut attach = AttachAttr {
        target_fd: fd_u32(&cgroup),
        attach_bpf_fd: fd_u32(&prog),
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
        ..Default::default()
    };
    bpf(BPF_PROG_ATTACH, &mut attach).map_err(|e| err("BPF_PROG_ATTACH", e, String::new()))?;
    for id in old {
        let mut get = GetFdAttr {
            prog_id: id,
            ..Default::default()
        };
        let old_prog = match bpf(BPF_PROG_GET_FD_BY_ID, &mut get).and_then(owned_fd) {
            Ok(fd) => fd,
            // Detached and freed meanwhile.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(e) => return Err(err("BPF_PROG_GET_FD_BY_ID", e, String::new())),
        };
        let mut detach = AttachAttr {
            target_fd: fd_u32(&cgroup),
            attach_bpf_fd: fd_u32(&old_prog),
            attach_type: BPF_CGROUP_DEVICE,
            ..Default::default()
        };
        match bpf(BPF_PROG_DETACH, &mut detach) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(err("BPF_PROG_DETACH", e, String::new())),
        }
    }
    Ok(())
}

/// How many device programs are attached to `dir`.
#[cfg(test)]
pub(crate) fn attached_count(dir: &Path) -> io::Result<usize> {
    Ok(query(&File::open(dir)?)?.len())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use oci_spec::runtime::LinuxDeviceCgroupBuilder;

    /// A tiny interpreter for the instructions `program` emits.
    pub(crate) fn run(prog: &[Insn], dev: u32, major: u32, minor: u32, access: u32) -> u64 {
        let ctx = [dev | (access << 16), major, minor];
        let mut r = [0u64; 11];
        let mut pc = 0usize;
        for _ in 0..10_000 {
            let i = prog[pc];
            let (d, s) = (usize::from(i.dst()), usize::from(i.src()));
            pc += 1;
            let target = |pc: usize| pc.wrapping_add_signed(isize::from(i.off));
            match i.code {
                LDX_MEM_W => {
                    assert_eq!(s, 1, "only ctx loads");
                    r[d] = u64::from(ctx[usize::try_from(i.off).expect("offset") / 4]);
                }
                ALU32_AND_K => r[d] = u64::from((r[d] as u32) & (i.imm as u32)),
                ALU32_RSH_K => r[d] = u64::from((r[d] as u32) >> i.imm),
                ALU32_MOV_K => r[d] = u64::from(i.imm as u32),
                ALU32_MOV_X => r[d] = u64::from(r[s] as u32),
                JNE_K if r[d] != i.imm as i64 as u64 => pc = target(pc),
                JEQ_K if r[d] == i.imm as i64 as u64 => pc = target(pc),
                JNE_X if r[d] != r[s] => pc = target(pc),
                JNE_K | JEQ_K | JNE_X => {}
                EXIT => return r[0],
                other => panic!("unexpected opcode {other:#x}"),
            }
        }
        panic!("program did not terminate")
    }

    const R: u32 = ACC_READ;
    const W: u32 = ACC_WRITE;
    const M: u32 = ACC_MKNOD;

    #[test]
    fn typical_container_rules() {
        use LinuxDeviceType::{A, B, C};
        let rules = normalize(&[
            rule(false, A, None, None, "rwm"),
            rule(true, C, Some(1), Some(3), "rwm"), // /dev/null
            rule(true, C, Some(136), None, "rw"),   // ptys
            rule(true, C, None, None, "m"),         // mknod any char
            rule(false, C, Some(1), Some(3), "w"),  // then: no writes to null
            rule(true, B, Some(8), Some(0), "r"),
        ])
        .expect("valid");
        let p = program(&rules);
        let ok = |dev, ma, mi, acc| run(&p, dev, ma, mi, acc) == 1;
        assert!(ok(DEV_CHAR, 1, 3, R));
        assert!(!ok(DEV_CHAR, 1, 3, W), "later deny w wins");
        assert!(!ok(DEV_CHAR, 1, 3, R | W), "deny of any requested bit");
        assert!(ok(DEV_CHAR, 1, 3, M), "allow c *:* m");
        assert!(ok(DEV_CHAR, 136, 7, R | W));
        assert!(ok(DEV_CHAR, 136, 7, M), "allow c *:* m");
        assert!(
            !ok(DEV_CHAR, 136, 7, R | W | M),
            "no single rule grants rwm"
        );
        assert!(!ok(DEV_CHAR, 1, 5, R), "/dev/zero not allowed");
        assert!(ok(DEV_BLOCK, 8, 0, R));
        assert!(!ok(DEV_BLOCK, 8, 0, W), "allow r does not cover w");
        assert!(!ok(DEV_BLOCK, 8, 1, R));
        assert!(
            !ok(DEV_BLOCK, 1, 3, R),
            "char rules do not match block devices"
        );
    }

    #[test]
    fn last_match_wins_and_wildcards() {
        use LinuxDeviceType::{A, C};
        // Empty list: deny everything.
        let p = program(&[]);
        assert_eq!(run(&p, DEV_CHAR, 1, 3, R), 0);

        // allow all, then deny one device.
        let rules = normalize(&[
            rule(true, A, None, None, "rwm"),
            rule(false, C, Some(1), Some(5), "rwm"),
        ])
        .expect("valid");
        let p = program(&rules);
        assert_eq!(run(&p, DEV_CHAR, 1, 5, R), 0);
        assert_eq!(run(&p, DEV_CHAR, 1, 3, R | W), 1);
        assert_eq!(run(&p, DEV_BLOCK, 8, 0, W), 1);

        // A trailing `a` rule overrides everything before it, and nothing
        // after the unconditional verdict is emitted.
        let rules = normalize(&[
            rule(true, C, Some(1), Some(3), "rwm"),
            rule(false, A, Some(1), Some(3), "r"),
        ])
        .expect("valid");
        let p = program(&rules);
        assert_eq!(run(&p, DEV_CHAR, 1, 3, R), 0);
        assert_eq!(p.len(), 8);
        assert_eq!(p.last().map(|i| i.code), Some(EXIT));
    }

    #[test]
    fn jump_offsets_stay_inside_the_program() {
        use LinuxDeviceType::{B, C};
        let rules = normalize(&[
            rule(true, C, Some(10), Some(200), "rw"),
            rule(false, B, None, Some(1), "m"),
            rule(true, C, None, None, "rwm"),
        ])
        .expect("valid");
        let p = program(&rules);
        for (pc, insn) in p.iter().enumerate() {
            if matches!(insn.code, JNE_K | JEQ_K | JNE_X) {
                let target = pc as isize + 1 + isize::from(insn.off);
                assert!(
                    insn.off > 0 && (target as usize) < p.len(),
                    "insn {pc}: {insn:?}"
                );
            }
        }
        assert_eq!(run(&p, DEV_CHAR, 4, 4, M), 1);
        assert_eq!(run(&p, DEV_BLOCK, 7, 1, M), 0);
        assert_eq!(run(&p, DEV_BLOCK, 7, 1, R), 0, "default deny");
    }

    fn arb_type() -> impl proptest::strategy::Strategy<Value = LinuxDeviceType> {
        proptest::sample::select(vec![
            LinuxDeviceType::A,
            LinuxDeviceType::B,
            LinuxDeviceType::C,
            LinuxDeviceType::U,
            LinuxDeviceType::P,
        ])
    }

    proptest::proptest! {
        /// Any rule list either is rejected or yields a program that
        /// terminates and agrees with a direct last-match-wins evaluation.
        #[test]
        fn program_matches_reference(
            raw in proptest::collection::vec(
                (proptest::bool::ANY, arb_type(), proptest::option::of(-2i64..6), proptest::option::of(-2i64..6), "[rwmx]{0,3}"),
                0..8,
            ),
            dev in proptest::sample::select(vec![DEV_CHAR, DEV_BLOCK]),
            major in 0u32..6,
            minor in 0u32..6,
            access in 1u32..8,
        ) {
            let rules: Vec<LinuxDeviceCgroup> =
                raw.iter().map(|(a, t, ma, mi, acc)| rule(*a, *t, *ma, *mi, acc)).collect();
            let Ok(rules) = normalize(&rules) else { return Ok(()) };
            let p = program(&rules);
            let expected = rules.iter().rev().find(|r| {
                let kind = match r.kind {
                    Kind::All => return true,
                    Kind::Char => DEV_CHAR,
                    Kind::Block => DEV_BLOCK,
                };
                let access_matches = if r.allow { access & r.access == access } else { access & r.access != 0 };
                kind == dev
                    && r.major.is_none_or(|m| m == major)
                    && r.minor.is_none_or(|m| m == minor)
                    && access_matches
            }).is_some_and(|r| r.allow);
            proptest::prop_assert_eq!(run(&p, dev, major, minor, access), u64::from(expected));
        }
    }

    #[test]
    fn normalisation_and_v1_lines() {
        let defaults = LinuxDeviceCgroupBuilder::default()
            .allow(true)
            .build()
            .expect("rule");
        let r = normalize(&[defaults]).expect("valid");
        assert_eq!(
            r[0],
            Rule {
                allow: true,
                kind: Kind::All,
                major: None,
                minor: None,
                access: ACC_ALL
            }
        );
        assert_eq!(r[0].v1_line(), "a");

        let r =
            normalize(&[rule(true, LinuxDeviceType::U, Some(-1), Some(3), "wm")]).expect("valid");
        assert_eq!(r[0].v1_line(), "c *:3 wm");

        for (bad, field) in [
            (
                rule(true, LinuxDeviceType::C, Some(-2), None, "r"),
                "linux.resources.devices[0].major",
            ),
            (
                rule(true, LinuxDeviceType::C, None, Some(1 << 40), "r"),
                "linux.resources.devices[0].minor",
            ),
            (
                rule(true, LinuxDeviceType::C, None, None, "rx"),
                "linux.resources.devices[0].access",
            ),
            (
                rule(true, LinuxDeviceType::P, None, None, "r"),
                "linux.resources.devices[0].type",
            ),
        ] {
            let msg = normalize(&[bad])
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(msg.starts_with(field), "{msg}");
        }
    }
}
