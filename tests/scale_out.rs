//! Scale-out behind a real balancer: Debian's HAProxy in front of three
//! echo backends, each on its own test host (a network namespace this test
//! makes, or 127.0.0.x where it cannot), driven by `loadtest --json`.
//!
//! Skipped, with a line saying so, where `haproxy` is not installed (the
//! README's test command passes on a machine with only Rust and Python);
//! `.ci/run` installs it, so CI runs it.

#[path = "balancer_support/mod.rs"]
mod balancer;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use balancer::{free_port, haproxy, leftover_namespaces, Backend, Hosts, Proc};
use serde_json::Value;

fn target_dir() -> PathBuf {
    // tests run from target/debug/deps/
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().to_path_buf()
}

fn example(name: &str) -> PathBuf {
    let bin = target_dir().join("examples").join(name);
    assert!(bin.exists(), "{} not built", bin.display());
    bin
}

/// The workspace's `loadtest` binary, built if this test runs alone.
fn loadtest_bin() -> PathBuf {
    let bin = target_dir().join("loadtest");
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let ok = Command::new(cargo)
            .args(["build", "-p", "loadtest"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("cargo build -p loadtest");
        assert!(ok.success());
    }
    bin
}

fn loadtest(addr: SocketAddr, args: &[&str]) -> Value {
    let out = Command::new(loadtest_bin())
        .arg(addr.to_string())
        .arg("--json")
        .args(args)
        .output()
        .expect("run loadtest");
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| {
        panic!(
            "loadtest JSON: {e}: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn errors(v: &Value) -> u64 {
    v["errors"]["total"].as_u64().unwrap()
}

/// Starts the echo example on host `i`, listening on `addr`.
fn echo_backend(hosts: &Hosts, i: usize, port: u16, extra: &[&str]) -> Proc {
    let mut cmd = hosts.command(i, &example("echo"));
    cmd.args([
        "--listen",
        &SocketAddr::new(hosts.addrs[i], port).to_string(),
    ])
    .args(extra);
    let mut p = Proc::start(cmd);
    assert!(
        p.wait_for("listening on", Duration::from_secs(10))
            .is_some(),
        "backend {i} did not start: {:?}",
        p.drain()
    );
    p
}

#[test]
fn haproxy_spreads_load_over_three_namespaced_backends() {
    if !balancer::installed("haproxy") {
        eprintln!("skipped: haproxy is not installed (apt-get install haproxy)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    {
        let hosts = Hosts::new(3);
        eprintln!("backends on {:?} hosts: {:?}", hosts.kind, hosts.addrs);
        let port = 9000;
        let backends: Vec<Proc> = (0..3).map(|i| echo_backend(&hosts, i, port, &[])).collect();
        let front = free_port();
        let lb: Vec<Backend> = hosts
            .addrs
            .iter()
            .map(|&ip| Backend {
                addr: SocketAddr::new(ip, port),
                agent_port: None,
            })
            .collect();
        let _haproxy = haproxy(dir.path(), front, &lb, false);
        let v = loadtest(
            SocketAddr::from(([127, 0, 0, 1], front)),
            &["-c", "6", "-d", "1s"],
        );
        assert!(v["requests"].as_u64().unwrap() > 100, "{v}");
        assert_eq!(errors(&v), 0, "{v}");
        // Round robin: every backend is up and was given two of the six
        // connections at least (loadtest first makes one more connection
        // to check the target is there; health checks are not sessions).
        let stats = balancer::haproxy_stats(dir.path());
        assert_eq!(stats.len(), 3, "{stats:?}");
        for s in &stats {
            assert!(s.status.starts_with("UP"), "{stats:?}");
            assert!(s.sessions >= 2, "{stats:?}");
        }
        drop(backends);
    }
    assert!(
        leftover_namespaces().is_empty(),
        "namespaces left: {:?}",
        leftover_namespaces()
    );
}
