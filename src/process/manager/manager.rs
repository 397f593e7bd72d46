//! `Manager`: Python's `multiprocessing.Manager()` / `BaseManager`, a
//! server process that holds shared objects and hands out proxies.

use std::fmt;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::process::manager_protocol::{Kind, Request};
use crate::process::manager_proxy::{
    DictProxy, ListProxy, LockProxy, NamespaceProxy, QueueProxy, Remote, ValueProxy,
};
use crate::process::manager_server::Store;
use crate::process::{fork_child, pipe, Address, ForkOptions, ForkedChild, Listener};
use crate::server::{AcceptAction, AcceptBackoff, RateLimited};
use crate::{Error, Result};

/// How long `Manager::new` waits for the server to report its address.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the server gets to leave after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(1);

/// A server process holding shared dicts, lists, values, namespaces, locks
/// and queues: Python's `multiprocessing.Manager()` (a `SyncManager`).
///
/// ```
/// use socketserver::process::{Manager, Process};
///
/// let manager = Manager::new()?;
/// let d = manager.dict::<i64>()?;
/// let mut p = Process::new({
///     let d = d.clone();
///     move || { let _ = d.set("answer", &42); }
/// });
/// p.start()?;
/// p.join()?;
/// assert_eq!(d.get("answer")?, Some(42));
/// # Ok::<(), socketserver::Error>(())
/// ```
///
/// Proxies ([`DictProxy`], [`ListProxy`], …) are cheap to clone and work
/// in any process: move a clone into a child. Values travel as JSON, so a
/// proxy is generic over any serde type. Objects live as long as the
/// manager (there is no per-proxy reference counting).
///
/// # Remote managers
/// [`ManagerBuilder::address`] with a TCP address and an authkey serves
/// other machines, like `BaseManager(address, authkey)`;
/// [`Manager::connect`] is `BaseManager.connect()`. A client with a wrong
/// key is refused by the handshake ([`Error::AuthenticationFailed`]).
/// Named objects ([`dict_named`](Self::dict_named), …) let separate
/// programs find the same object, the role `BaseManager.register` plays in
/// Python.
///
/// # Lifetime
/// The server is a daemon child: it is killed when the owning process dies
/// (SIGKILL included; see [`ForkOptions::daemon`](crate::process::ForkOptions::daemon)),
/// whichever thread started it, and stopped
/// (SIGTERM, then SIGKILL) when the owning `Manager` is dropped or
/// [`shutdown`](Self::shutdown) is called. Its Unix socket file goes
/// with it (the owner removes it, if it is still the file the server
/// bound; a server that a client shut down removes it itself), so the
/// path can be used again. It holds only the descriptors
/// it needs: right after the fork it closes every other one it inherited
/// (a listener or pipe of the program's stays closable), and it runs each
/// client's authkey handshake on that client's own thread, so a silent
/// client delays only itself.
#[doc(alias = "BaseManager")]
#[doc(alias = "SyncManager")]
pub struct Manager {
    remote: Arc<Remote>,
    server: Option<ForkedChild>,
    /// Private directory of the default Unix socket, removed on shutdown.
    socket_dir: Option<PathBuf>,
    /// The Unix socket file our server bound at a path the caller chose,
    /// with its identity, removed on shutdown if it is still that file.
    socket_file: Option<SocketFile>,
}

/// A socket file, and what tells it apart from one bound there later.
#[derive(Debug)]
struct SocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl SocketFile {
    fn of(path: &std::path::Path) -> Option<SocketFile> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::symlink_metadata(path).ok()?;
        Some(SocketFile {
            path: path.to_owned(),
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }

    /// Removes the file if it is still the one recorded: a server killed
    /// by a signal (the owner's SIGTERM, SIGKILL) cannot remove it itself.
    fn remove(self) {
        if SocketFile::of(&self.path).is_some_and(|now| (now.dev, now.ino) == (self.dev, self.ino))
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl fmt::Debug for Manager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Manager")
            .field("address", &self.remote.address)
            .field("server_pid", &self.server.as_ref().map(ForkedChild::pid))
            .finish()
    }
}

/// Configures a [`Manager`]'s address and authkey.
///
/// ```
/// use socketserver::process::Manager;
///
/// let mut manager = Manager::builder().authkey(b"secret".to_vec()).start()?;
/// assert_eq!(manager.authkey(), b"secret");
/// let counts = manager.dict::<u32>()?;
/// counts.set("a", &1)?;
/// assert_eq!(counts.get("a")?, Some(1));
/// // A second client of the same manager process sees the same state.
/// let other = Manager::connect(manager.address().clone(), b"secret")?;
/// assert_eq!(other.dict_named::<u32>("nope")?.len()?, 0);
/// manager.shutdown()?;
/// # Ok::<(), socketserver::Error>(())
/// ```
#[derive(Debug, Default, Clone)]
pub struct ManagerBuilder {
    address: Option<Address>,
    authkey: Option<Vec<u8>>,
}

impl ManagerBuilder {
    /// Where the server listens: a TCP address (port 0 picks one; read it
    /// back with [`Manager::address`]) or a Unix socket path. Default is a
    /// Unix socket in a fresh private directory under the temp dir.
    pub fn address(&mut self, address: impl Into<Address>) -> &mut Self {
        self.address = Some(address.into());
        self
    }

    /// The shared secret clients must prove they know. Default is 32
    /// random bytes (read it with [`Manager::authkey`]).
    pub fn authkey(&mut self, key: impl Into<Vec<u8>>) -> &mut Self {
        self.authkey = Some(key.into());
        self
    }

    /// Forks the server process and waits until it listens.
    ///
    /// # Errors
    /// [`Error::Io`] if binding or forking fails (the server's bind error
    /// is reported here); [`Error::InvalidArgument`] for an empty authkey;
    /// [`Error::DaemonicChildren`] inside a daemon process;
    /// [`Error::Timeout`] if the server does not come up in 10 s.
    pub fn start(&self) -> Result<Manager> {
        let authkey = match &self.authkey {
            Some(k) if k.is_empty() => {
                return Err(Error::InvalidArgument(
                    "the authkey must not be empty".into(),
                ))
            }
            Some(k) => k.clone(),
            None => {
                let mut k = vec![0u8; 32];
                getrandom::fill(&mut k)
                    .map_err(|e| Error::Io(std::io::Error::other(e.to_string())))?;
                k
            }
        };
        let (address, socket_dir) = match &self.address {
            Some(a) => (a.clone(), None),
            None => {
                let dir = private_dir()?;
                (Address::Unix(dir.join(SOCKET_NAME)), Some(dir))
            }
        };
        let result = spawn_server(address, &authkey);
        let (server, address) = match result {
            Ok(v) => v,
            Err(e) => {
                if let Some(dir) = &socket_dir {
                    let _ = std::fs::remove_dir_all(dir);
                }
                return Err(e);
            }
        };
        let socket_file = match (&address, &socket_dir) {
            (Address::Unix(path), None) => SocketFile::of(path),
            _ => None,
        };
        Ok(Manager {
            remote: Remote::new(address, authkey),
            server: Some(server),
            socket_dir,
            socket_file,
        })
    }
}

/// The name of a default socket's directory: this prefix, the owner's
/// pid, `-`, 16 hex digits.
const DIR_PREFIX: &str = "socketserver-manager-";
/// The default socket's name in that directory.
const SOCKET_NAME: &str = "manager.sock";

/// A fresh directory only we can enter, for the default Unix socket.
/// Directories that owners killed by a signal left behind are removed
/// first (see [`remove_stale_dirs`]).
fn private_dir() -> Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let tmp = std::env::temp_dir();
    remove_stale_dirs(&tmp);
    let mut tag = [0u8; 8];
    getrandom::fill(&mut tag).map_err(|e| Error::Io(std::io::Error::other(e.to_string())))?;
    let name = format!(
        "{DIR_PREFIX}{}-{}",
        std::process::id(),
        tag.iter().map(|b| format!("{b:02x}")).collect::<String>()
    );
    let dir = tmp.join(name);
    std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
    Ok(dir)
}

/// Removes default socket directories whose manager is gone: an owner
/// killed by a signal (SIGKILL takes its server with it through the
/// lifeline) cannot remove its directory, and each one would stay in the
/// temp dir for good. A directory goes only if it is ours (same user, a
/// real directory, our naming), its owner pid does not exist, and
/// nothing listens on its socket (a `connect` is refused): an owner in
/// another pid namespace sharing the temp dir keeps its directory.
fn remove_stale_dirs(tmp: &std::path::Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return;
    };
    let me = nix::unistd::getuid().as_raw();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some((pid, tag)) = name
            .to_str()
            .and_then(|n| n.strip_prefix(DIR_PREFIX))
            .and_then(|rest| rest.split_once('-'))
        else {
            continue;
        };
        let Ok(pid) = pid.parse::<i32>() else {
            continue;
        };
        if pid <= 0 || tag.len() != 16 || !tag.bytes().all(|b| b.is_ascii_hexdigit()) {
            continue;
        }
        if nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None)
            != Err(nix::errno::Errno::ESRCH)
        {
            continue;
        }
        let path = entry.path();
        let ours = std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir() && m.uid() == me);
        let socket = path.join(SOCKET_NAME);
        // Non-blocking: a live listener with a full backlog is `EAGAIN`,
        // not a wait.
        let dead = match socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None)
            .and_then(|s| {
                s.set_nonblocking(true)?;
                s.connect(&socket2::SockAddr::unix(&socket)?)
            }) {
            Ok(()) => false,
            Err(e) => matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound
            ),
        };
        if ours && dead {
            tracing::debug!(dir = %path.display(), "manager: removing a dead manager's socket directory");
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}

fn address_to_string(a: &Address) -> String {
    match a {
        Address::Tcp(s) => format!("tcp:{s}"),
        Address::Unix(p) => format!("unix:{}", p.display()),
    }
}

fn address_from_string(s: &str) -> Result<Address> {
    if let Some(t) = s.strip_prefix("tcp:") {
        let addr = t
            .parse()
            .map_err(|e| Error::InvalidArgument(format!("bad address {t:?}: {e}")))?;
        Ok(Address::Tcp(addr))
    } else if let Some(p) = s.strip_prefix("unix:") {
        Ok(Address::Unix(PathBuf::from(p)))
    } else {
        Err(Error::InvalidArgument(format!("bad address {s:?}")))
    }
}

/// Forks the server. It binds the listener itself (so the socket and its
/// path belong to it) and reports the bound address, or its bind error,
/// over a pipe.
fn spawn_server(address: Address, authkey: &[u8]) -> Result<(ForkedChild, Address)> {
    let (mut rx, mut tx) = pipe(false)?;
    let key = authkey.to_vec();
    let mut options = ForkOptions::new();
    options.name("SyncManager").daemon(true);
    // The server holds only what it needs: stdio, the pipe it reports on
    // (and its lifeline). Not the caller's listeners, pipes and files: a
    // listener the caller drops right after `Manager::new` must stop
    // accepting, a pipe's reader must see end-of-file.
    options.keep_only = Some(tx.fileno().map(|fd| fd.as_raw_fd()).into_iter().collect());
    let mut child = fork_child(&options, move || {
        let listener = match Listener::bind(address, Some(&key)) {
            Ok(l) => l,
            Err(e) => {
                let _ = tx.send(&Err::<String, String>(e.to_string()));
                return 1;
            }
        };
        let bound = match listener.address() {
            Ok(a) => address_to_string(&a),
            Err(e) => {
                let _ = tx.send(&Err::<String, String>(e.to_string()));
                return 1;
            }
        };
        if tx.send(&Ok::<String, String>(bound)).is_err() {
            return 1;
        }
        drop(tx);
        serve_forever(&listener)
    })?;
    let reply = match rx.poll(START_TIMEOUT) {
        Ok(true) => rx.recv::<std::result::Result<String, String>>(),
        Ok(false) => Err(Error::Timeout(START_TIMEOUT)),
        Err(e) => Err(e),
    };
    match reply {
        Ok(Ok(a)) => Ok((child, address_from_string(&a)?)),
        Ok(Err(msg)) => {
            let _ = child.wait_timeout(STOP_GRACE);
            Err(Error::Io(std::io::Error::other(format!(
                "manager server failed to listen: {msg}"
            ))))
        }
        Err(e) => {
            let _ = child.signal(Signal::SIGKILL);
            let _ = child.wait();
            Err(e)
        }
    }
}

/// Most connections in the authkey handshake at once: past this, a new
/// connection ends the oldest handshake instead of getting in line.
const MAX_HANDSHAKES: usize = 64;

/// The connections in their authkey handshake. A full table ends its
/// oldest handshake to make room: a client that knows the key answers
/// within a round trip, so it is never the oldest for long, while peers
/// that connect and stay silent (or dribble) would otherwise hold every
/// slot and, reopening as each one timed out, lock everyone out. Once a
/// peer has answered the challenge correctly it is not ended any more.
#[derive(Default)]
struct Handshakes {
    table: std::sync::Mutex<HandshakeTable>,
    left: std::sync::Condvar,
}

#[derive(Default)]
struct HandshakeTable {
    /// Handshakes whose thread is still running (ended ones included).
    running: usize,
    next: u64,
    /// A copy of each running handshake's socket that can still be ended,
    /// oldest first.
    sockets: std::collections::BTreeMap<u64, std::os::fd::OwnedFd>,
}

impl Handshakes {
    fn table(&self) -> std::sync::MutexGuard<'_, HandshakeTable> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until fewer than [`MAX_HANDSHAKES`] run. While the table is
    /// full, ends the oldest handshake that can be ended (`shutdown`: its
    /// thread sees end-of-file at once), one per call: then waits for a
    /// thread to finish (the holder of the table's lock is the only one
    /// that could let them).
    fn make_room(&self) {
        let mut t = self.table();
        let mut ended = false;
        while t.running >= MAX_HANDSHAKES {
            if !ended {
                if let Some((_, fd)) = t.sockets.pop_first() {
                    tracing::debug!("manager: handshakes full, ending the oldest");
                    let _ = socket2::SockRef::from(&fd).shutdown(std::net::Shutdown::Both);
                    ended = true;
                }
            }
            // Until a handshake ends: the one just ended, or another.
            t = self.left.wait(t).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// Counts a connection in its handshake for as long as it lives.
struct Handshaking(Arc<Handshakes>, u64);

impl Handshaking {
    /// The peer proved it knows the key: its handshake is no longer one
    /// to end for room (it still counts until it is over, bounded by the
    /// handshake timeout).
    fn verified(&self) {
        self.0.table().sockets.remove(&self.1);
    }

    fn new(all: &Arc<Handshakes>, conn: &crate::process::Connection) -> Handshaking {
        // Without a copy (out of descriptors) the handshake still runs,
        // bounded by its timeout; it just cannot be ended early.
        let copy = conn.fileno().and_then(|fd| fd.try_clone_to_owned().ok());
        let mut t = all.table();
        let id = t.next;
        t.next += 1;
        t.running += 1;
        if let Some(copy) = copy {
            t.sockets.insert(id, copy);
        }
        Handshaking(all.clone(), id)
    }
}

impl Drop for Handshaking {
    fn drop(&mut self) {
        let mut t = self.0.table();
        t.running -= 1;
        t.sockets.remove(&self.1);
        drop(t);
        self.0.left.notify_one();
    }
}

/// The server process's accept loop: one thread per client connection,
/// which first runs the authkey handshake there, so a client that
/// connects and stays silent makes no other client wait behind that one.
/// At most [`MAX_HANDSHAKES`] run at once; a connection past that ends
/// the oldest handshake. Accept errors follow the crate's one policy
/// ([`AcceptBackoff`]): skip a failed connection, back off (logging once
/// per run of failures) when out of descriptors, stop if the listening
/// socket is broken.
fn serve_forever(listener: &Listener) -> i32 {
    let store = Arc::new(Store::default());
    let auth = listener.authenticator();
    let handshakes = Arc::new(Handshakes::default());
    let mut backoff = AcceptBackoff::default();
    // Out of threads, every connection would log: one line a minute.
    // A thread that cannot start is logged once a minute with a count,
    // not once per connection.
    let mut spawn_errors = RateLimited::new(Duration::from_secs(60));
    // Leaving through `exit` on another thread skips the listener's drop,
    // which removes a Unix socket's file: remove it before leaving.
    let socket_path = match listener.address() {
        Ok(Address::Unix(path)) => Some(Arc::new(path)),
        _ => None,
    };
    loop {
        handshakes.make_room();
        match listener.accept_unauthenticated() {
            Ok(mut conn) => {
                backoff.on_success();
                let counted = Handshaking::new(&handshakes, &conn);
                let store = store.clone();
                let auth = auth.clone();
                let socket_path = socket_path.clone();
                let spawned = std::thread::Builder::new()
                    .name("manager-conn".into())
                    .spawn(move || {
                        let ok = auth.authenticate_then(&mut conn, || counted.verified());
                        drop(counted);
                        // A client with a wrong key, or one that stayed
                        // silent: refuse it (close the connection).
                        if ok.is_ok() && store.serve(conn) {
                            // A client asked for shutdown.
                            if let Some(path) = socket_path {
                                let _ = std::fs::remove_file(&*path);
                            }
                            crate::process::exit(0);
                        }
                    });
                if let Err(e) = spawned {
                    spawn_errors.error(
                        "manager: cannot start a connection thread (connection closed)",
                        &e,
                    );
                }
            }
            Err(Error::Io(e)) => match backoff.on_error(&e) {
                AcceptAction::Retry => {}
                AcceptAction::Backoff(d) => std::thread::sleep(d),
                AcceptAction::Fatal => {
                    tracing::error!(error = %e, "manager: the listening socket failed");
                    return 1;
                }
            },
            Err(e) => {
                tracing::error!(error = %e, "manager: accept failed");
                return 1;
            }
        }
    }
}

impl Manager {
    /// Starts a manager on a private Unix socket with a random authkey.
    ///
    /// # Errors
    /// As [`ManagerBuilder::start`].
    pub fn new() -> Result<Manager> {
        Self::builder().start()
    }

    /// A builder for the address and authkey.
    pub fn builder() -> ManagerBuilder {
        ManagerBuilder::default()
    }

    /// Connects to a manager started elsewhere (Python's
    /// `BaseManager(address, authkey).connect()`). Dropping the result does
    /// not stop that manager.
    ///
    /// # Errors
    /// [`Error::AuthenticationFailed`] for a wrong key; [`Error::Io`] if
    /// nothing listens there.
    pub fn connect(address: impl Into<Address>, authkey: &[u8]) -> Result<Manager> {
        let remote = Remote::new(address.into(), authkey.to_vec());
        // Authenticate now so a wrong key fails here, not on first use.
        drop(remote.connect()?);
        Ok(Manager {
            remote,
            server: None,
            socket_dir: None,
            socket_file: None,
        })
    }

    /// The authkey clients must prove they know: the one given to
    /// [`ManagerBuilder::authkey`], or the random default. Hand it (with
    /// [`address`](Self::address)) to a process that was not forked from
    /// this one so it can [`connect`](Self::connect).
    pub fn authkey(&self) -> &[u8] {
        self.remote.authkey()
    }

    /// The address the server listens on (with the real port).
    pub fn address(&self) -> &Address {
        &self.remote.address
    }

    /// The server's pid, if this value started it.
    pub fn server_pid(&self) -> Option<i32> {
        self.server.as_ref().map(ForkedChild::pid)
    }

    fn create(&self, kind: Kind, name: Option<&str>, init: Value) -> Result<u64> {
        self.remote.create(kind, name.map(str::to_owned), init)
    }

    /// A new empty shared dict (`manager.dict()`).
    ///
    /// # Errors
    /// [`Error::Io`]/[`Error::Eof`] if the manager is unreachable.
    pub fn dict<V: Serialize + DeserializeOwned>(&self) -> Result<DictProxy<V>> {
        Ok(DictProxy::new(
            self.remote.clone(),
            self.create(Kind::Dict, None, Value::Null)?,
        ))
    }

    /// The dict called `name`, created empty on first use, so separate
    /// programs connected to one manager can share it.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if `name` is another kind of object;
    /// otherwise as [`dict`](Self::dict).
    pub fn dict_named<V: Serialize + DeserializeOwned>(&self, name: &str) -> Result<DictProxy<V>> {
        let id = self.create(Kind::Dict, Some(name), Value::Null)?;
        Ok(DictProxy::new(self.remote.clone(), id))
    }

    /// A new empty shared list (`manager.list()`).
    ///
    /// # Errors
    /// As [`dict`](Self::dict).
    pub fn list<T: Serialize + DeserializeOwned>(&self) -> Result<ListProxy<T>> {
        Ok(ListProxy::new(
            self.remote.clone(),
            self.create(Kind::List, None, Value::Null)?,
        ))
    }

    /// The list called `name`, created empty on first use.
    ///
    /// # Errors
    /// As [`dict_named`](Self::dict_named).
    pub fn list_named<T: Serialize + DeserializeOwned>(&self, name: &str) -> Result<ListProxy<T>> {
        let id = self.create(Kind::List, Some(name), Value::Null)?;
        Ok(ListProxy::new(self.remote.clone(), id))
    }

    /// A shared value starting at `init` (`manager.Value(typecode, init)`).
    ///
    /// # Errors
    /// [`Error::Codec`] if `init` does not serialise; as [`dict`](Self::dict).
    pub fn value<T: Serialize + DeserializeOwned>(&self, init: &T) -> Result<ValueProxy<T>> {
        let init = serde_json::to_value(init).map_err(|e| Error::Codec(e.to_string()))?;
        Ok(ValueProxy::new(
            self.remote.clone(),
            self.create(Kind::Value, None, init)?,
        ))
    }

    /// A new empty namespace (`manager.Namespace()`).
    ///
    /// # Errors
    /// As [`dict`](Self::dict).
    pub fn namespace(&self) -> Result<NamespaceProxy> {
        let id = self.create(Kind::Namespace, None, Value::Null)?;
        Ok(NamespaceProxy::new(self.remote.clone(), id))
    }

    /// A new shared lock (`manager.Lock()`).
    ///
    /// # Errors
    /// As [`dict`](Self::dict).
    pub fn lock(&self) -> Result<LockProxy> {
        Ok(LockProxy::new(
            self.remote.clone(),
            self.create(Kind::Lock, None, Value::Null)?,
        ))
    }

    /// A new shared queue; `maxsize` 0 means unbounded (`manager.Queue()`).
    ///
    /// # Errors
    /// As [`dict`](Self::dict).
    pub fn queue<T: Serialize + DeserializeOwned>(&self, maxsize: usize) -> Result<QueueProxy<T>> {
        let id = self.create(Kind::Queue, None, Value::from(maxsize as u64))?;
        Ok(QueueProxy::new(self.remote.clone(), id))
    }

    /// The queue called `name`, created on first use.
    ///
    /// # Errors
    /// As [`dict_named`](Self::dict_named).
    pub fn queue_named<T: Serialize + DeserializeOwned>(
        &self,
        name: &str,
        maxsize: usize,
    ) -> Result<QueueProxy<T>> {
        let id = self.create(Kind::Queue, Some(name), Value::from(maxsize as u64))?;
        Ok(QueueProxy::new(self.remote.clone(), id))
    }

    /// Stops the server process (if this value started it) and waits for
    /// it; proxies fail afterwards. For a connected manager, asks the
    /// server to shut down.
    ///
    /// # Errors
    /// [`Error::Io`] if a connected manager cannot be reached.
    pub fn shutdown(&mut self) -> Result<()> {
        match self.server.take() {
            // A forked child that inherited this value must not stop the
            // server or remove its socket.
            Some(child) if !child.is_owner() => {
                std::mem::forget(child);
                self.socket_dir = None;
                self.socket_file = None;
                return Ok(());
            }
            Some(mut child) => {
                let _ = child.signal(Signal::SIGTERM);
                if !matches!(child.wait_timeout(STOP_GRACE), Ok(Some(_))) {
                    let _ = child.signal(Signal::SIGKILL);
                    let _ = child.wait();
                }
            }
            None => {
                self.remote.request(&Request::Shutdown)?;
            }
        }
        if let Some(dir) = self.socket_dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
        if let Some(file) = self.socket_file.take() {
            file.remove();
        }
        Ok(())
    }
}

impl Drop for Manager {
    fn drop(&mut self) {
        if self.server.is_some() {
            let _ = self.shutdown();
        }
    }
}
