//! Egress: getting answers onto the platforms. One [`EgressActor`] per platform account splits
//! replies, waits for the [`limiter`], sends with retries, and streams answers as they are
//! generated where the platform allows it ([`stream`]). Platform specifics live behind
//! [`PlatformSender`] ([`telegram`], [`feishu`]).
//!
//! Egress never touches the inbox, the store or the sessions: every delivery ends in a
//! [`Delivery`] report handed back to whoever asked for it (the session, which owns the inbox
//! row). A Telegram chat that moved comes back as [`Delivery::moved_to`].

pub mod feishu;
pub mod limiter;
pub mod stream;
pub mod telegram;
#[cfg(test)]
mod testing;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::message::{Platform, ReplyTarget};
use crate::names;
use crate::telemetry::{self, SendOutcome};

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

impl SendError {
    fn outcome(&self) -> SendOutcome {
        match self {
            SendError::RetryAfter(_) => SendOutcome::RateLimited,
            SendError::Transient(_) => SendOutcome::TransientError,
            SendError::Permanent(_) => SendOutcome::PermanentError,
        }
    }
}

/// How an account's answers are streamed (from its `[[telegram]]` / `[[feishu]]` entry).
#[derive(Debug, Clone, Copy)]
pub struct Streaming {
    /// Post early and edit as text arrives.
    pub enabled: bool,
    /// Least time between two edits.
    pub interval: Duration,
}

/// A sent chunk: `Some(target)` when the chat moved and later chunks must go there.
pub type Sent = Option<ReplyTarget>;

/// What a platform must provide to the generic egress actor.
#[async_trait]
pub trait PlatformSender: Send + Sync + 'static {
    fn platform(&self) -> Platform;
    /// The account name from the config.
    fn account(&self) -> &str;
    /// Splits a reply into sendable chunks.
    fn chunks(&self, text: &str) -> Vec<String>;
    /// Reserves a send slot with the rate limiter; returns how long to wait before sending.
    fn reserve(&self, target: &ReplyTarget) -> Duration;
    /// Sends one chunk. `key` is stable across retries of the same chunk (idempotency).
    /// `first` is true for the first chunk of a reply (which replies to the user's message).
    async fn send(&self, target: &ReplyTarget, chunk: &str, key: &str, first: bool) -> Result<Sent, SendError>;
    /// Shows "typing…" where the platform has it.
    async fn typing(&self, _target: &ReplyTarget) {}
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
    async fn stream_update(&self, _target: &ReplyTarget, _handle: Option<&str>, _text: &str) -> Result<String, SendError> {
        Err(SendError::Permanent("this platform does not stream".into()))
    }
}

/// How a delivery ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// `Err` with the reason when a part could not be delivered.
    pub result: Result<(), String>,
    /// The chat moved during the delivery (a Telegram group upgraded to a supergroup).
    pub moved_to: Option<ReplyTarget>,
}

/// Called once with the delivery's outcome.
pub type OnDelivered = Box<dyn FnOnce(Delivery) + Send>;

/// A model answer handed to egress while it is generated (see [`stream::deliver_answer`]).
pub struct AnswerFeed {
    /// Text deltas; closed when generation ends.
    pub deltas: mpsc::UnboundedReceiver<String>,
    /// Whether generation succeeded (sent once the deltas are closed).
    pub done: oneshot::Receiver<bool>,
}

pub struct EgressActor;

/// The egress actor's arguments, kept as its state.
pub struct EgressArgs {
    pub sender: Arc<dyn PlatformSender>,
    /// Attempts per chunk for transient failures.
    pub max_attempts: u32,
}

pub enum EgressMsg {
    /// Send a short reply that needs no model (a command's answer, an apology).
    Reply { target: ReplyTarget, text: String, key: DeliveryKey, on_delivered: Option<OnDelivered> },
    /// Show a typing indicator.
    Typing { target: ReplyTarget },
    /// A model answer as it is generated. Platforms that stream show the text early and edit
    /// it; the others send the whole answer at the end.
    Answer { target: ReplyTarget, feed: AnswerFeed, key: DeliveryKey, on_delivered: Option<OnDelivered> },
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
        let sender = state.sender.clone();
        let span = tracing::info_span!("egress", platform = %sender.platform(), account = %sender.account());
        match msg {
            EgressMsg::Reply { target, text, key, on_delivered } => {
                // Slots are reserved here, in arrival order, so a chat's chunks keep their order;
                // the waiting and sending happen in a task so other chats are not held up.
                let now = Instant::now();
                let plan = sender.chunks(&text).into_iter().map(|c| (now + sender.reserve(&target), c)).collect();
                let out = Outbox { sender, target, key, max_attempts: state.max_attempts, moved_to: None };
                tokio::spawn(tracing::Instrument::instrument(out.send_planned(plan, on_delivered), span));
            }
            EgressMsg::Answer { target, feed, key, on_delivered } => {
                let out = Outbox { sender, target, key, max_attempts: state.max_attempts, moved_to: None };
                tokio::spawn(tracing::Instrument::instrument(stream::deliver_answer(out, feed, on_delivered), span));
            }
            EgressMsg::Typing { target } => {
                tokio::spawn(async move { sender.typing(&target).await });
            }
        }
        Ok(())
    }
}

/// One delivery in progress: where it goes (which may change when the chat moves) and how.
pub(crate) struct Outbox {
    sender: Arc<dyn PlatformSender>,
    target: ReplyTarget,
    /// Idempotency key prefix of this delivery's chunks.
    key: DeliveryKey,
    max_attempts: u32,
    /// Set when the chat moved during this delivery.
    moved_to: Option<ReplyTarget>,
}

impl Outbox {
    /// Sends chunks at their reserved times, then reports.
    async fn send_planned(mut self, plan: Vec<(Instant, String)>, on_delivered: Option<OnDelivered>) {
        let mut result = Ok(());
        for (i, (at, chunk)) in plan.into_iter().enumerate() {
            tokio::time::sleep_until(at).await;
            if let Err(e) = self.send_chunk(&chunk, i).await {
                result = Err(e);
                break;
            }
        }
        self.report(result, on_delivered);
    }

    /// Sends chunk `i` with retries, following the chat if it moved.
    async fn send_chunk(&mut self, chunk: &str, i: usize) -> Result<(), String> {
        let (sender, target, key) = (self.sender.clone(), self.target.clone(), self.key.chunk(i));
        let sent = with_retries(&*sender, self.max_attempts, || sender.send(&target, chunk, &key, i == 0)).await?;
        if let Some(moved) = sent {
            self.target = moved.clone();
            self.moved_to = Some(moved);
        }
        Ok(())
    }

    fn report(self, result: Result<(), String>, on_delivered: Option<OnDelivered>) {
        if let Some(report) = on_delivered {
            report(Delivery { result, moved_to: self.moved_to });
        }
    }
}

/// The idempotency key of a delivery's chunks. Derived from the inbox row when there is one,
/// so a reply re-sent after a crash or retry carries the same keys (Feishu posts it once).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryKey(String);

impl DeliveryKey {
    /// The key of the answer to inbox row `inbox_id` (random when there is none).
    pub fn for_inbox(inbox_id: Option<i64>) -> Self {
        DeliveryKey(inbox_id.map(|i| format!("sb-{i}")).unwrap_or_else(|| format!("sb-x{}", rand::random::<u32>())))
    }

    /// The key of chunk `i`.
    pub fn chunk(&self, i: usize) -> String {
        format!("{}-{i}", self.0)
    }
}

/// Runs one platform call, honouring retry-after and retrying transient errors with backoff;
/// every attempt is counted by outcome.
pub(crate) async fn with_retries<T, F, Fut>(sender: &dyn PlatformSender, max_attempts: u32, mut call: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, SendError>>,
{
    let (platform, account) = (sender.platform(), sender.account());
    let mut backoff = Duration::from_millis(250);
    for attempt in 1..=max_attempts {
        let started = Instant::now();
        let result = call().await;
        let outcome = result.as_ref().map_or_else(SendError::outcome, |_| SendOutcome::Ok);
        telemetry::egress_send(platform, account, outcome, started.elapsed());
        match result {
            Ok(v) => return Ok(v),
            Err(SendError::RetryAfter(d)) => {
                telemetry::egress_rate_limited(platform, account);
                tracing::warn!(%platform, account, retry_after_ms = d.as_millis() as u64, "The platform rate-limited a send; waiting as asked.");
                tokio::time::sleep(d.min(Duration::from_secs(300))).await;
            }
            Err(SendError::Transient(e)) if attempt < max_attempts => {
                tracing::warn!(%platform, account, attempt, error = %e, "A send failed; retrying after a backoff.");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
            Err(SendError::Transient(e)) => return Err(format!("gave up after {attempt} attempts: {e}")),
            Err(SendError::Permanent(e)) => {
                tracing::error!(%platform, account, error = %e, "A send failed permanently; not retrying.");
                return Err(e);
            }
        }
    }
    Err("gave up: still rate-limited".into())
}

/// Where the answers of one platform account go: the handle sessions use.
#[derive(Clone)]
pub struct Egress {
    actor: ActorRef<EgressMsg>,
}

impl Egress {
    /// The running egress actor of a platform account, `None` if there is none.
    pub fn of(platform: Platform, account: &str) -> Option<Egress> {
        ActorRef::where_is(names::egress(platform, account)).map(|actor| Egress { actor })
    }

    /// Sends a short reply; `false` if the actor is gone.
    pub fn reply(&self, target: ReplyTarget, text: String, key: DeliveryKey, on_delivered: Option<OnDelivered>) -> bool {
        self.actor.cast(EgressMsg::Reply { target, text, key, on_delivered }).is_ok()
    }

    pub fn typing(&self, target: ReplyTarget) {
        let _ = self.actor.cast(EgressMsg::Typing { target });
    }

    /// Starts delivering a model answer: returns where to send the deltas and the completion
    /// signal, or `None` if the actor is gone.
    pub fn answer(
        &self,
        target: ReplyTarget,
        key: DeliveryKey,
        on_delivered: Option<OnDelivered>,
    ) -> Option<(mpsc::UnboundedSender<String>, oneshot::Sender<bool>)> {
        let (tx, deltas) = mpsc::unbounded_channel();
        let (done_tx, done) = oneshot::channel();
        self.actor.cast(EgressMsg::Answer { target, feed: AnswerFeed { deltas, done }, key, on_delivered }).ok()?;
        Some((tx, done_tx))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::sync::oneshot;

    use super::testing::{Call, Recorder, outbox};
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_chat_that_moves_is_followed_and_reported() {
        let moved = ReplyTarget::Telegram { chat_id: -200, thread_id: None, message_id: None, group: true };
        let rec = Recorder::moving_to(4, moved.clone());
        let (report, delivered) = oneshot::channel();
        let now = Instant::now();
        let plan = rec.chunks("abcdefgh").into_iter().map(|c| (now, c)).collect();
        outbox(&rec).send_planned(plan, Some(Box::new(move |d| drop(report.send(d))))).await;
        let delivery = delivered.await.unwrap();
        assert_eq!(delivery, Delivery { result: Ok(()), moved_to: Some(moved.clone()) });
        let calls = rec.calls();
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[1].target, moved, "the second part goes to the new chat");
        assert!(matches!(calls[0].what, Call::Send));
    }

    #[tokio::test(start_paused = true)]
    async fn transient_failures_are_retried_with_backoff_then_given_up() {
        let rec = Recorder::failing(SendError::Transient("502".into()));
        let (report, delivered) = oneshot::channel();
        let started = Instant::now();
        let plan = vec![(started, "hi".to_string())];
        outbox(&rec).send_planned(plan, Some(Box::new(move |d| drop(report.send(d))))).await;
        let delivery = delivered.await.unwrap();
        assert!(delivery.result.unwrap_err().contains("gave up after 3 attempts"));
        let calls = rec.calls();
        assert_eq!(calls.len(), 3);
        assert_eq!(calls[1].at - calls[0].at, Duration::from_millis(250));
        assert_eq!(calls[2].at - calls[1].at, Duration::from_millis(500));
    }

    #[test]
    fn delivery_keys_are_stable_per_inbox_row() {
        assert_eq!(DeliveryKey::for_inbox(Some(7)).chunk(1), "sb-7-1");
        assert_ne!(DeliveryKey::for_inbox(None), DeliveryKey::for_inbox(None));
    }
}
