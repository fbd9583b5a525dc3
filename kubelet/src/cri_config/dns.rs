//! A pod's resolver configuration from its `dnsPolicy` and `dnsConfig`, as
//! upstream's DNS configurer builds it.
//!
//! - `ClusterFirst` (the default) and `ClusterFirstWithHostNet`: the cluster
//!   DNS servers, the namespace's search domains before the host's, `ndots:5`.
//!   A node without cluster DNS (standalone, as for static pods) falls back to
//!   `Default`, as upstream does (upstream also records an event). With host
//!   networking `ClusterFirst` is `Default`.
//! - `Default`: the host's resolver. Berth's choice: the base is
//!   [`super::NodeContext::host_dns`], which the caller fills from the host's
//!   resolv.conf ([`parse_resolv_conf`]) or leaves empty; when the result is
//!   empty, no DNS config is sent and the runtime gives the pod the host's
//!   resolv.conf itself.
//! - `None`: nothing but the pod's `dnsConfig`.
//!
//! The pod's `dnsConfig` is then appended (servers and searches added without
//! duplicates, options merged by name, the pod's winning), and the result cut
//! to the resolver's limits: 3 servers, 32 search domains of 2048 characters
//! in all.

use std::collections::BTreeMap;

use berth_proto::v1::DnsConfig;
use k8s_openapi::api::core::v1::Pod;
use thiserror::Error;

use super::NodeContext;

/// Errors of this module.
#[derive(Debug, Error)]
pub enum DnsError {
    /// A `dnsPolicy` that is none of the four.
    #[error(
        "invalid dnsPolicy {0:?}: expected ClusterFirst, ClusterFirstWithHostNet, Default or None"
    )]
    Policy(String),
}

const MAX_SERVERS: usize = 3;
const MAX_SEARCHES: usize = 32;
const MAX_SEARCH_CHARS: usize = 2048;

/// Servers, search domains and options of a resolver.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DnsSettings {
    /// Name server addresses.
    pub servers: Vec<String>,
    /// Search domains.
    pub searches: Vec<String>,
    /// Options (`ndots:5`, `edns0`).
    pub options: Vec<String>,
}

/// Reads a resolv.conf: `nameserver`, `search` (the last line wins) and
/// `options` lines; comments and other lines are ignored.
pub fn parse_resolv_conf(text: &str) -> DnsSettings {
    let mut settings = DnsSettings::default();
    for line in text.lines() {
        let line = line.split(['#', ';']).next().unwrap_or_default();
        let mut fields = line.split_whitespace();
        match fields.next() {
            Some("nameserver") => settings.servers.extend(fields.next().map(str::to_owned)),
            Some("search") => settings.searches = fields.map(str::to_owned).collect(),
            Some("options") => settings.options.extend(fields.map(str::to_owned)),
            _ => {}
        }
    }
    settings
}

/// The DNS config of `pod` on `node`; `None` when the runtime should give the
/// pod the host's resolv.conf.
pub fn dns_config(pod: &Pod, node: &NodeContext) -> Result<Option<DnsConfig>, DnsError> {
    let spec = pod.spec.as_ref();
    let host_network = spec.and_then(|s| s.host_network).unwrap_or(false);
    let policy = spec
        .and_then(|s| s.dns_policy.as_deref())
        .filter(|p| !p.is_empty())
        .unwrap_or("ClusterFirst");
    let cluster = match policy {
        "None" => None,
        "ClusterFirstWithHostNet" => Some(true),
        "ClusterFirst" => Some(!host_network),
        "Default" => Some(false),
        other => return Err(DnsError::Policy(other.to_owned())),
    };
    let mut settings = match cluster {
        None => DnsSettings::default(),
        Some(true) if !node.cluster_dns.is_empty() => {
            let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
            let domain = &node.cluster_domain;
            let mut searches = if domain.is_empty() {
                Vec::new()
            } else {
                vec![
                    format!("{namespace}.svc.{domain}"),
                    format!("svc.{domain}"),
                    domain.clone(),
                ]
            };
            searches.extend(node.host_dns.searches.iter().cloned());
            DnsSettings {
                servers: node.cluster_dns.iter().map(ToString::to_string).collect(),
                searches,
                options: vec!["ndots:5".to_owned()],
            }
        }
        Some(_) => node.host_dns.clone(),
    };

    if let Some(own) = spec.and_then(|s| s.dns_config.as_ref()) {
        for server in own.nameservers.iter().flatten() {
            if !settings.servers.contains(server) {
                settings.servers.push(server.clone());
            }
        }
        for search in own.searches.iter().flatten() {
            if !settings.searches.contains(search) {
                settings.searches.push(search.clone());
            }
        }
        let mut options: BTreeMap<String, String> = settings
            .options
            .iter()
            .map(|o| match o.split_once(':') {
                Some((k, v)) => (k.to_owned(), v.to_owned()),
                None => (o.clone(), String::new()),
            })
            .collect();
        for option in own.options.iter().flatten() {
            let name = option.name.clone().unwrap_or_default();
            options.insert(name, option.value.clone().unwrap_or_default());
        }
        settings.options = options
            .into_iter()
            .map(|(k, v)| if v.is_empty() { k } else { format!("{k}:{v}") })
            .collect();
    }

    fit_limits(&mut settings);
    if settings == DnsSettings::default() && policy != "None" {
        return Ok(None);
    }
    Ok(Some(DnsConfig {
        servers: settings.servers,
        searches: settings.searches,
        options: settings.options,
    }))
}

fn fit_limits(settings: &mut DnsSettings) {
    settings.servers.truncate(MAX_SERVERS);
    let mut kept = Vec::new();
    let mut chars = 0;
    for search in settings.searches.drain(..) {
        // Counted as written in the file: separated by spaces.
        let len = search.len() + usize::from(!kept.is_empty());
        if kept.len() == MAX_SEARCHES || chars + len > MAX_SEARCH_CHARS || kept.contains(&search) {
            continue;
        }
        chars += len;
        kept.push(search);
    }
    settings.searches = kept;
}
