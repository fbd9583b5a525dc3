//! host-local's configuration: the `ipam` object of the network config (the
//! reference plugin's fields, so the same config works with either), the
//! addresses a runtime asks for, and berth's `exclude` list.
//!
//! ```json
//! "ipam": {
//!   "type": "host-local",
//!   "ranges": [
//!     [{"subnet": "10.22.0.0/16", "rangeStart": "10.22.1.1", "rangeEnd": "10.22.1.254", "gateway": "10.22.0.1"}],
//!     [{"subnet": "fd00:22::/64"}]
//!   ],
//!   "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}],
//!   "dataDir": "/var/lib/cni/networks",
//!   "resolvConf": "/etc/resolv.conf",
//!   "exclude": ["10.22.1.10", "10.22.1.64/28"]
//! }
//! ```
//!
//! Each range set (an inner list) gives the container one address; ranges of
//! one set are tried in order. The old single-range form (`subnet`,
//! `rangeStart`, `rangeEnd`, `gateway` directly in `ipam`) becomes the first
//! range set, and `runtimeConfig.ipRanges` sets come before all others, as in
//! the reference. Defaults: the gateway is the subnet's first address, the
//! range runs from there to the last address (IPv4: before the broadcast).
//!
//! `exclude` (berth's addition) lists addresses and CIDRs never handed out,
//! e.g. addresses of routers or other hosts on a subnet shared with them.
//! The reference plugin ignores the field.
//!
//! Specific addresses are asked for through `CNI_ARGS` `IP=` (several
//! separated by commas), `args.cni.ips` and the `ips` capability
//! (`runtimeConfig.ips`, with or without a prefix length); each must fall in
//! one range set, at most one per set.

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use serde_json::{Map, Value};

use crate::types::Route;

/// Where the reference keeps its store; shared, so a node may switch plugins.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/networks";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("the network configuration has no \"ipam\" object")]
    NoIpam,
    #[error("no address ranges: set ipam.ranges (or ipam.subnet)")]
    NoRanges,
    #[error("{field} is missing")]
    Missing { field: String },
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// One range of addresses, all of one family, inside `subnet`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    /// The subnet with its host bits cleared.
    pub subnet: IpNet,
    /// First and last address handed out (inclusive).
    pub start: IpAddr,
    pub end: IpAddr,
    pub gateway: IpAddr,
}

impl Range {
    /// Whether `ip` lies between the range's start and end.
    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.start.is_ipv4() && self.start <= ip && ip <= self.end
    }

    pub fn is_ipv4(&self) -> bool {
        self.start.is_ipv4()
    }
}

impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.start, self.end)
    }
}

/// The ranges one container address comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeSet {
    pub ranges: Vec<Range>,
}

impl RangeSet {
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.ranges.iter().any(|r| r.contains(ip))
    }

    /// The range whose subnet holds `ip` (even outside start..end).
    pub fn subnet_of(&self, ip: IpAddr) -> Option<&Range> {
        self.ranges
            .iter()
            .find(|r| r.contains(ip))
            .or_else(|| self.ranges.iter().find(|r| r.subnet.contains(&ip)))
    }
}

impl fmt::Display for RangeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.ranges.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

/// The store's place: `<data_dir>/<network>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub data_dir: PathBuf,
    pub network: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpamConfig {
    pub location: Location,
    pub sets: Vec<RangeSet>,
    pub routes: Vec<Route>,
    pub resolv_conf: Option<PathBuf>,
    pub exclude: Vec<IpNet>,
    /// Addresses the runtime asks for, in the order given, without repeats.
    pub requested: Vec<IpAddr>,
}

fn ipam_object(raw: &Value) -> Result<&Map<String, Value>, ConfigError> {
    match raw.get("ipam") {
        None | Some(Value::Null) => Err(ConfigError::NoIpam),
        Some(Value::Object(o)) => Ok(o),
        Some(_) => Err(invalid("ipam", "must be an object")),
    }
}

fn opt_str<'a>(
    obj: &'a Map<String, Value>,
    key: &str,
    field: &str,
) -> Result<Option<&'a str>, ConfigError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(invalid(field, format!("must be a string, not {other}"))),
    }
}

fn opt_array<'a>(v: Option<&'a Value>, field: &str) -> Result<&'a [Value], ConfigError> {
    match v {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(a)) => Ok(a),
        Some(other) => Err(invalid(field, format!("must be a list, not {other}"))),
    }
}

/// The store location alone: what DEL and GC need, so that they still work
/// after the ranges were changed (or broken) in the config.
pub fn location(raw: &Value, network: &str) -> Result<Location, ConfigError> {
    let ipam = ipam_object(raw)?;
    check_network_name(network)?;
    let data_dir = opt_str(ipam, "dataDir", "ipam.dataDir")?.unwrap_or(DEFAULT_DATA_DIR);
    Ok(Location {
        data_dir: PathBuf::from(data_dir),
        network: network.to_string(),
    })
}

/// The network name becomes a directory name under dataDir.
fn check_network_name(name: &str) -> Result<(), ConfigError> {
    if name.is_empty() {
        return Err(ConfigError::Missing {
            field: "name".into(),
        });
    }
    if name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(invalid(
            "name",
            format!("{name:?} cannot name a directory (no '/', '.' or '..')"),
        ));
    }
    Ok(())
}

/// Parses and checks everything ADD, CHECK and STATUS need.
pub fn parse(
    raw: &Value,
    network: &str,
    cni_args: &[(String, String)],
) -> Result<IpamConfig, ConfigError> {
    let location = location(raw, network)?;
    let ipam = ipam_object(raw)?;
    let runtime = raw.get("runtimeConfig").and_then(Value::as_object);

    let mut sets = Vec::new();
    if let Some(rt) = runtime {
        for (i, set) in opt_array(rt.get("ipRanges"), "runtimeConfig.ipRanges")?
            .iter()
            .enumerate()
        {
            sets.push(parse_set(set, &format!("runtimeConfig.ipRanges[{i}]"))?);
        }
    }
    if ipam.contains_key("subnet") {
        sets.push(RangeSet {
            ranges: vec![parse_range(ipam, "ipam")?],
        });
    } else {
        for key in ["rangeStart", "rangeEnd", "gateway"] {
            if ipam.get(key).is_some_and(|v| !v.is_null()) {
                return Err(ConfigError::Missing {
                    field: format!("ipam.subnet (ipam.{key} is set)"),
                });
            }
        }
    }
    for (i, set) in opt_array(ipam.get("ranges"), "ipam.ranges")?
        .iter()
        .enumerate()
    {
        sets.push(parse_set(set, &format!("ipam.ranges[{i}]"))?);
    }
    if sets.is_empty() {
        return Err(ConfigError::NoRanges);
    }
    check_overlaps(&sets)?;

    let mut routes = Vec::new();
    for (i, r) in opt_array(ipam.get("routes"), "ipam.routes")?
        .iter()
        .enumerate()
    {
        let route: Route = serde_json::from_value(r.clone())
            .map_err(|e| invalid(format!("ipam.routes[{i}]"), e.to_string()))?;
        routes.push(route);
    }

    let resolv_conf = opt_str(ipam, "resolvConf", "ipam.resolvConf")?.map(PathBuf::from);

    let mut exclude = Vec::new();
    for (i, e) in opt_array(ipam.get("exclude"), "ipam.exclude")?
        .iter()
        .enumerate()
    {
        let field = format!("ipam.exclude[{i}]");
        let s = e
            .as_str()
            .ok_or_else(|| invalid(&field, format!("must be a string, not {e}")))?;
        exclude.push(parse_exclude(s, &field)?);
    }

    let requested = requested_ips(raw, runtime, cni_args)?;
    Ok(IpamConfig {
        location,
        sets,
        routes,
        resolv_conf,
        exclude,
        requested,
    })
}

fn parse_exclude(s: &str, field: &str) -> Result<IpNet, ConfigError> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(IpNet::from(ip));
    }
    let net: IpNet = s.parse().map_err(|_| {
        invalid(
            field,
            format!("{s:?} is neither an address nor a CIDR (like 10.22.1.64/28)"),
        )
    })?;
    if net.trunc() != net {
        return Err(invalid(
            field,
            format!(
                "{s} has host bits set: write {} for the subnet or {} for one address",
                net.trunc(),
                net.addr()
            ),
        ));
    }
    Ok(net)
}

fn parse_set(v: &Value, field: &str) -> Result<RangeSet, ConfigError> {
    let items = v
        .as_array()
        .ok_or_else(|| invalid(field, "must be a list of ranges"))?;
    if items.is_empty() {
        return Err(invalid(field, "is an empty list of ranges"));
    }
    let mut ranges = Vec::with_capacity(items.len());
    for (j, item) in items.iter().enumerate() {
        let f = format!("{field}[{j}]");
        let obj = item
            .as_object()
            .ok_or_else(|| invalid(&f, "must be an object with a subnet"))?;
        ranges.push(parse_range(obj, &f)?);
    }
    let v4 = ranges[0].is_ipv4();
    if let Some((j, _)) = ranges.iter().enumerate().find(|(_, r)| r.is_ipv4() != v4) {
        return Err(invalid(
            format!("{field}[{j}].subnet"),
            format!(
                "mixes IPv4 and IPv6 in one range set ({} and {})",
                ranges[0].subnet, ranges[j].subnet
            ),
        ));
    }
    Ok(RangeSet { ranges })
}

fn parse_addr(s: &str, field: &str) -> Result<IpAddr, ConfigError> {
    s.parse()
        .map_err(|_| invalid(field, format!("{s:?} is not an IP address")))
}

fn parse_range(obj: &Map<String, Value>, field: &str) -> Result<Range, ConfigError> {
    let f_subnet = format!("{field}.subnet");
    let subnet_s = opt_str(obj, "subnet", &f_subnet)?.ok_or_else(|| ConfigError::Missing {
        field: f_subnet.clone(),
    })?;
    let subnet: IpNet = subnet_s
        .parse::<IpNet>()
        .map_err(|_| {
            invalid(
                &f_subnet,
                format!("{subnet_s:?} is not a valid CIDR (like 10.22.0.0/16 or fd00::/64)"),
            )
        })?
        .trunc();
    if subnet.prefix_len() + 2 > subnet.max_prefix_len() {
        return Err(invalid(
            &f_subnet,
            format!("{subnet} is too small to allocate from (it needs at least 2 host bits)"),
        ));
    }
    let first = next(subnet.network());
    let last = if subnet.network().is_ipv4() {
        prev(subnet.broadcast())
    } else {
        subnet.broadcast()
    };
    let in_subnet = |key: &str, default: IpAddr| -> Result<IpAddr, ConfigError> {
        let f = format!("{field}.{key}");
        match opt_str(obj, key, &f)? {
            None => Ok(default),
            Some(s) => {
                let ip = parse_addr(s, &f)?;
                if !subnet.contains(&ip) {
                    return Err(invalid(f, format!("{ip} is outside subnet {subnet}")));
                }
                Ok(ip)
            }
        }
    };
    let gateway = in_subnet("gateway", first)?;
    let start = in_subnet("rangeStart", first)?;
    let end = in_subnet("rangeEnd", last)?;
    if start > end {
        return Err(invalid(
            format!("{field}.rangeStart"),
            format!("{start} comes after rangeEnd {end}"),
        ));
    }
    Ok(Range {
        subnet,
        start,
        end,
        gateway,
    })
}

fn check_overlaps(sets: &[RangeSet]) -> Result<(), ConfigError> {
    let all: Vec<(usize, usize, &Range)> = sets
        .iter()
        .enumerate()
        .flat_map(|(i, s)| s.ranges.iter().enumerate().map(move |(j, r)| (i, j, r)))
        .collect();
    for (n, (i, j, a)) in all.iter().enumerate() {
        for (k, l, b) in &all[n + 1..] {
            if a.is_ipv4() == b.is_ipv4() && a.start <= b.end && b.start <= a.end {
                return Err(invalid(
                    format!("range set {k} range {l}"),
                    format!("{b} overlaps range set {i} range {j} ({a})"),
                ));
            }
        }
    }
    Ok(())
}

fn requested_ips(
    raw: &Value,
    runtime: Option<&Map<String, Value>>,
    cni_args: &[(String, String)],
) -> Result<Vec<IpAddr>, ConfigError> {
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    let mut push = |s: &str, field: &str| -> Result<(), ConfigError> {
        let s = s.trim();
        // The capability allows a prefix length; only the address counts.
        let addr = s.split_once('/').map_or(s, |(a, _)| a);
        let ip = parse_addr(addr, field)?;
        if seen.insert(ip) {
            out.push(ip);
        }
        Ok(())
    };
    for (k, v) in cni_args {
        if k == "IP" {
            for part in v.split(',').filter(|p| !p.trim().is_empty()) {
                push(part, "CNI_ARGS IP")?;
            }
        }
    }
    let lists = [
        (
            raw.get("args")
                .and_then(|a| a.get("cni"))
                .and_then(|c| c.get("ips")),
            "args.cni.ips",
        ),
        (runtime.and_then(|r| r.get("ips")), "runtimeConfig.ips"),
    ];
    for (list, name) in lists {
        for (i, v) in opt_array(list, name)?.iter().enumerate() {
            let field = format!("{name}[{i}]");
            let s = v
                .as_str()
                .ok_or_else(|| invalid(&field, format!("must be a string, not {v}")))?;
            push(s, &field)?;
        }
    }
    Ok(out)
}

/// The address after `ip` (wrapping never matters: callers stay in a subnet).
pub fn next(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(a) => IpAddr::V4(u32::from(a).wrapping_add(1).into()),
        IpAddr::V6(a) => IpAddr::V6(u128::from(a).wrapping_add(1).into()),
    }
}

pub fn prev(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(a) => IpAddr::V4(u32::from(a).wrapping_sub(1).into()),
        IpAddr::V6(a) => IpAddr::V6(u128::from(a).wrapping_sub(1).into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn p(ipam: Value) -> Result<IpamConfig, ConfigError> {
        parse(
            &json!({"cniVersion": "1.0.0", "name": "n", "type": "bridge", "ipam": ipam}),
            "n",
            &[],
        )
    }

    fn field_of(e: ConfigError) -> String {
        match e {
            ConfigError::Invalid { field, .. } | ConfigError::Missing { field } => field,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn defaults_of_a_v4_subnet() {
        let c = p(json!({"type": "host-local", "subnet": "10.1.2.3/24"})).unwrap();
        let r = &c.sets[0].ranges[0];
        assert_eq!(r.subnet.to_string(), "10.1.2.0/24");
        assert_eq!(r.gateway.to_string(), "10.1.2.1");
        assert_eq!(r.start.to_string(), "10.1.2.1");
        assert_eq!(r.end.to_string(), "10.1.2.254");
        assert_eq!(c.location.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        assert_eq!(c.location.network, "n");
    }

    #[test]
    fn defaults_of_a_v6_subnet_keep_the_last_address() {
        let c = p(json!({"ranges": [[{"subnet": "fd00::/120"}]]})).unwrap();
        let r = &c.sets[0].ranges[0];
        assert_eq!(r.end.to_string(), "fd00::ff");
        assert_eq!(r.gateway.to_string(), "fd00::1");
    }

    #[test]
    fn the_old_form_comes_first_and_runtime_ranges_before_it() {
        let raw = json!({"name": "n", "runtimeConfig": {"ipRanges": [[{"subnet": "10.9.0.0/24"}]]},
            "ipam": {"subnet": "10.1.0.0/24", "ranges": [[{"subnet": "fd00::/64"}]]}});
        let c = parse(&raw, "n", &[]).unwrap();
        let subnets: Vec<String> = c
            .sets
            .iter()
            .map(|s| s.ranges[0].subnet.to_string())
            .collect();
        assert_eq!(subnets, ["10.9.0.0/24", "10.1.0.0/24", "fd00::/64"]);
    }

    #[test]
    fn bad_ranges_name_their_field() {
        let cases = [
            (
                json!({"ranges": [[{"subnet": "10.0.0.0/33"}]]}),
                "ipam.ranges[0][0].subnet",
            ),
            (json!({"subnet": "banana"}), "ipam.subnet"),
            (
                json!({"ranges": [[{"subnet": "10.0.0.0/31"}]]}),
                "ipam.ranges[0][0].subnet",
            ),
            (
                json!({"ranges": [[{"subnet": "10.0.0.0/24", "gateway": "10.0.1.1"}]]}),
                "ipam.ranges[0][0].gateway",
            ),
            (
                json!({"ranges": [[{"subnet": "10.0.0.0/24", "rangeStart": "10.0.1.1"}]]}),
                "ipam.ranges[0][0].rangeStart",
            ),
            (
                json!({"ranges": [[{"subnet": "10.0.0.0/24", "rangeEnd": "fd00::1"}]]}),
                "ipam.ranges[0][0].rangeEnd",
            ),
            (
                json!({"ranges": [[{"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.9", "rangeEnd": "10.0.0.3"}]]}),
                "ipam.ranges[0][0].rangeStart",
            ),
            (
                json!({"ranges": [[{"subnet": "10.0.0.0/24"}, {"subnet": "fd00::/64"}]]}),
                "ipam.ranges[0][1].subnet",
            ),
            (
                json!({"ranges": [[{"gateway": "10.0.0.1"}]]}),
                "ipam.ranges[0][0].subnet",
            ),
            (json!({"ranges": [[]]}), "ipam.ranges[0]"),
            (json!({"ranges": "10.0.0.0/24"}), "ipam.ranges"),
            (
                json!({"rangeStart": "10.0.0.5"}),
                "ipam.subnet (ipam.rangeStart is set)",
            ),
            (
                json!({"subnet": "10.0.0.0/24", "exclude": ["10.0.0.5/24"]}),
                "ipam.exclude[0]",
            ),
            (
                json!({"subnet": "10.0.0.0/24", "exclude": ["x"]}),
                "ipam.exclude[0]",
            ),
            (
                json!({"subnet": "10.0.0.0/24", "routes": [{"dst": "nope"}]}),
                "ipam.routes[0]",
            ),
            (
                json!({"subnet": "10.0.0.0/24", "dataDir": 5}),
                "ipam.dataDir",
            ),
        ];
        for (ipam, field) in cases {
            let e = p(ipam.clone()).unwrap_err();
            assert_eq!(field_of(e.clone()), field, "{ipam}: {e}");
        }
        assert_eq!(
            p(json!({"type": "host-local"})).unwrap_err(),
            ConfigError::NoRanges
        );
        assert_eq!(
            parse(&json!({"name": "n"}), "n", &[]).unwrap_err(),
            ConfigError::NoIpam
        );
    }

    #[test]
    fn overlapping_ranges_are_refused() {
        let e = p(json!({"ranges": [
            [{"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.10", "rangeEnd": "10.0.0.20"}],
            [{"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.20", "rangeEnd": "10.0.0.30"}]
        ]}))
        .unwrap_err();
        assert!(e.to_string().contains("overlaps"), "{e}");
        // Same subnet, disjoint ranges: fine.
        p(json!({"ranges": [
            [{"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.10", "rangeEnd": "10.0.0.19"}],
            [{"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.20", "rangeEnd": "10.0.0.30"}]
        ]}))
        .unwrap();
    }

    #[test]
    fn network_names_that_escape_the_data_dir_are_refused() {
        for name in ["", ".", "..", "a/b", "../x"] {
            assert!(location(&json!({"ipam": {}}), name).is_err(), "{name:?}");
        }
    }

    #[test]
    fn requested_addresses_from_every_source() {
        let raw = json!({"name": "n",
            "args": {"cni": {"ips": ["10.0.0.7"]}},
            "runtimeConfig": {"ips": ["10.0.0.8/24", "fd00::8/64", "10.0.0.7"]},
            "ipam": {"subnet": "10.0.0.0/24", "exclude": ["10.0.0.64/26", "10.0.0.3"]}});
        let c = parse(
            &raw,
            "n",
            &[
                ("IgnoreUnknown".into(), "1".into()),
                ("IP".into(), "10.0.0.6,fd00::6".into()),
            ],
        )
        .unwrap();
        let got: Vec<String> = c.requested.iter().map(IpAddr::to_string).collect();
        assert_eq!(
            got,
            ["10.0.0.6", "fd00::6", "10.0.0.7", "10.0.0.8", "fd00::8"]
        );
        assert_eq!(c.exclude.len(), 2);
        assert_eq!(c.exclude[1].to_string(), "10.0.0.3/32");
        let e = parse(&raw, "n", &[("IP".into(), "10.0.0.x".into())]).unwrap_err();
        assert_eq!(field_of(e), "CNI_ARGS IP");
    }
}
