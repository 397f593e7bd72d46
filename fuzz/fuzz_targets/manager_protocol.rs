//! The Manager protocol: the manager server's per-client loop (frame
//! reading, JSON request decoding, the object store's operations) fed a
//! client's bytes, and the proxy's decoding of every response it sends.
//!
//! Input: the bytes a client sends (length-prefixed JSON requests) before
//! closing. Requests that may wait for *another* client (acquiring a held
//! lock, taking from an empty queue, putting into a full one) with a wait
//! over 1 ms are left out: with one client nothing would ever wake them,
//! which is correct behaviour, not a bug.
//!
//! Properties:
//! - the server answers every whole request frame it reads with exactly
//!   one response, which decodes as a `Response`; it stops after
//!   `Shutdown` (and reports it), at end of input, or at a frame over the
//!   maximum message size, never otherwise;
//! - memory: serving holds at most two read buffers, 64 bytes per input
//!   byte and a small constant, whatever length a frame declares (up to
//!   the 32 MiB maximum): a forged length buys nothing;
//! - no panic, no unbounded wait.
#![no_main]

use std::io::Write;
use std::net::Shutdown;
use std::os::unix::net::UnixStream;

use libfuzzer_sys::fuzz_target;
use socketserver::fuzzing::{
    manager_decode_response, manager_request_kind, ManagerStore, RequestKind,
};
use socketserver::process::{Connection, DEFAULT_MAX_MESSAGE_SIZE};
use socketserver::Error;
use socketserver_fuzz::{peak_since, start_measuring, Counting};

/// The maximum message size of the served connection: the manager's, the
/// 32 MiB default. A forged length up to it costs the server only what
/// arrives of that frame.
const MAX_MESSAGE: usize = DEFAULT_MAX_MESSAGE_SIZE;

/// The connection's read buffer (`READ_BUF` in connection.rs).
const READ_BUF: usize = 64 * 1024;

/// Longest input: the server's responses to it must fit in the socket
/// buffer, since they are read after the server is done. At most 18
/// requests fit in 512 bytes, each response at most 6 bytes per input byte
/// (JSON's `\u0000` escapes): well under the 208 KiB default buffer.
/// Run with `-max_len=512`; longer inputs are skipped.
const MAX_INPUT: usize = 512;

/// Counts allocations and refuses any over 256 MiB.
#[global_allocator]
static ALLOC: Counting = Counting;

fuzz_target!(|data: &[u8]| {
    if data.len() > MAX_INPUT {
        return;
    }
    // Keep the requests the server can answer alone; stop at Shutdown.
    let mut stream = Vec::with_capacity(data.len());
    let mut requests = 0usize;
    let mut shutdown = false;
    let mut s = data;
    while s.len() >= 4 {
        let len = u32::from_be_bytes(s[..4].try_into().unwrap()) as usize;
        if len > MAX_MESSAGE || s.len() - 4 < len {
            // The server stops here (oversized or torn frame).
            stream.extend_from_slice(s);
            s = &[];
            break;
        }
        let frame = &s[..4 + len];
        s = &s[4 + len..];
        match manager_request_kind(&frame[4..]) {
            RequestKind::MayWait { waits_ms } if waits_ms.is_none_or(|ms| ms > 1) => continue,
            RequestKind::Shutdown => {
                stream.extend_from_slice(frame);
                requests += 1;
                shutdown = true;
                break;
            }
            _ => {
                stream.extend_from_slice(frame);
                requests += 1;
            }
        }
    }
    if !shutdown {
        stream.extend_from_slice(s);
    }

    let (ours, mut client) = UnixStream::pair().unwrap();
    client.write_all(&stream).unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    let base = start_measuring();
    let store = ManagerStore::new();
    let mut conn = Connection::from_socket(ours.into());
    conn.set_max_message_size(MAX_MESSAGE);
    let stopped = store.serve(conn);
    drop(store);
    let peak = peak_since(base);
    // The connection's read buffer, one frame's buffer (64 KiB until more
    // arrives), the store and the responses.
    let allowed = 2 * READ_BUF + 64 * data.len() + 64 * 1024;
    assert!(
        peak <= allowed,
        "{peak} bytes live while serving (allowed {allowed})"
    );
    // The server dropped its end: read every response, as a proxy would.
    let mut responses = Connection::from_socket(client.into());
    let mut answered = 0usize;
    loop {
        match responses.recv_bytes() {
            Ok(frame) => match manager_decode_response(&frame) {
                Ok(()) => answered += 1,
                Err(e) => panic!("response {answered} does not decode: {e}"),
            },
            Err(Error::Eof) => break,
            // The server closed with request bytes unread (after an
            // oversized or torn frame): every response was read before.
            Err(Error::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("reading responses: {e}"),
        }
    }
    assert_eq!(stopped, shutdown, "serve's shutdown report");
    assert_eq!(answered, requests, "one decodable response per request");
});
