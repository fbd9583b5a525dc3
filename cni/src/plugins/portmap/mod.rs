//! The `portmap` CNI plugin: hostPort → pod port through nftables DNAT, in
//! berth's own table `inet berth-portmap` (layout in [`rules`]).
//!
//! A chained plugin: it runs after the plugin that gave the pod its
//! addresses (bridge + host-local), reads them from `prevResult`, and
//! passes that result on unchanged.
//!
//! - ADD: forwards each `runtimeConfig.portMappings` entry from other
//!   hosts (prerouting) and from the node itself (output), including
//!   `127.0.0.1` (with `route_localnet` on the interface toward the pod and
//!   masquerade) and hairpin (the pod through a node address: masquerade),
//!   for the pod's IPv4 and IPv6 address. The attachment's old rules, if
//!   any, are replaced in the same transaction. UDP conntrack entries toward
//!   the new hostPorts are forgotten ([`conntrack`]). Because
//!   `route_localnet` would otherwise let pods reach the node's services on
//!   127.0.0.1, the table also drops new non-loopback input to 127.0.0.0/8.
//! - DEL: removes exactly the rules whose comment carries the
//!   attachment's tag; nothing there (or no table) is success.
//! - CHECK: every rule ADD would make exists (compared by comment, which
//!   describes the rule), no stale one, jumps in place, `route_localnet` on.
//! - GC (1.1): removes this network's rules of attachments that are not in
//!   `cni.dev/valid-attachments`.
//! - STATUS (1.1): nft runs.
//!
//! Config fields and what of the reference plugin's options berth supports:
//! see [`config`]. Not done: IPv6 `[::1]:hostPort` (the kernel cannot DNAT
//! off ::1); a pod reaching *another* pod's hostPort through the node
//! relies on `br_netfilter` for the reply, as with the reference plugin.

pub mod config;
pub mod conntrack;
pub mod localnet;
mod netlink;
pub mod rules;

use std::collections::HashSet;
use std::net::IpAddr;

use serde_json::Value;

use crate::nft::{self, ListedRule, Listing, Nft};
use crate::protocol::{Invocation, Plugin};
use crate::types::{CniError, CniResult, NetConf, code};
use config::{PortmapConf, Proto};
use rules::{Planned, Tag};

#[derive(Debug, Clone)]
pub struct Portmap {
    nft: Nft,
}

impl Default for Portmap {
    fn default() -> Self {
        Portmap { nft: Nft::locate() }
    }
}

fn kernel(what: &str, e: impl std::fmt::Display) -> CniError {
    CniError::new(code::KERNEL, what.to_string()).with_details(e.to_string())
}

impl Portmap {
    pub fn new(nft: Nft) -> Self {
        Portmap { nft }
    }

    fn list(&self) -> Result<Option<Listing>, CniError> {
        self.nft
            .list_table(&rules::table())
            .map_err(|e| kernel("cannot list nftables table inet berth-portmap", e))
    }

    /// Whether `r` is a rule of ours whose tag satisfies `pred`.
    fn owns(r: &ListedRule, pred: &dyn Fn(&Tag) -> bool) -> bool {
        rules::RULE_CHAINS.contains(&r.chain.as_str())
            && r.comment
                .as_deref()
                .and_then(Tag::parse)
                .is_some_and(|t| pred(&t))
    }

    /// The listed rules of ours for which `pred` holds.
    fn owned<'a>(
        listing: &'a Listing,
        pred: &'a dyn Fn(&Tag) -> bool,
    ) -> impl Iterator<Item = &'a ListedRule> + 'a {
        listing.rules.iter().filter(move |r| Self::owns(r, pred))
    }

    /// Installs `planned` for `tag`, replacing its previous rules, in one
    /// transaction.
    fn replace(&self, tag: &Tag, planned: &[Planned]) -> Result<(), CniError> {
        let mine = |t: &Tag| t == tag;
        self.nft
            .apply_listed(&rules::table(), |listing| {
                let mut batch = nft::batch();
                // The base chains are set up once: refilling them on every
                // ADD would free their old rules after an RCU grace period.
                // If they vanish after this listing the batch fails and
                // starts over from a new one.
                if !listing.is_some_and(rules::has_base) {
                    rules::base(&mut batch);
                }
                for r in listing.iter().flat_map(|l| Self::owned(l, &mine)) {
                    batch.add_cmd(rules::delete(&r.chain, r.handle));
                }
                rules::add(&mut batch, planned);
                Some(batch)
            })
            .map_err(|e| kernel("cannot install the hostPort rules", e))
    }

    /// Deletes the rules of ours whose tag satisfies `pred`; returns how
    /// many. A missing `nft` means no table: without it nothing of ours was
    /// ever made, and a DEL must not fail for that.
    fn remove(&self, pred: &dyn Fn(&Tag) -> bool) -> Result<usize, CniError> {
        match self
            .nft
            .delete_rules_where(&rules::table(), |r| Self::owns(r, pred))
        {
            Err(e) if e.is_program_missing() => {
                tracing::warn!(error = %e, "nft is missing; no hostPort rules to remove");
                Ok(0)
            }
            other => other.map_err(|e| kernel("cannot delete hostPort rules", e)),
        }
    }
}

/// What ADD and CHECK work from.
struct Prepared {
    conf: PortmapConf,
    prev: CniResult,
    pods: Vec<IpAddr>,
    tag: Tag,
    planned: Vec<Planned>,
}

impl Prepared {
    /// Parses the config, prevResult and the pod's addresses, and plans
    /// the rules.
    fn new(inv: &Invocation, conf: &NetConf, command: &str) -> Result<Self, CniError> {
        let pm = PortmapConf::parse(conf)?;
        let prev = config::prev_result(conf, command)?;
        let pods = config::pod_ips(&prev);
        let tag = Tag::new(&conf.name, &inv.container_id, &inv.ifname);
        let planned = if pm.mappings.is_empty() {
            Vec::new()
        } else if pods.is_empty() {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                "prevResult has no address inside the pod to forward hostPorts to",
            ));
        } else {
            rules::plan(&pm, &pods, &tag)?
        };
        Ok(Prepared {
            conf: pm,
            prev,
            pods,
            tag,
            planned,
        })
    }
}

impl Plugin for Portmap {
    fn add(&self, inv: &Invocation, conf: &NetConf, _raw: &Value) -> Result<CniResult, CniError> {
        let Prepared {
            conf: pm,
            prev,
            pods,
            tag,
            planned,
        } = Prepared::new(inv, conf, "ADD")?;
        if planned.is_empty() {
            return Ok(prev);
        }
        // Looked up before anything changes, so a failure leaves nothing.
        let localnet_if = rules::localnet_target(&pm, &pods)
            .map(localnet::interface_toward)
            .transpose()
            .map_err(|e| kernel("cannot find the interface toward the pod", e))?;
        self.replace(&tag, &planned)?;
        if let Some(ifname) = &localnet_if
            && let Err(e) = localnet::enable(ifname)
        {
            let _ = self.remove(&|t: &Tag| *t == tag);
            return Err(kernel(
                "cannot enable route_localnet for 127.0.0.1 hostPorts",
                e,
            ));
        }
        let udp: Vec<conntrack::UdpDest> = pm
            .mappings
            .iter()
            .filter(|m| m.protocol == Proto::Udp)
            .flat_map(|m| {
                pods.iter()
                    .filter(|p| m.applies_to(**p))
                    .map(|p| conntrack::UdpDest {
                        port: m.host_port,
                        addr: m.dest_match(),
                        ipv6: p.is_ipv6(),
                    })
            })
            .collect();
        // Only stale flows are at stake, never the mapping itself.
        if let Err(e) = conntrack::clear_udp(&udp) {
            tracing::warn!(error = %e, "could not clear UDP conntrack entries toward new hostPorts");
        }
        tracing::debug!(rules = planned.len(), tag = %tag.word(), "portmap: rules installed");
        Ok(prev)
    }

    fn del(&self, inv: &Invocation, conf: &NetConf, _raw: &Value) -> Result<(), CniError> {
        // Nothing in the config matters but the names: a DEL must clean up
        // even when the config it gets is not the one ADD got.
        let tag = Tag::new(&conf.name, &inv.container_id, &inv.ifname);
        let n = self.remove(&|t: &Tag| *t == tag)?;
        tracing::debug!(rules = n, tag = %tag.word(), "portmap: rules removed");
        Ok(())
    }

    fn check(&self, inv: &Invocation, conf: &NetConf, _raw: &Value) -> Result<(), CniError> {
        let Prepared {
            conf: pm,
            pods,
            tag,
            planned,
            ..
        } = Prepared::new(inv, conf, "CHECK")?;
        let mismatch = |msg: String| CniError::new(crate::types::code::CHECK_MISMATCH, msg);
        let listing = self.list()?;
        let listing = match (listing, planned.is_empty()) {
            (_, true) => return Ok(()),
            (None, false) => {
                return Err(mismatch(format!(
                    "nftables table inet {} is missing",
                    rules::TABLE
                )));
            }
            (Some(l), false) => l,
        };
        for chain in [rules::PREROUTING, rules::OUTPUT] {
            let jumps = listing.rules_in(chain).any(|r| {
                r.expr.as_array().is_some_and(|stmts| {
                    stmts
                        .iter()
                        .any(|s| s["jump"]["target"] == rules::HOSTPORTS)
                })
            });
            if !jumps {
                return Err(mismatch(format!(
                    "chain {chain} of table inet {} does not jump to {}",
                    rules::TABLE,
                    rules::HOSTPORTS
                )));
            }
        }
        let guarded = listing.rules_in(rules::INPUT).any(|r| {
            r.expr
                .as_array()
                .is_some_and(|stmts| stmts.iter().any(|s| s.get("drop").is_some()))
        });
        if !guarded {
            return Err(mismatch(format!(
                "chain {} of table inet {} lacks its guard of 127.0.0.0/8",
                rules::INPUT,
                rules::TABLE
            )));
        }
        let mine = |t: &Tag| *t == tag;
        let mut have: Vec<(String, String)> = Self::owned(&listing, &mine)
            .map(|r| (r.chain.clone(), r.comment.clone().unwrap_or_default()))
            .collect();
        let mut want: Vec<(String, String)> = planned
            .iter()
            .map(|p| (p.chain.to_string(), p.comment.clone()))
            .collect();
        have.sort();
        want.sort();
        if have != want {
            let have_set: HashSet<_> = have.iter().collect();
            let want_set: HashSet<_> = want.iter().collect();
            let missing: Vec<_> = want
                .iter()
                .filter(|w| !have_set.contains(w))
                .map(|(c, m)| format!("{c}: {m}"))
                .collect();
            let extra: Vec<_> = have
                .iter()
                .filter(|h| !want_set.contains(h))
                .map(|(c, m)| format!("{c}: {m}"))
                .collect();
            return Err(mismatch(format!(
                "hostPort rules differ from the config ({} expected, {} found)",
                want.len(),
                have.len()
            ))
            .with_details(format!(
                "missing: [{}]; unexpected: [{}]",
                missing.join("; "),
                extra.join("; ")
            )));
        }
        if let Some(pod) = rules::localnet_target(&pm, &pods) {
            let ifname = localnet::interface_toward(pod)
                .map_err(|e| kernel("cannot find the interface toward the pod", e))?;
            let on =
                localnet::enabled(&ifname).map_err(|e| kernel("cannot read route_localnet", e))?;
            if !on {
                return Err(mismatch(format!(
                    "route_localnet is off on {ifname}: 127.0.0.1 hostPorts do not reach the pod"
                )));
            }
        }
        Ok(())
    }

    fn status(&self, _inv: &Invocation, _conf: &NetConf, _raw: &Value) -> Result<(), CniError> {
        self.nft.probe().map_err(|e| {
            CniError::new(code::NOT_AVAILABLE, "nftables is not usable").with_details(e.to_string())
        })
    }

    fn gc(&self, _inv: &Invocation, conf: &NetConf, _raw: &Value) -> Result<(), CniError> {
        let valid = conf.valid_attachments.as_ref().ok_or_else(|| {
            CniError::new(
                code::INVALID_CONFIG,
                "GC needs cni.dev/valid-attachments (the attachments to keep)",
            )
        })?;
        let net = Tag::network(&conf.name);
        let keep: HashSet<String> = valid
            .iter()
            .map(|a| Tag::new(&conf.name, &a.container_id, &a.ifname).att)
            .collect();
        let n = self.remove(&|t: &Tag| t.net == net && !keep.contains(&t.att))?;
        tracing::debug!(rules = n, network = %conf.name, "portmap: GC removed rules");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Command;

    fn inv(command: Command, stdin: Value) -> Invocation {
        Invocation {
            command,
            container_id: "c1".into(),
            netns: Some("/run/netns/none".into()),
            ifname: "eth0".into(),
            args: Vec::new(),
            path: Vec::new(),
            stdin: serde_json::to_vec(&stdin).unwrap(),
        }
    }

    fn no_nft() -> Portmap {
        Portmap::new(Nft::new("/nonexistent/nft"))
    }

    #[test]
    fn del_without_nft_succeeds_and_status_says_why() {
        let conf = serde_json::json!({"cniVersion": "1.1.0", "name": "n", "type": "portmap"});
        let out = crate::protocol::run(&no_nft(), &inv(Command::Del, conf.clone()));
        assert_eq!(out.exit_code, 0, "{}", String::from_utf8_lossy(&out.stdout));
        let out = crate::protocol::run(&no_nft(), &inv(Command::Status, conf));
        let e: CniError = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(e.code, code::NOT_AVAILABLE);
        assert!(e.details.contains("/nonexistent/nft"), "{e}");
    }

    #[test]
    fn add_without_mappings_passes_prev_result_through_without_nft() {
        let conf = serde_json::json!({
            "cniVersion": "0.4.0", "name": "n", "type": "portmap",
            "prevResult": {"cniVersion": "0.4.0",
                "interfaces": [{"name": "eth0", "sandbox": "/run/netns/p"}],
                "ips": [{"version": "4", "address": "10.1.0.5/16", "interface": 0}]}
        });
        let out = crate::protocol::run(&no_nft(), &inv(Command::Add, conf));
        assert_eq!(out.exit_code, 0, "{}", String::from_utf8_lossy(&out.stdout));
        let r: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(r["cniVersion"], "0.4.0");
        assert_eq!(r["ips"][0]["address"], "10.1.0.5/16");
        assert_eq!(r["ips"][0]["version"], "4");
    }
}
