//! ADD of a local archive: a tar (plain, gzip, bzip2, xz or zstd, told by its magic bytes as
//! Docker does) is extracted into the destination directory instead of being copied.
//!
//! Extraction follows moby's `chrootarchive.Untar` into the destination directory: the
//! destination acts as the root (every parent path resolves inside it, absolute link targets
//! included), names and link targets that climb out of it are refused, an existing path is
//! replaced (never written through) unless both are directories, owners and modes come from
//! the archive (or `--chown`), `.wh.` names are ordinary files, xattrs are best effort.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rustix::fs::{FileType, Mode, Timespec, CWD};

use super::fsys::{chmod, lchown, mkdir_all, remove_all, set_times_nofollow};
use super::owner::Owner;
use super::root::{join_names, resolve_in_root};
use super::select::{Selection, SourceRoot};
use super::FileOpError;

/// The compression of an archive, told by its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchiveKind {
    Tar,
    Gzip,
    Bzip2,
    Xz,
    Zstd,
}

impl ArchiveKind {
    fn from_magic(prefix: &[u8]) -> ArchiveKind {
        if prefix.starts_with(&[0x42, 0x5a, 0x68]) {
            ArchiveKind::Bzip2
        } else if prefix.starts_with(&[0x1f, 0x8b, 0x08]) {
            ArchiveKind::Gzip
        } else if prefix.starts_with(&[0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]) {
            ArchiveKind::Xz
        } else if prefix.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            ArchiveKind::Zstd
        } else {
            ArchiveKind::Tar
        }
    }
}

fn decompressor<'a>(file: File, kind: ArchiveKind) -> io::Result<Box<dyn Read + 'a>> {
    let buffered = BufReader::with_capacity(256 * 1024, file);
    Ok(match kind {
        ArchiveKind::Tar => Box::new(buffered),
        ArchiveKind::Gzip => Box::new(flate2::read::MultiGzDecoder::new(buffered)),
        ArchiveKind::Bzip2 => Box::new(bzip2::read::MultiBzDecoder::new(buffered)),
        ArchiveKind::Xz => Box::new(liblzma::read::XzDecoder::new_multi_decoder(buffered)),
        ArchiveKind::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(buffered)?),
    })
}

/// Whether the regular file at `path` is an archive ADD unpacks: its (decompressed) start
/// reads as a tar header. Returns its compression when it is.
pub fn detect_archive(path: &Path) -> io::Result<Option<ArchiveKind>> {
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Ok(None);
    }
    let mut prefix = [0u8; 8];
    let mut filled = 0;
    while filled < prefix.len() {
        match file.read(&mut prefix[filled..])? {
            0 => break,
            count => filled += count,
        }
    }
    let kind = ArchiveKind::from_magic(&prefix[..filled]);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    let Ok(reader) = decompressor(file, kind) else {
        return Ok(None);
    };
    let mut archive = tar::Archive::new(reader);
    let Ok(mut entries) = archive.entries() else {
        return Ok(None);
    };
    Ok(match entries.next() {
        Some(Ok(_)) => Some(kind),
        _ => None,
    })
}

/// Unpacks the selection's source when it is an archive; `false` when it is not one (the
/// caller copies it instead).
pub(crate) fn try_unpack(
    source: &SourceRoot,
    selection: &Selection,
    dest_root: &Path,
    dest_clean: &str,
    owner: Option<Owner>,
    time: Option<Timespec>,
) -> Result<bool, FileOpError> {
    let Some(entry) = selection.first() else {
        return Ok(false);
    };
    if !entry.metadata.is_file() {
        return Ok(false);
    }
    let archive_path = selection.entry_path(source, entry);
    let kind = match detect_archive(&archive_path) {
        Ok(Some(kind)) => kind,
        _ => return Ok(false),
    };
    let resolved = resolve_in_root(dest_root, dest_clean.as_bytes(), true)
        .map_err(|error| FileOpError::from_resolve(error, dest_clean))?;
    let dest_dir = dest_root.join(resolved);
    mkdir_all(&dest_dir, 0o755, owner, time)?;
    let file = File::open(&archive_path)
        .map_err(|error| FileOpError::io("opening", &selection.source_path, error))?;
    let reader = decompressor(file, kind)
        .map_err(|error| FileOpError::io("decompressing", &selection.source_path, error))?;
    extract(reader, &dest_dir, owner).map_err(|reason| FileOpError::Archive {
        path: selection.source_path.clone(),
        reason,
    })?;
    Ok(true)
}

/// A name from the archive, cleaned relative to the extraction root; `None` when it climbs
/// out of it.
fn clean_entry_name(name: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut names: Vec<Vec<u8>> = Vec::new();
    for part in name.split(|&byte| byte == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                names.pop()?;
            }
            other => names.push(other.to_vec()),
        }
    }
    Some(names)
}

/// Extracts a tar stream into `root` (an existing directory). Errors are messages.
pub(crate) fn extract(reader: impl Read, root: &Path, owner: Option<Owner>) -> Result<(), String> {
    let mut archive = tar::Archive::new(reader);
    let mut directories: Vec<(PathBuf, Timespec)> = Vec::new();
    let entries = archive.entries().map_err(|error| error.to_string())?;
    for entry in entries {
        let mut entry = entry.map_err(|error| format!("reading the archive: {error}"))?;
        let raw_name = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw_name).into_owned();
        let names = clean_entry_name(&raw_name)
            .ok_or_else(|| format!("{shown:?}: path escapes the destination"))?;
        let Some((last, parents)) = names.split_last() else {
            // The root itself ("./"): nothing to create.
            continue;
        };
        let header = entry.header().clone();
        let entry_type = header.entry_type();
        // The parent, resolved inside the root (links followed, as inside a chroot).
        let parent_relative = resolve_in_root(root, &join_bytes(parents), true)
            .map_err(|_| format!("{shown:?}: cannot resolve its directory"))?;
        let parent = root.join(parent_relative);
        mkdir_all(&parent, 0o755, None, None).map_err(|error| format!("{shown:?}: {error}"))?;
        let target = parent.join(std::ffi::OsStr::from_bytes(last));
        if let Ok(existing) = std::fs::symlink_metadata(&target) {
            if !(existing.is_dir() && entry_type.is_dir()) {
                remove_all(&target).map_err(|error| format!("{shown:?}: {error}"))?;
            }
        }
        let mode = header
            .mode()
            .map_err(|error| format!("{shown:?}: {error}"))?
            & 0o7777;
        let io_error = |error: io::Error| format!("{shown:?}: {error}");
        match entry_type {
            tar::EntryType::Directory => {
                if std::fs::symlink_metadata(&target).is_err() {
                    std::fs::create_dir(&target).map_err(io_error)?;
                }
            }
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&target)
                    .map_err(io_error)?;
                io::copy(&mut entry, &mut file).map_err(io_error)?;
            }
            tar::EntryType::Symlink => {
                let link = entry
                    .link_name_bytes()
                    .ok_or_else(|| format!("{shown:?}: symlink without target"))?
                    .into_owned();
                if !link.starts_with(b"/") {
                    let mut joined = join_bytes(parents);
                    joined.push(b'/');
                    joined.extend_from_slice(&link);
                    if clean_entry_name(&joined).is_none() {
                        return Err(format!("{shown:?}: symlink target escapes the destination"));
                    }
                }
                std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(&link), &target)
                    .map_err(io_error)?;
            }
            tar::EntryType::Link => {
                let link = entry
                    .link_name_bytes()
                    .ok_or_else(|| format!("{shown:?}: hardlink without target"))?
                    .into_owned();
                let link_names = clean_entry_name(&link)
                    .ok_or_else(|| format!("{shown:?}: hardlink target escapes the destination"))?;
                let link_relative = resolve_in_root(root, &join_bytes(&link_names), false)
                    .map_err(|_| format!("{shown:?}: cannot resolve hardlink target"))?;
                let link_target = root.join(link_relative);
                std::fs::hard_link(&link_target, &target).map_err(io_error)?;
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                let kind = match entry_type {
                    tar::EntryType::Char => FileType::CharacterDevice,
                    tar::EntryType::Block => FileType::BlockDevice,
                    _ => FileType::Fifo,
                };
                let major = header.device_major().ok().flatten().unwrap_or(0);
                let minor = header.device_minor().ok().flatten().unwrap_or(0);
                rustix::fs::mknodat(
                    CWD,
                    &target,
                    kind,
                    Mode::from_raw_mode(mode),
                    rustix::fs::makedev(major, minor),
                )
                .map_err(|error| io_error(error.into()))?;
            }
            other => return Err(format!("{shown:?}: unhandled tar entry type {other:?}")),
        }
        let entry_owner = owner.unwrap_or(Owner {
            uid: header.uid().unwrap_or(0) as u32,
            gid: header.gid().unwrap_or(0) as u32,
        });
        lchown(&target, entry_owner).map_err(io_error)?;
        if entry_type != tar::EntryType::Symlink && entry_type != tar::EntryType::Link {
            chmod(&target, mode).map_err(io_error)?;
        }
        if let Ok(Some(extensions)) = entry.pax_extensions() {
            for extension in extensions.flatten() {
                if let Some(name) = extension
                    .key()
                    .ok()
                    .and_then(|key| key.strip_prefix("SCHILY.xattr."))
                {
                    let _ignored = rustix::fs::lsetxattr(
                        &target,
                        name,
                        extension.value_bytes(),
                        rustix::fs::XattrFlags::empty(),
                    );
                }
            }
        }
        let mtime = Timespec {
            tv_sec: header.mtime().unwrap_or(0) as i64,
            tv_nsec: 0,
        };
        if entry_type.is_dir() {
            directories.push((target, mtime));
        } else if entry_type != tar::EntryType::Link {
            set_times_nofollow(&target, mtime, mtime).map_err(io_error)?;
        }
    }
    for (directory, mtime) in directories.iter().rev() {
        set_times_nofollow(directory, *mtime, *mtime)
            .map_err(|error| format!("{}: {error}", directory.display()))?;
    }
    Ok(())
}

fn join_bytes(names: &[Vec<u8>]) -> Vec<u8> {
    join_names(names).as_os_str().as_bytes().to_vec()
}
