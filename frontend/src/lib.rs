//! Dockerfile frontend: Dockerfile text -> syntax tree -> typed instructions -> a DAG of content-addressed ops.

pub mod ast;
pub mod convert;
pub mod dag;
pub mod dockerignore;
pub mod error;
pub mod instructions;
pub mod parser;
pub mod resolver;
pub mod shell;
