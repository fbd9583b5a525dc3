//! Generic helpers around `nft -j` (through the `nftables` crate) for
//! tables that berth owns: building commands, applying a batch atomically,
//! and listing a table's rules with their handles and comments.
//!
//! Nothing here knows about port mappings, so the bridge plugin (ipMasq) and
//! the service proxy can share it. Listings are read as plain JSON rather
//! than the crate's typed schema: we only need chains, handles and comments,
//! and a newer `nft` printing an expression the schema does not know must
//! not make our own rules undeletable.

use std::borrow::Cow;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use nftables::batch::Batch;
use nftables::expr::{
    BinaryOperation, CT, Expression, Fib, FibFlag, FibResult, Meta, MetaKey, NamedExpression,
    Payload, PayloadField, Prefix, SetItem,
};
use nftables::helper::{self, NftablesError};
use nftables::schema::{Chain, FlushObject, NfCmd, NfListObject, Rule, Table};
use nftables::stmt::{JumpTarget, Mangle, Match, NAT, NATFamily, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};
use serde_json::Value;

/// Longest comment nft stores (128 bytes with the terminating NUL).
pub const COMMENT_MAX: usize = 127;

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
}

impl NftError {
    /// Whether nft said the object does not exist (ENOENT), e.g. listing a
    /// table nobody created yet, or deleting a rule someone else deleted.
    pub fn is_not_found(&self) -> bool {
        matches!(self, NftError::Failed { stderr, .. } if stderr.contains("No such file or directory"))
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

/// The `nft` executable.
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

    /// Applies `batch` in one transaction: all of it or nothing.
    pub fn apply(&self, batch: Batch<'_>) -> Result<(), NftError> {
        let doc = batch.to_nftables();
        helper::apply_ruleset_with_args(&doc, Some(&self.program), helper::DEFAULT_ARGS)
            .map_err(|e| NftError::from_crate("applying a batch", e))
    }

    /// Lists `table`; `None` when it does not exist.
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
}

/// What a listing holds: chains, and rules with their handles.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Listing {
    pub chains: Vec<String>,
    pub rules: Vec<ListedRule>,
}

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

/// A table: family and name. Builds the commands that address it.
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

    /// A base chain on `hook` at `prio`, policy accept.
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
            comment: comment.map(|c| Cow::Owned(clip_comment(c).to_string())),
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

/// `comment` cut to what nft stores (at a character boundary).
pub fn clip_comment(comment: &str) -> &str {
    if comment.len() <= COMMENT_MAX {
        return comment;
    }
    let mut end = COMMENT_MAX;
    while !comment.is_char_boundary(end) {
        end -= 1;
    }
    &comment[..end]
}

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
    fn comments_are_clipped_at_a_char_boundary() {
        assert_eq!(clip_comment("short"), "short");
        let long = "é".repeat(100);
        let c = clip_comment(&long);
        assert!(c.len() <= COMMENT_MAX);
        assert!(long.starts_with(c));
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
