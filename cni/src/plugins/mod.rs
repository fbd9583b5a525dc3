//! berth's plugins, by the name they are installed (and invoked) under.

pub mod bridge;
pub mod host_local;
pub mod loopback;
pub mod portmap;

use crate::protocol::Plugin;

/// The plugins berth ships, as named in a CNI bin dir.
pub const NAMES: &[&str] = &["bridge", "host-local", "loopback", "portmap"];

/// The plugin installed as `name`.
pub fn by_name(name: &str) -> Option<Box<dyn Plugin + Send + Sync>> {
    match name {
        "bridge" => Some(Box::new(bridge::Bridge)),
        "host-local" => Some(Box::new(host_local::HostLocal)),
        "loopback" => Some(Box::new(loopback::Loopback)),
        "portmap" => Some(Box::new(portmap::Portmap::default())),
        _ => None,
    }
}

/// [`by_name`] in the shape of the client's in-process fast path
/// ([`crate::client::BuiltinFn`]).
pub fn builtin(name: &str) -> Option<Box<dyn Plugin>> {
    by_name(name).map(|p| p as Box<dyn Plugin>)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_has_a_plugin() {
        for n in NAMES {
            assert!(by_name(n).is_some(), "{n}");
        }
        assert!(by_name("berth").is_none());
    }
}
