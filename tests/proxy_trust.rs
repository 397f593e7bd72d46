//! Who may send a PROXY header (`ServerBuilder::proxy_protocol_from`), in
//! every strategy: a trusted balancer's header is honoured, and a peer
//! outside the trusted networks is refused (closed unread, the handler
//! never runs) even when it sends a well-formed header naming a trusted
//! address.
//!
//! `harness = false`: each server runs as a process of its own (this
//! binary re-executed with `PROXY_TRUST_SERVER=<mode>`), so the forking
//! and prefork servers fork from a single-threaded process. Clients come
//! from distinct loopback addresses (127.0.0.1, .2, .3, ::1) by binding
//! before they connect. Every server is stopped with SIGTERM by the pid
//! this test started, and every wait is bounded.

mod support;

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use socket2::{Domain, Socket, Type};
use socketserver::server::proxy::{Cidr, ProxyHeader};
use socketserver::server::{
    shutdown_on_signals, BindAddress, Forking, Prefork, Server, SocketServer, Strategy,
    Synchronous, TcpTransport, Threading, Transport, UnixPath, UnixStreamTransport,
};
use support::Who;

const T: Duration = Duration::from_secs(10);

/// What a balancer sends for client 203.0.113.9:40000.
const HEADER: &[u8] = b"PROXY TCP4 203.0.113.9 127.0.0.1 40000 80\r\n";
const CLIENT: &str = "203.0.113.9:40000\n";
/// What an attacker who reaches the port directly sends: a header naming
/// the trusted balancer's own address.
const FORGED: &[u8] = b"PROXY TCP4 127.0.0.2 127.0.0.1 1 80\r\n";

// ---------------------------------------------------------------------
// The server process.

/// The native async twin of [`Who`].
#[cfg(feature = "async")]
struct AsyncWho;

#[cfg(feature = "async")]
impl socketserver::server::AsyncRequestHandler for AsyncWho {
    async fn handle(&self, stream: tokio::net::TcpStream, peer: SocketAddr) -> io::Result<()> {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
        let (r, mut w) = stream.into_split();
        let mut r = tokio::io::BufReader::new(r);
        let mut line = String::new();
        while r.read_line(&mut line).await? > 0 {
            if line == "addr\n" {
                w.write_all(format!("{peer}\n").as_bytes()).await?;
            } else {
                w.write_all(line.as_bytes()).await?;
            }
            line.clear();
        }
        Ok(())
    }
}

/// `PROXY_TRUST_FROM`: absent = no `proxy_protocol_from` (any peer);
/// otherwise a comma-separated list, possibly empty.
fn trusted_from_env() -> Option<Vec<Cidr>> {
    let list = std::env::var("PROXY_TRUST_FROM").ok()?;
    Some(
        list.split(',')
            .filter(|s| !s.is_empty())
            .map(|s| s.parse().unwrap())
            .collect(),
    )
}

fn configure<T: Transport, S: Strategy>(b: &mut socketserver::server::ServerBuilder<T, S>) {
    b.proxy_protocol(Some(T))
        .connection_timeout(T)
        .start_workers(2)
        .async_threads(2);
    if let Some(nets) = trusted_from_env() {
        b.proxy_protocol_from(nets);
    }
}

fn serve<Tr, S>(server: &mut SocketServer<Tr, S>)
where
    Tr: Transport,
    S: Strategy,
    SocketServer<Tr, S>: Server<Address = Tr::Address>,
{
    let _signals = shutdown_on_signals(&server.shutdown_handle()).unwrap();
    let mut out = io::stdout().lock();
    writeln!(out, "ready {}", server.server_address()).unwrap();
    out.flush().unwrap();
    drop(out);
    server.serve_forever().unwrap();
    server.server_close();
}

fn run<Tr, S>(address: Tr::Address)
where
    Tr: Transport,
    S: Strategy,
    Tr::Address: BindAddress<Tr>,
    SocketServer<Tr, S>: Server<Address = Tr::Address>,
{
    let mut b = SocketServer::<Tr, S>::builder();
    configure(&mut b);
    let mut server = b.bind(address, || Who).unwrap();
    serve(&mut server);
}

fn server_main(mode: &str) {
    let listen = std::env::var("PROXY_TRUST_LISTEN").unwrap();
    let tcp = || listen.parse::<SocketAddr>().unwrap();
    match mode {
        "sync" => run::<TcpTransport, Synchronous>(tcp()),
        "threading" => run::<TcpTransport, Threading>(tcp()),
        "forking" => run::<TcpTransport, Forking>(tcp()),
        "prefork" => run::<TcpTransport, Prefork>(tcp()),
        #[cfg(feature = "async")]
        "async" => run::<TcpTransport, socketserver::server::Async>(tcp()),
        #[cfg(feature = "async")]
        "async-native" => {
            let mut b = socketserver::server::AsyncTcpServer::builder();
            configure(&mut b);
            let mut server = b.bind_async(tcp(), AsyncWho).unwrap();
            serve(&mut server);
        }
        "unix-threading" => run::<UnixStreamTransport, Threading>(UnixPath(listen.into())),
        other => panic!("unknown mode {other}"),
    }
}

// ---------------------------------------------------------------------
// The test side.

/// A server process this test started; stopped (SIGTERM, then SIGKILL
/// after 10 s) and reaped when dropped.
struct Running {
    child: Child,
    ready: String,
}

impl Running {
    fn start(mode: &str, listen: &str, from: Option<&str>) -> Running {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.env("PROXY_TRUST_SERVER", mode)
            .env("PROXY_TRUST_LISTEN", listen)
            .env_remove("PROXY_TRUST_FROM")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(from) = from {
            cmd.env("PROXY_TRUST_FROM", from);
        }
        let mut child = cmd.spawn().unwrap();
        let mut line = String::new();
        // The server prints its line at once or exits (closing stdout).
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let mut running = Running {
            child,
            ready: String::new(),
        };
        running.ready = line
            .strip_prefix("ready ")
            .unwrap_or_else(|| panic!("{mode}: no ready line, got {line:?}"))
            .trim_end()
            .to_string();
        running
    }

    fn addr(&self) -> SocketAddr {
        self.ready.parse().unwrap()
    }

    /// SIGTERM, and the exit status must be 0 within 10 s.
    fn stop(mut self) {
        let pid = Pid::from_raw(self.child.id() as i32);
        kill(pid, Signal::SIGTERM).unwrap();
        let deadline = Instant::now() + T;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert_eq!(status.code(), Some(0), "server exit: {status:?}");
                return;
            }
            assert!(Instant::now() < deadline, "server did not stop within 10 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A client stream whose writing side can be ended.
trait Client: Read + Write {
    fn end_writes(&self);
}

impl Client for TcpStream {
    fn end_writes(&self) {
        let _ = self.shutdown(Shutdown::Write);
    }
}

impl Client for UnixStream {
    fn end_writes(&self) {
        let _ = self.shutdown(Shutdown::Write);
    }
}

/// Sends `header` and an `addr` line, ends its side (so the handler's
/// read loop ends), and returns all the server sent back ("" when it
/// closed or reset the connection unread).
fn exchange(mut s: impl Client, header: &[u8]) -> String {
    let mut msg = header.to_vec();
    msg.extend_from_slice(b"addr\n");
    // The server may already have closed a refused connection: a failed
    // write is part of the answer, which the read below gives.
    let _ = s.write_all(&msg);
    s.end_writes();
    let mut out = Vec::new();
    match s.read_to_end(&mut out) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("reading the answer: {e}"),
    }
    String::from_utf8(out).unwrap()
}

/// [`exchange`] over TCP from a client socket bound to `from`.
fn ask_from(server: SocketAddr, from: &str, header: &[u8]) -> String {
    let from: IpAddr = from.parse().unwrap();
    let s = Socket::new(Domain::for_address(server), Type::STREAM, None).unwrap();
    s.bind(&SocketAddr::new(from, 0).into()).unwrap();
    s.connect_timeout(&server.into(), T).unwrap();
    let s = TcpStream::from(s);
    s.set_read_timeout(Some(T)).unwrap();
    s.set_write_timeout(Some(T)).unwrap();
    exchange(s, header)
}

/// The v2 encoding of [`HEADER`].
fn v2_header() -> Vec<u8> {
    ProxyHeader {
        version: 2,
        source: Some("203.0.113.9:40000".parse().unwrap()),
        destination: Some("127.0.0.1:80".parse().unwrap()),
    }
    .encode()
    .unwrap()
}

/// The contract in one strategy: the balancer at 127.0.0.2 is trusted;
/// 127.0.0.1 and 127.0.0.3 are not, and their forged headers get nothing
/// back; the server keeps serving the balancer afterwards.
fn trusted_honoured_untrusted_refused(mode: &str) {
    let server = Running::start(mode, "127.0.0.1:0", Some("127.0.0.2/32"));
    let addr = server.addr();
    assert_eq!(ask_from(addr, "127.0.0.2", HEADER), CLIENT, "{mode}: v1");
    assert_eq!(
        ask_from(addr, "127.0.0.2", &v2_header()),
        CLIENT,
        "{mode}: v2"
    );
    for attacker in ["127.0.0.1", "127.0.0.3"] {
        for header in [FORGED, HEADER] {
            assert_eq!(
                ask_from(addr, attacker, header),
                "",
                "{mode}: a connection from untrusted {attacker} was served"
            );
        }
    }
    assert_eq!(ask_from(addr, "127.0.0.2", HEADER), CLIENT, "{mode}: after");
    server.stop();
}

fn sync() {
    trusted_honoured_untrusted_refused("sync");
}
fn threading() {
    trusted_honoured_untrusted_refused("threading");
}
fn forking() {
    trusted_honoured_untrusted_refused("forking");
}
fn prefork() {
    trusted_honoured_untrusted_refused("prefork");
}
#[cfg(feature = "async")]
fn async_blocking_handler() {
    trusted_honoured_untrusted_refused("async");
}
#[cfg(feature = "async")]
fn async_native_handler() {
    trusted_honoured_untrusted_refused("async-native");
}

/// Networks, not only hosts: 127.0.0.2/31 trusts .2 and .3, not .1.
fn a_network_trusts_every_address_in_it() {
    let server = Running::start("forking", "127.0.0.1:0", Some("10.0.0.0/8,127.0.0.2/31"));
    let addr = server.addr();
    assert_eq!(ask_from(addr, "127.0.0.2", HEADER), CLIENT);
    assert_eq!(ask_from(addr, "127.0.0.3", HEADER), CLIENT);
    assert_eq!(ask_from(addr, "127.0.0.1", FORGED), "");
    server.stop();
}

/// IPv6 peers match IPv6 networks only: `::1` is trusted by `::1`, not by
/// `127.0.0.0/8`.
fn ipv6_peers_match_ipv6_networks() {
    for mode in ["threading", "async-native"] {
        if mode == "async-native" && !cfg!(feature = "async") {
            continue;
        }
        let server = Running::start(mode, "[::1]:0", Some("::1"));
        assert_eq!(ask_from(server.addr(), "::1", HEADER), CLIENT, "{mode}");
        server.stop();
        let server = Running::start(mode, "[::1]:0", Some("127.0.0.0/8,::2"));
        assert_eq!(ask_from(server.addr(), "::1", HEADER), "", "{mode}");
        server.stop();
    }
}

/// An IPv6 socket sees IPv4 clients as `::ffff:a.b.c.d`; an IPv4 network
/// still matches them (and refuses the others). The server listens on the
/// IPv4-mapped loopback address, so only loopback clients reach it.
fn ipv4_mapped_peers_match_ipv4_networks() {
    let server = Running::start("threading", "[::ffff:127.0.0.1]:0", Some("127.0.0.2"));
    let port = server.addr().port();
    let v4 = SocketAddr::from(([127, 0, 0, 1], port));
    assert_eq!(ask_from(v4, "127.0.0.2", HEADER), CLIENT);
    assert_eq!(ask_from(v4, "127.0.0.3", FORGED), "");
    server.stop();
}

/// Without `proxy_protocol_from` the header is believed from anyone: the
/// behaviour `proxy_protocol` alone always had (and warns about).
fn without_a_trusted_list_any_peer_is_believed() {
    let server = Running::start("threading", "127.0.0.1:0", None);
    assert_eq!(
        ask_from(server.addr(), "127.0.0.1", FORGED),
        "127.0.0.2:1\n"
    );
    server.stop();
}

/// A Unix-socket peer is trusted even by an empty list (which trusts no
/// TCP peer at all).
fn unix_socket_peers_are_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let path: PathBuf = dir.path().join("s");
    let server = Running::start("unix-threading", path.to_str().unwrap(), Some(""));
    let s = UnixStream::connect(Path::new(&server.ready)).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    assert_eq!(exchange(s, HEADER), CLIENT);
    server.stop();
}

/// `echo --proxy-protocol --proxy-from 127.0.0.2 --announce-peer`, in a
/// blocking and the native async mode.
fn echo_example_proxy_from_flag() {
    let modes: &[&str] = if cfg!(feature = "async") {
        &["threading", "async"]
    } else {
        &["threading"]
    };
    for &mode in modes {
        let mut child = Command::new(support::example("echo"))
            .args(["--mode", mode, "--listen", "127.0.0.1:0", "--announce-peer"])
            .args(["--proxy-protocol", "--proxy-from", "10.9.0.0/16,127.0.0.2"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let mut server = Running {
            child,
            ready: String::new(),
        };
        let prefix = "listening on tcp://";
        let rest = line
            .strip_prefix(prefix)
            .unwrap_or_else(|| panic!("bad ready line {line:?}"));
        server.ready = rest.split(' ').next().unwrap().to_string();
        let addr = server.addr();
        assert_eq!(
            ask_from(addr, "127.0.0.2", HEADER),
            format!("peer {CLIENT}addr\n"),
            "{mode}"
        );
        assert_eq!(ask_from(addr, "127.0.0.1", FORGED), "", "{mode}");
        server.stop();
    }
}

fn main() {
    if let Ok(mode) = std::env::var("PROXY_TRUST_SERVER") {
        return server_main(&mode);
    }
    let tests: &[(&'static str, fn())] = &[
        ("sync", sync),
        ("threading", threading),
        ("forking", forking),
        ("prefork", prefork),
        (
            "a_network_trusts_every_address_in_it",
            a_network_trusts_every_address_in_it,
        ),
        (
            "ipv6_peers_match_ipv6_networks",
            ipv6_peers_match_ipv6_networks,
        ),
        (
            "ipv4_mapped_peers_match_ipv4_networks",
            ipv4_mapped_peers_match_ipv4_networks,
        ),
        (
            "without_a_trusted_list_any_peer_is_believed",
            without_a_trusted_list_any_peer_is_believed,
        ),
        (
            "unix_socket_peers_are_trusted",
            unix_socket_peers_are_trusted,
        ),
        ("echo_example_proxy_from_flag", echo_example_proxy_from_flag),
        #[cfg(feature = "async")]
        ("async_blocking_handler", async_blocking_handler),
        #[cfg(feature = "async")]
        ("async_native_handler", async_native_handler),
    ];
    support::run_plain(tests);
}
