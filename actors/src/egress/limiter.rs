//! Client-side send limits, so a bot stays under its platform's flood control instead of
//! collecting 429s. The defaults are Telegram's (about 1 message/s per chat, 20 messages/minute
//! per group, 30 messages/s per bot overall); [`Limits::feishu`] has Feishu's. The limiter is
//! generic over the platform's chat id type (`i64` on Telegram, `oc_…` strings on Feishu).
//!
//! Each limit is a token bucket implemented as GCRA ("virtual scheduling"): a bucket stores the
//! theoretical arrival time `tat` of the next message; a message may go at
//! `max(now, tat - (burst - 1) * interval)` and then pushes `tat` to `max(tat, send_time) +
//! interval`. Over any window `W` a bucket lets through at most about `burst + W / interval`
//! messages, so the defaults pick `burst` and `interval` such that this stays within
//! Telegram's numbers. The logic is pure: callers pass `now`, tests use synthetic instants.
//!
//! Edits (`editMessageText`) should go through the limiter too; whether Telegram counts them
//! against the same limits is unconfirmed, so counting them is the safe choice.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// One token bucket's parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Messages that may go back to back after an idle period (at least 1).
    pub burst: u32,
    /// Sustained spacing between messages once the burst is used.
    pub interval: Duration,
}

impl Rate {
    /// How far ahead of `tat` a message may be sent: `(burst - 1) * interval`.
    fn tolerance(&self) -> Duration {
        self.interval.saturating_mul(self.burst.max(1) - 1)
    }
}

/// All limits the [`SendLimiter`] enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Every chat: default burst 3, then 1 message/s.
    pub per_chat: Rate,
    /// Groups and supergroups additionally: default burst 4, then one per 3.75 s, i.e. at most
    /// 4 + 16 = 20 in any minute.
    pub per_group: Rate,
    /// The whole bot: default burst 10, then one per 50 ms, i.e. at most 10 + 20 = 30 in any
    /// second.
    pub global: Rate,
    /// How often idle per-chat buckets are swept out of memory. Eviction only drops buckets
    /// that are full again (indistinguishable from new), so it never changes behaviour.
    pub sweep_every: Duration,
}

impl Limits {
    /// Feishu allows about 5 messages/s per chat and 50/s per app.
    pub fn feishu() -> Self {
        Limits {
            per_chat: Rate { burst: 5, interval: Duration::from_millis(200) },
            per_group: Rate { burst: 5, interval: Duration::from_millis(200) },
            global: Rate { burst: 50, interval: Duration::from_millis(20) },
            ..Limits::default()
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            per_chat: Rate { burst: 3, interval: Duration::from_secs(1) },
            per_group: Rate { burst: 4, interval: Duration::from_millis(3_750) },
            global: Rate { burst: 10, interval: Duration::from_millis(50) },
            sweep_every: Duration::from_secs(60),
        }
    }
}

/// The per-chat state: theoretical arrival times of the chat and (for groups) group buckets.
#[derive(Debug, Clone, Copy)]
struct ChatBuckets {
    /// `tat` of the per-chat bucket.
    chat: Instant,
    /// `tat` of the per-group bucket; `None` until the chat is used as a group.
    group: Option<Instant>,
}

/// Reserves send slots against all limits. Memory is bounded by the number of chats active
/// within the last few bucket intervals.
#[derive(Debug)]
pub struct SendLimiter<K = i64> {
    /// The configured limits.
    limits: Limits,
    /// `tat` of the bot-wide bucket; `None` before the first send.
    global: Option<Instant>,
    /// Buckets of chats that sent recently.
    chats: HashMap<K, ChatBuckets>,
    /// When idle buckets were last swept.
    last_sweep: Option<Instant>,
}

impl<K: Hash + Eq> SendLimiter<K> {
    /// A limiter with no history.
    pub fn new(limits: Limits) -> Self {
        Self { limits, global: None, chats: HashMap::new(), last_sweep: None }
    }

    /// Reserves the next slot for a message to `chat_id` and returns how long to wait before
    /// sending it (zero: send now). The slot is taken even if the caller later gives up.
    /// `is_group` applies the per-group limit in addition to the per-chat one.
    pub fn reserve(&mut self, chat_id: K, is_group: bool, now: Instant) -> Duration {
        self.sweep(now);
        let limits = self.limits;
        let buckets = self.chats.entry(chat_id).or_insert(ChatBuckets { chat: now, group: None });
        if is_group && buckets.group.is_none() {
            buckets.group = Some(now);
        }
        let global_tat = self.global.unwrap_or(now);

        let mut send_at = now;
        send_at = send_at.max(earliest(global_tat, limits.global, now));
        send_at = send_at.max(earliest(buckets.chat, limits.per_chat, now));
        if let (true, Some(tat)) = (is_group, buckets.group) {
            send_at = send_at.max(earliest(tat, limits.per_group, now));
        }

        self.global = Some(advance(global_tat, send_at, limits.global));
        buckets.chat = advance(buckets.chat, send_at, limits.per_chat);
        if is_group {
            buckets.group = buckets.group.map(|tat| advance(tat, send_at, limits.per_group));
        }
        send_at.saturating_duration_since(now)
    }

    /// Number of chats currently tracked.
    #[cfg(test)]
    fn tracked_chats(&self) -> usize {
        self.chats.len()
    }

    /// Drops the buckets of chats whose buckets are all full again, at most once per
    /// `sweep_every`.
    fn sweep(&mut self, now: Instant) {
        match self.last_sweep {
            Some(last) if now.saturating_duration_since(last) < self.limits.sweep_every => return,
            _ => {}
        }
        self.last_sweep = Some(now);
        self.chats.retain(|_, b| b.chat > now || b.group.is_some_and(|g| g > now));
    }
}

/// Earliest time a message may go through a bucket with theoretical arrival time `tat`.
fn earliest(tat: Instant, rate: Rate, now: Instant) -> Instant {
    tat.checked_sub(rate.tolerance()).map_or(now, |t| t.max(now))
}

/// The bucket's `tat` after a message sent at `send_at`.
fn advance(tat: Instant, send_at: Instant, rate: Rate) -> Instant {
    let base = tat.max(send_at);
    base.checked_add(rate.interval).unwrap_or(base)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Sends `count` messages as fast as the limiter allows and returns their send times
    /// relative to `t0`.
    fn drain(l: &mut SendLimiter, chat: i64, group: bool, t0: Instant, count: usize) -> Vec<Duration> {
        (0..count).map(|_| l.reserve(chat, group, t0)).collect()
    }

    #[test]
    fn private_chat_bursts_then_one_per_second() {
        let mut l = SendLimiter::new(Limits::default());
        let t0 = Instant::now();
        assert_eq!(drain(&mut l, 1, false, t0, 5), vec![ms(0), ms(0), ms(0), ms(1000), ms(2000)]);
        // After waiting, the bucket refills.
        let later = t0 + Duration::from_secs(60);
        assert_eq!(l.reserve(1, false, later), ms(0));
    }

    #[test]
    fn chats_are_independent_but_share_the_global_limit() {
        let mut l = SendLimiter::new(Limits::default());
        let t0 = Instant::now();
        let waits: Vec<Duration> = (0..40).map(|chat| l.reserve(chat, false, t0)).collect();
        assert!(waits[..10].iter().all(|w| w.is_zero()));
        assert_eq!(waits[10], ms(50));
        assert_eq!(waits[39], ms(50 * 30));
        // At most 30 messages fall inside any one-second window.
        let in_first_second = waits.iter().filter(|w| **w < Duration::from_secs(1)).count();
        assert_eq!(in_first_second, 29);
        assert!(in_first_second <= 30);
    }

    #[test]
    fn groups_stay_under_twenty_per_minute() {
        let mut l = SendLimiter::new(Limits::default());
        let t0 = Instant::now();
        let waits = drain(&mut l, -100, true, t0, 60);
        for start in 0..waits.len() {
            let window_end = waits[start] + Duration::from_secs(60);
            let n = waits[start..].iter().filter(|w| **w < window_end).count();
            assert!(n <= 20, "{n} messages within a minute starting at {:?}", waits[start]);
        }
        // The same chat id used as a private chat is not subject to the group limit.
        let mut l = SendLimiter::new(Limits::default());
        assert_eq!(drain(&mut l, 5, false, t0, 21)[20], Duration::from_secs(18));
    }

    #[test]
    fn waits_account_for_elapsed_time() {
        let mut l = SendLimiter::new(Limits::default());
        let t0 = Instant::now();
        drain(&mut l, 1, false, t0, 3);
        assert_eq!(l.reserve(1, false, t0 + ms(400)), ms(600));
        assert_eq!(l.reserve(1, false, t0 + ms(2500)), ms(0));
        // Time going backwards does not panic and never grants an earlier slot.
        assert_eq!(l.reserve(1, false, t0), Duration::from_secs(3));
    }

    #[test]
    fn idle_buckets_are_evicted() {
        let global = Rate { burst: 1_000_000, interval: Duration::from_nanos(1) };
        let limits = Limits { sweep_every: Duration::from_secs(10), global, ..Limits::default() };
        let mut l = SendLimiter::new(limits);
        let t0 = Instant::now();
        for chat in 0..1000 {
            l.reserve(chat, chat % 2 == 0, t0);
        }
        assert_eq!(l.tracked_chats(), 1000);
        // Group buckets take ~3.75 s to refill; all are full after 11 s.
        l.reserve(5000, false, t0 + Duration::from_secs(11));
        assert_eq!(l.tracked_chats(), 1);
        // A busy chat is kept.
        drain(&mut l, 7, true, t0 + Duration::from_secs(11), 10);
        l.reserve(8, false, t0 + Duration::from_secs(22));
        assert_eq!(l.tracked_chats(), 2);
    }

    #[test]
    fn string_chat_ids_work_the_same() {
        let mut l: SendLimiter<String> = SendLimiter::new(Limits::feishu());
        let t0 = Instant::now();
        let waits: Vec<Duration> = (0..7).map(|_| l.reserve("oc_1".to_string(), false, t0)).collect();
        assert_eq!(waits, vec![ms(0), ms(0), ms(0), ms(0), ms(0), ms(200), ms(400)]);
        assert_eq!(l.reserve("oc_2".to_string(), false, t0), ms(0));
    }

    #[test]
    fn degenerate_rates_do_not_panic() {
        let zero = Rate { burst: 0, interval: Duration::ZERO };
        let huge = Rate { burst: u32::MAX, interval: Duration::MAX };
        let mut l = SendLimiter::new(Limits { per_chat: zero, per_group: huge, global: zero, sweep_every: Duration::ZERO });
        let t0 = Instant::now();
        assert_eq!(l.reserve(1, false, t0), ms(0));
        assert_eq!(l.reserve(1, true, t0), ms(0));
        assert_eq!(l.reserve(1, true, t0), ms(0));
    }
}
