//! USER resolution against the image's own `/etc/passwd` and `/etc/group` (never the host's NSS).
//!
//! The rules follow Docker's: `user`, `user:group`, `uid`, `uid:gid`; a numeric id without a
//! passwd entry is accepted; ids above 2^31-1 are rejected; supplementary groups come from the
//! group file's member lists, and only when no group was given explicitly; `HOME` is the passwd
//! home directory, `/` when there is none.

/// Largest uid or gid accepted (Docker and runc refuse anything above `i32::MAX`).
pub const MAX_ID: u64 = i32::MAX as u64;

/// A user resolved for the container process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups, set with `setgroups`.
    pub additional_gids: Vec<u32>,
    /// Home directory from the passwd file, `/` when there is no entry.
    pub home: String,
}

/// Why a `user` field could not be resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UserError {
    /// A user name with no entry in the rootfs's `/etc/passwd`.
    #[error("unable to find user {name}: no matching entries in passwd file")]
    NoSuchUser { name: String },
    /// A group name with no entry in the rootfs's `/etc/group`.
    #[error("unable to find group {name}: no matching entries in group file")]
    NoSuchGroup { name: String },
    /// A uid or gid above 2^31-1 (given or found in the files).
    #[error("{what} {value} is out of range (must be at most 2147483647)")]
    IdOutOfRange { what: &'static str, value: String },
}

#[derive(Debug)]
struct PasswdEntry<'a> {
    name: &'a str,
    uid: u64,
    gid: u64,
    home: &'a str,
}

#[derive(Debug)]
struct GroupEntry<'a> {
    name: &'a str,
    gid: u64,
    members: Vec<&'a str>,
}

fn is_numeric(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|byte| byte.is_ascii_digit())
}

/// Parses a run of ASCII digits; values that do not fit in u64 saturate (and so fail the range check).
fn parse_id(text: &str) -> Option<u64> {
    if !is_numeric(text) {
        return None;
    }
    Some(text.parse::<u64>().unwrap_or(u64::MAX))
}

fn passwd_entries(passwd: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    passwd.lines().filter_map(|line| {
        let line = line.trim_end_matches('\r');
        if line.is_empty() || line.starts_with('#') {
            return None;
        }
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() < 4 {
            return None;
        }
        Some(PasswdEntry {
            name: fields[0],
            uid: parse_id(fields[2])?,
            gid: parse_id(fields[3])?,
            home: fields.get(5).copied().unwrap_or(""),
        })
    })
}

fn group_entries(group: &str) -> impl Iterator<Item = GroupEntry<'_>> {
    group.lines().filter_map(|line| {
        let line = line.trim_end_matches('\r');
        if line.is_empty() || line.starts_with('#') {
            return None;
        }
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() < 3 {
            return None;
        }
        let members = fields
            .get(3)
            .map(|list| {
                list.split(',')
                    .map(str::trim)
                    .filter(|m| !m.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        Some(GroupEntry {
            name: fields[0],
            gid: parse_id(fields[2])?,
            members,
        })
    })
}

fn checked(what: &'static str, value: u64) -> Result<u32, UserError> {
    if value > MAX_ID {
        return Err(UserError::IdOutOfRange {
            what,
            value: value.to_string(),
        });
    }
    Ok(value as u32)
}

/// Resolves a `user` field against the contents of the image's `/etc/passwd` and `/etc/group`
/// (`None` when the file does not exist).
pub fn resolve_user(
    user: Option<&str>,
    passwd: Option<&str>,
    group: Option<&str>,
) -> Result<ResolvedUser, UserError> {
    let user = user.unwrap_or("");
    let (user_part, group_part) = match user.split_once(':') {
        Some((user_part, group_part)) => (user_part, group_part),
        None => (user, ""),
    };
    let passwd = passwd.unwrap_or("");
    let group = group.unwrap_or("");

    let mut uid: u64 = 0;
    let mut gid: u64 = 0;
    let mut home = "/".to_owned();
    let mut matched_name: Option<&str> = None;

    let entry = if user_part.is_empty() {
        passwd_entries(passwd).find(|entry| entry.uid == 0)
    } else if let Some(wanted) = parse_id(user_part) {
        passwd_entries(passwd).find(|entry| entry.uid == wanted)
    } else {
        passwd_entries(passwd).find(|entry| entry.name == user_part)
    };
    match entry {
        Some(entry) => {
            uid = entry.uid;
            gid = entry.gid;
            if !entry.home.is_empty() {
                home = entry.home.to_owned();
            }
            matched_name = Some(entry.name);
        }
        None if user_part.is_empty() => {}
        None => match parse_id(user_part) {
            Some(number) => uid = number,
            None => {
                return Err(UserError::NoSuchUser {
                    name: user_part.to_owned(),
                })
            }
        },
    }
    let uid = checked("uid", uid)?;

    let mut additional_gids = Vec::new();
    if !group_part.is_empty() {
        let found = match parse_id(group_part) {
            Some(wanted) => group_entries(group).find(|entry| entry.gid == wanted),
            None => group_entries(group).find(|entry| entry.name == group_part),
        };
        gid = match (found, parse_id(group_part)) {
            (Some(entry), _) => entry.gid,
            (None, Some(number)) => number,
            (None, None) => {
                return Err(UserError::NoSuchGroup {
                    name: group_part.to_owned(),
                })
            }
        };
    } else if let Some(name) = matched_name {
        for entry in group_entries(group) {
            if entry.members.contains(&name) {
                let member_gid = checked("gid", entry.gid)?;
                if !additional_gids.contains(&member_gid) {
                    additional_gids.push(member_gid);
                }
            }
        }
    }
    let gid = checked("gid", gid)?;

    Ok(ResolvedUser {
        uid,
        gid,
        additional_gids,
        home,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
        # comment\n\
        daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n\
        app:x:1000:1000:App:/home/app:/bin/sh\n\
        nohome:x:1001:1001::\n\
        broken line\n\
        huge:x:4294967295:1:huge::/bin/sh\n";
    const GROUP: &str = "root:x:0:\n\
        daemon:x:1:app\n\
        app:x:1000:\n\
        audio:x:29:app,other\n\
        wheel:x:10:root\n\
        big:x:3000000000:app\n";

    fn check(user: Option<&str>) -> Result<ResolvedUser, UserError> {
        resolve_user(user, Some(PASSWD), Some(GROUP))
    }

    #[test]
    fn default_is_root_with_root_groups() {
        let user = check(None).unwrap();
        assert_eq!((user.uid, user.gid, user.home.as_str()), (0, 0, "/root"));
        assert_eq!(user.additional_gids, vec![10]);
    }

    #[test]
    fn name_gives_primary_and_supplementary_groups() {
        let error = check(Some("app")).unwrap_err();
        // the group file lists app in a group whose gid is out of range
        assert!(matches!(error, UserError::IdOutOfRange { .. }));
        let user = resolve_user(
            Some("app"),
            Some(PASSWD),
            Some(&GROUP.replace("big:x:3000000000:app\n", "")),
        )
        .unwrap();
        assert_eq!((user.uid, user.gid), (1000, 1000));
        assert_eq!(user.additional_gids, vec![1, 29]);
        assert_eq!(user.home, "/home/app");
    }

    #[test]
    fn explicit_group_drops_supplementary_groups() {
        let user = check(Some("app:audio")).unwrap();
        assert_eq!((user.uid, user.gid), (1000, 29));
        assert!(user.additional_gids.is_empty());
        let user = check(Some("app:555")).unwrap();
        assert_eq!(user.gid, 555);
    }

    #[test]
    fn numeric_uid_with_and_without_entry() {
        let user = check(Some("1")).unwrap();
        assert_eq!(
            (user.uid, user.gid, user.home.as_str()),
            (1, 1, "/usr/sbin")
        );
        let user = check(Some("4242")).unwrap();
        assert_eq!((user.uid, user.gid, user.home.as_str()), (4242, 0, "/"));
        let user = check(Some("4242:4343")).unwrap();
        assert_eq!((user.uid, user.gid), (4242, 4343));
    }

    #[test]
    fn empty_home_defaults_to_root_dir() {
        assert_eq!(check(Some("nohome")).unwrap().home, "/");
    }

    #[test]
    fn missing_names_are_clear_errors() {
        assert_eq!(
            check(Some("nobody")).unwrap_err().to_string(),
            "unable to find user nobody: no matching entries in passwd file"
        );
        assert_eq!(
            check(Some("app:nogroup")).unwrap_err(),
            UserError::NoSuchGroup {
                name: "nogroup".into()
            }
        );
        assert!(matches!(
            resolve_user(Some("app"), None, None),
            Err(UserError::NoSuchUser { .. })
        ));
    }

    #[test]
    fn ids_above_i32_max_are_rejected() {
        for user in [
            "2147483648",
            "0:2147483648",
            "99999999999999999999999",
            "huge",
        ] {
            assert!(
                matches!(check(Some(user)), Err(UserError::IdOutOfRange { .. })),
                "{user} accepted"
            );
        }
        assert_eq!(check(Some("2147483647")).unwrap().uid, 2147483647);
    }

    #[test]
    fn negative_ids_are_names_and_not_found() {
        assert!(check(Some("-1")).is_err());
    }
}
