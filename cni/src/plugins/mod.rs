//! berth's plugins, each a [`Plugin`] that runs in-process or as the
//! `berth` executable invoked under the plugin's name.

use crate::protocol::Plugin;

pub mod bridge;

/// The plugins berth ships.
pub const NAMES: &[&str] = &["bridge"];

/// The plugin called `name`.
pub fn by_name(name: &str) -> Option<Box<dyn Plugin>> {
    match name {
        "bridge" => Some(Box::new(bridge::Bridge)),
        _ => None,
    }
}
