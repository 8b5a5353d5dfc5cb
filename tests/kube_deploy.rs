//! deploy/ against a real kube-apiserver 1.20 + etcd on loopback: the CRDs are accepted and
//! establish, every policy fixture fqdnd accepts is accepted verbatim (and stored as written),
//! the schema rejects malformed DNS names with the field's path, the DaemonSet is accepted, and
//! the agent's ServiceAccount may do exactly what the agent needs. Also the harness's pod
//! plumbing: a pod bound to a node gets its IPs through the status subresource, as from a kubelet.

mod common;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::kube::{self, KubeApiserver};

const CNP_CRD: &str = "ciliumnetworkpolicies.cilium.io";
const CCNP_CRD: &str = "ciliumclusterwidenetworkpolicies.cilium.io";

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn repo_str(path: &str) -> String {
    repo(path).display().to_string()
}

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Every policy fixture file (fixtures/policies/*/*.yaml), sorted.
fn policy_fixtures() -> Vec<PathBuf> {
    let mut files = Vec::new();
    for dir in std::fs::read_dir(repo("fixtures/policies")).unwrap() {
        let dir = dir.unwrap().path();
        if !dir.is_dir() {
            continue;
        }
        for f in std::fs::read_dir(&dir).unwrap() {
            let f = f.unwrap().path();
            if f.extension().is_some_and(|e| e == "yaml") {
                files.push(f);
            }
        }
    }
    files.sort();
    files
}

/// What `fqdnd policy check FILE` says: the same judgement the agent applies to policies it reads.
fn fqdnd_accepts(file: &Path) -> bool {
    let out =
        Command::new(env!("CARGO_BIN_EXE_fqdnd")).args(["policy", "check"]).arg(file).output().expect("run fqdnd");
    out.status.success()
}

/// The objects of `file` as kubectl sends them (YAML to JSON, nothing defaulted).
fn as_sent(kube: &KubeApiserver, file: &str) -> Vec<serde_json::Value> {
    let text = kube.kubectl_ok(&["create", "--dry-run=client", "-o", "json", "-f", file]).unwrap();
    // One JSON document per object, one after the other.
    serde_json::Deserializer::from_str(&text).into_iter().collect::<Result<_, _>>().unwrap()
}

/// The stored spec/specs of a policy object, as the server returns it.
fn stored_rules(kube: &KubeApiserver, sent: &serde_json::Value, namespace: &str) -> serde_json::Value {
    let name = sent["metadata"]["name"].as_str().unwrap();
    let stored = match sent["kind"].as_str().unwrap() {
        "CiliumNetworkPolicy" => kube.get_json(&["cnp", "-n", namespace, name]).unwrap(),
        "CiliumClusterwideNetworkPolicy" => kube.get_json(&["ccnp", name]).unwrap(),
        other => panic!("{other} in a policy fixture"),
    };
    serde_json::json!({ "spec": stored["spec"], "specs": stored["specs"] })
}

fn rules_of(sent: &serde_json::Value) -> serde_json::Value {
    serde_json::json!({ "spec": sent["spec"], "specs": sent["specs"] })
}

/// `kubectl auth can-i --list` as the agent: its resource rules as (resource, verbs) rows.
fn agent_resource_rules(kube: &KubeApiserver) -> BTreeSet<(String, String)> {
    let out = kube.kubectl_as_agent(&["auth", "can-i", "--list"]);
    assert!(out.status.success(), "auth can-i --list as the agent: {}", stderr_of(&out));
    // Columns: Resources, Non-Resource URLs, Resource Names, Verbs. Rows for non-resource URLs
    // start with blanks; verbs are the last bracketed group.
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(1)
        .filter(|l| !l.starts_with(' '))
        .map(|l| {
            let resource = l.split_whitespace().next().unwrap().to_string();
            let verbs = &l[l.rfind('[').unwrap()..];
            (resource, verbs.to_string())
        })
        .collect()
}

#[test]
fn deploy_manifests_and_policies_against_a_real_apiserver() {
    if !kube::available("deploy_manifests_and_policies_against_a_real_apiserver") {
        return;
    }
    let kube = KubeApiserver::start().unwrap();

    // The agent's rights before deploy/rbac.yaml: what every authenticated user has.
    let baseline = agent_resource_rules(&kube);

    // CRDs: accepted, established, with Cilium's names and scopes.
    kube.kubectl_ok(&["apply", "-f", &repo_str("deploy/crds")]).unwrap();
    kube.kubectl_ok(&[
        "wait",
        "--for=condition=Established",
        &format!("crd/{CNP_CRD}"),
        &format!("crd/{CCNP_CRD}"),
        "--timeout=60s",
    ])
    .unwrap();
    let cnp = kube.get_json(&["crd", CNP_CRD]).unwrap();
    let ccnp = kube.get_json(&["crd", CCNP_CRD]).unwrap();
    assert_eq!(cnp["spec"]["scope"], "Namespaced");
    assert_eq!(cnp["spec"]["names"]["shortNames"], serde_json::json!(["cnp", "ciliumnp"]));
    assert_eq!(ccnp["spec"]["scope"], "Cluster");
    assert_eq!(ccnp["spec"]["names"]["shortNames"], serde_json::json!(["ccnp"]));
    for crd in [&cnp, &ccnp] {
        let version = &crd["spec"]["versions"][0];
        assert_eq!(
            (&version["name"], &version["served"], &version["storage"]),
            (&"v2".into(), &true.into(), &true.into())
        );
        assert_eq!(version["subresources"]["status"], serde_json::json!({}), "status subresource");
        let conditions = crd["status"]["conditions"].as_array().unwrap();
        assert!(
            !conditions.iter().any(|c| c["type"] == "NonStructuralSchema"),
            "the schema must be structural: {conditions:?}"
        );
    }
    // The two files repeat one schema (YAML anchors do not cross files): they must not drift.
    assert!(
        cnp["spec"]["versions"][0]["schema"] == ccnp["spec"]["versions"][0]["schema"],
        "deploy/crds/: the CNP and CCNP schemas differ (diff the two files below their names)"
    );

    // RBAC and the DaemonSet are accepted as they are.
    kube.kubectl_ok(&["apply", "-f", &repo_str("deploy/rbac.yaml")]).unwrap();
    kube.kubectl_ok(&["apply", "-f", &repo_str("deploy/daemonset.yaml")]).unwrap();
    let ds = kube.kubectl_ok(&["get", "ds", "-n", "kube-system", "fqdnd"]).unwrap();
    assert!(ds.lines().nth(1).is_some_and(|l| l.starts_with("fqdnd ")), "kubectl get ds: {ds}");
    let ds = kube.get_json(&["ds", "-n", "kube-system", "fqdnd"]).unwrap();
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(pod["serviceAccountName"], "fqdnd");
    let agent = &pod["containers"][0];
    let args: Vec<&str> = agent["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    assert!(args.windows(2).any(|w| w == ["--source", "kubernetes"]), "args: {args:?}");
    assert!(args.windows(2).any(|w| w == ["--mode", "transparent"]), "args: {args:?}");
    let node_name = agent["env"].as_array().unwrap().iter().find(|e| e["name"] == "NODE_NAME").expect("NODE_NAME env");
    assert_eq!(node_name["valueFrom"]["fieldRef"]["fieldPath"], "spec.nodeName");
    assert_ne!(agent["securityContext"]["privileged"], true, "the agent container itself is not privileged");
    assert_eq!(
        agent["securityContext"]["capabilities"],
        serde_json::json!({ "drop": ["ALL"], "add": ["NET_ADMIN", "BPF", "PERFMON"] }),
        "the agent's capabilities (deploy/daemonset.yaml says why each)"
    );
    assert_eq!(agent["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(agent["livenessProbe"]["httpGet"]["path"], "/healthz");

    // The seed tutorial's four stages, in order, on one object.
    for stage in ["1-locking-down-alpine", "2-deny-everything", "3-allow-dns", "4-allow-fqdn"] {
        let file = repo_str(&format!("fixtures/policies/seed/{stage}.yaml"));
        let out = kube.kubectl_ok(&["apply", "-n", "default", "-f", &file]).unwrap();
        assert!(out.contains("ciliumnetworkpolicy.cilium.io/locking-down-alpine"), "{stage}: {out}");
        let sent = &as_sent(&kube, &file)[0];
        assert_eq!(stored_rules(&kube, sent, "default"), rules_of(sent), "{stage}: stored differs from sent");
    }
    let stage4 = kube.get_json(&["cnp", "-n", "default", "locking-down-alpine"]).unwrap();
    let egress = &stage4["spec"]["egress"];
    assert_eq!(egress[0]["toPorts"][0]["rules"]["dns"], serde_json::json!([{ "matchPattern": "*" }]));
    assert_eq!(egress[0]["toPorts"][0]["ports"], serde_json::json!([{ "port": "53", "protocol": "UDP" }]));
    assert_eq!(egress[1]["toFQDNs"], serde_json::json!([{ "matchPattern": "*.microsoft.com" }]));

    // Every fixture fqdnd accepts is accepted verbatim and stored as written (nothing pruned),
    // each in a namespace of its own (several share a name).
    let mut checked = 0;
    for (i, file) in policy_fixtures().iter().enumerate() {
        if !fqdnd_accepts(file) {
            continue;
        }
        let path = file.display().to_string();
        let sent = as_sent(&kube, &path);
        // kubectl refuses -n when an object names another namespace: those go where they say.
        let ns = match sent[0]["metadata"]["namespace"].as_str() {
            Some(own) => own.to_string(),
            None => {
                let ns = format!("fixture-{i}");
                kube.create_namespace(&ns, &[]).unwrap();
                ns
            }
        };
        let out = kube.kubectl(&["apply", "-n", &ns, "-f", &path]);
        assert!(out.status.success(), "{path}: fqdnd accepts it, the CRD refuses it: {}", stderr_of(&out));
        for sent in &sent {
            assert_eq!(stored_rules(&kube, sent, &ns), rules_of(sent), "{path}: stored differs from sent");
        }
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} fixtures were valid for fqdnd: the fixture set changed?");

    // The schema keeps Cilium's name validation: an empty label is refused, naming the field.
    let bad = |name: &str, egress: &str| {
        format!(
            "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: {name}\n  namespace: default\n\
             spec:\n  endpointSelector: {{}}\n  egress:\n{egress}"
        )
    };
    let cases = [
        ("bad-fqdn", "  - toFQDNs: [{matchName: \"a..b.com\"}]\n", "spec.egress.toFQDNs.matchName", "a..b.com"),
        (
            "bad-dns",
            "  - toPorts: [{ports: [{port: \"53\"}], rules: {dns: [{matchPattern: \"*..b.com\"}]}}]\n",
            "spec.egress.toPorts.rules.dns.matchPattern",
            "*..b.com",
        ),
        (
            "bad-scheme",
            "  - toFQDNs: [{matchPattern: \"https://*.example.com\"}]\n",
            "spec.egress.toFQDNs.matchPattern",
            "https://",
        ),
        ("bad-port", "  - toPorts: [{ports: [{port: 70000}]}]\n", "spec.egress.toPorts.ports.port", "65535"),
        (
            "bad-proto",
            "  - toPorts: [{ports: [{port: \"53\", protocol: tcp}]}]\n",
            "spec.egress.toPorts.ports.protocol",
            "tcp",
        ),
    ];
    for (name, egress, field, value) in cases {
        let out = kube.kubectl_stdin(&["apply", "-f", "-"], &bad(name, egress));
        let err = stderr_of(&out);
        assert!(!out.status.success(), "{name}: accepted");
        assert!(err.contains(field) && err.contains(value), "{name}: the error does not name {field} / {value}: {err}");
        let get = kube.kubectl(&["get", "cnp", "-n", "default", name]);
        assert!(!get.status.success(), "{name}: a refused policy was stored");
    }
    // The clusterwide CRD validates the same way.
    let bad_ccnp = "apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata:\n  name: bad-ccnp\n\
                    specs:\n  - endpointSelector: {}\n    egress:\n    - toFQDNs: [{matchName: \"a..b.com\"}]\n";
    let out = kube.kubectl_stdin(&["apply", "-f", "-"], bad_ccnp);
    assert!(!out.status.success() && stderr_of(&out).contains("specs.egress.toFQDNs.matchName"), "{}", stderr_of(&out));

    // The agent may do exactly what deploy/rbac.yaml grants on top of the baseline: a missing or
    // an extra rule fails here.
    let granted: BTreeSet<(String, String)> = agent_resource_rules(&kube).difference(&baseline).cloned().collect();
    let expected: BTreeSet<(String, String)> = [
        ("ciliumclusterwidenetworkpolicies.cilium.io", "[get list watch]"),
        ("ciliumnetworkpolicies.cilium.io", "[get list watch]"),
        ("namespaces", "[get list watch]"),
        ("nodes", "[get list watch]"),
        ("pods", "[get list watch]"),
        ("events", "[create patch]"),
        ("events.events.k8s.io", "[create patch]"),
    ]
    .into_iter()
    .map(|(r, v)| (r.to_string(), v.to_string()))
    .collect();
    assert_eq!(granted, expected, "the agent's rights beyond the baseline");
    assert!(agent_resource_rules(&kube).is_superset(&baseline), "rbac.yaml took a right away?");

    // ... and the rights work: real lists and watches as the agent's token.
    kube.create_node("node-a", &[("InternalIP", "192.0.2.10")]).unwrap();
    kube.create_pod("default", "alpine", "node-a", &[("app", "alpine")]).unwrap();
    for what in [&["pods", "-A"][..], &["namespaces"], &["nodes"], &["cnp", "-A"], &["ccnp"]] {
        let mut args = vec!["get"];
        args.extend_from_slice(what);
        let out = kube.kubectl_as_agent(&args);
        assert!(out.status.success(), "agent: kubectl {}: {}", args.join(" "), stderr_of(&out));
    }
    let pods = kube.kubectl_as_agent(&["get", "pods", "-n", "default", "-o", "name"]);
    assert_eq!(String::from_utf8_lossy(&pods.stdout).trim(), "pod/alpine");
    for url in [
        "/api/v1/pods",
        "/apis/cilium.io/v2/ciliumnetworkpolicies",
        "/apis/cilium.io/v2/ciliumclusterwidenetworkpolicies",
    ] {
        // A watch that the server ends after a second: the point is that it is authorized.
        let watch = format!("{url}?watch=1&timeoutSeconds=1");
        let out = kube.kubectl_as_agent(&["get", "--raw", &watch]);
        assert!(out.status.success(), "agent: watch {url}: {}", stderr_of(&out));
    }
    let event = serde_json::json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": { "name": "fqdnd-test.1", "namespace": "default" },
        "involvedObject": { "kind": "CiliumNetworkPolicy", "namespace": "default", "name": "locking-down-alpine" },
        "reason": "PolicyInvalid", "message": "test", "type": "Warning",
        "source": { "component": "fqdnd" },
    });
    let out = kube.kubectl_as_agent_stdin(&["create", "-f", "-"], &event.to_string());
    assert!(out.status.success(), "agent: create an Event: {}", stderr_of(&out));

    // ... and nothing else: writes to what it watches, secrets, other kinds.
    let forbidden: &[&[&str]] = &[
        &["delete", "pod", "-n", "default", "alpine", "--wait=false"],
        &["label", "pod", "-n", "default", "alpine", "x=y"],
        &["delete", "cnp", "-n", "default", "locking-down-alpine", "--wait=false"],
        &["get", "secrets", "-n", "kube-system"],
        &["get", "configmaps", "-A"],
        &["get", "services", "-A"],
        &["get", "events", "-n", "default"],
    ];
    for args in forbidden {
        let out = kube.kubectl_as_agent(args);
        assert!(
            !out.status.success() && stderr_of(&out).contains("Forbidden"),
            "agent: kubectl {} was not forbidden: {}",
            args.join(" "),
            stderr_of(&out)
        );
    }
    assert_eq!(
        kube.kubectl_ok(&["get", "pods", "-n", "default", "-o", "name"]).unwrap().trim(),
        "pod/alpine",
        "the agent's refused delete left the pod"
    );
}

#[test]
fn pod_ips_through_the_status_subresource_survive_an_apiserver_restart() {
    if !kube::available("pod_ips_through_the_status_subresource_survive_an_apiserver_restart") {
        return;
    }
    let mut kube = KubeApiserver::start().unwrap();
    kube.create_namespace("shop", &[("team", "a")]).unwrap();
    kube.label_namespace("shop", &[("team", "b"), ("tier", "web")]).unwrap();
    kube.create_node("node-a", &[("InternalIP", "192.0.2.10"), ("Hostname", "node-a")]).unwrap();
    kube.create_pod("shop", "web-1", "node-a", &[("app", "web")]).unwrap();

    let pending = kube.get_json(&["pod", "-n", "shop", "web-1"]).unwrap();
    assert_eq!(pending["status"]["podIPs"], serde_json::Value::Null, "no IPs before the 'kubelet' reports");

    let ips: [IpAddr; 2] = ["10.244.1.7".parse().unwrap(), "fd00:10:244:1::7".parse().unwrap()];
    kube.set_pod_running("shop", "web-1", &ips).unwrap();

    let check = |kube: &KubeApiserver| {
        let pod = kube.get_json(&["pod", "-n", "shop", "web-1"]).unwrap();
        assert_eq!(pod["spec"]["nodeName"], "node-a");
        assert_ne!(pod["spec"]["hostNetwork"], true);
        assert_eq!(pod["metadata"]["labels"], serde_json::json!({ "app": "web" }));
        assert_eq!(pod["status"]["phase"], "Running");
        assert_eq!(pod["status"]["podIP"], "10.244.1.7");
        assert_eq!(pod["status"]["podIPs"], serde_json::json!([{ "ip": "10.244.1.7" }, { "ip": "fd00:10:244:1::7" }]));
        let ns = kube.get_json(&["namespace", "shop"]).unwrap();
        assert_eq!(ns["metadata"]["labels"]["team"], "b");
        assert_eq!(ns["metadata"]["labels"]["tier"], "web");
        let node = kube.get_json(&["node", "node-a"]).unwrap();
        assert_eq!(
            node["status"]["addresses"],
            serde_json::json!([{ "type": "InternalIP", "address": "192.0.2.10" }, { "type": "Hostname", "address": "node-a" }])
        );
    };
    check(&kube);

    // Down: clients get errors, not stale answers.
    kube.stop_apiserver().unwrap();
    let down = kube.kubectl(&["get", "pods", "-n", "shop"]);
    assert!(!down.status.success(), "kubectl succeeded with the API server stopped");

    // Back on the same etcd and port: everything written before is still there.
    kube.start_apiserver().unwrap();
    check(&kube);

    kube.delete_pod("shop", "web-1").unwrap();
    let gone = kube.kubectl(&["get", "pod", "-n", "shop", "web-1"]);
    assert!(!gone.status.success() && stderr_of(&gone).contains("NotFound"), "{}", stderr_of(&gone));
}
