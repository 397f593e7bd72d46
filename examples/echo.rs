//! A byte-transparent echo server over TCP, UDP, Unix stream or Unix
//! datagram sockets, in any of the five strategies.
//!
//! ```text
//! cargo run --release --example echo -- [--mode sync|threading|forking|prefork|async]
//!     [--udp] [--unix PATH] [--listen ADDR] [--idle-timeout 60s] [--backlog 4096]
//!     [--proxy-protocol [--proxy-timeout 5s] [--proxy-from CIDR[,CIDR...]]]
//!     [--reuse-port] [--drain-timeout 30s]
//!     [--health ADDR [--drain-notice 1s]] [--announce-peer] [--workers N]
//! ```
//!
//! Behind a balancer (see docs/scale-out.md): `--proxy-protocol` expects a
//! PROXY v1 or v2 header on every connection (HAProxy `send-proxy`,
//! `send-proxy-v2`) and refuses a connection without a valid one within
//! `--proxy-timeout`; the handler then sees the client's address, not the
//! balancer's. `--proxy-from` names the balancers (`10.0.0.0/24,::1`): a
//! connection from any other TCP peer is closed before a byte is read.
//! Without it anyone who can reach the port directly can send a header and
//! claim any address. `--reuse-port` lets several instances share the port.
//! `--health ADDR` answers HAProxy's `agent-check` there (`up 100%`, then
//! `drain` from the moment SIGTERM arrives); the server keeps accepting
//! for `--drain-notice` after reporting `drain`, then closes its port and
//! lets connections in flight finish for up to `--drain-timeout`.
//! `--announce-peer` makes the handler first send `peer ADDRESS\n`, the
//! client address it was given (to check the PROXY header is honoured).
//! `--workers N` (prefork) runs a fixed pool of N workers instead of the
//! default managed one (2 to 8 idle spares, at most 32 workers); with
//! `--mode async` it sets the number of runtime threads (default one per
//! core).
//!
//! Defaults: `--mode threading`, `--listen 127.0.0.1:9000` (port 0 picks a
//! free port), `--idle-timeout 60s`: a client that sends nothing (or reads
//! nothing) for that long is disconnected, so idle connections cannot
//! hold the server's slots or its shutdown forever (`0s` turns that off;
//! in `--mode async` over TCP the disconnect comes between 1 and 1.25
//! times the timeout after the last byte read, see `AsyncEcho`).
//! `--unix PATH` serves a Unix stream socket at PATH (with `--udp`, a Unix
//! datagram socket). When ready it prints exactly one line to stdout,
//! `listening on SCHEME://ADDRESS (mode MODE)` with SCHEME `tcp`, `udp`,
//! `unix` or `unixgram`. Streams echo every byte as it arrives; datagrams
//! are answered one by one. SIGINT/SIGTERM shut it down gracefully (exit
//! status 0). Logs go to stderr (`RUST_LOG`).

#[path = "support/balancer.rs"]
mod balancer;

// Rust's unwinder linked statically instead of as `libgcc_s.so`: five
// mappings fewer for every fork and exit (docs/server.md, "Mappings").
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[link(name = "gcc_eh", kind = "static")]
extern "C" {}

use std::io::{self, BufRead, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
#[cfg(feature = "async")]
use socketserver::server::Async;
use socketserver::server::{
    shutdown_on_signals, BindAddress, Forking, Prefork, Server, ServerBuilder, SocketServer,
    Strategy, Synchronous, TcpTransport, Threading, Transport, UdpTransport, UnixDatagramTransport,
    UnixPath, UnixStreamTransport,
};
use socketserver::{Request, RequestHandler};

/// Echoes whatever is available, without waiting for newlines. The same
/// handler serves TCP connections and UDP datagrams.
/// The idle timeout is the server's `connection_timeout` (see `serve`).
struct Echo {
    /// Send `peer ADDRESS` first.
    announce: bool,
}

impl RequestHandler for Echo {
    fn handle(&mut self, req: &mut Request) -> io::Result<()> {
        if self.announce {
            let line = format!("peer {}\n", req.peer_addr());
            req.wfile().write_all(line.as_bytes())?;
        }
        let (mut rfile, mut wfile) = req.split();
        let result = (|| loop {
            let chunk = match rfile.fill_buf() {
                Ok(c) => c,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if chunk.is_empty() {
                return Ok(());
            }
            let n = chunk.len();
            wfile.write_all(chunk)?;
            rfile.consume(n);
        })();
        match result {
            // The idle timeout: an expected end, not a failure.
            Err(e) if timed_out(&e) => {
                tracing::debug!("closing an idle connection");
                Ok(())
            }
            other => other,
        }
    }
}

/// The async mode's TCP handler: the same echo, natively async, so a
/// connection is a parked task, not a blocking-pool thread. The read
/// buffer is the runtime thread's, used in a synchronous step, not kept in
/// the task.
///
/// The idle timeout is one timer per connection, armed once and re-armed
/// every quarter of the timeout, not a fresh `tokio::time::timeout` per
/// read (which cost a clock read, a timer-wheel insertion and a removal
/// per message): a connection is closed after four quarters in a row
/// without a byte read, that is between 1 and 1.25 times the timeout after
/// its last message.
#[cfg(feature = "async")]
struct AsyncEcho {
    /// Read/write timeout of a connection (`None`: wait forever).
    idle: Option<Duration>,
    /// Send `peer ADDRESS` first.
    announce: bool,
}

/// What one read of an [`AsyncEcho`] connection did.
#[cfg(feature = "async")]
enum Step {
    /// The peer closed its side.
    Eof,
    /// Echoed what was there.
    Echoed,
    /// The socket's send buffer is full: these bytes still have to go.
    Rest(Vec<u8>),
}

#[cfg(feature = "async")]
impl AsyncEcho {
    /// Reads what is there (or registers for readiness) and writes it back
    /// without waiting, within one poll, so the buffer is the runtime
    /// thread's and never lives in the task. Through `poll_read`, which
    /// clears tokio's readiness after a short read: no extra `recv` that
    /// only says `EAGAIN` before the next wait.
    fn poll_step(
        stream: &mut tokio::net::TcpStream,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<Step>> {
        use std::task::Poll;
        use tokio::io::AsyncRead;
        thread_local! {
            // One zeroed buffer per runtime thread, not one per wake-up.
            static BUF: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; 16 * 1024]);
        }
        BUF.with_borrow_mut(|buf| {
            let mut rb = tokio::io::ReadBuf::new(buf);
            match std::pin::Pin::new(&mut *stream).poll_read(cx, &mut rb) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {}
            }
            let data = rb.filled();
            if data.is_empty() {
                return Poll::Ready(Ok(Step::Eof));
            }
            let sent = match stream.try_write(data) {
                Ok(w) => w,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                Err(e) => return Poll::Ready(Err(e)),
            };
            Poll::Ready(Ok(if sent == data.len() {
                Step::Echoed
            } else {
                Step::Rest(data[sent..].to_vec())
            }))
        })
    }
}

/// `fut`, bounded by the idle timeout when there is one (`None`: timed out).
#[cfg(feature = "async")]
async fn within<F: std::future::Future>(idle: Option<Duration>, fut: F) -> Option<F::Output> {
    match idle {
        None => Some(fut.await),
        Some(d) => tokio::time::timeout(d, fut).await.ok(),
    }
}

/// An [`AsyncEcho`] connection's idle timer: ticks every quarter of the
/// timeout; four ticks in a row without progress mean idle.
#[cfg(feature = "async")]
struct IdleClock {
    tick: std::pin::Pin<Box<tokio::time::Sleep>>,
    quarter: Duration,
    /// Bytes arrived since the last tick.
    active: bool,
    /// Ticks in a row without progress.
    quiet: u8,
}

#[cfg(feature = "async")]
impl IdleClock {
    fn new(idle: Duration) -> IdleClock {
        let quarter = idle / 4;
        IdleClock {
            tick: Box::pin(tokio::time::sleep(quarter)),
            quarter,
            active: false,
            quiet: 0,
        }
    }

    /// Handles a tick: `true` when the connection has now been idle for
    /// the whole timeout. Re-arms the timer otherwise.
    fn on_tick(&mut self) -> bool {
        if std::mem::take(&mut self.active) {
            self.quiet = 0;
        } else {
            self.quiet += 1;
            if self.quiet >= 4 {
                return true;
            }
        }
        let next = self.tick.deadline() + self.quarter;
        self.tick.as_mut().reset(next);
        false
    }
}

#[cfg(feature = "async")]
impl socketserver::server::AsyncRequestHandler for AsyncEcho {
    async fn handle(&self, mut stream: tokio::net::TcpStream, peer: SocketAddr) -> io::Result<()> {
        use tokio::io::AsyncWriteExt;
        if self.announce {
            stream
                .write_all(format!("peer {peer}\n").as_bytes())
                .await?;
        }
        let mut clock = self.idle.map(IdleClock::new);
        loop {
            let step = std::future::poll_fn(|cx| Self::poll_step(&mut stream, cx));
            let step = match clock.as_mut() {
                None => step.await,
                Some(c) => tokio::select! {
                    biased;
                    r = step => r,
                    () = c.tick.as_mut() => {
                        if c.on_tick() {
                            tracing::debug!("closing an idle connection");
                            return Ok(());
                        }
                        continue;
                    }
                },
            };
            match step? {
                Step::Eof => return Ok(()),
                Step::Echoed => {}
                Step::Rest(rest) => {
                    // Boxed: the timer of `within` would otherwise be part
                    // of every connection's task, idle or not, for a path
                    // taken only when the send buffer is full.
                    let send = Box::pin(within(self.idle, stream.write_all(&rest)));
                    let Some(sent) = send.await else {
                        tracing::debug!("closing an idle connection");
                        return Ok(());
                    };
                    sent?;
                }
            }
            if let Some(c) = clock.as_mut() {
                c.active = true;
            }
        }
    }
}

/// Whether `e` is a socket timeout (`SO_RCVTIMEO`/`SO_SNDTIMEO` expiring).
fn timed_out(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// The concurrency strategy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// One request at a time on the main thread.
    Sync,
    /// One thread per connection.
    Threading,
    /// One child process per connection (or datagram).
    Forking,
    /// A managed pool of pre-forked worker processes.
    Prefork,
    /// tokio tasks; over TCP a native async echo handler, over the other
    /// transports the same blocking handler on the bounded blocking pool
    /// (needs the `async` feature).
    #[cfg(feature = "async")]
    Async,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Sync => Synchronous::NAME,
            Mode::Threading => Threading::NAME,
            Mode::Forking => Forking::NAME,
            Mode::Prefork => Prefork::NAME,
            #[cfg(feature = "async")]
            Mode::Async => Async::NAME,
        }
    }
}

#[derive(Debug, Parser)]
#[command(about = "Echo server built on socketserver")]
struct Args {
    /// Concurrency strategy.
    #[arg(long, value_enum, default_value_t = Mode::Threading)]
    mode: Mode,
    /// Serve datagrams (UDP, or Unix datagrams with --unix) instead of a
    /// stream.
    #[arg(long)]
    udp: bool,
    /// Serve a Unix socket at this path instead of TCP/UDP.
    #[arg(long)]
    unix: Option<PathBuf>,
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:9000")]
    listen: SocketAddr,
    /// The listen backlog of stream sockets.
    #[arg(long, default_value_t = 4096)]
    backlog: i32,
    /// Disconnect a TCP client after this long without progress in either
    /// direction (e.g. 60s, 500ms; 0s waits forever).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    idle_timeout: Duration,
    #[command(flatten)]
    balancer: balancer::BalancerArgs,
    /// Send `peer ADDRESS` to each client first.
    #[arg(long)]
    announce_peer: bool,
    /// `--mode prefork`: a fixed pool of exactly N workers (started at
    /// once, never more, a dead one replaced) instead of the default
    /// managed pool (2 spare workers kept idle, up to 8 idle and 32 in
    /// all). `--mode async`: N runtime threads (default one per core).
    #[arg(long)]
    workers: Option<usize>,
}

impl Args {
    /// The connections' timeout: `None` for `--idle-timeout 0s`.
    fn idle(&self) -> Option<Duration> {
        (!self.idle_timeout.is_zero()).then_some(self.idle_timeout)
    }
}

fn serve<T, S>(args: &Args, address: T::Address) -> anyhow::Result<()>
where
    T: Transport,
    S: Strategy,
    T::Address: BindAddress<T>,
{
    let mut builder = SocketServer::<T, S>::builder();
    configure(&mut builder, args);
    if let Some(idle) = args.idle() {
        // Over TCP the server sets it once on the listening socket, whose
        // connections inherit it: no system call per connection.
        builder.connection_timeout(idle);
    }
    let mut server = builder.bind(address, {
        let announce = args.announce_peer;
        move || Echo { announce }
    })?;
    let _signals = shutdown_on_signals(&server.shutdown_handle())?;
    {
        let mut out = io::stdout().lock();
        writeln!(
            out,
            "listening on {}://{} (mode {})",
            T::SCHEME,
            server.server_address(),
            args.mode.name()
        )?;
        out.flush()?;
    }
    server.serve_forever()?;
    server.server_close();
    tracing::info!(report = ?server.drain_report(), "server closed");
    Ok(())
}

/// The settings every mode shares: backlog, reuse-port, drain, PROXY
/// protocol, health port and drain notice, systemd notifications.
fn configure<T: Transport, S: Strategy>(builder: &mut ServerBuilder<T, S>, args: &Args) {
    builder.backlog(args.backlog).systemd_notify(true);
    if let Some(n) = args.workers {
        // Every worker counts as a spare to keep, none is ever retired.
        builder
            .start_workers(n)
            .min_spare(n)
            .max_spare(n)
            .max_workers(n)
            .async_threads(n);
    }
    args.balancer.configure(builder);
    if let Some(h) = args.balancer.health {
        builder.health(h);
    }
}

/// The async mode over TCP: the native [`AsyncEcho`] handler.
#[cfg(feature = "async")]
fn serve_async_tcp(args: &Args) -> anyhow::Result<()> {
    let mut builder = SocketServer::<TcpTransport, Async>::builder();
    configure(&mut builder, args);
    let mut server = builder.bind_async(
        args.listen,
        AsyncEcho {
            idle: args.idle(),
            announce: args.announce_peer,
        },
    )?;
    let _signals = shutdown_on_signals(&server.shutdown_handle())?;
    {
        let mut out = io::stdout().lock();
        writeln!(
            out,
            "listening on {}://{} (mode {})",
            TcpTransport::SCHEME,
            server.server_address(),
            args.mode.name()
        )?;
        out.flush()?;
    }
    server.serve_forever()?;
    server.server_close();
    tracing::info!(report = ?server.drain_report(), "server closed");
    Ok(())
}

/// Picks the transport for strategy `S`.
fn serve_with<S: Strategy>(args: &Args) -> anyhow::Result<()> {
    match (&args.unix, args.udp) {
        (None, false) => serve::<TcpTransport, S>(args, args.listen),
        (None, true) => serve::<UdpTransport, S>(args, args.listen),
        (Some(path), false) => serve::<UnixStreamTransport, S>(args, UnixPath(path.clone())),
        (Some(path), true) => serve::<UnixDatagramTransport, S>(args, UnixPath(path.clone())),
    }
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(io::stderr)
        .with_ansi(io::IsTerminal::is_terminal(&io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    match args.mode {
        Mode::Sync => serve_with::<Synchronous>(&args),
        Mode::Threading => serve_with::<Threading>(&args),
        Mode::Forking => serve_with::<Forking>(&args),
        Mode::Prefork => serve_with::<Prefork>(&args),
        #[cfg(feature = "async")]
        Mode::Async if args.unix.is_none() && !args.udp => serve_async_tcp(&args),
        #[cfg(feature = "async")]
        Mode::Async => serve_with::<Async>(&args),
    }
}
