//! `RUN --mount=...` values: parsed, validated and with BuildKit's defaults filled in.
//!
//! A mount value may hold `$VAR`, which BuildKit expands with the stage's ENV and ARGs before
//! reading it: the converter expands the raw strings kept in `RunInstruction::mounts`, then
//! calls [`parse_mounts`] (or [`parse_mount`] for one).

use std::fmt;

use super::values::{parse_go_bool, parse_go_u32, parse_ram_bytes, split_csv};

/// The kind of a RUN mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MountType {
    Bind,
    Cache,
    Tmpfs,
    Secret,
    Ssh,
}

impl MountType {
    const ALL: [(&'static str, MountType); 5] = [
        ("bind", MountType::Bind),
        ("cache", MountType::Cache),
        ("tmpfs", MountType::Tmpfs),
        ("secret", MountType::Secret),
        ("ssh", MountType::Ssh),
    ];

    /// The name as written in `type=`.
    pub fn as_str(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, kind)| *kind == self)
            .map_or("bind", |(name, _)| name)
    }
}

impl fmt::Display for MountType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How concurrent builds share a cache mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum CacheSharing {
    /// Concurrent writers share the directory (the default).
    #[default]
    Shared,
    /// Each concurrent writer gets its own directory.
    Private,
    /// Writers wait for each other.
    Locked,
}

impl CacheSharing {
    const ALL: [(&'static str, CacheSharing); 3] = [
        ("shared", CacheSharing::Shared),
        ("private", CacheSharing::Private),
        ("locked", CacheSharing::Locked),
    ];
}

/// Where the secret of a mount without a target goes.
pub const SECRETS_DIR: &str = "/run/secrets";

/// One RUN mount with BuildKit's defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub mount_type: MountType,
    /// `from=`: a stage name or image for bind and cache mounts; `None` is the build context
    /// (bind) or an empty directory (cache).
    pub from: Option<String>,
    /// `source=`: a path inside `from` (bind, cache) or the secret id (secret).
    pub source: Option<String>,
    /// Where it is mounted, as written: a relative target is relative to the working directory
    /// and `None` for bind, cache and tmpfs means the working directory itself (as BuildKit;
    /// the converter must then reject a working directory of `/`). Filled for secrets
    /// (`/run/secrets/<id>`) and ssh (`/run/buildkit/ssh_agent.N`); `None` for a secret only
    /// when it is exposed as an environment variable.
    pub target: Option<String>,
    /// Read-only: defaults to true for bind, secret and ssh, false for cache and tmpfs.
    pub read_only: bool,
    /// `size=` of a tmpfs, in bytes.
    pub size_limit: Option<u64>,
    /// The id: cache id (defaults to the cleaned target, `.` without one), secret id (source, id, or the target's
    /// base name), ssh id (defaults to `default`).
    pub id: Option<String>,
    /// Cache sharing mode; `Some` only for cache mounts (default shared).
    pub sharing: Option<CacheSharing>,
    /// Fail when the secret or ssh agent is not provided (secret and ssh only).
    pub required: bool,
    /// Secret exposed as this environment variable (secret only).
    pub env: Option<String>,
    /// File mode, owner and group (cache, secret and ssh only).
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

/// Why a `--mount` value is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MountError {
    #[error("failed to parse csv mounts: {reason}")]
    Csv { reason: String },
    #[error("invalid field '{field}' must be a key=value pair")]
    NotKeyValue {
        field: String,
        suggestion: Option<String>,
    },
    #[error("unexpected key '{key}' in '{field}'")]
    UnknownKey {
        key: String,
        field: String,
        suggestion: Option<String>,
    },
    #[error("unexpected key '{key}' for mount type '{mount_type}'")]
    KeyNotForType { key: String, mount_type: MountType },
    #[error("unsupported mount type {value:?}")]
    UnsupportedType {
        value: String,
        suggestion: Option<String>,
    },
    #[error("unsupported sharing value {value:?}")]
    UnsupportedSharing {
        value: String,
        suggestion: Option<String>,
    },
    #[error("invalid value for {key}: {value}")]
    InvalidValue { key: String, value: String },
    #[error("{key} not allowed for {mount_type:?} type mounts")]
    FileInfoNotAllowed {
        key: &'static str,
        mount_type: String,
    },
    #[error("invalid cache sharing set for {mount_type} mount")]
    SharingNotForType { mount_type: MountType },
    #[error("invalid mount target \"/\"")]
    RootTarget,
    #[error("'from' doesn't support variable expansion, define alias stage instead")]
    VariableInFrom,
    /// A rule about which keys go together (secret without from, ...).
    #[error("{0}")]
    Conflict(&'static str),
}

impl MountError {
    /// A likely intended spelling, for "did you mean".
    pub fn suggestion(&self) -> Option<&str> {
        match self {
            MountError::NotKeyValue { suggestion, .. }
            | MountError::UnknownKey { suggestion, .. }
            | MountError::UnsupportedType { suggestion, .. }
            | MountError::UnsupportedSharing { suggestion, .. } => suggestion.as_deref(),
            _ => None,
        }
    }
}

const ALL_KEYS: [&str; 19] = [
    "type",
    "from",
    "source",
    "target",
    "readonly",
    "id",
    "sharing",
    "required",
    "size",
    "mode",
    "uid",
    "gid",
    "src",
    "dst",
    "destination",
    "ro",
    "rw",
    "readwrite",
    "env",
];

/// Parses all the `--mount` values of one RUN (already expanded), numbering the ssh sockets
/// that have no target as BuildKit does.
pub fn parse_mounts<S: AsRef<str>>(values: &[S]) -> Result<Vec<Mount>, MountError> {
    let mut mounts = Vec::with_capacity(values.len());
    let mut ssh_count = 0;
    for value in values {
        let mut mount = parse_mount_without_socket(value.as_ref())?;
        if mount.mount_type == MountType::Ssh {
            if mount.target.is_none() {
                mount.target = Some(format!("/run/buildkit/ssh_agent.{ssh_count}"));
            }
            ssh_count += 1;
        }
        mounts.push(mount);
    }
    Ok(mounts)
}

/// Parses one `--mount` value (already expanded). An ssh mount without a target gets
/// `/run/buildkit/ssh_agent.0`; use [`parse_mounts`] to number several.
pub fn parse_mount(expanded: &str) -> Result<Mount, MountError> {
    let mut mount = parse_mount_without_socket(expanded)?;
    if mount.mount_type == MountType::Ssh && mount.target.is_none() {
        mount.target = Some("/run/buildkit/ssh_agent.0".to_string());
    }
    Ok(mount)
}

/// [`parse_mount`] leaving an ssh mount without a target at `None`, for numbering.
fn parse_mount_without_socket(expanded: &str) -> Result<Mount, MountError> {
    let fields = split_csv(expanded).map_err(|reason| MountError::Csv { reason })?;
    let mut mount = Mount {
        mount_type: MountType::Bind,
        from: None,
        source: None,
        target: None,
        read_only: false,
        size_limit: None,
        id: None,
        sharing: None,
        required: false,
        env: None,
        mode: None,
        uid: None,
        gid: None,
    };
    let mut read_only_given = false;
    for field in &fields {
        let (key, value) = match field.split_once('=') {
            Some((key, value)) => (key.to_ascii_lowercase(), Some(value)),
            None => (field.to_ascii_lowercase(), None),
        };
        let invalid = |value: &str| MountError::InvalidValue {
            key: key.clone(),
            value: value.to_string(),
        };
        let secret_or_ssh = matches!(mount.mount_type, MountType::Secret | MountType::Ssh);
        let Some(value) = value else {
            match key.as_str() {
                "readonly" | "ro" => mount.read_only = true,
                "readwrite" | "rw" => mount.read_only = false,
                "required" if secret_or_ssh => mount.required = true,
                "required" => {
                    return Err(MountError::KeyNotForType {
                        key,
                        mount_type: mount.mount_type,
                    })
                }
                _ => {
                    let suggestion = crate::error::closest(
                        &key,
                        ["readonly", "ro", "readwrite", "rw", "required"],
                    );
                    return Err(MountError::NotKeyValue {
                        field: field.clone(),
                        suggestion,
                    });
                }
            }
            read_only_given |= key != "required";
            continue;
        };
        match key.as_str() {
            "type" => {
                let lower = value.to_ascii_lowercase();
                let Some(&(_, kind)) = MountType::ALL.iter().find(|(name, _)| *name == lower)
                else {
                    let suggestion =
                        crate::error::closest(value, MountType::ALL.iter().map(|(name, _)| *name));
                    return Err(MountError::UnsupportedType {
                        value: value.to_string(),
                        suggestion,
                    });
                };
                mount.mount_type = kind;
            }
            "from" => mount.from = Some(value.to_string()),
            "source" | "src" => mount.source = Some(value.to_string()),
            "target" | "dst" | "destination" => mount.target = Some(value.to_string()),
            "readonly" | "ro" => {
                mount.read_only = parse_go_bool(value).ok_or_else(|| invalid(value))?;
                read_only_given = true;
            }
            "readwrite" | "rw" => {
                mount.read_only = !parse_go_bool(value).ok_or_else(|| invalid(value))?;
                read_only_given = true;
            }
            "required" => {
                if !secret_or_ssh {
                    return Err(MountError::KeyNotForType {
                        key,
                        mount_type: mount.mount_type,
                    });
                }
                mount.required = parse_go_bool(value).ok_or_else(|| invalid(value))?;
            }
            "size" => {
                if mount.mount_type != MountType::Tmpfs {
                    return Err(MountError::KeyNotForType {
                        key,
                        mount_type: mount.mount_type,
                    });
                }
                mount.size_limit = Some(parse_ram_bytes(value).map_err(|_| invalid(value))?);
            }
            "id" => mount.id = Some(value.to_string()),
            "sharing" => {
                let lower = value.to_ascii_lowercase();
                let Some(&(_, sharing)) = CacheSharing::ALL.iter().find(|(name, _)| *name == lower)
                else {
                    let suggestion = crate::error::closest(
                        value,
                        CacheSharing::ALL.iter().map(|(name, _)| *name),
                    );
                    return Err(MountError::UnsupportedSharing {
                        value: value.to_string(),
                        suggestion,
                    });
                };
                mount.sharing = Some(sharing);
            }
            "mode" => mount.mode = Some(parse_go_u32(value, 8).ok_or_else(|| invalid(value))?),
            "uid" => mount.uid = Some(parse_go_u32(value, 10).ok_or_else(|| invalid(value))?),
            "gid" => mount.gid = Some(parse_go_u32(value, 10).ok_or_else(|| invalid(value))?),
            "env" => mount.env = Some(value.to_string()),
            _ => {
                let suggestion = crate::error::closest(&key, ALL_KEYS);
                return Err(MountError::UnknownKey {
                    key,
                    field: field.clone(),
                    suggestion,
                });
            }
        }
    }
    validate_and_fill(mount, read_only_given)
}

fn validate_and_fill(mut mount: Mount, read_only_given: bool) -> Result<Mount, MountError> {
    let kind = mount.mount_type;
    if !matches!(kind, MountType::Secret | MountType::Ssh | MountType::Cache) {
        for (key, given) in [
            ("mode", mount.mode.is_some()),
            ("uid", mount.uid.is_some()),
            ("gid", mount.gid.is_some()),
        ] {
            if given {
                return Err(MountError::FileInfoNotAllowed {
                    key,
                    mount_type: kind.to_string(),
                });
            }
        }
    }
    if !read_only_given {
        mount.read_only = !matches!(kind, MountType::Cache | MountType::Tmpfs);
    }
    if mount.sharing.is_some() && kind != MountType::Cache {
        if kind == MountType::Secret {
            return Err(MountError::Conflict(
                "secret mount should not define sharing",
            ));
        }
        return Err(MountError::SharingNotForType { mount_type: kind });
    }
    if mount.target.as_deref() == Some("") {
        mount.target = None;
    }
    match kind {
        MountType::Bind | MountType::Cache | MountType::Tmpfs => {
            // No target is allowed, as in BuildKit: the mount goes on the working directory.
            if mount
                .target
                .as_deref()
                .is_some_and(|target| crate::dockerignore::clean_path(target) == "/")
            {
                return Err(MountError::RootTarget);
            }
            if kind == MountType::Cache {
                mount.sharing = Some(mount.sharing.unwrap_or_default());
                if mount.id.as_deref().unwrap_or("").is_empty() {
                    mount.id = Some(crate::dockerignore::clean_path(
                        mount.target.as_deref().unwrap_or(""),
                    ));
                }
            }
        }
        MountType::Secret => {
            if mount.from.is_some() {
                return Err(MountError::Conflict("secret mount should not have a from"));
            }
            let source = mount.source.clone().filter(|source| !source.is_empty());
            let id = mount.id.clone().filter(|id| !id.is_empty());
            if source.is_some() && id.is_some() {
                return Err(MountError::Conflict("both source and id can't be set"));
            }
            let resolved_id = match (source, id, &mount.target) {
                (Some(source), _, _) => source,
                (None, Some(id), _) => id,
                (None, None, Some(target)) => base_name(target),
                (None, None, None) => {
                    return Err(MountError::Conflict(
                        "invalid secret mount. one of source, target required",
                    ));
                }
            };
            if mount.env.is_none() && mount.target.is_none() {
                mount.target = Some(format!("{SECRETS_DIR}/{}", base_name(&resolved_id)));
            }
            mount.id = Some(resolved_id);
        }
        MountType::Ssh => {
            if mount
                .source
                .as_deref()
                .is_some_and(|source| !source.is_empty())
            {
                return Err(MountError::Conflict("ssh does not support source"));
            }
            if mount.from.is_some() {
                return Err(MountError::Conflict("ssh mount should not have a from"));
            }
            if mount.id.as_deref().unwrap_or("").is_empty() {
                mount.id = Some("default".to_string());
            }
        }
    }
    Ok(mount)
}

/// Go's `path.Base`: the last name of a `/` path.
fn base_name(path: &str) -> String {
    let trimmed = path.trim_end_matches('/');
    if trimmed.is_empty() {
        return if path.is_empty() {
            ".".to_string()
        } else {
            "/".to_string()
        };
    }
    trimmed.rsplit('/').next().unwrap_or(trimmed).to_string()
}

/// Checks a raw (unexpanded) `--mount` value at parse time: a value without `$` is parsed
/// fully; with `$` only `from=` is checked (it may not hold a variable, as in BuildKit).
pub(crate) fn check_raw_mount(raw: &str) -> Result<(), MountError> {
    if !raw.contains('$') {
        return parse_mount(raw).map(|_| ());
    }
    let fields = split_csv(raw).map_err(|reason| MountError::Csv { reason })?;
    for field in fields {
        if let Some((key, value)) = field.split_once('=') {
            if key.eq_ignore_ascii_case("from") {
                if let Some(index) = value.find('$') {
                    if index != value.len() - 1 {
                        return Err(MountError::VariableInFrom);
                    }
                }
            }
        }
    }
    Ok(())
}
