//! The files a pod's containers share: `/etc/hostname`, `/etc/resolv.conf`
//! and `/etc/hosts`, written once into the pod's directory and bind-mounted
//! into each container.

/// DNS settings for a pod, as the kubelet sends them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dns {
    pub servers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

impl Dns {
    pub fn is_empty(&self) -> bool {
        self.servers.is_empty() && self.searches.is_empty() && self.options.is_empty()
    }
}

/// `resolv.conf` for `dns`, or `None` when the pod gave none and the host's
/// file is to be used, as containerd and CRI-O do.
pub fn resolv_conf(dns: &Dns) -> Option<String> {
    if dns.is_empty() {
        return None;
    }
    let mut out = String::new();
    if !dns.searches.is_empty() {
        out.push_str("search ");
        out.push_str(&dns.searches.join(" "));
        out.push('\n');
    }
    for s in &dns.servers {
        out.push_str("nameserver ");
        out.push_str(s);
        out.push('\n');
    }
    if !dns.options.is_empty() {
        out.push_str("options ");
        out.push_str(&dns.options.join(" "));
        out.push('\n');
    }
    Some(out)
}

/// `/etc/hosts` for a pod with its own network namespace. The kubelet mounts
/// its own file over it for pods it manages; this one serves crictl users.
pub fn hosts(hostname: &str) -> String {
    let mut out = String::from(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\n\
         fe00::2\tip6-allrouters\n",
    );
    if !hostname.is_empty() {
        out.push_str("127.0.1.1\t");
        out.push_str(hostname);
        out.push('\n');
    }
    out
}

/// Checks a hostname the way the kernel and DNS both accept it.
pub fn check_hostname(h: &str) -> Result<(), String> {
    if h.len() > 64 {
        return Err(format!(
            "hostname {h:?} is longer than 64 bytes (the kernel's limit)"
        ));
    }
    if h.bytes()
        .any(|b| !(b.is_ascii_alphanumeric() || b == b'-' || b == b'.'))
        || h.starts_with('-')
        || h.starts_with('.')
    {
        return Err(format!(
            "hostname {h:?} may hold only letters, digits, '-' and '.', and must start with a letter or digit"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_lists_search_servers_and_options() {
        let dns = Dns {
            servers: vec!["10.0.0.10".into(), "10.0.0.11".into()],
            searches: vec![
                "default.svc.cluster.local".into(),
                "svc.cluster.local".into(),
            ],
            options: vec!["ndots:5".into()],
        };
        assert_eq!(
            resolv_conf(&dns).unwrap(),
            "search default.svc.cluster.local svc.cluster.local\n\
             nameserver 10.0.0.10\nnameserver 10.0.0.11\noptions ndots:5\n"
        );
        assert_eq!(resolv_conf(&Dns::default()), None);
    }

    #[test]
    fn hosts_names_the_pod() {
        let h = hosts("web-0");
        assert!(h.starts_with("127.0.0.1\tlocalhost\n"));
        assert!(h.ends_with("127.0.1.1\tweb-0\n"));
        assert!(!hosts("").contains("127.0.1.1"));
    }

    #[test]
    fn hostnames_are_checked() {
        assert!(check_hostname("web-0.example").is_ok());
        assert!(check_hostname("a/b").is_err());
        assert!(check_hostname("-x").is_err());
        assert!(check_hostname(&"a".repeat(65)).is_err());
    }
}
