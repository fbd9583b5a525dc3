//! Status and RuntimeConfig: the runtime's conditions and the cgroup driver
//! the kubelet must use.

use std::collections::HashMap;

use berth_proto::v1;
use tonic::{Response, Status};

/// The NetworkReady reason the kubelet knows from other runtimes whose
/// pod network is not set up.
const NETWORK_NOT_READY: &str = "NetworkPluginNotReady";

pub(super) fn status(_req: v1::StatusRequest) -> Result<Response<v1::StatusResponse>, Status> {
    let conditions = vec![
        v1::RuntimeCondition {
            r#type: "RuntimeReady".to_string(),
            status: true,
            reason: String::new(),
            message: String::new(),
        },
        v1::RuntimeCondition {
            r#type: "NetworkReady".to_string(),
            status: false,
            reason: NETWORK_NOT_READY.to_string(),
            message: "berth runtime: pod networking is not wired yet (it comes with the pod sandbox slice)".to_string(),
        },
    ];
    Ok(Response::new(v1::StatusResponse {
        status: Some(v1::RuntimeStatus { conditions }),
        info: HashMap::new(),
        runtime_handlers: Vec::new(),
        features: None,
    }))
}

pub(super) fn runtime_config(
    _req: v1::RuntimeConfigRequest,
) -> Result<Response<v1::RuntimeConfigResponse>, Status> {
    // berth manages cgroups through cgroupfs paths, not systemd slices.
    Ok(Response::new(v1::RuntimeConfigResponse {
        linux: Some(v1::LinuxRuntimeConfiguration {
            cgroup_driver: v1::CgroupDriver::Cgroupfs as i32,
        }),
    }))
}
