//! Server behaviours ported from CPython's `test_socketserver.py`, for the
//! synchronous and threading strategies. The echo round trip, handler
//! errors, `verify_request`, the drain and `server_close` for all twenty
//! transport × strategy combinations are one generic test in
//! `strategies/mod.rs`, run by `server_forking.rs` (a single-threaded test
//! binary, because forking and prefork fork).

mod support;

use std::io::{self, BufRead, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use socketserver::server::{
    Hooks, Incoming, Server, SocketServer, Strategy, Synchronous, TcpServer, Threading,
    ThreadingTcpServer, ThreadingUdpServer, UdpServer, UnixDatagramServer, UnixStreamServer,
};
use socketserver::{Error, PeerAddr, Request, RequestHandler};
use support::*;

const MSG: &[u8] = b"hello\x00world\n\xff binary\n";

#[test]
fn echo_tcp_ipv6() {
    // Skip only when the machine has no IPv6 loopback at all.
    let Ok(server) = ThreadingTcpServer::bind("[::1]:0", || Echo) else {
        eprintln!("no IPv6 loopback; skipped");
        return;
    };
    let addr = server.server_address();
    assert!(addr.is_ipv6());
    let (handle, thread) = serve_in_thread(server);
    assert_eq!(tcp_roundtrip(addr, MSG), MSG);
    handle.shutdown();
    thread.join().unwrap();
}

#[test]
fn empty_datagram_reply_is_still_sent() {
    struct Silent;
    impl RequestHandler for Silent {
        fn handle(&mut self, _: &mut Request) -> io::Result<()> {
            Ok(())
        }
    }
    let server = UdpServer::bind("127.0.0.1:0", || Silent).unwrap();
    let addr = server.server_address();
    let (handle, thread) = serve_in_thread(server);
    assert_eq!(udp_roundtrip(addr, b"ping"), b"");
    handle.shutdown();
    thread.join().unwrap();
}

#[test]
fn twenty_servers_shut_down_right_after_start() {
    let mut threads = Vec::new();
    for i in 0..20 {
        let server = if i % 2 == 0 {
            ThreadingTcpServer::bind("127.0.0.1:0", || Echo).unwrap()
        } else {
            ThreadingTcpServer::bind("127.0.0.1:0", || Echo).unwrap()
        };
        let (handle, thread) = serve_in_thread(server);
        handle.shutdown();
        threads.push(thread);
    }
    let start = Instant::now();
    for t in threads {
        t.join().unwrap();
    }
    assert!(start.elapsed() < TIMEOUT);
}

#[test]
fn shutdown_before_serve_forever_still_exits() {
    let mut server = TcpServer::bind("127.0.0.1:0", || Echo).unwrap();
    server.shutdown_handle().shutdown();
    server.serve_forever().unwrap();
    // The request was consumed: a second loop serves until told again.
    let addr = server.server_address();
    let handle = server.shutdown_handle();
    let (h2, thread) = serve_in_thread(server);
    assert_eq!(tcp_roundtrip(addr, MSG), MSG);
    assert!(!handle.is_shutdown_requested());
    h2.shutdown();
    thread.join().unwrap();
}

#[test]
fn shutdown_wakes_an_idle_loop_at_once() {
    let server = ThreadingTcpServer::bind("127.0.0.1:0", || Echo).unwrap();
    let (handle, thread) = serve_in_thread(server);
    std::thread::sleep(Duration::from_millis(50));
    let start = Instant::now();
    handle.shutdown();
    thread.join().unwrap();
    // Far below Python's 0.5 s poll interval.
    assert!(
        start.elapsed() < Duration::from_millis(300),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn server_close_on_threading_server_that_never_served() {
    let mut server = ThreadingTcpServer::bind("127.0.0.1:0", || Echo).unwrap();
    server.server_close();
    server.server_close();
    assert!(server.socket().is_none());
    assert!(matches!(server.serve_forever(), Err(Error::Closed)));
}

/// Records `handle_error` calls with their peer addresses.
#[derive(Default, Clone)]
struct ErrorLog(Arc<Mutex<Vec<(String, String)>>>);

impl Hooks for ErrorLog {
    fn handle_error(&self, peer: &PeerAddr, error: &Error) {
        self.0
            .lock()
            .unwrap()
            .push((peer.to_string(), error.to_string()));
    }
}

/// Fails on "error", panics on "panic", echoes otherwise.
struct Picky;

impl RequestHandler for Picky {
    fn handle(&mut self, req: &mut Request) -> io::Result<()> {
        let mut line = String::new();
        req.rfile().read_line(&mut line)?;
        match line.trim() {
            "error" => Err(io::Error::other("handler failed on purpose")),
            "panic" => panic!("handler panicked on purpose"),
            _ => req.wfile().write_all(line.as_bytes()),
        }
    }
}

fn handler_errors<S: Strategy>() {
    let log = ErrorLog::default();
    let server = SocketServer::<socketserver::server::TcpTransport, S>::builder()
        .hooks(log.clone())
        .bind("127.0.0.1:0", || Picky)
        .unwrap();
    let addr = server.server_address();
    let (handle, thread) = serve_in_thread(server);
    // The failing connections are closed without a reply...
    let mut c1 = TcpStream::connect(addr).unwrap();
    let port1 = c1.local_addr().unwrap().port();
    c1.write_all(b"error\n").unwrap();
    let mut rest = Vec::new();
    c1.set_read_timeout(Some(TIMEOUT)).unwrap();
    c1.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    assert_eq!(tcp_roundtrip(addr, b"panic\n"), b"");
    // ...and the server keeps serving.
    assert_eq!(tcp_roundtrip(addr, b"fine\n"), b"fine\n");
    handle.shutdown();
    thread.join().unwrap().server_close();
    let entries = log.0.lock().unwrap().clone();
    assert_eq!(entries.len(), 2, "{entries:?}");
    assert!(entries.iter().any(|(_, e)| e.contains("failed on purpose")));
    assert!(entries
        .iter()
        .any(|(_, e)| e.contains("panicked on purpose")));
    assert!(entries
        .iter()
        .any(|(p, _)| p == &format!("127.0.0.1:{port1}")));
}

#[test]
fn handler_error_in_sync_server() {
    handler_errors::<Synchronous>();
}

#[test]
fn handler_error_in_threading_server() {
    handler_errors::<Threading>();
}

/// A Unix datagram client that closed its socket before the reply went
/// away, like a stream peer that hung up: `handle_error` gets an error
/// the default hook logs at debug (`is_disconnect`), not a handler error.
/// A client that never bound an address is told why it gets no reply.
#[test]
fn unix_datagram_reply_failures_say_whose_they_are() {
    use std::os::unix::net::UnixDatagram;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    let log = Arc::new(Mutex::new(Vec::new()));
    struct Kinds(Arc<Mutex<Vec<(bool, String)>>>);
    impl Hooks for Kinds {
        fn handle_error(&self, _: &PeerAddr, error: &Error) {
            let entry = (error.is_disconnect(), error.to_string());
            self.0.lock().unwrap().push(entry);
        }
    }
    let mut server = UnixDatagramServer::builder()
        .hooks(Kinds(log.clone()))
        .bind(&path, || Echo)
        .unwrap();
    // Gone, file and all.
    let me = dir.path().join("gone.sock");
    let c = UnixDatagram::bind(&me).unwrap();
    c.send_to(b"x", &path).unwrap();
    drop(c);
    std::fs::remove_file(&me).unwrap();
    server.handle_request().unwrap();
    // Gone, its file left behind.
    let me = dir.path().join("left.sock");
    let c = UnixDatagram::bind(&me).unwrap();
    c.send_to(b"x", &path).unwrap();
    drop(c);
    server.handle_request().unwrap();
    // Never bound.
    let c = UnixDatagram::unbound().unwrap();
    c.send_to(b"x", &path).unwrap();
    server.handle_request().unwrap();
    let entries = log.lock().unwrap().clone();
    assert_eq!(entries.len(), 3, "{entries:?}");
    assert!(entries[0].0 && entries[1].0, "{entries:?}");
    assert!(
        !entries[2].0 && entries[2].1.contains("bind"),
        "{entries:?}"
    );
}

/// Says goodbye in `finish`; panics in `handle` on "panic".
struct Polite;

impl RequestHandler for Polite {
    fn handle(&mut self, req: &mut Request) -> io::Result<()> {
        let mut line = String::new();
        req.rfile().read_line(&mut line)?;
        if line.trim() == "panic" {
            panic!("handler panicked on purpose");
        }
        req.wfile().write_all(line.as_bytes())
    }

    fn finish(&mut self, req: &mut Request) -> io::Result<()> {
        req.wfile().write_all(b"bye\n")
    }
}

/// `finish` runs once `setup` succeeded, also when `handle` panicked (as
/// Python's `finally` does), and the panic is still reported.
#[test]
fn finish_runs_after_a_panic_in_handle() {
    let log = ErrorLog::default();
    let server = TcpServer::builder()
        .hooks(log.clone())
        .bind("127.0.0.1:0", || Polite)
        .unwrap();
    let addr = server.server_address();
    let (handle, thread) = serve_in_thread(server);
    assert_eq!(tcp_roundtrip(addr, b"hi\n"), b"hi\nbye\n");
    assert_eq!(tcp_roundtrip(addr, b"panic\n"), b"bye\n");
    handle.shutdown();
    thread.join().unwrap().server_close();
    let entries = log.0.lock().unwrap().clone();
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert!(entries[0].1.contains("panicked on purpose"), "{entries:?}");
}

#[test]
fn big_write_is_sent_whole() {
    const LEN: usize = 16 * 1024 * 1024 + 1;
    let reported = Arc::new(AtomicUsize::new(0));
    let r2 = reported.clone();
    struct Big(Arc<AtomicUsize>);
    impl RequestHandler for Big {
        fn handle(&mut self, req: &mut Request) -> io::Result<()> {
            let data = vec![b'x'; LEN];
            let n = req.wfile().write(&data)?;
            self.0.store(n, Ordering::SeqCst);
            Ok(())
        }
    }
    let server = ThreadingTcpServer::bind("127.0.0.1:0", move || Big(r2.clone())).unwrap();
    let addr = server.server_address();
    let (handle, thread) = serve_in_thread(server);
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut total = 0;
    let mut buf = vec![0; 1 << 16];
    loop {
        let n = s.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        assert!(buf[..n].iter().all(|&b| b == b'x'));
        total += n;
    }
    assert_eq!(total, LEN);
    handle.shutdown();
    thread.join().unwrap().server_close();
    assert_eq!(reported.load(Ordering::SeqCst), LEN);
}

#[derive(Default, Clone)]
struct Refuse {
    verified: Arc<AtomicUsize>,
    shut: Arc<AtomicUsize>,
}

impl Hooks for Refuse {
    fn verify_request(&self, _: &Incoming, _: &PeerAddr) -> bool {
        self.verified.fetch_add(1, Ordering::SeqCst);
        false
    }
    fn shutdown_request(&self, request: Incoming) {
        self.shut.fetch_add(1, Ordering::SeqCst);
        request.shutdown();
    }
}

#[test]
fn verify_request_false_calls_shutdown_request_once() {
    let hooks = Refuse::default();
    let handled = Arc::new(AtomicUsize::new(0));
    let h2 = handled.clone();
    struct Count(Arc<AtomicUsize>);
    impl RequestHandler for Count {
        fn handle(&mut self, _: &mut Request) -> io::Result<()> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }
    let mut server = TcpServer::builder()
        .hooks(hooks.clone())
        .bind("127.0.0.1:0", move || Count(h2.clone()))
        .unwrap();
    let addr = server.server_address();
    let mut c = TcpStream::connect(addr).unwrap();
    server.handle_request().unwrap();
    c.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut buf = Vec::new();
    assert_eq!(c.read_to_end(&mut buf).unwrap(), 0);
    assert_eq!(hooks.verified.load(Ordering::SeqCst), 1);
    assert_eq!(hooks.shut.load(Ordering::SeqCst), 1);
    assert_eq!(handled.load(Ordering::SeqCst), 0);
}

#[test]
fn handle_request_times_out_and_calls_handle_timeout() {
    #[derive(Clone, Default)]
    struct T(Arc<AtomicUsize>);
    impl Hooks for T {
        fn handle_timeout(&self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    let hooks = T::default();
    let mut server = TcpServer::builder()
        .timeout(Duration::from_millis(50))
        .hooks(hooks.clone())
        .bind("127.0.0.1:0", || Echo)
        .unwrap();
    server.handle_request().unwrap();
    assert_eq!(hooks.0.load(Ordering::SeqCst), 1);
    // With a client waiting it serves instead.
    let addr = server.server_address();
    let c = std::thread::spawn(move || tcp_roundtrip(addr, MSG));
    server.handle_request().unwrap();
    assert_eq!(c.join().unwrap(), MSG);
    assert_eq!(hooks.0.load(Ordering::SeqCst), 1);
}

#[test]
fn threading_bookkeeping_does_not_grow() {
    let mut server = ThreadingTcpServer::bind("127.0.0.1:0", || Echo).unwrap();
    let addr = server.server_address();
    for _ in 0..10 {
        let mut c = TcpStream::connect(addr).unwrap();
        server.handle_request().unwrap();
        c.write_all(b"x").unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        let mut out = Vec::new();
        c.read_to_end(&mut out).unwrap();
        assert_eq!(out, b"x");
        assert!(server.strategy().tracked_threads() <= 10);
    }
    let deadline = Instant::now() + TIMEOUT;
    loop {
        server.service_actions();
        if server.strategy().tracked_threads() == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "finished threads were not joined"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(server.strategy().active_threads(), 0);
}

#[test]
fn max_threads_defers_accept() {
    // One slot: while the first client holds it, the second is not even
    // accepted; it is served once the first leaves.
    let server = ThreadingTcpServer::builder()
        .max_threads(1)
        .bind("127.0.0.1:0", || Picky)
        .unwrap();
    let addr = server.server_address();
    let (handle, thread) = serve_in_thread(server);
    let mut first = TcpStream::connect(addr).unwrap();
    first.set_read_timeout(Some(TIMEOUT)).unwrap();
    first.write_all(b"one\n").unwrap();
    let mut line = [0u8; 4];
    first.read_exact(&mut line).unwrap();
    // Picky returns after one line; now hold the only slot with a client
    // that sends nothing.
    drop(first);
    let holder = TcpStream::connect(addr).unwrap();
    // Accepts are FIFO: the holder takes the slot before the waiter.
    let mut waiter = TcpStream::connect(addr).unwrap();
    waiter.write_all(b"two\n").unwrap();
    waiter
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut buf = [0u8; 4];
    let early = waiter.read(&mut buf);
    assert!(
        matches!(&early, Err(e) if e.kind() == io::ErrorKind::WouldBlock),
        "the second client must wait for a free slot: {early:?}"
    );
    drop(holder);
    waiter.set_read_timeout(Some(TIMEOUT)).unwrap();
    waiter.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"two\n");
    handle.shutdown();
    thread.join().unwrap();
}

#[test]
fn daemon_threads_are_not_tracked() {
    let mut server = ThreadingTcpServer::builder()
        .daemon_threads(true)
        .bind("127.0.0.1:0", || Echo)
        .unwrap();
    let addr = server.server_address();
    let c = std::thread::spawn(move || tcp_roundtrip(addr, MSG));
    server.handle_request().unwrap();
    assert_eq!(server.strategy().tracked_threads(), 0);
    assert_eq!(c.join().unwrap(), MSG);
}

#[test]
fn bind_and_activate_false_lets_options_be_set_first() {
    let mut server = TcpServer::builder()
        .bind_and_activate(false)
        .bind("127.0.0.1:0", || Echo)
        .unwrap();
    server.socket().unwrap().set_reuse_address(true).unwrap();
    assert!(TcpStream::connect(server.server_address()).is_err());
    server.server_bind().unwrap();
    server.server_activate().unwrap();
    assert!(server.socket().unwrap().reuse_address().unwrap());
    let addr = server.server_address();
    assert_ne!(addr.port(), 0);
    let (handle, thread) = serve_in_thread(server);
    assert_eq!(tcp_roundtrip(addr, MSG), MSG);
    handle.shutdown();
    thread.join().unwrap();
}

#[test]
fn connection_timeout_ends_a_silent_connection() {
    let log = ErrorLog::default();
    let server = ThreadingTcpServer::builder()
        .connection_timeout(Duration::from_millis(100))
        .hooks(log.clone())
        .bind("127.0.0.1:0", || Picky)
        .unwrap();
    let addr = server.server_address();
    let (handle, thread) = serve_in_thread(server);
    // Says nothing: the handler's read times out and the server closes it.
    let mut silent = TcpStream::connect(addr).unwrap();
    silent.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut out = Vec::new();
    silent.read_to_end(&mut out).unwrap();
    assert!(out.is_empty());
    assert_eq!(tcp_roundtrip(addr, b"alive\n"), b"alive\n");
    handle.shutdown();
    thread.join().unwrap().server_close();
    let entries = log.0.lock().unwrap().clone();
    assert_eq!(entries.len(), 1, "{entries:?}");
    // Said plainly, not as "Resource temporarily unavailable".
    assert!(
        entries[0]
            .1
            .contains("the peer sent nothing within the timeout"),
        "{entries:?}"
    );
}

#[test]
fn echo_udp_ipv6() {
    let Ok(server) = ThreadingUdpServer::bind("[::1]:0", || Echo) else {
        eprintln!("no IPv6 loopback; skipped");
        return;
    };
    let addr = server.server_address();
    let (handle, thread) = serve_in_thread(server);
    let c = std::net::UdpSocket::bind("[::1]:0").unwrap();
    c.set_read_timeout(Some(TIMEOUT)).unwrap();
    c.send_to(MSG, addr).unwrap();
    let mut buf = [0u8; 128];
    let n = c.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], MSG);
    handle.shutdown();
    thread.join().unwrap();
}

#[test]
fn bind_errors_name_the_address() {
    let taken = TcpServer::bind("127.0.0.1:0", || Echo).unwrap();
    let addr = taken.server_address();
    let err = TcpServer::bind(addr, || Echo).unwrap_err();
    let Error::Io(io) = &err else {
        panic!("not an I/O error: {err:?}")
    };
    assert_eq!(io.kind(), io::ErrorKind::AddrInUse, "{err}");
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no/such/dir/s.sock");
    let err = UnixStreamServer::bind(&missing, || Echo).unwrap_err();
    assert!(
        err.to_string().contains(&missing.display().to_string()),
        "{err}"
    );
}

/// A socket file left by a server that never closed (SIGKILL, or a
/// signal it did not handle) does not stop the next server from starting;
/// a live server's file, and a path that is not a socket, are left alone.
#[test]
fn a_stale_unix_socket_file_is_replaced_but_a_live_one_is_not() {
    use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
    let dir = tempfile::tempdir().unwrap();

    // Stream: a listener dropped without removing its file.
    let path = dir.path().join("stream.sock");
    drop(UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let mut server = UnixStreamServer::bind(&path, || Echo).expect("stale stream socket file");
    let client = {
        let path = path.clone();
        std::thread::spawn(move || -> io::Result<Vec<u8>> {
            let mut c = UnixStream::connect(&path)?;
            c.write_all(MSG)?;
            c.shutdown(Shutdown::Write)?;
            let mut back = Vec::new();
            c.read_to_end(&mut back)?;
            Ok(back)
        })
    };
    server.handle_request().unwrap();
    assert_eq!(client.join().unwrap().unwrap(), MSG);

    // A second server on the live server's path fails, and the first
    // keeps its file and serves on.
    let err = UnixStreamServer::bind(&path, || Echo).unwrap_err();
    let Error::Io(io) = &err else {
        panic!("not an I/O error: {err:?}")
    };
    assert_eq!(io.kind(), io::ErrorKind::AddrInUse, "{err}");
    assert!(path.exists(), "the live server's socket file was removed");
    let c = UnixStream::connect(&path).expect("the live server lost its address");
    c.shutdown(Shutdown::Write).unwrap();
    server.handle_request().unwrap();
    server.server_close();
    assert!(!path.exists());

    // Datagram: the same.
    let path = dir.path().join("dgram.sock");
    drop(UnixDatagram::bind(&path).unwrap());
    let mut server = UnixDatagramServer::bind(&path, || Echo).expect("stale datagram socket file");
    let me = dir.path().join("client.sock");
    let c = UnixDatagram::bind(&me).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.send_to(MSG, &path).unwrap();
    server.handle_request().unwrap();
    let mut buf = [0u8; 256];
    let n = c.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], MSG);
    let err = UnixDatagramServer::bind(&path, || Echo).unwrap_err();
    assert!(
        matches!(&err, Error::Io(io) if io.kind() == io::ErrorKind::AddrInUse),
        "{err}"
    );
    assert!(path.exists(), "the live server's socket file was removed");
    drop(server);
    assert!(!path.exists());

    // A regular file is never removed.
    let file = dir.path().join("notes.txt");
    std::fs::write(&file, b"keep me").unwrap();
    let err = UnixStreamServer::bind(&file, || Echo).unwrap_err();
    assert!(err.to_string().contains("not a socket"), "{err}");
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
}

/// Closing removes the socket file the server made, not one another
/// server bound on the same path after someone removed the first.
#[test]
fn closing_leaves_a_socket_file_another_server_bound() {
    use std::os::unix::net::{UnixListener, UnixStream};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    let mut first = UnixStreamServer::bind(&path, || Echo).unwrap();
    std::fs::remove_file(&path).unwrap();
    let second = UnixListener::bind(&path).unwrap();
    first.server_close();
    assert!(
        path.exists(),
        "closing the first server removed the second's file"
    );
    let _c = UnixStream::connect(&path).expect("the second server lost its address");
    second.accept().unwrap();
}

#[test]
fn reuse_address_is_on_for_tcp_and_off_for_udp_by_default() {
    let tcp = TcpServer::bind("127.0.0.1:0", || Echo).unwrap();
    assert!(tcp.socket().unwrap().reuse_address().unwrap());
    let udp = UdpServer::bind("127.0.0.1:0", || Echo).unwrap();
    assert!(!udp.socket().unwrap().reuse_address().unwrap());
    let off = TcpServer::builder()
        .allow_reuse_address(false)
        .bind("127.0.0.1:0", || Echo)
        .unwrap();
    assert!(!off.socket().unwrap().reuse_address().unwrap());
}

/// What `f` logs at `level` or above on this thread, as text.
fn logged(level: tracing::Level, f: impl FnOnce()) -> String {
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf::default();
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(level)
        .finish();
    tracing::subscriber::with_default(subscriber, f);
    let log = String::from_utf8_lossy(&buf.0.lock().unwrap()).into_owned();
    log
}

/// The info line at a shutdown names the health port's `drain` only when
/// the server has a health port.
#[test]
fn the_stopping_line_mentions_health_only_with_a_health_port() {
    for with_health in [false, true] {
        let log = logged(tracing::Level::INFO, || {
            let mut builder = ThreadingTcpServer::builder();
            if with_health {
                builder.health("127.0.0.1:0".parse().unwrap());
            }
            let mut server = builder.bind("127.0.0.1:0", || Echo).unwrap();
            server.shutdown_handle().shutdown();
            server.serve_forever().unwrap();
            server.server_close();
        });
        let stopping: Vec<&str> = log.lines().filter(|l| l.contains("stopping")).collect();
        assert_eq!(stopping.len(), 1, "with_health={with_health}: {log}");
        assert_eq!(
            stopping[0].contains("health reports drain"),
            with_health,
            "{log}"
        );
    }
}

/// A Linux abstract name (a path starting with NUL) is served, shown as
/// `@name`, and closed without a warning about a socket file (it has none).
#[test]
fn an_abstract_unix_name_is_served_shown_with_an_at_and_closed_quietly() {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::net::{SocketAddr, UnixStream};
    let name = format!("socketserver-test-{}", std::process::id());
    let path = std::path::PathBuf::from(std::ffi::OsStr::from_bytes(
        &[b"\0", name.as_bytes()].concat(),
    ));
    let log = logged(tracing::Level::WARN, || {
        let mut server = UnixStreamServer::bind(&path, || Echo).unwrap();
        assert_eq!(server.server_address().to_string(), format!("@{name}"));
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let mut c = UnixStream::connect_addr(&addr).unwrap();
        c.write_all(MSG).unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        server.handle_request().unwrap();
        let mut back = Vec::new();
        c.read_to_end(&mut back).unwrap();
        assert_eq!(back, MSG);
        server.server_close();
    });
    assert!(log.is_empty(), "warnings at close: {log}");
}
