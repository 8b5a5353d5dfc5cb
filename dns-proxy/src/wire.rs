//! The few things the proxy reads from and writes into DNS messages on the query path: the header,
//! the one question, the client's EDNS UDP size, and the message ID. Everything else is forwarded
//! as bytes, so a query costs one decode of its question and no re-encoding.

use std::sync::Arc;

use hickory_proto::op::{Header, MessageType, Metadata};
use hickory_proto::rr::{DNSClass, Name, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder, DecodeError};

/// Length of the fixed DNS header.
pub const HEADER_LEN: usize = 12;
/// The UDP payload every client accepts (RFC 1035), and the limit for clients without EDNS.
pub const PLAIN_UDP_LIMIT: usize = 512;
/// Largest DNS message (TCP length prefix).
pub const MAX_MESSAGE: usize = 65_535;

/// What the proxy needs to know about a query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedQuery {
    pub metadata: Metadata,
    /// The question name, lower case with one trailing dot (`www.example.com.`), in the
    /// presentation form (`\DDD` escapes for odd bytes) so it never matches a pattern by accident.
    pub qname: Arc<str>,
    pub qtype: RecordType,
    pub qclass: DNSClass,
    /// Offset just past the question: `packet[HEADER_LEN..question_end]` is the question on the wire.
    pub question_end: usize,
    /// The client's EDNS UDP payload size, if the query carries an OPT record.
    pub edns_udp_size: Option<u16>,
    /// The question written out without compression, when the client's used a compression
    /// pointer. The only thing before the question is the header, so such a pointer points into
    /// the header: copied into a reply (whose header differs) it would name something else.
    pub uncompressed_question: Option<Vec<u8>>,
}

impl ParsedQuery {
    /// The question section to echo: the client's bytes (its 0x20 case kept), or, if its name
    /// used a compression pointer, the same name written out in full.
    pub fn question<'a>(&'a self, packet: &'a [u8]) -> &'a [u8] {
        match &self.uncompressed_question {
            Some(q) => q,
            None => &packet[HEADER_LEN..self.question_end],
        }
    }

    /// Whether the client's question used a compression pointer (see `uncompressed_question`).
    pub fn question_compressed(&self) -> bool {
        self.uncompressed_question.is_some()
    }

    /// The largest UDP answer this client accepts (RFC 6891 6.2.5: values below 512 mean 512).
    pub fn udp_limit(&self) -> usize {
        self.edns_udp_size.map_or(PLAIN_UDP_LIMIT, |s| (s as usize).max(PLAIN_UDP_LIMIT))
    }
}

/// Why a packet could not be read as a query.
#[derive(Clone, Debug)]
pub enum QueryParseError {
    /// Fewer bytes than a header: nothing can be answered.
    NoHeader,
    /// QR is set: a response sent to the proxy. Never answered (that would let two proxies loop).
    NotAQuery,
    /// The header was read but the rest is broken: answer FORMERR.
    Malformed { metadata: Metadata, source: DecodeError },
    /// Not exactly one question: answer FORMERR.
    QuestionCount { metadata: Metadata, count: u16 },
}

/// Read the header and the question of a query, and find the client's EDNS UDP size.
pub fn parse_query(packet: &[u8]) -> Result<ParsedQuery, QueryParseError> {
    let mut decoder = BinDecoder::new(packet);
    let header = Header::read(&mut decoder).map_err(|_| QueryParseError::NoHeader)?;
    let metadata = header.metadata;
    if metadata.message_type != MessageType::Query {
        return Err(QueryParseError::NotAQuery);
    }
    if header.counts.queries != 1 {
        return Err(QueryParseError::QuestionCount { metadata, count: header.counts.queries });
    }
    let malformed = |source| QueryParseError::Malformed { metadata, source };
    // Plain names (letters, digits, `-`, `_`, no pointer) are read straight from the wire; anything
    // else goes through hickory, which escapes it into the presentation form.
    let (qname, name) = match plain_name(packet, HEADER_LEN) {
        Some((qname, end)) => {
            decoder.read_slice(end - HEADER_LEN).map_err(malformed)?;
            (qname, None)
        }
        None => {
            let name = Name::read(&mut decoder).map_err(malformed)?;
            (Arc::from(fqdn_cache::normalize_owned(name.to_ascii())), Some(name))
        }
    };
    let qtype = RecordType::read(&mut decoder).map_err(malformed)?;
    let qclass = DNSClass::read(&mut decoder).map_err(malformed)?;
    let question_end = decoder.index();

    let mut edns_udp_size = None;
    let records = header.counts.answers as usize + header.counts.authorities as usize;
    for _ in 0..records {
        skip_record(&mut decoder).map_err(malformed)?;
    }
    for _ in 0..header.counts.additionals {
        if let Some(size) = skip_record(&mut decoder).map_err(malformed)? {
            edns_udp_size = Some(size);
        }
    }

    let uncompressed_question = name.filter(|_| has_pointer(&packet[HEADER_LEN..question_end])).map(|name| {
        let mut q = Vec::with_capacity(question_end);
        for label in name.iter() {
            q.push(label.len() as u8);
            q.extend_from_slice(label);
        }
        q.push(0);
        q.extend_from_slice(&u16::from(qtype).to_be_bytes());
        q.extend_from_slice(&u16::from(qclass).to_be_bytes());
        q
    });
    Ok(ParsedQuery { metadata, qname, qtype, qclass, question_end, edns_udp_size, uncompressed_question })
}

/// The name at `start`, lower case with its trailing dot, and the offset past it, if it is plain:
/// uncompressed, labels of letters, digits, `-` (not first) and `_` only, within RFC 1035's lengths. Such a
/// name reads the same in hickory's presentation form (the proptest below holds them together).
fn plain_name(packet: &[u8], start: usize) -> Option<(Arc<str>, usize)> {
    let mut out = [0u8; 255];
    let mut n = 0;
    let mut i = start;
    loop {
        let len = usize::from(*packet.get(i)?);
        if len == 0 {
            break;
        }
        // Pointers (0xc0) and the reserved label types (0x40, 0x80) take hickory's path.
        if len > 63 {
            return None;
        }
        let label = packet.get(i + 1..i + 1 + len)?;
        // The wire name (length bytes and all) is at most 255 bytes: `n + len + 1` plus the root.
        if n + len + 2 > 255 {
            return None;
        }
        // hickory escapes a leading `-`.
        if label[0] == b'-' {
            return None;
        }
        for &b in label {
            if !(b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
                return None;
            }
            out[n] = b.to_ascii_lowercase();
            n += 1;
        }
        out[n] = b'.';
        n += 1;
        i += 1 + len;
    }
    if n == 0 {
        out[0] = b'.';
        n = 1;
    }
    // Every byte written is ASCII.
    let name = std::str::from_utf8(&out[..n]).ok()?;
    Some((Arc::from(name), i + 1))
}

/// Whether the name at the start of `question` (already decoded, so well formed) ends in a
/// compression pointer.
fn has_pointer(question: &[u8]) -> bool {
    let mut i = 0;
    while let Some(&len) = question.get(i) {
        match len {
            0 => return false,
            l if l & 0xc0 == 0xc0 => return true,
            l => i += 1 + usize::from(l),
        }
    }
    false
}

/// Skip one resource record; for an OPT record return its class, the UDP payload size.
fn skip_record(decoder: &mut BinDecoder<'_>) -> Result<Option<u16>, DecodeError> {
    Name::read(decoder)?;
    let rtype = decoder.read_u16()?.unverified(/* any type is skippable */);
    let class = decoder.read_u16()?.unverified(/* only meaningful for OPT */);
    decoder.read_u32()?;
    let len = decoder.read_u16()?.unverified(/* bounds-checked by read_slice */);
    decoder.read_slice(len as usize)?;
    Ok((rtype == u16::from(RecordType::OPT)).then_some(class))
}

/// The message ID.
pub fn id(packet: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes([*packet.first()?, *packet.get(1)?]))
}

/// Overwrite the message ID in place.
pub fn set_id(packet: &mut [u8], id: u16) {
    packet[..2].copy_from_slice(&id.to_be_bytes());
}

/// How an upstream reply compares with the query it should answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyCheck {
    Match,
    /// Shorter than a header, or QR not set.
    NotAResponse,
    WrongId,
    /// Not exactly the question that was asked (name compared case-insensitively, type and class exactly).
    WrongQuestion,
}

/// Check that `reply` answers the query with `id` and the wire `question`.
pub fn check_reply(reply: &[u8], id: u16, question: &[u8]) -> ReplyCheck {
    if reply.len() < HEADER_LEN || reply[2] & 0x80 == 0 {
        return ReplyCheck::NotAResponse;
    }
    if u16::from_be_bytes([reply[0], reply[1]]) != id {
        return ReplyCheck::WrongId;
    }
    let qdcount = u16::from_be_bytes([reply[4], reply[5]]);
    let end = HEADER_LEN + question.len();
    if qdcount != 1 || reply.len() < end || question.len() < 4 {
        return ReplyCheck::WrongQuestion;
    }
    let got = &reply[HEADER_LEN..end];
    let name_len = question.len() - 4;
    // Label length bytes are below 64, so only letters are affected by the case-insensitive compare.
    if got[..name_len].eq_ignore_ascii_case(&question[..name_len]) && got[name_len..] == question[name_len..] {
        ReplyCheck::Match
    } else {
        ReplyCheck::WrongQuestion
    }
}

/// Header flags of a reply, read without decoding the message.
pub fn is_truncated(reply: &[u8]) -> bool {
    reply.len() > 2 && reply[2] & 0x02 != 0
}

/// The 4-bit RCODE of a reply header.
pub fn rcode_low(reply: &[u8]) -> u8 {
    reply.get(3).map_or(0, |b| b & 0x0f)
}

#[cfg(test)]
pub(crate) mod tests {
    use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
    use hickory_proto::rr::Name;
    use proptest::prelude::*;

    use super::*;

    fn query_bytes(name: &str, qtype: RecordType, edns: Option<u16>) -> Vec<u8> {
        let mut msg = Message::new(0x1234, MessageType::Query, OpCode::Query);
        msg.metadata.recursion_desired = true;
        msg.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
        if let Some(size) = edns {
            let mut e = Edns::new();
            e.set_max_payload(size);
            msg.set_edns(e);
        }
        msg.to_vec().unwrap()
    }

    #[test]
    fn parses_question_and_edns() {
        let cases: &[(&str, RecordType, Option<u16>, &str, usize)] = &[
            ("www.Example.COM.", RecordType::A, None, "www.example.com.", 512),
            ("www.example.com", RecordType::AAAA, Some(1232), "www.example.com.", 1232),
            ("a.b.", RecordType::TXT, Some(100), "a.b.", 512),
            (".", RecordType::NS, Some(4096), ".", 4096),
        ];
        for &(name, qtype, edns, want_name, want_limit) in cases {
            let bytes = query_bytes(name, qtype, edns);
            let q = parse_query(&bytes).unwrap();
            assert_eq!(&*q.qname, want_name, "{name}");
            assert_eq!(q.qtype, qtype, "{name}");
            assert_eq!(q.udp_limit(), want_limit, "{name}");
            assert_eq!(q.metadata.id, 0x1234);
            assert!(q.metadata.recursion_desired);
            let mut d = BinDecoder::new(q.question(&bytes));
            assert_eq!(Name::read(&mut d).unwrap().to_ascii().to_ascii_lowercase(), want_name);
        }
    }

    #[test]
    fn rejects_what_cannot_be_answered() {
        assert!(matches!(parse_query(&[1, 2, 3]), Err(QueryParseError::NoHeader)));
        let mut resp = query_bytes("a.", RecordType::A, None);
        resp[2] |= 0x80;
        assert!(matches!(parse_query(&resp), Err(QueryParseError::NotAQuery)));
        let mut two = query_bytes("a.", RecordType::A, None);
        two[5] = 2;
        assert!(matches!(parse_query(&two), Err(QueryParseError::QuestionCount { count: 2, .. })));
        let full = query_bytes("www.example.com.", RecordType::A, None);
        let cut = &full[..full.len() - 3];
        assert!(matches!(parse_query(cut), Err(QueryParseError::Malformed { .. })));
    }

    #[test]
    fn odd_bytes_in_labels_are_escaped() {
        let mut bytes = query_bytes("ab.example.", RecordType::A, None);
        bytes[HEADER_LEN + 1] = b'.';
        let q = parse_query(&bytes).unwrap();
        assert_ne!(&*q.qname, "a.b.example.");
        assert!(q.qname.ends_with(".example."), "{}", q.qname);
    }

    /// A query for `a.` whose question is only a pointer to offset 0: the ID bytes 0x01 'a'
    /// read as the label "a", and the flags' first byte (0: a plain query) ends the name.
    pub(crate) fn pointer_into_header() -> Vec<u8> {
        let mut q = vec![0x01, b'a', 0x00, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        q.extend_from_slice(&[0xc0, 0x00, 0, 1, 0, 1]);
        q
    }

    #[test]
    fn compressed_question_is_echoed_uncompressed() {
        let packet = pointer_into_header();
        let q = parse_query(&packet).unwrap();
        assert_eq!(&*q.qname, "a.");
        assert!(q.question_compressed());
        assert_eq!(q.question(&packet), [1, b'a', 0, 0, 1, 0, 1]);
        // Case survives the rewrite: it comes from the name as decoded, not the lower-cased qname.
        let mut upper = packet.clone();
        upper[1] = b'A';
        assert_eq!(parse_query(&upper).unwrap().question(&upper), [1, b'A', 0, 0, 1, 0, 1]);
        // A plain question is echoed as sent.
        let plain = query_bytes("www.Example.com.", RecordType::A, None);
        let q = parse_query(&plain).unwrap();
        assert!(!q.question_compressed());
        assert_eq!(q.question(&plain), &plain[HEADER_LEN..q.question_end]);
    }

    #[test]
    fn reply_checks() {
        let query = query_bytes("www.example.com.", RecordType::A, None);
        let parsed = parse_query(&query).unwrap();
        let question = parsed.question(&query).to_vec();
        let mut reply = query.clone();
        reply[2] |= 0x80;
        assert_eq!(check_reply(&reply, 0x1234, &question), ReplyCheck::Match);
        assert_eq!(check_reply(&reply, 0x1235, &question), ReplyCheck::WrongId);
        assert_eq!(check_reply(&query, 0x1234, &question), ReplyCheck::NotAResponse);
        let mut upper = reply.clone();
        upper[HEADER_LEN + 1] = b'W';
        assert_eq!(check_reply(&upper, 0x1234, &question), ReplyCheck::Match);
        let mut other_name = reply.clone();
        other_name[HEADER_LEN + 1] = b'x';
        assert_eq!(check_reply(&other_name, 0x1234, &question), ReplyCheck::WrongQuestion);
        let aaaa = query_bytes("www.example.com.", RecordType::AAAA, None);
        let mut aaaa_reply = aaaa.clone();
        aaaa_reply[2] |= 0x80;
        assert_eq!(check_reply(&aaaa_reply, 0x1234, &question), ReplyCheck::WrongQuestion);
        assert_eq!(check_reply(&reply[..14], 0x1234, &question), ReplyCheck::WrongQuestion);
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse_query(&bytes);
        }

        /// The wire fast path and hickory read every name alike: where the fast path takes a
        /// name, it reads what hickory's presentation form says, and it never reads past it.
        #[test]
        fn plain_names_read_as_hickory_reads_them(
            labels in proptest::collection::vec(
                proptest::collection::vec(prop_oneof![4 => b'a'..=b'z', 2 => b'A'..=b'Z', 2 => b'0'..=b'9', 1 => Just(b'-'), 1 => Just(b'_'), 1 => any::<u8>()], 0..70),
                0..6),
        ) {
            let mut wire = vec![0u8; HEADER_LEN];
            for l in &labels {
                wire.push(l.len() as u8);
                wire.extend_from_slice(l);
            }
            wire.push(0);
            let fast = plain_name(&wire, HEADER_LEN);
            let mut d = BinDecoder::new(&wire[HEADER_LEN..]);
            let slow = Name::read(&mut d).ok().map(|n| (fqdn_cache::normalize_owned(n.to_ascii()), HEADER_LEN + d.index()));
            if let Some((name, end)) = fast {
                prop_assert_eq!(Some((name.to_string(), end)), slow);
            }
        }

        #[test]
        fn round_trip_names(labels in proptest::collection::vec("[a-zA-Z0-9_]([a-zA-Z0-9_-]{0,18}[a-zA-Z0-9])?", 1..6), qtype in 1u16..300) {
            let name = format!("{}.", labels.join("."));
            let bytes = query_bytes(&name, RecordType::from(qtype), Some(1400));
            let q = parse_query(&bytes).unwrap();
            prop_assert_eq!(&*q.qname, name.to_ascii_lowercase());
            prop_assert_eq!(u16::from(q.qtype), qtype);
            prop_assert_eq!(q.question_end, bytes.len() - 11);
        }
    }
}
