//! A real FTP server on the socketserver framework: one `RequestHandler`
//! per control connection, run by the threading or the forking server.
//!
//! ```text
//! cargo run --release --example ftp -- --root DIR [--listen ADDR] [--mode threading|forking]
//!         [--user NAME:PASSWORD]... [--anonymous] [--anonymous-write] [--passive-ports LOW-HIGH]
//!         [--max-connections N] [--max-per-ip N] [--idle-timeout 300s]
//!         [--max-login-failures 5] [--login-failure-window 60s] [--login-lockout 60s]
//!         [--login-delay 300ms]
//! ```
//!
//! When ready it prints `listening on ftp://HOST:PORT (mode MODE)` on
//! stdout. SIGINT or SIGTERM shut it down gracefully (exit status 0).
//! Logs go to stderr (`RUST_LOG=debug` shows every command; passwords are
//! never logged). See `docs/ftp.md`.

mod command;
mod config;
mod confine;
mod data;
mod files;
mod limits;
mod listing;
mod reply;
mod session;
mod throttle;
mod transfer;
mod upload;

use std::io::Write;
use std::sync::Arc;

use clap::Parser;
use socketserver::server::{Hooks, Incoming, Server, ServerBuilder, Strategy, TcpTransport};
use socketserver::PeerAddr;

use crate::config::{Args, Config, Mode};
use crate::limits::{Gate, Limits};
use crate::session::Session;

/// Most forked sessions at once when --max-connections is not given.
const DEFAULT_MAX_CHILDREN: usize = 1024;

/// How long shutdown waits for open sessions to end.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Runs the connection-limit check in the accept loop, before the
/// connection goes to a thread or a forked child (see `limits.rs`).
#[derive(Debug)]
struct LimitHooks {
    gate: Arc<Gate>,
}

impl Hooks for LimitHooks {
    fn verify_request(&self, _request: &Incoming, peer: &PeerAddr) -> bool {
        if let Some(addr) = peer.as_inet() {
            self.gate.verify(addr);
        }
        // Refused clients are told so (421) by the session itself.
        true
    }
}

fn run<S: Strategy>(args: &Args, cfg: Arc<Config>, gate: Arc<Gate>) -> anyhow::Result<()>
where
    socketserver::server::SocketServer<TcpTransport, S>: Server<Address = std::net::SocketAddr>,
{
    let mut builder = ServerBuilder::<TcpTransport, S>::new();
    // Shutdown does not wait for sessions without end (an idle client could
    // hold it for --idle-timeout); `Gate::wait_idle` gives them a grace
    // period instead.
    builder
        .hooks(LimitHooks { gate: gate.clone() })
        .block_on_close(false)
        // Forking: the framework's cap on live children (Python's 40) would
        // leave clients beyond it waiting unanswered. Allow every session
        // --max-connections admits, plus room for the short-lived children
        // that only send a 421.
        .max_children(
            args.max_connections
                .map_or(DEFAULT_MAX_CHILDREN, |n| n.saturating_add(64)),
        );
    let session_gate = gate.clone();
    let mut server = builder.bind(args.listen, move || {
        Session::new(cfg.clone(), session_gate.clone())
    })?;
    let _signals = socketserver::shutdown_on_signals(&server.shutdown_handle())?;
    let addr = server.server_address();
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on ftp://{addr} (mode {})", args.mode.name())?;
        out.flush()?;
    }
    server.serve_forever()?;
    server.server_close();
    let left = gate.wait_idle(SHUTDOWN_GRACE);
    if left > 0 {
        // Threads end with the process; forked children finish their
        // sessions on their own.
        tracing::warn!(sessions = left, "shutting down with sessions still open");
    }
    tracing::info!("server stopped");
    Ok(())
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    let cfg = Arc::new(Config::from_args(&args)?);
    let forking = args.mode == Mode::Forking;
    let gate = Arc::new(Gate::new(
        Limits::new(args.max_connections, args.max_per_ip),
        forking,
    ));
    match args.mode {
        Mode::Threading => run::<socketserver::server::Threading>(&args, cfg, gate),
        Mode::Forking => run::<socketserver::server::Forking>(&args, cfg, gate),
    }
}
