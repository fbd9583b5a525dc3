//! Links, addresses and routes over rtnetlink, for the plugins that build
//! pod interfaces (bridge, veth pairs) and for their CHECKs.
//!
//! A [`Netlink`] is a connection in the network namespace of the thread that
//! opened it (a netlink socket stays in the namespace it was created in), with
//! its own current-thread tokio runtime, so callers stay synchronous and
//! never carry a namespace into a shared executor: open one on the thread
//! that [`crate::netns::run_in`] starts for the pod, and another on the
//! caller's own thread for the node.
//!
//! Also here: the per-namespace `/proc/sys/net` knobs ([`sysctl_set`]),
//! which resolve against the namespace of the thread that opens them.

use std::net::IpAddr;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::PathBuf;

use futures::TryStreamExt;
use ipnet::IpNet;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
pub use netlink_packet_route::link::BridgePortState;
use netlink_packet_route::link::{
    InfoBridgePort, InfoData, InfoKind, InfoPortData, InfoVeth, LinkAttribute, LinkFlags, LinkInfo,
    LinkMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteMetric, RouteProtocol, RouteScope,
};
use rtnetlink::{
    Handle, LinkBridge, LinkBridgePort, LinkMessageBuilder, LinkUnspec, RouteMessageBuilder,
};

mod delete;

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("opening a netlink socket: {0}")]
    Socket(std::io::Error),
    #[error("starting the netlink runtime: {0}")]
    Runtime(std::io::Error),
    #[error("{op}: {source}")]
    Netlink {
        op: String,
        source: rtnetlink::Error,
    },
    #[error("{op}: {source}")]
    Io { op: String, source: std::io::Error },
    #[error("invalid route to {dst}: {reason}")]
    Route { dst: IpNet, reason: String },
    #[error("sysctl {path}: {source}")]
    Sysctl {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl LinkError {
    /// The kernel's errno for a refused netlink request.
    pub fn errno(&self) -> Option<i32> {
        match self {
            LinkError::Netlink {
                source: rtnetlink::Error::NetlinkError(m),
                ..
            } => Some(m.raw_code().abs()),
            _ => None,
        }
    }

    fn is(&self, errno: nix::errno::Errno) -> bool {
        self.errno() == Some(errno as i32)
    }

    pub fn is_exists(&self) -> bool {
        self.is(nix::errno::Errno::EEXIST)
    }

    /// No such link, address or route.
    pub fn is_not_found(&self) -> bool {
        self.is(nix::errno::Errno::ENODEV)
            || self.is(nix::errno::Errno::ENOENT)
            || self.is(nix::errno::Errno::EADDRNOTAVAIL)
            || self.is(nix::errno::Errno::ESRCH)
    }
}

fn nl(op: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> LinkError {
    let op = op.into();
    move |source| LinkError::Netlink { op, source }
}

/// A link as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// `bridge`, `veth`, ... (None for devices without rtnl ops, like `lo`).
    pub kind: Option<String>,
    /// `aa:bb:cc:dd:ee:ff`.
    pub mac: Option<String>,
    pub mtu: Option<u32>,
    pub up: bool,
    pub promisc: bool,
    /// The bridge (or other controller) this link is a port of.
    pub controller: Option<u32>,
    /// IFLA_LINK: for a veth, the index of its peer (in the peer's namespace).
    pub peer_index: Option<u32>,
    /// For a bridge port, whether hairpin mode is on.
    pub hairpin: Option<bool>,
    /// For a bridge port, its STP state (disabled until the kernel has
    /// seen the port's carrier, then forwarding; or listening and learning
    /// first on a bridge running STP).
    pub port_state: Option<BridgePortState>,
}

impl Link {
    fn from_message(m: &LinkMessage) -> Link {
        let mut l = Link {
            index: m.header.index,
            name: String::new(),
            kind: None,
            mac: None,
            mtu: None,
            up: m.header.flags.contains(LinkFlags::Up),
            promisc: m.header.flags.contains(LinkFlags::Promisc),
            controller: None,
            peer_index: None,
            hairpin: None,
            port_state: None,
        };
        for a in &m.attributes {
            match a {
                LinkAttribute::IfName(n) => l.name = n.clone(),
                LinkAttribute::Address(mac) => l.mac = Some(format_mac(mac)),
                LinkAttribute::Mtu(v) => l.mtu = Some(*v),
                LinkAttribute::Controller(c) => l.controller = Some(*c),
                LinkAttribute::Link(p) => l.peer_index = Some(*p),
                LinkAttribute::LinkInfo(infos) => {
                    for i in infos {
                        match i {
                            LinkInfo::Kind(k) => l.kind = Some(k.to_string()),
                            LinkInfo::PortData(InfoPortData::BridgePort(port)) => {
                                for p in port {
                                    match p {
                                        InfoBridgePort::HairpinMode(h) => l.hairpin = Some(*h),
                                        InfoBridgePort::State(s) => l.port_state = Some(*s),
                                        _ => {}
                                    }
                                }
                            }
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        l
    }

    pub fn is_kind(&self, kind: &str) -> bool {
        self.kind.as_deref() == Some(kind)
    }
}

/// An address on a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    pub index: u32,
    pub net: IpNet,
    /// IFA_F_* flags (tentative, dadfailed, ...).
    pub flags: AddressFlags,
}

/// A route as the kernel reports it (unicast routes of one table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteEntry {
    pub dst: IpNet,
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
    pub table: u32,
    pub priority: Option<u32>,
}

/// A route to add.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewRoute {
    pub dst: Option<IpNet>,
    pub gateway: Option<IpAddr>,
    pub oif: u32,
    pub mtu: Option<u32>,
    pub advmss: Option<u32>,
    pub priority: Option<u32>,
    pub table: Option<u32>,
    pub scope: Option<u8>,
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parses `aa:bb:cc:dd:ee:ff` (either case).
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut out {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// Whether `name` is a valid Linux interface name (IFNAMSIZ, no `/`,
/// whitespace or `:`; not `.` or `..`).
pub fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() < 16
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
}

/// A netlink connection in the namespace of the thread that opened it.
pub struct Netlink {
    rt: tokio::runtime::Runtime,
    handle: Handle,
}

impl Netlink {
    /// Opens a connection in the calling thread's network namespace.
    pub fn open() -> Result<Netlink, LinkError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(LinkError::Runtime)?;
        let (conn, handle) = rt.block_on(async {
            let (conn, handle, _) = rtnetlink::new_connection().map_err(LinkError::Socket)?;
            Ok::<_, LinkError>((conn, handle))
        })?;
        // The connection is driven whenever a request below blocks on the runtime.
        rt.spawn(conn);
        Ok(Netlink { rt, handle })
    }

    fn collect<T, S>(&self, s: S) -> Result<Vec<T>, rtnetlink::Error>
    where
        S: futures::Stream<Item = Result<T, rtnetlink::Error>>,
    {
        self.rt.block_on(s.try_collect())
    }

    /// The link named `name`, if any.
    pub fn link_by_name(&self, name: &str) -> Result<Option<Link>, LinkError> {
        match self.collect(self.handle.link().get().match_name(name).execute()) {
            Ok(v) => Ok(v.first().map(Link::from_message)),
            Err(e) => {
                let e = nl(format!("looking up link {name}"))(e);
                if e.is_not_found() { Ok(None) } else { Err(e) }
            }
        }
    }

    /// The link with index `index`, if any.
    pub fn link_by_index(&self, index: u32) -> Result<Option<Link>, LinkError> {
        match self.collect(self.handle.link().get().match_index(index).execute()) {
            Ok(v) => Ok(v.first().map(Link::from_message)),
            Err(e) => {
                let e = nl(format!("looking up link #{index}"))(e);
                if e.is_not_found() { Ok(None) } else { Err(e) }
            }
        }
    }

    /// All links.
    pub fn links(&self) -> Result<Vec<Link>, LinkError> {
        self.collect(self.handle.link().get().execute())
            .map(|v| v.iter().map(Link::from_message).collect())
            .map_err(nl("listing links"))
    }

    /// Creates bridge `name` (up, with `mtu` when given and a MAC of its own
    /// that ports joining it will not change), or returns it as it is if a
    /// bridge of that name exists. Also returns whether it was created here.
    pub fn ensure_bridge(&self, name: &str, mtu: Option<u32>) -> Result<(Link, bool), LinkError> {
        if let Some(l) = self.link_by_name(name)? {
            return Ok((l, false));
        }
        let mut b = LinkBridge::new(name);
        if let Some(m) = mtu {
            b = b.mtu(m);
        }
        let created = match self
            .rt
            .block_on(self.handle.link().add(b.build()).execute())
        {
            Ok(()) => true,
            // Another ADD created it meanwhile.
            Err(rtnetlink::Error::NetlinkError(m))
                if m.raw_code().abs() == nix::errno::Errno::EEXIST as i32 =>
            {
                false
            }
            Err(e) => return Err(nl(format!("creating bridge {name}"))(e)),
        };
        let l = self.link_by_name(name)?.ok_or_else(|| LinkError::Netlink {
            op: format!("bridge {name} vanished after its creation"),
            source: rtnetlink::Error::RequestFailed,
        })?;
        if created && let Some(mac) = l.mac.as_deref().and_then(parse_mac) {
            // A bridge whose address was never set takes the lowest of its
            // ports' addresses, so its MAC would change as pods come and go.
            self.set_mac(l.index, mac)?;
        }
        Ok((l, created))
    }

    /// Creates a veth pair: `host` here, up and (when `controller` is given)
    /// a port of that bridge; its peer `peer` directly in the namespace
    /// `peer_netns`, with `peer_mac` when given. `mtu` applies to both ends.
    pub fn create_veth(
        &self,
        host: &str,
        peer: &str,
        peer_netns: BorrowedFd<'_>,
        mtu: Option<u32>,
        peer_mac: Option<[u8; 6]>,
        controller: Option<u32>,
    ) -> Result<(), LinkError> {
        let mut p = LinkUnspec::new_with_name(peer)
            .append_extra_attribute(LinkAttribute::NetNsFd(peer_netns.as_raw_fd()));
        if let Some(m) = mtu {
            p = p.mtu(m);
        }
        if let Some(mac) = peer_mac {
            p = p.address(mac.to_vec());
        }
        let mut h = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Veth)
            .name(host.to_string())
            .set_info_data(InfoData::Veth(InfoVeth::Peer(p.build())))
            .up();
        if let Some(m) = mtu {
            h = h.mtu(m);
        }
        if let Some(c) = controller {
            h = h.controller(c);
        }
        self.rt
            .block_on(self.handle.link().add(h.build()).execute())
            .map_err(nl(format!("creating veth pair {host}/{peer}")))
    }

    /// Sets hairpin mode on bridge port `index`.
    pub fn set_hairpin(&self, index: u32, on: bool) -> Result<(), LinkError> {
        let msg = LinkBridgePort::new(index).hairpin(on).build();
        self.rt
            .block_on(self.handle.link().set_port(msg).execute())
            .map_err(nl(format!("setting hairpin mode on link #{index}")))
    }

    pub fn set_up(&self, index: u32, up: bool) -> Result<(), LinkError> {
        let b = LinkUnspec::new_with_index(index);
        let b = if up { b.up() } else { b.down() };
        self.rt
            .block_on(self.handle.link().set(b.build()).execute())
            .map_err(nl(format!("setting link #{index} up={up}")))
    }

    pub fn set_promisc(&self, index: u32, on: bool) -> Result<(), LinkError> {
        let msg = LinkUnspec::new_with_index(index).promiscuous(on).build();
        self.rt
            .block_on(self.handle.link().set(msg).execute())
            .map_err(nl(format!("setting promiscuous mode on link #{index}")))
    }

    pub fn set_mac(&self, index: u32, mac: [u8; 6]) -> Result<(), LinkError> {
        let msg = LinkUnspec::new_with_index(index)
            .address(mac.to_vec())
            .build();
        self.rt
            .block_on(self.handle.link().set(msg).execute())
            .map_err(nl(format!(
                "setting address {} on link #{index}",
                format_mac(&mac)
            )))
    }

    pub fn set_mtu(&self, index: u32, mtu: u32) -> Result<(), LinkError> {
        let msg = LinkUnspec::new_with_index(index).mtu(mtu).build();
        self.rt
            .block_on(self.handle.link().set(msg).execute())
            .map_err(nl(format!("setting MTU {mtu} on link #{index}")))
    }

    /// Deletes link `index` (for a veth, both ends).
    pub fn delete_link(&self, index: u32) -> Result<(), LinkError> {
        self.rt
            .block_on(self.handle.link().del(index).execute())
            .map_err(nl(format!("deleting link #{index}")))
    }

    /// The addresses on link `index` (all of them when None).
    pub fn addresses(&self, index: Option<u32>) -> Result<Vec<Address>, LinkError> {
        let mut req = self.handle.address().get();
        if let Some(i) = index {
            req = req.set_link_index_filter(i);
        }
        let msgs = self
            .collect(req.execute())
            .map_err(nl("listing addresses"))?;
        Ok(msgs.iter().filter_map(address_of).collect())
    }

    /// Adds `net` (address and prefix) to link `index`. With `nodad`, an
    /// IPv6 address is usable at once instead of after duplicate address
    /// detection; the allocator already guarantees it is unique.
    pub fn add_address(&self, index: u32, net: IpNet, nodad: bool) -> Result<(), LinkError> {
        let mut req = self
            .handle
            .address()
            .add(index, net.addr(), net.prefix_len());
        if nodad && net.addr().is_ipv6() {
            req.message_mut()
                .attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        self.rt
            .block_on(req.execute())
            .map_err(nl(format!("adding address {net} to link #{index}")))
    }

    pub fn del_address(&self, index: u32, net: IpNet) -> Result<(), LinkError> {
        let msgs = self
            .collect(
                self.handle
                    .address()
                    .get()
                    .set_link_index_filter(index)
                    .set_address_filter(net.addr())
                    .set_prefix_length_filter(net.prefix_len())
                    .execute(),
            )
            .map_err(nl("listing addresses"))?;
        for m in msgs {
            self.rt
                .block_on(self.handle.address().del(m).execute())
                .map_err(nl(format!("deleting address {net} from link #{index}")))?;
        }
        Ok(())
    }

    /// The unicast routes of both families in all tables.
    pub fn routes(&self) -> Result<Vec<RouteEntry>, LinkError> {
        let mut out = Vec::new();
        for fam in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut q = RouteMessage::default();
            q.header.address_family = fam;
            q.header.table = RouteHeader::RT_TABLE_UNSPEC;
            let msgs = self
                .collect(self.handle.route().get(q).execute())
                .map_err(nl("listing routes"))?;
            out.extend(msgs.iter().filter_map(route_of));
        }
        Ok(out)
    }

    /// Adds a route (to the default destination of the gateway's family
    /// when `dst` is None).
    pub fn add_route(&self, r: &NewRoute) -> Result<(), LinkError> {
        let dst = match (r.dst, r.gateway) {
            (Some(d), _) => d,
            (None, Some(IpAddr::V4(_))) => IpNet::V4(Default::default()),
            (None, Some(IpAddr::V6(_))) => IpNet::V6(Default::default()),
            (None, None) => {
                return Err(LinkError::Route {
                    dst: IpNet::V4(Default::default()),
                    reason: "a route needs a destination or a gateway".into(),
                });
            }
        };
        let bad = |reason: String| LinkError::Route { dst, reason };
        let mut b = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(dst.network(), dst.prefix_len())
            .map_err(|e| bad(e.to_string()))?
            .output_interface(r.oif)
            // What `ip route add` and the reference plugins set.
            .protocol(RouteProtocol::Boot);
        if let Some(gw) = r.gateway {
            if gw.is_ipv4() != dst.addr().is_ipv4() {
                return Err(bad(format!("gateway {gw} is of another family")));
            }
            b = b.gateway(gw).map_err(|e| bad(e.to_string()))?;
        }
        if let Some(p) = r.priority {
            b = b.priority(p);
        }
        if let Some(t) = r.table {
            b = b.table_id(t);
        }
        if let Some(s) = r.scope {
            b = b.scope(RouteScope::from(s));
        }
        let mut msg = b.build();
        let mut metrics = Vec::new();
        if let Some(m) = r.mtu {
            metrics.push(RouteMetric::Mtu(m));
        }
        if let Some(m) = r.advmss {
            metrics.push(RouteMetric::Advmss(m));
        }
        if !metrics.is_empty() {
            msg.attributes.push(RouteAttribute::Metrics(metrics));
        }
        let gw = r.gateway.map(|g| format!(" via {g}")).unwrap_or_default();
        self.rt
            .block_on(self.handle.route().add(msg).execute())
            .map_err(nl(format!("adding route {dst}{gw} dev #{}", r.oif)))
    }
}

fn address_of(m: &AddressMessage) -> Option<Address> {
    let mut addr = None;
    let mut local = None;
    let mut flags = AddressFlags::from_bits_retain(u32::from(m.header.flags.bits()));
    for a in &m.attributes {
        match a {
            AddressAttribute::Address(a) => addr = Some(*a),
            AddressAttribute::Local(a) => local = Some(*a),
            AddressAttribute::Flags(f) => flags = *f,
            _ => {}
        }
    }
    // IFA_LOCAL is the interface's own address (they differ only on
    // point-to-point links, where IFA_ADDRESS is the peer).
    let ip = local.or(addr)?;
    Some(Address {
        index: m.header.index,
        net: IpNet::new(ip, m.header.prefix_len).ok()?,
        flags,
    })
}

fn route_addr(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v) => Some(IpAddr::V4(*v)),
        RouteAddress::Inet6(v) => Some(IpAddr::V6(*v)),
        _ => None,
    }
}

fn route_of(m: &RouteMessage) -> Option<RouteEntry> {
    if m.header.kind != netlink_packet_route::route::RouteType::Unicast {
        return None;
    }
    let mut dst = None;
    let mut gateway = None;
    let mut oif = None;
    let mut table = u32::from(m.header.table);
    let mut priority = None;
    for a in &m.attributes {
        match a {
            RouteAttribute::Destination(d) => dst = route_addr(d),
            RouteAttribute::Gateway(g) => gateway = route_addr(g),
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Priority(p) => priority = Some(*p),
            _ => {}
        }
    }
    let dst = match (dst, m.header.address_family) {
        (Some(d), _) => IpNet::new(d, m.header.destination_prefix_length).ok()?,
        (None, AddressFamily::Inet) => IpNet::V4(Default::default()),
        (None, AddressFamily::Inet6) => IpNet::V6(Default::default()),
        (None, _) => return None,
    };
    Some(RouteEntry {
        dst,
        gateway,
        oif,
        table,
        priority,
    })
}

/// Reads a sysctl (`net/ipv4/ip_forward` for `/proc/sys/net/ipv4/ip_forward`)
/// of the calling thread's network namespace.
pub fn sysctl_get(key: &str) -> Result<String, LinkError> {
    let path = PathBuf::from("/proc/sys").join(key);
    std::fs::read_to_string(&path)
        .map(|s| s.trim().to_string())
        .map_err(|source| LinkError::Sysctl { path, source })
}

/// Sets a sysctl of the calling thread's network namespace, writing only
/// when it differs.
pub fn sysctl_set(key: &str, value: &str) -> Result<(), LinkError> {
    if sysctl_get(key).is_ok_and(|v| v == value) {
        return Ok(());
    }
    let path = PathBuf::from("/proc/sys").join(key);
    std::fs::write(&path, value).map_err(|source| LinkError::Sysctl { path, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_round_trip() {
        let m = parse_mac("0A:1b:2c:3d:4e:5f").unwrap();
        assert_eq!(format_mac(&m), "0a:1b:2c:3d:4e:5f");
        assert!(parse_mac("0a:1b:2c:3d:4e").is_none());
        assert!(parse_mac("0a:1b:2c:3d:4e:5f:00").is_none());
        assert!(parse_mac("0a:1b:2c:3d:4e:zz").is_none());
        assert!(parse_mac("0a:1b:2c:3d:4e:5").is_none());
    }

    #[test]
    fn interface_names() {
        assert!(valid_ifname("eth0"));
        assert!(valid_ifname("a234567890abcde"));
        assert!(!valid_ifname("a234567890abcdef"));
        assert!(!valid_ifname(""));
        assert!(!valid_ifname(".."));
        assert!(!valid_ifname("a/b"));
        assert!(!valid_ifname("a b"));
        assert!(!valid_ifname("a:1"));
    }
}
