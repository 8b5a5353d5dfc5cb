//! One query from packet to reply: who asks, may they, forward, learn, wait for the datapath,
//! release. Shared by the UDP and TCP servers of both modes.
//!
//! Two phases: [`Shared::decide`] runs synchronously in the receive loop and answers what it can
//! on the spot (refusals, FORMERR, drops), so half of a typical load never becomes a task;
//! [`Shared::forward`] is the async rest for queries that go upstream.

use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Waker};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use fqdn_cache::{Answer, EndpointId, L4Proto, Learner};
use hickory_proto::op::{OpCode, ResponseCode};
use policy_sync::{PolicyRef, ResolvedEndpoint, RuleVerdict, Snapshot};
use tokio_util::task::TaskTracker;

use crate::admission::{Admission, Admit};
use crate::answer::{Chain, extract_chain_wire};
use crate::config::{Mode, ProxyConfig};
use crate::error::ProxyError;
use crate::flow::{DnsFlow, DnsFlowKind, FlowSink, Verdict};
use crate::forwarder::{Done, ForwardError, Forwarder, Outgoing};
use crate::limits::{Busy, Limiter, Owner, Permit};
use crate::log_limit::LogLimit;
use crate::metrics::ProxyMetrics;
use crate::name_lock::NameLocks;
use crate::origin::{self, Interfaces};
use crate::refusal;
use crate::stats::{ProxyStats, inc};
use crate::wire::{self, ParsedQuery, QueryParseError};

/// Where a query came from and where it was going.
#[derive(Clone, Copy, Debug)]
pub struct QueryMeta {
    pub client: SocketAddr,
    /// The original destination (transparent mode) or the upstream (plain mode).
    pub server: SocketAddr,
    pub proto: L4Proto,
    pub received: Instant,
    /// The interface the query arrived on (transparent mode), which names its endpoint.
    pub ifindex: Option<u32>,
}

pub(crate) struct Shared {
    pub(crate) config: ProxyConfig,
    /// Who is who and what they may ask: the policy snapshot in force.
    pub(crate) snapshot: ArcSwap<Snapshot>,
    /// Transparent mode: the snapshot's endpoint interfaces by index.
    pub(crate) interfaces: ArcSwap<Interfaces>,
    pub(crate) learner: Arc<dyn Learner>,
    /// Upstream client for the TCP servers (UDP receive loops each have their own).
    pub(crate) forwarder: Forwarder,
    pub(crate) flows: Option<Arc<dyn FlowSink>>,
    pub(crate) stats: Arc<ProxyStats>,
    pub(crate) limiter: Limiter,
    /// Per-endpoint query rate, checked before anything shared is taken.
    pub(crate) admission: Admission,
    pub(crate) names: NameLocks,
    pub(crate) metrics: ProxyMetrics,
    /// Datapath failures and ack timeouts repeat per answer under load: logged once per interval.
    datapath_log: LogLimit,
    shed_log: LogLimit,
}

/// Who asked and what the rules said, owned so it can travel with the query into a task.
pub(crate) struct Asker {
    endpoint: Option<Arc<ResolvedEndpoint>>,
    verdict: RuleVerdict,
    /// Refused by the rules, forwarded anyway: the endpoint (or the agent) is in audit mode.
    audited: bool,
}

impl Asker {
    /// What the flows of a query that went upstream say.
    fn forwarded(&self) -> Verdict {
        if self.audited { Verdict::Audit } else { Verdict::Forwarded }
    }

    fn policy(&self) -> Option<&Arc<PolicyRef>> {
        let ep = self.endpoint.as_ref()?;
        match self.verdict {
            RuleVerdict::NotProxied => None,
            RuleVerdict::Allowed(r) | RuleVerdict::Refused(r) => Some(ep.policy.dns.policy(r)),
        }
    }

    fn learns(&self) -> bool {
        matches!(self.verdict, RuleVerdict::Allowed(_))
    }
}

/// What [`Shared::decide`] concluded.
#[allow(clippy::large_enum_variant)] // see Forward
pub(crate) enum Step {
    /// Answered (or dropped, `None`) without going upstream.
    Reply(Option<Vec<u8>>),
    /// To be forwarded by [`Shared::forward`]. Not boxed: it moves on into the forwarded
    /// query's callback at once, and a box would be one more allocation per query.
    Forward(Pending),
}

pub(crate) struct Pending {
    query: ParsedQuery,
    asker: Asker,
    meta: QueryMeta,
    owner: Owner,
    /// Taken in `decide` for UDP; TCP waits for one in `forward`.
    permit: Option<Permit>,
}

impl Pending {
    /// The query as parsed in [`Shared::decide`] (for [`crate::decision`]).
    pub(crate) fn query(&self) -> &ParsedQuery {
        &self.query
    }

    /// Whether it holds its permit (UDP, the pool not used up): it can go without a task.
    pub(crate) fn has_permit(&self) -> bool {
        self.permit.is_some()
    }
}

impl Shared {
    pub(crate) fn new(
        config: ProxyConfig,
        learner: Arc<dyn Learner>,
        flows: Option<Arc<dyn FlowSink>>,
        metrics: ProxyMetrics,
    ) -> Self {
        let stats = Arc::new(ProxyStats::default());
        Shared {
            forwarder: Forwarder::new(config.upstream_timeout, config.upstream_sockets, stats.clone()),
            limiter: Limiter::new(config.max_inflight, config.max_inflight_per_endpoint),
            admission: Admission::new(config.max_qps_per_endpoint, config.qps_burst_per_endpoint),
            shed_log: LogLimit::new(std::time::Duration::from_secs(10)),
            snapshot: ArcSwap::from_pointee(Snapshot::default()),
            interfaces: ArcSwap::from_pointee(Interfaces::default()),
            names: NameLocks::default(),
            datapath_log: LogLimit::new(std::time::Duration::from_secs(10)),
            metrics,
            config,
            learner,
            flows,
            stats,
        }
    }

    /// Where flows go, if anyone wants them now.
    fn flow_sink(&self) -> Option<&dyn FlowSink> {
        self.flows.as_deref().filter(|s| s.wants_flows())
    }

    /// Both phases, for callers that spawn a task per query anyway (TCP).
    pub(crate) async fn handle(&self, fwd: &Forwarder, packet: &[u8], meta: QueryMeta) -> Option<Vec<u8>> {
        match self.decide(packet, meta) {
            Step::Reply(r) => r,
            Step::Forward(p) => self.forward(fwd, packet, p).await,
        }
    }

    /// The synchronous part: parse, find the endpoint, apply the DNS rules, take a permit.
    pub(crate) fn decide(&self, packet: &[u8], meta: QueryMeta) -> Step {
        let query = match wire::parse_query(packet) {
            Ok(q) => q,
            Err(e) => return Step::Reply(self.unparsable(e, meta)),
        };
        inc(&self.stats.queries);
        if query.metadata.op_code != OpCode::Query {
            let err = ProxyError::UnsupportedOpcode { client: meta.client, opcode: query.metadata.op_code };
            inc(&self.stats.malformed);
            let asker = Asker { endpoint: None, verdict: RuleVerdict::NotProxied, audited: false };
            return Step::Reply(self.fail(&query, packet, &err, meta, &asker));
        }

        let snapshot = self.snapshot.load();
        let endpoint = if self.config.mode == Mode::Transparent {
            match origin::establish(&snapshot, &self.interfaces.load(), meta.client.ip(), meta.ifindex) {
                Ok(ep) => Some(ep),
                Err(reason) => return Step::Reply(self.unverified(&query, packet, meta, reason)),
            }
        } else {
            snapshot.by_ip(meta.client.ip()).cloned()
        };
        let owner = Owner::of(endpoint.as_ref().map(|e| e.id), meta.client.ip());
        if let (Admit::Shed { flow }, shed) = self.admission.check(owner, meta.received) {
            return Step::Reply(self.shed(&query, meta, endpoint, flow, shed));
        }
        let verdict = match &endpoint {
            Some(ep) => ep.policy.dns.decide(meta.server.ip(), meta.server.port(), meta.proto, &query.qname),
            None => RuleVerdict::NotProxied,
        };
        let refused = matches!(verdict, RuleVerdict::Refused(_));
        // Audit mode: the refusal is reported, not made.
        let audited = refused
            && (self.config.policy_audit_mode || endpoint.as_ref().is_some_and(|e| e.endpoint.policy_audit_mode));
        let asker = Asker { endpoint, verdict, audited };
        let refused = refused && !audited;
        let request_verdict = if refused { Verdict::Dropped } else { asker.forwarded() };
        self.request_flow(&query, meta, &asker, request_verdict);
        if audited {
            inc(&self.stats.audited);
        }

        if refused {
            inc(&self.stats.refused);
            let policy = asker.policy().cloned().expect("a refusal names its policy");
            let err = ProxyError::Refused { qname: query.qname.clone(), policy };
            return Step::Reply(self.fail(&query, packet, &err, meta, &asker));
        }
        if query.question_compressed() {
            // Forwarded, the pointer would be read against the header with the proxy's ID.
            inc(&self.stats.malformed);
            let err = ProxyError::CompressedQuestion { client: meta.client, qname: query.qname.clone() };
            return Step::Reply(self.fail(&query, packet, &err, meta, &asker));
        }

        // UDP takes its permit here; when the pool is used up, the query waits its turn in the
        // task (TCP always does).
        let permit = if meta.proto == L4Proto::Tcp {
            None
        } else {
            match self.limiter.try_acquire(owner) {
                Ok(p) => Some(p),
                Err(Busy::PoolFull) => None,
                Err(Busy::OwnerFull) => return Step::Reply(self.overloaded(&query, packet, meta, &asker)),
            }
        };
        Step::Forward(Pending { query, asker, meta, owner, permit })
    }

    /// A query over its endpoint's rate: no answer; counted, logged now and then, and a flow
    /// when `flow` (verdict ERROR: the proxy did not serve it, no policy refused it).
    fn shed(
        &self,
        query: &ParsedQuery,
        meta: QueryMeta,
        endpoint: Option<Arc<ResolvedEndpoint>>,
        flow: bool,
        shed: u64,
    ) -> Option<Vec<u8>> {
        inc(&self.stats.rate_limited);
        let asker = Asker { endpoint, verdict: RuleVerdict::NotProxied, audited: false };
        if let Some(suppressed) = self.shed_log.check(meta.received) {
            tracing::warn!(
                endpoint = asker.endpoint.as_ref().map(|e| tracing::field::display(e.endpoint.display_key())),
                src.ip = %meta.client.ip(), shed_total = shed, suppressed,
                "endpoint over its query rate (--max-qps-per-endpoint); its queries are shed"
            );
        }
        self.metrics.query(Verdict::Error, u16::from(query.qtype));
        if flow {
            self.response_flow(query, meta, &asker, Verdict::Error, ResponseCode::ServFail, None);
        }
        None
    }

    /// Transparent mode, no endpoint for the query: refused, never forwarded.
    fn unverified(
        &self,
        query: &ParsedQuery,
        packet: &[u8],
        meta: QueryMeta,
        reason: origin::Unverified,
    ) -> Option<Vec<u8>> {
        inc(&self.stats.unverified);
        let asker = Asker { endpoint: None, verdict: RuleVerdict::NotProxied, audited: false };
        self.request_flow(query, meta, &asker, Verdict::Dropped);
        let err = ProxyError::UnverifiedOrigin { client: meta.client, qname: query.qname.clone(), reason };
        tracing::debug!(dns.qname = %query.qname, src.ip = %meta.client.ip(), ifindex = ?meta.ifindex, error = %err, "query refused");
        self.fail(query, packet, &err, meta, &asker)
    }

    fn overloaded(&self, query: &ParsedQuery, packet: &[u8], meta: QueryMeta, asker: &Asker) -> Option<Vec<u8>> {
        inc(&self.stats.overloaded);
        let endpoint = asker.endpoint.as_ref().map(|e| e.id);
        let err = ProxyError::Overloaded { client: meta.client, endpoint, qname: query.qname.clone() };
        self.fail(query, packet, &err, meta, asker)
    }

    /// The asynchronous part: forward, learn, wait for the datapath, shape the reply.
    pub(crate) async fn forward(&self, fwd: &Forwarder, packet: &[u8], pending: Pending) -> Option<Vec<u8>> {
        let Pending { query, asker, meta, owner, mut permit } = pending;
        if permit.is_none() {
            permit = self.limiter.acquire(owner, fwd.timeout()).await;
            if permit.is_none() {
                return self.overloaded(&query, packet, meta, &asker);
            }
        }
        inc(&self.stats.forwarded);
        let outgoing = Outgoing { packet, question_end: query.question_end, upstream: meta.server };
        let sent = Instant::now();
        let result = match meta.proto {
            L4Proto::Tcp => fwd.tcp(outgoing).await,
            _ => fwd.udp(outgoing).await,
        };
        let out = self.answered(fwd.timeout(), packet, &query, &asker, meta, result, sent).await;
        drop(permit);
        out
    }

    /// [`Shared::forward`] for a UDP query that holds its permit, without a task of its own: the
    /// query waits in its upstream socket's table, and the reply is learned from and released
    /// on that socket's reader (a task only if the datapath makes it wait). `then` gets the
    /// answer to send; the tracker's token keeps a stopping proxy waiting for it.
    pub(crate) fn forward_then<F>(
        self: &Arc<Self>,
        fwd: &Forwarder,
        packet: Vec<u8>,
        pending: Pending,
        tracker: &TaskTracker,
        then: F,
    ) where
        F: FnOnce(&Arc<Shared>, Option<Vec<u8>>) + Send + 'static,
    {
        inc(&self.stats.forwarded);
        let (question_end, upstream, timeout) = (pending.query.question_end, pending.meta.server, fwd.timeout());
        let shared = self.clone();
        let token = tracker.token();
        let tracker = tracker.clone();
        let sent = Instant::now();
        let done: Done = Box::new(move |result, packet| {
            let finish = async move {
                let Pending { query, asker, meta, permit, .. } = pending;
                let out = shared.answered(timeout, &packet, &query, &asker, meta, result, sent).await;
                drop(permit);
                then(&shared, out);
                drop(token);
            };
            let mut finish = Box::pin(finish);
            // Ready at once unless the datapath has yet to acknowledge what was learned.
            if finish.as_mut().poll(&mut Context::from_waker(Waker::noop())).is_pending() {
                tracker.spawn(finish);
            }
        });
        fwd.udp_then(packet, question_end, upstream, done);
    }

    /// What a forwarded query's answer (or failure) becomes.
    #[allow(clippy::too_many_arguments)]
    async fn answered(
        &self,
        timeout: Duration,
        packet: &[u8],
        query: &ParsedQuery,
        asker: &Asker,
        meta: QueryMeta,
        result: Result<Vec<u8>, ForwardError>,
        sent: Instant,
    ) -> Option<Vec<u8>> {
        if result.is_ok() {
            self.metrics.upstream_latency(sent.elapsed());
        }
        let reply = match result {
            Ok(r) => r,
            Err(e) => {
                let err = self.forward_error(e, query, meta, timeout);
                return self.fail(query, packet, &err, meta, asker);
            }
        };
        Some(self.release(query, packet, reply, meta, asker).await)
    }

    fn forward_error(&self, e: ForwardError, query: &ParsedQuery, meta: QueryMeta, timeout: Duration) -> ProxyError {
        let qname = query.qname.clone();
        match e {
            ForwardError::Timeout => {
                inc(&self.stats.upstream_timeouts);
                ProxyError::UpstreamTimeout { upstream: meta.server, qname, timeout }
            }
            ForwardError::Io(source) => {
                inc(&self.stats.upstream_errors);
                ProxyError::UpstreamIo { upstream: meta.server, qname, source }
            }
            ForwardError::NotAResponse => {
                inc(&self.stats.upstream_errors);
                ProxyError::UpstreamNotAResponse { upstream: meta.server, qname }
            }
        }
    }

    /// Learn from an allowed answer, wait for the datapath, and shape the reply for the transport.
    async fn release(
        &self,
        query: &ParsedQuery,
        packet: &[u8],
        reply: Vec<u8>,
        meta: QueryMeta,
        asker: &Asker,
    ) -> Vec<u8> {
        let rcode = ResponseCode::from(0, wire::rcode_low(&reply));
        let want_flow = self.flow_sink().is_some();
        let learnable = asker.learns() && rcode == ResponseCode::NoError && !wire::is_truncated(&reply);
        let mut chain = if learnable || want_flow {
            match extract_chain_wire(&reply) {
                Ok(chain) => Some(chain),
                Err(e) => {
                    tracing::debug!(dns.qname = %query.qname, error = %e, "upstream reply not decodable; not learned");
                    None
                }
            }
        } else {
            None
        };

        if learnable
            && let (Some(c), Some(ep)) = (&mut chain, &asker.endpoint)
            && !c.ips.is_empty()
        {
            self.learn(ep.id, query, c).await;
        }

        let out = if meta.proto == L4Proto::Udp && reply.len() > query.udp_limit() {
            inc(&self.stats.truncated);
            refusal::truncated_reply(&reply, query.question(packet)).unwrap_or(reply)
        } else {
            reply
        };
        self.access_log(query, meta, asker, rcode, asker.forwarded());
        if want_flow {
            self.response_flow(query, meta, asker, asker.forwarded(), rcode, chain);
        }
        out
    }

    /// Learn the chain's names and addresses; they are lent to the learner and come back to the
    /// chain (the response flow shows them), never copied.
    async fn learn(&self, endpoint: EndpointId, query: &ParsedQuery, chain: &mut Chain) {
        let answer = Answer {
            endpoint,
            qname: String::from(&*query.qname),
            cnames: std::mem::take(&mut chain.cnames),
            ips: std::mem::take(&mut chain.ips),
            ttl: chain.ttl.unwrap_or(0),
        };
        self.learn_answer(&answer, query).await;
        chain.cnames = answer.cnames;
        chain.ips = answer.ips;
    }

    async fn learn_answer(&self, answer: &Answer, query: &ParsedQuery) {
        let endpoint = answer.endpoint;
        let names = std::iter::once(answer.qname.as_str()).chain(answer.cnames.iter().map(String::as_str));
        let _serialized = self.names.lock(names).await;
        inc(&self.stats.learned);
        let started = Instant::now();
        let max = self.config.response_max_delay;
        match tokio::time::timeout(max, self.learner.learn(answer)).await {
            Ok(Ok(false)) => {}
            Ok(Ok(true)) => self.metrics.datapath_ack_latency(started.elapsed()),
            Ok(Err(e)) => {
                inc(&self.stats.datapath_errors);
                if let Some(suppressed) = self.datapath_log.check(Instant::now()) {
                    tracing::warn!(
                        dns.qname = %query.qname, endpoint = %endpoint, error = %e, suppressed,
                        "datapath update failed; answer released"
                    );
                }
            }
            Err(_) => {
                inc(&self.stats.datapath_timeouts);
                self.metrics.datapath_ack_timeout();
                if let Some(suppressed) = self.datapath_log.check(Instant::now()) {
                    tracing::warn!(
                        dns.qname = %query.qname, endpoint = %endpoint, max_delay = ?max, suppressed,
                        "datapath did not acknowledge within --response-max-delay; answer released"
                    );
                }
            }
        }
    }

    fn unparsable(&self, e: QueryParseError, meta: QueryMeta) -> Option<Vec<u8>> {
        inc(&self.stats.malformed);
        let (metadata, err) = match e {
            QueryParseError::NoHeader | QueryParseError::NotAQuery => return None,
            QueryParseError::Malformed { metadata, source } => {
                (metadata, ProxyError::MalformedQuery { client: meta.client, source })
            }
            QueryParseError::QuestionCount { metadata, count } => {
                (metadata, ProxyError::QuestionCount { client: meta.client, count })
            }
        };
        tracing::debug!(target: "dns", error = %err, src.ip = %meta.client.ip(), "malformed query");
        let rcode = refusal::response_code(&err, self.config.reject)?;
        Some(refusal::error_reply(&metadata, &[], rcode))
    }

    /// Answer a query the proxy could not or would not forward.
    fn fail(
        &self,
        query: &ParsedQuery,
        packet: &[u8],
        err: &ProxyError,
        meta: QueryMeta,
        asker: &Asker,
    ) -> Option<Vec<u8>> {
        let verdict = if matches!(err, ProxyError::Refused { .. } | ProxyError::UnverifiedOrigin { .. }) {
            Verdict::Dropped
        } else {
            Verdict::Error
        };
        if verdict == Verdict::Error {
            tracing::debug!(dns.qname = %query.qname, src.ip = %meta.client.ip(), error = %err, "query failed");
        }
        let rcode = refusal::response_code(err, self.config.reject);
        let logged_rcode = rcode.unwrap_or(ResponseCode::ServFail);
        self.access_log(query, meta, asker, logged_rcode, verdict);
        self.response_flow(query, meta, asker, verdict, logged_rcode, None);
        Some(refusal::error_reply(&query.metadata, query.question(packet), rcode?))
    }

    /// Count the query and write its access-log line: once per query, when its answer is known.
    fn access_log(&self, query: &ParsedQuery, meta: QueryMeta, asker: &Asker, rcode: ResponseCode, verdict: Verdict) {
        self.metrics.query(verdict, u16::from(query.qtype));
        self.metrics.processing_latency(meta.received.elapsed());
        tracing::debug!(
            target: "dns",
            verdict = ?verdict,
            dns.qname = %query.qname,
            dns.qtype = %query.qtype,
            src.ip = %meta.client.ip(),
            src.port = meta.client.port(),
            dst = %meta.server,
            proto = %meta.proto,
            endpoint = asker.endpoint.as_ref().map(|e| tracing::field::display(e.endpoint.display_key())),
            policy.name = asker.policy().map(tracing::field::display),
            dns.rcode = %rcode,
            latency_us = meta.received.elapsed().as_micros() as u64,
        );
    }

    fn request_flow(&self, query: &ParsedQuery, meta: QueryMeta, asker: &Asker, verdict: Verdict) {
        if let Some(sink) = self.flow_sink() {
            sink.dns_flow(base_flow(query, meta, asker, DnsFlowKind::Request, verdict));
        }
    }

    fn response_flow(
        &self,
        query: &ParsedQuery,
        meta: QueryMeta,
        asker: &Asker,
        verdict: Verdict,
        rcode: ResponseCode,
        chain: Option<Chain>,
    ) {
        let Some(sink) = self.flow_sink() else { return };
        let mut flow = base_flow(query, meta, asker, DnsFlowKind::Response, verdict);
        flow.rcode = Some(u16::from(rcode));
        flow.latency = Some(meta.received.elapsed());
        if let Some(c) = chain {
            flow.ttl = c.ttl;
            flow.rrtypes = c.rrtypes;
            flow.ips = c.ips;
            flow.cnames = c.cnames;
        }
        sink.dns_flow(flow);
    }
}

fn base_flow(query: &ParsedQuery, meta: QueryMeta, asker: &Asker, kind: DnsFlowKind, verdict: Verdict) -> DnsFlow {
    DnsFlow {
        time: SystemTime::now(),
        kind,
        verdict,
        endpoint: asker.endpoint.as_ref().map(|e| e.id),
        client: meta.client,
        server: meta.server,
        protocol: meta.proto,
        qname: query.qname.clone(),
        qtype: u16::from(query.qtype),
        rcode: None,
        ips: Vec::new(),
        ttl: None,
        cnames: Vec::new(),
        rrtypes: Vec::new(),
        policy: asker.policy().cloned(),
        latency: None,
    }
}
