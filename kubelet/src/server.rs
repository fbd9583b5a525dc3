//! The kubelet's HTTP API, as upstream serves it: over TLS on port 10250
//! (`/pods`, `/stats/summary`, `/metrics`, `/metrics/cadvisor`,
//! `/containerLogs`, `/exec`, `/attach`, `/portForward`, `/healthz`) and in
//! plain HTTP on a local port (10248) for `/healthz` only.
//!
//! - [`tls`]: the serving certificate (given, or self-signed and kept under
//!   `<root>/pki`) and client-certificate authentication;
//! - [`logs`]: CRI log files read back, tailed and followed;
//! - [`stats`]: the Summary API from the runtime's container stats;
//! - [`metrics`]: the kubelet's and the containers' Prometheus metrics;
//! - [`stream`]: exec, attach and port forwarding proxied to the runtime's
//!   streaming server.
//!
//! Requests find pods by namespace and name in the [`PodStatusStore`] and
//! their containers in the runtime by the labels the kubelet gave them.

pub mod logs;
pub mod metrics;
pub mod stats;
pub mod stream;
pub mod tls;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use berth_proto::v1;
use http::StatusCode;
use http::header::CONTENT_TYPE;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use k8s_openapi::api::core::v1::Pod;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tower::ServiceExt;

use crate::cri_client::{CriClient, CriClientError};
use crate::cri_config::container::CONTAINER_NAME_LABEL;
use crate::cri_config::sandbox::POD_UID_LABEL;
use crate::status::PodStatusStore;
use logs::{LogError, LogOptions};
use metrics::KubeletMetrics;
use stream::{StreamError, StreamOptions};
use tls::{TlsError, TlsSettings};

/// Upstream's defaults: the API on all addresses at 10250, the health
/// check on localhost at 10248.
pub const DEFAULT_PORT: u16 = 10250;
pub const DEFAULT_HEALTHZ_PORT: u16 = 10248;

/// The server's settings; the fields of upstream's KubeletConfiguration of
/// the same names (`address`, `port`, `healthzPort`, `healthzBindAddress`,
/// `tlsCertFile`, `tlsPrivateKeyFile`, `authentication.x509.clientCAFile`).
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub address: IpAddr,
    /// 0: no API server.
    pub port: u16,
    pub healthz_address: IpAddr,
    /// 0: no health check server.
    pub healthz_port: u16,
    pub tls: TlsSettings,
    /// The node's name, for the Summary API.
    pub node_name: String,
    /// The kubelet's root, whose filesystem the Summary reports for the node.
    pub root: PathBuf,
}

impl ServerConfig {
    pub fn new(node_name: &str, root: &std::path::Path) -> Self {
        ServerConfig {
            address: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            port: DEFAULT_PORT,
            healthz_address: IpAddr::V4(Ipv4Addr::LOCALHOST),
            healthz_port: DEFAULT_HEALTHZ_PORT,
            tls: TlsSettings {
                pki_dir: root.join("pki"),
                hosts: vec![node_name.to_owned()],
                ..TlsSettings::default()
            },
            node_name: node_name.to_owned(),
            root: root.to_path_buf(),
        }
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("kubelet API TLS: {0}")]
    Tls(#[from] TlsError),
    #[error("kubelet API: cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// What a request could not get, as the HTTP answer it becomes.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("Unauthorized")]
    Unauthorized,
    #[error("asking the runtime: {0}")]
    Runtime(#[from] CriClientError),
    #[error(transparent)]
    Logs(#[from] LogError),
    #[error(transparent)]
    Stream(#[from] StreamError),
    #[error("{0}")]
    Internal(String),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Runtime(e) if e.is_not_found() => StatusCode::NOT_FOUND,
            ApiError::Logs(LogError::Read { .. }) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Logs(_) => StatusCode::BAD_REQUEST,
            ApiError::Stream(e) => e.status(),
            ApiError::Runtime(_) | ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status.is_server_error() {
            tracing::warn!(error = %self, "kubelet API request failed");
        }
        text(status, format!("{self}\n"))
    }
}

fn text(status: StatusCode, body: impl Into<Body>) -> Response {
    (
        status,
        [(CONTENT_TYPE, "text/plain; charset=utf-8")],
        body.into(),
    )
        .into_response()
}

fn json(value: &impl serde::Serialize) -> Result<Response, ApiError> {
    let body = serde_json::to_vec(value).map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok((StatusCode::OK, [(CONTENT_TYPE, "application/json")], body).into_response())
}

/// What every handler shares.
#[derive(Clone)]
struct Api {
    cri: CriClient,
    pods: PodStatusStore,
    metrics: KubeletMetrics,
    node_name: String,
    root: PathBuf,
}

/// The running servers; they stop on [`Server::shutdown`] or when dropped.
pub struct Server {
    addr: Option<SocketAddr>,
    healthz_addr: Option<SocketAddr>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Server {
    /// Binds and serves on the current tokio runtime.
    pub async fn start(
        config: ServerConfig,
        cri: CriClient,
        pods: PodStatusStore,
        metrics: KubeletMetrics,
    ) -> Result<Server, ServerError> {
        let (stop, stopped) = watch::channel(false);
        let api = Api {
            cri,
            pods,
            metrics,
            node_name: config.node_name.clone(),
            root: config.root.clone(),
        };
        let mut tasks = Vec::new();
        let mut addr = None;
        if config.port != 0 {
            let tls = tls::server_config(&config.tls)?;
            let require_client_cert = config.tls.client_ca_file.is_some();
            if !require_client_cert {
                tracing::warn!(
                    "the kubelet API on port {} is unauthenticated (anonymous requests allowed, as upstream's defaults); pass --client-ca-file to require client certificates",
                    config.port
                );
            }
            let listener = bind(SocketAddr::new(config.address, config.port)).await?;
            addr = listener.local_addr().ok();
            let router = api_router(api.clone());
            tasks.push(tokio::spawn(serve_tls(
                listener,
                tokio_rustls::TlsAcceptor::from(tls),
                router,
                require_client_cert,
                stopped.clone(),
            )));
        }
        let mut healthz_addr = None;
        if config.healthz_port != 0 {
            let listener =
                bind(SocketAddr::new(config.healthz_address, config.healthz_port)).await?;
            healthz_addr = listener.local_addr().ok();
            let router = Router::new().route("/healthz", get(healthz));
            tasks.push(tokio::spawn(serve_plain(listener, router, stopped)));
        }
        tracing::info!(api = ?addr, healthz = ?healthz_addr, "kubelet API listening");
        Ok(Server {
            addr,
            healthz_addr,
            stop,
            tasks,
        })
    }

    /// The API's address (None when disabled).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.addr
    }

    pub fn healthz_addr(&self) -> Option<SocketAddr> {
        self.healthz_addr
    }

    /// Stops accepting, lets the requests in flight finish for a few
    /// seconds, then ends.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { addr, source })
}

/// How long requests in flight (a followed log, an exec session) may go on
/// after shutdown began.
const GRACE: Duration = Duration::from_secs(5);

async fn serve_tls(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    router: Router,
    require_client_cert: bool,
    mut stopped: watch::Receiver<bool>,
) {
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "kubelet API: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            // Finished connections are reaped as they end.
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            _ = stopped.changed() => break,
        };
        let acceptor = acceptor.clone();
        let router = router.clone();
        let stopped = stopped.clone();
        conns.spawn(async move {
            let tls =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "kubelet API: TLS handshake failed");
                        return;
                    }
                    Err(_) => return,
                };
            let authenticated = tls
                .get_ref()
                .1
                .peer_certificates()
                .is_some_and(|c| !c.is_empty());
            let refuse = require_client_cert && !authenticated;
            let service = tower::service_fn(move |req: Request<hyper::body::Incoming>| {
                let router = router.clone();
                async move {
                    if refuse {
                        return Ok::<_, Infallible>(ApiError::Unauthorized.into_response());
                    }
                    router.oneshot(req.map(Body::new)).await
                }
            });
            serve_conn(TokioIo::new(tls), service, stopped).await;
        });
    }
    drain(conns).await;
}

async fn serve_plain(listener: TcpListener, router: Router, mut stopped: watch::Receiver<bool>) {
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let tcp = tokio::select! {
            r = listener.accept() => match r {
                Ok((c, _)) => c,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            _ = stopped.changed() => break,
        };
        let router = router.clone();
        let stopped = stopped.clone();
        conns.spawn(async move {
            let service = tower::service_fn(move |req: Request<hyper::body::Incoming>| {
                router.clone().oneshot(req.map(Body::new))
            });
            serve_conn(TokioIo::new(tcp), service, stopped).await;
        });
    }
    drain(conns).await;
}

async fn drain(mut conns: tokio::task::JoinSet<()>) {
    let all = async { while conns.join_next().await.is_some() {} };
    if tokio::time::timeout(GRACE, all).await.is_err() {
        conns.abort_all();
    }
}

/// One connection, HTTP/1.1 with upgrades (exec, attach, port forwarding),
/// closed gracefully when the server stops.
async fn serve_conn<I, S>(io: TokioIo<I>, service: S, mut stopped: watch::Receiver<bool>)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: tower::Service<Request<hyper::body::Incoming>, Response = Response, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder = builder.http1_only();
    let conn = builder.serve_connection_with_upgrades(io, TowerToHyperService::new(service));
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "kubelet API connection");
            }
        }
        _ = stopped.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

fn api_router(api: Api) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/pods", get(pods))
        .route("/stats/summary", get(summary))
        .route("/metrics", get(kubelet_metrics))
        .route("/metrics/cadvisor", get(cadvisor_metrics))
        .route(
            "/containerLogs/{namespace}/{pod}/{container}",
            get(container_logs),
        )
        .route("/exec/{namespace}/{pod}/{container}", get(exec).post(exec))
        .route(
            "/attach/{namespace}/{pod}/{container}",
            get(attach).post(attach),
        )
        .route(
            "/portForward/{namespace}/{pod}",
            get(port_forward).post(port_forward),
        )
        .fallback(|req: Request| async move {
            text(
                StatusCode::NOT_FOUND,
                format!("404 page not found: {}\n", req.uri().path()),
            )
        })
        .with_state(api)
}

async fn healthz() -> Response {
    text(StatusCode::OK, "ok")
}

/// The query's pairs, decoded; repeated keys kept in order.
pub fn query_pairs(q: Option<&str>) -> Vec<(String, String)> {
    q.map(|q| {
        form_urlencoded::parse(q.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect()
    })
    .unwrap_or_default()
}

/// `/pods`: a `v1` PodList of the node's pods with their status.
pub fn pod_list(pods: &[Arc<Pod>]) -> serde_json::Value {
    serde_json::json!({
        "kind": "PodList",
        "apiVersion": "v1",
        "metadata": {},
        "items": pods.iter().map(|p| p.as_ref()).collect::<Vec<&Pod>>(),
    })
}

async fn pods(State(api): State<Api>) -> Result<Response, ApiError> {
    json(&pod_list(&api.pods.list()))
}

impl Api {
    fn pod(&self, namespace: &str, name: &str) -> Result<Arc<Pod>, ApiError> {
        self.pods.get(namespace, name).ok_or_else(|| {
            ApiError::NotFound(format!(
                "pod \"{name}\" not found in namespace \"{namespace}\""
            ))
        })
    }

    /// The runtime's instances of `container` in `pod`, newest first.
    async fn instances(&self, pod: &Pod, container: &str) -> Result<Vec<v1::Container>, ApiError> {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let declared = pod.spec.as_ref().is_some_and(|s| {
            s.containers
                .iter()
                .chain(s.init_containers.iter().flatten())
                .any(|c| c.name == container)
        }) || pod.spec.as_ref().is_some_and(|s| {
            s.ephemeral_containers
                .iter()
                .flatten()
                .any(|c| c.name == container)
        });
        if !declared {
            return Err(ApiError::NotFound(format!(
                "container \"{container}\" not found in pod \"{name}\""
            )));
        }
        let mut found = self
            .cri
            .list_containers(Some(v1::ContainerFilter {
                label_selector: [
                    (POD_UID_LABEL.to_owned(), uid),
                    (CONTAINER_NAME_LABEL.to_owned(), container.to_owned()),
                ]
                .into(),
                ..Default::default()
            }))
            .await?;
        found.sort_by_key(|c| {
            std::cmp::Reverse((c.metadata.as_ref().map_or(0, |m| m.attempt), c.created_at))
        });
        if found.is_empty() {
            return Err(ApiError::NotFound(format!(
                "container \"{container}\" in pod \"{name}\" is not created yet"
            )));
        }
        Ok(found)
    }

    /// The container's current instance (or, with `previous`, the one before).
    async fn container(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
        previous: bool,
    ) -> Result<v1::Container, ApiError> {
        let p = self.pod(namespace, pod)?;
        let mut all = self.instances(&p, container).await?.into_iter();
        let current = all.next();
        if previous {
            return all.next().ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "previous terminated container \"{container}\" in pod \"{pod}\" not found"
                ))
            });
        }
        current.ok_or_else(|| ApiError::NotFound(format!("container \"{container}\" not found")))
    }
}

async fn container_logs(
    State(api): State<Api>,
    Path((namespace, pod, container)): Path<(String, String, String)>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let opts = LogOptions::from_query(&query_pairs(q.as_deref()), jiff::Timestamp::now())?;
    let c = api
        .container(&namespace, &pod, &container, opts.previous)
        .await?;
    let status = api.cri.container_status(&c.id, false).await?;
    let log_path = PathBuf::from(status.status.log_path.clone());
    if log_path.as_os_str().is_empty() {
        return Err(ApiError::NotFound(format!(
            "container \"{container}\" in pod \"{pod}\" has no log file"
        )));
    }
    let exited = Arc::new(AtomicBool::new(
        status.status.state == v1::ContainerState::ContainerExited as i32,
    ));
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(16);
    if opts.follow && !exited.load(Ordering::Acquire) {
        // Ends the follow once the container has exited (or is gone) or
        // the client has left.
        let cri = api.cri.clone();
        let id = c.id.clone();
        let flag = exited.clone();
        let gone = tx.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    // The reader waits for new output without sending
                    // anything, so it would not notice on its own.
                    _ = gone.closed() => {
                        flag.store(true, Ordering::Release);
                        return;
                    }
                }
                let done = match cri.container_status(&id, false).await {
                    Ok(s) => s.status.state == v1::ContainerState::ContainerExited as i32,
                    Err(e) => e.is_not_found(),
                };
                if done {
                    flag.store(true, Ordering::Release);
                    return;
                }
            }
        });
    }
    // Check that the file opens before answering 200.
    std::fs::metadata(&log_path).map_err(|source| LogError::Read {
        path: log_path.clone(),
        source,
    })?;
    tokio::task::spawn_blocking(move || {
        let sent = logs::stream_log(&log_path, &opts, &exited, |chunk| {
            tx.blocking_send(Ok(Bytes::from(chunk))).is_ok()
        });
        if let Err(e) = sent {
            tracing::debug!(error = %e, "reading a container log");
            let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
        }
    });
    let body = Body::from_stream(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }));
    Ok((StatusCode::OK, [(CONTENT_TYPE, "text/plain")], body).into_response())
}

async fn exec(
    State(api): State<Api>,
    Path((namespace, pod, container)): Path<(String, String, String)>,
    req: Request,
) -> Result<Response, ApiError> {
    let opts = StreamOptions::from_query(&query_pairs(req.uri().query()))?;
    let c = api.container(&namespace, &pod, &container, false).await?;
    let url = api.cri.exec(opts.exec_request(&c.id)?).await?;
    Ok(stream::proxy(req, &url).await?)
}

async fn attach(
    State(api): State<Api>,
    Path((namespace, pod, container)): Path<(String, String, String)>,
    req: Request,
) -> Result<Response, ApiError> {
    let opts = StreamOptions::from_query(&query_pairs(req.uri().query()))?;
    let c = api.container(&namespace, &pod, &container, false).await?;
    let url = api.cri.attach(opts.attach_request(&c.id)).await?;
    Ok(stream::proxy(req, &url).await?)
}

async fn port_forward(
    State(api): State<Api>,
    Path((namespace, pod)): Path<(String, String)>,
    req: Request,
) -> Result<Response, ApiError> {
    let ports = stream::query_ports(&query_pairs(req.uri().query()))?;
    let p = api.pod(&namespace, &pod)?;
    let uid = p.metadata.uid.clone().unwrap_or_default();
    let sandboxes = api
        .cri
        .list_pod_sandbox(Some(v1::PodSandboxFilter {
            label_selector: [(POD_UID_LABEL.to_owned(), uid)].into(),
            state: Some(v1::PodSandboxStateValue {
                state: v1::PodSandboxState::SandboxReady as i32,
            }),
            ..Default::default()
        }))
        .await?;
    let sandbox = sandboxes
        .iter()
        .max_by_key(|s| s.created_at)
        .ok_or_else(|| ApiError::NotFound(format!("pod \"{pod}\" has no running sandbox")))?;
    let url = api.cri.port_forward(&sandbox.id, ports).await?;
    Ok(stream::proxy(req, &url).await?)
}

/// The store's pods by UID: namespace, name and start time.
fn pod_index(pods: &[Arc<Pod>]) -> BTreeMap<String, (String, String, Option<String>)> {
    pods.iter()
        .filter_map(|p| {
            let uid = p.metadata.uid.clone()?;
            let start = p
                .status
                .as_ref()
                .and_then(|s| s.start_time.as_ref())
                .map(|t| t.0.strftime("%Y-%m-%dT%H:%M:%SZ").to_string());
            Some((
                uid,
                (
                    p.metadata
                        .namespace
                        .clone()
                        .unwrap_or_else(|| "default".into()),
                    p.metadata.name.clone().unwrap_or_default(),
                    start,
                ),
            ))
        })
        .collect()
}

async fn summary(State(api): State<Api>) -> Result<Response, ApiError> {
    let (samples, sandboxes) =
        tokio::join!(stats::gather(&api.cri), stats::gather_sandboxes(&api.cri));
    let samples = samples.map_err(|stats::StatsError::Runtime(e)| ApiError::Runtime(e))?;
    // Runtimes without ListPodSandboxStats: the containers' sums stand in.
    let sandboxes = sandboxes.unwrap_or_else(|e| {
        tracing::debug!(error = %e, "no pod sandbox stats");
        Vec::new()
    });
    let mut log_usage = stats::LogUsage::new();
    for c in samples.iter().filter(|c| c.state == "running") {
        if let Ok(s) = api.cri.container_status(&c.id, false).await
            && let Ok(meta) = std::fs::metadata(&s.status.log_path)
        {
            log_usage.insert(c.id.clone(), meta.len());
        }
    }
    let node = stats::node_sample(&api.root, jiff::Timestamp::now());
    let s = stats::summary(
        &api.node_name,
        node,
        &pod_index(&api.pods.list()),
        &sandboxes,
        &samples,
        &log_usage,
    );
    json(&s)
}

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

async fn kubelet_metrics(State(api): State<Api>) -> Result<Response, ApiError> {
    let samples = stats::gather(&api.cri)
        .await
        .map_err(|stats::StatsError::Runtime(e)| ApiError::Runtime(e))?;
    let running_pods = api
        .cri
        .list_pod_sandbox(Some(v1::PodSandboxFilter {
            state: Some(v1::PodSandboxStateValue {
                state: v1::PodSandboxState::SandboxReady as i32,
            }),
            ..Default::default()
        }))
        .await?
        .len();
    let body = api
        .metrics
        .render(running_pods, &samples)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok((StatusCode::OK, [(CONTENT_TYPE, OPENMETRICS)], body).into_response())
}

async fn cadvisor_metrics(State(api): State<Api>) -> Result<Response, ApiError> {
    let samples = stats::gather(&api.cri)
        .await
        .map_err(|stats::StatsError::Runtime(e)| ApiError::Runtime(e))?;
    let running: Vec<_> = samples
        .into_iter()
        .filter(|c| c.state == "running")
        .collect();
    let body = metrics::render_cadvisor(&running).map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok((StatusCode::OK, [(CONTENT_TYPE, OPENMETRICS)], body).into_response())
}
