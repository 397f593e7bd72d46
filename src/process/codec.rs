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

use serde::de::{self, DeserializeSeed, IntoDeserializer, Visitor};
use serde::ser::{self, Serialize};

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
    value.serialize(&mut Encoder { out })
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

/// Encodes into a `Vec<u8>`.
pub(crate) struct Encoder<'a> {
    out: &'a mut Vec<u8>,
}

impl Encoder<'_> {
    #[inline(always)]
    fn put<const N: usize>(&mut self, bytes: [u8; N]) {
        self.out.extend_from_slice(&bytes);
    }

    #[inline]
    fn len(&mut self, len: usize) {
        self.put((len as u64).to_le_bytes());
    }
}

fn unknown_length() -> WireError {
    WireError("a sequence or map must know its length before it is encoded".into())
}

macro_rules! put_le {
    ($($method:ident: $ty:ty),*) => {$(
        #[inline(always)]
        fn $method(self, v: $ty) -> Result<()> {
            self.put(v.to_le_bytes());
            Ok(())
        }
    )*};
}

impl<'a> ser::Serializer for &mut Encoder<'a> {
    type Ok = ();
    type Error = WireError;
    type SerializeSeq = Self;
    type SerializeTuple = Self;
    type SerializeTupleStruct = Self;
    type SerializeTupleVariant = Self;
    type SerializeMap = Self;
    type SerializeStruct = Self;
    type SerializeStructVariant = Self;

    put_le!(serialize_i8: i8, serialize_i16: i16, serialize_i32: i32, serialize_i64: i64,
        serialize_i128: i128, serialize_u8: u8, serialize_u16: u16, serialize_u32: u32,
        serialize_u64: u64, serialize_u128: u128, serialize_f32: f32, serialize_f64: f64);

    #[inline]
    fn serialize_bool(self, v: bool) -> Result<()> {
        self.put([u8::from(v)]);
        Ok(())
    }

    #[inline]
    fn serialize_char(self, v: char) -> Result<()> {
        self.put(u32::from(v).to_le_bytes());
        Ok(())
    }

    #[inline]
    fn serialize_str(self, v: &str) -> Result<()> {
        self.serialize_bytes(v.as_bytes())
    }

    #[inline]
    fn serialize_bytes(self, v: &[u8]) -> Result<()> {
        self.len(v.len());
        self.out.extend_from_slice(v);
        Ok(())
    }

    #[inline]
    fn serialize_none(self) -> Result<()> {
        self.put([0]);
        Ok(())
    }

    #[inline]
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<()> {
        self.put([1]);
        value.serialize(self)
    }

    #[inline]
    fn serialize_unit(self) -> Result<()> {
        Ok(())
    }

    #[inline]
    fn serialize_unit_struct(self, _: &'static str) -> Result<()> {
        Ok(())
    }

    #[inline]
    fn serialize_unit_variant(self, _: &'static str, index: u32, _: &'static str) -> Result<()> {
        self.put(index.to_le_bytes());
        Ok(())
    }

    #[inline]
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<()> {
        value.serialize(self)
    }

    #[inline]
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        index: u32,
        _: &'static str,
        value: &T,
    ) -> Result<()> {
        self.put(index.to_le_bytes());
        value.serialize(self)
    }

    #[inline]
    fn serialize_seq(self, len: Option<usize>) -> Result<Self> {
        self.len(len.ok_or_else(unknown_length)?);
        Ok(self)
    }

    #[inline]
    fn serialize_tuple(self, _: usize) -> Result<Self> {
        Ok(self)
    }

    #[inline]
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Self> {
        Ok(self)
    }

    #[inline]
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        index: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self> {
        self.put(index.to_le_bytes());
        Ok(self)
    }

    #[inline]
    fn serialize_map(self, len: Option<usize>) -> Result<Self> {
        self.len(len.ok_or_else(unknown_length)?);
        Ok(self)
    }

    #[inline]
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self> {
        Ok(self)
    }

    #[inline]
    fn serialize_struct_variant(
        self,
        _: &'static str,
        index: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self> {
        self.put(index.to_le_bytes());
        Ok(self)
    }

    fn is_human_readable(&self) -> bool {
        false
    }
}

/// Every compound is its elements (or fields) one after another.
macro_rules! compound {
    ($($trait:ident: $method:ident $(, $key:ty)?);*) => {$(
        impl<'a> ser::$trait for &mut Encoder<'a> {
            type Ok = ();
            type Error = WireError;

            #[inline]
            fn $method<T: Serialize + ?Sized>(&mut self, $(_: $key,)? value: &T) -> Result<()> {
                value.serialize(&mut **self)
            }

            #[inline]
            fn end(self) -> Result<()> {
                Ok(())
            }
        }
    )*};
}

compound!(SerializeSeq: serialize_element; SerializeTuple: serialize_element;
    SerializeTupleStruct: serialize_field; SerializeTupleVariant: serialize_field;
    SerializeStruct: serialize_field, &'static str;
    SerializeStructVariant: serialize_field, &'static str);

impl<'a> ser::SerializeMap for &mut Encoder<'a> {
    type Ok = ();
    type Error = WireError;

    #[inline]
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<()> {
        key.serialize(&mut **self)
    }

    #[inline]
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<()> {
        value.serialize(&mut **self)
    }

    #[inline]
    fn end(self) -> Result<()> {
        Ok(())
    }
}

/// Decodes from a byte slice, borrowing strings and bytes from it.
pub(crate) struct Decoder<'de> {
    input: &'de [u8],
}

impl<'de> Decoder<'de> {
    pub(crate) fn new(input: &'de [u8]) -> Self {
        Decoder { input }
    }

    /// Fails unless every byte was consumed.
    pub(crate) fn finish(&self) -> Result<()> {
        if self.input.is_empty() {
            Ok(())
        } else {
            Err(WireError(format!("{} bytes left over", self.input.len())))
        }
    }

    #[inline(always)]
    fn take<const N: usize>(&mut self) -> Result<[u8; N]> {
        match self.input.split_first_chunk::<N>() {
            Some((head, rest)) => {
                self.input = rest;
                Ok(*head)
            }
            None => Err(truncated()),
        }
    }

    #[inline]
    fn take_slice(&mut self, len: u64) -> Result<&'de [u8]> {
        let len = usize::try_from(len).map_err(|_| truncated())?;
        if len > self.input.len() {
            return Err(truncated());
        }
        let (head, rest) = self.input.split_at(len);
        self.input = rest;
        Ok(head)
    }

    #[inline]
    fn len(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take()?))
    }

    /// The elements of a sequence or map, after reading their count.
    #[inline]
    fn counted(&mut self) -> Result<Elements<'_, 'de>> {
        let left = self.len()?;
        Ok(Elements { de: self, left })
    }

    #[inline]
    fn tag(&mut self, what: &str) -> Result<bool> {
        match self.take::<1>()? {
            [0] => Ok(false),
            [1] => Ok(true),
            [b] => Err(WireError(format!("invalid {what} byte {b}"))),
        }
    }
}

fn truncated() -> WireError {
    WireError("the input ends in the middle of a value".into())
}

macro_rules! take_le {
    ($($method:ident: $ty:ty => $visit:ident),*) => {$(
        #[inline(always)]
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
            visitor.$visit(<$ty>::from_le_bytes(self.take()?))
        }
    )*};
}

impl<'de> de::Deserializer<'de> for &mut Decoder<'de> {
    type Error = WireError;

    take_le!(deserialize_i8: i8 => visit_i8, deserialize_i16: i16 => visit_i16,
        deserialize_i32: i32 => visit_i32, deserialize_i64: i64 => visit_i64,
        deserialize_i128: i128 => visit_i128, deserialize_u8: u8 => visit_u8,
        deserialize_u16: u16 => visit_u16, deserialize_u32: u32 => visit_u32,
        deserialize_u64: u64 => visit_u64, deserialize_u128: u128 => visit_u128,
        deserialize_f32: f32 => visit_f32, deserialize_f64: f64 => visit_f64);

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value> {
        Err(WireError(
            "the pool's codec is not self-describing: a type that needs \
             `deserialize_any` (serde_json::Value, untagged enums) cannot cross it"
                .into(),
        ))
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_bool(self.tag("bool")?)
    }

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        let n = u32::from_le_bytes(self.take()?);
        let c = char::from_u32(n).ok_or_else(|| WireError(format!("invalid char {n:#x}")))?;
        visitor.visit_char(c)
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        let len = self.len()?;
        let bytes = self.take_slice(len)?;
        let s =
            std::str::from_utf8(bytes).map_err(|e| WireError(format!("invalid string: {e}")))?;
        visitor.visit_borrowed_str(s)
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.deserialize_str(visitor)
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        let len = self.len()?;
        visitor.visit_borrowed_bytes(self.take_slice(len)?)
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.deserialize_bytes(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        if self.tag("option")? {
            visitor.visit_some(self)
        } else {
            visitor.visit_none()
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_unit()
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        visitor: V,
    ) -> Result<V::Value> {
        visitor.visit_unit()
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        visitor: V,
    ) -> Result<V::Value> {
        visitor.visit_newtype_struct(self)
    }

    #[inline]
    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_seq(self.counted()?)
    }

    #[inline]
    fn deserialize_tuple<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value> {
        visitor.visit_seq(Elements {
            de: self,
            left: len as u64,
        })
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value> {
        self.deserialize_tuple(len, visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_map(self.counted()?)
    }

    #[inline]
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value> {
        self.deserialize_tuple(fields.len(), visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value> {
        visitor.visit_enum(self)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.deserialize_u32(visitor)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.deserialize_any(visitor)
    }

    fn is_human_readable(&self) -> bool {
        false
    }
}

/// The elements of a sequence, tuple or map, `left` still to come.
struct Elements<'a, 'de> {
    de: &'a mut Decoder<'de>,
    left: u64,
}

impl<'de> de::SeqAccess<'de> for Elements<'_, 'de> {
    type Error = WireError;

    #[inline]
    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        seed.deserialize(&mut *self.de).map(Some)
    }

    fn size_hint(&self) -> Option<usize> {
        // Never more than there are bytes left: a forged length must not
        // make the caller preallocate gigabytes.
        Some((self.left.min(self.de.input.len() as u64)) as usize)
    }
}

impl<'de> de::MapAccess<'de> for Elements<'_, 'de> {
    type Error = WireError;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        seed.deserialize(&mut *self.de).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value> {
        seed.deserialize(&mut *self.de)
    }

    fn size_hint(&self) -> Option<usize> {
        Some((self.left.min(self.de.input.len() as u64)) as usize)
    }
}

impl<'de> de::EnumAccess<'de> for &mut Decoder<'de> {
    type Error = WireError;
    type Variant = Self;

    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Self)> {
        let index = u32::from_le_bytes(self.take()?);
        let v = seed.deserialize(index.into_deserializer())?;
        Ok((v, self))
    }
}

impl<'de> de::VariantAccess<'de> for &mut Decoder<'de> {
    type Error = WireError;

    fn unit_variant(self) -> Result<()> {
        Ok(())
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value> {
        seed.deserialize(self)
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value> {
        de::Deserializer::deserialize_tuple(self, len, visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value> {
        de::Deserializer::deserialize_tuple(self, fields.len(), visitor)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};

    use serde::{Deserialize, Serialize};

    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum Shape {
        Empty,
        Circle(f64),
        Rect { w: u32, h: u32 },
        Pair(i8, char),
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Record {
        id: u64,
        name: String,
        tags: Vec<String>,
        score: Option<i128>,
        shapes: Vec<Shape>,
        by_key: BTreeMap<String, (u16, bool)>,
        raw: serde_bytes_like::Bytes,
        unit: (),
    }

    /// A byte buffer that serializes through `serialize_bytes`.
    mod serde_bytes_like {
        use serde::{Deserialize, Deserializer, Serialize, Serializer};

        #[derive(Debug, PartialEq)]
        pub struct Bytes(pub Vec<u8>);

        impl Serialize for Bytes {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_bytes(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for Bytes {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> serde::de::Visitor<'de> for V {
                    type Value = Bytes;
                    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                        f.write_str("bytes")
                    }
                    fn visit_borrowed_bytes<E>(self, v: &'de [u8]) -> Result<Bytes, E> {
                        Ok(Bytes(v.to_vec()))
                    }
                }
                d.deserialize_bytes(V)
            }
        }
    }

    fn round_trip<T: Serialize + for<'de> Deserialize<'de> + PartialEq + fmt::Debug>(v: &T) {
        let mut out = Vec::new();
        append(v, &mut out).expect("encode");
        assert_eq!(&from_bytes::<T>(&out).expect("decode"), v);
    }

    #[test]
    fn every_kind_of_value_round_trips() {
        round_trip(&0u64);
        round_trip(&u64::MAX);
        round_trip(&i64::MIN);
        round_trip(&(-1i8, 2u16, -3i32, 4u128, 1.5f32, -2.25f64, 'é', true));
        round_trip(&String::from("héllo"));
        round_trip(&Some(Some(3u8)));
        round_trip(&None::<u8>);
        round_trip(&vec![vec![1u32, 2], vec![], vec![3]]);
        let mut hm = HashMap::new();
        hm.insert(7u8, "seven".to_owned());
        round_trip(&hm);
        round_trip(&Record {
            id: 42,
            name: "n".into(),
            tags: vec!["a".into(), "bc".into()],
            score: Some(-5),
            shapes: vec![
                Shape::Empty,
                Shape::Circle(1.0),
                Shape::Rect { w: 3, h: 4 },
                Shape::Pair(-1, 'x'),
            ],
            by_key: [("k".to_owned(), (9u16, false))].into_iter().collect(),
            raw: serde_bytes_like::Bytes(vec![0, 255, 7]),
            unit: (),
        });
    }

    #[test]
    fn integers_are_fixed_width_little_endian() {
        let mut out = Vec::new();
        append(&(1u64, 2u32, -1i16), &mut out).expect("encode");
        assert_eq!(out, [1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0xff, 0xff]);
    }

    #[test]
    fn truncated_input_is_an_error_not_a_panic() {
        let mut out = Vec::new();
        append(&(7u64, "abc".to_owned(), vec![1u16, 2, 3]), &mut out).expect("encode");
        for cut in 0..out.len() {
            let r = from_bytes::<(u64, String, Vec<u16>)>(&out[..cut]);
            assert!(r.is_err(), "a {cut}-byte prefix decoded");
        }
    }

    #[test]
    fn leftover_bytes_are_an_error() {
        let e = from_bytes::<u8>(&[1, 2]).expect_err("two bytes for one u8");
        assert!(e.0.contains("1 bytes left over"), "{e}");
    }

    #[test]
    fn forged_lengths_and_bad_tags_are_refused() {
        // A string claiming u64::MAX bytes.
        let mut out = u64::MAX.to_le_bytes().to_vec();
        out.extend_from_slice(b"abc");
        assert!(from_bytes::<String>(&out).is_err());
        // A vector claiming 2^40 elements preallocates nothing big and
        // fails at the end of the input.
        let out = (1u64 << 40).to_le_bytes();
        assert!(from_bytes::<Vec<u64>>(&out).is_err());
        assert!(from_bytes::<bool>(&[2]).is_err());
        assert!(from_bytes::<Option<u8>>(&[9, 1]).is_err());
        assert!(from_bytes::<char>(&0xD800u32.to_le_bytes()).is_err());
        assert!(from_bytes::<String>(&[2, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xfe]).is_err());
        assert!(from_bytes::<Shape>(&9u32.to_le_bytes()).is_err());
    }

    #[test]
    fn unknown_lengths_and_self_describing_types_are_refused() {
        struct Unsized;
        impl Serialize for Unsized {
            fn serialize<S: ser::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                use ser::SerializeSeq;
                let mut seq = s.serialize_seq(None)?;
                seq.serialize_element(&1u8)?;
                seq.end()
            }
        }
        let e = append(&Unsized, &mut Vec::new()).expect_err("unknown length");
        assert!(e.0.contains("know its length"), "{e}");
        let e = from_bytes::<serde_json::Value>(&[0]).expect_err("deserialize_any");
        assert!(e.0.contains("not self-describing"), "{e}");
    }
}
