//! `Connection` and `pipe()`: Python's `multiprocessing.Pipe`, with
//! length-prefixed frames over a socketpair or a pipe.
//!
//! # Wire format
//! Every message is a 4-byte big-endian length followed by that many bytes.
//! [`Connection::send`] encodes a serde value with `postcard` into one
//! frame; [`Connection::send_bytes`] sends raw bytes. A frame longer than
//! the connection's maximum (default [`DEFAULT_MAX_MESSAGE_SIZE`]) is
//! refused on both sides: the sender never writes it, and the receiver
//! rejects the header before allocating anything.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{socketpair, AddressFamily, MsgFlags, SockFlag, SockType};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::process::spin::CONNECTION_SPIN;
use crate::process::{closefork, current, sys};
use crate::{Error, Result};

/// The default largest message a [`Connection`] sends or accepts: 32 MiB.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 32 << 20;

const HEADER: usize = 4;
const READ_BUF: usize = 64 * 1024;

/// One end of a [`pipe`] (or of a [`Listener`](crate::process::Listener) /
/// [`Client`](crate::process::Client) connection): Python's
/// `multiprocessing.connection.Connection`.
///
/// Messages are whole frames: `recv` returns exactly what one `send` sent,
/// or a clear error — [`Error::Eof`] when the peer closed between messages,
/// [`Error::TruncatedFrame`] when it closed in the middle of one,
/// [`Error::MessageTooLarge`] when a frame exceeds the maximum.
///
/// The descriptor is `O_CLOEXEC`. After a `fork` both processes hold both
/// ends; see [`close_on_fork`](Self::close_on_fork) for closing the
/// parent's end in children, and move the child's end into the child's
/// closure so that the parent drops it when the child starts.
///
/// ```
/// use socketserver::process::pipe;
/// use socketserver::Error;
///
/// let (mut a, mut b) = pipe(true)?;
/// a.send(&("job", 7u32))?;
/// assert_eq!(b.recv::<(String, u32)>()?, ("job".to_string(), 7));
/// b.send_bytes(b"raw")?;
/// assert_eq!(a.recv_bytes()?, b"raw");
/// drop(b);
/// // The peer closed between messages: a clear end of file.
/// assert!(matches!(a.recv::<u32>(), Err(Error::Eof)));
/// # Ok::<(), socketserver::Error>(())
/// ```
pub struct Connection {
    fd: Option<OwnedFd>,
    readable: bool,
    writable: bool,
    socket: bool,
    max: usize,
    /// Received bytes not yet consumed: `rbuf[start..end]`.
    rbuf: Box<[u8]>,
    start: usize,
    end: usize,
    wbuf: Vec<u8>,
    /// Opt-in send buffering: frames collected here, written together.
    send_buffer: usize,
    pending: Vec<u8>,
    /// Pid that queued `pending` (a forked copy must not send it again).
    pending_owner: i32,
    /// After an oversize header the stream is out of sync: reads stop.
    read_broken: bool,
    /// `Some((pid, slot))` after `close_on_fork`: only `pid` may use the fd.
    parent_only: Option<(i32, Option<usize>)>,
    /// Reads fail with `Error::Timeout` past this instant (the handshake).
    deadline: Option<(Instant, Duration)>,
    /// Whether a receive that finds nothing buffered waits actively for
    /// `CONNECTION_SPIN` before sleeping in `read`.
    recv_spin: bool,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("fd", &self.fd.as_ref().map(AsRawFd::as_raw_fd))
            .field("readable", &self.readable)
            .field("writable", &self.writable)
            .field("max_message_size", &self.max)
            .field("buffered_in", &(self.end - self.start))
            .field("pending_out", &self.pending.len())
            .finish()
    }
}

/// Creates a connected pair: Python's `multiprocessing.Pipe(duplex)`.
///
/// With `duplex = true` both ends send and receive (a Unix socketpair).
/// With `duplex = false` the first end only receives and the second only
/// sends (a pipe), as in Python.
///
/// ```
/// use socketserver::process::{pipe, Process};
///
/// let (mut parent, mut child) = pipe(true)?;
/// let mut p = Process::new(move || {
///     let question: String = child.recv().unwrap_or_default();
///     let _ = child.send(&question.len());
/// });
/// p.start()?; // the parent's copy of `child` is dropped here
/// parent.send(&"hello".to_string())?;
/// assert_eq!(parent.recv::<usize>()?, 5);
/// p.join()?;
/// # Ok::<(), socketserver::Error>(())
/// ```
///
/// # Errors
/// [`Error::Io`] if the descriptors cannot be created (`EMFILE`, …).
#[doc(alias = "Pipe")]
pub fn pipe(duplex: bool) -> Result<(Connection, Connection)> {
    if duplex {
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::Stream,
            None,
            SockFlag::SOCK_CLOEXEC,
        )?;
        Ok((
            Connection::new(a, true, true, true),
            Connection::new(b, true, true, true),
        ))
    } else {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        Ok((
            Connection::new(r, true, false, false),
            Connection::new(w, false, true, false),
        ))
    }
}

impl Connection {
    pub(crate) fn new(fd: OwnedFd, readable: bool, writable: bool, socket: bool) -> Self {
        Connection {
            fd: Some(fd),
            readable,
            writable,
            socket,
            max: DEFAULT_MAX_MESSAGE_SIZE,
            rbuf: vec![0; READ_BUF].into_boxed_slice(),
            start: 0,
            end: 0,
            wbuf: Vec::new(),
            send_buffer: 0,
            pending: Vec::new(),
            pending_owner: 0,
            read_broken: false,
            parent_only: None,
            deadline: None,
            recv_spin: true,
        }
    }

    /// Wraps a connected stream socket (TCP or Unix), without any
    /// handshake. [`Listener`](crate::process::Listener) and
    /// [`Client`](crate::process::Client) use this after authenticating.
    pub fn from_socket(fd: OwnedFd) -> Self {
        Self::new(fd, true, true, true)
    }

    /// Makes every read fail with [`Error::Timeout`] once `timeout` from now
    /// has passed (`None` lifts it, and so does a timeout too long to add
    /// to the clock, such as `Duration::MAX`). Bounds the whole authkey
    /// handshake, so a peer dribbling one byte at a time cannot stretch it.
    pub(crate) fn set_read_deadline(&mut self, timeout: Option<Duration>) {
        self.deadline = timeout.and_then(|t| Some((Instant::now().checked_add(t)?, t)));
    }

    /// Waits for readability until the deadline, if one is set.
    fn await_deadline(&self) -> Result<()> {
        if let (Some((at, total)), Some(fd)) = (self.deadline, self.fd.as_ref()) {
            let left = at.saturating_duration_since(Instant::now());
            if left.is_zero() || !sys::wait_readable(fd.as_fd(), Some(left))? {
                return Err(Error::Timeout(total));
            }
        }
        Ok(())
    }

    /// Whether a receive that finds nothing buffered first waits actively
    /// (for `spin::CONNECTION_SPIN`) before sleeping in `read`; on by
    /// default. Off for connections whose owner runs its own wait policy
    /// (the pool's dispatcher and workers).
    pub(crate) fn set_recv_spin(&mut self, on: bool) {
        self.recv_spin = on;
    }

    /// The largest message this end sends or accepts.
    pub fn max_message_size(&self) -> usize {
        self.max
    }

    /// Sets the largest message this end sends or accepts (at most
    /// `u32::MAX`, the frame header's limit). Set the same value on both
    /// ends. Default is [`DEFAULT_MAX_MESSAGE_SIZE`] (32 MiB).
    pub fn set_max_message_size(&mut self, max: usize) {
        self.max = max.min(u32::MAX as usize);
    }

    /// Whether this end can receive (false for the sending end of a
    /// one-way pipe, and after `close`).
    pub fn readable(&self) -> bool {
        self.readable && self.fd.is_some()
    }

    /// Whether this end can send.
    pub fn writable(&self) -> bool {
        self.writable && self.fd.is_some()
    }

    /// The underlying descriptor, for polling many connections at once
    /// (Python's `fileno()`); `None` after `close`.
    pub fn fileno(&self) -> Option<BorrowedFd<'_>> {
        self.live_fd().ok()
    }

    /// Whether `close` was called (or the connection was handed to a child
    /// with [`close_on_fork`](Self::close_on_fork) and this is the child).
    pub fn closed(&self) -> bool {
        self.live_fd().is_err()
    }

    /// Marks this end as the parent's: every child forked afterwards through
    /// this crate ([`Process`](crate::process::Process), [`fork_child`](crate::process::fork_child))
    /// closes it right after the fork. Linux has no `O_CLOFORK`; this is
    /// that flag for our own forks. Without it, a child waiting for
    /// end-of-file on its end would wait forever, since it holds the
    /// parent's end open itself. In such a child this value reports
    /// [`Error::Closed`] and its drop does not touch the descriptor number.
    ///
    /// Forks done outside this crate do not see the mark.
    pub fn close_on_fork(&mut self) {
        if self.parent_only.is_some() {
            return;
        }
        if let Some(fd) = &self.fd {
            let me = current::cached_pid();
            let slot = closefork::register(me, fd.as_raw_fd());
            if slot.is_none() {
                tracing::warn!("close-on-fork table full; descriptor stays open in children");
            }
            self.parent_only = Some((me, slot));
        }
    }

    /// Opts in to send buffering: messages are collected in memory and
    /// written with one system call once `bytes` are pending, on
    /// [`flush`](Self::flush), before this end blocks in a receive, and on
    /// `close`/drop. Default is `0`: every send is written at once, as in
    /// Python — use buffering for one-way streams of small messages, where
    /// one `write` per message is the bottleneck.
    ///
    /// Pending messages are not inherited: a forked child's copy of this
    /// value drops them instead of sending them a second time.
    ///
    /// # Errors
    /// Shrinking the buffer flushes what is pending; see [`flush`](Self::flush).
    pub fn set_send_buffer(&mut self, bytes: usize) -> Result<()> {
        if bytes < self.pending.len() {
            self.flush()?;
        }
        self.send_buffer = bytes;
        Ok(())
    }

    /// Writes any messages held back by [`set_send_buffer`](Self::set_send_buffer).
    ///
    /// # Errors
    /// As [`send_bytes`](Self::send_bytes); the pending messages are
    /// dropped on error.
    pub fn flush(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        if self.pending_owner != current::cached_pid() {
            self.pending.clear();
            return Ok(());
        }
        let data = std::mem::take(&mut self.pending);
        let result = self.write_all(&data);
        self.pending = data;
        self.pending.clear();
        result
    }

    /// Sends one complete frame, directly or through the send buffer.
    fn emit(&mut self, frame: &[u8]) -> Result<()> {
        if self.send_buffer == 0 {
            return self.write_all(frame);
        }
        if self.pending.len() + frame.len() > self.send_buffer {
            self.flush()?;
        }
        if frame.len() >= self.send_buffer {
            return self.write_all(frame);
        }
        if self.pending.is_empty() {
            self.pending_owner = current::cached_pid();
        }
        self.pending.extend_from_slice(frame);
        Ok(())
    }

    /// Closes this end (Python's `close()`), after sending what
    /// [`set_send_buffer`](Self::set_send_buffer) held back (best effort);
    /// later calls fail with [`Error::Closed`]. Closing twice is harmless.
    pub fn close(&mut self) {
        if self.fd.is_some() && !self.pending.is_empty() {
            let _ = self.flush();
        }
        if let Some((owner, slot)) = self.parent_only {
            if owner != current::cached_pid() {
                // A child's copy: the descriptor was closed at fork.
                if let Some(fd) = self.fd.take() {
                    std::mem::forget(fd);
                }
                return;
            }
            if let Some(slot) = slot {
                closefork::unregister(slot);
            }
            self.parent_only = None;
        }
        self.fd = None;
        self.start = 0;
        self.end = 0;
    }

    fn live_fd(&self) -> Result<BorrowedFd<'_>> {
        let fd = self.fd.as_ref().ok_or(Error::Closed)?;
        if let Some((owner, _)) = self.parent_only {
            if owner != current::cached_pid() {
                return Err(Error::Closed);
            }
        }
        Ok(fd.as_fd())
    }

    /// Serializes `value` with postcard and sends it as one message.
    ///
    /// # Errors
    /// [`Error::MessageTooLarge`] if the encoding exceeds the maximum
    /// (nothing is sent); [`Error::Codec`] if serde fails; [`Error::Closed`]
    /// after `close`; [`Error::InvalidArgument`] on a receive-only end;
    /// [`Error::Io`] (for example `BrokenPipe`) if the peer is gone.
    pub fn send<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<()> {
        self.check_writable()?;
        let mut buf = std::mem::take(&mut self.wbuf);
        buf.clear();
        buf.extend_from_slice(&[0; HEADER]);
        let mut buf = postcard::to_extend(value, buf)?;
        let len = buf.len() - HEADER;
        let result = self.check_len(len).and_then(|()| {
            buf[..HEADER].copy_from_slice(&(len as u32).to_be_bytes());
            self.emit(&buf)
        });
        if buf.capacity() <= READ_BUF {
            self.wbuf = buf;
        }
        result
    }

    /// Sends `bytes` as one message: Python's `send_bytes`.
    ///
    /// # Errors
    /// As [`send`](Self::send), minus the codec error.
    pub fn send_bytes(&mut self, bytes: &[u8]) -> Result<()> {
        self.check_writable()?;
        self.check_len(bytes.len())?;
        let header = (bytes.len() as u32).to_be_bytes();
        if bytes.len() <= READ_BUF {
            let mut buf = std::mem::take(&mut self.wbuf);
            buf.clear();
            buf.extend_from_slice(&header);
            buf.extend_from_slice(bytes);
            let result = self.emit(&buf);
            self.wbuf = buf;
            result
        } else {
            self.flush()?;
            self.write_all(&header)?;
            self.write_all(bytes)
        }
    }

    /// Receives one message and decodes it with postcard.
    ///
    /// # Errors
    /// [`Error::Eof`] if the peer closed between messages;
    /// [`Error::TruncatedFrame`] if it closed mid-message;
    /// [`Error::MessageTooLarge`] if the frame header exceeds the maximum
    /// (the receiving side then stops reading: later calls give
    /// [`Error::Closed`], since the stream is out of step);
    /// [`Error::Codec`] if the bytes do not decode as `T` or hold bytes
    /// after it;
    /// [`Error::Closed`] after `close`; [`Error::InvalidArgument`] on a
    /// send-only end; [`Error::Io`] on other failures.
    pub fn recv<T: DeserializeOwned>(&mut self) -> Result<T> {
        let len = self.read_header()?;
        if self.end - self.start >= len {
            // The whole frame is buffered: decode in place, no allocation.
            let frame = &self.rbuf[self.start..self.start + len];
            self.start += len;
            return decode_whole(frame);
        }
        let mut bytes = Vec::new();
        self.read_payload(len, &mut bytes)?;
        decode_whole(&bytes)
    }

    /// Receives one message's bytes: Python's `recv_bytes`.
    ///
    /// # Errors
    /// As [`recv`](Self::recv), minus the codec error.
    pub fn recv_bytes(&mut self) -> Result<Vec<u8>> {
        let len = self.read_header()?;
        if self.end - self.start >= len {
            // The whole frame is buffered (the usual case for a stream of
            // small messages): one copy, no zero-fill first.
            let out = self.rbuf[self.start..self.start + len].to_vec();
            self.start += len;
            return Ok(out);
        }
        let mut out = Vec::new();
        self.read_payload(len, &mut out)?;
        Ok(out)
    }

    /// Receives one message's bytes into `buf`, replacing its contents, and
    /// returns the message's length: Python's `recv_bytes_into`. Reusing
    /// one buffer for many messages saves an allocation per message and,
    /// for large messages, the page faults of fresh memory.
    ///
    /// # Errors
    /// As [`recv_bytes`](Self::recv_bytes). After an error, `buf` holds
    /// unspecified bytes.
    pub fn recv_bytes_into(&mut self, buf: &mut Vec<u8>) -> Result<usize> {
        let len = self.read_header()?;
        self.read_payload(len, buf)?;
        Ok(len)
    }

    /// Whether a message (or end-of-file) can be read without blocking,
    /// waiting at most `timeout`: Python's `poll(timeout)`. A zero timeout
    /// only checks. It does not send messages held back by
    /// [`set_send_buffer`](Self::set_send_buffer): call
    /// [`flush`](Self::flush) first when the peer must answer them.
    ///
    /// # Errors
    /// [`Error::Closed`] after `close`; [`Error::InvalidArgument`] on a
    /// send-only end; [`Error::Io`] if `poll` fails.
    pub fn poll(&self, timeout: Duration) -> Result<bool> {
        self.check_readable()?;
        if self.end > self.start {
            return Ok(true);
        }
        sys::wait_readable(self.live_fd()?, Some(timeout))
    }

    /// Like [`poll`](Self::poll), but waits actively: checks again and
    /// again, never sleeping, for at most `budget`. Use it right before a
    /// blocking [`recv`](Self::recv) when the peer usually answers within
    /// microseconds: a sleeping reader pays a scheduler wake-up (tens of
    /// microseconds on a busy VM) that an active one does not. It burns
    /// up to `budget` of CPU, yielding the CPU every few rounds.
    ///
    /// # Errors
    /// As [`poll`](Self::poll).
    pub fn poll_spin(&self, budget: Duration) -> Result<bool> {
        self.check_readable()?;
        if self.end > self.start {
            return Ok(true);
        }
        crate::process::spin::spin_readable(self.live_fd()?, budget)
    }

    fn check_len(&self, len: usize) -> Result<()> {
        if len > self.max {
            return Err(Error::MessageTooLarge { len, max: self.max });
        }
        Ok(())
    }

    fn check_writable(&self) -> Result<()> {
        self.live_fd()?;
        if !self.writable {
            return Err(Error::InvalidArgument(
                "this end of the pipe is receive-only".into(),
            ));
        }
        Ok(())
    }

    fn check_readable(&self) -> Result<()> {
        self.live_fd()?;
        if !self.readable {
            return Err(Error::InvalidArgument(
                "this end of the pipe is send-only".into(),
            ));
        }
        if self.read_broken {
            return Err(Error::Closed);
        }
        Ok(())
    }

    fn write_all(&self, mut data: &[u8]) -> Result<()> {
        let fd = self.live_fd()?;
        while !data.is_empty() {
            let n = if self.socket {
                // MSG_NOSIGNAL: a vanished peer is EPIPE, not a SIGPIPE.
                nix::sys::socket::send(fd.as_raw_fd(), data, MsgFlags::MSG_NOSIGNAL)
            } else {
                nix::unistd::write(fd, data)
            };
            match n {
                Ok(0) => return Err(std::io::Error::from(std::io::ErrorKind::WriteZero).into()),
                Ok(n) => data = &data[n..],
                Err(Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Reads more bytes into the buffer; returns how many (0 = EOF).
    fn fill(&mut self) -> Result<usize> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.end == self.rbuf.len() {
            self.rbuf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.deadline.is_none() && self.recv_spin {
            // Keeping up with a stream, the next message usually comes
            // within microseconds: wait actively for a short budget
            // before sleeping in `read` (see `process::spin`). While we
            // spin, the writer has no sleeper to wake.
            let fd = self.fd.as_ref().ok_or(Error::Closed)?;
            crate::process::spin::spin_readable(fd.as_fd(), CONNECTION_SPIN)?;
        }
        loop {
            self.await_deadline()?;
            let fd = self.fd.as_ref().ok_or(Error::Closed)?;
            match nix::unistd::read(fd, &mut self.rbuf[self.end..]) {
                Ok(n) => {
                    self.end += n;
                    return Ok(n);
                }
                Err(Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn read_header(&mut self) -> Result<usize> {
        self.check_readable()?;
        if !self.pending.is_empty() && self.end - self.start < HEADER {
            // About to block: the peer may be waiting for what we hold.
            self.flush()?;
        }
        while self.end - self.start < HEADER {
            if self.fill()? == 0 {
                let got = self.end - self.start;
                if got == 0 {
                    return Err(Error::Eof);
                }
                self.start = self.end;
                return Err(Error::TruncatedFrame {
                    expected: HEADER,
                    got,
                });
            }
        }
        let mut header = [0u8; HEADER];
        header.copy_from_slice(&self.rbuf[self.start..self.start + HEADER]);
        let len = u32::from_be_bytes(header) as usize;
        if len > self.max {
            // Stop reading: the payload that follows cannot be skipped
            // safely without trusting the peer.
            self.read_broken = true;
            self.start = 0;
            self.end = 0;
            return Err(Error::MessageTooLarge { len, max: self.max });
        }
        self.start += HEADER;
        Ok(len)
    }

    /// Reads a `len`-byte payload into `out` (whose old contents are
    /// overwritten, not zeroed first: a reused buffer costs no `memset`).
    ///
    /// A buffer too small for `len` grows with the bytes that arrive
    /// (doubling, from [`READ_BUF`]), not to the length the header
    /// declares: a peer that sends a header for 32 MiB and then a few
    /// bytes, or nothing, holds 64 KiB of ours, not 32 MiB.
    fn read_payload(&mut self, len: usize, out: &mut Vec<u8>) -> Result<()> {
        let buffered = (self.end - self.start).min(len);
        if out.len() < len {
            let first = len.min(buffered.max(out.len()).max(READ_BUF));
            out.resize(first, 0);
        } else {
            out.truncate(len);
        }
        out[..buffered].copy_from_slice(&self.rbuf[self.start..self.start + buffered]);
        self.start += buffered;
        let mut got = buffered;
        while got < len {
            if got == out.len() {
                out.resize(len.min(got.saturating_mul(2)), 0);
            }
            self.await_deadline()?;
            let fd = self.fd.as_ref().ok_or(Error::Closed)?;
            match nix::unistd::read(fd, &mut out[got..]) {
                Ok(0) => return Err(Error::TruncatedFrame { expected: len, got }),
                Ok(n) => got += n,
                Err(Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}

/// Decodes a message that must fill its frame exactly: `postcard::from_bytes`
/// alone ignores bytes after the value, so a frame with garbage appended
/// would decode (found by the `connection_frames` fuzz target).
fn decode_whole<T: DeserializeOwned>(frame: &[u8]) -> Result<T> {
    let (value, rest) = postcard::take_from_bytes(frame)?;
    if !rest.is_empty() {
        return Err(Error::Codec(format!(
            "{} bytes left over after the message",
            rest.len()
        )));
    }
    Ok(value)
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.close();
    }
}
