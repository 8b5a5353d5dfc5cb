//! Repeated log lines, rate-limited. A hostile client can make one error repeat as fast as the
//! proxy runs (an accept loop out of descriptors logged "Too many open files" ~265,000 times a
//! second); each call site keeps one [`LogLimit`] and logs at most once per interval, with the
//! number of lines it held back.

use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct LogLimit {
    interval: Duration,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    last: Option<Instant>,
    suppressed: u64,
}

impl LogLimit {
    pub const fn new(interval: Duration) -> Self {
        LogLimit { interval, state: Mutex::new(State { last: None, suppressed: 0 }) }
    }

    /// Whether to log now (`Some(lines held back since the last one)`) or stay quiet (`None`).
    pub fn check(&self, now: Instant) -> Option<u64> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match s.last {
            Some(t) if now.saturating_duration_since(t) < self.interval => {
                s.suppressed += 1;
                None
            }
            _ => {
                s.last = Some(now);
                Some(std::mem::take(&mut s.suppressed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn once_per_interval_with_the_count_held_back() {
        let l = LogLimit::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(l.check(t0), Some(0));
        for i in 1..=1000u64 {
            assert_eq!(l.check(t0 + Duration::from_millis(i)), None);
        }
        assert_eq!(l.check(t0 + Duration::from_secs(10)), Some(1000));
        assert_eq!(l.check(t0 + Duration::from_secs(11)), None);
        assert_eq!(l.check(t0 + Duration::from_secs(25)), Some(1));
    }
}
