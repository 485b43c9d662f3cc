//! The build DAG: content-addressed ops in topological order, like BuildKit's LLB `Definition`.
//!
//! An op's digest is the sha256 of a canonical binary encoding of the op (kind, fields,
//! platform) and its inputs' digests, so equal work has equal digests on every run and
//! machine, and an op's digest depends only on the ops it reads from. Fields documented as "not digested"
//! (an image's reference as written, an exec's proxy variables) and the [`OpMetadata`] are
//! left out of the digest.

mod encode;
pub mod op;
pub mod print;

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use serde::{Deserialize, Serialize};

use kiln_types::Digest;

pub use op::*;
pub use print::{print_dot, print_json, print_text, PrintFormat};

/// What is known about an op besides what it does: for progress output and error messages.
/// Not digested.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpMetadata {
    /// The progress name, BuildKit style (`[build 2/5] RUN make`).
    pub name: String,
    /// The stage the op belongs to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    /// First and last Dockerfile line of the instruction that made the op.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lines: Option<(usize, usize)>,
    /// Whether the solver must not use a cached result (`--no-cache-filter`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ignore_cache: bool,
}

/// One op of a definition with its digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vertex {
    pub digest: Digest,
    pub op: Op,
    pub metadata: OpMetadata,
}

/// Why a definition is not well formed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DagError {
    #[error("op {digest} reads from {input}, which is not defined before it")]
    MissingInput { digest: Digest, input: Digest },
    #[error("op {digest} has the wrong digest (its content digests to {computed})")]
    DigestMismatch { digest: Digest, computed: Digest },
    #[error("op {digest} uses input index {index} but has {count} inputs")]
    BadInputIndex {
        digest: Digest,
        index: u32,
        count: usize,
    },
    #[error("op {digest} appears twice")]
    Duplicate { digest: Digest },
    #[error("cannot encode op: {message}")]
    Encode { message: String },
}

/// The DAG: vertices in topological order (every op after all of its inputs), each once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Definition {
    vertices: Vec<Vertex>,
    positions: DigestMap<usize>,
}

/// A map keyed by digests. A digest is already a sha256, so its hash is a few of its hex
/// digits (see [`DigestHasher`]) rather than SipHash over all 71 bytes.
type DigestMap<V> = HashMap<Digest, V, BuildHasherDefault<DigestHasher>>;

/// Hashes a [`Digest`] by the last 16 hex digits of its text (64 bits of a sha256, which no
/// input can steer), mixed so that every bit of the result depends on them. Other keys hash
/// correctly too (every byte is mixed in), only without the shortcut.
#[derive(Default)]
struct DigestHasher {
    state: u64,
}

impl Hasher for DigestHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.rchunks_exact(8);
        match chunks.next() {
            // A digest's text: its last 8 bytes, and the 8 before, are hex digits.
            Some(last) if bytes.len() == 71 => {
                let before = chunks.next().unwrap_or(last);
                let mut word = [0u8; 8];
                word.copy_from_slice(last);
                let mut other = [0u8; 8];
                other.copy_from_slice(before);
                self.mix(u64::from_le_bytes(word) ^ u64::from_le_bytes(other).rotate_left(29));
            }
            _ => {
                for &byte in bytes {
                    self.mix(u64::from(byte));
                }
            }
        }
    }

    fn write_u8(&mut self, byte: u8) {
        self.mix(u64::from(byte));
    }

    fn finish(&self) -> u64 {
        self.state
    }
}

impl DigestHasher {
    fn mix(&mut self, value: u64) {
        // FxHash's step followed by a final avalanche (murmur3's fmix64) so the top bits, which
        // the table uses for its tags, depend on every input bit.
        let mut state = (self.state.rotate_left(5) ^ value).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        state ^= state >> 33;
        state = state.wrapping_mul(0xff51_afd7_ed55_8ccd);
        state ^= state >> 33;
        self.state = state;
    }
}

impl Definition {
    /// Checks and indexes vertices (from JSON, say): topological order, digests, input indexes.
    pub fn from_vertices(vertices: Vec<Vertex>) -> Result<Self, DagError> {
        let mut positions = DigestMap::with_capacity_and_hasher(vertices.len(), Default::default());
        let mut buffer = Vec::with_capacity(1024);
        for (position, vertex) in vertices.iter().enumerate() {
            let computed = op_digest_with(&vertex.op, &mut buffer)?;
            if computed != vertex.digest {
                return Err(DagError::DigestMismatch {
                    digest: vertex.digest.clone(),
                    computed,
                });
            }
            for input in &vertex.op.inputs {
                if !positions.contains_key(&input.digest) {
                    return Err(DagError::MissingInput {
                        digest: vertex.digest.clone(),
                        input: input.digest.clone(),
                    });
                }
            }
            check_input_indexes(&vertex.digest, &vertex.op)?;
            if positions.insert(vertex.digest.clone(), position).is_some() {
                return Err(DagError::Duplicate {
                    digest: vertex.digest.clone(),
                });
            }
        }
        Ok(Definition {
            vertices,
            positions,
        })
    }

    /// The vertices, inputs before the ops that read them.
    pub fn vertices(&self) -> &[Vertex] {
        &self.vertices
    }

    /// The vertex with this digest.
    pub fn get(&self, digest: &Digest) -> Option<&Vertex> {
        self.positions
            .get(digest)
            .map(|&position| &self.vertices[position])
    }

    /// The position of a digest in `vertices()`.
    pub fn position(&self, digest: &Digest) -> Option<usize> {
        self.positions.get(digest).copied()
    }

    pub fn len(&self) -> usize {
        self.vertices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.vertices.is_empty()
    }

    /// Like [`Definition::reachable_from`], without copying the ops.
    pub fn into_reachable_from(self, roots: &[Input]) -> Definition {
        let needed = self.needed(roots);
        if needed.iter().all(|&needed| needed) {
            return self;
        }
        let vertices: Vec<Vertex> = self
            .vertices
            .into_iter()
            .zip(needed)
            .filter_map(|(vertex, needed)| needed.then_some(vertex))
            .collect();
        Definition::indexed(vertices)
    }

    /// Which vertices (by position) the roots need. Inputs come before the ops that read
    /// them, so one walk from the last vertex back marks every input of a needed op.
    fn needed(&self, roots: &[Input]) -> Vec<bool> {
        let mut needed = vec![false; self.vertices.len()];
        for root in roots {
            if let Some(position) = self.position(&root.digest) {
                needed[position] = true;
            }
        }
        for position in (0..self.vertices.len()).rev() {
            if !needed[position] {
                continue;
            }
            for input in &self.vertices[position].op.inputs {
                if let Some(input_position) = self.position(&input.digest) {
                    needed[input_position] = true;
                }
            }
        }
        needed
    }

    /// A definition of vertices known to be in order, with their positions indexed.
    fn indexed(vertices: Vec<Vertex>) -> Definition {
        let mut positions = DigestMap::with_capacity_and_hasher(vertices.len(), Default::default());
        for (position, vertex) in vertices.iter().enumerate() {
            positions.insert(vertex.digest.clone(), position);
        }
        Definition {
            vertices,
            positions,
        }
    }

    /// The part of the definition the given outputs need, order kept.
    pub fn reachable_from(&self, roots: &[Input]) -> Definition {
        let vertices: Vec<Vertex> = self
            .vertices
            .iter()
            .zip(self.needed(roots))
            .filter(|&(_, needed)| needed)
            .map(|(vertex, _)| vertex.clone())
            .collect();
        Definition::indexed(vertices)
    }
}

fn check_input_indexes(digest: &Digest, op: &Op) -> Result<(), DagError> {
    let count = op.inputs.len();
    let check = |index: u32| {
        if (index as usize) < count {
            Ok(())
        } else {
            Err(DagError::BadInputIndex {
                digest: digest.clone(),
                index,
                count,
            })
        }
    };
    match &op.kind {
        OpKind::Source(_) | OpKind::Merge(_) => Ok(()),
        OpKind::Exec(exec) => exec
            .mounts
            .iter()
            .filter_map(|mount| mount.input)
            .try_for_each(check),
        OpKind::File(file) => {
            file.base.map_or(Ok(()), check)?;
            file.actions.iter().try_for_each(|action| match action {
                FileAction::Copy(copy) => check(copy.source_input),
                _ => Ok(()),
            })
        }
    }
}

/// The digest of an op: sha256 over the op's canonical binary encoding (see [`encode`]),
/// which leaves out the non-digested fields and starts with the encoding's version. The same
/// op gives the same bytes on every run and machine; different ops give different bytes.
pub fn op_digest(op: &Op) -> Result<Digest, DagError> {
    op_digest_with(op, &mut Vec::with_capacity(1024))
}

/// [`op_digest`] encoding into `buffer` (cleared first), so a caller digesting many ops
/// allocates the encoding once.
fn op_digest_with(op: &Op, buffer: &mut Vec<u8>) -> Result<Digest, DagError> {
    buffer.clear();
    encode::encode_op(op, buffer);
    Ok(Digest::from_sha256(sha256(buffer)))
}

/// sha256 of some bytes. ring's assembly uses AVX2 and BMI where the CPU has them (~1.6x
/// the `sha2-asm` compression function on CPUs without SHA extensions), and the SHA
/// extensions where present.
fn sha256(bytes: &[u8]) -> [u8; 32] {
    let hash = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut raw = [0; 32];
    raw.copy_from_slice(hash.as_ref());
    raw
}

/// Builds a definition op by op; an op added twice (same digest) is kept once, with its first
/// metadata (`ignore_cache` set if any adder set it).
#[derive(Debug, Default)]
pub struct DefinitionBuilder {
    definition: Definition,
    /// The encoding buffer, kept between ops.
    buffer: Vec<u8>,
}

impl DefinitionBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an op whose inputs were all added before, and returns its output 0.
    pub fn add(&mut self, op: Op, metadata: OpMetadata) -> Result<Input, DagError> {
        let digest = op_digest_with(&op, &mut self.buffer)?;
        if let Some(&position) = self.definition.positions.get(&digest) {
            // The op keeps its first metadata, but "do not use the cache" from any adder holds
            // (BuildKit merges `IgnoreCache` the same way).
            self.definition.vertices[position].metadata.ignore_cache |= metadata.ignore_cache;
            return Ok(Input { digest, output: 0 });
        }
        for input in &op.inputs {
            if !self.definition.positions.contains_key(&input.digest) {
                return Err(DagError::MissingInput {
                    digest,
                    input: input.digest.clone(),
                });
            }
        }
        check_input_indexes(&digest, &op)?;
        let position = self.definition.vertices.len();
        self.definition.positions.insert(digest.clone(), position);
        self.definition.vertices.push(Vertex {
            digest: digest.clone(),
            op,
            metadata,
        });
        Ok(Input { digest, output: 0 })
    }

    /// The vertex for a digest added earlier.
    pub fn get(&self, digest: &Digest) -> Option<&Vertex> {
        self.definition.get(digest)
    }

    /// The definition, pruned to what `roots` need.
    pub fn finish(self, roots: &[Input]) -> Definition {
        self.definition.into_reachable_from(roots)
    }

    /// The definition with every op added.
    pub fn finish_all(self) -> Definition {
        self.definition
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_types::Platform;

    fn image(reference: &str) -> Op {
        Op {
            inputs: vec![],
            platform: None,
            kind: OpKind::Source(SourceOp::Image(ImageSource {
                written: reference.into(),
                reference: format!("docker.io/library/{reference}"),
                platform: Platform::parse("linux/amd64").unwrap(),
            })),
        }
    }

    fn exec(input: &Input, proxy: &[&str]) -> Op {
        Op {
            inputs: vec![input.clone()],
            platform: None,
            kind: OpKind::Exec(ExecOp {
                args: vec!["/bin/sh".into(), "-c".into(), "true".into()],
                env: vec!["PATH=/bin".into()],
                cwd: "/".into(),
                user: String::new(),
                network: NetworkMode::Default,
                security: SecurityMode::Sandbox,
                hostname: None,
                mounts: vec![Mount {
                    input: Some(0),
                    selector: "/".into(),
                    dest: "/".into(),
                    output: Some(0),
                    readonly: false,
                    kind: MountKind::Bind,
                }],
                secret_env: vec![],
                proxy_env: proxy.iter().map(|s| s.to_string()).collect(),
            }),
        }
    }

    #[test]
    fn digests_ignore_non_digested_fields_and_dedup() {
        let mut builder = DefinitionBuilder::new();
        let base = builder.add(image("alpine"), OpMetadata::default()).unwrap();
        let mut written_differently = image("alpine");
        if let OpKind::Source(SourceOp::Image(source)) = &mut written_differently.kind {
            source.written = "docker.io/alpine".into();
        }
        assert_eq!(
            builder
                .add(written_differently, OpMetadata::default())
                .unwrap(),
            base
        );
        let plain = builder
            .add(exec(&base, &[]), OpMetadata::default())
            .unwrap();
        let proxied = builder
            .add(exec(&base, &["HTTP_PROXY=http://p"]), OpMetadata::default())
            .unwrap();
        assert_eq!(plain, proxied);
        let definition = builder.finish(&[plain]);
        assert_eq!(definition.len(), 2);
        let again = Definition::from_vertices(definition.vertices().to_vec()).unwrap();
        assert_eq!(again, definition);
    }

    #[test]
    fn digest_text_is_the_hash_in_hex() {
        for seed in [&b""[..], b"kiln", &[0xff; 100]] {
            let hash: [u8; 32] = sha2::Digest::finalize(sha2::Digest::chain_update(
                <sha2::Sha256 as sha2::Digest>::new(),
                seed,
            ))
            .into();
            let hex: String = hash.iter().map(|byte| format!("{byte:02x}")).collect();
            assert_eq!(
                Digest::from_sha256(hash),
                Digest::parse(&format!("sha256:{hex}")).unwrap()
            );
        }
    }

    #[test]
    fn rejects_bad_definitions() {
        let mut builder = DefinitionBuilder::new();
        let base = builder.add(image("alpine"), OpMetadata::default()).unwrap();
        let missing = Input {
            digest: Digest::of_bytes(b"x"),
            output: 0,
        };
        assert!(matches!(
            builder.add(exec(&missing, &[]), OpMetadata::default()),
            Err(DagError::MissingInput { .. })
        ));
        let run = builder
            .add(exec(&base, &[]), OpMetadata::default())
            .unwrap();
        let mut vertices = builder.finish(&[run]).vertices().to_vec();
        vertices.swap(0, 1);
        assert!(Definition::from_vertices(vertices.clone()).is_err());
        vertices.swap(0, 1);
        vertices[1].op.platform = Some(Platform::parse("linux/arm64").unwrap());
        assert!(matches!(
            Definition::from_vertices(vertices),
            Err(DagError::DigestMismatch { .. })
        ));
    }
}
