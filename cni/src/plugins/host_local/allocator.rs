//! Which address of a range set to hand out next: round robin from the one
//! handed out last (as the reference does, so that a crash-looping pod does
//! not get the same address back until the range has wrapped), never the
//! network, broadcast or gateway address, nothing excluded, nothing taken.
//!
//! Pure logic over the set of taken addresses; the store decides which
//! candidate is really reserved. Excluded blocks are jumped over, not walked,
//! so a large exclusion in a large range costs nothing; the walk over taken
//! addresses is bounded by how many there are.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use super::config::{Range, RangeSet};

/// Why an address may not be handed out from a range set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("{ip} is the gateway of {subnet}")]
    Gateway { ip: IpAddr, subnet: IpNet },
    #[error("{ip} is the network address of {subnet}")]
    Network { ip: IpAddr, subnet: IpNet },
    #[error("{ip} is the broadcast address of {subnet}")]
    Broadcast { ip: IpAddr, subnet: IpNet },
    #[error("{ip} is excluded by ipam.exclude ({by})")]
    Excluded { ip: IpAddr, by: IpNet },
    #[error("{ip} is in {subnet} but outside its range {range}")]
    OutsideRange {
        ip: IpAddr,
        subnet: IpNet,
        range: String,
    },
}

/// Addresses as numbers, so ranges and blocks compare and step uniformly.
fn key(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

fn addr(v4: bool, k: u128) -> IpAddr {
    if v4 {
        // Keys of an IPv4 range never exceed u32::MAX.
        IpAddr::V4(Ipv4Addr::from(k as u32))
    } else {
        IpAddr::V6(Ipv6Addr::from(k))
    }
}

/// Inclusive span of keys.
type Span = (u128, u128);

/// One range set with, per range, the sorted, merged blocks never handed out.
#[derive(Debug)]
pub struct Plan<'a> {
    set: &'a RangeSet,
    blocked: Vec<Vec<Span>>,
}

impl<'a> Plan<'a> {
    pub fn new(set: &'a RangeSet, exclude: &[IpNet]) -> Self {
        let blocked = set
            .ranges
            .iter()
            .map(|r| blocked_spans(r, exclude))
            .collect();
        Plan { set, blocked }
    }

    /// Why `ip` may not be handed out from the range it falls in (`None`:
    /// it may, unless taken). `ip` must be in one of the set's subnets.
    pub fn refuse(&self, ip: IpAddr, exclude: &[IpNet]) -> Option<Refusal> {
        let r = self.set.subnet_of(ip)?;
        let subnet = r.subnet;
        if ip == r.gateway {
            return Some(Refusal::Gateway { ip, subnet });
        }
        if ip == subnet.network() {
            return Some(Refusal::Network { ip, subnet });
        }
        if ip.is_ipv4() && ip == subnet.broadcast() {
            return Some(Refusal::Broadcast { ip, subnet });
        }
        if let Some(by) = exclude.iter().find(|e| e.contains(&ip)) {
            return Some(Refusal::Excluded { ip, by: *by });
        }
        if !r.contains(ip) {
            return Some(Refusal::OutsideRange {
                ip,
                subnet,
                range: r.to_string(),
            });
        }
        None
    }

    /// Free addresses in allocation order: from just after `last` (when it
    /// is in this set) through the end of the set, then from the start,
    /// ending with `last` itself.
    pub fn candidates<'b>(
        &'b self,
        last: Option<IpAddr>,
        taken: &'b HashSet<IpAddr>,
    ) -> Candidates<'b> {
        let ranges = &self.set.ranges;
        let mut segments = Vec::with_capacity(ranges.len() + 1);
        match last.and_then(|l| ranges.iter().position(|r| r.contains(l)).map(|i| (i, l))) {
            Some((k, last)) => {
                let lk = key(last);
                if let Some(after) = lk.checked_add(1) {
                    segments.push((k, after, key(ranges[k].end)));
                }
                for i in (k + 1..ranges.len()).chain(0..k) {
                    segments.push((i, key(ranges[i].start), key(ranges[i].end)));
                }
                segments.push((k, key(ranges[k].start), lk));
            }
            None => {
                for (i, r) in ranges.iter().enumerate() {
                    segments.push((i, key(r.start), key(r.end)));
                }
            }
        }
        Candidates {
            plan: self,
            taken,
            segments,
            seg: 0,
            pos: None,
        }
    }

    /// Whether any address of the set is still free.
    pub fn has_free(&self, taken: &HashSet<IpAddr>) -> bool {
        self.candidates(None, taken).next().is_some()
    }

    /// The range of the set `ip` was handed out from.
    pub fn range_of(&self, ip: IpAddr) -> Option<&'a Range> {
        self.set.ranges.iter().find(|r| r.contains(ip))
    }
}

fn blocked_spans(r: &Range, exclude: &[IpNet]) -> Vec<Span> {
    let (lo, hi) = (key(r.start), key(r.end));
    let mut spans: Vec<Span> = vec![
        (key(r.subnet.network()), key(r.subnet.network())),
        (key(r.gateway), key(r.gateway)),
    ];
    if r.is_ipv4() {
        let b = key(r.subnet.broadcast());
        spans.push((b, b));
    }
    spans.extend(
        exclude
            .iter()
            .filter(|e| e.addr().is_ipv4() == r.is_ipv4())
            .map(|e| (key(e.network()), key(e.broadcast()))),
    );
    let mut clipped: Vec<Span> = spans
        .into_iter()
        .filter(|&(a, b)| a <= hi && b >= lo)
        .map(|(a, b)| (a.max(lo), b.min(hi)))
        .collect();
    clipped.sort_unstable();
    let mut merged: Vec<Span> = Vec::with_capacity(clipped.len());
    for (a, b) in clipped {
        match merged.last_mut() {
            Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(b),
            _ => merged.push((a, b)),
        }
    }
    merged
}

/// Iterator over free addresses, see [`Plan::candidates`]; yields each at
/// most once and ends after one turn through the set.
pub struct Candidates<'b> {
    plan: &'b Plan<'b>,
    taken: &'b HashSet<IpAddr>,
    /// (range index, first key, last key), inclusive.
    segments: Vec<(usize, u128, u128)>,
    seg: usize,
    pos: Option<u128>,
}

impl Iterator for Candidates<'_> {
    /// The range index and the address.
    type Item = (usize, IpAddr);

    fn next(&mut self) -> Option<Self::Item> {
        while let Some(&(ri, lo, hi)) = self.segments.get(self.seg) {
            let v4 = self.plan.set.ranges[ri].is_ipv4();
            let blocked = &self.plan.blocked[ri];
            let mut pos = self.pos.unwrap_or(lo);
            let found = loop {
                if pos > hi {
                    break None;
                }
                let i = blocked.partition_point(|s| s.0 <= pos);
                if i > 0 && blocked[i - 1].1 >= pos {
                    match blocked[i - 1].1.checked_add(1) {
                        Some(p) => pos = p,
                        None => break None,
                    }
                    continue;
                }
                if self.taken.contains(&addr(v4, pos)) {
                    match pos.checked_add(1) {
                        Some(p) => pos = p,
                        None => break None,
                    }
                    continue;
                }
                break Some(pos);
            };
            match found {
                Some(k) => {
                    match k.checked_add(1) {
                        Some(p) => self.pos = Some(p),
                        None => {
                            self.seg += 1;
                            self.pos = None;
                        }
                    }
                    return Some((ri, addr(v4, k)));
                }
                None => {
                    self.seg += 1;
                    self.pos = None;
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(subnet: &str, start: Option<&str>, end: Option<&str>, gw: Option<&str>) -> Range {
        let subnet: IpNet = subnet.parse().unwrap();
        let v4 = subnet.addr().is_ipv4();
        let first = super::super::config::next(subnet.network());
        let last = if v4 {
            super::super::config::prev(subnet.broadcast())
        } else {
            subnet.broadcast()
        };
        Range {
            subnet,
            start: start.map_or(first, |s| s.parse().unwrap()),
            end: end.map_or(last, |s| s.parse().unwrap()),
            gateway: gw.map_or(first, |s| s.parse().unwrap()),
        }
    }

    fn ips(v: &[&str]) -> HashSet<IpAddr> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn take(plan: &Plan, last: Option<&str>, taken: &HashSet<IpAddr>, n: usize) -> Vec<String> {
        plan.candidates(last.map(|l| l.parse().unwrap()), taken)
            .take(n)
            .map(|(_, ip)| ip.to_string())
            .collect()
    }

    #[test]
    fn a_slash_30_has_one_address_besides_the_gateway() {
        let set = RangeSet {
            ranges: vec![range("10.0.0.0/30", None, None, None)],
        };
        let plan = Plan::new(&set, &[]);
        assert_eq!(take(&plan, None, &HashSet::new(), 10), ["10.0.0.2"]);
        assert!(!plan.has_free(&ips(&["10.0.0.2"])));
    }

    #[test]
    fn round_robin_starts_after_the_last_and_wraps() {
        let set = RangeSet {
            ranges: vec![range("10.0.0.0/29", None, None, None)],
        };
        let plan = Plan::new(&set, &[]);
        // .0 network, .1 gateway, .7 broadcast: .2-.6 remain.
        assert_eq!(
            take(&plan, Some("10.0.0.4"), &ips(&["10.0.0.6"]), 10),
            ["10.0.0.5", "10.0.0.2", "10.0.0.3", "10.0.0.4"]
        );
        // A last address outside the set restarts at the beginning.
        assert_eq!(
            take(&plan, Some("192.168.0.9"), &HashSet::new(), 2),
            ["10.0.0.2", "10.0.0.3"]
        );
    }

    #[test]
    fn explicit_bounds_never_include_network_broadcast_or_gateway() {
        let set = RangeSet {
            ranges: vec![range(
                "10.0.0.0/29",
                Some("10.0.0.0"),
                Some("10.0.0.7"),
                Some("10.0.0.3"),
            )],
        };
        let plan = Plan::new(&set, &[]);
        assert_eq!(
            take(&plan, None, &HashSet::new(), 10),
            ["10.0.0.1", "10.0.0.2", "10.0.0.4", "10.0.0.5", "10.0.0.6"]
        );
        let refuse = |s: &str| plan.refuse(s.parse().unwrap(), &[]);
        assert!(matches!(refuse("10.0.0.0"), Some(Refusal::Network { .. })));
        assert!(matches!(
            refuse("10.0.0.7"),
            Some(Refusal::Broadcast { .. })
        ));
        assert!(matches!(refuse("10.0.0.3"), Some(Refusal::Gateway { .. })));
        assert_eq!(refuse("10.0.0.5"), None);
    }

    #[test]
    fn exclusions_are_jumped_over() {
        let set = RangeSet {
            ranges: vec![range("10.0.0.0/8", None, None, None)],
        };
        let ex: Vec<IpNet> = vec![
            "10.0.0.0/9".parse().unwrap(),
            "10.128.0.0/10".parse().unwrap(),
            "10.192.0.2/32".parse().unwrap(),
        ];
        let plan = Plan::new(&set, &ex);
        assert_eq!(
            take(&plan, None, &HashSet::new(), 2),
            ["10.192.0.0", "10.192.0.1"]
        );
        assert_eq!(
            take(&plan, Some("10.192.0.1"), &HashSet::new(), 1),
            ["10.192.0.3"]
        );
        assert!(matches!(
            plan.refuse("10.5.0.0".parse().unwrap(), &ex),
            Some(Refusal::Excluded { .. })
        ));
    }

    #[test]
    fn several_ranges_are_walked_in_order_and_wrap() {
        let set = RangeSet {
            ranges: vec![
                range("10.0.0.0/24", Some("10.0.0.10"), Some("10.0.0.11"), None),
                range("10.0.1.0/24", Some("10.0.1.10"), Some("10.0.1.11"), None),
            ],
        };
        let plan = Plan::new(&set, &[]);
        assert_eq!(
            take(&plan, Some("10.0.0.11"), &ips(&["10.0.1.10"]), 10),
            ["10.0.1.11", "10.0.0.10", "10.0.0.11"]
        );
        let got: Vec<usize> = plan
            .candidates(None, &HashSet::new())
            .map(|(i, _)| i)
            .collect();
        assert_eq!(got, [0, 0, 1, 1]);
        assert!(!plan.has_free(&ips(&["10.0.0.10", "10.0.0.11", "10.0.1.10", "10.0.1.11"])));
    }

    #[test]
    fn ipv6_keeps_the_last_address_and_handles_the_top_of_the_space() {
        let set = RangeSet {
            ranges: vec![range(
                "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffc/126",
                None,
                None,
                None,
            )],
        };
        let plan = Plan::new(&set, &[]);
        assert_eq!(
            take(&plan, None, &HashSet::new(), 10),
            [
                "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe",
                "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
            ]
        );
        assert_eq!(
            take(
                &plan,
                Some("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"),
                &HashSet::new(),
                10
            ),
            [
                "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe",
                "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
            ]
        );
    }

    #[test]
    fn a_huge_range_with_many_taken_finds_the_next_quickly() {
        let set = RangeSet {
            ranges: vec![range("fd00::/64", None, None, None)],
        };
        let plan = Plan::new(&set, &[]);
        let taken: HashSet<IpAddr> = (2u128..5002)
            .map(|i| addr(false, key("fd00::".parse().unwrap()) + i))
            .collect();
        assert_eq!(take(&plan, None, &taken, 1), ["fd00::138a"]);
    }
}
