//! berth's nftables rules, through the `nftables` crate (which drives
//! `nft -j`), for every plugin that filters or translates packets (bridge's
//! ipMasq, portmap).
//!
//! Conventions, so plugins never disturb what they did not create:
//! - each plugin works only in its own tables (a family and a name such as
//!   `inet berth-bridge`); nothing here flushes or deletes a table or chain;
//! - every rule made for one container carries a comment naming it
//!   ([`comment`]), so DEL finds exactly that container's rules
//!   ([`rules_with_comment`]) and removes them by handle
//!   ([`delete_rules_with_comment`]);
//! - changes go in one batch ([`apply`]), which nft applies atomically:
//!   [`add_table`] and [`add_chain`] put "create if missing" commands in a
//!   batch, so concurrent plugin runs need no locking.
//!
//! Each call runs `nft` in the network namespace of the calling thread.
//!
//! ```no_run
//! use berth_cni::nft::{self, NfFamily};
//! use nftables::{batch::Batch, schema::{NfListObject, Rule}, stmt::Statement};
//!
//! let mut b = Batch::new();
//! nft::add_table(&mut b, NfFamily::INet, "berth-example");
//! nft::add_chain(&mut b, nft::base_chain(
//!     NfFamily::INet, "berth-example", "postrouting",
//!     nftables::types::NfChainType::NAT, nftables::types::NfHook::Postrouting, 100));
//! b.add(NfListObject::Rule(Rule {
//!     family: NfFamily::INet,
//!     table: "berth-example".into(),
//!     chain: "postrouting".into(),
//!     expr: vec![Statement::Masquerade(None)].into(),
//!     comment: Some(nft::comment("example:container-1").into()),
//!     ..Default::default()
//! }));
//! nft::apply(b).unwrap();
//! nft::delete_rules_with_comment(NfFamily::INet, "berth-example", "example:container-1").unwrap();
//! ```

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use nftables::batch::Batch;
use nftables::helper::NftablesError;
use nftables::schema::{Chain, NfListObject, Rule, Table};
pub use nftables::types::NfFamily;
use nftables::types::{NfChainPolicy, NfChainType, NfHook};
use serde_json::Value;

/// nft refuses longer comments.
pub const MAX_COMMENT: usize = 128;

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("nft {what} failed: {stderr}")]
    Failed { what: String, stderr: String },
    #[error("running nft ({program}) to {what}: {source}")]
    Exec {
        program: PathBuf,
        what: String,
        source: Box<NftablesError>,
    },
    #[error("unexpected output of nft {what}: {reason}")]
    Output { what: String, reason: String },
}

fn family_name(f: NfFamily) -> &'static str {
    match f {
        NfFamily::IP => "ip",
        NfFamily::IP6 => "ip6",
        NfFamily::INet => "inet",
        NfFamily::ARP => "arp",
        NfFamily::Bridge => "bridge",
        NfFamily::NetDev => "netdev",
    }
}

/// The `nft` executable: from PATH, else where distributions install it
/// (runtimes may run plugins with a PATH lacking the sbin directories).
pub fn program() -> PathBuf {
    let from_path = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("nft"))
            .find(|p| p.is_file())
    });
    from_path
        .or_else(|| {
            ["/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft"]
                .iter()
                .map(PathBuf::from)
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| PathBuf::from("nft"))
}

fn exec_error(program: &Path, what: &str, e: NftablesError) -> NftError {
    match e {
        NftablesError::NftFailed { stderr, .. } => NftError::Failed {
            what: what.to_string(),
            stderr: stderr.trim().to_string(),
        },
        source => NftError::Exec {
            program: program.to_owned(),
            what: what.to_string(),
            source: Box::new(source),
        },
    }
}

/// Applies `batch` atomically (all of it or nothing).
pub fn apply(batch: Batch<'_>) -> Result<(), NftError> {
    let nft = program();
    let ruleset = batch.to_nftables();
    let json = serde_json::to_string(&ruleset).map_err(|e| NftError::Output {
        what: "apply".into(),
        reason: format!("cannot encode the batch: {e}"),
    })?;
    nftables::helper::apply_ruleset_raw(&json, Some(&nft), nftables::helper::DEFAULT_ARGS)
        .map(|_| ())
        .map_err(|e| exec_error(&nft, "apply", e))
}

/// Adds "create table `family` `name` if missing" to `batch`.
pub fn add_table(batch: &mut Batch<'_>, family: NfFamily, name: &str) {
    batch.add(NfListObject::Table(Table {
        family,
        name: Cow::Owned(name.to_string()),
        handle: None,
    }));
}

/// Adds "create `chain` if missing" to `batch` (its table must exist or be
/// created earlier in the batch). An existing base chain keeps its hook.
pub fn add_chain<'a>(batch: &mut Batch<'a>, chain: Chain<'a>) {
    batch.add(NfListObject::Chain(chain));
}

/// A base chain (attached to a netfilter hook) with policy accept.
pub fn base_chain(
    family: NfFamily,
    table: &str,
    name: &str,
    kind: NfChainType,
    hook: NfHook,
    priority: i32,
) -> Chain<'static> {
    Chain {
        family,
        table: Cow::Owned(table.to_string()),
        name: Cow::Owned(name.to_string()),
        _type: Some(kind),
        hook: Some(hook),
        prio: Some(priority),
        policy: Some(NfChainPolicy::Accept),
        ..Default::default()
    }
}

/// A regular chain (a target for jumps).
pub fn regular_chain(family: NfFamily, table: &str, name: &str) -> Chain<'static> {
    Chain {
        family,
        table: Cow::Owned(table.to_string()),
        name: Cow::Owned(name.to_string()),
        ..Default::default()
    }
}

/// `text` made fit for a rule comment: kept as is when short enough, else
/// cut and suffixed with a hash of the whole, so distinct long texts still
/// give distinct comments and the same text always gives the same one.
pub fn comment(text: &str) -> String {
    if text.len() <= MAX_COMMENT {
        return text.to_string();
    }
    // FNV-1a: stable across releases, unlike std's hasher.
    let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let mut cut = MAX_COMMENT - 17;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}~{hash:016x}", &text[..cut])
}

/// A rule as listed, enough to find and delete it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedRule {
    pub chain: String,
    pub handle: u32,
    pub comment: Option<String>,
}

/// The rules of table `family` `table` (none when the table does not exist).
pub fn list_rules(family: NfFamily, table: &str) -> Result<Vec<ListedRule>, NftError> {
    let nft = program();
    let what = format!("list table {} {table}", family_name(family));
    let out = match nftables::helper::get_current_ruleset_raw(
        Some(&nft),
        ["list", "table", family_name(family), table],
    ) {
        Ok(o) => o,
        Err(NftablesError::NftFailed { stderr, .. })
            if stderr.contains("No such file or directory") =>
        {
            return Ok(Vec::new());
        }
        Err(e) => return Err(exec_error(&nft, &what, e)),
    };
    // Read as plain JSON: the rules of other berth plugins may use
    // statements the crate's typed schema does not know.
    let v: Value = serde_json::from_str(&out).map_err(|e| NftError::Output {
        what: what.clone(),
        reason: e.to_string(),
    })?;
    let objects = v
        .get("nftables")
        .and_then(Value::as_array)
        .ok_or_else(|| NftError::Output {
            what: what.clone(),
            reason: "no \"nftables\" array".into(),
        })?;
    Ok(objects
        .iter()
        .filter_map(|o| o.get("rule"))
        .filter_map(|r| {
            Some(ListedRule {
                chain: r.get("chain")?.as_str()?.to_string(),
                handle: u32::try_from(r.get("handle")?.as_u64()?).ok()?,
                comment: r.get("comment").and_then(Value::as_str).map(str::to_string),
            })
        })
        .collect())
}

/// The rules of table `family` `table` whose comment is exactly `comment`.
pub fn rules_with_comment(
    family: NfFamily,
    table: &str,
    comment: &str,
) -> Result<Vec<ListedRule>, NftError> {
    Ok(list_rules(family, table)?
        .into_iter()
        .filter(|r| r.comment.as_deref() == Some(comment))
        .collect())
}

/// Deletes `rules` (as listed from `family` `table`) in one batch.
pub fn delete_rules(family: NfFamily, table: &str, rules: &[ListedRule]) -> Result<(), NftError> {
    if rules.is_empty() {
        return Ok(());
    }
    let mut b = Batch::new();
    for r in rules {
        b.delete(NfListObject::Rule(Rule {
            family,
            table: Cow::Owned(table.to_string()),
            chain: Cow::Owned(r.chain.clone()),
            handle: Some(r.handle),
            ..Default::default()
        }));
    }
    apply(b)
}

/// Deletes every rule of `family` `table` whose comment is `comment`;
/// returns how many went. Idempotent: a missing table or no such rule is
/// not an error, and a rule someone else deleted meanwhile is looked up
/// again.
pub fn delete_rules_with_comment(
    family: NfFamily,
    table: &str,
    comment: &str,
) -> Result<usize, NftError> {
    let mut attempt = 0;
    loop {
        let rules = rules_with_comment(family, table, comment)?;
        match delete_rules(family, table, &rules) {
            Ok(()) => return Ok(rules.len()),
            Err(NftError::Failed { .. }) if attempt < 2 => attempt += 1,
            Err(e) => return Err(e),
        }
    }
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
        let wide = "é".repeat(100);
        assert!(comment(&wide).len() <= MAX_COMMENT);
    }

    #[test]
    fn a_batch_serializes_as_nft_json() {
        let mut b = Batch::new();
        add_table(&mut b, NfFamily::INet, "berth-t");
        add_chain(
            &mut b,
            base_chain(
                NfFamily::INet,
                "berth-t",
                "post",
                NfChainType::NAT,
                NfHook::Postrouting,
                100,
            ),
        );
        let v = serde_json::to_value(b.to_nftables()).unwrap();
        assert_eq!(v["nftables"][0]["add"]["table"]["name"], "berth-t");
        assert_eq!(v["nftables"][1]["add"]["chain"]["hook"], "postrouting");
        assert_eq!(v["nftables"][1]["add"]["chain"]["type"], "nat");
    }
}
