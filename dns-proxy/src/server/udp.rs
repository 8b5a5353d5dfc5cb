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
/// Datagrams a listening socket reads per system call. Under a burst the whole queue is read
/// before any of it is served, and served round robin over its sources ([`round_robin`]): a quiet
/// pod's query queued behind a flood of thousands is served in the first round, after reading
/// them (well under a microsecond each) rather than after serving them (several each). Memory is
/// taken only for slots a burst filled.
pub(crate) const RECV_BATCH: usize = 1024;
/// Reply sockets (transparent mode) receive little, and there may be many: a small batch.
pub(crate) const REPLY_RECV_BATCH: usize = 32;
/// Datagrams served between yields to the runtime, so that upstream replies arriving while a
/// large batch is served are passed on without waiting for the rest of it.
const SERVE_SLICE: usize = 64;
/// Largest query accepted over UDP; queries are a few dozen bytes, and anything longer than a
/// full EDNS buffer is not a DNS query.
const QUERY_BUFFER: usize = 4096;

pub(crate) struct UdpServer {
    pub(crate) shared: Arc<Shared>,
    pub(crate) forwarder: Arc<Forwarder>,
    pub(crate) socket: Arc<UdpSocket>,
    pub(crate) transparent: bool,
    /// Datagrams read per system call: [`RECV_BATCH`] or [`REPLY_RECV_BATCH`].
    pub(crate) recv_batch: usize,
    pub(crate) replies: Arc<ReplySockets>,
    pub(crate) tracker: TaskTracker,
    pub(crate) shutdown: CancellationToken,
}

impl UdpServer {
    pub(crate) async fn run(self) {
        let mut batch = RecvBatch::new(self.recv_batch, QUERY_BUFFER);
        let (mut rounds, mut order) = (foldhash::HashMap::default(), Vec::new());
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
            round_robin(&batch, &mut rounds, &mut order);
            for (n, &key) in order.iter().enumerate() {
                if n > 0 && n % SERVE_SLICE == 0 {
                    self.flush(&mut outbox, fd);
                    tokio::task::yield_now().await;
                }
                let (d, packet) = batch.get(index_of(key));
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
            self.flush(&mut outbox, fd);
            if batch.len() == batch.capacity() {
                tokio::task::yield_now().await;
            }
        }
    }

    /// Answers made on the spot (refusals, FORMERR) leave together.
    fn flush(&self, outbox: &mut SendBatch, fd: std::os::fd::RawFd) {
        for (client, reply) in outbox.flush(fd) {
            let meta = QueryMeta {
                client,
                server: self.shared.config.upstream.unwrap_or(client),
                proto: L4Proto::Udp,
                received: Instant::now(),
                ifindex: None,
            };
            ReplyVia::Listener(self.socket.clone()).send_now(&self.shared, reply, meta, &self.tracker);
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
                    pending,
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
                    if let Some(reply) = shared.forward(&fwd, &packet, pending).await {
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
        let result = self.socket(shared, meta.server).and_then(|s| socket::send_nowait(&s, &reply, Some(meta.client)));
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
                recv_batch: REPLY_RECV_BATCH,
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

/// The order to serve a received batch in, as keys `round << 32 | index`: round robin over
/// source addresses (each source's first datagram, then each one's second, and so on), arrival
/// order within a round. One source (the usual case, or a single busy pod) keeps arrival order.
fn round_robin(batch: &RecvBatch, rounds: &mut foldhash::HashMap<std::net::IpAddr, u32>, order: &mut Vec<u64>) {
    order.clear();
    if batch.len() < 2 {
        // Nothing to reorder (most batches at low load): no hashing on the way.
        order.extend((0..batch.len()).map(|i| i as u64));
        return;
    }
    rounds.clear();
    for i in 0..batch.len() {
        let (d, _) = batch.get(i);
        let round = rounds.entry(d.source.ip()).or_insert(0);
        order.push(u64::from(*round) << 32 | i as u64);
        *round += 1;
    }
    // Already sorted when every datagram has its own source or all share one: linear then.
    order.sort_unstable();
}

/// The batch index a [`round_robin`] key stands for.
fn index_of(key: u64) -> usize {
    (key & u64::from(u32::MAX)) as usize
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd as _;

    use super::*;

    #[test]
    fn a_batch_is_served_round_robin_over_its_sources() {
        let server = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = server.local_addr().unwrap();
        let flood = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let other = std::net::UdpSocket::bind("127.0.0.2:0").unwrap();
        let quiet = std::net::UdpSocket::bind("127.0.0.3:0").unwrap();
        for i in 0..6u8 {
            flood.send_to(&[b'f', i], to).unwrap();
        }
        other.send_to(b"o0", to).unwrap();
        other.send_to(b"o1", to).unwrap();
        quiet.send_to(b"q0", to).unwrap();
        let mut batch = RecvBatch::new(16, 64);
        assert_eq!(batch.recv(server.as_raw_fd()).unwrap(), 9);
        let (mut rounds, mut order) = (foldhash::HashMap::default(), Vec::new());
        round_robin(&batch, &mut rounds, &mut order);
        let served: Vec<String> = order
            .iter()
            .map(|k| {
                let b = batch.get(index_of(*k)).1;
                if b[0] == b'f' { format!("f{}", b[1]) } else { String::from_utf8_lossy(b).into_owned() }
            })
            .collect();
        assert_eq!(served, ["f0", "o0", "q0", "f1", "o1", "f2", "f3", "f4", "f5"]);
    }
}
