//! The store: content-addressed blobs, metadata, overlayfs snapshots, layer apply and diff.
//!
//! # Layout of a kiln root (default `/var/lib/kiln`)
//! ```text
//! content/blobs/sha256/<hex>   verified, immutable blobs
//! content/ingest/<hex>         partial download of a known digest (resumable), locked by its writer
//! content/ingest/tmp-<random>  partial write of a not yet known digest
//! snapshots/<id>/fs            committed: the layer; active: the overlay upper
//! snapshots/<id>/work          overlay workdir (active only)
//! snapshots/<id>/merged        overlay mount point (active snapshots and views)
//! cache-mounts/<id>            RUN --mount=type=cache directories
//! trash/                       directories being deleted (renamed here first, then removed)
//! metadata.db (+ -wal, -shm)   SQLite database (WAL): images, snapshots, snapshot keys,
//!                              cache records, cache mounts, leases
//! ```
//!
//! # Sharing the store between processes: why SQLite and not redb
//! The metadata database must be shared by several kiln processes at once (two builds, a
//! pull and a prune). redb holds an exclusive `flock` on its file for as long as a
//! `Database` is open, so the only way to share it is to open it for each transaction under
//! a lock file; that was built first and measured: redb writes its header with
//! `recovery_required` and fsyncs on every open, and writes an allocator-state commit and
//! fsyncs again on every close, so one small write transaction cost 44 ms and even a read
//! cost 9 ms on this machine. SQLite in WAL mode is built for several processes:
//! each [`Store`] keeps one connection open, readers never wait and see a consistent
//! snapshot, a writer takes the database's write lock with `BEGIN IMMEDIATE` (waiting up to
//! the busy timeout, 120 s by default, then [`StoreError::MetadataBusy`]), and a commit with
//! `synchronous=FULL` is on disk when it returns. Measured: 5 ms per write transaction (one
//! fsync), 0.13 ms per read. `kill -9` or power loss at any point leave the last committed
//! state: another process never sees half a record. Every transaction is small, so the
//! write lock is held for milliseconds and downloads, unpacking, builds and diffs run
//! outside it, in parallel across processes.
//!
//! Records that are worthless after a machine crash are committed without waiting for the
//! disk (`Metadata::write_volatile`): leases (their processes die with the machine),
//! snapshot records (a lost one leaves a directory without a record: garbage, removed by
//! recovery), cache records and layer-blob records (lost ones cost a rebuild or a
//! recompression). They are visible to other processes at once all the same; the next
//! durable commit (an image record, a blob) flushes them with it, in order. So a build step
//! costs no fsync, and a no-change rebuild none but the tag's. Image records, blob records
//! and prune decisions stay durable.
//!
//! The write lock also orders the few file operations that must agree with the records: a
//! blob is renamed into place, and a prune unlinks blobs, inside a write transaction; a
//! snapshot or cache mount record is committed before its directory is made, so a directory
//! without a record is garbage.
//!
//! # What keeps things alive
//! `prune` keeps what an image (manifest -> config and layers -> snapshots by chain id), a
//! cache record (its listed snapshots, blobs and cache mounts) or a live [`Lease`] names, and
//! the ancestors of every kept snapshot. A lease records its process (pid, start time, boot
//! id): once that process is gone the lease is stale and protects nothing. Every operation
//! that creates something (a blob writer, an unpack, an active snapshot, a view, a cache
//! mount) adds it to the caller's lease in the same transaction that creates its record, so a
//! concurrent prune in another process can never delete it between its creation and the
//! image tag or cache record that will keep it. All kiln processes sharing a root must see
//! each other's pids (one PID namespace): a lease whose pid is not visible counts as dead.
//!
//! # Crash recovery
//! [`Store::open`] runs [`Store::recover`]: stale leases are forgotten, the active snapshots
//! and views of dead processes are unmounted and deleted, leaked mounts under `snapshots/`
//! are detached, and the trash is emptied. Committed snapshots whose files were not yet
//! synced when the machine went down (see the `sync` module) are removed with their
//! descendants and the cache records naming them. A partial download of a known digest stays in
//! `content/ingest/` to be resumed ([`BlobWriter::offset`]); `prune` deletes ingest files no
//! writer holds locked.
//!
//! # Overlay mounts
//! Lower directories are given one by one with `fsconfig(FSCONFIG_SET_STRING, "lowerdir+")`
//! (Linux >= 6.8), so their number is not bounded by a page of mount options. fsconfig
//! strings are themselves limited to 255 bytes, and a long `--root` would exceed that, so
//! the layers are named relative to `snapshots/` (`<12 hex>/fs`) from a short-lived thread
//! that did `unshare(CLONE_FS)` and `chdir` (only that thread's working directory moves,
//! which is sound in kiln's multi-threaded process). On kernels without `lowerdir+` the
//! classic `mount(2)` options string is used: absolute paths if they fit in a page, else the
//! same relative paths from the same kind of thread, 16 bytes a layer, about 250 layers.
//! Deeper chains on such old kernels are refused ([`StoreError::MountOptionsTooLong`]):
//! flattening is not implemented. overlayfs itself stacks at most 500 lowers. Overlays are
//! mounted with `redirect_dir=off,metacopy=off,index=off`, so an upper is a plain layer: a
//! committed upper, with its char 0/0 whiteouts and `trusted.overlay.opaque` directories,
//! is a valid lower as is (the diff must skip other `trusted.overlay.*` xattrs).
//!
//! # Not here
//! The layer tar apply and diff live in the `archive` module; this part knows nothing about
//! tar, registries or containers.

pub mod archive;
mod content;
mod error;
mod fsutil;
mod gc;
mod ids;
mod images;
mod layer_blobs;
mod lease;
mod metadata;
mod mount;
mod process;
mod snapshot;
mod sync;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use kiln_types::Digest;

pub use content::{BlobWriter, ContentStore};
pub use error::{Result, StoreError};
pub use gc::{PruneOptions, PruneReport};
pub use ids::SnapshotId;
pub use images::{
    chain_ids, CacheMountRecord, CacheRecord, ImageRecord, LayerInfo, ResolvedImage,
    MAX_DOCUMENT_SIZE,
};
pub use layer_blobs::{LayerBlobRecord, MAX_LAYER_VARIANT_LENGTH};
pub use lease::{Lease, LeaseRecord};
pub use mount::{MountMethod, MAX_OVERLAY_LAYERS};
pub use process::ProcessIdentity;
pub use snapshot::{
    ActiveSnapshot, CommitOptions, PreparedUnpack, SnapshotKind, SnapshotRecord, SnapshotView,
    Snapshotter, UnpackDir,
};

/// The default kiln root.
pub const DEFAULT_ROOT: &str = "/var/lib/kiln";

/// How a store is opened.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct StoreOptions {
    pub mount_method: MountMethod,
    /// How long to wait for another process's metadata transaction.
    pub busy_timeout: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            mount_method: MountMethod::Auto,
            busy_timeout: metadata::DEFAULT_BUSY_TIMEOUT,
        }
    }
}

impl StoreOptions {
    pub fn with_mount_method(mut self, method: MountMethod) -> Self {
        self.mount_method = method;
        self
    }

    pub fn with_busy_timeout(mut self, timeout: Duration) -> Self {
        self.busy_timeout = timeout;
        self
    }
}

/// Paths inside a kiln root.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    pub(crate) root: PathBuf,
    pub(crate) blobs: PathBuf,
    pub(crate) ingest: PathBuf,
    pub(crate) snapshots: PathBuf,
    pub(crate) cache_mounts: PathBuf,
    pub(crate) trash: PathBuf,
}

impl Layout {
    fn new(root: &Path) -> Self {
        Layout {
            root: root.to_path_buf(),
            blobs: root.join("content/blobs/sha256"),
            ingest: root.join("content/ingest"),
            snapshots: root.join("snapshots"),
            cache_mounts: root.join("cache-mounts"),
            trash: root.join("trash"),
        }
    }

    pub(crate) fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.blobs.join(digest.hex())
    }

    pub(crate) fn snapshot_dir(&self, id: &SnapshotId) -> PathBuf {
        self.snapshots.join(id.as_str())
    }
}

pub(crate) struct StoreInner {
    pub(crate) layout: Layout,
    pub(crate) metadata: metadata::Metadata,
    pub(crate) options: StoreOptions,
    pub(crate) syncer: sync::SnapshotSyncer,
}

/// One kiln root: content store, snapshots, metadata. Cheap to clone; share one per process.
#[derive(Clone)]
pub struct Store {
    pub(crate) inner: Arc<StoreInner>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("root", &self.inner.layout.root)
            .finish()
    }
}

impl Store {
    /// Opens (creating if needed) the store at `root` and recovers from crashed processes.
    pub fn open(root: impl AsRef<Path>) -> Result<Store> {
        Self::open_with(root, StoreOptions::default())
    }

    /// [`open`](Self::open) with options.
    pub fn open_with(root: impl AsRef<Path>, options: StoreOptions) -> Result<Store> {
        let root = root.as_ref();
        let root = if root.is_absolute() {
            root.to_path_buf()
        } else {
            std::env::current_dir()
                .map_err(|e| StoreError::io("find the current directory for", root, e))?
                .join(root)
        };
        let layout = Layout::new(&root);
        for directory in [
            &layout.blobs,
            &layout.ingest,
            &layout.snapshots,
            &layout.cache_mounts,
            &layout.trash,
        ] {
            fsutil::create_dir_all(directory)?;
        }
        fsutil::mark_top_dir(&layout.snapshots);
        fsutil::mark_top_dir(&layout.cache_mounts);
        let metadata = metadata::Metadata::open(&root, options.busy_timeout)?;
        let store = Store {
            inner: Arc::new(StoreInner {
                layout,
                metadata,
                options,
                syncer: sync::SnapshotSyncer::default(),
            }),
        };
        store.recover()?;
        Ok(store)
    }

    /// Waits until the files of every snapshot committed so far are on disk (a `syncfs` of
    /// the store's filesystem that began after this call). Commits never wait for the disk
    /// themselves: a background sync follows them (see the `sync` module). For a caller that
    /// must know its snapshots survive a crash; kiln's commands do not wait.
    pub fn sync_snapshots(&self) {
        self.inner.wait_snapshot_sync();
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.inner.layout.root
    }

    /// The metadata database file.
    pub fn metadata_path(&self) -> &Path {
        self.inner.metadata.path()
    }

    pub fn content(&self) -> ContentStore {
        ContentStore {
            inner: self.inner.clone(),
        }
    }

    pub fn snapshotter(&self) -> Snapshotter {
        Snapshotter {
            inner: self.inner.clone(),
        }
    }

    /// Takes a lease for one operation (a pull, a build): what is added to it survives any
    /// prune until it is dropped or this process dies.
    pub fn lease(&self, description: &str) -> Result<Lease> {
        Lease::create(self.inner.clone(), description)
    }

    /// Every lease record, live or stale, with its id.
    pub fn leases(&self) -> Result<Vec<(String, LeaseRecord)>> {
        use metadata::Records;
        self.inner
            .metadata
            .read(|txn| txn.list(metadata::Table::Leases))
    }
}
