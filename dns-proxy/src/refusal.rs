//! Answers the proxy writes itself: refusals, FORMERR, SERVFAIL and truncated (TC) replies. They
//! echo the client's question byte for byte, copy ID, opcode, RD and CD, set RA, and carry no records.

use hickory_proto::op::{Header, HeaderCounts, MessageType, Metadata, ResponseCode};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder, BinEncodable, BinEncoder};

use crate::config::RejectCode;
use crate::error::ProxyError;
use crate::wire::HEADER_LEN;

/// The one place failures become response codes. `None`: the client gets no answer at all
/// (a packet without a readable header, an overloaded proxy dropping UDP, or a setup error).
pub fn response_code(err: &ProxyError, reject: RejectCode) -> Option<ResponseCode> {
    match err {
        ProxyError::Refused { .. } => Some(reject.into()),
        // Not a pod following its policy's refusals: no reason to mimic a missing name.
        ProxyError::UnverifiedOrigin { .. } => Some(ResponseCode::Refused),
        ProxyError::MalformedQuery { .. }
        | ProxyError::QuestionCount { .. }
        | ProxyError::CompressedQuestion { .. } => Some(ResponseCode::FormErr),
        ProxyError::UnsupportedOpcode { .. } => Some(ResponseCode::NotImp),
        ProxyError::UpstreamTimeout { .. }
        | ProxyError::UpstreamIo { .. }
        | ProxyError::UpstreamNotAResponse { .. } => Some(ResponseCode::ServFail),
        ProxyError::Overloaded { .. }
        | ProxyError::Bind { .. }
        | ProxyError::SocketOption { .. }
        | ProxyError::TransparentNotPermitted { .. }
        | ProxyError::NoUpstream => None,
    }
}

impl From<RejectCode> for ResponseCode {
    fn from(code: RejectCode) -> Self {
        match code {
            RejectCode::NameError => ResponseCode::NXDomain,
            RejectCode::Refused => ResponseCode::Refused,
        }
    }
}

/// A reply to `query` (its header as read) with `rcode`, echoing `question` (may be empty when the
/// question could not be read).
pub fn error_reply(query: &Metadata, question: &[u8], rcode: ResponseCode) -> Vec<u8> {
    // Written byte by byte (half the queries of a locked-down pod end here); the test holds it
    // to hickory's encoding of the same header.
    let mut out = Vec::with_capacity(HEADER_LEN + question.len());
    out.extend_from_slice(&query.id.to_be_bytes());
    // QR, opcode, RD from the query; AA and TC clear.
    out.push(0x80 | (u8::from(query.op_code) & 0x0f) << 3 | u8::from(query.recursion_desired));
    // RA set, Z and AD clear, CD from the query, the rcode's low bits (all ours are below 16).
    out.push(0x80 | u8::from(query.checking_disabled) << 4 | (rcode.low() & 0x0f));
    out.extend_from_slice(&u16::from(!question.is_empty()).to_be_bytes());
    out.extend_from_slice(&[0; 6]);
    out.extend_from_slice(question);
    out
}

/// A truncated version of an upstream `reply`: its header with TC set and every section but the
/// question dropped, so no partial RRset ever reaches the client. The client retries over TCP.
pub fn truncated_reply(reply: &[u8], question: &[u8]) -> Option<Vec<u8>> {
    let mut header = Header::read(&mut BinDecoder::new(reply)).ok()?;
    header.metadata.truncation = true;
    header.counts = HeaderCounts { queries: 1, answers: 0, authorities: 0, additionals: 0 };
    Some(encode(header, question))
}

fn encode(header: Header, question: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + question.len());
    let mut encoder = BinEncoder::new(&mut out);
    // Writing into a Vec with no size limit cannot fail.
    header.emit(&mut encoder).expect("header fits");
    encoder.emit_vec(question).expect("question fits");
    out
}

/// The header of a query, if one can be read (for FORMERR).
pub fn readable_header(packet: &[u8]) -> Option<Metadata> {
    let header = Header::read(&mut BinDecoder::new(packet)).ok()?;
    (header.metadata.message_type == MessageType::Query).then_some(header.metadata)
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Duration;

    use hickory_proto::op::{Edns, Message, OpCode, Query};
    use hickory_proto::rr::{Name, RecordType};
    use policy_sync::PolicyRef;

    use super::*;
    use crate::wire::parse_query;

    fn query(rd: bool, cd: bool) -> Vec<u8> {
        let mut msg = Message::new(0xbeef, MessageType::Query, OpCode::Query);
        msg.metadata.recursion_desired = rd;
        msg.metadata.checking_disabled = cd;
        msg.add_query(Query::query(Name::from_ascii("www.Denied.example.").unwrap(), RecordType::AAAA));
        msg.set_edns(Edns::new());
        msg.to_vec().unwrap()
    }

    /// The byte-by-byte header is the one hickory writes for the same reply.
    #[test]
    fn error_replies_are_what_hickory_encodes() {
        use hickory_proto::op::OpCode;
        let question = [3, b'a', b'b', b'c', 0, 0, 1, 0, 1];
        for op_code in [OpCode::Query, OpCode::Status, OpCode::Notify, OpCode::Update, OpCode::Unknown(9)] {
            for (rd, cd) in [(false, false), (true, false), (false, true), (true, true)] {
                for rcode in [
                    ResponseCode::NXDomain,
                    ResponseCode::Refused,
                    ResponseCode::ServFail,
                    ResponseCode::FormErr,
                    ResponseCode::NotImp,
                ] {
                    for q in [&question[..], &[]] {
                        let mut query = Metadata::new(0xa55a, MessageType::Query, op_code);
                        query.recursion_desired = rd;
                        query.checking_disabled = cd;
                        query.authoritative = true;
                        query.truncation = true;
                        query.authentic_data = true;
                        let mut metadata = Metadata::response_from_request(&query);
                        metadata.recursion_available = true;
                        metadata.response_code = rcode;
                        let counts = HeaderCounts {
                            queries: u16::from(!q.is_empty()),
                            answers: 0,
                            authorities: 0,
                            additionals: 0,
                        };
                        let want = encode(Header { metadata, counts }, q);
                        assert_eq!(error_reply(&query, q, rcode), want, "{op_code:?} rd {rd} cd {cd} {rcode:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn refusal_echoes_question_and_copies_flags() {
        for (rd, cd, reject, rcode) in [
            (true, false, RejectCode::NameError, ResponseCode::NXDomain),
            (false, true, RejectCode::Refused, ResponseCode::Refused),
            (true, true, RejectCode::NameError, ResponseCode::NXDomain),
        ] {
            let bytes = query(rd, cd);
            let q = parse_query(&bytes).unwrap();
            let err = ProxyError::Refused {
                qname: q.qname.clone(),
                policy: PolicyRef { namespace: Some("default".into()), name: "p".into() }.into(),
            };
            let code = response_code(&err, reject).unwrap();
            let reply = Message::from_vec(&error_reply(&q.metadata, q.question(&bytes), code)).unwrap();
            assert_eq!(reply.metadata.id, 0xbeef);
            assert_eq!(reply.metadata.message_type, MessageType::Response);
            assert_eq!(reply.metadata.op_code, OpCode::Query);
            assert_eq!(reply.metadata.recursion_desired, rd);
            assert_eq!(reply.metadata.checking_disabled, cd);
            assert!(reply.metadata.recursion_available);
            assert!(!reply.metadata.authoritative);
            assert_eq!(reply.metadata.response_code, rcode);
            assert_eq!(reply.queries.len(), 1);
            // Byte-for-byte echo keeps the client's 0x20 case.
            assert_eq!(reply.queries[0].name().to_ascii(), "www.Denied.example.");
            assert_eq!(reply.queries[0].query_type(), RecordType::AAAA);
            assert!(reply.answers.is_empty() && reply.authorities.is_empty() && reply.additionals.is_empty());
            assert!(reply.edns.is_none());
        }
    }

    #[test]
    fn failures_map_to_codes() {
        let client: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let up: SocketAddr = "127.0.0.1:53".parse().unwrap();
        let cases: Vec<(ProxyError, Option<ResponseCode>)> = vec![
            (ProxyError::QuestionCount { client, count: 0 }, Some(ResponseCode::FormErr)),
            (ProxyError::UnsupportedOpcode { client, opcode: OpCode::Update }, Some(ResponseCode::NotImp)),
            (
                ProxyError::UpstreamTimeout { upstream: up, qname: "a.".into(), timeout: Duration::from_secs(2) },
                Some(ResponseCode::ServFail),
            ),
            (
                ProxyError::UpstreamIo {
                    upstream: up,
                    qname: "a.".into(),
                    source: std::io::ErrorKind::ConnectionRefused.into(),
                },
                Some(ResponseCode::ServFail),
            ),
            (ProxyError::Overloaded { client, endpoint: None, qname: "a.".into() }, None),
        ];
        for (err, want) in cases {
            assert_eq!(response_code(&err, RejectCode::Refused), want, "{err}");
        }
    }

    #[test]
    fn refusal_of_a_compressed_question_decodes_and_echoes_it() {
        // The question is a pointer into the header; copied as is, it would point into the
        // reply's header (QR set: 0x80 is no label length) and the reply could not be decoded.
        let bytes = crate::wire::tests::pointer_into_header();
        let q = parse_query(&bytes).unwrap();
        for code in [ResponseCode::NXDomain, ResponseCode::Refused, ResponseCode::FormErr] {
            let reply = error_reply(&q.metadata, q.question(&bytes), code);
            let msg = Message::from_vec(&reply).unwrap_or_else(|e| panic!("{code}: reply does not decode: {e}"));
            assert_eq!(msg.metadata.response_code, code);
            assert_eq!(msg.queries.len(), 1);
            assert_eq!(msg.queries[0].name().to_ascii(), "a.");
            assert_eq!(msg.queries[0].query_type(), RecordType::A);
            assert!(!reply[HEADER_LEN..].contains(&0xc0), "no pointer left in {reply:02x?}");
        }
        let cut = truncated_reply(&bytes, q.question(&bytes)).unwrap();
        assert_eq!(Message::from_vec(&cut).unwrap().queries[0].name().to_ascii(), "a.");
    }

    #[test]
    fn formerr_without_question() {
        let bytes = query(true, false);
        let meta = readable_header(&bytes[..HEADER_LEN]).unwrap();
        let reply = Message::from_vec(&error_reply(&meta, &[], ResponseCode::FormErr)).unwrap();
        assert_eq!(reply.metadata.response_code, ResponseCode::FormErr);
        assert_eq!(reply.metadata.id, 0xbeef);
        assert!(reply.queries.is_empty());
        assert!(readable_header(&bytes[..5]).is_none());
    }

    #[test]
    fn truncation_keeps_only_the_question() {
        let bytes = query(true, false);
        let q = parse_query(&bytes).unwrap();
        let mut answer = Message::from_vec(&bytes).unwrap();
        answer.metadata.message_type = MessageType::Response;
        for i in 0..40u8 {
            answer.add_answer(hickory_proto::rr::Record::from_rdata(
                Name::from_ascii("www.denied.example.").unwrap(),
                60,
                hickory_proto::rr::RData::A(hickory_proto::rr::rdata::A::new(10, 0, 0, i)),
            ));
        }
        let full = answer.to_vec().unwrap();
        let cut = truncated_reply(&full, q.question(&bytes)).unwrap();
        assert!(cut.len() <= 512);
        let msg = Message::from_vec(&cut).unwrap();
        assert!(msg.metadata.truncation);
        assert_eq!(msg.metadata.id, 0xbeef);
        assert!(msg.answers.is_empty());
        assert_eq!(msg.queries.len(), 1);
    }
}
