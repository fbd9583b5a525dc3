//! Pod networking through the CNI client: the network config the node
//! uses, ADD and DEL of a pod's attachment with the kubelet's arguments
//! and port mappings, NetworkReady, and the pod CIDR template.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use berth_cni::client::{Attachment, Client, NetworkConfig};
use berth_proto::v1;
use serde_json::{Map, Value, json};

use crate::config::CniConfig;

/// The interface name a pod's network gets, as every runtime uses.
pub const IFNAME: &str = "eth0";

/// The file UpdateRuntimeConfig writes from the template.
const TEMPLATE_OUTPUT: &str = "10-berth.conflist";

pub struct Network {
    conf_dir: PathBuf,
    bin_dirs: Vec<PathBuf>,
    cache_dir: PathBuf,
    template: Option<PathBuf>,
    builtin: bool,
    pod_cidr: Mutex<String>,
}

impl Network {
    pub fn new(c: &CniConfig) -> Self {
        Self {
            conf_dir: c.conf_dir.clone(),
            bin_dirs: c.bin_dirs.clone(),
            cache_dir: c.cache_dir.clone(),
            template: c.conf_template.clone(),
            builtin: c.builtin,
            pod_cidr: Mutex::new(String::new()),
        }
    }

    fn client(&self) -> Client {
        let c = Client::new(self.bin_dirs.clone(), self.cache_dir.clone());
        if self.builtin {
            c.with_builtin(berth_cni::plugins::builtin)
        } else {
            c
        }
    }

    /// The node's network config: the first valid file in the config dir.
    pub fn config(&self) -> Result<NetworkConfig, String> {
        let scan = NetworkConfig::scan_dir(&self.conf_dir)
            .map_err(|e| format!("reading CNI configs in {}: {e}", self.conf_dir.display()))?;
        match scan.config {
            Some(c) => Ok(c),
            None => {
                let why: Vec<String> = scan.skipped.iter().map(|e| e.to_string()).collect();
                Err(if why.is_empty() {
                    format!(
                        "no network config found in {} (cni config uninitialized)",
                        self.conf_dir.display()
                    )
                } else {
                    format!(
                        "no valid network config in {}: {}",
                        self.conf_dir.display(),
                        why.join("; ")
                    )
                })
            }
        }
    }

    /// NetworkReady: a config exists and its plugins say they can take ADDs.
    pub fn status(&self) -> Result<(), String> {
        let net = self.config()?;
        self.client()
            .status(&net)
            .map_err(|e| format!("network {:?}: {e}", net.name))
    }

    fn attachment(id: &str, netns: Option<&Path>, pod: &v1::PodSandboxConfig) -> Attachment {
        let mut a = Attachment::new(id, netns, IFNAME);
        let meta = pod.metadata.clone().unwrap_or_default();
        a.args = vec![
            ("IgnoreUnknown".into(), "1".into()),
            ("K8S_POD_NAMESPACE".into(), meta.namespace),
            ("K8S_POD_NAME".into(), meta.name),
            ("K8S_POD_INFRA_CONTAINER_ID".into(), id.into()),
            ("K8S_POD_UID".into(), meta.uid),
        ];
        let mut caps = Map::new();
        let mappings: Vec<Value> = pod
            .port_mappings
            .iter()
            .filter(|p| p.host_port > 0)
            .map(|p| {
                let proto = match v1::Protocol::try_from(p.protocol) {
                    Ok(v1::Protocol::Udp) => "udp",
                    Ok(v1::Protocol::Sctp) => "sctp",
                    _ => "tcp",
                };
                json!({
                    "hostPort": p.host_port, "containerPort": p.container_port,
                    "protocol": proto, "hostIP": p.host_ip,
                })
            })
            .collect();
        if !mappings.is_empty() {
            caps.insert("portMappings".into(), Value::Array(mappings));
        }
        if let Some(dns) = &pod.dns_config {
            caps.insert(
                "dns".into(),
                json!({"servers": dns.servers, "searches": dns.searches, "options": dns.options}),
            );
        }
        a.capability_args = caps;
        a
    }

    /// ADD: attaches the pod, returning the network's name and the pod's
    /// addresses (IPv4 first, as the kubelet expects the primary).
    pub fn setup(
        &self,
        id: &str,
        netns: &Path,
        pod: &v1::PodSandboxConfig,
    ) -> Result<(String, Vec<String>), String> {
        let net = self.config()?;
        let att = Self::attachment(id, Some(netns), pod);
        let result = self
            .client()
            .add(&net, &att)
            .map_err(|e| format!("network {:?}: {e}", net.name))?;
        // Addresses on the pod's interface (those with no interface index
        // count too: many plugins leave it out).
        let on_pod = |i: &Option<usize>| match i {
            Some(i) => result
                .interfaces
                .get(*i)
                .is_some_and(|f| f.name == IFNAME && !f.sandbox.is_empty()),
            None => true,
        };
        let mut ips: Vec<std::net::IpAddr> = result
            .ips
            .iter()
            .filter(|ip| on_pod(&ip.interface))
            .map(|ip| ip.address.addr())
            .collect();
        ips.sort_by_key(|ip| ip.is_ipv6());
        Ok((net.name, ips.into_iter().map(|ip| ip.to_string()).collect()))
    }

    /// DEL: detaches the pod from `network` (the name ADD used); a pod the
    /// network does not know is fine. When the config dir no longer holds
    /// that network, the config cached by ADD is used.
    pub fn teardown(
        &self,
        id: &str,
        network: &str,
        netns: Option<&Path>,
        pod: &v1::PodSandboxConfig,
    ) -> Result<(), String> {
        let client = self.client();
        let net = match self.config() {
            Ok(n) if n.name == network => n,
            _ => match client.cached_config(network, id, IFNAME) {
                Ok(Some(n)) => n,
                // Nothing cached: ADD never got far enough to record it.
                Ok(None) => return Ok(()),
                Err(e) => return Err(format!("network {network:?}: reading its cache: {e}")),
            },
        };
        let att = Self::attachment(id, netns, pod);
        client
            .del(&net, &att)
            .map_err(|e| format!("network {:?}: {e}", net.name))
    }

    /// UpdateRuntimeConfig: records the node's pod CIDR and, with a
    /// template configured, writes the network config from it.
    pub fn set_pod_cidr(&self, cidr: &str) -> Result<(), String> {
        let ranges: Vec<&str> = cidr
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        for r in &ranges {
            r.parse::<ipnet::IpNet>()
                .map_err(|e| format!("pod CIDR {r:?} is not a CIDR: {e}"))?;
        }
        *self.pod_cidr.lock().unwrap_or_else(|p| p.into_inner()) = cidr.to_string();
        let Some(template) = &self.template else {
            tracing::info!(cidr, "pod CIDR received; no CNI config template to render");
            return Ok(());
        };
        if ranges.is_empty() {
            return Ok(());
        }
        let text = std::fs::read_to_string(template)
            .map_err(|e| format!("reading the CNI template {}: {e}", template.display()))?;
        let range_list = ranges
            .iter()
            .map(|r| format!("[{{\"subnet\": \"{r}\"}}]"))
            .collect::<Vec<_>>()
            .join(", ");
        let out = text
            .replace("{{.PodCIDR}}", ranges[0])
            .replace("{{.PodCIDRRanges}}", &range_list);
        serde_json::from_str::<Value>(&out).map_err(|e| {
            format!(
                "the CNI template {} does not render to JSON: {e}",
                template.display()
            )
        })?;
        std::fs::create_dir_all(&self.conf_dir)
            .map_err(|e| format!("creating {}: {e}", self.conf_dir.display()))?;
        crate::state::write_atomic(&self.conf_dir.join(TEMPLATE_OUTPUT), out.as_bytes())
            .map_err(|e| e.to_string())
    }
}
