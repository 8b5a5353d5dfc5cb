//! The fuzz targets' seed corpus (fuzz/), built from fixtures/zones with hickory: queries for the
//! zones' names (plain, with EDNS, in 0x20 case, and the malformed shapes the proxy must answer
//! or drop), upstream replies as an authoritative server would give them (CNAME chains, NXDOMAIN,
//! records off the chain), and a cache snapshot. The files are committed under fixtures/dns/ and
//! fixtures/snapshots/; this test fails when they are not what the generator makes (after a zone
//! changed): `FQDND_WRITE_SEEDS=1 cargo test -p fqdnd --test fuzz_seeds` rewrites them.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use fqdn_cache::pattern::NamePattern;
use fqdn_cache::{Answer, Cache, CacheConfig, EndpointId, LastUsed, SelectorRule};
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME};
use hickory_proto::rr::{Name, RData, Record, RecordType};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// One record of a zone file: owner (absolute, lower case), TTL, type and data.
#[derive(Clone, Debug)]
struct ZoneRecord {
    owner: String,
    ttl: u32,
    rtype: String,
    data: String,
}

/// The A, AAAA and CNAME records of a fixture zone (the small format the fixtures use).
fn zone(path: &Path) -> Vec<ZoneRecord> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let (mut origin, mut ttl) = (String::new(), 300u32);
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split(';').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        match words[0] {
            "$ORIGIN" => origin = words[1].to_ascii_lowercase(),
            "$TTL" => ttl = words[1].parse().expect("a $TTL number"),
            _ => {
                let absolute = |n: &str| match n {
                    "@" => origin.clone(),
                    n if n.ends_with('.') => n.to_ascii_lowercase(),
                    n => format!("{}.{origin}", n.to_ascii_lowercase()),
                };
                let owner = absolute(words[0]);
                let mut i = 1;
                let mut rttl = ttl;
                if let Ok(t) = words[i].parse::<u32>() {
                    rttl = t;
                    i += 1;
                }
                if words[i] == "IN" {
                    i += 1;
                }
                let rtype = words[i].to_string();
                let data = match rtype.as_str() {
                    "CNAME" => absolute(words[i + 1]),
                    _ => words[i + 1..].join(" "),
                };
                if matches!(rtype.as_str(), "A" | "AAAA" | "CNAME") {
                    out.push(ZoneRecord { owner, ttl: rttl, rtype, data });
                }
            }
        }
    }
    out
}

fn name(s: &str) -> Name {
    Name::from_ascii(s).unwrap()
}

fn query(id: u16, qname: &str, qtype: RecordType, edns: Option<u16>) -> Vec<u8> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(name(qname), qtype));
    if let Some(size) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        m.set_edns(e);
    }
    m.to_vec().unwrap()
}

fn record(r: &ZoneRecord) -> Record {
    let data = match r.rtype.as_str() {
        "A" => RData::A(A(r.data.parse().unwrap())),
        "AAAA" => RData::AAAA(AAAA(r.data.parse().unwrap())),
        _ => RData::CNAME(CNAME(name(&r.data))),
    };
    Record::from_rdata(name(&r.owner), r.ttl, data)
}

/// What an authoritative server answers for `qname`/`qtype`: the CNAME chain within the zones,
/// then the records of that type at its end.
fn reply(id: u16, qname: &str, qtype: RecordType, records: &[ZoneRecord], extra: Option<&ZoneRecord>) -> Vec<u8> {
    let mut m = Message::new(id, MessageType::Response, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.metadata.recursion_available = true;
    m.metadata.authoritative = true;
    m.add_query(Query::query(name(qname), qtype));
    let mut current = qname.to_string();
    let mut found = false;
    for _ in 0..8 {
        if let Some(c) = records.iter().find(|r| r.owner == current && r.rtype == "CNAME") {
            m.add_answer(record(c));
            current = c.data.clone();
            found = true;
            continue;
        }
        for r in records.iter().filter(|r| r.owner == current && r.rtype == qtype.to_string()) {
            m.add_answer(record(r));
            found = true;
        }
        break;
    }
    if let Some(x) = extra {
        m.add_answer(record(x));
    }
    if !found && extra.is_none() {
        m.metadata.response_code = ResponseCode::NXDomain;
    }
    m.to_vec().unwrap()
}

/// Every seed, by relative path under fixtures/.
fn seeds() -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut records = Vec::new();
    for z in ["microsoft.com", "google.com", "cluster.local", "bulk.test"] {
        let mut zr = zone(&root().join(format!("fixtures/zones/{z}.zone")));
        if z == "bulk.test" {
            zr.truncate(5);
        }
        records.extend(zr);
    }
    let mut owners: Vec<String> = records.iter().map(|r| r.owner.clone()).collect();
    owners.dedup();
    let mut id = 0x1000u16;
    for owner in &owners {
        for qtype in [RecordType::A, RecordType::AAAA] {
            id += 1;
            let stem = format!("{}{}", owner.trim_end_matches('.'), if qtype == RecordType::A { "" } else { "-aaaa" });
            out.insert(format!("dns/query/{stem}.bin"), query(id, owner, qtype, None));
            out.insert(format!("dns/reply/{stem}.bin"), reply(id, owner, qtype, &records, None));
        }
    }
    // Shapes of queries the proxy must answer or drop on its own.
    out.insert("dns/query/edns-1232.bin".into(), query(0x2001, "www.microsoft.com.", RecordType::A, Some(1232)));
    out.insert("dns/query/case-0x20.bin".into(), query(0x2002, "wWw.MicroSoft.COM.", RecordType::A, None));
    out.insert("dns/query/denied.bin".into(), query(0x2003, "www.example.org.", RecordType::TXT, None));
    out.insert("dns/query/root-ns.bin".into(), query(0x2004, ".", RecordType::NS, Some(4096)));
    let full = query(0x2005, "www.microsoft.com.", RecordType::A, None);
    out.insert("dns/query/cut-question.bin".into(), full[..full.len() - 3].to_vec());
    let mut two = full.clone();
    two[5] = 2;
    out.insert("dns/query/two-questions.bin".into(), two);
    let mut notify = full.clone();
    notify[2] = 0x20;
    out.insert("dns/query/opcode-notify.bin".into(), notify);
    let mut response = full.clone();
    response[2] |= 0x80;
    out.insert("dns/query/qr-set.bin".into(), response);
    out.insert("dns/query/header-only.bin".into(), full[..12].to_vec());
    // Finding 5: a question that is a compression pointer into the header ("a.").
    out.insert(
        "dns/query/pointer-into-header.bin".into(),
        vec![1, b'a', 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 0, 0, 1, 0, 1],
    );
    // Replies with a record off the chain (must not be learned) and an NXDOMAIN.
    let off = ZoneRecord { owner: "evil.example.".into(), ttl: 5, rtype: "A".into(), data: "192.0.2.66".into() };
    out.insert(
        "dns/reply/off-chain-extra.bin".into(),
        reply(0x3001, "chain.microsoft.com.", RecordType::A, &records, Some(&off)),
    );
    out.insert("dns/reply/nxdomain.bin".into(), reply(0x3002, "nope.microsoft.com.", RecordType::A, &records, None));
    out.insert("snapshots/sample.snapshot".into(), snapshot());
    out
}

/// A snapshot of a cache with a CNAME chain, IPv6, a short TTL and a zombie.
fn snapshot() -> Vec<u8> {
    let t0 = Instant::now();
    let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let mut c = Cache::new(CacheConfig::default(), t0);
    c.set_selectors(
        EndpointId(1),
        vec![SelectorRule { pattern: NamePattern::match_pattern("*.microsoft.com").unwrap(), ports: vec![] }],
    );
    let answer = |qname: &str, cnames: &[&str], ips: &[&str], ttl| Answer {
        endpoint: EndpointId(1),
        qname: qname.into(),
        cnames: cnames.iter().map(|s| s.to_string()).collect(),
        ips: ips.iter().map(|s| s.parse::<IpAddr>().unwrap()).collect(),
        ttl,
    };
    c.learn(
        &answer(
            "chain.microsoft.com.",
            &["chain2.microsoft.com.", "edge.microsoft.com."],
            &["10.200.0.3", "fd00:200::3"],
            60,
        ),
        t0,
    );
    c.learn(&answer("www.microsoft.com.", &[], &["10.200.0.1"], 300), t0);
    c.learn(&answer("short.microsoft.com.", &[], &["10.200.0.5"], 2), t0);
    let used = LastUsed { endpoint: EndpointId(1), ip: "10.200.0.5".parse().unwrap(), ago: Duration::ZERO };
    c.gc(t0 + Duration::from_secs(2), &[used]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cache.snapshot");
    c.write_snapshot(&path, wall, t0).unwrap();
    std::fs::read(path).unwrap()
}

#[test]
fn seeds_are_what_the_generator_makes() {
    let fixtures = root().join("fixtures");
    let write = std::env::var("FQDND_WRITE_SEEDS").as_deref() == Ok("1");
    let mut stale = Vec::new();
    for (rel, bytes) in seeds() {
        let path = fixtures.join(&rel);
        if write {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &bytes).unwrap();
        } else if std::fs::read(&path).ok().as_deref() != Some(&bytes) {
            stale.push(rel);
        }
    }
    assert!(
        stale.is_empty(),
        "seed files missing or stale (FQDND_WRITE_SEEDS=1 cargo test -p fqdnd --test fuzz_seeds rewrites them): {stale:?}"
    );
    // Every seed query the generator makes for a zone name decodes.
    for (rel, bytes) in seeds().iter().filter(|(r, _)| r.starts_with("dns/reply/")) {
        Message::from_vec(bytes).unwrap_or_else(|e| panic!("{rel}: {e}"));
    }
}
