//! The protobuf JSON mapping of Hubble's messages, as `hubble observe -o json` prints them: proto
//! field names, enums by name, defaults left out, 64-bit integers as strings. Driven by the
//! compiled descriptors (prost-reflect), not by hand-written serde, so it is an independent check
//! on `flows::model`'s JSON and prints whatever a server sent, fields fqdnd's model lacks included.

use std::sync::OnceLock;

use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, SerializeOptions};

use super::proto::FILE_DESCRIPTOR_SET;
use super::proto::observer::GetFlowsResponse;

fn pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    // The descriptor set is build.rs's own output for the same .proto files the code came from.
    POOL.get_or_init(|| DescriptorPool::decode(FILE_DESCRIPTOR_SET).expect("build.rs wrote a valid descriptor set"))
}

fn descriptor(name: &str) -> MessageDescriptor {
    pool().get_message_by_name(name).unwrap_or_else(|| panic!("{name} is in proto/"))
}

/// One message as a JSON line (no newline).
pub fn message_json(full_name: &str, encoded: &[u8]) -> Result<String, String> {
    let msg = DynamicMessage::decode(descriptor(full_name), encoded).map_err(|e| format!("{full_name}: {e}"))?;
    let options = SerializeOptions::new().use_proto_field_name(true).stringify_64_bit_integers(true);
    let mut out = Vec::with_capacity(encoded.len() * 2);
    let mut ser = serde_json::Serializer::new(&mut out);
    msg.serialize_with_options(&mut ser, &options).map_err(|e| format!("{full_name} as JSON: {e}"))?;
    String::from_utf8(out).map_err(|e| format!("{full_name} as JSON: {e}"))
}

/// A `GetFlowsResponse` as Hubble's JSON line.
pub fn response_json(r: &GetFlowsResponse) -> String {
    // A message prost just encoded always decodes against its own descriptor.
    message_json("observer.GetFlowsResponse", &r.encode_to_vec()).expect("a GetFlowsResponse we built")
}
