//! What an upstream answer teaches: the CNAME chain from the question name, the A/AAAA addresses
//! at its end, and the lowest TTL along the way.

use std::net::IpAddr;

use fqdn_cache::{Answer, EndpointId};
use hickory_proto::op::{Header, Message};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder, DecodeError};

/// A chain longer than this is treated as a loop and cut.
const MAX_CHAIN: usize = 16;

/// The answer section read along the CNAME chain that starts at the question name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Chain {
    /// CNAME targets in order, normalized.
    pub cnames: Vec<String>,
    pub ips: Vec<IpAddr>,
    /// Lowest TTL of the CNAMEs followed and the addresses found; `None` if the chain has no records.
    pub ttl: Option<u32>,
    /// Record types present in the answer section, as numbers (for flows, which take them so).
    pub rrtypes: Vec<u16>,
}

impl Chain {
    pub fn into_answer(self, endpoint: EndpointId, qname: String) -> Answer {
        Answer { endpoint, qname, cnames: self.cnames, ips: self.ips, ttl: self.ttl.unwrap_or(0) }
    }
}

/// [`extract_chain`] straight from a reply's bytes: only the question name and the answer
/// section are decoded (no authority/additional records, no message structure). The common
/// answer, addresses of the question name itself, is read from the wire without decoding;
/// anything else goes through hickory.
pub fn extract_chain_wire(reply: &[u8]) -> Result<Chain, DecodeError> {
    if let Some(chain) = direct_addresses(reply) {
        return Ok(chain);
    }
    extract_chain_decoded(reply)
}

/// The answer when every record in it is an A or AAAA record (class IN) of the question name,
/// named by a compression pointer to the question (as servers write them): nothing to follow,
/// nothing to decode. `None` for any other answer, or anything out of the ordinary.
fn direct_addresses(reply: &[u8]) -> Option<Chain> {
    const QUESTION_POINTER: [u8; 2] = [0xc0, 0x0c];
    let u16_at = |i: usize| Some(u16::from_be_bytes([*reply.get(i)?, *reply.get(i + 1)?]));
    if u16_at(4)? != 1 {
        return None;
    }
    let answers = u16_at(6)?;
    // The question name: uncompressed labels within RFC 1035's lengths, as hickory reads it.
    let mut i = 12;
    loop {
        let len = usize::from(*reply.get(i)?);
        if len == 0 {
            break;
        }
        if len > 63 || i + len + 1 - 12 > 254 {
            return None;
        }
        i += 1 + len;
    }
    // Its type and class.
    reply.get(i + 1..i + 5)?;
    i += 5;
    let mut chain = Chain::default();
    let mut ttl: Option<u32> = None;
    for _ in 0..answers {
        let fixed = reply.get(i..i + 12)?;
        if fixed[..2] != QUESTION_POINTER || fixed[4..6] != [0, 1] {
            return None;
        }
        let rtype = u16::from_be_bytes([fixed[2], fixed[3]]);
        let t = u32::from_be_bytes([fixed[6], fixed[7], fixed[8], fixed[9]]);
        let rdlen = usize::from(u16::from_be_bytes([fixed[10], fixed[11]]));
        let data = reply.get(i + 12..i + 12 + rdlen)?;
        let (ip, record_type) = match (rtype, rdlen) {
            (1, 4) => (IpAddr::from(<[u8; 4]>::try_from(data).ok()?), RecordType::A),
            (28, 16) => (IpAddr::from(<[u8; 16]>::try_from(data).ok()?), RecordType::AAAA),
            _ => return None,
        };
        let record_type = u16::from(record_type);
        if !chain.rrtypes.contains(&record_type) {
            chain.rrtypes.push(record_type);
        }
        ttl = Some(ttl.map_or(t, |v| v.min(t)));
        if !chain.ips.contains(&ip) {
            chain.ips.push(ip);
        }
        i += 12 + rdlen;
    }
    chain.ttl = ttl;
    Some(chain)
}

/// [`extract_chain_wire`] through hickory's decoder, for every answer.
pub fn extract_chain_decoded(reply: &[u8]) -> Result<Chain, DecodeError> {
    let mut d = BinDecoder::new(reply);
    let header = Header::read(&mut d)?;
    if header.counts.queries != 1 {
        return Err(DecodeError::InsufficientBytes);
    }
    let qname = Name::read(&mut d)?;
    d.read_slice(4)?;
    let mut answers = Vec::with_capacity(usize::from(header.counts.answers).min(64));
    for _ in 0..header.counts.answers {
        answers.push(Record::read(&mut d)?);
    }
    Ok(chain_of(&answers, &qname))
}

/// Follow the chain from `qname` through the answer section of `msg`. Records not on the chain
/// (an upstream's unrelated extras) are ignored: they were not asked for and must not be learned.
pub fn extract_chain(msg: &Message, qname: &Name) -> Chain {
    chain_of(&msg.answers, qname)
}

fn chain_of(answers: &[Record], qname: &Name) -> Chain {
    let mut chain = Chain::default();
    for r in answers {
        let t = u16::from(r.record_type());
        if !chain.rrtypes.contains(&t) {
            chain.rrtypes.push(t);
        }
    }
    let mut current = qname.clone();
    let mut ttl: Option<u32> = None;
    for _ in 0..MAX_CHAIN {
        let next = answers.iter().find_map(|r| match &r.data {
            RData::CNAME(target) if r.name.eq_ignore_root(&current) => Some((target.0.clone(), r.ttl)),
            _ => None,
        });
        match next {
            Some((target, t)) => {
                ttl = Some(ttl.map_or(t, |v| v.min(t)));
                chain.cnames.push(normalized(&target));
                current = target;
            }
            None => break,
        }
    }
    for r in answers {
        if !r.name.eq_ignore_root(&current) {
            continue;
        }
        let ip = match &r.data {
            RData::A(a) => IpAddr::V4(a.0),
            RData::AAAA(a) => IpAddr::V6(a.0),
            _ => continue,
        };
        ttl = Some(ttl.map_or(r.ttl, |v| v.min(r.ttl)));
        if !chain.ips.contains(&ip) {
            chain.ips.push(ip);
        }
    }
    chain.ttl = ttl;
    chain
}

fn normalized(name: &Name) -> String {
    fqdn_cache::normalize_owned(name.to_ascii())
}

#[cfg(test)]
mod tests {
    use hickory_proto::op::{MessageType, OpCode};
    use hickory_proto::rr::Record;
    use hickory_proto::rr::rdata::{A, AAAA, CNAME};
    use proptest::prelude::*;

    use super::*;

    fn n(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    fn msg(records: Vec<Record>) -> Message {
        let mut m = Message::new(1, MessageType::Response, OpCode::Query);
        m.add_answers(records);
        m
    }

    fn cname(from: &str, to: &str, ttl: u32) -> Record {
        Record::from_rdata(n(from), ttl, RData::CNAME(CNAME(n(to))))
    }

    fn a(name: &str, ip: [u8; 4], ttl: u32) -> Record {
        Record::from_rdata(n(name), ttl, RData::A(A::new(ip[0], ip[1], ip[2], ip[3])))
    }

    #[test]
    fn chain_cases() {
        type Case<'a> = (&'a str, Vec<Record>, Vec<&'a str>, Vec<&'a str>, Option<u32>);
        let cases: Vec<Case<'_>> = vec![
            ("www.example.com.", vec![a("www.example.com.", [1, 2, 3, 4], 300)], vec![], vec!["1.2.3.4"], Some(300)),
            (
                "WWW.example.com.",
                vec![
                    cname("www.example.com.", "edge.Example.net.", 600),
                    cname("edge.example.net.", "e1.cdn.net.", 30),
                    a("e1.cdn.net.", [10, 0, 0, 1], 120),
                    a("e1.cdn.net.", [10, 0, 0, 2], 90),
                ],
                vec!["edge.example.net.", "e1.cdn.net."],
                vec!["10.0.0.1", "10.0.0.2"],
                Some(30),
            ),
            // An address record off the chain is not learned, and its TTL does not count.
            (
                "www.example.com.",
                vec![a("other.example.com.", [9, 9, 9, 9], 1), a("www.example.com.", [1, 1, 1, 1], 50)],
                vec![],
                vec!["1.1.1.1"],
                Some(50),
            ),
            ("nx.example.com.", vec![], vec![], vec![], None),
            (
                "v6.example.com.",
                vec![Record::from_rdata(n("v6.example.com."), 70, RData::AAAA(AAAA::new(0xfd00, 0, 0, 0, 0, 0, 0, 1)))],
                vec![],
                vec!["fd00::1"],
                Some(70),
            ),
        ];
        for (q, records, cnames, ips, ttl) in cases {
            let c = extract_chain(&msg(records), &n(q));
            assert_eq!(c.cnames, cnames, "{q}");
            let want: Vec<IpAddr> = ips.iter().map(|s| s.parse().unwrap()).collect();
            assert_eq!(c.ips, want, "{q}");
            assert_eq!(c.ttl, ttl, "{q}");
        }
    }

    #[test]
    fn wire_extraction_agrees() {
        let mut m = msg(vec![
            cname("www.example.com.", "edge.example.net.", 600),
            a("edge.example.net.", [10, 0, 0, 1], 30),
            a("other.example.", [10, 0, 0, 9], 5),
        ]);
        m.add_query(hickory_proto::op::Query::query(n("WWW.example.com."), RecordType::A));
        m.add_additional(a("ns.example.", [10, 0, 0, 53], 1));
        let bytes = m.to_vec().unwrap();
        let wire = extract_chain_wire(&bytes).unwrap();
        assert!(direct_addresses(&bytes).is_none(), "a chain is decoded");
        assert_eq!(wire, extract_chain(&m, &n("www.example.com.")));
        assert_eq!(wire.ttl, Some(30));
        assert!(extract_chain_wire(&bytes[..bytes.len() - 30]).is_err());
    }

    #[test]
    fn cname_loop_terminates() {
        let c = extract_chain(&msg(vec![cname("a.x.", "b.x.", 10), cname("b.x.", "a.x.", 10)]), &n("a.x."));
        assert_eq!(c.cnames.len(), MAX_CHAIN);
        assert!(c.ips.is_empty());
    }

    /// An answer section drawn from addresses and CNAMEs of a few names, some the question's.
    fn answer_records() -> impl Strategy<Value = Vec<Record>> {
        let names = prop_oneof![3 => Just("q.example."), 1 => Just("Q.EXAMPLE."), 1 => Just("c.example."), 1 => Just("x.example.")];
        let record = (names.clone(), names, 0u8..4, any::<u32>(), any::<[u8; 16]>()).prop_map(
            |(owner, target, kind, ttl, ip)| {
                let name = n(owner);
                match kind {
                    0 | 1 => Record::from_rdata(name, ttl, RData::A(A::new(ip[0], ip[1], ip[2], ip[3] % 4))),
                    2 => Record::from_rdata(name, ttl, RData::AAAA(AAAA::from(std::net::Ipv6Addr::from(ip)))),
                    _ => Record::from_rdata(name, ttl, RData::CNAME(CNAME(n(target)))),
                }
            },
        );
        proptest::collection::vec(record, 0..6)
    }

    proptest! {
        /// The wire fast path and hickory's decoder read every answer alike: whole replies as
        /// servers write them, and the same cut short or with a byte changed anywhere.
        #[test]
        fn direct_addresses_read_as_hickory_reads_them(
            records in answer_records(),
            cut in any::<prop::sample::Index>(),
            flip in any::<(prop::sample::Index, u8)>(),
        ) {
            let mut m = msg(records);
            m.add_query(hickory_proto::op::Query::query(n("q.example."), RecordType::A));
            let bytes = m.to_vec().unwrap();
            let short = &bytes[..cut.index(bytes.len() + 1)];
            let mut changed = bytes.clone();
            let at = flip.0.index(changed.len());
            changed[at] ^= flip.1.max(1);
            for reply in [&bytes[..], short, &changed[..]] {
                if let Some(fast) = direct_addresses(reply) {
                    prop_assert_eq!(Some(fast), extract_chain_decoded(reply).ok(), "{:02x?}", reply);
                }
            }
            prop_assert_eq!(extract_chain_wire(&bytes).unwrap(), extract_chain(&m, &n("q.example.")));
        }

        /// The TTL is the minimum over every CNAME and address on the chain.
        #[test]
        fn ttl_is_lowest_along_chain(ttls in proptest::collection::vec(0u32..1_000_000, 1..8), a_ttl in 0u32..1_000_000) {
            let mut records = Vec::new();
            let names: Vec<String> = (0..=ttls.len()).map(|i| format!("n{i}.example.")).collect();
            for (i, t) in ttls.iter().enumerate() {
                records.push(cname(&names[i], &names[i + 1], *t));
            }
            records.push(a(names.last().unwrap(), [10, 1, 1, 1], a_ttl));
            let c = extract_chain(&msg(records), &n(&names[0]));
            let want = ttls.iter().copied().chain([a_ttl]).min();
            prop_assert_eq!(c.ttl, want);
            prop_assert_eq!(c.cnames.len(), ttls.len());
        }
    }
}
