//! `create --cri-log PATH`: the monitor writes the container's stdout and
//! stderr to PATH in the CRI log format
//! `2024-01-02T03:04:05.000000000Z stdout F text`. berth-only.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use berth_integration::{Bundle, Runtime, Spec, skip_unless_berth, unique_id, wait_until};

#[derive(Debug)]
struct Entry {
    time: f64,
    stream: String,
    tag: String,
    text: String,
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

/// Parses an RFC 3339 UTC timestamp with 0 to 9 fractional digits.
fn parse_time(s: &str) -> Result<f64> {
    let b = s.as_bytes();
    ensure!(
        s.len() >= 20 && s.ends_with('Z'),
        "not a UTC RFC 3339 time: {s:?}"
    );
    ensure!(
        b[4] == b'-' && b[7] == b'-' && b[10] == b'T' && b[13] == b':' && b[16] == b':',
        "{s:?}"
    );
    let n = |r: std::ops::Range<usize>| -> Result<i64> { Ok(s[r].parse()?) };
    let days = days_from_civil(n(0..4)?, n(5..7)?, n(8..10)?);
    let mut t = (days * 86400 + n(11..13)? * 3600 + n(14..16)? * 60 + n(17..19)?) as f64;
    let frac = &s[19..s.len() - 1];
    if !frac.is_empty() {
        let digits = frac.strip_prefix('.').with_context(|| format!("{s:?}"))?;
        ensure!(
            (1..=9).contains(&digits.len()) && digits.bytes().all(|c| c.is_ascii_digit()),
            "{s:?}"
        );
        t += format!("0.{digits}").parse::<f64>()?;
    }
    Ok(t)
}

fn parse_log(text: &str) -> Result<Vec<Entry>> {
    text.lines()
        .map(|l| {
            let mut it = l.splitn(4, ' ');
            let (Some(ts), Some(stream), Some(tag)) = (it.next(), it.next(), it.next()) else {
                bail!("malformed CRI log line {l:?}");
            };
            ensure!(stream == "stdout" || stream == "stderr", "stream in {l:?}");
            ensure!(tag == "F" || tag == "P", "tag in {l:?}");
            Ok(Entry {
                time: parse_time(ts)?,
                stream: stream.into(),
                tag: tag.into(),
                text: it.next().unwrap_or("").into(),
            })
        })
        .collect()
}

/// Joins P entries with the following F entry, per stream.
fn lines_of(entries: &[Entry], stream: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut open = false;
    for e in entries.iter().filter(|e| e.stream == stream) {
        cur.push_str(&e.text);
        open = true;
        if e.tag == "F" {
            out.push(std::mem::take(&mut cur));
            open = false;
        }
    }
    if open {
        out.push(cur);
    }
    out
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[test]
fn cri_log_records_both_streams_in_cri_format() -> Result<()> {
    if skip_unless_berth("--cri-log")? {
        return Ok(());
    }
    let rt = Runtime::with_globals(&["--monitor", "always"])?;
    let id = unique_id("crilog");
    let long = "a".repeat(20000);
    let script = format!("echo out1; echo err1 >&2; echo out2; echo {long}; printf partial");
    let b = Bundle::new(&Spec::sh(&id, &script))?;
    let log = rt.scratch().join("ctr.log");
    let t0 = now() - 1.0;
    let created = rt.create_with(&id, &b, &["--cri-log", log.to_str().unwrap()])?;
    rt.start(&id)?;
    rt.wait_status(&id, "stopped", Duration::from_secs(20))?;
    let text = wait_until(
        Duration::from_secs(10),
        "the partial last line in the log",
        || {
            let t = std::fs::read_to_string(&log).unwrap_or_default();
            Ok(t.contains("partial").then_some(t))
        },
    )?;
    let t1 = now() + 1.0;
    let entries = parse_log(&text)?;
    for e in &entries {
        ensure!(
            e.time >= t0 && e.time <= t1,
            "timestamp {} outside the run: {e:?}",
            e.time
        );
    }
    for s in ["stdout", "stderr"] {
        let times: Vec<f64> = entries
            .iter()
            .filter(|e| e.stream == s)
            .map(|e| e.time)
            .collect();
        ensure!(
            times.windows(2).all(|w| w[0] <= w[1]),
            "{s} timestamps go backwards"
        );
    }
    assert_eq!(
        lines_of(&entries, "stdout"),
        vec!["out1", "out2", long.as_str(), "partial"]
    );
    assert_eq!(lines_of(&entries, "stderr"), vec!["err1"]);
    assert!(
        entries
            .iter()
            .any(|e| e.stream == "stdout" && e.tag == "F" && e.text == "out1"),
        "{text}"
    );
    // Timestamps have exactly nine fractional digits (fixed width).
    for l in text.lines() {
        ensure!(
            l.as_bytes().get(29) == Some(&b'Z'),
            "timestamp width in {l:?}"
        );
    }
    // Records stay within containerd's 16 KiB line limit (the long line is
    // split into P pieces), and the unterminated last line is a P record.
    ensure!(
        entries.iter().all(|e| e.text.len() <= 16 * 1024),
        "a record over 16 KiB"
    );
    let last = entries
        .iter()
        .rfind(|e| e.stream == "stdout")
        .context("no stdout")?;
    assert_eq!((last.tag.as_str(), last.text.as_str()), ("P", "partial"));
    // The output went to the log, not to the runtime's own stdout.
    assert!(
        !created.stdout_now().contains("out1"),
        "{}",
        created.stdout_now()
    );
    rt.delete(&id)?;
    Ok(())
}

#[test]
fn cri_log_time_parser_accepts_fixed_and_trimmed_fractions() -> Result<()> {
    // Self-test of the parser the berth test relies on.
    assert_eq!(parse_time("1970-01-01T00:00:00Z")?, 0.0);
    assert_eq!(
        parse_time("2024-01-02T03:04:05.000000000Z")?,
        1_704_164_645.0
    );
    assert_eq!(parse_time("2024-01-02T03:04:05.5Z")?, 1_704_164_645.5);
    assert!(parse_time("2024-01-02 03:04:05Z").is_err());
    let e = parse_log("2024-01-02T03:04:05.000000000Z stdout F text with spaces\n")?;
    assert_eq!(
        (e[0].stream.as_str(), e[0].tag.as_str(), e[0].text.as_str()),
        ("stdout", "F", "text with spaces")
    );
    Ok(())
}

#[test]
fn cri_log_with_a_terminal_needs_no_console_socket() -> Result<()> {
    use berth_runtime::attach::{self, Winsize};
    use berth_runtime::crilog::Stream;
    use std::io::Write;
    if skip_unless_berth("--cri-log")? {
        return Ok(());
    }
    let rt = Runtime::with_globals(&["--monitor", "always"])?;
    let id = unique_id("crilogtty");
    let spec = Spec::sh(
        &id,
        "stty size; read line; echo \"got $line\"; [ -t 2 ] && echo stderr-too >&2",
    )
    .terminal(true);
    let b = Bundle::new(&spec)?;
    let log = rt.scratch().join("tty.log");
    let log_arg = log.to_str().context("log path")?;

    // Both ways of holding the terminal at once is refused.
    let sock = rt.scratch().join("unused.sock");
    let out = rt.cmd(&[
        "create",
        "--bundle",
        b.path_str(),
        "--cri-log",
        log_arg,
        "--console-socket",
        sock.to_str().context("socket path")?,
        &id,
    ])?;
    ensure!(!out.success(), "{out}");
    ensure!(out.stderr.contains("console-socket"), "{out}");

    rt.create_with(&id, &b, &["--cri-log", log_arg, "--cri-stdin"])?;
    let dir = rt.root().join(&id);
    attach::connect_winsize(&dir)?.write_all(
        &Winsize {
            rows: 40,
            cols: 100,
        }
        .to_message(),
    )?;
    let mut client = attach::connect(&dir)?;
    rt.start(&id)?;
    client.write_all(b"hello\n")?;
    let mut out = Vec::new();
    while let Some((stream, data)) = attach::read_frame(&mut client)? {
        ensure!(stream == Stream::Stdout, "a terminal frame as {stream:?}");
        out.extend_from_slice(&data);
    }
    let out = String::from_utf8_lossy(&out);
    ensure!(out.contains("40 100\r\n"), "{out:?}");
    ensure!(out.contains("got hello\r\n"), "{out:?}");
    ensure!(out.contains("stderr-too\r\n"), "{out:?}");
    rt.wait_status(&id, "stopped", Duration::from_secs(20))?;

    let text = wait_until(Duration::from_secs(10), "the output in the log", || {
        let t = std::fs::read_to_string(&log).unwrap_or_default();
        Ok(t.contains("stderr-too").then_some(t))
    })?;
    let entries = parse_log(&text)?;
    ensure!(entries.iter().all(|e| e.stream == "stdout"), "{text}");
    let lines: Vec<String> = lines_of(&entries, "stdout")
        .into_iter()
        .map(|l| l.trim_end_matches('\r').to_string())
        .collect();
    ensure!(lines.contains(&"got hello".to_string()), "{lines:?}");
    ensure!(lines.contains(&"40 100".to_string()), "{lines:?}");
    rt.delete(&id)?;
    Ok(())
}
