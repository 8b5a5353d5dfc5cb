//! Printing flows like `hubble observe`: `compact` lines, `table` (aligned columns under a
//! header), `dict` (one `KEY: value` block per flow), and `json`/`jsonpb` (both Hubble's
//! `GetFlowsResponse` per line: `{"flow":{...},"node_name":...,"time":...}`).

use std::fmt::Write as _;
use std::time::SystemTime;

use super::model::{DropReason, EVENT_TYPE_DROP, Endpoint, Flow, FlowResponse, L7FlowType, Verdict};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputFormat {
    Compact,
    /// Hubble made `json` an alias of `jsonpb`; so do we.
    Json,
    Jsonpb,
    Table,
    Dict,
}

impl std::str::FromStr for OutputFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "compact" => Ok(OutputFormat::Compact),
            "json" => Ok(OutputFormat::Json),
            "jsonpb" => Ok(OutputFormat::Jsonpb),
            "table" => Ok(OutputFormat::Table),
            "dict" => Ok(OutputFormat::Dict),
            _ => Err(format!("unknown output format {s:?}: expected compact, table, dict, json or jsonpb")),
        }
    }
}

/// ANSI colours, as Hubble uses them: verdicts green/red, endpoints cyan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Color {
    Never,
    Always,
}

impl Color {
    fn paint(self, code: &str, text: &str) -> String {
        match self {
            Color::Never => text.to_string(),
            Color::Always => format!("\x1b[{code}m{text}\x1b[0m"),
        }
    }
}

/// One flow (newline included) in the chosen format. `table` and `dict` need the state of a
/// [`Printer`] (header, alignment, separators); alone they give one tab-separated row and one block.
pub fn render(resp: &FlowResponse, format: OutputFormat, color: Color) -> String {
    match format {
        OutputFormat::Compact => compact(&resp.flow, color),
        OutputFormat::Json | OutputFormat::Jsonpb => {
            // Serializing plain data with string keys cannot fail.
            let mut line = serde_json::to_string(resp).unwrap_or_default();
            line.push('\n');
            line
        }
        OutputFormat::Table => table_row(&resp.flow).join("\t") + "\n",
        OutputFormat::Dict => dict(&resp.flow),
    }
}

/// Prints a stream of flows: `table` lines up its columns under one header (all at the end, or
/// row by row when following), `dict` separates blocks with Hubble's `------------`.
pub struct Printer {
    format: OutputFormat,
    color: Color,
    follow: bool,
    rows: Vec<[String; 6]>,
    printed: usize,
}

const TABLE_HEADER: [&str; 6] = ["TIMESTAMP", "SOURCE", "DESTINATION", "TYPE", "VERDICT", "SUMMARY"];

impl Printer {
    pub fn new(format: OutputFormat, color: Color, follow: bool) -> Self {
        Printer { format, color, follow, rows: Vec::new(), printed: 0 }
    }

    /// What to write now for this flow (possibly nothing: a table waits for its last row).
    pub fn flow(&mut self, resp: &FlowResponse) -> String {
        let out = match self.format {
            OutputFormat::Table if !self.follow => {
                self.rows.push(table_row(&resp.flow));
                String::new()
            }
            OutputFormat::Table => {
                let row = table_row(&resp.flow);
                let mut out = String::new();
                if self.printed == 0 {
                    out = aligned(&[header_row()], &widths(&[header_row(), row.clone()]));
                }
                let widths = widths(&[header_row(), row.clone()]);
                out + &aligned(std::slice::from_ref(&row), &widths)
            }
            OutputFormat::Dict if self.printed > 0 => format!("------------\n{}", dict(&resp.flow)),
            _ => render(resp, self.format, self.color),
        };
        self.printed += 1;
        out
    }

    /// What is left to write when the stream ends.
    pub fn finish(&mut self) -> String {
        if self.format != OutputFormat::Table || self.follow || self.rows.is_empty() {
            return String::new();
        }
        let mut rows = vec![header_row()];
        rows.append(&mut self.rows);
        aligned(&rows, &widths(&rows))
    }
}

fn header_row() -> [String; 6] {
    TABLE_HEADER.map(str::to_string)
}

fn widths(rows: &[[String; 6]]) -> [usize; 6] {
    let mut w = [0; 6];
    for row in rows {
        for (w, cell) in w.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    w
}

/// Go's tabwriter as Hubble sets it up: columns padded to the widest cell plus three spaces.
fn aligned(rows: &[[String; 6]], widths: &[usize; 6]) -> String {
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}   ", w = widths[i]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Source and destination as Hubble's table and dict show them: not flipped for replies.
fn ends(f: &Flow) -> (String, String) {
    let (src_port, dst_port) = f.l4.as_ref().map(|l4| l4.ports()).unwrap_or((0, 0));
    let ip = f.ip.as_ref();
    let src = host(
        ip.map(|i| i.source.as_str()).unwrap_or(""),
        src_port,
        f.source.as_ref().map(|e| (e.namespace.as_str(), e.pod_name.as_str())),
        &f.source_names,
    );
    let dst = host(
        ip.map(|i| i.destination.as_str()).unwrap_or(""),
        dst_port,
        f.destination.as_ref().map(|e| (e.namespace.as_str(), e.pod_name.as_str())),
        &f.destination_names,
    );
    (src, dst)
}

fn table_row(f: &Flow) -> [String; 6] {
    let (src, dst) = ends(f);
    [stamp_milli(f.time), src, dst, flow_type(f), f.verdict.as_str().to_string(), f.summary.clone()]
}

fn dict(f: &Flow) -> String {
    let (src, dst) = ends(f);
    format!(
        "  TIMESTAMP: {}\n     SOURCE: {src}\nDESTINATION: {dst}\n       TYPE: {}\n    VERDICT: {}\n    SUMMARY: {}\n",
        stamp_milli(f.time),
        flow_type(f),
        f.verdict.as_str(),
        f.summary
    )
}

/// Cilium's reserved identities (`identity.NumericIdentity` below 256), by their names.
const RESERVED_IDENTITIES: [&str; 10] = [
    "host",
    "world",
    "unmanaged",
    "health",
    "init",
    "remote-node",
    "kube-apiserver",
    "ingress",
    "world-ipv4",
    "world-ipv6",
];

/// Hubble's identity column: `(world)` for a reserved identity, `(ID:n)` for any other.
pub fn identity(e: Option<&Endpoint>) -> String {
    let id = e.map_or(0, |e| e.identity);
    match id {
        1..=10 => format!("({})", RESERVED_IDENTITIES[id as usize - 1]),
        11..=255 => format!("({id})"),
        _ => format!("(ID:{id})"),
    }
}

/// `Nov 27 10:00:01.123: default/alpine:41234 (ID:263) -> kube-system/kube-dns:53 (ID:265) dns-request proxy FORWARDED (DNS Query www.microsoft.com. A)`
pub fn compact(f: &Flow, color: Color) -> String {
    let (mut src, mut dst) = ends(f);
    let (mut src_id, mut dst_id) = (identity(f.source.as_ref()), identity(f.destination.as_ref()));
    let arrow = match f.is_reply {
        None => "<>",
        Some(false) => "->",
        Some(true) => {
            std::mem::swap(&mut src, &mut dst);
            std::mem::swap(&mut src_id, &mut dst_id);
            "<-"
        }
    };
    let verdict = match f.verdict {
        Verdict::Forwarded => color.paint("32", f.verdict.as_str()),
        Verdict::Dropped | Verdict::Error => color.paint("31", f.verdict.as_str()),
        Verdict::Audit => color.paint("33", f.verdict.as_str()),
        Verdict::Unknown => f.verdict.as_str().to_string(),
    };
    let mut line = String::with_capacity(160);
    let _ = writeln!(
        line,
        "{}: {} {} {arrow} {} {} {} {verdict} ({})",
        stamp_milli(f.time),
        color.paint("36", &src),
        color.paint("35", &src_id),
        color.paint("36", &dst),
        color.paint("35", &dst_id),
        flow_type(f),
        f.summary
    );
    line
}

/// Hubble's type column: `dns-request proxy`, `dns-response proxy`, `Policy denied`.
pub fn flow_type(f: &Flow) -> String {
    if let Some(l7) = &f.l7 {
        let t = match l7.l7_type {
            L7FlowType::Request => "request",
            L7FlowType::Response => "response",
            L7FlowType::Unknown => "unknown_l7_type",
        };
        return match &l7.dns {
            Some(dns) => format!("dns-{t} {}", dns.observation_source),
            None => format!("l7-{t}"),
        };
    }
    match f.event_type {
        Some(et) if et.event_type == EVENT_TYPE_DROP => u32::try_from(et.sub_type)
            .ok()
            .and_then(DropReason::from_code)
            .map(|r| r.description().to_string())
            .unwrap_or_else(|| format!("Drop reason {}", et.sub_type)),
        _ => "UNKNOWN".to_string(),
    }
}

/// Pod (`ns/name`), else the names the IP had, else the IP; with the port unless it is 0.
fn host(ip: &str, port: u32, pod: Option<(&str, &str)>, names: &[String]) -> String {
    let h = match pod {
        Some((ns, name)) if !name.is_empty() => format!("{ns}/{name}"),
        _ if !names.is_empty() => names.join(","),
        _ => ip.to_string(),
    };
    match port {
        0 => h,
        // Bracket IPv6 literals as Go's net.JoinHostPort does.
        _ if h.contains(':') => format!("[{h}]:{port}"),
        _ => format!("{h}:{port}"),
    }
}

/// Go's `time.StampMilli` (`Jan _2 15:04:05.000`), in UTC: the agent's nodes and containers run in
/// UTC, and a fixed zone keeps lines from different machines comparable.
pub fn stamp_milli(t: SystemTime) -> String {
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    // `YYYY-MM-DDTHH:MM:SS.mmmZ`
    let iso = humantime::format_rfc3339_millis(t).to_string();
    let month: usize = iso[5..7].parse().unwrap_or(1);
    let day: u32 = iso[8..10].parse().unwrap_or(1);
    format!("{} {day:>2} {}", MONTHS[month.clamp(1, 12) - 1], &iso[11..23])
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use serde_json::Value;

    use super::*;
    use crate::flows::convert::tests::{Names, dns_request, dns_response, drop_event, table};
    use crate::flows::convert::{dns_flow, drop_flow};

    fn resp(flow: Flow) -> FlowResponse {
        FlowResponse { time: flow.time, node_name: flow.node_name.clone(), flow }
    }

    #[test]
    fn compact_lines() {
        let t = table();
        for (flow, want) in [
            (
                dns_flow(&dns_request(), &t, "node1"),
                "Nov 27 10:00:01.123: default/alpine:41234 (ID:263) -> kube-system/kube-dns:53 (ID:265) dns-request proxy FORWARDED (DNS Query www.microsoft.com. A)\n",
            ),
            (
                dns_flow(&dns_response(), &t, "node1"),
                "Nov 27 10:00:01.123: default/alpine:41234 (ID:263) <- kube-system/kube-dns:53 (ID:265) dns-response proxy FORWARDED (DNS Answer \"13.107.1.1\" TTL: 300 (Proxy www.microsoft.com. A))\n",
            ),
            (
                drop_flow(&drop_event(), &t, &Names, "node1"),
                "Nov 27 10:00:02.000: default/alpine:43344 (ID:263) -> www.microsoft.com:443 (world) Policy denied DROPPED (TCP Flags: SYN)\n",
            ),
        ] {
            assert_eq!(compact(&flow, Color::Never), want);
        }
    }

    #[test]
    fn compact_unknown_direction_ipv6_and_colour() {
        let ev = drop_event();
        let ev = ebpf_redirect::DropEvent {
            src: "[fd00::5]:43344".parse().unwrap(),
            dst: "[2001:db8::1]:443".parse().unwrap(),
            tcp_flags: 0x10,
            endpoint: fqdn_cache::EndpointId(99),
            ..ev
        };
        let f = drop_flow(&ev, &table(), &crate::flows::convert::NoNames, "");
        let line = compact(&f, Color::Never);
        assert!(
            line.ends_with(
                ": [fd00::5]:43344 (world) <> [2001:db8::1]:443 (world) Policy denied DROPPED (TCP Flags: ACK)\n"
            ),
            "{line}"
        );
        let coloured = compact(&f, Color::Always);
        assert!(coloured.contains("\x1b[31mDROPPED\x1b[0m"), "{coloured:?}");
        assert!(!line.contains('\x1b'));
    }

    #[test]
    fn table_and_dict_like_hubble() {
        let t = table();
        let flows = [resp(dns_flow(&dns_request(), &t, "node1")), resp(drop_flow(&drop_event(), &t, &Names, "node1"))];
        let mut p = Printer::new(OutputFormat::Table, Color::Never, false);
        let streamed: String = flows.iter().map(|f| p.flow(f)).collect();
        assert_eq!(streamed, "", "a table waits for its last row to align");
        let want = "\
TIMESTAMP             SOURCE                 DESTINATION               TYPE                VERDICT     SUMMARY
Nov 27 10:00:01.123   default/alpine:41234   kube-system/kube-dns:53   dns-request proxy   FORWARDED   DNS Query www.microsoft.com. A
Nov 27 10:00:02.000   default/alpine:43344   www.microsoft.com:443     Policy denied       DROPPED     TCP Flags: SYN
";
        assert_eq!(p.finish(), want);
        let mut p = Printer::new(OutputFormat::Dict, Color::Never, false);
        let text: String = flows.iter().map(|f| p.flow(f)).collect::<String>() + &p.finish();
        let want = [
            "  TIMESTAMP: Nov 27 10:00:01.123",
            "     SOURCE: default/alpine:41234",
            "DESTINATION: kube-system/kube-dns:53",
            "       TYPE: dns-request proxy",
            "    VERDICT: FORWARDED",
            "    SUMMARY: DNS Query www.microsoft.com. A",
            "------------",
            "  TIMESTAMP: Nov 27 10:00:02.000",
            "     SOURCE: default/alpine:43344",
            "DESTINATION: www.microsoft.com:443",
            "       TYPE: Policy denied",
            "    VERDICT: DROPPED",
            "    SUMMARY: TCP Flags: SYN",
            "",
        ]
        .join("\n");
        assert_eq!(text, want);
        let mut p = Printer::new(OutputFormat::Table, Color::Never, true);
        let first = p.flow(&flows[0]);
        assert!(first.starts_with("TIMESTAMP") && first.lines().count() == 2, "{first}");
        assert_eq!(p.flow(&flows[1]).lines().count(), 1);
    }

    #[test]
    fn identities_as_hubble_prints_them() {
        let id = |n: u32| identity(Some(&Endpoint { identity: n, ..Endpoint::default() }));
        assert_eq!(
            [id(1), id(2), id(7), id(200), id(0), id(4242)],
            ["(host)", "(world)", "(kube-apiserver)", "(200)", "(ID:0)", "(ID:4242)"]
        );
    }

    #[test]
    fn stamp_pads_the_day_like_go() {
        assert_eq!(stamp_milli(UNIX_EPOCH + Duration::new(1234, 567_800_000)), "Jan  1 00:20:34.567");
        assert_eq!(stamp_milli(UNIX_EPOCH + Duration::new(1_701_079_201, 0)), "Nov 27 10:00:01.000");
    }

    #[test]
    fn json_has_hubbles_field_names_and_values() {
        let t = table();
        let line = render(&resp(dns_flow(&dns_response(), &t, "node1")), OutputFormat::Json, Color::Always);
        assert!(line.ends_with('\n') && !line.contains('\x1b'));
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["node_name"], "node1");
        assert_eq!(v["time"], "2023-11-27T10:00:01.123Z");
        let f = &v["flow"];
        assert_eq!(f["time"], "2023-11-27T10:00:01.123Z");
        assert_eq!(f["verdict"], "FORWARDED");
        assert_eq!(f["IP"]["source"], "10.96.0.10");
        assert_eq!(f["IP"]["destination"], "10.0.1.5");
        assert_eq!(f["IP"]["ipVersion"], "IPv4");
        assert_eq!(f["l4"]["UDP"]["source_port"], 53);
        assert_eq!(f["l4"]["UDP"]["destination_port"], 41234);
        assert_eq!(f["source"]["namespace"], "kube-system");
        assert_eq!(f["source"]["pod_name"], "kube-dns");
        assert_eq!(f["destination"]["labels"][0], "k8s:app=alpine");
        assert_eq!(f["destination"]["ID"], 7);
        assert_eq!(f["Type"], "L7");
        assert_eq!(f["l7"]["type"], "RESPONSE");
        assert_eq!(f["l7"]["latency_ns"], "1500000");
        let dns = &f["l7"]["dns"];
        assert_eq!(dns["query"], "www.microsoft.com.");
        assert_eq!(dns["ips"][0], "13.107.1.1");
        assert_eq!(dns["ttl"], 300);
        assert_eq!(dns["observation_source"], "proxy");
        assert_eq!(dns["qtypes"][0], "A");
        assert_eq!(dns["rrtypes"][0], "A");
        assert!(dns.get("rcode").is_none(), "rcode 0 is left out, as proto3 JSON does");
        assert!(dns.get("cnames").is_none());
        assert_eq!(f["event_type"]["type"], 129);
        assert_eq!(f["traffic_direction"], "EGRESS");
        assert_eq!(f["is_reply"], true);
        assert_eq!(f["Summary"], "DNS Answer \"13.107.1.1\" TTL: 300 (Proxy www.microsoft.com. A)");
        // Parsing our own output gives the flow back.
        let back: FlowResponse = serde_json::from_str(&line).unwrap();
        assert_eq!(back.flow, dns_flow(&dns_response(), &t, "node1"));
    }

    #[test]
    fn json_drop_matches_hubbles_shape() {
        let f = drop_flow(&drop_event(), &table(), &Names, "node1");
        let line = render(&resp(f), OutputFormat::Jsonpb, Color::Never);
        let v: Value = serde_json::from_str(&line).unwrap();
        let f = &v["flow"];
        assert_eq!(f["verdict"], "DROPPED");
        assert_eq!(f["drop_reason"], 133);
        assert_eq!(f["drop_reason_desc"], "POLICY_DENIED");
        assert_eq!(f["Type"], "L3_L4");
        assert_eq!(f["l4"]["TCP"]["flags"], serde_json::json!({"SYN": true}));
        assert_eq!(f["event_type"], serde_json::json!({"type": 1, "sub_type": 133}));
        assert_eq!(f["destination_names"], serde_json::json!(["www.microsoft.com"]));
        assert_eq!(f["is_reply"], false);
        assert_eq!(f["Summary"], "TCP Flags: SYN");
        assert_eq!(f["destination"], serde_json::json!({"identity": 2, "labels": ["reserved:world"]}));
        assert!(f.get("l7").is_none());
        // Field order follows the proto field numbers, as Hubble prints them.
        let flow_text = serde_json::to_string(&drop_flow(&drop_event(), &table(), &Names, "node1")).unwrap();
        let keys = top_level_keys(&flow_text);
        let order = [
            "time",
            "verdict",
            "drop_reason",
            "IP",
            "l4",
            "source",
            "destination",
            "Type",
            "node_name",
            "destination_names",
            "event_type",
            "traffic_direction",
            "drop_reason_desc",
            "is_reply",
            "Summary",
        ];
        assert_eq!(keys, order);
    }

    /// The keys of a JSON object's first level, in text order (serde_json's Value sorts them).
    fn top_level_keys(text: &str) -> Vec<String> {
        let (mut depth, mut in_str, mut escaped, mut cur, mut keys) = (0, false, false, String::new(), Vec::new());
        let mut expecting_key = false;
        for c in text.chars() {
            if in_str {
                match c {
                    _ if escaped => escaped = false,
                    '\\' => escaped = true,
                    '"' => {
                        in_str = false;
                        if expecting_key {
                            keys.push(std::mem::take(&mut cur));
                            expecting_key = false;
                        }
                        continue;
                    }
                    _ => {}
                }
                if expecting_key {
                    cur.push(c);
                }
                continue;
            }
            match c {
                '{' | '[' => {
                    depth += 1;
                    expecting_key = depth == 1 && c == '{';
                }
                '}' | ']' => depth -= 1,
                ',' if depth == 1 => expecting_key = true,
                '"' => in_str = true,
                _ => {}
            }
        }
        keys
    }
}
