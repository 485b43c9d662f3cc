//! From the frontend's `Definition` to the solver's `Graph`, and each op's definition digest.

use kiln_frontend::dag::{self, Definition, OpKind};
use kiln_solver::{Graph, Input, Vertex};
use kiln_types::Digest;

/// An op as the worker executes it: the frontend's vertex plus its definition digest.
#[derive(Debug, Clone)]
pub struct WorkerOp {
    pub vertex: dag::Vertex,
    /// Digest over the op without its inputs' digests (the solver adds the inputs' cache keys
    /// or content checksums), nor its non-digested fields.
    pub definition: Digest,
}

/// Why a definition could not become a graph.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GraphBuildError {
    #[error("op {digest} reads {input} which the definition does not contain")]
    MissingInput { digest: Digest, input: Digest },
    #[error("the target {0} is not in the definition")]
    MissingTarget(Digest),
    #[error(transparent)]
    Dag(#[from] dag::DagError),
    #[error(transparent)]
    Graph(#[from] kiln_solver::GraphError),
}

/// The digest of an op's own definition: the op with every input digest blanked out, so that
/// only the position and output index of each input remain.
pub fn definition_digest(op: &dag::Op) -> Result<Digest, dag::DagError> {
    let placeholder = Digest::of_bytes(b"");
    let mut own = op.clone();
    for input in &mut own.inputs {
        input.digest = placeholder.clone();
    }
    dag::op_digest(&own)
}

/// Builds the solver's graph for a definition, and returns it with the solver input of
/// `target`.
pub fn build_graph(
    definition: &Definition,
    target: &dag::Input,
    no_cache: &dyn Fn(&dag::Vertex) -> bool,
) -> Result<(Graph<WorkerOp>, Input), GraphBuildError> {
    let mut graph = Graph::new();
    for vertex in definition.vertices() {
        let inputs = vertex
            .op
            .inputs
            .iter()
            .map(|input| {
                definition
                    .position(&input.digest)
                    .map(|position| Input {
                        vertex: position,
                        output: input.output as usize,
                    })
                    .ok_or_else(|| GraphBuildError::MissingInput {
                        digest: vertex.digest.clone(),
                        input: input.digest.clone(),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let name = if vertex.metadata.name.is_empty() {
            default_name(&vertex.op.kind)
        } else {
            vertex.metadata.name.clone()
        };
        graph.add(Vertex {
            op: WorkerOp {
                definition: definition_digest(&vertex.op)?,
                vertex: vertex.clone(),
            },
            inputs,
            name,
            no_cache: vertex.metadata.ignore_cache || no_cache(vertex),
        })?;
    }
    let position = definition
        .position(&target.digest)
        .ok_or_else(|| GraphBuildError::MissingTarget(target.digest.clone()))?;
    Ok((
        graph,
        Input {
            vertex: position,
            output: target.output as usize,
        },
    ))
}

fn default_name(kind: &OpKind) -> String {
    kind.name().to_string()
}

/// The ops whose results are the target's root filesystem layers: from `target` down its
/// root filesystem input (an exec's `/` mount, a file op's base) until an op that is neither.
/// Their snapshots are the image's new layers, so the build command can export them early.
pub fn rootfs_chain(
    definition: &dag::Definition,
    target: &Digest,
) -> std::collections::HashSet<Digest> {
    let mut chain = std::collections::HashSet::new();
    let mut current = Some(target.clone());
    while let Some(digest) = current.take() {
        let Some(vertex) = definition.get(&digest) else {
            break;
        };
        let rootfs = match &vertex.op.kind {
            dag::OpKind::Exec(exec) => exec
                .mounts
                .iter()
                .find(|mount| mount.dest == "/")
                .and_then(|mount| mount.input),
            dag::OpKind::File(file) => file.base,
            _ => break,
        };
        if !chain.insert(digest) {
            break;
        }
        current = rootfs
            .and_then(|index| vertex.op.inputs.get(index as usize))
            .map(|input| input.digest.clone());
    }
    chain
}

#[cfg(test)]
mod rootfs_chain_tests {
    use kiln_frontend::convert::{convert, ConvertOptions};
    use kiln_frontend::dag::OpKind;
    use kiln_frontend::resolver::OfflineResolver;

    /// The chain of a two-stage build holds the final stage's COPY --from and RUN (the
    /// image's new layers) and nothing of the builder stage, nor the context or the base.
    #[test]
    fn the_chain_is_the_final_stages_layer_steps() {
        let dockerfile = "FROM scratch AS builder\nCOPY a /a\nRUN make\n\
                          FROM scratch\nCOPY --from=builder /a /b\nRUN check\nRUN again\n";
        let resolver = OfflineResolver;
        let converted = convert(dockerfile, "Dockerfile", &ConvertOptions::new(&resolver)).unwrap();
        let chain = super::rootfs_chain(&converted.definition, &converted.target.digest);
        let mut runs = Vec::new();
        let mut files = 0;
        for vertex in converted.definition.vertices() {
            if !chain.contains(&vertex.digest) {
                continue;
            }
            match &vertex.op.kind {
                OpKind::Exec(exec) => runs.push(exec.args.join(" ")),
                OpKind::File(_) => files += 1,
                other => panic!("{other:?} in the chain"),
            }
        }
        runs.sort();
        assert_eq!(runs, ["/bin/sh -c again", "/bin/sh -c check"]);
        assert_eq!(files, 1, "the final stage's COPY --from only");
        assert_eq!(chain.len(), 3);
    }
}
