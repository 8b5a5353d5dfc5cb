//! One file per subcommand.

pub mod cache;
pub mod observe;
pub mod observe_grpc;
pub mod policy;
pub mod run;
pub mod status;
pub mod suggest;
pub mod uninstall;
