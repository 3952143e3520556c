//! Owner lookups through NSS.
//!
//! Names are resolved with getpwnam/getgrnam (via the `nix` crate), so users
//! from nscd, systemd-userdbd, userborn or sysusers resolve like any other.

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

/// The group that owns the secrets directories: `keys`, else `nogroup`.
pub fn keys_gid() -> Result<u32, OwnerError> {
    for name in ["keys", "nogroup"] {
        if let Ok(Some(g)) = Group::from_name(name) {
            return Ok(g.gid.as_raw());
        }
    }
    Err(OwnerError::NoKeysGroup)
}
