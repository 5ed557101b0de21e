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
    /// Whether replies are streamed (sent early, then edited as text arrives).
    fn streams(&self) -> bool {
        false
    }
    /// How often a streamed message may be edited.
    fn stream_interval(&self) -> Duration {
        Duration::from_secs(1)
    }
    /// Streaming: posts the first version of a reply (`handle` is `None`) or edits it to `text`
    /// (`handle` is what the first call returned). `text` fits one message.
    async fn stream_update(&self, _route: &Value, _handle: Option<&Value>, _text: &str) -> Result<Value, SendError> {
        Err(SendError::Permanent("this platform does not stream".into()))
    }
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
    /// Stream a reply as it is generated: text deltas arrive on `deltas`; when it closes,
    /// `done` says whether generation succeeded (the final text is then sent in full).
    Stream {
        route: Value,
        deltas: tokio::sync::mpsc::UnboundedReceiver<String>,
        done: tokio::sync::oneshot::Receiver<bool>,
        inbox_id: Option<i64>,
    },
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
        if args.sender.streams() {
            if let Ok(mut s) = STREAMING.write() {
                s.insert(egress_name(args.sender.platform(), args.sender.account()));
            }
        }
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
                let span = tracing::info_span!("egress", platform = sender.platform(), account = %sender.account(), inbox_id = inbox_id.unwrap_or(0));
                tokio::spawn(tracing::Instrument::instrument(
                    async move {
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
                    },
                    span,
                ));
            }
            EgressMsg::Stream { route, deltas, done, inbox_id } => {
                let (sender, store, max_attempts) = (state.sender.clone(), state.store.clone(), state.max_attempts);
                let span = tracing::info_span!("egress", platform = sender.platform(), account = %sender.account(), inbox_id = inbox_id.unwrap_or(0), stream = true);
                tokio::spawn(tracing::Instrument::instrument(
                    stream_reply(sender, store, route, deltas, done, inbox_id, max_attempts),
                    span,
                ));
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

/// Streams one reply: the first text is posted, then the message is edited at most every
/// `stream_interval` while text arrives; at the end it is edited to the final text's first
/// chunk and any further chunks follow as new messages. Edits that fail are skipped (the next
/// one carries all the text); the final edit is retried like a send.
async fn stream_reply(
    sender: Arc<dyn PlatformSender>,
    store: Arc<dyn Store>,
    route: Value,
    mut deltas: tokio::sync::mpsc::UnboundedReceiver<String>,
    done: tokio::sync::oneshot::Receiver<bool>,
    inbox_id: Option<i64>,
    max_attempts: u32,
) {
    let (platform, account) = (sender.platform(), sender.account().to_string());
    let interval = sender.stream_interval();
    let mut text = String::new();
    let mut shown = String::new();
    let mut handle: Option<Value> = None;
    let mut last_edit = Instant::now() - interval;
    loop {
        let next = tokio::time::timeout(interval, deltas.recv()).await;
        match next {
            Ok(Some(d)) => text.push_str(&d),
            Ok(None) => break,
            Err(_) => {}
        }
        if text.trim().is_empty() || text == shown || last_edit.elapsed() < interval {
            continue;
        }
        // While streaming, show the text as long as it fits one message; past that, the
        // message waits for the final split (so it never shrinks mid-stream).
        let mut chunks = sender.chunks(&text);
        if chunks.len() != 1 {
            continue;
        }
        let first = chunks.remove(0);
        if first == shown {
            continue;
        }
        let wait = sender.reserve(&route);
        tokio::time::sleep(wait).await;
        let started = Instant::now();
        let r = sender.stream_update(&route, handle.as_ref(), &first).await;
        telemetry::egress_send(platform, &account, outcome(&r.as_ref().map(|_| ()).map_err(Clone::clone)), started.elapsed());
        match r {
            Ok(h) => {
                handle.get_or_insert(h);
                shown = first;
            }
            Err(e) => tracing::debug!(platform, error = ?e, "A streaming update failed; the next one carries all the text."),
        }
        last_edit = Instant::now();
    }
    let succeeded = done.await.unwrap_or(false);
    if !succeeded {
        // The session sends the apology; leave what was streamed.
        return;
    }
    let chunks = sender.chunks(&text);
    let mut failure = None;
    for (i, chunk) in chunks.iter().enumerate() {
        let key = format!("sb-{}-{i}", inbox_id.unwrap_or_default());
        let result = if i == 0 {
            if *chunk == shown && handle.is_some() {
                Ok(())
            } else {
                let mut res = Err("no attempt".to_string());
                // The final update keeps the same pace as the streaming ones.
                tokio::time::sleep_until((last_edit + interval).into()).await;
                for _ in 0..max_attempts {
                    tokio::time::sleep(sender.reserve(&route)).await;
                    match sender.stream_update(&route, handle.as_ref(), chunk).await {
                        Ok(h) => {
                            handle.get_or_insert(h);
                            res = Ok(());
                            break;
                        }
                        Err(SendError::RetryAfter(d)) => tokio::time::sleep(d).await,
                        Err(SendError::Transient(e)) => res = Err(e),
                        Err(SendError::Permanent(e)) => {
                            res = Err(e);
                            break;
                        }
                    }
                }
                res
            }
        } else {
            tokio::time::sleep(sender.reserve(&route)).await;
            deliver(&*sender, &route, chunk, &key, false, max_attempts).await
        };
        if let Err(e) = result {
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
}

/// Whether the platform account streams replies.
pub fn streams(platform: &str, account: &str) -> bool {
    STREAMING.read().map(|s| s.contains(&egress_name(platform, account))).unwrap_or(false)
}

/// Egress actors that stream, registered when they start.
static STREAMING: std::sync::LazyLock<std::sync::RwLock<std::collections::HashSet<String>>> = std::sync::LazyLock::new(Default::default);

/// Starts streaming a reply; returns the delta sender and the completion signal, or `None` when
/// the account does not stream.
pub fn start_stream(
    platform: &str,
    account: &str,
    route: Value,
    inbox_id: Option<i64>,
) -> Option<(tokio::sync::mpsc::UnboundedSender<String>, tokio::sync::oneshot::Sender<bool>)> {
    if !streams(platform, account) {
        return None;
    }
    let e = ActorRef::<EgressMsg>::where_is(egress_name(platform, account))?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    e.cast(EgressMsg::Stream { route, deltas: rx, done: done_rx, inbox_id }).ok()?;
    Some((tx, done_tx))
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
