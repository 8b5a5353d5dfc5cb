//! Where the proxy hands what it learned. The agent implements [`Learner`] with `fqdn-cache`; the
//! proxy only needs the resulting [`Delta`] to pass to the datapath before releasing the answer.

use fqdn_cache::{Answer, Delta};

pub trait Learner: Send + Sync + 'static {
    /// Record `answer` and return the allow-map changes it causes. Called on the query path: it
    /// must not block on I/O.
    fn learn(&self, answer: &Answer) -> Delta;
}

/// Learns nothing: DNS rules are enforced, no IPs are allowed as a result.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoLearner;

impl Learner for NoLearner {
    fn learn(&self, _answer: &Answer) -> Delta {
        Delta::default()
    }
}
