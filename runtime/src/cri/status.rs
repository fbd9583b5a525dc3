//! Status and RuntimeConfig: the runtime's conditions and the cgroup driver
//! the kubelet must use.

use std::collections::HashMap;

use berth_proto::v1;
use tonic::{Response, Status};

use super::Daemon;

/// The NetworkReady reason the kubelet knows from other runtimes whose
/// pod network is not set up.
const NETWORK_NOT_READY: &str = "NetworkPluginNotReady";

pub(super) fn status(
    d: &Daemon,
    req: v1::StatusRequest,
) -> Result<Response<v1::StatusResponse>, Status> {
    let network = d.network.status();
    let conditions = vec![
        v1::RuntimeCondition {
            r#type: "RuntimeReady".to_string(),
            status: true,
            reason: String::new(),
            message: String::new(),
        },
        v1::RuntimeCondition {
            r#type: "NetworkReady".to_string(),
            status: network.is_ok(),
            reason: if network.is_ok() {
                String::new()
            } else {
                NETWORK_NOT_READY.to_string()
            },
            message: network.err().unwrap_or_default(),
        },
    ];
    let mut info = HashMap::new();
    if req.verbose {
        info.insert(
            "config".to_string(),
            serde_json::json!({
                "root": d.paths.root,
                "state": d.paths.state,
                "cgroupRoot": d.cgroup_root,
                "systemdCgroup": d.systemd_cgroup,
            })
            .to_string(),
        );
    }
    Ok(Response::new(v1::StatusResponse {
        status: Some(v1::RuntimeStatus { conditions }),
        info,
        runtime_handlers: Vec::new(),
        features: None,
    }))
}

pub(super) fn runtime_config(
    d: &Daemon,
    _req: v1::RuntimeConfigRequest,
) -> Result<Response<v1::RuntimeConfigResponse>, Status> {
    let driver = if d.systemd_cgroup {
        v1::CgroupDriver::Systemd
    } else {
        v1::CgroupDriver::Cgroupfs
    };
    Ok(Response::new(v1::RuntimeConfigResponse {
        linux: Some(v1::LinuxRuntimeConfiguration {
            cgroup_driver: driver as i32,
        }),
    }))
}
