//! `Connection` framing and `pipe()` within one process (threads only).

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use socketserver::process::{pipe, Connection, DEFAULT_MAX_MESSAGE_SIZE};
use socketserver::Error;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Job {
    id: u64,
    name: String,
    weights: Vec<f32>,
    reply: Option<(i32, bool)>,
}

/// The largest single allocation (or reallocation) the current thread
/// asked for since [`largest_allocation_reset`]: libtest runs tests on
/// several threads, so the count is per thread.
mod alloc_watch {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    thread_local! {
        static LARGEST: Cell<usize> = const { Cell::new(0) };
    }

    struct Watch;

    fn note(size: usize) {
        let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
    }

    // SAFETY: every call is forwarded unchanged to the system allocator;
    // the thread-local is const-initialised and never allocates.
    unsafe impl GlobalAlloc for Watch {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            note(layout.size());
            // SAFETY: forwarded with the caller's layout.
            unsafe { System.alloc(layout) }
        }
        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            note(layout.size());
            // SAFETY: forwarded with the caller's layout.
            unsafe { System.alloc_zeroed(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: `ptr` came from `System` with this layout.
            unsafe { System.dealloc(ptr, layout) }
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            note(new_size);
            // SAFETY: `ptr` came from `System` with this layout.
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }

    #[global_allocator]
    static WATCH: Watch = Watch;

    pub fn reset() {
        LARGEST.with(|l| l.set(0));
    }

    pub fn largest() -> usize {
        LARGEST.with(Cell::get)
    }
}

fn raw_pair() -> (Connection, UnixStream) {
    let (a, b) = UnixStream::pair().expect("socketpair");
    (Connection::from_socket(a.into()), b)
}

#[test]
fn struct_round_trip_duplex() {
    let (mut a, mut b) = pipe(true).unwrap();
    let job = Job {
        id: 7,
        name: "résumé".into(),
        weights: vec![0.5, -1.25],
        reply: Some((-3, true)),
    };
    a.send(&job).unwrap();
    let got: Job = b.recv().unwrap();
    assert_eq!(got, job);
    b.send(&"pong").unwrap();
    assert_eq!(a.recv::<String>().unwrap(), "pong");
}

#[test]
fn bytes_round_trip_including_empty_and_large() {
    let (mut r, mut w) = pipe(false).unwrap();
    let big: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    let expect = big.clone();
    let writer = std::thread::spawn(move || {
        w.send_bytes(b"").unwrap();
        w.send_bytes(b"hello").unwrap();
        w.send_bytes(&big).unwrap();
        for i in 0..1000u32 {
            w.send(&i).unwrap();
        }
    });
    assert_eq!(r.recv_bytes().unwrap(), b"");
    assert_eq!(r.recv_bytes().unwrap(), b"hello");
    assert_eq!(r.recv_bytes().unwrap(), expect);
    for i in 0..1000u32 {
        assert_eq!(r.recv::<u32>().unwrap(), i);
    }
    writer.join().unwrap();
    assert!(matches!(r.recv_bytes(), Err(Error::Eof)));
}

#[test]
fn one_way_pipe_ends_are_one_way() {
    let (mut r, mut w) = pipe(false).unwrap();
    assert!(r.readable() && !r.writable());
    assert!(w.writable() && !w.readable());
    assert!(matches!(r.send(&1u8), Err(Error::InvalidArgument(_))));
    assert!(matches!(w.recv::<u8>(), Err(Error::InvalidArgument(_))));
}

#[test]
fn peer_close_between_frames_is_eof() {
    let (mut a, mut b) = pipe(true).unwrap();
    a.send(&1u16).unwrap();
    drop(a);
    assert_eq!(b.recv::<u16>().unwrap(), 1);
    assert!(matches!(b.recv::<u16>(), Err(Error::Eof)));
    assert!(matches!(b.recv_bytes(), Err(Error::Eof)));
}

#[test]
fn truncated_payload_is_an_error() {
    for into in [false, true] {
        let (mut conn, mut raw) = raw_pair();
        raw.write_all(&10u32.to_be_bytes()).unwrap();
        raw.write_all(b"abc").unwrap();
        drop(raw);
        let got = if into {
            conn.recv_bytes_into(&mut vec![1u8; 64]).map(|_| ())
        } else {
            conn.recv_bytes().map(|_| ())
        };
        match got {
            Err(Error::TruncatedFrame {
                expected: 10,
                got: 3,
            }) => {}
            other => panic!("recv_bytes (into: {into}): expected TruncatedFrame, got {other:?}"),
        }
    }
}

#[test]
fn truncated_header_is_an_error() {
    let (mut conn, mut raw) = raw_pair();
    raw.write_all(&[0, 0]).unwrap();
    drop(raw);
    match conn.recv::<u8>() {
        Err(Error::TruncatedFrame {
            expected: 4,
            got: 2,
        }) => {}
        other => panic!("expected TruncatedFrame, got {other:?}"),
    }
}

#[test]
fn oversize_frame_rejected_before_allocating() {
    let (mut conn, mut raw) = raw_pair();
    conn.set_max_message_size(1024);
    // Announce 4 GiB - 1: allocating it would abort the test.
    raw.write_all(&u32::MAX.to_be_bytes()).unwrap();
    match conn.recv_bytes() {
        Err(Error::MessageTooLarge { len, max: 1024 }) => assert_eq!(len, u32::MAX as usize),
        other => panic!("expected MessageTooLarge, got {other:?}"),
    }
    // The stream is out of step now; it refuses to go on.
    assert!(matches!(conn.recv_bytes(), Err(Error::Closed)));
}

/// A peer that declares a large frame (within the maximum) and sends
/// only a few bytes of it makes the receiver hold memory for what
/// arrived, not for what it declared: four bytes must not buy 32 MiB.
#[test]
fn declared_length_alone_does_not_allocate_the_frame() {
    const DECLARED: usize = DEFAULT_MAX_MESSAGE_SIZE - 1;
    for into in [false, true] {
        let (mut conn, mut raw) = raw_pair();
        raw.write_all(&(DECLARED as u32).to_be_bytes()).unwrap();
        raw.write_all(&[7u8; 100]).unwrap();
        let writer = std::thread::spawn(move || {
            // Arrives after the receiver has started on the frame.
            std::thread::sleep(Duration::from_millis(50));
            raw.write_all(&[8u8; 200_000]).unwrap();
            drop(raw);
        });
        alloc_watch::reset();
        let mut buf = Vec::new();
        let got = if into {
            conn.recv_bytes_into(&mut buf).map(|_| ())
        } else {
            conn.recv_bytes().map(|_| ())
        };
        let largest = alloc_watch::largest();
        writer.join().unwrap();
        match got {
            Err(Error::TruncatedFrame {
                expected: DECLARED,
                got: 200_100,
            }) => {}
            other => panic!("into: {into}: expected TruncatedFrame, got {other:?}"),
        }
        assert!(
            largest <= 1 << 20,
            "into: {into}: 200,100 bytes of a declared {DECLARED} took an allocation of {largest}"
        );
    }
}

#[test]
fn oversize_send_is_refused_and_nothing_is_written() {
    let (mut a, mut b) = pipe(true).unwrap();
    a.set_max_message_size(16);
    assert!(matches!(
        a.send_bytes(&[0; 17]),
        Err(Error::MessageTooLarge { len: 17, max: 16 })
    ));
    assert!(matches!(
        a.send(&vec![1u8; 100]),
        Err(Error::MessageTooLarge { .. })
    ));
    assert!(!b.poll(Duration::ZERO).unwrap());
    a.send_bytes(&[9; 16]).unwrap();
    assert_eq!(b.recv_bytes().unwrap(), vec![9; 16]);
    assert_eq!(DEFAULT_MAX_MESSAGE_SIZE, 32 << 20);
}

#[test]
fn poll_times_out_then_sees_data() {
    let (mut a, b) = pipe(true).unwrap();
    let t = Instant::now();
    assert!(!b.poll(Duration::from_millis(100)).unwrap());
    assert!(
        t.elapsed() >= Duration::from_millis(95),
        "{:?}",
        t.elapsed()
    );
    a.send(&5u8).unwrap();
    assert!(b.poll(Duration::from_secs(5)).unwrap());
    drop(a);
    // Still true: the message is there, and after it EOF is readable too.
    assert!(b.poll(Duration::ZERO).unwrap());
}

#[test]
fn codec_error_on_wrong_type() {
    let (mut a, mut b) = pipe(true).unwrap();
    a.send_bytes(&[0xff, 0xff, 0xff]).unwrap();
    assert!(matches!(b.recv::<String>(), Err(Error::Codec(_))));
}

#[test]
fn closed_connection_reports_closed() {
    let (mut a, mut b) = pipe(true).unwrap();
    a.close();
    a.close();
    assert!(a.closed());
    assert!(a.fileno().is_none());
    assert!(matches!(a.send(&1u8), Err(Error::Closed)));
    assert!(matches!(a.recv::<u8>(), Err(Error::Closed)));
    assert!(matches!(a.poll(Duration::ZERO), Err(Error::Closed)));
    assert!(matches!(b.recv::<u8>(), Err(Error::Eof)));
    // Sending to a closed peer is an error, not a SIGPIPE.
    assert!(matches!(b.send(&1u8), Err(Error::Io(_))));
}

#[test]
fn send_buffer_holds_messages_until_flush() {
    let (mut r, mut w) = pipe(false).unwrap();
    w.set_send_buffer(4096).unwrap();
    for i in 0..10u32 {
        w.send(&i).unwrap();
    }
    assert!(
        !r.poll(Duration::ZERO).unwrap(),
        "buffered messages leaked out early"
    );
    w.flush().unwrap();
    for i in 0..10u32 {
        assert_eq!(r.recv::<u32>().unwrap(), i);
    }
    // Filling the buffer writes it without an explicit flush.
    for _ in 0..200 {
        w.send_bytes(&[5; 60]).unwrap();
    }
    assert!(r.poll(Duration::from_secs(5)).unwrap());
    // Drop flushes the rest, then the reader sees EOF.
    drop(w);
    let mut n = 0;
    loop {
        match r.recv_bytes() {
            Ok(m) => {
                assert_eq!(m, vec![5; 60]);
                n += 1;
            }
            Err(Error::Eof) => break,
            Err(e) => panic!("{e:?}"),
        }
    }
    assert_eq!(n, 200);
}

#[test]
fn buffered_duplex_flushes_before_blocking_in_recv() {
    let (mut a, mut b) = pipe(true).unwrap();
    a.set_send_buffer(1 << 16).unwrap();
    let echo = std::thread::spawn(move || {
        while let Ok(m) = b.recv_bytes() {
            b.send_bytes(&m).unwrap();
        }
    });
    for i in 0..50u32 {
        a.send(&i).unwrap();
        // Would deadlock if the request stayed in our buffer.
        assert_eq!(a.recv::<u32>().unwrap(), i);
    }
    drop(a);
    echo.join().unwrap();
}

#[test]
fn recv_bytes_into_reuses_the_buffer_and_replaces_its_contents() {
    let (mut a, mut b) = pipe(true).unwrap();
    let big = vec![7u8; 300_000];
    let writer = std::thread::spawn(move || {
        a.send_bytes(&big).unwrap();
        a.send_bytes(b"short").unwrap();
        a.send_bytes(b"").unwrap();
        a
    });
    let mut buf = Vec::new();
    assert_eq!(b.recv_bytes_into(&mut buf).unwrap(), 300_000);
    assert!(buf.len() == 300_000 && buf.iter().all(|&x| x == 7));
    let cap = buf.capacity();
    assert_eq!(b.recv_bytes_into(&mut buf).unwrap(), 5);
    assert_eq!(buf, b"short");
    assert_eq!(buf.capacity(), cap, "the buffer was reallocated");
    assert_eq!(b.recv_bytes_into(&mut buf).unwrap(), 0);
    assert!(buf.is_empty());
    drop(writer.join().unwrap());
    assert!(matches!(b.recv_bytes_into(&mut buf), Err(Error::Eof)));
}

#[test]
fn poll_spin_gives_up_after_its_budget_and_sees_data_at_once() {
    let (mut a, b) = pipe(true).unwrap();
    let t = Instant::now();
    assert!(!b.poll_spin(Duration::from_millis(20)).unwrap());
    assert!(
        t.elapsed() >= Duration::from_millis(20),
        "{:?}",
        t.elapsed()
    );
    a.send(&1u8).unwrap();
    // Data already there: true on the first check, even with no budget.
    assert!(b.poll_spin(Duration::ZERO).unwrap());
    // A message sent while the reader spins is seen within the budget.
    let (mut c, d) = pipe(true).unwrap();
    let sender = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(5));
        c.send(&2u8).unwrap();
        c
    });
    assert!(d.poll_spin(Duration::from_secs(10)).unwrap());
    drop(sender.join().unwrap());
    // The send-only end of a one-way pipe cannot be polled.
    let (_reader, writer) = pipe(false).unwrap();
    assert!(matches!(
        writer.poll_spin(Duration::ZERO),
        Err(Error::InvalidArgument(_))
    ));
}

/// `len` as a frame header followed by `payload`.
fn frame(payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(payload);
    f
}

#[test]
fn several_messages_in_one_write_come_out_one_by_one() {
    let (mut conn, mut raw) = raw_pair();
    let mut burst = Vec::new();
    for i in 0..100u8 {
        burst.extend_from_slice(&frame(&vec![i; usize::from(i)]));
    }
    // One write: the receiver's first read gets every frame at once.
    raw.write_all(&burst).unwrap();
    for i in 0..100u8 {
        let mut into = Vec::new();
        let got = if i % 2 == 0 {
            conn.recv_bytes().unwrap()
        } else {
            assert_eq!(conn.recv_bytes_into(&mut into).unwrap(), usize::from(i));
            into
        };
        assert_eq!(got, vec![i; usize::from(i)], "message {i}");
    }
    // Everything buffered was consumed: nothing more to poll.
    assert!(!conn.poll(Duration::ZERO).unwrap());
}

#[test]
fn a_message_split_across_reads_is_reassembled() {
    // Split inside the header, and inside the payload, with pauses longer
    // than the receiver's active wait, so it sleeps in `read` between parts.
    let payload: Vec<u8> = (0..1000u32).map(|i| (i % 253) as u8).collect();
    let whole = frame(&payload);
    for cut in [1, 3, 4, 5, 500, whole.len() - 1] {
        let (mut conn, mut raw) = raw_pair();
        let (head, tail) = whole.split_at(cut);
        let (head, tail) = (head.to_vec(), tail.to_vec());
        let writer = std::thread::spawn(move || {
            raw.write_all(&head).unwrap();
            std::thread::sleep(Duration::from_millis(20));
            raw.write_all(&tail).unwrap();
            raw
        });
        assert_eq!(conn.recv_bytes().unwrap(), payload, "cut at {cut}");
        drop(writer.join().unwrap());
        assert!(matches!(conn.recv_bytes(), Err(Error::Eof)), "cut at {cut}");
    }
}

#[test]
fn a_message_larger_than_the_receive_buffer_between_small_ones() {
    let (mut conn, mut raw) = raw_pair();
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 241) as u8).collect();
    let mut stream = frame(b"before");
    stream.extend_from_slice(&frame(&big));
    stream.extend_from_slice(&frame(b"after"));
    let writer = std::thread::spawn(move || {
        // Odd-sized writes, so frame boundaries fall anywhere in a read.
        for piece in stream.chunks(7_777) {
            raw.write_all(piece).unwrap();
        }
        raw
    });
    assert_eq!(conn.recv_bytes().unwrap(), b"before");
    let mut buf = Vec::new();
    assert_eq!(conn.recv_bytes_into(&mut buf).unwrap(), big.len());
    assert!(buf == big);
    assert_eq!(conn.recv_bytes().unwrap(), b"after");
    drop(writer.join().unwrap());
    assert!(matches!(conn.recv_bytes(), Err(Error::Eof)));
}

#[test]
fn eof_mid_frame_after_buffered_messages_is_truncation() {
    for (cut, expected, got) in [(2usize, 4usize, 2usize), (4 + 3, 10, 3)] {
        let (mut conn, mut raw) = raw_pair();
        let mut stream = frame(b"one");
        stream.extend_from_slice(&frame(b"two"));
        // A 10-byte frame, cut off after `cut` bytes.
        stream.extend_from_slice(&frame(b"0123456789")[..cut]);
        raw.write_all(&stream).unwrap();
        drop(raw);
        assert_eq!(conn.recv_bytes().unwrap(), b"one");
        assert_eq!(conn.recv::<()>().err().map(|e| e.to_string()), {
            // "two" is not a postcard unit: decoding it fails, but the
            // frame was consumed whole.
            Some(Error::Codec("3 bytes left over after the message".into()).to_string())
        });
        match conn.recv_bytes() {
            Err(Error::TruncatedFrame {
                expected: e,
                got: g,
            }) if e == expected && g == got => {}
            other => panic!("cut {cut}: expected TruncatedFrame, got {other:?}"),
        }
        // Nothing is left after the truncated frame.
        assert!(matches!(conn.recv_bytes(), Err(Error::Eof)), "cut {cut}");
    }
}

#[test]
fn a_receiver_waiting_longer_than_its_active_wait_still_gets_the_message() {
    let (mut r, mut w) = pipe(false).unwrap();
    let writer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        w.send(&42u64).unwrap();
        w
    });
    let t = Instant::now();
    assert_eq!(r.recv::<u64>().unwrap(), 42);
    assert!(t.elapsed() >= Duration::from_millis(50));
    drop(writer.join().unwrap());
    assert!(matches!(r.recv::<u64>(), Err(Error::Eof)));
}

#[test]
fn a_stream_of_small_messages_arrives_whole_and_in_order() {
    // The benchmark's pattern (one write per 64-byte message, a reader
    // keeping up), bounded: 20,000 messages from a thread.
    const N: u32 = 20_000;
    let (mut r, mut w) = pipe(false).unwrap();
    let writer = std::thread::spawn(move || {
        let mut msg = [0u8; 64];
        for i in 0..N {
            msg[..4].copy_from_slice(&i.to_le_bytes());
            w.send_bytes(&msg).unwrap();
        }
    });
    let mut buf = Vec::new();
    for i in 0..N {
        assert_eq!(r.recv_bytes_into(&mut buf).unwrap(), 64);
        assert_eq!(buf[..4], i.to_le_bytes(), "message {i}");
    }
    writer.join().unwrap();
    assert!(matches!(r.recv_bytes_into(&mut buf), Err(Error::Eof)));
}

/// A TCP peer that resets the connection in the middle of a frame: the
/// frames it sent whole before are all received, then the torn one is a
/// clear error (the reset, or a truncated frame), never a hang or a
/// panic, and the connection stays failed.
#[test]
fn reset_mid_frame_keeps_the_whole_frames_before_it() {
    use std::net::{TcpListener, TcpStream};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let peer = std::thread::spawn(move || {
        let s = TcpStream::connect(addr).unwrap();
        let mut wire = Vec::new();
        for i in 0..3u8 {
            wire.extend_from_slice(&frame(&[i; 100]));
        }
        wire.extend_from_slice(&1000u32.to_be_bytes());
        wire.extend_from_slice(&[9; 10]);
        (&s).write_all(&wire).unwrap();
        // SO_LINGER 0: close sends a reset, not a FIN.
        socket2::SockRef::from(&s)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(s);
    });
    let (ours, _) = listener.accept().unwrap();
    peer.join().unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let mut conn = Connection::from_socket(ours.into());
    for i in 0..3u8 {
        assert_eq!(conn.recv_bytes().unwrap(), vec![i; 100], "frame {i}");
    }
    match conn.recv_bytes() {
        Err(Error::Io(e)) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset),
        Err(Error::TruncatedFrame { expected: 1000, .. }) => {}
        other => panic!("expected a reset or a truncated frame, got {other:?}"),
    }
    assert!(conn.recv_bytes().is_err());
}
