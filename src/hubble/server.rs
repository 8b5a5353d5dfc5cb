//! The `observer.Observer` gRPC service over the flow hub: GetFlows (history from the ring, then
//! with `follow` a follower of the hub), ServerStatus and GetNodes.
//!
//! A GetFlows follower is an ordinary hub follower with a bounded queue: publishing never waits on
//! it (the DNS path does not slow down for a gRPC client), and when its queue overflows the flows
//! are counted and the client gets Hubble's `lost_events` (source OBSERVER_EVENTS_QUEUE). The
//! response stream is pulled by tonic only as fast as HTTP/2 flow control lets it send, so a
//! client that stops reading stops its own stream and nothing else.
//!
//! Over the Unix socket, Python's grpcio (C core) sends the percent-encoded socket path as
//! `:authority`, which h2 (under tonic) rejects as malformed (RST_STREAM PROTOCOL_ERROR); such
//! clients set `grpc.default_authority` to `localhost` (grpc-go, the hubble CLI's library, sends
//! `localhost` itself). TCP clients need nothing.

use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use futures::Stream;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
use tonic::{Request, Response, Status};

use super::convert::{flow_response, lost_response, system_time};
use super::filter::FilterSet;
use super::listen::{self, Bound, ListenAddr};
use super::proto::observer::observer_server::{Observer, ObserverServer};
use super::proto::observer::{
    GetFlowsRequest, GetFlowsResponse, GetNodesRequest, GetNodesResponse, Node, ServerStatusRequest,
    ServerStatusResponse, Tls,
};
use super::proto::relay::NodeState;
use crate::flows::{Flow, FlowHub, Follower};

/// What the Observer API reports as the server's version: fqdnd's, marked as not Cilium's.
pub fn version() -> String {
    format!("{}+fqdnd", env!("CARGO_PKG_VERSION"))
}

/// What the service serves.
#[derive(Clone)]
pub struct ObserverState {
    pub hub: Arc<FlowHub>,
    pub started: Instant,
}

#[derive(Clone)]
struct Service {
    state: ObserverState,
    /// Where clients reach this server, for GetNodes.
    address: String,
}

/// A running Observer API. Dropping it stops the server and removes its Unix socket.
pub struct HubbleServer {
    addr: ListenAddr,
    socket: Option<PathBuf>,
    task: JoinHandle<()>,
}

impl HubbleServer {
    /// The bound address (the real port when asked for port 0).
    pub fn addr(&self) -> &ListenAddr {
        &self.addr
    }
}

impl Drop for HubbleServer {
    fn drop(&mut self) {
        self.task.abort();
        if let Some(path) = &self.socket {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Bind `listen` and serve the Observer API on the current tokio runtime.
pub async fn serve(listen: &ListenAddr, state: ObserverState) -> io::Result<HubbleServer> {
    let bound = listen::bind(listen).await?;
    let (addr, socket) = match &bound {
        Bound::Unix(_, path) => (ListenAddr::Unix(path.clone()), Some(path.clone())),
        Bound::Tcp(_, a) => (ListenAddr::Tcp(*a), None),
    };
    let service = ObserverServer::new(Service { state, address: addr.to_string() });
    let router = tonic::transport::Server::builder().add_service(service);
    let shown = addr.to_string();
    let task = tokio::spawn(async move {
        let result = match bound {
            Bound::Unix(l, _) => router.serve_with_incoming(UnixListenerStream::new(l)).await,
            Bound::Tcp(l, _) => router.serve_with_incoming(TcpListenerStream::new(l)).await,
        };
        if let Err(e) = result {
            tracing::error!(addr = %shown, error = %e, "Hubble Observer API stopped");
        }
    });
    tracing::info!(addr = %addr, "Hubble Observer API listening");
    Ok(HubbleServer { addr, socket, task })
}

type FlowStream = Pin<Box<dyn Stream<Item = Result<GetFlowsResponse, Status>> + Send + 'static>>;

/// `err: source: source...` for a gRPC status message (the client has no logger to print the chain).
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        text.push_str(": ");
        text.push_str(&s.to_string());
        cur = s.source();
    }
    text
}

fn time_arg(name: &str, t: &Option<prost_types::Timestamp>) -> Result<Option<SystemTime>, Status> {
    match t {
        None => Ok(None),
        Some(ts) if !(0..1_000_000_000).contains(&ts.nanos) => {
            Err(Status::invalid_argument(format!("{name}: nanos {} out of range", ts.nanos)))
        }
        Some(ts) => Ok(Some(system_time(ts))),
    }
}

/// Which flows of the ring a request wants, in order: Hubble's reading of number, first, follow,
/// since and until. `history` holds every flow that passed the filters, oldest first.
fn select_history(
    history: Vec<Arc<Flow>>,
    req: &GetFlowsRequest,
    since: Option<SystemTime>,
    until: Option<SystemTime>,
) -> Vec<Arc<Flow>> {
    let in_range = |f: &Arc<Flow>| since.is_none_or(|s| f.time >= s) && until.is_none_or(|u| f.time <= u);
    let n = usize::try_from(req.number).unwrap_or(usize::MAX);
    let mut flows: Vec<Arc<Flow>> = history.into_iter().filter(in_range).collect();
    if req.first || since.is_some() {
        // From the oldest (or from `since`) forward; 0 is no limit.
        if n > 0 {
            flows.truncate(n);
        }
    } else {
        // The last `number`; with 0 none (`follow` alone streams only what comes next).
        let skip = flows.len().saturating_sub(n);
        flows.drain(..skip);
    }
    flows
}

/// The response stream of one GetFlows call.
struct Flows {
    history: std::vec::IntoIter<Arc<Flow>>,
    follower: Option<Follower>,
    /// A flow taken from the queue while a loss notice went out first.
    pending: Option<Arc<Flow>>,
    since: Option<SystemTime>,
    until: Option<SystemTime>,
    hub: Arc<FlowHub>,
}

/// What to do with the next flow of a stream.
enum Next {
    Send(Box<GetFlowsResponse>),
    Skip,
    End,
}

impl Flows {
    fn flow(&self, f: &Flow) -> Next {
        // Hubble ends a stream at the first flow past `until`, and skips flows before `since`,
        // followed or not (a `since` in the future waits for it).
        if self.until.is_some_and(|u| f.time > u) {
            return Next::End;
        }
        if self.since.is_some_and(|s| f.time < s) {
            return Next::Skip;
        }
        Next::Send(Box::new(flow_response(f, self.hub.node_name())))
    }

    fn lost(&self, n: u64) -> GetFlowsResponse {
        lost_response(n, self.hub.node_name(), SystemTime::now())
    }

    async fn next(&mut self) -> Option<GetFlowsResponse> {
        loop {
            let step = self.step().await?;
            match step {
                Next::Send(r) => return Some(*r),
                Next::Skip => continue,
                Next::End => return None,
            }
        }
    }

    async fn step(&mut self) -> Option<Next> {
        if let Some(f) = self.history.next() {
            return Some(self.flow(&f));
        }
        if let Some(f) = self.pending.take() {
            return Some(self.flow(&f));
        }
        let follower = self.follower.as_mut()?;
        if let Some(f) = follower.try_recv() {
            return Some(self.flow(&f));
        }
        // The queue ran dry: if flows were lost meanwhile, say so now rather than at the next flow,
        // so a reader that caught up learns of its gap without waiting for more traffic.
        let lost = follower.take_lost();
        if lost > 0 {
            return Some(Next::Send(Box::new(self.lost(lost))));
        }
        let f = follower.recv().await?;
        let lost = self.follower.as_ref().map(Follower::take_lost).unwrap_or(0);
        if lost > 0 {
            self.pending = Some(f);
            return Some(Next::Send(Box::new(self.lost(lost))));
        }
        Some(self.flow(&f))
    }
}

#[tonic::async_trait]
impl Observer for Service {
    type GetFlowsStream = FlowStream;

    async fn get_flows(&self, request: Request<GetFlowsRequest>) -> Result<Response<FlowStream>, Status> {
        let req = request.into_inner();
        if req.first && req.follow {
            return Err(Status::invalid_argument("first cannot be specified with follow"));
        }
        let since = time_arg("since", &req.since)?;
        let until = time_arg("until", &req.until)?;
        let filters = FilterSet::compile(&req.whitelist, &req.blacklist)
            .map_err(|e| Status::invalid_argument(format!("invalid filter: {}", chain(&e))))?;
        let hub = self.state.hub.clone();
        // History and follower come from one lock: a flow is either in the history or followed.
        let sub = hub.subscribe_with(Arc::new(filters), None, req.follow);
        let history = select_history(sub.history, &req, since, until);
        let state = Flows { history: history.into_iter(), follower: sub.follower, pending: None, since, until, hub };
        let stream = futures::stream::unfold(state, |mut s| async move {
            let item = s.next().await?;
            Some((Ok(item), s))
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_nodes(&self, _: Request<GetNodesRequest>) -> Result<Response<GetNodesResponse>, Status> {
        let stats = self.state.hub.stats();
        let node = Node {
            name: self.state.hub.node_name().to_string(),
            version: version(),
            address: self.address.clone(),
            state: NodeState::NodeConnected as i32,
            tls: Some(Tls { enabled: false, server_name: String::new() }),
            uptime_ns: self.uptime_ns(),
            num_flows: stats.buffered as u64,
            max_flows: stats.capacity as u64,
            seen_flows: stats.seen,
        };
        Ok(Response::new(GetNodesResponse { nodes: vec![node] }))
    }

    async fn server_status(&self, _: Request<ServerStatusRequest>) -> Result<Response<ServerStatusResponse>, Status> {
        let stats = self.state.hub.stats();
        Ok(Response::new(ServerStatusResponse {
            num_flows: stats.buffered as u64,
            max_flows: stats.capacity as u64,
            seen_flows: stats.seen,
            uptime_ns: self.uptime_ns(),
            // This server answers for its own node only, which is always connected.
            num_connected_nodes: Some(1),
            num_unavailable_nodes: Some(0),
            unavailable_nodes: Vec::new(),
            version: version(),
        }))
    }
}

impl Service {
    fn uptime_ns(&self) -> u64 {
        u64::try_from(self.state.started.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    fn ring(n: u64) -> Vec<Arc<Flow>> {
        let base = crate::hubble::convert::tests::real_flows().remove(0);
        (0..n).map(|i| Arc::new(Flow { time: UNIX_EPOCH + Duration::from_secs(i), ..base.clone() })).collect()
    }

    fn secs(v: &[Arc<Flow>]) -> Vec<u64> {
        v.iter().map(|f| f.time.duration_since(UNIX_EPOCH).unwrap().as_secs()).collect()
    }

    #[test]
    fn number_first_since_until_as_hubble_reads_them() {
        let at = |s: u64| Some(UNIX_EPOCH + Duration::from_secs(s));
        let req =
            |number: u64, first: bool, follow: bool| GetFlowsRequest { number, first, follow, ..Default::default() };
        for (r, since, until, want) in [
            (req(3, false, false), None, None, vec![7, 8, 9]),
            (req(3, true, false), None, None, vec![0, 1, 2]),
            (req(0, true, false), None, None, (0..10).collect()),
            (req(0, false, true), None, None, vec![]),
            (req(2, false, true), None, None, vec![8, 9]),
            (req(0, false, false), at(6), None, vec![6, 7, 8, 9]),
            (req(2, false, false), at(6), None, vec![6, 7]),
            (req(0, false, false), at(2), at(4), vec![2, 3, 4]),
            (req(2, false, false), None, at(4), vec![3, 4]),
            (req(100, false, false), None, None, (0..10).collect()),
        ] {
            assert_eq!(
                secs(&select_history(ring(10), &r, since, until)),
                want,
                "{r:?} since {since:?} until {until:?}"
            );
        }
    }

    #[tokio::test]
    async fn followed_flows_skip_before_since_end_after_until_and_losses_are_told() {
        use crate::flows::HubConfig;
        use crate::metrics::AgentMetrics;
        let at = |s: u64| UNIX_EPOCH + Duration::from_secs(s);
        let base = crate::hubble::convert::tests::real_flows().remove(0);
        let cfg = HubConfig { ring_capacity: 16, follower_queue: 2, node_name: "n".into() };
        let hub = Arc::new(FlowHub::with_config(cfg, AgentMetrics::default()));
        let sub = hub.subscribe_with(Arc::new(FilterSet::default()), None, true);
        let mut s = Flows {
            history: Vec::new().into_iter(),
            follower: sub.follower,
            pending: None,
            since: Some(at(3)),
            until: Some(at(6)),
            hub: hub.clone(),
        };
        // A queue of 2: flows 1 and 2 wait, 3 to 5 are lost.
        for i in 1..=5 {
            hub.publish(Flow { time: at(i), ..base.clone() });
        }
        let notice = s.next().await.unwrap();
        match notice.response_types {
            Some(super::super::proto::observer::get_flows_response::ResponseTypes::LostEvents(l)) => {
                assert_eq!(l.num_events_lost, 3)
            }
            other => panic!("expected lost_events after 1 and 2 were skipped, got {other:?}"),
        }
        hub.publish(Flow { time: at(6), ..base.clone() });
        hub.publish(Flow { time: at(7), ..base.clone() });
        let six = s.next().await.unwrap();
        assert_eq!(six.time, Some(crate::hubble::convert::timestamp(at(6))));
        assert!(s.next().await.is_none(), "the stream ends at the first flow past until");
    }

    #[test]
    fn bad_times_are_invalid_arguments() {
        let bad = Some(prost_types::Timestamp { seconds: 1, nanos: -1 });
        assert_eq!(time_arg("since", &bad).unwrap_err().code(), tonic::Code::InvalidArgument);
        assert_eq!(time_arg("until", &None).unwrap(), None);
    }
}
