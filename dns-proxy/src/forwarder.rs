//! The upstream client. Every forwarded query gets a fresh random ID and leaves from one of a pool
//! of UDP sockets bound to kernel-chosen random ports (each replaced by a new one after a number of
//! queries), never the client's ID or port. Pool sockets are connected to their upstream: the
//! kernel drops datagrams from any other address and skips a route lookup per send. A reply is
//! accepted only if its source address, ID and question all match a query waiting on that socket;
//! anything else is dropped and counted (cache-poisoning defence). TCP queries go over a fresh TCP
//! connection per query.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use foldhash::HashMap;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::{Notify, oneshot};

use crate::batch::RecvBatch;
use crate::stats::{ProxyStats, inc};
use crate::wire::{self, HEADER_LEN, MAX_MESSAGE, ReplyCheck};

/// A socket serves this many queries before it is replaced by one on a new random port.
const ROTATE_AFTER: u32 = 2048;
/// Replies read per system call.
const REPLY_BATCH: usize = 8;
/// Receive buffer of each upstream socket.
const UPSTREAM_RECV_BUFFER: usize = 1 << 20;

/// One query to forward.
pub struct Outgoing<'a> {
    /// The query exactly as the client sent it; its ID is replaced on the way out.
    pub packet: &'a [u8],
    /// `packet[HEADER_LEN..question_end]`.
    pub question_end: usize,
    pub upstream: SocketAddr,
}

/// What runs when a query forwarded with [`Forwarder::udp_then`] is answered (the reply, its
/// client's ID restored) or has failed, with the query's bytes back: on the upstream socket's
/// reader task, without a task of its own.
pub type Done = Box<dyn FnOnce(Result<Vec<u8>, ForwardError>, Vec<u8>) + Send>;

/// Why forwarding failed.
#[derive(Debug)]
pub enum ForwardError {
    Timeout,
    Io(io::Error),
    /// A TCP reply that is not a DNS response at all.
    NotAResponse,
}

/// Upstreams with a pool at once; past this the pools start over (transparent mode meets one
/// upstream per DNS server address pods use, normally a handful).
const MAX_POOLS: usize = 1024;

pub struct Forwarder {
    timeout: Duration,
    pool_size: usize,
    pools: Mutex<HashMap<SocketAddr, Arc<Pool>>>,
    stats: Arc<ProxyStats>,
}

impl Forwarder {
    pub fn new(timeout: Duration, pool_size: usize, stats: Arc<ProxyStats>) -> Self {
        Forwarder { timeout, pool_size: pool_size.max(1), pools: Mutex::default(), stats }
    }

    fn pool(&self, upstream: SocketAddr) -> Arc<Pool> {
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = pools.get(&upstream) {
            return p.clone();
        }
        if pools.len() >= MAX_POOLS {
            pools.clear();
        }
        pools.entry(upstream).or_default().clone()
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Forward over UDP and return the reply with the client's ID restored.
    pub async fn udp(&self, q: Outgoing<'_>) -> Result<Vec<u8>, ForwardError> {
        let sock = self.pool(q.upstream).pick(q.upstream, self.pool_size, &self.stats).map_err(ForwardError::Io)?;
        let client_id = wire::id(q.packet).unwrap_or(0);
        let mut out = q.packet.to_vec();
        let question = Bytes::copy_from_slice(&q.packet[HEADER_LEN..q.question_end]);
        let (tx, rx) = oneshot::channel();
        let id = sock.register(q.upstream, question, tx);
        wire::set_id(&mut out, id);
        let guard = PendingGuard { sock: &sock, id };
        sock.socket.send(&out).await.map_err(ForwardError::Io)?;
        let mut reply = match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(_)) | Err(_) => return Err(ForwardError::Timeout),
        };
        drop(guard);
        wire::set_id(&mut reply, client_id);
        Ok(reply)
    }

    /// Forward over UDP without a task, a timer or a channel of the query's own: the query waits
    /// in its socket's table of queries in flight, whose reader runs `done` when the reply comes
    /// or the timeout passes (one timer per socket, the deadlines in order: every query on a
    /// forwarder has the same timeout).
    /// `packet` is the client's query; it leaves with the proxy's ID and comes back to `done`.
    pub fn udp_then(&self, mut packet: Vec<u8>, question_end: usize, upstream: SocketAddr, done: Done) {
        let sock = match self.pool(upstream).pick(upstream, self.pool_size, &self.stats) {
            Ok(sock) => sock,
            Err(e) => return done(Err(ForwardError::Io(e)), packet),
        };
        let client_id = wire::id(&packet).unwrap_or(0);
        let deadline = Instant::now() + self.timeout;
        let mut pending = sock.pending.lock().unwrap_or_else(|e| e.into_inner());
        let id = sock.free_id(&pending);
        wire::set_id(&mut packet, id);
        // Sent under the table's lock: the entry is complete before any reply can be read.
        let later = match crate::socket::send_nowait(&sock.socket, &packet, None) {
            Ok(_) => None,
            // The socket's send buffer is full: this one waits for room in a task.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Some(packet.clone()),
            Err(e) => {
                drop(pending);
                return done(Err(ForwardError::Io(e)), packet);
            }
        };
        let reply = Reply::Then { done, client_id, deadline, packet, question_end };
        pending.insert(id, Pending { upstream, reply });
        drop(pending);
        sock.add_deadline(deadline, id);
        if let Some(bytes) = later {
            let sock = sock.clone();
            tokio::spawn(async move {
                if let Err(e) = sock.socket.send(&bytes).await {
                    sock.fail(id, e);
                }
            });
        }
    }

    /// Forward over a new TCP connection and return the reply with the client's ID restored.
    pub async fn tcp(&self, q: Outgoing<'_>) -> Result<Vec<u8>, ForwardError> {
        let client_id = wire::id(q.packet).unwrap_or(0);
        let id: u16 = rand::random();
        let question = &q.packet[HEADER_LEN..q.question_end];
        let fut = async {
            let mut stream = TcpStream::connect(q.upstream).await.map_err(ForwardError::Io)?;
            stream.set_nodelay(true).map_err(ForwardError::Io)?;
            let mut out = Vec::with_capacity(q.packet.len() + 2);
            out.extend_from_slice(&(q.packet.len() as u16).to_be_bytes());
            out.extend_from_slice(q.packet);
            wire::set_id(&mut out[2..], id);
            stream.write_all(&out).await.map_err(ForwardError::Io)?;
            loop {
                let len = stream.read_u16().await.map_err(ForwardError::Io)? as usize;
                let mut reply = vec![0u8; len];
                stream.read_exact(&mut reply).await.map_err(ForwardError::Io)?;
                match wire::check_reply(&reply, id, question) {
                    ReplyCheck::Match => {
                        wire::set_id(&mut reply, client_id);
                        return Ok(reply);
                    }
                    ReplyCheck::NotAResponse => return Err(ForwardError::NotAResponse),
                    ReplyCheck::WrongId => inc(&self.stats.spoofed_unknown_id),
                    ReplyCheck::WrongQuestion => inc(&self.stats.spoofed_wrong_question),
                }
            }
        };
        tokio::time::timeout(self.timeout, fut).await.map_err(|_| ForwardError::Timeout)?
    }
}

/// Removes the pending entry when the query finishes or is abandoned (timeout, cancelled task).
struct PendingGuard<'a> {
    sock: &'a UpstreamSocket,
    id: u16,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.sock.pending.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.id);
    }
}

#[derive(Default)]
struct Pool {
    slots: Mutex<Vec<Arc<UpstreamSocket>>>,
    next: AtomicUsize,
}

impl Pool {
    fn pick(&self, upstream: SocketAddr, size: usize, stats: &Arc<ProxyStats>) -> io::Result<Arc<UpstreamSocket>> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % size;
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if slots.len() <= i {
            let s = UpstreamSocket::open(upstream, stats.clone())?;
            slots.push(s.clone());
            return Ok(s);
        }
        if slots[i].uses.fetch_add(1, Ordering::Relaxed) >= ROTATE_AFTER {
            let fresh = UpstreamSocket::open(upstream, stats.clone())?;
            let old = std::mem::replace(&mut slots[i], fresh.clone());
            old.retire();
            return Ok(fresh);
        }
        Ok(slots[i].clone())
    }
}

struct Pending {
    upstream: SocketAddr,
    reply: Reply,
}

impl Pending {
    /// The question a reply must echo.
    fn question(&self) -> &[u8] {
        match &self.reply {
            Reply::Channel { question, .. } => question,
            Reply::Then { packet, question_end, .. } => &packet[HEADER_LEN..*question_end],
        }
    }
}

/// Who waits for a reply.
enum Reply {
    /// A task, woken through a channel (it keeps its own timeout and the query).
    Channel { tx: oneshot::Sender<Vec<u8>>, question: Bytes },
    /// A callback, run by the reader; its deadline is also in the socket's `deadlines`. The
    /// query (the proxy's ID in it) is kept for the callback: the question is read from it.
    Then { done: Done, client_id: u16, deadline: Instant, packet: Vec<u8>, question_end: usize },
}

impl Reply {
    fn deliver(self, mut reply: Vec<u8>) {
        match self {
            // The query may have timed out just now; then nobody listens and that is fine.
            Reply::Channel { tx, .. } => drop(tx.send(reply)),
            Reply::Then { done, client_id, packet, .. } => {
                wire::set_id(&mut reply, client_id);
                done(Ok(reply), packet);
            }
        }
    }

    fn fail(self, e: ForwardError) {
        if let Reply::Then { done, packet, .. } = self {
            done(Err(e), packet);
        }
    }
}

struct UpstreamSocket {
    socket: UdpSocket,
    pending: Mutex<HashMap<u16, Pending>>,
    /// Deadlines of the callback queries, oldest first, with their IDs.
    deadlines: Mutex<VecDeque<(Instant, u16)>>,
    /// The first deadline after none: the reader starts its timer.
    armed: Notify,
    uses: AtomicU32,
    retired: AtomicBool,
    retire: Notify,
    stats: Arc<ProxyStats>,
}

impl UpstreamSocket {
    fn open(upstream: SocketAddr, stats: Arc<ProxyStats>) -> io::Result<Arc<Self>> {
        // Port 0: the kernel picks a random ephemeral port (Linux randomizes since 3.x).
        let bind: SocketAddr = if upstream.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().expect("literal");
        let std = std::net::UdpSocket::bind(bind)?;
        // Replies of a slow upstream arrive in bursts as large as the queries it holds.
        crate::socket::grow_recv_buffer(std::os::fd::AsRawFd::as_raw_fd(&std), UPSTREAM_RECV_BUFFER);
        std.connect(upstream)?;
        std.set_nonblocking(true)?;
        let socket = UdpSocket::from_std(std)?;
        let sock = Arc::new(UpstreamSocket {
            socket,
            pending: Mutex::default(),
            deadlines: Mutex::default(),
            armed: Notify::new(),
            uses: AtomicU32::new(1),
            retired: AtomicBool::new(false),
            retire: Notify::new(),
            stats,
        });
        tokio::spawn(read_replies(sock.clone()));
        Ok(sock)
    }

    /// Register a waiting query under a random ID not in use on this socket.
    fn register(&self, upstream: SocketAddr, question: Bytes, reply: oneshot::Sender<Vec<u8>>) -> u16 {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let id = self.free_id(&pending);
        pending.insert(id, Pending { upstream, reply: Reply::Channel { tx: reply, question } });
        id
    }

    /// A random ID not in use on this socket.
    fn free_id(&self, pending: &HashMap<u16, Pending>) -> u16 {
        let mut id: u16 = rand::random();
        while pending.contains_key(&id) {
            id = rand::random();
        }
        id
    }

    fn add_deadline(&self, deadline: Instant, id: u16) {
        let mut deadlines = self.deadlines.lock().unwrap_or_else(|e| e.into_inner());
        deadlines.push_back((deadline, id));
        if deadlines.len() == 1 {
            self.armed.notify_one();
        }
    }

    /// Sending query `id` failed: its waiter hears it now.
    fn fail(&self, id: u16, e: io::Error) {
        let p = self.pending.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
        if let Some(p) = p {
            p.reply.fail(ForwardError::Io(e));
        }
    }

    /// Fail the callback queries whose deadline has passed; the next deadline, if any.
    fn expire(&self, now: Instant) -> Option<Instant> {
        let mut expired = Vec::new();
        let next = {
            let mut deadlines = self.deadlines.lock().unwrap_or_else(|e| e.into_inner());
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            while let Some(&(deadline, id)) = deadlines.front() {
                if deadline > now {
                    break;
                }
                deadlines.pop_front();
                // The ID may have been answered and reused since: only the entry with this deadline.
                let due = matches!(
                    pending.get(&id),
                    Some(Pending { reply: Reply::Then { deadline: d, .. }, .. }) if *d == deadline
                );
                if due && let Some(p) = pending.remove(&id) {
                    expired.push(p.reply);
                }
            }
            deadlines.front().map(|&(d, _)| d)
        };
        for reply in expired {
            reply.fail(ForwardError::Timeout);
        }
        next
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.lock().unwrap_or_else(|e| e.into_inner()).front().map(|&(d, _)| d)
    }

    fn retire(&self) {
        self.retired.store(true, Ordering::Release);
        self.retire.notify_one();
    }

    fn deliver(&self, from: SocketAddr, reply: &[u8]) {
        let Some(id) = wire::id(reply) else { return };
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let Some(p) = pending.get(&id) else {
            inc(&self.stats.spoofed_unknown_id);
            return;
        };
        if p.upstream != from {
            inc(&self.stats.spoofed_wrong_source);
            return;
        }
        match wire::check_reply(reply, id, p.question()) {
            ReplyCheck::Match => {
                if let Some(p) = pending.remove(&id) {
                    drop(pending);
                    p.reply.deliver(reply.to_vec());
                }
            }
            ReplyCheck::WrongId | ReplyCheck::NotAResponse => inc(&self.stats.spoofed_unknown_id),
            ReplyCheck::WrongQuestion => inc(&self.stats.spoofed_wrong_question),
        }
    }
}

/// How late a callback query's timeout may fire: the reader's timer is set once per tick, not
/// once per query.
const TIMEOUT_TICK: Duration = Duration::from_millis(50);

async fn read_replies(sock: Arc<UpstreamSocket>) {
    let mut batch = RecvBatch::new(REPLY_BATCH, MAX_MESSAGE);
    let sleep = tokio::time::sleep(Duration::from_secs(3600));
    tokio::pin!(sleep);
    // When the timer fires, if set: at most a tick after the oldest deadline.
    let mut armed: Option<Instant> = None;
    loop {
        let now = Instant::now();
        let mut next = sock.next_deadline();
        if next.is_some_and(|d| d <= now) {
            next = sock.expire(now);
        }
        match next {
            Some(d) if armed.is_none_or(|a| a < d || a > d + TIMEOUT_TICK) => {
                sleep.as_mut().reset((d + TIMEOUT_TICK).into());
                armed = Some(d + TIMEOUT_TICK);
            }
            Some(_) => {}
            None => armed = None,
        }
        let timer = async {
            if armed.is_some() {
                sleep.as_mut().await;
            } else {
                sock.armed.notified().await;
            }
        };
        let ready = if sock.retired.load(Ordering::Acquire) {
            if sock.pending.lock().unwrap_or_else(|e| e.into_inner()).is_empty() {
                return;
            }
            // Queries still waiting time out on their own; a quiet retired socket just goes away.
            tokio::select! {
                r = tokio::time::timeout(Duration::from_secs(1), sock.socket.readable()) => match r {
                    Ok(r) => r,
                    Err(_) => continue,
                },
                () = timer => continue,
            }
        } else {
            tokio::select! {
                r = sock.socket.readable() => r,
                () = sock.retire.notified() => continue,
                () = timer => continue,
            }
        };
        if let Err(e) = ready {
            tracing::warn!(error = %e, "upstream socket failed");
            // Nothing more will be read here: the callback queries fail now rather than never.
            let ids: Vec<u16> =
                sock.deadlines.lock().unwrap_or_else(|e| e.into_inner()).drain(..).map(|(_, id)| id).collect();
            for id in ids {
                sock.fail(id, io::Error::other("upstream socket failed"));
            }
            return;
        }
        if let Err(e) = batch.recv_ready(&sock.socket) {
            // ICMP errors surface here; the waiting query times out.
            tracing::trace!(error = %e, "upstream socket receive");
            continue;
        }
        for (d, reply) in batch.datagrams() {
            if !d.truncated {
                sock.deliver(d.source, reply);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A query for `n.test. A` with ID `id`, and where its question ends.
    fn query(id: u16, n: u8) -> (Vec<u8>, usize) {
        let mut q = id.to_be_bytes().to_vec();
        q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 1, b'0' + n, 4]);
        q.extend_from_slice(b"test");
        q.extend_from_slice(&[0, 0, 1, 0, 1]);
        let end = q.len();
        (q, end)
    }

    /// Fresh upstream sockets send at once, in the call, not from a task after the runtime next
    /// polls them (as tokio's `try_send` would have it for a socket it has not seen writable).
    #[tokio::test(flavor = "current_thread")]
    async fn a_fresh_sockets_first_queries_leave_in_the_call() {
        let upstream = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        upstream.set_nonblocking(true).unwrap();
        let fwd = Forwarder::new(Duration::from_secs(5), 4, Arc::default());
        for n in 0..8 {
            let (q, end) = query(100 + u16::from(n), n);
            fwd.udp_then(q, end, upstream.local_addr().unwrap(), Box::new(|_, _| {}));
        }
        // Nothing has yielded to the runtime since: what arrived was sent by udp_then itself.
        let mut buf = [0u8; 512];
        let mut got = 0;
        while upstream.recv(&mut buf).is_ok() {
            got += 1;
        }
        assert_eq!(got, 8);
    }
}
