//! The async strategy holds 10,000 concurrent idle connections.
//!
//! The server runs in a child process (this same binary, re-executed with
//! `ASYNC_IDLE_SERVER=1`) so each side needs about 10,000 descriptors: a
//! hard `RLIMIT_NOFILE` of 20,000 (a common default) cannot hold both ends
//! of 10,000 loopback connections in one process. Everything stays on
//! 127.0.0.1, every wait is bounded, and the child exits when its stdin
//! closes, so it cannot outlive the test.
//!
//! `harness = false`: a plain `main` so the re-executed child is not run
//! as a libtest binary.

mod support;

#[cfg(not(feature = "async"))]
fn main() {
    println!("async_idle: the `async` feature is off; nothing to test");
}

#[cfg(feature = "async")]
fn main() {
    if std::env::var_os("ASYNC_IDLE_SERVER").is_some() {
        imp::server_main();
        return;
    }
    support::run_plain(&[(
        "async_idle_holds_10000_connections",
        imp::holds_10000_connections,
    )]);
}

#[cfg(feature = "async")]
mod imp {
    use std::io::{BufRead, BufReader, Read};
    use std::net::SocketAddr;
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    use socketserver::server::{raise_fd_limit, AsyncRequestHandler, AsyncTcpServer, Server};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio::task::JoinSet;

    const CONNS: usize = 10_000;
    const LIMIT: Duration = Duration::from_secs(120);

    struct ByteEcho;

    impl AsyncRequestHandler for ByteEcho {
        async fn handle(&self, mut stream: TcpStream, _peer: SocketAddr) -> std::io::Result<()> {
            let mut buf = [0u8; 64];
            loop {
                let n = stream.read(&mut buf).await?;
                if n == 0 {
                    return Ok(());
                }
                stream.write_all(&buf[..n]).await?;
            }
        }
    }

    pub fn server_main() {
        raise_fd_limit(CONNS as u64 + 200).expect("raise RLIMIT_NOFILE");
        let mut server = AsyncTcpServer::builder()
            .max_connections(CONNS + 100)
            .backlog(4096)
            .bind_async("127.0.0.1:0", ByteEcho)
            .expect("bind");
        let stop = server.shutdown_handle();
        println!("{}", server.server_address().port());
        // Stop when the parent closes our stdin (or dies).
        std::thread::spawn(move || {
            let _ = std::io::stdin().read_to_end(&mut Vec::new());
            stop.shutdown();
        });
        server.serve_forever().expect("serve");
        server.server_close();
    }

    /// Kills and reaps the server child if the test fails half-way.
    struct ChildGuard(Child);

    impl Drop for ChildGuard {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn vm_rss_kib(pid: u32) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    pub fn holds_10000_connections() {
        let limit = raise_fd_limit(CONNS as u64 + 200).expect("raise RLIMIT_NOFILE");
        assert!(
            limit >= CONNS as u64 + 100,
            "RLIMIT_NOFILE hard limit {limit} is too low to hold {CONNS} connections"
        );
        let exe = std::env::current_exe().expect("current_exe");
        let child = Command::new(exe)
            .env("ASYNC_IDLE_SERVER", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn server child");
        let mut child = ChildGuard(child);
        let mut port = String::new();
        BufReader::new(child.0.stdout.take().expect("stdout"))
            .read_line(&mut port)
            .expect("read port");
        let addr: SocketAddr = format!("127.0.0.1:{}", port.trim()).parse().expect("port");

        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let started = Instant::now();
        let conns = rt.block_on(async {
            tokio::time::timeout(LIMIT, async {
                // Connect in bounded batches so the listen backlog never overflows.
                let mut conns = Vec::with_capacity(CONNS);
                while conns.len() < CONNS {
                    let mut batch = JoinSet::new();
                    for _ in 0..(CONNS - conns.len()).min(500) {
                        batch.spawn(TcpStream::connect(addr));
                    }
                    while let Some(c) = batch.join_next().await {
                        conns.push(c.expect("join").expect("connect"));
                    }
                }
                // Every connection must be accepted and served at the same time:
                // a round trip on each while all are open.
                for (i, c) in conns.iter_mut().enumerate() {
                    let b = [(i % 251) as u8];
                    c.write_all(&b).await.expect("write");
                    let mut r = [0u8; 1];
                    c.read_exact(&mut r).await.expect("read");
                    assert_eq!(r, b, "connection {i} echoed the wrong byte");
                }
                conns
            })
            .await
            .expect("10,000 connections not served within the time limit")
        });
        let rss = vm_rss_kib(child.0.id());
        println!(
            "async_idle: {} connections held and served in {:.1?}; server RSS {} KiB",
            conns.len(),
            started.elapsed(),
            rss
        );
        assert_eq!(conns.len(), CONNS);
        drop(conns);
        drop(child.0.stdin.take());
        let status = child.0.wait().expect("wait server");
        assert!(status.success(), "server child exited with {status}");
    }
}
