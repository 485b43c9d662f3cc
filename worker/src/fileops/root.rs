//! Paths scoped to a root directory: lexical cleaning and symlink resolution that never leaves
//! the root, with the semantics of containerd/continuity's `RootPath` (what BuildKit uses for
//! both sides of a copy).
//!
//! A symlink met on the way is read and its target joined to the directory holding it (an
//! absolute target restarts at the root); `..` is folded lexically and stops at the root, as in
//! a chroot. So `var/run -> /run`, `dst -> ../tmp/x` and `etc -> ../../../../etc` all resolve
//! to paths inside the root. A missing component ends the resolution: the rest is appended as
//! is (it cannot be a link). The file operations then run on the resolved path without
//! following its final component again, so a path given to them stays inside the root.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// How many symlinks one resolution may follow before giving up (continuity's limit).
pub(crate) const MAX_SYMLINKS: usize = 255;

/// Why a path could not be resolved inside its root.
#[derive(Debug)]
pub(crate) enum ResolveError {
    /// More than [`MAX_SYMLINKS`] links on the way (a loop).
    TooManySymlinks,
    /// A component could not be examined (not a directory, permission, I/O).
    Io(io::Error),
}

/// The names of a `/`-separated path after lexical cleaning as an absolute path (Go's
/// `filepath.Join("/", path)`): no empty or `.` names, `..` folded, never above the root.
pub(crate) fn clean_components(path: &[u8]) -> Vec<Vec<u8>> {
    let mut names: Vec<Vec<u8>> = Vec::new();
    for name in path.split(|&byte| byte == b'/') {
        match name {
            b"" | b"." => {}
            b".." => {
                names.pop();
            }
            other => names.push(other.to_vec()),
        }
    }
    names
}

/// Joins names into a relative path.
pub(crate) fn join_names(names: &[Vec<u8>]) -> PathBuf {
    let mut path = PathBuf::new();
    for name in names {
        path.push(OsStr::from_bytes(name));
    }
    path
}

/// The lexically cleaned absolute form of a path (`/` for the root), as a string.
pub(crate) fn clean_absolute(path: &str) -> String {
    let names = clean_components(path.as_bytes());
    let mut text = String::with_capacity(path.len() + 1);
    for name in &names {
        text.push('/');
        text.push_str(&String::from_utf8_lossy(name));
    }
    if text.is_empty() {
        text.push('/');
    }
    text
}

/// Resolves `path` (absolute or relative, taken inside `root`) to a path relative to `root`,
/// following symlinks without ever leaving it. With `follow_final` false the last component is
/// kept as is even when it is a link (it is then what an operation acts on, not its target).
pub(crate) fn resolve_in_root(
    root: &Path,
    path: &[u8],
    follow_final: bool,
) -> Result<PathBuf, ResolveError> {
    // `pending` is a stack: the next name to look at is last.
    let mut pending: Vec<Vec<u8>> = clean_components(path);
    pending.reverse();
    let mut resolved: Vec<Vec<u8>> = Vec::with_capacity(pending.len());
    let mut links_followed = 0usize;
    while let Some(name) = pending.pop() {
        resolved.push(name);
        if pending.is_empty() && !follow_final {
            break;
        }
        let full = root.join(join_names(&resolved));
        let metadata = match std::fs::symlink_metadata(&full) {
            Ok(metadata) => metadata,
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                // Nothing below a missing name exists either: no more links to meet.
                resolved.extend(pending.drain(..).rev());
                break;
            }
            Err(error) => return Err(ResolveError::Io(error)),
        };
        if !metadata.file_type().is_symlink() {
            continue;
        }
        links_followed += 1;
        if links_followed > MAX_SYMLINKS {
            return Err(ResolveError::TooManySymlinks);
        }
        let target = std::fs::read_link(&full).map_err(ResolveError::Io)?;
        let target = target.as_os_str().as_bytes();
        resolved.pop();
        let mut combined: Vec<u8> = Vec::new();
        if !target.starts_with(b"/") {
            for name in &resolved {
                combined.push(b'/');
                combined.extend_from_slice(name);
            }
            combined.push(b'/');
        }
        combined.extend_from_slice(target);
        let mut restart = clean_components(&combined);
        restart.reverse();
        // New stack: the rest of the original path below the link's expansion.
        restart.splice(0..0, pending.drain(..));
        pending = restart;
        resolved.clear();
    }
    Ok(join_names(&resolved))
}

/// The last name of a cleaned absolute path (`None` for the root), as Go's `filepath.Base`.
pub(crate) fn base_name(path: &str) -> Option<String> {
    let names = clean_components(path.as_bytes());
    names
        .last()
        .map(|name| String::from_utf8_lossy(name).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleaning_stays_at_root() {
        assert_eq!(clean_absolute("../../etc/passwd"), "/etc/passwd");
        assert_eq!(clean_absolute("/a/./b//c/.."), "/a/b");
        assert_eq!(clean_absolute(""), "/");
        assert_eq!(clean_absolute("/.."), "/");
    }

    #[test]
    fn links_resolve_inside() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join("tmp/x")).unwrap();
        std::os::unix::fs::symlink("/run", r.join("varrun")).unwrap();
        std::os::unix::fs::symlink("../tmp/x", r.join("dst")).unwrap();
        std::os::unix::fs::symlink("../../../../etc", r.join("tmp/up")).unwrap();
        std::os::unix::fs::symlink("loop2", r.join("loop1")).unwrap();
        std::os::unix::fs::symlink("loop1", r.join("loop2")).unwrap();
        let resolve = |p: &str, follow| resolve_in_root(r, p.as_bytes(), follow).ok();
        assert_eq!(resolve("/varrun/a", true), Some(PathBuf::from("run/a")));
        assert_eq!(resolve("/dst", true), Some(PathBuf::from("tmp/x")));
        assert_eq!(resolve("/dst", false), Some(PathBuf::from("dst")));
        assert_eq!(
            resolve("/tmp/up/passwd", true),
            Some(PathBuf::from("etc/passwd"))
        );
        assert!(matches!(
            resolve_in_root(r, b"/loop1/x", true),
            Err(ResolveError::TooManySymlinks)
        ));
    }
}
