//! Upstream reply bytes through answer extraction (`extract_chain_wire`, what the proxy learns
//! from) and into the cache. Only names on the question's CNAME chain are ever learned: every
//! learned name is the question or the target of a CNAME whose owner is the name before it, and
//! every learned address is an A/AAAA record of the chain's last name.
#![no_main]

use std::net::IpAddr;
use std::time::{Instant, SystemTime};

use dns_proxy::answer::extract_chain_wire;
use fqdn_cache::pattern::NamePattern;
use fqdn_cache::{Cache, CacheConfig, EndpointId, ListFilter, SelectorRule};
use hickory_proto::op::Header;
use hickory_proto::rr::{Name, RData, Record};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};
use libfuzzer_sys::fuzz_target;

/// The question name and answer records, decoded on their own.
fn answers(reply: &[u8]) -> Option<(Name, Vec<Record>)> {
    let mut d = BinDecoder::new(reply);
    let header = Header::read(&mut d).ok()?;
    let qname = Name::read(&mut d).ok()?;
    d.read_slice(4).ok()?;
    let mut records = Vec::new();
    for _ in 0..header.counts.answers {
        records.push(Record::read(&mut d).ok()?);
    }
    Some((qname, records))
}

fn norm(n: &Name) -> String {
    fqdn_cache::normalize_owned(n.to_ascii())
}

fuzz_target!(|reply: &[u8]| {
    let Ok(chain) = extract_chain_wire(reply) else { return };
    let (qname, records) = answers(reply).expect("what extract_chain_wire read decodes");
    let mut names = vec![norm(&qname)];
    for target in &chain.cnames {
        let prev = names.last().unwrap().clone();
        let linked = records
            .iter()
            .any(|r| matches!(&r.data, RData::CNAME(c) if norm(&c.0) == *target) && norm(&r.name) == prev);
        assert!(linked, "{target} learned without a CNAME from {prev}");
        names.push(target.clone());
    }
    let last = names.last().unwrap();
    for ip in &chain.ips {
        let there = records.iter().any(|r| {
            norm(&r.name) == *last
                && match &r.data {
                    RData::A(a) => IpAddr::V4(a.0) == *ip,
                    RData::AAAA(a) => IpAddr::V6(a.0) == *ip,
                    _ => false,
                }
        });
        assert!(there, "{ip} learned without an address record of {last}");
    }
    // Into a cache whose selector matches every name: what it holds is the chain and no more.
    let t0 = Instant::now();
    let mut cache = Cache::new(CacheConfig::default(), t0);
    let all = SelectorRule { pattern: NamePattern::match_pattern("*").unwrap(), ports: vec![] };
    cache.set_selectors(EndpointId(1), vec![all]);
    let answer = chain.clone().into_answer(EndpointId(1), names[0].clone());
    let delta = cache.learn(&answer, t0);
    for row in cache.list(&ListFilter::default(), t0, SystemTime::now()) {
        assert!(names.contains(&row.fqdn), "{} cached but not on the chain {names:?}", row.fqdn);
        assert!(row.ips.iter().all(|ip| chain.ips.contains(ip)));
    }
    assert!(delta.add.iter().all(|k| chain.ips.contains(&k.ip)), "only the chain's addresses are allowed");
});
