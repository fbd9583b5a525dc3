//! Deleting a link without waiting for the kernel to free it.
//!
//! An RTM_DELLINK request returns only after the kernel has unregistered the
//! device completely: after it unlists the device (name and index free, the
//! RTM_DELLINK notification sent), it still waits for RCU callbacks and for
//! the device's last references, 10 to 30 ms on a busy node, before it
//! acknowledges. Nothing a CNI DEL promises depends on that second part, so
//! [`Netlink::delete_link_unwaited`] sends the request from a thread of its
//! own, on a socket that also listens to the namespace's link notifications,
//! and returns at the notification; the thread finishes the request (and
//! closes the socket) in the background.

use std::os::fd::{AsFd, AsRawFd};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::LinkMessage;
use netlink_sys::{Socket, protocols::NETLINK_ROUTE};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use super::{LinkError, Netlink};

/// How long to wait for a word from the kernel (the notification or the
/// request's answer) before looking whether the link is still there: a
/// notification can be lost when the socket's buffer overruns.
const QUIET: Duration = Duration::from_millis(200);

/// How long the deletion may take at most, in case the kernel's answer is
/// lost too (an overrun buffer drops it as well).
const LIMIT: Duration = Duration::from_secs(30);

/// The request's sequence number; the socket carries no other request.
const SEQ: u32 = 1;

/// What the kernel has said about the deletion so far.
enum Heard {
    /// The link is gone from the namespace.
    Gone,
    /// The request's answer (the deletion is complete, or refused).
    Answer(Result<(), LinkError>),
}

impl Netlink {
    /// Deletes link `index` of this connection's namespace (for a veth, both
    /// ends), returning once the link has left the namespace, its name and
    /// index free, without waiting for the kernel to finish freeing it.
    /// A refused deletion is reported as [`Netlink::delete_link`] reports it.
    pub fn delete_link_unwaited(&self, index: u32) -> Result<(), LinkError> {
        let op = || format!("deleting link #{index}");
        let io = |source: std::io::Error| LinkError::Io { op: op(), source };
        // Opened on the caller's thread, so in its namespace; a socket stays
        // in the namespace it was created in, whichever thread uses it.
        let socket = Arc::new(Socket::new(NETLINK_ROUTE).map_err(LinkError::Socket)?);
        socket
            .add_membership(libc::RTNLGRP_LINK)
            .map_err(LinkError::Socket)?;
        let request = dellink_request(index);

        let Some(rx) = send_detached(&socket, request) else {
            tracing::debug!("deleting link #{index} inline");
            return self.delete_link(index);
        };

        let deadline = Instant::now() + LIMIT;
        let mut buf = Vec::with_capacity(64 * 1024);
        loop {
            let mut fds = [PollFd::new(socket.as_fd(), PollFlags::POLLIN)];
            let quiet = QUIET.min(deadline.saturating_duration_since(Instant::now()));
            let ready = match poll(
                &mut fds,
                PollTimeout::from(u16::try_from(quiet.as_millis()).unwrap_or(u16::MAX)),
            ) {
                Ok(n) => n > 0,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(io(e.into())),
            };
            if ready {
                buf.clear();
                match socket.recv(&mut buf, 0) {
                    Ok(_) => match heard(&buf, index, op) {
                        Some(Heard::Gone) => return Ok(()),
                        Some(Heard::Answer(r)) => return r,
                        None => continue,
                    },
                    // Overrun: what was lost may have been ours; look below.
                    Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(io(e)),
                }
            }
            if let Ok(Some(e)) = rx.try_recv() {
                return Err(io(e));
            }
            if self.link_by_index(index)?.is_none() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(LinkError::Io {
                    op: op(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("the link is still there after {} s", LIMIT.as_secs()),
                    ),
                });
            }
        }
    }
}

/// Sends `request` on `socket` from a thread of its own or, in a plugin
/// executable, from a child process (see [`crate::detach`]). The receiver
/// gets the sender's error, if any (never, from a child: the kernel's
/// answer on the socket says everything there is). None when neither could
/// be started.
fn send_detached(
    socket: &Arc<Socket>,
    request: Vec<u8>,
) -> Option<mpsc::Receiver<Option<std::io::Error>>> {
    let (tx, rx) = mpsc::channel();
    if crate::detach::is_executable() {
        return crate::detach::send_from_child(socket.as_raw_fd(), &request).then_some(rx);
    }
    let sender = Arc::clone(socket);
    std::thread::Builder::new()
        .name("netlink-del".into())
        .spawn(move || {
            // The receiver may be gone (the link left first): nothing to tell.
            let _ = tx.send(sender.send(&request, 0).err());
        })
        .map_err(|e| tracing::debug!(error = %e, "starting a thread for a link deletion"))
        .ok()
        .map(|_| rx)
}

fn dellink_request(index: u32) -> Vec<u8> {
    let mut link = LinkMessage::default();
    link.header.index = index;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_ACK;
    header.sequence_number = SEQ;
    let mut msg = NetlinkMessage::new(
        header,
        NetlinkPayload::from(RouteNetlinkMessage::DelLink(link)),
    );
    msg.finalize();
    let mut buf = vec![0; msg.buffer_len()];
    msg.serialize(&mut buf);
    buf
}

/// Whether the messages of one datagram say anything about the deletion
/// of link `index`.
fn heard(mut buf: &[u8], index: u32, op: impl Fn() -> String) -> Option<Heard> {
    while buf.len() >= 16 {
        let len = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if len < 16 || len > buf.len() {
            return None;
        }
        match NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[..len]) {
            Ok(m) => match m.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(l))
                    // Bridges also announce a port leaving them with an
                    // RTM_DELLINK, of family AF_BRIDGE: the link stays.
                    if l.header.index == index
                        && l.header.interface_family
                            == netlink_packet_route::AddressFamily::Unspec =>
                {
                    return Some(Heard::Gone);
                }
                // The answer: an ACK (no error code) or the refusal.
                NetlinkPayload::Error(e) if m.header.sequence_number == SEQ => {
                    return Some(Heard::Answer(match e.code {
                        None => Ok(()),
                        Some(_) => Err(LinkError::Netlink {
                            op: op(),
                            source: rtnetlink::Error::NetlinkError(e),
                        }),
                    }));
                }
                _ => {}
            },
            Err(e) => tracing::debug!(error = %e, "an undecodable link notification"),
        }
        buf = &buf[len.next_multiple_of(4).min(buf.len())..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_names_the_link() {
        let req = dellink_request(7);
        let m = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&req).unwrap();
        assert_eq!(m.header.sequence_number, SEQ);
        assert_eq!(m.header.flags, NLM_F_REQUEST | NLM_F_ACK);
        match m.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(l)) => {
                assert_eq!(l.header.index, 7)
            }
            other => panic!("{other:?}"),
        }
    }

    fn notification(index: u32, family: netlink_packet_route::AddressFamily) -> Vec<u8> {
        let mut link = LinkMessage::default();
        link.header.index = index;
        link.header.interface_family = family;
        let mut msg = NetlinkMessage::new(
            NetlinkHeader::default(),
            NetlinkPayload::from(RouteNetlinkMessage::DelLink(link)),
        );
        msg.finalize();
        let mut buf = vec![0; msg.buffer_len()];
        msg.serialize(&mut buf);
        buf
    }

    #[test]
    fn only_our_links_own_deletion_counts() {
        use netlink_packet_route::AddressFamily;
        let op = || "op".to_string();
        assert!(heard(&notification(8, AddressFamily::Unspec), 7, op).is_none());
        assert!(heard(&notification(7, AddressFamily::Bridge), 7, op).is_none());
        let mut two = notification(8, AddressFamily::Unspec);
        two.extend(notification(7, AddressFamily::Unspec));
        assert!(matches!(heard(&two, 7, op), Some(Heard::Gone)));
        assert!(heard(&[1, 2, 3], 7, op).is_none());
    }

    #[test]
    fn a_refusal_is_an_error_with_its_errno() {
        let mut e = netlink_packet_core::ErrorMessage::default();
        e.code = std::num::NonZeroI32::new(-libc::EPERM);
        let mut header = NetlinkHeader::default();
        header.sequence_number = SEQ;
        let mut msg = NetlinkMessage::<RouteNetlinkMessage>::new(header, NetlinkPayload::Error(e));
        msg.finalize();
        let mut buf = vec![0; msg.buffer_len()];
        msg.serialize(&mut buf);
        match heard(&buf, 7, || "op".to_string()) {
            Some(Heard::Answer(Err(e))) => assert_eq!(e.errno(), Some(libc::EPERM)),
            _ => panic!("not an error"),
        }
    }
}
