//! Unit tests of the codec.

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

/// Encodes `items` one after another, no count.
fn concat<T: Serialize>(items: &[T]) -> Vec<u8> {
    let mut out = Vec::new();
    for item in items {
        append(item, &mut out).unwrap();
    }
    out
}

#[test]
fn decode_n_into_appends_after_existing_values() {
    let bytes = concat(&["b".to_string(), "c".to_string(), "d".to_string()]);
    let mut out = vec!["a".to_string()];
    let mut de = Decoder::new(&bytes);
    decode_n_into(&mut de, 3, &mut out).unwrap();
    de.finish().unwrap();
    assert_eq!(out, ["a", "b", "c", "d"]);
    // Zero values: nothing read, nothing added.
    let mut de = Decoder::new(&[]);
    decode_n_into::<u64>(&mut de, 0, &mut Vec::new()).unwrap();
    // A million numbers (the `map` bench's batch) round-trip.
    let numbers: Vec<u64> = (0..1_000_000).map(|i| i * 3).collect();
    let bytes = concat(&numbers);
    let mut back: Vec<u64> = Vec::new();
    let mut de = Decoder::new(&bytes);
    decode_n_into(&mut de, numbers.len(), &mut back).unwrap();
    de.finish().unwrap();
    assert!(back == numbers);
}

#[test]
fn decode_n_into_keeps_the_values_before_a_failure() {
    // Two strings, then bytes that end in the middle of the third.
    let mut bytes = concat(&["x".to_string(), "yz".to_string()]);
    bytes.extend_from_slice(&10u64.to_le_bytes());
    bytes.extend_from_slice(b"abc");
    let mut out = Vec::new();
    let mut de = Decoder::new(&bytes);
    let err = decode_n_into::<String>(&mut de, 3, &mut out).unwrap_err();
    assert!(err.0.contains("ends in the middle"), "{err}");
    assert_eq!(out, ["x", "yz"]);
}

#[test]
fn decode_n_into_drops_what_it_decoded_when_a_value_panics() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static LIVE: AtomicUsize = AtomicUsize::new(0);

    /// Counts live values; decoding the number 13 panics.
    struct Counted(#[allow(dead_code)] u32);
    impl<'de> Deserialize<'de> for Counted {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
            let n = u32::deserialize(d)?;
            assert!(n != 13, "thirteen");
            LIVE.fetch_add(1, Ordering::SeqCst);
            Ok(Counted(n))
        }
    }
    impl Drop for Counted {
        fn drop(&mut self) {
            LIVE.fetch_sub(1, Ordering::SeqCst);
        }
    }

    let bytes = concat(&[10u32, 11, 12, 13, 14]);
    let mut out = vec![Counted(0)];
    LIVE.store(1, Ordering::SeqCst);
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut de = Decoder::new(&bytes);
        let _ = decode_n_into(&mut de, 5, &mut out);
    }));
    assert!(caught.is_err());
    // The three values decoded before the panic are in `out`, owned.
    assert_eq!(out.len(), 4);
    assert_eq!(LIVE.load(Ordering::SeqCst), 4);
    drop(out);
    assert_eq!(
        LIVE.load(Ordering::SeqCst),
        0,
        "a value leaked or dropped twice"
    );
}

#[test]
fn one_encoder_for_many_values_grows_and_appends() {
    // From an empty vector (no capacity: every early write grows it), and
    // after existing bytes, one encoder per loop writes what one `append`
    // per value writes.
    for (start, capacity) in [(vec![], 0), (vec![9u8, 8, 7], 3), (vec![1], 1 << 20)] {
        let mut expected = start.clone();
        let mut out = Vec::with_capacity(capacity);
        out.extend_from_slice(&start);
        {
            let mut encoder = Encoder::new(&mut out);
            for i in 0..10_000u64 {
                let value = (i, format!("n{i}"), (i % 3 == 0).then_some(i as u8));
                encoder.encode(&value).unwrap();
                let mut one = Vec::new();
                append(&value, &mut one).unwrap();
                expected.extend_from_slice(&one);
            }
        }
        assert!(out == expected, "start {start:?}, capacity {capacity}");
        // Fixed-width little-endian, after the starting bytes.
        let n = start.len();
        assert_eq!(out[n..n + 8], 0u64.to_le_bytes());
        assert_eq!(
            out[n + 8..n + 16],
            2u64.to_le_bytes(),
            "the length of \"n0\""
        );
    }
}

#[test]
fn an_encoder_keeps_what_it_wrote_before_an_error_or_a_panic() {
    /// Writes a `u32` and then fails (or panics).
    struct Half(bool);
    impl Serialize for Half {
        fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
            use serde::ser::{Error as _, SerializeTuple};
            let mut t = s.serialize_tuple(2)?;
            t.serialize_element(&0xAABB_CCDDu32)?;
            assert!(!self.0, "half a value");
            Err(S::Error::custom("second half refused"))
        }
    }
    let mut out = vec![1u8];
    {
        let mut encoder = Encoder::new(&mut out);
        encoder.encode(&7u16).unwrap();
        let err = encoder.encode(&Half(false)).unwrap_err();
        assert_eq!(err.0, "second half refused");
    }
    assert_eq!(out, [1, 7, 0, 0xDD, 0xCC, 0xBB, 0xAA]);
    let mut out = Vec::new();
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut encoder = Encoder::new(&mut out);
        let _ = encoder.encode(&Half(true));
    }));
    assert!(caught.is_err());
    assert_eq!(out, [0xDD, 0xCC, 0xBB, 0xAA]);
}
