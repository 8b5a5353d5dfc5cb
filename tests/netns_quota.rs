//! One pod cannot fill the node's allow map: with the real agent, a small `--allow-map-size` and
//! `--max-learned-per-endpoint 8`, the pod resolves 20 names under bulk.test and connects to each
//! at once (every new name gets through); its own oldest idle entries made room, so the first
//! names' addresses are dropped afterwards while the last eight still connect. The metrics show
//! the quota evictions and the allow map's fill against its configured size. Root only.

mod common;

use std::net::{IpAddr, SocketAddr};

use common::clients::Libc;
use common::privileged;
use common::topology::{CONNECT, Cluster, DROPPED_CONNECT, e2e_policy, metric_sum};

const QUOTA: usize = 8;
const NAMES: usize = 20;

fn addr(i: usize) -> IpAddr {
    format!("10.210.0.{}", i + 1).parse().unwrap()
}

/// `name{map="..."} value` of a Prometheus page.
fn series(page: &str, name: &str, map: &str) -> Option<f64> {
    let prefix = format!("{name}{{map=\"{map}\"}} ");
    page.lines().find_map(|l| l.strip_prefix(&prefix)?.parse().ok())
}

#[test]
fn one_pod_over_its_quota_loses_only_its_own_oldest_entries() {
    if !privileged::available("one_pod_over_its_quota_loses_only_its_own_oldest_entries") {
        return;
    }
    let mut c = Cluster::build();
    c.agent_args = ["--max-learned-per-endpoint", "8", "--allow-map-size", "64"].map(String::from).to_vec();
    c.start_agent();
    c.set_policy("first-packet.yaml", &e2e_policy("first-packet.yaml"));

    for i in 0..NAMES {
        let name = format!("n{i:03}.bulk.test.");
        let r = c.getaddrinfo(Libc::Musl, &name, Some(80));
        assert_eq!((r.exit_code, r.connected), (0, true), "{name}, at the pod's quota: {r:?}\n{}", c.log());
    }
    // The newest eight are still allowed; the oldest went to make room for them.
    for i in NAMES - QUOTA..NAMES {
        let (_, res) = c.connect(SocketAddr::new(addr(i), 80), CONNECT);
        assert!(res.is_ok(), "n{i:03} is among the newest {QUOTA}: {res:?}");
    }
    for i in [0, 1, NAMES - QUOTA - 1] {
        let dst = SocketAddr::new(addr(i), 80);
        let (sport, res) = c.connect(dst, DROPPED_CONNECT);
        assert!(res.is_err(), "n{i:03} was evicted: {res:?}");
        c.wait_flow(&["--type", "drop"], &format!("for the evicted n{i:03}"), |f| {
            f["IP"]["destination"] == dst.ip().to_string() && f["l4"]["TCP"]["source_port"] == u64::from(sport)
        });
    }
    let page = c.metrics();
    assert!(metric_sum(&page, "fqdnd_cache_quota_evictions_total") >= (NAMES - QUOTA) as f64, "{page}");
    assert_eq!(series(&page, "fqdnd_datapath_map_capacity", "fqdnd_allow4"), Some(64.0), "{page}");
    let held = series(&page, "fqdnd_datapath_map_entries", "fqdnd_allow4").expect("fill of fqdnd_allow4");
    // The policy's static entries (kube-dns on UDP 53) plus at most the quota's learned ones.
    assert!((QUOTA as f64..=(QUOTA + 4) as f64).contains(&held), "fqdnd_allow4 holds {held}:\n{page}");
}
