//! The pool's task codec (`src/process/codec/`): decoding task arguments
//! and chunk replies.
//!
//! Input: one byte choosing the type to decode (and, for chunk replies,
//! how many results are expected), then the encoded bytes.
//!
//! Properties:
//! - whatever decodes re-encodes to exactly the same bytes (the encoding
//!   is canonical: fixed-width integers, exact lengths, nothing left over);
//!   for maps, whose key order the decoder normalises, the re-encoding
//!   decodes to the same value;
//! - memory: decoding never holds more than 24 bytes (the largest
//!   element's in-memory size) per input byte per level of nested
//!   sequences (two here), plus 1 KiB: a forged length or count cannot make
//!   a sequence reserve memory for more elements than there are bytes.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use serde::Serialize;
use socketserver::fuzzing::{codec_from_bytes, codec_to_bytes, pool_decode_chunk};
use socketserver_fuzz::codec_types::{Record, Shape};
use socketserver_fuzz::{peak_since, start_measuring, Counting};

#[global_allocator]
static ALLOC: Counting = Counting;

/// The largest in-memory size of an element of the sequences decoded here
/// (`String`, `Vec<u8>`). The decoder reserves, for a sequence whose count
/// it cannot trust yet, at most one element per input byte left, so a
/// forged count costs at most this much per input byte ...
const ELEMENT_MAX: usize = 24;

/// ... per level of nested sequences (`Vec<Vec<u8>>`, a map of `Vec`s):
/// each level's forged count reserves against the same bytes left.
const NESTING: usize = 2;

/// Decodes `bytes` as `T`; when it decodes, checks the round trip and the
/// memory held while decoding.
fn one<T: DeserializeOwned + Serialize>(bytes: &[u8], canonical: bool) {
    let base = start_measuring();
    let decoded = codec_from_bytes::<T>(bytes);
    let peak = peak_since(base);
    check_memory(peak, bytes.len());
    let Ok(v) = decoded else { return };
    let again = codec_to_bytes(&v).expect("a decoded value encodes");
    if canonical {
        assert_eq!(again, bytes, "decoded value re-encodes differently");
    } else {
        let w: T = codec_from_bytes(&again).expect("a re-encoding decodes");
        assert_eq!(
            codec_to_bytes(&w).unwrap(),
            again,
            "re-encoding is not stable"
        );
    }
}

fn check_memory(peak: usize, input: usize) {
    let allowed = NESTING * ELEMENT_MAX * input + 1024;
    assert!(
        peak <= allowed,
        "{peak} bytes live decoding {input} bytes (allowed {allowed})"
    );
}

fuzz_target!(|data: &[u8]| {
    let Some((&config, bytes)) = data.split_first() else {
        return;
    };
    match config % 8 {
        0 => one::<Record>(bytes, true),
        1 => one::<Vec<Shape>>(bytes, true),
        2 => one::<(String, Vec<u64>, Option<Vec<char>>)>(bytes, true),
        3 => one::<BTreeMap<String, Vec<i32>>>(bytes, false),
        4 => one::<(bool, u128, f32, i16, Vec<Vec<u8>>)>(bytes, true),
        5 => one::<Vec<String>>(bytes, true),
        _ => {
            // A worker's reply to a chunk of `expected` tasks.
            let expected = usize::from(config >> 3);
            let base = start_measuring();
            let decoded = pool_decode_chunk::<Shape>(bytes, expected);
            // The parent reserves room for the results it asked for.
            let reserved = expected * std::mem::size_of::<Shape>();
            check_memory(peak_since(base).saturating_sub(reserved), bytes.len());
            if let Ok(results) = decoded {
                assert_eq!(results.len(), expected);
                let mut again = (expected as u64).to_le_bytes().to_vec();
                for r in &results {
                    again.extend(codec_to_bytes(r).unwrap());
                }
                assert_eq!(again, bytes, "a chunk reply re-encodes differently");
            }
        }
    }
});
