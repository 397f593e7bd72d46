//! The `Listener`/`Client` authkey handshake, run by the crate's own code
//! against a peer whose bytes are the fuzz input.
//!
//! Input: one byte choosing the side we play (listener or client), then
//! everything the peer sends before closing.
//!
//! Properties:
//! - the handshake never succeeds: the peer does not know the key, and
//!   cannot answer our fresh random challenge with bytes fixed in advance;
//!   it fails as `AuthenticationFailed` (or an I/O error), never by
//!   waiting for the timeout;
//! - what we send is exactly the protocol: our challenge is `#CHALLENGE#`
//!   and 32 bytes, our answer to a valid challenge is HMAC-SHA256(key,
//!   challenge) (checked with an independent HMAC), and the key itself
//!   never crosses the wire;
//! - never reads more than its cap: a handshake message over 256 bytes is
//!   refused from its length field, so the memory held while the
//!   handshake runs stays within the connection's read buffer and a small
//!   constant, whatever length the peer declares.
#![no_main]

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use hmac::{Hmac, Mac};
use libfuzzer_sys::fuzz_target;
use sha2::Sha256;
use socketserver::fuzzing::{handshake, Side, HANDSHAKE_MAX};
use socketserver::process::Connection;
use socketserver::Error;
use socketserver_fuzz::{peak_since, start_measuring, Counting};

#[global_allocator]
static ALLOC: Counting = Counting;

const KEY: &[u8] = b"fuzzing authkey: 32 bytes long!!";
const READ_BUF: usize = 64 * 1024;
const CHALLENGE: &[u8] = b"#CHALLENGE#";
const WELCOME: &[u8] = b"#WELCOME#";

/// Splits `s` into whole frames (length-prefixed), ignoring a torn tail.
fn frames(mut s: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while s.len() >= 4 {
        let len = u32::from_be_bytes(s[..4].try_into().unwrap()) as usize;
        if s.len() - 4 < len {
            break;
        }
        out.push(&s[4..4 + len]);
        s = &s[4 + len..];
    }
    out
}

fn valid_challenge(m: &[u8]) -> bool {
    m.starts_with(CHALLENGE) && m.len() >= CHALLENGE.len() + 32 && m.len() <= HANDSHAKE_MAX
}

fuzz_target!(|data: &[u8]| {
    let Some((&config, peer_bytes)) = data.split_first() else {
        return;
    };
    let side = if config & 1 == 0 {
        Side::Listener
    } else {
        Side::Client
    };
    let (ours, mut peer) = UnixStream::pair().unwrap();
    peer.write_all(peer_bytes).unwrap();
    peer.shutdown(Shutdown::Write).unwrap();

    let base = start_measuring();
    let mut conn = Connection::from_socket(ours.into());
    let result = handshake(&mut conn, KEY, side, Duration::from_secs(5));
    let peak = peak_since(base);
    drop(conn);

    match &result {
        Ok(()) => panic!("handshake accepted a peer that does not know the key ({side:?})"),
        Err(Error::AuthenticationFailed(_) | Error::Io(_)) => {}
        Err(e) => panic!("handshake failed with {e:?}, expected an authentication failure"),
    }
    let allowed = READ_BUF + 4 * HANDSHAKE_MAX + 8 * 1024;
    assert!(
        peak <= allowed,
        "{peak} bytes live during the handshake (allowed {allowed})"
    );

    // What we sent.
    let mut sent = Vec::new();
    peer.read_to_end(&mut sent).unwrap();
    assert!(
        !sent.windows(KEY.len()).any(|w| w == KEY),
        "the key crossed the wire"
    );
    let ours = frames(&sent);
    let theirs = frames(peer_bytes);
    assert!(ours.len() <= 3, "{} handshake messages sent", ours.len());
    assert!(ours.iter().all(|m| m.len() <= HANDSHAKE_MAX));
    match side {
        Side::Listener => {
            let first = ours.first().expect("the listener challenges first");
            assert!(first.starts_with(CHALLENGE) && first.len() == CHALLENGE.len() + 32);
        }
        Side::Client => {
            if let Some(challenge) = theirs.first().filter(|m| valid_challenge(m)) {
                let mut mac = Hmac::<Sha256>::new_from_slice(KEY).unwrap();
                mac.update(challenge);
                let digest = mac.finalize().into_bytes();
                assert_eq!(
                    ours.first().copied(),
                    Some(&digest[..]),
                    "wrong digest sent"
                );
                if theirs.get(1).copied() == Some(WELCOME) {
                    // Then we challenge the peer.
                    let ch = ours.get(1).expect("our challenge after #WELCOME#");
                    assert!(ch.starts_with(CHALLENGE) && ch.len() == CHALLENGE.len() + 32);
                } else {
                    assert_eq!(ours.len(), 1, "nothing after the peer's rejection");
                }
            } else {
                assert!(ours.is_empty(), "answered an invalid challenge");
            }
        }
    }
});
