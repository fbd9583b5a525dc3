//! `berth node` pods on the pod network: `berth runtime` with berth's CNI
//! chain (bridge, host-local, portmap, loopback) in a "node" network
//! namespace that has an uplink address of its own. A static pod gets an IP
//! in the bridge's subnet, answers on the node's address at its hostPort,
//! and its two containers share an emptyDir (one writes the page, the other
//! serves it); removing the manifest frees the IP and leaves no portmap or
//! masquerade rule behind.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, ensure};
use berth_integration::LeakCheck;
use berth_integration::cri::{CriDaemon, Options};
use berth_integration::images;
use berth_integration::netns::NetNs;
use berth_integration::node::{Node, containers, sandboxes, wait_for};
use berth_integration::workdir::tempdir;
use berth_kubelet::cri_client::CriClient;
use berth_proto::v1;
use serde_json::json;

const IMAGE: &str = "example.com/test/busybox:1";
/// The CNI network's name: host-local keeps its leases in `<dataDir>/<name>/`.
const NETWORK: &str = "berth-kubelet-net";
const SUBNET: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 89, 7, 0), 24);
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 89, 7, 1);
/// The node's own address, on a veth pair inside its namespace.
const NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 7, 1);
const HOST_PORT: u16 = 18080;

fn conflist(ipam_dir: &Path) -> serde_json::Value {
    json!({
        "cniVersion": "1.0.0",
        "name": NETWORK,
        "plugins": [
            {
                "type": "bridge", "bridge": "kube0", "isGateway": true, "ipMasq": true,
                "ipam": {
                    "type": "host-local", "dataDir": ipam_dir,
                    "ranges": [[{"subnet": format!("{}/{}", SUBNET.0, SUBNET.1)}]],
                    "routes": [{"dst": "0.0.0.0/0"}]
                }
            },
            {"type": "portmap", "capabilities": {"portMappings": true}},
            {"type": "loopback"}
        ]
    })
}

/// A pod on the pod network: "writer" puts the page into the shared
/// emptyDir, "server" serves that dir (mounted read-only) on port 80,
/// published on the node's [`HOST_PORT`].
fn web_pod() -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: web
spec:
  restartPolicy: Always
  terminationGracePeriodSeconds: 2
  volumes:
  - name: pages
    emptyDir: {{}}
  containers:
  - name: writer
    image: {IMAGE}
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", "echo \"written by writer in $(hostname)\" > /pages/index.html; trap 'exit 0' TERM; sleep 1000 & wait $!"]
    volumeMounts:
    - {{name: pages, mountPath: /pages}}
  - name: server
    image: {IMAGE}
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", "until [ -s /www/index.html ]; do sleep 0.2; done; exec httpd -f -p 80 -h /www"]
    ports:
    - {{containerPort: 80, hostPort: {HOST_PORT}, protocol: TCP}}
    volumeMounts:
    - {{name: pages, mountPath: /www, readOnly: true}}
"#
    )
}

/// An HTTP/1.0 GET of `/` at `addr`, made from inside `netns` on a thread
/// of its own (the namespace switch stays on that thread); the response's
/// body.
fn http_get_in(netns: &Path, addr: SocketAddr) -> Result<String> {
    let netns = netns.to_path_buf();
    std::thread::spawn(move || -> Result<String> {
        let f = std::fs::File::open(&netns)?;
        nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)?;
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(b"GET / HTTP/1.0\r\nHost: node\r\n\r\n")?;
        let mut text = String::new();
        s.read_to_string(&mut text)?;
        let (head, body) = text
            .split_once("\r\n\r\n")
            .with_context(|| format!("not an HTTP response: {text:?}"))?;
        ensure!(
            head.starts_with("HTTP/1.") && head.contains(" 200 "),
            "{head}"
        );
        Ok(body.to_owned())
    })
    .join()
    .map_err(|_| anyhow!("the HTTP thread panicked"))?
}

fn in_subnet(ip: Ipv4Addr) -> bool {
    let mask = u32::MAX << (32 - SUBNET.1);
    u32::from(ip) & mask == u32::from(SUBNET.0)
}

#[test]
fn pod_network_host_port_and_shared_empty_dir() -> Result<()> {
    let check = LeakCheck::start();
    pod_network_scenario()?;
    // The daemon, its pods' processes, cgroups and mounts are gone.
    check.assert_clean(Duration::from_secs(20))
}

fn pod_network_scenario() -> Result<()> {
    // Dropped in reverse: the node, then the daemon (and its pods), then
    // the namespace.
    let netns = NetNs::new("knet")?;
    netns.sh(&format!(
        "ip link add uplink type veth peer name uplink-peer && \
         ip addr add {NODE_IP}/24 dev uplink && ip link set uplink up && ip link set uplink-peer up"
    ))?;
    let ipam = tempdir("ipam-")?;
    let d = CriDaemon::start(Options {
        netns: Some(netns.path()),
        conflist: Some(conflist(ipam.path())),
        ..Default::default()
    })?;
    d.import(&[(IMAGE, images::busybox()?)])?;
    let work = tempdir("node-")?;
    let manifests = work.path().join("manifests");
    std::fs::create_dir_all(&manifests)?;
    let log = work.path().join("node.log");
    let _node = Node::start(&manifests, &d.socket(), work.path(), &log)?;
    let leases: PathBuf = ipam.path().join(NETWORK);
    let ns_path = netns.path();
    let node_addr = SocketAddr::from((NODE_IP, HOST_PORT));

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let c = CriClient::connect(
            &format!("unix://{}", d.socket().display()),
            Duration::from_secs(10),
        )
        .await?
        .with_request_timeout(Duration::from_secs(30));

        std::fs::write(manifests.join("web.yaml"), web_pod())?;
        wait_for(
            "both web containers running",
            Duration::from_secs(60),
            &log,
            || async {
                let running = containers(&c, "web")
                    .await?
                    .iter()
                    .filter(|x| x.state == v1::ContainerState::ContainerRunning as i32)
                    .count();
                Ok(running == 2)
            },
        )
        .await?;

        let sandbox = sandboxes(&c, "web").await?;
        ensure!(sandbox.len() == 1, "sandboxes of web: {sandbox:?}");
        let status = c.pod_sandbox_status(&sandbox[0].id, false).await?.status;
        let ip: Ipv4Addr = status
            .network
            .as_ref()
            .context("the sandbox status has no network")?
            .ip
            .parse()
            .with_context(|| format!("the pod IP in {status:?}"))?;
        ensure!(
            in_subnet(ip) && ip != GATEWAY,
            "pod IP {ip} is not a pod address of {}/{}",
            SUBNET.0,
            SUBNET.1
        );
        ensure!(
            leases.join(ip.to_string()).is_file(),
            "host-local has no lease for {ip} in {}",
            leases.display()
        );

        // The page the writer container put into the emptyDir, served by the
        // other container, through the node's address and the hostPort.
        let mut last = String::new();
        wait_for(
            "the page on the node's hostPort",
            Duration::from_secs(30),
            &log,
            || {
                let r = http_get_in(&ns_path, node_addr);
                let got = match &r {
                    Ok(body) => body.contains("written by writer in web-testnode"),
                    Err(_) => false,
                };
                last = format!("{r:?}");
                async move { Ok(got) }
            },
        )
        .await
        .with_context(|| format!("last answer: {last}"))?;
        let rules = netns.sh("nft list ruleset")?;
        ensure!(
            rules.contains(&format!("dport {HOST_PORT}")) && rules.contains(&ip.to_string()),
            "no portmap rule for {ip}:{HOST_PORT}:\n{rules}"
        );

        std::fs::remove_file(manifests.join("web.yaml"))?;
        wait_for(
            "the web pod removed",
            Duration::from_secs(30),
            &log,
            || async {
                Ok(containers(&c, "web").await?.is_empty()
                    && sandboxes(&c, "web").await?.is_empty())
            },
        )
        .await?;
        ensure!(
            !leases.join(ip.to_string()).exists(),
            "{ip} is still leased after the pod went"
        );
        let rules = netns.sh("nft list ruleset")?;
        ensure!(
            !rules.contains(&ip.to_string()) && !rules.contains(&HOST_PORT.to_string()),
            "rules for the removed pod are left:\n{rules}"
        );
        ensure!(
            http_get_in(&ns_path, node_addr).is_err(),
            "the hostPort still answers after the pod went"
        );
        Ok(())
    })
    .with_context(|| format!("berth runtime's log:\n{}", d.log()))
}
