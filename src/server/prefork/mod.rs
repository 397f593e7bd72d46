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
//!
//! `PreforkTcpServer` keeps the `Server` trait's names where they mean the
//! same (`serve_forever`, `shutdown_handle`, `server_address`,
//! `server_close`) but does not implement the trait: its parent never
//! accepts, so `get_request`, `process_request` and `handle_request` have
//! nothing to do there. Per-request hooks (`verify_request`,
//! `handle_error`, `shutdown_request`) run in the workers as usual.

mod builder;
mod worker;

use std::collections::HashMap;
use std::fmt;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::Signal;

use crate::handler::RequestHandler;
use crate::process::{fork_child, ForkOptions, ForkedChild, SharedAtomics};
use crate::{Error, Result};

use super::core::ServerCore;
use super::wakeup::{ShutdownHandle, Wakeup};

use builder::Config;
pub use builder::PreforkBuilder;
use worker::{Resize, WorkerCtx};

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
