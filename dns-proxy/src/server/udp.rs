//! UDP serving: one receive loop per socket, a task per query.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use fqdn_cache::L4Proto;
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::handler::{QueryMeta, Shared};
use crate::stats::inc;
use crate::transparent;
use crate::wire::MAX_MESSAGE;

/// Cached reply sockets are capped; past this, a reply gets a socket of its own.
const MAX_REPLY_SOCKETS: usize = 1024;

pub(crate) struct UdpServer {
    pub(crate) shared: Arc<Shared>,
    pub(crate) socket: Arc<UdpSocket>,
    pub(crate) transparent: bool,
    pub(crate) replies: Arc<ReplySockets>,
    pub(crate) tracker: TaskTracker,
    pub(crate) shutdown: CancellationToken,
}

impl UdpServer {
    pub(crate) async fn run(self) {
        let mut buf = vec![0u8; MAX_MESSAGE];
        let upstream = self.shared.config.upstream;
        let local = self.socket.local_addr().ok();
        loop {
            let received = tokio::select! {
                r = self.recv(&mut buf) => r,
                () = self.shutdown.cancelled() => return,
            };
            let (len, client, server) = match received {
                Ok(Some(r)) => r,
                Ok(None) => continue,
                Err(e) => {
                    tracing::debug!(error = %e, local = ?local, "UDP receive");
                    continue;
                }
            };
            let packet = buf[..len].to_vec();
            let Some(server) = server.or(upstream) else { continue };
            let meta = QueryMeta { client, server, proto: L4Proto::Udp, received: Instant::now() };
            let shared = self.shared.clone();
            // A reply socket answers what reaches it from itself: it is bound to the server address.
            let reply_via = if self.transparent && local != Some(server) {
                ReplyVia::Original(self.replies.clone(), self.tracker.clone(), self.shutdown.clone())
            } else {
                ReplyVia::Listener(self.socket.clone())
            };
            self.tracker.spawn(async move {
                if let Some(reply) = shared.handle(&packet, meta).await {
                    reply_via.send(&shared, &reply, meta).await;
                }
            });
        }
    }

    /// One datagram: length, client, and (transparent mode) its original destination.
    async fn recv(&self, buf: &mut [u8]) -> std::io::Result<Option<(usize, SocketAddr, Option<SocketAddr>)>> {
        if !self.transparent {
            let (len, client) = self.socket.recv_from(buf).await?;
            return Ok(Some((len, client, None)));
        }
        let fd = self.socket.as_raw_fd();
        let got = self.socket.async_io(Interest::READABLE, || transparent::recv_original_dst(fd, buf)).await?;
        match got.original_dst {
            Some(dst) => Ok(Some((got.len, got.source, Some(dst)))),
            None => {
                tracing::debug!(client = %got.source, "transparent datagram without original destination; dropped");
                Ok(None)
            }
        }
    }
}

enum ReplyVia {
    Listener(Arc<UdpSocket>),
    Original(Arc<ReplySockets>, TaskTracker, CancellationToken),
}

impl ReplyVia {
    async fn send(&self, shared: &Arc<Shared>, reply: &[u8], meta: QueryMeta) {
        let result = match self {
            ReplyVia::Listener(sock) => sock.send_to(reply, meta.client).await.map(drop),
            ReplyVia::Original(cache, tracker, shutdown) => match cache.get(meta.server, shared, tracker, shutdown) {
                Ok(sock) => sock.send_to(reply, meta.client).await.map(drop),
                Err(e) => Err(e),
            },
        };
        if let Err(e) = result {
            inc(&shared.stats.send_errors);
            tracing::debug!(client = %meta.client, server = %meta.server, error = %e, "sending reply");
        }
    }
}

/// Transparent reply sockets, one per original destination, bound to it. Each also serves queries:
/// where packets reach the proxy by routing rather than socket assignment (a local route for the
/// server's address), the kernel prefers the socket bound to the exact address, so the reply
/// socket must answer what it receives instead of swallowing it.
#[derive(Default)]
pub(crate) struct ReplySockets {
    sockets: Mutex<HashMap<SocketAddr, Arc<UdpSocket>>>,
}

impl ReplySockets {
    fn get(
        self: &Arc<Self>,
        original_dst: SocketAddr,
        shared: &Arc<Shared>,
        tracker: &TaskTracker,
        shutdown: &CancellationToken,
    ) -> std::io::Result<Arc<UdpSocket>> {
        let mut sockets = self.sockets.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = sockets.get(&original_dst) {
            return Ok(s.clone());
        }
        let std = transparent::udp_socket(original_dst).map_err(std::io::Error::other)?;
        let sock = Arc::new(UdpSocket::from_std(std)?);
        if sockets.len() < MAX_REPLY_SOCKETS {
            sockets.insert(original_dst, sock.clone());
            let server = UdpServer {
                shared: shared.clone(),
                socket: sock.clone(),
                transparent: true,
                replies: self.clone(),
                tracker: tracker.clone(),
                shutdown: shutdown.clone(),
            };
            tracker.spawn(server.run());
        }
        Ok(sock)
    }

    pub(crate) fn clear(&self) {
        self.sockets.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}
