//! `berth pods`, `berth logs`, `berth exec`: kubectl's `get pods`, `logs`
//! and `exec` for a user on the node, through the kubelet's HTTPS API
//! (`/pods`, `/containerLogs`, `/exec` over WebSocket `v5.channel.k8s.io`),
//! trusting the kubelet's own certificate (`<root>/pki/kubelet.crt`).

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use berth_kubelet::server::tls;
use berth_kubelet::volume::DEFAULT_ROOT;
use clap::Parser;
use futures::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Pod;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// Where the kubelet is and how to trust it.
#[derive(clap::Args, Clone, Debug)]
pub struct KubeletArgs {
    /// The kubelet API.
    #[arg(long, default_value = "https://127.0.0.1:10250")]
    kubelet: String,
    /// The kubelet's root (as `berth node --root`), whose
    /// `pki/kubelet.crt` is trusted.
    #[arg(long, default_value = DEFAULT_ROOT)]
    root: PathBuf,
    /// Trust this CA file instead of `<root>/pki/kubelet.crt`.
    #[arg(long)]
    ca_file: Option<PathBuf>,
}

#[derive(Parser, Debug)]
pub struct PodsArgs {
    /// Only this namespace's pods.
    #[arg(short = 'n', long, default_value = "default")]
    namespace: String,
    /// Every namespace's pods.
    #[arg(short = 'A', long, conflicts_with = "namespace")]
    all_namespaces: bool,
    #[command(flatten)]
    kubelet: KubeletArgs,
}

#[derive(Parser, Debug)]
pub struct LogsArgs {
    /// The pod.
    pod: String,
    #[arg(short = 'n', long, default_value = "default")]
    namespace: String,
    /// The container; default: the pod's first.
    #[arg(short = 'c', long)]
    container: Option<String>,
    /// Keep printing new output until the container exits.
    #[arg(short = 'f', long)]
    follow: bool,
    /// Only the last N lines.
    #[arg(long)]
    tail: Option<i64>,
    /// Prefix each line with its time.
    #[arg(long)]
    timestamps: bool,
    /// The previous instance's logs (before its last restart).
    #[arg(short = 'p', long)]
    previous: bool,
    #[command(flatten)]
    kubelet: KubeletArgs,
}

#[derive(Parser, Debug)]
pub struct ExecArgs {
    /// The pod.
    pod: String,
    #[arg(short = 'n', long, default_value = "default")]
    namespace: String,
    /// The container; default: the pod's first.
    #[arg(short = 'c', long)]
    container: Option<String>,
    /// Pass stdin to the command.
    #[arg(short = 'i', long)]
    stdin: bool,
    /// Run the command in a terminal.
    #[arg(short = 't', long)]
    tty: bool,
    #[command(flatten)]
    kubelet: KubeletArgs,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

/// Runs `f` on a small runtime; errors become exit code 1.
fn run(name: &str, f: impl Future<Output = Result<i32>>) -> i32 {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("berth {name}: starting the async runtime: {e}");
            return 1;
        }
    };
    let code = match rt.block_on(f) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("berth {name}: {e:#}");
            1
        }
    };
    // A read of stdin may still block a thread; do not wait for it.
    rt.shutdown_background();
    code
}

pub fn pods_main(args: PodsArgs) -> i32 {
    run("pods", async move {
        let k = Kubelet::new(&args.kubelet)?;
        let pods = k.pods().await?;
        let ns = (!args.all_namespaces).then_some(args.namespace.as_str());
        print!("{}", table(&pods, ns, jiff::Timestamp::now()));
        Ok(0)
    })
}

pub fn logs_main(args: LogsArgs) -> i32 {
    run("logs", async move {
        let k = Kubelet::new(&args.kubelet)?;
        let container = match &args.container {
            Some(c) => c.clone(),
            None => k.default_container(&args.namespace, &args.pod).await?,
        };
        let mut q = form_urlencoded::Serializer::new(String::new());
        if args.follow {
            q.append_pair("follow", "true");
        }
        if let Some(t) = args.tail {
            q.append_pair("tailLines", &t.to_string());
        }
        if args.timestamps {
            q.append_pair("timestamps", "true");
        }
        if args.previous {
            q.append_pair("previous", "true");
        }
        let path = format!(
            "/containerLogs/{}/{}/{container}?{}",
            args.namespace,
            args.pod,
            q.finish()
        );
        let mut body = k.get(&path).await?;
        let mut out = std::io::stdout().lock();
        while let Some(frame) = body.frame().await {
            let frame = frame.context("reading the logs")?;
            if let Ok(data) = frame.into_data() {
                out.write_all(&data)?;
                out.flush()?;
            }
        }
        Ok(0)
    })
}

pub fn exec_main(args: ExecArgs) -> i32 {
    run("exec", exec(args))
}

/// A connection to the kubelet API.
struct Kubelet {
    addr: String,
    authority: String,
    server_name: rustls::pki_types::ServerName<'static>,
    tls: TlsConnector,
}

impl Kubelet {
    fn new(a: &KubeletArgs) -> Result<Self> {
        let uri: http::Uri = a
            .kubelet
            .parse()
            .with_context(|| format!("--kubelet {:?} is not a URL", a.kubelet))?;
        if uri.scheme_str() != Some("https") {
            bail!("--kubelet {:?}: the kubelet API is https", a.kubelet);
        }
        let authority = uri
            .authority()
            .with_context(|| format!("--kubelet {:?} has no host", a.kubelet))?;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let port = authority.port_u16().unwrap_or(10250);
        let ca = a
            .ca_file
            .clone()
            .unwrap_or_else(|| a.root.join("pki").join("kubelet.crt"));
        let config = tls::client_config(&ca).with_context(|| {
            format!(
                "trusting {} (is berth node running with this --root?)",
                ca.display()
            )
        })?;
        let server_name = rustls::pki_types::ServerName::try_from(host.to_owned())
            .with_context(|| format!("--kubelet host {host:?}"))?;
        Ok(Kubelet {
            addr: format!("{}:{port}", authority.host()),
            authority: authority.as_str().to_owned(),
            server_name,
            tls: TlsConnector::from(config),
        })
    }

    async fn connect(&self) -> Result<TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(&self.addr)
            .await
            .with_context(|| format!("connecting to the kubelet at {}", self.addr))?;
        let _ = tcp.set_nodelay(true);
        self.tls
            .connect(self.server_name.clone(), tcp)
            .await
            .with_context(|| format!("TLS with the kubelet at {}", self.addr))
    }

    /// GET `path`; the body of a 200 answer, the answer's text as the error
    /// otherwise.
    async fn get(&self, path: &str) -> Result<hyper::body::Incoming> {
        let io = TokioIo::new(self.connect().await?);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
        tokio::spawn(conn);
        let req = http::Request::get(path)
            .header(http::header::HOST, &self.authority)
            .body(Empty::<Bytes>::new())?;
        let resp = sender.send_request(req).await?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp.into_body().collect().await?.to_bytes();
            bail!("{}: {}", status, String::from_utf8_lossy(&body).trim());
        }
        Ok(resp.into_body())
    }

    async fn pods(&self) -> Result<Vec<Pod>> {
        let body = self.get("/pods").await?.collect().await?.to_bytes();
        let list: PodList = serde_json::from_slice(&body).context("the kubelet's /pods")?;
        Ok(list.items)
    }

    /// The pod's default container: the one its
    /// `kubectl.kubernetes.io/default-container` annotation names, or its first.
    async fn default_container(&self, namespace: &str, pod: &str) -> Result<String> {
        let pods = self.pods().await?;
        let p = pods
            .iter()
            .find(|p| {
                p.metadata.name.as_deref() == Some(pod)
                    && p.metadata.namespace.as_deref().unwrap_or("default") == namespace
            })
            .with_context(|| format!("pod \"{pod}\" not found in namespace \"{namespace}\""))?;
        default_container(p).with_context(|| format!("pod \"{pod}\" has no containers"))
    }
}

#[derive(serde::Deserialize)]
struct PodList {
    #[serde(default)]
    items: Vec<Pod>,
}

pub fn default_container(p: &Pod) -> Option<String> {
    if let Some(c) = p
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("kubectl.kubernetes.io/default-container"))
    {
        return Some(c.clone());
    }
    p.spec.as_ref()?.containers.first().map(|c| c.name.clone())
}

/// kubectl's STATUS column: the phase, or what holds the pod back.
pub fn pod_status(p: &Pod) -> String {
    let Some(st) = &p.status else {
        return "Pending".to_owned();
    };
    let mut reason = st
        .reason
        .clone()
        .or_else(|| st.phase.clone())
        .unwrap_or_else(|| "Pending".to_owned());
    let mut initializing = false;
    let inits = p
        .spec
        .as_ref()
        .and_then(|s| s.init_containers.as_ref())
        .map_or(0, Vec::len);
    for (i, c) in st.init_container_statuses.iter().flatten().enumerate() {
        let state = c.state.as_ref();
        if let Some(t) = state.and_then(|s| s.terminated.as_ref()) {
            if t.exit_code == 0 {
                continue;
            }
            reason = match &t.reason {
                Some(r) if !r.is_empty() => format!("Init:{r}"),
                _ => format!("Init:ExitCode:{}", t.exit_code),
            };
        } else if let Some(r) = state
            .and_then(|s| s.waiting.as_ref())
            .and_then(|w| w.reason.clone())
            .filter(|r| !r.is_empty() && r != "PodInitializing")
        {
            reason = format!("Init:{r}");
        } else {
            reason = format!("Init:{i}/{inits}");
        }
        initializing = true;
        break;
    }
    if !initializing {
        for c in st.container_statuses.iter().flatten().rev() {
            let state = c.state.as_ref();
            if let Some(r) = state
                .and_then(|s| s.waiting.as_ref())
                .and_then(|w| w.reason.clone())
                .filter(|r| !r.is_empty())
            {
                reason = r;
            } else if let Some(t) = state.and_then(|s| s.terminated.as_ref()) {
                reason = match &t.reason {
                    Some(r) if !r.is_empty() => r.clone(),
                    _ if t.signal.is_some_and(|s| s != 0) => {
                        format!("Signal:{}", t.signal.unwrap_or(0))
                    }
                    _ => format!("ExitCode:{}", t.exit_code),
                };
            }
        }
    }
    if p.metadata.deletion_timestamp.is_some() {
        reason = "Terminating".to_owned();
    }
    reason
}

/// kubectl's ages: `45s`, `5m30s`, `3h`, `2d5h`, `300d`, `3y`.
pub fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    let (m, h, day) = (60, 3600, 86400);
    match s {
        _ if s < 2 * m => format!("{s}s"),
        _ if s < 10 * m => match s % m {
            0 => format!("{}m", s / m),
            r => format!("{}m{r}s", s / m),
        },
        _ if s < 3 * h => format!("{}m", s / m),
        _ if s < 8 * h => match (s % h) / m {
            0 => format!("{}h", s / h),
            r => format!("{}h{r}m", s / h),
        },
        _ if s < 2 * day => format!("{}h", s / h),
        _ if s < 8 * day => match (s % day) / h {
            0 => format!("{}d", s / day),
            r => format!("{}d{r}h", s / day),
        },
        _ if s < 365 * 2 * day => format!("{}d", s / day),
        _ => format!("{}y", s / (365 * day)),
    }
}

/// The `berth pods` table: kubectl's columns, NAMESPACE only across all
/// namespaces (`namespace` None).
pub fn table(pods: &[Pod], namespace: Option<&str>, now: jiff::Timestamp) -> String {
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut header = vec!["NAME", "READY", "STATUS", "RESTARTS", "AGE"];
    if namespace.is_none() {
        header.insert(0, "NAMESPACE");
    }
    rows.push(header.into_iter().map(str::to_owned).collect());
    for p in pods {
        let ns = p.metadata.namespace.as_deref().unwrap_or("default");
        if namespace.is_some_and(|n| n != ns) {
            continue;
        }
        let statuses = p
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref());
        let total = p.spec.as_ref().map_or(0, |s| s.containers.len());
        let ready = statuses.map_or(0, |s| s.iter().filter(|c| c.ready).count());
        let restarts: i64 =
            statuses.map_or(0, |s| s.iter().map(|c| i64::from(c.restart_count)).sum());
        let created = p
            .metadata
            .creation_timestamp
            .as_ref()
            .or_else(|| p.status.as_ref().and_then(|s| s.start_time.as_ref()))
            .map(|t| t.0);
        let age = created.map_or("<unknown>".to_owned(), |t| {
            let secs = now.as_second().saturating_sub(t.as_second()).max(0);
            human_duration(Duration::from_secs(u64::try_from(secs).unwrap_or(0)))
        });
        let mut row = vec![
            p.metadata.name.clone().unwrap_or_default(),
            format!("{ready}/{total}"),
            pod_status(p),
            restarts.to_string(),
            age,
        ];
        if namespace.is_none() {
            row.insert(0, ns.to_owned());
        }
        rows.push(row);
    }
    if rows.len() == 1 {
        return match namespace {
            Some(n) => format!("No resources found in {n} namespace.\n"),
            None => "No resources found\n".to_owned(),
        };
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let last = r.len() - 1;
        for (i, cell) in r.iter().enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}   ", w = widths[i]));
            }
        }
        out.push('\n');
    }
    out
}

// The WebSocket channels of v5.channel.k8s.io.
const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;
const CLOSE: u8 = 255;

/// The exit code a remotecommand status (the error channel's JSON) reports:
/// 0 for Success, the `ExitCode` cause of `NonZeroExitCode`, otherwise an
/// error with the status' message.
pub fn exit_code(status: &[u8]) -> Result<i32> {
    if status.is_empty() {
        return Ok(0);
    }
    let v: serde_json::Value =
        serde_json::from_slice(status).context("the exec status is not JSON")?;
    if v["status"] == "Success" {
        return Ok(0);
    }
    if v["reason"] == "NonZeroExitCode"
        && let Some(causes) = v["details"]["causes"].as_array()
        && let Some(code) = causes
            .iter()
            .find(|c| c["reason"] == "ExitCode")
            .and_then(|c| c["message"].as_str())
            .and_then(|m| m.parse().ok())
    {
        return Ok(code);
    }
    bail!("{}", v["message"].as_str().unwrap_or("the command failed"))
}

/// Restores the terminal's settings when dropped.
struct RawMode {
    saved: nix::sys::termios::Termios,
}

impl RawMode {
    fn enter() -> Result<Self> {
        use nix::sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr};
        let stdin = std::io::stdin();
        let saved = tcgetattr(&stdin).context("reading the terminal's settings")?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(&stdin, SetArg::TCSANOW, &raw).context("setting the terminal raw")?;
        Ok(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = nix::sys::termios::tcsetattr(
            std::io::stdin(),
            nix::sys::termios::SetArg::TCSANOW,
            &self.saved,
        );
    }
}

/// The terminal's size as the resize channel's JSON.
fn terminal_size() -> Option<Vec<u8>> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes a winsize into the struct we own.
    let r = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) };
    if r != 0 || ws.ws_col == 0 {
        return None;
    }
    let json = serde_json::json!({"Width": ws.ws_col, "Height": ws.ws_row});
    let mut msg = vec![RESIZE];
    msg.extend(json.to_string().into_bytes());
    Some(msg)
}

async fn exec(args: ExecArgs) -> Result<i32> {
    let k = Kubelet::new(&args.kubelet)?;
    let container = match &args.container {
        Some(c) => c.clone(),
        None => k.default_container(&args.namespace, &args.pod).await?,
    };
    let tty = args.tty && std::io::stdin().is_terminal();
    if args.tty && !tty {
        eprintln!("Unable to use a TTY - input is not a terminal or the right kind of file");
    }
    let mut q = form_urlencoded::Serializer::new(String::new());
    for c in &args.command {
        q.append_pair("command", c);
    }
    q.append_pair("output", "1");
    if !tty {
        q.append_pair("error", "1");
    }
    if args.stdin {
        q.append_pair("input", "1");
    }
    if tty {
        q.append_pair("tty", "1");
    }
    let url = format!(
        "wss://{}/exec/{}/{}/{container}?{}",
        k.authority,
        args.namespace,
        args.pod,
        q.finish()
    );
    let mut req = url.as_str().into_client_request()?;
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        http::HeaderValue::from_static("v5.channel.k8s.io"),
    );
    let stream = k.connect().await?;
    let (ws, resp) = tokio_tungstenite::client_async(req, stream)
        .await
        .map_err(|e| match e {
            tokio_tungstenite::tungstenite::Error::Http(r) => {
                let body = r
                    .body()
                    .as_ref()
                    .map(|b| String::from_utf8_lossy(b).trim().to_owned())
                    .unwrap_or_default();
                anyhow::anyhow!("{}: {body}", r.status())
            }
            e => anyhow::Error::new(e).context("the exec connection"),
        })?;
    let proto = resp
        .headers()
        .get("Sec-WebSocket-Protocol")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if proto != "v5.channel.k8s.io" {
        bail!("the kubelet does not speak v5.channel.k8s.io (it chose {proto:?})");
    }
    let (mut sink, mut source) = ws.split();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
    let writer = tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            if sink.send(Message::Binary(m.into())).await.is_err() {
                break;
            }
        }
        // No close frame when there is nothing more to send: the server
        // would end the session before the command's output is in. The
        // session ends from the server's side, after the exit status.
        std::future::pending::<()>().await;
    });
    let _raw = if tty { Some(RawMode::enter()?) } else { None };
    if tty {
        if let Some(size) = terminal_size() {
            let _ = tx.send(size).await;
        }
        let tx = tx.clone();
        tokio::spawn(async move {
            let Ok(mut winch) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
            else {
                return;
            };
            while winch.recv().await.is_some() {
                if let Some(size) = terminal_size()
                    && tx.send(size).await.is_err()
                {
                    return;
                }
            }
        });
    }
    if args.stdin {
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut stdin = tokio::io::stdin();
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match stdin.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let mut m = Vec::with_capacity(n + 1);
                        m.push(STDIN);
                        m.extend_from_slice(&buf[..n]);
                        if tx.send(m).await.is_err() {
                            return;
                        }
                    }
                }
            }
            let _ = tx.send(vec![CLOSE, STDIN]).await;
        });
    }
    drop(tx);
    let mut status = Vec::new();
    while let Some(msg) = source.next().await {
        let data = match msg {
            Ok(Message::Binary(d)) => d,
            Ok(Message::Close(_)) => break,
            Ok(_) => continue,
            Err(e) => {
                // The session may end without a close frame once the status is in.
                if status.is_empty() {
                    return Err(anyhow::Error::new(e).context("the exec connection"));
                }
                break;
            }
        };
        let Some((&ch, rest)) = data.split_first() else {
            continue;
        };
        match ch {
            STDOUT => {
                let mut o = std::io::stdout().lock();
                o.write_all(rest)?;
                o.flush()?;
            }
            STDERR => {
                let mut e = std::io::stderr().lock();
                e.write_all(rest)?;
                e.flush()?;
            }
            ERROR => status.extend_from_slice(rest),
            _ => {}
        }
    }
    writer.abort();
    drop(_raw);
    exit_code(&status)
}

#[cfg(test)]
mod tests;
