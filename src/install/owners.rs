//! Owner lookups through NSS.
//!
//! Names are resolved with getpwnam/getgrnam (via the `nix` crate), so users
//! from nscd, systemd-userdbd, userborn or sysusers resolve like any other.

use nix::unistd::{Group, User};

use crate::manifest::Owner;

/// Resolves a secret's user to a uid.
pub fn uid(owner: &Owner) -> Result<u32, String> {
    match owner {
        Owner::Id(id) => Ok(*id),
        Owner::Name(name) => match User::from_name(name) {
            Ok(Some(u)) => Ok(u.uid.as_raw()),
            Ok(None) => Err(format!(
                "user {name:?} does not exist on this host (create it, or set owner to an existing user)"
            )),
            Err(e) => Err(format!("looking up user {name:?} failed: {e}")),
        },
    }
}

/// Resolves a secret's group to a gid.
pub fn gid(group: &Owner) -> Result<u32, String> {
    match group {
        Owner::Id(id) => Ok(*id),
        Owner::Name(name) => match Group::from_name(name) {
            Ok(Some(g)) => Ok(g.gid.as_raw()),
            Ok(None) => Err(format!(
                "group {name:?} does not exist on this host (create it, or set group to an existing group)"
            )),
            Err(e) => Err(format!("looking up group {name:?} failed: {e}")),
        },
    }
}

/// The group that owns the secrets directories: `keys`, else `nogroup`.
pub fn keys_gid() -> Result<u32, String> {
    for name in ["keys", "nogroup"] {
        if let Ok(Some(g)) = Group::from_name(name) {
            return Ok(g.gid.as_raw());
        }
    }
    Err("neither a `keys` nor a `nogroup` group exists; the secrets directory needs one of them".into())
}
