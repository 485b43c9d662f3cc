//! The state directory: one `<state_dir>/<id>/` per sandbox with a lock held by its owner, the
//! record of what to undo (cgroups, stub mount points) and the contents of file mounts. A kiln
//! killed mid-run leaves these behind; `cleanup_stale` removes every record whose lock is free.

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cgroup::remove_cgroup_directories;

/// What a sandbox must undo, written before it is done.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct StateRecord {
    pub id: String,
    pub rootfs: PathBuf,
    /// Mount-point stubs relative to the rootfs, in creation order (parents first).
    pub stubs: Vec<Stub>,
    pub cgroups: Vec<PathBuf>,
}

/// One entry kiln created in the rootfs as a mount point.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Stub {
    /// Path relative to the rootfs (symlinks already resolved).
    pub path: String,
    /// `[atime_sec, atime_nsec, mtime_sec, mtime_nsec]` of its parent before the stub was made,
    /// when the parent already existed: restored after the stub is removed, so the parent does
    /// not look modified in the layer diff (on overlayfs it was copied up).
    pub parent_times: Option<[i64; 4]>,
}

/// A sandbox's directory in the state dir, locked while the sandbox lives.
#[derive(Debug)]
pub(crate) struct StateDirectory {
    pub path: PathBuf,
    _lock: File,
}

pub(crate) fn create_private_dir(path: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)?;
    // an existing directory keeps its mode from before; make it private
    fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o700))
}

/// Names of sandbox directories still being made (not yet locked and renamed into place).
const STAGING_PREFIX: &str = ".new-";

/// How old a staging directory must be before `cleanup_stale` takes it for the leftover of a kiln
/// killed while making it (making one takes microseconds).
const STAGING_GRACE: std::time::Duration = std::time::Duration::from_secs(60);

/// `rename(from, to)` that fails with `AlreadyExists` instead of replacing an empty `to`.
fn rename_no_replace(from: &Path, to: &Path) -> io::Result<()> {
    let from_c = CString::new(from.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let to_c = CString::new(to.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: two valid C strings
    let result = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from_c.as_ptr(),
            libc::AT_FDCWD,
            to_c.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if result < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn try_lock(file: &File) -> io::Result<bool> {
    // SAFETY: flock on an open file
    let result = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if result == 0 {
        return Ok(true);
    }
    let error = io::Error::last_os_error();
    if error.raw_os_error() == Some(libc::EWOULDBLOCK) {
        return Ok(false);
    }
    Err(error)
}

impl StateDirectory {
    /// Makes `<state_dir>/<id>/` with its lock held. It is built under a staging name
    /// ([`STAGING_PREFIX`]) and renamed into place once locked, so that [`cleanup_stale`] in
    /// another process never finds a live sandbox's directory unlocked.
    pub(crate) fn create(state_dir: &Path, id: &str) -> io::Result<Self> {
        let path = state_dir.join(id);
        let staging = state_dir.join(format!("{STAGING_PREFIX}{id}"));
        fs::DirBuilder::new().mode(0o700).create(&staging)?;
        let locked = (|| {
            // the child mounts its tmpfs for file mounts here (in its own mount namespace)
            fs::DirBuilder::new()
                .mode(0o700)
                .create(staging.join("files"))?;
            let lock = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .mode(0o600)
                .custom_flags(libc::O_CLOEXEC)
                .open(staging.join("lock"))?;
            if !try_lock(&lock)? {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("sandbox {id} is in use"),
                ));
            }
            rename_no_replace(&staging, &path)?;
            Ok(lock)
        })();
        match locked {
            Ok(lock) => Ok(StateDirectory { path, _lock: lock }),
            Err(error) => {
                let _ = fs::remove_dir_all(&staging);
                Err(error)
            }
        }
    }

    pub(crate) fn write_record(&self, record: &StateRecord) -> io::Result<()> {
        let temporary = self.path.join("state.json.tmp");
        let bytes = serde_json::to_vec(record).map_err(io::Error::other)?;
        fs::write(&temporary, bytes)?;
        fs::rename(&temporary, self.path.join("state.json"))
    }

    /// This sandbox's directory.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn remove(&self) -> io::Result<()> {
        match fs::remove_dir_all(&self.path) {
            Err(error) if error.kind() != io::ErrorKind::NotFound => Err(error),
            _ => Ok(()),
        }
    }
}

fn open_in_root(root: RawFd, relative: &str, flags: i32) -> io::Result<OwnedFd> {
    let path = CString::new(relative).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: open_how is plain data; the syscall gets valid pointers
    unsafe {
        let mut how: libc::open_how = std::mem::zeroed();
        how.flags = (flags | libc::O_CLOEXEC) as u64;
        how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
        let fd = libc::syscall(
            libc::SYS_openat2,
            root,
            path.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        );
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(OwnedFd::from_raw_fd(fd as RawFd))
    }
}

/// Opens `relative` inside the directory `root` without ever leaving it (symlinks and `..` are
/// resolved as if `root` were `/`).
pub(crate) fn open_beneath(root: &OwnedFd, relative: &str, flags: i32) -> io::Result<OwnedFd> {
    open_in_root(root.as_raw_fd(), relative, flags)
}

/// Removes stub mount points (deepest first) that are still empty, re-resolving each parent inside
/// the rootfs so that a symlink planted by the container is never followed (CVE-2024-23652).
pub(crate) fn remove_stubs(rootfs: &Path, stubs: &[Stub]) -> io::Result<()> {
    if stubs.is_empty() {
        return Ok(());
    }
    let root: OwnedFd = match File::open(rootfs) {
        Ok(file) => file.into(),
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(error),
    };
    for stub in stubs.iter().rev() {
        let (parent, name) = match stub.path.rsplit_once('/') {
            Some((parent, name)) => (parent, name),
            None => (".", stub.path.as_str()),
        };
        let Ok(parent_fd) = open_beneath(&root, parent, libc::O_PATH | libc::O_DIRECTORY) else {
            continue;
        };
        let Ok(name_c) = CString::new(name) else {
            continue;
        };
        // SAFETY: fstatat/unlinkat relative to a directory fd, never following the last component
        unsafe {
            let mut stat: libc::stat = std::mem::zeroed();
            if libc::fstatat(
                parent_fd.as_raw_fd(),
                name_c.as_ptr(),
                &mut stat,
                libc::AT_SYMLINK_NOFOLLOW,
            ) < 0
            {
                continue;
            }
            let kind = stat.st_mode & libc::S_IFMT;
            let removed = if kind == libc::S_IFDIR {
                // fails (and is left alone) when not empty
                libc::unlinkat(parent_fd.as_raw_fd(), name_c.as_ptr(), libc::AT_REMOVEDIR) == 0
            } else if kind == libc::S_IFREG && stat.st_size == 0 {
                libc::unlinkat(parent_fd.as_raw_fd(), name_c.as_ptr(), 0) == 0
            } else {
                false
            };
            if let (true, Some(times)) = (removed, stub.parent_times) {
                let times = [
                    libc::timespec {
                        tv_sec: times[0],
                        tv_nsec: times[1],
                    },
                    libc::timespec {
                        tv_sec: times[2],
                        tv_nsec: times[3],
                    },
                ];
                let through = CString::new(format!("/proc/self/fd/{}", parent_fd.as_raw_fd()))
                    .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
                libc::utimensat(libc::AT_FDCWD, through.as_ptr(), times.as_ptr(), 0);
            }
        }
    }
    Ok(())
}

/// Cleans what killed kiln processes left in `state_dir`: for every sandbox directory whose lock
/// is free, kills and removes its cgroups, removes its empty stubs and deletes the directory.
/// Returns the ids cleaned. Sandboxes still owned by a live process are left alone.
pub fn cleanup_stale(state_dir: &Path) -> io::Result<Vec<String>> {
    let mut cleaned = Vec::new();
    let entries = match fs::read_dir(state_dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(cleaned),
        Err(error) => return Err(error),
    };
    for entry in entries {
        let entry = entry?;
        if !entry.file_type()?.is_dir() {
            continue;
        }
        let path = entry.path();
        if entry
            .file_name()
            .as_encoded_bytes()
            .starts_with(STAGING_PREFIX.as_bytes())
        {
            // being made by a live process, or left by a kiln killed while making it (before
            // any cgroup or stub existed: nothing to undo but the directory)
            let age = entry
                .metadata()?
                .modified()
                .ok()
                .and_then(|modified| modified.elapsed().ok());
            if age.is_some_and(|age| age > STAGING_GRACE) {
                fs::remove_dir_all(&path)?;
            }
            continue;
        }
        let lock = match OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(path.join("lock"))
        {
            Ok(lock) => lock,
            Err(_) => continue,
        };
        if !try_lock(&lock)? {
            continue;
        }
        if let Ok(bytes) = fs::read(path.join("state.json")) {
            if let Ok(record) = serde_json::from_slice::<StateRecord>(&bytes) {
                remove_cgroup_directories(&record.cgroups)?;
                remove_stubs(&record.rootfs, &record.stubs)?;
            }
        }
        fs::remove_dir_all(&path)?;
        cleaned.push(entry.file_name().to_string_lossy().into_owned());
    }
    Ok(cleaned)
}
