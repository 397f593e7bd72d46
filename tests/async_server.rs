//! The async strategy: echo, limits, blocking handlers, PROXY, shutdown.

#![cfg(feature = "async")]

use std::io::{self, BufRead, Write};
use std::net::SocketAddr;
use std::time::Duration;

use socketserver::server::{
    AsyncRequestHandler, AsyncTcpServer, DrainReport, Server, ShutdownHandle,
};
use socketserver::{Request, RequestHandler};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// Echoes lines; a line "sleep" waits 300 ms first; "addr" answers the
/// peer address the server handed over; "panic" panics.
struct Echo;

impl AsyncRequestHandler for Echo {
    async fn handle(&self, stream: TcpStream, peer: SocketAddr) -> io::Result<()> {
        let (r, mut w) = stream.into_split();
        let mut r = BufReader::new(r);
        let mut line = Vec::new();
        while r.read_until(b'\n', &mut line).await? > 0 {
            match &line[..] {
                b"sleep\n" => tokio::time::sleep(Duration::from_millis(300)).await,
                b"addr\n" => line = format!("{peer}\n").into_bytes(),
                b"panic\n" => panic!("handler asked to panic"),
                _ => {}
            }
            w.write_all(&line).await?;
            line.clear();
        }
        Ok(())
    }
}

/// A blocking handler written for the threaded strategies.
struct SyncUpper;

impl RequestHandler for SyncUpper {
    fn handle(&mut self, req: &mut Request) -> io::Result<()> {
        let mut line = String::new();
        while req.rfile().read_line(&mut line)? > 0 {
            req.wfile().write_all(line.to_uppercase().as_bytes())?;
            line.clear();
        }
        Ok(())
    }
}

const T: Duration = Duration::from_secs(10);

/// Serves on a plain thread (the server runs its own runtime); the thread
/// closes the server after the shutdown and hands back its drain report.
fn start(
    mut server: AsyncTcpServer,
) -> (
    SocketAddr,
    ShutdownHandle,
    std::thread::JoinHandle<DrainReport>,
) {
    let addr = server.server_address();
    let handle = server.shutdown_handle();
    let thread = std::thread::spawn(move || {
        server.serve_forever().expect("serve_forever");
        server.server_close();
        server.drain_report().expect("closed")
    });
    (addr, handle, thread)
}

async fn finish(served: std::thread::JoinHandle<DrainReport>) -> DrainReport {
    let joined = tokio::task::spawn_blocking(move || served.join().expect("server thread"));
    timeout(T, joined).await.unwrap().unwrap()
}

async fn ask(conn: &mut BufReader<TcpStream>, line: &str) -> String {
    conn.get_mut().write_all(line.as_bytes()).await.unwrap();
    let mut out = String::new();
    timeout(T, conn.read_line(&mut out)).await.unwrap().unwrap();
    out
}

/// Sends `line` and asserts that no answer comes within 400 ms: the
/// connection waits in the kernel backlog, not accepted.
async fn assert_unanswered(conn: &mut BufReader<TcpStream>, line: &str, why: &str) {
    conn.get_mut().write_all(line.as_bytes()).await.unwrap();
    let mut out = String::new();
    let answered = timeout(Duration::from_millis(400), conn.read_line(&mut out)).await;
    assert!(answered.is_err(), "{why}: {out:?}");
}

async fn connect(addr: SocketAddr) -> BufReader<TcpStream> {
    BufReader::new(TcpStream::connect(addr).await.unwrap())
}

#[tokio::test]
async fn async_echo_round_trip() {
    let (addr, stop, served) = start(AsyncTcpServer::bind_async("127.0.0.1:0", Echo).unwrap());
    let mut c = connect(addr).await;
    for i in 0..100 {
        let msg = format!("message {i}\n");
        assert_eq!(ask(&mut c, &msg).await, msg);
    }
    drop(c);
    stop.shutdown();
    let report = finish(served).await;
    assert_eq!(report.aborted, 0);
}

#[tokio::test]
async fn connection_limit_defers_the_next_connection() {
    let server = AsyncTcpServer::builder()
        .max_connections(2)
        .bind_async("127.0.0.1:0", Echo)
        .unwrap();
    let (addr, stop, served) = start(server);
    let mut a = connect(addr).await;
    let mut b = connect(addr).await;
    assert_eq!(ask(&mut a, "a\n").await, "a\n");
    assert_eq!(ask(&mut b, "b\n").await, "b\n");
    // The third connection completes in the kernel backlog but is not
    // accepted, so nothing answers it while a and b are open.
    let mut c = connect(addr).await;
    assert_unanswered(
        &mut c,
        "c\n",
        "third connection was served while two were open",
    )
    .await;
    drop(a);
    let mut out = String::new();
    timeout(T, c.read_line(&mut out)).await.unwrap().unwrap();
    assert_eq!(out, "c\n");
    drop((b, c));
    stop.shutdown();
    finish(served).await;
}

#[tokio::test]
async fn blocking_handlers_beyond_max_blocking_wait_in_the_backlog() {
    /// Counts the requests accepted (`verify_request` runs right after
    /// `accept`).
    #[derive(Clone, Default)]
    struct Accepted(std::sync::Arc<std::sync::atomic::AtomicUsize>);
    impl socketserver::server::Hooks for Accepted {
        fn verify_request(
            &self,
            _: &socketserver::server::Incoming,
            _: &socketserver::PeerAddr,
        ) -> bool {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            true
        }
    }
    let accepted = Accepted::default();
    let server = AsyncTcpServer::builder()
        .max_blocking(1)
        .hooks(accepted.clone())
        .bind("127.0.0.1:0", || SyncUpper)
        .unwrap();
    let (addr, stop, served) = start(server);
    let mut a = connect(addr).await;
    assert_eq!(ask(&mut a, "a\n").await, "A\n");
    // The only blocking slot is taken by `a`: `b` is not even accepted.
    let mut b = connect(addr).await;
    b.get_mut().write_all(b"b\n").await.unwrap();
    let mut out = String::new();
    assert!(
        timeout(Duration::from_millis(400), b.read_line(&mut out))
            .await
            .is_err(),
        "a second blocking handler ran beyond max_blocking"
    );
    let n = accepted.0.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(n, 1, "accepted while every blocking slot was taken");
    // When `a` ends, `b` is accepted and served, nothing lost.
    drop(a);
    timeout(T, b.read_line(&mut out)).await.unwrap().unwrap();
    assert_eq!(out, "B\n");
    drop(b);
    stop.shutdown();
    let report = finish(served).await;
    assert_eq!(report.aborted, 0);
}

#[tokio::test]
async fn blocking_request_handler_runs_on_async_server() {
    let server = AsyncTcpServer::bind("127.0.0.1:0", || SyncUpper).unwrap();
    let (addr, stop, served) = start(server);
    let mut conns = Vec::new();
    for _ in 0..8 {
        conns.push(connect(addr).await);
    }
    for (i, c) in conns.iter_mut().enumerate() {
        assert_eq!(ask(c, &format!("hi {i}\n")).await, format!("HI {i}\n"));
    }
    drop(conns);
    stop.shutdown();
    let report = finish(served).await;
    assert_eq!(report.aborted, 0);
}

#[tokio::test]
async fn shutdown_drains_in_flight_requests_and_refuses_new_ones() {
    let (addr, stop, served) = start(AsyncTcpServer::bind_async("127.0.0.1:0", Echo).unwrap());
    let mut clients = Vec::new();
    for i in 0..5 {
        clients.push(tokio::spawn(async move {
            let mut c = connect(addr).await;
            c.get_mut().write_all(b"sleep\n").await.unwrap();
            let mut out = String::new();
            timeout(T, c.read_line(&mut out)).await.unwrap().unwrap();
            // Closing lets the handler's loop end.
            drop(c);
            (i, out)
        }));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.shutdown();
    // Refused at once, while the five are still being drained.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "accepting during the drain"
    );
    for c in clients {
        let (_, out) = c.await.unwrap();
        assert_eq!(out, "sleep\n");
    }
    let report = finish(served).await;
    assert_eq!(
        report,
        DrainReport {
            drained: 5,
            aborted: 0,
            detached: 0
        }
    );
    assert!(TcpStream::connect(addr).await.is_err(), "still accepting");
}

/// Thread per core: the connection limit is the server's, not each
/// worker's, and the workers' drains add up to one report.
#[tokio::test]
async fn workers_share_the_connection_limit_and_drain_together() {
    let server = AsyncTcpServer::builder()
        .async_threads(4)
        .max_connections(3)
        .bind_async("127.0.0.1:0", Echo)
        .unwrap();
    let (addr, stop, served) = start(server);
    let mut open = Vec::new();
    for i in 0..3 {
        let mut c = connect(addr).await;
        let msg = format!("{i}\n");
        assert_eq!(ask(&mut c, &msg).await, msg);
        open.push(c);
    }
    // Three workers hold a connection each; the fourth worker must not
    // accept a fourth one.
    let mut fourth = connect(addr).await;
    assert_unanswered(
        &mut fourth,
        "d\n",
        "a fourth connection was served with max_connections(3)",
    )
    .await;
    // Three requests in flight at the stop, each drained by its worker.
    for c in &mut open {
        c.get_mut().write_all(b"sleep\n").await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    stop.shutdown();
    for c in &mut open {
        let mut out = String::new();
        timeout(T, c.read_line(&mut out)).await.unwrap().unwrap();
        assert_eq!(out, "sleep\n");
    }
    drop(open);
    let report = finish(served).await;
    assert_eq!(
        report,
        DrainReport {
            drained: 3,
            aborted: 0,
            detached: 0
        }
    );
    drop(fourth);
}

#[tokio::test]
async fn drain_timeout_aborts_stuck_connections() {
    let server = AsyncTcpServer::builder()
        .drain_timeout(Duration::from_millis(200))
        .bind_async("127.0.0.1:0", Echo)
        .unwrap();
    let (addr, stop, served) = start(server);
    let mut idle = connect(addr).await;
    assert_eq!(ask(&mut idle, "x\n").await, "x\n");
    stop.shutdown();
    let report = finish(served).await;
    assert_eq!(
        report,
        DrainReport {
            drained: 0,
            aborted: 1,
            detached: 0
        }
    );
    let mut buf = [0u8; 1];
    let n = timeout(T, idle.read(&mut buf)).await.unwrap().unwrap_or(0);
    assert_eq!(n, 0, "aborted connection was not closed");
}

#[tokio::test]
async fn per_ip_limit_closes_extra_connections_cleanly() {
    let server = AsyncTcpServer::builder()
        .per_ip_limit(Some(1))
        .bind_async("127.0.0.1:0", Echo)
        .unwrap();
    let (addr, stop, served) = start(server);
    let mut first = connect(addr).await;
    assert_eq!(ask(&mut first, "1\n").await, "1\n");
    let mut second = connect(addr).await;
    let mut buf = Vec::new();
    let n = timeout(T, second.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, 0, "over-limit connection got data");
    drop(first);
    // Once the first is gone the address has a free slot again; the server
    // may take a moment to notice the close.
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let mut c = connect(addr).await;
        c.get_mut().write_all(b"again\n").await.unwrap();
        let mut out = String::new();
        if timeout(T, c.read_line(&mut out)).await.unwrap().is_ok() && out == "again\n" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "slot never freed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.shutdown();
    finish(served).await;
}

#[tokio::test]
async fn proxy_protocol_header_gives_real_client_address() {
    let server = AsyncTcpServer::builder()
        .proxy_protocol(Some(Duration::from_secs(5)))
        .bind_async("127.0.0.1:0", Echo)
        .unwrap();
    let (addr, stop, served) = start(server);
    let mut c = connect(addr).await;
    c.get_mut()
        .write_all(b"PROXY TCP4 203.0.113.9 127.0.0.1 40000 80\r\n")
        .await
        .unwrap();
    assert_eq!(ask(&mut c, "addr\n").await, "203.0.113.9:40000\n");

    let mut bad = connect(addr).await;
    bad.get_mut().write_all(b"HELLO\r\n\r\n").await.unwrap();
    let mut buf = Vec::new();
    let n = timeout(T, bad.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "connection without a PROXY header was served");
    drop(c);
    stop.shutdown();
    finish(served).await;
}

#[tokio::test]
async fn handler_panic_closes_only_its_connection() {
    let (addr, stop, served) = start(AsyncTcpServer::bind_async("127.0.0.1:0", Echo).unwrap());
    let mut p = connect(addr).await;
    p.get_mut().write_all(b"panic\n").await.unwrap();
    let mut buf = Vec::new();
    let n = timeout(T, p.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0);
    let mut ok = connect(addr).await;
    assert_eq!(ask(&mut ok, "still here\n").await, "still here\n");
    drop(ok);
    stop.shutdown();
    finish(served).await;
}
