//! The one line the agent logs once its first policies are in force: the mode, what was loaded,
//! which clients are policed and, loudly, when none is (a plain agent without policies or
//! endpoints forwards everything, and nothing else would say so).

use dns_proxy::Mode;
use policy_sync::{ResolvedEndpoint, Snapshot};

use crate::config::Config;

/// The summary and whether it is a warning.
#[derive(Debug, PartialEq, Eq)]
pub struct Summary {
    pub warn: bool,
    pub text: String,
}

/// Is this endpoint policed in this mode? Plain mode enforces only `rules.dns` (by source IP);
/// transparent mode enforces everything on the endpoints it attaches to (those with an interface).
fn policed(mode: Mode, e: &ResolvedEndpoint) -> bool {
    match mode {
        Mode::Plain => e.policy.has_dns_rules(),
        Mode::Transparent => e.endpoint.interface.is_some() && !e.policy.policies.is_empty(),
    }
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// The endpoints policed in `mode`, as `namespace/name (IPs)` (plain) or `(interface)`.
pub fn policed_list(mode: Mode, snap: &Snapshot) -> Vec<String> {
    snap.endpoints
        .iter()
        .filter(|e| policed(mode, e))
        .map(|e| {
            let how = match mode {
                Mode::Plain => e.endpoint.ips.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
                Mode::Transparent => e.endpoint.interface.clone().unwrap_or_default(),
            };
            format!("{}/{} ({how})", e.endpoint.namespace, e.endpoint.name)
        })
        .collect()
}

pub fn summary(config: &Config, snap: &Snapshot) -> Summary {
    let mode = config.proxy.mode;
    let listen: Vec<String> = config.proxy.listen.iter().map(ToString::to_string).collect();
    let head = match (mode, config.proxy.upstream) {
        (Mode::Plain, Some(up)) => format!("plain mode, DNS on {} forwarded to {up}", listen.join(", ")),
        (Mode::Plain, None) => format!("plain mode, DNS on {}", listen.join(", ")),
        (Mode::Transparent, _) => {
            format!(
                "transparent mode, pods' DNS redirected to {}, datapath pinned at {}",
                listen.join(", "),
                config.bpffs_dir.display()
            )
        }
    };
    let from =
        |p: &Option<std::path::PathBuf>| p.as_ref().map(|p| format!(" from {}", p.display())).unwrap_or_default();
    let loaded = format!(
        "{} ({} rejected){}; {}{}",
        plural(snap.policies.len(), "policy", "policies"),
        snap.rejected,
        from(&config.policies),
        plural(snap.endpoints.len(), "endpoint", "endpoints"),
        from(&config.endpoints),
    );
    let policed = policed_list(mode, snap);
    let rest = match mode {
        Mode::Plain => "queries from every other client are forwarded unpoliced",
        Mode::Transparent => "every other pod's traffic is not touched",
    };
    if !policed.is_empty() {
        let what = match mode {
            Mode::Plain => "DNS rules police",
            Mode::Transparent => "policing",
        };
        return Summary {
            warn: false,
            text: format!("fqdnd ready: {head}; {loaded}; {what} {}; {rest}", policed.join(", ")),
        };
    }
    let why = if snap.policies.is_empty() && config.policies.is_none() {
        "no policies (give --policies DIR; examples/quickstart has one)".to_string()
    } else if snap.policies.is_empty() {
        "no policy loaded".to_string()
    } else if snap.endpoints.is_empty() {
        "no endpoints (give --endpoints FILE: the clients to police, by IP)".to_string()
    } else if snap.endpoints.iter().all(|e| e.policy.policies.is_empty()) {
        "no policy selects any endpoint".to_string()
    } else {
        match mode {
            Mode::Plain => "no selected endpoint has rules.dns, and plain mode enforces only DNS rules".to_string(),
            Mode::Transparent => "no selected endpoint names its interface".to_string(),
        }
    };
    let every = match mode {
        Mode::Plain => "every query is forwarded unpoliced",
        Mode::Transparent => "no pod's traffic is touched",
    };
    Summary { warn: true, text: format!("fqdnd ready, but NOTHING IS POLICED: {why}; {every}. {head}; {loaded}") }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;

    use policy_sync::Endpoint;

    use super::*;
    use crate::config::{Environment, FileConfig, Flags, resolve};

    const POLICY: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: dns, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: alpine}}
  egress:
  - toPorts:
    - ports: [{port: "53", protocol: ANY}]
      rules: {dns: [{matchPattern: "*.microsoft.com"}]}
"#;

    fn config(dir: &Path, mode: &str, policies: bool) -> Config {
        let resolv = dir.join("resolv.conf");
        std::fs::write(&resolv, "nameserver 192.0.2.53\n").unwrap();
        let env = Environment {
            resolv_conf: resolv,
            cwd: dir.to_path_buf(),
            default_state_dir: dir.join("s"),
            in_cluster: false,
        };
        let flags =
            Flags { mode: Some(mode.into()), policies: policies.then(|| dir.join("p.yaml")), ..Flags::default() };
        std::fs::write(dir.join("p.yaml"), POLICY).unwrap();
        resolve(&FileConfig::default(), &flags, &env).unwrap()
    }

    fn snapshot(dir: &Path, endpoints: &[(&str, &str, Option<&str>)]) -> Snapshot {
        let report = policy_sync::load_paths(&[dir.join("p.yaml")]);
        let inventory: Vec<Endpoint> = endpoints
            .iter()
            .map(|(name, app, iface)| Endpoint {
                namespace: "default".into(),
                name: name.to_string(),
                labels: BTreeMap::from([("app".to_string(), app.to_string())]),
                ips: vec!["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()],
                interface: iface.map(str::to_string),
                policy_audit_mode: false,
            })
            .collect();
        let eps = inventory
            .iter()
            .enumerate()
            .map(|(i, e)| ResolvedEndpoint {
                id: fqdn_cache::EndpointId(i as u32 + 1),
                endpoint: e.clone(),
                policy: std::sync::Arc::new(policy_sync::resolve(&report.policies, e, &inventory)),
            })
            .collect();
        Snapshot::new(1, eps, report.policies.iter().map(|p| p.reference.clone()).collect(), 0)
    }

    #[test]
    fn says_who_is_policed_and_warns_when_nobody_is() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let cases: Vec<(Config, Snapshot, bool, &str)> = vec![
            (
                config(d, "plain", false),
                Snapshot::default(),
                true,
                "NOTHING IS POLICED: no policies (give --policies DIR",
            ),
            (
                config(d, "plain", true),
                snapshot(d, &[]),
                true,
                "NOTHING IS POLICED: no endpoints (give --endpoints FILE",
            ),
            (config(d, "plain", true), snapshot(d, &[("web", "web", None)]), true, "no policy selects any endpoint"),
            (
                config(d, "plain", true),
                snapshot(d, &[("alpine", "alpine", None), ("web", "web", None)]),
                false,
                "DNS rules police default/alpine (127.0.0.1, ::1); queries from every other client are forwarded unpoliced",
            ),
            (
                config(d, "transparent", true),
                snapshot(d, &[("alpine", "alpine", None)]),
                true,
                "no selected endpoint names its interface",
            ),
            (
                config(d, "transparent", true),
                snapshot(d, &[("alpine", "alpine", Some("lxc1"))]),
                false,
                "policing default/alpine (lxc1)",
            ),
        ];
        for (config, snap, warn, needle) in cases {
            let s = summary(&config, &snap);
            assert_eq!(s.warn, warn, "{}", s.text);
            assert!(s.text.contains(needle), "{needle:?} not in {:?}", s.text);
            assert!(!s.text.contains('\n'), "one line: {:?}", s.text);
        }
        let s = summary(&config(d, "plain", true), &snapshot(d, &[("alpine", "alpine", None)]));
        assert!(
            s.text.starts_with(
                "fqdnd ready: plain mode, DNS on 127.0.0.1:5353 forwarded to 192.0.2.53:53; 1 policy (0 rejected) from "
            ),
            "{}",
            s.text
        );
    }
}
