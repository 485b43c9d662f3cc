//! The progress event stream: one event per vertex state change or log chunk.

use std::time::{Duration, SystemTime};

use crate::scheduler::{CacheKey, KeyComponents};

/// Which output stream a log chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogStream {
    Stdout,
    Stderr,
}

/// What happened.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventKind {
    /// The vertex's cache key is known.
    Key {
        key: CacheKey,
        components: KeyComponents,
    },
    /// The vertex was found in the cache and will not run.
    Cached,
    /// The vertex started running.
    Started,
    /// Output of the running vertex.
    Log { stream: LogStream, data: String },
    /// The vertex finished.
    Done { duration: Duration },
    /// The vertex failed.
    Failed { error: String },
    /// The vertex was stopped because another one failed or the build was interrupted.
    Canceled,
}

/// An event about one vertex.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Event {
    pub vertex: usize,
    pub name: String,
    pub time: SystemTime,
    #[serde(flatten)]
    pub kind: EventKind,
}

/// Where events go. Cloning shares the channel; a closed receiver drops events silently.
#[derive(Debug, Clone)]
pub struct EventSink {
    sender: Option<tokio::sync::mpsc::UnboundedSender<Event>>,
}

impl EventSink {
    /// A sink and the receiving end.
    pub fn channel() -> (Self, tokio::sync::mpsc::UnboundedReceiver<Event>) {
        let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
        (
            EventSink {
                sender: Some(sender),
            },
            receiver,
        )
    }

    /// A sink that drops everything.
    pub fn discard() -> Self {
        EventSink { sender: None }
    }

    pub fn send(&self, vertex: usize, name: &str, kind: EventKind) {
        if let Some(sender) = &self.sender {
            let _ = sender.send(Event {
                vertex,
                name: name.to_string(),
                time: SystemTime::now(),
                kind,
            });
        }
    }
}
