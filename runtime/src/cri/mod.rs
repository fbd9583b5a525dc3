//! The CRI (`runtime.v1`) gRPC services `berth runtime` serves: the
//! ImageService over the node's image store and the RuntimeService.
//!
//! One file per RPC group, as containerd's CRI plugin lays them out; this
//! module holds the service structs and the trait impls that dispatch to
//! them. RuntimeService RPCs for pods and containers answer `Unimplemented`
//! until the sandbox and container slices land: an honest error lets the
//! kubelet report it instead of acting on a made-up answer.

mod container;
pub mod daemon;
pub mod deadline;
mod error;
mod events;
mod image_fs_info;
mod image_list;
mod image_pull;
mod image_remove;
mod image_status;
pub mod network;
mod pod;
pub mod records;
pub mod spec;
mod stats;
mod status;
pub mod streaming;
pub mod user;
mod version;

use std::sync::Arc;

use berth_proto::v1;
use berth_proto::v1::image_service_server::ImageService;
use berth_proto::v1::runtime_service_server::RuntimeService;
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status};

use crate::image::store::ImageStore;
pub use daemon::{Daemon, Paths};

pub use error::{image_status as image_error_status, pull_status, registry_status};

/// The CRI ImageService over one image store.
#[derive(Debug, Clone)]
pub struct ImageServer {
    store: Arc<ImageStore>,
}

impl ImageServer {
    pub fn new(store: Arc<ImageStore>) -> Self {
        Self { store }
    }

    /// Runs store work that blocks (file I/O, locks) off the async workers.
    async fn blocking<T, F>(&self, what: &str, f: F) -> Result<T, Status>
    where
        T: Send + 'static,
        F: FnOnce(&ImageStore) -> Result<T, Status> + Send + 'static,
    {
        let store = Arc::clone(&self.store);
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| Status::internal(format!("{what}: the store worker failed: {e}")))?
    }
}

/// The CRI RuntimeService over the daemon's pods and containers.
#[derive(Clone)]
pub struct RuntimeServer {
    daemon: Arc<Daemon>,
    stream: Arc<crate::stream::StreamServer>,
}

impl RuntimeServer {
    pub fn new(daemon: Arc<Daemon>, stream: Arc<crate::stream::StreamServer>) -> Self {
        Self { daemon, stream }
    }

    /// Checks that a container exists and runs (exec and attach need it).
    async fn running(&self, what: &str, id: String) -> Result<(), Status> {
        self.blocking(what, move |d| {
            let shared = d.container(&id)?;
            let cid = daemon::lock(&shared).id.clone();
            match d.engine.state(&cid) {
                Ok(s) if s.status == crate::state::Status::Running => Ok(()),
                _ => Err(Status::failed_precondition(format!(
                    "container {cid} is not running"
                ))),
            }
        })
        .await
        .map(drop)
    }

    /// Runs daemon work (files, mounts, netlink, child processes) off the
    /// async workers.
    async fn blocking<T, F>(&self, what: &str, f: F) -> Result<Response<T>, Status>
    where
        T: Send + 'static,
        F: FnOnce(&Daemon) -> Result<T, Status> + Send + 'static,
    {
        let d = Arc::clone(&self.daemon);
        tokio::task::spawn_blocking(move || f(&d))
            .await
            .map_err(|e| Status::internal(format!("{what}: the worker failed: {e}")))?
            .map(Response::new)
    }
}

/// A list as a stream of messages of at most [`image_list::STREAM_BATCH`]
/// items, each well under the 16 MiB message limit.
fn batched<T: Clone + Send + 'static, R: Send + 'static>(
    items: Vec<T>,
    wrap: impl Fn(Vec<T>) -> R,
) -> Response<BoxStream<R>> {
    let batches: Vec<Result<R, Status>> = items
        .chunks(image_list::STREAM_BATCH)
        .map(|c| Ok(wrap(c.to_vec())))
        .collect();
    Response::new(Box::pin(tonic::codegen::tokio_stream::iter(batches)))
}

/// The answer of an RPC whose slice has not landed yet.
fn not_yet(rpc: &str) -> Status {
    Status::unimplemented(format!(
        "berth runtime: {rpc} is not implemented yet (this build serves images, Version, Status and RuntimeConfig)"
    ))
}

/// The image a request names, which every image RPC needs.
fn requested_image(rpc: &str, spec: Option<&v1::ImageSpec>) -> Result<String, Status> {
    match spec.map(|s| s.image.trim()) {
        Some(i) if !i.is_empty() => Ok(i.to_string()),
        _ => Err(Status::invalid_argument(format!(
            "{rpc}: the request names no image (image.image is empty)"
        ))),
    }
}

#[tonic::async_trait]
impl ImageService for ImageServer {
    type StreamImagesStream = BoxStream<v1::StreamImagesResponse>;

    async fn list_images(
        &self,
        request: Request<v1::ListImagesRequest>,
    ) -> Result<Response<v1::ListImagesResponse>, Status> {
        image_list::list_images(self, request.into_inner()).await
    }

    async fn stream_images(
        &self,
        request: Request<v1::StreamImagesRequest>,
    ) -> Result<Response<Self::StreamImagesStream>, Status> {
        image_list::stream_images(self, request.into_inner()).await
    }

    async fn image_status(
        &self,
        request: Request<v1::ImageStatusRequest>,
    ) -> Result<Response<v1::ImageStatusResponse>, Status> {
        image_status::image_status(self, request.into_inner()).await
    }

    async fn pull_image(
        &self,
        request: Request<v1::PullImageRequest>,
    ) -> Result<Response<v1::PullImageResponse>, Status> {
        image_pull::pull_image(self, request.into_inner()).await
    }

    async fn remove_image(
        &self,
        request: Request<v1::RemoveImageRequest>,
    ) -> Result<Response<v1::RemoveImageResponse>, Status> {
        image_remove::remove_image(self, request.into_inner()).await
    }

    async fn image_fs_info(
        &self,
        request: Request<v1::ImageFsInfoRequest>,
    ) -> Result<Response<v1::ImageFsInfoResponse>, Status> {
        image_fs_info::image_fs_info(self, request.into_inner()).await
    }
}

#[tonic::async_trait]
impl RuntimeService for RuntimeServer {
    type StreamPodSandboxesStream = BoxStream<v1::StreamPodSandboxesResponse>;
    type StreamContainersStream = BoxStream<v1::StreamContainersResponse>;
    type StreamContainerStatsStream = BoxStream<v1::StreamContainerStatsResponse>;
    type StreamPodSandboxStatsStream = BoxStream<v1::StreamPodSandboxStatsResponse>;
    type GetContainerEventsStream = BoxStream<v1::ContainerEventResponse>;
    type StreamPodSandboxMetricsStream = BoxStream<v1::StreamPodSandboxMetricsResponse>;

    async fn version(
        &self,
        request: Request<v1::VersionRequest>,
    ) -> Result<Response<v1::VersionResponse>, Status> {
        version::version(request.into_inner())
    }

    async fn run_pod_sandbox(
        &self,
        request: Request<v1::RunPodSandboxRequest>,
    ) -> Result<Response<v1::RunPodSandboxResponse>, Status> {
        let req = request.into_inner();
        self.blocking("RunPodSandbox", move |d| {
            d.run_pod_sandbox(req)
                .map(|pod_sandbox_id| v1::RunPodSandboxResponse { pod_sandbox_id })
        })
        .await
    }

    async fn stop_pod_sandbox(
        &self,
        request: Request<v1::StopPodSandboxRequest>,
    ) -> Result<Response<v1::StopPodSandboxResponse>, Status> {
        let id = request.into_inner().pod_sandbox_id;
        self.blocking("StopPodSandbox", move |d| {
            d.stop_pod_sandbox(&id)
                .map(|()| v1::StopPodSandboxResponse {})
        })
        .await
    }

    async fn remove_pod_sandbox(
        &self,
        request: Request<v1::RemovePodSandboxRequest>,
    ) -> Result<Response<v1::RemovePodSandboxResponse>, Status> {
        let id = request.into_inner().pod_sandbox_id;
        self.blocking("RemovePodSandbox", move |d| {
            d.remove_pod_sandbox(&id)
                .map(|()| v1::RemovePodSandboxResponse {})
        })
        .await
    }

    async fn pod_sandbox_status(
        &self,
        request: Request<v1::PodSandboxStatusRequest>,
    ) -> Result<Response<v1::PodSandboxStatusResponse>, Status> {
        let req = request.into_inner();
        self.blocking("PodSandboxStatus", move |d| {
            d.pod_sandbox_status(&req.pod_sandbox_id, req.verbose)
        })
        .await
    }

    async fn list_pod_sandbox(
        &self,
        request: Request<v1::ListPodSandboxRequest>,
    ) -> Result<Response<v1::ListPodSandboxResponse>, Status> {
        let filter = request.into_inner().filter;
        self.blocking("ListPodSandbox", move |d| {
            Ok(v1::ListPodSandboxResponse {
                items: d.list_pod_sandbox(filter),
            })
        })
        .await
    }

    async fn stream_pod_sandboxes(
        &self,
        request: Request<v1::StreamPodSandboxesRequest>,
    ) -> Result<Response<Self::StreamPodSandboxesStream>, Status> {
        let filter = request.into_inner().filter;
        let items = self
            .blocking(
                "StreamPodSandboxes",
                move |d| Ok(d.list_pod_sandbox(filter)),
            )
            .await?
            .into_inner();
        Ok(batched(items, |c| v1::StreamPodSandboxesResponse {
            pod_sandboxes: c,
        }))
    }

    async fn create_container(
        &self,
        request: Request<v1::CreateContainerRequest>,
    ) -> Result<Response<v1::CreateContainerResponse>, Status> {
        let req = request.into_inner();
        self.blocking("CreateContainer", move |d| {
            d.create_container(req)
                .map(|container_id| v1::CreateContainerResponse { container_id })
        })
        .await
    }

    async fn start_container(
        &self,
        request: Request<v1::StartContainerRequest>,
    ) -> Result<Response<v1::StartContainerResponse>, Status> {
        let id = request.into_inner().container_id;
        self.blocking("StartContainer", move |d| {
            d.start_container(&id)
                .map(|()| v1::StartContainerResponse {})
        })
        .await
    }

    async fn stop_container(
        &self,
        request: Request<v1::StopContainerRequest>,
    ) -> Result<Response<v1::StopContainerResponse>, Status> {
        let req = request.into_inner();
        self.blocking("StopContainer", move |d| {
            d.stop_container(&req.container_id, req.timeout)
                .map(|()| v1::StopContainerResponse {})
        })
        .await
    }

    async fn remove_container(
        &self,
        request: Request<v1::RemoveContainerRequest>,
    ) -> Result<Response<v1::RemoveContainerResponse>, Status> {
        let id = request.into_inner().container_id;
        self.blocking("RemoveContainer", move |d| {
            d.remove_container(&id)
                .map(|()| v1::RemoveContainerResponse {})
        })
        .await
    }

    async fn list_containers(
        &self,
        request: Request<v1::ListContainersRequest>,
    ) -> Result<Response<v1::ListContainersResponse>, Status> {
        let filter = request.into_inner().filter;
        self.blocking("ListContainers", move |d| {
            Ok(v1::ListContainersResponse {
                containers: d.list_containers(filter),
            })
        })
        .await
    }

    async fn stream_containers(
        &self,
        request: Request<v1::StreamContainersRequest>,
    ) -> Result<Response<Self::StreamContainersStream>, Status> {
        let filter = request.into_inner().filter;
        let items = self
            .blocking("StreamContainers", move |d| Ok(d.list_containers(filter)))
            .await?
            .into_inner();
        Ok(batched(items, |c| v1::StreamContainersResponse {
            containers: c,
        }))
    }

    async fn container_status(
        &self,
        request: Request<v1::ContainerStatusRequest>,
    ) -> Result<Response<v1::ContainerStatusResponse>, Status> {
        let req = request.into_inner();
        self.blocking("ContainerStatus", move |d| {
            d.container_status(&req.container_id, req.verbose)
        })
        .await
    }

    async fn update_container_resources(
        &self,
        request: Request<v1::UpdateContainerResourcesRequest>,
    ) -> Result<Response<v1::UpdateContainerResourcesResponse>, Status> {
        let req = request.into_inner();
        self.blocking("UpdateContainerResources", move |d| {
            d.update_container_resources(&req.container_id, req.linux)
                .map(|()| v1::UpdateContainerResourcesResponse {})
        })
        .await
    }

    async fn reopen_container_log(
        &self,
        request: Request<v1::ReopenContainerLogRequest>,
    ) -> Result<Response<v1::ReopenContainerLogResponse>, Status> {
        let id = request.into_inner().container_id;
        self.blocking("ReopenContainerLog", move |d| {
            d.reopen_container_log(&id)
                .map(|()| v1::ReopenContainerLogResponse {})
        })
        .await
    }

    async fn exec_sync(
        &self,
        request: Request<v1::ExecSyncRequest>,
    ) -> Result<Response<v1::ExecSyncResponse>, Status> {
        let req = request.into_inner();
        self.blocking("ExecSync", move |d| {
            d.exec_sync(&req.container_id, req.cmd, req.timeout)
        })
        .await
    }

    async fn exec(
        &self,
        request: Request<v1::ExecRequest>,
    ) -> Result<Response<v1::ExecResponse>, Status> {
        let req = request.into_inner();
        self.running("Exec", req.container_id.clone()).await?;
        self.stream
            .get_exec(&req)
            .map(Response::new)
            .map_err(|e| Status::new(e.grpc_code(), e.to_string()))
    }

    async fn attach(
        &self,
        request: Request<v1::AttachRequest>,
    ) -> Result<Response<v1::AttachResponse>, Status> {
        let req = request.into_inner();
        self.running("Attach", req.container_id.clone()).await?;
        self.stream
            .get_attach(&req)
            .map(Response::new)
            .map_err(|e| Status::new(e.grpc_code(), e.to_string()))
    }

    async fn port_forward(
        &self,
        request: Request<v1::PortForwardRequest>,
    ) -> Result<Response<v1::PortForwardResponse>, Status> {
        let req = request.into_inner();
        let id = req.pod_sandbox_id.clone();
        self.blocking("PortForward", move |d| d.sandbox(&id).map(drop))
            .await?;
        self.stream
            .get_port_forward(&req)
            .map(Response::new)
            .map_err(|e| Status::new(e.grpc_code(), e.to_string()))
    }

    async fn container_stats(
        &self,
        request: Request<v1::ContainerStatsRequest>,
    ) -> Result<Response<v1::ContainerStatsResponse>, Status> {
        let id = request.into_inner().container_id;
        self.blocking("ContainerStats", move |d| {
            d.container_stats(&id)
                .map(|s| v1::ContainerStatsResponse { stats: Some(s) })
        })
        .await
    }

    async fn list_container_stats(
        &self,
        request: Request<v1::ListContainerStatsRequest>,
    ) -> Result<Response<v1::ListContainerStatsResponse>, Status> {
        let filter = request.into_inner().filter;
        self.blocking("ListContainerStats", move |d| {
            Ok(v1::ListContainerStatsResponse {
                stats: d.list_container_stats(filter),
            })
        })
        .await
    }

    async fn stream_container_stats(
        &self,
        request: Request<v1::StreamContainerStatsRequest>,
    ) -> Result<Response<Self::StreamContainerStatsStream>, Status> {
        let filter = request.into_inner().filter;
        let items = self
            .blocking("StreamContainerStats", move |d| {
                Ok(d.list_container_stats(filter))
            })
            .await?
            .into_inner();
        Ok(batched(items, |c| v1::StreamContainerStatsResponse {
            container_stats: c,
        }))
    }

    async fn pod_sandbox_stats(
        &self,
        request: Request<v1::PodSandboxStatsRequest>,
    ) -> Result<Response<v1::PodSandboxStatsResponse>, Status> {
        let id = request.into_inner().pod_sandbox_id;
        self.blocking("PodSandboxStats", move |d| {
            d.pod_sandbox_stats(&id)
                .map(|s| v1::PodSandboxStatsResponse { stats: Some(s) })
        })
        .await
    }

    async fn list_pod_sandbox_stats(
        &self,
        request: Request<v1::ListPodSandboxStatsRequest>,
    ) -> Result<Response<v1::ListPodSandboxStatsResponse>, Status> {
        let filter = request.into_inner().filter;
        self.blocking("ListPodSandboxStats", move |d| {
            Ok(v1::ListPodSandboxStatsResponse {
                stats: d.list_pod_sandbox_stats(filter),
            })
        })
        .await
    }

    async fn stream_pod_sandbox_stats(
        &self,
        request: Request<v1::StreamPodSandboxStatsRequest>,
    ) -> Result<Response<Self::StreamPodSandboxStatsStream>, Status> {
        let filter = request.into_inner().filter;
        let items = self
            .blocking("StreamPodSandboxStats", move |d| {
                Ok(d.list_pod_sandbox_stats(filter))
            })
            .await?
            .into_inner();
        Ok(batched(items, |c| v1::StreamPodSandboxStatsResponse {
            pod_sandbox_stats: c,
        }))
    }

    async fn update_runtime_config(
        &self,
        request: Request<v1::UpdateRuntimeConfigRequest>,
    ) -> Result<Response<v1::UpdateRuntimeConfigResponse>, Status> {
        let cidr = request
            .into_inner()
            .runtime_config
            .and_then(|c| c.network_config)
            .map(|n| n.pod_cidr)
            .unwrap_or_default();
        self.blocking("UpdateRuntimeConfig", move |d| {
            d.network
                .set_pod_cidr(&cidr)
                .map_err(Status::invalid_argument)
                .map(|()| v1::UpdateRuntimeConfigResponse {})
        })
        .await
    }

    async fn status(
        &self,
        request: Request<v1::StatusRequest>,
    ) -> Result<Response<v1::StatusResponse>, Status> {
        let d = Arc::clone(&self.daemon);
        let req = request.into_inner();
        tokio::task::spawn_blocking(move || status::status(&d, req))
            .await
            .map_err(|e| Status::internal(format!("Status: the worker failed: {e}")))?
    }

    async fn checkpoint_container(
        &self,
        _request: Request<v1::CheckpointContainerRequest>,
    ) -> Result<Response<v1::CheckpointContainerResponse>, Status> {
        Err(not_yet("CheckpointContainer"))
    }

    async fn checkpoint_pod(
        &self,
        _request: Request<v1::CheckpointPodRequest>,
    ) -> Result<Response<v1::CheckpointPodResponse>, Status> {
        Err(not_yet("CheckpointPod"))
    }

    async fn restore_pod(
        &self,
        _request: Request<v1::RestorePodRequest>,
    ) -> Result<Response<v1::RestorePodResponse>, Status> {
        Err(not_yet("RestorePod"))
    }

    async fn get_container_events(
        &self,
        request: Request<v1::GetEventsRequest>,
    ) -> Result<Response<Self::GetContainerEventsStream>, Status> {
        let _ = request;
        let rx = self.daemon.events.subscribe();
        let stream = futures::stream::unfold(rx, |mut rx| async move {
            match rx.recv().await {
                Ok(ev) => Some((Ok(ev), rx)),
                // A subscriber that fell behind gets an error it can act on
                // (relist) rather than a silent gap.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => Some((
                    Err(Status::data_loss(format!(
                        "{n} container events were dropped; relist"
                    ))),
                    rx,
                )),
                Err(tokio::sync::broadcast::error::RecvError::Closed) => None,
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn list_metric_descriptors(
        &self,
        request: Request<v1::ListMetricDescriptorsRequest>,
    ) -> Result<Response<v1::ListMetricDescriptorsResponse>, Status> {
        let _ = request;
        Ok(Response::new(v1::ListMetricDescriptorsResponse {
            descriptors: Vec::new(),
        }))
    }

    async fn list_pod_sandbox_metrics(
        &self,
        request: Request<v1::ListPodSandboxMetricsRequest>,
    ) -> Result<Response<v1::ListPodSandboxMetricsResponse>, Status> {
        let _ = request;
        Ok(Response::new(v1::ListPodSandboxMetricsResponse {
            pod_metrics: Vec::new(),
        }))
    }

    async fn stream_pod_sandbox_metrics(
        &self,
        request: Request<v1::StreamPodSandboxMetricsRequest>,
    ) -> Result<Response<Self::StreamPodSandboxMetricsStream>, Status> {
        let _ = request;
        Ok(batched(Vec::new(), |c| {
            v1::StreamPodSandboxMetricsResponse {
                pod_sandbox_metrics: c,
            }
        }))
    }

    async fn runtime_config(
        &self,
        request: Request<v1::RuntimeConfigRequest>,
    ) -> Result<Response<v1::RuntimeConfigResponse>, Status> {
        status::runtime_config(&self.daemon, request.into_inner())
    }

    async fn update_pod_sandbox_resources(
        &self,
        _request: Request<v1::UpdatePodSandboxResourcesRequest>,
    ) -> Result<Response<v1::UpdatePodSandboxResourcesResponse>, Status> {
        Err(not_yet("UpdatePodSandboxResources"))
    }
}
