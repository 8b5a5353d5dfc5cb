//! The generated Hubble API types (build.rs from `proto/`), one module per protobuf package, as
//! the generated code refers to other packages by `super::<package>`.

#![allow(clippy::all, clippy::pedantic, missing_docs, rust_2018_idioms)]

pub mod flow {
    tonic::include_proto!("flow");
}

pub mod relay {
    tonic::include_proto!("relay");
}

pub mod observer {
    tonic::include_proto!("observer");
}

/// The compiled descriptors of `proto/` (for the protobuf JSON mapping).
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/hubble_descriptor.bin"));
