//! Small filesystem helpers of the file actions: owner, times, xattrs and `MkdirAll`, none of
//! which follows a final symlink.

use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Mode, Timespec, Timestamps, CWD};

use super::owner::Owner;
use super::FileOpError;

/// A time to set on created files (`SOURCE_DATE_EPOCH`-style `timestamp` of an action).
pub(crate) fn timespec_from_seconds(seconds: i64) -> Timespec {
    Timespec {
        tv_sec: seconds,
        tv_nsec: 0,
    }
}

/// `lchown`.
pub(crate) fn lchown(path: &Path, owner: Owner) -> io::Result<()> {
    rustix::fs::chownat(
        CWD,
        path,
        Some(rustix::fs::Uid::from_raw_unchecked(owner.uid)),
        Some(rustix::fs::Gid::from_raw_unchecked(owner.gid)),
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(io::Error::from)
}

/// `fchown`.
pub(crate) fn fchown(fd: impl AsFd, owner: Owner) -> io::Result<()> {
    rustix::fs::fchown(
        fd,
        Some(rustix::fs::Uid::from_raw_unchecked(owner.uid)),
        Some(rustix::fs::Gid::from_raw_unchecked(owner.gid)),
    )
    .map_err(io::Error::from)
}

/// Sets access and modification times without following a final symlink.
pub(crate) fn set_times_nofollow(
    path: &Path,
    access: Timespec,
    modification: Timespec,
) -> io::Result<()> {
    rustix::fs::utimensat(
        CWD,
        path,
        &Timestamps {
            last_access: access,
            last_modification: modification,
        },
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(io::Error::from)
}

/// `chmod` (the path is never a symlink when called).
pub(crate) fn chmod(path: &Path, mode: u32) -> io::Result<()> {
    rustix::fs::chmodat(CWD, path, Mode::from_raw_mode(mode), AtFlags::empty())
        .map_err(io::Error::from)
}

/// The extended attributes of a path (not following a final symlink), names sorted.
pub(crate) fn read_xattrs(path: &Path) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut names = vec![0u8; 1024];
    let length = loop {
        match rustix::fs::llistxattr(path, &mut names[..]) {
            Ok(length) => break length,
            Err(rustix::io::Errno::RANGE) => {
                let wanted = rustix::fs::llistxattr_query(path)?;
                names.resize(wanted.max(names.len() * 2), 0);
            }
            Err(rustix::io::Errno::NOTSUP) => return Ok(Vec::new()),
            Err(error) => return Err(error.into()),
        }
    };
    if length == 0 {
        return Ok(Vec::new());
    }
    let mut attributes = Vec::new();
    for name in names[..length].split(|&byte| byte == 0) {
        if name.is_empty() {
            continue;
        }
        let name_os = std::ffi::OsStr::new(std::str::from_utf8(name).unwrap_or(""));
        if name_os.is_empty() {
            continue;
        }
        let mut value = vec![0u8; 256];
        let value_length = loop {
            match rustix::fs::lgetxattr(path, name_os, &mut value[..]) {
                Ok(length) => break Some(length),
                Err(rustix::io::Errno::RANGE) => {
                    let wanted = rustix::fs::lgetxattr_query(path, name_os)?;
                    value.resize(wanted.max(value.len() * 2), 0);
                }
                // Removed meanwhile.
                Err(rustix::io::Errno::NODATA) => break None,
                Err(error) => return Err(error.into()),
            }
        };
        if let Some(value_length) = value_length {
            value.truncate(value_length);
            attributes.push((name.to_vec(), value));
        }
    }
    attributes.sort();
    Ok(attributes)
}

/// Copies the xattrs of `source` onto `target` (neither followed). Attributes the target
/// cannot take (unsupported filesystem, `user.*` on a symlink, SELinux labels refused) are
/// skipped, as BuildKit's handler ignores them.
pub(crate) fn copy_xattrs(source: &Path, target: &Path) {
    let Ok(attributes) = read_xattrs(source) else {
        return;
    };
    for (name, value) in attributes {
        let Ok(name) = std::str::from_utf8(&name) else {
            continue;
        };
        let _ignored = rustix::fs::lsetxattr(target, name, &value, rustix::fs::XattrFlags::empty());
    }
}

/// Go's `MkdirAll` as fsutil forks it: creates the missing directories of `path` with `perm`,
/// then chowns (when `owner` is given) and sets times (when `time` is given) on each one it
/// created. Returns the created directories, outermost first. `path` is already resolved
/// inside its root.
pub(crate) fn mkdir_all(
    path: &Path,
    perm: u32,
    owner: Option<Owner>,
    time: Option<Timespec>,
) -> Result<Vec<PathBuf>, FileOpError> {
    match std::fs::metadata(path) {
        Ok(metadata) if metadata.is_dir() => return Ok(Vec::new()),
        Ok(_) => {
            return Err(FileOpError::io(
                "creating directory",
                path.display(),
                io::Error::from_raw_os_error(libc::ENOTDIR),
            ))
        }
        Err(_) => {}
    }
    let mut created = Vec::new();
    if let Some(parent) = path.parent() {
        if !parent.as_os_str().is_empty() && parent != Path::new("/") {
            created = mkdir_all(parent, perm, owner, time)?;
        }
    }
    match std::fs::DirBuilder::new().mode(perm).create(path) {
        Ok(()) => {}
        Err(error) => {
            if std::fs::symlink_metadata(path).is_ok_and(|metadata| metadata.is_dir()) {
                return Ok(created);
            }
            return Err(FileOpError::io("creating directory", path.display(), error));
        }
    }
    chmod(path, perm).map_err(|error| FileOpError::io("chmod", path.display(), error))?;
    if let Some(owner) = owner {
        lchown(path, owner).map_err(|error| FileOpError::io("chown", path.display(), error))?;
    }
    if let Some(time) = time {
        set_times_nofollow(path, time, time)
            .map_err(|error| FileOpError::io("setting times of", path.display(), error))?;
    }
    created.push(path.to_path_buf());
    Ok(created)
}

/// Removes a path whatever it is, never following a symlink.
pub(crate) fn remove_all(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(metadata) if metadata.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(error),
    }
}
