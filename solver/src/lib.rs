//! The solver: parallel, cached execution of a DAG of ops, generic over the op trait.
