//! How a task travels from the pool's parent to a forked worker.
//!
//! A task is a function plus serde-encoded arguments. The function itself
//! cannot be serialised, so the parent sends the *address* of a small
//! monomorphised "trampoline" (`run_one_fn::<A, R>`, `run_chunk_fn::<A, R>`
//! or `run_chunk::<C, A>`) that decodes the arguments, calls the function
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
//! `starmap` takes any arity from 0 to 4, which a single fn-pointer type
//! cannot express without breaking `pool.starmap(add, …)` for function
//! items (a fn item does not coerce to a pointer type that is still being
//! inferred). Its function is therefore still a *zero-sized* `Copy`
//! value: a function item or a closure that captures nothing, rebuilt in
//! the worker out of no bytes by a trampoline monomorphised for its type
//! (`run_chunk::<Star<F, Args>, Args>`); a capturing closure is refused
//! by a compile-time assertion, which `cargo build` evaluates and `cargo
//! check` does not.

use std::marker::PhantomData;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::process::codec::{self, Decoder, WireError};

/// The trampoline's type: decode `payload`, run the task, append the
/// encoded result to `out`. `Err` carries a decode/encode failure message.
///
/// # Safety
/// `payload` must have been built for this very trampoline by the pool
/// (a function-pointer trampoline reads a function address out of it),
/// in this process or in one it is a `fork()` of (see the module docs).
pub(crate) type Trampoline = unsafe fn(payload: &[u8], out: &mut Vec<u8>) -> Result<(), String>;

/// A zero-sized function a worker can call with one argument of type `A`
/// (a [`StarFn`] wrapped in [`Star`]).
pub(crate) trait Invoke<A>: Copy + Send + Sync + 'static {
    /// What the function returns.
    type Output;
    /// Calls the function.
    fn invoke(self, arg: A) -> Self::Output;
}

/// A function of several arguments called with a tuple of them:
/// Python's `starmap` unpacking. Implemented for `Fn(A, B) -> R` with a
/// `(A, B)` tuple, and likewise for 0 to 4 arguments.
pub trait StarFn<Args>: Copy + Send + Sync + 'static {
    /// What the function returns.
    type Output;
    /// Calls the function with the tuple's elements as arguments.
    fn call_star(self, args: Args) -> Self::Output;
}

macro_rules! star_fn {
    ($($a:ident),*) => {
        impl<F, R, $($a),*> StarFn<($($a,)*)> for F
        where
            F: Fn($($a),*) -> R + Copy + Send + Sync + 'static,
        {
            type Output = R;
            #[allow(non_snake_case)]
            fn call_star(self, ($($a,)*): ($($a,)*)) -> R {
                self($($a),*)
            }
        }
    };
}
star_fn!();
star_fn!(A1);
star_fn!(A1, A2);
star_fn!(A1, A2, A3);
star_fn!(A1, A2, A3, A4);

/// Wraps a [`StarFn`] so it can be used where an [`Invoke`] is expected.
pub(crate) struct Star<F, Args>(F, PhantomData<fn(Args)>);

impl<F: Copy, Args> Clone for Star<F, Args> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<F: Copy, Args> Copy for Star<F, Args> {}

impl<F, Args> Invoke<Args> for Star<F, Args>
where
    F: StarFn<Args>,
    Args: 'static,
{
    type Output = F::Output;
    fn invoke(self, args: Args) -> F::Output {
        self.0.call_star(args)
    }
}

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
    append(value, out).map_err(|e| format!("cannot encode the task's result: {e}"))
}

/// Bytes of the function address in front of a function-pointer task's
/// payload.
const FUNCTION: usize = 8;

/// The address of `f`, for [`push_function`].
pub(crate) fn function_address<A, R>(f: fn(A) -> R) -> usize {
    f as usize
}

/// Appends a function address (from [`function_address`]) to `out`: the
/// start of the payload of a task run by [`run_one_fn`] or
/// [`run_chunk_fn`].
pub(crate) fn push_function(address: usize, out: &mut Vec<u8>) {
    out.extend_from_slice(&(address as u64).to_le_bytes());
}

/// A task's function and the rest of its payload.
type Split<'a, A, R> = (fn(A) -> R, &'a [u8]);

/// Splits the function address pushed by [`push_function`] off `payload`.
///
/// # Safety
/// `payload` must start with the address of a `fn(A) -> R` (same `A` and
/// `R`) pushed by [`push_function`] in this process or in one it is a
/// `fork()` of, with no `exec` in between.
unsafe fn split_function<A, R>(payload: &[u8]) -> Result<Split<'_, A, R>, String> {
    let Some((addr, rest)) = payload.split_first_chunk::<FUNCTION>() else {
        return Err(format!("a {}-byte task has no function", payload.len()));
    };
    let addr = u64::from_le_bytes(*addr) as usize;
    if addr == 0 {
        return Err("a task names a null function".into());
    }
    // SAFETY: guaranteed by the caller: `addr` is the address of a
    // `fn(A) -> R` in this very executable image (a fork keeps the parent's
    // mappings), and it is not null (checked above). Function pointers and
    // `usize` have the same size on every target Rust supports.
    let f = unsafe { std::mem::transmute::<usize, fn(A) -> R>(addr) };
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
    let (f, payload) = unsafe { split_function::<A, R>(payload) }?;
    let arg: A = codec::from_bytes(payload)
        .map_err(|e| format!("cannot decode the task's argument: {e}"))?;
    encode_into(&f(arg), out)
}

pub(crate) use super::wire::{encode_chunk, split_count};

/// Runs a chunk. `payload` is a count and the encoded arguments (see
/// [`encode_chunk`]); the result has the same shape: the count, then the
/// encoded results in order. Arguments are decoded, run and encoded one at
/// a time, so a chunk needs no `Vec` of arguments or results in the
/// worker.
fn run_chunk<C, A>(payload: &[u8], out: &mut Vec<u8>) -> Result<(), String>
where
    C: Invoke<A>,
    A: DeserializeOwned,
    C::Output: Serialize,
{
    let f = conjure::<C>();
    chunk_loop(payload, out, |arg| f.invoke(arg))
}

/// Runs a chunk of a function pointer: `payload` is the function's
/// address, then a chunk as [`run_chunk`] takes it.
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
    let (f, payload) = unsafe { split_function::<A, R>(payload) }?;
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
    for _ in 0..count {
        let arg = A::deserialize(&mut de).map_err(bad)?;
        encode_into(&f(arg), out)?;
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

/// The address of the chunk trampoline for `C`.
pub(crate) fn chunk_address<C, A>() -> usize
where
    C: Invoke<A>,
    A: DeserializeOwned,
    C::Output: Serialize,
{
    const { assert_zero_sized::<C>() };
    let t: Trampoline = run_chunk::<C, A>;
    t as usize
}

/// Turns an address received from the parent back into a trampoline.
///
/// # Safety
/// `addr` must come from [`one_address`] or [`chunk_address`] evaluated
/// in this process or in an ancestor this process is a `fork()` of, with
/// no `exec` in between (see the module docs).
pub(crate) unsafe fn trampoline_at(addr: usize) -> Trampoline {
    // SAFETY: guaranteed by the caller: `addr` is the address of a
    // `Trampoline` function in this very executable image.
    unsafe { std::mem::transmute::<usize, Trampoline>(addr) }
}
