//! The config surface checks itself: every key of the file has a flag of the same name and a
//! section in docs/config.md, and the effective configuration the agent logs is valid `--config`
//! input that resolves to the same configuration. Adding a setting without one of these fails here.

use std::collections::BTreeSet;
use std::path::Path;

use clap::CommandFactory;

use super::tests::env;
use super::*;

/// The file's keys, as serde knows them: the message for an unknown key lists every known one.
fn file_keys() -> BTreeSet<String> {
    let err = parse_file(Path::new("probe.yaml"), "not-a-key: 1\n").unwrap_err().to_string();
    let listed = err.split_once("expected one of").map(|(_, l)| l).unwrap_or_else(|| panic!("{err}"));
    let keys: BTreeSet<String> = listed.split('`').skip(1).step_by(2).map(str::to_string).collect();
    assert!(keys.len() > 20, "could not read the keys from {err:?}");
    keys
}

#[derive(clap::Parser)]
struct Probe {
    #[command(flatten)]
    flags: Flags,
}

/// `fqdnd run`'s long flags, `--config` (which names the file) and `--takeover` (an action of
/// one start, not a setting) left out.
fn flag_names() -> BTreeSet<String> {
    Probe::command()
        .get_arguments()
        .filter_map(|a| a.get_long())
        .filter(|l| !["config", "help", "takeover"].contains(l))
        .map(str::to_string)
        .collect()
}

/// The keys docs/config.md documents: its `### \`key\`` headings.
fn documented_keys() -> BTreeSet<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/config.md");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .filter_map(|l| l.strip_prefix("### `"))
        .filter_map(|l| l.split('`').next())
        .map(str::to_string)
        .collect()
}

fn difference(a: &BTreeSet<String>, b: &BTreeSet<String>) -> Vec<String> {
    a.difference(b).cloned().collect()
}

#[test]
fn every_key_has_a_flag_of_the_same_name() {
    let (keys, flags) = (file_keys(), flag_names());
    assert_eq!(difference(&keys, &flags), Vec::<String>::new(), "keys without a flag of `fqdnd run`");
    assert_eq!(difference(&flags, &keys), Vec::<String>::new(), "flags without a config key");
}

#[test]
fn every_key_is_documented() {
    let (keys, docs) = (file_keys(), documented_keys());
    assert_eq!(difference(&keys, &docs), Vec::<String>::new(), "keys missing from docs/config.md");
    assert_eq!(difference(&docs, &keys), Vec::<String>::new(), "docs/config.md documents keys that do not exist");
}

/// A file that sets every key to something other than its default.
fn everything_set(dir: &Path) -> String {
    std::fs::create_dir_all(dir.join("pol")).unwrap();
    std::fs::write(dir.join("eps.yaml"), "[]\n").unwrap();
    format!(
        "mode: transparent\nlisten: [\"127.0.0.1:10054\", \"[::1]:10054\"]\nupstream: \"192.0.2.9:5300\"\n\
         policies: {d}/pol\nendpoints: {d}/eps.yaml\nstate-dir: {d}/state2\ndns-reject-response-code: refused\n\
         response-max-delay: 250ms\nupstream-timeout: 3s\ntcp-idle-timeout: 4s\nmin-ttl: 5\nmax-inflight: 64\n\
         max-inflight-per-endpoint: 8\npolicy-poll-interval: 2s\nudp-workers: 3\nmetrics-addr: \"127.0.0.1:9968\"\n\
         bpffs-dir: {d}/bpf\nfqdn-scope: node\nmax-ips-per-name: 7\nidle-connection-grace-period: 1m\n\
         max-zombies: 9\ncache-snapshot-interval: 5m\nflow-ring-size: 11\nflow-follower-queue: 12\nnode-name: n1\nprint-flows: json\n\
         hubble-listen: \"127.0.0.1:4244\"\nhubble-metrics: [dns, drop]\nmax-ttl: 3600\n\
         max-learned-per-endpoint: 77\nallow-map-size: 4096\ndeny-response: reject\npolicy-audit-mode: true\n\
         max-qps-per-endpoint: 50\nqps-burst-per-endpoint: 20\nmax-tcp-connections: 100\n\
         max-tcp-connections-per-endpoint: 9\nsource: files\n",
        d = dir.display()
    )
}

#[test]
fn the_logged_configuration_is_valid_config_input() {
    let dir = tempfile::tempdir().unwrap();
    let e = env(dir.path());
    let text = everything_set(dir.path());
    let file = parse_file(Path::new("all.yaml"), &text).unwrap();
    let first = resolve(&file, &Flags::default(), &e).unwrap();
    let defaults = resolve(&FileConfig::default(), &Flags::default(), &e).unwrap();
    let logged = serde_json::to_value(&first).unwrap();
    let shown: BTreeSet<String> = logged.as_object().unwrap().keys().cloned().collect();
    assert_eq!(shown, file_keys(), "the logged configuration must show exactly the file's keys");
    let defaults_logged = serde_json::to_value(&defaults).unwrap();
    for key in file_keys() {
        if key == "upstream" {
            continue; // transparent mode has none; the default (plain) has the resolver's
        }
        if key == "source" || key == "kubeconfig" {
            continue; // the Kubernetes source takes neither policies nor endpoints: checked below
        }
        assert_ne!(logged[&key], defaults_logged[&key], "{key}: the test file must set a non-default value");
    }
    // What the agent logs (JSON, which is YAML) read back as a config file: the same config.
    let line = serde_json::to_string(&first).unwrap();
    let again = resolve(&parse_file(Path::new("logged.yaml"), &line).unwrap(), &Flags::default(), &e).unwrap();
    assert_eq!(again, first, "{line}");
    // Kubernetes mode, with a kubeconfig and no policy directory.
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, "apiVersion: v1\nkind: Config\n").unwrap();
    let text = format!("source: kubernetes\nkubeconfig: {}\nnode-name: n1\n", kubeconfig.display());
    let kube = resolve(&parse_file(Path::new("kube.yaml"), &text).unwrap(), &Flags::default(), &e).unwrap();
    let logged = serde_json::to_value(&kube).unwrap();
    assert_eq!((logged["source"].as_str(), logged["kubeconfig"].as_str()), (Some("kubernetes"), kubeconfig.to_str()));
    let line = serde_json::to_string(&kube).unwrap();
    let again = resolve(&parse_file(Path::new("logged.yaml"), &line).unwrap(), &Flags::default(), &e).unwrap();
    assert_eq!(again, kube, "{line}");
    // The defaults too (upstream from resolv.conf, metrics on, no policies).
    let line = serde_json::to_string(&defaults).unwrap();
    let again = resolve(&parse_file(Path::new("logged.yaml"), &line).unwrap(), &Flags::default(), &e).unwrap();
    assert_eq!(again, defaults, "{line}");
}

#[test]
fn the_file_only_settings_have_flags_now() {
    let dir = tempfile::tempdir().unwrap();
    let flags = Flags {
        tcp_idle_timeout: Some("3s".into()),
        max_inflight_per_endpoint: Some(5),
        policy_poll_interval: Some("250ms".into()),
        udp_workers: Some(2),
        cache_snapshot_interval: Some("10s".into()),
        node_name: Some("flagged".into()),
        print_flows: Some("compact".into()),
        ..Flags::default()
    };
    let c = resolve(&FileConfig::default(), &flags, &env(dir.path())).unwrap();
    assert_eq!(c.proxy.tcp_idle_timeout, Duration::from_secs(3));
    assert_eq!(c.proxy.max_inflight_per_endpoint, 5);
    assert_eq!(c.policy_poll_interval, Duration::from_millis(250));
    assert_eq!(c.proxy.udp_workers, 2);
    assert_eq!(c.cache_snapshot_interval, Duration::from_secs(10));
    assert_eq!(c.node_name, "flagged");
    assert_eq!(c.print_flows, PrintFlows::Compact);
    let bad = Flags { print_flows: Some("loud".into()), max_inflight_per_endpoint: Some(0), ..Flags::default() };
    let text = resolve(&FileConfig::default(), &bad, &env(dir.path())).unwrap_err().to_string();
    assert!(text.contains("--print-flows: \"loud\""), "{text}");
    assert!(text.contains("--max-inflight-per-endpoint: 0"), "{text}");
}
