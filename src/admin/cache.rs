//! `fqdnd cache list` over the enforcer: its rows, endpoints named from the snapshot in force.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use arc_swap::ArcSwap;
use fqdn_cache::{Enforcer, ListFilter, Source};
use policy_sync::{EndpointKey, Snapshot};

use super::protocol::{CacheEntryView, CacheSource};
use super::server::CacheLister;

pub struct EnforcerCache {
    pub enforcer: Arc<Enforcer>,
    pub snapshot: Arc<ArcSwap<Snapshot>>,
}

impl CacheLister for EnforcerCache {
    fn list(&self, endpoint: Option<&EndpointKey>) -> Vec<CacheEntryView> {
        let snap = self.snapshot.load();
        let id = match endpoint {
            Some(key) => match snap
                .endpoints
                .iter()
                .find(|e| e.endpoint.namespace == key.namespace && e.endpoint.name == key.name)
            {
                Some(e) => Some(e.id),
                None => return Vec::new(),
            },
            None => None,
        };
        let rows = self.enforcer.list(&ListFilter { endpoint: id, pattern: None });
        rows.into_iter()
            .map(|r| CacheEntryView {
                endpoint: snap
                    .by_id(r.endpoint)
                    .map_or_else(|| r.endpoint.to_string(), |e| e.endpoint.display_key().to_string()),
                source: match r.source {
                    Source::Lookup => CacheSource::Lookup,
                    Source::Connection => CacheSource::Connection,
                },
                fqdn: r.fqdn,
                ttl: r.ttl,
                expires: UNIX_EPOCH + Duration::from_secs(r.expires_unix.max(0) as u64),
                ips: r.ips,
            })
            .collect()
    }
}
