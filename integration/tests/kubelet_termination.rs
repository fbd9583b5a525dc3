//! Graceful termination by `berth node`, against a real `berth runtime`: a
//! pod whose manifest is removed has its container's preStop hook run
//! first, then SIGTERM, which the container traps to finish its work; one
//! that ignores SIGTERM is killed once its `terminationGracePeriodSeconds`
//! is over, not before.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use berth_integration::node::{NodeTest, containers, sandboxes, wait_for};
use berth_proto::v1;

fn pod(name: &str, image: &str, dir: &Path, grace: u32, script: &str, pre_stop: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  hostNetwork: true
  terminationGracePeriodSeconds: {grace}
  volumes:
  - {{name: out, hostPath: {{path: {dir}, type: Directory}}}}
  containers:
  - name: main
    image: {image}
    imagePullPolicy: IfNotPresent
    volumeMounts: [{{name: out, mountPath: /out}}]
    command: ["sh", "-c", {script:?}]
    lifecycle:
      preStop:
        exec: {{command: ["sh", "-c", {pre_stop:?}]}}
"#,
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
fn pre_stop_then_sigterm_then_the_grace_period() -> Result<()> {
    let t = NodeTest::start()?;
    let (image, log) = (t.image(), t.log());
    let out = t.work().join("out");
    std::fs::create_dir_all(&out)?;
    // Traps SIGTERM: says so, then exits 0.
    t.write(
        "polite",
        &pod(
            "polite",
            image,
            &out,
            30,
            "trap 'echo sigterm >> /out/polite; exit 0' TERM; echo started >> /out/polite; while true; do sleep 0.2; done",
            "echo prestop >> /out/polite; sleep 1; echo prestop-done >> /out/polite",
        ),
    )?;
    // Ignores SIGTERM: only SIGKILL at the end of its 3 s ends it.
    t.write(
        "stubborn",
        &pod(
            "stubborn",
            image,
            &out,
            3,
            "trap '' TERM; echo started >> /out/stubborn; while true; do sleep 0.2; done",
            "echo prestop >> /out/stubborn",
        ),
    )?;
    let _node = t.node()?;
    t.runtime()?.block_on(async {
        let c = t.cri().await?;
        for name in ["polite", "stubborn"] {
            let file = out.join(name);
            wait_for(
                &format!("{name} started"),
                Duration::from_secs(30),
                log,
                || async { Ok(lines(&file).first().map(String::as_str) == Some("started")) },
            )
            .await?;
        }

        t.remove("polite")?;
        wait_for("polite removed", Duration::from_secs(30), log, || async {
            Ok(containers(&c, "polite").await?.is_empty()
                && sandboxes(&c, "polite").await?.is_empty())
        })
        .await?;
        let polite = lines(&out.join("polite"));
        ensure!(
            polite == ["started", "prestop", "prestop-done", "sigterm"],
            "preStop must finish before SIGTERM: {polite:?}"
        );

        let began = Instant::now();
        t.remove("stubborn")?;
        wait_for("stubborn stopped", Duration::from_secs(30), log, || async {
            Ok(containers(&c, "stubborn")
                .await?
                .iter()
                .all(|x| x.state != v1::ContainerState::ContainerRunning as i32))
        })
        .await?;
        let took = began.elapsed();
        ensure!(
            took >= Duration::from_millis(2500),
            "stubborn was killed after {took:?}, before its 3 s grace period"
        );
        ensure!(
            lines(&out.join("stubborn")) == ["started", "prestop"],
            "{:?}",
            lines(&out.join("stubborn"))
        );
        anyhow::Ok(())
    })
}
