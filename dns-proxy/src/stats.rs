//! Counters of the proxy. Plain atomics on the query path; the agent's metrics exporter reads them.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        #[derive(Debug, Default)]
        pub struct ProxyStats {
            $($(#[$doc])* pub $name: AtomicU64,)*
        }

        /// A point-in-time copy of [`ProxyStats`].
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
        pub struct StatsSnapshot {
            $($(#[$doc])* pub $name: u64,)*
        }

        impl ProxyStats {
            pub fn snapshot(&self) -> StatsSnapshot {
                StatsSnapshot { $($name: self.$name.load(Ordering::Relaxed),)* }
            }
        }
    };
}

counters! {
    /// Packets received that parsed as queries.
    queries,
    /// Queries forwarded upstream (allowed, or not covered by DNS rules).
    forwarded,
    /// Queries refused by DNS rules.
    refused,
    /// Packets answered with FORMERR or NOTIMP, or ignored because no header could be read.
    malformed,
    /// Upstream did not answer in time (SERVFAIL sent).
    upstream_timeouts,
    /// Upstream socket or connection errors (SERVFAIL sent).
    upstream_errors,
    /// Upstream replies dropped: no query waits for their ID.
    spoofed_unknown_id,
    /// Upstream replies dropped: right ID, wrong source address.
    spoofed_wrong_source,
    /// Upstream replies dropped: right ID and source, different question.
    spoofed_wrong_question,
    /// UDP answers sent with TC set because they exceeded the client's limit.
    truncated,
    /// Answers learned from (handed to the cache).
    learned,
    /// Answers released before the datapath acknowledged (--response-max-delay passed).
    datapath_timeouts,
    /// Datapath updates that failed (answer released anyway, logged).
    datapath_errors,
    /// Queries dropped because --max-inflight (or the endpoint's share) was reached.
    overloaded,
    /// Queries shed because their endpoint was over --max-qps-per-endpoint.
    rate_limited,
    /// Replies that could not be sent to the client.
    send_errors,
    /// Transparent mode: queries refused because their endpoint could not be established (a
    /// source that is not the endpoint's whose interface the query came from, or no one's).
    unverified,
    /// Audit mode: queries the DNS rules refused, forwarded anyway (their flows say AUDIT).
    audited,
    /// TCP connections closed to make room for a new one (the oldest idle, at a cap).
    tcp_evicted,
    /// TCP connections closed at once: the endpoint's (or the proxy's) cap held only busy ones.
    tcp_refused,
    /// TCP accepts that failed for want of descriptors or memory (the loop backs off).
    tcp_accept_errors,
}

pub(crate) fn inc(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}
