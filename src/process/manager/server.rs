//! The manager process's object store and per-connection request loop.
//!
//! Every shared object lives in one table behind one mutex; blocking
//! operations (acquiring a held lock, taking from an empty queue, putting
//! into a full one) wait on one condition variable that every change
//! notifies. Each client connection is served by its own thread, so a
//! client blocked in `Queue::get` holds up nobody else.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::process::manager_protocol::{Failure, Kind, Op, Request, Response, SERVER_SPIN};
use crate::process::Connection;

enum Obj {
    /// Dict and Namespace.
    Map(Kind, BTreeMap<String, Value>),
    List(Vec<Value>),
    Value(Value),
    /// The connection that holds it, if held.
    Lock(Option<u64>),
    Queue(VecDeque<Value>, usize),
}

#[derive(Default)]
struct Table {
    objs: HashMap<u64, Obj>,
    names: HashMap<String, u64>,
    next: u64,
}

/// All shared objects of one manager.
#[derive(Default)]
pub(crate) struct Store {
    table: Mutex<Table>,
    changed: Condvar,
    next_conn: AtomicU64,
}

impl Store {
    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Serves one client until it disconnects; returns `true` if it asked
    /// the manager to shut down.
    pub(crate) fn serve(&self, mut conn: Connection) -> bool {
        let me = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let shutdown = loop {
            // A client in a loop sends its next call within microseconds.
            if conn.poll_spin(SERVER_SPIN).is_err() {
                break false;
            }
            let frame = match conn.recv_bytes() {
                Ok(f) => f,
                Err(_) => break false,
            };
            let (response, stop) = match serde_json::from_slice::<Request>(&frame) {
                Ok(Request::Shutdown) => (Response::Ok(Value::Null), true),
                Ok(req) => (self.handle(me, &conn, req), false),
                Err(e) => (
                    Response::err(Failure::Invalid, format!("bad request: {e}")),
                    false,
                ),
            };
            let bytes = match encode(&response, conn.max_message_size()) {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(error = %e, "manager: cannot encode a response");
                    break false;
                }
            };
            if conn.send_bytes(&bytes).is_err() {
                break false;
            }
            if stop {
                break true;
            }
        };
        self.release_locks_of(me);
        shutdown
    }

    /// A client that goes away releases the locks it held, so a crashed
    /// process cannot block the others forever.
    fn release_locks_of(&self, conn: u64) {
        let mut t = self.lock();
        let mut any = false;
        for obj in t.objs.values_mut() {
            if let Obj::Lock(owner) = obj {
                if *owner == Some(conn) {
                    *owner = None;
                    any = true;
                }
            }
        }
        if any {
            self.changed.notify_all();
        }
    }

    fn handle(&self, conn: u64, peer: &Connection, req: Request) -> Response {
        match req {
            Request::Create { kind, name, init } => self.create(kind, name, init),
            Request::Call { id, op } => self.call(conn, peer, id, op),
            Request::Shutdown => Response::Ok(Value::Null),
        }
    }

    fn create(&self, kind: Kind, name: Option<String>, init: Value) -> Response {
        let mut t = self.lock();
        if let Some(name) = &name {
            if let Some(&id) = t.names.get(name) {
                let same = t.objs.get(&id).is_some_and(|o| kind_of(o) == kind);
                if !same {
                    return Response::err(
                        Failure::WrongKind,
                        format!("{name:?} exists with another type"),
                    );
                }
                return Response::Created(id);
            }
        }
        let obj = match build(kind, init) {
            Ok(o) => o,
            Err(msg) => return Response::err(Failure::Invalid, msg),
        };
        let id = t.next;
        t.next += 1;
        t.objs.insert(id, obj);
        if let Some(name) = name {
            t.names.insert(name, id);
        }
        Response::Created(id)
    }

    /// Runs one operation for connection `conn`. The blocking ones wait
    /// while `peer`, the client, is still there: one that went away (a
    /// process killed in `QueueProxy::get`) must not take the next item
    /// or the lock on its way out, since nobody would receive them.
    fn call(&self, conn: u64, peer: &Connection, id: u64, op: Op) -> Response {
        let deadline = |ms: Option<u64>| ms.map(|m| Instant::now() + Duration::from_millis(m));
        let mut t = self.lock();
        match op {
            Op::Acquire { timeout_ms } => {
                let deadline = deadline(timeout_ms);
                loop {
                    match t.objs.get_mut(&id) {
                        Some(Obj::Lock(owner)) => {
                            if owner.is_none() {
                                *owner = Some(conn);
                                return Response::Ok(Value::Bool(true));
                            }
                        }
                        Some(_) => return wrong_kind(),
                        None => return no_such(id),
                    }
                    match self.wait(t, deadline) {
                        Some(g) => t = g,
                        None => return Response::Ok(Value::Bool(false)),
                    }
                    if peer_gone(peer) {
                        return gone();
                    }
                }
            }
            Op::Take { timeout_ms } => {
                let deadline = deadline(timeout_ms);
                loop {
                    match t.objs.get_mut(&id) {
                        Some(Obj::Queue(items, _)) => {
                            if let Some(v) = items.pop_front() {
                                self.changed.notify_all();
                                return Response::Ok(v);
                            }
                        }
                        Some(_) => return wrong_kind(),
                        None => return no_such(id),
                    }
                    match self.wait(t, deadline) {
                        Some(g) => t = g,
                        None => return Response::err(Failure::Empty, "queue is empty"),
                    }
                    if peer_gone(peer) {
                        return gone();
                    }
                }
            }
            Op::Put { value, timeout_ms } => {
                let deadline = deadline(timeout_ms);
                loop {
                    match t.objs.get_mut(&id) {
                        Some(Obj::Queue(items, max)) => {
                            if *max == 0 || items.len() < *max {
                                items.push_back(value);
                                self.changed.notify_all();
                                return Response::Ok(Value::Null);
                            }
                        }
                        Some(_) => return wrong_kind(),
                        None => return no_such(id),
                    }
                    match self.wait(t, deadline) {
                        Some(g) => t = g,
                        None => return Response::err(Failure::Full, "queue is full"),
                    }
                    if peer_gone(peer) {
                        return gone();
                    }
                }
            }
            op => {
                let Some(obj) = t.objs.get_mut(&id) else {
                    return no_such(id);
                };
                let (response, notify) = apply(obj, op);
                if notify {
                    self.changed.notify_all();
                }
                response
            }
        }
    }

    /// Waits for a change until `deadline` (`None` = forever), or at most
    /// [`PEER_CHECK`] (so the caller looks again whether its client is
    /// still there); `None` when the deadline passed.
    fn wait<'a>(
        &'a self,
        guard: MutexGuard<'a, Table>,
        deadline: Option<Instant>,
    ) -> Option<MutexGuard<'a, Table>> {
        let left = match deadline {
            None => PEER_CHECK,
            Some(d) => d.saturating_duration_since(Instant::now()),
        };
        if left.is_zero() {
            return None;
        }
        Some(
            self.changed
                .wait_timeout(guard, left.min(PEER_CHECK))
                .unwrap_or_else(|p| p.into_inner())
                .0,
        )
    }
}

/// Encodes a response; one too large for a frame becomes an error
/// response for that call. (Sending it would fail, and closing the
/// connection instead would leave the client with a bare end-of-file and
/// release the locks it holds through this connection.)
fn encode(response: &Response, max: usize) -> serde_json::Result<Vec<u8>> {
    let bytes = serde_json::to_vec(response)?;
    if bytes.len() <= max {
        return Ok(bytes);
    }
    serde_json::to_vec(&Response::err(
        Failure::Invalid,
        format!(
            "the reply is {} bytes, over the {max}-byte message limit",
            bytes.len()
        ),
    ))
}

/// How often a blocked operation looks whether its client went away when
/// nothing changes (a change wakes it at once): bounds how long the
/// thread of a dead client lingers.
const PEER_CHECK: Duration = Duration::from_secs(1);

/// Whether the client closed its end (or it failed). A client sends
/// nothing while it waits for a reply, so this only sees its going away.
fn peer_gone(peer: &Connection) -> bool {
    use nix::sys::socket::{recv, MsgFlags};
    use std::os::fd::AsRawFd;
    let Some(fd) = peer.fileno() else {
        return true;
    };
    let mut byte = [0u8; 1];
    match recv(
        fd.as_raw_fd(),
        &mut byte,
        MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT,
    ) {
        // End of file: the client closed its end.
        Ok(0) => true,
        Ok(_) => false,
        Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => false,
        // A reset, or the socket failed: nobody to answer.
        Err(_) => true,
    }
}

fn gone() -> Response {
    Response::err(Failure::Invalid, "the client went away")
}

fn kind_of(obj: &Obj) -> Kind {
    match obj {
        Obj::Map(k, _) => *k,
        Obj::List(_) => Kind::List,
        Obj::Value(_) => Kind::Value,
        Obj::Lock(_) => Kind::Lock,
        Obj::Queue(..) => Kind::Queue,
    }
}

fn build(kind: Kind, init: Value) -> Result<Obj, String> {
    Ok(match kind {
        Kind::Dict | Kind::Namespace => match init {
            Value::Null => Obj::Map(kind, BTreeMap::new()),
            Value::Object(m) => Obj::Map(kind, m.into_iter().collect()),
            other => return Err(format!("a dict starts from an object, not {other}")),
        },
        Kind::List => match init {
            Value::Null => Obj::List(Vec::new()),
            Value::Array(v) => Obj::List(v),
            other => return Err(format!("a list starts from an array, not {other}")),
        },
        Kind::Value => Obj::Value(init),
        Kind::Lock => Obj::Lock(None),
        Kind::Queue => Obj::Queue(VecDeque::new(), init.as_u64().unwrap_or(0) as usize),
    })
}

fn wrong_kind() -> Response {
    Response::err(Failure::WrongKind, "operation not supported by this object")
}

fn no_such(id: u64) -> Response {
    Response::err(Failure::NoSuchObject, format!("no shared object {id}"))
}

/// Resolves a Python-style index (negative counts from the end).
fn resolve(index: i64, len: usize) -> Option<usize> {
    let i = if index < 0 { len as i64 + index } else { index };
    (0..len as i64).contains(&i).then_some(i as usize)
}

fn ok(v: Value) -> (Response, bool) {
    (Response::Ok(v), false)
}

fn changed(v: Value) -> (Response, bool) {
    (Response::Ok(v), true)
}

/// The non-blocking operations; the flag says whether to notify waiters.
fn apply(obj: &mut Obj, op: Op) -> (Response, bool) {
    let len_of = |n: usize| Value::from(n as u64);
    match (obj, op) {
        (Obj::Map(_, m), Op::Set { key, value }) => {
            m.insert(key, value);
            ok(Value::Null)
        }
        (Obj::Map(_, m), Op::Get { key }) => {
            ok(Value::Array(m.get(&key).cloned().into_iter().collect()))
        }
        (Obj::Map(_, m), Op::Contains { key }) => ok(Value::Bool(m.contains_key(&key))),
        (Obj::Map(_, m), Op::Remove { key }) => {
            ok(Value::Array(m.remove(&key).into_iter().collect()))
        }
        (Obj::Map(_, m), Op::Keys) => ok(Value::from(m.keys().cloned().collect::<Vec<_>>())),
        (Obj::Map(_, m), Op::Update { entries }) => {
            m.extend(entries);
            ok(Value::Null)
        }
        (Obj::Map(_, m), Op::Items) => ok(Value::Object(
            m.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        )),
        (Obj::Map(_, m), Op::Len) => ok(len_of(m.len())),
        (Obj::Map(_, m), Op::Clear) => {
            m.clear();
            ok(Value::Null)
        }
        (Obj::List(l), Op::Append { value }) => {
            l.push(value);
            ok(Value::Null)
        }
        (Obj::List(l), Op::Extend { values }) => {
            l.extend(values);
            ok(Value::Null)
        }
        (Obj::List(l), Op::Index { index }) => match resolve(index, l.len()) {
            Some(i) => ok(Value::Array(vec![l[i].clone()])),
            None => ok(Value::Array(Vec::new())),
        },
        (Obj::List(l), Op::SetIndex { index, value }) => match resolve(index, l.len()) {
            Some(i) => {
                l[i] = value;
                ok(Value::Null)
            }
            None => (
                Response::err(Failure::Invalid, format!("list index {index} out of range")),
                false,
            ),
        },
        (Obj::List(l), Op::Pop { index }) => {
            let i = resolve(index.unwrap_or(-1), l.len());
            ok(Value::Array(i.map(|i| l.remove(i)).into_iter().collect()))
        }
        (Obj::List(l), Op::Len) => ok(len_of(l.len())),
        (Obj::List(l), Op::Items) => ok(Value::Array(l.clone())),
        (Obj::List(l), Op::Clear) => {
            l.clear();
            ok(Value::Null)
        }
        (Obj::Value(v), Op::Load) => ok(v.clone()),
        (Obj::Value(v), Op::Store { value }) => {
            *v = value;
            ok(Value::Null)
        }
        (Obj::Lock(owner), Op::Release) => {
            if owner.take().is_none() {
                return (
                    Response::err(Failure::Invalid, "release of an unlocked lock"),
                    false,
                );
            }
            changed(Value::Null)
        }
        (Obj::Queue(items, _), Op::Len) => ok(len_of(items.len())),
        (Obj::Queue(items, _), Op::Clear) => {
            items.clear();
            changed(Value::Null)
        }
        _ => (wrong_kind(), false),
    }
}
