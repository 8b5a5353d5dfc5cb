//! The proxy as a whole: bind its sockets, serve until shut down, swap endpoint tables, hand out
//! flow subscriptions and counters.

mod conns;
mod inherit;
mod tcp;
mod udp;

use std::net::SocketAddr;
use std::os::fd::AsRawFd as _;
use std::sync::Arc;

use fqdn_cache::{L4Proto, Learner};
use policy_sync::Snapshot;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Mode, ProxyConfig};
use crate::error::ProxyError;
use crate::flow::FlowSink;
use crate::forwarder::Forwarder;
use crate::handler::Shared;
use crate::metrics::ProxyMetrics;
use crate::socket::{self, Options};
use crate::stats::{ProxyStats, StatsSnapshot};

/// A running (or ready to run) DNS proxy. Cheap to clone.
#[derive(Clone)]
pub struct Proxy {
    shared: Arc<Shared>,
}

/// One bound listening socket, for logs and for the datapath: the eBPF program finds the
/// transparent sockets by these addresses (`bpf_sk_lookup_udp` / `bpf_skc_lookup_tcp` on the
/// listener's address and port).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct ListenerInfo {
    pub proto: L4Proto,
    pub addr: SocketAddr,
    pub transparent: bool,
}

/// Listening sockets bound for a config, owned by no proxy yet: lets a caller learn the ports
/// (for the datapath) before building the proxy that serves them.
pub struct Sockets {
    transparent: bool,
    udp: Vec<std::net::UdpSocket>,
    tcp: Vec<std::net::TcpListener>,
}

/// The proxy's sockets, bound, not yet serving.
pub struct Bound {
    shared: Arc<Shared>,
    sockets: Sockets,
}

impl Proxy {
    /// A proxy whose metrics go nowhere (tests, benches). `flows`: where DNS flows go (none are
    /// built without a sink).
    pub fn new(
        config: ProxyConfig,
        learner: Arc<dyn Learner>,
        flows: Option<Arc<dyn FlowSink>>,
    ) -> Result<Self, ProxyError> {
        Self::with_metrics(config, learner, flows, ProxyMetrics::unregistered())
    }

    /// A proxy recording into `metrics` (registered in the agent's registry).
    pub fn with_metrics(
        config: ProxyConfig,
        learner: Arc<dyn Learner>,
        flows: Option<Arc<dyn FlowSink>>,
        metrics: ProxyMetrics,
    ) -> Result<Self, ProxyError> {
        if config.mode == Mode::Plain && config.upstream.is_none() {
            return Err(ProxyError::NoUpstream);
        }
        Ok(Proxy { shared: Arc::new(Shared::new(config, learner, flows, metrics)) })
    }

    pub fn config(&self) -> &ProxyConfig {
        &self.shared.config
    }

    /// Enforce `snapshot` (who is who, their DNS rules) from now on; queries already in flight
    /// finish with the one they started with.
    pub fn set_snapshot(&self, snapshot: Arc<Snapshot>) {
        if self.shared.config.mode == Mode::Transparent {
            self.shared.interfaces.store(Arc::new(crate::origin::Interfaces::of(&snapshot)));
        }
        self.shared.snapshot.store(snapshot);
    }

    pub fn stats(&self) -> StatsSnapshot {
        self.shared.stats.snapshot()
    }

    /// Queries shed per endpoint (or source address) for being over their rate, highest first.
    pub fn shed_counts(&self) -> Vec<(crate::limits::Owner, u64)> {
        self.shared.admission.shed_counts()
    }

    /// The live counters, for an exporter that reads them on scrape.
    pub fn stats_handle(&self) -> Arc<ProxyStats> {
        self.shared.stats.clone()
    }

    /// Bind this proxy's sockets ([`Sockets::bind`]).
    pub fn bind(&self) -> Result<Bound, ProxyError> {
        Ok(self.adopt(Sockets::bind(&self.shared.config)?))
    }

    /// Serve sockets bound earlier for this proxy's config.
    pub fn adopt(&self, sockets: Sockets) -> Bound {
        Bound { shared: self.shared.clone(), sockets }
    }
}

impl Sockets {
    /// Bind the UDP sockets and a TCP listener on every listen address. Port 0 picks a free port
    /// (the same for UDP and TCP of one address when possible). Plain mode binds one UDP socket
    /// per receive thread (`SO_REUSEPORT`); transparent mode one per address.
    pub fn bind(config: &ProxyConfig) -> Result<Sockets, ProxyError> {
        let transparent = config.mode == Mode::Transparent;
        let workers = if transparent { 1 } else { config.udp_workers() };
        let mut udp = Vec::new();
        let mut tcp = Vec::new();
        for &addr in &config.listen {
            let opts = if transparent { Options::TRANSPARENT } else { Options::PLAIN };
            let t = socket::tcp_listener(addr, opts)?;
            // Bind UDP on the port TCP got, so `:0` yields one port for both.
            let port = t.local_addr().map(|a| a.port()).unwrap_or(addr.port());
            let uaddr = SocketAddr::new(addr.ip(), port);
            for _ in 0..workers {
                let sock = socket::udp(uaddr, Options { reuse_port: workers > 1, ..opts })?;
                socket::grow_recv_buffer(sock.as_raw_fd(), socket::LISTEN_RECV_BUFFER);
                udp.push(sock);
            }
            tcp.push(t);
        }
        Ok(Sockets { transparent, udp, tcp })
    }

    pub fn listeners(&self) -> Vec<ListenerInfo> {
        let transparent = self.transparent;
        let udp = self
            .udp
            .iter()
            .filter_map(|s| Some(ListenerInfo { proto: L4Proto::Udp, addr: s.local_addr().ok()?, transparent }));
        let tcp = self
            .tcp
            .iter()
            .filter_map(|s| Some(ListenerInfo { proto: L4Proto::Tcp, addr: s.local_addr().ok()?, transparent }));
        udp.chain(tcp).collect()
    }
}

impl Bound {
    pub fn listeners(&self) -> Vec<ListenerInfo> {
        self.sockets.listeners()
    }

    /// Serve until `shutdown` is cancelled; then stop accepting and wait for queries in flight
    /// (bounded by the upstream timeout and the response max delay). UDP sockets are served by
    /// threads of their own; TCP on the caller's runtime.
    pub async fn serve(self, shutdown: CancellationToken) -> Result<(), ProxyError> {
        let tracker = TaskTracker::new();
        let transparent = self.shared.config.mode == Mode::Transparent;
        let replies = Arc::new(udp::ReplySockets::default());
        let mut threads = Vec::new();
        for (i, sock) in self.sockets.udp.into_iter().enumerate() {
            let addr = sock.local_addr().map_err(|source| ProxyError::Bind {
                proto: L4Proto::Udp,
                addr: "0.0.0.0:0".parse().expect("literal"),
                source,
            })?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|source| ProxyError::Bind { proto: L4Proto::Udp, addr, source })?;
            let socket = {
                let _guard = runtime.enter();
                tokio::net::UdpSocket::from_std(sock).map_err(|source| ProxyError::Bind {
                    proto: L4Proto::Udp,
                    addr,
                    source,
                })?
            };
            let shared = self.shared.clone();
            let config = &shared.config;
            let forwarder =
                Arc::new(Forwarder::new(config.upstream_timeout, config.upstream_sockets, shared.stats.clone()));
            let server = udp::UdpServer {
                forwarder,
                socket: Arc::new(socket),
                transparent,
                recv_batch: udp::RECV_BATCH,
                replies: replies.clone(),
                tracker: TaskTracker::new(),
                shutdown: shutdown.clone(),
                shared,
            };
            let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
            std::thread::Builder::new()
                .name(format!("fqdnd-udp-{i}"))
                .spawn(move || {
                    let tracker = server.tracker.clone();
                    runtime.block_on(async move {
                        server.run().await;
                        tracker.close();
                        tracker.wait().await;
                    });
                    let _ = done_tx.send(());
                })
                .map_err(|source| ProxyError::Bind { proto: L4Proto::Udp, addr, source })?;
            threads.push(done_rx);
        }
        let conns = Arc::new(conns::Connections::new(
            self.shared.config.tcp_max_connections,
            self.shared.config.tcp_max_connections_per_endpoint,
        ));
        for listener in self.sockets.tcp {
            let addr = listener.local_addr().map_err(|source| ProxyError::Bind {
                proto: L4Proto::Tcp,
                addr: "0.0.0.0:0".parse().expect("literal"),
                source,
            })?;
            let listener = tokio::net::TcpListener::from_std(listener).map_err(|source| ProxyError::Bind {
                proto: L4Proto::Tcp,
                addr,
                source,
            })?;
            tracker.spawn(tcp::serve(
                self.shared.clone(),
                listener,
                transparent,
                conns.clone(),
                tracker.clone(),
                shutdown.clone(),
            ));
        }
        shutdown.cancelled().await;
        tracker.close();
        tracker.wait().await;
        for done in threads {
            let _ = done.await;
        }
        replies.clear();
        Ok(())
    }
}
