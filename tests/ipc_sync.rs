//! Cross-process locks, semaphores, events, conditions, barriers and shared
//! values, exercised by forked children. `harness = false`: the binary
//! forks from its only thread (see tests/sync_support).

mod sync_support;

use std::thread::sleep;
use std::time::{Duration, Instant};

use socketserver::process::{
    Array, Barrier, BoundedSemaphore, Condition, Event, Lock, LockError, RLock, Semaphore, Value,
};
use socketserver::Error;
use sync_support::{run, Kids};

const LONG: Duration = Duration::from_secs(20);

fn main() {
    run(&[
        (
            "lock_mutual_exclusion_across_processes",
            lock_mutual_exclusion_across_processes,
        ),
        (
            "value_lock_increments_across_processes",
            value_lock_increments_across_processes,
        ),
        (
            "lock_recovered_after_holder_sigkilled",
            lock_recovered_after_holder_sigkilled,
        ),
        (
            "lock_is_not_reentrant_and_times_out",
            lock_is_not_reentrant_and_times_out,
        ),
        (
            "value_recovered_after_holder_sigkilled",
            value_recovered_after_holder_sigkilled,
        ),
        ("rlock_reentrancy", rlock_reentrancy),
        ("condition_is_reentrant", condition_is_reentrant),
        ("semaphore_counts", semaphore_counts),
        (
            "bounded_semaphore_over_release",
            bounded_semaphore_over_release,
        ),
        ("event_set_wait_timeout", event_set_wait_timeout),
        ("condition_notify_all_and_one", condition_notify_all_and_one),
        ("condition_wait_timeout", condition_wait_timeout),
        ("barrier_of_three_processes", barrier_of_three_processes),
        (
            "barrier_action_runs_once_per_round_before_release",
            barrier_action_runs_once_per_round_before_release,
        ),
        (
            "barrier_action_panic_breaks_it",
            barrier_action_panic_breaks_it,
        ),
        (
            "barrier_timeout_breaks_and_reset",
            barrier_timeout_breaks_and_reset,
        ),
        ("barrier_abort_wakes_waiter", barrier_abort_wakes_waiter),
        ("array_get_set_bounds", array_get_set_bounds),
    ]);
}

fn lock_mutual_exclusion_across_processes() {
    const K: usize = 4;
    const N: u64 = 20_000;
    let lock = Lock::new().unwrap();
    let counter = Value::new(0u64).unwrap();
    let go = Event::new().unwrap();
    let mut kids = Kids::new();
    for _ in 0..K {
        kids.spawn(|| {
            go.wait(Some(LONG)).unwrap();
            for i in 0..N {
                let _g = lock.acquire().unwrap();
                // A read-modify-write in two separately locked steps: only
                // the outer `Lock` makes it atomic.
                let x = counter.get().unwrap();
                if i % 16 == 0 {
                    std::thread::yield_now();
                }
                counter.set(x + 1).unwrap();
            }
            0
        });
    }
    go.set().unwrap();
    kids.join_all_ok();
    assert_eq!(counter.get().unwrap(), N * K as u64);
}

fn value_lock_increments_across_processes() {
    const K: usize = 3;
    const N: u64 = 20_000;
    let counter = Value::new(0u64).unwrap();
    let arr = Array::new(4, 0u32).unwrap();
    let go = Event::new().unwrap();
    let mut kids = Kids::new();
    for _ in 0..K {
        kids.spawn(|| {
            go.wait(Some(LONG)).unwrap();
            for i in 0..N {
                *counter.lock().unwrap() += 1;
                let mut g = arr.lock().unwrap();
                g[(i % 4) as usize] += 1;
            }
            0
        });
    }
    go.set().unwrap();
    kids.join_all_ok();
    assert_eq!(counter.get().unwrap(), N * K as u64);
    assert_eq!(
        arr.to_vec().unwrap().iter().map(|&x| x as u64).sum::<u64>(),
        N * K as u64
    );
}

fn lock_recovered_after_holder_sigkilled() {
    let lock = Lock::new().unwrap();
    let held = Event::new().unwrap();
    let mut kids = Kids::new();

    // 1. Another process is blocked in acquire when the holder dies.
    let holder = kids.spawn(|| {
        let _g = lock.acquire().unwrap();
        held.set().unwrap();
        loop {
            sleep(Duration::from_secs(1));
        }
    });
    assert!(held.wait(Some(LONG)).unwrap());
    assert!(matches!(
        lock.acquire_timeout(Duration::from_millis(50)),
        Err(LockError::Timeout(_))
    ));
    let waiter = kids.spawn(|| match lock.acquire_timeout(LONG) {
        Err(LockError::OwnerDied(_g)) => 0,
        Ok(_) => 2,
        Err(LockError::Timeout(_)) => 3,
        Err(LockError::Other(_)) => 4,
    });
    sleep(Duration::from_millis(100));
    assert_eq!(kids.kill(holder), -9);
    assert_eq!(
        kids.join(waiter),
        0,
        "waiter should recover the lock with OwnerDied"
    );
    // The waiter released it normally: now a clean acquire.
    drop(lock.acquire().expect("clean acquire after recovery"));

    // 2. Nobody waits; the next acquire (here, in the parent) recovers.
    held.clear().unwrap();
    let holder = kids.spawn(|| {
        let _g = lock.acquire().unwrap();
        held.set().unwrap();
        loop {
            sleep(Duration::from_secs(1));
        }
    });
    assert!(held.wait(Some(LONG)).unwrap());
    assert_eq!(kids.kill(holder), -9);
    match lock.acquire() {
        Err(e @ LockError::OwnerDied(_)) => {
            assert!(e.is_owner_died());
            let g = e.recover().unwrap();
            drop(g);
        }
        other => panic!("expected OwnerDied, got {:?}", other.map(|_| ())),
    }
    drop(lock.acquire().expect("clean acquire after recovery"));
    // And the Error conversion reports it too.
    let holder = kids.spawn(|| {
        let _g = lock.acquire().unwrap();
        held.set().unwrap();
        loop {
            sleep(Duration::from_secs(1));
        }
    });
    held.clear().unwrap();
    let _ = held.wait(Some(LONG));
    assert_eq!(kids.kill(holder), -9);
    let r: socketserver::Result<()> = lock.acquire().map(drop).map_err(Error::from);
    assert!(matches!(r, Err(Error::OwnerDied)), "{r:?}");
}

fn lock_is_not_reentrant_and_times_out() {
    let lock = Lock::new().unwrap();
    let g = lock.acquire().unwrap();
    // Same thread again: EDEADLK instead of hanging.
    assert!(matches!(lock.acquire(), Err(LockError::Other(_))));
    let mut kids = Kids::new();
    let c = kids.spawn(|| {
        let t = Instant::now();
        match lock.acquire_timeout(Duration::from_millis(150)) {
            Err(LockError::Timeout(_)) if t.elapsed() >= Duration::from_millis(150) => 0,
            _ => 1,
        }
    });
    assert_eq!(kids.join(c), 0);
    let c = kids.spawn(|| match lock.try_acquire() {
        Err(LockError::Timeout(_)) => 0,
        _ => 1,
    });
    assert_eq!(kids.join(c), 0);
    drop(g);
    let c = kids.spawn(|| match lock.try_acquire() {
        Ok(_) => 0,
        _ => 1,
    });
    assert_eq!(kids.join(c), 0);
}

fn value_recovered_after_holder_sigkilled() {
    let v = Value::new([7u8; 16]).unwrap();
    let held = Event::new().unwrap();
    let mut kids = Kids::new();
    let holder = kids.spawn(|| {
        let mut g = v.lock().unwrap();
        g[..8].fill(9); // half an update
        held.set().unwrap();
        loop {
            sleep(Duration::from_secs(1));
        }
    });
    assert!(held.wait(Some(LONG)).unwrap());
    assert_eq!(kids.kill(holder), -9);
    assert!(matches!(v.get(), Err(Error::OwnerDied)));
    let now = v.get().unwrap();
    assert_eq!(&now[..8], &[9; 8]);
    assert_eq!(&now[8..], &[7; 8]);
}

fn rlock_reentrancy() {
    let r = RLock::new().unwrap();
    let mut kids = Kids::new();
    let other_times_out = |kids: &mut Kids| {
        let c = kids.spawn(|| match r.acquire_timeout(Duration::from_millis(100)) {
            Err(LockError::Timeout(_)) => 0,
            _ => 1,
        });
        assert_eq!(kids.join(c), 0, "another process must not get a held RLock");
    };
    let g1 = r.acquire().unwrap();
    let g2 = r.acquire().unwrap();
    let g3 = r.acquire_timeout(Duration::ZERO).unwrap();
    assert_eq!(r.depth(), 3);
    other_times_out(&mut kids);
    // Recursion is per thread too: another thread of this process waits.
    let r2 = r.clone();
    let other_thread = std::thread::spawn(move || {
        matches!(
            r2.acquire_timeout(Duration::from_millis(100)),
            Err(LockError::Timeout(_))
        )
    });
    assert!(
        other_thread.join().unwrap(),
        "another thread must not get a held RLock"
    );
    drop(g3);
    drop(g2);
    assert_eq!(r.depth(), 1);
    other_times_out(&mut kids);
    drop(g1);
    assert_eq!(r.depth(), 0);
    let c = kids.spawn(|| {
        let a = r.acquire().unwrap();
        let b = r.acquire().unwrap();
        let ok = r.depth() == 2;
        drop(b);
        drop(a);
        if ok && r.depth() == 0 {
            0
        } else {
            1
        }
    });
    assert_eq!(kids.join(c), 0);
    drop(r.acquire().unwrap());
}

fn semaphore_counts() {
    let s = Semaphore::new(2).unwrap();
    assert_eq!(s.get_value(), 2);
    assert!(s.try_acquire().unwrap());
    assert!(s.try_acquire().unwrap());
    assert!(!s.try_acquire().unwrap());
    assert_eq!(s.get_value(), 0);
    let t = Instant::now();
    assert!(!s.acquire_timeout(Duration::from_millis(150)).unwrap());
    assert!(t.elapsed() >= Duration::from_millis(150));
    // A child releases while we are blocked.
    let mut kids = Kids::new();
    kids.spawn(|| {
        sleep(Duration::from_millis(100));
        s.release().unwrap();
        0
    });
    let t = Instant::now();
    assert!(s.acquire_timeout(LONG).unwrap());
    assert!(t.elapsed() < LONG);
    kids.join_all_ok();
    assert_eq!(s.get_value(), 0);
    // Unbounded: releasing above the initial value is allowed.
    for _ in 0..3 {
        s.release().unwrap();
    }
    assert_eq!(s.get_value(), 3);
    {
        let _g = s.guard().unwrap();
        assert_eq!(s.get_value(), 2);
    }
    assert_eq!(s.get_value(), 3);
}

fn bounded_semaphore_over_release() {
    let b = BoundedSemaphore::new(1).unwrap();
    assert!(matches!(b.release(), Err(Error::InvalidArgument(_))));
    b.acquire().unwrap();
    let mut kids = Kids::new();
    let c = kids.spawn(|| {
        // Released by another process: allowed once, then over the bound.
        let first = b.release().is_ok();
        let second = matches!(b.release(), Err(Error::InvalidArgument(_)));
        if first && second {
            0
        } else {
            1
        }
    });
    assert_eq!(kids.join(c), 0);
    assert_eq!(b.get_value(), 1);
    assert!(b
        .guard_timeout(Duration::from_millis(10))
        .unwrap()
        .is_some());
    assert_eq!(b.get_value(), 1);
}

fn event_set_wait_timeout() {
    let e = Event::new().unwrap();
    assert!(!e.is_set());
    let t = Instant::now();
    assert!(!e.wait(Some(Duration::from_millis(150))).unwrap());
    assert!(t.elapsed() >= Duration::from_millis(150));
    assert!(!e.wait(Some(Duration::ZERO)).unwrap());
    let mut kids = Kids::new();
    for _ in 0..3 {
        kids.spawn(|| {
            let t = Instant::now();
            match e.wait(Some(LONG)) {
                Ok(true) if t.elapsed() < LONG => 0,
                _ => 1,
            }
        });
    }
    sleep(Duration::from_millis(100));
    e.set().unwrap();
    kids.join_all_ok();
    assert!(e.is_set());
    assert!(e.wait(None).unwrap());
    e.clear().unwrap();
    assert!(!e.is_set());
    // Set by a child, seen by the parent.
    kids.spawn(|| {
        sleep(Duration::from_millis(50));
        e.set().map(|()| 0).unwrap_or(1)
    });
    assert!(e.wait(Some(LONG)).unwrap());
    kids.join_all_ok();
}

fn condition_notify_all_and_one() {
    let cond = Condition::new().unwrap();
    let tokens = Value::new(0u32).unwrap();
    let mut kids = Kids::new();
    // notify_all: two waiters for a flag.
    for _ in 0..2 {
        kids.spawn(|| {
            let mut g = cond.acquire().unwrap();
            match g.wait_for(|| tokens.get().unwrap() >= 1, Some(LONG)) {
                Ok(true) => 0,
                _ => 1,
            }
        });
    }
    sleep(Duration::from_millis(100));
    {
        let g = cond.acquire().unwrap();
        tokens.set(1).unwrap();
        g.notify_all();
    }
    kids.join_all_ok();
    // notify(1): each waiter consumes one token.
    tokens.set(0).unwrap();
    for _ in 0..2 {
        kids.spawn(|| {
            let mut g = cond.acquire().unwrap();
            if !g
                .wait_for(|| tokens.get().unwrap() >= 1, Some(LONG))
                .unwrap()
            {
                return 1;
            }
            tokens.set(tokens.get().unwrap() - 1).unwrap();
            0
        });
    }
    for _ in 0..2 {
        sleep(Duration::from_millis(50));
        let g = cond.acquire().unwrap();
        tokens.set(tokens.get().unwrap() + 1).unwrap();
        g.notify(1);
    }
    kids.join_all_ok();
    assert_eq!(tokens.get().unwrap(), 0);
}

/// Python's `Condition()` is built on an `RLock`: the holder may acquire
/// again, and `wait` at depth 2 releases both levels (so another process
/// can notify) and restores them.
fn condition_is_reentrant() {
    let cond = Condition::new().unwrap();
    let flag = Value::new(0u32).unwrap();
    let outer = cond.acquire().unwrap();
    let mut inner = cond.acquire_timeout(Duration::from_millis(200)).unwrap();
    assert_eq!(cond.depth(), 2);
    let mut kids = Kids::new();
    let notifier = kids.spawn(|| {
        // Only possible if the waiter below released both levels.
        let Ok(g) = cond.acquire_timeout(LONG) else {
            return 1;
        };
        if flag.set(1).is_err() {
            return 2;
        }
        g.notify_all();
        0
    });
    assert!(inner
        .wait_for(|| flag.get().unwrap() == 1, Some(LONG))
        .unwrap());
    assert_eq!(cond.depth(), 2, "depth restored after wait");
    assert_eq!(kids.join(notifier), 0);
    drop(inner);
    // Still held by `outer`: another process cannot take it.
    let busy = kids.spawn(|| match cond.acquire_timeout(Duration::from_millis(50)) {
        Err(LockError::Timeout(_)) => 0,
        _ => 1,
    });
    assert_eq!(kids.join(busy), 0);
    drop(outer);
    assert_eq!(cond.depth(), 0);
    let free = kids.spawn(|| match cond.acquire_timeout(LONG) {
        Ok(_) => 0,
        _ => 1,
    });
    assert_eq!(kids.join(free), 0);
}

fn condition_wait_timeout() {
    let cond = Condition::new().unwrap();
    let mut g = cond.acquire().unwrap();
    let t = Instant::now();
    assert!(!g.wait(Some(Duration::from_millis(150))).unwrap());
    assert!(t.elapsed() >= Duration::from_millis(150));
    let t = Instant::now();
    assert!(!g
        .wait_for(|| false, Some(Duration::from_millis(100)))
        .unwrap());
    assert!(t.elapsed() >= Duration::from_millis(100));
    // We still hold the lock after waiting: another process cannot take it.
    let mut kids = Kids::new();
    let c = kids.spawn(|| match cond.acquire_timeout(Duration::from_millis(50)) {
        Err(LockError::Timeout(_)) => 0,
        _ => 1,
    });
    assert_eq!(kids.join(c), 0);
    drop(g);
}

fn barrier_of_three_processes() {
    const ROUNDS: usize = 5;
    let b = Barrier::new(3).unwrap();
    assert_eq!(b.parties(), 3);
    let seen = Array::new(ROUNDS * 3, 0u32).unwrap();
    let arrived = Value::new(0u32).unwrap();
    let mut kids = Kids::new();
    for k in 0..3u64 {
        kids.spawn(|| {
            for round in 0..ROUNDS {
                sleep(Duration::from_millis(10 * k));
                *arrived.lock().unwrap() += 1;
                let idx = match b.wait_timeout(LONG) {
                    Ok(i) => i as usize,
                    Err(_) => return 1,
                };
                // Nobody passes until all three of this round arrived.
                if arrived.get().unwrap() < 3 * (round as u32 + 1) {
                    return 2;
                }
                let mut g = seen.lock().unwrap();
                g[round * 3 + idx] += 1;
            }
            0
        });
    }
    kids.join_all_ok();
    assert_eq!(
        seen.to_vec().unwrap(),
        vec![1; ROUNDS * 3],
        "each index once per round"
    );
    assert!(!b.broken());
}

fn barrier_action_runs_once_per_round_before_release() {
    const ROUNDS: u32 = 4;
    let runs = Value::new(0u32).unwrap();
    let counter = runs.clone();
    let b = Barrier::with_action(3, move || {
        *counter.lock().unwrap() += 1;
    })
    .unwrap();
    let mut kids = Kids::new();
    for k in 0..2u64 {
        kids.spawn(|| {
            for round in 1..=ROUNDS {
                sleep(Duration::from_millis(5 * k));
                if b.wait_timeout(LONG).is_err() {
                    return 1;
                }
                // The action of this round ran before anyone was released.
                if runs.get().unwrap() < round {
                    return 2;
                }
            }
            0
        });
    }
    for round in 1..=ROUNDS {
        b.wait_timeout(LONG).unwrap();
        assert!(runs.get().unwrap() >= round);
    }
    kids.join_all_ok();
    assert_eq!(runs.get().unwrap(), ROUNDS, "exactly once per round");
    assert!(!b.broken());
}

fn barrier_action_panic_breaks_it() {
    let b = Barrier::with_action(2, || panic!("action failed on purpose")).unwrap();
    let mut kids = Kids::new();
    let first = kids.spawn(|| match b.wait_timeout(LONG) {
        Err(Error::BrokenBarrier) => 0,
        _ => 1,
    });
    // Arrive second, so the action runs here.
    let deadline = std::time::Instant::now() + LONG;
    while b.n_waiting() < 1 {
        assert!(std::time::Instant::now() < deadline, "child never arrived");
        sleep(Duration::from_millis(1));
    }
    match b.wait_timeout(LONG) {
        Err(Error::Panicked(msg)) => assert!(msg.contains("on purpose"), "{msg}"),
        other => panic!("expected Panicked, got {other:?}"),
    }
    assert_eq!(kids.join(first), 0);
    assert!(b.broken());
    b.reset().unwrap();
    assert!(!b.broken());
}

fn barrier_timeout_breaks_and_reset() {
    let b = Barrier::new(3).unwrap();
    let mut kids = Kids::new();
    // Only two of three arrive: the one with a timeout breaks the barrier.
    let timer = kids.spawn(|| match b.wait_timeout(Duration::from_millis(200)) {
        Err(Error::Timeout(_)) => 0,
        _ => 1,
    });
    let other = kids.spawn(|| match b.wait() {
        Err(Error::BrokenBarrier) => 0,
        _ => 1,
    });
    assert_eq!(kids.join(timer), 0);
    assert_eq!(kids.join(other), 0);
    assert!(b.broken());
    assert!(matches!(b.wait(), Err(Error::BrokenBarrier)));
    b.reset().unwrap();
    assert!(!b.broken());
    assert_eq!(b.n_waiting(), 0);
    // Usable again after reset.
    let mut idx = Vec::new();
    for _ in 0..2 {
        kids.spawn(|| b.wait_timeout(LONG).map(|_| 0).unwrap_or(1));
    }
    idx.push(b.wait_timeout(LONG).unwrap());
    kids.join_all_ok();
    assert!(idx[0] < 3);
}

fn barrier_abort_wakes_waiter() {
    let b = Barrier::new(2).unwrap();
    let mut kids = Kids::new();
    let c = kids.spawn(|| match b.wait() {
        Err(Error::BrokenBarrier) => 0,
        _ => 1,
    });
    sleep(Duration::from_millis(100));
    b.abort().unwrap();
    assert_eq!(kids.join(c), 0);
    assert!(matches!(Barrier::new(0), Err(Error::InvalidArgument(_))));
}

fn array_get_set_bounds() {
    let a = Array::from_slice(&[1.5f64, 2.5, 3.5]).unwrap();
    assert_eq!(a.len(), 3);
    assert_eq!(a.get(1).unwrap(), 2.5);
    assert!(matches!(a.get(3), Err(Error::InvalidArgument(_))));
    assert!(matches!(a.set(3, 0.0), Err(Error::InvalidArgument(_))));
    let mut kids = Kids::new();
    kids.spawn(|| a.set(2, 9.0).map(|()| 0).unwrap_or(1));
    kids.join_all_ok();
    assert_eq!(a.to_vec().unwrap(), vec![1.5, 2.5, 9.0]);
    assert!(matches!(Array::new(0, 0u8), Err(Error::InvalidArgument(_))));
}
