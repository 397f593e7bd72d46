//! Descriptor accounting, in its own single-threaded test binary
//! (`harness = false`) so no other test opens descriptors while we count.

mod support;

use socketserver::server::{
    Server, TcpServer, ThreadingTcpServer, ThreadingUnixStreamServer, UdpServer, UnixDatagramServer,
};
use socketserver::Error;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use socketserver::server::Hooks;
use support::{open_fds, serve_in_thread, Echo, TIMEOUT};

fn failed_binds_leak_no_descriptors() {
    let holder = TcpServer::bind("127.0.0.1:0", || Echo).unwrap();
    let taken = holder.server_address();
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-dir").join("s.sock");
    let before = open_fds();
    for i in 0..1024 {
        let err = if i % 2 == 0 {
            ThreadingTcpServer::bind(taken, || Echo).unwrap_err()
        } else {
            ThreadingUnixStreamServer::bind(&missing, || Echo).unwrap_err()
        };
        assert!(matches!(err, Error::Io(_)), "{err}");
    }
    assert_eq!(open_fds(), before, "a failed bind leaked descriptors");
    // Too long a Unix path fails before bind, also without a leak.
    let long = dir.path().join("x".repeat(200));
    assert!(UnixDatagramServer::bind(&long, || Echo).is_err());
    assert_eq!(open_fds(), before);
}

fn closing_releases_descriptors() {
    let dir = tempfile::tempdir().unwrap();
    let before = open_fds();
    let mut tcp = ThreadingTcpServer::bind("127.0.0.1:0", || Echo).unwrap();
    let udp = UdpServer::bind("127.0.0.1:0", || Echo).unwrap();
    let path = dir.path().join("s.sock");
    let unix = ThreadingUnixStreamServer::bind(&path, || Echo).unwrap();
    assert!(open_fds() > before);
    tcp.server_close();
    tcp.server_close();
    drop(tcp);
    drop(udp);
    drop(unix);
    assert_eq!(open_fds(), before, "closing must release every descriptor");
    assert!(!path.exists());
}

/// Counts loop iterations: `service_actions` runs once per iteration.
#[derive(Clone, Default)]
struct Iterations(Arc<AtomicUsize>);

impl Hooks for Iterations {
    fn service_actions(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

fn out_of_descriptors_backs_off_instead_of_spinning() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let iterations = Iterations::default();
    let server = ThreadingTcpServer::builder()
        .hooks(iterations.clone())
        .bind("127.0.0.1:0", || Echo)
        .unwrap();
    let addr = server.server_address();
    // Three connections wait in the backlog.
    let clients: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(addr).unwrap()).collect();
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    // No descriptor can be allocated any more: accept fails with EMFILE.
    setrlimit(Resource::RLIMIT_NOFILE, open_fds() as u64 - 1, hard).unwrap();
    let (handle, thread) = serve_in_thread(server);
    std::thread::sleep(Duration::from_millis(500));
    let spins = iterations.0.load(Ordering::SeqCst);
    setrlimit(Resource::RLIMIT_NOFILE, soft, hard).unwrap();
    // One accept attempt per 100 ms pause, not a busy loop.
    assert!(spins >= 1, "accept was never attempted");
    assert!(spins <= 20, "{spins} loop iterations in 500 ms: spinning");
    // With descriptors back, the waiting connections are served.
    for mut c in clients {
        c.set_read_timeout(Some(TIMEOUT)).unwrap();
        c.write_all(b"x").unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        let mut out = Vec::new();
        c.read_to_end(&mut out).unwrap();
        assert_eq!(out, b"x");
    }
    handle.shutdown();
    thread.join().unwrap();
}

fn main() {
    support::run_plain(&[
        (
            "failed_binds_leak_no_descriptors",
            failed_binds_leak_no_descriptors,
        ),
        ("closing_releases_descriptors", closing_releases_descriptors),
        (
            "out_of_descriptors_backs_off_instead_of_spinning",
            out_of_descriptors_backs_off_instead_of_spinning,
        ),
    ]);
}
