//! `Pool`: Python's `multiprocessing.Pool`, with workers started by `fork`.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::mpsc;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::process::async_result::{slot_sink, AsyncResult, Slot};
use crate::process::codec::{decode_n_into, Decoder};
use crate::process::cpu_count;
use crate::process::dispatch::{Config, Engine, Job, OnDeath, Shared, Sink};
use crate::process::forkserver::{get_start_method, StartMethod};
use crate::process::task::{self, StarArgs};
use crate::process::worker::{self, Body};
use crate::{Error, Result};

/// A pool of worker processes: Python's `multiprocessing.Pool`.
///
/// ```
/// use socketserver::process::Pool;
///
/// fn square(x: u64) -> u64 { x * x }
///
/// let pool = Pool::new(4)?;
/// assert_eq!(pool.map(square, 0..10u64)?, vec![0, 1, 4, 9, 16, 25, 36, 49, 64, 81]);
/// let r = pool.apply_async(square, 7)?;
/// assert_eq!(r.get()?, 49);
/// pool.close();
/// pool.join()?;
/// # Ok::<(), socketserver::Error>(())
/// ```
///
/// # What a task is
/// A task is a function pointer, `fn(A) -> R`: a function item (`square`)
/// or a closure that captures nothing (`|x: u64| x + 1`) coerces to one,
/// with arguments and results that implement serde's `Serialize` and
/// `Deserialize`. Workers are `fork()`s of this process, so such a
/// function exists at the same address in every worker; the pool sends
/// that address and the arguments in the pool's wire format (see the
/// `task` module for why this is sound only with fork). A closure that
/// captures data is rejected by the type checker (`cargo check` included),
/// at the call site:
///
/// ```compile_fail,E0308
/// use socketserver::process::Pool;
///
/// let pool = Pool::new(2)?;
/// let offset = 10u64;
/// // error[E0308]: expected fn pointer, found closure
/// // note: closures can only be coerced to `fn` types if they do not
/// //       capture any variables
/// let v = pool.map(move |x: u64| x + offset, 0..4u64)?;
/// # Ok::<(), socketserver::Error>(())
/// ```
///
/// [`starmap`](Self::starmap) (any arity from 0 to 4) takes its items
/// first and then a function pointer of the matching arity, with the
/// same check. The
/// [`initializer`](PoolBuilder::initializer), which runs once per worker
/// at start, may be any closure: it is forked along with the worker.
///
/// # Failures
/// - A task that panics gives an [`Error::Panicked`] result with the panic
///   message; its worker carries on.
/// - A worker that dies mid-task (SIGKILL, abort, segfault) never hangs the
///   pool: its task fails with [`Error::WorkerDied`] (pid and signal), a
///   replacement worker is forked and the other tasks complete. Python's
///   `Pool` hangs forever here (CPython gh-66587).
///
/// # Threads
/// Results are collected by one dispatcher thread, which also runs the
/// callbacks of [`apply_async_with`](Self::apply_async_with) and forks
/// replacement workers. The first workers are forked from the thread that
/// calls `new`/`build`. Workers are daemons: they die when this process
/// dies (SIGKILL included) and live as long as it does, whichever thread
/// forked them (see [`ForkOptions::daemon`](crate::process::ForkOptions::daemon)).
///
/// Dropping the pool terminates it (Python's `__exit__`): call
/// [`close`](Self::close) and [`join`](Self::join) first to let queued
/// tasks finish.
pub struct Pool {
    engine: Engine,
    processes: usize,
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("processes", &self.processes)
            .field("pids", &self.pids())
            .finish()
    }
}

/// Configures a [`Pool`]: Python's `Pool(processes, initializer,
/// maxtasksperchild)`.
///
/// ```
/// use socketserver::process::Pool;
///
/// fn square(x: u64) -> u64 {
///     x * x
/// }
///
/// let pool = Pool::builder().processes(2).maxtasksperchild(Some(100)).build()?;
/// assert_eq!(pool.processes(), 2);
/// assert_eq!(pool.map(square, 0..4u64)?, [0, 1, 4, 9]);
/// pool.close();
/// pool.join()?;
/// # Ok::<(), socketserver::Error>(())
/// ```
#[derive(Default)]
pub struct PoolBuilder {
    processes: Option<usize>,
    initializer: Option<Arc<dyn Fn() + Send + Sync + 'static>>,
    max_tasks: Option<usize>,
    method: Option<StartMethod>,
}

impl fmt::Debug for PoolBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolBuilder")
            .field("processes", &self.processes)
            .field("initializer", &self.initializer.is_some())
            .field("maxtasksperchild", &self.max_tasks)
            .field("start_method", &self.method)
            .finish()
    }
}

impl PoolBuilder {
    /// Number of worker processes. Default is [`cpu_count()`](crate::process::cpu_count).
    pub fn processes(&mut self, n: usize) -> &mut Self {
        self.processes = Some(n);
        self
    }

    /// A function each worker runs once, right after it starts (also in
    /// replacement workers). If it panics, the pool is broken, as
    /// `ProcessPoolExecutor` is in Python: every pending and later task
    /// fails with [`Error::BrokenPool`](crate::Error::BrokenPool) giving
    /// the panic message (Python's `Pool` forks replacements that fail the
    /// same way, for ever). Default is none.
    pub fn initializer<F: Fn() + Send + Sync + 'static>(&mut self, f: F) -> &mut Self {
        self.initializer = Some(Arc::new(f));
        self
    }

    /// A worker exits after this many tasks and is replaced by a fresh one
    /// (Python's `maxtasksperchild`), which bounds what a leaky task can
    /// accumulate. Default is `None`: workers live as long as the pool.
    pub fn maxtasksperchild(&mut self, n: Option<usize>) -> &mut Self {
        self.max_tasks = n;
        self
    }

    /// How workers and their replacements are started. With
    /// [`StartMethod::ForkServer`] they are forked by the fork server (see
    /// [`start_forkserver`](crate::process::start_forkserver)), never from this
    /// process, so a pool is safe to create and keep in a multi-threaded
    /// program (a tokio runtime). Tasks already are function items with
    /// serialisable arguments, so nothing else changes; an
    /// [`initializer`](Self::initializer) closure cannot be sent there and
    /// is refused. Default is [`get_start_method()`](crate::process::get_start_method)
    /// (`Fork` unless changed).
    #[doc(alias = "context")]
    pub fn start_method(&mut self, method: StartMethod) -> &mut Self {
        self.method = Some(method);
        self
    }

    /// Forks the workers and starts the pool.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for 0 processes,
    /// `maxtasksperchild = Some(0)`, or an initializer with the fork
    /// server; [`Error::DaemonicChildren`] inside a pool worker or other
    /// daemon; [`Error::Io`] if `fork` (or the fork server) fails.
    pub fn build(&self) -> Result<Pool> {
        let processes = self.processes.unwrap_or_else(cpu_count);
        let method = self.method.unwrap_or_else(get_start_method);
        if method == StartMethod::ForkServer && self.initializer.is_some() {
            return Err(Error::InvalidArgument(
                "a pool initializer closure cannot be sent to the fork server".into(),
            ));
        }
        let engine = Engine::start(Config {
            method,
            processes,
            initializer: self.initializer.clone(),
            max_tasks: self.max_tasks,
            on_death: OnDeath::Replace,
            name: "ForkPoolWorker",
        })?;
        Ok(Pool { engine, processes })
    }
}

/// Python's default chunk size: about four chunks per worker.
pub(crate) fn default_chunksize(len: usize, processes: usize) -> usize {
    len.div_ceil(processes.max(1) * 4).max(1)
}

/// Where a chunk's encoded results (or its error) arrive, by chunk index.
pub(crate) type ChunkRx = mpsc::Receiver<(usize, Result<Body>)>;

/// Submit chunks in batches of about this many payload bytes, so workers
/// start on the first chunks while the rest are still being encoded.
const SUBMIT_BATCH_BYTES: usize = 256 * 1024;

/// Submits `items` in chunks of `chunksize` for the one-argument task `f`
/// (only its type is used: the worker calls the same function item at the
/// same address). What `imap`, `imap_unordered` and the executor's `map`
/// share.
pub(crate) fn submit_each<A, R>(
    shared: &Shared,
    f: fn(A) -> R,
    items: impl IntoIterator<Item = A>,
    chunksize: usize,
) -> Result<(ChunkRx, Vec<usize>)>
where
    A: Serialize + DeserializeOwned,
    R: Serialize + DeserializeOwned + Send + 'static,
{
    let trampoline = task::chunk_fn_address::<A, R>();
    submit_chunks(
        shared,
        trampoline,
        Some(task::function_address(f)),
        items.into_iter(),
        chunksize,
    )
}

/// Encodes `items` in chunks of `chunksize` (0 is taken as 1) for the
/// trampoline at `trampoline` and queues them, each chunk after the
/// address of `function` when the trampoline takes one (see
/// `task::push_function`); returns the receiver of the
/// chunks' replies and the number of items in each chunk. Each chunk is
/// an item count followed by the items' encodings in the pool codec (see
/// `task::encode_chunk`), written straight from the iterator into the
/// frame the dispatcher sends. Decoding the results is left to the
/// consumer ([`collect_in_order`], [`IMap`]), so the dispatcher thread
/// only moves bytes.
pub(crate) fn submit_chunks<T: Serialize>(
    shared: &Shared,
    trampoline: usize,
    function: Option<usize>,
    mut items: impl Iterator<Item = T>,
    chunksize: usize,
) -> Result<(ChunkRx, Vec<usize>)> {
    let chunksize = chunksize.max(1);
    // Not `Peekable`: its per-item check of the peeked slot slowed the
    // encoding loop; the end shows as a chunk of no items instead.
    let (tx, rx) = mpsc::channel();
    // One batch id for all the chunks: they may wait behind each other in
    // a worker's socket, never behind another call's task.
    let batch_id = shared.new_batch();
    let mut batch = Vec::new();
    let mut batch_bytes = 0;
    let mut counts = Vec::new();
    let mut last_len = 0;
    loop {
        // Chunks are about the same size: start at the last one's, so the
        // buffer rarely grows (and is copied) while items are added.
        let mut frame = worker::job_frame(shared.buffer(), last_len + last_len / 8);
        if let Some(function) = function {
            task::push_function(function, &mut frame);
        }
        let count = task::encode_chunk(&mut items, chunksize, &mut frame)?;
        if count == 0 {
            shared.recycle(frame);
            break;
        }
        last_len = frame.len();
        batch_bytes += frame.len();
        let index = counts.len();
        counts.push(count);
        let tx = tx.clone();
        let sink: Sink = Box::new(move |reply: Result<Body>| {
            // The receiver may be gone (the caller stopped iterating).
            let _ = tx.send((index, reply));
        });
        batch.push(Job {
            trampoline,
            frame,
            sink,
        });
        if batch_bytes >= SUBMIT_BATCH_BYTES || counts.len() == 1 {
            shared.submit_in(std::mem::take(&mut batch), batch_id)?;
            batch_bytes = 0;
        }
    }
    if !batch.is_empty() {
        shared.submit_in(batch, batch_id)?;
    }
    Ok((rx, counts))
}

/// Decodes one chunk's reply (a count, then `expected` encoded results)
/// and appends the results to `out`, without an intermediate `Vec`.
///
/// # Errors
/// [`Error::Codec`] if the bytes are not exactly `expected` results.
pub(crate) fn decode_chunk_into<R: DeserializeOwned>(
    bytes: &[u8],
    expected: usize,
    out: &mut Vec<R>,
) -> Result<()> {
    let (count, items) = task::split_count(bytes).map_err(Error::Codec)?;
    if count != expected as u64 {
        return Err(Error::Codec(format!(
            "a pool worker returned {count} results for a chunk of {expected} items"
        )));
    }
    let mut de = Decoder::new(items);
    decode_n_into(&mut de, expected, out)?;
    de.finish()
        .map_err(|e| Error::Codec(format!("a pool worker's chunk reply: {e}")))
}

/// The error when every sink was dropped before all chunks arrived.
fn lost() -> Error {
    Error::BrokenPool("the pool stopped before all results arrived".into())
}

impl Pool {
    /// A pool of `processes` workers (at least 1).
    ///
    /// # Errors
    /// As [`PoolBuilder::build`].
    pub fn new(processes: usize) -> Result<Pool> {
        Self::builder().processes(processes).build()
    }

    /// A builder for the initializer, `maxtasksperchild`, or the default
    /// process count.
    pub fn builder() -> PoolBuilder {
        PoolBuilder::default()
    }

    /// How many workers the pool keeps running.
    pub fn processes(&self) -> usize {
        self.processes
    }

    /// The pids of the workers alive right now.
    pub fn pids(&self) -> Vec<i32> {
        self.engine.shared.pids()
    }

    /// Runs `f(arg)` in a worker and waits for the result: Python's `apply`.
    ///
    /// # Errors
    /// As [`AsyncResult::get`], plus those of [`apply_async`](Self::apply_async).
    pub fn apply<A, R>(&self, f: fn(A) -> R, arg: A) -> Result<R>
    where
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.apply_async(f, arg)?.get()
    }

    /// Starts `f(arg)` in a worker: Python's `apply_async`.
    ///
    /// # Errors
    /// [`Error::Codec`] if `arg` cannot be encoded;
    /// [`Error::InvalidArgument`] after `close`/`terminate`.
    pub fn apply_async<A, R>(&self, f: fn(A) -> R, arg: A) -> Result<AsyncResult<R>>
    where
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.submit_one(f, arg, None, None)
    }

    /// Like [`apply_async`](Self::apply_async), with Python's `callback`
    /// and `error_callback`: one of them runs on the pool's dispatcher
    /// thread when the task ends, before [`AsyncResult::get`] returns. Keep
    /// them short; a panic in a callback is caught and logged.
    ///
    /// # Errors
    /// As [`apply_async`](Self::apply_async).
    pub fn apply_async_with<A, R, S, E>(
        &self,
        f: fn(A) -> R,
        arg: A,
        callback: S,
        error_callback: E,
    ) -> Result<AsyncResult<R>>
    where
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned + Send + 'static,
        S: FnOnce(&R) + Send + 'static,
        E: FnOnce(&Error) + Send + 'static,
    {
        self.submit_one(
            f,
            arg,
            Some(Box::new(callback)),
            Some(Box::new(error_callback)),
        )
    }

    fn submit_one<A, R>(
        &self,
        f: fn(A) -> R,
        arg: A,
        on_success: Option<crate::process::async_result::OnSuccess<R>>,
        on_error: Option<crate::process::async_result::OnError>,
    ) -> Result<AsyncResult<R>>
    where
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        let mut frame = worker::job_frame(Vec::new(), 24);
        task::push_function(task::function_address(f), &mut frame);
        task::append(&arg, &mut frame)?;
        let slot = Slot::new();
        let job = Job {
            trampoline: task::one_fn_address::<A, R>(),
            frame,
            sink: slot_sink(slot.clone(), on_success, on_error),
        };
        self.engine.shared.submit([job])?;
        Ok(AsyncResult { slot })
    }

    /// `f` applied to every item, in order: Python's `map`, with its default
    /// chunk size (items split into about four chunks per worker).
    ///
    /// # Errors
    /// The first failed chunk's error ([`Error::Panicked`],
    /// [`Error::WorkerDied`], …); as [`apply_async`](Self::apply_async)
    /// for submission.
    pub fn map<A, R, I>(&self, f: fn(A) -> R, items: I) -> Result<Vec<R>>
    where
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned + Send + 'static,
        I: IntoIterator<Item = A>,
    {
        self.run_map(
            task::chunk_fn_address::<A, R>(),
            Some(task::function_address(f)),
            items,
            None,
        )
    }

    /// [`map`](Self::map) with an explicit chunk size (items per message
    /// to a worker; 0 is taken as 1).
    ///
    /// # Errors
    /// As [`map`](Self::map).
    pub fn map_chunked<A, R, I>(&self, f: fn(A) -> R, items: I, chunksize: usize) -> Result<Vec<R>>
    where
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned + Send + 'static,
        I: IntoIterator<Item = A>,
    {
        self.run_map(
            task::chunk_fn_address::<A, R>(),
            Some(task::function_address(f)),
            items,
            Some(chunksize),
        )
    }

    /// `f(a, b, …)` for every tuple `(a, b, …)` of `items`, in order:
    /// Python's `starmap` (0 to 4 arguments), with `map`'s default chunk
    /// size.
    ///
    /// **The items come first**, then the function (Python writes
    /// `starmap(func, iterable)`): `f` is a function pointer whose type,
    /// `fn(A, B) -> R` for `(A, B)` items, is read off the items, and
    /// rustc checks arguments in order, so only with the items first can a
    /// function item such as `add` coerce to it. As with [`map`](Self::map),
    /// a function item or a closure that captures nothing is accepted and
    /// a closure that captures data is a type error at the call site
    /// (`cargo check` reports it).
    ///
    /// ```
    /// use socketserver::process::Pool;
    ///
    /// fn add(a: i64, b: i64) -> i64 {
    ///     a + b
    /// }
    ///
    /// let pool = Pool::new(2)?;
    /// assert_eq!(pool.starmap(vec![(1, 2), (3, 4)], add)?, [3, 7]);
    /// assert_eq!(pool.starmap((0..3).map(|i| (i, 10 * i, 100)), |a: i64, b: i64, c: i64| a + b + c)?, [100, 111, 122]);
    /// pool.close();
    /// pool.join()?;
    /// # Ok::<(), socketserver::Error>(())
    /// ```
    ///
    /// ```compile_fail,E0308
    /// use socketserver::process::Pool;
    ///
    /// let pool = Pool::new(2)?;
    /// let offset = 10i64;
    /// // error[E0308]: expected fn pointer, found closure
    /// let v = pool.starmap(vec![(1i64, 2i64)], move |a: i64, b: i64| a + b + offset)?;
    /// # Ok::<(), socketserver::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`map`](Self::map).
    pub fn starmap<Args, R, I>(&self, items: I, f: Args::Fn<R>) -> Result<Vec<R>>
    where
        Args: StarArgs + Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned + Send + 'static,
        I: IntoIterator<Item = Args>,
    {
        self.run_map(
            task::chunk_star_address::<Args, R>(),
            Some(task::star_address::<Args, R>(f)),
            items,
            None,
        )
    }

    /// The body of `map`, `map_chunked` and `starmap`. Items are encoded
    /// straight from the iterator when it knows its exact length (the
    /// default chunk size needs it), so a `0..n` range is never collected
    /// into a `Vec` first.
    fn run_map<T, R, I>(
        &self,
        trampoline: usize,
        function: Option<usize>,
        items: I,
        chunksize: Option<usize>,
    ) -> Result<Vec<R>>
    where
        T: Serialize,
        R: DeserializeOwned,
        I: IntoIterator<Item = T>,
    {
        let items = items.into_iter();
        let (rx, counts) = match items.size_hint() {
            (lo, Some(hi)) if lo == hi => {
                let cs = chunksize.unwrap_or_else(|| default_chunksize(lo, self.processes));
                submit_chunks(&self.engine.shared, trampoline, function, items, cs)?
            }
            _ => {
                let items: Vec<T> = items.collect();
                let cs =
                    chunksize.unwrap_or_else(|| default_chunksize(items.len(), self.processes));
                submit_chunks(
                    &self.engine.shared,
                    trampoline,
                    function,
                    items.into_iter(),
                    cs,
                )?
            }
        };
        collect_in_order(&self.engine.shared, rx, &counts)
    }

    /// A lazy, ordered `map`: Python's `imap`. Items are sent in chunks of
    /// `chunksize` (Python's default is 1); results come back in input
    /// order as soon as each is ready. A failed chunk yields one `Err` in
    /// its place.
    ///
    /// # Errors
    /// As [`apply_async`](Self::apply_async) for submission.
    pub fn imap<A, R, I>(&self, f: fn(A) -> R, items: I, chunksize: usize) -> Result<IMap<R>>
    where
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned + Send + 'static,
        I: IntoIterator<Item = A>,
    {
        let (rx, counts) = submit_each(&self.engine.shared, f, items, chunksize)?;
        Ok(IMap::new(self.engine.shared.clone(), rx, counts, true))
    }

    /// Like [`imap`](Self::imap), but yields results in completion order:
    /// Python's `imap_unordered`.
    ///
    /// # Errors
    /// As [`imap`](Self::imap).
    pub fn imap_unordered<A, R, I>(
        &self,
        f: fn(A) -> R,
        items: I,
        chunksize: usize,
    ) -> Result<IMap<R>>
    where
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned + Send + 'static,
        I: IntoIterator<Item = A>,
    {
        let (rx, counts) = submit_each(&self.engine.shared, f, items, chunksize)?;
        Ok(IMap::new(self.engine.shared.clone(), rx, counts, false))
    }

    /// Stops accepting tasks; the queued ones still run: Python's `close`.
    pub fn close(&self) {
        self.engine.shared.close();
    }

    /// Stops the workers now: queued and running tasks fail with
    /// [`Error::BrokenPool`]; workers get SIGTERM, then SIGKILL after a
    /// short grace, and are reaped before this returns. Python's
    /// `terminate`.
    pub fn terminate(&self) {
        self.engine.terminate();
    }

    /// Waits for the workers to exit, after [`close`](Self::close) (every
    /// queued task finishes first) or [`terminate`](Self::terminate).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if neither was called (Python raises
    /// `ValueError`), since the wait would never end.
    pub fn join(&self) -> Result<()> {
        if !self.engine.shared.is_closed() {
            return Err(Error::InvalidArgument(
                "join() needs close() or terminate() first".into(),
            ));
        }
        self.engine.join_thread();
        Ok(())
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.engine.terminate();
    }
}

/// Gathers every chunk in order, decoding each chunk's results straight
/// into the output as soon as it is next in line.
pub(crate) fn collect_in_order<R: DeserializeOwned>(
    shared: &Shared,
    rx: ChunkRx,
    counts: &[usize],
) -> Result<Vec<R>> {
    let mut out = Vec::with_capacity(counts.iter().sum());
    let mut parked = BTreeMap::new();
    for (index, &count) in counts.iter().enumerate() {
        let reply = loop {
            if let Some(c) = parked.remove(&index) {
                break c;
            }
            match rx.recv() {
                Ok((i, c)) => {
                    parked.insert(i, c);
                }
                Err(_) => return Err(lost()),
            }
        };
        let body = reply?;
        decode_chunk_into(body.bytes(), count, &mut out)?;
        shared.recycle(body.into_buffer());
    }
    Ok(out)
}

/// The iterator [`Pool::imap`] and [`Pool::imap_unordered`] return.
pub struct IMap<R> {
    rx: ChunkRx,
    /// Items in each chunk, by chunk index.
    counts: Vec<usize>,
    /// Chunks not yet yielded.
    chunks: usize,
    ordered: bool,
    next_index: usize,
    parked: BTreeMap<usize, Result<Body>>,
    /// Where decoded chunks' buffers go back for reuse.
    shared: Arc<Shared>,
    current: std::vec::IntoIter<R>,
}

impl<R> fmt::Debug for IMap<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IMap")
            .field("chunks_left", &self.chunks)
            .field("ordered", &self.ordered)
            .finish()
    }
}

impl<R: DeserializeOwned> IMap<R> {
    /// An ordered iterator over the chunks (of `counts` items each)
    /// arriving on `rx`.
    pub(crate) fn from_parts(shared: Arc<Shared>, rx: ChunkRx, counts: Vec<usize>) -> Self {
        Self::new(shared, rx, counts, true)
    }

    fn new(shared: Arc<Shared>, rx: ChunkRx, counts: Vec<usize>, ordered: bool) -> Self {
        IMap {
            shared,
            rx,
            chunks: counts.len(),
            counts,
            ordered,
            next_index: 0,
            parked: BTreeMap::new(),
            current: Vec::new().into_iter(),
        }
    }

    fn next_chunk(&mut self) -> Option<Result<Vec<R>>> {
        if self.chunks == 0 {
            return None;
        }
        let (index, chunk) = if self.ordered {
            loop {
                if let Some(c) = self.parked.remove(&self.next_index) {
                    self.next_index += 1;
                    break (self.next_index - 1, c);
                }
                match self.rx.recv() {
                    Ok((i, c)) => {
                        self.parked.insert(i, c);
                    }
                    Err(_) => return self.lost(),
                }
            }
        } else {
            match self.rx.recv() {
                Ok(ic) => ic,
                Err(_) => return self.lost(),
            }
        };
        self.chunks -= 1;
        let expected = self.counts.get(index).copied().unwrap_or(0);
        Some(chunk.and_then(|body| {
            let mut out = Vec::new();
            decode_chunk_into(body.bytes(), expected, &mut out)?;
            self.shared.recycle(body.into_buffer());
            Ok(out)
        }))
    }

    /// Every sink was dropped before all chunks arrived.
    fn lost(&mut self) -> Option<Result<Vec<R>>> {
        self.chunks = 0;
        Some(Err(lost()))
    }
}

impl<R: DeserializeOwned> Iterator for IMap<R> {
    type Item = Result<R>;

    fn next(&mut self) -> Option<Result<R>> {
        loop {
            if let Some(r) = self.current.next() {
                return Some(Ok(r));
            }
            match self.next_chunk()? {
                Ok(chunk) => self.current = chunk.into_iter(),
                Err(e) => return Some(Err(e)),
            }
        }
    }
}
