//! One file per subcommand.

pub mod policy;
