//! Where things are: the workspace's fixtures, the built `fqdnd` binary, a scratch directory in
//! the target directory. Found from the test binary's own location, so every test crate of the
//! workspace (not only the binary's) can use them.

use std::path::{Path, PathBuf};

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `fixtures/<rel>` of the workspace.
pub fn fixture(rel: &str) -> PathBuf {
    workspace().join("fixtures").join(rel)
}

/// The profile directory the running test binary was built into (`target/debug`): test binaries
/// live in its `deps/`.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let deps = exe.parent().expect("test binaries live in a directory");
    deps.parent().unwrap_or(deps).to_path_buf()
}

/// The `fqdnd` binary built for this test run. Only the root package's tests build it (cargo
/// builds a package's binaries for its integration tests).
pub fn fqdnd_binary() -> PathBuf {
    let bin = profile_dir().join("fqdnd");
    assert!(bin.is_file(), "{} is not built: run the test from the root package (cargo test -p fqdnd)", bin.display());
    bin
}

/// A scratch directory shared by the tests of this build (compiled clients and such).
pub fn scratch(name: &str) -> PathBuf {
    let dir = profile_dir().join("fqdnd-testkit").join(name);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    dir
}
