#![allow(dead_code)]

//! A real agent (`fqdnd run`, plain mode) in front of a real NSD, for the Hubble API tests: the
//! client endpoint `default/alpine` is 127.0.0.1, kube-dns (NSD) is 127.0.0.2, node `node-a`;
//! `*.microsoft.com` may be asked, everything else is refused. Queries are made with `dig`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use fqdnd::admin::{self, AdminClient, Request, Response};
use fqdnd::hubble::ServerAddr;
use fqdnd::hubble::proto::observer::observer_client::ObserverClient;
use fqdnd::hubble::proto::observer::{GetFlowsRequest, GetFlowsResponse, ServerStatusRequest};
use tonic::transport::Channel;

use super::dig::{self, Client, DigResult};
use super::dns_server::DnsServer;
use super::fqdnd::{Fqdnd, PolicyFixture};

pub const NODE: &str = "node-a";

pub struct Agent {
    pub nsd: DnsServer,
    pub policies: PolicyFixture,
    pub fqdnd: Fqdnd,
}

impl Agent {
    /// Start NSD and the agent with `extra` flags (e.g. `--hubble-metrics dns,drop,flow`).
    pub fn start(extra: &[&str]) -> Agent {
        let nsd = DnsServer::builder()
            .fixture_zone("microsoft.com")
            .fixture_zone("google.com")
            .listen("127.0.0.2:0".parse().expect("literal"))
            .start()
            .expect("nsd");
        let policies = PolicyFixture::new(nsd.addr.ip(), nsd.addr.port(), &["*.microsoft.com"]).expect("policies");
        let config = policies.dir.path().join("fqdnd.yaml");
        std::fs::write(&config, format!("node-name: {NODE}\n")).expect("config file");
        let mut args = policies.args();
        args.extend(["--upstream".into(), nsd.addr.to_string(), "--config".into(), config.display().to_string()]);
        args.extend(extra.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let fqdnd = Fqdnd::start(&refs).expect("fqdnd");
        Agent { nsd, policies, fqdnd }
    }

    pub fn state_dir(&self) -> PathBuf {
        self.fqdnd.dir.path().join("state")
    }

    /// The default `--hubble-listen`: `<state-dir>/hubble.sock`.
    pub fn socket(&self) -> PathBuf {
        self.state_dir().join("hubble.sock")
    }

    pub fn server(&self) -> ServerAddr {
        ServerAddr::Unix(self.socket())
    }

    /// `dig @agent NAME TYPE` (blocking).
    pub fn dig(&self, name: &str, rtype: &str) -> DigResult {
        dig::query(Client::Dig, self.fqdnd.addr, name, rtype, &[]).unwrap_or_else(|e| panic!("dig {name}: {e:#}"))
    }

    /// The agent's `/metrics` address, from its log line.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.fqdnd.wait_log("metrics server listening").expect("metrics server");
        let log = self.fqdnd.log();
        let line = log.lines().find(|l| l.contains("metrics server listening")).expect("the line waited for");
        let addr = line.split("addr=").nth(1).and_then(|rest| rest.split_whitespace().next()).expect("addr=");
        addr.parse().unwrap_or_else(|e| panic!("{addr}: {e}"))
    }

    /// Live followers of the hub (admin and gRPC alike), from the admin socket's status.
    pub fn followers(&self) -> usize {
        let path = admin::socket_path(&self.state_dir());
        let mut c = AdminClient::request(&path, &Request::Status).expect("admin socket");
        match c.next_response() {
            Some(Ok(Response::Status { status })) => status.followers,
            other => panic!("status: {other:?}"),
        }
    }
}

pub async fn client(addr: &ServerAddr) -> ObserverClient<Channel> {
    fqdnd::hubble::client::connect(addr).await.unwrap_or_else(|e| panic!("{e}: {:?}", std::error::Error::source(&e)))
}

/// Every response of a GetFlows call that ends by itself (no follow).
pub async fn get_flows(c: &mut ObserverClient<Channel>, req: GetFlowsRequest) -> Vec<GetFlowsResponse> {
    let mut stream = c.get_flows(req).await.expect("GetFlows").into_inner();
    let mut out = Vec::new();
    while let Some(r) = stream.message().await.expect("GetFlows stream") {
        out.push(r);
    }
    out
}

/// Wait until the agent has seen `n` flows (they reach the hub asynchronously); the bound only
/// turns a hang into a failure.
pub async fn wait_seen(c: &mut ObserverClient<Channel>, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = 0;
    while Instant::now() < deadline {
        seen = c.server_status(ServerStatusRequest {}).await.expect("ServerStatus").into_inner().seen_flows;
        if seen >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the agent saw {seen} flows, not {n}");
}

/// Run a blocking closure (dig, a CLI process) off the runtime's workers.
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("blocking task")
}
