//! `kiln build --cache-from` / `--cache-to`: the options parsed, caches read into the worker's
//! `RemoteCache` before the solve (documents only, no layer downloaded), and the build's
//! records written after the image is built: to a directory, a registry or inline in the
//! image config.
//!
//! Which records: `mode=min` (the default, as BuildKit) the steps whose results are the
//! final image's layers; `mode=max` every step of every stage the build solved. Content
//! checksums (`COPY --from`) of every step go along in both modes, so a `min` cache still
//! spares a fresh machine the stages the final image copies from. Each record's layers are
//! the image's own blobs where the image has them (base layers as the registry serves them,
//! new layers as exported once), other snapshots exported with the same layer options.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, bail, Context};
use kiln_exporter::cache::{
    self as cache_format, CacheConfig, CacheConfigBuilder, ChainLayer, DEFAULT_CACHE_TAG,
};
use kiln_exporter::{BuiltImage, LayerExporter, LayerOptions};
use kiln_frontend::convert::{ConvertResult, StageBase};
use kiln_frontend::dag;
use kiln_registry::{BlobProgress, Reference, RegistryClient};
use kiln_snapshotter::{BlobWriter, SnapshotId, Store, MAX_DOCUMENT_SIZE};
use kiln_solver::{CacheKey, Graph, WorkerError};
use kiln_types::{Descriptor, Digest, ImageSpec};
use kiln_worker::graph::WorkerOp;
use kiln_worker::images::BoxFuture;
use kiln_worker::{
    BuildWorker, CacheBlobSource, RemoteCache, RemoteCacheMount, RemoteLayer, RemoteRecord, Value,
};

use crate::commands::build::BuildArgs;

/// Which records a cache export holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheMode {
    Min,
    Max,
}

/// Where a cache goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheDestination {
    Local { directory: PathBuf, tag: String },
    Registry { reference: Reference },
    Inline,
}

/// One `--cache-to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheTo {
    pub destination: CacheDestination,
    pub mode: CacheMode,
    /// Also export the `RUN --mount=type=cache` directories the build used.
    pub cache_mounts: bool,
    /// A failed export is a warning, not a failed build.
    pub ignore_error: bool,
}

/// One `--cache-from`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheFrom {
    Local {
        directory: PathBuf,
        tag: String,
    },
    /// A cache manifest, or an image with an inline cache.
    Registry {
        reference: Reference,
    },
}

fn fields(spec: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for field in spec.split(',').filter(|field| !field.is_empty()) {
        let (key, value) = field
            .split_once('=')
            .ok_or_else(|| anyhow!("{field:?} is not KEY=VALUE"))?;
        out.insert(key.trim().to_ascii_lowercase(), value.trim().to_string());
    }
    Ok(out)
}

fn parse_bool(key: &str, value: &str) -> anyhow::Result<bool> {
    match value {
        "true" | "1" | "" => Ok(true),
        "false" | "0" => Ok(false),
        other => bail!("{key}={other}: expected true or false"),
    }
}

/// Parses `--cache-to`: `type=local,dest=DIR[,tag=T]`, `type=registry,ref=REF`,
/// `type=inline`, each with `mode=min|max`, `cache-mounts=true`, `ignore-error=true`.
pub fn parse_cache_to(spec: &str) -> anyhow::Result<CacheTo> {
    let fields = fields(spec).with_context(|| format!("--cache-to {spec}"))?;
    let mut mode = CacheMode::Min;
    let mut cache_mounts = false;
    let mut ignore_error = false;
    for (key, value) in &fields {
        match key.as_str() {
            "type" | "dest" | "ref" | "tag" => {}
            "mode" => {
                mode = match value.as_str() {
                    "min" => CacheMode::Min,
                    "max" => CacheMode::Max,
                    other => bail!("--cache-to {spec}: mode={other}: expected min or max"),
                }
            }
            "cache-mounts" => cache_mounts = parse_bool(key, value)?,
            "ignore-error" => ignore_error = parse_bool(key, value)?,
            other => bail!("--cache-to {spec}: unknown option {other:?}"),
        }
    }
    let destination = match fields.get("type").map(String::as_str) {
        Some("local") => CacheDestination::Local {
            directory: PathBuf::from(
                fields
                    .get("dest")
                    .ok_or_else(|| anyhow!("--cache-to {spec}: type=local needs dest=DIR"))?,
            ),
            tag: fields
                .get("tag")
                .cloned()
                .unwrap_or_else(|| DEFAULT_CACHE_TAG.to_string()),
        },
        Some("registry") => CacheDestination::Registry {
            reference: parse_reference(
                fields
                    .get("ref")
                    .ok_or_else(|| anyhow!("--cache-to {spec}: type=registry needs ref=REF"))?,
            )?,
        },
        Some("inline") => CacheDestination::Inline,
        Some(other) => bail!("--cache-to {spec}: type={other}: expected local, registry or inline"),
        None => bail!("--cache-to {spec}: type= is required"),
    };
    if destination == CacheDestination::Inline && cache_mounts {
        bail!("--cache-to {spec}: an inline cache cannot hold cache mounts");
    }
    Ok(CacheTo {
        destination,
        mode,
        cache_mounts,
        ignore_error,
    })
}

/// Parses `--cache-from`: `type=local,src=DIR[,tag=T]`, `type=registry,ref=REF`, or a bare
/// `REF` (a cache manifest or an image with inline cache).
pub fn parse_cache_from(spec: &str) -> anyhow::Result<CacheFrom> {
    if !spec.contains('=') {
        return Ok(CacheFrom::Registry {
            reference: parse_reference(spec)?,
        });
    }
    let fields = fields(spec).with_context(|| format!("--cache-from {spec}"))?;
    for key in fields.keys() {
        if !matches!(key.as_str(), "type" | "src" | "ref" | "tag") {
            bail!("--cache-from {spec}: unknown option {key:?}");
        }
    }
    match fields.get("type").map(String::as_str) {
        Some("local") => Ok(CacheFrom::Local {
            directory: PathBuf::from(
                fields
                    .get("src")
                    .ok_or_else(|| anyhow!("--cache-from {spec}: type=local needs src=DIR"))?,
            ),
            tag: fields
                .get("tag")
                .cloned()
                .unwrap_or_else(|| DEFAULT_CACHE_TAG.to_string()),
        }),
        Some("registry") | None => Ok(CacheFrom::Registry {
            reference: parse_reference(
                fields
                    .get("ref")
                    .ok_or_else(|| anyhow!("--cache-from {spec}: ref=REF is required"))?,
            )?,
        }),
        Some(other) => bail!("--cache-from {spec}: type={other}: expected local or registry"),
    }
}

fn parse_reference(text: &str) -> anyhow::Result<Reference> {
    kiln_image::parse_reference(text).with_context(|| format!("invalid reference {text:?}"))
}

/// `SOURCE_DATE_EPOCH` from kiln's environment (a `--build-arg` wins in the frontend).
pub fn source_date_epoch_from_env() -> anyhow::Result<Option<i64>> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(text) if text.trim().is_empty() => Ok(None),
        Ok(text) => text
            .trim()
            .parse::<i64>()
            .map(Some)
            .map_err(|_| anyhow!("invalid SOURCE_DATE_EPOCH {text:?}: seconds since 1970")),
        Err(_) => Ok(None),
    }
}

/// The layer options of the build's image, and of its cache's layers (the same, so each
/// snapshot is compressed once and the cache shares the image's blobs).
pub fn layer_options(converted: &ConvertResult, args: &BuildArgs) -> anyhow::Result<LayerOptions> {
    crate::commands::build_output::store_layer_options(&args.outputs, converted.source_date_epoch)
}

fn warn(message: &str) {
    let _ = writeln!(std::io::stderr().lock(), "warning: {message}");
}

/// Cache keys by vertex, as the solver announced them.
#[derive(Debug, Clone, Default)]
pub struct KeyLog {
    keys: Arc<Mutex<HashMap<usize, CacheKey>>>,
}

impl KeyLog {
    pub fn record(&self, vertex: usize, key: &CacheKey) {
        self.lock().insert(vertex, key.clone());
    }

    fn snapshot(&self) -> HashMap<usize, CacheKey> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<usize, CacheKey>> {
        self.keys.lock().unwrap_or_else(|p| p.into_inner())
    }
}

// ---------------------------------------------------------------------------------------
// Import

/// A cache directory's blobs.
struct LocalBlobs {
    directory: PathBuf,
}

impl CacheBlobSource for LocalBlobs {
    fn describe(&self) -> String {
        format!("cache directory {}", self.directory.display())
    }

    fn fetch<'a>(
        &'a self,
        blob: &'a Descriptor,
        writer: &'a mut BlobWriter,
    ) -> BoxFuture<'a, Result<(), WorkerError>> {
        Box::pin(async move {
            let path = cache_format::local_blob_path(&self.directory, &blob.digest);
            tokio::task::block_in_place(|| -> Result<(), WorkerError> {
                let mut file = std::fs::File::open(&path)
                    .map_err(|error| format!("opening {}: {error}", path.display()))?;
                std::io::copy(&mut file, writer)
                    .map_err(|error| format!("reading {}: {error}", path.display()))?;
                Ok(())
            })
        })
    }
}

/// A registry repository's blobs.
struct RegistryBlobs {
    client: RegistryClient,
    reference: Reference,
}

impl CacheBlobSource for RegistryBlobs {
    fn describe(&self) -> String {
        format!("registry {}", self.reference)
    }

    fn fetch<'a>(
        &'a self,
        blob: &'a Descriptor,
        writer: &'a mut BlobWriter,
    ) -> BoxFuture<'a, Result<(), WorkerError>> {
        Box::pin(async move {
            self.client
                .pull_blob_to_writer(&self.reference, blob, BlobProgress::new(), writer)
                .await?;
            Ok(())
        })
    }
}

/// Adds a cache config's records, checksums and cache mounts (blobs from `source`).
fn add_config(cache: &mut RemoteCache, config: &CacheConfig, source: Arc<dyn CacheBlobSource>) {
    let layer = |layer: &cache_format::CacheLayer| RemoteLayer {
        blob: layer.blob.clone(),
        diff_id: layer.diff_id.clone(),
        variant: layer.variant.clone(),
        empty: layer.empty,
        source: source.clone(),
    };
    for record in &config.records {
        let outputs = record
            .outputs
            .iter()
            .map(|output| match output.layer {
                Some(top) => config.chain(top).into_iter().map(layer).collect(),
                None => Vec::new(),
            })
            .collect();
        cache.add_record(record.key.clone(), RemoteRecord { outputs });
    }
    for checksum in &config.checksums {
        cache.add_checksum(
            checksum.key.clone(),
            checksum.selector.clone(),
            checksum.checksum.clone(),
        );
    }
    for mount in &config.cache_mounts {
        cache.add_cache_mount(
            mount.id.clone(),
            RemoteCacheMount {
                blob: mount.blob.clone(),
                source: source.clone(),
            },
        );
    }
}

/// Checks every `--cache-to`, reads every `--cache-from` (documents only) and gives the
/// worker the records. A cache that is missing or unreadable is a warning: the build runs
/// without it.
pub async fn import_caches(
    worker: BuildWorker,
    args: &BuildArgs,
    client: &RegistryClient,
) -> anyhow::Result<BuildWorker> {
    // Bad --cache-to options fail the build before it starts, not after.
    for spec in &args.cache_to {
        parse_cache_to(spec)?;
    }
    if args.cache_from.is_empty() {
        return Ok(worker);
    }
    let mut cache = RemoteCache::new();
    for spec in &args.cache_from {
        let from = parse_cache_from(spec)?;
        let (config, source): (_, Arc<dyn CacheBlobSource>) = match &from {
            CacheFrom::Local { directory, tag } => {
                let directory_copy = directory.clone();
                let tag = tag.clone();
                let config = tokio::task::block_in_place(|| {
                    cache_format::import_local(&directory_copy, &tag)
                });
                (
                    config,
                    Arc::new(LocalBlobs {
                        directory: directory.clone(),
                    }),
                )
            }
            CacheFrom::Registry { reference } => (
                cache_format::import_registry(client, reference).await,
                Arc::new(RegistryBlobs {
                    client: client.clone(),
                    reference: reference.clone(),
                }),
            ),
        };
        match config {
            Ok(Some(config)) => add_config(&mut cache, &config, source),
            Ok(None) => warn(&format!("--cache-from {spec}: no cache found")),
            Err(error) => warn(&format!(
                "--cache-from {spec}: {:#}",
                anyhow::Error::from(error)
            )),
        }
    }
    Ok(worker.with_remote_cache(Arc::new(cache)))
}

/// When every step came from an imported cache, the target's base image was never pulled,
/// so the store has its layers (unpacked from the cache) but not its manifest and config:
/// fetch those two documents (no layer) and tag the base, as a pull would have, so the image
/// is exported on top of the base's own blobs, exactly as on the machine that made the cache.
pub async fn prepare_base_image(
    worker: &BuildWorker,
    converted: &ConvertResult,
    client: &RegistryClient,
) {
    if worker.remote_cache().is_none() {
        return;
    }
    if let Err(error) = try_prepare_base_image(worker, converted, client).await {
        warn(&format!("base image not recorded: {error:#}"));
    }
}

async fn try_prepare_base_image(
    worker: &BuildWorker,
    converted: &ConvertResult,
    client: &RegistryClient,
) -> anyhow::Result<()> {
    let store = worker.store();
    let stage = converted.target_stage();
    let mut base = &stage.base;
    for _ in 0..=converted.stages.len() {
        match base {
            StageBase::Stage(index) => match converted.stages.get(*index) {
                Some(stage) => base = &stage.base,
                None => return Ok(()),
            },
            _ => break,
        }
    }
    let StageBase::Image { reference, .. } = base else {
        return Ok(());
    };
    let name = kiln_image::normalize_name(reference)?;
    if store.image(&name)?.is_some() {
        return Ok(());
    }
    let parsed = parse_reference(reference)?;
    let resolved = client.resolve(&parsed, Some(&stage.platform)).await?;
    let manifest = &resolved.manifest;
    let config_bytes = client
        .fetch_blob_bytes(
            &resolved.reference,
            &manifest.manifest.config,
            MAX_DOCUMENT_SIZE,
        )
        .await?;
    let config: ImageSpec = serde_json::from_slice(&config_bytes)?;
    let diff_ids = &config.rootfs.diff_ids;
    if diff_ids.len() != manifest.manifest.layers.len() {
        return Ok(());
    }
    // Only if the build has every layer: unpacked under its chain id, and its blob.
    for (chain_id, layer) in kiln_snapshotter::chain_ids(diff_ids)
        .iter()
        .zip(&manifest.manifest.layers)
    {
        let Some(snapshot) = store.snapshotter().lookup(chain_id.as_str())? else {
            return Ok(());
        };
        worker.lease().protect_snapshot(&snapshot)?;
        worker.lease().protect_blob(&layer.digest)?;
        if !store.content().exists(&layer.digest) {
            return Ok(());
        }
    }
    let lease = worker.lease();
    store
        .content()
        .put_bytes(lease, &config_bytes, Some(&manifest.manifest.config.digest))?;
    store
        .content()
        .put_bytes(lease, &manifest.bytes, Some(&manifest.digest))?;
    let descriptor = Descriptor::new(
        manifest.media_type.clone(),
        manifest.digest.clone(),
        manifest.bytes.len() as u64,
    );
    store.put_image(&name, &descriptor)?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Export

/// A blob a cache needs, and where it can be had if the content store lacks it.
struct NeededBlob {
    source: Option<Arc<dyn CacheBlobSource>>,
}

/// Gathers the layers of records.
struct ExportPlan<'a> {
    worker: &'a BuildWorker,
    options: &'a LayerOptions,
    /// A snapshot's layer, known from the image or exported.
    layers: HashMap<SnapshotId, ChainLayer>,
    blobs: HashMap<Digest, NeededBlob>,
    /// Where a blob may be mounted from (a registry image holding it).
    mount_from: HashMap<Digest, Reference>,
}

impl ExportPlan<'_> {
    fn layer_of(&mut self, snapshot: &SnapshotId) -> anyhow::Result<ChainLayer> {
        if let Some(found) = self.layers.get(snapshot) {
            return Ok(found.clone());
        }
        let exporter = LayerExporter::new(self.worker.store());
        let exported = tokio::task::block_in_place(|| {
            exporter.layer_for_snapshot(self.worker.lease(), snapshot, self.options)
        })?;
        let layer = ChainLayer {
            blob: exported.descriptor,
            diff_id: exported.diff_id,
            variant: Some(self.options.variant()),
            empty: exported.empty,
        };
        self.layers.insert(snapshot.clone(), layer.clone());
        Ok(layer)
    }

    /// The chain of `top`, bottom first.
    fn chain_of(&mut self, top: &SnapshotId) -> anyhow::Result<Vec<ChainLayer>> {
        let mut snapshots = self.worker.store().snapshotter().chain(top)?;
        snapshots.reverse();
        let mut chain = Vec::with_capacity(snapshots.len());
        for snapshot in &snapshots {
            let layer = self.layer_of(snapshot)?;
            if !layer.empty {
                self.blobs
                    .entry(layer.blob.digest.clone())
                    .or_insert(NeededBlob { source: None });
            }
            chain.push(layer);
        }
        Ok(chain)
    }
}

/// The final image's layers by snapshot: the base's blobs as the base has them, the new
/// ones as exported.
fn final_image_layers(
    store: &Store,
    top: Option<&SnapshotId>,
    built: &BuiltImage,
    options: &LayerOptions,
) -> anyhow::Result<HashMap<SnapshotId, ChainLayer>> {
    let mut out = HashMap::new();
    let Some(top) = top else {
        return Ok(out);
    };
    let mut chain = store.snapshotter().chain(top)?;
    chain.reverse();
    let Some(base_count) = chain.len().checked_sub(built.new_layers.len()) else {
        return Ok(out);
    };
    let diff_ids = &built.config.rootfs.diff_ids;
    for (index, snapshot) in chain.iter().take(base_count).enumerate() {
        if let (Some(blob), Some(diff_id)) = (built.manifest.layers.get(index), diff_ids.get(index))
        {
            out.insert(
                snapshot.clone(),
                ChainLayer {
                    blob: blob.clone(),
                    diff_id: diff_id.clone(),
                    variant: None,
                    empty: false,
                },
            );
        }
    }
    for (snapshot, layer) in chain.iter().skip(base_count).zip(&built.new_layers) {
        out.insert(
            snapshot.clone(),
            ChainLayer {
                blob: layer.descriptor.clone(),
                diff_id: layer.diff_id.clone(),
                variant: Some(options.variant()),
                empty: layer.empty,
            },
        );
    }
    Ok(out)
}

/// Layers of the images tagged in the store (base images of other stages), by snapshot,
/// with the repository each came from.
fn stored_image_layers(
    store: &Store,
    platform: &kiln_types::Platform,
) -> (HashMap<SnapshotId, ChainLayer>, HashMap<Digest, Reference>) {
    let mut layers = HashMap::new();
    let mut mount_from = HashMap::new();
    for image in store.images().unwrap_or_default() {
        let Ok(resolved) = store.resolve_layers(&image.target, platform) else {
            continue;
        };
        let reference = kiln_image::parse_reference(&image.name).ok();
        for layer in resolved.layers {
            if let Some(reference) = &reference {
                mount_from
                    .entry(layer.descriptor.digest.clone())
                    .or_insert_with(|| reference.clone());
            }
            if let Some(snapshot) = layer.snapshot {
                if store.content().exists(&layer.descriptor.digest) {
                    layers.entry(snapshot).or_insert(ChainLayer {
                        blob: layer.descriptor,
                        diff_id: layer.diff_id,
                        variant: None,
                        empty: false,
                    });
                }
            }
        }
    }
    (layers, mount_from)
}

/// Everything the export needs from the build.
pub struct ExportInputs<'a> {
    pub args: &'a BuildArgs,
    pub worker: &'a BuildWorker,
    pub graph: &'a Graph<WorkerOp>,
    pub keys: &'a KeyLog,
    pub client: &'a RegistryClient,
    pub converted: &'a ConvertResult,
    /// The target's top snapshot.
    pub top: Option<&'a SnapshotId>,
}

/// Writes every `--cache-to`. Returns the image to tag: `built`, or with `type=inline` a
/// copy whose config carries the cache.
pub async fn export_caches(
    inputs: ExportInputs<'_>,
    built: BuiltImage,
) -> anyhow::Result<BuiltImage> {
    if let Some(cache) = inputs.worker.remote_cache() {
        for warning in cache.warnings() {
            warn(&warning);
        }
    }
    let mut built = built;
    for spec in &inputs.args.cache_to {
        let to = parse_cache_to(spec)?;
        match export_one(&inputs, &to, &built).await {
            Ok(Some(with_cache)) => built = with_cache,
            Ok(None) => {}
            Err(error) if to.ignore_error => {
                warn(&format!("--cache-to {spec}: {error:#}"));
            }
            Err(error) => return Err(error.context(format!("--cache-to {spec}"))),
        }
    }
    Ok(built)
}

async fn export_one(
    inputs: &ExportInputs<'_>,
    to: &CacheTo,
    built: &BuiltImage,
) -> anyhow::Result<Option<BuiltImage>> {
    let worker = inputs.worker;
    let store = worker.store();
    let options = layer_options(inputs.converted, inputs.args)?;
    let platform = inputs.converted.target_stage().platform.clone();
    let (stored_layers, mount_from) =
        tokio::task::block_in_place(|| stored_image_layers(store, &platform));
    let final_layers = final_image_layers(store, inputs.top, built, &options)?;
    let final_snapshots: HashSet<SnapshotId> = final_layers.keys().cloned().collect();
    let final_diff_ids: Vec<Digest> = match inputs.top {
        Some(top) => {
            let mut chain = store.snapshotter().chain(top)?;
            chain.reverse();
            chain
                .iter()
                .filter_map(|snapshot| final_layers.get(snapshot))
                .map(|layer| layer.diff_id.clone())
                .collect()
        }
        None => Vec::new(),
    };
    let mut layers = stored_layers;
    layers.extend(final_layers);
    let mut plan = ExportPlan {
        worker,
        options: &options,
        layers,
        blobs: HashMap::new(),
        mount_from,
    };
    let remote = worker.remote_cache().cloned();
    let mut builder = CacheConfigBuilder::new();
    let keys: BTreeMap<CacheKey, usize> = inputs
        .keys
        .snapshot()
        .into_iter()
        .map(|(vertex, key)| (key, vertex))
        .collect();
    for (key, vertex) in &keys {
        if matches!(
            inputs
                .graph
                .vertices()
                .get(*vertex)
                .map(|v| &v.op.vertex.op.kind),
            Some(dag::OpKind::Source(
                dag::SourceOp::Local(_) | dag::SourceOp::Scratch
            ))
        ) {
            continue;
        }
        let local = worker.cached_outputs(key)?;
        if let Some((_, checksums)) = &local {
            for (selector, checksum) in checksums {
                builder.add_checksum(key.clone(), selector.clone(), checksum.clone());
            }
        }
        if let Some(cache) = &remote {
            for (remote_key, selector, checksum) in cache.checksums() {
                if remote_key == key {
                    builder.add_checksum(key.clone(), selector.to_string(), checksum.clone());
                }
            }
        }
        match local {
            Some((outputs, _)) => {
                add_local_record(&mut plan, &mut builder, to, key, &outputs, &final_snapshots)?
            }
            None => {
                // Never materialized here (a later step was cached): the imported record
                // goes along as it is: in max mode all of them, else those whose layers are
                // the bottom of the final image's (the steps below the target).
                if let Some(record) = remote.as_ref().and_then(|cache| cache.record(key)) {
                    let max =
                        to.mode == CacheMode::Max && to.destination != CacheDestination::Inline;
                    let in_final = record.outputs.iter().all(|chain| {
                        !chain.is_empty()
                            && chain.len() <= final_diff_ids.len()
                            && chain
                                .iter()
                                .zip(&final_diff_ids)
                                .all(|(layer, diff_id)| layer.diff_id == *diff_id)
                    });
                    if max || in_final {
                        add_remote_record(&mut plan, &mut builder, key, record);
                    }
                }
            }
        }
    }
    if to.cache_mounts {
        add_cache_mounts(&mut plan, &mut builder, inputs)?;
    }
    let config = builder.finish();
    match &to.destination {
        CacheDestination::Inline => {
            let image_blobs: HashSet<&Digest> = built
                .manifest
                .layers
                .iter()
                .map(|layer| &layer.digest)
                .collect();
            let config = inline_subset(config, &image_blobs);
            let with_cache = tokio::task::block_in_place(|| {
                cache_format::embed_inline_cache(store, worker.lease(), built, &config)
            })?;
            Ok(Some(with_cache))
        }
        CacheDestination::Local { directory, tag } => {
            let missing: Vec<(Descriptor, Arc<dyn CacheBlobSource>)> = plan_missing(&plan, &config)
                .into_iter()
                .filter(|(blob, _)| {
                    !std::fs::metadata(cache_format::local_blob_path(directory, &blob.digest))
                        .is_ok_and(|meta| meta.len() == blob.size)
                })
                .collect();
            download_blobs(worker, missing).await?;
            tokio::task::block_in_place(|| {
                cache_format::export_local(store, directory, &config, tag)
            })?;
            Ok(None)
        }
        CacheDestination::Registry { reference } => {
            let mut missing = Vec::new();
            for (blob, source) in plan_missing(&plan, &config) {
                if inputs
                    .client
                    .blob_exists(reference, &blob.digest)
                    .await?
                    .is_none()
                {
                    missing.push((blob, source));
                }
            }
            download_blobs(worker, missing).await?;
            cache_format::export_registry(
                inputs.client,
                store,
                reference,
                &config,
                &plan.mount_from,
            )
            .await?;
            Ok(None)
        }
    }
}

fn add_local_record(
    plan: &mut ExportPlan<'_>,
    builder: &mut CacheConfigBuilder,
    to: &CacheTo,
    key: &CacheKey,
    outputs: &[Value],
    final_snapshots: &HashSet<SnapshotId>,
) -> anyhow::Result<()> {
    let mut tops = Vec::with_capacity(outputs.len());
    for output in outputs {
        match output {
            Value::Snapshot { top } => tops.push(top.clone()),
            Value::Context { .. } => return Ok(()),
        }
    }
    if to.mode == CacheMode::Min || to.destination == CacheDestination::Inline {
        let in_final = tops.iter().all(|top| {
            top.as_ref()
                .is_some_and(|top| final_snapshots.contains(top))
        });
        if !in_final {
            return Ok(());
        }
    }
    let mut indexes = Vec::with_capacity(tops.len());
    for top in &tops {
        indexes.push(match top {
            Some(top) => {
                let chain = plan.chain_of(top)?;
                builder.add_chain(&chain)
            }
            None => None,
        });
    }
    builder.add_record(key.clone(), indexes);
    Ok(())
}

fn add_remote_record(
    plan: &mut ExportPlan<'_>,
    builder: &mut CacheConfigBuilder,
    key: &CacheKey,
    record: &RemoteRecord,
) {
    let mut indexes = Vec::with_capacity(record.outputs.len());
    for chain in &record.outputs {
        let layers: Vec<ChainLayer> = chain
            .iter()
            .map(|layer| {
                if !layer.empty {
                    plan.blobs
                        .entry(layer.blob.digest.clone())
                        .or_insert(NeededBlob {
                            source: Some(layer.source.clone()),
                        });
                }
                ChainLayer {
                    blob: layer.blob.clone(),
                    diff_id: layer.diff_id.clone(),
                    variant: layer.variant.clone(),
                    empty: layer.empty,
                }
            })
            .collect();
        indexes.push(builder.add_chain(&layers));
    }
    builder.add_record(key.clone(), indexes);
}

/// Cache mount directories of the build's RUN steps: the local one if this machine has it,
/// else the imported one (if any).
fn add_cache_mounts(
    plan: &mut ExportPlan<'_>,
    builder: &mut CacheConfigBuilder,
    inputs: &ExportInputs<'_>,
) -> anyhow::Result<()> {
    let mut ids = BTreeSet::new();
    for vertex in inputs.graph.vertices() {
        if let dag::OpKind::Exec(exec) = &vertex.op.vertex.op.kind {
            for mount in &exec.mounts {
                if let dag::MountKind::Cache(cache) = &mount.kind {
                    ids.insert(kiln_worker::cache_mount_store_id(&cache.id));
                }
            }
        }
    }
    let store = inputs.worker.store();
    let remote = inputs.worker.remote_cache();
    for id in ids {
        let known = store.cache_mounts()?.iter().any(|record| record.id == id);
        if known {
            let directory =
                tokio::task::block_in_place(|| store.cache_mount(inputs.worker.lease(), &id))?;
            let data = directory.join("data");
            if data.is_dir() {
                let blob = tokio::task::block_in_place(|| {
                    cache_format::export_cache_mount(store, inputs.worker.lease(), &data)
                })?;
                plan.blobs
                    .entry(blob.digest.clone())
                    .or_insert(NeededBlob { source: None });
                builder.add_cache_mount(id, blob);
                continue;
            }
        }
        if let Some(mount) = remote.and_then(|cache| cache.cache_mount(&id)) {
            plan.blobs
                .entry(mount.blob.digest.clone())
                .or_insert(NeededBlob {
                    source: Some(mount.source.clone()),
                });
            builder.add_cache_mount(id, mount.blob.clone());
        }
    }
    Ok(())
}

/// The config's blobs the content store lacks, with where to download them.
fn plan_missing(
    plan: &ExportPlan<'_>,
    config: &CacheConfig,
) -> Vec<(Descriptor, Arc<dyn CacheBlobSource>)> {
    let content = plan.worker.store().content();
    config
        .blobs()
        .into_iter()
        .filter(|blob| !content.exists(&blob.digest))
        .filter_map(|blob| {
            let source = plan.blobs.get(&blob.digest)?.source.clone()?;
            Some((blob, source))
        })
        .collect()
}

async fn download_blobs(
    worker: &BuildWorker,
    blobs: Vec<(Descriptor, Arc<dyn CacheBlobSource>)>,
) -> anyhow::Result<()> {
    for (blob, source) in blobs {
        let content = worker.store().content();
        if content.exists(&blob.digest) {
            continue;
        }
        let mut writer = tokio::task::block_in_place(|| {
            let mut writer =
                content.writer(worker.lease(), Some((blob.digest.clone(), blob.size)))?;
            if writer.offset() != 0 {
                writer.restart()?;
            }
            Ok::<_, kiln_snapshotter::StoreError>(writer)
        })?;
        source.fetch(&blob, &mut writer).await.map_err(|error| {
            anyhow!(
                "downloading {} from {}: {error}",
                blob.digest,
                source.describe()
            )
        })?;
        tokio::task::block_in_place(|| writer.commit())?;
    }
    Ok(())
}

/// The records whose every non-empty layer is one of the image's own layers (pushed with
/// it), with the layers renumbered.
fn inline_subset(config: CacheConfig, image_blobs: &HashSet<&Digest>) -> CacheConfig {
    let mut builder = CacheConfigBuilder::new();
    let to_chain = |top: usize| -> Option<Vec<ChainLayer>> {
        config
            .chain(top)
            .into_iter()
            .map(|layer| {
                (layer.empty || image_blobs.contains(&layer.blob.digest)).then(|| ChainLayer {
                    blob: layer.blob.clone(),
                    diff_id: layer.diff_id.clone(),
                    variant: layer.variant.clone(),
                    empty: layer.empty,
                })
            })
            .collect()
    };
    for record in &config.records {
        let chains: Option<Vec<Option<Vec<ChainLayer>>>> = record
            .outputs
            .iter()
            .map(|output| match output.layer {
                Some(top) => to_chain(top).map(Some),
                None => Some(None),
            })
            .collect();
        let Some(chains) = chains else {
            continue;
        };
        let indexes = chains
            .iter()
            .map(|chain| chain.as_ref().and_then(|chain| builder.add_chain(chain)))
            .collect();
        builder.add_record(record.key.clone(), indexes);
    }
    for checksum in &config.checksums {
        builder.add_checksum(
            checksum.key.clone(),
            checksum.selector.clone(),
            checksum.checksum.clone(),
        );
    }
    builder.finish()
}
