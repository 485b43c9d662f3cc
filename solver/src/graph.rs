//! The graph the solver executes: vertices in topological order, edges to earlier vertices.

/// One output of an earlier vertex used as an input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Input {
    /// Index of the producing vertex in the graph.
    pub vertex: usize,
    /// Which of its outputs.
    pub output: usize,
}

/// One op and its inputs.
#[derive(Debug, Clone)]
pub struct Vertex<O> {
    pub op: O,
    pub inputs: Vec<Input>,
    /// What progress output calls this vertex (`[builder 2/5] RUN make`).
    pub name: String,
    /// Ignore cache hits for this vertex (`--no-cache`, `--no-cache-filter`).
    pub no_cache: bool,
}

/// Why a vertex could not be added.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GraphError {
    #[error("vertex {vertex} reads input {input} which is not an earlier vertex")]
    NotTopological { vertex: usize, input: usize },
}

/// A DAG of ops. Inputs always point at earlier vertices, so the order is topological and no
/// cycle can be built.
#[derive(Debug, Clone)]
pub struct Graph<O> {
    vertices: Vec<Vertex<O>>,
}

impl<O> Default for Graph<O> {
    fn default() -> Self {
        Graph {
            vertices: Vec::new(),
        }
    }
}

impl<O> Graph<O> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a vertex and returns its index.
    pub fn add(&mut self, vertex: Vertex<O>) -> Result<usize, GraphError> {
        let index = self.vertices.len();
        if let Some(input) = vertex.inputs.iter().find(|input| input.vertex >= index) {
            return Err(GraphError::NotTopological {
                vertex: index,
                input: input.vertex,
            });
        }
        self.vertices.push(vertex);
        Ok(index)
    }

    pub fn vertex(&self, index: usize) -> &Vertex<O> {
        &self.vertices[index]
    }

    pub fn vertex_mut(&mut self, index: usize) -> &mut Vertex<O> {
        &mut self.vertices[index]
    }

    pub fn len(&self) -> usize {
        self.vertices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.vertices.is_empty()
    }

    pub fn vertices(&self) -> &[Vertex<O>] {
        &self.vertices
    }
}
