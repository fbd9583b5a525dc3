//! `berth runtime` pods and containers over CRI: a pod sandbox with its own
//! network (berth's CNI chain in a "node" network namespace), a busybox
//! container with a CRI log, ExecSync, graceful and forced stops, status
//! and list filters, bad requests, and a `kill -9` of the daemon that
//! running containers survive.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use berth_integration::cri::{Clients, CriDaemon, Options};
use berth_integration::images;
use berth_integration::netns::NetNs;
use berth_integration::workdir::tempdir;
use berth_proto::v1;
use serde_json::json;
use tonic::Code;

const IMAGE: &str = "example.com/test/busybox:1";

fn conflist(ipam_dir: &Path) -> serde_json::Value {
    json!({
        "cniVersion": "1.0.0",
        "name": "berth-cri-it",
        "plugins": [
            {
                "type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": true,
                "ipam": {
                    "type": "host-local", "dataDir": ipam_dir,
                    "ranges": [[{"subnet": "10.89.0.0/24"}]],
                    "routes": [{"dst": "0.0.0.0/0"}]
                }
            },
            {"type": "portmap", "capabilities": {"portMappings": true}},
            {"type": "loopback"}
        ]
    })
}

struct Node {
    // Field order: the daemon (and its pods) go before the namespace.
    daemon: CriDaemon,
    _ipam: tempfile::TempDir,
    _netns: NetNs,
}

fn node() -> Result<Node> {
    let netns = NetNs::new("cri")?;
    let ipam = tempdir("ipam-")?;
    let daemon = CriDaemon::start(Options {
        netns: Some(netns.path()),
        conflist: Some(conflist(ipam.path())),
        ..Default::default()
    })?;
    daemon.import(&[(IMAGE, images::busybox()?)])?;
    Ok(Node {
        daemon,
        _ipam: ipam,
        _netns: netns,
    })
}

fn rt() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

fn pod_config(d: &CriDaemon, name: &str) -> v1::PodSandboxConfig {
    v1::PodSandboxConfig {
        metadata: Some(v1::PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: format!("{name}-host"),
        log_directory: d.log_dir(name).display().to_string(),
        dns_config: Some(v1::DnsConfig {
            servers: vec!["10.96.0.10".into()],
            searches: vec!["default.svc.cluster.local".into()],
            options: vec!["ndots:5".into()],
        }),
        port_mappings: vec![v1::PortMapping {
            protocol: v1::Protocol::Tcp as i32,
            container_port: 8080,
            host_port: 18080,
            host_ip: String::new(),
        }],
        labels: HashMap::from([("app".to_string(), name.to_string())]),
        linux: Some(v1::LinuxPodSandboxConfig {
            cgroup_parent: format!("/kubepods/pod-{name}"),
            sysctls: HashMap::from([(
                "net.ipv4.ip_unprivileged_port_start".to_string(),
                "0".to_string(),
            )]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn container_config(name: &str, cmd: &[&str]) -> v1::ContainerConfig {
    v1::ContainerConfig {
        metadata: Some(v1::ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(v1::ImageSpec {
            image: IMAGE.into(),
            ..Default::default()
        }),
        command: cmd.iter().map(|s| s.to_string()).collect(),
        envs: vec![v1::KeyValue {
            key: "GREETING".into(),
            value: b"hello from env".to_vec(),
        }],
        log_path: format!("{name}.log"),
        labels: HashMap::from([("role".to_string(), name.to_string())]),
        ..Default::default()
    }
}

async fn run_pod(c: &mut Clients, config: &v1::PodSandboxConfig) -> Result<String, tonic::Status> {
    Ok(c.runtime
        .run_pod_sandbox(v1::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: String::new(),
        })
        .await?
        .into_inner()
        .pod_sandbox_id)
}

async fn create(
    c: &mut Clients,
    pod: &str,
    pod_config: &v1::PodSandboxConfig,
    config: v1::ContainerConfig,
) -> Result<String, tonic::Status> {
    Ok(c.runtime
        .create_container(v1::CreateContainerRequest {
            pod_sandbox_id: pod.into(),
            config: Some(config),
            sandbox_config: Some(pod_config.clone()),
        })
        .await?
        .into_inner()
        .container_id)
}

async fn status(c: &mut Clients, id: &str) -> Result<v1::ContainerStatus> {
    c.runtime
        .container_status(v1::ContainerStatusRequest {
            container_id: id.into(),
            verbose: true,
        })
        .await?
        .into_inner()
        .status
        .context("ContainerStatus has no status")
}

async fn exec(
    c: &mut Clients,
    id: &str,
    cmd: &[&str],
    timeout: i64,
) -> Result<v1::ExecSyncResponse, tonic::Status> {
    Ok(c.runtime
        .exec_sync(v1::ExecSyncRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout,
        })
        .await?
        .into_inner())
}

async fn wait_state(
    c: &mut Clients,
    id: &str,
    want: v1::ContainerState,
) -> Result<v1::ContainerStatus> {
    for _ in 0..500 {
        let s = status(c, id).await?;
        if s.state == want as i32 {
            return Ok(s);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    anyhow::bail!("container {id} never reached {want:?}")
}

#[test]
fn a_pod_with_a_container_runs_execs_logs_and_stops() -> Result<()> {
    let node = node()?;
    let d = &node.daemon;
    rt()?
        .block_on(async {
            let mut c = d.clients().await?;
            let st = c
                .runtime
                .status(v1::StatusRequest { verbose: false })
                .await?
                .into_inner();
            let conds = st.status.context("no conditions")?.conditions;
            ensure!(conds.iter().all(|c| c.status), "{conds:?}");

            let pc = pod_config(d, "web");
            let pod = run_pod(&mut c, &pc).await?;
            let ps = c
                .runtime
                .pod_sandbox_status(v1::PodSandboxStatusRequest {
                    pod_sandbox_id: pod.clone(),
                    verbose: true,
                })
                .await?
                .into_inner();
            let s = ps.status.context("no status")?;
            ensure!(s.state == v1::PodSandboxState::SandboxReady as i32, "{s:?}");
            let ip = s.network.context("no network")?.ip;
            ensure!(ip.starts_with("10.89.0."), "pod IP {ip}");
            ensure!(ps.info.contains_key("info"), "{:?}", ps.info);

            let cid = create(
                &mut c,
                &pod,
                &pc,
                container_config(
                    "app",
                    &[
                        "sh",
                        "-c",
                        "trap '' TERM; echo started; echo oops >&2; echo $GREETING; sleep 1000",
                    ],
                ),
            )
            .await?;
            let s = status(&mut c, &cid).await?;
            ensure!(
                s.state == v1::ContainerState::ContainerCreated as i32,
                "{s:?}"
            );
            c.runtime
                .start_container(v1::StartContainerRequest {
                    container_id: cid.clone(),
                })
                .await?;
            let again = c
                .runtime
                .start_container(v1::StartContainerRequest {
                    container_id: cid.clone(),
                })
                .await
                .err()
                .context("a second start succeeded")?;
            ensure!(again.code() == Code::FailedPrecondition, "{again:?}");
            let s = status(&mut c, &cid).await?;
            ensure!(
                s.state == v1::ContainerState::ContainerRunning as i32,
                "{s:?}"
            );
            ensure!(s.started_at >= s.created_at && s.started_at > 0, "{s:?}");
            ensure!(s.image_id.starts_with("sha256:"), "{s:?}");

            // The pod's hostname, DNS and sysctl are what the config asked for.
            let r = exec(&mut c, &cid, &["hostname"], 10).await?;
            ensure!(
                String::from_utf8_lossy(&r.stdout).trim() == "web-host",
                "{r:?}"
            );
            let r = exec(&mut c, &cid, &["cat", "/etc/resolv.conf"], 10).await?;
            let resolv = String::from_utf8_lossy(&r.stdout);
            ensure!(
                resolv.contains("nameserver 10.96.0.10") && resolv.contains("options ndots:5"),
                "{resolv}"
            );
            let r = exec(
                &mut c,
                &cid,
                &["cat", "/proc/sys/net/ipv4/ip_unprivileged_port_start"],
                10,
            )
            .await?;
            ensure!(String::from_utf8_lossy(&r.stdout).trim() == "0", "{r:?}");
            let r = exec(&mut c, &cid, &["ip", "-4", "addr", "show", "eth0"], 10).await?;
            ensure!(String::from_utf8_lossy(&r.stdout).contains(&ip), "{r:?}");
            // The pod reaches its gateway, the node's bridge.
            let r = exec(&mut c, &cid, &["ping", "-c1", "-W2", "10.89.0.1"], 10).await?;
            ensure!(r.exit_code == 0, "{r:?}");
            // Exit codes and stderr come back; a timeout kills the command.
            let r = exec(&mut c, &cid, &["sh", "-c", "echo err >&2; exit 7"], 10).await?;
            ensure!(r.exit_code == 7 && r.stderr == b"err\n", "{r:?}");
            let t = exec(&mut c, &cid, &["sleep", "30"], 1)
                .await
                .err()
                .context("no timeout")?;
            ensure!(t.code() == Code::DeadlineExceeded, "{t:?}");
            // A command that leaves a process behind returns when it exits,
            // not when its leftover closes the output.
            let started = std::time::Instant::now();
            let r = exec(&mut c, &cid, &["sh", "-c", "sleep 600 & echo left"], 0).await?;
            ensure!(r.exit_code == 0 && r.stdout == b"left\n", "{r:?}");
            ensure!(
                started.elapsed() < Duration::from_secs(30),
                "{:?}",
                started.elapsed()
            );

            // The CRI log holds both streams.
            let log = d.log_dir("web").join("app.log");
            let mut text = String::new();
            for _ in 0..100 {
                text = std::fs::read_to_string(&log).unwrap_or_default();
                if text.contains("hello from env") {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            ensure!(text.contains(" stdout F started\n"), "{text}");
            ensure!(text.contains(" stderr F oops\n"), "{text}");
            ensure!(s.log_path == log.display().to_string(), "{s:?}");
            // Log rotation: the kubelet moves the file away, the monitor reopens.
            std::fs::rename(&log, log.with_extension("log.1"))?;
            c.runtime
                .reopen_container_log(v1::ReopenContainerLogRequest {
                    container_id: cid.clone(),
                })
                .await?;
            ensure!(log.exists(), "no new log file after ReopenContainerLog");

            // Lists and their filters.
            let all = c
                .runtime
                .list_containers(v1::ListContainersRequest { filter: None })
                .await?
                .into_inner();
            ensure!(all.containers.len() == 1, "{all:?}");
            let by_label = c
                .runtime
                .list_containers(v1::ListContainersRequest {
                    filter: Some(v1::ContainerFilter {
                        label_selector: HashMap::from([("role".to_string(), "other".to_string())]),
                        ..Default::default()
                    }),
                })
                .await?
                .into_inner();
            ensure!(by_label.containers.is_empty(), "{by_label:?}");
            let pods = c
                .runtime
                .list_pod_sandbox(v1::ListPodSandboxRequest {
                    filter: Some(v1::PodSandboxFilter {
                        id: pod[..12].to_string(),
                        ..Default::default()
                    }),
                })
                .await?
                .into_inner();
            ensure!(pods.items.len() == 1 && pods.items[0].id == pod, "{pods:?}");
            // The streaming forms of the lists.
            let mut stream = c
                .runtime
                .stream_containers(v1::StreamContainersRequest { filter: None })
                .await?
                .into_inner();
            let mut streamed = Vec::new();
            while let Some(m) = stream.message().await? {
                streamed.extend(m.containers);
            }
            ensure!(streamed.len() == 1 && streamed[0].id == cid, "{streamed:?}");
            let mut stream = c
                .runtime
                .stream_pod_sandboxes(v1::StreamPodSandboxesRequest { filter: None })
                .await?
                .into_inner();
            let mut streamed = Vec::new();
            while let Some(m) = stream.message().await? {
                streamed.extend(m.pod_sandboxes);
            }
            ensure!(streamed.len() == 1 && streamed[0].id == pod, "{streamed:?}");

            // It ignores SIGTERM: after the grace period, SIGKILL.
            c.runtime
                .stop_container(v1::StopContainerRequest {
                    container_id: cid.clone(),
                    timeout: 1,
                })
                .await?;
            let s = wait_state(&mut c, &cid, v1::ContainerState::ContainerExited).await?;
            ensure!(s.exit_code == 137 && s.reason == "Error", "{s:?}");
            ensure!(s.finished_at >= s.started_at, "{s:?}");

            // A container that exits by itself.
            let done = create(&mut c, &pod, &pc, container_config("done", &["true"])).await?;
            c.runtime
                .start_container(v1::StartContainerRequest {
                    container_id: done.clone(),
                })
                .await?;
            let s = wait_state(&mut c, &done, v1::ContainerState::ContainerExited).await?;
            ensure!(s.exit_code == 0 && s.reason == "Completed", "{s:?}");

            c.runtime
                .stop_pod_sandbox(v1::StopPodSandboxRequest {
                    pod_sandbox_id: pod.clone(),
                })
                .await?;
            c.runtime
                .remove_pod_sandbox(v1::RemovePodSandboxRequest {
                    pod_sandbox_id: pod.clone(),
                })
                .await?;
            let left = c
                .runtime
                .list_containers(v1::ListContainersRequest { filter: None })
                .await?
                .into_inner();
            ensure!(left.containers.is_empty(), "{left:?}");
            ensure!(d.mounts().is_empty(), "mounts left: {:?}", d.mounts());
            // Idempotent on what is gone.
            c.runtime
                .stop_pod_sandbox(v1::StopPodSandboxRequest {
                    pod_sandbox_id: pod.clone(),
                })
                .await?;
            c.runtime
                .remove_container(v1::RemoveContainerRequest {
                    container_id: cid.clone(),
                })
                .await?;
            Ok(())
        })
        .with_context(|| format!("daemon log:\n{}", d.log()))
}

#[test]
fn bad_requests_get_clear_errors_and_leave_nothing() -> Result<()> {
    let node = node()?;
    let d = &node.daemon;
    rt()?
        .block_on(async {
            let mut c = d.clients().await?;
            let e = c
                .runtime
                .run_pod_sandbox(v1::RunPodSandboxRequest::default())
                .await
                .err()
                .context("no config accepted")?;
            ensure!(
                e.code() == Code::InvalidArgument && e.message().contains("config"),
                "{e:?}"
            );
            let mut pc = pod_config(d, "bad");
            pc.metadata.as_mut().context("meta")?.name = "a/b".into();
            let e = run_pod(&mut c, &pc).await.err().context("a/b accepted")?;
            ensure!(
                e.code() == Code::InvalidArgument && e.message().contains("a/b"),
                "{e:?}"
            );
            let mut pc = pod_config(d, "bad");
            pc.linux.as_mut().context("linux")?.sysctls =
                HashMap::from([("kernel.panic".into(), "1".into())]);
            let e = run_pod(&mut c, &pc)
                .await
                .err()
                .context("kernel.panic accepted")?;
            ensure!(
                e.code() == Code::InvalidArgument && e.message().contains("kernel.panic"),
                "{e:?}"
            );
            ensure!(
                d.mounts().is_empty(),
                "a failed RunPodSandbox left mounts: {:?}",
                d.mounts()
            );

            let pc = pod_config(d, "good");
            let pod = run_pod(&mut c, &pc).await?;
            let mut other = pc.clone();
            other.hostname = "different".into();
            let e = run_pod(&mut c, &other)
                .await
                .err()
                .context("a second pod with the same name")?;
            ensure!(e.code() == Code::AlreadyExists, "{e:?}");
            // The very same request again (a kubelet retry) gets the same pod.
            ensure!(run_pod(&mut c, &pc).await? == pod);

            let e = c
                .runtime
                .pod_sandbox_status(v1::PodSandboxStatusRequest {
                    pod_sandbox_id: "nope".into(),
                    verbose: false,
                })
                .await
                .err()
                .context("status of nothing")?;
            ensure!(e.code() == Code::NotFound, "{e:?}");
            let e = create(&mut c, "nope", &pc, container_config("x", &["true"]))
                .await
                .err()
                .context("no pod")?;
            ensure!(e.code() == Code::NotFound, "{e:?}");
            let mut cc = container_config("x", &["true"]);
            cc.image = Some(v1::ImageSpec {
                image: "example.com/missing:1".into(),
                ..Default::default()
            });
            let e = create(&mut c, &pod, &pc, cc)
                .await
                .err()
                .context("missing image")?;
            ensure!(
                e.code() == Code::NotFound && e.message().contains("example.com/missing:1"),
                "{e:?}"
            );
            let mut cc = container_config("x", &["true"]);
            cc.log_path = "../escape.log".into();
            let e = create(&mut c, &pod, &pc, cc)
                .await
                .err()
                .context("log path escaped")?;
            ensure!(
                e.code() == Code::InvalidArgument && e.message().contains("escape.log"),
                "{e:?}"
            );
            let mut cc = container_config("x", &["true"]);
            cc.mounts = vec![v1::Mount {
                container_path: "relative".into(),
                host_path: "/tmp".into(),
                ..Default::default()
            }];
            let e = create(&mut c, &pod, &pc, cc)
                .await
                .err()
                .context("relative mount")?;
            ensure!(
                e.code() == Code::InvalidArgument && e.message().contains("mounts[0]"),
                "{e:?}"
            );
            let e = exec(&mut c, "nope", &["true"], 1)
                .await
                .err()
                .context("exec in nothing")?;
            ensure!(e.code() == Code::NotFound, "{e:?}");
            // Nothing was left by the failed creates: the name is free again.
            let ok = create(&mut c, &pod, &pc, container_config("x", &["true"])).await?;
            // The very same request again (a kubelet retry) gets the same
            // container; another config under the same name is refused.
            ensure!(create(&mut c, &pod, &pc, container_config("x", &["true"])).await? == ok);
            let dup = create(&mut c, &pod, &pc, container_config("x", &["false"]))
                .await
                .err()
                .context("duplicate container name")?;
            ensure!(dup.code() == Code::AlreadyExists, "{dup:?}");
            c.runtime
                .remove_container(v1::RemoveContainerRequest { container_id: ok })
                .await?;
            c.runtime
                .remove_pod_sandbox(v1::RemovePodSandboxRequest {
                    pod_sandbox_id: pod,
                })
                .await?;
            ensure!(d.mounts().is_empty(), "mounts left: {:?}", d.mounts());
            Ok(())
        })
        .with_context(|| format!("daemon log:\n{}", d.log()))
}

#[test]
fn running_containers_survive_a_kill_9_of_the_daemon() -> Result<()> {
    let mut node = node()?;
    let rt = rt()?;
    let (pod, cid, pid) = rt.block_on(async {
        let d = &node.daemon;
        let mut c = d.clients().await?;
        let pc = pod_config(d, "survivor");
        let pod = run_pod(&mut c, &pc).await?;
        let cid = create(
            &mut c,
            &pod,
            &pc,
            container_config("app", &["sleep", "1000"]),
        )
        .await?;
        c.runtime
            .start_container(v1::StartContainerRequest {
                container_id: cid.clone(),
            })
            .await?;
        let v = c
            .runtime
            .container_status(v1::ContainerStatusRequest {
                container_id: cid.clone(),
                verbose: true,
            })
            .await?
            .into_inner();
        let info: serde_json::Value = serde_json::from_str(v.info.get("info").context("no info")?)?;
        let pid = info["pid"].as_i64().context("no pid")?;
        anyhow::Ok((pod, cid, pid))
    })?;
    node.daemon.restart()?;
    rt.block_on(async {
        let d = &node.daemon;
        let mut c = d.clients().await?;
        let s = status(&mut c, &cid).await?;
        ensure!(
            s.state == v1::ContainerState::ContainerRunning as i32,
            "{s:?}"
        );
        ensure!(
            Path::new(&format!("/proc/{pid}")).exists(),
            "the container's init {pid} is gone"
        );
        let p = c
            .runtime
            .pod_sandbox_status(v1::PodSandboxStatusRequest {
                pod_sandbox_id: pod.clone(),
                verbose: false,
            })
            .await?
            .into_inner()
            .status
            .context("no status")?;
        ensure!(p.state == v1::PodSandboxState::SandboxReady as i32, "{p:?}");
        c.runtime
            .remove_pod_sandbox(v1::RemovePodSandboxRequest {
                pod_sandbox_id: pod,
            })
            .await?;
        ensure!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "the container outlived its pod"
        );
        ensure!(d.mounts().is_empty(), "mounts left: {:?}", d.mounts());
        Ok(())
    })
    .with_context(|| format!("daemon log:\n{}", node.daemon.log()))
}

#[test]
fn stats_and_container_events() -> Result<()> {
    let node = node()?;
    let d = &node.daemon;
    rt()?
        .block_on(async {
            let mut c = d.clients().await?;
            let mut events = c
                .runtime
                .get_container_events(v1::GetEventsRequest {})
                .await?
                .into_inner();
            let pc = pod_config(d, "stats");
            let pod = run_pod(&mut c, &pc).await?;
            let cid = create(
                &mut c,
                &pod,
                &pc,
                container_config(
                    "busy",
                    &[
                        "sh",
                        "-c",
                        "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done; sleep 2; exit 3",
                    ],
                ),
            )
            .await?;
            c.runtime
                .start_container(v1::StartContainerRequest {
                    container_id: cid.clone(),
                })
                .await?;

            let s = c
                .runtime
                .container_stats(v1::ContainerStatsRequest {
                    container_id: cid.clone(),
                })
                .await?
                .into_inner()
                .stats
                .context("no stats")?;
            let cpu = s
                .cpu
                .context("no cpu")?
                .usage_core_nano_seconds
                .context("no usage")?
                .value;
            ensure!(cpu > 0, "cpu {cpu}");
            let mem = s
                .memory
                .context("no memory")?
                .working_set_bytes
                .context("no working set")?
                .value;
            ensure!(mem > 0, "memory {mem}");
            ensure!(s.writable_layer.is_some(), "no writable layer");
            let p = c
                .runtime
                .pod_sandbox_stats(v1::PodSandboxStatsRequest {
                    pod_sandbox_id: pod.clone(),
                })
                .await?
                .into_inner()
                .stats
                .context("no pod stats")?;
            let linux = p.linux.context("no linux stats")?;
            ensure!(linux.containers.len() == 1, "{linux:?}");
            let eth0 = linux
                .network
                .context("no network stats")?
                .default_interface
                .context("no eth0")?;
            ensure!(eth0.name == "eth0", "{eth0:?}");
            let listed = c
                .runtime
                .list_container_stats(v1::ListContainerStatsRequest { filter: None })
                .await?
                .into_inner();
            ensure!(listed.stats.len() == 1, "{listed:?}");

            let s = wait_state(&mut c, &cid, v1::ContainerState::ContainerExited).await?;
            ensure!(s.exit_code == 3 && s.reason == "Error", "{s:?}");
            c.runtime
                .remove_container(v1::RemoveContainerRequest {
                    container_id: cid.clone(),
                })
                .await?;

            let mut kinds = Vec::new();
            while kinds.len() < 4 {
                let ev = match tokio::time::timeout(Duration::from_secs(10), events.message()).await
                {
                    Err(_) => anyhow::bail!("no event within 10 s after {kinds:?}"),
                    Ok(Err(status)) => {
                        anyhow::bail!("the event stream failed after {kinds:?}: {status:?}")
                    }
                    Ok(Ok(None)) => anyhow::bail!("the event stream ended after {kinds:?}"),
                    Ok(Ok(Some(ev))) => ev,
                };
                ensure!(ev.container_id == cid, "{ev:?}");
                kinds.push(ev.container_event_type);
            }
            use v1::ContainerEventType as E;
            ensure!(
                kinds
                    == [
                        E::ContainerCreatedEvent as i32,
                        E::ContainerStartedEvent as i32,
                        E::ContainerStoppedEvent as i32,
                        E::ContainerDeletedEvent as i32
                    ],
                "{kinds:?}"
            );
            c.runtime
                .remove_pod_sandbox(v1::RemovePodSandboxRequest {
                    pod_sandbox_id: pod,
                })
                .await?;
            Ok(())
        })
        .with_context(|| format!("daemon log:\n{}", d.log()))
}

/// A TCP connection made from inside the node's network namespace, where
/// the daemon's streaming server listens on loopback.
fn connect_in(netns: &Path, addr: &str) -> Result<tokio::net::TcpStream> {
    let netns = netns.to_path_buf();
    let addr = addr.to_string();
    let std = std::thread::spawn(move || -> Result<std::net::TcpStream> {
        let f = std::fs::File::open(&netns)?;
        nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)?;
        Ok(std::net::TcpStream::connect(&addr)?)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the connect thread panicked"))??;
    std.set_nonblocking(true)?;
    Ok(tokio::net::TcpStream::from_std(std)?)
}

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

async fn websocket(netns: &Path, url: &str, protocol: &str) -> Result<Ws> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let ws_url = url.replacen("http://", "ws://", 1);
    let host = ws_url
        .strip_prefix("ws://")
        .and_then(|r| r.split('/').next())
        .context("a URL without a host")?
        .to_string();
    let mut req = ws_url.as_str().into_client_request()?;
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", protocol.parse()?);
    let tcp = connect_in(netns, &host)?;
    let (ws, _) = tokio_tungstenite::client_async(req, tcp).await?;
    Ok(ws)
}

/// Every channel's bytes until the server closes.
async fn drain(ws: &mut Ws) -> Result<HashMap<u8, Vec<u8>>> {
    use futures::StreamExt;
    let mut out: HashMap<u8, Vec<u8>> = HashMap::new();
    while let Some(msg) = tokio::time::timeout(Duration::from_secs(20), ws.next()).await? {
        match msg? {
            tokio_tungstenite::tungstenite::Message::Binary(b) if !b.is_empty() => {
                out.entry(b[0]).or_default().extend_from_slice(&b[1..]);
            }
            tokio_tungstenite::tungstenite::Message::Close(_) => break,
            _ => {}
        }
    }
    Ok(out)
}

#[test]
fn exec_and_port_forward_through_the_streaming_server() -> Result<()> {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let node = node()?;
    let d = &node.daemon;
    let ns = node._netns.path();
    rt()?
        .block_on(async {
            let mut c = d.clients().await?;
            let pc = pod_config(d, "stream");
            let pod = run_pod(&mut c, &pc).await?;
            let cid = create(
                &mut c,
                &pod,
                &pc,
                container_config(
                    "srv",
                    &["sh", "-c", "while true; do echo pong | nc -l -p 8080; done"],
                ),
            )
            .await?;
            c.runtime
                .start_container(v1::StartContainerRequest {
                    container_id: cid.clone(),
                })
                .await?;

            // Exec over WebSocket (v5.channel.k8s.io): output and a non-zero exit.
            let url = c
                .runtime
                .exec(v1::ExecRequest {
                    container_id: cid.clone(),
                    cmd: vec![
                        "sh".into(),
                        "-c".into(),
                        "echo out; echo err >&2; exit 3".into(),
                    ],
                    stdout: true,
                    stderr: true,
                    ..Default::default()
                })
                .await?
                .into_inner()
                .url;
            let mut ws = websocket(&ns, &url, "v5.channel.k8s.io").await?;
            let got = drain(&mut ws).await?;
            ensure!(
                got.get(&1).map(Vec::as_slice) == Some(b"out\n".as_slice()),
                "{got:?}"
            );
            ensure!(
                got.get(&2).map(Vec::as_slice) == Some(b"err\n".as_slice()),
                "{got:?}"
            );
            let status: serde_json::Value =
                serde_json::from_slice(got.get(&3).context("no status")?)?;
            ensure!(status["reason"] == "NonZeroExitCode", "{status}");
            ensure!(status["details"]["causes"][0]["message"] == "3", "{status}");

            // A leftover background process does not keep the session open.
            let url = c
                .runtime
                .exec(v1::ExecRequest {
                    container_id: cid.clone(),
                    cmd: vec!["sh".into(), "-c".into(), "sleep 600 & echo bg".into()],
                    stdout: true,
                    ..Default::default()
                })
                .await?
                .into_inner()
                .url;
            let mut ws = websocket(&ns, &url, "v5.channel.k8s.io").await?;
            let got = drain(&mut ws).await?;
            ensure!(
                got.get(&1).map(Vec::as_slice) == Some(b"bg\n".as_slice()),
                "{got:?}"
            );

            // Exec with stdin: what goes in comes back.
            let url = c
                .runtime
                .exec(v1::ExecRequest {
                    container_id: cid.clone(),
                    cmd: vec!["cat".into()],
                    stdin: true,
                    stdout: true,
                    ..Default::default()
                })
                .await?
                .into_inner()
                .url;
            let mut ws = websocket(&ns, &url, "v5.channel.k8s.io").await?;
            ws.send(Message::Binary(
                [&[0u8][..], b"via stdin\n"].concat().into(),
            ))
            .await?;
            // v5: close stdin.
            ws.send(Message::Binary(vec![255u8, 0].into())).await?;
            let got = drain(&mut ws).await?;
            ensure!(
                got.get(&1).map(Vec::as_slice) == Some(b"via stdin\n".as_slice()),
                "{got:?}"
            );

            // Port forwarding over WebSocket to the pod's port 8080.
            let url = c
                .runtime
                .port_forward(v1::PortForwardRequest {
                    pod_sandbox_id: pod.clone(),
                    port: vec![8080],
                })
                .await?
                .into_inner()
                .url;
            let mut ws = websocket(&ns, &format!("{url}?ports=8080"), "v4.channel.k8s.io").await?;
            ws.send(Message::Binary([&[0u8][..], b"ping\n"].concat().into()))
                .await?;
            let mut data = Vec::new();
            while !data.ends_with(b"pong\n") {
                let msg = tokio::time::timeout(Duration::from_secs(20), ws.next())
                    .await?
                    .context("the port-forward stream ended")??;
                if let Message::Binary(b) = msg
                    && b.first() == Some(&0)
                {
                    data.extend_from_slice(&b[1..]);
                }
            }
            // The first frame of the data channel carries the port (little endian).
            ensure!(data.starts_with(&8080u16.to_le_bytes()), "{data:?}");

            // Attach to a shell that reads its commands from stdin (stdin_once:
            // the end of the client's input ends the shell).
            let mut cc = container_config("shell", &["sh"]);
            cc.stdin = true;
            cc.stdin_once = true;
            let shell = create(&mut c, &pod, &pc, cc).await?;
            c.runtime
                .start_container(v1::StartContainerRequest {
                    container_id: shell.clone(),
                })
                .await?;
            let url = c
                .runtime
                .attach(v1::AttachRequest {
                    container_id: shell.clone(),
                    stdin: true,
                    stdout: true,
                    stderr: true,
                    tty: false,
                })
                .await?
                .into_inner()
                .url;
            let mut ws = websocket(&ns, &url, "v5.channel.k8s.io").await?;
            ws.send(Message::Binary(
                [&[0u8][..], b"echo hello; echo oops >&2\n"].concat().into(),
            ))
            .await?;
            ws.send(Message::Binary(vec![255u8, 0].into())).await?;
            let got = drain(&mut ws).await?;
            ensure!(
                got.get(&1).map(Vec::as_slice) == Some(b"hello\n".as_slice()),
                "{got:?}"
            );
            ensure!(
                got.get(&2).map(Vec::as_slice) == Some(b"oops\n".as_slice()),
                "{got:?}"
            );
            let s = wait_state(&mut c, &shell, v1::ContainerState::ContainerExited).await?;
            ensure!(s.exit_code == 0, "{s:?}");

            // An Exec for a container that is not there.
            let e = c
                .runtime
                .exec(v1::ExecRequest {
                    container_id: "nope".into(),
                    cmd: vec!["true".into()],
                    stdout: true,
                    ..Default::default()
                })
                .await
                .err()
                .context("exec in nothing")?;
            ensure!(e.code() == Code::NotFound, "{e:?}");
            c.runtime
                .remove_pod_sandbox(v1::RemovePodSandboxRequest {
                    pod_sandbox_id: pod,
                })
                .await?;
            Ok(())
        })
        .with_context(|| format!("daemon log:\n{}", d.log()))
}

/// Whether `out` (terminal output) has `line` as a whole line.
fn has_line(out: &[u8], line: &str) -> bool {
    String::from_utf8_lossy(out)
        .split('\n')
        .any(|l| l.trim_end_matches('\r') == line)
}

/// Collects channel data from `ws` for `window`; true once the server closed.
async fn collect_for(
    ws: &mut Ws,
    out: &mut HashMap<u8, Vec<u8>>,
    window: Duration,
) -> Result<bool> {
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let until = tokio::time::Instant::now() + window;
    loop {
        let msg = match tokio::time::timeout_at(until, ws.next()).await {
            Err(_) => return Ok(false),
            Ok(None) => return Ok(true),
            Ok(Some(m)) => m?,
        };
        match msg {
            Message::Binary(b) if !b.is_empty() => {
                out.entry(b[0]).or_default().extend_from_slice(&b[1..]);
            }
            Message::Close(_) => return Ok(true),
            _ => {}
        }
    }
}

/// The CRI log's entries as (stream, content) once `want` shows up in one.
async fn log_entries(path: &Path, want: &str) -> Result<Vec<(String, String)>> {
    let mut entries = Vec::new();
    for _ in 0..250 {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        entries = text
            .lines()
            .filter_map(|l| {
                let mut f = l.splitn(4, ' ');
                let (_time, stream, _tag) = (f.next()?, f.next()?, f.next()?);
                Some((stream.to_string(), f.next().unwrap_or("").to_string()))
            })
            .collect::<Vec<_>>();
        if entries
            .iter()
            .any(|(_, c)| c.trim_end_matches('\r') == want)
        {
            return Ok(entries);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    anyhow::bail!("{want:?} never reached {}: {entries:?}", path.display())
}

#[test]
fn a_tty_container_attaches_resizes_and_logs_its_terminal() -> Result<()> {
    use futures::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let node = node()?;
    let d = &node.daemon;
    let ns = node._netns.path();
    rt()?
        .block_on(async {
            let mut c = d.clients().await?;
            let pc = pod_config(d, "tty");
            let pod = run_pod(&mut c, &pc).await?;
            // `kubectl run -it`: an interactive shell on a terminal, its
            // input ended when the first client detaches.
            let mut cc = container_config("shell", &["sh"]);
            cc.tty = true;
            cc.stdin = true;
            cc.stdin_once = true;
            let shell = create(&mut c, &pod, &pc, cc).await?;
            c.runtime
                .start_container(v1::StartContainerRequest {
                    container_id: shell.clone(),
                })
                .await?;
            let url = c
                .runtime
                .attach(v1::AttachRequest {
                    container_id: shell.clone(),
                    stdin: true,
                    stdout: true,
                    stderr: false,
                    tty: true,
                })
                .await?
                .into_inner()
                .url;
            let mut ws = websocket(&ns, &url, "v5.channel.k8s.io").await?;
            let resize = serde_json::to_vec(&json!({"Width": 77, "Height": 33}))?;
            ws.send(Message::Binary([&[4u8][..], &resize].concat().into()))
                .await?;
            // The size and the input reach the container on separate
            // sockets: ask until the shell has seen the new size.
            let mut got = HashMap::new();
            let mut sized = false;
            for _ in 0..20 {
                ws.send(Message::Binary(
                    [&[0u8][..], b"stty size\n"].concat().into(),
                ))
                .await?;
                let closed = collect_for(&mut ws, &mut got, Duration::from_millis(300)).await?;
                ensure!(!closed, "the session ended: {got:?}");
                if has_line(got.get(&1).map_or(&[][..], Vec::as_slice), "33 77") {
                    sized = true;
                    break;
                }
            }
            ensure!(sized, "the shell never saw 33x77: {got:?}");
            ws.send(Message::Binary([&[0u8][..], b"echo hi\n"].concat().into()))
                .await?;
            for _ in 0..50 {
                if has_line(got.get(&1).map_or(&[][..], Vec::as_slice), "hi") {
                    break;
                }
                collect_for(&mut ws, &mut got, Duration::from_millis(200)).await?;
            }
            ensure!(
                has_line(got.get(&1).map_or(&[][..], Vec::as_slice), "hi"),
                "{got:?}"
            );
            // v5: close stdin. stdin_once types an EOT, which ends the shell,
            // and its exit ends the session.
            ws.send(Message::Binary(vec![255u8, 0].into())).await?;
            let rest = drain(&mut ws).await?;
            for (ch, data) in rest {
                got.entry(ch).or_default().extend_from_slice(&data);
            }
            ensure!(!got.contains_key(&2), "stderr from a terminal: {got:?}");
            let s = wait_state(&mut c, &shell, v1::ContainerState::ContainerExited).await?;
            ensure!(s.exit_code == 0, "{s:?}");

            // The log holds the terminal's output as stdout.
            let entries = log_entries(&d.log_dir("tty").join("shell.log"), "hi").await?;
            ensure!(
                entries.iter().all(|(stream, _)| stream == "stdout"),
                "{entries:?}"
            );
            ensure!(
                entries
                    .iter()
                    .any(|(_, c)| c.trim_end_matches('\r') == "33 77"),
                "{entries:?}"
            );
            c.runtime
                .remove_pod_sandbox(v1::RemovePodSandboxRequest {
                    pod_sandbox_id: pod,
                })
                .await?;
            Ok(())
        })
        .with_context(|| format!("daemon log:\n{}", d.log()))
}

#[test]
fn a_tty_container_without_stdin_logs_its_output() -> Result<()> {
    let node = node()?;
    let d = &node.daemon;
    rt()?
        .block_on(async {
            let mut c = d.clients().await?;
            let pc = pod_config(d, "ttyout");
            let pod = run_pod(&mut c, &pc).await?;
            let mut cc = container_config(
                "printer",
                &[
                    "sh",
                    "-c",
                    "echo printed; [ -t 1 ] && echo on-a-terminal; echo to-stderr >&2",
                ],
            );
            cc.tty = true;
            let cid = create(&mut c, &pod, &pc, cc).await?;
            c.runtime
                .start_container(v1::StartContainerRequest {
                    container_id: cid.clone(),
                })
                .await?;
            let s = wait_state(&mut c, &cid, v1::ContainerState::ContainerExited).await?;
            ensure!(s.exit_code == 0, "{s:?}");
            let entries =
                log_entries(&d.log_dir("ttyout").join("printer.log"), "to-stderr").await?;
            let lines: Vec<_> = entries
                .iter()
                .map(|(stream, c)| (stream.as_str(), c.trim_end_matches('\r')))
                .collect();
            ensure!(
                lines
                    == [
                        ("stdout", "printed"),
                        ("stdout", "on-a-terminal"),
                        ("stdout", "to-stderr")
                    ],
                "{lines:?}"
            );
            c.runtime
                .remove_pod_sandbox(v1::RemovePodSandboxRequest {
                    pod_sandbox_id: pod,
                })
                .await?;
            Ok(())
        })
        .with_context(|| format!("daemon log:\n{}", d.log()))
}
