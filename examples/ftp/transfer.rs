//! Commands that move data: RETR, STOR, APPE, LIST, NLST, MLSD.
//!
//! - RETR streams with non-blocking `sendfile` in 64 KiB slices (TYPE I;
//!   small slices release the socket lock often, which measured faster on
//!   loopback than large blocking ones) or converts
//!   LF to CRLF in 256 KiB chunks (TYPE A): the file is never loaded whole.
//! - STOR writes to an unnamed (`O_TMPFILE`) file in the target's
//!   directory and links it over the target only when the transfer
//!   completed, so an aborted or failed upload leaves the old file
//!   untouched and no temporary file behind (upload.rs). `REST n` + STOR
//!   (resume) and APPE to an existing file write in place, as resuming
//!   requires; a failed APPE is cut back to the file's original length
//!   unless another session wrote to the file meanwhile (upload.rs);
//!   APPE to a new name creates it only when the transfer completed.
//! - Every path is opened beneath the root descriptor (confine.rs).
//! - Between slices the control connection is checked: `ABOR` stops the
//!   transfer (`426` then `226`), a vanished client stops it and ends the
//!   session, other commands wait until the transfer is over — at most
//!   [`MAX_QUEUED`](crate::session::MAX_QUEUED) of them: one more ends the
//!   transfer and the session with `421`, so a client cannot make the
//!   server's memory grow by talking during a transfer it stalls.
//! - The data timeout counts from the last byte moved on the data
//!   connection ([`Stall`]): control-connection traffic does not extend it,
//!   so a stalled transfer ends after `data_timeout` whatever the client
//!   sends meanwhile.
//! - No download blocks on a full data socket (sendfile, ASCII and TLS
//!   alike): it waits in `poll` for room *or* a control line, so ABOR is
//!   seen while the client reads nothing.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::TcpStream;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use crate::tls::{Control, DataConn, DataTlsError};
use nix::poll::{PollFd, PollFlags, PollTimeout};
use rustix::fs::OFlags;
use socketserver::handler::Line;

use crate::command::{Command, LogSafe, Verb};
use crate::confine::{Denied, Listing};
use crate::data::{self, DataSetup};
use crate::listing;
use crate::reply;
use crate::reply::Code;
use crate::session::{denied, ok, Flow, ListKind, Session, MAX_LINE};
use crate::upload::{crlf_to_lf, splice_chunk, SplicePipe, Upload};

/// Bytes handed to one `sendfile` call.
const SENDFILE_SLICE: usize = 64 << 10;
/// Buffer for uploads and ASCII-mode downloads.
const BUF_SIZE: usize = 256 << 10;

/// What the client said on the control connection during a transfer.
#[derive(Debug, PartialEq, Eq)]
enum Ctl {
    /// Nothing that concerns the transfer.
    Quiet,
    /// `ABOR`.
    Abort,
    /// One command more than [`MAX_QUEUED`] waiting for the transfer.
    Flood,
    /// The control connection closed or failed.
    Gone,
}

impl Ctl {
    /// The transfer's outcome when the control connection ends it (`None`:
    /// carry on). A failed control read counts as the client gone.
    fn ends(got: io::Result<Ctl>) -> Option<Outcome> {
        match got {
            Ok(Ctl::Quiet) => None,
            Ok(Ctl::Abort) => Some(Outcome::Aborted),
            Ok(Ctl::Flood) => Some(Outcome::Flooded),
            Ok(Ctl::Gone) | Err(_) => Some(Outcome::ClientGone),
        }
    }
}

/// The data connection's stall timer: a transfer fails once no byte has
/// moved on the data connection for the data timeout. Only data progress
/// restarts it, never control-connection input, so a client cannot keep a
/// stalled transfer (its thread or process, file and sockets) alive by
/// sending commands.
#[derive(Debug)]
struct Stall {
    limit: Duration,
    deadline: Instant,
}

impl Stall {
    fn new(limit: Duration) -> Stall {
        Stall {
            limit,
            deadline: Instant::now() + limit,
        }
    }

    /// Bytes moved: the timer starts again.
    fn progress(&mut self) {
        self.deadline = Instant::now() + self.limit;
    }

    /// Time left before the transfer times out (zero once it has).
    fn left(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    fn timed_out() -> Outcome {
        Outcome::Failed(io::Error::new(
            io::ErrorKind::TimedOut,
            "data connection timed out",
        ))
    }
}

/// How a transfer ended.
#[derive(Debug)]
enum Outcome {
    /// All bytes moved.
    Done,
    /// The client sent ABOR.
    Aborted,
    /// The client closed the control connection.
    ClientGone,
    /// The client sent more commands than may wait for the transfer.
    Flooded,
    /// A data-connection or file error.
    Failed(io::Error),
}

impl Session {
    /// Establishes the data connection set up by PASV/EPSV/PORT/EPRT,
    /// replying `425` (and returning `None`) when there is none or it fails.
    fn open_data(&mut self, req: &mut Control<'_>) -> io::Result<Option<TcpStream>> {
        let setup = self.take_data();
        // --tls-required: no file or listing crosses the network in clear
        // (RFC 4217 section 9: 521 for a PROT level the server refuses).
        let tls_required = self.cfg().tls.as_ref().is_some_and(|t| t.required);
        if tls_required && !self.prot_private() && !matches!(setup, DataSetup::None) {
            return ok(
                &mut req.wfile(),
                Code::ProtRefused,
                "Data connections must be encrypted: send PBSZ 0 and PROT P.",
            )
            .map(|_| None);
        }
        let conn = match setup {
            DataSetup::None => {
                reply::send(
                    &mut req.wfile(),
                    Code::CantOpenData,
                    "Use PORT, EPRT, PASV or EPSV first.",
                )?;
                return Ok(None);
            }
            DataSetup::Passive(l) => {
                // The wait also ends when the client hangs up the control
                // connection (then there is nobody to reply to).
                let control = req.stream().map(AsFd::as_fd);
                let cfg = self.cfg();
                data::accept_from(
                    &l,
                    self.peer_ip(),
                    &cfg.data_balancers,
                    cfg.passive_timeout,
                    control,
                    &cfg.data_refusals,
                )
            }
            DataSetup::Active(addr) => data::connect_active(addr, self.cfg().data_timeout),
        };
        match conn.and_then(|s| {
            s.set_read_timeout(Some(self.cfg().data_timeout))?;
            s.set_write_timeout(Some(self.cfg().data_timeout))?;
            Ok(s)
        }) {
            Ok(s) => Ok(Some(s)),
            Err(e) => {
                tracing::info!(peer = %self.peer(), error = %e, "data connection failed");
                if e.kind() == io::ErrorKind::ConnectionAborted {
                    // The control connection is gone: no reply; the
                    // command loop then sees its end and stops.
                    return Ok(None);
                }
                reply::send(
                    &mut req.wfile(),
                    Code::CantOpenData,
                    "Cannot open data connection.",
                )?;
                Ok(None)
            }
        }
    }

    /// Sends the `150` reply, then (under `PROT P`) runs the server side
    /// of the TLS handshake on the data connection, replying `425` when it
    /// fails and `522` when `--tls-require-reuse` finds no resumed session.
    fn start_data(
        &mut self,
        req: &mut Control<'_>,
        tcp: TcpStream,
        opening: &str,
    ) -> io::Result<Option<DataConn>> {
        reply::send(&mut req.wfile(), Code::OpeningData, opening)?;
        let tls = match (&self.cfg().tls, self.prot_private()) {
            (Some(tls), true) => tls,
            _ => return Ok(Some(DataConn::Plain(tcp))),
        };
        // PROT P needs AUTH TLS, so the control connection has its own
        // TLS configuration; without one nothing could be resumed.
        let Some(own) = req.connection_tls() else {
            return ok(
                &mut req.wfile(),
                Code::CantOpenData,
                "TLS handshake on the data connection failed.",
            )
            .map(|_| None);
        };
        match DataConn::secure(tcp, tls, own, self.cfg().data_timeout) {
            Ok(conn) => Ok(Some(conn)),
            Err(DataTlsError::NotResumed) => {
                tracing::info!(peer = %self.peer(), "data TLS did not resume the session: refused");
                reply::send(
                    &mut req.wfile(),
                    Code::BadProtocol,
                    "SSL connection failed: session reuse required.",
                )?;
                Ok(None)
            }
            Err(DataTlsError::Handshake(e)) => {
                tracing::info!(peer = %self.peer(), error = %e, "data TLS handshake failed");
                reply::send(
                    &mut req.wfile(),
                    Code::CantOpenData,
                    "TLS handshake on the data connection failed.",
                )?;
                Ok(None)
            }
        }
    }

    /// Reads one control line during a transfer.
    fn read_control(&mut self, req: &mut Control<'_>) -> io::Result<Ctl> {
        let mut line = Vec::new();
        let got = req.read_line_bounded(&mut line, MAX_LINE);
        // More lines of the same segment may wait in the read buffer.
        req.probe();
        match got {
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Ok(Ctl::Quiet)
            }
            Err(_) | Ok(Line::Eof) => Ok(Ctl::Gone),
            Ok(Line::TooLong) => {
                reply::send(
                    &mut req.wfile(),
                    Code::SyntaxError,
                    "Command line too long.",
                )?;
                Ok(Ctl::Quiet)
            }
            Ok(_) => match Command::parse(&line) {
                Ok(c) if c.verb == Verb::Abor => Ok(Ctl::Abort),
                Ok(c) if c.verb == Verb::Stat && c.arg.is_empty() => {
                    reply::send(&mut req.wfile(), Code::FileStatus, "Transfer in progress.")?;
                    Ok(Ctl::Quiet)
                }
                _ if self.queue_command(line) => Ok(Ctl::Quiet),
                _ => Ok(Ctl::Flood),
            },
        }
    }

    /// Checks the control connection without waiting.
    fn poll_control(&mut self, req: &mut Control<'_>) -> io::Result<Ctl> {
        let ready = req.pending()
            || match req.stream() {
                Some(s) => data::wait_readable(s, Duration::ZERO)?,
                None => false,
            };
        if ready {
            self.read_control(req)
        } else {
            Ok(Ctl::Quiet)
        }
    }

    /// Sends the closing reply for a transfer and decides the flow.
    fn finish_transfer(&mut self, req: &mut Control<'_>, outcome: Outcome) -> io::Result<Flow> {
        let w = &mut req.wfile();
        match outcome {
            Outcome::Done => ok(w, Code::ClosingData, "Transfer complete."),
            Outcome::Aborted => {
                reply::send(
                    w,
                    Code::TransferAborted,
                    "Connection closed; transfer aborted.",
                )?;
                ok(w, Code::ClosingData, "ABOR successful.")
            }
            Outcome::ClientGone => Ok(Flow::Close),
            Outcome::Flooded => {
                tracing::warn!(
                    peer = %self.peer(),
                    limit = crate::session::MAX_QUEUED,
                    "too many commands during a transfer: session closed"
                );
                reply::send(
                    w,
                    Code::ServiceUnavailable,
                    "Too many commands during a transfer, closing control connection.",
                )?;
                Ok(Flow::Close)
            }
            Outcome::Failed(e) => {
                tracing::info!(peer = %self.peer(), error = %e, "transfer failed");
                let code = if e.kind() == io::ErrorKind::StorageFull {
                    Code::NoSpace
                } else {
                    Code::TransferAborted
                };
                ok(w, code, &format!("Transfer aborted: {}.", describe(&e)))
            }
        }
    }

    pub(crate) fn retr(&mut self, req: &mut Control<'_>, arg: &str) -> io::Result<Flow> {
        let offset = self.take_rest();
        let vpath = self.vpath(arg);
        // Opened beneath the root descriptor (see confine.rs); O_NONBLOCK
        // so a FIFO cannot hang the session (it is refused below).
        let file = match self
            .root()
            .open_at(&vpath, OFlags::RDONLY | OFlags::NONBLOCK)
        {
            Ok(fd) => File::from(fd),
            Err(e) => return denied(&mut req.wfile(), &e),
        };
        let meta = file.metadata()?;
        if !meta.is_file() {
            return denied(&mut req.wfile(), &Denied::NotAFile);
        }
        let len = meta.len();
        if offset > len {
            return ok(
                &mut req.wfile(),
                Code::TransactionFailed,
                "Restart offset beyond end of file.",
            );
        }
        let Some(tcp) = self.open_data(req)? else {
            return Ok(Flow::Continue);
        };
        let mode = if self.binary() { "BINARY" } else { "ASCII" };
        let opening = format!("Opening {mode} mode data connection for {arg} ({len} bytes).");
        let Some(mut conn) = self.start_data(req, tcp, &opening)? else {
            return Ok(Flow::Continue);
        };
        let mut outcome = match (&mut conn, self.binary()) {
            (DataConn::Plain(tcp), true) => self.send_binary(req, &file, tcp, offset, len),
            _ => self.send_buffered(req, file, &mut conn, offset),
        };
        outcome = close_data(conn, outcome);
        tracing::info!(peer = %self.peer(), path = %LogSafe(&vpath), ?outcome, "RETR");
        self.finish_transfer(req, outcome)
    }

    /// Waits until the data connection is ready for `flags` or the control
    /// connection has input, which is read at once (so ABOR is seen during
    /// a transfer). `Ok(true)`: the data side is ready; `Ok(false)`: poll
    /// again (interrupted, or only a quiet control line); `Err`: the
    /// transfer ends with that outcome (timeout, abort, client gone, too
    /// many commands). The timeout is `stall`'s: control input wakes the
    /// wait but does not extend it.
    fn await_data(
        &mut self,
        req: &mut Control<'_>,
        conn: &TcpStream,
        flags: PollFlags,
        stall: &Stall,
    ) -> Result<bool, Outcome> {
        let left = stall.left();
        if left.is_zero() {
            return Err(Stall::timed_out());
        }
        let pending = req.pending();
        let timeout = if pending {
            PollTimeout::ZERO
        } else {
            // Rounded up to a whole millisecond, so a wait never ends early.
            PollTimeout::try_from(left + Duration::from_micros(999)).unwrap_or(PollTimeout::MAX)
        };
        let (data_ready, ctl_ready) = {
            let Some(ctl) = req.stream() else {
                return Err(Outcome::ClientGone);
            };
            let mut fds = [
                PollFd::new(conn.as_fd(), flags),
                PollFd::new(ctl.as_fd(), PollFlags::POLLIN),
            ];
            match nix::poll::poll(&mut fds, timeout) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => return Ok(false),
                Err(e) => return Err(Outcome::Failed(e.into())),
            }
            (
                fds[0].any().unwrap_or(false),
                pending || fds[1].any().unwrap_or(false),
            )
        };
        if ctl_ready {
            if let Some(outcome) = Ctl::ends(self.read_control(req)) {
                return Err(outcome);
            }
        }
        if !data_ready && stall.left().is_zero() {
            return Err(Stall::timed_out());
        }
        Ok(data_ready)
    }

    fn send_binary(
        &mut self,
        req: &mut Control<'_>,
        file: &File,
        conn: &TcpStream,
        offset: u64,
        len: u64,
    ) -> Outcome {
        // Non-blocking sendfile, waiting in poll for room on the data
        // socket *or* a command on the control connection: the socket lock
        // is released between slices so the peer's ACKs flow, and ABOR is
        // seen at once.
        if let Err(e) = conn.set_nonblocking(true) {
            return Outcome::Failed(e);
        }
        let mut stall = Stall::new(self.cfg().data_timeout);
        let mut off = offset as i64;
        while (off as u64) < len {
            let want = ((len - off as u64) as usize).min(SENDFILE_SLICE);
            match nix::sys::sendfile::sendfile64(conn.as_fd(), file.as_fd(), Some(&mut off), want) {
                Ok(0) => break, // file shrank underneath us
                Ok(_) => {
                    stall.progress();
                    continue;
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(nix::errno::Errno::EAGAIN) => {}
                Err(e) => return Outcome::Failed(e.into()),
            }
            // Room on the data socket or a quiet control line: send on.
            if let Err(outcome) = self.await_data(req, conn, PollFlags::POLLOUT, &stall) {
                return outcome;
            }
        }
        Outcome::Done
    }

    /// Writes `chunk` to the data connection (plain, or encrypted into
    /// TLS records) without blocking on the socket: when it is full, waits
    /// in [`await_data`](Self::await_data) for room *or* a control line,
    /// so ABOR is seen even while the client reads nothing.
    fn write_watching(
        &mut self,
        req: &mut Control<'_>,
        conn: &mut DataConn,
        mut chunk: &[u8],
        stall: &mut Stall,
    ) -> Result<(), Outcome> {
        loop {
            let written = match conn {
                DataConn::Plain(tcp) => {
                    if chunk.is_empty() {
                        return Ok(());
                    }
                    match (&*tcp).write(chunk) {
                        Ok(n) => {
                            chunk = &chunk[n..];
                            Ok(n)
                        }
                        Err(e) => Err(e),
                    }
                }
                DataConn::Tls(t) => {
                    if !chunk.is_empty() {
                        let n = t.queue(chunk).map_err(Outcome::Failed)?;
                        chunk = &chunk[n..];
                    }
                    if !t.wants_write() {
                        if chunk.is_empty() {
                            return Ok(());
                        }
                        continue;
                    }
                    t.write_tls_once()
                }
            };
            match written {
                Ok(0) => {
                    return Err(Outcome::Failed(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "data connection accepts no more bytes",
                    )))
                }
                Ok(_) => stall.progress(),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.await_data(req, conn.tcp(), PollFlags::POLLOUT, stall)?;
                }
                Err(e) => return Err(Outcome::Failed(e)),
            }
        }
    }

    /// Copies through user space: TYPE A (LF to CRLF) on any connection,
    /// and TYPE I over TLS (which encrypts in user space anyway), in
    /// 256 KiB chunks, checking the control connection between chunks and
    /// while the data socket is full.
    fn send_buffered(
        &mut self,
        req: &mut Control<'_>,
        mut file: File,
        conn: &mut DataConn,
        offset: u64,
    ) -> Outcome {
        if let Err(e) = file.seek(SeekFrom::Start(offset)) {
            return Outcome::Failed(e);
        }
        if let Err(e) = conn.tcp().set_nonblocking(true) {
            return Outcome::Failed(e);
        }
        let mut stall = Stall::new(self.cfg().data_timeout);
        let ascii = !self.binary();
        let mut buf = vec![0u8; BUF_SIZE];
        let mut out = Vec::with_capacity(if ascii { BUF_SIZE * 2 } else { 0 });
        loop {
            let n = match file.read(&mut buf) {
                // Blocking again for the closing close_notify.
                Ok(0) => {
                    return match conn.tcp().set_nonblocking(false) {
                        Ok(()) => Outcome::Done,
                        Err(e) => Outcome::Failed(e),
                    }
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Outcome::Failed(e),
            };
            let chunk = if ascii {
                out.clear();
                for &b in &buf[..n] {
                    if b == b'\n' {
                        out.push(b'\r');
                    }
                    out.push(b);
                }
                &out[..]
            } else {
                &buf[..n]
            };
            if let Err(outcome) = self.write_watching(req, conn, chunk, &mut stall) {
                return outcome;
            }
            if let Some(outcome) = Ctl::ends(self.poll_control(req)) {
                return outcome;
            }
        }
    }

    pub(crate) fn stor(
        &mut self,
        req: &mut Control<'_>,
        arg: &str,
        append: bool,
    ) -> io::Result<Flow> {
        let offset = self.take_rest();
        if !self.require_write(req)? {
            return Ok(Flow::Continue);
        }
        let vpath = self.vpath(arg);
        // Dropping `upload` on any early return (no data connection, the
        // client gone) undoes it: see upload.rs.
        let mut upload = match Upload::open(self.root(), &vpath, append, offset) {
            Ok(u) => u,
            Err(e) => return denied(&mut req.wfile(), &e),
        };
        let Some(tcp) = self.open_data(req)? else {
            return Ok(Flow::Continue);
        };
        let mode = if self.binary() { "BINARY" } else { "ASCII" };
        let opening = format!("Opening {mode} mode data connection for {arg}.");
        let Some(mut conn) = self.start_data(req, tcp, &opening)? else {
            return Ok(Flow::Continue);
        };
        let mut outcome = self.receive(req, &mut conn, &mut upload);
        outcome = close_data(conn, outcome);
        if matches!(outcome, Outcome::Done) {
            if let Err(e) = upload.commit() {
                outcome = Outcome::Failed(e);
            }
        }
        drop(upload);
        tracing::info!(peer = %self.peer(), path = %LogSafe(&vpath), ?outcome, "STOR");
        self.finish_transfer(req, outcome)
    }

    /// Copies the data connection into the upload until end of file,
    /// watching the control connection at the same time.
    fn receive(
        &mut self,
        req: &mut Control<'_>,
        conn: &mut DataConn,
        upload: &mut Upload,
    ) -> Outcome {
        let mut buf = vec![0u8; BUF_SIZE];
        let mut held_cr = false;
        // Binary uploads move socket → pipe → file with splice(2): the
        // bytes never enter user space.
        // (Not for APPE: splice refuses O_APPEND files.)
        let mut pipe =
            if self.binary() && upload.rollback_len.is_none() && matches!(conn, DataConn::Plain(_))
            {
                SplicePipe::new().ok()
            } else {
                None
            };
        let mut stall = Stall::new(self.cfg().data_timeout);
        loop {
            // TLS may hold decrypted bytes the socket no longer shows.
            let buffered = match conn {
                DataConn::Tls(t) => t.readable_without_socket(),
                DataConn::Plain(_) => false,
            };
            if buffered {
                if let Some(outcome) = Ctl::ends(self.poll_control(req)) {
                    return outcome;
                }
            } else {
                let data_ready = match self.await_data(req, conn.tcp(), PollFlags::POLLIN, &stall) {
                    Ok(ready) => ready,
                    Err(outcome) => return outcome,
                };
                if !data_ready {
                    continue;
                }
            }
            if let (Some(p), DataConn::Plain(tcp)) = (&pipe, &*conn) {
                match splice_chunk(tcp, p, &upload.file) {
                    Ok(Some(n)) => {
                        if n > 0 {
                            stall.progress();
                        }
                        continue;
                    }
                    Ok(None) => return Outcome::Done,
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                        // This file system (or an O_APPEND file) cannot be
                        // spliced into: copy through user space instead.
                        pipe = None;
                        continue;
                    }
                    Err(e) => return Outcome::Failed(e),
                }
            }
            let n = match conn.read(&mut buf) {
                Ok(0) => {
                    if held_cr {
                        if let Err(e) = upload.write_all(b"\r") {
                            return Outcome::Failed(e);
                        }
                    }
                    return Outcome::Done;
                }
                Ok(n) => {
                    stall.progress();
                    n
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Outcome::Failed(e),
            };
            let written = if self.binary() {
                upload.write_all(&buf[..n])
            } else {
                let out = crlf_to_lf(&buf[..n], &mut held_cr);
                upload.write_all(&out)
            };
            if let Err(e) = written {
                return Outcome::Failed(e);
            }
        }
    }

    pub(crate) fn list(
        &mut self,
        req: &mut Control<'_>,
        arg: &str,
        kind: ListKind,
    ) -> io::Result<Flow> {
        self.take_rest();
        let bytes = match self.listing_bytes(arg, kind) {
            Ok(b) => b,
            Err(e) => return denied(&mut req.wfile(), &e),
        };
        let Some(tcp) = self.open_data(req)? else {
            return Ok(Flow::Continue);
        };
        let Some(mut conn) = self.start_data(req, tcp, "Here comes the directory listing.")? else {
            return Ok(Flow::Continue);
        };
        let outcome = match conn.write_all(&bytes) {
            Ok(()) => Outcome::Done,
            Err(e) => Outcome::Failed(e),
        };
        let outcome = close_data(conn, outcome);
        self.finish_transfer(req, outcome)
    }

    /// Builds a listing of the directory (or single file) `arg` names.
    /// Symlinks are followed inside the root; links that lead nowhere
    /// inside it are hidden (see confine.rs).
    pub(crate) fn listing_bytes(&self, arg: &str, kind: ListKind) -> Result<Vec<u8>, Denied> {
        // Clients send `ls` options ("LIST -la"); they are ignored.
        let path_arg = arg
            .split(' ')
            .filter(|w| !w.starts_with('-') && !w.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        let vpath = self.vpath(&path_arg);
        let writable = self.writable();
        let now = listing::now();
        let entries = match self.root().list(&vpath)? {
            Listing::Dir(entries) => entries,
            Listing::Single(_) if kind == ListKind::Machine => {
                return Err(Denied::NotADirectory);
            }
            Listing::Single(meta) => {
                let name = if kind == ListKind::Names {
                    path_arg.clone()
                } else {
                    vpath.rsplit('/').next().unwrap_or("").to_string()
                };
                vec![(name, meta)]
            }
        };
        let mut out = Vec::new();
        for (name, m) in &entries {
            let line = match kind {
                ListKind::Long => listing::ls_line(name, m, now),
                ListKind::Names => name.clone(),
                ListKind::Machine => listing::mlsx_line(name, m, None, writable),
            };
            out.extend_from_slice(line.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        Ok(out)
    }
}

/// Closes a data connection; a complete transfer over TLS ends with
/// `close_notify`, and failing to send it fails the transfer.
fn close_data(conn: DataConn, outcome: Outcome) -> Outcome {
    match outcome {
        Outcome::Done => match conn.close() {
            Ok(()) => Outcome::Done,
            Err(e) => Outcome::Failed(e),
        },
        other => other,
    }
}

/// A short client-facing description of an I/O error.
fn describe(e: &io::Error) -> &'static str {
    match e.kind() {
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => "data connection timed out",
        io::ErrorKind::StorageFull => "no space left on device",
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset => "data connection closed",
        _ => "I/O error",
    }
}
