//! Cache records imported from elsewhere (`--cache-from`): a cache key's outputs as chains of
//! layer descriptors, with where to download each blob. Nothing is downloaded on import:
//! when the solver asks [`crate::BuildWorker`] to load a key the store has no record of, the
//! remote record is materialized then (its missing layers downloaded into the content store
//! and unpacked by chain id, as a pull does), recorded as a normal local cache record, and
//! returned. The solver only loads what the target needs, so a fully cached build downloads
//! the target's layers and nothing else.
//!
//! Imported content checksums let the solver compute the key of a `COPY --from` without
//! materializing the stage it copies from, and imported cache mounts fill an empty
//! `RUN --mount=type=cache` directory the first time a step uses it.
//!
//! A remote record that cannot be materialized (a blob gone, a digest or diffID that does
//! not match) is a cache miss, not a failed build: the step runs, and the reason is kept in
//! [`RemoteCache::warnings`].

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use kiln_snapshotter::archive::{apply_layer, ApplyOptions, WhiteoutMode};
use kiln_snapshotter::{
    chain_ids, BlobWriter, LayerBlobRecord, PreparedUnpack, SnapshotId, UnpackDir,
};
use kiln_solver::{CacheKey, WorkerError};
use kiln_types::{media_type, Descriptor, Digest};

use crate::build::BuildWorker;
use crate::images::BoxFuture;
use crate::value::Value;

/// Where the blobs of an imported cache can be downloaded from (a cache directory, a
/// registry repository). Implemented outside the worker, which knows no registries.
pub trait CacheBlobSource: Send + Sync {
    /// Says where this is, for messages (`registry 127.0.0.1:5000/cache:main`).
    fn describe(&self) -> String;

    /// Writes the whole blob into `writer` (which starts empty and checks size and digest
    /// when the caller commits it).
    fn fetch<'a>(
        &'a self,
        blob: &'a Descriptor,
        writer: &'a mut BlobWriter,
    ) -> BoxFuture<'a, Result<(), WorkerError>>;
}

/// One layer of an imported chain.
#[derive(Clone)]
pub struct RemoteLayer {
    pub blob: Descriptor,
    pub diff_id: Digest,
    /// The layer exporter variant the blob was made as; recorded for the unpacked snapshot
    /// so exporting it again reuses the blob instead of compressing anew.
    pub variant: Option<String>,
    /// No change at all: unpacked as an empty directory, never downloaded.
    pub empty: bool,
    pub source: Arc<dyn CacheBlobSource>,
}

impl std::fmt::Debug for RemoteLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteLayer")
            .field("blob", &self.blob.digest)
            .field("diff_id", &self.diff_id)
            .field("empty", &self.empty)
            .field("source", &self.source.describe())
            .finish()
    }
}

/// An imported record: per op output, its layer chain, bottom first (empty: the empty
/// filesystem).
#[derive(Debug, Clone, Default)]
pub struct RemoteRecord {
    pub outputs: Vec<Vec<RemoteLayer>>,
}

/// An imported cache mount's contents.
#[derive(Clone)]
pub struct RemoteCacheMount {
    pub blob: Descriptor,
    pub source: Arc<dyn CacheBlobSource>,
}

/// Every record, checksum and cache mount imported for one build.
#[derive(Default)]
pub struct RemoteCache {
    records: HashMap<CacheKey, RemoteRecord>,
    checksums: HashMap<(CacheKey, String), Digest>,
    cache_mounts: HashMap<String, RemoteCacheMount>,
    /// One download at a time per blob.
    downloads: Mutex<HashMap<Digest, Arc<tokio::sync::Mutex<()>>>>,
    blobs_downloaded: AtomicU64,
    bytes_downloaded: AtomicU64,
    warnings: Mutex<Vec<String>>,
}

impl std::fmt::Debug for RemoteCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteCache")
            .field("records", &self.records.len())
            .field("checksums", &self.checksums.len())
            .field("cache_mounts", &self.cache_mounts.len())
            .finish()
    }
}

impl RemoteCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a record; a key imported already keeps its first record (the first
    /// `--cache-from` wins). Returns whether it was added.
    pub fn add_record(&mut self, key: CacheKey, record: RemoteRecord) -> bool {
        if self.records.contains_key(&key) {
            return false;
        }
        self.records.insert(key, record);
        true
    }

    /// Adds a content checksum of the result of `key` for a consumer (`selector`, see
    /// [`checksum_selector`]).
    pub fn add_checksum(&mut self, key: CacheKey, selector: String, checksum: Digest) {
        self.checksums.entry((key, selector)).or_insert(checksum);
    }

    /// Adds a cache mount's contents under the store's cache mount id.
    pub fn add_cache_mount(&mut self, id: String, mount: RemoteCacheMount) {
        self.cache_mounts.entry(id).or_insert(mount);
    }

    pub fn record(&self, key: &CacheKey) -> Option<&RemoteRecord> {
        self.records.get(key)
    }

    pub fn checksum(&self, key: &CacheKey, selector: &str) -> Option<&Digest> {
        self.checksums.get(&(key.clone(), selector.to_string()))
    }

    pub fn cache_mount(&self, id: &str) -> Option<&RemoteCacheMount> {
        self.cache_mounts.get(id)
    }

    /// Every imported record.
    pub fn records(&self) -> impl Iterator<Item = (&CacheKey, &RemoteRecord)> {
        self.records.iter()
    }

    /// Every imported checksum: (key, selector, checksum).
    pub fn checksums(&self) -> impl Iterator<Item = (&CacheKey, &str, &Digest)> {
        self.checksums
            .iter()
            .map(|((key, selector), checksum)| (key, selector.as_str(), checksum))
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty() && self.checksums.is_empty() && self.cache_mounts.is_empty()
    }

    /// Blobs downloaded so far (layers and cache mounts).
    pub fn blobs_downloaded(&self) -> u64 {
        self.blobs_downloaded.load(Ordering::Relaxed)
    }

    pub fn bytes_downloaded(&self) -> u64 {
        self.bytes_downloaded.load(Ordering::Relaxed)
    }

    /// Why records or cache mounts could not be used (each made a cache miss).
    pub fn warnings(&self) -> Vec<String> {
        lock(&self.warnings).clone()
    }

    pub(crate) fn warn(&self, message: String) {
        lock(&self.warnings).push(message);
    }

    fn download_lock(&self, digest: &Digest) -> Arc<tokio::sync::Mutex<()>> {
        lock(&self.downloads)
            .entry(digest.clone())
            .or_default()
            .clone()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The name a content checksum is remembered under: the consumer op's definition digest and
/// the index of the input it reads.
pub fn checksum_selector(definition: &Digest, input: usize) -> String {
    format!("{definition}/{input}")
}

/// Makes `record`'s outputs snapshots in the store (downloading and unpacking what is
/// missing) and returns them as values.
pub(crate) async fn materialize(
    worker: &BuildWorker,
    cache: &RemoteCache,
    record: &RemoteRecord,
) -> Result<Vec<Value>, WorkerError> {
    let mut values = Vec::with_capacity(record.outputs.len());
    for chain in &record.outputs {
        values.push(materialize_chain(worker, cache, chain).await?);
    }
    Ok(values)
}

async fn materialize_chain(
    worker: &BuildWorker,
    cache: &RemoteCache,
    chain: &[RemoteLayer],
) -> Result<Value, WorkerError> {
    let diff_ids: Vec<Digest> = chain.iter().map(|layer| layer.diff_id.clone()).collect();
    let snapshotter = worker.store.snapshotter();
    let mut parent: Option<SnapshotId> = None;
    for (layer, chain_id) in chain.iter().zip(chain_ids(&diff_ids)) {
        let prepared = tokio::task::block_in_place(|| {
            snapshotter.prepare_unpack(&worker.lease, chain_id.as_str(), parent.as_ref())
        })?;
        let id = match prepared {
            PreparedUnpack::Existing(id) => id,
            PreparedUnpack::New(directory) => unpack_layer(worker, cache, layer, directory).await?,
        };
        record_variant(worker, &id, layer);
        parent = Some(id);
    }
    Ok(Value::Snapshot { top: parent })
}

async fn unpack_layer(
    worker: &BuildWorker,
    cache: &RemoteCache,
    layer: &RemoteLayer,
    directory: UnpackDir,
) -> Result<SnapshotId, WorkerError> {
    if layer.empty {
        return Ok(tokio::task::block_in_place(|| {
            directory.commit(Some(layer.diff_id.clone()), Some(0))
        })?);
    }
    let compression = media_type::layer_compression(&layer.blob.media_type).ok_or_else(|| {
        format!(
            "cache layer {} has media type {:?}, which is not a layer",
            layer.blob.digest, layer.blob.media_type
        )
    })?;
    ensure_blob(worker, cache, &layer.blob, layer.source.as_ref()).await?;
    let store = worker.store.clone();
    let digest = layer.blob.digest.clone();
    let diff_id = layer.diff_id.clone();
    let id = tokio::task::spawn_blocking(move || -> Result<SnapshotId, WorkerError> {
        let file = store.content().open(&digest)?;
        let mut options = ApplyOptions::new(WhiteoutMode::Overlay);
        options.expected_diff_id = Some(diff_id);
        let applied = apply_layer(file, compression, directory.path(), &options)?;
        Ok(directory.commit(Some(applied.diff_id), Some(applied.uncompressed_size))?)
    })
    .await??;
    Ok(id)
}

/// Records the downloaded blob as the snapshot's export in `layer.variant`, so the image
/// exporter reuses it (same bytes as the machine that made the cache; no compression).
fn record_variant(worker: &BuildWorker, snapshot: &SnapshotId, layer: &RemoteLayer) {
    let Some(variant) = &layer.variant else {
        return;
    };
    if layer.empty || !worker.store.content().exists(&layer.blob.digest) {
        return;
    }
    if let Ok(Some(_)) = worker.store.layer_blob(snapshot, variant) {
        return;
    }
    let uncompressed_size = worker
        .store
        .snapshotter()
        .info(snapshot)
        .ok()
        .and_then(|record| record.size)
        .unwrap_or(0);
    let record = LayerBlobRecord {
        media_type: layer.blob.media_type.clone(),
        digest: layer.blob.digest.clone(),
        size: layer.blob.size,
        diff_id: layer.diff_id.clone(),
        uncompressed_size,
        created_unix: 0,
        midstates: Vec::new(),
    };
    let _ = worker.store.put_layer_blob(snapshot, variant, &record);
}

/// Downloads `blob` into the content store unless it is there (protected by the build's
/// lease either way).
async fn ensure_blob(
    worker: &BuildWorker,
    cache: &RemoteCache,
    blob: &Descriptor,
    source: &dyn CacheBlobSource,
) -> Result<(), WorkerError> {
    let content = worker.store.content();
    worker.lease.protect_blob(&blob.digest)?;
    if content.exists(&blob.digest) {
        return Ok(());
    }
    let download = cache.download_lock(&blob.digest);
    let _held = download.lock().await;
    if content.exists(&blob.digest) {
        return Ok(());
    }
    let mut writer = tokio::task::block_in_place(|| {
        let mut writer = content.writer(&worker.lease, Some((blob.digest.clone(), blob.size)))?;
        if writer.offset() != 0 {
            writer.restart()?;
        }
        Ok::<_, kiln_snapshotter::StoreError>(writer)
    })?;
    source.fetch(blob, &mut writer).await.map_err(|error| {
        format!(
            "downloading {} from {}: {error}",
            blob.digest,
            source.describe()
        )
    })?;
    tokio::task::block_in_place(|| writer.commit())?;
    cache.blobs_downloaded.fetch_add(1, Ordering::Relaxed);
    cache
        .bytes_downloaded
        .fetch_add(blob.size, Ordering::Relaxed);
    Ok(())
}

/// Fills the cache mount `id` (whose store directory is `mount_directory`, the contents
/// going to its `data`) from the imported cache, if it has that mount and `data` does not
/// exist yet. Failures leave the mount empty and are kept as warnings.
pub(crate) async fn restore_cache_mount(worker: &BuildWorker, id: &str, mount_directory: &Path) {
    let Some(cache) = worker.remote_cache.as_deref() else {
        return;
    };
    let Some(mount) = cache.cache_mount(id) else {
        return;
    };
    let data = mount_directory.join("data");
    if data.exists() {
        return;
    }
    if let Err(error) = restore_into(worker, cache, mount, mount_directory).await {
        cache.warn(format!("cache mount {id} not restored: {error}"));
    }
}

async fn restore_into(
    worker: &BuildWorker,
    cache: &RemoteCache,
    mount: &RemoteCacheMount,
    mount_directory: &Path,
) -> Result<(), WorkerError> {
    ensure_blob(worker, cache, &mount.blob, mount.source.as_ref()).await?;
    let store = worker.store.clone();
    let digest = mount.blob.digest.clone();
    let compression = media_type::layer_compression(&mount.blob.media_type)
        .unwrap_or(media_type::Compression::Gzip);
    let data = mount_directory.join("data");
    let staging = mount_directory.join(format!(".restore-{}", std::process::id()));
    tokio::task::spawn_blocking(move || -> Result<(), WorkerError> {
        if staging.exists() {
            std::fs::remove_dir_all(&staging)?;
        }
        std::fs::create_dir(&staging)?;
        let file = store.content().open(&digest)?;
        let result = apply_layer(
            file,
            compression,
            &staging,
            &ApplyOptions::new(WhiteoutMode::Apply),
        );
        if let Err(error) = result {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(error.into());
        }
        if data.exists() {
            // Another build filled it meanwhile: keep theirs.
            std::fs::remove_dir_all(&staging)?;
            return Ok(());
        }
        std::fs::rename(&staging, &data)?;
        Ok(())
    })
    .await??;
    Ok(())
}
