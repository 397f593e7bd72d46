//! Process-global registry of the running children a [`Process`] started,
//! so that at normal exit — return from `main`, `std::process::exit`
//! (which skips destructors), or a child of ours leaving — the non-daemon
//! ones are waited for and then the daemons are terminated, as Python's
//! `multiprocessing` does at exit.
//!
//! [`Process`]: super::Process
//!
//! The registry is a fixed array of atomic slots rather than a
//! `Mutex<Vec<_>>`: a child forked while another thread holds a mutex would
//! inherit it locked forever. Each slot records the pid of the process that
//! registered it, so a child never terminates its parent's daemons.

use std::os::fd::{BorrowedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::waitpid;
use nix::unistd::Pid;

const SLOTS: usize = 1024;

/// How long daemons get to react to SIGTERM at exit before SIGKILL.
pub(crate) const DAEMON_GRACE: Duration = Duration::from_secs(1);

struct Slot {
    /// Pid of the registering process; 0 = free.
    owner: AtomicI32,
    pid: AtomicI32,
    sentinel: AtomicI32,
    daemon: AtomicBool,
    /// A child of the fork server: not ours to `waitpid`; `sentinel` is
    /// its pidfd, readable once it exits.
    served: AtomicBool,
}

#[allow(clippy::declare_interior_mutable_const)]
const FREE: Slot = Slot {
    owner: AtomicI32::new(0),
    pid: AtomicI32::new(0),
    sentinel: AtomicI32::new(-1),
    daemon: AtomicBool::new(false),
    served: AtomicBool::new(false),
};

static DAEMONS: [Slot; SLOTS] = [FREE; SLOTS];
/// One past the highest slot ever used: scans stop here, so a process that
/// never registered anything does not touch the table at all (in a fresh
/// child every untouched page read is a page fault).
static HIGH: AtomicUsize = AtomicUsize::new(0);

fn used() -> &'static [Slot] {
    &DAEMONS[..HIGH.load(Ordering::Acquire).min(SLOTS)]
}
static HOOK_INSTALLED: AtomicBool = AtomicBool::new(false);

/// Records a running child (`sentinel` is used for daemons and fork-server
/// children only; -1 for none); returns its slot, or `None` when the
/// registry is full (a daemon is then only covered by its `Process` drop
/// and by its lifeline; a non-daemon is not waited for at exit).
pub(crate) fn register(pid: i32, sentinel: RawFd, daemon: bool, served: bool) -> Option<usize> {
    install_hook();
    let me = super::current::cached_pid();
    for (i, slot) in DAEMONS.iter().enumerate() {
        if slot
            .owner
            .compare_exchange(0, me, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            HIGH.fetch_max(i + 1, Ordering::AcqRel);
            slot.sentinel.store(sentinel, Ordering::Release);
            slot.daemon.store(daemon, Ordering::Release);
            slot.served.store(served, Ordering::Release);
            slot.pid.store(pid, Ordering::Release);
            return Some(i);
        }
    }
    tracing::warn!(pid, "child registry full; child not handled at exit");
    None
}

/// Forgets a slot's sentinel before the descriptor is closed (the child
/// may still run; at exit it is then signalled without waiting on it).
pub(crate) fn forget_sentinel(slot: usize) {
    if let Some(s) = DAEMONS.get(slot) {
        s.sentinel.store(-1, Ordering::Release);
    }
}

/// Names another descriptor as a slot's sentinel (a fork-server child's
/// pidfd, handed to the thread that watches it after its `Process` was
/// dropped).
pub(crate) fn set_sentinel(slot: usize, fd: RawFd) {
    if let Some(s) = DAEMONS.get(slot) {
        s.sentinel.store(fd, Ordering::Release);
    }
}

/// Forgets a slot (the child was reaped).
pub(crate) fn unregister(slot: usize) {
    if let Some(s) = DAEMONS.get(slot) {
        s.pid.store(0, Ordering::Release);
        s.sentinel.store(-1, Ordering::Release);
        s.owner.store(0, Ordering::Release);
    }
}

fn install_hook() {
    if !HOOK_INSTALLED.swap(true, Ordering::AcqRel) {
        // SAFETY: `at_exit` is an `extern "C" fn()` that never unwinds
        // (it only makes system calls); atexit has no other precondition.
        let rc = unsafe { libc::atexit(at_exit) };
        if rc != 0 {
            tracing::warn!("atexit registration failed; daemons rely on drop and their lifeline");
        }
    }
}

extern "C" fn at_exit() {
    at_normal_exit();
}

/// What a process does at normal exit: wait for the non-daemon children it
/// started that still run, then terminate its daemons.
pub(crate) fn at_normal_exit() {
    if used().is_empty() {
        // Nothing was ever registered here: no system call at all (a
        // forking server's child leaves through this on every request).
        return;
    }
    join_own_children();
    terminate_own_daemons();
}

/// Waits until every non-daemon child this process registered has exited
/// (Python joins them at exit). Waits with `WNOWAIT`, so it never reaps a
/// child that a `Process` or a reaper thread will reap: no exit status is
/// stolen from a concurrent `join`. A fork-server child (the server's,
/// not ours: `waitid` would fail with `ECHILD` at once) is waited for on
/// its pidfd instead.
fn join_own_children() {
    let me = super::current::cached_pid();
    for slot in used() {
        if slot.owner.load(Ordering::Acquire) != me || slot.daemon.load(Ordering::Acquire) {
            continue;
        }
        let pid = slot.pid.load(Ordering::Acquire);
        if pid <= 0 {
            continue;
        }
        if slot.served.load(Ordering::Acquire) {
            wait_served(slot, me, pid);
            continue;
        }
        let flags = nix::sys::wait::WaitPidFlag::WEXITED | nix::sys::wait::WaitPidFlag::WNOWAIT;
        let id = || nix::sys::wait::Id::Pid(Pid::from_raw(pid));
        let nohang = flags | nix::sys::wait::WaitPidFlag::WNOHANG;
        if matches!(
            nix::sys::wait::waitid(id(), nohang),
            Ok(nix::sys::wait::WaitStatus::StillAlive)
        ) {
            log_wait(pid);
        }
        while let Err(nix::errno::Errno::EINTR) = nix::sys::wait::waitid(id(), flags) {}
    }
}

/// Says why the exit is waiting: a program that seems to hang at exit is
/// most often waiting here for a non-daemon child that itself waits for
/// something (end-of-file on a pipe whose other end it holds, for
/// instance).
fn log_wait(pid: i32) {
    tracing::info!(
        pid,
        "waiting at exit for non-daemon child process {pid} (as Python does); \
         join or terminate it first, or make it a daemon, to exit without waiting"
    );
}

/// Waits for a fork-server child on its pidfd. The descriptor belongs to
/// its `ForkedChild` (or the thread watching a dropped one), which may
/// free the slot and close it at any moment: so each wait is short, and
/// the slot is checked again before the next one.
fn wait_served(slot: &Slot, me: i32, pid: i32) {
    const STEP: Duration = Duration::from_millis(100);
    let mut logged = false;
    while slot.owner.load(Ordering::Acquire) == me && slot.pid.load(Ordering::Acquire) == pid {
        let raw = slot.sentinel.load(Ordering::Acquire);
        if raw < 0 {
            // Being handed from a dropped `Process` to its watcher.
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        // The slot still names this pidfd after the wait: otherwise the
        // wait's answer was about a number that was handed over (and
        // closed, maybe reused) meanwhile, and says nothing of the child.
        let still_ours = || {
            slot.owner.load(Ordering::Acquire) == me
                && slot.pid.load(Ordering::Acquire) == pid
                && slot.sentinel.load(Ordering::Acquire) == raw
        };
        // SAFETY: the pidfd stays open while the slot names it (its owner
        // frees the slot before closing it; a stale number costs at most
        // one short wait, checked again above).
        let fd = unsafe { BorrowedFd::borrow_raw(raw) };
        if !logged {
            logged = true;
            if matches!(
                super::sys::wait_readable(fd, Some(Duration::ZERO)),
                Ok(false)
            ) {
                log_wait(pid);
            }
        }
        match super::sys::wait_readable(fd, Some(STEP)) {
            Ok(false) => {}
            Ok(true) | Err(_) if still_ours() => return,
            // Handed over meanwhile: wait again on what the slot names now.
            Ok(true) | Err(_) => {}
        }
    }
}

/// Terminates and reaps every daemon this process registered: SIGTERM,
/// up to [`DAEMON_GRACE`] for them to exit, then SIGKILL. Runs at normal
/// exit of the main process and when a child started by us leaves.
pub(crate) fn terminate_own_daemons() {
    let me = super::current::cached_pid();
    let mut mine: Vec<(usize, i32, RawFd)> = Vec::new();
    for (i, slot) in used().iter().enumerate() {
        if slot.owner.load(Ordering::Acquire) == me && slot.daemon.load(Ordering::Acquire) {
            let pid = slot.pid.load(Ordering::Acquire);
            if pid > 0 {
                mine.push((i, pid, slot.sentinel.load(Ordering::Acquire)));
            }
        }
    }
    if mine.is_empty() {
        return;
    }
    for &(_, pid, _) in &mine {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    }
    let deadline = Instant::now() + DAEMON_GRACE;
    for &(slot, pid, fd) in &mine {
        if fd >= 0 {
            // SAFETY: the fd is the sentinel owned by the daemon's
            // `Process`, which unregisters before closing it; it stays open
            // while the slot is registered.
            let fd = unsafe { BorrowedFd::borrow_raw(fd) };
            let left = deadline.saturating_duration_since(Instant::now());
            if !matches!(super::sys::wait_readable(fd, Some(left)), Ok(true)) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        } else {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        while let Err(nix::errno::Errno::EINTR) = waitpid(Pid::from_raw(pid), None) {}
        unregister(slot);
    }
}
