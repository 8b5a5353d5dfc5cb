//! Hubble's gRPC Observer API and Hubble's metrics, so the tools people already run against
//! Cilium (the `hubble` CLI with `--server`, Hubble UI through a relay, Hubble's Python and Go
//! clients, Grafana dashboards on `hubble_*` metrics) work against fqdnd.
//!
//! ```text
//!  FlowHub ──ring + followers──► server.rs: observer.Observer on --hubble-listen
//!     │                            (unix:<state-dir>/hubble.sock by default; TCP when asked)
//!     └──every flow (FlowObserver)──► metrics.rs: hubble_dns_*, hubble_drop_total,
//!                                  hubble_flows_processed_total on /metrics (--hubble-metrics)
//!  proto/ (Hubble's names and numbers) ─build.rs─► proto.rs; convert.rs: model <-> protobuf;
//!  filter.rs: whitelist/blacklist; json.rs: protobuf JSON; client.rs: `fqdnd observe --server`
//! ```

pub mod client;
pub mod convert;
pub mod filter;
pub mod json;
pub mod listen;
pub mod metrics;
pub mod proto;
pub mod server;

pub use listen::{ListenAddr, ServerAddr};
pub use metrics::{HubbleMetrics, MetricsConfig, MetricsSetting};
pub use server::{HubbleServer, ObserverState, serve};
