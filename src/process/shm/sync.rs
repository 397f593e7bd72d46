//! `Lock` and `RLock` across processes, and how a dead owner is reported.
//!
//! Both live in anonymous shared memory (create them before `fork`) and
//! are built on a robust, process-shared pthread mutex (see `raw.rs` for
//! why). If a process is killed while holding one, Python's
//! `multiprocessing.Lock` stays locked forever; here the kernel hands the
//! lock to the next acquirer, which gets [`LockError::OwnerDied`] *carrying
//! the guard* — like std's `PoisonError` — so it knows the protected state
//! may be half-updated, can repair it, and carries on.
//!
//! Guards are `!Send`: a pthread mutex must be unlocked by the thread that
//! locked it (so, unlike Python's `Lock`, one thread cannot acquire and
//! another release).

use std::fmt;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use crate::process::raw::{deadline, Acquired, RawMutex};
use crate::process::shared::Shm;
use crate::{Error, Result};

/// Why an acquire did not simply succeed.
pub enum LockError<G> {
    /// A process (or thread) died while holding the lock. The lock was
    /// recovered and **is now held by you**: the guard is inside. The data it
    /// protects may be inconsistent; repair it or just carry on.
    OwnerDied(G),
    /// The timeout passed without getting the lock.
    Timeout(Duration),
    /// The OS refused: for example `EDEADLK`, because this thread already
    /// holds this (non-recursive) lock and waiting would never end.
    Other(Error),
}

/// The result of acquiring a cross-process lock: std's `LockResult` shape.
pub type LockResult<G> = std::result::Result<G, LockError<G>>;

impl<G> LockError<G> {
    /// `true` for [`LockError::OwnerDied`].
    pub fn is_owner_died(&self) -> bool {
        matches!(self, LockError::OwnerDied(_))
    }

    /// Accepts a recovered lock: the guard for [`LockError::OwnerDied`],
    /// the error otherwise. Use as `lock.acquire().or_else(LockError::recover)?`
    /// when a dead owner leaves nothing to repair.
    ///
    /// # Errors
    /// [`Error::Timeout`] or the OS error for the other variants.
    pub fn recover(self) -> Result<G> {
        match self {
            LockError::OwnerDied(g) => Ok(g),
            other => Err(other.into()),
        }
    }
}

impl<G> From<LockError<G>> for Error {
    /// Drops the guard (releasing a recovered lock) and keeps the reason.
    fn from(e: LockError<G>) -> Self {
        match e {
            LockError::OwnerDied(_) => Error::OwnerDied,
            LockError::Timeout(d) => Error::Timeout(d),
            LockError::Other(e) => e,
        }
    }
}

impl<G> fmt::Debug for LockError<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LockError::OwnerDied(_) => f.write_str("OwnerDied(..)"),
            LockError::Timeout(d) => f.debug_tuple("Timeout").field(d).finish(),
            LockError::Other(e) => f.debug_tuple("Other").field(e).finish(),
        }
    }
}

impl<G> fmt::Display for LockError<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LockError::OwnerDied(_) => {
                f.write_str("the previous owner died while holding the lock (now recovered)")
            }
            LockError::Timeout(d) => write!(f, "lock not acquired within {d:?}"),
            LockError::Other(e) => write!(f, "{e}"),
        }
    }
}

impl<G> std::error::Error for LockError<G> {}

/// Locks `m` (until the timeout, if any) and wraps the outcome.
pub(crate) fn acquire_raw<G>(
    m: &RawMutex,
    timeout: Option<Duration>,
    guard: impl FnOnce() -> G,
) -> LockResult<G> {
    match m.lock_until(deadline(timeout)) {
        Ok(Some(Acquired::Clean)) => Ok(guard()),
        Ok(Some(Acquired::OwnerDied)) => Err(LockError::OwnerDied(guard())),
        Ok(None) => Err(LockError::Timeout(timeout.unwrap_or_default())),
        Err(e) => Err(LockError::Other(e)),
    }
}

#[repr(C)]
struct LockShm {
    mutex: RawMutex,
}

/// A mutual-exclusion lock shared between processes: Python's
/// `multiprocessing.Lock`, plus recovery from a holder that dies.
///
/// Clones and forked copies all refer to the same lock.
///
/// ```
/// use std::time::Duration;
/// use socketserver::process::{Lock, LockError, Process};
///
/// let lock = Lock::new()?;
/// // A child takes the lock and is killed while holding it.
/// let mut holder = Process::new({
///     let lock = lock.clone();
///     move || {
///         let _guard = lock.acquire().unwrap();
///         std::thread::sleep(Duration::from_secs(60));
///     }
/// });
/// holder.start()?;
/// while lock.try_acquire().is_ok() {
///     std::thread::sleep(Duration::from_millis(1)); // until the child holds it
/// }
/// holder.kill()?;
/// assert_eq!(holder.join()?, -9);
/// match lock.acquire() {
///     Ok(_guard) => unreachable!("the holder died holding it"),
///     Err(LockError::OwnerDied(_guard)) => { /* repair the shared state, go on */ }
///     Err(e) => return Err(e.into()),
/// }
/// # Ok::<(), socketserver::Error>(())
/// ```
#[derive(Clone)]
pub struct Lock {
    shm: Shm<LockShm>,
}

impl Lock {
    /// A new, unlocked lock in shared memory.
    ///
    /// # Errors
    /// [`Error::Io`] if the region cannot be mapped or the mutex set up.
    pub fn new() -> Result<Lock> {
        let shm = Shm::<LockShm>::new(0, 1, |h| {
            // SAFETY: fresh, aligned, unshared memory.
            unsafe { RawMutex::init(&raw mut (*h).mutex) }
        })?;
        Ok(Lock { shm })
    }

    fn guard(&self) -> LockGuard<'_> {
        LockGuard {
            lock: self,
            _not_send: PhantomData,
        }
    }

    /// Waits for the lock (Python's `acquire()`).
    ///
    /// # Errors
    /// [`LockError::OwnerDied`] with the guard if the last holder died
    /// holding it; [`LockError::Other`] with `EDEADLK` if this thread holds
    /// it already.
    pub fn acquire(&self) -> LockResult<LockGuard<'_>> {
        acquire_raw(&self.shm.header().mutex, None, || self.guard())
    }

    /// Waits at most `timeout` (Python's `acquire(timeout=...)`).
    ///
    /// # Errors
    /// [`LockError::Timeout`] if the lock stayed busy; otherwise as
    /// [`Lock::acquire`].
    pub fn acquire_timeout(&self, timeout: Duration) -> LockResult<LockGuard<'_>> {
        acquire_raw(&self.shm.header().mutex, Some(timeout), || self.guard())
    }

    /// Takes the lock only if it is free now (`acquire(block=False)`).
    ///
    /// # Errors
    /// [`LockError::Timeout`] (of zero) if it is held; otherwise as
    /// [`Lock::acquire`].
    pub fn try_acquire(&self) -> LockResult<LockGuard<'_>> {
        self.acquire_timeout(Duration::ZERO)
    }
}

impl fmt::Debug for Lock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lock").finish_non_exhaustive()
    }
}

/// Holds a [`Lock`]; releases it on drop.
pub struct LockGuard<'a> {
    lock: &'a Lock,
    _not_send: PhantomData<*const ()>,
}

impl Drop for LockGuard<'_> {
    fn drop(&mut self) {
        // SAFETY: a guard exists only while this thread holds the mutex.
        unsafe { self.lock.shm.header().mutex.unlock() }
    }
}

impl fmt::Debug for LockGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockGuard").finish_non_exhaustive()
    }
}

#[repr(C)]
struct RLockShm {
    mutex: RawMutex,
    /// `pid << 32 | tid` of the holder, 0 when free.
    owner: AtomicU64,
    /// Recursion depth; only the holder touches it.
    count: AtomicU32,
}

/// This thread's identity across processes: `pid << 32 | tid`.
pub(crate) fn thread_ident() -> u64 {
    // SAFETY: getpid/gettid cannot fail and have no preconditions.
    let (pid, tid) = unsafe { (libc::getpid(), libc::gettid()) };
    ((pid as u32 as u64) << 32) | tid as u32 as u64
}

/// A reentrant lock shared between processes: Python's
/// `multiprocessing.RLock`. The thread holding it may acquire it again;
/// it is released when every guard is dropped. Recursion is counted per
/// (process, thread).
///
/// ```
/// use socketserver::process::RLock;
///
/// let lock = RLock::new()?;
/// let outer = lock.acquire()?;
/// let inner = lock.acquire()?; // the same thread may take it again
/// assert_eq!(lock.depth(), 2);
/// drop(inner);
/// drop(outer);
/// assert_eq!(lock.depth(), 0);
/// # Ok::<(), socketserver::Error>(())
/// ```
#[derive(Clone)]
pub struct RLock {
    shm: Shm<RLockShm>,
}

impl RLock {
    /// A new, unlocked reentrant lock in shared memory.
    ///
    /// # Errors
    /// [`Error::Io`] if the region cannot be mapped or the mutex set up.
    pub fn new() -> Result<RLock> {
        let shm = Shm::<RLockShm>::new(0, 1, |h| {
            // SAFETY: fresh, aligned, unshared memory.
            unsafe { RawMutex::init(&raw mut (*h).mutex) }
        })?;
        Ok(RLock { shm })
    }

    /// Waits for the lock, or deepens this thread's hold on it.
    ///
    /// # Errors
    /// [`LockError::OwnerDied`] with the guard if the last holder died
    /// holding it (the depth restarts at 1).
    pub fn acquire(&self) -> LockResult<RLockGuard<'_>> {
        self.acquire_inner(None)
    }

    /// As [`RLock::acquire`], waiting at most `timeout`.
    ///
    /// # Errors
    /// [`LockError::Timeout`] if another thread or process kept it.
    pub fn acquire_timeout(&self, timeout: Duration) -> LockResult<RLockGuard<'_>> {
        self.acquire_inner(Some(timeout))
    }

    fn acquire_inner(&self, timeout: Option<Duration>) -> LockResult<RLockGuard<'_>> {
        let h = self.shm.header();
        let me = thread_ident();
        let guard = || RLockGuard {
            lock: self,
            _not_send: PhantomData,
        };
        if h.owner.load(Ordering::Acquire) == me {
            // Only the holder writes `owner == me`, so this is our hold.
            h.count.fetch_add(1, Ordering::Relaxed);
            return Ok(guard());
        }
        let take = || {
            h.owner.store(me, Ordering::Release);
            h.count.store(1, Ordering::Relaxed);
            guard()
        };
        match acquire_raw(&h.mutex, timeout, || ()) {
            Ok(()) => Ok(take()),
            Err(LockError::OwnerDied(())) => Err(LockError::OwnerDied(take())),
            Err(LockError::Timeout(d)) => Err(LockError::Timeout(d)),
            Err(LockError::Other(e)) => Err(LockError::Other(e)),
        }
    }

    /// How deep the current holder's recursion is (0 when free).
    pub fn depth(&self) -> u32 {
        self.shm.header().count.load(Ordering::Relaxed)
    }
}

impl fmt::Debug for RLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RLock")
            .field("depth", &self.depth())
            .finish()
    }
}

/// One level of an [`RLock`] hold; the lock is released when the
/// outermost guard drops.
pub struct RLockGuard<'a> {
    lock: &'a RLock,
    _not_send: PhantomData<*const ()>,
}

impl Drop for RLockGuard<'_> {
    fn drop(&mut self) {
        let h = self.lock.shm.header();
        if h.count.fetch_sub(1, Ordering::Relaxed) == 1 {
            h.owner.store(0, Ordering::Release);
            // SAFETY: this thread holds the mutex (it was the outermost
            // acquire) and this is the last guard.
            unsafe { h.mutex.unlock() }
        }
    }
}

impl fmt::Debug for RLockGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RLockGuard")
            .field("depth", &self.lock.depth())
            .finish()
    }
}
