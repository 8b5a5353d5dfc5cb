//! The proxy as a whole: bind its sockets, serve until shut down, swap endpoint tables, hand out
//! flow subscriptions and counters.

mod tcp;
mod udp;

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use ebpf_redirect::Datapath;
use fqdn_cache::L4Proto;
use serde::Serialize;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Mode, ProxyConfig};
use crate::endpoints::EndpointTable;
use crate::error::ProxyError;
use crate::flow::DnsFlow;
use crate::forwarder::Forwarder;
use crate::handler::Shared;
use crate::learner::Learner;
use crate::metrics::ProxyMetrics;
use crate::stats::{ProxyStats, StatsSnapshot};
use crate::transparent;

/// A running (or ready to run) DNS proxy. Cheap to clone.
#[derive(Clone)]
pub struct Proxy {
    shared: Arc<Shared>,
}

/// One bound listening socket, for logs and for the datapath: the eBPF program finds the
/// transparent sockets by these addresses (`bpf_sk_lookup_udp` / `bpf_skc_lookup_tcp` on the
/// listener's address and port), or takes them by file descriptor into a socket map.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct ListenerInfo {
    pub proto: L4Proto,
    pub addr: SocketAddr,
    pub transparent: bool,
    /// Valid while the [`Bound`] that reported it is alive.
    #[serde(skip)]
    pub fd: RawFd,
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
    /// A proxy whose metrics go nowhere (tests, benches).
    pub fn new(
        config: ProxyConfig,
        learner: Arc<dyn Learner>,
        datapath: Arc<dyn Datapath>,
    ) -> Result<Self, ProxyError> {
        Self::with_metrics(config, learner, datapath, ProxyMetrics::unregistered())
    }

    /// A proxy recording into `metrics` (registered in the agent's registry).
    pub fn with_metrics(
        config: ProxyConfig,
        learner: Arc<dyn Learner>,
        datapath: Arc<dyn Datapath>,
        metrics: ProxyMetrics,
    ) -> Result<Self, ProxyError> {
        if config.mode == Mode::Plain && config.upstream.is_none() {
            return Err(ProxyError::NoUpstream);
        }
        Ok(Proxy { shared: Arc::new(Shared::new(config, learner, datapath, metrics)) })
    }

    pub fn config(&self) -> &ProxyConfig {
        &self.shared.config
    }

    /// Replace the source-IP -> endpoint table; queries already in flight finish with the old one.
    pub fn set_endpoints(&self, table: EndpointTable) {
        self.shared.endpoints.store(Arc::new(table));
    }

    pub fn endpoints(&self) -> Arc<EndpointTable> {
        self.shared.endpoints.load_full()
    }

    /// Flow events from now on. A reader that falls more than 4096 events behind loses the oldest
    /// (it sees `RecvError::Lagged` with the count); the query path never waits for readers.
    pub fn subscribe(&self) -> broadcast::Receiver<DnsFlow> {
        self.shared.flows.subscribe()
    }

    pub fn stats(&self) -> StatsSnapshot {
        self.shared.stats.snapshot()
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
            let t = if transparent { transparent::tcp_listener(addr)? } else { plain_tcp(addr)? };
            // Bind UDP on the port TCP got, so `:0` yields one port for both.
            let port = t.local_addr().map(|a| a.port()).unwrap_or(addr.port());
            let uaddr = SocketAddr::new(addr.ip(), port);
            for _ in 0..workers {
                let u =
                    if transparent { transparent::udp_socket(uaddr, false)? } else { plain_udp(uaddr, workers > 1)? };
                udp.push(u);
            }
            tcp.push(t);
        }
        Ok(Sockets { transparent, udp, tcp })
    }

    pub fn listeners(&self) -> Vec<ListenerInfo> {
        let transparent = self.transparent;
        let udp = self.udp.iter().filter_map(|s| {
            Some(ListenerInfo { proto: L4Proto::Udp, addr: s.local_addr().ok()?, transparent, fd: s.as_raw_fd() })
        });
        let tcp = self.tcp.iter().filter_map(|s| {
            Some(ListenerInfo { proto: L4Proto::Tcp, addr: s.local_addr().ok()?, transparent, fd: s.as_raw_fd() })
        });
        udp.chain(tcp).collect()
    }
}

/// Maps a failed setsockopt on a plain listener to an error naming the option and the address.
fn option_err(option: &'static str, proto: L4Proto, addr: SocketAddr) -> impl FnOnce(std::io::Error) -> ProxyError {
    move |source| ProxyError::SocketOption { option, proto, addr, source }
}

fn plain_udp(addr: SocketAddr, reuse_port: bool) -> Result<std::net::UdpSocket, ProxyError> {
    let proto = L4Proto::Udp;
    let sock = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::DGRAM, None)
        .map_err(|source| ProxyError::Bind { proto, addr, source })?;
    if addr.is_ipv6() {
        sock.set_only_v6(true).map_err(option_err("IPV6_V6ONLY", proto, addr))?;
    }
    if reuse_port {
        sock.set_reuse_port(true).map_err(option_err("SO_REUSEPORT", proto, addr))?;
    }
    sock.set_nonblocking(true).map_err(option_err("O_NONBLOCK", proto, addr))?;
    sock.bind(&addr.into()).map_err(|source| ProxyError::Bind { proto, addr, source })?;
    Ok(sock.into())
}

fn plain_tcp(addr: SocketAddr) -> Result<std::net::TcpListener, ProxyError> {
    let proto = L4Proto::Tcp;
    let sock = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)
        .map_err(|source| ProxyError::Bind { proto, addr, source })?;
    if addr.is_ipv6() {
        sock.set_only_v6(true).map_err(option_err("IPV6_V6ONLY", proto, addr))?;
    }
    sock.set_reuse_address(true).map_err(option_err("SO_REUSEADDR", proto, addr))?;
    sock.set_nonblocking(true).map_err(option_err("O_NONBLOCK", proto, addr))?;
    sock.bind(&addr.into()).map_err(|source| ProxyError::Bind { proto, addr, source })?;
    sock.listen(1024).map_err(|source| ProxyError::Bind { proto, addr, source })?;
    Ok(sock.into())
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
            tracker.spawn(tcp::serve(self.shared.clone(), listener, transparent, tracker.clone(), shutdown.clone()));
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
