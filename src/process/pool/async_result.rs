//! `AsyncResult`: the handle `Pool::apply_async` returns (Python's
//! `multiprocessing.pool.AsyncResult`), and the one-shot slot it shares
//! with [`Future`](crate::process::Future).

use std::fmt;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;

use crate::process::codec;
use crate::process::dispatch::Sink;
use crate::process::worker::Body;
use crate::{Error, Result};

enum State<T> {
    Pending,
    Ready(Result<T>),
    Taken { ok: bool },
}

/// A one-shot result cell: filled once by the pool's dispatcher thread,
/// taken once by the caller.
pub(crate) struct Slot<T> {
    state: Mutex<State<T>>,
    cond: Condvar,
}

impl<T> Slot<T> {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Slot {
            state: Mutex::new(State::Pending),
            cond: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // A panic while holding this lock cannot leave the state torn (we
        // only assign whole values), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores the result unless one is already there; wakes the waiters.
    pub(crate) fn fill(&self, result: Result<T>) {
        let mut st = self.lock();
        if matches!(*st, State::Pending) {
            *st = State::Ready(result);
            self.cond.notify_all();
        }
    }

    pub(crate) fn ready(&self) -> bool {
        !matches!(*self.lock(), State::Pending)
    }

    pub(crate) fn successful(&self) -> Option<bool> {
        match &*self.lock() {
            State::Pending => None,
            State::Ready(r) => Some(r.is_ok()),
            State::Taken { ok } => Some(*ok),
        }
    }

    /// Waits until filled, at most `timeout` (`None` = forever); returns
    /// whether it is filled.
    pub(crate) fn wait(&self, timeout: Option<Duration>) -> bool {
        // A timeout past what the clock can represent (`Duration::MAX`)
        // waits for ever, like `None`, instead of overflowing.
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        let mut st = self.lock();
        while matches!(*st, State::Pending) {
            match deadline {
                None => st = self.cond.wait(st).unwrap_or_else(|p| p.into_inner()),
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return false;
                    }
                    st = self
                        .cond
                        .wait_timeout(st, left)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
            }
        }
        true
    }

    /// Waits (see [`wait`](Self::wait)) and takes the result.
    pub(crate) fn take(&self, timeout: Option<Duration>) -> Result<T> {
        if !self.wait(timeout) {
            return Err(Error::Timeout(timeout.unwrap_or_default()));
        }
        let mut st = self.lock();
        match std::mem::replace(&mut *st, State::Taken { ok: false }) {
            State::Ready(r) => {
                *st = State::Taken { ok: r.is_ok() };
                r
            }
            State::Taken { ok } => {
                *st = State::Taken { ok };
                Err(Error::InvalidArgument(
                    "the result was already taken by an earlier get()".into(),
                ))
            }
            State::Pending => unreachable!("wait() returned true"),
        }
    }
}

/// Success and error callbacks for [`Pool::apply_async_with`](crate::process::Pool::apply_async_with).
pub(crate) type OnSuccess<R> = Box<dyn FnOnce(&R) + Send + 'static>;
pub(crate) type OnError = Box<dyn FnOnce(&Error) + Send + 'static>;

/// Fills a slot from the worker's encoded reply. If it is dropped without
/// having been used (the pool went away), the slot gets an error, so a
/// waiter never hangs.
struct Writer<R> {
    slot: Arc<Slot<R>>,
    on_success: Option<OnSuccess<R>>,
    on_error: Option<OnError>,
    done: bool,
}

impl<R: DeserializeOwned> Writer<R> {
    fn deliver(mut self, reply: Result<Body>) {
        self.done = true;
        let result =
            reply.and_then(|body| codec::from_bytes::<R>(body.bytes()).map_err(Error::from));
        match &result {
            Ok(v) => {
                if let Some(cb) = self.on_success.take() {
                    cb(v);
                }
            }
            Err(e) => {
                if let Some(cb) = self.on_error.take() {
                    cb(e);
                }
            }
        }
        self.slot.fill(result);
    }
}

impl<R> Drop for Writer<R> {
    fn drop(&mut self) {
        if !self.done {
            self.slot
                .fill(Err(Error::BrokenPool("the task was dropped unrun".into())));
        }
    }
}

/// A sink that decodes an `R` into `slot`, running the callbacks first.
pub(crate) fn slot_sink<R: DeserializeOwned + Send + 'static>(
    slot: Arc<Slot<R>>,
    on_success: Option<OnSuccess<R>>,
    on_error: Option<OnError>,
) -> Sink {
    let writer = Writer {
        slot,
        on_success,
        on_error,
        done: false,
    };
    Box::new(move |reply| writer.deliver(reply))
}

/// The pending result of [`Pool::apply_async`](crate::process::Pool::apply_async):
/// Python's `AsyncResult`.
///
/// The result is *taken* by the first successful [`get`](Self::get) (or
/// [`get_timeout`](Self::get_timeout)); later calls return
/// [`Error::InvalidArgument`]. A timeout leaves it in place.
pub struct AsyncResult<R> {
    pub(crate) slot: Arc<Slot<R>>,
}

impl<R> fmt::Debug for AsyncResult<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncResult")
            .field("ready", &self.ready())
            .finish()
    }
}

impl<R> AsyncResult<R> {
    /// Waits for the task and returns its result.
    ///
    /// # Errors
    /// [`Error::Panicked`] if the task panicked (with its message);
    /// [`Error::WorkerDied`] if its worker was killed mid-task;
    /// [`Error::Codec`] if the argument or result did not (de)serialise;
    /// [`Error::BrokenPool`] if the pool was terminated first;
    /// [`Error::InvalidArgument`] if the result was already taken.
    pub fn get(&self) -> Result<R> {
        self.slot.take(None)
    }

    /// Like [`get`](Self::get), waiting at most `timeout`.
    ///
    /// # Errors
    /// [`Error::Timeout`] if the task is still running at the deadline (the
    /// result can still be fetched later); otherwise as [`get`](Self::get).
    pub fn get_timeout(&self, timeout: Duration) -> Result<R> {
        self.slot.take(Some(timeout))
    }

    /// Whether the task has finished (with a result or an error).
    pub fn ready(&self) -> bool {
        self.slot.ready()
    }

    /// `Some(true)` if the task finished without error, `Some(false)` if it
    /// failed, `None` while it runs (Python raises `ValueError` there).
    pub fn successful(&self) -> Option<bool> {
        self.slot.successful()
    }

    /// Blocks until the task has finished.
    pub fn wait(&self) {
        self.slot.wait(None);
    }

    /// Blocks at most `timeout`; returns whether the task has finished.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        self.slot.wait(Some(timeout))
    }
}
