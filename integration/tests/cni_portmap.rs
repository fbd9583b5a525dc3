//! The `portmap` CNI plugin, as root, in network namespaces made here (the
//! root namespace is never changed).
//!
//! Topology: a "node" netns with a Linux bridge `br0` (10.22.0.1/24,
//! fd22::1/64) and a link `ext0` (192.168.50.1/24, fd50::1/64) to an
//! "external host" netns (192.168.50.2, fd50::2); pods are netns on veths
//! in the bridge (10.22.0.N, fd22::N; hairpin on, as bridge's hairpinMode
//! does), each running `testapp serve` (HTTP on 80, whose `/remote` names
//! the peer the pod sees, and UDP echo on 80). The plugin runs in-process
//! through `protocol::run` inside the node netns, and as an executable
//! chained after Debian's reference bridge + host-local from a conflist.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command as Cmd;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail, ensure};
use berth_cni::netns;
use berth_cni::plugins::portmap::Portmap;
use berth_cni::protocol::{self, Command, Invocation, Outcome};
use berth_cni::types::code::CHECK_MISMATCH;
use berth_cni::types::{CniError, code};
use berth_integration::exec::{Spawned, spawn_daemon, wait_until};
use berth_integration::netns::NetNs;
use berth_integration::testapp;
use berth_integration::workdir::{base_dir, tempdir, unique_id};
use serde_json::{Value, json};

const NODE_EXT4: &str = "192.168.50.1";
const NODE_EXT6: &str = "fd50::1";
const NODE_BR4: &str = "10.22.0.1";

/// The node and its external host.
struct Node {
    ns: NetNs,
    ext: NetNs,
}

fn node() -> Result<Node> {
    let ns = NetNs::new("pmnode")?;
    ns.sh(
        "ip link add br0 type bridge && ip addr add 10.22.0.1/24 dev br0 \
         && ip addr add fd22::1/64 dev br0 nodad && ip link set br0 up \
         && echo 1 > /proc/sys/net/ipv4/ip_forward && echo 1 > /proc/sys/net/ipv6/conf/all/forwarding",
    )?;
    let ext = NetNs::new("pmext")?;
    ns.link_to(&ext, "ext0", "192.168.50.1/24", "eth0", "192.168.50.2/24")?;
    ns.sh("ip addr add fd50::1/64 dev ext0 nodad")?;
    ext.sh("ip addr add fd50::2/64 dev eth0 nodad")?;
    Ok(Node { ns, ext })
}

/// A pod on the node's bridge, serving.
struct Pod {
    ns: NetNs,
    n: u8,
    _server: Spawned,
}

impl Pod {
    fn ip4(&self) -> String {
        format!("10.22.0.{}", self.n)
    }
    fn ip6(&self) -> String {
        format!("fd22::{}", self.n)
    }

    /// prevResult as the bridge plugin gives it.
    fn prev_result(&self) -> Value {
        json!({
            "cniVersion": "1.0.0",
            "interfaces": [
                {"name": "br0"},
                {"name": format!("vp{}", self.n)},
                {"name": "eth0", "sandbox": self.ns.path()},
            ],
            "ips": [
                {"address": format!("{}/24", self.ip4()), "gateway": NODE_BR4, "interface": 2},
                {"address": format!("{}/64", self.ip6()), "gateway": "fd22::1", "interface": 2},
            ],
        })
    }
}

/// Starts `testapp serve` (HTTP and UDP on 80, both families) in `ns`.
fn serve(ns: &NetNs) -> Result<Spawned> {
    let mut cmd = ns.command(testapp::binary()?.to_str().context("testapp path")?);
    cmd.args(["serve", "--bind", "::", "--http", "80", "--udp", "80"]);
    let server = spawn_daemon(cmd, &base_dir().join(unique_id("pm-serve")))?;
    wait_until(Duration::from_secs(10), "testapp to listen", || {
        let out = server.stdout_so_far();
        Ok((out.contains("listening http") && out.contains("listening udp")).then_some(()))
    })?;
    Ok(server)
}

fn pod(node: &Node, n: u8) -> Result<Pod> {
    let ns = NetNs::new("pmpod")?;
    node.ns.sh(&format!(
        "ip link add vp{n} type veth peer name eth0 netns {pod} && ip link set vp{n} master br0 \
         && ip link set vp{n} type bridge_slave hairpin on && ip link set vp{n} up",
        pod = ns.name()
    ))?;
    ns.sh(&format!(
        "ip addr add 10.22.0.{n}/24 dev eth0 && ip addr add fd22::{n}/64 dev eth0 nodad \
         && ip link set eth0 up && ip route add default via 10.22.0.1 \
         && ip -6 route add default via fd22::1"
    ))?;
    let server = serve(&ns)?;
    settle(&[&node.ns, &node.ext, &ns])?;
    Ok(Pod {
        ns,
        n,
        _server: server,
    })
}

fn conf(version: &str, name: &str, mappings: Value, prev: Option<Value>, extra: Value) -> Value {
    let mut c = json!({
        "cniVersion": version,
        "name": name,
        "type": "portmap",
        "runtimeConfig": {"portMappings": mappings},
    });
    if let Some(p) = prev {
        c["prevResult"] = p;
    }
    if let (Some(o), Some(e)) = (c.as_object_mut(), extra.as_object()) {
        o.extend(e.clone());
    }
    c
}

fn invocation(command: Command, id: &str, netns: Option<&Path>, conf: &Value) -> Invocation {
    Invocation {
        command,
        container_id: id.to_string(),
        netns: netns.map(Path::to_path_buf),
        ifname: "eth0".into(),
        args: Vec::new(),
        path: Vec::new(),
        stdin: serde_json::to_vec(conf).unwrap_or_default(),
    }
}

/// Runs our portmap in-process inside the node netns.
fn portmap(node: &NetNs, inv: Invocation) -> Result<Outcome> {
    Ok(netns::run_in(&node.path(), move || {
        protocol::run(&Portmap::default(), &inv)
    })?)
}

/// The outcome as a result (or nothing), or the plugin's error.
fn outcome(o: Outcome) -> Result<Result<Option<Value>, CniError>> {
    if o.exit_code == 0 {
        if o.stdout.is_empty() {
            return Ok(Ok(None));
        }
        return Ok(Ok(Some(serde_json::from_slice(&o.stdout)?)));
    }
    Ok(Err(serde_json::from_slice(&o.stdout).with_context(
        || format!("error output {}", String::from_utf8_lossy(&o.stdout)),
    )?))
}

fn ok(node: &NetNs, inv: Invocation) -> Result<Option<Value>> {
    let cmd = inv.command;
    outcome(portmap(node, inv)?)?.map_err(|e| anyhow!("{cmd:?} failed: {e}"))
}

fn err(node: &NetNs, inv: Invocation) -> Result<CniError> {
    match outcome(portmap(node, inv)?)? {
        Ok(v) => bail!("expected an error, got {v:?}"),
        Err(e) => Ok(e),
    }
}

/// Our table's rules as `nft list` prints them (empty when there is no table).
fn rules(node: &NetNs) -> String {
    node.sh("nft list table inet berth-portmap 2>/dev/null || true")
        .unwrap_or_default()
}

fn comment_count(node: &NetNs) -> usize {
    rules(node).matches("comment \"").count()
}

/// GET /remote through `addr` from inside `ns`: the peer the pod saw.
fn remote(ns: &NetNs, addr: SocketAddr) -> Result<IpAddr> {
    netns::run_in(&ns.path(), move || -> Result<IpAddr> {
        let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
            .with_context(|| format!("connecting to {addr}"))?;
        c.set_read_timeout(Some(Duration::from_secs(5)))?;
        c.write_all(b"GET /remote HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
        let mut resp = String::new();
        c.read_to_string(&mut resp)?;
        let body = resp
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.trim())
            .with_context(|| format!("bad response {resp:?}"))?;
        let peer: SocketAddr = body.parse().with_context(|| format!("peer {body:?}"))?;
        Ok(peer.ip().to_canonical())
    })?
}

/// Sends a datagram to `addr` from inside `ns` and returns the echo.
fn udp_echo(ns: &NetNs, addr: SocketAddr, timeout: Duration) -> Result<String> {
    netns::run_in(&ns.path(), move || -> Result<String> {
        let bind: SocketAddr = if addr.is_ipv4() {
            "0.0.0.0:0".parse()?
        } else {
            "[::]:0".parse()?
        };
        let s = UdpSocket::bind(bind)?;
        s.set_read_timeout(Some(timeout))?;
        s.send_to(b"ping", addr)?;
        let mut buf = [0u8; 64];
        let (n, _) = s
            .recv_from(&mut buf)
            .with_context(|| format!("no echo from {addr}"))?;
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    })?
}

fn unreachable(ns: &NetNs, addr: SocketAddr) -> bool {
    netns::run_in(&ns.path(), move || {
        TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_err()
    })
    .unwrap_or(false)
}

/// Waits until duplicate address detection is over in `nss`: until then
/// IPv6 forwarding toward the new links drops the first packets.
fn settle(nss: &[&NetNs]) -> Result<()> {
    wait_until(Duration::from_secs(5), "IPv6 addresses to settle", || {
        for ns in nss {
            if ns.sh("ip -6 addr")?.contains("tentative") {
                return Ok(None);
            }
        }
        Ok(Some(()))
    })
}

fn sa(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().expect("test address"), port)
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

#[test]
fn hostports_from_everywhere_then_del() -> Result<()> {
    let node = node()?;
    let pod = pod(&node, 2)?;
    let id = unique_id("pm");
    let mappings = json!([
        {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
        {"hostPort": 8081, "containerPort": 80, "protocol": "udp"},
    ]);
    let add = conf(
        "1.0.0",
        "pmnet",
        mappings.clone(),
        Some(pod.prev_result()),
        json!({}),
    );
    let result = ok(
        &node.ns,
        invocation(Command::Add, &id, Some(&pod.ns.path()), &add),
    )?
    .context("ADD printed no result")?;
    // A chained plugin passes prevResult on.
    assert_eq!(result["ips"][0]["address"], format!("{}/24", pod.ip4()));
    assert_eq!(
        result["interfaces"][2]["sandbox"],
        pod.ns.path().display().to_string()
    );

    // From another host: the pod sees the real client.
    assert_eq!(remote(&node.ext, sa(NODE_EXT4, 8080))?, ip("192.168.50.2"));
    assert_eq!(remote(&node.ext, sa(NODE_EXT6, 8080))?, ip("fd50::2"));
    // From the node itself, to its own addresses.
    assert_eq!(remote(&node.ns, sa(NODE_EXT4, 8080))?, ip(NODE_EXT4));
    assert_eq!(remote(&node.ns, sa(NODE_BR4, 8080))?, ip(NODE_BR4));
    assert_eq!(remote(&node.ns, sa(NODE_EXT6, 8080))?, ip(NODE_EXT6));
    // From localhost: masqueraded to the bridge's address.
    assert_eq!(remote(&node.ns, sa("127.0.0.1", 8080))?, ip(NODE_BR4));
    assert_eq!(
        node.ns
            .sh("cat /proc/sys/net/ipv4/conf/br0/route_localnet")?
            .trim(),
        "1"
    );
    // Hairpin: the pod through the node's address, masqueraded so the
    // reply goes back through the node.
    assert_eq!(remote(&pod.ns, sa(NODE_EXT4, 8080))?, ip(NODE_BR4));
    assert_eq!(remote(&pod.ns, sa(NODE_EXT6, 8080))?, ip("fd22::1"));
    // UDP, both families, from outside and from localhost.
    let t = Duration::from_secs(2);
    assert_eq!(udp_echo(&node.ext, sa(NODE_EXT4, 8081), t)?, "ping");
    assert_eq!(udp_echo(&node.ext, sa(NODE_EXT6, 8081), t)?, "ping");
    assert_eq!(udp_echo(&node.ns, sa("127.0.0.1", 8081), t)?, "ping");
    assert_eq!(udp_echo(&pod.ns, sa(NODE_EXT4, 8081), t)?, "ping");

    // CHECK passes; ADD again replaces rather than duplicates.
    let check = conf(
        "1.0.0",
        "pmnet",
        mappings.clone(),
        Some(result.clone()),
        json!({}),
    );
    ok(
        &node.ns,
        invocation(Command::Check, &id, Some(&pod.ns.path()), &check),
    )?;
    let before = comment_count(&node.ns);
    assert_eq!(before, 12, "{}", rules(&node.ns));
    ok(
        &node.ns,
        invocation(Command::Add, &id, Some(&pod.ns.path()), &add),
    )?;
    assert_eq!(comment_count(&node.ns), before, "{}", rules(&node.ns));

    // DEL removes everything of this container; again is fine, and so is
    // a DEL with no prevResult and no netns.
    let del = conf(
        "1.0.0",
        "pmnet",
        mappings.clone(),
        Some(result.clone()),
        json!({}),
    );
    ok(
        &node.ns,
        invocation(Command::Del, &id, Some(&pod.ns.path()), &del),
    )?;
    assert_eq!(comment_count(&node.ns), 0, "{}", rules(&node.ns));
    assert!(unreachable(&node.ext, sa(NODE_EXT4, 8080)));
    assert!(udp_echo(&node.ext, sa(NODE_EXT4, 8081), Duration::from_millis(300)).is_err());
    ok(
        &node.ns,
        invocation(Command::Del, &id, Some(&pod.ns.path()), &del),
    )?;
    let bare = conf("1.0.0", "pmnet", json!([]), None, json!({}));
    ok(&node.ns, invocation(Command::Del, &id, None, &bare))?;
    // CHECK now sees the rules gone.
    let e = err(
        &node.ns,
        invocation(Command::Check, &id, Some(&pod.ns.path()), &check),
    )?;
    assert_eq!(e.code, CHECK_MISMATCH, "{e}");
    Ok(())
}

#[test]
fn a_udp_flow_seen_before_add_reaches_the_pod() -> Result<()> {
    let node = node()?;
    let pod = pod(&node, 2)?;
    // With our NAT chains in place (another container's mapping), the
    // first packet gets a conntrack entry that says "no NAT".
    let other = conf(
        "1.0.0",
        "pmnet",
        json!([{"hostPort": 8083, "containerPort": 80, "protocol": "udp"}]),
        Some(pod.prev_result()),
        json!({}),
    );
    ok(
        &node.ns,
        invocation(
            Command::Add,
            &unique_id("pmo"),
            Some(&pod.ns.path()),
            &other,
        ),
    )?;
    // One client socket throughout, as a resolver retrying from a fixed port.
    let sock = netns::run_in(&node.ext.path(), || UdpSocket::bind("0.0.0.0:0"))??;
    sock.set_read_timeout(Some(Duration::from_millis(300)))?;
    let target = sa(NODE_EXT4, 8082);
    let mut buf = [0u8; 64];
    sock.send_to(b"early", target)?;
    assert!(sock.recv_from(&mut buf).is_err(), "nothing serves 8082 yet");

    let id = unique_id("pmu");
    let add = conf(
        "1.0.0",
        "pmnet",
        json!([{"hostPort": 8082, "containerPort": 80, "protocol": "udp"}]),
        Some(pod.prev_result()),
        json!({}),
    );
    ok(
        &node.ns,
        invocation(Command::Add, &id, Some(&pod.ns.path()), &add),
    )?;
    sock.set_read_timeout(Some(Duration::from_secs(2)))?;
    sock.send_to(b"later", target)?;
    let (n, _) = sock
        .recv_from(&mut buf)
        .context("the flow that predates the mapping still misses the pod")?;
    assert_eq!(&buf[..n], b"later");
    Ok(())
}

#[test]
fn concurrent_adds_and_dels_keep_every_rule_apart() -> Result<()> {
    let node = node()?;
    let n = 16u16;
    let attach = |i: u16| {
        let id = format!("pmconc-{}-{i}", std::process::id());
        let prev = json!({
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "eth0", "sandbox": "/run/netns/none"}],
            "ips": [{"address": format!("10.22.0.{}/24", 10 + i), "interface": 0}],
        });
        let c = conf(
            "1.1.0",
            "pmnet",
            json!([{"hostPort": 9000 + i, "containerPort": 80}]),
            Some(prev),
            json!({}),
        );
        (id, c)
    };
    let all = |command: Command| -> Result<()> {
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..n)
                .map(|i| {
                    let node = &node;
                    s.spawn(move || {
                        let (id, c) = attach(i);
                        ok(
                            &node.ns,
                            invocation(command, &id, Some(Path::new("/run/netns/none")), &c),
                        )
                    })
                })
                .collect();
            for h in handles {
                h.join().map_err(|_| anyhow!("a thread panicked"))??;
            }
            Ok(())
        })
    };
    all(Command::Add)?;
    // Per attachment: hairpin, localhost, dnat, masquerade.
    assert_eq!(
        comment_count(&node.ns),
        4 * usize::from(n),
        "{}",
        rules(&node.ns)
    );
    all(Command::Check)?;
    let listing = rules(&node.ns);
    assert_eq!(listing.matches("jump hostports").count(), 2, "{listing}");
    all(Command::Del)?;
    assert_eq!(comment_count(&node.ns), 0, "{}", rules(&node.ns));
    Ok(())
}

#[test]
fn route_localnet_does_not_open_the_nodes_localhost_to_pods() -> Result<()> {
    let node = node()?;
    let pod = pod(&node, 2)?;
    let id = unique_id("pml");
    let add = conf(
        "1.0.0",
        "pmnet",
        json!([{"hostPort": 8080, "containerPort": 80}]),
        Some(pod.prev_result()),
        json!({}),
    );
    ok(
        &node.ns,
        invocation(Command::Add, &id, Some(&pod.ns.path()), &add),
    )?;
    // A node service on localhost only.
    let secret = netns::run_in(&node.ns.path(), || UdpSocket::bind("127.0.0.1:7777"))??;
    secret.set_read_timeout(Some(Duration::from_millis(500)))?;
    // A hostile pod routes 127.0.0.1 to the node (br0 accepts such packets
    // now that route_localnet is on there).
    pod.ns
        .sh("ip route del local 127.0.0.1 dev lo table local \
         && ip route del local 127.0.0.0/8 dev lo table local \
         && echo 1 > /proc/sys/net/ipv4/conf/eth0/route_localnet \
         && ip route add 127.0.0.1/32 via 10.22.0.1 dev eth0")?;
    let send = || -> Result<()> {
        netns::run_in(&pod.ns.path(), || -> Result<()> {
            UdpSocket::bind("10.22.0.2:0")?.send_to(b"steal", "127.0.0.1:7777")?;
            Ok(())
        })?
    };
    let mut buf = [0u8; 16];
    send()?;
    assert!(
        secret.recv_from(&mut buf).is_err(),
        "a pod reached the node's localhost"
    );
    // Without the guard the same packet gets in: the test can tell.
    node.ns.sh("nft flush chain inet berth-portmap input")?;
    send()?;
    assert!(
        secret.recv_from(&mut buf).is_ok(),
        "the test setup does not route to the node"
    );
    Ok(())
}

#[test]
fn del_removes_only_its_own_rules() -> Result<()> {
    let node = node()?;
    let a = pod(&node, 2)?;
    let b = pod(&node, 3)?;
    let (ida, idb) = (unique_id("pma"), unique_id("pmb"));
    let add = |p: &Pod, port: u16| {
        conf(
            "1.0.0",
            "pmnet",
            json!([{"hostPort": port, "containerPort": 80, "protocol": "tcp"}]),
            Some(p.prev_result()),
            json!({}),
        )
    };
    ok(
        &node.ns,
        invocation(Command::Add, &ida, Some(&a.ns.path()), &add(&a, 8080)),
    )?;
    ok(
        &node.ns,
        invocation(Command::Add, &idb, Some(&b.ns.path()), &add(&b, 8090)),
    )?;
    assert_eq!(remote(&node.ext, sa(NODE_EXT4, 8080))?, ip("192.168.50.2"));
    assert_eq!(remote(&node.ext, sa(NODE_EXT4, 8090))?, ip("192.168.50.2"));
    let both = comment_count(&node.ns);

    ok(
        &node.ns,
        invocation(Command::Del, &ida, Some(&a.ns.path()), &add(&a, 8080)),
    )?;
    assert!(unreachable(&node.ext, sa(NODE_EXT4, 8080)));
    assert_eq!(remote(&node.ext, sa(NODE_EXT4, 8090))?, ip("192.168.50.2"));
    assert_eq!(remote(&node.ext, sa(NODE_EXT6, 8090))?, ip("fd50::2"));
    assert_eq!(remote(&b.ns, sa(NODE_EXT4, 8090))?, ip(NODE_BR4));
    assert_eq!(comment_count(&node.ns), both / 2, "{}", rules(&node.ns));
    let check = add(&b, 8090);
    ok(
        &node.ns,
        invocation(Command::Check, &idb, Some(&b.ns.path()), &check),
    )?;

    // Same container ID on another network: a different attachment.
    let other_net = conf(
        "1.0.0",
        "othernet",
        json!([]),
        Some(b.prev_result()),
        json!({}),
    );
    ok(
        &node.ns,
        invocation(Command::Del, &idb, Some(&b.ns.path()), &other_net),
    )?;
    assert_eq!(remote(&node.ext, sa(NODE_EXT4, 8090))?, ip("192.168.50.2"));
    Ok(())
}

#[test]
fn host_ip_masq_all_and_no_snat() -> Result<()> {
    let node = node()?;
    let a = pod(&node, 2)?;
    let b = pod(&node, 3)?;
    // hostIP: only that address forwards.
    let id = unique_id("pmh");
    let add = conf(
        "1.0.0",
        "pmnet",
        json!([{"hostPort": 8080, "containerPort": 80, "protocol": "TCP", "hostIP": NODE_EXT4}]),
        Some(a.prev_result()),
        json!({}),
    );
    ok(
        &node.ns,
        invocation(Command::Add, &id, Some(&a.ns.path()), &add),
    )?;
    assert_eq!(remote(&node.ext, sa(NODE_EXT4, 8080))?, ip("192.168.50.2"));
    assert!(unreachable(&node.ext, sa(NODE_EXT6, 8080)));
    assert!(unreachable(&node.ns, sa(NODE_BR4, 8080)));

    // masqAll: the pod sees the node, even from another host.
    let idm = unique_id("pmm");
    let masq = conf(
        "1.0.0",
        "pmnet",
        json!([{"hostPort": 8090, "containerPort": 80}]),
        Some(b.prev_result()),
        json!({"masqAll": true, "markMasqBit": 5}),
    );
    ok(
        &node.ns,
        invocation(Command::Add, &idm, Some(&b.ns.path()), &masq),
    )?;
    assert_eq!(remote(&node.ext, sa(NODE_EXT4, 8090))?, ip(NODE_BR4));
    assert_eq!(remote(&node.ext, sa(NODE_EXT6, 8090))?, ip("fd22::1"));
    assert!(
        rules(&node.ns).contains("0x00000020"),
        "{}",
        rules(&node.ns)
    );
    ok(
        &node.ns,
        invocation(Command::Check, &idm, Some(&b.ns.path()), &masq),
    )?;
    ok(
        &node.ns,
        invocation(Command::Del, &idm, Some(&b.ns.path()), &masq),
    )?;

    // snat false: no masquerade, so hairpin replies bypass the node and
    // fail, while other hosts still get through.
    let nosnat = conf(
        "1.0.0",
        "pmnet",
        json!([{"hostPort": 8091, "containerPort": 80}]),
        Some(b.prev_result()),
        json!({"snat": false}),
    );
    ok(
        &node.ns,
        invocation(Command::Add, &idm, Some(&b.ns.path()), &nosnat),
    )?;
    assert_eq!(remote(&node.ext, sa(NODE_EXT4, 8091))?, ip("192.168.50.2"));
    assert!(unreachable(&b.ns, sa(NODE_EXT4, 8091)));
    let listing = rules(&node.ns);
    let of_b = |l: &&str| l.contains("10.22.0.3") || l.contains("fd22::3");
    assert!(
        !listing
            .lines()
            .filter(of_b)
            .any(|l| l.contains("masquerade")),
        "{listing}"
    );
    ok(
        &node.ns,
        invocation(Command::Check, &idm, Some(&b.ns.path()), &nosnat),
    )?;
    Ok(())
}

#[test]
fn check_notices_a_rule_removed_behind_its_back() -> Result<()> {
    let node = node()?;
    let a = pod(&node, 2)?;
    let id = unique_id("pmc");
    let add = conf(
        "1.1.0",
        "pmnet",
        json!([{"hostPort": 8080, "containerPort": 80}]),
        Some(a.prev_result()),
        json!({}),
    );
    ok(
        &node.ns,
        invocation(Command::Add, &id, Some(&a.ns.path()), &add),
    )?;
    ok(
        &node.ns,
        invocation(Command::Check, &id, Some(&a.ns.path()), &add),
    )?;
    let listing = node
        .ns
        .sh("nft -a list chain inet berth-portmap hostports")?;
    let handle = listing
        .lines()
        .find(|l| l.contains(" dnat tcp "))
        .and_then(|l| l.rsplit("# handle ").next())
        .context("no dnat rule")?
        .trim()
        .to_string();
    node.ns.sh(&format!(
        "nft delete rule inet berth-portmap hostports handle {handle}"
    ))?;
    let e = err(
        &node.ns,
        invocation(Command::Check, &id, Some(&a.ns.path()), &add),
    )?;
    assert_eq!(e.code, CHECK_MISMATCH);
    assert!(e.details.contains("dnat tcp *:8080 10.22.0.2:80"), "{e}");

    node.ns
        .sh("echo 0 > /proc/sys/net/ipv4/conf/br0/route_localnet")?;
    ok(
        &node.ns,
        invocation(Command::Add, &id, Some(&a.ns.path()), &add),
    )?;
    ok(
        &node.ns,
        invocation(Command::Check, &id, Some(&a.ns.path()), &add),
    )?;
    assert_eq!(
        node.ns
            .sh("cat /proc/sys/net/ipv4/conf/br0/route_localnet")?
            .trim(),
        "1"
    );
    Ok(())
}

#[test]
fn gc_keeps_valid_attachments_and_status_works() -> Result<()> {
    let node = node()?;
    let a = pod(&node, 2)?;
    let b = pod(&node, 3)?;
    let (ida, idb) = (unique_id("pmga"), unique_id("pmgb"));
    for (p, id, port) in [(&a, &ida, 8080), (&b, &idb, 8090)] {
        let add = conf(
            "1.1.0",
            "pmnet",
            json!([{"hostPort": port, "containerPort": 80}]),
            Some(p.prev_result()),
            json!({}),
        );
        ok(
            &node.ns,
            invocation(Command::Add, id, Some(&p.ns.path()), &add),
        )?;
    }
    // A GC of another network touches nothing of this one.
    let gc_other = json!({"cniVersion": "1.1.0", "name": "othernet", "type": "portmap",
        "cni.dev/valid-attachments": []});
    ok(&node.ns, invocation(Command::Gc, "", None, &gc_other))?;
    assert_eq!(remote(&node.ext, sa(NODE_EXT4, 8080))?, ip("192.168.50.2"));

    let gc = json!({"cniVersion": "1.1.0", "name": "pmnet", "type": "portmap",
        "cni.dev/valid-attachments": [{"containerID": idb, "ifname": "eth0"}]});
    ok(&node.ns, invocation(Command::Gc, "", None, &gc))?;
    assert!(unreachable(&node.ext, sa(NODE_EXT4, 8080)));
    assert_eq!(remote(&node.ext, sa(NODE_EXT4, 8090))?, ip("192.168.50.2"));
    assert!(
        !rules(&node.ns).contains("10.22.0.2"),
        "{}",
        rules(&node.ns)
    );

    let e = err(
        &node.ns,
        invocation(
            Command::Gc,
            "",
            None,
            &json!({"cniVersion": "1.1.0", "name": "pmnet", "type": "portmap"}),
        ),
    )?;
    assert_eq!(e.code, code::INVALID_CONFIG);

    let status = json!({"cniVersion": "1.1.0", "name": "pmnet", "type": "portmap"});
    ok(&node.ns, invocation(Command::Status, "", None, &status))?;
    Ok(())
}

#[test]
fn bad_input_is_refused_and_configures_nothing() -> Result<()> {
    let node = node()?;
    let pod_ns = NetNs::new("pmbad")?;
    let prev = json!({
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "eth0", "sandbox": pod_ns.path()}],
        "ips": [{"address": "10.22.0.9/24", "interface": 0}],
    });
    let id = unique_id("pmbad");
    for (mappings, prev, needle) in [
        (
            json!([{"hostPort": 8080, "containerPort": 80, "protocol": "icmp"}]),
            Some(prev.clone()),
            "icmp",
        ),
        (
            json!([{"hostPort": 0, "containerPort": 80}]),
            Some(prev.clone()),
            "hostPort 0",
        ),
        (
            json!([{"hostPort": 8080, "containerPort": 70000}]),
            Some(prev.clone()),
            "containerPort 70000",
        ),
        (
            json!([{"hostPort": 8080, "containerPort": 80, "hostIP": "fd00::1"}]),
            Some(prev.clone()),
            "IPv6",
        ),
        (
            json!([{"hostPort": 8080, "containerPort": 80}]),
            None,
            "prevResult",
        ),
    ] {
        let c = conf("1.0.0", "pmnet", mappings, prev, json!({}));
        let e = err(
            &node.ns,
            invocation(Command::Add, &id, Some(&pod_ns.path()), &c),
        )?;
        assert_eq!(e.code, code::INVALID_CONFIG, "{e}");
        assert!(e.msg.contains(needle), "{e} lacks {needle}");
        assert_eq!(rules(&node.ns), "", "nothing may be configured");
    }
    // Even without mappings, ADD needs prevResult.
    let c = conf("1.0.0", "pmnet", json!([]), None, json!({}));
    let e = err(
        &node.ns,
        invocation(Command::Add, &id, Some(&pod_ns.path()), &c),
    )?;
    assert_eq!(e.code, code::INVALID_CONFIG);
    // No table at all: DEL succeeds.
    ok(&node.ns, invocation(Command::Del, &id, None, &c))?;
    // Unsupported options.
    let c = conf(
        "1.0.0",
        "pmnet",
        json!([{"hostPort": 8080, "containerPort": 80}]),
        Some(prev),
        json!({"conditionsV4": ["-s", "1.2.3.4"]}),
    );
    let e = err(
        &node.ns,
        invocation(Command::Add, &id, Some(&pod_ns.path()), &c),
    )?;
    assert_eq!(e.code, code::UNSUPPORTED_FIELD);
    assert_eq!(rules(&node.ns), "");
    Ok(())
}

/// A conflist run the way containerd runs it: each plugin exec'd from
/// CNI_PATH with the previous plugin's result as prevResult, the
/// portMappings capability passed to the plugins that declare it, DEL in
/// reverse order with the cached result.
struct Chain {
    list: Value,
    path: Vec<PathBuf>,
}

impl Chain {
    fn invoke(
        &self,
        node: &NetNs,
        command: Command,
        id: &str,
        netns: &Path,
        mappings: &Value,
        cached: Option<&Value>,
    ) -> Result<Option<Value>> {
        let plugins: Vec<Value> = self.list["plugins"].as_array().cloned().unwrap_or_default();
        let order: Vec<Value> = if command == Command::Del {
            plugins.into_iter().rev().collect()
        } else {
            plugins
        };
        let mut prev = cached.cloned();
        for p in order {
            let mut c = p.clone();
            c["name"] = self.list["name"].clone();
            c["cniVersion"] = self.list["cniVersion"].clone();
            if p["capabilities"]["portMappings"] == true {
                c["runtimeConfig"] = json!({"portMappings": mappings});
            }
            if let Some(prev) = &prev {
                c["prevResult"] = prev.clone();
            }
            let exe = berth_cni::invoke::find(p["type"].as_str().unwrap_or(""), &self.path)?;
            let inv = Invocation {
                command,
                container_id: id.to_string(),
                netns: Some(netns.to_path_buf()),
                ifname: "eth0".into(),
                args: Vec::new(),
                path: self.path.clone(),
                stdin: Vec::new(),
            };
            let out = netns::run_in(&node.path(), move || berth_cni::invoke::run(&exe, &inv, &c))?
                .map_err(|e| anyhow!("{} {command:?}: {e}", p["type"]))?;
            if command == Command::Add {
                prev = out;
            }
        }
        Ok(prev)
    }
}

#[test]
fn chained_after_the_reference_bridge_from_a_conflist() -> Result<()> {
    let node = node()?;
    let pod_ns = NetNs::new("pmref")?;
    let dir = tempdir("pm-chain-")?;
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin)?;
    // berth as `portmap` only: bridge and host-local are Debian's.
    let berth = berth_integration::cni::BinDir::berth()?;
    std::os::unix::fs::symlink(
        std::fs::read_link(berth.plugin("portmap"))?,
        bin.join("portmap"),
    )?;
    let name = unique_id("pmref");
    let chain = Chain {
        list: json!({
            "cniVersion": "1.0.0",
            "name": name,
            "plugins": [
                {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false,
                 "hairpinMode": true,
                 "ipam": {"type": "host-local", "dataDir": dir.path().join("ipam"),
                          "ranges": [[{"subnet": "10.23.0.0/24"}], [{"subnet": "fd23::/64"}]],
                          "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]}},
                {"type": "portmap", "capabilities": {"portMappings": true}},
            ],
        }),
        path: vec![bin.clone(), PathBuf::from("/usr/lib/cni")],
    };
    let id = unique_id("pmref");
    let mappings = json!([
        {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
        {"hostPort": 8081, "containerPort": 80, "protocol": "udp"},
    ]);
    let result = chain
        .invoke(&node.ns, Command::Add, &id, &pod_ns.path(), &mappings, None)?
        .context("no result")?;
    let pod_ip: IpAddr = result["ips"][0]["address"]
        .as_str()
        .and_then(|a| a.split('/').next())
        .and_then(|a| a.parse().ok())
        .with_context(|| format!("no address in {result}"))?;
    let gateway: IpAddr = result["ips"][0]["gateway"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .with_context(|| format!("no gateway in {result}"))?;
    ensure!(pod_ip.is_ipv4(), "first address {pod_ip}");
    let _server = serve(&pod_ns)?;
    settle(&[&node.ns, &node.ext, &pod_ns])?;

    assert_eq!(remote(&node.ext, sa(NODE_EXT4, 8080))?, ip("192.168.50.2"));
    assert_eq!(remote(&node.ext, sa(NODE_EXT6, 8080))?, ip("fd50::2"));
    assert_eq!(remote(&node.ns, sa("127.0.0.1", 8080))?, gateway);
    assert_eq!(remote(&pod_ns, sa(NODE_EXT4, 8080))?, gateway);
    assert_eq!(
        udp_echo(&node.ext, sa(NODE_EXT4, 8081), Duration::from_secs(2))?,
        "ping"
    );
    assert_eq!(
        node.ns
            .sh("cat /proc/sys/net/ipv4/conf/cni0/route_localnet")?
            .trim(),
        "1"
    );
    chain.invoke(
        &node.ns,
        Command::Check,
        &id,
        &pod_ns.path(),
        &mappings,
        Some(&result),
    )?;
    chain.invoke(
        &node.ns,
        Command::Del,
        &id,
        &pod_ns.path(),
        &mappings,
        Some(&result),
    )?;
    assert_eq!(comment_count(&node.ns), 0, "{}", rules(&node.ns));
    assert!(unreachable(&node.ext, sa(NODE_EXT4, 8080)));
    // DEL again, as a runtime retrying would.
    chain.invoke(
        &node.ns,
        Command::Del,
        &id,
        &pod_ns.path(),
        &mappings,
        Some(&result),
    )?;

    // The executable speaks the protocol by itself too.
    let out = Cmd::new(bin.join("portmap"))
        .env_clear()
        .env("CNI_COMMAND", "VERSION")
        .output()?;
    let v: Value = serde_json::from_slice(&out.stdout)?;
    assert!(
        v["supportedVersions"]
            .as_array()
            .is_some_and(|a| a.contains(&json!("1.1.0")))
    );
    Ok(())
}
