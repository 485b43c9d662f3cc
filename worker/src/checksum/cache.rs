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

/// Paths are hashed with foldhash: SipHash was a noticeable part of a warm rebuild's lookups.
type RecordMap = HashMap<Vec<u8>, Record, foldhash::fast::RandomState>;
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
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
    pub(crate) fn of(metadata: &std::fs::Metadata) -> StatKey {
        StatKey {
            size: metadata.size(),
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

/// Content hashes of files, keyed by path and validated by `lstat`.
#[derive(Debug, Default)]
pub struct ChecksumCache {
    file: Option<PathBuf>,
    records: RwLock<RecordMap>,
    /// The saved file being read and decoded on a thread of its own (a 20,000-file context's
    /// is 3 MB, several ms), joined at first use: meanwhile the build opens the store,
    /// resolves its base images and lists the context.
    loading: Mutex<Option<std::thread::JoinHandle<RecordMap>>>,
    dirty: AtomicBool,
    files_read: AtomicU64,
}

/// Maps at least this large are freed on a thread of their own when the cache is dropped:
/// freeing 20,000 keys one by one is ~2 ms at the end of every build.
const FREE_IN_BACKGROUND: usize = 4096;

impl Drop for ChecksumCache {
    fn drop(&mut self) {
        let records = match self.records.get_mut() {
            Ok(records) => std::mem::take(records),
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
                .and_then(|bytes| decode(&bytes))
                .unwrap_or_default()
        };
        let path = file.clone();
        let (records, loading) = match std::thread::Builder::new()
            .name("kiln-checksums".into())
            .spawn(move || load(&path))
        {
            Ok(handle) => (RecordMap::default(), Some(handle)),
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

    /// The hashes of entries whose `lstat` still matches (`None` for the others), all
    /// looked up under one read lock.
    pub(crate) fn lookup_many<'k>(
        &self,
        entries: impl Iterator<Item = (&'k [u8], &'k StatKey)>,
    ) -> Vec<Option<Hashes>> {
        self.finish_loading();
        let Ok(records) = self.records.read() else {
            return entries.map(|_| None).collect();
        };
        entries
            .map(|(key, stat)| {
                records
                    .get(key)
                    .filter(|record| record.stat == *stat)
                    .map(|record| record.hashes)
            })
            .collect()
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
            records.insert(key, Record { stat, hashes, racy });
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

fn encode(records: &RecordMap) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + records.len() * 160);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    let saved: Vec<_> = records.iter().filter(|(_, record)| !record.racy).collect();
    out.extend_from_slice(&(saved.len() as u64).to_le_bytes());
    for (key, record) in saved {
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

fn decode(bytes: &[u8]) -> Option<RecordMap> {
    if bytes.len() < 32 + 20 || bytes.len() as u64 > MAX_CACHE_FILE {
        return None;
    }
    let (body, trailer) = bytes.split_at(bytes.len() - 32);
    if blake3::hash(body).as_bytes() != trailer {
        return None;
    }
    let mut cursor = Cursor { bytes: body };
    if cursor.take(8)? != MAGIC || u32::from_le_bytes(cursor.array()?) != VERSION {
        return None;
    }
    let count = u64::from_le_bytes(cursor.array()?);
    let mut records =
        RecordMap::with_capacity_and_hasher(count.min(1 << 20) as usize, Default::default());
    for _ in 0..count {
        let key_length = u32::from_le_bytes(cursor.array()?) as usize;
        let key = cursor.take(key_length)?.to_vec();
        let stat = StatKey {
            size: u64::from_le_bytes(cursor.array()?),
            mtime_nanos: i128::from_le_bytes(cursor.array()?),
            ctime_nanos: i128::from_le_bytes(cursor.array()?),
            inode: u64::from_le_bytes(cursor.array()?),
            device: u64::from_le_bytes(cursor.array()?),
            mode: u32::from_le_bytes(cursor.array()?),
            uid: u32::from_le_bytes(cursor.array()?),
            gid: u32::from_le_bytes(cursor.array()?),
        };
        let hashes = Hashes {
            content: cursor.array()?,
            xattrs: cursor.array()?,
        };
        records.insert(
            key,
            Record {
                stat,
                hashes,
                racy: false,
            },
        );
    }
    cursor.bytes.is_empty().then_some(records)
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
