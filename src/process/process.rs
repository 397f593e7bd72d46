//! `Process`: Python's `multiprocessing.Process`, started with `fork()`.

use std::fmt;
use std::os::fd::BorrowedFd;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use std::os::fd::OwnedFd;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::codec;
use super::connection::{pipe, Connection};
use super::current;
use super::fork::{fork_child, ForkOptions, ForkedChild};
use super::forkserver::{self, get_start_method, Entry, StartMethod};
use super::registry;
use super::task;
use crate::{Error, Result};

/// The target, wrapped so the child can call it through `&mut` and never
/// free the box: a free in the child would dirty (and so copy) heap pages.
type Target = Box<dyn FnMut() + Send + 'static>;

/// A closure run in a child process: Python's `multiprocessing.Process`.
///
/// ```
/// use socketserver::process::Process;
///
/// let mut p = Process::new(|| println!("hello from the child"));
/// p.start()?;
/// assert_eq!(p.join()?, 0);
/// # Ok::<(), socketserver::Error>(())
/// ```
///
/// The child is a `fork()` of the caller; it runs the target under
/// `catch_unwind` and leaves with `_exit`, so [`exitcode`](Self::exitcode)
/// is `0` after a normal return, the code given to
/// [`exit`](super::exit), `1` after a panic and `-N` when killed by signal
/// `N`. Values moved into the target are dropped in the parent by `start()`.
///
/// # Dropping a running `Process`
/// - **daemon**: it is terminated (SIGTERM, SIGKILL after one second) and
///   reaped, as Python does for daemons at exit;
/// - **non-daemon**: it keeps running, detached; a small thread waits for
///   exactly its pid so that it never lingers as a zombie, and the parent
///   still waits for it at exit (see [`start`](Self::start)).
///
/// Daemon children also die when the parent process dies abruptly (SIGKILL
/// included, via a lifeline pipe: see
/// [`ForkOptions::daemon`](super::ForkOptions::daemon)), whichever thread
/// started them, and are terminated when the parent
/// exits normally, including through `std::process::exit` (an `atexit`
/// hook).
pub struct Process {
    name: String,
    identity: String,
    daemon: bool,
    target: Option<Target>,
    /// A function item and its encoded argument ([`Process::from_fn`]).
    sendable: Option<Sendable>,
    child: Option<ForkedChild>,
    /// Under `fork`, where a `from_fn` child sends its result.
    result_conn: Option<Connection>,
    /// The encoded result of a `from_fn` child, once received.
    result: Option<Vec<u8>>,
}

/// A target that can travel to the fork server.
struct Sendable {
    method: StartMethod,
    entry: Entry,
    payload: std::result::Result<Vec<u8>, String>,
}

/// Largest `from_fn` result under `fork`: the pool's frame limit (1 GiB).
const RESULT_MAX: usize = crate::process::worker::MAX_FRAME;

/// The fork-server entry of `Process::from_fn::<F, A, R>`.
fn run_fn<F, A, R>(payload: &[u8], _fds: Vec<OwnedFd>, out: &mut Vec<u8>) -> i32
where
    F: Fn(A) -> R + Copy + 'static,
    A: DeserializeOwned,
    R: Serialize,
{
    let arg: A = match codec::from_bytes(payload) {
        Ok(arg) => arg,
        Err(e) => {
            eprintln!("cannot decode the process's argument: {e}");
            return 1;
        }
    };
    let result = task::conjure::<F>()(arg);
    match task::append(&result, out) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("cannot encode the process's result: {e}");
            1
        }
    }
}

impl fmt::Debug for Process {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Process")
            .field("name", &self.name)
            .field("daemon", &self.daemon)
            .field("pid", &self.pid())
            .field("exitcode", &self.child.as_ref().and_then(|c| c.exitcode()))
            .finish()
    }
}

/// The scheduling state of a child process, from the state letter of
/// `/proc/<pid>/stat` (see `proc(5)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProcessState {
    /// Ready or running on a CPU (`R`).
    Running,
    /// Blocked: sleeping on I/O, a lock, a pipe or a timer (`S`, `D`, `I`).
    Blocked,
    /// Stopped by a signal or a tracer (`T`, `t`).
    Stopped,
    /// Exited but not reaped yet (`Z`, `X`): `join` will return at once.
    Zombie,
}

impl ProcessState {
    /// Reads the state of `pid`; `None` if it is gone or `/proc` is
    /// unreadable.
    pub(crate) fn of_pid(pid: i32) -> Option<ProcessState> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name may contain spaces and parentheses: the state
        // is the first field after the *last* ')'.
        let rest = &text[text.rfind(')')? + 1..];
        Some(match rest.split_whitespace().next()?.chars().next()? {
            'R' => ProcessState::Running,
            'S' | 'D' | 'I' | 'W' | 'K' | 'P' => ProcessState::Blocked,
            'T' | 't' => ProcessState::Stopped,
            'Z' | 'X' | 'x' => ProcessState::Zombie,
            _ => return None,
        })
    }
}

/// Builds a [`Process`] with a name and daemon flag, like Python's
/// `Process(target=…, name=…, daemon=…)`.
///
/// ```
/// use socketserver::process::Process;
///
/// let mut p = Process::builder().name("worker-1").daemon(true).target(|| {
///     // runs in the child
/// });
/// assert_eq!(p.name(), "worker-1");
/// assert!(p.is_daemon());
/// p.start()?;
/// assert_eq!(p.join()?, 0);
/// assert_eq!(p.exitcode(), Some(0));
/// # Ok::<(), socketserver::Error>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct ProcessBuilder {
    name: Option<String>,
    daemon: bool,
}

impl ProcessBuilder {
    /// The process name. Default is `Process-<n>`, numbered per parent.
    pub fn name(&mut self, name: impl Into<String>) -> &mut Self {
        self.name = Some(name.into());
        self
    }

    /// Whether the process is a daemon (see [`Process`]). Default is `false`.
    pub fn daemon(&mut self, daemon: bool) -> &mut Self {
        self.daemon = daemon;
        self
    }

    /// Finishes the builder with the closure the child runs. The builder
    /// can be used again for another process.
    pub fn target<F: FnOnce() + Send + 'static>(&self, target: F) -> Process {
        let identity = current::next_identity();
        Process {
            name: self
                .name
                .clone()
                .unwrap_or_else(|| format!("Process-{identity}")),
            identity,
            daemon: self.daemon,
            target: Some(once(target)),
            sendable: None,
            child: None,
            result_conn: None,
            result: None,
        }
    }
}

fn once<F: FnOnce() + Send + 'static>(f: F) -> Target {
    let mut slot = Some(f);
    Box::new(move || {
        if let Some(f) = slot.take() {
            f();
        }
    })
}

impl Process {
    /// A non-daemon process that will run `target`; call
    /// [`start`](Self::start) to fork it.
    pub fn new<F: FnOnce() + Send + 'static>(target: F) -> Process {
        Self::builder().target(target)
    }

    /// A process that runs the function item `f` with `arg` and keeps its
    /// return value (see [`result`](Self::result)): Python's
    /// `Process(target=f, args=(arg,))`, startable with either
    /// [`StartMethod`](super::StartMethod). It uses the process-wide
    /// default ([`set_start_method`](super::set_start_method)); a
    /// [`Context`](super::Context) picks one explicitly.
    ///
    /// Under the fork server the function must be sent, so `f` is a
    /// function item or a closure that captures nothing (checked at
    /// compile time, as for pool tasks), and the argument and result are
    /// serialised (the encoded argument at most
    /// [`FORKSERVER_MAX_REQUEST`](super::FORKSERVER_MAX_REQUEST) bytes).
    ///
    /// ```
    /// use socketserver::process::{get_context, Process, StartMethod};
    ///
    /// fn square(x: u64) -> u64 { x * x }
    ///
    /// let mut p = Process::from_fn(square, 7);
    /// p.start()?;
    /// assert_eq!(p.join()?, 0);
    /// assert_eq!(p.result::<u64>()?, Some(49));
    ///
    /// let mut q = get_context(StartMethod::ForkServer)?.process(square, 8);
    /// q.start()?;
    /// assert_eq!(q.join()?, 0);
    /// assert_eq!(q.result::<u64>()?, Some(64));
    /// # Ok::<(), socketserver::Error>(())
    /// ```
    pub fn from_fn<F, A, R>(f: F, arg: A) -> Process
    where
        F: Fn(A) -> R + Copy + Send + Sync + 'static,
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + 'static,
    {
        Self::from_fn_with(get_start_method(), f, arg)
    }

    pub(crate) fn from_fn_with<F, A, R>(method: StartMethod, f: F, arg: A) -> Process
    where
        F: Fn(A) -> R + Copy + Send + Sync + 'static,
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + 'static,
    {
        const { task::assert_zero_sized::<F>() };
        let _ = f;
        let mut payload = Vec::new();
        let payload = task::append(&arg, &mut payload)
            .map(|()| payload)
            .map_err(|e| e.to_string());
        let identity = current::next_identity();
        Process {
            name: format!("Process-{identity}"),
            identity,
            daemon: false,
            target: None,
            sendable: Some(Sendable {
                method,
                entry: run_fn::<F, A, R>,
                payload,
            }),
            child: None,
            result_conn: None,
            result: None,
        }
    }

    /// The return value of a [`from_fn`](Self::from_fn) target, decoded as
    /// `R`, once the child has been joined: `Ok(None)` before that, for a
    /// closure target, or when the child did not return normally (also
    /// when its result could not be encoded or sent, over 1 GiB encoded
    /// under `fork`: the child then exits with 1 and says why on stderr).
    ///
    /// # Errors
    /// [`Error::Codec`] when the bytes do not decode as `R` (use the
    /// function's return type).
    pub fn result<R: DeserializeOwned>(&mut self) -> Result<Option<R>> {
        if self.result.is_none() && self.exitcode().is_some() {
            self.pull_result(Some(Duration::ZERO))?;
        }
        if self.result.is_none() {
            self.result = self.child.as_mut().and_then(ForkedChild::take_result);
        }
        match &self.result {
            None => Ok(None),
            Some(bytes) => codec::from_bytes(bytes)
                .map(Some)
                .map_err(|e| Error::Codec(e.to_string())),
        }
    }

    /// Under `fork`, receives a `from_fn` child's result (it must be read
    /// before waiting: a large one fills the socket and the child waits
    /// for us). Waits at most `timeout` for it to start arriving.
    fn pull_result(&mut self, timeout: Option<Duration>) -> Result<()> {
        let Some(conn) = self.result_conn.as_mut() else {
            return Ok(());
        };
        if let Some(t) = timeout {
            if !conn.poll(t)? {
                return Ok(());
            }
        }
        match conn.recv_bytes() {
            Ok(bytes) => self.result = Some(bytes),
            Err(Error::Eof | Error::TruncatedFrame { .. }) => {}
            Err(e) => return Err(e),
        }
        self.result_conn = None;
        Ok(())
    }

    /// A builder for a named or daemon process.
    pub fn builder() -> ProcessBuilder {
        ProcessBuilder::default()
    }

    /// The name given at construction (`Process-<n>` by default).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether this is a daemon process.
    pub fn is_daemon(&self) -> bool {
        self.daemon
    }

    /// Makes the process a daemon or not, before it starts.
    ///
    /// # Errors
    /// [`Error::AlreadyStarted`] once started.
    pub fn set_daemon(&mut self, daemon: bool) -> Result<()> {
        if self.child.is_some() {
            return Err(Error::AlreadyStarted);
        }
        self.daemon = daemon;
        Ok(())
    }

    /// Forks the child, which runs the target. The target's captured values
    /// are dropped in the parent afterwards.
    ///
    /// # At exit
    /// As in Python, when this process exits *normally* — returns from
    /// `main`, calls [`std::process::exit`] or [`exit`](super::exit), or
    /// (in a child started by this crate) its target returns — it first
    /// waits for every non-daemon child it started with `Process` that is
    /// still running (joined or dropped or not), then terminates its
    /// daemons (SIGTERM, SIGKILL after one second). So a program that
    /// starts workers and returns from `main` ends when the work is done.
    /// `std::process::abort`, a fatal signal or `_exit` do not wait: that
    /// is the way out that leaves non-daemon children running (daemons
    /// still die with their lifeline, see
    /// [`ForkOptions::daemon`](super::ForkOptions::daemon)). Children
    /// started through the fork server ([`StartMethod::ForkServer`]) are
    /// waited for too: they are the server's children, not ours, so the
    /// wait is on their pidfd (readable once they exit), not `waitid`.
    /// Before waiting for a child that still runs, the exit logs (info)
    /// `waiting at exit for non-daemon child process N`. Children started
    /// with [`fork_child`](super::fork_child) directly (the forking
    /// server's) are not waited for.
    ///
    /// # Errors
    /// [`Error::AlreadyStarted`] on a second call; [`Error::DaemonicChildren`]
    /// inside a daemon child; [`Error::Io`] when `fork` fails (the target is
    /// kept, so `start` may be retried).
    pub fn start(&mut self) -> Result<()> {
        if self.child.is_some() || (self.target.is_none() && self.sendable.is_none()) {
            return Err(Error::AlreadyStarted);
        }
        let mut options = ForkOptions::new();
        options.name(self.name.clone()).daemon(self.daemon);
        options.identity = Some(self.identity.clone());
        if let Some(s) = &self.sendable {
            let payload = s.payload.clone().map_err(Error::Codec)?;
            let mut child = match s.method {
                StartMethod::ForkServer => {
                    forkserver::spawn(&options, s.entry, &payload, Vec::new())?
                }
                _ => {
                    let (mut mine, mut theirs) = pipe(true)?;
                    mine.close_on_fork();
                    // A result is as large as a pool task's may be, not
                    // capped at a `Connection`'s 32 MiB default.
                    mine.set_max_message_size(RESULT_MAX);
                    theirs.set_max_message_size(RESULT_MAX);
                    let entry = s.entry;
                    let child = fork_child(&options, move || {
                        let mut out = Vec::new();
                        let code = entry(&payload, Vec::new(), &mut out);
                        if code == 0 {
                            if let Err(e) = theirs.send_bytes(&out) {
                                // Say why, as the encoding failures do.
                                eprintln!("cannot send the process's result to its parent: {e}");
                                return 1;
                            }
                        }
                        code
                    })?;
                    self.result_conn = Some(mine);
                    child
                }
            };
            self.sendable = None;
            child.handle_at_exit(self.daemon);
            self.child = Some(child);
            return Ok(());
        }
        let target = &mut self.target;
        let child = fork_child(&options, || {
            if let Some(t) = target.as_mut() {
                t();
            }
            0
        })?;
        // Fork succeeded: the parent's copy of the target is not needed.
        self.target = None;
        let mut child = child;
        child.handle_at_exit(self.daemon);
        self.child = Some(child);
        Ok(())
    }

    /// What the child is doing now, read from `/proc/<pid>/stat` without
    /// reaping it: the process states of the classic state diagram.
    /// `None` before [`start`](Self::start), once the child was reaped
    /// ([`join`](Self::join), [`try_wait`](Self::try_wait), …: it is gone),
    /// or when `/proc` cannot be read.
    pub fn state(&self) -> Option<ProcessState> {
        let child = self.child.as_ref()?;
        if child.exitcode().is_some() {
            return None;
        }
        ProcessState::of_pid(child.pid())
    }

    /// The child's pid, once started.
    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(ForkedChild::pid)
    }

    /// A descriptor that polls readable when the child exits (Python's
    /// `Process.sentinel`); `None` before `start`.
    pub fn sentinel(&self) -> Option<BorrowedFd<'_>> {
        self.child.as_ref().map(ForkedChild::sentinel)
    }

    /// Waits for the child to exit and returns its exit code.
    ///
    /// # Errors
    /// [`Error::NotStarted`] before `start`; [`Error::InvalidArgument`] when
    /// called from a process other than the parent.
    pub fn join(&mut self) -> Result<i32> {
        self.child_mut()?;
        self.pull_result(None)?;
        let code = self.child_mut()?.wait()?;
        Ok(code)
    }

    /// Waits at most `timeout`; `Ok(None)` if the child still runs then.
    /// Returns as soon as the child exits (it polls the sentinel).
    ///
    /// # Errors
    /// As [`join`](Self::join).
    pub fn join_timeout(&mut self, timeout: Duration) -> Result<Option<i32>> {
        self.child_mut()?;
        let Some(deadline) = Instant::now().checked_add(timeout) else {
            // Beyond what the clock can represent (`Duration::MAX`): that
            // is no deadline at all, not an overflow.
            return self.join().map(Some);
        };
        self.pull_result(Some(timeout))?;
        // One deadline for both waits: the result, then the exit.
        let left = deadline.saturating_duration_since(Instant::now());
        let code = self.child_mut()?.wait_timeout(left)?;
        Ok(code)
    }

    /// Reaps the child if it has exited, without blocking: `Ok(Some(code))`
    /// once it is gone, `Ok(None)` while it runs.
    ///
    /// # Errors
    /// As [`join`](Self::join).
    pub fn try_wait(&mut self) -> Result<Option<i32>> {
        let code = self.child_mut()?.try_wait()?;
        Ok(code)
    }

    /// Whether the child was started and has not exited yet.
    pub fn is_alive(&mut self) -> bool {
        self.child.is_some() && matches!(self.try_wait(), Ok(None))
    }

    /// The exit code: `None` before start and while running; see [`Process`].
    pub fn exitcode(&mut self) -> Option<i32> {
        self.child.as_ref()?;
        self.try_wait().ok().flatten()
    }

    /// Sends SIGTERM (Python's `terminate()`); a no-op once reaped.
    ///
    /// # Errors
    /// [`Error::NotStarted`] before `start`; [`Error::Io`] if `kill` fails.
    pub fn terminate(&self) -> Result<()> {
        self.child_ref()?.signal(Signal::SIGTERM)
    }

    /// Sends SIGKILL (Python's `kill()`); a no-op once reaped.
    ///
    /// # Errors
    /// As [`terminate`](Self::terminate).
    pub fn kill(&self) -> Result<()> {
        self.child_ref()?.signal(Signal::SIGKILL)
    }

    fn child_ref(&self) -> Result<&ForkedChild> {
        self.child.as_ref().ok_or(Error::NotStarted)
    }

    fn child_mut(&mut self) -> Result<&mut ForkedChild> {
        self.child.as_mut().ok_or(Error::NotStarted)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let Some(child) = self.child.as_mut() else {
            return;
        };
        if child.exitcode().is_none() && child.is_owner() && self.daemon {
            let _ = child.signal(Signal::SIGTERM);
            if !matches!(child.wait_timeout(registry::DAEMON_GRACE), Ok(Some(_))) {
                let _ = child.signal(Signal::SIGKILL);
                let _ = child.wait();
            }
        }
        // A non-daemon child still running is handed to a reaper thread by
        // ForkedChild's drop, and is still waited for at exit.
    }
}
