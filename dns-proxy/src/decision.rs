//! The proxy's decision on one packet, without sockets: [`Decider::decide`] runs the receive
//! loop's own [`Shared::decide`] (parse, endpoint, admission, DNS rules, permit) and hands back
//! what the loop would send, or that the query would be forwarded. For the fuzz target `query`
//! (fuzz/) and tests: every reply the proxy writes itself comes from here.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use fqdn_cache::{Answer, Completion, DatapathError, L4Proto, Learner};
use policy_sync::Snapshot;

use crate::config::ProxyConfig;
use crate::handler::{QueryMeta, Shared, Step};
use crate::metrics::ProxyMetrics;
use crate::stats::StatsSnapshot;

/// What the receive loop does with a packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Answered on the spot (refusal, FORMERR, NOTIMP).
    Reply(Vec<u8>),
    /// Dropped without an answer (no readable header, a response, shed, overloaded).
    Drop,
    /// Forwarded upstream: the question name as the rules saw it, and the question section the
    /// forwarder matches replies against.
    Forward { qname: String, question: Vec<u8> },
}

/// Never asked: a decision learns nothing.
struct NoLearner;

impl Learner for NoLearner {
    fn learn(&self, _: &Answer) -> Completion<'_, Result<bool, DatapathError>> {
        Completion::ready(Ok(false))
    }
}

pub struct Decider {
    shared: Shared,
}

impl Decider {
    /// A decider with `config` (its rates and pools as configured) enforcing `snapshot`.
    pub fn new(config: ProxyConfig, snapshot: Arc<Snapshot>) -> Self {
        let shared = Shared::new(config, Arc::new(NoLearner), None, ProxyMetrics::unregistered());
        shared.snapshot.store(snapshot);
        Decider { shared }
    }

    pub fn decide(&self, packet: &[u8], client: SocketAddr, server: SocketAddr, proto: L4Proto) -> Decision {
        let meta = QueryMeta { client, server, proto, received: Instant::now(), ifindex: None };
        match self.shared.decide(packet, meta) {
            Step::Reply(Some(r)) => Decision::Reply(r),
            Step::Reply(None) => Decision::Drop,
            Step::Forward(p) => {
                let q = p.query();
                Decision::Forward { qname: q.qname.to_string(), question: q.question(packet).to_vec() }
            }
        }
    }

    pub fn stats(&self) -> StatsSnapshot {
        self.shared.stats.snapshot()
    }
}

#[cfg(test)]
mod tests {
    use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
    use hickory_proto::rr::{Name, RecordType};

    use super::*;

    #[test]
    fn decisions_without_sockets() {
        let d = Decider::new(
            ProxyConfig::plain(vec!["127.0.0.1:0".parse().unwrap()], "127.0.0.1:53".parse().unwrap()),
            Arc::new(Snapshot::default()),
        );
        let (client, server) = ("127.0.0.1:5000".parse().unwrap(), "127.0.0.1:53".parse().unwrap());
        let mut m = Message::new(7, MessageType::Query, OpCode::Query);
        m.add_query(Query::query(Name::from_ascii("a.example.").unwrap(), RecordType::A));
        let q = m.to_vec().unwrap();
        // No endpoint: not proxied, forwarded as is.
        match d.decide(&q, client, server, L4Proto::Udp) {
            Decision::Forward { qname, question } => {
                assert_eq!(qname, "a.example.");
                assert_eq!(question, q[12..]);
            }
            other => panic!("{other:?}"),
        }
        let cut = &q[..q.len() - 2];
        match d.decide(cut, client, server, L4Proto::Udp) {
            Decision::Reply(r) => {
                assert_eq!(Message::from_vec(&r).unwrap().metadata.response_code, ResponseCode::FormErr)
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(d.decide(&[1, 2, 3], client, server, L4Proto::Udp), Decision::Drop);
        assert_eq!(d.stats().malformed, 2);
    }
}
