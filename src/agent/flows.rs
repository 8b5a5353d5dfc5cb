//! Flow plumbing: the proxy's DNS flows and the datapath's drops into the flow hub, naming
//! endpoints from the current inventory.

use std::net::IpAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use fqdn_cache::EndpointId;
use fqdnd::flows::{EndpointInfo, EndpointLookup, EndpointTable};

use super::policies::Snapshot;

/// The inventory as flows see it, swapped on every snapshot.
#[derive(Default)]
pub struct InventoryLookup {
    current: ArcSwap<EndpointTable>,
}

impl InventoryLookup {
    pub fn update(&self, snap: &Snapshot) {
        let table = EndpointTable::new(snap.endpoints.iter().map(|e| (e.id, &e.endpoint)));
        self.current.store(Arc::new(table));
    }
}

impl EndpointLookup for InventoryLookup {
    fn by_id(&self, id: EndpointId) -> Option<Arc<EndpointInfo>> {
        self.current.load().by_id(id)
    }

    fn by_ip(&self, ip: IpAddr) -> Option<Arc<EndpointInfo>> {
        self.current.load().by_ip(ip)
    }
}
