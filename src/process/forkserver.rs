//! Start methods (`fork`, `forkserver`) and the fork server.
//!
//! `fork()` from a multi-threaded program copies only the calling thread:
//! every lock another thread held at that instant (a `Mutex`, stdout's
//! lock, a logger's) stays locked for ever in the child. Python 3.14 made
//! `forkserver` its Linux default for that reason, and a Rust program that
//! wants worker processes is very often multi-threaded (a tokio runtime, a
//! thread pool, libtest).
//!
//! The **fork server** is a small single-threaded process, forked from
//! this one — early, by [`start_forkserver`], ideally first thing in
//! `main` before any thread exists, or on first use — that forks children
//! on request. A child forked by it is a copy of the server's clean,
//! single-threaded image, never of the caller's threads or their locks.
//!
//! # What can run in it
//! The server shares no memory with the caller after it started, so a
//! target must be *sent*: a function item (or a closure that captures
//! nothing) plus serialisable arguments, the same rule the pool has for
//! its tasks (see [`Process::from_fn`](super::Process::from_fn),
//! [`PoolBuilder::start_method`](super::PoolBuilder::start_method)). The
//! function travels as the address of a monomorphised trampoline: the
//! server is a `fork()` of this program, so every function is at the same
//! address there. Shared-memory objects ([`Queue`](super::Queue),
//! [`Lock`](super::Lock), …) created *after* the server started are not
//! shared with its children; create them before [`start_forkserver`], or
//! return results through the function's return value.
//!
//! # Protocol
//! A request is one `SOCK_SEQPACKET` datagram on a socketpair whose other
//! end only the server holds: trampoline address, daemon flag, identity,
//! name and the encoded arguments (at most [`MAX_REQUEST`] bytes), with
//! descriptors attached (`SCM_RIGHTS`): a *status* socket private to this
//! child, a daemon's lifeline read end, and any descriptors the trampoline
//! needs (a pool worker's connection). On the status socket the child
//! sends its pid first, then its result; the server sends the exit code
//! once it reaped the child. The caller's handle is a
//! [`ForkedChild`](super::ForkedChild) like any other (a pidfd as
//! sentinel, signals through the pidfd, so a recycled pid is never hit).
//!
//! # Life cycle
//! The server is a daemon of the process that started it: it dies with
//! it (see [`ForkOptions::daemon`](super::ForkOptions::daemon)). Daemon
//! children of the server get the *caller's* lifeline, so they die with
//! the caller too. Non-daemon children outlive the server, as in Python;
//! the caller still waits for them at its exit, on their pidfds (they are
//! not its children: `waitid` cannot). A server that died is replaced on
//! next use (see [`start_forkserver`]).
//!
//! # Descriptors
//! The server lets go of every descriptor it inherited except stdio, its
//! end of the request socket, its lifeline and the side channels of
//! queues made before it; each child it forks lets go of the server's
//! descriptors (request socket, lifeline, other children's pidfds and
//! status sockets) and keeps only its own. Letting go points the number
//! at `/dev/null` (see `sys::release_other_fds`): what it referred to is
//! released, and the number is never reused under a value inherited from
//! the program.

use std::cell::UnsafeCell;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicI32, AtomicU8, Ordering};
use std::sync::Arc;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType,
};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{ForkResult, Pid};

use super::connection::Connection;
use super::fork::{self, fork_child, ForkOptions, ForkedChild};
use super::{closefork, current, sys};
use crate::{Error, Result};

/// How new processes are started: Python's start methods.
///
/// The default is [`Fork`](StartMethod::Fork), as it always was here;
/// choose [`ForkServer`](StartMethod::ForkServer) with
/// [`set_start_method`] or per pool when the program has threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum StartMethod {
    /// `fork()` the calling process: fastest, any closure can run, but
    /// only safe when no other thread holds a lock the child needs.
    #[doc(alias = "fork")]
    #[default]
    Fork,
    /// Ask the fork server, a single-threaded process started early, to
    /// fork the child: safe from multi-threaded programs; targets must be
    /// function items with serialisable arguments.
    #[doc(alias = "forkserver")]
    ForkServer,
}

impl StartMethod {
    /// Python's name for it: `"fork"` or `"forkserver"`.
    pub fn name(self) -> &'static str {
        match self {
            StartMethod::Fork => "fork",
            StartMethod::ForkServer => "forkserver",
        }
    }

    /// Parses Python's name. `"spawn"` is not offered (see the crate docs
    /// of `docs/process.md`: re-executing the binary does not fit Rust
    /// programs whose `main` has side effects).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an unknown name or `"spawn"`.
    pub fn from_name(name: &str) -> Result<StartMethod> {
        match name {
            "fork" => Ok(StartMethod::Fork),
            "forkserver" => Ok(StartMethod::ForkServer),
            other => Err(Error::InvalidArgument(format!(
                "unknown or unsupported start method {other:?} (use \"fork\" or \"forkserver\")"
            ))),
        }
    }
}

static METHOD: AtomicU8 = AtomicU8::new(0);

/// Sets the process-wide default start method used by
/// [`Process::from_fn`](super::Process::from_fn), [`Pool`](super::Pool)
/// and [`ProcessPoolExecutor`](super::ProcessPoolExecutor): Python's
/// `multiprocessing.set_start_method`. Choosing
/// [`ForkServer`](StartMethod::ForkServer) starts the server now if it is
/// not running, so call this early, before threads exist.
///
/// # Errors
/// Those of [`start_forkserver`].
pub fn set_start_method(method: StartMethod) -> Result<()> {
    if method == StartMethod::ForkServer {
        start_forkserver()?;
    }
    METHOD.store(method as u8, Ordering::Release);
    Ok(())
}

/// The process-wide default start method: Python's `get_start_method()`.
pub fn get_start_method() -> StartMethod {
    match METHOD.load(Ordering::Acquire) {
        1 => StartMethod::ForkServer,
        _ => StartMethod::Fork,
    }
}

/// A start method to create processes and pools with, without changing
/// the process-wide default: Python's `multiprocessing.get_context(name)`.
#[derive(Debug, Clone, Copy)]
pub struct Context {
    method: StartMethod,
}

/// The context for `method`: Python's `get_context("forkserver")`.
///
/// # Errors
/// Those of [`start_forkserver`] for the fork server.
pub fn get_context(method: StartMethod) -> Result<Context> {
    if method == StartMethod::ForkServer {
        start_forkserver()?;
    }
    Ok(Context { method })
}

impl Context {
    /// The context's start method.
    pub fn start_method(&self) -> StartMethod {
        self.method
    }

    /// A [`Process`](super::Process) running `f(arg)`, started with this
    /// context's method (see [`Process::from_fn`](super::Process::from_fn)).
    pub fn process<F, A, R>(&self, f: F, arg: A) -> super::Process
    where
        F: Fn(A) -> R + Copy + Send + Sync + 'static,
        A: serde::Serialize + serde::de::DeserializeOwned + 'static,
        R: serde::Serialize + 'static,
    {
        super::Process::from_fn_with(self.method, f, arg)
    }

    /// A [`PoolBuilder`](super::PoolBuilder) whose workers are started with
    /// this context's method.
    pub fn pool(&self) -> super::PoolBuilder {
        let mut b = super::Pool::builder();
        b.start_method(self.method);
        b
    }
}

/// Largest request (arguments plus header) the fork server accepts.
pub const MAX_REQUEST: usize = 64 * 1024;

/// Most descriptors a request carries (status, lifeline, the entry's).
const MAX_FDS: usize = 4;

/// What a child of the fork server runs: decode `payload`, use the passed
/// descriptors, append the encoded result to `out`, return the exit code.
pub(crate) type Entry = fn(payload: &[u8], fds: Vec<OwnedFd>, out: &mut Vec<u8>) -> i32;

/// The caller's side of the fork server.
struct Server {
    /// Our end of the request socketpair (`SOCK_SEQPACKET`).
    requests: OwnedFd,
    /// The write end of the server's lifeline: the server dies with us.
    lifeline: Option<fork::Lifeline>,
    /// The process that started the server (only it holds the lifeline).
    owner: i32,
}

impl Server {
    /// Whether the server still holds its end: the kernel reports a hang-up
    /// on ours once the server is gone (killed, or crashed).
    fn alive(&self) -> bool {
        // A process that let go of its inherited descriptors (a manager,
        // see `ForkOptions::keep_only`) holds a copy of this value whose
        // number now points at /dev/null, which never reports a hang-up.
        let is_socket = nix::sys::stat::fstat(&self.requests)
            .is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFSOCK);
        if !is_socket {
            return false;
        }
        let mut fds = [PollFd::new(self.requests.as_fd(), PollFlags::empty())];
        loop {
            match nix::poll::poll(&mut fds, PollTimeout::ZERO) {
                Ok(_) => {
                    return !fds[0].revents().is_some_and(|r| {
                        r.intersects(PollFlags::POLLHUP | PollFlags::POLLERR | PollFlags::POLLNVAL)
                    })
                }
                Err(Errno::EINTR) => {}
                Err(_) => return false,
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // The lifeline's write end exists only in the process that started
        // the server (children of ours closed their copy right after fork).
        // Elsewhere the number is stale: `Lifeline` itself never closes it.
        if let Some(l) = self.lifeline.take() {
            if current::cached_pid() == self.owner {
                l.close();
            }
        }
    }
}

/// The running server, behind a lock that survives `fork()`: the lock word
/// holds the pid of the process whose thread holds it, so a child forked
/// while a thread of its parent held it finds a stale lock (another
/// process's pid, no thread of its own) and takes it over, forgetting the
/// value, which may have been half-written at that instant. A `Mutex`
/// would stay locked in such a child for ever.
struct Slot {
    owner: AtomicI32,
    server: UnsafeCell<Option<Arc<Server>>>,
}

// SAFETY: `server` is only touched by the thread that holds `owner`
// (see `with_server`).
unsafe impl Sync for Slot {}

static SERVER: Slot = Slot {
    owner: AtomicI32::new(0),
    server: UnsafeCell::new(None),
};

/// Runs `f` on the slot, with its lock held.
fn with_server<R>(f: impl FnOnce(&mut Option<Arc<Server>>) -> R) -> R {
    struct Unlock;
    impl Drop for Unlock {
        fn drop(&mut self) {
            SERVER.owner.store(0, Ordering::Release);
        }
    }
    let me = current::cached_pid();
    loop {
        let held = SERVER.owner.load(Ordering::Acquire);
        // `held == me`: another thread of ours has it; wait. Any other
        // pid is a copy taken by fork while a thread of that process held
        // it: no thread here will ever release it.
        if held != me
            && SERVER
                .owner
                .compare_exchange(held, me, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            let _unlock = Unlock;
            // SAFETY: we hold the lock, so no other thread of this process
            // touches the slot until `_unlock` is dropped.
            let slot = unsafe { &mut *SERVER.server.get() };
            if held != 0 {
                // Possibly half-written by the thread that held it when
                // this process was forked: neither read nor drop it.
                // SAFETY: overwrites the slot without reading or dropping
                // the old value; `None` is a valid value of the type.
                unsafe { std::ptr::write(slot, None) };
            }
            return f(slot);
        }
        std::thread::sleep(std::time::Duration::from_micros(200));
    }
}

/// Starts the fork server if it is not running: Python's
/// `ensure_running()`. Call it first thing in `main`, before any thread
/// exists: the server is a `fork()` of the caller *as it is now*, and
/// every child it forks is a copy of that image. Started later from a
/// multi-threaded process it is still a single fork (not one per child),
/// with the same hazard as any fork, once. Idempotent; children of this
/// process share its server.
///
/// A server that died (killed, say) is noticed here and on the next start
/// of a process through it, and a new one is started in its place, from
/// the caller as it is *then*. Processes the dead server had started keep
/// running (non-daemons) but cannot be joined: their `join` fails with
/// an error saying the server ended before reporting their exit.
///
/// The server holds only the descriptors it needs: it lets go of every
/// other one it inherited from the caller (listeners, pipes, files;
/// their numbers point at `/dev/null` there), so dropping them in the
/// caller really closes them; stdio and the side
/// channels of [`Queue`](super::Queue)s created before it started stay
/// open, for its children.
///
/// # Errors
/// [`Error::Io`] when the socketpair or the fork fails (a later call tries
/// again).
#[doc(alias = "forkserver")]
#[doc(alias = "ensure_running")]
pub fn start_forkserver() -> Result<()> {
    server().map(|_| ())
}

/// Set in the server process (and so in every child it forks): the
/// server slot was copied while its starter held it, mid-start, and a
/// child of the server cannot use the server anyway.
static IN_SERVER: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The running server; starts one if there is none or it died.
fn server() -> Result<Arc<Server>> {
    if IN_SERVER.load(Ordering::Acquire) {
        return Err(Error::InvalidArgument(
            "a child of the fork server cannot use the fork server; use fork".into(),
        ));
    }
    with_server(|slot| {
        if let Some(s) = slot {
            if s.alive() {
                return Ok(s.clone());
            }
            tracing::warn!("the fork server died; starting a new one");
        }
        // Drops (closes) the dead one's end, once no sender still uses it.
        *slot = None;
        let s = Arc::new(
            spawn_server()
                .map_err(|e| Error::Io(std::io::Error::other(format!("fork server: {e}"))))?,
        );
        *slot = Some(s.clone());
        Ok(s)
    })
}

fn spawn_server() -> Result<Server> {
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?;
    let (lifeline, read_end) = fork::Lifeline::new()?;
    // Double fork: the server is not our child (a short-lived launcher is,
    // and is reaped at once), so it never shows up among our children nor
    // needs reaping; its lifeline still ties it to this process.
    let mut options = ForkOptions::new();
    options.name("ForkServerLauncher");
    // The launcher, and so the server, keeps stdio, its end of the
    // request socket, its lifeline and the side channels of queues made
    // before: not the caller's listeners, pipes and files (a listener the
    // caller drops must stop accepting; a pipe's reader must see EOF), nor
    // our end of the request socket (the server sees end-of-file when
    // every client is gone).
    let mut keep = closefork::shared_fds();
    keep.extend([theirs.as_raw_fd(), read_end.as_raw_fd()]);
    options.keep_only = Some(keep);
    let mut launcher = fork_child(&options, move || {
        // SAFETY: a single fork from the launcher, which has one thread;
        // the child runs `serve` and leaves with `_exit`.
        match unsafe { nix::unistd::fork() } {
            Ok(ForkResult::Child) => {
                let pid = current::refresh_pid();
                if !fork::arm_lifeline(&read_end, pid) {
                    // SAFETY: _exit ends the process without running Rust code.
                    unsafe { libc::_exit(1) };
                }
                std::mem::forget(read_end);
                fork::leave_child(serve(theirs))
            }
            Ok(ForkResult::Parent { .. }) => 0,
            Err(_) => 1,
        }
    })?;
    if launcher.wait()? != 0 {
        return Err(Error::Io(std::io::Error::other(
            "cannot fork the fork server",
        )));
    }
    Ok(Server {
        requests: ours,
        lifeline: Some(lifeline),
        owner: current::cached_pid(),
    })
}

/// Asks the fork server for a child that runs `entry(payload, fds)`.
/// `daemon`: the child gets our lifeline. Returns the child's handle once
/// its pid is known.
pub(crate) fn spawn(
    options: &ForkOptions,
    entry: Entry,
    payload: &[u8],
    fds: Vec<OwnedFd>,
) -> Result<ForkedChild> {
    if current::child_state().is_some_and(|s| s.daemon) {
        return Err(Error::DaemonicChildren);
    }
    let mut server = server()?;
    let identity = options
        .identity
        .clone()
        .unwrap_or_else(current::next_identity);
    let name = options
        .name_ref()
        .map_or_else(|| format!("Process-{identity}"), str::to_owned);
    let mut req = Vec::with_capacity(32 + payload.len());
    req.extend_from_slice(&(entry as usize as u64).to_le_bytes());
    req.push(u8::from(options.is_daemon()));
    for s in [identity.as_bytes(), name.as_bytes()] {
        req.extend_from_slice(&(s.len() as u32).to_le_bytes());
        req.extend_from_slice(s);
    }
    req.extend_from_slice(payload);
    if req.len() > MAX_REQUEST {
        return Err(Error::MessageTooLarge {
            len: req.len(),
            max: MAX_REQUEST,
        });
    }
    let (status, child_status) = socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?;
    let (lifeline, lifeline_read) = if options.is_daemon() {
        let (l, r) = fork::Lifeline::new()?;
        (Some(l), Some(r))
    } else {
        (None, None)
    };
    let mut raw: Vec<RawFd> = vec![child_status.as_raw_fd()];
    raw.extend(lifeline_read.as_ref().map(AsRawFd::as_raw_fd));
    raw.extend(fds.iter().map(AsRawFd::as_raw_fd));
    if raw.len() > MAX_FDS {
        return Err(Error::InvalidArgument("too many descriptors".into()));
    }
    let cmsg = [ControlMessage::ScmRights(&raw)];
    let iov = [IoSlice::new(&req)];
    let mut restarted = false;
    loop {
        match sendmsg::<()>(
            server.requests.as_raw_fd(),
            &iov,
            &cmsg,
            MsgFlags::MSG_NOSIGNAL,
            None,
        ) {
            Ok(_) => break,
            Err(Errno::EINTR) => {}
            // The server died since `server()` looked: start a new one,
            // once (nothing was sent, the descriptors are still ours).
            Err(Errno::EPIPE | Errno::ECONNRESET | Errno::ECONNREFUSED) if !restarted => {
                restarted = true;
                drop(server);
                server = self::server()?;
            }
            Err(e) => {
                return Err(Error::Io(std::io::Error::other(format!(
                    "fork server: {e}"
                ))))
            }
        }
    }
    let asked = server.clone();
    drop(server);
    // Our copies of what the child got are not needed any more.
    drop((child_status, lifeline_read, fds));
    let mut status = Connection::from_socket(status);
    // Other children we fork must not hold this child's status socket.
    status.close_on_fork();
    // A `from_fn` result comes back on it: as large as a pool task's may
    // be, not capped at a `Connection`'s 32 MiB default.
    status.set_max_message_size(crate::process::worker::MAX_FRAME);
    // The child's first message is its pid; if it died before sending it,
    // the server's exit report carries the pid. A live server answers at
    // once (it forks and the child reports). No answer in time means the
    // server is gone although our end saw no hang-up: a child some other
    // thread of ours forked while the server was being started can hold
    // a copy of the server's end. Forget that server, so the next start
    // makes a new one, instead of waiting for ever.
    let answered = status.poll(FIRST_REPLY)?;
    if !answered {
        // Only that server: another thread may have started a new one.
        with_server(|slot| {
            if slot.as_ref().is_some_and(|s| Arc::ptr_eq(s, &asked)) {
                *slot = None;
            }
        });
        return Err(Error::Io(std::io::Error::other(format!(
            "fork server: no answer within {FIRST_REPLY:?}; it will be started again"
        ))));
    }
    let frame = status.recv_bytes()?;
    let pid = match frame.split_first() {
        Some((b'P' | b'X', rest)) if rest.len() >= 4 => {
            i32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]])
        }
        Some((b'F', rest)) => {
            let errno = rest
                .get(..4)
                .map_or(0, |b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]));
            return Err(std::io::Error::from_raw_os_error(errno).into());
        }
        _ => return Err(Error::Codec("fork server: bad status frame".into())),
    };
    let early_exit = (frame[0] == b'X').then(|| fork::exit_code_of(&frame));
    ForkedChild::served(Pid::from_raw(pid), status, lifeline, early_exit)
}

/// How long a start waits for the fork server's first answer (the
/// child's pid) before it counts the server as gone.
const FIRST_REPLY: std::time::Duration = std::time::Duration::from_secs(10);

/// One running child of the server.
struct Running {
    pid: Pid,
    pidfd: OwnedFd,
    status: Connection,
}

/// The server's loop: single-threaded, it forks on request and reports
/// exits. Ends when every client closed its end and every child exited.
fn serve(requests: OwnedFd) -> i32 {
    IN_SERVER.store(true, Ordering::Release);
    let mut children: Vec<Running> = Vec::new();
    let mut buf = vec![0u8; MAX_REQUEST];
    let mut open = true;
    while open || !children.is_empty() {
        let mut fds: Vec<PollFd<'_>> = Vec::with_capacity(children.len() + 1);
        if open {
            fds.push(PollFd::new(requests.as_fd(), PollFlags::POLLIN));
        }
        for c in &children {
            fds.push(PollFd::new(c.pidfd.as_fd(), PollFlags::POLLIN));
        }
        match nix::poll::poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(Errno::EINTR) => continue,
            Err(_) => return 1,
        }
        let ready: Vec<bool> = fds
            .iter()
            .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        drop(fds);
        let offset = usize::from(open);
        // Reap first (indices refer to `children` as polled).
        for i in (0..children.len()).rev() {
            if ready[i + offset] {
                reap(&mut children, i);
            }
        }
        if open && ready[0] {
            match receive(&requests, &mut buf) {
                Ok(Some((len, passed))) => {
                    if let Some(c) = fork_one(&buf[..len], passed) {
                        children.push(c);
                    }
                }
                Ok(None) => open = false,
                Err(()) => {}
            }
        }
    }
    0
}

/// Receives one request: its length and descriptors; `None` at end of
/// file (every client is gone).
#[allow(clippy::type_complexity)]
fn receive(requests: &OwnedFd, buf: &mut [u8]) -> Result<Option<(usize, Vec<OwnedFd>)>, ()> {
    let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = match recvmsg::<()>(
        requests.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    ) {
        Ok(m) => m,
        Err(_) => return Err(()),
    };
    let mut passed = Vec::new();
    if let Ok(cmsgs) = msg.cmsgs() {
        for c in cmsgs {
            if let ControlMessageOwned::ScmRights(raw) = c {
                // SAFETY: SCM_RIGHTS just installed these descriptors in
                // our table; nothing else owns them.
                passed.extend(raw.into_iter().map(|r| unsafe { OwnedFd::from_raw_fd(r) }));
            }
        }
    }
    if msg.bytes == 0 && passed.is_empty() {
        return Ok(None);
    }
    Ok(Some((msg.bytes, passed)))
}

/// A parsed request.
struct Request<'a> {
    entry: usize,
    daemon: bool,
    identity: &'a str,
    name: &'a str,
    payload: &'a [u8],
}

fn parse(req: &[u8]) -> Option<Request<'_>> {
    let entry = u64::from_le_bytes(req.get(..8)?.try_into().ok()?) as usize;
    let daemon = *req.get(8)? != 0;
    let mut at = 9;
    let mut text = || -> Option<&str> {
        let len = u32::from_le_bytes(req.get(at..at + 4)?.try_into().ok()?) as usize;
        let s = std::str::from_utf8(req.get(at + 4..at + 4 + len)?).ok()?;
        at += 4 + len;
        Some(s)
    };
    let identity = text()?;
    let name = text()?;
    Some(Request {
        entry,
        daemon,
        identity,
        name,
        payload: req.get(at..)?,
    })
}

fn fork_one(req: &[u8], mut passed: Vec<OwnedFd>) -> Option<Running> {
    if passed.is_empty() {
        return None;
    }
    let mut status = Connection::from_socket(passed.remove(0));
    // The child sends its `from_fn` result on it (see `start`).
    status.set_max_message_size(crate::process::worker::MAX_FRAME);
    let Some(req) = parse(req) else {
        let _ = status.send_bytes(b"F\0\0\0\0");
        return None;
    };
    let lifeline = if req.daemon && !passed.is_empty() {
        Some(passed.remove(0))
    } else {
        None
    };
    let state = current::prepare_child(
        Some(req.name.to_owned()),
        req.daemon,
        req.identity.to_owned(),
    );
    // SAFETY: the server is single-threaded, so the child inherits no lock
    // held by another thread; the child runs `child_main`, which never
    // returns.
    match unsafe { nix::unistd::fork() } {
        Ok(ForkResult::Child) => {
            let pid = current::refresh_pid();
            // The request socket, the server's lifeline and the other
            // children's pidfds and status sockets are the server's; this
            // child holds only its own descriptors (a client would never
            // see end-of-file, a sibling's status would stay open), stdio
            // and the side channels of queues.
            let mut keep = closefork::shared_fds();
            keep.extend(status.fileno().map(|fd| fd.as_raw_fd()));
            keep.extend(lifeline.as_ref().map(AsRawFd::as_raw_fd));
            keep.extend(passed.iter().map(AsRawFd::as_raw_fd));
            sys::release_other_fds(&keep);
            child_main(pid, req, lifeline, state, status, passed)
        }
        Ok(ForkResult::Parent { child }) => {
            drop((lifeline, passed, state));
            match fork::pidfd_open(child) {
                Ok(pidfd) => Some(Running {
                    pid: child,
                    pidfd,
                    status,
                }),
                Err(_) => {
                    // Cannot watch it: reap it blocking (rare, old kernel).
                    let code = wait_code(child);
                    report_exit(&mut status, child, code);
                    None
                }
            }
        }
        Err(e) => {
            let _ = status.send_bytes(&[&[b'F'][..], &(e as i32).to_le_bytes()].concat());
            None
        }
    }
}

fn child_main(
    pid: i32,
    req: Request<'_>,
    lifeline: Option<OwnedFd>,
    state: Box<current::ChildState>,
    mut status: Connection,
    passed: Vec<OwnedFd>,
) -> ! {
    if let Some(read_end) = lifeline {
        if !fork::arm_lifeline(&read_end, pid) {
            // SAFETY: _exit ends the process without running Rust code.
            unsafe { libc::_exit(1) };
        }
        // Open until _exit: the kernel watches it for us.
        std::mem::forget(read_end);
    }
    // Close-on-fork entries of the server (none) and of the original
    // caller (stale numbers) are dropped without closing anything.
    closefork::forget_stale(pid);
    current::enter_child(state, pid);
    if status
        .send_bytes(&[&[b'P'][..], &pid.to_le_bytes()].concat())
        .is_err()
    {
        fork::leave_child(1);
    }
    // SAFETY: `entry` is the address of an `Entry` function of this
    // executable image: the caller took it from a function item and the
    // server is a `fork()` of the caller (see `task.rs` on why addresses
    // survive a fork).
    let entry = unsafe { std::mem::transmute::<usize, Entry>(req.entry) };
    let mut out = Vec::new();
    let code = match catch_unwind(AssertUnwindSafe(|| entry(req.payload, passed, &mut out))) {
        Ok(code) => code,
        Err(payload) => {
            let code = payload
                .downcast_ref::<current::ExitRequest>()
                .map_or(1, |e| e.0);
            std::mem::forget(payload);
            code
        }
    };
    if code == 0 && !out.is_empty() {
        let mut frame = Vec::with_capacity(out.len() + 1);
        frame.push(b'R');
        frame.extend_from_slice(&out);
        if let Err(e) = status.send_bytes(&frame) {
            // The caller would see exit code 0 and no result: say why
            // (the server is single-threaded, so its stderr lock is free).
            eprintln!("cannot send the process's result to its parent: {e}");
            std::mem::forget(status);
            fork::leave_child(1)
        }
    }
    std::mem::forget(status);
    fork::leave_child(code)
}

fn wait_code(pid: Pid) -> i32 {
    loop {
        match waitpid(pid, None) {
            Ok(WaitStatus::Exited(_, code)) => return code,
            Ok(WaitStatus::Signaled(_, sig, _)) => return -(sig as i32),
            Err(Errno::EINTR) | Ok(_) => {}
            Err(_) => return -1,
        }
    }
}

fn report_exit(status: &mut Connection, pid: Pid, code: i32) {
    let mut frame = vec![b'X'];
    frame.extend_from_slice(&pid.as_raw().to_le_bytes());
    frame.extend_from_slice(&code.to_le_bytes());
    let _ = status.send_bytes(&frame);
}

fn reap(children: &mut Vec<Running>, i: usize) {
    let mut c = children.swap_remove(i);
    let code = wait_code(c.pid);
    report_exit(&mut c.status, c.pid, code);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A copy of the server value in a process that let go of its
    /// descriptors names /dev/null: that server counts as gone (a new one
    /// is started), not as alive for ever. A live socket counts as alive
    /// until its peer hangs up.
    #[test]
    fn a_server_whose_end_is_dev_null_or_hung_up_is_not_alive() {
        let me = current::cached_pid();
        let null = Server {
            requests: std::fs::File::open("/dev/null").unwrap().into(),
            lifeline: None,
            owner: me,
        };
        assert!(!null.alive());
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        let live = Server {
            requests: ours,
            lifeline: None,
            owner: me,
        };
        assert!(live.alive());
        drop(theirs);
        assert!(!live.alive());
    }
}
