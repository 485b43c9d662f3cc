//! The stat cache of content checksums: (path relative to the source root) -> (what `lstat`
//! said when the file was hashed, the hashes). A file whose size, mtime, ctime, inode, device,
//! mode, uid and gid are unchanged is not read again; any write, chmod, chown, xattr change or
//! rename changes at least the ctime.
//!
//! One cache serves as the in-memory memo of a build (two COPYs from one source hash each file
//! once) and, for a build context, is saved between builds ([`ChecksumCache::save`], written
//! atomically: temp file, fsync, rename, fsync of the directory). A saved file that cannot be
//! read (torn, another version) is ignored: everything is hashed again.
//!
//! A file changed within the timestamp granularity of its hashing could keep the same stat
//! ("racy" entries, as git calls them): entries whose mtime or ctime is within
//! [`RACY_WINDOW_NANOS`] of the moment they were hashed are used for the rest of the build
//! but never saved.

use std::collections::HashMap;
use std::hash::BuildHasher;

/// Paths are hashed with foldhash: SipHash was a noticeable part of a warm rebuild's lookups.
type RecordMap = HashMap<Vec<u8>, Record, foldhash::fast::RandomState>;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};

use super::ChecksumError;

/// Entries hashed less than this after their last change are not saved (coarse kernel clocks
/// tick every 1 to 10 ms).
pub const RACY_WINDOW_NANOS: i128 = 100_000_000;

const MAGIC: &[u8; 8] = b"KILNCSUM";
const VERSION: u32 = 1;
/// A larger file is not a cache this code wrote.
const MAX_CACHE_FILE: u64 = 1 << 31;

/// What `lstat` said about a file when it was hashed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StatKey {
    pub size: u64,
    pub mtime_nanos: i128,
    pub ctime_nanos: i128,
    pub inode: u64,
    pub device: u64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

impl StatKey {
    pub(crate) fn of(metadata: &crate::fileops::stat::Stat) -> StatKey {
        StatKey {
            size: metadata.len(),
            mtime_nanos: i128::from(metadata.mtime()) * 1_000_000_000
                + i128::from(metadata.mtime_nsec()),
            ctime_nanos: i128::from(metadata.ctime()) * 1_000_000_000
                + i128::from(metadata.ctime_nsec()),
            inode: metadata.ino(),
            device: metadata.dev(),
            mode: metadata.mode(),
            uid: metadata.uid(),
            gid: metadata.gid(),
        }
    }
}

/// The hashes of one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Hashes {
    /// blake3 of the content (regular files) or of the link target (symlinks); zero otherwise.
    pub content: [u8; 32],
    /// blake3 of the sorted xattrs (zero when there are none).
    pub xattrs: [u8; 32],
}

#[derive(Debug, Clone, Copy)]
struct Record {
    stat: StatKey,
    hashes: Hashes,
    /// Changed too close to its hashing to be trusted after this process.
    racy: bool,
}

/// Bytes of a saved record after its key: size, mtime, ctime, inode, device, mode, uid, gid,
/// content hash, xattrs hash.
const RECORD_TAIL: usize = 8 + 16 + 16 + 8 + 8 + 4 + 4 + 4 + 32 + 32;

/// The records of a cache: those of the saved file, looked up in place in the file's bytes
/// (a 20,000-file context's file is 3 MB; decoding it into a map of owned keys was 20,000
/// allocations, and as many frees), and those added by this process.
#[derive(Debug, Default)]
struct Records {
    /// The saved file, verified; records are read from it where they lie.
    saved: Vec<u8>,
    /// Offsets in `saved` of the records (each key once, the last one saved wins), by key.
    index: hashbrown::HashTable<u32>,
    hasher: foldhash::fast::RandomState,
    /// Records hashed by this process (they replace saved ones with the same key).
    added: RecordMap,
}

impl Records {
    /// The key of the saved record at `offset` (checked when decoded).
    fn saved_key(&self, offset: u32) -> &[u8] {
        saved_key_in(&self.saved, offset)
    }

    /// The whole saved record at `offset`, key length included.
    fn saved_record(&self, offset: u32) -> &[u8] {
        let key = self.saved_key(offset).len();
        &self.saved[offset as usize..offset as usize + 4 + key + RECORD_TAIL]
    }

    /// The stat and hashes of the saved record at `offset`.
    fn saved_value(&self, offset: u32) -> (StatKey, Hashes) {
        let key = self.saved_key(offset).len();
        let start = offset as usize + 4 + key;
        let mut cursor = Cursor {
            bytes: &self.saved[start..start + RECORD_TAIL],
        };
        // the record's RECORD_TAIL bytes were checked when decoded: every take succeeds
        let size = u64::from_le_bytes(cursor.array().unwrap_or_default());
        let mtime_nanos = i128::from_le_bytes(cursor.array().unwrap_or_default());
        let ctime_nanos = i128::from_le_bytes(cursor.array().unwrap_or_default());
        let inode = u64::from_le_bytes(cursor.array().unwrap_or_default());
        let device = u64::from_le_bytes(cursor.array().unwrap_or_default());
        let mode = u32::from_le_bytes(cursor.array().unwrap_or_default());
        let uid = u32::from_le_bytes(cursor.array().unwrap_or_default());
        let gid = u32::from_le_bytes(cursor.array().unwrap_or_default());
        let content = cursor.array().unwrap_or_default();
        let xattrs = cursor.array().unwrap_or_default();
        (
            StatKey {
                size,
                mtime_nanos,
                ctime_nanos,
                inode,
                device,
                mode,
                uid,
                gid,
            },
            Hashes { content, xattrs },
        )
    }

    fn find_saved(&self, key: &[u8]) -> Option<u32> {
        let hash = self.hasher.hash_one(key);
        self.index
            .find(hash, |&offset| self.saved_key(offset) == key)
            .copied()
    }

    /// The hashes recorded for `key` if its stat still matches.
    fn get(&self, key: &[u8], stat: &StatKey) -> Option<Hashes> {
        if !self.added.is_empty() {
            if let Some(record) = self.added.get(key) {
                return (record.stat == *stat).then_some(record.hashes);
            }
        }
        let (saved_stat, hashes) = self.saved_value(self.find_saved(key)?);
        (saved_stat == *stat).then_some(hashes)
    }

    fn len(&self) -> usize {
        let replaced = self
            .added
            .keys()
            .filter(|key| self.find_saved(key).is_some())
            .count();
        self.index.len() + self.added.len() - replaced
    }
}

/// The key of the record at `offset` of a saved file (bounds checked when it was decoded).
fn saved_key_in(saved: &[u8], offset: u32) -> &[u8] {
    let offset = offset as usize;
    let mut length = [0u8; 4];
    length.copy_from_slice(&saved[offset..offset + 4]);
    &saved[offset + 4..offset + 4 + u32::from_le_bytes(length) as usize]
}

/// Read access to a cache for a batch of lookups (one lock for all of them; shared by the
/// threads of a parallel lookup).
pub(crate) struct CacheReader<'a> {
    records: Option<std::sync::RwLockReadGuard<'a, Records>>,
}

impl CacheReader<'_> {
    /// The hashes of the file at `key` (relative to the source root) if its `lstat` still
    /// matches the one it was hashed with.
    pub(crate) fn get(&self, key: &[u8], stat: &StatKey) -> Option<Hashes> {
        self.records.as_ref()?.get(key, stat)
    }
}

/// Content hashes of files, keyed by path and validated by `lstat`.
#[derive(Debug, Default)]
pub struct ChecksumCache {
    file: Option<PathBuf>,
    records: RwLock<Records>,
    /// The saved file being read and decoded on a thread of its own (a 20,000-file context's
    /// is 3 MB, several ms), joined at first use: meanwhile the build opens the store,
    /// resolves its base images and lists the context.
    loading: Mutex<Option<std::thread::JoinHandle<Records>>>,
    dirty: AtomicBool,
    files_read: AtomicU64,
}

/// Maps at least this large are freed on a thread of their own when the cache is dropped:
/// freeing 20,000 keys one by one is ~2 ms at the end of every build.
const FREE_IN_BACKGROUND: usize = 4096;

impl Drop for ChecksumCache {
    fn drop(&mut self) {
        let records = match self.records.get_mut() {
            Ok(records) => std::mem::take(&mut records.added),
            Err(_) => return,
        };
        if records.len() >= FREE_IN_BACKGROUND {
            // if no thread can be had, the map is freed here after all
            let _ = std::thread::Builder::new()
                .name("kiln-free".into())
                .spawn(move || drop(records));
        }
    }
}

impl ChecksumCache {
    /// A cache kept in memory only (a stage or image snapshot, or tests).
    pub fn in_memory() -> ChecksumCache {
        ChecksumCache::default()
    }

    /// A cache saved at `file` (loaded now when it exists and is readable).
    pub fn open(file: impl Into<PathBuf>) -> ChecksumCache {
        let file = file.into();
        let load = |file: &Path| {
            std::fs::read(file)
                .ok()
                .and_then(decode)
                .unwrap_or_default()
        };
        let path = file.clone();
        let (records, loading) = match std::thread::Builder::new()
            .name("kiln-checksums".into())
            .spawn(move || load(&path))
        {
            Ok(handle) => (Records::default(), Some(handle)),
            Err(_) => (load(&file), None),
        };
        ChecksumCache {
            file: Some(file),
            records: RwLock::new(records),
            loading: Mutex::new(loading),
            dirty: AtomicBool::new(false),
            files_read: AtomicU64::new(0),
        }
    }

    /// Waits for the saved file's records if they are still being loaded.
    fn finish_loading(&self) {
        let Ok(mut loading) = self.loading.lock() else {
            return;
        };
        if let Some(handle) = loading.take() {
            // a panic while decoding leaves the cache empty: everything is hashed again
            let loaded = handle.join().unwrap_or_default();
            if let Ok(mut records) = self.records.write() {
                // nothing was inserted meanwhile: every writer finishes loading first
                *records = loaded;
            }
        }
    }

    /// The cache of a build context in `directory` (`<kiln root>/checksums`), in the file
    /// `<context_key>.bin`; the key must be a plain name (letters, digits, `-`, `_`, `.`).
    pub fn open_for_context(
        directory: &Path,
        context_key: &str,
    ) -> Result<ChecksumCache, ChecksumError> {
        let plain = !context_key.is_empty()
            && !context_key.starts_with('.')
            && context_key.len() <= 128
            && context_key
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || b"-_.".contains(&byte));
        if !plain {
            return Err(ChecksumError::InvalidContextKey {
                key: context_key.to_string(),
            });
        }
        std::fs::create_dir_all(directory).map_err(|source| ChecksumError::CacheFile {
            path: directory.to_path_buf(),
            source,
        })?;
        Ok(ChecksumCache::open(
            directory.join(format!("{context_key}.bin")),
        ))
    }

    /// How many files (or links) were read to be hashed through this cache: a warm rebuild
    /// reads none.
    pub fn files_read(&self) -> u64 {
        self.files_read.load(Ordering::Relaxed)
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.finish_loading();
        self.records
            .read()
            .map(|records| records.len())
            .unwrap_or(0)
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn count_read(&self) {
        self.files_read.fetch_add(1, Ordering::Relaxed);
    }

    /// Read access for a batch of lookups (waits for the saved file's records first).
    pub(crate) fn reader(&self) -> CacheReader<'_> {
        self.finish_loading();
        CacheReader {
            records: self.records.read().ok(),
        }
    }

    /// Stores hashes computed after `hash_started_nanos` (wall clock).
    pub(crate) fn insert_many(
        &self,
        hashed: impl IntoIterator<Item = (Vec<u8>, StatKey, Hashes)>,
        hash_started_nanos: i128,
    ) {
        self.finish_loading();
        let Ok(mut records) = self.records.write() else {
            return;
        };
        for (key, stat, hashes) in hashed {
            let last_change = stat.mtime_nanos.max(stat.ctime_nanos);
            let racy = last_change + RACY_WINDOW_NANOS >= hash_started_nanos;
            records.added.insert(key, Record { stat, hashes, racy });
        }
        self.dirty.store(true, Ordering::Relaxed);
    }

    /// Writes the cache to its file (atomically); nothing for an in-memory cache or when
    /// nothing changed.
    pub fn save(&self) -> Result<(), ChecksumError> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        self.finish_loading();
        if !self.dirty.swap(false, Ordering::Relaxed) {
            return Ok(());
        }
        let bytes = {
            let records = self.records.read().map_err(|_| ChecksumError::Poisoned)?;
            encode(&records)
        };
        write_atomically(file, &bytes).map_err(|source| ChecksumError::CacheFile {
            path: file.clone(),
            source,
        })
    }
}

/// Wall-clock now in nanoseconds since the epoch.
pub(crate) fn now_nanos() -> i128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|duration| duration.as_nanos() as i128)
        .unwrap_or(0)
}

/// The saved file of `records`: its records sorted by path, which is close to the order a
/// walk looks them up in (a directory's entries, then each subdirectory's), so the lookups of
/// the next build read the file's bytes nearly in order rather than all over.
fn encode(records: &Records) -> Vec<u8> {
    enum Source<'a> {
        /// A saved record not replaced since, copied as it is.
        Saved(u32),
        Added(&'a Record),
    }
    let mut sorted: Vec<(&[u8], Source<'_>)> = records
        .index
        .iter()
        .map(|&offset| (records.saved_key(offset), Source::Saved(offset)))
        .filter(|(key, _)| !records.added.contains_key(*key))
        .chain(
            records
                .added
                .iter()
                .filter(|(_, record)| !record.racy)
                .map(|(key, record)| (key.as_slice(), Source::Added(record))),
        )
        .collect();
    sorted.sort_unstable_by(|a, b| a.0.cmp(b.0));
    let mut out = Vec::with_capacity(64 + records.saved.len() + records.added.len() * 160);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(sorted.len() as u64).to_le_bytes());
    for (key, source) in sorted {
        match source {
            Source::Saved(offset) => out.extend_from_slice(records.saved_record(offset)),
            Source::Added(record) => {
                out.extend_from_slice(&(key.len() as u32).to_le_bytes());
                out.extend_from_slice(key);
                let stat = &record.stat;
                out.extend_from_slice(&stat.size.to_le_bytes());
                out.extend_from_slice(&stat.mtime_nanos.to_le_bytes());
                out.extend_from_slice(&stat.ctime_nanos.to_le_bytes());
                out.extend_from_slice(&stat.inode.to_le_bytes());
                out.extend_from_slice(&stat.device.to_le_bytes());
                out.extend_from_slice(&stat.mode.to_le_bytes());
                out.extend_from_slice(&stat.uid.to_le_bytes());
                out.extend_from_slice(&stat.gid.to_le_bytes());
                out.extend_from_slice(&record.hashes.content);
                out.extend_from_slice(&record.hashes.xattrs);
            }
        }
    }
    let trailer = blake3::hash(&out);
    out.extend_from_slice(trailer.as_bytes());
    out
}

/// A little reader over the cache file's bytes.
struct Cursor<'a> {
    bytes: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, count: usize) -> Option<&'a [u8]> {
        if self.bytes.len() < count {
            return None;
        }
        let (head, tail) = self.bytes.split_at(count);
        self.bytes = tail;
        Some(head)
    }
    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }
}

/// Checks a saved file and indexes its records in place.
fn decode(bytes: Vec<u8>) -> Option<Records> {
    if bytes.len() < 32 + 20 || bytes.len() as u64 > MAX_CACHE_FILE {
        return None;
    }
    let body_length = bytes.len() - 32;
    let (body, trailer) = bytes.split_at(body_length);
    if blake3::hash(body).as_bytes() != trailer {
        return None;
    }
    let mut cursor = Cursor { bytes: body };
    if cursor.take(8)? != MAGIC || u32::from_le_bytes(cursor.array()?) != VERSION {
        return None;
    }
    let count = u64::from_le_bytes(cursor.array()?);
    let mut offset = body_length - cursor.bytes.len();
    let mut records = Records {
        index: hashbrown::HashTable::with_capacity(count.min(1 << 20) as usize),
        ..Records::default()
    };
    let mut offsets = Vec::with_capacity(count.min(1 << 20) as usize);
    for _ in 0..count {
        let key_length = u32::from_le_bytes(cursor.array()?) as usize;
        cursor.take(key_length)?;
        cursor.take(RECORD_TAIL)?;
        offsets.push(u32::try_from(offset).ok()?);
        offset += 4 + key_length + RECORD_TAIL;
    }
    if !cursor.bytes.is_empty() {
        return None;
    }
    records.saved = bytes;
    let Records {
        saved,
        index,
        hasher,
        ..
    } = &mut records;
    let key_of = |offset: u32| saved_key_in(saved, offset);
    for offset in offsets {
        let key = key_of(offset);
        let hash = hasher.hash_one(key);
        match index.entry(
            hash,
            |&other| key_of(other) == key,
            |&other| hasher.hash_one(key_of(other)),
        ) {
            hashbrown::hash_table::Entry::Occupied(mut occupied) => *occupied.get_mut() = offset,
            hashbrown::hash_table::Entry::Vacant(vacant) => {
                vacant.insert(offset);
            }
        }
    }
    Some(records)
}

fn write_atomically(file: &Path, bytes: &[u8]) -> io::Result<()> {
    let directory = file.parent().unwrap_or(Path::new("."));
    let name = file
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temporary = directory.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut handle = std::fs::File::create(&temporary)?;
        handle.write_all(bytes)?;
        handle.sync_all()?;
        drop(handle);
        std::fs::rename(&temporary, file)?;
        std::fs::File::open(directory)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    result
}
