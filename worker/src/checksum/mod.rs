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
use std::os::unix::fs::OpenOptionsExt;
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
    let all: Vec<&Selection> = plans
        .iter()
        .flat_map(|(selections, _)| selections.iter())
        .collect();
    let hashes = hash_entries(source, &all, cache)?;
    let mut stream = RecordStream::new(b"kiln copy sources v2\0");
    let mut selection_hashes = hashes.iter();
    for (action_index, (selections, contents_only)) in plans.iter().enumerate() {
        put_bytes(
            &mut stream.buffer,
            format!("action {action_index}").as_bytes(),
        );
        for selection in selections {
            put_bytes(&mut stream.buffer, selection.source_path.as_bytes());
            let Some(segment_hashes) = selection_hashes.next() else {
                break;
            };
            for (entry_index, (entry, entry_hashes)) in selection
                .entries()
                .zip(segment_hashes.iter().flatten())
                .enumerate()
            {
                // The metadata of a directory whose contents only are copied is not copied.
                if entry_index == 0 && *contents_only && entry.metadata.is_dir() {
                    continue;
                }
                let record_start = stream.buffer.len();
                put_entry(&mut stream.buffer, source, entry, entry_hashes);
                if list {
                    let mut own = blake3::Hasher::new();
                    own.update(&stream.buffer[record_start..]);
                    let path = selection.entry_root_relative(entry);
                    listing.push((path.to_string_lossy().into_owned(), finish(own)));
                }
                stream.flush_if_full();
            }
        }
    }
    Ok((stream.finish(), listing))
}

/// A record stream being hashed: records are written into a buffer that is hashed in large
/// pieces (blake3 hashes a large input several chunks at a time with SIMD; ten small updates
/// per record went a block at a time).
struct RecordStream {
    hasher: blake3::Hasher,
    buffer: Vec<u8>,
}

impl RecordStream {
    const FLUSH_AT: usize = 64 * 1024;

    fn new(tag: &[u8]) -> RecordStream {
        let mut buffer = Vec::with_capacity(Self::FLUSH_AT + 4096);
        buffer.extend_from_slice(tag);
        RecordStream {
            hasher: blake3::Hasher::new(),
            buffer,
        }
    }

    fn flush_if_full(&mut self) {
        if self.buffer.len() >= Self::FLUSH_AT {
            self.hasher.update(&self.buffer);
            self.buffer.clear();
        }
    }

    fn finish(mut self) -> Digest {
        self.hasher.update(&self.buffer);
        finish(self.hasher)
    }
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
    let hashes = hash_entries(source, &[&selection], cache)?;
    let mut stream = RecordStream::new(b"kiln path v2\0");
    for (entry, entry_hashes) in selection.entries().zip(hashes.iter().flatten().flatten()) {
        put_entry(&mut stream.buffer, source, entry, entry_hashes);
        stream.flush_if_full();
    }
    Ok(stream.finish())
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// Appends an entry's record: its path, type, mode, owner, size, device and hashes.
fn put_entry(out: &mut Vec<u8>, source: &SourceRoot, entry: &Entry, hashes: &Hashes) {
    let metadata = &entry.metadata;
    let kind: u8 = if metadata.is_dir() {
        b'd'
    } else if metadata.is_file() {
        b'f'
    } else if metadata.is_symlink() {
        b'l'
    } else if metadata.is_char_device() {
        b'c'
    } else if metadata.is_block_device() {
        b'b'
    } else if metadata.is_fifo() {
        b'p'
    } else {
        b's'
    };
    let owner = source.effective_owner(metadata);
    put_bytes(out, entry.rel.as_os_str().as_bytes());
    out.extend_from_slice(&[kind, u8::from(entry.selected)]);
    out.extend_from_slice(&(metadata.mode() & 0o7777).to_le_bytes());
    out.extend_from_slice(&owner.uid.to_le_bytes());
    out.extend_from_slice(&owner.gid.to_le_bytes());
    let size = if metadata.is_file() {
        metadata.len()
    } else {
        0
    };
    out.extend_from_slice(&size.to_le_bytes());
    let device = if metadata.is_char_device() || metadata.is_block_device() {
        metadata.rdev()
    } else {
        0
    };
    out.extend_from_slice(&device.to_le_bytes());
    out.extend_from_slice(&hashes.content);
    out.extend_from_slice(&hashes.xattrs);
}

/// The hashes of every entry of the selections, in the selections' shape (per selection, per
/// segment, per entry): from the cache when the `lstat` matches, otherwise read.
///
/// Lookups run per segment in parallel under one read lock, each key written into a buffer
/// of its thread (no path is allocated for a file the cache knows); the files the cache does
/// not know are then read in parallel, each path once even when several selections take it.
fn hash_entries(
    source: &SourceRoot,
    selections: &[&Selection],
    cache: &ChecksumCache,
) -> Result<Vec<Vec<Vec<Hashes>>>, ChecksumError> {
    const UNKNOWN: Hashes = Hashes {
        content: [0; 32],
        xattrs: [0; 32],
    };
    let units: Vec<(usize, usize)> = selections
        .iter()
        .enumerate()
        .flat_map(|(selection_index, selection)| {
            (0..selection.segments().len()).map(move |segment| (selection_index, segment))
        })
        .collect();
    let started = now_nanos();
    let reader = cache.reader();
    // per unit: its hashes (UNKNOWN where missed) and the indexes it missed
    let looked: Vec<(Vec<Hashes>, Vec<usize>)> = units
        .par_iter()
        .map_init(Vec::new, |key, &(selection_index, segment)| {
            let selection = selections[selection_index];
            let entries = &selection.segments()[segment];
            let mut missed = Vec::new();
            let hashes = entries
                .iter()
                .enumerate()
                .map(|(index, entry)| {
                    selection.write_root_relative(entry, key);
                    reader
                        .get(key, &StatKey::of(&entry.metadata))
                        .unwrap_or_else(|| {
                            missed.push(index);
                            UNKNOWN
                        })
                })
                .collect();
            (hashes, missed)
        })
        .collect();
    drop(reader);
    let mut per_unit: Vec<Vec<Hashes>> = Vec::with_capacity(looked.len());
    // (unit, index in its segment) of each missed entry
    let mut missed: Vec<(usize, usize)> = Vec::new();
    for (unit, (hashes, unit_missed)) in looked.into_iter().enumerate() {
        missed.extend(unit_missed.into_iter().map(|index| (unit, index)));
        per_unit.push(hashes);
    }
    if !missed.is_empty() {
        let entry_of = |(unit, index): (usize, usize)| {
            let (selection_index, segment) = units[unit];
            let selection = selections[selection_index];
            (selection, &selection.segments()[segment][index])
        };
        let key_of = |place: (usize, usize)| {
            let (selection, entry) = entry_of(place);
            let mut key = Vec::new();
            selection.write_root_relative(entry, &mut key);
            key
        };
        // Each path once, even when several copies take it (one selection never has a path
        // twice: no map needed for one).
        let keys: Vec<Vec<u8>> = missed.iter().map(|&place| key_of(place)).collect();
        let (unique, slot_of): (Vec<usize>, Vec<usize>) = if selections.len() > 1 {
            let mut first_of_key: std::collections::HashMap<&[u8], usize> =
                std::collections::HashMap::with_capacity(keys.len());
            let mut unique = Vec::new();
            let slot_of = keys
                .iter()
                .enumerate()
                .map(|(index, key)| {
                    *first_of_key.entry(key.as_slice()).or_insert_with(|| {
                        unique.push(index);
                        unique.len() - 1
                    })
                })
                .collect();
            (unique, slot_of)
        } else {
            ((0..missed.len()).collect(), (0..missed.len()).collect())
        };
        let computed: Vec<Result<Hashes, ChecksumError>> = unique
            .par_iter()
            .map(|&index| {
                let (selection, entry) = entry_of(missed[index]);
                let path = selection.entry_path(source, entry);
                hash_one(&path, entry, cache).map_err(|source| ChecksumError::Read {
                    path: path.clone(),
                    source,
                })
            })
            .collect();
        let computed: Vec<Hashes> = computed.into_iter().collect::<Result<_, _>>()?;
        for (&(unit, index), &slot) in missed.iter().zip(&slot_of) {
            per_unit[unit][index] = computed[slot];
        }
        let fresh = unique.iter().zip(&computed).map(|(&index, hashes)| {
            let (_, entry) = entry_of(missed[index]);
            (keys[index].clone(), StatKey::of(&entry.metadata), *hashes)
        });
        cache.insert_many(fresh, started);
    }
    // back into the selections' shape
    let mut per_unit = per_unit.into_iter();
    Ok(selections
        .iter()
        .map(|selection| per_unit.by_ref().take(selection.segments().len()).collect())
        .collect())
}

/// Reads and hashes one entry's content (or link target) and xattrs.
fn hash_one(path: &std::path::Path, entry: &Entry, cache: &ChecksumCache) -> io::Result<Hashes> {
    let file_type = entry.metadata;
    let mut content = [0u8; 32];
    if file_type.is_file() {
        cache.count_read();
        content = hash_file(path, entry.metadata.len())?;
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
