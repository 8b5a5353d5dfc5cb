//! Waiting for something to become true, the one way tests do it: poll a condition until it
//! holds or a generous limit passes. The limit only bounds a hang on a broken build; no test
//! asserts how long anything took.

use std::time::{Duration, Instant};

/// How often conditions are polled.
const POLL: Duration = Duration::from_millis(20);

/// Poll `cond` until it returns `Some`, for at most `limit`; `Err` names `what` was awaited.
pub fn until<T>(what: &str, limit: Duration, mut cond: impl FnMut() -> Option<T>) -> Result<T, String> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = cond() {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            return Err(format!("gave up after {limit:?} waiting for {what}"));
        }
        std::thread::sleep(POLL);
    }
}

/// [`until`] for a yes/no condition, panicking with `what` when it never holds.
pub fn until_true(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    until(what, limit, || cond().then_some(())).unwrap_or_else(|e| panic!("{e}"));
}

/// [`until`] on a tokio runtime: the condition is polled between sleeps that yield.
pub async fn until_async<T>(what: &str, limit: Duration, mut cond: impl FnMut() -> Option<T>) -> Result<T, String> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = cond() {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            return Err(format!("gave up after {limit:?} waiting for {what}"));
        }
        tokio::time::sleep(POLL).await;
    }
}
