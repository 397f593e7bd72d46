//! The seed documents' `multiprocessing` programs in Rust: each section
//! prints what its Python original shows.
//!
//! ```sh
//! cargo run --release --example processes
//! ```

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use socketserver::process::{self, current_process, parent_pid, pipe, Lock, Process, Queue};

fn info(title: &str) {
    println!("{title}");
    println!("  module name: {}", module_path!());
    println!("  parent process: {}", parent_pid());
    println!("  process id: {}", std::process::id());
}

fn main() -> anyhow::Result<()> {
    println!("== three children, started then joined ==");
    let mut children: Vec<Process> = ["bob", "alice", "carol"]
        .into_iter()
        .map(|name| {
            Process::new(move || {
                let me = current_process();
                println!("  hello {name} from {} (pid {})", me.name, me.pid);
            })
        })
        .collect();
    for p in &mut children {
        p.start()?;
    }
    for p in &mut children {
        p.join()?;
    }
    println!(
        "  all joined: {:?}",
        children
            .iter_mut()
            .map(|p| p.exitcode())
            .collect::<Vec<_>>()
    );

    println!("\n== getpid / getppid ==");
    info("main line");
    let mut p = Process::new(|| info("function f"));
    p.start()?;
    p.join()?;

    println!("\n== a Queue fed by three processes ==");
    let q: Queue<(String, u32)> = Queue::new()?;
    let mut producers = Vec::new();
    for n in 0..3 {
        let q = q.clone();
        let mut p = Process::new(move || {
            let name = current_process().name;
            for i in 0..3 {
                if q.put(&(name.clone(), n * 10 + i)).is_err() {
                    process::exit(2);
                }
            }
        });
        p.start()?;
        producers.push(p);
    }
    let mut got = Vec::new();
    for _ in 0..9 {
        got.push(q.get_timeout(Duration::from_secs(10))?);
    }
    for p in &mut producers {
        p.join()?;
    }
    got.sort_by_key(|(_, v)| *v);
    for (who, v) in &got {
        println!("  got {v:>2} from {who}");
    }

    println!("\n== a Pipe: request and response ==");
    let (mut parent_end, mut child_end) = pipe(true)?;
    parent_end.close_on_fork();
    let mut server = Process::new(move || {
        while let Ok(question) = child_end.recv::<String>() {
            let answer = format!("{} has {} letters", question, question.chars().count());
            if child_end.send(&answer).is_err() {
                break;
            }
        }
    });
    server.start()?; // the parent's copy of child_end is dropped here
    for word in ["hello", "multiprocessing"] {
        parent_end.send(word)?;
        println!("  asked {word:?}, got {:?}", parent_end.recv::<String>()?);
    }
    drop(parent_end); // EOF for the child, which then returns
    println!("  server exit code {}", server.join()?);

    println!("\n== a Lock serialising writers of one file ==");
    let dir = tempfile_dir()?;
    let path = dir.join("shared.log");
    std::fs::write(&path, b"")?;
    let lock = Lock::new()?;
    let mut writers = Vec::new();
    for w in 0..3 {
        let lock = lock.clone();
        let path = path.clone();
        let mut p = Process::new(move || {
            for round in 0..2 {
                let Ok(_guard) = lock.acquire() else {
                    process::exit(2);
                };
                // Two writes with a pause between: without the lock, other
                // writers' lines would land in between.
                let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(&path) else {
                    process::exit(3);
                };
                let _ = writeln!(f, "writer {w} round {round}: begin");
                std::thread::sleep(Duration::from_millis(5));
                let _ = writeln!(f, "writer {w} round {round}: end");
            }
        });
        p.start()?;
        writers.push(p);
    }
    for p in &mut writers {
        p.join()?;
    }
    let text = std::fs::read_to_string(&path)?;
    let lines: Vec<&str> = text.lines().collect();
    for l in &lines {
        println!("  {l}");
    }
    let paired = lines
        .chunks(2)
        .all(|c| c.len() == 2 && c[0].replace("begin", "") == c[1].replace("end", ""));
    println!("  every begin is followed by its own end: {paired}");
    std::fs::remove_dir_all(&dir)?;

    println!("\n== exit codes: normal, explicit, panicking, terminated, killed ==");
    let mut normal = Process::new(|| {});
    let mut explicit = Process::new(|| process::exit(3));
    let mut panicking = Process::builder().name("panicker").target(|| {
        std::panic::set_hook(Box::new(|i| eprintln!("  (child panicked: {i})")));
        panic!("boom")
    });
    let mut terminated = Process::new(|| std::thread::sleep(Duration::from_secs(60)));
    let mut killed = Process::new(|| std::thread::sleep(Duration::from_secs(60)));
    for p in [
        &mut normal,
        &mut explicit,
        &mut panicking,
        &mut terminated,
        &mut killed,
    ] {
        p.start()?;
    }
    terminated.terminate()?;
    killed.kill()?;
    for (what, p) in [
        ("normal return", &mut normal),
        ("process::exit(3)", &mut explicit),
        ("panic", &mut panicking),
        ("terminate() (SIGTERM)", &mut terminated),
        ("kill() (SIGKILL)", &mut killed),
    ] {
        println!("  {what:<22} exitcode = {}", p.join()?);
    }

    println!("\n== a daemon child dies with its parent, even on SIGKILL ==");
    let (mut rx, mut tx) = pipe(false)?;
    let mut middle = Process::builder().name("middle").target(move || {
        let mut daemon = Process::builder()
            .name("daemon")
            .daemon(true)
            .target(|| std::thread::sleep(Duration::from_secs(60)));
        if daemon.start().is_err() {
            process::exit(2);
        }
        let _ = tx.send(&daemon.pid());
        std::thread::sleep(Duration::from_secs(60));
    });
    middle.start()?;
    let daemon_pid: i32 = rx.recv::<Option<i32>>()?.context("daemon did not start")?;
    println!(
        "  middle pid {:?} started daemon pid {daemon_pid}",
        middle.pid()
    );
    middle.kill()?;
    println!("  middle killed: exitcode {}", middle.join()?);
    let t = Instant::now();
    while alive(daemon_pid) {
        if t.elapsed() > Duration::from_secs(5) {
            bail!("daemon {daemon_pid} survived its parent");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    println!("  daemon {daemon_pid} is gone after {:?}", t.elapsed());
    Ok(())
}

/// Whether `pid` is a live (not zombie) process.
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rsplit(')')
            .next()
            .is_some_and(|rest| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("processes-example-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
