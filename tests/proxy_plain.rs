//! `fqdnd run` in plain mode as a real process, in front of a real NSD, queried by dig and kdig
//! (and hickory-resolver as a library) on loopback. No root needed.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use common::dig::{self, Client};
use common::dns_server::{DnsServer, free_port};
use common::fqdnd::{Fqdnd, PolicyFixture, dns_policy};

/// NSD on 127.0.0.2 (the kube-dns endpoint) serving the test zones.
fn nsd() -> DnsServer {
    DnsServer::builder()
        .fixture_zone("microsoft.com")
        .fixture_zone("google.com")
        .fixture_zone("cluster.local")
        .listen("127.0.0.2:0".parse().unwrap())
        .start()
        .expect("nsd")
}

fn start(nsd: &DnsServer, patterns: &[&str], extra: &[&str]) -> (PolicyFixture, Fqdnd) {
    let fx = PolicyFixture::new(nsd.addr.ip(), nsd.addr.port(), patterns).unwrap();
    let mut args: Vec<String> = fx.args();
    args.extend(["--upstream".to_string(), nsd.addr.to_string()]);
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let f = Fqdnd::start(&refs).unwrap();
    (fx, f)
}

#[test]
fn allowed_denied_and_answer_types() {
    let nsd = nsd();
    let (_fx, f) = start(&nsd, &["*.microsoft.com"], &[]);

    let r = dig::query(Client::Dig, f.addr, "www.microsoft.com", "A", &[]).unwrap();
    assert_eq!(r.status, "NOERROR", "{}", r.raw);
    assert_eq!(r.data("A"), ["10.200.0.1"], "{}", r.raw);

    let r = dig::query(Client::Dig, f.addr, "www.microsoft.com", "AAAA", &[]).unwrap();
    assert_eq!(r.data("AAAA"), ["fd00:200::1"], "{}", r.raw);

    // Denied: NXDOMAIN from the proxy, question echoed, no records, RA set, RD copied.
    let r = dig::query(Client::Dig, f.addr, "www.google.com", "A", &[]).unwrap();
    assert_eq!(r.status, "NXDOMAIN", "{}", r.raw);
    assert_eq!(r.question, [("www.google.com.".to_string(), "A".to_string())], "{}", r.raw);
    assert!(r.answers.is_empty(), "{}", r.raw);
    for flag in ["qr", "rd", "ra"] {
        assert!(r.has_flag(flag), "missing {flag}: {}", r.raw);
    }
    assert!(!r.has_flag("aa"), "a refusal is not authoritative: {}", r.raw);
    let r = dig::query(Client::Dig, f.addr, "www.google.com", "A", &["+nordflag"]).unwrap();
    assert!(!r.has_flag("rd"), "RD copied from the query: {}", r.raw);

    // The CNAME chain passes through untouched (TTLs as served).
    let r = dig::query(Client::Dig, f.addr, "chain.microsoft.com", "A", &[]).unwrap();
    let ttls: Vec<u32> = r.answers.iter().map(|a| a.1).collect();
    assert_eq!(ttls, [600, 60, 120], "{}", r.raw);
    assert_eq!(r.data("A"), ["10.200.0.3"]);

    // kdig: another real client, over UDP and TCP.
    let r = dig::query(Client::Kdig, f.addr, "www.microsoft.com", "A", &[]).unwrap();
    assert_eq!(r.data("A"), ["10.200.0.1"], "{}", r.raw);
    let r = dig::query(Client::Kdig, f.addr, "login.microsoft.com", "A", &["+tcp"]).unwrap();
    assert_eq!(r.data("A"), ["10.200.0.2"], "{}", r.raw);
    let r = dig::query(Client::Kdig, f.addr, "www.google.com", "AAAA", &["+tcp"]).unwrap();
    assert_eq!(r.status, "NXDOMAIN", "{}", r.raw);

    // The access log names the query on target `dns`.
    f.wait_log("dns.qname=www.google.com.").unwrap();
    let log = f.log();
    assert!(log.contains("policy.name=default/dns-allow"), "{log}");
    assert!(log.contains("endpoint=default/alpine"), "{log}");
}

#[test]
fn refused_mode() {
    let nsd = nsd();
    let (_fx, f) = start(&nsd, &["*.microsoft.com"], &["--dns-reject-response-code", "refused"]);
    let r = dig::query(Client::Dig, f.addr, "www.google.com", "A", &[]).unwrap();
    assert_eq!(r.status, "REFUSED", "{}", r.raw);
    assert_eq!(r.question, [("www.google.com.".to_string(), "A".to_string())]);
    let r = dig::query(Client::Dig, f.addr, "www.microsoft.com", "A", &[]).unwrap();
    assert_eq!(r.status, "NOERROR", "{}", r.raw);
}

#[test]
fn tcp_and_truncation_retry() {
    let nsd = nsd();
    let (_fx, f) = start(&nsd, &["*.microsoft.com"], &[]);

    let r = dig::query(Client::Dig, f.addr, "www.microsoft.com", "A", &["+tcp"]).unwrap();
    assert_eq!(r.data("A"), ["10.200.0.1"], "{}", r.raw);

    // Without EDNS the 40 records do not fit 512 bytes: TC set, no partial answer...
    let r = dig::query(Client::Dig, f.addr, "many.microsoft.com", "A", &["+noedns", "+ignore"]).unwrap();
    assert!(r.has_flag("tc"), "{}", r.raw);
    assert!(r.answers.len() < 40, "{}", r.raw);
    // ...and dig's own retry over TCP gets all 40 through the proxy.
    let r = dig::query(Client::Dig, f.addr, "many.microsoft.com", "A", &["+noedns"]).unwrap();
    assert_eq!(r.data("A").len(), 40, "{}", r.raw);
    assert!(!r.has_flag("tc"), "{}", r.raw);
    let r = dig::query(Client::Kdig, f.addr, "many.microsoft.com", "A", &["+tcp"]).unwrap();
    assert_eq!(r.data("A").len(), 40, "{}", r.raw);
}

#[test]
fn ipv6_listener() {
    let nsd = nsd();
    let (_fx, f) = start(&nsd, &["*.microsoft.com"], &["--listen", "[::1]:0"]);
    assert!(f.addr.is_ipv6());
    let r = dig::query(Client::Dig, f.addr, "www.microsoft.com", "AAAA", &[]).unwrap();
    assert_eq!(r.data("AAAA"), ["fd00:200::1"], "{}", r.raw);
    let r = dig::query(Client::Dig, f.addr, "www.google.com", "A", &["+tcp"]).unwrap();
    assert_eq!(r.status, "NXDOMAIN", "{}", r.raw);
}

#[test]
fn upstream_down_is_servfail() {
    // A port with nothing behind it on loopback.
    let dead = SocketAddr::new("127.0.0.1".parse().unwrap(), free_port("127.0.0.1".parse().unwrap()).unwrap());
    let fx = PolicyFixture::new(dead.ip(), dead.port(), &["*.microsoft.com"]).unwrap();
    let mut args = fx.args();
    args.extend(["--upstream".into(), dead.to_string(), "--upstream-timeout".into(), "300ms".into()]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let f = Fqdnd::start(&refs).unwrap();
    let r = dig::query(Client::Dig, f.addr, "www.microsoft.com", "A", &[]).unwrap();
    assert_eq!(r.status, "SERVFAIL", "{}", r.raw);
    assert_eq!(r.question, [("www.microsoft.com.".to_string(), "A".to_string())]);
    let r = dig::query(Client::Dig, f.addr, "www.microsoft.com", "A", &["+tcp"]).unwrap();
    assert_eq!(r.status, "SERVFAIL", "{}", r.raw);
}

#[test]
fn unknown_source_is_forwarded_untouched() {
    // The endpoints file lists 127.0.0.1 and ::1 as alpine; queries from 127.0.0.3 come from
    // no known endpoint: forwarded, whatever the name.
    let nsd = nsd();
    let (_fx, f) = start(&nsd, &["*.microsoft.com"], &[]);
    let r = dig::query(Client::Dig, f.addr, "www.google.com", "A", &["-b", "127.0.0.3"]).unwrap();
    assert_eq!(r.status, "NOERROR", "{}", r.raw);
    assert_eq!(r.data("A"), ["10.201.0.1"], "{}", r.raw);
}

#[test]
fn policy_changes_apply_and_broken_edits_keep_the_last_good_set() {
    let nsd = nsd();
    let (fx, f) = start(&nsd, &["*.microsoft.com"], &[]);
    let status = |name: &str| dig::query(Client::Dig, f.addr, name, "A", &[]).unwrap().status;
    assert_eq!(status("www.google.com"), "NXDOMAIN");

    fx.write_policy("google.yaml", &dns_policy("dns-google", nsd.addr.port(), &["www.google.com"])).unwrap();
    wait_for(|| status("www.google.com") == "NOERROR", "google.yaml to apply", &f);

    // A broken edit: reported with path, document and field; the previous version stays.
    let broken = dns_policy("dns-google", nsd.addr.port(), &["www.google.com"]).replace("matchPattern", "matchPatern");
    fx.write_policy("google.yaml", &broken).unwrap();
    f.wait_log("google.yaml: doc 1: ").unwrap();
    assert_eq!(status("www.google.com"), "NOERROR", "last good version still applies");

    std::fs::remove_file(fx.policies().join("google.yaml")).unwrap();
    wait_for(|| status("www.google.com") == "NXDOMAIN", "google.yaml removal to apply", &f);
}

fn wait_for(mut cond: impl FnMut() -> bool, what: &str, f: &Fqdnd) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("waited 30 s for {what}:\n{}", f.log());
}

#[test]
fn hickory_resolver_as_client() {
    use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
    use hickory_resolver::net::runtime::TokioRuntimeProvider;

    let nsd = nsd();
    let (_fx, f) = start(&nsd, &["*.microsoft.com"], &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut conn = ConnectionConfig::udp();
        conn.port = f.addr.port();
        let config = ResolverConfig::from_name_servers(vec![NameServerConfig::new(f.addr.ip(), true, vec![conn])]);
        let resolver =
            hickory_resolver::Resolver::builder_with_config(config, TokioRuntimeProvider::default()).build().unwrap();
        let ips: Vec<IpAddr> = resolver.lookup_ip("www.microsoft.com.").await.unwrap().iter().collect();
        assert!(ips.contains(&"10.200.0.1".parse::<IpAddr>().unwrap()), "{ips:?}");
        let err = resolver.lookup_ip("www.google.com.").await.unwrap_err();
        assert!(err.is_nx_domain(), "{err}");
    });
}

#[test]
fn no_config_defaults_and_graceful_shutdown() {
    // `fqdnd run` alone: no config, no policies directory, plain mode on 127.0.0.1:5353 with
    // the system resolver as upstream. Nothing is queried (that upstream is not on loopback).
    // As root it runs in a network namespace of its own, so a developer's agent on 5353 cannot
    // get in the way; otherwise 5353 must be free on this machine.
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let f = if root {
        let prefix = ["unshare", "--net", "sh", "-c", "ip link set lo up && exec \"$0\" \"$@\""];
        Fqdnd::start_exact_wrapped(&prefix, &[]).unwrap()
    } else {
        Fqdnd::start_exact(&[]).unwrap()
    };
    assert_eq!(f.addr, "127.0.0.1:5353".parse::<SocketAddr>().unwrap(), "{}", f.log());
    let log = f.log();
    assert!(log.contains("effective configuration"), "{log}");
    // Nothing is policed, and the agent says so instead of forwarding everything silently.
    assert!(log.contains("WARN") && log.contains("NOTHING IS POLICED: no policies"), "{log}");
    let expected_upstream = std::fs::read_to_string("/etc/resolv.conf")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("nameserver").map(|s| s.trim().to_string()));
    if let Some(ns) = expected_upstream {
        assert!(log.contains(&ns), "upstream {ns} from /etc/resolv.conf: {log}");
    }
    let status = f.stop().unwrap();
    assert!(status.success(), "SIGTERM is a clean exit: {status}");
}

#[test]
fn misspelled_config_key_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("fqdnd.yaml");
    std::fs::write(&cfg, "mode: plain\nresponse-max-dealy: 10ms\n").unwrap();
    let out = std::process::Command::new(common::fqdnd::binary()).args(["run", "--config"]).arg(&cfg).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("response-max-dealy"), "{err}");
    assert!(err.contains("fqdnd.yaml"), "{err}");
}

#[test]
fn answers_are_learned_into_the_cache() {
    // alpine may resolve *.microsoft.com and reach what those names resolve to (toFQDNs): the
    // agent learns the answer; `fqdnd cache list` reads it back over the admin socket.
    let nsd = nsd();
    let fx = PolicyFixture::new(nsd.addr.ip(), nsd.addr.port(), &["*.microsoft.com"]).unwrap();
    fx.write_policy(
        "fqdn.yaml",
        r#"apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: to-microsoft, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: alpine}}
  egress:
  - toFQDNs: [{matchPattern: "*.microsoft.com"}]
    toPorts: [{ports: [{port: "443", protocol: TCP}]}]
"#,
    )
    .unwrap();
    let mut args = fx.args();
    args.extend(["--upstream".into(), nsd.addr.to_string()]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let f = Fqdnd::start(&refs).unwrap();
    let r = dig::query(Client::Dig, f.addr, "chain.microsoft.com", "A", &[]).unwrap();
    assert_eq!(r.data("A"), ["10.200.0.3"], "{}", r.raw);

    let out = std::process::Command::new(common::fqdnd::binary())
        .args(["cache", "list", "--endpoint", "default/alpine", "-o", "json", "--state-dir"])
        .arg(f.dir.path().join("state"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("chain.microsoft.com."), "{text}");
    assert!(text.contains("10.200.0.3"), "{text}");
    // The lowest TTL of the chain (60 s; the cache rounds expiry up to whole seconds), not the
    // first record's (600 s) nor the address's (120 s).
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let ttl = find_key(&v, "ttl").and_then(|t| t.as_u64()).unwrap_or(0);
    assert!((1..=61).contains(&ttl), "ttl {ttl} in {text}");
}

/// `matchPattern: "*"` in rules.dns allows every name the proxy can see, a label with an odd
/// byte and a literal `*` label included, and their answers are learned; a narrower pattern
/// refuses both (no `*` in a pattern matches a byte outside [-a-z0-9_]).
#[test]
fn match_all_allows_and_learns_names_no_selector_could_hold() {
    let nsd = DnsServer::builder().fixture_zone("odd.test").listen("127.0.0.2:0".parse().unwrap()).start().unwrap();
    let odd = [(r"a\032b.odd.test", "10.202.0.1"), ("*.odd.test", "10.202.0.2")];
    {
        let (_fx, f) = start(&nsd, &["*.odd.test"], &[]);
        for (name, _) in odd {
            let r = dig::query(Client::Dig, f.addr, name, "A", &[]).unwrap();
            assert_eq!(r.status, "NXDOMAIN", "{name} under *.odd.test: {}", r.raw);
        }
    }
    let (_fx, f) = start(&nsd, &["*"], &[]);
    for (name, ip) in odd {
        for extra in [&[][..], &["+tcp"]] {
            let r = dig::query(Client::Dig, f.addr, name, "A", extra).unwrap();
            assert_eq!(r.status, "NOERROR", "{name} {extra:?} under *: {}", r.raw);
            assert_eq!(r.data("A"), [ip], "{name} {extra:?}: {}", r.raw);
        }
    }
    let out = std::process::Command::new(common::fqdnd::binary())
        .args(["cache", "list", "--endpoint", "default/alpine", "-o", "json", "--state-dir"])
        .arg(f.dir.path().join("state"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    let rows: serde_json::Value = serde_json::from_str(&text).unwrap();
    for (_, ip) in odd {
        let learned = rows
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["fqdn"].as_str().is_some_and(|n| n.ends_with(".odd.test.")) && r.to_string().contains(ip));
        assert!(learned, "{ip} learned under an odd.test. name: {text}");
    }
}

/// The proxy decides as `policy explain` does (both call DnsRules::decide): `rules.dns: []`
/// allows every name, and a plain L4 allow of the same server and port lifts a narrower rules.dns;
/// both are still proxied, so the answers are learned.
#[test]
fn empty_rules_dns_and_a_plain_l4_allow_let_every_name_through() {
    let nsd = nsd();
    let status = |f: &Fqdnd, name: &str| dig::query(Client::Dig, f.addr, name, "A", &[]).unwrap().status;
    let (_fx, f) = start(&nsd, &[], &[]);
    assert_eq!(status(&f, "www.google.com"), "NOERROR", "rules.dns: [] restricts no name");
    assert_eq!(status(&f, "www.microsoft.com"), "NOERROR");
    f.wait_log("dns.qname=www.google.com.").unwrap();

    let (fx, f) = start(&nsd, &["*.microsoft.com"], &[]);
    assert_eq!(status(&f, "www.google.com"), "NXDOMAIN", "refused before the plain allow");
    let offset = f.log().len();
    fx.write_policy(
        "l4.yaml",
        &format!(
            "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: dns-l4, namespace: default}}\nspec:\n  \
             endpointSelector: {{matchLabels: {{app: alpine}}}}\n  egress:\n  - toEndpoints:\n    - matchLabels: \
             {{\"k8s:io.kubernetes.pod.namespace\": kube-system, \"k8s:k8s-app\": kube-dns}}\n    toPorts:\n    - ports: \
             [{{port: \"{}\", protocol: UDP}}]\n",
            nsd.addr.port()
        ),
    )
    .unwrap();
    wait_for(|| f.log()[offset..].contains("policies=2"), "l4.yaml to load", &f);
    assert_eq!(status(&f, "www.google.com"), "NOERROR", "the plain allow lifts rules.dns on UDP");
    let r = dig::query(Client::Dig, f.addr, "www.google.com", "A", &["+tcp"]).unwrap();
    assert_eq!(r.status, "NXDOMAIN", "TCP has no plain allow: {}", r.raw);
    let out = std::process::Command::new(common::fqdnd::binary())
        .args(["cache", "list", "--endpoint", "default/alpine", "-o", "json", "--state-dir"])
        .arg(f.dir.path().join("state"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("www.google.com.") && text.contains("10.201.0.1"), "still proxied and learned: {text}");
}

fn find_key<'a>(v: &'a serde_json::Value, key: &str) -> Option<&'a serde_json::Value> {
    match v {
        serde_json::Value::Object(m) => m.get(key).or_else(|| m.values().find_map(|x| find_key(x, key))),
        serde_json::Value::Array(a) => a.iter().find_map(|x| find_key(x, key)),
        _ => None,
    }
}
