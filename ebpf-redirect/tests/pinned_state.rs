//! What the pinned maps keep for the next agent: each learned entry's expiry (a restarted agent
//! reads back the real remaining TTL), and pins left by an older build or another allow-map size,
//! which are migrated (entries and enforcement kept) or refused with a message naming the map.
//! Root only; `bpftool` crafts the older build's pins.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::time::Duration;

use common::{CONNECT, EP, Fixture, allow, chain, default_deny, no_proxy};
use ebpf_redirect::{AyaDatapath, Datapath, KernelError, MapSizes};
use fqdn_cache::{Delta, Expiry};
use fqdnd_testkit::netns::{TcpServer, WORLD_IP4};
use fqdnd_testkit::privileged;

fn open_sized(fx: &Fixture, allow: u32) -> Result<AyaDatapath, KernelError> {
    let mut config = fx.config(no_proxy());
    config.map_sizes = MapSizes { allow };
    fx.topo.node.run(|| AyaDatapath::open(config))
}

fn remaining(dp: &AyaDatapath, key: &fqdn_cache::AllowKey) -> Option<Duration> {
    dp.learned_expiry().into_iter().find(|e| e.key == *key).map(|e| e.ttl)
}

#[test]
fn learned_expiry_is_kept_in_the_map_across_a_restart() {
    if !privileged::available("learned_expiry_is_kept_in_the_map_across_a_restart") {
        return;
    }
    let fx = Fixture::new();
    let k = allow(IpAddr::V4(WORLD_IP4), 80);
    let dp = fx.open(no_proxy());
    fx.attach(&dp, &default_deny());
    fx.apply(
        &dp,
        Delta { add: vec![k], expires: vec![Expiry { key: k, ttl: Duration::from_secs(30) }], ..Delta::default() },
    );
    drop(dp);

    // A new process reads it back: 30 s less the time since.
    let dp = fx.open(no_proxy());
    let left = remaining(&dp, &k).expect("the expiry survived the restart");
    assert!(left <= Duration::from_secs(30) && left > Duration::from_secs(20), "{left:?}");
    // Later by less than a second: not rewritten. Later by more: stored. Earlier: never.
    fx.apply(
        &dp,
        Delta { expires: vec![Expiry { key: k, ttl: left + Duration::from_millis(500) }], ..Delta::default() },
    );
    assert!(remaining(&dp, &k).unwrap() <= left, "a sub-second extension is not written");
    fx.apply(&dp, Delta { expires: vec![Expiry { key: k, ttl: Duration::from_secs(90) }], ..Delta::default() });
    let longer = remaining(&dp, &k).unwrap();
    assert!(longer > Duration::from_secs(80), "{longer:?}");
    fx.apply(&dp, Delta { expires: vec![Expiry { key: k, ttl: Duration::from_secs(5) }], ..Delta::default() });
    assert!(remaining(&dp, &k).unwrap() > Duration::from_secs(80), "never shortened");
    drop(dp);
    let dp = fx.open(no_proxy());
    assert!(remaining(&dp, &k).unwrap() > Duration::from_secs(80));
    // Removed: no expiry left behind for a key re-added later.
    fx.apply(&dp, Delta { remove: vec![k], ..Delta::default() });
    assert_eq!(remaining(&dp, &k), None);
    fx.topo.node.run(|| dp.uninstall()).expect("uninstall");
}

/// `bpftool` with `args`, which must succeed.
fn bpftool(args: &[&str]) -> String {
    let out = Command::new("bpftool").args(args).output().expect("bpftool (Debian package bpftool)");
    assert!(out.status.success(), "bpftool {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The bytes of an IPv4 LPM key (prefix length, endpoint, proto, pad, port, address), as hex
/// words for bpftool.
fn key4_hex(endpoint: u32, proto: u8, port: u16, addr: [u8; 4]) -> Vec<String> {
    let mut b = (64u32 + 32).to_le_bytes().to_vec();
    b.extend_from_slice(&endpoint.to_le_bytes());
    b.extend_from_slice(&[proto, 0]);
    b.extend_from_slice(&port.to_le_bytes());
    b.extend_from_slice(&addr);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// `(value size, max entries)` of a pinned map.
fn shape(path: &std::path::Path) -> (u32, u32) {
    let info = aya::maps::MapInfo::from_pin(path).expect("pinned map");
    (info.value_size(), info.max_entries())
}

#[test]
fn pins_of_an_older_layout_or_another_size_are_migrated() {
    if !privileged::available("pins_of_an_older_layout_or_another_size_are_migrated") {
        return;
    }
    let fx = Fixture::new();
    let dst = SocketAddr::new(IpAddr::V4(WORLD_IP4), 80);
    let _server = TcpServer::start(&fx.topo.world, dst, b"hello");
    // The previous build's allow map: 16-byte values, one learned entry (owner bit 2) for the pod.
    let maps = fx.bpffs.datapath_dir().join("maps");
    std::fs::create_dir_all(&maps).unwrap();
    let pin = maps.join("fqdnd_allow4");
    let pin_str = pin.to_str().unwrap();
    bpftool(&[
        "map",
        "create",
        pin_str,
        "type",
        "lpm_trie",
        "key",
        "16",
        "value",
        "16",
        "entries",
        "262144",
        "name",
        "fqdnd_allow4",
        "flags",
        "1",
    ]);
    let mut update = vec!["map", "update", "pinned", pin_str, "key", "hex"];
    let key = key4_hex(EP.0, 6, 80, WORLD_IP4.octets());
    update.extend(key.iter().map(String::as_str));
    update.extend([
        "value", "hex", "00", "00", "00", "00", "00", "00", "00", "00", "02", "00", "00", "00", "00", "00", "00", "00",
    ]);
    bpftool(&update);
    assert_eq!(shape(&pin), (16, 262_144));

    let dp = fx.open(no_proxy());
    assert_eq!(shape(&pin), (24, 262_144), "recreated in this build's layout");
    let entries = dp.allow_entries();
    assert!(
        entries.iter().any(|(k, o)| *k == ebpf_redirect::rules::learned_rules(&allow(dst.ip(), 80))[0] && o.learned),
        "the learned entry was carried over: {entries:?}"
    );
    fx.attach(&dp, &default_deny());
    assert_eq!(fx.connect(dst, CONNECT).1.expect("the migrated entry allows the connect"), b"hello");
    drop(dp);

    // Another allow-map size: migrated again, entries kept.
    let k2 = allow("10.200.2.9".parse().unwrap(), 443);
    let dp = open_sized(&fx, 1024).unwrap_or_else(|e| panic!("open at 1024: {}", chain(&e)));
    assert_eq!(shape(&pin), (24, 1024));
    fx.apply(&dp, Delta { add: vec![k2], ..Delta::default() });
    assert_eq!(dp.learned_entries().len(), 2);
    assert_eq!(fx.connect(dst, CONNECT).1.expect("still allowed after the resize"), b"hello");
    drop(dp);

    // Too small for what the pin holds: refused, naming the map and both sizes; nothing touched.
    let err = open_sized(&fx, 1).map(drop).expect_err("2 entries do not fit 1");
    let text = chain(&err);
    for needle in ["fqdnd_allow4", "holds 2 entries", "size 1", "is 1024"] {
        assert!(text.contains(needle), "{needle:?} in {text}");
    }
    assert_eq!(shape(&pin), (24, 1024), "the pin is untouched");
    let dp = open_sized(&fx, 1024).expect("the same size again");
    assert_eq!(dp.learned_entries().len(), 2);
    fx.topo.node.run(|| dp.uninstall()).expect("uninstall");
}

#[test]
fn the_allow_map_has_the_configured_size_and_reports_its_fill() {
    if !privileged::available("the_allow_map_has_the_configured_size_and_reports_its_fill") {
        return;
    }
    let fx = Fixture::new();
    let dp = open_sized(&fx, 8).unwrap_or_else(|e| panic!("open: {}", chain(&e)));
    fx.attach(&dp, &default_deny());
    let keys: Vec<_> = (1..=8u8).map(|i| allow(IpAddr::V4(std::net::Ipv4Addr::new(10, 200, 3, i)), 80)).collect();
    fx.apply(&dp, Delta { add: keys, ..Delta::default() });
    let fill =
        |dp: &AyaDatapath, map: &str| dp.map_fill().into_iter().find(|f| f.map == map).map(|f| (f.entries, f.capacity));
    assert_eq!(fill(&dp, "fqdnd_allow4"), Some((8, 8)));
    assert_eq!(fill(&dp, "fqdnd_allow6"), Some((0, 8)));
    assert_eq!(fill(&dp, "fqdnd_endpoints"), Some((1, 4096)));
    // The ninth does not fit, and the error says which map and how big it is.
    let ninth = allow(IpAddr::V4(std::net::Ipv4Addr::new(10, 200, 3, 9)), 80);
    let err = fx.rt.block_on(dp.apply(Delta { add: vec![ninth], ..Delta::default() })).expect_err("full");
    let text = err.to_string();
    assert!(text.contains("fqdnd_allow4") && text.contains("8 entries"), "{text}");
    assert_eq!(fill(&dp, "fqdnd_allow4"), Some((8, 8)), "the mirror never claims what the kernel refused");
    fx.topo.node.run(|| dp.uninstall()).expect("uninstall");
}
