//! What happens to one request once a strategy decided where it runs.
//!
//! [`ServerCore`] is the part of a server that worker threads and forked
//! children need: the handler factory, the hooks and the per-connection
//! settings. It is shared behind an `Arc`, so every strategy runs requests
//! through the same code: Python's `finish_request` (make a handler, run
//! it, send a datagram reply) and `shutdown_request`, with errors and panics
//! reported through `handle_error`.

use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::handler::{PeerAddr, Request, RequestHandler};

use super::hooks::Hooks;
use super::incoming::{Datagram, Incoming};

/// Makes one handler per request.
pub(crate) type Factory = Box<dyn Fn() -> Box<dyn RequestHandler> + Send + Sync>;

/// The shared, thread- and fork-safe part of a server.
pub struct ServerCore {
    pub(crate) factory: Factory,
    pub(crate) hooks: Arc<dyn Hooks>,
    pub(crate) connection_timeout: Option<Duration>,
}

impl fmt::Debug for ServerCore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerCore")
            .field("connection_timeout", &self.connection_timeout)
            .finish_non_exhaustive()
    }
}

/// Turns a panic payload into the message it carried.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}

impl ServerCore {
    /// Python's `finish_request`: makes a handler, runs `setup`, `handle`
    /// and `finish` under `catch_unwind`, then (for a datagram whose
    /// `setup` succeeded) sends the reply — even an empty one. Hands the
    /// request back for [`shutdown_request`](Self::shutdown_request)
    /// (always `Some`; the `Option` only spares the code an impossible
    /// case).
    ///
    /// # Errors
    /// The first error from the handler or the reply, or
    /// [`Error::Panicked`] when the handler (or the factory) panicked.
    pub fn finish_request(
        &self,
        request: Incoming,
        peer: &PeerAddr,
    ) -> (Option<Incoming>, Result<()>) {
        let (mut req, socket) = match request {
            Incoming::Stream(s) => {
                if let Some(t) = self.connection_timeout {
                    if let Err(e) = s.set_timeout(Some(t)) {
                        return (Some(Incoming::Stream(s)), Err(e.into()));
                    }
                }
                (Request::from_stream(s, peer.clone()), None)
            }
            Incoming::Datagram(d) => (
                Request::from_datagram(d.packet, peer.clone()),
                Some(d.socket),
            ),
        };
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            let mut handler = (self.factory)();
            if let Err(e) = handler.setup(&mut req) {
                return (false, Err(e));
            }
            let handled = handler.handle(&mut req);
            let finished = handler.finish(&mut req);
            (true, handled.and(finished))
        }));
        let (setup_ok, mut result) = match outcome {
            Ok((ok, r)) => (ok, r.map_err(Error::from)),
            Err(payload) => (false, Err(Error::Panicked(panic_message(&*payload)))),
        };
        match socket {
            None => (req.into_stream().map(Incoming::Stream), result),
            Some(socket) => {
                let d = Datagram {
                    packet: Vec::new(),
                    socket,
                };
                if setup_ok {
                    let reply = req.take_reply().unwrap_or_default();
                    if let Err(e) = d.send_reply(&reply, peer) {
                        if result.is_ok() {
                            result = Err(e.into());
                        }
                    }
                }
                (Some(Incoming::Datagram(d)), result)
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
    /// `handle_error` on failure, then always `shutdown_request`. Returns
    /// `true` when the handler succeeded (a forked child's exit status).
    pub fn process(&self, request: Incoming, peer: &PeerAddr) -> bool {
        let (request, result) = self.finish_request(request, peer);
        let ok = match result {
            Ok(()) => true,
            Err(e) => {
                self.handle_error(peer, &e);
                false
            }
        };
        // A panicking shutdown_request override must not take the caller
        // (a worker thread or the serving loop) down with it.
        let Some(request) = request else { return ok };
        if let Err(p) = catch_unwind(AssertUnwindSafe(|| self.shutdown_request(request))) {
            self.handle_error(peer, &Error::Panicked(panic_message(&*p)));
            return false;
        }
        ok
    }
}
