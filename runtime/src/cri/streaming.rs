//! The CRI daemon's side of the streaming server: exec through `berth oci
//! exec` (pipes, or a pty handed over on a console socket for a tty),
//! port forwarding by connecting inside the pod's network namespace.
//!
//! Attach goes through the container monitor's attach socket
//! ([`crate::attach`]), which holds the container's stdio for late clients;
//! for a container with a terminal, resizes go to the monitor's winsize
//! socket.

use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;

use async_trait::async_trait;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::daemon::{Daemon, lock};
use crate::state::Status as EngineStatus;
use crate::stream::{Backend, BackendError, ExitCode, PortStream, StreamIo, TerminalSize};

/// How long an exec's output may keep coming after the command exited.
const OUTPUT_AFTER_EXIT: std::time::Duration = std::time::Duration::from_secs(2);

pub struct StreamBackend {
    pub daemon: Arc<Daemon>,
}

fn other(msg: impl Into<String>) -> BackendError {
    BackendError::Other(msg.into().into())
}

fn io_err(context: &str) -> impl FnOnce(std::io::Error) -> BackendError + '_ {
    move |source| BackendError::Io {
        context: context.to_string(),
        source,
    }
}

/// The exit code a shell would report.
fn code_of(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(255)
}

impl StreamBackend {
    /// The full ID of a running container.
    fn running(&self, id: &str) -> Result<String, BackendError> {
        let d = &self.daemon;
        let shared = d
            .container(id)
            .map_err(|_| BackendError::ContainerNotFound(id.to_string()))?;
        let cid = lock(&shared).id.clone();
        match d.engine.state(&cid) {
            Ok(s) if s.status == EngineStatus::Running => Ok(cid),
            _ => Err(BackendError::ContainerNotRunning(cid)),
        }
    }

    async fn exec_pipes(
        &self,
        cid: &str,
        cmd: &[String],
        io: StreamIo,
    ) -> Result<ExitCode, BackendError> {
        let mut c = tokio::process::Command::from(self.daemon.oci());
        c.arg("exec").arg(cid).args(cmd);
        c.stdin(if io.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(if io.stdout.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stderr(if io.stderr.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .kill_on_drop(true);
        let mut child = c.spawn().map_err(io_err("running berth oci exec"))?;
        let stdin_task = match (io.stdin, child.stdin.take()) {
            (Some(mut from), Some(mut to)) => Some(tokio::spawn(async move {
                let _ = tokio::io::copy(&mut from, &mut to).await;
                let _ = to.shutdown().await;
            })),
            _ => None,
        };
        let out = tokio::spawn({
            let (to, from) = (io.stdout, child.stdout.take());
            async move {
                if let (Some(mut to), Some(mut from)) = (to, from) {
                    let _ = tokio::io::copy(&mut from, &mut to).await;
                    let _ = to.flush().await;
                }
            }
        });
        let err = tokio::spawn({
            let (to, from) = (io.stderr, child.stderr.take());
            async move {
                if let (Some(mut to), Some(mut from)) = (to, from) {
                    let _ = tokio::io::copy(&mut from, &mut to).await;
                    let _ = to.flush().await;
                }
            }
        });
        let status = child.wait().await.map_err(io_err("waiting for exec"))?;
        // A background process the command left may hold its output open:
        // take what comes soon after the exit, then end the session.
        let (out_abort, err_abort) = (out.abort_handle(), err.abort_handle());
        if tokio::time::timeout(OUTPUT_AFTER_EXIT, async {
            let _ = out.await;
            let _ = err.await;
        })
        .await
        .is_err()
        {
            out_abort.abort();
            err_abort.abort();
        }
        if let Some(t) = stdin_task {
            t.abort();
        }
        Ok(ExitCode(code_of(status)))
    }

    async fn exec_tty(
        &self,
        cid: &str,
        cmd: &[String],
        mut io: StreamIo,
    ) -> Result<ExitCode, BackendError> {
        let dir = tempfile::Builder::new()
            .prefix("tty-")
            .tempdir_in(&self.daemon.paths.state)
            .map_err(io_err("a scratch dir for the console socket"))?;
        let sock_path = dir.path().join("console.sock");
        let listener = tokio::net::UnixListener::bind(&sock_path)
            .map_err(io_err("binding the console socket"))?;
        let mut c = tokio::process::Command::from(self.daemon.oci());
        c.arg("exec")
            .arg("--tty")
            .arg("--console-socket")
            .arg(&sock_path)
            .arg(cid)
            .args(cmd)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = c.spawn().map_err(io_err("running berth oci exec"))?;
        let conn = tokio::select! {
            a = listener.accept() => a.map_err(io_err("accepting the console socket"))?.0,
            s = child.wait() => {
                let mut text = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = e.read_to_string(&mut text).await;
                }
                return Err(other(format!("exec failed before its terminal was ready ({:?}): {}", s.ok(), text.trim())));
            }
        };
        let std_conn = conn.into_std().map_err(io_err("console socket"))?;
        std_conn
            .set_nonblocking(false)
            .map_err(io_err("console socket"))?;
        let master = tokio::task::spawn_blocking(move || crate::console::receive_master(&std_conn))
            .await
            .map_err(|e| other(e.to_string()))?
            .map_err(|e| other(e.to_string()))?;
        let resize_fd = master.try_clone().map_err(io_err("the pty master"))?;
        let reader = std::fs::File::from(master.try_clone().map_err(io_err("the pty master"))?);
        let writer = std::fs::File::from(master);
        let mut reader = tokio::fs::File::from_std(reader);
        let mut writer = tokio::fs::File::from_std(writer);
        let resize_task = tokio::spawn(async move {
            while let Some(size) = io.resize.recv().await {
                set_size(&resize_fd, size);
            }
        });
        let stdin_task = io.stdin.take().map(|mut from| {
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut from, &mut writer).await;
            })
        });
        if let Some(mut to) = io.stdout.take() {
            // The master reads EIO once the last process on the pty exits.
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match reader.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if to.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                        let _ = to.flush().await;
                    }
                }
            }
        }
        let status = child.wait().await.map_err(io_err("waiting for exec"))?;
        resize_task.abort();
        if let Some(t) = stdin_task {
            t.abort();
        }
        Ok(ExitCode(code_of(status)))
    }
}

fn set_size(master: &OwnedFd, size: TerminalSize) {
    if let Err(e) = crate::console::set_window_size(master, size.height, size.width) {
        tracing::debug!(error = %e, "resizing an exec's terminal");
    }
}

/// Connects to `port` on the pod's loopback, from a thread inside the
/// pod's network namespace; the socket stays in that namespace.
fn connect_in(netns: &Path, port: u16) -> Result<std::net::TcpStream, BackendError> {
    let netns = netns.to_path_buf();
    std::thread::Builder::new()
        .name("berth-portfwd".into())
        .spawn(move || -> Result<std::net::TcpStream, BackendError> {
            let f = std::fs::File::open(&netns)
                .map_err(io_err("opening the pod's network namespace"))?;
            nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| other(format!("entering the pod's network namespace: {e}")))?;
            std::net::TcpStream::connect(("127.0.0.1", port))
                .or_else(|_| std::net::TcpStream::connect(("::1", port)))
                .map_err(|source| BackendError::Io {
                    context: format!("connecting to port {port} in the pod"),
                    source,
                })
        })
        .map_err(io_err("starting the port-forward thread"))?
        .join()
        .map_err(|_| other("the port-forward thread panicked"))?
}

#[async_trait]
impl Backend for StreamBackend {
    async fn exec(
        &self,
        container_id: &str,
        cmd: &[String],
        io: StreamIo,
    ) -> Result<ExitCode, BackendError> {
        let cid = self.running(container_id)?;
        if io.tty {
            self.exec_tty(&cid, cmd, io).await
        } else {
            self.exec_pipes(&cid, cmd, io).await
        }
    }

    async fn attach(&self, container_id: &str, io: StreamIo) -> Result<(), BackendError> {
        let cid = self.running(container_id)?;
        // The container's config decides, as in containerd: its monitor
        // holds either a terminal or pipes, whatever the request says.
        let tty = self
            .daemon
            .container(&cid)
            .map(|c| super::container::decode(&lock(&c)).tty)
            .unwrap_or(false);
        let dir = self.daemon.engine.root.container_dir(&cid);
        let (sock, winsize) = tokio::task::spawn_blocking(move || {
            let sock = crate::attach::connect(&dir)?;
            let winsize = if tty {
                crate::attach::connect_winsize(&dir)
                    .map_err(|e| tracing::warn!(error = %e, "attach without resizing"))
                    .ok()
            } else {
                None
            };
            Ok::<_, std::io::Error>((sock, winsize))
        })
        .await
        .map_err(|e| other(e.to_string()))?
        .map_err(io_err("connecting to the container's attach socket"))?;
        let StreamIo {
            stdin,
            stdout,
            stderr,
            mut resize,
            ..
        } = io;
        // A terminal has one output, all of it stdout.
        let stderr = if tty { None } else { stderr };
        let resizer = match winsize {
            Some(ws) => {
                ws.set_nonblocking(true).map_err(io_err("winsize socket"))?;
                let mut ws =
                    tokio::net::UnixStream::from_std(ws).map_err(io_err("winsize socket"))?;
                Some(tokio::spawn(async move {
                    while let Some(size) = resize.recv().await {
                        let msg = crate::attach::Winsize {
                            rows: size.height,
                            cols: size.width,
                        }
                        .to_message();
                        if ws.write_all(&msg).await.is_err() {
                            break;
                        }
                    }
                }))
            }
            None => None,
        };
        sock.set_nonblocking(true)
            .map_err(io_err("attach socket"))?;
        let sock = tokio::net::UnixStream::from_std(sock).map_err(io_err("attach socket"))?;
        let (mut from_monitor, mut to_monitor) = sock.into_split();
        // Input: the client's stdin into the socket; its end detaches.
        let input = stdin.map(|mut from| {
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut from, &mut to_monitor).await;
                let _ = to_monitor.shutdown().await;
            })
        });
        // Output: the monitor's frames until the container exits.
        let (mut stdout, mut stderr) = (stdout, stderr);
        let mut head = [0u8; 5];
        while from_monitor.read_exact(&mut head).await.is_ok() {
            let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
            let mut data = vec![0u8; len];
            if from_monitor.read_exact(&mut data).await.is_err() {
                break;
            }
            let target = match head[0] {
                1 => stdout.as_mut(),
                2 => stderr.as_mut(),
                _ => break,
            };
            if let Some(t) = target
                && (t.write_all(&data).await.is_err() || t.flush().await.is_err())
            {
                break;
            }
        }
        if let Some(t) = input {
            t.abort();
        }
        if let Some(t) = resizer {
            t.abort();
        }
        Ok(())
    }

    async fn port_forward(
        &self,
        pod_sandbox_id: &str,
        port: u16,
        mut stream: PortStream,
    ) -> Result<(), BackendError> {
        let shared = self
            .daemon
            .sandbox(pod_sandbox_id)
            .map_err(|_| BackendError::SandboxNotFound(pod_sandbox_id.to_string()))?;
        let netns = lock(&shared).namespaces.net.clone();
        let tcp = match netns {
            Some(ns) => tokio::task::spawn_blocking(move || connect_in(&ns, port))
                .await
                .map_err(|e| other(e.to_string()))??,
            // A host-network pod: its ports are the node's.
            None => std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|source| {
                BackendError::Io {
                    context: format!("connecting to port {port} on the node"),
                    source,
                }
            })?,
        };
        tcp.set_nonblocking(true)
            .map_err(io_err("port-forward socket"))?;
        let mut tcp =
            tokio::net::TcpStream::from_std(tcp).map_err(io_err("port-forward socket"))?;
        tokio::io::copy_bidirectional(&mut stream, &mut tcp)
            .await
            .map(drop)
            .map_err(io_err("forwarding"))
    }
}
