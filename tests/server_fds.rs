//! Descriptor accounting, in its own single-threaded test binary
//! (`harness = false`) so no other test opens descriptors while we count.

mod support;

use socketserver::server::{
    Server, TcpServer, ThreadingTcpServer, ThreadingUnixStreamServer, UdpServer, UnixDatagramServer,
};
use socketserver::Error;
use support::{open_fds, Echo};

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
    println!("test failed_binds_leak_no_descriptors ... ok");
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
    println!("test closing_releases_descriptors ... ok");
}

fn main() {
    failed_binds_leak_no_descriptors();
    closing_releases_descriptors();
}
