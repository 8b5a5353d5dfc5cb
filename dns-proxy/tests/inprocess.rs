//! The proxy driven in-process, so tests can see what it hands the learner and the datapath, read
//! its counters and flows, and put a fake (hostile) upstream behind it. Real NSD, real sockets.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dns_proxy::{DnsFlow, DnsFlowKind, FlowSink, Proxy, ProxyConfig, Verdict};
use fqdn_cache::{
    AllowKey, Answer, Completion, Datapath, DatapathError, Delta, EndpointId, L4Proto, Learner, MemoryDatapath,
    PortProto,
};
use fqdnd_testkit::dns_server::DnsServer;
use fqdnd_testkit::fqdnd::dns_policy;
use fqdnd_testkit::wait;
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use policy_sync::{Endpoint, ResolvedEndpoint, Snapshot};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;

const ALPINE: EndpointId = EndpointId(1);

/// Records every answer and allows each of its IPs for the endpoint in the datapath (what the
/// enforcer does for a selector matching the name), resolving with the datapath's ack.
struct Recorder {
    answers: Mutex<Vec<Answer>>,
    datapath: Arc<MemoryDatapath>,
}

impl Learner for Recorder {
    fn learn(&self, answer: &Answer) -> Completion<'_, Result<bool, DatapathError>> {
        self.answers.lock().unwrap().push(answer.clone());
        let add =
            answer.ips.iter().map(|&ip| AllowKey { endpoint: answer.endpoint, ip, port: PortProto::ANY }).collect();
        let apply = self.datapath.apply(Delta { add, remove: vec![], ..Delta::default() });
        Completion::later(async move { apply.await.map(|()| true) })
    }
}

/// Flows into a channel, as the agent's hub would take them.
struct Flows(tokio::sync::mpsc::UnboundedSender<DnsFlow>);

impl FlowSink for Flows {
    fn wants_flows(&self) -> bool {
        true
    }

    fn dns_flow(&self, flow: DnsFlow) {
        let _ = self.0.send(flow);
    }
}

struct Harness {
    proxy: Proxy,
    addr: SocketAddr,
    learner: Arc<Recorder>,
    datapath: Arc<MemoryDatapath>,
    flows: Mutex<tokio::sync::mpsc::UnboundedReceiver<DnsFlow>>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Harness {
    /// A plain-mode proxy on 127.0.0.1 forwarding to `upstream`; alpine (127.0.0.1) may ask
    /// `upstream` for `patterns`.
    async fn start(upstream: SocketAddr, patterns: &[&str], tweak: impl FnOnce(&mut ProxyConfig)) -> Harness {
        let mut config = ProxyConfig::plain(vec!["127.0.0.1:0".parse().unwrap()], upstream);
        tweak(&mut config);
        let datapath = Arc::new(MemoryDatapath::new());
        let learner = Arc::new(Recorder { answers: Mutex::default(), datapath: datapath.clone() });
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let proxy = Proxy::new(config, learner.clone(), Some(Arc::new(Flows(tx)))).unwrap();

        let (policies, problems) = policy_sync::parse_file(
            std::path::Path::new("dns.yaml"),
            &dns_policy("dns-allow", upstream.port(), patterns),
        );
        assert!(problems.is_empty(), "{problems:?}");
        let dns = Endpoint {
            namespace: "kube-system".into(),
            name: "kube-dns".into(),
            labels: [("k8s-app".to_string(), "kube-dns".to_string())].into(),
            ips: vec![upstream.ip()],
            interface: None,
            policy_audit_mode: false,
        };
        let alpine = Endpoint {
            namespace: "default".into(),
            name: "alpine".into(),
            labels: [("app".to_string(), "alpine".to_string())].into(),
            ips: vec!["127.0.0.1".parse().unwrap()],
            interface: None,
            policy_audit_mode: false,
        };
        let inventory = vec![dns, alpine.clone()];
        let policy = Arc::new(policy_sync::resolve(&policies, &alpine, &inventory));
        let snapshot = Snapshot::new(1, vec![ResolvedEndpoint { id: ALPINE, endpoint: alpine, policy }], vec![], 0);
        proxy.set_snapshot(Arc::new(snapshot));

        let bound = proxy.bind().unwrap();
        let addr = bound.listeners()[0].addr;
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let task = tokio::spawn(async move { bound.serve(token).await.unwrap() });
        Harness { proxy, addr, learner, datapath, flows: Mutex::new(rx), shutdown, task }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap();
    }
}

fn query(id: u16, name: &str, qtype: RecordType, edns: Option<u16>) -> Vec<u8> {
    let mut msg = Message::new(id, MessageType::Query, OpCode::Query);
    msg.metadata.recursion_desired = true;
    msg.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    if let Some(size) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        msg.set_edns(e);
    }
    msg.to_vec().unwrap()
}

/// Send `packet` from a fresh client socket and return the first reply.
async fn ask(server: SocketAddr, packet: &[u8]) -> Message {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.send_to(packet, server).await.unwrap();
    recv(&sock).await
}

async fn recv(sock: &UdpSocket) -> Message {
    let mut buf = vec![0u8; 65535];
    let (n, _) = tokio::time::timeout(Duration::from_secs(10), sock.recv_from(&mut buf))
        .await
        .expect("an answer within 10 s")
        .unwrap();
    Message::from_vec(&buf[..n]).unwrap()
}

fn ips(msg: &Message) -> Vec<IpAddr> {
    msg.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect()
}

fn nsd() -> DnsServer {
    DnsServer::builder().fixture_zone("microsoft.com").fixture_zone("google.com").start().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answer_is_released_only_after_the_datapath_ack() {
    let nsd = nsd();
    let h = Harness::start(nsd.addr, &["*.microsoft.com"], |c| c.response_max_delay = Duration::from_secs(30)).await;
    // The ack takes a while; had the proxy released the answer earlier, the entry would be
    // missing when the client sees the answer.
    h.datapath.set_ack_delay(Duration::from_millis(300));
    let reply = ask(h.addr, &query(1, "www.microsoft.com.", RecordType::A, None)).await;
    let ip: IpAddr = "10.200.0.1".parse().unwrap();
    assert_eq!(ips(&reply), [ip]);
    assert!(h.datapath.contains(ALPINE, ip), "answer released before the datapath held {ip}");
    assert_eq!(h.datapath.applied(), 1);
    assert_eq!(h.proxy.stats().datapath_timeouts, 0);

    // A denied name is not learned and never reaches the datapath.
    let reply = ask(h.addr, &query(2, "www.google.com.", RecordType::A, None)).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(h.datapath.applied(), 1);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_datapath_releases_after_max_delay_and_counts() {
    let nsd = nsd();
    let h = Harness::start(nsd.addr, &["*.microsoft.com"], |c| c.response_max_delay = Duration::from_millis(50)).await;
    h.datapath.set_ack_delay(Duration::from_secs(3));
    let reply = ask(h.addr, &query(1, "login.microsoft.com.", RecordType::A, None)).await;
    assert_eq!(ips(&reply), ["10.200.0.2".parse::<IpAddr>().unwrap()]);
    assert_eq!(h.proxy.stats().datapath_timeouts, 1);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cname_chain_is_learned_with_the_lowest_ttl() {
    let nsd = nsd();
    let h = Harness::start(nsd.addr, &["*.microsoft.com"], |_| {}).await;
    let reply = ask(h.addr, &query(9, "Chain.Microsoft.com.", RecordType::A, None)).await;
    assert_eq!(reply.answers.len(), 3);
    let learned = h.learner.answers.lock().unwrap().clone();
    assert_eq!(learned.len(), 1, "{learned:?}");
    let a = &learned[0];
    assert_eq!(a.endpoint, ALPINE);
    assert_eq!(a.qname, "chain.microsoft.com.");
    assert_eq!(a.cnames, ["chain2.microsoft.com.", "edge.microsoft.com."]);
    assert_eq!(a.ips, ["10.200.0.3".parse::<IpAddr>().unwrap()]);
    assert_eq!(a.ttl, 60, "lowest TTL along 600 -> 60 -> 120");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_and_aaaa_back_to_back_from_one_port() {
    let nsd = nsd();
    let h = Harness::start(nsd.addr, &["*.microsoft.com"], |_| {}).await;
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.send_to(&query(0x1111, "www.microsoft.com.", RecordType::A, None), h.addr).await.unwrap();
    sock.send_to(&query(0x2222, "www.microsoft.com.", RecordType::AAAA, None), h.addr).await.unwrap();
    let mut got = HashMap::new();
    for _ in 0..2 {
        let m = recv(&sock).await;
        got.insert(m.metadata.id, (m.queries[0].query_type(), ips(&m)));
    }
    assert_eq!(got[&0x1111], (RecordType::A, vec!["10.200.0.1".parse::<IpAddr>().unwrap()]));
    assert_eq!(got[&0x2222], (RecordType::AAAA, vec!["fd00:200::1".parse::<IpAddr>().unwrap()]));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_pipelined_queries_on_one_connection() {
    let nsd = nsd();
    let h = Harness::start(nsd.addr, &["*.microsoft.com"], |_| {}).await;
    let mut conn = TcpStream::connect(h.addr).await.unwrap();
    let mut out = Vec::new();
    for (id, name) in [(7u16, "www.microsoft.com."), (8, "www.google.com."), (9, "many.microsoft.com.")] {
        let q = query(id, name, RecordType::A, None);
        out.extend_from_slice(&(q.len() as u16).to_be_bytes());
        out.extend_from_slice(&q);
    }
    conn.write_all(&out).await.unwrap();
    let mut got = HashMap::new();
    for _ in 0..3 {
        let len = conn.read_u16().await.unwrap() as usize;
        let mut buf = vec![0u8; len];
        conn.read_exact(&mut buf).await.unwrap();
        let m = Message::from_vec(&buf).unwrap();
        got.insert(m.metadata.id, m);
    }
    assert_eq!(ips(&got[&7]), ["10.200.0.1".parse::<IpAddr>().unwrap()]);
    assert_eq!(got[&8].metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(ips(&got[&9]).len(), 40, "TCP carries the full answer");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_queries() {
    let nsd = nsd();
    let h = Harness::start(nsd.addr, &["*.microsoft.com"], |_| {}).await;
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    // No header: nothing comes back (the next reply is the valid query's).
    sock.send_to(&[0xab, 0xcd, 0x01], h.addr).await.unwrap();
    // Header readable, question cut: FORMERR with the same ID.
    let mut cut = query(0x4242, "www.microsoft.com.", RecordType::A, None);
    cut.truncate(20);
    sock.send_to(&cut, h.addr).await.unwrap();
    let m = recv(&sock).await;
    assert_eq!(m.metadata.id, 0x4242);
    assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
    sock.send_to(&query(0x4343, "www.microsoft.com.", RecordType::A, None), h.addr).await.unwrap();
    let m = recv(&sock).await;
    assert_eq!(m.metadata.id, 0x4343, "no reply to the headerless packet");
    assert_eq!(h.proxy.stats().malformed, 2);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flows_for_requests_and_responses() {
    let nsd = nsd();
    let h = Harness::start(nsd.addr, &["*.microsoft.com"], |_| {}).await;
    ask(h.addr, &query(1, "www.microsoft.com.", RecordType::A, None)).await;
    ask(h.addr, &query(2, "www.google.com.", RecordType::AAAA, None)).await;
    // Both answers were received, so all four flows were handed over already.
    let flows: Vec<DnsFlow> = {
        let mut rx = h.flows.lock().unwrap();
        std::iter::from_fn(|| rx.try_recv().ok()).collect()
    };
    assert_eq!(flows.len(), 4, "{flows:?}");
    let resp = flows.iter().find(|f| f.kind == DnsFlowKind::Response && &*f.qname == "www.microsoft.com.").unwrap();
    assert_eq!(resp.verdict, Verdict::Forwarded);
    assert_eq!(resp.endpoint, Some(ALPINE));
    assert_eq!(resp.ips, ["10.200.0.1".parse::<IpAddr>().unwrap()]);
    assert_eq!(resp.ttl, Some(300));
    assert_eq!(resp.rcode.map(dns_proxy::rcode_name), Some("No Error"));
    assert_eq!(resp.policy.as_ref().map(ToString::to_string).as_deref(), Some("default/dns-allow"));
    assert_eq!(resp.server, nsd.addr);
    assert_eq!(resp.protocol, L4Proto::Udp);
    assert!(resp.latency.is_some());
    let denied: Vec<_> = flows.iter().filter(|f| &*f.qname == "www.google.com.").collect();
    assert_eq!(denied.len(), 2);
    assert!(denied.iter().all(|f| f.verdict == Verdict::Dropped && f.qtype_name() == "AAAA"));
    h.stop().await;
}

/// A hostile upstream: for each query, first three forged replies (wrong ID, wrong question,
/// right everything but sent from another address), then the real one.
async fn spoofing_upstream() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let real = UdpSocket::bind("127.0.0.4:0").await.unwrap();
    let addr = real.local_addr().unwrap();
    let impostor = UdpSocket::bind(SocketAddr::new("127.0.0.5".parse().unwrap(), addr.port())).await.unwrap();
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; 65535];
        loop {
            let Ok((n, from)) = real.recv_from(&mut buf).await else { return };
            let q = Message::from_vec(&buf[..n]).unwrap();
            let answer = |id: u16, name: &Name, ip: [u8; 4]| {
                let mut m = Message::new(id, MessageType::Response, OpCode::Query);
                m.metadata.recursion_desired = true;
                m.metadata.recursion_available = true;
                m.add_query(Query::query(name.clone(), q.queries[0].query_type()));
                m.add_answer(Record::from_rdata(name.clone(), 60, RData::A(A::new(ip[0], ip[1], ip[2], ip[3]))));
                m.to_vec().unwrap()
            };
            let qname = q.queries[0].name().clone();
            let id = q.metadata.id;
            real.send_to(&answer(id ^ 0x5a5a, &qname, [6, 6, 6, 1]), from).await.unwrap();
            real.send_to(&answer(id, &Name::from_ascii("evil.microsoft.com.").unwrap(), [6, 6, 6, 2]), from)
                .await
                .unwrap();
            impostor.send_to(&answer(id, &qname, [6, 6, 6, 3]), from).await.unwrap();
            real.send_to(&answer(id, &qname, [10, 200, 0, 9]), from).await.unwrap();
        }
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_upstream_replies_are_ignored() {
    let (upstream, fake) = spoofing_upstream().await;
    let h = Harness::start(upstream, &["*.microsoft.com"], |_| {}).await;
    let client_id = 0x7777;
    let reply = ask(h.addr, &query(client_id, "www.microsoft.com.", RecordType::A, None)).await;
    assert_eq!(reply.metadata.id, client_id);
    assert_eq!(ips(&reply), ["10.200.0.9".parse::<IpAddr>().unwrap()], "only the genuine reply is accepted");
    assert!(!h.datapath.contains(ALPINE, "6.6.6.3".parse().unwrap()));
    let s = h.proxy.stats();
    // The impostor's datagram never reaches the proxy: upstream sockets are connected, so the
    // kernel drops it (the proxy would count it as spoofed_wrong_source otherwise).
    assert_eq!((s.spoofed_unknown_id, s.spoofed_wrong_question), (1, 1), "{s:?}");
    h.stop().await;
    fake.abort();
}

/// An upstream that ignores the client's size and always sends ~1.5 kB over UDP.
async fn oversized_upstream() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let sock = UdpSocket::bind("127.0.0.6:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; 65535];
        loop {
            let Ok((n, from)) = sock.recv_from(&mut buf).await else { return };
            let q = Message::from_vec(&buf[..n]).unwrap();
            let mut m = Message::new(q.metadata.id, MessageType::Response, OpCode::Query);
            m.add_query(q.queries[0].clone());
            for i in 0..90u8 {
                m.add_answer(Record::from_rdata(q.queries[0].name().clone(), 60, RData::A(A::new(10, 9, 0, i))));
            }
            sock.send_to(&m.to_vec().unwrap(), from).await.unwrap();
        }
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_answers_never_exceed_the_client_limit() {
    let (upstream, fake) = oversized_upstream().await;
    let h = Harness::start(upstream, &["*.microsoft.com"], |_| {}).await;
    for (edns, limit) in [(None, 512usize), (Some(1232u16), 1232), (Some(4096), 4096)] {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        sock.send_to(&query(5, "big.microsoft.com.", RecordType::A, edns), h.addr).await.unwrap();
        let mut buf = vec![0u8; 65535];
        let (n, _) = tokio::time::timeout(Duration::from_secs(10), sock.recv_from(&mut buf)).await.unwrap().unwrap();
        assert!(n <= limit, "{n} bytes for a client limit of {limit}");
        let m = Message::from_vec(&buf[..n]).unwrap();
        assert_eq!(m.metadata.id, 5);
        if limit < 1500 {
            assert!(m.metadata.truncation, "TC set when the answer does not fit {limit}");
            assert!(m.answers.is_empty(), "no partial RRset");
            assert_eq!(m.queries.len(), 1);
        } else {
            assert!(!m.metadata.truncation);
            assert_eq!(m.answers.len(), 90);
        }
    }
    assert_eq!(h.proxy.stats().truncated, 2);
    h.stop().await;
    fake.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_tcp_connections_are_closed() {
    let nsd = nsd();
    let h = Harness::start(nsd.addr, &["*.microsoft.com"], |c| c.tcp_idle_timeout = Duration::from_millis(200)).await;
    let mut conn = TcpStream::connect(h.addr).await.unwrap();
    // One query answered, then silence: the proxy closes the connection (EOF), it does not
    // keep it forever. The 10 s bound only keeps a broken build from hanging the test.
    let q = query(3, "www.microsoft.com.", RecordType::A, None);
    conn.write_all(&(q.len() as u16).to_be_bytes()).await.unwrap();
    conn.write_all(&q).await.unwrap();
    let len = conn.read_u16().await.unwrap() as usize;
    let mut buf = vec![0u8; len];
    conn.read_exact(&mut buf).await.unwrap();
    let mut rest = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut rest))
        .await
        .expect("the idle connection is closed")
        .unwrap();
    assert_eq!(n, 0);
    h.stop().await;
}

/// An upstream that answers only when told to.
async fn held_upstream() -> (SocketAddr, tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let sock = UdpSocket::bind("127.0.0.7:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; 65535];
        let (n, from) = sock.recv_from(&mut buf).await.unwrap();
        let q = Message::from_vec(&buf[..n]).unwrap();
        let _ = go_rx.await;
        let mut m = Message::new(q.metadata.id, MessageType::Response, OpCode::Query);
        m.add_query(q.queries[0].clone());
        m.add_answer(Record::from_rdata(q.queries[0].name().clone(), 60, RData::A(A::new(10, 200, 0, 77))));
        sock.send_to(&m.to_vec().unwrap(), from).await.unwrap();
    });
    (addr, go_tx, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_queries_in_flight_finish() {
    let (upstream, go, fake) = held_upstream().await;
    let h = Harness::start(upstream, &["*.microsoft.com"], |c| c.upstream_timeout = Duration::from_secs(30)).await;
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    client.send_to(&query(0x5151, "www.microsoft.com.", RecordType::A, None), h.addr).await.unwrap();
    // Wait until the query is upstream (the proxy counted it), then shut down before the answer.
    wait::until_async("the query to be forwarded", Duration::from_secs(10), || {
        (h.proxy.stats().forwarded > 0).then_some(())
    })
    .await
    .unwrap();
    h.shutdown.cancel();
    go.send(()).unwrap();
    let reply = recv(&client).await;
    assert_eq!(reply.metadata.id, 0x5151);
    assert_eq!(ips(&reply), ["10.200.0.77".parse::<IpAddr>().unwrap()]);
    h.task.await.unwrap();
    fake.await.unwrap();
}

/// A query for `a.` whose question is only a compression pointer to offset 0, the header: its ID
/// bytes 0x01 'a' read as the label "a", and the first flags byte (0, a plain query) ends it.
fn pointer_into_header_query() -> Vec<u8> {
    let mut q = vec![0x01, b'a', 0x00, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    q.extend_from_slice(&[0xc0, 0x00, 0, 1, 0, 1]);
    q
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_question_gets_a_decodable_reply() {
    let nsd = nsd();
    // Refused: the refusal echoes the question written out, so it decodes (a copied pointer
    // would point into the reply's header, where QR is set, and the reply would not).
    let h = Harness::start(nsd.addr, &["*.microsoft.com"], |_| {}).await;
    let reply = ask(h.addr, &pointer_into_header_query()).await;
    assert_eq!(reply.metadata.id, 0x0161);
    assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(reply.queries.len(), 1);
    assert_eq!(reply.queries[0].name().to_ascii(), "a.");
    h.stop().await;

    // Allowed: not forwarded (the proxy's own ID would change what the pointer names), FORMERR.
    let h = Harness::start(nsd.addr, &["*"], |_| {}).await;
    let reply = ask(h.addr, &pointer_into_header_query()).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::FormErr);
    assert_eq!(reply.queries[0].name().to_ascii(), "a.");
    assert_eq!(h.proxy.stats().forwarded, 0);
    h.stop().await;
}

/// One query over `conn`, its answer's first address.
async fn tcp_ask(conn: &mut TcpStream, id: u16) -> std::io::Result<Vec<IpAddr>> {
    let q = query(id, "www.microsoft.com.", RecordType::A, None);
    conn.write_all(&(q.len() as u16).to_be_bytes()).await?;
    conn.write_all(&q).await?;
    let len = conn.read_u16().await? as usize;
    let mut buf = vec![0u8; len];
    conn.read_exact(&mut buf).await?;
    Ok(ips(&Message::from_vec(&buf).unwrap()))
}

/// Connect from `source` (any 127/8 address; only 127.0.0.1 is the endpoint alpine).
async fn connect_from(source: &str, to: SocketAddr) -> TcpStream {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::new(source.parse().unwrap(), 0)).unwrap();
    sock.connect(to).await.unwrap()
}

/// The connection was closed by the proxy: EOF (or a reset) on read, bounded by 10 s.
async fn closed(conn: &mut TcpStream) -> bool {
    let mut rest = Vec::new();
    match tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut rest)).await {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        Ok(Ok(_)) | Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_connections_capped_per_endpoint_oldest_idle_closed_first() {
    let nsd = nsd();
    let h = Harness::start(nsd.addr, &["*.microsoft.com"], |c| c.tcp_max_connections_per_endpoint = 3).await;
    let www: Vec<IpAddr> = vec!["10.200.0.1".parse().unwrap()];
    let mut held = Vec::new();
    for i in 0..3u16 {
        let mut c = connect_from("127.0.0.1", h.addr).await;
        assert_eq!(tcp_ask(&mut c, i).await.unwrap(), www);
        held.push(c);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The first is now the least recently active: a fourth from the same endpoint closes it.
    assert_eq!(tcp_ask(&mut held[0], 10).await.unwrap(), www);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut fourth = connect_from("127.0.0.1", h.addr).await;
    assert_eq!(tcp_ask(&mut fourth, 11).await.unwrap(), www);
    assert!(closed(&mut held[1]).await, "the oldest idle connection of the endpoint is closed");
    for (i, id) in [(0usize, 12u16), (2, 13)] {
        assert_eq!(tcp_ask(&mut held[i], id).await.unwrap(), www, "connection {i} stays");
    }
    // Another client is not this endpoint's share: it connects without closing anything.
    let mut other = connect_from("127.0.0.3", h.addr).await;
    assert_eq!(tcp_ask(&mut other, 14).await.unwrap(), www);
    let s = h.proxy.stats();
    assert_eq!((s.tcp_evicted, s.tcp_refused), (1, 0), "{s:?}");
    h.stop().await;
}

/// A TCP upstream that answers its first query only when told to.
async fn held_tcp_upstream() -> (SocketAddr, tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.8:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.unwrap();
        let len = conn.read_u16().await.unwrap() as usize;
        let mut buf = vec![0u8; len];
        conn.read_exact(&mut buf).await.unwrap();
        let q = Message::from_vec(&buf).unwrap();
        let _ = go_rx.await;
        let mut m = Message::new(q.metadata.id, MessageType::Response, OpCode::Query);
        m.add_query(q.queries[0].clone());
        m.add_answer(Record::from_rdata(q.queries[0].name().clone(), 60, RData::A(A::new(10, 200, 0, 77))));
        let out = m.to_vec().unwrap();
        conn.write_all(&(out.len() as u16).to_be_bytes()).await.unwrap();
        conn.write_all(&out).await.unwrap();
    });
    (addr, go_tx, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_connection_with_a_query_in_flight_is_never_closed_for_a_new_one() {
    let (upstream, go, fake) = held_tcp_upstream().await;
    let h = Harness::start(upstream, &["*.microsoft.com"], |c| {
        c.tcp_max_connections = 1;
        c.upstream_timeout = Duration::from_secs(30);
    })
    .await;
    let mut busy = connect_from("127.0.0.1", h.addr).await;
    let q = query(0x6161, "www.microsoft.com.", RecordType::A, None);
    busy.write_all(&(q.len() as u16).to_be_bytes()).await.unwrap();
    busy.write_all(&q).await.unwrap();
    wait::until_async("the query to be forwarded", Duration::from_secs(10), || {
        (h.proxy.stats().forwarded > 0).then_some(())
    })
    .await
    .unwrap();
    // At the total cap with the only connection busy: the newcomer is the one closed.
    let mut late = connect_from("127.0.0.3", h.addr).await;
    assert!(closed(&mut late).await, "the new connection is refused");
    go.send(()).unwrap();
    let len = busy.read_u16().await.unwrap() as usize;
    let mut buf = vec![0u8; len];
    busy.read_exact(&mut buf).await.unwrap();
    assert_eq!(ips(&Message::from_vec(&buf).unwrap()), ["10.200.0.77".parse::<IpAddr>().unwrap()]);
    assert_eq!(h.proxy.stats().tcp_refused, 1);
    h.stop().await;
    fake.await.unwrap();
}

/// Send `count` queries from `source` as fast as the socket takes them; return the socket.
async fn flood(source: &str, to: SocketAddr, count: u16) -> UdpSocket {
    let sock = UdpSocket::bind(SocketAddr::new(source.parse().unwrap(), 0)).await.unwrap();
    for id in 0..count {
        let _ = sock.send_to(&query(id, "www.microsoft.com.", RecordType::A, None), to).await;
    }
    sock
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_endpoint_is_shed_and_a_quiet_one_is_served() {
    let nsd = nsd();
    let h = Harness::start(nsd.addr, &["*.microsoft.com"], |c| {
        c.max_qps_per_endpoint = 100;
        c.qps_burst_per_endpoint = 50;
    })
    .await;
    // The quiet endpoint is active; 127.0.0.3, no endpoint, is held to the rate under its address.
    ask(h.addr, &query(0x6fff, "www.microsoft.com.", RecordType::A, None)).await;
    let _flooder = flood("127.0.0.3", h.addr, 3000).await;
    // The quiet endpoint (alpine, 127.0.0.1) stays within its own burst.
    for id in 0..20u16 {
        let reply = ask(h.addr, &query(0x7000 + id, "www.microsoft.com.", RecordType::A, None)).await;
        assert_eq!(ips(&reply), ["10.200.0.1".parse::<IpAddr>().unwrap()], "quiet query {id}");
    }
    let flooder = dns_proxy::limits::Owner::Address("127.0.0.3".parse().unwrap());
    let counts = h.proxy.shed_counts();
    assert!(counts.iter().any(|&(o, n)| o == flooder && n > 0), "the flooder is shed: {counts:?}");
    assert!(counts.iter().all(|&(o, _)| o == flooder), "nobody else is: {counts:?}");
    assert!(h.proxy.stats().rate_limited > 0);
    // A shed query shows as a flow: verdict ERROR, the flooder as client.
    let flows: Vec<DnsFlow> = {
        let mut rx = h.flows.lock().unwrap();
        std::iter::from_fn(|| rx.try_recv().ok()).collect()
    };
    let shed: Vec<&DnsFlow> = flows.iter().filter(|f| f.verdict == Verdict::Error).collect();
    assert!(!shed.is_empty() && shed.iter().all(|f| f.client.ip().to_string() == "127.0.0.3"), "{shed:?}");
    assert!(shed.len() as u32 <= dns_proxy::admission::FLOWS_PER_SECOND * 60, "flows of shed queries are limited");
    h.stop().await;
}

/// An upstream that answers every query after `delay`.
async fn slow_upstream(delay: Duration) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let sock = Arc::new(UdpSocket::bind("127.0.0.9:0").await.unwrap());
    let addr = sock.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; 65535];
        loop {
            let Ok((n, from)) = sock.recv_from(&mut buf).await else { return };
            let Ok(q) = Message::from_vec(&buf[..n]) else { continue };
            let sock = sock.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let mut m = Message::new(q.metadata.id, MessageType::Response, OpCode::Query);
                m.add_query(q.queries[0].clone());
                m.add_answer(Record::from_rdata(q.queries[0].name().clone(), 60, RData::A(A::new(10, 200, 0, 1))));
                let _ = sock.send_to(&m.to_vec().unwrap(), from).await;
            });
        }
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_endpoint_gets_a_slot_when_flooders_hold_the_pool() {
    // Two flooders at their share (4 each) hold the whole pool (8) of a slow upstream: the quiet
    // endpoint's query used to find no permit and be dropped. It now waits for the next freed
    // permit, which goes to it before any new query of the flooders.
    let (upstream, fake) = slow_upstream(Duration::from_millis(300)).await;
    let h = Harness::start(upstream, &["*.microsoft.com"], |c| {
        c.max_inflight = 8;
        c.max_inflight_per_endpoint = 4;
        c.upstream_timeout = Duration::from_secs(10);
    })
    .await;
    let floods: Vec<_> = ["127.0.0.3", "127.0.0.4"]
        .into_iter()
        .map(|src| {
            let to = h.addr;
            tokio::spawn(async move {
                let sock = UdpSocket::bind(SocketAddr::new(src.parse().unwrap(), 0)).await.unwrap();
                for round in 0..40u16 {
                    for i in 0..8u16 {
                        let _ =
                            sock.send_to(&query(round * 8 + i, "www.microsoft.com.", RecordType::A, None), to).await;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
        })
        .collect();
    wait::until_async("the flooders to fill the pool", Duration::from_secs(10), || {
        (h.proxy.stats().overloaded > 0).then_some(())
    })
    .await
    .unwrap();
    for id in 0..5u16 {
        let reply = ask(h.addr, &query(0x7100 + id, "www.microsoft.com.", RecordType::A, None)).await;
        assert_eq!(ips(&reply), ["10.200.0.1".parse::<IpAddr>().unwrap()], "quiet query {id}");
    }
    for f in floods {
        f.abort();
    }
    h.stop().await;
    fake.abort();
}

/// An upstream that reads every query and never answers.
async fn silent_upstream() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let sock = UdpSocket::bind("127.0.0.8:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; 65535];
        while sock.recv_from(&mut buf).await.is_ok() {}
    });
    (addr, task)
}

/// A forwarded query waits in its upstream socket's table, not in a task with a timer: the
/// socket's one timer must still end it. Each query gets SERVFAIL with its own ID once the upstream
/// timeout passes, counted, and gives its permit back (one permit: the second query is only
/// forwarded once the first is done).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_upstream_times_out_each_query_and_frees_its_permit() {
    let (upstream, silent) = silent_upstream().await;
    let h = Harness::start(upstream, &["*.microsoft.com"], |c| {
        c.upstream_timeout = Duration::from_millis(200);
        c.max_inflight = 1;
    })
    .await;
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for (i, id) in [0x7001u16, 0x7002].into_iter().enumerate() {
        client.send_to(&query(id, "www.microsoft.com.", RecordType::A, None), h.addr).await.unwrap();
        let reply = recv(&client).await;
        assert_eq!((reply.metadata.id, reply.metadata.response_code), (id, ResponseCode::ServFail));
        assert_eq!(h.proxy.stats().upstream_timeouts, i as u64 + 1);
    }
    assert_eq!(h.proxy.stats().forwarded, 2);
    h.stop().await;
    silent.abort();
}
