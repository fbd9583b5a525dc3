//! ADD and DEL of the bridge plugin.
//!
//! ADD, in an order chosen so that a failure leaves nothing behind:
//! 1. check that CNI_NETNS is a network namespace without an interface
//!    named CNI_IFNAME (before anything is created);
//! 2. IPAM ADD (undone by IPAM DEL);
//! 3. the bridge: created (up, with a fixed MAC) or reused; a bridge stays
//!    when a later step fails, as other pods may be joining it;
//! 4. the veth pair in one request: host end here, up and a port of the
//!    bridge, peer created directly in the pod namespace under CNI_IFNAME
//!    (undone by deleting the host end, which takes the peer with it);
//! 5. in the pod: addresses, link up, routes;
//! 6. here: gateway addresses on the bridge, IP forwarding;
//! 7. ipMasq rules in berth's nftables table, one per pod address, carrying
//!    a comment naming the network, container and interface (undone by
//!    deleting the rules with that comment).
//!
//! DEL removes the pod interface (if the namespace and it still exist), the
//! rules and the IPAM allocation; each is a no-op when already gone.

use std::collections::BTreeSet;
use std::fs::File;
use std::hash::{BuildHasher, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsFd;
use std::path::Path;

use ipnet::IpNet;
use nftables::schema::NfListObject;
use serde_json::Value;

use super::config::BridgeConf;
use crate::ipam;
use crate::link::{self, Link, LinkError, Netlink, NewRoute};
use crate::netns::{self, NetnsError};
use crate::nft::{self, NfChainType, NfFamily, NfHook, Nft, TableRef};
use crate::protocol::{Command, Invocation};
use crate::types::{CniError, CniResult, Interface, IpConfig, NetConf, Route, code};

/// berth's nftables table for the bridge plugin's masquerading.
pub const NFT_TABLE: &str = "berth-bridge";
pub const NFT_FAMILY: NfFamily = NfFamily::INet;
pub const NFT_CHAIN: &str = "postrouting";
/// `srcnat`.
const NFT_PRIORITY: i32 = 100;

/// The table of [`NFT_FAMILY`] [`NFT_TABLE`].
pub fn nft_table() -> TableRef {
    TableRef::new(NFT_FAMILY, NFT_TABLE)
}

/// Index of the pod's interface in the result's `interfaces`.
pub const POD_IFACE: usize = 2;

fn link_err(e: LinkError) -> CniError {
    CniError::new(code::KERNEL, e.to_string())
}

pub(super) fn nft_err(e: nft::NftError) -> CniError {
    CniError::new(code::KERNEL, e.to_string())
}

/// Opens CNI_NETNS.
pub(super) fn open_netns(inv: &Invocation) -> Result<(&Path, File), CniError> {
    let path = inv.netns.as_deref().ok_or_else(|| {
        CniError::new(
            code::INVALID_ENVIRONMENT,
            "CNI_NETNS is required for this command",
        )
    })?;
    let f = File::open(path).map_err(|e| {
        CniError::new(
            code::INVALID_ENVIRONMENT,
            format!("CNI_NETNS {}: {e}", path.display()),
        )
    })?;
    Ok((path, f))
}

/// Runs `f` in the pod namespace at `path`.
pub(super) fn in_pod<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> Result<T, CniError> + Send + 'static,
) -> Result<T, CniError> {
    netns::run_in(path, f).map_err(|e| match e {
        NetnsError::Enter { path, source } => CniError::new(
            code::INVALID_ENVIRONMENT,
            format!(
                "CNI_NETNS {} is not a network namespace ({source})",
                path.display()
            ),
        ),
        other => CniError::new(code::INVALID_ENVIRONMENT, other.to_string()),
    })?
}

/// The per-container comment on the ipMasq rules.
pub fn masq_comment(network: &str, container_id: &str, ifname: &str) -> String {
    nft::comment(&format!("bridge:{network}:{container_id}:{ifname}"))
}

/// What an ADD has done so far, undone in reverse when a later step fails.
struct Undo<'a> {
    inv: &'a Invocation,
    raw: &'a Value,
    ipam: Option<&'a str>,
    veth: Option<u32>,
    masq: Option<String>,
}

impl Undo<'_> {
    fn run(self, nl: Option<&Netlink>) {
        if let Some(comment) = &self.masq
            && let Err(e) = Nft::locate().delete_rules_with_comment(&nft_table(), comment)
        {
            tracing::warn!(error = %e, "undoing ADD: removing masquerade rules");
        }
        if let (Some(index), Some(nl)) = (self.veth, nl)
            && let Err(e) = nl.delete_link(index)
            && !e.is_not_found()
        {
            tracing::warn!(error = %e, "undoing ADD: deleting the veth pair");
        }
        if let Some(t) = self.ipam
            && let Err(e) = ipam::delegate_raw(t, Command::Del, self.inv, self.raw)
        {
            tracing::warn!(error = %e, "undoing ADD: releasing the IPAM allocation");
        }
    }
}

pub fn add(c: &BridgeConf, inv: &Invocation, raw: &Value) -> Result<CniResult, CniError> {
    let ifname = inv.ifname.clone();
    if !link::valid_ifname(&ifname) {
        return Err(CniError::new(
            code::INVALID_ENVIRONMENT,
            format!("CNI_IFNAME {ifname:?} is not a valid interface name"),
        ));
    }
    let (ns_path, ns_file) = open_netns(inv)?;
    let name = ifname.clone();
    let taken = in_pod(ns_path, move || {
        Netlink::open()
            .and_then(|nl| nl.link_by_name(&name))
            .map_err(link_err)
    })?;
    if taken.is_some() {
        return Err(iface_taken(&ifname, ns_path));
    }

    let mut undo = Undo {
        inv,
        raw,
        ipam: None,
        veth: None,
        masq: None,
    };
    let mut result = CniResult::default();
    if let Some(t) = c.ipam_type.as_deref() {
        let v = ipam::delegate_raw(t, Command::Add, inv, raw)?.ok_or_else(|| {
            CniError::new(
                code::IO_FAILURE,
                format!("IPAM plugin {t} printed no result"),
            )
        });
        undo.ipam = Some(t);
        match v.and_then(|v| CniResult::from_value(&v)) {
            Ok(r) => result = r,
            Err(e) => {
                undo.run(None);
                return Err(e);
            }
        }
        if result.ips.is_empty() {
            undo.run(None);
            return Err(CniError::new(
                code::INVALID_CONFIG,
                format!("IPAM plugin {t} returned no IP address"),
            ));
        }
    }
    let nl = match Netlink::open() {
        Ok(nl) => nl,
        Err(e) => {
            undo.run(None);
            return Err(link_err(e));
        }
    };
    match add_links(c, inv, ns_path, &ns_file, &nl, &mut result, &mut undo) {
        Ok(()) => Ok(result),
        Err(e) => {
            undo.run(Some(&nl));
            Err(e)
        }
    }
}

fn iface_taken(ifname: &str, ns: &Path) -> CniError {
    CniError::new(
        code::INVALID_ENVIRONMENT,
        format!(
            "CNI_IFNAME: an interface named {ifname:?} already exists in network namespace {}",
            ns.display()
        ),
    )
}

fn random_veth_name() -> String {
    // RandomState is seeded from the OS for each process: enough to make
    // collisions between concurrent plugin runs unlikely (and they are retried).
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.write_u32(std::process::id());
    format!("veth{:08x}", h.finish() as u32)
}

/// Steps 3 to 7 of ADD; `undo` learns what to remove if a step fails.
fn add_links<'a>(
    c: &BridgeConf,
    inv: &Invocation,
    ns_path: &Path,
    ns_file: &File,
    nl: &Netlink,
    result: &mut CniResult,
    undo: &mut Undo<'a>,
) -> Result<(), CniError> {
    let br = ensure_bridge(nl, c)?;

    let mut host = None;
    for _ in 0..8 {
        let name = random_veth_name();
        match nl.create_veth(
            &name,
            &inv.ifname,
            ns_file.as_fd(),
            c.mtu,
            c.mac,
            Some(br.index),
        ) {
            Ok(()) => {
                host = Some(name);
                break;
            }
            Err(e) if e.is_exists() => {
                if nl.link_by_name(&name).map_err(link_err)?.is_none() {
                    return Err(iface_taken(&inv.ifname, ns_path));
                }
            }
            Err(e) => return Err(link_err(e)),
        }
    }
    let host_name = host.ok_or_else(|| {
        CniError::new(
            code::TRY_AGAIN_LATER,
            "no free name for the host end of the veth pair",
        )
    })?;
    let host = nl
        .link_by_name(&host_name)
        .map_err(link_err)?
        .ok_or_else(|| {
            CniError::new(
                code::KERNEL,
                format!("veth {host_name} vanished after its creation"),
            )
        })?;
    undo.veth = Some(host.index);
    if c.hairpin {
        nl.set_hairpin(host.index, true).map_err(link_err)?;
    }

    let gateways = assign_gateways(c, result);
    let ips = result.ips.clone();
    let routes = result.routes.clone();
    let ifname = inv.ifname.clone();
    let pod_mac = in_pod(ns_path, move || {
        configure_pod(&ifname, &ips, &routes).map_err(link_err)
    })?;

    if c.is_gateway {
        for gw in &gateways {
            ensure_address(nl, &br, *gw, c.force_address)?;
        }
        if gateways.iter().any(|g| g.addr().is_ipv4()) {
            link::sysctl_set("net/ipv4/ip_forward", "1").map_err(link_err)?;
        }
        if gateways.iter().any(|g| g.addr().is_ipv6()) {
            link::sysctl_set("net/ipv6/conf/all/forwarding", "1").map_err(link_err)?;
        }
    }

    if c.ip_masq && !result.ips.is_empty() {
        let comment = masq_comment(&c.network, &inv.container_id, &inv.ifname);
        undo.masq = Some(comment.clone());
        add_masquerade(&result.ips, &comment)?;
    }

    if !result.ips.is_empty()
        && let Err(e) = announce(nl, host.index, ns_path, &inv.ifname)
    {
        // Only a cache refresh: the pod works without it.
        tracing::warn!(error = %e, "announcing the pod's addresses");
    }

    // Read again: the bridge's address may have changed as the port joined.
    let br_now = nl.link_by_index(br.index).map_err(link_err)?.unwrap_or(br);
    result.interfaces = vec![
        Interface {
            name: br_now.name.clone(),
            mac: br_now.mac.clone().unwrap_or_default(),
            mtu: None,
            sandbox: String::new(),
        },
        Interface {
            name: host.name.clone(),
            mac: host.mac.clone().unwrap_or_default(),
            mtu: None,
            sandbox: String::new(),
        },
        Interface {
            name: inv.ifname.clone(),
            mac: pod_mac,
            mtu: None,
            sandbox: ns_path.display().to_string(),
        },
    ];
    if let Some(dns) = &c.dns {
        result.dns = dns.clone();
    }
    Ok(())
}

fn ensure_bridge(nl: &Netlink, c: &BridgeConf) -> Result<Link, CniError> {
    let (br, _) = nl.ensure_bridge(&c.bridge, c.mtu).map_err(link_err)?;
    if !br.is_kind("bridge") {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            format!(
                "{:?} already exists and is not a bridge (it is {})",
                c.bridge,
                br.kind.as_deref().unwrap_or("a device without a kind")
            ),
        ));
    }
    if c.promisc && !br.promisc {
        nl.set_promisc(br.index, true).map_err(link_err)?;
    }
    if !br.up {
        nl.set_up(br.index, true).map_err(link_err)?;
    }
    Ok(br)
}

/// Sets each IP's interface to the pod's, fills in gateways the bridge
/// provides (the subnet's first address) when `isGateway`, adds a default
/// route per family through it when `isDefaultGateway` (unless IPAM gave one
/// with a gateway), and returns the bridge's gateway addresses (with the
/// subnets' prefix lengths).
fn assign_gateways(c: &BridgeConf, result: &mut CniResult) -> Vec<IpNet> {
    let mut gws = Vec::new();
    let mut default_done: BTreeSet<bool> = BTreeSet::new();
    for ip in &mut result.ips {
        ip.interface = Some(POD_IFACE);
        let v4 = ip.address.addr().is_ipv4();
        if ip.gateway.is_none() && c.is_gateway {
            ip.gateway = first_host(ip.address);
        }
        if c.is_default_gateway && !default_done.contains(&v4) {
            let has_default = result
                .routes
                .iter()
                .any(|r| r.gw.is_some() && r.dst.prefix_len() == 0 && r.dst.addr().is_ipv4() == v4);
            if !has_default && let Some(gw) = ip.gateway {
                result.routes.push(Route {
                    dst: if v4 {
                        IpNet::V4(Default::default())
                    } else {
                        IpNet::V6(Default::default())
                    },
                    gw: Some(gw),
                    mtu: None,
                    advmss: None,
                    priority: None,
                    table: None,
                    scope: None,
                });
            }
            default_done.insert(v4);
        }
        if c.is_gateway
            && let Some(gw) = ip.gateway
            && let Ok(net) = IpNet::new(gw, ip.address.prefix_len())
            && !gws.contains(&net)
        {
            gws.push(net);
        }
    }
    gws
}

fn first_host(net: IpNet) -> Option<IpAddr> {
    match net.network() {
        IpAddr::V4(a) => Some(IpAddr::V4(Ipv4Addr::from(u32::from(a).checked_add(1)?))),
        IpAddr::V6(a) => Some(IpAddr::V6(Ipv6Addr::from(u128::from(a).checked_add(1)?))),
    }
}

/// In the pod namespace: addresses, link up, routes; returns the MAC.
fn configure_pod(ifname: &str, ips: &[IpConfig], routes: &[Route]) -> Result<String, LinkError> {
    let nl = Netlink::open()?;
    let l = nl.link_by_name(ifname)?.ok_or_else(|| LinkError::Netlink {
        op: format!("looking up {ifname} in the pod"),
        source: rtnetlink::Error::RequestFailed,
    })?;
    // Have the kernel announce the addresses when the link's address is set
    // (see announce): gratuitous ARP, unsolicited neighbour advertisement.
    if ips.iter().any(|i| i.address.addr().is_ipv4()) {
        link::sysctl_set(&format!("net/ipv4/conf/{ifname}/arp_notify"), "1")?;
    }
    if ips.iter().any(|i| i.address.addr().is_ipv6()) {
        ignore_missing(link::sysctl_set(
            &format!("net/ipv6/conf/{ifname}/ndisc_notify"),
            "1",
        ))?;
        // A namespace may have IPv6 off by default; the interface needs it.
        ignore_missing(link::sysctl_set(
            &format!("net/ipv6/conf/{ifname}/disable_ipv6"),
            "0",
        ))?;
        // No duplicate address detection on the pod's interface, as the
        // reference plugin: the allocator already guarantees uniqueness, and
        // DAD would keep the addresses unusable for a second or more.
        ignore_missing(link::sysctl_set(
            &format!("net/ipv6/conf/{ifname}/accept_dad"),
            "0",
        ))?;
    }
    for ip in ips {
        match nl.add_address(l.index, ip.address, false) {
            Err(e) if e.is_exists() => {}
            other => other?,
        }
    }
    nl.set_up(l.index, true)?;
    // Routes without a gateway go through their family's first gateway, as
    // the reference plugins do.
    let family_gw = |v4: bool| {
        ips.iter()
            .filter(|i| i.address.addr().is_ipv4() == v4)
            .find_map(|i| i.gateway)
    };
    let mut done = Vec::new();
    for r in routes {
        let gw = r.gw.or_else(|| family_gw(r.dst.addr().is_ipv4()));
        let key = (r.dst.trunc(), gw, r.table, r.priority);
        if done.contains(&key) {
            continue;
        }
        done.push(key);
        let nr = NewRoute {
            dst: Some(r.dst.trunc()),
            gateway: gw,
            oif: l.index,
            mtu: r.mtu,
            advmss: r.advmss,
            priority: r.priority,
            table: r.table,
            scope: r.scope.and_then(|s| u8::try_from(s).ok()),
        };
        match nl.add_route(&nr) {
            Err(e) if e.is_exists() => {}
            other => other?,
        }
    }
    let l = nl.link_by_index(l.index)?.unwrap_or(l);
    Ok(l.mac.unwrap_or_default())
}

/// Tells the node and the other pods where the pod's addresses are now: one
/// of them may have been another pod's a moment ago, and still be cached
/// with that pod's MAC, which would black-hole traffic until the cache entry
/// expires (tens of seconds).
///
/// The kernel sends the announcements (arp_notify, ndisc_notify) when the
/// interface comes up or its MAC is set, but the host end's bridge port is
/// enabled only once the kernel's link watcher has seen its carrier (soon:
/// veth carrier changes are handled at once), so announcing as the link
/// comes up would be lost: wait for the port to leave the disabled state,
/// then set the pod interface's MAC again. (On a bridge running STP the
/// port then listens and learns for a while; nothing is waited for there.)
fn announce(nl: &Netlink, host: u32, ns_path: &Path, ifname: &str) -> Result<(), CniError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    loop {
        let l = nl.link_by_index(host).map_err(link_err)?;
        if l.and_then(|l| l.port_state)
            .is_some_and(|s| s != link::BridgePortState::Disabled)
        {
            break;
        }
        if std::time::Instant::now() >= deadline {
            tracing::warn!(
                veth = host,
                "the bridge port is still disabled; not announcing the pod's addresses"
            );
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    let ifname = ifname.to_string();
    in_pod(ns_path, move || {
        let reset = || -> Result<(), LinkError> {
            let nl = Netlink::open()?;
            if let Some(l) = nl.link_by_name(&ifname)?
                && let Some(mac) = l.mac.as_deref().and_then(link::parse_mac)
            {
                nl.set_mac(l.index, mac)?;
            }
            Ok(())
        };
        reset().map_err(link_err)
    })
}

fn ignore_missing(r: Result<(), LinkError>) -> Result<(), LinkError> {
    match r {
        Err(LinkError::Sysctl { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            Ok(())
        }
        other => other,
    }
}

/// Puts gateway address `gw` on the bridge. Another IPv4 address, or an
/// IPv6 one of an overlapping subnet, is a conflict: replaced with
/// `forceAddress`, else an error.
fn ensure_address(nl: &Netlink, br: &Link, gw: IpNet, force: bool) -> Result<(), CniError> {
    let addrs = nl.addresses(Some(br.index)).map_err(link_err)?;
    let v4 = gw.addr().is_ipv4();
    for a in addrs.iter().filter(|a| a.net.addr().is_ipv4() == v4) {
        if a.net == gw {
            return Ok(());
        }
        let conflicts = v4 || a.net.contains(&gw.addr()) || gw.contains(&a.net.addr());
        if !conflicts {
            continue;
        }
        if force {
            nl.del_address(br.index, a.net).map_err(link_err)?;
        } else {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                format!(
                    "bridge {:?} already has address {}, not the gateway {gw} (set forceAddress to replace it)",
                    br.name, a.net
                ),
            ));
        }
    }
    match nl.add_address(br.index, gw, true) {
        Err(e) if e.is_exists() => Ok(()),
        other => other.map_err(link_err),
    }
}

/// The masquerade rule for one pod address: from it, to anywhere outside
/// its subnet and not multicast.
fn masq_rule(ip: IpNet, comment: &str) -> NfListObject<'static> {
    let (proto, mcast) = if ip.addr().is_ipv4() {
        ("ip", IpNet::V4("224.0.0.0/4".parse().unwrap_or_default()))
    } else {
        ("ip6", IpNet::V6("ff00::/8".parse().unwrap_or_default()))
    };
    nft_table().rule(
        NFT_CHAIN,
        vec![
            nft::eq(nft::payload(proto, "saddr"), nft::addr(ip.addr())),
            nft::ne(nft::payload(proto, "daddr"), nft::prefix(ip.trunc())),
            nft::ne(nft::payload(proto, "daddr"), nft::prefix(mcast)),
            nft::masquerade(),
        ],
        Some(comment),
    )
}

/// Adds the rules alone first: once the table and chain exist (every ADD
/// but the node's first), adding them again would be a chain update, which
/// the kernel frees only after an RCU grace period. When they are missing
/// the whole batch makes them.
fn add_masquerade(ips: &[IpConfig], comment: &str) -> Result<(), CniError> {
    let nft = Nft::locate();
    let mut rules = nft::batch();
    for ip in ips {
        rules.add(masq_rule(ip.address, comment));
    }
    match nft.apply(rules) {
        Err(e) if e.is_not_found() => nft.apply(masquerade_batch(ips, comment)),
        other => other,
    }
    .map_err(nft_err)
}

/// The table, its chain and one masquerade rule per address in `ips`.
pub fn masquerade_batch(ips: &[IpConfig], comment: &str) -> nft::Batch<'static> {
    let t = nft_table();
    let mut b = nft::batch();
    b.add(t.table());
    b.add(t.base_chain(
        NFT_CHAIN,
        NfChainType::NAT,
        NfHook::Postrouting,
        NFT_PRIORITY,
    ));
    for ip in ips {
        b.add(masq_rule(ip.address, comment));
    }
    b
}

pub fn del(c: &BridgeConf, inv: &Invocation, raw: &Value) -> Result<(), CniError> {
    let mut errors: Vec<CniError> = Vec::new();
    if let Some(path) = inv.netns.as_deref() {
        let ifname = inv.ifname.clone();
        match netns::run_in(path, move || delete_pod_iface(&ifname)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => errors.push(link_err(e)),
            // The namespace is gone, and its interfaces with it.
            Err(NetnsError::Open { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound => {}
            // A mount point left after the namespace was unmounted.
            Err(NetnsError::Enter {
                source: nix::errno::Errno::EINVAL,
                ..
            }) => {}
            Err(e) => errors.push(CniError::new(code::INVALID_ENVIRONMENT, e.to_string())),
        }
    }
    if c.ip_masq {
        let comment = masq_comment(&c.network, &inv.container_id, &inv.ifname);
        if let Err(e) = Nft::locate().delete_rules_with_comment(&nft_table(), &comment) {
            errors.push(nft_err(e));
        }
    }
    if let Some(t) = c.ipam_type.as_deref()
        && let Err(e) = ipam::delegate_raw(t, Command::Del, inv, raw)
    {
        errors.push(e);
    }
    match errors.into_iter().next() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// GC: removes this network's masquerade rules of attachments the runtime
/// no longer has (`cni.dev/valid-attachments`), then lets the IPAM plugin
/// free their addresses. (Their veth pairs went with their namespaces.)
pub fn gc(c: &BridgeConf, conf: &NetConf, inv: &Invocation, raw: &Value) -> Result<(), CniError> {
    let valid: BTreeSet<String> = conf
        .valid_attachments
        .iter()
        .flatten()
        .map(|a| masq_comment(&c.network, &a.container_id, &a.ifname))
        .collect();
    let ours = format!("bridge:{}:", c.network);
    let removed = Nft::locate()
        .delete_rules_where(&nft_table(), |r| {
            r.comment
                .as_deref()
                .is_some_and(|cm| cm.starts_with(&ours) && !valid.contains(cm))
        })
        .map_err(nft_err)?;
    if removed > 0 {
        tracing::info!(rules = removed, network = %c.network, "GC: removed masquerade rules");
    }
    if let Some(t) = c.ipam_type.as_deref() {
        ipam::delegate_raw(t, Command::Gc, inv, raw)?;
    }
    Ok(())
}

fn delete_pod_iface(ifname: &str) -> Result<(), LinkError> {
    let nl = Netlink::open()?;
    match nl.link_by_name(ifname)? {
        // The name is free once the link has left the namespace: the
        // kernel's freeing of the device needs no waiting for.
        Some(l) if l.is_kind("veth") => match nl.delete_link_unwaited(l.index) {
            Err(e) if e.is_not_found() => Ok(()),
            other => other,
        },
        Some(l) => {
            tracing::warn!(
                interface = ifname,
                kind = l.kind.as_deref().unwrap_or("none"),
                "not deleting a pod interface that is not a veth"
            );
            Ok(())
        }
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(gw: bool, default_gw: bool) -> BridgeConf {
        BridgeConf {
            network: "n".into(),
            bridge: "cni0".into(),
            is_gateway: gw || default_gw,
            is_default_gateway: default_gw,
            force_address: false,
            ip_masq: false,
            mtu: None,
            hairpin: false,
            promisc: false,
            ipam_type: Some("host-local".into()),
            mac: None,
            dns: None,
        }
    }

    fn ip(a: &str, gw: Option<&str>) -> IpConfig {
        IpConfig {
            address: a.parse().unwrap(),
            gateway: gw.map(|g| g.parse().unwrap()),
            interface: None,
        }
    }

    #[test]
    fn gateways_and_default_routes_per_family() {
        let mut r = CniResult {
            ips: vec![ip("10.1.0.5/24", None), ip("fd00:1::5/64", None)],
            ..Default::default()
        };
        let gws = assign_gateways(&conf(false, true), &mut r);
        assert_eq!(
            gws,
            vec![
                "10.1.0.1/24".parse::<IpNet>().unwrap(),
                "fd00:1::1/64".parse().unwrap()
            ]
        );
        assert_eq!(r.ips[0].interface, Some(POD_IFACE));
        assert_eq!(r.ips[1].gateway, Some("fd00:1::1".parse().unwrap()));
        let defaults: Vec<_> = r.routes.iter().map(|r| r.dst.to_string()).collect();
        assert_eq!(defaults, vec!["0.0.0.0/0", "::/0"]);
    }

    #[test]
    fn an_ipam_default_route_with_a_gateway_is_kept_alone() {
        let mut r = CniResult {
            ips: vec![ip("10.1.0.5/24", Some("10.1.0.254"))],
            routes: vec![Route {
                dst: "0.0.0.0/0".parse().unwrap(),
                gw: Some("10.1.0.254".parse().unwrap()),
                mtu: None,
                advmss: None,
                priority: None,
                table: None,
                scope: None,
            }],
            ..Default::default()
        };
        let gws = assign_gateways(&conf(false, true), &mut r);
        assert_eq!(gws, vec!["10.1.0.254/24".parse::<IpNet>().unwrap()]);
        assert_eq!(r.routes.len(), 1);
    }

    #[test]
    fn without_gateway_nothing_is_invented() {
        let mut r = CniResult {
            ips: vec![ip("10.1.0.5/24", None)],
            ..Default::default()
        };
        assert!(assign_gateways(&conf(false, false), &mut r).is_empty());
        assert_eq!(r.ips[0].gateway, None);
        assert!(r.routes.is_empty());
    }

    #[test]
    fn masquerade_rules_skip_the_subnet_and_multicast() {
        let v = serde_json::to_value(masq_rule("10.1.0.5/24".parse().unwrap(), "c")).unwrap();
        let v = &v["rule"];
        assert_eq!(v["table"], NFT_TABLE);
        assert_eq!(v["chain"], NFT_CHAIN);
        assert_eq!(v["comment"], "c");
        assert_eq!(v["expr"][3], serde_json::json!({"masquerade": null}));
        assert_eq!(v["expr"][0]["match"]["right"], "10.1.0.5");
        assert_eq!(v["expr"][1]["match"]["right"]["prefix"]["addr"], "10.1.0.0");
        assert_eq!(v["expr"][1]["match"]["op"], "!=");
        assert_eq!(
            v["expr"][2]["match"]["right"]["prefix"]["addr"],
            "224.0.0.0"
        );
        let v = serde_json::to_value(masq_rule("fd00::5/64".parse().unwrap(), "c")).unwrap();
        let v = &v["rule"];
        assert_eq!(v["expr"][0]["match"]["left"]["payload"]["protocol"], "ip6");
        assert_eq!(v["expr"][2]["match"]["right"]["prefix"]["addr"], "ff00::");
    }

    #[test]
    fn veth_names_fit_and_vary() {
        let a = random_veth_name();
        assert!(link::valid_ifname(&a) && a.starts_with("veth"), "{a}");
        assert_ne!(a, random_veth_name());
    }
}
