//! Who am I: `current_process()`, `parent_pid()`, `cpu_count()`, and the
//! explicit `exit(code)` a child uses to end with a chosen exit code.
//!
//! The state of "this process is a child started by us" lives in one
//! pointer that the child sets right after `fork()`. No lock is involved, so
//! a lock held by some other thread of the parent at fork time cannot
//! deadlock the child here.

use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, Ordering};

use nix::unistd::{getpid, getppid, gettid};

/// What a child started by this crate knows about itself. Leaked once per
/// child process (never freed: the process ends with `_exit`).
#[derive(Debug)]
pub(crate) struct ChildState {
    pub(crate) name: String,
    pub(crate) daemon: bool,
    pub(crate) pid: i32,
    /// The thread that runs the target; `exit()` unwinds only on it.
    pub(crate) body_tid: i32,
    /// `"1:2"`-style identity, the prefix for names of our own children.
    pub(crate) identity: String,
    /// Counter for default names of the children this child starts.
    pub(crate) next_child: AtomicU32,
    /// Whether stdout/stderr may be flushed at exit (the fork happened while
    /// the parent had one thread, so no other thread can hold their locks).
    pub(crate) flush_stdio: bool,
}

static CHILD: AtomicPtr<ChildState> = AtomicPtr::new(std::ptr::null_mut());
static MAIN_NEXT_CHILD: AtomicU32 = AtomicU32::new(1);
/// Set in a child once its target finished, so `exit()` called from a
/// destructor that runs afterwards does not try to unwind.
static BODY_DONE: AtomicBool = AtomicBool::new(false);

/// The state of the current process if it is a child we forked.
pub(crate) fn child_state() -> Option<&'static ChildState> {
    let ptr = CHILD.load(Ordering::Acquire);
    if ptr.is_null() {
        return None;
    }
    // SAFETY: a non-null CHILD always points to a leaked `Box<ChildState>`
    // that is never freed, so the reference is valid for 'static.
    let state = unsafe { &*ptr };
    // A grandchild forked behind our back (plain libc fork) inherits the
    // pointer; the pid check keeps it from claiming its parent's identity.
    (state.pid == getpid().as_raw()).then_some(state)
}

/// Called in the child right after `fork()`.
pub(crate) fn enter_child(name: Option<String>, daemon: bool, identity: String, flush: bool) {
    let name = name.unwrap_or_else(|| format!("Process-{identity}"));
    let state = Box::new(ChildState {
        name,
        daemon,
        pid: getpid().as_raw(),
        body_tid: gettid().as_raw(),
        identity,
        next_child: AtomicU32::new(1),
        flush_stdio: flush,
    });
    BODY_DONE.store(false, Ordering::Release);
    CHILD.store(Box::into_raw(state), Ordering::Release);
}

/// Called in the child once the target returned or unwound.
pub(crate) fn body_done() {
    BODY_DONE.store(true, Ordering::Release);
}

/// Allocates the identity (`"3"`, or `"1:3"` inside child `1`) for the next
/// child this process starts; default names are `Process-<identity>`, as in
/// Python.
pub(crate) fn next_identity() -> String {
    match child_state() {
        Some(s) => format!(
            "{}:{}",
            s.identity,
            s.next_child.fetch_add(1, Ordering::Relaxed)
        ),
        None => MAIN_NEXT_CHILD.fetch_add(1, Ordering::Relaxed).to_string(),
    }
}

/// A snapshot of the current process, like Python's
/// `multiprocessing.current_process()` (name, pid, daemon flag).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessInfo {
    /// `"MainProcess"` in a program's own process; the `Process` name in a
    /// child started by this crate.
    pub name: String,
    /// `os.getpid()`.
    pub pid: i32,
    /// `os.getppid()`.
    pub ppid: i32,
    /// Whether this process is a daemon child (and so may not start
    /// children of its own).
    pub daemon: bool,
}

/// Describes the calling process: Python's `multiprocessing.current_process()`.
///
/// Returns `"MainProcess"` unless the caller runs inside a child started by
/// [`Process`](super::Process) or [`fork_child`](super::fork_child).
pub fn current_process() -> ProcessInfo {
    let pid = getpid().as_raw();
    let ppid = getppid().as_raw();
    match child_state() {
        Some(s) => ProcessInfo {
            name: s.name.clone(),
            pid,
            ppid,
            daemon: s.daemon,
        },
        None => ProcessInfo {
            name: "MainProcess".to_owned(),
            pid,
            ppid,
            daemon: false,
        },
    }
}

/// The parent's pid: Python's `os.getppid()`. After the parent died this is
/// the pid of whichever process adopted us (often 1).
pub fn parent_pid() -> i32 {
    getppid().as_raw()
}

/// Number of online CPUs, like Python's `multiprocessing.cpu_count()`.
///
/// This counts the machine's CPUs, not the ones this process may use; use
/// [`std::thread::available_parallelism`] to respect affinity and cgroup
/// limits. Never returns 0.
pub fn cpu_count() -> usize {
    // SAFETY: sysconf has no preconditions and only reads system state.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    if n > 0 {
        n as usize
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }
}

/// The unwinding payload `exit()` uses to leave a child's target.
#[derive(Debug)]
pub(crate) struct ExitRequest(pub(crate) i32);

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
    if let Some(state) = child_state() {
        if !BODY_DONE.load(Ordering::Acquire) && gettid().as_raw() == state.body_tid {
            // resume_unwind does not run the panic hook: no "panicked" noise.
            std::panic::resume_unwind(Box::new(ExitRequest(code)));
        }
        super::fork::leave_child(code);
    }
    std::process::exit(code)
}
