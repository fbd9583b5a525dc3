//! `berth node` for tests: started on a manifest dir against a CRI socket,
//! killed if the test ends first; and the CRI queries the tests make of the
//! pods it runs.

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use berth_kubelet::cri_client::CriClient;
use berth_proto::v1;

use crate::runtime::berth_binary;

/// The `--node-name` the tests give, so pods are `<name>-testnode`.
pub const NODE: &str = "testnode";

/// A running `berth node`; killed on drop if the test did not stop it.
pub struct Node(pub Child);

impl Node {
    /// `berth node` on `manifests`, talking to the runtime at `socket`, with
    /// its root and pod logs under `work` and its output in `log`.
    pub fn start(manifests: &Path, socket: &Path, work: &Path, log: &Path) -> Result<Node> {
        Self::start_with(manifests, socket, work, log, &[])
    }

    /// [`Node::start`] with more flags (`--gc-interval-seconds 2`...).
    pub fn start_with(
        manifests: &Path,
        socket: &Path,
        work: &Path,
        log: &Path,
        extra: &[&str],
    ) -> Result<Node> {
        // Appended to: a test may start the node again on the same log.
        let out = File::options().create(true).append(true).open(log)?;
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
            .args(extra)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("starting berth node")?;
        Ok(Node(child))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
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
