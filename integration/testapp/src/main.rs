//! `testapp`: the program inside the test images.
//!
//! One small static executable (std only, no runtime to start) that does
//! what container, CRI, kubelet and proxy tests need from a workload, picked
//! by its arguments:
//!
//! ```text
//! testapp [--ignore-term] COMMAND [ARGS...] [";" COMMAND [ARGS...]]...
//!
//!   serve [--bind ADDR] [--http PORT] [--tcp PORT] [--udp PORT]
//!                         servers, until a signal (port 0 picks a free one)
//!   exit CODE             exit with CODE
//!   sleep SECONDS         sleep (fractions allowed; "infinity" = forever)
//!   echo WORDS...         print the words to stdout
//!   stderr WORDS...       print the words to stderr
//!   lines N [MS] [stderr] print "line 1".."line N", MS milliseconds apart
//!   args                  print each argument (argv[0] included), one a line
//!   env [NAME]            print the environment (sorted) or one variable
//!   id                    print "uid=U gid=G groups=G1,G2" (from /proc)
//!   hostname | pwd        print the hostname, the working directory
//!   cat PATH | ls DIR     print a file, the sorted names in a directory
//!   write PATH TEXT       write TEXT to PATH
//! ```
//!
//! Commands separated by a lone `;` argument run in order, e.g.
//! `testapp echo hi ";" exit 3`. The process exits with 0 on SIGTERM or
//! SIGINT (a handler is installed, so it also stops as PID 1 of a PID
//! namespace, where signals without a handler are dropped); with
//! `--ignore-term` it ignores both, for stop-timeout tests.
//!
//! `serve` prints `testapp: listening PROTO ADDR` (the actual address) for
//! each server once it is bound. HTTP endpoints:
//! `/healthz` (200 "ok", or 500 after `/healthz/fail` until `/healthz/ok`),
//! `/echo` (the request body, or the decoded query string when there is no
//! body), `/hostname`, `/env` (all, or `/env?NAME`), `/remote` (the client's
//! address), `/headers`, `/status/CODE`, `/sleep/MS`, `/file/PATH`,
//! `/exit/CODE` (answers, then exits).

use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

const USAGE: &str = "usage: testapp [--ignore-term] COMMAND [ARGS...] [\";\" COMMAND...]
commands: serve [--bind ADDR] [--http PORT] [--tcp PORT] [--udp PORT] | exit CODE |
  sleep SECONDS | echo WORDS... | stderr WORDS... | lines N [MS] [stderr] | args |
  env [NAME] | id | hostname | pwd | cat PATH | ls DIR | write PATH TEXT";

/// Largest request head or body the HTTP server accepts.
const MAX_HEAD: usize = 64 * 1024;
const MAX_BODY: usize = 16 * 1024 * 1024;

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let ignore = args.first().is_some_and(|a| a == "--ignore-term");
    if ignore {
        args.remove(0);
    }
    signals::install(ignore);
    if args.is_empty() {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    }
    for cmd in args.split(|a| a == ";") {
        match run(cmd) {
            Ok(None) => {}
            Ok(Some(code)) => return ExitCode::from(code),
            Err(e) => {
                eprintln!("testapp: {}: {e}", cmd.join(" "));
                return ExitCode::from(1);
            }
        }
    }
    ExitCode::SUCCESS
}

/// Runs one command; Some(code) ends the program with that code.
fn run(cmd: &[String]) -> Result<Option<u8>, String> {
    let Some((name, rest)) = cmd.split_first() else {
        return Err(format!("empty command\n{USAGE}"));
    };
    match name.as_str() {
        "serve" => serve(rest).map(|()| None),
        "exit" => {
            let code = rest
                .first()
                .ok_or("exit needs a code")?
                .parse::<u8>()
                .map_err(|e| format!("exit code: {e}"))?;
            Ok(Some(code))
        }
        "sleep" => {
            let arg = rest.first().ok_or("sleep needs a duration in seconds")?;
            if arg == "infinity" {
                loop {
                    std::thread::park();
                }
            }
            let secs: f64 = arg.parse().map_err(|e| format!("sleep {arg}: {e}"))?;
            let d = Duration::try_from_secs_f64(secs).map_err(|e| format!("sleep {arg}: {e}"))?;
            std::thread::sleep(d);
            Ok(None)
        }
        "echo" => out(&format!("{}\n", rest.join(" "))),
        "stderr" => {
            let _ = io::stderr().write_all(format!("{}\n", rest.join(" ")).as_bytes());
            Ok(None)
        }
        "lines" => lines(rest).map(|()| None),
        "args" => {
            let all: Vec<String> = std::env::args().collect();
            out(&all.iter().map(|a| format!("{a}\n")).collect::<String>())
        }
        "env" => match rest.first() {
            Some(var) => match std::env::var_os(var) {
                Some(v) => out(&format!("{}\n", v.to_string_lossy())),
                None => Err(format!("{var} is not set")),
            },
            None => out(&env_text()),
        },
        "id" => out(&format!("{}\n", id()?)),
        "hostname" => out(&format!("{}\n", hostname())),
        "pwd" => {
            let d = std::env::current_dir().map_err(|e| format!("getcwd: {e}"))?;
            out(&format!("{}\n", d.display()))
        }
        "cat" => {
            let p = rest.first().ok_or("cat needs a path")?;
            let data = std::fs::read(p).map_err(|e| format!("{p}: {e}"))?;
            let _ = io::stdout().write_all(&data);
            let _ = io::stdout().flush();
            Ok(None)
        }
        "ls" => {
            let p = rest.first().map(String::as_str).unwrap_or(".");
            let mut names: Vec<String> = std::fs::read_dir(p)
                .map_err(|e| format!("{p}: {e}"))?
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            out(&names.iter().map(|n| format!("{n}\n")).collect::<String>())
        }
        "write" => {
            let (Some(p), Some(text)) = (rest.first(), rest.get(1)) else {
                return Err("write needs a path and a text".into());
            };
            std::fs::write(p, text).map_err(|e| format!("{p}: {e}"))?;
            Ok(None)
        }
        other => Err(format!("unknown command {other:?}\n{USAGE}")),
    }
}

/// Writes to stdout; a closed stdout is not an error worth dying for.
fn out(s: &str) -> Result<Option<u8>, String> {
    let mut o = io::stdout().lock();
    let _ = o.write_all(s.as_bytes());
    let _ = o.flush();
    Ok(None)
}

fn lines(rest: &[String]) -> Result<(), String> {
    let n: u64 = rest
        .first()
        .ok_or("lines needs a count")?
        .parse()
        .map_err(|e| format!("lines count: {e}"))?;
    let ms: u64 = match rest.get(1) {
        Some(m) => m.parse().map_err(|e| format!("lines interval: {e}"))?,
        None => 0,
    };
    let to_stderr = rest.get(2).is_some_and(|s| s == "stderr");
    for i in 1..=n {
        let line = format!("line {i}\n");
        if to_stderr {
            let _ = io::stderr().write_all(line.as_bytes());
        } else {
            let mut o = io::stdout().lock();
            let _ = o.write_all(line.as_bytes());
            let _ = o.flush();
        }
        if ms > 0 && i < n {
            std::thread::sleep(Duration::from_millis(ms));
        }
    }
    Ok(())
}

fn env_text() -> String {
    let vars: BTreeMap<String, String> = std::env::vars_os()
        .map(|(k, v)| {
            (
                k.to_string_lossy().into_owned(),
                v.to_string_lossy().into_owned(),
            )
        })
        .collect();
    vars.iter().map(|(k, v)| format!("{k}={v}\n")).collect()
}

/// The effective ids, from /proc/self/status (std has no getuid).
fn id() -> Result<String, String> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| format!("/proc/self/status: {e}"))?;
    let field = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|v| v.split_whitespace().map(String::from).collect::<Vec<_>>())
            .unwrap_or_default()
    };
    let (uid, gid, groups) = (field("Uid:"), field("Gid:"), field("Groups:"));
    // Real, effective, saved, filesystem: the effective one is the second.
    let (Some(u), Some(g)) = (uid.get(1), gid.get(1)) else {
        return Err("no Uid/Gid in /proc/self/status".into());
    };
    Ok(format!("uid={u} gid={g} groups={}", groups.join(",")))
}

/// The hostname of the UTS namespace.
fn hostname() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim().to_string())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default()
}

fn serve(rest: &[String]) -> Result<(), String> {
    let mut bind = "0.0.0.0".to_string();
    let (mut http, mut tcp, mut udp) = (None, None, None);
    let mut it = rest.iter();
    while let Some(flag) = it.next() {
        let mut val = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--bind" => bind = val()?.clone(),
            "--http" => http = Some(port(val()?)?),
            "--tcp" => tcp = Some(port(val()?)?),
            "--udp" => udp = Some(port(val()?)?),
            other => return Err(format!("serve: unknown option {other}")),
        }
    }
    if http.is_none() && tcp.is_none() && udp.is_none() {
        return Err("serve needs at least one of --http, --tcp, --udp".into());
    }
    let addr = |port: u16| -> Result<SocketAddr, String> {
        let host = if bind.contains(':') {
            format!("[{bind}]")
        } else {
            bind.clone()
        };
        format!("{host}:{port}")
            .parse()
            .map_err(|e| format!("bind address {bind}: {e}"))
    };
    if let Some(p) = http {
        let l = TcpListener::bind(addr(p)?).map_err(|e| format!("http on port {p}: {e}"))?;
        announce("http", l.local_addr());
        std::thread::spawn(move || accept_loop(l, http_conn));
    }
    if let Some(p) = tcp {
        let l = TcpListener::bind(addr(p)?).map_err(|e| format!("tcp on port {p}: {e}"))?;
        announce("tcp", l.local_addr());
        std::thread::spawn(move || accept_loop(l, tcp_echo));
    }
    if let Some(p) = udp {
        let s = UdpSocket::bind(addr(p)?).map_err(|e| format!("udp on port {p}: {e}"))?;
        announce("udp", s.local_addr());
        std::thread::spawn(move || udp_echo(s));
    }
    loop {
        std::thread::park();
    }
}

fn port(s: &str) -> Result<u16, String> {
    s.parse().map_err(|e| format!("port {s}: {e}"))
}

fn announce(proto: &str, addr: io::Result<SocketAddr>) {
    let addr = addr
        .map(|a| a.to_string())
        .unwrap_or_else(|e| e.to_string());
    let _ = out(&format!("testapp: listening {proto} {addr}\n"));
}

fn accept_loop(l: TcpListener, handler: fn(TcpStream)) {
    for conn in l.incoming() {
        match conn {
            Ok(c) => {
                std::thread::spawn(move || handler(c));
            }
            // EMFILE and the like: back off rather than spin.
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

fn tcp_echo(c: TcpStream) {
    let Ok(mut r) = c.try_clone() else { return };
    let mut w = c;
    let _ = io::copy(&mut r, &mut w);
    let _ = w.shutdown(std::net::Shutdown::Both);
}

fn udp_echo(s: UdpSocket) {
    let mut buf = vec![0u8; 65536];
    loop {
        if let Ok((n, from)) = s.recv_from(&mut buf) {
            let _ = s.send_to(&buf[..n], from);
        }
    }
}

static UNHEALTHY: AtomicBool = AtomicBool::new(false);

struct Request {
    method: String,
    path: String,
    query: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    close: bool,
}

struct Response {
    status: u16,
    body: Vec<u8>,
    /// Exit code to exit with once the response is sent.
    exit: Option<u8>,
}

fn reply(status: u16, body: impl Into<Vec<u8>>) -> Response {
    Response {
        status,
        body: body.into(),
        exit: None,
    }
}

fn http_conn(c: TcpStream) {
    let peer = c
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "unknown".into());
    let Ok(w) = c.try_clone() else { return };
    let mut w = w;
    let mut r = BufReader::new(c);
    loop {
        let req = match read_request(&mut r, &mut w) {
            Ok(Some(req)) => req,
            Ok(None) => return,
            Err(e) => {
                let _ = write_response(&mut w, "GET", &reply(400, format!("{e}\n")), true);
                return;
            }
        };
        let resp = route(&req, &peer);
        if write_response(&mut w, &req.method, &resp, req.close || resp.exit.is_some()).is_err() {
            return;
        }
        if let Some(code) = resp.exit {
            let _ = w.shutdown(std::net::Shutdown::Both);
            std::process::exit(i32::from(code));
        }
        if req.close {
            let _ = w.shutdown(std::net::Shutdown::Both);
            return;
        }
    }
}

fn route(req: &Request, peer: &str) -> Response {
    let path = req.path.as_str();
    match path {
        "/healthz" if UNHEALTHY.load(Ordering::Relaxed) => reply(500, "unhealthy"),
        "/healthz" => reply(200, "ok"),
        "/healthz/fail" => {
            UNHEALTHY.store(true, Ordering::Relaxed);
            reply(200, "healthz now fails")
        }
        "/healthz/ok" => {
            UNHEALTHY.store(false, Ordering::Relaxed);
            reply(200, "healthz now ok")
        }
        "/echo" if req.body.is_empty() => reply(200, percent_decode(&req.query)),
        "/echo" => reply(200, req.body.clone()),
        "/hostname" => reply(200, hostname()),
        "/env" if req.query.is_empty() => reply(200, env_text()),
        "/env" => {
            match std::env::var_os(String::from_utf8_lossy(&percent_decode(&req.query)).as_ref()) {
                Some(v) => reply(200, v.to_string_lossy().into_owned()),
                None => reply(404, "not set"),
            }
        }
        "/remote" => reply(200, peer.to_string()),
        "/headers" => reply(
            200,
            req.headers
                .iter()
                .map(|(k, v)| format!("{k}: {v}\n"))
                .collect::<String>(),
        ),
        "/" => reply(
            200,
            "testapp: /healthz /echo /hostname /env /remote /headers /status/CODE /sleep/MS /file/PATH /exit/CODE\n",
        ),
        _ => {
            if let Some(code) = path.strip_prefix("/status/") {
                match code.parse::<u16>() {
                    Ok(c) if (100..1000).contains(&c) => reply(c, code.to_string()),
                    _ => reply(400, "bad status code"),
                }
            } else if let Some(ms) = path.strip_prefix("/sleep/") {
                match ms.parse::<u64>() {
                    Ok(ms) => {
                        std::thread::sleep(Duration::from_millis(ms));
                        reply(200, format!("slept {ms} ms"))
                    }
                    Err(_) => reply(400, "bad duration"),
                }
            } else if let Some(p) = path.strip_prefix("/file") {
                match std::fs::read(p) {
                    Ok(data) => reply(200, data),
                    Err(e) => reply(404, format!("{p}: {e}")),
                }
            } else if let Some(code) = path.strip_prefix("/exit/") {
                match code.parse::<u8>() {
                    Ok(c) => Response {
                        status: 200,
                        body: format!("exiting {c}").into(),
                        exit: Some(c),
                    },
                    Err(_) => reply(400, "bad exit code"),
                }
            } else {
                reply(404, "not found")
            }
        }
    }
}

/// `%XX` escapes decoded; `+` stays (it is a space only in forms).
fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Some(v) = std::str::from_utf8(&b[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

/// Reads one request; None on a clean end of the connection. A client
/// that sent `Expect: 100-continue` is told to go on through `w`.
fn read_request(r: &mut impl BufRead, w: &mut impl Write) -> Result<Option<Request>, String> {
    let mut head = Vec::new();
    loop {
        let mut line = Vec::new();
        let n = r
            .take((MAX_HEAD + 1 - head.len()) as u64)
            .read_until(b'\n', &mut line)
            .map_err(|e| e.to_string())?;
        if n == 0 {
            if head.is_empty() {
                return Ok(None);
            }
            return Err("connection closed inside the request head".into());
        }
        head.extend_from_slice(&line);
        if head.len() > MAX_HEAD {
            return Err("request head too large".into());
        }
        if line == b"\r\n" || line == b"\n" {
            if head.len() == line.len() {
                // Blank lines before a request line are allowed (RFC 9112 2.2).
                head.clear();
                continue;
            }
            break;
        }
    }
    let text = String::from_utf8_lossy(&head);
    let mut lines = text.lines();
    let start = lines.next().unwrap_or_default();
    let mut parts = start.split_whitespace();
    let (Some(method), Some(target), version) = (parts.next(), parts.next(), parts.next()) else {
        return Err(format!("bad request line {start:?}"));
    };
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    let conn = header("connection").map(str::to_ascii_lowercase);
    let close = match version {
        Some("HTTP/1.0") => conn.as_deref() != Some("keep-alive"),
        _ => conn.as_deref() == Some("close"),
    };
    if header("expect").is_some_and(|e| e.eq_ignore_ascii_case("100-continue")) {
        w.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .map_err(|e| e.to_string())?;
    }
    let body = if header("transfer-encoding").is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
        read_chunked(r)?
    } else {
        let len: usize = match header("content-length") {
            Some(v) => v.parse().map_err(|_| format!("bad Content-Length {v:?}"))?,
            None => 0,
        };
        if len > MAX_BODY {
            return Err(format!("body of {len} bytes is too large"));
        }
        let mut body = vec![0u8; len];
        r.read_exact(&mut body).map_err(|e| e.to_string())?;
        body
    };
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    Ok(Some(Request {
        method: method.to_string(),
        path: path.to_string(),
        query: query.to_string(),
        headers,
        body,
        close,
    }))
}

fn read_chunked(r: &mut impl BufRead) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        let mut line = String::new();
        r.read_line(&mut line).map_err(|e| e.to_string())?;
        let size = line.trim().split(';').next().unwrap_or_default();
        let size =
            usize::from_str_radix(size, 16).map_err(|_| format!("bad chunk size {line:?}"))?;
        if size == 0 {
            // Trailers, up to the blank line.
            loop {
                line.clear();
                let n = r.read_line(&mut line).map_err(|e| e.to_string())?;
                if n == 0 || line.trim().is_empty() {
                    return Ok(body);
                }
            }
        }
        if body.len() + size > MAX_BODY {
            return Err("chunked body too large".into());
        }
        let start = body.len();
        body.resize(start + size, 0);
        r.read_exact(&mut body[start..])
            .map_err(|e| e.to_string())?;
        line.clear();
        r.read_line(&mut line).map_err(|e| e.to_string())?;
    }
}

fn write_response(
    w: &mut impl Write,
    method: &str,
    resp: &Response,
    close: bool,
) -> io::Result<()> {
    let reason = match resp.status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        500 => "Internal Server Error",
        _ => "Status",
    };
    let mut msg = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n",
        resp.status,
        resp.body.len()
    )
    .into_bytes();
    if close {
        msg.extend_from_slice(b"Connection: close\r\n");
    }
    msg.extend_from_slice(b"\r\n");
    if method != "HEAD" {
        msg.extend_from_slice(&resp.body);
    }
    w.write_all(&msg)?;
    w.flush()
}

/// SIGTERM and SIGINT handling through libc's `signal` (std has none).
mod signals {
    use std::ffi::c_int;

    const SIGINT: c_int = 2;
    const SIGTERM: c_int = 15;
    const SIG_IGN: usize = 1;

    unsafe extern "C" {
        fn signal(signum: c_int, handler: usize) -> usize;
        fn write(fd: c_int, buf: *const u8, count: usize) -> isize;
        fn _exit(status: c_int) -> !;
    }

    extern "C" fn on_term(_sig: c_int) {
        const MSG: &[u8] = b"testapp: terminated by signal\n";
        // SAFETY: write(2) and _exit(2) are async-signal-safe; MSG is static.
        unsafe {
            write(2, MSG.as_ptr(), MSG.len());
            _exit(0);
        }
    }

    pub fn install(ignore: bool) {
        let handler = if ignore {
            SIG_IGN
        } else {
            on_term as extern "C" fn(c_int) as usize
        };
        for sig in [SIGINT, SIGTERM] {
            // SAFETY: the handler only calls async-signal-safe functions.
            unsafe { signal(sig, handler) };
        }
    }
}
