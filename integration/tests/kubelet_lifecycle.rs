//! `berth node` against a real `berth runtime`: garbage collection keeps
//! only the newest exited instance of a crash-looping container (and its
//! restart count goes on), a failed image pull waits in `ErrImagePull` then
//! `ImagePullBackOff`, and `envFrom`/`secretKeyRef` read the node's config
//! directory while a missing ConfigMap is a `CreateContainerConfigError`.
//!
//! The pods use the host's network, as in `kubelet_static_pods.rs`.

use std::time::Duration;

use anyhow::{Result, ensure};
use berth_integration::node::{NodeTest, attempt, containers, sandboxes, wait_for};
use berth_proto::v1;

fn pod(name: &str, image: &str, script: &str, extra: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
spec:
  hostNetwork: true
  restartPolicy: Always
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: {image}
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", "{script}"]
{extra}"#
    )
}

fn exited(list: &[v1::Container]) -> Vec<u32> {
    let mut v: Vec<u32> = list
        .iter()
        .filter(|c| c.state == v1::ContainerState::ContainerExited as i32)
        .map(attempt)
        .collect();
    v.sort_unstable();
    v
}

#[test]
fn gc_image_pull_back_off_and_env_from() -> Result<()> {
    let t = NodeTest::start()?;
    let (image, log) = (t.image(), t.log());
    // The node's default config dir is <root>/config.
    let config = t.work().join("root/config");
    std::fs::create_dir_all(config.join("configmaps/default/app"))?;
    std::fs::write(config.join("configmaps/default/app/MODE"), "fast")?;
    std::fs::create_dir_all(config.join("secrets/default/creds"))?;
    std::fs::write(config.join("secrets/default/creds/password"), "hunter2")?;
    let _node = t.node_with(&["--gc-interval-seconds", "2"])?;

    t.runtime()?.block_on(async {
        let c = t.cri().await?;

        t.write("crasher", &pod("crasher", image, "exit 1", ""))?;
        t.write(
            "nopull",
            &pod("nopull", &t.registry().reference("nonexistent:1"), "true", ""),
        )?;
        let env = "    envFrom:\n    - configMapRef: {name: app}\n      prefix: CM_\n    env:\n    - name: PW\n      valueFrom:\n        secretKeyRef: {name: creds, key: password}\n";
        t.write("env", &pod("env", image, "exec sleep 1000", env))?;
        let missing = "    envFrom:\n    - configMapRef: {name: absent}\n";
        t.write("noconfig", &pod("noconfig", image, "exec sleep 1000", missing))?;

        // Instances 0 and 1 exit at once, 2 after a 10 s back-off: by then
        // the collector, every 2 s, has left only the newest exited one.
        wait_for(
            "a third crasher instance",
            Duration::from_secs(40),
            log,
            || async { Ok(containers(&c, "crasher").await?.iter().any(|x| attempt(x) >= 2)) },
        )
        .await?;
        wait_for(
            "only the newest exited crasher instance kept",
            Duration::from_secs(20),
            log,
            || async {
                let all = containers(&c, "crasher").await?;
                let newest = all.iter().map(attempt).max().unwrap_or(0);
                let exited = exited(&all);
                Ok(all.len() <= 2
                    && exited.len() == 1
                    && exited.iter().all(|a| *a + 1 >= newest))
            },
        )
        .await?;
        let text = std::fs::read_to_string(log)?;
        ensure!(
            text.contains("garbage collecting an exited container"),
            "no collection logged:\n{text}"
        );

        // The pull fails, then waits out its back-off.
        wait_for(
            "ErrImagePull then ImagePullBackOff",
            Duration::from_secs(20),
            log,
            || async {
                let text = std::fs::read_to_string(log)?;
                let pulled = text.find("ErrImagePull");
                let backoff = text.find("ImagePullBackOff");
                Ok(matches!((pulled, backoff), (Some(p), Some(b)) if p < b))
            },
        )
        .await?;
        ensure!(
            containers(&c, "nopull").await?.is_empty(),
            "a container without its image"
        );

        wait_for(
            "the env container running",
            Duration::from_secs(20),
            log,
            || async {
                Ok(containers(&c, "env")
                    .await?
                    .iter()
                    .any(|x| x.state == v1::ContainerState::ContainerRunning as i32))
            },
        )
        .await?;
        let id = containers(&c, "env").await?[0].id.clone();
        let out = c.exec_sync(&id, vec!["env".into()], 10).await?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        ensure!(
            text.contains("CM_MODE=fast\n") && text.contains("PW=hunter2\n"),
            "environment:\n{text}"
        );

        wait_for(
            "CreateContainerConfigError for the missing ConfigMap",
            Duration::from_secs(20),
            log,
            || async {
                let text = std::fs::read_to_string(log)?;
                Ok(text.contains("CreateContainerConfigError")
                    && text.contains("configMap default/absent not found"))
            },
        )
        .await?;
        ensure!(containers(&c, "noconfig").await?.is_empty());

        for name in ["crasher", "nopull", "env", "noconfig"] {
            t.remove(name)?;
        }
        for name in ["crasher", "nopull", "env", "noconfig"] {
            wait_for(
                &format!("the {name} pod removed"),
                Duration::from_secs(30),
                log,
                || async {
                    Ok(containers(&c, name).await?.is_empty()
                        && sandboxes(&c, name).await?.is_empty())
                },
            )
            .await?;
        }
        Ok(())
    })
}
