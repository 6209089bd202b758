//! Keep-alive pings (ASP.NET Core KeepAliveInterval) and the dead-peer timeout that goes with
//! them. Pings go out every interval whatever the traffic, so idle proxies and NATs in between
//! see a packet; any frame from the peer, not only the Pong, proves it alive.

use std::future::{pending, poll_fn, Future};
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use tokio::time::{sleep_until, Instant, Sleep};

#[derive(Debug, PartialEq, Eq)]
pub enum Tick {
    SendPing,
    TimedOut,
}

pub struct KeepAlive {
    interval: Duration,
    timeout: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    next_ping: Instant,
    ping_sent: Option<Instant>,
    seen: bool,
    /// The timer has this task's waker since it was last set, and wakes the task when due.
    armed: bool,
}

impl KeepAlive {
    /// A zero interval disables pings (and so the timeout); a zero timeout pings without judging.
    pub fn new(interval: Duration, timeout: Duration) -> Self {
        let next_ping = Instant::now() + interval;
        Self {
            interval,
            timeout,
            sleep: (!interval.is_zero()).then(|| Box::pin(sleep_until(next_ping))),
            next_ping,
            ping_sent: None,
            seen: false,
            armed: false,
        }
    }

    /// Called for every frame the peer sends; cheap on purpose (it runs per frame).
    #[inline]
    pub fn seen(&mut self) {
        self.seen = true;
    }

    /// Resolves when a ping is due or the peer has been silent too long. Cancel-safe.
    pub async fn tick(&mut self) -> Tick {
        let Some(sleep) = self.sleep.as_mut() else {
            return pending().await;
        };
        loop {
            // `tick` is polled at every wake-up of the session, nearly always for traffic. A
            // timer that has the task's waker wakes it when due, so until then polling it again
            // (its coop budget, its waker check) is wasted: one atomic load tells whether it
            // has fired. A session's futures all run in its one task, so the waker the timer
            // holds stays the right one. Out of the task's coop budget, a timer answers Pending
            // without taking the waker (the budget's own yield polls it again): it is not armed
            // then, or an idle session would wait for a wake-up that never comes.
            let armed = &mut self.armed;
            poll_fn(|cx| {
                if *armed && !sleep.is_elapsed() {
                    return Poll::Pending;
                }
                *armed = tokio::task::coop::has_budget_remaining();
                sleep.as_mut().poll(cx)
            })
            .await;
            let now = Instant::now();
            if let Some(sent) = self.ping_sent {
                if now >= sent + self.timeout {
                    if !self.seen {
                        return Tick::TimedOut;
                    }
                    self.ping_sent = None;
                }
            }
            let due = now >= self.next_ping;
            if due {
                self.next_ping = now + self.interval;
                // With an interval shorter than the timeout, later pings must not restart the
                // clock of the one still unanswered.
                if self.ping_sent.is_none() && !self.timeout.is_zero() {
                    self.seen = false;
                    self.ping_sent = Some(now);
                }
            }
            let deadline = match self.ping_sent {
                Some(sent) => self.next_ping.min(sent + self.timeout),
                None => self.next_ping,
            };
            sleep.as_mut().reset(deadline);
            self.armed = false;
            if due {
                return Tick::SendPing;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn pings_then_times_out_a_silent_peer() {
        let mut ka = KeepAlive::new(Duration::from_secs(10), Duration::from_secs(3));
        let start = Instant::now();
        assert_eq!(ka.tick().await, Tick::SendPing);
        assert_eq!(start.elapsed(), Duration::from_secs(10));
        assert_eq!(ka.tick().await, Tick::TimedOut);
        assert_eq!(start.elapsed(), Duration::from_secs(13));
    }

    /// Traffic wakes the task far more often than the timer: `tick` is dropped and made again
    /// each time, and the timer is not polled in between, yet every ping is on time.
    #[tokio::test(start_paused = true)]
    async fn pings_on_time_while_traffic_wakes_the_task() {
        let mut ka = KeepAlive::new(Duration::from_secs(10), Duration::from_secs(3));
        let start = Instant::now();
        let mut traffic = tokio::time::interval(Duration::from_millis(700));
        let mut frames = 0;
        let mut pings = Vec::new();
        while pings.len() < 3 {
            tokio::select! {
                _ = traffic.tick() => {
                    assert!(start.elapsed() < Duration::from_secs(60), "pings stopped: {pings:?}");
                    frames += 1;
                    ka.seen();
                }
                tick = ka.tick() => pings.push((tick, start.elapsed())),
            }
        }
        let at = |s| (Tick::SendPing, Duration::from_secs(s));
        assert_eq!(pings, [at(10), at(20), at(30)]);
        assert!(frames > 40, "{frames} wake-ups by traffic");
    }

    /// A burst of traffic can spend the task's coop budget just before `tick` polls its timer,
    /// which then answers Pending without taking the waker. If the session goes idle right
    /// after, only the timer can wake it: the ping must still come on time.
    #[tokio::test(start_paused = true)]
    async fn pings_on_time_after_a_burst_spent_the_task_budget() {
        let mut ka = KeepAlive::new(Duration::from_secs(10), Duration::from_secs(3));
        let start = Instant::now();
        {
            let mut tick = std::pin::pin!(ka.tick());
            poll_fn(|cx| {
                while tokio::task::coop::has_budget_remaining() {
                    let _ = std::pin::pin!(tokio::task::consume_budget()).poll(cx);
                }
                assert!(tick.as_mut().poll(cx).is_pending());
                Poll::Ready(())
            })
            .await;
        }
        let tick = tokio::time::timeout(Duration::from_secs(60), ka.tick()).await;
        assert_eq!(
            (tick, start.elapsed()),
            (Ok(Tick::SendPing), Duration::from_secs(10))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn any_frame_keeps_the_peer_alive() {
        let mut ka = KeepAlive::new(Duration::from_secs(10), Duration::from_secs(3));
        assert_eq!(ka.tick().await, Tick::SendPing);
        ka.seen();
        let start = Instant::now();
        assert_eq!(ka.tick().await, Tick::SendPing);
        assert_eq!(start.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn interval_shorter_than_timeout_still_times_out() {
        let mut ka = KeepAlive::new(Duration::from_millis(200), Duration::from_millis(300));
        let start = Instant::now();
        assert_eq!(ka.tick().await, Tick::SendPing);
        assert_eq!(ka.tick().await, Tick::SendPing);
        assert_eq!(ka.tick().await, Tick::TimedOut);
        assert_eq!(start.elapsed(), Duration::from_millis(500));
    }

    #[tokio::test(start_paused = true)]
    async fn zero_interval_never_ticks() {
        let mut ka = KeepAlive::new(Duration::ZERO, Duration::from_secs(3));
        let r = tokio::time::timeout(Duration::from_secs(3600), ka.tick()).await;
        assert!(r.is_err());
    }
}
