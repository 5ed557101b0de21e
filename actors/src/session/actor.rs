//! The session actor of one conversation: strictly in-order handling of its messages. Its
//! decisions come from [`Conversation`] and [`on_failure`]; the handlers here carry them out
//! (store writes, inference, egress) and own every inbox row the conversation receives: a row
//! is finished here and nowhere else, after the platform confirmed delivery (egress reports
//! back with [`SessionMsg::Delivered`]).

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::time::Instant;
use tracing::Instrument;

use super::conversation::{self, Command, Conversation, FailureAction, on_failure};
use super::router::{RouterMsg, move_conversation, release};
use super::{ChatError, ChatReply, ChatRequest, InboxConfig, SessionConfig, conversation_key};
use crate::egress::{Delivery, DeliveryKey, Egress, OnDelivered};
use crate::inference::{Fault, GenEvent, InferenceClient, InferenceError};
use crate::message::{Content, Platform, ReplyTarget};
use crate::model::ChatMessage;
use crate::names;
use crate::store::{InboxStatus, Store, Turn};
use crate::telemetry::{self, AnswerOutcome};

pub struct SessionActor;

/// What every session shares: settings and the services it talks to.
#[derive(Clone)]
pub struct SessionDeps {
    pub config: SessionConfig,
    pub inbox: InboxConfig,
    pub inference: InferenceClient,
    pub store: Arc<dyn Store>,
    /// Whether chat texts may trigger the test-only faults.
    pub fault_injection: bool,
}

pub struct SessionArgs {
    /// The conversation key and its hash (also the actor's name suffix).
    pub key: String,
    pub hash: String,
    pub platform: Platform,
    /// The platform account the conversation belongs to.
    pub account: String,
    pub deps: SessionDeps,
}

pub enum SessionMsg {
    /// A message of this conversation; `seq` is the router's counter for idle bookkeeping.
    Chat { seq: u64, request: ChatRequest },
    /// Timer: a failed message's backoff is over; try again.
    RetryDue,
    /// Timer: stop if nothing happened for the idle timeout.
    IdleCheck,
    /// Egress finished delivering the answer to inbox row `inbox_id`.
    Delivered { inbox_id: i64, delivery: Delivery },
}

/// The conversation's state.
pub struct SessionState {
    key: String,
    hash: String,
    platform: Platform,
    account: String,
    deps: SessionDeps,
    /// Turn window and prompt fitting.
    conversation: Conversation,
    /// Messages not yet answered, in arrival order; the first may be waiting for a retry.
    queue: VecDeque<ChatRequest>,
    /// Set while the first queued message waits for its retry backoff.
    waiting_retry: bool,
    /// Answers handed to egress whose delivery is not confirmed yet (no idle stop meanwhile).
    deliveries: HashSet<i64>,
    /// Last activity, for idle detection.
    last_active: Instant,
    /// Router sequence number of the last message received.
    last_seq: u64,
}

/// How an answer reaches its user.
enum Handoff {
    /// The waiting caller gets it (HTTP API).
    Caller,
    /// Egress has it and reports the delivery.
    Egress,
    /// The platform account has no egress: nothing can be sent.
    NoEgress,
}

impl Actor for SessionActor {
    type Msg = SessionMsg;
    type State = SessionState;
    type Arguments = SessionArgs;

    async fn pre_start(&self, myself: ActorRef<SessionMsg>, args: SessionArgs) -> Result<SessionState, ActorProcessingErr> {
        let every = Duration::from_secs(args.deps.config.idle_timeout_secs.clamp(1, 60));
        myself.send_interval(every, || SessionMsg::IdleCheck);
        // Rebuild the conversation from the store (after an idle stop or a crash).
        let stored = args.deps.store.history(&args.key, args.deps.config.max_turns as i64).await?;
        let history = stored.into_iter().map(|m| ChatMessage { role: m.role, content: m.content }).collect();
        Ok(SessionState {
            conversation: Conversation::new(&args.deps.config, history),
            key: args.key,
            hash: args.hash,
            platform: args.platform,
            account: args.account,
            deps: args.deps,
            queue: VecDeque::new(),
            waiting_retry: false,
            deliveries: HashSet::new(),
            last_active: Instant::now(),
            last_seq: 0,
        })
    }

    async fn handle(&self, myself: ActorRef<SessionMsg>, msg: SessionMsg, state: &mut SessionState) -> Result<(), ActorProcessingErr> {
        match msg {
            SessionMsg::Chat { seq, request } => {
                state.last_seq = seq;
                state.queue.push_back(request);
                if !state.waiting_retry {
                    state.drain(&myself).await;
                }
            }
            SessionMsg::RetryDue => {
                state.waiting_retry = false;
                state.drain(&myself).await;
            }
            SessionMsg::Delivered { inbox_id, delivery } => state.delivered(inbox_id, delivery).await,
            SessionMsg::IdleCheck => {
                let idle = state.last_active.elapsed() >= Duration::from_secs(state.deps.config.idle_timeout_secs);
                if idle && state.queue.is_empty() && state.deliveries.is_empty() {
                    if let Some(router) = ActorRef::<RouterMsg>::where_is(names::ROUTER.to_string()) {
                        let _ = router.cast(RouterMsg::SessionIdle { hash: state.hash.clone(), last_seq: state.last_seq });
                    }
                }
            }
        }
        Ok(())
    }

    /// Rows this session still held go back to the sweeper (a stopped session answers nothing).
    async fn post_stop(&self, _myself: ActorRef<SessionMsg>, state: &mut SessionState) -> Result<(), ActorProcessingErr> {
        for id in state.queue.iter().map(|r| r.inbox_id).chain(state.deliveries.iter().copied()) {
            release(id);
        }
        Ok(())
    }
}

impl SessionState {
    /// Handles queued messages in order until the queue is empty or one waits for a retry.
    async fn drain(&mut self, myself: &ActorRef<SessionMsg>) {
        while let Some(front) = self.queue.front() {
            // Every log line of this message's path carries its conversation and inbox id.
            let span = tracing::info_span!("message", conversation = %self.hash, inbox_id = front.inbox_id, platform = %front.platform, attempt = front.attempts + 1);
            let result = self.answer_front(myself).instrument(span).await;
            self.last_active = Instant::now();
            let error = match result {
                Ok((reply, handoff)) => {
                    let req = self.queue.pop_front().expect("front exists");
                    self.answered(req, reply, handoff).await;
                    continue;
                }
                Err(e) => e,
            };
            let front = self.queue.front_mut().expect("the failed message is still queued");
            front.attempts += 1;
            let (id, attempts) = (front.inbox_id, front.attempts);
            match on_failure(&error, attempts, front.caller.is_some(), &self.deps.inbox) {
                FailureAction::Retry(delay) => {
                    if let Err(se) = self.deps.store.inbox_attempt_failed(id, attempts, &error.to_string()).await {
                        tracing::warn!(error = %se, "Could not record a failed attempt.");
                    }
                    tracing::warn!(conversation = %self.hash, attempt = attempts, backoff_ms = delay.as_millis() as u64, error = %error, "Answering a message failed; retrying after a backoff.");
                    telemetry::inbox_retry();
                    self.waiting_retry = true;
                    myself.send_after(delay, || SessionMsg::RetryDue);
                    return;
                }
                FailureAction::DeadLetter => {
                    let req = self.queue.pop_front().expect("front exists");
                    let error = self.dead_letter(&req, &error).await;
                    self.failed(req, error).await;
                }
                FailureAction::Reject => {
                    let req = self.queue.pop_front().expect("front exists");
                    self.failed(req, error).await;
                }
            }
        }
    }

    /// Finishes an answered message: the caller gets the reply, or egress already has it.
    async fn answered(&mut self, req: ChatRequest, reply: ChatReply, handoff: Handoff) {
        match handoff {
            Handoff::Caller => self.finish_inbox(req.inbox_id, InboxStatus::Done, None).await,
            Handoff::Egress => {
                self.deliveries.insert(req.inbox_id);
            }
            Handoff::NoEgress => {
                tracing::error!(platform = %req.platform, account = %req.account, "No egress for this platform account; the reply was not sent.");
                self.finish_inbox(req.inbox_id, InboxStatus::Rejected, Some("no egress for this platform account")).await;
            }
        }
        telemetry::message_answered(req.platform, AnswerOutcome::Ok, req.accepted_at.elapsed());
        if let Some(caller) = req.caller {
            let _ = caller.reply.send(Ok(reply));
        }
    }

    /// Finishes a message that got no answer: the platform user gets a short explanation.
    async fn failed(&mut self, req: ChatRequest, error: ChatError) {
        if !matches!(error, ChatError::DeadLettered { .. }) {
            self.finish_inbox(req.inbox_id, InboxStatus::Rejected, Some(&error.to_string())).await;
        }
        if let Some(egress) = req.reply_to.is_platform().then(|| Egress::of(req.platform, &req.account)).flatten() {
            let text = conversation::apology_for(&error, &self.deps.inbox.apology).to_string();
            egress.reply(req.reply_to.clone(), text, DeliveryKey::for_inbox(None), None);
        }
        telemetry::message_answered(req.platform, conversation::outcome_of(&error), req.accepted_at.elapsed());
        if let Some(caller) = req.caller {
            let _ = caller.reply.send(Err(error));
        }
    }

    /// Egress reported a delivery: the inbox row is finished, and a chat that moved takes its
    /// conversation along.
    async fn delivered(&mut self, inbox_id: i64, delivery: Delivery) {
        self.deliveries.remove(&inbox_id);
        match &delivery.result {
            Ok(()) => self.finish_inbox(inbox_id, InboxStatus::Done, None).await,
            Err(e) => self.finish_inbox(inbox_id, InboxStatus::Rejected, Some(e)).await,
        }
        if let Some(ReplyTarget::Telegram { chat_id, .. }) = delivery.moved_to {
            let to = conversation_key(self.platform, &self.account, &chat_id.to_string(), None, None);
            tracing::info!(conversation = %self.hash, "The chat moved while an answer was sent; its conversation moves with it.");
            move_conversation(self.deps.store.as_ref(), &self.key, &to).await;
        }
    }

    async fn finish_inbox(&self, id: i64, status: InboxStatus, error: Option<&str>) {
        release(id);
        if let Err(e) = self.deps.store.inbox_finish(id, status, error).await {
            tracing::error!(inbox_id = id, error = %e, "Could not mark an inbox entry finished; it will be replayed at the next start.");
        }
    }

    /// Moves the message to the dead-letter queue; the user gets the apology.
    async fn dead_letter(&self, req: &ChatRequest, cause: &ChatError) -> ChatError {
        release(req.inbox_id);
        let entry = crate::ingress::entry_of(req, req.attempts);
        let id = match self.deps.store.dead_letter(&entry, &cause.to_string()).await {
            Ok(id) => id,
            Err(e) => {
                tracing::error!(error = %e, "Could not write a dead letter.");
                0
            }
        };
        tracing::error!(conversation = %self.hash, dead_letter = id, error = %cause, "A message failed every attempt and moved to the dead-letter queue.");
        req.stream_to_caller(&self.deps.inbox.apology);
        ChatError::DeadLettered { id, apology: self.deps.inbox.apology.clone(), reason: cause.to_string() }
    }

    /// The callback egress calls when the answer to `inbox_id` is delivered.
    fn report_to(myself: &ActorRef<SessionMsg>, inbox_id: i64) -> OnDelivered {
        let me = myself.clone();
        Box::new(move |delivery| {
            if me.cast(SessionMsg::Delivered { inbox_id, delivery }).is_err() {
                tracing::warn!(inbox_id, "A delivery report found its session gone; the inbox row is finished at the next replay.");
            }
        })
    }

    /// Answers the first queued message once: a command or unsupported content without the
    /// model, anything else with it.
    async fn answer_front(&mut self, myself: &ActorRef<SessionMsg>) -> Result<(ChatReply, Handoff), ChatError> {
        let req = self.queue.front().expect("called with a queued message");
        let text = match &req.content {
            Content::Unsupported { .. } => return Ok(self.canned(myself, conversation::UNSUPPORTED_REPLY.into())),
            Content::Text(t) => t,
        };
        match Command::parse(text) {
            Some(Command::Reset) => {
                self.deps
                    .store
                    .reset(&self.key, &self.hash, self.platform.as_str())
                    .await
                    .map_err(|e| ChatError::Storage(e.to_string()))?;
                self.conversation.reset();
                Ok(self.canned(myself, conversation::RESET_REPLY.into()))
            }
            Some(Command::Help) => Ok(self.canned(myself, conversation::help_text(self.platform))),
            None => self.generate(myself).await,
        }
    }

    /// A reply that needs no model.
    fn canned(&self, myself: &ActorRef<SessionMsg>, text: String) -> (ChatReply, Handoff) {
        let req = self.queue.front().expect("front");
        req.stream_to_caller(&text);
        let handoff = match (&req.reply_to, Egress::of(req.platform, &req.account)) {
            (ReplyTarget::Http, _) => Handoff::Caller,
            (target, Some(egress)) => {
                let key = DeliveryKey::for_inbox(Some(req.inbox_id));
                match egress.reply(target.clone(), text.clone(), key, Some(Self::report_to(myself, req.inbox_id))) {
                    true => Handoff::Egress,
                    false => Handoff::NoEgress,
                }
            }
            (_, None) => Handoff::NoEgress,
        };
        let reply = ChatReply {
            conversation: req.conversation.clone(),
            reply: text,
            tokens: 0,
            prompt_tokens: 0,
            finish_reason: None,
            latency: req.accepted_at.elapsed(),
        };
        (reply, handoff)
    }

    /// Asks the model, streaming the text to the caller or the platform's egress as it comes.
    async fn generate(&mut self, myself: &ActorRef<SessionMsg>) -> Result<(ChatReply, Handoff), ChatError> {
        let fault = self.injected_fault()?;
        let req = self.queue.front_mut().expect("front");
        req.options.fault = fault.or(req.options.fault);
        let req = self.queue.front().expect("front");
        let egress = req.reply_to.is_platform().then(|| Egress::of(req.platform, &req.account)).flatten();
        if let Some(e) = &egress {
            e.typing(req.reply_to.clone());
        }
        let prompt = self.prompt(req)?;
        let prompt_tokens = prompt.len();
        let mut events = self.deps.inference.submit(prompt, &req.options)?;
        let key = DeliveryKey::for_inbox(Some(req.inbox_id));
        let mut feed = egress.as_ref().and_then(|e| e.answer(req.reply_to.clone(), key, Some(Self::report_to(myself, req.inbox_id))));
        let mut reply = String::new();
        let summary = loop {
            match events.recv().await {
                Some(GenEvent::Delta(d)) => {
                    req.stream_to_caller(&d);
                    if let Some((tx, _)) = &feed {
                        let _ = tx.send(d.clone());
                    }
                    reply.push_str(&d);
                }
                Some(GenEvent::Done(summary)) => break summary,
                Some(GenEvent::Failed(e)) => return Err(e.into()),
                None => return Err(InferenceError::Unavailable("the inference layer stopped".into()).into()),
            }
        };
        let turns = [
            Turn { role: "user", user: req.user.clone(), content: req.text().to_string() },
            Turn { role: "assistant", user: String::new(), content: reply.clone() },
        ];
        self.deps
            .store
            .save_turns(&self.key, &self.hash, self.platform.as_str(), &turns)
            .await
            .map_err(|e| ChatError::Storage(e.to_string()))?;
        let handoff = match (feed.take(), &req.reply_to) {
            (Some((tx, done)), _) => {
                drop(tx);
                let _ = done.send(true);
                Handoff::Egress
            }
            (None, ReplyTarget::Http) => Handoff::Caller,
            (None, _) => Handoff::NoEgress,
        };
        let latency = req.accepted_at.elapsed();
        let reply = ChatReply {
            conversation: req.conversation.clone(),
            reply,
            tokens: summary.generated_tokens,
            prompt_tokens,
            finish_reason: Some(summary.finish_reason),
            latency,
        };
        tracing::info!(tokens = reply.tokens, prompt_tokens, latency_ms = latency.as_millis() as u64, "Answered a message.");
        self.conversation.record(req.text().to_string(), reply.reply.clone());
        Ok((reply, handoff))
    }

    /// The test-only faults a chat text may trigger (`testing.fault_injection`).
    fn injected_fault(&self) -> Result<Option<Fault>, ChatError> {
        if !self.deps.fault_injection {
            return Ok(None);
        }
        match self.queue.front().map(|r| r.text().trim()) {
            Some("!fault:session-panic") => panic!("injected fault: session panic"),
            Some("!fault:worker-panic") => Ok(Some(Fault::WorkerPanicOnce)),
            Some("!fault:worker-panic-always") => Ok(Some(Fault::WorkerPanicAlways)),
            _ => Ok(None),
        }
    }

    /// System prompt + the turns that fit + the message, rendered and tokenized.
    fn prompt(&self, req: &ChatRequest) -> Result<Vec<u32>, ChatError> {
        let assets = self.deps.inference.assets();
        let limit = self.conversation.prompt_limit(assets.context_window, self.deps.inference.max_new_tokens(&req.options));
        self.conversation.fit_prompt(req.text(), limit, |messages| {
            let rendered = assets.template.render(messages, true).map_err(|e| e.to_string())?;
            assets.encode(&rendered).map_err(|e| e.to_string())
        })
    }
}
