//! What an op produces: a snapshot (a filesystem in the store) or the build context in place.

use std::path::PathBuf;

use kiln_snapshotter::SnapshotId;

/// One output of an op.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Value {
    /// A committed snapshot and its ancestors; `None` is the empty filesystem (scratch).
    Snapshot { top: Option<SnapshotId> },
    /// The build context, read in place, with the local source's filters.
    Context {
        dir: PathBuf,
        include: Vec<String>,
        exclude: Vec<String>,
    },
}

impl Value {
    pub fn scratch() -> Self {
        Value::Snapshot { top: None }
    }

    pub fn snapshot(top: SnapshotId) -> Self {
        Value::Snapshot { top: Some(top) }
    }
}
