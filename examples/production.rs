//! An echo server set up the way one is deployed: prefork or async,
//! systemd socket activation, a locked pid file, privilege drop after
//! binding, graceful SIGTERM/SIGINT drain and SIGHUP zero-downtime restart.
//!
//! ```text
//! cargo run --release --example production -- [--mode prefork|async] [--listen ADDR]
//!     [--pid-file PATH] [--user USER [--group GROUP]] [--allow-root]
//! ```
//!
//! When ready it prints `listening on tcp://HOST:PORT (mode MODE, pid PID)`
//! to stdout — again after every SIGHUP restart, with the same address and
//! pid. Under systemd socket activation (`LISTEN_FDS`) it serves the
//! inherited socket instead of binding. A prefork server refuses to run as
//! root unless `--user` or `--allow-root` is given. Logs go to stderr.

use std::io::{self, BufRead, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsFd;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use socketserver::server::{
    activation, drop_privileges, reexec, refuse_root, shutdown_on_signals, AsyncTcpServer,
    Blocking, HangupRestart, PidFile, PreforkTcpServer,
};
use socketserver::{Request, RequestHandler};

/// Echoes whatever arrives.
struct Echo;

impl RequestHandler for Echo {
    fn handle(&mut self, req: &mut Request) -> io::Result<()> {
        let (mut rfile, mut wfile) = req.split();
        loop {
            let chunk = rfile.fill_buf()?;
            if chunk.is_empty() {
                return Ok(());
            }
            let n = chunk.len();
            wfile.write_all(chunk)?;
            rfile.consume(n);
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// A pool of pre-forked worker processes.
    Prefork,
    /// tokio, running the blocking handler through `Blocking`.
    Async,
}

#[derive(Debug, Parser)]
#[command(about = "Production-style echo server built on socketserver")]
struct Args {
    /// Concurrency strategy.
    #[arg(long, value_enum, default_value_t = Mode::Prefork)]
    mode: Mode,
    /// Address to listen on unless socket-activated (port 0 picks one).
    #[arg(long, default_value = "127.0.0.1:9000")]
    listen: SocketAddr,
    /// Pid file, locked for the life of the process (single instance).
    #[arg(long)]
    pid_file: Option<PathBuf>,
    /// User to switch to after binding.
    #[arg(long)]
    user: Option<String>,
    /// Group to switch to (default: the user's primary group).
    #[arg(long, requires = "user")]
    group: Option<String>,
    /// Allow serving as root without --user.
    #[arg(long)]
    allow_root: bool,
}

fn main() -> anyhow::Result<()> {
    // Take inherited sockets first: it edits the environment, which is
    // only sound before other threads exist.
    let inherited = activation::tcp_listeners().context("LISTEN_FDS")?;
    tracing_subscriber::fmt()
        .with_writer(io::stderr)
        .with_ansi(io::IsTerminal::is_terminal(&io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let listener = match inherited.into_iter().next() {
        Some(l) => l,
        None => TcpListener::bind(args.listen).with_context(|| format!("bind {}", args.listen))?,
    };
    let pid_file = match &args.pid_file {
        Some(p) => Some(PidFile::create(p)?),
        None => None,
    };
    match &args.user {
        Some(user) => {
            drop_privileges(user, args.group.as_deref())?;
        }
        None if args.mode == Mode::Prefork => refuse_root(args.allow_root)?,
        None => {}
    }
    // A second handle on the socket: it stays open (new connections wait
    // in the backlog) while the server drains and the binary re-execs.
    let keep = listener.try_clone()?;
    {
        let mut out = io::stdout().lock();
        let mode = match args.mode {
            Mode::Prefork => "prefork",
            Mode::Async => "async",
        };
        writeln!(
            out,
            "listening on tcp://{} (mode {mode}, pid {})",
            listener.local_addr()?,
            std::process::id()
        )?;
        out.flush()?;
    }
    let restart = match args.mode {
        Mode::Prefork => {
            let mut server = PreforkTcpServer::builder().from_listener(listener, || Echo)?;
            let _signals = shutdown_on_signals(&server.shutdown_handle())?;
            let hup = HangupRestart::for_server(&server.shutdown_handle())?;
            server.serve_forever()?;
            server.server_close();
            hup.requested()
        }
        Mode::Async => {
            let mut server = AsyncTcpServer::from_listener(listener, Blocking::new(|| Echo))?;
            server.set_shutdown_on_signals(true);
            let hup = HangupRestart::for_async(&server.shutdown_handle())?;
            let report = server.serve_forever()?;
            tracing::info!(?report, "drained");
            hup.requested()
        }
    };
    if restart {
        tracing::info!("SIGHUP: re-executing with the listening socket");
        // The pid file's lock goes with the old image (close-on-exec); the
        // new image takes it again. Not dropping it keeps the file.
        std::mem::forget(pid_file);
        let Err(e) = reexec(&[keep.as_fd()]);
        return Err(e).context("re-exec failed");
    }
    drop(pid_file);
    Ok(())
}
