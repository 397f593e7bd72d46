//! The prefork strategy: a managed pool of worker processes that accept on
//! the shared listening socket (Apache's prefork MPM, Perl's
//! `Net::Server::PreFork`).
//!
//! The forking strategy pays a `fork` per connection. Here workers are
//! forked ahead of time and each serves many connections, one at a time,
//! so a connection costs an `accept`, not a process — while a crash still
//! takes down one worker, never the server.
//!
//! How the parent manages the pool:
//!
//! - **Scoreboard.** Each worker slot has four counters in shared memory
//!   ([`SharedAtomics`]): state (starting, idle, busy, exiting), pid,
//!   requests served and the time its current request started. Workers
//!   update them with plain atomic stores — no lock, nothing a dying worker
//!   could leave held, no system call per request.
//! - **Spares.** Several times a second the parent counts idle workers:
//!   below `min_spare` it forks more (up to `max_workers`); above
//!   `max_spare` it retires one per tick. SIGTTIN and SIGTTOU raise and
//!   lower both bounds by one while running.
//! - **Crashes.** The parent sleeps in `poll` on every worker's pidfd
//!   sentinel, so a worker that dies wakes it at once; it is reaped with
//!   `waitpid(its pid)` (never `waitpid(-1)`) and replaced well within
//!   100 ms.
//! - **Recycling.** With `max_requests`, a worker leaves after that many
//!   connections plus a random jitter (so workers started together do not
//!   all restart together), bounding the damage of slow leaks.
//! - **Hung workers.** With `hung_timeout`, a worker busy with one
//!   connection for longer is killed (SIGKILL) and replaced.
//! - **Retiring and shutdown.** Each worker polls a control pipe whose
//!   only write end the parent holds. Closing it tells the worker to leave
//!   once its current connection is done; if the parent dies the kernel
//!   closes it, so workers never outlive the parent by more than a
//!   connection. No pid read from anywhere is ever signalled: only
//!   `ForkedChild` handles of our own unreaped children.
//!
//! Fork from a single-threaded process: `serve_forever` forks from the
//! calling thread, and the process layer warns when other threads exist.

use std::collections::HashMap;
use std::fmt;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::Signal;

use crate::handler::{PeerAddr, RequestHandler, Stream};
use crate::process::{fork_child, ForkOptions, ForkedChild, SharedAtomics};
use crate::{Error, Result};

use super::backoff::{AcceptAction, AcceptBackoff};
use super::core::ServerCore;
use super::hooks::{DefaultHooks, Hooks};
use super::incoming::Incoming;
use super::wakeup::{ShutdownHandle, Wakeup};

/// Scoreboard words per slot.
const WORDS: usize = 4;
const W_STATE: usize = 0;
const W_PID: usize = 1;
const W_REQUESTS: usize = 2;
const W_BUSY_SINCE: usize = 3;

const STARTING: u64 = 1;
const IDLE: u64 = 2;
const BUSY: u64 = 3;
const EXITING: u64 = 4;

/// How often the parent re-checks spares and hung workers when nothing
/// else wakes it.
const TICK: Duration = Duration::from_millis(50);

/// Milliseconds since `epoch`. The epoch is taken in the parent before any
/// fork and inherited by every worker; `Instant` reads `CLOCK_MONOTONIC`,
/// which is system-wide, so parent and workers agree on these numbers.
fn now_ms(epoch: Instant) -> u64 {
    epoch.elapsed().as_millis() as u64
}

/// Settings of a [`PreforkTcpServer`]; see [`PreforkBuilder`].
#[derive(Debug, Clone)]
struct Config {
    min_spare: usize,
    max_spare: usize,
    max_workers: usize,
    start_workers: usize,
    max_requests: u64,
    max_requests_jitter: u64,
    hung_timeout: Option<Duration>,
    drain_timeout: Duration,
    connection_timeout: Option<Duration>,
    resize_signals: bool,
    backlog: i32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            min_spare: 2,
            max_spare: 8,
            max_workers: 32,
            start_workers: 2,
            max_requests: 0,
            max_requests_jitter: 0,
            hung_timeout: None,
            drain_timeout: Duration::from_secs(30),
            connection_timeout: None,
            resize_signals: true,
            backlog: libc::SOMAXCONN,
        }
    }
}

/// Configures a [`PreforkTcpServer`] (Apache's `StartServers`,
/// `MinSpareServers`, `MaxSpareServers`, `MaxRequestWorkers`,
/// `MaxConnectionsPerChild`).
pub struct PreforkBuilder {
    config: Config,
    hooks: Arc<dyn Hooks>,
}

impl fmt::Debug for PreforkBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PreforkBuilder")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Default for PreforkBuilder {
    fn default() -> Self {
        PreforkBuilder {
            config: Config::default(),
            hooks: Arc::new(DefaultHooks),
        }
    }
}

impl PreforkBuilder {
    /// Fewest idle workers to keep; below it the parent forks more.
    /// Default is 2.
    pub fn min_spare(&mut self, n: usize) -> &mut Self {
        self.config.min_spare = n;
        self
    }

    /// Most idle workers to keep; above it the parent retires one per
    /// tick. Default is 8.
    pub fn max_spare(&mut self, n: usize) -> &mut Self {
        self.config.max_spare = n;
        self
    }

    /// Hard cap on worker processes (and so on concurrent connections).
    /// Default is 32.
    pub fn max_workers(&mut self, n: usize) -> &mut Self {
        self.config.max_workers = n.max(1);
        self
    }

    /// Workers forked before serving starts. Default is 2.
    pub fn start_workers(&mut self, n: usize) -> &mut Self {
        self.config.start_workers = n;
        self
    }

    /// Connections a worker serves before it is recycled (`0` = never),
    /// plus a random jitter in `0..=jitter` so workers do not all restart
    /// together. Default is 0 (never) with no jitter.
    pub fn max_requests(&mut self, n: u64, jitter: u64) -> &mut Self {
        self.config.max_requests = n;
        self.config.max_requests_jitter = jitter;
        self
    }

    /// Kill (SIGKILL) and replace a worker busy with one connection for
    /// longer than this. Default is no limit.
    pub fn hung_timeout(&mut self, t: Option<Duration>) -> &mut Self {
        self.config.hung_timeout = t;
        self
    }

    /// At shutdown, how long workers may finish their connections before
    /// they are killed. Default is 30 seconds.
    pub fn drain_timeout(&mut self, t: Duration) -> &mut Self {
        self.config.drain_timeout = t;
        self
    }

    /// Read/write timeout set on every accepted connection. Default is
    /// none.
    pub fn connection_timeout(&mut self, t: Option<Duration>) -> &mut Self {
        self.config.connection_timeout = t;
        self
    }

    /// Whether `serve_forever` grows (SIGTTIN) and shrinks (SIGTTOU) the
    /// pool bounds by one per signal. Default is `true`.
    pub fn resize_signals(&mut self, yes: bool) -> &mut Self {
        self.config.resize_signals = yes;
        self
    }

    /// The `listen` backlog used by [`bind`](Self::bind). Default is
    /// `SOMAXCONN`.
    pub fn backlog(&mut self, backlog: i32) -> &mut Self {
        self.config.backlog = backlog;
        self
    }

    /// Hooks (`verify_request`, `handle_error`, …), run in the workers.
    /// Default is [`DefaultHooks`].
    pub fn hooks(&mut self, hooks: impl Hooks) -> &mut Self {
        self.hooks = Arc::new(hooks);
        self
    }

    /// Binds and listens on `address` (with `SO_REUSEADDR`).
    ///
    /// # Errors
    /// Resolving, binding or listening failed.
    pub fn bind<A, F, H>(&self, address: A, factory: F) -> Result<PreforkTcpServer>
    where
        A: ToSocketAddrs,
        F: Fn() -> H + Send + Sync + 'static,
        H: RequestHandler,
    {
        let addr = address
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| Error::InvalidArgument("address resolved to nothing".into()))?;
        let sock = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )?;
        sock.set_reuse_address(true)?;
        sock.bind(&addr.into())?;
        sock.listen(self.config.backlog)?;
        self.from_listener(sock.into(), factory)
    }

    /// Serves on an existing listening socket (socket activation, re-exec).
    ///
    /// # Errors
    /// The socket's address cannot be read or it cannot be made
    /// non-blocking, or the scoreboard cannot be mapped.
    pub fn from_listener<F, H>(&self, listener: TcpListener, factory: F) -> Result<PreforkTcpServer>
    where
        F: Fn() -> H + Send + Sync + 'static,
        H: RequestHandler,
    {
        let mut config = self.config.clone();
        config.min_spare = config.min_spare.min(config.max_workers);
        config.max_spare = config.max_spare.max(config.min_spare.max(1));
        // Workers race for each connection; the losers must not block.
        listener.set_nonblocking(true)?;
        let address = listener.local_addr()?;
        let board = SharedAtomics::new(config.max_workers * WORDS)?;
        Ok(PreforkTcpServer {
            listener: Some(listener),
            address,
            core: ServerCore {
                factory: Box::new(move || Box::new(factory()) as Box<dyn RequestHandler>),
                hooks: self.hooks.clone(),
                connection_timeout: config.connection_timeout,
            },
            workers: (0..config.max_workers).map(|_| None).collect(),
            control: Mutex::new(HashMap::new()),
            board,
            wakeup: Wakeup::new()?,
            epoch: Instant::now(),
            config,
        })
    }
}

struct Worker {
    child: ForkedChild,
    retiring: bool,
}

/// A TCP server whose connections are served by a pool of pre-forked
/// worker processes.
///
/// ```no_run
/// use std::io::{self, BufRead, Write};
/// use socketserver::server::PreforkTcpServer;
/// use socketserver::{Request, RequestHandler};
///
/// struct Echo;
/// impl RequestHandler for Echo {
///     fn handle(&mut self, req: &mut Request) -> io::Result<()> {
///         let mut line = Vec::new();
///         while req.rfile().read_until(b'\n', &mut line)? > 0 {
///             req.wfile().write_all(&line)?;
///             line.clear();
///         }
///         Ok(())
///     }
/// }
///
/// let mut server = PreforkTcpServer::builder()
///     .min_spare(4)
///     .max_workers(64)
///     .max_requests(10_000, 1_000)
///     .bind("127.0.0.1:9000", || Echo)?;
/// server.serve_forever()?;
/// # Ok::<(), socketserver::Error>(())
/// ```
#[doc(alias = "PreForkTCPServer")]
pub struct PreforkTcpServer {
    listener: Option<TcpListener>,
    address: SocketAddr,
    core: ServerCore,
    config: Config,
    board: SharedAtomics,
    workers: Vec<Option<Worker>>,
    /// Write ends of the workers' control pipes, by slot. Behind a mutex
    /// only so a freshly forked worker can close every inherited copy
    /// through a shared reference.
    control: Mutex<HashMap<usize, OwnedFd>>,
    wakeup: Arc<Wakeup>,
    epoch: Instant,
}

impl fmt::Debug for PreforkTcpServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PreforkTcpServer")
            .field("address", &self.address)
            .field("config", &self.config)
            .field("workers", &self.worker_pids())
            .finish_non_exhaustive()
    }
}

impl PreforkTcpServer {
    /// A builder with the defaults.
    pub fn builder() -> PreforkBuilder {
        PreforkBuilder::default()
    }

    /// Binds with default settings; `factory` makes one handler per
    /// connection (in the worker serving it).
    ///
    /// # Errors
    /// As [`PreforkBuilder::bind`].
    pub fn bind<A, F, H>(address: A, factory: F) -> Result<Self>
    where
        A: ToSocketAddrs,
        F: Fn() -> H + Send + Sync + 'static,
        H: RequestHandler,
    {
        PreforkBuilder::default().bind(address, factory)
    }

    /// The bound address (the real port after binding port 0).
    pub fn server_address(&self) -> SocketAddr {
        self.address
    }

    /// A handle that stops `serve_forever` from another thread or a signal
    /// handler (see `shutdown_on_signals`).
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle(self.wakeup.clone())
    }

    /// Pids of the live workers.
    pub fn worker_pids(&self) -> Vec<i32> {
        self.workers
            .iter()
            .flatten()
            .map(|w| w.child.pid())
            .collect()
    }

    fn word(&self, slot: usize, w: usize) -> &AtomicU64 {
        // The board has max_workers * WORDS entries and slots are always
        // below max_workers, so this never fails; fall back to a dummy
        // rather than panic.
        static DUMMY: AtomicU64 = AtomicU64::new(0);
        self.board.get(slot * WORDS + w).unwrap_or(&DUMMY)
    }

    /// Runs the pool until [`ShutdownHandle::shutdown`]: forks the
    /// starting workers, then keeps the pool within its bounds, replacing
    /// workers that crash, hang or are recycled. On shutdown workers finish
    /// their current connection (up to the drain timeout) and are reaped.
    ///
    /// # Errors
    /// The server was closed, the first workers could not be forked, or
    /// `poll` failed.
    pub fn serve_forever(&mut self) -> Result<()> {
        if self.listener.is_none() {
            return Err(Error::Closed);
        }
        let signals = Resize::install(&self.wakeup, self.config.resize_signals)?;
        let first = self.config.start_workers.max(self.config.min_spare);
        for _ in 0..first.min(self.config.max_workers) {
            self.spawn()?;
        }
        let result = self.run(&signals);
        drop(signals);
        self.stop_workers();
        self.wakeup.reset();
        result
    }

    fn run(&mut self, signals: &Resize) -> Result<()> {
        loop {
            if self.wakeup.shutdown_requested() {
                return Ok(());
            }
            self.wait_for_event()?;
            self.wakeup.drain();
            if self.wakeup.shutdown_requested() {
                return Ok(());
            }
            self.reap();
            self.kill_hung();
            signals.apply(&mut self.config);
            self.adjust();
        }
    }

    /// Sleeps until a worker exits, a wake-up arrives or a tick passes.
    fn wait_for_event(&self) -> Result<()> {
        let mut fds = vec![PollFd::new(self.wakeup.fd(), PollFlags::POLLIN)];
        for w in self.workers.iter().flatten() {
            fds.push(PollFd::new(w.child.sentinel(), PollFlags::POLLIN));
        }
        let tick = PollTimeout::try_from(TICK).unwrap_or(PollTimeout::NONE);
        match poll(&mut fds, tick) {
            Ok(_) | Err(Errno::EINTR) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    fn reap(&mut self) {
        for slot in 0..self.workers.len() {
            let Some(w) = self.workers[slot].as_mut() else {
                continue;
            };
            match w.child.try_wait() {
                Ok(Some(code)) => {
                    let pid = w.child.pid();
                    let retiring = w.retiring;
                    let exiting = self.word(slot, W_STATE).load(Ordering::SeqCst) == EXITING;
                    if code != 0 || !(retiring || exiting) {
                        tracing::warn!(pid, code, slot, "prefork worker died; replacing it");
                    }
                    self.workers[slot] = None;
                    self.close_control(slot);
                    self.word(slot, W_STATE).store(0, Ordering::SeqCst);
                }
                Ok(None) => {}
                Err(e) => tracing::error!(error = %e, "cannot reap prefork worker"),
            }
        }
    }

    fn kill_hung(&self) {
        let Some(limit) = self.config.hung_timeout else {
            return;
        };
        let now = now_ms(self.epoch);
        for (slot, w) in self.workers.iter().enumerate() {
            let Some(w) = w else { continue };
            if self.word(slot, W_STATE).load(Ordering::SeqCst) != BUSY {
                continue;
            }
            let since = self.word(slot, W_BUSY_SINCE).load(Ordering::SeqCst);
            if now.saturating_sub(since) > limit.as_millis() as u64 {
                tracing::warn!(pid = w.child.pid(), "prefork worker hung; killing it");
                let _ = w.child.signal(Signal::SIGKILL);
            }
        }
    }

    /// Forks or retires workers to keep the idle count within bounds.
    fn adjust(&mut self) {
        let (mut idle, mut live) = (0, 0);
        for (slot, w) in self.workers.iter().enumerate() {
            let Some(w) = w else { continue };
            live += 1;
            let state = self.word(slot, W_STATE).load(Ordering::SeqCst);
            if !w.retiring && (state == IDLE || state == STARTING) {
                idle += 1;
            }
        }
        if idle < self.config.min_spare {
            let want = (self.config.min_spare - idle).min(self.config.max_workers - live);
            for _ in 0..want {
                if let Err(e) = self.spawn() {
                    tracing::error!(error = %e, "cannot fork prefork worker");
                    break;
                }
            }
        } else if idle > self.config.max_spare {
            let victim = (0..self.workers.len()).find(|&slot| {
                self.workers[slot].as_ref().is_some_and(|w| !w.retiring)
                    && self.word(slot, W_STATE).load(Ordering::SeqCst) == IDLE
            });
            if let Some(slot) = victim {
                self.close_control(slot);
                if let Some(w) = self.workers[slot].as_mut() {
                    w.retiring = true;
                }
            }
        }
    }

    fn close_control(&self, slot: usize) {
        lock(&self.control).remove(&slot);
    }

    fn spawn(&mut self) -> Result<()> {
        let slot = self
            .workers
            .iter()
            .position(Option::is_none)
            .ok_or_else(|| Error::InvalidArgument("prefork pool is full".into()))?;
        let listener = self.listener.as_ref().ok_or(Error::Closed)?;
        let (ctl_r, ctl_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        // The parent's only copy of the write end lives in `control`
        // before the fork, so the child can close it with the rest.
        lock(&self.control).insert(slot, ctl_w);
        for w in [W_PID, W_REQUESTS, W_BUSY_SINCE] {
            self.word(slot, w).store(0, Ordering::SeqCst);
        }
        self.word(slot, W_STATE).store(STARTING, Ordering::SeqCst);
        let jitter = match self.config.max_requests_jitter {
            0 => 0,
            j => getrandom::u64().unwrap_or(0) % (j + 1),
        };
        let limit = match self.config.max_requests {
            0 => 0,
            n => n + jitter,
        };
        let worker = WorkerCtx {
            listener,
            core: &self.core,
            board: &self.board,
            slot,
            limit,
            epoch: self.epoch,
        };
        let control = &self.control;
        let options = ForkOptions::new().name(format!("prefork-worker-{slot}"));
        let forked = fork_child(&options, move || {
            // Close every inherited control write end, ours included: only
            // the parent may hold them, or closing them would wake nobody.
            lock(control).clear();
            worker.run(ctl_r)
        });
        match forked {
            Ok(child) => {
                self.workers[slot] = Some(Worker {
                    child,
                    retiring: false,
                });
                Ok(())
            }
            Err(e) => {
                self.close_control(slot);
                self.word(slot, W_STATE).store(0, Ordering::SeqCst);
                Err(e)
            }
        }
    }

    /// Closes every control pipe, waits for workers up to the drain
    /// timeout, kills the rest and reaps them all.
    fn stop_workers(&mut self) {
        lock(&self.control).clear();
        let deadline = Instant::now() + self.config.drain_timeout;
        for w in self.workers.iter_mut().flatten() {
            let left = deadline.saturating_duration_since(Instant::now());
            if !matches!(w.child.wait_timeout(left), Ok(Some(_))) {
                tracing::warn!(
                    pid = w.child.pid(),
                    "prefork worker did not drain in time; killing it"
                );
                let _ = w.child.signal(Signal::SIGKILL);
                let _ = w.child.wait();
            }
        }
        for w in self.workers.iter_mut() {
            *w = None;
        }
        for slot in 0..self.config.max_workers {
            self.word(slot, W_STATE).store(0, Ordering::SeqCst);
        }
    }

    /// Stops the workers (as at shutdown) and closes the listening socket.
    /// Calling it again does nothing.
    pub fn server_close(&mut self) {
        if self.listener.is_none() {
            return;
        }
        self.stop_workers();
        self.listener = None;
    }
}

impl Drop for PreforkTcpServer {
    fn drop(&mut self) {
        self.server_close();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What a worker needs, borrowed from the parent's memory image.
struct WorkerCtx<'a> {
    listener: &'a TcpListener,
    core: &'a ServerCore,
    board: &'a SharedAtomics,
    slot: usize,
    limit: u64,
    epoch: Instant,
}

impl WorkerCtx<'_> {
    fn set(&self, w: usize, v: u64) {
        if let Some(a) = self.board.get(self.slot * WORDS + w) {
            a.store(v, Ordering::SeqCst);
        }
    }

    /// The worker's life: accept and serve until told to leave (control
    /// pipe closed), recycled (`limit` reached) or the listener breaks.
    fn run(&self, control: OwnedFd) -> i32 {
        self.set(W_PID, std::process::id() as u64);
        self.set(W_STATE, IDLE);
        let mut backoff = AcceptBackoff::default();
        let mut served = 0u64;
        let code = loop {
            let mut fds = [
                PollFd::new(self.listener.as_fd(), PollFlags::POLLIN),
                PollFd::new(control.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(_) => break 1,
            }
            if fds[1].revents().is_some_and(|r| !r.is_empty()) {
                break 0;
            }
            if fds[0].revents().is_none_or(|r| r.is_empty()) {
                continue;
            }
            let (stream, peer) = match self.listener.accept() {
                Ok(c) => {
                    backoff.on_success();
                    c
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => match backoff.on_error(&e) {
                    AcceptAction::Retry => continue,
                    AcceptAction::Backoff(d) => {
                        std::thread::sleep(d);
                        continue;
                    }
                    AcceptAction::Fatal => break 1,
                },
            };
            self.set(W_BUSY_SINCE, now_ms(self.epoch));
            self.set(W_STATE, BUSY);
            let request = Incoming::Stream(Stream::Tcp(stream));
            let peer = PeerAddr::Inet(peer);
            if self.core.hooks.verify_request(&request, &peer) {
                self.core.process(request, &peer);
            } else {
                self.core.shutdown_request(request);
            }
            served += 1;
            if let Some(a) = self.board.get(self.slot * WORDS + W_REQUESTS) {
                a.fetch_add(1, Ordering::SeqCst);
            }
            if self.limit > 0 && served >= self.limit {
                break 0;
            }
            self.set(W_STATE, IDLE);
        };
        self.set(W_STATE, EXITING);
        code
    }
}

/// SIGTTIN/SIGTTOU handlers for the duration of `serve_forever`.
struct Resize {
    grow: Arc<AtomicBool>,
    shrink: Arc<AtomicBool>,
    ids: Vec<signal_hook::SigId>,
}

impl Resize {
    fn install(wakeup: &Wakeup, enabled: bool) -> Result<Resize> {
        let mut r = Resize {
            grow: Arc::new(AtomicBool::new(false)),
            shrink: Arc::new(AtomicBool::new(false)),
            ids: Vec::new(),
        };
        if !enabled {
            return Ok(r);
        }
        use signal_hook::consts::{SIGTTIN, SIGTTOU};
        for (sig, flag) in [(SIGTTIN, &r.grow), (SIGTTOU, &r.shrink)] {
            r.ids.push(signal_hook::flag::register(sig, flag.clone())?);
            r.ids.push(signal_hook::low_level::pipe::register(
                sig,
                wakeup.sender()?,
            )?);
        }
        Ok(r)
    }

    fn apply(&self, c: &mut Config) {
        if self.grow.swap(false, Ordering::SeqCst) {
            c.min_spare = (c.min_spare + 1).min(c.max_workers);
            c.max_spare = c.max_spare.max(c.min_spare);
            tracing::info!(
                min_spare = c.min_spare,
                max_spare = c.max_spare,
                "SIGTTIN: pool grown"
            );
        }
        if self.shrink.swap(false, Ordering::SeqCst) {
            c.min_spare = c.min_spare.saturating_sub(1);
            c.max_spare = c.max_spare.saturating_sub(1).max(c.min_spare).max(1);
            tracing::info!(
                min_spare = c.min_spare,
                max_spare = c.max_spare,
                "SIGTTOU: pool shrunk"
            );
        }
    }
}

impl Drop for Resize {
    fn drop(&mut self) {
        for id in self.ids.drain(..) {
            signal_hook::low_level::unregister(id);
        }
    }
}
