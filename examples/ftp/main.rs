//! A real FTP server on the socketserver framework: one `RequestHandler`
//! per control connection, run by any of the framework's five strategies
//! with the same handler code.
//!
//! ```text
//! cargo run --release --example ftp -- --root DIR [--listen ADDR]
//!         [--mode sync|threading|forking|prefork|async]
//!         [--user NAME:PASSWORD]... [--anonymous] [--anonymous-write] [--passive-ports LOW-HIGH]
//!         [--passive-address IPV4] [--proxy-protocol [--proxy-from CIDR,...]]
//!         [--max-connections N] [--max-per-ip N] [--idle-timeout 300s]
//!         [--max-login-failures 5] [--login-failure-window 60s] [--login-lockout 60s]
//!         [--login-delay 300ms]
//!         [--tls-cert FILE --tls-key FILE | --tls-self-signed] [--tls-required] [--tls-require-reuse]
//!         [--tls-handshake-timeout 10s]
//! ```
//!
//! With `--tls-cert` and `--tls-key` (PEM), or `--tls-self-signed` (a
//! certificate made at start-up, for trying it) the server speaks explicit FTPS
//! (RFC 4217: `AUTH TLS`, `PBSZ`, `PROT P`/`C`, TLS data connections that
//! may resume the control session) with rustls, in every `--mode`; see
//! `tls.rs` and the FTPS section of `docs/ftp.md`.
//!
//! When ready it prints `listening on ftp://HOST:PORT (mode MODE)` on
//! stdout. SIGINT or SIGTERM shut it down gracefully (exit status 0).
//! Logs go to stderr (`RUST_LOG=debug` shows every command; passwords are
//! never logged). See `docs/ftp.md`.
//!
//! The connection limits (`--max-connections`, `--max-per-ip`) are the
//! framework's own ([`ServerBuilder::connection_limit`],
//! [`ServerBuilder::per_ip_limit`]): one table in shared memory that every
//! thread, child or worker counts in. The example only turns the
//! framework's refusal into FTP's `421`.

mod command;
mod config;
mod confine;
mod data;
mod files;
mod listing;
mod reply;
mod session;
mod throttle;
mod tls;
mod transfer;
mod upload;

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use socketserver::server::{LimitRefusal, Server, ServerBuilder, Strategy, TcpTransport};

use crate::config::{Args, Config, Mode};
use crate::session::Session;

/// Most sessions at once (forked children, prefork workers) when
/// --max-connections is not given.
const DEFAULT_MAX_SESSIONS: usize = 1024;

/// How long shutdown lets open sessions finish before ending them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// How long a client behind --proxy-protocol has to send its header.
const PROXY_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// The `421` a client over a connection limit gets before the close.
fn refuse(req: &mut socketserver::Request, why: LimitRefusal) {
    let text = match why {
        LimitRefusal::Total { .. } => "Too many connections, try again later.",
        LimitRefusal::PerIp { .. } => "Too many connections from your address, try again later.",
    };
    let _ = reply::send(&mut req.wfile(), reply::Code::ServiceUnavailable, text);
}

fn run<S: Strategy>(args: &Args, cfg: Arc<Config>) -> anyhow::Result<()>
where
    socketserver::server::SocketServer<TcpTransport, S>: Server<Address = std::net::SocketAddr>,
{
    let mut builder = ServerBuilder::<TcpTransport, S>::new();
    // The strategies' own caps (which leave clients waiting in the
    // backlog) sit above --max-connections, so a client beyond it is
    // accepted and told 421 by the shared limit instead of waiting.
    let sessions = args
        .max_connections
        .map_or(DEFAULT_MAX_SESSIONS, |n| n.saturating_add(64));
    builder
        .connection_limit(args.max_connections)
        .per_ip_limit(args.max_per_ip)
        .limit_refusal(refuse)
        .drain_timeout(SHUTDOWN_GRACE)
        .max_children(sessions)
        .max_workers(sessions)
        .max_blocking(sessions);
    if args.proxy_protocol {
        builder.proxy_protocol(Some(PROXY_HEADER_TIMEOUT));
        if !args.proxy_from.is_empty() {
            builder.proxy_protocol_from(args.proxy_from.iter().copied());
        }
    }
    let mut server = builder.bind(args.listen, move || Session::new(cfg.clone()))?;
    let _signals = socketserver::shutdown_on_signals(&server.shutdown_handle())?;
    let addr = server.server_address();
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on ftp://{addr} (mode {})", args.mode.name())?;
        out.flush()?;
    }
    server.serve_forever()?;
    server.server_close();
    tracing::info!("server stopped");
    Ok(())
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rustls=error")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    let cfg = Arc::new(Config::from_args(&args)?);
    use socketserver::server as s;
    match args.mode {
        Mode::Sync => run::<s::Synchronous>(&args, cfg),
        Mode::Threading => run::<s::Threading>(&args, cfg),
        Mode::Forking => run::<s::Forking>(&args, cfg),
        Mode::Prefork => run::<s::Prefork>(&args, cfg),
        #[cfg(feature = "async")]
        Mode::Async => run::<s::Async>(&args, cfg),
    }
}
