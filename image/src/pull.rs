//! `pull`: a reference from a registry into the store, unpacked and tagged.
//!
//! # How the layers flow
//! The manifest and config are stored first (verified). Then every layer not yet unpacked
//! is fetched by its own task, at most [`PullOptions::max_concurrent_downloads`] at once.
//! A layer snapshot can only be prepared on top of a committed parent (the store checks
//! the chain when the unpack directory is made), so:
//! - a layer whose parent is committed when its download starts is streamed: each chunk
//!   goes to the content store's writer and, at the same time, to an unpacker (one thread
//!   inflating, one hashing the diffID and writing files). One download, no second read;
//! - a layer whose parent is not committed yet is downloaded into the content store, and
//!   its task watches the parent: once the parent is committed, an unpacker starts on the
//!   bytes written so far (read back from the ingest file, still in the page cache) and
//!   then follows the download chunk by chunk;
//! - a layer whose download ended before its parent was committed is unpacked from the
//!   stored blob, in order, as soon as its parent is.
//!
//! # Safety against crashes and other processes
//! One lease covers everything the pull creates, so a concurrent `prune` deletes nothing in
//! flight. A download of a known digest goes to `content/ingest/<hex>`; if the process dies,
//! the next pull resumes from [`BlobWriter::offset`] with a `Range` request, feeding the bytes
//! already held to the unpacker first. The compressed digest is verified by the registry
//! client and again by the content store; the diffID by the unpacker against the config. A
//! blob whose bytes turned out wrong is truncated, never committed. Two processes pulling the
//! same image both finish: the store keeps whichever copy of a blob or snapshot commits
//! first and hands it to the other.

use std::fs::File;
use std::io::{Read, Take, Write};
use std::sync::{Arc, Mutex};

use bytes::{Buf, Bytes};
use futures_util::StreamExt as _;
use kiln_registry::{BlobProgress, Reference, RegistryClient, RegistryError};
use kiln_snapshotter::archive::{
    apply_layer, decompressing_reader, AppliedLayer, ApplyOptions, ArchiveError, Compression,
    WhiteoutMode,
};
use kiln_snapshotter::{
    chain_ids, BlobWriter, Lease, PreparedUnpack, SnapshotId, Store, UnpackDir, MAX_DOCUMENT_SIZE,
};
use kiln_types::{media_type, Descriptor, Digest, ImageSpec, Platform};
use tokio::sync::{mpsc, Semaphore};

use crate::error::{ImageError, Result};
use crate::progress::{LayerState, Progress, PullEvent};
use crate::reference::store_name;

/// Default number of layers downloaded at once (Docker's and containerd's default too).
pub const DEFAULT_CONCURRENT_DOWNLOADS: usize = 3;
/// Chunks buffered between a download and its unpacker.
const UNPACK_CHANNEL_CHUNKS: usize = 64;
/// Progress events during a download are sent at most once per this many bytes.
const PROGRESS_STEP: u64 = 256 * 1024;

/// How to pull.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PullOptions {
    /// The platform to pick from a multi-platform index (default: this machine's).
    pub platform: Option<Platform>,
    /// Layers downloaded at once.
    pub max_concurrent_downloads: usize,
    /// Tag the image in the store under the reference's name (default true).
    pub tag: bool,
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions {
            platform: None,
            max_concurrent_downloads: DEFAULT_CONCURRENT_DOWNLOADS,
            tag: true,
        }
    }
}

impl PullOptions {
    pub fn with_platform(mut self, platform: Option<Platform>) -> Self {
        self.platform = platform;
        self
    }

    pub fn with_max_concurrent_downloads(mut self, count: usize) -> Self {
        self.max_concurrent_downloads = count.max(1);
        self
    }

    pub fn with_tag(mut self, tag: bool) -> Self {
        self.tag = tag;
        self
    }
}

/// A pulled image.
#[derive(Debug, Clone)]
pub struct PulledImage {
    /// The name it was tagged under (`127.0.0.1:5000/busybox:latest`), if tagged.
    pub name: Option<String>,
    /// What the reference pointed at: the index digest for a multi-platform image.
    pub root_digest: Digest,
    /// The platform's manifest: the tag's target.
    pub manifest: Descriptor,
    pub config_digest: Digest,
    pub config: ImageSpec,
    /// Snapshot of each layer, bottom first.
    pub snapshots: Vec<SnapshotId>,
    /// Layers that were unpacked already.
    pub layers_existing: usize,
    /// Bytes received from the registry for layers.
    pub bytes_downloaded: u64,
}

impl PulledImage {
    /// The snapshot of the top layer (`None` for an image without layers).
    pub fn top_snapshot(&self) -> Option<&SnapshotId> {
        self.snapshots.last()
    }
}

/// One layer to fetch.
struct LayerPlan {
    index: usize,
    descriptor: Descriptor,
    diff_id: Digest,
    chain_id: Digest,
    compression: Compression,
    /// Its snapshot was committed before the pull started.
    unpacked: bool,
}

/// What a layer's fetch task achieved.
enum Fetched {
    /// Unpacked and committed (or found committed).
    Unpacked(SnapshotId),
    /// The blob is stored; unpacking is left to the in-order pass.
    Stored,
}

struct Context {
    store: Store,
    client: RegistryClient,
    reference: Reference,
    lease: Arc<Lease>,
    progress: Progress,
    layers: Vec<LayerPlan>,
    /// Committed snapshot of each layer, once known.
    committed: Mutex<Vec<Option<SnapshotId>>>,
    downloads: Semaphore,
    bytes_downloaded: std::sync::atomic::AtomicU64,
}

impl Context {
    fn committed(&self, index: usize) -> Option<SnapshotId> {
        self.committed
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(index)
            .cloned()
            .flatten()
    }

    fn set_committed(&self, index: usize, id: SnapshotId) {
        let mut committed = self
            .committed
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(slot) = committed.get_mut(index) {
            *slot = Some(id);
        }
    }

    fn layer_event(&self, plan: &LayerPlan, state: LayerState) {
        self.progress.emit(PullEvent::Layer {
            index: plan.index,
            digest: plan.descriptor.digest.clone(),
            size: plan.descriptor.size,
            state,
        });
    }
}

/// Pulls `reference` into `store`: resolves it (an index to `options.platform`, default the
/// host's), stores manifest and config, downloads and unpacks every missing layer (see the
/// module documentation), and tags the image under [`store_name`] of the reference.
pub async fn pull(
    store: &Store,
    client: &RegistryClient,
    reference: &Reference,
    options: &PullOptions,
    progress: &Progress,
) -> Result<PulledImage> {
    let lease = Arc::new(
        store
            .lease(&format!("pull {reference}"))
            .map_err(ImageError::store("taking a lease for the pull"))?,
    );
    let resolved = client
        .resolve(reference, options.platform.as_ref())
        .await
        .map_err(ImageError::registry(format!("resolving {reference}")))?;
    let manifest = &resolved.manifest;
    progress.emit(PullEvent::Resolved {
        reference: reference.to_string(),
        manifest: manifest.digest.clone(),
        layers: manifest.manifest.layers.len(),
    });
    let content = store.content();

    // The manifest, as fetched (its digest was verified by the client).
    store_document(store, &lease, &manifest.digest, &manifest.bytes)?;
    let manifest_descriptor = Descriptor::new(
        manifest.media_type.clone(),
        manifest.digest.clone(),
        manifest.bytes.len() as u64,
    );

    // The config: from the store if there, else from the registry.
    let config_descriptor = &manifest.manifest.config;
    lease
        .protect_blob(&config_descriptor.digest)
        .map_err(ImageError::store("protecting the image config"))?;
    let config_bytes = if content.exists(&config_descriptor.digest) {
        Bytes::from(
            content
                .read_bytes(&config_descriptor.digest, MAX_DOCUMENT_SIZE)
                .map_err(ImageError::store("reading the stored image config"))?,
        )
    } else {
        let bytes = client
            .fetch_blob_bytes(&resolved.reference, config_descriptor, MAX_DOCUMENT_SIZE)
            .await
            .map_err(ImageError::registry(format!(
                "fetching image config {}",
                config_descriptor.digest
            )))?;
        store_document(store, &lease, &config_descriptor.digest, &bytes)?;
        bytes
    };
    let config: ImageSpec =
        serde_json::from_slice(&config_bytes).map_err(|error| ImageError::BadConfig {
            digest: config_descriptor.digest.clone(),
            message: error.to_string(),
        })?;
    let diff_ids = &config.rootfs.diff_ids;
    if diff_ids.len() != manifest.manifest.layers.len() {
        return Err(ImageError::LayerCountMismatch {
            manifest: manifest.digest.clone(),
            layers: manifest.manifest.layers.len(),
            diff_ids: diff_ids.len(),
        });
    }

    let layers = plan_layers(store, &lease, &manifest.manifest.layers, diff_ids)?;
    let layer_count = layers.len();
    let mut committed = vec![None; layer_count];
    for plan in layers.iter().filter(|plan| plan.unpacked) {
        committed[plan.index] = store
            .snapshotter()
            .lookup(plan.chain_id.as_str())
            .map_err(ImageError::store("looking up a layer snapshot"))?;
    }
    let layers_existing = layers.iter().filter(|plan| plan.unpacked).count();
    let context = Arc::new(Context {
        store: store.clone(),
        client: client.clone(),
        reference: resolved.reference.clone(),
        lease: lease.clone(),
        progress: progress.clone(),
        layers,
        committed: Mutex::new(committed),
        downloads: Semaphore::new(options.max_concurrent_downloads.max(1)),
        bytes_downloaded: std::sync::atomic::AtomicU64::new(0),
    });

    let mut tasks = TaskSet(Vec::with_capacity(layer_count));
    for index in 0..layer_count {
        // A layer already unpacked waits for nothing: its only event is AlreadyExists (as
        // Docker shows it).
        if !context.layers[index].unpacked {
            context.layer_event(&context.layers[index], LayerState::Waiting);
        }
        let context = context.clone();
        tasks.0.push(tokio::spawn(
            async move { fetch_layer(&context, index).await },
        ));
    }
    let mut snapshots = Vec::with_capacity(layer_count);
    for index in 0..layer_count {
        let handle = &mut tasks.0[index];
        let fetched = handle.await.map_err(ImageError::task)??;
        let plan = &context.layers[index];
        let id = match fetched {
            Fetched::Unpacked(id) => id,
            Fetched::Stored => match context.committed(index) {
                Some(id) if plan.unpacked => id,
                _ => unpack_in_order(&context, index).await?,
            },
        };
        context.set_committed(index, id.clone());
        if !plan.unpacked {
            context.layer_event(plan, LayerState::Done);
        }
        snapshots.push(id);
    }

    let name = if options.tag {
        let name = store_name(reference);
        store
            .put_image(&name, &manifest_descriptor)
            .map_err(ImageError::store(format!("tagging {name}")))?;
        progress.emit(PullEvent::Tagged { name: name.clone() });
        Some(name)
    } else {
        None
    };
    let bytes_downloaded = context
        .bytes_downloaded
        .load(std::sync::atomic::Ordering::Relaxed);
    drop(context);
    Ok(PulledImage {
        name,
        root_digest: resolved.root_digest.clone(),
        manifest: manifest_descriptor,
        config_digest: config_descriptor.digest.clone(),
        config,
        snapshots,
        layers_existing,
        bytes_downloaded,
    })
}

/// Aborts the layer tasks still running when a pull returns early.
struct TaskSet(Vec<tokio::task::JoinHandle<Result<Fetched>>>);

impl Drop for TaskSet {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// Stores a small verified document (manifest, config) unless it is there; protects it.
fn store_document(store: &Store, lease: &Lease, digest: &Digest, bytes: &[u8]) -> Result<()> {
    lease
        .protect_blob(digest)
        .map_err(ImageError::store(format!("protecting {digest}")))?;
    if !store.content().exists(digest) {
        store
            .content()
            .put_bytes(lease, bytes, Some(digest))
            .map_err(ImageError::store(format!("storing {digest}")))?;
    }
    Ok(())
}

/// Works out each layer's chain id and whether it is unpacked already. The topmost
/// committed chain id protects (through its ancestors) every layer below it.
fn plan_layers(
    store: &Store,
    lease: &Lease,
    descriptors: &[Descriptor],
    diff_ids: &[Digest],
) -> Result<Vec<LayerPlan>> {
    let chains = chain_ids(diff_ids);
    let snapshotter = store.snapshotter();
    let mut present_top: Option<usize> = None;
    for index in (0..chains.len()).rev() {
        let found = snapshotter
            .lookup(chains[index].as_str())
            .map_err(ImageError::store("looking up a layer snapshot"))?;
        if let Some(id) = found {
            lease
                .protect_snapshot(&id)
                .map_err(ImageError::store("protecting a layer snapshot"))?;
            // A prune may have removed it between the lookup and the protection.
            let still = snapshotter
                .lookup(chains[index].as_str())
                .map_err(ImageError::store("looking up a layer snapshot"))?;
            if still.as_ref() == Some(&id) {
                present_top = Some(index);
                break;
            }
        }
    }
    descriptors
        .iter()
        .zip(diff_ids)
        .zip(chains)
        .enumerate()
        .map(|(index, ((descriptor, diff_id), chain_id))| {
            let compression =
                media_type::layer_compression(&descriptor.media_type).ok_or_else(|| {
                    ImageError::UnsupportedLayer {
                        digest: descriptor.digest.clone(),
                        media_type: descriptor.media_type.clone(),
                    }
                })?;
            Ok(LayerPlan {
                index,
                descriptor: descriptor.clone(),
                diff_id: diff_id.clone(),
                chain_id,
                compression,
                unpacked: present_top.is_some_and(|top| index <= top),
            })
        })
        .collect()
}

/// One layer's task: download (streaming into the unpacker when the parent is ready).
async fn fetch_layer(context: &Arc<Context>, index: usize) -> Result<Fetched> {
    let _permit = context
        .downloads
        .acquire()
        .await
        .map_err(|error| ImageError::Task {
            message: error.to_string(),
        })?;
    let plan = &context.layers[index];
    let content = context.store.content();
    let blob_present = {
        context
            .lease
            .protect_blob(&plan.descriptor.digest)
            .map_err(ImageError::store("protecting a layer blob"))?;
        content.exists(&plan.descriptor.digest)
    };
    if plan.unpacked {
        if blob_present {
            context.layer_event(plan, LayerState::AlreadyExists);
        } else {
            download(context, plan, None, false).await?;
            context.layer_event(plan, LayerState::AlreadyExists);
        }
        return Ok(Fetched::Stored);
    }
    // The parent is ready when this is the bottom layer or the one below is committed.
    let parent = if index == 0 {
        Some(None)
    } else {
        context.committed(index - 1).map(Some)
    };
    if let Some(parent) = parent {
        match prepare(context, plan, parent).await? {
            PreparedUnpack::Existing(id) => {
                if !blob_present {
                    download(context, plan, None, false).await?;
                }
                context.set_committed(index, id.clone());
                return Ok(Fetched::Unpacked(id));
            }
            PreparedUnpack::New(directory) => {
                let id = if blob_present {
                    context.layer_event(plan, LayerState::Extracting);
                    apply_stored(context.clone(), index, directory).await?
                } else {
                    match download(context, plan, Some(directory), false).await? {
                        Some(id) => id,
                        None => {
                            return Err(ImageError::Task {
                                message: "the unpacker gave no snapshot".into(),
                            })
                        }
                    }
                };
                context.set_committed(index, id.clone());
                return Ok(Fetched::Unpacked(id));
            }
        }
    }
    if !blob_present {
        // Joins in as an unpacker once the parent is committed, if that happens before the
        // download ends.
        if let Some(id) = download(context, plan, None, true).await? {
            context.set_committed(index, id.clone());
            return Ok(Fetched::Unpacked(id));
        }
    }
    context.layer_event(plan, LayerState::Downloaded);
    Ok(Fetched::Stored)
}

/// Unpacks a stored layer blob on top of its (now committed) parent.
async fn unpack_in_order(context: &Arc<Context>, index: usize) -> Result<SnapshotId> {
    let plan = &context.layers[index];
    let parent = if index == 0 {
        None
    } else {
        Some(
            context
                .committed(index - 1)
                .ok_or_else(|| ImageError::Task {
                    message: format!("layer {index} has no committed parent"),
                })?,
        )
    };
    match prepare(context, plan, parent).await? {
        PreparedUnpack::Existing(id) => Ok(id),
        PreparedUnpack::New(directory) => {
            context.layer_event(plan, LayerState::Extracting);
            apply_stored(context.clone(), index, directory).await
        }
    }
}

async fn prepare(
    context: &Arc<Context>,
    plan: &LayerPlan,
    parent: Option<SnapshotId>,
) -> Result<PreparedUnpack> {
    let snapshotter = context.store.snapshotter();
    let lease = context.lease.clone();
    let key = plan.chain_id.to_string();
    tokio::task::spawn_blocking(move || {
        snapshotter
            .prepare_unpack(&lease, &key, parent.as_ref())
            .map_err(ImageError::store("preparing a layer snapshot"))
    })
    .await
    .map_err(ImageError::task)?
}

fn apply_options(plan: &LayerPlan) -> ApplyOptions {
    let mut options = ApplyOptions::new(WhiteoutMode::Overlay);
    options.expected_diff_id = Some(plan.diff_id.clone());
    options
}

/// Applies the stored blob of layer `index` into `directory` and commits it.
async fn apply_stored(
    context: Arc<Context>,
    index: usize,
    directory: UnpackDir,
) -> Result<SnapshotId> {
    tokio::task::spawn_blocking(move || {
        let plan = &context.layers[index];
        let file = context
            .store
            .content()
            .open(&plan.descriptor.digest)
            .map_err(ImageError::store("opening a stored layer"))?;
        let applied = apply_layer(
            decompress_on_thread(file, plan.compression),
            Compression::Uncompressed,
            directory.path(),
            &apply_options(plan),
        )
        .map_err(|source| ImageError::Unpack {
            digest: plan.descriptor.digest.clone(),
            source,
        })?;
        commit_unpack(directory, &applied)
    })
    .await
    .map_err(ImageError::task)?
}

fn commit_unpack(directory: UnpackDir, applied: &AppliedLayer) -> Result<SnapshotId> {
    directory
        .commit(
            Some(applied.diff_id.clone()),
            Some(applied.uncompressed_size),
        )
        .map_err(ImageError::store("committing a layer snapshot"))
}

/// Opens the first `length` bytes of a blob writer's ingest file.
fn open_prefix(writer: &BlobWriter, length: u64) -> std::io::Result<Take<File>> {
    Ok(File::open(writer.ingest_path())?.take(length))
}

/// A running unpacker: its input channel and its thread.
struct Unpacker {
    sender: mpsc::Sender<Bytes>,
    handle: tokio::task::JoinHandle<(UnpackDir, std::result::Result<AppliedLayer, ArchiveError>)>,
}

/// Starts unpacking into `directory`: first the `prefix` bytes already written, then the
/// chunks sent to the returned channel.
fn start_unpacker(plan: &LayerPlan, directory: UnpackDir, prefix: Option<Take<File>>) -> Unpacker {
    let (sender, receiver) = mpsc::channel::<Bytes>(UNPACK_CHANNEL_CHUNKS);
    let compression = plan.compression;
    let options = apply_options(plan);
    let handle = tokio::task::spawn_blocking(move || {
        let reader = ChannelReader {
            prefix,
            receiver,
            current: Bytes::new(),
        };
        let applied = apply_layer(
            decompress_on_thread(reader, compression),
            Compression::Uncompressed,
            directory.path(),
            &options,
        );
        (directory, applied)
    });
    Unpacker { sender, handle }
}

/// Downloads a layer blob into the content store, resuming a partial one. With a
/// directory, the bytes also stream into the unpacker. With `join_late`, the layer's
/// parent is watched while downloading: once it is committed, an unpacker starts on the
/// bytes written so far (read back from the ingest file) and follows the download. Returns
/// the committed snapshot when the layer was unpacked (or found unpacked).
async fn download(
    context: &Arc<Context>,
    plan: &LayerPlan,
    unpack: Option<UnpackDir>,
    join_late: bool,
) -> Result<Option<SnapshotId>> {
    let store = &context.store;
    let digest = plan.descriptor.digest.clone();
    let mut writer = store
        .content()
        .writer(&context.lease, Some((digest.clone(), plan.descriptor.size)))
        .map_err(ImageError::store(format!("opening a writer for {digest}")))?;
    let mut resumed_from = writer.offset();
    let mut blob_progress = BlobProgress::new();
    if resumed_from > 0 {
        let prefix = open_prefix(&writer, resumed_from)
            .and_then(BlobProgress::from_prefix)
            .ok()
            .filter(|progress| progress.offset() == resumed_from);
        match prefix {
            Some(progress) => blob_progress = progress,
            None => {
                writer
                    .restart()
                    .map_err(ImageError::store(format!("restarting {digest}")))?;
                resumed_from = 0;
            }
        }
    }
    let mut unpacker = match unpack {
        Some(directory) => {
            let prefix = if resumed_from > 0 {
                Some(
                    open_prefix(&writer, resumed_from).map_err(ImageError::io(format!(
                        "reading the partial download of {digest}"
                    )))?,
                )
            } else {
                None
            };
            Some(start_unpacker(plan, directory, prefix))
        }
        None => None,
    };
    // Set when a late join found the layer unpacked by someone else.
    let mut found_unpacked: Option<SnapshotId> = None;
    let mut watch_parent = join_late && unpacker.is_none() && plan.index > 0;

    let mut downloaded = resumed_from;
    let mut reported = 0u64;
    let state = |downloaded: u64, unpacking: bool| LayerState::Downloading {
        downloaded,
        resumed_from,
        unpacking,
    };
    context.layer_event(plan, state(downloaded, unpacker.is_some()));
    let mut stream = Box::pin(context.client.blob_stream(
        &context.reference,
        &plan.descriptor,
        blob_progress,
    ));
    let mut download_error: Option<ImageError> = None;
    while let Some(item) = stream.next().await {
        let chunk = match item {
            Ok(chunk) => chunk,
            Err(error) => {
                download_error = Some(download_failed(&mut writer, &digest, error));
                break;
            }
        };
        if let Err(error) = writer.write_all(&chunk) {
            download_error = Some(ImageError::Io {
                action: format!("writing {digest} to the content store"),
                source: error,
            });
            break;
        }
        downloaded += chunk.len() as u64;
        context
            .bytes_downloaded
            .fetch_add(chunk.len() as u64, std::sync::atomic::Ordering::Relaxed);
        if watch_parent {
            if let Some(parent) = context.committed(plan.index - 1) {
                watch_parent = false;
                match prepare(context, plan, Some(parent)).await {
                    Ok(PreparedUnpack::Existing(id)) => found_unpacked = Some(id),
                    Ok(PreparedUnpack::New(directory)) => {
                        // The bytes so far, this chunk included, are in the ingest file.
                        match open_prefix(&writer, downloaded) {
                            Ok(prefix) => {
                                unpacker = Some(start_unpacker(plan, directory, Some(prefix)));
                                reported = 0;
                            }
                            // Unpacked from the stored blob after the download instead.
                            Err(_) => drop(directory),
                        }
                    }
                    Err(error) => {
                        download_error = Some(error);
                        break;
                    }
                }
                continue;
            }
        }
        if downloaded - reported >= PROGRESS_STEP || downloaded == plan.descriptor.size {
            reported = downloaded;
            context.layer_event(plan, state(downloaded, unpacker.is_some()));
        }
        if let Some(unpacker) = &unpacker {
            if unpacker.sender.send(chunk).await.is_err() {
                // The unpacker stopped: its error says why.
                break;
            }
        }
    }
    drop(stream);
    let unpacker = unpacker.map(|unpacker| {
        drop(unpacker.sender);
        unpacker.handle
    });

    // Commit the verified blob while the unpacker finishes.
    let mut writer = Some(writer);
    let commit = if download_error.is_none() && downloaded == plan.descriptor.size {
        let commit_digest = digest.clone();
        writer
            .take()
            .map(|writer| tokio::task::spawn_blocking(move || commit_blob(writer, &commit_digest)))
    } else {
        None
    };
    let unpacked = match unpacker {
        Some(handle) => Some(handle.await.map_err(ImageError::task)?),
        None => None,
    };
    if let Some(error) = download_error {
        return Err(error);
    }
    if let Some((_, Err(source))) = unpacked {
        // The unpacker may have failed on bytes that are wrong (a corrupt stream fails to
        // decompress before its digest can be checked): keep no unverified prefix to
        // resume from.
        if let Some(mut writer) = writer.take() {
            let _ = writer.restart();
        }
        return Err(ImageError::Unpack { digest, source });
    }
    match commit {
        Some(commit) => commit.await.map_err(ImageError::task)??,
        None => {
            return Err(ImageError::Registry {
                action: format!("downloading {digest}"),
                source: RegistryError::SizeMismatch {
                    digest: digest.clone(),
                    expected: plan.descriptor.size,
                    found: downloaded,
                },
            })
        }
    }
    match unpacked {
        Some((directory, Ok(applied))) => {
            tokio::task::spawn_blocking(move || commit_unpack(directory, &applied))
                .await
                .map_err(ImageError::task)?
                .map(Some)
        }
        _ => Ok(found_unpacked),
    }
}

fn commit_blob(writer: BlobWriter, digest: &Digest) -> Result<()> {
    writer
        .commit()
        .map(|_| ())
        .map_err(ImageError::store(format!("storing layer {digest}")))
}

/// A failed download: bytes known to be wrong are dropped so that no later pull resumes
/// from them.
fn download_failed(writer: &mut BlobWriter, digest: &Digest, error: RegistryError) -> ImageError {
    if matches!(
        error,
        RegistryError::DigestMismatch { .. } | RegistryError::SizeMismatch { .. }
    ) {
        let _ = writer.restart();
    }
    ImageError::Registry {
        action: format!("downloading layer {digest}"),
        source: error,
    }
}

/// Bytes of decompressed stream handed over at once.
const INFLATED_CHUNK: usize = 256 * 1024;
/// Decompressed chunks buffered between the inflating thread and the unpacker.
const INFLATED_CHUNKS: usize = 8;

/// Decompresses `reader` on a thread of its own, so that inflating and the unpacker's
/// hashing (the diffID) and file writes run on two cores at once: with one thread for all
/// three, that thread was the slowest stage of a pull. Falls back to decompressing in the
/// caller's thread if no thread can be started.
fn decompress_on_thread<R: Read + Send + 'static>(
    reader: R,
    compression: Compression,
) -> Box<dyn Read + Send> {
    if compression == Compression::Uncompressed {
        return Box::new(reader);
    }
    let (sender, receiver) =
        std::sync::mpsc::sync_channel::<std::io::Result<Vec<u8>>>(INFLATED_CHUNKS);
    let slot = Arc::new(Mutex::new(Some(reader)));
    let thread_slot = slot.clone();
    let started = std::thread::Builder::new()
        .name("kiln-inflate".into())
        .spawn(move || {
            let taken = thread_slot
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .take();
            let Some(reader) = taken else { return };
            let mut decoder = match decompressing_reader(reader, compression) {
                Ok(decoder) => decoder,
                Err(error) => {
                    let _ = sender.send(Err(error));
                    return;
                }
            };
            loop {
                let mut buffer = vec![0u8; INFLATED_CHUNK];
                let mut filled = 0;
                while filled < buffer.len() {
                    match decoder.read(&mut buffer[filled..]) {
                        Ok(0) => break,
                        Ok(read) => filled += read,
                        Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(error) => {
                            let _ = sender.send(Err(error));
                            return;
                        }
                    }
                }
                if filled == 0 {
                    return;
                }
                buffer.truncate(filled);
                if sender.send(Ok(buffer)).is_err() {
                    return;
                }
            }
        });
    if started.is_err() {
        let taken = slot
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(reader) = taken {
            return match decompressing_reader(reader, compression) {
                Ok(decoder) => Box::new(decoder),
                Err(error) => Box::new(FailingReader(Some(error))),
            };
        }
    }
    Box::new(InflatedReader {
        receiver,
        current: Vec::new(),
        position: 0,
    })
}

/// The unpacker's side of [`decompress_on_thread`].
struct InflatedReader {
    receiver: std::sync::mpsc::Receiver<std::io::Result<Vec<u8>>>,
    current: Vec<u8>,
    position: usize,
}

impl Read for InflatedReader {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        while self.position == self.current.len() {
            match self.receiver.recv() {
                Ok(Ok(chunk)) => {
                    self.current = chunk;
                    self.position = 0;
                }
                Ok(Err(error)) => return Err(error),
                // The inflating thread finished: end of stream.
                Err(_) => return Ok(0),
            }
        }
        let length = buffer.len().min(self.current.len() - self.position);
        buffer[..length].copy_from_slice(&self.current[self.position..self.position + length]);
        self.position += length;
        Ok(length)
    }
}

/// A reader that fails once with the error it holds.
struct FailingReader(Option<std::io::Error>);

impl Read for FailingReader {
    fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
        match self.0.take() {
            Some(error) => Err(error),
            None => Ok(0),
        }
    }
}

/// The unpacker's input: the bytes a resumed download already held, then the chunks as
/// they arrive. End of stream when the download side drops its sender.
struct ChannelReader {
    prefix: Option<Take<File>>,
    receiver: mpsc::Receiver<Bytes>,
    current: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        if buffer.is_empty() {
            return Ok(0);
        }
        if let Some(prefix) = &mut self.prefix {
            let read = prefix.read(buffer)?;
            if read > 0 {
                return Ok(read);
            }
            self.prefix = None;
        }
        while self.current.is_empty() {
            match self.receiver.blocking_recv() {
                Some(chunk) => self.current = chunk,
                None => return Ok(0),
            }
        }
        let length = buffer.len().min(self.current.len());
        buffer[..length].copy_from_slice(&self.current[..length]);
        self.current.advance(length);
        Ok(length)
    }
}
