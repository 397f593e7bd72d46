//! The prefork strategy: a managed pool of worker processes that serve on
//! the shared server socket (Apache's prefork MPM, Perl's
//! `Net::Server::PreFork`), over every transport.
//!
//! The forking strategy pays a `fork` per connection. Here workers are
//! forked ahead of time and each serves many requests, one at a time, so a
//! connection costs an `accept` (a datagram a `recvfrom`), not a process —
//! while a crash still takes down one worker, never the server. Over a
//! stream socket each worker blocks in `accept4` on its copy of the socket
//! (the kernel wakes one blocked accepter per connection; the socket is
//! blocking while the pool serves) and hands what it accepted to the
//! crate's shared request path; over a datagram socket it runs the
//! crate's one accept loop
//! ([`Serving::accept_loop`](crate::server::Serving::accept_loop)); see
//! `worker.rs`.
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
//!   `waitpid(its pid)` (never `waitpid(-1)`) and replaced.
//! - **Recycling.** With `max_requests`, a worker leaves after that many
//!   requests plus a random jitter.
//! - **Workers that do not serve.** A worker busy with one request for
//!   longer than `hung_timeout` (default 5 minutes) is killed and
//!   replaced. A request left waiting on the socket for `offer_timeout`
//!   while workers are idle and none takes it means those idle workers are
//!   stopped (SIGSTOP) or wedged: they are killed and replaced.
//! - **Retiring, parent death.** Each worker polls its end of a control
//!   socket (a Unix socket pair) whose other end only the parent holds.
//!   Closing it — or the parent dying,
//!   which closes it too — tells the worker to stop: it **closes its copy
//!   of the listening socket at once**, even in the middle of a request (a
//!   small watcher thread blocked on the control socket revokes the
//!   descriptor while the worker's thread serves), finishes that request
//!   and exits. So a socket nobody will serve never keeps accepting
//!   connections into its backlog. (A datagram socket stays open until
//!   the request in flight has sent its reply on it: it has no backlog of
//!   its own.)
//! - **Shutdown** (SIGTERM, `shutdown`). The parent makes the socket
//!   non-blocking again and writes [`STOP`] into every control socket:
//!   each worker's watcher thread takes the connections already queued in
//!   the backlog (up to 256, until none is left), even while the worker
//!   serves a request, then closes the worker's copy of the listening
//!   socket and its end of the control socket; the worker serves them
//!   after its current request, as the threading server serves its queue
//!   at a stop. `serve_forever` returns once every worker closed its end
//!   (or exited; at most 1 s, for a stopped worker): from then on no
//!   worker accepts from the socket, so a successor that takes it over
//!   (a SIGHUP restart) and makes it blocking again for its own workers
//!   never has a connection taken by a stopping worker and left waiting.
//!   The parent's own copy closes in `server_close`. So the port is
//!   refused within milliseconds, and a connection the kernel completed
//!   before that is served, not reset. The drain timeout bounds it all.
//! - **Per request** a worker makes no system call of its own: it serves
//!   on the thread that accepted (no hand-off), and the scoreboard words
//!   are atomic stores to shared memory.
//! - **Descriptors.** A worker closes what it inherited from the pool:
//!   its siblings' pidfds and control sockets.
//! - **Errors.** A repeated failure (`cannot fork prefork worker` under
//!   `ulimit -n`) is logged once, then with a count every 10 seconds.
//!
//! Fork from a single-threaded process: `serve_forever` forks from the
//! calling thread, and the process layer warns when other threads exist.

mod resize;
mod worker;

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::Signal;
use nix::sys::socket::{send, socketpair, AddressFamily, MsgFlags, SockFlag, SockType};

use crate::handler::PeerAddr;
use crate::process::{fork_child, ForkOptions, ForkedChild, SharedAtomics};
use crate::{Error, Result};

use super::Serving;
use super::{LoopWaker, Strategy};
use crate::server::core::ServerCore;
use crate::server::drain::DrainReport;
use crate::server::incoming::Incoming;
use crate::server::ops::backoff::RateLimited;
use crate::server::options::{PoolOptions, ServerOptions};
use crate::server::transport::ServerSocket;
use crate::server::wakeup::Wakeup;

use resize::Resize;
use worker::WorkerCtx;

/// Scoreboard words per slot.
const WORDS: usize = 4;
const W_STATE: usize = 0;
const W_PID: usize = 1;
const W_REQUESTS: usize = 2;
const W_BUSY_SINCE: usize = 3;

/// The byte the parent writes into every worker's control socket before
/// closing it when the whole server stops (a retire only closes it): the
/// worker then serves what is queued in the backlog before it closes its
/// listening socket (see `worker.rs`).
const STOP: u8 = b's';

/// How long a stop waits for the workers to close the listening socket
/// (microseconds normally; a stopped worker costs the whole wait).
const CLOSE_WAIT: Duration = Duration::from_secs(1);

const STARTING: u64 = 1;
const IDLE: u64 = 2;
const BUSY: u64 = 3;
const EXITING: u64 = 4;

/// How often the parent re-checks spares, hung and stopped workers when
/// nothing else wakes it.
const TICK: Duration = Duration::from_millis(50);

/// How often a repeated identical error is logged again, with its count.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Milliseconds since `epoch`. The epoch is taken in the parent before any
/// fork and inherited by every worker; `Instant` reads `CLOCK_MONOTONIC`,
/// which is system-wide, so parent and workers agree on these numbers.
fn now_ms(epoch: Instant) -> u64 {
    epoch.elapsed().as_millis() as u64
}

#[derive(Debug)]
struct Worker {
    child: ForkedChild,
    retiring: bool,
}

/// A pool of pre-forked worker processes, each serving requests one at a
/// time on the shared server socket (Apache's prefork MPM).
///
/// ```no_run
/// use std::io::{self, BufRead, Write};
/// use socketserver::server::{PreforkTcpServer, Server};
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
/// server.server_close(); // drains the workers
/// # Ok::<(), socketserver::Error>(())
/// ```
///
/// `handle_request` (no pool) serves one request in the calling process.
#[derive(Debug)]
pub struct Prefork {
    pool: PoolOptions,
    board: SharedAtomics,
    workers: Vec<Option<Worker>>,
    /// The parent's ends of the workers' control sockets, by slot.
    control: Vec<Option<OwnedFd>>,
    epoch: Instant,
    log: RateLimited,
    /// Since when a request has waited on the socket while workers were
    /// idle, and the pool's request count then.
    offered: Option<(Instant, u64)>,
    /// Which slots were busy when the workers were told to stop: the
    /// requests in flight at shutdown, for the drain report.
    busy_at_stop: Option<Vec<bool>>,
}

impl Prefork {
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

    fn state(&self, slot: usize) -> u64 {
        self.word(slot, W_STATE).load(Ordering::SeqCst)
    }

    /// Sleeps until a worker exits, a wake-up arrives or a tick passes.
    fn wait_for_event(&self, wakeup: &Wakeup) -> Result<()> {
        let mut fds = vec![PollFd::new(wakeup.fd(), PollFlags::POLLIN)];
        for w in self.workers.iter().flatten() {
            fds.push(PollFd::new(w.child.sentinel(), PollFlags::POLLIN));
        }
        // The agent-check port is answered here, in the single-threaded
        // parent (see `ops::health`); workers never answer it.
        if let Some(h) = wakeup.health() {
            fds.push(PollFd::new(h.fd(), PollFlags::POLLIN));
        }
        let tick = PollTimeout::try_from(TICK).unwrap_or(PollTimeout::NONE);
        let result = match poll(&mut fds, tick) {
            Ok(_) | Err(Errno::EINTR) => Ok(()),
            Err(e) => Err(e.into()),
        };
        drop(fds);
        wakeup.answer_health();
        result
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
                    let exiting = self.state(slot) == EXITING;
                    if code != 0 || !(retiring || exiting) {
                        tracing::debug!(pid, code, slot, "prefork worker died");
                        self.log.warn(
                            "prefork worker died; replacing it",
                            &format!("exit code {code}"),
                        );
                    }
                    self.workers[slot] = None;
                    self.control[slot] = None;
                    self.word(slot, W_STATE).store(0, Ordering::SeqCst);
                }
                Ok(None) => {}
                Err(e) => {
                    self.log.error("cannot reap prefork worker", &e);
                }
            }
        }
    }

    fn kill_hung(&mut self) {
        let Some(limit) = self.pool.hung_timeout else {
            return;
        };
        let now = now_ms(self.epoch);
        for (slot, w) in self.workers.iter_mut().enumerate() {
            let Some(w) = w else { continue };
            let word = |i| {
                self.board
                    .get(slot * WORDS + i)
                    .map_or(0, |a| a.load(Ordering::SeqCst))
            };
            if word(W_STATE) != BUSY {
                continue;
            }
            if now.saturating_sub(word(W_BUSY_SINCE)) > limit.as_millis() as u64 {
                tracing::warn!(
                    pid = w.child.pid(),
                    "prefork worker busy past the hung timeout; killing it"
                );
                let _ = w.child.signal(Signal::SIGKILL);
                w.retiring = true;
            }
        }
    }

    /// Replaces idle workers that let a request wait on the socket for
    /// `offer_timeout` without taking it (stopped or wedged).
    fn check_offers(&mut self, socket: &ServerSocket) {
        let idle: Vec<usize> = (0..self.workers.len())
            .filter(|&s| {
                self.workers[s].as_ref().is_some_and(|w| !w.retiring) && self.state(s) == IDLE
            })
            .collect();
        let mut fds = [PollFd::new(
            std::os::fd::AsFd::as_fd(socket),
            PollFlags::POLLIN,
        )];
        let pending = matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0);
        if !pending || idle.is_empty() {
            self.offered = None;
            return;
        }
        let served: u64 = (0..self.workers.len())
            .map(|s| self.word(s, W_REQUESTS).load(Ordering::SeqCst))
            .sum();
        match self.offered {
            Some((_, before)) if before != served => self.offered = Some((Instant::now(), served)),
            Some((since, _)) if since.elapsed() >= self.pool.offer_timeout => {
                for slot in idle {
                    if let Some(w) = self.workers[slot].as_mut() {
                        tracing::warn!(
                            pid = w.child.pid(),
                            "idle prefork worker does not take waiting requests (stopped?); replacing it"
                        );
                        let _ = w.child.signal(Signal::SIGKILL);
                        w.retiring = true;
                    }
                    self.control[slot] = None;
                }
                self.offered = None;
            }
            Some(_) => {}
            None => self.offered = Some((Instant::now(), served)),
        }
    }

    /// Forks or retires workers to keep the idle count within bounds.
    fn adjust(&mut self, serving: &mut Serving<'_>) {
        let (mut idle, mut live) = (0, 0);
        for (slot, w) in self.workers.iter().enumerate() {
            let Some(w) = w else { continue };
            live += 1;
            let state = self.state(slot);
            if !w.retiring && (state == IDLE || state == STARTING) {
                idle += 1;
            }
        }
        if idle < self.pool.min_spare {
            let want = (self.pool.min_spare - idle).min(self.pool.max_workers - live);
            for _ in 0..want {
                if let Err(e) = self.spawn(serving) {
                    self.log.error("cannot fork prefork worker", &e);
                    break;
                }
            }
        } else if idle > self.pool.max_spare {
            let victim = (0..self.workers.len()).find(|&slot| {
                self.workers[slot].as_ref().is_some_and(|w| !w.retiring) && self.state(slot) == IDLE
            });
            if let Some(slot) = victim {
                self.control[slot] = None;
                if let Some(w) = self.workers[slot].as_mut() {
                    w.retiring = true;
                }
            }
        }
    }

    fn spawn(&mut self, serving: &mut Serving<'_>) -> Result<()> {
        let slot = self
            .workers
            .iter()
            .position(Option::is_none)
            .ok_or_else(|| Error::InvalidArgument("prefork pool is full".into()))?;
        // A socket pair rather than a pipe: the worker closes its end once
        // it will not accept again, which the parent waits for at a stop.
        let (ctl_w, ctl_r) = socketpair(
            AddressFamily::Unix,
            SockType::Stream,
            None,
            SockFlag::SOCK_CLOEXEC,
        )?;
        for w in [W_PID, W_REQUESTS, W_BUSY_SINCE] {
            self.word(slot, w).store(0, Ordering::SeqCst);
        }
        self.word(slot, W_STATE).store(STARTING, Ordering::SeqCst);
        let jitter = match self.pool.max_requests_jitter {
            0 => 0,
            j => getrandom::u64().unwrap_or(0) % (j + 1),
        };
        let limit = match self.pool.max_requests {
            0 => 0,
            n => n + jitter,
        };
        // The parent's only copy of the write end lives in `control`
        // before the fork, so the child closes it with the rest.
        self.control[slot] = Some(ctl_w);
        let mut options = ForkOptions::new();
        options.name(format!("prefork-worker-{slot}"));
        let (workers, control) = (&mut self.workers, &mut self.control);
        let (board, epoch) = (&self.board, self.epoch);
        let forked = fork_child(&options, move || {
            // Hold only what a worker needs: not the siblings' pidfds, not
            // the control sockets' parent ends (ours included: only the
            // parent may hold them, or closing them would wake nobody).
            workers.clear();
            control.clear();
            // Nor the agent port: only the parent answers it.
            if let Some(health) = serving.wakeup.health() {
                health.leave_in_child();
            }
            WorkerCtx {
                board,
                slot,
                limit,
                epoch,
            }
            .run(serving, ctl_r)
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
                self.control[slot] = None;
                self.word(slot, W_STATE).store(0, Ordering::SeqCst);
                Err(e)
            }
        }
    }

    /// Tells every worker to stop: each finishes its current request,
    /// serves the connections already queued in the backlog, closes its
    /// listening socket and leaves. (A worker already retiring closed its
    /// socket when it was told.)
    fn stop_accepting(&mut self) {
        if self.busy_at_stop.is_none() {
            let busy = (0..self.workers.len())
                .map(|s| self.workers[s].is_some() && self.state(s) == BUSY)
                .collect();
            self.busy_at_stop = Some(busy);
        }
        let mut told = Vec::new();
        for c in &mut self.control {
            if let Some(fd) = c.take() {
                // One byte into an empty socket never blocks, and
                // MSG_NOSIGNAL spares the parent a SIGPIPE from a worker
                // that already left. If it fails the worker sees only the
                // close: it retires (revokes at once).
                if send(fd.as_raw_fd(), &[STOP], MsgFlags::MSG_NOSIGNAL).is_ok() {
                    told.push(fd);
                }
            }
        }
        for w in self.workers.iter_mut().flatten() {
            w.retiring = true;
        }
        wait_closed(told, CLOSE_WAIT);
    }
}

/// Waits until every worker told to stop has closed its end of the
/// control socket (end of file here), at most `limit`: its watcher does
/// that once it took the backlog, revoked its listening socket and got
/// the accepting thread out of `accept4`, or the worker exited. After
/// that no worker accepts from the socket again, which a successor
/// sharing it relies on: it makes the socket blocking again for its own
/// workers, and that flag belongs to the one open file both share, so a
/// late backlog drain would block in `accept4` holding the successor's
/// connections unserved.
fn wait_closed(mut told: Vec<OwnedFd>, limit: Duration) {
    let deadline = Instant::now() + limit;
    while !told.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            tracing::warn!(
                workers = told.len(),
                "prefork workers still hold the listening socket {limit:?} after the stop (stopped?)"
            );
            return;
        }
        let mut fds: Vec<PollFd> = told
            .iter()
            .map(|fd| PollFd::new(fd.as_fd(), PollFlags::POLLIN))
            .collect();
        let timeout = PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX);
        match poll(&mut fds, timeout) {
            // A worker never writes to it: readable means end of file.
            Ok(n) if n > 0 => {
                let done: Vec<bool> = fds
                    .iter()
                    .map(|p| p.revents().is_some_and(|r| !r.is_empty()))
                    .collect();
                drop(fds);
                let mut done = done.into_iter();
                told.retain(|_| !done.next().unwrap_or(true));
            }
            Ok(_) | Err(Errno::EINTR) => {}
            Err(_) => return,
        }
    }
}

/// Makes a stream server socket blocking (the workers' accept4) or
/// non-blocking (the rest of the crate's view of it). One open file shared
/// by the parent and every worker: the change is seen by all. Datagram
/// sockets stay non-blocking (their workers run the shared `poll` loop).
fn set_blocking(serving: &Serving<'_>, blocking: bool) -> Result<()> {
    match serving.socket.as_ref() {
        Some(s) if s.is_stream() => Ok(s.sock_ref().set_nonblocking(!blocking)?),
        _ => Ok(()),
    }
}

impl Strategy for Prefork {
    const NAME: &'static str = "prefork";

    fn new(options: &ServerOptions, _: LoopWaker) -> Result<Self> {
        let mut pool = options.pool.clone();
        pool.min_spare = pool.min_spare.min(pool.max_workers);
        pool.max_spare = pool.max_spare.max(pool.min_spare.max(1));
        Ok(Prefork {
            board: SharedAtomics::new(pool.max_workers * WORDS)?,
            workers: (0..pool.max_workers).map(|_| None).collect(),
            control: (0..pool.max_workers).map(|_| None).collect(),
            epoch: Instant::now(),
            log: RateLimited::new(LOG_EVERY),
            offered: None,
            busy_at_stop: None,
            pool,
        })
    }

    /// Serves one request in the calling process: only `handle_request`
    /// gets here; `serve_forever` hands requests to the workers.
    fn process_request(
        &mut self,
        core: &Arc<ServerCore>,
        _: &mut Option<ServerSocket>,
        request: Incoming,
        peer: PeerAddr,
    ) {
        core.process(request, &peer);
    }

    /// Forks the starting workers, then keeps the pool within its bounds,
    /// replacing workers that crash, hang, stop or are recycled, until a
    /// shutdown; then tells every worker to stop accepting.
    fn serve_forever(&mut self, serving: &mut Serving<'_>) -> Result<()> {
        let socket_present = serving.socket.is_some();
        if !socket_present {
            return Err(Error::Closed);
        }
        let signals = Resize::install(serving.wakeup, self.pool.resize_signals)?;
        self.busy_at_stop = None;
        // Workers block in accept4 (one exclusive wake-up per connection,
        // see worker.rs): the shared socket is blocking while the pool
        // serves, and non-blocking again before the workers are told to
        // stop (their backlog drain must end at EAGAIN).
        set_blocking(serving, true)?;
        let first = self.pool.start_workers.max(self.pool.min_spare);
        for _ in 0..first.min(self.pool.max_workers) {
            if let Err(e) = self.spawn(serving) {
                // Without a single worker nothing would be served; with
                // some, the pool keeps trying to grow on every tick.
                if self.workers.iter().all(Option::is_none) {
                    let _ = set_blocking(serving, false);
                    return Err(e);
                }
                self.log.error("cannot fork prefork worker", &e);
                break;
            }
        }
        let result = loop {
            if serving.wakeup.shutdown_requested() {
                break Ok(());
            }
            if let Err(e) = self.wait_for_event(serving.wakeup) {
                break Err(e);
            }
            serving.wakeup.drain();
            if serving.wakeup.shutdown_requested() {
                break Ok(());
            }
            self.reap();
            self.kill_hung();
            if let Some(socket) = serving.socket.as_ref() {
                self.check_offers(socket);
            }
            signals.apply(&mut self.pool);
            self.adjust(serving);
        };
        drop(signals);
        let restored = set_blocking(serving, false);
        self.stop_accepting();
        result.and(restored)
    }

    fn drain(&mut self, block_on_close: bool, timeout: Duration) -> DrainReport {
        self.stop_accepting();
        let mut report = DrainReport::default();
        let busy = self.busy_at_stop.take().unwrap_or_default();
        let busy = |slot: usize| busy.get(slot).copied().unwrap_or(false);
        if !block_on_close {
            report.detached = (0..self.workers.len()).filter(|&s| busy(s)).count();
            // Dropping a running ForkedChild hands it to a reaper thread.
            for w in &mut self.workers {
                *w = None;
            }
            return report;
        }
        let deadline = Instant::now() + timeout;
        for (slot, w) in self.workers.iter_mut().enumerate() {
            let Some(w) = w else { continue };
            let left = deadline.saturating_duration_since(Instant::now());
            if matches!(w.child.wait_timeout(left), Ok(Some(_))) {
                report.drained += usize::from(busy(slot));
            } else {
                tracing::warn!(
                    pid = w.child.pid(),
                    "prefork worker did not drain in time; killing it"
                );
                let _ = w.child.signal(Signal::SIGKILL);
                let _ = w.child.wait();
                report.aborted += 1;
            }
        }
        for w in &mut self.workers {
            *w = None;
        }
        for slot in 0..self.pool.max_workers {
            self.word(slot, W_STATE).store(0, Ordering::SeqCst);
        }
        report
    }
}
