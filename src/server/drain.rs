//! The one drain report: what `server_close` found in flight and what
//! became of it, the same for every strategy.
//!
//! The drain protocol, for every strategy: a shutdown stops the loop at
//! once; `server_close` closes the listening socket (in every process
//! that holds it: prefork workers drop their copy as soon as they are
//! told to stop), so a new client is refused instead of queued; requests
//! in flight may finish until the drain timeout
//! ([`ServerBuilder::drain_timeout`](super::ServerBuilder::drain_timeout),
//! default 30 s); what is still running then is ended (its connection
//! shut down, its task aborted, its process killed).

/// What happened to the requests in flight when the server was closed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DrainReport {
    /// Requests (threads, children, workers' connections, tasks) that
    /// finished on their own within the drain timeout.
    pub drained: usize,
    /// Requests still running at the deadline, which were ended.
    pub aborted: usize,
    /// Requests left running: `block_on_close` was off (Python's
    /// `block_on_close = False`: the server does not wait for them), or a
    /// handler thread was still running at the drain deadline.
    pub detached: usize,
}
