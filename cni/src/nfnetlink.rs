//! nf_tables spoken directly over netlink (NETLINK_NETFILTER), for the
//! plugins' hot path: applying a batch and listing rules by comment take
//! one socket and a few hundred microseconds, where running `nft` costs a
//! process start, a JSON round trip and a full cache fill each time.
//!
//! The batch is still built with the `nftables` crate's schema (see
//! [`crate::nft`]): one description of the rules, which this module
//! translates into the kernel's expressions, exactly as `nft` would (the
//! integration test `cni_nft` compares the bytecode of both paths). Only
//! what berth writes is translated; anything else is refused by name
//! ([`NfnlError::Unsupported`]) rather than guessed at.
//!
//! Encodings follow `linux/netfilter/nf_tables.h`: message and attribute
//! numbers, 32-bit attributes in network order, expression data in the
//! register's own order (addresses and ports as on the wire, marks,
//! interface indexes and conntrack bits in host order).

use std::ffi::CString;
use std::net::IpAddr;

use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};
use nftables::expr::{
    BinaryOperation, Expression, FibFlag, FibResult, MetaKey, NamedExpression, Payload, SetItem,
};
use nftables::schema::{Chain, FlushObject, NfCmd, NfListObject, NfObject, Rule};
use nftables::stmt::{NAT, NATFamily, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};

#[derive(Debug, thiserror::Error)]
pub enum NfnlError {
    #[error("netfilter netlink socket: {0}")]
    Socket(std::io::Error),
    #[error("netfilter netlink {what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("the kernel refused {what}: {source}")]
    Kernel {
        what: String,
        source: std::io::Error,
    },
    #[error("cannot express in nf_tables netlink: {0}")]
    Unsupported(String),
    #[error("undecodable netfilter netlink reply: {0}")]
    Decode(String),
}

impl NfnlError {
    /// The errno of a refusal or I/O failure.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NfnlError::Io { source, .. }
            | NfnlError::Kernel { source, .. }
            | NfnlError::Socket(source) => source.raw_os_error(),
            _ => None,
        }
    }
}

// Netlink and nfnetlink framing.
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_MULTI: u16 = 0x2;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP_INTR: u16 = 0x10;
const NLM_F_DUMP: u16 = 0x300;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;
const NLA_F_NESTED: u16 = 0x8000;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFNL_SUBSYS_NFTABLES: u16 = 10;

// nf_tables_msg_types.
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_GETRULE: u16 = 7;
const NFT_MSG_DELRULE: u16 = 8;

const NFTA_TABLE_NAME: u16 = 1;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_HANDLE: u16 = 3;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_RULE_USERDATA: u16 = 7;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;
/// nftnl's rule userdata: type-length-value, the comment is type 0 and
/// NUL-terminated.
const UDATA_RULE_COMMENT: u8 = 0;

const NFT_REG_VERDICT: u32 = 0;
const NFT_REG_1: u32 = 1;
const NFT_REG_2: u32 = 2;

const NF_DROP: i32 = 0;
const NF_ACCEPT: i32 = 1;
const NFT_JUMP: i32 = -3;
const NFT_GOTO: i32 = -4;
const NFT_RETURN: i32 = -5;

const NFT_CMP_EQ: u32 = 0;
const NFT_CMP_NEQ: u32 = 1;
const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;
const NFT_META_MARK: u32 = 3;
const NFT_META_IIF: u32 = 4;
const NFT_META_OIF: u32 = 5;
const NFT_META_NFPROTO: u32 = 15;
const NFT_META_L4PROTO: u32 = 16;
const NFT_CT_STATE: u32 = 0;
const NFT_CT_STATUS: u32 = 2;
const NFT_NAT_DNAT: u32 = 1;
const NFT_FIB_RESULT_ADDRTYPE: u32 = 3;
const NFTA_FIB_F_SADDR: u32 = 1;
const NFTA_FIB_F_DADDR: u32 = 2;
const RTN_LOCAL: u32 = 2;
const NFPROTO_INET: u8 = 1;
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_ARP: u8 = 3;
const NFPROTO_NETDEV: u8 = 5;
const NFPROTO_BRIDGE: u8 = 7;
const NFPROTO_IPV6: u8 = 10;

fn family_code(f: NfFamily) -> u8 {
    match f {
        NfFamily::IP => NFPROTO_IPV4,
        NfFamily::IP6 => NFPROTO_IPV6,
        NfFamily::INet => NFPROTO_INET,
        NfFamily::ARP => NFPROTO_ARP,
        NfFamily::Bridge => NFPROTO_BRIDGE,
        NfFamily::NetDev => NFPROTO_NETDEV,
    }
}

/// Netlink messages being written into one buffer.
#[derive(Default)]
struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    /// Starts a message (header + nfgenmsg); returns its offset for
    /// [`Self::end_msg`].
    fn begin_msg(&mut self, ty: u16, flags: u16, seq: u32, family: u8, res_id: u16) -> usize {
        let start = self.buf.len();
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
        self.buf.push(family);
        self.buf.push(0); // NFNETLINK_V0
        self.buf.extend_from_slice(&res_id.to_be_bytes());
        start
    }

    fn end_msg(&mut self, start: usize) {
        self.pad();
        let len = (self.buf.len() - start) as u32;
        self.buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
    }

    fn attr(&mut self, ty: u16, data: &[u8]) {
        let len = (4 + data.len()) as u16;
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.pad();
    }

    fn u32(&mut self, ty: u16, v: u32) {
        self.attr(ty, &v.to_be_bytes());
    }

    fn str(&mut self, ty: u16, s: &str) {
        let mut v = Vec::with_capacity(s.len() + 1);
        v.extend_from_slice(s.as_bytes());
        v.push(0);
        self.attr(ty, &v);
    }

    fn nest(&mut self, ty: u16) -> usize {
        let start = self.buf.len();
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        start
    }

    fn end_nest(&mut self, start: usize) {
        let len = (self.buf.len() - start) as u16;
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
    }

    /// An `NFTA_DATA_VALUE` inside attribute `ty`.
    fn data(&mut self, ty: u16, value: &[u8]) {
        let n = self.nest(ty);
        self.attr(NFTA_DATA_VALUE, value);
        self.end_nest(n);
    }
}

/// One kernel expression of a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Expr {
    Payload { base: u32, offset: u32, len: u32 },
    Meta { key: u32 },
    MetaSet { key: u32 },
    Ct { key: u32 },
    Fib { flags: u32, result: u32 },
    Cmp { op: u32, data: Vec<u8> },
    Bitwise { mask: Vec<u8>, xor: Vec<u8> },
    Immediate { reg: u32, data: Vec<u8> },
    Verdict { code: i32, chain: Option<String> },
    Dnat { family: u8, proto: bool },
    Masq,
}

impl Expr {
    fn write(&self, w: &mut Writer) {
        let elem = w.nest(NFTA_LIST_ELEM);
        let name = match self {
            Expr::Payload { .. } => "payload",
            Expr::Meta { .. } | Expr::MetaSet { .. } => "meta",
            Expr::Ct { .. } => "ct",
            Expr::Fib { .. } => "fib",
            Expr::Cmp { .. } => "cmp",
            Expr::Bitwise { .. } => "bitwise",
            Expr::Immediate { .. } | Expr::Verdict { .. } => "immediate",
            Expr::Dnat { .. } => "nat",
            Expr::Masq => "masq",
        };
        w.str(NFTA_EXPR_NAME, name);
        let data = w.nest(NFTA_EXPR_DATA);
        match self {
            Expr::Payload { base, offset, len } => {
                w.u32(1, NFT_REG_1); // NFTA_PAYLOAD_DREG
                w.u32(2, *base);
                w.u32(3, *offset);
                w.u32(4, *len);
            }
            Expr::Meta { key } => {
                w.u32(1, NFT_REG_1); // NFTA_META_DREG
                w.u32(2, *key);
            }
            Expr::MetaSet { key } => {
                w.u32(2, *key); // NFTA_META_KEY
                w.u32(3, NFT_REG_1); // NFTA_META_SREG
            }
            Expr::Ct { key } => {
                w.u32(1, NFT_REG_1); // NFTA_CT_DREG
                w.u32(2, *key);
            }
            Expr::Fib { flags, result } => {
                w.u32(1, NFT_REG_1); // NFTA_FIB_DREG
                w.u32(2, *result);
                w.u32(3, *flags);
            }
            Expr::Cmp { op, data } => {
                w.u32(1, NFT_REG_1); // NFTA_CMP_SREG
                w.u32(2, *op);
                w.data(3, data);
            }
            Expr::Bitwise { mask, xor } => {
                w.u32(1, NFT_REG_1); // NFTA_BITWISE_SREG
                w.u32(2, NFT_REG_1); // NFTA_BITWISE_DREG
                w.u32(3, mask.len() as u32);
                w.data(4, mask);
                w.data(5, xor);
            }
            Expr::Immediate { reg, data } => {
                w.u32(1, *reg); // NFTA_IMMEDIATE_DREG
                w.data(2, data);
            }
            Expr::Verdict { code, chain } => {
                w.u32(1, NFT_REG_VERDICT);
                let d = w.nest(2); // NFTA_IMMEDIATE_DATA
                let v = w.nest(NFTA_DATA_VERDICT);
                w.u32(NFTA_VERDICT_CODE, *code as u32);
                if let Some(c) = chain {
                    w.str(NFTA_VERDICT_CHAIN, c);
                }
                w.end_nest(v);
                w.end_nest(d);
            }
            Expr::Dnat { family, proto } => {
                w.u32(1, NFT_NAT_DNAT); // NFTA_NAT_TYPE
                w.u32(2, u32::from(*family));
                w.u32(3, NFT_REG_1); // NFTA_NAT_REG_ADDR_MIN
                if *proto {
                    w.u32(5, NFT_REG_2); // NFTA_NAT_REG_PROTO_MIN
                }
            }
            Expr::Masq => {}
        }
        w.end_nest(data);
        w.end_nest(elem);
    }
}

/// What a rule's earlier matches established about the packet's family,
/// so an `ip`/`ip6` field in an inet table gets its `meta nfproto`
/// dependency only when needed (as `nft` does).
struct RuleCx {
    family: NfFamily,
    nfproto: Option<u8>,
    out: Vec<Expr>,
}

fn unsupported(what: impl std::fmt::Display) -> NfnlError {
    NfnlError::Unsupported(what.to_string())
}

/// The type of the value a left-hand side loads, which decides how the
/// right-hand side's text and numbers are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Ip4,
    Ip6,
    Port,
    NfProto,
    L4Proto,
    Ifindex,
    Mark,
    CtState,
    CtStatus,
    AddrType,
}

impl Kind {
    fn len(self) -> usize {
        match self {
            Kind::Ip4 => 4,
            Kind::Ip6 => 16,
            Kind::Port => 2,
            Kind::NfProto | Kind::L4Proto => 1,
            Kind::Ifindex | Kind::Mark | Kind::CtState | Kind::CtStatus | Kind::AddrType => 4,
        }
    }
}

fn ct_bits(kind: Kind, name: &str) -> Option<u32> {
    match (kind, name) {
        (Kind::CtState, "invalid") => Some(1),
        (Kind::CtState, "established") => Some(2),
        (Kind::CtState, "related") => Some(4),
        (Kind::CtState, "new") => Some(8),
        (Kind::CtState, "untracked") => Some(64),
        (Kind::CtStatus, "expected") => Some(1),
        (Kind::CtStatus, "seen-reply") => Some(2),
        (Kind::CtStatus, "assured") => Some(4),
        (Kind::CtStatus, "confirmed") => Some(8),
        (Kind::CtStatus, "snat") => Some(0x10),
        (Kind::CtStatus, "dnat") => Some(0x20),
        (Kind::CtStatus, "dying") => Some(0x200),
        _ => None,
    }
}

/// The bytes of constant `e` as a value of `kind`.
fn constant(kind: Kind, e: &Expression<'_>) -> Result<Vec<u8>, NfnlError> {
    let bad = || unsupported(format!("{e:?} as a {kind:?} value"));
    match e {
        Expression::Number(n) => Ok(match kind {
            Kind::Port => u16::try_from(*n).map_err(|_| bad())?.to_be_bytes().to_vec(),
            Kind::NfProto | Kind::L4Proto => vec![u8::try_from(*n).map_err(|_| bad())?],
            Kind::Ifindex | Kind::Mark | Kind::CtState | Kind::CtStatus | Kind::AddrType => {
                n.to_ne_bytes().to_vec()
            }
            Kind::Ip4 | Kind::Ip6 => return Err(bad()),
        }),
        Expression::String(s) => {
            let s = s.as_ref();
            match kind {
                Kind::Ip4 | Kind::Ip6 => match s.parse::<IpAddr>().map_err(|_| bad())? {
                    IpAddr::V4(a) if kind == Kind::Ip4 => Ok(a.octets().to_vec()),
                    IpAddr::V6(a) if kind == Kind::Ip6 => Ok(a.octets().to_vec()),
                    _ => Err(bad()),
                },
                Kind::NfProto => match s {
                    "ipv4" => Ok(vec![NFPROTO_IPV4]),
                    "ipv6" => Ok(vec![NFPROTO_IPV6]),
                    _ => Err(bad()),
                },
                Kind::L4Proto => match s {
                    "icmp" => Ok(vec![1]),
                    "tcp" => Ok(vec![6]),
                    "udp" => Ok(vec![17]),
                    "icmpv6" => Ok(vec![58]),
                    "sctp" => Ok(vec![132]),
                    _ => Err(bad()),
                },
                Kind::Ifindex => {
                    // Resolved now, in this thread's namespace, as nft does
                    // when it loads `meta iif "NAME"`.
                    let c = CString::new(s).map_err(|_| bad())?;
                    // SAFETY: a valid NUL-terminated string; the call only
                    // reads it.
                    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
                    if index == 0 {
                        return Err(unsupported(format!("no interface named {s:?}")));
                    }
                    Ok(index.to_ne_bytes().to_vec())
                }
                Kind::AddrType if s == "local" => Ok(RTN_LOCAL.to_ne_bytes().to_vec()),
                Kind::CtState | Kind::CtStatus => {
                    Ok(ct_bits(kind, s).ok_or_else(bad)?.to_ne_bytes().to_vec())
                }
                _ => Err(bad()),
            }
        }
        Expression::BinaryOperation(op) => match op.as_ref() {
            // A union of flags, `established | related`.
            BinaryOperation::OR(items) if matches!(kind, Kind::CtState | Kind::CtStatus) => {
                let mut bits = 0u32;
                for i in items {
                    let b = constant(kind, i)?;
                    bits |= u32::from_ne_bytes(b.try_into().map_err(|_| bad())?);
                }
                Ok(bits.to_ne_bytes().to_vec())
            }
            _ => Err(bad()),
        },
        _ => Err(bad()),
    }
}

impl RuleCx {
    fn need_nfproto(&mut self, proto: u8) {
        if matches!(
            self.family,
            NfFamily::INet | NfFamily::Bridge | NfFamily::NetDev
        ) && self.nfproto != Some(proto)
        {
            self.out.push(Expr::Meta {
                key: NFT_META_NFPROTO,
            });
            self.out.push(Expr::Cmp {
                op: NFT_CMP_EQ,
                data: vec![proto],
            });
            self.nfproto = Some(proto);
        }
    }

    /// Emits the load of `e` into register 1; returns what it loaded.
    fn load(&mut self, e: &Expression<'_>) -> Result<Kind, NfnlError> {
        let Expression::Named(named) = e else {
            return Err(unsupported(format!("{e:?} as a left-hand side")));
        };
        match named {
            NamedExpression::Payload(Payload::PayloadField(p)) => {
                let (kind, base, offset) = match (p.protocol.as_ref(), p.field.as_ref()) {
                    ("ip", "saddr") => (Kind::Ip4, NFT_PAYLOAD_NETWORK_HEADER, 12),
                    ("ip", "daddr") => (Kind::Ip4, NFT_PAYLOAD_NETWORK_HEADER, 16),
                    ("ip6", "saddr") => (Kind::Ip6, NFT_PAYLOAD_NETWORK_HEADER, 8),
                    ("ip6", "daddr") => (Kind::Ip6, NFT_PAYLOAD_NETWORK_HEADER, 24),
                    ("th" | "tcp" | "udp" | "sctp", "sport") => {
                        (Kind::Port, NFT_PAYLOAD_TRANSPORT_HEADER, 0)
                    }
                    ("th" | "tcp" | "udp" | "sctp", "dport") => {
                        (Kind::Port, NFT_PAYLOAD_TRANSPORT_HEADER, 2)
                    }
                    (proto, field) => return Err(unsupported(format!("payload {proto} {field}"))),
                };
                match kind {
                    Kind::Ip4 => self.need_nfproto(NFPROTO_IPV4),
                    Kind::Ip6 => self.need_nfproto(NFPROTO_IPV6),
                    _ => {}
                }
                self.out.push(Expr::Payload {
                    base,
                    offset,
                    len: kind.len() as u32,
                });
                Ok(kind)
            }
            NamedExpression::Meta(m) => {
                let (key, kind) = match m.key {
                    MetaKey::Nfproto => (NFT_META_NFPROTO, Kind::NfProto),
                    MetaKey::L4proto => (NFT_META_L4PROTO, Kind::L4Proto),
                    MetaKey::Iif => (NFT_META_IIF, Kind::Ifindex),
                    MetaKey::Oif => (NFT_META_OIF, Kind::Ifindex),
                    MetaKey::Mark => (NFT_META_MARK, Kind::Mark),
                    other => return Err(unsupported(format!("meta {other:?}"))),
                };
                self.out.push(Expr::Meta { key });
                Ok(kind)
            }
            NamedExpression::CT(ct) if ct.family.is_none() && ct.dir.is_none() => {
                let (key, kind) = match ct.key.as_ref() {
                    "state" => (NFT_CT_STATE, Kind::CtState),
                    "status" => (NFT_CT_STATUS, Kind::CtStatus),
                    other => return Err(unsupported(format!("ct {other}"))),
                };
                self.out.push(Expr::Ct { key });
                Ok(kind)
            }
            NamedExpression::Fib(f) if f.result == FibResult::Type => {
                let mut flags = 0;
                for fl in &f.flags {
                    flags |= match fl {
                        FibFlag::Saddr => NFTA_FIB_F_SADDR,
                        FibFlag::Daddr => NFTA_FIB_F_DADDR,
                        other => return Err(unsupported(format!("fib flag {other:?}"))),
                    };
                }
                self.out.push(Expr::Fib {
                    flags,
                    result: NFT_FIB_RESULT_ADDRTYPE,
                });
                Ok(Kind::AddrType)
            }
            other => Err(unsupported(format!("{other:?} as a left-hand side"))),
        }
    }

    fn matches(
        &mut self,
        left: &Expression<'_>,
        op: &Operator,
        right: &Expression<'_>,
    ) -> Result<(), NfnlError> {
        let cmp_op = match op {
            Operator::EQ => NFT_CMP_EQ,
            Operator::NEQ => NFT_CMP_NEQ,
            other => return Err(unsupported(format!("operator {other:?}"))),
        };
        // `left & bits`: load, mask, then compare.
        if let Expression::BinaryOperation(b) = left
            && let BinaryOperation::AND(l, bits) = b.as_ref()
        {
            let kind = self.load(l)?;
            let mask = constant(kind, bits)?;
            let data = constant(kind, right)?;
            self.out.push(Expr::Bitwise {
                xor: vec![0; mask.len()],
                mask,
            });
            self.out.push(Expr::Cmp { op: cmp_op, data });
            return Ok(());
        }
        // `ip daddr != 10.0.0.0/16`: whole bytes are compared by loading
        // only them, the rest through a mask.
        if let Expression::Named(NamedExpression::Prefix(p)) = right {
            let kind = self.load(left)?;
            let addr = constant(kind, &p.addr)?;
            let bits = p.len as usize;
            if bits == 0 || bits > addr.len() * 8 {
                return Err(unsupported(format!("prefix length {bits}")));
            }
            if bits.is_multiple_of(8) {
                if let Some(Expr::Payload { len, .. }) = self.out.last_mut() {
                    *len = (bits / 8) as u32;
                }
                self.out.push(Expr::Cmp {
                    op: cmp_op,
                    data: addr[..bits / 8].to_vec(),
                });
            } else {
                let mask: Vec<u8> = (0..addr.len())
                    .map(|i| {
                        let have = bits.saturating_sub(i * 8).min(8);
                        (0xffu16 << (8 - have)) as u8
                    })
                    .collect();
                let data = addr.iter().zip(&mask).map(|(a, m)| a & m).collect();
                self.out.push(Expr::Bitwise {
                    xor: vec![0; mask.len()],
                    mask,
                });
                self.out.push(Expr::Cmp { op: cmp_op, data });
            }
            return Ok(());
        }
        let kind = self.load(left)?;
        // Conntrack flags match when any of the named bits is set, as
        // `ct state established,related` does.
        if matches!(kind, Kind::CtState | Kind::CtStatus) {
            let bits = match right {
                Expression::Named(NamedExpression::Set(items)) => {
                    let mut bits = 0u32;
                    for i in items {
                        let SetItem::Element(e) = i else {
                            return Err(unsupported("a mapping in a flag set"));
                        };
                        bits |= u32::from_ne_bytes(
                            constant(kind, e)?
                                .try_into()
                                .map_err(|_| unsupported("flag width"))?,
                        );
                    }
                    bits
                }
                other => u32::from_ne_bytes(
                    constant(kind, other)?
                        .try_into()
                        .map_err(|_| unsupported("flag width"))?,
                ),
            };
            self.out.push(Expr::Bitwise {
                mask: bits.to_ne_bytes().to_vec(),
                xor: vec![0; 4],
            });
            self.out.push(Expr::Cmp {
                op: if cmp_op == NFT_CMP_EQ {
                    NFT_CMP_NEQ
                } else {
                    NFT_CMP_EQ
                },
                data: vec![0; 4],
            });
            return Ok(());
        }
        let data = constant(kind, right)?;
        if kind == Kind::NfProto && cmp_op == NFT_CMP_EQ {
            self.nfproto = data.first().copied();
        }
        self.out.push(Expr::Cmp { op: cmp_op, data });
        Ok(())
    }

    fn statement(&mut self, s: &Statement<'_>) -> Result<(), NfnlError> {
        match s {
            Statement::Match(m) => self.matches(&m.left, &m.op, &m.right),
            Statement::Accept(None) => self.verdict(NF_ACCEPT, None),
            Statement::Drop(None) => self.verdict(NF_DROP, None),
            Statement::Return(None) => self.verdict(NFT_RETURN, None),
            Statement::Jump(j) => self.verdict(NFT_JUMP, Some(j.target.to_string())),
            Statement::Goto(j) => self.verdict(NFT_GOTO, Some(j.target.to_string())),
            Statement::Masquerade(None) => {
                self.out.push(Expr::Masq);
                Ok(())
            }
            Statement::DNAT(Some(nat)) => self.dnat(nat),
            Statement::Mangle(m) => self.set_mark(&m.key, &m.value),
            other => Err(unsupported(format!("statement {other:?}"))),
        }
    }

    fn verdict(&mut self, code: i32, chain: Option<String>) -> Result<(), NfnlError> {
        self.out.push(Expr::Verdict { code, chain });
        Ok(())
    }

    /// `meta mark set meta mark | bits`.
    fn set_mark(&mut self, key: &Expression<'_>, value: &Expression<'_>) -> Result<(), NfnlError> {
        let is_mark = |e: &Expression<'_>| matches!(e, Expression::Named(NamedExpression::Meta(m)) if m.key == MetaKey::Mark);
        let bits = match value {
            Expression::BinaryOperation(b) => match b.as_ref() {
                BinaryOperation::OR(items)
                    if items.len() == 2 && is_mark(&items[0]) && is_mark(key) =>
                {
                    match items[1] {
                        Expression::Number(n) => n,
                        _ => return Err(unsupported(format!("mark value {value:?}"))),
                    }
                }
                _ => return Err(unsupported(format!("mark value {value:?}"))),
            },
            _ => return Err(unsupported(format!("mangle {key:?} = {value:?}"))),
        };
        self.out.push(Expr::Meta { key: NFT_META_MARK });
        self.out.push(Expr::Bitwise {
            mask: (!bits).to_ne_bytes().to_vec(),
            xor: bits.to_ne_bytes().to_vec(),
        });
        self.out.push(Expr::MetaSet { key: NFT_META_MARK });
        Ok(())
    }

    fn dnat(&mut self, nat: &NAT<'_>) -> Result<(), NfnlError> {
        if nat.flags.as_ref().is_some_and(|f| !f.is_empty()) {
            return Err(unsupported("dnat flags"));
        }
        let Some(addr) = &nat.addr else {
            return Err(unsupported("dnat without an address"));
        };
        let (kind, family) = match (nat.family, self.family) {
            (Some(NATFamily::IP), _) | (None, NfFamily::IP) => (Kind::Ip4, NFPROTO_IPV4),
            (Some(NATFamily::IP6), _) | (None, NfFamily::IP6) => (Kind::Ip6, NFPROTO_IPV6),
            _ => return Err(unsupported("dnat without a family in this table")),
        };
        self.out.push(Expr::Immediate {
            reg: NFT_REG_1,
            data: constant(kind, addr)?,
        });
        if let Some(port) = &nat.port {
            self.out.push(Expr::Immediate {
                reg: NFT_REG_2,
                data: constant(Kind::Port, port)?,
            });
        }
        self.out.push(Expr::Dnat {
            family,
            proto: nat.port.is_some(),
        });
        Ok(())
    }
}

fn rule_exprs(rule: &Rule<'_>) -> Result<Vec<Expr>, NfnlError> {
    let mut cx = RuleCx {
        family: rule.family,
        nfproto: match rule.family {
            NfFamily::IP => Some(NFPROTO_IPV4),
            NfFamily::IP6 => Some(NFPROTO_IPV6),
            _ => None,
        },
        out: Vec::new(),
    };
    for s in rule.expr.iter() {
        cx.statement(s)?;
    }
    Ok(cx.out)
}

fn hook_num(h: NfHook) -> Result<u32, NfnlError> {
    Ok(match h {
        NfHook::Prerouting => 0,
        NfHook::Input => 1,
        NfHook::Forward => 2,
        NfHook::Output => 3,
        NfHook::Postrouting => 4,
        other => return Err(unsupported(format!("hook {other:?}"))),
    })
}

/// A batch encoded for the kernel: the messages between BATCH_BEGIN and
/// BATCH_END, each asking for an acknowledgement, and a description of
/// each for error messages.
pub struct Encoded {
    buf: Vec<u8>,
    /// (sequence number, what the message does).
    messages: Vec<(u32, String)>,
}

impl Encoded {
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }
}

/// Translates a batch of the `nftables` crate into netlink messages.
pub fn encode(objects: &[NfObject<'_>]) -> Result<Encoded, NfnlError> {
    let mut w = Writer::default();
    let mut messages = Vec::new();
    let mut seq = 1u32;
    let begin = w.begin_msg(
        NFNL_MSG_BATCH_BEGIN,
        NLM_F_REQUEST,
        seq,
        0,
        NFNL_SUBSYS_NFTABLES,
    );
    w.end_msg(begin);
    for o in objects {
        seq += 1;
        let what = encode_one(&mut w, o, seq)?;
        messages.push((seq, what));
    }
    seq += 1;
    let end = w.begin_msg(
        NFNL_MSG_BATCH_END,
        NLM_F_REQUEST,
        seq,
        0,
        NFNL_SUBSYS_NFTABLES,
    );
    w.end_msg(end);
    Ok(Encoded {
        buf: w.buf,
        messages,
    })
}

fn nft_type(msg: u16) -> u16 {
    (NFNL_SUBSYS_NFTABLES << 8) | msg
}

fn encode_one(w: &mut Writer, o: &NfObject<'_>, seq: u32) -> Result<String, NfnlError> {
    let req = NLM_F_REQUEST | NLM_F_ACK;
    match o {
        NfObject::CmdObject(NfCmd::Add(NfListObject::Table(t)))
        | NfObject::ListObject(NfListObject::Table(t)) => {
            let m = w.begin_msg(
                nft_type(NFT_MSG_NEWTABLE),
                req | NLM_F_CREATE,
                seq,
                family_code(t.family),
                0,
            );
            w.str(NFTA_TABLE_NAME, &t.name);
            w.end_msg(m);
            Ok(format!("adding table {}", t.name))
        }
        NfObject::CmdObject(NfCmd::Add(NfListObject::Chain(c)))
        | NfObject::ListObject(NfListObject::Chain(c)) => {
            add_chain(w, c, seq)?;
            Ok(format!("adding chain {} to table {}", c.name, c.table))
        }
        NfObject::CmdObject(NfCmd::Add(NfListObject::Rule(r)))
        | NfObject::ListObject(NfListObject::Rule(r)) => {
            if r.handle.is_some() || r.index.is_some() {
                return Err(unsupported("adding a rule at a position"));
            }
            let exprs = rule_exprs(r)?;
            let m = w.begin_msg(
                nft_type(NFT_MSG_NEWRULE),
                req | NLM_F_CREATE | NLM_F_APPEND,
                seq,
                family_code(r.family),
                0,
            );
            w.str(NFTA_RULE_TABLE, &r.table);
            w.str(NFTA_RULE_CHAIN, &r.chain);
            let list = w.nest(NFTA_RULE_EXPRESSIONS);
            for e in &exprs {
                e.write(w);
            }
            w.end_nest(list);
            if let Some(c) = &r.comment {
                let c = c.as_bytes();
                let len = u8::try_from(c.len() + 1)
                    .map_err(|_| unsupported(format!("a comment of {} bytes", c.len())))?;
                let mut ud = vec![UDATA_RULE_COMMENT, len];
                ud.extend_from_slice(c);
                ud.push(0);
                w.attr(NFTA_RULE_USERDATA, &ud);
            }
            w.end_msg(m);
            Ok(format!(
                "adding a rule to chain {} of table {}",
                r.chain, r.table
            ))
        }
        NfObject::CmdObject(NfCmd::Delete(NfListObject::Rule(r))) => {
            let handle = r
                .handle
                .ok_or_else(|| unsupported("deleting a rule without its handle"))?;
            let m = w.begin_msg(
                nft_type(NFT_MSG_DELRULE),
                req,
                seq,
                family_code(r.family),
                0,
            );
            w.str(NFTA_RULE_TABLE, &r.table);
            w.str(NFTA_RULE_CHAIN, &r.chain);
            w.attr(NFTA_RULE_HANDLE, &u64::from(handle).to_be_bytes());
            w.end_msg(m);
            Ok(format!(
                "deleting rule {handle} of chain {} of table {}",
                r.chain, r.table
            ))
        }
        NfObject::CmdObject(NfCmd::Flush(FlushObject::Chain(c))) => {
            let m = w.begin_msg(
                nft_type(NFT_MSG_DELRULE),
                req,
                seq,
                family_code(c.family),
                0,
            );
            w.str(NFTA_RULE_TABLE, &c.table);
            w.str(NFTA_RULE_CHAIN, &c.name);
            w.end_msg(m);
            Ok(format!("flushing chain {} of table {}", c.name, c.table))
        }
        other => Err(unsupported(format!("{other:?}"))),
    }
}

fn add_chain(w: &mut Writer, c: &Chain<'_>, seq: u32) -> Result<(), NfnlError> {
    if c.newname.is_some() || c.dev.is_some() {
        return Err(unsupported("renaming a chain or binding it to a device"));
    }
    let m = w.begin_msg(
        nft_type(NFT_MSG_NEWCHAIN),
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE,
        seq,
        family_code(c.family),
        0,
    );
    w.str(NFTA_CHAIN_TABLE, &c.table);
    w.str(NFTA_CHAIN_NAME, &c.name);
    match (c.hook, c._type, c.prio) {
        (None, None, None) => {}
        (Some(hook), Some(kind), Some(prio)) => {
            let h = w.nest(NFTA_CHAIN_HOOK);
            w.u32(NFTA_HOOK_HOOKNUM, hook_num(hook)?);
            w.u32(NFTA_HOOK_PRIORITY, prio as u32);
            w.end_nest(h);
            w.str(
                NFTA_CHAIN_TYPE,
                match kind {
                    NfChainType::Filter => "filter",
                    NfChainType::NAT => "nat",
                    NfChainType::Route => "route",
                },
            );
            if let Some(p) = c.policy {
                w.u32(
                    NFTA_CHAIN_POLICY,
                    match p {
                        NfChainPolicy::Accept => NF_ACCEPT as u32,
                        NfChainPolicy::Drop => NF_DROP as u32,
                    },
                );
            }
        }
        _ => {
            return Err(unsupported(
                "a base chain needs its type, hook and priority",
            ));
        }
    }
    w.end_msg(m);
    Ok(())
}

/// A socket to the kernel's nf_tables, in the network namespace of the
/// thread that opens it.
pub struct Nfnl {
    socket: Option<Socket>,
}

impl Drop for Nfnl {
    /// Closing a netfilter socket right after a transaction that removed
    /// something waits in the kernel for the removed objects' RCU grace
    /// period (it flushes nf_tables' deferred destruction), 5 to 20 ms on a
    /// busy node. Nothing needs that wait, so a short-lived thread of its
    /// own does the close.
    fn drop(&mut self) {
        let Some(mut socket) = self.socket.take() else {
            return;
        };
        // An executable's process would wait for that thread before it
        // ends: a child process that outlives it does the close instead.
        if crate::detach::is_executable() {
            match crate::detach::close_after_exit(socket) {
                Ok(()) => return,
                Err(s) => socket = s,
            }
        }
        let spawned = std::thread::Builder::new()
            .name("nfnl-close".into())
            .spawn(move || drop(socket));
        if let Err(e) = spawned {
            tracing::debug!(error = %e, "closing the netfilter socket inline");
        }
    }
}

/// One netlink message as received.
struct Received<'a> {
    ty: u16,
    flags: u16,
    seq: u32,
    payload: &'a [u8],
}

fn messages(mut buf: &[u8]) -> Result<Vec<Received<'_>>, NfnlError> {
    let mut out = Vec::new();
    while buf.len() >= 16 {
        let len = u32::from_ne_bytes(buf[0..4].try_into().unwrap_or_default()) as usize;
        if len < 16 || len > buf.len() {
            return Err(NfnlError::Decode(format!("message length {len}")));
        }
        out.push(Received {
            ty: u16::from_ne_bytes([buf[4], buf[5]]),
            flags: u16::from_ne_bytes([buf[6], buf[7]]),
            seq: u32::from_ne_bytes(buf[8..12].try_into().unwrap_or_default()),
            payload: &buf[16..len],
        });
        let next = len.next_multiple_of(4).min(buf.len());
        buf = &buf[next..];
    }
    Ok(out)
}

/// Attributes (type without flags, value) of a payload.
fn attrs(mut buf: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while buf.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([buf[0], buf[1]]));
        let ty = u16::from_ne_bytes([buf[2], buf[3]]) & 0x3fff;
        if len < 4 || len > buf.len() {
            break;
        }
        out.push((ty, &buf[4..len]));
        buf = &buf[len.next_multiple_of(4).min(buf.len())..];
    }
    out
}

fn c_string(v: &[u8]) -> String {
    let end = v.iter().position(|b| *b == 0).unwrap_or(v.len());
    String::from_utf8_lossy(&v[..end]).into_owned()
}

/// A rule as the kernel lists it: enough to find it and delete it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelRule {
    pub chain: String,
    pub handle: u64,
    pub comment: Option<String>,
}

impl Nfnl {
    pub fn open() -> Result<Self, NfnlError> {
        let mut socket = Socket::new(NETLINK_NETFILTER).map_err(NfnlError::Socket)?;
        socket.bind_auto().map_err(NfnlError::Socket)?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(NfnlError::Socket)?;
        // The kernel answers at once; a bound on the wait only guards
        // against a reply that never comes.
        let tv = libc::timeval {
            tv_sec: 10,
            tv_usec: 0,
        };
        // SAFETY: setsockopt on a socket we own, with a timeval that lives
        // across the call and its exact size.
        let rc = unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&socket),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(NfnlError::Socket(std::io::Error::last_os_error()));
        }
        Ok(Nfnl {
            socket: Some(socket),
        })
    }

    fn socket(&self) -> &Socket {
        // Only Drop takes it.
        self.socket.as_ref().expect("the socket lives until drop")
    }

    fn recv<'a>(&self, rx: &'a mut Vec<u8>, what: &str) -> Result<&'a [u8], NfnlError> {
        rx.clear();
        let n = self.socket().recv(rx, 0).map_err(|source| NfnlError::Io {
            what: what.to_string(),
            source,
        })?;
        Ok(&rx[..n])
    }

    /// Sends `batch` as one transaction and waits for the kernel's answer
    /// to each message: all of it applies, or none (the first refusal is
    /// returned).
    pub fn apply(&self, batch: &Encoded) -> Result<(), NfnlError> {
        if batch.is_empty() {
            return Ok(());
        }
        self.socket()
            .send(&batch.buf, 0)
            .map_err(|source| NfnlError::Io {
                what: "sending a batch".into(),
                source,
            })?;
        let first_seq = batch.messages.first().map(|m| m.0).unwrap_or(0);
        let mut pending: Vec<u32> = batch.messages.iter().map(|m| m.0).collect();
        let mut failure: Option<NfnlError> = None;
        let mut rx = Vec::with_capacity(64 * 1024);
        while !pending.is_empty() {
            let data = self.recv(&mut rx, "reading the batch's acknowledgements")?;
            for m in messages(data)? {
                if m.ty != NLMSG_ERROR || m.payload.len() < 4 {
                    continue;
                }
                let errno = -i32::from_ne_bytes(m.payload[0..4].try_into().unwrap_or_default());
                pending.retain(|s| *s != m.seq);
                if errno != 0 && failure.is_none() {
                    let what = batch
                        .messages
                        .iter()
                        .find(|(s, _)| *s == m.seq)
                        .map(|(_, w)| w.clone())
                        .unwrap_or_else(|| "the batch".into());
                    failure = Some(NfnlError::Kernel {
                        what,
                        source: std::io::Error::from_raw_os_error(errno),
                    });
                }
                // The whole batch refused at commit: one answer for all.
                if errno != 0 && m.seq < first_seq {
                    pending.clear();
                }
            }
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// The rules of table `name` of `family` (none when there is no such
    /// table), with handles and comments.
    pub fn list_rules(&self, family: NfFamily, table: &str) -> Result<Vec<KernelRule>, NfnlError> {
        // A dump interrupted by a concurrent change is started again.
        for _ in 0..10 {
            if let Some(rules) = self.try_list_rules(family, table)? {
                return Ok(rules);
            }
        }
        Err(NfnlError::Io {
            what: format!("listing table {table}"),
            source: std::io::Error::other("the ruleset kept changing during the listing"),
        })
    }

    fn try_list_rules(
        &self,
        family: NfFamily,
        table: &str,
    ) -> Result<Option<Vec<KernelRule>>, NfnlError> {
        let what = format!("listing the rules of table {table}");
        let mut w = Writer::default();
        let m = w.begin_msg(
            nft_type(NFT_MSG_GETRULE),
            NLM_F_REQUEST | NLM_F_DUMP,
            1,
            family_code(family),
            0,
        );
        w.str(NFTA_RULE_TABLE, table);
        w.end_msg(m);
        self.socket()
            .send(&w.buf, 0)
            .map_err(|source| NfnlError::Io {
                what: what.clone(),
                source,
            })?;
        let mut out = Vec::new();
        let mut interrupted = false;
        let mut rx = Vec::with_capacity(64 * 1024);
        loop {
            let data = self.recv(&mut rx, &what)?;
            for m in messages(data)? {
                if m.flags & NLM_F_DUMP_INTR != 0 {
                    interrupted = true;
                }
                match m.ty {
                    NLMSG_DONE => return Ok((!interrupted).then_some(out)),
                    NLMSG_ERROR => {
                        let errno =
                            -i32::from_ne_bytes(m.payload[..4].try_into().unwrap_or_default());
                        if errno == libc::ENOENT {
                            return Ok(Some(Vec::new()));
                        }
                        if errno != 0 {
                            return Err(NfnlError::Kernel {
                                what,
                                source: std::io::Error::from_raw_os_error(errno),
                            });
                        }
                    }
                    ty if ty == nft_type(NFT_MSG_NEWRULE) && m.payload.len() >= 4 => {
                        out.push(parse_rule(&m.payload[4..])?);
                    }
                    _ => {}
                }
                if m.flags & NLM_F_MULTI == 0 && m.ty != NLMSG_ERROR {
                    return Ok(Some(out));
                }
                let _ = m.seq;
            }
        }
    }
}

fn parse_rule(payload: &[u8]) -> Result<KernelRule, NfnlError> {
    let mut chain = None;
    let mut handle = None;
    let mut comment = None;
    for (ty, v) in attrs(payload) {
        match ty {
            NFTA_RULE_CHAIN => chain = Some(c_string(v)),
            NFTA_RULE_HANDLE if v.len() == 8 => {
                handle = Some(u64::from_be_bytes(v.try_into().unwrap_or_default()))
            }
            NFTA_RULE_USERDATA => comment = udata_comment(v),
            _ => {}
        }
    }
    match (chain, handle) {
        (Some(chain), Some(handle)) => Ok(KernelRule {
            chain,
            handle,
            comment,
        }),
        _ => Err(NfnlError::Decode("a rule without chain or handle".into())),
    }
}

fn udata_comment(mut v: &[u8]) -> Option<String> {
    while v.len() >= 2 {
        let (ty, len) = (v[0], usize::from(v[1]));
        let value = v.get(2..2 + len)?;
        if ty == UDATA_RULE_COMMENT {
            return Some(c_string(value));
        }
        v = &v[2 + len..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nft::{self, TableRef};

    fn exprs(stmts: Vec<Statement<'static>>) -> Vec<Expr> {
        let t = TableRef::new(NfFamily::INet, "t");
        let NfListObject::Rule(r) = t.rule("c", stmts, None) else {
            unreachable!()
        };
        rule_exprs(&r).unwrap()
    }

    #[test]
    fn ip_fields_in_inet_tables_get_one_nfproto_dependency() {
        let e = exprs(vec![
            nft::eq(
                nft::payload("ip", "saddr"),
                nft::addr("10.88.0.5".parse().unwrap()),
            ),
            nft::ne(
                nft::payload("ip", "daddr"),
                nft::prefix("10.88.0.0/16".parse().unwrap()),
            ),
            nft::masquerade(),
        ]);
        assert_eq!(
            e,
            vec![
                Expr::Meta {
                    key: NFT_META_NFPROTO
                },
                Expr::Cmp {
                    op: NFT_CMP_EQ,
                    data: vec![2]
                },
                Expr::Payload {
                    base: 1,
                    offset: 12,
                    len: 4
                },
                Expr::Cmp {
                    op: NFT_CMP_EQ,
                    data: vec![10, 88, 0, 5]
                },
                Expr::Payload {
                    base: 1,
                    offset: 16,
                    len: 2
                },
                Expr::Cmp {
                    op: NFT_CMP_NEQ,
                    data: vec![10, 88]
                },
                Expr::Masq,
            ]
        );
    }

    #[test]
    fn odd_prefixes_are_masked() {
        let e = exprs(vec![nft::ne(
            nft::payload("ip", "daddr"),
            nft::prefix("224.0.0.0/4".parse().unwrap()),
        )]);
        assert_eq!(
            e[2..],
            [
                Expr::Payload {
                    base: 1,
                    offset: 16,
                    len: 4
                },
                Expr::Bitwise {
                    mask: vec![0xf0, 0, 0, 0],
                    xor: vec![0; 4]
                },
                Expr::Cmp {
                    op: NFT_CMP_NEQ,
                    data: vec![224, 0, 0, 0]
                },
            ]
        );
    }

    #[test]
    fn an_explicit_nfproto_is_the_dependency() {
        let e = exprs(vec![
            nft::eq(nft::meta(MetaKey::Nfproto), nft::string("ipv6")),
            nft::ne(
                nft::payload("ip6", "daddr"),
                nft::addr("::1".parse().unwrap()),
            ),
            nft::dnat("fd00::5".parse().unwrap(), 80),
        ]);
        assert_eq!(e.len(), 7, "{e:?}");
        assert_eq!(
            e[6],
            Expr::Dnat {
                family: NFPROTO_IPV6,
                proto: true
            }
        );
        assert_eq!(
            e[5],
            Expr::Immediate {
                reg: 2,
                data: vec![0, 80]
            }
        );
    }

    #[test]
    fn unknown_things_are_refused_by_name() {
        let t = TableRef::new(NfFamily::INet, "t");
        let NfListObject::Rule(r) = t.rule(
            "c",
            vec![nft::eq(nft::payload("tcp", "flags"), nft::number(2))],
            None,
        ) else {
            unreachable!()
        };
        let e = rule_exprs(&r).unwrap_err();
        assert!(e.to_string().contains("tcp flags"), "{e}");
    }

    #[test]
    fn a_batch_is_framed_and_comments_are_userdata() {
        let t = TableRef::new(NfFamily::INet, "t");
        let mut b = nft::batch();
        b.add(t.table());
        b.add(t.rule("c", vec![nft::masquerade()], Some("hello")));
        b.add_cmd(t.delete_rule("c", 7));
        let enc = encode(&b.to_nftables().objects).unwrap();
        assert_eq!(enc.messages.len(), 3);
        let msgs = messages(&enc.buf).unwrap();
        assert_eq!(msgs.len(), 5);
        assert_eq!(msgs[0].ty, NFNL_MSG_BATCH_BEGIN);
        assert_eq!(msgs[4].ty, NFNL_MSG_BATCH_END);
        assert_eq!(msgs[2].ty, nft_type(NFT_MSG_NEWRULE));
        let rule = attrs(&msgs[2].payload[4..]);
        let ud = rule
            .iter()
            .find(|(t, _)| *t == NFTA_RULE_USERDATA)
            .unwrap()
            .1;
        assert_eq!(udata_comment(ud).as_deref(), Some("hello"));
        let del = attrs(&msgs[3].payload[4..]);
        assert!(del.contains(&(NFTA_RULE_HANDLE, &7u64.to_be_bytes()[..])));
    }
}
