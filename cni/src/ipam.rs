//! Delegation to the IPAM plugin a network config names in `ipam.type`
//! (spec, "IP Address Management"): the same config and `CNI_*` environment,
//! the plugin found in `CNI_PATH`.
//!
//! Minimal version for the bridge plugin's worktree: it only executes the
//! plugin. (The IPAM helper's module replaces it when merged.)

use serde_json::Value;

use crate::invoke;
use crate::protocol::{Command, Invocation};
use crate::types::CniError;

/// `ipam.type` of a raw config, when there is one (an empty `ipam` means
/// no IP addresses: layer 2 only).
pub fn ipam_type(raw: &Value) -> Option<&str> {
    raw.get("ipam")
        .and_then(|i| i.get("type"))
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
}

/// Runs `command` of IPAM plugin `ipam_type` for the container of `inv`,
/// with `raw` (the plugin's own config) on stdin. Returns its result (ADD)
/// or None (DEL, CHECK).
pub fn delegate(
    ipam_type: &str,
    command: Command,
    inv: &Invocation,
    raw: &Value,
) -> Result<Option<Value>, CniError> {
    let exe = invoke::find(ipam_type, &inv.path)?;
    let mut inv = inv.clone();
    inv.command = command;
    inv.stdin = Vec::new();
    invoke::run(&exe, &inv, raw)
}
