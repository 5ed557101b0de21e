//! Rate limits on the way in: token buckets per principal (an API key, a platform user),
//! refusing what is over the limit (the egress limiter, by contrast, delays).
//!
//! Each bucket is GCRA ("virtual scheduling"): `tat` is the theoretical arrival time of the
//! next request; one is admitted while `tat - now <= (burst - 1) * interval`, and moves `tat` on
//! by `interval`. Memory is bounded by the principals active within the last minute: full
//! buckets are swept out (they are indistinguishable from new ones).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// `[limits]`: per-user rate limits on chat platforms (Telegram, Feishu).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Most messages per minute from one user of one platform account (token bucket, burst of
    /// the same size). Over it, messages are not answered and the user gets one short "slow
    /// down" reply per minute. 0 = no limit. Default: 20.
    pub user_per_minute: u32,
    /// The reply sent (at most once a minute per user) when a user is over the limit.
    pub slow_down_reply: String,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self { user_per_minute: 20, slow_down_reply: "You are sending messages too fast; please wait a minute.".into() }
    }
}

/// The window of "at most one notice per window".
const WINDOW: Duration = Duration::from_secs(60);

/// A limiter's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    Yes,
    /// Over the limit: try again after `retry_after`. `notify` is true for the first refusal
    /// of this principal within a minute (tell the user once, not every time).
    No {
        retry_after: Duration,
        notify: bool,
    },
}

struct Bucket {
    /// Theoretical arrival time of the next request.
    tat: Instant,
    /// When the principal was last told to slow down.
    notified: Option<Instant>,
}

/// Token buckets of `per_minute` requests a minute (burst: the same number), by principal.
pub struct RateLimiter<K> {
    interval: Duration,
    tolerance: Duration,
    buckets: Mutex<(HashMap<K, Bucket>, Instant)>,
}

impl<K: Hash + Eq + Clone> RateLimiter<K> {
    /// `per_minute` must be at least 1.
    pub fn per_minute(per_minute: u32) -> Self {
        let per_minute = per_minute.max(1);
        let interval = WINDOW / per_minute;
        Self { interval, tolerance: interval * (per_minute - 1), buckets: Mutex::new((HashMap::new(), Instant::now())) }
    }

    /// Takes one token for `key` at `now`, or says how long to wait.
    pub fn check(&self, key: &K, now: Instant) -> Admit {
        let mut guard = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let (buckets, last_sweep) = &mut *guard;
        if now.saturating_duration_since(*last_sweep) >= WINDOW {
            buckets.retain(|_, b| b.tat > now || b.notified.is_some_and(|n| now.saturating_duration_since(n) < WINDOW));
            *last_sweep = now;
        }
        let b = buckets.entry(key.clone()).or_insert(Bucket { tat: now, notified: None });
        let tat = b.tat.max(now);
        let ahead = tat.saturating_duration_since(now);
        if ahead <= self.tolerance {
            b.tat = tat + self.interval;
            return Admit::Yes;
        }
        let notify = b.notified.is_none_or(|n| now.saturating_duration_since(n) >= WINDOW);
        if notify {
            b.notified = Some(now);
        }
        Admit::No { retry_after: ahead - self.tolerance, notify }
    }

    /// Principals tracked (bounded by those active within the last minute).
    pub fn tracked(&self) -> usize {
        self.buckets.lock().unwrap_or_else(|e| e.into_inner()).0.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_sustained_rate_with_one_notice_a_minute() {
        let l = RateLimiter::per_minute(3);
        let t0 = Instant::now();
        assert_eq!((0..3).map(|_| l.check(&"u", t0)).filter(|a| *a == Admit::Yes).count(), 3);
        assert_eq!(l.check(&"u", t0), Admit::No { retry_after: Duration::from_secs(20), notify: true });
        assert_eq!(l.check(&"u", t0 + Duration::from_secs(5)), Admit::No { retry_after: Duration::from_secs(15), notify: false });
        assert_eq!(l.check(&"u", t0 + Duration::from_secs(20)), Admit::Yes, "one token back after 20 s");
        assert_eq!(l.check(&"other", t0), Admit::Yes, "principals are independent");
        assert!(matches!(l.check(&"u", t0 + Duration::from_secs(21)), Admit::No { notify: false, .. }));
        assert!(matches!(l.check(&"u", t0 + Duration::from_secs(61)), Admit::Yes));
    }

    #[test]
    fn idle_principals_are_forgotten() {
        let l = RateLimiter::per_minute(60);
        let t0 = Instant::now();
        for i in 0..1000 {
            l.check(&i, t0);
        }
        assert_eq!(l.tracked(), 1000);
        l.check(&5000, t0 + Duration::from_secs(120));
        assert_eq!(l.tracked(), 1);
    }
}
