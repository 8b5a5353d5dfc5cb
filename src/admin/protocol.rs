//! Messages of the admin socket. Flow lines are exactly Hubble's `GetFlowsResponse` JSON, so
//! `fqdnd observe -o json` can pass them through and Hubble tooling can read the socket's stream.

use std::net::IpAddr;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::flows::model::proto_time;
use crate::flows::{FlowFilter, FlowResponse};

/// The one request line of a connection.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Matching flows from the ring (the last `last` of them, or all), then with `follow` every new one.
    Flows {
        #[serde(default)]
        filter: FlowFilter,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        last: Option<usize>,
        #[serde(default)]
        follow: bool,
    },
    /// Learned names; `endpoint` is `NAMESPACE/NAME`, `pattern` a `matchPattern` on the name.
    CacheList {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        endpoint: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pattern: Option<String>,
    },
    Status,
    /// The restart handover (see [`super::handover`]): the running agent's descriptors.
    Handover,
    /// Second line of a handover connection: the new agent serves; the old one stops.
    HandoverReady,
}

/// One response line. Untagged: each shape has its own key, as in Hubble's `GetFlowsResponse`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Response {
    Flow(Box<FlowResponse>),
    LostEvents { lost_events: LostEvent },
    CacheEntries { cache_entries: Vec<CacheEntryView> },
    Status { status: AgentStatus },
    Handover { handover: super::handover::HandoverInfo },
    HandoverDone { handover_done: super::handover::HandoverDone },
    Error { error: String },
}

/// Hubble's `LostEvent`: flows this client did not get because it read too slowly.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LostEvent {
    /// Always `OBSERVER_EVENTS_QUEUE` here: the per-client queue overflowed.
    pub source: String,
    /// A string, as proto3 JSON writes 64-bit integers.
    pub num_events_lost: String,
}

impl LostEvent {
    pub fn queue_overflow(n: u64) -> Self {
        LostEvent { source: "OBSERVER_EVENTS_QUEUE".to_string(), num_events_lost: n.to_string() }
    }

    pub fn count(&self) -> u64 {
        self.num_events_lost.parse().unwrap_or(0)
    }
}

/// Where a cache entry came from: a DNS answer, or a connection that keeps an expired entry alive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheSource {
    Lookup,
    Connection,
}

impl CacheSource {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheSource::Lookup => "lookup",
            CacheSource::Connection => "connection",
        }
    }
}

/// One row of `fqdnd cache list`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheEntryView {
    /// `namespace/name`.
    pub endpoint: String,
    pub source: CacheSource,
    /// Normalized (lower case, trailing dot).
    pub fqdn: String,
    /// The TTL the entry was learned with, in seconds (after `--min-ttl`).
    pub ttl: u32,
    #[serde(with = "proto_time")]
    pub expires: SystemTime,
    pub ips: Vec<IpAddr>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentStatus {
    pub version: String,
    /// The git commit the agent was built from.
    #[serde(default)]
    pub commit: String,
    pub ready: bool,
    /// What keeps the agent from being ready (`policies`, `datapath`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_loaded: Vec<String>,
    pub uptime_seconds: u64,
    pub flows_buffered: usize,
    pub flows_capacity: usize,
    pub followers: usize,
    /// What `fqdnd status` shows beyond readiness (absent from agents that cannot tell).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<Box<AgentDetails>>,
}

/// The agent as `fqdnd status` describes it, like `cilium status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentDetails {
    /// `plain` or `transparent`.
    pub mode: String,
    pub listen: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    /// Where policies and endpoints come from (`files: policies DIR, endpoints FILE`).
    pub source: String,
    /// Policies in force, `namespace/name`.
    pub policies: Vec<String>,
    /// Policy objects the last load rejected.
    pub policies_rejected: usize,
    /// Snapshots loaded since start.
    pub generation: u64,
    pub endpoints: usize,
    /// The endpoints policed in this mode: `namespace/name (how they are found)`.
    pub policed: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datapath: Option<DatapathStatus>,
    pub cache_entries: u64,
    pub cache_zombies: u64,
    /// The last warnings and errors the agent logged, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub last_errors: Vec<String>,
}

/// The kernel datapath (transparent mode).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatapathStatus {
    pub bpffs_dir: String,
    /// `interface (namespace/name)` of every attached endpoint.
    pub attached: Vec<String>,
    /// The programs' packet counters by name (`seen`, `allowed`, `dropped_denied`, ...).
    pub counters: std::collections::BTreeMap<String, u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counters_error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_from_hand_written_lines() {
        for (line, want) in [
            (r#"{"op":"status"}"#, Request::Status),
            (
                r#"{"op":"flows","follow":true}"#,
                Request::Flows { filter: FlowFilter::default(), last: None, follow: true },
            ),
            (
                r#"{"op":"flows","filter":{"verdict":"DROPPED"},"last":3}"#,
                Request::Flows {
                    filter: FlowFilter { verdict: Some(crate::flows::Verdict::Dropped), ..Default::default() },
                    last: Some(3),
                    follow: false,
                },
            ),
            (
                r#"{"op":"cache_list","endpoint":"default/alpine"}"#,
                Request::CacheList { endpoint: Some("default/alpine".into()), pattern: None },
            ),
        ] {
            assert_eq!(serde_json::from_str::<Request>(line).unwrap(), want, "{line}");
        }
        let err = serde_json::from_str::<Request>(r#"{"op":"reboot"}"#).unwrap_err().to_string();
        assert!(err.contains("reboot"), "{err}");
    }

    #[test]
    fn responses_round_trip_to_the_right_shape() {
        let lines = [
            Response::LostEvents { lost_events: LostEvent::queue_overflow(12) },
            Response::Error { error: "bad".into() },
            Response::CacheEntries {
                cache_entries: vec![CacheEntryView {
                    endpoint: "default/alpine".into(),
                    source: CacheSource::Connection,
                    fqdn: "a.example.".into(),
                    ttl: 30,
                    expires: SystemTime::UNIX_EPOCH,
                    ips: vec!["192.0.2.1".parse().unwrap()],
                }],
            },
        ];
        for r in lines {
            let text = serde_json::to_string(&r).unwrap();
            assert_eq!(serde_json::from_str::<Response>(&text).unwrap(), r, "{text}");
        }
        let text = serde_json::to_string(&Response::LostEvents { lost_events: LostEvent::queue_overflow(12) }).unwrap();
        assert_eq!(text, r#"{"lost_events":{"source":"OBSERVER_EVENTS_QUEUE","num_events_lost":"12"}}"#);
    }
}
