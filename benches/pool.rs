//! Pool, ProcessPoolExecutor and Manager against Python's
//! `multiprocessing` (fork start method), in the same run.
//!
//! ```sh
//! cargo bench --bench pool
//! cargo bench --bench pool --features fuzzing   # also: our codec vs bincode 2
//! POOL_BENCH_MAP_ONLY=50 cargo bench --bench pool # only 50 maps (profiling)
//! ```
//!
//! With the `fuzzing` feature (which exposes the pool's crate-private
//! codec as `socketserver::fuzzing::codec_*`), the bench also times the
//! pool codec against `bincode` 2 (serde API, `standard()` with
//! fixed-width integers) encoding and decoding the argument and result
//! batches of `map`, alternating the two, median of `CODEC_ROUNDS`.
//!
//! Each measurement runs several rounds and reports the median of the
//! per-round figures; the ratio is Python's median over ours (higher is
//! better for us). Every loop is bounded in count; Python is run with a
//! 300 s limit.

use std::io::Write;
use std::process::Command;
use std::time::{Duration, Instant};

use socketserver::process::{Manager, Pool, ProcessPoolExecutor};

const WORKERS: usize = 2;
const ROUNDS: usize = 5;
const ROUND_TRIPS: usize = 2_000;
const MAP_ITEMS: u64 = 1_000_000;
const MANAGER_SETS: usize = 2_000;
/// Separate `map` runs for the "every run of five" goal.
const MAP_RUNS: usize = 5;
/// Maps per run of ours (about 60 ms in all, against Python's single map
/// of about 400 ms), so a burst of load on the shared machine weighs on
/// both sides alike instead of landing on one 12 ms map.
const MAP_BATCH: usize = 5;

fn identity(x: u64) -> u64 {
    x
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Median over `ROUNDS` of (round time / ops), in seconds per op.
fn per_op(ops: usize, mut round: impl FnMut()) -> f64 {
    round(); // warm-up
    median(
        (0..ROUNDS)
            .map(|_| {
                let t = Instant::now();
                round();
                t.elapsed().as_secs_f64() / ops as f64
            })
            .collect(),
    )
}

const PYTHON: &str = r#"
import multiprocessing as mp, statistics, sys, time
from concurrent.futures import ProcessPoolExecutor

ROUNDS, TRIPS, ITEMS, SETS, WORKERS = [int(a) for a in sys.argv[1:6]]

def identity(x):
    return x

def per_op(ops, fn, rounds=ROUNDS):
    fn()
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) / ops)
    return statistics.median(times)

if __name__ == "__main__":
    ctx = mp.get_context("fork")
    with ctx.Pool(WORKERS) as pool:
        def trips():
            for i in range(TRIPS):
                pool.apply_async(identity, (i,)).get()
        print("apply_async_get", per_op(TRIPS, trips))
        print("map_1m", per_op(1, lambda: pool.map(identity, range(ITEMS)), rounds=3))
    with ProcessPoolExecutor(WORKERS, mp_context=ctx) as ex:
        def subs():
            for i in range(TRIPS):
                ex.submit(identity, i).result()
        print("executor_submit_result", per_op(TRIPS, subs))
    with ctx.Manager() as m:
        d = m.dict()
        def sets():
            for i in range(SETS):
                d[str(i)] = i
        print("manager_dict_set", per_op(SETS, sets))
"#;

/// Python's figures.
fn python() -> Vec<(String, f64)> {
    let path = std::env::temp_dir().join(format!("pool-bench-{}.py", std::process::id()));
    let written = std::fs::File::create(&path).and_then(|mut f| f.write_all(PYTHON.as_bytes()));
    if let Err(e) = written {
        eprintln!("cannot write the Python script: {e}");
        return Vec::new();
    }
    let out = Command::new("timeout")
        .arg("300")
        .arg("python3")
        .arg(&path)
        .args(
            [
                ROUNDS,
                ROUND_TRIPS,
                MAP_ITEMS as usize,
                MANAGER_SETS,
                WORKERS,
            ]
            .map(|n| n.to_string()),
        )
        .output();
    let _ = std::fs::remove_file(&path);
    match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter_map(|l| {
                let (k, v) = l.split_once(' ')?;
                Some((k.to_owned(), v.trim().parse().ok()?))
            })
            .collect(),
        Ok(o) => {
            eprintln!("python failed: {}", String::from_utf8_lossy(&o.stderr));
            Vec::new()
        }
        Err(e) => {
            eprintln!("cannot run python3: {e}");
            Vec::new()
        }
    }
}

/// A Python pool that runs one `map` over `MAP_ITEMS` each time it reads
/// a line, and prints the seconds it took.
const PYTHON_MAP_SERVER: &str = r#"
import multiprocessing as mp, sys, time

ITEMS, WORKERS = [int(a) for a in sys.argv[1:3]]

def identity(x):
    return x

if __name__ == "__main__":
    with mp.get_context("fork").Pool(WORKERS) as pool:
        pool.map(identity, range(ITEMS))
        print("ready", flush=True)
        for line in sys.stdin:
            if line.strip() != "map":
                break
            t = time.perf_counter()
            pool.map(identity, range(ITEMS))
            print(time.perf_counter() - t, flush=True)
"#;

/// `MAP_RUNS` runs, alternating: ours (the mean of `MAP_BATCH` maps in a
/// row) then Python's (one map, which alone lasts about as long). Returns
/// (ours, Python's) seconds per map, run by run; empty when Python cannot
/// be run.
fn interleaved_map_runs(pool: &Pool) -> (Vec<f64>, Vec<f64>) {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let path = std::env::temp_dir().join(format!("pool-bench-map-{}.py", std::process::id()));
    if let Err(e) =
        std::fs::File::create(&path).and_then(|mut f| f.write_all(PYTHON_MAP_SERVER.as_bytes()))
    {
        eprintln!("cannot write the Python script: {e}");
        return (Vec::new(), Vec::new());
    }
    let child = Command::new("timeout")
        .arg("300")
        .arg("python3")
        .arg(&path)
        .args([MAP_ITEMS.to_string(), WORKERS.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cannot run python3: {e}");
            let _ = std::fs::remove_file(&path);
            return (Vec::new(), Vec::new());
        }
    };
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    if let (Some(mut stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) {
        let mut lines = BufReader::new(stdout).lines();
        if matches!(lines.next(), Some(Ok(l)) if l == "ready") {
            for _ in 0..MAP_RUNS {
                let t = Instant::now();
                for _ in 0..MAP_BATCH {
                    let v = pool.map(identity, 0..MAP_ITEMS).unwrap_or_default();
                    assert_eq!(v.len() as u64, MAP_ITEMS);
                }
                let mine = t.elapsed().as_secs_f64() / MAP_BATCH as f64;
                if stdin
                    .write_all(b"map\n")
                    .and_then(|()| stdin.flush())
                    .is_err()
                {
                    break;
                }
                match lines
                    .next()
                    .and_then(|l| l.ok()?.trim().parse::<f64>().ok())
                {
                    Some(p) => {
                        ours.push(mine);
                        theirs.push(p);
                    }
                    None => break,
                }
            }
        }
        // Closing stdin ends the Python side.
    }
    let _ = child.wait();
    let _ = std::fs::remove_file(&path);
    (ours, theirs)
}

fn fmt_time(s: f64) -> String {
    let d = Duration::from_secs_f64(s);
    if d < Duration::from_millis(1) {
        format!("{:.1} µs", s * 1e6)
    } else {
        format!("{:.1} ms", s * 1e3)
    }
}

/// Encode + decode time of our codec and of bincode 2 for `value`, in
/// seconds (median of `CODEC_ROUNDS` alternating rounds), after checking
/// both round-trip it.
#[cfg(feature = "fuzzing")]
fn codec_pair<T>(value: &T) -> (f64, f64, usize, usize)
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    use socketserver::fuzzing::{codec_from_bytes, codec_to_bytes};
    let config = bincode::config::standard().with_fixed_int_encoding();
    let ours_len = codec_to_bytes(value).expect("encode").len();
    let theirs_len = bincode::serde::encode_to_vec(value, config)
        .expect("encode")
        .len();
    let (mut o, mut b) = (Vec::new(), Vec::new());
    for _ in 0..CODEC_ROUNDS {
        let t = Instant::now();
        let bytes = codec_to_bytes(value).expect("encode");
        let back: T = codec_from_bytes(&bytes).expect("decode");
        o.push(t.elapsed().as_secs_f64());
        assert!(&back == value);
        let t = Instant::now();
        let bytes = bincode::serde::encode_to_vec(value, config).expect("encode");
        let (back, _): (T, usize) =
            bincode::serde::decode_from_slice(&bytes, config).expect("decode");
        b.push(t.elapsed().as_secs_f64());
        assert!(&back == value);
    }
    (median(o), median(b), ours_len, theirs_len)
}

#[cfg(feature = "fuzzing")]
const CODEC_ROUNDS: usize = 21;

/// Our codec vs bincode 2 on `map`'s batches.
#[cfg(feature = "fuzzing")]
fn codec_rows() {
    println!();
    println!("| encode + decode | pool codec | bincode 2 (fixed-int) | ratio (bincode / ours) | bytes (ours / bincode) |");
    println!("|---|---|---|---|---|");
    let numbers: Vec<u64> = (0..MAP_ITEMS).collect();
    let records: Vec<(u32, f64, String, Option<i16>)> = (0..100_000u32)
        .map(|i| {
            (
                i,
                f64::from(i) * 0.5,
                format!("item {i}"),
                (i % 3 == 0).then_some(-7),
            )
        })
        .collect();
    for (label, (o, b, ol, bl)) in [
        (
            "1,000,000 u64 (the map bench's batch)",
            codec_pair(&numbers),
        ),
        (
            "100,000 (u32, f64, String, Option<i16>)",
            codec_pair(&records),
        ),
    ] {
        println!(
            "| {label} | {} | {} | {:.2}x | {ol} / {bl} |",
            fmt_time(o),
            fmt_time(b),
            b / o
        );
    }
    println!("median of {CODEC_ROUNDS} alternating rounds; above 1x: ours is faster.");
}

#[cfg(not(feature = "fuzzing"))]
fn codec_rows() {
    println!("\n(our codec vs bincode 2: run with `--features fuzzing`)");
}

/// `POOL_BENCH_MAP_ONLY=N`: only N `map` calls over `MAP_ITEMS`, each
/// time printed, nothing else (for `perf record`).
fn map_only(n: usize) -> socketserver::Result<()> {
    let pool = Pool::new(WORKERS)?;
    for _ in 0..n {
        let t = Instant::now();
        let v = match std::env::var("POOL_BENCH_CHUNK")
            .ok()
            .and_then(|c| c.parse().ok())
        {
            Some(c) => pool.map_chunked(identity, 0..MAP_ITEMS, c)?,
            None => pool.map(identity, 0..MAP_ITEMS)?,
        };
        assert_eq!(v.len() as u64, MAP_ITEMS);
        println!("map: {}", fmt_time(t.elapsed().as_secs_f64()));
    }
    pool.close();
    pool.join()
}

fn main() -> socketserver::Result<()> {
    if let Some(n) = std::env::var("POOL_BENCH_MAP_ONLY")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return map_only(n);
    }
    let mut ours: Vec<(&str, &str, f64, f64)> = Vec::new();
    let (map_runs, py_map_runs): (Vec<f64>, Vec<f64>);
    {
        let pool = Pool::new(WORKERS)?;
        let trip = per_op(ROUND_TRIPS, || {
            for i in 0..ROUND_TRIPS as u64 {
                let r = pool.apply_async(identity, i).and_then(|r| r.get());
                assert_eq!(r.ok(), Some(i));
            }
        });
        ours.push((
            "apply_async_get",
            "Pool.apply_async(f, x).get() round trip",
            trip,
            5.0,
        ));
        let map = per_op(1, || {
            let v = pool.map(identity, 0..MAP_ITEMS).unwrap_or_default();
            assert_eq!(v.len() as u64, MAP_ITEMS);
        });
        ours.push(("map_1m", "Pool.map(f, range(1_000_000))", map, 20.0));
        (map_runs, py_map_runs) = interleaved_map_runs(&pool);
        pool.close();
        pool.join()?;
    }
    {
        let mut ex = ProcessPoolExecutor::new(Some(WORKERS))?;
        let trip = per_op(ROUND_TRIPS, || {
            for i in 0..ROUND_TRIPS as u64 {
                let r = ex.submit(identity, i).and_then(|f| f.result());
                assert_eq!(r.ok(), Some(i));
            }
        });
        ours.push((
            "executor_submit_result",
            "ProcessPoolExecutor.submit(f, x).result()",
            trip,
            0.0,
        ));
        ex.shutdown(true);
    }
    {
        let manager = Manager::new()?;
        let d = manager.dict::<u64>()?;
        let keys: Vec<String> = (0..MANAGER_SETS).map(|i| i.to_string()).collect();
        let set = per_op(MANAGER_SETS, || {
            for (i, k) in keys.iter().enumerate() {
                d.set(k.as_str(), &(i as u64)).expect("manager dict set");
            }
        });
        ours.push(("manager_dict_set", "Manager dict d[k] = v", set, 3.0));
    }
    let py = python();
    println!();
    println!("| operation | socketserver (median) | Python 3.11 multiprocessing (median) | ratio | goal |");
    println!("|---|---|---|---|---|");
    for (key, label, rust, goal) in ours {
        let theirs = py.iter().find(|(k, _)| k == key).map(|(_, v)| *v);
        let (py_s, ratio) = match theirs {
            Some(p) => (fmt_time(p), format!("{:.1}x", p / rust)),
            None => ("n/a".into(), "n/a".into()),
        };
        let goal = if goal > 0.0 {
            format!("≥{goal:.0}x")
        } else {
            "-".into()
        };
        println!(
            "| {label} | {} | {py_s} | {ratio} | {goal} |",
            fmt_time(rust)
        );
    }
    if py_map_runs.len() == MAP_RUNS {
        // Run i of ours against run i of Python's: the goal holds only if
        // every one of the five is at least 20x.
        let ratios: Vec<f64> = py_map_runs
            .iter()
            .zip(&map_runs)
            .map(|(p, o)| p / o)
            .collect();
        let worst = ratios.iter().copied().fold(f64::INFINITY, f64::min);
        println!(
            "| Pool.map(f, range(1_000_000)), each of {MAP_RUNS} alternating runs (ours: mean of {MAP_BATCH} maps) | {} | {} | {} (worst {worst:.1}x) | ≥20x in every run: {} |",
            map_runs.iter().map(|t| fmt_time(*t)).collect::<Vec<_>>().join(", "),
            py_map_runs.iter().map(|t| fmt_time(*t)).collect::<Vec<_>>().join(", "),
            ratios.iter().map(|r| format!("{r:.1}x")).collect::<Vec<_>>().join(", "),
            if worst >= 20.0 { "yes" } else { "NO" }
        );
    }
    println!("\n{WORKERS} workers, {ROUNDS} rounds (Python map: 3), {ROUND_TRIPS} round trips per round, {MANAGER_SETS} dict sets per round.");
    codec_rows();
    Ok(())
}
