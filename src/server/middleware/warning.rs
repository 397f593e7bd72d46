//! [`SharedWarning`]: a warning that repeats at most once a minute across
//! every process of a server.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crate::process::SharedAtomics;

/// At most one warning per this many seconds, in all the processes of a
/// server together.
const WARN_EVERY_SECS: u64 = 60;

/// Rate-limits one warning across every process of a server: the first
/// event warns at once, later ones are counted and reported with the next
/// warning, at most one a minute. For events a peer can cause at will
/// (refused connections, bad headers), where one line per event would let
/// it flood the log.
///
/// The counts live in two words of shared memory mapped when the value is
/// made, so a value made before the server forks counts the events of its
/// forked children and prefork workers too; a rate limit inside one
/// process would warn once per child, each a fresh copy.
///
/// ```
/// use socketserver::server::SharedWarning;
///
/// let refused = SharedWarning::new(); // before the server forks
/// // Per event: log at debug, and warn when one is due.
/// if let Some(count) = refused.due() {
///     tracing::warn!(count, "refused connections (next report in a minute at the earliest)");
/// }
/// assert_eq!(refused.due(), None); // counted, reported with the next warning
/// ```
// Word 0 is the second (since `started`, plus one) of the last warning, 0
// for none yet; word 1 the events since then.
pub struct SharedWarning {
    shared: Option<SharedAtomics>,
    local: [AtomicU64; 2],
    started: Instant,
}

impl SharedWarning {
    /// Maps the two shared words. Should the mapping fail, each process
    /// counts its own (a forking server then warns once per child).
    pub fn new() -> SharedWarning {
        SharedWarning {
            shared: SharedAtomics::new(2).ok(),
            local: [AtomicU64::new(0), AtomicU64::new(0)],
            started: Instant::now(),
        }
    }

    fn word(&self, i: usize) -> &AtomicU64 {
        self.shared
            .as_ref()
            .and_then(|s| s.get(i))
            .unwrap_or(&self.local[i])
    }

    /// Whether the counts live in shared memory.
    #[cfg(test)]
    pub(crate) fn is_shared(&self) -> bool {
        self.shared.is_some()
    }

    /// Counts one event. `Some(n)` when a warning is due now (the first
    /// event, then the first one a minute after the last warning): `n`
    /// events since the last warning, this one included.
    pub fn due(&self) -> Option<u64> {
        // `started` was taken before any fork: the same monotonic clock
        // in every process of the server.
        self.due_at(self.started.elapsed().as_secs() + 1)
    }

    /// [`due`](Self::due) at second `now` (1 or more).
    fn due_at(&self, now: u64) -> Option<u64> {
        self.word(1).fetch_add(1, Ordering::Relaxed);
        let last = self.word(0).load(Ordering::Relaxed);
        if last != 0 && now < last.saturating_add(WARN_EVERY_SECS) {
            return None;
        }
        self.word(0)
            .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
            .ok()?;
        Some(self.word(1).swap(0, Ordering::Relaxed))
    }
}

impl Default for SharedWarning {
    fn default() -> Self {
        SharedWarning::new()
    }
}

impl std::fmt::Debug for SharedWarning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedWarning")
            .field("shared", &self.shared.is_some())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warns_first_then_at_most_once_a_minute_with_the_count() {
        let w = SharedWarning::new();
        assert!(w.is_shared());
        assert_eq!(w.due_at(5), Some(1));
        for now in [5, 6, 30, 64] {
            assert_eq!(w.due_at(now), None, "second {now}");
        }
        assert_eq!(w.due_at(65), Some(5));
        assert_eq!(w.due_at(66), None);
        assert_eq!(w.due_at(200), Some(2));
    }
}
