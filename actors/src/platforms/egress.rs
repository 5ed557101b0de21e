//! The egress actor of one platform account: splits replies, waits for the rate limiter,
//! sends with retries, and marks the inbox entry done once the platform has the reply.
//!
//! Platform specifics live behind [`PlatformSender`]; the scheduling and retry policy is here,
//! once for every platform.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde_json::Value;

use crate::store::{InboxStatus, Store};
use crate::telemetry;

/// Why a send failed.
#[derive(Debug, Clone)]
pub enum SendError {
    /// The platform asked us to wait (HTTP 429 / rate-limit code).
    RetryAfter(Duration),
    /// Worth retrying with backoff (5xx, network, timeout).
    Transient(String),
    /// Retrying cannot help (bot blocked, chat not found, bad request): logged and dropped.
    Permanent(String),
}

/// What a platform must provide to the generic egress actor.
#[async_trait]
pub trait PlatformSender: Send + Sync + 'static {
    /// `telegram`, `feishu`.
    fn platform(&self) -> &'static str;
    /// The account name from the config.
    fn account(&self) -> &str;
    /// Splits a reply into sendable chunks.
    fn chunks(&self, text: &str) -> Vec<String>;
    /// Reserves a send slot with the rate limiter; returns how long to wait before sending.
    fn reserve(&self, route: &Value) -> Duration;
    /// Sends one chunk. `key` is stable across retries of the same chunk (idempotency).
    /// `first` is true for the first chunk of a reply (which replies to the user's message).
    async fn send(&self, route: &Value, chunk: &str, key: &str, first: bool) -> Result<(), SendError>;
    /// Shows "typing…" where the platform has it.
    async fn typing(&self, _route: &Value) {}
}

/// Registered name of an egress actor.
pub fn egress_name(platform: &str, account: &str) -> String {
    format!("egress.{platform}.{account}")
}

pub struct EgressActor;

pub struct EgressArgs {
    pub sender: Arc<dyn PlatformSender>,
    pub store: Arc<dyn Store>,
    /// Attempts per chunk for transient failures.
    pub max_attempts: u32,
}

pub enum EgressMsg {
    /// Send a reply; `inbox_id` is marked done when every chunk is delivered (or failed for good).
    Reply { route: Value, text: String, inbox_id: Option<i64> },
    /// Show a typing indicator.
    Typing { route: Value },
}

pub struct EgressState {
    sender: Arc<dyn PlatformSender>,
    store: Arc<dyn Store>,
    max_attempts: u32,
}

impl Actor for EgressActor {
    type Msg = EgressMsg;
    type State = EgressState;
    type Arguments = EgressArgs;

    async fn pre_start(&self, _myself: ActorRef<EgressMsg>, args: EgressArgs) -> Result<EgressState, ActorProcessingErr> {
        Ok(EgressState { sender: args.sender, store: args.store, max_attempts: args.max_attempts.max(1) })
    }

    async fn handle(&self, _myself: ActorRef<EgressMsg>, msg: EgressMsg, state: &mut EgressState) -> Result<(), ActorProcessingErr> {
        match msg {
            EgressMsg::Reply { route, text, inbox_id } => {
                // Slots are reserved here, in arrival order, so a chat's chunks keep their order;
                // the waiting and sending happen in a task so other chats are not held up.
                let chunks = state.sender.chunks(&text);
                let mut plan = Vec::with_capacity(chunks.len());
                let now = Instant::now();
                for c in chunks {
                    plan.push((now + state.sender.reserve(&route), c));
                }
                let sender = state.sender.clone();
                let store = state.store.clone();
                let max_attempts = state.max_attempts;
                tokio::spawn(async move {
                    let key_base = inbox_id.map(|i| format!("sb-{i}")).unwrap_or_else(|| format!("sb-x{}", rand::random::<u32>()));
                    let mut failure = None;
                    for (i, (at, chunk)) in plan.into_iter().enumerate() {
                        tokio::time::sleep_until(at.into()).await;
                        if let Err(e) = deliver(&*sender, &route, &chunk, &format!("{key_base}-{i}"), i == 0, max_attempts).await {
                            failure = Some(e);
                            break;
                        }
                    }
                    if let Some(id) = inbox_id {
                        let (status, err) = match &failure {
                            None => (InboxStatus::Done, None),
                            Some(e) => (InboxStatus::Rejected, Some(e.as_str())),
                        };
                        if let Err(e) = store.inbox_finish(id, status, err).await {
                            tracing::error!(inbox_id = id, error = %e, "Could not mark an inbox entry finished.");
                        }
                    }
                });
            }
            EgressMsg::Typing { route } => {
                let sender = state.sender.clone();
                tokio::spawn(async move { sender.typing(&route).await });
            }
        }
        Ok(())
    }
}

/// Sends one chunk, honouring retry-after and retrying transient errors with backoff.
async fn deliver(sender: &dyn PlatformSender, route: &Value, chunk: &str, key: &str, first: bool, max_attempts: u32) -> Result<(), String> {
    let (platform, account) = (sender.platform(), sender.account().to_string());
    let mut backoff = Duration::from_millis(250);
    for attempt in 1..=max_attempts {
        let started = Instant::now();
        let result = sender.send(route, chunk, key, first).await;
        telemetry::egress_send(platform, &account, outcome(&result), started.elapsed());
        match result {
            Ok(()) => return Ok(()),
            Err(SendError::RetryAfter(d)) => {
                telemetry::egress_rate_limited(platform, &account);
                tracing::warn!(platform, account = %account, retry_after_ms = d.as_millis() as u64, "The platform rate-limited a send; waiting as asked.");
                tokio::time::sleep(d.min(Duration::from_secs(300))).await;
            }
            Err(SendError::Transient(e)) if attempt < max_attempts => {
                tracing::warn!(platform, account = %account, attempt, error = %e, "A send failed; retrying after a backoff.");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
            Err(SendError::Transient(e)) => return Err(format!("gave up after {attempt} attempts: {e}")),
            Err(SendError::Permanent(e)) => {
                tracing::error!(platform, account = %account, error = %e, "A send failed permanently; not retrying.");
                return Err(e);
            }
        }
    }
    Err("gave up: still rate-limited".into())
}

fn outcome(r: &Result<(), SendError>) -> &'static str {
    match r {
        Ok(()) => "ok",
        Err(SendError::RetryAfter(_)) => "rate_limited",
        Err(SendError::Transient(_)) => "transient_error",
        Err(SendError::Permanent(_)) => "permanent_error",
    }
}

/// Hands a reply to the platform's egress actor; `false` if there is none (not configured).
pub fn send_reply(platform: &str, account: &str, route: Value, text: String, inbox_id: Option<i64>) -> bool {
    match ActorRef::<EgressMsg>::where_is(egress_name(platform, account)) {
        Some(e) => e.cast(EgressMsg::Reply { route, text, inbox_id }).is_ok(),
        None => false,
    }
}

pub fn send_typing(platform: &str, account: &str, route: Value) {
    if let Some(e) = ActorRef::<EgressMsg>::where_is(egress_name(platform, account)) {
        let _ = e.cast(EgressMsg::Typing { route });
    }
}
