//! Small filesystem helpers: fsync a directory, remove a tree, current time, disk usage.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::{Result, StoreError};

/// Flushes a directory's entries (a rename or create inside it) to disk.
pub(crate) fn fsync_dir(path: &Path) -> Result<()> {
    let directory = fs::File::open(path).map_err(|e| StoreError::io("open directory", path, e))?;
    directory
        .sync_all()
        .map_err(|e| StoreError::io("fsync directory", path, e))
}

/// Creates a directory and its parents.
pub(crate) fn create_dir_all(path: &Path) -> Result<()> {
    fs::create_dir_all(path).map_err(|e| StoreError::io("create directory", path, e))
}

/// Marks a directory as the top of unrelated directory trees for ext4's Orlov allocator
/// (`chattr +T`): each subdirectory made in it goes to a block group of its own choosing,
/// with free inodes, instead of its parent's group. A snapshot or cache mount is such a
/// tree. Without it, a snapshot made just after others were deleted lands in the same group,
/// and on ext4 without a journal every file it creates scans past the recently deleted
/// inodes there (`recently_deleted()`): after a 20,000-file snapshot was removed, copying
/// 20,000 files into a new one took 1.9-3.1 s instead of 0.6 s. Filesystems without the flag
/// (or refusing it) are left as they are: it only places inodes.
pub(crate) fn mark_top_dir(path: &Path) {
    let Ok(directory) = fs::File::open(path) else {
        return;
    };
    if let Ok(flags) = rustix::fs::ioctl_getflags(&directory) {
        if !flags.contains(rustix::fs::IFlags::TOPDIR) {
            let _ = rustix::fs::ioctl_setflags(&directory, flags | rustix::fs::IFlags::TOPDIR);
        }
    }
}

/// Removes a file or a whole tree; a missing path is fine.
pub(crate) fn remove_path(path: &Path) -> Result<()> {
    let metadata = match fs::symlink_metadata(path) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(StoreError::io("inspect", path, error)),
    };
    let result = if metadata.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    match result {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(StoreError::io("remove", path, error)),
    }
}

/// Seconds since the Unix epoch.
pub(crate) fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or(0)
}

/// Bytes on disk under a path (allocated blocks, hard links counted once per walk); errors are
/// counted as zero since this only feeds reports.
pub(crate) fn disk_usage(path: &Path) -> u64 {
    let mut seen = std::collections::HashSet::new();
    disk_usage_inner(path, &mut seen)
}

fn disk_usage_inner(path: &Path, seen: &mut std::collections::HashSet<(u64, u64)>) -> u64 {
    let Ok(metadata) = fs::symlink_metadata(path) else {
        return 0;
    };
    let mut total = 0;
    if metadata.nlink() <= 1 || seen.insert((metadata.dev(), metadata.ino())) {
        total += metadata.blocks() * 512;
    }
    if metadata.is_dir() {
        if let Ok(entries) = fs::read_dir(path) {
            for entry in entries.flatten() {
                total += disk_usage_inner(&entry.path(), seen);
            }
        }
    }
    total
}
