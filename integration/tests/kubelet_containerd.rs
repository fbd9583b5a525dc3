//! `berth node --runtime-endpoint` on Debian's containerd 1.6 and its CRI
//! plugin (a private instance in a test network namespace, berth's CNI
//! bridge, berth-oci as its runc under a cgroup root of the test's): a static
//! busybox pod on the pod network becomes Running and its container runs, a
//! crashing container is restarted, and removing a manifest removes its pod.
//!
//! Offline: the sandbox ("pause") image is busybox with a sleeping
//! entrypoint, imported with the test image before the node starts.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use berth_integration::LeakCheck;
use berth_integration::containerd::{Containerd, CriOptions};
use berth_integration::images::{self, busybox_config};
use berth_integration::netns::NetNs;
use berth_integration::node::{Node, attempt, containers, sandboxes, wait_for};
use berth_integration::oci::{Format, Image, ImageConfig};
use berth_integration::unique_id;
use berth_integration::workdir::tempdir;
use berth_kubelet::cri_client::CriClient;
use berth_proto::v1;
use serde_json::json;

const IMAGE: &str = "example.com/test/busybox:1";
const PAUSE: &str = "example.com/test/pause:1";

/// busybox whose entrypoint sleeps until SIGTERM: what a pause container does.
fn pause_image() -> Result<Image> {
    let config = ImageConfig {
        entrypoint: Some(vec![
            "sh".into(),
            "-c".into(),
            "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait $!; done".into(),
        ]),
        cmd: None,
        ..busybox_config()
    };
    Image::new(Format::Oci, &config, images::busybox()?.layers.clone())
}

fn manifest(name: &str, policy: &str, script: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
spec:
  restartPolicy: {policy}
  terminationGracePeriodSeconds: 2
  containers:
  - name: main
    image: {IMAGE}
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", "{script}"]
"#
    )
}

fn running(list: &[v1::Container]) -> Vec<&v1::Container> {
    list.iter()
        .filter(|x| x.state == v1::ContainerState::ContainerRunning as i32)
        .collect()
}

#[test]
fn berth_node_runs_static_pods_on_containerd() -> Result<()> {
    let check = LeakCheck::start();
    static_pods_on_containerd()?;
    // containerd, its shims, the pods' cgroups and mounts are gone.
    check.assert_clean(Duration::from_secs(20))
}

fn static_pods_on_containerd() -> Result<()> {
    // Dropped in reverse: the node, containerd (and its pods), the namespace.
    let netns = NetNs::new("kctrd")?;
    let ipam = tempdir("ipam-")?;
    let conflist = json!({
        "cniVersion": "1.0.0",
        "name": unique_id("berth-ctrd"),
        "plugins": [
            {
                "type": "bridge", "bridge": "ctrd0", "isGateway": true, "ipMasq": true,
                "ipam": {
                    "type": "host-local", "dataDir": ipam.path(),
                    "ranges": [[{"subnet": "10.89.8.0/24"}]],
                    "routes": [{"dst": "0.0.0.0/0"}]
                }
            },
            {"type": "portmap", "capabilities": {"portMappings": true}}
        ]
    });
    let ctrd = Containerd::start_cri(&CriOptions {
        netns: netns.path(),
        sandbox_image: PAUSE.into(),
        conflist,
    })?;
    ctrd.import(&[(PAUSE, &pause_image()?), (IMAGE, images::busybox()?)])?;
    let work = tempdir("node-")?;
    let manifests = work.path().join("manifests");
    std::fs::create_dir_all(&manifests)?;
    let log = work.path().join("node.log");
    // The pods' cgroups under the test's root, where berth-oci (containerd's
    // runc here) also takes the kubelet's cgroup parents to be.
    let cgroup_root = format!("/{}", ctrd.cgroup_root().context("no cgroup root")?);
    let mut node = Node::start_with(
        &manifests,
        &ctrd.socket,
        work.path(),
        &log,
        &["--cgroup-root", &cgroup_root],
    )?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let result = rt.block_on(async {
        let c = CriClient::connect(&ctrd.endpoint(), Duration::from_secs(10))
            .await?
            .with_request_timeout(Duration::from_secs(60));
        let version = c.version().await?;
        ensure!(
            version.runtime_name == "containerd",
            "not containerd: {version:?}"
        );

        std::fs::write(
            manifests.join("sleeper.yaml"),
            manifest(
                "sleeper",
                "Always",
                "echo alive > /tmp/alive; trap 'exit 0' TERM; sleep 1000 & wait $!",
            ),
        )?;
        wait_for(
            "a running sleeper container",
            Duration::from_secs(90),
            &log,
            || async { Ok(!running(&containers(&c, "sleeper").await?).is_empty()) },
        )
        .await?;
        let sandbox = sandboxes(&c, "sleeper").await?;
        ensure!(
            sandbox.len() == 1 && sandbox[0].state == v1::PodSandboxState::SandboxReady as i32,
            "sleeper's sandboxes: {sandbox:?}"
        );
        let status = c.pod_sandbox_status(&sandbox[0].id, false).await?.status;
        let ip = status
            .network
            .as_ref()
            .map(|n| n.ip.clone())
            .unwrap_or_default();
        ensure!(
            ip.starts_with("10.89.8."),
            "sleeper's pod IP {ip:?} is not on the bridge"
        );
        // The container's process runs: what it wrote is there, read by an exec.
        let list = containers(&c, "sleeper").await?;
        let id = running(&list)[0].id.clone();
        let out = c
            .exec_sync(&id, vec!["cat".into(), "/tmp/alive".into()], 10)
            .await?;
        ensure!(
            out.exit_code == 0 && out.stdout == b"alive\n",
            "exec in sleeper: {out:?}"
        );
        // Under the test's cgroup root, through berth-oci.
        let root = ctrd.cgroup_root().context("no cgroup root")?;
        let in_root = std::fs::read_to_string(format!("/proc/{}/cgroup", {
            let st = c.container_status(&id, true).await?;
            st.info
                .get("info")
                .and_then(|i| serde_json::from_str::<serde_json::Value>(i).ok())
                .and_then(|v| v["pid"].as_i64())
                .context("no pid in the container's verbose status")?
        }))?;
        ensure!(
            in_root.lines().any(|l| l.contains(&format!("/{root}/"))),
            "the container's cgroups are not under {root}:\n{in_root}"
        );

        std::fs::write(
            manifests.join("crasher.yaml"),
            manifest("crasher", "Always", "exit 1"),
        )?;
        wait_for(
            "a restarted crasher container",
            Duration::from_secs(60),
            &log,
            || async {
                Ok(containers(&c, "crasher")
                    .await?
                    .iter()
                    .any(|x| attempt(x) >= 1))
            },
        )
        .await?;

        for pod in ["sleeper", "crasher"] {
            std::fs::remove_file(manifests.join(format!("{pod}.yaml")))?;
            wait_for(
                &format!("the {pod} pod removed"),
                Duration::from_secs(60),
                &log,
                || async {
                    Ok(containers(&c, pod).await?.is_empty()
                        && sandboxes(&c, pod).await?.is_empty())
                },
            )
            .await?;
        }
        let leases = std::fs::read_dir(ipam.path())?
            .flatten()
            .flat_map(|d| std::fs::read_dir(d.path()).into_iter().flatten().flatten())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("10."))
            .collect::<Vec<_>>();
        ensure!(leases.is_empty(), "IPs still leased: {leases:?}");
        Ok(())
    });
    node.0.kill()?;
    node.0.wait()?;
    result.with_context(|| {
        format!(
            "berth node's log:\n{}\ncontainerd's log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default(),
            ctrd.log()
        )
    })
}
