//! TCP serving (RFC 7766): length-prefixed messages, several queries in flight per connection
//! answered as they complete (possibly out of order), idle connections closed. Connections are
//! capped in total and per endpoint ([`super::conns`]); a message's buffer grows with the bytes
//! that arrive, not with the length a client announces; an accept loop out of descriptors backs
//! off instead of spinning.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use fqdn_cache::L4Proto;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::conns::{ConnGuard, Connections};
use crate::handler::{QueryMeta, Shared};
use crate::limits::Owner;
use crate::stats::inc;

/// Queries one connection may have in flight; reading pauses beyond this.
const PIPELINE_DEPTH: usize = 64;
/// A message buffer starts this small and grows as bytes arrive: 6,000 connections each
/// announcing 64 KiB and sending nothing used to hold 64 KiB each.
const INITIAL_MESSAGE_BUFFER: usize = 512;
/// Backoff of the accept loop when the process is out of descriptors or memory.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

pub(crate) async fn serve(
    shared: Arc<Shared>,
    listener: TcpListener,
    transparent: bool,
    conns: Arc<Connections>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::ZERO;
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            () = shutdown.cancelled() => return,
        };
        let (stream, client) = match accepted {
            Ok(a) => {
                backoff = Duration::ZERO;
                a
            }
            Err(e) if out_of_resources(&e) => {
                // The connection stays in the backlog and the listener stays readable: without a
                // pause this loop spins (and logs) as fast as the CPU allows.
                inc(&shared.stats.tcp_accept_errors);
                backoff = (backoff * 2).clamp(ACCEPT_BACKOFF_MIN, ACCEPT_BACKOFF_MAX);
                let freed = conns.evict_one();
                if let Some(suppressed) = conns.accept_errors.check(Instant::now()) {
                    tracing::warn!(
                        error = %e, backoff = ?backoff, closed_idle = freed, suppressed,
                        "TCP accept failed for want of resources; backing off"
                    );
                }
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = shutdown.cancelled() => return,
                }
                continue;
            }
            Err(e) => {
                tracing::debug!(error = %e, "TCP accept");
                continue;
            }
        };
        // Transparent: the accepted socket is bound to the address the client dialled.
        let server = if transparent { stream.local_addr().ok() } else { shared.config.upstream };
        let Some(server) = server else { continue };
        // The interface the handshake came in on: the endpoint of every query on the connection.
        let ifindex =
            if transparent { crate::origin::tcp_ingress_ifindex(stream.as_raw_fd(), server.is_ipv6()) } else { None };
        let endpoint = {
            let snapshot = shared.snapshot.load();
            if transparent {
                crate::origin::establish(&snapshot, &shared.interfaces.load(), client.ip(), ifindex).ok().map(|e| e.id)
            } else {
                snapshot.by_ip(client.ip()).map(|e| e.id)
            }
        };
        let guard = match conns.admit(Owner::of(endpoint, client.ip())) {
            Ok((guard, evicted)) => {
                for _ in 0..evicted {
                    inc(&shared.stats.tcp_evicted);
                }
                guard
            }
            Err(why) => {
                inc(&shared.stats.tcp_refused);
                tracing::debug!(client = %client, endpoint = ?endpoint, ?why, "TCP connection refused at the cap");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let addrs = Addrs { client, server, ifindex };
        tracker.spawn(connection(shared.clone(), stream, addrs, guard, tracker.clone(), shutdown.clone()));
    }
}

/// Errors that mean the process (or the system) is out of something a retry now will not find.
fn out_of_resources(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM))
}

/// Read a message of `len` bytes into `packet` (cleared), growing it only as bytes arrive.
/// False when the stream ended first.
async fn read_message<R: AsyncRead + Unpin>(rd: &mut R, len: usize, packet: &mut Vec<u8>) -> io::Result<bool> {
    packet.clear();
    packet.reserve(len.min(INITIAL_MESSAGE_BUFFER));
    let n = rd.take(len as u64).read_to_end(packet).await?;
    Ok(n == len)
}

/// Who a connection is between, and the interface its handshake came in on (transparent mode).
struct Addrs {
    client: SocketAddr,
    server: SocketAddr,
    ifindex: Option<u32>,
}

async fn connection(
    shared: Arc<Shared>,
    stream: TcpStream,
    addrs: Addrs,
    guard: ConnGuard,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) {
    let Addrs { client, server, ifindex } = addrs;
    let guard = Arc::new(guard);
    let (mut rd, mut wr) = stream.into_split();
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(PIPELINE_DEPTH);
    let writer = {
        let guard = guard.clone();
        tracker.spawn(async move {
            let mut frame = Vec::new();
            while let Some(reply) = rx.recv().await {
                frame.clear();
                frame.extend_from_slice(&(reply.len() as u16).to_be_bytes());
                frame.extend_from_slice(&reply);
                if wr.write_all(&frame).await.is_err() {
                    return;
                }
                guard.touch();
            }
            let _ = wr.shutdown().await;
        })
    };
    let depth = Arc::new(Semaphore::new(PIPELINE_DEPTH));
    let idle = shared.config.tcp_idle_timeout;
    let close = guard.state.close.clone();
    loop {
        let len = tokio::select! {
            r = tokio::time::timeout(idle, rd.read_u16()) => match r {
                Ok(Ok(len)) => len as usize,
                Ok(Err(_)) => break,
                // Idle only counts when nothing is pending: a slow upstream is not an idle client.
                Err(_) if guard.state.in_flight.load(Ordering::Acquire) > 0 => continue,
                Err(_) => break,
            },
            () = shutdown.cancelled() => break,
            // Chosen to make room for a newer connection (it was the oldest idle one).
            () = close.cancelled() => break,
        };
        let mut packet = Vec::new();
        let complete = tokio::select! {
            r = tokio::time::timeout(idle, read_message(&mut rd, len, &mut packet)) => matches!(r, Ok(Ok(true))),
            () = close.cancelled() => false,
        };
        if !complete {
            break;
        }
        guard.touch();
        let Ok(permit) = depth.clone().acquire_owned().await else { break };
        let meta = QueryMeta { client, server, proto: L4Proto::Tcp, received: Instant::now(), ifindex };
        let (shared, tx, guard) = (shared.clone(), tx.clone(), guard.clone());
        guard.state.in_flight.fetch_add(1, Ordering::AcqRel);
        tracker.spawn(async move {
            if let Some(reply) = shared.handle(&shared.forwarder, &packet, meta).await {
                let _ = tx.send(reply).await;
            }
            guard.state.in_flight.fetch_sub(1, Ordering::AcqRel);
            drop(permit);
        });
    }
    // The writer ends once every query task has sent its reply and dropped its sender.
    drop(tx);
    let _ = writer.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn buffer_grows_with_the_bytes_that_arrive() {
        // Announced 65,535 bytes, sent 3, then gone: the buffer holds what came, not what was announced.
        let mut packet = Vec::new();
        let mut stream: &[u8] = &[1, 2, 3];
        assert!(!read_message(&mut stream, 65_535, &mut packet).await.unwrap());
        assert_eq!(packet, [1, 2, 3]);
        assert!(packet.capacity() <= 4 * INITIAL_MESSAGE_BUFFER, "capacity {}", packet.capacity());

        let whole: Vec<u8> = (0..=255u8).cycle().take(3000).collect();
        let mut stream: &[u8] = &whole;
        assert!(read_message(&mut stream, 2000, &mut packet).await.unwrap());
        assert_eq!(packet, whole[..2000]);
        assert_eq!(stream.len(), 1000, "nothing past the message is read");
    }
}
