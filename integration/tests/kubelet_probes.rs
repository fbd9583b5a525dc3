//! `berth node` probes and hooks against a real `berth runtime`: a container
//! whose liveness exec probe starts failing is killed and restarted, its
//! postStart hook has run in it, and a tcpSocket readiness probe against a
//! busybox `nc` listener reports the container ready.
//!
//! The pods use the host's network, as in `kubelet_static_pods.rs`; the
//! readiness probe's listener is on a port picked free by the test.

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use berth_integration::node::{NodeTest, attempt, containers, wait_for};
use berth_proto::v1;

fn liveness_pod(image: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: live
spec:
  hostNetwork: true
  restartPolicy: Always
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: {image}
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", "touch /tmp/healthy; sleep 2; rm /tmp/healthy; exec sleep 1000"]
    lifecycle:
      postStart:
        exec:
          command: ["touch", "/tmp/post-started"]
    livenessProbe:
      exec:
        command: ["cat", "/tmp/healthy"]
      periodSeconds: 1
      failureThreshold: 2
"#
    )
}

fn readiness_pod(image: &str, port: u16) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: ready
spec:
  hostNetwork: true
  restartPolicy: Always
  terminationGracePeriodSeconds: 1
  containers:
  - name: listener
    image: {image}
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", "while true; do nc -l -p {port} </dev/null; done"]
    ports:
    - name: probe
      containerPort: {port}
    readinessProbe:
      tcpSocket:
        port: probe
      periodSeconds: 1
"#
    )
}

#[test]
fn liveness_restarts_and_readiness_reports() -> Result<()> {
    let t = NodeTest::start()?;
    let (image, log) = (t.image(), t.log());
    // Free now; a race with another process taking it would only fail the
    // readiness wait.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    t.write("live", &liveness_pod(image))?;
    t.write("ready", &readiness_pod(image, port))?;

    let mut node = t.node()?;

    t.runtime()?.block_on(async {
        let c = t.cri().await?;

        wait_for(
            "a running live container",
            Duration::from_secs(30),
            log,
            || async {
                Ok(containers(&c, "live")
                    .await?
                    .iter()
                    .any(|x| x.state == v1::ContainerState::ContainerRunning as i32))
            },
        )
        .await?;
        // postStart runs after StartContainer, while the runtime already
        // reports the container running: poll for what it made.
        wait_for(
            "the postStart hook's file in the live container",
            Duration::from_secs(10),
            log,
            || async {
                for x in containers(&c, "live").await? {
                    if x.state != v1::ContainerState::ContainerRunning as i32 {
                        continue;
                    }
                    let r = c
                        .exec_sync(&x.id, vec!["ls".into(), "/tmp/post-started".into()], 5)
                        .await;
                    if r.is_ok_and(|r| r.exit_code == 0) {
                        return Ok(true);
                    }
                }
                Ok(false)
            },
        )
        .await?;

        wait_for(
            "the live container restarted after failing its liveness probe",
            Duration::from_secs(30),
            log,
            || async {
                Ok(containers(&c, "live").await?.iter().any(|x| {
                    attempt(x) >= 1 && x.state == v1::ContainerState::ContainerRunning as i32
                }))
            },
        )
        .await?;
        let text = std::fs::read_to_string(log)?;
        ensure!(
            text.contains("failed liveness probe, will be restarted"),
            "no liveness kill in the log:\n{text}"
        );

        wait_for(
            "the listener reported ready",
            Duration::from_secs(20),
            log,
            || async {
                Ok(std::fs::read_to_string(log)?
                    .lines()
                    .any(|l| l.contains("container=listener") && l.contains("ready=true")))
            },
        )
        .await?;
        anyhow::Ok(())
    })?;

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(node.0.id())?),
        nix::sys::signal::Signal::SIGTERM,
    )?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while node.0.try_wait()?.is_none() {
        ensure!(
            Instant::now() < deadline,
            "berth node did not exit on SIGTERM:\n{}",
            std::fs::read_to_string(log)?
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}
