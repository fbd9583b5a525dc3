//! `berth runtime`: the CRI daemon. Serves the CRI ImageService and
//! RuntimeService on a unix socket for the kubelet (or crictl), and on
//! SIGTERM or SIGINT stops accepting, lets running calls finish, removes its
//! socket and exits 0.

use std::io::ErrorKind;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use berth_runtime::config::RuntimeConfig;
use std::sync::Arc;

use berth_runtime::cri::{Daemon, ImageServer, Paths, RuntimeServer};
use berth_runtime::image::store::ImageStore;
use clap::Parser;
use tokio::net::UnixListener;
use tokio::signal::unix::{SignalKind, signal};
use tonic::codegen::tokio_stream::wrappers::UnixListenerStream;

#[derive(Parser)]
pub struct Args {
    /// The unix socket to serve the CRI on.
    #[arg(long, default_value = "/run/berth/berth.sock")]
    socket: PathBuf,
    /// Persistent state: images, pod and container records.
    #[arg(long, env = "BERTH_ROOT", default_value = "/var/lib/berth")]
    root: PathBuf,
    /// Volatile state (lost at reboot): pinned namespaces, the pods' /dev/shm,
    /// the engine's container state.
    #[arg(long, env = "BERTH_STATE", default_value = "/run/berth")]
    state: PathBuf,
    /// The CNI config dir (overrides `[cni] conf_dir`).
    #[arg(long = "cni-conf-dir")]
    cni_conf_dir: Option<PathBuf>,
    /// CNI plugin dirs, colon-separated (overrides `[cni] bin_dirs`).
    #[arg(long = "cni-bin-dir")]
    cni_bin_dir: Option<String>,
    /// The CNI result cache (overrides `[cni] cache_dir`).
    #[arg(long = "cni-cache-dir")]
    cni_cache_dir: Option<PathBuf>,
    /// The cgroup holding all of berth's (overrides `[cgroup] root`).
    #[arg(long = "cgroup-root")]
    cgroup_root: Option<String>,
    /// berth's runtime config (registry mirrors, plain-http hosts, credentials);
    /// a missing file means the defaults.
    #[arg(long, default_value = berth_runtime::config::DEFAULT_PATH)]
    config: PathBuf,
    /// Log at debug level (BERTH_LOG overrides).
    #[arg(long)]
    debug: bool,
}

pub fn main(args: Args) -> i32 {
    crate::daemon::init_logging(
        args.debug,
        "berth=debug,berth_runtime=debug,berth_cni=debug",
    );
    crate::daemon::main("runtime", || serve(args))
}

async fn serve(args: Args) -> Result<()> {
    let mut config = RuntimeConfig::load_or_default(&args.config)
        .with_context(|| format!("loading {}", args.config.display()))?;
    if let Some(d) = &args.cni_conf_dir {
        config.cni.conf_dir = d.clone();
    }
    if let Some(d) = &args.cni_bin_dir {
        config.cni.bin_dirs = std::env::split_paths(d).collect();
    }
    if let Some(d) = &args.cni_cache_dir {
        config.cni.cache_dir = d.clone();
    }
    if let Some(c) = &args.cgroup_root {
        config.cgroup.root = c.clone();
    }
    let store = Arc::new(
        ImageStore::open(&args.root, &config.registry)
            .with_context(|| format!("opening the image store at {}", args.root.display()))?,
    );
    let exe = std::env::current_exe().context("finding berth's own executable")?;
    let paths = Paths {
        root: args.root.clone(),
        state: args.state.clone(),
    };
    let root = args.root.clone();
    let stream_config = config.stream.clone();
    let daemon = tokio::task::spawn_blocking(move || {
        Daemon::open(&config, Arc::clone(&store), paths, exe).map(|d| (d, store))
    })
    .await
    .context("recovering state")?
    .map_err(anyhow::Error::msg)
    .with_context(|| format!("recovering state from {}", root.display()))?;
    let (daemon, store) = daemon;
    let addr = format!("{}:{}", stream_config.address, stream_config.port);
    let stream = berth_runtime::stream::StreamServer::start(
        berth_runtime::stream::StreamConfig {
            addr: addr.parse().with_context(|| {
                format!("[stream] address {addr:?} is not an IP address and port")
            })?,
            ..Default::default()
        },
        Arc::new(berth_runtime::cri::streaming::StreamBackend {
            daemon: Arc::clone(&daemon),
        }),
    )
    .await
    .context("starting the streaming server")?;
    tracing::info!(url = %stream.base_url(), "streaming server listening");
    let stream = Arc::new(stream);
    let listener = bind(&args.socket).await?;
    tracing::info!(socket = %args.socket.display(), root = %args.root.display(), "serving the CRI");

    let result = tonic::transport::Server::builder()
        // An expired client deadline is DEADLINE_EXCEEDED, not tonic's CANCELLED.
        .layer(berth_runtime::cri::deadline::DeadlineLayer)
        .add_service(berth_proto::image_service_server(ImageServer::new(store)))
        .add_service(berth_proto::runtime_service_server(RuntimeServer::new(
            daemon,
            Arc::clone(&stream),
        )))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown_signal()?)
        .await
        .context("serving the CRI");
    if let Err(e) = std::fs::remove_file(&args.socket)
        && e.kind() != ErrorKind::NotFound
    {
        tracing::warn!(socket = %args.socket.display(), error = %e, "removing the socket");
    }
    tracing::info!("stopped");
    result
}

/// Binds the socket (mode 0660), replacing a stale socket file a crashed
/// daemon left, but never a live one or a file that is not a socket.
async fn bind(socket: &Path) -> Result<UnixListener> {
    if let Some(parent) = socket.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    match std::fs::symlink_metadata(socket) {
        Ok(m) if m.file_type().is_socket() => {
            if tokio::net::UnixStream::connect(socket).await.is_ok() {
                bail!(
                    "{}: another daemon is serving on this socket",
                    socket.display()
                );
            }
            tracing::info!(socket = %socket.display(), "removing a stale socket");
            std::fs::remove_file(socket)
                .with_context(|| format!("removing the stale socket {}", socket.display()))?;
        }
        Ok(_) => bail!(
            "{} exists and is not a socket; refusing to replace it",
            socket.display()
        ),
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("checking {}", socket.display())),
    }
    let listener =
        UnixListener::bind(socket).with_context(|| format!("binding {}", socket.display()))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("setting the mode of {}", socket.display()))?;
    Ok(listener)
}

/// Resolves on the first SIGTERM or SIGINT.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>> {
    let mut term = signal(SignalKind::terminate()).context("handling SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("handling SIGINT")?;
    Ok(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(signal = name, "shutting down");
    })
}
