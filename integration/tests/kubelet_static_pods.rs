//! `berth node` against a real `berth runtime`: static pods from a manifest
//! directory come up, a crash-looping container is restarted with back-off,
//! a bad manifest is reported without touching the others, a node killed and
//! started again keeps the running containers and removes the pod whose
//! manifest went meanwhile, a deleted manifest's pod is removed, and SIGTERM
//! stops and removes every pod, exiting 0.
//!
//! The pods use the host's network: the daemon has no CNI config, and the
//! fixture registry the node pulls busybox from listens on the test's network.

use std::time::{Duration, Instant};

use anyhow::{Result, bail, ensure};
use berth_integration::node::{NodeTest, attempt, containers, sandboxes, wait_for};
use berth_proto::v1;

fn manifest(name: &str, image: &str, policy: &str, script: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
spec:
  hostNetwork: true
  restartPolicy: {policy}
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: {image}
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", "{script}"]
"#
    )
}

#[test]
fn static_pods_through_berth_node() -> Result<()> {
    let t = NodeTest::start()?;
    let (image, log) = (t.image(), t.log());
    t.write("bad", "apiVersion: v1\nkind: Pod\nspec: [oops\n")?;
    let mut node = t.node()?;

    t.runtime()?.block_on(async {
        let c = t.cri().await?;

        t.write(
            "sleeper",
            &manifest("sleeper", image, "Always", "exec sleep 1000"),
        )?;
        wait_for(
            "a running sleeper container",
            Duration::from_secs(30),
            log,
            || async {
                Ok(containers(&c, "sleeper")
                    .await?
                    .iter()
                    .any(|x| x.state == v1::ContainerState::ContainerRunning as i32))
            },
        )
        .await?;

        t.write("crasher", &manifest("crasher", image, "Always", "exit 1"))?;
        wait_for(
            "a restarted crasher container",
            Duration::from_secs(20),
            log,
            || async {
                Ok(containers(&c, "crasher")
                    .await?
                    .iter()
                    .any(|x| attempt(x) >= 1))
            },
        )
        .await?;
        // The first restart is at once, the second waits 10 s.
        tokio::time::sleep(Duration::from_secs(4)).await;
        let now = containers(&c, "crasher").await?;
        ensure!(
            now.iter().all(|x| attempt(x) <= 1),
            "restarted again without back-off: {now:?}"
        );
        let text = std::fs::read_to_string(log)?;
        ensure!(text.contains("back-off"), "no back-off logged:\n{text}");
        ensure!(
            text.contains("bad.yaml"),
            "the bad manifest was not reported:\n{text}"
        );

        // Killed and started again, the node keeps what runs and removes
        // the pod whose manifest went meanwhile.
        let running = |list: Vec<v1::Container>| -> Vec<String> {
            list.into_iter()
                .filter(|x| x.state == v1::ContainerState::ContainerRunning as i32)
                .map(|x| x.id)
                .collect()
        };
        let before = running(containers(&c, "sleeper").await?);
        node.0.kill()?;
        node.0.wait()?;
        t.remove("crasher")?;
        node = t.node()?;
        wait_for(
            "the crasher pod removed on start",
            Duration::from_secs(20),
            log,
            || async {
                Ok(containers(&c, "crasher").await?.is_empty()
                    && sandboxes(&c, "crasher").await?.is_empty())
            },
        )
        .await?;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let after = running(containers(&c, "sleeper").await?);
        ensure!(
            before.len() == 1 && after == before,
            "adopted {before:?}, now {after:?}"
        );

        t.remove("sleeper")?;
        t.write(
            "last",
            &manifest("last", image, "Always", "exec sleep 1000"),
        )?;
        wait_for(
            "the sleeper pod removed",
            Duration::from_secs(20),
            log,
            || async {
                Ok(containers(&c, "sleeper").await?.is_empty()
                    && sandboxes(&c, "sleeper").await?.is_empty())
            },
        )
        .await?;
        wait_for(
            "a running last container",
            Duration::from_secs(20),
            log,
            || async { Ok(!running(containers(&c, "last").await?).is_empty()) },
        )
        .await?;

        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(node.0.id())?),
            nix::sys::signal::Signal::SIGTERM,
        )?;
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(s) = node.0.try_wait()? {
                break s;
            }
            if Instant::now() > deadline {
                bail!(
                    "berth node did not exit on SIGTERM:\n{}",
                    std::fs::read_to_string(log)?
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        ensure!(
            status.success(),
            "berth node exited with {status}:\n{}",
            std::fs::read_to_string(log)?
        );
        let left = c.list_pod_sandbox(None).await?;
        ensure!(left.is_empty(), "sandboxes left after SIGTERM: {left:?}");
        let left = c.list_containers(None).await?;
        ensure!(left.is_empty(), "containers left after SIGTERM: {left:?}");
        Ok(())
    })
}
