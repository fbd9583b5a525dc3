//! SPDY/3.1 as Kubernetes' streaming protocols use it: framing (`frame`) and
//! a multiplexed connection over any byte stream (`conn`).
//!
//! Only what moby/spdystream (client-go's SPDY implementation) does is
//! needed: streams opened with SYN_STREAM and accepted with SYN_REPLY, DATA
//! with FIN for half-close, RST_STREAM, PING echo, GOAWAY. spdystream does no
//! flow control at all (it ignores WINDOW_UPDATE and SETTINGS and never sends
//! them), so this side never waits for window either — waiting would stall
//! after 64 KiB. It does send WINDOW_UPDATE for what it consumes, so a strict
//! SPDY/3.1 peer never stalls on us.

pub mod conn;
pub mod frame;

pub use conn::{
    ConnError, Connection, IncomingStream, Role, SpdyStream, StreamReader, StreamWriter,
};
pub use frame::{Codec, Frame, FrameError, Headers};
