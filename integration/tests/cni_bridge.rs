//! berth's `bridge` CNI plugin in network namespaces built by the tests: a
//! "node" where the plugin runs (its bridge, its nftables), pods, and an
//! "external host" linked to the node and with no route to the pods. The
//! root network namespace is never changed.
//!
//! The plugin runs in-process (`protocol::run` on a thread inside the node)
//! or as an executable under `nsenter --net=<node>`; IPAM is Debian's
//! reference `host-local` from /usr/lib/cni, each test with its own dataDir.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use berth_cni::plugins::bridge::Bridge;
use berth_cni::protocol::{self, Command, Invocation};
use berth_cni::types::{CniResult, code};
use berth_integration::netns::NetNs;
use berth_integration::wait_until;
use berth_integration::workdir::tempdir;
use serde_json::{Value, json};
use tempfile::TempDir;

const REFERENCE_PLUGINS: &str = "/usr/lib/cni";
const BRIDGE: &str = "cni-t0";
const NODE_V4: &str = "192.168.77.1";
const EXT_V4: &str = "192.168.77.2";
const NODE_V6: &str = "fd00:77::1";
const EXT_V6: &str = "fd00:77::2";

/// How a plugin is run.
#[derive(Clone, Copy)]
enum Runner<'a> {
    /// berth's bridge, in-process in the node namespace.
    InProcess,
    /// An executable (berth's through the test stand-in, or a reference one).
    Exec(&'a Path),
}

/// What a plugin printed and its exit code.
#[derive(Debug)]
struct Reply {
    exit: i32,
    out: Value,
}

impl Reply {
    fn ok(self) -> Result<Value> {
        ensure!(self.exit == 0, "plugin failed: {}", self.out);
        Ok(self.out)
    }

    fn err(self) -> Result<(u64, String)> {
        ensure!(
            self.exit != 0,
            "plugin succeeded unexpectedly: {}",
            self.out
        );
        let code = self.out["code"]
            .as_u64()
            .with_context(|| format!("no error code in {}", self.out))?;
        Ok((
            code,
            self.out["msg"].as_str().unwrap_or_default().to_string(),
        ))
    }
}

/// One test's world: the node, the external host, the IPAM state.
struct World {
    node: NetNs,
    ext: NetNs,
    ipam: TempDir,
    network: String,
    /// CNI_PATH (where the IPAM plugin is found).
    cni_path: PathBuf,
}

impl World {
    fn new(tag: &str) -> Result<World> {
        let node = NetNs::new(&format!("{tag}N"))?;
        let ext = NetNs::new(&format!("{tag}E"))?;
        node.link_to(
            &ext,
            "ext0",
            &format!("{NODE_V4}/24"),
            "up0",
            &format!("{EXT_V4}/24"),
        )?;
        node.sh(&format!("ip addr add {NODE_V6}/64 dev ext0 nodad"))?;
        ext.sh(&format!("ip addr add {EXT_V6}/64 dev up0 nodad"))?;
        Ok(World {
            node,
            ext,
            ipam: tempdir("cni-bridge-ipam")?,
            network: format!("net-{tag}"),
            cni_path: PathBuf::from(REFERENCE_PLUGINS),
        })
    }

    fn pod(&self, tag: &str) -> Result<NetNs> {
        NetNs::new(tag)
    }

    /// A bridge config with host-local IPAM over `ranges` (CIDRs; one
    /// range set each), and `extra` fields.
    fn conf(&self, ranges: &[&str], extra: Value) -> Value {
        let mut c = json!({
            "cniVersion": "1.0.0",
            "name": self.network,
            "type": "bridge",
            "bridge": BRIDGE,
            "ipam": {
                "type": "host-local",
                "dataDir": self.ipam.path(),
                "ranges": ranges.iter().map(|r| json!([{"subnet": r}])).collect::<Vec<_>>(),
            }
        });
        if let Some(o) = extra.as_object() {
            for (k, v) in o {
                c[k] = v.clone();
            }
        }
        c
    }

    fn call(
        &self,
        runner: Runner<'_>,
        cmd: Command,
        conf: &Value,
        netns: Option<&Path>,
        id: &str,
        ifname: &str,
    ) -> Result<Reply> {
        let stdin = serde_json::to_vec(conf)?;
        match runner {
            Runner::InProcess => {
                let inv = Invocation {
                    command: cmd,
                    container_id: id.to_string(),
                    netns: netns.map(Path::to_path_buf),
                    ifname: ifname.to_string(),
                    args: Vec::new(),
                    path: vec![self.cni_path.clone()],
                    stdin,
                };
                let out = berth_cni::netns::run_in(&self.node.path(), move || {
                    protocol::run(&Bridge, &inv)
                })?;
                Ok(Reply {
                    exit: out.exit_code,
                    out: parse(&out.stdout)?,
                })
            }
            Runner::Exec(exe) => {
                let mut p = Process::new("nsenter");
                p.arg(format!("--net={}", self.node.path().display()))
                    .arg("--")
                    .arg(exe)
                    .env_clear()
                    .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
                    .env("CNI_COMMAND", cmd.as_str())
                    .env("CNI_CONTAINERID", id)
                    .env("CNI_IFNAME", ifname)
                    .env("CNI_PATH", &self.cni_path)
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped());
                if let Some(ns) = netns {
                    p.env("CNI_NETNS", ns);
                }
                let mut child = p.spawn().context("running the plugin")?;
                child.stdin.take().context("no stdin")?.write_all(&stdin)?;
                let out = child.wait_with_output()?;
                Ok(Reply {
                    exit: out.status.code().unwrap_or(-1),
                    out: parse(&out.stdout).with_context(|| {
                        format!("stderr: {}", String::from_utf8_lossy(&out.stderr))
                    })?,
                })
            }
        }
    }

    fn add(&self, conf: &Value, pod: &NetNs, id: &str) -> Result<CniResult> {
        let v = self
            .call(
                Runner::InProcess,
                Command::Add,
                conf,
                Some(&pod.path()),
                id,
                "eth0",
            )?
            .ok()?;
        Ok(CniResult::from_value(&v)?)
    }

    fn del(&self, conf: &Value, pod: &Path, id: &str) -> Result<()> {
        self.call(Runner::InProcess, Command::Del, conf, Some(pod), id, "eth0")?
            .ok()?;
        Ok(())
    }

    /// Names of the links that are ports of the bridge.
    fn bridge_ports(&self) -> Result<Vec<String>> {
        if !self.node.try_sh(&format!("ip link show {BRIDGE}")) {
            return Ok(Vec::new());
        }
        Ok(self
            .node
            .sh(&format!("ip -o link show master {BRIDGE}"))?
            .lines()
            .filter_map(|l| l.split(':').nth(1))
            .map(|n| n.trim().split('@').next().unwrap_or_default().to_string())
            .collect())
    }

    /// The rules in berth's bridge table in the node (as `nft` prints them).
    fn masq_rules(&self) -> Result<Vec<String>> {
        if !self.node.try_sh("nft list table inet berth-bridge") {
            return Ok(Vec::new());
        }
        Ok(self
            .node
            .sh("nft list table inet berth-bridge")?
            .lines()
            .filter(|l| l.contains("masquerade"))
            .map(|l| l.trim().to_string())
            .collect())
    }

    /// The addresses host-local holds for this network.
    fn allocations(&self) -> Result<Vec<String>> {
        let dir = self.ipam.path().join(&self.network);
        let Ok(rd) = std::fs::read_dir(&dir) else {
            return Ok(Vec::new());
        };
        let mut v = Vec::new();
        for e in rd {
            let n = e?.file_name().to_string_lossy().into_owned();
            if n.parse::<IpAddr>().is_ok() {
                v.push(n);
            }
        }
        v.sort();
        Ok(v)
    }

    /// Asserts nothing of any pod is left: no port, rule or allocation.
    fn assert_clean(&self) -> Result<()> {
        ensure!(
            self.bridge_ports()?.is_empty(),
            "ports left on the bridge: {:?}",
            self.bridge_ports()?
        );
        ensure!(
            self.masq_rules()?.is_empty(),
            "rules left: {:?}",
            self.masq_rules()?
        );
        ensure!(
            self.allocations()?.is_empty(),
            "IPAM allocations left: {:?}",
            self.allocations()?
        );
        Ok(())
    }
}

fn parse(stdout: &[u8]) -> Result<Value> {
    if stdout.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    serde_json::from_slice(stdout).with_context(|| {
        format!(
            "plugin output is not JSON: {}",
            String::from_utf8_lossy(stdout)
        )
    })
}

/// The pod's address of family v4/v6 in a result.
fn addr(r: &CniResult, v4: bool) -> Result<IpAddr> {
    r.ips
        .iter()
        .map(|i| i.address.addr())
        .find(|a| a.is_ipv4() == v4)
        .context("no address of that family in the result")
}

fn accept_within(l: &TcpListener, d: Duration) -> Result<(TcpStream, SocketAddr)> {
    l.set_nonblocking(true)?;
    let deadline = Instant::now() + d;
    loop {
        match l.accept() {
            Ok((s, peer)) => {
                s.set_nonblocking(false)?;
                return Ok((s, peer));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(e).context("accepting"),
        }
    }
}

/// A TCP exchange from `client` to `server_ip` in `server`; returns the
/// client address the server saw.
fn tcp(client: &NetNs, server: &NetNs, server_ip: IpAddr) -> Result<IpAddr> {
    let l = berth_cni::netns::run_in(&server.path(), move || TcpListener::bind((server_ip, 0)))??;
    let to = l.local_addr()?;
    let mut c = berth_cni::netns::run_in(&client.path(), move || {
        TcpStream::connect_timeout(&to, Duration::from_secs(3))
    })?
    .with_context(|| format!("connecting to {to} from {}", client.name()))?;
    let (mut s, peer) = accept_within(&l, Duration::from_secs(3))?;
    for sock in [&c, &s] {
        sock.set_read_timeout(Some(Duration::from_secs(3)))?;
    }
    c.write_all(b"ping")?;
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf)?;
    ensure!(&buf == b"ping");
    s.write_all(b"pong")?;
    c.read_exact(&mut buf)?;
    ensure!(&buf == b"pong");
    Ok(peer.ip())
}

/// A UDP exchange, as [`tcp`].
fn udp(client: &NetNs, server: &NetNs, server_ip: IpAddr) -> Result<IpAddr> {
    let s = berth_cni::netns::run_in(&server.path(), move || UdpSocket::bind((server_ip, 0)))??;
    let to = s.local_addr()?;
    let any: IpAddr = if server_ip.is_ipv4() {
        "0.0.0.0".parse()?
    } else {
        "::".parse()?
    };
    let c = berth_cni::netns::run_in(&client.path(), move || UdpSocket::bind((any, 0)))??;
    for sock in [&c, &s] {
        sock.set_read_timeout(Some(Duration::from_secs(3)))?;
    }
    c.send_to(b"ping", to)?;
    let mut buf = [0u8; 4];
    let (n, peer) = s
        .recv_from(&mut buf)
        .with_context(|| format!("UDP to {to} from {}", client.name()))?;
    ensure!(&buf[..n] == b"ping");
    s.send_to(b"pong", peer)?;
    let (n, _) = c.recv_from(&mut buf).context("UDP reply")?;
    ensure!(&buf[..n] == b"pong");
    Ok(peer.ip())
}

fn ping(from: &NetNs, to: IpAddr) -> Result<()> {
    from.sh(&format!("busybox ping -c 1 -W 3 {to}"))?;
    Ok(())
}

#[test]
fn pods_reach_each_other_the_node_and_the_outside_and_del_removes_everything() -> Result<()> {
    let w = World::new("brv4")?;
    let conf = w.conf(
        &["10.88.0.0/24"],
        json!({"isDefaultGateway": true, "ipMasq": true}),
    );
    let (a, b) = (w.pod("brv4a")?, w.pod("brv4b")?);
    let ra = w.add(&conf, &a, "pod-a")?;
    let rb = w.add(&conf, &b, "pod-b")?;

    // The result: bridge, host end, pod interface (in its sandbox).
    assert_eq!(ra.interfaces.len(), 3, "{ra:?}");
    assert_eq!(ra.interfaces[0].name, BRIDGE);
    assert!(ra.interfaces[1].name.starts_with("veth"), "{ra:?}");
    assert_eq!(ra.interfaces[2].name, "eth0");
    assert_eq!(ra.interfaces[2].sandbox, a.path().display().to_string());
    assert_eq!(ra.ips.len(), 1);
    assert_eq!(ra.ips[0].interface, Some(2));
    assert_eq!(ra.ips[0].gateway, Some("10.88.0.1".parse()?));
    let gw4: IpAddr = "10.88.0.1".parse()?;
    assert!(
        ra.routes
            .iter()
            .any(|r| r.dst.to_string() == "0.0.0.0/0" && r.gw == Some(gw4)),
        "{ra:?}"
    );
    let (ip_a, ip_b) = (addr(&ra, true)?, addr(&rb, true)?);
    assert_ne!(ip_a, ip_b);
    // (Not /sys/class/net: sysfs shows the namespace it was mounted in.)
    let mac = a.sh("ip -o link show eth0")?;
    assert!(mac.contains(&ra.interfaces[2].mac), "{mac} vs {ra:?}");
    assert_eq!(w.bridge_ports()?.len(), 2, "ports: {:?}", w.bridge_ports()?);
    assert!(
        w.node
            .sh(&format!("ip -o addr show dev {BRIDGE}"))?
            .contains("10.88.0.1/24")
    );
    assert_eq!(w.node.sh("cat /proc/sys/net/ipv4/ip_forward")?.trim(), "1");

    // Pod to pod: TCP, UDP, ICMP, both ways; the peer is seen unmasqueraded.
    assert_eq!(tcp(&a, &b, ip_b)?, ip_a);
    assert_eq!(tcp(&b, &a, ip_a)?, ip_b);
    assert_eq!(udp(&a, &b, ip_b)?, ip_a);
    ping(&a, ip_b)?;
    ping(&b, ip_a)?;
    // Pod to node: its gateway address and its outside address.
    ping(&a, "10.88.0.1".parse()?)?;
    assert_eq!(tcp(&a, &w.node, "10.88.0.1".parse()?)?, ip_a);
    assert_eq!(udp(&b, &w.node, NODE_V4.parse()?)?, ip_b);
    // Pod to the external host, which has no route to the pods: through
    // masquerade, it sees the node's address.
    ensure!(!w.ext.sh("ip route")?.contains("10.88."));
    assert_eq!(
        tcp(&a, &w.ext, EXT_V4.parse()?)?,
        NODE_V4.parse::<IpAddr>()?
    );
    assert_eq!(
        udp(&b, &w.ext, EXT_V4.parse()?)?,
        NODE_V4.parse::<IpAddr>()?
    );
    ping(&a, EXT_V4.parse()?)?;
    assert_eq!(w.masq_rules()?.len(), 2, "{:?}", w.masq_rules()?);
    assert_eq!(w.allocations()?.len(), 2);

    // DEL of one pod removes exactly its port, rule and allocation.
    w.del(&conf, &a.path(), "pod-a")?;
    let ports = w.bridge_ports()?;
    assert_eq!(ports, vec![rb.interfaces[1].name.clone()]);
    assert!(
        !w.node
            .try_sh(&format!("ip link show {}", ra.interfaces[1].name))
    );
    let rules = w.masq_rules()?;
    assert_eq!(rules.len(), 1, "{rules:?}");
    assert!(rules[0].contains(&ip_b.to_string()), "{rules:?}");
    assert_eq!(w.allocations()?, vec![ip_b.to_string()]);
    assert!(!a.try_sh("ip link show eth0"), "eth0 left in the pod");
    // The other pod still works.
    ping(&b, "10.88.0.1".parse()?)?;
    // DEL is idempotent, also once the pod's namespace is gone.
    w.del(&conf, &a.path(), "pod-a")?;
    let b_path = b.path();
    drop(b);
    w.del(&conf, &b_path, "pod-b")?;
    w.del(&conf, &b_path, "pod-b")?;
    // The kernel removes a dead namespace's veth pairs asynchronously.
    wait_until(Duration::from_secs(5), "the dead pod's veth to go", || {
        Ok(w.bridge_ports()?.is_empty().then_some(()))
    })?;
    w.assert_clean()?;
    Ok(())
}

#[test]
fn ipv6_and_dual_stack() -> Result<()> {
    let w = World::new("brv6")?;
    let conf = w.conf(
        &["10.89.0.0/24", "fd00:89::/64"],
        json!({"isDefaultGateway": true, "ipMasq": true}),
    );
    let (a, b) = (w.pod("brv6a")?, w.pod("brv6b")?);
    let ra = w.add(&conf, &a, "pod-a")?;
    let rb = w.add(&conf, &b, "pod-b")?;
    assert_eq!(ra.ips.len(), 2, "{ra:?}");
    let gw6: IpAddr = "fd00:89::1".parse()?;
    assert_eq!(ra.ips[1].gateway, Some(gw6));
    assert!(
        ra.routes
            .iter()
            .any(|r| r.dst.to_string() == "::/0" && r.gw == Some(gw6)),
        "{ra:?}"
    );
    let br = w.node.sh(&format!("ip -o addr show dev {BRIDGE}"))?;
    assert!(
        br.contains("10.89.0.1/24") && br.contains("fd00:89::1/64"),
        "{br}"
    );
    assert_eq!(
        w.node
            .sh("cat /proc/sys/net/ipv6/conf/all/forwarding")?
            .trim(),
        "1"
    );

    for v4 in [true, false] {
        let (ip_a, ip_b) = (addr(&ra, v4)?, addr(&rb, v4)?);
        assert_eq!(tcp(&a, &b, ip_b)?, ip_a);
        assert_eq!(udp(&b, &a, ip_a)?, ip_b);
        ping(&a, ip_b)?;
        let gw: IpAddr = if v4 { "10.89.0.1".parse()? } else { gw6 };
        ping(&b, gw)?;
        assert_eq!(tcp(&a, &w.node, gw)?, ip_a);
        let (ext, node): (IpAddr, IpAddr) = if v4 {
            (EXT_V4.parse()?, NODE_V4.parse()?)
        } else {
            (EXT_V6.parse()?, NODE_V6.parse()?)
        };
        assert_eq!(tcp(&a, &w.ext, ext)?, node, "masquerade, v4={v4}");
        assert_eq!(udp(&b, &w.ext, ext)?, node, "masquerade, v4={v4}");
    }
    assert_eq!(w.masq_rules()?.len(), 4, "{:?}", w.masq_rules()?);
    assert_eq!(w.allocations()?.len(), 4);
    w.del(&conf, &a.path(), "pod-a")?;
    w.del(&conf, &b.path(), "pod-b")?;
    w.assert_clean()?;
    Ok(())
}

#[test]
fn an_ipv6_only_network() -> Result<()> {
    let w = World::new("br6o")?;
    let conf = w.conf(&["fd00:86::/64"], json!({"isDefaultGateway": true}));
    let (a, b) = (w.pod("br6oa")?, w.pod("br6ob")?);
    let ra = w.add(&conf, &a, "pod-a")?;
    let rb = w.add(&conf, &b, "pod-b")?;
    let (ip_a, ip_b) = (addr(&ra, false)?, addr(&rb, false)?);
    assert_eq!(tcp(&b, &a, ip_a)?, ip_b);
    ping(&a, ip_b)?;
    ping(&a, "fd00:86::1".parse()?)?;
    assert!(!a.sh("ip -4 addr show dev eth0")?.contains("inet "));
    w.del(&conf, &a.path(), "pod-a")?;
    w.del(&conf, &b.path(), "pod-b")?;
    w.assert_clean()?;
    Ok(())
}

#[test]
fn check_passes_then_fails_once_the_pod_lost_its_address() -> Result<()> {
    let w = World::new("brck")?;
    let conf = w.conf(
        &["10.90.0.0/24"],
        json!({"isDefaultGateway": true, "ipMasq": true}),
    );
    let pod = w.pod("brckp")?;
    let r = w.add(&conf, &pod, "pod-c")?;
    let mut with_prev = conf.clone();
    with_prev["prevResult"] = r.to_value("1.0.0")?;
    let check = |c: &Value| {
        w.call(
            Runner::InProcess,
            Command::Check,
            c,
            Some(&pod.path()),
            "pod-c",
            "eth0",
        )
    };
    check(&with_prev)?.ok()?;

    // Without a prevResult CHECK cannot judge.
    let (code_, msg) = check(&conf)?.err()?;
    assert_eq!(code_, u64::from(code::INVALID_CONFIG), "{msg}");

    let ip = r.ips[0].address;
    pod.sh(&format!("ip addr del {ip} dev eth0"))?;
    let (code_, msg) = check(&with_prev)?.err()?;
    assert_eq!(code_, u64::from(code::CHECK_MISMATCH), "{msg}");
    assert!(msg.contains(&ip.to_string()), "{msg}");

    w.del(&conf, &pod.path(), "pod-c")?;
    w.assert_clean()?;
    Ok(())
}

#[test]
fn mtu_hairpin_mac_and_promiscuous_mode_are_applied() -> Result<()> {
    let w = World::new("brlo")?;
    let conf = w.conf(
        &["10.92.0.0/24"],
        json!({"isGateway": true, "mtu": 1400, "hairpinMode": true,
               "runtimeConfig": {"mac": "02:42:0a:5c:00:63"}}),
    );
    let pod = w.pod("brlop")?;
    let r = w.add(&conf, &pod, "pod-l")?;
    let eth0 = pod.sh("ip -d link show eth0")?;
    assert!(eth0.contains("mtu 1400"), "{eth0}");
    assert!(eth0.contains("02:42:0a:5c:00:63"), "{eth0}");
    assert_eq!(r.interfaces[2].mac, "02:42:0a:5c:00:63");
    let host = w
        .node
        .sh(&format!("ip -d link show {}", r.interfaces[1].name))?;
    assert!(
        host.contains("mtu 1400") && host.contains("hairpin on"),
        "{host}"
    );
    assert!(
        w.node
            .sh(&format!("ip link show {BRIDGE}"))?
            .contains("mtu 1400")
    );
    // isGateway alone: a gateway, but no default route.
    assert_eq!(r.ips[0].gateway, Some("10.92.0.1".parse()?));
    assert!(!pod.sh("ip route")?.contains("default"));
    w.del(&conf, &pod.path(), "pod-l")?;

    let mut promisc = conf.clone();
    promisc["bridge"] = json!("cni-p0");
    promisc["hairpinMode"] = json!(false);
    promisc["promiscMode"] = json!(true);
    promisc["ipam"]["ranges"] = json!([[{"subnet": "10.93.0.0/24"}]]);
    let r = w.add(&promisc, &pod, "pod-p")?;
    let br = w.node.sh("ip -d link show cni-p0")?;
    assert!(br.contains("promiscuity 1"), "{br}");
    let host = w
        .node
        .sh(&format!("ip -d link show {}", r.interfaces[1].name))?;
    assert!(host.contains("hairpin off"), "{host}");
    w.del(&promisc, &pod.path(), "pod-p")?;
    w.assert_clean()?;
    Ok(())
}

#[test]
fn concurrent_adds_create_the_bridge_once_and_get_distinct_addresses() -> Result<()> {
    let w = World::new("brcc")?;
    let conf = w.conf(
        &["10.94.0.0/24"],
        json!({"isDefaultGateway": true, "ipMasq": true}),
    );
    let pods: Vec<NetNs> = (0..6)
        .map(|i| w.pod(&format!("brcc{i}")))
        .collect::<Result<_>>()?;
    let results: Vec<CniResult> = std::thread::scope(|s| {
        let hs: Vec<_> = pods
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let (w, conf) = (&w, &conf);
                s.spawn(move || w.add(conf, p, &format!("pod-{i}")))
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().map_err(|_| anyhow::anyhow!("thread panicked"))?)
            .collect::<Result<_>>()
    })?;
    let mut ips: Vec<IpAddr> = results
        .iter()
        .map(|r| addr(r, true))
        .collect::<Result<_>>()?;
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), 6, "{ips:?}");
    assert_eq!(w.bridge_ports()?.len(), 6);
    for (p, r) in pods.iter().zip(&results) {
        ping(p, "10.94.0.1".parse()?)?;
        assert_eq!(
            r.interfaces[0].mac, results[0].interfaces[0].mac,
            "bridge MAC changed"
        );
    }
    for (i, p) in pods.iter().enumerate() {
        w.del(&conf, &p.path(), &format!("pod-{i}"))?;
    }
    w.assert_clean()?;
    Ok(())
}

#[test]
fn bad_input_leaves_nothing_behind() -> Result<()> {
    let w = World::new("brbad")?;
    let conf = w.conf(
        &["10.91.0.0/24"],
        json!({"isDefaultGateway": true, "ipMasq": true}),
    );
    let pod = w.pod("brbadp")?;
    let add = |c: &Value, ns: &Path| {
        w.call(
            Runner::InProcess,
            Command::Add,
            c,
            Some(ns),
            "pod-x",
            "eth0",
        )
    };
    let pod_links = || -> Result<usize> { Ok(pod.sh("ip -o link")?.lines().count()) };

    // Malformed JSON, an unknown version, a missing field.
    let inv = |stdin: &[u8]| Invocation {
        command: Command::Add,
        container_id: "pod-x".into(),
        netns: Some(pod.path()),
        ifname: "eth0".into(),
        args: Vec::new(),
        path: vec![PathBuf::from(REFERENCE_PLUGINS)],
        stdin: stdin.to_vec(),
    };
    let out = protocol::run(&Bridge, &inv(b"{\"cniVersion\": "));
    let e: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(e["code"], code::DECODE_FAILURE);
    let mut v = conf.clone();
    v["cniVersion"] = json!("7.0.0");
    assert_eq!(
        add(&v, &pod.path())?.err()?.0,
        u64::from(code::INCOMPATIBLE_VERSION)
    );
    let mut v = conf.clone();
    v.as_object_mut().context("object")?.remove("type");
    assert_eq!(
        add(&v, &pod.path())?.err()?.0,
        u64::from(code::INVALID_CONFIG)
    );
    // Bad plugin fields.
    let mut v = conf.clone();
    v["mtu"] = json!("large");
    let (c, msg) = add(&v, &pod.path())?.err()?;
    assert_eq!(c, u64::from(code::INVALID_CONFIG));
    assert!(msg.contains("mtu"), "{msg}");
    w.assert_clean()?;

    // An invalid CIDR: host-local refuses, nothing was created.
    let bad_cidr = w.conf(&["10.91.0.0/33"], json!({"isDefaultGateway": true}));
    let (_, msg) = add(&bad_cidr, &pod.path())?.err()?;
    assert!(!msg.is_empty());
    w.assert_clean()?;
    assert_eq!(pod_links()?, 1);

    // A namespace that does not exist.
    let (c, msg) = add(&conf, Path::new("/run/netns/berth-no-such-netns"))?.err()?;
    assert_eq!(c, u64::from(code::INVALID_ENVIRONMENT));
    assert!(msg.contains("berth-no-such-netns"), "{msg}");
    w.assert_clean()?;

    // An interface name that is taken in the pod (by a veth pair of its own).
    pod.sh("ip link add eth0 type veth peer name eth0peer")?;
    let (c, msg) = add(&conf, &pod.path())?.err()?;
    assert_eq!(c, u64::from(code::INVALID_ENVIRONMENT));
    assert!(
        msg.contains("eth0") && msg.contains("already exists"),
        "{msg}"
    );
    w.assert_clean()?;
    assert!(pod.try_sh("ip link show eth0 && ip link show eth0peer"));
    pod.sh("ip link del eth0")?;

    // The bridge name belongs to something else: IPAM ran, and is undone.
    w.node
        .sh(&format!("ip link add {BRIDGE} type veth peer name brpeer"))?;
    let (c, msg) = add(&conf, &pod.path())?.err()?;
    assert_eq!(c, u64::from(code::INVALID_CONFIG));
    assert!(msg.contains("not a bridge"), "{msg}");
    w.assert_clean()?;
    w.node.sh(&format!("ip link del {BRIDGE}"))?;

    // A failure after the veth pair and the pod's addresses exist: the
    // bridge has another address and forceAddress is off.
    w.node.sh(&format!(
        "ip link add {BRIDGE} type bridge && ip addr add 10.91.0.200/24 dev {BRIDGE}"
    ))?;
    let (c, msg) = add(&conf, &pod.path())?.err()?;
    assert_eq!(c, u64::from(code::INVALID_CONFIG));
    assert!(msg.contains("10.91.0.200"), "{msg}");
    w.assert_clean()?;
    assert_eq!(pod_links()?, 1, "{}", pod.sh("ip -o link")?);
    // With forceAddress the gateway replaces it.
    let mut forced = conf.clone();
    forced["forceAddress"] = json!(true);
    add(&forced, &pod.path())?.ok()?;
    let br = w.node.sh(&format!("ip -o addr show dev {BRIDGE}"))?;
    assert!(
        br.contains("10.91.0.1/24") && !br.contains("10.91.0.200"),
        "{br}"
    );
    w.del(&forced, &pod.path(), "pod-x")?;
    w.assert_clean()?;

    // An exhausted range: the second ADD fails and leaves the first alone.
    let tiny = w.conf(&["10.91.0.0/24"], json!({"isDefaultGateway": true}));
    let mut tiny = tiny.clone();
    tiny["ipam"]["ranges"] =
        json!([[{"subnet": "10.91.0.0/24", "rangeStart": "10.91.0.10", "rangeEnd": "10.91.0.10"}]]);
    let other = w.pod("brbado")?;
    add(&tiny, &pod.path())?.ok()?;
    let e = w
        .call(
            Runner::InProcess,
            Command::Add,
            &tiny,
            Some(&other.path()),
            "pod-y",
            "eth0",
        )?
        .err()?;
    assert!(!e.1.is_empty());
    assert_eq!(w.bridge_ports()?.len(), 1);
    assert_eq!(w.allocations()?, vec!["10.91.0.10".to_string()]);
    assert_eq!(other.sh("ip -o link")?.lines().count(), 1);
    w.del(&tiny, &pod.path(), "pod-x")?;
    w.assert_clean()?;
    Ok(())
}

/// berth's plugin as an executable: a symlink named `bridge` to the test
/// stand-in binary.
/// berth installed as `bridge` (with its other plugins) in a bin dir.
fn berth_bridge_exe() -> Result<(berth_integration::cni::BinDir, PathBuf)> {
    let dir = berth_integration::cni::BinDir::berth()?;
    let exe = dir.plugin("bridge");
    Ok((dir, exe))
}

/// A pod's addresses and routes, as `ip` prints them, without what differs
/// between any two interfaces (MAC, index, lifetimes).
fn pod_state(pod: &NetNs) -> Result<String> {
    let addrs = pod.sh("ip -o addr show dev eth0 scope global")?;
    let addrs: Vec<String> = addrs
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some(format!("{} {}", f.get(2)?, f.get(3)?))
        })
        .collect();
    let routes = pod.sh("ip route show; ip -6 route show")?;
    let link = pod.sh("ip -o link show eth0")?;
    let mtu = link
        .split_whitespace()
        .skip_while(|w| *w != "mtu")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    Ok(format!(
        "addresses: {}\nroutes:\n{routes}mtu: {mtu}\n",
        addrs.join(", ")
    ))
}

#[test]
fn as_an_executable_it_configures_a_pod_as_the_reference_plugin_does() -> Result<()> {
    let (_bin, ours) = berth_bridge_exe()?;
    let reference = Path::new(REFERENCE_PLUGINS).join("bridge");
    let ours_w = World::new("brio")?;
    let ref_w = World::new("brir")?;
    let extra = json!({"isDefaultGateway": true, "mtu": 1450});
    let ranges = ["10.95.0.0/24", "fd00:95::/64"];
    let (our_pod, ref_pod) = (ours_w.pod("briop")?, ref_w.pod("brirp")?);

    let mut results = Vec::new();
    for (w, exe, pod) in [(&ours_w, &ours, &our_pod), (&ref_w, &reference, &ref_pod)] {
        let conf = w.conf(&ranges, extra.clone());
        let r = w
            .call(
                Runner::Exec(exe),
                Command::Add,
                &conf,
                Some(&pod.path()),
                "pod-i",
                "eth0",
            )?
            .ok()?;
        results.push(CniResult::from_value(&r)?);
    }
    let (ours_r, ref_r) = (&results[0], &results[1]);
    assert_eq!(ours_r.ips, ref_r.ips);
    assert_eq!(ours_r.routes, ref_r.routes);
    let names = |r: &CniResult| -> Vec<(String, bool)> {
        r.interfaces
            .iter()
            .map(|i| {
                let n = if i.name.starts_with("veth") {
                    "veth"
                } else {
                    i.name.as_str()
                };
                (n.to_string(), i.sandbox.is_empty())
            })
            .collect()
    };
    assert_eq!(names(ours_r), names(ref_r));

    assert_eq!(pod_state(&our_pod)?, pod_state(&ref_pod)?);
    let br = |w: &World| -> Result<Vec<String>> {
        Ok(w.node
            .sh(&format!("ip -o addr show dev {BRIDGE} scope global"))?
            .lines()
            .filter_map(|l| l.split_whitespace().nth(3).map(str::to_string))
            .collect())
    };
    assert_eq!(br(&ours_w)?, br(&ref_w)?);
    for w in [&ours_w, &ref_w] {
        assert_eq!(w.node.sh("cat /proc/sys/net/ipv4/ip_forward")?.trim(), "1");
        ping(&w.node, "10.95.0.2".parse()?)?;
    }

    // CHECK with the prevResult, then DEL, each by its own plugin.
    for (w, exe, pod, r) in [
        (&ours_w, &ours, &our_pod, ours_r),
        (&ref_w, &reference, &ref_pod, ref_r),
    ] {
        let mut conf = w.conf(&ranges, extra.clone());
        conf["prevResult"] = r.to_value("1.0.0")?;
        w.call(
            Runner::Exec(exe),
            Command::Check,
            &conf,
            Some(&pod.path()),
            "pod-i",
            "eth0",
        )?
        .ok()?;
        w.call(
            Runner::Exec(exe),
            Command::Del,
            &conf,
            Some(&pod.path()),
            "pod-i",
            "eth0",
        )?
        .ok()?;
        w.assert_clean()?;
        assert!(!pod.try_sh("ip link show eth0"));
    }

    // The executable speaks the protocol's errors too.
    let v = ours_w
        .call(
            Runner::Exec(&ours),
            Command::Version,
            &json!({}),
            None,
            "",
            "",
        )?
        .ok()?;
    assert!(v["supportedVersions"].to_string().contains("1.0.0"), "{v}");
    let (c, _) = ours_w
        .call(
            Runner::Exec(&ours),
            Command::Add,
            &json!({"cniVersion": "1.0.0", "name": "x"}),
            Some(&our_pod.path()),
            "pod-i",
            "eth0",
        )?
        .err()?;
    assert_eq!(c, u64::from(code::INVALID_CONFIG));
    Ok(())
}

#[test]
fn a_layer2_only_network_has_no_addresses() -> Result<()> {
    let w = World::new("brl2")?;
    let conf = json!({"cniVersion": "1.0.0", "name": w.network, "type": "bridge",
                      "bridge": BRIDGE, "ipam": {}});
    let pod = w.pod("brl2p")?;
    let r = w.add(&conf, &pod, "pod-l2")?;
    assert!(r.ips.is_empty(), "{r:?}");
    assert_eq!(r.interfaces.len(), 3);
    assert!(!pod.sh("ip -o addr show dev eth0")?.contains("inet "));
    assert!(pod.sh("ip link show eth0")?.contains("UP"));
    w.del(&conf, &pod.path(), "pod-l2")?;
    if w.bridge_ports()?.is_empty() {
        Ok(())
    } else {
        bail!("ports left: {:?}", w.bridge_ports()?)
    }
}

#[test]
fn a_reused_address_is_reachable_at_once() -> Result<()> {
    // Two addresses per family: a bystander keeps one (and the bridge's
    // carrier, whose loss would flush the node's neighbour cache), the
    // other goes from one pod to the next.
    let w = World::new("brre")?;
    let mut conf = w.conf(&[], json!({"isDefaultGateway": true}));
    conf["ipam"]["ranges"] = json!([
        [{"subnet": "10.97.0.0/24", "rangeStart": "10.97.0.10", "rangeEnd": "10.97.0.11"}],
        [{"subnet": "fd00:97::/64", "rangeStart": "fd00:97::10", "rangeEnd": "fd00:97::11"}]
    ]);
    let bystander = w.pod("brrec")?;
    w.add(&conf, &bystander, "pod-c")?;
    let a = w.pod("brrea")?;
    let ra = w.add(&conf, &a, "pod-a")?;
    let (v4, v6) = (addr(&ra, true)?, addr(&ra, false)?);
    // The node learns the first pod's MAC for these addresses...
    ping(&w.node, v4)?;
    ping(&w.node, v6)?;
    w.del(&conf, &a.path(), "pod-a")?;
    let b = w.pod("brreb")?;
    let rb = w.add(&conf, &b, "pod-b")?;
    assert_eq!((addr(&rb, true)?, addr(&rb, false)?), (v4, v6));
    // ...and is told at once that they moved (gratuitous ARP, unsolicited
    // neighbour advertisement), instead of sending to the old MAC until its
    // cache entry expires.
    ping(&w.node, v4)?;
    ping(&w.node, v6)?;
    let neigh = w
        .node
        .sh(&format!("ip neigh show {v4}; ip neigh show {v6}"))?;
    assert_eq!(
        neigh.matches(&rb.interfaces[2].mac).count(),
        2,
        "{neigh} (pod MAC {})",
        rb.interfaces[2].mac
    );
    w.del(&conf, &b.path(), "pod-b")?;
    w.del(&conf, &bystander.path(), "pod-c")?;
    w.assert_clean()?;
    Ok(())
}

#[test]
fn gc_removes_the_rules_of_attachments_that_are_gone_and_status_and_gc_reach_ipam() -> Result<()> {
    // A stand-in IPAM plugin that speaks 1.1 (Debian's host-local stops at
    // 1.0): an address per container, and a record of STATUS and GC.
    let mut w = World::new("brgc")?;
    let ipam_dir = tempdir("cni-bridge-fake-ipam")?;
    let log = ipam_dir.path().to_path_buf();
    let script = ipam_dir.path().join("fake-ipam");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n\
             case \"$CNI_COMMAND\" in\n\
             ADD) case \"$CNI_CONTAINERID\" in pod-1) ip=10.98.0.5;; *) ip=10.98.0.6;; esac\n\
                  echo '{{\"cniVersion\":\"1.1.0\",\"ips\":[{{\"address\":\"'$ip'/24\"}}]}}';;\n\
             STATUS|GC) cat > {log}/$CNI_COMMAND.json;;\n\
             esac\n",
            log = log.display()
        ),
    )?;
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    w.cni_path = ipam_dir.path().to_path_buf();
    let conf = json!({"cniVersion": "1.1.0", "name": w.network, "type": "bridge",
        "bridge": BRIDGE, "isDefaultGateway": true, "ipMasq": true,
        "ipam": {"type": "fake-ipam"}});
    let (p1, p2) = (w.pod("brgc1")?, w.pod("brgc2")?);
    let r1 = w.add(&conf, &p1, "pod-1")?;
    assert_eq!(r1.ips[0].gateway, Some("10.98.0.1".parse()?));
    w.add(&conf, &p2, "pod-2")?;
    assert_eq!(w.masq_rules()?.len(), 2);
    // Another network's rules are not this GC's business.
    let mut other = conf.clone();
    other["name"] = json!("other-net");
    other["bridge"] = json!("cni-o0");
    let p3 = w.pod("brgc3")?;
    w.add(&other, &p3, "pod-3")?;

    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "pod-1", "ifname": "eth0"}]);
    w.call(Runner::InProcess, Command::Gc, &gc, None, "", "")?
        .ok()?;
    let rules = w.masq_rules()?;
    assert_eq!(rules.len(), 2, "{rules:?}");
    assert!(
        rules
            .iter()
            .any(|r| r.contains("10.98.0.5") && r.contains("pod-1")),
        "{rules:?}"
    );
    assert!(rules.iter().any(|r| r.contains("pod-3")), "{rules:?}");
    let seen: Value = serde_json::from_str(&std::fs::read_to_string(log.join("GC.json"))?)?;
    assert_eq!(seen["cni.dev/valid-attachments"][0]["containerID"], "pod-1");

    w.call(Runner::InProcess, Command::Status, &conf, None, "", "")?
        .ok()?;
    assert!(log.join("STATUS.json").exists());
    for (c, p, id) in [
        (&conf, &p1, "pod-1"),
        (&conf, &p2, "pod-2"),
        (&other, &p3, "pod-3"),
    ] {
        w.call(
            Runner::InProcess,
            Command::Del,
            c,
            Some(&p.path()),
            id,
            "eth0",
        )?
        .ok()?;
    }
    assert!(w.masq_rules()?.is_empty());
    assert!(w.bridge_ports()?.is_empty());
    Ok(())
}

/// Whether link `name` exists in `ns`, asked over netlink at once (`ip`
/// would take long enough for a slow deletion to finish meanwhile).
fn has_link(ns: &NetNs, name: &str) -> Result<bool> {
    let name = name.to_string();
    Ok(berth_cni::netns::run_in(&ns.path(), move || {
        berth_cni::link::Netlink::open()?.link_by_name(&name)
    })??
    .is_some())
}

/// berth's plugin processes (named after a plugin, running the berth
/// binary) still alive: children a plugin executable left to finish kernel
/// work after it ended.
fn plugin_processes(berth: &Path) -> Result<Vec<u32>> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc")? {
        let e = e?;
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        if berth_cni::plugins::NAMES.contains(&comm.trim())
            && std::fs::read_link(e.path().join("exe")).is_ok_and(|x| x == berth)
        {
            found.push(pid);
        }
    }
    Ok(found)
}

#[test]
fn del_returns_with_the_pod_interface_gone_and_its_names_free_at_once() -> Result<()> {
    // DEL does not wait for the kernel to finish freeing the veth pair, only
    // for it to leave the namespaces: by then both names must be free, for
    // the same container again at once and for a pod elsewhere meanwhile.
    // An executable leaves that wait (and its netfilter socket's) to child
    // processes, which must hold none of its output open and end soon.
    let (_bin, exe) = berth_bridge_exe()?;
    let w = World::new("brdl")?;
    let conf = w.conf(&["10.94.0.0/24"], json!({"ipMasq": true}));
    let pod = w.pod("brdla")?;
    let other = w.pod("brdlb")?;
    for runner in [Runner::InProcess, Runner::Exec(&exe)] {
        let call = |cmd, pod: &NetNs, id: &str| -> Result<Value> {
            w.call(runner, cmd, &conf, Some(&pod.path()), id, "eth0")?
                .ok()
        };
        for _ in 0..5 {
            let r = CniResult::from_value(&call(Command::Add, &pod, "pod-a")?)?;
            let host = r.interfaces[1].name.clone();
            let (del, add) = std::thread::scope(|s| {
                let del = s.spawn(|| call(Command::Del, &pod, "pod-a"));
                let add = s.spawn(|| call(Command::Add, &other, "pod-b"));
                (del.join(), add.join())
            });
            del.map_err(|_| anyhow::anyhow!("DEL panicked"))??;
            ensure!(!has_link(&pod, "eth0")?, "eth0 still in the pod after DEL");
            ensure!(
                !has_link(&w.node, &host)?,
                "host end {host} still on the node after DEL"
            );
            let again = CniResult::from_value(&call(Command::Add, &pod, "pod-a")?)?;
            ensure!(again.interfaces[2].name == "eth0");
            ensure!(has_link(&pod, "eth0")?, "no eth0 after the second ADD");
            add.map_err(|_| anyhow::anyhow!("ADD panicked"))??;
            ensure!(has_link(&other, "eth0")?, "no eth0 in the other pod");
            call(Command::Del, &pod, "pod-a")?;
            call(Command::Del, &other, "pod-b")?;
        }
    }
    w.assert_clean()?;
    let berth = std::fs::canonicalize(&exe)?;
    wait_until(Duration::from_secs(5), "plugin children to end", || {
        Ok(plugin_processes(&berth)?.is_empty().then_some(()))
    })?;
    Ok(())
}

#[test]
fn a_refused_unwaited_deletion_is_reported() -> Result<()> {
    use berth_cni::link::Netlink;
    let ns = NetNs::new("brdr")?;
    let (lo, missing) = berth_cni::netns::run_in(&ns.path(), || -> Result<_> {
        let nl = Netlink::open()?;
        let lo = nl.link_by_name("lo")?.context("no lo")?;
        // The loopback device cannot be deleted; no link has index 99999.
        let refused = nl.delete_link_unwaited(lo.index);
        let missing = nl.delete_link_unwaited(99_999);
        ensure!(nl.link_by_name("lo")?.is_some(), "lo went away");
        Ok((refused, missing))
    })??;
    let lo = lo.err().context("deleting lo succeeded")?;
    ensure!(lo.errno() == Some(libc::EOPNOTSUPP), "{lo}");
    let missing = missing.err().context("deleting a missing link succeeded")?;
    ensure!(missing.is_not_found(), "{missing}");
    Ok(())
}
