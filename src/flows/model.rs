//! The flow model, shaped like Hubble's `flow.Flow` as `hubble observe -o json` prints it: proto
//! field names (`source_port`, `IP`, `Type`, `Summary`), enums by name, zero values and empty lists
//! left out (zero enums too), 64-bit integers as strings and timestamps in RFC 3339 (the proto3
//! JSON mapping). Field order follows the proto field numbers, so our lines diff cleanly against
//! Hubble's; `hubble::convert` tests that this text is the protobuf JSON of the gRPC message.

use std::fmt;
use std::str::FromStr;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// Cilium's monitor message type of L7 access-log records (DNS flows).
pub const EVENT_TYPE_ACCESS_LOG: i32 = 129;
/// Cilium's monitor message type of datapath drops; the sub type is the drop reason.
pub const EVENT_TYPE_DROP: i32 = 1;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Flow {
    #[serde(with = "proto_time")]
    pub time: SystemTime,
    #[serde(default, skip_serializing_if = "Verdict::is_unknown")]
    pub verdict: Verdict,
    /// Deprecated in Hubble in favour of `drop_reason_desc`, still filled by it for drops.
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub drop_reason: u32,
    #[serde(rename = "IP", default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<Ip>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub l4: Option<Layer4>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Endpoint>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<Endpoint>,
    #[serde(rename = "Type", default, skip_serializing_if = "FlowType::is_unknown")]
    pub flow_type: FlowType,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node_name: String,
    /// Names the querying endpoint resolved to the destination IP (drops to learned IPs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub destination_names: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub l7: Option<Layer7>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_type: Option<CiliumEventType>,
    #[serde(default, skip_serializing_if = "TrafficDirection::is_unknown")]
    pub traffic_direction: TrafficDirection,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drop_reason_desc: Option<DropReason>,
    /// Absent when the direction is unknown (Hubble prints `<>` then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_reply: Option<bool>,
    #[serde(rename = "Summary", default, skip_serializing_if = "String::is_empty")]
    pub summary: String,
}

impl Flow {
    /// What `--type` selects on.
    pub fn kind(&self) -> FlowKind {
        match (&self.l7, self.verdict) {
            (Some(l7), _) if l7.dns.is_some() => FlowKind::Dns,
            (_, Verdict::Dropped) => FlowKind::Drop,
            _ => FlowKind::Other,
        }
    }
}

/// `hubble observe --type` values fqdnd produces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlowKind {
    Dns,
    Drop,
    Other,
}

impl FromStr for FlowKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "dns" | "l7" => Ok(FlowKind::Dns),
            "drop" => Ok(FlowKind::Drop),
            _ => Err(format!("unknown flow type {s:?}: expected dns or drop")),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Verdict {
    #[default]
    #[serde(rename = "VERDICT_UNKNOWN")]
    Unknown,
    #[serde(rename = "FORWARDED")]
    Forwarded,
    #[serde(rename = "DROPPED")]
    Dropped,
    #[serde(rename = "ERROR")]
    Error,
}

impl Verdict {
    fn is_unknown(&self) -> bool {
        *self == Verdict::Unknown
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Unknown => "VERDICT_UNKNOWN",
            Verdict::Forwarded => "FORWARDED",
            Verdict::Dropped => "DROPPED",
            Verdict::Error => "ERROR",
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Verdict {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_uppercase().as_str() {
            "FORWARDED" => Ok(Verdict::Forwarded),
            "DROPPED" => Ok(Verdict::Dropped),
            "ERROR" => Ok(Verdict::Error),
            _ => Err(format!("unknown verdict {s:?}: expected FORWARDED, DROPPED or ERROR")),
        }
    }
}

impl From<dns_proxy::Verdict> for Verdict {
    fn from(v: dns_proxy::Verdict) -> Self {
        match v {
            dns_proxy::Verdict::Forwarded => Verdict::Forwarded,
            dns_proxy::Verdict::Dropped => Verdict::Dropped,
            dns_proxy::Verdict::Error => Verdict::Error,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum FlowType {
    #[default]
    #[serde(rename = "UNKNOWN_TYPE")]
    Unknown,
    #[serde(rename = "L3_L4")]
    L3L4,
    L7,
}

impl FlowType {
    fn is_unknown(&self) -> bool {
        *self == FlowType::Unknown
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ip {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub source: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub destination: String,
    #[serde(rename = "ipVersion", default, skip_serializing_if = "IpVersion::is_not_used")]
    pub ip_version: IpVersion,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum IpVersion {
    #[default]
    #[serde(rename = "IP_NOT_USED")]
    NotUsed,
    IPv4,
    IPv6,
}

impl IpVersion {
    fn is_not_used(&self) -> bool {
        *self == IpVersion::NotUsed
    }
}

/// Hubble's `oneof protocol`: `{"TCP": {...}}` or `{"UDP": {...}}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Layer4 {
    #[serde(rename = "TCP")]
    Tcp(Tcp),
    #[serde(rename = "UDP")]
    Udp(Udp),
}

impl Layer4 {
    pub fn ports(&self) -> (u32, u32) {
        match self {
            Layer4::Tcp(t) => (t.source_port, t.destination_port),
            Layer4::Udp(u) => (u.source_port, u.destination_port),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tcp {
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub source_port: u32,
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub destination_port: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flags: Option<TcpFlags>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Udp {
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub source_port: u32,
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub destination_port: u32,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[allow(clippy::upper_case_acronyms)]
pub struct TcpFlags {
    #[serde(rename = "FIN", default, skip_serializing_if = "is_false")]
    pub fin: bool,
    #[serde(rename = "SYN", default, skip_serializing_if = "is_false")]
    pub syn: bool,
    #[serde(rename = "RST", default, skip_serializing_if = "is_false")]
    pub rst: bool,
    #[serde(rename = "PSH", default, skip_serializing_if = "is_false")]
    pub psh: bool,
    #[serde(rename = "ACK", default, skip_serializing_if = "is_false")]
    pub ack: bool,
    #[serde(rename = "URG", default, skip_serializing_if = "is_false")]
    pub urg: bool,
    #[serde(rename = "ECE", default, skip_serializing_if = "is_false")]
    pub ece: bool,
    #[serde(rename = "CWR", default, skip_serializing_if = "is_false")]
    pub cwr: bool,
}

impl TcpFlags {
    /// From the flags byte of a TCP header (FIN is bit 0 ... CWR bit 7).
    pub fn from_byte(b: u8) -> Self {
        TcpFlags {
            fin: b & 0x01 != 0,
            syn: b & 0x02 != 0,
            rst: b & 0x04 != 0,
            psh: b & 0x08 != 0,
            ack: b & 0x10 != 0,
            urg: b & 0x20 != 0,
            ece: b & 0x40 != 0,
            cwr: b & 0x80 != 0,
        }
    }

    /// Hubble's summary order: `SYN, ACK, RST, FIN, PSH, URG, ECE, CWR`.
    pub fn names(&self) -> Vec<&'static str> {
        [
            (self.syn, "SYN"),
            (self.ack, "ACK"),
            (self.rst, "RST"),
            (self.fin, "FIN"),
            (self.psh, "PSH"),
            (self.urg, "URG"),
            (self.ece, "ECE"),
            (self.cwr, "CWR"),
        ]
        .into_iter()
        .filter_map(|(set, name)| set.then_some(name))
        .collect()
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// The node-local endpoint id (fqdnd's `EndpointId`), like Cilium's endpoint ID.
    #[serde(rename = "ID", default, skip_serializing_if = "is_zero_u32")]
    pub id: u32,
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub identity: u32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// `k8s:key=value`, sorted, as Hubble prints them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pod_name: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layer7 {
    #[serde(rename = "type", default, skip_serializing_if = "L7FlowType::is_unknown")]
    pub l7_type: L7FlowType,
    #[serde(default, skip_serializing_if = "is_zero_u64", with = "proto_u64")]
    pub latency_ns: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<Dns>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum L7FlowType {
    #[default]
    #[serde(rename = "UNKNOWN_L7_TYPE")]
    Unknown,
    #[serde(rename = "REQUEST")]
    Request,
    #[serde(rename = "RESPONSE")]
    Response,
}

impl L7FlowType {
    fn is_unknown(&self) -> bool {
        *self == L7FlowType::Unknown
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub query: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<String>,
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub ttl: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cnames: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub observation_source: String,
    /// The numeric DNS rcode (0 NOERROR, 3 NXDOMAIN, 5 REFUSED, ...).
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub rcode: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub qtypes: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rrtypes: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CiliumEventType {
    #[serde(rename = "type", default, skip_serializing_if = "is_zero_i32")]
    pub event_type: i32,
    #[serde(default, skip_serializing_if = "is_zero_i32")]
    pub sub_type: i32,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum TrafficDirection {
    #[default]
    #[serde(rename = "TRAFFIC_DIRECTION_UNKNOWN")]
    Unknown,
    #[serde(rename = "INGRESS")]
    Ingress,
    #[serde(rename = "EGRESS")]
    Egress,
}

impl TrafficDirection {
    fn is_unknown(&self) -> bool {
        *self == TrafficDirection::Unknown
    }
}

/// The drop reasons fqdnd's datapath produces, with Cilium's numbers and names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DropReason {
    #[serde(rename = "POLICY_DENIED")]
    PolicyDenied,
    #[serde(rename = "POLICY_DENY")]
    PolicyDeny,
}

impl DropReason {
    pub fn code(self) -> u32 {
        match self {
            DropReason::PolicyDenied => 133,
            DropReason::PolicyDeny => 181,
        }
    }

    /// Cilium's `api.DropReason` text, which Hubble prints as the flow type of a drop.
    pub fn description(self) -> &'static str {
        match self {
            DropReason::PolicyDenied => "Policy denied",
            DropReason::PolicyDeny => "Policy denied by denylist",
        }
    }

    pub fn from_code(code: u32) -> Option<Self> {
        match code {
            133 => Some(DropReason::PolicyDenied),
            181 => Some(DropReason::PolicyDeny),
            _ => None,
        }
    }
}

impl From<ebpf_redirect::DropReason> for DropReason {
    fn from(r: ebpf_redirect::DropReason) -> Self {
        match r {
            ebpf_redirect::DropReason::PolicyDenied => DropReason::PolicyDenied,
            ebpf_redirect::DropReason::PolicyDeny => DropReason::PolicyDeny,
        }
    }
}

/// Hubble's `GetFlowsResponse` with a flow: what `hubble observe -o json|jsonpb` prints per line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FlowResponse {
    pub flow: Flow,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node_name: String,
    #[serde(with = "proto_time")]
    pub time: SystemTime,
}

fn is_zero_u32(v: &u32) -> bool {
    *v == 0
}

fn is_zero_i32(v: &i32) -> bool {
    *v == 0
}

fn is_zero_u64(v: &u64) -> bool {
    *v == 0
}

fn is_false(v: &bool) -> bool {
    !*v
}

/// proto3 JSON timestamps: RFC 3339 in UTC with 0, 3, 6 or 9 fractional digits.
pub mod proto_time {
    use std::time::{SystemTime, UNIX_EPOCH};

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn format(t: SystemTime) -> String {
        let nanos = t.duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        if nanos == 0 {
            humantime::format_rfc3339_seconds(t).to_string()
        } else if nanos.is_multiple_of(1_000_000) {
            humantime::format_rfc3339_millis(t).to_string()
        } else if nanos.is_multiple_of(1_000) {
            humantime::format_rfc3339_micros(t).to_string()
        } else {
            humantime::format_rfc3339_nanos(t).to_string()
        }
    }

    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(*t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_rfc3339(&text).map_err(|e| serde::de::Error::custom(format!("timestamp {text:?}: {e}")))
    }
}

/// proto3 JSON maps 64-bit integers to strings; accept numbers too when reading.
mod proto_u64 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&v.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            Num(u64),
            Text(String),
        }
        match Either::deserialize(d)? {
            Either::Num(n) => Ok(n),
            Either::Text(t) => t.parse().map_err(|e| serde::de::Error::custom(format!("uint64 {t:?}: {e}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    #[test]
    fn proto_time_fraction_digits() {
        for (nanos, want) in [
            (0, "1970-01-01T00:20:34Z"),
            (567_000_000, "1970-01-01T00:20:34.567Z"),
            (567_800_000, "1970-01-01T00:20:34.567800Z"),
            (567_800_001, "1970-01-01T00:20:34.567800001Z"),
        ] {
            let t = UNIX_EPOCH + Duration::new(1234, nanos);
            assert_eq!(proto_time::format(t), want);
            assert_eq!(humantime::parse_rfc3339(want).unwrap(), t);
        }
    }

    #[test]
    fn tcp_flags_from_byte_and_order() {
        for (byte, want) in [
            (0x02u8, vec!["SYN"]),
            (0x12, vec!["SYN", "ACK"]),
            (0x11, vec!["ACK", "FIN"]),
            (0x18, vec!["ACK", "PSH"]),
            (0x04, vec!["RST"]),
            (0x00, vec![]),
        ] {
            assert_eq!(TcpFlags::from_byte(byte).names(), want, "byte {byte:#x}");
        }
    }

    #[test]
    fn verdict_and_kind_parse_case_insensitively() {
        assert_eq!("dropped".parse::<Verdict>().unwrap(), Verdict::Dropped);
        assert_eq!("FORWARDED".parse::<Verdict>().unwrap(), Verdict::Forwarded);
        assert!("ALLOWED".parse::<Verdict>().unwrap_err().contains("ALLOWED"));
        assert_eq!("DNS".parse::<FlowKind>().unwrap(), FlowKind::Dns);
        assert!("trace".parse::<FlowKind>().is_err());
    }

    #[test]
    fn latency_reads_string_or_number() {
        let a: Layer7 = serde_json::from_str(r#"{"type":"RESPONSE","latency_ns":"42"}"#).unwrap();
        let b: Layer7 = serde_json::from_str(r#"{"type":"RESPONSE","latency_ns":42}"#).unwrap();
        assert_eq!(a.latency_ns, 42);
        assert_eq!(a, b);
    }
}
