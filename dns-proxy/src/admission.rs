//! Per-endpoint admission: a token bucket per endpoint (or per source address that is no
//! endpoint), checked in the receive loop as soon as the query's endpoint is known, before the
//! query takes anything shared (a permit, a task, an upstream socket, the runtime's queue). With
//! one queue for everyone, four pods flooding at full rate put a quiet pod's queries behind
//! thousands of theirs (p50 43 ms instead of 0.4 ms); with the bucket, what an endpoint sends
//! beyond its rate is shed at the cost of a parse and a lookup, and the others' queries find the
//! loop, the runtime and the pool (see [`crate::limits`]) as if the flood were not there.
//!
//! Work-conserving: an endpoint over its rate is shed only while another endpoint is active
//! (asked something within the last second). Alone, a pod may use all the proxy has (a load test
//! from one pod is served in full); as soon as another pod asks, the flooder is held to its rate.
//!
//! Shed queries get no answer (a resolver retries; answering would cost a send per flood packet)
//! and are counted per endpoint. Each becomes a DNS flow with verdict ERROR, at most
//! [`FLOWS_PER_SECOND`] per endpoint: the flow ring is shared too, and a flood must not push the
//! other pods' flows out of it.

use foldhash::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::limits::Owner;

/// Shed queries of one endpoint that become flows, per second; the rest are only counted.
pub const FLOWS_PER_SECOND: u32 = 10;
/// Buckets kept before idle (full) ones are forgotten: a full bucket is what a new one would be.
const MAX_BUCKETS: usize = 65_536;
/// An endpoint that asked within this long is active: with two active, rates are enforced.
const ACTIVE_WINDOW: Duration = Duration::from_secs(1);
/// How often the active endpoints are counted.
const ACTIVE_RECOUNT: Duration = Duration::from_millis(100);

/// What [`Admission::check`] decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admit {
    Yes,
    /// Over the endpoint's rate: shed. `flow`: this one is reported as a flow.
    Shed {
        flow: bool,
    },
}

#[derive(Debug)]
pub struct Admission {
    /// Tokens per second; 0 turns admission off.
    rate: f64,
    burst: f64,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    buckets: HashMap<Owner, Bucket>,
    /// Kept apart from the buckets, which are forgotten once full again.
    shed: HashMap<Owner, u64>,
    /// Shed by owners past [`MAX_BUCKETS`] distinct ones.
    shed_other: u64,
    /// Owners active at the last count, and when that was.
    active: usize,
    counted: Option<Instant>,
}

impl State {
    /// Is more than one endpoint asking? Recounted at most every [`ACTIVE_RECOUNT`].
    fn contended(&mut self, now: Instant) -> bool {
        if self.counted.is_none_or(|t| now.saturating_duration_since(t) >= ACTIVE_RECOUNT) {
            self.active =
                self.buckets.values().filter(|b| now.saturating_duration_since(b.seen) < ACTIVE_WINDOW).count();
            self.counted = Some(now);
        }
        self.active >= 2
    }
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
    /// The last query, admitted or not.
    seen: Instant,
    /// Start of the second in which `flows` shed flows were reported.
    flow_second: Instant,
    flows: u32,
}

impl Admission {
    /// `rate` queries per second per endpoint with bursts of up to `burst`; `rate` 0: no limit.
    pub fn new(rate: u32, burst: u32) -> Self {
        Admission { rate: f64::from(rate), burst: f64::from(burst.max(1)), state: Mutex::default() }
    }

    pub fn enabled(&self) -> bool {
        self.rate > 0.0
    }

    /// Take a token for one query of `owner`. Returns the decision and, when shed, how many of
    /// `owner`'s queries were shed so far.
    pub fn check(&self, owner: Owner, now: Instant) -> (Admit, u64) {
        if !self.enabled() {
            return (Admit::Yes, 0);
        }
        let mut guard = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let state = &mut *guard;
        if state.buckets.len() >= MAX_BUCKETS && !state.buckets.contains_key(&owner) {
            self.forget_full(&mut state.buckets, now);
            if state.buckets.len() >= MAX_BUCKETS {
                // Every bucket is in use (spoofed sources by the ten thousand): a newcomer is
                // let through rather than held to a bucket it never had.
                return (Admit::Yes, 0);
            }
        }
        let new_owner = !state.buckets.contains_key(&owner);
        let b = state.buckets.entry(owner).or_insert(Bucket {
            tokens: self.burst,
            last: now,
            seen: now,
            flow_second: now,
            flows: 0,
        });
        let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + elapsed * self.rate).min(self.burst);
        b.last = now;
        b.seen = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            if new_owner {
                state.active += 1;
            }
            return (Admit::Yes, 0);
        }
        if !state.contended(now) {
            // Over its rate but alone: nobody waits behind it.
            return (Admit::Yes, 0);
        }
        let b = state.buckets.get_mut(&owner).expect("just inserted");
        if now.saturating_duration_since(b.flow_second) >= Duration::from_secs(1) {
            b.flow_second = now;
            b.flows = 0;
        }
        let flow = b.flows < FLOWS_PER_SECOND;
        b.flows += u32::from(flow);
        let total = if state.shed.len() < MAX_BUCKETS || state.shed.contains_key(&owner) {
            let n = state.shed.entry(owner).or_default();
            *n += 1;
            *n
        } else {
            state.shed_other += 1;
            state.shed_other
        };
        (Admit::Shed { flow }, total)
    }

    /// Drop the buckets that refilled: they hold nothing a fresh bucket would not.
    fn forget_full(&self, buckets: &mut HashMap<Owner, Bucket>, now: Instant) {
        let (rate, burst) = (self.rate, self.burst);
        buckets.retain(|_, b| b.tokens + now.saturating_duration_since(b.last).as_secs_f64() * rate < burst);
    }

    /// Queries shed so far, per endpoint (or address), highest first.
    pub fn shed_counts(&self) -> Vec<(Owner, u64)> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<(Owner, u64)> = state.shed.iter().map(|(o, n)| (*o, *n)).collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| format!("{:?}", a.0).cmp(&format!("{:?}", b.0))));
        v
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use fqdn_cache::EndpointId;

    use super::*;

    const FLOOD: Owner = Owner::Endpoint(EndpointId(1));
    const QUIET: Owner = Owner::Endpoint(EndpointId(2));

    #[test]
    fn a_flooder_is_held_to_its_rate_and_the_others_are_not_touched() {
        let a = Admission::new(100, 20);
        let t0 = Instant::now();
        assert_eq!(a.check(QUIET, t0).0, Admit::Yes, "another endpoint is active");
        // The burst, then nothing until tokens come back at 100/s.
        let admitted = (0..1000).filter(|_| a.check(FLOOD, t0).0 == Admit::Yes).count();
        assert_eq!(admitted, 20);
        assert_eq!(a.check(QUIET, t0).0, Admit::Yes, "another endpoint has its own bucket");
        // One second later: 100 more (the burst caps what accumulates); QUIET still asks.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(a.check(QUIET, t1).0, Admit::Yes);
        let admitted = (0..1000).filter(|_| a.check(FLOOD, t1).0 == Admit::Yes).count();
        assert_eq!(admitted, 20, "refill is capped at the burst");
        // Steady: one query every 10 ms is always admitted.
        for i in 1..=100u64 {
            let t = t1 + Duration::from_millis(10 * i);
            assert_eq!(a.check(FLOOD, t).0, Admit::Yes, "query {i}");
            if i % 50 == 0 {
                a.check(QUIET, t);
            }
        }
        assert_eq!(a.shed_counts(), [(FLOOD, 1960)]);
    }

    #[test]
    fn flows_of_shed_queries_are_limited_per_second() {
        let a = Admission::new(1, 1);
        let t0 = Instant::now();
        a.check(QUIET, t0);
        assert_eq!(a.check(FLOOD, t0).0, Admit::Yes);
        let flows = (0..100).filter(|_| a.check(FLOOD, t0).0 == Admit::Shed { flow: true }).count();
        assert_eq!(flows as u32, FLOWS_PER_SECOND);
        let t1 = t0 + Duration::from_millis(1500);
        a.check(QUIET, t1);
        assert_eq!(a.check(FLOOD, t1).0, Admit::Yes, "a token came back");
        assert_eq!(a.check(FLOOD, t1), (Admit::Shed { flow: true }, 101), "a new second of flows");
    }

    #[test]
    fn off_when_rate_is_zero_and_addresses_are_their_own_owners() {
        let off = Admission::new(0, 0);
        assert!((0..10_000).all(|_| off.check(FLOOD, Instant::now()).0 == Admit::Yes));
        let a = Admission::new(1, 1);
        let t0 = Instant::now();
        let x = Owner::Address("192.0.2.1".parse::<IpAddr>().unwrap());
        let y = Owner::Address("192.0.2.2".parse::<IpAddr>().unwrap());
        a.check(QUIET, t0);
        assert_eq!(a.check(x, t0).0, Admit::Yes);
        assert_eq!(a.check(x, t0), (Admit::Shed { flow: true }, 1));
        assert_eq!(a.check(y, t0).0, Admit::Yes, "one unknown source does not use up another's");
    }

    #[test]
    fn alone_an_endpoint_is_not_held_to_its_rate() {
        let a = Admission::new(10, 5);
        let t0 = Instant::now();
        assert!((0..1000).all(|i| a.check(FLOOD, t0 + Duration::from_micros(i)).0 == Admit::Yes));
        // Another endpoint asks: from its next query on, the flooder is shed.
        let t1 = t0 + Duration::from_millis(1);
        assert_eq!(a.check(QUIET, t1).0, Admit::Yes);
        assert!(matches!(a.check(FLOOD, t1).0, Admit::Shed { .. }));
        // The other goes quiet for longer than the active window: the flooder is alone again.
        let t2 = t1 + ACTIVE_WINDOW + ACTIVE_RECOUNT;
        assert!((0..100).all(|i| a.check(FLOOD, t2 + Duration::from_micros(i)).0 == Admit::Yes));
    }

    #[test]
    fn full_buckets_are_forgotten_at_the_cap() {
        let a = Admission::new(1000, 10);
        let t0 = Instant::now();
        for i in 0..MAX_BUCKETS as u32 - 1 {
            a.check(Owner::Endpoint(EndpointId(i + 10)), t0);
        }
        let shed = (0..21).filter(|_| a.check(FLOOD, t0).0 != Admit::Yes).count();
        assert_eq!(shed, 11);
        // The table is full of buckets in use: a newcomer passes rather than meet a bucket it never had.
        assert_eq!(a.check(QUIET, t0), (Admit::Yes, 0));
        // A second later every bucket refilled; a new owner makes room without losing FLOOD's count.
        let t1 = t0 + Duration::from_secs(1);
        a.check(QUIET, t1);
        let len = a.state.lock().unwrap().buckets.len();
        assert!(len < 10, "{len} buckets left");
        assert_eq!(a.shed_counts(), [(FLOOD, 11)], "forgetting a refilled bucket keeps its count");
    }
}
