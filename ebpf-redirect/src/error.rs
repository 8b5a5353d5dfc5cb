//! The crate's one error type: everything that can go wrong loading, pinning, attaching and
//! routing. Map writes and reads fail with [`fqdn_cache::DatapathError`] (the error of the
//! `Datapath` trait), carried here as [`KernelError::Map`].

use std::path::PathBuf;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum KernelError {
    #[error(transparent)]
    Map(#[from] fqdn_cache::DatapathError),
    #[error("pinned map {path} does not match this build ({detail}); remove it to start afresh")]
    PinnedMapMismatch { path: PathBuf, detail: String },
    #[error(
        "pinned map {path} holds {entries} entries, more than the configured size {size} can take (the pin's size \
         is {pinned_size}); raise allow-map-size, or remove the pin to start afresh"
    )]
    PinnedMapTooBig { path: PathBuf, entries: usize, pinned_size: u32, size: u32 },
    #[error("the eBPF object has no {kind} named {name} (a build that does not match this loader)")]
    MissingFromObject { kind: &'static str, name: &'static str },
    #[error("{path} is not on a bpf filesystem and fqdnd mounts one only at {default} (mount -t bpf bpf <dir>)")]
    NotBpffs { path: PathBuf, default: &'static str },
    #[error("preparing bpffs directory {path}")]
    Bpffs {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("loading the eBPF object with maps pinned under {dir}")]
    LoadObject {
        dir: PathBuf,
        #[source]
        source: Box<aya::EbpfError>,
    },
    #[error("loading eBPF program {program}")]
    LoadProgram {
        program: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("interface {interface} not found")]
    InterfaceNotFound {
        interface: String,
        #[source]
        source: std::io::Error,
    },
    #[error("attaching {program} to {interface} (tcx {direction})")]
    Attach {
        program: &'static str,
        interface: String,
        direction: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("pinned link {path}")]
    Link {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("swapping this process's program onto pinned link {path}")]
    SwapLink {
        path: PathBuf,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("pinning link at {path}")]
    PinLink {
        path: PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("policy routing: {op}")]
    Route {
        op: String,
        #[source]
        source: std::io::Error,
    },
}
