//! Audit mode with the real agent: a stage-4 pod in audit mode (its endpoints-file field
//! `policy-audit-mode: true`) reaches www.google.com's address, which stage 4 does not allow, and
//! resolves a name its DNS rules refuse; both show as flows with verdict AUDIT naming the policy
//! that would have decided, and the metrics count them. The agent-wide `--policy-audit-mode` does
//! the same for a connection into the pod. Root only.

mod common;

use std::net::{IpAddr, SocketAddr};

use common::netns::{self, TcpServer};
use common::privileged;
use common::topology::{
    CONNECT, Cluster, GREETING, POD_IP4, WORLD_IP4, WWW_GOOGLE4, e2e_policy, metric_sum, seed_stage,
};
use serde_json::Value;

fn audit_flow(c: &Cluster, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    c.wait_flow(&["--verdict", "AUDIT"], what, |f| f["verdict"] == "AUDIT" && pred(f))
}

fn policy_names(f: &Value, field: &str) -> Vec<String> {
    f[field].as_array().into_iter().flatten().filter_map(|p| p["name"].as_str().map(String::from)).collect()
}

#[test]
fn an_endpoint_in_audit_mode_loses_nothing_and_every_would_be_drop_is_audited() {
    if !privileged::available("an_endpoint_in_audit_mode_loses_nothing_and_every_would_be_drop_is_audited") {
        return;
    }
    let mut c = Cluster::build();
    let path = c.dir.path().join("endpoints.yaml");
    let text =
        std::fs::read_to_string(&path).unwrap().replace("  interface:", "  policy-audit-mode: true\n  interface:");
    std::fs::write(&path, text).unwrap();
    c.start_agent();

    // Stage 4: www.google.com resolves but its address is not allowed; audit lets the connect through.
    c.set_policy("locking-down-alpine.yaml", &seed_stage(4));
    let r = c.dig("www.google.com", "A", &[]).expect("dig www.google.com");
    assert_eq!(r.data("A"), [WWW_GOOGLE4.to_string()], "{}", r.raw);
    let dst = SocketAddr::new(WWW_GOOGLE4, 443);
    let (sport, res) = c.connect(dst, CONNECT);
    assert_eq!(res.unwrap_or_else(|e| panic!("audit mode: the connect passes: {e}\n{}", c.log())), GREETING);
    let flow = audit_flow(&c, "for the connect to www.google.com", |f| {
        f["l4"]["TCP"]["source_port"] == u64::from(sport) && f["IP"]["destination"] == WWW_GOOGLE4.to_string()
    });
    assert_eq!(flow["drop_reason_desc"], "POLICY_DENIED", "what would have happened: {flow}");
    assert_eq!(flow["destination_names"], serde_json::json!(["www.google.com"]), "{flow}");
    assert_eq!(policy_names(&flow, "egress_denied_by"), ["locking-down-alpine"], "{flow}");
    assert_eq!(flow["egress_denied_by"][0]["namespace"], "default", "{flow}");

    // DNS rules that refuse www.google.com: the query is forwarded and answered, and audited.
    c.set_policy("locking-down-alpine.yaml", &e2e_policy("dns-microsoft-only.yaml"));
    let r = c.dig("www.google.com", "A", &[]).expect("dig www.google.com");
    assert_eq!((r.status.as_str(), r.data("A")), ("NOERROR", vec![WWW_GOOGLE4.to_string()]), "{}", r.raw);
    for kind in ["REQUEST", "RESPONSE"] {
        let flow = audit_flow(&c, &format!("for the refused query's {kind}"), |f| {
            f["l7"]["type"] == kind && f["l7"]["dns"]["query"] == "www.google.com."
        });
        assert_eq!(policy_names(&flow, "egress_denied_by"), ["dns-microsoft-only"], "{flow}");
    }
    let page = c.metrics();
    assert!(metric_sum(&page, "fqdnd_policy_audits_total") >= 1.0, "{page}");
    let dns_audits: f64 = page
        .lines()
        .filter(|l| l.starts_with("fqdnd_dns_queries_total{") && l.contains("verdict=\"audit\""))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum();
    assert!(dns_audits >= 1.0, "{page}");
    assert_eq!(metric_sum(&page, "fqdnd_policy_drops_total"), 0.0, "nothing was dropped:\n{page}");
}

#[test]
fn the_agent_wide_audit_mode_lets_connections_in() {
    if !privileged::available("the_agent_wide_audit_mode_lets_connections_in") {
        return;
    }
    let mut c = Cluster::build();
    c.agent_args = vec!["--policy-audit-mode".into()];
    c.start_agent();
    c.set_policy("locking-down-alpine.yaml", &seed_stage(2));
    let any = SocketAddr::new("::".parse().unwrap(), 8080);
    let _server = TcpServer::start(&c.pod, any, b"from alpine");
    let pod = SocketAddr::new(IpAddr::V4(POD_IP4), 8080);
    let (wport, res) = c.world.run(|| netns::tcp_exchange(IpAddr::V4(WORLD_IP4), pod, CONNECT));
    assert_eq!(res.expect("ingress: [{}] in audit mode lets it in"), b"from alpine");
    let flow = audit_flow(&c, "for the inbound connect", |f| f["l4"]["TCP"]["source_port"] == u64::from(wport));
    assert_eq!(flow["traffic_direction"], "INGRESS", "{flow}");
    assert_eq!(policy_names(&flow, "ingress_denied_by"), ["locking-down-alpine"], "{flow}");
}
