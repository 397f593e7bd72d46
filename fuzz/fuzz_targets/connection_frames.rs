//! `Connection` frames (4-byte big-endian length + payload) as received
//! from a peer over a real socket.
//!
//! Input: one configuration byte (maximum message size, receive method),
//! then the bytes the peer sends before closing.
//!
//! Properties:
//! - the frames received are exactly those the wire format defines, and
//!   the reading ends exactly as it defines: `Eof` after a whole frame,
//!   `TruncatedFrame` with the right counts, `MessageTooLarge` for a
//!   declared length over the maximum (then `Closed`: the stream is out of
//!   step);
//! - every frame received, sent again with `send_bytes`, gives the same
//!   bytes on the wire; a `recv::<T>` value sent again decodes to itself
//!   (not necessarily the same bytes: postcard accepts overlong varints);
//! - memory: the receiving side never holds more than its read buffer, the
//!   largest frame it accepted, a buffer for the bytes of a torn frame
//!   that arrived (not its declared length, up to the 32 MiB default
//!   maximum) and a small constant; a forged length over the maximum
//!   allocates nothing.
#![no_main]

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;

use libfuzzer_sys::fuzz_target;
use serde::{Deserialize, Serialize};
use socketserver::process::{Connection, DEFAULT_MAX_MESSAGE_SIZE};
use socketserver::Error;
use socketserver_fuzz::{peak_since, start_measuring, Counting};

#[global_allocator]
static ALLOC: Counting = Counting;

/// The connection's read buffer (`READ_BUF` in connection.rs).
const READ_BUF: usize = 64 * 1024;

/// Maximum message sizes to try: the largest is the 32 MiB default, over
/// the read buffer (the payload-read path). A forged length up to the
/// maximum costs the receiver only what arrives of that frame.
const MAXES: [usize; 8] = [0, 1, 4, 255, 256, 4096, 65_536, DEFAULT_MAX_MESSAGE_SIZE];

#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum Message {
    Text(String),
    Number(u64, i32),
    Bytes(Vec<u8>),
    List(Vec<Option<String>>),
}

/// What the wire format says the stream holds.
#[derive(Debug)]
enum End {
    Eof,
    Truncated { expected: usize, got: usize },
    TooLarge(usize),
}

fn model(mut s: &[u8], max: usize) -> (Vec<&[u8]>, End) {
    let mut frames = Vec::new();
    loop {
        if s.is_empty() {
            return (frames, End::Eof);
        }
        if s.len() < 4 {
            return (
                frames,
                End::Truncated {
                    expected: 4,
                    got: s.len(),
                },
            );
        }
        let len = u32::from_be_bytes(s[..4].try_into().unwrap()) as usize;
        if len > max {
            return (frames, End::TooLarge(len));
        }
        if s.len() - 4 < len {
            return (
                frames,
                End::Truncated {
                    expected: len,
                    got: s.len() - 4,
                },
            );
        }
        frames.push(&s[4..4 + len]);
        s = &s[4 + len..];
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&config, stream)) = data.split_first() else {
        return;
    };
    let max = MAXES[usize::from(config & 7)];
    let method = (config >> 3) % 3;
    let (frames, end) = model(stream, max);
    let largest = frames.iter().map(|f| f.len()).max().unwrap_or(0);

    // The peer writes everything and closes its sending side.
    let (ours, mut peer) = UnixStream::pair().unwrap();
    peer.write_all(stream).unwrap();
    peer.shutdown(Shutdown::Write).unwrap();
    // A second socket to send each frame again and read it back: as raw
    // bytes, or (for `recv::<T>`) with a second connection.
    let (again_tx, again_rx) = UnixStream::pair().unwrap();
    let mut again = Connection::from_socket(again_tx.into());
    let (mut again_raw, mut again_conn) = if method == 2 {
        (None, Some(Connection::from_socket(again_rx.into())))
    } else {
        (Some(again_rx), None)
    };

    let base = start_measuring();
    let mut conn = Connection::from_socket(ours.into());
    conn.set_max_message_size(max);
    let mut reused = Vec::new();
    let mut got = 0usize;
    let result = loop {
        let r = match method {
            0 => conn.recv_bytes(),
            1 => conn
                .recv_bytes_into(&mut reused)
                .map(|n| reused[..n].to_vec()),
            _ => match conn.recv::<Message>() {
                Ok(m) => {
                    // postcard accepts overlong varints, so the bytes may
                    // differ from the frame's; the value may not.
                    again.send(&m).unwrap();
                    let back = again_conn.as_mut().unwrap().recv::<Message>().unwrap();
                    assert_eq!(back, m, "a decoded message re-encodes to another value");
                    got += 1;
                    continue;
                }
                Err(Error::Codec(_)) => {
                    // Not a `Message`: the frame itself was still consumed.
                    got += 1;
                    continue;
                }
                Err(e) => Err(e),
            },
        };
        match r {
            Ok(frame) => {
                assert!(got < frames.len(), "more frames than were sent");
                assert_eq!(frame, frames[got]);
                again.send_bytes(&frame).unwrap();
                let mut raw = vec![0u8; 4 + frame.len()];
                again_raw.as_mut().unwrap().read_exact(&mut raw).unwrap();
                assert_eq!(raw[..4], (frame.len() as u32).to_be_bytes());
                assert_eq!(raw[4..], frame[..], "a frame re-encodes differently");
                got += 1;
            }
            Err(e) => break e,
        }
    };
    let peak = peak_since(base);
    // A torn frame's buffer grows by doubling with what arrives, from the
    // read buffer's size or the reused buffer's (the largest frame); a
    // reallocation briefly holds old and new.
    let torn = 3 * (READ_BUF + largest + 2 * stream.len());
    let mut allowed = READ_BUF + largest * 2 + torn + 16 * 1024;
    if method == 2 {
        // Two decoded copies of a `Message`: up to 24 bytes (an
        // `Option<String>`) per encoded byte.
        allowed += 2 * 24 * largest;
    }
    assert!(
        peak <= allowed,
        "{peak} bytes live while receiving (allowed {allowed}; end {end:?})"
    );

    assert_eq!(got, frames.len(), "frames lost");
    match (end, &result) {
        (End::Eof, Error::Eof) => {}
        (
            End::Truncated { expected, got },
            Error::TruncatedFrame {
                expected: e,
                got: g,
            },
        ) if (expected, got) == (*e, *g) => {}
        (End::TooLarge(len), Error::MessageTooLarge { len: l, max: m })
            if (len, max) == (*l, *m) =>
        {
            assert!(matches!(conn.recv_bytes(), Err(Error::Closed)));
        }
        (end, result) => panic!("stream ends with {end:?}, reading ended with {result:?}"),
    }
});
