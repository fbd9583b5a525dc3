//! portmap's configuration: its own fields, the `portMappings` capability
//! in `runtimeConfig`, and the pod addresses in `prevResult`.
//!
//! Supported fields:
//! - `runtimeConfig.portMappings`: `[{hostPort, containerPort, protocol,
//!   hostIP}]`; protocol `tcp` (the default), `udp` or `sctp`, any case;
//!   `hostIP` empty for every local address of both families, `0.0.0.0` /
//!   `::` for every local address of one family, else that address only.
//! - `snat` (default true): masquerade hairpin traffic (a pod reaching its
//!   own hostPort) and traffic from 127.0.0.0/8 on the node, and enable
//!   `route_localnet` on the interface the pod is reached through so that
//!   `127.0.0.1:hostPort` works. With `false`, no masquerade at all.
//! - `masqAll` (default false, only with `snat`): masquerade every
//!   connection to a hostPort, so the pod sees the node as the source.
//! - `markMasqBit` (0-31, default 13): the packet-mark bit that flags a
//!   connection for masquerade between the DNAT and the SNAT hooks.
//! - `externalSetMarkChain`: names an iptables chain (kube-proxy's
//!   `KUBE-MARK-MASQ`) that the reference plugin jumps to instead of marking
//!   itself. nftables rules cannot jump into iptables chains, so it is
//!   accepted for compatibility (and, as upstream, refused together with
//!   `markMasqBit`) while berth keeps marking and masquerading in its own
//!   table, which gives the same result.
//! - `conditionsV4`/`conditionsV6` (iptables match arguments) cannot be
//!   expressed in nftables and are refused when not empty (code 2).
//! - `backend` is ignored: berth always uses nftables.

use std::net::IpAddr;

use serde_json::Value;

use crate::types::{CniError, CniResult, NetConf, code};

pub const DEFAULT_MARK_BIT: u32 = 13;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    Tcp,
    Udp,
    Sctp,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Sctp => "sctp",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortMapping {
    pub host_port: u16,
    pub container_port: u16,
    pub protocol: Proto,
    /// `None`: every local address of both families.
    pub host_ip: Option<IpAddr>,
}

impl PortMapping {
    /// Whether this mapping applies to pod address `pod`'s family.
    pub fn applies_to(&self, pod: IpAddr) -> bool {
        self.host_ip.is_none_or(|h| h.is_ipv4() == pod.is_ipv4())
    }

    /// The destination address to match, if any (`0.0.0.0`/`::` only pick
    /// the family).
    pub fn dest_match(&self) -> Option<IpAddr> {
        self.host_ip.filter(|h| !h.is_unspecified())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortmapConf {
    pub mappings: Vec<PortMapping>,
    pub snat: bool,
    pub masq_all: bool,
    pub mark_bit: u32,
    pub external_set_mark_chain: Option<String>,
}

impl PortmapConf {
    /// The mark value for `markMasqBit`.
    pub fn mark(&self) -> u32 {
        1u32 << self.mark_bit
    }

    pub fn parse(conf: &NetConf) -> Result<Self, CniError> {
        let bad = |msg: String| CniError::new(code::INVALID_CONFIG, msg);
        let flag = |name: &str, default: bool| -> Result<bool, CniError> {
            match conf.plugin.get(name) {
                None | Some(Value::Null) => Ok(default),
                Some(Value::Bool(b)) => Ok(*b),
                Some(v) => Err(bad(format!("{name} must be true or false, not {v}"))),
            }
        };
        let snat = flag("snat", true)?;
        let masq_all = flag("masqAll", false)?;
        let mark_bit = match conf.plugin.get("markMasqBit") {
            None | Some(Value::Null) => None,
            Some(v) => match v.as_u64() {
                Some(b) if b <= 31 => Some(b as u32),
                _ => {
                    return Err(bad(format!(
                        "markMasqBit must be a bit number from 0 to 31, not {v}"
                    )));
                }
            },
        };
        let external_set_mark_chain = match conf.plugin.get("externalSetMarkChain") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.is_empty() => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(v) => {
                return Err(bad(format!(
                    "externalSetMarkChain must be a chain name, not {v}"
                )));
            }
        };
        if mark_bit.is_some() && external_set_mark_chain.is_some() {
            return Err(bad(
                "markMasqBit and externalSetMarkChain cannot both be set".into(),
            ));
        }
        for key in ["conditionsV4", "conditionsV6"] {
            match conf.plugin.get(key) {
                None | Some(Value::Null) => {}
                Some(Value::Array(a)) if a.is_empty() => {}
                Some(_) => {
                    return Err(CniError::new(
                        code::UNSUPPORTED_FIELD,
                        format!(
                            "{key} holds iptables match arguments, which berth's nftables portmap cannot apply"
                        ),
                    ));
                }
            }
        }
        let mappings = match conf
            .runtime_config
            .as_ref()
            .and_then(|rc| rc.get("portMappings"))
        {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(a)) => a
                .iter()
                .enumerate()
                .map(|(i, m)| parse_mapping(i, m))
                .collect::<Result<_, _>>()?,
            Some(v) => {
                return Err(bad(format!(
                    "runtimeConfig.portMappings must be a list, not {v}"
                )));
            }
        };
        Ok(PortmapConf {
            mappings,
            snat,
            masq_all: masq_all && snat,
            mark_bit: mark_bit.unwrap_or(DEFAULT_MARK_BIT),
            external_set_mark_chain,
        })
    }
}

fn parse_mapping(i: usize, m: &Value) -> Result<PortMapping, CniError> {
    let at = |field: &str| format!("runtimeConfig.portMappings[{i}].{field}");
    let bad = |msg: String| CniError::new(code::INVALID_CONFIG, msg);
    let obj = m.as_object().ok_or_else(|| {
        bad(format!(
            "runtimeConfig.portMappings[{i}] must be an object, not {m}"
        ))
    })?;
    let port = |field: &str| -> Result<u16, CniError> {
        match obj.get(field) {
            None | Some(Value::Null) => Err(bad(format!("{} is missing", at(field)))),
            Some(v) => v
                .as_u64()
                .filter(|p| (1..=65535).contains(p))
                .map(|p| p as u16)
                .ok_or_else(|| bad(format!("{} {v} is not a port (1-65535)", at(field)))),
        }
    };
    let host_port = port("hostPort")?;
    let container_port = port("containerPort")?;
    let protocol = match obj.get("protocol") {
        None | Some(Value::Null) => Proto::Tcp,
        Some(Value::String(s)) if s.is_empty() => Proto::Tcp,
        Some(Value::String(s)) => match s.to_ascii_lowercase().as_str() {
            "tcp" => Proto::Tcp,
            "udp" => Proto::Udp,
            "sctp" => Proto::Sctp,
            _ => {
                return Err(bad(format!(
                    "{} {s:?} is not tcp, udp or sctp",
                    at("protocol")
                )));
            }
        },
        Some(v) => return Err(bad(format!("{} must be a string, not {v}", at("protocol")))),
    };
    let host_ip = match obj.get("hostIP") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(Value::String(s)) => Some(
            s.parse::<IpAddr>()
                .map_err(|_| bad(format!("{} {s:?} is not an IP address", at("hostIP"))))?,
        ),
        Some(v) => return Err(bad(format!("{} must be a string, not {v}", at("hostIP")))),
    };
    Ok(PortMapping {
        host_port,
        container_port,
        protocol,
        host_ip,
    })
}

/// The pod's addresses from `prevResult`: the first IPv4 and the first IPv6
/// address on an interface inside the sandbox (or on no named interface).
pub fn pod_ips(prev: &CniResult) -> Vec<IpAddr> {
    let in_sandbox = |idx: Option<usize>| match idx {
        None => true,
        Some(i) => prev
            .interfaces
            .get(i)
            .is_some_and(|it| !it.sandbox.is_empty()),
    };
    let mut out: Vec<IpAddr> = Vec::new();
    for ip in prev.ips.iter().filter(|ip| in_sandbox(ip.interface)) {
        let a = ip.address.addr();
        if !out.iter().any(|o| o.is_ipv4() == a.is_ipv4()) {
            out.push(a);
        }
    }
    out
}

/// `prevResult` parsed; portmap is a chained plugin and cannot work without it.
pub fn prev_result(conf: &NetConf, command: &str) -> Result<CniResult, CniError> {
    let prev = conf.prev_result.as_ref().ok_or_else(|| {
        CniError::new(
            code::INVALID_CONFIG,
            format!(
                "portmap must be chained after a plugin that gives the pod its addresses: {command} needs prevResult"
            ),
        )
    })?;
    CniResult::from_value(prev)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(extra: Value) -> NetConf {
        let mut v = serde_json::json!({"cniVersion": "1.0.0", "name": "n", "type": "portmap"});
        if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
            o.extend(e.clone());
        }
        serde_json::from_value(v).unwrap()
    }

    fn maps(m: Value) -> NetConf {
        conf(serde_json::json!({"runtimeConfig": {"portMappings": m}}))
    }

    #[test]
    fn defaults() {
        let c = PortmapConf::parse(&conf(serde_json::json!({}))).unwrap();
        assert!(c.mappings.is_empty());
        assert!(c.snat);
        assert!(!c.masq_all);
        assert_eq!(c.mark(), 0x2000);
    }

    #[test]
    fn mappings_parse() {
        let c = PortmapConf::parse(&maps(serde_json::json!([
            {"hostPort": 8080, "containerPort": 80, "protocol": "TCP"},
            {"hostPort": 53, "containerPort": 5353, "protocol": "udp", "hostIP": "10.0.0.1"},
            {"hostPort": 9, "containerPort": 9, "protocol": "sctp", "hostIP": ""},
        ])))
        .unwrap();
        assert_eq!(c.mappings.len(), 3);
        assert_eq!(c.mappings[0].protocol, Proto::Tcp);
        assert_eq!(c.mappings[1].host_ip, Some("10.0.0.1".parse().unwrap()));
        assert_eq!(c.mappings[2].host_ip, None);
        assert!(c.mappings[1].applies_to("10.1.1.1".parse().unwrap()));
        assert!(!c.mappings[1].applies_to("fd00::1".parse().unwrap()));
        assert!(c.mappings[0].applies_to("fd00::1".parse().unwrap()));
    }

    #[test]
    fn bad_mappings_name_the_field() {
        for (m, needle) in [
            (
                serde_json::json!([{"hostPort": 0, "containerPort": 80}]),
                "[0].hostPort 0",
            ),
            (
                serde_json::json!([{"hostPort": 80, "containerPort": 70000}]),
                "containerPort 70000",
            ),
            (
                serde_json::json!([{"hostPort": 80, "containerPort": 80, "protocol": "icmp"}]),
                "\"icmp\"",
            ),
            (
                serde_json::json!([{"containerPort": 80}]),
                "hostPort is missing",
            ),
            (
                serde_json::json!([{"hostPort": 1, "containerPort": 1, "hostIP": "nope"}]),
                "hostIP",
            ),
            (
                serde_json::json!([{"hostPort": "80", "containerPort": 80}]),
                "hostPort \"80\"",
            ),
            (serde_json::json!({"hostPort": 80}), "must be a list"),
        ] {
            let e = PortmapConf::parse(&maps(m)).unwrap_err();
            assert_eq!(e.code, code::INVALID_CONFIG);
            assert!(e.msg.contains(needle), "{e} lacks {needle}");
        }
    }

    #[test]
    fn mark_options() {
        let c = PortmapConf::parse(&conf(serde_json::json!({"markMasqBit": 5}))).unwrap();
        assert_eq!(c.mark(), 32);
        let e = PortmapConf::parse(&conf(serde_json::json!({"markMasqBit": 32}))).unwrap_err();
        assert_eq!(e.code, code::INVALID_CONFIG);
        let e = PortmapConf::parse(&conf(
            serde_json::json!({"markMasqBit": 5, "externalSetMarkChain": "KUBE-MARK-MASQ"}),
        ))
        .unwrap_err();
        assert_eq!(e.code, code::INVALID_CONFIG);
        let c = PortmapConf::parse(&conf(
            serde_json::json!({"externalSetMarkChain": "KUBE-MARK-MASQ", "masqAll": true, "snat": false}),
        ))
        .unwrap();
        assert_eq!(c.external_set_mark_chain.as_deref(), Some("KUBE-MARK-MASQ"));
        assert!(!c.masq_all, "masqAll needs snat");
        let e = PortmapConf::parse(&conf(
            serde_json::json!({"conditionsV4": ["-d", "1.2.3.4"]}),
        ))
        .unwrap_err();
        assert_eq!(e.code, code::UNSUPPORTED_FIELD);
    }

    #[test]
    fn pod_ips_come_from_sandbox_interfaces() {
        let prev = CniResult::from_value(&serde_json::json!({
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "cni0"}, {"name": "veth1"}, {"name": "eth0", "sandbox": "/run/netns/p"}],
            "ips": [
                {"address": "10.22.0.1/16", "interface": 0},
                {"address": "10.22.0.5/16", "interface": 2},
                {"address": "10.22.0.6/16", "interface": 2},
                {"address": "fd00::5/64", "interface": 2},
            ]
        }))
        .unwrap();
        let ips = pod_ips(&prev);
        assert_eq!(
            ips,
            [
                "10.22.0.5".parse::<IpAddr>().unwrap(),
                "fd00::5".parse().unwrap()
            ]
        );
    }
}
