//! A pid file with single-instance enforcement done right.
//!
//! The classic recipe — write the pid to a file, and on start read it and
//! `kill` that pid — kills an innocent process when the file is stale and
//! the pid has been reused. Here the file's *lock* says whether an
//! instance runs, not its contents:
//!
//! - [`PidFile::create`] opens the file and takes an exclusive `flock`
//!   without waiting. The lock is held for as long as the [`PidFile`]
//!   lives (keep it for the life of the process); the kernel drops it when
//!   the process dies, however it dies, so a lock can never go stale.
//! - If another process holds the lock, `create` fails with
//!   [`Error::AlreadyRunning`] naming the pid written in the file. Nobody
//!   is signalled: this module never kills anything.
//! - If the file exists but its lock is free (the previous instance died),
//!   the file is taken over and rewritten with our pid.
//!
//! Two details close the remaining races. The file is truncated and
//! written only after the lock is held, so a loser never clobbers the
//! winner's pid. And after locking, `create` checks the path still names
//! the inode it locked: a previous owner that removed the file on exit
//! between our `open` and our `flock` would otherwise leave us holding a
//! lock on an unlinked file while a third instance creates a fresh one.
//!
//! Forked children share the lock (it belongs to the open file
//! description); a child leaving with `_exit` neither releases nor removes
//! it, and [`PidFile`]'s `Drop` does nothing in a process other than the
//! one that created it.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use crate::{Error, Result};

/// A locked pid file; the lock is released (and the file removed) on drop.
#[derive(Debug)]
pub struct PidFile {
    lock: Option<Flock<File>>,
    path: PathBuf,
    owner: u32,
}

impl PidFile {
    /// Creates (or takes over) the pid file at `path`, locks it and writes
    /// this process's pid into it.
    ///
    /// # Errors
    /// [`Error::AlreadyRunning`] when a live process holds the lock (the
    /// message names its pid); [`Error::Io`] when the file cannot be
    /// opened or written.
    pub fn create(path: impl AsRef<Path>) -> Result<PidFile> {
        let path = path.as_ref();
        // Retry only when the file was replaced under us between open and
        // lock; each retry means another process made progress.
        for _ in 0..100 {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o644)
                .open(path)?;
            let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(lock) => lock,
                Err((mut file, Errno::EWOULDBLOCK)) => {
                    let mut text = String::new();
                    let _ = file.read_to_string(&mut text);
                    let pid = text.trim();
                    return Err(Error::AlreadyRunning {
                        pid: if pid.is_empty() {
                            "unknown".into()
                        } else {
                            pid.chars().take(32).collect()
                        },
                        path: path.to_path_buf(),
                    });
                }
                Err((_, e)) => return Err(e.into()),
            };
            let ours = lock.metadata()?;
            match std::fs::metadata(path) {
                Ok(m) if m.dev() == ours.dev() && m.ino() == ours.ino() => {}
                _ => continue,
            }
            let pid = std::process::id();
            lock.set_len(0)?;
            lock.seek(SeekFrom::Start(0))?;
            lock.write_all(format!("{pid}\n").as_bytes())?;
            lock.sync_data()?;
            return Ok(PidFile {
                lock: Some(lock),
                path: path.to_path_buf(),
                owner: pid,
            });
        }
        Err(Error::Io(std::io::Error::other(format!(
            "pid file {} kept being replaced while locking it",
            path.display()
        ))))
    }

    /// The pid file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the pid recorded in a pid file, without locking it: for
    /// status messages only, never for deciding whom to signal.
    ///
    /// # Errors
    /// The file cannot be read or does not contain a pid.
    pub fn read_pid(path: impl AsRef<Path>) -> Result<u32> {
        let text = std::fs::read_to_string(path.as_ref())?;
        text.trim().parse().map_err(|_| {
            Error::InvalidArgument(format!(
                "pid file {} does not contain a pid",
                path.as_ref().display()
            ))
        })
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let Some(lock) = self.lock.take() else {
            return;
        };
        if std::process::id() != self.owner {
            // A forked child: unlocking would release the parent's lock
            // (flock locks belong to the shared open file description).
            std::mem::forget(lock);
            return;
        }
        // Remove the file while still holding the lock, and only if it is
        // still ours; then the lock goes with the descriptor.
        if let (Ok(ours), Ok(now)) = (lock.metadata(), std::fs::metadata(&self.path)) {
            if ours.dev() == now.dev() && ours.ino() == now.ino() {
                let _ = std::fs::remove_file(&self.path);
            }
        }
        drop(lock);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_instance_is_refused_naming_the_running_pid() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.pid");
        let first = PidFile::create(&path).unwrap();
        let me = std::process::id();
        assert_eq!(PidFile::read_pid(&path).unwrap(), me);
        // A second open file description conflicts even in one process.
        match PidFile::create(&path) {
            Err(Error::AlreadyRunning { pid, path: p }) => {
                assert_eq!(pid, me.to_string());
                assert_eq!(p, path);
            }
            other => panic!("expected AlreadyRunning, got {other:?}"),
        }
        // The loser did not clobber the winner's pid.
        assert_eq!(PidFile::read_pid(&path).unwrap(), me);
        drop(first);
        assert!(!path.exists(), "pid file left behind");
        let again = PidFile::create(&path).unwrap();
        assert_eq!(again.path(), path);
    }

    #[test]
    fn stale_file_without_lock_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.pid");
        // A pid that is (almost certainly) someone else's: it must be
        // ignored, not signalled.
        std::fs::write(&path, "1\nleftover garbage that is longer\n").unwrap();
        let pf = PidFile::create(&path).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("{}\n", std::process::id())
        );
        drop(pf);
    }

    #[test]
    fn unreadable_pid_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.pid");
        std::fs::write(&path, "not a pid").unwrap();
        assert!(PidFile::read_pid(&path).is_err());
    }
}
