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
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::handler::PeerAddr;

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
    /// Worker threads (only kept when `daemon_threads` is off).
    workers: Vec<JoinHandle<()>>,
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
    work: Condvar,
}

#[derive(Debug, Default)]
struct PoolState {
    jobs: VecDeque<Job>,
    idle: usize,
    closing: bool,
}

/// One request for a handler thread.
struct Job {
    core: Arc<ServerCore>,
    request: Incoming,
    peer: PeerAddr,
    guard: SlotGuard,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job").field("peer", &self.peer).finish()
    }
}

impl Job {
    fn run(self) {
        let Job {
            core,
            request,
            peer,
            guard,
        } = self;
        core.process(request, &peer);
        drop(guard);
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
fn worker(pool: Arc<Pool>, mut job: Job) {
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

    fn join_finished(&mut self) -> usize {
        let n = self.counters.finished.swap(0, Ordering::SeqCst);
        self.tracked -= n;
        if self.workers.iter().any(|w| w.is_finished()) {
            // Threads that left the idle pool; the body catches panics.
            let mut i = 0;
            while i < self.workers.len() {
                if self.workers[i].is_finished() {
                    let _ = self.workers.swap_remove(i).join();
                } else {
                    i += 1;
                }
            }
        }
        n
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
            workers: Vec::new(),
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
            request,
            peer,
            guard: SlotGuard {
                counters: self.counters.clone(),
                tracked,
                max: self.max_threads,
                waker: self.waker.clone(),
            },
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
        // The job moves into the thread; if spawning fails we need it back
        // to close it, so park it in a slot both sides can reach.
        let peer = job.peer.clone();
        let slot = Arc::new(Mutex::new(Some(job)));
        let worker_slot = slot.clone();
        let pool = self.pool.clone();
        let spawned = thread::Builder::new()
            .name("socketserver-handler".into())
            .spawn(move || {
                let taken = worker_slot.lock().ok().and_then(|mut s| s.take());
                drop(worker_slot);
                if let Some(job) = taken {
                    worker(pool, job);
                }
            });
        match spawned {
            Ok(thread) => {
                if !self.daemon_threads {
                    self.workers.push(thread);
                }
            }
            Err(e) => {
                core.handle_error(&peer, &Error::Io(e));
                let taken = slot.lock().ok().and_then(|mut s| s.take());
                if let Some(job) = taken {
                    let Job { request, guard, .. } = job;
                    core.shutdown_request(request);
                    drop(guard);
                }
            }
        }
    }

    fn service_actions(&mut self) {
        self.join_finished();
    }

    /// Every tracked request counts as in flight (the loop counts finished
    /// ones as it goes, so these are the requests of the shutdown). Idle
    /// threads are told to exit; with `block_on_close` and nothing left
    /// running, they are joined.
    fn drain(&mut self, block_on_close: bool, timeout: Duration) -> DrainReport {
        let mut report = DrainReport::default();
        let deadline = Instant::now() + timeout;
        self.close_pool();
        if !block_on_close {
            report.detached = self.active_threads();
            self.tracked = 0;
            self.workers.clear();
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
            self.workers.clear();
            return report;
        }
        // Every request ended: the threads are leaving the pool.
        while !self.workers.is_empty() && Instant::now() < deadline {
            self.join_finished();
            if !self.workers.is_empty() {
                thread::sleep(Duration::from_millis(1));
            }
        }
        self.workers.clear();
        report
    }
}
