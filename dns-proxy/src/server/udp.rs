//! UDP serving: each socket has its own thread with a single-threaded runtime (and its own
//! upstream sockets), so a query never crosses threads. The receive loop answers refusals and
//! malformed queries itself; forwarded queries wait in their upstream socket's table and are
//! answered from its reader, without a task each (only a query waiting for a permit, or for the
//! datapath's acknowledgement, gets one).

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use fqdn_cache::L4Proto;
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::batch::{RecvBatch, SendBatch};
use crate::forwarder::Forwarder;
use crate::handler::{QueryMeta, Shared, Step};
use crate::socket::{self, Options};
use crate::stats::inc;

/// Cached reply sockets are capped; past this, a reply gets a socket of its own.
const MAX_REPLY_SOCKETS: usize = 1024;
/// Datagrams read per system call.
const RECV_BATCH: usize = 32;
/// Largest query accepted over UDP; queries are a few dozen bytes, and anything longer than a
/// full EDNS buffer is not a DNS query.
const QUERY_BUFFER: usize = 4096;

pub(crate) struct UdpServer {
    pub(crate) shared: Arc<Shared>,
    pub(crate) forwarder: Arc<Forwarder>,
    pub(crate) socket: Arc<UdpSocket>,
    pub(crate) transparent: bool,
    pub(crate) replies: Arc<ReplySockets>,
    pub(crate) tracker: TaskTracker,
    pub(crate) shutdown: CancellationToken,
}

impl UdpServer {
    pub(crate) async fn run(self) {
        let mut batch = RecvBatch::new(RECV_BATCH, QUERY_BUFFER);
        let mut outbox = SendBatch::default();
        let fd = self.socket.as_raw_fd();
        let upstream = self.shared.config.upstream;
        let local = self.socket.local_addr().ok();
        loop {
            tokio::select! {
                r = self.socket.readable() => if let Err(e) = r {
                    tracing::warn!(error = %e, local = ?local, "UDP socket failed; receive loop ends");
                    return;
                },
                () = self.shutdown.cancelled() => return,
            }
            if let Err(e) = batch.recv_ready(&self.socket) {
                tracing::debug!(error = %e, local = ?local, "UDP receive");
                continue;
            }
            for (d, packet) in batch.datagrams() {
                if d.truncated {
                    inc(&self.shared.stats.malformed);
                    continue;
                }
                let server = if self.transparent { d.original_dst } else { upstream };
                let Some(server) = server else {
                    tracing::debug!(client = %d.source, "datagram without original destination; dropped");
                    continue;
                };
                self.handle(packet, d.source, server, d.ifindex, local, &mut outbox);
            }
            // Answers made on the spot (refusals, FORMERR) leave together.
            for (client, reply) in outbox.flush(fd) {
                let meta = QueryMeta {
                    client,
                    server: upstream.unwrap_or(client),
                    proto: L4Proto::Udp,
                    received: Instant::now(),
                    ifindex: None,
                };
                ReplyVia::Listener(self.socket.clone()).send_now(&self.shared, reply, meta, &self.tracker);
            }
        }
    }

    fn handle(
        &self,
        packet: &[u8],
        client: SocketAddr,
        server: SocketAddr,
        ifindex: Option<u32>,
        local: Option<SocketAddr>,
        outbox: &mut SendBatch,
    ) {
        let meta = QueryMeta { client, server, proto: L4Proto::Udp, received: Instant::now(), ifindex };
        // A reply socket answers what reaches it from itself: it is bound to the server address.
        let reply_via = if self.transparent && local != Some(server) {
            ReplyVia::Original(
                self.replies.clone(),
                self.forwarder.clone(),
                self.tracker.clone(),
                self.shutdown.clone(),
            )
        } else {
            ReplyVia::Listener(self.socket.clone())
        };
        match self.shared.decide(packet, meta) {
            Step::Reply(None) => {}
            Step::Reply(Some(reply)) => match reply_via {
                ReplyVia::Listener(_) => outbox.push(client, reply),
                via => via.send_now(&self.shared, reply, meta, &self.tracker),
            },
            Step::Forward(pending) if pending.has_permit() => {
                let tracker = self.tracker.clone();
                self.shared.forward_then(
                    &self.forwarder,
                    packet.to_vec(),
                    *pending,
                    &self.tracker,
                    move |shared, reply| {
                        if let Some(reply) = reply {
                            reply_via.send_now(shared, reply, meta, &tracker);
                        }
                    },
                );
            }
            // Waiting for a permit: a task of its own.
            Step::Forward(pending) => {
                let packet = packet.to_vec();
                let (shared, fwd) = (self.shared.clone(), self.forwarder.clone());
                self.tracker.spawn(async move {
                    if let Some(reply) = shared.forward(&fwd, &packet, *pending).await {
                        reply_via.send(&shared, &reply, meta).await;
                    }
                });
            }
        }
    }
}

enum ReplyVia {
    Listener(Arc<UdpSocket>),
    Original(Arc<ReplySockets>, Arc<Forwarder>, TaskTracker, CancellationToken),
}

impl ReplyVia {
    fn socket(&self, shared: &Arc<Shared>, original_dst: SocketAddr) -> io::Result<Arc<UdpSocket>> {
        match self {
            ReplyVia::Listener(sock) => Ok(sock.clone()),
            ReplyVia::Original(cache, fwd, tracker, shutdown) => {
                cache.get(original_dst, shared, fwd, tracker, shutdown)
            }
        }
    }

    /// Send from the receive loop without waiting; a full socket buffer defers to a task.
    fn send_now(self, shared: &Arc<Shared>, reply: Vec<u8>, meta: QueryMeta, tracker: &TaskTracker) {
        let result = self.socket(shared, meta.server).and_then(|s| s.try_send_to(&reply, meta.client));
        match result {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let shared = shared.clone();
                tracker.spawn(async move { self.send(&shared, &reply, meta).await });
            }
            Err(e) => send_failed(shared, meta, &e),
        }
    }

    async fn send(&self, shared: &Arc<Shared>, reply: &[u8], meta: QueryMeta) {
        let result = match self.socket(shared, meta.server) {
            Ok(sock) => sock.send_to(reply, meta.client).await.map(drop),
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            send_failed(shared, meta, &e);
        }
    }
}

fn send_failed(shared: &Shared, meta: QueryMeta, e: &io::Error) {
    inc(&shared.stats.send_errors);
    tracing::debug!(client = %meta.client, server = %meta.server, error = %e, "sending reply");
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
        forwarder: &Arc<Forwarder>,
        tracker: &TaskTracker,
        shutdown: &CancellationToken,
    ) -> io::Result<Arc<UdpSocket>> {
        let mut sockets = self.sockets.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = sockets.get(&original_dst) {
            return Ok(s.clone());
        }
        let std = socket::udp(original_dst, Options::TRANSPARENT).map_err(io::Error::other)?;
        let sock = Arc::new(UdpSocket::from_std(std)?);
        if sockets.len() < MAX_REPLY_SOCKETS {
            sockets.insert(original_dst, sock.clone());
            let server = UdpServer {
                shared: shared.clone(),
                forwarder: forwarder.clone(),
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
