//! The pool's wire codec: serde's data model in fixed-width little-endian.
//!
//! Pool tasks cross a socketpair to a fork of the same executable, so the
//! encoding needs neither compactness nor versioning, only speed. postcard
//! (the codec of [`Connection`](crate::process::Connection)) writes integers as
//! varints; in `Pool::map` over a million numbers its per-number encode
//! and decode were about half of all the CPU spent (measured with `perf`).
//! Here every integer is one fixed-size store or load:
//!
//! | serde type | bytes |
//! |---|---|
//! | `bool` | 1 (0 or 1; anything else is an error) |
//! | `i8`…`i128`, `u8`…`u128`, `f32`, `f64` | their size, little-endian |
//! | `char` | 4 (`u32`, checked to be a scalar value) |
//! | `str`, bytes | length (`u64`) then the bytes |
//! | `Option` | 1 tag byte (0 or 1), then the value |
//! | unit, unit struct | nothing |
//! | sequence, map | length (`u64`) then the elements (or key, value pairs) |
//! | tuple, struct | the fields in order, no length |
//! | enum variant | index (`u32`), then the variant's content |
//!
//! The format is not self-describing: `deserialize_any` (used by
//! `serde_json::Value`, untagged enums and the like) is refused with an
//! error. Decoding never trusts a length: a string or byte length is
//! checked against the bytes that are left before anything is allocated.

use std::fmt;

use serde::{de, ser, Serialize};

mod de_impl;
mod ser_impl;
#[cfg(test)]
mod tests;

pub(crate) use de_impl::Decoder;
pub(crate) use ser_impl::Encoder;

/// A wire encoding or decoding failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WireError(pub(crate) String);

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for WireError {}

impl ser::Error for WireError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        WireError(msg.to_string())
    }
}

impl de::Error for WireError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        WireError(msg.to_string())
    }
}

impl From<WireError> for crate::Error {
    fn from(e: WireError) -> Self {
        crate::Error::Codec(e.0)
    }
}

type Result<T> = std::result::Result<T, WireError>;

/// Appends the encoding of `value` to `out`.
///
/// # Errors
/// A sequence or map whose length is not known up front, or a
/// `Serialize` impl that reports an error itself.
#[inline]
pub(crate) fn append<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> Result<()> {
    value.serialize(&mut Encoder::new(out))
}

/// Decodes `n` values of `R` from `de` and appends them to `out`.
///
/// The values are written straight into `out`'s spare capacity (reserved
/// once) and the length is published at the end, instead of one `push`
/// per value: `push` reloads and stores the vector's length and checks
/// its capacity on every value, which made decoding a million `u64`s
/// about three times slower (0.82 ms against 0.22–0.29 ms, measured in a
/// release build on the development VM).
///
/// `n` must come from our own side (it is reserved up front): the pool
/// passes the item count it submitted, after checking the reply's count
/// against it.
///
/// # Errors
/// The first value that fails to decode; the values decoded before it
/// stay in `out`.
pub(crate) fn decode_n_into<'de, R: de::Deserialize<'de>>(
    de: &mut Decoder<'de>,
    n: usize,
    out: &mut Vec<R>,
) -> Result<()> {
    /// Publishes the values written so far, also when a `Deserialize`
    /// impl panics, so they are dropped rather than leaked.
    struct Written<'a, R> {
        out: &'a mut Vec<R>,
        done: usize,
    }
    impl<R> Drop for Written<'_, R> {
        fn drop(&mut self) {
            let len = self.out.len() + self.done;
            // SAFETY: `done` slots after the old length were initialized
            // (one `write` each, counted only after it), and they are
            // within the capacity reserved before writing.
            unsafe { self.out.set_len(len) };
        }
    }
    out.reserve(n);
    let mut written = Written { out, done: 0 };
    let base = written.out.len();
    let slots = written.out.as_mut_ptr();
    for i in 0..n {
        let value = R::deserialize(&mut *de)?;
        // SAFETY: `base + i < base + n <= capacity` (reserved above), and
        // the slot is past the length, so nothing is overwritten or
        // dropped; `done` counts it only once it is written.
        unsafe { slots.add(base + i).write(value) };
        written.done = i + 1;
    }
    Ok(())
}

/// Decodes one `T` that fills `bytes` exactly.
///
/// # Errors
/// Truncated or malformed input, or bytes left over.
pub(crate) fn from_bytes<'de, T: de::Deserialize<'de>>(bytes: &'de [u8]) -> Result<T> {
    let mut d = Decoder::new(bytes);
    let v = T::deserialize(&mut d)?;
    d.finish()?;
    Ok(v)
}
