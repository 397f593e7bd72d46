//! The threading strategy: Python's `ThreadingMixIn`.
//!
//! A thread per concurrent request, **reused**: a handler thread that
//! finishes its request waits (idle) for the next one instead of exiting,
//! like tiny_http's pool or Apache's worker MPM. A new thread is started
//! only when no idle thread is free, so a busy server starts no thread at
//! all per connection (thread start-up and exit — `clone3`, `mmap`,
//! `mprotect`, `sigaltstack` ×3, `prctl`, `munmap`, `madvise`, the join —
//! was most of the per-connection cost). At most 64 threads
//! wait idle; one idle for 10 s exits, and all idle threads
//! exit at close. A handler therefore cannot count on fresh thread-local
//! state per request (Python's new thread per request gave it that).
//!
//! A handler thread is a detached `pthread_create` thread (see
//! `src/process/thread.rs`), not a [`std::thread`] one: std's start-up and
//! exit (a signal stack mapped and unmapped per thread, whose `munmap`
//! interrupts every CPU to flush its TLB) made the start-up burst of
//! thousands of connections slower than a bare C server's. Such a thread
//! has no signal stack, so a stack overflow in a handler kills the process
//! with `SIGSEGV` instead of std's "has overflowed its stack" abort; its
//! `std::thread::current().name()` is `None` (the kernel name is still
//! `socketserver-handler`); its stack is std's size (`RUST_MIN_STACK`,
//! else 2 MiB). The strategy counts its threads instead of joining them:
//! at close, with `block_on_close` and `daemon_threads` off, it waits until
//! every handler thread has run its last step
//! ([`threads`](Threading::threads) is 0).
//!
//! The Python semantics stay: with `daemon_threads` off every request is
//! tracked until the loop sees it end, and at close (`block_on_close`)
//! the drain waits for the requests in flight; with `daemon_threads` on
//! nothing is tracked. An optional cap (`max_threads`) makes the loop stop
//! accepting while that many handlers run; the last handler out of a full
//! house wakes the loop. A request still running at the drain deadline is
//! left to finish on its own and reported as `detached` (a per-connection
//! `timeout` bounds how long that can be).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::handler::PeerAddr;
use crate::process::thread::spawn_detached;

use super::{LoopWaker, Strategy};
use crate::server::core::ServerCore;
use crate::server::drain::DrainReport;
use crate::server::incoming::Incoming;
use crate::server::options::ServerOptions;
use crate::server::transport::ServerSocket;

/// How many finished handler threads may wait for the next request.
pub(crate) const IDLE_THREADS: usize = 64;

/// How long an idle handler thread waits for a request before it exits.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// One thread per concurrent request, threads reused (Python's
/// `ThreadingMixIn`, with an idle pool).
#[derive(Debug)]
#[doc(alias = "ThreadingMixIn")]
pub struct Threading {
    /// Requests handed out and not yet seen finished by the loop (only
    /// counted when `daemon_threads` is off).
    tracked: usize,
    counters: Arc<Counters>,
    pool: Arc<Pool>,
    max_threads: Option<usize>,
    daemon_threads: bool,
    waker: LoopWaker,
}

#[derive(Debug, Default)]
struct Counters {
    /// Handlers running right now.
    active: AtomicUsize,
    /// Tracked requests finished since the loop last looked.
    finished: AtomicUsize,
}

/// The hand-off between the loop and the idle threads.
#[derive(Debug, Default)]
struct Pool {
    state: Mutex<PoolState>,
    /// Signalled when a job is queued for an idle thread, or at close.
    work: Condvar,
    /// Signalled when the last handler thread has left.
    left: Condvar,
}

#[derive(Debug, Default)]
struct PoolState {
    jobs: VecDeque<Job>,
    idle: usize,
    closing: bool,
    /// Handler threads started and not yet at their last step (running a
    /// request or idle).
    threads: usize,
}

/// One request for a handler thread. A job dropped without being run
/// (its thread could not be started) shuts its request down.
struct Job {
    core: Arc<ServerCore>,
    /// `None` once taken by [`Job::run`].
    request: Option<Incoming>,
    peer: PeerAddr,
    guard: Option<SlotGuard>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job").field("peer", &self.peer).finish()
    }
}

impl Job {
    fn run(mut self) {
        if let Some(request) = self.request.take() {
            self.core.process(request, &self.peer);
        }
        // Frees the slot now (not after the job's other fields).
        drop(self.guard.take());
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        if let Some(request) = self.request.take() {
            self.core.shutdown_request(request);
        }
    }
}

/// Counts a handler thread as alive from before its start to its last
/// step, whether it returns, unwinds, or is never started (the guard is
/// then dropped with the thread's body).
struct Alive(Arc<Pool>);

impl Alive {
    /// Counts one more thread (call before starting it).
    fn new(pool: &Arc<Pool>) -> Alive {
        lock(pool).threads += 1;
        Alive(pool.clone())
    }
}

impl Drop for Alive {
    fn drop(&mut self) {
        let mut st = lock(&self.0);
        st.threads -= 1;
        let last = st.threads == 0;
        drop(st);
        if last {
            self.0.left.notify_all();
        }
    }
}

/// Marks a request finished (and frees its slot, waking the loop if it
/// was waiting for one) however the handler ends.
struct SlotGuard {
    counters: Arc<Counters>,
    tracked: bool,
    max: Option<usize>,
    waker: LoopWaker,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        if self.tracked {
            self.counters.finished.fetch_add(1, Ordering::SeqCst);
        }
        let before = self.counters.active.fetch_sub(1, Ordering::SeqCst);
        if self.max.is_some_and(|m| before >= m) {
            self.waker.wake();
        }
    }
}

fn lock(pool: &Pool) -> MutexGuard<'_, PoolState> {
    // Jobs run outside the lock, so a poisoned lock holds consistent state.
    pool.state.lock().unwrap_or_else(|p| p.into_inner())
}

/// A handler thread: runs its first job, then waits idle for the next.
/// `alive` is dropped as its last step.
fn worker(pool: Arc<Pool>, alive: Alive, mut job: Job) {
    let _alive = alive;
    loop {
        job.run();
        let mut st = lock(&pool);
        if st.closing || st.idle >= IDLE_THREADS {
            return;
        }
        st.idle += 1;
        job = loop {
            if let Some(j) = st.jobs.pop_front() {
                st.idle -= 1;
                break j;
            }
            if st.closing {
                st.idle -= 1;
                return;
            }
            let (g, waited) = pool
                .work
                .wait_timeout(st, IDLE_TIMEOUT)
                .unwrap_or_else(|p| p.into_inner());
            st = g;
            if waited.timed_out() && st.jobs.is_empty() {
                st.idle -= 1;
                return;
            }
        };
    }
}

impl Threading {
    /// Requests tracked for the drain: running, or finished since the loop
    /// last looked (only when `daemon_threads` is off). Stays at the
    /// number of *concurrent* handlers, not the number served; idle
    /// reusable threads are not counted (see [`idle_threads`](Self::idle_threads)).
    pub fn tracked_threads(&self) -> usize {
        self.tracked
    }

    /// Handlers running right now.
    pub fn active_threads(&self) -> usize {
        self.counters.active.load(Ordering::SeqCst)
    }

    /// Finished handler threads waiting for the next request (at most 64;
    /// one idle for 10 s exits).
    pub fn idle_threads(&self) -> usize {
        lock(&self.pool).idle
    }

    /// Handler threads alive: running a request or idle. After a close
    /// with `block_on_close` (and `daemon_threads` off) that returned no
    /// `detached` requests, 0.
    pub fn threads(&self) -> usize {
        lock(&self.pool).threads
    }

    /// Counts the tracked requests that finished since the last look.
    /// Constant time: the handler threads are detached and counted, not
    /// joined one by one (scanning a `JoinHandle` per thread on every
    /// accept was a fifth of the loop's time while 5,000 connections
    /// arrived).
    fn join_finished(&mut self) -> usize {
        let n = self.counters.finished.swap(0, Ordering::SeqCst);
        self.tracked -= n;
        n
    }

    /// Waits until every handler thread has left, or `deadline` passes.
    fn wait_threads_left(&self, deadline: Instant) {
        let mut st = lock(&self.pool);
        while st.threads > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            st = self
                .pool
                .left
                .wait_timeout(st, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Waits until no tracked request is left or `deadline` passes.
    fn join_until(&mut self, deadline: Instant) -> usize {
        let mut joined = 0;
        loop {
            joined += self.join_finished();
            if self.tracked == 0 || Instant::now() >= deadline {
                return joined;
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Tells idle threads to exit (and busy ones to exit after their
    /// request).
    fn close_pool(&self) {
        lock(&self.pool).closing = true;
        self.pool.work.notify_all();
    }
}

impl Drop for Threading {
    fn drop(&mut self) {
        self.close_pool();
    }
}

impl Strategy for Threading {
    const NAME: &'static str = "threading";

    fn new(options: &ServerOptions, waker: LoopWaker) -> Result<Self> {
        Ok(Threading {
            tracked: 0,
            counters: Arc::default(),
            pool: Arc::default(),
            max_threads: options.max_threads(),
            daemon_threads: options.daemon_threads(),
            waker,
        })
    }

    fn at_capacity(&mut self) -> bool {
        self.max_threads
            .is_some_and(|m| self.counters.active.load(Ordering::SeqCst) >= m)
    }

    fn process_request(
        &mut self,
        core: &Arc<ServerCore>,
        _: &mut Option<ServerSocket>,
        request: Incoming,
        peer: PeerAddr,
    ) {
        self.join_finished();
        self.counters.active.fetch_add(1, Ordering::SeqCst);
        let tracked = !self.daemon_threads;
        if tracked {
            self.tracked += 1;
        }
        let job = Job {
            core: core.clone(),
            request: Some(request),
            peer,
            guard: Some(SlotGuard {
                counters: self.counters.clone(),
                tracked,
                max: self.max_threads,
                waker: self.waker.clone(),
            }),
        };
        // An idle thread takes it if one is free.
        let job = {
            let mut st = lock(&self.pool);
            if st.idle > st.jobs.len() {
                st.jobs.push_back(job);
                drop(st);
                self.pool.work.notify_one();
                return;
            }
            job
        };
        let peer = job.peer.clone();
        let pool = self.pool.clone();
        let alive = Alive::new(&self.pool);
        let body = move || worker(pool, alive, job);
        if let Err((e, body)) = spawn_detached(c"socketserver-handler", body) {
            core.handle_error(&peer, &Error::Io(e));
            // Dropping the unstarted body shuts the request down, frees
            // its slot and uncounts the thread.
            drop(body);
        }
    }

    fn service_actions(&mut self) {
        self.join_finished();
    }

    /// The requests still tracked once the finished ones are counted out
    /// are the ones in flight at shutdown (a request that ended after the
    /// loop's last turn is not one of them). Idle threads are told to
    /// exit; with `block_on_close` and nothing left running (and
    /// `daemon_threads` off), the drain waits until every handler thread
    /// has left (within the same timeout).
    fn drain(&mut self, block_on_close: bool, timeout: Duration) -> DrainReport {
        let mut report = DrainReport::default();
        let deadline = Instant::now() + timeout;
        self.join_finished();
        self.close_pool();
        if !block_on_close {
            report.detached = self.active_threads();
            self.tracked = 0;
            return report;
        }
        report.drained = self.join_until(deadline);
        report.detached = self.tracked;
        if report.detached > 0 {
            tracing::warn!(
                threads = report.detached,
                "drain timeout reached; leaving the handler threads still running"
            );
            self.tracked = 0;
            return report;
        }
        // Every request ended: the threads are leaving the pool (daemon
        // threads are not waited for, as Python does not join them).
        if !self.daemon_threads {
            self.wait_threads_left(deadline);
        }
        report
    }
}
