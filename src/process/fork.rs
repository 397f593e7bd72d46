//! The fork primitive under [`Process`](super::Process), the forking server
//! and the pool: fork, run a closure in the child under `catch_unwind`,
//! leave with `_exit`, and hand the parent a [`ForkedChild`] with a pollable
//! sentinel and `waitpid(pid)`-only reaping.
//!
//! # Fork-safety rules
//!
//! - After `fork()` only the forking thread exists in the child. Locks held
//!   by other threads at that instant (a `Mutex`, stdout's lock, a tracing
//!   writer) stay locked forever in the child. glibc resets `malloc`'s own
//!   locks, so allocating is fine. Fork from a single-threaded process when
//!   you can; when the process has several threads, [`fork_child`] logs
//!   `process N is multi-threaded, fork() may deadlock the child` (the
//!   warning CPython 3.12 gives). Stdout and stderr are the exception: the
//!   parent flushes stdout before every fork, as CPython does, so a
//!   partial line is never printed twice, and holds stdout's and then
//!   stderr's lock across the fork (always in that order; see
//!   `fork_common`), so no other thread can hold either at that instant;
//!   the child releases the copies it inherits and flushes stdout when it
//!   leaves.
//! - The pid: this crate caches it (one `getpid` per process, refreshed
//!   in each child by a `pthread_atfork` handler), so forking, reaping and
//!   the owner checks make no `getpid` calls.
//! - The child never returns or unwinds into the caller's code: the body
//!   runs under `catch_unwind` and the child always ends with `_exit`, so
//!   the parent's destructors and `atexit` handlers never run twice.
//! - Descriptors: everything this crate opens is `O_CLOEXEC`, which only
//!   matters for `exec`; after a plain fork both processes hold every
//!   descriptor. Values moved into the body are dropped in the parent when
//!   the body is dropped there, which is the easy way to close "the child's
//!   end" of a pipe in the parent. The parent's own descriptors for its
//!   children (pidfd sentinels, lifelines) are close-on-fork (see
//!   `closefork`): no child holds a sibling's pidfd.
//! - Only `waitpid(pid)` on our own children, never `waitpid(-1)`.
//!
//! # Daemons die with the parent process
//!
//! `PR_SET_PDEATHSIG` is not used: Linux sends that signal when the
//! *thread* that forked exits, so a daemon started from a helper thread
//! died with the thread, and one whose thread ended before the child
//! armed the signal survived the parent. Instead each daemon gets a
//! *lifeline*: a pipe created just before the fork. The parent keeps the
//! write end (in its [`ForkedChild`], registered close-on-fork so no other
//! child of ours inherits it); the child keeps the read end, marked
//! `O_ASYNC` with itself as owner and `SIGKILL` as the I/O signal
//! (`F_SETOWN`, `F_SETSIG`). When the last write end closes — the parent
//! process exits or is killed, whatever thread forked — the kernel sends
//! that `SIGKILL`. No race: the child arms the read end *before* it closes
//! its own inherited copy of the write end, so if the parent is already
//! gone, that close itself fires the signal.
//!
//! Consequences: dropping the [`ForkedChild`] of a running daemon kills it
//! (a [`Process`](super::Process) terminates its daemons on drop anyway);
//! a process forked by other code than this crate (a plain `fork()` that
//! does not `exec`) inherits the write end and keeps daemons alive until it
//! exits; a daemon that `exec`s drops its lifeline (`O_CLOEXEC`).

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{getpid, getppid, ForkResult, Pid};

use super::closefork::{self, ParentOnly};
use super::connection::Connection;
use super::current::{self, ExitRequest};
use super::{registry, sys};
use crate::{Error, Result};

/// Options for [`fork_child`]. Default: no name (the child is called
/// `Process-<n>`), not a daemon.
///
/// Setters chain through `&mut self`, like every builder of this crate
/// ([`ServerBuilder`](crate::server::ServerBuilder),
/// [`PoolBuilder`](crate::process::PoolBuilder)):
///
/// ```
/// use socketserver::process::{fork_child, ForkOptions};
///
/// let mut options = ForkOptions::new();
/// options.name("worker").daemon(false);
/// let mut child = fork_child(&options, || {
///     let me = socketserver::process::current_process();
///     if me.name == "worker" && !me.daemon { 7 } else { 1 }
/// })?;
/// assert_eq!(child.wait()?, 7);
/// # Ok::<(), socketserver::Error>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct ForkOptions {
    name: Option<String>,
    daemon: bool,
    /// Identity already allocated by a `Process` (so it is not counted twice).
    pub(crate) identity: Option<String>,
    /// Count threads (`/proc/self/task`, for the multi-threaded warning)
    /// at most this often instead of on every fork: the forking server's
    /// setting, which would otherwise pay a `statx` per connection.
    pub(crate) thread_check_every: Option<Duration>,
    /// Build the child's `current_process()` state (name and identity
    /// strings) in the child, after the fork, instead of in the parent:
    /// the forking server's setting. Its children allocate anyway (the
    /// handler), on heap pages they fault in regardless, while the
    /// parent's three allocations and frees per fork each wrote heap
    /// pages, copy-on-write faults in the parent after every fork.
    pub(crate) state_in_child: bool,
    /// Let go of (point at `/dev/null`) every descriptor the child
    /// inherits except stdio, these,
    /// and what the fork itself hands the child (lifeline, sentinel pipe,
    /// exit notes): for children that must hold only what they need (the
    /// fork server's launcher, a manager), not the caller's listeners and
    /// pipes.
    pub(crate) keep_only: Option<Vec<RawFd>>,
}

impl ForkOptions {
    /// Options with the defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// The name the child reports from `current_process()`. Default is
    /// `Process-<n>` (`Process-1:2` for the second child of child 1).
    pub fn name(&mut self, name: impl Into<String>) -> &mut Self {
        self.name = Some(name.into());
        self
    }

    /// Makes the child a daemon: it dies when the parent *process* dies,
    /// even by SIGKILL, lives as long as the parent lives whichever thread
    /// forked it (and whenever that thread ends), and may not start
    /// children of its own. Default is `false`.
    ///
    /// How: not `PR_SET_PDEATHSIG`, which fires when the forking *thread*
    /// exits, but a *lifeline* pipe. The parent's [`ForkedChild`] holds the
    /// write end (closed in every other child this crate forks); the child
    /// holds the read end, set `O_ASYNC` with itself as owner and `SIGKILL`
    /// as its I/O signal. When the last write end closes — the parent
    /// exits or is killed — the kernel sends the child `SIGKILL`. The child
    /// arms it before closing its own inherited copy of the write end, so a
    /// parent that died right after `fork` is noticed too: there is no
    /// window. Dropping the `ForkedChild` of a running daemon therefore
    /// kills it; a process forked by code other than this crate (a plain
    /// `fork()` without `exec`) holds a copy of the write end until it
    /// exits, and a daemon that `exec`s drops its lifeline.
    pub fn daemon(&mut self, daemon: bool) -> &mut Self {
        self.daemon = daemon;
        self
    }

    pub(crate) fn name_ref(&self) -> Option<&str> {
        self.name.as_deref()
    }

    pub(crate) fn is_daemon(&self) -> bool {
        self.daemon
    }
}

/// A child started by [`fork_child`]: its pid, a sentinel descriptor that
/// becomes readable when it exits, and its exit code once reaped.
///
/// Exit codes follow `multiprocessing`: `0` after a normal return, the code
/// given to [`exit`](super::exit) or returned by the body, `1` after a
/// panic, `-N` when killed by signal `N`.
///
/// Dropping a `ForkedChild` that was not reaped reaps it if it has already
/// exited; if it still runs, a small detached thread waits for exactly that
/// pid, so no zombie is left behind and `waitpid(-1)` is never used.
#[derive(Debug)]
pub struct ForkedChild {
    pid: Pid,
    /// The process that forked (only it may wait for or signal the child).
    owner: Pid,
    /// pidfd, or the read end of a pipe whose write end only the child has;
    /// closed in every other child this crate forks (no process holds a
    /// sibling's pidfd).
    sentinel: ParentOnly<OwnedFd>,
    status: Option<i32>,
    /// A daemon's lifeline: the write end whose closing kills the child.
    lifeline: Option<Lifeline>,
    /// Slot in the exit-time registry (children of a `Process`).
    exit_slot: Option<usize>,
    /// Set for a child of the fork server (not our child: the server
    /// reaps it and reports its exit code on this status connection).
    served: Option<Box<Served>>,
}

#[derive(Debug)]
struct Served {
    status: Connection,
    result: Option<Vec<u8>>,
}

/// The parent's end of a daemon's lifeline (see the module docs). Kept as
/// a raw number: forked copies of a `ForkedChild` in other processes must
/// not close it (the close-on-fork pass already did, and the number may
/// have been reused there).
#[derive(Debug)]
pub(crate) struct Lifeline {
    fd: RawFd,
    slot: Option<usize>,
}

impl Lifeline {
    /// Creates the pipe; returns the parent's end and the child's end.
    pub(crate) fn new() -> Result<(Lifeline, OwnedFd)> {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        let fd = w.into_raw_fd();
        // Registered before the fork, so a sibling forked at the same time
        // from another thread closes its copy too.
        let slot = closefork::register(current::cached_pid(), fd);
        Ok((Lifeline { fd, slot }, r))
    }

    /// Closes the write end (only ever in the process that created it).
    pub(crate) fn close(self) {
        if let Some(slot) = self.slot {
            closefork::unregister(slot);
        }
        // SAFETY: `fd` is the write end this process created in `new` and
        // has not closed; it is unregistered from close-on-fork above.
        drop(unsafe { OwnedFd::from_raw_fd(self.fd) });
    }
}

/// `F_SETSIG` from `<asm-generic/fcntl.h>` (the `libc` crate does not
/// export it; its value is 10 on every Linux architecture).
const F_SETSIG: libc::c_int = 10;

/// In the child, before anything else: arm the read end so that the
/// kernel sends us SIGKILL when the last write end closes. Returns whether
/// arming worked.
pub(crate) fn arm_lifeline(read_end: &OwnedFd, pid: i32) -> bool {
    let fd = read_end.as_raw_fd();
    // SAFETY: fcntl on a descriptor we own, with integer arguments only.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        flags >= 0
            && libc::fcntl(fd, libc::F_SETOWN, pid) == 0
            && libc::fcntl(fd, F_SETSIG, libc::SIGKILL) == 0
            && libc::fcntl(fd, libc::F_SETFL, flags | libc::O_ASYNC | libc::O_NONBLOCK) == 0
    }
}

impl ForkedChild {
    /// The child's pid.
    pub fn pid(&self) -> i32 {
        self.pid.as_raw()
    }

    /// A descriptor that polls readable once the child has exited (a pidfd;
    /// a pipe on kernels older than 5.3). Poll many children's sentinels at
    /// once, then [`try_wait`](Self::try_wait) those that are ready.
    pub fn sentinel(&self) -> BorrowedFd<'_> {
        self.sentinel.as_fd()
    }

    /// The exit code if the child has already been reaped.
    pub fn exitcode(&self) -> Option<i32> {
        self.status
    }

    /// Reaps the child if it has exited, without blocking.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when called in a process other than the
    /// one that forked (for example in a sibling that inherited this value);
    /// [`Error::Io`] if `waitpid` fails.
    pub fn try_wait(&mut self) -> Result<Option<i32>> {
        self.reap(true)
    }

    /// Blocks until the child exits and returns its exit code.
    ///
    /// # Errors
    /// As [`try_wait`](Self::try_wait).
    pub fn wait(&mut self) -> Result<i32> {
        loop {
            if let Some(code) = self.reap(false)? {
                return Ok(code);
            }
        }
    }

    /// Waits at most `timeout` for the child to exit, by polling the
    /// sentinel (no sleep loop): returns as soon as the child is gone, or
    /// `Ok(None)` when it still runs at the deadline.
    ///
    /// # Errors
    /// As [`try_wait`](Self::try_wait).
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<i32>> {
        if let Some(code) = self.status {
            return Ok(Some(code));
        }
        self.check_owner()?;
        if sys::wait_readable(self.sentinel.as_fd(), Some(timeout))? {
            // The sentinel fired: the child is a zombie, waitpid returns at
            // once. Blocking here cannot hang.
            return self.wait().map(Some);
        }
        Ok(None)
    }

    /// A child of the fork server: `status` already delivered the pid;
    /// `exited` is its exit code if the server reported it already.
    pub(crate) fn served(
        pid: Pid,
        status: Connection,
        lifeline: Option<Lifeline>,
        exited: Option<i32>,
    ) -> Result<ForkedChild> {
        // A pidfd works for any process, not only our children. If the
        // child is already gone, the status socket (which carries the
        // exit report) stands in.
        let sentinel = match exited.map_or_else(|| pidfd_open(pid).ok(), |_| None) {
            Some(fd) => fd,
            None => match status.fileno() {
                Some(fd) => fd.try_clone_to_owned()?,
                None => return Err(Error::Closed),
            },
        };
        let sentinel = ParentOnly::new(sentinel);
        let mut child = ForkedChild {
            pid,
            owner: Pid::from_raw(current::cached_pid()),
            sentinel,
            status: None,
            lifeline,
            exit_slot: None,
            served: Some(Box::new(Served {
                status,
                result: None,
            })),
        };
        if let Some(code) = exited {
            child.reaped(code);
        }
        Ok(child)
    }

    /// The encoded result a fork-server child sent, once (after it exited).
    pub(crate) fn take_result(&mut self) -> Option<Vec<u8>> {
        self.served.as_mut().and_then(|s| s.result.take())
    }

    /// Sends `signal` to the child. Does nothing once the child was reaped,
    /// so a recycled pid is never signalled.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] outside the forking process; [`Error::Io`]
    /// if `kill` fails.
    pub fn signal(&self, signal: Signal) -> Result<()> {
        if self.status.is_some() {
            return Ok(());
        }
        self.check_owner()?;
        if self.served.is_some() {
            // Through the pidfd: the server may already have reaped the
            // child and its pid been reused.
            // SAFETY: pidfd_send_signal with a descriptor we own, a signal
            // number and a null siginfo; no memory is written.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    self.sentinel.as_raw_fd(),
                    signal as libc::c_int,
                    std::ptr::null::<libc::siginfo_t>(),
                    0,
                )
            };
            let err = std::io::Error::last_os_error();
            return match (rc, err.raw_os_error()) {
                (0, _) | (_, Some(libc::ESRCH | libc::EBADF | libc::EINVAL)) => Ok(()),
                _ => Err(err.into()),
            };
        }
        match kill(self.pid, signal) {
            Ok(()) | Err(Errno::ESRCH) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether the calling process is the one that forked this child.
    pub fn is_owner(&self) -> bool {
        current::cached_pid() == self.owner.as_raw()
    }

    fn check_owner(&self) -> Result<()> {
        if self.is_owner() {
            Ok(())
        } else {
            Err(Error::InvalidArgument(format!(
                "pid {} is not a child of this process",
                self.pid
            )))
        }
    }

    /// Registers the child to be handled at this process's normal exit:
    /// waited for (non-daemon) or terminated (daemon). `Process` does this.
    ///
    /// A child of the fork server is not our child (`waitpid` cannot wait
    /// for it): it is waited for through its pidfd, which becomes readable
    /// when it exits, whoever reaps it.
    pub(crate) fn handle_at_exit(&mut self, daemon: bool) {
        if self.exit_slot.is_none() && self.status.is_none() {
            let served = self.served.is_some();
            let sentinel = if daemon || served {
                self.sentinel.as_raw_fd()
            } else {
                -1
            };
            self.exit_slot = registry::register(self.pid.as_raw(), sentinel, daemon, served);
        }
    }

    fn reaped(&mut self, code: i32) {
        self.status = Some(code);
        if let Some(slot) = self.exit_slot.take() {
            registry::unregister(slot);
        }
        if let Some(l) = self.lifeline.take() {
            l.close();
        }
    }

    /// Reads the status connection of a fork-server child: its result
    /// and, once the server reaped it, its exit code.
    fn reap_served(&mut self, nohang: bool) -> Result<Option<i32>> {
        loop {
            let Some(s) = self.served.as_mut() else {
                return Ok(None);
            };
            if nohang && !s.status.poll(Duration::ZERO)? {
                return Ok(None);
            }
            let frame = match s.status.recv_bytes() {
                Ok(frame) => frame,
                Err(Error::Eof | Error::TruncatedFrame { .. }) => {
                    return Err(Error::Io(std::io::Error::other(
                        "the fork server ended before reporting the child's exit",
                    )))
                }
                Err(e) => return Err(e),
            };
            match frame.first() {
                Some(b'R') => s.result = Some(frame[1..].to_vec()),
                Some(b'X') => {
                    let code = exit_code_of(&frame);
                    self.reaped(code);
                    return Ok(Some(code));
                }
                _ => {}
            }
        }
    }

    fn reap(&mut self, nohang: bool) -> Result<Option<i32>> {
        if let Some(code) = self.status {
            return Ok(Some(code));
        }
        self.check_owner()?;
        if self.served.is_some() {
            return self.reap_served(nohang);
        }
        let code = wait_code(self.pid, nohang)?;
        if let Some(code) = code {
            self.reaped(code);
        }
        Ok(code)
    }
}

/// `waitpid(pid)` (with `WNOHANG` when `nohang`) on one child of ours: its
/// exit code once it has exited (`-N` when killed by signal `N`), `None`
/// while it runs (only with `nohang`).
pub(crate) fn wait_code(pid: Pid, nohang: bool) -> Result<Option<i32>> {
    let flags = nohang.then_some(WaitPidFlag::WNOHANG);
    loop {
        match waitpid(pid, flags) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(Some(code)),
            Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(Some(-(sig as i32))),
            Ok(WaitStatus::StillAlive) => return Ok(None),
            // Stopped/continued are not reported without WUNTRACED.
            Ok(_) => {
                if nohang {
                    return Ok(None);
                }
            }
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

impl Drop for ForkedChild {
    fn drop(&mut self) {
        if self.status.is_some() || !self.is_owner() {
            return;
        }
        if let Ok(Some(_)) = self.reap(true) {
            return;
        }
        // A running daemon whose handle goes away loses its lifeline: it is
        // killed, and the reaper thread below collects it.
        if let Some(l) = self.lifeline.take() {
            l.close();
        }
        // The sentinel closes now; the registry keeps the pid (so a
        // non-daemon is still waited for at exit) until the reaper reaps.
        if let Some(slot) = self.exit_slot {
            registry::forget_sentinel(slot);
        }
        if self.served.is_some() {
            // Not our child: the fork server reaps it. A non-daemon is
            // still waited for at exit (through a copy of its pidfd that a
            // small thread holds until it exits).
            if let Some(slot) = self.exit_slot.take() {
                detach_served(&self.sentinel, slot);
            }
            return;
        }
        detach(self.pid, self.exit_slot.take());
    }
}

/// Hands a still-running child to a thread that waits for exactly its pid,
/// then frees its exit-registry slot.
pub(crate) fn detach(pid: Pid, exit_slot: Option<usize>) {
    let spawned = std::thread::Builder::new()
        .name(format!("reaper-{pid}"))
        .stack_size(64 * 1024)
        .spawn(move || {
            while let Err(Errno::EINTR) = waitpid(pid, None) {}
            if let Some(slot) = exit_slot {
                registry::unregister(slot);
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(%pid, error = %e, "cannot spawn reaper thread; child may linger as a zombie");
    }
}

/// Hands the exit-registry slot of a still-running fork-server child to a
/// thread that holds a copy of its pidfd until it exits, then frees the
/// slot: at exit the child is still waited for.
fn detach_served(sentinel: &OwnedFd, slot: usize) {
    let Ok(copy) = sentinel.try_clone() else {
        registry::unregister(slot);
        return;
    };
    let copy = ParentOnly::new(copy);
    // The registry names the copy from now on; the original closes when
    // this `ForkedChild` is gone.
    registry::set_sentinel(slot, copy.as_raw_fd());
    let spawned = std::thread::Builder::new()
        .name("served-watch".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            let _ = sys::wait_readable(copy.as_fd(), None);
            registry::unregister(slot);
            drop(copy);
        });
    if spawned.is_err() {
        registry::unregister(slot);
    }
}

/// Whether a rate-limited thread check is due (and if so, records it).
fn thread_check_due(every: Duration) -> bool {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    static LAST_MS: AtomicU64 = AtomicU64::new(u64::MAX);
    let now = EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64;
    let last = LAST_MS.load(Ordering::Relaxed);
    if last != u64::MAX && now.saturating_sub(last) < every.as_millis() as u64 {
        return false;
    }
    LAST_MS.store(now, Ordering::Relaxed);
    true
}

/// Logs CPython 3.12's warning when this process has more than one thread
/// (counted in `/proc/self/task`).
fn warn_if_threaded(pid: i32) {
    if sys::thread_count() > 1 {
        tracing::warn!(
            "process {} is multi-threaded, fork() may deadlock the child",
            pid
        );
    }
}

/// 0 = unknown, 1 = pidfd_open works, 2 = use a pipe.
static PIDFD: AtomicU8 = AtomicU8::new(0);

pub(crate) fn pidfd_open(pid: Pid) -> Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor
    // or -1; no memory is passed.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    // SAFETY: the syscall just returned this descriptor and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn pidfd_supported() -> bool {
    match PIDFD.load(Ordering::Relaxed) {
        1 => true,
        2 => false,
        _ => {
            let ok = pidfd_open(getpid()).is_ok();
            PIDFD.store(if ok { 1 } else { 2 }, Ordering::Relaxed);
            ok
        }
    }
}

/// The child's `current_process()` state: built before the fork, or to
/// build in the child from an identity numbered before it.
enum Prepared {
    Built(Box<current::ChildState>),
    InChild(current::IdentitySeed),
}

/// Forks; the child runs `body` and `_exit`s with its return value (or 1 if
/// it panicked, or the code given to [`exit`](super::exit)); the parent gets
/// the [`ForkedChild`].
///
/// `body` is dropped, unrun, in the parent, which closes whatever it
/// captured by move there. Read the module's fork-safety rules first.
///
/// # Errors
/// [`Error::DaemonicChildren`] when called inside a daemon child;
/// [`Error::Io`] when `fork`, `pidfd_open` or `pipe2` fail (`EAGAIN` at the
/// process limit, `EMFILE`, …).
pub fn fork_child<F: FnOnce() -> i32>(options: &ForkOptions, body: F) -> Result<ForkedChild> {
    let pipe = if pidfd_supported() {
        None
    } else {
        Some(nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?)
    };
    let Forked {
        child,
        parent,
        lifeline,
        pipe_read,
    } = fork_common(
        options,
        Via {
            pipe,
            ..Via::default()
        },
        body,
    )?;
    let sentinel = match pipe_read {
        Some(r) => ParentOnly::new(r),
        None => match pidfd_open(child) {
            Ok(fd) => ParentOnly::new(fd),
            Err(e) => {
                // Without a sentinel the child cannot be managed.
                let _ = kill(child, Signal::SIGKILL);
                let _ = waitpid(child, None);
                if let Some(l) = lifeline {
                    l.close();
                }
                return Err(e);
            }
        },
    };
    Ok(ForkedChild {
        pid: child,
        owner: parent,
        sentinel,
        status: None,
        lifeline,
        exit_slot: None,
        served: None,
    })
}

/// What the parent has of a child [`fork_common`] made.
pub(crate) struct Forked {
    pub(crate) child: Pid,
    /// The forking process.
    pub(crate) parent: Pid,
    pub(crate) lifeline: Option<Lifeline>,
    /// The read end of `pipe`, when one was given.
    pub(crate) pipe_read: Option<OwnedFd>,
}

/// What [`fork_common`] does besides forking.
#[derive(Default)]
pub(crate) struct Via {
    /// A sentinel pipe whose write end the child keeps until it exits
    /// (kernels without pidfds).
    pub(crate) pipe: Option<(OwnedFd, OwnedFd)>,
    /// The write end of the exit notes the child reports to before
    /// `_exit`; the child keeps it open through the close-on-fork pass.
    pub(crate) note: Option<current::NoteEnd>,
    /// The child's identity, numbered by the caller (the forking server's
    /// [`IdentityBlock`](current::IdentityBlock)); else numbered here.
    pub(crate) seed: Option<current::IdentitySeed>,
}

/// The fork behind [`fork_child`] and the forking server's
/// [`ExitNotes::fork`](super::notes::ExitNotes::fork).
pub(crate) fn fork_common<F: FnOnce() -> i32>(
    options: &ForkOptions,
    via: Via,
    body: F,
) -> Result<Forked> {
    let Via { pipe, note, seed } = via;
    if current::child_state().is_some_and(|s| s.daemon) {
        return Err(Error::DaemonicChildren);
    }
    // Our pid from the cache (kept right across forks, see
    // `current::cached_pid`), not a `getpid` per fork.
    let parent = Pid::from_raw(current::cached_pid());
    // Entries our own parent left in the close-on-fork table are stale
    // here; the child must not take them for ours.
    closefork::forget_stale(parent.as_raw());
    if options.thread_check_every.is_none_or(thread_check_due) {
        warn_if_threaded(parent.as_raw());
    }
    let lifeline = if options.daemon {
        Some(Lifeline::new()?)
    } else {
        None
    };
    // As CPython does: flush our own pending stdout before forking, so the
    // child does not inherit (and later print) a copy of a partial line.
    // The lock is held across the fork: no other thread of ours can hold
    // it at that instant, so the child inherits it held by its own (only)
    // thread and releases it, and stdout is usable (and flushed at exit)
    // in every child, whatever threads the parent has. This also
    // initialises stdout here, once, instead of in every child.
    let mut stdout = std::io::stdout().lock();
    {
        use std::io::Write;
        let _ = stdout.flush();
    }
    // Stderr's lock too, for the same reason (a thread in the middle of
    // an `eprintln!` would otherwise leave it locked for ever in the
    // child, and the child's first `eprintln!` would hang). Always stdout
    // first, then stderr: the only cycle possible is with a thread that
    // holds stderr's lock and then wants stdout's, while the common
    // pattern, holding stdout's lock and reporting an error with
    // `eprintln!`, only makes us wait. Both locks are reentrant, so a
    // caller that already holds either one on this thread does not
    // deadlock against itself.
    let stderr = std::io::stderr().lock();
    // A forking server's child that forks: its child must not keep the
    // server's exit notes.
    let inherited_note = current::inherited_note(note);
    // The state `current_process()` reports in the child: built here, or
    // (state_in_child) in the child from an identity numbered here.
    let state = if options.state_in_child && options.identity.is_none() {
        Prepared::InChild(seed.unwrap_or_else(current::next_identity_seed))
    } else {
        let identity = options
            .identity
            .clone()
            .unwrap_or_else(current::next_identity);
        Prepared::Built(current::prepare_child(
            options.name.clone(),
            options.daemon,
            identity,
        ))
    };
    // SAFETY: the child only runs `child_main`, which never returns; it
    // follows the fork-safety rules above (no locks taken by us before the
    // body runs; leaves with `_exit`).
    match unsafe { nix::unistd::fork() }? {
        ForkResult::Child => {
            // Ours now (see above): release them for the body.
            drop(stderr);
            drop(stdout);
            // The one getpid of the child: it fills the pid cache.
            let pid = current::refresh_pid();
            // Arm the lifeline before the close-on-fork pass closes our
            // inherited copy of its write end (see the module docs).
            // The parent's end (a plain number) is closed by the
            // close-on-fork pass below.
            let lifeline = lifeline.map(|(parent_end, read_end)| {
                if !arm_lifeline(&read_end, pid) {
                    // A daemon that cannot watch its parent must not run.
                    // SAFETY: _exit ends the process without running Rust code.
                    unsafe { libc::_exit(1) };
                }
                if parent_end.slot.is_none() {
                    // The close-on-fork table was full: close it here.
                    // SAFETY: our inherited copy of the write end, which
                    // nothing else in this new process refers to.
                    unsafe { libc::close(parent_end.fd) };
                }
                read_end
            });
            closefork::close_in_child(parent.as_raw(), note.map(|end| end.fd));
            current::close_inherited_note(inherited_note);
            let keep = pipe.map(|(r, w)| {
                drop(r);
                w
            });
            if let Some(only) = &options.keep_only {
                let mut only = only.clone();
                only.extend(lifeline.as_ref().map(AsRawFd::as_raw_fd));
                only.extend(keep.as_ref().map(AsRawFd::as_raw_fd));
                only.extend(note.map(|end| end.fd));
                sys::release_other_fds(&only);
            }
            let mut state = match state {
                Prepared::Built(state) => state,
                Prepared::InChild(seed) => {
                    current::prepare_child(options.name.clone(), options.daemon, seed)
                }
            };
            if note.is_some() {
                state.note = note;
            }
            child_main(parent, pid, lifeline, state, keep, body)
        }
        ForkResult::Parent { child } => {
            drop(stderr);
            drop(stdout);
            let lifeline = lifeline.map(|(parent_end, read_end)| {
                drop(read_end);
                parent_end
            });
            let pipe_read = pipe.map(|(r, w)| {
                drop(w);
                r
            });
            drop(body);
            drop(state);
            Ok(Forked {
                child,
                parent,
                lifeline,
                pipe_read,
            })
        }
    }
}

fn child_main<F: FnOnce() -> i32>(
    parent: Pid,
    pid: i32,
    lifeline: Option<OwnedFd>,
    state: Box<current::ChildState>,
    sentinel_end: Option<OwnedFd>,
    body: F,
) -> ! {
    if let Some(read_end) = lifeline {
        // Belt and braces: the lifeline already fired if the parent died
        // before we closed our copy of its write end.
        if getppid() != parent {
            // SAFETY: _exit ends the process without running any Rust code.
            unsafe { libc::_exit(1) };
        }
        // Open until _exit: the kernel watches it for us.
        std::mem::forget(read_end);
    }
    // The write end stays open until _exit closes it: that is the sentinel.
    std::mem::forget(sentinel_end);
    current::enter_child(state, pid);
    let code = match catch_unwind(AssertUnwindSafe(body)) {
        Ok(code) => code,
        Err(payload) => {
            let code = payload.downcast_ref::<ExitRequest>().map_or(1, |e| e.0);
            // Dropping a payload can itself panic; the process ends anyway.
            std::mem::forget(payload);
            code
        }
    };
    leave_child(code)
}

/// Ends the current process with exit status `code`: Python's `sys.exit(code)`
/// inside a child.
///
/// Inside the target of a child started by this crate (on the thread that
/// runs it), this unwinds to the fork point, so destructors of the target's
/// locals run, and the child then leaves with `_exit(code)`; the parent sees
/// `exitcode() == Some(code & 0xff)`. Called on another thread of such a
/// child, it runs the child's exit cleanup and `_exit`s at once. In any
/// other process it is [`std::process::exit`].
///
/// A `catch_unwind` inside the target can catch the unwinding, just as a
/// bare `except:` catches `SystemExit` in Python.
pub fn exit(code: i32) -> ! {
    if current::child_state().is_some() {
        if current::exit_unwinds() {
            // resume_unwind does not run the panic hook: no "panicked" noise.
            std::panic::resume_unwind(Box::new(ExitRequest(code)));
        }
        leave_child(code);
    }
    std::process::exit(code)
}

/// The exit code in an `X` frame (`X`, pid, code).
pub(crate) fn exit_code_of(frame: &[u8]) -> i32 {
    frame
        .get(5..9)
        .map_or(-1, |b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// Child exit path: wait for our own non-daemon children, terminate our own
/// daemons, flush stdout when that is safe, `_exit(code)`.
pub(crate) fn leave_child(code: i32) -> ! {
    current::body_done();
    let _ = catch_unwind(|| {
        registry::at_normal_exit();
        // Safe whatever threads the parent had: the fork happened with
        // stdout's lock held by the forking thread (see `fork_child`).
        use std::io::Write;
        let _ = std::io::stdout().flush();
    });
    // The last thing before leaving: a forking server's child tells the
    // server it is done (see `notes`).
    current::write_exit_note();
    // SAFETY: _exit ends the process immediately; no destructors or atexit
    // handlers of the parent's image run in the child.
    unsafe { libc::_exit(code) }
}
