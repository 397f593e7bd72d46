//! Failed-login limits per client IP, shared by every session: threads of
//! the threading server and the forked children of the forking server.
//!
//! The table lives in shared memory ([`socketserver::process::Array`],
//! created before the server forks, guarded by its process-shared robust
//! lock), so a client cannot reset its count by reconnecting, and in the
//! forking mode every child sees the failures counted by the others.
//!
//! - Every login attempt is counted as a failure *before* the password is
//!   checked ([`LoginThrottle::begin`]) and taken back if it was right
//!   ([`LoginThrottle::end`]): a guess whose client hangs up before the
//!   answer still counts, and parallel guesses cannot pass the limit.
//! - `max_failures` failures from one IP within `window` lock that IP out
//!   for `lockout`: new connections and logins get `421` (logged once at
//!   warn level). Failures older than `window` are forgotten; a successful
//!   login does not reset the count (a valid account must not become a way
//!   to keep guessing another one's password).
//! - Failures are counted per *client*: an IPv4 address (IPv4-mapped IPv6
//!   addresses count as the IPv4 address), or an IPv6 /64 network, the
//!   block one customer or host usually gets (RFC 6177): someone holding a
//!   /64 has 2^64 addresses to rotate through, so counting each one alone
//!   would not limit them at all.
//! - The table has a fixed number of slots ([`SLOTS`]); when all are in use
//!   the one with the oldest activity is reused, locked-out addresses
//!   last.

use std::net::IpAddr;
use std::time::Duration;

use socketserver::process::{Array, LockError};

/// Addresses tracked at once.
pub const SLOTS: usize = 1024;

/// One slot: IP (two halves of the IPv6 form), start of the current
/// failure window (ms on the monotonic clock; 0 = free), failures in it,
/// end of the lock-out (ms; 0 = none).
type Slot = [u64; 5];
const IP_HI: usize = 0;
const IP_LO: usize = 1;
const SINCE: usize = 2;
const COUNT: usize = 3;
const UNTIL: usize = 4;

/// Milliseconds on the system-wide monotonic clock (the same in every
/// process), never 0.
fn now_ms() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (t.tv_sec as u64) * 1000 + (t.tv_nsec as u64) / 1_000_000 + 1
}

/// The slot key of `ip`: an IPv4 address whole (in its IPv4-mapped IPv6
/// form), an IPv6 address by its /64 prefix (the low half zeroed).
fn key(ip: IpAddr) -> (u64, u64) {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let bits = u128::from(v4.to_ipv6_mapped());
            ((bits >> 64) as u64, bits as u64)
        }
        IpAddr::V6(v6) => ((u128::from(v6) >> 64) as u64, 0),
    }
}

/// What a failed login led to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Counted; the address may go on.
    Counted(u64),
    /// This failure locked the address out (or it already was).
    LockedOut,
}

/// The shared failed-login table and its settings.
#[derive(Debug, Clone)]
pub struct LoginThrottle {
    /// `None` when the limit is off (`--max-login-failures 0`).
    table: Option<Array<Slot>>,
    max_failures: u64,
    window: Duration,
    lockout: Duration,
}

impl LoginThrottle {
    /// A table allowing `max_failures` failed logins per IP within
    /// `window`, then refusing that IP for `lockout`. `max_failures == 0`
    /// turns the limit off. Create it before the server forks.
    ///
    /// # Errors
    /// The shared memory cannot be mapped.
    pub fn new(
        max_failures: u32,
        window: Duration,
        lockout: Duration,
    ) -> socketserver::Result<LoginThrottle> {
        let table = if max_failures == 0 {
            None
        } else {
            Some(Array::new(SLOTS, [0u64; 5])?)
        };
        Ok(LoginThrottle {
            table,
            max_failures: u64::from(max_failures),
            window,
            lockout,
        })
    }

    /// How long a locked-out address is refused.
    pub fn lockout(&self) -> Duration {
        self.lockout
    }

    /// Runs `f` on the slots under the table's lock. `None` when the lock
    /// cannot be taken (then the caller fails closed).
    fn with_slots<R>(&self, f: impl FnOnce(&mut [Slot]) -> R) -> Option<R> {
        let table = self.table.as_ref()?;
        let mut guard = match table.lock() {
            Ok(g) => g,
            // A session died holding the lock: the counts are still usable.
            Err(LockError::OwnerDied(g)) => g,
            Err(e) => {
                tracing::error!(error = %e, "login limit table unavailable");
                return None;
            }
        };
        Some(f(&mut guard))
    }

    /// The time left of `ip`'s lock-out, if it is locked out. Fails closed:
    /// an unusable table counts as locked.
    pub fn locked(&self, ip: IpAddr) -> Option<Duration> {
        self.table.as_ref()?;
        let (hi, lo) = key(ip);
        let now = now_ms();
        self.with_slots(|slots| {
            slots
                .iter()
                .find(|s| s[SINCE] != 0 && s[IP_HI] == hi && s[IP_LO] == lo)
                .and_then(|s| (s[UNTIL] > now).then(|| Duration::from_millis(s[UNTIL] - now)))
        })
        .unwrap_or(Some(self.lockout))
    }

    /// Starts a login attempt from `ip`: counts it as a failure *before*
    /// the password is checked, so a guess whose client hangs up early
    /// counts, and concurrent guesses cannot exceed the limit (failed plus
    /// pending attempts never pass `max_failures`). `Err` with the time
    /// left when the address is locked out (or its remaining attempts are
    /// all in flight): the password must not be checked.
    pub fn begin(&self, ip: IpAddr) -> Result<(), Duration> {
        if self.table.is_none() {
            return Ok(());
        }
        let (hi, lo) = key(ip);
        let now = now_ms();
        let window = self.window.as_millis() as u64;
        let max = self.max_failures;
        let verdict = self.with_slots(|slots| {
            let i = slot_for(slots, hi, lo, now, window);
            let s = &mut slots[i];
            if s[UNTIL] > now {
                return Err(Duration::from_millis(s[UNTIL] - now));
            }
            if s[SINCE] + window <= now {
                // The old window is over: start a new one.
                s[SINCE] = now;
                s[COUNT] = 0;
                s[UNTIL] = 0;
            }
            if s[COUNT] >= max {
                // Every remaining attempt is in flight right now.
                return Err(self.lockout);
            }
            s[COUNT] += 1;
            Ok(())
        });
        verdict.unwrap_or(Err(self.lockout))
    }

    /// Ends an attempt [`begin`](Self::begin) allowed. A success takes its
    /// count back; a failure keeps it and, if it reached the limit, locks
    /// the address out: then `Failure::LockedOut` (log it).
    pub fn end(&self, ip: IpAddr, success: bool) -> Failure {
        if self.table.is_none() {
            return Failure::Counted(0);
        }
        let (hi, lo) = key(ip);
        let now = now_ms();
        let window = self.window.as_millis() as u64;
        let lockout = self.lockout.as_millis() as u64;
        let max = self.max_failures;
        let verdict = self.with_slots(|slots| {
            let i = slot_for(slots, hi, lo, now, window);
            let s = &mut slots[i];
            if s[UNTIL] > now {
                return Failure::LockedOut;
            }
            if success {
                s[COUNT] = s[COUNT].saturating_sub(1);
                return Failure::Counted(s[COUNT]);
            }
            if s[COUNT] >= max {
                s[UNTIL] = now + lockout;
                // The lock-out runs from now; its window ends with it.
                s[SINCE] = now + lockout;
                s[COUNT] = 0;
                return Failure::LockedOut;
            }
            Failure::Counted(s[COUNT])
        });
        verdict.unwrap_or(Failure::LockedOut)
    }

    /// A failed login from `ip` ([`begin`](Self::begin) then
    /// [`end`](Self::end)); `LockedOut` if it was refused or locked out.
    #[cfg(test)]
    fn record_failure(&self, ip: IpAddr) -> Failure {
        match self.begin(ip) {
            Ok(()) => self.end(ip, false),
            Err(_) => Failure::LockedOut,
        }
    }
}

/// The slot of `(hi, lo)`, claimed if it has none: a free or expired slot,
/// else the oldest one not locked out, else the oldest of all.
fn slot_for(slots: &mut [Slot], hi: u64, lo: u64, now: u64, window: u64) -> usize {
    if let Some(i) = slots
        .iter()
        .position(|s| s[SINCE] != 0 && s[IP_HI] == hi && s[IP_LO] == lo)
    {
        return i;
    }
    let expired = |s: &Slot| s[SINCE] == 0 || (s[UNTIL] <= now && s[SINCE] + window <= now);
    let i = slots.iter().position(expired).unwrap_or_else(|| {
        let pick = |locked: bool| {
            slots
                .iter()
                .enumerate()
                .filter(|(_, s)| (s[UNTIL] > now) == locked)
                .min_by_key(|(_, s)| s[SINCE])
                .map(|(i, _)| i)
        };
        pick(false).or_else(|| pick(true)).unwrap_or(0)
    });
    slots[i] = [hi, lo, now, 0, 0];
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn locks_out_after_max_failures_and_expires() {
        let t = LoginThrottle::new(3, Duration::from_secs(60), Duration::from_millis(300)).unwrap();
        let a = ip("10.0.0.1");
        assert_eq!(t.record_failure(a), Failure::Counted(1));
        assert_eq!(t.record_failure(a), Failure::Counted(2));
        assert!(t.locked(a).is_none());
        assert_eq!(t.record_failure(a), Failure::LockedOut);
        assert!(t.locked(a).is_some());
        // The mapped form is the same address; another address is not.
        assert!(t.locked(ip("::ffff:10.0.0.1")).is_some());
        assert!(t.locked(ip("10.0.0.2")).is_none());
        assert_eq!(t.record_failure(a), Failure::LockedOut);
        std::thread::sleep(Duration::from_millis(400));
        assert!(t.locked(a).is_none(), "lock-out expired");
        assert_eq!(t.record_failure(a), Failure::Counted(1));
    }

    #[test]
    fn attempts_in_flight_count_and_successes_are_taken_back() {
        let t = LoginThrottle::new(3, Duration::from_secs(60), Duration::from_secs(60)).unwrap();
        let a = ip("10.0.0.9");
        // Three attempts at once: a fourth is refused before any ends.
        for _ in 0..3 {
            t.begin(a).unwrap();
        }
        assert!(t.begin(a).is_err(), "no more than 3 guesses in flight");
        // Two succeed (taken back), one fails: 1 failure counted.
        assert_eq!(t.end(a, true), Failure::Counted(2));
        assert_eq!(t.end(a, true), Failure::Counted(1));
        assert_eq!(t.end(a, false), Failure::Counted(1));
        assert!(t.locked(a).is_none());
        assert_eq!(t.record_failure(a), Failure::Counted(2));
        assert_eq!(t.record_failure(a), Failure::LockedOut);
        assert!(t.begin(a).is_err());
        assert!(t.locked(a).is_some());
    }

    #[test]
    fn old_failures_are_forgotten_and_zero_disables() {
        let t = LoginThrottle::new(2, Duration::from_millis(200), Duration::from_secs(60)).unwrap();
        let a = ip("::1");
        assert_eq!(t.record_failure(a), Failure::Counted(1));
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(t.record_failure(a), Failure::Counted(1), "new window");
        let off = LoginThrottle::new(0, Duration::from_secs(1), Duration::from_secs(1)).unwrap();
        for _ in 0..10 {
            assert_eq!(off.record_failure(a), Failure::Counted(0));
        }
        assert!(off.locked(a).is_none());
    }

    #[test]
    fn ipv6_counts_per_64_and_ipv4_per_address() {
        // Keys: a /64 is one client, the next /64 another; IPv4 (and its
        // mapped form) per address; no IPv6 /64 collides with an IPv4 key.
        assert_eq!(
            key(ip("2001:db8:1:2::1")),
            key(ip("2001:db8:1:2:ffff:ffff:ffff:ffff"))
        );
        assert_ne!(key(ip("2001:db8:1:2::1")), key(ip("2001:db8:1:3::1")));
        assert_eq!(key(ip("192.0.2.7")), key(ip("::ffff:192.0.2.7")));
        assert_ne!(key(ip("192.0.2.7")), key(ip("192.0.2.8")));
        assert_ne!(
            key(ip("::5")),
            key(ip("0.0.0.5")),
            "::/64 is no IPv4 address"
        );
        // A client rotating through its /64 is locked out as one.
        let t = LoginThrottle::new(3, Duration::from_secs(60), Duration::from_secs(60)).unwrap();
        assert_eq!(t.record_failure(ip("2001:db8:1:2::a")), Failure::Counted(1));
        assert_eq!(t.record_failure(ip("2001:db8:1:2::b")), Failure::Counted(2));
        assert_eq!(
            t.record_failure(ip("2001:db8:1:2:dead:beef:0:1")),
            Failure::LockedOut
        );
        assert!(t.locked(ip("2001:db8:1:2::c")).is_some(), "same /64");
        assert!(t.begin(ip("2001:db8:1:2::d")).is_err());
        assert!(t.locked(ip("2001:db8:1:3::a")).is_none(), "next /64");
        // IPv4 stays per address, and the mapped form is the same address.
        for n in 1..=3 {
            let v4 = ip(&format!("198.51.100.{n}"));
            assert_eq!(t.record_failure(v4), Failure::Counted(1));
        }
        assert_eq!(
            t.record_failure(ip("::ffff:198.51.100.1")),
            Failure::Counted(2)
        );
    }

    #[test]
    fn full_table_reuses_the_oldest_unlocked_slot() {
        let t = LoginThrottle::new(2, Duration::from_secs(60), Duration::from_secs(60)).unwrap();
        let locked = ip("192.0.2.1");
        t.record_failure(locked);
        t.record_failure(locked);
        for i in 0..(SLOTS as u32 + 10) {
            let other = IpAddr::from(std::net::Ipv6Addr::from(
                0x2001_0db8_u128 << 96 | u128::from(i) << 64,
            ));
            t.record_failure(other);
        }
        assert!(t.locked(locked).is_some(), "locked-out address kept");
    }
}
