//! Health that tells the truth: an HAProxy `agent-check` responder and the
//! drain notice.
//!
//! A balancer in front of several servers asks each one, every check
//! interval, whether to send it traffic. Two questions:
//!
//! - the **TCP check** (`check`): does the listening port accept? The
//!   server closes its listening socket (in every process that holds it)
//!   as soon as no one will accept from it, so this check never says UP
//!   for a socket nobody serves;
//! - the **agent check** (`agent-check agent-port P`): HAProxy connects to
//!   port P and reads one line: `ready up 100%` (serving; `ready` also
//!   lifts an earlier `drain`, which HAProxy keeps as an administrative
//!   state until told otherwise), `drain`, `maint` or `down`.
//!   [`ServerBuilder::health`](crate::server::ServerBuilder::health) binds
//!   that port; the server answers it with its [`HealthState`].
//!
//! **Drain first, close later.** When a shutdown (or a SIGHUP restart)
//! begins, the state turns to `drain` at once and the server keeps
//! accepting for the
//! [`drain_notice`](crate::server::ServerBuilder::drain_notice) — long
//! enough for the balancer's next agent check to see `drain` and stop
//! sending new connections — and only then stops accepting and closes the
//! listening socket. Connections that arrived in the meantime are served.
//!
//! **Fork safety: no thread.** The forking and prefork parents must stay
//! single-threaded when they fork, so the agent port is not answered from
//! a thread there. It is one more descriptor in the poll of the loop that
//! already runs in that process: the accept loop (synchronous, threading,
//! forking) or the prefork parent's pool loop. Each answer is one
//! non-blocking `accept`, one non-blocking `write` of a line shorter than
//! any socket buffer, and a close — it never blocks the loop. Only the
//! async strategy, whose process is multi-threaded by design and never
//! forks, answers from a small thread of its own. Prefork workers and
//! forked children never answer and hold no copy of the agent socket
//! (each points it at `/dev/null` right after the fork), so once the
//! parent has closed it, or died, an agent check is refused at once even
//! while workers or children still finish their requests.
//!
//! **The agent port closes with the listening socket**, when
//! [`server_close`](crate::server::Server::server_close) begins, not when
//! its drain ends: from then on the server takes no new connection, and a
//! new instance started on the same agent address (HAProxy's `agent-port`
//! names one port per server line) can bind it while the old one still
//! finishes its requests. A balancer treats a refused agent check as "no
//! news" and relies on its TCP check, which the closed listening socket
//! fails.

use std::fmt;
use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use crate::Result;

/// What the agent check reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthState {
    /// Serving: send traffic (with the weight).
    Up,
    /// Finishing: send no new connections, keep the existing ones.
    Drain,
    /// Administratively out of service.
    Maint,
    /// Not able to serve.
    Down,
}

impl HealthState {
    fn code(self) -> u8 {
        match self {
            HealthState::Up => 0,
            HealthState::Drain => 1,
            HealthState::Maint => 2,
            HealthState::Down => 3,
        }
    }

    fn from_code(c: u8) -> Self {
        match c {
            0 => HealthState::Up,
            1 => HealthState::Drain,
            2 => HealthState::Maint,
            _ => HealthState::Down,
        }
    }
}

/// The line HAProxy's `agent-check` reads for `state` and `weight` (a
/// percentage of the configured weight, 0–100; only sent with `up`).
/// `up` is sent as `ready up W%`: HAProxy keeps `drain` and `maint` as
/// administrative states until the agent says `ready`, so a restarted
/// server that only said `up` would stay drained.
///
/// ```
/// use socketserver::server::health::{agent_reply, HealthState};
/// assert_eq!(agent_reply(HealthState::Up, 100), "ready up 100%\n");
/// assert_eq!(agent_reply(HealthState::Up, 250), "ready up 100%\n");
/// assert_eq!(agent_reply(HealthState::Drain, 100), "drain\n");
/// assert_eq!(agent_reply(HealthState::Down, 50), "down\n");
/// ```
pub fn agent_reply(state: HealthState, weight: u8) -> String {
    match state {
        HealthState::Up => format!("ready up {}%\n", weight.min(100)),
        HealthState::Drain => "drain\n".into(),
        HealthState::Maint => "maint\n".into(),
        HealthState::Down => "down\n".into(),
    }
}

#[derive(Debug)]
struct Shared {
    state: AtomicU8,
    weight: AtomicU8,
}

/// Changes what the agent check reports, from anywhere (cheap to clone,
/// `Send + Sync`). A shutdown turns it to `drain` by itself.
#[derive(Clone)]
pub struct HealthHandle(Arc<Shared>);

impl HealthHandle {
    /// Sets the state.
    pub fn set(&self, state: HealthState) {
        self.0.state.store(state.code(), Ordering::SeqCst);
    }

    /// Sets the weight reported with `up`, in percent (capped at 100).
    pub fn set_weight(&self, percent: u8) {
        self.0.weight.store(percent.min(100), Ordering::SeqCst);
    }

    /// The current state.
    pub fn state(&self) -> HealthState {
        HealthState::from_code(self.0.state.load(Ordering::SeqCst))
    }

    /// The line an agent check would read now.
    pub fn reply(&self) -> String {
        agent_reply(self.state(), self.0.weight.load(Ordering::SeqCst))
    }
}

impl fmt::Debug for HealthHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("HealthHandle").field(&self.state()).finish()
    }
}

/// The agent-check socket and its state.
pub(crate) struct Health {
    listener: TcpListener,
    shared: HealthHandle,
}

impl fmt::Debug for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Health")
            .field("addr", &self.listener.local_addr().ok())
            .field("state", &self.shared.state())
            .finish()
    }
}

impl Health {
    /// Binds the agent port (`SO_REUSEADDR`, non-blocking, close-on-exec).
    pub(crate) fn bind(addr: SocketAddr) -> Result<Self> {
        let listener = TcpListener::bind(addr).map_err(|e| {
            crate::Error::Io(io::Error::new(
                e.kind(),
                format!("cannot bind the health port {addr}: {e}"),
            ))
        })?;
        Self::adopt(listener)
    }

    /// Serves the agent on an already listening socket (one inherited
    /// across a restart).
    pub(crate) fn adopt(listener: TcpListener) -> Result<Self> {
        listener.set_nonblocking(true)?;
        Ok(Health {
            listener,
            shared: HealthHandle(Arc::new(Shared {
                state: AtomicU8::new(HealthState::Up.code()),
                weight: AtomicU8::new(100),
            })),
        })
    }

    pub(crate) fn handle(&self) -> HealthHandle {
        self.shared.clone()
    }

    pub(crate) fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.listener.as_fd()
    }

    /// In a forked child that never answers (a forking server's child, a
    /// prefork worker): points this process's copy of the agent socket at
    /// `/dev/null`, so the port closes with the server, not when the last
    /// child exits. The number stays open (on `/dev/null`), so nothing
    /// this process still holds can act on a reused descriptor.
    pub(crate) fn leave_in_child(&self) {
        if let Err(e) = crate::process::point_at_dev_null(self.fd().as_raw_fd()) {
            tracing::debug!(error = %e, "could not release the agent socket in a child");
        }
    }

    /// Closes the agent port in this process as the server stops accepting
    /// (at [`server_close`](crate::server::Server::server_close), before
    /// the drain): a successor started on the same `--health` address can
    /// bind it at once, and an agent check is refused, as the TCP check of
    /// the closed listening socket is. The number stays open on
    /// `/dev/null` (as in [`leave_in_child`](Self::leave_in_child)): the
    /// loop that polled it has ended, and nothing else answers on it.
    pub(crate) fn release(&self) {
        if let Err(e) = crate::process::point_at_dev_null(self.fd().as_raw_fd()) {
            tracing::warn!(error = %e, "could not close the agent port");
        }
    }

    /// A duplicate of the agent socket, to hand to a new process.
    pub(crate) fn try_clone_fd(&self) -> io::Result<OwnedFd> {
        Ok(OwnedFd::from(self.listener.try_clone()?))
    }

    /// Answers every agent connection waiting now; never blocks. Returns
    /// how many were answered.
    pub(crate) fn answer_pending(&self) -> usize {
        let mut n = 0;
        // Bounded: a flood of connections cannot hold the loop.
        while n < 64 {
            match self.listener.accept() {
                Ok((mut s, _)) => {
                    let _ = s.set_nonblocking(true);
                    let _ = s.write_all(self.shared.reply().as_bytes());
                    n += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn answers_the_state_it_holds() {
        let h = Health::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = h.local_addr().unwrap();
        let ask = |h: &Health| {
            let mut c = std::net::TcpStream::connect(addr).unwrap();
            let mut answered = 0;
            for _ in 0..100 {
                answered += h.answer_pending();
                if answered > 0 {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            assert_eq!(answered, 1);
            let mut s = String::new();
            c.read_to_string(&mut s).unwrap();
            s
        };
        assert_eq!(ask(&h), "ready up 100%\n");
        h.handle().set_weight(40);
        assert_eq!(ask(&h), "ready up 40%\n");
        h.handle().set(HealthState::Drain);
        assert_eq!(ask(&h), "drain\n");
        h.handle().set(HealthState::Maint);
        assert_eq!(ask(&h), "maint\n");
        assert_eq!(h.answer_pending(), 0);
    }
}
