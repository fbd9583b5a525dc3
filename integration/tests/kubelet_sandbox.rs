//! `berth node` re-creates a pod's sandbox when it dies, as upstream: the
//! sandbox stopped behind the node's back (here with StopPodSandbox, as a
//! crashed runtime or a reboot would leave it), the node kills what is left
//! of the pod, runs a new sandbox (attempt 1) and starts the container in it.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use berth_integration::node::{NodeTest, containers, sandboxes, wait_for};
use berth_proto::v1;

#[test]
fn a_dead_sandbox_is_replaced() -> Result<()> {
    let t = NodeTest::start()?;
    let (image, log) = (t.image(), t.log());
    t.write(
        "s",
        &format!(
            r#"apiVersion: v1
kind: Pod
metadata: {{name: s}}
spec:
  hostNetwork: true
  terminationGracePeriodSeconds: 1
  containers:
  - {{name: main, image: {image}, imagePullPolicy: IfNotPresent, command: [sleep, "1000"]}}
"#
        ),
    )?;
    let _node = t.node()?;
    t.runtime()?.block_on(async {
        let c = t.cri().await?;
        let running = |attempt: u32| {
            let c = c.clone();
            async move {
                let ready = sandboxes(&c, "s").await?.into_iter().find(|s| {
                    s.state == v1::PodSandboxState::SandboxReady as i32
                        && s.metadata.as_ref().is_some_and(|m| m.attempt == attempt)
                });
                let Some(sb) = ready else {
                    return Ok(false);
                };
                Ok(containers(&c, "s").await?.iter().any(|x| {
                    x.pod_sandbox_id == sb.id
                        && x.state == v1::ContainerState::ContainerRunning as i32
                }))
            }
        };
        wait_for(
            "the pod running in its first sandbox",
            Duration::from_secs(30),
            log,
            || running(0),
        )
        .await?;
        let first = sandboxes(&c, "s").await?.pop().context("no sandbox")?;
        c.stop_pod_sandbox(&first.id).await?;
        wait_for(
            "the pod running in a new sandbox",
            Duration::from_secs(30),
            log,
            || running(1),
        )
        .await?;
        let all = sandboxes(&c, "s").await?;
        ensure!(
            all.iter().all(|s| s.id != first.id),
            "the dead sandbox was kept: {all:?}"
        );
        anyhow::Ok(())
    })
}
