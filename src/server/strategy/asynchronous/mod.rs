//! The async strategy: one tokio task per request, over every transport.
//!
//! Threads and processes cost megabytes each; a parked tokio task costs a
//! few hundred bytes plus its buffers, so the async strategy is the one
//! for many mostly idle connections (chat, push, long polling) — with a
//! native [`AsyncRequestHandler`] (`async fn handle`). A blocking
//! [`RequestHandler`](crate::RequestHandler) runs here unchanged too (the
//! same `bind(addr, || Handler)` as every other strategy): each request
//! gets a thread of a blocking pool shared by the whole server while it
//! runs, at most
//! [`max_blocking`](crate::server::ServerBuilder::max_blocking) at once.
//! At that bound `accept` is deferred, as at every other strategy's cap:
//! connections wait in the kernel backlog instead of being accepted and
//! then starved in a queue behind tokio's hidden 512-thread limit.
//!
//! ## Thread per core
//!
//! The server runs [`async_threads`](crate::server::ServerBuilder::async_threads)
//! worker threads (default: one per core), each with its own
//! single-threaded tokio runtime. Every worker accepts from the shared
//! listening socket itself (its own registration of a duplicate of it)
//! and runs the tasks of the connections it accepted: a connection's
//! readiness, `accept` and every poll of its task happen on one thread,
//! with no work stealing and no wake-up of another thread per connection
//! (tokio's multi-threaded runtime woke its other worker — a `futex` and
//! an eventfd `write` — for each new task, ≈ 15% of the CPU of an echo).
//! Connections are spread over the workers by who accepts first: a busy
//! worker comes back to `accept` later, so the idle ones take more. A
//! handler that computes still has every core, but a connection does not
//! move to another core once accepted.
//!
//! The accept loop of each worker is the crate's accept loop on tokio:
//! readiness of the server socket comes from the worker's reactor (the
//! socket registered for the length of `serve_forever`, `reactor.rs`),
//! the `accept` itself is the crate's (`accept4`, non-blocking at once for
//! a native handler, whose stream is then registered with tokio once),
//! errors are classified by the same
//! [`AcceptBackoff`](crate::server::AcceptBackoff) as everywhere else. All
//! workers are woken by a new connection (tokio registers without
//! `EPOLLEXCLUSIVE`); the ones that lose the race get one `EAGAIN`. A
//! connection limit ([`max_connections`](crate::server::ServerBuilder::max_connections))
//! is a semaphore shared by the workers whose permit is taken *before*
//! `accept` and moved into the request's task (as in tokio's mini-redis).
//!
//! The calling thread of `serve_forever` waits for the workers; a stop
//! (shutdown request, a fatal socket error, a panicking hook in any
//! worker) stops all of them. Their connections keep running after
//! `serve_forever` returns, until the drain (`server_close`), which each
//! worker does for its own connections against one shared deadline.
//!
//! The handler side — the native trait, the adapters, a connection's life
//! — is `handler.rs`.
//!
//! ## Why `fn handle(..) -> impl Future + Send` and not a boxed future
//!
//! The trait declares the return type as `impl Future<Output = ..> + Send`
//! (return-position `impl Trait` in traits), and an implementation simply
//! writes `async fn handle`. The `Send` bound is checked where the user
//! writes the handler, so a handler that holds a non-`Send` value across
//! an `.await` fails to compile with an error pointing at that line. The
//! server stores the handler behind one small object-safe adapter whose
//! one method spawns a connection's task from code that knows the
//! handler's type: the handler's future lives inside the task, with no
//! second allocation per connection.

mod handler;
mod reactor;

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use super::{LoopWaker, Strategy};
use crate::error::{Error, Result};
use crate::handler::{PeerAddr, Stream};
use crate::server::base::SocketServer;
use crate::server::builder::ServerBuilder;
use crate::server::core::ServerCore;
use crate::server::drain::DrainReport;
use crate::server::incoming::Incoming;
use crate::server::middleware::per_ip::PerIpLimiter;
use crate::server::middleware::proxy::HeaderFailures;
use crate::server::ops::backoff::{AcceptAction, AcceptBackoff};
use crate::server::options::ServerOptions;
use crate::server::strategy::Serving;
use crate::server::transport::{BindAddress, ServerSocket, TcpTransport};
use crate::server::wakeup::Wakeup;

pub use handler::{AsyncRequestHandler, Blocking};
use handler::{Conn, DynHandler, Native, ShutdownOnDrop};
use reactor::Reactor;

/// One tokio task per request (the async strategy). See the module docs.
pub struct Async {
    /// The calling thread's runtime: `handle_request` runs its request
    /// here, and its blocking pool is the one every worker shares for
    /// blocking handlers.
    home: Option<tokio::runtime::Runtime>,
    /// The tasks of `handle_request` (joined before it returns).
    tasks: JoinSet<()>,
    workers: Vec<Worker>,
    connections: Arc<Semaphore>,
    blocking: Arc<Semaphore>,
    spawner: Spawner,
}

impl std::fmt::Debug for Async {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Async")
            .field("tasks", &self.active_tasks())
            .field("workers", &self.workers.len())
            .field("native", &self.spawner.native.is_some())
            .finish_non_exhaustive()
    }
}

/// One worker thread with its single-threaded runtime, driven by
/// commands; dropping the sender ends it.
struct Worker {
    commands: Option<tokio::sync::mpsc::UnboundedSender<Command>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// How many request tasks the worker holds (not reaped yet).
    tasks: Arc<AtomicUsize>,
}

/// What a worker's `serve_forever` share ends with: its loop's result, or
/// the panic of a hook it ran.
type Served = std::thread::Result<Result<()>>;

enum Command {
    /// Accept and serve until the stop, then answer.
    Serve(Box<Acceptor>, mpsc::Sender<Served>),
    /// Drain (or detach) the worker's connections by `started + timeout`.
    Drain {
        block_on_close: bool,
        started: Instant,
        timeout: Duration,
        reply: mpsc::Sender<DrainReport>,
    },
}

/// What starting a request's task needs (cloned into every worker).
#[derive(Clone)]
struct Spawner {
    /// The shared blocking pool (the home runtime's).
    pool: tokio::runtime::Handle,
    native: Option<Arc<dyn DynHandler>>,
}

impl Async {
    /// Requests whose tasks have not been reaped yet.
    pub fn active_tasks(&self) -> usize {
        self.tasks.len()
            + self
                .workers
                .iter()
                .map(|w| w.tasks.load(Ordering::Relaxed))
                .sum::<usize>()
    }
}

fn reap(tasks: &mut JoinSet<()>) {
    while let Some(done) = tasks.try_join_next() {
        report_join(done);
    }
}

impl Spawner {
    /// Serves `handler` natively, with the server's admission settings.
    fn serve_native<H: AsyncRequestHandler>(&mut self, handler: H, options: &ServerOptions) {
        self.native = Some(Arc::new(Native {
            handler,
            per_ip: options.per_ip_limit.map(PerIpLimiter::new),
            proxy: options.proxy_protocol,
            proxy_trust: options.proxy_trust.clone(),
            proxy_failures: HeaderFailures::new(),
        }));
    }

    /// Starts the task for one request on the current runtime. `permits`
    /// hold a connection slot (and a blocking slot for a blocking
    /// handler); `nonblocking`: the stream was accepted non-blocking.
    fn spawn(
        &self,
        tasks: &mut JoinSet<()>,
        core: &Arc<ServerCore>,
        request: Incoming,
        peer: PeerAddr,
        permits: (OwnedSemaphorePermit, Option<OwnedSemaphorePermit>),
        nonblocking: bool,
    ) {
        match (&self.native, request) {
            (Some(native), Incoming::Stream(Stream::Tcp(stream))) => {
                let Some(peer) = peer.as_inet() else {
                    return;
                };
                native.clone().spawn(
                    tasks,
                    Conn {
                        core: core.clone(),
                        stream,
                        peer,
                        nonblocking,
                        permits,
                    },
                );
            }
            (_, request) => {
                let core = core.clone();
                let guard = match &request {
                    Incoming::Stream(s) => s.try_clone().ok(),
                    Incoming::Datagram(_) => None,
                };
                let pool = self.pool.clone();
                // The core opens the connection's span on the handler's thread.
                let task = async move {
                    let _permits = permits;
                    let mut guard = ShutdownOnDrop(guard);
                    let peer2 = peer.clone();
                    let joined = pool
                        .spawn_blocking(move || core.process(request, &peer2))
                        .await;
                    guard.0 = None;
                    if let Err(e) = joined {
                        tracing::error!(peer = %peer, error = %e, "blocking handler task failed");
                    }
                };
                tasks.spawn(task);
            }
        }
    }
}

/// A request task itself never panics (handlers run in their own task
/// or under the core's `catch_unwind`); log it if one does.
fn report_join(done: std::result::Result<(), tokio::task::JoinError>) {
    if let Err(e) = done {
        if e.is_panic() {
            tracing::error!("request task panicked: {e}");
        }
    }
}

/// How many worker threads: the setting, else `TOKIO_WORKER_THREADS`
/// (as tokio's own runtime read it), else one per core.
fn worker_count(options: &ServerOptions) -> usize {
    options
        .async_threads
        .or_else(|| {
            std::env::var("TOKIO_WORKER_THREADS")
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .filter(|&n| n > 0)
        })
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1)
}

impl Worker {
    fn start(index: usize, max_blocking: usize) -> Result<Worker> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .max_blocking_threads(max_blocking)
            .build()?;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let tasks = Arc::new(AtomicUsize::new(0));
        let count = tasks.clone();
        let thread = std::thread::Builder::new()
            .name(format!("socketserver-async-{index}"))
            .spawn(move || run_worker(runtime, rx, count))?;
        Ok(Worker {
            commands: Some(tx),
            thread: Some(thread),
            tasks,
        })
    }

    fn send(&self, command: Command) -> bool {
        self.commands
            .as_ref()
            .is_some_and(|c| c.send(command).is_ok())
    }
}

/// A worker thread: its runtime runs the request tasks while it waits for
/// commands (a single-threaded runtime polls its tasks inside `block_on`).
fn run_worker(
    runtime: tokio::runtime::Runtime,
    mut commands: tokio::sync::mpsc::UnboundedReceiver<Command>,
    count: Arc<AtomicUsize>,
) {
    runtime.block_on(async {
        let mut tasks = JoinSet::new();
        while let Some(command) = commands.recv().await {
            match command {
                Command::Serve(acceptor, reply) => {
                    // A task, not `block_on`'s own future: waking a task
                    // from the reactor on its own thread is a push onto
                    // the local queue, waking `block_on`'s future is an
                    // eventfd `write` (tokio unparks the driver).
                    let run = tokio::spawn(acceptor.run(std::mem::take(&mut tasks), count.clone()));
                    let served = match run.await {
                        Ok((result, t)) => {
                            tasks = t;
                            Ok(result)
                        }
                        // The request tasks went with the panicking loop.
                        Err(e) if e.is_panic() => Err(e.into_panic()),
                        Err(_) => Ok(Err(Error::Closed)),
                    };
                    count.store(tasks.len(), Ordering::Relaxed);
                    let _ = reply.send(served);
                }
                Command::Drain {
                    block_on_close,
                    started,
                    timeout,
                    reply,
                } => {
                    let report = drain_tasks(&mut tasks, block_on_close, started, timeout).await;
                    count.store(tasks.len(), Ordering::Relaxed);
                    let _ = reply.send(report);
                }
            }
        }
    });
    // Blocking handlers whose sockets were shut down get a moment to
    // notice; the runtime does not wait forever for them.
    runtime.shutdown_timeout(Duration::from_secs(1));
}

async fn drain_tasks(
    tasks: &mut JoinSet<()>,
    block_on_close: bool,
    started: Instant,
    timeout: Duration,
) -> DrainReport {
    // Tasks that finished before the shutdown were not in flight.
    reap(tasks);
    let mut report = DrainReport::default();
    if !block_on_close {
        report.detached = tasks.len();
        tasks.detach_all();
        return report;
    }
    let left = timeout.saturating_sub(started.elapsed());
    let finished = tokio::time::timeout(left, async {
        while let Some(done) = tasks.join_next().await {
            report.drained += 1;
            report_join(done);
        }
    })
    .await;
    if finished.is_err() {
        report.aborted = tasks.len();
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }
    report
}

impl Strategy for Async {
    const NAME: &'static str = "async";

    fn new(options: &ServerOptions, _: LoopWaker) -> Result<Self> {
        let home = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name("socketserver-async")
            .max_blocking_threads(options.max_blocking)
            .build()?;
        let workers = (0..worker_count(options))
            .map(|i| Worker::start(i, options.max_blocking))
            .collect::<Result<Vec<_>>>()?;
        Ok(Async {
            spawner: Spawner {
                pool: home.handle().clone(),
                native: None,
            },
            home: Some(home),
            tasks: JoinSet::new(),
            workers,
            connections: Arc::new(Semaphore::new(
                options.max_connections.min(Semaphore::MAX_PERMITS),
            )),
            blocking: Arc::new(Semaphore::new(
                options.max_blocking.min(Semaphore::MAX_PERMITS),
            )),
        })
    }

    /// Runs one request to the end on the calling thread: only
    /// `handle_request` gets here; `serve_forever` spawns tasks.
    fn process_request(
        &mut self,
        core: &Arc<ServerCore>,
        _: &mut Option<ServerSocket>,
        request: Incoming,
        peer: PeerAddr,
    ) {
        if self.spawner.native.is_some() {
            let (Ok(c), Ok(b)) = (
                self.connections.clone().try_acquire_owned(),
                self.blocking.clone().try_acquire_owned(),
            ) else {
                core.shutdown_request(request);
                return;
            };
            let Some(rt) = self.home.as_ref() else {
                core.shutdown_request(request);
                return;
            };
            let tasks = &mut self.tasks;
            let spawner = &self.spawner;
            rt.block_on(async {
                spawner.spawn(tasks, core, request, peer, (c, Some(b)), false);
                while let Some(done) = tasks.join_next().await {
                    report_join(done);
                }
            });
        } else {
            core.process(request, &peer);
        }
    }

    /// Hands the accept loop to every worker and waits until they all
    /// stopped: the first to stop (shutdown, fatal error, panic) stops the
    /// others.
    fn serve_forever(&mut self, serving: &mut Serving<'_>) -> Result<()> {
        let socket = serving.socket.as_ref().ok_or(Error::Closed)?;
        let (stop_tx, stop_rx) = watch::channel(false);
        let (reply_tx, reply_rx) = mpsc::channel();
        // Every worker's descriptors (duplicates of the socket and of the
        // wake-up) are made before the first worker starts accepting: once
        // one accepts, connections can use up the descriptor limit, and a
        // duplicate made then would fail with EMFILE and stop the server
        // instead of the accept loop backing off.
        let acceptors: Result<Vec<Acceptor>> = self
            .workers
            .iter()
            .map(|_| Acceptor::new(serving, socket, self, stop_rx.clone()))
            .collect();
        let mut started = 0;
        let mut result = acceptors.map(|acceptors| {
            for (worker, acceptor) in self.workers.iter().zip(acceptors) {
                if worker.send(Command::Serve(Box::new(acceptor), reply_tx.clone())) {
                    started += 1;
                }
            }
        });
        drop(reply_tx);
        if result.is_err() || started == 0 {
            let _ = stop_tx.send(true);
            if started == 0 && result.is_ok() {
                result = Err(Error::Closed);
            }
        }
        let mut panic = None;
        for _ in 0..started {
            let Ok(served) = reply_rx.recv() else {
                break;
            };
            let _ = stop_tx.send(true);
            match served {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    if result.is_ok() {
                        result = Err(e);
                    }
                }
                Err(payload) => {
                    panic.get_or_insert(payload);
                }
            }
        }
        // A panicking hook (`verify_request`, `service_actions`) reaches
        // the caller of `serve_forever`, as in every strategy.
        if let Some(payload) = panic {
            std::panic::resume_unwind(payload);
        }
        result
    }

    fn drain(&mut self, block_on_close: bool, timeout: Duration) -> DrainReport {
        let started = Instant::now();
        let (reply_tx, reply_rx) = mpsc::channel();
        for worker in &self.workers {
            worker.send(Command::Drain {
                block_on_close,
                started,
                timeout,
                reply: reply_tx.clone(),
            });
        }
        drop(reply_tx);
        let mut report = DrainReport::default();
        for r in reply_rx {
            report.drained += r.drained;
            report.aborted += r.aborted;
            report.detached += r.detached;
        }
        if report.aborted > 0 {
            tracing::warn!(
                aborted = report.aborted,
                "drain timeout reached, aborting connections"
            );
        }
        report
    }
}

/// One worker's accept loop state, owned (it moves to the worker).
struct Acceptor {
    /// The server socket's copy for the worker's reactor.
    socket: ServerSocket,
    /// The wake-up descriptor's receiving end (a duplicate per worker).
    wake: std::os::unix::net::UnixStream,
    wakeup: Arc<Wakeup>,
    /// Set when another worker stopped.
    stop: watch::Receiver<bool>,
    core: Arc<ServerCore>,
    buf: Vec<u8>,
    connections: Arc<Semaphore>,
    blocking: Arc<Semaphore>,
    spawner: Spawner,
}

impl Acceptor {
    fn new(
        serving: &Serving<'_>,
        socket: &ServerSocket,
        strategy: &Async,
        stop: watch::Receiver<bool>,
    ) -> Result<Acceptor> {
        let buf = if socket.is_stream() {
            Vec::new()
        } else {
            vec![0; serving.options.max_packet_size]
        };
        Ok(Acceptor {
            socket: Reactor::share(socket)?,
            wake: serving.wakeup.receiver()?,
            wakeup: serving.wakeup.clone(),
            stop,
            core: serving.core.clone(),
            buf,
            connections: strategy.connections.clone(),
            blocking: strategy.blocking.clone(),
            spawner: strategy.spawner.clone(),
        })
    }

    /// The loop; gives back the request tasks (for the drain).
    async fn run(
        self,
        mut tasks: JoinSet<()>,
        count: Arc<AtomicUsize>,
    ) -> (Result<()>, JoinSet<()>) {
        let result = self.accept_loop(&mut tasks, &count).await;
        (result, tasks)
    }

    async fn accept_loop(self, tasks: &mut JoinSet<()>, count: &AtomicUsize) -> Result<()> {
        let Acceptor {
            socket,
            wake,
            wakeup,
            mut stop,
            core,
            mut buf,
            connections,
            blocking,
            spawner,
        } = self;
        let reactor = Reactor::register(socket)?;
        let wake = tokio::net::UnixStream::from_std(wake)?;
        let stopped = async {
            let mut sink = [0u8; 64];
            loop {
                if wakeup.shutdown_requested() || *stop.borrow() {
                    return;
                }
                tokio::select! {
                    r = wake.readable() => if r.is_err() { return },
                    _ = stop.changed() => {}
                }
                while let Ok(n) = wake.try_read(&mut sink) {
                    if n == 0 {
                        return;
                    }
                }
            }
        };
        tokio::pin!(stopped);
        let mut backoff = AcceptBackoff::default();
        let native = spawner.native.is_some();
        loop {
            reap(tasks);
            count.store(tasks.len(), Ordering::Relaxed);
            let connection = tokio::select! {
                biased;
                _ = &mut stopped => return Ok(()),
                p = connections.clone().acquire_owned() => p.map_err(|_| Error::Closed)?,
            };
            let blocking = if native {
                None
            } else {
                tokio::select! {
                    biased;
                    _ = &mut stopped => return Ok(()),
                    p = blocking.clone().acquire_owned() => Some(p.map_err(|_| Error::Closed)?),
                }
            };
            let received = tokio::select! {
                biased;
                _ = &mut stopped => return Ok(()),
                r = reactor.get_request(&mut buf, native) => r,
            };
            match received {
                Ok((request, peer)) => {
                    backoff.on_success();
                    if core.hooks.verify_request(&request, &peer) {
                        spawner.spawn(tasks, &core, request, peer, (connection, blocking), native);
                    } else {
                        core.shutdown_request(request);
                    }
                }
                Err(e) => match backoff.on_error(&e) {
                    AcceptAction::Retry => {}
                    AcceptAction::Backoff(d) => {
                        tokio::select! {
                            _ = &mut stopped => return Ok(()),
                            _ = tokio::time::sleep(d) => {}
                        }
                    }
                    AcceptAction::Fatal => {
                        tracing::error!(error = %e, "the server socket is broken; serving stops");
                        return Err(e.into());
                    }
                },
            }
            core.hooks.service_actions();
        }
    }
}

impl Drop for Async {
    fn drop(&mut self) {
        // Every worker is told to leave first, then joined: their
        // runtimes shut down side by side (up to a second each for
        // blocking handlers).
        for worker in &mut self.workers {
            worker.commands = None;
        }
        for worker in &mut self.workers {
            if let Some(t) = worker.thread.take() {
                let _ = t.join();
            }
        }
        if let Some(rt) = self.home.take() {
            rt.shutdown_timeout(Duration::from_secs(1));
        }
    }
}

impl ServerBuilder<TcpTransport, Async> {
    /// Creates an async TCP server for a native [`AsyncRequestHandler`]
    /// (one value shared by every connection). Binds and listens unless
    /// [`bind_and_activate(false)`](Self::bind_and_activate).
    ///
    /// # Errors
    /// As [`bind`](Self::bind).
    pub fn bind_async<A, H>(
        &self,
        address: A,
        handler: H,
    ) -> Result<SocketServer<TcpTransport, Async>>
    where
        A: BindAddress<TcpTransport>,
        H: AsyncRequestHandler,
    {
        let address = address.into_address()?;
        let mut server = SocketServer::<TcpTransport, Async>::create(
            address,
            None,
            self.hooks.clone(),
            self.options.clone(),
        )?;
        server
            .strategy_mut()
            .spawner
            .serve_native(handler, &self.options);
        Ok(server)
    }

    /// Serves a native [`AsyncRequestHandler`] on an inherited listening
    /// socket (socket activation, re-exec).
    ///
    /// # Errors
    /// As [`from_socket`](Self::from_socket).
    pub fn from_socket_async<H>(
        &self,
        socket: impl Into<OwnedFd>,
        handler: H,
    ) -> Result<SocketServer<TcpTransport, Async>>
    where
        H: AsyncRequestHandler,
    {
        let mut server = SocketServer::<TcpTransport, Async>::adopt(
            socket.into(),
            None,
            self.hooks.clone(),
            self.options.clone(),
        )?;
        server
            .strategy_mut()
            .spawner
            .serve_native(handler, &self.options);
        Ok(server)
    }
}

impl SocketServer<TcpTransport, Async> {
    /// Binds an async TCP server with default options for a native
    /// [`AsyncRequestHandler`]; see [`ServerBuilder::bind_async`].
    ///
    /// # Errors
    /// As [`ServerBuilder::bind`].
    pub fn bind_async<A, H>(address: A, handler: H) -> Result<Self>
    where
        A: BindAddress<TcpTransport>,
        H: AsyncRequestHandler,
    {
        ServerBuilder::new().bind_async(address, handler)
    }
}
