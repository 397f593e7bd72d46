//! `Queue<T>`: a multi-producer, multi-consumer message queue between
//! processes, Python's `multiprocessing.Queue`.
//!
//! # Design
//!
//! The queue is a ring buffer of length-prefixed records (`u32` length,
//! then the `postcard` encoding of the message) in one anonymous
//! `MAP_SHARED` region created before `fork`. A robust, process-shared
//! mutex guards it, and two futex condition variables ("not empty", "not
//! full") put blocked callers to sleep (see `raw.rs`).
//!
//! - **No feeder thread.** Python's `Queue.put` hands the object to a
//!   background thread that writes it to a pipe later, so a process that
//!   exits right after `put` can lose the message (or hang at exit). Here
//!   `put` returns only once the encoded message is in shared memory: a
//!   producer may `_exit` the next instant and the message stays.
//! - **Never torn, duplicated or lost.** Positions are monotonically
//!   increasing byte offsets `head`/`tail`. `put` copies the record in and
//!   *then* publishes it with one store to `tail`; `get` copies it out and
//!   *then* consumes it with one store to `head`. A process killed part-way
//!   leaves either the whole record or none of it; the next locker gets
//!   `EOWNERDEAD`, recounts the records between `head` and `tail`, and
//!   carries on. A consumer killed while *blocked* in `get` holds nothing:
//!   the kernel removes it from the futex queue, and every wake-up is a
//!   broadcast, so no wake-up can be spent on a dead process.
//!
//! - **Messages of any size.** A message whose record (4 + encoded bytes)
//!   is larger than the whole ring goes through a side channel instead: its
//!   bytes in a `memfd`, the descriptor in flight in a datagram socketpair
//!   the queue shares, and a 20-byte *spill record* in the ring in its
//!   place, so it keeps its place in the order and survives its producer
//!   as soon as `put` returns (see `spill.rs`).
//!
//! # Limits
//!
//! - Capacity is in bytes (default 1 MiB, set with
//!   [`QueueBuilder::capacity_bytes`]) as well as, optionally, in messages
//!   ([`QueueBuilder::maxsize`]). Large messages take 20 bytes of the ring
//!   each; how many can be pending at once is also bounded by the side
//!   channel's socket buffer (a few hundred), beyond which `put` waits as
//!   for a full ring. A ring under 20 bytes cannot hold a spill record:
//!   there a message larger than the ring fails with
//!   [`Error::MessageTooLarge`].
//! - A consumer killed *after* `get` took a message from the ring (but
//!   before it used it) loses that message, as with any queue.
//! - Both sides must agree on `T`: the encoding carries no type tag. A
//!   record that does not decode as `T` is consumed and reported as
//!   [`Error::Codec`].

use std::fmt;
use std::marker::PhantomData;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::process::raw::{deadline, Held, RawCondvar, RawMutex};
use crate::process::shared::Shm;
use crate::process::spill::Spill;
use crate::{Error, Result};

/// Bytes of the length prefix in front of every record.
const PREFIX: u64 = 4;

/// Set in a record's length prefix when the record is a spill record (the
/// message itself went through the side channel). Inline records are
/// always shorter than this.
const SPILLED: u32 = 1 << 31;

/// Body of a spill record: sequence number and message length, both `u64`.
const SPILL_BODY: u64 = 16;

/// Default ring size in bytes.
pub const DEFAULT_CAPACITY: usize = 1 << 20;

#[repr(C)]
struct QueueShm {
    mutex: RawMutex,
    not_empty: RawCondvar,
    not_full: RawCondvar,
    /// Byte position of the oldest record (grows for ever; index mod cap).
    head: AtomicU64,
    /// Byte position just past the newest record.
    tail: AtomicU64,
    /// Records between head and tail.
    count: AtomicU64,
    /// Most messages allowed at once; 0 means no limit.
    maxsize: u64,
    /// Ring size in bytes.
    capacity: u64,
    /// Sequence number of the next large message sent through the side
    /// channel.
    next_seq: AtomicU64,
}

/// Configures a [`Queue`] before it is created (Python's `Queue(maxsize)`
/// plus a byte capacity).
///
/// ```
/// use socketserver::process::Queue;
///
/// let q: Queue<String> = Queue::builder().maxsize(2).capacity_bytes(64 * 1024).build()?;
/// q.put(&"a".to_string())?;
/// q.put(&"b".to_string())?;
/// assert!(q.full()?);
/// // A third message would exceed maxsize: `put_nowait` refuses at once.
/// assert!(q.put_nowait(&"c".to_string()).is_err());
/// assert_eq!(q.get()?, "a");
/// assert_eq!(q.maxsize(), Some(2));
/// # Ok::<(), socketserver::Error>(())
/// ```
pub struct QueueBuilder<T> {
    maxsize: usize,
    capacity: usize,
    _t: PhantomData<fn(T) -> T>,
}

impl<T> Default for QueueBuilder<T> {
    fn default() -> Self {
        QueueBuilder {
            maxsize: 0,
            capacity: DEFAULT_CAPACITY,
            _t: PhantomData,
        }
    }
}

impl<T> Clone for QueueBuilder<T> {
    fn clone(&self) -> Self {
        QueueBuilder {
            maxsize: self.maxsize,
            capacity: self.capacity,
            _t: PhantomData,
        }
    }
}

impl<T> fmt::Debug for QueueBuilder<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueBuilder")
            .field("maxsize", &self.maxsize)
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl<T: Serialize + DeserializeOwned> QueueBuilder<T> {
    /// Most messages the queue holds at once; `put` blocks beyond it.
    /// Default is 0: no limit other than the byte capacity.
    pub fn maxsize(&mut self, maxsize: usize) -> &mut Self {
        self.maxsize = maxsize;
        self
    }

    /// Size of the shared ring in bytes; each message takes 4 bytes plus
    /// its encoding. Default is [`DEFAULT_CAPACITY`] (1 MiB).
    pub fn capacity_bytes(&mut self, bytes: usize) -> &mut Self {
        self.capacity = bytes;
        self
    }

    /// Maps the shared region and returns the queue.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a capacity under 8 bytes;
    /// [`Error::Io`] if the region cannot be mapped.
    pub fn build(&self) -> Result<Queue<T>> {
        if self.capacity < 8 {
            return Err(Error::InvalidArgument(format!(
                "queue capacity of {} bytes is too small (minimum 8)",
                self.capacity
            )));
        }
        let (maxsize, capacity) = (self.maxsize as u64, self.capacity as u64);
        let shm = Shm::<QueueShm>::new(self.capacity, 64, |h| {
            // SAFETY: fresh, aligned, unshared memory.
            unsafe {
                RawMutex::init(&raw mut (*h).mutex)?;
                (*h).maxsize = maxsize;
                (*h).capacity = capacity;
            }
            Ok(())
        })?;
        Ok(Queue {
            shm,
            spill: Arc::new(Spill::new()?),
            _t: PhantomData,
        })
    }
}

/// A process-shared FIFO of `T`s (see the module docs for the design):
/// Python's `multiprocessing.Queue`, and its `SimpleQueue` too (there is
/// no feeder thread to leave out). `JoinableQueue` is not provided.
///
/// Create it before forking; clones and forked copies are the same queue.
///
/// ```
/// use socketserver::process::{Process, Queue};
///
/// let q: Queue<(u32, String)> = Queue::with_maxsize(100)?;
/// let tx = q.clone();
/// let mut child = Process::new(move || {
///     tx.put(&(1, "from the child".to_string())).unwrap();
/// });
/// child.start()?;
/// let (n, text) = q.get()?; // delivered even though the child has exited
/// assert_eq!((n, text.as_str()), (1, "from the child"));
/// child.join()?;
/// # Ok::<(), socketserver::Error>(())
/// ```
#[doc(alias = "SimpleQueue")]
pub struct Queue<T> {
    shm: Shm<QueueShm>,
    spill: Arc<Spill>,
    _t: PhantomData<fn(T) -> T>,
}

impl<T> Clone for Queue<T> {
    fn clone(&self) -> Self {
        Queue {
            shm: self.shm.clone(),
            spill: self.spill.clone(),
            _t: PhantomData,
        }
    }
}

impl<T> fmt::Debug for Queue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let h = self.shm.header();
        f.debug_struct("Queue")
            .field("qsize", &h.count.load(Ordering::Relaxed))
            .field("maxsize", &h.maxsize)
            .field("capacity", &h.capacity)
            .finish()
    }
}

impl<T: Serialize + DeserializeOwned> Queue<T> {
    /// A queue with no message limit and a 1 MiB ring.
    ///
    /// # Errors
    /// [`Error::Io`] if the region cannot be mapped.
    pub fn new() -> Result<Queue<T>> {
        QueueBuilder::default().build()
    }

    /// A queue holding at most `maxsize` messages (0: no limit), 1 MiB ring.
    ///
    /// # Errors
    /// As [`Queue::new`].
    pub fn with_maxsize(maxsize: usize) -> Result<Queue<T>> {
        QueueBuilder::default().maxsize(maxsize).build()
    }

    /// A builder for the message limit and the ring size.
    pub fn builder() -> QueueBuilder<T> {
        QueueBuilder::default()
    }

    /// Puts `item`, waiting as long as it takes for room. Returns once the
    /// message is in shared memory (or, for a message larger than the
    /// ring, in flight in the side channel): the caller may exit at once.
    ///
    /// # Errors
    /// [`Error::MessageTooLarge`] only for a ring under 20 bytes that the
    /// message does not fit; [`Error::Codec`]
    /// if it cannot be encoded; [`Error::Io`] if locking fails.
    pub fn put(&self, item: &T) -> Result<()> {
        self.put_inner(item, None)
    }

    /// Puts `item`, waiting at most `timeout` for room.
    ///
    /// # Errors
    /// [`Error::Full`] if there was still no room after `timeout`;
    /// otherwise as [`Queue::put`].
    pub fn put_timeout(&self, item: &T, timeout: Duration) -> Result<()> {
        self.put_inner(item, Some(timeout))
    }

    /// Puts `item` only if there is room now.
    ///
    /// # Errors
    /// [`Error::Full`] if there is not; otherwise as [`Queue::put`].
    pub fn put_nowait(&self, item: &T) -> Result<()> {
        self.put_inner(item, Some(Duration::ZERO))
    }

    /// Takes the oldest message, waiting as long as it takes.
    ///
    /// # Errors
    /// [`Error::Codec`] if the record does not decode as `T` (it is
    /// consumed); [`Error::Io`] if locking fails.
    pub fn get(&self) -> Result<T> {
        self.get_inner(None)
    }

    /// Takes the oldest message, waiting at most `timeout`.
    ///
    /// # Errors
    /// [`Error::Empty`] if nothing came within `timeout`; otherwise as
    /// [`Queue::get`].
    pub fn get_timeout(&self, timeout: Duration) -> Result<T> {
        self.get_inner(Some(timeout))
    }

    /// Takes the oldest message if there is one now.
    ///
    /// # Errors
    /// [`Error::Empty`] if there is none; otherwise as [`Queue::get`].
    pub fn get_nowait(&self) -> Result<T> {
        self.get_inner(Some(Duration::ZERO))
    }

    fn put_inner(&self, item: &T, timeout: Option<Duration>) -> Result<()> {
        let body = postcard::to_allocvec(item)?;
        let h = self.shm.header();
        let need = PREFIX + body.len() as u64;
        if body.len() < SPILLED as usize && need <= h.capacity {
            return self.put_record(need, timeout, |tail| {
                self.copy_in(tail, &(body.len() as u32).to_le_bytes());
                self.copy_in(tail + PREFIX, &body);
                Ok(true)
            });
        }
        if PREFIX + SPILL_BODY > h.capacity {
            return Err(Error::MessageTooLarge {
                len: body.len(),
                max: (h.capacity - PREFIX) as usize,
            });
        }
        // Too large for the ring: the bytes go to a memfd (outside the
        // lock), the ring gets a spill record naming it.
        let len = body.len() as u64;
        let memfd = Spill::stash(&body)?;
        drop(body);
        self.put_record(PREFIX + SPILL_BODY, timeout, |tail| {
            let seq = h.next_seq.load(Ordering::Relaxed);
            // Taken before sending: a producer that dies after `sendmsg`
            // leaves a stray that no later record can be confused with.
            h.next_seq.store(seq + 1, Ordering::Relaxed);
            if !self.spill.send(seq, memfd.as_fd())? {
                return Ok(false);
            }
            self.copy_in(tail, &(SPILLED | SPILL_BODY as u32).to_le_bytes());
            self.copy_in(tail + PREFIX, &seq.to_le_bytes());
            self.copy_in(tail + PREFIX + 8, &len.to_le_bytes());
            Ok(true)
        })
    }

    /// Appends one record of `need` bytes, written by `write` at ring
    /// position `tail` (which returns `false` if the side channel had no
    /// room: then we wait as for a full ring).
    fn put_record(
        &self,
        need: u64,
        timeout: Option<Duration>,
        mut write: impl FnMut(u64) -> Result<bool>,
    ) -> Result<()> {
        let h = self.shm.header();
        let end = deadline(timeout);
        let mut held = self.lock()?;
        let mut spun = false;
        loop {
            if self.fits(need) {
                let tail = h.tail.load(Ordering::Relaxed);
                if write(tail)? {
                    // The commit point: the record exists from this store on.
                    h.tail.store(tail + need, Ordering::Relaxed);
                    h.count.fetch_add(1, Ordering::Relaxed);
                    h.not_empty.notify_all();
                    return Ok(());
                }
                // The side channel is full: consumers make room there as
                // they take records, and notify `not_full`.
                if timeout.is_some_and(|t| t.is_zero()) || self.wait(&mut held, &h.not_full, end)? {
                    return Err(Error::Full);
                }
                continue;
            }
            if timeout.is_some_and(|t| t.is_zero()) {
                return Err(Error::Full);
            }
            if !spun {
                spun = true;
                self.spin(&mut held, end, || self.fits(need))?;
                continue;
            }
            if self.wait(&mut held, &h.not_full, end)? {
                if self.fits(need) {
                    continue;
                }
                return Err(Error::Full);
            }
        }
    }

    fn get_inner(&self, timeout: Option<Duration>) -> Result<T> {
        let h = self.shm.header();
        let end = deadline(timeout);
        let mut held = self.lock()?;
        let mut spun = false;
        let (body, spilled) = loop {
            let (head, tail) = (
                h.head.load(Ordering::Relaxed),
                h.tail.load(Ordering::Relaxed),
            );
            if head != tail {
                let mut len = [0u8; 4];
                self.copy_out(head, &mut len);
                let (len, spilled) = record_len(u32::from_le_bytes(len));
                if head + PREFIX + len > tail {
                    // Only reachable if the ring was scribbled on.
                    self.repair();
                    continue;
                }
                let mut body = vec![0u8; len as usize];
                self.copy_out(head + PREFIX, &mut body);
                // The commit point: the record is gone from this store on.
                h.head.store(head + PREFIX + len, Ordering::Relaxed);
                h.count.fetch_sub(1, Ordering::Relaxed);
                h.not_full.notify_all();
                if !spilled {
                    break (body, None);
                }
                // Take the matching descriptor while we still hold the
                // lock, so consumers take them in ring order.
                let (seq, big) = spill_record(&body)?;
                break (body, Some((self.spill.take(seq), big)));
            }
            if timeout.is_some_and(|t| t.is_zero()) {
                return Err(Error::Empty);
            }
            if !spun {
                spun = true;
                let nonempty = || h.head.load(Ordering::Relaxed) != h.tail.load(Ordering::Relaxed);
                self.spin(&mut held, end, nonempty)?;
                continue;
            }
            if self.wait(&mut held, &h.not_empty, end)? {
                if h.head.load(Ordering::Relaxed) != h.tail.load(Ordering::Relaxed) {
                    continue;
                }
                return Err(Error::Empty);
            }
        };
        drop(held);
        let body = match spilled {
            None => body,
            Some((memfd, len)) => Spill::read(memfd?, len)?,
        };
        Ok(postcard::from_bytes(&body)?)
    }

    /// Number of messages in the queue now (Python's `qsize()`); stale as
    /// soon as it returns if others are busy.
    ///
    /// # Errors
    /// [`Error::Io`] if locking fails.
    pub fn qsize(&self) -> Result<usize> {
        let _held = self.lock()?;
        Ok(self.shm.header().count.load(Ordering::Relaxed) as usize)
    }

    /// Whether the queue holds no message now.
    ///
    /// # Errors
    /// [`Error::Io`] if locking fails.
    pub fn empty(&self) -> Result<bool> {
        Ok(self.qsize()? == 0)
    }

    /// Whether `maxsize` messages are queued, or the ring has no room for
    /// even a one-byte message.
    ///
    /// # Errors
    /// [`Error::Io`] if locking fails.
    pub fn full(&self) -> Result<bool> {
        let _held = self.lock()?;
        Ok(!self.fits(PREFIX + 1))
    }
}

impl<T> Queue<T> {
    /// The message limit, `None` when only the byte capacity limits it.
    pub fn maxsize(&self) -> Option<usize> {
        match self.shm.header().maxsize {
            0 => None,
            n => Some(n as usize),
        }
    }

    /// Size of the shared ring in bytes.
    pub fn capacity_bytes(&self) -> usize {
        self.shm.header().capacity as usize
    }

    fn data(&self) -> *mut u8 {
        self.shm.tail_ptr(64)
    }

    /// Locks, repairing the bookkeeping if a process died holding the lock.
    fn lock(&self) -> Result<Held<'_>> {
        let mut held = self.shm.header().mutex.hold()?;
        if held.owner_died {
            self.repair();
            held.owner_died = false;
        }
        Ok(held)
    }

    fn wait(
        &self,
        held: &mut Held<'_>,
        cv: &RawCondvar,
        end: Option<std::time::Instant>,
    ) -> Result<bool> {
        let timed_out = held.wait(cv, end)?;
        if held.owner_died {
            self.repair();
            held.owner_died = false;
        }
        Ok(timed_out)
    }

    fn spin(
        &self,
        held: &mut Held<'_>,
        end: Option<std::time::Instant>,
        ready: impl Fn() -> bool,
    ) -> Result<()> {
        held.spin_until(end, ready)?;
        if held.owner_died {
            self.repair();
            held.owner_died = false;
        }
        Ok(())
    }

    /// Whether a record of `need` bytes can be appended now. Exact under
    /// the lock; without it (the spin hint) the reads may be from different
    /// moments, hence the saturating arithmetic.
    fn fits(&self, need: u64) -> bool {
        let h = self.shm.header();
        let head = h.head.load(Ordering::Relaxed);
        let used = h.tail.load(Ordering::Relaxed).saturating_sub(head);
        let count_ok = h.maxsize == 0 || h.count.load(Ordering::Relaxed) < h.maxsize;
        count_ok && h.capacity.saturating_sub(used) >= need
    }

    /// After a holder died: `head` and `tail` were each written in one
    /// store, so only `count` can be stale. Recount the records, and if a
    /// length prefix ever points past `tail` (impossible unless memory was
    /// scribbled on), drop the unreadable rest rather than read garbage.
    fn repair(&self) {
        let h = self.shm.header();
        let (head, tail) = (
            h.head.load(Ordering::Relaxed),
            h.tail.load(Ordering::Relaxed),
        );
        let mut pos = head;
        let mut n = 0;
        while pos < tail {
            let mut len = [0u8; 4];
            self.copy_out(pos, &mut len);
            let next = pos + PREFIX + record_len(u32::from_le_bytes(len)).0;
            if next > tail {
                tracing::warn!(
                    "shared queue: corrupt record at {pos}; dropping {} bytes",
                    tail - pos
                );
                h.tail.store(pos, Ordering::Relaxed);
                break;
            }
            pos = next;
            n += 1;
        }
        h.count.store(n, Ordering::Relaxed);
        // Whatever the dead process meant to notify, wake everyone to look.
        h.not_empty.notify_all();
        h.not_full.notify_all();
    }

    /// Copies `src` into the ring at byte position `pos`, wrapping around
    /// (lock held, room checked).
    fn copy_in(&self, pos: u64, src: &[u8]) {
        let cap = self.shm.header().capacity;
        let start = (pos % cap) as usize;
        let first = src.len().min(cap as usize - start);
        // SAFETY: both ranges lie inside the ring (`start + first <= cap`,
        // and the rest wraps to offset 0 with `src.len() <= cap`); we hold
        // the lock, so no one else touches these unpublished bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(src.as_ptr(), self.data().add(start), first);
            std::ptr::copy_nonoverlapping(src.as_ptr().add(first), self.data(), src.len() - first);
        }
    }

    /// Copies bytes at ring position `pos` into `dst`, wrapping around.
    fn copy_out(&self, pos: u64, dst: &mut [u8]) {
        let cap = self.shm.header().capacity;
        let start = (pos % cap) as usize;
        let first = dst.len().min(cap as usize - start);
        // SAFETY: as in `copy_in`; the bytes are published records that no
        // one writes while we hold the lock.
        unsafe {
            std::ptr::copy_nonoverlapping(self.data().add(start), dst.as_mut_ptr(), first);
            std::ptr::copy_nonoverlapping(
                self.data(),
                dst.as_mut_ptr().add(first),
                dst.len() - first,
            );
        }
    }
}

/// A record's body length and whether it is a spill record.
fn record_len(prefix: u32) -> (u64, bool) {
    (u64::from(prefix & !SPILLED), prefix & SPILLED != 0)
}

/// Parses a spill record's body: sequence number and message length.
fn spill_record(body: &[u8]) -> Result<(u64, u64)> {
    match (body.get(..8), body.get(8..16)) {
        (Some(seq), Some(len)) if body.len() == SPILL_BODY as usize => Ok((
            u64::from_le_bytes(seq.try_into().unwrap_or_default()),
            u64::from_le_bytes(len.try_into().unwrap_or_default()),
        )),
        _ => Err(Error::Codec(format!(
            "queue: spill record of {} bytes",
            body.len()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::{fork_child, Event, ForkOptions};
    use nix::sys::signal::Signal;

    /// A producer killed inside `put`, between publishing `tail` and
    /// bumping `count`, and in the middle of copying a second record: the
    /// next user recovers the lock, recounts, sees exactly the published
    /// record and none of the half-written one.
    #[test]
    fn killed_inside_put_is_repaired() {
        let q: Queue<String> = Queue::builder().capacity_bytes(256).build().unwrap();
        let inside = Event::new().unwrap();
        let mut child = fork_child(&ForkOptions::new(), || {
            let h = q.shm.header();
            let held = q.lock().unwrap();
            let body = postcard::to_allocvec(&"published".to_string()).unwrap();
            let tail = h.tail.load(Ordering::Relaxed);
            q.copy_in(tail, &(body.len() as u32).to_le_bytes());
            q.copy_in(tail + PREFIX, &body);
            h.tail
                .store(tail + PREFIX + body.len() as u64, Ordering::Relaxed);
            // Killed before `count` is bumped, and with a second record
            // copied in but never published.
            let tail = h.tail.load(Ordering::Relaxed);
            q.copy_in(tail, &100u32.to_le_bytes());
            q.copy_in(tail + PREFIX, b"torn");
            inside.set().unwrap();
            std::thread::sleep(Duration::from_secs(60));
            drop(held);
            0
        })
        .unwrap();
        assert!(inside.wait(Some(Duration::from_secs(20))).unwrap());
        child.signal(Signal::SIGKILL).unwrap();
        assert_eq!(child.wait().unwrap(), -9);
        assert_eq!(q.qsize().unwrap(), 1, "count repaired from head/tail");
        assert_eq!(q.get_nowait().unwrap(), "published");
        assert!(matches!(q.get_nowait(), Err(Error::Empty)));
        q.put_nowait(&"after".to_string()).unwrap();
        assert_eq!(q.get_nowait().unwrap(), "after");
    }

    /// A producer of a large message killed after sending its descriptor
    /// but before publishing its record: the stray is skipped, the next
    /// large message arrives whole and in order.
    #[test]
    fn killed_between_send_and_publish_leaves_no_trace() {
        let q: Queue<Vec<u8>> = Queue::builder().capacity_bytes(256).build().unwrap();
        q.put(&vec![1u8; 10]).unwrap();
        let inside = Event::new().unwrap();
        let mut child = fork_child(&ForkOptions::new(), || {
            let h = q.shm.header();
            let held = q.lock().unwrap();
            let seq = h.next_seq.load(Ordering::Relaxed);
            h.next_seq.store(seq + 1, Ordering::Relaxed);
            let body = postcard::to_allocvec(&vec![9u8; 1000]).unwrap();
            let memfd = Spill::stash(&body).unwrap();
            assert!(q.spill.send(seq, memfd.as_fd()).unwrap());
            inside.set().unwrap();
            std::thread::sleep(Duration::from_secs(60));
            drop(held);
            0
        })
        .unwrap();
        assert!(inside.wait(Some(Duration::from_secs(20))).unwrap());
        child.signal(Signal::SIGKILL).unwrap();
        assert_eq!(child.wait().unwrap(), -9);
        q.put(&vec![2u8; 1000]).unwrap();
        assert_eq!(q.qsize().unwrap(), 2);
        assert_eq!(q.get_nowait().unwrap(), vec![1u8; 10]);
        assert_eq!(q.get_nowait().unwrap(), vec![2u8; 1000]);
        assert!(matches!(q.get_nowait(), Err(Error::Empty)));
    }
}
