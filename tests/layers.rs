//! Handler layers on a blocking server: PROXY protocol and per-IP limit.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use socketserver::server::{layers, Server, ThreadingTcpServer};
use socketserver::RequestHandler;
use support::Who;

const T: Duration = Duration::from_secs(10);

fn serve<F, H>(
    factory: F,
) -> (
    SocketAddr,
    socketserver::server::ShutdownHandle,
    std::thread::JoinHandle<()>,
)
where
    F: Fn() -> H + Send + Sync + 'static,
    H: RequestHandler,
{
    let mut server = ThreadingTcpServer::builder()
        .connection_timeout(T)
        .bind("127.0.0.1:0", factory)
        .unwrap();
    let addr = server.server_address();
    let handle = server.shutdown_handle();
    let thread = std::thread::spawn(move || {
        server.serve_forever().unwrap();
        server.server_close();
    });
    (addr, handle, thread)
}

fn conn(addr: SocketAddr) -> BufReader<TcpStream> {
    let c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(T)).unwrap();
    BufReader::new(c)
}

fn ask(c: &mut BufReader<TcpStream>, line: &str) -> String {
    c.get_mut().write_all(line.as_bytes()).unwrap();
    let mut out = String::new();
    c.read_line(&mut out).unwrap();
    out
}

#[test]
fn proxy_layer_sets_peer_and_keeps_client_bytes() {
    let (addr, stop, t) = serve(layers::proxy_protocol(|| Who));
    // Header and the first request in one packet: the request must not be
    // lost to the header parser.
    let mut c = conn(addr);
    c.get_mut()
        .write_all(b"PROXY TCP6 2001:db8::7 ::1 5555 80\r\naddr\n")
        .unwrap();
    let mut out = String::new();
    c.read_line(&mut out).unwrap();
    assert_eq!(out, "[2001:db8::7]:5555\n");
    assert_eq!(ask(&mut c, "more\n"), "more\n");

    let mut bad = conn(addr);
    bad.get_mut().write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut rest = Vec::new();
    let n = bad.read_to_end(&mut rest).unwrap_or(0);
    assert_eq!(n, 0, "served a connection without a PROXY header");
    drop(c);
    stop.shutdown();
    t.join().unwrap();
}

#[test]
fn per_ip_layer_refuses_extra_connections() {
    let (addr, stop, t) = serve(layers::per_ip_limit(2, || Who));
    let mut a = conn(addr);
    let mut b = conn(addr);
    assert_eq!(ask(&mut a, "a\n"), "a\n");
    assert_eq!(ask(&mut b, "b\n"), "b\n");
    let mut c = conn(addr);
    let _ = c.get_mut().write_all(b"c\n");
    let mut rest = Vec::new();
    let n = c.read_to_end(&mut rest).unwrap_or(0);
    assert_eq!(n, 0, "third connection from one address was served");
    drop(a);
    // The slot frees once the server has finished the first connection.
    let deadline = std::time::Instant::now() + T;
    loop {
        let mut d = conn(addr);
        let _ = d.get_mut().write_all(b"d\n");
        let mut out = String::new();
        if d.read_line(&mut out).is_ok() && out == "d\n" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "slot never freed");
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(b);
    stop.shutdown();
    t.join().unwrap();
}

/// Counts `handle_error` calls.
#[derive(Clone, Default)]
struct CountErrors(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl socketserver::server::Hooks for CountErrors {
    fn handle_error(&self, peer: &socketserver::PeerAddr, error: &socketserver::Error) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        socketserver::server::report_error(peer, error);
    }
}

/// A client over its per-IP limit, and connections that never deliver a
/// PROXY header (one hangs up at once, as a balancer's TCP check does;
/// one sends garbage), are the layers' refusals, not handler errors: they
/// never reach `handle_error` (which would log each at `error`).
#[test]
fn refusals_by_the_layers_are_not_handler_errors() {
    use std::sync::atomic::Ordering;
    let errors = CountErrors::default();
    let mut server = ThreadingTcpServer::builder()
        .connection_timeout(T)
        .hooks(errors.clone())
        .bind(
            "127.0.0.1:0",
            layers::per_ip_limit(1, layers::proxy_protocol(|| Who)),
        )
        .unwrap();
    let addr = server.server_address();
    let stop = server.shutdown_handle();
    let t = std::thread::spawn(move || {
        server.serve_forever().unwrap();
        server.server_close();
    });
    let closed = |mut c: BufReader<TcpStream>| {
        let mut rest = Vec::new();
        assert_eq!(c.read_to_end(&mut rest).unwrap_or(0), 0);
    };
    // The check-like peer and the garbage one, each alone.
    closed({
        let c = conn(addr);
        c.get_ref().shutdown(std::net::Shutdown::Write).unwrap();
        c
    });
    closed({
        let mut c = conn(addr);
        c.get_mut().write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        c
    });
    // One served client holds the address's only slot; a second is refused.
    let mut a = conn(addr);
    a.get_mut()
        .write_all(b"PROXY TCP4 192.0.2.1 192.0.2.2 1000 80\r\naddr\n")
        .unwrap();
    let mut out = String::new();
    a.read_line(&mut out).unwrap();
    assert_eq!(out, "192.0.2.1:1000\n");
    closed(conn(addr));
    drop(a);
    stop.shutdown();
    t.join().unwrap();
    assert_eq!(
        errors.0.load(Ordering::SeqCst),
        0,
        "refusals reached handle_error"
    );
}
