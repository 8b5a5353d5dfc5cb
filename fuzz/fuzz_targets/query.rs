//! Client bytes through the proxy's decision (`dns_proxy::decision::Decider`, the receive loop's
//! own `decide`): parse, endpoint, DNS rules, refusal or FORMERR/NOTIMP built on the spot. Every
//! reply must decode with hickory, be a response with the query's ID, and echo the question as
//! the proxy read it (or none, when the question could not be read).
#![no_main]

use std::sync::OnceLock;

use dns_proxy::ProxyConfig;
use dns_proxy::decision::{Decider, Decision};
use fqdn_cache::L4Proto;
use fqdnd_fuzz::{ALPINE, STRANGER, kube_dns, snapshot};
use hickory_proto::op::{Message, MessageType};
use libfuzzer_sys::fuzz_target;

fn decider() -> &'static Decider {
    static D: OnceLock<Decider> = OnceLock::new();
    D.get_or_init(|| {
        let mut config = ProxyConfig::plain(vec!["127.0.0.1:0".parse().unwrap()], kube_dns());
        // A fuzzer sends far above any rate: admission would shed all but the first queries.
        config.max_qps_per_endpoint = 0;
        Decider::new(config, snapshot())
    })
}

fuzz_target!(|packet: &[u8]| {
    // Who asks and over what come from the ID's low bits, so seeds are plain DNS messages.
    let selector = packet.get(1).copied().unwrap_or(0);
    let client = if selector & 1 == 0 { ALPINE } else { STRANGER };
    let proto = if selector & 2 == 0 { L4Proto::Udp } else { L4Proto::Tcp };
    let client = format!("{client}:40000").parse().unwrap();
    let parsed = dns_proxy::wire::parse_query(packet);
    match decider().decide(packet, client, kube_dns(), proto) {
        Decision::Drop => {}
        Decision::Forward { qname, question } => {
            let q = parsed.expect("a forwarded query parsed");
            assert_eq!(qname, &*q.qname);
            assert!(!q.question_compressed(), "a compressed question is never forwarded");
            assert_eq!(question, packet[12..q.question_end], "the question forwarded is the one sent");
        }
        Decision::Reply(reply) => {
            let msg = Message::from_vec(&reply)
                .unwrap_or_else(|e| panic!("the proxy's reply does not decode: {e}: {reply:02x?}"));
            assert_eq!(msg.metadata.message_type, MessageType::Response);
            assert_eq!(msg.metadata.id, u16::from_be_bytes([packet[0], packet[1]]), "the query's ID");
            assert!(msg.answers.is_empty() && msg.authorities.is_empty() && msg.additionals.is_empty());
            match parsed {
                Ok(q) => {
                    assert_eq!(msg.queries.len(), 1, "the question is echoed");
                    let echoed = &msg.queries[0];
                    let name = fqdn_cache::normalize_owned(echoed.name().to_ascii());
                    assert_eq!(name, &*q.qname, "the same name");
                    assert_eq!((echoed.query_type(), echoed.query_class()), (q.qtype, q.qclass));
                }
                Err(_) => assert!(msg.queries.is_empty(), "no question when none could be read"),
            }
        }
    }
});
