//! Synchronous netlink requests for one-shot lookups: a plugin process does
//! a couple of them and exits, so a socket and a blocking read beat
//! starting an async runtime.

use std::fmt::Debug;

use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_MULTIPART, NetlinkDeserializable, NetlinkHeader, NetlinkMessage,
    NetlinkPayload, NetlinkSerializable,
};
use netlink_sys::{Socket, SocketAddr};

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("netlink socket: {0}")]
    Socket(std::io::Error),
    #[error("netlink {what}: {source}")]
    Io {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("netlink {what}: undecodable reply: {detail}")]
    Decode { what: &'static str, detail: String },
}

impl NetlinkError {
    /// The errno the kernel answered with, if it did.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// A connected netlink socket of one protocol.
pub struct Netlink {
    socket: Socket,
    seq: u32,
}

impl Netlink {
    pub fn open(protocol: isize) -> Result<Self, NetlinkError> {
        let mut socket = Socket::new(protocol).map_err(NetlinkError::Socket)?;
        socket.bind_auto().map_err(NetlinkError::Socket)?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(NetlinkError::Socket)?;
        Ok(Netlink { socket, seq: 0 })
    }

    /// Sends `msg` with `flags` (NLM_F_REQUEST is added) and collects the
    /// replies: all parts of a dump, else the single answer; an ACK alone
    /// gives an empty list, a NACK its errno.
    pub fn request<I>(
        &mut self,
        what: &'static str,
        msg: I,
        flags: u16,
    ) -> Result<Vec<I>, NetlinkError>
    where
        I: NetlinkSerializable + NetlinkDeserializable + Debug,
    {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = flags | netlink_packet_core::NLM_F_REQUEST;
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        packet.finalize();
        let mut buf = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut buf);
        self.socket
            .send(&buf, 0)
            .map_err(|source| NetlinkError::Io { what, source })?;

        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut out = Vec::new();
        let mut rx = vec![0u8; 64 * 1024];
        loop {
            let n = self
                .socket
                .recv(&mut &mut rx[..], 0)
                .map_err(|source| NetlinkError::Io { what, source })?;
            let mut off = 0;
            while off < n {
                let reply = NetlinkMessage::<I>::deserialize(&rx[off..n]).map_err(|e| {
                    NetlinkError::Decode {
                        what,
                        detail: e.to_string(),
                    }
                })?;
                let len = reply.header.length as usize;
                let multipart = reply.header.flags & NLM_F_MULTIPART != 0;
                // Replies to an earlier request on this socket are not ours.
                let ours = reply.header.sequence_number == self.seq;
                match reply.payload {
                    _ if !ours => {}
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(out),
                            Some(code) => Err(NetlinkError::Io {
                                what,
                                source: std::io::Error::from_raw_os_error(-code.get()),
                            }),
                        };
                    }
                    NetlinkPayload::InnerMessage(m) => {
                        out.push(m);
                        if !dump && !multipart {
                            return Ok(out);
                        }
                    }
                    _ => {}
                }
                if len == 0 {
                    break;
                }
                off += (len + 3) & !3;
            }
        }
    }
}
