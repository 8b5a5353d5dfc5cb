//! Crash restore with real TTLs, with the real agent: an address learned after the cache's last
//! snapshot survives a SIGKILL only in the kernel's allow map, which also keeps when it runs out.
//! The restarted agent keeps it for that real remaining TTL (30 s here), not for the fixed 10 s
//! it gives entries without one, and removes it once that has passed and it is idle. Proven by a
//! connect past the 10 s that works, then a drop flow after the removal. Root only.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use common::privileged;
use common::topology::{CONNECT, Cluster, DROPPED_CONNECT, GREETING, seed_stage};
use fqdn_cache::enforcer::ORPHAN_GRACE;
use serde_json::Value;

/// ttl30.microsoft.com (fixtures/zones/microsoft.com.zone).
const TTL30: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 200, 0, 30));
const TTL: Duration = Duration::from_secs(30);

fn str_at<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    path.iter().fold(v, |v, k| &v[*k]).as_str().unwrap_or_default()
}

#[test]
fn a_restarted_agent_keeps_an_entry_for_its_real_ttl() {
    if !privileged::available("a_restarted_agent_keeps_an_entry_for_its_real_ttl") {
        return;
    }
    let mut c = Cluster::start();
    c.set_policy("locking-down-alpine.yaml", &seed_stage(4));
    let r = c.dig("ttl30.microsoft.com", "A", &[]).expect("dig ttl30.microsoft.com");
    let learned = Instant::now();
    assert_eq!(r.data("A"), [TTL30.to_string()], "{}", r.raw);
    // SIGKILL: no snapshot at shutdown, and the periodic one is a minute away.
    c.kill_agent();
    c.start_agent();
    let restarted = Instant::now();
    let log_before = c.log().len();

    // Past the grace the restarted agent gives undated entries, well before the TTL.
    let probe = restarted + ORPHAN_GRACE + Duration::from_secs(3);
    assert!(
        probe + Duration::from_secs(3) < learned + TTL,
        "the restart took {:?}: too long for this test to tell the TTL from the grace",
        restarted - learned
    );
    std::thread::sleep(probe.saturating_duration_since(Instant::now()));
    let (_, res) = c.connect(SocketAddr::new(TTL30, 80), CONNECT);
    assert_eq!(
        res.unwrap_or_else(|e| panic!(
            "{:?} after the restart the entry must still allow: {e}\n{}",
            restarted.elapsed(),
            c.log()
        )),
        GREETING
    );
    assert!(!c.log()[log_before..].contains("now idle removed"), "removed before its TTL:\n{}", c.log());

    // Then it ends: removed once its TTL has passed and it is idle, and the next connect is a drop.
    let deadline = learned + TTL + Duration::from_secs(30);
    while !c.log()[log_before..].contains("now idle removed") {
        assert!(Instant::now() < deadline, "the entry was never removed; agent log:\n{}", c.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    let removed_after = learned.elapsed();
    let dst = SocketAddr::new(TTL30, 80);
    let (sport, res) = c.connect(dst, DROPPED_CONNECT);
    assert!(res.is_err(), "connect after the TTL went through: {res:?}");
    let drop = c.wait_flow(&["--type", "drop"], "for the connect after the TTL", |f| {
        str_at(f, &["IP", "destination"]) == TTL30.to_string() && f["l4"]["TCP"]["source_port"] == u64::from(sport)
    });
    assert_eq!(str_at(&drop, &["drop_reason_desc"]), "POLICY_DENIED", "{drop}");
    eprintln!("entry learned before the crash removed {removed_after:?} after its lookup (TTL {TTL:?})");
}
