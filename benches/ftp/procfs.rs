//! Memory and CPU of a server's process tree, from /proc.

use std::fs;

/// `pid` and all its live descendants.
pub(crate) fn tree_pids(pid: u32) -> Vec<u32> {
    let mut parent = std::collections::HashMap::new();
    if let Ok(dir) = fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(stat) = fs::read_to_string(format!("/proc/{p}/stat")) else {
                continue;
            };
            let Some(after) = stat.rsplit_once(") ").map(|x| x.1) else {
                continue;
            };
            if let Some(pp) = after.split(' ').nth(1).and_then(|x| x.parse::<u32>().ok()) {
                parent.insert(p, pp);
            }
        }
    }
    let in_tree = |mut p: u32| {
        for _ in 0..64 {
            if p == pid {
                return true;
            }
            match parent.get(&p) {
                Some(&pp) if pp != 0 => p = pp,
                _ => return false,
            }
        }
        false
    };
    parent.keys().copied().filter(|&p| in_tree(p)).collect()
}

/// Sums RSS and PSS (KiB) over `pid` and all its descendants.
pub(crate) fn tree_memory(pid: u32) -> (u64, u64) {
    let field = |text: &str, key: &str| -> u64 {
        text.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let (mut rss, mut pss) = (0, 0);
    for p in tree_pids(pid) {
        rss += fs::read_to_string(format!("/proc/{p}/status"))
            .map(|s| field(&s, "VmRSS:"))
            .unwrap_or(0);
        pss += fs::read_to_string(format!("/proc/{p}/smaps_rollup"))
            .map(|s| field(&s, "Pss:"))
            .unwrap_or(0);
    }
    (rss, pss)
}

/// CPU seconds (user + system, including reaped children) used so far by
/// `pid` and its live descendants.
pub(crate) fn tree_cpu(pid: u32) -> f64 {
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    let mut total = 0u64;
    for p in tree_pids(pid) {
        let Ok(stat) = fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        let Some(after) = stat.rsplit_once(") ").map(|x| x.1) else {
            continue;
        };
        let f: Vec<&str> = after.split(' ').collect();
        // Fields 14-17 of stat (utime stime cutime cstime), 0-based 11..15
        // after the command name.
        for v in f.iter().skip(11).take(4) {
            total += v.parse::<u64>().unwrap_or(0);
        }
    }
    total as f64 / ticks
}

/// On-CPU seconds of every live thread of `pid` and its live descendants,
/// from `/proc/*/task/*/schedstat` (nanoseconds, so one transfer of a
/// fraction of a second is measured exactly, unlike the 10 ms ticks of
/// [`tree_cpu`]). Threads and processes that exit are not counted:
/// measure across spans in which the session's tasks stay alive.
pub(crate) fn tree_cpu_exact(pid: u32) -> f64 {
    let mut ns = 0u64;
    for p in tree_pids(pid) {
        let Ok(tasks) = fs::read_dir(format!("/proc/{p}/task")) else {
            continue;
        };
        for t in tasks.flatten() {
            ns += schedstat_ns(&t.path().join("schedstat"));
        }
    }
    ns as f64 / 1e9
}

/// On-CPU seconds of the calling thread (the bench's client).
pub(crate) fn own_thread_cpu() -> f64 {
    schedstat_ns(std::path::Path::new("/proc/thread-self/schedstat")) as f64 / 1e9
}

/// The first field of a `schedstat` file: nanoseconds spent on a CPU.
fn schedstat_ns(path: &std::path::Path) -> u64 {
    fs::read_to_string(path)
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}
