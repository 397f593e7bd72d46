//! `Queue<T>` between forked processes: many producers and consumers,
//! timeouts, producers that exit right after `put`, consumers killed while
//! blocked. `harness = false`: the binary forks from its only thread.

mod sync_support;

use std::thread::sleep;
use std::time::{Duration, Instant};

use socketserver::process::{Array, Event, Queue};
use socketserver::Error;
use sync_support::{run, Kids};

const LONG: Duration = Duration::from_secs(30);

fn main() {
    run(&[
        (
            "queue_fifo_and_wraparound_in_one_process",
            queue_fifo_and_wraparound_in_one_process,
        ),
        (
            "queue_4_producers_3_consumers_exactly_once",
            queue_4_producers_3_consumers_exactly_once,
        ),
        (
            "queue_full_and_empty_after_timeouts",
            queue_full_and_empty_after_timeouts,
        ),
        (
            "queue_blocked_put_and_get_are_woken",
            queue_blocked_put_and_get_are_woken,
        ),
        ("queue_message_too_large", queue_message_too_large),
        (
            "queue_carries_messages_of_any_size",
            queue_carries_messages_of_any_size,
        ),
        (
            "queue_large_messages_survive_killed_producers",
            queue_large_messages_survive_killed_producers,
        ),
        (
            "queue_producer_exits_right_after_put",
            queue_producer_exits_right_after_put,
        ),
        (
            "queue_consumer_killed_while_blocked",
            queue_consumer_killed_while_blocked,
        ),
    ]);
}

fn queue_fifo_and_wraparound_in_one_process() {
    // A tiny ring and records of varying length force every wrap case
    // (prefix split, body split, exact fit).
    let q: Queue<Vec<u8>> = Queue::builder().capacity_bytes(61).build().unwrap();
    assert_eq!(q.capacity_bytes(), 61);
    assert_eq!(q.maxsize(), None);
    assert!(q.empty().unwrap());
    let mut next_in = 0u32;
    let mut next_out = 0u32;
    let msg = |i: u32| vec![i as u8; (i % 23) as usize];
    while next_out < 2_000 {
        while next_in < 2_000 && q.put_nowait(&msg(next_in)).is_ok() {
            next_in += 1;
        }
        assert!(q.qsize().unwrap() > 0);
        let got = q.get_nowait().unwrap();
        assert_eq!(got, msg(next_out), "message {next_out}");
        next_out += 1;
    }
    assert!(q.empty().unwrap());
    assert!(matches!(q.get_nowait(), Err(Error::Empty)));
}

fn queue_4_producers_3_consumers_exactly_once() {
    const PRODUCERS: u32 = 4;
    const PER: u32 = 10_000;
    const CONSUMERS: usize = 3;
    // A small ring, so producers block on "full" and records wrap often.
    let q: Queue<Option<(u32, u32)>> = Queue::builder().capacity_bytes(4096).build().unwrap();
    let seen = Array::new((PRODUCERS * PER) as usize, 0u8).unwrap();
    let per_consumer = Array::new(CONSUMERS, 0u32).unwrap();
    let go = Event::new().unwrap();
    let mut kids = Kids::new();
    let mut producers = Vec::new();
    for p in 0..PRODUCERS {
        producers.push(kids.spawn(|| {
            go.wait(Some(LONG)).unwrap();
            for i in 0..PER {
                if q.put_timeout(&Some((p, i)), LONG).is_err() {
                    return 4;
                }
            }
            0
        }));
    }
    for c in 0..CONSUMERS {
        kids.spawn(|| {
            go.wait(Some(LONG)).unwrap();
            let mut local = vec![0u8; (PRODUCERS * PER) as usize];
            let mut last = vec![None::<u32>; PRODUCERS as usize];
            let mut n = 0u32;
            loop {
                match q.get_timeout(LONG) {
                    Ok(Some((p, i))) => {
                        // FIFO: one producer's messages arrive in order.
                        if last[p as usize].is_some_and(|l| l >= i) {
                            return 3;
                        }
                        last[p as usize] = Some(i);
                        local[(p * PER + i) as usize] += 1;
                        n += 1;
                    }
                    Ok(None) => break,
                    Err(_) => return 2,
                }
            }
            let mut g = seen.lock().unwrap();
            for (slot, k) in g.iter_mut().zip(&local) {
                *slot += k;
            }
            drop(g);
            per_consumer.set(c, n).unwrap();
            0
        });
    }
    go.set().unwrap();
    for p in producers {
        assert_eq!(kids.join(p), 0, "producer failed");
    }
    for _ in 0..CONSUMERS {
        q.put_timeout(&None, LONG).unwrap();
    }
    kids.join_all_ok();
    let seen = seen.to_vec().unwrap();
    let missing = seen.iter().filter(|&&k| k == 0).count();
    let dup = seen.iter().filter(|&&k| k > 1).count();
    assert_eq!((missing, dup), (0, 0), "every message exactly once");
    let counts = per_consumer.to_vec().unwrap();
    assert_eq!(counts.iter().sum::<u32>(), PRODUCERS * PER);
    assert!(q.empty().unwrap());
}

fn queue_full_and_empty_after_timeouts() {
    let q: Queue<u64> = Queue::with_maxsize(2).unwrap();
    assert_eq!(q.maxsize(), Some(2));
    q.put_nowait(&1).unwrap();
    assert!(!q.full().unwrap());
    q.put_nowait(&2).unwrap();
    assert!(q.full().unwrap());
    assert_eq!(q.qsize().unwrap(), 2);
    let t = Instant::now();
    assert!(matches!(q.put_nowait(&3), Err(Error::Full)));
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "nowait must not block"
    );
    let t = Instant::now();
    assert!(matches!(
        q.put_timeout(&3, Duration::from_millis(200)),
        Err(Error::Full)
    ));
    assert!(
        t.elapsed() >= Duration::from_millis(200),
        "Full came early: {:?}",
        t.elapsed()
    );
    assert_eq!(q.get().unwrap(), 1);
    assert_eq!(q.get_timeout(Duration::from_millis(10)).unwrap(), 2);
    let t = Instant::now();
    assert!(matches!(q.get_nowait(), Err(Error::Empty)));
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "nowait must not block"
    );
    let t = Instant::now();
    assert!(matches!(
        q.get_timeout(Duration::from_millis(200)),
        Err(Error::Empty)
    ));
    assert!(
        t.elapsed() >= Duration::from_millis(200),
        "Empty came early: {:?}",
        t.elapsed()
    );

    // Byte capacity limits too: 16-byte ring, 4+8 byte records... one fits.
    let q: Queue<[u8; 8]> = Queue::builder().capacity_bytes(16).build().unwrap();
    q.put_nowait(&[1; 8]).unwrap();
    assert!(matches!(q.put_nowait(&[2; 8]), Err(Error::Full)));
    assert_eq!(q.get_nowait().unwrap(), [1; 8]);
}

fn queue_blocked_put_and_get_are_woken() {
    let q: Queue<String> = Queue::with_maxsize(1).unwrap();
    let mut kids = Kids::new();
    // A blocked get is woken by another process's put, well before its timeout.
    kids.spawn(|| {
        sleep(Duration::from_millis(100));
        q.put(&"hello".to_string()).map(|()| 0).unwrap_or(1)
    });
    let t = Instant::now();
    assert_eq!(q.get_timeout(LONG).unwrap(), "hello");
    assert!(t.elapsed() < LONG);
    kids.join_all_ok();
    // A blocked put is woken by another process's get.
    q.put(&"first".to_string()).unwrap();
    assert!(matches!(
        q.put_nowait(&"second".to_string()),
        Err(Error::Full)
    ));
    kids.spawn(|| {
        sleep(Duration::from_millis(100));
        match q.get() {
            Ok(s) if s == "first" => 0,
            _ => 1,
        }
    });
    let t = Instant::now();
    q.put_timeout(&"second".to_string(), LONG).unwrap();
    assert!(t.elapsed() < LONG);
    kids.join_all_ok();
    assert_eq!(q.get_nowait().unwrap(), "second");
}

/// The bytes of message `i` of producer `p`: content that a torn,
/// duplicated or swapped message cannot fake.
fn big(p: u32, i: u32, len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(len + 8);
    v.extend_from_slice(&p.to_le_bytes());
    v.extend_from_slice(&i.to_le_bytes());
    v.extend((0..len).map(|k| (k as u32 ^ p.wrapping_mul(31) ^ i.wrapping_mul(7)) as u8));
    v
}

fn check_big(msg: &[u8]) -> (u32, u32) {
    let p = u32::from_le_bytes(msg[..4].try_into().unwrap());
    let i = u32::from_le_bytes(msg[4..8].try_into().unwrap());
    assert_eq!(msg, big(p, i, msg.len() - 8), "message {p}/{i} corrupt");
    (p, i)
}

/// Python's queue has no size cap: a 4 MiB `put` on a default (1 MiB)
/// queue goes through, in order with the small ones around it, even though
/// its producer exits right after `put`.
fn queue_carries_messages_of_any_size() {
    let q: Queue<Vec<u8>> = Queue::new().unwrap();
    let sizes = [10usize, 4 << 20, 20, 3 << 20, 1 << 20, 5];
    let mut kids = Kids::new();
    kids.spawn(|| {
        for (i, &len) in sizes.iter().enumerate() {
            if q.put(&big(0, i as u32, len)).is_err() {
                return 1;
            }
        }
        0
    });
    kids.join_all_ok();
    for (i, &len) in sizes.iter().enumerate() {
        let msg = q.get_timeout(LONG).unwrap();
        assert_eq!(msg.len(), len + 8, "message {i}");
        assert_eq!(check_big(&msg), (0, i as u32));
    }
    assert!(matches!(q.get_nowait(), Err(Error::Empty)));
    // A tiny ring (room for three spill records): an inline message and
    // a spilled one in flight together, in order.
    let q: Queue<Vec<u8>> = Queue::builder().capacity_bytes(64).build().unwrap();
    for i in (0..50u32).step_by(2) {
        q.put(&big(1, i, i as usize % 20)).unwrap();
        q.put(&big(1, i + 1, 100 + (i as usize * 37) % 200))
            .unwrap();
        assert_eq!(check_big(&q.get().unwrap()), (1, i));
        assert_eq!(check_big(&q.get().unwrap()), (1, i + 1));
    }
}

/// Producers of large messages SIGKILLed at arbitrary moments: every
/// message that arrives is whole, each producer's messages arrive in
/// order, survivors' messages all arrive, and the queue keeps working.
fn queue_large_messages_survive_killed_producers() {
    const PER: u32 = 12;
    let q: Queue<Vec<u8>> = Queue::builder().capacity_bytes(4096).build().unwrap();
    let mut kids = Kids::new();
    let mut pids = Vec::new();
    for p in 0..4u32 {
        let q = q.clone();
        pids.push(kids.spawn(move || {
            for i in 0..PER {
                let len = 200_000 + ((p * 7919 + i * 104_729) % 600_000) as usize;
                if q.put(&big(p, i, len)).is_err() {
                    return 1;
                }
                sleep(Duration::from_millis(3));
            }
            0
        }));
    }
    sleep(Duration::from_millis(15));
    for &pid in &pids[..2] {
        kids.kill(pid);
    }
    for &pid in &pids[2..] {
        assert_eq!(kids.join(pid), 0);
    }
    let mut next = [0u32; 4];
    while let Ok(msg) = q.get_nowait() {
        let (p, i) = check_big(&msg);
        assert_eq!(i, next[p as usize], "producer {p} out of order");
        next[p as usize] += 1;
    }
    assert_eq!(&next[2..], &[PER, PER], "survivors' messages lost");
    q.put(&big(9, 0, 2 << 20)).unwrap();
    assert_eq!(check_big(&q.get().unwrap()), (9, 0));
}

fn queue_message_too_large() {
    // Only a ring too small for even a spill record refuses a message.
    let q: Queue<Vec<u8>> = Queue::builder().capacity_bytes(16).build().unwrap();
    let t = Instant::now();
    match q.put(&vec![0u8; 100]) {
        Err(Error::MessageTooLarge { len, max }) => {
            assert!(len > 100 && max == 12, "len {len} max {max}");
        }
        other => panic!("expected MessageTooLarge, got {other:?}"),
    }
    assert!(t.elapsed() < Duration::from_secs(1), "must not block");
    // The queue is unharmed.
    q.put(&vec![1, 2, 3]).unwrap();
    assert_eq!(q.get().unwrap(), vec![1, 2, 3]);
    assert!(matches!(
        Queue::<u8>::builder().capacity_bytes(4).build(),
        Err(Error::InvalidArgument(_))
    ));
}

fn queue_producer_exits_right_after_put() {
    const N: u32 = 50;
    let q: Queue<u32> = Queue::new().unwrap();
    let mut kids = Kids::new();
    let pids: Vec<_> = (0..N)
        .map(|i| kids.spawn(|| q.put(&i).map(|()| 0).unwrap_or(1)))
        .collect();
    // Every producer is gone (it `_exit`ed the instant `put` returned)
    // before anybody reads.
    for pid in pids {
        assert_eq!(kids.join(pid), 0);
    }
    let mut got: Vec<u32> = (0..N).map(|_| q.get_nowait().unwrap()).collect();
    got.sort_unstable();
    assert_eq!(got, (0..N).collect::<Vec<_>>());
    assert!(q.empty().unwrap());
}

fn queue_consumer_killed_while_blocked() {
    const N: u32 = 2_000;
    const LIVE: usize = 2;
    let q: Queue<Option<u32>> = Queue::builder().capacity_bytes(1024).build().unwrap();
    let seen = Array::new(N as usize, 0u8).unwrap();
    let mut kids = Kids::new();
    // The victim blocks in get on the empty queue...
    let victim = kids.spawn(|| match q.get() {
        Ok(_) => 5,
        Err(_) => 6,
    });
    let mut live = Vec::new();
    for _ in 0..LIVE {
        live.push(kids.spawn(|| {
            let mut local = vec![0u8; N as usize];
            loop {
                match q.get_timeout(LONG) {
                    Ok(Some(i)) => local[i as usize] += 1,
                    Ok(None) => break,
                    Err(_) => return 2,
                }
            }
            let mut g = seen.lock().unwrap();
            for (slot, k) in g.iter_mut().zip(&local) {
                *slot += k;
            }
            0
        }));
    }
    sleep(Duration::from_millis(200));
    // ... and is killed there.
    assert_eq!(kids.kill(victim), -9);
    for i in 0..N {
        q.put_timeout(&Some(i), LONG).unwrap();
    }
    for _ in 0..LIVE {
        q.put_timeout(&None, LONG).unwrap();
    }
    for pid in live {
        assert_eq!(kids.join(pid), 0);
    }
    let seen = seen.to_vec().unwrap();
    assert!(
        seen.iter().all(|&k| k == 1),
        "every message exactly once after the kill"
    );
    assert!(q.empty().unwrap());
}
