//! The kubelet's only way to talk to a container runtime: a typed CRI v1
//! client on the runtime's unix socket, as upstream's `remote_runtime.go`
//! and `remote_image.go`.
//!
//! A thin layer on purpose: one method per RPC the pod worker needs, a
//! deadline on each, and errors that name the RPC and keep the gRPC code
//! (so a caller can tell `NotFound` from a failure). No retries and no
//! caching: those are the caller's policy. One exception to thinness:
//! ListPodSandbox and ListContainers calls that select by labels and state
//! only (what every pod worker's sync asks) share one unfiltered request
//! with the calls that overlap them, and are filtered here (see
//! [`coalesce`]): a node with hundreds of pods would otherwise keep the
//! runtime busy answering lists.
//!
//! Deadlines follow upstream's: every call gets the request timeout
//! (default 2 min, upstream's `--runtime-request-timeout`), except that
//! StopContainer and ExecSync get their own timeout added to it (the runtime
//! may legitimately spend that long), ExecSync without a timeout and
//! PullImage get none by default (a pull takes as long as the image does),
//! and GetContainerEvents has a deadline only for its start.
//!
//! The deadline is sent to the runtime (`grpc-timeout`) so it can give up
//! too, and enforced here as well, so a runtime that ignores it cannot hang
//! the pod worker.

mod coalesce;

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use berth_proto::v1;
use berth_proto::v1::image_service_client::ImageServiceClient;
use berth_proto::v1::runtime_service_client::RuntimeServiceClient;
use futures::{Stream, StreamExt};
use hyper_util::rt::TokioIo;
use tonic::Code;
use tonic::transport::{Channel, Endpoint, Uri};

/// Upstream's default `--runtime-request-timeout`.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// The only CRI API version berth's kubelet speaks.
pub const CRI_API_VERSION: &str = "v1";

#[derive(Debug, thiserror::Error)]
pub enum CriClientError {
    #[error("container runtime endpoint {endpoint:?}: {reason}")]
    BadEndpoint {
        endpoint: String,
        reason: &'static str,
    },
    #[error("cannot connect to the container runtime at {}: {source}", path.display())]
    Connect {
        path: PathBuf,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("the container runtime at {} did not accept a connection in {timeout:?}", path.display())]
    ConnectTimeout { path: PathBuf, timeout: Duration },
    #[error(
        "container runtime {runtime_name} {runtime_version} speaks CRI API {api_version:?}; \
         berth's kubelet needs \"{CRI_API_VERSION}\" (upgrade the runtime)"
    )]
    UnsupportedApi {
        runtime_name: String,
        runtime_version: String,
        api_version: String,
    },
    #[error("CRI {rpc}: {code:?}: {message}")]
    Rpc {
        rpc: &'static str,
        code: Code,
        message: String,
    },
    #[error("CRI {rpc}: no answer from the runtime in {timeout:?}")]
    Timeout {
        rpc: &'static str,
        timeout: Duration,
    },
    #[error("CRI {rpc}: the runtime's answer has no {field}")]
    MissingField {
        rpc: &'static str,
        field: &'static str,
    },
}

impl CriClientError {
    fn from_status(rpc: &'static str, status: tonic::Status) -> Self {
        CriClientError::Rpc {
            rpc,
            code: status.code(),
            message: status.message().to_string(),
        }
    }

    /// The gRPC code, for the errors that have one; a deadline that expired
    /// here counts as `DeadlineExceeded`, as if the runtime had said so.
    pub fn code(&self) -> Option<Code> {
        match self {
            CriClientError::Rpc { code, .. } => Some(*code),
            CriClientError::Timeout { .. } => Some(Code::DeadlineExceeded),
            _ => None,
        }
    }

    pub fn is_not_found(&self) -> bool {
        self.code() == Some(Code::NotFound)
    }

    /// The same error for another caller of a shared request (which fails
    /// only with the call errors, all plain data).
    fn duplicate(&self) -> Self {
        match self {
            CriClientError::Rpc { rpc, code, message } => CriClientError::Rpc {
                rpc,
                code: *code,
                message: message.clone(),
            },
            CriClientError::Timeout { rpc, timeout } => CriClientError::Timeout {
                rpc,
                timeout: *timeout,
            },
            CriClientError::MissingField { rpc, field } => {
                CriClientError::MissingField { rpc, field }
            }
            other => CriClientError::Rpc {
                rpc: "(shared request)",
                code: Code::Unknown,
                message: other.to_string(),
            },
        }
    }
}

/// A verbose status RPC's answer: the status, and the runtime's free-form
/// `info` (empty unless asked for with `verbose`).
#[derive(Debug, Clone)]
pub struct Verbose<T> {
    pub status: T,
    pub info: HashMap<String, String>,
}

/// The stream of GetContainerEvents; it ends when the runtime closes it.
pub type ContainerEvents =
    Pin<Box<dyn Stream<Item = Result<v1::ContainerEventResponse, CriClientError>> + Send>>;

/// Where the runtime listens: the path of its unix socket.
///
/// Accepted: `unix:///abs/path` (upstream's form) and a plain absolute path.
/// Refused: other schemes (berth's kubelet only talks to a local runtime
/// over a unix socket), and relative paths, with or without `unix://`:
/// `unix://run/x.sock` reads as a host name `run` to most URL parsers, and a
/// socket path that depends on the kubelet's working directory is a
/// misconfiguration waiting to happen.
pub fn parse_endpoint(endpoint: &str) -> Result<PathBuf, CriClientError> {
    let bad = |reason| CriClientError::BadEndpoint {
        endpoint: endpoint.to_string(),
        reason,
    };
    let path = match endpoint.split_once("://") {
        Some(("unix", path)) => path,
        Some(_) => return Err(bad("only unix:///absolute/path sockets are supported")),
        None => endpoint,
    };
    if path.is_empty() {
        return Err(bad("no socket path"));
    }
    if !path.starts_with('/') {
        return Err(bad(
            "the socket path must be absolute (unix:///run/x.sock, not unix://run/x.sock)",
        ));
    }
    Ok(PathBuf::from(path))
}

/// A connected CRI client. Cheap to clone; calls take `&self` and may run
/// concurrently (they share one HTTP/2 connection).
#[derive(Clone)]
pub struct CriClient {
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
    path: PathBuf,
    request_timeout: Duration,
    pull_timeout: Option<Duration>,
    sandboxes: Arc<coalesce::Coalescer<v1::PodSandbox>>,
    containers: Arc<coalesce::Coalescer<v1::Container>>,
    observer: Option<Arc<dyn OperationObserver>>,
}

/// Told of every finished CRI call, for the kubelet's runtime operation
/// metrics.
pub trait OperationObserver: Send + Sync {
    /// `rpc` (its CRI name, `RunPodSandbox`) took `elapsed` and failed or not.
    fn observe(&self, rpc: &'static str, elapsed: Duration, ok: bool);
}

impl std::fmt::Debug for CriClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CriClient")
            .field("path", &self.path)
            .field("request_timeout", &self.request_timeout)
            .field("pull_timeout", &self.pull_timeout)
            .finish_non_exhaustive()
    }
}

/// Sends the deadline along, so the runtime can stop working on a request
/// the kubelet no longer waits for.
fn request<T>(msg: T, deadline: Option<Duration>) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    if let Some(d) = deadline {
        r.set_timeout(d);
    }
    r
}

async fn call_unary<T>(
    rpc: &'static str,
    deadline: Option<Duration>,
    call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, CriClientError> {
    let answer = match deadline {
        Some(timeout) => tokio::time::timeout(timeout, call)
            .await
            .map_err(|_| CriClientError::Timeout { rpc, timeout })?,
        None => call.await,
    };
    answer
        .map(tonic::Response::into_inner)
        .map_err(|s| CriClientError::from_status(rpc, s))
}

/// Whether `labels` has every key and value of `selector`, as the CRI's
/// label selectors match.
fn labels_match(selector: &HashMap<String, String>, labels: &HashMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// A CRI timeout in seconds added to the request timeout, as upstream does
/// for StopContainer and ExecSync. Negative seconds count as none.
fn plus_seconds(base: Duration, seconds: i64) -> Duration {
    base.saturating_add(Duration::from_secs(u64::try_from(seconds).unwrap_or(0)))
}

impl CriClient {
    /// Connects to the runtime at `endpoint` (see [`parse_endpoint`]) within
    /// `connect_timeout`, and checks that it speaks CRI v1.
    pub async fn connect(
        endpoint: &str,
        connect_timeout: Duration,
    ) -> Result<Self, CriClientError> {
        let path = parse_endpoint(endpoint)?;
        let socket = path.clone();
        // The URI is only the HTTP/2 authority; the connector ignores it.
        let endpoint = Endpoint::from_static("http://localhost").connect_timeout(connect_timeout);
        let channel = endpoint.connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(socket).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }));
        let channel = tokio::time::timeout(connect_timeout, channel)
            .await
            .map_err(|_| CriClientError::ConnectTimeout {
                path: path.clone(),
                timeout: connect_timeout,
            })?
            .map_err(|source| CriClientError::Connect {
                path: path.clone(),
                source,
            })?;
        let client = CriClient {
            runtime: berth_proto::runtime_service_client(channel.clone()),
            images: berth_proto::image_service_client(channel),
            path,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            pull_timeout: None,
            sandboxes: Arc::default(),
            containers: Arc::default(),
            observer: None,
        };
        let v = client.version().await?;
        if v.runtime_api_version != CRI_API_VERSION {
            return Err(CriClientError::UnsupportedApi {
                runtime_name: v.runtime_name,
                runtime_version: v.runtime_version,
                api_version: v.runtime_api_version,
            });
        }
        Ok(client)
    }

    /// Reports every call from now on to `observer`.
    pub fn with_observer(mut self, observer: Arc<dyn OperationObserver>) -> Self {
        self.observer = Some(observer);
        self
    }

    async fn unary<T>(
        &self,
        rpc: &'static str,
        deadline: Option<Duration>,
        call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, CriClientError> {
        let start = std::time::Instant::now();
        let r = call_unary(rpc, deadline, call).await;
        if let Some(o) = &self.observer {
            o.observe(rpc, start.elapsed(), r.is_ok());
        }
        r
    }

    /// The deadline of every call without one of its own.
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// PullImage's deadline; None (the default): none.
    pub fn with_pull_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.pull_timeout = timeout;
        self
    }

    /// The runtime's socket.
    pub fn socket(&self) -> &Path {
        &self.path
    }

    fn deadline(&self) -> Option<Duration> {
        Some(self.request_timeout)
    }

    // RuntimeService: the runtime.

    pub async fn version(&self) -> Result<v1::VersionResponse, CriClientError> {
        let d = self.deadline();
        let mut c = self.runtime.clone();
        let msg = v1::VersionRequest {
            version: CRI_API_VERSION.into(),
        };
        self.unary("Version", d, c.version(request(msg, d))).await
    }

    pub async fn status(
        &self,
        verbose: bool,
    ) -> Result<Verbose<v1::RuntimeStatus>, CriClientError> {
        let d = self.deadline();
        let mut c = self.runtime.clone();
        let r = self
            .unary(
                "Status",
                d,
                c.status(request(v1::StatusRequest { verbose }, d)),
            )
            .await?;
        Ok(Verbose {
            status: r.status.ok_or(CriClientError::MissingField {
                rpc: "Status",
                field: "status",
            })?,
            info: r.info,
        })
    }

    // RuntimeService: pod sandboxes.

    /// Runs a sandbox; `runtime_handler` is the RuntimeClass' handler ("" for
    /// the default). Returns the sandbox's ID.
    pub async fn run_pod_sandbox(
        &self,
        config: v1::PodSandboxConfig,
        runtime_handler: &str,
    ) -> Result<String, CriClientError> {
        let d = self.deadline();
        let mut c = self.runtime.clone();
        let msg = v1::RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: runtime_handler.into(),
        };
        let r = self
            .unary("RunPodSandbox", d, c.run_pod_sandbox(request(msg, d)))
            .await?;
        Ok(r.pod_sandbox_id)
    }

    pub async fn stop_pod_sandbox(&self, pod_sandbox_id: &str) -> Result<(), CriClientError> {
        let d = self.deadline();
        let mut c = self.runtime.clone();
        let msg = v1::StopPodSandboxRequest {
            pod_sandbox_id: pod_sandbox_id.into(),
        };
        self.unary("StopPodSandbox", d, c.stop_pod_sandbox(request(msg, d)))
            .await?;
        Ok(())
    }

    pub async fn remove_pod_sandbox(&self, pod_sandbox_id: &str) -> Result<(), CriClientError> {
        let d = self.deadline();
        let mut c = self.runtime.clone();
        let msg = v1::RemovePodSandboxRequest {
            pod_sandbox_id: pod_sandbox_id.into(),
        };
        self.unary("RemovePodSandbox", d, c.remove_pod_sandbox(request(msg, d)))
            .await?;
        Ok(())
    }

    pub async fn pod_sandbox_status(
        &self,
        pod_sandbox_id: &str,
        verbose: bool,
    ) -> Result<Verbose<v1::PodSandboxStatus>, CriClientError> {
        let d = self.deadline();
        let mut c = self.runtime.clone();
        let msg = v1::PodSandboxStatusRequest {
            pod_sandbox_id: pod_sandbox_id.into(),
            verbose,
        };
        let r = self
            .unary("PodSandboxStatus", d, c.pod_sandbox_status(request(msg, d)))
            .await?;
        Ok(Verbose {
            status: r.status.ok_or(CriClientError::MissingField {
                rpc: "PodSandboxStatus",
                field: "status",
            })?,
            info: r.info,
        })
    }

    /// The sandboxes `filter` selects; by labels and state only (or none),
    /// from a request shared with overlapping calls.
    pub async fn list_pod_sandbox(
        &self,
        filter: Option<v1::PodSandboxFilter>,
    ) -> Result<Vec<v1::PodSandbox>, CriClientError> {
        let shareable = filter.as_ref().is_none_or(|f| f.id.is_empty());
        if !shareable {
            return self.list_pod_sandbox_request(filter).await;
        }
        let all = self
            .sandboxes
            .call(|| self.list_pod_sandbox_request(None))
            .await?;
        let f = filter.unwrap_or_default();
        Ok(all
            .iter()
            .filter(|s| {
                f.state.as_ref().is_none_or(|st| st.state == s.state)
                    && labels_match(&f.label_selector, &s.labels)
            })
            .cloned()
            .collect())
    }

    async fn list_pod_sandbox_request(
        &self,
        filter: Option<v1::PodSandboxFilter>,
    ) -> Result<Vec<v1::PodSandbox>, CriClientError> {
        let d = self.deadline();
        let mut c = self.runtime.clone();
        let msg = v1::ListPodSandboxRequest { filter };
        let r = self
            .unary("ListPodSandbox", d, c.list_pod_sandbox(request(msg, d)))
            .await?;
        Ok(r.items)
    }

    // RuntimeService: containers.

    /// Creates a container in a sandbox; `sandbox_config` is the config the
    /// sandbox was run with. Returns the container's ID.
    pub async fn create_container(
        &self,
        pod_sandbox_id: &str,
        config: v1::ContainerConfig,
        sandbox_config: v1::PodSandboxConfig,
    ) -> Result<String, CriClientError> {
        let d = self.deadline();
        let mut c = self.runtime.clone();
        let msg = v1::CreateContainerRequest {
            pod_sandbox_id: pod_sandbox_id.into(),
            config: Some(config),
            sandbox_config: Some(sandbox_config),
        };
        let r = self
            .unary("CreateContainer", d, c.create_container(request(msg, d)))
            .await?;
        Ok(r.container_id)
    }

    pub async fn start_container(&self, container_id: &str) -> Result<(), CriClientError> {
        let d = self.deadline();
        let mut c = self.runtime.clone();
        let msg = v1::StartContainerRequest {
            container_id: container_id.into(),
        };
        self.unary("StartContainer", d, c.start_container(request(msg, d)))
            .await?;
        Ok(())
    }

    /// Stops a container, killing it after `timeout_seconds` of grace.
    pub async fn stop_container(
        &self,
        container_id: &str,
        timeout_seconds: i64,
    ) -> Result<(), CriClientError> {
        let d = Some(plus_seconds(self.request_timeout, timeout_seconds));
        let mut c = self.runtime.clone();
        let msg = v1::StopContainerRequest {
            container_id: container_id.into(),
            timeout: timeout_seconds,
        };
        self.unary("StopContainer", d, c.stop_container(request(msg, d)))
            .await?;
        Ok(())
    }

    pub async fn remove_container(&self, container_id: &str) -> Result<(), CriClientError> {
        let d = self.deadline();
        let mut c = self.runtime.clone();
        let msg = v1::RemoveContainerRequest {
            container_id: container_id.into(),
        };
        self.unary("RemoveContainer", d, c.remove_container(request(msg, d)))
            .await?;
        Ok(())
    }

    /// The containers `filter` selects; by labels and state only (or
    /// none), from a request shared with overlapping calls.
    pub async fn list_containers(
        &self,
        filter: Option<v1::ContainerFilter>,
    ) -> Result<Vec<v1::Container>, CriClientError> {
        let shareable = filter
            .as_ref()
            .is_none_or(|f| f.id.is_empty() && f.pod_sandbox_id.is_empty());
        if !shareable {
            return self.list_containers_request(filter).await;
        }
        let all = self
            .containers
            .call(|| self.list_containers_request(None))
            .await?;
        let f = filter.unwrap_or_default();
        Ok(all
            .iter()
            .filter(|c| {
                f.state.as_ref().is_none_or(|st| st.state == c.state)
                    && labels_match(&f.label_selector, &c.labels)
            })
            .cloned()
            .collect())
    }

    async fn list_containers_request(
        &self,
        filter: Option<v1::ContainerFilter>,
    ) -> Result<Vec<v1::Container>, CriClientError> {
        let d = self.deadline();
        let mut c = self.runtime.clone();
        let msg = v1::ListContainersRequest { filter };
        let r = self
            .unary("ListContainers", d, c.list_containers(request(msg, d)))
            .await?;
        Ok(r.containers)
    }

    pub async fn container_status(
        &self,
        container_id: &str,
        verbose: bool,
    ) -> Result<Verbose<v1::ContainerStatus>, CriClientError> {
        let d = self.deadline();
        let mut c = self.runtime.clone();
        let msg = v1::ContainerStatusRequest {
            container_id: container_id.into(),
            verbose,
        };
        let r = self
            .unary("ContainerStatus", d, c.container_status(request(msg, d)))
            .await?;
        Ok(Verbose {
            status: r.status.ok_or(CriClientError::MissingField {
                rpc: "ContainerStatus",
                field: "status",
            })?,
            info: r.info,
        })
    }

    /// Runs `cmd` in the container and waits for it, at most
    /// `timeout_seconds` (0: no limit). A non-zero exit is an answer, not an
    /// error: see `exit_code`.
    pub async fn exec_sync(
        &self,
        container_id: &str,
        cmd: Vec<String>,
        timeout_seconds: i64,
    ) -> Result<v1::ExecSyncResponse, CriClientError> {
        let d = (timeout_seconds > 0).then(|| plus_seconds(self.request_timeout, timeout_seconds));
        let mut c = self.runtime.clone();
        let msg = v1::ExecSyncRequest {
            container_id: container_id.into(),
            cmd,
            timeout: timeout_seconds,
        };
        self.unary("ExecSync", d, c.exec_sync(request(msg, d)))
            .await
    }

    pub async fn update_container_resources(
        &self,
        container_id: &str,
        linux: v1::LinuxContainerResources,
    ) -> Result<(), CriClientError> {
        let d = self.deadline();
        let mut c = self.runtime.clone();
        let msg = v1::UpdateContainerResourcesRequest {
            container_id: container_id.into(),
            linux: Some(linux),
            ..Default::default()
        };
        self.unary(
            "UpdateContainerResources",
            d,
            c.update_container_resources(request(msg, d)),
        )
        .await?;
        Ok(())
    }

    pub async fn reopen_container_log(&self, container_id: &str) -> Result<(), CriClientError> {
        let d = self.deadline();
        let mut c = self.runtime.clone();
        let msg = v1::ReopenContainerLogRequest {
            container_id: container_id.into(),
        };
        self.unary(
            "ReopenContainerLog",
            d,
            c.reopen_container_log(request(msg, d)),
        )
        .await?;
        Ok(())
    }

    pub async fn container_stats(
        &self,
        container_id: &str,
    ) -> Result<v1::ContainerStats, CriClientError> {
        let d = self.deadline();
        let mut c = self.runtime.clone();
        let msg = v1::ContainerStatsRequest {
            container_id: container_id.into(),
        };
        let r = self
            .unary("ContainerStats", d, c.container_stats(request(msg, d)))
            .await?;
        r.stats.ok_or(CriClientError::MissingField {
            rpc: "ContainerStats",
            field: "stats",
        })
    }

    pub async fn list_pod_sandbox_stats(
        &self,
        filter: Option<v1::PodSandboxStatsFilter>,
    ) -> Result<Vec<v1::PodSandboxStats>, CriClientError> {
        let d = self.deadline();
        let mut c = self.runtime.clone();
        let msg = v1::ListPodSandboxStatsRequest { filter };
        let r = self
            .unary(
                "ListPodSandboxStats",
                d,
                c.list_pod_sandbox_stats(request(msg, d)),
            )
            .await?;
        Ok(r.stats)
    }

    pub async fn list_container_stats(
        &self,
        filter: Option<v1::ContainerStatsFilter>,
    ) -> Result<Vec<v1::ContainerStats>, CriClientError> {
        let d = self.deadline();
        let mut c = self.runtime.clone();
        let msg = v1::ListContainerStatsRequest { filter };
        let r = self
            .unary(
                "ListContainerStats",
                d,
                c.list_container_stats(request(msg, d)),
            )
            .await?;
        Ok(r.stats)
    }

    /// The runtime's container events from now on. Only opening the stream
    /// has a deadline; it then lasts as long as the runtime keeps it open.
    pub async fn get_container_events(&self) -> Result<ContainerEvents, CriClientError> {
        const RPC: &str = "GetContainerEvents";
        let d = self.deadline();
        let mut c = self.runtime.clone();
        // No grpc-timeout here: the runtime would end the stream at it.
        let stream = self
            .unary(
                RPC,
                d,
                c.get_container_events(tonic::Request::new(v1::GetEventsRequest {})),
            )
            .await?;
        Ok(Box::pin(stream.map(|item| {
            item.map_err(|s| CriClientError::from_status(RPC, s))
        })))
    }

    // RuntimeService: streaming. Each returns the URL where the session runs.

    pub async fn exec(&self, req: v1::ExecRequest) -> Result<String, CriClientError> {
        let d = self.deadline();
        let mut c = self.runtime.clone();
        Ok(self.unary("Exec", d, c.exec(request(req, d))).await?.url)
    }

    pub async fn attach(&self, req: v1::AttachRequest) -> Result<String, CriClientError> {
        let d = self.deadline();
        let mut c = self.runtime.clone();
        Ok(self
            .unary("Attach", d, c.attach(request(req, d)))
            .await?
            .url)
    }

    pub async fn port_forward(
        &self,
        pod_sandbox_id: &str,
        ports: Vec<i32>,
    ) -> Result<String, CriClientError> {
        let d = self.deadline();
        let mut c = self.runtime.clone();
        let msg = v1::PortForwardRequest {
            pod_sandbox_id: pod_sandbox_id.into(),
            port: ports,
        };
        Ok(self
            .unary("PortForward", d, c.port_forward(request(msg, d)))
            .await?
            .url)
    }

    // ImageService.

    /// The image, or None when the runtime does not have it.
    pub async fn image_status(
        &self,
        image: v1::ImageSpec,
        verbose: bool,
    ) -> Result<Verbose<Option<v1::Image>>, CriClientError> {
        let d = self.deadline();
        let mut c = self.images.clone();
        let msg = v1::ImageStatusRequest {
            image: Some(image),
            verbose,
        };
        let r = self
            .unary("ImageStatus", d, c.image_status(request(msg, d)))
            .await?;
        Ok(Verbose {
            status: r.image,
            info: r.info,
        })
    }

    /// Pulls an image; `sandbox_config` is the pod's, for runtimes that pull
    /// per pod. Returns the image's reference (usually its digest).
    pub async fn pull_image(
        &self,
        image: v1::ImageSpec,
        auth: Option<v1::AuthConfig>,
        sandbox_config: Option<v1::PodSandboxConfig>,
    ) -> Result<String, CriClientError> {
        let d = self.pull_timeout;
        let mut c = self.images.clone();
        let msg = v1::PullImageRequest {
            image: Some(image),
            auth,
            sandbox_config,
        };
        Ok(self
            .unary("PullImage", d, c.pull_image(request(msg, d)))
            .await?
            .image_ref)
    }

    pub async fn list_images(
        &self,
        filter: Option<v1::ImageFilter>,
    ) -> Result<Vec<v1::Image>, CriClientError> {
        let d = self.deadline();
        let mut c = self.images.clone();
        let msg = v1::ListImagesRequest { filter };
        Ok(self
            .unary("ListImages", d, c.list_images(request(msg, d)))
            .await?
            .images)
    }

    pub async fn remove_image(&self, image: v1::ImageSpec) -> Result<(), CriClientError> {
        let d = self.deadline();
        let mut c = self.images.clone();
        let msg = v1::RemoveImageRequest { image: Some(image) };
        self.unary("RemoveImage", d, c.remove_image(request(msg, d)))
            .await?;
        Ok(())
    }

    pub async fn image_fs_info(&self) -> Result<v1::ImageFsInfoResponse, CriClientError> {
        let d = self.deadline();
        let mut c = self.images.clone();
        self.unary(
            "ImageFsInfo",
            d,
            c.image_fs_info(request(v1::ImageFsInfoRequest {}, d)),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case("unix:///run/berth/berth.sock", "/run/berth/berth.sock")]
    #[case("/run/containerd/containerd.sock", "/run/containerd/containerd.sock")]
    #[case("unix:///x", "/x")]
    fn endpoints_accepted(#[case] endpoint: &str, #[case] path: &str) {
        assert_eq!(parse_endpoint(endpoint).ok(), Some(PathBuf::from(path)));
    }

    #[rstest]
    #[case("", "no socket path")]
    #[case("unix://", "no socket path")]
    #[case("unix://run/x.sock", "absolute")]
    #[case("run/x.sock", "absolute")]
    #[case("tcp://127.0.0.1:1234", "only unix")]
    #[case("npipe:////./pipe/x", "only unix")]
    fn endpoints_refused(#[case] endpoint: &str, #[case] why: &str) {
        match parse_endpoint(endpoint) {
            Err(e @ CriClientError::BadEndpoint { .. }) => {
                let text = e.to_string();
                assert!(text.contains(why), "{text}");
                assert!(text.contains(&format!("{endpoint:?}")), "{text}");
            }
            other => panic!("{endpoint:?}: {other:?}"),
        }
    }

    #[test]
    fn extra_seconds_saturate_and_ignore_negatives() {
        let base = Duration::from_secs(120);
        assert_eq!(plus_seconds(base, 30), Duration::from_secs(150));
        assert_eq!(plus_seconds(base, -5), base);
        assert_eq!(plus_seconds(Duration::MAX, i64::MAX), Duration::MAX);
    }

    #[test]
    fn codes_are_kept() {
        let e = CriClientError::from_status(
            "RemoveContainer",
            tonic::Status::not_found("container abc"),
        );
        assert!(e.is_not_found());
        assert_eq!(
            e.to_string(),
            "CRI RemoveContainer: NotFound: container abc"
        );
        let t = CriClientError::Timeout {
            rpc: "StartContainer",
            timeout: Duration::from_secs(1),
        };
        assert_eq!(t.code(), Some(Code::DeadlineExceeded));
    }

    #[tokio::test]
    async fn a_missing_socket_is_a_connect_error_naming_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("none.sock");
        let endpoint = format!("unix://{}", sock.display());
        match CriClient::connect(&endpoint, Duration::from_secs(5)).await {
            Err(e @ CriClientError::Connect { .. }) => {
                assert!(e.to_string().contains(&sock.display().to_string()), "{e}");
            }
            other => panic!("{other:?}"),
        }
    }
}
