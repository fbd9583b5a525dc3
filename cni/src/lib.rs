//! Pod networking as CNI plugins (bridge, host-local, portmap, loopback) that
//! any CNI-speaking runtime can run, and the CNI client berth's runtime uses.
//!
//! - [`types`]: the wire format (configs, results, errors with the spec's codes);
//! - [`protocol`]: the execution protocol around a [`protocol::Plugin`], shared
//!   by the plugin executables and the in-process fast path;
//! - [`client`]: the CNI client berth's runtime runs network config lists
//!   with (config dir loading, chaining, the on-disk attachment cache);
//! - [`plugins`]: the plugins themselves, by name; [`exec`]: a plugin as an
//!   executable (berth invoked under the plugin's name);
//! - [`ipam`]: delegation to the IPAM plugin of a config.
//! - [`link`], [`nft`] (over [`nfnetlink`]), [`netns`]: netlink, nftables
//!   and namespace helpers the plugins share; [`invoke`]: running plugin
//!   executables; [`detach`]: kernel waits handed off rather than waited for.

pub mod client;
pub mod detach;
pub mod exec;
pub mod invoke;
pub mod ipam;
pub mod link;
pub mod netns;
pub mod nfnetlink;
pub mod nft;
pub mod plugins;
pub mod protocol;
pub mod types;
