//! What portmap puts in nftables: one table of its own, `inet
//! berth-portmap`, apart from the bridge plugin's and anything else.
//!
//! ```text
//! table inet berth-portmap {
//!   chain prerouting  { type nat hook prerouting priority dstnat; fib daddr type local jump hostports }
//!   chain output      { type nat hook output priority -100;      fib daddr type local jump hostports }
//!   chain hostports   { per mapping and pod address:
//!       hair:      ip saddr POD tcp dport HP mark |= M dnat ip to POD:CP
//!       lo:        ip saddr 127.0.0.0/8 tcp dport HP mark |= M dnat ip to POD:CP
//!       dnat:      [ip daddr HOSTIP] tcp dport HP [mark |= M if masqAll] dnat ip to POD:CP }
//!   chain postrouting { type nat hook postrouting priority srcnat;
//!       per pod address: ip daddr POD mark & M == M masquerade }
//!   chain input       { type filter hook input priority filter;
//!       iif != lo ip daddr 127.0.0.0/8 ip saddr != 127.0.0.0/8
//!       ct state ! established,related ct status ! dnat drop }
//! }
//! ```
//!
//! The `input` guard is the other half of `route_localnet`: with it on,
//! the kernel stops treating packets *to* 127.0.0.0/8 arriving on that
//! interface as martians, so a pod could reach the node's services bound
//! to localhost (CVE-2020-8558). Only replies to our localhost hostPort
//! connections (established) and DNATed traffic may pass.
//!
//! The base chains hold only the jumps; every other rule belongs to one
//! attachment and carries a comment that starts with its [`Tag`], so DEL
//! and GC remove exactly those rules and CHECK compares them one by one
//! (the rest of the comment describes the rule). IPv6 has no
//! `route_localnet`: `[::1]:hostPort` is not forwarded.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use ipnet::IpNet;
use nftables::batch::Batch;
use nftables::expr::MetaKey;
use nftables::schema::NfCmd;
use nftables::stmt::Statement;
use nftables::types::{NfChainType, NfFamily, NfHook};
use sha2::{Digest, Sha256};

use super::config::{PortMapping, PortmapConf};
use crate::nft::{self, Listing, TableRef};
use crate::types::{CniError, code};

pub const TABLE: &str = "berth-portmap";
pub const PREROUTING: &str = "prerouting";
pub const OUTPUT: &str = "output";
pub const POSTROUTING: &str = "postrouting";
pub const HOSTPORTS: &str = "hostports";
pub const INPUT: &str = "input";
/// The chains that hold attachments' rules.
pub const RULE_CHAINS: [&str; 2] = [HOSTPORTS, POSTROUTING];

pub fn table() -> TableRef {
    TableRef::new(NfFamily::INet, TABLE)
}

/// Who a rule belongs to: a hash of the network name (so GC of one network
/// leaves the others alone) and one of network, container ID and interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tag {
    pub net: String,
    pub att: String,
}

fn short_hash(parts: &[&str], len: usize) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    let mut s = hex::encode(h.finalize());
    s.truncate(len);
    s
}

impl Tag {
    pub fn new(network: &str, container_id: &str, ifname: &str) -> Self {
        Tag {
            net: Self::network(network),
            att: short_hash(&[network, container_id, ifname], 12),
        }
    }

    pub fn network(network: &str) -> String {
        short_hash(&[network], 8)
    }

    /// The first word of each of this attachment's comments.
    pub fn word(&self) -> String {
        format!("{}-{}", self.net, self.att)
    }

    fn comment(&self, desc: &str) -> String {
        nft::comment(&format!("{} {desc}", self.word()))
    }

    /// The (network, attachment) hashes of a comment of ours.
    pub fn parse(comment: &str) -> Option<Tag> {
        let word = comment.split(' ').next()?;
        let (net, att) = word.split_once('-')?;
        let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
        (hex(net, 8) && hex(att, 12)).then(|| Tag {
            net: net.to_string(),
            att: att.to_string(),
        })
    }
}

/// One rule of an attachment.
#[derive(Debug, Clone, PartialEq)]
pub struct Planned {
    pub chain: &'static str,
    pub expr: Vec<Statement<'static>>,
    pub comment: String,
}

/// The rules for `pods` (at most one address per family) and `conf`.
/// Refuses a mapping that fits no pod address (a hostIP of a family the
/// pod lacks), since it could never forward anything.
pub fn plan(conf: &PortmapConf, pods: &[IpAddr], tag: &Tag) -> Result<Vec<Planned>, CniError> {
    let mut hostports = Vec::new();
    let mut masq_for: Vec<IpAddr> = Vec::new();
    for (i, m) in conf.mappings.iter().enumerate() {
        let fitting: Vec<IpAddr> = pods.iter().copied().filter(|p| m.applies_to(*p)).collect();
        if fitting.is_empty() {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                format!(
                    "runtimeConfig.portMappings[{i}]: the pod has no {} address for hostIP {}",
                    if m.host_ip.is_some_and(|h| h.is_ipv4()) {
                        "IPv4"
                    } else {
                        "IPv6"
                    },
                    m.host_ip.map(|h| h.to_string()).unwrap_or_default()
                ),
            ));
        }
        for pod in fitting {
            mapping_rules(conf, m, pod, tag, &mut hostports);
            if conf.snat && !masq_for.contains(&pod) {
                masq_for.push(pod);
            }
        }
    }
    let mark = conf.mark();
    hostports.extend(masq_for.into_iter().map(|pod| Planned {
        chain: POSTROUTING,
        expr: vec![
            nft::eq(nft::payload(nft::ip_proto(pod), "daddr"), nft::addr(pod)),
            nft::has_mark_bits(mark),
            nft::masquerade(),
        ],
        comment: tag.comment(&format!("masq {pod} mark {mark:#x}")),
    }));
    Ok(hostports)
}

fn mapping_rules(
    conf: &PortmapConf,
    m: &PortMapping,
    pod: IpAddr,
    tag: &Tag,
    out: &mut Vec<Planned>,
) {
    let fam = nft::ip_proto(pod);
    let mark = conf.mark();
    let target = SocketAddr::new(pod, m.container_port);
    let listen = match m.host_ip {
        None => format!("*:{}", m.host_port),
        Some(h) => SocketAddr::new(h, m.host_port).to_string(),
    };
    let desc = |kind: &str| format!("{kind} {} {listen} {target}", m.protocol.as_str());
    // Every rule of the mapping starts with these matches.
    let head = |extra: Vec<Statement<'static>>| -> Vec<Statement<'static>> {
        let mut v = Vec::new();
        match m.dest_match() {
            Some(h) => v.push(nft::eq(nft::payload(fam, "daddr"), nft::addr(h))),
            None => v.push(nft::eq(
                nft::meta(MetaKey::Nfproto),
                nft::string(if pod.is_ipv4() { "ipv4" } else { "ipv6" }),
            )),
        }
        v.extend(extra);
        v.push(nft::eq(
            nft::meta(MetaKey::L4proto),
            nft::string(m.protocol.as_str()),
        ));
        v.push(nft::eq(
            nft::payload("th", "dport"),
            nft::number(u32::from(m.host_port)),
        ));
        v
    };
    let finish = |mut v: Vec<Statement<'static>>, marked: bool| {
        if marked {
            v.push(nft::set_mark_bits(mark));
        }
        v.push(nft::dnat(pod, m.container_port));
        v
    };
    if conf.snat && !conf.masq_all {
        // The pod reaching its own hostPort: without SNAT its reply would go
        // straight back to itself, not through the node's conntrack.
        out.push(Planned {
            chain: HOSTPORTS,
            expr: finish(
                head(vec![nft::eq(nft::payload(fam, "saddr"), nft::addr(pod))]),
                true,
            ),
            comment: tag.comment(&desc("hair")),
        });
        // A node process connecting from 127.0.0.0/8: the pod cannot answer
        // a loopback source.
        let loopback_dest = m.dest_match().is_none_or(|h| h.is_loopback());
        if pod.is_ipv4() && loopback_dest {
            let lo = loopback_net();
            out.push(Planned {
                chain: HOSTPORTS,
                expr: finish(
                    head(vec![nft::eq(nft::payload("ip", "saddr"), nft::prefix(lo))]),
                    true,
                ),
                comment: tag.comment(&desc("lo")),
            });
        }
    }
    let extra = if pod.is_ipv6() {
        // The kernel never routes ::1 off the host; leave it alone.
        vec![nft::ne(
            nft::payload("ip6", "daddr"),
            nft::addr(IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)),
        )]
    } else {
        Vec::new()
    };
    out.push(Planned {
        chain: HOSTPORTS,
        expr: finish(head(extra), conf.masq_all),
        comment: tag.comment(&desc("dnat")),
    });
}

/// The table, its chains and the jump rules. The two base chains are
/// flushed and refilled in the same transaction, so adding them again is
/// idempotent and never leaves a moment without the jump.
pub fn base(batch: &mut Batch<'static>) {
    let t = table();
    batch.add(t.table());
    batch.add(t.base_chain(PREROUTING, NfChainType::NAT, NfHook::Prerouting, -100));
    batch.add(t.base_chain(OUTPUT, NfChainType::NAT, NfHook::Output, -100));
    batch.add(t.base_chain(POSTROUTING, NfChainType::NAT, NfHook::Postrouting, 100));
    batch.add(t.base_chain(INPUT, NfChainType::Filter, NfHook::Input, 0));
    batch.add(t.chain(HOSTPORTS));
    for chain in [PREROUTING, OUTPUT] {
        batch.add_cmd(t.flush_chain(chain));
        batch.add(t.rule(
            chain,
            vec![nft::daddr_is_local(), nft::jump(HOSTPORTS)],
            None,
        ));
    }
    batch.add_cmd(t.flush_chain(INPUT));
    batch.add(t.rule(INPUT, localhost_guard(), None));
}

/// Whether `listing` shows the table with what [`base`] makes: the jumps
/// and the guard (which also means every chain exists, as [`base`] makes
/// them all in one transaction).
pub fn has_base(listing: &Listing) -> bool {
    [PREROUTING, OUTPUT, INPUT]
        .iter()
        .all(|c| listing.rules_in(c).next().is_some())
}

/// 127.0.0.0/8.
fn loopback_net() -> IpNet {
    IpNet::V4(ipnet::Ipv4Net::new_assert(Ipv4Addr::new(127, 0, 0, 0), 8))
}

/// Drops new connections from other hosts (or pods) to 127.0.0.0/8.
fn localhost_guard() -> Vec<Statement<'static>> {
    let lo = loopback_net();
    vec![
        nft::ne(nft::meta(MetaKey::Iif), nft::string("lo")),
        nft::eq(nft::payload("ip", "daddr"), nft::prefix(lo)),
        nft::ne(nft::payload("ip", "saddr"), nft::prefix(lo)),
        nft::flags_clear(
            nft::ct("state"),
            nft::any_of(vec![nft::string("established"), nft::string("related")]),
        ),
        nft::flags_clear(nft::ct("status"), nft::string("dnat")),
        nft::drop(),
    ]
}

/// Adds `rules` to `batch`.
pub fn add(batch: &mut Batch<'static>, rules: &[Planned]) {
    let t = table();
    for r in rules {
        batch.add(t.rule(r.chain, r.expr.clone(), Some(&r.comment)));
    }
}

/// The command deleting a listed rule.
pub fn delete(chain: &str, handle: u32) -> NfCmd<'static> {
    table().delete_rule(chain, handle)
}

/// The IPv4 pod address whose host-side interface needs `route_localnet`,
/// when some mapping forwards 127.0.0.1.
pub fn localnet_target(conf: &PortmapConf, pods: &[IpAddr]) -> Option<Ipv4Addr> {
    if !conf.snat {
        return None;
    }
    let v4 = pods.iter().find_map(|p| match p {
        IpAddr::V4(a) => Some(*a),
        IpAddr::V6(_) => None,
    })?;
    conf.mappings
        .iter()
        .any(|m| m.applies_to(IpAddr::V4(v4)) && m.dest_match().is_none_or(|h| h.is_loopback()))
        .then_some(v4)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::portmap::config::Proto;

    fn conf(mappings: Vec<PortMapping>) -> PortmapConf {
        PortmapConf {
            mappings,
            snat: true,
            masq_all: false,
            mark_bit: 13,
            external_set_mark_chain: None,
        }
    }

    fn tcp(hp: u16, cp: u16, host_ip: Option<&str>) -> PortMapping {
        PortMapping {
            host_port: hp,
            container_port: cp,
            protocol: Proto::Tcp,
            host_ip: host_ip.map(|h| h.parse().unwrap()),
        }
    }

    fn ips(s: &[&str]) -> Vec<IpAddr> {
        s.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn tags_are_stable_and_parse_back() {
        let t = Tag::new("net", "abc", "eth0");
        assert_eq!(t, Tag::new("net", "abc", "eth0"));
        assert_ne!(t, Tag::new("net", "abc", "eth1"));
        assert_ne!(t.att, Tag::new("net2", "abc", "eth0").att);
        let c = t.comment("dnat tcp *:80 10.0.0.1:80");
        assert_eq!(Tag::parse(&c), Some(t));
        assert_eq!(Tag::parse("someone else's rule"), None);
    }

    #[test]
    fn dual_stack_plan() {
        let t = Tag::new("n", "c", "eth0");
        let rules = plan(
            &conf(vec![tcp(8080, 80, None)]),
            &ips(&["10.0.0.5", "fd00::5"]),
            &t,
        )
        .unwrap();
        let comments: Vec<String> = rules
            .iter()
            .map(|r| r.comment.split_once(' ').unwrap().1.to_string())
            .collect();
        assert_eq!(
            comments,
            [
                "hair tcp *:8080 10.0.0.5:80",
                "lo tcp *:8080 10.0.0.5:80",
                "dnat tcp *:8080 10.0.0.5:80",
                "hair tcp *:8080 [fd00::5]:80",
                "dnat tcp *:8080 [fd00::5]:80",
                "masq 10.0.0.5 mark 0x2000",
                "masq fd00::5 mark 0x2000",
            ]
        );
        assert!(rules.iter().all(|r| r.comment.len() <= nft::MAX_COMMENT));
        assert_eq!(
            localnet_target(&conf(vec![tcp(1, 1, None)]), &ips(&["10.0.0.5"])),
            Some(Ipv4Addr::new(10, 0, 0, 5))
        );
    }

    #[test]
    fn host_ip_picks_the_family_and_no_snat_means_dnat_only() {
        let t = Tag::new("n", "c", "eth0");
        let mut c = conf(vec![tcp(8080, 80, Some("192.168.1.1"))]);
        c.snat = false;
        let rules = plan(&c, &ips(&["10.0.0.5", "fd00::5"]), &t).unwrap();
        assert_eq!(rules.len(), 1);
        assert!(
            rules[0]
                .comment
                .ends_with("dnat tcp 192.168.1.1:8080 10.0.0.5:80")
        );
        assert_eq!(localnet_target(&c, &ips(&["10.0.0.5"])), None);

        let e = plan(
            &conf(vec![tcp(8080, 80, Some("fd00::1"))]),
            &ips(&["10.0.0.5"]),
            &t,
        )
        .unwrap_err();
        assert_eq!(e.code, code::INVALID_CONFIG);
        // A non-loopback hostIP never sees 127.0.0.1 traffic.
        assert_eq!(
            localnet_target(
                &conf(vec![tcp(1, 1, Some("192.168.1.1"))]),
                &ips(&["10.0.0.5"])
            ),
            None
        );
    }

    #[test]
    fn masq_all_marks_every_connection() {
        let t = Tag::new("n", "c", "eth0");
        let mut c = conf(vec![tcp(8080, 80, None)]);
        c.masq_all = true;
        let rules = plan(&c, &ips(&["10.0.0.5"]), &t).unwrap();
        assert_eq!(rules.len(), 2);
        let json = serde_json::to_string(&rules[0].expr).unwrap();
        assert!(json.contains("mangle"), "{json}");
    }

    #[test]
    fn longest_comments_fit() {
        let t = Tag::new("n", "c", "eth0");
        let mut m = tcp(
            65535,
            65535,
            Some("ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe"),
        );
        m.protocol = Proto::Sctp;
        let rules = plan(
            &conf(vec![m]),
            &ips(&["ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffd"]),
            &t,
        )
        .unwrap();
        for r in &rules {
            assert!(r.comment.len() <= nft::MAX_COMMENT);
            assert!(
                r.comment.ends_with(":65535") || r.comment.contains("masq"),
                "{}",
                r.comment
            );
        }
    }
}
