//! The FTP example's path resolver (`examples/ftp/confine.rs`, included as
//! it is, not copied): `confine::resolve(root, cwd, path, flags)`.
//!
//! A fixed test tree is made once per process:
//!
//! ```text
//! BASE/outside/secret          the canary: must never be opened
//! BASE/outside/dir/
//! BASE/root/                   the FTP root
//! BASE/root/sub/f              a file inside
//! BASE/root/sub/up   -> ..                 (inside: the root itself)
//! BASE/root/abs      -> /                  (absolute: the root, chroot-style)
//! BASE/root/out      -> ../outside         (relative, escaping)
//! BASE/root/host     -> BASE/outside       (absolute host path)
//! BASE/root/secret   -> BASE/outside/secret
//! BASE/root/loop     -> loop
//! BASE/root/d/deep/deeper/
//! ```
//!
//! The input is split at the first NUL or newline into the working
//! directory and the client's path (as an FTP client sends them, lossy
//! UTF-8). Properties, for every input:
//! - whatever is opened is the root or lies beneath it: the kernel's name
//!   for the descriptor (`/proc/self/fd/N`) starts with the root's real
//!   path, component by component;
//! - no descriptor is ever the canary's inode or the outside directory's;
//! - a file opened for reading never holds the canary's bytes.
#![no_main]

#[path = "../../examples/ftp/confine.rs"]
#[allow(dead_code)]
mod confine;

use std::fs;
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{symlink, MetadataExt};
use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use rustix::fs::OFlags;
use socketserver_fuzz::Counting;

/// Counts allocations and refuses any over 256 MiB.
#[global_allocator]
static ALLOC: Counting = Counting;

const CANARY: &[u8] = b"CANARY-outside-the-root";

struct Tree {
    root: OwnedFd,
    real_root: PathBuf,
    /// (dev, ino) of everything outside the root that a link points at.
    outside: Vec<(u64, u64)>,
}

fn tree() -> &'static Tree {
    static TREE: OnceLock<Tree> = OnceLock::new();
    TREE.get_or_init(|| {
        let base = std::env::temp_dir().join(format!("ftp-path-fuzz-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        let (root, outside) = (base.join("root"), base.join("outside"));
        fs::create_dir_all(outside.join("dir")).unwrap();
        fs::write(outside.join("secret"), CANARY).unwrap();
        fs::create_dir_all(root.join("sub")).unwrap();
        fs::create_dir_all(root.join("d/deep/deeper")).unwrap();
        fs::write(root.join("sub/f"), b"inside").unwrap();
        symlink("..", root.join("sub/up")).unwrap();
        symlink("/", root.join("abs")).unwrap();
        symlink("../outside", root.join("out")).unwrap();
        symlink(&outside, root.join("host")).unwrap();
        symlink(outside.join("secret"), root.join("secret")).unwrap();
        symlink("loop", root.join("loop")).unwrap();
        let ids = |p: PathBuf| {
            let m = fs::metadata(p).unwrap();
            (m.dev(), m.ino())
        };
        let outside_ids = vec![
            ids(outside.clone()),
            ids(outside.join("secret")),
            ids(outside.join("dir")),
            ids(base.clone()),
        ];
        let fd = rustix::fs::open(
            &root,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .unwrap();
        Tree {
            root: fd,
            real_root: fs::canonicalize(&root).unwrap(),
            outside: outside_ids,
        }
    })
}

fn check(t: &Tree, fd: &OwnedFd, cwd: &str, path: &str) {
    let name = fs::read_link(format!("/proc/self/fd/{}", {
        use std::os::fd::AsRawFd;
        fd.as_raw_fd()
    }))
    .unwrap();
    assert!(
        name.starts_with(&t.real_root),
        "cwd {cwd:?} path {path:?} opened {name:?}, outside {:?}",
        t.real_root
    );
    let st = rustix::fs::fstat(fd).unwrap();
    let id = (st.st_dev as u64, st.st_ino as u64);
    assert!(
        !t.outside.contains(&id),
        "cwd {cwd:?} path {path:?} opened an outside inode ({name:?})"
    );
}

fuzz_target!(|data: &[u8]| {
    if data.len() > 4096 {
        return;
    }
    let t = tree();
    let split = data
        .iter()
        .position(|&b| b == 0 || b == b'\n')
        .unwrap_or(data.len());
    let cwd = String::from_utf8_lossy(&data[..split]);
    let path = String::from_utf8_lossy(data.get(split + 1..).unwrap_or_default());
    // The server keeps its working directory normalised; a fuzzed one is
    // made absolute the same way.
    let cwd = confine::Root::virtual_path("/", &cwd);
    for flags in [
        OFlags::PATH,
        OFlags::PATH | OFlags::DIRECTORY,
        OFlags::RDONLY | OFlags::NONBLOCK,
        OFlags::PATH | OFlags::NOFOLLOW,
    ] {
        if let Ok(fd) = confine::resolve(t.root.as_fd(), &cwd, &path, flags) {
            check(t, &fd, &cwd, &path);
            if !flags.contains(OFlags::PATH) {
                let mut f = fs::File::from(fd);
                let mut buf = Vec::new();
                // A directory reads as an error; a FIFO cannot appear in
                // this tree. Either way the canary must not come back.
                let _ = (&mut f).take(64).read_to_end(&mut buf);
                assert!(
                    !buf.starts_with(CANARY),
                    "cwd {cwd:?} path {path:?} read the canary"
                );
            }
        }
    }
});
