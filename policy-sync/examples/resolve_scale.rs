//! Policy resolution at scale, in process: parse N policies (default 10,000) and resolve M
//! endpoints (default 1,000), the shapes of benches/policies.sh. Reports where the time goes;
//! asserts nothing. `cargo run --release -p policy-sync --example resolve_scale [-- N M]`

use std::path::Path;
use std::time::Instant;

use policy_sync::{Endpoint, NodeInfo, Resolver};

fn policy(i: usize) -> String {
    format!(
        r#"apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: p-{i}, namespace: ns-{ns}}}
spec:
  endpointSelector: {{matchLabels: {{app: app-{app}}}}}
  egress:
  - toEndpoints: [{{matchLabels: {{"k8s:io.kubernetes.pod.namespace": kube-system, "k8s:k8s-app": kube-dns}}}}]
    toPorts:
    - ports: [{{port: "53", protocol: ANY}}]
      rules: {{dns: [{{matchPattern: "*.svc-{i}.example"}}, {{matchName: "api-{i}-g0.example"}}]}}
  - toFQDNs: [{{matchPattern: "*.svc-{i}.example"}}]
    toPorts: [{{ports: [{{port: "443", protocol: TCP}}]}}]
  - toEndpoints: [{{matchLabels: {{app: app-{peer}}}}}]
    toPorts: [{{ports: [{{port: "8080", protocol: TCP}}]}}]
  ingress:
  - fromEndpoints: [{{matchLabels: {{app: app-{from}}}}}]
"#,
        ns = i % 10,
        app = i % 100,
        peer = (i + 10) % 100,
        from = (i + 20) % 100
    )
}

fn main() {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<usize>().expect("a number"));
    let n = args.next().unwrap_or(10_000);
    let m = args.next().unwrap_or(1_000);
    let texts: Vec<String> = (0..n).map(policy).collect();
    let t = Instant::now();
    let mut policies = Vec::with_capacity(n);
    for (i, text) in texts.iter().enumerate() {
        let (mut p, problems) = policy_sync::parse_file(Path::new(&format!("p-{i}.yaml")), text);
        assert!(problems.is_empty(), "{problems:?}");
        policies.append(&mut p);
    }
    let parse = t.elapsed();
    let mut inventory = vec![Endpoint {
        namespace: "kube-system".into(),
        name: "kube-dns".into(),
        labels: [("k8s-app".to_string(), "kube-dns".to_string())].into(),
        ips: vec!["10.96.0.10".parse().unwrap()],
        ..Default::default()
    }];
    for j in 0..m {
        inventory.push(Endpoint {
            namespace: format!("ns-{}", j % 10),
            name: format!("pod-{j}"),
            labels: [("app".to_string(), format!("app-{}", j % 100))].into(),
            ips: vec![format!("10.{}.{}.1", j / 250, j % 250).parse().unwrap()],
            ..Default::default()
        });
    }
    let node = NodeInfo::default();
    let t = Instant::now();
    let mut resolver = Resolver::new(&policies, &inventory, &node);
    let resolved: Vec<_> = inventory.iter().map(|e| resolver.resolve(e)).collect();
    let resolve = t.elapsed();
    let rules: usize = resolved.iter().map(|p| p.dns.rules().len() + p.egress_allows.len()).sum();
    println!(
        "{n} policies, {m} endpoints: parse {parse:?} ({:?}/policy), resolve {resolve:?} ({rules} rules in all)",
        parse / n as u32
    );
}
