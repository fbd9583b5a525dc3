//! Forgetting UDP conntrack entries toward a new hostPort.
//!
//! A UDP client that sent to the hostPort before the mapping existed (a
//! DNS resolver retrying, say) has a conntrack entry without DNAT; while
//! it keeps sending, the entry never expires and its packets never reach
//! the pod. TCP has no such problem: a new connection is a new entry.

use std::net::IpAddr;

use netlink_packet_core::{NLM_F_ACK, NLM_F_DUMP};
use netlink_packet_netfilter::conntrack::{
    ConntrackAttribute, ConntrackMessage, IPTuple, ProtoTuple, Protocol, Tuple,
};
use netlink_packet_netfilter::{NetfilterHeader, NetfilterMessage, NetfilterProtoFamily};
use netlink_sys::protocols::NETLINK_NETFILTER;

use super::netlink::{Netlink, NetlinkError};

/// A UDP destination to clear: the port, and the address when the mapping
/// has a hostIP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpDest {
    pub port: u16,
    pub addr: Option<IpAddr>,
    pub ipv6: bool,
}

/// Deletes the UDP entries whose original destination matches one of
/// `dests`; returns how many went. An entry that vanished meanwhile
/// (ENOENT) is not an error.
pub fn clear_udp(dests: &[UdpDest]) -> Result<usize, NetlinkError> {
    if dests.is_empty() {
        return Ok(0);
    }
    let mut nl = Netlink::open(NETLINK_NETFILTER)?;
    let mut deleted = 0;
    for ipv6 in [false, true] {
        let wanted: Vec<&UdpDest> = dests.iter().filter(|d| d.ipv6 == ipv6).collect();
        if wanted.is_empty() {
            continue;
        }
        let family = if ipv6 {
            NetfilterProtoFamily::IPv6
        } else {
            NetfilterProtoFamily::IPv4
        };
        let entries = nl.request(
            "conntrack dump",
            NetfilterMessage::new(
                NetfilterHeader::new(family, 0, 0),
                ConntrackMessage::Get(vec![]),
            ),
            NLM_F_DUMP,
        )?;
        for e in entries {
            let Some(orig) = original_tuple(&e) else {
                continue;
            };
            let (proto, dst, dport) = summarize(orig);
            if proto != Some(Protocol::Udp) {
                continue;
            }
            let hit = wanted
                .iter()
                .any(|d| Some(d.port) == dport && d.addr.is_none_or(|a| Some(a) == dst));
            if !hit {
                continue;
            }
            let del = NetfilterMessage::new(
                NetfilterHeader::new(family, 0, 0),
                ConntrackMessage::Delete(vec![ConntrackAttribute::CtaTupleOrig(orig.to_vec())]),
            );
            match nl.request("conntrack delete", del, NLM_F_ACK) {
                Ok(_) => deleted += 1,
                Err(e) if e.errno() == Some(nix::errno::Errno::ENOENT as i32) => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(deleted)
}

fn original_tuple(m: &NetfilterMessage) -> Option<&[Tuple]> {
    let netlink_packet_netfilter::NetfilterMessageInner::Conntrack(ct) = &m.inner else {
        return None;
    };
    let attrs = match ct {
        ConntrackMessage::New(a) | ConntrackMessage::Get(a) => a,
        _ => return None,
    };
    attrs.iter().find_map(|a| match a {
        ConntrackAttribute::CtaTupleOrig(t) => Some(t.as_slice()),
        _ => None,
    })
}

fn summarize(tuple: &[Tuple]) -> (Option<Protocol>, Option<IpAddr>, Option<u16>) {
    let (mut proto, mut dst, mut dport) = (None, None, None);
    for t in tuple {
        match t {
            Tuple::Ip(ips) => {
                for ip in ips {
                    if let IPTuple::DestinationAddress(a) = ip {
                        dst = Some(*a);
                    }
                }
            }
            Tuple::Proto(ps) => {
                for p in ps {
                    match p {
                        ProtoTuple::Protocol(x) => proto = Some(*x),
                        ProtoTuple::DestinationPort(x) => dport = Some(*x),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    (proto, dst, dport)
}
