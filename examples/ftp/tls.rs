//! Explicit FTPS (RFC 4217) with rustls: the TLS settings, the handshake
//! with a deadline, the control connection as a plain-or-TLS stream
//! ([`Control`]), and TLS data connections ([`DataConn`]).
//!
//! - `AUTH TLS` is answered `234` on the plain connection, then the server
//!   runs the handshake on the same socket. Bytes the client sent after
//!   `AUTH TLS` and before the handshake are dropped with the plain read
//!   buffer, so nothing injected in plaintext runs as a protected command
//!   (the STARTTLS command-injection class of bugs).
//! - Every handshake (control and data) has a total deadline
//!   (`--tls-handshake-timeout`): a client that stalls or sends garbage
//!   costs only its own session.
//! - Data connections resume the control connection's session. Each
//!   control connection gets its own ticket key and session cache at
//!   `AUTH TLS` ([`ConnectionTls`], made in the process that serves the
//!   session), shared only with that connection's data connections: a
//!   data connection can resume the session of *its* control connection
//!   and no other. With `--tls-require-reuse` a data handshake that did
//!   not resume it is refused (`522`, as vsftpd's `require_ssl_reuse`), so
//!   a third party who wins the race to a passive port — even one on the
//!   client's IP with a TLS session of its own on this server — cannot
//!   complete the handshake and receive the transfer. (vsftpd gets the
//!   same from its per-process session cache.)

use std::io::{self, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::ServerSessionMemoryCache;
use rustls::{HandshakeKind, ServerConfig, ServerConnection};
use socketserver::handler::{read_line_bounded, Line, Stream};
use socketserver::Request;

use crate::data;

/// Buffer for TLS data transfers: one file read or socket read moves this
/// much, so the per-syscall cost is spread over many TLS records.
pub const TLS_BUF: usize = 256 << 10;

/// Sessions one control connection's cache holds (TLS 1.2 session IDs,
/// for clients without tickets; tickets are stateless): the control
/// session and a few made by full data handshakes.
const SESSIONS_PER_CONNECTION: usize = 8;

/// The TLS side of the server's settings (present when `--tls-cert` and
/// `--tls-key` were given).
#[derive(Debug)]
pub struct TlsSettings {
    /// The template for control connections: certificate, versions. Each
    /// control connection gets a copy with its own ticket key and
    /// session cache ([`ConnectionTls::new`]).
    control: Arc<ServerConfig>,
    /// `--tls-required`: no login and no unprotected data before TLS.
    pub required: bool,
    /// `--tls-require-reuse`: a data handshake must resume a session.
    pub require_reuse: bool,
    /// Longest a handshake may take, start to finish.
    pub handshake_timeout: Duration,
}

/// What the TLS settings enforce, from the command line.
#[derive(Debug, Clone, Copy)]
pub struct TlsPolicy {
    /// `--tls-required`.
    pub required: bool,
    /// `--tls-require-reuse`.
    pub require_reuse: bool,
    /// `--tls-handshake-timeout`.
    pub handshake_timeout: Duration,
}

impl TlsSettings {
    /// Loads the PEM certificate chain and private key and builds the
    /// rustls configurations (ring provider, TLS 1.2 and 1.3).
    ///
    /// # Errors
    /// A file that cannot be read, holds no certificate or key, or a key
    /// that does not match the certificate.
    pub fn load(cert: &Path, key: &Path, policy: TlsPolicy) -> io::Result<TlsSettings> {
        let bad = |what: &str, p: &Path, e: &dyn std::fmt::Display| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{what} {}: {e}", p.display()),
            )
        };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .map_err(|e| bad("cannot read certificate", cert, &e))?
            .collect::<Result<_, _>>()
            .map_err(|e| bad("bad certificate", cert, &e))?;
        if certs.is_empty() {
            return Err(bad("no certificate in", cert, &"empty"));
        }
        let key = PrivateKeyDer::from_pem_file(key).map_err(|e| bad("bad private key", key, &e))?;
        Self::build(certs, key, policy)
    }

    /// A certificate made now for `localhost` and `127.0.0.1`
    /// (`--tls-self-signed`): FTPS that works at once, for clients that
    /// skip verification.
    ///
    /// # Errors
    /// When the key cannot be generated.
    pub fn self_signed(policy: TlsPolicy) -> io::Result<TlsSettings> {
        let made = rcgen::generate_simple_self_signed(vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
        ])
        .map_err(io::Error::other)?;
        let key = PrivateKeyDer::Pkcs8(made.key_pair.serialize_der().into());
        Self::build(vec![made.cert.der().clone()], key, policy)
    }

    fn build(
        certs: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        policy: TlsPolicy,
    ) -> io::Result<TlsSettings> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut control = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(io::Error::other)?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        // No resumption across control connections: the ticket key and
        // session cache are per connection (ConnectionTls).
        control.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        Ok(TlsSettings {
            control: Arc::new(control),
            required: policy.required,
            require_reuse: policy.require_reuse,
            handshake_timeout: policy.handshake_timeout,
        })
    }
}

/// The rustls configurations of one control connection and its data
/// connections: a ticket key and a session cache of their own, so a data
/// connection resumes only a session negotiated on this control
/// connection. Made at `AUTH TLS`, in the process serving the session.
#[derive(Debug)]
pub struct ConnectionTls {
    /// Sends session tickets.
    control: Arc<ServerConfig>,
    /// Same certificate, ticket key and session cache, but sends no
    /// tickets of its own (the client resumes the control session; curl,
    /// lftp and FileZilla present one session on every data connection).
    data: Arc<ServerConfig>,
}

impl ConnectionTls {
    /// Copies the server's settings with a fresh ticket key and an empty
    /// session cache.
    ///
    /// # Errors
    /// The ticket key cannot be made.
    pub fn new(tls: &TlsSettings) -> io::Result<ConnectionTls> {
        let mut control = (*tls.control).clone();
        control.ticketer = rustls::crypto::ring::Ticketer::new().map_err(io::Error::other)?;
        control.session_storage = ServerSessionMemoryCache::new(SESSIONS_PER_CONNECTION);
        let mut data = control.clone();
        data.send_tls13_tickets = 0;
        Ok(ConnectionTls {
            control: Arc::new(control),
            data: Arc::new(data),
        })
    }
}

/// Runs a server handshake on `tcp` to completion before `deadline`.
///
/// # Errors
/// `TimedOut` past the deadline, `UnexpectedEof` when the client closed,
/// `InvalidData` for a TLS protocol error (the alert is sent first).
pub fn handshake(
    conn: &mut ServerConnection,
    tcp: &TcpStream,
    deadline: Instant,
) -> io::Result<()> {
    let left = || {
        let d = deadline.saturating_duration_since(Instant::now());
        if d.is_zero() {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "TLS handshake timed out",
            ))
        } else {
            Ok(d)
        }
    };
    while conn.is_handshaking() {
        if conn.wants_write() {
            tcp.set_write_timeout(Some(left()?))?;
            conn.write_tls(&mut { tcp })?;
            continue;
        }
        if !data::wait_readable(tcp, left()?)? {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "TLS handshake timed out",
            ));
        }
        match conn.read_tls(&mut { tcp }) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "client closed during the TLS handshake",
                ))
            }
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
                ) =>
            {
                continue
            }
            Err(e) => return Err(e),
        }
        if let Err(e) = conn.process_new_packets() {
            // Tell the client why (the alert), best effort.
            let _ = tcp.set_write_timeout(Some(Duration::from_millis(100)));
            let _ = conn.write_tls(&mut { tcp });
            return Err(io::Error::new(io::ErrorKind::InvalidData, e));
        }
    }
    while conn.wants_write() {
        tcp.set_write_timeout(Some(left()?))?;
        conn.write_tls(&mut { tcp })?;
    }
    Ok(())
}

/// The control connection after `AUTH TLS`: rustls over a duplicate of
/// the request's socket (same socket, so timeouts set on the request
/// apply), behind a line buffer.
type TlsControl = BufReader<rustls::StreamOwned<ServerConnection, TcpStream>>;

/// The control connection as the session uses it: the framework's
/// [`Request`] while plain, TLS after `AUTH TLS`. Replies, command lines,
/// timeouts and readiness checks go through here in every `--mode`.
pub struct Control<'a> {
    req: &'a mut Request,
    tls: Option<Box<TlsControl>>,
    /// This connection's TLS configurations (after `AUTH TLS`).
    conn_tls: Option<ConnectionTls>,
    /// Plain connection: [`probe`](Self::probe) found bytes in the read
    /// buffer (which `poll` on the socket cannot see).
    plain_buffered: bool,
}

impl std::fmt::Debug for Control<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control")
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl<'a> Control<'a> {
    /// The plain control connection of `req`.
    pub fn new(req: &'a mut Request) -> Control<'a> {
        Control {
            req,
            tls: None,
            conn_tls: None,
            plain_buffered: false,
        }
    }

    /// Whether `AUTH TLS` succeeded on this connection.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The writer for replies (sent in full at once, no flush needed).
    pub fn wfile(&mut self) -> ControlWriter<'_> {
        match &mut self.tls {
            Some(t) => ControlWriter::Tls(t.get_mut()),
            None => ControlWriter::Plain(self.req.wfile()),
        }
    }

    /// Reads one command line, at most `max` bytes kept (see
    /// [`socketserver::handler::RFile::read_line_bounded`]).
    ///
    /// # Errors
    /// An I/O error, including a read timeout.
    pub fn read_line_bounded(&mut self, out: &mut Vec<u8>, max: usize) -> io::Result<Line> {
        self.plain_buffered = false;
        match &mut self.tls {
            Some(t) => read_line_bounded(&mut **t, out, max),
            None => self.req.rfile().read_line_bounded(out, max),
        }
    }

    /// After a line was read during a transfer: notes whether more bytes
    /// wait in the plain connection's read buffer (a client that sent
    /// `NOOP` and `ABOR` in one segment), so [`pending`](Self::pending)
    /// reports them although the socket polls empty. Looks without
    /// blocking: the socket is non-blocking for the one look. (A TLS
    /// connection's buffers are looked at by `pending` itself.)
    pub fn probe(&mut self) {
        if self.tls.is_some() {
            return;
        }
        let Some(tcp) = self.req.stream().and_then(Stream::as_tcp) else {
            return;
        };
        let Ok(tcp) = tcp.try_clone() else {
            return;
        };
        if tcp.set_nonblocking(true).is_err() {
            return;
        }
        self.plain_buffered = match io::BufRead::fill_buf(&mut self.req.rfile()) {
            // Bytes, or end of file: the next read returns at once.
            Ok(_) => true,
            Err(e) => e.kind() != io::ErrorKind::WouldBlock,
        };
        if let Err(e) = tcp.set_nonblocking(false) {
            // A control socket left non-blocking would end the session at
            // its next read; say why.
            tracing::warn!(error = %e, "control socket stays non-blocking");
        }
    }

    /// The socket (for `poll`).
    pub fn stream(&self) -> Option<&Stream> {
        self.req.stream()
    }

    /// Sets the socket's read and write timeouts.
    ///
    /// # Errors
    /// See [`Request::set_timeout`].
    pub fn set_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        self.req.set_timeout(timeout)
    }

    /// Whether decrypted command bytes wait in a buffer (the socket
    /// itself may then have nothing to read).
    pub fn pending(&mut self) -> bool {
        match &mut self.tls {
            Some(t) => {
                !t.buffer().is_empty()
                    || t.get_mut()
                        .conn
                        .process_new_packets()
                        .map_or(true, |s| s.plaintext_bytes_to_read() > 0)
            }
            None => self.plain_buffered,
        }
    }

    /// Runs the TLS handshake on the control connection (after the `234`
    /// reply) and switches to it; on error the session must end.
    ///
    /// # Errors
    /// Handshake failure or timeout, or a socket that is not TCP.
    pub fn start_tls(&mut self, tls: &TlsSettings, idle: Duration) -> io::Result<()> {
        let tcp = self
            .req
            .stream()
            .and_then(Stream::as_tcp)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "TLS needs TCP"))?
            .try_clone()?;
        let own = ConnectionTls::new(tls)?;
        let mut conn = ServerConnection::new(own.control.clone()).map_err(io::Error::other)?;
        let got = handshake(&mut conn, &tcp, Instant::now() + tls.handshake_timeout);
        // Back to the idle timeout the session runs with.
        self.req.set_timeout(Some(idle))?;
        got?;
        self.tls = Some(Box::new(BufReader::with_capacity(
            32 << 10,
            rustls::StreamOwned::new(conn, tcp),
        )));
        self.conn_tls = Some(own);
        Ok(())
    }

    /// This control connection's TLS configurations, for its data
    /// connections (`None` before `AUTH TLS`).
    pub fn connection_tls(&self) -> Option<&ConnectionTls> {
        self.conn_tls.as_ref()
    }
}

/// The reply writer of a [`Control`].
pub enum ControlWriter<'a> {
    /// The framework's writer.
    Plain(socketserver::handler::WFile<'a>),
    /// The TLS stream.
    Tls(&'a mut rustls::StreamOwned<ServerConnection, TcpStream>),
}

impl std::fmt::Debug for ControlWriter<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ControlWriter::Plain(_) => "ControlWriter::Plain",
            ControlWriter::Tls(_) => "ControlWriter::Tls",
        })
    }
}

impl Write for ControlWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            ControlWriter::Plain(w) => w.write(buf),
            ControlWriter::Tls(s) => {
                s.write_all(buf)?;
                s.flush()?;
                Ok(buf.len())
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            ControlWriter::Plain(w) => w.flush(),
            ControlWriter::Tls(s) => s.flush(),
        }
    }
}

/// Why a data connection could not be secured.
#[derive(Debug)]
pub enum DataTlsError {
    /// The handshake failed or timed out.
    Handshake(io::Error),
    /// `--tls-require-reuse` and the client did not resume the control
    /// connection's session.
    NotResumed,
}

/// A TLS data connection: rustls driven by hand over the socket, with a
/// large socket read buffer so one `read` feeds many records.
pub struct TlsData {
    conn: ServerConnection,
    tcp: BufReader<TcpStream>,
}

impl std::fmt::Debug for TlsData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsData")
            .field("kind", &self.conn.handshake_kind())
            .finish()
    }
}

/// A data connection: plain (sendfile and splice apply) or TLS.
#[derive(Debug)]
pub enum DataConn {
    /// `PROT C`.
    Plain(TcpStream),
    /// `PROT P`.
    Tls(Box<TlsData>),
}

impl DataConn {
    /// Secures an opened data connection (the server side of the
    /// handshake, in passive and active mode alike, as RFC 4217 says)
    /// with `own`, the configuration of the control connection it belongs
    /// to: only that connection's session can be resumed. The socket's
    /// timeouts are set to `io_timeout` afterwards.
    ///
    /// # Errors
    /// [`DataTlsError`].
    pub fn secure(
        tcp: TcpStream,
        tls: &TlsSettings,
        own: &ConnectionTls,
        io_timeout: Duration,
    ) -> Result<DataConn, DataTlsError> {
        let mut conn = ServerConnection::new(own.data.clone())
            .map_err(|e| DataTlsError::Handshake(io::Error::other(e)))?;
        handshake(&mut conn, &tcp, Instant::now() + tls.handshake_timeout)
            .map_err(DataTlsError::Handshake)?;
        let resumed = conn.handshake_kind() == Some(HandshakeKind::Resumed);
        if tls.require_reuse && !resumed {
            conn.send_close_notify();
            let _ = conn.write_tls(&mut &tcp);
            return Err(DataTlsError::NotResumed);
        }
        tracing::debug!(resumed, "data connection TLS");
        tcp.set_read_timeout(Some(io_timeout))
            .and_then(|()| tcp.set_write_timeout(Some(io_timeout)))
            .map_err(DataTlsError::Handshake)?;
        // Encrypt a whole file chunk in one go (the default caps queued
        // plaintext at 64 KiB).
        conn.set_buffer_limit(Some(2 * TLS_BUF));
        Ok(DataConn::Tls(Box::new(TlsData {
            conn,
            tcp: BufReader::with_capacity(TLS_BUF, tcp),
        })))
    }

    /// The socket (for `poll`).
    pub fn tcp(&self) -> &TcpStream {
        match self {
            DataConn::Plain(t) => t,
            DataConn::Tls(t) => t.tcp.get_ref(),
        }
    }

    /// Ends the connection cleanly after a complete transfer: TLS sends
    /// `close_notify` (so the client can tell the end from a cut), then
    /// the socket is shut down for writing and closed.
    pub fn close(self) -> io::Result<()> {
        match self {
            DataConn::Plain(t) => {
                drop(t);
                Ok(())
            }
            DataConn::Tls(mut t) => {
                t.conn.send_close_notify();
                t.flush_tls()?;
                let _ = t.tcp.get_ref().shutdown(Shutdown::Write);
                Ok(())
            }
        }
    }
}

impl TlsData {
    /// Writes every queued TLS record to the socket.
    fn flush_tls(&mut self) -> io::Result<()> {
        while self.conn.wants_write() {
            self.conn.write_tls(self.tcp.get_mut())?;
        }
        Ok(())
    }

    /// Queues plaintext for encryption, up to the connection's buffer
    /// limit; returns how many bytes were taken (none when the buffer is
    /// full: write records out first).
    ///
    /// # Errors
    /// The connection is closed for writing.
    pub fn queue(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.conn.writer().write(buf)
    }

    /// Whether encrypted records wait to be written to the socket.
    pub fn wants_write(&self) -> bool {
        self.conn.wants_write()
    }

    /// Writes queued records to the socket once; on a non-blocking socket
    /// this may take only part of them or fail with `WouldBlock`.
    ///
    /// # Errors
    /// The socket's.
    pub fn write_tls_once(&mut self) -> io::Result<usize> {
        self.conn.write_tls(self.tcp.get_mut())
    }

    /// Encrypts `buf` and sends it (blocking, with the socket timeout).
    pub fn send(&mut self, mut buf: &[u8]) -> io::Result<()> {
        while !buf.is_empty() {
            let n = self.conn.writer().write(buf)?;
            buf = &buf[n..];
            self.flush_tls()?;
        }
        Ok(())
    }

    /// Whether decrypted or received-but-unprocessed bytes are waiting, so
    /// [`recv`](Self::recv) needs no socket readiness.
    pub fn readable_without_socket(&mut self) -> bool {
        !self.tcp.buffer().is_empty()
            || self.conn.process_new_packets().map_or(true, |s| {
                s.plaintext_bytes_to_read() > 0 || s.peer_has_closed()
            })
    }

    /// Reads decrypted bytes: `Ok(0)` at the client's `close_notify` (or a
    /// TCP close without one, as vsftpd's default `strict_ssl_read_eof=NO`).
    /// Fills `buf` with as many records as the socket buffer already holds
    /// (one file write per 256 KiB, not per 16 KiB record); blocks on the
    /// socket only when it has nothing at all.
    pub fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut filled = 0;
        loop {
            match self.conn.reader().read(&mut buf[filled..]) {
                Ok(0) => return Ok(filled),
                Ok(n) => {
                    filled += n;
                    if filled == buf.len() {
                        return Ok(filled);
                    }
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if filled > 0 && self.tcp.buffer().is_empty() {
                        return Ok(filled);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(filled),
                Err(e) if filled > 0 => {
                    tracing::debug!(error = %e, "TLS read error after data");
                    return Ok(filled);
                }
                Err(e) => return Err(e),
            }
            if self.conn.read_tls(&mut self.tcp)? == 0 {
                // The socket is at end of file: the reader reports it.
                self.conn.process_new_packets().map_err(invalid)?;
                continue;
            }
            if let Err(e) = self.conn.process_new_packets() {
                let _ = self.flush_tls();
                return Err(invalid(e));
            }
        }
    }
}

fn invalid(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl Write for DataConn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            DataConn::Plain(t) => t.write(buf),
            DataConn::Tls(t) => {
                t.send(buf)?;
                Ok(buf.len())
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            DataConn::Plain(t) => t.flush(),
            DataConn::Tls(t) => t.flush_tls(),
        }
    }
}

impl Read for DataConn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            DataConn::Plain(t) => t.read(buf),
            DataConn::Tls(t) => t.recv(buf),
        }
    }
}
