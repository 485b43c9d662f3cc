//! One module per subcommand.

pub mod build;
pub mod build_run;
pub mod run;
