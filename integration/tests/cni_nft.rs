//! berth writes nftables rules over netlink (`berth_cni::nfnetlink`); `nft`
//! must read them back as the very rules it would have made itself. Each
//! rule set the plugins make goes into one network namespace through `nft
//! -j` and into another through netlink; `nft --debug=netlink` then lists
//! the kernel's bytecode of both, which must be identical (handles aside).

use anyhow::{Context, Result, ensure};
use berth_cni::netns;
use berth_cni::nft::{self, Batch, Nft};
use berth_cni::plugins::bridge::setup::masquerade_batch;
use berth_cni::plugins::portmap::config::PortmapConf;
use berth_cni::plugins::portmap::rules::{self, Tag};
use berth_cni::types::{IpConfig, NetConf};
use berth_integration::netns::NetNs;
use serde_json::json;

/// The batches under test: the bridge's masquerade rules (dual stack) and
/// portmap's table with every kind of rule it plans.
fn batches() -> Result<Vec<Batch<'static>>> {
    let ips: Vec<IpConfig> = ["10.88.0.5/16", "fd00:88::5/64"]
        .iter()
        .map(|a| IpConfig {
            address: a.parse().unwrap(),
            gateway: None,
            interface: None,
        })
        .collect();
    let mut out = vec![masquerade_batch(&ips, "bridge:net:container:eth0")];
    let conf: NetConf = serde_json::from_value(json!({
        "cniVersion": "1.0.0", "name": "net", "type": "portmap",
        "runtimeConfig": {"portMappings": [
            {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
            {"hostPort": 5353, "containerPort": 53, "protocol": "udp", "hostIP": "192.168.1.1"},
            {"hostPort": 9090, "containerPort": 90, "protocol": "sctp", "hostIP": "127.0.0.1"},
        ]}
    }))?;
    let pods = ["10.88.0.5".parse()?, "fd00:88::5".parse()?];
    let tag = Tag::new("net", "container", "eth0");
    for masq_all in [false, true] {
        let mut pm = PortmapConf::parse(&conf)?;
        pm.masq_all = masq_all;
        let planned = rules::plan(&pm, &pods, &tag)?;
        let mut b = nft::batch();
        rules::base(&mut b);
        rules::add(&mut b, &planned);
        out.push(b);
    }
    let mut pm = PortmapConf::parse(&conf)?;
    pm.snat = false;
    let mut b = nft::batch();
    rules::base(&mut b);
    rules::add(&mut b, &rules::plan(&pm, &pods, &tag)?);
    out.push(b);
    Ok(out)
}

/// `nft --debug=netlink list ruleset` with rule handles left out.
fn bytecode(ns: &NetNs) -> Result<String> {
    let out = ns.sh("nft --debug=netlink list ruleset")?;
    Ok(out
        .lines()
        .map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            // Rule headers: "inet TABLE CHAIN HANDLE [PREVIOUS HANDLE]".
            if !l.starts_with(' ') && words.len() >= 4 && words[3].parse::<u64>().is_ok() {
                words[..3].join(" ")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n"))
}

#[test]
fn netlink_rules_are_the_rules_nft_makes() -> Result<()> {
    for (i, make) in batches()?.into_iter().enumerate() {
        let by_nft = NetNs::new("nftprog")?;
        let by_netlink = NetNs::new("nftnl")?;
        // The batches are rebuilt for each use: applying consumes them.
        let again = || -> Result<Batch<'static>> { Ok(batches()?.swap_remove(i)) };
        let (b1, b2) = (make, again()?);
        netns::run_in(&by_nft.path(), move || Nft::locate().apply_with_program(b1))?
            .with_context(|| format!("batch {i} through nft"))?;
        netns::run_in(&by_netlink.path(), move || Nft::locate().apply(b2))?
            .with_context(|| format!("batch {i} over netlink"))?;
        let (want, got) = (bytecode(&by_nft)?, bytecode(&by_netlink)?);
        ensure!(
            (want.contains("[ masq ]") || want.contains("[ nat dnat "))
                && want.contains("[ meta load nfproto => reg 1 ]"),
            "batch {i}: nft listed no bytecode:\n{want}"
        );
        ensure!(
            want == got,
            "batch {i}: bytecode differs\n--- nft:\n{want}\n--- netlink:\n{got}"
        );
        // Applying the same batch again changes nothing but adds the rules
        // a second time, as nft does: tables and chains are idempotent.
        let b3 = again()?;
        netns::run_in(&by_netlink.path(), move || Nft::locate().apply(b3))??;
        let listed = netns::run_in(&by_netlink.path(), move || {
            Nft::locate().list_rules(&rules::table())
        })??;
        let text = by_netlink.sh("nft list ruleset")?;
        for r in &listed.rules {
            if let Some(c) = &r.comment {
                ensure!(text.contains(c.as_str()), "comment {c:?} not in\n{text}");
            }
        }
    }
    Ok(())
}

#[test]
fn a_refused_batch_changes_nothing_and_names_the_culprit() -> Result<()> {
    let ns = NetNs::new("nftbad")?;
    let t = nft::TableRef::new(nft::NfFamily::INet, "berth-test");
    let mut b = nft::batch();
    b.add(t.table());
    b.add(t.chain("c"));
    b.add(t.rule("c", vec![nft::masquerade()], Some("x")));
    b.add_cmd(t.delete_rule("c", 4242));
    let e = netns::run_in(&ns.path(), move || Nft::locate().apply(b))?.unwrap_err();
    ensure!(e.is_not_found(), "{e}");
    ensure!(e.to_string().contains("4242"), "{e}");
    let text = ns.sh("nft list ruleset")?;
    ensure!(text.trim().is_empty(), "left behind:\n{text}");
    Ok(())
}
