//! Small system helpers shared by the process layer: waiting for a
//! descriptor with a deadline, counting threads, restarting on `EINTR`,
//! the text of a panic.

use std::os::fd::{BorrowedFd, RawFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};

use crate::Result;

/// `poll`'s timeout for `d`: rounded up to whole milliseconds, so that a
/// 0.4 ms remainder does not become a busy zero-timeout poll, and clamped
/// to what poll(2) accepts.
pub(crate) fn poll_timeout(d: Duration) -> PollTimeout {
    let ms = d.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as i32;
    PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
}

/// Waits until `fd` is readable (or reports hang-up/error), for at most
/// `timeout` (`None` = forever). Returns `Ok(true)` when it is ready and
/// `Ok(false)` when the timeout expired first. `EINTR` restarts the wait with
/// the time that is left, so a signal never shortens or lengthens it. A
/// timeout too long to add to the clock (`Duration::MAX`) is forever.
pub(crate) fn wait_readable(fd: BorrowedFd<'_>, timeout: Option<Duration>) -> Result<bool> {
    let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
    loop {
        let poll_timeout = match deadline {
            None => PollTimeout::NONE,
            Some(d) => poll_timeout(d.saturating_duration_since(Instant::now())),
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

/// Lets go of every descriptor of this process except 0, 1, 2 and
/// `keep`: what a process that must hold only what it needs (the fork
/// server, a manager) does right after it was forked. Each other open
/// number is pointed at `/dev/null` rather than closed: the listener or
/// pipe it referred to is released here (a dropped listener stops
/// accepting, a pipe's reader sees end of file), yet the number stays
/// taken, so a value inherited from the program (a log file opened
/// before the fork, say) can never write into a descriptor this process
/// opens later under the same number; its writes are discarded.
///
/// Only for a freshly forked child that has not started threads: another
/// thread could open a number between the listing and the `dup3`.
pub(crate) fn release_other_fds(keep: &[RawFd]) {
    use std::os::fd::{AsFd, AsRawFd};
    let open = open_fds();
    let null = match std::fs::File::open("/dev/null") {
        Ok(null) => null,
        Err(e) => {
            tracing::warn!(error = %e, "cannot open /dev/null: this process keeps the descriptors it inherited");
            return;
        }
    };
    for fd in open {
        if fd <= 2 || fd == null.as_raw_fd() || keep.contains(&fd) {
            continue;
        }
        // SAFETY: fcntl(F_GETFD) only asks whether the number is open (the
        // listing's own descriptor is closed by now).
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0 {
            // The caller gave up every number outside `keep` (see above).
            let _ = dup_over(null.as_fd(), fd);
        }
    }
}

/// Points the open descriptor `fd` at `/dev/null`: what it referred to
/// is released in this process, while the number stays taken (nothing
/// opened later can get it, so a stale holder of the number can never
/// act on someone else's descriptor).
///
/// # Errors
/// `/dev/null` cannot be opened, or `dup3` failed.
pub(crate) fn point_at_dev_null(fd: RawFd) -> std::io::Result<()> {
    use std::os::fd::AsFd;
    let null = std::fs::File::open("/dev/null")?;
    dup_over(null.as_fd(), fd)
}

/// `dup3(from, fd)`: makes the open number `fd` refer to what `from` does.
/// The caller vouches that `fd` is open and that whatever uses its number
/// expects it to change (see [`point_at_dev_null`]).
fn dup_over(from: BorrowedFd<'_>, fd: RawFd) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: dup3 replaces what `fd` refers to atomically and writes no
    // memory of ours; `from` is a descriptor the caller owns.
    if unsafe { libc::dup3(from.as_raw_fd(), fd, libc::O_CLOEXEC) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The numbers `/proc/self/fd` lists (read in full first); without
/// `/proc`, every number below the descriptor limit (at most 65,536),
/// for the caller to check.
fn open_fds() -> Vec<RawFd> {
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        return dir
            .flatten()
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
            .collect();
    }
    let limit = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(1024, |(soft, _)| soft.min(65_536));
    (0..limit as RawFd).collect()
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
        let mut guard = self.fd.lock().unwrap_or_else(|p| p.into_inner());
        let Some(fd) = guard.take() else {
            return Ok(false);
        };
        // `fd` is open: the owner disarms, under this lock, before it
        // closes it.
        point_at_dev_null(fd)?;
        Ok(true)
    }

    /// Runs `f` on the descriptor unless it was revoked or disarmed,
    /// holding the lock, so the owner cannot close it meanwhile.
    pub(crate) fn with_fd<R>(&self, f: impl FnOnce(BorrowedFd<'_>) -> R) -> Option<R> {
        let guard = self.fd.lock().unwrap_or_else(|p| p.into_inner());
        let fd = (*guard)?;
        // SAFETY: `fd` is open while it is in the guard (the owner disarms,
        // under this lock, before it closes it, and a revoke takes it out),
        // and the borrow does not outlive the guard.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        Some(f(fd))
    }

    /// Stops watching: call before closing the descriptor.
    pub(crate) fn disarm(&self) {
        *self.fd.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

/// The signal that interrupts a blocking call of one thread: SIGURG (as
/// Go's runtime uses it), whose default action is to ignore it and which
/// only a socket with an owner (`F_SETOWN`) and urgent data raises on its
/// own.
const INTERRUPT: nix::sys::signal::Signal = nix::sys::signal::Signal::SIGURG;

extern "C" fn ignore_interrupt(_: libc::c_int) {}

/// A thread another thread can pull out of a blocking system call: the
/// prefork worker's watcher uses it to end its accepting thread's
/// `accept` (see `src/server/strategy/prefork/worker.rs`).
///
/// [`install`](Self::install) gives SIGURG a handler that does nothing,
/// *without* `SA_RESTART`, so a system call the signal interrupts fails
/// with `EINTR` instead of being restarted; [`interrupt`](Self::interrupt)
/// sends it to the thread that called [`current`](Self::current). A signal
/// that arrives just before the thread blocks is lost, so a caller repeats
/// it until the thread shows it left the call. Calls that `std` restarts
/// on `EINTR` (`TcpListener::accept`, `read_exact`) are not interrupted.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Interruptible {
    thread: libc::pthread_t,
}

impl Interruptible {
    /// Installs the process-wide handler (once per process; again is
    /// harmless).
    ///
    /// # Errors
    /// `sigaction` failed.
    pub(crate) fn install() -> std::io::Result<()> {
        use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet};
        let action = SigAction::new(
            SigHandler::Handler(ignore_interrupt),
            // No SA_RESTART: the interrupted call returns EINTR.
            SaFlags::empty(),
            SigSet::empty(),
        );
        // SAFETY: the handler does nothing, so it is async-signal-safe and
        // touches no state; replacing SIGURG's disposition (ignore by
        // default) only changes which calls see EINTR, which the callers of
        // `interrupt` expect.
        unsafe { sigaction(INTERRUPT, &action) }
            .map(drop)
            .map_err(std::io::Error::from)
    }

    /// The calling thread.
    pub(crate) fn current() -> Interruptible {
        // SAFETY: pthread_self has no preconditions and cannot fail.
        let thread = unsafe { libc::pthread_self() };
        Interruptible { thread }
    }

    /// Sends the signal to the thread, which must still be running (the
    /// caller guarantees it; a prefork worker's accepting thread is the
    /// process's main thread, alive until the process exits).
    pub(crate) fn interrupt(&self) {
        // SAFETY: `thread` was returned by pthread_self in this process and
        // the caller guarantees that thread is still running, so the
        // handle is valid; a failure (ESRCH) is harmless and ignored.
        let _ = unsafe { libc::pthread_kill(self.thread, INTERRUPT as libc::c_int) };
    }
}

/// Empties glibc's fastbins (and returns free heap memory to the system)
/// with `malloc_trim(0)`, so that a large allocation in a forked child
/// does not first run `malloc_consolidate`, which writes the chunk
/// headers of every fastbin chunk: each heap page it touches is a
/// copy-on-write fault in every child. The forking server calls it once
/// before its accept loop; it changes no allocation and frees nothing in
/// use. Does nothing on other C libraries.
pub(crate) fn consolidate_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only reorganises glibc's free lists under the
    // arena locks; it takes a padding size and touches no memory in use.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    /// `Duration::MAX` (Python's "no timeout" spelled as a number) waits
    /// until ready instead of panicking on the deadline's overflow.
    #[test]
    fn a_timeout_too_long_for_the_clock_waits_until_ready() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        std::io::Write::write_all(&mut &b, b"x").unwrap();
        assert!(wait_readable(a.as_fd(), Some(Duration::MAX)).unwrap());
    }
}
