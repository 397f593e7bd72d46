//! `loadtest`'s reading of replies (`loadtest/src/reply.rs`, included as it
//! is, not copied, with the payload generator it builds datagrams from).
//!
//! The input is a socket id, a pending window (its base sequence number,
//! which slots are still waiting, the next sequence number, the sequence
//! numbers already counted lost) and the bytes of one received datagram.
//! Properties, for any input:
//! - classification never panics, and anything shorter than the header,
//!   or whose header names another socket, is a mismatch;
//! - `Waiting` is only ever said of a slot that is waiting, with the
//!   sequence number the header carries (`base + index`);
//! - `Late` consumes the lost mark (a second copy is not late again), and
//!   `Duplicate` is only said of a sequence number below `next_seq`;
//! - the datagram loadtest itself builds for a waiting sequence number is
//!   classified `Waiting` for that slot, and any byte changed after the
//!   header makes the full comparison fail;
//! - the TCP check accepts exactly the bytes sent, no more and no fewer.
#![no_main]

#[path = "../../loadtest/src/payload.rs"]
#[allow(dead_code)]
mod payload;
#[path = "../../loadtest/src/reply.rs"]
#[allow(dead_code)]
mod reply;

use std::collections::HashSet;

use libfuzzer_sys::fuzz_target;
use payload::Payloads;
use reply::{classify_udp, datagram, tcp_echoed, UdpReply, UDP_HEADER};
use socketserver_fuzz::Counting;

/// Counts allocations and refuses any over 256 MiB.
#[global_allocator]
static ALLOC: Counting = Counting;

fn u64_at(d: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    for (i, x) in b.iter_mut().enumerate() {
        *x = d.get(at + i).copied().unwrap_or(0);
    }
    u64::from_le_bytes(b)
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 24 {
        return;
    }
    let id = u64_at(data, 0) as u32 % 4;
    let base = u64_at(data, 4) % 1000;
    let window = u64_at(data, 12); // bit i: slot i is waiting (64 slots)
    let next_seq = base + 64;
    let lost_bits = data[20]; // lost marks for sequence numbers base-8..base
    let mut lost: HashSet<u64> = (0..8u64)
        .filter(|i| lost_bits & (1 << i) != 0)
        .filter_map(|i| base.checked_sub(i + 1))
        .collect();
    let rx = &data[21..];
    let waiting = |i: usize| i < 64 && window & (1 << i) != 0;

    // Any bytes.
    let before = lost.clone();
    match classify_udp(rx, id, base, waiting, &mut lost, next_seq) {
        UdpReply::Waiting { seq, index } => {
            assert!(rx.len() >= UDP_HEADER);
            assert!(waiting(index));
            assert_eq!(seq, base + index as u64);
            assert_eq!(u64_at(rx, 0), seq);
            assert_eq!(lost, before);
        }
        UdpReply::Late => {
            let seq = u64_at(rx, 0);
            assert!(before.contains(&seq) && !lost.contains(&seq));
            let again = classify_udp(rx, id, base, waiting, &mut lost, next_seq);
            assert_ne!(again, UdpReply::Late);
        }
        UdpReply::Duplicate => {
            assert!(u64_at(rx, 0) < next_seq);
            assert_eq!(lost, before);
        }
        UdpReply::Mismatch => assert_eq!(lost, before),
    }
    if rx.len() < UDP_HEADER {
        assert_eq!(
            classify_udp(rx, id, base, |_| true, &mut lost.clone(), u64::MAX),
            UdpReply::Mismatch
        );
    }

    // What loadtest itself sends, for a waiting slot, comes back as that
    // slot; a changed payload byte fails the byte comparison.
    if let Some(index) = (0..64usize).find(|&i| waiting(i)) {
        let size = UDP_HEADER + usize::from(data[21 % data.len()]) % 200;
        let p = Payloads::new(u64::from(id) | 1 << 40, size);
        let seq = base + index as u64;
        let mut sent = Vec::new();
        datagram(&p, id, seq, u64_at(data, 4), &mut sent);
        assert_eq!(sent.len(), size);
        assert_eq!(
            classify_udp(&sent, id, base, waiting, &mut HashSet::new(), next_seq),
            UdpReply::Waiting { seq, index }
        );
        if size > UDP_HEADER {
            let mut changed = sent.clone();
            let at = UDP_HEADER + usize::from(data[22]) % (size - UDP_HEADER);
            changed[at] ^= 1 | data[23];
            let mut expect = Vec::new();
            datagram(&p, id, seq, u64_at(data, 4), &mut expect);
            assert_ne!(changed, expect);
        }
    }

    // TCP: exactly the bytes sent.
    let tx = &rx[..rx.len() / 2];
    let mut buf = tx.to_vec();
    buf.push(0);
    assert!(tcp_echoed(tx, &buf, tx.len()));
    assert!(!tcp_echoed(tx, &buf, tx.len() + 1));
    if !tx.is_empty() {
        assert!(!tcp_echoed(tx, &buf, tx.len() - 1));
        buf[0] ^= 0x55;
        assert!(!tcp_echoed(tx, &buf, tx.len()));
    }
});
