//! Flow logs: DNS requests/responses from the proxy and policy drops from the datapath, shaped like
//! Hubble's flows, kept in a ring and streamed to `fqdnd observe` over the admin socket.

pub mod convert;
pub mod filter;
pub mod format;
pub mod hub;
pub mod model;

pub use convert::{EndpointInfo, EndpointLookup, NamesLookup, NoNames};
pub use filter::{FlowFilter, PodSelector};
pub use hub::{DnsFlows, FlowHub, FlowMatch, FlowObserver, Follower, HubConfig, HubStats, Subscription};
pub use model::{Flow, FlowKind, FlowResponse, Verdict};
