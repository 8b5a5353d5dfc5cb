//! Transparent mode knows a query's endpoint by the interface it arrived on, not by its source
//! address: a pod that sends DNS from a second address on its interface, or in kube-dns's name,
//! is refused (REFUSED, never forwarded), not served as no one (unpoliced). The proxy runs
//! in-process in a node namespace, without the eBPF datapath (whose anti-spoofing would drop
//! these packets first): policy routing delivers the pod's DNS to it, as the redirect does.
//! Real NSD, real dig, a raw socket for the forged kube-dns source. Root only.

use std::net::{IpAddr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dns_proxy::{DnsFlow, DnsFlowKind, FlowSink, Mode, Proxy, ProxyConfig, Verdict};
use fqdn_cache::{Answer, Completion, DatapathError, EndpointId, Learner};
use fqdnd_testkit::dig::parse;
use fqdnd_testkit::dns_server::DnsServer;
use fqdnd_testkit::fqdnd::dns_policy;
use fqdnd_testkit::netns::{self, Netns};
use fqdnd_testkit::privileged;
use policy_sync::{Endpoint, ResolvedEndpoint, Snapshot};
use tokio_util::sync::CancellationToken;

const POD_IP: &str = "10.0.1.5";
const SECOND_IP: &str = "10.0.1.77";
const KUBE_DNS: &str = "10.96.0.10";

/// Learns nothing: what the proxy forwards is the question here, not what it learns.
struct NoLearning;

impl Learner for NoLearning {
    fn learn(&self, _: &Answer) -> Completion<'_, Result<bool, DatapathError>> {
        Completion::ready(Ok(false))
    }
}

#[derive(Default)]
struct Flows(Mutex<Vec<DnsFlow>>);

impl FlowSink for Flows {
    fn wants_flows(&self) -> bool {
        true
    }

    fn dns_flow(&self, flow: DnsFlow) {
        self.0.lock().unwrap().push(flow);
    }
}

struct Net {
    pod: Netns,
    node: Netns,
    dns: Netns,
    pod_if: String,
}

fn net() -> Net {
    let pod = Netns::new("opod");
    let node = Netns::new("onode");
    let dns = Netns::new("odns");
    let pod_if = format!("p{}", &node.name()[2..]);
    let dns_if = format!("d{}", &node.name()[2..]);
    node.ip(&["link", "add", &pod_if, "type", "veth", "peer", "name", "eth0", "netns", pod.name()]);
    node.ip(&["link", "add", &dns_if, "type", "veth", "peer", "name", "eth0", "netns", dns.name()]);
    for (ns, dev, v4) in [
        (&node, pod_if.as_str(), "10.0.1.1/24"),
        (&node, dns_if.as_str(), "10.96.0.1/24"),
        (&pod, "eth0", "10.0.1.5/24"),
        (&dns, "eth0", "10.96.0.10/24"),
    ] {
        ns.ip(&["addr", "add", v4, "dev", dev]);
        ns.ip(&["link", "set", dev, "up"]);
    }
    // The pod's second address: the kernel's anti-spoofing would drop what leaves from it, but
    // there is no datapath here.
    pod.ip(&["addr", "add", &format!("{SECOND_IP}/24"), "dev", "eth0"]);
    pod.ip(&["route", "add", "default", "via", "10.0.1.1"]);
    dns.ip(&["route", "add", "default", "via", "10.96.0.1"]);
    node.ip(&["route", "add", "local", "0.0.0.0/0", "dev", "lo", "table", "100"]);
    for proto in ["udp", "tcp"] {
        node.ip(&["rule", "add", "iif", &pod_if, "ipproto", proto, "dport", "53", "lookup", "100"]);
    }
    node.sysctl("net.ipv4.ip_forward", "1");
    Net { pod, node, dns, pod_if }
}

fn snapshot(pod_if: &str) -> Snapshot {
    let (policies, problems) =
        policy_sync::parse_file(std::path::Path::new("dns.yaml"), &dns_policy("dns", 53, &["*.microsoft.com"]));
    assert!(problems.is_empty(), "{problems:?}");
    let kube_dns = Endpoint {
        namespace: "kube-system".into(),
        name: "kube-dns".into(),
        labels: [("k8s-app".to_string(), "kube-dns".to_string())].into(),
        ips: vec![KUBE_DNS.parse().unwrap()],
        interface: None,
        policy_audit_mode: false,
    };
    let alpine = Endpoint {
        namespace: "default".into(),
        name: "alpine".into(),
        labels: [("app".to_string(), "alpine".to_string())].into(),
        ips: vec![POD_IP.parse().unwrap()],
        interface: Some(pod_if.to_string()),
        policy_audit_mode: false,
    };
    let inventory = vec![kube_dns.clone(), alpine.clone()];
    let resolved = |id, endpoint: &Endpoint| ResolvedEndpoint {
        id: EndpointId(id),
        endpoint: endpoint.clone(),
        policy: Arc::new(policy_sync::resolve(&policies, endpoint, &inventory)),
    };
    Snapshot::new(1, vec![resolved(1, &kube_dns), resolved(2, &alpine)], vec![], 0)
}

/// `dig @kube-dns name A` in the pod, from `source`.
fn dig(n: &Net, source: &str, name: &str, tcp: bool) -> fqdnd_testkit::dig::DigResult {
    let mut cmd = n.pod.command("dig");
    cmd.args([&format!("@{KUBE_DNS}"), "-b", source, "+tries=1", "+time=3", name, "A"]);
    if tcp {
        cmd.arg("+tcp");
    }
    let out = cmd.output().expect("dig (Debian package dnsutils)");
    parse(&String::from_utf8_lossy(&out.stdout))
}

#[test]
fn queries_are_the_endpoints_whose_interface_they_came_from() {
    if !privileged::available("queries_are_the_endpoints_whose_interface_they_came_from") {
        return;
    }
    let n = net();
    let dns_path = format!("--net={}", n.dns.path().display());
    let _nsd = DnsServer::builder()
        .fixture_zone("microsoft.com")
        .fixture_zone("google.com")
        .listen(format!("{KUBE_DNS}:53").parse().unwrap())
        .wrap(&["nsenter", &dns_path])
        .start()
        .unwrap();

    let flows = Arc::new(Flows::default());
    let mut config = ProxyConfig::plain(vec!["0.0.0.0:53".parse().unwrap()], "127.0.0.1:1".parse().unwrap());
    config.mode = Mode::Transparent;
    config.upstream = None;
    let proxy = Proxy::new(config, Arc::new(NoLearning), Some(flows.clone() as Arc<dyn FlowSink>)).unwrap();
    let shutdown = CancellationToken::new();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let server = {
        let (proxy, shutdown, pod_if) = (proxy.clone(), shutdown.clone(), n.pod_if.clone());
        // The proxy's threads and sockets live in the node namespace, and resolve its interfaces.
        n.node.spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            rt.block_on(async move {
                proxy.set_snapshot(Arc::new(snapshot(&pod_if)));
                let bound = proxy.bind().expect("bind 0.0.0.0:53 in the node namespace");
                ready_tx.send(()).unwrap();
                bound.serve(shutdown).await.unwrap();
            });
        })
    };
    ready_rx.recv_timeout(Duration::from_secs(10)).expect("proxy bound");

    // The pod's own address: policed (allowed name answered, other names refused as the policy says).
    for tcp in [false, true] {
        let r = dig(&n, POD_IP, "www.microsoft.com", tcp);
        assert_eq!(
            (r.status.as_str(), r.data("A")),
            ("NOERROR", vec!["10.200.0.1".to_string()]),
            "tcp={tcp}: {}",
            r.raw
        );
        let r = dig(&n, POD_IP, "www.google.com", tcp);
        assert_eq!(r.status, "NXDOMAIN", "tcp={tcp}: the policy's refusal: {}", r.raw);
    }
    // A second address on the same interface: refused, for names the policy allows or not, and
    // never forwarded (NSD would answer www.google.com NOERROR).
    for tcp in [false, true] {
        for name in ["www.google.com", "www.microsoft.com"] {
            let r = dig(&n, SECOND_IP, name, tcp);
            assert_eq!(r.status, "REFUSED", "tcp={tcp} {name} from {SECOND_IP}: {}", r.raw);
        }
    }
    // kube-dns's address, forged with a raw socket: the refusal goes to kube-dns, so look at what
    // the proxy made of it.
    let forged = SocketAddrV4::new(KUBE_DNS.parse().unwrap(), 40053);
    n.pod
        .run(|| {
            netns::send_raw_udp4(
                forged,
                SocketAddrV4::new(KUBE_DNS.parse().unwrap(), 53),
                &netns::dns_query(7, "www.google.com"),
            )
        })
        .expect("raw send");
    let deadline = Instant::now() + Duration::from_secs(5);
    let forged_flow = loop {
        let found = flows.0.lock().unwrap().iter().find(|f| f.client == SocketAddr::V4(forged)).cloned();
        if let Some(f) = found {
            break f;
        }
        assert!(Instant::now() < deadline, "the proxy never saw the forged query");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!((forged_flow.kind, forged_flow.verdict), (DnsFlowKind::Request, Verdict::Dropped), "{forged_flow:?}");

    let seen = flows.0.lock().unwrap().clone();
    let spoofed: Vec<&DnsFlow> = seen.iter().filter(|f| f.client.ip() != POD_IP.parse::<IpAddr>().unwrap()).collect();
    assert!(!spoofed.is_empty());
    for f in &spoofed {
        assert_eq!(f.verdict, Verdict::Dropped, "nothing from a borrowed address is forwarded: {f:?}");
        assert_eq!(f.endpoint, None, "nor is it anyone's: {f:?}");
    }
    // 4 digs from the second address, 1 forged datagram.
    assert_eq!(proxy.stats().unverified, 5, "{:?}", proxy.stats());
    shutdown.cancel();
    server.join().unwrap();
}
