//! Version: which CRI the daemon speaks and which runtime it is.

use berth_proto::v1;
use tonic::{Response, Status};

/// The version of the CRI gRPC API itself, which the kubelet checks.
const KUBE_API_VERSION: &str = "0.1.0";

pub(super) fn version(_req: v1::VersionRequest) -> Result<Response<v1::VersionResponse>, Status> {
    Ok(Response::new(v1::VersionResponse {
        version: KUBE_API_VERSION.to_string(),
        runtime_name: "berth".to_string(),
        runtime_version: env!("CARGO_PKG_VERSION").to_string(),
        runtime_api_version: "v1".to_string(),
    }))
}
