//! A prefork worker: serves each request on the accepting thread itself
//! (one at a time, as a prefork worker does), with no hand-off and no
//! system call of its own per request: the scoreboard is shared memory
//! written with atomic stores.
//!
//! **How it waits for a connection.** Over a stream socket the worker
//! blocks in `accept4` itself (the parent made the shared listening socket
//! blocking for the pool's life), as a hand-written pre-forked server
//! does: the kernel queues blocked accepters as *exclusive* waiters and
//! wakes one per connection, so a connection costs one worker one wake-up
//! and one `accept4`. The crate's shared accept loop `poll`s instead,
//! and `poll` on a socket shared by N idle workers wakes all N, the
//! losers paying a `poll`, an `accept4` that fails with `EAGAIN` and two
//! context switches each. (`EPOLLEXCLUSIVE` would also wake one, but the
//! wake-up is consumed by the `epoll_wait`: a worker retired at that
//! instant would strand the connection. A blocked `accept4` consumes a
//! wake-up only by dequeuing a connection, which the worker then serves.)
//! What happens to a connection once accepted is the shared loop's:
//! `verify_request`, the connection limits, PROXY protocol, the accept
//! error policy ([`AcceptBackoff`]) and `service_actions` all go through
//! [`Serving::handle_received`]. Over datagram sockets the worker runs the
//! shared loop ([`Serving::run_loop`]) unchanged.
//!
//! A second, small thread only watches the worker's end of its control
//! socket, whose other end only the parent holds. It blocks in `poll` and costs nothing
//! per request. What it reads there says why the worker stops:
//!
//! - **End of file** (the parent closed the pipe to retire this one
//!   worker, or the parent died): the watcher asks the loop to stop and
//!   **revokes the worker's copy of the listening socket at once** (its
//!   descriptor number is pointed at `/dev/null`, see [`Revocable`]), even
//!   in the middle of a request; the request in flight ends normally, then
//!   the worker leaves. So a socket nobody will serve never keeps
//!   accepting connections into its backlog, and a retired worker leaves
//!   the backlog to its siblings. A datagram socket is the exception, at
//!   a stop too: it has no backlog of its own (one receive queue shared
//!   by every worker), the worker's polling loop needs no interruption,
//!   and the request in flight sends its reply on it, so it stays open
//!   until the loop returns.
//! - **[`STOP`]** (the whole server stops: SIGTERM, `shutdown`): the
//!   watcher asks the loop to stop, then **takes the connections already
//!   queued in the backlog** itself (a zero-timeout `poll`, then
//!   `accept4`, until none is left, at most 256), even while the worker
//!   serves a request, and only then revokes the listening socket, gets
//!   the accepting thread out of `accept4` and closes its end of the
//!   control socket, which the parent's stop waits for. The `poll` and
//!   that wait are what make a SIGHUP restart safe: `O_NONBLOCK` belongs
//!   to the open file the successor shares, and the successor makes it
//!   blocking again for its own workers, so a drain that relied on
//!   `EAGAIN` could block in `accept4` after the successor started and
//!   hold the connections it took unserved. So a connection the kernel
//!   completed before the stop is served, not reset, and a new client is
//!   refused as soon as every worker has done this (the parent closes its
//!   own copy right after), not after the requests in flight end. The worker serves what its watcher took
//!   once its current request ends (a busy worker's share waits for
//!   that), then leaves; the drain timeout bounds it all. A worker that
//!   recycles itself (`max_requests`) at that very moment settles with
//!   its watcher who leaves first (`Phase`), so a connection is never
//!   taken by a watcher whose worker has already gone.
//!
//! **Interrupting a blocked accept.** Revoking the descriptor does not
//! wake a thread already blocked in `accept4` on it. So after asking the
//! loop to stop, the watcher sends the accepting thread a signal
//! ([`Interruptible`]: SIGURG, a handler that does nothing, no
//! `SA_RESTART`), and `accept4` returns `EINTR`. The accepting thread
//! marks in [`Gate`] when it is between its last look at the stop flag
//! and the return of `accept4`; the watcher re-sends the signal every
//! millisecond while it is there (a signal that lands just before the
//! thread blocks is otherwise lost), and stops as soon as it is not (the
//! thread then sees the flag before it accepts again). The signal is only
//! sent at a retire or stop; in the microseconds between `accept4`
//! returning and the mark changing, it can land in the request just
//! accepted, where a system call the handler is blocked in returns
//! `EINTR` once. `rfile` and `wfile` restart their calls (as Python
//! does, PEP 475), so a handler that reads through them never sees it;
//! one that reads the raw stream with `read` gets `Interrupted` once, as
//! from any signal.

use std::io;
use std::net::TcpStream;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use socket2::SockRef;

use crate::handler::PeerAddr;
use crate::process::{Interruptible, Revocable, SharedAtomics};
use crate::server::base::QUEUED_AT_STOP;
use crate::server::core::ServerCore;
use crate::server::incoming::Incoming;
use crate::server::ops::backoff::{AcceptAction, AcceptBackoff};
use crate::server::strategy::{Processor, Serving};
use crate::server::transport::ServerSocket;
use crate::server::wakeup::Wakeup;

use super::{now_ms, BUSY, EXITING, IDLE, STOP, WORDS, W_BUSY_SINCE, W_PID, W_REQUESTS, W_STATE};

/// How often the watcher re-sends the interrupting signal while the
/// accepting thread may be blocked in `accept4`.
const RESEND: Duration = Duration::from_millis(1);

/// Where the accepting thread is, for the watcher: whether a signal is
/// needed to get it out of `accept4`.
#[derive(Debug, Default)]
pub(super) struct Gate(AtomicU8);

/// Serving a request or doing housekeeping: it looks at the stop flag
/// before it accepts again.
const OUTSIDE: u8 = 0;
/// Between its last look at the stop flag and the return of `accept4`.
const ACCEPTING: u8 = 1;
/// Will not accept again.
const DONE: u8 = 2;

impl Gate {
    fn set(&self, v: u8) {
        self.0.store(v, Ordering::SeqCst);
    }

    fn get(&self) -> u8 {
        self.0.load(Ordering::SeqCst)
    }

    /// Called by the watcher after it set the stop flag: interrupts the
    /// accepting thread until it is out of `accept4`.
    fn interrupt(&self, thread: Interruptible) {
        while self.get() == ACCEPTING {
            thread.interrupt();
            std::thread::sleep(RESEND);
        }
    }
}

/// Who leaves first at a stop, settled once: the worker's thread (it
/// stopped on its own, `max_requests`) or the watcher (told `STOP`; it
/// takes the backlog, and the worker's thread waits for it).
#[derive(Debug, Default)]
struct Phase(AtomicU8);

const RUNNING: u8 = 0;
const WORKER_LEFT: u8 = 1;
const WATCHER_DRAINS: u8 = 2;

impl Phase {
    fn claim(&self, who: u8) -> bool {
        self.0
            .compare_exchange(RUNNING, who, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    }
}

/// What a worker needs from the pool, borrowed from the parent's image.
pub(super) struct WorkerCtx<'a> {
    pub(super) board: &'a SharedAtomics,
    pub(super) slot: usize,
    /// Requests before the worker recycles itself (0: never).
    pub(super) limit: u64,
    pub(super) epoch: Instant,
}

impl WorkerCtx<'_> {
    fn set(&self, w: usize, v: u64) {
        if let Some(a) = self.board.get(self.slot * WORDS + w) {
            a.store(v, Ordering::SeqCst);
        }
    }

    /// The worker's life; returns its exit code.
    pub(super) fn run(self, serving: &mut Serving<'_>, control: OwnedFd) -> i32 {
        self.set(W_PID, std::process::id() as u64);
        // The worker's own wake-up: stopping it must not touch the
        // parent's (whose socket pair it shares).
        let Ok(wakeup) = Wakeup::new() else { return 1 };
        let Some(socket) = serving.socket.as_ref() else {
            return 1;
        };
        let stream = socket.is_stream();
        if stream && Interruptible::install().is_err() {
            return 1;
        }
        let thread = Interruptible::current();
        let gate = Arc::new(Gate::default());
        let listening = Arc::new(Revocable::new(socket.as_fd()));
        let retired = Arc::new(AtomicBool::new(false));
        let phase = Arc::new(Phase::default());
        let watcher = {
            let watch = Watch {
                control,
                wakeup: wakeup.clone(),
                listening: listening.clone(),
                retired: retired.clone(),
                phase: phase.clone(),
                gate: gate.clone(),
                thread,
                stream,
            };
            std::thread::Builder::new()
                .name("prefork-control".into())
                .stack_size(64 * 1024)
                .spawn(move || watch.run())
        };
        let Ok(watcher) = watcher else { return 1 };
        let mut worker = Worker {
            ctx: &self,
            served: 0,
            wakeup: wakeup.clone(),
            gate: gate.clone(),
        };
        self.set(W_STATE, IDLE);
        let mut own = Serving {
            socket: &mut *serving.socket,
            core: serving.core,
            wakeup: &wakeup,
            options: serving.options,
            buf: &mut *serving.buf,
        };
        let mut result = if stream {
            accept_loop(&mut own, &mut worker, &gate)
        } else {
            own.run_loop(&mut worker)
        };
        if !phase.claim(WORKER_LEFT) {
            // The whole server stops and the watcher took what was queued
            // in the backlog: serve it. (A revocation that raced with the
            // stop turned an accept into one on /dev/null: not a failure.)
            let queued = watcher.join().unwrap_or_default();
            let mut backoff = AcceptBackoff::default();
            for request in queued {
                let _ = own.handle_received(Ok(request), &mut worker, &mut backoff);
            }
            result = Ok(());
        }
        gate.set(DONE);
        // Will not accept again: close the listening socket (the watcher
        // may not revoke a number that is about to be closed).
        listening.disarm();
        drop(serving.socket.take());
        self.set(W_STATE, EXITING);
        match result {
            Ok(()) => 0,
            // The watcher revoked the socket under the loop's feet (an
            // accept on /dev/null): that is the retirement, not a failure.
            Err(_) if retired.load(Ordering::Acquire) => 0,
            Err(e) => {
                tracing::error!(error = %e, "prefork worker stops");
                1
            }
        }
    }
}

/// `accept4` on the stream socket once, without restarting on `EINTR`
/// (`std`'s `accept` restarts it, so a signal could not end it).
fn accept_once(own: &mut Serving<'_>) -> io::Result<(Incoming, PeerAddr)> {
    match own.socket.as_ref() {
        Some(s) if s.is_stream() => {
            let (s, a) = s.sock_ref().accept()?;
            into_request(s, &a)
        }
        // Datagram sockets run the shared loop; `get_request` covers the
        // server being closed.
        _ => own.get_request(),
    }
}

/// An accepted socket as the loop's request. Over a Unix socket the
/// peer's address comes from `getpeername` (one more call than `std`'s
/// `accept`).
fn into_request(s: socket2::Socket, a: &socket2::SockAddr) -> io::Result<(Incoming, PeerAddr)> {
    match a.as_socket() {
        Some(peer) => Ok((Incoming::Stream(TcpStream::from(s).into()), peer.into())),
        None => {
            let s = UnixStream::from(s);
            let peer = s.peer_addr()?;
            Ok((Incoming::Stream(s.into()), peer.into()))
        }
    }
}

/// The stream worker's loop: blocks in `accept4` (one exclusive wake-up
/// per connection), serves what it accepted through the shared
/// [`Serving::handle_received`], runs the `service_actions` hook, and
/// returns when a stop is requested.
fn accept_loop(
    own: &mut Serving<'_>,
    worker: &mut Worker<'_, '_>,
    gate: &Gate,
) -> crate::Result<()> {
    let mut backoff = AcceptBackoff::default();
    loop {
        gate.set(ACCEPTING);
        // After the mark: a watcher that sets the flag after this look
        // sees ACCEPTING and interrupts the accept below.
        if own.wakeup.shutdown_requested() {
            gate.set(OUTSIDE);
            return Ok(());
        }
        let got = accept_once(own);
        gate.set(OUTSIDE);
        if matches!(&got, Err(e) if e.kind() == io::ErrorKind::Interrupted) {
            continue;
        }
        if !own.handle_received(got, worker, &mut backoff)? {
            // EAGAIN: the socket is non-blocking after all (the parent
            // made it so for the stop, which is about to reach us): wait
            // for a connection or the wake-up rather than spin.
            wait_readable(own);
        }
        own.core.hooks.service_actions();
    }
}

/// Sleeps until the listening socket or the worker's wake-up is readable
/// (at most 100 ms).
fn wait_readable(own: &Serving<'_>) {
    let Some(socket) = own.socket.as_ref() else {
        return;
    };
    let mut fds = [
        PollFd::new(own.wakeup.fd(), PollFlags::POLLIN),
        PollFd::new(socket.as_fd(), PollFlags::POLLIN),
    ];
    if matches!(poll(&mut fds, PollTimeout::from(100u8)), Ok(n) if n > 0)
        && fds[0].revents().is_some_and(|r| !r.is_empty())
    {
        own.wakeup.drain();
    }
}

/// The watcher thread's state.
struct Watch {
    control: OwnedFd,
    wakeup: Arc<Wakeup>,
    listening: Arc<Revocable>,
    retired: Arc<AtomicBool>,
    phase: Arc<Phase>,
    gate: Arc<Gate>,
    thread: Interruptible,
    /// A stream socket (with a backlog to take at a stop).
    stream: bool,
}

impl Watch {
    /// Sleeps until the control socket becomes readable. [`STOP`] (the
    /// server stops): asks the loop to stop, takes the backlog, revokes
    /// the listening socket and returns what it took. End of file (retire,
    /// or the parent died): stops the loop and revokes the listening
    /// socket. (A datagram socket is not revoked: see the comment in the
    /// body.) The stop request comes before the revocation, so a loop
    /// that sees the revoked descriptor has already been told to stop.
    /// Either way it then gets the accepting thread out of a blocked
    /// `accept4`.
    fn run(self) -> Vec<(Incoming, PeerAddr)> {
        let mut queued = Vec::new();
        loop {
            let mut fds = [PollFd::new(self.control.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(n) if n > 0 => {}
                Ok(_) | Err(Errno::EINTR) => continue,
                // Cannot watch (should not happen): stop rather than serve
                // on unsupervised.
                Err(_) => break,
            }
            let mut byte = [0u8; 1];
            match nix::unistd::read(&self.control, &mut byte) {
                Ok(1) if byte[0] == STOP => {
                    if self.phase.claim(WATCHER_DRAINS) {
                        self.wakeup.request_shutdown();
                        if self.stream {
                            queued = self.take_backlog();
                        }
                    }
                    break;
                }
                Err(Errno::EINTR) => continue,
                // End of file, an unknown byte or an error: retire.
                _ => {
                    self.retired.store(true, Ordering::Release);
                    break;
                }
            }
        }
        self.wakeup.request_shutdown();
        // Over a datagram socket the worker's loop polls, so the stop
        // request above ends it; its socket is one queue shared with the
        // siblings (no backlog of its own to strand), and it is the socket
        // the request in flight sends its reply on: revoked, that reply
        // would fail with ENOTSOCK. It is closed when the loop returns.
        if self.stream {
            if let Err(e) = self.listening.revoke() {
                tracing::warn!(error = %e, "prefork worker cannot drop its listening socket early");
            }
        }
        self.gate.interrupt(self.thread);
        // This worker will not accept again: the parent's stop waits for
        // this end of file (see `wait_closed`).
        drop(self.control);
        queued
    }

    /// The connections queued in the backlog (non-blocking accepts until
    /// `EAGAIN`, at most [`QUEUED_AT_STOP`]); a connection that failed
    /// before it was accepted is skipped.
    fn take_backlog(&self) -> Vec<(Incoming, PeerAddr)> {
        let mut queued = Vec::new();
        let mut tries = 0;
        while queued.len() < QUEUED_AT_STOP && tries < 2 * QUEUED_AT_STOP {
            tries += 1;
            // Asks whether a connection is queued rather than relying on
            // the socket being non-blocking: that flag belongs to the open
            // file, which a successor started on the same socket makes
            // blocking again for its own workers.
            let got = self
                .listening
                .with_fd(|fd| {
                    let mut p = [PollFd::new(fd, PollFlags::POLLIN)];
                    match poll(&mut p, PollTimeout::ZERO) {
                        Ok(n) if n > 0 => SockRef::from(&fd).accept(),
                        _ => Err(io::ErrorKind::WouldBlock.into()),
                    }
                })
                .unwrap_or_else(|| Err(io::ErrorKind::WouldBlock.into()));
            match got.and_then(|(s, a)| into_request(s, &a)) {
                Ok(request) => queued.push(request),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => match AcceptBackoff::default().on_error(&e) {
                    AcceptAction::Retry => continue,
                    AcceptAction::Backoff(_) | AcceptAction::Fatal => break,
                },
            }
        }
        if !queued.is_empty() {
            tracing::debug!(
                taken = queued.len(),
                "prefork worker took the connections queued at stop"
            );
        }
        queued
    }
}

struct Worker<'a, 'b> {
    ctx: &'a WorkerCtx<'b>,
    served: u64,
    wakeup: Arc<Wakeup>,
    gate: Arc<Gate>,
}

impl Processor for Worker<'_, '_> {
    /// Never: the request is served inside `process_request`, so the loop
    /// only gets here when the worker is free.
    fn at_capacity(&mut self) -> bool {
        false
    }

    fn process_request(
        &mut self,
        core: &Arc<ServerCore>,
        _: &mut Option<ServerSocket>,
        request: Incoming,
        peer: PeerAddr,
    ) {
        debug_assert_ne!(self.gate.get(), ACCEPTING);
        self.ctx.set(W_BUSY_SINCE, now_ms(self.ctx.epoch));
        self.ctx.set(W_STATE, BUSY);
        core.process(request, &peer);
        self.served += 1;
        if let Some(a) = self.ctx.board.get(self.ctx.slot * WORDS + W_REQUESTS) {
            a.fetch_add(1, Ordering::SeqCst);
        }
        if self.ctx.limit > 0 && self.served >= self.ctx.limit {
            self.wakeup.request_shutdown();
        } else {
            self.ctx.set(W_STATE, IDLE);
        }
    }

    fn each_wait_fd<'a>(&'a self, _: &mut dyn FnMut(BorrowedFd<'a>)) {}

    fn service_actions(&mut self) {}
}
