//! Who am I: `current_process()`, `parent_pid()`, `cpu_count()`; the
//! state a child started by us keeps about itself, and the exit note a
//! forking server's child owes its parent. (`exit(code)`, which ends a
//! child with a chosen code, is in `fork.rs` beside the child's exit path.)
//!
//! The state of "this process is a child started by us" lives in one
//! pointer that the child sets right after `fork()`. No lock is involved, so
//! a lock held by some other thread of the parent at fork time cannot
//! deadlock the child here.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicPtr, AtomicU32, Ordering};

use nix::unistd::{getpid, getppid, gettid};

/// What a child started by this crate knows about itself. Leaked once per
/// child process (never freed: the process ends with `_exit`).
#[derive(Debug)]
pub(crate) struct ChildState {
    pub(crate) name: String,
    pub(crate) daemon: bool,
    /// `"1:2"`-style identity, the prefix for names of our own children.
    pub(crate) identity: Identity,
    /// Counter for default names of the children this child starts.
    pub(crate) next_child: AtomicU32,
    /// A forking server's child: the write end of the server's exit notes,
    /// where it writes its pid before `_exit` (see `notes`). Kept here, on
    /// the heap page the child's state is built on anyway, not in a static
    /// whose page the child would otherwise not write (a copy-on-write
    /// fault per child).
    pub(crate) note: Option<NoteEnd>,
}

/// Everything a fresh child writes, kept together in one static so that
/// the writes cost one copy-on-write page fault, not several.
struct Globals {
    /// This process's pid as of its start or its last fork through this crate.
    known_pid: AtomicI32,
    /// Pid of the child that `child` describes (a plain-libc grandchild
    /// inherits the pointer; this tells it apart).
    child_pid: AtomicI32,
    /// The thread that runs the target; `exit()` unwinds only on it.
    body_tid: AtomicI32,
    /// Set once the target finished, so `exit()` called from a destructor
    /// that runs afterwards does not try to unwind.
    body_done: AtomicBool,
    child: AtomicPtr<ChildState>,
}

static G: Globals = Globals {
    known_pid: AtomicI32::new(0),
    child_pid: AtomicI32::new(0),
    body_tid: AtomicI32::new(0),
    body_done: AtomicBool::new(false),
    child: AtomicPtr::new(std::ptr::null_mut()),
};

/// The pid without a system call: cached, and refreshed in every child
/// that [`fork_child`](super::fork_child) starts. A `pthread_atfork`
/// child handler (installed with the first call) clears the cache in every
/// child a libc `fork()` makes, whoever calls it, so the next call reads
/// the new pid. Only a raw `clone` system call that bypasses libc is not
/// seen.
pub(crate) fn cached_pid() -> i32 {
    match G.known_pid.load(Ordering::Relaxed) {
        0 => refresh_pid(),
        pid => pid,
    }
}

/// Re-reads the pid into the cache (first thing in a new child).
pub(crate) fn refresh_pid() -> i32 {
    install_atfork();
    let pid = getpid().as_raw();
    G.known_pid.store(pid, Ordering::Relaxed);
    pid
}

static ATFORK: AtomicBool = AtomicBool::new(false);

fn install_atfork() {
    if !ATFORK.swap(true, Ordering::AcqRel) {
        // SAFETY: registers a handler that only stores to an atomic (no
        // lock, no allocation, async-signal-safe); pthread_atfork has no
        // other precondition. Failure (ENOMEM) leaves the cache as it was
        // before this handler existed: refreshed by our own forks only.
        unsafe { libc::pthread_atfork(None, None, Some(forget_pid_in_child)) };
    }
}

extern "C" fn forget_pid_in_child() {
    G.known_pid.store(0, Ordering::Relaxed);
}

static MAIN_NEXT_CHILD: AtomicU32 = AtomicU32::new(1);

/// The state of the current process if it is a child we forked.
pub(crate) fn child_state() -> Option<&'static ChildState> {
    let ptr = G.child.load(Ordering::Acquire);
    if ptr.is_null() {
        return None;
    }
    // SAFETY: a non-null CHILD always points to a leaked `Box<ChildState>`
    // that is never freed, so the reference is valid for 'static.
    let state = unsafe { &*ptr };
    // A grandchild forked behind our back (plain libc fork) inherits the
    // pointer; the pid check keeps it from claiming its parent's identity.
    (G.child_pid.load(Ordering::Acquire) == cached_pid()).then_some(state)
}

/// Builds the child's state. `Process` and the fork server call it in the
/// parent, before `fork()`, so the child does not have to allocate (each
/// heap page it touches is a copy-on-write fault, and fork cost is what
/// `Process::start` is measured by). The forking server's children call it
/// themselves (`ForkOptions::state_in_child`): they allocate for their
/// handler anyway, and the parent then allocates nothing per fork.
pub(crate) fn prepare_child(
    name: Option<String>,
    daemon: bool,
    identity: impl Into<Identity>,
) -> Box<ChildState> {
    let identity = identity.into();
    Box::new(ChildState {
        name: name.unwrap_or_else(|| format!("Process-{identity}")),
        daemon,
        identity,
        next_child: AtomicU32::new(1),
        note: None,
    })
}

/// Called in the child right after `fork()` with the state
/// [`prepare_child`] built.
pub(crate) fn enter_child(state: Box<ChildState>, pid: i32) {
    G.child_pid.store(pid, Ordering::Release);
    // The forking thread is the child's only thread, and the only thread
    // of a new process has the process's id as its thread id: no gettid.
    G.body_tid.store(pid, Ordering::Release);
    G.body_done.store(false, Ordering::Release);
    G.child.store(Box::into_raw(state), Ordering::Release);
}

/// Called in the child once the target returned or unwound.
pub(crate) fn body_done() {
    G.body_done.store(true, Ordering::Release);
}

/// Allocates the identity (`"3"`, or `"1:3"` inside child `1`) for the next
/// child this process starts; default names are `Process-<identity>`, as in
/// Python.
pub(crate) fn next_identity() -> String {
    next_identity_seed().to_string()
}

/// An identity allocated (its number taken) but not yet formatted: the
/// forking server takes one in the parent and formats it in the child, so
/// the parent allocates nothing per fork.
#[derive(Debug, Clone, Copy)]
pub(crate) struct IdentitySeed {
    /// The state of the process that allocated it, if that process is a
    /// child of ours (a leaked `ChildState`, valid in every descendant).
    parent: Option<&'static ChildState>,
    n: u32,
}

impl std::fmt::Display for IdentitySeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.parent {
            Some(s) => write!(f, "{}:{}", s.identity, self.n),
            None => write!(f, "{}", self.n),
        }
    }
}

/// A child's identity: given as text (a `Process` formats it when it is
/// created), or numbered before the fork and formatted only when someone
/// asks (a default name, a child of this child), so a forked child that
/// never does runs no formatting code (each code page it touches is a
/// page fault).
#[derive(Debug)]
pub(crate) enum Identity {
    Text(String),
    Seed(IdentitySeed),
}

impl From<String> for Identity {
    fn from(s: String) -> Identity {
        Identity::Text(s)
    }
}

impl From<IdentitySeed> for Identity {
    fn from(s: IdentitySeed) -> Identity {
        Identity::Seed(s)
    }
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Identity::Text(s) => f.write_str(s),
            Identity::Seed(s) => s.fmt(f),
        }
    }
}

/// Takes the number of the next child's identity (see [`next_identity`]).
pub(crate) fn next_identity_seed() -> IdentitySeed {
    match child_state() {
        Some(s) => IdentitySeed {
            parent: Some(s),
            n: s.next_child.fetch_add(1, Ordering::Relaxed),
        },
        None => IdentitySeed {
            parent: None,
            n: MAIN_NEXT_CHILD.fetch_add(1, Ordering::Relaxed),
        },
    }
}

/// Identities numbered from a block taken out of this process's counter:
/// the forking server numbers its children from one. Its parent then
/// writes the process-wide counter once per [`BLOCK`] children instead of
/// once per child (that counter's page is a copy-on-write fault in the
/// parent after every fork), and the block itself lives beside the
/// server's list of children, which the parent writes for each child
/// anyway. Numbers stay unique in the process; the ones a block leaves
/// unused are skipped. (Python's `ForkingMixIn` children take no number at
/// all: they are plain `os.fork()`s.)
#[derive(Debug, Default)]
pub(crate) struct IdentityBlock {
    /// The process the block was taken in (0: none taken yet).
    owner: i32,
    next: u32,
    end: u32,
}

/// How many identities an [`IdentityBlock`] takes at a time.
const BLOCK: u32 = 64;

impl IdentityBlock {
    /// Numbers the next child's identity.
    pub(crate) fn seed(&mut self) -> IdentitySeed {
        let parent = child_state();
        let me = cached_pid();
        if self.next == self.end || self.owner != me {
            let counter = parent.map_or(&MAIN_NEXT_CHILD, |s| &s.next_child);
            self.owner = me;
            self.next = counter.fetch_add(BLOCK, Ordering::Relaxed);
            self.end = self.next.wrapping_add(BLOCK);
        }
        let n = self.next;
        self.next = self.next.wrapping_add(1);
        IdentitySeed { parent, n }
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

/// Whether [`exit`](super::exit) called now, in a child of ours, should
/// unwind to the fork point: on the thread that runs the target, before
/// the target finished.
pub(crate) fn exit_unwinds() -> bool {
    !G.body_done.load(Ordering::Acquire) && gettid().as_raw() == G.body_tid.load(Ordering::Acquire)
}

/// Lets the unwinding of [`exit`](super::exit) pass through a
/// `catch_unwind` that is not the fork point (the server core catches
/// handler panics): re-raises an `ExitRequest` payload so the child ends
/// with the code it asked for, and hands any other payload back.
pub(crate) fn resume_exit_request(
    payload: Box<dyn std::any::Any + Send>,
) -> Box<dyn std::any::Any + Send> {
    if payload.is::<ExitRequest>() {
        std::panic::resume_unwind(payload);
    }
    payload
}

// The exit note a forking server's child owes (the parent's side, the
// pipe and the reaping, is `notes.rs`).

/// The write end of a server's exit notes, as a child holds it: its
/// number, and which pipe it was (so a handler that closed the number and
/// reused it for a file of its own never gets a note written into it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NoteEnd {
    pub(crate) fd: RawFd,
    dev: libc::dev_t,
    ino: libc::ino_t,
}

impl NoteEnd {
    /// The write end `fd` of the pipe `dev`/`ino` (from its `fstat`).
    pub(crate) fn new(fd: RawFd, dev: libc::dev_t, ino: libc::ino_t) -> Self {
        NoteEnd { fd, dev, ino }
    }

    /// Whether `fd` still is this pipe (one `fstat`).
    fn still_there(&self) -> bool {
        let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
        // SAFETY: fstat writes a `stat` into the buffer we pass, and only
        // asks the kernel about the number (which may be closed: EBADF).
        if unsafe { libc::fstat(self.fd, st.as_mut_ptr()) } != 0 {
            return false;
        }
        // SAFETY: fstat returned 0, so it filled the buffer.
        let st = unsafe { st.assume_init() };
        st.st_dev == self.dev && st.st_ino == self.ino && st.st_mode & libc::S_IFMT == libc::S_IFIFO
    }
}

/// In the process about to fork: the write end of exit notes this process
/// reports to, which a child other than one reporting to `note` must not
/// inherit (closed there by [`close_inherited_note`]).
pub(crate) fn inherited_note(note: Option<NoteEnd>) -> Option<RawFd> {
    child_state()
        .and_then(|s| s.note)
        .filter(|&end| Some(end) != note && end.still_there())
        .map(|end| end.fd)
}

/// In a freshly forked child: closes the write end [`inherited_note`] named.
pub(crate) fn close_inherited_note(fd: Option<RawFd>) {
    if let Some(fd) = fd {
        // SAFETY: the parent held this write end open for its own note, so
        // this process inherited it, and nothing in it refers to the
        // number (the parent's state, which does, is not this child's).
        unsafe { libc::close(fd) };
    }
}

/// In a child on its way out, right before `_exit`: writes its note if it
/// reports to exit notes. (Its state says so only in the process it was
/// built for: a process forked from it by other means than this crate
/// sees no state, and writes nothing.)
pub(crate) fn write_exit_note() {
    let Some(end) = child_state().and_then(|s| s.note) else {
        return;
    };
    if !end.still_there() {
        // The handler closed it (and may have reused the number): the
        // sweep finds this child instead.
        return;
    }
    let fd = end.fd;
    let note = cached_pid().to_ne_bytes();
    // SAFETY: `fd` is the write end this process was forked to report to
    // (checked just above to still be that pipe); the buffer is four
    // bytes on the stack. The pipe is non-blocking: when it is full the
    // note is dropped and the parent's sweep finds the child instead.
    unsafe { libc::write(fd, note.as_ptr().cast(), note.len()) };
}

#[cfg(test)]
mod identity_tests {
    use super::*;

    #[test]
    fn a_block_numbers_uniquely_beside_the_process_counter() {
        let mut block = IdentityBlock::default();
        let first = block.seed().n;
        let other = next_identity_seed().n;
        let second = block.seed().n;
        assert_eq!(second, first + 1, "a block hands out consecutive numbers");
        assert!(
            other >= first + BLOCK,
            "the counter moved past the block: {other} vs {first}"
        );
        let mut seen: Vec<u32> = (0..2 * BLOCK).map(|_| block.seed().n).collect();
        seen.extend([first, second, other]);
        let count = seen.len();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), count, "every number once");
    }
}
