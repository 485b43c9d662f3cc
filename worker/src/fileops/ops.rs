//! The small file actions: mkdir, mkfile (heredocs), rm and symlink, each scoped inside the
//! destination root like BuildKit's file backend.

use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use kiln_frontend::dag::op::{Chown, MkdirAction, MkfileAction, RmAction, SymlinkAction};

use super::fsys::{
    chmod, lchown, mkdir_all, remove_all, set_times_nofollow, timespec_from_seconds,
};
use super::owner::{resolve_owner, Owner};
use super::root::{clean_absolute, resolve_in_root};
use super::select::{contains_wildcards, SourceRoot};
use super::FileOpError;

/// The destination path of an action, links (the final one too) followed inside the root.
fn resolve_dest(dest_root: &Path, path: &str) -> Result<PathBuf, FileOpError> {
    let resolved = resolve_in_root(dest_root, clean_absolute(path).as_bytes(), true)
        .map_err(|error| FileOpError::from_resolve(error, path))?;
    Ok(dest_root.join(resolved))
}

fn owner_of(chown: Option<&Chown>, dest_root: &Path) -> Result<Option<Owner>, FileOpError> {
    chown
        .map(|chown| resolve_owner(chown, dest_root))
        .transpose()
}

/// `mkdir` (`WORKDIR`): with `make_parents`, missing parents are made too and an existing
/// directory is left alone; without, an existing path is left alone.
pub(crate) fn mkdir(action: &MkdirAction, dest_root: &Path) -> Result<(), FileOpError> {
    let path = resolve_dest(dest_root, &action.path)?;
    let owner = owner_of(action.owner.as_ref(), dest_root)?;
    let time = action.timestamp.map(timespec_from_seconds);
    let perm = action.mode & 0o777;
    if action.make_parents {
        mkdir_all(&path, perm, owner, time)?;
        return Ok(());
    }
    match std::fs::DirBuilder::new().mode(perm).create(&path) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
        Err(error) => return Err(FileOpError::io("creating directory", &action.path, error)),
    }
    chmod(&path, perm).map_err(|error| FileOpError::io("chmod", &action.path, error))?;
    finish(&path, &action.path, owner, time)
}

/// Sets owner and times of a path an action created.
fn finish(
    path: &Path,
    shown: &str,
    owner: Option<Owner>,
    time: Option<rustix::fs::Timespec>,
) -> Result<(), FileOpError> {
    if let Some(owner) = owner {
        lchown(path, owner).map_err(|error| FileOpError::io("chown", shown, error))?;
    }
    if let Some(time) = time {
        set_times_nofollow(path, time, time)
            .map_err(|error| FileOpError::io("setting times of", shown, error))?;
    }
    Ok(())
}

/// `mkfile`: writes the data, replacing the content of an existing file (whose mode is then
/// kept, as Go's `os.WriteFile`); a new file gets exactly `mode` (no umask).
pub(crate) fn mkfile(action: &MkfileAction, dest_root: &Path) -> Result<(), FileOpError> {
    let path = resolve_dest(dest_root, &action.path)?;
    if path == dest_root {
        return Err(FileOpError::InvalidPath {
            path: action.path.clone(),
            reason: "cannot write a file over the root",
        });
    }
    let owner = owner_of(action.owner.as_ref(), dest_root)?;
    let time = action.timestamp.map(timespec_from_seconds);
    let perm = action.mode & 0o777;
    let existed = std::fs::symlink_metadata(&path).is_ok();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(perm)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(|error| FileOpError::io("creating", &action.path, error))?;
    file.write_all(action.data.as_bytes())
        .map_err(|error| FileOpError::io("writing", &action.path, error))?;
    if !existed {
        rustix::fs::fchmod(&file, rustix::fs::Mode::from_raw_mode(perm))
            .map_err(|error| FileOpError::io("chmod", &action.path, error.into()))?;
    }
    drop(file);
    finish(&path, &action.path, owner, time)
}

/// `rm`: removes a path (a directory with everything in it); the final name is never
/// followed. With `allow_wildcard` the path may be a pattern (matching nothing is fine).
pub(crate) fn rm(action: &RmAction, dest_root: &Path) -> Result<(), FileOpError> {
    let cleaned = clean_absolute(&action.path);
    if action.allow_wildcard && contains_wildcards(&cleaned) {
        let view = SourceRoot::new(dest_root);
        let matches = super::select::expand_wildcards(&view, &cleaned, false)?;
        for matched in matches {
            remove_path(dest_root, &matched, action.allow_not_found)?;
        }
        return Ok(());
    }
    remove_path(dest_root, &cleaned, action.allow_not_found)
}

fn remove_path(dest_root: &Path, path: &str, allow_not_found: bool) -> Result<(), FileOpError> {
    let cleaned = clean_absolute(path);
    if cleaned == "/" {
        return Err(FileOpError::InvalidPath {
            path: path.to_string(),
            reason: "cannot remove the root",
        });
    }
    let resolved = resolve_in_root(dest_root, cleaned.as_bytes(), false)
        .map_err(|error| FileOpError::from_resolve(error, path))?;
    let target = dest_root.join(resolved);
    if target == dest_root {
        return Err(FileOpError::InvalidPath {
            path: path.to_string(),
            reason: "cannot remove the root",
        });
    }
    if !allow_not_found && std::fs::symlink_metadata(&target).is_err() {
        return Err(FileOpError::NotFound {
            path: path.to_string(),
        });
    }
    remove_all(&target).map_err(|error| FileOpError::io("removing", path, error))
}

/// `symlink`: creates `new_path -> old_path` (the target is written as given).
pub(crate) fn symlink(action: &SymlinkAction, dest_root: &Path) -> Result<(), FileOpError> {
    let path = resolve_dest(dest_root, &action.new_path)?;
    let owner = owner_of(action.owner.as_ref(), dest_root)?;
    let time = action.timestamp.map(timespec_from_seconds);
    std::os::unix::fs::symlink(&action.old_path, &path)
        .map_err(|error| FileOpError::io("creating symlink", &action.new_path, error))?;
    finish(&path, &action.new_path, owner, time)
}
