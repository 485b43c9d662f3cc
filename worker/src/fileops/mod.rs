//! File actions of a file op (copy, mkdir, mkfile, rm, symlink) applied to a destination
//! directory, with the results BuildKit's file backend and tonistiigi/fsutil's copy give.
//!
//! The destination is a plain directory (the merged view of an overlay mount); sources are
//! plain directories too ([`SourceRoot`]: the build context with its `.dockerignore`, or a
//! read-only stage or image snapshot). Every path, on both sides, is resolved inside its root
//! the way a chroot would ([`root`]): a destination through a symlink such as
//! `var/run -> /run` lands inside the destination, and a source path can never reach outside
//! its root; symlinks inside copied trees are copied as links, never followed.
//!
//! Copies run in parallel (directories first, in order; then file contents on a thread pool
//! with `FICLONE` or `copy_file_range`; then directory metadata, deepest first).

mod copy;
mod fsys;
mod mode;
mod ops;
mod owner;
pub(crate) mod root;
pub(crate) mod select;
pub(crate) mod stat;
mod unpack;

use std::fmt::Display;
use std::io;
use std::path::Path;

use kiln_frontend::dag::op::FileAction;
use kiln_frontend::dockerignore::{Error as DockerIgnoreError, PatternError};

pub use mode::{parse_symbolic, ModeCommand, ModeSpec};
pub use owner::{find_group, find_user, resolve_owner, Owner, MAX_ID};
pub use select::SourceRoot;
pub use unpack::{detect_archive, ArchiveKind};

pub(crate) use fsys::read_xattrs as read_xattrs_of;

/// Why a file action failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FileOpError {
    /// A source path (or a `--parents` required path) does not exist in the source.
    #[error("{path:?}: not found")]
    NotFound { path: String },
    /// A wildcard source matched nothing and empty matches are not allowed.
    #[error("no source files were specified: {pattern:?} matched nothing")]
    NoMatch { pattern: String },
    /// A wildcard with bad syntax (`[a-`, trailing `\`).
    #[error("bad wildcard {pattern:?}: {reason}")]
    InvalidWildcard {
        pattern: String,
        reason: &'static str,
    },
    /// An include or exclude pattern with bad syntax.
    #[error("bad include or exclude pattern")]
    InvalidPattern {
        #[from]
        source: PatternError,
    },
    /// The source's `.dockerignore` could not be read.
    #[error("reading .dockerignore")]
    DockerIgnore { source: DockerIgnoreError },
    /// A `--chmod` that is not a mode.
    #[error("invalid mode {mode:?}: {reason}")]
    InvalidMode { mode: String, reason: &'static str },
    /// A `--chown` id above 2^31-1 (or resolved to one from the destination's passwd).
    #[error("invalid owner id {id}: ids above 2147483647 are not allowed")]
    InvalidOwner { id: u32 },
    /// The destination's parent does not exist and the action does not create it.
    #[error("destination parent of {path:?} does not exist")]
    DestinationParentMissing { path: String },
    /// A file would replace a directory (without `always_replace_existing_dest_paths`).
    #[error("cannot replace to directory {path:?} with file")]
    CannotReplaceDirectory { path: String },
    /// A directory would be copied over an existing non-directory.
    #[error("cannot copy to non-directory: {path:?}")]
    NotADirectory { path: String },
    /// A path went through more symlinks than allowed (a loop).
    #[error("too many levels of symbolic links resolving {path:?}")]
    TooManySymlinks { path: String },
    /// `/etc/passwd` or `/etc/group` of the destination is not a regular file.
    #[error("{path:?} is not a regular file")]
    NotRegularFile { path: String },
    /// A path that no action may touch (removing or replacing the root itself).
    #[error("invalid path {path:?}: {reason}")]
    InvalidPath { path: String, reason: &'static str },
    /// An archive (ADD) that could not be unpacked safely.
    #[error("unpacking archive {path:?}: {reason}")]
    Archive { path: String, reason: String },
    /// A filesystem operation failed.
    #[error("{operation} {path}")]
    Io {
        operation: &'static str,
        path: String,
        #[source]
        source: io::Error,
    },
}

impl FileOpError {
    pub(crate) fn io(operation: &'static str, path: impl Display, source: io::Error) -> Self {
        FileOpError::Io {
            operation,
            path: path.to_string(),
            source,
        }
    }

    pub(crate) fn from_resolve(error: root::ResolveError, path: impl Display) -> Self {
        match error {
            root::ResolveError::TooManySymlinks => FileOpError::TooManySymlinks {
                path: path.to_string(),
            },
            root::ResolveError::Io(source) => FileOpError::io("resolving", path, source),
        }
    }
}

/// Options of [`apply_action`] that are not part of the action.
#[derive(Debug, Clone, Default)]
pub struct FileOpOptions {
    /// Copy without the thread pool (for measurements; results are identical).
    pub sequential: bool,
}

/// Applies one file action to the destination root `dest_root`. `sources` are the op's inputs
/// in order (a copy's `source_input` indexes them); the destination root is the op's base.
pub fn apply_action(
    action: &FileAction,
    dest_root: &Path,
    sources: &[SourceRoot],
    options: &FileOpOptions,
) -> Result<(), FileOpError> {
    match action {
        FileAction::Copy(copy_action) => {
            let index = copy_action.source_input as usize;
            let source = sources.get(index).ok_or(FileOpError::InvalidPath {
                path: format!("input {index}"),
                reason: "copy source input out of range",
            })?;
            copy::copy(copy_action, source, dest_root, options)
        }
        FileAction::Mkdir(mkdir) => ops::mkdir(mkdir, dest_root),
        FileAction::Mkfile(mkfile) => ops::mkfile(mkfile, dest_root),
        FileAction::Rm(rm) => ops::rm(rm, dest_root),
        FileAction::Symlink(symlink) => ops::symlink(symlink, dest_root),
    }
}

/// Applies every action of a file op in order.
pub fn apply_actions(
    actions: &[FileAction],
    dest_root: &Path,
    sources: &[SourceRoot],
    options: &FileOpOptions,
) -> Result<(), FileOpError> {
    for action in actions {
        apply_action(action, dest_root, sources, options)?;
    }
    Ok(())
}
