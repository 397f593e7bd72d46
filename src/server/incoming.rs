//! What `get_request` hands to the rest of the loop: Python's `request`.
//!
//! For a stream server Python's `request` is the accepted socket; for a
//! datagram server it is the pair `(data, socket)`. [`Incoming`] is the same
//! idea as a type: either an accepted [`Stream`], or a [`Datagram`] that
//! carries the packet and a shared handle on the server socket so the reply
//! can be sent from whichever thread or child process handled it.

use std::fmt;
use std::io;
use std::net::{Shutdown, UdpSocket};
use std::os::unix::net::UnixDatagram;
use std::sync::Arc;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::handler::{PeerAddr, Stream};

/// One request as the server loop sees it, before a handler runs.
#[derive(Debug)]
pub enum Incoming {
    /// An accepted TCP or Unix stream connection.
    Stream(Stream),
    /// One received datagram.
    Datagram(Datagram),
}

impl Incoming {
    /// Python's `shutdown_request`: for a stream, shut down the write half
    /// (so the peer sees end of file even if another process still holds a
    /// copy) and close it. Datagrams have nothing to close.
    pub fn shutdown(self) {
        if let Incoming::Stream(s) = self {
            // ENOTCONN when the peer already went away: nothing to do.
            let _ = s.shutdown(Shutdown::Write);
        }
    }

    /// Python's `close_request`: release this process's copy only. The
    /// forking parent uses this so it does not cut off the child.
    pub fn close(self) {
        drop(self);
    }
}

/// The server socket a datagram arrived on, shared so replies can be sent
/// from worker threads and forked children.
#[derive(Clone)]
pub(crate) enum ReplySocket {
    Udp(Arc<UdpSocket>),
    Unix(Arc<UnixDatagram>),
}

/// A received datagram and the means to answer it.
pub struct Datagram {
    /// The packet as received.
    pub packet: Vec<u8>,
    pub(crate) socket: ReplySocket,
}

impl fmt::Debug for Datagram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Datagram")
            .field("len", &self.packet.len())
            .finish()
    }
}

impl Datagram {
    /// Sends `reply` to `peer` on the server socket. The server socket is
    /// non-blocking (the loop must never stall in `recv`), so a full send
    /// buffer waits for room with `poll` instead of failing.
    ///
    /// # Errors
    /// The send failed, or `peer` cannot be replied to (an unnamed Unix
    /// datagram socket has no address). A Unix peer that closed its socket
    /// before the reply is an error of kind `NotConnected`: the peer went
    /// away, which the default `handle_error` logs at `debug`, as a hang-up
    /// on a stream.
    pub fn send_reply(&self, reply: &[u8], peer: &PeerAddr) -> io::Result<()> {
        // Bounded: a socket that stays full for 10 s is reported, not waited on.
        for _ in 0..10 {
            let sent = match (&self.socket, peer) {
                (ReplySocket::Udp(s), PeerAddr::Inet(a)) => s.send_to(reply, a),
                (ReplySocket::Unix(s), PeerAddr::Unix(a)) => match a.as_pathname() {
                    Some(p) => s.send_to(reply, p).map_err(|e| unix_peer_gone(e, peer)),
                    None if a.is_unnamed() => {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidInput,
                            format!(
                                "cannot reply to {peer}: the client's socket has no address \
                                 (a Unix datagram client must bind a path to get a reply)"
                            ),
                        ))
                    }
                    None => s
                        .send_to_addr(reply, a)
                        .map_err(|e| unix_peer_gone(e, peer)),
                },
                _ => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("cannot reply to {peer} on this socket"),
                    ))
                }
            };
            match sent {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let fd = match &self.socket {
                        ReplySocket::Udp(s) => {
                            PollFd::new(std::os::fd::AsFd::as_fd(&**s), PollFlags::POLLOUT)
                        }
                        ReplySocket::Unix(s) => {
                            PollFd::new(std::os::fd::AsFd::as_fd(&**s), PollFlags::POLLOUT)
                        }
                    };
                    let _ = poll(&mut [fd], PollTimeout::from(1000u16));
                }
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "reply to {peer} not sent: socket buffer stayed full (the peer is not reading)"
            ),
        ))
    }
}

/// A reply to a Unix datagram peer whose socket is gone (`ECONNREFUSED`:
/// nothing bound to its path any more; `ENOENT`: the path removed too) is
/// a peer that went away, as a reset is on a stream: kind `NotConnected`.
fn unix_peer_gone(e: io::Error, peer: &PeerAddr) -> io::Error {
    match e.raw_os_error() {
        Some(libc::ECONNREFUSED | libc::ENOENT) => io::Error::new(
            io::ErrorKind::NotConnected,
            format!("reply to {peer} not sent: the peer closed its socket ({e})"),
        ),
        _ => e,
    }
}
