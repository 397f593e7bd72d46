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
//! Anything else (`EBADF`, `EINVAL`, `ENOTSOCK`, `EOPNOTSUPP`: the listener
//! itself is broken) is fatal. This mirrors axum's `serve/listener.rs` and
//! Go's `net/http` accept loop. It is the one classification and the one
//! backoff of this crate: the accept loop every strategy and every prefork
//! worker runs ([`Serving::accept_loop`](crate::server::Serving::accept_loop))
//! and the async loop call [`AcceptBackoff::on_error`].
//!
//! [`RateLimited`] keeps a repeated identical error (the prefork parent
//! failing to fork under `ulimit -n`) from flooding the log: the first one
//! is logged, then one line with a count every interval.

use std::collections::HashMap;
use std::io;
use std::time::{Duration, Instant};

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

    /// Classifies an `accept` (or `recvfrom`) error and, for resource
    /// exhaustion, returns the delay to wait (and doubles the next one).
    pub fn on_error(&mut self, err: &io::Error) -> AcceptAction {
        match classify(err) {
            Class::PerConnection => {
                tracing::debug!(error = %err, "accept: skipping a failed connection");
                AcceptAction::Retry
            }
            Class::Exhausted => {
                let d = self.next;
                self.next = (self.next * 2).min(self.max);
                self.exhausted += 1;
                // Logged once per run of failures, not once per attempt.
                if d == self.min {
                    tracing::warn!(error = %err, "accept: out of resources, backing off");
                } else {
                    tracing::debug!(error = %err, delay = ?d, "accept: still out of resources");
                }
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

/// Logs a repeated identical error once, then one line with the count of
/// repeats every `every`, instead of one line per occurrence.
#[derive(Debug)]
pub(crate) struct RateLimited {
    every: Duration,
    seen: HashMap<String, (Instant, u64)>,
}

impl RateLimited {
    pub(crate) fn new(every: Duration) -> Self {
        RateLimited {
            every,
            seen: HashMap::new(),
        }
    }

    /// Logs `what: detail` at error level, or counts it when the same
    /// line was logged less than the interval ago. Returns whether it was
    /// logged.
    pub(crate) fn error(&mut self, what: &str, detail: &dyn std::fmt::Display) -> bool {
        self.log(true, what, detail)
    }

    /// As [`error`](Self::error), at warn level.
    pub(crate) fn warn(&mut self, what: &str, detail: &dyn std::fmt::Display) -> bool {
        self.log(false, what, detail)
    }

    fn log(&mut self, error: bool, what: &str, detail: &dyn std::fmt::Display) -> bool {
        let key = format!("{what}: {detail}");
        let now = Instant::now();
        let repeats = match self.seen.get_mut(&key) {
            Some((since, repeats)) if now.duration_since(*since) < self.every => {
                *repeats += 1;
                return false;
            }
            Some((since, repeats)) => {
                let n = *repeats;
                *since = now;
                *repeats = 0;
                n
            }
            None => {
                self.seen.insert(key.clone(), (now, 0));
                0
            }
        };
        match (error, repeats) {
            (true, 0) => tracing::error!("{key}"),
            (true, n) => tracing::error!(
                repeats = n,
                "{key} (and {n} more times in {:?})",
                self.every
            ),
            (false, 0) => tracing::warn!("{key}"),
            (false, n) => tracing::warn!(
                repeats = n,
                "{key} (and {n} more times in {:?})",
                self.every
            ),
        }
        true
    }
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
        io::ErrorKind::NotConnected => Class::Fatal,
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
    fn repeated_errors_are_logged_once_per_interval() {
        let mut r = RateLimited::new(Duration::from_millis(200));
        assert!(r.error("cannot fork prefork worker", &"EMFILE"));
        for _ in 0..100 {
            assert!(!r.error("cannot fork prefork worker", &"EMFILE"));
        }
        assert!(r.error("cannot fork prefork worker", &"EAGAIN"));
        std::thread::sleep(Duration::from_millis(250));
        assert!(r.error("cannot fork prefork worker", &"EMFILE"));
    }

    #[test]
    fn per_connection_errors_retry_and_broken_listener_is_fatal() {
        let mut b = AcceptBackoff::default();
        assert_eq!(b.on_error(&os(Errno::ECONNABORTED)), AcceptAction::Retry);
        assert_eq!(b.on_error(&os(Errno::EINTR)), AcceptAction::Retry);
        assert_eq!(b.on_error(&os(Errno::EPROTO)), AcceptAction::Retry);
        assert_eq!(b.on_error(&os(Errno::EBADF)), AcceptAction::Fatal);
        assert_eq!(b.on_error(&os(Errno::EINVAL)), AcceptAction::Fatal);
        assert_eq!(b.on_error(&os(Errno::EOPNOTSUPP)), AcceptAction::Fatal);
        assert_eq!(b.on_error(&os(Errno::ECONNRESET)), AcceptAction::Retry);
        assert_eq!(
            b.on_error(&os(Errno::ENOBUFS)),
            AcceptAction::Backoff(Duration::from_millis(5))
        );
        b.on_success();
        assert_eq!(b.exhausted_count(), 1);
    }
}
