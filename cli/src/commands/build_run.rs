//! `kiln build` without `--print-dag`: convert, solve in parallel with the layer cache, export
//! the target stage as an image in the store and tag it.

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context};
use kiln_frontend::convert::{convert, ConvertOptions};
use kiln_frontend::dag;
use kiln_registry::{ClientOptions, RegistryClient};
use kiln_snapshotter::Store;
use kiln_solver::{CancellationToken, EventKind, EventSink, SolveOptions, Solver};
use kiln_types::Platform;
use kiln_worker::{BuildSettings, BuildWorker, ImageSources, Value};

use super::build::{parse_build_args, read_dockerfile, read_dockerignore, BuildArgs};
use crate::explain::ExplainLog;
use crate::progress::Renderer;
use crate::provider::RegistryImageProvider;

pub fn run(args: BuildArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(build(args))
}

async fn build(args: BuildArgs) -> anyhow::Result<ExitCode> {
    if !args.context.is_dir() {
        bail!(
            "build context {} is not a directory",
            args.context.display()
        );
    }
    let outputs = super::build_output::parse_outputs(&args.outputs)?;
    let mut stored_export = super::build_output::store_export(&outputs)?;
    let tags = args
        .tags
        .iter()
        .chain(&super::build_output::output_names(&outputs))
        .map(|tag| kiln_image::normalize_name(tag).with_context(|| format!("invalid tag {tag:?}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let push_after_build = super::push::build_wants_push(args.push, &args.outputs)?;
    if push_after_build && tags.is_empty() {
        bail!("pushing needs a name: use -t NAME[:TAG]");
    }
    // Layers that stay on this machine are kept uncompressed, as Docker's image store does:
    // compressing is most of the export's time, and `kiln push` (like `docker push`)
    // compresses them when they leave. A build that pushes or exports a cache compresses
    // them now, so the image and the cache share their blobs; so does a build that imports a
    // cache (its layers come compressed, and the image must equal the one that made it).
    if !stored_export.compression_given
        && !push_after_build
        && args.cache_to.is_empty()
        && args.cache_from.is_empty()
    {
        stored_export.compression = kiln_types::media_type::Compression::Uncompressed;
    }
    let settings = build_settings(&args)?;
    let (dockerfile_name, dockerfile_path, text) = read_dockerfile(&args)?;
    let dockerignore = read_dockerignore(&args.context, dockerfile_path.as_deref())?;

    let store = Store::open(&args.root)
        .with_context(|| format!("opening the store at {}", args.root.display()))?;
    let client = RegistryClient::with_options(ClientOptions {
        insecure_registries: args.insecure_registries.clone(),
        ..ClientOptions::default()
    })
    .context("setting up the registry client")?;

    // Convert, asking the store (then the registry) for base image configs.
    let resolver = kiln_image::StoreResolver::new(store.clone(), Some(client.clone()));
    let mut options = ConvertOptions::new(&resolver);
    options.build_args = parse_build_args(&args.build_args)?;
    options.target = args.target.clone();
    if let Some(platform) = &args.platform {
        options.target_platform =
            Some(Platform::parse(platform).with_context(|| format!("--platform {platform}"))?);
    }
    options.dockerignore = dockerignore;
    options.source_date_epoch = crate::build_cache::source_date_epoch_from_env()?;
    let converted = tokio::task::block_in_place(|| convert(&text, &dockerfile_name, &options))
        .map_err(|error| anyhow!("{error}"))?;

    let no_cache_stages: Vec<String> = args
        .no_cache_filter
        .iter()
        .map(|s| s.to_ascii_lowercase())
        .collect();
    let no_cache_all = args.no_cache;
    let no_cache = move |vertex: &dag::Vertex| {
        no_cache_all
            || vertex.metadata.stage.as_deref().is_some_and(|stage| {
                no_cache_stages
                    .iter()
                    .any(|wanted| wanted == &stage.to_ascii_lowercase())
            })
    };
    let (graph, target) =
        kiln_worker::graph::build_graph(&converted.definition, &converted.target, &no_cache)?;
    let graph = Arc::new(graph);

    let sandbox = kiln_runner::Sandbox::new(kiln_runner::SandboxConfig {
        state_dir: args.root.join("run"),
        cgroups: kiln_runner::CgroupMode::default(),
    })
    .context("setting up the sandbox")?;
    let _ = sandbox.cleanup_stale();
    let provider = Arc::new(RegistryImageProvider {
        store: store.clone(),
        client: client.clone(),
    });
    let sources = ImageSources::new(provider, args.pull);
    let eager = EagerLayers::new(
        &store,
        kiln_worker::graph::rootfs_chain(&converted.definition, &converted.target.digest),
        stored_export.layer_options(false, converted.source_date_epoch),
    )?;
    let worker = BuildWorker::new(store.clone(), Arc::new(sandbox), sources, settings)?
        .with_commit_observer(eager.observer());
    let worker = Arc::new(crate::build_cache::import_caches(worker, &args, &client).await?);

    let explain_key = ExplainLog::key(&args.context, &dockerfile_name);
    let mut explain = ExplainLog::load(&args.root, &explain_key);
    let solver = Solver::new(worker.clone(), SolveOptions::default());
    let (events, mut receiver) = EventSink::channel();
    let cancel = CancellationToken::new();
    let interrupt = cancel.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            interrupt.cancel();
        }
    });
    let mut renderer = Renderer::new(args.progress);
    let explain_wanted = args.explain_cache;
    let describe: HashMap<usize, String> = graph
        .vertices()
        .iter()
        .enumerate()
        .map(|(index, vertex)| (index, describe_op(&vertex.op.vertex.op)))
        .collect();
    let names: Vec<String> = graph
        .vertices()
        .iter()
        .map(|vertex| vertex.name.clone())
        .collect();
    let inputs_of: Vec<Vec<usize>> = graph
        .vertices()
        .iter()
        .map(|vertex| vertex.inputs.iter().map(|input| input.vertex).collect())
        .collect();
    let cache_keys = crate::build_cache::KeyLog::default();
    let key_log = cache_keys.clone();
    let identities: Vec<String> = graph.vertices().iter().map(step_identity).collect();
    let render = tokio::spawn(async move {
        let mut failed = None;
        let mut ran = Vec::new();
        while let Some(event) = receiver.recv().await {
            match &event.kind {
                EventKind::Key { key, components } => {
                    key_log.record(event.vertex, key);
                    explain.record(
                        &identities[event.vertex],
                        key,
                        components,
                        &describe[&event.vertex],
                        &inputs_of[event.vertex],
                        &names,
                    );
                }
                EventKind::Started => ran.push(event.vertex),
                EventKind::Failed { .. } if failed.is_none() => failed = Some(event.vertex),
                _ => {}
            }
            renderer.handle(&event);
        }
        renderer.finish();
        (renderer, explain, failed, ran)
    });
    let result = solver
        .solve(graph.clone(), target, events, cancel.clone())
        .await;
    drop(solver);
    let (renderer, mut explain, failed, ran) = render.await.context("progress renderer")?;
    worker.save_checksum_cache();
    if explain_wanted {
        for ((digest, input), listing) in worker.take_listings() {
            if let Some(position) = converted.definition.position(&digest) {
                explain.attach_listing(&step_identity(graph.vertex(position)), input, listing);
            }
        }
        for (reference, platform, digest) in worker.image_resolutions() {
            for vertex in graph.vertices() {
                if let dag::OpKind::Source(dag::SourceOp::Image(image)) = &vertex.op.vertex.op.kind
                {
                    if image.reference == reference && image.platform.to_string() == platform {
                        explain.attach_resolution(&step_identity(vertex), &digest);
                    }
                }
            }
        }
        let mut report = String::from("\ncache explanation:\n");
        for vertex in &ran {
            let node = graph.vertex(*vertex);
            if matches!(
                node.op.vertex.op.kind,
                dag::OpKind::Source(dag::SourceOp::Local(_) | dag::SourceOp::Scratch)
            ) {
                continue;
            }
            report.push_str(&explain.explain(&step_identity(node), &node.name));
        }
        write_stderr(&report);
    }
    explain.save(&args.root, &explain_key);

    let value = match result {
        Ok(value) => value,
        Err(error) => {
            if cancel.is_cancelled() && failed.is_none() {
                bail!("build canceled");
            }
            let mut message = format!("{error}");
            if let Some(vertex) = failed {
                let lines = renderer.last_lines(vertex);
                if !lines.is_empty() {
                    message.push_str("\n\nlast output of the failed step:\n");
                    for line in lines {
                        message.push_str(&format!("  {line}\n"));
                    }
                }
            }
            bail!("{message}")
        }
    };
    let top = match value {
        Value::Snapshot { top } => top,
        Value::Context { .. } => bail!("the target stage is the build context itself"),
    };
    crate::build_cache::prepare_base_image(&worker, &converted, &client).await;
    for warning in super::build_output::warnings(&outputs, converted.source_date_epoch) {
        write_stderr(&format!("warning: {warning}\n"));
    }
    let plan = tokio::task::block_in_place(|| {
        eager.wait();
        super::build_output::ImagePlan::new(worker.store(), &converted, top.as_ref())
    })?;
    let built = tokio::task::block_in_place(|| {
        plan.build_stored(worker.store(), worker.lease(), &stored_export)
    })?;
    let built = crate::build_cache::export_caches(
        crate::build_cache::ExportInputs {
            args: &args,
            worker: &worker,
            graph: &graph,
            keys: &cache_keys,
            client: &client,
            converted: &converted,
            top: top.as_ref(),
        },
        built,
    )
    .await?;
    let mut out = String::new();
    out.push_str(&format!("writing image {}\n", built.config_digest()));
    if !tags.is_empty() {
        kiln_exporter::tag(worker.store(), &tags, &built.manifest_descriptor)?;
        for name in &tags {
            out.push_str(&format!("naming to {name}\n"));
        }
    }
    write_stderr(&out);
    tokio::task::block_in_place(|| {
        super::build_output::write_archives(
            worker.store(),
            worker.lease(),
            &plan,
            &outputs,
            &tags,
            &built,
            &stored_export,
        )
    })?;
    if push_after_build {
        super::push::push_built_tags(worker.store(), &client, &tags).await?;
    }
    Ok(ExitCode::SUCCESS)
}

fn write_stderr(text: &str) {
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

/// What `--explain-cache` matches a step by across builds: its stage and Dockerfile line (its
/// name changes with expanded arguments), else its name.
fn step_identity(vertex: &kiln_solver::Vertex<kiln_worker::graph::WorkerOp>) -> String {
    let metadata = &vertex.op.vertex.metadata;
    match metadata.lines {
        Some((line, _)) => format!(
            "{}@{line}:{}",
            metadata.stage.as_deref().unwrap_or(""),
            vertex.op.vertex.op.kind.name()
        ),
        None => vertex.name.clone(),
    }
}

/// A short description of an op for `--explain-cache` (its definition without inputs).
fn describe_op(op: &dag::Op) -> String {
    serde_json::to_string(&op.kind).unwrap_or_default()
}

/// Secrets, ssh agents, network and entitlements from the command line.
fn build_settings(args: &BuildArgs) -> anyhow::Result<BuildSettings> {
    let mut secrets = HashMap::new();
    for spec in &args.secret {
        let fields: BTreeMap<&str, &str> = spec
            .split(',')
            .filter_map(|field| field.split_once('='))
            .collect();
        let id = fields
            .get("id")
            .copied()
            .ok_or_else(|| anyhow!("--secret {spec:?}: id= is required"))?;
        let value = if let Some(path) = fields.get("src").or_else(|| fields.get("source")) {
            std::fs::read(path).with_context(|| format!("--secret {id}: reading {path}"))?
        } else if let Some(variable) = fields.get("env") {
            std::env::var(variable)
                .with_context(|| format!("--secret {id}: ${variable} is not set"))?
                .into_bytes()
        } else {
            std::env::var(id)
                .with_context(|| format!("--secret {id}: no src=, env=, or ${id}"))?
                .into_bytes()
        };
        secrets.insert(id.to_string(), value);
    }
    let mut ssh_agents = HashMap::new();
    for spec in &args.ssh {
        let (id, path) = match spec.split_once('=') {
            Some((id, path)) => (id.to_string(), PathBuf::from(path)),
            None => {
                let socket = std::env::var("SSH_AUTH_SOCK")
                    .with_context(|| format!("--ssh {spec}: SSH_AUTH_SOCK is not set"))?;
                (spec.clone(), PathBuf::from(socket))
            }
        };
        ssh_agents.insert(id, path);
    }
    let default_network = match args.network.as_str() {
        "default" | "host" => kiln_runner::Network::Host,
        "none" => kiln_runner::Network::None,
        other => bail!("--network {other:?}: expected default, none or host"),
    };
    Ok(BuildSettings {
        context_dir: args.context.clone(),
        secrets,
        ssh_agents,
        default_network,
        allow_insecure: args
            .allow
            .iter()
            .any(|entitlement| entitlement == "security.insecure"),
        record_listings: args.explain_cache,
    })
}

/// The image's new layers exported while the build goes on: each snapshot an op on the
/// target's root filesystem chain commits is exported (as the stored image will be) on a
/// thread of its own, so a large COPY's layer is written and hashed while the RUN steps
/// after it run. The final export finds each such layer recorded and reuses it; a failed
/// early export is only lost time (the final one does it again and reports the error).
struct EagerLayers {
    state: Arc<EagerState>,
}

struct EagerState {
    store: Store,
    /// Protects what the early exports write until the final export has taken it.
    lease: kiln_snapshotter::Lease,
    chain: std::collections::HashSet<kiln_types::Digest>,
    options: kiln_exporter::LayerOptions,
    running: std::sync::Mutex<Vec<std::thread::JoinHandle<()>>>,
}

impl EagerLayers {
    fn new(
        store: &Store,
        chain: std::collections::HashSet<kiln_types::Digest>,
        options: kiln_exporter::LayerOptions,
    ) -> anyhow::Result<Self> {
        let lease = store
            .lease("build-layers")
            .context("taking a lease for the build's layers")?;
        Ok(EagerLayers {
            state: Arc::new(EagerState {
                store: store.clone(),
                lease,
                chain,
                options,
                running: std::sync::Mutex::new(Vec::new()),
            }),
        })
    }

    fn observer(&self) -> kiln_worker::build::CommitObserver {
        let state = self.state.clone();
        Arc::new(move |op, snapshot| {
            if !state.chain.contains(op) {
                return;
            }
            let job = state.clone();
            let snapshot = snapshot.clone();
            let spawned = std::thread::Builder::new()
                .name("kiln-layer".into())
                .spawn(move || {
                    let exporter = kiln_exporter::LayerExporter::new(&job.store);
                    let _ = exporter.layer_for_snapshot(&job.lease, &snapshot, &job.options);
                });
            if let Ok(handle) = spawned {
                state
                    .running
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .push(handle);
            }
        })
    }

    /// Waits for the early exports started so far.
    fn wait(&self) {
        let running = std::mem::take(
            &mut *self
                .state
                .running
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        );
        for handle in running {
            let _ = handle.join();
        }
    }
}
