//! Tests of `resolve()`: every key and flag, their defaults and their errors.

use super::*;

pub(super) fn env(dir: &Path) -> Environment {
    let resolv = dir.join("resolv.conf");
    std::fs::write(&resolv, "# comment\nsearch example\nnameserver 192.0.2.53\nnameserver 192.0.2.54\n").unwrap();
    Environment { resolv_conf: resolv, cwd: dir.to_path_buf(), default_state_dir: dir.join("state"), in_cluster: false }
}

#[test]
fn defaults_without_config() {
    let dir = tempfile::tempdir().unwrap();
    let c = resolve(&FileConfig::default(), &Flags::default(), &env(dir.path())).unwrap();
    assert_eq!(c.proxy.mode, Mode::Plain);
    assert_eq!(c.proxy.listen, vec!["127.0.0.1:5353".parse().unwrap()]);
    assert_eq!(c.proxy.upstream, Some("192.0.2.53:53".parse().unwrap()));
    assert_eq!(c.proxy.reject, RejectCode::NameError);
    assert_eq!(c.proxy.response_max_delay, Duration::from_millis(100));
    assert_eq!(c.proxy.upstream_timeout, Duration::from_secs(2));
    assert_eq!(c.metrics_addr, Some("127.0.0.1:9967".parse().unwrap()));
    assert_eq!(c.cache, fqdn_cache::CacheConfig::default());
    assert_eq!(c.policies, None, "no ./policies directory here");
    std::fs::create_dir(dir.path().join("policies")).unwrap();
    let c = resolve(&FileConfig::default(), &Flags::default(), &env(dir.path())).unwrap();
    assert_eq!(c.policies, Some(dir.path().join("policies")));
}

#[test]
fn misspelled_key_is_rejected_with_its_name() {
    let err = parse_file(Path::new("fqdnd.yaml"), "mode: plain\nlisten: [\"127.0.0.1:53\"]\nupstrem: 1.1.1.1\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("upstrem"), "{err}");
    assert!(err.contains("fqdnd.yaml"), "{err}");
}

#[test]
fn flags_override_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = parse_file(
        Path::new("f.yaml"),
        "mode: plain\nupstream: 192.0.2.1:5300\ndns-reject-response-code: refused\nresponse-max-delay: 250ms\n",
    )
    .unwrap();
    let flags = Flags {
        upstream: Some("[2001:db8::1]:53".into()),
        listen: vec!["127.0.0.1:5400".into(), "[::1]:5400".into()],
        ..Flags::default()
    };
    let c = resolve(&file, &flags, &env(dir.path())).unwrap();
    assert_eq!(c.proxy.upstream, Some("[2001:db8::1]:53".parse().unwrap()));
    assert_eq!(c.proxy.listen.len(), 2);
    assert_eq!(c.proxy.reject, RejectCode::Refused);
    assert_eq!(c.proxy.response_max_delay, Duration::from_millis(250));
}

#[test]
fn all_problems_reported_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let file = parse_file(Path::new("f.yaml"), "response-max-delay: soon\nmax-inflight: 0\n").unwrap();
    let flags = Flags {
        mode: Some("sideways".into()),
        listen: vec!["localhost".into()],
        upstream: Some("nowhere".into()),
        dns_reject_response_code: Some("NXDOMAIN".into()),
        upstream_timeout: Some("0s".into()),
        policies: Some(dir.path().join("missing")),
        ..Flags::default()
    };
    let errs = resolve(&file, &flags, &env(dir.path())).unwrap_err();
    let text = errs.to_string();
    for needle in [
        "--mode: \"sideways\"",
        "--listen: \"localhost\"",
        "--upstream: \"nowhere\"",
        "--dns-reject-response-code: \"NXDOMAIN\"",
        "config response-max-delay: \"soon\"",
        "--upstream-timeout: must be more than zero",
        "config max-inflight: must be at least 1",
        "--policies:",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    assert_eq!(errs.0.len(), 8, "{text}");
}

#[test]
fn hubble_keys_and_flags() {
    let dir = tempfile::tempdir().unwrap();
    let c = resolve(&FileConfig::default(), &Flags::default(), &env(dir.path())).unwrap();
    assert_eq!(c.hubble_listen, Some(fqdnd::hubble::ListenAddr::Unix(dir.path().join("state/hubble.sock"))));
    assert!(c.hubble_metrics.is_empty());
    let file = parse_file(
        Path::new("f.yaml"),
        "hubble-listen: 127.0.0.1:4244\nhubble-metrics: [dns, \"flow:labelsContext=source_namespace,source_app\"]\n",
    )
    .unwrap();
    let c = resolve(&file, &Flags::default(), &env(dir.path())).unwrap();
    assert_eq!(c.hubble_listen, Some(fqdnd::hubble::ListenAddr::Tcp("127.0.0.1:4244".parse().unwrap())));
    assert_eq!(c.hubble_metrics.to_string(), "dns flow:labelsContext=source_namespace,source_app");
    let flags = Flags { hubble_listen: Some("none".into()), hubble_metrics: Some("drop".into()), ..Flags::default() };
    let c = resolve(&file, &flags, &env(dir.path())).unwrap();
    assert_eq!((c.hubble_listen, c.hubble_metrics.to_string()), (None, "drop".to_string()));
    let logged = serde_json::to_value(resolve(&file, &Flags::default(), &env(dir.path())).unwrap()).unwrap();
    assert_eq!(logged["hubble-listen"], "127.0.0.1:4244");
    assert_eq!(logged["hubble-metrics"], "dns flow:labelsContext=source_namespace,source_app");

    let bad = Flags {
        hubble_listen: Some("localhost:4244".into()),
        hubble_metrics: Some("dns:query,http".into()),
        metrics_addr: Some("none".into()),
        ..Flags::default()
    };
    let text = resolve(&FileConfig::default(), &bad, &env(dir.path())).unwrap_err().to_string();
    for needle in ["--hubble-listen: \"localhost:4244\"", "--hubble-metrics: dns:query:", "--hubble-metrics: http:"] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    let admin =
        Flags { hubble_listen: Some(format!("unix:{}/state/fqdnd.sock", dir.path().display())), ..Flags::default() };
    let text = resolve(&FileConfig::default(), &admin, &env(dir.path())).unwrap_err().to_string();
    assert!(text.contains("is the admin socket"), "{text}");
    let no_server =
        Flags { hubble_metrics: Some("flow".into()), metrics_addr: Some("none".into()), ..Flags::default() };
    let text = resolve(&FileConfig::default(), &no_server, &env(dir.path())).unwrap_err().to_string();
    assert!(
        text.contains("--hubble-metrics: Hubble's metrics are served on /metrics, but metrics-addr is none"),
        "{text}"
    );
    let typo = parse_file(Path::new("f.yaml"), "hubble-listn: none\n").unwrap_err().to_string();
    assert!(typo.contains("hubble-listn"), "{typo}");
}

#[test]
fn flow_follower_queue_key_and_flag() {
    let dir = tempfile::tempdir().unwrap();
    let c = resolve(&FileConfig::default(), &Flags::default(), &env(dir.path())).unwrap();
    assert_eq!(c.flow_follower_queue, 1024);
    let queue = parse_file(Path::new("f.yaml"), "flow-follower-queue: 0\n").unwrap();
    let text = resolve(&queue, &Flags::default(), &env(dir.path())).unwrap_err().to_string();
    assert!(text.contains("config flow-follower-queue: must be at least 1"), "{text}");
    let c = resolve(&queue, &Flags { flow_follower_queue: Some(8), ..Flags::default() }, &env(dir.path())).unwrap();
    assert_eq!(c.flow_follower_queue, 8);
}

#[test]
fn quota_and_map_size_are_validated_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let file = parse_file(Path::new("f.yaml"), "max-learned-per-endpoint: 0\nallow-map-size: 4096\n").unwrap();
    let errs = resolve(&file, &Flags { allow_map_size: Some(0), ..Flags::default() }, &env(dir.path())).unwrap_err();
    assert_eq!(
        errs.0,
        [
            "config max-learned-per-endpoint: must be at least 1".to_string(),
            format!("--allow-map-size: 0 must be between 1 and {MAX_ALLOW_MAP_SIZE}"),
        ]
    );
    let file = parse_file(Path::new("f.yaml"), "max-learned-per-endpoint: 64\nallow-map-size: 4096\n").unwrap();
    let c = resolve(&file, &Flags::default(), &env(dir.path())).unwrap();
    assert_eq!((c.cache.max_learned_per_endpoint, c.allow_map_size), (64, 4096));
    let c = resolve(&FileConfig::default(), &Flags::default(), &env(dir.path())).unwrap();
    assert_eq!((c.cache.max_learned_per_endpoint, c.allow_map_size), (10_000, 262_144));
    let text = serde_json::to_string(&c).unwrap();
    assert!(
        text.contains("\"max-learned-per-endpoint\":10000") && text.contains("\"allow-map-size\":262144"),
        "{text}"
    );
}

#[test]
fn deny_response_is_drop_or_reject() {
    let dir = tempfile::tempdir().unwrap();
    let c = resolve(&FileConfig::default(), &Flags::default(), &env(dir.path())).unwrap();
    assert_eq!(c.deny_response, ebpf_redirect::DenyResponse::Drop);
    let file = parse_file(Path::new("f.yaml"), "deny-response: reject\n").unwrap();
    let c = resolve(&file, &Flags::default(), &env(dir.path())).unwrap();
    assert_eq!(c.deny_response, ebpf_redirect::DenyResponse::Reject);
    assert!(serde_json::to_string(&c).unwrap().contains("\"deny-response\":\"reject\""));
    assert!(!c.proxy.policy_audit_mode);
    let file = parse_file(Path::new("f.yaml"), "policy-audit-mode: true\n").unwrap();
    assert!(resolve(&file, &Flags::default(), &env(dir.path())).unwrap().proxy.policy_audit_mode);
    let flags = Flags { policy_audit_mode: true, ..Flags::default() };
    assert!(resolve(&FileConfig::default(), &flags, &env(dir.path())).unwrap().proxy.policy_audit_mode);
    let flags = Flags { deny_response: Some("RST".into()), ..Flags::default() };
    let errs = resolve(&file, &flags, &env(dir.path())).unwrap_err();
    assert_eq!(errs.0, ["--deny-response: \"RST\" is not a deny response; expected drop or reject"]);
}

#[test]
fn source_defaults_and_kubernetes_flags() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("policies")).unwrap();
    let c = resolve(&FileConfig::default(), &Flags::default(), &env(dir.path())).unwrap();
    assert_eq!(c.source, SourceKind::Files, "off-cluster default");
    let in_pod = Environment { in_cluster: true, ..env(dir.path()) };
    let c = resolve(&FileConfig::default(), &Flags::default(), &in_pod).unwrap();
    assert_eq!(c.source, SourceKind::Kubernetes, "in a pod, Kubernetes is the default");
    assert_eq!(c.policies, None, "./policies is not read in Kubernetes mode");
    let c =
        resolve(&FileConfig::default(), &Flags { source: Some("files".into()), ..Flags::default() }, &in_pod).unwrap();
    assert_eq!(c.source, SourceKind::Files, "the flag wins");

    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, "apiVersion: v1\nkind: Config\n").unwrap();
    let flags = Flags {
        source: Some("kubernetes".into()),
        kubeconfig: Some(kubeconfig.clone()),
        node_name: Some("node-a".into()),
        ..Flags::default()
    };
    let c = resolve(&FileConfig::default(), &flags, &env(dir.path())).unwrap();
    assert_eq!(
        (c.source, c.kubeconfig.as_deref(), c.node_name.as_str()),
        (SourceKind::Kubernetes, Some(kubeconfig.as_path()), "node-a")
    );
    let file = parse_file(Path::new("f.yaml"), "source: kubernetes\nnode-name: from-file\n").unwrap();
    assert_eq!(resolve(&file, &Flags::default(), &env(dir.path())).unwrap().node_name, "from-file");

    let bad = Flags { source: Some("k8s".into()), ..Flags::default() };
    let err = resolve(&FileConfig::default(), &bad, &env(dir.path())).unwrap_err().to_string();
    assert!(err.contains("--source: \"k8s\" is not a source"), "{err}");
    let mixed = Flags {
        source: Some("kubernetes".into()),
        policies: Some(dir.path().join("policies")),
        kubeconfig: Some(dir.path().join("missing")),
        ..Flags::default()
    };
    let err = resolve(&FileConfig::default(), &mixed, &env(dir.path())).unwrap_err();
    assert_eq!(err.0.len(), 2, "{err}");
    assert!(err.0[0].starts_with("--policies: only for --source files"), "{err}");
    assert!(err.0[1].starts_with("--kubeconfig:"), "{err}");
    let err =
        resolve(&FileConfig::default(), &Flags { kubeconfig: Some(kubeconfig), ..Flags::default() }, &env(dir.path()))
            .unwrap_err()
            .to_string();
    assert!(err.contains("--kubeconfig: only for --source kubernetes"), "{err}");
}

#[test]
fn max_ttl_default_flag_and_checks() {
    let dir = tempfile::tempdir().unwrap();
    let c = resolve(&FileConfig::default(), &Flags::default(), &env(dir.path())).unwrap();
    assert_eq!(c.cache.max_ttl, 86_400, "one day by default");
    let file = parse_file(Path::new("f.yaml"), "max-ttl: 600\nmin-ttl: 30\n").unwrap();
    assert_eq!(resolve(&file, &Flags::default(), &env(dir.path())).unwrap().cache.max_ttl, 600);
    let flags = Flags { max_ttl: Some(3600), ..Flags::default() };
    assert_eq!(resolve(&file, &flags, &env(dir.path())).unwrap().cache.max_ttl, 3600, "the flag wins");
    for (file, flags, needle) in [
        ("max-ttl: 0\n", Flags::default(), "config max-ttl: must be at least 1 second"),
        (
            "min-ttl: 100\n",
            Flags { max_ttl: Some(50), ..Flags::default() },
            "--max-ttl: 50 is below config min-ttl (100)",
        ),
    ] {
        let file = parse_file(Path::new("f.yaml"), file).unwrap();
        let err = resolve(&file, &flags, &env(dir.path())).unwrap_err().to_string();
        assert!(err.contains(needle), "{needle:?} not in {err}");
    }
    let logged = serde_json::to_string(&c).unwrap();
    assert!(logged.contains("\"max-ttl\":86400"), "{logged}");
}

#[test]
fn query_rate_per_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let c = resolve(&FileConfig::default(), &Flags::default(), &env(dir.path())).unwrap();
    assert_eq!((c.proxy.max_qps_per_endpoint, c.proxy.qps_burst_per_endpoint), (1000, 200));
    let file = parse_file(Path::new("f.yaml"), "max-qps-per-endpoint: 0\nqps-burst-per-endpoint: 0\n").unwrap();
    assert_eq!(resolve(&file, &Flags::default(), &env(dir.path())).unwrap().proxy.max_qps_per_endpoint, 0);
    let flags = Flags { max_qps_per_endpoint: Some(50), qps_burst_per_endpoint: Some(0), ..Flags::default() };
    let err = resolve(&FileConfig::default(), &flags, &env(dir.path())).unwrap_err().to_string();
    assert!(err.contains("--qps-burst-per-endpoint: must be at least 1"), "{err}");
}

#[test]
fn tcp_connection_caps() {
    let dir = tempfile::tempdir().unwrap();
    let c = resolve(&FileConfig::default(), &Flags::default(), &env(dir.path())).unwrap();
    assert_eq!((c.proxy.tcp_max_connections, c.proxy.tcp_max_connections_per_endpoint), (2048, 64));
    let file = parse_file(Path::new("f.yaml"), "max-tcp-connections: 100\n").unwrap();
    let flags = Flags { max_tcp_connections_per_endpoint: Some(8), ..Flags::default() };
    let c = resolve(&file, &flags, &env(dir.path())).unwrap();
    assert_eq!((c.proxy.tcp_max_connections, c.proxy.tcp_max_connections_per_endpoint), (100, 8));
    let small = parse_file(Path::new("f.yaml"), "max-tcp-connections: 10\n").unwrap();
    let c = resolve(&small, &Flags::default(), &env(dir.path())).unwrap();
    assert_eq!(c.proxy.tcp_max_connections_per_endpoint, 10, "the default share never exceeds the total");
    let flags = Flags { max_tcp_connections: Some(0), max_tcp_connections_per_endpoint: Some(5), ..Flags::default() };
    let err = resolve(&FileConfig::default(), &flags, &env(dir.path())).unwrap_err().to_string();
    assert!(err.contains("--max-tcp-connections: must be at least 1"), "{err}");
    assert!(err.contains("--max-tcp-connections-per-endpoint: 5 must be between 1 and"), "{err}");
}

#[test]
fn resolv_conf_cases() {
    let dir = tempfile::tempdir().unwrap();
    for (text, want) in [
        ("nameserver 10.0.0.2\n", Ok("10.0.0.2:53")),
        ("options ndots:5\nnameserver fe80::1%eth0\n", Ok("[fe80::1]:53")),
        ("#nameserver 1.1.1.1\n", Err(())),
        ("nameserver bogus\nnameserver 10.1.1.1\n", Ok("10.1.1.1:53")),
    ] {
        let p = dir.path().join("r");
        std::fs::write(&p, text).unwrap();
        let got = first_nameserver(&p).map_err(|_| ());
        assert_eq!(got, want.map(|s| s.parse().unwrap()), "{text:?}");
    }
}
