//! `toPorts`: ports and protocols (Cilium's parsing and limits), the L7 rules fqdnd enforces
//! (`rules.dns`) and the ones it refuses.

use fqdn_cache::{L4Proto, PortProto};

use super::{DirCtx, MAX_PORT_RANGE, Problems, dns_selector, unsupported};
use crate::model;
use crate::policy::{DnsSpec, PeerRule};

/// Cilium's limit on the ports of one `toPorts` entry (allow and deny alike; its CRD says
/// `maxItems: 40` too).
pub const MAX_PORTS: usize = 40;

#[derive(Clone, Copy)]
pub(super) struct Direction {
    pub(super) ingress: bool,
    pub(super) deny: bool,
}

pub(super) fn ports(
    rule: &mut PeerRule,
    raw: &Option<Vec<model::PortRule>>,
    path: &str,
    dir: Direction,
    ctx: &DirCtx<'_>,
    p: &mut Problems,
) {
    for (i, pr) in raw.iter().flatten().enumerate() {
        rule.has_ports = true;
        let field = format!("{path}.toPorts[{i}]");
        unsupported(p, pr.server_names.is_some(), format!("{field}.serverNames"), "serverNames");
        unsupported(p, pr.listener.is_some(), format!("{field}.listener"), "listener");
        unsupported(p, pr.terminating_tls.is_some(), format!("{field}.terminatingTLS"), "terminatingTLS");
        unsupported(p, pr.originating_tls.is_some(), format!("{field}.originatingTLS"), "originatingTLS");

        let dns = pr.rules.as_ref().and_then(|r| r.dns.as_ref());
        let has_l7 = pr.rules.as_ref().is_some_and(|r| {
            r.dns.is_some() || r.http.is_some() || r.kafka.is_some() || r.l7proto.is_some() || r.l7.is_some()
        });
        if let Some(rules) = &pr.rules {
            let rf = format!("{field}.rules");
            if dir.deny {
                p.push(&rf, "deny rules take no L7 rules");
            } else {
                unsupported(p, rules.http.is_some(), format!("{rf}.http"), "rules.http");
                unsupported(p, rules.kafka.is_some(), format!("{rf}.kafka"), "rules.kafka");
                unsupported(p, rules.l7proto.is_some() || rules.l7.is_some(), format!("{rf}.l7proto"), "rules.l7proto");
                if ctx.host_policy && has_l7 {
                    p.push(&rf, "host policies do not support L7 rules");
                }
                if dir.ingress && dns.is_some() {
                    p.push(format!("{rf}.dns"), "DNS rules are not allowed on ingress");
                }
            }
        }
        let mut these = Vec::new();
        let raw_ports = pr.ports.as_deref().unwrap_or_default();
        if raw_ports.len() > MAX_PORTS {
            p.push(format!("{field}.ports"), format!("too many ports, the max is {MAX_PORTS}"));
        }
        if raw_ports.is_empty() {
            if dns.is_some() {
                p.push(format!("{field}.ports"), "a port (53) must be specified for DNS rules");
            }
            // A toPorts entry without ports restricts no port.
            these.push(PortProto::ANY);
        }
        for (j, pp) in raw_ports.iter().enumerate() {
            let pf = format!("{field}.ports[{j}]");
            let proto = match parse_proto(pp.protocol.as_deref()) {
                Ok(proto) => proto,
                Err(msg) => {
                    p.push(format!("{pf}.protocol"), msg);
                    continue;
                }
            };
            let Some(text) = &pp.port else {
                p.push(format!("{pf}.port"), "port must be specified");
                continue;
            };
            let port = match parse_port(&text.0) {
                Ok(port) => port,
                Err(msg) => {
                    p.push(format!("{pf}.port"), msg);
                    continue;
                }
            };
            if port == 0 && has_l7 {
                p.push(format!("{pf}.port"), "L7 rules can not be used when a port is 0");
            }
            let end = pp.end_port.unwrap_or(0);
            if end > i64::from(port) {
                if dns.is_some() {
                    p.push(format!("{pf}.endPort"), "DNS rules do not support port ranges");
                    continue;
                }
                if end > i64::from(u16::MAX) {
                    p.push(format!("{pf}.endPort"), format!("{end} is not a port number"));
                    continue;
                }
                let width = (end - i64::from(port) + 1) as u32;
                if port == 0 || width > MAX_PORT_RANGE {
                    p.push(
                        format!("{pf}.endPort"),
                        format!(
                            "port range {port}-{end} is wider than {MAX_PORT_RANGE} ports, which fqdnd does not expand"
                        ),
                    );
                    continue;
                }
                these.extend((port..=end as u16).map(|port| PortProto { port, proto }));
            } else {
                // Cilium ignores an endPort that is not above port.
                these.push(PortProto { port, proto });
            }
        }
        if let Some(sels) = dns {
            let mut pats = Vec::with_capacity(sels.len());
            for (k, s) in sels.iter().enumerate() {
                pats.extend(dns_selector(s, &format!("{field}.rules.dns[{k}]"), p));
            }
            rule.dns.push(DnsSpec { ports: these.clone(), patterns: pats });
        }
        if !has_l7 {
            // A plain L4 allow: it lifts rules.dns on the same peer and port (see
            // `PeerRule::plain_ports`).
            let plain = rule.plain_ports.get_or_insert_with(Vec::new);
            for pp in &these {
                if !plain.contains(pp) {
                    plain.push(*pp);
                }
            }
        }
        for pp in these {
            if !rule.ports.contains(&pp) {
                rule.ports.push(pp);
            }
        }
    }
    if raw.as_ref().is_none_or(Vec::is_empty) {
        // No toPorts: an L3 allow of every port, which lifts rules.dns on those peers alike.
        rule.plain_ports = Some(Vec::new());
    }
}

/// Cilium fixes up the case of protocol names; an empty protocol means ANY.
fn parse_proto(text: Option<&str>) -> Result<L4Proto, String> {
    match text.map(str::to_ascii_uppercase).as_deref() {
        None | Some("") | Some("ANY") => Ok(L4Proto::Any),
        Some("TCP") => Ok(L4Proto::Tcp),
        Some("UDP") => Ok(L4Proto::Udp),
        Some(p @ ("SCTP" | "ICMP" | "ICMPV6")) => {
            Err(format!("protocol {p} is not supported by fqdnd (TCP, UDP or ANY)"))
        }
        Some(_) => Err(format!("invalid protocol {:?}, must be one of TCP, UDP, ANY", text.unwrap_or_default())),
    }
}

fn parse_port(text: &str) -> Result<u16, String> {
    let t = text.trim();
    if let Ok(n) = t.parse::<u32>() {
        return u16::try_from(n).map_err(|_| format!("{n} is not a port number (0-65535)"));
    }
    // Cilium resolves an IANA service name against the destination pod's named container
    // ports; the endpoint inventory has none.
    if !t.is_empty()
        && t.chars().any(|c| c.is_ascii_alphabetic())
        && t.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        return Err(format!("named port {t:?} is not supported by fqdnd: endpoints carry no container port names"));
    }
    Err(format!("unable to parse port {text:?}"))
}
