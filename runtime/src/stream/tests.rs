//! End-to-end tests over real TCP: the server with a fake backend, driven by
//! minimal SPDY and WebSocket clients written the way client-go behaves.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use berth_proto::v1::{AttachRequest, ExecRequest, PortForwardRequest};
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use super::spdy::{Connection, Headers, Role, SpdyStream};
use super::*;

/// Set once the fake's `flood` learned its client had gone.
static FLOOD_ENDED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Commands the fake runs, standing in for a container's programs.
struct Fake;

#[async_trait]
impl Backend for Fake {
    async fn exec(
        &self,
        container_id: &str,
        cmd: &[String],
        mut io: StreamIo,
    ) -> Result<ExitCode, BackendError> {
        if container_id != "c1" {
            return Err(BackendError::ContainerNotFound(container_id.into()));
        }
        let io_err = |source| BackendError::Io {
            context: "fake".into(),
            source,
        };
        match cmd[0].as_str() {
            "echo" => {
                let line = cmd[1..].join(" ") + "\n";
                let out = io.stdout.as_mut().unwrap();
                out.write_all(line.as_bytes()).await.map_err(io_err)?;
                Ok(ExitCode(0))
            }
            "cat" => {
                let (mut i, mut o) = (io.stdin.take().unwrap(), io.stdout.take().unwrap());
                tokio::io::copy(&mut i, &mut o).await.map_err(io_err)?;
                Ok(ExitCode(0))
            }
            "warn" => {
                let err = io.stderr.as_mut().unwrap();
                err.write_all(b"oops\n").await.map_err(io_err)?;
                Ok(ExitCode(0))
            }
            "exit" => Ok(ExitCode(cmd[1].parse().unwrap_or(1))),
            "flood" => {
                // Writes until the client is gone, like `yes`.
                let out = io.stdout.as_mut().unwrap();
                while out.write_all(&[b'y'; 4096]).await.is_ok() {}
                FLOOD_ENDED.store(true, std::sync::atomic::Ordering::SeqCst);
                Ok(ExitCode(141))
            }
            "size" => {
                let s = io.resize.recv().await.unwrap();
                let out = io.stdout.as_mut().unwrap();
                let line = format!("{}x{}\n", s.width, s.height);
                out.write_all(line.as_bytes()).await.map_err(io_err)?;
                Ok(ExitCode(0))
            }
            _ => Err(BackendError::Other("no such command".into())),
        }
    }

    async fn attach(&self, container_id: &str, mut io: StreamIo) -> Result<(), BackendError> {
        if container_id != "c1" {
            return Err(BackendError::ContainerNotRunning(container_id.into()));
        }
        let (mut i, mut o) = (io.stdin.take().unwrap(), io.stdout.take().unwrap());
        let mut prefixed = Vec::new();
        i.read_to_end(&mut prefixed).await.unwrap();
        o.write_all(b"attached:").await.unwrap();
        o.write_all(&prefixed).await.unwrap();
        Ok(())
    }

    async fn port_forward(
        &self,
        pod_sandbox_id: &str,
        port: u16,
        stream: PortStream,
    ) -> Result<(), BackendError> {
        if pod_sandbox_id != "p1" {
            return Err(BackendError::SandboxNotFound(pod_sandbox_id.into()));
        }
        let mut tcp = TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|source| BackendError::Io {
                context: format!("connect to port {port}"),
                source,
            })?;
        let mut stream = stream;
        tokio::io::copy_bidirectional(&mut stream, &mut tcp)
            .await
            .map_err(|source| BackendError::Io {
                context: "copy".into(),
                source,
            })?;
        Ok(())
    }
}

async fn server() -> StreamServer {
    server_with(StreamConfig::default()).await
}

async fn server_with(config: StreamConfig) -> StreamServer {
    StreamServer::start(config, Arc::new(Fake)).await.unwrap()
}

fn exec_req(cmd: &[&str], stdin: bool, stdout: bool, stderr: bool, tty: bool) -> ExecRequest {
    ExecRequest {
        container_id: "c1".into(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        tty,
        stdin,
        stdout,
        stderr,
    }
}

/// Sends an upgrade request and reads the response head byte by byte (so
/// nothing after it is consumed). Returns the status and the headers.
async fn upgrade(url: &str, headers: &[(&str, &str)]) -> (TcpStream, u16, Vec<(String, String)>) {
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_at(rest.find('/').unwrap());
    let tcp = TcpStream::connect(host).await.unwrap();
    upgrade_on(tcp, host, path, headers).await
}

async fn upgrade_on<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut conn: S,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (S, u16, Vec<(String, String)>) {
    let mut req = format!("POST {path} HTTP/1.1\r\nHost: {host}\r\n");
    for (k, v) in headers {
        req += &format!("{k}: {v}\r\n");
    }
    req += "\r\n";
    conn.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        if conn.read(&mut b).await.unwrap() == 0 {
            break;
        }
        head.push(b[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let hdrs = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_owned()))
        .collect();
    (conn, status, hdrs)
}

async fn spdy_connect(url: &str, protocols: &str) -> (Connection, String) {
    let (tcp, status, hdrs) = upgrade(
        url,
        &[
            ("Connection", "Upgrade"),
            ("Upgrade", "SPDY/3.1"),
            ("X-Stream-Protocol-Version", protocols),
        ],
    )
    .await;
    assert_eq!(status, 101, "{hdrs:?}");
    let negotiated = hdrs
        .iter()
        .find(|(k, _)| k == "x-stream-protocol-version")
        .map(|(_, v)| v.clone())
        .unwrap();
    let (conn, _incoming) = Connection::start(tcp, Role::Client, None);
    (conn, negotiated)
}

async fn read_all(s: &mut SpdyStream) -> Vec<u8> {
    let mut v = Vec::new();
    while let Some(c) = s.reader.recv().await {
        v.extend_from_slice(&c);
    }
    v
}

struct ExecResult {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    error: Vec<u8>,
}

/// client-go's order: error, stdin, stdout, stderr, resize; stdin is
/// written then closed; stdout/stderr read to their end, then the error
/// stream.
async fn spdy_session(
    conn: &Connection,
    stdin: Option<&[u8]>,
    stdout: bool,
    stderr: bool,
    resize: Option<&str>,
) -> ExecResult {
    let open = |t: &'static str| conn.open_stream(Headers::new().with("streamType", t));
    let mut error = open("error").await.unwrap();
    let stdin_stream = match stdin {
        Some(_) => Some(open("stdin").await.unwrap()),
        None => None,
    };
    let mut out = if stdout {
        Some(open("stdout").await.unwrap())
    } else {
        None
    };
    let mut err = if stderr {
        Some(open("stderr").await.unwrap())
    } else {
        None
    };
    if let Some(r) = resize {
        let s = open("resize").await.unwrap();
        s.writer.write(r.as_bytes()).await.unwrap();
    }
    if let (Some(s), Some(data)) = (&stdin_stream, stdin) {
        let w = s.writer.clone();
        let data = data.to_vec();
        tokio::spawn(async move {
            w.write(&data).await.unwrap();
            w.close().await.unwrap();
        });
    }
    let (o, e) = tokio::join!(
        async {
            match &mut out {
                Some(s) => read_all(s).await,
                None => Vec::new(),
            }
        },
        async {
            match &mut err {
                Some(s) => read_all(s).await,
                None => Vec::new(),
            }
        }
    );
    let error = read_all(&mut error).await;
    ExecResult {
        stdout: o,
        stderr: e,
        error,
    }
}

fn status(error: &[u8]) -> serde_json::Value {
    serde_json::from_slice(error).unwrap()
}

const TIMEOUT: Duration = Duration::from_secs(20);

#[tokio::test]
async fn requests_are_validated_with_grpc_codes() {
    let s = server().await;
    let bad = [
        ExecRequest {
            container_id: String::new(),
            ..exec_req(&["ls"], false, true, false, false)
        },
        exec_req(&[], false, true, false, false),
        exec_req(&["ls"], false, true, true, true),
        exec_req(&["ls"], false, false, false, false),
    ];
    for r in &bad {
        let e = s.get_exec(r).unwrap_err();
        assert_eq!(e.grpc_code(), tonic::Code::InvalidArgument, "{e}");
    }
    assert_eq!(
        s.get_exec(&bad[2]).unwrap_err().to_string(),
        "tty and stderr cannot both be true"
    );
    assert!(
        s.get_attach(&AttachRequest {
            container_id: String::new(),
            stdout: true,
            ..Default::default()
        })
        .is_err()
    );
    let pf = |id: &str, port: Vec<i32>| PortForwardRequest {
        pod_sandbox_id: id.into(),
        port,
    };
    assert!(s.get_port_forward(&pf("", vec![])).is_err());
    assert!(s.get_port_forward(&pf("p1", vec![70000])).is_err());
    let url = s.get_port_forward(&pf("p1", vec![80])).unwrap().url;
    assert!(url.starts_with(&format!("http://{}/portforward/", s.local_addr())));
    s.shutdown().await;
}

#[tokio::test]
async fn spdy_exec_v4_reports_success_and_exit_codes() {
    let s = server().await;
    let url = s
        .get_exec(&exec_req(
            &["echo", "hello", "world"],
            false,
            true,
            false,
            false,
        ))
        .unwrap()
        .url;
    let (conn, proto) = spdy_connect(
        &url,
        "v4.channel.k8s.io, v3.channel.k8s.io, v2.channel.k8s.io, channel.k8s.io",
    )
    .await;
    assert_eq!(proto, "v4.channel.k8s.io");
    let r = tokio::time::timeout(TIMEOUT, spdy_session(&conn, None, true, false, None))
        .await
        .unwrap();
    assert_eq!(r.stdout, b"hello world\n");
    assert_eq!(status(&r.error)["status"], "Success");

    let url = s
        .get_exec(&exec_req(&["exit", "3"], false, true, false, false))
        .unwrap()
        .url;
    let (conn, _) = spdy_connect(&url, "v4.channel.k8s.io").await;
    let r = tokio::time::timeout(TIMEOUT, spdy_session(&conn, None, true, false, None))
        .await
        .unwrap();
    let st = status(&r.error);
    assert_eq!(st["status"], "Failure");
    assert_eq!(st["reason"], "NonZeroExitCode");
    assert_eq!(st["details"]["causes"][0]["reason"], "ExitCode");
    assert_eq!(st["details"]["causes"][0]["message"], "3");
}

#[tokio::test]
async fn spdy_v5_is_preferred_and_stdin_round_trips_without_flow_control_stalls() {
    let s = server().await;
    let url = s
        .get_exec(&exec_req(&["cat"], true, true, false, false))
        .unwrap()
        .url;
    let (conn, proto) = spdy_connect(&url, "v5.channel.k8s.io,v4.channel.k8s.io").await;
    assert_eq!(proto, "v5.channel.k8s.io");
    // Well past SPDY's 64 KiB initial window: client-go never sends
    // WINDOW_UPDATE, so the server must not wait for one.
    let data: Vec<u8> = (0..400_000u32).map(|i| (i % 251) as u8).collect();
    let r = tokio::time::timeout(TIMEOUT, spdy_session(&conn, Some(&data), true, false, None))
        .await
        .unwrap();
    assert_eq!(r.stdout.len(), data.len());
    assert!(r.stdout == data);
    assert_eq!(status(&r.error)["status"], "Success");
}

#[tokio::test]
async fn spdy_old_protocols_report_errors_as_text() {
    let s = server().await;
    let url = s
        .get_exec(&exec_req(&["exit", "2"], false, true, true, false))
        .unwrap()
        .url;
    let (conn, proto) = spdy_connect(&url, "v2.channel.k8s.io").await;
    assert_eq!(proto, "v2.channel.k8s.io");
    let r = tokio::time::timeout(TIMEOUT, spdy_session(&conn, None, true, true, None))
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8(r.error).unwrap(),
        "command terminated with non-zero exit code: exit status 2"
    );

    // Success says nothing on the error stream before v4.
    let url = s
        .get_exec(&exec_req(&["warn"], false, true, true, false))
        .unwrap()
        .url;
    let (conn, _) = spdy_connect(&url, "channel.k8s.io").await;
    let r = tokio::time::timeout(TIMEOUT, spdy_session(&conn, None, true, true, None))
        .await
        .unwrap();
    assert_eq!(r.stderr, b"oops\n");
    assert!(r.error.is_empty());
}

#[tokio::test]
async fn spdy_resize_events_reach_the_backend() {
    let s = server().await;
    let url = s
        .get_exec(&exec_req(&["size"], false, true, false, true))
        .unwrap()
        .url;
    let (conn, _) = spdy_connect(&url, "v4.channel.k8s.io").await;
    let r = tokio::time::timeout(
        TIMEOUT,
        spdy_session(
            &conn,
            None,
            true,
            false,
            Some("{\"Width\":132,\"Height\":43}\n"),
        ),
    )
    .await
    .unwrap();
    assert_eq!(r.stdout, b"132x43\n");
}

#[tokio::test]
async fn backend_failures_are_internal_error_statuses() {
    let s = server().await;
    let url = s
        .get_exec(&ExecRequest {
            container_id: "gone".into(),
            ..exec_req(&["echo"], false, true, false, false)
        })
        .unwrap()
        .url;
    let (conn, _) = spdy_connect(&url, "v4.channel.k8s.io").await;
    let r = tokio::time::timeout(TIMEOUT, spdy_session(&conn, None, true, false, None))
        .await
        .unwrap();
    let st = status(&r.error);
    assert_eq!(st["reason"], "InternalError");
    assert_eq!(st["code"], 500);
    assert!(
        st["message"]
            .as_str()
            .unwrap()
            .contains("container gone not found"),
        "{st}"
    );
}

#[tokio::test]
async fn spdy_attach_streams_stdin_and_stdout() {
    let s = server().await;
    let url = s
        .get_attach(&AttachRequest {
            container_id: "c1".into(),
            stdin: true,
            stdout: true,
            ..Default::default()
        })
        .unwrap()
        .url;
    assert!(url.contains("/attach/"));
    let (conn, _) = spdy_connect(&url, "v4.channel.k8s.io").await;
    let r = tokio::time::timeout(TIMEOUT, spdy_session(&conn, Some(b"hi"), true, false, None))
        .await
        .unwrap();
    assert_eq!(r.stdout, b"attached:hi");
    assert_eq!(status(&r.error)["status"], "Success");
}

#[tokio::test]
async fn streams_the_request_did_not_ask_for_are_answered_and_ended() {
    // client-go opens stderr for a non-tty session whatever the CRI request
    // said; the session must neither count it nor refuse it.
    let s = server().await;
    let url = s
        .get_attach(&AttachRequest {
            container_id: "c1".into(),
            stdin: true,
            stdout: true,
            ..Default::default()
        })
        .unwrap()
        .url;
    let (conn, _) = spdy_connect(&url, "v4.channel.k8s.io").await;
    let r = tokio::time::timeout(TIMEOUT, spdy_session(&conn, Some(b"x"), true, true, None))
        .await
        .unwrap();
    assert_eq!(r.stdout, b"attached:x");
    assert!(r.stderr.is_empty());
    assert_eq!(status(&r.error)["status"], "Success");
    let mut extra = conn
        .open_stream(Headers::new().with("streamType", "bogus"))
        .await;
    if let Ok(extra) = &mut extra {
        assert!(read_all(extra).await.is_empty());
    }
}

#[tokio::test]
async fn tokens_work_once_and_unknown_paths_are_404() {
    let s = server().await;
    let url = s
        .get_exec(&exec_req(&["echo"], false, true, false, false))
        .unwrap()
        .url;
    let (conn, _) = spdy_connect(&url, "v4.channel.k8s.io").await;
    drop(conn);
    let hdrs = [
        ("Connection", "Upgrade"),
        ("Upgrade", "SPDY/3.1"),
        ("X-Stream-Protocol-Version", "v4.channel.k8s.io"),
    ];
    let (_, status, _) = upgrade(&url, &hdrs).await;
    assert_eq!(status, 404);
    let base = s.base_url().to_owned();
    for path in ["/exec/nope", "/other/x", "/exec/", "/"] {
        let (_, status, _) = upgrade(&format!("{base}{path}"), &hdrs).await;
        assert_eq!(status, 404, "{path}");
    }
    // A token is bound to its kind.
    let url = s
        .get_exec(&exec_req(&["echo"], false, true, false, false))
        .unwrap()
        .url
        .replace("/exec/", "/attach/");
    let (_, status, _) = upgrade(&url, &hdrs).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn spdy_negotiation_failures_are_400_and_403() {
    let s = server().await;
    let url = s
        .get_exec(&exec_req(&["echo"], false, true, false, false))
        .unwrap()
        .url;
    let (_, status, hdrs) = upgrade(
        &url,
        &[
            ("Connection", "Upgrade"),
            ("Upgrade", "SPDY/3.1"),
            ("X-Stream-Protocol-Version", "v9.channel.k8s.io"),
        ],
    )
    .await;
    assert_eq!(status, 403);
    let accepted: Vec<&str> = hdrs
        .iter()
        .filter(|(k, _)| k == "x-accepted-stream-protocol-versions")
        .map(|(_, v)| v.as_str())
        .collect();
    assert!(accepted.contains(&"v4.channel.k8s.io"), "{hdrs:?}");

    let url = s
        .get_exec(&exec_req(&["echo"], false, true, false, false))
        .unwrap()
        .url;
    let (_, status, _) = upgrade(&url, &[("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1")]).await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn spdy_clients_that_never_open_their_streams_time_out() {
    let s = server_with(StreamConfig {
        stream_creation_timeout: Duration::from_millis(200),
        ..StreamConfig::default()
    })
    .await;
    let url = s
        .get_exec(&exec_req(&["echo"], false, true, false, false))
        .unwrap()
        .url;
    let (conn, _) = spdy_connect(&url, "v4.channel.k8s.io").await;
    let _error = conn
        .open_stream(Headers::new().with("streamType", "error"))
        .await
        .unwrap();
    tokio::time::timeout(TIMEOUT, conn.closed()).await.unwrap();
}

// ---- WebSocket ----

type Ws = tokio_tungstenite::WebSocketStream<TcpStream>;

async fn ws_connect(url: &str, protocol: &str) -> (Ws, Option<String>) {
    let ws_url = url.replacen("http://", "ws://", 1);
    let mut req = ws_url.as_str().into_client_request().unwrap();
    if !protocol.is_empty() {
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", protocol.parse().unwrap());
    }
    let host = ws_url
        .strip_prefix("ws://")
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let tcp = TcpStream::connect(host).await.unwrap();
    let (ws, resp) = tokio_tungstenite::client_async(req, tcp).await.unwrap();
    let proto = resp
        .headers()
        .get("sec-websocket-protocol")
        .map(|v| v.to_str().unwrap().to_owned());
    (ws, proto)
}

/// Reads until the server closes; returns each channel's bytes.
async fn ws_collect(ws: &mut Ws, base64: bool) -> [Vec<u8>; 5] {
    let mut out: [Vec<u8>; 5] = Default::default();
    while let Some(Ok(msg)) = ws.next().await {
        let (ch, data) = match msg {
            Message::Binary(b) if !base64 => (b[0], b[1..].to_vec()),
            Message::Text(t) if base64 => {
                use base64::Engine;
                let b = t.as_bytes();
                (
                    b[0] - b'0',
                    base64::engine::general_purpose::STANDARD
                        .decode(&b[1..])
                        .unwrap(),
                )
            }
            Message::Close(_) => break,
            other => panic!("unexpected message {other:?}"),
        };
        out[ch as usize].extend_from_slice(&data);
    }
    out
}

#[tokio::test]
async fn websocket_v5_exec_with_stdin_close_signal() {
    let s = server().await;
    let url = s
        .get_exec(&exec_req(&["cat"], true, true, false, false))
        .unwrap()
        .url;
    let (mut ws, proto) = ws_connect(&url, "v5.channel.k8s.io, v4.channel.k8s.io").await;
    assert_eq!(proto.as_deref(), Some("v5.channel.k8s.io"));
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 13) as u8).collect();
    for chunk in data.chunks(10_000) {
        let mut m = vec![0u8];
        m.extend_from_slice(chunk);
        ws.send(Message::binary(m)).await.unwrap();
    }
    // The v5 close signal: stdin (0) is done; `cat` sees end of file.
    ws.send(Message::binary(vec![255, 0])).await.unwrap();
    let out = tokio::time::timeout(TIMEOUT, ws_collect(&mut ws, false))
        .await
        .unwrap();
    assert!(out[1] == data);
    assert_eq!(status(&out[3])["status"], "Success");
}

#[tokio::test]
async fn websocket_base64_exec_reports_exit_code() {
    let s = server().await;
    let url = s
        .get_exec(&exec_req(&["exit", "7"], false, true, false, false))
        .unwrap()
        .url;
    let (mut ws, proto) = ws_connect(&url, "v4.base64.channel.k8s.io").await;
    assert_eq!(proto.as_deref(), Some("v4.base64.channel.k8s.io"));
    let out = tokio::time::timeout(TIMEOUT, ws_collect(&mut ws, true))
        .await
        .unwrap();
    let st = status(&out[3]);
    assert_eq!(st["reason"], "NonZeroExitCode");
    assert_eq!(st["details"]["causes"][0]["message"], "7");
}

#[tokio::test]
async fn websocket_resize_and_unnamed_protocol() {
    let s = server().await;
    let url = s
        .get_exec(&exec_req(&["size"], false, true, false, true))
        .unwrap()
        .url;
    let (mut ws, proto) = ws_connect(&url, "").await;
    assert_eq!(proto, None);
    let mut m = vec![4u8];
    m.extend_from_slice(br#"{"Width":80,"Height":24}"#);
    ws.send(Message::binary(m)).await.unwrap();
    let out = tokio::time::timeout(TIMEOUT, ws_collect(&mut ws, false))
        .await
        .unwrap();
    assert_eq!(out[1], b"80x24\n");
    // channel.k8s.io: success writes nothing on the error channel.
    assert!(out[3].is_empty());
}

#[tokio::test]
async fn websocket_refuses_unknown_subprotocols() {
    let s = server().await;
    let url = s
        .get_exec(&exec_req(&["echo"], false, true, false, false))
        .unwrap()
        .url;
    let ws_url = url.replacen("http://", "ws://", 1);
    let mut req = ws_url.as_str().into_client_request().unwrap();
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "v9.channel.k8s.io".parse().unwrap(),
    );
    let tcp = TcpStream::connect(s.local_addr()).await.unwrap();
    assert!(tokio_tungstenite::client_async(req, tcp).await.is_err());
}

// ---- port forwarding ----

/// A TCP echo server; returns its port.
async fn echo_server() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut c, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = c.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    port
}

async fn pf_pair(conn: &Connection, port: u16, request_id: u32) -> (SpdyStream, SpdyStream) {
    let h = |t: &str| {
        Headers::new()
            .with("streamType", t)
            .with("port", &port.to_string())
            .with("requestID", &request_id.to_string())
    };
    let error = conn.open_stream(h("error")).await.unwrap();
    error.writer.close().await.unwrap();
    let data = conn.open_stream(h("data")).await.unwrap();
    (data, error)
}

#[tokio::test]
async fn spdy_port_forward_carries_concurrent_connections() {
    let port = echo_server().await;
    let s = server().await;
    let url = s
        .get_port_forward(&PortForwardRequest {
            pod_sandbox_id: "p1".into(),
            port: vec![],
        })
        .unwrap()
        .url;
    let (conn, proto) = spdy_connect(&url, "portforward.k8s.io").await;
    assert_eq!(proto, "portforward.k8s.io");
    let mut joins = Vec::new();
    for id in 0..3u32 {
        let (mut data, mut error) = pf_pair(&conn, port, id).await;
        joins.push(tokio::spawn(async move {
            let msg = format!("hello from {id}").repeat(1000);
            data.writer.write(msg.as_bytes()).await.unwrap();
            data.writer.close().await.unwrap();
            let back = read_all(&mut data).await;
            assert_eq!(back, msg.as_bytes());
            assert!(read_all(&mut error).await.is_empty());
        }));
    }
    for j in joins {
        tokio::time::timeout(TIMEOUT, j).await.unwrap().unwrap();
    }
}

#[tokio::test]
async fn spdy_port_forward_reports_backend_errors_and_refuses_bad_streams() {
    let s = server().await;
    let url = s
        .get_port_forward(&PortForwardRequest {
            pod_sandbox_id: "p1".into(),
            port: vec![],
        })
        .unwrap()
        .url;
    let (conn, _) = spdy_connect(&url, "portforward.k8s.io").await;
    // Nothing listens on port 1.
    let (mut data, mut error) = pf_pair(&conn, 1, 0).await;
    let msg = tokio::time::timeout(TIMEOUT, read_all(&mut error))
        .await
        .unwrap();
    let msg = String::from_utf8(msg).unwrap();
    assert!(
        msg.starts_with("error forwarding port 1 to pod p1: connect to port 1:"),
        "{msg}"
    );
    assert!(read_all(&mut data).await.is_empty());

    let refused = conn
        .open_stream(Headers::new().with("streamType", "data"))
        .await;
    assert!(refused.is_err());
    let refused = conn
        .open_stream(
            Headers::new()
                .with("streamType", "bogus")
                .with("port", "80"),
        )
        .await;
    assert!(refused.is_err());
}

#[tokio::test]
async fn spdy_port_forward_keeps_to_the_requested_ports() {
    let port = echo_server().await;
    let s = server().await;
    let url = s
        .get_port_forward(&PortForwardRequest {
            pod_sandbox_id: "p1".into(),
            port: vec![i32::from(port)],
        })
        .unwrap()
        .url;
    let (conn, _) = spdy_connect(&url, "portforward.k8s.io").await;
    let other = if port == 65535 { 65534 } else { port + 1 };
    let h = Headers::new()
        .with("streamType", "error")
        .with("port", &other.to_string())
        .with("requestID", "0");
    assert!(conn.open_stream(h).await.is_err());
    let (mut data, _error) = pf_pair(&conn, port, 1).await;
    data.writer.write(b"ok").await.unwrap();
    data.writer.close().await.unwrap();
    assert_eq!(read_all(&mut data).await, b"ok");
}

#[tokio::test]
async fn websocket_port_forward_prefixes_the_port() {
    let port = echo_server().await;
    let s = server().await;
    let url = s
        .get_port_forward(&PortForwardRequest {
            pod_sandbox_id: "p1".into(),
            port: vec![i32::from(port)],
        })
        .unwrap()
        .url;
    let (mut ws, proto) = ws_connect(&url, "v4.channel.k8s.io").await;
    assert_eq!(proto.as_deref(), Some("v4.channel.k8s.io"));
    let mut seen = [Vec::new(), Vec::new()];
    let mut sent = false;
    let mut got = Vec::new();
    while got.len() < 5 {
        let msg = tokio::time::timeout(TIMEOUT, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let Message::Binary(b) = msg else { continue };
        let ch = b[0] as usize;
        if seen[ch].is_empty() {
            // First message on each channel: the port, little-endian.
            assert_eq!(&b[1..], &port.to_le_bytes());
            seen[ch] = b[1..].to_vec();
        } else if ch == 0 {
            got.extend_from_slice(&b[1..]);
        }
        if !seen[0].is_empty() && !seen[1].is_empty() && !sent {
            let mut m = vec![0u8];
            m.extend_from_slice(b"hello");
            ws.send(Message::binary(m)).await.unwrap();
            sent = true;
        }
    }
    assert_eq!(got, b"hello");
}

/// client-go's `NewSPDYOverWebsocketDialer`: a WebSocket asking for the
/// tunnel subprotocol, and a SPDY client on the bytes it carries.
async fn tunnel_connect(url: &str) -> Connection {
    let (ws, proto) = ws_connect(url, "SPDY/3.1+portforward.k8s.io").await;
    assert_eq!(proto.as_deref(), Some("SPDY/3.1+portforward.k8s.io"));
    let (conn, _incoming) = Connection::start(super::tunnel::WsTunnel::new(ws), Role::Client, None);
    conn
}

#[tokio::test]
async fn spdy_over_websocket_port_forward_carries_concurrent_connections() {
    let port = echo_server().await;
    let s = server().await;
    // No ports in the request and none in the URL: what critest sends, and
    // what the channel protocol refuses with a 400.
    let url = s
        .get_port_forward(&PortForwardRequest {
            pod_sandbox_id: "p1".into(),
            port: vec![],
        })
        .unwrap()
        .url;
    let conn = tunnel_connect(&url).await;
    let mut joins = Vec::new();
    for id in 0..2u32 {
        let (mut data, mut error) = pf_pair(&conn, port, id).await;
        joins.push(tokio::spawn(async move {
            // Past SPDY's 64 KiB window and the tunnel's message size.
            let msg = format!("tunnelled {id} ").repeat(20_000);
            let writer = data.writer.clone();
            let sent = msg.clone();
            tokio::spawn(async move {
                writer.write(sent.as_bytes()).await.unwrap();
                writer.close().await.unwrap();
            });
            let back = read_all(&mut data).await;
            assert!(back == msg.as_bytes(), "connection {id} echoed wrong");
            assert!(read_all(&mut error).await.is_empty());
        }));
    }
    for j in joins {
        tokio::time::timeout(TIMEOUT, j).await.unwrap().unwrap();
    }

    // Nothing listens on port 1: the error stream says so, and the session
    // goes on.
    let (mut data, mut error) = pf_pair(&conn, 1, 7).await;
    let msg = tokio::time::timeout(TIMEOUT, read_all(&mut error))
        .await
        .unwrap();
    let msg = String::from_utf8(msg).unwrap();
    assert!(
        msg.starts_with("error forwarding port 1 to pod p1: connect to port 1:"),
        "{msg}"
    );
    assert!(read_all(&mut data).await.is_empty());
    let (mut data, _error) = pf_pair(&conn, port, 8).await;
    data.writer.write(b"still here").await.unwrap();
    data.writer.close().await.unwrap();
    let back = tokio::time::timeout(TIMEOUT, read_all(&mut data))
        .await
        .unwrap();
    assert_eq!(back, b"still here");
}

#[tokio::test]
async fn spdy_over_websocket_keeps_to_the_requested_ports() {
    let port = echo_server().await;
    let s = server().await;
    let url = s
        .get_port_forward(&PortForwardRequest {
            pod_sandbox_id: "p1".into(),
            port: vec![i32::from(port)],
        })
        .unwrap()
        .url;
    let conn = tunnel_connect(&url).await;
    let other = if port == 65535 { 65534 } else { port + 1 };
    let h = Headers::new()
        .with("streamType", "error")
        .with("port", &other.to_string())
        .with("requestID", "0");
    assert!(conn.open_stream(h).await.is_err());
    let (mut data, _error) = pf_pair(&conn, port, 1).await;
    data.writer.write(b"ok").await.unwrap();
    data.writer.close().await.unwrap();
    assert_eq!(read_all(&mut data).await, b"ok");
    // The client leaving ends the tunnel cleanly.
    conn.close().await;
    tokio::time::timeout(TIMEOUT, conn.closed()).await.unwrap();
}

#[tokio::test]
async fn channel_port_forward_still_needs_its_ports() {
    let s = server().await;
    let url = s
        .get_port_forward(&PortForwardRequest {
            pod_sandbox_id: "p1".into(),
            port: vec![],
        })
        .unwrap()
        .url;
    let (_, status, _) = upgrade(
        &url,
        &[
            ("Connection", "Upgrade"),
            ("Upgrade", "websocket"),
            ("Sec-WebSocket-Version", "13"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("Sec-WebSocket-Protocol", "v4.channel.k8s.io"),
        ],
    )
    .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn base_url_prefix_is_routed() {
    let s = server_with(StreamConfig {
        base_url: Some("http://placeholder/cri/stream/".into()),
        ..StreamConfig::default()
    })
    .await;
    let url = s
        .get_exec(&exec_req(&["echo", "x"], false, true, false, false))
        .unwrap()
        .url;
    assert!(
        url.starts_with("http://placeholder/cri/stream/exec/"),
        "{url}"
    );
    let real = url.replace("placeholder", &s.local_addr().to_string());
    let (conn, _) = spdy_connect(&real, "v4.channel.k8s.io").await;
    let r = tokio::time::timeout(TIMEOUT, spdy_session(&conn, None, true, false, None))
        .await
        .unwrap();
    assert_eq!(r.stdout, b"x\n");
}

#[tokio::test]
async fn shutdown_ends_running_sessions() {
    let s = server().await;
    let url = s
        .get_exec(&exec_req(&["cat"], true, true, false, false))
        .unwrap()
        .url;
    let (conn, _) = spdy_connect(&url, "v4.channel.k8s.io").await;
    let open = |t: &'static str| conn.open_stream(Headers::new().with("streamType", t));
    let _e = open("error").await.unwrap();
    let _i = open("stdin").await.unwrap();
    let mut o = open("stdout").await.unwrap();
    s.shutdown().await;
    // The session is gone: stdout ends although stdin was never closed.
    tokio::time::timeout(TIMEOUT, read_all(&mut o))
        .await
        .unwrap();
}

// ---- TLS ----

fn tls_configs() -> (Arc<rustls::ServerConfig>, tokio_rustls::TlsConnector) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert = ck.cert.der().clone();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.key_pair.serialize_der().into());
    let server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    (
        Arc::new(server),
        tokio_rustls::TlsConnector::from(Arc::new(client)),
    )
}

#[tokio::test]
async fn tls_serves_spdy_and_websocket() {
    let (server_tls, connector) = tls_configs();
    let s = server_with(StreamConfig {
        tls: Some(server_tls),
        ..StreamConfig::default()
    })
    .await;
    assert!(s.base_url().starts_with("https://"));
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();

    let url = s
        .get_exec(&exec_req(&["echo", "secret"], false, true, false, false))
        .unwrap()
        .url;
    let path = &url[url.find("/exec/").unwrap()..];
    let tcp = TcpStream::connect(s.local_addr()).await.unwrap();
    let tls = connector.connect(name.clone(), tcp).await.unwrap();
    let (tls, status, _) = upgrade_on(
        tls,
        "localhost",
        path,
        &[
            ("Connection", "Upgrade"),
            ("Upgrade", "SPDY/3.1"),
            ("X-Stream-Protocol-Version", "v4.channel.k8s.io"),
        ],
    )
    .await;
    assert_eq!(status, 101);
    let (conn, _) = Connection::start(tls, Role::Client, None);
    let r = tokio::time::timeout(TIMEOUT, spdy_session(&conn, None, true, false, None))
        .await
        .unwrap();
    assert_eq!(r.stdout, b"secret\n");

    let url = s
        .get_exec(&exec_req(&["echo", "ws"], false, true, false, false))
        .unwrap()
        .url;
    let path = &url[url.find("/exec/").unwrap()..];
    let tcp = TcpStream::connect(s.local_addr()).await.unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    let mut req = format!("wss://localhost{path}")
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "v5.channel.k8s.io".parse().unwrap(),
    );
    let (mut ws, _) = tokio_tungstenite::client_async(req, tls).await.unwrap();
    let mut stdout = Vec::new();
    while let Some(Ok(msg)) = ws.next().await {
        match msg {
            Message::Binary(b) if b[0] == 1 => stdout.extend_from_slice(&b[1..]),
            Message::Close(_) => break,
            _ => {}
        }
    }
    assert_eq!(stdout, b"ws\n");

    // A plain-text client gets no service.
    let url = s
        .get_exec(&exec_req(&["echo"], false, true, false, false))
        .unwrap()
        .url
        .replacen("https://", "http://", 1);
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_at(rest.find('/').unwrap());
    let tcp = TcpStream::connect(host).await.unwrap();
    let mut tcp = tcp;
    tcp.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut resp = Vec::new();
    let _ = tokio::time::timeout(TIMEOUT, tcp.read_to_end(&mut resp)).await;
    assert!(!resp.starts_with(b"HTTP/1.1 101"));
}

#[tokio::test]
async fn idle_sessions_are_closed_on_both_transports() {
    let s = server_with(StreamConfig {
        stream_idle_timeout: Duration::from_millis(300),
        ..StreamConfig::default()
    })
    .await;
    let url = s
        .get_exec(&exec_req(&["cat"], true, true, false, false))
        .unwrap()
        .url;
    let (conn, _) = spdy_connect(&url, "v4.channel.k8s.io").await;
    let open = |t: &'static str| conn.open_stream(Headers::new().with("streamType", t));
    let _e = open("error").await.unwrap();
    let _i = open("stdin").await.unwrap();
    let mut o = open("stdout").await.unwrap();
    tokio::time::timeout(TIMEOUT, read_all(&mut o))
        .await
        .unwrap();
    tokio::time::timeout(TIMEOUT, conn.closed()).await.unwrap();

    let url = s
        .get_exec(&exec_req(&["cat"], true, true, false, false))
        .unwrap()
        .url;
    let (mut ws, _) = ws_connect(&url, "v5.channel.k8s.io").await;
    tokio::time::timeout(TIMEOUT, ws_collect(&mut ws, false))
        .await
        .unwrap();
}

#[tokio::test]
async fn websocket_pings_are_answered_during_a_session() {
    // client-go pings every 5 s and gives up after 61 s without a pong.
    let s = server().await;
    let url = s
        .get_exec(&exec_req(&["cat"], true, true, false, false))
        .unwrap()
        .url;
    let (mut ws, _) = ws_connect(&url, "v5.channel.k8s.io").await;
    ws.send(Message::Ping(b"hb".to_vec().into())).await.unwrap();
    let pong = tokio::time::timeout(TIMEOUT, async {
        while let Some(Ok(m)) = ws.next().await {
            if let Message::Pong(p) = m {
                return p.to_vec();
            }
        }
        Vec::new()
    })
    .await
    .unwrap();
    assert_eq!(pong, b"hb");
}

#[tokio::test]
async fn the_backend_learns_that_the_client_left_from_failing_writes() {
    let s = server().await;
    let url = s
        .get_exec(&exec_req(&["flood"], false, true, false, false))
        .unwrap()
        .url;
    let (conn, _) = spdy_connect(&url, "v4.channel.k8s.io").await;
    let open = |t: &'static str| conn.open_stream(Headers::new().with("streamType", t));
    let _e = open("error").await.unwrap();
    let mut o = open("stdout").await.unwrap();
    let first = o.reader.recv().await.unwrap();
    assert_eq!(first[0], b'y');
    conn.abort();
    drop(o);
    tokio::time::timeout(TIMEOUT, async {
        while !FLOOD_ENDED.load(std::sync::atomic::Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap();
}
