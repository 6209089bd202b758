//! Admission limits for WebSocket sessions. The counts live in the server's state, not in a
//! config snapshot, so a reload changes the limits without forgetting who is connected. The lock
//! is taken once per upgrade and once per session end, never per message.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::config::Limits;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Global or per-address session limit: 503.
    Busy,
    /// Per-address rate of new sessions: 429.
    Rate,
}

#[derive(Default)]
pub struct Limiter {
    inner: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    open: usize,
    per_ip: HashMap<IpAddr, PerIp>,
    admitted: u64,
}

struct PerIp {
    open: usize,
    bucket: TokenBucket,
}

impl Limiter {
    /// Admits a new session from `ip` or says why not. The permit gives the slot back on drop.
    pub fn admit(self: &Arc<Self>, ip: IpAddr, limits: &Limits) -> Result<Permit, Refusal> {
        let mut c = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if limits.max_connections > 0 && c.open >= limits.max_connections {
            return Err(Refusal::Busy);
        }
        c.admitted += 1;
        if c.admitted % 1024 == 0 {
            // Forget idle addresses now and then, so the map stays the size of the active set.
            let now = Instant::now();
            c.per_ip
                .retain(|_, e| e.open > 0 || now.duration_since(e.bucket.last).as_secs() < 60);
        }
        let entry = c.per_ip.entry(ip).or_insert_with(|| PerIp {
            open: 0,
            bucket: TokenBucket::new(limits.connection_rate_per_ip),
        });
        if limits.max_connections_per_ip > 0 && entry.open >= limits.max_connections_per_ip {
            return Err(Refusal::Busy);
        }
        if limits.connection_rate_per_ip > 0 && !entry.bucket.take(limits.connection_rate_per_ip) {
            return Err(Refusal::Rate);
        }
        entry.open += 1;
        c.open += 1;
        Ok(Permit {
            limiter: self.clone(),
            ip,
        })
    }

    pub fn open(&self) -> usize {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).open
    }
}

/// One admitted session.
pub struct Permit {
    limiter: Arc<Limiter>,
    ip: IpAddr,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut c = self.limiter.inner.lock().unwrap_or_else(|p| p.into_inner());
        c.open = c.open.saturating_sub(1);
        if let Some(e) = c.per_ip.get_mut(&self.ip) {
            e.open = e.open.saturating_sub(1);
        }
    }
}

/// A session's `limits.message_rate`: the messages per second its client may send, with one
/// second's worth as burst. Echo and relay both count their client's messages with it.
pub struct MessageRate {
    bucket: TokenBucket,
    rate: u32,
}

impl MessageRate {
    /// `None` for 0, which means no limit.
    pub fn new(rate: u32) -> Option<Self> {
        (rate > 0).then(|| Self {
            bucket: TokenBucket::new(rate),
            rate,
        })
    }

    /// Takes one message; false when it is one too many.
    pub fn allow(&mut self) -> bool {
        self.bucket.take(self.rate)
    }
}

/// A token bucket refilled lazily when it is used, so idle sessions cost no timer.
pub struct TokenBucket {
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// Starts full: one second's worth of burst.
    pub fn new(rate: u32) -> Self {
        Self {
            tokens: rate as f64,
            last: Instant::now(),
        }
    }

    /// Takes one token at `rate` per second; false when the bucket is empty.
    pub fn take(&mut self, rate: u32) -> bool {
        let now = Instant::now();
        let rate = rate as f64;
        self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * rate).min(rate);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));

    #[test]
    fn global_and_per_ip_limits() {
        let l = Arc::new(Limiter::default());
        let limits = Limits {
            max_connections: 3,
            max_connections_per_ip: 2,
            ..Limits::default()
        };
        let a1 = l.admit(A, &limits).unwrap();
        let _a2 = l.admit(A, &limits).unwrap();
        assert_eq!(l.admit(A, &limits).err(), Some(Refusal::Busy));
        let _b1 = l.admit(B, &limits).unwrap();
        assert_eq!(
            l.admit(B, &limits).err(),
            Some(Refusal::Busy),
            "global limit"
        );
        drop(a1);
        assert!(l.admit(B, &limits).is_ok());
    }

    #[test]
    fn rate_per_ip() {
        let l = Arc::new(Limiter::default());
        let limits = Limits {
            connection_rate_per_ip: 2,
            ..Limits::default()
        };
        assert!(l.admit(A, &limits).is_ok());
        assert!(l.admit(A, &limits).is_ok());
        assert_eq!(l.admit(A, &limits).err(), Some(Refusal::Rate));
        assert!(l.admit(B, &limits).is_ok());
        assert_eq!(l.open(), 0, "permits dropped at once give their slots back");
    }
}
