//! Kubernetes mode end to end: a real kube-apiserver 1.20 + etcd holds the Nodes, Pods,
//! Namespaces and CiliumNetworkPolicies; `fqdnd run --source kubernetes` runs in the node
//! namespace with the ServiceAccount token bound to deploy/rbac.yaml; real musl and glibc
//! lookups and TCP connects from pod namespaces give the verdicts. Root and the cached API
//! server only (tests/support/src/kube.rs); the harness is tests/common/kube_cluster.rs.
//!
//! The verdicts are those of tests/netns_seed.rs (policies from files), reached with
//! `kubectl apply` instead.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use common::clients::Libc;
use common::kube_cluster::{KubeCluster, NODE, PodNet};
use common::topology::{
    CONNECT, DROPPED_CONNECT, GREETING, KUBE_DNS_IP, WWW_GOOGLE4, WWW_MICROSOFT4, WWW_MICROSOFT6, metric_sum,
    seed_stage,
};
use common::{kube, privileged};
use serde_json::Value;

fn available(test: &str) -> bool {
    privileged::available(test) && kube::available(test)
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    path.iter().fold(v, |v, k| &v[*k]).as_str().unwrap_or_default()
}

fn u64_at(v: &Value, path: &[&str]) -> u64 {
    path.iter().fold(v, |v, k| &v[*k]).as_u64().unwrap_or_default()
}

/// Resolve www.microsoft.com from `pod` with `libc` and connect to it on 80 and 443.
fn reaches_www_microsoft(c: &KubeCluster, pod: &str, libc: Libc) {
    for port in [80, 443] {
        let r = c.getaddrinfo(pod, libc, "www.microsoft.com", Some(port));
        assert_eq!(r.exit_code, 0, "{pod} {libc:?} www.microsoft.com:{port}: {r:?}\nagent log:\n{}", c.log());
        assert!(r.connected, "{pod} {libc:?} www.microsoft.com:{port} resolved but did not connect: {r:?}");
        assert!(r.addrs.contains(&WWW_MICROSOFT4) && r.addrs.contains(&WWW_MICROSOFT6), "{libc:?}: A and AAAA: {r:?}");
    }
}

fn dig_www(c: &KubeCluster, pod: &str) -> Result<Vec<String>, String> {
    let r = c.dig(pod, "www.microsoft.com", "A", &[])?;
    if r.status == "NOERROR" { Ok(r.data("A")) } else { Err(format!("status {}: {}", r.status, r.raw)) }
}

fn is_tcp_drop(f: &Value, sport: u16, dst: SocketAddr) -> bool {
    str_at(f, &["verdict"]) == "DROPPED"
        && str_at(f, &["IP", "destination"]) == dst.ip().to_string()
        && u64_at(f, &["l4", "TCP", "source_port"]) == u64::from(sport)
        && u64_at(f, &["l4", "TCP", "destination_port"]) == u64::from(dst.port())
}

/// Connect from `pod` to `dst`, expect it to fail, and return the drop flow that says why.
fn assert_dropped(c: &KubeCluster, pod: &str, dst: SocketAddr, why: &str) -> Value {
    let (sport, res) = c.connect(pod, dst, DROPPED_CONNECT);
    assert!(res.is_err(), "{why}: {pod}'s connect to {dst} went through: {res:?}\nagent log:\n{}", c.log());
    c.wait_flow(&["--type", "drop"], &format!("for {pod}'s dropped connect :{sport} -> {dst} ({why})"), |f| {
        is_tcp_drop(f, sport, dst)
    })
}

fn assert_connects(c: &KubeCluster, pod: &str, dst: SocketAddr, why: &str) {
    let (_, res) = c.connect(pod, dst, CONNECT);
    let got = res.unwrap_or_else(|e| panic!("{why}: {pod} -> {dst}: {e}\nagent log:\n{}", c.log()));
    assert_eq!(got, GREETING, "{why}");
}

fn dns_flow<'a>(flows: &'a [Value], l7_type: &str, query: &str) -> Option<&'a Value> {
    flows
        .iter()
        .map(|l| &l["flow"])
        .find(|f| str_at(f, &["l7", "type"]) == l7_type && str_at(f, &["l7", "dns", "query"]) == query)
}

/// The value of one series (`name{labels}`) of a metrics page, 0 if absent.
fn series(page: &str, series: &str) -> f64 {
    page.lines().find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok())).unwrap_or(0.0)
}

const GOOGLE80: SocketAddr = SocketAddr::new(WWW_GOOGLE4, 80);

/// Stage 2 of the seed: default deny both ways, nothing allowed.
fn deny_all(c: &mut KubeCluster) {
    c.apply_file(&seed_stage(2));
}

#[test]
fn seed_stages_as_a_kubernetes_user() {
    if !available("seed_stages_as_a_kubernetes_user") {
        return;
    }
    let mut c = KubeCluster::start(PodNet::Routed);
    let www80 = SocketAddr::new(WWW_MICROSOFT4, 80);

    // Stage 1: alpine is selected, nothing is restricted.
    c.apply_file(&seed_stage(1));
    reaches_www_microsoft(&c, "alpine", Libc::Musl);
    reaches_www_microsoft(&c, "alpine", Libc::Glibc);
    assert_eq!(dig_www(&c, "alpine").expect("stage 1: dig"), [WWW_MICROSOFT4.to_string()]);

    // Stage 2: egress default deny with nothing allowed; DNS too.
    c.apply_file(&seed_stage(2));
    let dig = c.dig("alpine", "www.microsoft.com", "A", &[]);
    assert!(dig.is_err(), "stage 2: DNS must fail, dig got {dig:?}");
    c.wait_flow(&["--type", "drop"], "for the dropped DNS query (stage 2)", |f| {
        str_at(f, &["IP", "destination"]) == KUBE_DNS_IP.to_string()
            && u64_at(f, &["l4", "UDP", "destination_port"]) == 53
    });
    assert_dropped(&c, "alpine", www80, "stage 2");

    // Stage 3: UDP 53 to kube-dns (a pod of node-b, selected by its labels) allowed, without
    // DNS rules, so not proxied; TCP still denied.
    c.apply_file(&seed_stage(3));
    assert_eq!(dig_www(&c, "alpine").expect("stage 3: dig"), [WWW_MICROSOFT4.to_string()]);
    let r = c.getaddrinfo("alpine", Libc::Musl, "www.microsoft.com", None);
    assert_eq!(r.exit_code, 0, "stage 3: musl resolves: {r:?}");
    assert_dropped(&c, "alpine", www80, "stage 3");
    let dns = c.observe(&["--type", "dns"]);
    assert!(dns_flow(&dns, "REQUEST", "www.microsoft.com.").is_none(), "stage 3 must not proxy DNS: {dns:?}");

    // Stage 4: DNS proxied, connections only to what *.microsoft.com resolved to.
    c.apply_file(&seed_stage(4));
    reaches_www_microsoft(&c, "alpine", Libc::Musl);
    reaches_www_microsoft(&c, "alpine", Libc::Glibc);
    let dns = c.observe(&["--type", "dns", "--pod", "default/alpine"]);
    for name in [
        "www.microsoft.com.default.svc.cluster.local.",
        "www.microsoft.com.svc.cluster.local.",
        "www.microsoft.com.cluster.local.",
    ] {
        let answer = dns_flow(&dns, "RESPONSE", name).unwrap_or_else(|| panic!("no answer flow for {name}: {dns:?}"));
        assert_eq!(u64_at(answer, &["l7", "dns", "rcode"]), 3, "NXDOMAIN from kube-dns for {name}: {answer}");
    }
    let r = c.getaddrinfo("alpine", Libc::Musl, "www.google.com", None);
    assert_eq!(r.exit_code, 0, "stage 4: www.google.com resolves: {r:?}");
    let drop = assert_dropped(&c, "alpine", SocketAddr::new(WWW_GOOGLE4, 443), "stage 4, www.google.com");
    assert_eq!(str_at(&drop, &["source", "pod_name"]), "alpine", "{drop}");

    // Only this node's pod is attached: kube-dns (node-b) is a peer, never an endpoint here.
    assert_eq!(c.attached_interfaces(), ["lxcalpine"]);
    let page = c.metrics();
    for resource in ["ciliumnetworkpolicies", "ciliumclusterwidenetworkpolicies", "pods", "namespaces", "nodes"] {
        let synced = format!("fqdnd_k8s_synced{{resource=\"{resource}\"}} 1");
        assert!(page.contains(&synced), "missing {synced:?} in\n{page}");
    }
    assert!(
        metric_sum(&page, "fqdnd_k8s_events_total") > 0.0
            && page.contains("fqdnd_k8s_events_total{resource=\"ciliumnetworkpolicies\",kind=\"apply\"}"),
        "{page}"
    );
    assert!(page.contains("fqdnd_k8s_last_sync_age_seconds{resource=\"pods\"}"), "{page}");
    assert_eq!(c.readyz().0, 200);
}

#[test]
fn bridge_cni_pod_is_found_through_neighbour_and_fdb() {
    if !available("bridge_cni_pod_is_found_through_neighbour_and_fdb") {
        return;
    }
    let mut c = KubeCluster::start(PodNet::Bridge);
    c.apply_file(&seed_stage(1));
    reaches_www_microsoft(&c, "alpine", Libc::Musl);
    deny_all(&mut c);
    let attached = c.attached_interfaces();
    assert!(attached.contains(&"lxcalpine".to_string()), "the bridge port, not br0: {attached:?}\n{}", c.log());
    assert!(!attached.contains(&"br0".to_string()), "{attached:?}");
    assert_dropped(&c, "alpine", GOOGLE80, "stage 2 on a bridge");
    c.apply_file(&seed_stage(3));
    assert_eq!(dig_www(&c, "alpine").expect("stage 3 on a bridge: dig"), [WWW_MICROSOFT4.to_string()]);
    c.apply_file(&seed_stage(4));
    reaches_www_microsoft(&c, "alpine", Libc::Musl);
    assert_dropped(&c, "alpine", SocketAddr::new(WWW_GOOGLE4, 443), "stage 4 on a bridge, www.google.com");
}

#[test]
fn pod_created_after_the_policy_is_enforced() {
    if !available("pod_created_after_the_policy_is_enforced") {
        return;
    }
    let mut c = KubeCluster::start(PodNet::Routed);
    c.apply_file(&seed_stage(4));
    // The CNI sets up the network, then the kubelet reports the IPs.
    c.add_pod_network("alpine2", 6);
    c.kube.create_pod("default", "alpine2", NODE, &[("app", "alpine")]).unwrap();
    let ips = c.pod("alpine2").ips();
    c.changed("alpine2 running", |k| k.set_pod_running("default", "alpine2", &ips).unwrap());
    reaches_www_microsoft(&c, "alpine2", Libc::Musl);
    assert_dropped(&c, "alpine2", SocketAddr::new(WWW_GOOGLE4, 443), "the new pod is policed");
    let mut attached = c.attached_interfaces();
    attached.sort();
    assert_eq!(attached, ["lxcalpine", "lxcalpine2"]);
}

#[test]
fn relabelled_pod_is_released_and_enforced_again() {
    if !available("relabelled_pod_is_released_and_enforced_again") {
        return;
    }
    let mut c = KubeCluster::start(PodNet::Routed);
    deny_all(&mut c);
    assert_dropped(&c, "alpine", GOOGLE80, "selected");
    c.changed("relabel out", |k| {
        k.kubectl_ok(&["label", "pod", "-n", "default", "alpine", "app=other", "--overwrite"]).unwrap();
    });
    assert_connects(&c, "alpine", GOOGLE80, "app=other is outside the selector");
    assert_eq!(dig_www(&c, "alpine").expect("DNS works again"), [WWW_MICROSOFT4.to_string()]);
    c.changed("relabel in", |k| {
        k.kubectl_ok(&["label", "pod", "-n", "default", "alpine", "app=alpine", "--overwrite"]).unwrap();
    });
    assert_dropped(&c, "alpine", GOOGLE80, "selected again");
}

#[test]
fn audit_annotation_puts_one_pod_in_audit_mode() {
    if !available("audit_annotation_puts_one_pod_in_audit_mode") {
        return;
    }
    let mut c = KubeCluster::start(PodNet::Routed);
    c.apply_file(&seed_stage(4));
    assert_dropped(&c, "alpine", GOOGLE80, "stage 4 does not allow www.google.com's address");
    c.changed("annotate audit mode on", |k| {
        k.kubectl_ok(&["annotate", "pod", "-n", "default", "alpine", "fqdnd.io/policy-audit-mode=true"]).unwrap();
    });
    let (sport, res) = c.connect("alpine", GOOGLE80, CONNECT);
    assert_eq!(res.unwrap_or_else(|e| panic!("audit mode lets it through: {e}\n{}", c.log())), GREETING);
    let f = c.wait_flow(&["--verdict", "AUDIT"], "for the audited connect", |f| {
        str_at(f, &["verdict"]) == "AUDIT" && u64_at(f, &["l4", "TCP", "source_port"]) == u64::from(sport)
    });
    assert_eq!(str_at(&f, &["IP", "destination"]), WWW_GOOGLE4.to_string(), "{f}");
    c.changed("annotate audit mode off", |k| {
        k.kubectl_ok(&[
            "annotate",
            "pod",
            "-n",
            "default",
            "alpine",
            "fqdnd.io/policy-audit-mode=false",
            "--overwrite",
        ])
        .unwrap();
    });
    assert_dropped(&c, "alpine", GOOGLE80, "audit mode off: enforced again");
}

const LOCKED_NAMESPACES: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata:
  name: locked-namespaces
spec:
  endpointSelector:
    matchLabels:
      "k8s:io.cilium.k8s.namespace.labels.team": locked
  egress:
  - {}
"#;

#[test]
fn namespace_label_moves_pods_in_and_out_of_a_ccnp() {
    if !available("namespace_label_moves_pods_in_and_out_of_a_ccnp") {
        return;
    }
    let mut c = KubeCluster::start(PodNet::Routed);
    c.apply("the CCNP", LOCKED_NAMESPACES);
    assert_connects(&c, "alpine", GOOGLE80, "default is not labelled team=locked");
    c.changed("label default team=locked", |k| k.label_namespace("default", &[("team", "locked")]).unwrap());
    assert_dropped(&c, "alpine", GOOGLE80, "default labelled team=locked");
    c.changed("label default team=open", |k| k.label_namespace("default", &[("team", "open")]).unwrap());
    assert_connects(&c, "alpine", GOOGLE80, "default relabelled team=open");
}

/// Entries of `endpoint` in the datapath's pinned per-endpoint maps (bpftool, hex keys: the LPM
/// prefix length, then the endpoint id, both little endian).
fn map_entries_of(c: &KubeCluster, endpoint: u32) -> usize {
    let mut n = 0;
    for map in ["fqdnd_allow4", "fqdnd_allow6", "fqdnd_redir4", "fqdnd_redir6", "fqdnd_deny4", "fqdnd_deny6"] {
        let pin = c.bpffs_dir().join("maps").join(map);
        let out = std::process::Command::new("bpftool")
            .args(["-j", "map", "dump", "pinned"])
            .arg(&pin)
            .output()
            .expect("bpftool");
        assert!(out.status.success(), "bpftool map dump {}: {}", pin.display(), String::from_utf8_lossy(&out.stderr));
        let entries: Value = serde_json::from_slice(&out.stdout).expect("bpftool JSON");
        for e in entries.as_array().into_iter().flatten() {
            let bytes: Vec<u8> = e["key"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|b| b.as_str().and_then(|s| u8::from_str_radix(s.trim_start_matches("0x"), 16).ok()))
                .collect();
            if bytes.len() >= 8 && u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]) == endpoint {
                n += 1;
            }
        }
    }
    n
}

#[test]
fn deleted_pod_leaves_no_maps() {
    if !available("deleted_pod_leaves_no_maps") {
        return;
    }
    let mut c = KubeCluster::start(PodNet::Routed);
    c.apply_file(&seed_stage(4));
    reaches_www_microsoft(&c, "alpine", Libc::Musl);
    let id = policy_sync::source::ids::preferred_id(&"default/alpine".parse().unwrap());
    let before = map_entries_of(&c, id);
    assert!(before > 0, "alpine's rules and learned addresses are in the maps");
    c.changed("deleting the pod", |k| k.delete_pod("default", "alpine").unwrap());
    assert_eq!(map_entries_of(&c, id), 0, "the deleted pod's entries are gone (had {before})");
    assert!(c.attached_interfaces().is_empty(), "{:?}", c.attached_interfaces());
}

#[test]
fn api_server_outage_keeps_enforcement_and_watches_resume() {
    if !available("api_server_outage_keeps_enforcement_and_watches_resume") {
        return;
    }
    let mut c = KubeCluster::start(PodNet::Routed);
    c.apply_file(&seed_stage(4));
    reaches_www_microsoft(&c, "alpine", Libc::Musl);

    let lists_done = |page: &str, resource: &str| {
        series(page, &format!("fqdnd_k8s_events_total{{resource=\"{resource}\",kind=\"init_done\"}}"))
    };
    const RESOURCES: [&str; 5] =
        ["ciliumnetworkpolicies", "ciliumclusterwidenetworkpolicies", "pods", "namespaces", "nodes"];
    let before = c.metrics();
    let offset = c.log().len();
    c.kube.stop_apiserver().unwrap();
    // The watches fail (connections reset, then refused): nothing in force changes.
    let deadline = Instant::now() + Duration::from_secs(60);
    while metric_sum(&c.metrics(), "fqdnd_k8s_watch_restarts_total") == 0.0 {
        assert!(Instant::now() < deadline, "the agent never noticed the outage:\n{}", c.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    reaches_www_microsoft(&c, "alpine", Libc::Musl);
    reaches_www_microsoft(&c, "alpine", Libc::Glibc);
    assert_dropped(&c, "alpine", SocketAddr::new(WWW_GOOGLE4, 443), "during the outage");
    assert_eq!(c.readyz().0, 200, "still ready: the last snapshot is enforced");

    c.kube.start_apiserver().unwrap();
    // The watches relist (a watch whose resourceVersion the new server's cache no longer has
    // gets 410 Gone; one that resumes where it was need not), and a relist of what is
    // unchanged changes nothing: no snapshot at all, so no rule was removed and re-added.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let page = c.metrics();
        let relisted: Vec<&str> =
            RESOURCES.iter().copied().filter(|r| lists_done(&page, r) > lists_done(&before, r)).collect();
        if relisted.contains(&"pods") {
            eprintln!("relisted after the restart: {relisted:?}");
            break;
        }
        assert!(Instant::now() < deadline, "the pods watch never relisted after the restart:\n{page}\n{}", c.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    let since = c.log()[offset..].to_string();
    assert!(!since.contains("kubernetes snapshot"), "the relist made a snapshot:\n{since}");
    // The watches resume: a change made after the restart is enforced.
    deny_all(&mut c);
    assert!(c.dig("alpine", "www.microsoft.com", "A", &[]).is_err(), "stage 2 after the restart");
    assert_dropped(&c, "alpine", SocketAddr::new(WWW_MICROSOFT4, 80), "stage 2 after the restart");
}

#[test]
fn invalid_cnp_keeps_the_previous_version_and_records_an_event() {
    if !available("invalid_cnp_keeps_the_previous_version_and_records_an_event") {
        return;
    }
    let mut c = KubeCluster::start(PodNet::Routed);
    c.apply_file(&seed_stage(4));
    assert_eq!(metric_sum(&c.metrics(), "fqdnd_policy_load_errors_total"), 0.0);

    let broken = std::fs::read_to_string(seed_stage(4)).unwrap().replace("- toFQDNs:", "- toFQDN:");
    let file = c.dir.path().join("broken.yaml");
    std::fs::write(&file, &broken).unwrap();
    // What `fqdnd policy check` says about it: the agent must say the same.
    let check =
        std::process::Command::new(env!("CARGO_BIN_EXE_fqdnd")).args(["policy", "check"]).arg(&file).output().unwrap();
    assert!(!check.status.success());
    let check = String::from_utf8_lossy(&check.stdout).into_owned() + &String::from_utf8_lossy(&check.stderr);
    let field = "spec.egress[1].toFQDN";
    let line = check.lines().find(|l| l.contains(field)).unwrap_or_else(|| panic!("policy check output: {check}"));
    let message = line.split_once(&format!("{field}: ")).map(|(_, m)| m.to_string()).expect("field: message");

    c.apply_file(&file);
    assert_eq!(metric_sum(&c.metrics(), "fqdnd_policy_load_errors_total"), 1.0, "one rejected version");
    assert!(
        c.log().contains(&format!("CiliumNetworkPolicy default/locking-down-alpine: {field}: {message}")),
        "{}",
        c.log()
    );
    // Version 1 (stage 4) is still enforced: *.microsoft.com reachable, google dropped.
    reaches_www_microsoft(&c, "alpine", Libc::Musl);
    assert_dropped(&c, "alpine", SocketAddr::new(WWW_GOOGLE4, 443), "the last valid version");

    // The Event, with reason and field path, as `kubectl describe cnp` shows it.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let described = c.kube.kubectl_ok(&["describe", "cnp", "-n", "default", "locking-down-alpine"]).unwrap();
        if described.contains("PolicyInvalid") && described.contains(field) {
            assert!(described.contains("Warning"), "{described}");
            break;
        }
        assert!(Instant::now() < deadline, "no PolicyInvalid event in kubectl describe:\n{described}\n{}", c.log());
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn unreachable_api_server_at_start_enforces_the_saved_state() {
    if !available("unreachable_api_server_at_start_enforces_the_saved_state") {
        return;
    }
    let mut c = KubeCluster::start(PodNet::Routed);
    c.apply_file(&seed_stage(4));
    let state = c.state_dir().join("kubernetes-state.json");
    // The state is written by its own task just after each snapshot: wait for this one.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&state).is_ok_and(|t| t.contains("locking-down-alpine")) {
        assert!(Instant::now() < deadline, "{} never held the policy:\n{}", state.display(), c.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&state).expect("the saved state").permissions());
    assert_eq!(mode & 0o777, 0o600, "{}", state.display());

    c.kill_agent();
    c.kube.stop_apiserver().unwrap();
    let offset = c.log().len();
    c.start_agent();
    assert!(c.log()[offset..].contains("enforcing the last Kubernetes state seen"), "{}", c.log());
    assert!(c.metrics().contains("fqdnd_k8s_state_restored 1"));
    // Logged once per backoff step (1st, 2nd, 4th... failure), not once per attempt.
    let deadline = Instant::now() + Duration::from_secs(60);
    while series(&c.metrics(), "fqdnd_k8s_watch_restarts_total{resource=\"pods\"}") < 3.0 {
        assert!(Instant::now() < deadline, "the agent is not retrying:\n{}", c.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    let restarts = series(&c.metrics(), "fqdnd_k8s_watch_restarts_total{resource=\"pods\"}");
    let logged = c.log()[offset..]
        .lines()
        .filter(|l| l.contains("resource=\"pods\"") || l.contains("resource=pods"))
        .filter(|l| l.contains("retrying with backoff"))
        .count();
    assert!(logged >= 1 && (logged as f64) < restarts, "{logged} lines for {restarts} failures:\n{}", c.log());

    reaches_www_microsoft(&c, "alpine", Libc::Musl);
    assert_dropped(&c, "alpine", SocketAddr::new(WWW_GOOGLE4, 443), "the saved stage 4");

    c.kube.start_apiserver().unwrap();
    deny_all(&mut c);
    assert_dropped(&c, "alpine", SocketAddr::new(WWW_MICROSOFT4, 80), "stage 2 once the API server is back");
}

#[test]
fn rbac_denial_names_the_resource_and_verb() {
    if !available("rbac_denial_names_the_resource_and_verb") {
        return;
    }
    let mut c = KubeCluster::build(PodNet::Routed);
    c.kube.kubectl_ok(&["delete", "clusterrolebinding", "fqdnd"]).unwrap();
    // --kubeconfig as a flag this time (the other tests use $KUBECONFIG).
    let kubeconfig = c.kube.kubeconfig_agent().display().to_string();
    c.spawn_agent(&["--kubeconfig", &kubeconfig]);
    let offset = 0;
    c.wait_log_after(offset, "RBAC: the agent may not list pods cluster-wide", "the RBAC error");
    let log = c.log();
    let line = log.lines().find(|l| l.contains("RBAC: the agent may not list pods")).unwrap();
    assert!(line.contains("deploy/rbac.yaml") && line.contains("cannot list resource \"pods\""), "{line}");
    assert!(log.contains("RBAC: the agent may not list ciliumnetworkpolicies"), "{log}");
    let (code, body) = c.readyz();
    assert_eq!(code, 503, "not ready without the lists: {body}");
    // Granted, the watches list on their next attempt and the agent becomes ready.
    c.kube
        .kubectl_ok(&["apply", "-f", &common::paths::workspace().join("deploy/rbac.yaml").display().to_string()])
        .unwrap();
    c.wait_ready();
    let ip: IpAddr = WWW_GOOGLE4;
    deny_all(&mut c);
    assert_dropped(&c, "alpine", SocketAddr::new(ip, 80), "enforced once allowed to read");
}
