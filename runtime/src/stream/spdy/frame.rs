//! SPDY/3.1 frames and their wire encoding.
//!
//! A frame starts with 8 bytes. A control frame: bit 31 set, 15-bit version
//! (3), 16-bit type, then 8-bit flags and a 24-bit payload length. A data
//! frame: bit 31 clear, 31-bit stream id, then 8-bit flags and a 24-bit
//! length. Header blocks (SYN_STREAM, SYN_REPLY, HEADERS) are a count and
//! length-prefixed name/value pairs (values joined by NUL), compressed with
//! one zlib stream per direction that lives as long as the connection, primed
//! with the SPDY/3 dictionary and sync-flushed after every block.
//!
//! The decoder works on a buffer and never trusts a length: every field is
//! bounds-checked, so a malformed frame is an error, not a panic.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// The dictionary from the SPDY/3 specification (section 2.6.10.1) that
/// primes the header compression of both directions.
pub(crate) const DICTIONARY: &[u8] = include_bytes!("../spdy3_dictionary.bin");

/// SPDY version 3; 3.1 only adds session flow control, same frames.
pub(crate) const VERSION: u16 = 3;

/// The largest payload a 24-bit length can describe.
pub(crate) const MAX_PAYLOAD: usize = (1 << 24) - 1;

/// Decompressed header blocks larger than this are refused: the compressed
/// frame can be small, so the limit is on the output (a zip bomb guard).
const MAX_HEADER_BLOCK: usize = 256 * 1024;

/// spdystream's default limit on headers in one block.
const MAX_HEADER_COUNT: usize = 1000;

const TYPE_SYN_STREAM: u16 = 1;
const TYPE_SYN_REPLY: u16 = 2;
const TYPE_RST_STREAM: u16 = 3;
const TYPE_SETTINGS: u16 = 4;
const TYPE_PING: u16 = 6;
const TYPE_GOAWAY: u16 = 7;
const TYPE_HEADERS: u16 = 8;
const TYPE_WINDOW_UPDATE: u16 = 9;

pub(crate) const FLAG_FIN: u8 = 0x01;
pub(crate) const FLAG_UNIDIRECTIONAL: u8 = 0x02;

/// RST_STREAM status codes (SPDY/3 section 2.6.3).
pub(crate) mod rst {
    pub const PROTOCOL_ERROR: u32 = 1;
    pub const REFUSED_STREAM: u32 = 3;
    pub const CANCEL: u32 = 5;
}

/// GOAWAY status codes.
pub(crate) mod goaway {
    pub const OK: u32 = 0;
    pub const PROTOCOL_ERROR: u32 = 1;
}

/// Errors of the SPDY framing layer.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("SPDY control frame has version {0}, only 3 is spoken")]
    UnsupportedVersion(u16),
    #[error("SPDY {kind} frame has a payload of {len} bytes, which is invalid for it")]
    BadLength { kind: &'static str, len: usize },
    #[error("SPDY {kind} frame names stream 0")]
    ZeroStreamId { kind: &'static str },
    #[error("SPDY header block is malformed: {0}")]
    BadHeaderBlock(&'static str),
    #[error("SPDY header block decompresses to more than {MAX_HEADER_BLOCK} bytes")]
    HeaderBlockTooLarge,
    #[error("SPDY header compression failed: {0}")]
    Compression(String),
    #[error("SPDY frame payload of {0} bytes exceeds the 24-bit length")]
    TooLarge(usize),
}

/// A header block: names are lowercase; a name may carry several values.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(pub Vec<(String, Vec<String>)>);

impl Headers {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `name: value`, lowercasing the name as SPDY requires.
    pub fn with(mut self, name: &str, value: &str) -> Self {
        self.0
            .push((name.to_ascii_lowercase(), vec![value.to_owned()]));
        self
    }

    /// The first value of `name` (case-insensitive), as Go's Header.Get.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| v.first())
            .map(String::as_str)
    }
}

/// A SETTINGS entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    pub flags: u8,
    pub id: u32,
    pub value: u32,
}

/// One SPDY/3.1 frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    SynStream {
        stream_id: u32,
        associated_to: u32,
        priority: u8,
        slot: u8,
        flags: u8,
        headers: Headers,
    },
    SynReply {
        stream_id: u32,
        flags: u8,
        headers: Headers,
    },
    RstStream {
        stream_id: u32,
        status: u32,
    },
    Settings {
        flags: u8,
        entries: Vec<Setting>,
    },
    Ping {
        id: u32,
    },
    GoAway {
        last_good_stream_id: u32,
        status: u32,
    },
    Headers {
        stream_id: u32,
        flags: u8,
        headers: Headers,
    },
    WindowUpdate {
        stream_id: u32,
        delta: u32,
    },
    Data {
        stream_id: u32,
        flags: u8,
        data: Bytes,
    },
}

/// The state of one direction's header compression: one per connection
/// side, because the zlib stream spans all frames.
pub struct Codec {
    compress: Compress,
    decompress: Decompress,
    decompress_primed: bool,
}

impl Default for Codec {
    fn default() -> Self {
        Self::new()
    }
}

impl Codec {
    pub fn new() -> Self {
        let mut compress = Compress::new(Compression::default(), true);
        // A fresh zlib stream always accepts a dictionary; this cannot fail.
        let _ = compress.set_dictionary(DICTIONARY);
        Self {
            compress,
            decompress: Decompress::new(true),
            decompress_primed: false,
        }
    }

    /// Appends the encoding of `frame` to `out`.
    pub fn encode(&mut self, frame: &Frame, out: &mut BytesMut) -> Result<(), FrameError> {
        match frame {
            Frame::SynStream {
                stream_id,
                associated_to,
                priority,
                slot,
                flags,
                headers,
            } => {
                let block = self.compress_headers(headers)?;
                let mut p = BytesMut::with_capacity(10 + block.len());
                p.put_u32(stream_id & 0x7fff_ffff);
                p.put_u32(associated_to & 0x7fff_ffff);
                p.put_u8((priority & 0x07) << 5);
                p.put_u8(*slot);
                p.extend_from_slice(&block);
                control(out, TYPE_SYN_STREAM, *flags, &p)
            }
            Frame::SynReply {
                stream_id,
                flags,
                headers,
            } => self.encode_headers_frame(out, TYPE_SYN_REPLY, *stream_id, *flags, headers),
            Frame::Headers {
                stream_id,
                flags,
                headers,
            } => self.encode_headers_frame(out, TYPE_HEADERS, *stream_id, *flags, headers),
            Frame::RstStream { stream_id, status } => {
                let mut p = [0u8; 8];
                p[..4].copy_from_slice(&(stream_id & 0x7fff_ffff).to_be_bytes());
                p[4..].copy_from_slice(&status.to_be_bytes());
                control(out, TYPE_RST_STREAM, 0, &p)
            }
            Frame::Settings { flags, entries } => {
                let mut p = BytesMut::with_capacity(4 + 8 * entries.len());
                p.put_u32(entries.len() as u32);
                for e in entries {
                    p.put_u32(u32::from(e.flags) << 24 | (e.id & 0x00ff_ffff));
                    p.put_u32(e.value);
                }
                control(out, TYPE_SETTINGS, *flags, &p)
            }
            Frame::Ping { id } => control(out, TYPE_PING, 0, &id.to_be_bytes()),
            Frame::GoAway {
                last_good_stream_id,
                status,
            } => {
                let mut p = [0u8; 8];
                p[..4].copy_from_slice(&(last_good_stream_id & 0x7fff_ffff).to_be_bytes());
                p[4..].copy_from_slice(&status.to_be_bytes());
                control(out, TYPE_GOAWAY, 0, &p)
            }
            Frame::WindowUpdate { stream_id, delta } => {
                let mut p = [0u8; 8];
                p[..4].copy_from_slice(&(stream_id & 0x7fff_ffff).to_be_bytes());
                p[4..].copy_from_slice(&(delta & 0x7fff_ffff).to_be_bytes());
                control(out, TYPE_WINDOW_UPDATE, 0, &p)
            }
            Frame::Data {
                stream_id,
                flags,
                data,
            } => {
                if data.len() > MAX_PAYLOAD {
                    return Err(FrameError::TooLarge(data.len()));
                }
                out.put_u32(stream_id & 0x7fff_ffff);
                out.put_u32(u32::from(*flags) << 24 | data.len() as u32);
                out.extend_from_slice(data);
                Ok(())
            }
        }
    }

    fn encode_headers_frame(
        &mut self,
        out: &mut BytesMut,
        kind: u16,
        stream_id: u32,
        flags: u8,
        headers: &Headers,
    ) -> Result<(), FrameError> {
        let block = self.compress_headers(headers)?;
        let mut p = BytesMut::with_capacity(4 + block.len());
        p.put_u32(stream_id & 0x7fff_ffff);
        p.extend_from_slice(&block);
        control(out, kind, flags, &p)
    }

    fn compress_headers(&mut self, headers: &Headers) -> Result<Vec<u8>, FrameError> {
        let mut raw = BytesMut::new();
        raw.put_u32(headers.0.len() as u32);
        for (name, values) in &headers.0 {
            let name = name.to_ascii_lowercase();
            let value = values.join("\0");
            raw.put_u32(name.len() as u32);
            raw.extend_from_slice(name.as_bytes());
            raw.put_u32(value.len() as u32);
            raw.extend_from_slice(value.as_bytes());
        }
        let mut out = Vec::with_capacity(raw.len() + 64);
        let mut input: &[u8] = &raw;
        loop {
            if out.capacity() - out.len() < 64 {
                out.reserve(out.capacity().max(256));
            }
            let before_in = self.compress.total_in();
            self.compress
                .compress_vec(input, &mut out, FlushCompress::Sync)
                .map_err(|e| FrameError::Compression(e.to_string()))?;
            let consumed = (self.compress.total_in() - before_in) as usize;
            input = &input[consumed..];
            // The sync flush is complete once all input is in and zlib left
            // spare room in the output (a full buffer may hide more output).
            if input.is_empty() && out.len() < out.capacity() {
                break;
            }
        }
        Ok(out)
    }

    /// Takes one whole frame off the front of `buf`, or returns `None` when
    /// `buf` holds only part of one.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        if buf.len() < 8 {
            return Ok(None);
        }
        let word = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
        let flags = buf[4];
        let len = u32::from_be_bytes([0, buf[5], buf[6], buf[7]]) as usize;
        if buf.len() < 8 + len {
            buf.reserve(8 + len - buf.len());
            return Ok(None);
        }
        buf.advance(8);
        let payload = buf.split_to(len).freeze();
        if word & 0x8000_0000 == 0 {
            let stream_id = word & 0x7fff_ffff;
            if stream_id == 0 {
                return Err(FrameError::ZeroStreamId { kind: "DATA" });
            }
            return Ok(Some(Frame::Data {
                stream_id,
                flags,
                data: payload,
            }));
        }
        let version = ((word >> 16) & 0x7fff) as u16;
        let kind = (word & 0xffff) as u16;
        if version != VERSION {
            return Err(FrameError::UnsupportedVersion(version));
        }
        self.decode_control(kind, flags, payload).map(Some)
    }

    fn decode_control(&mut self, kind: u16, flags: u8, p: Bytes) -> Result<Frame, FrameError> {
        let len = p.len();
        let u32_at = |i: usize| u32::from_be_bytes([p[i], p[i + 1], p[i + 2], p[i + 3]]);
        let stream_at = |i: usize, kind: &'static str| {
            let id = u32_at(i) & 0x7fff_ffff;
            if id == 0 {
                Err(FrameError::ZeroStreamId { kind })
            } else {
                Ok(id)
            }
        };
        match kind {
            TYPE_SYN_STREAM => {
                if len < 10 {
                    return Err(FrameError::BadLength {
                        kind: "SYN_STREAM",
                        len,
                    });
                }
                let stream_id = stream_at(0, "SYN_STREAM")?;
                let associated_to = u32_at(4) & 0x7fff_ffff;
                let priority = p[8] >> 5;
                let slot = p[9];
                let headers = self.decompress_headers(&p[10..])?;
                Ok(Frame::SynStream {
                    stream_id,
                    associated_to,
                    priority,
                    slot,
                    flags,
                    headers,
                })
            }
            TYPE_SYN_REPLY | TYPE_HEADERS => {
                let name = if kind == TYPE_SYN_REPLY {
                    "SYN_REPLY"
                } else {
                    "HEADERS"
                };
                if len < 4 {
                    return Err(FrameError::BadLength { kind: name, len });
                }
                let stream_id = stream_at(0, name)?;
                let headers = self.decompress_headers(&p[4..])?;
                Ok(if kind == TYPE_SYN_REPLY {
                    Frame::SynReply {
                        stream_id,
                        flags,
                        headers,
                    }
                } else {
                    Frame::Headers {
                        stream_id,
                        flags,
                        headers,
                    }
                })
            }
            TYPE_RST_STREAM => {
                if len != 8 {
                    return Err(FrameError::BadLength {
                        kind: "RST_STREAM",
                        len,
                    });
                }
                Ok(Frame::RstStream {
                    stream_id: stream_at(0, "RST_STREAM")?,
                    status: u32_at(4),
                })
            }
            TYPE_SETTINGS => {
                if len < 4 {
                    return Err(FrameError::BadLength {
                        kind: "SETTINGS",
                        len,
                    });
                }
                let n = u32_at(0) as usize;
                if n > (len - 4) / 8 {
                    return Err(FrameError::BadLength {
                        kind: "SETTINGS",
                        len,
                    });
                }
                let entries = (0..n)
                    .map(|i| {
                        let w = u32_at(4 + 8 * i);
                        Setting {
                            flags: (w >> 24) as u8,
                            id: w & 0x00ff_ffff,
                            value: u32_at(8 + 8 * i),
                        }
                    })
                    .collect();
                Ok(Frame::Settings { flags, entries })
            }
            TYPE_PING => {
                if len != 4 {
                    return Err(FrameError::BadLength { kind: "PING", len });
                }
                Ok(Frame::Ping { id: u32_at(0) })
            }
            TYPE_GOAWAY => {
                // SPDY/3 added the status word; SPDY/2-style 4-byte GOAWAYs
                // are tolerated as status OK.
                if len != 8 && len != 4 {
                    return Err(FrameError::BadLength {
                        kind: "GOAWAY",
                        len,
                    });
                }
                Ok(Frame::GoAway {
                    last_good_stream_id: u32_at(0) & 0x7fff_ffff,
                    status: if len == 8 { u32_at(4) } else { goaway::OK },
                })
            }
            TYPE_WINDOW_UPDATE => {
                if len != 8 {
                    return Err(FrameError::BadLength {
                        kind: "WINDOW_UPDATE",
                        len,
                    });
                }
                Ok(Frame::WindowUpdate {
                    stream_id: u32_at(0) & 0x7fff_ffff,
                    delta: u32_at(4) & 0x7fff_ffff,
                })
            }
            // Unknown control frames must be ignored (SPDY/3 section 2.2.1);
            // a NOOP-like settings frame stands in for "nothing".
            _ => Ok(Frame::Settings {
                flags: 0,
                entries: Vec::new(),
            }),
        }
    }

    fn decompress_headers(&mut self, mut input: &[u8]) -> Result<Headers, FrameError> {
        let mut out: Vec<u8> = Vec::with_capacity(1024);
        loop {
            if out.capacity() - out.len() < 256 {
                if out.len() >= MAX_HEADER_BLOCK {
                    return Err(FrameError::HeaderBlockTooLarge);
                }
                out.reserve(out.capacity().max(1024));
            }
            let before_in = self.decompress.total_in();
            let before_out = out.len();
            let result = self
                .decompress
                .decompress_vec(input, &mut out, FlushDecompress::Sync);
            let consumed = (self.decompress.total_in() - before_in) as usize;
            input = &input[consumed..];
            match result {
                Ok(Status::StreamEnd) => {
                    return Err(FrameError::BadHeaderBlock("zlib stream ended"));
                }
                Ok(_) => {}
                Err(e) => {
                    if !self.decompress_primed && e.needs_dictionary().is_some() {
                        self.decompress
                            .set_dictionary(DICTIONARY)
                            .map_err(|e| FrameError::Compression(e.to_string()))?;
                        self.decompress_primed = true;
                        continue;
                    }
                    return Err(FrameError::Compression(e.to_string()));
                }
            }
            let produced = out.len() - before_out;
            if input.is_empty() && out.len() < out.capacity() {
                break;
            }
            if consumed == 0 && produced == 0 {
                return Err(FrameError::BadHeaderBlock("compressed data is truncated"));
            }
        }
        if out.len() > MAX_HEADER_BLOCK {
            return Err(FrameError::HeaderBlockTooLarge);
        }
        parse_header_block(&out)
    }
}

fn control(out: &mut BytesMut, kind: u16, flags: u8, payload: &[u8]) -> Result<(), FrameError> {
    if payload.len() > MAX_PAYLOAD {
        return Err(FrameError::TooLarge(payload.len()));
    }
    out.put_u32(0x8000_0000 | u32::from(VERSION) << 16 | u32::from(kind));
    out.put_u32(u32::from(flags) << 24 | payload.len() as u32);
    out.extend_from_slice(payload);
    Ok(())
}

/// Parses a decompressed header block.
pub(crate) fn parse_header_block(mut b: &[u8]) -> Result<Headers, FrameError> {
    fn take_u32(b: &mut &[u8]) -> Result<usize, FrameError> {
        if b.len() < 4 {
            return Err(FrameError::BadHeaderBlock("truncated length"));
        }
        let v = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
        *b = &b[4..];
        Ok(v)
    }
    fn take_str(b: &mut &[u8]) -> Result<String, FrameError> {
        let n = take_u32(b)?;
        if b.len() < n {
            return Err(FrameError::BadHeaderBlock("truncated string"));
        }
        let s = std::str::from_utf8(&b[..n])
            .map_err(|_| FrameError::BadHeaderBlock("header is not UTF-8"))?
            .to_owned();
        *b = &b[n..];
        Ok(s)
    }
    let count = take_u32(&mut b)?;
    if count > MAX_HEADER_COUNT {
        return Err(FrameError::BadHeaderBlock("too many headers"));
    }
    let mut headers = Headers(Vec::with_capacity(count));
    for _ in 0..count {
        let name = take_str(&mut b)?;
        if name.is_empty() {
            return Err(FrameError::BadHeaderBlock("empty header name"));
        }
        let value = take_str(&mut b)?;
        // Upstream lowercases names it receives rather than failing the stream.
        let name = name.to_ascii_lowercase();
        let values = value.split('\0').map(str::to_owned).collect();
        headers.0.push((name, values));
    }
    if !b.is_empty() {
        return Err(FrameError::BadHeaderBlock("trailing bytes"));
    }
    Ok(headers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn round_trip(frames: &[Frame]) -> Vec<Frame> {
        let mut tx = Codec::new();
        let mut rx = Codec::new();
        let mut wire = BytesMut::new();
        for f in frames {
            tx.encode(f, &mut wire).unwrap();
        }
        let mut out = Vec::new();
        while let Some(f) = rx.decode(&mut wire).unwrap() {
            out.push(f);
        }
        assert!(wire.is_empty());
        out
    }

    #[test]
    fn dictionary_is_the_spdy3_one() {
        assert_eq!(DICTIONARY.len(), 1423);
        // The zlib dictionary id (Adler-32) every SPDY/3 peer expects.
        let mut c = Compress::new(Compression::default(), true);
        assert_eq!(c.set_dictionary(DICTIONARY).unwrap(), 0xe3c6_a7c2);
    }

    #[test]
    fn every_frame_type_round_trips() {
        let h = Headers::new()
            .with("streamType", "error")
            .with("port", "8080");
        let frames = vec![
            Frame::SynStream {
                stream_id: 1,
                associated_to: 0,
                priority: 3,
                slot: 0,
                flags: FLAG_FIN,
                headers: h.clone(),
            },
            Frame::SynReply {
                stream_id: 1,
                flags: 0,
                headers: Headers::new(),
            },
            Frame::Headers {
                stream_id: 3,
                flags: FLAG_FIN,
                headers: h.clone(),
            },
            Frame::RstStream {
                stream_id: 5,
                status: rst::CANCEL,
            },
            Frame::Settings {
                flags: 1,
                entries: vec![Setting {
                    flags: 1,
                    id: 7,
                    value: 65536,
                }],
            },
            Frame::Ping { id: 7 },
            Frame::GoAway {
                last_good_stream_id: 9,
                status: goaway::OK,
            },
            Frame::WindowUpdate {
                stream_id: 1,
                delta: 1000,
            },
            Frame::Data {
                stream_id: 1,
                flags: FLAG_FIN,
                data: Bytes::from_static(b"hello"),
            },
        ];
        let mut expect = frames.clone();
        // Names travel lowercased.
        if let Frame::SynStream { headers, .. } = &mut expect[0] {
            headers.0[0].0 = "streamtype".into();
        }
        if let Frame::Headers { headers, .. } = &mut expect[2] {
            headers.0[0].0 = "streamtype".into();
        }
        assert_eq!(round_trip(&frames), expect);
    }

    #[test]
    fn control_frame_bytes_are_as_the_spec_lays_them_out() {
        let mut c = Codec::new();
        let mut b = BytesMut::new();
        c.encode(&Frame::Ping { id: 1 }, &mut b).unwrap();
        assert_eq!(&b[..], &[0x80, 3, 0, 6, 0, 0, 0, 4, 0, 0, 0, 1]);
        b.clear();
        c.encode(
            &Frame::Data {
                stream_id: 3,
                flags: FLAG_FIN,
                data: Bytes::from_static(b"ab"),
            },
            &mut b,
        )
        .unwrap();
        assert_eq!(&b[..], &[0, 0, 0, 3, 1, 0, 0, 2, b'a', b'b']);
    }

    #[test]
    fn header_compression_state_spans_frames() {
        // The second block is compressed against the first; a decoder that
        // restarted its zlib stream per frame would fail here.
        let h = Headers::new().with("streamtype", "stdout");
        let frames: Vec<_> = (0..5)
            .map(|i| Frame::SynStream {
                stream_id: 2 * i + 1,
                associated_to: 0,
                priority: 0,
                slot: 0,
                flags: 0,
                headers: h.clone(),
            })
            .collect();
        assert_eq!(round_trip(&frames), frames);
    }

    #[test]
    fn multiple_values_are_nul_joined() {
        let h = Headers(vec![("a".into(), vec!["1".into(), "2".into()])]);
        let f = Frame::SynReply {
            stream_id: 1,
            flags: 0,
            headers: h,
        };
        assert_eq!(round_trip(std::slice::from_ref(&f)), vec![f]);
    }

    #[test]
    fn partial_frames_wait_for_more_bytes() {
        let mut tx = Codec::new();
        let mut rx = Codec::new();
        let mut wire = BytesMut::new();
        tx.encode(
            &Frame::Data {
                stream_id: 1,
                flags: 0,
                data: Bytes::from_static(b"0123456789"),
            },
            &mut wire,
        )
        .unwrap();
        let mut partial = BytesMut::from(&wire[..7]);
        assert_eq!(rx.decode(&mut partial).unwrap(), None);
        partial.extend_from_slice(&wire[7..]);
        assert!(matches!(
            rx.decode(&mut partial).unwrap(),
            Some(Frame::Data { .. })
        ));
    }

    #[test]
    fn malformed_frames_are_errors() {
        let cases: Vec<(Vec<u8>, FrameError)> = vec![
            (
                vec![0x80, 2, 0, 6, 0, 0, 0, 4, 0, 0, 0, 1],
                FrameError::UnsupportedVersion(2),
            ),
            (
                vec![0x80, 3, 0, 6, 0, 0, 0, 2, 0, 0],
                FrameError::BadLength {
                    kind: "PING",
                    len: 2,
                },
            ),
            (
                vec![0, 0, 0, 0, 0, 0, 0, 1, 9],
                FrameError::ZeroStreamId { kind: "DATA" },
            ),
            (
                vec![0x80, 3, 0, 3, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 1],
                FrameError::ZeroStreamId { kind: "RST_STREAM" },
            ),
            (
                vec![0x80, 3, 0, 4, 0, 0, 0, 4, 0, 0, 0, 9],
                FrameError::BadLength {
                    kind: "SETTINGS",
                    len: 4,
                },
            ),
            (
                vec![0x80, 3, 0, 1, 0, 0, 0, 3, 0, 0, 1],
                FrameError::BadLength {
                    kind: "SYN_STREAM",
                    len: 3,
                },
            ),
        ];
        for (bytes, want) in cases {
            let mut c = Codec::new();
            let mut b = BytesMut::from(&bytes[..]);
            assert_eq!(c.decode(&mut b), Err(want), "{bytes:?}");
        }
    }

    #[test]
    fn garbage_header_block_is_an_error() {
        let mut c = Codec::new();
        let mut b = BytesMut::new();
        b.extend_from_slice(&[0x80, 3, 0, 2, 0, 0, 0, 9, 0, 0, 0, 1, 1, 2, 3, 4, 5]);
        assert!(c.decode(&mut b).is_err());
    }

    #[test]
    fn header_block_parser_bounds_checks() {
        assert!(parse_header_block(&[0, 0, 0, 1, 0, 0, 0, 9, b'a']).is_err());
        assert!(parse_header_block(&[0xff, 0xff, 0xff, 0xff]).is_err());
        assert!(parse_header_block(&[0, 0, 0, 0, 1]).is_err());
        let h = parse_header_block(&[0, 0, 0, 1, 0, 0, 0, 1, b'A', 0, 0, 0, 1, b'b']).unwrap();
        assert_eq!(h.get("a"), Some("b"));
    }

    #[test]
    fn unknown_control_frames_are_skipped() {
        let mut c = Codec::new();
        let mut b = BytesMut::from(&[0x80, 3, 0, 0x42, 0, 0, 0, 2, 1, 2][..]);
        assert!(matches!(
            c.decode(&mut b).unwrap(),
            Some(Frame::Settings { .. })
        ));
        assert!(b.is_empty());
    }

    fn arb_headers() -> impl Strategy<Value = Headers> {
        prop::collection::vec(
            (
                "[a-z][a-z0-9-]{0,15}",
                prop::collection::vec("[ -~]{0,20}", 1..3),
            ),
            0..6,
        )
        .prop_map(Headers)
    }

    fn arb_frame() -> impl Strategy<Value = Frame> {
        let id = 1u32..0x7fff_ffff;
        prop_oneof![
            (
                id.clone(),
                0u32..0x7fff_ffff,
                0u8..8,
                any::<u8>(),
                0u8..4,
                arb_headers()
            )
                .prop_map(
                    |(stream_id, associated_to, priority, slot, flags, headers)| Frame::SynStream {
                        stream_id,
                        associated_to,
                        priority,
                        slot,
                        flags,
                        headers
                    }
                ),
            (id.clone(), 0u8..2, arb_headers()).prop_map(|(stream_id, flags, headers)| {
                Frame::SynReply {
                    stream_id,
                    flags,
                    headers,
                }
            }),
            (id.clone(), 1u32..12)
                .prop_map(|(stream_id, status)| Frame::RstStream { stream_id, status }),
            any::<u32>().prop_map(|id| Frame::Ping { id }),
            (0u32..0x7fff_ffff, 0u32..3).prop_map(|(l, s)| Frame::GoAway {
                last_good_stream_id: l,
                status: s
            }),
            (0u32..0x7fff_ffff, 0u32..0x7fff_ffff)
                .prop_map(|(stream_id, delta)| Frame::WindowUpdate { stream_id, delta }),
            (id, 0u8..2, prop::collection::vec(any::<u8>(), 0..2000)).prop_map(
                |(stream_id, flags, d)| Frame::Data {
                    stream_id,
                    flags,
                    data: Bytes::from(d)
                }
            ),
        ]
    }

    proptest! {
        #[test]
        fn arbitrary_frame_sequences_round_trip(frames in prop::collection::vec(arb_frame(), 1..12)) {
            prop_assert_eq!(round_trip(&frames), frames);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            let mut c = Codec::new();
            let mut b = BytesMut::from(&bytes[..]);
            for _ in 0..20 {
                match c.decode(&mut b) {
                    Ok(Some(_)) => continue,
                    _ => break,
                }
            }
        }

        #[test]
        fn corrupted_header_blocks_never_panic(flip in 0usize..200, byte in any::<u8>()) {
            let mut tx = Codec::new();
            let mut wire = BytesMut::new();
            tx.encode(&Frame::SynStream {
                stream_id: 1, associated_to: 0, priority: 0, slot: 0, flags: 0,
                headers: Headers::new().with("streamtype", "stdin").with("port", "80"),
            }, &mut wire).unwrap();
            let i = 18 + flip % (wire.len() - 18);
            wire[i] ^= byte | 1;
            let _ = Codec::new().decode(&mut wire);
        }
    }
}
