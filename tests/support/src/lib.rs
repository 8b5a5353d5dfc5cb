//! fqdnd's shared test harness, one place for every test crate of the workspace: network
//! namespaces and sockets inside them ([`netns`]), real DNS servers ([`dns_server`]: NSD, Knot)
//! and clients ([`dig`], [`clients`]: musl and glibc getaddrinfo), the agent as a process
//! ([`fqdnd`]), a steady query load ([`load`]), a real kube-apiserver with etcd ([`kube`]), the privileged-test gate
//! ([`privileged`]), waiting for a condition ([`wait`]) and the workspace's fixtures ([`paths`]).

pub mod clients;
pub mod dig;
pub mod dns_server;
pub mod fqdnd;
pub mod kube;
pub mod load;
pub mod netns;
pub mod paths;
pub mod privileged;
pub mod wait;
