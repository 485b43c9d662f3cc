//! One module per subcommand.

pub mod build;
pub mod build_output;
pub mod build_run;
pub mod images;
pub mod import;
pub mod inspect;
pub mod load;
pub mod login;
pub mod logout;
pub mod prune;
pub mod pull;
pub mod push;
pub mod rmi;
pub mod run;
pub mod save;
pub mod tag;
