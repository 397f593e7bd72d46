//! Proxies: handles to objects living in a [`Manager`](crate::process::Manager)'s
//! server process, usable from any process that can reach it.
//!
//! Values travel as JSON (`serde_json::Value`), so each proxy is generic
//! over a serde type: `DictProxy<i64>` stores `i64`s, and a process that
//! reads the same dict as `DictProxy<serde_json::Value>` sees them too.
//! Keys of dicts and namespaces are `String`s.
//!
//! # Connections
//! Each proxy family (everything made by one `Manager` value, and its
//! clones) keeps a small set of idle connections to the server, separate
//! in each process: a proxy that crossed a `fork` opens its own connection
//! on first use and never touches its parent's. Concurrent calls from
//! several threads use separate connections, so a thread blocked in
//! [`QueueProxy::get`] holds up nobody else.

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::process::manager_protocol::{
    failure_to_error, Kind, Op, Request, Response, CLIENT_SPIN,
};
use crate::process::{Address, Client, Connection};
use crate::{Error, Result};

/// The client side of one manager: address, key, idle connections.
pub(crate) struct Remote {
    pub(crate) address: Address,
    authkey: Vec<u8>,
    idle: Mutex<Vec<Connection>>,
}

impl Remote {
    /// The shared secret this handle proves when it connects.
    pub(crate) fn authkey(&self) -> &[u8] {
        &self.authkey
    }
}

impl fmt::Debug for Remote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Remote")
            .field("address", &self.address)
            .finish()
    }
}

fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Value> {
    serde_json::to_value(value).map_err(|e| Error::Codec(e.to_string()))
}

fn decode<T: DeserializeOwned>(value: Value) -> Result<T> {
    serde_json::from_value(value).map_err(|e| Error::Codec(e.to_string()))
}

/// `[v]` → `Some(v)`, `[]` → `None` (how the server says "absent").
fn decode_opt<T: DeserializeOwned>(value: Value) -> Result<Option<T>> {
    match value {
        Value::Array(mut v) if v.len() <= 1 => v.pop().map(decode).transpose(),
        other => Err(Error::Codec(format!("unexpected manager reply {other}"))),
    }
}

impl Remote {
    pub(crate) fn new(address: Address, authkey: Vec<u8>) -> Arc<Remote> {
        Arc::new(Remote {
            address,
            authkey,
            idle: Mutex::new(Vec::new()),
        })
    }

    /// Opens a new authenticated connection (also how a remote client
    /// checks its key).
    pub(crate) fn connect(&self) -> Result<Connection> {
        let mut conn = Client::connect(&self.address, Some(&self.authkey))?;
        // Children forked later must not share this socket with us.
        conn.close_on_fork();
        Ok(conn)
    }

    fn checkout(&self) -> Result<Connection> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(conn) = idle.pop() {
            // A connection inherited across fork reports itself closed.
            if !conn.closed() {
                return Ok(conn);
            }
        }
        drop(idle);
        self.connect()
    }

    fn checkin(&self, conn: Connection) {
        self.idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(conn);
    }

    /// One request, one response. A connection is dropped only when it
    /// failed: the server releases the locks held through a connection
    /// that closes, so one still in step (a request refused before it was
    /// sent, a reply that does not decode) goes back to the idle set.
    pub(crate) fn request(&self, req: &Request) -> Result<Response> {
        let bytes = serde_json::to_vec(req).map_err(|e| Error::Codec(e.to_string()))?;
        let mut conn = self.checkout()?;
        if let Err(e) = conn.send_bytes(&bytes) {
            if matches!(e, Error::MessageTooLarge { .. }) {
                // Refused before a byte was written.
                self.checkin(conn);
            }
            return Err(e);
        }
        // The server answers a simple call within microseconds: wait for
        // it actively first (see `Connection::poll_spin`).
        conn.poll_spin(CLIENT_SPIN)?;
        let reply = conn.recv_bytes()?;
        self.checkin(conn);
        serde_json::from_slice(&reply).map_err(|e| Error::Codec(e.to_string()))
    }

    fn call(&self, id: u64, op: Op) -> Result<Value> {
        match self.request(&Request::Call { id, op })? {
            Response::Ok(v) => Ok(v),
            Response::Err(f, msg) => Err(failure_to_error(f, msg)),
            Response::Created(_) => Err(Error::Codec("unexpected manager reply".into())),
        }
    }

    pub(crate) fn create(&self, kind: Kind, name: Option<String>, init: Value) -> Result<u64> {
        match self.request(&Request::Create { kind, name, init })? {
            Response::Created(id) => Ok(id),
            Response::Err(f, msg) => Err(failure_to_error(f, msg)),
            Response::Ok(_) => Err(Error::Codec("unexpected manager reply".into())),
        }
    }
}

fn len_of(v: Value) -> Result<usize> {
    v.as_u64()
        .map(|n| n as usize)
        .ok_or_else(|| Error::Codec(format!("expected a length, got {v}")))
}

macro_rules! proxy_common {
    ($name:ident) => {
        impl<T> Clone for $name<T> {
            fn clone(&self) -> Self {
                $name {
                    remote: self.remote.clone(),
                    id: self.id,
                    _t: PhantomData,
                }
            }
        }

        impl<T> fmt::Debug for $name<T> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($name))
                    .field("id", &self.id)
                    .field("manager", &self.remote.address)
                    .finish()
            }
        }

        impl<T> $name<T> {
            pub(crate) fn new(remote: Arc<Remote>, id: u64) -> Self {
                $name {
                    remote,
                    id,
                    _t: PhantomData,
                }
            }
        }
    };
}

/// A shared dict, `String` keys and `V` values: the proxy Python's
/// `Manager().dict()` returns.
///
/// # Errors
/// Every method can fail with [`Error::Io`]/[`Error::Eof`] when the
/// manager is unreachable, and with [`Error::Codec`] when a stored value
/// does not decode as `V`.
pub struct DictProxy<T> {
    remote: Arc<Remote>,
    id: u64,
    _t: PhantomData<fn() -> T>,
}
proxy_common!(DictProxy);

impl<V: Serialize + DeserializeOwned> DictProxy<V> {
    /// `d[key] = value`.
    pub fn set(&self, key: impl Into<String>, value: &V) -> Result<()> {
        let key = key.into();
        self.remote.call(
            self.id,
            Op::Set {
                key,
                value: encode(value)?,
            },
        )?;
        Ok(())
    }

    /// `d.get(key)`.
    pub fn get(&self, key: &str) -> Result<Option<V>> {
        decode_opt(self.remote.call(self.id, Op::Get { key: key.into() })?)
    }

    /// `d.pop(key, None)`.
    pub fn remove(&self, key: &str) -> Result<Option<V>> {
        decode_opt(self.remote.call(self.id, Op::Remove { key: key.into() })?)
    }

    /// `key in d`.
    pub fn contains_key(&self, key: &str) -> Result<bool> {
        let v = self
            .remote
            .call(self.id, Op::Contains { key: key.into() })?;
        Ok(v.as_bool().unwrap_or(false))
    }

    /// `len(d)`.
    pub fn len(&self) -> Result<usize> {
        len_of(self.remote.call(self.id, Op::Len)?)
    }

    /// `len(d) == 0`.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// The keys, sorted.
    pub fn keys(&self) -> Result<Vec<String>> {
        decode(self.remote.call(self.id, Op::Keys)?)
    }

    /// A copy of the whole dict (Python's `dict(d)` / `d.copy()`).
    pub fn to_map(&self) -> Result<BTreeMap<String, V>> {
        decode(self.remote.call(self.id, Op::Items)?)
    }

    /// `d.update(entries)`, in one round trip.
    pub fn update<K: Into<String>>(&self, entries: impl IntoIterator<Item = (K, V)>) -> Result<()> {
        let entries = entries
            .into_iter()
            .map(|(k, v)| Ok((k.into(), encode(&v)?)))
            .collect::<Result<Vec<_>>>()?;
        self.remote.call(self.id, Op::Update { entries })?;
        Ok(())
    }

    /// `d.clear()`.
    pub fn clear(&self) -> Result<()> {
        self.remote.call(self.id, Op::Clear)?;
        Ok(())
    }
}

/// A shared list of `T`: the proxy Python's `Manager().list()` returns.
/// Indices may be negative (from the end), as in Python.
///
/// # Errors
/// As [`DictProxy`].
pub struct ListProxy<T> {
    remote: Arc<Remote>,
    id: u64,
    _t: PhantomData<fn() -> T>,
}
proxy_common!(ListProxy);

impl<T: Serialize + DeserializeOwned> ListProxy<T> {
    /// `l.append(value)`.
    pub fn append(&self, value: &T) -> Result<()> {
        self.remote.call(
            self.id,
            Op::Append {
                value: encode(value)?,
            },
        )?;
        Ok(())
    }

    /// `l.extend(values)`, in one round trip.
    pub fn extend(&self, values: impl IntoIterator<Item = T>) -> Result<()> {
        let values = values
            .into_iter()
            .map(|v| encode(&v))
            .collect::<Result<Vec<_>>>()?;
        self.remote.call(self.id, Op::Extend { values })?;
        Ok(())
    }

    /// `l[index]`, or `None` when out of range.
    pub fn get(&self, index: i64) -> Result<Option<T>> {
        decode_opt(self.remote.call(self.id, Op::Index { index })?)
    }

    /// `l[index] = value`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when out of range (Python's `IndexError`).
    pub fn set(&self, index: i64, value: &T) -> Result<()> {
        let value = encode(value)?;
        self.remote.call(self.id, Op::SetIndex { index, value })?;
        Ok(())
    }

    /// `l.pop()`: removes and returns the last item, `None` when empty.
    pub fn pop(&self) -> Result<Option<T>> {
        decode_opt(self.remote.call(self.id, Op::Pop { index: None })?)
    }

    /// `len(l)`.
    pub fn len(&self) -> Result<usize> {
        len_of(self.remote.call(self.id, Op::Len)?)
    }

    /// `len(l) == 0`.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// A copy of the whole list (Python's `list(l)`).
    pub fn to_vec(&self) -> Result<Vec<T>> {
        decode(self.remote.call(self.id, Op::Items)?)
    }

    /// `l.clear()`.
    pub fn clear(&self) -> Result<()> {
        self.remote.call(self.id, Op::Clear)?;
        Ok(())
    }
}

/// A single shared value: Python's `Manager().Value(typecode, value)`.
///
/// # Errors
/// As [`DictProxy`].
pub struct ValueProxy<T> {
    remote: Arc<Remote>,
    id: u64,
    _t: PhantomData<fn() -> T>,
}
proxy_common!(ValueProxy);

impl<T: Serialize + DeserializeOwned> ValueProxy<T> {
    /// `v.value`.
    pub fn get(&self) -> Result<T> {
        decode(self.remote.call(self.id, Op::Load)?)
    }

    /// `v.value = value`.
    pub fn set(&self, value: &T) -> Result<()> {
        self.remote.call(
            self.id,
            Op::Store {
                value: encode(value)?,
            },
        )?;
        Ok(())
    }
}

/// A shared FIFO queue of `T`: Python's `Manager().Queue(maxsize)`.
///
/// # Errors
/// As [`DictProxy`], plus those listed per method.
pub struct QueueProxy<T> {
    remote: Arc<Remote>,
    id: u64,
    _t: PhantomData<fn() -> T>,
}
proxy_common!(QueueProxy);

fn millis(d: Duration) -> u64 {
    d.as_millis().min(u64::MAX as u128) as u64
}

impl<T: Serialize + DeserializeOwned> QueueProxy<T> {
    /// Adds an item, waiting while the queue is full.
    pub fn put(&self, item: &T) -> Result<()> {
        let value = encode(item)?;
        self.remote.call(
            self.id,
            Op::Put {
                value,
                timeout_ms: None,
            },
        )?;
        Ok(())
    }

    /// Adds an item, waiting at most `timeout` for room.
    ///
    /// # Errors
    /// [`Error::Full`] if there is still no room at the deadline.
    pub fn put_timeout(&self, item: &T, timeout: Duration) -> Result<()> {
        let value = encode(item)?;
        let timeout_ms = Some(millis(timeout));
        self.remote.call(self.id, Op::Put { value, timeout_ms })?;
        Ok(())
    }

    /// Removes the oldest item, waiting while the queue is empty.
    pub fn get(&self) -> Result<T> {
        decode(self.remote.call(self.id, Op::Take { timeout_ms: None })?)
    }

    /// Removes the oldest item, waiting at most `timeout`.
    ///
    /// # Errors
    /// [`Error::Empty`] if nothing arrived by the deadline.
    pub fn get_timeout(&self, timeout: Duration) -> Result<T> {
        let timeout_ms = Some(millis(timeout));
        decode(self.remote.call(self.id, Op::Take { timeout_ms })?)
    }

    /// Removes the oldest item without waiting.
    ///
    /// # Errors
    /// [`Error::Empty`] if the queue is empty.
    pub fn get_nowait(&self) -> Result<T> {
        self.get_timeout(Duration::ZERO)
    }

    /// Number of items queued now.
    pub fn qsize(&self) -> Result<usize> {
        len_of(self.remote.call(self.id, Op::Len)?)
    }
}

/// A shared lock: Python's `Manager().Lock()`.
///
/// As in Python, any holder of a proxy may release it. If the connection
/// that acquired it closes (its process died, or every clone of the proxy
/// family was dropped in that process), the manager releases it.
#[derive(Clone)]
pub struct LockProxy {
    remote: Arc<Remote>,
    id: u64,
}

impl fmt::Debug for LockProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockProxy").field("id", &self.id).finish()
    }
}

/// Releases a [`LockProxy`] when dropped.
#[derive(Debug)]
pub struct LockProxyGuard<'a> {
    lock: &'a LockProxy,
}

impl Drop for LockProxyGuard<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.lock.release() {
            tracing::warn!(error = %e, "manager lock release failed");
        }
    }
}

impl LockProxy {
    pub(crate) fn new(remote: Arc<Remote>, id: u64) -> Self {
        LockProxy { remote, id }
    }

    /// Blocks until the lock is acquired.
    ///
    /// # Errors
    /// [`Error::Io`]/[`Error::Eof`] if the manager is unreachable.
    pub fn acquire(&self) -> Result<()> {
        self.remote
            .call(self.id, Op::Acquire { timeout_ms: None })?;
        Ok(())
    }

    /// Waits at most `timeout`; returns whether the lock was acquired.
    ///
    /// # Errors
    /// As [`acquire`](Self::acquire).
    pub fn acquire_timeout(&self, timeout: Duration) -> Result<bool> {
        let timeout_ms = Some(millis(timeout));
        let v = self.remote.call(self.id, Op::Acquire { timeout_ms })?;
        Ok(v.as_bool().unwrap_or(false))
    }

    /// Acquires and returns a guard that releases on drop (Python's
    /// `with lock:`).
    ///
    /// # Errors
    /// As [`acquire`](Self::acquire).
    pub fn lock(&self) -> Result<LockProxyGuard<'_>> {
        self.acquire()?;
        Ok(LockProxyGuard { lock: self })
    }

    /// Releases the lock.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if it was not held (Python's
    /// `RuntimeError`).
    pub fn release(&self) -> Result<()> {
        self.remote.call(self.id, Op::Release)?;
        Ok(())
    }
}

/// A shared namespace of named attributes of any serde type: Python's
/// `Manager().Namespace()`.
#[derive(Clone)]
pub struct NamespaceProxy {
    remote: Arc<Remote>,
    id: u64,
}

impl fmt::Debug for NamespaceProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NamespaceProxy")
            .field("id", &self.id)
            .finish()
    }
}

impl NamespaceProxy {
    pub(crate) fn new(remote: Arc<Remote>, id: u64) -> Self {
        NamespaceProxy { remote, id }
    }

    /// `ns.name = value`.
    ///
    /// # Errors
    /// As [`DictProxy`].
    pub fn set<T: Serialize>(&self, name: &str, value: &T) -> Result<()> {
        let value = encode(value)?;
        self.remote.call(
            self.id,
            Op::Set {
                key: name.into(),
                value,
            },
        )?;
        Ok(())
    }

    /// `getattr(ns, name, None)`, decoded as `T`.
    ///
    /// # Errors
    /// As [`DictProxy`].
    pub fn get<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>> {
        decode_opt(self.remote.call(self.id, Op::Get { key: name.into() })?)
    }

    /// Every attribute, as JSON values.
    ///
    /// # Errors
    /// As [`DictProxy`].
    pub fn to_map(&self) -> Result<BTreeMap<String, Value>> {
        decode(self.remote.call(self.id, Op::Items)?)
    }
}
