//! Every metric the daemon exports, named in one place. Functions here record a metric (and
//! where useful a log line) so call sites never spell a metric name.
//!
//! Names follow `switchboard_<area>_<what>` with `_total`, `_seconds` or `_bytes` suffixes and
//! bounded labels only (platform, route, outcome, reason — never a chat or user id).

use std::time::Duration;

use metrics::{Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};

use crate::message::Platform;
use crate::names;

/// Declares a bounded label enum: its variants, their label values, and `ALL`.
macro_rules! label_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident => $label:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name { $($(#[$vdoc])* $variant),+ }

        impl $name {
            /// Every value, for pre-registering series at 0.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The metric label value.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $label),+ }
            }
        }
    };
}

label_enum!(
    /// How a chat message ended (`switchboard_messages_answered_total{outcome}`).
    AnswerOutcome {
        /// The model (or a command) answered.
        Ok => "ok",
        /// An error answer that was not retried.
        Failed => "failed",
        /// Refused because the inference queue was full.
        Busy => "busy",
        /// Every attempt failed: dead-lettered, the user got the apology.
        Apology => "apology",
    }
);

label_enum!(
    /// How one send call to a platform ended (`switchboard_egress_sends_total{outcome}`).
    SendOutcome {
        Ok => "ok",
        RateLimited => "rate_limited",
        TransientError => "transient_error",
        PermanentError => "permanent_error",
    }
);

label_enum!(
    /// What happened to a platform update (`switchboard_platform_updates_total{outcome}`).
    UpdateOutcome {
        /// Stored in the inbox and handed to its conversation.
        Handled => "handled",
        /// Not for the bot.
        Ignored => "ignored",
        /// A re-delivery of one already stored.
        Duplicate => "duplicate",
        /// The chat is not in `allowed_chats`.
        NotAllowed => "not_allowed",
        /// Does not parse.
        Malformed => "malformed",
        /// A Telegram group became a supergroup.
        Migrated => "migrated",
        /// The sender is over `limits.user_per_minute`; not answered.
        RateLimited => "rate_limited",
    }
);

pub const HTTP_REQUESTS: &str = "switchboard_http_requests_total";
pub const HTTP_DURATION: &str = "switchboard_http_request_duration_seconds";
pub const REPLY_LATENCY: &str = "switchboard_reply_latency_seconds";
pub const MESSAGES_RECEIVED: &str = "switchboard_messages_received_total";
pub const MESSAGES_ANSWERED: &str = "switchboard_messages_answered_total";
pub const SESSIONS_ACTIVE: &str = "switchboard_sessions_active";
pub const ACTOR_RESTARTS: &str = "switchboard_actor_restarts_total";
pub const INFERENCE_DURATION: &str = "switchboard_inference_duration_seconds";
pub const INFERENCE_TOKENS: &str = "switchboard_inference_tokens_total";
pub const INFERENCE_QUEUE_DEPTH: &str = "switchboard_inference_queue_depth";
pub const INFERENCE_QUEUE_WAIT: &str = "switchboard_inference_queue_wait_seconds";
pub const INFERENCE_BATCH_SIZE: &str = "switchboard_inference_batch_size";
pub const INFERENCE_STEP: &str = "switchboard_inference_step_seconds";
pub const INFERENCE_TTFT: &str = "switchboard_inference_time_to_first_token_seconds";
pub const INFERENCE_REJECTED: &str = "switchboard_inference_rejected_total";
pub const INFERENCE_WORKERS_READY: &str = "switchboard_inference_workers_ready";
pub const INBOX_DEPTH: &str = "switchboard_inbox_depth";
pub const INBOX_RETRIES: &str = "switchboard_inbox_retries_total";
pub const DEAD_LETTERS: &str = "switchboard_dead_letters";
pub const INBOX_DUPLICATES: &str = "switchboard_inbox_duplicates_total";
pub const ADMIN_REQUESTS: &str = "switchboard_admin_requests_total";
pub const INFERENCE_QUEUE_CAPACITY: &str = "switchboard_inference_queue_capacity";
pub const SUPERVISOR_ESCALATIONS: &str = "switchboard_supervisor_escalations_total";
pub const PLATFORM_UPDATES: &str = "switchboard_platform_updates_total";
pub const PLATFORM_REJECTED: &str = "switchboard_platform_rejected_total";
pub const EGRESS_SENDS: &str = "switchboard_egress_sends_total";
pub const EGRESS_RATE_LIMITED: &str = "switchboard_egress_rate_limited_total";
pub const EGRESS_SEND_DURATION: &str = "switchboard_egress_send_duration_seconds";
pub const FEISHU_TOKEN_REFRESHES: &str = "switchboard_feishu_token_refreshes_total";
pub const MAILBOX_DEPTH: &str = "switchboard_actor_mailbox_depth";
pub const AUTH_FAILURES: &str = "switchboard_auth_failures_total";
pub const RATE_LIMITED: &str = "switchboard_rate_limited_total";
pub const INBOX_SWEPT: &str = "switchboard_inbox_swept_total";
pub const BUILD_INFO: &str = "switchboard_build_info";
pub const UPTIME: &str = "switchboard_uptime_seconds";

/// Histogram buckets for latencies, from 5 ms to 60 s (chat replies on CPU take seconds).
pub const LATENCY_BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0];
/// Histogram buckets for batch sizes.
pub const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0];
/// Buckets for one model step (milliseconds to seconds).
pub const STEP_BUCKETS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];

/// Registers help texts; call once after the recorder is installed.
pub fn describe() {
    describe_counter!(HTTP_REQUESTS, "HTTP requests by route and status code.");
    describe_histogram!(HTTP_DURATION, Unit::Seconds, "HTTP request duration by route.");
    describe_histogram!(REPLY_LATENCY, Unit::Seconds, "From a message accepted to its reply ready, by platform.");
    describe_counter!(MESSAGES_RECEIVED, "Chat messages accepted, by platform.");
    describe_counter!(MESSAGES_ANSWERED, "Chat messages answered, by platform and outcome (ok, failed, busy).");
    describe_gauge!(SESSIONS_ACTIVE, "Conversation (session) actors alive.");
    describe_counter!(ACTOR_RESTARTS, "Restarts of supervised actors, by actor.");
    describe_histogram!(INFERENCE_DURATION, Unit::Seconds, "Time from a request's submission to its last token.");
    describe_counter!(INFERENCE_TOKENS, "Tokens processed, by kind (prompt, generated).");
    describe_gauge!(INFERENCE_QUEUE_DEPTH, "Requests waiting for an inference worker.");
    describe_histogram!(INFERENCE_QUEUE_WAIT, Unit::Seconds, "Time requests waited in the inference queue.");
    describe_histogram!(INFERENCE_BATCH_SIZE, "Sequences per model step, by phase (prefill, decode).");
    describe_histogram!(INFERENCE_STEP, Unit::Seconds, "Duration of one model step, by phase.");
    describe_histogram!(INFERENCE_TTFT, Unit::Seconds, "Time from submission to the first generated token.");
    describe_counter!(INFERENCE_REJECTED, "Inference requests refused or dropped, by reason.");
    describe_gauge!(INFERENCE_WORKERS_READY, "Inference workers registered with the batcher.");
    describe_gauge!(INBOX_DEPTH, "Accepted messages not yet answered (durable inbox).");
    describe_counter!(INBOX_RETRIES, "Retries of messages whose answer failed.");
    describe_gauge!(DEAD_LETTERS, "Dead letters waiting for an operator (not replayed).");
    describe_counter!(INBOX_DUPLICATES, "Messages dropped as duplicates of one already received, by platform.");
    describe_counter!(ADMIN_REQUESTS, "Admin API requests by outcome (ok, unauthorized, forbidden, error).");
    describe_gauge!(INFERENCE_QUEUE_CAPACITY, "Configured inference queue limit (`inference.max_queue`).");
    describe_counter!(SUPERVISOR_ESCALATIONS, "Supervisors that gave up after too many restarts, by supervisor.");
    describe_counter!(
        PLATFORM_UPDATES,
        "Platform updates/events received, by platform, account, kind and outcome (handled, ignored, duplicate)."
    );
    describe_counter!(PLATFORM_REJECTED, "Webhook requests rejected, by platform, account and reason (bad_secret, bad_signature, …).");
    describe_counter!(EGRESS_SENDS, "Sends to a platform, by platform, account and outcome.");
    describe_counter!(EGRESS_RATE_LIMITED, "Sends the platform answered with a rate limit (429), by platform and account.");
    describe_histogram!(EGRESS_SEND_DURATION, Unit::Seconds, "Duration of one send call to a platform.");
    describe_counter!(FEISHU_TOKEN_REFRESHES, "Feishu tenant access token fetches, by account.");
    describe_gauge!(MAILBOX_DEPTH, "Messages waiting in the mailbox of the busiest actors (sessions.router, inference.batcher).");
    describe_counter!(AUTH_FAILURES, "Failed authentications, by surface (api, admin, webhook) and reason.");
    describe_counter!(RATE_LIMITED, "Messages and requests refused by a rate limit, by platform and reason (api_key, user).");
    describe_counter!(INBOX_SWEPT, "Stranded inbox rows (pending, held by no session) the sweeper handed back to their sessions.");
    describe_gauge!(BUILD_INFO, "Always 1; the labels carry the version.");
    describe_gauge!(UPTIME, Unit::Seconds, "Seconds since the daemon started.");
}

pub fn actor_restarted(actor: &str) {
    counter!(ACTOR_RESTARTS, "actor" => actor.to_string()).increment(1);
}

pub fn inference_step(batch: usize, took: Duration, phase: &'static str) {
    histogram!(INFERENCE_BATCH_SIZE, "phase" => phase).record(batch as f64);
    histogram!(INFERENCE_STEP, "phase" => phase).record(took.as_secs_f64());
}

pub fn tokens_generated(n: u64) {
    counter!(INFERENCE_TOKENS, "kind" => "generated").increment(n);
}

pub fn prompt_tokens(n: u64) {
    counter!(INFERENCE_TOKENS, "kind" => "prompt").increment(n);
}

pub fn time_to_first_token(d: Duration) {
    histogram!(INFERENCE_TTFT).record(d.as_secs_f64());
}

pub fn inference_done(d: Duration) {
    histogram!(INFERENCE_DURATION).record(d.as_secs_f64());
}

pub fn inference_rejected(reason: &'static str) {
    counter!(INFERENCE_REJECTED, "reason" => reason).increment(1);
}

pub fn queue_wait(d: Duration) {
    histogram!(INFERENCE_QUEUE_WAIT).record(d.as_secs_f64());
}

pub fn queue_depth(depth: usize, workers: usize) {
    gauge!(INFERENCE_QUEUE_DEPTH).set(depth as f64);
    gauge!(INFERENCE_WORKERS_READY).set(workers as f64);
}

pub fn sessions_active(n: usize) {
    gauge!(SESSIONS_ACTIVE).set(n as f64);
}

pub fn message_received(platform: Platform) {
    counter!(MESSAGES_RECEIVED, "platform" => platform.as_str()).increment(1);
}

pub fn message_answered(platform: Platform, outcome: AnswerOutcome, latency: Duration) {
    counter!(MESSAGES_ANSWERED, "platform" => platform.as_str(), "outcome" => outcome.as_str()).increment(1);
    if outcome == AnswerOutcome::Ok {
        histogram!(REPLY_LATENCY, "platform" => platform.as_str()).record(latency.as_secs_f64());
    }
}

pub fn http_request(route: &'static str, status: u16, took: Duration) {
    counter!(HTTP_REQUESTS, "route" => route, "status" => status.to_string()).increment(1);
    histogram!(HTTP_DURATION, "route" => route).record(took.as_secs_f64());
}

pub fn inbox_retry() {
    counter!(INBOX_RETRIES).increment(1);
}

pub fn inbox_gauges(depth: i64, dead_letters: i64) {
    gauge!(INBOX_DEPTH).set(depth as f64);
    gauge!(DEAD_LETTERS).set(dead_letters as f64);
}

pub fn inbox_duplicate(platform: Platform) {
    counter!(INBOX_DUPLICATES, "platform" => platform.as_str()).increment(1);
}

pub fn admin_request(outcome: &'static str) {
    counter!(ADMIN_REQUESTS, "outcome" => outcome).increment(1);
}

pub fn supervisor_escalated(supervisor: &str) {
    counter!(SUPERVISOR_ESCALATIONS, "supervisor" => supervisor.to_string()).increment(1);
}

/// Exports every counter at 0 for its known label values, so that `rate()` and alerts see the
/// first failure instead of a series that appears out of nowhere.
pub fn register_known_series(workers: usize, max_queue: usize) {
    gauge!(INFERENCE_QUEUE_CAPACITY).set(max_queue as f64);
    register_message_series(Platform::Http);
    for reason in ["busy", "timeout", "cancelled", "prompt_too_long", "worker_failed"] {
        counter!(INFERENCE_REJECTED, "reason" => reason).absolute(0);
    }
    let mut actors: Vec<String> =
        [names::INFERENCE, names::SESSIONS, names::INGRESS, names::EGRESS, names::HOUSEKEEPING, names::BATCHER, names::SESSION_LABEL]
            .map(String::from)
            .to_vec();
    actors.extend((0..workers).map(names::worker));
    for actor in actors {
        counter!(ACTOR_RESTARTS, "actor" => actor).absolute(0);
    }
    for sup in [names::ROOT, names::INFERENCE, names::INGRESS, names::EGRESS] {
        counter!(SUPERVISOR_ESCALATIONS, "supervisor" => sup).absolute(0);
    }
    counter!(INBOX_RETRIES).absolute(0);
    counter!(INBOX_SWEPT).absolute(0);
    for (surface, reason) in [("api", "missing_key"), ("api", "unknown_key"), ("admin", "unknown_token"), ("webhook", "unknown_account")] {
        counter!(AUTH_FAILURES, "surface" => surface, "reason" => reason).absolute(0);
    }
    counter!(RATE_LIMITED, "platform" => Platform::Http.as_str(), "reason" => "api_key").absolute(0);
    for platform in [Platform::Telegram, Platform::Feishu] {
        counter!(RATE_LIMITED, "platform" => platform.as_str(), "reason" => "user").absolute(0);
    }
    for outcome in ["ok", "unauthorized", "forbidden", "error"] {
        counter!(ADMIN_REQUESTS, "outcome" => outcome).absolute(0);
    }
    for kind in ["prompt", "generated"] {
        counter!(INFERENCE_TOKENS, "kind" => kind).absolute(0);
    }
}

pub fn platform_update(platform: Platform, account: &str, kind: &'static str, outcome: UpdateOutcome) {
    let (platform, outcome) = (platform.as_str(), outcome.as_str());
    counter!(PLATFORM_UPDATES, "platform" => platform, "account" => account.to_string(), "kind" => kind, "outcome" => outcome).increment(1);
}

/// A webhook request refused before anything was processed; `reason` comes from a typed
/// rejection (`bad_secret`, `bad_signature`, …).
pub fn inbox_swept(n: usize) {
    counter!(INBOX_SWEPT).increment(n as u64);
}

pub fn auth_failed(surface: &'static str, reason: &'static str) {
    counter!(AUTH_FAILURES, "surface" => surface, "reason" => reason).increment(1);
}

pub fn rate_limited(platform: Platform, reason: &'static str) {
    counter!(RATE_LIMITED, "platform" => platform.as_str(), "reason" => reason).increment(1);
}

pub fn platform_rejected(platform: Platform, account: &str, reason: &'static str) {
    counter!(PLATFORM_REJECTED, "platform" => platform.as_str(), "account" => account.to_string(), "reason" => reason).increment(1);
}

pub fn egress_send(platform: Platform, account: &str, outcome: SendOutcome, took: Duration) {
    let (platform, outcome) = (platform.as_str(), outcome.as_str());
    counter!(EGRESS_SENDS, "platform" => platform, "account" => account.to_string(), "outcome" => outcome).increment(1);
    histogram!(EGRESS_SEND_DURATION, "platform" => platform).record(took.as_secs_f64());
}

pub fn egress_rate_limited(platform: Platform, account: &str) {
    counter!(EGRESS_RATE_LIMITED, "platform" => platform.as_str(), "account" => account.to_string()).increment(1);
}

/// The Feishu token fetches of an account so far (the API client counts them).
pub fn feishu_token_refreshes(account: &str, total: u64) {
    counter!(FEISHU_TOKEN_REFRESHES, "account" => account.to_string()).absolute(total);
}

/// The per-platform message series at 0.
fn register_message_series(platform: Platform) {
    let platform = platform.as_str();
    counter!(MESSAGES_RECEIVED, "platform" => platform).absolute(0);
    counter!(INBOX_DUPLICATES, "platform" => platform).absolute(0);
    for outcome in AnswerOutcome::ALL {
        counter!(MESSAGES_ANSWERED, "platform" => platform, "outcome" => outcome.as_str()).absolute(0);
    }
}

/// Pre-registers a platform account's series at 0.
pub fn register_platform_series(platform: Platform, account: &str) {
    register_message_series(platform);
    for outcome in SendOutcome::ALL {
        counter!(EGRESS_SENDS, "platform" => platform.as_str(), "account" => account.to_string(), "outcome" => outcome.as_str())
            .absolute(0);
    }
    counter!(EGRESS_RATE_LIMITED, "platform" => platform.as_str(), "account" => account.to_string()).absolute(0);
}

pub fn mailbox_depth(actor: &'static str, depth: i64) {
    gauge!(MAILBOX_DEPTH, "actor" => actor).set(depth.max(0) as f64);
}
