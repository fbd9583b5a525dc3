//! The static test program, run on the host: it is static (and runs in an
//! empty root), and each command and endpoint does what the tests of later
//! issues rely on.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use berth_integration::exec::{self, Spawned};
use berth_integration::http::raw_request;
use berth_integration::proc;
use berth_integration::rootfs::is_static_elf;
use berth_integration::testapp::{Served, binary};
use berth_integration::workdir::{tempdir, unique_id};

fn run(args: &[&str]) -> Result<exec::Output> {
    let dir = tempdir("testapp-run-")?;
    let mut cmd = Command::new(binary()?);
    cmd.args(args);
    exec::run(cmd, &dir.path().join("out"), Duration::from_secs(10))
}

fn get(addr: &str, target: &str) -> Result<(u16, String)> {
    let (h, body) = raw_request(addr, "GET", target, &[], &[])?;
    Ok((h.start[1].parse()?, String::from_utf8(body)?))
}

#[test]
fn is_static_and_runs_in_an_empty_root() -> Result<()> {
    let bin = binary()?;
    ensure!(is_static_elf(bin)?, "{} has an interpreter", bin.display());
    let file = Command::new("file").arg(bin).output()?;
    let file = String::from_utf8_lossy(&file.stdout);
    ensure!(file.contains("static"), "file says: {file}");
    let ldd = Command::new("ldd").arg(bin).output()?;
    let ldd = String::from_utf8_lossy(&ldd.stdout) + String::from_utf8_lossy(&ldd.stderr);
    ensure!(
        ldd.contains("statically linked") || ldd.contains("not a dynamic executable"),
        "ldd says: {ldd}"
    );
    let size = std::fs::metadata(bin)?.len();
    ensure!(size < 4 << 20, "testapp is {size} bytes");

    // Nothing but the binary in the root.
    let dir = tempdir("testapp-chroot-")?;
    std::fs::copy(bin, dir.path().join("testapp"))?;
    let out = Command::new("chroot")
        .arg(dir.path())
        .args(["/testapp", "echo", "alone"])
        .output()?;
    ensure!(out.status.success(), "chroot run: {out:?}");
    assert_eq!(String::from_utf8(out.stdout)?, "alone\n");
    Ok(())
}

#[test]
fn starts_fast() -> Result<()> {
    let bin = binary()?;
    let mut best = Duration::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        let st = Command::new(bin).args(["exit", "0"]).status()?;
        best = best.min(t.elapsed());
        ensure!(st.success());
    }
    ensure!(best < Duration::from_millis(50), "best run took {best:?}");
    Ok(())
}

#[test]
fn commands_print_and_exit_as_told() -> Result<()> {
    run(&["exit", "3"])?.expect_code(3)?;
    run(&["exit", "0"])?.expect_code(0)?;
    let o = run(&[
        "echo", "hello", "world", ";", "stderr", "to", "err", ";", "exit", "7",
    ])?
    .expect_code(7)?;
    assert_eq!(o.stdout, "hello world\n");
    assert_eq!(o.stderr, "to err\n");
    let o = run(&["args", "a b", "c"])?.check()?;
    let lines: Vec<&str> = o.stdout.lines().collect();
    assert_eq!(lines[1..], ["args", "a b", "c"]);
    ensure!(lines[0].ends_with("testapp"), "{lines:?}");

    let o = run(&["lines", "3"])?.check()?;
    assert_eq!(o.stdout, "line 1\nline 2\nline 3\n");
    let o = run(&["lines", "2", "0", "stderr"])?.check()?;
    assert_eq!(o.stderr, "line 1\nline 2\n");

    let mut cmd = Command::new(binary()?);
    cmd.args(["env", ";", "env", "BERTH_X"])
        .env_clear()
        .env("BERTH_X", "y=z")
        .env("A", "1");
    let dir = tempdir("testapp-env-")?;
    let o = exec::run(cmd, &dir.path().join("out"), Duration::from_secs(10))?.check()?;
    assert_eq!(o.stdout, "A=1\nBERTH_X=y=z\ny=z\n");
    run(&["env", "BERTH_SURELY_UNSET"])?.expect_code(1)?;

    let o = run(&["id"])?.check()?;
    ensure!(o.stdout.starts_with("uid=0 gid=0 groups="), "{}", o.stdout);
    let o = run(&["hostname"])?.check()?;
    assert_eq!(
        o.stdout.trim(),
        std::fs::read_to_string("/proc/sys/kernel/hostname")?.trim()
    );

    let d = tempdir("testapp-files-")?;
    let f = d.path().join("f.txt");
    let fs = f.to_string_lossy();
    run(&["write", &fs, "content"])?.check()?;
    assert_eq!(std::fs::read_to_string(&f)?, "content");
    assert_eq!(run(&["cat", &fs])?.check()?.stdout, "content");
    std::fs::write(d.path().join("b"), "")?;
    let ds = d.path().to_string_lossy();
    assert_eq!(run(&["ls", &ds])?.check()?.stdout, "b\nf.txt\n");
    let mut cmd = Command::new(binary()?);
    cmd.arg("pwd").current_dir(d.path());
    let o = exec::run(cmd, &d.path().join("pwd"), Duration::from_secs(10))?.check()?;
    assert_eq!(o.stdout.trim(), ds);

    run(&["cat", "/nonexistent/file"])?.expect_code(1)?;
    let o = run(&["frobnicate"])?.expect_code(1)?;
    ensure!(o.stderr.contains("unknown command"), "{}", o.stderr);
    run(&[])?.expect_code(2)?;
    Ok(())
}

#[test]
fn sleep_sleeps() -> Result<()> {
    let o = run(&["sleep", "0.3"])?.check()?;
    ensure!(o.elapsed >= Duration::from_millis(300), "{:?}", o.elapsed);
    ensure!(o.elapsed < Duration::from_secs(3), "{:?}", o.elapsed);
    run(&["sleep", "-1"])?.expect_code(1)?;
    Ok(())
}

fn start_sleeper(pre: &[&str]) -> Result<Spawned> {
    let mut cmd = Command::new(binary()?);
    cmd.args(pre).args(["sleep", "infinity"]);
    let dir = tempdir("testapp-sig-")?.keep();
    let s = Spawned::start(cmd, &dir.join(unique_id("sleeper")))?;
    // The handler is installed first thing; give it a moment to run.
    std::thread::sleep(Duration::from_millis(100));
    Ok(s)
}

#[test]
fn sigterm_exits_zero_unless_ignored() -> Result<()> {
    let s = start_sleeper(&[])?;
    // SAFETY: signalling the child we started.
    unsafe { libc::kill(s.pid(), libc::SIGTERM) };
    let o = s.wait(Duration::from_secs(5))?;
    assert_eq!(o.code(), Some(0), "{o}");
    ensure!(o.stderr.contains("terminated by signal"), "{o}");

    let s = start_sleeper(&["--ignore-term"])?;
    // SAFETY: as above.
    unsafe { libc::kill(s.pid(), libc::SIGTERM) };
    unsafe { libc::kill(s.pid(), libc::SIGINT) };
    std::thread::sleep(Duration::from_millis(200));
    ensure!(proc::alive(s.pid()), "--ignore-term died of SIGTERM");
    // SAFETY: as above.
    unsafe { libc::kill(s.pid(), libc::SIGKILL) };
    let o = s.wait(Duration::from_secs(5))?;
    assert_eq!(o.signal(), Some(libc::SIGKILL));
    Ok(())
}

#[test]
fn http_endpoints() -> Result<()> {
    let s = Served::start(&[], &["--http", "0"])?;
    let a = s.http.context("no http address")?.to_string();
    assert_eq!(get(&a, "/healthz")?, (200, "ok".into()));
    assert_eq!(get(&a, "/echo?hello%20there")?, (200, "hello there".into()));
    let (h, body) = raw_request(&a, "POST", "/echo", &[], b"posted body")?;
    assert_eq!(h.start[1], "200");
    assert_eq!(body, b"posted body");
    assert_eq!(get(&a, "/env?PATH")?.1, std::env::var("PATH")?);
    assert_eq!(get(&a, "/env?BERTH_SURELY_UNSET")?.0, 404);
    ensure!(get(&a, "/env")?.1.contains("PATH="));
    assert_eq!(
        get(&a, "/hostname")?.1,
        std::fs::read_to_string("/proc/sys/kernel/hostname")?.trim()
    );
    let (code, remote) = get(&a, "/remote")?;
    assert_eq!(code, 200);
    ensure!(remote.starts_with("127.0.0.1:"), "{remote}");
    let (h, body) = raw_request(&a, "GET", "/headers", &[("X-Berth", "yes")], &[])?;
    assert_eq!(h.start[1], "200");
    ensure!(String::from_utf8(body)?.contains("X-Berth: yes"));
    assert_eq!(get(&a, "/status/503")?, (503, "503".into()));
    assert_eq!(get(&a, "/nope")?.0, 404);
    let d = tempdir("testapp-http-")?;
    std::fs::write(d.path().join("f"), "file body")?;
    assert_eq!(
        get(&a, &format!("/file{}", d.path().join("f").display()))?,
        (200, "file body".into())
    );
    let t = Instant::now();
    assert_eq!(get(&a, "/sleep/200")?.0, 200);
    ensure!(t.elapsed() >= Duration::from_millis(200));

    // Health can be turned off and on (liveness probe tests).
    assert_eq!(get(&a, "/healthz/fail")?.0, 200);
    assert_eq!(get(&a, "/healthz")?.0, 500);
    assert_eq!(get(&a, "/healthz/ok")?.0, 200);
    assert_eq!(get(&a, "/healthz")?.0, 200);

    // Keep-alive: two requests on one connection; a chunked body.
    let mut c = TcpStream::connect(&a)?;
    c.set_read_timeout(Some(Duration::from_secs(5)))?;
    c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")?;
    c.write_all(
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
    )?;
    let mut all = String::new();
    c.read_to_string(&mut all)?;
    ensure!(all.matches("HTTP/1.1 200 OK").count() == 2, "{all}");
    ensure!(all.ends_with("\r\n\r\nabcde"), "{all}");

    // /exit/N answers, then exits with N.
    assert_eq!(get(&a, "/exit/5")?, (200, "exiting 5".into()));
    let o = s.process.wait(Duration::from_secs(5))?;
    assert_eq!(o.code(), Some(5), "{o}");
    Ok(())
}

#[test]
fn tcp_and_udp_echo() -> Result<()> {
    let s = Served::start(&[], &["--http", "0", "--tcp", "0", "--udp", "0"])?;
    ensure!(s.http.is_some());
    let tcp = s.tcp.context("no tcp address")?;
    let mut c = TcpStream::connect(tcp)?;
    c.set_read_timeout(Some(Duration::from_secs(5)))?;
    c.write_all(b"ping over tcp\n")?;
    let mut line = String::new();
    BufReader::new(c.try_clone()?).read_line(&mut line)?;
    assert_eq!(line, "ping over tcp\n");
    // Many clients at once.
    let handles: Vec<_> = (0..8)
        .map(|i| {
            std::thread::spawn(move || -> Result<()> {
                let mut c = TcpStream::connect(tcp)?;
                c.set_read_timeout(Some(Duration::from_secs(5)))?;
                let msg = format!("client {i}\n");
                c.write_all(msg.as_bytes())?;
                let mut got = String::new();
                BufReader::new(c).read_line(&mut got)?;
                ensure!(got == msg, "{got:?}");
                Ok(())
            })
        })
        .collect();
    for h in handles {
        h.join().map_err(|_| anyhow::anyhow!("client panicked"))??;
    }

    let udp = s.udp.context("no udp address")?;
    let sock = UdpSocket::bind("127.0.0.1:0")?;
    sock.set_read_timeout(Some(Duration::from_secs(5)))?;
    sock.send_to(b"ping over udp", udp)?;
    let mut buf = [0u8; 64];
    let (n, from) = sock.recv_from(&mut buf)?;
    assert_eq!(&buf[..n], b"ping over udp");
    assert_eq!(from, udp);
    Ok(())
}

#[test]
fn serve_refuses_bad_arguments() -> Result<()> {
    let o = run(&["serve"])?.expect_code(1)?;
    ensure!(o.stderr.contains("at least one"), "{}", o.stderr);
    let o = run(&["serve", "--http", "notaport"])?.expect_code(1)?;
    ensure!(o.stderr.contains("notaport"), "{}", o.stderr);
    // A port in use is reported, not ignored.
    let l = std::net::TcpListener::bind("0.0.0.0:0")?;
    let port = l.local_addr()?.port().to_string();
    let o = run(&["serve", "--http", &port])?.expect_code(1)?;
    ensure!(o.stderr.contains(&port), "{}", o.stderr);
    Ok(())
}
