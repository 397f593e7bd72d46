//! What an accept loop does when `accept` fails.
//!
//! Two kinds of failure look alike but need opposite answers:
//!
//! - **Per-connection errors** (`ECONNABORTED`, `EPROTO`, a peer that reset
//!   before we accepted, `EINTR`): the listening socket is fine, skip the
//!   connection and accept the next one at once.
//! - **Resource exhaustion** (`EMFILE`, `ENFILE`, `ENOBUFS`, `ENOMEM`): the
//!   pending connection stays in the backlog, so accepting again at once
//!   fails again at once — a busy loop burning a core. Back off (with a
//!   growing delay) and retry; when descriptors free up, accept succeeds and
//!   the delay resets.
//!
//! Anything else (`EBADF`, `EINVAL`: the listener itself is broken) is
//! fatal. This mirrors axum's `serve/listener.rs` and Go's `net/http`
//! accept loop, and is shared by every strategy in this crate.

use std::io;
use std::time::Duration;

/// What to do after a failed `accept`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcceptAction {
    /// A per-connection error: accept again at once.
    Retry,
    /// Out of descriptors or memory: sleep this long, then accept again.
    Backoff(Duration),
    /// The listening socket is unusable: stop serving.
    Fatal,
}

/// Exponential backoff for accept loops that hit `EMFILE`/`ENFILE`.
///
/// Call [`on_error`](Self::on_error) for every failed `accept` and
/// [`on_success`](Self::on_success) for every accepted connection.
#[derive(Debug, Clone)]
pub struct AcceptBackoff {
    min: Duration,
    max: Duration,
    next: Duration,
    exhausted: u64,
}

impl Default for AcceptBackoff {
    fn default() -> Self {
        AcceptBackoff::new(Duration::from_millis(5), Duration::from_secs(1))
    }
}

impl AcceptBackoff {
    /// A backoff starting at `min` and doubling up to `max` while `accept`
    /// keeps failing for lack of resources. Default is 5 ms up to 1 s.
    pub fn new(min: Duration, max: Duration) -> Self {
        let min = min.max(Duration::from_millis(1));
        AcceptBackoff {
            min,
            max: max.max(min),
            next: min,
            exhausted: 0,
        }
    }

    /// Classifies an `accept` error and, for resource exhaustion, returns
    /// the delay to wait (and doubles the next one).
    pub fn on_error(&mut self, err: &io::Error) -> AcceptAction {
        match classify(err) {
            Class::PerConnection => AcceptAction::Retry,
            Class::Exhausted => {
                let d = self.next;
                self.next = (self.next * 2).min(self.max);
                self.exhausted += 1;
                tracing::warn!(error = %err, delay = ?d, "accept: out of resources, backing off");
                AcceptAction::Backoff(d)
            }
            Class::Fatal => AcceptAction::Fatal,
        }
    }

    /// Resets the delay after a successful `accept`.
    pub fn on_success(&mut self) {
        self.next = self.min;
    }

    /// How many times `accept` failed for lack of resources so far.
    pub fn exhausted_count(&self) -> u64 {
        self.exhausted
    }
}

/// Raises this process's soft `RLIMIT_NOFILE` (open descriptors) to at
/// least `want`, up to the hard limit, and returns the new soft limit.
///
/// A server holding many connections needs one descriptor each; the usual
/// soft default of 1024 is far below what the hard limit allows. A process
/// with `CAP_SYS_RESOURCE` (root) also raises the hard limit when it is
/// below `want`; otherwise the hard limit caps the result.
///
/// # Errors
/// `getrlimit`/`setrlimit` failed.
pub fn raise_fd_limit(want: u64) -> crate::Result<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft >= want {
        return Ok(soft);
    }
    if hard < want && setrlimit(Resource::RLIMIT_NOFILE, want, want).is_ok() {
        return Ok(want);
    }
    let new = want.min(hard);
    setrlimit(Resource::RLIMIT_NOFILE, new, hard)?;
    Ok(new)
}

enum Class {
    PerConnection,
    Exhausted,
    Fatal,
}

fn classify(err: &io::Error) -> Class {
    use nix::errno::Errno;
    if let Some(code) = err.raw_os_error() {
        return match Errno::from_raw(code) {
            Errno::EMFILE | Errno::ENFILE | Errno::ENOBUFS | Errno::ENOMEM => Class::Exhausted,
            Errno::EBADF | Errno::EINVAL | Errno::ENOTSOCK | Errno::EOPNOTSUPP | Errno::EFAULT => {
                Class::Fatal
            }
            // ECONNABORTED, EINTR, EAGAIN, EPROTO, EPERM (firewall), and the
            // network errors Linux passes through from the new socket.
            _ => Class::PerConnection,
        };
    }
    match err.kind() {
        io::ErrorKind::OutOfMemory => Class::Exhausted,
        io::ErrorKind::InvalidInput => Class::Fatal,
        _ => Class::PerConnection,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::errno::Errno;

    fn os(e: Errno) -> io::Error {
        io::Error::from_raw_os_error(e as i32)
    }

    #[test]
    fn emfile_backs_off_exponentially_and_resets() {
        let mut b = AcceptBackoff::new(Duration::from_millis(5), Duration::from_millis(20));
        assert_eq!(
            b.on_error(&os(Errno::EMFILE)),
            AcceptAction::Backoff(Duration::from_millis(5))
        );
        assert_eq!(
            b.on_error(&os(Errno::ENFILE)),
            AcceptAction::Backoff(Duration::from_millis(10))
        );
        assert_eq!(
            b.on_error(&os(Errno::EMFILE)),
            AcceptAction::Backoff(Duration::from_millis(20))
        );
        assert_eq!(
            b.on_error(&os(Errno::EMFILE)),
            AcceptAction::Backoff(Duration::from_millis(20))
        );
        assert_eq!(b.exhausted_count(), 4);
        b.on_success();
        assert_eq!(
            b.on_error(&os(Errno::EMFILE)),
            AcceptAction::Backoff(Duration::from_millis(5))
        );
    }

    #[test]
    fn per_connection_errors_retry_and_broken_listener_is_fatal() {
        let mut b = AcceptBackoff::default();
        assert_eq!(b.on_error(&os(Errno::ECONNABORTED)), AcceptAction::Retry);
        assert_eq!(b.on_error(&os(Errno::EINTR)), AcceptAction::Retry);
        assert_eq!(b.on_error(&os(Errno::EPROTO)), AcceptAction::Retry);
        assert_eq!(b.on_error(&os(Errno::EBADF)), AcceptAction::Fatal);
        assert_eq!(b.on_error(&os(Errno::EINVAL)), AcceptAction::Fatal);
        assert_eq!(b.exhausted_count(), 0);
    }
}
