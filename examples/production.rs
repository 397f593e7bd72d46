//! An echo server set up the way one is deployed: prefork or async,
//! systemd socket activation, a locked pid file, privilege drop after
//! binding, graceful SIGTERM/SIGINT drain and SIGHUP zero-downtime restart.
//!
//! ```text
//! cargo run --release --example production -- [--mode prefork|async] [--listen ADDR]
//!     [--pid-file PATH] [--user USER [--group GROUP]] [--allow-root]
//!     [--idle-timeout 60s] [--backlog 4096]
//!     [--proxy-protocol [--proxy-timeout 5s] [--proxy-from CIDR[,CIDR...]]]
//!     [--reuse-port] [--drain-timeout 30s] [--health ADDR [--drain-notice 1s]]
//! ```
//!
//! Behind a balancer (docs/scale-out.md): `--proxy-protocol` takes the
//! client address from a PROXY v1/v2 header, and `--proxy-from` names the
//! balancers allowed to send one (anyone else is refused; without it,
//! anyone who can reach the port can claim any address); `--health ADDR` answers
//! HAProxy's `agent-check`; `--reuse-port` lets several instances share the
//! port. Under systemd (`Type=notify`) it sends `READY=1` and
//! `STOPPING=1`.
//!
//! When ready it prints `listening on tcp://HOST:PORT (mode MODE, pid PID)`
//! to stdout — again after every SIGHUP restart, from the successor (a
//! new pid on the same address). Under systemd socket activation (`LISTEN_FDS`) it serves the
//! inherited socket instead of binding. A prefork server refuses to run as
//! root unless `--user` or `--allow-root` is given. Logs go to stderr.
//!
//! The defaults are the echo example's: a client idle for `--idle-timeout`
//! is disconnected (so idle connections cannot hold every worker), the
//! backlog is 4096. On SIGTERM the health port reports `drain`, the server
//! keeps accepting for `--drain-notice`, then closes the listening socket
//! before the drain (new clients are refused, not reset at exit). On
//! SIGHUP, after the same notice, it starts its successor with the
//! listening (and health) socket — the successor accepts at once — then
//! finishes its own connections, bounded by `--drain-timeout`, and exits:
//! no one waits for the old process's clients.

#[path = "support/balancer.rs"]
mod balancer;

use std::io::{self, BufRead, Write};
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use socketserver::server::{
    activation, drop_privileges, notify, refuse_root, shutdown_on_signals, spawn_successor,
    HangupRestart, PidFile, Prefork, Server, ServerBuilder, SocketServer, Strategy, TcpTransport,
};
use socketserver::{Request, RequestHandler};

/// Echoes whatever arrives; a client idle for the timeout is closed.
struct Echo {
    idle: Option<Duration>,
}

impl RequestHandler for Echo {
    fn setup(&mut self, req: &mut Request) -> io::Result<()> {
        req.set_timeout(self.idle)
    }

    fn handle(&mut self, req: &mut Request) -> io::Result<()> {
        let (mut rfile, mut wfile) = req.split();
        let result: io::Result<()> = (|| loop {
            let chunk = rfile.fill_buf()?;
            if chunk.is_empty() {
                return Ok(());
            }
            let n = chunk.len();
            wfile.write_all(chunk)?;
            rfile.consume(n);
        })();
        match result {
            // The idle timeout: an expected end, not a failure.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                tracing::debug!("closing an idle connection");
                Ok(())
            }
            other => other,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// A pool of pre-forked worker processes.
    Prefork,
    /// tokio, running the blocking handler on its bounded blocking pool
    /// (needs the `async` feature).
    #[cfg(feature = "async")]
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
    /// Disconnect a client after this long without progress (0s: never).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    idle_timeout: Duration,
    /// The listen backlog (when not socket-activated).
    #[arg(long, default_value_t = 4096)]
    backlog: i32,
    #[command(flatten)]
    balancer: balancer::BalancerArgs,
}

/// What `serve` hands back on SIGHUP: the sockets for the successor.
struct Handover {
    listener: OwnedFd,
    health: Option<OwnedFd>,
}

/// Serves until SIGTERM/SIGINT (returns `None`) or SIGHUP: then starts
/// the successor with the sockets (through `start`) before draining.
fn serve<S: Strategy>(
    args: &Args,
    inherited: Vec<OwnedFd>,
    start: &mut dyn FnMut(&Handover) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let idle = (!args.idle_timeout.is_zero()).then_some(args.idle_timeout);
    let mut builder = ServerBuilder::<TcpTransport, S>::new();
    builder.backlog(args.backlog).systemd_notify(true);
    args.balancer.configure(&mut builder);
    let mut inherited = inherited.into_iter();
    let listener = inherited.next();
    match (args.balancer.health, inherited.next()) {
        (Some(_), Some(fd)) => {
            builder.health_socket(activation::into_tcp_listener(fd)?);
        }
        (Some(addr), None) => {
            builder.health(addr);
        }
        (None, _) => {}
    }
    let factory = move || Echo { idle };
    let mut server: SocketServer<TcpTransport, S> = match listener {
        Some(fd) => builder.from_socket(fd, factory)?,
        None => builder.bind(args.listen, factory)?,
    };
    match &args.user {
        Some(user) => {
            drop_privileges(user, args.group.as_deref())?;
        }
        None if args.mode == Mode::Prefork => refuse_root(args.allow_root)?,
        None => {}
    }
    {
        let mut out = io::stdout().lock();
        writeln!(
            out,
            "listening on tcp://{} (mode {}, pid {})",
            server.server_address(),
            S::NAME,
            std::process::id()
        )?;
        out.flush()?;
    }
    if let Some(h) = server.health_address() {
        tracing::info!(health = %h, "agent-check port");
    }
    let _signals = shutdown_on_signals(&server.shutdown_handle())?;
    let hup = HangupRestart::for_server(&server.shutdown_handle())?;
    server.serve_forever()?;
    // The drain notice has run out (health said `drain` meanwhile). On a
    // restart the successor starts now, on copies of the sockets, and
    // accepts at once; this process then closes its own copies and
    // drains. On a stop the socket closes, so new clients are refused.
    if hup.requested() {
        let socket = server.socket().context("server socket")?;
        let handover = Handover {
            listener: OwnedFd::from(socket.try_clone()?),
            health: server.health_socket().ok(),
        };
        start(&handover)?;
    }
    server.server_close();
    tracing::info!(report = ?server.drain_report(), "drained");
    Ok(())
}

/// With `--user` (as root): hands the pid file to that user and group
/// before the switch, so the process can still remove it at exit and a
/// SIGHUP successor, which starts as that user, can take it again. (Left
/// to root, the successor failed with "Permission denied" and the restart
/// ended the service; a plain stop left the file behind.) The directory
/// must let the user remove and create it (`/tmp`, or a directory the
/// user owns, such as systemd's `RuntimeDirectory=`); where it cannot,
/// the file stays and the successor locks it where it is.
fn give_to_user(path: &Path, args: &Args) -> anyhow::Result<()> {
    use nix::unistd::{chown, geteuid, Group, User};
    let Some(name) = &args.user else {
        return Ok(());
    };
    if !geteuid().is_root() {
        // drop_privileges refuses it with its own message.
        return Ok(());
    }
    let user = User::from_name(name)?.with_context(|| format!("no user {name:?}"))?;
    let gid = match &args.group {
        Some(g) => {
            Group::from_name(g)?
                .with_context(|| format!("no group {g:?}"))?
                .gid
        }
        None => user.gid,
    };
    chown(path, Some(user.uid), Some(gid))
        .with_context(|| format!("giving pid file {} to {name}", path.display()))
}

fn main() -> anyhow::Result<()> {
    // Take inherited sockets first: it edits the environment, which is
    // only sound before other threads exist.
    let inherited = activation::listen_fds().context("LISTEN_FDS")?;
    tracing_subscriber::fmt()
        .with_writer(io::stderr)
        .with_ansi(io::IsTerminal::is_terminal(&io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let mut pid_file = match &args.pid_file {
        Some(p) => {
            let f = PidFile::create(p).with_context(|| format!("pid file {}", p.display()))?;
            give_to_user(p, &args)?;
            Some(f)
        }
        None => None,
    };
    let mut start = |h: &Handover| -> anyhow::Result<()> {
        // The successor takes the pid file again: release it first.
        drop(pid_file.take());
        let mut fds = vec![h.listener.as_fd()];
        fds.extend(h.health.as_ref().map(AsFd::as_fd));
        let pid = spawn_successor(&fds).context("starting the successor")?;
        tracing::info!(successor = pid, "SIGHUP: successor started; draining");
        // A Type=notify unit follows the successor (NotifyAccess=all).
        let _ = notify::notify(&format!("MAINPID={pid}"));
        Ok(())
    };
    match args.mode {
        Mode::Prefork => serve::<Prefork>(&args, inherited, &mut start)?,
        #[cfg(feature = "async")]
        Mode::Async => serve::<socketserver::server::Async>(&args, inherited, &mut start)?,
    }
    drop(pid_file);
    Ok(())
}
