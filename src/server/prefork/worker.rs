//! A prefork worker's loop, and the parent's SIGTTIN/SIGTTOU handlers.

use std::net::TcpListener;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::handler::{PeerAddr, Stream};
use crate::process::SharedAtomics;
use crate::server::backoff::{AcceptAction, AcceptBackoff};
use crate::server::core::ServerCore;
use crate::server::incoming::Incoming;
use crate::server::wakeup::Wakeup;
use crate::Result;

use super::builder::Config;
use super::{now_ms, BUSY, EXITING, IDLE, WORDS, W_BUSY_SINCE, W_PID, W_REQUESTS, W_STATE};

/// What a worker needs, borrowed from the parent's memory image.
pub(super) struct WorkerCtx<'a> {
    pub(super) listener: &'a TcpListener,
    pub(super) core: &'a ServerCore,
    pub(super) board: &'a SharedAtomics,
    pub(super) slot: usize,
    pub(super) limit: u64,
    pub(super) epoch: Instant,
}

impl WorkerCtx<'_> {
    fn set(&self, w: usize, v: u64) {
        if let Some(a) = self.board.get(self.slot * WORDS + w) {
            a.store(v, Ordering::SeqCst);
        }
    }

    /// The worker's life: accept and serve until told to leave (control
    /// pipe closed), recycled (`limit` reached) or the listener breaks.
    pub(super) fn run(&self, control: OwnedFd) -> i32 {
        self.set(W_PID, std::process::id() as u64);
        self.set(W_STATE, IDLE);
        let mut backoff = AcceptBackoff::default();
        let mut served = 0u64;
        let code = loop {
            let mut fds = [
                PollFd::new(self.listener.as_fd(), PollFlags::POLLIN),
                PollFd::new(control.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(_) => break 1,
            }
            if fds[1].revents().is_some_and(|r| !r.is_empty()) {
                break 0;
            }
            if fds[0].revents().is_none_or(|r| r.is_empty()) {
                continue;
            }
            let (stream, peer) = match self.listener.accept() {
                Ok(c) => {
                    backoff.on_success();
                    c
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => match backoff.on_error(&e) {
                    AcceptAction::Retry => continue,
                    AcceptAction::Backoff(d) => {
                        std::thread::sleep(d);
                        continue;
                    }
                    AcceptAction::Fatal => break 1,
                },
            };
            self.set(W_BUSY_SINCE, now_ms(self.epoch));
            self.set(W_STATE, BUSY);
            let request = Incoming::Stream(Stream::Tcp(stream));
            let peer = PeerAddr::Inet(peer);
            if self.core.hooks.verify_request(&request, &peer) {
                self.core.process(request, &peer);
            } else {
                self.core.shutdown_request(request);
            }
            served += 1;
            if let Some(a) = self.board.get(self.slot * WORDS + W_REQUESTS) {
                a.fetch_add(1, Ordering::SeqCst);
            }
            if self.limit > 0 && served >= self.limit {
                break 0;
            }
            self.set(W_STATE, IDLE);
        };
        self.set(W_STATE, EXITING);
        code
    }
}

/// SIGTTIN/SIGTTOU handlers for the duration of `serve_forever`.
pub(super) struct Resize {
    grow: Arc<AtomicBool>,
    shrink: Arc<AtomicBool>,
    ids: Vec<signal_hook::SigId>,
}

impl Resize {
    pub(super) fn install(wakeup: &Wakeup, enabled: bool) -> Result<Resize> {
        let mut r = Resize {
            grow: Arc::new(AtomicBool::new(false)),
            shrink: Arc::new(AtomicBool::new(false)),
            ids: Vec::new(),
        };
        if !enabled {
            return Ok(r);
        }
        use signal_hook::consts::{SIGTTIN, SIGTTOU};
        for (sig, flag) in [(SIGTTIN, &r.grow), (SIGTTOU, &r.shrink)] {
            r.ids.push(signal_hook::flag::register(sig, flag.clone())?);
            r.ids.push(signal_hook::low_level::pipe::register(
                sig,
                wakeup.sender()?,
            )?);
        }
        Ok(r)
    }

    pub(super) fn apply(&self, c: &mut Config) {
        if self.grow.swap(false, Ordering::SeqCst) {
            c.min_spare = (c.min_spare + 1).min(c.max_workers);
            c.max_spare = c.max_spare.max(c.min_spare);
            tracing::info!(
                min_spare = c.min_spare,
                max_spare = c.max_spare,
                "SIGTTIN: pool grown"
            );
        }
        if self.shrink.swap(false, Ordering::SeqCst) {
            c.min_spare = c.min_spare.saturating_sub(1);
            c.max_spare = c.max_spare.saturating_sub(1).max(c.min_spare).max(1);
            tracing::info!(
                min_spare = c.min_spare,
                max_spare = c.max_spare,
                "SIGTTOU: pool shrunk"
            );
        }
    }
}

impl Drop for Resize {
    fn drop(&mut self) {
        for id in self.ids.drain(..) {
            signal_hook::low_level::unregister(id);
        }
    }
}
