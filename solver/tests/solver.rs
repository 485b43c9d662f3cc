//! Solver tests with fake ops that count executions and cache hits (as BuildKit's solver tests
//! count execCallCount / cacheCallCount): cache behaviour proven without containers.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kiln_solver::{
    CacheKey, CacheMap, Dependency, EventKind, EventSink, ExecContext, ExecutionClass, Graph,
    Input, KeyComponents, SolveOptions, Solver, Vertex, Worker, WorkerError,
};
use kiln_types::Digest;

/// A fake op: its value is its name joined with its inputs' values.
#[derive(Debug, Clone)]
struct FakeOp {
    name: String,
    /// Time the op takes.
    sleep: Duration,
    fail: bool,
    /// Inputs read by content: the checksum is taken of the input value's text.
    content_inputs: Vec<usize>,
    /// Wait for this many ops to be running at once before finishing (proves overlap).
    barrier: Option<Arc<tokio::sync::Barrier>>,
    class: ExecutionClass,
}

impl FakeOp {
    fn new(name: &str) -> Self {
        FakeOp {
            name: name.into(),
            sleep: Duration::ZERO,
            fail: false,
            content_inputs: vec![],
            barrier: None,
            class: ExecutionClass::Cpu,
        }
    }
}

#[derive(Default)]
struct FakeWorker {
    executions: Mutex<HashMap<String, usize>>,
    cache_hits: AtomicUsize,
    cache: Mutex<HashMap<CacheKey, Vec<String>>>,
    running: AtomicUsize,
    max_running: AtomicUsize,
    canceled: AtomicUsize,
    /// The "content" of each op's value as seen by content checksums (value -> content).
    contents: Mutex<HashMap<String, String>>,
    /// Remember content checksums by (consumer, input index, input key).
    remember: bool,
    remembered: Mutex<HashMap<(String, usize, CacheKey), Digest>>,
    checksums_computed: AtomicUsize,
}

impl FakeWorker {
    fn executions(&self, name: &str) -> usize {
        self.executions
            .lock()
            .unwrap()
            .get(name)
            .copied()
            .unwrap_or(0)
    }
    fn total_executions(&self) -> usize {
        self.executions.lock().unwrap().values().sum()
    }
}

fn boxed(message: &str) -> WorkerError {
    message.to_string().into()
}

impl Worker for FakeWorker {
    type Op = FakeOp;
    type Value = String;

    async fn cache_map(&self, op: &FakeOp) -> Result<CacheMap, WorkerError> {
        let dependencies = (0..8)
            .map(|i| {
                if op.content_inputs.contains(&i) {
                    Dependency::Content
                } else {
                    Dependency::Key
                }
            })
            .collect();
        Ok(CacheMap {
            definition: Digest::of_bytes(op.name.as_bytes()),
            dependencies,
        })
    }

    async fn content_checksum(
        &self,
        _op: &FakeOp,
        _input: usize,
        value: &String,
    ) -> Result<Digest, WorkerError> {
        self.checksums_computed.fetch_add(1, Ordering::SeqCst);
        let contents = self.contents.lock().unwrap();
        let content = contents.get(value).cloned().unwrap_or_default();
        Ok(Digest::of_bytes(content.as_bytes()))
    }

    async fn load(&self, key: &CacheKey, _op: &FakeOp) -> Result<Option<Vec<String>>, WorkerError> {
        let hit = self.cache.lock().unwrap().get(key).cloned();
        if hit.is_some() {
            self.cache_hits.fetch_add(1, Ordering::SeqCst);
        }
        Ok(hit)
    }

    async fn execute(
        &self,
        op: &FakeOp,
        inputs: Vec<String>,
        context: ExecContext,
    ) -> Result<Vec<String>, WorkerError> {
        *self
            .executions
            .lock()
            .unwrap()
            .entry(op.name.clone())
            .or_default() += 1;
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_running.fetch_max(now, Ordering::SeqCst);
        let result = async {
            if let Some(barrier) = &op.barrier {
                barrier.wait().await;
            }
            tokio::select! {
                () = tokio::time::sleep(op.sleep) => {}
                () = context.cancel.cancelled() => {
                    self.canceled.fetch_add(1, Ordering::SeqCst);
                    return Err(boxed("canceled"));
                }
            }
            if op.fail {
                return Err(boxed("exit code 1"));
            }
            context.log(kiln_solver::LogStream::Stdout, op.name.as_bytes());
            Ok(vec![format!("{}({})", op.name, inputs.join(","))])
        }
        .await;
        self.running.fetch_sub(1, Ordering::SeqCst);
        result
    }

    async fn save(
        &self,
        key: &CacheKey,
        _op: &FakeOp,
        outputs: &[String],
    ) -> Result<(), WorkerError> {
        self.cache
            .lock()
            .unwrap()
            .insert(key.clone(), outputs.to_vec());
        Ok(())
    }

    async fn remembered_checksum(
        &self,
        op: &FakeOp,
        input: usize,
        input_key: &CacheKey,
    ) -> Result<Option<Digest>, WorkerError> {
        let remembered = self.remembered.lock().unwrap();
        Ok(remembered
            .get(&(op.name.clone(), input, input_key.clone()))
            .cloned())
    }

    async fn remember_checksum(
        &self,
        op: &FakeOp,
        input: usize,
        input_key: &CacheKey,
        _value: &String,
        checksum: &Digest,
    ) -> Result<(), WorkerError> {
        if self.remember {
            self.remembered.lock().unwrap().insert(
                (op.name.clone(), input, input_key.clone()),
                checksum.clone(),
            );
        }
        Ok(())
    }

    fn execution_class(&self, op: &FakeOp) -> ExecutionClass {
        op.class
    }
}

fn vertex(op: FakeOp, inputs: &[usize]) -> Vertex<FakeOp> {
    Vertex {
        name: op.name.clone(),
        op,
        inputs: inputs
            .iter()
            .map(|&vertex| Input { vertex, output: 0 })
            .collect(),
        no_cache: false,
    }
}

async fn solve(
    worker: &Arc<FakeWorker>,
    graph: &Graph<FakeOp>,
    target: usize,
) -> Result<String, String> {
    let solver = Solver::new(worker.clone(), SolveOptions { cpu_parallelism: 4 });
    solver
        .solve(
            Arc::new(graph.clone()),
            Input {
                vertex: target,
                output: 0,
            },
            EventSink::discard(),
            tokio_util::sync::CancellationToken::new(),
        )
        .await
        .map_err(|e| e.to_string())
}

/// base -> a, base -> b, (a, b) -> final
fn diamond() -> Graph<FakeOp> {
    let mut graph = Graph::new();
    let base = graph.add(vertex(FakeOp::new("base"), &[])).unwrap();
    let a = graph.add(vertex(FakeOp::new("a"), &[base])).unwrap();
    let b = graph.add(vertex(FakeOp::new("b"), &[base])).unwrap();
    graph.add(vertex(FakeOp::new("final"), &[a, b])).unwrap();
    graph
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn runs_each_op_once_and_combines_inputs() {
    let worker = Arc::new(FakeWorker::default());
    let result = solve(&worker, &diamond(), 3).await.unwrap();
    assert_eq!(result, "final(a(base()),b(base()))");
    for name in ["base", "a", "b", "final"] {
        assert_eq!(worker.executions(name), 1, "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn independent_ops_overlap() {
    // Each of the two middle ops waits at a barrier for the other: the build only finishes
    // if both run at the same time.
    let barrier = Arc::new(tokio::sync::Barrier::new(2));
    let mut graph = Graph::new();
    let base = graph.add(vertex(FakeOp::new("base"), &[])).unwrap();
    let mut a = FakeOp::new("a");
    a.barrier = Some(barrier.clone());
    a.class = ExecutionClass::Unbounded;
    let mut b = FakeOp::new("b");
    b.barrier = Some(barrier);
    b.class = ExecutionClass::Unbounded;
    let a = graph.add(vertex(a, &[base])).unwrap();
    let b = graph.add(vertex(b, &[base])).unwrap();
    let last = graph.add(vertex(FakeOp::new("final"), &[a, b])).unwrap();
    let worker = Arc::new(FakeWorker::default());
    tokio::time::timeout(Duration::from_secs(10), solve(&worker, &graph, last))
        .await
        .expect("independent ops did not overlap")
        .unwrap();
    assert_eq!(worker.max_running.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cpu_ops_respect_the_limit() {
    let mut graph = Graph::new();
    let mut inputs = vec![];
    for i in 0..6 {
        let mut op = FakeOp::new(&format!("op{i}"));
        op.sleep = Duration::from_millis(20);
        inputs.push(graph.add(vertex(op, &[])).unwrap());
    }
    let last = graph.add(vertex(FakeOp::new("final"), &inputs)).unwrap();
    let worker = Arc::new(FakeWorker::default());
    let solver = Solver::new(worker.clone(), SolveOptions { cpu_parallelism: 2 });
    solver
        .solve(
            Arc::new(graph),
            Input {
                vertex: last,
                output: 0,
            },
            EventSink::discard(),
            tokio_util::sync::CancellationToken::new(),
        )
        .await
        .unwrap();
    assert!(worker.max_running.load(Ordering::SeqCst) <= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn identical_ops_run_once() {
    // Two vertices with the same definition and inputs have the same key: computed once.
    let mut graph = Graph::new();
    let base = graph.add(vertex(FakeOp::new("base"), &[])).unwrap();
    let first = graph.add(vertex(FakeOp::new("same"), &[base])).unwrap();
    let second = graph.add(vertex(FakeOp::new("same"), &[base])).unwrap();
    let last = graph
        .add(vertex(FakeOp::new("final"), &[first, second]))
        .unwrap();
    let worker = Arc::new(FakeWorker::default());
    let result = solve(&worker, &graph, last).await.unwrap();
    assert_eq!(result, "final(same(base()),same(base()))");
    assert_eq!(worker.executions("same"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn first_failure_cancels_the_rest() {
    let mut graph = Graph::new();
    // both start before the failure (else the slow op may not have begun when it is canceled)
    let started = Arc::new(tokio::sync::Barrier::new(2));
    let mut slow = FakeOp::new("slow");
    slow.sleep = Duration::from_secs(60);
    slow.class = ExecutionClass::Unbounded;
    slow.barrier = Some(started.clone());
    let slow = graph.add(vertex(slow, &[])).unwrap();
    let mut failing = FakeOp::new("failing");
    failing.fail = true;
    failing.class = ExecutionClass::Unbounded;
    failing.barrier = Some(started);
    let failing = graph.add(vertex(failing, &[])).unwrap();
    let after_slow = graph
        .add(vertex(FakeOp::new("after-slow"), &[slow]))
        .unwrap();
    let last = graph
        .add(vertex(FakeOp::new("final"), &[after_slow, failing]))
        .unwrap();
    let worker = Arc::new(FakeWorker::default());
    let error = tokio::time::timeout(Duration::from_secs(10), solve(&worker, &graph, last))
        .await
        .expect("the failure did not cancel the slow op")
        .unwrap_err();
    assert_eq!(error, "failing: exit code 1");
    assert_eq!(worker.canceled.load(Ordering::SeqCst), 1);
    assert_eq!(worker.executions("after-slow"), 0);
    assert_eq!(worker.executions("final"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rebuild_is_fully_cached_and_lazy() {
    let worker = Arc::new(FakeWorker::default());
    let graph = diamond();
    solve(&worker, &graph, 3).await.unwrap();
    assert_eq!(worker.total_executions(), 4);
    let result = solve(&worker, &graph, 3).await.unwrap();
    assert_eq!(result, "final(a(base()),b(base()))");
    assert_eq!(worker.total_executions(), 4, "nothing runs again");
    // Only the target is loaded: its inputs are never materialized.
    assert_eq!(worker.cache_hits.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_changed_op_invalidates_only_what_depends_on_it() {
    let worker = Arc::new(FakeWorker::default());
    solve(&worker, &diamond(), 3).await.unwrap();
    let mut changed = diamond();
    changed.vertex_mut(1).op.name = "a2".into();
    solve(&worker, &changed, 3).await.unwrap();
    assert_eq!(worker.executions("a2"), 1);
    assert_eq!(worker.executions("final"), 2);
    assert_eq!(worker.executions("b"), 1, "b does not depend on a");
    assert_eq!(worker.executions("base"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn content_dependencies_follow_content_not_upstream_keys() {
    // context -> copy (reads the context by content) -> run
    let build = |context_name: &str| {
        let mut graph = Graph::new();
        let context = graph.add(vertex(FakeOp::new(context_name), &[])).unwrap();
        let mut copy = FakeOp::new("copy");
        copy.content_inputs = vec![0];
        let copy = graph.add(vertex(copy, &[context])).unwrap();
        graph.add(vertex(FakeOp::new("run"), &[copy])).unwrap();
        graph
    };
    let worker = Arc::new(FakeWorker::default());
    worker
        .contents
        .lock()
        .unwrap()
        .insert("ctx1()".into(), "selected files v1".into());
    worker
        .contents
        .lock()
        .unwrap()
        .insert("ctx2()".into(), "selected files v1".into());
    solve(&worker, &build("ctx1"), 2).await.unwrap();
    // A different context op whose selected content is the same: copy and run stay cached.
    solve(&worker, &build("ctx2"), 2).await.unwrap();
    assert_eq!(worker.executions("copy"), 1);
    assert_eq!(worker.executions("run"), 1);
    // The selected content changes: copy and run run again.
    worker
        .contents
        .lock()
        .unwrap()
        .insert("ctx2()".into(), "selected files v2".into());
    solve(&worker, &build("ctx2"), 2).await.unwrap();
    assert_eq!(worker.executions("copy"), 2);
    assert_eq!(worker.executions("run"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn remembered_checksums_spare_materializing_the_input() {
    // stage -> copy (reads the stage by content) -> run, as COPY --from=stage.
    let mut graph = Graph::new();
    let stage = graph.add(vertex(FakeOp::new("stage"), &[])).unwrap();
    let mut copy = FakeOp::new("copy");
    copy.content_inputs = vec![0];
    let copy = graph.add(vertex(copy, &[stage])).unwrap();
    graph.add(vertex(FakeOp::new("run"), &[copy])).unwrap();
    let worker = Arc::new(FakeWorker {
        remember: true,
        ..FakeWorker::default()
    });
    solve(&worker, &graph, 2).await.unwrap();
    assert_eq!(worker.checksums_computed.load(Ordering::SeqCst), 1);
    // Only the target's record is kept (a cache imported in min mode): the stage is neither
    // run nor loaded, its checksum comes from memory.
    let stage_key = {
        let cache = worker.cache.lock().unwrap();
        cache
            .iter()
            .find(|(_, value)| value[0] == "stage()")
            .map(|(key, _)| key.clone())
            .unwrap()
    };
    worker.cache.lock().unwrap().remove(&stage_key);
    let hits_before = worker.cache_hits.load(Ordering::SeqCst);
    solve(&worker, &graph, 2).await.unwrap();
    assert_eq!(worker.executions("stage"), 1);
    assert_eq!(worker.executions("copy"), 1);
    assert_eq!(worker.executions("run"), 1);
    assert_eq!(worker.checksums_computed.load(Ordering::SeqCst), 1);
    assert_eq!(worker.cache_hits.load(Ordering::SeqCst) - hits_before, 1);
    // A stage marked no-cache is recomputed and its checksum taken again.
    let mut no_cache = graph.clone();
    no_cache.vertex_mut(stage).no_cache = true;
    solve(&worker, &no_cache, 2).await.unwrap();
    assert_eq!(worker.executions("stage"), 2);
    assert_eq!(worker.checksums_computed.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_cache_vertices_run_again() {
    let worker = Arc::new(FakeWorker::default());
    solve(&worker, &diamond(), 3).await.unwrap();
    let mut graph = diamond();
    for index in 0..graph.len() {
        graph.vertex_mut(index).no_cache = true;
    }
    solve(&worker, &graph, 3).await.unwrap();
    assert_eq!(worker.total_executions(), 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn key_events_explain_what_changed() {
    let worker = Arc::new(FakeWorker::default());
    let (events, mut receiver) = EventSink::channel();
    let solver = Solver::new(worker.clone(), SolveOptions::default());
    solver
        .solve(
            Arc::new(diamond()),
            Input {
                vertex: 3,
                output: 0,
            },
            events,
            tokio_util::sync::CancellationToken::new(),
        )
        .await
        .unwrap();
    let mut components: HashMap<String, KeyComponents> = HashMap::new();
    let mut logs = 0;
    while let Ok(event) = receiver.try_recv() {
        match event.kind {
            EventKind::Key {
                components: parts, ..
            } => {
                components.insert(event.name, parts);
            }
            EventKind::Log { .. } => logs += 1,
            _ => {}
        }
    }
    assert_eq!(components.len(), 4);
    assert_eq!(components["final"].inputs.len(), 2);
    assert_eq!(logs, 4);
}
