//! The agent: wires policy loading, the endpoint inventory, the DNS proxy, the fqdn cache, the
//! datapath, flows, the admin socket and metrics, and runs them until shutdown.
//!
//! ```text
//!  PolicySource (polls mtimes) ─Snapshot─┬─► proxy: source IP -> endpoint + compiled DNS rules
//!                                        ├─► cache: toFQDNs selectors per endpoint ─Delta─► datapath
//!                                        ├─► datapath: endpoints attached, static rules, flags
//!                                        └─► flows: endpoint names
//!  Proxy ─Answer─► CacheHandle::learn_into ─Delta─► datapath ─ack─► answer released
//!        └─DnsFlow─► broadcast ─► FlowHub ◄─ drop events (kernel datapath)
//!  FlowHub + CacheHandle + Readiness ─► admin socket <state-dir>/fqdnd.sock (observe, cache list, status)
//!  FlowHub ─► Hubble's Observer API on --hubble-listen (gRPC); every flow ─► Hubble's metrics
//!  registries (fqdnd_*: proxy, agent, cache; hubble_*) ─► --metrics-addr (/metrics, /healthz, /readyz)
//! ```
//!
//! Start order: bind the proxy's sockets (the datapath needs their ports), restore the cache,
//! open the datapath, load policies and converge the datapath (keeping the kernel's learned
//! entries, adding the restored cache's), then serve. Shutdown: stop serving, let queries in flight finish, write the
//! cache snapshot. The kernel datapath stays pinned: enforcement continues while the agent is away.

pub mod cache;
pub mod datapath;
pub mod flows;
pub mod inventory;
pub mod policies;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use dns_proxy::metrics::ProxyMetrics;
use dns_proxy::{EndpointEntry, EndpointTable, ListenerInfo, Mode, Proxy, Sockets};
use fqdnd::admin::{self, AdminState};
use fqdnd::flows::{FlowHub, HubConfig};
use fqdnd::metrics::{self as agent_metrics, AgentMetrics, Readiness};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use cache::CacheHandle;
use datapath::AgentDatapath;
use flows::InventoryLookup;
use policies::{PolicySource, Snapshot};

/// The file in the state directory listing the bound listeners (JSON), written once they are
/// bound: lets scripts and tests that asked for port 0 find the port.
pub const LISTENERS_FILE: &str = "listeners.json";

/// How often expired cache entries are collected.
const GC_INTERVAL: Duration = Duration::from_secs(1);

/// Run until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.state_dir)
        .with_context(|| format!("creating the state directory {}", config.state_dir.display()))?;

    let mut registry = agent_metrics::new_registry();
    let agent_metrics = AgentMetrics::register(&mut registry);
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
            .context("opening the eBPF datapath (transparent mode needs root and a bpf filesystem)")?
    } else {
        AgentDatapath::memory()
    };
    let cache = Arc::new(CacheHandle::open(config.cache.clone(), &config.state_dir, datapath.as_dyn()));
    agent_metrics::register_cache_stats(&mut registry, cache.clone());
    let proxy = Proxy::with_metrics(config.proxy.clone(), cache.clone(), datapath.as_dyn(), proxy_metrics)?;
    let bound = proxy.adopt(sockets);
    for l in &listeners {
        tracing::info!(proto = %l.proto, addr = %l.addr, transparent = l.transparent, "DNS proxy listening");
    }
    write_listeners(&config.state_dir, &listeners)?;

    // Policies, then everything that follows them.
    let lookup = Arc::new(InventoryLookup::default());
    let mut source = PolicySource::new(config.policies.clone(), config.endpoints.clone());
    let first = source.poll().unwrap_or_default();
    apply_snapshot(&proxy, endpoint_table(&first), &cache, &datapath, &lookup, &first, true).await;
    readiness.set_policies_loaded(true);
    readiness.set_datapath_loaded(true);

    let mut hub = FlowHub::with_config(
        HubConfig {
            ring_capacity: config.flow_ring_size,
            follower_queue: config.flow_follower_queue,
            node_name: config.node_name.clone(),
        },
        agent_metrics.clone(),
    );
    if let Some(m) = &hubble_metrics {
        hub = hub.with_sink(m.clone());
    }
    let hub = Arc::new(hub);
    let mut tasks = Vec::new();
    // A ring of 0 keeps no flows: the proxy then builds none (no subscriber), saving their cost,
    // unless Hubble's metrics count them.
    if config.flow_ring_size > 0 || hubble_metrics.is_some() {
        tasks.push(tokio::spawn(hub.clone().pump_dns(proxy.subscribe(), lookup.clone())));
    }
    if let AgentDatapath::Kernel(dp) = &datapath {
        match dp.drop_events() {
            Ok(mut events) => {
                let (hub, lookup, cache) = (hub.clone(), lookup.clone(), cache.clone());
                tasks.push(tokio::spawn(async move {
                    loop {
                        match events.recv().await {
                            Ok(ev) => hub.ingest_drop(&ev, lookup.as_ref(), cache.as_ref()),
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
    let _admin = admin::serve(
        &admin::socket_path(&config.state_dir),
        AdminState { hub: hub.clone(), cache: cache.clone(), readiness: readiness.clone(), started: SystemTime::now() },
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
        Some(addr) => {
            let registries = vec![Arc::new(registry), Arc::new(hubble_registry)];
            let server = agent_metrics::serve_registries(addr, registries, readiness.clone())
                .await
                .context("starting the metrics server")?;
            Some(server)
        }
        None => None,
    };

    // Policy polling, cache expiry and snapshots.
    {
        let (proxy, cache, lookup, shutdown) = (proxy.clone(), cache.clone(), lookup.clone(), shutdown.clone());
        let interval = config.policy_poll_interval;
        let datapath = Arc::new(datapath);
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = shutdown.cancelled() => return,
                }
                // Loading parses YAML, resolves every endpoint and compiles its DNS rules: off the
                // async workers.
                let (returned, snap) = match tokio::task::spawn_blocking(move || {
                    let snap = source.poll().map(|s| {
                        let table = endpoint_table(&s);
                        (s, table)
                    });
                    (source, snap)
                })
                .await
                {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::error!(error = %e, "policy reload panicked; policies stay as they were");
                        return;
                    }
                };
                source = returned;
                if let Some((snap, table)) = snap {
                    apply_snapshot(&proxy, table, &cache, &datapath, &lookup, &snap, false).await;
                }
            }
        }));
    }
    {
        let (cache, shutdown) = (cache.clone(), shutdown.clone());
        let snapshot_every = config.cache_snapshot_interval;
        tasks.push(tokio::spawn(async move {
            let mut gc = tokio::time::interval(GC_INTERVAL);
            let mut save = tokio::time::interval(snapshot_every);
            save.tick().await;
            loop {
                tokio::select! {
                    _ = gc.tick() => cache.gc().await,
                    _ = save.tick() => {
                        let c = cache.clone();
                        let _ = tokio::task::spawn_blocking(move || c.save()).await;
                    }
                    () = shutdown.cancelled() => return,
                }
            }
        }));
    }

    tracing::info!(mode = ?config.proxy.mode, "fqdnd running");
    bound.serve(shutdown.clone()).await?;
    for t in &tasks {
        t.abort();
    }
    cache.save();
    let _ = std::fs::remove_file(config.state_dir.join(LISTENERS_FILE));
    tracing::info!(stats = ?proxy.stats(), "fqdnd stopped");
    Ok(())
}

/// The proxy's source-IP table for a snapshot (compiles every endpoint's DNS rules).
fn endpoint_table(snap: &Snapshot) -> EndpointTable {
    let mut table = EndpointTable::new();
    for e in &snap.endpoints {
        table.insert(&e.endpoint.ips, EndpointEntry::new(e.id, e.endpoint.key(), e.policy.clone()));
    }
    table
}

/// Hand a policy snapshot (and the proxy table built from it) to every part.
async fn apply_snapshot(
    proxy: &Proxy,
    table: EndpointTable,
    cache: &CacheHandle,
    datapath: &AgentDatapath,
    lookup: &InventoryLookup,
    snap: &Snapshot,
    first: bool,
) {
    tracing::debug!(generation = snap.generation, policies = ?snap.policies, "endpoint table updated");
    lookup.update(snap);
    // Selectors before the proxy sees the new rules, so an answer allowed by a new rule finds its
    // selector in the cache.
    cache.apply_snapshot(snap).await;
    datapath.sync(snap);
    if first {
        // What the restored cache allows goes (back) in; nothing learned is removed at start, but
        // what the cache does not know (learned after its last snapshot) is adopted so it expires.
        let orphans = cache.adopt_orphans();
        if orphans > 0 {
            tracing::info!(entries = orphans, "learned entries newer than the cache snapshot kept while in use");
        }
        let add = cache.all_allows();
        if !add.is_empty()
            && let Err(e) = datapath.as_dyn().apply(fqdn_cache::Delta { add, remove: Vec::new() }).await
        {
            tracing::warn!(error = %e, "restoring learned entries into the datapath");
        }
    }
    proxy.set_endpoints(table);
}

fn write_listeners(state_dir: &Path, listeners: &[ListenerInfo]) -> anyhow::Result<()> {
    let path = state_dir.join(LISTENERS_FILE);
    let tmp = state_dir.join(format!(".{LISTENERS_FILE}.tmp"));
    std::fs::write(&tmp, serde_json::to_vec_pretty(listeners)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
