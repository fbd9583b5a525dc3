//! The pod status `berth node` reports on its API (`/pods`), against a real
//! `berth runtime`: readiness going up and down in the Ready condition, a
//! crash-looping container waiting in `CrashLoopBackOff` with its last
//! termination and its termination message, a failed `restartPolicy: Never`
//! pod in phase Failed with its log's tail as the message
//! (`FallbackToLogsOnError`), and init containers keeping a pod Pending and
//! uninitialized until they are done.

use std::time::Duration;

use anyhow::{Context, Result};
use berth_integration::node::{Api, NODE, NodeTest, wait_for};
use k8s_openapi::api::core::v1::{Pod, PodStatus};
use serde_json::Value;

fn pod(name: &str, image: &str, policy: &str, body: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
spec:
  hostNetwork: true
  restartPolicy: {policy}
  terminationGracePeriodSeconds: 1
{body}"#
    )
    .replace("IMAGE", image)
}

const READY: &str = r#"  containers:
  - name: main
    image: IMAGE
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", "sleep 2; touch /tmp/ready; sleep 4; rm /tmp/ready; exec sleep 1000"]
    readinessProbe:
      exec: {command: ["cat", "/tmp/ready"]}
      periodSeconds: 1
"#;

const CRASH: &str = r#"  containers:
  - name: main
    image: IMAGE
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", "echo out of disk > /dev/termination-log; exit 3"]
"#;

const FAIL: &str = r#"  containers:
  - name: main
    image: IMAGE
    imagePullPolicy: IfNotPresent
    terminationMessagePolicy: FallbackToLogsOnError
    command: ["sh", "-c", "echo something broke >&2; exit 2"]
"#;

const INIT: &str = r#"  initContainers:
  - name: wait
    image: IMAGE
    imagePullPolicy: IfNotPresent
    command: ["sleep", "3"]
  containers:
  - name: main
    image: IMAGE
    imagePullPolicy: IfNotPresent
    command: ["sleep", "1000"]
"#;

/// The status of pod `name` as `/pods` reports it.
async fn status(api: &Api, name: &str) -> Result<Option<PodStatus>> {
    let (code, body) = api.get("/pods").await?;
    anyhow::ensure!(code == 200, "/pods: {code} {body}");
    let list: Value = serde_json::from_str(&body)?;
    let full = format!("{name}-{NODE}");
    for item in list["items"].as_array().context("no items")? {
        let p: Pod = serde_json::from_value(item.clone())?;
        if p.metadata.name.as_deref() == Some(&full) {
            return Ok(p.status);
        }
    }
    Ok(None)
}

fn condition(s: &PodStatus, kind: &str) -> Option<String> {
    s.conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == kind)
        .map(|c| c.status.clone())
}

#[test]
fn pod_status_follows_the_containers() -> Result<()> {
    let t = NodeTest::start()?;
    let (image, log) = (t.image(), t.log());
    for (name, policy, body) in [
        ("ready", "Always", READY),
        ("crash", "Always", CRASH),
        ("fail", "Never", FAIL),
        ("init", "Always", INIT),
    ] {
        t.write(name, &pod(name, image, policy, body))?;
    }
    let node = t.node()?;
    t.runtime()?.block_on(async {
        let api = t.api(&node).await?;

        // Init: Pending and not initialized while `wait` runs, then Running.
        wait_for("init pending", Duration::from_secs(30), log, || async {
            Ok(status(&api, "init").await?.is_some_and(|s| {
                s.phase.as_deref() == Some("Pending")
                    && condition(&s, "Initialized").as_deref() == Some("False")
                    && s.init_container_statuses
                        .as_ref()
                        .is_some_and(|i| i[0].state.as_ref().is_some_and(|st| st.running.is_some()))
            }))
        })
        .await?;

        // Readiness up, then down.
        wait_for(
            "ready Running and not Ready",
            Duration::from_secs(30),
            log,
            || async {
                Ok(status(&api, "ready").await?.is_some_and(|s| {
                    s.phase.as_deref() == Some("Running")
                        && condition(&s, "Ready").as_deref() == Some("False")
                }))
            },
        )
        .await?;
        wait_for("ready Ready", Duration::from_secs(20), log, || async {
            Ok(status(&api, "ready")
                .await?
                .is_some_and(|s| condition(&s, "Ready").as_deref() == Some("True")))
        })
        .await?;
        wait_for(
            "ready not Ready again",
            Duration::from_secs(20),
            log,
            || async {
                Ok(status(&api, "ready").await?.is_some_and(|s| {
                    condition(&s, "Ready").as_deref() == Some("False")
                        && s.container_statuses.as_ref().is_some_and(|c| !c[0].ready)
                }))
            },
        )
        .await?;

        wait_for(
            "init Running and initialized",
            Duration::from_secs(30),
            log,
            || async {
                Ok(status(&api, "init").await?.is_some_and(|s| {
                    s.phase.as_deref() == Some("Running")
                        && condition(&s, "Initialized").as_deref() == Some("True")
                }))
            },
        )
        .await?;

        // The crasher waits out its back-off with its last termination.
        wait_for(
            "crash in CrashLoopBackOff",
            Duration::from_secs(40),
            log,
            || async {
                Ok(status(&api, "crash").await?.is_some_and(|s| {
                    let Some(c) = s.container_statuses.as_ref().and_then(|c| c.first()) else {
                        return false;
                    };
                    let waiting = c
                        .state
                        .as_ref()
                        .and_then(|st| st.waiting.as_ref())
                        .and_then(|w| w.reason.as_deref());
                    let last = c.last_state.as_ref().and_then(|l| l.terminated.as_ref());
                    waiting == Some("CrashLoopBackOff")
                        && c.restart_count >= 1
                        && last.is_some_and(|t| {
                            t.exit_code == 3 && t.message.as_deref() == Some("out of disk\n")
                        })
                        && s.phase.as_deref() == Some("Running")
                }))
            },
        )
        .await?;

        // The failed Never pod: Failed, its message from its log.
        wait_for("fail Failed", Duration::from_secs(30), log, || async {
            Ok(status(&api, "fail").await?.is_some_and(|s| {
                let terminated = s
                    .container_statuses
                    .as_ref()
                    .and_then(|c| c.first())
                    .and_then(|c| c.state.as_ref())
                    .and_then(|st| st.terminated.clone());
                s.phase.as_deref() == Some("Failed")
                    && terminated.is_some_and(|t| {
                        t.exit_code == 2
                            && t.reason.as_deref() == Some("Error")
                            && t.message.as_deref() == Some("something broke\n")
                    })
            }))
        })
        .await?;
        let s = status(&api, "fail").await?.context("fail")?;
        anyhow::ensure!(
            s.container_statuses.as_ref().is_some_and(|c| c[0]
                .container_id
                .as_deref()
                .is_some_and(|id| id.starts_with("berth://"))),
            "container IDs name the runtime: {s:?}"
        );
        anyhow::Ok(())
    })
}
