//! `berth runtime`, the CRI daemon, driven over its unix socket with the
//! generated CRI client: Version, Status, RuntimeConfig, the whole
//! ImageService against the fixture registry (open and token-authenticated),
//! error codes, an RPC of a slice not built yet, and a clean SIGTERM exit.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::process::Command;

use anyhow::{Context, Result, ensure};
use berth_integration::cri::{Clients, CriDaemon, Options};
use berth_integration::images;
use berth_integration::registry::Registry;
use berth_integration::rootfs::USER_UID;
use berth_integration::runtime::berth_binary;
use berth_proto::v1;
use tonic::Code;

fn spec(image: &str) -> Option<v1::ImageSpec> {
    Some(v1::ImageSpec {
        image: image.to_string(),
        ..Default::default()
    })
}

async fn pull(
    c: &mut Clients,
    image: &str,
    auth: Option<v1::AuthConfig>,
) -> Result<String, tonic::Status> {
    let r = c
        .images
        .pull_image(v1::PullImageRequest {
            image: spec(image),
            auth,
            sandbox_config: None,
        })
        .await?;
    Ok(r.into_inner().image_ref)
}

async fn status(c: &mut Clients, image: &str, verbose: bool) -> Result<v1::ImageStatusResponse> {
    Ok(c.images
        .image_status(v1::ImageStatusRequest {
            image: spec(image),
            verbose,
        })
        .await?
        .into_inner())
}

async fn list(c: &mut Clients, filter: Option<&str>) -> Result<Vec<v1::Image>> {
    let filter = filter.map(|f| v1::ImageFilter { image: spec(f) });
    Ok(c.images
        .list_images(v1::ListImagesRequest { filter })
        .await?
        .into_inner()
        .images)
}

fn rt() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

#[test]
fn cri_image_service_over_the_socket_and_sigterm() -> Result<()> {
    let reg = Registry::start()?;
    images::push_standard(&reg)?;
    let mut daemon = CriDaemon::start(Options {
        config: Some(String::new()),
        stale_socket: true,
        ..Default::default()
    })?;
    let mode = std::fs::metadata(daemon.socket())?.permissions().mode() & 0o777;
    ensure!(mode == 0o660, "the socket has mode {mode:o}, not 660");
    let latest = reg.reference("busybox:latest");
    let user = reg.reference("busybox:user");

    rt()?
        .block_on(async {
            let mut c = daemon.clients().await?;

            let v = c
                .runtime
                .version(v1::VersionRequest::default())
                .await?
                .into_inner();
            ensure!(v.version == "0.1.0", "{v:?}");
            ensure!(v.runtime_name == "berth", "{v:?}");
            ensure!(v.runtime_version == env!("CARGO_PKG_VERSION"), "{v:?}");
            ensure!(v.runtime_api_version == "v1", "{v:?}");

            let s = c
                .runtime
                .status(v1::StatusRequest::default())
                .await?
                .into_inner();
            let conds = s.status.context("Status has no conditions")?.conditions;
            let cond = |t: &str| conds.iter().find(|c| c.r#type == t).cloned();
            ensure!(cond("RuntimeReady").is_some_and(|c| c.status), "{conds:?}");
            let net = cond("NetworkReady").context("no NetworkReady condition")?;
            ensure!(
                !net.status && net.reason == "NetworkPluginNotReady",
                "{net:?}"
            );
            ensure!(net.message.contains("no network config found"), "{net:?}");

            let rc = c
                .runtime
                .runtime_config(v1::RuntimeConfigRequest::default())
                .await?
                .into_inner();
            ensure!(
                rc.linux.map(|l| l.cgroup_driver) == Some(v1::CgroupDriver::Cgroupfs as i32),
                "RuntimeConfig: cgroupfs expected"
            );

            // Absent: an empty answer, not an error.
            let absent = status(&mut c, &latest, false).await?;
            ensure!(
                absent.image.is_none() && absent.info.is_empty(),
                "{absent:?}"
            );

            let id = pull(&mut c, &latest, None).await?;
            ensure!(
                id.starts_with("sha256:") && id.len() == 71,
                "image_ref {id:?} is not an image ID"
            );
            let user_id = pull(&mut c, &user, None).await?;
            ensure!(
                user_id != id,
                "busybox:user and busybox:latest share ID {id}"
            );

            let all = list(&mut c, None).await?;
            ensure!(all.len() == 2, "{all:?}");
            let one = list(&mut c, Some(&latest)).await?;
            ensure!(one.len() == 1 && one[0].id == id, "{one:?}");
            ensure!(one[0].repo_tags == vec![latest.clone()], "{one:?}");
            ensure!(
                one[0].repo_digests.iter().all(|d| d.contains("@sha256:"))
                    && !one[0].repo_digests.is_empty(),
                "{one:?}"
            );
            ensure!(one[0].size > 0, "{one:?}");
            ensure!(list(&mut c, Some("nothing-here:latest")).await?.is_empty());

            let st = status(&mut c, &user, true).await?;
            let image = st
                .image
                .clone()
                .context("ImageStatus: busybox:user not found")?;
            ensure!(image.id == user_id, "{st:?}");
            ensure!(
                image.uid.map(|u| u.value) == Some(i64::from(USER_UID)),
                "{st:?}"
            );
            ensure!(image.username.is_empty(), "{st:?}");
            let info: serde_json::Value = serde_json::from_str(
                st.info
                    .get("info")
                    .context("verbose ImageStatus has no info")?,
            )?;
            ensure!(
                info["config"]["User"] == format!("{USER_UID}:{USER_UID}"),
                "{info}"
            );
            let brief = status(&mut c, &user_id, false).await?;
            ensure!(brief.image.is_some_and(|i| i.id == user_id) && brief.info.is_empty());

            let fs = c
                .images
                .image_fs_info(v1::ImageFsInfoRequest::default())
                .await?
                .into_inner();
            let usage = fs
                .image_filesystems
                .first()
                .context("no image filesystem")?;
            ensure!(
                usage.fs_id.as_ref().map(|f| f.mountpoint.as_str())
                    == Some(daemon.root().to_str().unwrap_or_default()),
                "{fs:?}"
            );
            ensure!(usage.used_bytes.is_some_and(|b| b.value > 0), "{fs:?}");
            ensure!(usage.inodes_used.is_some_and(|i| i.value > 0), "{fs:?}");
            ensure!(usage.timestamp > 1_600_000_000_000_000_000, "{fs:?}");

            for round in 0..2 {
                c.images
                    .remove_image(v1::RemoveImageRequest {
                        image: spec(&latest),
                    })
                    .await
                    .with_context(|| format!("RemoveImage round {round}"))?;
            }
            let left = list(&mut c, None).await?;
            ensure!(left.len() == 1 && left[0].id == user_id, "{left:?}");

            let bad = pull(&mut c, "Not A Reference!", None)
                .await
                .err()
                .context("a bad reference pulled")?;
            ensure!(bad.code() == Code::InvalidArgument, "{bad:?}");
            ensure!(bad.message().contains("Not A Reference!"), "{bad:?}");
            let empty = pull(&mut c, "", None)
                .await
                .err()
                .context("an empty reference pulled")?;
            ensure!(empty.code() == Code::InvalidArgument, "{empty:?}");
            let missing = pull(&mut c, &reg.reference("busybox:nope"), None)
                .await
                .err()
                .context("a missing tag pulled")?;
            ensure!(missing.code() == Code::NotFound, "{missing:?}");

            let unimpl = c
                .runtime
                .checkpoint_container(v1::CheckpointContainerRequest::default())
                .await
                .err()
                .context("CheckpointContainer succeeded")?;
            ensure!(unimpl.code() == Code::Unimplemented, "{unimpl:?}");
            ensure!(
                unimpl.message().contains("CheckpointContainer"),
                "{unimpl:?}"
            );
            Ok(())
        })
        .with_context(|| format!("daemon log:\n{}", daemon.log()))?;

    // A second daemon must not take over a live socket.
    let second = Command::new(berth_binary()?)
        .arg("runtime")
        .arg("--socket")
        .arg(daemon.socket())
        .arg("--root")
        .arg(daemon.path("root2"))
        .arg("--config")
        .arg(daemon.path("none.toml"))
        .output()?;
    let stderr = String::from_utf8_lossy(&second.stderr);
    ensure!(
        second.status.code() == Some(1) && stderr.contains("another daemon"),
        "a second daemon on a live socket: {}: {stderr}",
        second.status
    );
    ensure!(
        StdUnixStream::connect(daemon.socket()).is_ok(),
        "the second daemon broke the first's socket"
    );

    let exit = daemon.terminate()?;
    ensure!(
        exit.code() == Some(0),
        "berth runtime exited with {exit} on SIGTERM:\n{}",
        daemon.log()
    );
    ensure!(!daemon.socket().exists(), "the socket outlived the daemon");
    Ok(())
}

#[test]
fn cri_pull_with_registry_credentials() -> Result<()> {
    let reg = Registry::start_with_token_auth("alice", "s3cret")?;
    reg.client().push("busybox", "latest", images::busybox()?)?;
    let daemon = CriDaemon::start(Options::default())?;
    let image = reg.reference("busybox:latest");

    rt()?
        .block_on(async {
            let mut c = daemon.clients().await?;
            let anonymous = pull(&mut c, &image, None)
                .await
                .err()
                .context("an anonymous pull passed")?;
            ensure!(
                matches!(
                    anonymous.code(),
                    Code::Unauthenticated | Code::PermissionDenied
                ),
                "{anonymous:?}"
            );
            let wrong = v1::AuthConfig {
                username: "alice".into(),
                password: "wrong".into(),
                ..Default::default()
            };
            let denied = pull(&mut c, &image, Some(wrong))
                .await
                .err()
                .context("a wrong password passed")?;
            ensure!(
                matches!(
                    denied.code(),
                    Code::Unauthenticated | Code::PermissionDenied
                ),
                "{denied:?}"
            );
            ensure!(
                !denied.message().contains("wrong"),
                "the password leaked: {denied:?}"
            );

            let auth = v1::AuthConfig {
                username: "alice".into(),
                password: "s3cret".into(),
                ..Default::default()
            };
            let id = pull(&mut c, &image, Some(auth)).await?;
            let listed = list(&mut c, Some(&image)).await?;
            ensure!(listed.len() == 1 && listed[0].id == id, "{listed:?}");
            Ok(())
        })
        .with_context(|| format!("daemon log:\n{}", daemon.log()))
}

/// A client's deadline that passes during a pull is DEADLINE_EXCEEDED, as
/// gRPC's Go and C servers answer, not tonic's CANCELLED: critest's "public
/// image should timeout if requested" failed whenever berth's answer reached
/// it before its own timer fired (under load, as with `critest --parallel`).
#[test]
fn cri_pull_past_the_clients_deadline_is_deadline_exceeded() -> Result<()> {
    // A "registry" that takes connections and never answers them.
    let stall = std::net::TcpListener::bind("127.0.0.1:0")?;
    let image = format!("{}/stall/image:1", stall.local_addr()?);
    let daemon = CriDaemon::start(Options {
        config: Some(String::new()),
        ..Default::default()
    })?;

    rt()?
        .block_on(async {
            // Not the fixture's tonic Channel: it enforces grpc-timeout on the
            // client side too and would make the code itself. A bare HTTP/2
            // connection only sends the header, so the code is the server's.
            let io = tokio::net::UnixStream::connect(daemon.socket()).await?;
            let (sender, conn) = hyper::client::conn::http2::handshake(
                hyper_util::rt::TokioExecutor::new(),
                hyper_util::rt::TokioIo::new(io),
            )
            .await?;
            tokio::spawn(conn);
            let svc = tower::service_fn(move |mut req: http::Request<tonic::body::Body>| {
                let mut sender = sender.clone();
                // tonic's client sends only the path; HTTP/2 wants the rest.
                let uri = format!("http://berth.invalid{}", req.uri().path());
                async move {
                    *req.uri_mut() = uri.parse().map_err(anyhow::Error::from)?;
                    Ok::<_, anyhow::Error>(sender.send_request(req).await?)
                }
            });
            let mut images = berth_proto::image_service_client(svc);
            let mut req = tonic::Request::new(v1::PullImageRequest {
                image: spec(&image),
                ..Default::default()
            });
            req.set_timeout(std::time::Duration::from_millis(200));
            let err = images
                .pull_image(req)
                .await
                .err()
                .context("a pull from a registry that never answers passed")?;
            ensure!(err.code() == Code::DeadlineExceeded, "{err:?}");
            // The daemon serves on.
            let mut c = daemon.clients().await?;
            c.runtime.version(v1::VersionRequest::default()).await?;
            Ok(())
        })
        .with_context(|| format!("daemon log:\n{}", daemon.log()))
}
