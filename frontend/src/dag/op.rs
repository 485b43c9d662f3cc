//! The op types of a build DAG, modelled on BuildKit's LLB (`solver/pb/ops.proto`).
//!
//! Every field here except those named "not digested" is part of the op's digest. Input
//! indexes (`input: u32`) point into the owning [`Op::inputs`] list.

use serde::{Deserialize, Serialize};

use kiln_types::{Digest, Platform};

/// An edge: one output of another op, named by that op's digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Input {
    /// The digest of the op that produces the input.
    pub digest: Digest,
    /// Which of that op's outputs (0 for the root filesystem of an exec, the only output of
    /// every other op).
    pub output: u32,
}

/// One node of the DAG: what to do, on which inputs, for which platform.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    /// The inputs, in order; ops name them by index into this list.
    pub inputs: Vec<Input>,
    /// The platform the op's result is for (the stage's platform).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    /// The work itself.
    pub kind: OpKind,
}

/// The four kinds of op.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpKind {
    /// A filesystem that comes from outside the build (no inputs).
    Source(SourceOp),
    /// Run a process over a root filesystem and mounts.
    Exec(ExecOp),
    /// A sequence of file actions (copy, mkdir, mkfile, rm, symlink) over a base.
    File(FileOp),
    /// Layer the inputs on top of each other, first input lowest (`COPY --link`).
    Merge(MergeOp),
}

impl OpKind {
    /// A short name of the kind: `image`, `local`, `scratch`, `http`, `git`, `exec`, `file`, `merge`.
    pub fn name(&self) -> &'static str {
        match self {
            OpKind::Source(SourceOp::Image(_)) => "image",
            OpKind::Source(SourceOp::Local(_)) => "local",
            OpKind::Source(SourceOp::Scratch) => "scratch",
            OpKind::Source(SourceOp::Http(_)) => "http",
            OpKind::Source(SourceOp::Git(_)) => "git",
            OpKind::Exec(_) => "exec",
            OpKind::File(_) => "file",
            OpKind::Merge(_) => "merge",
        }
    }
}

/// Where a source op's filesystem comes from. A source op has no inputs and one output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceOp {
    /// A registry image. The manifest digest it resolves to is not part of the definition:
    /// the solver resolves `reference` for `platform` and uses the manifest digest as the
    /// op's cache key.
    Image(ImageSource),
    /// Files of a local directory sent by the client (the build context).
    Local(LocalSource),
    /// The empty filesystem.
    Scratch,
    /// One file downloaded over HTTP(S) (`ADD <url>`).
    Http(HttpSource),
    /// A git repository checkout (`ADD <git url>`).
    Git(GitSource),
}

/// A base image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageSource {
    /// The reference as the Dockerfile wrote it after expansion (`alpine:3.20`). Not digested:
    /// `reference` carries the same information.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub written: String,
    /// The fully qualified reference (`docker.io/library/alpine:3.20`, or with `@sha256:...`).
    pub reference: String,
    /// The platform to pick from an index.
    pub platform: Platform,
}

/// The build context, or a subset of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalSource {
    /// The client-side name of the directory (`context`).
    pub name: String,
    /// Only these paths (relative, patterns allowed) are transferred; empty means all
    /// (BuildKit's `followPaths` / `includePatterns`).
    pub include_patterns: Vec<String>,
    /// Paths excluded from the transfer (`.dockerignore`), in file order, `!` negations kept.
    pub exclude_patterns: Vec<String>,
    /// A key under which the solver may keep the transferred files between builds.
    pub shared_key: String,
}

/// A downloaded file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpSource {
    pub url: String,
    /// The expected digest of the downloaded bytes (`ADD --checksum`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<Digest>,
    /// The name of the single file the output contains.
    pub filename: String,
    /// The file's mode; `None` means 0600 like BuildKit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permissions: Option<u32>,
}

/// A git checkout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GitSource {
    /// The remote as given (`https://github.com/moby/buildkit.git`).
    pub remote: String,
    /// Branch, tag or commit; empty means the default branch.
    pub reference: String,
    /// A subdirectory of the repository to return instead of its root.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub subdir: String,
    /// Whether `.git` is kept in the output.
    pub keep_git_dir: bool,
    /// The expected commit (`ADD --checksum` on a git source).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
}

/// A process run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecOp {
    /// argv; `args[0]` is looked up in `PATH` of `env`.
    pub args: Vec<String>,
    /// `KEY=value` entries, in the order Docker builds them (image ENV, then ARG and ENV in
    /// instruction order; a redefined key keeps its first position).
    pub env: Vec<String>,
    /// Working directory (absolute).
    pub cwd: String,
    /// `user[:group]` as written (names resolved in the root filesystem's passwd/group);
    /// empty means root.
    pub user: String,
    pub network: NetworkMode,
    pub security: SecurityMode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Mounts, the root mount (`dest == "/"`) first.
    pub mounts: Vec<Mount>,
    /// Secrets exposed as environment variables (`--mount=type=secret,env=NAME`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secret_env: Vec<SecretEnv>,
    /// Proxy variables from `--build-arg` (HTTP_PROXY ...) that no ARG declared: added to the
    /// process environment but NOT digested, so changing a proxy does not bust the cache.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub proxy_env: Vec<String>,
}

/// `RUN --network`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum NetworkMode {
    /// The builder's default network (a sandbox with outbound access).
    #[default]
    Default,
    None,
    Host,
}

/// `RUN --security`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SecurityMode {
    #[default]
    Sandbox,
    Insecure,
}

/// One mount of an exec op.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    /// The input whose output is mounted (index into `Op::inputs`); `None` for mounts with no
    /// content input (cache without `from`, tmpfs, secret, ssh).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<u32>,
    /// The path inside the input to mount (`/` for all of it).
    pub selector: String,
    /// Where it is mounted in the process's filesystem.
    pub dest: String,
    /// The op output this mount's final content becomes, if it produces one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<u32>,
    pub readonly: bool,
    pub kind: MountKind,
}

/// What kind of mount.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MountKind {
    /// The input's files, bind mounted (writes to a read-write bind without output are
    /// discarded).
    Bind,
    /// A persistent cache directory shared between builds, seeded from the input if any.
    Cache(CacheMount),
    /// An empty tmpfs.
    Tmpfs {
        /// Size limit in bytes; 0 means the kernel default.
        size: u64,
    },
    /// A secret file. Only the id is in the DAG; the content is given at solve time.
    Secret(SecretMount),
    /// A forwarded SSH agent socket.
    Ssh(SshMount),
}

/// `--mount=type=cache`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheMount {
    /// The cache's id (defaults to the target path).
    pub id: String,
    pub sharing: CacheSharing,
}

/// How concurrent builds share a cache mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum CacheSharing {
    #[default]
    Shared,
    Private,
    Locked,
}

/// `--mount=type=secret` as a file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretMount {
    pub id: String,
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
    /// Whether a missing secret is an error (`required=true`).
    pub required: bool,
}

/// A secret exposed as an environment variable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretEnv {
    pub id: String,
    /// The variable name.
    pub name: String,
    pub required: bool,
}

/// `--mount=type=ssh`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SshMount {
    /// The agent id (`default`).
    pub id: String,
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
    pub required: bool,
}

/// File actions applied in order to a base filesystem; the result is output 0.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileOp {
    /// The filesystem the actions start from (index into `Op::inputs`); `None` = scratch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<u32>,
    pub actions: Vec<FileAction>,
}

/// One file action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileAction {
    Copy(CopyAction),
    Mkdir(MkdirAction),
    Mkfile(MkfileAction),
    Rm(RmAction),
    Symlink(SymlinkAction),
}

/// Copy files from an input into the filesystem being built.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyAction {
    /// The input the files come from (index into `Op::inputs`).
    pub source_input: u32,
    /// Path (or wildcard pattern when `allow_wildcard`) inside the source, absolute.
    pub source_path: String,
    /// Destination, absolute; a trailing `/` means "into this directory".
    pub dest_path: String,
    /// Owner of the copied files; `None` keeps the source's (0:0 for the context).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<Chown>,
    /// Mode of the copied files; `None` keeps the source's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Chmod>,
    pub follow_symlinks: bool,
    /// When the source is a directory, copy its contents, not the directory itself.
    pub dir_contents_only: bool,
    /// Unpack a source that is a tar archive (compressed or not) instead of copying it.
    pub attempt_unpack: bool,
    /// Create missing parents of the destination.
    pub create_dest_path: bool,
    pub allow_wildcard: bool,
    /// A wildcard that matches nothing is not an error.
    pub allow_empty_wildcard: bool,
    /// Replace an existing destination of another type (a directory by a file...).
    pub always_replace_existing_dest_paths: bool,
    /// Only copy paths matching these patterns (relative to `source_path`; `COPY --parents`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include_patterns: Vec<String>,
    /// Skip paths matching these patterns (`COPY --exclude`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude_patterns: Vec<String>,
    /// Paths that must exist in the source (`COPY --parents` without wildcards).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub required_paths: Vec<String>,
    /// Modification time to set, seconds since the epoch (`SOURCE_DATE_EPOCH`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<i64>,
}

/// `--chown`: user and group, each a name (resolved in the destination's `/etc/passwd` and
/// `/etc/group` when the op runs) or a numeric id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chown {
    pub user: Option<UserOrId>,
    pub group: Option<UserOrId>,
}

/// A user or group: by name or by number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UserOrId {
    Name(String),
    Id(u32),
}

/// `--chmod`: an octal mode or a symbolic one (`u+x,g-w`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Chmod {
    Octal(u32),
    Symbolic(String),
}

/// Make a directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MkdirAction {
    pub path: String,
    pub mode: u32,
    pub make_parents: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<Chown>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<i64>,
}

/// Make a file with the given content (heredocs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MkfileAction {
    pub path: String,
    pub mode: u32,
    pub data: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<Chown>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<i64>,
}

/// Remove a path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RmAction {
    pub path: String,
    pub allow_not_found: bool,
    pub allow_wildcard: bool,
}

/// Make a symbolic link `new_path -> old_path`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SymlinkAction {
    pub old_path: String,
    pub new_path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<Chown>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<i64>,
}

/// Merge the inputs in order (`Op::inputs`), later ones on top.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MergeOp {}
