//! The parts of the `fqdnd` binary that other parts mount and tests drive in-process: flow logs,
//! the admin socket and metrics. The CLI and the agent wiring live in the binary (src/main.rs).

pub mod admin;
pub mod flows;
pub mod hubble;
pub mod kube_metrics;
pub mod metrics;
pub mod pod_interface;
pub mod suggest;
pub mod version;
