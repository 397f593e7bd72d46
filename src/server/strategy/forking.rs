//! The forking strategy: Python's `ForkingMixIn`, on the process layer.
//!
//! Each request runs in a child forked like
//! [`fork_child`](crate::process::fork_child) does: the child drops its
//! copy of the server socket (so it never holds the port), runs the
//! handler under `catch_unwind` and `_exit`s with 0, or 1 when the handler
//! failed or panicked. The parent closes its copy of the connection at
//! once (the request moved into the child's closure, which the parent
//! drops unrun).
//!
//! Unlike CPython, the parent never calls `waitpid(-1)`: it waits only for
//! the pids it forked. It learns which have exited from *exit notes*: one
//! pipe for all children, to which each child writes its pid as the last
//! thing before `_exit`. The loop polls that one descriptor together with
//! the listening socket, and reaps exactly the children whose notes it
//! read, so no child of someone else is ever reaped, exited children are
//! reaped at once (no zombies between requests), and a full house
//! (`max_children`) stops `accept` until a note arrives. A child that
//! ends without a note (killed by a signal) is found by a sweep that asks
//! every child at most once a second. Why notes and not a pidfd per
//! child: docs/server.md, "Exit notes".

use std::os::fd::BorrowedFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::error::Result;
use crate::handler::PeerAddr;
use crate::process::notes::{ExitNotes, IdentityBlock, NotedChild, SWEEP};
use crate::process::{consolidate_heap, ForkOptions};

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
    children: Vec<NotedChild>,
    /// Numbers the children's identities (see the type).
    identities: IdentityBlock,
    /// The pipe every child writes its pid to before it exits.
    notes: ExitNotes,
    /// How many of `children` have left their note but were not reaped
    /// yet (still exiting when asked).
    noted: usize,
    /// When every child is next asked whether it has exited (for those
    /// that could not leave a note).
    next_sweep: Instant,
    max_children: usize,
    fork_options: ForkOptions,
    /// The read buffer every child's stream request reads through: its own
    /// copy of this one, allocated here once and never written by the
    /// parent, so a child neither allocates nor frees one (the heap pages
    /// and allocator state that would touch are copy-on-write faults in
    /// every child).
    child_rbuf: Vec<u8>,
    /// Inside `serve_forever`: the accept loop reaps in `service_actions`
    /// after every wake-up, so a fork needs no reaping pass of its own
    /// (`handle_request` alone still gets one).
    looping: bool,
    /// The server's wake-up, for its agent port (a child lets go of it).
    waker: LoopWaker,
}

/// While a child that left its note is still exiting, the loop asks again
/// this often.
const NOTED_RETRY: Duration = Duration::from_millis(1);

impl Forking {
    /// Children forked and not yet reaped.
    pub fn active_children(&self) -> usize {
        self.children.len()
    }

    /// The pids of the children not yet reaped.
    pub fn child_pids(&self) -> Vec<i32> {
        self.children.iter().map(NotedChild::pid).collect()
    }

    /// Python's `collect_children(blocking=False)`: reaps every child that
    /// left its note (and, once a [`SWEEP`], every child that has exited),
    /// and logs how each ended.
    fn collect_children(&mut self) {
        if self.children.is_empty() {
            return;
        }
        self.read_notes();
        let now = Instant::now();
        let sweep = now >= self.next_sweep;
        if sweep {
            self.next_sweep = now + SWEEP;
        }
        if self.noted > 0 || sweep {
            self.reap(|child| sweep || child.noted);
        }
    }

    /// Asks each child that `pick` selects with `waitpid(WNOHANG)`; removes
    /// and logs the reaped. Returns how many were reaped.
    fn reap(&mut self, pick: impl Fn(&NotedChild) -> bool) -> usize {
        let mut reaped = 0;
        // From the last: swap_remove moves only children already asked.
        for i in (0..self.children.len()).rev() {
            let child = &mut self.children[i];
            if !pick(child) {
                continue;
            }
            match child.try_wait() {
                Ok(Some(code)) => {
                    reaped += 1;
                    log_exit(self.remove(i).pid(), code);
                }
                Ok(None) => {}
                Err(e) => self.lost(i, &e),
            }
        }
        reaped
    }

    /// Marks the children whose notes arrived.
    fn read_notes(&mut self) {
        let children = &mut self.children;
        let noted = &mut self.noted;
        self.notes.read(|pid| {
            if let Some(child) = children.iter_mut().find(|c| c.pid() == pid) {
                if !child.noted {
                    child.noted = true;
                    *noted += 1;
                }
            }
        });
    }

    /// Removes child `i` (swapping the last into its place).
    fn remove(&mut self, i: usize) -> NotedChild {
        let child = self.children.swap_remove(i);
        if child.noted {
            self.noted -= 1;
        }
        child
    }

    /// `waitpid` failed for child `i` (`ECHILD`: someone else reaped it,
    /// `SIGCHLD` ignored or a `waitpid(-1)` elsewhere): it is no longer
    /// ours to wait for, so it leaves the list, and is not handed to a
    /// reaper either.
    fn lost(&mut self, i: usize, e: &crate::Error) {
        let child = self.remove(i);
        tracing::error!(pid = child.pid(), error = %e, "waitpid failed; the child is no longer tracked");
        std::mem::forget(child);
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

    fn new(options: &ServerOptions, waker: LoopWaker) -> Result<Self> {
        Ok(Forking {
            waker,
            children: Vec::new(),
            identities: IdentityBlock::default(),
            notes: ExitNotes::new()?,
            noted: 0,
            next_sweep: Instant::now() + SWEEP,
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
        // (the accept loop reaps in `service_actions`).
        if !self.looping {
            self.collect_children();
        }
        // Borrowed, not cloned: an `Arc` clone writes its count, a
        // copy-on-write fault in the parent after every fork (and one in
        // the child when it drops it). The child never returns past the
        // fork, so the borrow outlives its use there.
        let child_core: &ServerCore = core;
        let child_peer = &peer;
        let child_rbuf = &mut self.child_rbuf;
        // Runs only in the child. In the parent it is dropped unrun, which
        // closes the parent's copy of the connection right away.
        let wakeup = &self.waker.0;
        let body = move || {
            drop(server_socket.take());
            if let Some(health) = wakeup.health() {
                health.leave_in_child();
            }
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
        match self
            .notes
            .fork(&self.fork_options, &mut self.identities, body)
        {
            Ok(child) => {
                tracing::trace!(pid = child.pid(), peer = %peer, "forked a child");
                self.children.push(child);
            }
            Err(e) => core.handle_error(&peer, &e),
        }
    }

    fn wait_fds(&self) -> Vec<BorrowedFd<'_>> {
        let mut fds = Vec::new();
        self.each_wait_fd(&mut |fd| fds.push(fd));
        fds
    }

    /// The exit notes' descriptor while children run.
    fn each_wait_fd<'a>(&'a self, add: &mut dyn FnMut(BorrowedFd<'a>)) {
        if !self.children.is_empty() {
            add(self.notes.fd());
        }
    }

    fn service_actions(&mut self) {
        self.collect_children();
    }

    /// A millisecond while a child that left its note is still exiting;
    /// until the next sweep while children run.
    fn wake_within(&self) -> Option<Duration> {
        if self.noted > 0 {
            Some(NOTED_RETRY)
        } else if self.children.is_empty() {
            None
        } else {
            Some(self.next_sweep.saturating_duration_since(Instant::now()))
        }
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
            // Dropping a running child's record hands its pid to a reaper
            // thread, so nothing is left as a zombie.
            report.detached = self.children.len();
            self.children.clear();
            self.noted = 0;
            return report;
        }
        let deadline = Instant::now() + timeout;
        loop {
            // Every child that has exited, noted or not.
            self.read_notes();
            report.drained += self.reap(|_| true);
            let left = deadline.saturating_duration_since(Instant::now());
            if self.children.is_empty() || left.is_zero() {
                break;
            }
            // Woken by the next note; a child that left one is still
            // exiting, so ask again soon; one that cannot leave a note is
            // found within a sweep.
            let wait = if self.noted > 0 { NOTED_RETRY } else { SWEEP };
            let _ = crate::process::wait_readable(self.notes.fd(), Some(left.min(wait)));
        }
        for mut child in self.children.drain(..) {
            report.aborted += 1;
            tracing::warn!(
                pid = child.pid(),
                "child did not finish in the drain timeout; killing it"
            );
            let _ = child.signal(Signal::SIGKILL);
            match child.wait() {
                Ok(code) => log_exit(child.pid(), code),
                Err(e) => tracing::error!(pid = child.pid(), error = %e, "waitpid failed"),
            }
        }
        self.noted = 0;
        report
    }
}
