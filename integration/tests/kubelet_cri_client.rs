//! The kubelet's CRI client (`berth_kubelet::cri_client`) against a real
//! `berth runtime`: connect with the version check, pull from the fixture
//! registry, a host-network pod with a `sleep` container run, exec'd into,
//! listed, watched through GetContainerEvents, stopped and removed (twice:
//! CRI removes are idempotent, while a status of what is gone is NotFound),
//! endpoints that cannot work, and a runtime that speaks another CRI version.

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use berth_integration::cri::{CriDaemon, Options};
use berth_integration::images;
use berth_integration::registry::Registry;
use berth_kubelet::cri_client::{CriClient, CriClientError};
use berth_proto::v1;
use futures::StreamExt;
use http_body_util::StreamBody;
use hyper::body::{Bytes, Frame};
use hyper_util::rt::{TokioExecutor, TokioIo};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

fn rt() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

fn endpoint(d: &CriDaemon) -> String {
    format!("unix://{}", d.socket().display())
}

fn image(reference: &str) -> v1::ImageSpec {
    v1::ImageSpec {
        image: reference.into(),
        ..Default::default()
    }
}

/// Host network: the daemon has no CNI config, and the pod shares the
/// network of the test, where the fixture registry listens.
fn pod_config(d: &CriDaemon, name: &str) -> v1::PodSandboxConfig {
    v1::PodSandboxConfig {
        metadata: Some(v1::PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "default".into(),
            attempt: 0,
        }),
        log_directory: d.log_dir(name).display().to_string(),
        labels: HashMap::from([("app".to_string(), name.to_string())]),
        linux: Some(v1::LinuxPodSandboxConfig {
            cgroup_parent: format!("/kubepods/pod-{name}"),
            security_context: Some(v1::LinuxSandboxSecurityContext {
                namespace_options: Some(v1::NamespaceOption {
                    network: v1::NamespaceMode::Node as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn container_config(name: &str, image_ref: &str) -> v1::ContainerConfig {
    v1::ContainerConfig {
        metadata: Some(v1::ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(image(image_ref)),
        command: vec!["sleep".into(), "1000".into()],
        log_path: format!("{name}.log"),
        labels: HashMap::from([("role".to_string(), name.to_string())]),
        ..Default::default()
    }
}

async fn next_event(
    events: &mut berth_kubelet::cri_client::ContainerEvents,
    id: &str,
) -> Result<v1::ContainerEventType> {
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(10), events.next())
            .await
            .context("no container event in 10 s")?
            .context("the event stream ended")??;
        if ev.container_id == id {
            return Ok(v1::ContainerEventType::try_from(ev.container_event_type)?);
        }
    }
}

#[test]
fn a_pod_through_the_kubelet_cri_client() -> Result<()> {
    let reg = Registry::start()?;
    reg.client().push("busybox", "latest", images::busybox()?)?;
    let reference = reg.reference("busybox:latest");
    let d = CriDaemon::start(Options {
        config: Some(String::new()),
        ..Default::default()
    })?;
    rt()?
        .block_on(async {
            let c = CriClient::connect(&endpoint(&d), CONNECT_TIMEOUT)
                .await?
                .with_request_timeout(Duration::from_secs(30));
            let v = c.version().await?;
            ensure!(
                v.runtime_name == "berth" && v.runtime_api_version == "v1",
                "{v:?}"
            );
            let st = c.status(false).await?;
            ensure!(
                st.status
                    .conditions
                    .iter()
                    .any(|c| c.r#type == "RuntimeReady" && c.status),
                "{st:?}"
            );

            ensure!(
                c.image_status(image(&reference), false)
                    .await?
                    .status
                    .is_none()
            );
            let image_ref = c.pull_image(image(&reference), None, None).await?;
            ensure!(image_ref.contains("sha256:"), "{image_ref}");
            let img = c.image_status(image(&reference), false).await?.status;
            ensure!(
                img.as_ref()
                    .is_some_and(|i| i.repo_tags.contains(&reference)),
                "{img:?}"
            );
            let listed = c.list_images(None).await?;
            ensure!(
                listed.iter().any(|i| i.repo_tags.contains(&reference)),
                "{listed:?}"
            );
            let fs = c.image_fs_info().await?;
            ensure!(!fs.image_filesystems.is_empty(), "{fs:?}");

            let mut events = c.get_container_events().await?;

            let pc = pod_config(&d, "kcc");
            let pod = c.run_pod_sandbox(pc.clone(), "").await?;
            let ps = c.pod_sandbox_status(&pod, false).await?.status;
            ensure!(
                ps.state == v1::PodSandboxState::SandboxReady as i32,
                "{ps:?}"
            );

            let cid = c
                .create_container(&pod, container_config("sleeper", &reference), pc.clone())
                .await?;
            ensure!(
                next_event(&mut events, &cid).await?
                    == v1::ContainerEventType::ContainerCreatedEvent
            );
            c.start_container(&cid).await?;
            ensure!(
                next_event(&mut events, &cid).await?
                    == v1::ContainerEventType::ContainerStartedEvent
            );
            let s = c.container_status(&cid, false).await?.status;
            ensure!(
                s.state == v1::ContainerState::ContainerRunning as i32,
                "{s:?}"
            );

            let out = c
                .exec_sync(&cid, vec!["echo".into(), "hi".into()], 10)
                .await?;
            ensure!(out.exit_code == 0 && out.stdout == b"hi\n", "{out:?}");
            let out = c.exec_sync(&cid, vec!["false".into()], 0).await?;
            ensure!(out.exit_code == 1, "a non-zero exit is an answer: {out:?}");

            let by_pod = c
                .list_containers(Some(v1::ContainerFilter {
                    pod_sandbox_id: pod.clone(),
                    ..Default::default()
                }))
                .await?;
            ensure!(by_pod.len() == 1 && by_pod[0].id == cid, "{by_pod:?}");
            let running = c
                .list_containers(Some(v1::ContainerFilter {
                    state: Some(v1::ContainerStateValue {
                        state: v1::ContainerState::ContainerRunning as i32,
                    }),
                    label_selector: HashMap::from([("role".into(), "sleeper".into())]),
                    ..Default::default()
                }))
                .await?;
            ensure!(running.iter().any(|x| x.id == cid), "{running:?}");
            let none = c
                .list_containers(Some(v1::ContainerFilter {
                    label_selector: HashMap::from([("role".into(), "nobody".into())]),
                    ..Default::default()
                }))
                .await?;
            ensure!(none.is_empty(), "{none:?}");
            let pods = c
                .list_pod_sandbox(Some(v1::PodSandboxFilter {
                    label_selector: HashMap::from([("app".into(), "kcc".into())]),
                    ..Default::default()
                }))
                .await?;
            ensure!(pods.len() == 1 && pods[0].id == pod, "{pods:?}");

            let stats = c.container_stats(&cid).await?;
            ensure!(
                stats.attributes.as_ref().is_some_and(|a| a.id == cid),
                "{stats:?}"
            );
            let url = c
                .exec(v1::ExecRequest {
                    container_id: cid.clone(),
                    cmd: vec!["true".into()],
                    stdout: true,
                    ..Default::default()
                })
                .await?;
            ensure!(url.starts_with("http"), "{url}");

            c.stop_container(&cid, 1).await?;
            ensure!(
                next_event(&mut events, &cid).await?
                    == v1::ContainerEventType::ContainerStoppedEvent
            );
            let s = c.container_status(&cid, false).await?.status;
            ensure!(
                s.state == v1::ContainerState::ContainerExited as i32,
                "{s:?}"
            );
            c.remove_container(&cid).await?;
            // CRI: removing what is already gone is not an error.
            c.remove_container(&cid).await?;
            let gone = c
                .container_status(&cid, false)
                .await
                .err()
                .context("status of a removed container")?;
            ensure!(gone.is_not_found(), "{gone:?}");
            ensure!(gone.to_string().contains("ContainerStatus"), "{gone}");

            c.stop_pod_sandbox(&pod).await?;
            c.remove_pod_sandbox(&pod).await?;
            c.remove_pod_sandbox(&pod).await?;
            let gone = c
                .pod_sandbox_status(&pod, false)
                .await
                .err()
                .context("status of a removed sandbox")?;
            ensure!(gone.is_not_found(), "{gone:?}");

            c.remove_image(image(&reference)).await?;
            ensure!(
                c.image_status(image(&reference), false)
                    .await?
                    .status
                    .is_none()
            );
            Ok(())
        })
        .with_context(|| format!("daemon log:\n{}", d.log()))
}

#[test]
fn endpoints_that_cannot_work_say_why() -> Result<()> {
    let d = CriDaemon::start(Options {
        config: Some(String::new()),
        ..Default::default()
    })?;
    rt()?.block_on(async {
        let relative = CriClient::connect("unix://run/berth.sock", CONNECT_TIMEOUT)
            .await
            .err()
            .context("a relative unix endpoint")?;
        ensure!(
            matches!(relative, CriClientError::BadEndpoint { .. })
                && relative.to_string().contains("absolute"),
            "{relative}"
        );
        let tcp = CriClient::connect("tcp://127.0.0.1:1", CONNECT_TIMEOUT)
            .await
            .err()
            .context("a tcp endpoint")?;
        ensure!(matches!(tcp, CriClientError::BadEndpoint { .. }), "{tcp}");

        let missing = d.path("run/missing.sock");
        let e = CriClient::connect(&missing.display().to_string(), CONNECT_TIMEOUT)
            .await
            .err()
            .context("a socket nobody serves")?;
        ensure!(
            matches!(e, CriClientError::Connect { .. })
                && e.to_string().contains(&missing.display().to_string()),
            "{e}"
        );

        // The daemon's socket as a plain path works as well.
        let c = CriClient::connect(&d.socket().display().to_string(), CONNECT_TIMEOUT).await?;
        ensure!(c.socket() == d.socket());
        Ok(())
    })
}

/// Answers every request on `listener` as a runtime's Version that reports
/// `api_version`: one gRPC message, then `grpc-status: 0`.
async fn fake_runtime(listener: tokio::net::UnixListener, api_version: &'static str) {
    while let Ok((stream, _)) = listener.accept().await {
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |_req| async move {
                let msg = v1::VersionResponse {
                    version: "0.1.0".into(),
                    runtime_name: "oldrt".into(),
                    runtime_version: "9.9".into(),
                    runtime_api_version: api_version.into(),
                };
                let body = prost::Message::encode_to_vec(&msg);
                let mut frame = vec![0u8];
                frame.extend(u32::try_from(body.len()).unwrap_or(u32::MAX).to_be_bytes());
                frame.extend(body);
                let mut trailers = http::HeaderMap::new();
                trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                let frames = futures::stream::iter([
                    Ok::<_, Infallible>(Frame::data(Bytes::from(frame))),
                    Ok(Frame::trailers(trailers)),
                ]);
                let mut resp = http::Response::new(StreamBody::new(frames));
                resp.headers_mut().insert(
                    "content-type",
                    http::HeaderValue::from_static("application/grpc"),
                );
                Ok::<_, Infallible>(resp)
            });
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

#[test]
fn a_runtime_that_speaks_another_cri_version_is_refused_by_name() -> Result<()> {
    let dir = berth_integration::workdir::tempdir("kcc-")?;
    let sock = dir.path().join("old.sock");
    rt()?.block_on(async {
        let listener = tokio::net::UnixListener::bind(&sock)?;
        let server = tokio::spawn(fake_runtime(listener, "v1alpha2"));
        let e = CriClient::connect(&sock.display().to_string(), CONNECT_TIMEOUT)
            .await
            .err()
            .context("connecting to a v1alpha2 runtime")?;
        server.abort();
        ensure!(matches!(e, CriClientError::UnsupportedApi { .. }), "{e:?}");
        let text = e.to_string();
        ensure!(
            text.contains("oldrt 9.9") && text.contains("\"v1alpha2\""),
            "{text}"
        );
        Ok(())
    })
}
