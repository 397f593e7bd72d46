//! `ProcessPoolExecutor`: Python's `concurrent.futures.ProcessPoolExecutor`
//! on the pool's engine, with its stricter failure rule: a worker that
//! dies breaks the executor.

use crate::process::forkserver::get_start_method;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::process::async_result::{slot_sink, Slot};
use crate::process::cpu_count;
use crate::process::dispatch::{Config, Engine, Job, OnDeath, Shared};
use crate::process::pool::pool::{submit_each, IMap};
use crate::process::task;
use crate::process::worker;
#[allow(unused_imports)]
use crate::Error;
use crate::Result;

/// Runs functions in worker processes and returns [`Future`]s: Python's
/// `concurrent.futures.ProcessPoolExecutor` (fork start method).
///
/// Tasks are the same as for [`Pool`](crate::process::Pool): a function item or
/// non-capturing closure with serde arguments and result.
///
/// Unlike `Pool`, when a worker dies abruptly (killed, crashed, its
/// initializer panicked) the executor is *broken*, as in Python: every
/// pending and running future fails with [`Error::BrokenPool`] at once —
/// never hangs — and later `submit`s fail with the same error.
///
/// Dropping the executor is `shutdown(true)` (Python's `with` block),
/// unless [`shutdown(false)`](Self::shutdown) was called, in which case
/// queued work finishes in the background.
///
/// ```
/// use socketserver::process::ProcessPoolExecutor;
///
/// fn cube(x: i64) -> i64 { x * x * x }
///
/// let mut ex = ProcessPoolExecutor::new(Some(2))?;
/// let f = ex.submit(cube, 3)?;
/// assert_eq!(f.result()?, 27);
/// ex.shutdown(true);
/// # Ok::<(), socketserver::Error>(())
/// ```
#[doc(alias = "BrokenProcessPool")]
pub struct ProcessPoolExecutor {
    engine: Engine,
    max_workers: usize,
    detached: bool,
}

impl fmt::Debug for ProcessPoolExecutor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProcessPoolExecutor")
            .field("max_workers", &self.max_workers)
            .field("broken", &self.engine.shared.broken())
            .finish()
    }
}

/// The pending result of [`ProcessPoolExecutor::submit`]: Python's
/// `concurrent.futures.Future`.
///
/// The result is taken by the first successful [`result`](Self::result).
pub struct Future<R> {
    slot: Arc<Slot<R>>,
    id: u64,
    shared: Arc<Shared>,
}

impl<R> fmt::Debug for Future<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Future")
            .field("id", &self.id)
            .field("done", &self.done())
            .finish()
    }
}

impl<R> Future<R> {
    /// Waits for the result.
    ///
    /// # Errors
    /// [`Error::BrokenPool`] if a worker died (the executor is broken);
    /// [`Error::Cancelled`] after a successful [`cancel`](Self::cancel);
    /// [`Error::Panicked`] if the function panicked; [`Error::Codec`] on
    /// encoding failures; [`Error::InvalidArgument`] if already taken.
    pub fn result(&self) -> Result<R> {
        self.slot.take(None)
    }

    /// Like [`result`](Self::result), waiting at most `timeout`.
    ///
    /// # Errors
    /// [`Error::Timeout`] if not done by then (the result stays); otherwise
    /// as [`result`](Self::result).
    pub fn result_timeout(&self, timeout: Duration) -> Result<R> {
        self.slot.take(Some(timeout))
    }

    /// Whether the call finished, failed or was cancelled.
    pub fn done(&self) -> bool {
        self.slot.ready()
    }

    /// Cancels the call if no worker has picked it up yet; returns whether
    /// it was cancelled (then [`result`](Self::result) gives
    /// [`Error::Cancelled`]).
    pub fn cancel(&self) -> bool {
        self.shared.cancel(self.id)
    }
}

impl ProcessPoolExecutor {
    /// An executor with `max_workers` processes (`None` = `cpu_count()`).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for `Some(0)`; [`Error::Io`] or
    /// [`Error::DaemonicChildren`] if the workers cannot be forked.
    pub fn new(max_workers: Option<usize>) -> Result<Self> {
        Self::with_options(max_workers, None)
    }

    /// Like [`new`](Self::new), with Python's `max_tasks_per_child`: a
    /// worker that ran this many calls exits and is replaced (that is not
    /// a breakage).
    ///
    /// # Errors
    /// As [`new`](Self::new); `Some(0)` tasks is invalid too.
    pub fn with_options(
        max_workers: Option<usize>,
        max_tasks_per_child: Option<usize>,
    ) -> Result<Self> {
        let max_workers = max_workers.unwrap_or_else(cpu_count);
        let engine = Engine::start(Config {
            method: get_start_method(),
            processes: max_workers,
            initializer: None,
            max_tasks: max_tasks_per_child,
            on_death: OnDeath::Break,
            name: "ProcessPoolExecutorWorker",
        })?;
        Ok(ProcessPoolExecutor {
            engine,
            max_workers,
            detached: false,
        })
    }

    /// Schedules `f(arg)`.
    ///
    /// # Errors
    /// [`Error::BrokenPool`] once broken; [`Error::InvalidArgument`] after
    /// `shutdown`; [`Error::Codec`] if `arg` cannot be encoded.
    pub fn submit<A, R>(&self, f: fn(A) -> R, arg: A) -> Result<Future<R>>
    where
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        let slot = Slot::new();
        let job = Job {
            trampoline: task::one_fn_address::<A, R>(),
            frame: {
                let mut frame = worker::job_frame(Vec::new(), 24);
                task::push_function(task::function_address(f), &mut frame);
                task::append(&arg, &mut frame)?;
                frame
            },
            sink: slot_sink(slot.clone(), None, None),
        };
        let ids = self.engine.shared.submit([job])?;
        Ok(Future {
            slot,
            id: ids.first().copied().unwrap_or_default(),
            shared: self.engine.shared.clone(),
        })
    }

    /// `f` over every item, results in input order: Python's
    /// `Executor.map(fn, iterable, chunksize=…)`. Each item of the
    /// iterator is `Ok(result)` or the error of its chunk.
    ///
    /// # Errors
    /// As [`submit`](Self::submit).
    pub fn map<A, R, I>(&self, f: fn(A) -> R, items: I, chunksize: usize) -> Result<IMap<R>>
    where
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned + Send + 'static,
        I: IntoIterator<Item = A>,
    {
        let (rx, counts) = submit_each(&self.engine.shared, f, items, chunksize)?;
        Ok(IMap::from_parts(self.engine.shared.clone(), rx, counts))
    }

    /// Stops accepting work: Python's `shutdown(wait)`. With `wait`, blocks
    /// until every submitted call finished and the workers exited; without,
    /// returns at once and the work finishes in the background.
    pub fn shutdown(&mut self, wait: bool) {
        self.engine.shared.close();
        if wait {
            self.engine.join_thread();
        } else {
            self.detached = true;
        }
    }

    /// Whether a worker death broke the executor, and why.
    pub fn broken(&self) -> Option<String> {
        self.engine.shared.broken()
    }

    /// The pids of the live workers.
    pub fn pids(&self) -> Vec<i32> {
        self.engine.shared.pids()
    }
}

impl Drop for ProcessPoolExecutor {
    fn drop(&mut self) {
        if self.detached {
            self.engine.detach();
        } else {
            self.engine.shared.close();
            self.engine.join_thread();
        }
    }
}
