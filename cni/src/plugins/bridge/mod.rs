//! The `bridge` plugin: pods on a Linux bridge of the node, each through a
//! veth pair, as the reference plugin of the same name does (same config,
//! same result, same state in the kernel), with the masquerading in berth's
//! own nftables table instead of iptables.
//!
//! - [`config`]: the fields it reads;
//! - [`setup`]: ADD and DEL, and GC (1.1) of masquerade rules;
//! - [`check`]: CHECK against the prevResult.
//!
//! STATUS and GC are passed on to the IPAM plugin, which holds the state
//! they are about.
//!
//! It runs in the node's network namespace (the bridge, the host ends and
//! the rules are there); pod namespaces are entered on threads of their own.

pub mod check;
pub mod config;
pub mod setup;

use serde_json::Value;

use crate::ipam;
use crate::protocol::{Command, Invocation, Plugin};
use crate::types::{CniError, CniResult, NetConf};
use config::BridgeConf;

pub struct Bridge;

impl Plugin for Bridge {
    fn add(&self, inv: &Invocation, conf: &NetConf, raw: &Value) -> Result<CniResult, CniError> {
        let c = BridgeConf::parse(conf, inv, raw)?;
        setup::add(&c, inv, raw)
    }

    fn del(&self, inv: &Invocation, conf: &NetConf, raw: &Value) -> Result<(), CniError> {
        let c = BridgeConf::parse(conf, inv, raw)?;
        setup::del(&c, inv, raw)
    }

    fn check(&self, inv: &Invocation, conf: &NetConf, raw: &Value) -> Result<(), CniError> {
        let c = BridgeConf::parse(conf, inv, raw)?;
        check::check(&c, conf, inv, raw)
    }

    fn status(&self, inv: &Invocation, conf: &NetConf, raw: &Value) -> Result<(), CniError> {
        let c = BridgeConf::parse(conf, inv, raw)?;
        if let Some(t) = c.ipam_type.as_deref() {
            ipam::delegate_raw(t, Command::Status, inv, raw)?;
        }
        Ok(())
    }

    fn gc(&self, inv: &Invocation, conf: &NetConf, raw: &Value) -> Result<(), CniError> {
        let c = BridgeConf::parse(conf, inv, raw)?;
        setup::gc(&c, conf, inv, raw)
    }
}
