//! TCP serving (RFC 7766): length-prefixed messages, several queries in flight per connection
//! answered as they complete (possibly out of order), idle connections closed.

use std::net::SocketAddr;
use std::os::fd::AsRawFd as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use fqdn_cache::L4Proto;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::handler::{QueryMeta, Shared};

/// Queries one connection may have in flight; reading pauses beyond this.
const PIPELINE_DEPTH: usize = 64;

pub(crate) async fn serve(
    shared: Arc<Shared>,
    listener: TcpListener,
    transparent: bool,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            () = shutdown.cancelled() => return,
        };
        let (stream, client) = match accepted {
            Ok(a) => a,
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
        let _ = stream.set_nodelay(true);
        tracker.spawn(connection(shared.clone(), stream, client, server, ifindex, tracker.clone(), shutdown.clone()));
    }
}

async fn connection(
    shared: Arc<Shared>,
    stream: TcpStream,
    client: SocketAddr,
    server: SocketAddr,
    ifindex: Option<u32>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) {
    let (mut rd, mut wr) = stream.into_split();
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(PIPELINE_DEPTH);
    let writer = tracker.spawn(async move {
        let mut frame = Vec::new();
        while let Some(reply) = rx.recv().await {
            frame.clear();
            frame.extend_from_slice(&(reply.len() as u16).to_be_bytes());
            frame.extend_from_slice(&reply);
            if wr.write_all(&frame).await.is_err() {
                return;
            }
        }
        let _ = wr.shutdown().await;
    });
    let depth = Arc::new(Semaphore::new(PIPELINE_DEPTH));
    let in_flight = Arc::new(AtomicUsize::new(0));
    let idle = shared.config.tcp_idle_timeout;
    loop {
        let len = tokio::select! {
            r = tokio::time::timeout(idle, rd.read_u16()) => match r {
                Ok(Ok(len)) => len as usize,
                Ok(Err(_)) => break,
                // Idle only counts when nothing is pending: a slow upstream is not an idle client.
                Err(_) if in_flight.load(Ordering::Acquire) > 0 => continue,
                Err(_) => break,
            },
            () = shutdown.cancelled() => break,
        };
        let mut packet = vec![0u8; len];
        match tokio::time::timeout(idle, rd.read_exact(&mut packet)).await {
            Ok(Ok(_)) => {}
            _ => break,
        }
        let Ok(permit) = depth.clone().acquire_owned().await else { break };
        let meta = QueryMeta { client, server, proto: L4Proto::Tcp, received: Instant::now(), ifindex };
        let (shared, tx, in_flight) = (shared.clone(), tx.clone(), in_flight.clone());
        in_flight.fetch_add(1, Ordering::AcqRel);
        tracker.spawn(async move {
            if let Some(reply) = shared.handle(&shared.forwarder, &packet, meta).await {
                let _ = tx.send(reply).await;
            }
            in_flight.fetch_sub(1, Ordering::AcqRel);
            drop(permit);
        });
    }
    // The writer ends once every query task has sent its reply and dropped its sender.
    drop(tx);
    let _ = writer.await;
}
