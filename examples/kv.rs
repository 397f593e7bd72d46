//! A key-value server, and the one surprise of switching strategies:
//! state kept in the handler's own memory is per *process*.
//!
//! ```sh
//! cargo run --release --example kv -- [--mode sync|threading|forking|prefork|async] [--store manager|local] [--listen ADDR]
//! ```
//!
//! The protocol is one command per line: `SET key value` answers `OK`,
//! `GET key` answers the value or `NOT FOUND`, `DEL key` answers `OK`.
//!
//! With `--store local` the map is an `Arc<Mutex<HashMap>>` captured by
//! the handler factory. Under `sync`, `threading` and `async` every
//! connection shares it. Under `forking`, each connection runs in a child
//! that gets a *copy* of the map, so a `SET` on one connection is never
//! seen by a `GET` on another; under `prefork`, each worker has its own
//! copy. Python's `ForkingMixIn` behaves the same way.
//!
//! With `--store manager` (the default) the map lives in a
//! `process::Manager` (a server process of its own, as in Python's
//! `multiprocessing.Manager().dict()`), and every strategy sees one map.
//! A shared-memory `process::Value`/`Array` does the same for plain data.
//!
//! When ready it prints `listening on tcp://HOST:PORT (mode MODE, store
//! STORE)`; SIGINT or SIGTERM stop it.

use std::collections::HashMap;
use std::io::{self, BufRead, Write};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use clap::{Parser, ValueEnum};
use socketserver::process::{DictProxy, Manager};
#[cfg(feature = "async")]
use socketserver::server::Async;
use socketserver::server::{
    shutdown_on_signals, Forking, Prefork, Server, SocketServer, Strategy, Synchronous,
    TcpTransport, Threading,
};
use socketserver::{Request, RequestHandler};

/// Where the map lives.
#[derive(Clone)]
enum Store {
    /// In this process's memory: one copy per process.
    Local(Arc<Mutex<HashMap<String, String>>>),
    /// In a `Manager` server process: one map for every process.
    Manager(DictProxy<String>),
}

impl Store {
    fn set(&self, key: &str, value: &str) -> io::Result<()> {
        match self {
            Store::Local(m) => {
                m.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(key.into(), value.into());
                Ok(())
            }
            Store::Manager(d) => d.set(key, &value.to_string()).map_err(io::Error::other),
        }
    }

    fn get(&self, key: &str) -> io::Result<Option<String>> {
        match self {
            Store::Local(m) => Ok(m
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(key)
                .cloned()),
            Store::Manager(d) => d.get(key).map_err(io::Error::other),
        }
    }

    fn del(&self, key: &str) -> io::Result<()> {
        match self {
            Store::Local(m) => {
                m.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
                Ok(())
            }
            Store::Manager(d) => d.remove(key).map(drop).map_err(io::Error::other),
        }
    }
}

/// One connection: reads commands, answers each on its own line.
struct Kv {
    store: Store,
}

impl RequestHandler for Kv {
    fn handle(&mut self, req: &mut Request) -> io::Result<()> {
        let mut line = String::new();
        while req.rfile().read_line(&mut line)? > 0 {
            let mut words = line.trim_end().splitn(3, ' ');
            let reply = match (words.next(), words.next(), words.next()) {
                (Some("SET"), Some(k), Some(v)) => self.store.set(k, v).map(|()| "OK".into())?,
                (Some("GET"), Some(k), None) => {
                    self.store.get(k)?.unwrap_or_else(|| "NOT FOUND".into())
                }
                (Some("DEL"), Some(k), None) => self.store.del(k).map(|()| "OK".into())?,
                _ => "ERR usage: SET key value | GET key | DEL key".into(),
            };
            req.wfile().write_all(format!("{reply}\n").as_bytes())?;
            line.clear();
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    Sync,
    Threading,
    Forking,
    Prefork,
    #[cfg(feature = "async")]
    Async,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum StoreKind {
    /// A `process::Manager` dict: one map for every process.
    Manager,
    /// This process's memory: one copy per process under forking/prefork.
    Local,
}

#[derive(Debug, Parser)]
#[command(about = "A key-value server on every strategy")]
struct Args {
    /// Concurrency strategy.
    #[arg(long, value_enum, default_value_t = Mode::Threading)]
    mode: Mode,
    /// Where the map lives.
    #[arg(long, value_enum, default_value_t = StoreKind::Manager)]
    store: StoreKind,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9100")]
    listen: SocketAddr,
}

fn serve<S: Strategy>(args: &Args, store: Store) -> anyhow::Result<()> {
    let mut server = SocketServer::<TcpTransport, S>::bind(args.listen, move || Kv {
        store: store.clone(),
    })?;
    let _signals = shutdown_on_signals(&server.shutdown_handle())?;
    println!(
        "listening on tcp://{} (mode {}, store {})",
        server.server_address(),
        S::NAME,
        match args.store {
            StoreKind::Manager => "manager",
            StoreKind::Local => "local",
        }
    );
    io::stdout().flush()?;
    server.serve_forever()?;
    server.server_close();
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // The manager's server process is forked first, before any thread.
    let _manager;
    let store = match args.store {
        StoreKind::Manager => {
            let m = Manager::new()?;
            let d = m.dict::<String>()?;
            _manager = m;
            Store::Manager(d)
        }
        StoreKind::Local => Store::Local(Arc::default()),
    };
    match args.mode {
        Mode::Sync => serve::<Synchronous>(&args, store),
        Mode::Threading => serve::<Threading>(&args, store),
        Mode::Forking => serve::<Forking>(&args, store),
        Mode::Prefork => serve::<Prefork>(&args, store),
        #[cfg(feature = "async")]
        Mode::Async => serve::<Async>(&args, store),
    }
}
