//! A byte-transparent echo server over TCP or UDP, in any strategy.
//!
//! ```text
//! cargo run --release --example echo -- [--mode sync|threading|forking|prefork|async] [--udp] [--listen ADDR] [--idle-timeout 60s]
//! ```
//!
//! Defaults: `--mode threading`, `--listen 127.0.0.1:9000` (port 0 picks a
//! free port), `--idle-timeout 60s`: a TCP client that sends nothing (or
//! reads nothing) for that long is disconnected, so idle connections
//! cannot hold the server's slots or its shutdown forever (`0s` turns
//! that off). When ready it prints exactly one line to stdout,
//! `listening on tcp://HOST:PORT (mode MODE)` (or `udp://`). TCP echoes
//! every byte as it arrives; UDP answers each datagram. SIGINT/SIGTERM shut
//! it down gracefully (exit status 0). Logs go to stderr (`RUST_LOG`).

use std::io::{self, BufRead, Write};
use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use socketserver::server::{
    shutdown_on_signals, AsyncTcpServer, BindAddress, Blocking, Forking, PreforkTcpServer, Server,
    SocketServer, Strategy, Synchronous, TcpTransport, Threading, Transport, UdpTransport,
};
use socketserver::{Request, RequestHandler};

/// Echoes whatever is available, without waiting for newlines. The same
/// handler serves TCP connections and UDP datagrams.
struct Echo {
    /// Read/write timeout of a connection (`None`: wait forever).
    idle: Option<Duration>,
}

impl RequestHandler for Echo {
    fn setup(&mut self, req: &mut Request) -> io::Result<()> {
        req.set_timeout(self.idle)
    }

    fn handle(&mut self, req: &mut Request) -> io::Result<()> {
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

/// Whether `e` is a socket timeout (`SO_RCVTIMEO`/`SO_SNDTIMEO` expiring).
fn timed_out(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// The concurrency strategy. New strategies (prefork, async) are new
/// variants here and a new arm in `main`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// One request at a time on the main thread.
    Sync,
    /// One thread per connection.
    Threading,
    /// One child process per connection (or datagram).
    Forking,
    /// A managed pool of pre-forked worker processes (TCP only).
    Prefork,
    /// tokio tasks; the same blocking handler runs on the blocking pool
    /// through `Blocking` (TCP only).
    Async,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Sync => Synchronous::NAME,
            Mode::Threading => Threading::NAME,
            Mode::Forking => Forking::NAME,
            Mode::Prefork => "prefork",
            Mode::Async => "async",
        }
    }
}

#[derive(Debug, Parser)]
#[command(about = "Echo server built on socketserver")]
struct Args {
    /// Concurrency strategy.
    #[arg(long, value_enum, default_value_t = Mode::Threading)]
    mode: Mode,
    /// Serve UDP instead of TCP.
    #[arg(long)]
    udp: bool,
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:9000")]
    listen: SocketAddr,
    /// Disconnect a TCP client after this long without progress in either
    /// direction (e.g. 60s, 500ms; 0s waits forever).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    idle_timeout: Duration,
}

impl Args {
    /// The connections' timeout: `None` for `--idle-timeout 0s`.
    fn idle(&self) -> Option<Duration> {
        (!self.idle_timeout.is_zero()).then_some(self.idle_timeout)
    }
}

fn serve<T, S>(args: &Args) -> anyhow::Result<()>
where
    T: Transport<Address = SocketAddr>,
    S: Strategy,
    SocketAddr: BindAddress<T>,
{
    let mut server = SocketServer::<T, S>::builder()
        .allow_reuse_address(true)
        .bind(args.listen, {
            let idle = args.idle();
            move || Echo { idle }
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
    tracing::info!("server closed");
    Ok(())
}

fn announce(args: &Args, addr: SocketAddr) -> io::Result<()> {
    let mut out = io::stdout().lock();
    writeln!(out, "listening on tcp://{addr} (mode {})", args.mode.name())?;
    out.flush()
}

fn serve_prefork(args: &Args) -> anyhow::Result<()> {
    let idle = args.idle();
    let mut server = PreforkTcpServer::builder().bind(args.listen, move || Echo { idle })?;
    let _signals = shutdown_on_signals(&server.shutdown_handle())?;
    announce(args, server.server_address())?;
    server.serve_forever()?;
    server.server_close();
    tracing::info!("server closed");
    Ok(())
}

fn serve_async(args: &Args) -> anyhow::Result<()> {
    let idle = args.idle();
    let mut server = AsyncTcpServer::bind(args.listen, Blocking::new(move || Echo { idle }))?;
    server.set_shutdown_on_signals(true);
    announce(args, server.local_addr()?)?;
    let report = server.serve_forever()?;
    tracing::info!(?report, "server closed");
    Ok(())
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
    match (args.mode, args.udp) {
        (Mode::Sync, false) => serve::<TcpTransport, Synchronous>(&args),
        (Mode::Sync, true) => serve::<UdpTransport, Synchronous>(&args),
        (Mode::Threading, false) => serve::<TcpTransport, Threading>(&args),
        (Mode::Threading, true) => serve::<UdpTransport, Threading>(&args),
        (Mode::Forking, false) => serve::<TcpTransport, Forking>(&args),
        (Mode::Forking, true) => serve::<UdpTransport, Forking>(&args),
        (Mode::Prefork | Mode::Async, true) => {
            anyhow::bail!("--udp is not supported with --mode {}", args.mode.name())
        }
        (Mode::Prefork, false) => serve_prefork(&args),
        (Mode::Async, false) => serve_async(&args),
    }
}
