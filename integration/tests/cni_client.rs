//! berth's CNI client running Debian's reference plugins (/usr/lib/cni:
//! bridge with host-local, portmap, loopback) from a conflist, the way the
//! runtime will for every pod sandbox.
//!
//! Each test has its own "node" netns (where the bridge and the port
//! mapping rules go) and pod netns. The client's calls run on a thread
//! inside the node netns, so the plugins it starts inherit it; the root
//! network namespace is never changed.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use berth_cni::client::{Attachment, Client, ClientError, NetworkConfig};
use berth_cni::netns::run_in;
use berth_integration::netns::NetNs;
use serde_json::{Value, json};

const REFERENCE_PLUGINS: &str = "/usr/lib/cni";
const GATEWAY: &str = "10.88.0.1";

/// A node netns with a CNI config dir, a cache dir and an IPAM data dir.
struct Node {
    ns: NetNs,
    dir: tempfile::TempDir,
    net: NetworkConfig,
}

impl Node {
    /// A node whose config dir holds the reference chain at `version`
    /// (and, before it by name, a broken file that must be skipped);
    /// without portmap when `portmap` is false.
    fn new(tag: &str, version: &str, portmap: bool) -> Result<Node> {
        let ns = NetNs::new(tag)?;
        let dir = tempfile::tempdir()?;
        let conf_dir = dir.path().join("net.d");
        std::fs::create_dir(&conf_dir)?;
        std::fs::write(conf_dir.join("05-broken.conflist"), "{\"name\":")?;
        let mut list = json!({
            "cniVersion": version,
            "name": "berth-it",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": "cni0",
                    "isGateway": true,
                    "hairpinMode": true,
                    "ipam": {
                        "type": "host-local",
                        "dataDir": dir.path().join("ipam"),
                        "ranges": [[{"subnet": "10.88.0.0/24"}]],
                        "routes": [{"dst": "0.0.0.0/0"}]
                    }
                },
                {"type": "portmap", "capabilities": {"portMappings": true}},
                {"type": "loopback"}
            ]
        });
        if !portmap && let Some(plugins) = list["plugins"].as_array_mut() {
            plugins.remove(1);
        }
        std::fs::write(
            conf_dir.join("10-berth.conflist"),
            serde_json::to_vec_pretty(&list)?,
        )?;
        let net = NetworkConfig::load_dir(&conf_dir)?.context("no config loaded")?;
        ensure!(
            net.name == "berth-it" && net.plugins.len() == 2 + usize::from(portmap),
            "{net:?}"
        );
        Ok(Node { ns, dir, net })
    }

    /// A client as the daemon makes it at start (a new one is a restart).
    fn client(&self) -> Client {
        Client::new(
            vec![PathBuf::from(REFERENCE_PLUGINS)],
            self.dir.path().join("cache"),
        )
    }

    /// Runs `f` with a fresh client on a thread inside the node netns.
    fn run<T: Send + 'static>(
        &self,
        net: &NetworkConfig,
        f: impl FnOnce(&Client, &NetworkConfig) -> T + Send + 'static,
    ) -> Result<T> {
        let (client, net) = (self.client(), net.clone());
        Ok(run_in(&self.ns.path(), move || f(&client, &net))?)
    }

    /// The addresses host-local holds for the network.
    fn allocated(&self) -> Result<Vec<String>> {
        let dir = self.dir.path().join("ipam").join(&self.net.name);
        let mut ips = Vec::new();
        if let Ok(rd) = std::fs::read_dir(&dir) {
            for e in rd {
                let name = e?.file_name().to_string_lossy().into_owned();
                if name.parse::<std::net::IpAddr>().is_ok() {
                    ips.push(name);
                }
            }
        }
        Ok(ips)
    }

    fn cache_entries(&self) -> Result<usize> {
        Ok(self.client().cache().list(None)?.len())
    }

    fn veths(&self) -> Result<String> {
        self.ns.sh("ip -o link show type veth")
    }

    fn nat_rules(&self) -> Result<String> {
        self.ns.sh("iptables-save -t nat")
    }
}

fn attachment(id: &str, pod: &NetNs, host_port: u16) -> Attachment {
    let mut a = Attachment::new(id, Some(&pod.path()), "eth0");
    // As containerd does: the reference plugins refuse CNI_ARGS they do
    // not know without IgnoreUnknown.
    a.args = vec![
        ("IgnoreUnknown".into(), "1".into()),
        ("K8S_POD_NAMESPACE".into(), "default".into()),
        ("K8S_POD_NAME".into(), id.into()),
    ];
    a.capability_args = json!({
        "portMappings": [{"hostPort": host_port, "containerPort": 80, "protocol": "tcp"}]
    })
    .as_object()
    .cloned()
    .unwrap_or_default();
    a
}

fn pod_ip(pod: &NetNs) -> Result<Option<String>> {
    if !pod.try_sh("ip link show eth0") {
        return Ok(None);
    }
    let out = pod.sh("ip -4 -o addr show dev eth0")?;
    Ok(out
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .map(str::to_string))
}

#[test]
fn add_then_del_after_a_restart() -> Result<()> {
    let node = Node::new("cnicl-node", "1.0.0", true)?;
    let pod = NetNs::new("cnicl-pod")?;
    // The loopback plugin is the one that brings it up.
    pod.sh("ip link set lo down")?;
    let att = attachment("ctr-one", &pod, 18080);

    let a = att.clone();
    let result = node.run(&node.net, move |c, n| c.add(n, &a))??;
    ensure!(result.cni_version == "1.0.0", "{result:?}");
    let ip = result
        .ips
        .first()
        .context("no IP in the result")?
        .address
        .to_string();
    ensure!(ip.starts_with("10.88.0."), "{result:?}");
    ensure!(
        result.ips[0].gateway.map(|g| g.to_string()).as_deref() == Some(GATEWAY),
        "{result:?}"
    );
    ensure!(
        result
            .interfaces
            .iter()
            .any(|i| i.name == "eth0" && Path::new(&i.sandbox) == pod.path()),
        "{result:?}"
    );
    ensure!(pod_ip(&pod)?.as_deref() == Some(ip.as_str()), "pod address");
    ensure!(pod.sh("ip link show lo")?.contains("UP"), "lo is not up");
    pod.sh(&format!("busybox ping -c1 -W2 {GATEWAY}"))?;
    ensure!(node.nat_rules()?.contains("18080"), "no port mapping rule");
    ensure!(node.allocated()?.len() == 1);
    ensure!(node.cache_entries()? == 1);

    // Restart: a new client, and a caller that knows only the names (the
    // netns, CNI_ARGS and port mappings come from the cache).
    let bare = Attachment::new("ctr-one", None, "eth0");
    let b = bare.clone();
    node.run(&node.net, move |c, n| c.del(n, &b))??;
    ensure!(pod_ip(&pod)?.is_none(), "eth0 is still in the pod");
    ensure!(
        node.veths()?.trim().is_empty(),
        "veth left: {}",
        node.veths()?
    );
    ensure!(node.allocated()?.is_empty(), "{:?}", node.allocated()?);
    ensure!(
        !node.nat_rules()?.contains("18080"),
        "{}",
        node.nat_rules()?
    );
    ensure!(node.cache_entries()? == 0);

    // DEL again, and DEL of a container never added whose netns is gone.
    node.run(&node.net, move |c, n| c.del(n, &bare))??;
    let ghost = Attachment::new(
        "ctr-ghost",
        Some(Path::new("/run/netns/berth-gone")),
        "eth0",
    );
    node.run(&node.net, move |c, n| c.del(n, &ghost))??;
    Ok(())
}

#[test]
fn check_passes_then_notices_what_changed() -> Result<()> {
    // Without portmap: the reference portmap's CHECK (1.1.1) also checks an
    // ip6tables DNAT chain it never made for an IPv4-only pod, and fails.
    let node = Node::new("cnicl-chk", "1.0.0", false)?;
    let pod = NetNs::new("cnicl-chkpod")?;
    let att = attachment("ctr-chk", &pod, 18081);
    let a = att.clone();
    node.run(&node.net, move |c, n| c.add(n, &a))??;
    let a = att.clone();
    node.run(&node.net, move |c, n| c.check(n, &a))??;
    pod.sh("ip addr flush dev eth0")?;
    let a = att.clone();
    let e = node
        .run(&node.net, move |c, n| c.check(n, &a))?
        .expect_err("CHECK passed without the pod's address");
    ensure!(
        matches!(&e, ClientError::Plugin { plugin, command: "CHECK", .. } if plugin == "bridge"),
        "{e}"
    );
    node.run(&node.net, move |c, n| c.del(n, &att))??;
    ensure!(node.veths()?.trim().is_empty());
    ensure!(node.allocated()?.is_empty());
    Ok(())
}

#[test]
fn a_failing_middle_plugin_undoes_the_ones_before_it() -> Result<()> {
    let node = Node::new("cnicl-rb", "1.0.0", true)?;
    let pod = NetNs::new("cnicl-rbpod")?;
    // Port 0: the reference portmap refuses it (on ADD, and on DEL too).
    let att = attachment("ctr-rb", &pod, 0);
    let a = att.clone();
    let e = node
        .run(&node.net, move |c, n| c.add(n, &a))?
        .expect_err("ADD with host port 0 succeeded");
    let ClientError::RollbackFailed { failed, rollback } = &e else {
        anyhow::bail!("unexpected error: {e}");
    };
    ensure!(
        matches!(failed.as_ref(), ClientError::Plugin { plugin, index: 1, command: "ADD", .. } if plugin == "portmap"),
        "{e}"
    );
    ensure!(
        e.cni_error()
            .is_some_and(|c| c.msg.contains("Invalid host port")),
        "{e}"
    );
    // Only portmap's own DEL failed: bridge and host-local were undone.
    ensure!(rollback.len() == 1, "{e}");
    ensure!(pod_ip(&pod)?.is_none(), "eth0 left in the pod");
    ensure!(
        node.veths()?.trim().is_empty(),
        "veth left: {}",
        node.veths()?
    );
    ensure!(node.allocated()?.is_empty(), "{:?}", node.allocated()?);
    // The half-undone attachment stays recorded until a DEL succeeds: the
    // caller's corrected port mappings override the cached ones.
    ensure!(node.cache_entries()? == 1);
    let mut fixed = Attachment::new("ctr-rb", None, "eth0");
    fixed
        .capability_args
        .insert("portMappings".into(), json!([]));
    node.run(&node.net, move |c, n| c.del(n, &fixed))??;
    ensure!(node.cache_entries()? == 0);
    Ok(())
}

#[test]
fn status_reports_whether_the_network_can_take_pods() -> Result<()> {
    let node = Node::new("cnicl-st", "1.0.0", true)?;
    node.run(&node.net, |c, n| c.status(n))??;

    let mut missing = node.net.clone();
    missing.plugins[1].plugin_type = "no-such-plugin".into();
    missing.plugins[1].raw["type"] = Value::from("no-such-plugin");
    let e = node
        .run(&missing, |c, n| c.status(n))?
        .expect_err("STATUS passed with a missing plugin");
    ensure!(
        matches!(&e, ClientError::PluginNotFound { plugin, .. } if plugin == "no-such-plugin"),
        "{e}"
    );

    // A 1.1 list asks the plugins; these reference plugins (CNI 1.0) do
    // not know STATUS, and the error says why.
    let mut newer = node.net.clone();
    newer.cni_version = "1.1.0".into();
    let e = node
        .run(&newer, |c, n| c.status(n))?
        .expect_err("STATUS of a 1.1 list passed with 1.0 plugins");
    ensure!(
        e.cni_error()
            .is_some_and(|c| c.code == 1 && c.msg.contains("1.0.0") && c.msg.contains("1.1.0")),
        "not an incompatible-version error: {e}"
    );
    Ok(())
}

#[test]
fn gc_removes_what_is_not_valid() -> Result<()> {
    let node = Node::new("cnicl-gc", "1.0.0", true)?;
    let keep_pod = NetNs::new("cnicl-gckeep")?;
    let gone_pod = NetNs::new("cnicl-gcgone")?;
    let keep = attachment("ctr-keep", &keep_pod, 18082);
    let gone = attachment("ctr-gone", &gone_pod, 18083);
    let (k, g) = (keep.clone(), gone.clone());
    node.run(&node.net, move |c, n| -> Result<(), ClientError> {
        c.add(n, &k)?;
        c.add(n, &g)?;
        Ok(())
    })??;
    ensure!(node.allocated()?.len() == 2);
    let keep_ip = pod_ip(&keep_pod)?.context("no address in the kept pod")?;

    let valid = vec![Attachment::new("ctr-keep", None, "eth0")];
    node.run(&node.net, move |c, n| c.gc(n, &valid))??;
    ensure!(pod_ip(&gone_pod)?.is_none(), "the stale pod kept eth0");
    ensure!(
        node.allocated()? == [keep_ip.split('/').next().unwrap_or_default()],
        "{:?}",
        node.allocated()?
    );
    let rules = node.nat_rules()?;
    ensure!(
        rules.contains("18082") && !rules.contains("18083"),
        "{rules}"
    );
    ensure!(node.cache_entries()? == 1);
    keep_pod.sh(&format!("busybox ping -c1 -W2 {GATEWAY}"))?;

    node.run(&node.net, move |c, n| c.del(n, &keep))??;
    ensure!(node.veths()?.trim().is_empty());
    Ok(())
}
