//! `berth node` sidecars (init containers with `restartPolicy: Always`)
//! against a real `berth runtime`: they start in order, each before the
//! next init container and, with a startup probe, only once it passed; they
//! are stopped after the main container, in reverse order; a pod whose
//! main container finished under `restartPolicy: Never` has its sidecar
//! stopped; and a sidecar that exits is restarted even under `Never`.
//!
//! Every container appends to a file in a shared hostPath directory when it
//! starts and when SIGTERM reaches it; the order of the lines is the order
//! of the events.

use std::path::Path;
use std::time::Duration;

use anyhow::{Result, ensure};
use berth_integration::node::{NodeTest, containers, sandboxes, wait_for};
use berth_proto::v1;

/// A container that logs its start (and with `up`, creates `/tmp/up` after
/// a second, which its startup probe waits for), and its SIGTERM, to
/// `/log/<file>`.
fn logging(name: &str, image: &str, file: &str, up: bool, extra: &str) -> String {
    let up = if up {
        format!("sleep 1; echo up-{name} >> /log/{file}; touch /tmp/up\n      ")
    } else {
        String::new()
    };
    format!(
        r#"  - name: {name}
    image: {image}
    imagePullPolicy: IfNotPresent
    volumeMounts: [{{name: log, mountPath: /log}}]
{extra}    command:
    - sh
    - -c
    - |
      trap "echo stop-{name} >> /log/{file}; exit 0" TERM
      echo start-{name} >> /log/{file}
      {up}while true; do sleep 1 & wait $!; done
"#
    )
}

const SIDECAR: &str = "    restartPolicy: Always\n";
const STARTUP: &str = "    restartPolicy: Always
    startupProbe:
      exec:
        command: [cat, /tmp/up]
      periodSeconds: 1
      failureThreshold: 30
";

fn pod(name: &str, policy: &str, dir: &Path, inits: &str, containers: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
spec:
  hostNetwork: true
  restartPolicy: {policy}
  terminationGracePeriodSeconds: 10
  volumes:
  - name: log
    hostPath: {{path: {dir}, type: DirectoryOrCreate}}
  initContainers:
{inits}  containers:
{containers}"#,
        dir = dir.display()
    )
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn sidecars_start_in_order_and_stop_after_the_main_containers() -> Result<()> {
    let t = NodeTest::start()?;
    let (image, log) = (t.image(), t.log());
    let shared = t.work().join("shared");
    let _node = t.node()?;

    t.runtime()?.block_on(async {
        let c = t.cri().await?;

        let inits = [
            logging("sc1", image, "order", false, SIDECAR),
            logging("sc2", image, "order", true, STARTUP),
            format!(
                "  - name: i1\n    image: {image}\n    imagePullPolicy: IfNotPresent\n    volumeMounts: [{{name: log, mountPath: /log}}]\n    command: [sh, -c, \"echo start-i1 >> /log/order\"]\n"
            ),
        ]
        .concat();
        t.write(
            "order",
            &pod(
                "order",
                "Always",
                &shared,
                &inits,
                &logging("main", image, "order", false, ""),
            ),
        )?;
        let order = shared.join("order");
        wait_for("the main container started", Duration::from_secs(60), log, || async {
            Ok(lines(&order).iter().any(|l| l == "start-main"))
        })
        .await?;
        ensure!(
            lines(&order) == ["start-sc1", "start-sc2", "up-sc2", "start-i1", "start-main"],
            "start order: {:?}",
            lines(&order)
        );
        let running = containers(&c, "order")
            .await?
            .into_iter()
            .filter(|x| x.state == v1::ContainerState::ContainerRunning as i32)
            .count();
        ensure!(running == 3, "{running} containers running, not sc1, sc2 and main");

        t.remove("order")?;
        wait_for("the order pod removed", Duration::from_secs(60), log, || async {
            Ok(containers(&c, "order").await?.is_empty()
                && sandboxes(&c, "order").await?.is_empty())
        })
        .await?;
        ensure!(
            lines(&order)[5..] == ["stop-main", "stop-sc2", "stop-sc1"],
            "stop order: {:?}",
            lines(&order)
        );

        // Under Never, the main container's exit ends the pod: its sidecar
        // is stopped, not left running.
        let done = shared.join("done");
        let main = format!(
            "  - name: main\n    image: {image}\n    imagePullPolicy: IfNotPresent\n    volumeMounts: [{{name: log, mountPath: /log}}]\n    command: [sh, -c, \"sleep 1; echo exit-main >> /log/done\"]\n"
        );
        t.write(
            "done",
            &pod(
                "done",
                "Never",
                &shared,
                &logging("sc", image, "done", false, SIDECAR),
                &main,
            ),
        )?;
        wait_for("the sidecar stopped", Duration::from_secs(60), log, || async {
            let all = containers(&c, "done").await?;
            Ok(all.len() == 2
                && all
                    .iter()
                    .all(|x| x.state == v1::ContainerState::ContainerExited as i32))
        })
        .await?;
        ensure!(
            lines(&done) == ["start-sc", "exit-main", "stop-sc"],
            "done pod: {:?}",
            lines(&done)
        );
        // A sidecar that exits is restarted even under Never, while the
        // main container runs on.
        let flappy = format!(
            "  - name: sc\n    image: {image}\n    imagePullPolicy: IfNotPresent\n    restartPolicy: Always\n    command: [sh, -c, \"sleep 1\"]\n"
        );
        let sleeper = format!(
            "  - name: main\n    image: {image}\n    imagePullPolicy: IfNotPresent\n    command: [sh, -c, \"exec sleep 1000\"]\n"
        );
        t.write("flappy", &pod("flappy", "Never", &shared, &flappy, &sleeper))?;
        wait_for("the sidecar restarted", Duration::from_secs(30), log, || async {
            Ok(containers(&c, "flappy")
                .await?
                .iter()
                .any(|x| x.metadata.as_ref().is_some_and(|m| m.name == "sc" && m.attempt >= 1)))
        })
        .await?;
        let main_running = containers(&c, "flappy").await?.iter().any(|x| {
            x.metadata.as_ref().is_some_and(|m| m.name == "main")
                && x.state == v1::ContainerState::ContainerRunning as i32
        });
        ensure!(main_running, "the main container stopped with its sidecar");
        t.remove("flappy")?;
        wait_for("the flappy pod removed", Duration::from_secs(30), log, || async {
            Ok(containers(&c, "flappy").await?.is_empty()
                && sandboxes(&c, "flappy").await?.is_empty())
        })
        .await?;

        t.remove("done")?;
        wait_for("the done pod removed", Duration::from_secs(30), log, || async {
            Ok(containers(&c, "done").await?.is_empty() && sandboxes(&c, "done").await?.is_empty())
        })
        .await?;
        Ok(())
    })
}
