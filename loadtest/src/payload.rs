//! Request payloads that differ from one request to the next, so a server
//! that replays stale data, drops or corrupts bytes is caught.

/// How far the pattern window slides; the pattern buffer is this much
/// longer than a message.
const SLIDE: usize = 251;

/// Produces per-request payloads for one connection without generating
/// random bytes per request: a random pattern is made once, each request
/// takes a window at a request-dependent offset, and its first bytes carry
/// the connection id and request number (so even requests whose windows
/// coincide differ).
#[derive(Debug)]
pub struct Payloads {
    pattern: Vec<u8>,
    size: usize,
    salt: u64,
    seq: u64,
}

impl Payloads {
    /// A payload source for connection `id` with messages of `size` bytes.
    pub fn new(id: u64, size: usize) -> Self {
        let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ id.wrapping_mul(0xD1B5_4A32_D192_ED03);
        let mut pattern = vec![0u8; size + SLIDE];
        for chunk in pattern.chunks_mut(8) {
            state = splitmix(state);
            chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
        }
        Payloads {
            pattern,
            size,
            salt: splitmix(id),
            seq: 0,
        }
    }

    /// Writes the next request's payload into `out` (resized to the message
    /// size).
    pub fn next_into(&mut self, out: &mut Vec<u8>) {
        let seq = self.seq;
        self.seq += 1;
        self.fill(seq, out);
    }

    /// Writes request `seq`'s payload into `out`; the same `seq` always
    /// gives the same bytes.
    pub fn fill(&self, seq: u64, out: &mut Vec<u8>) {
        let off = (seq.wrapping_mul(97) % SLIDE as u64) as usize;
        out.clear();
        out.extend_from_slice(&self.pattern[off..off + self.size]);
        let tag = (self.salt ^ seq).to_le_bytes();
        let n = tag.len().min(self.size);
        out[..n].copy_from_slice(&tag[..n]);
    }
}

/// One step of splitmix64: a cheap, well-mixed 64-bit generator.
pub fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consecutive_payloads_differ() {
        let mut p = Payloads::new(3, 64);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        p.next_into(&mut a);
        for _ in 0..1000 {
            p.next_into(&mut b);
            assert_eq!(b.len(), 64);
            assert_ne!(a, b);
            std::mem::swap(&mut a, &mut b);
        }
    }

    #[test]
    fn tiny_sizes_work() {
        let mut p = Payloads::new(1, 1);
        let mut a = Vec::new();
        p.next_into(&mut a);
        assert_eq!(a.len(), 1);
    }
}
