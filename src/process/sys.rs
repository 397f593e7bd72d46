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

/// A descriptor one thread owns and another may *revoke*: point its number
/// at `/dev/null` (one atomic `dup3`), which closes the open file behind it
/// in this process at once while the owner's number stays valid, so no
/// other thread can be handed that number by a later `open` or `accept`.
/// A prefork worker uses it to drop its copy of the listening socket the
/// moment it is retired, even while its only thread serves a request.
///
/// The owner calls [`disarm`](Self::disarm) before it closes the
/// descriptor; after that `revoke` does nothing. Both take the same lock,
/// so a revoke never lands on a number that was closed and reused.
#[derive(Debug)]
pub(crate) struct Revocable {
    fd: std::sync::Mutex<Option<std::os::fd::RawFd>>,
}

impl Revocable {
    /// Watches `fd`, which stays open until [`disarm`](Self::disarm).
    pub(crate) fn new(fd: BorrowedFd<'_>) -> Revocable {
        use std::os::fd::AsRawFd;
        Revocable {
            fd: std::sync::Mutex::new(Some(fd.as_raw_fd())),
        }
    }

    /// Points the descriptor at `/dev/null` (once). Returns whether it did.
    ///
    /// # Errors
    /// `/dev/null` cannot be opened, or `dup3` failed.
    pub(crate) fn revoke(&self) -> std::io::Result<bool> {
        use std::os::fd::AsRawFd;
        let mut guard = self.fd.lock().unwrap_or_else(|p| p.into_inner());
        let Some(fd) = guard.take() else {
            return Ok(false);
        };
        let null = std::fs::File::open("/dev/null")?;
        // SAFETY: `fd` is open (the owner disarms, under this lock, before
        // it closes it) and `null` is a descriptor we own; dup3 replaces
        // what `fd` refers to atomically and writes no memory of ours.
        let rc = unsafe { libc::dup3(null.as_raw_fd(), fd, libc::O_CLOEXEC) };
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(true)
    }

    /// Stops watching: call before closing the descriptor.
    pub(crate) fn disarm(&self) {
        *self.fd.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}
