//! The threading strategy: Python's `ThreadingMixIn`.
//!
//! One thread per request. Unlike CPython before 3.7.x, finished threads
//! are joined on every request and every loop iteration, so the bookkeeping
//! holds only running threads, not one handle per past connection. An
//! optional cap (`max_threads`) makes the loop stop accepting while that
//! many handlers run; the last thread out of a full house wakes the loop.
//! At close a thread cannot be ended from outside: one still running at
//! the drain deadline is left to finish on its own and reported as
//! `detached` (a per-connection `timeout` bounds how long that can be).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
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

/// One thread per request (Python's `ThreadingMixIn`).
#[derive(Debug)]
#[doc(alias = "ThreadingMixIn")]
pub struct Threading {
    threads: Vec<Tracked>,
    active: Arc<AtomicUsize>,
    max_threads: Option<usize>,
    daemon_threads: bool,
    waker: LoopWaker,
}

/// A running handler thread.
#[derive(Debug)]
struct Tracked {
    thread: JoinHandle<()>,
}

/// Decrements the running count when a worker ends, however it ends, and
/// wakes the loop if it was waiting for a free slot.
struct SlotGuard {
    active: Arc<AtomicUsize>,
    max: Option<usize>,
    waker: LoopWaker,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        let before = self.active.fetch_sub(1, Ordering::SeqCst);
        if self.max.is_some_and(|m| before >= m) {
            self.waker.wake();
        }
    }
}

impl Threading {
    /// Handles of threads that may still be running (only tracked when
    /// `daemon_threads` is off). Stays at the number of *concurrent*
    /// handlers, not the number served.
    pub fn tracked_threads(&self) -> usize {
        self.threads.len()
    }

    /// Handlers running right now.
    pub fn active_threads(&self) -> usize {
        self.active.load(Ordering::SeqCst)
    }

    fn join_finished(&mut self) -> usize {
        let mut joined = 0;
        let mut i = 0;
        while i < self.threads.len() {
            if self.threads[i].thread.is_finished() {
                // The body catches panics, so join cannot report one.
                let _ = self.threads.swap_remove(i).thread.join();
                joined += 1;
            } else {
                i += 1;
            }
        }
        joined
    }

    /// Joins finished threads until none is left or `deadline` passes.
    fn join_until(&mut self, deadline: Instant) -> usize {
        let mut joined = 0;
        loop {
            joined += self.join_finished();
            if self.threads.is_empty() || Instant::now() >= deadline {
                return joined;
            }
            thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Strategy for Threading {
    const NAME: &'static str = "threading";

    fn new(options: &ServerOptions, waker: LoopWaker) -> Result<Self> {
        Ok(Threading {
            threads: Vec::new(),
            active: Arc::new(AtomicUsize::new(0)),
            max_threads: options.max_threads(),
            daemon_threads: options.daemon_threads(),
            waker,
        })
    }

    fn at_capacity(&mut self) -> bool {
        self.max_threads
            .is_some_and(|m| self.active.load(Ordering::SeqCst) >= m)
    }

    fn process_request(
        &mut self,
        core: &Arc<ServerCore>,
        _: &mut Option<ServerSocket>,
        request: Incoming,
        peer: PeerAddr,
    ) {
        self.join_finished();
        self.active.fetch_add(1, Ordering::SeqCst);
        let guard = SlotGuard {
            active: self.active.clone(),
            max: self.max_threads,
            waker: self.waker.clone(),
        };
        let worker_core = core.clone();
        // The request moves into the thread; if spawning fails we need it
        // back to close it, so park it in a slot both sides can reach.
        let slot = Arc::new(std::sync::Mutex::new(Some((request, peer.clone()))));
        let worker_slot = slot.clone();
        let spawned = thread::Builder::new()
            .name("socketserver-handler".into())
            .spawn(move || {
                let _guard = guard;
                let taken = worker_slot.lock().ok().and_then(|mut s| s.take());
                if let Some((request, peer)) = taken {
                    worker_core.process(request, &peer);
                }
            });
        match spawned {
            Ok(thread) => {
                if !self.daemon_threads {
                    self.threads.push(Tracked { thread });
                }
            }
            Err(e) => {
                core.handle_error(&peer, &Error::Io(e));
                let taken = slot.lock().ok().and_then(|mut s| s.take());
                if let Some((request, _)) = taken {
                    core.shutdown_request(request);
                }
            }
        }
    }

    fn service_actions(&mut self) {
        self.join_finished();
    }

    /// Every tracked thread counts as in flight (the loop joins finished
    /// threads as it goes, so these are the requests of the shutdown).
    fn drain(&mut self, block_on_close: bool, timeout: Duration) -> DrainReport {
        let mut report = DrainReport::default();
        if !block_on_close {
            report.detached = self.active_threads();
            self.threads.clear();
            return report;
        }
        report.drained = self.join_until(Instant::now() + timeout);
        report.detached = self.threads.len();
        if report.detached > 0 {
            tracing::warn!(
                threads = report.detached,
                "drain timeout reached; leaving the handler threads still running"
            );
            self.threads.clear();
        }
        report
    }
}
