//! The seed's shared dict/list program: five processes each insert into a
//! shared dict and append to a shared list held by a `Manager`; the parent
//! prints both after joining them.
//!
//! ```sh
//! cargo run --release --example manager
//! ```

use socketserver::process::{current_process, DictProxy, ListProxy, Manager, Process};

fn f(d: &DictProxy<String>, l: &ListProxy<i64>, i: i64) -> socketserver::Result<()> {
    d.set(i.to_string(), &format!("set by {}", current_process().name))?;
    l.append(&(i * i))?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let manager = Manager::new()?;
    let d = manager.dict::<String>()?;
    let l = manager.list::<i64>()?;

    let mut processes = Vec::new();
    for i in 0..5 {
        let (d, l) = (d.clone(), l.clone());
        let mut p = Process::new(move || {
            if let Err(e) = f(&d, &l, i) {
                eprintln!("process {i}: {e}");
                socketserver::process::exit(1);
            }
        });
        p.start()?;
        processes.push(p);
    }
    for mut p in processes {
        anyhow::ensure!(p.join()? == 0, "a child failed");
    }

    println!("{:?}", d.to_map()?);
    let mut list = l.to_vec()?;
    list.sort_unstable();
    println!("{list:?}");
    Ok(())
}
