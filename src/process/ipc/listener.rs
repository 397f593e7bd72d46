//! `Listener` and `Client`: Python's `multiprocessing.connection.Listener`
//! and `Client`, over TCP or Unix stream sockets, with an optional authkey.
//!
//! # The authkey handshake
//! When both sides have an authkey, each proves to the other that it knows
//! it, without sending it, exactly like `multiprocessing.connection`:
//!
//! 1. the listener sends `#CHALLENGE#` + 32 random bytes (`getrandom`);
//! 2. the client answers with HMAC-SHA256(authkey, that message);
//! 3. the listener checks it in constant time and replies `#WELCOME#` or
//!    `#FAILURE#`;
//! 4. then the roles swap: the client challenges the listener.
//!
//! A wrong key fails with [`Error::AuthenticationFailed`] on both sides
//! before any application message is read. A TCP listener counts wrong
//! answers per client address (IPv4 address, IPv6 /64): past 10 within
//! a minute (see [`Listener::set_failed_attempt_limit`]) it refuses that
//! address's connections until the minute is over, with `#TOOMANY#`
//! instead of a challenge, so a weak authkey cannot be guessed at the
//! rate of the handshake. Handshake messages are limited to 256 bytes and
//! the handshake's reads to one deadline (default 5 s; each write has the
//! same timeout), so a silent, slow or garbage-sending peer cannot hang
//! `accept`.
//!
//! Like Python's, this protocol authenticates peers; it does not encrypt
//! the traffic that follows.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::process::connection::{Connection, DEFAULT_MAX_MESSAGE_SIZE};
use crate::{Error, Result};

const CHALLENGE: &[u8] = b"#CHALLENGE#";
const WELCOME: &[u8] = b"#WELCOME#";
const FAILURE: &[u8] = b"#FAILURE#";
const TOO_MANY: &[u8] = b"#TOOMANY#";
const NONCE_LEN: usize = 32;
pub(crate) const HANDSHAKE_MAX: usize = 256;

/// The default limit for each handshake read and write: 5 seconds.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Wrong answers from one address a listener takes per window by default.
const DEFAULT_FAILED_ATTEMPTS: u32 = 10;
/// The default window of the failed-attempt limit.
const DEFAULT_FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Most addresses whose failures a listener remembers.
const FAILURE_TABLE_MAX: usize = 4096;

/// Where a [`Listener`] listens and a [`Client`] connects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// A TCP address such as `127.0.0.1:0` (Python's `('127.0.0.1', 0)`).
    Tcp(SocketAddr),
    /// A Unix socket path (Python's `AF_UNIX` family).
    Unix(PathBuf),
}

impl From<SocketAddr> for Address {
    fn from(addr: SocketAddr) -> Self {
        Address::Tcp(addr)
    }
}

impl From<PathBuf> for Address {
    fn from(path: PathBuf) -> Self {
        Address::Unix(path)
    }
}

impl From<&Path> for Address {
    fn from(path: &Path) -> Self {
        Address::Unix(path.to_owned())
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Tcp(a) => write!(f, "{a}"),
            Address::Unix(p) => write!(f, "{}", p.display()),
        }
    }
}

#[derive(Debug)]
enum Inner {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

/// Accepts authenticated [`Connection`]s: Python's
/// `multiprocessing.connection.Listener`.
///
/// ```
/// use socketserver::process::{Address, Client, Listener};
///
/// let listener = Listener::bind("127.0.0.1:0".parse::<std::net::SocketAddr>().unwrap(), Some(b"secret"))?;
/// let addr = listener.address()?;
/// std::thread::spawn(move || -> socketserver::Result<()> {
///     let mut conn = Client::connect(&addr, Some(b"secret"))?;
///     conn.send(&"hello")?;
///     Ok(())
/// });
/// let mut conn = listener.accept()?;
/// assert_eq!(conn.recv::<String>()?, "hello");
/// # Ok::<(), socketserver::Error>(())
/// ```
#[derive(Debug)]
pub struct Listener {
    inner: Inner,
    authkey: Option<Vec<u8>>,
    timeout: Duration,
    failures: Arc<Failures>,
    /// The process that bound a Unix socket (only it unlinks the path).
    owner: u32,
}

impl Listener {
    /// Binds and listens. With `authkey`, every accepted connection must
    /// pass the handshake (see the module docs). A Unix socket path must
    /// not exist yet; it is removed again when the listener is dropped.
    ///
    /// # Errors
    /// [`Error::Io`] if binding fails (address in use, bad path, …);
    /// [`Error::InvalidArgument`] for an empty authkey.
    pub fn bind(address: impl Into<Address>, authkey: Option<&[u8]>) -> Result<Listener> {
        let authkey = check_key(authkey)?;
        let inner = match address.into() {
            Address::Tcp(a) => Inner::Tcp(TcpListener::bind(a)?),
            Address::Unix(p) => Inner::Unix(UnixListener::bind(&p)?, p),
        };
        Ok(Listener {
            inner,
            authkey,
            timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            failures: Arc::new(Failures::new(
                DEFAULT_FAILED_ATTEMPTS,
                DEFAULT_FAILURE_WINDOW,
            )),
            owner: std::process::id(),
        })
    }

    /// The bound address, with the real port when bound to port 0.
    ///
    /// # Errors
    /// [`Error::Io`] if the socket cannot report its address.
    pub fn address(&self) -> Result<Address> {
        Ok(match &self.inner {
            Inner::Tcp(l) => Address::Tcp(l.local_addr()?),
            Inner::Unix(_, p) => Address::Unix(p.clone()),
        })
    }

    /// Bounds the handshake: all its reads together, and each write
    /// (`Duration::MAX`: no bound). Default is
    /// [`DEFAULT_HANDSHAKE_TIMEOUT`] (5 s).
    pub fn set_handshake_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout.max(Duration::from_millis(1));
    }

    /// Limits wrong authkey answers from one client address (an IPv4
    /// address, an IPv6 /64) over TCP: after `max` of them within
    /// `window`, that address's connections are refused until the window
    /// (counted from its first failure) is over, whatever key they show.
    /// Connections over a Unix socket are not counted. Default is 10 per
    /// minute.
    pub fn set_failed_attempt_limit(&mut self, max: u32, window: Duration) {
        self.failures = Arc::new(Failures::new(max.max(1), window));
    }

    /// Waits for a client and, with an authkey, authenticates it.
    ///
    /// The handshake runs here, on the caller's thread, as in Python: a
    /// peer that connects and stays silent holds `accept` for up to the
    /// handshake timeout, and clients behind it wait in the backlog. For
    /// a listener that untrusted peers can reach, lower the timeout
    /// ([`set_handshake_timeout`](Self::set_handshake_timeout); a client
    /// that knows the key needs one round trip). The
    /// [`Manager`](crate::process::Manager)'s server runs each handshake
    /// on its own thread instead, ending the oldest when 64 are pending.
    ///
    /// # Errors
    /// [`Error::AuthenticationFailed`] if the client's key is wrong or it
    /// does not speak the handshake, or its address made too many wrong
    /// attempts (see
    /// [`set_failed_attempt_limit`](Self::set_failed_attempt_limit));
    /// [`Error::Timeout`] if it stays silent past the handshake timeout;
    /// [`Error::Io`] if `accept` fails. The listener stays usable after
    /// any of these: call `accept` again.
    pub fn accept(&self) -> Result<Connection> {
        let mut conn = self.accept_unauthenticated()?;
        self.authenticator().authenticate(&mut conn)?;
        Ok(conn)
    }

    /// Accepts a connection without the handshake: a server that runs
    /// the handshake on the connection's own thread (the manager, so a
    /// silent peer delays only itself) pairs it with
    /// [`authenticator`](Self::authenticator).
    pub(crate) fn accept_unauthenticated(&self) -> Result<Connection> {
        let fd: OwnedFd = match &self.inner {
            Inner::Tcp(l) => {
                let (s, _) = l.accept()?;
                s.set_nodelay(true)?;
                s.into()
            }
            Inner::Unix(l, _) => l.accept()?.0.into(),
        };
        Ok(Connection::from_socket(fd))
    }

    /// What the handshake of this listener's connections needs, to run
    /// it elsewhere (see [`accept_unauthenticated`](Self::accept_unauthenticated)).
    pub(crate) fn authenticator(&self) -> Authenticator {
        Authenticator {
            authkey: self.authkey.clone(),
            timeout: self.timeout,
            failures: self.failures.clone(),
        }
    }
}

/// The listener's side of the handshake, detached from the listener
/// (its clones share the failed-attempt counts).
#[derive(Clone)]
pub(crate) struct Authenticator {
    authkey: Option<Vec<u8>>,
    timeout: Duration,
    failures: Arc<Failures>,
}

impl Authenticator {
    /// Runs the handshake on an accepted connection (nothing without an
    /// authkey). Errors as [`Listener::accept`].
    pub(crate) fn authenticate(&self, conn: &mut Connection) -> Result<()> {
        self.authenticate_then(conn, || {})
    }

    /// [`authenticate`](Self::authenticate), calling `verified` as soon as
    /// the peer has proved it knows the key (before it checks that we
    /// do): from then on it is a client, not a stranger.
    pub(crate) fn authenticate_then(
        &self,
        conn: &mut Connection,
        verified: impl FnOnce(),
    ) -> Result<()> {
        let Some(key) = &self.authkey else {
            verified();
            return Ok(());
        };
        let peer = peer_key(conn);
        if peer.is_some_and(|p| self.failures.blocked(p)) {
            // Best effort: tell the peer why before closing.
            let _ = set_timeouts(conn, Some(self.timeout));
            let _ = conn.send_bytes(TOO_MANY);
            return Err(Error::AuthenticationFailed(
                "too many failed attempts from this address; refused for now".into(),
            ));
        }
        with_timeout(conn, self.timeout, |c| {
            if challenge(c, key)? == Verdict::Wrong {
                // Counted once the answer is read: a guess whose
                // peer leaves before the verdict counts all the same.
                if let Some(p) = peer {
                    self.failures.record(p);
                }
                return Err(wrong_digest());
            }
            verified();
            answer_challenge(c, key)
        })
    }
}

/// Which addresses answered wrongly, and how often, in their current
/// window: `(window start, failures)`.
#[derive(Debug)]
struct Failures {
    max: u32,
    window: Duration,
    table: Mutex<HashMap<IpAddr, (Instant, u32)>>,
    /// When an address was last reported refused, and how many were
    /// refused since without a report: many addresses reaching the limit
    /// (a distributed guesser) log one line every [`WARN_EVERY`].
    warned: Mutex<(Option<Instant>, u64)>,
}

/// At most one "refusing this address" warning per this interval.
const WARN_EVERY: Duration = Duration::from_secs(10);

impl Failures {
    fn new(max: u32, window: Duration) -> Failures {
        Failures {
            max,
            window,
            table: Mutex::new(HashMap::new()),
            warned: Mutex::new((None, 0)),
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, (Instant, u32)>> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn blocked(&self, peer: IpAddr) -> bool {
        let now = Instant::now();
        self.table()
            .get(&peer)
            .is_some_and(|&(start, n)| n >= self.max && now.duration_since(start) < self.window)
    }

    fn record(&self, peer: IpAddr) {
        let now = Instant::now();
        let mut t = self.table();
        if t.len() >= FAILURE_TABLE_MAX && !t.contains_key(&peer) {
            t.retain(|_, (start, _)| now.duration_since(*start) < self.window);
            if t.len() >= FAILURE_TABLE_MAX {
                // Forget the address with the least against it.
                if let Some(least) = t.iter().min_by_key(|(_, (_, n))| *n).map(|(a, _)| *a) {
                    t.remove(&least);
                }
            }
        }
        let entry = t.entry(peer).or_insert((now, 0));
        if now.duration_since(entry.0) >= self.window {
            *entry = (now, 0);
        }
        entry.1 += 1;
        if entry.1 == self.max {
            let left = self.window.saturating_sub(now.duration_since(entry.0));
            drop(t);
            self.warn_refused(peer, left, now);
        } else if entry.1 < self.max {
            tracing::debug!(peer = %peer, "authkey handshake: wrong answer");
        }
    }

    fn warn_refused(&self, peer: IpAddr, left: Duration, now: Instant) {
        let mut w = self.warned.lock().unwrap_or_else(|p| p.into_inner());
        if w.0.is_some_and(|at| now.duration_since(at) < WARN_EVERY) {
            w.1 += 1;
            return;
        }
        let others = std::mem::take(&mut w.1);
        w.0 = Some(now);
        tracing::warn!(
            peer = %peer,
            others,
            "authkey handshake: {} wrong answers from this address; refusing it for {left:?} \
             ({others} other addresses refused since the last such warning)",
            self.max
        );
    }
}

/// The address a TCP peer's failures count against: its IPv4 address, or
/// its IPv6 /64 (one host usually has a whole /64); `None` for Unix
/// sockets.
fn peer_key(conn: &Connection) -> Option<IpAddr> {
    let fd = conn.fileno()?;
    let addr = socket2::SockRef::from(&fd).peer_addr().ok()?.as_socket()?;
    Some(match addr.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
        },
        v4 => v4,
    })
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Inner::Unix(_, path) = &self.inner {
            if std::process::id() == self.owner {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

/// Connects to a [`Listener`]: Python's `multiprocessing.connection.Client`.
///
/// ```
/// use socketserver::process::{Client, Listener};
/// use socketserver::Error;
///
/// let listener = Listener::bind("127.0.0.1:0".parse::<std::net::SocketAddr>().unwrap(), Some(b"right"))?;
/// let addr = listener.address()?;
/// let server = std::thread::spawn(move || {
///     // The first client gives the wrong key: its accept fails.
///     assert!(listener.accept().is_err());
///     let mut conn = listener.accept().unwrap();
///     let n: u32 = conn.recv().unwrap();
///     conn.send(&(n + 1)).unwrap();
/// });
/// let wrong = Client::connect(&addr, Some(b"wrong"));
/// assert!(matches!(wrong, Err(Error::AuthenticationFailed(_))));
/// let mut conn = Client::connect(&addr, Some(b"right"))?;
/// conn.send(&41u32)?;
/// assert_eq!(conn.recv::<u32>()?, 42);
/// server.join().unwrap();
/// # Ok::<(), socketserver::Error>(())
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Client;

impl Client {
    /// Connects to `address` and, with `authkey`, runs the handshake (with
    /// the default 5 s timeout per step).
    ///
    /// # Errors
    /// [`Error::AuthenticationFailed`] if the keys differ (or the listener
    /// expects none); [`Error::Timeout`] if the listener stays silent, or
    /// connecting takes longer than 5 s (a full backlog);
    /// [`Error::Io`] if connecting fails.
    pub fn connect(address: &Address, authkey: Option<&[u8]>) -> Result<Connection> {
        Self::connect_with_timeout(address, authkey, DEFAULT_HANDSHAKE_TIMEOUT)
    }

    /// [`connect`](Self::connect) with an explicit bound on connecting and
    /// on each handshake step. Connecting is bounded for a Unix socket
    /// too, whose `connect` would otherwise wait for as long as the
    /// listener's backlog stays full.
    ///
    /// # Errors
    /// As [`connect`](Self::connect); [`Error::Timeout`] also when
    /// connecting takes longer than `timeout`.
    pub fn connect_with_timeout(
        address: &Address,
        authkey: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<Connection> {
        let authkey = check_key(authkey)?;
        let timeout = timeout.max(Duration::from_millis(1));
        let timed_out = |e: std::io::Error| match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                Error::Timeout(timeout)
            }
            _ => Error::Io(e),
        };
        let fd: OwnedFd = match address {
            Address::Tcp(a) => {
                let s = TcpStream::connect_timeout(a, timeout).map_err(timed_out)?;
                s.set_nodelay(true)?;
                s.into()
            }
            Address::Unix(p) => connect_unix(p, timeout).map_err(timed_out)?,
        };
        let mut conn = Connection::from_socket(fd);
        if let Some(key) = &authkey {
            with_timeout(&mut conn, timeout, |c| {
                answer_challenge(c, key)?;
                deliver_challenge(c, key)
            })?;
        }
        Ok(conn)
    }
}

/// Connects to a Unix socket within `timeout`. A Unix `connect` to a
/// listener whose backlog is full waits until the listener accepts, with
/// no limit but the socket's send timeout (then `EAGAIN`): so set one
/// for the connect, and lift it again.
fn connect_unix(path: &Path, timeout: Duration) -> std::io::Result<OwnedFd> {
    use socket2::{Domain, SockAddr, Socket, Type};
    // socket2 creates it close-on-exec.
    let socket = Socket::new(Domain::UNIX, Type::STREAM, None)?;
    socket.set_write_timeout(Some(timeout))?;
    socket.connect(&SockAddr::unix(path)?)?;
    socket.set_write_timeout(None)?;
    Ok(socket.into())
}

fn check_key(key: Option<&[u8]>) -> Result<Option<Vec<u8>>> {
    match key {
        Some([]) => Err(Error::InvalidArgument("authkey must not be empty".into())),
        Some(k) => Ok(Some(k.to_vec())),
        None => Ok(None),
    }
}

/// Runs the handshake with socket timeouts and a small message limit, then
/// restores both.
pub(crate) fn with_timeout(
    conn: &mut Connection,
    timeout: Duration,
    handshake: impl FnOnce(&mut Connection) -> Result<()>,
) -> Result<()> {
    // One deadline for all handshake reads (a peer dribbling bytes cannot
    // stretch it); socket timeouts bound the writes.
    set_timeouts(conn, Some(timeout))?;
    conn.set_read_deadline(Some(timeout));
    conn.set_max_message_size(HANDSHAKE_MAX);
    let result = handshake(conn).map_err(|e| match e {
        Error::Io(io)
            if matches!(
                io.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            Error::Timeout(timeout)
        }
        Error::Eof | Error::TruncatedFrame { .. } => {
            Error::AuthenticationFailed("peer closed the connection during the handshake".into())
        }
        Error::MessageTooLarge { .. } => {
            Error::AuthenticationFailed("oversized handshake message".into())
        }
        other => other,
    });
    result?;
    conn.set_read_deadline(None);
    conn.set_max_message_size(DEFAULT_MAX_MESSAGE_SIZE);
    set_timeouts(conn, None)
}

fn set_timeouts(conn: &Connection, timeout: Option<Duration>) -> Result<()> {
    let fd = conn.fileno().ok_or(Error::Closed)?;
    let sock = socket2::SockRef::from(&fd);
    sock.set_read_timeout(timeout)?;
    sock.set_write_timeout(timeout)?;
    Ok(())
}

fn mac(key: &[u8], message: &[u8]) -> Result<Hmac<Sha256>> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key)
        .map_err(|e| Error::InvalidArgument(format!("authkey: {e}")))?;
    mac.update(message);
    Ok(mac)
}

/// Challenges the peer and checks its answer (constant-time).
pub(crate) fn deliver_challenge(conn: &mut Connection, key: &[u8]) -> Result<()> {
    match challenge(conn, key)? {
        Verdict::Welcome => Ok(()),
        Verdict::Wrong => Err(wrong_digest()),
    }
}

/// What the peer's answer to our challenge was worth.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Welcome,
    Wrong,
}

fn wrong_digest() -> Error {
    Error::AuthenticationFailed("the peer's digest was wrong (different authkey)".into())
}

/// [`deliver_challenge`], telling a wrong answer apart from a failed
/// exchange.
fn challenge(conn: &mut Connection, key: &[u8]) -> Result<Verdict> {
    let mut message = CHALLENGE.to_vec();
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::fill(&mut nonce)
        .map_err(|e| Error::Io(std::io::Error::other(format!("getrandom: {e}"))))?;
    message.extend_from_slice(&nonce);
    conn.send_bytes(&message)?;
    let answer = conn.recv_bytes()?;
    if mac(key, &message)?.verify_slice(&answer).is_ok() {
        conn.send_bytes(WELCOME)?;
        Ok(Verdict::Welcome)
    } else {
        // Best effort: tell the peer why before closing.
        let _ = conn.send_bytes(FAILURE);
        Ok(Verdict::Wrong)
    }
}

/// Answers the peer's challenge and reads its verdict.
pub(crate) fn answer_challenge(conn: &mut Connection, key: &[u8]) -> Result<()> {
    let message = conn.recv_bytes()?;
    if message == TOO_MANY {
        return Err(Error::AuthenticationFailed(
            "the listener refuses this address for now (too many failed attempts)".into(),
        ));
    }
    if !message.starts_with(CHALLENGE) || message.len() < CHALLENGE.len() + NONCE_LEN {
        return Err(Error::AuthenticationFailed(
            "the peer did not send a valid challenge".into(),
        ));
    }
    let digest = mac(key, &message)?.finalize().into_bytes();
    conn.send_bytes(&digest)?;
    let verdict = conn.recv_bytes()?;
    if verdict == WELCOME {
        Ok(())
    } else {
        Err(Error::AuthenticationFailed(
            "the peer rejected our digest (different authkey)".into(),
        ))
    }
}
