//! The agent's local admin socket: a Unix socket `<state-dir>/fqdnd.sock` speaking newline-delimited
//! JSON. `fqdnd observe` streams flows from it, `fqdnd cache list` reads the DNS cache through it,
//! `fqdnd status` asks it what the agent is doing.
//!
//! One request line per connection, then response lines until the server closes (or, for
//! `{"op":"flows","follow":true}`, until the client goes away):
//!
//! ```text
//! -> {"op":"flows","filter":{"pod":{"namespace":"default","name_prefix":"alpine"}},"last":20,"follow":true}
//! <- {"flow":{...Hubble flow...},"node_name":"n1","time":"2024-11-27T10:00:01.123Z"}
//! <- {"lost_events":{"source":"OBSERVER_EVENTS_QUEUE","num_events_lost":"12"}}
//! -> {"op":"cache_list","endpoint":"default/alpine","pattern":"*.microsoft.com"}
//! <- {"cache_entries":[{"endpoint":"default/alpine","source":"lookup","fqdn":"www.microsoft.com.",...}]}
//! -> {"op":"status"}
//! <- {"status":{"version":"0.1.0","ready":true,...}}
//! <- {"error":"..."}            (any request that cannot be served)
//! ```
//!
//! The socket is mode 0600 in a 0700 directory: flows name pods and IPs, so only the agent's user
//! (root on a node) may read them.

pub mod cache;
pub mod client;
pub mod handover;
pub mod protocol;
pub mod server;

use std::path::{Path, PathBuf};

pub use cache::EnforcerCache;
pub use client::{AdminClient, ConnectError};
pub use protocol::{
    AgentDetails, AgentStatus, CacheEntryView, CacheSource, DatapathStatus, LostEvent, Request, Response,
};
pub use server::{AdminServer, AdminState, CacheLister, ServeOptions, serve, serve_with};

/// The socket's file name inside the state directory.
pub const SOCKET_NAME: &str = "fqdnd.sock";

/// The state directory `fqdnd run` uses unless `--state-dir` says otherwise, and so the one
/// `fqdnd observe` and `fqdnd cache list` look in: `/run/fqdnd` for root, else
/// `$XDG_RUNTIME_DIR/fqdnd`, else `fqdnd-<uid>` in the system temp directory (`$TMPDIR`, `/tmp`).
/// The agent refuses a state directory another user owns or may write (a pre-created
/// `/tmp/fqdnd-<uid>`), so picking a shared directory here never means trusting it.
pub fn default_state_dir() -> PathBuf {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    if uid == 0 {
        return PathBuf::from("/run/fqdnd");
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) if !dir.is_empty() => Path::new(&dir).join("fqdnd"),
        _ => std::env::temp_dir().join(format!("fqdnd-{uid}")),
    }
}

/// `<state-dir>/fqdnd.sock`.
pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join(SOCKET_NAME)
}
