//! `--chown` of file actions: user and group names resolved in the destination's own
//! `/etc/passwd` and `/etc/group` (parsed here, never through the host's NSS), as BuildKit does.
//!
//! BuildKit's rules, kept exactly: a numeric user without a group gets the same number as
//! group; a named user without a group gets the user's primary group from passwd; a name that
//! is not found (or a missing passwd/group file) leaves the id at 0; a group alone leaves the
//! user at 0.

use std::io::Read;
use std::path::Path;

use kiln_frontend::dag::op::{Chown, UserOrId};

use super::root::resolve_in_root;
use super::FileOpError;

/// The largest id accepted (ids above 2^31-1 are refused, as runc and the kernel's
/// user-namespace code treat them as invalid).
pub const MAX_ID: u32 = (1 << 31) - 1;

/// Refuse passwd/group files larger than this (they are read whole).
const MAX_DATABASE_SIZE: u64 = 16 << 20;

/// A resolved owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

/// Resolves a `--chown` against the destination root `dest_root`.
pub fn resolve_owner(chown: &Chown, dest_root: &Path) -> Result<Owner, FileOpError> {
    let mut owner = Owner { uid: 0, gid: 0 };
    match &chown.user {
        None => {}
        Some(UserOrId::Id(id)) => {
            owner.uid = *id;
            owner.gid = *id;
        }
        Some(UserOrId::Name(name)) => {
            if let Some(text) = read_database(dest_root, "/etc/passwd")? {
                if let Some((uid, gid)) = find_user(&text, name) {
                    owner.uid = uid;
                    owner.gid = gid;
                }
            }
        }
    }
    match &chown.group {
        None => {}
        Some(UserOrId::Id(id)) => owner.gid = *id,
        Some(UserOrId::Name(name)) => {
            if let Some(text) = read_database(dest_root, "/etc/group")? {
                if let Some(gid) = find_group(&text, name) {
                    owner.gid = gid;
                }
            }
        }
    }
    for id in [owner.uid, owner.gid] {
        if id > MAX_ID {
            return Err(FileOpError::InvalidOwner { id });
        }
    }
    Ok(owner)
}

/// Reads `/etc/passwd` or `/etc/group` of the root (resolved inside it). `None` when it does
/// not exist; an error when it is not a regular file.
fn read_database(root: &Path, path: &str) -> Result<Option<String>, FileOpError> {
    let resolved = match resolve_in_root(root, path.as_bytes(), true) {
        Ok(resolved) => root.join(resolved),
        Err(super::root::ResolveError::Io(error))
            if error.kind() == std::io::ErrorKind::NotFound
                || error.raw_os_error() == Some(libc::ENOTDIR) =>
        {
            return Ok(None)
        }
        Err(error) => return Err(FileOpError::from_resolve(error, path)),
    };
    let file = match std::fs::File::open(&resolved) {
        Ok(file) => file,
        Err(error)
            if error.kind() == std::io::ErrorKind::NotFound
                || error.raw_os_error() == Some(libc::ENOTDIR) =>
        {
            return Ok(None)
        }
        Err(error) => return Err(FileOpError::io("opening", path, error)),
    };
    let metadata = file
        .metadata()
        .map_err(|error| FileOpError::io("reading", path, error))?;
    if !metadata.is_file() {
        return Err(FileOpError::NotRegularFile {
            path: path.to_string(),
        });
    }
    let mut bytes = Vec::new();
    file.take(MAX_DATABASE_SIZE)
        .read_to_end(&mut bytes)
        .map_err(|error| FileOpError::io("reading", path, error))?;
    Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
}

/// Parses a number field as moby/sys/user does: anything unparsable is 0.
fn parse_id(field: &str) -> u32 {
    field.trim().parse::<u32>().unwrap_or(0)
}

/// The uid and primary gid of the first passwd line (`name:x:uid:gid:...`) for `name`.
pub fn find_user(passwd: &str, name: &str) -> Option<(u32, u32)> {
    passwd.lines().find_map(|line| {
        let line = line.trim();
        if line.is_empty() {
            return None;
        }
        let mut fields = line.split(':');
        if fields.next()? != name {
            return None;
        }
        let _password = fields.next();
        let uid = fields.next().map(parse_id).unwrap_or(0);
        let gid = fields.next().map(parse_id).unwrap_or(0);
        Some((uid, gid))
    })
}

/// The gid of the first group line (`name:x:gid:members`) for `name`.
pub fn find_group(group: &str, name: &str) -> Option<u32> {
    group.lines().find_map(|line| {
        let line = line.trim();
        if line.is_empty() {
            return None;
        }
        let mut fields = line.split(':');
        if fields.next()? != name {
            return None;
        }
        let _password = fields.next();
        Some(fields.next().map(parse_id).unwrap_or(0))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwd_and_group_lines() {
        let passwd = "root:x:0:0:root:/root:/bin/sh\n\nnobody:x:65534:65534::/:/sbin/nologin\napp:x:1000:1001::/home/app:/bin/sh\napp:x:5:5::/:/bin/sh\n";
        assert_eq!(find_user(passwd, "app"), Some((1000, 1001)));
        assert_eq!(find_user(passwd, "nobody"), Some((65534, 65534)));
        assert_eq!(find_user(passwd, "ghost"), None);
        let group = "root:x:0:\nstaff:x:50:app,root\nweird:x:notanumber:\n";
        assert_eq!(find_group(group, "staff"), Some(50));
        assert_eq!(find_group(group, "weird"), Some(0));
        assert_eq!(find_group(group, "app"), None);
    }
}
