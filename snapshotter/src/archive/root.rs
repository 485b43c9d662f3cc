//! Filesystem operations confined to one destination directory.
//!
//! Every directory is reached with `openat2(RESOLVE_IN_ROOT)` from a descriptor of the root, so
//! symlinks (absolute, `..`-laden, chained) resolve as if the root were `/` and never lead
//! outside it. Operations on an entry's final component go through the parent directory's
//! descriptor with "no follow" semantics (`O_NOFOLLOW`, `AT_SYMLINK_NOFOLLOW`, `unlinkat`,
//! `linkat` without `AT_SYMLINK_FOLLOW`), so a symlink in the final position is never followed.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::rc::Rc;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

use super::path::split_parent;

/// A destination directory and a cache of the last parent directory resolved in it.
pub(crate) struct Root {
    fd: OwnedFd,
    /// The parent path of the previous entry and its descriptor: tars list siblings together,
    /// so most entries reuse it. Every change an entry makes is to a child of its parent, so
    /// the cached path never goes stale.
    cached_parent: Option<(Vec<u8>, Rc<OwnedFd>)>,
}

fn errno_to_io(errno: Errno) -> io::Error {
    io::Error::from(errno)
}

impl Root {
    /// Opens the destination directory (it must exist).
    pub(crate) fn open(path: &Path) -> io::Result<Root> {
        let fd = rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Root {
            fd,
            cached_parent: None,
        })
    }

    /// Opens an existing directory inside the root, following symlinks only within the root.
    /// `extra` adds open flags (`RDONLY` by default; `PATH` for a lookup-only descriptor;
    /// `NOFOLLOW` to refuse a symlink in the final position).
    pub(crate) fn open_dir(&self, path: &[u8], extra: OFlags) -> io::Result<OwnedFd> {
        let path: &[u8] = if path.is_empty() { b"." } else { path };
        loop {
            match rustix::fs::openat2(
                &self.fd,
                path,
                OFlags::DIRECTORY | OFlags::CLOEXEC | extra,
                Mode::empty(),
                ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
            ) {
                // The kernel asks for a retry when a rename raced with the lookup.
                Err(Errno::AGAIN) | Err(Errno::INTR) => continue,
                other => return other.map_err(errno_to_io),
            }
        }
    }

    /// Opens a directory inside the root, creating it and any missing parents (mode 0755).
    pub(crate) fn ensure_dir(&self, path: &[u8]) -> io::Result<OwnedFd> {
        match self.open_dir(path, OFlags::PATH) {
            Err(error) if error.raw_os_error() == Some(libc::ENOENT) && !path.is_empty() => {
                let (parent, name) = split_parent(path);
                let parent_fd = self.ensure_dir(parent)?;
                match rustix::fs::mkdirat(&parent_fd, name, Mode::from_raw_mode(0o755)) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(errno) => return Err(errno_to_io(errno)),
                }
                self.open_dir(path, OFlags::PATH)
            }
            other => other,
        }
    }

    /// The (lookup-only) descriptor of a parent directory, created if missing, cached.
    pub(crate) fn parent(&mut self, parent: &[u8]) -> io::Result<Rc<OwnedFd>> {
        if let Some((cached_path, fd)) = &self.cached_parent {
            if cached_path.as_slice() == parent {
                return Ok(Rc::clone(fd));
            }
        }
        let fd = Rc::new(self.ensure_dir(parent)?);
        self.cached_parent = Some((parent.to_vec(), Rc::clone(&fd)));
        Ok(fd)
    }

    /// Forgets the cached parent (after an operation that may have replaced a directory that
    /// is an ancestor of it).
    pub(crate) fn forget_cached_parent(&mut self) {
        self.cached_parent = None;
    }
}

/// `lstat` of a name in a directory.
pub(crate) fn lstat_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<rustix::fs::Stat> {
    rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW).map_err(errno_to_io)
}

/// Removes a name from a directory: a directory with everything under it, anything else with
/// `unlinkat` (a symlink is removed, never followed). A missing name is not an error.
pub(crate) fn remove_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(Errno::ISDIR) | Err(Errno::PERM) => {
            // Linux returns EISDIR for a directory; EPERM covers other kernels' habit.
            let stat = match lstat_at(dir, name) {
                Ok(stat) => stat,
                Err(error) if error.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
                Err(error) => return Err(error),
            };
            if FileType::from_raw_mode(stat.st_mode) != FileType::Directory {
                return Err(io::Error::from_raw_os_error(libc::EPERM));
            }
            let child = rustix::fs::openat(
                dir,
                name,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            remove_contents(child.as_fd())?;
            drop(child);
            match rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR) {
                Ok(()) | Err(Errno::NOENT) => Ok(()),
                Err(errno) => Err(errno_to_io(errno)),
            }
        }
        Err(errno) => Err(errno_to_io(errno)),
    }
}

/// The names in a directory (without `.` and `..`), unsorted.
pub(crate) fn list_names(dir: BorrowedFd<'_>) -> io::Result<Vec<(CString, FileType)>> {
    let mut names = Vec::new();
    let entries = rustix::fs::Dir::read_from(dir)?;
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let bytes = name.to_bytes();
        if bytes == b"." || bytes == b".." {
            continue;
        }
        names.push((name.to_owned(), entry.file_type()));
    }
    Ok(names)
}

/// Removes everything inside a directory (opened for reading), never following symlinks.
pub(crate) fn remove_contents(dir: BorrowedFd<'_>) -> io::Result<()> {
    for (name, _) in list_names(dir)? {
        remove_at(dir, name.as_bytes())?;
    }
    Ok(())
}

/// A path through `/proc/self/fd` naming `name` inside the directory `dir`: for the l*xattr
/// calls and chmod, which have no `*at` form. The directory part is a magic link to the very
/// directory `dir` refers to, and the final component is not followed by the `l*` calls.
pub(crate) fn proc_path(dir: BorrowedFd<'_>, name: &[u8]) -> Vec<u8> {
    let mut path = format!("/proc/self/fd/{}", dir.as_raw_fd()).into_bytes();
    if !name.is_empty() {
        path.push(b'/');
        path.extend_from_slice(name);
    }
    path
}

/// Changes the mode of a file through an `O_PATH` descriptor (there is no `fchmod` for those
/// and no no-follow `fchmodat` in rustix): the magic link names the inode itself, never a
/// symlink's target.
pub(crate) fn chmod_path_fd(fd: BorrowedFd<'_>, mode: u32) -> io::Result<()> {
    rustix::fs::chmod(proc_path(fd, b""), Mode::from_raw_mode(mode)).map_err(errno_to_io)
}
