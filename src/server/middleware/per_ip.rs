//! Connections per client IP address.
//!
//! `accept` cannot be deferred per address (the address is only known once
//! the connection is accepted), so a server checks the limiter right after
//! `accept` and answers an over-limit client with a clean close. The permit
//! is RAII: it is held for the life of the connection (moved into the
//! thread or task serving it) and released when dropped, however the
//! connection ends — an early return or a panic cannot leak a slot.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

/// Counts open connections per client IP and refuses more than a maximum.
///
/// Cheap to clone: clones share the same counts, so one limiter can be
/// handed to every worker thread or task of a server.
#[derive(Clone)]
pub struct PerIpLimiter {
    inner: Arc<Shared>,
}

struct Shared {
    max: usize,
    counts: Mutex<HashMap<IpAddr, usize>>,
}

impl fmt::Debug for PerIpLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PerIpLimiter")
            .field("max", &self.inner.max)
            .field("clients", &self.counts().len())
            .finish()
    }
}

impl PerIpLimiter {
    /// A limiter allowing at most `max_per_ip` simultaneous connections from
    /// any one address (`0` refuses everyone).
    pub fn new(max_per_ip: usize) -> Self {
        PerIpLimiter {
            inner: Arc::new(Shared {
                max: max_per_ip,
                counts: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The configured maximum per address.
    pub fn max_per_ip(&self) -> usize {
        self.inner.max
    }

    /// Takes a slot for `ip`, or `None` when it already has the maximum.
    /// IPv4-mapped IPv6 addresses count as their IPv4 address, so a dual
    /// stack listener cannot be used to double the limit.
    pub fn try_acquire(&self, ip: IpAddr) -> Option<IpPermit> {
        let ip = canonical(ip);
        let mut counts = self.counts();
        let n = counts.entry(ip).or_insert(0);
        if *n >= self.inner.max {
            if *n == 0 {
                counts.remove(&ip);
            }
            return None;
        }
        *n += 1;
        Some(IpPermit {
            limiter: self.clone(),
            ip,
        })
    }

    /// Open connections currently counted for `ip`.
    pub fn current(&self, ip: IpAddr) -> usize {
        self.counts().get(&canonical(ip)).copied().unwrap_or(0)
    }

    fn counts(&self) -> MutexGuard<'_, HashMap<IpAddr, usize>> {
        // The map stays consistent even if a holder panicked: every update
        // is a single insert/remove.
        self.inner
            .counts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// One connection's slot in a [`PerIpLimiter`]; released on drop.
pub struct IpPermit {
    limiter: PerIpLimiter,
    ip: IpAddr,
}

impl fmt::Debug for IpPermit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IpPermit").field("ip", &self.ip).finish()
    }
}

impl IpPermit {
    /// The address this permit counts against.
    pub fn ip(&self) -> IpAddr {
        self.ip
    }
}

impl Drop for IpPermit {
    fn drop(&mut self) {
        let mut counts = self.limiter.counts();
        if let Some(n) = counts.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_each_address_separately_and_releases_on_drop() {
        let lim = PerIpLimiter::new(2);
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let p1 = lim.try_acquire(a).unwrap();
        let p2 = lim.try_acquire(a).unwrap();
        assert!(lim.try_acquire(a).is_none());
        let q = lim.try_acquire(b).unwrap();
        assert_eq!(lim.current(a), 2);
        drop(p1);
        assert_eq!(lim.current(a), 1);
        let p3 = lim.try_acquire(a).unwrap();
        drop((p2, p3, q));
        assert_eq!(lim.current(a), 0);
        assert_eq!(lim.current(b), 0);
        assert!(lim.counts().is_empty());
    }

    #[test]
    fn mapped_ipv6_counts_as_ipv4() {
        let lim = PerIpLimiter::new(1);
        let v4: IpAddr = "10.0.0.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        let _p = lim.try_acquire(v4).unwrap();
        assert!(lim.try_acquire(mapped).is_none());
    }

    #[test]
    fn zero_refuses_everyone() {
        let lim = PerIpLimiter::new(0);
        assert!(lim.try_acquire("127.0.0.1".parse().unwrap()).is_none());
        assert!(lim.counts().is_empty());
    }
}
