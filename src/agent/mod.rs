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
mod status;
mod summary;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use arc_swap::ArcSwap;
use dns_proxy::metrics::ProxyMetrics;
use dns_proxy::{FlowSink, ListenerInfo, Mode, Proxy, Sockets};
use fqdn_cache::Enforcer;
use fqdnd::admin::{self, AdminState};
use fqdnd::flows::{DnsFlows, FlowHub, HubConfig};
use fqdnd::metrics::{self as agent_metrics, AgentMetrics, Readiness};
use policy_sync::{FilesSource, Snapshot, Source};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, PrintFlows};
use datapath::AgentDatapath;

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
        self.datapath.sync(&snap);
        if first && let Err(e) = self.enforcer.restore_into_datapath().await {
            tracing::warn!(error = %e, "restoring learned entries into the datapath");
        }
        self.proxy.set_snapshot(snap);
    }
}

/// Run until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.state_dir)
        .with_context(|| format!("creating the state directory {}", config.state_dir.display()))?;

    let mut registry = agent_metrics::new_registry();
    let metrics = AgentMetrics::register(&mut registry);
    let proxy_metrics = ProxyMetrics::register(&mut registry);
    let mut hubble_registry = fqdnd::hubble::metrics::new_registry();
    let hubble_metrics = (!config.hubble_metrics.is_empty())
        .then(|| Arc::new(fqdnd::hubble::HubbleMetrics::register(&config.hubble_metrics, &mut hubble_registry)));
    let readiness = Arc::new(Readiness::default());

    // The proxy's sockets first: the transparent datapath redirects to their ports.
    let transparent = config.proxy.mode == Mode::Transparent;
    let sockets = Sockets::bind(&config.proxy)?;
    let listeners = sockets.listeners();
    let datapath = if transparent {
        AgentDatapath::kernel(config.bpffs_dir.clone(), &listeners)
            .context("opening the eBPF datapath (transparent mode needs root)")?
    } else {
        AgentDatapath::memory()
    };
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
        .then(|| Arc::new(DnsFlows { hub: hub.clone(), lookup: current.clone() }) as Arc<dyn FlowSink>);
    let proxy = Proxy::with_metrics(config.proxy.clone(), enforcer.clone(), flows, proxy_metrics)?;
    dns_proxy::metrics::register_stats(&mut registry, proxy.stats_handle());
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
    let mut source = FilesSource::new(config.policies.clone(), config.endpoints.clone(), config.policy_poll_interval);
    parts.apply(source.next().await, true).await;
    let ready = summary::summary(&config, &current.load());
    if ready.warn {
        tracing::warn!("{}", ready.text);
    } else {
        tracing::info!("{}", ready.text);
    }
    readiness.set_policies_loaded(true);
    readiness.set_datapath_loaded(true);

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
    let _admin = admin::serve(
        &admin::socket_path(&config.state_dir),
        AdminState { hub: hub.clone(), cache: cache_view, readiness: readiness.clone(), started: SystemTime::now() },
    )
    .context("starting the admin socket")?;
    let _hubble = match &config.hubble_listen {
        Some(listen) => Some(
            fqdnd::hubble::serve(listen, fqdnd::hubble::ObserverState { hub: hub.clone(), started: Instant::now() })
                .await
                .context("starting Hubble's Observer API")?,
        ),
        None => None,
    };
    let _metrics = match config.metrics_addr {
        Some(addr) => Some(
            agent_metrics::serve_registries(
                addr,
                vec![Arc::new(registry), Arc::new(hubble_registry)],
                readiness.clone(),
            )
            .await
            .context("starting the metrics server")?,
        ),
        None => None,
    };

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
    bound.serve(shutdown.clone()).await?;
    for t in &tasks {
        t.abort();
    }
    enforcer.save();
    let _ = std::fs::remove_file(config.state_dir.join(LISTENERS_FILE));
    tracing::info!(stats = ?proxy.stats(), "fqdnd stopped");
    Ok(())
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
    let tmp = state_dir.join(format!(".{LISTENERS_FILE}.tmp"));
    std::fs::write(&tmp, serde_json::to_vec_pretty(listeners)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
