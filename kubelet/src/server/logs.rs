//! `/containerLogs`: a container's CRI log file as the user wrote it.
//!
//! The runtime writes each line of output as `TIMESTAMP STREAM TAG MSG`
//! (RFC 3339 nanosecond time, `stdout`/`stderr`, `F` for a full line or `P`
//! for a part of a longer one, then the bytes without their newline). Here
//! the parts are joined again, filtered by time (`sinceSeconds`,
//! `sinceTime`), cut to the last lines (`tailLines`) and to a number of
//! bytes (`limitBytes`), prefixed with their time on request
//! (`timestamps`), and, with `follow`, the file is tailed — across a
//! rotation — until the container exits or the client leaves.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use jiff::Timestamp;

/// Bad log queries and unreadable logs.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("{param}={value:?}: {reason}")]
    Query {
        param: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("sinceSeconds and sinceTime are exclusive; give at most one")]
    SinceBoth,
    #[error("log line {line:?}: {reason}")]
    Line { line: String, reason: &'static str },
    #[error("reading the log file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What the client asked for, from the query string.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogOptions {
    pub container: Option<String>,
    pub follow: bool,
    pub previous: bool,
    pub timestamps: bool,
    pub tail_lines: Option<u64>,
    pub limit_bytes: Option<u64>,
    /// Only lines at or after this time.
    pub since: Option<Timestamp>,
}

fn flag(param: &'static str, v: &str) -> Result<bool, LogError> {
    match v {
        "" | "1" | "true" | "True" | "TRUE" | "t" | "T" => Ok(true),
        "0" | "false" | "False" | "FALSE" | "f" | "F" => Ok(false),
        _ => Err(LogError::Query {
            param,
            value: v.to_owned(),
            reason: "not a boolean (true or false)",
        }),
    }
}

fn number(param: &'static str, v: &str) -> Result<i64, LogError> {
    v.parse().map_err(|_| LogError::Query {
        param,
        value: v.to_owned(),
        reason: "not an integer",
    })
}

impl LogOptions {
    /// Parses the query of `/containerLogs` (`podLogOptions` as upstream
    /// decodes it); `now` anchors `sinceSeconds`.
    pub fn from_query(pairs: &[(String, String)], now: Timestamp) -> Result<Self, LogError> {
        let mut o = LogOptions::default();
        let mut since_seconds = None;
        let mut since_time = None;
        for (k, v) in pairs {
            match k.as_str() {
                "container" => o.container = Some(v.clone()),
                "follow" => o.follow = flag("follow", v)?,
                "previous" => o.previous = flag("previous", v)?,
                "timestamps" => o.timestamps = flag("timestamps", v)?,
                "tailLines" => {
                    let n = number("tailLines", v)?;
                    // Upstream treats a negative tail as "everything".
                    o.tail_lines = u64::try_from(n).ok();
                }
                "limitBytes" => {
                    let n = number("limitBytes", v)?;
                    if n < 1 {
                        return Err(LogError::Query {
                            param: "limitBytes",
                            value: v.clone(),
                            reason: "must be greater than 0",
                        });
                    }
                    o.limit_bytes = u64::try_from(n).ok();
                }
                "sinceSeconds" => {
                    let n = number("sinceSeconds", v)?;
                    if n < 1 {
                        return Err(LogError::Query {
                            param: "sinceSeconds",
                            value: v.clone(),
                            reason: "must be greater than 0",
                        });
                    }
                    since_seconds = Some(n);
                }
                "sinceTime" => {
                    since_time = Some(v.parse::<Timestamp>().map_err(|_| LogError::Query {
                        param: "sinceTime",
                        value: v.clone(),
                        reason: "not an RFC 3339 time",
                    })?);
                }
                _ => {}
            }
        }
        o.since = match (since_seconds, since_time) {
            (Some(_), Some(_)) => return Err(LogError::SinceBoth),
            (Some(s), None) => Some(
                now.checked_sub(jiff::SignedDuration::from_secs(s))
                    .unwrap_or(Timestamp::MIN),
            ),
            (None, t) => t,
        };
        Ok(o)
    }
}

/// One line of a CRI log file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CriLine<'a> {
    pub time_text: &'a str,
    pub time: Timestamp,
    pub stream: &'a str,
    pub partial: bool,
    pub content: &'a [u8],
}

/// Parses `TIMESTAMP STREAM TAG MSG` (the trailing newline removed).
pub fn parse_line(line: &[u8]) -> Result<CriLine<'_>, LogError> {
    let bad = |reason| LogError::Line {
        line: String::from_utf8_lossy(&line[..line.len().min(120)]).into_owned(),
        reason,
    };
    let mut fields = line.splitn(4, |b| *b == b' ');
    let ts = fields.next().ok_or_else(|| bad("no timestamp"))?;
    let time_text = std::str::from_utf8(ts).map_err(|_| bad("timestamp is not text"))?;
    let time = time_text
        .parse::<Timestamp>()
        .map_err(|_| bad("timestamp is not RFC 3339"))?;
    let stream = fields.next().ok_or_else(|| bad("no stream"))?;
    let stream = match stream {
        b"stdout" => "stdout",
        b"stderr" => "stderr",
        _ => return Err(bad("stream is neither stdout nor stderr")),
    };
    let tag = fields.next().ok_or_else(|| bad("no tag"))?;
    // A tag may carry more fields after ':'; the first is P or F.
    let partial = match tag.split(|b| *b == b':').next() {
        Some(b"P") => true,
        Some(b"F") => false,
        _ => return Err(bad("tag is neither P nor F")),
    };
    Ok(CriLine {
        time_text,
        time,
        stream,
        partial,
        content: fields.next().unwrap_or(b""),
    })
}

/// A whole message: the partial lines before a full one joined, stamped
/// with the first part's time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub time_text: String,
    pub time: Timestamp,
    pub content: Vec<u8>,
}

/// Joins partial lines, per stream (a stdout part never joins a stderr one).
#[derive(Debug, Default)]
pub struct Assembler {
    stdout: Option<Message>,
    stderr: Option<Message>,
}

impl Assembler {
    /// Takes one CRI line; a message when this line ends one.
    pub fn push(&mut self, line: &CriLine<'_>) -> Option<Message> {
        let slot = if line.stream == "stdout" {
            &mut self.stdout
        } else {
            &mut self.stderr
        };
        let msg = slot.get_or_insert_with(|| Message {
            time_text: line.time_text.to_owned(),
            time: line.time,
            content: Vec::new(),
        });
        msg.content.extend_from_slice(line.content);
        if line.partial { None } else { slot.take() }
    }
}

/// Turns messages into the response's bytes: the time filter, timestamps
/// and the byte limit.
#[derive(Debug)]
pub struct Renderer {
    since: Option<Timestamp>,
    timestamps: bool,
    remaining: Option<u64>,
}

impl Renderer {
    pub fn new(o: &LogOptions) -> Self {
        Renderer {
            since: o.since,
            timestamps: o.timestamps,
            remaining: o.limit_bytes,
        }
    }

    /// Whether the time filter keeps `m`.
    pub fn wants(&self, m: &Message) -> bool {
        self.since.is_none_or(|s| m.time >= s)
    }

    /// The bytes of `m` to send (empty when filtered out).
    pub fn render(&mut self, m: &Message) -> Vec<u8> {
        if !self.wants(m) || self.done() {
            return Vec::new();
        }
        let mut out = Vec::with_capacity(m.content.len() + 40);
        if self.timestamps {
            out.extend_from_slice(m.time_text.as_bytes());
            out.push(b' ');
        }
        out.extend_from_slice(&m.content);
        out.push(b'\n');
        if let Some(left) = &mut self.remaining {
            let keep = usize::try_from(*left).unwrap_or(usize::MAX).min(out.len());
            out.truncate(keep);
            *left -= keep as u64;
        }
        out
    }

    /// Whether the byte limit is reached.
    pub fn done(&self) -> bool {
        self.remaining == Some(0)
    }
}

/// The messages of a whole log (the tail when `tail` is set), skipping
/// lines that are not CRI log lines as upstream does (with a debug log).
pub fn read_messages(
    reader: impl BufRead,
    tail: Option<u64>,
    renderer: &Renderer,
    asm: &mut Assembler,
) -> std::io::Result<Vec<Message>> {
    let cap = tail.map(|t| usize::try_from(t).unwrap_or(usize::MAX));
    let mut kept: VecDeque<Message> = VecDeque::new();
    for line in reader.split(b'\n') {
        let line = line?;
        let Some(m) = assemble(asm, &line) else {
            continue;
        };
        if !renderer.wants(&m) {
            continue;
        }
        if cap == Some(0) {
            continue;
        }
        kept.push_back(m);
        if cap.is_some_and(|c| kept.len() > c) {
            kept.pop_front();
        }
    }
    Ok(kept.into())
}

fn assemble(asm: &mut Assembler, line: &[u8]) -> Option<Message> {
    if line.is_empty() {
        return None;
    }
    match parse_line(line) {
        Ok(l) => asm.push(&l),
        Err(e) => {
            tracing::debug!(error = %e, "skipping a line that is not a CRI log line");
            None
        }
    }
}

/// How long a follower waits for more output before looking again.
const FOLLOW_POLL: Duration = Duration::from_millis(200);

/// Sends the log at `path` as `opts` asks through `send` (which returns
/// false once the client has left). With `follow`, keeps reading new
/// output — reopening the file when it is rotated — until `exited` is set
/// (the container exited, or the client left) and the file is drained.
/// Blocking: runs on a thread of its own.
pub fn stream_log(
    path: &Path,
    opts: &LogOptions,
    exited: &AtomicBool,
    mut send: impl FnMut(Vec<u8>) -> bool,
) -> Result<(), LogError> {
    let read_err = |source| LogError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut renderer = Renderer::new(opts);
    let file = File::open(path).map_err(read_err)?;
    let mut ino = file.metadata().map_err(read_err)?.ino();
    let mut reader = BufReader::new(file);
    // The history, read to the end (its tail as asked).
    let mut history = Vec::new();
    read_to_end_lines(&mut reader, &mut history).map_err(read_err)?;
    // The assembler goes on into the follow: a message whose first parts
    // end the history is completed by what comes next.
    let mut asm = Assembler::default();
    let msgs =
        read_messages(&history[..], opts.tail_lines, &renderer, &mut asm).map_err(read_err)?;
    drop(history);
    let mut out = Vec::new();
    for m in &msgs {
        out.extend(renderer.render(m));
    }
    if !out.is_empty() && !send(out) {
        return Ok(());
    }
    if !opts.follow || renderer.done() {
        return Ok(());
    }
    let mut buf = Vec::new();
    loop {
        let was_exited = exited.load(Ordering::Acquire);
        buf.clear();
        read_to_end_lines(&mut reader, &mut buf).map_err(read_err)?;
        let mut out = Vec::new();
        for line in buf.split(|b| *b == b'\n') {
            if let Some(m) = assemble(&mut asm, line) {
                out.extend(renderer.render(&m));
            }
        }
        if !out.is_empty() && !send(out) {
            return Ok(());
        }
        if renderer.done() {
            return Ok(());
        }
        if buf.is_empty() {
            // Rotated: the path now names a new file; finish the old one
            // (done above) and go on from the new one's start.
            if let Ok(meta) = std::fs::metadata(path)
                && meta.ino() != ino
                && let Ok(f) = File::open(path)
            {
                ino = meta.ino();
                reader = BufReader::new(f);
                continue;
            }
            // Truncated in place (copytruncate): start over at its start.
            if let Ok(meta) = std::fs::metadata(path)
                && let Ok(pos) = reader.stream_position()
                && meta.len() < pos
            {
                reader.seek(SeekFrom::Start(0)).map_err(read_err)?;
                continue;
            }
            if was_exited {
                return Ok(());
            }
            std::thread::sleep(FOLLOW_POLL);
        }
    }
}

/// Reads whole lines from `reader` into `buf`; a last line without its
/// newline (still being written) is left for the next read.
fn read_to_end_lines(reader: &mut BufReader<File>, buf: &mut Vec<u8>) -> std::io::Result<()> {
    loop {
        let start = buf.len();
        let n = reader.read_until(b'\n', buf)?;
        if n == 0 {
            return Ok(());
        }
        if buf.last() != Some(&b'\n') {
            // Unread the incomplete line.
            let back = i64::try_from(buf.len() - start).unwrap_or(0);
            buf.truncate(start);
            reader.seek_relative(-back)?;
            return Ok(());
        }
    }
}
