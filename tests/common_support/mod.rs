//! Helpers every black-box test support module needs: polling for a
//! condition with a bound, and deterministic test bytes. Included by
//! `ftp_support` and `hardening_support`.
#![allow(dead_code)]

use std::time::{Duration, Instant};

/// Polls `cond` every 20 ms for up to `limit`.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    cond()
}

/// Deterministic pseudo-random bytes (xorshift), NULs and all, so no test
/// needs an RNG.
pub fn xorshift_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
