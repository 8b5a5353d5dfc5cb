//! Where the Observer API listens (`--hubble-listen`) and where `fqdnd observe --server` connects:
//! a Unix socket (`unix:PATH`, Hubble's `unix:///var/run/cilium/hubble.sock` form too) or TCP.

use std::fmt;
use std::io;
use std::net::{Ipv6Addr, SocketAddr};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::Serialize;
use tokio::net::{TcpListener, UnixListener};

/// The Unix socket's file name in the state directory (the default `--hubble-listen`).
pub const SOCKET_NAME: &str = "hubble.sock";

/// An address the Observer API listens on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListenAddr {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum AddrError {
    #[error("{0:?} is not unix:PATH, IP:PORT, [IPv6]:PORT or :PORT")]
    Listen(String),
    #[error("{0:?} is not unix:PATH or HOST:PORT")]
    Server(String),
    #[error("{0:?}: TLS is not supported (fqdnd's Observer API is plain gRPC on a local socket or port)")]
    Tls(String),
    #[error("{0:?}: the socket path is empty")]
    EmptyPath(String),
}

fn unix_path(text: &str) -> Option<&str> {
    // `unix:///run/x.sock` (gRPC's URI form, Hubble's default) and `unix:/run/x.sock`.
    text.strip_prefix("unix://").or_else(|| text.strip_prefix("unix:"))
}

impl FromStr for ListenAddr {
    type Err = AddrError;

    fn from_str(text: &str) -> Result<Self, AddrError> {
        if let Some(path) = unix_path(text) {
            if path.is_empty() {
                return Err(AddrError::EmptyPath(text.to_string()));
            }
            return Ok(ListenAddr::Unix(PathBuf::from(path)));
        }
        // Hubble's `--hubble-listen-address :4244`: every address (IPv6 sockets take IPv4 too).
        if let Some(port) = text.strip_prefix(':') {
            let port = port.parse::<u16>().map_err(|_| AddrError::Listen(text.to_string()))?;
            return Ok(ListenAddr::Tcp(SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port)));
        }
        text.parse().map(ListenAddr::Tcp).map_err(|_| AddrError::Listen(text.to_string()))
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
            ListenAddr::Tcp(a) => write!(f, "{a}"),
        }
    }
}

impl Serialize for ListenAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl ListenAddr {
    /// `unix:<state-dir>/hubble.sock`.
    pub fn default_in(state_dir: &Path) -> Self {
        ListenAddr::Unix(state_dir.join(SOCKET_NAME))
    }
}

/// A bound listener.
pub enum Bound {
    Unix(UnixListener, PathBuf),
    Tcp(TcpListener, SocketAddr),
}

/// Bind `addr`. A Unix socket gets a 0700 directory and mode 0600 (flows name pods and IPs: only
/// the agent's user may read them, as with the admin socket); a stale socket file (no server
/// behind it) is replaced, a live one is an error: two agents must not share it.
pub async fn bind(addr: &ListenAddr) -> io::Result<Bound> {
    match addr {
        ListenAddr::Tcp(a) => {
            let l = TcpListener::bind(a)
                .await
                .map_err(|e| io::Error::new(e.kind(), format!("Hubble Observer API: binding {a}: {e}")))?;
            let local = l.local_addr()?;
            Ok(Bound::Tcp(l, local))
        }
        ListenAddr::Unix(path) => {
            let ctx = |what: &str, e: io::Error| {
                io::Error::new(e.kind(), format!("Hubble Observer API socket {}: {what}: {e}", path.display()))
            };
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .map_err(|e| ctx("creating its directory", e))?;
            }
            match std::fs::symlink_metadata(path) {
                Ok(_) => {
                    if std::os::unix::net::UnixStream::connect(path).is_ok() {
                        return Err(io::Error::new(
                            io::ErrorKind::AddrInUse,
                            format!("Hubble Observer API socket {}: another server is listening on it", path.display()),
                        ));
                    }
                    std::fs::remove_file(path).map_err(|e| ctx("removing the stale socket", e))?;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(ctx("checking for a stale socket", e)),
            }
            let l = UnixListener::bind(path).map_err(|e| ctx("binding", e))?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| ctx("setting mode 0600", e))?;
            Ok(Bound::Unix(l, path.clone()))
        }
    }
}

/// Where a client connects: `unix:PATH` / `unix://PATH`, or `HOST:PORT` (optionally `http://`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerAddr {
    Unix(PathBuf),
    /// `host:port`, as given.
    Tcp(String),
}

impl FromStr for ServerAddr {
    type Err = AddrError;

    fn from_str(text: &str) -> Result<Self, AddrError> {
        if let Some(path) = unix_path(text) {
            if path.is_empty() {
                return Err(AddrError::EmptyPath(text.to_string()));
            }
            return Ok(ServerAddr::Unix(PathBuf::from(path)));
        }
        if text.starts_with("https://") || text.starts_with("tls://") {
            return Err(AddrError::Tls(text.to_string()));
        }
        let hostport = text.strip_prefix("http://").or_else(|| text.strip_prefix("tcp://")).unwrap_or(text);
        let hostport = hostport.strip_suffix('/').unwrap_or(hostport);
        match hostport.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() && !host.contains('/') => {
                Ok(ServerAddr::Tcp(hostport.to_string()))
            }
            _ => Err(AddrError::Server(text.to_string())),
        }
    }
}

impl fmt::Display for ServerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerAddr::Unix(p) => write!(f, "unix:{}", p.display()),
            ServerAddr::Tcp(a) => f.write_str(a),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses() {
        for (text, want) in [
            ("unix:/run/fqdnd/hubble.sock", Ok(ListenAddr::Unix("/run/fqdnd/hubble.sock".into()))),
            ("unix:///var/run/cilium/hubble.sock", Ok(ListenAddr::Unix("/var/run/cilium/hubble.sock".into()))),
            ("unix:rel/h.sock", Ok(ListenAddr::Unix("rel/h.sock".into()))),
            ("127.0.0.1:4244", Ok(ListenAddr::Tcp("127.0.0.1:4244".parse().unwrap()))),
            ("[::1]:4244", Ok(ListenAddr::Tcp("[::1]:4244".parse().unwrap()))),
            (":4244", Ok(ListenAddr::Tcp("[::]:4244".parse().unwrap()))),
            ("unix:", Err(AddrError::EmptyPath("unix:".into()))),
            ("localhost:4244", Err(AddrError::Listen("localhost:4244".into()))),
            ("4244", Err(AddrError::Listen("4244".into()))),
            (":http", Err(AddrError::Listen(":http".into()))),
        ] {
            assert_eq!(text.parse::<ListenAddr>(), want, "{text}");
        }
        assert_eq!(ListenAddr::default_in(Path::new("/run/fqdnd")).to_string(), "unix:/run/fqdnd/hubble.sock");
    }

    #[test]
    fn server_addresses() {
        for (text, want) in [
            ("unix:///var/run/cilium/hubble.sock", Ok(ServerAddr::Unix("/var/run/cilium/hubble.sock".into()))),
            ("unix:/tmp/h.sock", Ok(ServerAddr::Unix("/tmp/h.sock".into()))),
            ("localhost:4245", Ok(ServerAddr::Tcp("localhost:4245".into()))),
            ("http://10.0.0.1:4244", Ok(ServerAddr::Tcp("10.0.0.1:4244".into()))),
            ("[::1]:4244", Ok(ServerAddr::Tcp("[::1]:4244".into()))),
            ("tls://relay:443", Err(AddrError::Tls("tls://relay:443".into()))),
            ("relay", Err(AddrError::Server("relay".into()))),
            (":4245", Err(AddrError::Server(":4245".into()))),
        ] {
            assert_eq!(text.parse::<ServerAddr>(), want, "{text}");
        }
    }

    #[tokio::test]
    async fn a_live_socket_is_refused_and_a_stale_one_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let addr = ListenAddr::default_in(&dir.path().join("state"));
        let first = bind(&addr).await.unwrap();
        let err = bind(&addr).await.err().expect("a second server on a live socket");
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        let ListenAddr::Unix(path) = &addr else { unreachable!() };
        let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        drop(first);
        // The file stays behind (no server removed it): it is stale now.
        assert!(path.exists());
        assert!(bind(&addr).await.is_ok());
    }
}
