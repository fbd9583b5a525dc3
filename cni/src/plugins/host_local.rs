//! `host-local`: the IPAM plugin that hands out addresses from ranges in a
//! store on the node's disk, compatible with the reference plugin's config
//! and store (see [`config`] and [`store`]).
//!
//! - ADD: one address per range set (a requested one, the one this
//!   attachment already holds, or the next free one), all under one lock;
//!   on failure the addresses taken by this call are freed again.
//! - DEL: frees the attachment's addresses; needs only the store's location,
//!   so it works after the ranges changed and is idempotent.
//! - CHECK: the attachment holds an address in every range set, and holds
//!   every address of the prevResult that lies in the ranges.
//! - GC: frees every address whose owner is not in
//!   `cni.dev/valid-attachments`.
//! - STATUS: fails with code 50 when some range set has no address left
//!   (an ADD would fail).

pub mod allocator;
pub mod config;
pub mod store;

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::Path;

use ipnet::IpNet;
use serde_json::Value;

use crate::protocol::{Invocation, Plugin};
use crate::types::{CniError, CniResult, Dns, IpConfig, NetConf, code};

use allocator::Plan;
use config::{ConfigError, IpamConfig};
use store::{Store, StoreError};

/// The host-local IPAM plugin.
#[derive(Debug, Default, Clone, Copy)]
pub struct HostLocal;

impl From<ConfigError> for CniError {
    fn from(e: ConfigError) -> Self {
        CniError::new(code::INVALID_CONFIG, e.to_string())
    }
}

impl From<StoreError> for CniError {
    fn from(e: StoreError) -> Self {
        CniError::new(code::IO_FAILURE, e.to_string())
    }
}

fn sets_text(cfg: &IpamConfig) -> String {
    cfg.sets
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Matches each requested address to its range set and checks it may be
/// handed out; all before the store is touched.
fn assign_requested(cfg: &IpamConfig, plans: &[Plan]) -> Result<Vec<Option<IpAddr>>, CniError> {
    let mut wanted = vec![None; cfg.sets.len()];
    for &ip in &cfg.requested {
        let idx = cfg
            .sets
            .iter()
            .position(|s| s.contains(ip))
            .or_else(|| cfg.sets.iter().position(|s| s.subnet_of(ip).is_some()))
            .ok_or_else(|| {
                CniError::new(
                    code::INVALID_CONFIG,
                    format!(
                        "requested IP {ip} is in no range of network {} ({})",
                        cfg.location.network,
                        sets_text(cfg)
                    ),
                )
            })?;
        if let Some(other) = wanted[idx] {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                format!(
                    "requested IPs {other} and {ip} are both in range set {idx} ({}): one address per range set",
                    cfg.sets[idx]
                ),
            ));
        }
        if let Some(why) = plans[idx].refuse(ip, &cfg.exclude) {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                format!("requested IP cannot be handed out: {why}"),
            ));
        }
        wanted[idx] = Some(ip);
    }
    Ok(wanted)
}

/// Reads nameserver, domain, search and options of a resolv.conf.
pub fn parse_resolv_conf(path: &Path) -> Result<Dns, CniError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        CniError::new(
            code::INVALID_CONFIG,
            format!("ipam.resolvConf: cannot read {}: {e}", path.display()),
        )
    })?;
    let mut dns = Dns::default();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let mut words = line.split_whitespace();
        let Some(key) = words.next() else { continue };
        let rest: Vec<String> = words.map(String::from).collect();
        match key {
            "nameserver" => dns.nameservers.extend(rest.into_iter().take(1)),
            "domain" => dns.domain = rest.into_iter().next(),
            "search" => dns.search = rest,
            "options" => dns.options.extend(rest),
            _ => {}
        }
    }
    Ok(dns)
}

fn owner_text(a: &store::Owner) -> String {
    match &a.ifname {
        Some(i) => format!("container {} ({i})", a.container_id),
        None => format!("container {}", a.container_id),
    }
}

impl Plugin for HostLocal {
    fn add(&self, inv: &Invocation, conf: &NetConf, raw: &Value) -> Result<CniResult, CniError> {
        let cfg = config::parse(raw, &conf.name, &inv.args)?;
        let dns = match &cfg.resolv_conf {
            Some(p) => parse_resolv_conf(p)?,
            None => Dns::default(),
        };
        let plans: Vec<Plan> = cfg
            .sets
            .iter()
            .map(|s| Plan::new(s, &cfg.exclude))
            .collect();
        let wanted = assign_requested(&cfg, &plans)?;

        let store = Store::open(&cfg.location)?;
        let held = store.allocations()?;
        let mut taken: HashSet<IpAddr> = held.iter().map(|a| a.ip).collect();
        let (id, ifname) = (inv.container_id.as_str(), inv.ifname.as_str());
        let mut created = Vec::new();
        let mut ips = Vec::new();

        let outcome = (|| -> Result<(), CniError> {
            for (idx, plan) in plans.iter().enumerate() {
                let set = &cfg.sets[idx];
                let mine = held
                    .iter()
                    .find(|a| a.owner.is(id, ifname) && set.contains(a.ip))
                    .map(|a| a.ip);
                let ip = match (mine, wanted[idx]) {
                    // ADD again for the same attachment (a retry after a
                    // crash): the same answer, not a second address.
                    (Some(m), None) => m,
                    (Some(m), Some(w)) if m == w => m,
                    (Some(m), Some(w)) => {
                        return Err(CniError::new(
                            code::ADDRESS_IN_USE,
                            format!(
                                "container {id} ({ifname}) already holds {m} in range set {idx} ({set}) and asks for {w}"
                            ),
                        ));
                    }
                    (None, Some(w)) => {
                        let holder = held.iter().find(|a| a.ip == w);
                        if let Some(h) = holder {
                            return Err(CniError::new(
                                code::ADDRESS_IN_USE,
                                format!(
                                    "requested IP {w} is held by {} in network {}",
                                    owner_text(&h.owner),
                                    cfg.location.network
                                ),
                            ));
                        }
                        if !store.reserve(w, id, ifname, idx)? {
                            return Err(CniError::new(
                                code::ADDRESS_IN_USE,
                                format!(
                                    "requested IP {w} is already allocated in network {}",
                                    cfg.location.network
                                ),
                            ));
                        }
                        created.push(w);
                        w
                    }
                    (None, None) => {
                        let last = store.last_reserved(idx);
                        let mut got = None;
                        for (_, c) in plan.candidates(last, &taken) {
                            if store.reserve(c, id, ifname, idx)? {
                                got = Some(c);
                                break;
                            }
                        }
                        let ip = got.ok_or_else(|| {
                            CniError::new(
                                code::RANGE_EXHAUSTED,
                                format!(
                                    "no IP addresses available in range set {idx} ({set}) of network {}",
                                    cfg.location.network
                                ),
                            )
                        })?;
                        created.push(ip);
                        ip
                    }
                };
                taken.insert(ip);
                let range = plan.range_of(ip).ok_or_else(|| {
                    CniError::new(
                        code::IO_FAILURE,
                        format!("{ip} is not in range set {idx} ({set})"),
                    )
                })?;
                let address = IpNet::new(ip, range.subnet.prefix_len())
                    .map_err(|e| CniError::new(code::IO_FAILURE, format!("address {ip}: {e}")))?;
                ips.push(IpConfig {
                    address,
                    gateway: Some(range.gateway),
                    interface: None,
                });
            }
            Ok(())
        })();
        if let Err(e) = outcome {
            for ip in created {
                if let Err(re) = store.release(ip) {
                    tracing::warn!(%ip, error = %re, "cannot free an address after a failed ADD");
                }
            }
            return Err(e);
        }
        Ok(CniResult {
            cni_version: conf.cni_version.clone(),
            interfaces: Vec::new(),
            ips,
            routes: cfg.routes,
            dns,
        })
    }

    fn del(&self, inv: &Invocation, conf: &NetConf, raw: &Value) -> Result<(), CniError> {
        let loc = config::location(raw, &conf.name)?;
        if let Some(store) = Store::open_existing(&loc)? {
            store.release_owner(&inv.container_id, &inv.ifname)?;
        }
        Ok(())
    }

    fn check(&self, inv: &Invocation, conf: &NetConf, raw: &Value) -> Result<(), CniError> {
        let cfg = config::parse(raw, &conf.name, &inv.args)?;
        let (id, ifname) = (inv.container_id.as_str(), inv.ifname.as_str());
        let held = match Store::open_existing(&cfg.location)? {
            Some(store) => store.allocations()?,
            None => Vec::new(),
        };
        let mine: Vec<IpAddr> = held
            .iter()
            .filter(|a| a.owner.is(id, ifname))
            .map(|a| a.ip)
            .collect();
        for (idx, set) in cfg.sets.iter().enumerate() {
            if !mine.iter().any(|ip| set.contains(*ip)) {
                return Err(CniError::new(
                    code::CHECK_MISMATCH,
                    format!(
                        "container {id} ({ifname}) holds no address from range set {idx} ({set}) of network {}",
                        cfg.location.network
                    ),
                ));
            }
        }
        if let Some(prev) = &conf.prev_result {
            let prev = CniResult::from_value(prev)?;
            for ipc in &prev.ips {
                let ip = ipc.address.addr();
                if cfg.sets.iter().any(|s| s.contains(ip)) && !mine.contains(&ip) {
                    let holder = held
                        .iter()
                        .find(|a| a.ip == ip)
                        .map_or("nobody".to_string(), |a| owner_text(&a.owner));
                    return Err(CniError::new(
                        code::CHECK_MISMATCH,
                        format!(
                            "prevResult gives {ip} to container {id} ({ifname}) but network {} has it allocated to {holder}",
                            cfg.location.network
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    fn status(&self, inv: &Invocation, conf: &NetConf, raw: &Value) -> Result<(), CniError> {
        let cfg = config::parse(raw, &conf.name, &inv.args)?;
        let taken = match Store::open_existing(&cfg.location)? {
            Some(store) => store.taken()?,
            None => HashSet::new(),
        };
        for (idx, set) in cfg.sets.iter().enumerate() {
            if !Plan::new(set, &cfg.exclude).has_free(&taken) {
                return Err(CniError::new(
                    code::NOT_AVAILABLE,
                    format!(
                        "no IP addresses available in range set {idx} ({set}) of network {}",
                        cfg.location.network
                    ),
                ));
            }
        }
        Ok(())
    }

    fn gc(&self, _inv: &Invocation, conf: &NetConf, raw: &Value) -> Result<(), CniError> {
        let loc = config::location(raw, &conf.name)?;
        let valid = conf.valid_attachments.as_ref().ok_or_else(|| {
            CniError::new(
                code::INVALID_CONFIG,
                "GC needs cni.dev/valid-attachments (the attachments to keep)",
            )
        })?;
        let Some(store) = Store::open_existing(&loc)? else {
            return Ok(());
        };
        for a in store.allocations()? {
            if !valid.iter().any(|v| a.owner.is(&v.container_id, &v.ifname)) {
                tracing::info!(ip = %a.ip, owner = %owner_text(&a.owner), "GC frees an address");
                store.release(a.ip)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{self, Command};
    use serde_json::json;

    struct Env {
        dir: tempfile::TempDir,
    }

    impl Env {
        fn new() -> Env {
            Env {
                dir: tempfile::tempdir().unwrap(),
            }
        }

        fn conf(&self, version: &str, ipam: Value) -> Value {
            let mut ipam = ipam;
            ipam["type"] = json!("host-local");
            ipam["dataDir"] = json!(self.dir.path());
            json!({"cniVersion": version, "name": "net", "type": "bridge", "ipam": ipam})
        }

        fn run(&self, cmd: Command, id: &str, conf: &Value) -> Result<Option<Value>, CniError> {
            self.run_args(cmd, id, conf, &[])
        }

        fn run_args(
            &self,
            cmd: Command,
            id: &str,
            conf: &Value,
            args: &[(&str, &str)],
        ) -> Result<Option<Value>, CniError> {
            let inv = Invocation {
                command: cmd,
                container_id: id.into(),
                netns: Some("/run/netns/x".into()),
                ifname: "eth0".into(),
                args: args
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                path: Vec::new(),
                stdin: serde_json::to_vec(conf).unwrap(),
            };
            let out = protocol::run(&HostLocal, &inv);
            if out.exit_code != 0 {
                return Err(serde_json::from_slice(&out.stdout).unwrap());
            }
            Ok((!out.stdout.is_empty()).then(|| serde_json::from_slice(&out.stdout).unwrap()))
        }

        fn add(&self, id: &str, conf: &Value) -> Result<Vec<String>, CniError> {
            let r = self.run(Command::Add, id, conf)?.unwrap();
            Ok(r["ips"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["address"].as_str().unwrap().to_string())
                .collect())
        }

        fn files(&self) -> Vec<String> {
            let mut v: Vec<String> = std::fs::read_dir(self.dir.path().join("net"))
                .map(|d| {
                    d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                        .filter(|n| n.parse::<IpAddr>().is_ok())
                        .collect()
                })
                .unwrap_or_default();
            v.sort();
            v
        }
    }

    #[test]
    fn add_del_check_and_reuse_after_wrapping() {
        let e = Env::new();
        let c = e.conf(
            "1.0.0",
            json!({"ranges": [[{"subnet": "10.1.0.0/29"}]], "routes": [{"dst": "0.0.0.0/0"}]}),
        );
        let r = e.run(Command::Add, "c1", &c).unwrap().unwrap();
        assert_eq!(r["ips"][0]["address"], "10.1.0.2/29");
        assert_eq!(r["ips"][0]["gateway"], "10.1.0.1");
        assert_eq!(r["routes"][0]["dst"], "0.0.0.0/0");
        assert_eq!(r["cniVersion"], "1.0.0");
        e.run(Command::Check, "c1", &c).unwrap();
        // ADD again for the same attachment: the same address.
        assert_eq!(e.add("c1", &c).unwrap(), ["10.1.0.2/29"]);
        for (id, want) in [("c2", "10.1.0.3/29"), ("c3", "10.1.0.4/29")] {
            assert_eq!(e.add(id, &c).unwrap(), [want]);
        }
        e.run(Command::Del, "c2", &c).unwrap();
        e.run(Command::Del, "c2", &c).unwrap();
        let err = e.run(Command::Check, "c2", &c).unwrap_err();
        assert_eq!(err.code, code::CHECK_MISMATCH);
        // Round robin: .5 and .6 first, then the freed .3.
        for (id, want) in [
            ("c4", "10.1.0.5/29"),
            ("c5", "10.1.0.6/29"),
            ("c6", "10.1.0.3/29"),
        ] {
            assert_eq!(e.add(id, &c).unwrap(), [want]);
        }
        let err = e.run(Command::Add, "c7", &c).unwrap_err();
        assert_eq!(err.code, code::RANGE_EXHAUSTED);
        assert!(err.msg.contains("10.1.0.1-10.1.0.6"), "{}", err.msg);
        assert_eq!(err.cni_version, "1.0.0");
    }

    #[test]
    fn dual_stack_gives_one_address_per_set_and_failure_frees_the_first() {
        let e = Env::new();
        let c = e.conf(
            "1.1.0",
            json!({"ranges": [[{"subnet": "10.2.0.0/24"}], [{"subnet": "fd00:2::/120"}]]}),
        );
        assert_eq!(e.add("c1", &c).unwrap(), ["10.2.0.2/24", "fd00:2::2/120"]);
        // A set with no free address: the first set's new address goes back.
        let c2 = e.conf(
            "1.1.0",
            json!({"ranges": [[{"subnet": "10.2.0.0/24"}], [{"subnet": "fd00:2::/126", "rangeStart": "fd00:2::2", "rangeEnd": "fd00:2::2"}]]}),
        );
        let err = e.run(Command::Add, "c2", &c2).unwrap_err();
        assert_eq!(err.code, code::RANGE_EXHAUSTED);
        assert!(err.msg.contains("range set 1"), "{}", err.msg);
        assert_eq!(e.files(), ["10.2.0.2", "fd00:2::2"]);
    }

    #[test]
    fn requested_addresses() {
        let e = Env::new();
        let mut c = e.conf(
            "1.0.0",
            json!({"ranges": [[{"subnet": "10.3.0.0/24"}]], "exclude": ["10.3.0.128/25"]}),
        );
        c["runtimeConfig"] = json!({"ips": ["10.3.0.50/24"]});
        assert_eq!(e.add("c1", &c).unwrap(), ["10.3.0.50/24"]);
        let err = e.run(Command::Add, "c2", &c).unwrap_err();
        assert_eq!(err.code, code::ADDRESS_IN_USE);
        assert!(err.msg.contains("container c1 (eth0)"), "{}", err.msg);
        for (ip, what) in [
            ("10.3.0.1", "gateway"),
            ("10.3.0.200", "excluded"),
            ("10.3.0.255", "broadcast"),
            ("10.9.0.5", "no range"),
        ] {
            let err = e
                .run_args(Command::Add, "c3", &e.conf("1.0.0", json!({"ranges": [[{"subnet": "10.3.0.0/24"}]], "exclude": ["10.3.0.128/25"]})), &[("IP", ip)])
                .unwrap_err();
            assert_eq!(err.code, code::INVALID_CONFIG, "{ip}");
            assert!(err.msg.contains(what), "{ip}: {}", err.msg);
        }
        assert_eq!(e.files(), ["10.3.0.50"]);
    }

    #[test]
    fn exclusions_are_skipped_in_order() {
        let e = Env::new();
        let c = e.conf(
            "1.0.0",
            json!({"subnet": "10.4.0.0/24", "exclude": ["10.4.0.2", "10.4.0.4/30"]}),
        );
        let got: Vec<String> = ["a", "b", "c"]
            .iter()
            .map(|id| e.add(id, &c).unwrap().remove(0))
            .collect();
        assert_eq!(got, ["10.4.0.3/24", "10.4.0.8/24", "10.4.0.9/24"]);
    }

    #[test]
    fn gc_keeps_only_valid_attachments() {
        let e = Env::new();
        let c = e.conf("1.1.0", json!({"subnet": "10.5.0.0/24"}));
        for id in ["a", "b", "c"] {
            e.add(id, &c).unwrap();
        }
        let mut gc = c.clone();
        gc["cni.dev/valid-attachments"] =
            json!([{"containerID": "b", "ifname": "eth0"}, {"containerID": "a", "ifname": "eth9"}]);
        e.run(Command::Gc, "", &gc).unwrap();
        assert_eq!(e.files(), ["10.5.0.3"]);
        let err = e.run(Command::Gc, "", &c).unwrap_err();
        assert_eq!(err.code, code::INVALID_CONFIG);
    }

    #[test]
    fn status_reports_a_full_range() {
        let e = Env::new();
        let c = e.conf("1.1.0", json!({"subnet": "10.6.0.0/30"}));
        e.run(Command::Status, "", &c).unwrap();
        e.add("a", &c).unwrap();
        let err = e.run(Command::Status, "", &c).unwrap_err();
        assert_eq!(err.code, code::NOT_AVAILABLE);
        assert!(err.msg.contains("10.6.0.1-10.6.0.2"), "{}", err.msg);
    }

    #[test]
    fn check_compares_the_prev_result() {
        let e = Env::new();
        let c = e.conf("1.0.0", json!({"subnet": "10.7.0.0/24"}));
        e.add("a", &c).unwrap();
        e.add("b", &c).unwrap();
        let mut chk = c.clone();
        chk["prevResult"] = json!({"cniVersion": "1.0.0", "ips": [{"address": "10.7.0.3/24"}]});
        let err = e.run(Command::Check, "a", &chk).unwrap_err();
        assert_eq!(err.code, code::CHECK_MISMATCH);
        assert!(err.msg.contains("container b (eth0)"), "{}", err.msg);
        e.run(Command::Check, "b", &chk).unwrap();
    }

    #[test]
    fn bad_configs_leave_nothing() {
        let e = Env::new();
        for ipam in [
            json!({"ranges": [[{"subnet": "10.8.0.0/33"}]]}),
            json!({"ranges": [[{"subnet": "10.8.0.0/24", "gateway": "10.9.0.1"}]]}),
            json!({}),
        ] {
            let err = e
                .run(Command::Add, "a", &e.conf("1.0.0", ipam))
                .unwrap_err();
            assert_eq!(err.code, code::INVALID_CONFIG, "{}", err.msg);
        }
        let err = e
            .run(
                Command::Add,
                "a",
                &json!({"cniVersion": "1.0.0", "name": "net", "type": "x"}),
            )
            .unwrap_err();
        assert_eq!(err.code, code::INVALID_CONFIG);
        assert!(err.msg.contains("ipam"), "{}", err.msg);
        assert!(!e.dir.path().join("net").exists());
    }

    #[test]
    fn resolv_conf_becomes_dns() {
        let e = Env::new();
        let rc = e.dir.path().join("resolv.conf");
        std::fs::write(
            &rc,
            "# x\nnameserver 10.0.0.53\nnameserver fd00::53\ndomain example.org\nsearch a.example b.example\noptions ndots:5 edns0\n",
        )
        .unwrap();
        let c = e.conf("1.0.0", json!({"subnet": "10.10.0.0/24", "resolvConf": rc}));
        let r = e.run(Command::Add, "a", &c).unwrap().unwrap();
        assert_eq!(r["dns"]["nameservers"], json!(["10.0.0.53", "fd00::53"]));
        assert_eq!(r["dns"]["domain"], "example.org");
        assert_eq!(r["dns"]["search"], json!(["a.example", "b.example"]));
        assert_eq!(r["dns"]["options"], json!(["ndots:5", "edns0"]));
    }

    #[test]
    fn old_results_carry_the_ip_version() {
        let e = Env::new();
        let c = e.conf("0.4.0", json!({"subnet": "fd00:11::/64"}));
        let r = e.run(Command::Add, "a", &c).unwrap().unwrap();
        assert_eq!(r["ips"][0]["version"], "6");
        assert_eq!(r["ips"][0]["address"], "fd00:11::2/64");
    }
}
