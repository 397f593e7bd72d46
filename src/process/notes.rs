//! Exit notes: one descriptor tells a parent which of many children have
//! exited.
//!
//! The forking server forks a child per connection. Watching each child
//! through its own pidfd costs the parent, which forks every child one
//! after the other, a `pidfd_open` (the kernel allocates an inode and a
//! dentry for it), a `close` and one more descriptor in every `poll`: in
//! a hand-written fork-per-connection server, that alone cost 12–15% of
//! its connection rate (see docs/server.md, "Exit notes").
//!
//! Instead the server makes one pipe. Each of its children inherits the
//! write end and, as the last thing before `_exit`, writes its pid there:
//! four bytes, an atomic write, non-blocking (a full pipe drops the note
//! instead of stalling the child), after an `fstat` that makes sure the
//! number still is that pipe (a handler may have closed and reused it).
//! The parent polls the read end, reads the pids and reaps exactly those
//! children with `waitpid(pid, WNOHANG)` — only its own, never
//! `waitpid(-1)`. A child whose note arrived before it had finished
//! exiting is asked again on the next turn of the loop.
//!
//! A child that ends without a note (killed by a signal, or a note lost
//! to a full pipe) is found by a sweep: at most once per
//! [`SWEEP`], the parent asks every child it has with `waitpid(WNOHANG)`.
//!
//! Descriptor hygiene: both ends are registered close-on-fork, so no other
//! child of the parent (a `Process`, a pool worker) holds them; the
//! server's own children keep only the write end; and a child that forks
//! in turn closes its inherited write end in the grandchild.
//!
//! This file is the parent's side. The child's side — which end it holds
//! (`NoteEnd`), the check and the `write` before `_exit` — lives with the
//! rest of a child's own state in `current.rs`.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

pub(crate) use super::current::IdentityBlock;
use super::current::NoteEnd;
use super::fork::{self, ForkOptions, Via};
use super::{closefork, current};
use crate::{Error, Result};

/// How often, at most, the parent asks every child whether it has exited
/// (for children that could not leave a note).
pub(crate) const SWEEP: Duration = Duration::from_secs(1);

/// The pipe the children of one parent write their pids to.
#[derive(Debug)]
pub(crate) struct ExitNotes {
    read: OwnedFd,
    /// Owns the write end, which `end` describes (the children hold
    /// copies of it).
    _write: OwnedFd,
    end: NoteEnd,
    /// Close-on-fork registrations of `read` and `write`.
    slots: [Option<usize>; 2],
    /// The process that made the pipe (only it unregisters).
    owner: i32,
}

impl ExitNotes {
    /// Makes the pipe (both ends non-blocking and close-on-exec) and
    /// registers both ends close-on-fork.
    ///
    /// # Errors
    /// `pipe2` failed (`EMFILE`, `ENFILE`).
    pub(crate) fn new() -> Result<Self> {
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
        let st = nix::sys::stat::fstat(&write)?;
        let end = NoteEnd::new(write.as_raw_fd(), st.st_dev, st.st_ino);
        let owner = current::cached_pid();
        let slots = [
            closefork::register(owner, read.as_raw_fd()),
            closefork::register(owner, end.fd),
        ];
        Ok(ExitNotes {
            read,
            _write: write,
            end,
            slots,
            owner,
        })
    }

    /// The read end: readable while notes wait to be read.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.read.as_fd()
    }

    /// Reads every waiting note and calls `each` with its pid. Reads into
    /// a buffer on the stack: the parent allocates nothing per child.
    pub(crate) fn read(&self, mut each: impl FnMut(i32)) {
        let mut buf = [0u8; 512];
        loop {
            match nix::unistd::read(self.read.as_fd(), &mut buf) {
                Ok(n) => {
                    // Notes are written whole (four bytes, below PIPE_BUF).
                    for note in buf[..n].chunks_exact(4) {
                        each(i32::from_ne_bytes([note[0], note[1], note[2], note[3]]));
                    }
                    if n < buf.len() {
                        return;
                    }
                }
                Err(Errno::EINTR) => {}
                // EAGAIN: nothing left. Anything else cannot happen to a
                // pipe we hold both ends of; the sweep covers it anyway.
                Err(_) => return,
            }
        }
    }

    /// Forks a child that runs `body` like [`fork_child`](super::fork_child)
    /// and leaves a note here when it ends, instead of being watched
    /// through a pidfd of its own.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a daemon (its lifeline needs a
    /// `ForkedChild`); as [`fork_child`](super::fork_child) otherwise.
    pub(crate) fn fork<F: FnOnce() -> i32>(
        &self,
        options: &ForkOptions,
        identities: &mut IdentityBlock,
        body: F,
    ) -> Result<NotedChild> {
        if options.is_daemon() {
            return Err(Error::InvalidArgument(
                "a child reporting through exit notes cannot be a daemon".into(),
            ));
        }
        let via = Via {
            note: Some(self.end),
            seed: Some(identities.seed()),
            ..Via::default()
        };
        let forked = fork::fork_common(options, via, body)?;
        Ok(NotedChild {
            pid: forked.child,
            owner: forked.parent,
            noted: false,
            reaped: false,
        })
    }
}

impl Drop for ExitNotes {
    fn drop(&mut self) {
        if current::cached_pid() == self.owner {
            for slot in self.slots.into_iter().flatten() {
                closefork::unregister(slot);
            }
        }
    }
}

/// A child forked through [`ExitNotes::fork`]: its pid, and whether its
/// note has arrived.
#[derive(Debug)]
pub(crate) struct NotedChild {
    pid: Pid,
    owner: Pid,
    /// Its note was read; it may not have finished exiting yet.
    pub(crate) noted: bool,
    /// Reaped: its pid may already belong to another process.
    reaped: bool,
}

impl NotedChild {
    /// The child's pid.
    pub(crate) fn pid(&self) -> i32 {
        self.pid.as_raw()
    }

    /// Reaps the child if it has exited, without blocking: its exit code
    /// (`-N` when killed by signal `N`), or `None` while it runs.
    ///
    /// # Errors
    /// `waitpid` failed.
    pub(crate) fn try_wait(&mut self) -> Result<Option<i32>> {
        self.reap(true)
    }

    fn reap(&mut self, nohang: bool) -> Result<Option<i32>> {
        if self.reaped {
            return Err(Error::InvalidArgument(format!(
                "child {} was already reaped",
                self.pid
            )));
        }
        let code = fork::wait_code(self.pid, nohang)?;
        if code.is_some() {
            // Written only then: this record's page is shared with every
            // child forked since (a write is a copy-on-write fault).
            self.reaped = true;
        }
        Ok(code)
    }

    /// Blocks until the child has exited and returns its exit code.
    ///
    /// # Errors
    /// `waitpid` failed.
    pub(crate) fn wait(&mut self) -> Result<i32> {
        loop {
            if let Some(code) = self.reap(false)? {
                return Ok(code);
            }
        }
    }

    /// Sends `signal` to the child. Does nothing once it was reaped, so a
    /// recycled pid is never signalled.
    ///
    /// # Errors
    /// `kill` failed other than with `ESRCH`.
    pub(crate) fn signal(&self, signal: Signal) -> Result<()> {
        if self.reaped {
            return Ok(());
        }
        match kill(self.pid, signal) {
            Ok(()) | Err(Errno::ESRCH) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Hands the child over to be reaped when it exits, instead of being
    /// dropped unreaped (what dropping a running `ForkedChild` does).
    fn detach(&mut self) {
        if self.reaped || current::cached_pid() != self.owner.as_raw() {
            return;
        }
        if let Ok(Some(_)) = self.reap(true) {
            return;
        }
        fork::detach(self.pid, None);
    }
}

impl Drop for NotedChild {
    /// A child still running when its record goes away (a server closed
    /// without `block_on_close`) is reaped by a small thread that waits
    /// for exactly its pid, as a dropped `ForkedChild` is.
    fn drop(&mut self) {
        self.detach();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::os::fd::RawFd;
    use std::time::Instant;

    /// This process's descriptors and what each refers to. (By target, not
    /// number: the directory listing itself takes the lowest free number,
    /// which may be one a close just freed.)
    fn fds_of_this_process() -> HashSet<(i32, String)> {
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|e| {
                let e = e.ok()?;
                let fd = e.file_name().to_str()?.parse().ok()?;
                let target = std::fs::read_link(e.path()).ok()?;
                Some((fd, target.to_string_lossy().into_owned()))
            })
            .collect()
    }

    /// The target of descriptor `fd` of this process.
    fn target(fd: RawFd) -> String {
        std::fs::read_link(format!("/proc/self/fd/{fd}"))
            .unwrap()
            .to_string_lossy()
            .into_owned()
    }

    #[test]
    fn each_child_leaves_its_pid_and_holds_only_the_write_end() {
        let notes = ExitNotes::new().unwrap();
        let (r, w) = (notes.read.as_raw_fd(), notes.end.fd);
        let pipe = target(r);
        let mut children: Vec<NotedChild> = (0..3)
            .map(|_| {
                let pipe = pipe.clone();
                notes
                    .fork(
                        &ForkOptions::new(),
                        &mut IdentityBlock::default(),
                        move || {
                            let fds = fds_of_this_process();
                            // 0: as expected; 2: holds the read end; 3: no write end.
                            if fds.contains(&(r, pipe.clone())) {
                                2
                            } else if !fds.contains(&(w, pipe)) {
                                3
                            } else {
                                0
                            }
                        },
                    )
                    .unwrap()
            })
            .collect();
        let mut want: HashSet<i32> = children.iter().map(NotedChild::pid).collect();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !want.is_empty() {
            assert!(Instant::now() < deadline, "notes missing for {want:?}");
            crate::process::sys::wait_readable(notes.fd(), Some(Duration::from_millis(100)))
                .unwrap();
            notes.read(|pid| assert!(want.remove(&pid), "unexpected note {pid}"));
        }
        for child in &mut children {
            assert_eq!(child.wait().unwrap(), 0, "child {}", child.pid());
        }
        children.clear();
    }

    #[test]
    fn a_grandchild_does_not_hold_the_write_end_or_leave_a_note() {
        let notes = ExitNotes::new().unwrap();
        let pipe = target(notes.end.fd);
        let mut child = notes
            .fork(
                &ForkOptions::new(),
                &mut IdentityBlock::default(),
                move || {
                    let Ok(mut grandchild) =
                        crate::process::fork_child(&ForkOptions::new(), move || {
                            i32::from(fds_of_this_process().iter().any(|(_, t)| *t == pipe)) * 4
                        })
                    else {
                        return 5;
                    };
                    grandchild.wait().unwrap_or(6)
                },
            )
            .unwrap();
        assert_eq!(child.wait().unwrap(), 0);
        let mut notes_read = Vec::new();
        notes.read(|pid| notes_read.push(pid));
        assert_eq!(notes_read, vec![child.pid()], "only the child's own note");
    }

    #[test]
    fn a_child_killed_before_its_note_is_still_reaped_by_pid() {
        let notes = ExitNotes::new().unwrap();
        let mut child = notes
            .fork(&ForkOptions::new(), &mut IdentityBlock::default(), || {
                std::thread::sleep(Duration::from_secs(30));
                0
            })
            .unwrap();
        assert_eq!(child.try_wait().unwrap(), None);
        child.signal(Signal::SIGKILL).unwrap();
        assert_eq!(child.wait().unwrap(), -(Signal::SIGKILL as i32));
        let mut any = false;
        notes.read(|_| any = true);
        assert!(!any, "a killed child writes no note");
    }

    #[test]
    fn a_handler_that_reused_the_number_gets_no_note_in_its_file() {
        let notes = ExitNotes::new().unwrap();
        let fd = notes.end.fd;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("file");
        let in_child = path.clone();
        let mut child = notes
            .fork(
                &ForkOptions::new(),
                &mut IdentityBlock::default(),
                move || {
                    let file = std::fs::File::create(&in_child).unwrap();
                    // The number of the notes' write end now names the file.
                    // SAFETY: dup2 onto a number this child owns (its copy of
                    // the write end, which it gives up here).
                    if unsafe { libc::dup2(file.as_raw_fd(), fd) } != fd {
                        return 2;
                    }
                    0
                },
            )
            .unwrap();
        assert_eq!(child.wait().unwrap(), 0);
        assert_eq!(
            std::fs::read(&path).unwrap(),
            b"",
            "a note went into the file"
        );
        let mut any = false;
        notes.read(|_| any = true);
        assert!(!any, "no note either");
    }

    #[test]
    fn daemons_cannot_use_exit_notes() {
        let notes = ExitNotes::new().unwrap();
        let mut options = ForkOptions::new();
        options.daemon(true);
        assert!(matches!(
            notes.fork(&options, &mut IdentityBlock::default(), || 0),
            Err(Error::InvalidArgument(_))
        ));
    }
}
