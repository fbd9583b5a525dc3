//! The CRI container log format.
//!
//! Each record is one line: `<timestamp> <stream> <tag> <text>\n`, e.g.
//! `2024-01-02T03:04:05.000000000Z stdout F hello`. The timestamp is RFC 3339
//! in UTC with exactly nine fractional digits; the tag is `F` for a full line
//! (its `\n` is not part of the text) and `P` for a partial one (a piece of a
//! line longer than the limit, or what was left without a `\n` when the
//! stream ended). Lines are split on `\n` only: a `\r` before it stays in the
//! text. The kubelet reads these files (`kubectl logs`).
//!
//! [`CriLogWriter`] sits on the container monitor's hot path: it does not
//! allocate per line. Its memory is one partial-line buffer per stream (at
//! most the line limit each) and one output buffer, written out at the end of
//! every [`CriLogWriter::write`] call and whenever it exceeds 32 KiB.

use std::fs::{File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// Default limit on the text of one record, like containerd's
/// `max_container_log_line_size`.
pub const DEFAULT_MAX_LINE: usize = 16 * 1024;

/// Mode of a newly created log file.
const LOG_FILE_MODE: u32 = 0o640;

/// The output buffer is written out once it holds this many bytes.
const FLUSH_THRESHOLD: usize = 32 * 1024;

/// Length of a formatted timestamp: `YYYY-MM-DDTHH:MM:SS.NNNNNNNNNZ`.
const TIMESTAMP_LEN: usize = 30;

const TAG_FULL: u8 = b'F';
const TAG_PARTIAL: u8 = b'P';

/// Errors of the CRI log writer.
#[derive(Debug, thiserror::Error)]
pub enum CriLogError {
    /// The log file could not be opened or created.
    #[error("opening container log {}: {source}", .path.display())]
    Open {
        /// The log file.
        path: PathBuf,
        /// The error of the open.
        #[source]
        source: io::Error,
    },

    /// Records could not be written (e.g. the disk is full). The records
    /// concerned are dropped; the writer stays usable.
    #[error("writing {stream} records to container log {}: {source}", .path.display())]
    Write {
        /// The log file.
        path: PathBuf,
        /// The stream whose data was being written.
        stream: Stream,
        /// The error of the write.
        #[source]
        source: io::Error,
    },
}

/// A container output stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

impl Stream {
    /// The stream's name in log records: `stdout` or `stderr`.
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }

    fn index(self) -> usize {
        match self {
            Stream::Stdout => 0,
            Stream::Stderr => 1,
        }
    }
}

impl std::fmt::Display for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Writes one container's stdout and stderr to its CRI log file.
#[derive(Debug)]
pub struct CriLogWriter {
    path: PathBuf,
    file: File,
    /// Longest record text; 0 means no limit.
    max_line: usize,
    /// Per stream, the start of a line whose `\n` has not arrived yet. Never
    /// longer than the limit.
    partial: [Vec<u8>; 2],
    /// Formatted records not yet written.
    out: Vec<u8>,
    /// Whether the file ends at a record boundary. False after a write that
    /// failed in the middle of a record: the next record then starts with a
    /// `\n` so that it is not glued to the torn one.
    at_line_start: bool,
    /// The first write error since the current public call began.
    error: Option<io::Error>,
}

impl CriLogWriter {
    /// Opens the log file at `path` for appending, creating it with mode 0640
    /// if needed. The parent directory must exist.
    pub fn open(path: &Path) -> Result<Self, CriLogError> {
        let file = open_log(path)?;
        Ok(CriLogWriter {
            path: path.to_path_buf(),
            file,
            max_line: DEFAULT_MAX_LINE,
            partial: [Vec::new(), Vec::new()],
            out: Vec::new(),
            at_line_start: true,
            error: None,
        })
    }

    /// Sets the longest record text (default [`DEFAULT_MAX_LINE`], 16 KiB);
    /// longer lines are split into `P` records of exactly `n` bytes followed
    /// by a last record of at most `n` bytes. 0 means no limit, as in
    /// containerd (the partial-line buffers then grow with the longest line).
    pub fn with_max_line(mut self, n: usize) -> Self {
        self.max_line = n;
        self
    }

    /// Logs `data`, the next bytes read from `stream`, in chunks of any size.
    ///
    /// Every complete line becomes an `F` record (without its `\n`); a line
    /// longer than the limit first yields `P` records; the unterminated rest
    /// is kept until more data or [`finish`](Self::finish). On a write error
    /// the whole chunk is still consumed (its records that could not be
    /// written are dropped, as containerd does) and the first error is
    /// returned.
    pub fn write(&mut self, stream: Stream, data: &[u8]) -> Result<(), CriLogError> {
        let mut rest = data;
        while let Some(pos) = rest.iter().position(|&b| b == b'\n') {
            self.push(stream, &rest[..pos], true);
            rest = &rest[pos + 1..];
        }
        self.push(stream, rest, false);
        self.flush();
        self.take_error(stream)
    }

    /// `stream` reached end of file: its unterminated data, if any, becomes
    /// a `P` record, as containerd does at EOF.
    pub fn finish(&mut self, stream: Stream) -> Result<(), CriLogError> {
        if !self.partial[stream.index()].is_empty() {
            self.record(stream, TAG_PARTIAL, &[]);
        }
        self.flush();
        self.take_error(stream)
    }

    /// Opens the log path again, for log rotation (CRI `ReopenContainerLog`:
    /// the kubelet has renamed the file). Buffered partial lines continue in
    /// the new file. If the open fails, the old file stays in use.
    pub fn reopen(&mut self) -> Result<(), CriLogError> {
        self.flush();
        // Everything is flushed at the end of each call, so this only drops
        // an error nobody could report; the old file is being abandoned.
        self.error = None;
        self.file = open_log(&self.path)?;
        self.at_line_start = true;
        Ok(())
    }

    fn limit(&self) -> usize {
        if self.max_line == 0 {
            usize::MAX
        } else {
            self.max_line
        }
    }

    /// Adds `bytes` (without `\n`) to `stream`'s current line, emitting `P`
    /// records while the line exceeds the limit; `line_end` closes the line
    /// with an `F` record.
    fn push(&mut self, stream: Stream, mut bytes: &[u8], line_end: bool) {
        let limit = self.limit();
        loop {
            let room = limit.saturating_sub(self.partial[stream.index()].len());
            if bytes.len() <= room {
                if line_end {
                    self.record(stream, TAG_FULL, bytes);
                } else {
                    self.partial[stream.index()].extend_from_slice(bytes);
                }
                return;
            }
            // The line exceeds the limit: the first `limit` bytes are a P
            // record. `room` is 0 only if the limit was lowered below the
            // buffered length; the buffer then goes out alone.
            let (head, tail) = bytes.split_at(room);
            self.record(stream, TAG_PARTIAL, head);
            bytes = tail;
        }
    }

    /// Appends one record to the output: `stream`'s buffered partial line
    /// (which is cleared) followed by `tail`.
    fn record(&mut self, stream: Stream, tag: u8, tail: &[u8]) {
        if self.out.is_empty() && !self.at_line_start {
            self.out.push(b'\n');
        }
        let mut timestamp = [0u8; TIMESTAMP_LEN];
        write_timestamp(&mut timestamp, SystemTime::now());
        let partial = &mut self.partial[stream.index()];
        let out = &mut self.out;
        out.extend_from_slice(&timestamp);
        out.push(b' ');
        out.extend_from_slice(stream.as_str().as_bytes());
        out.push(b' ');
        out.push(tag);
        out.push(b' ');
        out.extend_from_slice(partial);
        out.extend_from_slice(tail);
        out.push(b'\n');
        partial.clear();
        if self.out.len() >= FLUSH_THRESHOLD {
            self.flush();
        }
    }

    /// Writes out the output buffer. On error the unwritten records are
    /// dropped and the error is kept for the current call to return.
    fn flush(&mut self) {
        let mut written = 0;
        while written < self.out.len() {
            match self.file.write(&self.out[written..]) {
                Ok(0) => {
                    self.note_error(io::ErrorKind::WriteZero.into());
                    break;
                }
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.note_error(e);
                    break;
                }
            }
        }
        if let Some(&last) = self.out[..written].last() {
            self.at_line_start = last == b'\n';
        }
        self.out.clear();
    }

    fn note_error(&mut self, e: io::Error) {
        self.error.get_or_insert(e);
    }

    fn take_error(&mut self, stream: Stream) -> Result<(), CriLogError> {
        match self.error.take() {
            None => Ok(()),
            Some(source) => Err(CriLogError::Write {
                path: self.path.clone(),
                stream,
                source,
            }),
        }
    }
}

/// Opens `path` for appending; a file created here gets mode 0640 whatever
/// the umask.
fn open_log(path: &Path) -> Result<File, CriLogError> {
    let open_error = |source| CriLogError::Open {
        path: path.to_path_buf(),
        source,
    };
    let created = OpenOptions::new()
        .append(true)
        .create_new(true)
        .mode(LOG_FILE_MODE)
        .open(path);
    match created {
        Ok(file) => {
            file.set_permissions(Permissions::from_mode(LOG_FILE_MODE))
                .map_err(open_error)?;
            Ok(file)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(open_error),
        Err(e) => Err(open_error(e)),
    }
}

/// Formats `t` as the CRI log timestamp: RFC 3339, UTC, nine fractional
/// digits, e.g. `2024-01-02T03:04:05.000000000Z`. Instants outside years
/// 0000 to 9999 are clamped to that range.
pub fn format_timestamp(t: SystemTime) -> String {
    let mut buf = [0u8; TIMESTAMP_LEN];
    write_timestamp(&mut buf, t);
    buf.iter().map(|&b| char::from(b)).collect()
}

/// Seconds from the epoch to 0000-01-01T00:00:00Z.
const MIN_SECS: i64 = -62_167_219_200;
/// Seconds from the epoch to 9999-12-31T23:59:59Z.
const MAX_SECS: i64 = 253_402_300_799;

fn write_timestamp(buf: &mut [u8; TIMESTAMP_LEN], t: SystemTime) {
    let (secs, nanos) = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (
            i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            d.subsec_nanos(),
        ),
        Err(before) => {
            let d = before.duration();
            let secs = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
            match d.subsec_nanos() {
                0 => (-secs, 0),
                n => (-secs - 1, 1_000_000_000 - n),
            }
        }
    };
    let (secs, nanos) = if secs < MIN_SECS {
        (MIN_SECS, 0)
    } else if secs > MAX_SECS {
        (MAX_SECS, 999_999_999)
    } else {
        (secs, nanos)
    };
    let (year, month, day) = civil_from_days(secs.div_euclid(86_400));
    let second_of_day = secs.rem_euclid(86_400);

    *buf = *b"0000-00-00T00:00:00.000000000Z";
    put_digits(&mut buf[0..4], year);
    put_digits(&mut buf[5..7], month);
    put_digits(&mut buf[8..10], day);
    put_digits(&mut buf[11..13], second_of_day / 3600);
    put_digits(&mut buf[14..16], second_of_day / 60 % 60);
    put_digits(&mut buf[17..19], second_of_day % 60);
    put_digits(&mut buf[20..29], i64::from(nanos));
}

/// Writes `value` in decimal, zero-padded to the width of `out`.
fn put_digits(out: &mut [u8], mut value: i64) {
    for digit in out.iter_mut().rev() {
        // rem_euclid keeps this in 0..10 whatever the input.
        *digit = b'0' + value.rem_euclid(10) as u8;
        value /= 10;
    }
}

/// The proleptic Gregorian date of `days` after 1970-01-01, as
/// (year, month, day). Valid far beyond the years used here.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    // Count from 0000-03-01, so that leap days end each 4-, 100- and
    // 400-year cycle.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097); // [0, 146096]
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365; // [0, 399]
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100); // [0, 365]
    let shifted_month = (5 * day_of_year + 2) / 153; // [0, 11], 0 = March
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

    #[derive(Debug, PartialEq, Eq)]
    struct Record {
        stream: String,
        tag: char,
        text: Vec<u8>,
    }

    fn records(path: &Path) -> Vec<Record> {
        let content = std::fs::read(path).expect("read log");
        assert!(content.is_empty() || content.ends_with(b"\n"));
        content
            .split(|&b| b == b'\n')
            .filter(|line| !line.is_empty())
            .map(|line| {
                let mut fields = line.splitn(4, |&b| b == b' ');
                let ts = fields.next().expect("timestamp");
                assert_eq!(ts.len(), TIMESTAMP_LEN, "{}", String::from_utf8_lossy(line));
                assert_eq!(ts[10], b'T');
                assert_eq!(ts[19], b'.');
                assert_eq!(ts[29], b'Z');
                let stream = String::from_utf8(fields.next().expect("stream").to_vec()).unwrap();
                let tag = fields.next().expect("tag");
                assert_eq!(tag.len(), 1);
                let text = fields.next().expect("text").to_vec();
                Record {
                    stream,
                    tag: char::from(tag[0]),
                    text,
                }
            })
            .collect()
    }

    fn rec(stream: &str, tag: char, text: &[u8]) -> Record {
        Record {
            stream: stream.to_owned(),
            tag,
            text: text.to_vec(),
        }
    }

    fn writer() -> (tempfile::TempDir, PathBuf, CriLogWriter) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("0.log");
        let w = CriLogWriter::open(&path).expect("open");
        (dir, path, w)
    }

    #[test]
    fn chunks_split_mid_line() {
        let (_dir, path, mut w) = writer();
        for chunk in [
            &b"hel"[..],
            b"lo wor",
            b"ld\nsecond",
            b" line\n",
            b"\n",
            b"tail",
        ] {
            w.write(Stream::Stdout, chunk).unwrap();
        }
        assert_eq!(
            records(&path),
            [
                rec("stdout", 'F', b"hello world"),
                rec("stdout", 'F', b"second line"),
                rec("stdout", 'F', b""),
            ]
        );
        w.finish(Stream::Stdout).unwrap();
        assert_eq!(records(&path).last(), Some(&rec("stdout", 'P', b"tail")));
        // Nothing buffered: finish writes nothing more.
        w.finish(Stream::Stdout).unwrap();
        w.finish(Stream::Stderr).unwrap();
        assert_eq!(records(&path).len(), 4);
    }

    #[test]
    fn crlf_keeps_the_carriage_return() {
        let (_dir, path, mut w) = writer();
        w.write(Stream::Stdout, b"dos line\r\nbare\rcr\r").unwrap();
        w.write(Stream::Stdout, b"\n").unwrap();
        assert_eq!(
            records(&path),
            [
                rec("stdout", 'F', b"dos line\r"),
                rec("stdout", 'F', b"bare\rcr\r"),
            ]
        );
    }

    #[test]
    fn long_line_becomes_partial_records() {
        let (_dir, path, mut w) = writer();
        let line = vec![b'x'; 40 * 1024];
        // In pipe-sized pieces, then the newline.
        for piece in line.chunks(4096) {
            w.write(Stream::Stdout, piece).unwrap();
        }
        w.write(Stream::Stdout, b"\n").unwrap();
        let got: Vec<(char, usize)> = records(&path)
            .iter()
            .map(|r| (r.tag, r.text.len()))
            .collect();
        assert_eq!(got, [('P', 16384), ('P', 16384), ('F', 8192)]);

        // In one piece with its newline: same records.
        let (_dir2, path2, mut w2) = writer();
        let mut data = line.clone();
        data.push(b'\n');
        w2.write(Stream::Stderr, &data).unwrap();
        let got: Vec<(char, usize)> = records(&path2)
            .iter()
            .map(|r| (r.tag, r.text.len()))
            .collect();
        assert_eq!(got, [('P', 16384), ('P', 16384), ('F', 8192)]);
    }

    #[test]
    fn line_of_exactly_the_limit_is_one_full_record() {
        let (_dir, path, w) = writer();
        let mut w = w.with_max_line(4);
        w.write(Stream::Stdout, b"abcd\nabcdefgh\nabcdefghi")
            .unwrap();
        w.finish(Stream::Stdout).unwrap();
        assert_eq!(
            records(&path),
            [
                rec("stdout", 'F', b"abcd"),
                rec("stdout", 'P', b"abcd"),
                rec("stdout", 'F', b"efgh"),
                rec("stdout", 'P', b"abcd"),
                rec("stdout", 'P', b"efgh"),
                rec("stdout", 'P', b"i"),
            ]
        );
    }

    #[test]
    fn no_limit() {
        let (_dir, path, w) = writer();
        let mut w = w.with_max_line(0);
        let line = vec![b'y'; 100 * 1024];
        w.write(Stream::Stdout, &line).unwrap();
        w.write(Stream::Stdout, b"\n").unwrap();
        assert_eq!(records(&path), [rec("stdout", 'F', &line)]);
    }

    #[test]
    fn streams_interleaved() {
        let (_dir, path, mut w) = writer();
        w.write(Stream::Stdout, b"out 1 ").unwrap();
        w.write(Stream::Stderr, b"err 1\nerr").unwrap();
        w.write(Stream::Stdout, b"continued\n").unwrap();
        w.write(Stream::Stderr, b" 2\n").unwrap();
        assert_eq!(
            records(&path),
            [
                rec("stderr", 'F', b"err 1"),
                rec("stdout", 'F', b"out 1 continued"),
                rec("stderr", 'F', b"err 2"),
            ]
        );
    }

    #[test]
    fn file_mode_append_and_missing_parent() {
        let (dir, path, mut w) = writer();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
        w.write(Stream::Stdout, b"one\n").unwrap();
        drop(w);
        let mut w = CriLogWriter::open(&path).unwrap();
        w.write(Stream::Stdout, b"two\n").unwrap();
        let texts: Vec<Vec<u8>> = records(&path).into_iter().map(|r| r.text).collect();
        assert_eq!(texts, [b"one".to_vec(), b"two".to_vec()]);

        let missing = dir.path().join("no-such-dir").join("0.log");
        match CriLogWriter::open(&missing) {
            Err(CriLogError::Open { path, source }) => {
                assert_eq!(path, missing);
                assert_eq!(source.kind(), io::ErrorKind::NotFound);
            }
            other => panic!("expected an open error, got {other:?}"),
        }
    }

    #[test]
    fn reopen_after_rotation() {
        let (dir, path, mut w) = writer();
        w.write(Stream::Stdout, b"before\nhalf ").unwrap();
        let rotated = dir.path().join("0.log.1");
        std::fs::rename(&path, &rotated).unwrap();
        w.reopen().unwrap();
        w.write(Stream::Stdout, b"line\nafter\n").unwrap();
        assert_eq!(records(&rotated), [rec("stdout", 'F', b"before")]);
        assert_eq!(
            records(&path),
            [
                rec("stdout", 'F', b"half line"),
                rec("stdout", 'F', b"after")
            ]
        );

        // The directory is gone: reopen fails, the old file stays in use.
        let moved = dir.path().join("moved");
        std::fs::create_dir(&moved).unwrap();
        let sub = moved.join("0.log");
        let mut w = CriLogWriter::open(&sub).unwrap();
        std::fs::rename(&moved, dir.path().join("moved-away")).unwrap();
        assert!(matches!(w.reopen(), Err(CriLogError::Open { .. })));
        w.write(Stream::Stdout, b"still\n").unwrap();
        assert_eq!(
            records(&dir.path().join("moved-away").join("0.log")),
            [rec("stdout", 'F', b"still")]
        );
    }

    #[test]
    fn disk_full_is_an_error_not_a_panic() {
        let path = Path::new("/dev/full");
        if !path.exists() {
            return;
        }
        let mut w = CriLogWriter::open(path).expect("open /dev/full");
        for _ in 0..2 {
            match w.write(Stream::Stderr, b"lost\npartial") {
                Err(CriLogError::Write { stream, source, .. }) => {
                    assert_eq!(stream, Stream::Stderr);
                    assert_eq!(source.raw_os_error(), Some(libc::ENOSPC));
                }
                other => panic!("expected a write error, got {other:?}"),
            }
        }
        assert!(matches!(
            w.finish(Stream::Stderr),
            Err(CriLogError::Write { .. })
        ));
        // Nothing buffered any more.
        w.finish(Stream::Stderr).unwrap();
        w.write(Stream::Stdout, b"no newline").unwrap();
    }

    #[test]
    fn timestamps() {
        let at = |secs: u64, nanos: u32| format_timestamp(UNIX_EPOCH + Duration::new(secs, nanos));
        assert_eq!(
            format_timestamp(UNIX_EPOCH),
            "1970-01-01T00:00:00.000000000Z"
        );
        assert_eq!(at(1_709_210_096, 0), "2024-02-29T12:34:56.000000000Z");
        assert_eq!(
            at(1_700_000_000, 123_456_789),
            "2023-11-14T22:13:20.123456789Z"
        );
        assert_eq!(at(1_700_000_000, 1), "2023-11-14T22:13:20.000000001Z");
        assert_eq!(at(951_782_400, 0), "2000-02-29T00:00:00.000000000Z");
        assert_eq!(
            at(951_782_400 - 1, 999_999_999),
            "2000-02-28T23:59:59.999999999Z"
        );
        assert_eq!(at(4_107_542_400, 0), "2100-03-01T00:00:00.000000000Z");
        assert_eq!(
            at(4_107_542_400 - 86_400, 0),
            "2100-02-28T00:00:00.000000000Z"
        );
        assert_eq!(at(1_704_164_645, 0), "2024-01-02T03:04:05.000000000Z");
        assert_eq!(at(1_735_689_599, 0), "2024-12-31T23:59:59.000000000Z");

        let before =
            |secs: u64, nanos: u32| format_timestamp(UNIX_EPOCH - Duration::new(secs, nanos));
        assert_eq!(before(0, 500_000_000), "1969-12-31T23:59:59.500000000Z");
        assert_eq!(before(1, 0), "1969-12-31T23:59:59.000000000Z");
        assert_eq!(before(86_400 * 365, 0), "1969-01-01T00:00:00.000000000Z");

        // Out of the four-digit years: clamped, no panic.
        let far = UNIX_EPOCH
            .checked_add(Duration::from_secs(1 << 40))
            .unwrap();
        assert_eq!(format_timestamp(far), "9999-12-31T23:59:59.999999999Z");
        let past = UNIX_EPOCH
            .checked_sub(Duration::from_secs(1 << 40))
            .unwrap();
        assert_eq!(format_timestamp(past), "0000-01-01T00:00:00.000000000Z");
        assert_eq!(
            format_timestamp(UNIX_EPOCH + Duration::from_secs(MAX_SECS as u64)),
            "9999-12-31T23:59:59.000000000Z"
        );
        assert_eq!(
            format_timestamp(UNIX_EPOCH - Duration::from_secs(MIN_SECS.unsigned_abs())),
            "0000-01-01T00:00:00.000000000Z"
        );
    }

    #[test]
    fn civil_dates_match_a_day_by_day_walk() {
        // Walk day by day from 1600-01-01 to 2400-12-31 and compare.
        let mut days = -135_140; // 1600-01-01
        for year in 1600..=2400i64 {
            let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
            let lengths = [
                31,
                if leap { 29 } else { 28 },
                31,
                30,
                31,
                30,
                31,
                31,
                30,
                31,
                30,
                31,
            ];
            for (m, &len) in lengths.iter().enumerate() {
                for d in 1..=len {
                    assert_eq!(civil_from_days(days), (year, m as i64 + 1, d), "day {days}");
                    days += 1;
                }
            }
        }
    }

    #[test]
    fn timestamps_of_written_records_are_current() {
        let (_dir, path, mut w) = writer();
        let before = format_timestamp(SystemTime::now());
        w.write(Stream::Stdout, b"x\n").unwrap();
        let after = format_timestamp(SystemTime::now());
        let content = std::fs::read_to_string(&path).unwrap();
        let ts = &content[..TIMESTAMP_LEN];
        assert!(
            before.as_str() <= ts && ts <= after.as_str(),
            "{before} {ts} {after}"
        );
        assert_eq!(&content[TIMESTAMP_LEN..], " stdout F x\n");
    }

    fn chunk() -> impl Strategy<Value = (bool, Vec<u8>)> {
        let byte = prop_oneof![
            4 => Just(b'a'),
            2 => Just(b'\n'),
            1 => Just(b'\r'),
            1 => Just(b' '),
            1 => any::<u8>(),
        ];
        (any::<bool>(), prop::collection::vec(byte, 0..40))
    }

    proptest! {
        #[test]
        fn records_reproduce_the_input(
            chunks in prop::collection::vec(chunk(), 0..30),
            max_line in 0usize..12,
        ) {
            let (_dir, path, w) = writer();
            let mut w = w.with_max_line(max_line);
            let mut expected = [Vec::new(), Vec::new()];
            for (stderr, data) in &chunks {
                let stream = if *stderr { Stream::Stderr } else { Stream::Stdout };
                w.write(stream, data).unwrap();
                expected[stream.index()].extend_from_slice(data);
            }
            w.finish(Stream::Stdout).unwrap();
            w.finish(Stream::Stderr).unwrap();

            let mut got = [Vec::new(), Vec::new()];
            for r in records(&path) {
                let i = match r.stream.as_str() {
                    "stdout" => 0,
                    "stderr" => 1,
                    other => panic!("bad stream {other}"),
                };
                if max_line > 0 {
                    prop_assert!(r.text.len() <= max_line);
                }
                got[i].extend_from_slice(&r.text);
                match r.tag {
                    'F' => got[i].push(b'\n'),
                    'P' => {}
                    other => panic!("bad tag {other}"),
                }
            }
            prop_assert_eq!(&got, &expected);
        }
    }
}

/// Unix nanoseconds of a timestamp as [`format_timestamp`] writes it
/// (`YYYY-MM-DDTHH:MM:SS[.fraction]Z`); `None` if it is not one.
pub fn parse_timestamp(s: &str) -> Option<i64> {
    let s = s.trim();
    let b = s.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> { s.get(r)?.parse().ok() };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let rest = s.get(19..)?.strip_suffix('Z')?;
    let nanos = match rest.strip_prefix('.') {
        Some(frac)
            if !frac.is_empty() && frac.len() <= 9 && frac.bytes().all(|c| c.is_ascii_digit()) =>
        {
            frac.parse::<i64>().ok()? * 10i64.pow(9 - frac.len() as u32)
        }
        None if rest.is_empty() => 0,
        _ => return None,
    };
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    // Days from the civil date (proleptic Gregorian), Howard Hinnant's method.
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3_600 + mi * 60 + sec;
    secs.checked_mul(1_000_000_000)?.checked_add(nanos)
}

#[cfg(test)]
mod parse_tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_round_trip() {
        for nanos in [0u64, 1, 1_700_000_000_123_456_789, 951_782_400_000_000_000] {
            let t = UNIX_EPOCH + Duration::from_nanos(nanos);
            assert_eq!(parse_timestamp(&format_timestamp(t)), Some(nanos as i64));
        }
        assert_eq!(
            parse_timestamp("2024-01-02T03:04:05Z"),
            Some(1_704_164_645_000_000_000)
        );
        assert_eq!(
            parse_timestamp("2024-01-02T03:04:05.5Z"),
            Some(1_704_164_645_500_000_000)
        );
        assert_eq!(parse_timestamp(""), None);
        assert_eq!(parse_timestamp("2024-13-02T03:04:05Z"), None);
        assert_eq!(parse_timestamp("2024-01-02 03:04:05Z"), None);
    }
}
