//! The engine under [`Pool`](crate::process::Pool) and
//! [`ProcessPoolExecutor`](crate::process::ProcessPoolExecutor): a set of forked
//! workers, one private socketpair each, and one dispatcher thread in the
//! parent that hands out jobs and collects results.
//!
//! Because every worker has its own connection, the dispatcher always knows
//! which jobs sit on which worker. It `poll`s, in one call, a wake-up
//! eventfd (new jobs, close, terminate), every worker's connection and
//! every worker's sentinel (a pidfd). A worker that dies is therefore seen
//! at once, by its sentinel or by end-of-file on its connection, never by
//! a polling sleep: the job it was running fails with
//! [`Error::WorkerDied`], jobs queued behind it on that worker go back to
//! the shared queue, and a replacement is forked (or, for the executor,
//! the whole engine is marked broken and every pending job fails).
//!
//! Each worker holds at most [`PREFETCH`] jobs: the one it runs and one
//! queued behind it, so it never waits for the dispatcher between jobs.
//! Only a job that fits in a quarter of the socket's send buffer (widened
//! to a few MiB where the kernel allows) is queued behind a running one; a
//! bigger one waits until the worker is idle (and so reading), otherwise
//! the dispatcher's blocking send and the worker's blocking reply could
//! wait on each other.

use std::collections::VecDeque;
use std::os::fd::AsFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{JoinHandle, ThreadId};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::signal::Signal;

use crate::process::closefork::ParentOnly;
use crate::process::forkserver::{self, StartMethod};
use crate::process::worker::{self, Body, Initializer, MAX_FRAME, OP_STOP};
use crate::process::{fork_child, pipe, spin, Connection, ForkOptions, ForkedChild};
use crate::{Error, Result};

/// Jobs handed to one worker at a time. A job stays with its payload
/// until its reply arrives, so the ones behind a dead worker's running job
/// can be queued again.
const PREFETCH: usize = 2;
/// Largest payload sent to a worker that is still busy, whatever its
/// socket's buffer: far below the default (about 200 KiB), so such a send
/// never blocks. Workers whose buffer was widened take more (see
/// [`prefetch_limit`]).
const PREFETCH_MAX_BYTES: usize = 32 * 1024;
/// Send buffer asked for on each end of a worker's socketpair (the kernel
/// caps it at `net.core.wmem_max` and doubles it). The default, about
/// 200 KiB, splits a 1 MB `map` chunk into five or more hand-offs between
/// the dispatcher and the worker (each blocked until the other has read),
/// and on a loaded machine every hand-off waits for a time slice; with
/// room for the whole chunk, one `send` and one `recv` move it. It is a
/// limit, not an allocation: memory is used only for bytes in flight.
const SOCKET_BUFFER: usize = 4 << 20;

/// Asks for [`SOCKET_BUFFER`] on `fd`. Best effort: a smaller buffer only
/// means more hand-offs.
fn widen_send_buffer(fd: Option<std::os::fd::BorrowedFd<'_>>) {
    if let Some(fd) = fd {
        let _ =
            nix::sys::socket::setsockopt(&fd, nix::sys::socket::sockopt::SndBuf, &SOCKET_BUFFER);
    }
}

/// Largest job that may be queued behind a running one on a worker whose
/// parent end is `conn`: a quarter of the send buffer the kernel granted,
/// so two such jobs (one not yet read, one queued) and the kernel's
/// per-packet overhead fit in it and the dispatcher's send never blocks;
/// never less than [`PREFETCH_MAX_BYTES`].
fn prefetch_limit(conn: &Connection) -> usize {
    conn.fileno()
        .and_then(|fd| nix::sys::socket::getsockopt(&fd, nix::sys::socket::sockopt::SndBuf).ok())
        .map_or(PREFETCH_MAX_BYTES, |granted| {
            (granted / 4).max(PREFETCH_MAX_BYTES)
        })
}

/// How long terminated workers get after SIGTERM before SIGKILL.
const TERM_GRACE: Duration = Duration::from_millis(200);
/// How long idle workers get to leave after a stop frame.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Receives a job's outcome: the worker's encoded result or an error.
pub(crate) type Sink = Box<dyn FnOnce(Result<Body>) + Send + 'static>;

/// At most this many message buffers are kept for reuse ...
const SPARE_BUFFERS: usize = 32;
/// ... holding at most this many bytes in all.
const SPARE_BYTES: usize = 64 << 20;
/// Buffers smaller than this are not worth keeping.
const SPARE_MIN: usize = 64 << 10;

/// A job waiting for, or sent to, a worker.
pub(crate) struct Job {
    pub(crate) trampoline: usize,
    /// The whole frame: [`JOB_HEADER`](super::wire::JOB_HEADER) bytes of
    /// room for the header (made by [`worker::job_frame`]), then the payload.
    pub(crate) frame: Vec<u8>,
    pub(crate) sink: Sink,
}

struct Queued {
    id: u64,
    /// The call it belongs to (one `map`'s chunks share it, over all
    /// their `submit_in` calls): only a job of the batch a worker is
    /// already running may wait behind it (see [`Dispatcher::assign`]).
    batch: u64,
    job: Job,
}

/// What a worker's death does to the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OnDeath {
    /// Fail its running job, fork a replacement (Pool).
    Replace,
    /// Mark the engine broken and fail everything pending (executor).
    Break,
}

/// How to start the engine.
#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) processes: usize,
    pub(crate) initializer: Option<Initializer>,
    pub(crate) max_tasks: Option<usize>,
    pub(crate) on_death: OnDeath,
    pub(crate) name: &'static str,
    /// How workers (and replacements) are started.
    pub(crate) method: StartMethod,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Queued>,
    next_id: u64,
    next_batch: u64,
    closed: bool,
    terminating: bool,
    broken: Option<String>,
    /// Pids of the live workers, for `Pool::pids` (tests, diagnostics).
    pids: Vec<i32>,
    /// The dispatcher thread has returned: its workers are reaped and
    /// every job has had its outcome delivered.
    ended: bool,
}

/// The part of the engine shared by the caller's handles and the
/// dispatcher thread.
pub(crate) struct Shared {
    state: Mutex<State>,
    /// Close-on-fork: no worker (they are forked after it was made, the
    /// replacements from the dispatcher thread) holds the pool's wake-up.
    wake: ParentOnly<EventFd>,
    /// Large message buffers (job frames, reply frames) kept for reuse:
    /// a `map` over a million items moves megabytes each way, and fresh
    /// memory for each call would cost a page fault per 4 KiB.
    spare: Mutex<Spare>,
    /// Signalled when `State::ended` is set: only one thread can join the
    /// dispatcher's handle, the others (a second `join`, a `terminate`
    /// from another thread) wait here for the same moment.
    ended: Condvar,
}

/// Marks the engine ended when the dispatcher thread leaves its body,
/// normally or by a panic, after the dispatcher (and its workers) dropped.
struct EndedOnDrop(Arc<Shared>);

impl Drop for EndedOnDrop {
    fn drop(&mut self) {
        self.0.lock().ended = true;
        self.0.ended.notify_all();
    }
}

#[derive(Default)]
struct Spare {
    buffers: Vec<Vec<u8>>,
    bytes: usize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Only whole-value updates happen under this lock; a panic cannot
        // leave it inconsistent, so poisoning is ignored.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wake(&self) {
        // Fails only if the counter would overflow, which means the
        // dispatcher is already due to wake up.
        let _ = self.wake.write(1);
    }

    /// Queues jobs as a batch of their own; returns their ids.
    ///
    /// # Errors
    /// [`Error::BrokenPool`] once broken; [`Error::InvalidArgument`] after
    /// `close` or `terminate`.
    pub(crate) fn submit(&self, jobs: impl IntoIterator<Item = Job>) -> Result<Vec<u64>> {
        let batch = self.new_batch();
        self.submit_in(jobs, batch)
    }

    /// A batch id for [`submit_in`](Self::submit_in): the chunks of one
    /// `map` are queued over several calls, as they are encoded.
    pub(crate) fn new_batch(&self) -> u64 {
        let mut st = self.lock();
        st.next_batch += 1;
        st.next_batch
    }

    /// Queues jobs as part of `batch`; returns their ids.
    ///
    /// # Errors
    /// As [`submit`](Self::submit).
    pub(crate) fn submit_in(
        &self,
        jobs: impl IntoIterator<Item = Job>,
        batch: u64,
    ) -> Result<Vec<u64>> {
        let mut st = self.lock();
        if let Some(why) = &st.broken {
            return Err(Error::BrokenPool(why.clone()));
        }
        if st.closed || st.terminating {
            return Err(Error::InvalidArgument(
                "the pool is not running (close() or terminate() was called)".into(),
            ));
        }
        let mut ids = Vec::new();
        for job in jobs {
            let id = st.next_id;
            st.next_id += 1;
            st.queue.push_back(Queued { id, batch, job });
            ids.push(id);
        }
        drop(st);
        self.wake();
        Ok(ids)
    }

    /// Removes job `id` if no worker has it yet; its sink then gets
    /// [`Error::Cancelled`]. Returns whether it was removed.
    pub(crate) fn cancel(&self, id: u64) -> bool {
        let mut st = self.lock();
        let Some(pos) = st.queue.iter().position(|q| q.id == id) else {
            return false;
        };
        let queued = st.queue.remove(pos);
        drop(st);
        if let Some(q) = queued {
            deliver(q.job.sink, Err(Error::Cancelled));
        }
        true
    }

    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.wake();
    }

    /// Blocks until the dispatcher thread has returned.
    fn wait_ended(&self) {
        let mut st = self.lock();
        while !st.ended {
            st = self.ended.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        let st = self.lock();
        st.closed || st.terminating
    }

    pub(crate) fn broken(&self) -> Option<String> {
        self.lock().broken.clone()
    }

    pub(crate) fn pids(&self) -> Vec<i32> {
        self.lock().pids.clone()
    }

    /// A buffer for one message: a recycled one (with its old contents)
    /// if there is one, else a new empty one.
    pub(crate) fn buffer(&self) -> Vec<u8> {
        let mut spare = self.spare.lock().unwrap_or_else(|p| p.into_inner());
        match spare.buffers.pop() {
            Some(b) => {
                spare.bytes -= b.capacity();
                b
            }
            None => Vec::new(),
        }
    }

    /// Keeps `buf` for [`buffer`](Self::buffer) if it is large enough to
    /// be worth it and the spare set has room; frees it otherwise.
    pub(crate) fn recycle(&self, buf: Vec<u8>) {
        let cap = buf.capacity();
        if cap < SPARE_MIN {
            return;
        }
        let mut spare = self.spare.lock().unwrap_or_else(|p| p.into_inner());
        if spare.buffers.len() < SPARE_BUFFERS && spare.bytes + cap <= SPARE_BYTES {
            spare.bytes += cap;
            spare.buffers.push(buf);
        }
    }
}

/// The caller's side of the engine: the shared state and the dispatcher
/// thread's handle.
pub(crate) struct Engine {
    pub(crate) shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// The dispatcher thread's id, to know a call made from it (a result
    /// callback) once another thread has taken the handle.
    thread_id: ThreadId,
    /// The process that started the engine: only there do the dispatcher
    /// thread and the workers exist.
    owner: u32,
}

impl Engine {
    /// Forks `config.processes` workers from the calling thread and starts
    /// the dispatcher thread.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for zero processes; [`Error::Io`] or
    /// [`Error::DaemonicChildren`] if a worker cannot be forked (the ones
    /// already started are stopped again).
    pub(crate) fn start(config: Config) -> Result<Engine> {
        if config.processes == 0 {
            return Err(Error::InvalidArgument(
                "the number of processes must be at least 1".into(),
            ));
        }
        if config.max_tasks == Some(0) {
            return Err(Error::InvalidArgument(
                "maxtasksperchild must be at least 1".into(),
            ));
        }
        let wake = ParentOnly::new(EventFd::from_flags(
            EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK,
        )?);
        let mut workers = Vec::with_capacity(config.processes);
        for n in 0..config.processes {
            match Worker::spawn(&config, n + 1) {
                Ok(w) => workers.push(w),
                Err(e) => {
                    kill_all(&mut workers);
                    return Err(e);
                }
            }
        }
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                pids: workers.iter().map(|w| w.child.pid()).collect(),
                ..State::default()
            }),
            wake,
            spare: Mutex::default(),
            ended: Condvar::new(),
        });
        let mut dispatcher = Dispatcher {
            shared: shared.clone(),
            config,
            workers,
            spawned: 0,
        };
        dispatcher.spawned = dispatcher.workers.len();
        let ended = EndedOnDrop(shared.clone());
        let thread = std::thread::Builder::new()
            .name("pool-dispatcher".into())
            .spawn(move || {
                let _ended = ended;
                dispatcher.run();
            })?;
        Ok(Engine {
            shared,
            thread_id: thread.thread().id(),
            thread: Mutex::new(Some(thread)),
            owner: std::process::id(),
        })
    }

    /// Stops at once: pending jobs fail with [`Error::BrokenPool`], workers
    /// get SIGTERM (SIGKILL after a short grace) and are reaped.
    pub(crate) fn terminate(&self) {
        if std::process::id() != self.owner {
            // A forked child's copy: its dispatcher and workers belong to
            // the parent, so there is nothing here to stop or join.
            self.detach();
            return;
        }
        self.shared.lock().terminating = true;
        self.shared.wake();
        self.join_thread();
    }

    /// Waits for the dispatcher thread to finish (after `close`, once every
    /// job is done and the workers left; after `terminate`, promptly).
    /// Every caller waits, not only the one that joins the handle: a
    /// second `join`, or a `terminate` while another thread is in `join`,
    /// returns only once the workers are reaped too.
    pub(crate) fn join_thread(&self) {
        if std::process::id() != self.owner {
            // No such thread in a forked child; never join it.
            if let Some(h) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
                std::mem::forget(h);
            }
            return;
        }
        if self.thread_id == std::thread::current().id() {
            // Called from a callback on the dispatcher itself: it will
            // see the flag when the callback returns.
            return;
        }
        let handle = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        match handle {
            Some(h) => {
                let _ = h.join();
            }
            // Another thread joins it (or it was detached): wait for the
            // same end.
            None => self.shared.wait_ended(),
        }
    }

    /// Lets the dispatcher thread finish on its own (executor
    /// `shutdown(wait = false)` followed by drop).
    pub(crate) fn detach(&self) {
        let handle = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if std::process::id() != self.owner {
            // In a forked child the thread does not exist: do not touch it.
            std::mem::forget(handle);
        }
        // In the owner, dropping the handle detaches the thread.
    }
}

/// A pool worker's entry in a child of the fork server: the payload is
/// `maxtasksperchild` (0 = none), the one descriptor its connection.
fn served_worker(payload: &[u8], mut fds: Vec<std::os::fd::OwnedFd>, _out: &mut Vec<u8>) -> i32 {
    let Some(fd) = fds.pop() else { return 1 };
    let max = payload
        .get(..8)
        .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap_or_default()));
    let mut conn = Connection::from_socket(fd);
    conn.set_max_message_size(MAX_FRAME);
    worker::worker_main(conn, None, (max > 0).then_some(max as usize))
}

/// Calls a sink, containing a panicking user callback.
fn deliver(sink: Sink, outcome: Result<Body>) {
    if catch_unwind(AssertUnwindSafe(|| sink(outcome))).is_err() {
        tracing::error!("a pool result callback panicked");
    }
}

struct Worker {
    child: ForkedChild,
    conn: Connection,
    inflight: VecDeque<Queued>,
    sent: usize,
    /// The connection failed or reached end-of-file: wait for the sentinel.
    eof: bool,
    /// A send to it failed: it is exiting. What it wrote before (its
    /// initializer's failure) is still to be read, so `eof` stays unset.
    send_failed: bool,
    /// Largest job queued behind a running one on this worker (see
    /// [`prefetch_limit`]).
    prefetch_max: usize,
    /// Why its initializer panicked, if it did (it then exits).
    init_failed: Option<Error>,
}

impl Worker {
    fn spawn(config: &Config, n: usize) -> Result<Worker> {
        if config.method == StartMethod::ForkServer {
            return Self::spawn_served(config, n);
        }
        let (mut conn, mut child_end) = pipe(true)?;
        conn.set_max_message_size(MAX_FRAME);
        // The dispatcher reads only what `poll` reported, and waits with
        // its own budget (`DISPATCHER_SPIN`).
        conn.set_recv_spin(false);
        child_end.set_max_message_size(MAX_FRAME);
        widen_send_buffer(conn.fileno());
        widen_send_buffer(child_end.fileno());
        // Workers forked later must not hold this worker's parent end.
        conn.close_on_fork();
        let init = config.initializer.clone();
        let max = config.max_tasks;
        let mut options = ForkOptions::new();
        options.name(format!("{}-{n}", config.name)).daemon(true);
        let child = fork_child(&options, move || worker::worker_main(child_end, init, max))?;
        Ok(Worker {
            child,
            prefetch_max: prefetch_limit(&conn),
            conn,
            inflight: VecDeque::new(),
            sent: 0,
            eof: false,
            send_failed: false,
            init_failed: None,
        })
    }

    /// Asks the fork server for the worker: it is forked from the server's
    /// clean single-threaded image, never from this (multi-threaded)
    /// process; its end of the connection travels with the request.
    fn spawn_served(config: &Config, n: usize) -> Result<Worker> {
        let (ours, theirs) = nix::sys::socket::socketpair(
            nix::sys::socket::AddressFamily::Unix,
            nix::sys::socket::SockType::Stream,
            None,
            nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        )?;
        widen_send_buffer(Some(theirs.as_fd()));
        let mut conn = Connection::from_socket(ours);
        conn.set_max_message_size(MAX_FRAME);
        // The dispatcher reads only what `poll` reported, and waits with
        // its own budget (`DISPATCHER_SPIN`).
        conn.set_recv_spin(false);
        widen_send_buffer(conn.fileno());
        conn.close_on_fork();
        let max = config.max_tasks.map_or(0u64, |m| m as u64);
        let mut options = ForkOptions::new();
        options.name(format!("{}-{n}", config.name)).daemon(true);
        let child = forkserver::spawn(&options, served_worker, &max.to_le_bytes(), vec![theirs])?;
        Ok(Worker {
            child,
            prefetch_max: prefetch_limit(&conn),
            conn,
            inflight: VecDeque::new(),
            sent: 0,
            eof: false,
            send_failed: false,
            init_failed: None,
        })
    }

    /// Reads every reply that is available (blocking only to finish a frame
    /// that has started), into recycled buffers; recycles the frames of
    /// the jobs answered. Sets `eof` when the connection ends.
    fn read_replies(&mut self, shared: &Shared) {
        loop {
            let mut frame = shared.buffer();
            if self.conn.recv_bytes_into(&mut frame).is_err() {
                self.eof = true;
                return;
            }
            match worker::decode_reply(frame) {
                Ok(reply) if reply.init_failed => {
                    // No replacement would do better: break the pool, so
                    // every pending and later task gets this reason.
                    if let Err(Error::BrokenPool(why)) = &reply.outcome {
                        let mut st = shared.lock();
                        st.broken.get_or_insert_with(|| why.clone());
                    }
                    self.init_failed = reply.outcome.err();
                    self.eof = true;
                    return;
                }
                Ok(reply) => {
                    let pos = self.inflight.iter().position(|q| q.id == reply.id);
                    match pos.and_then(|p| self.inflight.remove(p)) {
                        Some(q) => {
                            deliver(q.job.sink, reply.outcome);
                            shared.recycle(q.job.frame);
                        }
                        None => tracing::warn!(id = reply.id, "pool: reply for unknown job"),
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "pool: bad reply frame; dropping worker");
                    self.eof = true;
                    let _ = self.child.signal(Signal::SIGKILL);
                    return;
                }
            }
            if !matches!(self.conn.poll(Duration::ZERO), Ok(true)) {
                return;
            }
        }
    }
}

/// How an exit code reads in a `WorkerDied` error.
fn describe_exit(code: i32) -> String {
    if code < 0 {
        let sig = Signal::try_from(-code)
            .map(|s| s.as_str().to_owned())
            .unwrap_or_else(|_| format!("signal {}", -code));
        format!("killed by signal {} ({sig})", -code)
    } else {
        format!("exited with code {code}")
    }
}

/// SIGTERM everyone, SIGKILL whoever is still there after the grace
/// period, reap all.
fn kill_all(workers: &mut [Worker]) {
    for w in workers.iter() {
        let _ = w.child.signal(Signal::SIGTERM);
    }
    let deadline = Instant::now() + TERM_GRACE;
    for w in workers.iter_mut() {
        let left = deadline.saturating_duration_since(Instant::now());
        if !matches!(w.child.wait_timeout(left), Ok(Some(_))) {
            let _ = w.child.signal(Signal::SIGKILL);
            let _ = w.child.wait();
        }
    }
}

struct Dispatcher {
    shared: Arc<Shared>,
    config: Config,
    workers: Vec<Worker>,
    spawned: usize,
}

enum Step {
    Continue,
    Stop,
    Terminate(String),
}

impl Dispatcher {
    fn run(mut self) {
        loop {
            match self.assign() {
                Step::Continue => {}
                Step::Stop => {
                    self.stop_workers();
                    return;
                }
                Step::Terminate(why) => {
                    self.fail_everything(&why);
                    return;
                }
            }
            if let Err(e) = self.wait_and_handle() {
                tracing::error!(error = %e, "pool dispatcher: poll failed");
                self.shared.lock().broken = Some(format!("dispatcher failed: {e}"));
                self.fail_everything(&format!("dispatcher failed: {e}"));
                return;
            }
        }
    }

    /// Hands queued jobs to workers with room; decides whether to stop.
    fn assign(&mut self) -> Step {
        let mut batch: Vec<(usize, Queued)> = Vec::new();
        {
            let mut st = self.shared.lock();
            if st.terminating {
                return Step::Terminate("the pool was terminated".into());
            }
            if let Some(why) = &st.broken {
                return Step::Terminate(why.clone());
            }
            let max = self.config.max_tasks;
            // Fill the emptiest workers first: depth 0 everywhere, then 1.
            for depth in 0..PREFETCH {
                for (i, w) in self.workers.iter().enumerate() {
                    if st.queue.is_empty() {
                        break;
                    }
                    let queued_here = batch.iter().filter(|(j, _)| *j == i).count();
                    // A job queued behind a running one must fit in the
                    // socket buffer: otherwise our blocking send and the
                    // worker's blocking reply would wait for each other.
                    // And it must belong to the same batch (one `map`'s
                    // chunks): once sent it cannot be taken back, so an
                    // unrelated task (an `apply_async`, another `map`)
                    // queued behind a task that runs for minutes, or for
                    // ever, would wait for it even while other workers
                    // sit idle. A sibling chunk behind a stuck chunk only
                    // delays a `map` that waits for that chunk anyway.
                    let last_batch = batch
                        .iter()
                        .rev()
                        .find(|(j, _)| *j == i)
                        .map(|(_, q)| q.batch)
                        .or_else(|| w.inflight.back().map(|q| q.batch));
                    let fits = depth == 0
                        || st.queue.front().is_some_and(|q| {
                            q.job.frame.len() <= w.prefetch_max && Some(q.batch) == last_batch
                        });
                    if fits
                        && w.inflight.len() + queued_here == depth
                        && !w.eof
                        && !w.send_failed
                        && max.is_none_or(|m| w.sent + queued_here < m)
                    {
                        if let Some(q) = st.queue.pop_front() {
                            batch.push((i, q));
                        }
                    }
                }
            }
            let idle = self.workers.iter().all(|w| w.inflight.is_empty());
            if batch.is_empty() && st.closed && st.queue.is_empty() && idle {
                return Step::Stop;
            }
        }
        let mut requeue = Vec::new();
        for (i, mut q) in batch {
            let w = &mut self.workers[i];
            if q.job.frame.len() > MAX_FRAME {
                let len = q.job.frame.len();
                deliver(
                    q.job.sink,
                    Err(Error::MessageTooLarge {
                        len,
                        max: MAX_FRAME,
                    }),
                );
                continue;
            }
            if !worker::fill_job_header(&mut q.job.frame, q.id, q.job.trampoline) {
                // Only a frame not made by `job_frame` could be this short.
                deliver(
                    q.job.sink,
                    Err(Error::Codec(
                        "a pool job frame has no room for its header".into(),
                    )),
                );
                continue;
            }
            match w.conn.send_bytes(&q.job.frame) {
                Ok(()) => {
                    w.sent += 1;
                    w.inflight.push_back(q);
                }
                Err(_) => {
                    // The worker is gone; its sentinel will tell us how.
                    // The job never reached it, so it goes back in line.
                    w.send_failed = true;
                    requeue.push(q);
                }
            }
        }
        if !requeue.is_empty() {
            let mut st = self.shared.lock();
            for q in requeue.into_iter().rev() {
                st.queue.push_front(q);
            }
        }
        Step::Continue
    }

    /// One `poll` over the wake-up fd, connections and sentinels, then
    /// handles whatever is ready.
    fn wait_and_handle(&mut self) -> Result<()> {
        let mut conn_ready = vec![false; self.workers.len()];
        let mut dead = vec![false; self.workers.len()];
        let mut woken = false;
        {
            let mut fds = Vec::with_capacity(1 + 2 * self.workers.len());
            fds.push(PollFd::new(self.shared.wake.as_fd(), PollFlags::POLLIN));
            let mut map = Vec::with_capacity(2 * self.workers.len());
            for (i, w) in self.workers.iter().enumerate() {
                fds.push(PollFd::new(w.child.sentinel(), PollFlags::POLLIN));
                map.push((i, true));
                if !w.eof {
                    if let Some(fd) = w.conn.fileno() {
                        fds.push(PollFd::new(fd, PollFlags::POLLIN));
                        map.push((i, false));
                    }
                }
            }
            // Right after some activity, the next event (a reply, or the
            // caller's next submission) usually follows within
            // microseconds: poll without sleeping for a short while, which
            // saves a thread wake-up per hand-off, then block.
            // Every few rounds the CPU is yielded: with more threads and
            // workers than cores, the one we wait for may need ours.
            let spin_until = Instant::now() + spin::DISPATCHER_SPIN;
            let mut round = 0u32;
            loop {
                let busy = Instant::now() < spin_until;
                let timeout = if busy {
                    PollTimeout::ZERO
                } else {
                    PollTimeout::NONE
                };
                match nix::poll::poll(&mut fds, timeout) {
                    Ok(0) if busy => {
                        spin::pause(round, 1);
                        round = round.wrapping_add(1);
                    }
                    Ok(_) => break,
                    Err(nix::errno::Errno::EINTR) => return Ok(()),
                    Err(e) => return Err(e.into()),
                }
            }
            let ready = |fd: &PollFd| fd.revents().is_some_and(|r| !r.is_empty());
            woken = woken || ready(&fds[0]);
            for (fd, &(i, is_sentinel)) in fds[1..].iter().zip(&map) {
                if ready(fd) {
                    if is_sentinel {
                        dead[i] = true;
                    } else {
                        conn_ready[i] = true;
                    }
                }
            }
        }
        if woken {
            // Reset the counter; EAGAIN just means someone else did.
            let _ = self.shared.wake.read();
        }
        for (i, w) in self.workers.iter_mut().enumerate() {
            if conn_ready[i] {
                w.read_replies(&self.shared);
            }
        }
        // Handle exits from the back so indices stay valid.
        for i in (0..self.workers.len()).rev() {
            if dead[i] {
                self.handle_exit(i);
            }
        }
        Ok(())
    }

    fn handle_exit(&mut self, i: usize) {
        let code = match self.workers[i].child.try_wait() {
            Ok(Some(code)) => code,
            // The sentinel fired, so waitpid cannot block for long.
            Ok(None) => match self.workers[i].child.wait() {
                Ok(code) => code,
                Err(_) => return,
            },
            Err(_) => return,
        };
        let mut w = self.workers.remove(i);
        let pid = w.child.pid();
        // Replies written just before the exit are still in the socket.
        if !w.eof && matches!(w.conn.poll(Duration::ZERO), Ok(true)) {
            w.read_replies(&self.shared);
        }
        if let Some(Error::BrokenPool(why)) = w.init_failed.take() {
            tracing::warn!(pid, "{why}");
            for q in w.inflight.drain(..) {
                deliver(q.job.sink, Err(Error::BrokenPool(why.clone())));
            }
            return;
        }
        let abnormal = code != 0 || !w.inflight.is_empty();
        let died = Error::WorkerDied {
            pid,
            reason: describe_exit(code),
        };
        {
            let mut st = self.shared.lock();
            st.pids.retain(|p| *p != pid);
        }
        if abnormal && self.config.on_death == OnDeath::Break {
            let why = format!(
                "a worker process (pid {pid}) terminated abruptly: {}",
                describe_exit(code)
            );
            self.shared.lock().broken = Some(why.clone());
            // Its running job fails like all others: the pool is unusable.
            for q in w.inflight.drain(..) {
                deliver(q.job.sink, Err(Error::BrokenPool(why.clone())));
            }
            return;
        }
        if abnormal {
            tracing::warn!(pid, code, "pool worker died");
        }
        // The running job fails; those queued behind it never started and
        // go back to the front of the shared queue, in order.
        if let Some(q) = w.inflight.pop_front() {
            deliver(q.job.sink, Err(died));
        }
        if !w.inflight.is_empty() {
            let mut st = self.shared.lock();
            for q in w.inflight.drain(..).rev() {
                st.queue.push_front(q);
            }
        }
        drop(w);
        self.replace_worker();
    }

    fn replace_worker(&mut self) {
        let need = {
            let st = self.shared.lock();
            !st.terminating && st.broken.is_none() && (!st.closed || !st.queue.is_empty())
        };
        if !need || self.workers.len() >= self.config.processes {
            return;
        }
        self.spawned += 1;
        match Worker::spawn(&self.config, self.spawned) {
            Ok(w) => {
                self.shared.lock().pids.push(w.child.pid());
                self.workers.push(w);
            }
            Err(e) => {
                tracing::error!(error = %e, "pool: cannot start a replacement worker");
                if self.workers.is_empty() {
                    self.shared.lock().broken =
                        Some(format!("cannot start a replacement worker: {e}"));
                }
            }
        }
    }

    /// After `close`: every job is done; ask the workers to leave.
    fn stop_workers(&mut self) {
        for w in &mut self.workers {
            let _ = w.conn.send_bytes(&[OP_STOP]);
        }
        let deadline = Instant::now() + STOP_GRACE;
        for w in &mut self.workers {
            let left = deadline.saturating_duration_since(Instant::now());
            if !matches!(w.child.wait_timeout(left), Ok(Some(_))) {
                let _ = w.child.signal(Signal::SIGKILL);
                let _ = w.child.wait();
            }
        }
        self.workers.clear();
        self.shared.lock().pids.clear();
    }

    /// After `terminate` or breakage: kill the workers, fail every job.
    fn fail_everything(&mut self, why: &str) {
        kill_all(&mut self.workers);
        let queued: Vec<Queued> = {
            let mut st = self.shared.lock();
            st.pids.clear();
            st.queue.drain(..).collect()
        };
        for w in &mut self.workers {
            for q in w.inflight.drain(..) {
                deliver(q.job.sink, Err(Error::BrokenPool(why.to_owned())));
            }
        }
        self.workers.clear();
        for q in queued {
            deliver(q.job.sink, Err(Error::BrokenPool(why.to_owned())));
        }
    }
}
