//! Request handlers: the code a user writes.
//!
//! Python's `socketserver` has `StreamRequestHandler` and
//! `DatagramRequestHandler`, both exposing `rfile` and `wfile`. Here a single
//! [`RequestHandler`] trait serves both: a [`Request`] hands out an [`RFile`]
//! (buffered reader) and a [`WFile`] (writer) whether the request is a
//! connected stream (TCP, Unix stream) or one datagram (UDP, Unix datagram).
//! That is what lets one handler type run unchanged under every server.
//!
//! For a stream, `wfile` writes go straight to the socket and are sent in
//! full (no flush needed). For a datagram, `rfile` reads the packet and
//! `wfile` fills the reply, which the server sends back once the handler
//! finishes — even when it is empty, as Python does.
//!
//! ```
//! use std::io::{self, BufRead, Write};
//! use socketserver::{Request, RequestHandler};
//!
//! /// Echoes every line back.
//! struct Echo;
//!
//! impl RequestHandler for Echo {
//!     fn handle(&mut self, req: &mut Request) -> io::Result<()> {
//!         let mut line = Vec::new();
//!         while req.rfile().read_until(b'\n', &mut line)? > 0 {
//!             req.wfile().write_all(&line)?;
//!             line.clear();
//!         }
//!         Ok(())
//!     }
//! }
//! ```

use std::fmt;
use std::io::{self, BufRead, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::net::{SocketAddr as UnixSocketAddr, UnixStream};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::time::Duration;

/// Size of the read buffer behind [`Request::rfile`] for streams.
const RBUF_SIZE: usize = 16 * 1024;

/// The read buffer's size at first. It doubles, up to [`RBUF_SIZE`], each
/// time one read fills it: a connection exchanging small messages keeps a
/// 2 KiB buffer that shares its memory pages with the connection's other
/// small allocations, instead of a 16 KiB one that spread over up to five
/// pages (most of the memory a thread-per-connection costs beyond its
/// stack).
const RBUF_START: usize = 2 * 1024;

/// The code run for each request (each connection, or each datagram).
///
/// The server creates one handler value per request from the factory it was
/// given, then calls [`setup`](Self::setup), [`handle`](Self::handle) and
/// [`finish`](Self::finish). `finish` always runs once `setup` succeeded,
/// even when `handle` failed or panicked (Python's `finally`). An error
/// from any of them is passed to the server's `handle_error` hook (logged
/// with the peer address) and the connection is closed; the server keeps
/// serving. A panic is caught and treated the same way, except that a
/// datagram reply is not sent after one.
#[doc(alias = "BaseRequestHandler")]
#[doc(alias = "StreamRequestHandler")]
#[doc(alias = "DatagramRequestHandler")]
pub trait RequestHandler: Send + 'static {
    /// Runs before [`handle`](Self::handle). Default does nothing.
    ///
    /// # Errors
    /// An error skips `handle` and `finish`.
    fn setup(&mut self, req: &mut Request) -> io::Result<()> {
        let _ = req;
        Ok(())
    }

    /// Serves the request.
    ///
    /// # Errors
    /// Any error is reported through the server's `handle_error` hook.
    fn handle(&mut self, req: &mut Request) -> io::Result<()>;

    /// Runs after [`handle`](Self::handle), whether it succeeded or not.
    /// Default does nothing.
    ///
    /// # Errors
    /// Reported like an error from `handle`.
    fn finish(&mut self, req: &mut Request) -> io::Result<()> {
        let _ = req;
        Ok(())
    }
}

/// Runs `setup`, `handle` and `finish` with the guarantee that `finish` runs
/// once `setup` succeeded. The first error wins.
///
/// # Errors
/// The first error returned by `setup`, `handle` or `finish`.
///
/// # Panics
/// A panic in `handle` is resumed once `finish` has run.
pub fn run_handler<H: RequestHandler + ?Sized>(
    handler: &mut H,
    req: &mut Request,
) -> io::Result<()> {
    lifecycle(handler, req).result
}

/// How one run of the handler life cycle ended.
#[derive(Debug)]
pub(crate) struct Lifecycle {
    /// `setup` succeeded, so `handle` and `finish` ran (a datagram reply is
    /// then sent, as Python's `DatagramRequestHandler.finish` does).
    pub(crate) setup_ok: bool,
    /// The first error of `setup`, `handle` or `finish`.
    pub(crate) result: io::Result<()>,
}

/// The one handler life cycle every strategy runs (through
/// [`run_handler`] or the server core): `setup`, then `handle` and
/// `finish`, with `finish` always run once `setup` succeeded, after a
/// panic in `handle` too (the panic then resumes).
pub(crate) fn lifecycle<H: RequestHandler + ?Sized>(
    handler: &mut H,
    req: &mut Request,
) -> Lifecycle {
    if let Err(e) = handler.setup(req) {
        return Lifecycle {
            setup_ok: false,
            result: Err(e),
        };
    }
    // Python's `try: handle() finally: finish()`: a panic in `handle`
    // runs `finish` too, then goes on to the server, which reports it.
    // `process::exit` is not a failure: it ends the process at once.
    let handled = match catch_unwind(AssertUnwindSafe(|| handler.handle(req))) {
        Ok(r) => r,
        Err(payload) => {
            let payload = crate::process::resume_exit_request(payload);
            // The panic is the first failure; an error from `finish` is
            // not reported over it.
            let _ = handler.finish(req);
            resume_unwind(payload);
        }
    };
    let finished = handler.finish(req);
    Lifecycle {
        setup_ok: true,
        result: handled.and(finished),
    }
}

/// A connected stream socket: TCP or Unix.
#[derive(Debug)]
pub enum Stream {
    /// A TCP connection.
    Tcp(TcpStream),
    /// A Unix-domain stream connection.
    Unix(UnixStream),
}

impl Stream {
    /// Sets the read and write timeouts (`None` blocks forever).
    ///
    /// # Errors
    /// A zero duration is rejected by the OS.
    pub fn set_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => {
                s.set_read_timeout(timeout)?;
                s.set_write_timeout(timeout)
            }
            Stream::Unix(s) => {
                s.set_read_timeout(timeout)?;
                s.set_write_timeout(timeout)
            }
        }
    }

    /// The read timeout (`None`: reads block forever).
    ///
    /// # Errors
    /// The `getsockopt` failed.
    pub fn read_timeout(&self) -> io::Result<Option<Duration>> {
        match self {
            Stream::Tcp(s) => s.read_timeout(),
            Stream::Unix(s) => s.read_timeout(),
        }
    }

    /// Enables or disables `TCP_NODELAY`; a no-op for Unix sockets.
    ///
    /// # Errors
    /// The `setsockopt` failed.
    pub fn set_nodelay(&self, nodelay: bool) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_nodelay(nodelay),
            Stream::Unix(_) => Ok(()),
        }
    }

    /// The local address of a TCP stream (`None` for Unix sockets).
    ///
    /// # Errors
    /// `getsockname` failed.
    pub fn local_addr(&self) -> io::Result<Option<SocketAddr>> {
        match self {
            Stream::Tcp(s) => s.local_addr().map(Some),
            Stream::Unix(_) => Ok(None),
        }
    }

    /// Shuts down the read, write or both halves.
    ///
    /// # Errors
    /// `shutdown` failed (for example the socket is not connected).
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.shutdown(how),
            Stream::Unix(s) => s.shutdown(how),
        }
    }

    /// A second handle on the same connection (`dup`), for example to shut
    /// it down from another thread.
    ///
    /// # Errors
    /// `dup` failed (out of descriptors).
    pub fn try_clone(&self) -> io::Result<Stream> {
        match self {
            Stream::Tcp(s) => s.try_clone().map(Stream::Tcp),
            Stream::Unix(s) => s.try_clone().map(Stream::Unix),
        }
    }

    /// The TCP stream, if this is one.
    pub fn as_tcp(&self) -> Option<&TcpStream> {
        match self {
            Stream::Tcp(s) => Some(s),
            Stream::Unix(_) => None,
        }
    }

    /// The Unix stream, if this is one.
    pub fn as_unix(&self) -> Option<&UnixStream> {
        match self {
            Stream::Unix(s) => Some(s),
            Stream::Tcp(_) => None,
        }
    }
}

/// A read or write that gave up after the socket's timeout fails with
/// `WouldBlock`, whose message ("Resource temporarily unavailable") reads
/// like a bug in the server's log line: say what happened instead,
/// keeping the kind. Only on the error path, so it costs nothing else.
fn explain_timeout(e: io::Error, timeout: io::Result<Option<Duration>>, what: &str) -> io::Error {
    match (e.kind(), timeout) {
        (io::ErrorKind::WouldBlock, Ok(Some(t))) => {
            io::Error::new(e.kind(), format!("{what} within the timeout ({t:?})"))
        }
        _ => e,
    }
}

impl Read for &Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => (&*s).read(buf),
            Stream::Unix(s) => (&*s).read(buf),
        }
        .map_err(|e| explain_timeout(e, self.read_timeout(), "the peer sent nothing"))
    }
}

impl Write for &Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => (&*s).write(buf),
            Stream::Unix(s) => (&*s).write(buf),
        }
        .map_err(|e| {
            let timeout = match self {
                Stream::Tcp(s) => s.write_timeout(),
                Stream::Unix(s) => s.write_timeout(),
            };
            explain_timeout(e, timeout, "the peer read nothing")
        })
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AsFd for Stream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Stream::Tcp(s) => s.as_fd(),
            Stream::Unix(s) => s.as_fd(),
        }
    }
}

impl AsRawFd for Stream {
    fn as_raw_fd(&self) -> RawFd {
        self.as_fd().as_raw_fd()
    }
}

impl From<TcpStream> for Stream {
    fn from(s: TcpStream) -> Self {
        Stream::Tcp(s)
    }
}

impl From<UnixStream> for Stream {
    fn from(s: UnixStream) -> Self {
        Stream::Unix(s)
    }
}

/// Who sent a request.
#[derive(Debug, Clone)]
pub enum PeerAddr {
    /// An IPv4 or IPv6 peer.
    Inet(SocketAddr),
    /// A Unix-domain peer (often unnamed).
    Unix(UnixSocketAddr),
}

impl PeerAddr {
    /// The IP socket address, if this is an Internet peer.
    pub fn as_inet(&self) -> Option<SocketAddr> {
        match self {
            PeerAddr::Inet(a) => Some(*a),
            PeerAddr::Unix(_) => None,
        }
    }
}

impl fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerAddr::Inet(a) => write!(f, "{a}"),
            PeerAddr::Unix(a) => match a.as_pathname() {
                Some(p) => write!(f, "unix:{}", p.display()),
                None => f.write_str("unix:(unnamed)"),
            },
        }
    }
}

impl From<SocketAddr> for PeerAddr {
    fn from(a: SocketAddr) -> Self {
        PeerAddr::Inet(a)
    }
}

impl From<UnixSocketAddr> for PeerAddr {
    fn from(a: UnixSocketAddr) -> Self {
        PeerAddr::Unix(a)
    }
}

/// Buffered read state for a stream request.
struct ReadBuf {
    /// `RBUF_START` bytes at first, growing to [`RBUF_SIZE`].
    buf: Vec<u8>,
    pos: usize,
    len: usize,
}

/// A fresh read buffer of the starting size, for
/// [`Request::from_stream_with_buffer`]: the forking server allocates one
/// in the parent, once, and each child reads through its own copy of it
/// instead of allocating (see `strategy/forking.rs`).
pub(crate) fn read_buffer() -> Vec<u8> {
    vec![0; RBUF_START]
}

impl ReadBuf {
    fn new() -> ReadBuf {
        ReadBuf::with(read_buffer())
    }

    /// Reads through `buf`, resized to the starting size (its contents
    /// do not matter: every read overwrites what it returns).
    fn with(mut buf: Vec<u8>) -> ReadBuf {
        buf.resize(RBUF_START, 0);
        ReadBuf {
            buf,
            pos: 0,
            len: 0,
        }
    }

    /// Reads once from `stream` into the (empty) buffer, which grows when
    /// the read filled it.
    fn refill(&mut self, stream: impl Read) -> io::Result<usize> {
        let n = read_retrying(stream, &mut self.buf)?;
        self.pos = 0;
        self.len = n;
        if n == self.buf.len() && n < RBUF_SIZE {
            self.buf.resize((2 * n).min(RBUF_SIZE), 0);
        }
        Ok(n)
    }
}

/// One `read`, restarted when a signal interrupted it (`EINTR`), as
/// Python does for every socket call (PEP 475): a signal the handler did
/// not ask for — the prefork watcher's wake-up of a worker that had just
/// accepted, a signal handler of the program — must not end a request
/// with an `Interrupted` error from `rfile`.
fn read_retrying(mut stream: impl Read, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match stream.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

enum Inner {
    Stream {
        stream: Stream,
        rbuf: ReadBuf,
    },
    Datagram {
        packet: Vec<u8>,
        pos: usize,
        reply: Vec<u8>,
    },
}

/// One request as a handler sees it: a connection or a datagram.
pub struct Request {
    inner: Inner,
    peer: PeerAddr,
    /// Bytes read from the peer so far (the whole packet for a datagram).
    rx: u64,
    /// Bytes written to the peer (or into the datagram reply) so far.
    tx: u64,
}

impl fmt::Debug for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.inner {
            Inner::Stream { .. } => "stream",
            Inner::Datagram { .. } => "datagram",
        };
        f.debug_struct("Request")
            .field("kind", &kind)
            .field("peer", &self.peer)
            .finish()
    }
}

impl Request {
    /// Wraps an accepted connection.
    pub fn from_stream(stream: impl Into<Stream>, peer: impl Into<PeerAddr>) -> Self {
        Request {
            inner: Inner::Stream {
                stream: stream.into(),
                rbuf: ReadBuf::new(),
            },
            peer: peer.into(),
            rx: 0,
            tx: 0,
        }
    }

    /// [`from_stream`](Self::from_stream) reading through `buf` (see
    /// [`read_buffer`]) instead of a newly allocated buffer.
    pub(crate) fn from_stream_with_buffer(
        stream: impl Into<Stream>,
        peer: impl Into<PeerAddr>,
        buf: Vec<u8>,
    ) -> Self {
        Request {
            inner: Inner::Stream {
                stream: stream.into(),
                rbuf: ReadBuf::with(buf),
            },
            peer: peer.into(),
            rx: 0,
            tx: 0,
        }
    }

    /// Wraps a received datagram; the reply starts empty.
    pub fn from_datagram(packet: Vec<u8>, peer: impl Into<PeerAddr>) -> Self {
        Request {
            rx: packet.len() as u64,
            tx: 0,
            inner: Inner::Datagram {
                packet,
                pos: 0,
                reply: Vec::new(),
            },
            peer: peer.into(),
        }
    }

    /// Bytes received from the peer so far: what `rfile` read from the
    /// connection, or the whole packet of a datagram.
    pub fn bytes_received(&self) -> u64 {
        self.rx
    }

    /// Bytes sent to the peer so far through `wfile` (for a datagram: put
    /// into the reply).
    pub fn bytes_sent(&self) -> u64 {
        self.tx
    }

    /// Who sent the request.
    pub fn peer_addr(&self) -> &PeerAddr {
        &self.peer
    }

    /// Replaces the peer address, for a layer that learns the real client
    /// from the connection itself (a PROXY protocol header behind a load
    /// balancer).
    pub fn set_peer_addr(&mut self, peer: impl Into<PeerAddr>) {
        self.peer = peer.into();
    }

    /// `true` for a datagram request.
    pub fn is_datagram(&self) -> bool {
        matches!(self.inner, Inner::Datagram { .. })
    }

    /// The connected socket of a stream request (`None` for datagrams).
    pub fn stream(&self) -> Option<&Stream> {
        match &self.inner {
            Inner::Stream { stream, .. } => Some(stream),
            Inner::Datagram { .. } => None,
        }
    }

    /// The whole datagram (`None` for streams).
    pub fn packet(&self) -> Option<&[u8]> {
        match &self.inner {
            Inner::Datagram { packet, .. } => Some(packet),
            Inner::Stream { .. } => None,
        }
    }

    /// The reply buffer of a datagram request (`None` for streams).
    pub fn reply_mut(&mut self) -> Option<&mut Vec<u8>> {
        match &mut self.inner {
            Inner::Datagram { reply, .. } => Some(reply),
            Inner::Stream { .. } => None,
        }
    }

    /// Takes the datagram reply, leaving it empty (`None` for streams).
    pub fn take_reply(&mut self) -> Option<Vec<u8>> {
        self.reply_mut().map(std::mem::take)
    }

    /// Sets the read and write timeout of a stream request; a read or write
    /// that waits longer fails with `WouldBlock`/`TimedOut`. A no-op for
    /// datagrams. Default is no timeout.
    ///
    /// # Errors
    /// A zero duration is rejected by the OS.
    pub fn set_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        match &self.inner {
            Inner::Stream { stream, .. } => stream.set_timeout(timeout),
            Inner::Datagram { .. } => Ok(()),
        }
    }

    /// Enables `TCP_NODELAY` (send small writes at once). A no-op for Unix
    /// sockets and datagrams. Default is the OS default (off).
    ///
    /// # Errors
    /// The `setsockopt` failed.
    pub fn set_nodelay(&mut self, nodelay: bool) -> io::Result<()> {
        match &self.inner {
            Inner::Stream { stream, .. } => stream.set_nodelay(nodelay),
            Inner::Datagram { .. } => Ok(()),
        }
    }

    /// The buffered reader: the connection's incoming bytes, or the packet.
    pub fn rfile(&mut self) -> RFile<'_> {
        self.split().0
    }

    /// The writer: straight to the connection (sent in full, no flush
    /// needed), or into the datagram's reply.
    pub fn wfile(&mut self) -> WFile<'_> {
        self.split().1
    }

    /// Both halves at once, for example for `io::copy(&mut r, &mut w)`.
    pub fn split(&mut self) -> (RFile<'_>, WFile<'_>) {
        match &mut self.inner {
            Inner::Stream { stream, rbuf } => (
                RFile(RInner::Stream {
                    stream: &*stream,
                    rbuf,
                    rx: &mut self.rx,
                }),
                WFile(WInner::Stream(&*stream), &mut self.tx),
            ),
            Inner::Datagram { packet, pos, reply } => (
                RFile(RInner::Datagram { packet, pos }),
                WFile(WInner::Datagram(reply), &mut self.tx),
            ),
        }
    }

    /// Gives back the socket of a stream request (unread buffered bytes are
    /// dropped), for handlers that hand a connection elsewhere.
    pub fn into_stream(self) -> Option<Stream> {
        match self.inner {
            Inner::Stream { stream, .. } => Some(stream),
            Inner::Datagram { .. } => None,
        }
    }

    /// [`into_stream`](Self::into_stream), and the read buffer of a stream
    /// request, for a caller that would rather not free it (a forked child
    /// about to `_exit`).
    pub(crate) fn into_stream_and_buffer(self) -> (Option<Stream>, Option<Vec<u8>>) {
        match self.inner {
            Inner::Stream { stream, rbuf } => (Some(stream), Some(rbuf.buf)),
            Inner::Datagram { .. } => (None, None),
        }
    }
}

enum RInner<'a> {
    Stream {
        stream: &'a Stream,
        rbuf: &'a mut ReadBuf,
        rx: &'a mut u64,
    },
    Datagram {
        packet: &'a [u8],
        pos: &'a mut usize,
    },
}

/// The buffered reading half of a [`Request`] (Python's `rfile`).
pub struct RFile<'a>(RInner<'a>);

impl fmt::Debug for RFile<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RFile")
    }
}

/// What [`RFile::read_line_bounded`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Line {
    /// A whole line (ending in `\n`) of this many bytes was appended.
    Complete(usize),
    /// End of file before a newline; this many bytes were appended.
    Partial(usize),
    /// End of file with nothing read.
    Eof,
    /// The line was longer than the limit: it was read and discarded up to
    /// and including its newline (or end of file), and nothing was appended.
    TooLong,
}

impl RFile<'_> {
    /// Reads one line into `out`, but never buffers more than `max` bytes of
    /// it: an over-long line is consumed and discarded, so a peer cannot
    /// make the server's memory grow without end.
    ///
    /// # Errors
    /// An I/O error from the socket, including a read timeout.
    pub fn read_line_bounded(&mut self, out: &mut Vec<u8>, max: usize) -> io::Result<Line> {
        read_line_bounded(self, out, max)
    }
}

/// Reads one line from any buffered reader into `out`, keeping at most
/// `max` bytes of it, as [`RFile::read_line_bounded`] does for a request:
/// an over-long line is consumed and discarded, so a peer cannot make the
/// server's memory grow without end. Use it for a stream you wrap yourself
/// (e.g. a TLS session over the request's socket). An `UnexpectedEof` error
/// from the reader (a TLS peer that closed without `close_notify`) counts
/// as end of file.
///
/// # Errors
/// An I/O error from the reader, including a read timeout.
pub fn read_line_bounded<R: BufRead + ?Sized>(
    r: &mut R,
    out: &mut Vec<u8>,
    max: usize,
) -> io::Result<Line> {
    let start = out.len();
    let mut too_long = false;
    loop {
        let chunk = match r.fill_buf() {
            Ok(c) => c,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => &[][..],
            Err(e) => return Err(e),
        };
        if chunk.is_empty() {
            let n = out.len() - start;
            return Ok(if too_long {
                Line::TooLong
            } else if n == 0 {
                Line::Eof
            } else {
                Line::Partial(n)
            });
        }
        let (take, done) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (chunk.len(), false),
        };
        if !too_long {
            if out.len() - start + take > max {
                too_long = true;
                out.truncate(start);
            } else {
                out.extend_from_slice(&chunk[..take]);
            }
        }
        r.consume(take);
        if done {
            return Ok(if too_long {
                Line::TooLong
            } else {
                Line::Complete(out.len() - start)
            });
        }
    }
}

impl Read for RFile<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let RInner::Stream { stream, rbuf, rx } = &mut self.0 {
            // Large reads with an empty buffer bypass it.
            if rbuf.pos == rbuf.len && buf.len() >= rbuf.buf.len() {
                let n = read_retrying(&**stream, buf)?;
                **rx += n as u64;
                return Ok(n);
            }
        }
        let avail = self.fill_buf()?;
        let n = avail.len().min(buf.len());
        buf[..n].copy_from_slice(&avail[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl BufRead for RFile<'_> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        match &mut self.0 {
            RInner::Stream { stream, rbuf, rx } => {
                if rbuf.pos == rbuf.len {
                    let n = rbuf.refill(&**stream)?;
                    **rx += n as u64;
                }
                Ok(&rbuf.buf[rbuf.pos..rbuf.len])
            }
            RInner::Datagram { packet, pos } => Ok(&packet[**pos..]),
        }
    }

    fn consume(&mut self, amt: usize) {
        match &mut self.0 {
            RInner::Stream { rbuf, .. } => rbuf.pos = (rbuf.pos + amt).min(rbuf.len),
            RInner::Datagram { packet, pos } => **pos = (**pos + amt).min(packet.len()),
        }
    }
}

enum WInner<'a> {
    Stream(&'a Stream),
    Datagram(&'a mut Vec<u8>),
}

/// The writing half of a [`Request`] (Python's `wfile`).
///
/// For streams every `write` sends the whole buffer before returning (like
/// Python's `_SocketWriter`), so nothing waits in a buffer for a `flush`.
pub struct WFile<'a>(WInner<'a>, &'a mut u64);

impl fmt::Debug for WFile<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WFile")
    }
}

impl Write for WFile<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.0 {
            WInner::Stream(s) => {
                { &**s }.write_all(buf)?;
            }
            WInner::Datagram(reply) => reply.extend_from_slice(buf),
        }
        *self.1 += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagram_rfile_and_wfile() {
        let peer: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let mut req = Request::from_datagram(b"one\ntwo\n".to_vec(), peer);
        let mut line = String::new();
        req.rfile().read_line(&mut line).unwrap();
        assert_eq!(line, "one\n");
        req.wfile().write_all(line.as_bytes()).unwrap();
        line.clear();
        req.rfile().read_line(&mut line).unwrap();
        assert_eq!(line, "two\n");
        assert_eq!(req.take_reply().unwrap(), b"one\n");
    }

    /// A signal that interrupts a blocked read (no `SA_RESTART`, as the
    /// prefork watcher's wake-up is installed) does not reach the handler
    /// as an `Interrupted` error: `fill_buf` and a large `read` wait on.
    #[test]
    fn reads_restart_after_a_signal() {
        use crate::process::Interruptible;
        use std::sync::mpsc;
        Interruptible::install().unwrap();
        for large in [false, true] {
            let (a, mut b) = UnixStream::pair().unwrap();
            let peer = a.local_addr().unwrap();
            let (tx, rx) = mpsc::channel();
            let reader = std::thread::spawn(move || {
                tx.send(Interruptible::current()).unwrap();
                let mut req = Request::from_stream(a, peer);
                let mut rfile = req.rfile();
                if large {
                    let mut buf = vec![0u8; 1 << 20];
                    rfile.read(&mut buf).map(|n| buf[..n].to_vec())
                } else {
                    rfile.fill_buf().map(<[u8]>::to_vec)
                }
            });
            let thread = rx.recv().unwrap();
            // Interrupt it while it is blocked in the read (repeated: one
            // sent before it blocks is lost).
            for _ in 0..20 {
                std::thread::sleep(Duration::from_millis(5));
                thread.interrupt();
            }
            b.write_all(b"after the signal").unwrap();
            let got = reader.join().unwrap();
            assert_eq!(
                got.map_err(|e| e.kind()),
                Ok(b"after the signal".to_vec()),
                "large read: {large}"
            );
        }
    }

    #[test]
    fn bounded_line_discards_long_lines_and_continues() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let peer = a.local_addr().unwrap();
        let mut req = Request::from_stream(a, peer);
        let long = vec![b'x'; 10_000];
        b.write_all(&long).unwrap();
        b.write_all(b"\nshort\npartial").unwrap();
        drop(b);
        let mut out = Vec::new();
        assert_eq!(
            req.rfile().read_line_bounded(&mut out, 4096).unwrap(),
            Line::TooLong
        );
        assert!(out.is_empty());
        assert_eq!(
            req.rfile().read_line_bounded(&mut out, 4096).unwrap(),
            Line::Complete(6)
        );
        assert_eq!(out, b"short\n");
        out.clear();
        assert_eq!(
            req.rfile().read_line_bounded(&mut out, 4096).unwrap(),
            Line::Partial(7)
        );
        out.clear();
        assert_eq!(
            req.rfile().read_line_bounded(&mut out, 4096).unwrap(),
            Line::Eof
        );
    }

    #[test]
    fn finish_runs_after_failed_handle() {
        struct H(Vec<&'static str>);
        impl RequestHandler for H {
            fn handle(&mut self, _: &mut Request) -> io::Result<()> {
                self.0.push("handle");
                Err(io::Error::other("boom"))
            }
            fn finish(&mut self, _: &mut Request) -> io::Result<()> {
                self.0.push("finish");
                Ok(())
            }
        }
        let peer: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let mut req = Request::from_datagram(Vec::new(), peer);
        let mut h = H(Vec::new());
        assert!(run_handler(&mut h, &mut req).is_err());
        assert_eq!(h.0, ["handle", "finish"]);
    }

    /// The read buffer starts small and doubles up to its full size only
    /// while reads fill it; the bytes read are never lost on the way.
    #[test]
    fn read_buffer_grows_when_reads_fill_it() {
        let mut rb = ReadBuf::new();
        assert_eq!(rb.buf.len(), RBUF_START);
        // A small read leaves it as it is.
        assert_eq!(rb.refill(&b"hello"[..]).unwrap(), 5);
        assert_eq!(rb.buf.len(), RBUF_START);
        assert_eq!(&rb.buf[rb.pos..rb.len], b"hello");
        // Reads that fill it double it, up to RBUF_SIZE.
        let data: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
        let mut src = &data[..];
        let mut got = Vec::new();
        let mut sizes = Vec::new();
        loop {
            let n = rb.refill(&mut src).unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&rb.buf[rb.pos..rb.len]);
            sizes.push(rb.buf.len());
        }
        assert_eq!(got, data);
        assert_eq!(
            &sizes[..4],
            &[2 * RBUF_START, 4 * RBUF_START, 8 * RBUF_START, RBUF_SIZE]
        );
        assert_eq!(rb.buf.len(), RBUF_SIZE);
    }
}
