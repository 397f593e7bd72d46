//! A prefork worker: the crate's accept loop in a child process, serving
//! each request on the accepting thread itself (one at a time, as a
//! prefork worker does), with no hand-off and no system call of its own
//! per request: the scoreboard is shared memory written with atomic
//! stores.
//!
//! A second, small thread only watches the worker's control pipe, whose
//! only write end the parent holds. It blocks in `poll` and costs nothing
//! per request. What it reads there says why the worker stops:
//!
//! - **End of file** (the parent closed the pipe to retire this one
//!   worker, or the parent died): the watcher asks the loop to stop and
//!   **revokes the worker's copy of the listening socket at once** (its
//!   descriptor number is pointed at `/dev/null`, see [`Revocable`]), even
//!   in the middle of a request; the request in flight ends normally, then
//!   the worker leaves. So a socket nobody will serve never keeps
//!   accepting connections into its backlog, and a retired worker leaves
//!   the backlog to its siblings.
//! - **[`STOP`], then end of file** (the whole server stops: SIGTERM,
//!   `shutdown`): the watcher only asks the loop to stop. When the
//!   request in flight ends, the worker takes what is already queued in
//!   the backlog (`take_queued`: non-blocking accepts until `EAGAIN`,
//!   each served) and only then closes its listening socket, so a
//!   connection the kernel already completed is served, not reset. The
//!   drain timeout bounds it: the parent kills a worker still busy then.
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::handler::PeerAddr;
use crate::process::{Revocable, SharedAtomics};
use crate::server::core::ServerCore;
use crate::server::incoming::Incoming;
use crate::server::strategy::{Processor, Serving};
use crate::server::transport::ServerSocket;
use crate::server::wakeup::Wakeup;

use super::{now_ms, BUSY, EXITING, IDLE, STOP, WORDS, W_BUSY_SINCE, W_PID, W_REQUESTS, W_STATE};

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
        let listening = Arc::new(Revocable::new(socket.as_fd()));
        let retired = Arc::new(AtomicBool::new(false));
        let stopping = Arc::new(AtomicBool::new(false));
        let watcher = {
            let (wakeup, listening, retired, stopping) = (
                wakeup.clone(),
                listening.clone(),
                retired.clone(),
                stopping.clone(),
            );
            std::thread::Builder::new()
                .name("prefork-control".into())
                .stack_size(64 * 1024)
                .spawn(move || watch_control(&control, &wakeup, &listening, &retired, &stopping))
        };
        if watcher.is_err() {
            return 1;
        }
        let mut worker = Worker {
            ctx: &self,
            served: 0,
            wakeup: wakeup.clone(),
        };
        self.set(W_STATE, IDLE);
        let mut own = Serving {
            socket: &mut *serving.socket,
            core: serving.core,
            wakeup: &wakeup,
            options: serving.options,
            buf: &mut *serving.buf,
        };
        let mut result = own.run_loop(&mut worker);
        // The whole server stops (not only this worker): serve what the
        // kernel already queued before the listening socket closes.
        if result.is_ok() && stopping.load(Ordering::Acquire) {
            own.take_queued(&mut worker);
            // A revocation that raced with the stop (the parent died
            // meanwhile) turned the socket into /dev/null: not a failure.
            result = Ok(());
        }
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

/// The watcher thread: sleeps until the control pipe becomes readable.
/// [`STOP`] (the server stops): asks the loop to stop, leaving the socket
/// open for `take_queued`, and goes on watching. End of file (retire, or
/// the parent died): stops the loop and revokes the listening socket. The
/// stop request comes first, so a loop that sees the revoked descriptor
/// has already been told to stop.
fn watch_control(
    control: &OwnedFd,
    wakeup: &Wakeup,
    listening: &Revocable,
    retired: &AtomicBool,
    stopping: &AtomicBool,
) {
    loop {
        let mut fds = [PollFd::new(control.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(n) if n > 0 => {}
            Ok(_) | Err(Errno::EINTR) => continue,
            // Cannot watch (should not happen): stop rather than serve on
            // unsupervised.
            Err(_) => break,
        }
        let mut byte = [0u8; 1];
        match nix::unistd::read(control, &mut byte) {
            Ok(1) if byte[0] == STOP => {
                stopping.store(true, Ordering::Release);
                wakeup.request_shutdown();
                // The parent closes the pipe right after; when it did, or
                // when it dies during the drain, this worker still finishes
                // what it took: nothing more to do here.
                return;
            }
            Err(Errno::EINTR) => continue,
            // End of file, an unknown byte or an error: retire.
            _ => break,
        }
    }
    retired.store(true, Ordering::Release);
    wakeup.request_shutdown();
    if let Err(e) = listening.revoke() {
        tracing::warn!(error = %e, "prefork worker cannot drop its listening socket early");
    }
}

struct Worker<'a, 'b> {
    ctx: &'a WorkerCtx<'b>,
    served: u64,
    wakeup: Arc<Wakeup>,
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

    fn wait_fds(&self) -> Vec<BorrowedFd<'_>> {
        Vec::new()
    }

    fn service_actions(&mut self) {}
}
