//! `BuildWorker`: the solver's `Worker` for Dockerfile builds. Image sources come from the store
//! (pulled when missing), the context is read in place, RUN runs in the sandbox over an overlay
//! of its input snapshot, file ops run over an overlay too, and every result is a committed
//! snapshot whose upper is the step's layer.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use kiln_frontend::dag::{self, OpKind, SourceOp};
use kiln_snapshotter::{CacheRecord, CommitOptions, Lease, SnapshotId, Store};
use kiln_solver::{
    CacheKey, CacheMap, Dependency, ExecContext, ExecutionClass, Worker, WorkerError,
};
use kiln_types::Digest;

use crate::checksum::{self, ChecksumCache};
use crate::fileops::{self, FileOpOptions, SourceRoot};
use crate::graph::WorkerOp;
use crate::images::ImageSources;
use crate::remote_cache::{self, RemoteCache};
use crate::value::Value;

/// Everything a build needs besides the graph.
pub struct BuildSettings {
    /// The build context directory.
    pub context_dir: PathBuf,
    /// Secrets by id (`--secret id=X,src=FILE|env=VAR`), never part of a key or a layer.
    pub secrets: HashMap<String, Vec<u8>>,
    /// SSH agent sockets by id (`--ssh default` forwards `SSH_AUTH_SOCK`).
    pub ssh_agents: HashMap<String, PathBuf>,
    /// Network for `RUN` without `--network` (host, as BuildKit without CNI).
    pub default_network: kiln_runner::Network,
    /// Whether `RUN --security=insecure` is allowed.
    pub allow_insecure: bool,
    /// Keep the list of files (with their digests) behind every content checksum, for
    /// `--explain-cache` (see [`BuildWorker::take_listings`]).
    pub record_listings: bool,
}

/// An error of the build worker, with the facts.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    #[error("{operation}")]
    Store {
        operation: String,
        #[source]
        source: kiln_snapshotter::StoreError,
    },
    #[error("process \"{command}\" did not complete successfully: {outcome}")]
    ProcessFailed { command: String, outcome: String },
    #[error("secret {id:?} not found (pass it with --secret id={id},src=FILE)")]
    MissingSecret { id: String },
    #[error("ssh agent {id:?} not found (pass it with --ssh {id})")]
    MissingSsh { id: String },
    #[error("RUN --security=insecure needs --allow security.insecure")]
    InsecureNotAllowed,
    #[error("{0}")]
    Other(String),
}

fn store_error(
    operation: impl Into<String>,
) -> impl FnOnce(kiln_snapshotter::StoreError) -> BuildError {
    let operation = operation.into();
    move |source| BuildError::Store { operation, source }
}

/// The cache record's own document.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct CachedOutputs {
    outputs: Vec<Value>,
    /// Content checksums computed over these outputs for consumer ops, by
    /// [`remote_cache::checksum_selector`]: a consumer's key needs no materialized input.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    checksums: BTreeMap<String, Digest>,
}

/// The solver worker of a Dockerfile build.
pub struct BuildWorker {
    pub(crate) store: Store,
    pub(crate) lease: Lease,
    pub(crate) sandbox: Arc<kiln_runner::Sandbox>,
    pub(crate) images: ImageSources,
    pub(crate) settings: BuildSettings,
    context_checksums: ChecksumCache,
    /// Locks of `sharing=locked` cache mounts held in this process.
    cache_mount_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Records imported with `--cache-from`, materialized when loaded.
    pub(crate) remote_cache: Option<Arc<RemoteCache>>,
    /// Files behind content checksums, by (op digest, input index), when recorded.
    listings: Mutex<HashMap<(Digest, usize), Vec<checksum::ListedEntry>>>,
    /// Told of each snapshot a RUN or file op commits, with the op's digest.
    commit_observer: Option<CommitObserver>,
}

/// Called with (op digest, snapshot) when an op has committed its result; must return at
/// once (start any work on a thread of its own).
pub type CommitObserver = Arc<dyn Fn(&Digest, &SnapshotId) + Send + Sync>;

impl BuildWorker {
    pub fn new(
        store: Store,
        sandbox: Arc<kiln_runner::Sandbox>,
        images: ImageSources,
        settings: BuildSettings,
    ) -> Result<Self, BuildError> {
        let lease = store
            .lease("build")
            .map_err(store_error("taking a lease on the store"))?;
        let checksum_dir = store.root().join("checksums");
        let context_path = std::fs::canonicalize(&settings.context_dir)
            .unwrap_or_else(|_| settings.context_dir.clone());
        let context_key =
            Digest::of_bytes(context_path.as_os_str().as_encoded_bytes()).hex()[..32].to_string();
        let context_checksums = ChecksumCache::open_for_context(&checksum_dir, &context_key)
            .unwrap_or_else(|_| ChecksumCache::in_memory());
        Ok(BuildWorker {
            store,
            lease,
            sandbox,
            images,
            settings,
            context_checksums,
            cache_mount_locks: Mutex::new(HashMap::new()),
            remote_cache: None,
            listings: Mutex::new(HashMap::new()),
            commit_observer: None,
        })
    }

    /// Has `observer` told of each snapshot a RUN or file op commits (the build command
    /// starts exporting the image's layers while later steps run).
    pub fn with_commit_observer(mut self, observer: CommitObserver) -> Self {
        self.commit_observer = Some(observer);
        self
    }

    fn committed(&self, op: &WorkerOp, value: &Value) {
        if let (Some(observer), Value::Snapshot { top: Some(id) }) = (&self.commit_observer, value)
        {
            observer(&op.vertex.digest, id);
        }
    }

    /// Uses records imported from a build cache elsewhere when the store has none.
    pub fn with_remote_cache(mut self, cache: Arc<RemoteCache>) -> Self {
        self.remote_cache = Some(cache);
        self
    }

    /// The imported build cache, if any.
    pub fn remote_cache(&self) -> Option<&Arc<RemoteCache>> {
        self.remote_cache.as_ref()
    }

    /// The outputs of `key`'s local cache record and the checksums remembered with them.
    pub fn cached_outputs(
        &self,
        key: &CacheKey,
    ) -> Result<Option<(Vec<Value>, BTreeMap<String, Digest>)>, BuildError> {
        let record = self
            .store
            .cache_record(key.as_str())
            .map_err(store_error("reading the build cache"))?;
        Ok(record
            .and_then(|record| serde_json::from_value::<CachedOutputs>(record.data).ok())
            .map(|cached| (cached.outputs, cached.checksums)))
    }

    /// Materializes an imported record for `key`; a failure is a miss, kept as a warning.
    async fn load_remote(&self, key: &CacheKey, op: &WorkerOp) -> Option<Vec<Value>> {
        let cache = self.remote_cache.as_ref()?;
        let record = cache.record(key)?;
        match remote_cache::materialize(self, cache, record).await {
            Ok(outputs) => match self.save(key, op, &outputs).await {
                Ok(()) => Some(outputs),
                Err(error) => {
                    cache.warn(format!("imported cache record {key} not saved: {error}"));
                    None
                }
            },
            Err(error) => {
                cache.warn(format!("imported cache record {key} not used: {error}"));
                None
            }
        }
    }

    /// The base images this build resolved: (reference, platform, manifest digest).
    pub fn image_resolutions(&self) -> Vec<(String, String, Digest)> {
        self.images.resolutions()
    }

    /// The store this worker builds into.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The lease that keeps everything this build made alive until it is tagged.
    pub fn lease(&self) -> &Lease {
        &self.lease
    }

    /// The files behind each content checksum computed so far, by (op digest, input index)
    /// (only with `BuildSettings::record_listings`).
    pub fn take_listings(&self) -> HashMap<(Digest, usize), Vec<checksum::ListedEntry>> {
        std::mem::take(&mut *self.listings.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Saves the context's stat cache so the next build only stats unchanged files.
    pub fn save_checksum_cache(&self) {
        let _ = self.context_checksums.save();
    }

    /// A source root for a value, with a mounted view kept alive by the returned guard.
    pub(crate) fn source_root(
        &self,
        value: &Value,
    ) -> Result<
        (
            SourceRoot,
            Option<kiln_snapshotter::SnapshotView>,
            Option<tempfile::TempDir>,
        ),
        WorkerError,
    > {
        match value {
            Value::Context {
                dir,
                include,
                exclude,
            } => Ok((
                SourceRoot::build_context(dir, include, exclude)?,
                None,
                None,
            )),
            Value::Snapshot { top: Some(top) } => {
                let view = self
                    .store
                    .snapshotter()
                    .view(&self.lease, top)
                    .map_err(store_error("mounting a snapshot to read it"))?;
                Ok((SourceRoot::new(view.mountpoint()), Some(view), None))
            }
            Value::Snapshot { top: None } => {
                let empty = tempfile::tempdir()?;
                Ok((SourceRoot::new(empty.path()), None, Some(empty)))
            }
        }
    }

    fn file_op(&self, op: &dag::FileOp, inputs: &[Value]) -> Result<Value, WorkerError> {
        let base = match op.base {
            Some(index) => match inputs.get(index as usize) {
                Some(Value::Snapshot { top }) => top.clone(),
                Some(Value::Context { .. }) => {
                    return Err("a file op cannot start from the build context".into())
                }
                None => return Err(format!("file op base input {index} missing").into()),
            },
            None => None,
        };
        let mut guards = Vec::new();
        let mut sources = Vec::with_capacity(inputs.len());
        for input in inputs {
            let (root, view, temp) = self.source_root(input)?;
            sources.push(root);
            guards.push((view, temp));
        }
        let snapshotter = self.store.snapshotter();
        let active = snapshotter
            .prepare(&self.lease, base.as_ref())
            .map_err(store_error("preparing a snapshot"))?;
        fileops::apply_actions(
            &op.actions,
            &active.mountpoint(),
            &sources,
            &FileOpOptions::default(),
        )?;
        drop(guards);
        let id = snapshotter
            .commit(active, CommitOptions::default())
            .map_err(store_error("committing a snapshot"))?;
        Ok(Value::snapshot(id))
    }

    /// `COPY --link`: the upper layers are stacked on the lower ones by giving each a copy
    /// (hard links) of its files on top of the running result, so layers built on scratch
    /// keep their own cache entries when the base changes.
    fn merge(&self, inputs: &[Value]) -> Result<Value, WorkerError> {
        let snapshotter = self.store.snapshotter();
        let mut top: Option<SnapshotId> = None;
        for input in inputs {
            let Value::Snapshot {
                top: Some(input_top),
            } = input
            else {
                continue;
            };
            let Some(current) = top.clone() else {
                top = Some(input_top.clone());
                continue;
            };
            let mut layers = snapshotter
                .chain(input_top)
                .map_err(store_error("reading a chain"))?;
            layers.reverse();
            let mut parent = current;
            for layer in layers {
                let key = format!(
                    "rebase:{}",
                    Digest::of_bytes(format!("{parent}\n{layer}").as_bytes()).hex()
                );
                parent = match snapshotter
                    .prepare_unpack(&self.lease, &key, Some(&parent))
                    .map_err(store_error("preparing a merged layer"))?
                {
                    kiln_snapshotter::PreparedUnpack::Existing(id) => id,
                    kiln_snapshotter::PreparedUnpack::New(dir) => {
                        copy_layer_tree(&snapshotter.fs_dir(&layer), dir.path())?;
                        let record = snapshotter
                            .info(&layer)
                            .map_err(store_error("reading a snapshot"))?;
                        dir.commit(record.diff_id, record.size)
                            .map_err(store_error("committing a merged layer"))?
                    }
                };
            }
            top = Some(parent);
        }
        Ok(Value::Snapshot { top })
    }

    pub(crate) fn cache_mount_lock(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self
            .cache_mount_locks
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        locks.entry(id.to_string()).or_default().clone()
    }
}

/// Copies a layer directory with hard links for files (layers are immutable), keeping
/// directories' modes, owners, xattrs (opaque markers) and whiteout device nodes.
fn copy_layer_tree(from: &Path, to: &Path) -> Result<(), WorkerError> {
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg("--link")
        .arg(format!("{}/.", from.display()))
        .arg(to)
        .status()?;
    if !status.success() {
        return Err(format!("copying layer {} failed: {status}", from.display()).into());
    }
    Ok(())
}

impl Worker for BuildWorker {
    type Op = WorkerOp;
    type Value = Value;

    async fn cache_map(&self, op: &WorkerOp) -> Result<CacheMap, WorkerError> {
        let inputs = op.vertex.op.inputs.len();
        match &op.vertex.op.kind {
            OpKind::Source(SourceOp::Image(image)) => {
                let resolved = self.images.resolve(image).await?;
                let definition = Digest::of_bytes(
                    format!("{}\nimage {}", op.definition, resolved.manifest_digest).as_bytes(),
                );
                Ok(CacheMap {
                    definition,
                    dependencies: vec![],
                })
            }
            OpKind::File(file) => {
                let mut dependencies = vec![Dependency::Key; inputs];
                for action in &file.actions {
                    if let dag::FileAction::Copy(copy) = action {
                        if let Some(slot) = dependencies.get_mut(copy.source_input as usize) {
                            *slot = Dependency::Content;
                        }
                    }
                }
                if let Some(base) = file.base {
                    if let Some(slot) = dependencies.get_mut(base as usize) {
                        *slot = Dependency::Key;
                    }
                }
                Ok(CacheMap {
                    definition: op.definition.clone(),
                    dependencies,
                })
            }
            OpKind::Exec(exec) => {
                let mut dependencies = vec![Dependency::Key; inputs];
                for mount in &exec.mounts {
                    if let (Some(input), dag::MountKind::Bind, true) =
                        (mount.input, &mount.kind, mount.dest != "/")
                    {
                        if let Some(slot) = dependencies.get_mut(input as usize) {
                            *slot = Dependency::Content;
                        }
                    }
                }
                // The root filesystem is always a key dependency, even if also bind mounted.
                for mount in exec.mounts.iter().filter(|mount| mount.dest == "/") {
                    if let Some(slot) = mount.input.and_then(|i| dependencies.get_mut(i as usize)) {
                        *slot = Dependency::Key;
                    }
                }
                Ok(CacheMap {
                    definition: op.definition.clone(),
                    dependencies,
                })
            }
            _ => Ok(CacheMap {
                definition: op.definition.clone(),
                dependencies: vec![Dependency::Key; inputs],
            }),
        }
    }

    async fn content_checksum(
        &self,
        op: &WorkerOp,
        input: usize,
        value: &Value,
    ) -> Result<Digest, WorkerError> {
        let (source, view, temp) = self.source_root(value)?;
        let is_context = matches!(value, Value::Context { .. });
        let cache = if is_context {
            Some(&self.context_checksums)
        } else {
            None
        };
        let local_cache;
        let cache = match cache {
            Some(cache) => cache,
            None => {
                local_cache = ChecksumCache::in_memory();
                &local_cache
            }
        };
        let digest = match &op.vertex.op.kind {
            OpKind::File(file) => {
                let actions = file.actions.iter().filter_map(|action| match action {
                    dag::FileAction::Copy(copy) if copy.source_input as usize == input => {
                        Some(copy)
                    }
                    _ => None,
                });
                let list = self.settings.record_listings;
                let (digest, listing) = tokio::task::block_in_place(|| {
                    checksum::checksum_copy_sources_listed(&source, actions, cache, list)
                })?;
                if list {
                    self.listings
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert((op.vertex.digest.clone(), input), listing);
                }
                digest
            }
            OpKind::Exec(exec) => {
                let mut selectors: Vec<&str> = exec
                    .mounts
                    .iter()
                    .filter(|mount| mount.input == Some(input as u32) && mount.dest != "/")
                    .map(|mount| mount.selector.as_str())
                    .collect();
                selectors.sort_unstable();
                selectors.dedup();
                let mut text = String::new();
                for selector in selectors {
                    let digest = tokio::task::block_in_place(|| {
                        checksum::checksum_path(&source, selector, true, cache)
                    })?;
                    text.push_str(&format!("{selector} {digest}\n"));
                }
                Digest::of_bytes(text.as_bytes())
            }
            _ => return Err("content checksum asked for an op that reads no files".into()),
        };
        drop((view, temp));
        Ok(digest)
    }

    async fn load(&self, key: &CacheKey, op: &WorkerOp) -> Result<Option<Vec<Value>>, WorkerError> {
        if matches!(
            op.vertex.op.kind,
            OpKind::Source(SourceOp::Local(_) | SourceOp::Scratch)
        ) {
            return Ok(None);
        }
        let record = self
            .store
            .cache_record(key.as_str())
            .map_err(store_error("reading the build cache"))?;
        let Some(record) = record else {
            return Ok(self.load_remote(key, op).await);
        };
        let Ok(cached) = serde_json::from_value::<CachedOutputs>(record.data.clone()) else {
            return Ok(None);
        };
        // Every snapshot must still be there (a prune may have raced), and the lease keeps
        // them from now on.
        for snapshot in &record.snapshots {
            if self.store.snapshotter().info(snapshot).is_err() {
                return Ok(None);
            }
            if self.lease.protect_snapshot(snapshot).is_err() {
                return Ok(None);
            }
        }
        Ok(Some(cached.outputs))
    }

    async fn execute(
        &self,
        op: &WorkerOp,
        inputs: Vec<Value>,
        context: ExecContext,
    ) -> Result<Vec<Value>, WorkerError> {
        match &op.vertex.op.kind {
            OpKind::Source(SourceOp::Scratch) => Ok(vec![Value::scratch()]),
            OpKind::Source(SourceOp::Local(local)) => Ok(vec![Value::Context {
                dir: self.settings.context_dir.clone(),
                include: local.include_patterns.clone(),
                exclude: local.exclude_patterns.clone(),
            }]),
            OpKind::Source(SourceOp::Image(image)) => {
                let top = self
                    .images
                    .materialize(&self.store, &self.lease, image, &context)
                    .await?;
                Ok(vec![Value::Snapshot { top }])
            }
            OpKind::Source(SourceOp::Http(http)) => {
                let value = crate::http::download(self, http, &context).await?;
                Ok(vec![value])
            }
            OpKind::Source(SourceOp::Git(git)) => Err(BuildError::Other(format!(
                "git sources ({}) are not supported yet",
                git.remote
            ))
            .into()),
            OpKind::File(file) => {
                let value = tokio::task::block_in_place(|| self.file_op(file, &inputs))?;
                self.committed(op, &value);
                Ok(vec![value])
            }
            OpKind::Merge(_) => {
                let value = tokio::task::block_in_place(|| self.merge(&inputs))?;
                Ok(vec![value])
            }
            OpKind::Exec(exec) => {
                let value = crate::exec::run(self, exec, &inputs, &context).await?;
                self.committed(op, &value);
                Ok(vec![value])
            }
        }
    }

    async fn save(
        &self,
        key: &CacheKey,
        op: &WorkerOp,
        outputs: &[Value],
    ) -> Result<(), WorkerError> {
        if matches!(
            op.vertex.op.kind,
            OpKind::Source(SourceOp::Local(_) | SourceOp::Scratch)
        ) {
            return Ok(());
        }
        let snapshots: Vec<SnapshotId> = outputs
            .iter()
            .filter_map(|value| match value {
                Value::Snapshot { top } => top.clone(),
                Value::Context { .. } => None,
            })
            .collect();
        let record = CacheRecord {
            snapshots,
            blobs: vec![],
            cache_mounts: vec![],
            data: serde_json::to_value(CachedOutputs {
                outputs: outputs.to_vec(),
                checksums: BTreeMap::new(),
            })?,
            created_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        };
        self.store
            .put_cache_record(key.as_str(), &record)
            .map_err(store_error("writing the build cache"))?;
        Ok(())
    }

    async fn remembered_checksum(
        &self,
        op: &WorkerOp,
        input: usize,
        input_key: &CacheKey,
    ) -> Result<Option<Digest>, WorkerError> {
        let selector = remote_cache::checksum_selector(&op.definition, input);
        if let Some((_, checksums)) = self.cached_outputs(input_key)? {
            if let Some(found) = checksums.get(&selector) {
                return Ok(Some(found.clone()));
            }
        }
        Ok(self
            .remote_cache
            .as_ref()
            .and_then(|cache| cache.checksum(input_key, &selector))
            .cloned())
    }

    async fn remember_checksum(
        &self,
        op: &WorkerOp,
        input: usize,
        input_key: &CacheKey,
        value: &Value,
        checksum: &Digest,
    ) -> Result<(), WorkerError> {
        // Only a result stored under its key is the same content whenever the key is: the
        // build context is read in place and changes under a constant key.
        if !matches!(value, Value::Snapshot { .. }) {
            return Ok(());
        }
        let Some(mut record) = self
            .store
            .cache_record(input_key.as_str())
            .map_err(store_error("reading the build cache"))?
        else {
            return Ok(());
        };
        let Ok(mut cached) = serde_json::from_value::<CachedOutputs>(record.data.clone()) else {
            return Ok(());
        };
        if cached.outputs.iter().all(|output| output != value) {
            return Ok(());
        }
        let selector = remote_cache::checksum_selector(&op.definition, input);
        cached.checksums.insert(selector, checksum.clone());
        record.data = serde_json::to_value(cached)?;
        self.store
            .put_cache_record(input_key.as_str(), &record)
            .map_err(store_error("writing the build cache"))?;
        Ok(())
    }

    fn execution_class(&self, op: &WorkerOp) -> ExecutionClass {
        match op.vertex.op.kind {
            OpKind::Exec(_) | OpKind::Source(_) => ExecutionClass::Unbounded,
            OpKind::File(_) | OpKind::Merge(_) => ExecutionClass::Cpu,
        }
    }
}
