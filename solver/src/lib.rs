//! The solver: parallel, cached execution of a DAG of ops, generic over the op trait.
//!
//! Architecture invariant: this crate knows nothing about containers, files, images or
//! Dockerfiles. A [`Worker`] plugged in from outside says what an op's definition digest is,
//! which inputs it reads by content, how to checksum them, how to run the op and how to load and
//! save cache records. The solver owns scheduling, cache keys, deduplication and cancellation
//! (BuildKit keeps the same split between `solver` and `solver/llbsolver`).
//!
//! A vertex's cache key is
//! `sha256("kiln-cache-key/v1" + definition digest + for each input: the input's cache key and
//! output index, or the content checksum of what the op selects from it)`.
//! Keys are computed without running anything unless an input is read by content, in which
//! case that input's value is materialized (loaded from cache or computed) first. A value is
//! materialized only when someone needs it, so a fully cached build executes nothing. A
//! checksum the worker remembers for (consumer, input index, input's key) stands in for the
//! input's value, so a cached `COPY --from` does not even load the stage it copies from.

mod graph;
mod progress;
mod scheduler;

pub use tokio_util::sync::CancellationToken;

pub use graph::{Graph, GraphError, Input, Vertex};
pub use progress::{Event, EventKind, EventSink, LogStream};
pub use scheduler::{
    CacheKey, CacheMap, Dependency, ExecContext, ExecutionClass, KeyComponents, KeyPart,
    SolveError, SolveOptions, Solver, Worker, WorkerError,
};
