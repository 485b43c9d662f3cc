//! Content checksums for cache keys: a digest over exactly the files a COPY/ADD takes from a
//! source (or a bind mount exposes), so editing an unrelated file, or only touching one,
//! changes nothing.
//!
//! The selection is the copy's own ([`crate::fileops`]'s source resolution, wildcards,
//! include/exclude patterns and `.dockerignore` filter), so the checksum cannot disagree with
//! what is copied. Each taken entry contributes its path relative to the match, its type,
//! mode (permission and special bits), uid and gid (as copied: 0:0 for the build context),
//! size, device number, symlink target, xattrs (without `security.selinux`, a host label) and
//! the blake3 of its content; entries come in walk order (parents before children, names
//! sorted). mtimes never count. That canonical, length-prefixed record stream is hashed with
//! blake3 (a warm rebuild hashes only records, ~100 bytes per file, and sha256 is several
//! times slower); the result is the sha256 of a version tag and that blake3 hash, as a
//! [`Digest`].
//!
//! Contents are hashed in parallel on rayon's pool, through a [`ChecksumCache`] that skips
//! files whose `lstat` did not change.

mod cache;

use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::PathBuf;

use kiln_frontend::dag::op::CopyAction;
use kiln_types::Digest;
use kiln_types::Sha256;
use rayon::prelude::*;

pub use cache::{ChecksumCache, RACY_WINDOW_NANOS};

use crate::fileops::select::{select_copy, select_path_only, Entry, Selection};
use crate::fileops::{FileOpError, SourceRoot};
use cache::{now_nanos, Hashes, StatKey};

/// Read buffer for files above 64 KiB.
const LARGE_BUFFER: usize = 1 << 20;

/// Why a checksum could not be computed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChecksumError {
    /// The selection failed (a missing source path, a bad pattern...).
    #[error("selecting the files")]
    Select(#[from] FileOpError),
    /// A selected file could not be read.
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The cache file could not be written.
    #[error("writing the checksum cache {path}")]
    CacheFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A context key that is not a plain file name.
    #[error("invalid checksum cache key {key:?}")]
    InvalidContextKey { key: String },
    /// A thread panicked while holding the cache.
    #[error("the checksum cache lock is poisoned")]
    Poisoned,
}

/// The checksum of what the copy actions take from `source` (all actions of one file op that
/// read this input, in order).
pub fn checksum_copy_sources<'a>(
    source: &SourceRoot,
    actions: impl IntoIterator<Item = &'a CopyAction>,
    cache: &ChecksumCache,
) -> Result<Digest, ChecksumError> {
    Ok(checksum_copy_sources_listed(source, actions, cache, false)?.0)
}

/// One selected entry and the digest of everything the checksum took from it: what
/// `--explain-cache` compares to name the files that changed.
pub type ListedEntry = (String, Digest);

/// [`checksum_copy_sources`], and with `list` also every selected entry's own digest.
pub fn checksum_copy_sources_listed<'a>(
    source: &SourceRoot,
    actions: impl IntoIterator<Item = &'a CopyAction>,
    cache: &ChecksumCache,
    list: bool,
) -> Result<(Digest, Vec<ListedEntry>), ChecksumError> {
    let mut listing = Vec::new();
    let mut plans: Vec<(Vec<Selection>, bool)> = Vec::new();
    for action in actions {
        plans.push((select_copy(source, action)?, action.dir_contents_only));
    }
    let all: Vec<(&Selection, bool)> = plans
        .iter()
        .flat_map(|(selections, contents_only)| {
            selections
                .iter()
                .map(move |selection| (selection, *contents_only))
        })
        .collect();
    let hashes = hash_entries(source, all.iter().map(|(selection, _)| *selection), cache)?;
    let mut digest = blake3::Hasher::new();
    digest.update(b"kiln copy sources v2\0");
    let mut hash_index = 0;
    for (action_index, (selections, contents_only)) in plans.iter().enumerate() {
        put_bytes(&mut digest, format!("action {action_index}").as_bytes());
        for selection in selections {
            put_bytes(&mut digest, selection.source_path.as_bytes());
            for (entry_index, entry) in selection.entries.iter().enumerate() {
                let entry_hashes = &hashes[hash_index];
                hash_index += 1;
                // The metadata of a directory whose contents only are copied is not copied.
                if entry_index == 0 && *contents_only && entry.metadata.is_dir() {
                    continue;
                }
                put_entry(&mut digest, source, entry, entry_hashes);
                if list {
                    let mut own = blake3::Hasher::new();
                    put_entry(&mut own, source, entry, entry_hashes);
                    let path = selection.entry_root_relative(entry);
                    listing.push((path.to_string_lossy().into_owned(), finish(own)));
                }
            }
        }
    }
    Ok((finish(digest), listing))
}

/// The [`Digest`] of a record stream: sha256 over a tag and the stream's blake3.
fn finish(records: blake3::Hasher) -> Digest {
    let mut digest = Sha256::new();
    digest.update(b"kiln blake3 records\0");
    digest.update(records.finalize().as_bytes());
    Digest::from_sha256(digest.finalize())
}

/// The checksum of `path` inside `source` and everything below it (a bind mount's
/// `source=`), links on the way (the final one too when `follow_symlinks`) followed inside the
/// root.
pub fn checksum_path(
    source: &SourceRoot,
    path: &str,
    follow_symlinks: bool,
    cache: &ChecksumCache,
) -> Result<Digest, ChecksumError> {
    let selection = select_path_only(source, path, follow_symlinks)?;
    let hashes = hash_entries(source, std::iter::once(&selection), cache)?;
    let mut digest = blake3::Hasher::new();
    digest.update(b"kiln path v2\0");
    for (entry, entry_hashes) in selection.entries.iter().zip(&hashes) {
        put_entry(&mut digest, source, entry, entry_hashes);
    }
    Ok(finish(digest))
}

fn put_bytes(digest: &mut blake3::Hasher, bytes: &[u8]) {
    digest.update(&(bytes.len() as u64).to_le_bytes());
    digest.update(bytes);
}

fn put_entry(digest: &mut blake3::Hasher, source: &SourceRoot, entry: &Entry, hashes: &Hashes) {
    let metadata = &entry.metadata;
    let file_type = metadata.file_type();
    let kind: u8 = if file_type.is_dir() {
        b'd'
    } else if file_type.is_file() {
        b'f'
    } else if file_type.is_symlink() {
        b'l'
    } else if file_type.is_char_device() {
        b'c'
    } else if file_type.is_block_device() {
        b'b'
    } else if file_type.is_fifo() {
        b'p'
    } else {
        b's'
    };
    let owner = source.effective_owner(metadata);
    put_bytes(digest, entry.rel.as_os_str().as_bytes());
    digest.update(&[kind, u8::from(entry.selected)]);
    digest.update(&(metadata.mode() & 0o7777).to_le_bytes());
    digest.update(&owner.uid.to_le_bytes());
    digest.update(&owner.gid.to_le_bytes());
    let size = if file_type.is_file() {
        metadata.size()
    } else {
        0
    };
    digest.update(&size.to_le_bytes());
    let device = if file_type.is_char_device() || file_type.is_block_device() {
        metadata.rdev()
    } else {
        0
    };
    digest.update(&device.to_le_bytes());
    digest.update(&hashes.content);
    digest.update(&hashes.xattrs);
}

/// The hashes of every entry of the selections, in order: from the cache when the `lstat`
/// matches, otherwise read (in parallel).
fn hash_entries<'a>(
    source: &SourceRoot,
    selections: impl Iterator<Item = &'a Selection>,
    cache: &ChecksumCache,
) -> Result<Vec<Hashes>, ChecksumError> {
    struct Work<'b> {
        key: Vec<u8>,
        selection: &'b Selection,
        entry: &'b Entry,
        stat: StatKey,
    }
    let selections: Vec<&Selection> = selections.collect();
    let mut work: Vec<Work<'_>> = Vec::new();
    for selection in &selections {
        for entry in &selection.entries {
            work.push(Work {
                key: selection
                    .entry_root_relative(entry)
                    .as_os_str()
                    .as_bytes()
                    .to_vec(),
                selection,
                entry,
                stat: StatKey::of(&entry.metadata),
            });
        }
    }
    // Each path once, even when several copies take it (one selection never has a path
    // twice: no map needed).
    let (unique, slot_of): (Vec<usize>, Option<Vec<usize>>) = if selections.len() > 1 {
        let mut first_of_key: std::collections::HashMap<&[u8], usize> =
            std::collections::HashMap::with_capacity(work.len());
        let mut unique: Vec<usize> = Vec::with_capacity(work.len());
        let slot_of: Vec<usize> = work
            .iter()
            .enumerate()
            .map(|(index, item)| {
                *first_of_key.entry(item.key.as_slice()).or_insert_with(|| {
                    unique.push(index);
                    unique.len() - 1
                })
            })
            .collect();
        (unique, Some(slot_of))
    } else {
        ((0..work.len()).collect(), None)
    };
    let started = now_nanos();
    // Cache lookups in chunks, each under one read lock of the cache.
    let known: Vec<Option<Hashes>> = unique
        .par_chunks(1024)
        .flat_map_iter(|chunk| {
            cache.lookup_many(
                chunk
                    .iter()
                    .map(|&index| (&work[index].key[..], &work[index].stat)),
            )
        })
        .collect();
    let results: Vec<Result<(Hashes, bool), ChecksumError>> = unique
        .par_iter()
        .zip(known)
        .map(|(&index, known)| {
            if let Some(hashes) = known {
                return Ok((hashes, false));
            }
            let item = &work[index];
            // the path is only built for a file that is read
            let path = item.selection.entry_path(source, item.entry);
            let hashes =
                hash_one(&path, item.entry, cache).map_err(|source| ChecksumError::Read {
                    path: path.clone(),
                    source,
                })?;
            Ok((hashes, true))
        })
        .collect();
    let mut unique_hashes = Vec::with_capacity(results.len());
    let mut fresh = Vec::new();
    for (&index, result) in unique.iter().zip(results) {
        let (entry_hashes, computed) = result?;
        if computed {
            let item = &work[index];
            fresh.push((item.key.clone(), item.stat, entry_hashes));
        }
        unique_hashes.push(entry_hashes);
    }
    let hashes: Vec<Hashes> = match slot_of {
        Some(slot_of) => slot_of.iter().map(|&slot| unique_hashes[slot]).collect(),
        None => unique_hashes,
    };
    if !fresh.is_empty() {
        cache.insert_many(fresh, started);
    }
    Ok(hashes)
}

/// Reads and hashes one entry's content (or link target) and xattrs.
fn hash_one(path: &std::path::Path, entry: &Entry, cache: &ChecksumCache) -> io::Result<Hashes> {
    let file_type = entry.metadata.file_type();
    let mut content = [0u8; 32];
    if file_type.is_file() {
        cache.count_read();
        content = hash_file(path, entry.metadata.size())?;
    } else if file_type.is_symlink() {
        cache.count_read();
        let target = std::fs::read_link(path)?;
        content = *blake3::hash(target.as_os_str().as_bytes()).as_bytes();
    }
    let mut xattrs = [0u8; 32];
    let attributes = read_xattrs_for_checksum(path)?;
    if !attributes.is_empty() {
        let mut hasher = blake3::Hasher::new();
        for (name, value) in &attributes {
            hasher.update(&(name.len() as u64).to_le_bytes());
            hasher.update(name);
            hasher.update(&(value.len() as u64).to_le_bytes());
            hasher.update(value);
        }
        xattrs = *hasher.finalize().as_bytes();
    }
    Ok(Hashes { content, xattrs })
}

fn read_xattrs_for_checksum(path: &std::path::Path) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut attributes = crate::fileops::read_xattrs_of(path)?;
    attributes.retain(|(name, _)| name.as_slice() != b"security.selinux");
    Ok(attributes)
}

fn hash_file(path: &std::path::Path, size: u64) -> io::Result<[u8; 32]> {
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    let mut hasher = blake3::Hasher::new();
    let mut small = [0u8; 64 * 1024];
    let mut large = Vec::new();
    let buffer: &mut [u8] = if size > small.len() as u64 {
        large.resize(LARGE_BUFFER, 0);
        &mut large
    } else {
        &mut small
    };
    loop {
        match file.read(buffer) {
            Ok(0) => break,
            Ok(count) => {
                hasher.update(&buffer[..count]);
            }
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(*hasher.finalize().as_bytes())
}
