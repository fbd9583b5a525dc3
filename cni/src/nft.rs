//! berth's nftables rules, for every component that filters or translates
//! packets: the bridge plugin (ipMasq), portmap, and later the service
//! proxy. Rules are described with the `nftables` crate's schema (the JSON
//! of `nft -j`); [`Nft::apply`] and the listings that find our rules
//! ([`Nft::list_rules`], [`Nft::apply_listed`], the `delete_rules_*`
//! family) talk to the kernel over netlink ([`crate::nfnetlink`]), which
//! is what keeps pod setup fast; [`Nft::list_table`] (rules with their
//! statements, for CHECK) and [`Nft::probe`] run the `nft` program.
//!
//! Conventions, so berth never disturbs what it did not create:
//! - each user works only in its own tables ([`TableRef`]: a family and a
//!   name such as `inet berth-bridge`); nothing here flushes or deletes a
//!   table, and [`TableRef::flush_chain`] is for chains of ours only;
//! - every rule made for one owner (a container's attachment) carries a
//!   comment naming it ([`comment`] makes any text fit), so removal finds
//!   exactly that owner's rules by comment ([`Nft::rules_with_comment`],
//!   [`Nft::delete_rules_with_comment`], [`Nft::delete_rules_where`]) and
//!   deletes them by handle;
//! - changes go in one batch, which nft applies atomically ([`Nft::apply`]);
//!   adding a table or chain that exists is a no-op, so a batch starting
//!   with them needs no locking against concurrent runs. A batch deleting
//!   a rule that a concurrent run deleted after we listed it fails as a
//!   whole; [`Nft::apply_listed`] then lists and builds it again.
//!
//! Removal needs only chains, handles and comments, so its listing reads
//! nothing else: an expression this code does not know must never make our
//! own rules undeletable. `nft` listings are read as plain JSON for the
//! same reason. The expression builders at the end ([`payload`], [`eq`],
//! [`dnat`], ...) cover what berth writes, and what the netlink encoder
//! translates.
//!
//! Each call works in the network namespace of the calling thread.
//!
//! ```no_run
//! use berth_cni::nft::{self, NfChainType, NfFamily, NfHook, Nft, TableRef};
//!
//! let nft = Nft::locate();
//! let t = TableRef::new(NfFamily::INet, "berth-example");
//! let mut b = nft::batch();
//! b.add(t.table());
//! b.add(t.base_chain("postrouting", NfChainType::NAT, NfHook::Postrouting, 100));
//! b.add(t.rule("postrouting", vec![nft::masquerade()], Some("example:container-1")));
//! nft.apply(b)?;
//! nft.delete_rules_with_comment(&t, "example:container-1")?;
//! # Ok::<(), nft::NftError>(())
//! ```

use std::borrow::Cow;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
pub use nftables::batch::Batch;
use nftables::expr::{
    BinaryOperation, CT, Expression, Fib, FibFlag, FibResult, Meta, MetaKey, NamedExpression,
    Payload, PayloadField, Prefix, SetItem,
};
use nftables::helper::{self, NftablesError};
use nftables::schema::{Chain, FlushObject, NfCmd, NfListObject, Rule, Table};
use nftables::stmt::{JumpTarget, Mangle, Match, NAT, NATFamily, Operator, Statement};
use nftables::types::NfChainPolicy;
pub use nftables::types::{NfChainType, NfFamily, NfHook};
use serde_json::Value;

use crate::nfnetlink::{self, Nfnl};

/// The longest comment nft accepts back when it reads a ruleset it printed
/// (`nft -f`); `nft -j` would take longer ones, but a saved ruleset holding
/// them could not be restored.
pub const MAX_COMMENT: usize = 128;

/// How often [`Nft::apply_listed`] builds and applies its batch when a rule
/// it deletes vanished between the listing and the batch.
const ATTEMPTS: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("cannot run {program}: {source}")]
    Run {
        program: PathBuf,
        source: std::io::Error,
    },
    #[error("nft failed {what}: {stderr}")]
    Failed { what: String, stderr: String },
    #[error("cannot read what nft printed {what}: {detail}")]
    Output { what: String, detail: String },
    #[error("nf_tables {what}: {source}")]
    Netlink {
        what: String,
        source: crate::nfnetlink::NfnlError,
    },
}

impl NftError {
    /// Whether nft said the object does not exist (ENOENT), e.g. listing a
    /// table nobody created yet, or deleting a rule someone else deleted.
    pub fn is_not_found(&self) -> bool {
        match self {
            NftError::Failed { stderr, .. } => stderr.contains("No such file or directory"),
            NftError::Netlink { source, .. } => source.errno() == Some(libc::ENOENT),
            _ => false,
        }
    }

    /// Whether the `nft` executable itself is missing: then nothing of
    /// ours can exist in the kernel either.
    pub fn is_program_missing(&self) -> bool {
        matches!(self, NftError::Run { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }

    fn from_crate(what: &str, e: NftablesError) -> Self {
        match e {
            NftablesError::NftExecution { program, inner } => NftError::Run {
                program: program.into(),
                source: inner,
            },
            NftablesError::NftFailed { stderr, stdout, .. } => NftError::Failed {
                what: what.to_string(),
                stderr: if stderr.trim().is_empty() {
                    stdout.trim().to_string()
                } else {
                    stderr.trim().to_string()
                },
            },
            NftablesError::NftOutputEncoding { inner, .. } => NftError::Output {
                what: what.to_string(),
                detail: inner.to_string(),
            },
            NftablesError::NftInvalidJson(e) => NftError::Output {
                what: what.to_string(),
                detail: e.to_string(),
            },
        }
    }
}

/// The `nft` executable; every call that reaches the kernel goes through it.
#[derive(Debug, Clone)]
pub struct Nft {
    program: PathBuf,
}

impl Nft {
    pub fn new(program: impl Into<PathBuf>) -> Self {
        Nft {
            program: program.into(),
        }
    }

    /// `nft` from `PATH`, else from the sbin dirs: runtimes often exec
    /// plugins with a bare environment.
    pub fn locate() -> Self {
        let in_path = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
            .unwrap_or_default();
        let found = in_path
            .iter()
            .map(PathBuf::as_path)
            .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(Path::new))
            .map(|d| d.join("nft"))
            .find(|p| p.is_file());
        Nft::new(found.unwrap_or_else(|| PathBuf::from("nft")))
    }

    pub fn program(&self) -> &Path {
        &self.program
    }

    /// Applies `batch` in one transaction: all of it or nothing. Goes to
    /// the kernel over netlink, not through `nft` (see [`crate::nfnetlink`]).
    pub fn apply(&self, batch: Batch<'_>) -> Result<(), NftError> {
        let nl = open_netlink()?;
        apply_netlink(&nl, batch)
    }

    /// Applies `batch` through the `nft` program: what the netlink path is
    /// checked against.
    pub fn apply_with_program(&self, batch: Batch<'_>) -> Result<(), NftError> {
        let doc = batch.to_nftables();
        helper::apply_ruleset_with_args(&doc, Some(&self.program), helper::DEFAULT_ARGS)
            .map_err(|e| NftError::from_crate("applying a batch", e))
    }

    /// Lists `table`'s rules (chain, handle, comment; no statements) over
    /// netlink: a missing table lists as empty.
    pub fn list_rules(&self, table: &TableRef) -> Result<Listing, NftError> {
        list_netlink(&open_netlink()?, table)
    }

    /// Lists `table` through `nft`, with every rule's statements; `None`
    /// when it does not exist.
    pub fn list_table(&self, table: &TableRef) -> Result<Option<Listing>, NftError> {
        let fam = family_name(table.family);
        let what = format!("listing table {fam} {}", table.name);
        let raw = match helper::get_current_ruleset_raw(
            Some(&self.program),
            ["list", "table", fam, &table.name],
        ) {
            Ok(raw) => raw,
            Err(e) => {
                let e = NftError::from_crate(&what, e);
                return if e.is_not_found() { Ok(None) } else { Err(e) };
            }
        };
        Listing::parse(&raw)
            .map(Some)
            .map_err(|detail| NftError::Output { what, detail })
    }

    /// Whether nft runs and can talk to the kernel.
    pub fn probe(&self) -> Result<(), NftError> {
        helper::get_current_ruleset_raw(Some(&self.program), ["list", "tables"])
            .map(|_| ())
            .map_err(|e| NftError::from_crate("listing tables", e))
    }

    /// Lists `table`, lets `build` make a batch from what is there (`None`
    /// for the listing: no such table; `None` from `build`: nothing to do)
    /// and applies it. When the batch fails because something it deletes is
    /// gone (a concurrent run removed it after our listing), starts over
    /// from a fresh listing, a few times; so `build` may run more than once.
    pub fn apply_listed(
        &self,
        table: &TableRef,
        mut build: impl FnMut(Option<&Listing>) -> Option<Batch<'static>>,
    ) -> Result<(), NftError> {
        let nl = open_netlink()?;
        let mut attempt = 1;
        loop {
            let listing = list_netlink(&nl, table)?;
            let Some(batch) = build(Some(&listing)) else {
                return Ok(());
            };
            match apply_netlink(&nl, batch) {
                Err(e) if e.is_not_found() && attempt < ATTEMPTS => attempt += 1,
                other => return other,
            }
        }
    }

    /// The rules of `table` whose comment is exactly `comment` (none when
    /// the table does not exist).
    pub fn rules_with_comment(
        &self,
        table: &TableRef,
        comment: &str,
    ) -> Result<Vec<ListedRule>, NftError> {
        Ok(self
            .list_rules(table)?
            .rules
            .into_iter()
            .filter(|r| r.comment.as_deref() == Some(comment))
            .collect())
    }

    /// Deletes, in one transaction, the rules of `table` for which `doomed`
    /// holds; returns how many went. Idempotent: a missing table or no such
    /// rule is not an error, and a rule someone else deleted meanwhile is
    /// looked up again ([`Self::apply_listed`]).
    pub fn delete_rules_where(
        &self,
        table: &TableRef,
        doomed: impl Fn(&ListedRule) -> bool,
    ) -> Result<usize, NftError> {
        let mut deleted = 0;
        self.apply_listed(table, |listing| {
            let rules: Vec<_> = listing?.rules.iter().filter(|r| doomed(r)).collect();
            deleted = rules.len();
            if rules.is_empty() {
                return None;
            }
            let mut b = batch();
            for r in rules {
                b.add_cmd(table.delete_rule(&r.chain, r.handle));
            }
            Some(b)
        })?;
        Ok(deleted)
    }

    /// Deletes every rule of `table` whose comment is `comment` (as
    /// [`Self::delete_rules_where`]); returns how many went.
    pub fn delete_rules_with_comment(
        &self,
        table: &TableRef,
        comment: &str,
    ) -> Result<usize, NftError> {
        self.delete_rules_where(table, |r| r.comment.as_deref() == Some(comment))
    }
}

fn open_netlink() -> Result<Nfnl, NftError> {
    Nfnl::open().map_err(|source| NftError::Netlink {
        what: "opening a socket".into(),
        source,
    })
}

fn apply_netlink(nl: &Nfnl, batch: Batch<'_>) -> Result<(), NftError> {
    let doc = batch.to_nftables();
    let what = || "applying a batch".to_string();
    let enc = nfnetlink::encode(&doc.objects).map_err(|source| NftError::Netlink {
        what: what(),
        source,
    })?;
    nl.apply(&enc).map_err(|source| NftError::Netlink {
        what: what(),
        source,
    })
}

fn list_netlink(nl: &Nfnl, table: &TableRef) -> Result<Listing, NftError> {
    let what = || format!("listing table {} {}", family_name(table.family), table.name);
    let rules = nl
        .list_rules(table.family, &table.name)
        .map_err(|source| NftError::Netlink {
            what: what(),
            source,
        })?;
    let mut out = Listing::default();
    for r in rules {
        out.rules.push(ListedRule {
            chain: r.chain,
            handle: u32::try_from(r.handle).map_err(|_| NftError::Output {
                what: what(),
                detail: format!("rule handle {}", r.handle),
            })?,
            comment: r.comment,
            expr: Value::Null,
        });
    }
    Ok(out)
}

/// What a listing holds: chains, and rules with their handles.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Listing {
    pub chains: Vec<String>,
    pub rules: Vec<ListedRule>,
}

/// A rule as listed: enough to find it (chain, comment) and delete it
/// (handle).
#[derive(Debug, Clone, PartialEq)]
pub struct ListedRule {
    pub chain: String,
    pub handle: u32,
    pub comment: Option<String>,
    /// The rule's statements as nft printed them.
    pub expr: Value,
}
impl Listing {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let v: Value = serde_json::from_str(raw).map_err(|e| e.to_string())?;
        let objects = v
            .get("nftables")
            .and_then(Value::as_array)
            .ok_or("no \"nftables\" array")?;
        let mut out = Listing::default();
        for o in objects {
            if let Some(c) = o.get("chain") {
                if let Some(name) = c.get("name").and_then(Value::as_str) {
                    out.chains.push(name.to_string());
                }
            } else if let Some(r) = o.get("rule") {
                let chain = r.get("chain").and_then(Value::as_str);
                let handle = r.get("handle").and_then(Value::as_u64);
                let (Some(chain), Some(handle)) = (chain, handle) else {
                    return Err(format!("a rule without chain or handle: {r}"));
                };
                out.rules.push(ListedRule {
                    chain: chain.to_string(),
                    handle: u32::try_from(handle).map_err(|_| format!("rule handle {handle}"))?,
                    comment: r.get("comment").and_then(Value::as_str).map(String::from),
                    expr: r.get("expr").cloned().unwrap_or(Value::Null),
                });
            }
        }
        Ok(out)
    }

    pub fn rules_in<'a>(&'a self, chain: &'a str) -> impl Iterator<Item = &'a ListedRule> + 'a {
        self.rules.iter().filter(move |r| r.chain == chain)
    }
}

/// A table of ours: family and name. Builds the objects and commands that
/// address it, to put in a batch (`batch.add(..)` for objects to create,
/// `batch.add_cmd(..)` for the commands).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableRef {
    pub family: NfFamily,
    pub name: String,
}

impl TableRef {
    pub fn new(family: NfFamily, name: &str) -> Self {
        TableRef {
            family,
            name: name.to_string(),
        }
    }

    /// The table, created if missing.
    pub fn table(&self) -> NfListObject<'static> {
        NfListObject::Table(Table {
            family: self.family,
            name: Cow::Owned(self.name.clone()),
            handle: None,
        })
    }

    /// A regular chain (a jump target).
    pub fn chain(&self, name: &str) -> NfListObject<'static> {
        NfListObject::Chain(self.chain_obj(name))
    }

    /// A base chain on `hook` at `prio`, policy accept. An existing chain
    /// keeps its hook and priority.
    pub fn base_chain(
        &self,
        name: &str,
        kind: NfChainType,
        hook: NfHook,
        prio: i32,
    ) -> NfListObject<'static> {
        NfListObject::Chain(Chain {
            _type: Some(kind),
            hook: Some(hook),
            prio: Some(prio),
            policy: Some(NfChainPolicy::Accept),
            ..self.chain_obj(name)
        })
    }

    fn chain_obj(&self, name: &str) -> Chain<'static> {
        Chain {
            family: self.family,
            table: Cow::Owned(self.name.clone()),
            name: Cow::Owned(name.to_string()),
            ..Chain::default()
        }
    }

    /// `flush chain`: removes every rule of a chain of ours.
    pub fn flush_chain(&self, name: &str) -> NfCmd<'static> {
        NfCmd::Flush(FlushObject::Chain(self.chain_obj(name)))
    }

    /// A rule appended to `chain`; `comment` goes through [`comment`], so
    /// any text fits.
    pub fn rule(
        &self,
        chain: &str,
        expr: Vec<Statement<'static>>,
        comment: Option<&str>,
    ) -> NfListObject<'static> {
        NfListObject::Rule(Rule {
            family: self.family,
            table: Cow::Owned(self.name.clone()),
            chain: Cow::Owned(chain.to_string()),
            expr: Cow::Owned(expr),
            handle: None,
            index: None,
            comment: comment.map(|c| Cow::Owned(self::comment(c))),
        })
    }

    /// The command deleting rule `handle` of `chain`.
    pub fn delete_rule(&self, chain: &str, handle: u32) -> NfCmd<'static> {
        NfCmd::Delete(NfListObject::Rule(Rule {
            family: self.family,
            table: Cow::Owned(self.name.clone()),
            chain: Cow::Owned(chain.to_string()),
            expr: Cow::Owned(Vec::new()),
            handle: Some(handle),
            index: None,
            comment: None,
        }))
    }
}

/// `text` made fit for a rule comment: kept as is when short enough, else
/// cut and suffixed with a hash of the whole, so distinct long texts still
/// give distinct comments and the same text always gives the same one
/// (DEL recomputes the comment ADD wrote). Idempotent.
pub fn comment(text: &str) -> String {
    if text.len() <= MAX_COMMENT {
        return text.to_string();
    }
    // FNV-1a: stable across releases, unlike std's hasher.
    let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    // 17 = '~' and 16 hex digits.
    let mut cut = MAX_COMMENT - 17;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}~{hash:016x}", &text[..cut])
}

/// The family as nft spells it on its command line.
pub fn family_name(f: NfFamily) -> &'static str {
    match f {
        NfFamily::IP => "ip",
        NfFamily::IP6 => "ip6",
        NfFamily::INet => "inet",
        NfFamily::ARP => "arp",
        NfFamily::Bridge => "bridge",
        NfFamily::NetDev => "netdev",
    }
}

// Expressions and statements.

/// A header field, e.g. `payload("ip", "saddr")`, `payload("th", "dport")`.
pub fn payload(protocol: &str, field: &str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: Cow::Owned(protocol.to_string()),
            field: Cow::Owned(field.to_string()),
        },
    )))
}

pub fn meta(key: MetaKey) -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

/// A conntrack key of the packet's entry, e.g. `ct("state")`.
pub fn ct(key: &str) -> Expression<'static> {
    Expression::Named(NamedExpression::CT(CT {
        key: Cow::Owned(key.to_string()),
        family: None,
        dir: None,
    }))
}

/// An anonymous set, e.g. `{ established, related }`.
pub fn set(items: Vec<Expression<'static>>) -> Expression<'static> {
    Expression::Named(NamedExpression::Set(
        items.into_iter().map(SetItem::Element).collect(),
    ))
}

/// `a | b | ...`: a union of flags, e.g. conntrack states.
pub fn any_of(items: Vec<Expression<'static>>) -> Expression<'static> {
    Expression::BinaryOperation(Box::new(BinaryOperation::OR(items)))
}

/// `left & bits == 0`: none of the flags in `bits` is set.
pub fn flags_clear(left: Expression<'static>, bits: Expression<'static>) -> Statement<'static> {
    eq(
        Expression::BinaryOperation(Box::new(BinaryOperation::AND(left, bits))),
        number(0),
    )
}

pub fn drop() -> Statement<'static> {
    Statement::Drop(None)
}

pub fn string(s: &str) -> Expression<'static> {
    Expression::String(Cow::Owned(s.to_string()))
}

pub fn number(n: u32) -> Expression<'static> {
    Expression::Number(n)
}

pub fn addr(ip: IpAddr) -> Expression<'static> {
    Expression::String(Cow::Owned(ip.to_string()))
}

pub fn prefix(net: IpNet) -> Expression<'static> {
    Expression::Named(NamedExpression::Prefix(Prefix {
        addr: Box::new(addr(net.network())),
        len: u32::from(net.prefix_len()),
    }))
}

/// `ip`/`ip6` as the payload protocol for an address of this family.
pub fn ip_proto(ip: IpAddr) -> &'static str {
    if ip.is_ipv4() { "ip" } else { "ip6" }
}

pub fn matches(
    left: Expression<'static>,
    op: Operator,
    right: Expression<'static>,
) -> Statement<'static> {
    Statement::Match(Match { left, right, op })
}

pub fn eq(left: Expression<'static>, right: Expression<'static>) -> Statement<'static> {
    matches(left, Operator::EQ, right)
}

pub fn ne(left: Expression<'static>, right: Expression<'static>) -> Statement<'static> {
    matches(left, Operator::NEQ, right)
}

/// `fib daddr type local`: the packet is for one of this host's addresses.
pub fn daddr_is_local() -> Statement<'static> {
    eq(
        Expression::Named(NamedExpression::Fib(Fib {
            result: FibResult::Type,
            flags: [FibFlag::Daddr].into_iter().collect(),
        })),
        string("local"),
    )
}

/// `meta mark set meta mark | bits`.
pub fn set_mark_bits(bits: u32) -> Statement<'static> {
    Statement::Mangle(Mangle {
        key: meta(MetaKey::Mark),
        value: Expression::BinaryOperation(Box::new(BinaryOperation::OR(vec![
            meta(MetaKey::Mark),
            Expression::Number(bits),
        ]))),
    })
}

/// `meta mark & bits == bits`.
pub fn has_mark_bits(bits: u32) -> Statement<'static> {
    eq(
        Expression::BinaryOperation(Box::new(BinaryOperation::AND(
            meta(MetaKey::Mark),
            Expression::Number(bits),
        ))),
        Expression::Number(bits),
    )
}

/// `dnat ip|ip6 to ADDR:PORT` (the family is required in inet tables).
pub fn dnat(to: IpAddr, port: u16) -> Statement<'static> {
    Statement::DNAT(Some(NAT {
        addr: Some(addr(to)),
        family: Some(if to.is_ipv4() {
            NATFamily::IP
        } else {
            NATFamily::IP6
        }),
        port: Some(Expression::Number(u32::from(port))),
        flags: None,
    }))
}

pub fn masquerade() -> Statement<'static> {
    Statement::Masquerade(None)
}

pub fn jump(chain: &str) -> Statement<'static> {
    Statement::Jump(JumpTarget {
        target: Cow::Owned(chain.to_string()),
    })
}

/// A fresh batch.
pub fn batch() -> Batch<'static> {
    Batch::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_stay_short_and_distinct() {
        assert_eq!(comment("bridge:net:abc:eth0"), "bridge:net:abc:eth0");
        let a = format!("x:{}", "a".repeat(200));
        let b = format!("x:{}b", "a".repeat(199));
        let (ca, cb) = (comment(&a), comment(&b));
        assert!(ca.len() <= MAX_COMMENT && cb.len() <= MAX_COMMENT);
        assert_ne!(ca, cb);
        assert_eq!(ca, comment(&a));
        assert_eq!(comment(&ca), ca);
        let fits = "f".repeat(MAX_COMMENT);
        assert_eq!(comment(&fits), fits);
    }

    #[test]
    fn comments_are_cut_at_a_char_boundary() {
        let long = "é".repeat(100);
        let c = comment(&long);
        assert!(c.len() <= MAX_COMMENT);
        let (kept, hash) = c.rsplit_once('~').unwrap();
        assert!(long.starts_with(kept));
        assert_eq!(hash.len(), 16);
    }

    #[test]
    fn a_batch_serializes_as_nft_json() {
        let t = TableRef::new(NfFamily::INet, "berth-t");
        let mut b = batch();
        b.add(t.table());
        b.add(t.base_chain("post", NfChainType::NAT, NfHook::Postrouting, 100));
        b.add(t.rule("post", vec![masquerade()], Some(&"c".repeat(200))));
        b.add_cmd(t.delete_rule("post", 7));
        let v = serde_json::to_value(b.to_nftables()).unwrap();
        assert_eq!(v["nftables"][0]["add"]["table"]["name"], "berth-t");
        assert_eq!(v["nftables"][1]["add"]["chain"]["hook"], "postrouting");
        assert_eq!(v["nftables"][1]["add"]["chain"]["type"], "nat");
        assert_eq!(v["nftables"][1]["add"]["chain"]["policy"], "accept");
        let rule = &v["nftables"][2]["add"]["rule"];
        assert_eq!(rule["table"], "berth-t");
        assert_eq!(rule["expr"], serde_json::json!([{"masquerade": null}]));
        assert_eq!(
            rule["comment"],
            serde_json::json!(comment(&"c".repeat(200)))
        );
        assert_eq!(v["nftables"][3]["delete"]["rule"]["handle"], 7);
    }

    #[test]
    fn a_listing_keeps_handles_and_comments() {
        let raw = r#"{"nftables":[{"metainfo":{"version":"1.0.6"}},
            {"table":{"family":"inet","name":"t","handle":1}},
            {"chain":{"family":"inet","table":"t","name":"c","handle":2}},
            {"rule":{"family":"inet","table":"t","chain":"c","handle":7,"comment":"x y","expr":[{"masquerade":null}]}},
            {"rule":{"family":"inet","table":"t","chain":"c","handle":8,"expr":[]}}]}"#;
        let l = Listing::parse(raw).unwrap();
        assert_eq!(l.chains, ["c"]);
        assert_eq!(l.rules.len(), 2);
        assert_eq!(l.rules[0].handle, 7);
        assert_eq!(l.rules[0].comment.as_deref(), Some("x y"));
        assert_eq!(l.rules[1].comment, None);
        assert!(Listing::parse("{}").is_err());
    }

    #[test]
    fn statements_serialize_as_nft_json() {
        let v = serde_json::to_value(dnat("fd00::5".parse().unwrap(), 80)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"dnat": {"addr": "fd00::5", "family": "ip6", "port": 80}})
        );
        let v = serde_json::to_value(set_mark_bits(0x2000)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"mangle": {"key": {"meta": {"key": "mark"}},
                "value": {"|": [{"meta": {"key": "mark"}}, 8192]}}})
        );
        let v = serde_json::to_value(daddr_is_local()).unwrap();
        assert_eq!(
            v["match"]["left"]["fib"]["flags"],
            serde_json::json!(["daddr"])
        );
    }
}
