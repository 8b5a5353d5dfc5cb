//! `fqdnd policy check` and `fqdnd policy explain`, run as the built binary against the seed
//! tutorial's policies and the fixtures in fixtures/policies/.

use std::path::Path;
use std::process::{Command, Output};

const ENDPOINTS: &str = "fixtures/endpoints.yaml";

fn fqdnd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fqdnd"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run fqdnd")
}

/// `fqdnd ARGS` with `stdin` on its standard input.
fn fqdnd_stdin(args: &[&str], stdin: &str) -> Output {
    use std::io::Write as _;
    let mut child = Command::new(env!("CARGO_BIN_EXE_fqdnd"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run fqdnd");
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

fn lines(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
}

fn seed(stage: u32) -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/policies/seed");
    let name = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with(&format!("{stage}-")))
        .unwrap_or_else(|| panic!("no seed stage {stage}"));
    format!("fixtures/policies/seed/{name}")
}

#[derive(Debug)]
struct Answer {
    verdict: String,
    policy: Option<String>,
    reason: String,
}

/// `policy explain ... -o json` for an endpoint, parsed.
fn explain(policies: &str, endpoint: &str, labels: Option<&str>, question: &[&str]) -> Answer {
    let mut args = vec!["policy", "explain", "--policies", policies, "--endpoint", endpoint, "--endpoints", ENDPOINTS];
    if let Some(l) = labels {
        args.extend(["--labels", l]);
    }
    args.extend(question);
    args.extend(["-o", "json"]);
    let out = fqdnd(&args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "fqdnd {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{stdout:?}: {e}"));
    let obj = v.as_object().expect("a JSON object");
    assert_eq!(obj.len(), 3, "exactly verdict, policy, reason: {v}");
    Answer {
        verdict: v["verdict"].as_str().unwrap().to_string(),
        policy: v["policy"].as_str().map(str::to_string),
        reason: v["reason"].as_str().unwrap().to_string(),
    }
}

fn alpine(policies: &str, question: &[&str]) -> Answer {
    explain(policies, "default/alpine", None, question)
}

#[track_caller]
fn expect(a: &Answer, verdict: &str) {
    assert_eq!(a.verdict, verdict, "{a:?}");
}

#[test]
fn stage1_selector_only_allows_everything() {
    let p = seed(1);
    for q in [
        &["--dns", "www.google.com"][..],
        &["--dns", "www.google.com", "--tcp"],
        &["--to", "1.1.1.1:443"],
        &["--to", "10.96.0.10:53/udp"],
        &["--to-name", "www.microsoft.com:443"],
        &["--to-name", "www.google.com:443"],
    ] {
        let a = alpine(&p, q);
        expect(&a, "ALLOWED");
        assert!(a.reason.contains("do not put its egress in default deny"), "{q:?}: {a:?}");
    }
}

#[test]
fn stage2_empty_rules_deny_everything() {
    let p = seed(2);
    let dns = alpine(&p, &["--dns", "www.google.com"]);
    expect(&dns, "DENIED");
    assert_eq!(dns.policy.as_deref(), Some("default/locking-down-alpine"));
    assert!(dns.reason.contains("spec.egress"), "{dns:?}");
    expect(&alpine(&p, &["--to-name", "www.microsoft.com:443"]), "DENIED");
    expect(&alpine(&p, &["--to", "10.96.0.10:53/udp"]), "DENIED");
}

#[test]
fn stage3_udp_dns_to_kube_dns_only() {
    let p = seed(3);
    let udp = alpine(&p, &["--dns", "www.google.com"]);
    expect(&udp, "ALLOWED");
    assert_eq!(udp.policy.as_deref(), Some("default/locking-down-alpine"));
    assert!(udp.reason.contains("spec.egress[0]") && udp.reason.contains("not proxied"), "{udp:?}");
    // The server is found in the endpoints file; naming it explicitly gives the same answer.
    expect(&alpine(&p, &["--dns", "www.google.com", "--server", "10.96.0.10:53"]), "ALLOWED");
    expect(&alpine(&p, &["--dns", "www.google.com", "--tcp"]), "DENIED");
    expect(&alpine(&p, &["--dns", "www.google.com", "--server", "8.8.8.8"]), "DENIED");
    expect(&alpine(&p, &["--to", "10.96.0.10:80"]), "DENIED");
    expect(&alpine(&p, &["--to", "1.1.1.1:443"]), "DENIED");
    expect(&alpine(&p, &["--to-name", "www.microsoft.com:443"]), "DENIED");
}

#[test]
fn stage4_any_name_resolves_only_microsoft_connects() {
    let p = seed(4);
    for name in ["www.google.com", "www.microsoft.com", "example.org."] {
        let a = alpine(&p, &["--dns", name]);
        expect(&a, "ALLOWED");
        assert!(a.reason.contains("rules.dns") && a.reason.contains("spec.egress[0]"), "{a:?}");
    }
    let ms = alpine(&p, &["--to-name", "www.microsoft.com:443"]);
    expect(&ms, "ALLOWED");
    assert!(ms.reason.contains("spec.egress[1]") && ms.reason.contains("*.microsoft.com"), "{ms:?}");
    expect(&alpine(&p, &["--to-name", "www.google.com:443"]), "DENIED");
    // `*.microsoft.com` does not match the apex.
    expect(&alpine(&p, &["--to-name", "microsoft.com:443"]), "DENIED");
    expect(&alpine(&p, &["--dns", "www.google.com", "--tcp"]), "DENIED");

    // An endpoint without app=alpine is not selected.
    for q in [&["--dns", "www.google.com"][..], &["--to-name", "www.google.com:443"], &["--to", "1.1.1.1:443"]] {
        let a = explain(&p, "default/other", Some("app=other"), q);
        expect(&a, "ALLOWED");
        assert_eq!(a.policy, None);
        assert!(a.reason.contains("no policy selects this endpoint"), "{a:?}");
    }
    // An endpoint not in the endpoints file, given the label, is.
    expect(&explain(&p, "default/alpine-2", Some("app=alpine"), &["--to-name", "www.google.com:443"]), "DENIED");
    // The same label in another namespace is not: a CNP selects in its own namespace.
    expect(&explain(&p, "prod/alpine", Some("app=alpine"), &["--to-name", "www.google.com:443"]), "ALLOWED");
}

#[test]
fn text_output_names_verdict_policy_and_rule() {
    let p = seed(3);
    let out = fqdnd(&[
        "policy",
        "explain",
        "--policies",
        &p,
        "--endpoint",
        "default/alpine",
        "--endpoints",
        ENDPOINTS,
        "--dns",
        "www.google.com",
        "--tcp",
    ]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "DENIED");
    assert_eq!(lines[1], "policy: default/locking-down-alpine");
    assert!(lines[2].starts_with("reason: ") && lines[2].contains("10.96.0.10:53/tcp"), "{text}");
}

#[test]
fn check_reports_exactly_the_three_broken_policies() {
    let out = fqdnd(&["policy", "check", "fixtures/policies/check"]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 4, "three problems and the summary: {stdout}");
    assert_eq!(
        lines[0],
        "fixtures/policies/check/bad-dns-without-port.yaml: doc 1: spec.egress[0].toPorts[0].ports: \
         a port (53) must be specified for DNS rules"
    );
    assert_eq!(
        lines[1],
        "fixtures/policies/check/bad-fqdn-with-endpoints.yaml: doc 1: spec.egress[1].toFQDNs: \
         combining toFQDNs and toEndpoints in one rule is not supported; write a separate rule for each"
    );
    // The pattern's own wording belongs to fqdn-cache; the location and the culprit are ours.
    let prefix = "fixtures/policies/check/bad-pattern-character.yaml: doc 1: spec.egress[0].toFQDNs[1].matchPattern: ";
    assert!(lines[2].starts_with(prefix), "{}", lines[2]);
    assert!(lines[2].contains("https://*.example.com") && lines[2].contains("':'"), "{}", lines[2]);
    assert_eq!(lines[3], "5 file(s), 3 valid policy document(s), 3 problem(s), 0 warning(s)");
    assert!(out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn check_passes_good_files_and_names_misspelled_keys() {
    let good = fqdnd(&[
        "policy",
        "check",
        "fixtures/policies/check/good-allow-dns-and-api.yaml",
        "fixtures/policies/check/good-clusterwide.yaml",
    ]);
    assert_eq!(good.status.code(), Some(0), "{}", String::from_utf8_lossy(&good.stdout));
    // Success goes to stdout too.
    assert_eq!(
        String::from_utf8_lossy(&good.stdout),
        "2 file(s), 3 valid policy document(s), 0 problem(s), 0 warning(s)\n"
    );
    assert!(good.stderr.is_empty(), "{}", String::from_utf8_lossy(&good.stderr));

    let bad = fqdnd(&["policy", "check", "fixtures/policies/examples/misspelled-key.yaml"]);
    assert_eq!(bad.status.code(), Some(1));
    let stdout = String::from_utf8(bad.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        [
            "fixtures/policies/examples/misspelled-key.yaml: doc 1: spec.egress[0].toFQDNs[0].matchPatern: \
             unknown field `matchPatern`, expected `matchName` or `matchPattern`",
            "1 file(s), 0 valid policy document(s), 1 problem(s), 0 warning(s)",
        ]
    );

    // Seed stage 1 (a selector and no direction) is valid, with a warning that newer Cilium
    // refuses it.
    let stage1 = fqdnd(&["policy", "check", "fixtures/policies/seed/1-locking-down-alpine.yaml"]);
    assert_eq!(stage1.status.code(), Some(0));
    let stdout = String::from_utf8(stage1.stdout).unwrap();
    assert_eq!(
        stdout.lines().next().unwrap_or_default(),
        "warning: fixtures/policies/seed/1-locking-down-alpine.yaml: doc 1: spec: no ingress, ingressDeny, egress or \
         egressDeny: fqdnd accepts this rule as the Cilium of the seed tutorial did (it selects endpoints and restricts \
         nothing), but Cilium 1.17 and later reject it (\"rule must have at least one of Ingress, IngressDeny, Egress, \
         EgressDeny\")",
        "{stdout}"
    );
    let stage4 = fqdnd(&["policy", "check", "fixtures/policies/seed/4-allow-fqdn.yaml"]);
    assert_eq!(stage4.status.code(), Some(0));
    assert!(!String::from_utf8_lossy(&stage4.stdout).contains("warning:"));
}

/// The seed's four stages share one name: as a directory, the last file in lexical order
/// (stage 4) is the policy, as `kubectl apply -f fixtures/policies/seed/` would leave it; each
/// replaced stage is a warning naming both files.
#[test]
fn same_named_policies_the_last_file_wins_with_a_warning() {
    let out = fqdnd(&["policy", "check", "fixtures/policies/seed"]);
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    let replaced: Vec<&str> = stdout.lines().filter(|l| l.contains("is defined again in")).collect();
    assert_eq!(replaced.len(), 3, "{stdout}");
    for (line, stage) in replaced.iter().zip(["1-locking-down-alpine", "2-deny-everything", "3-allow-dns"]) {
        assert_eq!(
            *line,
            format!(
                "warning: fixtures/policies/seed/{stage}.yaml: doc 1: metadata.name: policy default/locking-down-alpine \
                 is defined again in fixtures/policies/seed/4-allow-fqdn.yaml doc 1, which is read later and replaces \
                 this one (as `kubectl apply -f` of both would leave it)"
            )
        );
    }
    // Explained as stage 4: any name resolves, only *.microsoft.com connects.
    let dir = "fixtures/policies/seed";
    expect(&alpine(dir, &["--dns", "www.google.com"]), "ALLOWED");
    expect(&alpine(dir, &["--to-name", "www.microsoft.com:443"]), "ALLOWED");
    expect(&alpine(dir, &["--to-name", "www.google.com:443"]), "DENIED");
}

#[test]
fn clusterwide_policy_with_match_expressions() {
    let p = "fixtures/policies/examples/clusterwide-match-expressions.yaml";
    let dns = alpine(p, &["--dns", "www.google.com", "--tcp"]);
    expect(&dns, "ALLOWED");
    assert_eq!(dns.policy.as_deref(), Some("untrusted-dns-only"));
    expect(&alpine(p, &["--to", "1.1.1.1:443"]), "DENIED");
    // tier=trusted is excluded (NotIn); kube-dns has k8s-app (DoesNotExist); another namespace is
    // still selected by a clusterwide policy.
    expect(&explain(p, "default/alpine", Some("app=alpine,tier=trusted"), &["--to", "1.1.1.1:443"]), "ALLOWED");
    expect(&explain(p, "kube-system/kube-dns", None, &["--to", "1.1.1.1:443"]), "ALLOWED");
    expect(&explain(p, "prod/worker", Some("app=worker"), &["--to", "1.1.1.1:443"]), "DENIED");
}

#[test]
fn cidr_set_except_and_deny_rules() {
    let p = "fixtures/policies/check/good-clusterwide.yaml";
    let web = |q: &[&str]| explain(p, "default/web", Some("app=web"), q);
    let inside = web(&["--to", "10.1.2.3:5432"]);
    expect(&inside, "ALLOWED");
    assert_eq!(inside.policy.as_deref(), Some("web-tier"));
    assert!(inside.reason.contains("specs[0].egress[0]"), "{inside:?}");
    // 10.96.0.0/12 is cut out of 10.0.0.0/8; and kube-dns is cluster, not world.
    expect(&web(&["--to", "10.96.0.10:53/udp"]), "DENIED");
    expect(&web(&["--to", "93.184.215.14:443"]), "ALLOWED");
    let metadata = web(&["--to", "169.254.169.254:80"]);
    expect(&metadata, "DENIED");
    assert_eq!(metadata.policy.as_deref(), Some("no-metadata-service"));

    let d = "fixtures/policies/examples/egress-deny-overrides-allow.yaml";
    let denied = alpine(d, &["--to", "1.1.1.1:443"]);
    expect(&denied, "DENIED");
    assert!(denied.reason.contains("egressDeny"), "{denied:?}");
    expect(&alpine(d, &["--to", "1.1.1.1:80"]), "ALLOWED");
    expect(&alpine(d, &["--to", "1.1.1.2:443"]), "ALLOWED");
    expect(&alpine(d, &["--to", "1.1.2.1:443"]), "DENIED");
}

#[test]
fn enable_default_deny_false_proxies_dns_but_denies_nothing() {
    let p = "fixtures/policies/examples/dns-visibility-no-default-deny.yaml";
    expect(&alpine(p, &["--to", "1.1.1.1:443"]), "ALLOWED");
    expect(&alpine(p, &["--to-name", "www.google.com:443"]), "ALLOWED");
    expect(&alpine(p, &["--dns", "api.example.com", "--tcp"]), "ALLOWED");
    let refused = alpine(p, &["--dns", "www.google.com"]);
    expect(&refused, "REFUSED");
    assert_eq!(refused.policy.as_deref(), Some("default/dns-visibility"));
}

#[test]
fn explain_skips_broken_policies_and_says_so() {
    let out = fqdnd(&[
        "policy",
        "explain",
        "--policies",
        "fixtures/policies/check",
        "--endpoint",
        "default/alpine",
        "--endpoints",
        ENDPOINTS,
        "--to-name",
        "api.example.com:443",
    ]);
    assert!(out.status.success());
    assert!(String::from_utf8(out.stdout).unwrap().starts_with("ALLOWED\n"));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.matches("warning: skipped").count(), 3, "{stderr}");
}

#[test]
fn bad_arguments_fail_with_a_message() {
    for args in [
        &["policy", "explain", "--policies", "fixtures/policies/seed", "--endpoint", "alpine", "--dns", "a"][..],
        &["policy", "explain", "--policies", "fixtures/policies/seed", "--endpoint", "default/a"],
        &["policy", "explain", "--policies", "fixtures/policies/seed", "--endpoint", "default/a", "--to", "1.1.1.1"],
    ] {
        let out = fqdnd(args);
        assert!(!out.status.success(), "{args:?}");
        assert!(!out.stderr.is_empty(), "{args:?}");
    }
}

#[test]
fn explain_refuses_an_unknown_endpoint_naming_it() {
    let p = seed(4);
    let with_file = fqdnd(&[
        "policy",
        "explain",
        "--policies",
        &p,
        "--endpoints",
        ENDPOINTS,
        "--endpoint",
        "default/nobody",
        "--dns",
        "a.com",
    ]);
    assert_eq!(with_file.status.code(), Some(2));
    assert!(with_file.stdout.is_empty());
    assert_eq!(
        String::from_utf8_lossy(&with_file.stderr).trim_end(),
        "fqdnd: error: endpoint default/nobody is not in fixtures/endpoints.yaml; give its --labels to explain an \
         endpoint the file does not list"
    );
    let without =
        fqdnd(&["policy", "explain", "--policies", &p, "--endpoint", "default/alpine", "--to", "1.1.1.1:443"]);
    assert_eq!(without.status.code(), Some(2));
    let err = String::from_utf8_lossy(&without.stderr);
    assert!(
        err.contains("endpoint default/alpine is unknown: give --endpoints FILE listing it, or its --labels"),
        "{err}"
    );
    // Labels make it known; `--labels ''` is an endpoint without labels.
    expect(&explain(&p, "default/nobody", Some("app=alpine"), &["--to", "1.1.1.1:443"]), "DENIED");
    expect(&explain(&p, "default/nobody", Some(""), &["--to", "1.1.1.1:443"]), "ALLOWED");
}

#[test]
fn check_reads_stdin_and_expands_lists() {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(seed(4))).unwrap();
    let out = fqdnd_stdin(&["policy", "check", "-"], &text);
    assert_eq!(out.status.code(), Some(0), "{:?}", lines(&out));
    assert_eq!(lines(&out), ["1 file(s), 1 valid policy document(s), 0 problem(s), 0 warning(s)"]);

    // What `kubectl get cnp -o yaml` prints: a v1 List whose items keep their own kind.
    let list = "apiVersion: v1\nkind: List\nmetadata: {resourceVersion: \"\"}\nitems:\n\
                - apiVersion: cilium.io/v2\n  kind: CiliumNetworkPolicy\n  metadata: {name: good, namespace: default, uid: 1f}\n  \
                spec: {endpointSelector: {}, egress: [{toEntities: [world]}]}\n\
                - apiVersion: cilium.io/v2\n  kind: CiliumNetworkPolicy\n  metadata: {name: bad, namespace: default}\n  \
                spec: {endpointSelector: {}, egress: [{toFQDNs: [{matchName: 'a..b.com'}]}]}\n";
    let out = fqdnd_stdin(&["policy", "check", "-", "fixtures/policies/check/good-clusterwide.yaml"], list);
    assert_eq!(out.status.code(), Some(1));
    let got = lines(&out);
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(
        got[0].starts_with(
            "<stdin>: doc 1: items[1].spec.egress[0].toFQDNs[0].matchName: matchName \"a..b.com\" has an empty label"
        ),
        "{got:?}"
    );
    assert_eq!(got[1], "2 file(s), 3 valid policy document(s), 1 problem(s), 0 warning(s)");
    assert!(out.stderr.is_empty());
}

/// `-o json`: one object per line, each problem and warning, then the summary.
#[test]
fn check_json_has_an_object_per_problem_and_a_summary() {
    let out = fqdnd(&[
        "policy",
        "check",
        "-o",
        "json",
        "fixtures/policies/check",
        "fixtures/policies/seed/1-locking-down-alpine.yaml",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let objects: Vec<serde_json::Value> = lines(&out)
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not one JSON object per line ({e}): {l}")))
        .collect();
    assert_eq!(objects.len(), 5, "3 problems, 1 warning, the summary: {objects:?}");
    for p in &objects[..3] {
        assert_eq!(p["type"], "problem");
        assert_eq!(p["severity"], "error");
        assert_eq!(p["doc"], 1);
        assert!(p["path"].as_str().unwrap().starts_with("fixtures/policies/check/bad-"), "{p}");
        assert!(!p["field"].as_str().unwrap().is_empty() && !p["message"].as_str().unwrap().is_empty(), "{p}");
    }
    assert_eq!(objects[0]["field"], "spec.egress[0].toPorts[0].ports");
    assert_eq!(objects[0]["message"], "a port (53) must be specified for DNS rules");
    assert_eq!(objects[3]["severity"], "warning");
    assert_eq!(objects[3]["path"], "fixtures/policies/seed/1-locking-down-alpine.yaml");
    assert_eq!(objects[3]["field"], "spec");
    assert_eq!(
        objects[4],
        serde_json::json!({"type": "summary", "files": 6, "policies": 4, "problems": 3, "warnings": 1, "ok": false})
    );

    let good = fqdnd(&["policy", "check", "-o", "json", "fixtures/policies/check/good-clusterwide.yaml"]);
    assert_eq!(good.status.code(), Some(0));
    let only: serde_json::Value = serde_json::from_str(&lines(&good).join("\n")).unwrap();
    assert_eq!(
        only,
        serde_json::json!({"type": "summary", "files": 1, "policies": 2, "problems": 0, "warnings": 0, "ok": true})
    );

    let empty = tempfile::tempdir().unwrap();
    let out = fqdnd(&["policy", "check", "-o", "json", empty.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let first: serde_json::Value = serde_json::from_str(&lines(&out)[0]).unwrap();
    assert_eq!(first["message"], "no *.yaml, *.yml or *.json files");
    assert_eq!(first["doc"], serde_json::Value::Null);
}

/// fixtures/policies/examples/cilium-semantics.yaml: each case as Cilium enforces it, explained
/// with the same DnsRules::decide the proxy calls.
#[test]
fn explain_follows_cilium_semantics() {
    let p = "fixtures/policies/examples/cilium-semantics.yaml";
    let app = |label: &str, q: &[&str]| explain(p, "default/pod", Some(&format!("app={label}")), q);
    // (case, app, question, verdict, words in the reason)
    let cases: [(&str, &str, &[&str], &str, &str); 9] = [
        ("empty peer list", "empty-peers", &["--to", "1.1.1.1:443"], "DENIED", "no rule allows 1.1.1.1:443/tcp"),
        (
            "empty peer list, a peer of the cluster",
            "empty-peers",
            &["--to", "10.96.0.10:443"],
            "DENIED",
            "no rule allows",
        ),
        (
            "rules.dns: []",
            "dns-any-name",
            &["--dns", "anything.example"],
            "ALLOWED",
            "rules.dns [] (an empty list restricts no name)",
        ),
        (
            "rules.dns: [] is UDP only",
            "dns-any-name",
            &["--dns", "anything.example", "--tcp"],
            "DENIED",
            "cannot reach the server",
        ),
        ("L4 lifts rules.dns", "l4-lifts-dns", &["--dns", "www.google.com"], "ALLOWED", "lifts the rules.dns"),
        (
            "the pattern still decides",
            "l4-lifts-dns",
            &["--dns", "www.microsoft.com"],
            "ALLOWED",
            "matchPattern: \"*.microsoft.com.\"",
        ),
        (
            "no L4 allow on TCP",
            "l4-lifts-dns",
            &["--dns", "www.google.com", "--tcp"],
            "REFUSED",
            "the proxy refuses it",
        ),
        ("match-all, an odd byte", "alpine", &["--dns", r"a\032b.example"], "ALLOWED", "rules.dns"),
        ("match-all, a * label", "alpine", &["--dns", "*.example"], "ALLOWED", "rules.dns"),
    ];
    for (name, label, q, verdict, words) in cases {
        let a = if label == "alpine" { alpine(&seed(4), q) } else { app(label, q) };
        assert_eq!(a.verdict, verdict, "case {name}: {a:?}");
        assert!(a.reason.contains(words), "case {name}: {a:?}");
    }
    // The file is valid as a whole.
    let out = fqdnd(&["policy", "check", p]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
}
