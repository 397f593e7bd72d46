//! Regression tests for what the `cargo fuzz` targets in `fuzz/` found
//! (see docs/fuzzing.md). Each replays the fuzzer's input through the
//! public API and fails on the code before its fix.

use std::io::Write;
use std::net::Shutdown;
use std::os::unix::net::UnixStream;

use socketserver::process::Connection;
use socketserver::Error;

/// A connection whose peer sent `bytes` and closed.
fn receiving(bytes: &[u8]) -> Connection {
    let (ours, mut peer) = UnixStream::pair().unwrap();
    peer.write_all(bytes).unwrap();
    peer.shutdown(Shutdown::Write).unwrap();
    Connection::from_socket(ours.into())
}

/// `connection_frames` found that `recv` accepted a frame holding bytes
/// after the encoded value (postcard's `from_bytes` ignores them): the
/// frame `[0, 0, 0, 5, 5]` decoded as the empty string, whose encoding is
/// `[0]`. A frame now decodes only if the value fills it exactly.
#[test]
fn recv_refuses_bytes_after_the_message() {
    // One frame: the empty string (`[0]`), then four stray bytes.
    let mut c = receiving(&[0, 0, 0, 5, 0, 0, 0, 5, 5]);
    match c.recv::<String>() {
        Err(Error::Codec(msg)) => assert!(msg.contains("4 bytes left over"), "{msg}"),
        other => panic!("a frame with trailing bytes decoded: {other:?}"),
    }
    // The frame was consumed whole: the stream is still in step.
    assert!(matches!(c.recv::<String>(), Err(Error::Eof)));

    // The same with a frame longer than what is buffered at once (the
    // other decoding path).
    let mut frame = vec![0u8; 4];
    let mut body = vec![0x80, 0x80, 0x04]; // a 65,536-byte string ...
    body.extend(std::iter::repeat_n(b'a', 65_536));
    body.push(7); // ... and one stray byte
    frame[..4].copy_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    let (ours, mut peer) = UnixStream::pair().unwrap();
    let writer = std::thread::spawn(move || {
        peer.write_all(&frame).unwrap();
        peer.shutdown(Shutdown::Write).unwrap();
    });
    let mut c = Connection::from_socket(ours.into());
    match c.recv::<String>() {
        Err(Error::Codec(msg)) => assert!(msg.contains("1 bytes left over"), "{msg}"),
        other => panic!(
            "a frame with a trailing byte decoded: {:?}",
            other.map(|s| s.len())
        ),
    }
    writer.join().unwrap();

    // Exact frames still decode.
    let mut c = receiving(&[0, 0, 0, 3, 2, b'h', b'i']);
    assert_eq!(c.recv::<String>().unwrap(), "hi");
}
