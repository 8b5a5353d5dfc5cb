//! The seed tutorial end to end, with the real agent (`fqdnd run --mode transparent`) policing a
//! pod in network namespaces, NSD as kube-dns, and real clients: musl and glibc getaddrinfo, dig,
//! TCP connects. Root only (see tests/common/privileged.rs); the harness is
//! tests/common/topology.rs.

mod common;

use std::io::{Read as _, Write as _};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use common::clients::Libc;
use common::privileged;
use common::topology::{
    CONNECT, Cluster, DROPPED_CONNECT, ECHO_PORT, GREETING, KUBE_DNS_IP, POD_IP4, SHORT_MICROSOFT, WWW_GOOGLE4,
    WWW_MICROSOFT4, WWW_MICROSOFT6, e2e_policy, metric_sum, seed_stage,
};
use serde_json::Value;

/// The seed's policy, one object replaced stage by stage.
const SEED: &str = "locking-down-alpine.yaml";
/// musl's gai_strerror(EAI_NONAME): the answer was NXDOMAIN, not a timeout or SERVFAIL
/// (those give EAI_AGAIN, "Try again").
const MUSL_NONAME: &str = "Name does not resolve";
const GLIBC_NONAME: &str = "Name or service not known";
/// The names musl and glibc try before the absolute one (ndots:5, the pod's search list).
const EXPANSIONS: [&str; 3] = [
    "www.microsoft.com.default.svc.cluster.local.",
    "www.microsoft.com.svc.cluster.local.",
    "www.microsoft.com.cluster.local.",
];

/// Resolve www.microsoft.com and connect to it on 80 and 443 with `libc`.
fn reaches_www_microsoft(c: &Cluster, libc: Libc) {
    for port in [80, 443] {
        let r = c.getaddrinfo(libc, "www.microsoft.com", Some(port));
        assert_eq!(r.exit_code, 0, "{libc:?} www.microsoft.com:{port}: {r:?}\nagent log:\n{}", c.log());
        assert!(r.connected, "{libc:?} www.microsoft.com:{port} resolved but did not connect: {r:?}");
        assert!(
            r.addrs.contains(&WWW_MICROSOFT4) && r.addrs.contains(&WWW_MICROSOFT6),
            "{libc:?}: the zone's A and AAAA: {r:?}"
        );
    }
}

fn dig_www(c: &Cluster) -> Result<Vec<String>, String> {
    let r = c.dig("www.microsoft.com", "A", &[])?;
    if r.status == "NOERROR" { Ok(r.data("A")) } else { Err(format!("status {}: {}", r.status, r.raw)) }
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    path.iter().fold(v, |v, k| &v[*k]).as_str().unwrap_or_default()
}

fn u64_at(v: &Value, path: &[&str]) -> u64 {
    path.iter().fold(v, |v, k| &v[*k]).as_u64().unwrap_or_default()
}

/// A drop flow of a TCP connect from the pod's `sport` to `dst`.
fn is_tcp_drop(f: &Value, sport: u16, dst: SocketAddr) -> bool {
    str_at(f, &["verdict"]) == "DROPPED"
        && str_at(f, &["IP", "destination"]) == dst.ip().to_string()
        && u64_at(f, &["l4", "TCP", "source_port"]) == u64::from(sport)
        && u64_at(f, &["l4", "TCP", "destination_port"]) == u64::from(dst.port())
}

/// Connect from the pod to `dst`, expect it to fail, and return the drop flow that says why.
fn assert_dropped(c: &Cluster, dst: SocketAddr, why: &str) -> Value {
    let (sport, res) = c.connect(dst, DROPPED_CONNECT);
    assert!(res.is_err(), "{why}: the connect to {dst} went through: {res:?}");
    c.wait_flow(&["--type", "drop"], &format!("for the dropped connect :{sport} -> {dst} ({why})"), |f| {
        is_tcp_drop(f, sport, dst)
    })
}

fn dns_flow<'a>(flows: &'a [Value], l7_type: &str, query: &str) -> Option<&'a Value> {
    flows
        .iter()
        .map(|l| &l["flow"])
        .find(|f| str_at(f, &["l7", "type"]) == l7_type && str_at(f, &["l7", "dns", "query"]) == query)
}

#[test]
fn seed_stages_in_order() {
    if !privileged::available("seed_stages_in_order") {
        return;
    }
    let mut c = Cluster::start();
    let www80 = SocketAddr::new(WWW_MICROSOFT4, 80);

    // Stage 1: alpine is selected, but nothing is restricted.
    c.set_policy(SEED, &seed_stage(1));
    reaches_www_microsoft(&c, Libc::Musl);
    reaches_www_microsoft(&c, Libc::Glibc);
    assert_eq!(dig_www(&c).expect("stage 1: dig"), [WWW_MICROSOFT4.to_string()]);

    // Stage 2: egress default deny with nothing allowed; DNS too.
    c.set_policy(SEED, &seed_stage(2));
    let dig = c.dig("www.microsoft.com", "A", &[]);
    assert!(dig.is_err(), "stage 2: DNS must fail, dig got {dig:?}");
    c.wait_flow(&["--type", "drop"], "for the dropped DNS query (stage 2)", |f| {
        str_at(f, &["IP", "destination"]) == KUBE_DNS_IP.to_string()
            && u64_at(f, &["l4", "UDP", "destination_port"]) == 53
    });
    assert_dropped(&c, www80, "stage 2");

    // Stage 3: UDP 53 to kube-dns allowed, without DNS rules, so not proxied; TCP still denied.
    c.set_policy(SEED, &seed_stage(3));
    assert_eq!(dig_www(&c).expect("stage 3: dig"), [WWW_MICROSOFT4.to_string()]);
    let r = c.getaddrinfo(Libc::Musl, "www.microsoft.com", None);
    assert_eq!(r.exit_code, 0, "stage 3: musl resolves: {r:?}");
    assert_dropped(&c, www80, "stage 3");
    let dns = c.observe(&["--type", "dns"]);
    assert!(
        dns_flow(&dns, "REQUEST", "www.microsoft.com.").is_none(),
        "stage 3 has no DNS rules: the query must not be proxied, yet: {dns:?}"
    );

    // Stage 4: DNS proxied (matchPattern "*"), connections only to what *.microsoft.com resolved to.
    c.set_policy(SEED, &seed_stage(4));
    reaches_www_microsoft(&c, Libc::Musl);
    reaches_www_microsoft(&c, Libc::Glibc);
    // No 5 s stall behind the search list: every expansion was answered, NXDOMAIN from kube-dns.
    let dns = c.observe(&["--type", "dns", "--pod", "default/alpine"]);
    for name in EXPANSIONS {
        let answer = dns_flow(&dns, "RESPONSE", name).unwrap_or_else(|| panic!("no answer flow for {name}: {dns:?}"));
        assert_eq!(str_at(answer, &["verdict"]), "FORWARDED", "{answer}");
        assert_eq!(u64_at(answer, &["l7", "dns", "rcode"]), 3, "NXDOMAIN for {name}: {answer}");
    }
    // IPv6: the AAAA answer was learned too.
    let (_, res) = c.connect(SocketAddr::new(WWW_MICROSOFT6, 443), CONNECT);
    assert_eq!(res.expect("stage 4: [fd00:200::1]:443"), GREETING);
    let answer = dns_flow(&dns, "RESPONSE", "www.microsoft.com.").expect("the answer for www.microsoft.com.");
    assert!(answer["l7"]["dns"]["ips"].as_array().is_some_and(|ips| !ips.is_empty()), "{answer}");

    // A name outside *.microsoft.com resolves (DNS allows "*"), but its address is not allowed.
    let r = c.getaddrinfo(Libc::Musl, "www.google.com", None);
    assert_eq!(r.exit_code, 0, "stage 4: www.google.com resolves: {r:?}");
    assert!(r.addrs.contains(&WWW_GOOGLE4), "{r:?}");
    let drop = assert_dropped(&c, SocketAddr::new(WWW_GOOGLE4, 443), "stage 4, www.google.com");
    assert_eq!(str_at(&drop, &["source", "pod_name"]), "alpine", "{drop}");
    assert_eq!(str_at(&drop, &["IP", "source"]), POD_IP4.to_string(), "{drop}");
}

#[test]
fn dns_rules_refuse_names_outside_the_pattern() {
    if !privileged::available("dns_rules_refuse_names_outside_the_pattern") {
        return;
    }
    let mut c = Cluster::start();
    c.set_policy("dns.yaml", &e2e_policy("dns-microsoft-only.yaml"));

    let r = c.getaddrinfo(Libc::Musl, "www.microsoft.com", Some(80));
    assert_eq!((r.exit_code, r.connected), (0, true), "musl www.microsoft.com:80: {r:?}\n{}", c.log());
    // musl went on after each refused expansion: they were answered NXDOMAIN by the proxy.
    let dns = c.observe(&["--type", "dns", "--verdict", "DROPPED"]);
    for name in EXPANSIONS {
        let refusal = dns_flow(&dns, "RESPONSE", name).unwrap_or_else(|| panic!("no refusal flow for {name}: {dns:?}"));
        assert_eq!(u64_at(refusal, &["l7", "dns", "rcode"]), 3, "refused as NXDOMAIN: {refusal}");
    }

    // Outside the pattern: refused, and the client gives up at once with "no such name" (EAI_NONAME),
    // not after a timeout (EAI_AGAIN).
    for (libc, text) in [(Libc::Musl, MUSL_NONAME), (Libc::Glibc, GLIBC_NONAME)] {
        let r = c.getaddrinfo(libc, "www.google.com", None);
        assert_eq!(r.exit_code, 2, "{libc:?} www.google.com must fail: {r:?}");
        assert!(r.output.contains(text), "{libc:?}: expected {text:?}, got {r:?}");
    }
    let dns = c.observe(&["--type", "dns", "--verdict", "DROPPED"]);
    let refusal = dns_flow(&dns, "RESPONSE", "www.google.com.").expect("refusal flow for www.google.com.");
    assert_eq!(u64_at(refusal, &["l7", "dns", "rcode"]), 3, "{refusal}");
    // Over TCP too (the policy allows port 53 on any protocol): redirected and refused...
    let dig = c.dig("www.google.com", "A", &["+tcp"]).expect("dig +tcp gets the refusal");
    assert_eq!(dig.status, "NXDOMAIN", "{}", dig.raw);
    let refusal = c.wait_flow(&["--type", "dns", "--verdict", "DROPPED"], "for the refusal over TCP", |f| {
        str_at(f, &["l7", "type"]) == "REQUEST"
            && str_at(f, &["l7", "dns", "query"]) == "www.google.com."
            && f["l4"]["TCP"].is_object()
    });
    assert_eq!(u64_at(&refusal, &["l4", "TCP", "destination_port"]), 53, "{refusal}");
    // ...and allowed names are forwarded over TCP and answered.
    let dig = c.dig("login.microsoft.com", "A", &["+tcp"]).expect("dig +tcp login.microsoft.com");
    assert_eq!(dig.data("A"), ["10.200.0.2"], "{}", dig.raw);
}

#[test]
fn first_packet_after_each_answer_passes() {
    if !privileged::available("first_packet_after_each_answer_passes") {
        return;
    }
    let mut c = Cluster::start();
    c.set_policy("first-packet.yaml", &e2e_policy("first-packet.yaml"));
    let drops_before = metric_sum(&c.metrics(), "fqdnd_policy_drops_total");

    // 200 names, 200 addresses, each connected to the moment getaddrinfo returns; four at a time.
    let failures: Vec<String> = std::thread::scope(|s| {
        let c = &c;
        let workers: Vec<_> = (0..4)
            .map(|w| {
                s.spawn(move || {
                    let mut failed = Vec::new();
                    for i in (w..200).step_by(4) {
                        // Absolute names: the search list is another test's subject.
                        let name = format!("n{i:03}.bulk.test.");
                        let r = c.getaddrinfo(Libc::Musl, &name, Some(80));
                        let want: IpAddr = format!("10.210.0.{}", i + 1).parse().unwrap();
                        if r.exit_code != 0 || !r.connected || r.addrs != [want] {
                            failed.push(format!("{name}: {r:?}"));
                        }
                    }
                    failed
                })
            })
            .collect();
        workers.into_iter().flat_map(|w| w.join().expect("worker")).collect()
    });
    assert!(failures.is_empty(), "{} of 200 failed:\n{}\n{}", failures.len(), failures.join("\n"), c.log());
    let drops = c.observe(&["--type", "drop"]);
    assert!(drops.is_empty(), "drops while every address was resolved first: {drops:?}");
    assert_eq!(metric_sum(&c.metrics(), "fqdnd_policy_drops_total"), drops_before, "the drop counter moved");

    // The control: an address of the same range nobody resolved is dropped, and counted.
    assert_dropped(&c, SocketAddr::new("10.210.0.250".parse().unwrap(), 80), "never resolved");
    assert!(metric_sum(&c.metrics(), "fqdnd_policy_drops_total") > drops_before, "a drop must be counted");
}

#[test]
fn restart_keeps_connections_and_learned_addresses() {
    if !privileged::available("restart_keeps_connections_and_learned_addresses") {
        return;
    }
    let mut c = Cluster::start();
    c.set_policy(SEED, &seed_stage(4));
    let r = c.getaddrinfo(Libc::Musl, "www.microsoft.com", Some(80));
    assert_eq!((r.exit_code, r.connected), (0, true), "{r:?}");

    let mut conn = c.open(SocketAddr::new(WWW_MICROSOFT4, ECHO_PORT));
    conn.set_read_timeout(Some(CONNECT)).unwrap();
    let mut roundtrip = |msg: &[u8]| -> std::io::Result<Vec<u8>> {
        conn.write_all(msg)?;
        let mut buf = vec![0u8; msg.len()];
        conn.read_exact(&mut buf).map(|()| buf)
    };
    assert_eq!(roundtrip(b"before").expect("echo before"), b"before");

    c.kill_agent();
    assert_eq!(roundtrip(b"while down").expect("echo while the agent is down"), b"while down");
    let google80 = SocketAddr::new(WWW_GOOGLE4, 80);
    let (down_sport, res) = c.connect(google80, DROPPED_CONNECT);
    assert!(res.is_err(), "enforcement goes on while the agent is down: {res:?}");

    c.start_agent();
    // The world answers on :80, so the failure was the datapath's: its drop event waited in the
    // pinned ring buffer for the next agent.
    c.wait_flow(&["--type", "drop"], "for the drop made while the agent was down", |f| {
        is_tcp_drop(f, down_sport, google80)
    });
    let after = roundtrip(b"after").unwrap_or_else(|e| {
        let drops = c.observe(&["--type", "drop"]);
        panic!("echo after the restart: {e}\ndrops: {drops:?}\nagent log:\n{}", c.log())
    });
    assert_eq!(after, b"after");
    // The allow map is intact: an address learned before the restart, no new lookup.
    let (_, res) = c.connect(SocketAddr::new(WWW_MICROSOFT4, 80), CONNECT);
    assert_eq!(res.expect("learned address after the restart"), GREETING);
    // DNS is proxied again (the new agent sees and forwards the query).
    assert_eq!(dig_www(&c).expect("dig after the restart"), [WWW_MICROSOFT4.to_string()]);
    c.wait_flow(&["--type", "dns"], "for www.microsoft.com after the restart", |f| {
        str_at(f, &["l7", "type"]) == "RESPONSE" && str_at(f, &["l7", "dns", "query"]) == "www.microsoft.com."
    });
    assert_dropped(&c, SocketAddr::new(WWW_GOOGLE4, 80), "after the restart");
}

#[test]
fn expired_name_without_connections_is_dropped() {
    if !privileged::available("expired_name_without_connections_is_dropped") {
        return;
    }
    let mut c = Cluster::start();
    c.set_policy(SEED, &seed_stage(4));
    let r = c.dig("short.microsoft.com", "A", &[]).expect("dig short.microsoft.com");
    assert_eq!(r.data("A"), [SHORT_MICROSOFT.to_string()], "{}", r.raw);
    let learned = |c: &Cluster| c.cache_list().into_iter().any(|e| e["fqdn"] == "short.microsoft.com.");
    assert!(learned(&c), "short.microsoft.com. learned: {:?}", c.cache_list());

    // TTL 2 s and no connection: the entry expires and goes (bounded wait, not a timing claim).
    let deadline = Instant::now() + Duration::from_secs(30);
    while learned(&c) {
        assert!(Instant::now() < deadline, "short.microsoft.com. still cached after 30 s: {:?}", c.cache_list());
        std::thread::sleep(Duration::from_millis(200));
    }
    let drop = assert_dropped(&c, SocketAddr::new(SHORT_MICROSOFT, 80), "expired short.microsoft.com");
    assert_eq!(str_at(&drop, &["drop_reason_desc"]), "POLICY_DENIED", "{drop}");
    // Still enforcing the name that has not expired.
    let r = c.getaddrinfo(Libc::Musl, "www.microsoft.com", Some(80));
    assert_eq!((r.exit_code, r.connected), (0, true), "{r:?}");
}

/// An address learned after the cache's last snapshot survives a crash only in the kernel's map;
/// the restarted agent adopts it and removes it once idle, so the TTL still ends the allow.
#[test]
fn address_learned_just_before_a_crash_still_expires() {
    if !privileged::available("address_learned_just_before_a_crash_still_expires") {
        return;
    }
    let mut c = Cluster::start();
    c.set_policy(SEED, &seed_stage(4));
    let r = c.dig("short.microsoft.com", "A", &[]).expect("dig short.microsoft.com");
    assert_eq!(r.data("A"), [SHORT_MICROSOFT.to_string()], "{}", r.raw);
    // SIGKILL: no snapshot at shutdown, and the periodic one is a minute away.
    c.kill_agent();
    c.start_agent();
    let log_before = c.log().len();
    let deadline = Instant::now() + Duration::from_secs(40);
    while !c.log()[log_before..].contains("now idle removed") {
        assert!(Instant::now() < deadline, "the orphaned entry was never removed; agent log:\n{}", c.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    let drop = assert_dropped(&c, SocketAddr::new(SHORT_MICROSOFT, 80), "short.microsoft.com learned before the crash");
    assert_eq!(str_at(&drop, &["drop_reason_desc"]), "POLICY_DENIED", "{drop}");
    // Resolving it again allows it again.
    let r = c.getaddrinfo(Libc::Musl, "short.microsoft.com", Some(80));
    assert_eq!((r.exit_code, r.connected), (0, true), "{r:?}");
}

#[test]
fn removing_the_policy_removes_redirect_and_enforcement() {
    if !privileged::available("removing_the_policy_removes_redirect_and_enforcement") {
        return;
    }
    let mut c = Cluster::start();
    c.set_policy("dns.yaml", &e2e_policy("dns-microsoft-only.yaml"));
    let r = c.getaddrinfo(Libc::Musl, "www.google.com", None);
    assert_eq!(r.exit_code, 2, "redirected and refused while the policy is in force: {r:?}");
    assert_dropped(&c, SocketAddr::new(WWW_GOOGLE4, 80), "policy in force");

    c.remove_policy("dns.yaml");
    let r = c.getaddrinfo(Libc::Musl, "www.google.com", Some(80));
    assert_eq!((r.exit_code, r.connected), (0, true), "no policy, no refusal, no enforcement: {r:?}\n{}", c.log());
    assert!(r.addrs.contains(&WWW_GOOGLE4), "{r:?}");
    // While the policy was in force every www.google.com query was refused; a forwarded one
    // would mean the query still went through the proxy.
    let dns = c.observe(&["--type", "dns", "--verdict", "FORWARDED"]);
    let proxied: Vec<&Value> =
        dns.iter().filter(|l| str_at(&l["flow"], &["l7", "dns", "query"]) == "www.google.com.").collect();
    assert!(proxied.is_empty(), "queries still went through the proxy: {proxied:?}");
    let (_, res) = c.connect(SocketAddr::new(WWW_GOOGLE4, 80), CONNECT);
    assert_eq!(res.expect("connect without a policy"), GREETING);
}

/// The harness alone: without the agent every client works, so a failure above is fqdnd's.
#[test]
fn topology_works_without_the_agent() {
    if !privileged::available("topology_works_without_the_agent") {
        return;
    }
    let c = Cluster::build();
    reaches_www_microsoft(&c, Libc::Musl);
    reaches_www_microsoft(&c, Libc::Glibc);
    assert_eq!(dig_www(&c).expect("dig"), [WWW_MICROSOFT4.to_string()]);
    let r = c.getaddrinfo(Libc::Musl, "n199.bulk.test.", Some(80));
    assert_eq!((r.exit_code, r.connected), (0, true), "{r:?}");
    for dst in [WWW_MICROSOFT6, WWW_GOOGLE4] {
        let (_, res) = c.connect(SocketAddr::new(dst, 443), CONNECT);
        assert_eq!(res.unwrap_or_else(|e| panic!("{dst}: {e}")), GREETING);
    }
}
