//! What the admin socket tells `fqdnd status`: the agent's config, the snapshot in force, the
//! datapath's attachments and counters, the cache's size and the last errors logged.

use std::sync::Arc;

use arc_swap::ArcSwap;
use dns_proxy::Mode;
use fqdn_cache::Enforcer;
use fqdnd::admin::{AgentDetails, CacheEntryView, CacheLister, DatapathStatus, EnforcerCache};
use policy_sync::{EndpointKey, Snapshot};

use super::datapath::AgentDatapath;
use crate::config::Config;

pub struct AgentView {
    pub cache: EnforcerCache,
    pub config: Config,
    pub enforcer: Arc<Enforcer>,
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    pub datapath: Option<Arc<ebpf_redirect::AyaDatapath>>,
}

impl AgentView {
    pub fn new(config: &Config, enforcer: Arc<Enforcer>, snapshot: Arc<ArcSwap<Snapshot>>, dp: &AgentDatapath) -> Self {
        AgentView {
            cache: EnforcerCache { enforcer: enforcer.clone(), snapshot: snapshot.clone() },
            config: config.clone(),
            enforcer,
            snapshot,
            datapath: match dp {
                AgentDatapath::Kernel(k) => Some(k.clone()),
                AgentDatapath::Memory(_) => None,
            },
        }
    }
}

impl CacheLister for AgentView {
    fn list(&self, endpoint: Option<&EndpointKey>) -> Vec<CacheEntryView> {
        self.cache.list(endpoint)
    }

    fn details(&self) -> Option<AgentDetails> {
        let c = &self.config;
        let snap = self.snapshot.load();
        let path = |p: &Option<std::path::PathBuf>| p.as_ref().map_or("none".to_string(), |p| p.display().to_string());
        let counters = self.enforcer.counters();
        let names =
            |id| snap.by_id(id).map_or_else(|| format!("endpoint {id}"), |e| e.endpoint.display_key().to_string());
        let datapath = self.datapath.as_ref().map(|dp| {
            let mut status = DatapathStatus {
                bpffs_dir: c.bpffs_dir.display().to_string(),
                attached: dp
                    .attached()
                    .into_iter()
                    .map(|(ifindex, id, name)| {
                        format!("{} ({})", name.unwrap_or_else(|| format!("ifindex {ifindex}")), names(id))
                    })
                    .collect(),
                ..DatapathStatus::default()
            };
            match dp.counters() {
                Ok(k) => {
                    status.counters = [
                        ("seen", k.seen),
                        ("allowed", k.allowed),
                        ("redirected", k.redirected),
                        ("reply", k.ct_replies),
                        ("dropped_denied", k.dropped_denied),
                        ("dropped_deny", k.dropped_deny),
                        ("dropped_no_proxy", k.dropped_no_proxy),
                        ("drop_events_lost", k.events_lost),
                    ]
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect();
                }
                Err(e) => status.counters_error = Some(e.to_string()),
            }
            status
        });
        Some(AgentDetails {
            mode: match c.proxy.mode {
                Mode::Plain => "plain".into(),
                Mode::Transparent => "transparent".into(),
            },
            listen: c.proxy.listen.iter().map(ToString::to_string).collect(),
            upstream: c.proxy.upstream.map(|u| u.to_string()),
            source: format!("files: policies {}, endpoints {}", path(&c.policies), path(&c.endpoints)),
            policies: snap.policies.iter().map(ToString::to_string).collect(),
            policies_rejected: snap.rejected,
            generation: snap.generation,
            endpoints: snap.endpoints.len(),
            policed: super::summary::policed_list(c.proxy.mode, &snap),
            datapath,
            cache_entries: counters.entries,
            cache_zombies: counters.zombies,
            last_errors: crate::logging::recent_errors(),
        })
    }
}
