//! The pool's wire codec: serde's data model in fixed-width little-endian.
//!
//! Pool tasks cross a socketpair to a fork of the same executable, so the
//! encoding needs neither compactness nor versioning, only speed. postcard
//! (the codec of [`Connection`](super::Connection)) writes integers as
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
use ser_impl::Encoder;

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
