//! CHECK of the bridge plugin: what the prevResult says was set up must
//! still be there. The bridge (a bridge, with its MAC, promiscuous when
//! asked); the pod's interface in CNI_NETNS (a veth, with its MAC, its
//! addresses, the routes); the host end among the result's interfaces (the
//! pod interface's peer and a port of the bridge); the masquerade rules.

use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::Value;

use super::config::BridgeConf;
use super::setup::{in_pod, masq_comment, nft_err, nft_table, open_netns};
use crate::ipam;
use crate::link::{Address, Link, LinkError, Netlink, RouteEntry};
use crate::nft::Nft;
use crate::protocol::{Command, Invocation};
use crate::types::{CniError, CniResult, NetConf, code};

fn failed(msg: impl Into<String>) -> CniError {
    CniError::new(code::CHECK_MISMATCH, msg)
}

fn link_err(e: LinkError) -> CniError {
    CniError::new(code::KERNEL, e.to_string())
}

/// What CHECK reads in the pod's namespace.
struct PodState {
    link: Option<Link>,
    addresses: Vec<Address>,
    routes: Vec<RouteEntry>,
}

pub fn check(
    c: &BridgeConf,
    conf: &NetConf,
    inv: &Invocation,
    raw: &Value,
) -> Result<(), CniError> {
    let (ns_path, _ns) = open_netns(inv)?;
    if let Some(t) = c.ipam_type.as_deref() {
        ipam::delegate_raw(t, Command::Check, inv, raw)?;
    }
    let prev = conf
        .prev_result
        .as_ref()
        .ok_or_else(|| CniError::new(code::INVALID_CONFIG, "CHECK needs a prevResult"))?;
    let prev = CniResult::from_value(prev)?;
    let sandbox = ns_path.display().to_string();

    let br_if = prev
        .interfaces
        .iter()
        .find(|i| i.name == c.bridge && i.sandbox.is_empty())
        .ok_or_else(|| failed(format!("bridge {} is not in prevResult", c.bridge)))?;
    let pod_pos = prev
        .interfaces
        .iter()
        .position(|i| i.name == inv.ifname && i.sandbox == sandbox)
        .ok_or_else(|| {
            failed(format!(
                "prevResult has no interface {} in sandbox {sandbox}",
                inv.ifname
            ))
        })?;
    let pod_if = &prev.interfaces[pod_pos];

    let nl = Netlink::open().map_err(link_err)?;
    let br = nl
        .link_by_name(&c.bridge)
        .map_err(link_err)?
        .ok_or_else(|| failed(format!("bridge {} does not exist", c.bridge)))?;
    if !br.is_kind("bridge") {
        return Err(failed(format!("{} is not a bridge", c.bridge)));
    }
    if !br_if.mac.is_empty() && !same_mac(&br_if.mac, br.mac.as_deref()) {
        return Err(failed(format!(
            "bridge {} has MAC {}, prevResult says {}",
            c.bridge,
            br.mac.as_deref().unwrap_or("none"),
            br_if.mac
        )));
    }
    if c.promisc && !br.promisc {
        return Err(failed(format!(
            "bridge {} is not in promiscuous mode",
            c.bridge
        )));
    }

    let ifname = inv.ifname.clone();
    let pod = in_pod(ns_path, move || {
        let read = || -> Result<PodState, LinkError> {
            let nl = Netlink::open()?;
            let link = nl.link_by_name(&ifname)?;
            let (addresses, routes) = match &link {
                Some(l) => (nl.addresses(Some(l.index))?, nl.routes()?),
                None => (Vec::new(), Vec::new()),
            };
            Ok(PodState {
                link,
                addresses,
                routes,
            })
        };
        read().map_err(link_err)
    })?;
    let pl = pod.link.ok_or_else(|| {
        failed(format!(
            "interface {} does not exist in {sandbox}",
            inv.ifname
        ))
    })?;
    if !pl.is_kind("veth") {
        return Err(failed(format!("interface {} is not a veth", inv.ifname)));
    }
    if !pod_if.mac.is_empty() && !same_mac(&pod_if.mac, pl.mac.as_deref()) {
        return Err(failed(format!(
            "interface {} has MAC {}, prevResult says {}",
            inv.ifname,
            pl.mac.as_deref().unwrap_or("none"),
            pod_if.mac
        )));
    }

    // The host end: the pod interface's peer, a port of the bridge.
    let host = prev
        .interfaces
        .iter()
        .filter(|i| i.sandbox.is_empty() && i.name != c.bridge)
        .find_map(|i| {
            let l = nl.link_by_name(&i.name).ok().flatten()?;
            (Some(l.index) == pl.peer_index).then_some((i, l))
        });
    let Some((host_if, host)) = host else {
        return Err(failed(format!(
            "the host end of {}'s veth pair is not among prevResult's interfaces",
            inv.ifname
        )));
    };
    if host.controller != Some(br.index) {
        return Err(failed(format!(
            "veth {} is not a port of bridge {}",
            host.name, c.bridge
        )));
    }
    if !host_if.mac.is_empty() && !same_mac(&host_if.mac, host.mac.as_deref()) {
        return Err(failed(format!(
            "veth {} has MAC {}, prevResult says {}",
            host.name,
            host.mac.as_deref().unwrap_or("none"),
            host_if.mac
        )));
    }

    for ip in prev
        .ips
        .iter()
        .filter(|ip| ip.interface.is_none_or(|i| i == pod_pos))
    {
        if !pod.addresses.iter().any(|a| a.net == ip.address) {
            return Err(failed(format!(
                "address {} is missing from {} in {sandbox}",
                ip.address, inv.ifname
            )));
        }
    }
    for r in &prev.routes {
        if !route_present(&pod.routes, r.dst, r.gw, r.table) {
            let via = r.gw.map(|g| format!(" via {g}")).unwrap_or_default();
            return Err(failed(format!(
                "route {}{via} is missing in {sandbox}",
                r.dst
            )));
        }
    }

    if c.ip_masq && !prev.ips.is_empty() {
        let comment = masq_comment(&c.network, &inv.container_id, &inv.ifname);
        let rules = Nft::locate()
            .rules_with_comment(&nft_table(), &comment)
            .map_err(nft_err)?;
        if rules.len() < prev.ips.len() {
            return Err(failed(format!(
                "masquerade rules for {} are missing (found {} of {})",
                inv.container_id,
                rules.len(),
                prev.ips.len()
            )));
        }
    }
    Ok(())
}

fn same_mac(a: &str, b: Option<&str>) -> bool {
    b.is_some_and(|b| a.eq_ignore_ascii_case(b))
}

fn route_present(
    routes: &[RouteEntry],
    dst: IpNet,
    gw: Option<IpAddr>,
    table: Option<u32>,
) -> bool {
    let dst = dst.trunc();
    routes.iter().any(|r| {
        r.dst == dst
            && table.is_none_or(|t| t == r.table)
            && gw.is_none_or(|g| r.gateway == Some(g))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_match_on_destination_gateway_and_table() {
        let rs = vec![RouteEntry {
            dst: "0.0.0.0/0".parse().unwrap(),
            gateway: Some("10.1.0.1".parse().unwrap()),
            oif: Some(2),
            table: 254,
            priority: None,
        }];
        let d = "0.0.0.0/0".parse().unwrap();
        assert!(route_present(&rs, d, None, None));
        assert!(route_present(
            &rs,
            d,
            Some("10.1.0.1".parse().unwrap()),
            Some(254)
        ));
        assert!(!route_present(
            &rs,
            d,
            Some("10.1.0.2".parse().unwrap()),
            None
        ));
        assert!(!route_present(&rs, d, None, Some(100)));
        assert!(!route_present(
            &rs,
            "10.0.0.0/8".parse().unwrap(),
            None,
            None
        ));
    }
}
