//! The upstream timeout on a pooled connection, without a timer per request.
//!
//! A timer per request (`tokio::time::timeout`) is put into the runtime's timer wheel when the request
//! first waits and taken out again when it is answered, a few microseconds after: under callgrind on the
//! static benchmark its insert, poll and removal were about 400 user-space instructions of the sidecar's
//! 33,000 a request, to bound a wait that almost never comes near the bound. A connection carries one request at a time, so it keeps one
//! timer instead: left armed at the deadline it was last set to, and set again only when it fires before
//! the current request's deadline, which is once a timeout's length per connection rather than per
//! request. A wait is then bounded by the same deadline as before; only a connection idle in the pool
//! may see its timer fire with nobody waiting (a spurious wake-up of whichever task last waited on it).

use std::pin::Pin;
use std::task::Poll;

use tokio::time::{Instant, Sleep};

use super::Http1Error;

/// One connection's timer.
pub struct Watchdog {
    timer: Pin<Box<Sleep>>,
}

impl Watchdog {
    pub fn new(deadline: Instant) -> Self {
        Watchdog {
            timer: Box::pin(tokio::time::sleep_until(deadline)),
        }
    }

    /// `work`'s result, or [`Http1Error::TimedOut`] once `deadline` has passed without one.
    ///
    /// `work` is pinned by the caller and borrowed here: taken by value, the request's whole exchange with
    /// the upstream (a future of 416 bytes) was copied into this one and again into its pinned place.
    pub async fn bound<T>(
        &mut self,
        deadline: Instant,
        mut work: Pin<&mut impl Future<Output = Result<T, Http1Error>>>,
    ) -> Result<T, Http1Error> {
        // A later deadline than this request's would let it wait too long (deadlines on one connection
        // only grow, but that is the callers' order, not this type's to rely on).
        if self.timer.deadline() > deadline {
            self.timer.as_mut().reset(deadline);
        }
        std::future::poll_fn(|cx| {
            if let Poll::Ready(done) = work.as_mut().poll(cx) {
                return Poll::Ready(done);
            }
            // Fired at an earlier request's deadline (or while the connection was idle): set again.
            while self.timer.as_mut().poll(cx).is_ready() {
                if self.timer.deadline() >= deadline {
                    return Poll::Ready(Err(Http1Error::TimedOut));
                }
                self.timer.as_mut().reset(deadline);
            }
            Poll::Pending
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use std::pin::pin;
    use std::time::Duration;

    use super::*;

    const WAIT: Duration = Duration::from_millis(300);

    async fn never() -> Result<(), Http1Error> {
        std::future::pending().await
    }

    /// Waits on work that never ends, with a deadline `WAIT` from now; how long it took to time out.
    async fn time_out(watchdog: &mut Watchdog) -> Duration {
        let started = Instant::now();
        let waited = watchdog.bound(started + WAIT, pin!(never())).await;
        assert!(matches!(waited, Err(Http1Error::TimedOut)));
        started.elapsed()
    }

    #[tokio::test]
    async fn work_done_in_time_is_returned_and_the_timer_stays_armed_for_later_requests() {
        let mut watchdog = Watchdog::new(Instant::now() + WAIT);
        let first = watchdog.bound(Instant::now() + WAIT, pin!(async { Ok(1) })).await;
        assert_eq!(first.unwrap(), 1);
        let took = time_out(&mut watchdog).await;
        assert!(took >= WAIT, "timed out early: {took:?}");
    }

    #[tokio::test]
    async fn a_request_after_the_timer_fired_while_idle_still_gets_its_whole_wait() {
        let mut watchdog = Watchdog::new(Instant::now() + Duration::from_millis(20));
        watchdog
            .bound(Instant::now() + Duration::from_millis(20), pin!(async { Ok(()) }))
            .await
            .unwrap();
        // The connection idles past its last deadline: its timer has fired with nobody waiting.
        tokio::time::sleep(Duration::from_millis(60)).await;
        let took = time_out(&mut watchdog).await;
        assert!(took >= WAIT, "timed out early: {took:?}");
    }

    #[tokio::test]
    async fn an_earlier_deadline_than_the_armed_one_is_kept() {
        let mut watchdog = Watchdog::new(Instant::now() + Duration::from_secs(3600));
        let took = time_out(&mut watchdog).await;
        assert!(took < Duration::from_secs(60), "waited for the armed deadline");
    }
}
