//! Small system helpers shared by the process layer: waiting for a
//! descriptor with a deadline, counting threads, restarting on `EINTR`,
//! the text of a panic.

use std::os::fd::BorrowedFd;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};

use crate::Result;

/// Waits until `fd` is readable (or reports hang-up/error), for at most
/// `timeout` (`None` = forever). Returns `Ok(true)` when it is ready and
/// `Ok(false)` when the timeout expired first. `EINTR` restarts the wait with
/// the time that is left, so a signal never shortens or lengthens it.
pub(crate) fn wait_readable(fd: BorrowedFd<'_>, timeout: Option<Duration>) -> Result<bool> {
    let deadline = timeout.map(|t| Instant::now() + t);
    loop {
        let poll_timeout = match deadline {
            None => PollTimeout::NONE,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                // Round up so that a 0.4 ms remainder does not become a busy
                // zero-timeout poll; clamp to what poll(2) accepts.
                let ms = left.as_nanos().div_ceil(1_000_000);
                PollTimeout::try_from(ms.min(i32::MAX as u128) as i32).unwrap_or(PollTimeout::MAX)
            }
        };
        let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
        match nix::poll::poll(&mut fds, poll_timeout) {
            Ok(0) => {
                if deadline.is_some_and(|d| Instant::now() < d) {
                    continue;
                }
                return Ok(false);
            }
            Ok(_) => return Ok(true),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Number of threads in this process (entries of `/proc/self/task`).
/// procfs reports a directory's entries + 2 as its link count, which costs
/// one `stat` instead of reading the directory; the listing is the
/// fallback. Returns 1 when `/proc` is missing.
pub(crate) fn thread_count() -> usize {
    use std::os::unix::fs::MetadataExt;
    if let Ok(meta) = std::fs::metadata("/proc/self/task") {
        if meta.nlink() >= 3 {
            return (meta.nlink() - 2) as usize;
        }
    }
    match std::fs::read_dir("/proc/self/task") {
        Ok(dir) => dir.count().max(1),
        Err(_) => 1,
    }
}

/// The text of a panic payload: the one helper for every place that
/// reports a caught panic (pool tasks, barrier actions, the forking
/// server's handlers).
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}
