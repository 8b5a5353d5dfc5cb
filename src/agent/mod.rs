//! The agent: builds the parts and connects them. It is not on the query path.
//!
//! ```text
//!  FilesSource ─Snapshot─┬─► enforcer (fqdn-cache): toFQDNs selectors per endpoint ─Delta─► datapath
//!                        ├─► datapath (ebpf-redirect): endpoints attached, static rules, flags
//!                        ├─► proxy (dns-proxy): source IP -> endpoint, compiled rules.dns
//!                        └─► flows: endpoint names
//!  proxy ─Answer─► enforcer (Learner) ─Delta─► datapath ─ack─► enforcer ─► proxy releases the answer
//!        └─DnsFlow─► FlowHub ◄─ drop events (kernel datapath)
//!  FlowHub + enforcer + Readiness ─► admin socket <state-dir>/fqdnd.sock (observe, cache list, status)
//!  FlowHub ─► Hubble's Observer API on --hubble-listen (gRPC); every flow ─► Hubble's metrics
//!  registries (fqdnd_*: proxy, agent, cache, datapath; hubble_*) ─► --metrics-addr (/metrics, /healthz, /readyz)
//! ```
//!
//! Start order: bind the proxy's sockets (the datapath needs their ports), open the datapath,
//! restore the cache, load the first snapshot and converge the datapath (keeping the kernel's
//! learned entries, adding the restored cache's), then serve. Shutdown: stop serving, let queries
//! in flight finish, write the cache snapshot. The kernel datapath stays pinned: enforcement
//! continues while the agent is away.

pub mod datapath;
pub mod kubernetes;
pub mod lock;
pub mod rlimit;
pub mod state_dir;
mod status;
mod summary;
pub mod takeover;

use std::os::fd::{AsFd as _, OwnedFd};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use arc_swap::ArcSwap;
use dns_proxy::metrics::ProxyMetrics;
use dns_proxy::{FlowSink, ListenerInfo, Mode, Proxy, Sockets};
use fqdn_cache::{Enforcer, L4Proto};
use fqdnd::admin::handover::{FdKind, HandedFd};
use fqdnd::admin::{self, AdminState, ServeOptions};
use fqdnd::flows::{DnsFlows, FlowHub, HubConfig};
use fqdnd::metrics::{self as agent_metrics, AgentMetrics, Readiness};
use policy_sync::{FilesSource, Snapshot, Source};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, PrintFlows, SourceKind};
use datapath::AgentDatapath;
use lock::DirLock;
use takeover::AgentHandover;

/// The file in the state directory listing the bound DNS listeners (JSON), written once every
/// server (DNS, admin socket, metrics, Hubble) is bound and the first snapshot is enforced: lets
/// scripts and tests that asked for port 0 find the port, and know the agent is up.
pub const LISTENERS_FILE: &str = "listeners.json";

/// How often expired cache entries are collected.
const GC_INTERVAL: Duration = Duration::from_secs(1);

/// Everything a snapshot is handed to.
struct Parts {
    proxy: Proxy,
    enforcer: Arc<Enforcer>,
    datapath: AgentDatapath,
    /// The snapshot in force, for flows and `fqdnd cache list`.
    current: Arc<ArcSwap<Snapshot>>,
    metrics: AgentMetrics,
}

impl Parts {
    /// Hand a snapshot to every part. Selectors reach the enforcer before the proxy sees the new
    /// rules, so an answer allowed by a new rule finds its selector in the cache.
    async fn apply(&self, snap: Snapshot, first: bool) {
        tracing::debug!(generation = snap.generation, policies = ?snap.policies, "policy snapshot");
        let snap = Arc::new(snap);
        self.metrics.policy_load_errors.inc_by(snap.rejected as u64);
        for fault in &snap.faults {
            self.metrics.source_fault(*fault).inc();
        }
        self.current.store(snap.clone());
        if let Err(e) = self.enforcer.set_endpoints(snap.selector_rules()).await {
            tracing::warn!(error = %e, "datapath update after a policy change failed");
        }
        self.datapath.sync(&snap, self.proxy.config().policy_audit_mode);
        if first && let Err(e) = self.enforcer.restore_into_datapath().await {
            tracing::warn!(error = %e, "restoring learned entries into the datapath");
        }
        self.proxy.set_snapshot(snap);
    }
}

/// Run until `shutdown` is cancelled.
pub async fn run(mut config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    state_dir::prepare(&config.state_dir)?;
    match rlimit::raise_nofile() {
        Ok((before, after)) => {
            let cap = rlimit::tcp_cap_for(after, config.proxy.tcp_max_connections);
            if cap < config.proxy.tcp_max_connections {
                tracing::warn!(
                    nofile = after,
                    configured = config.proxy.tcp_max_connections,
                    cap,
                    "descriptor limit too low for max-tcp-connections; capping TCP connections lower"
                );
                config.proxy.tcp_max_connections = cap;
                config.proxy.tcp_max_connections_per_endpoint = config.proxy.tcp_max_connections_per_endpoint.min(cap);
            }
            tracing::debug!(before, after, "RLIMIT_NOFILE soft limit raised to the hard limit");
        }
        Err(e) => tracing::warn!(error = %e, "raising RLIMIT_NOFILE"),
    }
    // Before any socket or map is touched: a second agent must change nothing of the first's,
    // unless it was started to take over (then the first one's locks and sockets come to it).
    let (state_lock, mut taken) = takeover::lock_state_dir(&config.state_dir, config.takeover).await?;
    let transparent = config.proxy.mode == Mode::Transparent;
    let mut bpffs_lock = match takeover::take_fds(&mut taken, FdKind::BpffsLock).into_iter().next() {
        Some((_, fd)) if transparent => Some(DirLock::adopt(&config.bpffs_dir, BPFFS_DIR, fd)?),
        _ if transparent => lock_bpffs_early(&config.bpffs_dir)?,
        _ => None,
    };

    let mut registry = agent_metrics::new_registry();
    let metrics = AgentMetrics::register(&mut registry);
    let proxy_metrics = ProxyMetrics::register(&mut registry);
    let mut hubble_registry = fqdnd::hubble::metrics::new_registry();
    let hubble_metrics = (!config.hubble_metrics.is_empty())
        .then(|| Arc::new(fqdnd::hubble::HubbleMetrics::register(&config.hubble_metrics, &mut hubble_registry)));
    let readiness = Arc::new(Readiness::default());

    // The proxy's sockets first: the transparent datapath redirects to their ports. Taking
    // over, they are the running agent's own sockets.
    let sockets = if taken.is_some() {
        let mut fds = takeover::take_fds(&mut taken, FdKind::Udp);
        fds.extend(takeover::take_fds(&mut taken, FdKind::Tcp));
        let (sockets, unused) = Sockets::bind_inheriting(&config.proxy, fds.into_iter().map(|(_, fd)| fd).collect())?;
        if unused > 0 {
            tracing::info!(unused, "handed-over listeners this config does not listen on; closed");
        }
        sockets
    } else {
        Sockets::bind(&config.proxy)?
    };
    let listeners = sockets.listeners();
    let datapath = if transparent {
        AgentDatapath::kernel(
            config.bpffs_dir.clone(),
            &listeners,
            ebpf_redirect::MapSizes { allow: config.allow_map_size },
            config.deny_response,
        )
        .context("opening the eBPF datapath (transparent mode needs root)")?
    } else {
        AgentDatapath::memory()
    };
    if transparent && bpffs_lock.is_none() {
        // The directory did not exist before the datapath mounted a bpffs and made it.
        bpffs_lock = Some(DirLock::try_lock(&config.bpffs_dir, BPFFS_DIR)?);
    }
    if let AgentDatapath::Kernel(dp) = &datapath {
        agent_metrics::register_datapath_counters(&mut registry, dp.clone());
    }
    let enforcer = Arc::new(Enforcer::open(config.cache.clone(), &config.state_dir, datapath.as_dyn()));
    agent_metrics::register_cache_stats(&mut registry, enforcer.clone());
    let current = Arc::new(ArcSwap::from_pointee(Snapshot::default()));

    let mut hub = FlowHub::with_config(
        HubConfig {
            ring_capacity: config.flow_ring_size,
            follower_queue: config.flow_follower_queue,
            node_name: config.node_name.clone(),
        },
        metrics.clone(),
    );
    if let Some(m) = &hubble_metrics {
        hub = hub.with_observer(m.clone());
    }
    let hub = Arc::new(hub);
    // A ring of 0 keeps no flows: the proxy then builds none, saving their cost, unless Hubble's
    // metrics count them.
    let flows = (config.flow_ring_size > 0 || hubble_metrics.is_some())
        .then(|| Arc::new(DnsFlows::new(hub.clone(), current.clone())) as Arc<dyn FlowSink>);
    let proxy = Proxy::with_metrics(config.proxy.clone(), enforcer.clone(), flows, proxy_metrics)?;
    dns_proxy::metrics::register_stats(&mut registry, proxy.stats_handle());
    let mut handed: Vec<(HandedFd, OwnedFd)> = Vec::new();
    for (info, fd) in sockets.clone_fds().context("duplicating the listeners for a future handover")? {
        let kind = if info.proto == L4Proto::Tcp { FdKind::Tcp } else { FdKind::Udp };
        handed.push((HandedFd { kind, addr: Some(info.addr), transparent: info.transparent }, fd));
    }
    let bound = proxy.adopt(sockets);
    for l in &listeners {
        tracing::info!(proto = %l.proto, addr = %l.addr, transparent = l.transparent, "DNS proxy listening");
    }

    let parts = Arc::new(Parts {
        proxy: proxy.clone(),
        enforcer: enforcer.clone(),
        datapath,
        current: current.clone(),
        metrics,
    });
    let mut source: Box<dyn Source> = match config.source {
        SourceKind::Files => {
            Box::new(FilesSource::new(config.policies.clone(), config.endpoints.clone(), config.policy_poll_interval))
        }
        SourceKind::Kubernetes => Box::new(kubernetes::source(&config, &mut registry).await?),
    };

    let mut tasks = Vec::new();
    if config.print_flows != PrintFlows::None {
        tasks.push(print_flows(hub.clone(), config.print_flows));
    }
    if let AgentDatapath::Kernel(dp) = &parts.datapath {
        match dp.drop_events() {
            Ok(mut events) => {
                let (hub, current, enforcer) = (hub.clone(), current.clone(), enforcer.clone());
                tasks.push(tokio::spawn(async move {
                    loop {
                        match events.recv().await {
                            Ok(ev) => hub.ingest_drop(&ev, current.as_ref(), enforcer.as_ref()),
                            Err(e) => {
                                tracing::warn!(error = %e, "reading drop events stopped");
                                return;
                            }
                        }
                    }
                }));
            }
            Err(e) => tracing::warn!(error = %e, "drop events unavailable; drops will not show as flows"),
        }
    }
    let cache_view = Arc::new(status::AgentView::new(&config, enforcer.clone(), current.clone(), &parts.datapath));
    let _hubble = match &config.hubble_listen {
        Some(listen) => {
            let state = fqdnd::hubble::ObserverState { hub: hub.clone(), started: Instant::now() };
            let inherited = takeover::take_fds(&mut taken, FdKind::Hubble).into_iter().find(|(h, _)| {
                matches!(listen, fqdnd::hubble::ListenAddr::Tcp(want)
                    if h.addr.is_some_and(|a| a == *want || (want.port() == 0 && a.ip() == want.ip())))
            });
            let bound = match inherited {
                Some((_, fd)) => fqdnd::hubble::listen::Bound::from_tcp(std::net::TcpListener::from(fd))
                    .context("serving Hubble's Observer API on the handed-over listener")?,
                None => fqdnd::hubble::listen::bind_with(listen, taken.is_some())
                    .await
                    .context("starting Hubble's Observer API")?,
            };
            if let fqdnd::hubble::listen::Bound::Tcp(l, local) = &bound {
                let dup = l.as_fd().try_clone_to_owned().context("duplicating the Hubble listener")?;
                handed.push((HandedFd { kind: FdKind::Hubble, addr: Some(*local), transparent: false }, dup));
            }
            Some(fqdnd::hubble::serve_bound(bound, state).context("starting Hubble's Observer API")?)
        }
        None => None,
    };
    let _metrics = match config.metrics_addr {
        Some(addr) => {
            let inherited = takeover::take_fds(&mut taken, FdKind::Metrics)
                .into_iter()
                .find(|(h, _)| h.addr.is_some_and(|a| a == addr || (addr.port() == 0 && a.ip() == addr.ip())));
            let listener = match inherited {
                Some((_, fd)) => std::net::TcpListener::from(fd),
                None => std::net::TcpListener::bind(addr).with_context(|| format!("metrics server: binding {addr}"))?,
            };
            let dup = listener.try_clone().context("duplicating the metrics listener")?;
            let local = listener.local_addr().ok();
            handed.push((HandedFd { kind: FdKind::Metrics, addr: local, transparent: false }, dup.into()));
            Some(
                agent_metrics::serve_listener(
                    listener,
                    vec![Arc::new(registry), Arc::new(hubble_registry)],
                    readiness.clone(),
                )
                .context("starting the metrics server")?,
            )
        }
        None => None,
    };
    handed.push((
        HandedFd { kind: FdKind::StateLock, addr: None, transparent: false },
        state_lock.fd().try_clone_to_owned()?,
    ));
    if let Some(l) = &bpffs_lock {
        handed
            .push((HandedFd { kind: FdKind::BpffsLock, addr: None, transparent: false }, l.fd().try_clone_to_owned()?));
    }
    let handover = Arc::new(AgentHandover::new(handed, enforcer.clone(), shutdown.clone()));
    let _admin = admin::serve_with(
        &admin::socket_path(&config.state_dir),
        AdminState { hub: hub.clone(), cache: cache_view, readiness: readiness.clone(), started: SystemTime::now() },
        ServeOptions { handover: Some(handover.clone()), replace: taken.is_some() },
    )
    .context("starting the admin socket")?;

    // After the admin socket and /healthz are up: the Kubernetes source's first snapshot waits
    // for every watch to list (or for the saved state), and the API server may be away.
    let first = tokio::select! {
        s = source.next() => s,
        () = shutdown.cancelled() => return Ok(()),
    };
    parts.apply(first, true).await;
    let ready = summary::summary(&config, &current.load());
    if ready.warn {
        tracing::warn!("{}", ready.text);
    } else {
        tracing::info!("{}", ready.text);
    }
    readiness.set_policies_loaded(true);
    readiness.set_datapath_loaded(true);

    // Later snapshots, cache expiry and cache snapshots.
    {
        let (parts, shutdown) = (parts.clone(), shutdown.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let snap = tokio::select! {
                    s = source.next() => s,
                    () = shutdown.cancelled() => return,
                };
                parts.apply(snap, false).await;
            }
        }));
    }
    {
        let (enforcer, shutdown) = (enforcer.clone(), shutdown.clone());
        let snapshot_every = config.cache_snapshot_interval;
        tasks.push(tokio::spawn(async move {
            let mut gc = tokio::time::interval(GC_INTERVAL);
            let mut save = tokio::time::interval(snapshot_every);
            save.tick().await;
            loop {
                tokio::select! {
                    _ = gc.tick() => if let Err(e) = enforcer.gc().await {
                        tracing::warn!(error = %e, "datapath update after expiry failed");
                    },
                    _ = save.tick() => {
                        let e = enforcer.clone();
                        let _ = tokio::task::spawn_blocking(move || e.save()).await;
                    }
                    () = shutdown.cancelled() => return,
                }
            }
        }));
    }

    // Last, once every server is bound: scripts and tests wait for this file as "the agent is up".
    write_listeners(&config.state_dir, &listeners)?;
    tracing::info!(mode = ?config.proxy.mode, "fqdnd running");
    if let Some(t) = taken {
        // We serve the sockets (from the next line on): the old agent may stop reading.
        let enforcer = enforcer.clone();
        tasks.push(tokio::spawn(async move {
            let pid = t.pid;
            match tokio::task::spawn_blocking(move || t.finish()).await {
                Ok(Ok(_)) => {
                    tracing::info!(pid, "took over: the previous agent answered what it had in flight and stopped");
                    // What it learned after our restore is in the kernel, not in our cache.
                    if let Err(e) = enforcer.restore_into_datapath().await {
                        tracing::warn!(error = %e, "adopting entries the previous agent learned last");
                    }
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "the previous agent did not confirm its stop"),
                Err(e) => tracing::warn!(error = %e, "handover task"),
            }
        }));
    }
    bound.serve(shutdown.clone()).await?;
    for t in &tasks {
        t.abort();
    }
    if handover.handed_over() {
        // The successor owns the state directory now: its snapshot and listeners file stay.
        tracing::info!(stats = ?proxy.stats(), "fqdnd stopped: handed over to its successor");
        handover.mark_stopped();
        handover.wait_reported().await;
    } else {
        enforcer.save();
        let _ = std::fs::remove_file(config.state_dir.join(LISTENERS_FILE));
        tracing::info!(stats = ?proxy.stats(), "fqdnd stopped");
    }
    // Held to the end: the next agent may start once this one wrote its snapshot.
    drop((state_lock, bpffs_lock));
    Ok(())
}

const BPFFS_DIR: &str = "bpffs directory";

/// Lock the bpffs directory before the datapath opens it: it exists, or its nearest existing
/// ancestor is a bpffs (then it is made here). `None` when no bpffs is mounted yet (the datapath
/// mounts one; the directory is locked right after, before anything else runs).
fn lock_bpffs_early(dir: &Path) -> anyhow::Result<Option<DirLock>> {
    let mut probe = dir;
    while !probe.exists() {
        match probe.parent() {
            Some(p) => probe = p,
            None => return Ok(None),
        }
    }
    if probe != dir {
        if !ebpf_redirect::bpffs::is_bpffs(probe).unwrap_or(false) {
            return Ok(None);
        }
        std::fs::create_dir_all(dir).with_context(|| format!("creating the bpffs directory {}", dir.display()))?;
    }
    Ok(Some(DirLock::try_lock(dir, BPFFS_DIR)?))
}

/// `print-flows`: every flow on stdout, as `fqdnd observe -f` prints it. The follower's queue is
/// bounded like any other's: a stdout that does not keep up loses flows, never slows queries.
fn print_flows(hub: Arc<FlowHub>, how: PrintFlows) -> tokio::task::JoinHandle<()> {
    use std::io::Write as _;

    use fqdnd::flows::FlowResponse;
    use fqdnd::flows::format::{Color, OutputFormat, render};

    let format = if how == PrintFlows::Json { OutputFormat::Json } else { OutputFormat::Compact };
    let sub = hub.subscribe(&fqdnd::flows::FlowFilter::default(), Some(0), true);
    let Some(mut follower) = sub.follower else { return tokio::spawn(async {}) };
    tokio::spawn(async move {
        while let Some(flow) = follower.recv().await {
            let resp = FlowResponse { time: flow.time, node_name: hub.node_name().to_string(), flow: (*flow).clone() };
            let line = render(&resp, format, Color::Never);
            let mut out = std::io::stdout().lock();
            if out.write_all(line.as_bytes()).and_then(|()| out.flush()).is_err() {
                return;
            }
        }
    })
}

fn write_listeners(state_dir: &Path, listeners: &[ListenerInfo]) -> anyhow::Result<()> {
    let path = state_dir.join(LISTENERS_FILE);
    state_dir::write_private(&path, &serde_json::to_vec_pretty(listeners)?)
        .with_context(|| format!("writing {}", path.display()))
}
