//! The threading strategy reuses finished handler threads (an idle pool),
//! and closing the server ends them.

mod support;

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use socketserver::server::{Server, ThreadingTcpServer};
use socketserver::{Request, RequestHandler};
use support::TIMEOUT;

/// Echoes and records which thread served the request.
struct Recording(Arc<Mutex<Vec<ThreadId>>>);

impl RequestHandler for Recording {
    fn handle(&mut self, req: &mut Request) -> io::Result<()> {
        self.0.lock().unwrap().push(std::thread::current().id());
        let mut buf = Vec::new();
        req.rfile().read_to_end(&mut buf)?;
        req.wfile().write_all(&buf)
    }
}

fn wait_for(mut cond: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + TIMEOUT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn round_trip(server: &mut ThreadingTcpServer, msg: &[u8]) {
    let mut c = TcpStream::connect(server.server_address()).unwrap();
    c.set_read_timeout(Some(TIMEOUT)).unwrap();
    server.handle_request().unwrap();
    c.write_all(msg).unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let mut out = Vec::new();
    c.read_to_end(&mut out).unwrap();
    assert_eq!(out, msg);
}

#[test]
fn a_finished_handler_thread_serves_the_next_request() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    let mut server =
        ThreadingTcpServer::bind("127.0.0.1:0", move || Recording(s2.clone())).unwrap();
    for i in 0..5u8 {
        round_trip(&mut server, &[b'a' + i; 16]);
        // The thread goes idle once the request is closed.
        wait_for(|| server.strategy().idle_threads() == 1, "an idle thread");
        server.service_actions();
        assert_eq!(server.strategy().tracked_threads(), 0);
        assert_eq!(server.strategy().active_threads(), 0);
    }
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 5);
    assert!(
        seen.iter().all(|t| *t == seen[0]),
        "every request after the first must reuse the idle thread: {seen:?}"
    );
    assert_ne!(seen[0], std::thread::current().id());
    server.server_close();
    assert_eq!(
        server.strategy().idle_threads(),
        0,
        "close ends idle threads"
    );
}

#[test]
fn daemon_threads_are_reused_too_and_released_at_close() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    let mut server = ThreadingTcpServer::builder()
        .daemon_threads(true)
        .bind("127.0.0.1:0", move || Recording(s2.clone()))
        .unwrap();
    for _ in 0..3 {
        round_trip(&mut server, b"daemon");
        wait_for(|| server.strategy().idle_threads() == 1, "an idle thread");
        assert_eq!(server.strategy().tracked_threads(), 0);
    }
    let seen = seen.lock().unwrap().clone();
    assert!(seen.iter().all(|t| *t == seen[0]), "{seen:?}");
    server.server_close();
    wait_for(
        || server.strategy().idle_threads() == 0,
        "idle daemon threads to leave",
    );
}
