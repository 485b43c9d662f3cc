//! The canonical binary encoding of an op that its digest is taken over.
//!
//! Every digested field is written in declaration order, with no field names: variable-length
//! values (strings, lists) are prefixed by their length as an unsigned LEB128 varint, enum
//! variants by a one-byte tag, options by a presence byte (0 = none, 1 = some, then the
//! value), booleans as one byte 0/1, integers as varints (`i64` as 8 little-endian bytes) and
//! input digests as their 32 raw hash bytes. Reading the fields back in the same order needs
//! nothing else, so the encoding is injective (different ops give different bytes) and,
//! written by this one function, deterministic (the same op gives the same bytes).
//!
//! Each struct is destructured without `..`, so a field added to an op type does not compile
//! until it is given a place here (or is explicitly left out of the digest, as
//! `ImageSource::written` and `ExecOp::proxy_env` are). Changing the encoding of existing ops
//! needs a new [`DIGEST_VERSION`], which every digest starts with.

use kiln_types::{Digest, Platform};

use super::op::*;

/// A version tag every encoding starts with, so a change of encoding changes every digest.
pub(crate) const DIGEST_VERSION: &[u8] = b"kiln.dag.v2\n";

/// The bytes an op's digest is taken over.
pub(crate) fn encode_op(op: &Op, out: &mut Vec<u8>) {
    out.extend_from_slice(DIGEST_VERSION);
    let Op {
        inputs,
        platform,
        kind,
    } = op;
    let mut encoder = Encoder(out);
    encoder.list(inputs, |encoder, Input { digest, output }| {
        encoder.digest(digest);
        encoder.unsigned(u64::from(*output));
    });
    encoder.option(platform.as_ref(), Encoder::platform);
    match kind {
        OpKind::Source(source) => {
            encoder.tag(0);
            encoder.source(source);
        }
        OpKind::Exec(exec) => {
            encoder.tag(1);
            encoder.exec(exec);
        }
        OpKind::File(file) => {
            encoder.tag(2);
            let FileOp { base, actions } = file;
            encoder.option(base.as_ref(), |encoder, base| {
                encoder.unsigned(u64::from(*base))
            });
            encoder.list(actions, Encoder::file_action);
        }
        OpKind::Merge(merge) => {
            encoder.tag(3);
            let MergeOp {} = merge;
        }
    }
}

struct Encoder<'a>(&'a mut Vec<u8>);

impl Encoder<'_> {
    fn tag(&mut self, tag: u8) {
        self.0.push(tag);
    }

    fn boolean(&mut self, value: bool) {
        self.0.push(u8::from(value));
    }

    /// Unsigned LEB128: seven bits a byte, low bits first, the high bit set on all but the last.
    fn unsigned(&mut self, mut value: u64) {
        while value >= 0x80 {
            self.0.push((value & 0x7f) as u8 | 0x80);
            value >>= 7;
        }
        self.0.push(value as u8);
    }

    fn signed(&mut self, value: i64) {
        self.0.extend_from_slice(&value.to_le_bytes());
    }

    fn length(&mut self, length: usize) {
        self.unsigned(length as u64);
    }

    fn string(&mut self, text: &str) {
        self.length(text.len());
        self.0.extend_from_slice(text.as_bytes());
    }

    fn strings(&mut self, texts: &[String]) {
        self.list(texts, |encoder, text| encoder.string(text));
    }

    fn list<T>(&mut self, items: &[T], mut each: impl FnMut(&mut Self, &T)) {
        self.length(items.len());
        for item in items {
            each(self, item);
        }
    }

    fn option<T>(&mut self, value: Option<&T>, each: impl FnOnce(&mut Self, &T)) {
        match value {
            None => self.tag(0),
            Some(value) => {
                self.tag(1);
                each(self, value);
            }
        }
    }

    fn optional_string(&mut self, value: Option<&String>) {
        self.option(value, |encoder, text| encoder.string(text));
    }

    /// The 32 hash bytes of a digest (always sha256 with 64 lowercase hex digits).
    fn digest(&mut self, digest: &Digest) {
        fn nibble(digit: u8) -> u8 {
            match digit {
                b'0'..=b'9' => digit - b'0',
                _ => digit.wrapping_sub(b'a').wrapping_add(10) & 0x0f,
            }
        }
        for pair in digest.hex().as_bytes().chunks_exact(2) {
            self.0.push(nibble(pair[0]) << 4 | nibble(pair[1]));
        }
    }

    fn platform(&mut self, platform: &Platform) {
        let Platform {
            os,
            architecture,
            variant,
            os_version,
        } = platform;
        self.string(os);
        self.string(architecture);
        self.optional_string(variant.as_ref());
        self.optional_string(os_version.as_ref());
    }

    fn source(&mut self, source: &SourceOp) {
        match source {
            SourceOp::Image(image) => {
                self.tag(0);
                // `written` is not digested: `reference` carries the same information.
                let ImageSource {
                    written: _,
                    reference,
                    platform,
                } = image;
                self.string(reference);
                self.platform(platform);
            }
            SourceOp::Local(local) => {
                self.tag(1);
                let LocalSource {
                    name,
                    include_patterns,
                    exclude_patterns,
                    shared_key,
                } = local;
                self.string(name);
                self.strings(include_patterns);
                self.strings(exclude_patterns);
                self.string(shared_key);
            }
            SourceOp::Scratch => self.tag(2),
            SourceOp::Http(http) => {
                self.tag(3);
                let HttpSource {
                    url,
                    checksum,
                    filename,
                    permissions,
                } = http;
                self.string(url);
                self.option(checksum.as_ref(), Encoder::digest);
                self.string(filename);
                self.option(permissions.as_ref(), |encoder, mode| {
                    encoder.unsigned(u64::from(*mode))
                });
            }
            SourceOp::Git(git) => {
                self.tag(4);
                let GitSource {
                    remote,
                    reference,
                    subdir,
                    keep_git_dir,
                    checksum,
                } = git;
                self.string(remote);
                self.string(reference);
                self.string(subdir);
                self.boolean(*keep_git_dir);
                self.optional_string(checksum.as_ref());
            }
        }
    }

    fn exec(&mut self, exec: &ExecOp) {
        // `proxy_env` is not digested, so changing a proxy does not bust the cache.
        let ExecOp {
            args,
            env,
            cwd,
            user,
            network,
            security,
            hostname,
            mounts,
            secret_env,
            proxy_env: _,
        } = exec;
        self.strings(args);
        self.strings(env);
        self.string(cwd);
        self.string(user);
        self.tag(match network {
            NetworkMode::Default => 0,
            NetworkMode::None => 1,
            NetworkMode::Host => 2,
        });
        self.tag(match security {
            SecurityMode::Sandbox => 0,
            SecurityMode::Insecure => 1,
        });
        self.optional_string(hostname.as_ref());
        self.list(mounts, Encoder::mount);
        self.list(secret_env, |encoder, secret| {
            let SecretEnv { id, name, required } = secret;
            encoder.string(id);
            encoder.string(name);
            encoder.boolean(*required);
        });
    }

    fn mount(&mut self, mount: &Mount) {
        let Mount {
            input,
            selector,
            dest,
            output,
            readonly,
            kind,
        } = mount;
        self.option(input.as_ref(), |encoder, input| {
            encoder.unsigned(u64::from(*input))
        });
        self.string(selector);
        self.string(dest);
        self.option(output.as_ref(), |encoder, output| {
            encoder.unsigned(u64::from(*output))
        });
        self.boolean(*readonly);
        match kind {
            MountKind::Bind => self.tag(0),
            MountKind::Cache(cache) => {
                self.tag(1);
                let CacheMount { id, sharing } = cache;
                self.string(id);
                self.tag(match sharing {
                    CacheSharing::Shared => 0,
                    CacheSharing::Private => 1,
                    CacheSharing::Locked => 2,
                });
            }
            MountKind::Tmpfs { size } => {
                self.tag(2);
                self.unsigned(*size);
            }
            MountKind::Secret(secret) => {
                self.tag(3);
                let SecretMount {
                    id,
                    uid,
                    gid,
                    mode,
                    required,
                } = secret;
                self.string(id);
                self.unsigned(u64::from(*uid));
                self.unsigned(u64::from(*gid));
                self.unsigned(u64::from(*mode));
                self.boolean(*required);
            }
            MountKind::Ssh(ssh) => {
                self.tag(4);
                let SshMount {
                    id,
                    uid,
                    gid,
                    mode,
                    required,
                } = ssh;
                self.string(id);
                self.unsigned(u64::from(*uid));
                self.unsigned(u64::from(*gid));
                self.unsigned(u64::from(*mode));
                self.boolean(*required);
            }
        }
    }

    fn chown(&mut self, chown: &Chown) {
        let Chown { user, group } = chown;
        for part in [user, group] {
            self.option(part.as_ref(), |encoder, part| match part {
                UserOrId::Name(name) => {
                    encoder.tag(0);
                    encoder.string(name);
                }
                UserOrId::Id(id) => {
                    encoder.tag(1);
                    encoder.unsigned(u64::from(*id));
                }
            });
        }
    }

    fn timestamp(&mut self, timestamp: Option<&i64>) {
        self.option(timestamp, |encoder, seconds| encoder.signed(*seconds));
    }

    fn file_action(&mut self, action: &FileAction) {
        match action {
            FileAction::Copy(copy) => {
                self.tag(0);
                let CopyAction {
                    source_input,
                    source_path,
                    dest_path,
                    owner,
                    mode,
                    follow_symlinks,
                    dir_contents_only,
                    attempt_unpack,
                    create_dest_path,
                    allow_wildcard,
                    allow_empty_wildcard,
                    always_replace_existing_dest_paths,
                    include_patterns,
                    exclude_patterns,
                    required_paths,
                    timestamp,
                } = copy;
                self.unsigned(u64::from(*source_input));
                self.string(source_path);
                self.string(dest_path);
                self.option(owner.as_ref(), Encoder::chown);
                self.option(mode.as_ref(), |encoder, mode| match mode {
                    Chmod::Octal(bits) => {
                        encoder.tag(0);
                        encoder.unsigned(u64::from(*bits));
                    }
                    Chmod::Symbolic(text) => {
                        encoder.tag(1);
                        encoder.string(text);
                    }
                });
                for flag in [
                    follow_symlinks,
                    dir_contents_only,
                    attempt_unpack,
                    create_dest_path,
                    allow_wildcard,
                    allow_empty_wildcard,
                    always_replace_existing_dest_paths,
                ] {
                    self.boolean(*flag);
                }
                self.strings(include_patterns);
                self.strings(exclude_patterns);
                self.strings(required_paths);
                self.timestamp(timestamp.as_ref());
            }
            FileAction::Mkdir(mkdir) => {
                self.tag(1);
                let MkdirAction {
                    path,
                    mode,
                    make_parents,
                    owner,
                    timestamp,
                } = mkdir;
                self.string(path);
                self.unsigned(u64::from(*mode));
                self.boolean(*make_parents);
                self.option(owner.as_ref(), Encoder::chown);
                self.timestamp(timestamp.as_ref());
            }
            FileAction::Mkfile(mkfile) => {
                self.tag(2);
                let MkfileAction {
                    path,
                    mode,
                    data,
                    owner,
                    timestamp,
                } = mkfile;
                self.string(path);
                self.unsigned(u64::from(*mode));
                self.string(data);
                self.option(owner.as_ref(), Encoder::chown);
                self.timestamp(timestamp.as_ref());
            }
            FileAction::Rm(rm) => {
                self.tag(3);
                let RmAction {
                    path,
                    allow_not_found,
                    allow_wildcard,
                } = rm;
                self.string(path);
                self.boolean(*allow_not_found);
                self.boolean(*allow_wildcard);
            }
            FileAction::Symlink(symlink) => {
                self.tag(4);
                let SymlinkAction {
                    old_path,
                    new_path,
                    owner,
                    timestamp,
                } = symlink;
                self.string(old_path);
                self.string(new_path);
                self.option(owner.as_ref(), Encoder::chown);
                self.timestamp(timestamp.as_ref());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::dag::op_digest;

    fn platform() -> Platform {
        Platform::parse("linux/arm/v7").unwrap()
    }

    fn input(seed: &[u8], output: u32) -> Input {
        Input {
            digest: Digest::of_bytes(seed),
            output,
        }
    }

    fn exec() -> Op {
        Op {
            inputs: vec![input(b"root", 0), input(b"cache", 1)],
            platform: Some(platform()),
            kind: OpKind::Exec(ExecOp {
                args: vec!["/bin/sh".into(), "-c".into(), "make".into()],
                env: vec!["PATH=/bin".into(), "A=1".into()],
                cwd: "/src".into(),
                user: "app".into(),
                network: NetworkMode::Default,
                security: SecurityMode::Sandbox,
                hostname: None,
                mounts: vec![
                    Mount {
                        input: Some(0),
                        selector: "/".into(),
                        dest: "/".into(),
                        output: Some(0),
                        readonly: false,
                        kind: MountKind::Bind,
                    },
                    Mount {
                        input: Some(1),
                        selector: "/".into(),
                        dest: "/cache".into(),
                        output: None,
                        readonly: false,
                        kind: MountKind::Cache(CacheMount {
                            id: "go".into(),
                            sharing: CacheSharing::Shared,
                        }),
                    },
                ],
                secret_env: vec![SecretEnv {
                    id: "token".into(),
                    name: "TOKEN".into(),
                    required: false,
                }],
                proxy_env: vec![],
            }),
        }
    }

    fn copy() -> Op {
        Op {
            inputs: vec![input(b"base", 0), input(b"context", 0)],
            platform: Some(platform()),
            kind: OpKind::File(FileOp {
                base: Some(0),
                actions: vec![FileAction::Copy(CopyAction {
                    source_input: 1,
                    source_path: "/src".into(),
                    dest_path: "/app/".into(),
                    owner: None,
                    mode: None,
                    follow_symlinks: true,
                    dir_contents_only: true,
                    attempt_unpack: false,
                    create_dest_path: true,
                    allow_wildcard: true,
                    allow_empty_wildcard: true,
                    always_replace_existing_dest_paths: false,
                    include_patterns: vec![],
                    exclude_patterns: vec!["*.md".into()],
                    required_paths: vec![],
                    timestamp: None,
                })],
            }),
        }
    }

    fn with_exec(change: impl FnOnce(&mut ExecOp)) -> Op {
        let mut op = exec();
        if let OpKind::Exec(exec) = &mut op.kind {
            change(exec);
        }
        op
    }

    fn with_copy(change: impl FnOnce(&mut CopyAction)) -> Op {
        let mut op = copy();
        if let OpKind::File(file) = &mut op.kind {
            if let FileAction::Copy(copy) = &mut file.actions[0] {
                change(copy);
            }
        }
        op
    }

    /// Pins the encoding: if this digest changes, every cache key changes, so the change
    /// needs a new `DIGEST_VERSION` (and this digest updated on purpose).
    #[test]
    fn the_encoding_is_pinned() {
        assert_eq!(
            op_digest(&exec()).unwrap().as_str(),
            "sha256:ccc5b13b746bf464bef6cdac8bb9f85ab9a9ac5aef893f52f6ec526800e700da"
        );
        let mut bytes = Vec::new();
        encode_op(&copy(), &mut bytes);
        assert!(bytes.starts_with(DIGEST_VERSION));
        // A small op byte by byte: no inputs, a platform, a local source.
        let local = Op {
            inputs: vec![],
            platform: Some(Platform::parse("linux/amd64").unwrap()),
            kind: OpKind::Source(SourceOp::Local(LocalSource {
                name: "ctx".into(),
                include_patterns: vec!["a".into(), "bc".into()],
                exclude_patterns: vec![],
                shared_key: String::new(),
            })),
        };
        bytes.clear();
        encode_op(&local, &mut bytes);
        let mut expected = DIGEST_VERSION.to_vec();
        expected.extend_from_slice(b"\x00\x01\x05linux\x05amd64\x00\x00");
        expected.extend_from_slice(b"\x00\x01\x03ctx\x02\x01a\x02bc\x00\x00");
        assert_eq!(bytes, expected);
    }

    #[test]
    fn same_op_same_digest_and_bytes() {
        for op in [exec(), copy()] {
            let (mut first, mut second) = (Vec::new(), Vec::new());
            encode_op(&op, &mut first);
            encode_op(&op.clone(), &mut second);
            assert_eq!(first, second);
            assert_eq!(op_digest(&op).unwrap(), op_digest(&op.clone()).unwrap());
        }
    }

    /// Every op here differs from the others in one field (or in where a boundary falls):
    /// all their digests differ.
    #[test]
    fn every_semantic_change_changes_the_digest() {
        let ops = vec![
            exec(),
            copy(),
            // Inputs: digest, output, order, count.
            {
                let mut op = exec();
                op.inputs[1] = input(b"other", 1);
                op
            },
            {
                let mut op = exec();
                op.inputs[1].output = 2;
                op
            },
            {
                let mut op = exec();
                op.inputs.swap(0, 1);
                op
            },
            {
                let mut op = exec();
                op.inputs.pop();
                op
            },
            // Platform: absent, variant, os version.
            {
                let mut op = exec();
                op.platform = None;
                op
            },
            {
                let mut op = exec();
                op.platform.as_mut().unwrap().variant = None;
                op
            },
            {
                let mut op = exec();
                op.platform.as_mut().unwrap().os_version = Some(String::new());
                op
            },
            // String boundaries inside lists and between fields.
            with_exec(|exec| exec.args = vec!["/bin/sh".into(), "-cmake".into()]),
            with_exec(|exec| {
                exec.args = vec!["/bin/sh".into(), "-c".into(), "make".into(), "".into()]
            }),
            with_exec(|exec| exec.env = vec!["PATH=/binA=1".into()]),
            with_exec(|exec| exec.env.reverse()),
            with_exec(|exec| {
                exec.cwd = "/srcapp".into();
                exec.user = String::new();
            }),
            with_exec(|exec| exec.user = "root".into()),
            with_exec(|exec| exec.network = NetworkMode::None),
            with_exec(|exec| exec.network = NetworkMode::Host),
            with_exec(|exec| exec.security = SecurityMode::Insecure),
            with_exec(|exec| exec.hostname = Some(String::new())),
            with_exec(|exec| exec.hostname = Some("box".into())),
            with_exec(|exec| exec.mounts[1].readonly = true),
            with_exec(|exec| exec.mounts[1].input = None),
            with_exec(|exec| exec.mounts[1].output = Some(1)),
            with_exec(|exec| exec.mounts[1].selector = "/x".into()),
            with_exec(|exec| exec.mounts[1].dest = "/cache2".into()),
            with_exec(|exec| exec.mounts[1].kind = MountKind::Bind),
            with_exec(|exec| exec.mounts[1].kind = MountKind::Tmpfs { size: 0 }),
            with_exec(|exec| exec.mounts[1].kind = MountKind::Tmpfs { size: 1 << 20 }),
            with_exec(|exec| {
                exec.mounts[1].kind = MountKind::Cache(CacheMount {
                    id: "go".into(),
                    sharing: CacheSharing::Locked,
                })
            }),
            with_exec(|exec| {
                exec.mounts[1].kind = MountKind::Secret(SecretMount {
                    id: "go".into(),
                    uid: 0,
                    gid: 0,
                    mode: 0o400,
                    required: false,
                })
            }),
            with_exec(|exec| {
                exec.mounts[1].kind = MountKind::Ssh(SshMount {
                    id: "go".into(),
                    uid: 0,
                    gid: 0,
                    mode: 0o400,
                    required: false,
                })
            }),
            with_exec(|exec| exec.secret_env[0].required = true),
            with_exec(|exec| exec.secret_env.clear()),
            // Copy actions: every flag, owner, mode, patterns, time.
            with_copy(|copy| copy.source_input = 0),
            with_copy(|copy| copy.source_path = "/src/".into()),
            with_copy(|copy| copy.dest_path = "/app".into()),
            with_copy(|copy| {
                copy.owner = Some(Chown {
                    user: Some(UserOrId::Id(0)),
                    group: None,
                })
            }),
            with_copy(|copy| {
                copy.owner = Some(Chown {
                    user: None,
                    group: Some(UserOrId::Id(0)),
                })
            }),
            with_copy(|copy| {
                copy.owner = Some(Chown {
                    user: Some(UserOrId::Name("0".into())),
                    group: None,
                })
            }),
            with_copy(|copy| copy.mode = Some(Chmod::Octal(0o755))),
            with_copy(|copy| copy.mode = Some(Chmod::Symbolic("u+x".into()))),
            with_copy(|copy| copy.follow_symlinks = false),
            with_copy(|copy| copy.dir_contents_only = false),
            with_copy(|copy| copy.attempt_unpack = true),
            with_copy(|copy| copy.create_dest_path = false),
            with_copy(|copy| copy.allow_wildcard = false),
            with_copy(|copy| copy.allow_empty_wildcard = false),
            with_copy(|copy| copy.always_replace_existing_dest_paths = true),
            with_copy(|copy| copy.include_patterns = vec!["*.md".into()]),
            with_copy(|copy| copy.exclude_patterns.clear()),
            with_copy(|copy| copy.required_paths = vec!["*.md".into()]),
            with_copy(|copy| copy.timestamp = Some(0)),
            with_copy(|copy| copy.timestamp = Some(-1)),
            // Other kinds and actions.
            Op {
                inputs: vec![],
                platform: None,
                kind: OpKind::Source(SourceOp::Scratch),
            },
            Op {
                inputs: vec![],
                platform: None,
                kind: OpKind::Merge(MergeOp {}),
            },
            Op {
                inputs: vec![],
                platform: None,
                kind: OpKind::File(FileOp {
                    base: None,
                    actions: vec![],
                }),
            },
            Op {
                inputs: vec![],
                platform: None,
                kind: OpKind::File(FileOp {
                    base: None,
                    actions: vec![FileAction::Rm(RmAction {
                        path: "/x".into(),
                        allow_not_found: false,
                        allow_wildcard: false,
                    })],
                }),
            },
            Op {
                inputs: vec![],
                platform: None,
                kind: OpKind::File(FileOp {
                    base: None,
                    actions: vec![FileAction::Symlink(SymlinkAction {
                        old_path: "/x".into(),
                        new_path: String::new(),
                        owner: None,
                        timestamp: None,
                    })],
                }),
            },
            Op {
                inputs: vec![],
                platform: None,
                kind: OpKind::File(FileOp {
                    base: None,
                    actions: vec![FileAction::Mkdir(MkdirAction {
                        path: "/x".into(),
                        mode: 0o755,
                        make_parents: false,
                        owner: None,
                        timestamp: None,
                    })],
                }),
            },
            Op {
                inputs: vec![],
                platform: None,
                kind: OpKind::File(FileOp {
                    base: None,
                    actions: vec![FileAction::Mkfile(MkfileAction {
                        path: "/x".into(),
                        mode: 0o755,
                        data: String::new(),
                        owner: None,
                        timestamp: None,
                    })],
                }),
            },
            Op {
                inputs: vec![],
                platform: None,
                kind: OpKind::Source(SourceOp::Local(LocalSource {
                    name: "context".into(),
                    include_patterns: vec![],
                    exclude_patterns: vec!["x".into()],
                    shared_key: "context".into(),
                })),
            },
            Op {
                inputs: vec![],
                platform: None,
                kind: OpKind::Source(SourceOp::Local(LocalSource {
                    name: "context".into(),
                    include_patterns: vec!["x".into()],
                    exclude_patterns: vec![],
                    shared_key: "context".into(),
                })),
            },
            Op {
                inputs: vec![],
                platform: None,
                kind: OpKind::Source(SourceOp::Http(HttpSource {
                    url: "https://example.com/a".into(),
                    checksum: None,
                    filename: "a".into(),
                    permissions: None,
                })),
            },
            Op {
                inputs: vec![],
                platform: None,
                kind: OpKind::Source(SourceOp::Http(HttpSource {
                    url: "https://example.com/a".into(),
                    checksum: Some(Digest::of_bytes(b"a")),
                    filename: "a".into(),
                    permissions: None,
                })),
            },
            Op {
                inputs: vec![],
                platform: None,
                kind: OpKind::Source(SourceOp::Git(GitSource {
                    remote: "https://example.com/a.git".into(),
                    reference: String::new(),
                    subdir: String::new(),
                    keep_git_dir: false,
                    checksum: None,
                })),
            },
            Op {
                inputs: vec![],
                platform: None,
                kind: OpKind::Source(SourceOp::Git(GitSource {
                    remote: "https://example.com/a.git".into(),
                    reference: String::new(),
                    subdir: String::new(),
                    keep_git_dir: true,
                    checksum: None,
                })),
            },
        ];
        let mut seen = HashSet::new();
        for (position, op) in ops.iter().enumerate() {
            let digest = op_digest(op).unwrap();
            assert!(
                seen.insert(digest),
                "op {position} has the digest of an earlier op"
            );
        }
    }

    #[test]
    fn non_digested_fields_are_left_out() {
        let proxied = with_exec(|exec| exec.proxy_env = vec!["HTTP_PROXY=http://proxy".into()]);
        assert_eq!(op_digest(&proxied).unwrap(), op_digest(&exec()).unwrap());
        let image = |written: &str| Op {
            inputs: vec![],
            platform: Some(platform()),
            kind: OpKind::Source(SourceOp::Image(ImageSource {
                written: written.into(),
                reference: "docker.io/library/alpine:latest".into(),
                platform: platform(),
            })),
        };
        assert_eq!(
            op_digest(&image("alpine")).unwrap(),
            op_digest(&image("docker.io/alpine")).unwrap()
        );
    }

    #[test]
    fn varints_are_little_endian_base_128() {
        let mut bytes = Vec::new();
        let mut encoder = Encoder(&mut bytes);
        for value in [0, 127, 128, 300, u64::MAX] {
            encoder.unsigned(value);
        }
        assert_eq!(
            bytes,
            [
                0x00, 0x7f, 0x80, 0x01, 0xac, 0x02, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                0xff, 0x01
            ]
        );
    }

    #[test]
    fn digests_are_encoded_as_their_hash_bytes() {
        let digest = Digest::of_bytes(b"kiln");
        let mut bytes = Vec::new();
        Encoder(&mut bytes).digest(&digest);
        let hex: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
        assert_eq!(hex, digest.hex());
    }
}
