//! `Process` and `Pipe` against raw system calls and Python's
//! `multiprocessing`, in one run.
//!
//! ```sh
//! cargo bench --bench process
//! ```
//!
//! Fork figures are medians of single start+join times, ours and bare
//! alternating; message figures are medians of rounds, alternating too, so
//! machine noise hits both sides. Start methods: `Process::from_fn`
//! start+join with fork and with the fork server, alternating, against
//! Python's `forkserver` and `spawn` start methods. Iteration counts are
//! fixed, so the run ends by itself (about a minute, most of it Python's
//! `spawn`).

use std::os::fd::{AsFd, OwnedFd};
use std::process::Command;
use std::time::Instant;

use socketserver::process::{
    fork_child, get_context, pipe, start_forkserver, Connection, Context, ForkOptions, Process,
    StartMethod,
};

const ROUNDS: usize = 5;
const FORKS_PER_ROUND: usize = 200;
const ROUND_TRIPS_PER_ROUND: usize = 20_000;
const ONE_WAY_MESSAGES: usize = 1_000_000;
const MSG: usize = 64;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn time_per_op(n: usize, f: impl FnOnce()) -> f64 {
    let t = Instant::now();
    f();
    t.elapsed().as_secs_f64() / n as f64
}

/// One `Process` start+join, in seconds.
fn ours_start_join() -> f64 {
    let t = Instant::now();
    let mut p = Process::new(|| {});
    p.start().expect("start");
    assert_eq!(p.join().expect("join"), 0);
    t.elapsed().as_secs_f64()
}

/// One bare fork + `_exit(0)` + `waitpid`, in seconds: the floor that
/// `Process::start` + `join` is measured against. The only `unsafe` in the
/// benchmarks, kept here so the library has no bench-only public API.
#[allow(unsafe_code)]
fn bare_fork_exit_waitpid() -> f64 {
    let t = Instant::now();
    // SAFETY: the child calls only the async-signal-safe `_exit`, so it
    // touches no lock or allocator state another thread may have held.
    match unsafe { nix::unistd::fork() }.expect("fork") {
        // SAFETY: `_exit` ends the child at once without running the
        // parent's destructors or atexit handlers.
        nix::unistd::ForkResult::Child => unsafe { libc::_exit(0) },
        nix::unistd::ForkResult::Parent { child } => {
            nix::sys::wait::waitpid(child, None).expect("waitpid");
        }
    }
    t.elapsed().as_secs_f64()
}

fn noop(_: ()) {}

/// One `Process::from_fn` start+join with `method`, in seconds.
fn from_fn_start_join(ctx: &Context) -> f64 {
    let t = Instant::now();
    let mut p = ctx.process(noop, ());
    p.start().expect("start");
    assert_eq!(p.join().expect("join"), 0);
    t.elapsed().as_secs_f64()
}

/// Python start+join with `method` ("forkserver", "spawn"), median of
/// `rounds` rounds of `per_round`; `None` when python3 is unavailable.
fn python_method_start_join(method: &str, rounds: usize, per_round: usize) -> Option<f64> {
    let script = format!(
        r#"
import multiprocessing as mp, statistics, time
def f():
    pass
if __name__ == "__main__":
    mp.set_start_method("{method}")
    if "{method}" == "forkserver":
        mp.set_forkserver_preload([])
    p = mp.Process(target=f); p.start(); p.join()  # start the server, warm up
    res = []
    for _ in range({rounds}):
        t = time.perf_counter()
        for _ in range({per_round}):
            p = mp.Process(target=f)
            p.start()
            p.join()
        res.append((time.perf_counter() - t) / {per_round})
    print(statistics.median(res))
"#
    );
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// Python `multiprocessing.Process` start+join with the fork start method;
/// `None` when python3 is unavailable.
fn python_start_join() -> Option<f64> {
    let script = format!(
        r#"
import multiprocessing as mp, statistics, time
def f():
    pass
if __name__ == "__main__":
    mp.set_start_method("fork")
    res = []
    for _ in range({ROUNDS}):
        t = time.perf_counter()
        for _ in range({FORKS_PER_ROUND}):
            p = mp.Process(target=f)
            p.start()
            p.join()
        res.append((time.perf_counter() - t) / {FORKS_PER_ROUND})
    print(statistics.median(res))
"#
    );
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

fn read_exact(fd: &OwnedFd, buf: &mut [u8]) -> bool {
    let mut got = 0;
    while got < buf.len() {
        match nix::unistd::read(fd.as_fd(), &mut buf[got..]) {
            Ok(0) | Err(_) => return false,
            Ok(n) => got += n,
        }
    }
    true
}

fn write_all(fd: &OwnedFd, buf: &[u8]) {
    let mut done = 0;
    while done < buf.len() {
        done += nix::unistd::write(fd, &buf[done..]).expect("write");
    }
}

/// Raw 64-byte round trips over two pipes with a forked echo child.
fn raw_pipe_round_trip() -> f64 {
    let (req_r, req_w) = nix::unistd::pipe().expect("pipe");
    let (rep_r, rep_w) = nix::unistd::pipe().expect("pipe");
    // The child keeps its copies of the parent's ends open (closing raw
    // descriptors would need unsafe), so it never sees EOF: it is ended
    // with SIGKILL once the timed loop is done.
    let mut child = fork_child(&ForkOptions::new(), move || {
        let mut buf = [0u8; MSG];
        while read_exact(&req_r, &mut buf) {
            write_all(&rep_w, &buf);
        }
        0
    })
    .expect("fork");
    let msg = [7u8; MSG];
    let mut buf = [0u8; MSG];
    let per = time_per_op(ROUND_TRIPS_PER_ROUND, || {
        for _ in 0..ROUND_TRIPS_PER_ROUND {
            write_all(&req_w, &msg);
            assert!(read_exact(&rep_r, &mut buf));
        }
    });
    child
        .signal(nix::sys::signal::Signal::SIGKILL)
        .expect("kill");
    child.wait().expect("wait");
    drop(req_w);
    per
}

/// Our 64-byte round trips: requests and replies on `mine`/`back`,
/// echoed by a forked child on `theirs`/`reply`.
fn ours_round_trip(
    mut mine: Connection,
    mut back: Option<Connection>,
    mut theirs: Connection,
    mut reply: Option<Connection>,
) -> f64 {
    mine.close_on_fork();
    if let Some(b) = back.as_mut() {
        b.close_on_fork();
    }
    let mut child = fork_child(&ForkOptions::new(), move || {
        while let Ok(m) = theirs.recv_bytes() {
            let sent = match reply.as_mut() {
                Some(r) => r.send_bytes(&m),
                None => theirs.send_bytes(&m),
            };
            if sent.is_err() {
                break;
            }
        }
        0
    })
    .expect("fork");
    let msg = [7u8; MSG];
    let per = time_per_op(ROUND_TRIPS_PER_ROUND, || {
        for _ in 0..ROUND_TRIPS_PER_ROUND {
            mine.send_bytes(&msg).expect("send");
            let got = match back.as_mut() {
                Some(b) => b.recv_bytes(),
                None => mine.recv_bytes(),
            }
            .expect("recv");
            assert_eq!(got.len(), MSG);
        }
    });
    drop(mine);
    drop(back);
    child.wait().expect("wait");
    per
}

fn ours_one_way_pair_round_trip() -> f64 {
    let (req_r, req_w) = pipe(false).expect("pipe");
    let (rep_r, rep_w) = pipe(false).expect("pipe");
    ours_round_trip(req_w, Some(rep_r), req_r, Some(rep_w))
}

fn ours_duplex_round_trip() -> f64 {
    let (a, b) = pipe(true).expect("pipe");
    ours_round_trip(a, None, b, None)
}

/// One-way 64-byte messages per second from a forked sender.
fn ours_one_way_rate(send_buffer: usize) -> f64 {
    let (mut r, mut w) = pipe(false).expect("pipe");
    r.close_on_fork();
    w.set_send_buffer(send_buffer).expect("buffer");
    let mut child = fork_child(&ForkOptions::new(), move || {
        let msg = [1u8; MSG];
        for _ in 0..ONE_WAY_MESSAGES {
            if w.send_bytes(&msg).is_err() {
                return 1;
            }
        }
        if w.flush().is_err() {
            return 1;
        }
        0
    })
    .expect("fork");
    let t = Instant::now();
    for _ in 0..ONE_WAY_MESSAGES {
        let m = r.recv_bytes().expect("recv");
        assert_eq!(m.len(), MSG);
    }
    let rate = ONE_WAY_MESSAGES as f64 / t.elapsed().as_secs_f64();
    assert_eq!(child.wait().expect("wait"), 0);
    rate
}

fn fmt_time(s: f64) -> String {
    if s >= 1e-3 {
        format!("{:.2} ms", s * 1e3)
    } else {
        format!("{:.2} µs", s * 1e6)
    }
}

fn main() {
    // While this process has one thread: the fork server copies this image.
    start_forkserver().expect("fork server");
    let started = Instant::now();
    let (mut ours, mut bare) = (Vec::new(), Vec::new());
    let (mut rt_ours, mut rt_raw, mut rt_duplex) = (Vec::new(), Vec::new(), Vec::new());
    let (mut rates, mut buffered_rates) = (Vec::new(), Vec::new());
    // Forks are timed one by one, alternating ours and bare, so a burst of
    // load on the shared machine hits both; the median drops the outliers.
    for _ in 0..ROUNDS * FORKS_PER_ROUND {
        ours.push(ours_start_join());
        bare.push(bare_fork_exit_waitpid());
    }
    for _ in 0..ROUNDS {
        rt_ours.push(ours_one_way_pair_round_trip());
        rt_duplex.push(ours_duplex_round_trip());
        rt_raw.push(raw_pipe_round_trip());
    }
    for _ in 0..3 {
        rates.push(ours_one_way_rate(0));
        buffered_rates.push(ours_one_way_rate(64 * 1024));
    }
    // Start methods, alternating: fork vs forkserver, both `from_fn`.
    let fork_ctx = get_context(StartMethod::Fork).expect("fork context");
    let server_ctx = get_context(StartMethod::ForkServer).expect("forkserver context");
    let (mut via_fork, mut via_server) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS * FORKS_PER_ROUND / 2 {
        via_fork.push(from_fn_start_join(&fork_ctx));
        via_server.push(from_fn_start_join(&server_ctx));
    }
    let (via_fork, via_server) = (median(via_fork), median(via_server));
    let py_server = python_method_start_join("forkserver", ROUNDS, 100);
    let py_spawn = python_method_start_join("spawn", 3, 10);
    let python = python_start_join();
    let (ours, bare) = (median(ours), median(bare));
    let (rt_ours, rt_duplex, rt_raw) = (median(rt_ours), median(rt_duplex), median(rt_raw));
    let rate = median(rates);
    let buffered_rate = median(buffered_rates);

    println!("| measurement | ours (median) | peer (median) | ratio ours/peer | goal |");
    println!("|---|---|---|---|---|");
    println!(
        "| `Process` start+join vs bare fork+_exit+waitpid | {} | {} | {:.2}× | ≤ 1.3× |",
        fmt_time(ours),
        fmt_time(bare),
        ours / bare
    );
    match python {
        Some(py) => println!(
            "| `Process` start+join vs Python `multiprocessing.Process` (fork) | {} | {} | {:.3}× ({:.1}× faster) | ≥ 10× faster |",
            fmt_time(ours),
            fmt_time(py),
            ours / py,
            py / ours
        ),
        None => println!("| `Process` start+join vs Python | {} | python3 not found | – | ≥ 10× faster |", fmt_time(ours)),
    }
    println!(
        "| `from_fn` start+join: forkserver vs fork (ours) | {} | {} | {:.2}× | – |",
        fmt_time(via_server),
        fmt_time(via_fork),
        via_server / via_fork
    );
    for (name, py) in [("forkserver", py_server), ("spawn", py_spawn)] {
        match py {
            Some(py) => println!(
                "| forkserver start+join (ours) vs Python `{name}` | {} | {} | {:.3}× ({:.1}× faster) | – |",
                fmt_time(via_server),
                fmt_time(py),
                via_server / py,
                py / via_server
            ),
            None => println!(
                "| forkserver start+join (ours) vs Python `{name}` | {} | python3 not found | – | – |",
                fmt_time(via_server)
            ),
        }
    }
    println!(
        "| 64 B round trip: two `pipe(false)` vs two raw pipes | {} | {} | {:.2}× | ≤ 1.5× |",
        fmt_time(rt_ours),
        fmt_time(rt_raw),
        rt_ours / rt_raw
    );
    println!(
        "| 64 B round trip: `pipe(true)` (socketpair) vs two raw pipes | {} | {} | {:.2}× | – |",
        fmt_time(rt_duplex),
        fmt_time(rt_raw),
        rt_duplex / rt_raw
    );
    println!(
        "| one-way 64 B `send_bytes`→`recv_bytes` rate, unbuffered (one `write` per message) | {:.2} M msg/s | – | – | ≥ 1.5 M msg/s |",
        rate / 1e6
    );
    println!(
        "| one-way 64 B rate with `set_send_buffer(64 KiB)` | {:.2} M msg/s | – | – | ≥ 1.5 M msg/s |",
        buffered_rate / 1e6
    );
    println!(
        "\n{} rounds × {} forks, {} round trips, {} one-way messages; {:.1?} total",
        ROUNDS,
        FORKS_PER_ROUND,
        ROUND_TRIPS_PER_ROUND,
        ONE_WAY_MESSAGES,
        started.elapsed()
    );
}
