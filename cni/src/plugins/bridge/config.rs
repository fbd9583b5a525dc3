//! The bridge plugin's configuration: the fields of the reference plugin
//! (`bridge`, `isGateway`, `isDefaultGateway`, `forceAddress`, `ipMasq`,
//! `mtu`, `hairpinMode`, `promiscMode`, `ipam`) and the `mac` a runtime may
//! ask for (`runtimeConfig.mac` or `CNI_ARGS` `MAC=`).

use serde::Deserialize;
use serde_json::Value;

use crate::ipam;
use crate::link::{parse_mac, valid_ifname};
use crate::protocol::Invocation;
use crate::types::{CniError, Dns, NetConf, code};

pub const DEFAULT_BRIDGE: &str = "cni0";

/// The plugin's own fields, as they appear in the config.
#[derive(Debug, Deserialize)]
struct Fields {
    #[serde(default = "default_bridge")]
    bridge: String,
    #[serde(rename = "isGateway", default)]
    is_gateway: bool,
    #[serde(rename = "isDefaultGateway", default)]
    is_default_gateway: bool,
    #[serde(rename = "forceAddress", default)]
    force_address: bool,
    #[serde(default)]
    mtu: Option<u32>,
    #[serde(rename = "hairpinMode", default)]
    hairpin_mode: bool,
    #[serde(rename = "promiscMode", default)]
    promisc_mode: bool,
    #[serde(default)]
    vlan: Option<i64>,
    #[serde(rename = "vlanTrunk", default)]
    vlan_trunk: Option<Vec<Value>>,
    #[serde(default)]
    macspoofchk: Option<bool>,
}

fn default_bridge() -> String {
    DEFAULT_BRIDGE.to_string()
}

/// A validated bridge configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct BridgeConf {
    /// The network's name (`name`).
    pub network: String,
    pub bridge: String,
    /// True also when only `isDefaultGateway` is, as the reference does.
    pub is_gateway: bool,
    pub is_default_gateway: bool,
    pub force_address: bool,
    pub ip_masq: bool,
    pub mtu: Option<u32>,
    pub hairpin: bool,
    pub promisc: bool,
    /// `ipam.type`; None for a layer-2 only network.
    pub ipam_type: Option<String>,
    /// The pod interface's MAC, when the runtime asks for one.
    pub mac: Option<[u8; 6]>,
    /// `dns` of the config: replaces the IPAM plugin's when set.
    pub dns: Option<Dns>,
}

fn invalid(msg: impl Into<String>) -> CniError {
    CniError::new(code::INVALID_CONFIG, msg)
}

impl BridgeConf {
    /// Reads and checks the config of one invocation.
    pub fn parse(conf: &NetConf, inv: &Invocation, raw: &Value) -> Result<BridgeConf, CniError> {
        let own: serde_json::Map<String, Value> = conf
            .plugin
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let f: Fields = serde_path_to_error::deserialize(Value::Object(own)).map_err(|e| {
            invalid(format!("invalid bridge configuration field {}", e.path()))
                .with_details(e.inner().to_string())
        })?;
        if !valid_ifname(&f.bridge) {
            return Err(invalid(format!(
                "bridge name {:?} is not a valid interface name (1 to 15 characters, no '/', ':' or spaces)",
                f.bridge
            )));
        }
        let mtu = match f.mtu {
            None | Some(0) => None,
            Some(m) if (68..=65535).contains(&m) => Some(m),
            Some(m) => {
                return Err(invalid(format!("mtu {m} is out of range (68 to 65535)")));
            }
        };
        if f.hairpin_mode && f.promisc_mode {
            return Err(invalid("hairpinMode and promiscMode cannot both be set"));
        }
        if f.vlan.is_some_and(|v| v != 0) {
            return Err(CniError::new(
                code::UNSUPPORTED_FIELD,
                "vlan is not supported by berth's bridge plugin",
            ));
        }
        if f.vlan_trunk.is_some_and(|v| !v.is_empty()) {
            return Err(CniError::new(
                code::UNSUPPORTED_FIELD,
                "vlanTrunk is not supported by berth's bridge plugin",
            ));
        }
        if f.macspoofchk == Some(true) {
            return Err(CniError::new(
                code::UNSUPPORTED_FIELD,
                "macspoofchk is not supported by berth's bridge plugin",
            ));
        }
        if let Some(ipam) = &conf.ipam
            && !ipam.is_object()
        {
            return Err(invalid("ipam must be an object"));
        }
        Ok(BridgeConf {
            network: conf.name.clone(),
            bridge: f.bridge,
            is_gateway: f.is_gateway || f.is_default_gateway,
            is_default_gateway: f.is_default_gateway,
            force_address: f.force_address,
            ip_masq: conf.ip_masq.unwrap_or(false),
            mtu,
            hairpin: f.hairpin_mode,
            promisc: f.promisc_mode,
            ipam_type: ipam::ipam_type(raw).map(str::to_string),
            mac: requested_mac(conf, inv)?,
            dns: conf.dns.clone().filter(|d| !d.is_empty()),
        })
    }
}

/// `runtimeConfig.mac`, else `MAC` of CNI_ARGS.
fn requested_mac(conf: &NetConf, inv: &Invocation) -> Result<Option<[u8; 6]>, CniError> {
    let from_rc = conf
        .runtime_config
        .as_ref()
        .and_then(|rc| rc.get("mac"))
        .and_then(Value::as_str);
    let from_args = inv
        .args
        .iter()
        .find(|(k, _)| k == "MAC")
        .map(|(_, v)| v.as_str());
    let Some(s) = from_rc.or(from_args).filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    let mac = parse_mac(s).ok_or_else(|| invalid(format!("MAC address {s:?} is not valid")))?;
    if mac[0] & 1 == 1 {
        return Err(invalid(format!("MAC address {s:?} is a multicast address")));
    }
    Ok(Some(mac))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Command;

    fn inv(args: &[(&str, &str)]) -> Invocation {
        Invocation {
            command: Command::Add,
            container_id: "c1".into(),
            netns: Some("/run/netns/x".into()),
            ifname: "eth0".into(),
            args: args
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            path: vec![],
            stdin: vec![],
        }
    }

    fn parse(json: Value, args: &[(&str, &str)]) -> Result<BridgeConf, CniError> {
        let conf: NetConf = serde_json::from_value(json.clone()).unwrap();
        BridgeConf::parse(&conf, &inv(args), &json)
    }

    #[test]
    fn defaults_are_the_reference_ones() {
        let c = parse(
            serde_json::json!({"cniVersion":"1.0.0","name":"n","type":"bridge"}),
            &[],
        )
        .unwrap();
        assert_eq!(c.bridge, "cni0");
        assert!(!c.is_gateway && !c.ip_masq && !c.hairpin && !c.promisc);
        assert_eq!(c.ipam_type, None);
        assert_eq!(c.mtu, None);
    }

    #[test]
    fn default_gateway_implies_gateway_and_fields_are_read() {
        let c = parse(
            serde_json::json!({"cniVersion":"1.0.0","name":"n","type":"bridge","bridge":"br-x",
                "isDefaultGateway":true,"ipMasq":true,"mtu":1400,"hairpinMode":true,
                "runtimeConfig":{"mac":"02:00:00:00:00:01"},
                "ipam":{"type":"host-local","subnet":"10.1.0.0/24"}}),
            &[],
        )
        .unwrap();
        assert!(c.is_gateway && c.is_default_gateway && c.ip_masq && c.hairpin);
        assert_eq!(c.bridge, "br-x");
        assert_eq!(c.mtu, Some(1400));
        assert_eq!(c.ipam_type.as_deref(), Some("host-local"));
        assert_eq!(c.mac, Some([2, 0, 0, 0, 0, 1]));
        let c = parse(
            serde_json::json!({"cniVersion":"1.0.0","name":"n","type":"bridge"}),
            &[("MAC", "02:00:00:00:00:02")],
        )
        .unwrap();
        assert_eq!(c.mac, Some([2, 0, 0, 0, 0, 2]));
    }

    #[test]
    fn bad_fields_are_named() {
        let base = |extra: Value| {
            let mut v = serde_json::json!({"cniVersion":"1.0.0","name":"n","type":"bridge"});
            for (k, x) in extra.as_object().unwrap() {
                v[k] = x.clone();
            }
            parse(v, &[]).unwrap_err()
        };
        let e = base(serde_json::json!({"mtu":"big"}));
        assert_eq!(e.code, code::INVALID_CONFIG);
        assert!(e.msg.contains("mtu"), "{e}");
        let e = base(serde_json::json!({"mtu":20}));
        assert!(e.msg.contains("mtu"), "{e}");
        let e = base(serde_json::json!({"bridge":"a-very-long-bridge-name"}));
        assert!(e.msg.contains("a-very-long-bridge-name"), "{e}");
        let e = base(serde_json::json!({"hairpinMode":true,"promiscMode":true}));
        assert!(e.msg.contains("hairpinMode"), "{e}");
        let e = base(serde_json::json!({"vlan":5}));
        assert_eq!(e.code, code::UNSUPPORTED_FIELD);
        let e = base(serde_json::json!({"runtimeConfig":{"mac":"nope"}}));
        assert!(e.msg.contains("nope"), "{e}");
        let e = base(serde_json::json!({"runtimeConfig":{"mac":"01:00:00:00:00:01"}}));
        assert!(e.msg.contains("multicast"), "{e}");
        let e = base(serde_json::json!({"ipam":"host-local"}));
        assert!(e.msg.contains("ipam"), "{e}");
    }
}
