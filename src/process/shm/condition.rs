//! `Condition` and `Barrier` across processes.
//!
//! Both sit in anonymous shared memory (create them before `fork`) and use
//! the same robust mutex + futex condition variable as the other
//! primitives (see `raw.rs`).

use std::fmt;
use std::marker::PhantomData;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::process::panic_message;
use crate::process::raw::{deadline, Acquired, RawCondvar, RawMutex};
use crate::process::shared::Shm;
use crate::process::sync::{acquire_raw, thread_ident, LockError, LockResult};
use crate::{Error, Result};

#[repr(C)]
struct CondShm {
    mutex: RawMutex,
    cond: RawCondvar,
    /// `pid << 32 | tid` of the holder, 0 when free (the lock is
    /// re-entrant, as Python's default `RLock`).
    owner: AtomicU64,
    /// Recursion depth; only the holder touches it.
    count: AtomicU32,
}

/// A condition variable with its own lock, shared between processes:
/// Python's `multiprocessing.Condition`.
///
/// Acquire it to get a [`ConditionGuard`]; wait and notify through the
/// guard, so "notify without holding the lock" (a `RuntimeError` in
/// Python) cannot be written. Its lock is robust and **re-entrant**, like
/// the [`RLock`](crate::process::RLock) Python's `Condition()` uses by default: the
/// holding thread may acquire it again (nested guards), and
/// [`wait`](ConditionGuard::wait) releases every level and restores them
/// when it wakes.
///
/// ```
/// use socketserver::process::Condition;
///
/// let cond = Condition::new()?;
/// let outer = cond.acquire()?;
/// let mut inner = cond.acquire()?; // same thread: no deadlock
/// assert!(!inner.wait(Some(std::time::Duration::from_millis(10)))?);
/// drop(inner);
/// drop(outer); // released here
/// # Ok::<(), socketserver::Error>(())
/// ```
#[derive(Clone)]
pub struct Condition {
    shm: Shm<CondShm>,
}

impl Condition {
    /// A new condition variable in shared memory.
    ///
    /// # Errors
    /// [`Error::Io`] if the shared region cannot be set up.
    pub fn new() -> Result<Condition> {
        let shm = Shm::<CondShm>::new(0, 1, |h| {
            // SAFETY: fresh, aligned, unshared memory.
            unsafe { RawMutex::init(&raw mut (*h).mutex) }
        })?;
        Ok(Condition { shm })
    }

    fn guard(&self) -> ConditionGuard<'_> {
        ConditionGuard {
            cond: self,
            held: true,
            _not_send: PhantomData,
        }
    }

    /// Takes the condition's lock, or deepens this thread's hold on it.
    ///
    /// # Errors
    /// As [`Lock::acquire`](crate::process::Lock::acquire): the guard comes back in
    /// [`LockError::OwnerDied`](crate::process::LockError::OwnerDied) if the last
    /// holder died holding it (the depth restarts at 1).
    pub fn acquire(&self) -> LockResult<ConditionGuard<'_>> {
        self.acquire_inner(None)
    }

    /// Takes the lock, waiting at most `timeout`.
    ///
    /// # Errors
    /// [`LockError::Timeout`](crate::process::LockError::Timeout) if it stayed busy;
    /// otherwise as [`Condition::acquire`].
    pub fn acquire_timeout(&self, timeout: Duration) -> LockResult<ConditionGuard<'_>> {
        self.acquire_inner(Some(timeout))
    }

    /// How deep the current holder's recursion is (0 when free).
    pub fn depth(&self) -> u32 {
        self.shm.header().count.load(Ordering::Relaxed)
    }

    fn acquire_inner(&self, timeout: Option<Duration>) -> LockResult<ConditionGuard<'_>> {
        let h = self.shm.header();
        let me = thread_ident();
        if h.owner.load(Ordering::Acquire) == me {
            // Only the holder writes `owner == me`, so this is our hold.
            h.count.fetch_add(1, Ordering::Relaxed);
            return Ok(self.guard());
        }
        let take = || {
            h.owner.store(me, Ordering::Release);
            h.count.store(1, Ordering::Relaxed);
            self.guard()
        };
        match acquire_raw(&h.mutex, timeout, || ()) {
            Ok(()) => Ok(take()),
            Err(LockError::OwnerDied(())) => Err(LockError::OwnerDied(take())),
            Err(LockError::Timeout(d)) => Err(LockError::Timeout(d)),
            Err(LockError::Other(e)) => Err(LockError::Other(e)),
        }
    }
}

impl fmt::Debug for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Condition").finish_non_exhaustive()
    }
}

/// Holds a [`Condition`]'s lock; wait and notify through it.
pub struct ConditionGuard<'a> {
    cond: &'a Condition,
    held: bool,
    _not_send: PhantomData<*const ()>,
}

impl ConditionGuard<'_> {
    /// Releases the lock (every level of a re-entrant hold), sleeps until
    /// notified (or `timeout`; `None` waits forever), and takes the lock
    /// back at the same depth. `Ok(false)` means the
    /// timeout passed (Python's `wait()` returning `False`). Wake-ups can
    /// be spurious: re-check your predicate, or use
    /// [`ConditionGuard::wait_for`].
    ///
    /// # Errors
    /// [`Error::OwnerDied`] if, while we slept, a process died holding the
    /// lock: we hold it again, but the shared state may be half-updated.
    /// [`Error::Io`] if re-locking fails (the guard then holds nothing).
    pub fn wait(&mut self, timeout: Option<Duration>) -> Result<bool> {
        if !self.held {
            return Err(Error::InvalidArgument("condition lock is not held".into()));
        }
        let h = self.cond.shm.header();
        if timeout.is_some_and(|t| t.is_zero()) {
            return Ok(false);
        }
        // Python's `_release_save` / `_acquire_restore`: give up every
        // level while asleep, take them all back on waking.
        let me = thread_ident();
        let depth = h.count.swap(0, Ordering::Relaxed);
        h.owner.store(0, Ordering::Release);
        // SAFETY: `held` means this thread holds the mutex.
        let woke = unsafe { h.cond.wait(&h.mutex, deadline(timeout)) };
        if woke.is_ok() {
            h.owner.store(me, Ordering::Release);
            h.count.store(depth, Ordering::Relaxed);
        }
        match woke {
            Ok(w) if w.acquired == Acquired::OwnerDied => Err(Error::OwnerDied),
            Ok(w) => Ok(!w.timed_out),
            Err(e) => {
                self.held = false;
                Err(e)
            }
        }
    }

    /// Waits until `pred()` is true or `timeout` passes; returns the last
    /// value of `pred()` (Python's `wait_for`).
    ///
    /// # Errors
    /// As [`ConditionGuard::wait`].
    pub fn wait_for(
        &mut self,
        mut pred: impl FnMut() -> bool,
        timeout: Option<Duration>,
    ) -> Result<bool> {
        let end = deadline(timeout);
        loop {
            if pred() {
                return Ok(true);
            }
            let left = match (timeout, end) {
                (None, _) => None,
                (Some(_), Some(end)) => {
                    let left = end.saturating_duration_since(std::time::Instant::now());
                    if left.is_zero() {
                        return Ok(pred());
                    }
                    Some(left)
                }
                // A timeout too large to represent: wait forever.
                (Some(_), None) => None,
            };
            self.wait(left)?;
        }
    }

    /// Wakes up to `n` waiters (Python's `notify(n)`).
    pub fn notify(&self, n: usize) {
        self.cond.shm.header().cond.notify(n);
    }

    /// Wakes every waiter (Python's `notify_all()`).
    pub fn notify_all(&self) {
        self.cond.shm.header().cond.notify_all();
    }
}

impl Drop for ConditionGuard<'_> {
    fn drop(&mut self) {
        let h = self.cond.shm.header();
        if self.held && h.count.fetch_sub(1, Ordering::Relaxed) == 1 {
            h.owner.store(0, Ordering::Release);
            // SAFETY: `held` means this thread holds the mutex, and this
            // was its last level.
            unsafe { h.mutex.unlock() }
        }
    }
}

impl fmt::Debug for ConditionGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConditionGuard")
            .field("held", &self.held)
            .finish()
    }
}

#[repr(C)]
struct BarrierShm {
    mutex: RawMutex,
    cond: RawCondvar,
    parties: u32,
    /// Arrivals in the current round.
    count: AtomicU32,
    /// Completed rounds: a waiter whose round completed leaves with `Ok`.
    generation: AtomicU32,
    /// Resets: a waiter who sees this change leaves with `BrokenBarrier`.
    epoch: AtomicU32,
    broken: AtomicU32,
}

/// A rendezvous for a fixed number of processes: Python's
/// `multiprocessing.Barrier`.
///
/// Each of `parties` processes calls [`Barrier::wait`]; all return once
/// the last one arrives. A barrier made with
/// [`with_action`](Barrier::with_action) has the last arriver run the
/// action first, before anyone is released. A timeout, an [`abort`](Barrier::abort), or a
/// process dying inside the barrier's critical section *breaks* it: every
/// waiter, present and future, gets [`Error::BrokenBarrier`] until
/// [`reset`](Barrier::reset). A process killed while *waiting* is not
/// detected (its arrival still counts): give waits a timeout if that can
/// happen.
///
/// ```
/// use socketserver::process::{Barrier, Process};
///
/// let barrier = Barrier::new(2)?;
/// let mut p = Process::new({
///     let barrier = barrier.clone();
///     move || {
///         barrier.wait().unwrap();
///     }
/// });
/// p.start()?;
/// // Returns once both this process and the child have arrived; each
/// // gets a distinct arrival index (0 or 1).
/// assert!(barrier.wait()? < 2);
/// assert_eq!(p.join()?, 0);
/// assert!(!barrier.broken());
/// # Ok::<(), socketserver::Error>(())
/// ```
#[derive(Clone)]
pub struct Barrier {
    shm: Shm<BarrierShm>,
    /// Run by the last arriver of each round. Each process has its own
    /// copy: the closure was forked along with the `Barrier`.
    action: Option<Arc<dyn Fn() + Send + Sync + 'static>>,
}

impl Barrier {
    /// A barrier for `parties` processes.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if `parties` is zero; [`Error::Io`] if
    /// the shared region cannot be set up.
    pub fn new(parties: u32) -> Result<Barrier> {
        if parties == 0 {
            return Err(Error::InvalidArgument(
                "a barrier needs at least one party".into(),
            ));
        }
        let shm = Shm::<BarrierShm>::new(0, 1, |h| {
            // SAFETY: fresh, aligned, unshared memory.
            unsafe {
                RawMutex::init(&raw mut (*h).mutex)?;
                (*h).parties = parties;
            }
            Ok(())
        })?;
        Ok(Barrier { shm, action: None })
    }

    /// A barrier for `parties` processes whose last arriver in each round
    /// runs `action` before anyone is released: Python's
    /// `Barrier(parties, action)`. The action runs in whichever process
    /// arrives last, so it must make sense in every process that waits
    /// (create the barrier before forking). If it panics, the barrier
    /// breaks: that caller gets [`Error::Panicked`], the others
    /// [`Error::BrokenBarrier`].
    ///
    /// # Errors
    /// As [`Barrier::new`].
    pub fn with_action(parties: u32, action: impl Fn() + Send + Sync + 'static) -> Result<Barrier> {
        let mut b = Barrier::new(parties)?;
        b.action = Some(Arc::new(action));
        Ok(b)
    }

    /// Waits for all parties; returns this caller's arrival index,
    /// `0..parties` (exactly one caller per round gets each index).
    ///
    /// # Errors
    /// [`Error::BrokenBarrier`] if the barrier is or becomes broken or is
    /// reset while waiting; [`Error::Panicked`] for the caller whose
    /// action panicked; [`Error::Io`] if the lock fails.
    pub fn wait(&self) -> Result<u32> {
        self.wait_inner(None)
    }

    /// As [`Barrier::wait`], for at most `timeout`. On timeout the barrier
    /// breaks (as in Python) so the others do not wait for ever.
    ///
    /// # Errors
    /// [`Error::Timeout`] for the caller that timed out; otherwise as
    /// [`Barrier::wait`].
    pub fn wait_timeout(&self, timeout: Duration) -> Result<u32> {
        self.wait_inner(Some(timeout))
    }

    fn wait_inner(&self, timeout: Option<Duration>) -> Result<u32> {
        let h = self.shm.header();
        let end = deadline(timeout);
        let mut held = h.mutex.hold()?;
        let break_it = || {
            h.broken.store(1, Ordering::Relaxed);
            h.cond.notify_all();
        };
        if held.owner_died {
            break_it();
        }
        if h.broken.load(Ordering::Relaxed) != 0 {
            return Err(Error::BrokenBarrier);
        }
        let idx = h.count.load(Ordering::Relaxed);
        if idx + 1 >= h.parties {
            if let Some(action) = &self.action {
                // Under the barrier's lock and before the release, as in
                // Python. A process that dies here leaves the lock to be
                // recovered as owner-died, which breaks the barrier.
                if let Err(payload) = catch_unwind(AssertUnwindSafe(|| action())) {
                    let msg = panic_message(payload.as_ref());
                    // Dropping a payload may itself panic.
                    std::mem::forget(payload);
                    break_it();
                    return Err(Error::Panicked(msg));
                }
            }
            h.count.store(0, Ordering::Relaxed);
            h.generation.fetch_add(1, Ordering::Relaxed);
            h.cond.notify_all();
            return Ok(idx);
        }
        h.count.store(idx + 1, Ordering::Relaxed);
        let generation = h.generation.load(Ordering::Relaxed);
        let epoch = h.epoch.load(Ordering::Relaxed);
        loop {
            let timed_out = timeout.is_some_and(|t| t.is_zero()) || held.wait(&h.cond, end)?;
            if held.owner_died {
                break_it();
            }
            if h.generation.load(Ordering::Relaxed) != generation {
                return Ok(idx);
            }
            if h.epoch.load(Ordering::Relaxed) != epoch || h.broken.load(Ordering::Relaxed) != 0 {
                return Err(Error::BrokenBarrier);
            }
            if timed_out {
                break_it();
                return Err(Error::Timeout(timeout.unwrap_or_default()));
            }
        }
    }

    /// Breaks the barrier: current and future waiters get
    /// [`Error::BrokenBarrier`] until [`Barrier::reset`].
    ///
    /// # Errors
    /// [`Error::Io`] if the lock fails.
    pub fn abort(&self) -> Result<()> {
        let h = self.shm.header();
        let _held = h.mutex.hold()?;
        h.broken.store(1, Ordering::Relaxed);
        h.cond.notify_all();
        Ok(())
    }

    /// Returns the barrier to its empty, unbroken state; processes waiting
    /// in the interrupted round get [`Error::BrokenBarrier`].
    ///
    /// # Errors
    /// [`Error::Io`] if the lock fails.
    pub fn reset(&self) -> Result<()> {
        let h = self.shm.header();
        let _held = h.mutex.hold()?;
        h.epoch.fetch_add(1, Ordering::Relaxed);
        h.count.store(0, Ordering::Relaxed);
        h.broken.store(0, Ordering::Relaxed);
        h.cond.notify_all();
        Ok(())
    }

    /// Number of processes needed to pass the barrier.
    pub fn parties(&self) -> u32 {
        self.shm.header().parties
    }

    /// Processes waiting in the current round.
    pub fn n_waiting(&self) -> u32 {
        self.shm.header().count.load(Ordering::Relaxed)
    }

    /// Whether the barrier is broken.
    pub fn broken(&self) -> bool {
        self.shm.header().broken.load(Ordering::Relaxed) != 0
    }
}

impl fmt::Debug for Barrier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Barrier")
            .field("parties", &self.parties())
            .field("action", &self.action.is_some())
            .field("n_waiting", &self.n_waiting())
            .field("broken", &self.broken())
            .finish()
    }
}
