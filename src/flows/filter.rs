//! `fqdnd observe` filters. They travel to the agent over the admin socket and run there, so a
//! follower's queue only ever holds flows it asked for.

use std::fmt;
use std::str::FromStr;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use fqdn_cache::pattern::NamePattern;

use super::model::{Endpoint, Flow, FlowKind, Layer4, Verdict};

/// Every set field must match (like one Hubble `FlowFilter`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowFilter {
    /// Flows from or to this pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodSelector>,
    /// Flows from or to an endpoint of this namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Verdict>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<FlowKind>,
    /// Flows at or after this time.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_time")]
    pub since: Option<SystemTime>,
    /// `hubble observe --protocol`: the flow's L4 protocol, or `dns` for DNS flows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
    /// Flows whose source is this pod (`hubble observe --from-pod`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_pod: Option<PodSelector>,
    /// Flows whose destination is this pod (`hubble observe --to-pod`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_pod: Option<PodSelector>,
    /// Flows about a name matching this pattern: the DNS query, or a name an end resolved to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fqdn: Option<FqdnFilter>,
}

impl FlowFilter {
    pub fn matches(&self, f: &Flow) -> bool {
        let ends = [f.source.as_ref(), f.destination.as_ref()];
        if let Some(pod) = &self.pod
            && !ends.iter().flatten().any(|e| pod.matches(e))
        {
            return false;
        }
        if let Some(ns) = &self.namespace
            && !ends.iter().flatten().any(|e| &e.namespace == ns)
        {
            return false;
        }
        if self.verdict.is_some_and(|v| v != f.verdict) {
            return false;
        }
        if self.kind.is_some_and(|k| k != f.kind()) {
            return false;
        }
        if self.since.is_some_and(|t| f.time < t) {
            return false;
        }
        if self.protocol.is_some_and(|p| !p.matches(f)) {
            return false;
        }
        if let Some(pod) = &self.from_pod
            && !f.source.as_ref().is_some_and(|e| pod.matches(e))
        {
            return false;
        }
        if let Some(pod) = &self.to_pod
            && !f.destination.as_ref().is_some_and(|e| pod.matches(e))
        {
            return false;
        }
        if let Some(fqdn) = &self.fqdn
            && !fqdn.matches(f)
        {
            return false;
        }
        true
    }
}

/// `--protocol` values fqdnd's flows can have.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    Dns,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Dns => "dns",
        }
    }

    fn matches(self, f: &Flow) -> bool {
        match self {
            Protocol::Tcp => matches!(f.l4, Some(Layer4::Tcp(_))),
            Protocol::Udp => matches!(f.l4, Some(Layer4::Udp(_))),
            Protocol::Dns => f.l7.as_ref().is_some_and(|l7| l7.dns.is_some()),
        }
    }
}

impl FromStr for Protocol {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Ok(Protocol::Tcp),
            "udp" => Ok(Protocol::Udp),
            "dns" => Ok(Protocol::Dns),
            _ => Err(format!("unknown protocol {s:?}: expected tcp, udp or dns")),
        }
    }
}

/// `--fqdn`: a `matchPattern` (`*.microsoft.com`) or name, compiled once. Travels as its text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FqdnFilter(NamePattern);

impl FqdnFilter {
    /// The pattern as written (normalized, with the root dot).
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    fn matches(&self, f: &Flow) -> bool {
        let query = f.l7.as_ref().and_then(|l7| l7.dns.as_ref()).map(|d| d.query.as_str());
        query.into_iter().chain(f.destination_names.iter().map(String::as_str)).any(|n| self.0.matches(n))
    }
}

impl FromStr for FqdnFilter {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        NamePattern::match_pattern(s).map(FqdnFilter).map_err(|e| format!("{s:?} is not a name pattern: {e}"))
    }
}

impl Serialize for FqdnFilter {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0.as_str())
    }
}

impl<'de> Deserialize<'de> for FqdnFilter {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// `NAMESPACE/NAME`, `NAMESPACE/` (every pod of the namespace) or `NAME` (any namespace). The name
/// is a prefix, as in `hubble observe --pod`, so `default/alpine` also matches `alpine-5f7c...`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodSelector {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default)]
    pub name_prefix: String,
}

impl PodSelector {
    fn matches(&self, e: &Endpoint) -> bool {
        if e.pod_name.is_empty() {
            return false;
        }
        self.namespace.as_ref().is_none_or(|ns| ns == &e.namespace) && e.pod_name.starts_with(&self.name_prefix)
    }
}

impl FromStr for PodSelector {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('/') {
            None if !s.is_empty() => Ok(PodSelector { namespace: None, name_prefix: s.to_string() }),
            Some((ns, name)) if !ns.is_empty() && !name.contains('/') => {
                Ok(PodSelector { namespace: Some(ns.to_string()), name_prefix: name.to_string() })
            }
            _ => Err(format!("{s:?} is not NAMESPACE/NAME, NAMESPACE/ or NAME")),
        }
    }
}

impl fmt::Display for PodSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{ns}/{}", self.name_prefix),
            None => f.write_str(&self.name_prefix),
        }
    }
}

/// `--since`: a duration back from `now` (`5m`, `1h30m`) or an RFC 3339 time.
pub fn parse_since(text: &str, now: SystemTime) -> Result<SystemTime, String> {
    if let Ok(d) = humantime::parse_duration(text) {
        return Ok(now.checked_sub(d).unwrap_or(SystemTime::UNIX_EPOCH));
    }
    humantime::parse_rfc3339_weak(text)
        .map_err(|_| format!("--since {text:?}: neither a duration (5m, 1h30m) nor a time (2024-11-27T10:00:00Z)"))
}

mod opt_time {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer};

    use crate::flows::model::proto_time;

    pub fn serialize<S: Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => proto_time::serialize(t, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SystemTime>, D::Error> {
        let text: Option<String> = Option::deserialize(d)?;
        text.map(|t| humantime::parse_rfc3339(&t).map_err(|e| serde::de::Error::custom(format!("since {t:?}: {e}"))))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::flows::convert::tests::{dns_request, dns_response, drop_event, table};
    use crate::flows::convert::{NoNames, dns_flow, drop_flow};

    fn filter(f: impl FnOnce(&mut FlowFilter)) -> FlowFilter {
        let mut x = FlowFilter::default();
        f(&mut x);
        x
    }

    #[test]
    fn filters_table() {
        let t = table();
        let req = dns_flow(&dns_request(), &t, "");
        let resp = dns_flow(&dns_response(), &t, "");
        let drop = drop_flow(&drop_event(), &t, &NoNames, "");
        let pod = |s: &str| Some(s.parse::<PodSelector>().unwrap());
        // (filter, [request, response, drop])
        let cases: Vec<(FlowFilter, [bool; 3])> = vec![
            (FlowFilter::default(), [true, true, true]),
            (filter(|f| f.pod = pod("default/alpine")), [true, true, true]),
            (filter(|f| f.pod = pod("default/alp")), [true, true, true]),
            (filter(|f| f.pod = pod("alpine")), [true, true, true]),
            (filter(|f| f.pod = pod("kube-system/kube-dns")), [true, true, false]),
            (filter(|f| f.pod = pod("kube-system/")), [true, true, false]),
            (filter(|f| f.pod = pod("other/alpine")), [false, false, false]),
            (filter(|f| f.namespace = Some("kube-system".into())), [true, true, false]),
            (filter(|f| f.namespace = Some("default".into())), [true, true, true]),
            (filter(|f| f.verdict = Some(Verdict::Dropped)), [false, false, true]),
            (filter(|f| f.verdict = Some(Verdict::Forwarded)), [true, true, false]),
            (filter(|f| f.verdict = Some(Verdict::Error)), [false, false, false]),
            (filter(|f| f.kind = Some(FlowKind::Dns)), [true, true, false]),
            (filter(|f| f.kind = Some(FlowKind::Drop)), [false, false, true]),
            (filter(|f| f.since = Some(drop.time)), [false, false, true]),
            (
                filter(|f| {
                    f.pod = pod("default/alpine");
                    f.kind = Some(FlowKind::Drop);
                }),
                [false, false, true],
            ),
        ];
        for (flt, want) in cases {
            let got = [flt.matches(&req), flt.matches(&resp), flt.matches(&drop)];
            assert_eq!(got, want, "filter {flt:?}");
        }
    }

    #[test]
    fn hubble_style_filters() {
        let t = table();
        let (req, resp, drop) = (
            dns_flow(&dns_request(), &t, ""),
            dns_flow(&dns_response(), &t, ""),
            drop_flow(&drop_event(), &t, &crate::flows::convert::tests::Names, ""),
        );
        let pod = |s: &str| Some(s.parse::<PodSelector>().unwrap());
        let cases = [
            (filter(|f| f.protocol = Some(Protocol::Udp)), [true, true, false]),
            (filter(|f| f.protocol = Some(Protocol::Tcp)), [false, false, true]),
            (filter(|f| f.protocol = Some(Protocol::Dns)), [true, true, false]),
            // The response's source is kube-dns: --from-pod is about the flow's source only.
            (filter(|f| f.from_pod = pod("default/alpine")), [true, false, true]),
            (filter(|f| f.to_pod = pod("default/alpine")), [false, true, false]),
            (filter(|f| f.to_pod = pod("kube-system/kube-dns")), [true, false, false]),
            (filter(|f| f.fqdn = Some("*.microsoft.com".parse().unwrap())), [true, true, true]),
            (filter(|f| f.fqdn = Some("www.microsoft.com".parse().unwrap())), [true, true, true]),
            (filter(|f| f.fqdn = Some("*.google.com".parse().unwrap())), [false, false, false]),
        ];
        for (flt, want) in cases {
            let got = [flt.matches(&req), flt.matches(&resp), flt.matches(&drop)];
            assert_eq!(got, want, "filter {flt:?}");
        }
        assert!("icmp".parse::<Protocol>().is_err());
        assert!("exa mple.com".parse::<FqdnFilter>().is_err());
        let f = filter(|f| f.fqdn = Some("*.microsoft.com".parse().unwrap()));
        let text = serde_json::to_string(&f).unwrap();
        assert_eq!(text, r#"{"fqdn":"*.microsoft.com."}"#);
        assert_eq!(serde_json::from_str::<FlowFilter>(&text).unwrap(), f);
    }

    #[test]
    fn pod_selector_parse() {
        for bad in ["", "/x", "a/b/c"] {
            assert!(bad.parse::<PodSelector>().is_err(), "{bad:?}");
        }
        let p: PodSelector = "default/".parse().unwrap();
        assert_eq!((p.namespace.as_deref(), p.name_prefix.as_str()), (Some("default"), ""));
        assert_eq!(p.to_string(), "default/");
    }

    #[test]
    fn since_parse() {
        let now = UNIX_EPOCH + Duration::from_secs(10_000);
        assert_eq!(parse_since("5m", now).unwrap(), UNIX_EPOCH + Duration::from_secs(9_700));
        assert_eq!(parse_since("1970-01-01T00:00:10Z", now).unwrap(), UNIX_EPOCH + Duration::from_secs(10));
        assert!(parse_since("yesterday", now).unwrap_err().contains("yesterday"));
    }

    #[test]
    fn filter_round_trips_as_json() {
        let f = FlowFilter {
            pod: Some("default/alpine".parse().unwrap()),
            namespace: None,
            verdict: Some(Verdict::Dropped),
            kind: Some(FlowKind::Drop),
            since: Some(UNIX_EPOCH + Duration::from_millis(1500)),
            ..FlowFilter::default()
        };
        let text = serde_json::to_string(&f).unwrap();
        assert_eq!(serde_json::from_str::<FlowFilter>(&text).unwrap(), f);
        assert!(serde_json::from_str::<FlowFilter>(r#"{"podd":{}}"#).unwrap_err().to_string().contains("podd"));
    }
}
