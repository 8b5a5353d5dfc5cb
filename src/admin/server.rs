//! The admin socket server. Each connection is its own task; a follower reads from its own bounded
//! queue in the hub, so a client that stops reading only ever loses its own flows.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fqdn_cache::pattern::NamePattern;
use policy_sync::endpoint::EndpointKey;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter, Interest};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinHandle;

use super::handover::{HandoverDone, HandoverInfo, HandoverSource, STEP_LIMIT, send_with_fds};
use super::protocol::{AgentDetails, AgentStatus, CacheEntryView, LostEvent, Request, Response};
use crate::flows::{Flow, FlowFilter, FlowHub, FlowResponse};
use crate::metrics::Readiness;

/// What `fqdnd cache list` and `fqdnd status` read. The agent implements it over the fqdn cache,
/// its snapshot and its datapath.
pub trait CacheLister: Send + Sync + 'static {
    /// Every entry of `endpoint`, or of every endpoint when `None`; any order.
    fn list(&self, endpoint: Option<&EndpointKey>) -> Vec<CacheEntryView>;

    /// The agent's mode, policies, endpoints, datapath and recent errors, for `fqdnd status`.
    fn details(&self) -> Option<AgentDetails> {
        None
    }
}

/// What the admin socket serves.
#[derive(Clone)]
pub struct AdminState {
    pub hub: Arc<FlowHub>,
    pub cache: Arc<dyn CacheLister>,
    pub readiness: Arc<Readiness>,
    pub started: SystemTime,
}

/// A listening admin socket. Dropping it stops accepting and removes the socket file, if the
/// file is still this server's (after a handover the successor's socket is there).
pub struct AdminServer {
    path: PathBuf,
    inode: Option<(u64, u64)>,
    task: JoinHandle<()>,
}

/// How [`serve_with`] serves.
#[derive(Clone, Default)]
pub struct ServeOptions {
    /// Answer `handover` requests with this agent's descriptors (the restart handover).
    pub handover: Option<Arc<dyn HandoverSource>>,
    /// Replace a live socket at the path (the successor of a handover) instead of refusing it:
    /// bound beside it and renamed over it, so the path never lacks a listener.
    pub replace: bool,
}

fn inode_of(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

impl AdminServer {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        self.task.abort();
        if self.inode.is_some() && inode_of(&self.path) == self.inode {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// A request line longer than this is refused (a filter is a few hundred bytes).
const MAX_REQUEST_LINE: u64 = 64 * 1024;
/// A client must send its request line within this, or it is dropped (not a test timing).
const REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Bind the socket at `path` and serve it on the current tokio runtime. A stale socket (no agent
/// behind it) is removed first; a live one is an error: two agents must not share a state dir.
pub fn serve(path: &Path, state: AdminState) -> io::Result<AdminServer> {
    serve_with(path, state, ServeOptions::default())
}

/// [`serve`] with a handover source and, for a successor, replacing the running agent's socket.
pub fn serve_with(path: &Path, state: AdminState, options: ServeOptions) -> io::Result<AdminServer> {
    let ctx =
        |what: &str, e: io::Error| io::Error::new(e.kind(), format!("admin socket {}: {what}: {e}", path.display()));
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| ctx("creating its directory", e))?;
    }
    let bind_at = if options.replace {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        path.with_file_name(format!(".{name}.new"))
    } else {
        path.to_path_buf()
    };
    if options.replace {
        let _ = std::fs::remove_file(&bind_at);
    }
    match std::fs::symlink_metadata(path) {
        Ok(_) if options.replace => {}
        Ok(_) => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("admin socket {}: another fqdnd agent is serving it", path.display()),
                ));
            }
            std::fs::remove_file(path).map_err(|e| ctx("removing the stale socket", e))?;
            tracing::info!(path = %path.display(), "removed a stale admin socket");
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(ctx("checking for a stale socket", e)),
    }
    let listener = UnixListener::bind(&bind_at).map_err(|e| ctx("binding", e))?;
    std::fs::set_permissions(&bind_at, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| ctx("setting mode 0600", e))?;
    if options.replace {
        std::fs::rename(&bind_at, path).map_err(|e| ctx("replacing the running agent's socket", e))?;
    }
    let inode = inode_of(path);
    tracing::info!(path = %path.display(), "admin socket listening");
    let handover = options.handover.clone();
    let task = tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let (state, handover) = (state.clone(), handover.clone());
                    tokio::spawn(async move {
                        if let Err(e) = connection(stream, state, handover).await {
                            tracing::debug!(error = %e, "admin connection ended");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "admin socket: accept");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    Ok(AdminServer { path: path.to_path_buf(), inode, task })
}

async fn connection(
    stream: UnixStream,
    state: AdminState,
    handover: Option<Arc<dyn HandoverSource>>,
) -> io::Result<()> {
    let (read, write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut out = BufWriter::new(write);
    let mut line = String::new();
    let mut limited = (&mut reader).take(MAX_REQUEST_LINE);
    match tokio::time::timeout(REQUEST_READ_TIMEOUT, limited.read_line(&mut line)).await {
        Ok(Ok(0)) | Err(_) => return Ok(()),
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err(e),
    }
    let request = match serde_json::from_str::<Request>(line.trim_end()) {
        Ok(r) => r,
        Err(e) => {
            let error = if line.ends_with('\n') {
                format!("bad request: {e}")
            } else {
                format!("bad request: no complete line within {MAX_REQUEST_LINE} bytes")
            };
            write_line(&mut out, &Response::Error { error }).await?;
            return out.flush().await;
        }
    };
    match request {
        Request::Flows { filter, last, follow } => flows(&state, &filter, last, follow, reader, &mut out).await?,
        Request::CacheList { endpoint, pattern } => {
            let response = cache_list(&state, endpoint.as_deref(), pattern.as_deref())
                .map(|cache_entries| Response::CacheEntries { cache_entries })
                .unwrap_or_else(|error| Response::Error { error });
            write_line(&mut out, &response).await?;
        }
        Request::Status => write_line(&mut out, &Response::Status { status: status(&state) }).await?,
        Request::Handover => return hand_over(handover.as_deref(), reader, out).await,
        Request::HandoverReady => {
            let error = "handover_ready: no handover in progress on this connection".to_string();
            write_line(&mut out, &Response::Error { error }).await?;
        }
    }
    out.flush().await
}

/// Hand this agent's descriptors to the client, then stop when it says it serves them.
async fn hand_over<R>(
    source: Option<&dyn HandoverSource>,
    mut reader: BufReader<R>,
    mut out: BufWriter<tokio::net::unix::OwnedWriteHalf>,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
{
    let Some(source) = source else {
        let error = "this agent does not hand over its sockets".to_string();
        write_line(&mut out, &Response::Error { error }).await?;
        return out.flush().await;
    };
    let offered = match source.offer() {
        Ok(o) => o,
        Err(error) => {
            write_line(&mut out, &Response::Error { error }).await?;
            return out.flush().await;
        }
    };
    let info = HandoverInfo { pid: std::process::id(), fds: offered.iter().map(|(h, _)| h.clone()).collect() };
    let mut line = serde_json::to_vec(&Response::Handover { handover: info }).map_err(io::Error::other)?;
    line.push(b'\n');
    let fds: Vec<RawFd> = offered.iter().map(|(_, fd)| fd.as_raw_fd()).collect();
    out.flush().await?;
    let sock: &UnixStream = out.get_ref().as_ref();
    let mut sent = 0;
    while sent < line.len() {
        sock.writable().await?;
        let attach: &[RawFd] = if sent == 0 { &fds } else { &[] };
        match sock.try_io(Interest::WRITABLE, || send_with_fds(sock.as_raw_fd(), &line[sent..], attach)) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    // The duplicates sent are the successor's now; ours close.
    drop(offered);
    tracing::info!("handover: descriptors sent; waiting for the successor to serve them");
    let mut next = String::new();
    let read = tokio::time::timeout(STEP_LIMIT, (&mut reader).take(MAX_REQUEST_LINE).read_line(&mut next)).await;
    match (read, serde_json::from_str::<Request>(next.trim_end())) {
        (Ok(Ok(n)), Ok(Request::HandoverReady)) if n > 0 => {}
        _ => {
            tracing::warn!("handover abandoned by the successor; serving on");
            source.abandoned();
            return Ok(());
        }
    }
    tracing::info!("handover: the successor serves; stopping");
    source.stop();
    source.stopped().await;
    write_line(&mut out, &Response::HandoverDone { handover_done: HandoverDone { pid: std::process::id() } }).await?;
    out.flush().await
}

fn flow_line(hub: &FlowHub, flow: &Flow) -> Response {
    Response::Flow(Box::new(FlowResponse {
        flow: flow.clone(),
        node_name: hub.node_name().to_string(),
        time: flow.time,
    }))
}

async fn flows<R, W>(
    state: &AdminState,
    filter: &FlowFilter,
    last: Option<usize>,
    follow: bool,
    mut client: R,
    out: &mut BufWriter<W>,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let hub = &state.hub;
    let sub = hub.subscribe(filter, last, follow);
    for flow in &sub.history {
        write_line(out, &flow_line(hub, flow)).await?;
    }
    out.flush().await?;
    let Some(mut follower) = sub.follower else { return Ok(()) };
    let mut scratch = [0u8; 64];
    loop {
        tokio::select! {
            next = follower.recv() => {
                let Some(flow) = next else { return Ok(()) };
                let lost = follower.take_lost();
                if lost > 0 {
                    write_line(out, &Response::LostEvents { lost_events: LostEvent::queue_overflow(lost) }).await?;
                }
                write_line(out, &flow_line(hub, &flow)).await?;
                // Batch what is already queued into one write.
                while let Some(flow) = follower.try_recv() {
                    write_line(out, &flow_line(hub, &flow)).await?;
                }
                out.flush().await?;
            }
            // The client sends nothing after its request: EOF (or an error) means it is gone,
            // and its follower slot should go now rather than at the next matching flow.
            n = client.read(&mut scratch) => {
                if matches!(n, Ok(0) | Err(_)) {
                    return Ok(());
                }
            }
        }
    }
}

fn cache_list(
    state: &AdminState,
    endpoint: Option<&str>,
    pattern: Option<&str>,
) -> Result<Vec<CacheEntryView>, String> {
    let endpoint = endpoint.map(|e| e.parse::<EndpointKey>().map_err(|e| format!("endpoint: {e}"))).transpose()?;
    let pattern = pattern.map(|p| NamePattern::match_pattern(p).map_err(|e| format!("pattern: {e}"))).transpose()?;
    let mut entries = state.cache.list(endpoint.as_ref());
    if let Some(key) = &endpoint {
        let key = key.to_string();
        entries.retain(|e| e.endpoint == key);
    }
    if let Some(p) = &pattern {
        entries.retain(|e| p.matches(&e.fqdn));
    }
    entries.sort_by(|a, b| (&a.endpoint, &a.fqdn, a.source as u8).cmp(&(&b.endpoint, &b.fqdn, b.source as u8)));
    Ok(entries)
}

fn status(state: &AdminState) -> AgentStatus {
    let stats = state.hub.stats();
    let not_loaded: Vec<String> = state.readiness.missing().into_iter().map(String::from).collect();
    AgentStatus {
        version: crate::version::VERSION.to_string(),
        commit: crate::version::COMMIT.to_string(),
        ready: not_loaded.is_empty(),
        not_loaded,
        uptime_seconds: SystemTime::now().duration_since(state.started).map(|d| d.as_secs()).unwrap_or(0),
        flows_buffered: stats.buffered,
        flows_capacity: stats.capacity,
        followers: stats.followers,
        details: state.cache.details().map(Box::new),
    }
}

async fn write_line<W: AsyncWrite + Unpin>(out: &mut BufWriter<W>, r: &Response) -> io::Result<()> {
    let mut text = serde_json::to_vec(r).map_err(io::Error::other)?;
    text.push(b'\n');
    out.write_all(&text).await
}
