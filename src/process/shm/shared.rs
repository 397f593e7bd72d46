//! Shared memory: an anonymous `MAP_SHARED` region, and Python's
//! `multiprocessing.Value` / `Array` on top of it.
//!
//! A region is mapped *before* `fork` and every child inherits the same
//! physical pages, so a write in one process is seen by all. Handles are
//! reference counted per process: cloning one is cheap, and the mapping is
//! removed when the last handle *in that process* is dropped (other
//! processes keep theirs). Nothing is named or left behind on disk.
//!
//! Only plain data ([`SharedData`]) may live there: a pointer, `Box` or
//! `String` copied into shared memory would point into one process's private
//! heap and mean garbage (or worse) in another.

use std::fmt;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;
use std::sync::Arc;

use crate::process::raw::{Acquired, RawMutex};
use crate::process::sync::{LockError, LockResult};
use crate::{Error, Result};

/// An anonymous, shared (`MAP_SHARED | MAP_ANONYMOUS`) memory mapping,
/// zero-filled, inherited by children forked after it was created.
///
/// The primitives in this module are built on it; use it directly only
/// when you need raw shared bytes ([`SharedMemory::as_ptr`]).
pub struct SharedMemory {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this handle; access to its
// contents goes through raw pointers whose users synchronise themselves.
unsafe impl Send for SharedMemory {}
// SAFETY: as above; `&SharedMemory` only hands out the pointer and length.
unsafe impl Sync for SharedMemory {}

impl SharedMemory {
    /// Maps `len` zeroed bytes of shared memory (rounded up to whole pages
    /// by the kernel).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if `len` is zero; [`Error::Io`] if `mmap`
    /// fails (for example `ENOMEM`).
    pub fn new(len: usize) -> Result<SharedMemory> {
        if len == 0 {
            return Err(Error::InvalidArgument(
                "shared memory length must be > 0".into(),
            ));
        }
        // SAFETY: an anonymous mapping with a null hint touches no existing
        // memory; the result is checked against MAP_FAILED.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(Error::Io(std::io::Error::last_os_error()));
        }
        let ptr = NonNull::new(p.cast::<u8>())
            .ok_or_else(|| Error::Io(std::io::Error::other("mmap returned null")))?;
        Ok(SharedMemory { ptr, len })
    }

    /// The start of the mapping (page aligned). Dereferencing it is up to
    /// the caller: other processes may write concurrently.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// The length asked for in [`SharedMemory::new`].
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always `false`: a zero-length region cannot be created.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for SharedMemory {
    fn drop(&mut self) {
        // SAFETY: we own this mapping and nothing in this process refers
        // to it any more (every typed handle holds an `Arc` to us).
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

impl fmt::Debug for SharedMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedMemory")
            .field("ptr", &self.ptr)
            .field("len", &self.len)
            .finish()
    }
}

/// A typed view of a shared region: a header `H` at offset 0, optionally
/// followed by a trailing area of bytes or elements.
///
/// `Shm` is `Send + Sync` whatever `H` is (`PhantomData<fn() -> H>`): every
/// header type in this crate is made of atomics and lock-protected cells,
/// because other *processes* share it anyway.
pub(crate) struct Shm<H> {
    mem: Arc<SharedMemory>,
    _h: PhantomData<fn() -> H>,
}

impl<H> Clone for Shm<H> {
    fn clone(&self) -> Self {
        Shm {
            mem: Arc::clone(&self.mem),
            _h: PhantomData,
        }
    }
}

/// Where the trailing area starts: after the header, cache-line aligned.
pub(crate) const fn tail_offset<H>(align: usize) -> usize {
    let a = if align > 64 { align } else { 64 };
    std::mem::size_of::<H>().div_ceil(a) * a
}

impl<H> Shm<H> {
    /// Maps a region for `H` plus `tail` trailing bytes (aligned to
    /// `tail_align`) and lets `init` set the header up in place.
    ///
    /// `init` gets zeroed memory that nothing else sees yet.
    pub(crate) fn new(
        tail: usize,
        tail_align: usize,
        init: impl FnOnce(*mut H) -> Result<()>,
    ) -> Result<Self> {
        let len = tail_offset::<H>(tail_align)
            .checked_add(tail)
            .ok_or_else(|| Error::InvalidArgument("shared region too large".into()))?;
        let mem = SharedMemory::new(len)?;
        init(mem.as_ptr().cast::<H>())?;
        Ok(Shm {
            mem: Arc::new(mem),
            _h: PhantomData,
        })
    }

    /// The header. Its fields must be safe to share (atomics, `RawMutex`,
    /// `UnsafeCell` behind a lock).
    pub(crate) fn header(&self) -> &H {
        // SAFETY: the mapping is page aligned and at least size_of::<H>()
        // long, and `init` set the header up before `Shm` existed. It lives
        // as long as `self.mem`, which outlives the returned borrow.
        unsafe { &*self.mem.as_ptr().cast::<H>() }
    }

    /// The start of the trailing area (see [`Shm::new`]).
    pub(crate) fn tail_ptr(&self, tail_align: usize) -> *mut u8 {
        // SAFETY: the offset is within the mapping: `new` sized it as
        // tail_offset + tail.
        unsafe { self.mem.as_ptr().add(tail_offset::<H>(tail_align)) }
    }
}

/// Plain data that may be placed in shared memory and read by another
/// process: no pointers, references, handles or drop glue, and every bit
/// pattern this crate writes is a valid value.
///
/// # Safety
/// Implement only for `Copy` types that contain no pointers (directly or
/// indirectly) and no process-local handles. Implemented for the integer
/// and float types, `bool`, `char` and arrays of these.
pub unsafe trait SharedData: Copy + Send + 'static {}

macro_rules! shared_data {
    ($($t:ty),*) => { $(
        // SAFETY: a primitive without pointers.
        unsafe impl SharedData for $t {}
    )* };
}
shared_data!(u8, u16, u32, u64, u128, usize, i8, i16, i32, i64, i128, isize, f32, f64, bool, char);
// SAFETY: an array of pointer-free values is pointer free.
unsafe impl<T: SharedData, const N: usize> SharedData for [T; N] {}

#[repr(C)]
struct ValueHeader<T> {
    lock: RawMutex,
    value: std::cell::UnsafeCell<T>,
}

/// A `T` in shared memory with its own process-shared, robust lock:
/// Python's `multiprocessing.Value`.
///
/// Create it before forking; clones (and the copies children inherit) all
/// refer to the same value. Read and write it with [`Value::get`] /
/// [`Value::set`], or hold [`Value::lock`] for a read-modify-write such as
/// `*v.lock()? += 1` (Python's `with v.get_lock(): v.value += 1`).
///
/// ```
/// use socketserver::process::{Process, Value};
///
/// let hits = Value::new(0u64)?;
/// let mut kids: Vec<Process> = (0..4)
///     .map(|_| {
///         let hits = hits.clone();
///         Process::new(move || {
///             for _ in 0..100 {
///                 *hits.lock().unwrap() += 1;
///             }
///         })
///     })
///     .collect();
/// for k in &mut kids { k.start()?; }
/// for k in &mut kids { assert_eq!(k.join()?, 0); }
/// assert_eq!(hits.get()?, 400);
/// # Ok::<(), socketserver::Error>(())
/// ```
pub struct Value<T: SharedData> {
    shm: Shm<ValueHeader<T>>,
}

impl<T: SharedData> Clone for Value<T> {
    fn clone(&self) -> Self {
        Value {
            shm: self.shm.clone(),
        }
    }
}

impl<T: SharedData> Value<T> {
    /// Places `value` in a new shared region.
    ///
    /// # Errors
    /// [`Error::Io`] if the region cannot be mapped or its lock initialised.
    pub fn new(value: T) -> Result<Self> {
        let shm = Shm::<ValueHeader<T>>::new(0, 1, |h| {
            // SAFETY: `h` points to fresh, aligned, unshared memory.
            unsafe {
                RawMutex::init(&raw mut (*h).lock)?;
                (*h).value.get().write(value);
            }
            Ok(())
        })?;
        Ok(Value { shm })
    }

    /// Locks the value; the guard derefs to `&mut T` (Python's
    /// `with v.get_lock():`).
    ///
    /// # Errors
    /// [`LockError::OwnerDied`] (carrying the guard) if a process died
    /// while holding the lock: the lock is yours and usable, but the value
    /// may be half written. [`LockError::Other`] if the lock is already held
    /// by this thread (it would deadlock) or the OS fails.
    #[doc(alias = "get_lock")]
    pub fn lock(&self) -> LockResult<ValueGuard<'_, T>> {
        let h = self.shm.header();
        let guard = || ValueGuard {
            value: self,
            _not_send: PhantomData,
        };
        match h.lock.lock() {
            Ok(Acquired::Clean) => Ok(guard()),
            Ok(Acquired::OwnerDied) => Err(LockError::OwnerDied(guard())),
            Err(e) => Err(LockError::Other(e)),
        }
    }

    /// Reads the value under its lock.
    ///
    /// # Errors
    /// [`Error::OwnerDied`] if a process died holding the lock: the lock has
    /// been recovered and released, the read was not done; calling again
    /// succeeds. [`Error::Io`] if locking fails.
    #[doc(alias = "value")]
    pub fn get(&self) -> Result<T> {
        let g = self.lock().map_err(Error::from)?;
        Ok(*g)
    }

    /// Writes the value under its lock.
    ///
    /// # Errors
    /// As [`Value::get`]; on [`Error::OwnerDied`] the write was not done.
    pub fn set(&self, value: T) -> Result<()> {
        let mut g = self.lock().map_err(Error::from)?;
        *g = value;
        Ok(())
    }
}

impl<T: SharedData + fmt::Debug> fmt::Debug for Value<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Value")
            .field("value", &self.get().ok())
            .finish()
    }
}

/// Holds a [`Value`]'s lock; derefs to the value. Unlocks on drop.
pub struct ValueGuard<'a, T: SharedData> {
    value: &'a Value<T>,
    // A pthread mutex must be unlocked by the thread that locked it.
    _not_send: PhantomData<*const ()>,
}

impl<T: SharedData> Deref for ValueGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: we hold the value's lock, so no one else accesses it.
        unsafe { &*self.value.shm.header().value.get() }
    }
}

impl<T: SharedData> DerefMut for ValueGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: we hold the value's lock, so no one else accesses it.
        unsafe { &mut *self.value.shm.header().value.get() }
    }
}

impl<T: SharedData> Drop for ValueGuard<'_, T> {
    fn drop(&mut self) {
        // SAFETY: the guard exists only while this thread holds the lock.
        unsafe { self.value.shm.header().lock.unlock() }
    }
}

impl<T: SharedData + fmt::Debug> fmt::Debug for ValueGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ValueGuard").field(&**self).finish()
    }
}

#[repr(C)]
struct ArrayHeader {
    lock: RawMutex,
    len: usize,
}

/// A fixed-length `[T]` in shared memory with one process-shared, robust
/// lock: Python's `multiprocessing.Array`.
///
/// Create it before forking. Element access ([`Array::get`],
/// [`Array::set`]) takes the lock per call; hold [`Array::lock`] to work on
/// the whole slice at once.
///
/// ```
/// use socketserver::process::{Array, Process};
///
/// let squares = Array::new(8, 0u32)?;
/// let mut p = Process::new({
///     let squares = squares.clone();
///     move || {
///         for i in 0..8 {
///             squares.set(i, (i * i) as u32).unwrap();
///         }
///     }
/// });
/// p.start()?;
/// assert_eq!(p.join()?, 0);
/// assert_eq!(squares.get(7)?, 49);
/// # Ok::<(), socketserver::Error>(())
/// ```
pub struct Array<T: SharedData> {
    shm: Shm<ArrayHeader>,
    _t: PhantomData<T>,
}

impl<T: SharedData> Clone for Array<T> {
    fn clone(&self) -> Self {
        Array {
            shm: self.shm.clone(),
            _t: PhantomData,
        }
    }
}

impl<T: SharedData> Array<T> {
    /// A shared array of `len` copies of `fill`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if `len` is zero or the size overflows;
    /// [`Error::Io`] if mapping fails.
    pub fn new(len: usize, fill: T) -> Result<Self> {
        Self::build(len, |s| s.fill(fill))
    }

    /// A shared array holding a copy of `items`.
    ///
    /// # Errors
    /// As [`Array::new`].
    pub fn from_slice(items: &[T]) -> Result<Self> {
        Self::build(items.len(), |s| s.copy_from_slice(items))
    }

    fn build(len: usize, fill: impl FnOnce(&mut [T])) -> Result<Self> {
        if len == 0 {
            return Err(Error::InvalidArgument(
                "shared array length must be > 0".into(),
            ));
        }
        let bytes = len
            .checked_mul(std::mem::size_of::<T>().max(1))
            .ok_or_else(|| {
                Error::InvalidArgument(format!("array of {len} elements is too large"))
            })?;
        let align = std::mem::align_of::<T>();
        let shm = Shm::<ArrayHeader>::new(bytes, align, |h| {
            // SAFETY: `h` points to fresh, aligned, unshared memory.
            unsafe {
                RawMutex::init(&raw mut (*h).lock)?;
                (*h).len = len;
            }
            Ok(())
        })?;
        let arr = Array {
            shm,
            _t: PhantomData,
        };
        // SAFETY: nothing else can see the region yet; the trailing area
        // holds `len` properly aligned `T` slots.
        let slice = unsafe { std::slice::from_raw_parts_mut(arr.elems(), len) };
        fill(slice);
        Ok(arr)
    }

    fn elems(&self) -> *mut T {
        self.shm.tail_ptr(std::mem::align_of::<T>()).cast::<T>()
    }

    /// Number of elements (fixed at creation).
    pub fn len(&self) -> usize {
        self.shm.header().len
    }

    /// Always `false`: an empty shared array cannot be created.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Locks the array; the guard derefs to `&mut [T]`.
    ///
    /// # Errors
    /// As [`Value::lock`].
    #[doc(alias = "get_lock")]
    pub fn lock(&self) -> LockResult<ArrayGuard<'_, T>> {
        let guard = || ArrayGuard {
            array: self,
            _not_send: PhantomData,
        };
        match self.shm.header().lock.lock() {
            Ok(Acquired::Clean) => Ok(guard()),
            Ok(Acquired::OwnerDied) => Err(LockError::OwnerDied(guard())),
            Err(e) => Err(LockError::Other(e)),
        }
    }

    /// Reads element `i` under the lock.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if `i` is out of range; otherwise as
    /// [`Value::get`].
    pub fn get(&self, i: usize) -> Result<T> {
        let g = self.lock().map_err(Error::from)?;
        g.get(i).copied().ok_or_else(|| out_of_range(i, g.len()))
    }

    /// Writes element `i` under the lock.
    ///
    /// # Errors
    /// As [`Array::get`].
    pub fn set(&self, i: usize, value: T) -> Result<()> {
        let mut g = self.lock().map_err(Error::from)?;
        let len = g.len();
        let slot = g.get_mut(i).ok_or_else(|| out_of_range(i, len))?;
        *slot = value;
        Ok(())
    }

    /// A copy of the whole array, taken under the lock.
    ///
    /// # Errors
    /// As [`Value::get`].
    pub fn to_vec(&self) -> Result<Vec<T>> {
        let g = self.lock().map_err(Error::from)?;
        Ok(g.to_vec())
    }
}

fn out_of_range(i: usize, len: usize) -> Error {
    Error::InvalidArgument(format!(
        "index {i} out of range for shared array of length {len}"
    ))
}

impl<T: SharedData + fmt::Debug> fmt::Debug for Array<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Array").field("len", &self.len()).finish()
    }
}

/// Holds an [`Array`]'s lock; derefs to the elements. Unlocks on drop.
pub struct ArrayGuard<'a, T: SharedData> {
    array: &'a Array<T>,
    _not_send: PhantomData<*const ()>,
}

impl<T: SharedData> Deref for ArrayGuard<'_, T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // SAFETY: we hold the lock; the area holds `len` initialised `T`s.
        unsafe { std::slice::from_raw_parts(self.array.elems(), self.array.len()) }
    }
}

impl<T: SharedData> DerefMut for ArrayGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: we hold the lock; the area holds `len` initialised `T`s.
        unsafe { std::slice::from_raw_parts_mut(self.array.elems(), self.array.len()) }
    }
}

impl<T: SharedData> Drop for ArrayGuard<'_, T> {
    fn drop(&mut self) {
        // SAFETY: the guard exists only while this thread holds the lock.
        unsafe { self.array.shm.header().lock.unlock() }
    }
}

impl<T: SharedData + fmt::Debug> fmt::Debug for ArrayGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}
