//! The key-value example (`examples/kv.rs`) under every strategy: a value
//! SET on one connection is seen by a GET on another when the map lives in
//! a `Manager`; with `--store local` it is not, under forking and prefork
//! (each process has its own copy), which is the surprise the README's
//! strategy section describes.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The example, ended by pid (SIGTERM, then SIGKILL) when dropped.
struct Kv {
    child: Child,
    addr: SocketAddr,
}

impl Kv {
    fn start(mode: &str, store: &str) -> Kv {
        let mut child = Command::new(support::example("kv"))
            .args(["--mode", mode, "--store", store, "--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start kv");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .split("tcp://")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .unwrap_or_else(|| panic!("no address in {line:?}"))
            .parse()
            .unwrap();
        Kv { child, addr }
    }

    /// One connection: sends `lines`, returns the replies.
    fn session(&self, lines: &[&str]) -> Vec<String> {
        let s = TcpStream::connect(self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut w = s.try_clone().unwrap();
        let mut r = BufReader::new(s);
        let mut out = Vec::new();
        for l in lines {
            w.write_all(format!("{l}\n").as_bytes()).unwrap();
            let mut reply = String::new();
            r.read_line(&mut reply).unwrap();
            out.push(reply.trim_end().to_string());
        }
        // Ends the connection for a forked child too (it holds a copy).
        let _ = w.shutdown(Shutdown::Both);
        out
    }
}

impl Drop for Kv {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        for _ in 0..500 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn modes() -> Vec<&'static str> {
    let mut m = vec!["sync", "threading", "forking", "prefork"];
    if cfg!(feature = "async") {
        m.push("async");
    }
    m
}

#[test]
fn a_manager_dict_is_one_map_under_every_strategy() {
    for mode in modes() {
        let kv = Kv::start(mode, "manager");
        assert_eq!(kv.session(&["SET colour blue"]), ["OK"], "{mode}");
        assert_eq!(
            kv.session(&["GET colour", "GET missing"]),
            ["blue", "NOT FOUND"],
            "{mode}"
        );
        assert_eq!(
            kv.session(&["DEL colour", "GET colour"]),
            ["OK", "NOT FOUND"],
            "{mode}"
        );
        assert_eq!(
            kv.session(&["PUT x"])[0],
            "ERR usage: SET key value | GET key | DEL key"
        );
    }
}

#[test]
fn local_state_is_per_process_under_forking() {
    // One process: every connection sees the value.
    for mode in ["sync", "threading"] {
        let kv = Kv::start(mode, "local");
        kv.session(&["SET k v"]);
        assert_eq!(kv.session(&["GET k"]), ["v"], "{mode}");
    }
    // A child per connection: the SET happened in a copy that is gone.
    let kv = Kv::start("forking", "local");
    assert_eq!(kv.session(&["SET k v", "GET k"]), ["OK", "v"]);
    assert_eq!(kv.session(&["GET k"]), ["NOT FOUND"]);
}
