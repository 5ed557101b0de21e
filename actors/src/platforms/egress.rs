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

/// The egress actor's arguments, kept as its state.
pub struct EgressArgs {
    pub sender: Arc<dyn PlatformSender>,
    pub store: Arc<dyn Store>,
    /// Attempts per chunk for transient failures.
    pub max_attempts: u32,
}

pub enum EgressMsg {
    /// Send a short reply that needs no model (a command's answer, an apology); `inbox_id` is
    /// marked done when every chunk is delivered (or failed for good).
    Reply { route: Value, text: String, inbox_id: Option<i64> },
    /// Show a typing indicator.
    Typing { route: Value },
    /// A model answer as it is generated: text deltas arrive on `deltas`; when it closes, `done`
    /// says whether generation succeeded. Platforms that stream show the text early and edit it;
    /// the others send the whole answer at the end.
    Answer {
        route: Value,
        deltas: tokio::sync::mpsc::UnboundedReceiver<String>,
        done: tokio::sync::oneshot::Receiver<bool>,
        inbox_id: Option<i64>,
    },
}

impl Actor for EgressActor {
    type Msg = EgressMsg;
    type State = EgressArgs;
    type Arguments = EgressArgs;

    async fn pre_start(&self, _myself: ActorRef<EgressMsg>, mut args: EgressArgs) -> Result<EgressArgs, ActorProcessingErr> {
        args.max_attempts = args.max_attempts.max(1);
        Ok(args)
    }

    async fn handle(&self, _myself: ActorRef<EgressMsg>, msg: EgressMsg, state: &mut EgressArgs) -> Result<(), ActorProcessingErr> {
        let (sender, store, max_attempts) = (state.sender.clone(), state.store.clone(), state.max_attempts);
        match msg {
            EgressMsg::Reply { route, text, inbox_id } => {
                // Slots are reserved here, in arrival order, so a chat's chunks keep their order;
                // the waiting and sending happen in a task so other chats are not held up.
                let now = Instant::now();
                let plan: Vec<(Instant, String)> = sender.chunks(&text).into_iter().map(|c| (now + sender.reserve(&route), c)).collect();
                let span = tracing::info_span!("egress", platform = sender.platform(), account = %sender.account(), inbox_id = inbox_id.unwrap_or(0));
                let task = async move {
                    let key_base = key_base(inbox_id);
                    let mut failure = None;
                    for (i, (at, chunk)) in plan.into_iter().enumerate() {
                        tokio::time::sleep_until(at.into()).await;
                        let key = format!("{key_base}-{i}");
                        if let Err(e) = with_retries(&*sender, max_attempts, || sender.send(&route, &chunk, &key, i == 0)).await {
                            failure = Some(e);
                            break;
                        }
                    }
                    finish_inbox(&*store, inbox_id, failure.as_deref()).await;
                };
                tokio::spawn(tracing::Instrument::instrument(task, span));
            }
            EgressMsg::Answer { route, deltas, done, inbox_id } => {
                let span = tracing::info_span!("egress", platform = sender.platform(), account = %sender.account(), inbox_id = inbox_id.unwrap_or(0));
                tokio::spawn(tracing::Instrument::instrument(answer(sender, store, route, deltas, done, inbox_id, max_attempts), span));
            }
            EgressMsg::Typing { route } => {
                tokio::spawn(async move { sender.typing(&route).await });
            }
        }
        Ok(())
    }
}

/// Idempotency key prefix of a reply's chunks: stable for an inbox entry across retries.
fn key_base(inbox_id: Option<i64>) -> String {
    inbox_id.map(|i| format!("sb-{i}")).unwrap_or_else(|| format!("sb-x{}", rand::random::<u32>()))
}

/// Marks the inbox entry done, or rejected with the delivery error.
async fn finish_inbox(store: &dyn Store, inbox_id: Option<i64>, failure: Option<&str>) {
    let Some(id) = inbox_id else { return };
    let status = if failure.is_some() { InboxStatus::Rejected } else { InboxStatus::Done };
    if let Err(e) = store.inbox_finish(id, status, failure).await {
        tracing::error!(inbox_id = id, error = %e, "Could not mark an inbox entry finished.");
    }
}

/// Runs one platform call, honouring retry-after and retrying transient errors with backoff;
/// every attempt is counted by outcome.
async fn with_retries<T, F, Fut>(sender: &dyn PlatformSender, max_attempts: u32, mut call: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, SendError>>,
{
    let (platform, account) = (sender.platform(), sender.account().to_string());
    let mut backoff = Duration::from_millis(250);
    for attempt in 1..=max_attempts {
        let started = Instant::now();
        let result = call().await;
        telemetry::egress_send(platform, &account, outcome(&result), started.elapsed());
        match result {
            Ok(v) => return Ok(v),
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

/// Delivers one model answer. On a streaming platform the first text is posted early and edited
/// at most every `stream_interval` while text arrives (while it fits one message, so it never
/// shrinks); failed edits are skipped, the next carries all the text. When generation is done
/// the answer is sent in full: the streamed message is edited to the first chunk (or the first
/// chunk replies to the user), further chunks follow as new messages.
async fn answer(
    sender: Arc<dyn PlatformSender>,
    store: Arc<dyn Store>,
    route: Value,
    mut deltas: tokio::sync::mpsc::UnboundedReceiver<String>,
    done: tokio::sync::oneshot::Receiver<bool>,
    inbox_id: Option<i64>,
    max_attempts: u32,
) {
    let interval = sender.stream_interval();
    let mut text = String::new();
    let mut shown = String::new();
    let mut handle: Option<Value> = None;
    let mut last_edit = Instant::now() - interval;
    loop {
        match tokio::time::timeout(interval, deltas.recv()).await {
            Ok(Some(d)) => text.push_str(&d),
            Ok(None) => break,
            Err(_) => {}
        }
        if !sender.streams() || text.trim().is_empty() || last_edit.elapsed() < interval {
            continue;
        }
        let mut chunks = sender.chunks(&text);
        if chunks.len() != 1 || chunks[0] == shown {
            continue;
        }
        let first = chunks.remove(0);
        tokio::time::sleep(sender.reserve(&route)).await;
        let started = Instant::now();
        let r = sender.stream_update(&route, handle.as_ref(), &first).await;
        telemetry::egress_send(sender.platform(), sender.account(), outcome(&r), started.elapsed());
        match r {
            Ok(h) => {
                handle.get_or_insert(h);
                shown = first;
            }
            Err(e) => tracing::debug!(error = ?e, "A streaming update failed; the next one carries all the text."),
        }
        last_edit = Instant::now();
    }
    if !done.await.unwrap_or(false) {
        // Generation failed: the session retries or apologizes; what was streamed stays.
        return;
    }
    let key_base = key_base(inbox_id);
    let mut failure = None;
    for (i, chunk) in sender.chunks(&text).iter().enumerate() {
        let result = match &handle {
            Some(_) if i == 0 && *chunk == shown => Ok(()),
            Some(h) if i == 0 => {
                // The final edit keeps the pace of the streaming ones.
                tokio::time::sleep_until((last_edit + interval).into()).await;
                tokio::time::sleep(sender.reserve(&route)).await;
                with_retries(&*sender, max_attempts, || sender.stream_update(&route, Some(h), chunk)).await.map(drop)
            }
            _ => {
                tokio::time::sleep(sender.reserve(&route)).await;
                let key = format!("{key_base}-{i}");
                with_retries(&*sender, max_attempts, || sender.send(&route, chunk, &key, i == 0)).await
            }
        };
        if let Err(e) = result {
            failure = Some(e);
            break;
        }
    }
    finish_inbox(&*store, inbox_id, failure.as_deref()).await;
}

/// Starts delivering a model answer; returns the delta sender and the completion signal, or
/// `None` when the platform account has no egress.
pub fn start_answer(
    platform: &str,
    account: &str,
    route: Value,
    inbox_id: Option<i64>,
) -> Option<(tokio::sync::mpsc::UnboundedSender<String>, tokio::sync::oneshot::Sender<bool>)> {
    let e = ActorRef::<EgressMsg>::where_is(egress_name(platform, account))?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    e.cast(EgressMsg::Answer { route, deltas: rx, done: done_rx, inbox_id }).ok()?;
    Some((tx, done_tx))
}

fn outcome<T>(r: &Result<T, SendError>) -> &'static str {
    match r {
        Ok(_) => "ok",
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
