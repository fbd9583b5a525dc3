//! `berth node` for tests: started on a manifest dir against a CRI socket,
//! killed if the test ends first; what every node test starts from
//! ([`NodeTest`]); and the CRI queries the tests make of the pods it runs.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use berth_kubelet::cri_client::CriClient;
use berth_proto::v1;
use tempfile::TempDir;

use crate::cri::{CriDaemon, Options};
use crate::images;
use crate::registry::Registry;
use crate::runtime::berth_binary;
use crate::workdir::tempdir;

/// The `--node-name` the tests give, so pods are `<name>-testnode`.
pub const NODE: &str = "testnode";

/// A running `berth node`; killed on drop if the test did not stop it.
pub struct Node(pub Child, pub Ports);

/// The node's kubelet API ports (on 127.0.0.1), picked free for each node
/// so that tests running at once do not collide on upstream's 10250/10248.
#[derive(Clone, Copy, Debug)]
pub struct Ports {
    pub api: u16,
    pub healthz: u16,
}

impl Ports {
    /// Two ports free now; another process taking one before the node binds
    /// it would only fail that node's start.
    pub fn pick() -> Result<Ports> {
        let a = std::net::TcpListener::bind("127.0.0.1:0")?;
        let b = std::net::TcpListener::bind("127.0.0.1:0")?;
        Ok(Ports {
            api: a.local_addr()?.port(),
            healthz: b.local_addr()?.port(),
        })
    }
}

impl Node {
    /// `berth node` on `manifests`, talking to the runtime at `socket`, with
    /// its root and pod logs under `work` and its output in `log`.
    pub fn start(manifests: &Path, socket: &Path, work: &Path, log: &Path) -> Result<Node> {
        Self::start_with(manifests, socket, work, log, &[])
    }

    /// [`Node::start`] with more `berth node` arguments.
    pub fn start_with(
        manifests: &Path,
        socket: &Path,
        work: &Path,
        log: &Path,
        extra: &[&str],
    ) -> Result<Node> {
        // Appended to: a test may start the node again on the same log.
        let out = File::options().create(true).append(true).open(log)?;
        let ports = Ports::pick()?;
        let child = Command::new(berth_binary()?)
            .arg("node")
            .arg("--manifests")
            .arg(manifests)
            .arg("--runtime-endpoint")
            .arg(format!("unix://{}", socket.display()))
            .arg("--root")
            .arg(work.join("root"))
            .arg("--pod-log-dir")
            .arg(work.join("logs"))
            .args(["--node-name", NODE, "--resync-seconds", "1"])
            .args(["--address", "127.0.0.1", "--port"])
            .arg(ports.api.to_string())
            .arg("--healthz-port")
            .arg(ports.healthz.to_string())
            .args(extra)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("starting berth node")?;
        Ok(Node(child, ports))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What a `berth node` test starts from: a registry holding busybox as
/// `busybox:1`, a `berth runtime` with an empty config (no CNI: the pods
/// use the host's network), and a work dir with an empty `manifests` dir
/// and the node's log, `node.log`. The test writes its manifests and
/// starts the node ([`NodeTest::node`]) when it wants.
pub struct NodeTest {
    // Dropped in this order, as the tests declared them before: the work
    // dir, then the daemon (with what the node left running), then the
    // registry.
    work: TempDir,
    daemon: CriDaemon,
    registry: Option<(Registry, String)>,
    manifests: PathBuf,
    log: PathBuf,
}

impl NodeTest {
    /// The registry with busybox, the daemon and the work dir.
    pub fn start() -> Result<NodeTest> {
        let registry = Registry::start()?;
        registry.client().push("busybox", "1", images::busybox()?)?;
        let image = registry.reference("busybox:1");
        Self::with_registry(Some((registry, image)))
    }

    /// The daemon and the work dir, for a test that runs no pod.
    pub fn without_registry() -> Result<NodeTest> {
        Self::with_registry(None)
    }

    fn with_registry(registry: Option<(Registry, String)>) -> Result<NodeTest> {
        let daemon = CriDaemon::start(Options {
            config: Some(String::new()),
            ..Default::default()
        })?;
        let work = tempdir("node-")?;
        let manifests = work.path().join("manifests");
        std::fs::create_dir_all(&manifests)?;
        let log = work.path().join("node.log");
        Ok(NodeTest {
            work,
            daemon,
            registry,
            manifests,
            log,
        })
    }

    /// The registry; panics for [`NodeTest::without_registry`].
    pub fn registry(&self) -> &Registry {
        &self
            .registry
            .as_ref()
            .expect("a NodeTest without registry")
            .0
    }

    /// busybox's reference in the registry; panics for
    /// [`NodeTest::without_registry`].
    pub fn image(&self) -> &str {
        &self
            .registry
            .as_ref()
            .expect("a NodeTest without registry")
            .1
    }

    pub fn daemon(&self) -> &CriDaemon {
        &self.daemon
    }

    /// The work dir: the node's root is `root` in it, its pod logs `logs`.
    pub fn work(&self) -> &Path {
        self.work.path()
    }

    pub fn manifests(&self) -> &Path {
        &self.manifests
    }

    /// berth node's output, appended to by every node started.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Writes manifest `<name>.yaml`.
    pub fn write(&self, name: &str, yaml: &str) -> Result<()> {
        let path = self.manifests.join(format!("{name}.yaml"));
        std::fs::write(&path, yaml).with_context(|| format!("writing {}", path.display()))
    }

    /// Removes manifest `<name>.yaml`.
    pub fn remove(&self, name: &str) -> Result<()> {
        let path = self.manifests.join(format!("{name}.yaml"));
        std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))
    }

    /// `berth node` on the manifests, against the daemon.
    pub fn node(&self) -> Result<Node> {
        self.node_with(&[])
    }

    /// [`NodeTest::node`] with more `berth node` arguments.
    pub fn node_with(&self, extra: &[&str]) -> Result<Node> {
        Node::start_with(
            &self.manifests,
            &self.daemon.socket(),
            self.work.path(),
            &self.log,
            extra,
        )
    }

    /// The runtime the test's async part runs on.
    pub fn runtime(&self) -> Result<tokio::runtime::Runtime> {
        Ok(tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?)
    }

    /// A CRI client of the daemon; a call taking over 30 s fails.
    pub async fn cri(&self) -> Result<CriClient> {
        Ok(CriClient::connect(
            &format!("unix://{}", self.daemon.socket().display()),
            Duration::from_secs(10),
        )
        .await?
        .with_request_timeout(Duration::from_secs(30)))
    }

    /// A client of `node`'s API, once the node has made its certificate
    /// and listens (within 30 s).
    pub async fn api(&self, node: &Node) -> Result<Api> {
        let crt = root(self.work.path()).join("pki").join("kubelet.crt");
        wait_for("the API", Duration::from_secs(30), &self.log, || async {
            Ok(crt.exists() && std::net::TcpStream::connect(("127.0.0.1", node.1.api)).is_ok())
        })
        .await?;
        Api::new(node, self.work.path())
    }
}

/// The label selector of static pod `name`'s objects on [`NODE`].
pub fn by_pod(name: &str) -> HashMap<String, String> {
    HashMap::from([(
        "io.kubernetes.pod.name".to_owned(),
        format!("{name}-{NODE}"),
    )])
}

pub async fn containers(c: &CriClient, pod: &str) -> Result<Vec<v1::Container>> {
    Ok(c.list_containers(Some(v1::ContainerFilter {
        label_selector: by_pod(pod),
        ..Default::default()
    }))
    .await?)
}

pub async fn sandboxes(c: &CriClient, pod: &str) -> Result<Vec<v1::PodSandbox>> {
    Ok(c.list_pod_sandbox(Some(v1::PodSandboxFilter {
        label_selector: by_pod(pod),
        ..Default::default()
    }))
    .await?)
}

/// A container's attempt (its restart count as the kubelet numbers it).
pub fn attempt(c: &v1::Container) -> u32 {
    c.metadata.as_ref().map_or(0, |m| m.attempt)
}

/// Polls `check` until it holds; on timeout the error carries `log`
/// (berth node's output).
pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, log: &Path, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool>>,
{
    let deadline = Instant::now() + timeout;
    while !check().await? {
        if Instant::now() > deadline {
            bail!(
                "{what}: not within {timeout:?}; berth node's log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

/// The kubelet root of a node started on `work`: its self-signed
/// certificate is `pki/kubelet.crt` there.
pub fn root(work: &Path) -> std::path::PathBuf {
    work.join("root")
}

/// A client of a node's kubelet API, trusting the node's own certificate.
pub struct Api {
    port: u16,
    tls: tokio_rustls::TlsConnector,
}

impl Api {
    /// The API of the node started on `work`, once its certificate exists.
    pub fn new(node: &Node, work: &Path) -> Result<Api> {
        let crt = root(work).join("pki").join("kubelet.crt");
        let config = berth_kubelet::server::tls::client_config(&crt)?;
        Ok(Api {
            port: node.1.api,
            tls: tokio_rustls::TlsConnector::from(config),
        })
    }

    /// The same, presenting a client certificate (PEM) and its key.
    pub fn with_client_cert(node: &Node, work: &Path, cert: &str, key: &str) -> Result<Api> {
        let crt = root(work).join("pki").join("kubelet.crt");
        let roots = berth_kubelet::server::tls::root_store("CA", &crt)?;
        use rustls::pki_types::pem::PemObject;
        let chain = rustls::pki_types::CertificateDer::pem_slice_iter(cert.as_bytes())
            .collect::<Result<Vec<_>, _>>()?;
        let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes())?;
        let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
        Ok(Api {
            port: node.1.api,
            tls: tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)),
        })
    }

    /// A TLS connection to the API, the server verified as `server_name`.
    pub async fn connect(
        &self,
        server_name: &str,
    ) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await?;
        let name = rustls::pki_types::ServerName::try_from(server_name.to_owned())?;
        Ok(self.tls.connect(name, tcp).await?)
    }

    /// The API's address, `127.0.0.1:PORT`.
    pub fn authority(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// A response to GET `path`, its body still to read, the server's name
    /// checked as `server_name` (one of the certificate's names).
    pub async fn get_as(
        &self,
        server_name: &str,
        path: &str,
    ) -> Result<http::Response<hyper::body::Incoming>> {
        let tls = self.connect(server_name).await?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await?;
        tokio::spawn(conn);
        let req = http::Request::get(path)
            .header(http::header::HOST, format!("127.0.0.1:{}", self.port))
            .body(http_body_util::Empty::<hyper::body::Bytes>::new())?;
        Ok(sender.send_request(req).await?)
    }

    /// GET `path`: the status and the whole body as text.
    pub async fn get(&self, path: &str) -> Result<(http::StatusCode, String)> {
        use http_body_util::BodyExt;
        let resp = self.get_as("127.0.0.1", path).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
}
