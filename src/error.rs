//! The crate's error type.
//!
//! One typed, `#[non_exhaustive]` enum for every layer, so callers can match
//! on what went wrong (a peer that closed, a frame that was too large, a
//! queue that stayed empty) instead of parsing strings. New variants may be
//! added without a breaking change.

use std::io;
use std::time::Duration;

/// Shorthand for `std::result::Result<T, socketserver::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in `socketserver`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An operating-system call failed.
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),

    /// The peer closed its end: there is nothing more to receive.
    #[error("end of file: the peer closed the connection")]
    Eof,

    /// The connection was already closed by this side.
    #[error("the connection is closed")]
    Closed,

    /// A frame announced (or a caller tried to send) more bytes than allowed.
    #[error("message of {len} bytes exceeds the maximum of {max} bytes")]
    MessageTooLarge {
        /// The announced or attempted length.
        len: usize,
        /// The configured maximum.
        max: usize,
    },

    /// The peer closed in the middle of a frame.
    #[error("truncated frame: expected {expected} bytes, got {got}")]
    TruncatedFrame {
        /// Bytes the frame header promised.
        expected: usize,
        /// Bytes that arrived before end of file.
        got: usize,
    },

    /// A message could not be encoded or decoded.
    #[error("codec error: {0}")]
    Codec(String),

    /// The authkey handshake failed (wrong key, or the peer did not speak it).
    #[error("authentication failed: {0}")]
    #[doc(alias = "AuthenticationError")]
    AuthenticationFailed(String),

    /// An operation did not complete within its timeout.
    #[error("timed out after {0:?}")]
    Timeout(Duration),

    /// `Queue::get` found nothing (non-blocking, or after its timeout).
    #[error("queue is empty")]
    Empty,

    /// `Queue::put` found no room (non-blocking, or after its timeout).
    #[error("queue is full")]
    Full,

    /// `Process::start` was called on a process that was already started.
    #[error("process has already been started")]
    AlreadyStarted,

    /// An operation needs a started process.
    #[error("process has not been started")]
    NotStarted,

    /// A daemon process tried to start a child of its own.
    #[error("daemonic processes are not allowed to have children")]
    DaemonicChildren,

    /// A shared primitive's previous owner died while holding it; the state
    /// it protected may be inconsistent. The lock itself was recovered.
    #[error("the previous owner died while holding the lock")]
    OwnerDied,

    /// A `Barrier` was aborted, reset, timed out or lost a process inside
    /// its critical section while this caller waited (Python's
    /// `BrokenBarrierError`).
    #[error("barrier is broken")]
    BrokenBarrier,

    /// A task or handler panicked; the message is the panic payload.
    #[error("panicked: {0}")]
    Panicked(String),

    /// A worker process died (killed by a signal or exited) mid-task.
    #[error("worker process {pid} died: {reason}")]
    WorkerDied {
        /// The worker's pid.
        pid: i32,
        /// How it ended, for example "killed by signal 9".
        reason: String,
    },

    /// The pool or executor can no longer run tasks.
    #[error("process pool is broken: {0}")]
    #[doc(alias = "BrokenProcessPool")]
    BrokenPool(String),

    /// The operation was cancelled before it ran.
    #[error("cancelled")]
    Cancelled,

    /// A value was invalid for the operation (bad argument, bad address).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// A PROXY protocol header was malformed.
    #[error("malformed PROXY protocol header: {0}")]
    ProxyHeader(String),

    /// Another instance holds the pid file's lock.
    #[error("another instance is already running (pid {pid}, pid file {path})")]
    AlreadyRunning {
        /// The pid written in the pid file by the running instance.
        pid: String,
        /// The pid file.
        path: std::path::PathBuf,
    },
}

impl Error {
    /// `true` when the peer reset or hung up (connection reset or
    /// aborted, broken pipe, end of file mid-message): normal traffic for
    /// a server, logged at `debug` rather than `error`.
    pub fn is_disconnect(&self) -> bool {
        match self {
            Error::Eof | Error::TruncatedFrame { .. } => true,
            Error::Io(e) => matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::UnexpectedEof
                    | io::ErrorKind::NotConnected
            ),
            _ => false,
        }
    }
}

impl From<nix::Error> for Error {
    fn from(e: nix::Error) -> Self {
        Error::Io(io::Error::from(e))
    }
}

impl From<postcard::Error> for Error {
    fn from(e: postcard::Error) -> Self {
        Error::Codec(e.to_string())
    }
}

impl From<Error> for io::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Io(e) => e,
            Error::Eof => io::Error::new(io::ErrorKind::UnexpectedEof, e),
            Error::Timeout(_) => io::Error::new(io::ErrorKind::TimedOut, e),
            Error::InvalidArgument(_) => io::Error::new(io::ErrorKind::InvalidInput, e),
            other => io::Error::other(other),
        }
    }
}
