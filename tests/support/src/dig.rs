//! The real DNS clients `dig` (dnsutils) and `kdig` (knot-dnsutils), run as processes, with
//! their output parsed into the parts tests assert on.

use std::net::SocketAddr;
use std::process::Command;

use anyhow::{Context, Result, bail};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Client {
    Dig,
    Kdig,
}

/// One answer as the client printed it.
#[derive(Clone, Debug, Default)]
pub struct DigResult {
    /// `NOERROR`, `NXDOMAIN`, `REFUSED`, `SERVFAIL`, `FORMERR`...
    pub status: String,
    /// Header flags, lower case: `qr`, `rd`, `ra`, `tc`, `aa`...
    pub flags: Vec<String>,
    /// Question lines: (name, type).
    pub question: Vec<(String, String)>,
    /// Answer records: (name, ttl, type, data).
    pub answers: Vec<(String, u32, String, String)>,
    pub raw: String,
}

impl DigResult {
    pub fn has_flag(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }

    /// Data of every answer record of `rtype`.
    pub fn data(&self, rtype: &str) -> Vec<String> {
        self.answers.iter().filter(|a| a.2 == rtype).map(|a| a.3.clone()).collect()
    }
}

/// Query `server` for `name`/`rtype` with `client`; `extra` are client options (`+tcp`, `+ignore`...).
pub fn query(client: Client, server: SocketAddr, name: &str, rtype: &str, extra: &[&str]) -> Result<DigResult> {
    let prog = match client {
        Client::Dig => "dig",
        Client::Kdig => "kdig",
    };
    let mut cmd = Command::new(prog);
    cmd.arg(format!("@{}", server.ip())).args(["-p", &server.port().to_string()]);
    match client {
        // One try, a generous wait: a failure must show as a failure, not be retried away.
        Client::Dig => cmd.args(["+tries=1", "+time=5"]),
        Client::Kdig => cmd.args(["+retry=0", "+time=5"]),
    };
    cmd.args(extra).arg(name).arg(rtype);
    let out = cmd.output().with_context(|| format!("running {prog} (Debian: dnsutils / knot-dnsutils)"))?;
    let raw = String::from_utf8_lossy(&out.stdout).into_owned();
    let parsed = parse(&raw);
    if parsed.status.is_empty() {
        bail!("{prog} got no answer from {server} for {name} {rtype}: {raw}{}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(parsed)
}

/// Parse dig's or kdig's text output.
pub fn parse(raw: &str) -> DigResult {
    let mut r = DigResult { raw: raw.to_string(), ..Default::default() };
    let mut section = "";
    for line in raw.lines() {
        let t = line.trim();
        if let Some(i) = t.find("status: ") {
            r.status = t[i + 8..].split([',', ';', ' ']).next().unwrap_or("").to_string();
            continue;
        }
        let lower = t.to_ascii_lowercase();
        if let Some(rest) = lower.strip_prefix(";; flags:") {
            r.flags = rest.split(';').next().unwrap_or("").split_whitespace().map(str::to_string).collect();
            continue;
        }
        if t.starts_with(";;") && t.ends_with("SECTION:") {
            section = if t.contains("QUESTION") {
                "q"
            } else if t.contains("ANSWER") {
                "a"
            } else {
                "other"
            };
            continue;
        }
        if t.is_empty() {
            section = "";
            continue;
        }
        match section {
            "q" => {
                let words: Vec<&str> = t.trim_start_matches(';').split_whitespace().collect();
                if words.len() >= 3 {
                    r.question.push((words[0].to_string(), words[words.len() - 1].to_string()));
                }
            }
            "a" if !t.starts_with(';') => {
                let words: Vec<&str> = t.split_whitespace().collect();
                if words.len() >= 5 {
                    r.answers.push((
                        words[0].to_string(),
                        words[1].parse().unwrap_or(0),
                        words[3].to_string(),
                        words[4..].join(" "),
                    ));
                }
            }
            _ => {}
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_dig_and_kdig() {
        let dig = "\n;; ->>HEADER<<- opcode: QUERY, status: NXDOMAIN, id: 4711\n;; flags: qr rd ra; QUERY: 1, ANSWER: 0\n\n;; QUESTION SECTION:\n;www.google.com.\t\t\tIN\tA\n\n";
        let r = parse(dig);
        assert_eq!(r.status, "NXDOMAIN");
        assert_eq!(r.flags, ["qr", "rd", "ra"]);
        assert_eq!(r.question, [("www.google.com.".to_string(), "A".to_string())]);
        let kdig = ";; ->>HEADER<<- opcode: QUERY; status: NOERROR; id: 1\n;; Flags: qr aa rd; QUERY: 1; ANSWER: 1\n\n;; QUESTION SECTION:\n;; www.microsoft.com.  \t\tIN\tA\n\n;; ANSWER SECTION:\nwww.microsoft.com.\t300\tIN\tA\t10.200.0.1\n\n";
        let r = parse(kdig);
        assert_eq!(r.status, "NOERROR");
        assert!(r.has_flag("aa"));
        assert_eq!(r.data("A"), ["10.200.0.1"]);
        assert_eq!(r.answers[0].1, 300);
    }
}
