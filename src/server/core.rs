//! **Where a request becomes a handler call.**
//!
//! [`ServerCore`] is the part of a server that worker threads, forked
//! children, prefork workers and async tasks share: the handler factory,
//! the hooks and the per-connection settings. Every strategy runs a
//! request through [`ServerCore::process`]: Python's `finish_request`
//! (make a handler, run its life cycle — the one in `handler.rs` behind
//! [`run_handler`](crate::handler::run_handler), the only place
//! `setup`/`handle`/`finish` are called — send a datagram reply),
//! `handle_error` on failure and `shutdown_request` at the end, all inside
//! a `tracing` span naming the peer and the strategy.

use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::handler::{lifecycle, PeerAddr, Request, RequestHandler};

use super::hooks::Hooks;
use super::incoming::{Datagram, Incoming};

/// Makes one handler per request. `None` for a server whose requests are
/// served by a native async handler instead.
pub(crate) type Factory = Option<Box<dyn Fn() -> Box<dyn RequestHandler> + Send + Sync>>;

/// The shared, thread- and fork-safe part of a server.
pub struct ServerCore {
    factory: Factory,
    pub(crate) hooks: Arc<dyn Hooks>,
    pub(crate) connection_timeout: Option<Duration>,
    /// The listening socket carries `connection_timeout` (set before
    /// `listen`), so every connection accepted from it already has it.
    timeout_on_listener: AtomicBool,
    strategy: &'static str,
}

impl fmt::Debug for ServerCore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerCore")
            .field("strategy", &self.strategy)
            .field("connection_timeout", &self.connection_timeout)
            .finish_non_exhaustive()
    }
}

/// The one helper that turns a caught panic into its message.
pub(crate) use crate::process::panic_message;

/// What one request moved: for the per-connection debug line.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Traffic {
    pub(crate) bytes_in: u64,
    pub(crate) bytes_out: u64,
}

impl ServerCore {
    pub(crate) fn new(
        factory: Factory,
        hooks: Arc<dyn Hooks>,
        connection_timeout: Option<Duration>,
        strategy: &'static str,
    ) -> Self {
        ServerCore {
            factory,
            hooks,
            connection_timeout,
            timeout_on_listener: AtomicBool::new(false),
            strategy,
        }
    }

    /// Records that the listening socket carries the connection timeout:
    /// a TCP connection is a clone of its listening socket and inherits
    /// its `SO_RCVTIMEO`/`SO_SNDTIMEO`, so [`run`](Self::run) no longer
    /// sets them per connection (two system calls fewer each).
    pub(crate) fn timeout_set_on_listener(&self) {
        self.timeout_on_listener.store(true, Ordering::Relaxed);
    }

    /// The strategy's name, as logged in every connection's span.
    pub fn strategy_name(&self) -> &'static str {
        self.strategy
    }

    /// Python's `finish_request`: makes a handler, runs its life cycle
    /// under `catch_unwind`, then (for a datagram whose `setup` succeeded)
    /// sends the reply — even an empty one. Hands the request back for
    /// [`shutdown_request`](Self::shutdown_request) (always `Some`; the
    /// `Option` only spares the code an impossible case).
    ///
    /// A handler that calls [`process::exit`](crate::process::exit) in a
    /// forked child or prefork worker ends that process with its code: the
    /// exit is not caught here as a panic.
    ///
    /// # Errors
    /// The first error from the handler or the reply, or
    /// [`Error::Panicked`] when the handler (or the factory) panicked.
    pub fn finish_request(
        &self,
        request: Incoming,
        peer: &PeerAddr,
    ) -> (Option<Incoming>, Result<()>) {
        let (request, result, _) = self.run(request, peer, &mut None);
        (request, result)
    }

    /// Runs the request; a stream request reads through `rbuf` when it
    /// holds a buffer, and leaves its read buffer there at the end.
    fn run(
        &self,
        request: Incoming,
        peer: &PeerAddr,
        rbuf: &mut Option<Vec<u8>>,
    ) -> (Option<Incoming>, Result<()>, Traffic) {
        let Some(factory) = &self.factory else {
            let e = Error::InvalidArgument(
                "this server serves a native async handler; only the async strategy runs it".into(),
            );
            return (Some(request), Err(e), Traffic::default());
        };
        let (mut req, socket) = match request {
            Incoming::Stream(s) => {
                let inherited = self.timeout_on_listener.load(Ordering::Relaxed);
                if let (Some(t), false) = (self.connection_timeout, inherited) {
                    if let Err(e) = s.set_timeout(Some(t)) {
                        return (Some(Incoming::Stream(s)), Err(e.into()), Traffic::default());
                    }
                }
                let req = match rbuf.take() {
                    Some(buf) => Request::from_stream_with_buffer(s, peer.clone(), buf),
                    None => Request::from_stream(s, peer.clone()),
                };
                (req, None)
            }
            Incoming::Datagram(d) => (
                Request::from_datagram(d.packet, peer.clone()),
                Some(d.socket),
            ),
        };
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            let mut handler = factory();
            lifecycle(&mut *handler, &mut req)
        }));
        let (setup_ok, mut result) = match outcome {
            Ok(l) => (l.setup_ok, l.result.map_err(Error::from)),
            Err(payload) => {
                let payload = crate::process::resume_exit_request(payload);
                (false, Err(Error::Panicked(panic_message(&*payload))))
            }
        };
        let mut traffic = Traffic {
            bytes_in: req.bytes_received(),
            bytes_out: req.bytes_sent(),
        };
        match socket {
            None => {
                let (stream, buf) = req.into_stream_and_buffer();
                *rbuf = buf;
                (stream.map(Incoming::Stream), result, traffic)
            }
            Some(socket) => {
                let d = Datagram {
                    packet: Vec::new(),
                    socket,
                };
                if setup_ok {
                    let reply = req.take_reply().unwrap_or_default();
                    traffic.bytes_out = reply.len() as u64;
                    if let Err(e) = d.send_reply(&reply, peer) {
                        if result.is_ok() {
                            result = Err(e.into());
                        }
                    }
                }
                (Some(Incoming::Datagram(d)), result, traffic)
            }
        }
    }

    /// Reports an error through the `handle_error` hook.
    pub fn handle_error(&self, peer: &PeerAddr, error: &Error) {
        self.hooks.handle_error(peer, error);
    }

    /// Cleans up through the `shutdown_request` hook.
    pub fn shutdown_request(&self, request: Incoming) {
        self.hooks.shutdown_request(request);
    }

    /// Python's synchronous `process_request`: `finish_request`, then
    /// `handle_error` on failure, then always `shutdown_request` — inside
    /// a `conn` span (peer, strategy), ending with one debug line giving
    /// the duration and the bytes in and out. Returns `true` when the
    /// request ended normally: the handler succeeded, or the peer went
    /// away mid-request ([`Error::is_disconnect`], normal traffic that
    /// `handle_error` logs at debug). A forked child exits with status 0
    /// then, and 1 otherwise.
    pub fn process(&self, request: Incoming, peer: &PeerAddr) -> bool {
        self.process_with_buffer(request, peer, &mut None)
    }

    /// [`process`](Self::process) with a read buffer for a stream request
    /// (see [`run`](Self::run)): a forked child reads through its copy of
    /// one the parent allocated once, and leaves it unfreed at `_exit`,
    /// so it does no heap bookkeeping for it (each heap page and the
    /// allocator state it would write are copy-on-write faults).
    pub(crate) fn process_with_buffer(
        &self,
        request: Incoming,
        peer: &PeerAddr,
        rbuf: &mut Option<Vec<u8>>,
    ) -> bool {
        let span = tracing::debug_span!("conn", peer = %peer, strategy = %self.strategy);
        let _entered = span.enter();
        // The clock only when the closing debug line is wanted: in a
        // forked child the call costs page faults on its code.
        let started = tracing::enabled!(tracing::Level::DEBUG).then(Instant::now);
        let (request, result, traffic) = self.run(request, peer, rbuf);
        let ok = match result {
            Ok(()) => true,
            Err(e) => {
                self.handle_error(peer, &e);
                e.is_disconnect()
            }
        };
        // A panicking shutdown_request override must not take the caller
        // (a worker thread or the serving loop) down with it.
        let mut ok = ok;
        if let Some(request) = request {
            if let Err(p) = catch_unwind(AssertUnwindSafe(|| self.shutdown_request(request))) {
                let p = crate::process::resume_exit_request(p);
                self.handle_error(peer, &Error::Panicked(panic_message(&*p)));
                ok = false;
            }
        }
        tracing::debug!(
            duration = ?started.map(|s| s.elapsed()).unwrap_or_default(),
            bytes_in = traffic.bytes_in,
            bytes_out = traffic.bytes_out,
            ok,
            "connection closed"
        );
        ok
    }
}
