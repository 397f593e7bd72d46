//! The one spin/wait policy of the process layer: where a wait usually
//! ends within microseconds, wait actively for a short *budget* before
//! sleeping, yielding the CPU every few rounds. Every active wait in the
//! crate uses the functions and the budgets below (the table in
//! `docs/pool.md` lists them).
//!
//! Why: a blocked reader (futex or `poll`) costs a scheduler wake-up when
//! the answer arrives, about 20 µs on each side of a round trip on the
//! 2-core VMs we measure on (a blocking socketpair ping-pong between two
//! processes takes ~46 µs, a polling one ~5 µs). An active waiter is also
//! not counted as a sleeper, which spares the notifier its `FUTEX_WAKE`.
//! The cost is at most the budget of CPU per wait. Yielding matters on a
//! busy machine: the peer we wait for was often just woken onto *our*
//! CPU, and a pure busy loop would keep it from running (measured: ~25 µs
//! round trips spinning first, 2–4 µs yielding first).

use std::os::fd::BorrowedFd;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};

use crate::Result;

/// Shared-memory waits (`Queue` put/get, the robust mutex's condition
/// variables): a consumer keeping up with its producer.
pub(crate) const SHM_SPIN: Duration = Duration::from_micros(10);
/// The pool's dispatcher thread, after each event (a reply, or the
/// caller's next submission).
pub(crate) const DISPATCHER_SPIN: Duration = Duration::from_micros(50);
/// An idle pool worker waiting for its next job.
pub(crate) const WORKER_SPIN: Duration = Duration::from_micros(100);
/// A manager proxy waiting for the server's reply: long enough to cover a
/// reply from a server thread that was asleep.
pub(crate) const MANAGER_CLIENT_SPIN: Duration = Duration::from_micros(50);
/// A manager server connection thread waiting for the next call after
/// answering one.
pub(crate) const MANAGER_SERVER_SPIN: Duration = Duration::from_micros(100);

/// A [`Connection`](crate::process::Connection) receive that finds its
/// buffer empty, before it sleeps in `read`: a reader keeping up with a
/// stream of messages. While it waits actively the writer's `write` has
/// no sleeper to wake, which is most of a small message's cost.
pub(crate) const CONNECTION_SPIN: Duration = Duration::from_micros(20);

/// Every how many rounds an active wait yields the CPU (starting with the
/// first).
const YIELD_EVERY: u32 = 4;

/// One pause of an active wait, in round `round` (counted from 0): yields
/// the CPU every [`YIELD_EVERY`] rounds, else `hints` spin-loop hints.
pub(crate) fn pause(round: u32, hints: u32) {
    if round % YIELD_EVERY == 0 {
        std::thread::yield_now();
    } else {
        for _ in 0..hints {
            std::hint::spin_loop();
        }
    }
}

/// Waits actively until `ready()` or `end`, whichever comes first; returns
/// the last value of `ready()`.
pub(crate) fn spin_while_not(end: Instant, ready: impl Fn() -> bool) -> bool {
    let mut round = 0u32;
    loop {
        if ready() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        pause(round, 64);
        round = round.wrapping_add(1);
    }
}

/// Checks whether `fd` is readable again and again, without ever sleeping,
/// for at most `budget`; returns `Ok(true)` as soon as it is.
pub(crate) fn spin_readable(fd: BorrowedFd<'_>, budget: Duration) -> Result<bool> {
    let end = Instant::now() + budget;
    let mut round = 0u32;
    loop {
        let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
        match nix::poll::poll(&mut fds, PollTimeout::ZERO) {
            Ok(0) | Err(Errno::EINTR) => {}
            Ok(_) => return Ok(true),
            Err(e) => return Err(e.into()),
        }
        if Instant::now() >= end {
            return Ok(false);
        }
        pause(round, 1);
        round = round.wrapping_add(1);
    }
}
