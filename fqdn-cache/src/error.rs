//! The crate's one error type.

use std::io;
use std::path::PathBuf;

use thiserror::Error;

/// Failures of the cache's snapshot files. Every variant names the file.
#[derive(Debug, Error)]
pub enum CacheError {
    #[error("snapshot {path}: {op}")]
    Io {
        path: PathBuf,
        /// What was being done: "open", "read", "write", "fsync", "rename", ...
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("snapshot {path}: not an fqdnd cache snapshot (magic bytes {found:02x?})")]
    Foreign { path: PathBuf, found: Vec<u8> },
    #[error("snapshot {path}: format version {found}, this fqdnd reads version {supported}")]
    WrongVersion { path: PathBuf, found: u32, supported: u32 },
    #[error("snapshot {path}: truncated: {what} needs {needed} bytes, {available} left")]
    Truncated { path: PathBuf, what: &'static str, needed: u64, available: u64 },
    #[error("snapshot {path}: checksum mismatch (stored {stored:08x}, computed {computed:08x})")]
    Checksum { path: PathBuf, stored: u32, computed: u32 },
    #[error("snapshot {path}: at byte {offset}: {what}")]
    Malformed { path: PathBuf, offset: u64, what: String },
}

impl CacheError {
    /// True when the file exists but cannot be trusted (foreign, corrupt, truncated, another
    /// version): the caller sets it aside with [`crate::cache::set_aside`] and starts empty.
    pub fn is_unusable_file(&self) -> bool {
        !matches!(self, CacheError::Io { .. })
    }

    /// True when there is no snapshot at all (first start): nothing to report or set aside.
    pub fn is_not_found(&self) -> bool {
        matches!(self, CacheError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }
}
