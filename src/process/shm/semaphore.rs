//! `Semaphore`, `BoundedSemaphore` and `Event` across processes.
//!
//! Each is a few words of anonymous shared memory (create it before
//! `fork`) guarded by a robust mutex with a futex condition variable. Their
//! state is one word, updated in one store, so a process killed inside a
//! critical section cannot leave it half-written: the next user recovers
//! the mutex and carries on without reporting anything.
//!
//! A semaphore permit has no owner: a process that dies after `acquire`
//! without `release` takes its permit with it, exactly as in Python. Use
//! [`Lock`](crate::process::Lock) when you need death to be noticed.

use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use crate::process::raw::{deadline, RawCondvar, RawMutex};
use crate::process::shared::Shm;
use crate::{Error, Result};

#[repr(C)]
struct SemShm {
    mutex: RawMutex,
    cond: RawCondvar,
    value: AtomicU64,
    /// Maximum value for a bounded semaphore; `u64::MAX` when unbounded.
    bound: AtomicU64,
}

/// A counting semaphore shared between processes: Python's
/// `multiprocessing.Semaphore`. `acquire` takes a permit (waiting while
/// there is none), `release` returns one.
///
/// ```
/// use std::time::Duration;
/// use socketserver::process::{Process, Semaphore};
///
/// let permits = Semaphore::new(1)?;
/// permits.acquire()?; // the only permit
/// let mut p = Process::new({
///     let permits = permits.clone();
///     move || permits.release().unwrap()
/// });
/// p.start()?;
/// assert_eq!(p.join()?, 0);
/// assert!(permits.acquire_timeout(Duration::from_secs(5))?); // given back by the child
/// # Ok::<(), socketserver::Error>(())
/// ```
#[derive(Clone)]
pub struct Semaphore {
    shm: Shm<SemShm>,
}

impl Semaphore {
    /// A semaphore holding `value` permits.
    ///
    /// # Errors
    /// [`Error::Io`] if the shared region cannot be set up.
    pub fn new(value: u64) -> Result<Semaphore> {
        Self::with_bound(value, u64::MAX)
    }

    fn with_bound(value: u64, bound: u64) -> Result<Semaphore> {
        let shm = Shm::<SemShm>::new(0, 1, |h| {
            // SAFETY: fresh, aligned, unshared memory.
            unsafe {
                RawMutex::init(&raw mut (*h).mutex)?;
                (*h).value = AtomicU64::new(value);
                (*h).bound = AtomicU64::new(bound);
            }
            Ok(())
        })?;
        Ok(Semaphore { shm })
    }

    /// Takes a permit, waiting as long as it takes.
    ///
    /// # Errors
    /// [`Error::Io`] if the underlying lock fails.
    pub fn acquire(&self) -> Result<()> {
        self.acquire_inner(None).map(|_| ())
    }

    /// Takes a permit if one comes within `timeout`; `Ok(false)` if not.
    ///
    /// # Errors
    /// As [`Semaphore::acquire`].
    pub fn acquire_timeout(&self, timeout: Duration) -> Result<bool> {
        self.acquire_inner(Some(timeout))
    }

    /// Takes a permit only if one is free now.
    ///
    /// # Errors
    /// As [`Semaphore::acquire`].
    pub fn try_acquire(&self) -> Result<bool> {
        self.acquire_inner(Some(Duration::ZERO))
    }

    fn acquire_inner(&self, timeout: Option<Duration>) -> Result<bool> {
        let h = self.shm.header();
        let deadline = deadline(timeout);
        let mut held = h.mutex.hold()?;
        loop {
            let v = h.value.load(Ordering::Relaxed);
            if v > 0 {
                h.value.store(v - 1, Ordering::Relaxed);
                return Ok(true);
            }
            if timeout.is_some_and(|t| t.is_zero()) || held.wait(&h.cond, deadline)? {
                // One last look: a release may have come with the deadline.
                let v = h.value.load(Ordering::Relaxed);
                if v > 0 {
                    h.value.store(v - 1, Ordering::Relaxed);
                    return Ok(true);
                }
                return Ok(false);
            }
        }
    }

    /// Returns a permit and wakes a waiter.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a [`BoundedSemaphore`] already at its
    /// initial value (Python's `ValueError: Semaphore released too many
    /// times`); [`Error::Io`] if the lock fails.
    pub fn release(&self) -> Result<()> {
        let h = self.shm.header();
        let _held = h.mutex.hold()?;
        let v = h.value.load(Ordering::Relaxed);
        let bound = h.bound.load(Ordering::Relaxed);
        if v >= bound {
            return Err(Error::InvalidArgument(format!(
                "semaphore released too many times (bound {bound})"
            )));
        }
        h.value.store(v + 1, Ordering::Relaxed);
        h.cond.notify_all();
        Ok(())
    }

    /// Takes a permit and returns a guard that releases it on drop.
    ///
    /// # Errors
    /// As [`Semaphore::acquire`].
    pub fn guard(&self) -> Result<SemaphoreGuard<'_>> {
        self.acquire()?;
        Ok(SemaphoreGuard { sem: self })
    }

    /// As [`Semaphore::guard`], waiting at most `timeout`; `Ok(None)` if
    /// no permit came.
    ///
    /// # Errors
    /// As [`Semaphore::acquire`].
    pub fn guard_timeout(&self, timeout: Duration) -> Result<Option<SemaphoreGuard<'_>>> {
        Ok(self
            .acquire_timeout(timeout)?
            .then_some(SemaphoreGuard { sem: self }))
    }

    /// Permits free right now (Python's `get_value()`); may be stale by the
    /// time you look at it.
    pub fn get_value(&self) -> u64 {
        self.shm.header().value.load(Ordering::Relaxed)
    }
}

impl fmt::Debug for Semaphore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Semaphore")
            .field("value", &self.get_value())
            .finish()
    }
}

/// Holds one permit of a [`Semaphore`]; releases it on drop.
#[derive(Debug)]
pub struct SemaphoreGuard<'a> {
    sem: &'a Semaphore,
}

impl Drop for SemaphoreGuard<'_> {
    fn drop(&mut self) {
        // The guard holds a permit, so even a bounded semaphore has room;
        // a failing lock leaves nothing better to do in a destructor.
        let _ = self.sem.release();
    }
}

/// A semaphore that refuses to be released above its initial value:
/// Python's `multiprocessing.BoundedSemaphore`. Catches release bugs.
///
/// ```
/// use socketserver::process::BoundedSemaphore;
///
/// let slots = BoundedSemaphore::new(1)?;
/// slots.acquire()?;
/// assert_eq!(slots.get_value(), 0);
/// slots.release()?;
/// // A second release would go above the initial value: refused.
/// assert!(slots.release().is_err());
/// assert_eq!(slots.get_value(), 1);
/// # Ok::<(), socketserver::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct BoundedSemaphore {
    sem: Semaphore,
}

impl BoundedSemaphore {
    /// A bounded semaphore holding (and capped at) `value` permits.
    ///
    /// # Errors
    /// [`Error::Io`] if the shared region cannot be set up.
    pub fn new(value: u64) -> Result<BoundedSemaphore> {
        Ok(BoundedSemaphore {
            sem: Semaphore::with_bound(value, value)?,
        })
    }
}

impl std::ops::Deref for BoundedSemaphore {
    type Target = Semaphore;
    /// Every [`Semaphore`] method; [`Semaphore::release`] enforces the cap.
    fn deref(&self) -> &Semaphore {
        &self.sem
    }
}

#[repr(C)]
struct EventShm {
    mutex: RawMutex,
    cond: RawCondvar,
    flag: AtomicU32,
}

/// A flag processes can wait for: Python's `multiprocessing.Event`.
///
/// ```
/// use std::time::Duration;
/// use socketserver::process::{Event, Process};
///
/// let ready = Event::new()?;
/// let mut p = Process::new({
///     let ready = ready.clone();
///     move || ready.set().unwrap()
/// });
/// p.start()?;
/// assert!(ready.wait(Some(Duration::from_secs(10)))?);
/// assert!(ready.is_set());
/// p.join()?;
/// # Ok::<(), socketserver::Error>(())
/// ```
#[derive(Clone)]
pub struct Event {
    shm: Shm<EventShm>,
}

impl Event {
    /// A new, clear event.
    ///
    /// # Errors
    /// [`Error::Io`] if the shared region cannot be set up.
    pub fn new() -> Result<Event> {
        let shm = Shm::<EventShm>::new(0, 1, |h| {
            // SAFETY: fresh, aligned, unshared memory.
            unsafe { RawMutex::init(&raw mut (*h).mutex) }
        })?;
        Ok(Event { shm })
    }

    /// Whether the flag is set.
    pub fn is_set(&self) -> bool {
        self.shm.header().flag.load(Ordering::Acquire) != 0
    }

    /// Sets the flag and wakes every waiter, in every process.
    ///
    /// # Errors
    /// [`Error::Io`] if the lock fails.
    pub fn set(&self) -> Result<()> {
        let h = self.shm.header();
        let _held = h.mutex.hold()?;
        h.flag.store(1, Ordering::Release);
        h.cond.notify_all();
        Ok(())
    }

    /// Clears the flag.
    ///
    /// # Errors
    /// [`Error::Io`] if the lock fails.
    pub fn clear(&self) -> Result<()> {
        let h = self.shm.header();
        let _held = h.mutex.hold()?;
        h.flag.store(0, Ordering::Release);
        Ok(())
    }

    /// Waits until the flag is set, or `timeout` passes (`None`: forever).
    /// Returns whether it is set, like Python's `wait()`.
    ///
    /// # Errors
    /// [`Error::Io`] if the lock fails.
    pub fn wait(&self, timeout: Option<Duration>) -> Result<bool> {
        let h = self.shm.header();
        let deadline = deadline(timeout);
        let mut held = h.mutex.hold()?;
        while h.flag.load(Ordering::Acquire) == 0 {
            if timeout.is_some_and(|t| t.is_zero()) || held.wait(&h.cond, deadline)? {
                return Ok(h.flag.load(Ordering::Acquire) != 0);
            }
        }
        Ok(true)
    }
}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Event")
            .field("set", &self.is_set())
            .finish()
    }
}
