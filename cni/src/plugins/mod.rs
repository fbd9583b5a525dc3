//! berth's CNI plugins, each a [`Plugin`] run by [`crate::protocol::run`],
//! whether from its executable or in-process.

pub mod portmap;

use crate::protocol::Plugin;

/// The plugin names berth answers to.
pub const NAMES: &[&str] = &["portmap"];

/// The plugin called `name`.
pub fn by_name(name: &str) -> Option<Box<dyn Plugin>> {
    match name {
        "portmap" => Some(Box::new(portmap::Portmap::default())),
        _ => None,
    }
}
