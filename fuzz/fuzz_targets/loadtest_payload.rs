//! `loadtest`'s expected-reply generator (`loadtest/src/payload.rs`,
//! included as it is, not copied): every echo loadtest reads is compared
//! byte for byte with `Payloads::fill(seq)`, so a server that replays a
//! stale reply is caught only if different requests have different
//! payloads.
//!
//! The reading of replies itself is the `loadtest_reply` target.
//!
//! Properties, for any connection id, message size (up to 4 KiB) and
//! pair of request numbers:
//! - a payload has exactly the message size and is the same every time
//!   for the same request (`fill` and `next_into` agree);
//! - from 8 bytes on, two different requests of one connection never have
//!   the same payload, nor do the same request of two connections.
#![no_main]

#[path = "../../loadtest/src/payload.rs"]
#[allow(dead_code)]
mod payload;

use libfuzzer_sys::fuzz_target;
use payload::Payloads;
use socketserver_fuzz::Counting;

fn u64_at(d: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    for (i, x) in b.iter_mut().enumerate() {
        *x = d.get(at + i).copied().unwrap_or(0);
    }
    u64::from_le_bytes(b)
}

/// Counts allocations and refuses any over 256 MiB.
#[global_allocator]
static ALLOC: Counting = Counting;

fuzz_target!(|data: &[u8]| {
    if data.len() < 34 {
        return;
    }
    let id = u64_at(data, 0);
    let other_id = u64_at(data, 8);
    let size = 1 + usize::from(u16::from_le_bytes([data[16], data[17]])) % 4096;
    let a = u64_at(data, 18);
    let b = u64_at(data, 26);

    let p = Payloads::new(id, size);
    let (mut pa, mut pa2, mut pb) = (Vec::new(), Vec::new(), Vec::new());
    p.fill(a, &mut pa);
    p.fill(a, &mut pa2);
    p.fill(b, &mut pb);
    assert_eq!(pa.len(), size);
    assert_eq!(pa, pa2, "fill is not deterministic");

    // `next_into` walks the same payloads in order.
    let mut q = Payloads::new(id, size);
    let mut next = Vec::new();
    for seq in 0..(a % 4) {
        q.next_into(&mut next);
        p.fill(seq, &mut pa2);
        assert_eq!(next, pa2, "next_into and fill disagree at {seq}");
    }

    if size >= 8 {
        if a != b {
            assert_ne!(
                pa, pb,
                "requests {a} and {b} of connection {id} have one payload"
            );
        }
        if other_id != id {
            let o = Payloads::new(other_id, size);
            o.fill(a, &mut pb);
            assert_ne!(pa, pb, "connections {id} and {other_id} share payload {a}");
        }
    }
});
