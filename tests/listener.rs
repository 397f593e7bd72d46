//! `Listener` / `Client` with and without an authkey, over TCP and Unix.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use socketserver::process::{Address, Client, Listener};
use socketserver::Error;

fn tcp() -> Address {
    Address::Tcp("127.0.0.1:0".parse::<SocketAddr>().unwrap())
}

fn round_trip(address: Address, key: Option<&'static [u8]>) {
    let listener = Listener::bind(address, key).unwrap();
    let addr = listener.address().unwrap();
    let client = thread::spawn(move || {
        let mut c = Client::connect(&addr, key).unwrap();
        c.send(&("question", 41u32)).unwrap();
        c.recv::<u32>().unwrap()
    });
    let mut conn = listener.accept().unwrap();
    let (q, n): (String, u32) = conn.recv().unwrap();
    assert_eq!(q, "question");
    conn.send(&(n + 1)).unwrap();
    assert_eq!(client.join().unwrap(), 42);
}

#[test]
fn tcp_round_trip_with_authkey() {
    round_trip(tcp(), Some(b"secret key"));
}

#[test]
fn tcp_round_trip_without_authkey() {
    round_trip(tcp(), None);
}

#[test]
fn unix_round_trip_with_authkey_and_path_removed_on_drop() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("listener.sock");
    round_trip(Address::Unix(path.clone()), Some(b"k"));
    assert!(!path.exists(), "socket file left behind");
}

fn wrong_key_refused(address: Address) {
    let listener = Listener::bind(address, Some(b"right key")).unwrap();
    let addr = listener.address().unwrap();
    let addr2 = addr.clone();
    let client = thread::spawn(move || Client::connect(&addr2, Some(b"wrong key")));
    match listener.accept() {
        Err(Error::AuthenticationFailed(_)) => {}
        other => panic!("server: expected AuthenticationFailed, got {other:?}"),
    }
    match client.join().unwrap() {
        Err(Error::AuthenticationFailed(_)) => {}
        other => panic!("client: expected AuthenticationFailed, got {other:?}"),
    }
    // The listener keeps working for a client with the right key.
    let good = thread::spawn(move || {
        let mut c = Client::connect(&addr, Some(b"right key")).unwrap();
        c.send(&7u8).unwrap();
    });
    let mut conn = listener.accept().unwrap();
    assert_eq!(conn.recv::<u8>().unwrap(), 7);
    good.join().unwrap();
}

#[test]
fn wrong_authkey_refused_tcp() {
    wrong_key_refused(tcp());
}

#[test]
fn wrong_authkey_refused_unix() {
    let dir = tempfile::tempdir().unwrap();
    wrong_key_refused(Address::Unix(dir.path().join("s")));
}

#[test]
fn client_without_key_cannot_slip_a_message_in() {
    let listener = Listener::bind(tcp(), Some(b"key")).unwrap();
    let addr = listener.address().unwrap();
    let client = thread::spawn(move || {
        // No authkey: sends an application message straight away.
        let mut c = Client::connect(&addr, None).unwrap();
        c.send(&"let me in").unwrap();
        // It then sees the challenge, not a reply.
        c.recv_bytes()
    });
    assert!(matches!(
        listener.accept(),
        Err(Error::AuthenticationFailed(_))
    ));
    let first = client.join().unwrap().unwrap();
    assert!(first.starts_with(b"#CHALLENGE#"));
}

#[test]
fn listener_without_key_refused_by_client_with_key() {
    let listener = Listener::bind(tcp(), None).unwrap();
    let addr = listener.address().unwrap();
    let client = thread::spawn(move || Client::connect(&addr, Some(b"key")));
    let mut conn = listener.accept().unwrap();
    conn.send(&"not a challenge").unwrap();
    assert!(matches!(
        client.join().unwrap(),
        Err(Error::AuthenticationFailed(_))
    ));
}

#[test]
fn silent_peer_times_out_instead_of_hanging_accept() {
    let mut listener = Listener::bind(tcp(), Some(b"key")).unwrap();
    listener.set_handshake_timeout(Duration::from_millis(200));
    let Address::Tcp(addr) = listener.address().unwrap() else {
        unreachable!()
    };
    let silent = TcpStream::connect(addr).unwrap();
    let t = Instant::now();
    match listener.accept() {
        Err(Error::Timeout(_)) => {}
        other => panic!("expected Timeout, got {other:?}"),
    }
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    drop(silent);
}

#[test]
fn oversized_handshake_message_refused() {
    let listener = Listener::bind(tcp(), Some(b"key")).unwrap();
    let Address::Tcp(addr) = listener.address().unwrap() else {
        unreachable!()
    };
    let evil = thread::spawn(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        // Claim a 1 GiB "digest".
        s.write_all(&(1u32 << 30).to_be_bytes()).unwrap();
        thread::sleep(Duration::from_millis(500));
    });
    assert!(matches!(
        listener.accept(),
        Err(Error::AuthenticationFailed(_))
    ));
    evil.join().unwrap();
}

#[test]
fn empty_authkey_is_invalid() {
    assert!(matches!(
        Listener::bind(tcp(), Some(b"")),
        Err(Error::InvalidArgument(_))
    ));
}

#[test]
fn dribbling_peer_cannot_stretch_the_handshake() {
    let mut listener = Listener::bind(tcp(), Some(b"key")).unwrap();
    listener.set_handshake_timeout(Duration::from_millis(300));
    let Address::Tcp(addr) = listener.address().unwrap() else {
        unreachable!()
    };
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let dribbler = thread::spawn(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        // A 36-byte "digest" frame, one byte every 50 ms (1.8 s in all),
        // each byte well inside any per-read timeout.
        let mut frame = 32u32.to_be_bytes().to_vec();
        frame.extend_from_slice(&[0; 32]);
        for b in frame {
            if stop2.load(std::sync::atomic::Ordering::Relaxed) || s.write_all(&[b]).is_err() {
                break;
            }
            thread::sleep(Duration::from_millis(50));
        }
    });
    let t = Instant::now();
    match listener.accept() {
        Err(Error::Timeout(_)) => {}
        other => panic!("expected Timeout, got {other:?}"),
    }
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "{:?}",
        t.elapsed()
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    dribbler.join().unwrap();
}

/// `connect_with_timeout` bounds connecting to a Unix socket too: when
/// the listener's backlog is full (its owner busy, or peers flooding it),
/// a Unix `connect` otherwise blocks until the listener accepts, however
/// long that takes.
#[test]
fn unix_connect_to_a_full_backlog_times_out() {
    use socket2::{Domain, SockAddr, Socket, Type};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("full.sock");
    // Never accepts.
    let listener = Listener::bind(Address::Unix(path.clone()), Some(b"key")).unwrap();
    let target = SockAddr::unix(&path).unwrap();
    let mut queued = Vec::new();
    for _ in 0..10_000 {
        let s = Socket::new(Domain::UNIX, Type::STREAM, None).unwrap();
        s.set_nonblocking(true).unwrap();
        match s.connect(&target) {
            Ok(()) => queued.push(s),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("filling the backlog: {e}"),
        }
    }
    assert!(queued.len() < 10_000, "the backlog never filled");
    let (tx, rx) = std::sync::mpsc::channel();
    let addr = Address::Unix(path);
    thread::spawn(move || {
        let t = Instant::now();
        let result = Client::connect_with_timeout(&addr, Some(b"key"), Duration::from_millis(200));
        let _ = tx.send((result.map(|_| ()), t.elapsed()));
    });
    match rx.recv_timeout(Duration::from_secs(5)) {
        Ok((Err(Error::Timeout(_)), took)) => assert!(took < Duration::from_secs(2), "{took:?}"),
        Ok(other) => panic!("expected Timeout, got {other:?}"),
        Err(_) => panic!("connect to a full backlog still blocked after 5 s"),
    }
    drop(queued);
    drop(listener);
}

/// Runs `listener.accept()` `n` times on a thread; the results, in order.
fn accept_n(
    listener: Listener,
    n: usize,
) -> thread::JoinHandle<(Listener, Vec<Result<(), String>>)> {
    thread::spawn(move || {
        let results = (0..n)
            .map(|_| listener.accept().map(drop).map_err(|e| e.to_string()))
            .collect();
        (listener, results)
    })
}

/// Wrong authkey answers are limited per client address: after the
/// limit, the address is refused (even with the right key, so a guesser
/// cannot tell a right guess) until its window is over. Before, a client
/// could guess a weak key at the rate of the handshake.
#[test]
fn wrong_authkey_attempts_are_limited_per_address() {
    let mut listener = Listener::bind(tcp(), Some(b"right key")).unwrap();
    listener.set_failed_attempt_limit(3, Duration::from_millis(1500));
    let addr = listener.address().unwrap();
    let server = accept_n(listener, 5);
    for i in 0..3 {
        match Client::connect(&addr, Some(b"guess")) {
            Err(Error::AuthenticationFailed(_)) => {}
            other => panic!("guess {i}: expected AuthenticationFailed, got {other:?}"),
        }
    }
    let started = Instant::now();
    match Client::connect(&addr, Some(b"right key")) {
        Err(Error::AuthenticationFailed(msg)) => assert!(msg.contains("refuses"), "{msg}"),
        other => panic!("blocked address: expected AuthenticationFailed, got {other:?}"),
    }
    // Once the window is over, the right key works again.
    thread::sleep(Duration::from_millis(1600).saturating_sub(started.elapsed()));
    let mut conn = Client::connect(&addr, Some(b"right key")).unwrap();
    conn.send(&1u8).unwrap();
    let (_listener, results) = server.join().unwrap();
    assert!(results[..4].iter().all(Result::is_err), "{results:?}");
    assert!(
        results[3].as_ref().unwrap_err().contains("too many"),
        "{results:?}"
    );
    assert!(results[4].is_ok(), "{results:?}");
}

/// The limit counts per address, and only over TCP: a Unix socket's
/// peers are all local, and not told apart.
#[test]
fn unix_listener_does_not_limit_attempts() {
    let dir = tempfile::tempdir().unwrap();
    let mut listener =
        Listener::bind(Address::Unix(dir.path().join("l.sock")), Some(b"right key")).unwrap();
    listener.set_failed_attempt_limit(1, Duration::from_secs(60));
    let addr = listener.address().unwrap();
    let server = accept_n(listener, 3);
    for _ in 0..2 {
        assert!(matches!(
            Client::connect(&addr, Some(b"guess")),
            Err(Error::AuthenticationFailed(_))
        ));
    }
    Client::connect(&addr, Some(b"right key")).unwrap();
    let (_listener, results) = server.join().unwrap();
    assert!(results[2].is_ok(), "{results:?}");
}

/// A handshake timeout of `Duration::MAX` means "no limit", on both
/// sides; it used to panic adding it to the current instant.
#[test]
fn unbounded_handshake_timeout_is_accepted() {
    let mut listener = Listener::bind(tcp(), Some(b"key")).unwrap();
    listener.set_handshake_timeout(Duration::MAX);
    let addr = listener.address().unwrap();
    let client = thread::spawn(move || {
        let mut c = Client::connect_with_timeout(&addr, Some(b"key"), Duration::MAX).unwrap();
        c.send(&5u8).unwrap();
    });
    let mut conn = listener.accept().unwrap();
    assert_eq!(conn.recv::<u8>().unwrap(), 5);
    client.join().unwrap();
}

/// Log lines written by `tracing` on the current thread, for checking
/// what a listener logs.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Many addresses reaching the failed-attempt limit (a distributed
/// guesser) log one warning per interval, with a count, not one each.
#[test]
fn refused_addresses_are_not_logged_one_line_each() {
    let captured = Captured::default();
    let sink = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .with_writer(move || sink.clone())
        .finish();
    let mut listener = Listener::bind(tcp(), Some(b"key")).unwrap();
    listener.set_failed_attempt_limit(1, Duration::from_secs(60));
    let Address::Tcp(bound) = listener.address().unwrap() else {
        unreachable!()
    };
    let peers = thread::spawn(move || {
        for last in 2..7u8 {
            // A different source address each time: 127.0.0.<last>.
            let s =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            s.bind(&SocketAddr::from(([127, 0, 0, last], 0)).into())
                .unwrap();
            s.connect(&SocketAddr::from(([127, 0, 0, 1], bound.port())).into())
                .unwrap();
            let mut s: TcpStream = s.into();
            let mut challenge = [0u8; 4 + 43];
            std::io::Read::read_exact(&mut s, &mut challenge).unwrap();
            let mut wrong = 32u32.to_be_bytes().to_vec();
            wrong.extend_from_slice(&[0; 32]);
            s.write_all(&wrong).unwrap();
            let mut rest = Vec::new();
            let _ = std::io::Read::read_to_end(&mut s, &mut rest);
        }
    });
    tracing::subscriber::with_default(subscriber, || {
        for _ in 2..7 {
            assert!(matches!(
                listener.accept(),
                Err(Error::AuthenticationFailed(_))
            ));
        }
    });
    peers.join().unwrap();
    let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let warnings = log.lines().filter(|l| l.contains("refusing it")).count();
    assert_eq!(warnings, 1, "{log}");
}
