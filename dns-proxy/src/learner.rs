//! Where the proxy hands what it learned. The agent implements [`Learner`] with `fqdn-cache`; the
//! proxy only needs the resulting [`Delta`] to reach the datapath before it releases the answer.

use ebpf_redirect::{BoxFuture, Datapath, DatapathError};
use fqdn_cache::{Answer, Delta};

pub trait Learner: Send + Sync + 'static {
    /// Record `answer` and return the allow-map changes it causes. Called on the query path: it
    /// must not block on I/O.
    fn learn(&self, answer: &Answer) -> Delta;

    /// Learn and hand the resulting delta to `datapath`; the future resolves with the ack
    /// (`Ok(false)`: nothing to apply). A learner that also computes deltas elsewhere (expiry,
    /// policy changes) overrides this to start `apply` under the same lock as the computation, so
    /// deltas reach a synchronous datapath in the order they were computed.
    fn learn_into<'a>(
        &'a self,
        answer: &Answer,
        datapath: &'a dyn Datapath,
    ) -> BoxFuture<'a, Result<bool, DatapathError>> {
        let delta = self.learn(answer);
        if delta.is_empty() {
            return Box::pin(std::future::ready(Ok(false)));
        }
        let apply = datapath.apply(delta);
        Box::pin(async move { apply.await.map(|()| true) })
    }
}

/// Learns nothing: DNS rules are enforced, no IPs are allowed as a result.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoLearner;

impl Learner for NoLearner {
    fn learn(&self, _answer: &Answer) -> Delta {
        Delta::default()
    }
}
