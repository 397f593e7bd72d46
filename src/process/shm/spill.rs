//! Messages too large for a [`Queue`](crate::process::Queue)'s ring.
//!
//! A message whose record does not fit in the ring is written to its own
//! `memfd`, and the descriptor travels through a Unix datagram socketpair
//! that every copy of the queue shares (created with the queue, before
//! `fork`), tagged with a sequence number; the ring gets a small *spill
//! record* (sequence number and length) in its place, so the order of
//! messages is the ring's order.
//!
//! - **Nothing lost if a producer dies.** The kernel holds a descriptor in
//!   flight in the socket's queue, so the message outlives the producer
//!   the moment `sendmsg` returns. A producer killed between `sendmsg`
//!   and publishing its record leaves a datagram no record names: its
//!   sequence number is older than every later record's, so consumers
//!   discard it.
//! - **Order.** Sequence numbers are taken, and datagrams sent, under the
//!   queue's lock, in ring order; a consumer takes its record and the
//!   matching datagram under the lock too, discarding older strays.
//! - **Memory.** The pending large messages live in `memfd`s (page cache),
//!   freed when consumed, or when every process has closed the queue.
//!   The socket's send buffer bounds how many can be pending (a few
//!   hundred); past that `put` waits for room as for a full ring.

use std::fs::File;
use std::io::{IoSlice, IoSliceMut, Write};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;

use nix::errno::Errno;
use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType,
};

use crate::{Error, Result};

/// The shared side channel of one queue.
#[derive(Debug)]
pub(crate) struct Spill {
    tx: OwnedFd,
    rx: OwnedFd,
    /// Entries in the table of descriptors the fork server keeps open for
    /// its children (a queue made before it started is shared with them).
    shared: [Option<usize>; 2],
}

impl Drop for Spill {
    fn drop(&mut self) {
        for slot in self.shared.iter().flatten() {
            crate::process::closefork::unshare(*slot);
        }
    }
}

impl Spill {
    /// Creates the socketpair (close-on-exec).
    pub(crate) fn new() -> Result<Spill> {
        let (tx, rx) = socketpair(
            AddressFamily::Unix,
            SockType::Datagram,
            None,
            SockFlag::SOCK_CLOEXEC,
        )?;
        let shared = [
            crate::process::closefork::share(tx.as_raw_fd()),
            crate::process::closefork::share(rx.as_raw_fd()),
        ];
        Ok(Spill { tx, rx, shared })
    }

    /// Writes `body` to a fresh `memfd` (outside the queue's lock).
    pub(crate) fn stash(body: &[u8]) -> Result<OwnedFd> {
        let fd = nix::sys::memfd::memfd_create(
            c"socketserver-queue",
            nix::sys::memfd::MFdFlags::MFD_CLOEXEC,
        )?;
        let mut file = File::from(fd);
        file.write_all(body)?;
        Ok(file.into())
    }

    /// Sends `memfd` tagged `seq` without blocking (lock held). `Ok(false)`
    /// when the socket's buffer is full.
    pub(crate) fn send(&self, seq: u64, memfd: BorrowedFd<'_>) -> Result<bool> {
        let tag = seq.to_le_bytes();
        let iov = [IoSlice::new(&tag)];
        let fds = [memfd.as_raw_fd()];
        let cmsg = [ControlMessage::ScmRights(&fds)];
        loop {
            match sendmsg::<()>(
                self.tx.as_raw_fd(),
                &iov,
                &cmsg,
                MsgFlags::MSG_DONTWAIT,
                None,
            ) {
                Ok(_) => return Ok(true),
                Err(Errno::EAGAIN) => return Ok(false),
                Err(Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Receives the `memfd` tagged `seq` (lock held), discarding older
    /// strays left by producers or consumers that died half-way.
    pub(crate) fn take(&self, seq: u64) -> Result<OwnedFd> {
        loop {
            let mut tag = [0u8; 8];
            let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
            let (got, fd) = {
                let mut iov = [IoSliceMut::new(&mut tag)];
                let msg = match recvmsg::<()>(
                    self.rx.as_raw_fd(),
                    &mut iov,
                    Some(&mut space),
                    MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
                ) {
                    Ok(msg) => msg,
                    Err(Errno::EINTR) => continue,
                    Err(Errno::EAGAIN) => return Err(lost(seq)),
                    Err(e) => return Err(e.into()),
                };
                let mut fd = None;
                for c in msg.cmsgs()? {
                    if let ControlMessageOwned::ScmRights(raw) = c {
                        for r in raw {
                            // SAFETY: SCM_RIGHTS just installed this
                            // descriptor in our table; nothing else owns it.
                            let owned = unsafe { OwnedFd::from_raw_fd(r) };
                            if fd.is_none() {
                                fd = Some(owned);
                            }
                        }
                    }
                }
                (msg.bytes, fd)
            };
            let Some(fd) = fd else { continue };
            if got != 8 {
                continue;
            }
            let theirs = u64::from_le_bytes(tag);
            if theirs == seq {
                return Ok(fd);
            }
            if theirs > seq {
                // Ours never came (a producer died before sending it could
                // not have published the record): the message is gone.
                return Err(lost(seq));
            }
            // An older stray: drop it and look at the next one.
        }
    }

    /// Reads `len` bytes of a received `memfd` (outside the lock).
    pub(crate) fn read(memfd: OwnedFd, len: u64) -> Result<Vec<u8>> {
        let file = File::from(memfd);
        let size = file.metadata()?.len();
        if size != len {
            return Err(Error::Codec(format!(
                "large queue message: {size} bytes stored, {len} announced"
            )));
        }
        let len = usize::try_from(len).map_err(|_| Error::MessageTooLarge {
            len: usize::MAX,
            max: usize::MAX,
        })?;
        let mut body = vec![0u8; len];
        file.read_exact_at(&mut body, 0)?;
        Ok(body)
    }
}

fn lost(seq: u64) -> Error {
    Error::Io(std::io::Error::other(format!(
        "large queue message {seq} is missing from the side channel"
    )))
}
