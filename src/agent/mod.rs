//! The agent: wires policy loading, the endpoint inventory, the DNS proxy, the learner (the
//! cache) and the datapath, and runs them until shutdown.
//!
//! ```text
//!  PolicySource (poll mtimes) ──Snapshot──► watch channel ──► proxy endpoint table (source IP -> policy)
//!                                                   └──────► other components (cache selectors, datapath attach)
//!  Proxy ──Answer──► Components.learner ──Delta──► Components.datapath ──ack──► answer released
//!        └─DnsFlow─► broadcast (Proxy::subscribe) ──► flow ring / observe
//! ```
//!
//! [`Components`] is the plug-in point: plain mode uses the in-memory datapath (no kernel
//! enforcement, DNS rules only); the cache and the eBPF datapath replace the defaults there.

pub mod inventory;
pub mod policies;

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use dns_proxy::{EndpointEntry, EndpointTable, Learner, ListenerInfo, Mode, NoLearner, Proxy};
use ebpf_redirect::{Datapath, MemoryDatapath};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use policies::{PolicySource, Snapshot};

/// The parts the proxy hands answers to.
pub struct Components {
    pub learner: Arc<dyn Learner>,
    pub datapath: Arc<dyn Datapath>,
}

impl Components {
    /// What this build provides for `config`.
    pub fn for_config(config: &Config) -> Self {
        if config.proxy.mode == Mode::Transparent {
            tracing::warn!("transparent mode without the eBPF datapath: learned IPs are not enforced in the kernel");
        }
        Components { learner: Arc::new(NoLearner), datapath: Arc::new(MemoryDatapath::new()) }
    }
}

/// The file in the state directory listing the bound listeners (JSON), written once they are bound:
/// lets scripts and tests that asked for port 0 find the port.
pub const LISTENERS_FILE: &str = "listeners.json";

/// Run until `shutdown` is cancelled.
pub async fn run(config: Config, components: Components, shutdown: CancellationToken) -> anyhow::Result<()> {
    let proxy = Proxy::new(config.proxy.clone(), components.learner, components.datapath)?;
    let bound = proxy.bind()?;
    let listeners = bound.listeners();
    for l in &listeners {
        tracing::info!(proto = %l.proto, addr = %l.addr, transparent = l.transparent, "DNS proxy listening");
    }
    std::fs::create_dir_all(&config.state_dir)
        .with_context(|| format!("creating the state directory {}", config.state_dir.display()))?;
    write_listeners(&config.state_dir, &listeners)?;

    let (snap_tx, snap_rx) = watch::channel(Arc::new(Snapshot::default()));
    let mut source = PolicySource::new(config.policies.clone(), config.endpoints.clone());
    if let Some(first) = source.poll() {
        apply(&proxy, &first);
        snap_tx.send_replace(Arc::new(first));
    }
    let poller = {
        let (proxy, shutdown) = (proxy.clone(), shutdown.clone());
        let interval = config.policy_poll_interval;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = shutdown.cancelled() => return,
                }
                // Loading parses YAML and resolves every endpoint: off the async workers.
                let (returned, snap) = match tokio::task::spawn_blocking(move || {
                    let snap = source.poll();
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
                if let Some(snap) = snap {
                    apply(&proxy, &snap);
                    snap_tx.send_replace(Arc::new(snap));
                }
            }
        })
    };
    drop(snap_rx);

    tracing::info!(mode = ?config.proxy.mode, "fqdnd running");
    bound.serve(shutdown.clone()).await?;
    poller.abort();
    let _ = std::fs::remove_file(config.state_dir.join(LISTENERS_FILE));
    tracing::info!(stats = ?proxy.stats(), "fqdnd stopped");
    Ok(())
}

/// Give the proxy the source-IP table of a snapshot.
fn apply(proxy: &Proxy, snap: &Snapshot) {
    let mut table = EndpointTable::new();
    for e in &snap.endpoints {
        table.insert(&e.endpoint.ips, EndpointEntry::new(e.id, e.endpoint.key(), e.policy.clone()));
    }
    tracing::debug!(generation = snap.generation, policies = ?snap.policies, "endpoint table updated");
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
