//! A quiet pod's query queued behind another pod's burst is served in the first round, not after
//! the burst: the receive loop reads what is queued before serving any of it and serves it round
//! robin over sources. The burst is queued in the kernel before the proxy starts serving, so the
//! order the upstream sees is the proxy's choice, not a race. Admission is off: this is about the
//! order of what is admitted.

use std::net::{SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dns_proxy::{Proxy, ProxyConfig};
use fqdn_cache::{Answer, Completion, DatapathError, Learner};
use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use policy_sync::Snapshot;
use tokio_util::sync::CancellationToken;

const BURST: usize = 300;

struct NoLearning;

impl Learner for NoLearning {
    fn learn(&self, _: &Answer) -> Completion<'_, Result<bool, DatapathError>> {
        Completion::ready(Ok(false))
    }
}

fn query(id: u16, name: &str) -> Vec<u8> {
    let mut msg = Message::new(id, MessageType::Query, OpCode::Query);
    msg.metadata.recursion_desired = true;
    msg.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
    msg.to_vec().unwrap()
}

/// Answers every query with one A record and notes the names in the order they arrived.
fn upstream(seen: Arc<Mutex<Vec<String>>>) -> SocketAddr {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = sock.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            let Ok(q) = Message::from_vec(&buf[..n]) else { continue };
            let name = q.queries[0].name().clone();
            seen.lock().unwrap().push(name.to_ascii());
            let mut reply = Message::new(q.metadata.id, MessageType::Response, OpCode::Query);
            reply.add_query(q.queries[0].clone());
            reply.add_answer(Record::from_rdata(name, 60, RData::A(A::new(10, 1, 1, 1))));
            let _ = sock.send_to(&reply.to_vec().unwrap(), from);
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_behind_another_pods_burst_is_served_in_the_first_round() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let up = upstream(seen.clone());
    let mut config = ProxyConfig::plain(vec!["127.0.0.1:0".parse().unwrap()], up);
    config.max_qps_per_endpoint = 0;
    let proxy = Proxy::new(config, Arc::new(NoLearning), None).unwrap();
    proxy.set_snapshot(Arc::new(Snapshot::new(1, vec![], vec![], 0)));
    let bound = proxy.bind().unwrap();
    let addr = bound.listeners()[0].addr;

    // Queued before the proxy serves anything: the burst first, the quiet pod's query last.
    let flood = UdpSocket::bind("127.0.0.1:0").unwrap();
    for i in 0..BURST {
        flood.send_to(&query(i as u16, &format!("f{i}.burst.test.")), addr).unwrap();
    }
    let quiet = UdpSocket::bind("127.0.0.3:0").unwrap();
    quiet.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    quiet.send_to(&query(7, "quiet.test."), addr).unwrap();

    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    let task = tokio::spawn(async move { bound.serve(token).await.unwrap() });
    let answer = tokio::task::spawn_blocking(move || {
        let mut buf = [0u8; 1500];
        let n = quiet.recv(&mut buf).expect("the quiet pod's answer");
        Message::from_vec(&buf[..n]).unwrap()
    })
    .await
    .unwrap();
    assert_eq!(answer.metadata.id, 7);
    assert_eq!(answer.answers.len(), 1);

    let seen = seen.lock().unwrap().clone();

    let at = seen.iter().position(|n| n == "quiet.test.").expect("forwarded");
    // Round robin over two sources: the burst's first query, then the quiet one. Served in
    // arrival order it would be the last of BURST + 1.
    assert_eq!(at, 1, "the quiet query reached the upstream as number {at} of {}", seen.len());
    shutdown.cancel();
    task.await.unwrap();
}
