//! Dockerfile frontend: Dockerfile text -> syntax tree -> typed instructions -> a DAG of content-addressed ops.

pub mod ast;
pub mod error;
