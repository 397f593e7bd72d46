//! Total and per-IP connection limits that work for threads *and* forked
//! children.
//!
//! Each admitted connection gets a [`Token`]: the write end of a pipe whose
//! read end the [`Limits`] table keeps. The token lives as long as the
//! session (it is moved into the handler). When the session ends — thread
//! returns, or child process exits, or crashes — the last copy of the write
//! end closes and the read end reports `POLLHUP`. Before each admission the
//! table polls its read ends and forgets the hung-up ones, so the count is
//! exact at the moment it matters, with no shared memory, no signals and no
//! cooperation from a process that may have died.
//!
//! In forking mode the table lives in the parent: the server's accept loop
//! calls [`Gate::verify`] before forking, the verdict (and token) is left
//! in a small hand-off map keyed by the peer address, and the child takes
//! it in `setup`. The parent drops its copies of earlier tokens at the next
//! `verify` (by then the children hold their own copies). In threading mode
//! the same calls happen in one process.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Mutex, MutexGuard};

use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout};

/// Proof that a connection was admitted; dropping it frees the slot.
#[derive(Debug)]
pub struct Token {
    _write_end: OwnedFd,
}

/// The verdict for one connection.
#[derive(Debug)]
pub enum Admission {
    /// Serve it; keep the token for the whole session (it is never read,
    /// only held until it is dropped).
    Admitted(#[allow(dead_code)] Token),
    /// Reply `421` with this text and close.
    Refused(&'static str),
}

/// The live-connection table.
#[derive(Debug)]
pub struct Limits {
    max_total: Option<usize>,
    max_per_ip: Option<usize>,
    live: Vec<(IpAddr, OwnedFd)>,
}

impl Limits {
    /// A table with the given limits (`None` = unlimited).
    pub fn new(max_total: Option<usize>, max_per_ip: Option<usize>) -> Limits {
        Limits {
            max_total,
            max_per_ip,
            live: Vec::new(),
        }
    }

    /// Forgets connections whose token has been dropped everywhere.
    fn reap(&mut self) -> io::Result<()> {
        if self.live.is_empty() {
            return Ok(());
        }
        let gone: Vec<bool> = {
            let mut fds: Vec<PollFd<'_>> = self
                .live
                .iter()
                .map(|(_, r)| PollFd::new(r.as_fd(), PollFlags::POLLIN))
                .collect();
            loop {
                match nix::poll::poll(&mut fds, PollTimeout::ZERO) {
                    Ok(_) => break,
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => return Err(e.into()),
                }
            }
            fds.iter()
                .map(|f| {
                    f.revents().is_some_and(|r| {
                        r.intersects(PollFlags::POLLHUP | PollFlags::POLLIN | PollFlags::POLLERR)
                    })
                })
                .collect()
        };
        let mut i = 0;
        self.live.retain(|_| {
            let keep = !gone[i];
            i += 1;
            keep
        });
        Ok(())
    }

    /// The number of live connections (after forgetting finished ones).
    ///
    /// # Errors
    /// `poll` failed.
    pub fn live(&mut self) -> io::Result<usize> {
        self.reap()?;
        Ok(self.live.len())
    }

    /// Admits or refuses a connection from `ip`.
    ///
    /// # Errors
    /// `poll` or `pipe2` failed (out of descriptors, for example).
    pub fn admit(&mut self, ip: IpAddr) -> io::Result<Admission> {
        self.reap()?;
        let ip = ip.to_canonical();
        if self.max_total.is_some_and(|max| self.live.len() >= max) {
            return Ok(Admission::Refused("Too many connections, try again later."));
        }
        if let Some(max) = self.max_per_ip {
            let same = self.live.iter().filter(|(i, _)| *i == ip).count();
            if same >= max {
                return Ok(Admission::Refused(
                    "Too many connections from your address, try again later.",
                ));
            }
        }
        let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        self.live.push((ip, r));
        Ok(Admission::Admitted(Token { _write_end: w }))
    }
}

/// The limits table plus the hand-off from the accept loop to handlers.
#[derive(Debug)]
pub struct Gate {
    limits: Mutex<Limits>,
    pending: Mutex<HashMap<SocketAddr, Admission>>,
    forking: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Gate {
    /// A gate for threading (`forking == false`) or forking mode.
    pub fn new(limits: Limits, forking: bool) -> Gate {
        Gate {
            limits: Mutex::new(limits),
            pending: Mutex::new(HashMap::new()),
            forking,
        }
    }

    /// Decides on a new connection; called by the accept loop before the
    /// connection is handed to a thread or child. Never refuses at the
    /// socket level: a refused client gets its `421` from the handler.
    pub fn verify(&self, peer: SocketAddr) {
        let mut pending = lock(&self.pending);
        if self.forking {
            // Earlier children own their copies now; drop the parent's so
            // their exit shows up as a hang-up.
            pending.clear();
        }
        let verdict = match lock(&self.limits).admit(peer.ip()) {
            Ok(a) => a,
            Err(e) => {
                tracing::error!(error = %e, "connection limit bookkeeping failed");
                Admission::Refused("Server busy, try again later.")
            }
        };
        pending.insert(peer, verdict);
    }

    /// Waits until every admitted session has ended, or `grace` passed.
    /// Returns the number of sessions still running. Used at shutdown,
    /// after the accept loop stopped.
    pub fn wait_idle(&self, grace: std::time::Duration) -> usize {
        if self.forking {
            lock(&self.pending).clear();
        }
        let deadline = std::time::Instant::now() + grace;
        loop {
            let live = lock(&self.limits).live().unwrap_or(0);
            if live == 0 || std::time::Instant::now() >= deadline {
                return live;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Takes the verdict [`verify`](Self::verify) left for `peer`. A
    /// connection that was never verified is refused (fail closed).
    pub fn take(&self, peer: SocketAddr) -> Admission {
        lock(&self.pending)
            .remove(&peer)
            .unwrap_or(Admission::Refused("Server busy, try again later."))
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
        let mut l = Limits::new(Some(3), Some(2));
        let a1 = l.admit(ip("127.0.0.1")).unwrap();
        let a2 = l.admit(ip("127.0.0.1")).unwrap();
        assert!(matches!(a1, Admission::Admitted(_)));
        assert!(matches!(a2, Admission::Admitted(_)));
        assert!(matches!(
            l.admit(ip("127.0.0.1")).unwrap(),
            Admission::Refused(_)
        ));
        // IPv4-mapped counts as the same address.
        assert!(matches!(
            l.admit(ip("::ffff:127.0.0.1")).unwrap(),
            Admission::Refused(_)
        ));
        let b = l.admit(ip("127.0.0.2")).unwrap();
        assert!(matches!(b, Admission::Admitted(_)));
        assert!(matches!(
            l.admit(ip("127.0.0.3")).unwrap(),
            Admission::Refused(_)
        ));
        drop(a1);
        assert_eq!(l.live().unwrap(), 2);
        assert!(matches!(
            l.admit(ip("127.0.0.1")).unwrap(),
            Admission::Admitted(_)
        ));
        drop((a2, b));
    }

    #[test]
    fn gate_hands_verdicts_to_handlers() {
        let gate = Gate::new(Limits::new(Some(1), None), false);
        let p1: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let p2: SocketAddr = "127.0.0.1:5001".parse().unwrap();
        gate.verify(p1);
        gate.verify(p2);
        let t1 = gate.take(p1);
        assert!(matches!(t1, Admission::Admitted(_)));
        assert!(matches!(gate.take(p2), Admission::Refused(_)));
        // Unknown peers fail closed.
        assert!(matches!(gate.take(p2), Admission::Refused(_)));
        drop(t1);
        gate.verify(p2);
        assert!(matches!(gate.take(p2), Admission::Admitted(_)));
    }
}
