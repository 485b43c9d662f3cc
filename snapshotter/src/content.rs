//! The content store: immutable blobs at `content/blobs/sha256/<hex>`, written through
//! `content/ingest/` with hashing, fsync, verification and an atomic rename.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kiln_types::Digest;
use kiln_types::Sha256;
use rustix::fs::{flock, FlockOperation};

use crate::error::{Result, StoreError};
use crate::fsutil::fsync_dir;
use crate::ids::random_hex;
use crate::lease::{add_to_lease, Lease};
use crate::StoreInner;

/// Prefix of ingest files whose digest is not known in advance.
const ANONYMOUS_INGEST_PREFIX: &str = "tmp-";

/// Content-addressed blobs. Cheap to clone.
#[derive(Clone)]
pub struct ContentStore {
    pub(crate) inner: Arc<StoreInner>,
}

impl std::fmt::Debug for ContentStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContentStore")
            .field("root", &self.inner.layout.root)
            .finish()
    }
}

impl ContentStore {
    /// Where a blob lives (whether or not it is there).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.inner.layout.blob_path(digest)
    }

    /// Whether a blob is in the store.
    pub fn exists(&self, digest: &Digest) -> bool {
        self.blob_path(digest).is_file()
    }

    /// The size of a stored blob.
    pub fn size(&self, digest: &Digest) -> Result<u64> {
        match fs::metadata(self.blob_path(digest)) {
            Ok(metadata) => Ok(metadata.len()),
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                Err(StoreError::BlobNotFound {
                    digest: digest.clone(),
                })
            }
            Err(error) => Err(StoreError::io("inspect", self.blob_path(digest), error)),
        }
    }

    /// Opens a stored blob for reading.
    pub fn open(&self, digest: &Digest) -> Result<File> {
        let path = self.blob_path(digest);
        File::open(&path).map_err(|error| {
            if error.kind() == io::ErrorKind::NotFound {
                StoreError::BlobNotFound {
                    digest: digest.clone(),
                }
            } else {
                StoreError::io("open", path, error)
            }
        })
    }

    /// Reads a whole blob into memory, refusing blobs larger than `limit` bytes (manifests and
    /// configs are small; a hostile one must not exhaust memory).
    pub fn read_bytes(&self, digest: &Digest, limit: u64) -> Result<Vec<u8>> {
        let file = self.open(digest)?;
        let path = self.blob_path(digest);
        let size = file
            .metadata()
            .map_err(|e| StoreError::io("inspect", &path, e))?
            .len();
        if size > limit {
            return Err(StoreError::BlobTooLarge {
                digest: digest.clone(),
                size,
                limit,
            });
        }
        let mut bytes = Vec::with_capacity(size as usize);
        file.take(limit)
            .read_to_end(&mut bytes)
            .map_err(|e| StoreError::io("read", &path, e))?;
        Ok(bytes)
    }

    /// Every blob in the store.
    pub fn list(&self) -> Result<Vec<Digest>> {
        let directory = &self.inner.layout.blobs;
        let entries = fs::read_dir(directory).map_err(|e| StoreError::io("list", directory, e))?;
        let mut digests = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| StoreError::io("list", directory, e))?;
            let name = entry.file_name();
            if let Some(Ok(digest)) = name
                .to_str()
                .map(|hex| Digest::parse(&format!("sha256:{hex}")))
            {
                digests.push(digest);
            }
        }
        digests.sort();
        Ok(digests)
    }

    /// Starts writing a blob. With `expected` (digest and size), the bytes are checked against
    /// them on commit and a partial write left by an earlier attempt is resumed: see
    /// [`BlobWriter::offset`]. The blob is added to `lease` before any byte is written.
    pub fn writer(&self, lease: &Lease, expected: Option<(Digest, u64)>) -> Result<BlobWriter> {
        if let Some((digest, _)) = &expected {
            lease.protect_blob(digest)?;
        }
        let ingest = &self.inner.layout.ingest;
        let (file, path, keyed) = match &expected {
            Some((digest, _)) => match open_keyed_ingest(&ingest.join(digest.hex()))? {
                Some(file) => (file, ingest.join(digest.hex()), true),
                // Another writer (maybe another process) is on the same blob: write our own
                // copy; whichever commits second finds the blob there and succeeds.
                None => {
                    let (file, path) = create_anonymous_ingest(ingest)?;
                    (file, path, false)
                }
            },
            None => {
                let (file, path) = create_anonymous_ingest(ingest)?;
                (file, path, false)
            }
        };
        let mut writer = BlobWriter {
            inner: self.inner.clone(),
            lease_id: lease.id.clone(),
            file,
            path,
            keyed,
            hasher: Sha256::new(),
            hashing: true,
            written: 0,
            writeback_started: 0,
            expected,
            finished: false,
            poisoned: false,
        };
        writer.resume()?;
        Ok(writer)
    }

    /// Stores bytes held in memory; `expected` is checked if given.
    pub fn put_bytes(
        &self,
        lease: &Lease,
        bytes: &[u8],
        expected: Option<&Digest>,
    ) -> Result<(Digest, u64)> {
        // already stored (a rebuild's config and manifest): protect it, then look, so a
        // prune cannot remove it in between; no temp file, no fsync
        let digest = Digest::from_sha256(Sha256::digest(bytes));
        if expected.is_none_or(|expected| *expected == digest) {
            lease.protect_blob(&digest)?;
            if self.exists(&digest) {
                return Ok((digest, bytes.len() as u64));
            }
        }
        let mut writer = self.writer(
            lease,
            expected.map(|digest| (digest.clone(), bytes.len() as u64)),
        )?;
        if writer.offset() != 0 {
            writer.restart()?;
        }
        writer
            .write_all(bytes)
            .map_err(|e| StoreError::io("write", writer.path.clone(), e))?;
        writer.commit()
    }

    /// How many bytes of `digest` an earlier interrupted download left in the ingest
    /// directory (0 if none): a registry client can ask for the rest with a Range request.
    pub fn ingest_offset(&self, digest: &Digest) -> u64 {
        fs::metadata(self.inner.layout.ingest.join(digest.hex()))
            .map(|metadata| metadata.len())
            .unwrap_or(0)
    }

    /// Removes a blob now, whatever references it (prefer [`crate::Store::prune`], which
    /// removes only what nothing uses); whether it was there.
    pub fn delete(&self, digest: &Digest) -> Result<bool> {
        let path = self.blob_path(digest);
        self.inner.metadata.write(|_| match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(error) => Err(StoreError::io("remove", &path, error)),
        })
    }
}

/// Opens `ingest/<hex>` and locks it; `None` if another writer holds it. The lock is taken on
/// the file itself and rechecked against the path, so that a file unlinked by `prune` between
/// our open and our lock is never written to.
fn open_keyed_ingest(path: &Path) -> Result<Option<File>> {
    loop {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| StoreError::io("create", path, e))?;
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => return Ok(None),
            Err(errno) => return Err(StoreError::io("lock", path, errno.into())),
        }
        if same_file(&file, path) {
            return Ok(Some(file));
        }
    }
}

/// Whether an open file is still the one at `path`.
pub(crate) fn same_file(file: &File, path: &Path) -> bool {
    match (file.metadata(), fs::symlink_metadata(path)) {
        (Ok(open), Ok(named)) => open.dev() == named.dev() && open.ino() == named.ino(),
        _ => false,
    }
}

fn create_anonymous_ingest(ingest: &Path) -> Result<(File, PathBuf)> {
    loop {
        let path = ingest.join(format!("{ANONYMOUS_INGEST_PREFIX}{}", random_hex(12)));
        match OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(file) => {
                flock(&file, FlockOperation::NonBlockingLockExclusive)
                    .map_err(|errno| StoreError::io("lock", &path, errno.into()))?;
                return Ok((file, path));
            }
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(error) => return Err(StoreError::io("create", &path, error)),
        }
    }
}

/// Streams one blob into the store. Nothing is visible under `blobs/` until [`commit`]
/// verified it. Dropping an uncommitted writer keeps a partial download of a known digest
/// (for resuming) and removes any other partial file.
///
/// [`commit`]: BlobWriter::commit
pub struct BlobWriter {
    inner: Arc<StoreInner>,
    lease_id: String,
    file: File,
    path: PathBuf,
    /// Whether `path` is `ingest/<expected hex>` (resumable) rather than a private name.
    keyed: bool,
    hasher: Sha256,
    /// False when the caller hashes the bytes itself (see [`BlobWriter::without_hashing`]).
    hashing: bool,
    written: u64,
    /// Bytes up to here were handed to the kernel's writeback (see [`WRITEBACK_CHUNK`]).
    writeback_started: u64,
    expected: Option<(Digest, u64)>,
    finished: bool,
    /// Set when the bytes are known to be wrong: the partial file is then removed on drop.
    poisoned: bool,
}

/// Every this many bytes written, a writer asks the kernel to start writing them back
/// (`sync_file_range`, which does not wait), so the fsync at commit finds little left to do:
/// a 0.5 GB layer otherwise waited ~0.4 s for its fsync after the last byte.
const WRITEBACK_CHUNK: u64 = 8 << 20;

impl std::fmt::Debug for BlobWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobWriter")
            .field("path", &self.path)
            .field("written", &self.written)
            .field("expected", &self.expected)
            .finish()
    }
}

impl BlobWriter {
    /// How many bytes are already in the writer: non-zero when an earlier partial write of
    /// the same digest was found. Write only the bytes from this offset on, or call
    /// [`restart`](Self::restart) to begin again.
    pub fn offset(&self) -> u64 {
        self.written
    }

    /// The ingest file being written. The [`offset`](Self::offset) bytes written so far can
    /// be read back from it while writing goes on (a pull feeds them to an unpacker that
    /// starts after the download did). Never write to it.
    pub fn ingest_path(&self) -> &Path {
        &self.path
    }

    /// Drops whatever was written and starts over at offset 0.
    pub fn restart(&mut self) -> Result<()> {
        self.file
            .set_len(0)
            .and_then(|()| self.file.seek(SeekFrom::Start(0)).map(|_| ()))
            .map_err(|e| StoreError::io("truncate", &self.path, e))?;
        self.hasher = Sha256::new();
        self.written = 0;
        self.writeback_started = 0;
        self.poisoned = false;
        Ok(())
    }

    /// Picks up the bytes already in a resumed ingest file: they are hashed again, since a
    /// hash state cannot be saved across processes.
    fn resume(&mut self) -> Result<()> {
        let length = self
            .file
            .metadata()
            .map_err(|e| StoreError::io("inspect", &self.path, e))?
            .len();
        if length == 0 {
            return Ok(());
        }
        if let Some((_, size)) = &self.expected {
            if length > *size {
                return self.restart();
            }
        }
        self.file
            .seek(SeekFrom::Start(0))
            .map_err(|e| StoreError::io("read", &self.path, e))?;
        let mut buffer = vec![0u8; 1 << 16];
        let mut total = 0u64;
        loop {
            let read = self
                .file
                .read(&mut buffer)
                .map_err(|e| StoreError::io("read", &self.path, e))?;
            if read == 0 {
                break;
            }
            self.hasher.update(&buffer[..read]);
            total += read as u64;
        }
        self.written = total;
        self.writeback_started = total;
        Ok(())
    }

    /// Flushes the bytes to disk, checks size and digest, and moves the blob into place.
    /// A blob that is already there (another writer finished first) is success.
    pub fn commit(mut self) -> Result<(Digest, u64)> {
        if !self.hashing {
            self.poisoned = true;
            return Err(StoreError::io(
                "commit",
                &self.path,
                io::Error::other("a writer without hashing needs commit_with_digest"),
            ));
        }
        let digest = Digest::from_sha256(std::mem::take(&mut self.hasher).finalize());
        self.commit_as(digest)
    }

    /// For bytes the caller hashes anyway (a layer kiln writes uncompressed: its digest is
    /// the diffID the tar writer computes), so the same bytes are not hashed twice: the
    /// writer does not hash, and [`commit_with_digest`](Self::commit_with_digest) takes the
    /// caller's digest. Only for bytes kiln produced itself, never for downloads.
    pub fn without_hashing(mut self) -> Self {
        self.hashing = false;
        self
    }

    /// Commits under `digest`, the sha256 of the bytes as the caller computed it (see
    /// [`without_hashing`](Self::without_hashing)).
    pub fn commit_with_digest(mut self, digest: Digest) -> Result<(Digest, u64)> {
        if self.hashing {
            let own = Digest::from_sha256(std::mem::take(&mut self.hasher).finalize());
            if own != digest {
                self.poisoned = true;
                return Err(StoreError::DigestMismatch {
                    expected: digest,
                    found: own,
                });
            }
        }
        self.commit_as(digest)
    }

    /// Starts (does not wait for) the writeback of the bytes written since the last call.
    /// Only an optimisation: the fsync at commit is what makes the blob durable.
    fn start_writeback(&mut self) {
        let start = self.writeback_started;
        let length = self.written - start;
        // SAFETY: sync_file_range only reads its integer arguments; the descriptor is ours.
        unsafe {
            libc::sync_file_range(
                std::os::fd::AsRawFd::as_raw_fd(&self.file),
                start as libc::off64_t,
                length as libc::off64_t,
                libc::SYNC_FILE_RANGE_WRITE,
            );
        }
        self.writeback_started = self.written;
    }

    fn commit_as(mut self, digest: Digest) -> Result<(Digest, u64)> {
        self.file
            .sync_all()
            .map_err(|e| StoreError::io("fsync", &self.path, e))?;
        let size = self.written;
        if let Some((expected_digest, expected_size)) = &self.expected {
            if size != *expected_size {
                self.poisoned = true;
                return Err(StoreError::SizeMismatch {
                    digest: expected_digest.to_string(),
                    expected: *expected_size,
                    found: size,
                });
            }
            if digest != *expected_digest {
                self.poisoned = true;
                return Err(StoreError::DigestMismatch {
                    expected: expected_digest.clone(),
                    found: digest,
                });
            }
        }
        let blob_path = self.inner.layout.blob_path(&digest);
        let blobs_dir = self.inner.layout.blobs.clone();
        self.inner.metadata.write(|txn| {
            // In the same locked section as the rename: a prune cannot slip in between the
            // blob appearing and its protection.
            add_to_lease(txn, &self.lease_id, |record| {
                record.blobs.insert(digest.clone());
            })?;
            if blob_path.exists() {
                fs::remove_file(&self.path).map_err(|e| StoreError::io("remove", &self.path, e))?;
            } else {
                fs::rename(&self.path, &blob_path)
                    .map_err(|e| StoreError::io("rename into place", &self.path, e))?;
                fsync_dir(&blobs_dir)?;
            }
            Ok(())
        })?;
        self.finished = true;
        Ok((digest, size))
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buffer: &[u8]) -> io::Result<usize> {
        if let Some((digest, size)) = &self.expected {
            if self.written + buffer.len() as u64 > *size {
                self.poisoned = true;
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("more than the {size} bytes announced for {digest}"),
                ));
            }
        }
        let written = self.file.write(buffer)?;
        if self.hashing {
            self.hasher.update(&buffer[..written]);
        }
        self.written += written as u64;
        if self.written - self.writeback_started >= WRITEBACK_CHUNK {
            self.start_writeback();
        }
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if !self.finished && (!self.keyed || self.poisoned) {
            let _ = fs::remove_file(&self.path);
        }
    }
}
