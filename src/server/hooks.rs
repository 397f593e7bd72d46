//! The overridable hooks of Python's `BaseServer`, as a trait.
//!
//! In Python you subclass `TCPServer` and override `verify_request` or
//! `handle_error`. In Rust the server types are generic structs, so the
//! user-overridable hooks live in [`Hooks`], which you implement and pass to
//! the builder ([`ServerBuilder::hooks`](super::ServerBuilder::hooks)).
//! Every method has Python's default behaviour. Hooks take `&self` because
//! `handle_error` and `shutdown_request` also run on worker threads and in
//! forked children; keep state in atomics or a `Mutex`.

use crate::error::Error;
use crate::handler::PeerAddr;

use super::incoming::Incoming;

/// The per-server hooks users override (Python's `BaseServer` methods).
pub trait Hooks: Send + Sync + 'static {
    /// Decides whether to serve a request. Returning `false` passes it
    /// straight to [`shutdown_request`](Self::shutdown_request). Default
    /// accepts everything.
    fn verify_request(&self, request: &Incoming, peer: &PeerAddr) -> bool {
        let _ = (request, peer);
        true
    }

    /// Cleans up after a request: for a stream, shuts down the write half
    /// and closes it ([`Incoming::shutdown`]). An override should end by
    /// calling that (or dropping the request). Default is exactly that.
    fn shutdown_request(&self, request: Incoming) {
        request.shutdown();
    }

    /// Reports a handler that returned an error or panicked; the server
    /// then closes the connection and keeps serving. Default is
    /// [`report_error`]: a peer that reset or hung up mid-request is normal
    /// traffic, logged at `debug`; any other error is the handler's and is
    /// logged at `error` with the peer address — or, when no `tracing`
    /// subscriber is installed, written as one line to stderr (Python's
    /// `handle_error` prints the traceback there).
    fn handle_error(&self, peer: &PeerAddr, error: &Error) {
        report_error(peer, error);
    }

    /// Called by `handle_request` when its timeout expires with nothing to
    /// serve. Default does nothing.
    fn handle_timeout(&self) {}

    /// Called once per iteration of `serve_forever` (after a request or a
    /// wake-up). Default does nothing; the forking strategy reaps its
    /// children here regardless.
    fn service_actions(&self) {}
}

/// The default `handle_error`, for overrides that add to it.
pub fn report_error(peer: &PeerAddr, error: &Error) {
    if error.is_disconnect() {
        tracing::debug!(peer = %peer, error = %error, "peer went away mid-request");
        return;
    }
    let subscribed =
        tracing::dispatcher::get_default(|d| !d.is::<tracing::subscriber::NoSubscriber>());
    if subscribed {
        tracing::error!(peer = %peer, error = %error, "error while handling request");
    } else {
        use std::io::Write;
        // One write, so lines of concurrent children do not interleave.
        let line = format!("socketserver: error while handling request from {peer}: {error}\n");
        let _ = std::io::stderr().write_all(line.as_bytes());
    }
}

/// Python's behaviour for every hook.
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultHooks;

impl Hooks for DefaultHooks {}
