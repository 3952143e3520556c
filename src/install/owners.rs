//! Owner lookups through NSS.
//!
//! Names are resolved with getpwnam/getgrnam (via the `nix` crate), so users
//! from nscd, systemd-userdbd, userborn or sysusers resolve like any other.

use std::sync::Mutex;
use std::thread::JoinHandle;

use nix::unistd::{Group, User};

use crate::manifest::Owner;

/// Why an owner could not be resolved.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OwnerError {
    /// No such user.
    #[error("user {0:?} does not exist on this host (create it, or set owner to an existing user)")]
    NoUser(String),
    /// No such group.
    #[error("group {0:?} does not exist on this host (create it, or set group to an existing group)")]
    NoGroup(String),
    /// NSS failed.
    #[error("looking up {kind} {name:?} failed: {source}")]
    Lookup {
        /// `user` or `group`.
        kind: &'static str,
        /// The name.
        name: String,
        /// Why.
        source: nix::errno::Errno,
    },
    /// Neither `keys` nor `nogroup`.
    #[error("neither a `keys` nor a `nogroup` group exists; the secrets directory needs one of them")]
    NoKeysGroup,
}

/// Resolves a secret's user to a uid.
pub fn uid(owner: &Owner) -> Result<u32, OwnerError> {
    match owner {
        Owner::Id(id) => Ok(*id),
        Owner::Name(name) => match User::from_name(name) {
            Ok(Some(u)) => Ok(u.uid.as_raw()),
            Ok(None) => Err(OwnerError::NoUser(name.clone())),
            Err(source) => Err(OwnerError::Lookup {
                kind: "user",
                name: name.clone(),
                source,
            }),
        },
    }
}

/// Resolves a secret's group to a gid.
pub fn gid(group: &Owner) -> Result<u32, OwnerError> {
    match group {
        Owner::Id(id) => Ok(*id),
        Owner::Name(name) => match Group::from_name(name) {
            Ok(Some(g)) => Ok(g.gid.as_raw()),
            Ok(None) => Err(OwnerError::NoGroup(name.clone())),
            Err(source) => Err(OwnerError::Lookup {
                kind: "group",
                name: name.clone(),
                source,
            }),
        },
    }
}

/// The group that owns the secrets directories, perhaps looked up ahead: on a helper
/// thread ([`crate::helper`]) started before the manifest is read, since the
/// lookup may load an NSS module (0.6 ms on a host without a `keys` group)
/// while the manifest's parse leaves another CPU idle.
pub struct KeysGroup(Mutex<Option<JoinHandle<Result<u32, OwnerError>>>>);

impl KeysGroup {
    /// Starts the lookup on a helper thread (or, if none can be started,
    /// leaves it to [`KeysGroup::get`]).
    pub fn ahead() -> KeysGroup {
        KeysGroup(Mutex::new(crate::helper::spawn("keys-group", keys_gid).ok()))
    }

    /// No lookup ahead: [`KeysGroup::get`] looks it up when asked.
    pub fn when_asked() -> KeysGroup {
        KeysGroup(Mutex::new(None))
    }

    /// The group's gid (see [`keys_gid`]): the lookup ahead's answer, the
    /// first time, else a lookup now.
    pub fn get(&self) -> Result<u32, OwnerError> {
        self.join().unwrap_or_else(keys_gid)
    }

    /// Waits for the lookup ahead, if there is one and it has not been
    /// waited for, so that no thread is left once the installer drops its
    /// capabilities (they are a thread's own).
    pub fn join(&self) -> Option<Result<u32, OwnerError>> {
        let ahead = self.0.lock().expect("not poisoned").take()?;
        Some(ahead.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
    }
}

impl std::fmt::Debug for KeysGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ahead = self.0.lock().map(|h| h.is_some()).unwrap_or(false);
        f.debug_struct("KeysGroup")
            .field("looked_up_ahead", &ahead)
            .finish()
    }
}

/// The group that owns the secrets directories: `keys`, else `nogroup`.
pub fn keys_gid() -> Result<u32, OwnerError> {
    for name in ["keys", "nogroup"] {
        if let Ok(Some(g)) = Group::from_name(name) {
            return Ok(g.gid.as_raw());
        }
    }
    Err(OwnerError::NoKeysGroup)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_group_looked_up_ahead_is_the_one_looked_up_when_asked() {
        let now = keys_gid();
        let ahead = KeysGroup::ahead();
        assert_eq!(ahead.get(), now);
        // The answer ahead is taken once; later asks look up again.
        assert_eq!(ahead.join(), None);
        assert_eq!(ahead.get(), now);
        assert_eq!(KeysGroup::when_asked().get(), now);
        assert_eq!(KeysGroup::when_asked().join(), None);
    }

    #[test]
    fn joining_waits_for_the_lookup_ahead_and_ends_its_thread() {
        let ahead = KeysGroup::ahead();
        assert!(format!("{ahead:?}").contains("looked_up_ahead: true"));
        assert_eq!(ahead.join(), Some(keys_gid()));
        assert!(format!("{ahead:?}").contains("looked_up_ahead: false"));
    }
}
