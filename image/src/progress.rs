//! Pull progress: events per layer, given to a callback the caller chooses (the CLI draws
//! bars on a terminal and plain lines otherwise).

use std::sync::Arc;

use kiln_types::Digest;

/// One thing that happened during a pull.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PullEvent {
    /// The reference resolved to a manifest with this many layers.
    Resolved {
        reference: String,
        manifest: Digest,
        layers: usize,
    },
    /// A layer changed state (or, while downloading, made progress).
    Layer {
        index: usize,
        digest: Digest,
        size: u64,
        state: LayerState,
    },
    /// The image was tagged in the store.
    Tagged { name: String },
}

/// Where one layer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LayerState {
    /// Queued for a download slot.
    Waiting,
    /// Unpacked already (and its blob stored): nothing to do.
    AlreadyExists,
    /// Downloading; `unpacking` when the bytes go straight into the unpacker too.
    Downloading {
        downloaded: u64,
        resumed_from: u64,
        unpacking: bool,
    },
    /// The blob is stored and verified; the layer waits for the layer below it.
    Downloaded,
    /// Unpacking from the stored blob.
    Extracting,
    /// Unpacked and committed.
    Done,
}

/// A cheap, shareable progress callback.
#[derive(Clone)]
pub struct Progress {
    callback: Option<Arc<dyn Fn(PullEvent) + Send + Sync>>,
}

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Progress")
            .field("callback", &self.callback.is_some())
            .finish()
    }
}

impl Progress {
    /// Calls `callback` with every event (from several threads).
    pub fn new(callback: impl Fn(PullEvent) + Send + Sync + 'static) -> Self {
        Progress {
            callback: Some(Arc::new(callback)),
        }
    }

    /// Reports nothing.
    pub fn none() -> Self {
        Progress { callback: None }
    }

    pub(crate) fn emit(&self, event: PullEvent) {
        if let Some(callback) = &self.callback {
            callback(event);
        }
    }
}

impl Default for Progress {
    fn default() -> Self {
        Self::none()
    }
}
