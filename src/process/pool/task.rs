//! How a task travels from the pool's parent to a forked worker.
//!
//! A task is a function plus serde-encoded arguments. The function itself
//! cannot be serialised, so the parent sends the *address* of a small
//! monomorphised "trampoline" (`run_one::<C, A>` or `run_chunk::<C, A>`)
//! that decodes the arguments, calls the function and encodes the result.
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
//! The user's function is required to be a *zero-sized* `Copy` value: a
//! function item (`square`) or a closure that captures nothing. The worker
//! needs no bytes to rebuild it: a zero-sized value carries no data, and
//! `Copy` says duplicating it is allowed, so conjuring another copy in the
//! worker is the same as copying the value the parent passed in. Closures
//! that capture data are refused at compile time (they would need their
//! captures, which may point at memory that only exists in the parent).

use std::marker::PhantomData;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::process::codec::{self, Decoder, WireError};

/// The trampoline's type: decode `payload`, run the task, append the
/// encoded result to `out`. `Err` carries a decode/encode failure message.
pub(crate) type Trampoline = fn(payload: &[u8], out: &mut Vec<u8>) -> Result<(), String>;

/// A function a worker can call with one argument of type `A` (a plain
/// function wrapped in [`One`], or a [`StarFn`] wrapped in [`Star`]).
pub(crate) trait Invoke<A>: Copy + Send + Sync + 'static {
    /// What the function returns.
    type Output;
    /// Calls the function.
    fn invoke(self, arg: A) -> Self::Output;
}

/// Wraps a one-argument function.
#[derive(Clone, Copy)]
pub(crate) struct One<F>(F);

impl<F, A, R> Invoke<A> for One<F>
where
    F: Fn(A) -> R + Copy + Send + Sync + 'static,
{
    type Output = R;
    fn invoke(self, arg: A) -> R {
        (self.0)(arg)
    }
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

/// Runs one call: `payload` is the encoded argument.
fn run_one<C, A>(payload: &[u8], out: &mut Vec<u8>) -> Result<(), String>
where
    C: Invoke<A>,
    A: DeserializeOwned,
    C::Output: Serialize,
{
    let arg: A = codec::from_bytes(payload)
        .map_err(|e| format!("cannot decode the task's argument: {e}"))?;
    let result = conjure::<C>().invoke(arg);
    encode_into(&result, out)
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
    let bad = |e: WireError| format!("cannot decode the chunk's arguments: {e}");
    let (count, items) = split_count(payload)?;
    out.extend_from_slice(&count.to_le_bytes());
    let mut de = Decoder::new(items);
    let f = conjure::<C>();
    for _ in 0..count {
        let arg = A::deserialize(&mut de).map_err(bad)?;
        encode_into(&f.invoke(arg), out)?;
    }
    de.finish().map_err(bad)
}

/// The address of the single-call trampoline for `C`.
pub(crate) fn one_address<C, A>() -> usize
where
    C: Invoke<A>,
    A: DeserializeOwned,
    C::Output: Serialize,
{
    const { assert_zero_sized::<C>() };
    let t: Trampoline = run_one::<C, A>;
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
