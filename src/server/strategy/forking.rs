//! The forking strategy: Python's `ForkingMixIn`, on the process layer.
//!
//! Each request runs in a child made by
//! [`fork_child`](crate::process::fork_child): the child drops its copy of
//! the server socket (so it never holds the port), runs the handler under
//! `catch_unwind` and `_exit`s with 0, or 1 when the handler failed or
//! panicked. The parent closes its copy of the connection at once (the
//! request moved into the child's closure, which the parent drops unrun).
//!
//! Unlike CPython, the parent never calls `waitpid(-1)`: it waits only for
//! the pids it forked, woken by each child's pidfd sentinel, which the loop
//! polls together with the listening socket. So no child of someone else is
//! ever reaped, exited children are reaped at once (no zombies between
//! requests), and a full house (`max_children`) stops `accept` until a
//! sentinel fires, without sleeping or polling on a timer.

use std::os::fd::BorrowedFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::Signal;

use crate::error::Result;
use crate::handler::PeerAddr;
use crate::process::{consolidate_heap, fork_child, ForkOptions, ForkedChild};

use super::{LoopWaker, Serving, Strategy};
use crate::server::core::ServerCore;
use crate::server::drain::DrainReport;
use crate::server::incoming::Incoming;
use crate::server::options::ServerOptions;
use crate::server::transport::ServerSocket;

/// One child process per request (Python's `ForkingMixIn`).
#[derive(Debug)]
#[doc(alias = "ForkingMixIn")]
pub struct Forking {
    children: Vec<ForkedChild>,
    max_children: usize,
    fork_options: ForkOptions,
    /// A child was forked since the loop last ran `service_actions`.
    forked: bool,
    /// The read buffer every child's stream request reads through: its own
    /// copy of this one, allocated here once and never written by the
    /// parent, so a child neither allocates nor frees one (the heap pages
    /// and allocator state that would touch are copy-on-write faults in
    /// every child).
    child_rbuf: Vec<u8>,
    /// Inside `serve_forever`: the accept loop polls every sentinel and
    /// runs `service_actions` after each wake-up, so a fork needs no
    /// reaping pass of its own (`handle_request` alone still gets one).
    looping: bool,
}

/// Up to this many children, reaping asks each with `waitpid(WNOHANG)`
/// directly; above it one `poll` over the sentinels picks the ones to ask.
const DIRECT_REAP: usize = 2;

/// How many children's sentinels one `poll` asks about (the bits of a
/// `u64`), from an array on the stack: a malloc/free pair per wake-up
/// would write heap pages, each a copy-on-write fault in the parent after
/// every fork.
const POLL_CHUNK: usize = 64;

impl Forking {
    /// Children forked and not yet reaped.
    pub fn active_children(&self) -> usize {
        self.children.len()
    }

    /// The pids of the children not yet reaped.
    pub fn child_pids(&self) -> Vec<i32> {
        self.children.iter().map(ForkedChild::pid).collect()
    }

    /// Python's `collect_children(blocking=False)`: reaps every child whose
    /// sentinel says it has exited, and logs how it ended.
    fn collect_children(&mut self) {
        let n = self.children.len();
        if n <= DIRECT_REAP {
            // n waitpid calls cost no more than one poll plus a waitpid
            // per exited child.
            self.reap_where(0..n, |_| true);
            return;
        }
        // Chunk by chunk, the last first: reaping swap-removes, which only
        // moves children of the chunks already looked at.
        let mut end = n;
        while end > 0 {
            let start = end.saturating_sub(POLL_CHUNK);
            let ready = self.exited_among(start, end);
            self.reap_where(start..end, |i| ready & (1 << (i - start)) != 0);
            end = start;
        }
    }

    /// Which of children `start..end` (at most [`POLL_CHUNK`]) have
    /// exited, by their sentinels, as bits from `start`.
    fn exited_among(&self, start: usize, end: usize) -> u64 {
        let chunk = &self.children[start..end];
        let mut fds: [PollFd<'_>; POLL_CHUNK] = std::array::from_fn(|i| {
            PollFd::new(chunk[i.min(chunk.len() - 1)].sentinel(), PollFlags::POLLIN)
        });
        let fds = &mut fds[..chunk.len()];
        match poll(fds, PollTimeout::ZERO) {
            Ok(0) => 0,
            Ok(_) => fds
                .iter()
                .enumerate()
                .filter(|(_, fd)| fd.revents().is_some_and(|r| !r.is_empty()))
                .fold(0, |m, (i, _)| m | 1 << i),
            // Interrupted or failed: try every child, it costs only waitpid.
            Err(_) => u64::MAX,
        }
    }

    /// `waitpid(WNOHANG)` on each child of `range` that `pick` selects,
    /// from the last; removes the reaped.
    fn reap_where(&mut self, range: std::ops::Range<usize>, pick: impl Fn(usize) -> bool) {
        for i in range.rev() {
            if !pick(i) {
                continue;
            }
            match self.children[i].try_wait() {
                Ok(Some(code)) => {
                    let child = self.children.swap_remove(i);
                    log_exit(child.pid(), code);
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(pid = self.children[i].pid(), error = %e, "waitpid failed");
                }
            }
        }
    }
}

/// Logs how a child ended. Status 1 is a handler error the child has
/// already reported through `handle_error` (at error level, or at debug
/// for a peer that went away): debug here, not a second line an operator
/// must read. Any other status is the handler's own `process::exit`.
fn log_exit(pid: i32, code: i32) {
    if code == 0 {
        tracing::trace!(pid, "child exited");
    } else if code == 1 {
        tracing::debug!(
            pid,
            "child exited with status 1 (its handler error is reported above)"
        );
    } else if code > 0 {
        tracing::warn!(pid, code, "child exited with a failure status");
    } else {
        let name = Signal::try_from(-code).map_or("unknown signal", Signal::as_str);
        tracing::error!(pid, signal = name, "child was killed by a signal");
    }
}

impl Strategy for Forking {
    const NAME: &'static str = "forking";

    fn new(options: &ServerOptions, _: LoopWaker) -> Result<Self> {
        Ok(Forking {
            children: Vec::new(),
            max_children: options.max_children(),
            fork_options: {
                let mut options = ForkOptions::new();
                options.name("socketserver-child");
                // The multi-threaded warning's thread count at most once
                // a second, not a statx of /proc/self/task per connection.
                options.thread_check_every = Some(Duration::from_secs(1));
                // No allocation in the parent per fork (see the field).
                options.state_in_child = true;
                options
            },
            forked: false,
            child_rbuf: crate::handler::read_buffer(),
            looping: false,
        })
    }

    fn at_capacity(&mut self) -> bool {
        if self.children.len() >= self.max_children {
            self.collect_children();
        }
        self.children.len() >= self.max_children
    }

    fn process_request(
        &mut self,
        core: &Arc<ServerCore>,
        server_socket: &mut Option<ServerSocket>,
        request: Incoming,
        peer: PeerAddr,
    ) {
        // Bounds the zombies of a server driven by `handle_request` alone
        // (the accept loop reaps on each sentinel that fires).
        if !self.looping {
            self.collect_children();
        }
        // Borrowed, not cloned: an `Arc` clone writes its count, a
        // copy-on-write fault in the parent after every fork (and one in
        // the child when it drops it). The child never returns past
        // `fork_child`, so the borrow outlives its use there.
        let child_core: &ServerCore = core;
        let child_peer = &peer;
        let child_rbuf = &mut self.child_rbuf;
        // Runs only in the child. In the parent it is dropped unrun, which
        // closes the parent's copy of the connection right away.
        let body = move || {
            drop(server_socket.take());
            // The child's own copy of the parent's buffer.
            let mut rbuf = Some(std::mem::take(child_rbuf));
            let ok = child_core.process_with_buffer(request, child_peer, &mut rbuf);
            // Not freed: the child `_exit`s next, and a free would write
            // the allocator's state (copy-on-write faults) for nothing.
            std::mem::forget(rbuf);
            if ok {
                0
            } else {
                1
            }
        };
        match fork_child(&self.fork_options, body) {
            Ok(child) => {
                tracing::trace!(pid = child.pid(), peer = %peer, "forked a child");
                self.children.push(child);
                self.forked = true;
            }
            Err(e) => core.handle_error(&peer, &e),
        }
    }

    fn wait_fds(&self) -> Vec<BorrowedFd<'_>> {
        self.children.iter().map(ForkedChild::sentinel).collect()
    }

    /// The sentinels without a `Vec`: an allocation per loop turn would
    /// write two heap pages of the parent, copy-on-write faults after
    /// every fork.
    fn each_wait_fd<'a>(&'a self, add: &mut dyn FnMut(BorrowedFd<'a>)) {
        for child in &self.children {
            add(child.sentinel());
        }
    }

    /// Reaps exited children, except right after a fork: then the loop
    /// woke for a connection, and a sentinel that fired too keeps the next
    /// `poll` returning at once, so it is reaped one turn later without
    /// a look at every child now.
    fn service_actions(&mut self) {
        if std::mem::take(&mut self.forked) && self.looping {
            return;
        }
        self.collect_children();
    }

    fn serve_forever(&mut self, serving: &mut Serving<'_>) -> Result<()> {
        // Start-up left freed chunks in glibc's fastbins; the first large
        // allocation of every child (its read buffer) would consolidate
        // them, a copy-on-write fault per heap page touched. The loop
        // itself frees only what it allocated again, so they stay empty.
        consolidate_heap();
        self.looping = true;
        let result = serving.accept_loop(self);
        self.looping = false;
        result
    }

    /// Every child not yet reaped counts as in flight (the loop reaps an
    /// exited child at once, so these are the requests of the shutdown).
    fn drain(&mut self, block_on_close: bool, timeout: Duration) -> DrainReport {
        let mut report = DrainReport::default();
        if !block_on_close {
            // Dropping a running ForkedChild hands its pid to a reaper
            // thread, so nothing is left as a zombie.
            report.detached = self.children.len();
            self.children.clear();
            return report;
        }
        let deadline = Instant::now() + timeout;
        for mut child in self.children.drain(..) {
            let left = deadline.saturating_duration_since(Instant::now());
            match child.wait_timeout(left) {
                Ok(Some(code)) => {
                    report.drained += 1;
                    log_exit(child.pid(), code);
                }
                Ok(None) => {
                    report.aborted += 1;
                    tracing::warn!(
                        pid = child.pid(),
                        "child did not finish in the drain timeout; killing it"
                    );
                    let _ = child.signal(Signal::SIGKILL);
                    let _ = child.wait();
                }
                Err(e) => tracing::error!(pid = child.pid(), error = %e, "waitpid failed"),
            }
        }
        report
    }
}
