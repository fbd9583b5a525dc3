//! berth's own chain — bridge + host-local + portmap + loopback — run from a
//! conflist the way a runtime runs it: by berth's CNI client, once with the
//! plugins as executables (berth installed under their names, as containerd
//! would exec them) and once in-process. Pod connectivity, a hostPort from
//! the node, and a DEL that leaves nothing.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use berth_cni::client::{Attachment, Client, NetworkConfig};
use berth_cni::netns::run_in;
use berth_integration::cni::BinDir;
use berth_integration::netns::NetNs;
use berth_integration::{testapp, wait_until};
use serde_json::json;

const GATEWAY: &str = "10.89.0.1";

fn chain(dir: &std::path::Path) -> Result<NetworkConfig> {
    let list = json!({
        "cniVersion": "1.1.0",
        "name": "berth-chain",
        "plugins": [
            {
                "type": "bridge",
                "bridge": "berth0",
                "isGateway": true,
                "ipMasq": true,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "dataDir": dir.join("ipam"),
                    "ranges": [[{"subnet": "10.89.0.0/24"}]],
                    "routes": [{"dst": "0.0.0.0/0"}]
                }
            },
            {"type": "portmap", "capabilities": {"portMappings": true}},
            {"type": "loopback"}
        ]
    });
    Ok(NetworkConfig::from_list_value(&list, "cni_chain test")?)
}

fn run_chain(in_process: bool) -> Result<()> {
    let node = NetNs::new("chainnode")?;
    let pod = NetNs::new("chainpod")?;
    pod.sh("ip link set lo down")?;
    let dir = tempfile::tempdir()?;
    let bin = BinDir::berth()?;
    let net = chain(dir.path())?;
    let mut client = Client::new(vec![bin.path().to_path_buf()], dir.path().join("cache"));
    if in_process {
        client = client.with_builtin(berth_cni::plugins::builtin);
    }
    let mut att = Attachment::new("chain-ctr", Some(&pod.path()), "eth0");
    att.capability_args = json!({
        "portMappings": [{"hostPort": 18089, "containerPort": 8080, "protocol": "tcp"}]
    })
    .as_object()
    .cloned()
    .unwrap_or_default();

    let (c, n, a) = (client.clone(), net.clone(), att.clone());
    let result = run_in(&node.path(), move || c.add(&n, &a))??;
    let ip = result
        .ips
        .first()
        .context("no IP in the result")?
        .address
        .addr()
        .to_string();
    ensure!(ip.starts_with("10.89.0."), "{result:?}");
    ensure!(pod.sh("ip link show lo")?.contains("UP"), "lo is not up");
    pod.sh(&format!("busybox ping -c1 -W2 {GATEWAY}"))?;

    // A server in the pod, reached through the hostPort on the node's
    // bridge address.
    let app = testapp::binary()?;
    let mut server = pod
        .command(app.to_str().context("path")?)
        .args(["serve", "--http", "8080"])
        .spawn()?;
    let got = wait_until(Duration::from_secs(10), "the hostPort answers", || {
        Ok(node
            .command("busybox")
            .args([
                "wget",
                "-q",
                "-O",
                "-",
                &format!("http://{GATEWAY}:18089/healthz"),
            ])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned()))
    });
    let _ = server.kill();
    let _ = server.wait();
    ensure!(got?.contains("ok"));

    let (c, n, a) = (client.clone(), net.clone(), att.clone());
    run_in(&node.path(), move || c.check(&n, &a))??;

    let (c, n, a) = (client, net, att);
    run_in(&node.path(), move || c.del(&n, &a))??;
    ensure!(!pod.try_sh("ip link show eth0"), "eth0 left in the pod");
    let veths = node.sh("ip -o link show type veth")?;
    ensure!(veths.trim().is_empty(), "veth left: {veths}");
    let rules = node.sh("nft list ruleset")?;
    ensure!(
        !rules.contains("chain-ctr") && !rules.contains(&ip),
        "rules left:\n{rules}"
    );
    let ipam: Vec<PathBuf> = std::fs::read_dir(dir.path().join("ipam/berth-chain"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.parse::<std::net::IpAddr>().is_ok())
        })
        .collect();
    ensure!(ipam.is_empty(), "addresses left: {ipam:?}");
    Ok(())
}

#[test]
fn berths_chain_as_executables() -> Result<()> {
    run_chain(false)
}

#[test]
fn berths_chain_in_process() -> Result<()> {
    run_chain(true)
}
