//! The two building blocks every cross-process primitive is made of: a
//! robust, process-shared pthread mutex and a futex-based condition variable.
//!
//! Why these two and not something else:
//!
//! - **Mutex: a robust pthread mutex** (`PTHREAD_PROCESS_SHARED` +
//!   `PTHREAD_MUTEX_ROBUST`). Robustness needs the kernel to know, for every
//!   thread, which futexes it holds when it dies. glibc registers that list
//!   (`set_robust_list`) for every thread and re-registers it in the child
//!   after `fork`, so a robust pthread mutex is the only way to get
//!   owner-death detection without fighting glibc for the per-thread list.
//!   The next locker gets `EOWNERDEAD`; we mark the mutex consistent at once
//!   and report the death to the caller.
//! - **Condition variable: a futex sequence counter**, not a
//!   `pthread_cond_t`. glibc's condvar keeps per-group waiter counts in the
//!   shared object; a waiter SIGKILLed inside `pthread_cond_wait` leaves
//!   them behind, so a later `pthread_cond_signal` can be spent on the dead
//!   waiter (a lost wake-up) and `pthread_cond_destroy` can hang. A futex
//!   word has no such state: the kernel drops a dead waiter from the futex
//!   queue, and a notify that races a waiter changes the word, so the
//!   waiter's `FUTEX_WAIT` returns at once (no lost wake-up). Timeouts are
//!   relative and measured on `CLOCK_MONOTONIC`.

use std::cell::UnsafeCell;
use std::io;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::{Error, Result};

extern "C" {
    // glibc >= 2.30; not (yet) declared by the `libc` crate. Like
    // `pthread_mutex_timedlock` but on a clock we choose (CLOCK_MONOTONIC),
    // so a wall-clock jump cannot stretch or cut a timeout.
    fn pthread_mutex_clocklock(
        mutex: *mut libc::pthread_mutex_t,
        clockid: libc::clockid_t,
        abstime: *const libc::timespec,
    ) -> libc::c_int;
}

/// An absolute point in time to give up at; `None` waits forever.
pub(crate) type Deadline = Option<Instant>;

/// Turns an optional timeout into a deadline. A timeout too large to
/// represent waits forever.
pub(crate) fn deadline(timeout: Option<Duration>) -> Deadline {
    timeout.and_then(|t| Instant::now().checked_add(t))
}

/// How a lock was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Acquired {
    /// The previous owner released it normally.
    Clean,
    /// The previous owner died holding it; the mutex has been marked
    /// consistent again, but what it protected may be half-updated.
    OwnerDied,
}

/// A robust, process-shared pthread mutex that lives in shared memory.
///
/// It is error-checking, so locking it twice from one thread fails with
/// `EDEADLK` instead of hanging. Never moved after [`RawMutex::init`].
#[repr(C)]
pub(crate) struct RawMutex {
    inner: UnsafeCell<libc::pthread_mutex_t>,
}

fn check(rc: libc::c_int, what: &str) -> Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        let e = io::Error::from_raw_os_error(rc);
        Err(Error::Io(io::Error::new(e.kind(), format!("{what}: {e}"))))
    }
}

impl RawMutex {
    /// Initialises the mutex in place.
    ///
    /// # Safety
    /// `this` must point to writable, suitably aligned memory that no other
    /// thread or process uses yet, and must not move afterwards.
    pub(crate) unsafe fn init(this: *mut RawMutex) -> Result<()> {
        let mut attr = MaybeUninit::<libc::pthread_mutexattr_t>::uninit();
        // SAFETY: `attr` is a local we initialise before any other use and
        // destroy before returning; `this` is valid per the caller's
        // contract and `UnsafeCell` is `repr(transparent)`.
        unsafe {
            check(
                libc::pthread_mutexattr_init(attr.as_mut_ptr()),
                "pthread_mutexattr_init",
            )?;
            let a = attr.as_mut_ptr();
            let r = check(
                libc::pthread_mutexattr_setpshared(a, libc::PTHREAD_PROCESS_SHARED),
                "pthread_mutexattr_setpshared",
            )
            .and_then(|()| {
                check(
                    libc::pthread_mutexattr_setrobust(a, libc::PTHREAD_MUTEX_ROBUST),
                    "pthread_mutexattr_setrobust",
                )
            })
            .and_then(|()| {
                check(
                    libc::pthread_mutexattr_settype(a, libc::PTHREAD_MUTEX_ERRORCHECK),
                    "pthread_mutexattr_settype",
                )
            })
            .and_then(|()| {
                check(
                    libc::pthread_mutex_init(UnsafeCell::raw_get(&raw const (*this).inner), a),
                    "pthread_mutex_init",
                )
            });
            libc::pthread_mutexattr_destroy(a);
            r
        }
    }

    fn ptr(&self) -> *mut libc::pthread_mutex_t {
        self.inner.get()
    }

    fn finish(&self, rc: libc::c_int) -> Result<Option<Acquired>> {
        match rc {
            0 => Ok(Some(Acquired::Clean)),
            libc::EOWNERDEAD => {
                // SAFETY: we own the mutex (EOWNERDEAD means it was handed
                // to us); it was initialised by `init`.
                check(
                    unsafe { libc::pthread_mutex_consistent(self.ptr()) },
                    "pthread_mutex_consistent",
                )?;
                Ok(Some(Acquired::OwnerDied))
            }
            libc::ETIMEDOUT | libc::EBUSY => Ok(None),
            rc => check(rc, "pthread_mutex_lock").map(|()| None),
        }
    }

    /// Locks, waiting as long as it takes.
    pub(crate) fn lock(&self) -> Result<Acquired> {
        // SAFETY: the mutex was initialised by `init` and never moves.
        let rc = unsafe { libc::pthread_mutex_lock(self.ptr()) };
        self.finish(rc)?.ok_or_else(|| {
            Error::Io(io::Error::other(
                "pthread_mutex_lock returned without the lock",
            ))
        })
    }

    /// Locks, giving up at `deadline`; `Ok(None)` means it timed out.
    pub(crate) fn lock_until(&self, deadline: Deadline) -> Result<Option<Acquired>> {
        let Some(deadline) = deadline else {
            return self.lock().map(Some);
        };
        // SAFETY: the mutex was initialised by `init` and never moves.
        let rc = unsafe { libc::pthread_mutex_trylock(self.ptr()) };
        if rc != libc::EBUSY {
            return self.finish(rc);
        }
        let abs = monotonic_abs(deadline);
        // SAFETY: as above; `abs` is a valid timespec on the stack.
        let rc = unsafe { pthread_mutex_clocklock(self.ptr(), libc::CLOCK_MONOTONIC, &abs) };
        self.finish(rc)
    }

    /// Unlocks.
    ///
    /// # Safety
    /// The calling thread must hold the lock.
    pub(crate) unsafe fn unlock(&self) {
        // SAFETY: the caller holds the lock; the mutex is initialised.
        // An error-checking mutex only fails when we do not own it, which
        // the caller's contract excludes.
        unsafe {
            libc::pthread_mutex_unlock(self.ptr());
        }
    }
}

/// `deadline` as an absolute `CLOCK_MONOTONIC` timespec.
fn monotonic_abs(deadline: Instant) -> libc::timespec {
    let left = deadline.saturating_duration_since(Instant::now());
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid out-pointer; CLOCK_MONOTONIC always exists.
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now);
    }
    let mut sec = now.tv_sec.saturating_add(left.as_secs() as libc::time_t);
    let mut nsec = now.tv_nsec + left.subsec_nanos() as libc::c_long;
    if nsec >= 1_000_000_000 {
        nsec -= 1_000_000_000;
        sec = sec.saturating_add(1);
    }
    libc::timespec {
        tv_sec: sec,
        tv_nsec: nsec,
    }
}

/// A condition variable over a shared futex word (see the module docs).
///
/// It also counts its sleepers (updated under the mutex) so that a notify
/// with nobody waiting costs no system call. A waiter killed while asleep
/// leaves the count one too high, which only costs a spare `FUTEX_WAKE`.
#[repr(C)]
pub(crate) struct RawCondvar {
    seq: AtomicU32,
    waiters: AtomicU32,
}

/// What a [`RawCondvar::wait`] saw.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Woken {
    /// How the mutex was re-acquired.
    pub(crate) acquired: Acquired,
    /// The deadline passed (the caller should re-check its predicate once
    /// more and then give up).
    pub(crate) timed_out: bool,
}

impl RawCondvar {
    /// Atomically unlocks `mutex`, sleeps until notified (or the deadline,
    /// or a spurious wake-up) and re-locks `mutex`, even on error paths.
    ///
    /// # Safety
    /// The calling thread must hold `mutex`.
    pub(crate) unsafe fn wait(&self, mutex: &RawMutex, deadline: Deadline) -> Result<Woken> {
        let seen = self.seq.load(Ordering::Acquire);
        let timeout = match deadline {
            None => None,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Ok(Woken {
                        acquired: Acquired::Clean,
                        timed_out: true,
                    });
                }
                Some(left)
            }
        };
        self.waiters.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller holds `mutex`.
        unsafe { mutex.unlock() };
        let ts = timeout.map(|t| libc::timespec {
            tv_sec: t.as_secs().min(libc::time_t::MAX as u64) as libc::time_t,
            tv_nsec: t.subsec_nanos() as libc::c_long,
        });
        let ts_ptr = ts
            .as_ref()
            .map_or(std::ptr::null(), |t| t as *const libc::timespec);
        // SAFETY: `seq` is a live, aligned u32 in (shared) memory; FUTEX_WAIT
        // (not FUTEX_PRIVATE) is what makes it work across processes; the
        // timeout pointer is null or points to a timespec on our stack.
        // The result is ignored on purpose: EAGAIN (already notified),
        // EINTR and ETIMEDOUT all just mean "re-check the predicate".
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                self.seq.as_ptr(),
                libc::FUTEX_WAIT,
                seen,
                ts_ptr,
                std::ptr::null::<u32>(),
                0u32,
            );
        }
        let acquired = mutex.lock()?;
        self.waiters.fetch_sub(1, Ordering::Relaxed);
        let timed_out = deadline.is_some_and(|d| Instant::now() >= d);
        Ok(Woken {
            acquired,
            timed_out,
        })
    }

    /// Wakes up to `n` waiters. The caller must hold the mutex the waiters
    /// use (that is what makes the "nobody waits" shortcut race-free).
    pub(crate) fn notify(&self, n: usize) {
        if n == 0 || self.waiters.load(Ordering::Relaxed) == 0 {
            return;
        }
        self.seq.fetch_add(1, Ordering::Release);
        let n = n.min(i32::MAX as usize) as i32;
        // SAFETY: `seq` is a live, aligned u32; FUTEX_WAKE only reads it.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                self.seq.as_ptr(),
                libc::FUTEX_WAKE,
                n,
                std::ptr::null::<libc::timespec>(),
                std::ptr::null::<u32>(),
                0u32,
            );
        }
    }

    /// Wakes every waiter (the caller holds the mutex, as for `notify`).
    ///
    /// The crate's own primitives always broadcast: a waiter woken by a
    /// single-waiter wake-up and SIGKILLed before it re-locks would take the
    /// wake-up to its grave while the others sleep on.
    pub(crate) fn notify_all(&self) {
        self.notify(i32::MAX as usize);
    }
}

/// A held [`RawMutex`], released on drop: the internal primitives' lock.
pub(crate) struct Held<'a> {
    mutex: &'a RawMutex,
    held: bool,
    /// Some process died holding the mutex since this hold began (at the
    /// lock or at a re-lock inside `wait`).
    pub(crate) owner_died: bool,
    _not_send: std::marker::PhantomData<*const ()>,
}

impl RawMutex {
    /// Locks for an internal critical section.
    pub(crate) fn hold(&self) -> Result<Held<'_>> {
        let a = self.lock()?;
        Ok(Held {
            mutex: self,
            held: true,
            owner_died: a == Acquired::OwnerDied,
            _not_send: std::marker::PhantomData,
        })
    }
}

impl Held<'_> {
    /// Waits on `cv` (see [`RawCondvar::wait`]); `Ok(true)` once the
    /// deadline has passed.
    pub(crate) fn wait(&mut self, cv: &RawCondvar, deadline: Deadline) -> Result<bool> {
        // SAFETY: `self` proves this thread holds the mutex.
        match unsafe { cv.wait(self.mutex, deadline) } {
            Ok(w) => {
                self.owner_died |= w.acquired == Acquired::OwnerDied;
                Ok(w.timed_out)
            }
            Err(e) => {
                self.held = false;
                Err(e)
            }
        }
    }
}

use crate::process::spin::SHM_SPIN as SPIN;

impl Held<'_> {
    /// Unlocks, waits actively (yielding, then spinning, see `spin.rs`)
    /// until `ready()` turns true (a lock-free hint
    /// read from atomics), [`SPIN`] has passed or the deadline comes, then
    /// re-locks. The caller re-checks its predicate under the lock and, if
    /// it still does not hold, sleeps with [`Held::wait`].
    pub(crate) fn spin_until(
        &mut self,
        deadline: Deadline,
        ready: impl Fn() -> bool,
    ) -> Result<()> {
        // SAFETY: `self` proves this thread holds the mutex.
        unsafe { self.mutex.unlock() };
        let mut end = Instant::now() + SPIN;
        if let Some(d) = deadline {
            end = end.min(d);
        }
        crate::process::spin::spin_while_not(end, ready);
        match self.mutex.lock() {
            Ok(a) => {
                self.owner_died |= a == Acquired::OwnerDied;
                Ok(())
            }
            Err(e) => {
                self.held = false;
                Err(e)
            }
        }
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        if self.held {
            // SAFETY: `held` means this thread holds the mutex.
            unsafe { self.mutex.unlock() }
        }
    }
}
