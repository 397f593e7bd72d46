//! Connection limits that hold across processes: a total cap and a
//! per-client-IP cap counted in one shared-memory table.
//!
//! The table ([`SharedLimiter`]) is mapped `MAP_SHARED` when the server is
//! bound, before any fork, so the threads of the threading and async
//! strategies, the children of the forking strategy and the workers of the
//! prefork pool all count in the same slots: the limits are identical in
//! every strategy. Each admitted connection holds one slot, tagged with the
//! pid of the process serving it. A [`SharedPermit`] frees its slot when it
//! is dropped (the session ended: QUIT, reset, timeout, panic). A process
//! that dies without dropping it (SIGKILL) cannot free anything: when a
//! connection would be refused, the table first reclaims every slot whose
//! owner no longer runs (gone, or a zombie waiting to be reaped) and counts
//! again, so a killed session child never holds its slot past its death.
//!
//! Admission takes a process-shared robust mutex ([`Lock`]) for the scan;
//! a holder that dies inside it leaves the lock recoverable, not stuck.
//!
//! [`LimitLayer`] applies the table to any [`RequestHandler`]; the builder
//! settings [`ServerBuilder::per_ip_limit`] and
//! [`ServerBuilder::connection_limit`] install it, and
//! [`ServerBuilder::limit_refusal`] lets the application answer a refused
//! client (an FTP server's `421`) before the connection is closed.
//!
//! [`ServerBuilder::per_ip_limit`]: crate::server::ServerBuilder::per_ip_limit
//! [`ServerBuilder::connection_limit`]: crate::server::ServerBuilder::connection_limit
//! [`ServerBuilder::limit_refusal`]: crate::server::ServerBuilder::limit_refusal

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::handler::{Request, RequestHandler};
use crate::process::{Lock, LockError, SharedAtomics};
use crate::Result;

/// Slots in a table that has only a per-IP limit (the table is scanned up
/// to its high-water mark, so a large capacity costs only memory).
const DEFAULT_CAPACITY: usize = 16_384;

/// Words per slot: owner pid (0 = free), then the IPv6 address in two halves.
const WORDS: usize = 3;

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitRefusal {
    /// The server already serves `max` connections.
    Total {
        /// The configured total.
        max: usize,
    },
    /// This client address already has `max` connections.
    PerIp {
        /// The configured per-address maximum.
        max: usize,
    },
}

impl fmt::Display for LimitRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LimitRefusal::Total { max } => write!(f, "the server already has {max} connections"),
            LimitRefusal::PerIp { max } => {
                write!(f, "this address already has {max} connections")
            }
        }
    }
}

/// The callback a server runs for a refused connection before closing it.
pub type RefusalHook = Arc<dyn Fn(&mut Request, LimitRefusal) + Send + Sync>;

/// Connection counts shared by every process forked after it was created.
///
/// Cheap to clone (clones share the table).
#[derive(Clone)]
pub struct SharedLimiter {
    inner: Arc<Table>,
}

struct Table {
    max_total: Option<usize>,
    max_per_ip: Option<usize>,
    capacity: usize,
    lock: Lock,
    /// Word 0: high-water mark (slots ever used); then `capacity` slots.
    words: SharedAtomics,
}

impl fmt::Debug for SharedLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedLimiter")
            .field("max_total", &self.inner.max_total)
            .field("max_per_ip", &self.inner.max_per_ip)
            .field("capacity", &self.inner.capacity)
            .finish()
    }
}

fn key(ip: IpAddr) -> (u64, u64) {
    let v6: Ipv6Addr = match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    let bits = u128::from(v6);
    ((bits >> 64) as u64, bits as u64)
}

fn my_pid() -> u64 {
    u64::from(std::process::id())
}

/// Whether process `pid` still runs (a zombie does not).
fn alive(pid: u64) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), None) {
        Err(nix::errno::Errno::ESRCH) => false,
        _ => {
            // Exists; a killed child not yet reaped is a zombie.
            match std::fs::read_to_string(format!("/proc/{raw}/stat")) {
                Ok(stat) => !stat.rsplit_once(')').is_some_and(|(_, rest)| {
                    matches!(rest.trim_start().as_bytes().first(), Some(b'Z' | b'X'))
                }),
                Err(_) => true,
            }
        }
    }
}

impl SharedLimiter {
    /// A table allowing at most `max_total` connections in all and
    /// `max_per_ip` per client address (`None` = no such limit; `Some(0)`
    /// refuses everyone).
    ///
    /// # Errors
    /// Mapping the shared memory or creating the lock failed.
    pub fn new(max_total: Option<usize>, max_per_ip: Option<usize>) -> Result<Self> {
        let capacity = max_total.unwrap_or(DEFAULT_CAPACITY).max(1);
        Ok(SharedLimiter {
            inner: Arc::new(Table {
                max_total,
                max_per_ip,
                capacity,
                lock: Lock::new()?,
                words: SharedAtomics::new(1 + capacity * WORDS)?,
            }),
        })
    }

    fn word(&self, i: usize) -> &AtomicU64 {
        // Every index used is below 1 + capacity * WORDS (checked by the
        // callers' loops); `get` only fails past the end.
        self.inner
            .words
            .get(i)
            .unwrap_or_else(|| unreachable!("slot word {i} past the table"))
    }

    fn owner(&self, slot: usize) -> &AtomicU64 {
        self.word(1 + slot * WORDS)
    }

    /// Takes a slot for `ip` in the calling process, or says which limit
    /// refuses it. IPv4-mapped IPv6 addresses count as their IPv4 address.
    ///
    /// # Errors
    /// The shared lock failed (not a refusal: the caller decides).
    pub fn try_acquire(
        &self,
        ip: IpAddr,
    ) -> io::Result<std::result::Result<SharedPermit, LimitRefusal>> {
        let _guard = match self.inner.lock.acquire() {
            Ok(g) => g,
            Err(LockError::OwnerDied(g)) => g,
            Err(e) => return Err(io::Error::other(crate::Error::from(e))),
        };
        let (hi, lo) = key(ip);
        let verdict = match self.check(hi, lo) {
            Ok(free) => Ok(free),
            Err(_) => {
                // Refused: first forget slots of processes that died
                // without freeing them, then count again.
                self.reclaim();
                self.check(hi, lo)
            }
        };
        let slot = match verdict {
            Ok(slot) => slot,
            Err(why) => return Ok(Err(why)),
        };
        let hwm = self.word(0);
        if slot >= hwm.load(Ordering::Acquire) as usize {
            hwm.store(slot as u64 + 1, Ordering::Release);
        }
        self.word(2 + slot * WORDS).store(hi, Ordering::Relaxed);
        self.word(3 + slot * WORDS).store(lo, Ordering::Relaxed);
        let pid = my_pid();
        self.owner(slot).store(pid, Ordering::Release);
        Ok(Ok(SharedPermit {
            limiter: self.clone(),
            slot,
            pid,
            ip,
        }))
    }

    /// Under the lock: the free slot to use, or the refusal.
    fn check(&self, hi: u64, lo: u64) -> std::result::Result<usize, LimitRefusal> {
        let hwm = (self.word(0).load(Ordering::Acquire) as usize).min(self.inner.capacity);
        let (mut used, mut same, mut free) = (0usize, 0usize, None);
        for slot in 0..hwm {
            if self.owner(slot).load(Ordering::Acquire) == 0 {
                free.get_or_insert(slot);
                continue;
            }
            used += 1;
            if self.word(2 + slot * WORDS).load(Ordering::Relaxed) == hi
                && self.word(3 + slot * WORDS).load(Ordering::Relaxed) == lo
            {
                same += 1;
            }
        }
        if let Some(max) = self.inner.max_total {
            if used >= max {
                return Err(LimitRefusal::Total { max });
            }
        }
        if let Some(max) = self.inner.max_per_ip {
            if same >= max {
                return Err(LimitRefusal::PerIp { max });
            }
        }
        match free {
            Some(slot) => Ok(slot),
            None if hwm < self.inner.capacity => Ok(hwm),
            None => Err(LimitRefusal::Total {
                max: self.inner.capacity,
            }),
        }
    }

    /// Under the lock: frees the slots of processes that no longer run.
    fn reclaim(&self) {
        let me = my_pid();
        let hwm = (self.word(0).load(Ordering::Acquire) as usize).min(self.inner.capacity);
        for slot in 0..hwm {
            let owner = self.owner(slot).load(Ordering::Acquire);
            if owner != 0 && owner != me && !alive(owner) {
                // Only if still that owner (a racing release is harmless).
                let _ = self.owner(slot).compare_exchange(
                    owner,
                    0,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                );
                tracing::debug!(
                    slot,
                    pid = owner,
                    "connection slot of a dead process reclaimed"
                );
            }
        }
    }

    /// Connections counted now (all processes), including slots of dead
    /// processes not yet reclaimed.
    pub fn live(&self) -> usize {
        let hwm = (self.word(0).load(Ordering::Acquire) as usize).min(self.inner.capacity);
        (0..hwm)
            .filter(|&s| self.owner(s).load(Ordering::Acquire) != 0)
            .count()
    }

    /// Connections counted now for `ip`.
    pub fn current(&self, ip: IpAddr) -> usize {
        let (hi, lo) = key(ip);
        let hwm = (self.word(0).load(Ordering::Acquire) as usize).min(self.inner.capacity);
        (0..hwm)
            .filter(|&s| {
                self.owner(s).load(Ordering::Acquire) != 0
                    && self.word(2 + s * WORDS).load(Ordering::Relaxed) == hi
                    && self.word(3 + s * WORDS).load(Ordering::Relaxed) == lo
            })
            .count()
    }
}

/// One connection's slot in a [`SharedLimiter`]; freed on drop by the
/// process that took it (a forked copy of the permit frees nothing).
pub struct SharedPermit {
    limiter: SharedLimiter,
    slot: usize,
    pid: u64,
    ip: IpAddr,
}

impl fmt::Debug for SharedPermit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedPermit")
            .field("ip", &self.ip)
            .field("slot", &self.slot)
            .finish()
    }
}

impl SharedPermit {
    /// The address this permit counts against.
    pub fn ip(&self) -> IpAddr {
        self.ip
    }
}

impl Drop for SharedPermit {
    fn drop(&mut self) {
        if my_pid() != self.pid {
            return;
        }
        // One atomic store frees the slot; no lock needed.
        let _ = self.limiter.owner(self.slot).compare_exchange(
            self.pid,
            0,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }
}

/// Admits a connection through a [`SharedLimiter`] in `setup`; a refused
/// connection gets the refusal hook (if any) and is closed without running
/// the inner handler. The slot is held until `finish` (or the drop of the
/// handler).
pub struct LimitLayer<H> {
    inner: H,
    limiter: SharedLimiter,
    refusal: Option<RefusalHook>,
    permit: Option<SharedPermit>,
    refused: bool,
}

impl<H: fmt::Debug> fmt::Debug for LimitLayer<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LimitLayer")
            .field("inner", &self.inner)
            .field("limiter", &self.limiter)
            .field("permit", &self.permit)
            .field("refused", &self.refused)
            .finish()
    }
}

/// Wraps a handler factory with [`LimitLayer`]. Create the limiter before
/// the server forks (at bind time) so every process shares it.
pub fn limit_layer<F, H>(
    limiter: SharedLimiter,
    refusal: Option<RefusalHook>,
    factory: F,
) -> impl Fn() -> LimitLayer<H> + Send + Sync + 'static
where
    F: Fn() -> H + Send + Sync + 'static,
    H: RequestHandler,
{
    move || LimitLayer {
        inner: factory(),
        limiter: limiter.clone(),
        refusal: refusal.clone(),
        permit: None,
        refused: false,
    }
}

impl<H: RequestHandler> RequestHandler for LimitLayer<H> {
    fn setup(&mut self, req: &mut Request) -> io::Result<()> {
        if let Some(addr) = req.peer_addr().as_inet() {
            match self.limiter.try_acquire(addr.ip())? {
                Ok(p) => self.permit = Some(p),
                Err(why) => {
                    tracing::info!(peer = %addr, reason = %why, "connection refused by limits");
                    self.refused = true;
                    if let Some(hook) = &self.refusal {
                        hook(req, why);
                    }
                    return Ok(());
                }
            }
        }
        self.inner.setup(req)
    }

    fn handle(&mut self, req: &mut Request) -> io::Result<()> {
        if self.refused {
            return Ok(());
        }
        self.inner.handle(req)
    }

    fn finish(&mut self, req: &mut Request) -> io::Result<()> {
        if self.refused {
            return Ok(());
        }
        let r = self.inner.finish(req);
        self.permit = None;
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn total_and_per_ip_limits_free_slots_on_drop() {
        let l = SharedLimiter::new(Some(3), Some(2)).unwrap();
        let a1 = l.try_acquire(ip("127.0.0.1")).unwrap().unwrap();
        let a2 = l.try_acquire(ip("127.0.0.1")).unwrap().unwrap();
        assert_eq!(
            l.try_acquire(ip("127.0.0.1")).unwrap().unwrap_err(),
            LimitRefusal::PerIp { max: 2 }
        );
        // IPv4-mapped counts as the same address.
        assert!(l.try_acquire(ip("::ffff:127.0.0.1")).unwrap().is_err());
        let b = l.try_acquire(ip("127.0.0.2")).unwrap().unwrap();
        assert_eq!(
            l.try_acquire(ip("127.0.0.3")).unwrap().unwrap_err(),
            LimitRefusal::Total { max: 3 }
        );
        assert_eq!(l.live(), 3);
        drop(a1);
        assert_eq!(l.live(), 2);
        assert_eq!(l.current(ip("127.0.0.1")), 1);
        let a3 = l.try_acquire(ip("127.0.0.1")).unwrap().unwrap();
        drop((a2, b, a3));
        assert_eq!(l.live(), 0);
    }

    #[test]
    fn zero_refuses_everyone() {
        let l = SharedLimiter::new(None, Some(0)).unwrap();
        assert!(l.try_acquire(ip("127.0.0.1")).unwrap().is_err());
        assert_eq!(l.live(), 0);
    }

    #[test]
    fn slots_of_dead_processes_are_reclaimed() {
        let l = SharedLimiter::new(Some(1), None).unwrap();
        // A slot owned by a pid that cannot exist (above pid_max).
        l.word(0).store(1, Ordering::Release);
        l.owner(0).store(u64::from(u32::MAX), Ordering::Release);
        assert_eq!(l.live(), 1);
        let p = l.try_acquire(ip("10.0.0.1")).unwrap().unwrap();
        assert_eq!(l.live(), 1);
        drop(p);
        assert_eq!(l.live(), 0);
    }

    #[test]
    fn live_processes_keep_their_slots() {
        let l = SharedLimiter::new(Some(1), None).unwrap();
        // pid 1 (init) always runs.
        l.word(0).store(1, Ordering::Release);
        l.owner(0).store(1, Ordering::Release);
        assert!(l.try_acquire(ip("10.0.0.1")).unwrap().is_err());
    }
}
