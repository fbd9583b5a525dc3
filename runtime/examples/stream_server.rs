//! The CRI streaming server with a toy backend, for trying real clients
//! (client-go, kubectl's libraries, websocat) against it by hand.
//!
//! The backend runs commands as host processes (no container), attach
//! echoes stdin back after `attached:`, and port forwarding connects to the
//! port on 127.0.0.1. Each line on stdin asks for a URL, printed on stdout:
//!
//! ```text
//! exec TTY STDIN STDOUT STDERR CMD...   e.g. `exec 0 0 1 1 sh -c "exit 3"` (words split on spaces)
//! attach TTY STDIN STDOUT STDERR
//! portforward [PORT...]
//! ```
//!
//! Run: `cargo run -p berth-runtime --example stream_server [-- --tls]`;
//! `--tls` serves HTTPS with a throwaway self-signed certificate.

use std::process::Stdio;
use std::sync::Arc;

use async_trait::async_trait;
use berth_proto::v1::{AttachRequest, ExecRequest, PortForwardRequest};
use berth_runtime::stream::{
    Backend, BackendError, ExitCode, PortStream, StreamConfig, StreamIo, StreamServer,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

struct HostBackend;

fn io_err(context: &str) -> impl FnOnce(std::io::Error) -> BackendError + '_ {
    move |source| BackendError::Io {
        context: context.to_owned(),
        source,
    }
}

#[async_trait]
impl Backend for HostBackend {
    async fn exec(
        &self,
        _container_id: &str,
        cmd: &[String],
        io: StreamIo,
    ) -> Result<ExitCode, BackendError> {
        let StreamIo {
            tty,
            stdin,
            stdout,
            stderr,
            mut resize,
        } = io;
        tokio::spawn(async move {
            while let Some(size) = resize.recv().await {
                eprintln!("resize: {}x{}", size.width, size.height);
            }
        });
        let pipe = |on: bool| if on { Stdio::piped() } else { Stdio::null() };
        let mut child = tokio::process::Command::new(&cmd[0])
            .args(&cmd[1..])
            .stdin(pipe(stdin.is_some()))
            .stdout(pipe(stdout.is_some()))
            // Without a pty, a tty session's stderr goes to its stdout.
            .stderr(pipe(stderr.is_some() || tty))
            .spawn()
            .map_err(io_err("spawn"))?;
        let mut copies = Vec::new();
        if let (Some(mut from), Some(mut to)) = (stdin, child.stdin.take()) {
            copies.push(tokio::spawn(async move {
                let _ = tokio::io::copy(&mut from, &mut to).await;
            }));
        }
        let mut out_copies = Vec::new();
        if let (Some(mut to), Some(mut from)) = (stdout, child.stdout.take()) {
            let err = if tty { child.stderr.take() } else { None };
            out_copies.push(tokio::spawn(async move {
                let _ = tokio::io::copy(&mut from, &mut to).await;
                if let Some(mut e) = err {
                    let _ = tokio::io::copy(&mut e, &mut to).await;
                }
            }));
        }
        if let (Some(mut to), Some(mut from)) = (stderr, child.stderr.take()) {
            out_copies.push(tokio::spawn(async move {
                let _ = tokio::io::copy(&mut from, &mut to).await;
            }));
        }
        let status = child.wait().await.map_err(io_err("wait"))?;
        for c in out_copies {
            let _ = c.await;
        }
        for c in copies {
            c.abort();
        }
        use std::os::unix::process::ExitStatusExt;
        Ok(ExitCode(
            status
                .code()
                .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)),
        ))
    }

    async fn attach(&self, _container_id: &str, io: StreamIo) -> Result<(), BackendError> {
        let mut input = Vec::new();
        if let Some(mut i) = io.stdin {
            i.read_to_end(&mut input).await.map_err(io_err("stdin"))?;
        }
        if let Some(mut o) = io.stdout {
            o.write_all(b"attached:").await.map_err(io_err("stdout"))?;
            o.write_all(&input).await.map_err(io_err("stdout"))?;
        }
        Ok(())
    }

    async fn port_forward(
        &self,
        _pod_sandbox_id: &str,
        port: u16,
        mut stream: PortStream,
    ) -> Result<(), BackendError> {
        let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(io_err("connect"))?;
        tokio::io::copy_bidirectional(&mut stream, &mut tcp)
            .await
            .map_err(io_err("copy"))?;
        Ok(())
    }
}

fn self_signed() -> Arc<rustls::ServerConfig> {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("make a certificate");
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.key_pair.serialize_der().into());
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_no_client_auth()
    .with_single_cert(vec![ck.cert.der().clone()], key)
    .expect("TLS config");
    Arc::new(config)
}

#[tokio::main]
async fn main() {
    let tls = std::env::args().any(|a| a == "--tls");
    let config = StreamConfig {
        tls: tls.then(self_signed),
        ..StreamConfig::default()
    };
    let server = StreamServer::start(config, Arc::new(HostBackend))
        .await
        .expect("start the streaming server");
    eprintln!("streaming server on {}", server.base_url());
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let flag = |w: Option<&str>| w == Some("1");
    while let Ok(Some(line)) = lines.next_line().await {
        let mut w = line.split_whitespace();
        let answer = match w.next() {
            Some("exec") => {
                let (tty, stdin, stdout, stderr) = (
                    flag(w.next()),
                    flag(w.next()),
                    flag(w.next()),
                    flag(w.next()),
                );
                let req = ExecRequest {
                    container_id: "c".into(),
                    cmd: w.map(str::to_owned).collect(),
                    tty,
                    stdin,
                    stdout,
                    stderr,
                };
                server.get_exec(&req).map(|r| r.url)
            }
            Some("attach") => {
                let req = AttachRequest {
                    container_id: "c".into(),
                    tty: flag(w.next()),
                    stdin: flag(w.next()),
                    stdout: flag(w.next()),
                    stderr: flag(w.next()),
                };
                server.get_attach(&req).map(|r| r.url)
            }
            Some("portforward") => {
                let req = PortForwardRequest {
                    pod_sandbox_id: "p".into(),
                    port: w.filter_map(|p| p.parse().ok()).collect(),
                };
                server.get_port_forward(&req).map(|r| r.url)
            }
            _ => {
                println!("error: unknown request");
                continue;
            }
        };
        match answer {
            Ok(url) => println!("{url}"),
            Err(e) => println!("error: {e}"),
        }
    }
    server.shutdown().await;
}
