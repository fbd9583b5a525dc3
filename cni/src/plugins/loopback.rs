//! `loopback`: brings `lo` up in the pod's network namespace on ADD and
//! down on DEL; CHECK verifies it is up.
//!
//! The result lists `lo` with the addresses the kernel gives it once up
//! (127.0.0.1/8, and ::1/128 unless IPv6 is off), as the reference does. DEL
//! succeeds when the namespace is already gone: the runtime may call it
//! after the pod's namespace was destroyed.

use std::io;
use std::net::IpAddr;
use std::path::Path;

use futures::TryStreamExt;
use ipnet::IpNet;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::{LinkAttribute, LinkFlags};
use rtnetlink::LinkUnspec;
use serde_json::Value;

use crate::netns::{self, NetnsError};
use crate::protocol::{Invocation, Plugin};
use crate::types::{CniError, CniResult, Interface, IpConfig, NetConf, code};

/// The loopback plugin.
#[derive(Debug, Default, Clone, Copy)]
pub struct Loopback;

#[derive(Debug, thiserror::Error)]
pub enum LoopbackError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("starting the netlink runtime: {0}")]
    Runtime(io::Error),
    #[error("opening a netlink socket: {0}")]
    Socket(io::Error),
    #[error("{what}: {source}")]
    Netlink {
        what: &'static str,
        source: rtnetlink::Error,
    },
    #[error("the namespace has no loopback interface \"lo\"")]
    NoLo,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Up,
    Down,
    Inspect,
}

/// `lo` as found (after the operation).
#[derive(Debug, Clone, PartialEq, Eq)]
struct LoState {
    up: bool,
    mac: String,
    addrs: Vec<IpNet>,
}

fn nl(what: &'static str) -> impl FnOnce(rtnetlink::Error) -> LoopbackError {
    move |source| LoopbackError::Netlink { what, source }
}

async fn apply(op: Op) -> Result<LoState, LoopbackError> {
    let (conn, handle, _) = rtnetlink::new_connection().map_err(LoopbackError::Socket)?;
    let task = tokio::spawn(conn);
    let out = async {
        let link = handle
            .link()
            .get()
            .match_name("lo".to_string())
            .execute()
            .try_next()
            .await
            .map_err(nl("looking up lo"))?
            .ok_or(LoopbackError::NoLo)?;
        let index = link.header.index;
        let mut up = link.header.flags.contains(LinkFlags::Up);
        match op {
            Op::Up => {
                handle
                    .link()
                    .set(LinkUnspec::new_with_index(index).up().build())
                    .execute()
                    .await
                    .map_err(nl("setting lo up"))?;
                up = true;
            }
            Op::Down => {
                handle
                    .link()
                    .set(LinkUnspec::new_with_index(index).down().build())
                    .execute()
                    .await
                    .map_err(nl("setting lo down"))?;
                up = false;
            }
            Op::Inspect => {}
        }
        let mac = link
            .attributes
            .iter()
            .find_map(|a| match a {
                LinkAttribute::Address(b) => Some(
                    b.iter()
                        .map(|x| format!("{x:02x}"))
                        .collect::<Vec<_>>()
                        .join(":"),
                ),
                _ => None,
            })
            .unwrap_or_default();
        let mut addrs = Vec::new();
        if op != Op::Down {
            let msgs: Vec<_> = handle
                .address()
                .get()
                .set_link_index_filter(index)
                .execute()
                .try_collect()
                .await
                .map_err(nl("listing the addresses of lo"))?;
            for m in msgs {
                let ip = m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(ip) => Some(*ip),
                    _ => None,
                });
                if let Some(net) = ip.and_then(|ip| IpNet::new(ip, m.header.prefix_len).ok())
                    && !addrs.contains(&net)
                {
                    addrs.push(net);
                }
            }
            // IPv4 first, as the reference lists them.
            addrs.sort_by_key(|n| (matches!(n.addr(), IpAddr::V6(_)), *n));
        }
        Ok(LoState { up, mac, addrs })
    }
    .await;
    task.abort();
    out
}

fn run(path: &Path, op: Op) -> Result<LoState, LoopbackError> {
    netns::run_in(path, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(LoopbackError::Runtime)?;
        rt.block_on(apply(op))
    })?
}

fn netns_of(inv: &Invocation) -> Result<&Path, CniError> {
    inv.netns.as_deref().ok_or_else(|| {
        CniError::new(
            code::INVALID_ENVIRONMENT,
            format!("CNI_NETNS is required for {}", inv.command.as_str()),
        )
    })
}

fn to_cni(e: LoopbackError, netns: &Path) -> CniError {
    match e {
        LoopbackError::Netns(NetnsError::Open { .. })
        | LoopbackError::Netns(NetnsError::Enter { .. }) => CniError::new(
            code::INVALID_ENVIRONMENT,
            format!("CNI_NETNS {}: {e}", netns.display()),
        ),
        other => CniError::new(
            code::KERNEL,
            format!("loopback in {}: {other}", netns.display()),
        ),
    }
}

/// Whether the namespace no longer exists (a DEL then has nothing to do).
fn is_gone(e: &LoopbackError) -> bool {
    match e {
        LoopbackError::Netns(NetnsError::Open { source, .. }) => {
            source.kind() == io::ErrorKind::NotFound
        }
        // A leftover mount point that is no namespace any more.
        LoopbackError::Netns(NetnsError::Enter { source, .. }) => *source == nix::Error::EINVAL,
        _ => false,
    }
}

impl Plugin for Loopback {
    fn add(&self, inv: &Invocation, conf: &NetConf, _raw: &Value) -> Result<CniResult, CniError> {
        let ns = netns_of(inv)?;
        let st = run(ns, Op::Up).map_err(|e| to_cni(e, ns))?;
        // In a chain, the pod's network is what came before: pass it on.
        if let Some(prev) = &conf.prev_result {
            let mut r = CniResult::from_value(prev)?;
            r.cni_version = conf.cni_version.clone();
            return Ok(r);
        }
        Ok(CniResult {
            cni_version: conf.cni_version.clone(),
            interfaces: vec![Interface {
                name: "lo".into(),
                mac: if st.mac.is_empty() {
                    "00:00:00:00:00:00".into()
                } else {
                    st.mac
                },
                mtu: None,
                sandbox: ns.display().to_string(),
            }],
            ips: st
                .addrs
                .into_iter()
                .map(|address| IpConfig {
                    address,
                    gateway: None,
                    interface: Some(0),
                })
                .collect(),
            ..Default::default()
        })
    }

    fn del(&self, inv: &Invocation, _conf: &NetConf, _raw: &Value) -> Result<(), CniError> {
        let Some(ns) = inv.netns.as_deref() else {
            return Ok(());
        };
        match run(ns, Op::Down) {
            Ok(_) => Ok(()),
            Err(e) if is_gone(&e) => Ok(()),
            Err(e) => Err(to_cni(e, ns)),
        }
    }

    fn check(&self, inv: &Invocation, _conf: &NetConf, _raw: &Value) -> Result<(), CniError> {
        let ns = netns_of(inv)?;
        let st = run(ns, Op::Inspect).map_err(|e| to_cni(e, ns))?;
        if !st.up {
            return Err(CniError::new(
                code::CHECK_MISMATCH,
                format!("loopback interface lo is down in {}", ns.display()),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_namespace_is_an_environment_error_but_del_succeeds() {
        let inv = Invocation {
            command: crate::protocol::Command::Add,
            container_id: "c".into(),
            netns: Some("/run/netns/berth-no-such-ns".into()),
            ifname: "lo".into(),
            args: Vec::new(),
            path: Vec::new(),
            stdin: br#"{"cniVersion":"1.0.0","name":"lo","type":"loopback"}"#.to_vec(),
        };
        let out = crate::protocol::run(&Loopback, &inv);
        assert_eq!(out.exit_code, 1);
        let e: CniError = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(e.code, code::INVALID_ENVIRONMENT);
        assert!(e.msg.contains("CNI_NETNS"), "{}", e.msg);
        let del = Invocation {
            command: crate::protocol::Command::Del,
            ..inv
        };
        let out = crate::protocol::run(&Loopback, &del);
        assert_eq!(out.exit_code, 0, "{}", String::from_utf8_lossy(&out.stdout));
    }
}
