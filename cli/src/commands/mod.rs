//! One module per subcommand.

pub mod build;
pub mod build_run;
pub mod build_output;
pub mod run;
pub mod pull;
pub mod push;
pub mod images;
pub mod tag;
pub mod rmi;
pub mod inspect;
pub mod login;
pub mod logout;
pub mod import;
pub mod prune;
pub mod load;
pub mod save;
