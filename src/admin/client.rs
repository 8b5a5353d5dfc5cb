//! The admin socket client used by `fqdnd observe` and `fqdnd cache list`. Blocking: a CLI reading
//! one stream needs no runtime.

use std::fmt;
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use super::protocol::{Request, Response};

/// Why there is no agent to talk to, worded for the person at the terminal.
#[derive(Debug)]
pub struct ConnectError {
    pub path: PathBuf,
    pub source: io::Error,
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let why = match self.source.kind() {
            io::ErrorKind::NotFound => "not found (is `fqdnd run` running with this --state-dir?)".to_string(),
            io::ErrorKind::ConnectionRefused => {
                "connection refused (a stale socket: the agent is not running)".to_string()
            }
            io::ErrorKind::PermissionDenied => "permission denied (run as the agent's user)".to_string(),
            _ => self.source.to_string(),
        };
        write!(f, "no fqdnd agent at {}: {why}", self.path.display())
    }
}

impl std::error::Error for ConnectError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

pub struct AdminClient {
    path: PathBuf,
    reader: BufReader<UnixStream>,
    line: String,
}

impl AdminClient {
    /// Connect and send `request`; the responses are then read with [`AdminClient::next_response`].
    pub fn request(path: &Path, request: &Request) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        let stream = UnixStream::connect(path).map_err(|source| ConnectError { path: path.to_path_buf(), source })?;
        let mut text = serde_json::to_vec(request)?;
        text.push(b'\n');
        (&stream).write_all(&text).map_err(|e| format!("admin socket {}: sending the request: {e}", path.display()))?;
        Ok(AdminClient { path: path.to_path_buf(), reader: BufReader::new(stream), line: String::new() })
    }

    /// The next response line; `None` when the agent closed the stream.
    pub fn next_response(&mut self) -> Option<Result<Response, String>> {
        self.line.clear();
        match self.reader.read_line(&mut self.line) {
            Ok(0) => None,
            Ok(_) => Some(serde_json::from_str(self.line.trim_end()).map_err(|e| {
                format!("admin socket {}: unreadable response {:?}: {e}", self.path.display(), self.line.trim_end())
            })),
            Err(e) => Some(Err(format!("admin socket {}: reading: {e}", self.path.display()))),
        }
    }
}
