//! Reading what the server sent back: the pure part of the TCP and UDP
//! workers, kept apart from their sockets so the fuzz target
//! `fuzz/fuzz_targets/loadtest_reply.rs` drives this very code.
//!
//! A UDP datagram starts with a header: the sequence number, the send
//! time (nanoseconds since the run started) and the socket id, all little
//! endian; the rest is the payload of that sequence number. A reply is
//! only an echo when its header names one of this socket's datagrams
//! still waiting, and every byte matches what was sent.

use std::collections::HashSet;

use crate::payload::Payloads;

/// Bytes of the UDP header: sequence number, timestamp, socket id.
pub const UDP_HEADER: usize = 8 + 8 + 4;

/// Builds datagram `seq` of socket `id`, stamped with `sent` (nanoseconds
/// since the run started), into `out` (which takes the payload's size).
pub fn datagram(p: &Payloads, id: u32, seq: u64, sent: u64, out: &mut Vec<u8>) {
    p.fill(seq, out);
    out[0..8].copy_from_slice(&seq.to_le_bytes());
    out[8..16].copy_from_slice(&sent.to_le_bytes());
    out[16..20].copy_from_slice(&id.to_le_bytes());
}

/// What a received datagram is, judged by its header alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UdpReply {
    /// The echo of the datagram waiting at `pending[index]` (sequence
    /// `seq`); its bytes still have to match.
    Waiting {
        /// Its sequence number.
        seq: u64,
        /// Its place in the pending window.
        index: usize,
    },
    /// The echo of a datagram already counted as lost (it came after its
    /// timeout); it is forgotten, so a second copy is a duplicate.
    Late,
    /// A second echo of a datagram this socket sent and already matched.
    Duplicate,
    /// Too short, not from this socket, or a sequence number never sent.
    Mismatch,
}

/// Classifies `data`, received by socket `id` whose pending window starts
/// at sequence `base` (`waiting(i)`: is `base + i` still unanswered) and
/// whose next sequence number is `next_seq`.
pub fn classify_udp(
    data: &[u8],
    id: u32,
    base: u64,
    waiting: impl Fn(usize) -> bool,
    lost: &mut HashSet<u64>,
    next_seq: u64,
) -> UdpReply {
    let (Some(seq), Some(their_id)) = (
        data.get(0..8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default())),
        data.get(16..20)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap_or_default())),
    ) else {
        return UdpReply::Mismatch;
    };
    if their_id != id {
        return UdpReply::Mismatch;
    }
    if let Some(index) = seq
        .checked_sub(base)
        .and_then(|i| usize::try_from(i).ok())
        .filter(|&i| waiting(i))
    {
        return UdpReply::Waiting { seq, index };
    }
    if lost.remove(&seq) {
        UdpReply::Late
    } else if seq < next_seq {
        UdpReply::Duplicate
    } else {
        UdpReply::Mismatch
    }
}

/// Whether a TCP exchange that read `n` bytes into `rx` echoed `tx`
/// exactly (`rx` is one byte longer than `tx`, so a server that adds
/// bytes is caught too).
pub fn tcp_echoed(tx: &[u8], rx: &[u8], n: usize) -> bool {
    n == tx.len() && rx.get(..n) == Some(tx)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dgram(id: u32, seq: u64) -> Vec<u8> {
        let p = Payloads::new(u64::from(id) | 1 << 40, 64);
        let mut out = Vec::new();
        datagram(&p, id, seq, 123, &mut out);
        out
    }

    #[test]
    fn a_waiting_datagram_is_recognised_by_its_header() {
        let mut lost = HashSet::new();
        let d = dgram(7, 12);
        assert_eq!(d.len(), 64);
        let r = classify_udp(&d, 7, 10, |i| i == 2, &mut lost, 20);
        assert_eq!(r, UdpReply::Waiting { seq: 12, index: 2 });
    }

    #[test]
    fn late_duplicate_foreign_and_short_replies() {
        let mut lost: HashSet<u64> = [3].into_iter().collect();
        let d = dgram(7, 3);
        assert_eq!(
            classify_udp(&d, 7, 10, |_| true, &mut lost, 20),
            UdpReply::Late
        );
        // Forgotten once late: the next copy is a duplicate.
        assert_eq!(
            classify_udp(&d, 7, 10, |_| true, &mut lost, 20),
            UdpReply::Duplicate
        );
        assert_eq!(
            classify_udp(&d, 8, 0, |_| true, &mut lost, 20),
            UdpReply::Mismatch
        );
        assert_eq!(
            classify_udp(&d[..19], 7, 0, |_| true, &mut lost, 20),
            UdpReply::Mismatch
        );
        let never_sent = dgram(7, 25);
        assert_eq!(
            classify_udp(&never_sent, 7, 10, |_| false, &mut lost, 20),
            UdpReply::Mismatch
        );
    }

    #[test]
    fn tcp_echo_must_match_exactly() {
        let tx = b"hello";
        assert!(tcp_echoed(tx, b"hello\0", 5));
        assert!(!tcp_echoed(tx, b"hellox", 6));
        assert!(!tcp_echoed(tx, b"hellp\0", 5));
        assert!(!tcp_echoed(tx, b"hel", 3));
    }
}
