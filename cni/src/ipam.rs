//! Delegation to the IPAM plugin a main plugin's config names in
//! `ipam.type`, as the spec describes: the same command, environment and
//! config. berth's own `host-local` runs in-process through the same
//! protocol code as its executable (so it behaves identically, at no exec
//! cost); any other IPAM plugin is executed from `CNI_PATH`.

use serde_json::Value;

use crate::invoke;
use crate::plugins::host_local::HostLocal;
use crate::protocol::{self, Command, Invocation};
use crate::types::{CniError, CniResult, code};

/// The IPAM plugin a config names (`ipam.type`), if any.
pub fn ipam_type(raw_config: &Value) -> Option<&str> {
    raw_config
        .get("ipam")
        .and_then(|i| i.get("type"))
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
}

/// Runs IPAM plugin `ipam_type` for `command` with the main plugin's config
/// and returns what it printed (ADD: its result; otherwise usually nothing).
pub fn delegate_raw(
    ipam_type: &str,
    command: Command,
    inv: &Invocation,
    raw_config: &Value,
) -> Result<Option<Value>, CniError> {
    let stdin = serde_json::to_vec(raw_config).map_err(|e| {
        CniError::new(code::IO_FAILURE, "cannot encode the IPAM config").with_details(e.to_string())
    })?;
    let inv = Invocation {
        command,
        stdin,
        ..inv.clone()
    };
    if ipam_type == "host-local" {
        let out = protocol::run(&HostLocal, &inv);
        if out.exit_code != 0 {
            return Err(
                serde_json::from_slice::<CniError>(&out.stdout).unwrap_or_else(|e| {
                    CniError::new(
                        code::IO_FAILURE,
                        "host-local failed without an error result",
                    )
                    .with_details(e.to_string())
                }),
            );
        }
        if out.stdout.is_empty() {
            return Ok(None);
        }
        return serde_json::from_slice::<Value>(&out.stdout)
            .map(Some)
            .map_err(|e| {
                CniError::new(code::DECODE_FAILURE, "host-local printed no JSON result")
                    .with_details(e.to_string())
            });
    }
    let exe = invoke::find(ipam_type, &inv.path)?;
    invoke::run(&exe, &inv, raw_config)
}

/// Runs the IPAM plugin of `raw_config` for `command` (ADD gives a result;
/// DEL, CHECK, STATUS and GC give `None`).
pub fn delegate(
    command: Command,
    inv: &Invocation,
    raw_config: &Value,
) -> Result<Option<CniResult>, CniError> {
    let ipam_type = ipam_type(raw_config)
        .ok_or_else(|| CniError::new(code::INVALID_CONFIG, "ipam.type is missing"))?;
    let value = delegate_raw(ipam_type, command, inv, raw_config)?;
    match (command, value) {
        (Command::Add, Some(v)) => CniResult::from_value(&v).map(Some),
        (Command::Add, None) => Err(CniError::new(
            code::DECODE_FAILURE,
            format!("IPAM plugin {ipam_type} gave no result for ADD"),
        )),
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn inv(command: Command) -> Invocation {
        Invocation {
            command,
            container_id: "c1".into(),
            netns: Some("/run/netns/x".into()),
            ifname: "eth0".into(),
            args: Vec::new(),
            path: vec!["/nonexistent-berth-cni".into()],
            stdin: Vec::new(),
        }
    }

    #[test]
    fn host_local_runs_in_process() {
        let dir = tempfile::tempdir().unwrap();
        let conf = json!({"cniVersion": "1.0.0", "name": "n", "type": "bridge",
            "ipam": {"type": "host-local", "subnet": "10.40.0.0/24", "dataDir": dir.path()}});
        let r = delegate(Command::Add, &inv(Command::Add), &conf)
            .unwrap()
            .unwrap();
        assert_eq!(r.ips[0].address.to_string(), "10.40.0.2/24");
        assert!(dir.path().join("n/10.40.0.2").is_file());
        assert_eq!(
            delegate(Command::Del, &inv(Command::Del), &conf).unwrap(),
            None
        );
        assert!(!dir.path().join("n/10.40.0.2").exists());
    }

    #[test]
    fn other_types_come_from_cni_path_and_errors_pass_through() {
        let conf = json!({"cniVersion": "1.0.0", "name": "n", "type": "bridge",
            "ipam": {"type": "dhcp"}});
        let e = delegate(Command::Add, &inv(Command::Add), &conf).unwrap_err();
        assert!(e.msg.contains("/nonexistent-berth-cni"), "{}", e.msg);
        let conf = json!({"cniVersion": "1.0.0", "name": "n", "type": "bridge",
            "ipam": {"type": "host-local", "subnet": "10.40.0.0/33"}});
        let e = delegate(Command::Add, &inv(Command::Add), &conf).unwrap_err();
        assert_eq!(e.code, code::INVALID_CONFIG);
        let e = delegate(
            Command::Add,
            &inv(Command::Add),
            &json!({"cniVersion": "1.0.0", "name": "n", "type": "bridge"}),
        )
        .unwrap_err();
        assert_eq!(e.code, code::INVALID_CONFIG);
    }
}
