//! Path confinement: every path a client names stays inside `--root`.
//!
//! A client names *virtual* paths (`/docs/a.txt`, `../b`). They are resolved
//! in two steps:
//!
//! 1. Lexically, against the session's virtual working directory: `.` is
//!    dropped and `..` removes one component. A `..` that would climb above
//!    the virtual root is refused outright (not silently clamped), so
//!    `CWD ../../..` and `RETR ../../etc/passwd` get a `550`.
//! 2. On disk: the virtual path is appended to the canonical root and the
//!    result is canonicalized (resolving every symlink). The canonical path
//!    must lie inside the canonical root *component by component*
//!    ([`Path::starts_with`]), so `/srv/root_evil` is not inside `/srv/root`
//!    and a symlink pointing outside is refused.
//!
//! Paths that do not exist yet (STOR, MKD, RNTO targets) are checked through
//! their parent directory, and when the final name exists (even as a
//! dangling symlink) it must resolve inside the root as well.
//!
//! Known limit: a *local* user who can create symlinks inside the root could
//! race the check and the later `open` (time-of-check to time-of-use). FTP
//! itself cannot create symlinks, so FTP clients cannot mount that race.

use std::fmt;
use std::io;
use std::path::{Component, Path, PathBuf};

/// Why a path was refused.
#[derive(Debug)]
pub enum Denied {
    /// The path would leave the root (by `..` or by a symlink).
    Outside,
    /// The path (or its parent) does not exist or cannot be read.
    Io(io::Error),
    /// The final name is unusable (empty, or the root itself).
    BadName,
}

impl fmt::Display for Denied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Denied::Outside => f.write_str("Permission denied: path is outside the root"),
            Denied::Io(e) if e.kind() == io::ErrorKind::NotFound => {
                f.write_str("No such file or directory")
            }
            Denied::Io(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                f.write_str("Permission denied")
            }
            Denied::Io(_) => f.write_str("File unavailable"),
            Denied::BadName => f.write_str("Invalid file name"),
        }
    }
}

/// The confined root directory.
#[derive(Debug, Clone)]
pub struct Root {
    real: PathBuf,
}

impl Root {
    /// Canonicalizes `dir`, which must be an existing directory.
    ///
    /// # Errors
    /// `dir` does not exist or is not a directory.
    pub fn new(dir: &Path) -> io::Result<Root> {
        let real = dir.canonicalize()?;
        if !real.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a directory", dir.display()),
            ));
        }
        Ok(Root { real })
    }

    /// The canonical root on disk.
    pub fn real(&self) -> &Path {
        &self.real
    }

    /// Resolves `arg` against the virtual working directory `cwd` into a
    /// normalized virtual path (always starting with `/`).
    ///
    /// # Errors
    /// [`Denied::Outside`] when a `..` would climb above the root.
    pub fn virtual_path(cwd: &str, arg: &str) -> Result<String, Denied> {
        let mut parts: Vec<&str> = Vec::new();
        let start = if arg.starts_with('/') { "" } else { cwd };
        for part in start.split('/').chain(arg.split('/')) {
            match part {
                "" | "." => {}
                ".." => {
                    if parts.pop().is_none() {
                        return Err(Denied::Outside);
                    }
                }
                name => parts.push(name),
            }
        }
        Ok(format!("/{}", parts.join("/")))
    }

    /// The on-disk path of a virtual path, not yet checked for symlinks.
    fn join(&self, vpath: &str) -> PathBuf {
        let mut p = self.real.clone();
        for part in vpath.split('/').filter(|s| !s.is_empty()) {
            p.push(part);
        }
        p
    }

    /// Checks that a canonical path lies inside the root.
    fn inside(&self, canonical: PathBuf) -> Result<PathBuf, Denied> {
        if canonical.starts_with(&self.real) {
            Ok(canonical)
        } else {
            Err(Denied::Outside)
        }
    }

    /// Resolves an existing file or directory, following symlinks; the
    /// result is canonical and inside the root.
    ///
    /// # Errors
    /// [`Denied::Outside`] if it resolves outside; [`Denied::Io`] if it does
    /// not exist.
    pub fn existing(&self, vpath: &str) -> Result<PathBuf, Denied> {
        let canonical = self.join(vpath).canonicalize().map_err(Denied::Io)?;
        self.inside(canonical)
    }

    /// Resolves an entry to act on *itself* (DELE, RMD, RNFR): the parent
    /// directory is canonicalized and confined, the final name is kept as is
    /// so a symlink is removed or renamed, never followed.
    ///
    /// # Errors
    /// As [`existing`](Self::existing) for the parent; [`Denied::BadName`]
    /// for the root itself.
    pub fn entry(&self, vpath: &str) -> Result<PathBuf, Denied> {
        let (parent, name) = split_last(vpath).ok_or(Denied::BadName)?;
        let parent = self.existing(parent)?;
        Ok(parent.join(name))
    }

    /// Resolves a path that will be created or replaced (STOR, APPE, MKD,
    /// RNTO target). The parent must exist inside the root; if the final
    /// name already exists it must resolve inside the root too (a dangling
    /// symlink, whose target cannot be checked, is refused).
    ///
    /// # Errors
    /// [`Denied::Outside`], [`Denied::Io`] for a missing parent,
    /// [`Denied::BadName`] for the root itself.
    pub fn target(&self, vpath: &str) -> Result<PathBuf, Denied> {
        let path = self.entry(vpath)?;
        match path.symlink_metadata() {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(path),
            Err(e) => Err(Denied::Io(e)),
            Ok(meta) if meta.file_type().is_symlink() => match path.canonicalize() {
                Ok(c) => self.inside(c),
                // Dangling: following it could create a file anywhere.
                Err(_) => Err(Denied::Outside),
            },
            Ok(_) => Ok(path),
        }
    }
}

/// Splits a normalized virtual path into parent and final name.
fn split_last(vpath: &str) -> Option<(&str, &str)> {
    let i = vpath.rfind('/')?;
    let name = &vpath[i + 1..];
    if name.is_empty() || Path::new(name).components().count() != 1 {
        return None;
    }
    match Path::new(name).components().next() {
        Some(Component::Normal(_)) => {}
        _ => return None,
    }
    let parent = if i == 0 { "/" } else { &vpath[..i] };
    Some((parent, name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn virtual_paths_normalize_and_refuse_escapes() {
        assert_eq!(Root::virtual_path("/", "a/b").unwrap(), "/a/b");
        assert_eq!(Root::virtual_path("/a", "./b/../c").unwrap(), "/a/c");
        assert_eq!(Root::virtual_path("/a/b", "/x").unwrap(), "/x");
        assert_eq!(Root::virtual_path("/a", "..").unwrap(), "/");
        assert!(matches!(
            Root::virtual_path("/", "../../.."),
            Err(Denied::Outside)
        ));
        assert!(matches!(
            Root::virtual_path("/a", "../../etc/passwd"),
            Err(Denied::Outside)
        ));
        assert!(matches!(
            Root::virtual_path("/", "/../etc"),
            Err(Denied::Outside)
        ));
    }

    #[test]
    fn absolute_paths_stay_in_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::new(dir.path()).unwrap();
        // "/etc/passwd" means <root>/etc/passwd, which does not exist.
        assert!(matches!(root.existing("/etc/passwd"), Err(Denied::Io(_))));
    }

    #[test]
    fn sibling_with_common_prefix_is_not_inside() {
        let base = tempfile::tempdir().unwrap();
        fs::create_dir(base.path().join("root")).unwrap();
        fs::create_dir(base.path().join("root_evil")).unwrap();
        fs::write(base.path().join("root_evil/secret"), b"x").unwrap();
        std::os::unix::fs::symlink("../root_evil", base.path().join("root/link")).unwrap();
        let root = Root::new(&base.path().join("root")).unwrap();
        assert!(matches!(root.existing("/link"), Err(Denied::Outside)));
        assert!(matches!(
            root.existing("/link/secret"),
            Err(Denied::Outside)
        ));
        assert!(matches!(root.target("/link/new"), Err(Denied::Outside)));
    }

    #[test]
    fn symlinks_outside_are_refused_inside_are_allowed() {
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("secret"), b"s").unwrap();
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("sub")).unwrap();
        fs::write(dir.path().join("sub/f"), b"f").unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), dir.path().join("out")).unwrap();
        std::os::unix::fs::symlink("sub/f", dir.path().join("in")).unwrap();
        std::os::unix::fs::symlink("/nonexistent/x", dir.path().join("dangling")).unwrap();
        let root = Root::new(dir.path()).unwrap();
        assert!(matches!(root.existing("/out"), Err(Denied::Outside)));
        assert!(matches!(root.target("/out"), Err(Denied::Outside)));
        assert!(matches!(root.target("/dangling"), Err(Denied::Outside)));
        assert!(root.existing("/in").unwrap().ends_with("sub/f"));
        assert!(root.target("/in").is_ok());
        // Acting on the link itself (DELE) is confined by its parent only.
        assert_eq!(root.entry("/out").unwrap(), root.real().join("out"));
        assert!(root.target("/sub/new").is_ok());
        assert!(matches!(root.target("/missing/new"), Err(Denied::Io(_))));
        assert!(matches!(root.entry("/"), Err(Denied::BadName)));
    }
}
