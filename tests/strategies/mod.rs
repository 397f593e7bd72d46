//! One handler, one generic test body, all twenty servers: every strategy
//! (synchronous, threading, forking, prefork, async) over every transport
//! (TCP, UDP, Unix stream, Unix datagram).
//!
//! The body follows CPython's `test_socketserver`: the echo round trip
//! (three clients), then the cases every strategy must get right the same
//! way — `shutdown()` before `serve_forever`, a handler error (reported
//! through `handle_error`, the server serves on), `verify_request` saying
//! no (the request is closed unserved), the drain (during shutdown with a
//! connection still open a new client is refused at once, and the open one
//! finishes and is counted; a datagram in flight still gets its reply),
//! `server_close` releasing the address, and no descriptor left open.
//!
//! Hooks record what they see in a file (one `write` per line), because
//! under forking and prefork they run in other processes.

use std::fs::OpenOptions;
use std::io::{self, BufRead, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use socketserver::server::{
    BindAddress, Forking, Hooks, Incoming, Prefork, Server, ServerBuilder, SocketServer, Strategy,
    Synchronous, TcpTransport, Threading, Transport, UdpTransport, UnixDatagramTransport, UnixPath,
    UnixStreamTransport,
};
use socketserver::{Error, PeerAddr, Request, RequestHandler};

use crate::check;
use crate::support::{open_fds, Test, TestResult};

const TIMEOUT: Duration = Duration::from_secs(10);
/// CPython's `TEST_STR`.
const TEST_STR: &[u8] = b"hello world\n";

/// The one handler: echoes each line; `fail` makes it return an error,
/// `hold` answers `held` and keeps reading (a long connection); `slow
/// PATH` creates the file `PATH`, waits 500 ms and answers `slow` (a
/// request in flight when the server is told to stop).
struct Probe;

impl RequestHandler for Probe {
    fn handle(&mut self, req: &mut Request) -> io::Result<()> {
        let mut line = Vec::new();
        loop {
            line.clear();
            if req.rfile().read_until(b'\n', &mut line)? == 0 {
                return Ok(());
            }
            match &line[..] {
                b"fail\n" => return Err(io::Error::other("handler failed on purpose")),
                b"hold\n" => req.wfile().write_all(b"held\n")?,
                l if l.starts_with(b"slow ") => {
                    let path = String::from_utf8_lossy(&l[5..]).trim().to_string();
                    std::fs::write(path, b"")?;
                    std::thread::sleep(Duration::from_millis(500));
                    req.wfile().write_all(b"slow\n")?;
                }
                b"timeouts\n" => {
                    let answer = timeouts(req)?;
                    req.wfile().write_all(answer.as_bytes())?;
                }
                _ => req.wfile().write_all(&line)?,
            }
        }
    }
}

/// The connection's read and write timeouts in milliseconds, as the
/// handler finds them (`"R W\n"`, `-` for none; `datagram` for a datagram).
fn timeouts(req: &Request) -> io::Result<String> {
    let Some(stream) = req.stream() else {
        return Ok("datagram\n".into());
    };
    let sock = match (stream.as_tcp(), stream.as_unix()) {
        (Some(s), _) => socket2::SockRef::from(s),
        (None, Some(s)) => socket2::SockRef::from(s),
        (None, None) => return Err(io::Error::other("neither TCP nor Unix")),
    };
    let ms = |t: Option<Duration>| t.map_or("-".to_string(), |t| t.as_millis().to_string());
    Ok(format!(
        "{} {}\n",
        ms(sock.read_timeout()?),
        ms(sock.write_timeout()?)
    ))
}

/// The servers' `connection_timeout`: longer than any case here waits, so
/// it never fires; each stream handler must find it on its connection.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

/// Writes what the hooks see to `log`; refuses everything while `refuse`
/// exists.
struct Recorder {
    log: PathBuf,
    refuse: PathBuf,
}

impl Recorder {
    fn append(&self, line: &str) {
        if let Ok(mut f) = OpenOptions::new().create(true).append(true).open(&self.log) {
            let _ = f.write_all(format!("{line}\n").as_bytes());
        }
    }
}

impl Hooks for Recorder {
    fn verify_request(&self, _: &Incoming, _: &PeerAddr) -> bool {
        if self.refuse.exists() {
            self.append("refused");
            return false;
        }
        true
    }

    fn handle_error(&self, _: &PeerAddr, error: &Error) {
        self.append(&format!("error: {error}"));
    }
}

/// The client side of a transport.
trait Kind: Transport + Sized
where
    Self::Address: BindAddress<Self>,
{
    const STREAM: bool;
    /// A fresh address to bind in `dir`.
    fn address(dir: &Path, tag: &str) -> Self::Address;
    /// Sends `msg` and returns the answer (a stream client half-closes
    /// and reads to end of file), waiting at most `wait` for it.
    fn ask_within(
        addr: &Self::Address,
        dir: &Path,
        msg: &[u8],
        wait: Duration,
    ) -> io::Result<Vec<u8>>;
    fn ask(addr: &Self::Address, dir: &Path, msg: &[u8]) -> io::Result<Vec<u8>> {
        Self::ask_within(addr, dir, msg, TIMEOUT)
    }
    /// Opens a connection that stays open (streams only).
    fn open(addr: &Self::Address) -> io::Result<Box<dyn Conn>>;
    /// Binds the address again, as a new server would.
    fn rebind(addr: &Self::Address) -> io::Result<()>;
}

/// A connected stream client, TCP or Unix.
trait Conn: Read + Write {
    fn half_close(&self) -> io::Result<()>;
}

impl Conn for TcpStream {
    fn half_close(&self) -> io::Result<()> {
        self.shutdown(Shutdown::Write)
    }
}

impl Conn for UnixStream {
    fn half_close(&self) -> io::Result<()> {
        self.shutdown(Shutdown::Write)
    }
}

fn ask_stream(mut c: impl Conn) -> impl FnOnce(&[u8]) -> io::Result<Vec<u8>> {
    move |msg| {
        c.write_all(msg)?;
        c.half_close()?;
        let mut out = Vec::new();
        c.read_to_end(&mut out)?;
        Ok(out)
    }
}

impl Kind for TcpTransport {
    const STREAM: bool = true;
    fn address(_: &Path, _: &str) -> SocketAddr {
        "127.0.0.1:0".parse().unwrap()
    }
    fn ask_within(addr: &SocketAddr, _: &Path, msg: &[u8], wait: Duration) -> io::Result<Vec<u8>> {
        let c = TcpStream::connect(addr)?;
        c.set_read_timeout(Some(wait))?;
        ask_stream(c)(msg)
    }
    fn open(addr: &SocketAddr) -> io::Result<Box<dyn Conn>> {
        let c = TcpStream::connect(addr)?;
        c.set_read_timeout(Some(TIMEOUT))?;
        Ok(Box::new(c))
    }
    fn rebind(addr: &SocketAddr) -> io::Result<()> {
        TcpListener::bind(addr).map(drop)
    }
}

impl Kind for UdpTransport {
    const STREAM: bool = false;
    fn address(_: &Path, _: &str) -> SocketAddr {
        "127.0.0.1:0".parse().unwrap()
    }
    fn ask_within(addr: &SocketAddr, _: &Path, msg: &[u8], wait: Duration) -> io::Result<Vec<u8>> {
        let s = UdpSocket::bind("127.0.0.1:0")?;
        s.set_read_timeout(Some(wait))?;
        s.send_to(msg, addr)?;
        let mut buf = vec![0; 65536];
        let (n, from) = s.recv_from(&mut buf)?;
        if from != *addr {
            return Err(io::Error::other(format!("answer from {from}")));
        }
        buf.truncate(n);
        Ok(buf)
    }
    fn open(_: &SocketAddr) -> io::Result<Box<dyn Conn>> {
        Err(io::Error::other("datagrams have no connection"))
    }
    fn rebind(addr: &SocketAddr) -> io::Result<()> {
        UdpSocket::bind(addr).map(drop)
    }
}

impl Kind for UnixStreamTransport {
    const STREAM: bool = true;
    fn address(dir: &Path, tag: &str) -> UnixPath {
        UnixPath(dir.join(format!("{tag}.sock")))
    }
    fn ask_within(addr: &UnixPath, _: &Path, msg: &[u8], wait: Duration) -> io::Result<Vec<u8>> {
        let c = UnixStream::connect(addr)?;
        c.set_read_timeout(Some(wait))?;
        ask_stream(c)(msg)
    }
    fn open(addr: &UnixPath) -> io::Result<Box<dyn Conn>> {
        let c = UnixStream::connect(addr)?;
        c.set_read_timeout(Some(TIMEOUT))?;
        Ok(Box::new(c))
    }
    fn rebind(addr: &UnixPath) -> io::Result<()> {
        UnixListener::bind(addr)?;
        std::fs::remove_file(addr)
    }
}

impl Kind for UnixDatagramTransport {
    const STREAM: bool = false;
    fn address(dir: &Path, tag: &str) -> UnixPath {
        UnixPath(dir.join(format!("{tag}.sock")))
    }
    fn ask_within(addr: &UnixPath, dir: &Path, msg: &[u8], wait: Duration) -> io::Result<Vec<u8>> {
        let me = dir.join(format!("client-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&me);
        let s = UnixDatagram::bind(&me)?;
        s.set_read_timeout(Some(wait))?;
        let answer = s.send_to(msg, addr).and_then(|_| {
            let mut buf = vec![0; 65536];
            let n = s.recv(&mut buf)?;
            buf.truncate(n);
            Ok(buf)
        });
        let _ = std::fs::remove_file(&me);
        answer
    }
    fn open(_: &UnixPath) -> io::Result<Box<dyn Conn>> {
        Err(io::Error::other("datagrams have no connection"))
    }
    fn rebind(addr: &UnixPath) -> io::Result<()> {
        UnixDatagram::bind(addr)?;
        std::fs::remove_file(addr)
    }
}

fn e<E: std::fmt::Debug>(err: E) -> String {
    format!("{err:?}")
}

fn build<T: Kind, S: Strategy>(dir: &Path, tag: &str) -> Result<SocketServer<T, S>, String>
where
    T::Address: BindAddress<T>,
{
    ServerBuilder::<T, S>::new()
        .hooks(Recorder {
            log: dir.join("hooks.log"),
            refuse: dir.join("refuse"),
        })
        .min_spare(1)
        .start_workers(2)
        .max_workers(4)
        .drain_timeout(TIMEOUT)
        .connection_timeout(CONNECTION_TIMEOUT)
        .bind(T::address(dir, tag), || Probe)
        .map_err(e)
}

fn log_lines(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("hooks.log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Closed without an answer: end of file, or (a Unix stream whose peer
/// closed first) a broken pipe or reset; a datagram gets an empty reply.
fn unanswered(got: &io::Result<Vec<u8>>) -> bool {
    match got {
        Ok(bytes) => bytes.is_empty(),
        Err(err) => matches!(
            err.kind(),
            io::ErrorKind::BrokenPipe
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::NotConnected
        ),
    }
}

/// Polls `cond` for up to `limit`.
fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    cond()
}

/// The one generic test body.
fn every_case<T: Kind, S: Strategy>() -> TestResult
where
    T::Address: BindAddress<T>,
    SocketServer<T, S>: Send,
{
    let dir = tempfile::tempdir().map_err(e)?;
    let dir = dir.path();

    // shutdown() before serve_forever: the loop returns at once.
    {
        let mut server = build::<T, S>(dir, "early")?;
        server.shutdown();
        let t0 = Instant::now();
        server.serve_forever().map_err(e)?;
        check!(
            t0.elapsed() < TIMEOUT,
            "serve_forever took {:?}",
            t0.elapsed()
        );
        server.server_close();
    }

    // Counted after the first server ran, so a process-wide descriptor
    // made once on first use (tokio's signal pipe) is not counted.
    let fds_before = open_fds();
    let server = build::<T, S>(dir, "main")?;
    let addr = server.server_address();
    let handle = server.shutdown_handle();
    let serving = std::thread::spawn(move || {
        let mut server = server;
        let served = server.serve_forever();
        server.server_close();
        (served.map_err(e), server.drain_report())
    });
    let result = (|| {
        // CPython's round trip: three clients in turn.
        for _ in 0..3 {
            let got = T::ask(&addr, dir, TEST_STR).map_err(e)?;
            check!(got == TEST_STR, "echo: {:?}", String::from_utf8_lossy(&got));
        }

        // connection_timeout is on every stream connection (over TCP
        // inherited from the listening socket, over Unix set on each).
        if T::STREAM {
            let got = T::ask(&addr, dir, b"timeouts\n").map_err(e)?;
            check!(
                got == b"30000 30000\n",
                "connection timeouts: {:?}",
                String::from_utf8_lossy(&got)
            );
        }

        // A handler error goes to handle_error; the server serves on.
        let got = T::ask(&addr, dir, b"fail\n");
        check!(unanswered(&got), "failed handler answered {got:?}");
        check!(
            eventually(TIMEOUT, || log_lines(dir)
                .iter()
                .any(|l| l.contains("handler failed on purpose"))),
            "handle_error not called: {:?}",
            log_lines(dir)
        );
        check!(T::ask(&addr, dir, TEST_STR).map_err(e)? == TEST_STR);

        // verify_request false: closed unserved (a stream sees end of
        // file; a datagram gets no answer).
        std::fs::write(dir.join("refuse"), b"").map_err(e)?;
        if T::STREAM {
            let got = T::ask(&addr, dir, TEST_STR);
            check!(unanswered(&got), "refused request was served: {got:?}");
        } else {
            // Unanswered: no echo comes back.
            let got = T::ask_within(&addr, dir, TEST_STR, Duration::from_millis(500));
            check!(got.is_err(), "refused datagram was answered: {got:?}");
        }
        check!(
            log_lines(dir).iter().filter(|l| *l == "refused").count() == 1,
            "{:?}",
            log_lines(dir)
        );
        std::fs::remove_file(dir.join("refuse")).map_err(e)?;
        check!(T::ask(&addr, dir, TEST_STR).map_err(e)? == TEST_STR);
        Ok(())
    })();
    if let Err(msg) = result {
        handle.shutdown();
        let _ = serving.join();
        return Err(msg);
    }

    // The drain: with a connection open, a shutdown closes the listening
    // socket at once (a new client is refused, not queued) and the open
    // request finishes. The synchronous server is inside that request, so
    // it cannot stop before it ends: the drain is for the concurrent ones.
    let concurrent = T::STREAM && S::NAME != Synchronous::NAME;
    // Every request above has ended by now (their clients had their
    // answers); the pause lets the last handler return after its answer,
    // so the report below must count only the held request.
    std::thread::sleep(Duration::from_millis(300));
    let mut held = None;
    if concurrent {
        let mut c = T::open(&addr).map_err(e)?;
        c.write_all(b"hold\n").map_err(e)?;
        let mut answer = [0u8; 5];
        c.read_exact(&mut answer).map_err(e)?;
        check!(&answer == b"held\n");
        held = Some(c);
    }
    // A datagram in flight at the shutdown still gets its reply: the
    // reply goes out on the server socket, so a strategy must not close
    // (or revoke) that socket under a running handler.
    let datagram_in_flight = !T::STREAM && S::NAME != Synchronous::NAME;
    let mut asker = None;
    if datagram_in_flight {
        let started = dir.join("slow-started");
        let msg = format!("slow {}\n", started.display());
        let (addr, d) = (addr.clone(), dir.to_path_buf());
        asker = Some(std::thread::spawn(move || {
            T::ask(&addr, &d, msg.as_bytes()).map_err(e)
        }));
        if !eventually(TIMEOUT, || started.exists()) {
            handle.shutdown();
            let _ = serving.join();
            return Err("the slow datagram was never handled".into());
        }
    }
    handle.shutdown();
    // A probe that connects before the listening socket is closed may be
    // served as part of the drain.
    let mut probes_accepted = 0;
    if let Some(mut c) = held {
        let refused = eventually(Duration::from_secs(3), || match T::open(&addr) {
            Ok(_) => {
                probes_accepted += 1;
                false
            }
            Err(_) => true,
        });
        check!(refused, "still accepting during the drain");
        // The open connection is still served, then ends.
        c.write_all(TEST_STR).map_err(e)?;
        let mut back = vec![0u8; TEST_STR.len()];
        c.read_exact(&mut back).map_err(e)?;
        check!(
            back == TEST_STR,
            "held connection not served during the drain"
        );
        c.half_close().map_err(e)?;
    }
    let (served, report) = serving.join().map_err(|_| "serving thread panicked")?;
    served?;
    if let Some(asker) = asker {
        let got = asker.join().map_err(|_| "datagram client panicked")?;
        check!(
            matches!(&got, Ok(b) if b == b"slow\n"),
            "the datagram in flight at the shutdown got {got:?}, not its reply"
        );
    }
    let report = report.ok_or("no drain report")?;
    check!(report.aborted == 0, "{report:?}");
    // Only what was in flight at the shutdown is drained: the held
    // request (and any probe that got in), or the slow datagram, not the
    // ones that ended before.
    let in_flight = usize::from(concurrent || datagram_in_flight);
    check!(
        (in_flight..=in_flight + probes_accepted).contains(&report.drained) && report.detached == 0,
        "expected {in_flight} drained request(s) (+{probes_accepted} probes): {report:?}"
    );

    // server_close released the address.
    T::rebind(&addr).map_err(|err| format!("cannot bind {addr} again: {err}"))?;
    // The handle keeps the server's wake-up socket pair.
    drop(handle);
    check!(
        eventually(TIMEOUT, || open_fds() == fds_before),
        "descriptors open before the server: {fds_before}, after it closed: {}",
        open_fds()
    );
    Ok(())
}

macro_rules! combinations {
    ($($(#[$m:meta])* $name:ident: $transport:ty, $strategy:ty;)*) => {
        $($(#[$m])* fn $name() -> TestResult { every_case::<$transport, $strategy>() })*
        /// All twenty transport × strategy combinations (sixteen without
        /// the `async` feature).
        pub const ALL: &[Test] = &[$($(#[$m])* (stringify!($name), $name)),*];
    };
}

combinations! {
    sync_tcp: TcpTransport, Synchronous;
    sync_udp: UdpTransport, Synchronous;
    sync_unix_stream: UnixStreamTransport, Synchronous;
    sync_unix_datagram: UnixDatagramTransport, Synchronous;
    threading_tcp: TcpTransport, Threading;
    threading_udp: UdpTransport, Threading;
    threading_unix_stream: UnixStreamTransport, Threading;
    threading_unix_datagram: UnixDatagramTransport, Threading;
    forking_tcp: TcpTransport, Forking;
    forking_udp: UdpTransport, Forking;
    forking_unix_stream: UnixStreamTransport, Forking;
    forking_unix_datagram: UnixDatagramTransport, Forking;
    prefork_tcp: TcpTransport, Prefork;
    prefork_udp: UdpTransport, Prefork;
    prefork_unix_stream: UnixStreamTransport, Prefork;
    prefork_unix_datagram: UnixDatagramTransport, Prefork;
    #[cfg(feature = "async")]
    async_tcp: TcpTransport, socketserver::server::Async;
    #[cfg(feature = "async")]
    async_udp: UdpTransport, socketserver::server::Async;
    #[cfg(feature = "async")]
    async_unix_stream: UnixStreamTransport, socketserver::server::Async;
    #[cfg(feature = "async")]
    async_unix_datagram: UnixDatagramTransport, socketserver::server::Async;
}
