//! How a task travels from the pool's parent to a forked worker.
//!
//! A task is a function plus serde-encoded arguments. The function itself
//! cannot be serialised, so the parent sends the *address* of a small
//! monomorphised "trampoline" (`run_one_fn::<A, R>`, `run_chunk_fn::<A, R>`
//! or `run_chunk_star::<Args, R>`) that decodes the arguments, calls the function
//! and encodes the result.
//!
//! # Why this is sound only for `fork`
//! Every worker is a `fork()` of the process that submits tasks: it runs
//! the same executable image, mapped at the same addresses (ASLR picks
//! addresses at `exec`, not at `fork`). So a function address taken in the
//! parent names the same code in every worker. That would not hold for a
//! `spawn`/`exec` start method, for code in a library `dlopen`ed after the
//! worker was forked, or for a peer that is not our own fork, which is why
//! the address only ever travels over a private socketpair between the
//! pool and its own children.
//!
//! # What a task is
//! The one-argument methods (`map`, `apply`, `imap`, `submit`, …) take a
//! function *pointer*, `fn(A) -> R`. A function item (`square`) and a
//! closure that captures nothing coerce to one; a closure that captures
//! data does not, and rustc rejects it while type-checking (so `cargo
//! check` and rust-analyzer report it at the call site): "closures can
//! only be coerced to `fn` types if they do not capture any variables".
//! The pointer's address travels in front of the payload, next to the
//! address of a trampoline (`run_one_fn::<A, R>`/`run_chunk_fn::<A, R>`)
//! that knows its type; the worker calls it through the pointer, one
//! indirect call per item.
//!
//! `starmap` takes a function of 0 to 4 arguments as a pointer too,
//! `fn(A, B) -> R` for items `(A, B)`: the pointer type is
//! [`StarArgs::Fn`], projected from the items' tuple type. That is why
//! `starmap` takes the items *before* the function: rustc coerces
//! arguments in order, and a function item (`add`) coerces to
//! `fn(i64, i64) -> i64` only once the items have fixed that type (with
//! the function first, the pointer type is still unknown when `add` is
//! checked). So here too a capturing closure is a type error at the call
//! site, found by `cargo check`.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::process::codec::{self, Decoder, Encoder, WireError};

/// The trampoline's type: decode `payload`, run the task, append the
/// encoded result to `out`. `Err` carries a decode/encode failure message.
///
/// # Safety
/// `payload` must have been built for this very trampoline by the pool
/// (a function-pointer trampoline reads a function address out of it),
/// in this process or in one it is a `fork()` of (see the module docs).
pub(crate) type Trampoline = unsafe fn(payload: &[u8], out: &mut Vec<u8>) -> Result<(), String>;

/// The argument tuple of a [`Pool::starmap`](crate::process::Pool::starmap)
/// item: Python's `starmap` unpacking. Implemented for tuples of 0 to 4
/// elements (sealed); `(A, B)` goes with a `fn(A, B) -> R`.
pub trait StarArgs: sealed::Sealed + Sized {
    /// The function pointer that takes these arguments and returns `R`:
    /// `fn(A, B) -> R` for `(A, B)`, `fn() -> R` for `()`.
    type Fn<R>: Copy;
    /// Calls `f` with the tuple's elements as arguments.
    fn call<R>(f: Self::Fn<R>, args: Self) -> R;
}

mod sealed {
    /// Only the tuples `task.rs` implements [`super::StarArgs`] for: the
    /// worker turns an address back into `Fn<R>`, which must be a function
    /// pointer.
    pub trait Sealed {}
}

macro_rules! star_args {
    ($($a:ident),*) => {
        impl<$($a),*> sealed::Sealed for ($($a,)*) {}
        impl<$($a),*> StarArgs for ($($a,)*) {
            type Fn<R> = fn($($a),*) -> R;
            #[allow(non_snake_case)]
            fn call<R>(f: Self::Fn<R>, ($($a,)*): Self) -> R {
                f($($a),*)
            }
        }
    };
}
star_args!();
star_args!(A1);
star_args!(A1, A2);
star_args!(A1, A2, A3);
star_args!(A1, A2, A3, A4);

/// Rebuilds a zero-sized `Copy` value out of nothing.
pub(crate) fn conjure<C: Copy + 'static>() -> C {
    const { assert!(size_of::<C>() == 0, "pool tasks must be zero-sized") };
    // SAFETY: `C` is zero-sized (checked at compile time above), so reading
    // it touches no memory; a dangling, well-aligned pointer is valid for
    // zero-sized reads. `C: Copy`, and the parent held a real value of `C`
    // when it submitted the task, so producing one more copy of that
    // (byte-less) value is what copying it would have done.
    unsafe { std::ptr::NonNull::<C>::dangling().as_ptr().read() }
}

/// Compile-time check that a task function is zero-sized, with a message
/// that says what to do instead.
pub(crate) const fn assert_zero_sized<C>() {
    assert!(
        size_of::<C>() == 0,
        "a pool task must be a function item or a closure that captures nothing"
    );
}

/// Appends the wire encoding (see [`codec`]) of `value` to `out`.
///
/// # Errors
/// The codec's, when `value` cannot be encoded (e.g. a sequence of
/// unknown length).
#[inline]
pub(crate) fn append<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> Result<(), WireError> {
    codec::append(value, out)
}

fn encode_into<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> Result<(), String> {
    append(value, out).map_err(result_unencodable)
}

/// The trampoline's message for a result the codec refused.
fn result_unencodable(e: WireError) -> String {
    format!("cannot encode the task's result: {e}")
}

/// Bytes of the function address in front of a function-pointer task's
/// payload.
const FUNCTION: usize = 8;

/// The address of `f`, for [`push_function`].
pub(crate) fn function_address<A, R>(f: fn(A) -> R) -> usize {
    f as usize
}

/// The address of a `starmap` function, for [`push_function`].
pub(crate) fn star_address<Args: StarArgs, R>(f: Args::Fn<R>) -> usize {
    const { assert!(size_of::<Args::Fn<R>>() == size_of::<usize>()) };
    // SAFETY: `StarArgs` is sealed and every implementation's `Fn<R>` is a
    // function pointer (`fn(A1, …) -> R`), which has the size of `usize`
    // (asserted above); reading one as a `usize` gives its address.
    unsafe { std::mem::transmute_copy::<Args::Fn<R>, usize>(&f) }
}

/// Appends a function address (from [`function_address`] or
/// [`star_address`]) to `out`: the start of the payload of a task run by
/// [`run_one_fn`], [`run_chunk_fn`] or [`run_chunk_star`].
pub(crate) fn push_function(address: usize, out: &mut Vec<u8>) {
    out.extend_from_slice(&(address as u64).to_le_bytes());
}

/// Splits the function address pushed by [`push_function`] off `payload`
/// and turns it back into a function pointer of type `P`.
///
/// # Safety
/// `P` must be a function pointer type, and `payload` must start with the
/// address of a function of exactly that type pushed by [`push_function`]
/// in this process or in one it is a `fork()` of, with no `exec` in
/// between.
unsafe fn split_function<P: Copy>(payload: &[u8]) -> Result<(P, &[u8]), String> {
    const { assert!(size_of::<P>() == size_of::<usize>()) };
    let Some((addr, rest)) = payload.split_first_chunk::<FUNCTION>() else {
        return Err(format!("a {}-byte task has no function", payload.len()));
    };
    let addr = u64::from_le_bytes(*addr) as usize;
    if addr == 0 {
        return Err("a task names a null function".into());
    }
    // SAFETY: guaranteed by the caller: `P` is a function pointer type and
    // `addr` is the address of such a function in this very executable
    // image (a fork keeps the parent's mappings); it is not null (checked
    // above), and `P` has the size of `usize` (asserted above).
    let f = unsafe { std::mem::transmute_copy::<usize, P>(&addr) };
    Ok((f, rest))
}

/// Runs one call of a function pointer: `payload` is the function's
/// address and the encoded argument.
///
/// # Safety
/// As [`Trampoline`]: `payload` was built by the pool for
/// `run_one_fn::<A, R>`.
unsafe fn run_one_fn<A, R>(payload: &[u8], out: &mut Vec<u8>) -> Result<(), String>
where
    A: DeserializeOwned,
    R: Serialize,
{
    // SAFETY: the caller's guarantee: the payload starts with a
    // `fn(A) -> R` pushed by `push_function`.
    let (f, payload) = unsafe { split_function::<fn(A) -> R>(payload) }?;
    let arg: A = codec::from_bytes(payload)
        .map_err(|e| format!("cannot decode the task's argument: {e}"))?;
    encode_into(&f(arg), out)
}

pub(crate) use super::wire::{encode_chunk, split_count};

/// Runs a chunk of a `starmap` function: `payload` is the function's
/// address, then a chunk as [`run_chunk_fn`] takes it (each argument a
/// tuple, spread over the function's parameters).
///
/// # Safety
/// As [`Trampoline`]: `payload` was built by the pool for
/// `run_chunk_star::<Args, R>`.
unsafe fn run_chunk_star<Args, R>(payload: &[u8], out: &mut Vec<u8>) -> Result<(), String>
where
    Args: StarArgs + DeserializeOwned,
    R: Serialize,
{
    // SAFETY: the caller's guarantee: the payload starts with an
    // `Args::Fn<R>` (a function pointer: `StarArgs` is sealed) pushed by
    // `push_function`.
    let (f, payload) = unsafe { split_function::<Args::Fn<R>>(payload) }?;
    chunk_loop(payload, out, |args: Args| Args::call(f, args))
}

/// Runs a chunk of a function pointer. `payload` is the function's
/// address, then a count and the encoded arguments (see
/// [`encode_chunk`]); the result has the same shape: the count, then the
/// encoded results in order. Arguments are decoded, run and encoded one at
/// a time, so a chunk needs no `Vec` of arguments or results in the
/// worker.
///
/// # Safety
/// As [`Trampoline`]: `payload` was built by the pool for
/// `run_chunk_fn::<A, R>`.
unsafe fn run_chunk_fn<A, R>(payload: &[u8], out: &mut Vec<u8>) -> Result<(), String>
where
    A: DeserializeOwned,
    R: Serialize,
{
    // SAFETY: the caller's guarantee: the payload starts with a
    // `fn(A) -> R` pushed by `push_function`.
    let (f, payload) = unsafe { split_function::<fn(A) -> R>(payload) }?;
    chunk_loop(payload, out, f)
}

/// The loop of a chunk: decode an argument, call `f`, encode its result.
#[inline(always)]
fn chunk_loop<A, R>(payload: &[u8], out: &mut Vec<u8>, f: impl Fn(A) -> R) -> Result<(), String>
where
    A: DeserializeOwned,
    R: Serialize,
{
    let bad = |e: WireError| format!("cannot decode the chunk's arguments: {e}");
    let (count, items) = split_count(payload)?;
    out.extend_from_slice(&count.to_le_bytes());
    let mut de = Decoder::new(items);
    // One encoder for every result: its cursor stays in registers.
    let mut encoder = Encoder::new(out);
    for _ in 0..count {
        let arg = A::deserialize(&mut de).map_err(bad)?;
        encoder.encode(&f(arg)).map_err(result_unencodable)?;
    }
    de.finish().map_err(bad)
}

/// The address of the single-call trampoline for a `fn(A) -> R`; the
/// payload starts with the function (see [`push_function`]).
pub(crate) fn one_fn_address<A, R>() -> usize
where
    A: DeserializeOwned,
    R: Serialize,
{
    let t: Trampoline = run_one_fn::<A, R>;
    t as usize
}

/// The address of the chunk trampoline for a `fn(A) -> R`; the payload
/// starts with the function (see [`push_function`]).
pub(crate) fn chunk_fn_address<A, R>() -> usize
where
    A: DeserializeOwned,
    R: Serialize,
{
    let t: Trampoline = run_chunk_fn::<A, R>;
    t as usize
}

/// The address of the chunk trampoline for a `starmap` function
/// (`Args::Fn<R>`); the payload starts with the function (see
/// [`push_function`]).
pub(crate) fn chunk_star_address<Args, R>() -> usize
where
    Args: StarArgs + DeserializeOwned,
    R: Serialize,
{
    let t: Trampoline = run_chunk_star::<Args, R>;
    t as usize
}

/// Turns an address received from the parent back into a trampoline.
///
/// # Safety
/// `addr` must come from [`one_fn_address`], [`chunk_fn_address`] or
/// [`chunk_star_address`] evaluated
/// in this process or in an ancestor this process is a `fork()` of, with
/// no `exec` in between (see the module docs).
pub(crate) unsafe fn trampoline_at(addr: usize) -> Trampoline {
    // SAFETY: guaranteed by the caller: `addr` is the address of a
    // `Trampoline` function in this very executable image.
    unsafe { std::mem::transmute::<usize, Trampoline>(addr) }
}
