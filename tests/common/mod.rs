//! The root package's test harness: the workspace's shared testkit (tests/support), plus the
//! agent-in-namespaces topology, which drives the `fqdnd` binary and its admin client.

#![allow(dead_code, unused_imports)]

pub use fqdnd_testkit::{clients, dig, dns_server, fqdnd, kube, netns, paths, privileged, wait};
pub mod hubble;
pub mod topology;
