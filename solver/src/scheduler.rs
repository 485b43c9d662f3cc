//! Cache keys, scheduling, in-flight deduplication and cancellation.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::future::{BoxFuture, FutureExt, Shared};
use kiln_types::Digest;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::graph::{Graph, Input};
use crate::progress::{EventKind, EventSink, LogStream};

/// A vertex's cache key.
pub type CacheKey = Digest;

/// An error from the worker, opaque to the solver.
pub type WorkerError = Box<dyn std::error::Error + Send + Sync>;

/// How an op depends on one of its inputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dependency {
    /// Through the input's cache key: any change upstream invalidates the op.
    Key,
    /// Through a checksum of what the op reads from the input (COPY's sources, a bind
    /// mount's subtree), computed by [`Worker::content_checksum`].
    Content,
}

/// What the worker says about an op before it runs.
#[derive(Debug, Clone)]
pub struct CacheMap {
    /// Digest over the op's definition, without fields that do not change its result.
    pub definition: Digest,
    /// One entry per input, in order.
    pub dependencies: Vec<Dependency>,
}

/// Which limit an op's execution counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecutionClass {
    /// CPU-bound work in kiln's process (copying, hashing): at most `cpu_parallelism` at once.
    Cpu,
    /// Work that waits on something else (a sandboxed process, the network): never held back,
    /// so RUN steps of independent stages always overlap.
    Unbounded,
}

/// The parts a cache key was made of, for `--explain-cache`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeyComponents {
    pub definition: Digest,
    pub inputs: Vec<KeyPart>,
}

/// One input's contribution to a cache key.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum KeyPart {
    Key { key: CacheKey, output: usize },
    Content { checksum: Digest },
}

/// What a running op gets besides its inputs.
#[derive(Debug, Clone)]
pub struct ExecContext {
    pub vertex: usize,
    pub name: String,
    /// Fires when the build is stopped; the op must stop its work and clean up.
    pub cancel: CancellationToken,
    events: EventSink,
}

impl ExecContext {
    /// Sends a chunk of the op's output to the progress stream.
    pub fn log(&self, stream: LogStream, data: &[u8]) {
        let data = String::from_utf8_lossy(data).into_owned();
        self.events
            .send(self.vertex, &self.name, EventKind::Log { stream, data });
    }
}

/// The concrete side of a build: knows what ops mean. Implemented outside this crate.
pub trait Worker: Send + Sync + 'static {
    type Op: Send + Sync + 'static;
    /// One output of an op (a snapshot, a directory); cheap to clone.
    type Value: Clone + Send + Sync + 'static;

    /// The op's definition digest and how it depends on its inputs. May resolve things
    /// (an image tag to its manifest digest).
    fn cache_map(
        &self,
        op: &Self::Op,
    ) -> impl Future<Output = Result<CacheMap, WorkerError>> + Send;

    /// Checksum of what `op` reads from its input number `input`, whose value is `value`.
    fn content_checksum(
        &self,
        op: &Self::Op,
        input: usize,
        value: &Self::Value,
    ) -> impl Future<Output = Result<Digest, WorkerError>> + Send;

    /// The cached outputs for a key, if any.
    fn load(
        &self,
        key: &CacheKey,
        op: &Self::Op,
    ) -> impl Future<Output = Result<Option<Vec<Self::Value>>, WorkerError>> + Send;

    /// Runs the op on its inputs' values (one per input, in order).
    fn execute(
        &self,
        op: &Self::Op,
        inputs: Vec<Self::Value>,
        context: ExecContext,
    ) -> impl Future<Output = Result<Vec<Self::Value>, WorkerError>> + Send;

    /// Records the outputs under the key.
    fn save(
        &self,
        key: &CacheKey,
        op: &Self::Op,
        outputs: &[Self::Value],
    ) -> impl Future<Output = Result<(), WorkerError>> + Send;

    /// A content checksum remembered for what `op` reads from its input number `input`, the
    /// result of cache key `input_key`. With one, the solver computes `op`'s key without
    /// materializing the input (a cached `COPY --from` never loads the stage it reads).
    /// The default remembers nothing.
    fn remembered_checksum(
        &self,
        _op: &Self::Op,
        _input: usize,
        _input_key: &CacheKey,
    ) -> impl Future<Output = Result<Option<Digest>, WorkerError>> + Send {
        async { Ok(None) }
    }

    /// Remembers a checksum computed over `value`, the result of `input_key`. A worker must
    /// only remember it where it is forgotten when `input_key`'s result changes.
    fn remember_checksum(
        &self,
        _op: &Self::Op,
        _input: usize,
        _input_key: &CacheKey,
        _value: &Self::Value,
        _checksum: &Digest,
    ) -> impl Future<Output = Result<(), WorkerError>> + Send {
        async { Ok(()) }
    }

    /// Which limit the op's execution counts against.
    fn execution_class(&self, _op: &Self::Op) -> ExecutionClass {
        ExecutionClass::Cpu
    }
}

/// Why a solve failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SolveError {
    #[error("{name}: {source}")]
    Failed {
        vertex: usize,
        name: String,
        #[source]
        source: WorkerError,
    },
    #[error("{name}: op produced {produced} outputs, output {wanted} was asked for")]
    MissingOutput {
        vertex: usize,
        name: String,
        produced: usize,
        wanted: usize,
    },
    #[error("build canceled")]
    Canceled,
    #[error("solver task failed: {0}")]
    Task(String),
}

/// Solver settings.
#[derive(Debug, Clone)]
pub struct SolveOptions {
    /// How many `ExecutionClass::Cpu` ops run at once (default: number of cores).
    pub cpu_parallelism: usize,
}

impl Default for SolveOptions {
    fn default() -> Self {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        SolveOptions {
            cpu_parallelism: cores,
        }
    }
}

type SharedResult<T> = Shared<BoxFuture<'static, Result<T, Arc<SolveError>>>>;

/// Solves graphs with one worker.
pub struct Solver<W: Worker> {
    worker: Arc<W>,
    options: SolveOptions,
}

impl<W: Worker> Solver<W> {
    pub fn new(worker: Arc<W>, options: SolveOptions) -> Self {
        Solver { worker, options }
    }

    /// Solves the graph for `target` and returns that output's value. The first failure
    /// cancels everything still running; `cancel` stops the build from outside (Ctrl-C).
    pub async fn solve(
        &self,
        graph: Arc<Graph<W::Op>>,
        target: Input,
        events: EventSink,
        cancel: CancellationToken,
    ) -> Result<W::Value, Arc<SolveError>> {
        let state = Arc::new(State {
            graph,
            worker: self.worker.clone(),
            events,
            cancel,
            cpu: Arc::new(Semaphore::new(self.options.cpu_parallelism.max(1))),
            keys: Mutex::new(HashMap::new()),
            values: Mutex::new(HashMap::new()),
            in_flight: Mutex::new(HashMap::new()),
            first_error: Mutex::new(None),
        });
        let result = state.value(target).await;
        if result.is_ok() {
            state.report_skipped_as_cached();
        } else {
            state.wait_for_everything_started().await;
        }
        let first = state
            .first_error
            .lock()
            .map(|mut e| e.take())
            .unwrap_or(None);
        match (result, first) {
            (Ok(value), _) => Ok(value),
            (Err(_), Some(first)) => Err(first),
            (Err(error), None) => Err(error),
        }
    }

    /// Computes the cache key of every vertex needed for `target` without running anything
    /// that is not read by content. Used by `--explain-cache` and cache export.
    pub async fn keys(
        &self,
        graph: Arc<Graph<W::Op>>,
        target: Input,
        events: EventSink,
    ) -> Result<CacheKey, Arc<SolveError>> {
        let state = Arc::new(State {
            graph,
            worker: self.worker.clone(),
            events,
            cancel: CancellationToken::new(),
            cpu: Arc::new(Semaphore::new(self.options.cpu_parallelism.max(1))),
            keys: Mutex::new(HashMap::new()),
            values: Mutex::new(HashMap::new()),
            in_flight: Mutex::new(HashMap::new()),
            first_error: Mutex::new(None),
        });
        state.key(target.vertex).await
    }
}

struct State<W: Worker> {
    graph: Arc<Graph<W::Op>>,
    worker: Arc<W>,
    events: EventSink,
    cancel: CancellationToken,
    cpu: Arc<Semaphore>,
    keys: Mutex<HashMap<usize, SharedResult<CacheKey>>>,
    values: Mutex<HashMap<usize, SharedResult<Arc<Vec<W::Value>>>>>,
    /// Identical work (same cache key) in flight, computed once.
    in_flight: Mutex<HashMap<CacheKey, SharedResult<Arc<Vec<W::Value>>>>>,
    first_error: Mutex<Option<Arc<SolveError>>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Spawns a future on the runtime and shares its result, so it runs even before anyone
/// awaits it and every waiter gets the same answer.
fn spawn_shared<T: Clone + Send + Sync + 'static>(
    future: impl Future<Output = Result<T, Arc<SolveError>>> + Send + 'static,
) -> SharedResult<T> {
    let handle = tokio::spawn(future);
    async move {
        match handle.await {
            Ok(result) => result,
            Err(join_error) => Err(Arc::new(SolveError::Task(join_error.to_string()))),
        }
    }
    .boxed()
    .shared()
}

impl<W: Worker> State<W> {
    /// After a successful solve: every vertex whose key was computed but whose value was
    /// never needed (a cache hit further down made it unnecessary) is reported as cached, as
    /// BuildKit shows every step of a cached rebuild, in vertex order.
    fn report_skipped_as_cached(&self) {
        let mut skipped: Vec<usize> = {
            let keys = lock(&self.keys);
            let values = lock(&self.values);
            keys.keys()
                .filter(|vertex| !values.contains_key(vertex))
                .copied()
                .collect()
        };
        skipped.sort_unstable();
        for vertex in skipped {
            self.events
                .send(vertex, &self.graph.vertex(vertex).name, EventKind::Cached);
        }
    }

    /// After a failure (which canceled the rest): waits until every task the solve started
    /// has ended, so that no step outlives the solve (its sandbox killed, its mounts undone,
    /// its last event sent). Tasks started meanwhile are waited for too.
    async fn wait_for_everything_started(&self) {
        let mut waited = 0;
        loop {
            let pending: Vec<BoxFuture<'static, ()>> = {
                let keys = lock(&self.keys);
                let values = lock(&self.values);
                let in_flight = lock(&self.in_flight);
                let total = keys.len() + values.len() + in_flight.len();
                if total == waited {
                    return;
                }
                waited = total;
                keys.values()
                    .map(|task| task.clone().map(|_| ()).boxed())
                    .chain(values.values().map(|task| task.clone().map(|_| ()).boxed()))
                    .chain(
                        in_flight
                            .values()
                            .map(|task| task.clone().map(|_| ()).boxed()),
                    )
                    .collect()
            };
            futures::future::join_all(pending).await;
        }
    }

    fn record_failure(&self, error: SolveError) -> Arc<SolveError> {
        let error = Arc::new(error);
        let mut first = lock(&self.first_error);
        if first.is_none() && !matches!(*error, SolveError::Canceled) {
            *first = Some(error.clone());
            self.cancel.cancel();
        }
        error
    }

    fn key(self: &Arc<Self>, vertex: usize) -> SharedResult<CacheKey> {
        let mut keys = lock(&self.keys);
        keys.entry(vertex)
            .or_insert_with(|| {
                let state = self.clone();
                spawn_shared(async move { state.compute_key(vertex).await })
            })
            .clone()
    }

    fn value_of_vertex(self: &Arc<Self>, vertex: usize) -> SharedResult<Arc<Vec<W::Value>>> {
        let mut values = lock(&self.values);
        values
            .entry(vertex)
            .or_insert_with(|| {
                let state = self.clone();
                spawn_shared(async move { state.compute_value(vertex).await })
            })
            .clone()
    }

    async fn value(self: &Arc<Self>, input: Input) -> Result<W::Value, Arc<SolveError>> {
        let outputs = self.value_of_vertex(input.vertex).await?;
        outputs.get(input.output).cloned().ok_or_else(|| {
            Arc::new(SolveError::MissingOutput {
                vertex: input.vertex,
                name: self.graph.vertex(input.vertex).name.clone(),
                produced: outputs.len(),
                wanted: input.output,
            })
        })
    }

    fn fail(&self, vertex: usize, source: WorkerError) -> Arc<SolveError> {
        let name = self.graph.vertex(vertex).name.clone();
        self.events.send(
            vertex,
            &name,
            EventKind::Failed {
                error: source.to_string(),
            },
        );
        self.record_failure(SolveError::Failed {
            vertex,
            name,
            source,
        })
    }

    async fn compute_key(self: Arc<Self>, vertex: usize) -> Result<CacheKey, Arc<SolveError>> {
        let node = self.graph.vertex(vertex);
        let map = self
            .worker
            .cache_map(&node.op)
            .await
            .map_err(|e| self.fail(vertex, e))?;
        let parts =
            futures::future::try_join_all(node.inputs.iter().enumerate().map(|(index, input)| {
                let state = self.clone();
                let dependency = map
                    .dependencies
                    .get(index)
                    .cloned()
                    .unwrap_or(Dependency::Key);
                let input = *input;
                async move {
                    match dependency {
                        Dependency::Key => {
                            let key = state.key(input.vertex).await?;
                            Ok::<_, Arc<SolveError>>(KeyPart::Key {
                                key,
                                output: input.output,
                            })
                        }
                        Dependency::Content => {
                            // A result that is always recomputed may differ under the same
                            // key: its checksums are neither used nor remembered.
                            let memo = !state.graph.vertex(input.vertex).no_cache;
                            let input_key = state.key(input.vertex).await?;
                            let op = &state.graph.vertex(vertex).op;
                            if memo {
                                let remembered = state
                                    .worker
                                    .remembered_checksum(op, index, &input_key)
                                    .await
                                    .map_err(|e| state.fail(vertex, e))?;
                                if let Some(checksum) = remembered {
                                    return Ok(KeyPart::Content { checksum });
                                }
                            }
                            let value = state.value(input).await?;
                            let checksum = state
                                .worker
                                .content_checksum(op, index, &value)
                                .await
                                .map_err(|e| state.fail(vertex, e))?;
                            if memo {
                                // Only a shortcut for later builds: failing to keep it is
                                // not an error of this one.
                                let _ = state
                                    .worker
                                    .remember_checksum(op, index, &input_key, &value, &checksum)
                                    .await;
                            }
                            Ok(KeyPart::Content { checksum })
                        }
                    }
                }
            }))
            .await?;
        let components = KeyComponents {
            definition: map.definition,
            inputs: parts,
        };
        let key = key_of(&components);
        self.events.send(
            vertex,
            &node.name,
            EventKind::Key {
                key: key.clone(),
                components,
            },
        );
        Ok(key)
    }

    async fn compute_value(
        self: Arc<Self>,
        vertex: usize,
    ) -> Result<Arc<Vec<W::Value>>, Arc<SolveError>> {
        let key = self.key(vertex).await?;
        let shared = {
            let mut in_flight = lock(&self.in_flight);
            in_flight
                .entry(key.clone())
                .or_insert_with(|| {
                    let state = self.clone();
                    spawn_shared(async move { state.run_or_load(vertex, key).await })
                })
                .clone()
        };
        shared.await
    }

    async fn run_or_load(
        self: Arc<Self>,
        vertex: usize,
        key: CacheKey,
    ) -> Result<Arc<Vec<W::Value>>, Arc<SolveError>> {
        let node = self.graph.vertex(vertex);
        if self.cancel.is_cancelled() {
            return Err(Arc::new(SolveError::Canceled));
        }
        if !node.no_cache {
            if let Some(outputs) = self
                .worker
                .load(&key, &node.op)
                .await
                .map_err(|e| self.fail(vertex, e))?
            {
                self.events.send(vertex, &node.name, EventKind::Cached);
                return Ok(Arc::new(outputs));
            }
        }
        let inputs = futures::future::try_join_all(node.inputs.iter().map(|input| {
            let state = self.clone();
            let input = *input;
            async move { state.value(input).await }
        }))
        .await?;
        let _permit = match self.worker.execution_class(&node.op) {
            ExecutionClass::Cpu => {
                let permit = tokio::select! {
                    permit = self.cpu.clone().acquire_owned() => permit.ok(),
                    () = self.cancel.cancelled() => return Err(Arc::new(SolveError::Canceled)),
                };
                permit
            }
            ExecutionClass::Unbounded => None,
        };
        if self.cancel.is_cancelled() {
            return Err(Arc::new(SolveError::Canceled));
        }
        self.events.send(vertex, &node.name, EventKind::Started);
        let started = Instant::now();
        let context = ExecContext {
            vertex,
            name: node.name.clone(),
            cancel: self.cancel.clone(),
            events: self.events.clone(),
        };
        let result = self.worker.execute(&node.op, inputs, context).await;
        let outputs = match result {
            Ok(outputs) => outputs,
            Err(error) => {
                if self.cancel.is_cancelled() && lock(&self.first_error).is_some() {
                    self.events.send(vertex, &node.name, EventKind::Canceled);
                    return Err(Arc::new(SolveError::Canceled));
                }
                return Err(self.fail(vertex, error));
            }
        };
        self.worker
            .save(&key, &node.op, &outputs)
            .await
            .map_err(|e| self.fail(vertex, e))?;
        self.events.send(
            vertex,
            &node.name,
            EventKind::Done {
                duration: started.elapsed(),
            },
        );
        Ok(Arc::new(outputs))
    }
}

/// The cache key made of its components.
pub fn key_of(components: &KeyComponents) -> CacheKey {
    let mut text = String::from("kiln-cache-key/v1\n");
    text.push_str(components.definition.as_str());
    for part in &components.inputs {
        match part {
            KeyPart::Key { key, output } => {
                text.push_str(&format!("\nkey {key} {output}"));
            }
            KeyPart::Content { checksum } => {
                text.push_str(&format!("\ncontent {checksum}"));
            }
        }
    }
    Digest::of_bytes(text.as_bytes())
}
