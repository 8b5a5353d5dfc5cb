//! The client side of the Observer API, for `fqdnd observe --server`: connecting over a Unix socket
//! or TCP, and `fqdnd observe`'s filters as a Hubble `GetFlowsRequest` (built the way the `hubble`
//! CLI builds its own, so the same request works against a Cilium node or Hubble Relay).

use std::path::PathBuf;

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

use super::convert::timestamp;
use super::listen::ServerAddr;
use super::proto::flow::{EventTypeFilter, FlowFilter as HubbleFilter, Verdict as HubbleVerdict};
use super::proto::observer::GetFlowsRequest;
use super::proto::observer::observer_client::ObserverClient;
use crate::flows::model::{EVENT_TYPE_ACCESS_LOG, EVENT_TYPE_DROP};
use crate::flows::{FlowFilter, FlowKind, PodSelector};

#[derive(Debug, thiserror::Error)]
#[error("no Hubble Observer API at {addr}")]
pub struct ConnectError {
    pub addr: String,
    #[source]
    pub source: tonic::transport::Error,
}

/// Connect to the Observer API at `addr`.
pub async fn connect(addr: &ServerAddr) -> Result<ObserverClient<Channel>, ConnectError> {
    let err = |source| ConnectError { addr: addr.to_string(), source };
    let channel = match addr {
        ServerAddr::Tcp(hostport) => Endpoint::from_shared(format!("http://{hostport}")).map_err(err)?.connect().await,
        ServerAddr::Unix(path) => {
            let path: PathBuf = path.clone();
            // The URI is required by the API but unused: every connection goes to the socket.
            Endpoint::from_static("http://[::1]:4245")
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move { tokio::net::UnixStream::connect(path).await.map(TokioIo::new) }
                }))
                .await
        }
    };
    channel.map(ObserverClient::new).map_err(err)
}

/// Hubble's pod filter text: `namespace/prefix`, or `prefix` (which Hubble reads as `default/`).
fn pod_text(p: &PodSelector) -> String {
    match &p.namespace {
        Some(ns) => format!("{ns}/{}", p.name_prefix),
        None => p.name_prefix.clone(),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum End {
    Source,
    Destination,
}

fn set_pod(f: &mut HubbleFilter, end: End, value: String) {
    match end {
        End::Source => f.source_pod = vec![value],
        End::Destination => f.destination_pod = vec![value],
    }
}

/// `fqdnd observe`'s options as a GetFlowsRequest. A pod or namespace matches either end of a flow,
/// which Hubble expresses as one whitelist filter per end (as `hubble observe --pod` does); the
/// other criteria go into each of them.
pub fn flows_request(filter: &FlowFilter, last: Option<usize>, follow: bool) -> GetFlowsRequest {
    let mut base = HubbleFilter::default();
    let mut blacklist = Vec::new();
    if let Some(v) = filter.verdict {
        base.verdict = vec![super::convert::verdict_to_proto(v) as i32];
    }
    match filter.kind {
        Some(FlowKind::Dns) => {
            base.event_type = vec![EventTypeFilter { r#type: EVENT_TYPE_ACCESS_LOG, ..Default::default() }];
            base.protocol = vec!["dns".to_string()];
        }
        Some(FlowKind::Drop) => {
            base.event_type = vec![EventTypeFilter { r#type: EVENT_TYPE_DROP, ..Default::default() }];
        }
        // Neither DNS nor a drop: what no filter says positively, so both are excluded.
        Some(FlowKind::Other) => {
            blacklist.push(HubbleFilter { protocol: vec!["dns".to_string()], ..Default::default() });
            blacklist.push(HubbleFilter { verdict: vec![HubbleVerdict::Dropped as i32], ..Default::default() });
        }
        None => {}
    }
    // observe's Hubble-named filters, as `hubble observe` sends them.
    if let Some(p) = filter.protocol {
        base.protocol.push(p.as_str().to_string());
    }
    if let Some(p) = &filter.from_pod {
        base.source_pod = vec![pod_text(p)];
    }
    if let Some(p) = &filter.to_pod {
        base.destination_pod = vec![pod_text(p)];
    }
    if let Some(f) = &filter.fqdn {
        // Hubble matches the names of a flow's ends; a DNS query's name is not one of them.
        base.destination_fqdn = vec![f.as_str().trim_end_matches('.').to_string()];
    }
    let ends = [End::Source, End::Destination];
    let mut whitelist = Vec::new();
    match (&filter.pod, &filter.namespace) {
        (None, None) => {
            if base != HubbleFilter::default() {
                whitelist.push(base);
            }
        }
        (Some(pod), None) => {
            for end in ends {
                let mut f = base.clone();
                set_pod(&mut f, end, pod_text(pod));
                whitelist.push(f);
            }
        }
        (None, Some(ns)) => {
            for end in ends {
                let mut f = base.clone();
                set_pod(&mut f, end, format!("{ns}/"));
                whitelist.push(f);
            }
        }
        (Some(pod), Some(ns)) => {
            for pod_end in ends {
                for ns_end in ends {
                    let mut f = base.clone();
                    if pod_end == ns_end {
                        // Both on one end: the pod must be in the namespace.
                        if pod.namespace.as_ref().is_some_and(|p| p != ns) {
                            continue;
                        }
                        set_pod(&mut f, pod_end, format!("{ns}/{}", pod.name_prefix));
                    } else {
                        set_pod(&mut f, pod_end, pod_text(pod));
                        set_pod(&mut f, ns_end, format!("{ns}/"));
                    }
                    whitelist.push(f);
                }
            }
            if whitelist.is_empty() {
                // The pod's namespace is not the namespace asked for: nothing can match.
                whitelist.push(HubbleFilter { uuid: vec![String::new()], ..Default::default() });
            }
        }
    }
    GetFlowsRequest {
        number: last.map(|n| n as u64).unwrap_or(0),
        follow,
        whitelist,
        blacklist,
        since: filter.since.map(timestamp),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn observes_hubble_named_filters_as_hubble_sends_them() {
        let f = FlowFilter {
            protocol: Some("tcp".parse().unwrap()),
            from_pod: Some("default/alpine".parse().unwrap()),
            to_pod: Some("kube-system/kube-dns".parse().unwrap()),
            fqdn: Some("*.microsoft.com".parse().unwrap()),
            ..FlowFilter::default()
        };
        let r = flows_request(&f, None, false);
        assert_eq!(r.whitelist.len(), 1, "{r:?}");
        let w = &r.whitelist[0];
        assert_eq!(w.protocol, ["tcp"]);
        assert_eq!(w.source_pod, ["default/alpine"]);
        assert_eq!(w.destination_pod, ["kube-system/kube-dns"]);
        assert_eq!(w.destination_fqdn, ["*.microsoft.com"]);
    }
    use crate::flows::Verdict;
    use crate::hubble::convert::tests::real_flows;
    use crate::hubble::filter::FilterSet;

    /// Whatever fqdnd's local filter selects, the Hubble request built from it selects too.
    #[test]
    fn the_request_selects_what_the_local_filter_selects() {
        let pod = |s: &str| Some(s.parse::<PodSelector>().unwrap());
        let mut cases = vec![FlowFilter::default()];
        for p in [None, pod("default/alpine"), pod("kube-system/"), pod("default/alp"), pod("other/x")] {
            for ns in [None, Some("default".to_string()), Some("kube-system".to_string())] {
                for verdict in [None, Some(Verdict::Dropped), Some(Verdict::Forwarded)] {
                    for kind in [None, Some(FlowKind::Dns), Some(FlowKind::Drop), Some(FlowKind::Other)] {
                        cases.push(FlowFilter {
                            pod: p.clone(),
                            namespace: ns.clone(),
                            verdict,
                            kind,
                            ..FlowFilter::default()
                        });
                    }
                }
            }
        }
        let flows: Vec<Arc<_>> = real_flows().into_iter().map(Arc::new).collect();
        for local in cases {
            let req = flows_request(&local, None, false);
            let set = FilterSet::compile(&req.whitelist, &req.blacklist).unwrap();
            for (i, f) in flows.iter().enumerate() {
                assert_eq!(set.matches(f), local.matches(f), "flow {i} with {local:?} -> {:?}", req.whitelist);
            }
        }
    }

    #[test]
    fn number_follow_and_since() {
        let since = std::time::UNIX_EPOCH + std::time::Duration::from_secs(7);
        let r = flows_request(&FlowFilter { since: Some(since), ..Default::default() }, None, true);
        assert_eq!((r.number, r.follow, r.since.map(|t| t.seconds)), (0, true, Some(7)));
        assert!(r.whitelist.is_empty());
        assert_eq!(flows_request(&FlowFilter::default(), Some(20), false).number, 20);
    }
}
