//! What this build is: the package version and the git commit build.rs found.

/// The package version (`Cargo.toml`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The commit the binary was built from (12 hex digits), or `unknown` (built without .git and
/// without FQDND_GIT_COMMIT).
pub const COMMIT: &str = env!("FQDND_GIT_COMMIT");

/// `0.1.0 (commit 0123456789ab)`: what `fqdnd --version` and `fqdnd version` print.
pub const LONG: &str = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("FQDND_GIT_COMMIT"), ")");
