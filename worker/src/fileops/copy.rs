//! COPY and ADD of local files: fsutil's copy semantics, run in parallel.
//!
//! Per source match: the destination's parents are made (`MkdirAll` with the `--chmod` octal
//! mode or 0755, owned by `--chown`), the destination resolved inside the root (a file into an
//! existing directory goes inside it; a directory goes inside an existing destination unless
//! only its contents are copied), then the entries are applied: directories in walk order
//! (an existing directory is merged; a non-directory in the way is an error unless
//! `always_replace_existing_dest_paths`), then files, symlinks and special files on the thread
//! pool, then hardlinks to files already copied, then directory metadata deepest first (so
//! copying children does not disturb the times).

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use kiln_frontend::dag::op::CopyAction;
use rayon::prelude::*;
use rustix::fs::{FileType, Mode, Timespec, CWD};

use super::fsys::{
    chmod, copy_xattrs, fchown, lchown, mkdir_all, read_xattrs, remove_all, set_times_nofollow,
    timespec_from_seconds,
};
use super::mode::ModeSpec;
use super::owner::{resolve_owner, Owner};
use super::root::{base_name, clean_absolute, resolve_in_root};
use super::select::{select_copy, Entry, Selection, SourceRoot};
use super::stat::Stat;
use super::unpack;
use super::{FileOpError, FileOpOptions};

/// Buffer of the read/write fallback copy.
const COPY_BUFFER: usize = 1 << 20;

/// Everything a copy applies to each entry.
struct CopyContext<'a> {
    source: &'a SourceRoot,
    owner: Option<Owner>,
    mode: Option<ModeSpec>,
    time: Option<Timespec>,
    always_replace: bool,
    dir_contents_only: bool,
    /// FICLONE failed once: do not try it again for this copy.
    clone_unsupported: AtomicBool,
    /// copy_file_range failed once (another filesystem): use sendfile.
    range_unsupported: AtomicBool,
    /// sendfile failed once: use read/write.
    sendfile_unsupported: AtomicBool,
}

/// The destination path as BuildKit's `cleanPath` leaves it and the directory `Copy` makes
/// first: the destination itself when it ends in `/` (or `/.`), its parent otherwise.
fn destination_parts(dest: &str) -> (String, String) {
    let cleaned = clean_absolute(dest);
    let names_directory = dest.ends_with('/') || dest.ends_with("/.") || dest == ".";
    let ensure = if names_directory || cleaned == "/" {
        cleaned.clone()
    } else {
        match cleaned.rfind('/') {
            Some(0) | None => "/".to_string(),
            Some(index) => cleaned[..index].to_string(),
        }
    };
    (cleaned, ensure)
}

/// Applies a copy action.
pub(crate) fn copy(
    action: &CopyAction,
    source: &SourceRoot,
    dest_root: &Path,
    options: &FileOpOptions,
) -> Result<(), FileOpError> {
    let (dest_clean, ensure) = destination_parts(&action.dest_path);
    if !action.create_dest_path {
        let resolved = resolve_in_root(dest_root, dest_clean.as_bytes(), true)
            .map_err(|error| FileOpError::from_resolve(error, &action.dest_path))?;
        let full = dest_root.join(resolved);
        let parent = if full == dest_root {
            full.clone()
        } else {
            full.parent().map(Path::to_path_buf).unwrap_or(full.clone())
        };
        if std::fs::symlink_metadata(&parent).is_err() {
            return Err(FileOpError::DestinationParentMissing {
                path: action.dest_path.clone(),
            });
        }
    }
    let owner = action
        .owner
        .as_ref()
        .map(|chown| resolve_owner(chown, dest_root))
        .transpose()?;
    let mode = action.mode.as_ref().map(ModeSpec::from_chmod).transpose()?;
    let context = CopyContext {
        source,
        owner,
        mode,
        time: action.timestamp.map(timespec_from_seconds),
        always_replace: action.always_replace_existing_dest_paths,
        dir_contents_only: action.dir_contents_only,
        clone_unsupported: AtomicBool::new(false),
        range_unsupported: AtomicBool::new(false),
        sendfile_unsupported: AtomicBool::new(false),
    };
    let selections = select_copy(source, action)?;
    for selection in &selections {
        if action.attempt_unpack
            && unpack::try_unpack(
                source,
                selection,
                dest_root,
                &dest_clean,
                owner,
                context.time,
            )?
        {
            continue;
        }
        copy_selection(
            &context,
            selection,
            dest_root,
            &dest_clean,
            &ensure,
            options,
        )?;
    }
    Ok(())
}

fn resolve_dest(dest_root: &Path, path: &str) -> Result<PathBuf, FileOpError> {
    let resolved = resolve_in_root(dest_root, path.as_bytes(), true)
        .map_err(|error| FileOpError::from_resolve(error, path))?;
    Ok(dest_root.join(resolved))
}

/// Shows a destination path relative to its root in messages.
fn shown(dest_root: &Path, path: &Path) -> String {
    match path.strip_prefix(dest_root) {
        Ok(relative) => format!("/{}", relative.display()),
        Err(_) => path.display().to_string(),
    }
}

/// What to do with a directory's metadata once its contents are in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DirectoryFinish {
    /// Owner, mode, xattrs and times from the source (and the copy's options).
    Full,
    /// Only the times (the existing top directory of the copy).
    Times,
    /// Nothing (an existing directory that was only a parent).
    Nothing,
}

/// A non-directory to create.
struct FileJob<'a> {
    entry: &'a Entry,
    target: PathBuf,
    /// The parent was created by this copy: nothing can be in the way.
    parent_fresh: bool,
}

fn copy_selection(
    context: &CopyContext<'_>,
    selection: &Selection,
    dest_root: &Path,
    dest_clean: &str,
    ensure: &str,
    options: &FileOpOptions,
) -> Result<(), FileOpError> {
    let Some(root_entry) = selection.first() else {
        return Ok(());
    };
    let parent_mode = ModeSpec::parent_directory_mode(context.mode.as_ref());
    let ensure_path = resolve_dest(dest_root, ensure)?;
    let mut created_parents = mkdir_all(&ensure_path, parent_mode, context.owner, context.time)?;

    let mut destination = resolve_dest(dest_root, dest_clean)?;
    let source_is_dir = root_entry.metadata.is_dir();
    let existing = std::fs::metadata(&destination).ok();
    let into_existing = match &existing {
        Some(metadata) => {
            (source_is_dir && !context.dir_contents_only) || (!source_is_dir && metadata.is_dir())
        }
        None => false,
    };
    if into_existing {
        if let Some(name) = base_name(&selection.source_path) {
            destination = destination.join(name);
        }
    }
    let target_dir = if (context.dir_contents_only && source_is_dir && existing.is_none())
        || destination == dest_root
    {
        destination.clone()
    } else {
        destination
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| destination.clone())
    };
    created_parents.extend(mkdir_all(
        &target_dir,
        parent_mode,
        context.owner,
        context.time,
    )?);

    // Directories, in walk order.
    let mut fresh_dirs: HashSet<&Path> = HashSet::new();
    let mut finishes: Vec<(&Entry, PathBuf, DirectoryFinish)> = Vec::new();
    let mut jobs: Vec<FileJob<'_>> = Vec::new();
    let mut hardlink_leaders: HashMap<(u64, u64), usize> = HashMap::new();
    let mut hardlinks: Vec<(FileJob<'_>, usize)> = Vec::new();
    for (index, entry) in selection.entries().enumerate() {
        let is_root = index == 0;
        let target = if is_root {
            destination.clone()
        } else {
            destination.join(&entry.rel)
        };
        let parent_fresh = !is_root
            && entry
                .rel
                .parent()
                .is_some_and(|parent| fresh_dirs.contains(parent));
        if !entry.metadata.is_dir() {
            let job = FileJob {
                entry,
                target,
                parent_fresh,
            };
            if entry.metadata.is_file() && entry.metadata.nlink() > 1 {
                let key = (entry.metadata.dev(), entry.metadata.ino());
                if let Some(&leader) = hardlink_leaders.get(&key) {
                    hardlinks.push((job, leader));
                    continue;
                }
                hardlink_leaders.insert(key, jobs.len());
            }
            jobs.push(job);
            continue;
        }
        let mut existing_target = if parent_fresh {
            None
        } else {
            match std::fs::symlink_metadata(&target) {
                Ok(metadata) => Some(metadata),
                Err(error) if error.kind() == io::ErrorKind::NotFound => None,
                Err(error) => {
                    return Err(FileOpError::io("reading", shown(dest_root, &target), error))
                }
            }
        };
        if context.always_replace
            && existing_target
                .as_ref()
                .is_some_and(|metadata| !metadata.is_dir())
        {
            remove_all(&target)
                .map_err(|error| FileOpError::io("removing", shown(dest_root, &target), error))?;
            existing_target = None;
        }
        let created = match existing_target {
            None => {
                std::fs::create_dir(&target).map_err(|error| {
                    FileOpError::io("creating directory", shown(dest_root, &target), error)
                })?;
                true
            }
            Some(metadata) if !metadata.is_dir() => {
                return Err(FileOpError::NotADirectory {
                    path: shown(dest_root, &target),
                })
            }
            Some(_) => {
                if !is_root {
                    chmod(&target, entry.metadata.mode() & 0o7777).map_err(|error| {
                        FileOpError::io("chmod", shown(dest_root, &target), error)
                    })?;
                }
                false
            }
        };
        if created {
            fresh_dirs.insert(entry.rel.as_path());
        }
        let finish = if entry.selected {
            if is_root && !created {
                DirectoryFinish::Times
            } else {
                DirectoryFinish::Full
            }
        } else if created {
            DirectoryFinish::Full
        } else {
            DirectoryFinish::Nothing
        };
        finishes.push((entry, target, finish));
    }

    // Files, symlinks, special files.
    let run = |job: &FileJob<'_>| create_non_directory(context, selection, dest_root, job);
    if options.sequential {
        jobs.iter().try_for_each(run)?;
    } else {
        jobs.par_iter().try_for_each(run)?;
    }
    // Hardlinks to files copied above.
    for (job, leader) in &hardlinks {
        let leader_target = &jobs[*leader].target;
        clear_target(context, dest_root, job)?;
        std::fs::hard_link(leader_target, &job.target).map_err(|error| {
            FileOpError::io("creating hard link", shown(dest_root, &job.target), error)
        })?;
        apply_metadata(context, selection, job.entry, &job.target).map_err(|error| {
            FileOpError::io("setting metadata of", shown(dest_root, &job.target), error)
        })?;
    }
    // Directory metadata, deepest first.
    for (entry, target, finish) in finishes.iter().rev() {
        let result = match finish {
            DirectoryFinish::Full => apply_metadata(context, selection, entry, target),
            DirectoryFinish::Times => set_entry_times(context, entry, target),
            DirectoryFinish::Nothing => Ok(()),
        };
        result.map_err(|error| {
            FileOpError::io("setting metadata of", shown(dest_root, target), error)
        })?;
    }
    if let Some(time) = context.time {
        for created in created_parents.iter().rev() {
            set_times_nofollow(created, time, time).map_err(|error| {
                FileOpError::io("setting times of", shown(dest_root, created), error)
            })?;
        }
    }
    Ok(())
}

/// Makes room for a non-directory: an existing non-directory is removed; a directory is an
/// error unless replacing is allowed.
fn clear_target(
    context: &CopyContext<'_>,
    dest_root: &Path,
    job: &FileJob<'_>,
) -> Result<(), FileOpError> {
    if job.parent_fresh {
        return Ok(());
    }
    let existing = match std::fs::symlink_metadata(&job.target) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(error) => {
            return Err(FileOpError::io(
                "reading",
                shown(dest_root, &job.target),
                error,
            ))
        }
    };
    if existing.is_dir() && !context.always_replace {
        return Err(FileOpError::CannotReplaceDirectory {
            path: shown(dest_root, &job.target),
        });
    }
    remove_all(&job.target)
        .map_err(|error| FileOpError::io("removing", shown(dest_root, &job.target), error))
}

fn create_non_directory(
    context: &CopyContext<'_>,
    selection: &Selection,
    dest_root: &Path,
    job: &FileJob<'_>,
) -> Result<(), FileOpError> {
    clear_target(context, dest_root, job)?;
    let source_path = selection.entry_path(context.source, job.entry);
    let metadata = &job.entry.metadata;
    let file_type = metadata;
    let shown_target = || shown(dest_root, &job.target);
    if file_type.is_file() {
        return copy_regular_file(context, &source_path, job.entry, &job.target)
            .map_err(|error| FileOpError::io("copying to", shown_target(), error));
    }
    if file_type.is_symlink() {
        let link = std::fs::read_link(&source_path)
            .map_err(|error| FileOpError::io("reading link", source_path.display(), error))?;
        std::os::unix::fs::symlink(&link, &job.target)
            .map_err(|error| FileOpError::io("creating symlink", shown_target(), error))?;
    } else {
        let permissions = Mode::from_raw_mode(metadata.mode() & 0o7777);
        let (kind, device) = if file_type.is_char_device() {
            (FileType::CharacterDevice, metadata.rdev())
        } else if file_type.is_block_device() {
            (FileType::BlockDevice, metadata.rdev())
        } else if file_type.is_fifo() {
            (FileType::Fifo, 0)
        } else {
            // A socket is copied as an empty file, as fsutil does.
            (FileType::RegularFile, 0)
        };
        rustix::fs::mknodat(CWD, &job.target, kind, permissions, device)
            .map_err(|error| FileOpError::io("creating", shown_target(), error.into()))?;
    }
    apply_metadata(context, selection, job.entry, &job.target)
        .map_err(|error| FileOpError::io("setting metadata of", shown_target(), error))
}

/// The mode an entry gets: the source's, or the `--chmod` one.
fn target_mode(context: &CopyContext<'_>, metadata: &Stat) -> u32 {
    let source_mode = metadata.mode() & 0o7777;
    match &context.mode {
        Some(spec) => spec.apply(source_mode, metadata.is_dir()),
        None => source_mode,
    }
}

fn target_owner(context: &CopyContext<'_>, metadata: &Stat) -> Owner {
    context
        .owner
        .unwrap_or_else(|| context.source.effective_owner(metadata))
}

fn entry_times(context: &CopyContext<'_>, metadata: &Stat) -> (Timespec, Timespec) {
    match context.time {
        Some(time) => (time, time),
        None => (
            Timespec {
                tv_sec: metadata.atime(),
                tv_nsec: metadata.atime_nsec() as _,
            },
            Timespec {
                tv_sec: metadata.mtime(),
                tv_nsec: metadata.mtime_nsec() as _,
            },
        ),
    }
}

fn set_entry_times(context: &CopyContext<'_>, entry: &Entry, target: &Path) -> io::Result<()> {
    let (access, modification) = entry_times(context, &entry.metadata);
    set_times_nofollow(target, access, modification)
}

/// fsutil's `copyFileInfo` then `copyXAttrs`, by path (directories, links, special files).
fn apply_metadata(
    context: &CopyContext<'_>,
    selection: &Selection,
    entry: &Entry,
    target: &Path,
) -> io::Result<()> {
    lchown(target, target_owner(context, &entry.metadata))?;
    if !entry.metadata.is_symlink() {
        chmod(target, target_mode(context, &entry.metadata))?;
    }
    set_entry_times(context, entry, target)?;
    copy_xattrs(&selection.entry_path(context.source, entry), target);
    Ok(())
}

/// Copies a regular file's content and metadata through file descriptors.
fn copy_regular_file(
    context: &CopyContext<'_>,
    source_path: &Path,
    entry: &Entry,
    target: &Path,
) -> io::Result<()> {
    let source = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(source_path)?;
    let mode = target_mode(context, &entry.metadata);
    // Created with its final mode when the umask leaves it whole and the later chown cannot
    // clear a set-id bit: one syscall less per file (through the overlay, 20,000 of them in
    // a large COPY). Otherwise created private and chmod'ed after the chown, as fsutil does.
    let direct = mode & 0o7000 == 0 && mode & process_umask() == 0;
    let destination = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if direct { mode } else { 0o600 })
        .custom_flags(libc::O_NOFOLLOW)
        .open(target)?;
    let size = entry.metadata.len();
    if size > 0 {
        copy_content(context, &source, &destination, size)?;
    }
    fchown(&destination, target_owner(context, &entry.metadata))?;
    if !direct {
        rustix::fs::fchmod(&destination, Mode::from_raw_mode(mode))?;
    }
    // xattrs of the source file: listed through its descriptor first (most files have none,
    // and that needs no path lookup), read by path only when there are some.
    let mut listed = [0u8; 256];
    let has_xattrs = !matches!(rustix::fs::flistxattr(&source, &mut listed[..]), Ok(0));
    let attributes = if has_xattrs {
        read_xattrs(source_path)
    } else {
        Ok(Vec::new())
    };
    if let Ok(attributes) = attributes {
        for (name, value) in attributes {
            if let Ok(name) = std::str::from_utf8(&name) {
                let _ignored = rustix::fs::fsetxattr(
                    &destination,
                    name,
                    &value,
                    rustix::fs::XattrFlags::empty(),
                );
            }
        }
    }
    let (access, modification) = entry_times(context, &entry.metadata);
    rustix::fs::futimens(
        &destination,
        &rustix::fs::Timestamps {
            last_access: access,
            last_modification: modification,
        },
    )?;
    Ok(())
}

/// This process's umask, read once from `/proc/self/status` (asking with `umask(2)` would
/// set it, racing with other threads creating files); the most restrictive one if unknown.
fn process_umask() -> u32 {
    static UMASK: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *UMASK.get_or_init(|| {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|status| {
                status.lines().find_map(|line| {
                    let value = line.strip_prefix("Umask:")?;
                    u32::from_str_radix(value.trim(), 8).ok()
                })
            })
            .unwrap_or(0o777)
    })
}

/// Reflink when the filesystem can, else `copy_file_range` (same filesystem only), else
/// `sendfile` (works from the context's filesystem into an overlay, and copies once in the
/// kernel instead of twice through a buffer), else read/write.
fn copy_content(
    context: &CopyContext<'_>,
    source: &File,
    destination: &File,
    size: u64,
) -> io::Result<()> {
    if !context.clone_unsupported.load(Ordering::Relaxed) {
        match rustix::fs::ioctl_ficlone(destination.as_fd(), source.as_fd()) {
            Ok(()) => return Ok(()),
            Err(_) => context.clone_unsupported.store(true, Ordering::Relaxed),
        }
    }
    let mut copied: u64 = 0;
    if !context.range_unsupported.load(Ordering::Relaxed) {
        while copied < size {
            let wanted = (size - copied).min(1 << 30) as usize;
            match rustix::fs::copy_file_range(source, None, destination, None, wanted) {
                Ok(0) => return Ok(()),
                Ok(count) => copied += count as u64,
                Err(error) if copied == 0 => {
                    let _ = error;
                    context.range_unsupported.store(true, Ordering::Relaxed);
                    break;
                }
                Err(error) => return Err(error.into()),
            }
        }
        if copied >= size {
            return Ok(());
        }
    }
    if !context.sendfile_unsupported.load(Ordering::Relaxed) {
        let mut sent: u64 = 0;
        while copied + sent < size {
            let wanted = (size - copied - sent).min(1 << 30) as usize;
            match rustix::fs::sendfile(destination, source, None, wanted) {
                Ok(0) => return Ok(()),
                Ok(count) => sent += count as u64,
                Err(rustix::io::Errno::INTR) => {}
                Err(_) if sent == 0 => {
                    context.sendfile_unsupported.store(true, Ordering::Relaxed);
                    break;
                }
                Err(error) => return Err(error.into()),
            }
        }
        if copied + sent >= size {
            return Ok(());
        }
    }
    let mut buffer = vec![0u8; COPY_BUFFER.min(size as usize).max(1)];
    let mut reader = source;
    let mut writer = destination;
    loop {
        let count = match reader.read(&mut buffer) {
            Ok(0) => return Ok(()),
            Ok(count) => count,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(error),
        };
        writer.write_all(&buffer[..count])?;
    }
}
