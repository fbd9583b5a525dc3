//! Pod networking as CNI plugins (bridge, host-local, portmap, loopback) that
//! any CNI-speaking runtime can run, and the CNI client berth's runtime uses.
//!
//! - [`types`]: the wire format (configs, results, errors with the spec's codes);
//! - [`protocol`]: the execution protocol around a [`protocol::Plugin`], shared
//!   by the plugin executables and the in-process fast path.

pub mod invoke;
pub mod netns;
pub mod plugins;
pub mod protocol;
pub mod types;
