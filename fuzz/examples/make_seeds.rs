//! Writes the seed corpora that come from this crate's own peers:
//! `cargo run --example make_seeds` (from `fuzz/`).
//!
//! - `handshake`, `connection_frames`, `manager_protocol`: the bytes of a
//!   real Manager session (`Manager::connect` through a recording relay on
//!   127.0.0.1 to a real manager server): the handshake messages each side
//!   sent, and the request frames that follow.
//! - `pool_codec`: values encoded by the codec's real encoder.
//! - `loadtest_payload`: a few connection ids, sizes and request numbers.
//!
//! PROXY headers and FTP sessions come from real HAProxy and real FTP
//! clients instead: see `fuzz/seeds/*.py`.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use socketserver::fuzzing::codec_to_bytes;
use socketserver::process::{Address, Manager};
use socketserver_fuzz::codec_types::{Record, Shape};

type Log = Arc<Mutex<Vec<(usize, bool, Vec<u8>)>>>;

/// Copies `from` to `to`, logging each chunk as (connection, to_server, bytes).
fn pump(mut from: TcpStream, mut to: TcpStream, conn: usize, up: bool, log: Log) {
    let mut buf = [0u8; 65536];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                log.lock().unwrap().push((conn, up, buf[..n].to_vec()));
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

fn relay(upstream: SocketAddr, log: Log) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for (conn, client) in l.incoming().enumerate() {
            let Ok(client) = client else { return };
            let server = TcpStream::connect(upstream).unwrap();
            let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            let (l1, l2) = (log.clone(), log.clone());
            std::thread::spawn(move || pump(client, server, conn, true, l1));
            std::thread::spawn(move || pump(s2, c2, conn, false, l2));
        }
    });
    addr
}

/// Splits a byte stream into whole frames (4-byte length + payload).
fn frames(mut s: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while s.len() >= 4 {
        let len = u32::from_be_bytes(s[..4].try_into().unwrap()) as usize;
        if s.len() - 4 < len {
            break;
        }
        out.push(&s[..4 + len]);
        s = &s[4 + len..];
    }
    out
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(name), bytes).unwrap();
}

fn manager_session(corpus: &Path) {
    let key = b"seed authkey".to_vec();
    let mut manager = Manager::builder()
        .address("127.0.0.1:0".parse::<SocketAddr>().unwrap())
        .authkey(key.clone())
        .start()
        .unwrap();
    let Address::Tcp(upstream) = manager.address().clone() else {
        unreachable!()
    };
    let log: Log = Arc::default();
    let via = relay(upstream, log.clone());
    {
        let m = Manager::connect(via, &key).unwrap();
        let d = m.dict::<i64>().unwrap();
        d.set("a", &1).unwrap();
        d.update([("b", 2), ("c", -3)]).unwrap();
        let _ = (
            d.get("a"),
            d.remove("b"),
            d.contains_key("c"),
            d.keys(),
            d.to_map(),
        );
        let _ = (d.len(), d.clear());
        let l = m.list::<String>().unwrap();
        l.append(&"x".to_string()).unwrap();
        l.extend(["y".to_string(), "z é".to_string()]).unwrap();
        let _ = (
            l.get(-1),
            l.set(0, &"w".into()),
            l.pop(),
            l.to_vec(),
            l.len(),
        );
        let v = m.value(&vec![1.5f64, -0.0]).unwrap();
        let _ = (v.get(), v.set(&vec![]));
        let ns = m.namespace().unwrap();
        let _ = (
            ns.set("n", &Some(true)),
            ns.get::<Option<bool>>("n"),
            ns.to_map(),
        );
        let lock = m.lock().unwrap();
        let _ = (
            lock.acquire(),
            lock.acquire_timeout(Duration::ZERO),
            lock.release(),
        );
        let q = m.queue::<u32>(2).unwrap();
        let _ = (
            q.put(&7),
            q.put_timeout(&8, Duration::ZERO),
            q.put_timeout(&9, Duration::ZERO),
        );
        let _ = (
            q.get(),
            q.get_nowait(),
            q.get_timeout(Duration::from_millis(1)),
            q.qsize(),
        );
        let _ = m
            .dict_named::<String>("shared")
            .and_then(|d| d.set("k", &"v".into()));
    }
    manager.shutdown().unwrap();
    std::thread::sleep(Duration::from_millis(200));

    // Reassemble each direction of each connection.
    let mut streams: BTreeMap<(usize, bool), Vec<u8>> = BTreeMap::new();
    for (conn, up, bytes) in log.lock().unwrap().iter() {
        streams
            .entry((*conn, *up))
            .or_default()
            .extend_from_slice(bytes);
    }
    for ((conn, up), s) in &streams {
        let f = frames(s);
        let dir = if *up { "client" } else { "server" };
        // The first three frames are the handshake (digest, challenge,
        // verdict for the client; challenge, verdict, digest for the
        // server). Side byte: 0 = we are the listener (peer is a client).
        let hs: Vec<u8> = f.iter().take(3).flat_map(|x| x.iter().copied()).collect();
        let side = if *up { 0u8 } else { 1u8 };
        write(
            &corpus.join("handshake"),
            &format!("{dir}-{conn}"),
            &[&[side][..], &hs].concat(),
        );
        let rest: Vec<u8> = f.iter().skip(3).flat_map(|x| x.iter().copied()).collect();
        if *up {
            manager_seeds(corpus, *conn, &f[3.min(f.len())..]);
        }
        // connection_frames: config byte 0x05 = max 4096, recv_bytes; 0x0e
        // = 65,536, recv_bytes_into.
        if !rest.is_empty() {
            write(
                &corpus.join("connection_frames"),
                &format!("{dir}-{conn}"),
                &[&[0x05][..], &rest].concat(),
            );
            write(
                &corpus.join("connection_frames"),
                &format!("{dir}-{conn}-into"),
                &[&[0x0e][..], &rest].concat(),
            );
        }
    }
    // `Manager::shutdown` talks to the server directly, not through the
    // relay: its request, as serde_json writes `Request::Shutdown`.
    let shutdown = b"\"Shutdown\"";
    let frame = [&(shutdown.len() as u32).to_be_bytes()[..], shutdown].concat();
    write(&corpus.join("manager_protocol"), "shutdown", &frame);
}

/// Splits a recorded session into one seed per shared object: its
/// `Create` and the calls on it, renumbered to object 0 (the first object
/// of the fresh store each run starts with), at most 512 bytes each (the
/// target's input limit).
fn manager_seeds(corpus: &Path, conn: usize, requests: &[&[u8]]) {
    let mut groups: Vec<Vec<u8>> = Vec::new();
    for frame in requests {
        let json = String::from_utf8_lossy(&frame[4..]).into_owned();
        if json.starts_with("{\"Create\"") || groups.is_empty() {
            groups.push(Vec::new());
        }
        let json = match (json.find("\"id\":"), json.find(",\"op\"")) {
            (Some(a), Some(b)) if a < b => format!("{}\"id\":0{}", &json[..a], &json[b..]),
            _ => json,
        };
        let g = groups.last_mut().unwrap();
        if g.len() + 4 + json.len() <= 512 {
            g.extend_from_slice(&(json.len() as u32).to_be_bytes());
            g.extend_from_slice(json.as_bytes());
        }
    }
    for (i, g) in groups.iter().enumerate() {
        write(
            &corpus.join("manager_protocol"),
            &format!("session-{conn}-{i}"),
            g,
        );
    }
}

fn codec_seeds(corpus: &Path) {
    let dir = corpus.join("pool_codec");
    let rec = Record {
        id: 42,
        name: "task".into(),
        tags: vec!["a".into(), "ü".into()],
        score: Some(-7),
        shapes: vec![
            Shape::Empty,
            Shape::Circle(1.5),
            Shape::Rect { w: 3, h: 4 },
            Shape::Pair(-1, 'é'),
            Shape::Nested(Box::new(Shape::Empty)),
        ],
        pairs: vec![(1, true), (65535, false)],
        raw: vec![0, 255, 7],
        unit: (),
    };
    let seed = |config: u8, bytes: Vec<u8>| [vec![config], bytes].concat();
    write(&dir, "record", &seed(0, codec_to_bytes(&rec).unwrap()));
    write(
        &dir,
        "shapes",
        &seed(1, codec_to_bytes(&rec.shapes).unwrap()),
    );
    let t: (String, Vec<u64>, Option<Vec<char>>) =
        ("s".into(), vec![1, u64::MAX], Some(vec!['x', '\u{10FFFF}']));
    write(&dir, "tuple", &seed(2, codec_to_bytes(&t).unwrap()));
    let m: BTreeMap<String, Vec<i32>> =
        [("k".to_string(), vec![-1, 2]), ("l".to_string(), vec![])].into();
    write(&dir, "map", &seed(3, codec_to_bytes(&m).unwrap()));
    let p: (bool, u128, f32, i16, Vec<Vec<u8>>) =
        (true, u128::MAX, f32::NAN, -2, vec![vec![1, 2], vec![]]);
    write(&dir, "scalars", &seed(4, codec_to_bytes(&p).unwrap()));
    let v: Vec<String> = vec!["one".into(), String::new(), "three".into()];
    write(&dir, "strings", &seed(5, codec_to_bytes(&v).unwrap()));
    // A chunk reply of 3 shapes (config: 6 + 8 * expected).
    let mut chunk = 3u64.to_le_bytes().to_vec();
    for s in &rec.shapes[..3] {
        chunk.extend(codec_to_bytes(s).unwrap());
    }
    write(&dir, "chunk", &seed(6 + 8 * 3, chunk));
}

fn loadtest_seeds(corpus: &Path) {
    let dir = corpus.join("loadtest_payload");
    for (i, (id, other, size, a, b)) in [
        (1u64, 2u64, 63u16, 0u64, 1u64),
        (1 << 40 | 7, 1 << 40 | 8, 19, 5, 5),
        (0, 0, 0, 3, 256),
        (9, 10, 4095, u64::MAX, 0),
    ]
    .into_iter()
    .enumerate()
    {
        let mut d = Vec::new();
        d.extend(id.to_le_bytes());
        d.extend(other.to_le_bytes());
        d.extend(size.to_le_bytes());
        d.extend(a.to_le_bytes());
        d.extend(b.to_le_bytes());
        write(&dir, &format!("seed-{i}"), &d);
    }
}

fn main() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
    manager_session(&corpus);
    codec_seeds(&corpus);
    loadtest_seeds(&corpus);
    println!("seeds written under {}", corpus.display());
}
