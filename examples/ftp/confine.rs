//! Path confinement: every path a client names is resolved *beneath a
//! directory handle of `--root`, in the kernel, atomically*.
//!
//! The root is opened once (`O_PATH | O_DIRECTORY`) and kept as a
//! descriptor. A client path is first normalized lexically against the
//! session's virtual working directory (`.` dropped, `..` removes one
//! component and *clamps* at `/`, as in a chroot: `CWD ..` at `/` stays at
//! `/`). The result is then opened with Linux `openat2(2)` relative to the
//! root descriptor with `RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS`:
//!
//! - `..` at the root stays at the root;
//! - an absolute symlink is resolved relative to the root, a relative one
//!   relative to its directory, and neither can climb above the root;
//! - `/proc` magic links are refused.
//!
//! So a symlink may point anywhere: *following it never leaves the root*.
//! A link such as `escape -> /srv/secret` means `<root>/srv/secret`, which
//! usually does not exist, so it answers exactly like any missing name (no
//! existence oracle for files outside the root). Links are followed for
//! reads, stats, listings and `CWD`, always inside the root.
//!
//! Nothing is checked by name and then reopened by name. Operations on an
//! entry *itself* (delete, remove a directory, rename, create) open the
//! entry's *parent* beneath the root the same way and then act on the final
//! plain name with the `*at()` call relative to that parent descriptor; the
//! final name is never followed. A client racing renames of directories and
//! symlinks (`RNFR`/`RNTO`) can change *which* entry inside the root a path
//! names, never make it name something outside.
//!
//! A symlink that does not resolve inside the root (dangling, a loop, or
//! pointing "outside") is *hidden*: listings leave it out and every command
//! treats its name as missing (`DELE`, `RMD` and `RNFR` answer like a
//! missing name; `STOR`, `APPE`, `MKD` and `RNTO` may create an entry under
//! that name, replacing the hidden link).
//!
//! This file depends only on `std` and `rustix`, so a fuzz target can
//! include it with `#[path = ...] mod confine;` and call [`resolve`].

use std::fs::{File, Metadata};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags};

/// How often `openat2` is retried when it reports `EAGAIN` (a concurrent
/// rename raced with a `..` lookup; the kernel asks the caller to retry).
const EAGAIN_RETRIES: usize = 64;

/// Why a path operation failed, as the client is told. Every error of a
/// path operation is mapped here ([`Denied::from_io`]) and turned into a
/// reply in one place ([`Denied::reply`]).
#[derive(Debug)]
pub enum Denied {
    /// No such entry: missing, a hidden (dangling or outside-pointing)
    /// symlink on the way, a loop, or a path the kernel cannot use. All of
    /// these answer the same, so a client cannot tell them apart.
    NotFound,
    /// The file system refused (permissions).
    Forbidden,
    /// A directory was needed (CWD).
    NotADirectory,
    /// A regular file was needed (SIZE, MDTM, RETR, APPE).
    NotAFile,
    /// A non-directory was needed (DELE, STOR).
    IsADirectory,
    /// The entry already exists (MKD).
    Exists,
    /// RMD of a directory that is not empty.
    NotEmpty,
    /// The name is unusable: the root itself, or longer than the file
    /// system allows (`NAME_MAX`).
    BadName,
    /// Any other failure (I/O error, no space, rename into itself ...).
    Other(io::Error),
}

impl Denied {
    /// Maps an I/O error of a path operation.
    pub fn from_io(e: io::Error) -> Denied {
        use rustix::io::Errno;
        let Some(raw) = e.raw_os_error() else {
            return match e.kind() {
                io::ErrorKind::NotFound | io::ErrorKind::InvalidInput => Denied::NotFound,
                io::ErrorKind::PermissionDenied => Denied::Forbidden,
                _ => Denied::Other(e),
            };
        };
        let errno = Errno::from_raw_os_error(raw);
        if errno == Errno::NOENT
            || errno == Errno::NOTDIR
            || errno == Errno::LOOP
            || errno == Errno::XDEV
            || errno == Errno::INVAL
            || errno == Errno::AGAIN
        {
            Denied::NotFound
        } else if errno == Errno::ACCESS || errno == Errno::PERM || errno == Errno::ROFS {
            Denied::Forbidden
        } else if errno == Errno::NAMETOOLONG {
            Denied::BadName
        } else if errno == Errno::ISDIR {
            Denied::IsADirectory
        } else if errno == Errno::EXIST {
            Denied::Exists
        } else if errno == Errno::NOTEMPTY {
            Denied::NotEmpty
        } else {
            Denied::Other(e)
        }
    }

    /// The reply for this refusal: code and text. The only place path
    /// errors become replies.
    pub fn reply(&self) -> (u16, &'static str) {
        match self {
            Denied::NotFound => (550, "No such file or directory."),
            Denied::Forbidden => (550, "Permission denied."),
            Denied::NotADirectory => (550, "Not a directory."),
            Denied::NotAFile => (550, "Not a regular file."),
            Denied::IsADirectory => (550, "Is a directory."),
            Denied::Exists => (550, "File exists."),
            Denied::NotEmpty => (550, "Directory not empty."),
            Denied::BadName => (553, "File name not allowed."),
            Denied::Other(e)
                if e.raw_os_error() == Some(rustix::io::Errno::NOSPC.raw_os_error()) =>
            {
                (452, "No space left on device.")
            }
            Denied::Other(_) => (550, "Requested action not taken."),
        }
    }
}

impl From<io::Error> for Denied {
    fn from(e: io::Error) -> Denied {
        Denied::from_io(e)
    }
}

impl From<rustix::io::Errno> for Denied {
    fn from(e: rustix::io::Errno) -> Denied {
        Denied::from_io(e.into())
    }
}

/// The confined root: a directory descriptor every path is resolved in.
#[derive(Debug)]
pub struct Root {
    fd: OwnedFd,
}

/// The relative path (no leading `/`) of a normalized virtual path, as
/// `openat2` gets it; `.` for the root.
fn relative(vpath: &str) -> &str {
    let rel = vpath.trim_start_matches('/');
    if rel.is_empty() {
        "."
    } else {
        rel
    }
}

/// Opens `path` beneath `root` with `RESOLVE_IN_ROOT`, retrying `EAGAIN`.
fn open_in_root(root: BorrowedFd<'_>, path: &str, flags: OFlags) -> Result<OwnedFd, Denied> {
    // openat2 refuses (EINVAL) O_PATH with anything but O_DIRECTORY,
    // O_NOFOLLOW and O_CLOEXEC.
    let flags = if flags.contains(OFlags::PATH) {
        flags | OFlags::CLOEXEC
    } else {
        flags | OFlags::CLOEXEC | OFlags::NOCTTY
    };
    let resolve = ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS;
    for _ in 0..EAGAIN_RETRIES {
        match rustix::fs::openat2(root, path, flags, Mode::empty(), resolve) {
            Err(rustix::io::Errno::AGAIN) | Err(rustix::io::Errno::INTR) => continue,
            other => return other.map_err(Denied::from),
        }
    }
    Err(Denied::NotFound)
}

/// Resolves the client path `arg` against the virtual working directory
/// `cwd` beneath the root directory `root` and opens it with `flags`
/// (`O_CLOEXEC` is added; `O_CREAT` is refused). The API a fuzz target
/// calls: whatever `cwd` and `arg` are, the result is a descriptor of an
/// entry inside the root, or an error.
///
/// # Errors
/// [`Denied`] as the kernel reports it ([`Denied::NotFound`] for a missing
/// path or one through a hidden link).
// The server itself goes through `Root`; fuzz targets and the unit tests
// call this.
#[allow(dead_code)]
pub fn resolve(
    root: BorrowedFd<'_>,
    cwd: &str,
    arg: &str,
    flags: OFlags,
) -> Result<OwnedFd, Denied> {
    if flags.intersects(OFlags::CREATE | OFlags::TMPFILE) {
        return Err(Denied::BadName);
    }
    let vpath = Root::virtual_path(cwd, arg);
    open_in_root(root, relative(&vpath), flags)
}

/// A plain final name and its parent directory, opened beneath the root.
#[derive(Debug)]
pub struct Parent {
    /// The parent directory (`O_PATH | O_DIRECTORY`).
    pub dir: OwnedFd,
    /// The final name (one component, never `.`/`..`).
    pub name: String,
}

impl Root {
    /// Opens the directory `dir` (`O_PATH | O_DIRECTORY`) as the root.
    ///
    /// # Errors
    /// `dir` does not exist or is not a directory.
    pub fn open(dir: &Path) -> io::Result<Root> {
        let fd = rustix::fs::open(
            dir,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", dir.display())))?;
        Ok(Root { fd })
    }

    /// The root directory descriptor.
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Resolves `arg` against the virtual working directory `cwd` into a
    /// normalized virtual path (always starting with `/`). Purely lexical;
    /// a `..` above the root stays at the root.
    pub fn virtual_path(cwd: &str, arg: &str) -> String {
        let mut parts: Vec<&str> = Vec::new();
        let start = if arg.starts_with('/') { "" } else { cwd };
        for part in start.split('/').chain(arg.split('/')) {
            match part {
                "" | "." => {}
                ".." => {
                    parts.pop();
                }
                name => parts.push(name),
            }
        }
        format!("/{}", parts.join("/"))
    }

    /// Opens the virtual path `vpath` beneath the root with `flags`,
    /// following symlinks inside the root.
    ///
    /// # Errors
    /// [`Denied`] as mapped from the kernel's answer.
    pub fn open_at(&self, vpath: &str, flags: OFlags) -> Result<OwnedFd, Denied> {
        open_in_root(self.as_fd(), relative(vpath), flags)
    }

    /// The metadata of what `vpath` names, following symlinks inside the
    /// root (`fstat` of an `O_PATH` descriptor; nothing is reopened).
    ///
    /// # Errors
    /// As [`open_at`](Self::open_at).
    pub fn metadata(&self, vpath: &str) -> Result<Metadata, Denied> {
        let fd = self.open_at(vpath, OFlags::PATH)?;
        File::from(fd).metadata().map_err(Denied::from)
    }

    /// Opens the parent of `vpath` beneath the root and returns it with the
    /// final name.
    ///
    /// # Errors
    /// [`Denied::BadName`] for the root itself; as
    /// [`open_at`](Self::open_at) for the parent.
    pub fn parent(&self, vpath: &str) -> Result<Parent, Denied> {
        let (parent, name) = split_last(vpath).ok_or(Denied::BadName)?;
        let dir = self.open_at(parent, OFlags::PATH | OFlags::DIRECTORY)?;
        Ok(Parent {
            dir,
            name: name.to_string(),
        })
    }

    /// The entry `name` in `parent` *itself* (not followed), provided it is
    /// visible: a symlink counts only if it resolves inside the root (as
    /// `vpath`). A hidden link answers [`Denied::NotFound`].
    fn visible_entry(&self, parent: &Parent, vpath: &str) -> Result<rustix::fs::Stat, Denied> {
        let st = rustix::fs::statat(&parent.dir, parent.name.as_str(), AtFlags::SYMLINK_NOFOLLOW)?;
        if rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Symlink {
            self.open_at(vpath, OFlags::PATH)
                .map_err(|_| Denied::NotFound)?;
        }
        Ok(st)
    }

    /// Removes a hidden symlink named by `parent`, so the name can be
    /// created anew. Returns whether one was removed.
    fn remove_hidden_link(&self, parent: &Parent, vpath: &str) -> bool {
        let Ok(st) =
            rustix::fs::statat(&parent.dir, parent.name.as_str(), AtFlags::SYMLINK_NOFOLLOW)
        else {
            return false;
        };
        if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::Symlink
            || self.open_at(vpath, OFlags::PATH).is_ok()
        {
            return false;
        }
        rustix::fs::unlinkat(&parent.dir, parent.name.as_str(), AtFlags::empty()).is_ok()
    }

    /// Checks that the entry `vpath` names exists and is visible (for
    /// RNFR), without following a final symlink.
    ///
    /// # Errors
    /// [`Denied::NotFound`] for a missing name or a hidden link.
    pub fn entry_exists(&self, vpath: &str) -> Result<(), Denied> {
        let parent = self.parent(vpath)?;
        self.visible_entry(&parent, vpath).map(|_| ())
    }

    /// Creates the directory `vpath` (MKD).
    ///
    /// # Errors
    /// [`Denied::Exists`], [`Denied::NotFound`] for a missing parent, ...
    pub fn mkdir(&self, vpath: &str) -> Result<(), Denied> {
        let parent = self.parent(vpath)?;
        let mode = Mode::from_raw_mode(0o777);
        match rustix::fs::mkdirat(&parent.dir, parent.name.as_str(), mode) {
            Err(rustix::io::Errno::EXIST) if self.remove_hidden_link(&parent, vpath) => {
                rustix::fs::mkdirat(&parent.dir, parent.name.as_str(), mode).map_err(Denied::from)
            }
            other => other.map_err(Denied::from),
        }
    }

    /// Removes the non-directory entry `vpath` itself (DELE); a symlink is
    /// removed, never followed.
    ///
    /// # Errors
    /// [`Denied::NotFound`] (also for a hidden link), [`Denied::IsADirectory`].
    pub fn remove_file(&self, vpath: &str) -> Result<(), Denied> {
        let parent = self.parent(vpath)?;
        let st = self.visible_entry(&parent, vpath)?;
        if rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Directory {
            return Err(Denied::IsADirectory);
        }
        rustix::fs::unlinkat(&parent.dir, parent.name.as_str(), AtFlags::empty())
            .map_err(Denied::from)
    }

    /// Removes the empty directory `vpath` itself (RMD).
    ///
    /// # Errors
    /// [`Denied::NotFound`] (also for a hidden link), [`Denied::NotEmpty`],
    /// [`Denied::NotADirectory`].
    pub fn remove_dir(&self, vpath: &str) -> Result<(), Denied> {
        let parent = self.parent(vpath)?;
        let st = self.visible_entry(&parent, vpath)?;
        if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::Directory {
            return Err(Denied::NotADirectory);
        }
        rustix::fs::unlinkat(&parent.dir, parent.name.as_str(), AtFlags::REMOVEDIR)
            .map_err(Denied::from)
    }

    /// Renames the entry `from` itself to `to` (RNFR/RNTO). Both parents are
    /// opened beneath the root at the time of the rename; a symlink is moved,
    /// never followed; an entry at `to` is replaced as `rename(2)` does.
    ///
    /// # Errors
    /// [`Denied::NotFound`] when `from` is gone (or hidden) or `to`'s parent
    /// is missing; other refusals of `rename(2)`.
    pub fn rename(&self, from: &str, to: &str) -> Result<(), Denied> {
        let src = self.parent(from)?;
        self.visible_entry(&src, from)?;
        let dst = self.parent(to)?;
        rustix::fs::renameat(&src.dir, src.name.as_str(), &dst.dir, dst.name.as_str())
            .map_err(Denied::from)
    }

    /// What `vpath` names, for a listing: a directory's entries (each with
    /// its metadata; symlinks followed inside the root, hidden ones left
    /// out; sorted by name), or a single non-directory's metadata. The path
    /// is resolved once; the directory is read through that descriptor.
    ///
    /// # Errors
    /// As [`open_at`](Self::open_at).
    pub fn list(&self, vpath: &str) -> Result<Listing, Denied> {
        let fd = self.open_at(vpath, OFlags::PATH)?;
        let file = File::from(fd);
        let meta = file.metadata()?;
        if !meta.is_dir() {
            return Ok(Listing::Single(meta));
        }
        // "." of the resolved descriptor: the same directory, no lookup.
        let dfd = rustix::fs::openat(
            &file,
            ".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let dir = rustix::fs::Dir::read_from(&dfd)?;
        let base = vpath.trim_end_matches('/');
        let mut out = Vec::new();
        for entry in dir {
            let Ok(entry) = entry else { break };
            let bytes = entry.file_name().to_bytes();
            if bytes == b"." || bytes == b".." {
                continue;
            }
            // Names that are not UTF-8 cannot be named back by a client.
            let Ok(name) = std::str::from_utf8(bytes) else {
                continue;
            };
            // One plain component of this directory, not followed.
            let Ok(efd) = rustix::fs::openat(
                &dfd,
                name,
                OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            ) else {
                continue;
            };
            let Ok(m) = File::from(efd).metadata() else {
                continue;
            };
            if m.file_type().is_symlink() {
                // Followed beneath the root: a link that leads nowhere
                // inside it is hidden.
                if let Ok(m) = self.metadata(&format!("{base}/{name}")) {
                    out.push((name.to_string(), m));
                }
            } else {
                out.push((name.to_string(), m));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(Listing::Dir(out))
    }
}

/// What a listing shows: see [`Root::list`].
#[derive(Debug)]
pub enum Listing {
    /// A directory's entries, sorted by name.
    Dir(Vec<(String, Metadata)>),
    /// A single file (or other non-directory).
    Single(Metadata),
}

/// Splits a normalized virtual path into parent and final name; `None`
/// for the root.
fn split_last(vpath: &str) -> Option<(&str, &str)> {
    let i = vpath.rfind('/')?;
    let name = &vpath[i + 1..];
    if name.is_empty() || name == "." || name == ".." {
        return None;
    }
    let parent = if i == 0 { "/" } else { &vpath[..i] };
    Some((parent, name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;

    fn read(root: &Root, vpath: &str) -> Result<Vec<u8>, Denied> {
        use std::io::Read;
        let fd = root.open_at(vpath, OFlags::RDONLY)?;
        let mut out = Vec::new();
        File::from(fd).read_to_end(&mut out).map_err(Denied::from)?;
        Ok(out)
    }

    fn names_in(root: &Root, vpath: &str) -> Vec<String> {
        match root.list(vpath).unwrap() {
            Listing::Dir(entries) => entries.into_iter().map(|e| e.0).collect(),
            Listing::Single(_) => panic!("{vpath} is not a directory"),
        }
    }

    #[test]
    fn virtual_paths_normalize_and_clamp_at_the_root() {
        assert_eq!(Root::virtual_path("/", "a/b"), "/a/b");
        assert_eq!(Root::virtual_path("/a", "./b/../c"), "/a/c");
        assert_eq!(Root::virtual_path("/a/b", "/x"), "/x");
        assert_eq!(Root::virtual_path("/a", ".."), "/");
        assert_eq!(Root::virtual_path("/", ".."), "/");
        assert_eq!(Root::virtual_path("/", "../../.."), "/");
        assert_eq!(Root::virtual_path("/a", "../../etc/passwd"), "/etc/passwd");
        assert_eq!(Root::virtual_path("/", "/../etc"), "/etc");
    }

    /// `base/root` (served) and `base/outside/secret` (must stay unseen).
    fn setup() -> (tempfile::TempDir, Root) {
        let base = tempfile::tempdir().unwrap();
        let root = base.path().join("root");
        fs::create_dir(&root).unwrap();
        fs::create_dir(base.path().join("outside")).unwrap();
        fs::write(base.path().join("outside/secret"), b"s").unwrap();
        let r = Root::open(&root).unwrap();
        (base, r)
    }

    #[test]
    fn absolute_and_dotdot_paths_stay_in_root() {
        let (base, root) = setup();
        fs::write(base.path().join("root/f"), b"inside").unwrap();
        assert!(matches!(
            root.metadata("/etc/passwd"),
            Err(Denied::NotFound)
        ));
        assert!(matches!(
            resolve(root.as_fd(), "/", "../outside/secret", OFlags::RDONLY),
            Err(Denied::NotFound)
        ));
        assert!(matches!(
            resolve(root.as_fd(), "/", "../../../root/f", OFlags::RDONLY),
            Err(Denied::NotFound)
        ));
        let fd = resolve(root.as_fd(), "/x/y", "../../../f", OFlags::RDONLY).unwrap();
        assert_eq!(File::from(fd).metadata().unwrap().len(), 6);
        assert!(root.metadata("/").unwrap().is_dir());
    }

    #[test]
    fn links_pointing_outside_resolve_inside_and_look_missing() {
        let (base, root) = setup();
        let r = base.path().join("root");
        symlink(base.path().join("outside"), r.join("escape_dir")).unwrap();
        symlink(base.path().join("outside/secret"), r.join("escape_file")).unwrap();
        symlink("../outside", r.join("rel_escape")).unwrap();
        symlink("../../../../../../../..", r.join("up")).unwrap();
        for p in [
            "/escape_dir",
            "/escape_dir/secret",
            "/escape_file",
            "/rel_escape/secret",
            "/up/outside/secret",
        ] {
            assert!(matches!(root.metadata(p), Err(Denied::NotFound)), "{p}");
            assert!(matches!(read(&root, p), Err(Denied::NotFound)), "{p}");
        }
        // `up` (`..` many times) clamps at the root: it *is* the root.
        assert!(root.metadata("/up").unwrap().is_dir());
        // Hidden links are left out of listings and look missing to
        // entry commands; nothing outside is touched.
        let names = names_in(&root, "/");
        assert_eq!(names, ["up"]);
        assert!(matches!(
            root.entry_exists("/escape_file"),
            Err(Denied::NotFound)
        ));
        assert!(matches!(
            root.remove_file("/escape_file"),
            Err(Denied::NotFound)
        ));
        assert!(matches!(
            root.remove_dir("/escape_dir"),
            Err(Denied::NotFound)
        ));
        assert!(matches!(
            root.mkdir("/escape_dir/new"),
            Err(Denied::NotFound)
        ));
        assert!(matches!(
            root.remove_file("/escape_dir/secret"),
            Err(Denied::NotFound)
        ));
        assert!(matches!(
            root.rename("/up", "/escape_dir/moved"),
            Err(Denied::NotFound)
        ));
        assert!(base.path().join("outside/secret").exists());
        assert_eq!(
            fs::read_dir(base.path().join("outside")).unwrap().count(),
            1
        );
        // MKD over a hidden link replaces the link, inside the root.
        root.mkdir("/escape_dir").unwrap();
        assert!(r.join("escape_dir").symlink_metadata().unwrap().is_dir());
    }

    #[test]
    fn links_inside_the_root_are_followed() {
        let (base, root) = setup();
        let r = base.path().join("root");
        fs::create_dir(r.join("sub")).unwrap();
        fs::write(r.join("sub/f"), b"f").unwrap();
        symlink("sub/f", r.join("rel")).unwrap();
        symlink("/sub/f", r.join("abs")).unwrap();
        symlink("..", r.join("sub/up")).unwrap();
        assert_eq!(read(&root, "/rel").unwrap(), b"f");
        assert_eq!(read(&root, "/abs").unwrap(), b"f");
        assert_eq!(read(&root, "/sub/up/sub/up/rel").unwrap(), b"f");
        let names = names_in(&root, "/");
        assert_eq!(names, ["abs", "rel", "sub"]);
        // Entry commands act on the link itself.
        root.rename("/abs", "/abs2").unwrap();
        assert!(r.join("abs2").symlink_metadata().unwrap().is_symlink());
        root.remove_file("/abs2").unwrap();
        assert!(r.join("sub/f").exists());
        // RMD of a link to a directory does not remove the directory.
        symlink("sub", r.join("dlink")).unwrap();
        assert!(matches!(
            root.remove_dir("/dlink"),
            Err(Denied::NotADirectory)
        ));
        assert!(r.join("sub").is_dir());
    }

    #[test]
    fn parent_of_root_and_entry_errors() {
        let (base, root) = setup();
        let r = base.path().join("root");
        assert!(matches!(root.parent("/"), Err(Denied::BadName)));
        assert!(matches!(root.mkdir("/"), Err(Denied::BadName)));
        root.mkdir("/d").unwrap();
        assert!(matches!(root.mkdir("/d"), Err(Denied::Exists)));
        fs::write(r.join("d/f"), b"").unwrap();
        assert!(matches!(root.remove_dir("/d"), Err(Denied::NotEmpty)));
        assert!(matches!(root.remove_file("/d"), Err(Denied::IsADirectory)));
        assert!(matches!(root.mkdir("/missing/x"), Err(Denied::NotFound)));
        assert!(matches!(root.metadata("/d/f/x"), Err(Denied::NotFound)));
        // NUL bytes cannot reach the kernel: like a missing name.
        assert!(matches!(root.metadata("/d\0/f"), Err(Denied::NotFound)));
        // Long names (NAME_MAX) work.
        let long = format!("/{}", "n".repeat(255));
        root.mkdir(&long).unwrap();
        assert!(root.metadata(&long).unwrap().is_dir());
        let too_long = format!("/{}", "n".repeat(256));
        assert!(matches!(root.mkdir(&too_long), Err(Denied::BadName)));
        // Creation flags are refused by the fuzzing entry point.
        assert!(matches!(
            resolve(root.as_fd(), "/", "new", OFlags::CREATE | OFlags::WRONLY),
            Err(Denied::BadName)
        ));
    }

    #[test]
    fn replies_come_from_one_table() {
        assert_eq!(
            Denied::NotFound.reply(),
            (550, "No such file or directory.")
        );
        let e = io::Error::from_raw_os_error(rustix::io::Errno::LOOP.raw_os_error());
        assert_eq!(Denied::from_io(e).reply(), Denied::NotFound.reply());
        let e = io::Error::from_raw_os_error(rustix::io::Errno::NOSPC.raw_os_error());
        assert_eq!(Denied::from_io(e).reply().0, 452);
    }
}
