//! `route_localnet` for the interface a pod is reached through, so that
//! connections to `127.0.0.1:hostPort` may be DNATed off the loopback.
//!
//! The interface is found the way the kernel will route the DNATed packet:
//! a route lookup for the pod's address (the bridge for the bridge plugin,
//! the host veth for ptp). The sysctl is per interface and per network
//! namespace, so only the node's interface toward its pods is affected,
//! never `all` (which would expose every service bound to 127.0.0.1 to the
//! whole link).

use std::net::Ipv4Addr;
use std::path::PathBuf;

use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::protocols::NETLINK_ROUTE;

use super::netlink::{Netlink, NetlinkError};

#[derive(Debug, thiserror::Error)]
pub enum LocalnetError {
    #[error("looking up the route to {pod}: {source}")]
    Route { pod: Ipv4Addr, source: NetlinkError },
    #[error("no route to {pod} through an interface")]
    NoRoute { pod: Ipv4Addr },
    #[error("{pod} is routed through the loopback: not a pod address of this node")]
    Loopback { pod: Ipv4Addr },
    #[error("{path}: {source}")]
    Sysctl {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The name of the interface that packets to `pod` leave through.
pub fn interface_toward(pod: Ipv4Addr) -> Result<String, LocalnetError> {
    let route_err = |source| LocalnetError::Route { pod, source };
    let mut nl = Netlink::open(NETLINK_ROUTE).map_err(route_err)?;
    let mut q = RouteMessage::default();
    q.header.address_family = AddressFamily::Inet;
    q.header.destination_prefix_length = 32;
    q.attributes
        .push(RouteAttribute::Destination(RouteAddress::Inet(pod)));
    let replies = nl
        .request("route lookup", RouteNetlinkMessage::GetRoute(q), 0)
        .map_err(route_err)?;
    let oif = replies
        .iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewRoute(r) => r.attributes.iter().find_map(|a| match a {
                RouteAttribute::Oif(i) => Some(*i),
                _ => None,
            }),
            _ => None,
        })
        .next()
        .ok_or(LocalnetError::NoRoute { pod })?;
    let mut l = LinkMessage::default();
    l.header.index = oif;
    let links = nl
        .request("link lookup", RouteNetlinkMessage::GetLink(l), 0)
        .map_err(route_err)?;
    let name = links
        .iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) => l.attributes.iter().find_map(|a| match a {
                LinkAttribute::IfName(n) => Some(n.clone()),
                _ => None,
            }),
            _ => None,
        })
        .next()
        .ok_or(LocalnetError::NoRoute { pod })?;
    if name == "lo" {
        return Err(LocalnetError::Loopback { pod });
    }
    Ok(name)
}

fn sysctl(ifname: &str) -> PathBuf {
    // /proc/sys/net follows the calling thread's network namespace.
    PathBuf::from(format!("/proc/sys/net/ipv4/conf/{ifname}/route_localnet"))
}

pub fn enabled(ifname: &str) -> Result<bool, LocalnetError> {
    let path = sysctl(ifname);
    std::fs::read_to_string(&path)
        .map(|s| s.trim() == "1")
        .map_err(|source| LocalnetError::Sysctl { path, source })
}

pub fn enable(ifname: &str) -> Result<(), LocalnetError> {
    if enabled(ifname)? {
        return Ok(());
    }
    let path = sysctl(ifname);
    std::fs::write(&path, "1").map_err(|source| LocalnetError::Sysctl { path, source })
}
