//! A prefork worker: the crate's accept loop in a child process, with the
//! handler on a second thread so the loop can drop the listening socket
//! the moment it is told to stop, even in the middle of a request.
//!
//! The worker's loop waits on the shared server socket (while idle), its
//! control pipe (closed by the parent to retire it, or by the kernel when
//! the parent dies) and the handler thread's "done" socket. One request at
//! a time: while the handler runs the worker is at capacity and does not
//! accept, so an idle sibling takes the next connection.

use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::handler::PeerAddr;
use crate::process::SharedAtomics;
use crate::server::core::ServerCore;
use crate::server::incoming::Incoming;
use crate::server::strategy::{Processor, Serving};
use crate::server::transport::ServerSocket;
use crate::server::wakeup::Wakeup;

use super::{now_ms, BUSY, EXITING, IDLE, WORDS, W_BUSY_SINCE, W_PID, W_REQUESTS, W_STATE};

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
        let Ok((done_rx, done_tx)) = UnixStream::pair() else {
            return 1;
        };
        let _ = done_rx.set_nonblocking(true);
        let (jobs, queue) = mpsc::channel::<(Incoming, PeerAddr)>();
        let core = serving.core.clone();
        let handler = std::thread::Builder::new()
            .name("prefork-handler".into())
            .spawn(move || {
                let mut done_tx = done_tx;
                for (request, peer) in queue {
                    core.process(request, &peer);
                    let _ = done_tx.write_all(&[1]);
                }
            });
        let Ok(handler) = handler else { return 1 };
        let mut worker = Worker {
            ctx: &self,
            control,
            done: done_rx,
            jobs: Some(jobs),
            busy: false,
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
        let result = own.run_loop(&mut worker);
        // Will not accept again: close the listening socket now, before
        // the request in flight (if any) ends.
        drop(serving.socket.take());
        self.set(W_STATE, EXITING);
        worker.finish(handler);
        match result {
            Ok(()) => 0,
            Err(e) => {
                tracing::error!(error = %e, "prefork worker stops");
                1
            }
        }
    }
}

struct Worker<'a, 'b> {
    ctx: &'a WorkerCtx<'b>,
    control: OwnedFd,
    done: UnixStream,
    jobs: Option<mpsc::Sender<(Incoming, PeerAddr)>>,
    busy: bool,
    served: u64,
    wakeup: Arc<Wakeup>,
}

impl Worker<'_, '_> {
    fn stop(&self) {
        self.wakeup.request_shutdown();
    }

    /// Lets the handler finish its request and ends its thread.
    fn finish(mut self, handler: JoinHandle<()>) {
        self.jobs = None;
        let _ = handler.join();
    }
}

impl Processor for Worker<'_, '_> {
    fn at_capacity(&mut self) -> bool {
        self.busy
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
        self.busy = true;
        let sent = match &self.jobs {
            Some(jobs) => jobs.send((request, peer)),
            None => Err(mpsc::SendError((request, peer))),
        };
        if let Err(mpsc::SendError((request, peer))) = sent {
            // The handler thread is gone (it cannot panic: the core
            // catches handler panics); serve here rather than drop it.
            core.process(request, &peer);
            self.busy = false;
            self.ctx.set(W_STATE, IDLE);
        }
    }

    fn wait_fds(&self) -> Vec<BorrowedFd<'_>> {
        vec![self.control.as_fd(), self.done.as_fd()]
    }

    fn service_actions(&mut self) {
        // One request at a time: at most one "done" byte, and only while
        // busy. A wake-up it explains needs no look at the control pipe
        // (if that fired too, the next poll returns at once for it).
        if self.busy {
            let mut byte = [0u8; 1];
            if matches!((&self.done).read(&mut byte), Ok(1)) {
                self.busy = false;
                self.served += 1;
                if let Some(a) = self.ctx.board.get(self.ctx.slot * WORDS + W_REQUESTS) {
                    a.fetch_add(1, Ordering::SeqCst);
                }
                if self.ctx.limit > 0 && self.served >= self.ctx.limit {
                    self.stop();
                } else {
                    self.ctx.set(W_STATE, IDLE);
                }
                return;
            }
        }
        let mut fds = [PollFd::new(self.control.as_fd(), PollFlags::POLLIN)];
        if matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0) {
            // Closed by the parent (retire, shutdown) or by its death.
            self.stop();
        }
    }
}
