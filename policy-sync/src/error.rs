use std::path::PathBuf;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum PolicyError {
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {field}: {message}")]
    Endpoints { path: PathBuf, field: String, message: String },
}
