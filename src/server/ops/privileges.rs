//! Dropping root privileges after binding.
//!
//! Binding a port below 1024 needs root (or `CAP_NET_BIND_SERVICE`);
//! serving requests as root turns every handler bug into a root exploit.
//! The usual answer: bind as root, then switch to an unprivileged user for
//! good before accepting anything. The listening socket stays usable —
//! it is already bound.
//!
//! [`drop_privileges`] sets the supplementary groups, the group and the
//! user in that order (after `setuid` the process could no longer change
//! its groups), then checks that root cannot be regained. [`refuse_root`]
//! is the guard for forking and prefork servers: every child would run as
//! root too.

use std::ffi::CString;

use nix::unistd::{getegid, geteuid, getgid, getuid, setgid, setuid, Group, Uid, User};

use crate::{Error, Result};

/// Who the process runs as after [`drop_privileges`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    /// The user id (real, effective and saved).
    pub uid: u32,
    /// The group id (real, effective and saved).
    pub gid: u32,
}

/// Switches the process to `user` and `group` (default: the user's
/// primary group) permanently: real, effective and saved ids, and the
/// supplementary groups from the group database.
///
/// # Errors
/// [`Error::InvalidArgument`] when the user or group does not exist;
/// [`Error::Io`] (`EPERM`) when the process may not change ids (it is not
/// root); [`Error::InvalidArgument`] if root privileges could be regained
/// afterwards (the switch did not take).
pub fn drop_privileges(user: &str, group: Option<&str>) -> Result<Identity> {
    let u = User::from_name(user)?
        .ok_or_else(|| Error::InvalidArgument(format!("no such user: {user:?}")))?;
    let gid = match group {
        Some(g) => {
            Group::from_name(g)?
                .ok_or_else(|| Error::InvalidArgument(format!("no such group: {g:?}")))?
                .gid
        }
        None => u.gid,
    };
    let already = getuid() == u.uid && geteuid() == u.uid && getgid() == gid && getegid() == gid;
    if already && !u.uid.is_root() {
        // Already switched (for example after a re-exec): nothing to do.
        return Ok(Identity {
            uid: u.uid.as_raw(),
            gid: gid.as_raw(),
        });
    }
    let name = CString::new(user)
        .map_err(|_| Error::InvalidArgument(format!("bad user name: {user:?}")))?;
    nix::unistd::initgroups(&name, gid)?;
    setgid(gid)?;
    setuid(u.uid)?;
    if !u.uid.is_root() && setuid(Uid::from_raw(0)).is_ok() {
        return Err(Error::InvalidArgument(
            "privileges were not dropped: root could be regained".into(),
        ));
    }
    if getuid() != u.uid || geteuid() != u.uid || getgid() != gid || getegid() != gid {
        return Err(Error::InvalidArgument(
            "privileges were not dropped: ids did not change".into(),
        ));
    }
    Ok(Identity {
        uid: u.uid.as_raw(),
        gid: gid.as_raw(),
    })
}

/// Refuses to go on as root unless `allow_root` is set: the check a
/// forking or prefork server runs when no user to switch to was given.
///
/// # Errors
/// [`Error::InvalidArgument`] when running as root and `allow_root` is
/// `false`, with a message saying how to fix it.
pub fn refuse_root(allow_root: bool) -> Result<()> {
    if geteuid().is_root() && !allow_root {
        return Err(Error::InvalidArgument(
            "refusing to serve as root: give a user to switch to after binding (--user) \
             or allow it explicitly (--allow-root)"
                .into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_user_and_group_are_clear_errors() {
        let e = drop_privileges("no-such-user-xyz", None).unwrap_err();
        assert!(e.to_string().contains("no such user"), "{e}");
        let e = drop_privileges("root", Some("no-such-group-xyz")).unwrap_err();
        assert!(e.to_string().contains("no such group"), "{e}");
    }

    #[test]
    fn refuse_root_depends_on_euid_and_permission() {
        assert!(refuse_root(true).is_ok());
        assert_eq!(refuse_root(false).is_err(), geteuid().is_root());
    }
}
