use std::sync::{Arc, Barrier};
use std::time::Instant;
extern "C" fn raw_main(arg: *mut libc::c_void) -> *mut libc::c_void {
    let b = unsafe { Box::from_raw(arg as *mut Arc<Barrier>) };
    b.wait();
    std::ptr::null_mut()
}
fn cpu() -> f64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap();
    let f: Vec<&str> = s[s.rfind(')').unwrap() + 2..].split_whitespace().collect();
    (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / 100.0
}
fn main() {
    let mode = std::env::args().nth(1).unwrap();
    let n: usize = std::env::args().nth(2).unwrap().parse().unwrap();
    let b = Arc::new(Barrier::new(n + 1));
    let c0 = cpu();
    let t0 = Instant::now();
    let mut hs = Vec::new();
    for _ in 0..n {
        let b2 = b.clone();
        match mode.as_str() {
            "named" => hs.push(std::thread::Builder::new().name("socketserver-handler".into()).spawn(move || { b2.wait(); }).unwrap()),
            "unnamed" => hs.push(std::thread::Builder::new().spawn(move || { b2.wait(); }).unwrap()),
            "raw" => unsafe {
                let mut attr: libc::pthread_attr_t = std::mem::zeroed();
                libc::pthread_attr_init(&mut attr);
                libc::pthread_attr_setdetachstate(&mut attr, libc::PTHREAD_CREATE_DETACHED);
                let mut t: libc::pthread_t = 0;
                let arg = Box::into_raw(Box::new(b2)) as *mut libc::c_void;
                assert_eq!(libc::pthread_create(&mut t, &attr, raw_main, arg), 0);
                libc::pthread_attr_destroy(&mut attr);
            },
            _ => panic!(),
        }
    }
    let spawn = t0.elapsed();
    b.wait();
    let all = t0.elapsed();
    for h in hs { h.join().unwrap(); }
    let end = t0.elapsed();
    println!("{mode:8} n={n} spawn-loop {:.1} ms ({:.1} us/thread), all-running {:.1} ms, all-exited {:.1} ms, cpu {:.2} s", spawn.as_secs_f64()*1e3, spawn.as_secs_f64()*1e6/n as f64, all.as_secs_f64()*1e3, end.as_secs_f64()*1e3, cpu()-c0);
}
