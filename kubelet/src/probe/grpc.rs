//! gRPC probes: `grpc.health.v1.Health/Check` on the pod's IP and the
//! probe's port, as upstream's `grpc` prober; in `mode: TLS` over TLS
//! without certificate verification, else in plaintext. The two messages are tiny, so
//! they are declared here with prost rather than compiled from a `.proto`.

use std::net::SocketAddr;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::GRPCAction;
use tokio::net::TcpStream;
use tonic::Code;
use tonic::transport::{Channel, Endpoint, Uri};

use super::handler::{ProbeError, ProbeResult};
use super::tls::{Alpn, insecure_client};

/// The RPC's path.
pub const CHECK_PATH: &str = "/grpc.health.v1.Health/Check";

/// `grpc.health.v1.HealthCheckRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HealthCheckRequest {
    #[prost(string, tag = "1")]
    pub service: String,
}

/// `grpc.health.v1.HealthCheckResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HealthCheckResponse {
    /// A [`ServingStatus`].
    #[prost(int32, tag = "1")]
    pub status: i32,
}

/// `grpc.health.v1.HealthCheckResponse.ServingStatus`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServingStatus {
    Unknown = 0,
    Serving = 1,
    NotServing = 2,
    ServiceUnknown = 3,
}

impl ServingStatus {
    /// The name upstream's failure message quotes.
    pub fn name(status: i32) -> &'static str {
        match status {
            0 => "UNKNOWN",
            1 => "SERVING",
            2 => "NOT_SERVING",
            3 => "SERVICE_UNKNOWN",
            _ => "(unknown status)",
        }
    }
}

/// One health check of `addr`; like upstream, every way of not getting
/// `SERVING` back within `timeout` is the probe's failure.
pub async fn check(action: &GRPCAction, addr: SocketAddr, timeout: Duration) -> ProbeResult {
    let tls = match action.mode.as_deref() {
        None | Some("" | "Plaintext") => false,
        Some("TLS") => true,
        Some(other) => return ProbeResult::Unknown(ProbeError::GrpcMode(other.to_owned())),
    };
    let service = action.service.clone().unwrap_or_default();
    let work = async {
        let channel = connect(addr, tls)
            .await
            .map_err(|e| format!("failed to connect service {addr:?} within {timeout:?}: {e}"))?;
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready()
            .await
            .map_err(|e| format!("failed to connect service {addr:?}: {e}"))?;
        let request = tonic::Request::new(HealthCheckRequest {
            service: service.clone(),
        });
        let path = http::uri::PathAndQuery::from_static(CHECK_PATH);
        let response: Result<tonic::Response<HealthCheckResponse>, tonic::Status> = grpc
            .unary(request, path, tonic_prost::ProstCodec::default())
            .await;
        match response {
            Ok(r) => Ok(r.into_inner().status),
            Err(s) if s.code() == Code::Unimplemented => Err(format!(
                "this server does not implement the grpc health protocol (grpc.health.v1.Health): {}",
                s.message()
            )),
            Err(s) => Err(format!(
                "health rpc probe failed: {:?}: {}",
                s.code(),
                s.message()
            )),
        }
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(Ok(status)) if status == ServingStatus::Serving as i32 => ProbeResult::Success,
        Ok(Ok(status)) => ProbeResult::Failure(format!(
            "service unhealthy (responded with {:?})",
            ServingStatus::name(status)
        )),
        Ok(Err(message)) => ProbeResult::Failure(message),
        Err(_) => ProbeResult::Failure(format!(
            "timeout: health rpc to {addr} (service {service:?}) did not complete within {timeout:?}"
        )),
    }
}

/// A channel to `addr`, over TLS without verification when `tls`.
async fn connect(addr: SocketAddr, tls: bool) -> Result<Channel, String> {
    let scheme = if tls { "https" } else { "http" };
    let endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
        .map_err(|e| e.to_string())?
        .user_agent(super::handler::USER_AGENT)
        .map_err(|e| e.to_string())?;
    if !tls {
        return endpoint.connect().await.map_err(|e| e.to_string());
    }
    let config = insecure_client(Alpn::H2).map_err(|e| format!("TLS client: {e}"))?;
    endpoint
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let config = config.clone();
            async move {
                let stream = TcpStream::connect(addr).await?;
                let stream = tokio_rustls::TlsConnector::from(config)
                    .connect(addr.ip().into(), stream)
                    .await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }))
        .await
        .map_err(|e| e.to_string())
}
