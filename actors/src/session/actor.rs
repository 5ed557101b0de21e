//! The session actor of one conversation: strictly in-order handling of its messages, with
//! history kept in the store, retries with backoff, and the dead-letter queue as last resort.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tracing::Instrument;

use super::router::{ROUTER_NAME, RouterMsg};
use super::{ChatError, ChatReply, ChatRequest, InboxConfig, InboxPayload, SessionConfig};
use crate::inference::{Fault, GenEvent, InferenceClient, InferenceError};
use crate::model::ChatMessage;
use crate::platforms::egress;
use crate::store::{InboxEntry, InboxStatus, Store, Turn};
use crate::telemetry;

pub struct SessionActor;

pub struct SessionArgs {
    /// The conversation key and its hash (also the actor's name suffix).
    pub key: String,
    pub hash: String,
    pub platform: String,
    pub config: SessionConfig,
    pub inbox: InboxConfig,
    pub inference: InferenceClient,
    pub store: Arc<dyn Store>,
    /// Whether chat texts may trigger the test-only faults.
    pub fault_injection: bool,
}

pub type ReplyPort = RpcReplyPort<Result<ChatReply, ChatError>>;

pub enum SessionMsg {
    /// A message of this conversation; `seq` is the router's counter for idle bookkeeping.
    Chat { seq: u64, request: ChatRequest, reply: Option<ReplyPort> },
    /// Timer: a failed message's backoff is over; try again.
    RetryDue,
    /// Timer: stop if nothing happened for the idle timeout.
    IdleCheck,
}

/// A message waiting its turn.
struct Pending {
    request: ChatRequest,
    reply: Option<ReplyPort>,
}

/// The conversation's state.
pub struct SessionState {
    key: String,
    hash: String,
    platform: String,
    config: SessionConfig,
    inbox: InboxConfig,
    inference: InferenceClient,
    store: Arc<dyn Store>,
    fault_injection: bool,
    /// Recent turns of the current context (user and assistant), oldest first.
    turns: Vec<ChatMessage>,
    /// Messages not yet answered, in arrival order; the first may be waiting for a retry.
    queue: VecDeque<Pending>,
    /// Set while the first queued message waits for its retry backoff.
    waiting_retry: bool,
    /// Last activity, for idle detection.
    last_active: Instant,
    /// Router sequence number of the last message received.
    last_seq: u64,
    /// Whether the last model answer went to the platform's egress as it was generated (the
    /// egress then sends it and finishes the inbox entry).
    streamed: bool,
}

const HELP: &str = "Commands: /reset (start a fresh conversation; the old one is kept for audit) & /help (this text). Anything else -> the assistant. Long answers arrive in parts of <= 4096 characters.";

impl Actor for SessionActor {
    type Msg = SessionMsg;
    type State = SessionState;
    type Arguments = SessionArgs;

    async fn pre_start(&self, myself: ActorRef<SessionMsg>, args: SessionArgs) -> Result<SessionState, ActorProcessingErr> {
        let every = Duration::from_secs(args.config.idle_timeout_secs.clamp(1, 60));
        myself.send_interval(every, || SessionMsg::IdleCheck);
        // Rebuild the conversation from the store (after an idle stop or a crash).
        let stored = args.store.history(&args.key, args.config.max_turns as i64).await?;
        let turns = stored.into_iter().map(|m| ChatMessage { role: m.role, content: m.content }).collect();
        Ok(SessionState {
            key: args.key,
            hash: args.hash,
            platform: args.platform,
            config: args.config,
            inbox: args.inbox,
            inference: args.inference,
            store: args.store,
            fault_injection: args.fault_injection,
            turns,
            queue: VecDeque::new(),
            waiting_retry: false,
            last_active: Instant::now(),
            last_seq: 0,
            streamed: false,
        })
    }

    async fn handle(&self, myself: ActorRef<SessionMsg>, msg: SessionMsg, state: &mut SessionState) -> Result<(), ActorProcessingErr> {
        match msg {
            SessionMsg::Chat { seq, request, reply } => {
                state.last_seq = seq;
                state.queue.push_back(Pending { request, reply });
                if !state.waiting_retry {
                    state.drain(&myself).await;
                }
            }
            SessionMsg::RetryDue => {
                state.waiting_retry = false;
                state.drain(&myself).await;
            }
            SessionMsg::IdleCheck => {
                let idle = state.last_active.elapsed() >= Duration::from_secs(state.config.idle_timeout_secs);
                if idle && state.queue.is_empty() {
                    if let Some(router) = ActorRef::<RouterMsg>::where_is(ROUTER_NAME.to_string()) {
                        let _ = router.cast(RouterMsg::SessionIdle { hash: state.hash.clone(), last_seq: state.last_seq });
                    }
                }
            }
        }
        Ok(())
    }
}

/// Whether trying again later may help.
fn retryable(e: &ChatError, has_caller: bool) -> bool {
    match e {
        // A caller waiting on the HTTP API was told "busy" and retries itself.
        ChatError::Inference(InferenceError::Busy(_)) => !has_caller,
        ChatError::Inference(InferenceError::Timeout(_) | InferenceError::Unavailable(_) | InferenceError::Failed(_)) => true,
        ChatError::Storage(_) => true,
        _ => false,
    }
}

impl SessionState {
    /// Handles queued messages in order until the queue is empty or one waits for a retry.
    async fn drain(&mut self, myself: &ActorRef<SessionMsg>) {
        while !self.queue.is_empty() {
            self.streamed = false;
            // Every log line of this message's path carries its conversation and inbox id.
            let span = {
                let r = &self.queue.front().expect("front").request;
                tracing::info_span!("message", conversation = %self.hash, inbox_id = r.inbox_id.unwrap_or(0), platform = r.platform, attempt = r.attempts + 1)
            };
            let result = self.answer_front().instrument(span.clone()).await;
            self.last_active = Instant::now();
            let (inbox_id, has_caller, attempts) = {
                let p = self.queue.front().expect("front exists");
                (p.request.inbox_id, p.reply.is_some(), p.request.attempts)
            };
            match result {
                Ok(reply) => {
                    let p = self.queue.front().expect("front exists");
                    match p.request.route.clone() {
                        // The egress marks the inbox entry done once the platform has the reply.
                        // Streamed: the egress already has the whole text and finishes the inbox entry.
                        Some(_) if self.streamed => {}
                        Some(route) => {
                            if !egress::send_reply(p.request.platform, &p.request.account, route, reply.reply.clone(), inbox_id) {
                                tracing::error!(platform = p.request.platform, account = %p.request.account, "No egress for this platform account; the reply was not sent.");
                                if let Some(id) = inbox_id {
                                    self.finish_inbox(id, InboxStatus::Rejected, Some("no egress for this platform account")).await;
                                }
                            }
                        }
                        None => {
                            if let Some(id) = inbox_id {
                                self.finish_inbox(id, InboxStatus::Done, None).await;
                            }
                        }
                    }
                    let p = self.queue.pop_front().expect("front exists");
                    telemetry::message_answered(p.request.platform, "ok", p.request.accepted_at.elapsed());
                    if let Some(port) = p.reply {
                        let _ = port.send(Ok(reply));
                    }
                }
                Err(e) if retryable(&e, has_caller) && attempts + 1 < self.inbox.max_attempts as i64 => {
                    let attempts = attempts + 1;
                    self.queue.front_mut().expect("front exists").request.attempts = attempts;
                    if let Some(id) = inbox_id {
                        if let Err(se) = self.store.inbox_attempt_failed(id, attempts, &e.to_string()).await {
                            tracing::warn!(error = %se, "Could not record a failed attempt.");
                        }
                    }
                    let backoff = self.inbox.retry_backoff_ms.saturating_mul(1 << (attempts - 1).min(10) as u64);
                    tracing::warn!(conversation = %self.hash, attempt = attempts, backoff_ms = backoff, error = %e, "Answering a message failed; retrying after a backoff.");
                    telemetry::inbox_retry();
                    self.waiting_retry = true;
                    myself.send_after(Duration::from_millis(backoff), || SessionMsg::RetryDue);
                    return;
                }
                Err(e) => {
                    let p = self.queue.pop_front().expect("front exists");
                    let err = if retryable(&e, has_caller) { self.dead_letter(&p.request, &e).await } else { e };
                    let outcome = match &err {
                        ChatError::Inference(InferenceError::Busy(_)) => "busy",
                        ChatError::DeadLettered { .. } => "apology",
                        _ => "failed",
                    };
                    if let (Some(id), false) = (inbox_id, matches!(err, ChatError::DeadLettered { .. })) {
                        self.finish_inbox(id, InboxStatus::Rejected, Some(&err.to_string())).await;
                    }
                    // A platform user gets a short explanation instead of silence.
                    if let Some(route) = p.request.route.clone() {
                        let text = match &err {
                            ChatError::MessageTooLong { .. } | ChatError::Inference(InferenceError::PromptTooLong { .. }) => {
                                "Sorry, that message is too long for me. Could you shorten it?".to_string()
                            }
                            _ => self.inbox.apology.clone(),
                        };
                        egress::send_reply(p.request.platform, &p.request.account, route, text, None);
                    }
                    telemetry::message_answered(p.request.platform, outcome, p.request.accepted_at.elapsed());
                    if let Some(port) = p.reply {
                        let _ = port.send(Err(err));
                    }
                }
            }
        }
    }

    async fn finish_inbox(&self, id: i64, status: InboxStatus, error: Option<&str>) {
        if let Err(e) = self.store.inbox_finish(id, status, error).await {
            tracing::error!(inbox_id = id, error = %e, "Could not mark an inbox entry finished; it will be replayed at the next start.");
        }
    }

    /// Moves the message to the dead-letter queue; the user gets the apology.
    async fn dead_letter(&self, req: &ChatRequest, cause: &ChatError) -> ChatError {
        let entry = InboxEntry {
            id: req.inbox_id.unwrap_or(0),
            platform: req.platform.to_string(),
            account: req.account.clone(),
            conversation: req.conversation.clone(),
            user: req.user.clone(),
            text: req.text.clone(),
            payload: InboxPayload { options: req.options.clone(), route: req.route.clone() }.to_json(),
            attempts: req.attempts + 1,
            created_ms: 0,
        };
        let id = match self.store.dead_letter(&entry, &cause.to_string()).await {
            Ok(id) => id,
            Err(e) => {
                tracing::error!(error = %e, "Could not write a dead letter.");
                0
            }
        };
        tracing::error!(conversation = %self.hash, dead_letter = id, error = %cause, "A message failed every attempt and moved to the dead-letter queue.");
        if let Some(tx) = &req.deltas {
            let _ = tx.send(self.inbox.apology.clone());
        }
        ChatError::DeadLettered { id, apology: self.inbox.apology.clone(), reason: cause.to_string() }
    }

    /// Answers the first queued message once.
    async fn answer_front(&mut self) -> Result<ChatReply, ChatError> {
        let front = self.queue.front_mut().expect("called with a queued message");
        let text = front.request.text.trim().to_string();
        match text.as_str() {
            "/reset" => {
                self.store.reset(&self.key, &self.hash, &self.platform).await.map_err(|e| ChatError::Storage(e.to_string()))?;
                self.turns.clear();
                return Ok(self.canned("Started a fresh conversation."));
            }
            "/help" => return Ok(self.canned(HELP)),
            _ => {}
        }
        if self.fault_injection {
            match text.as_str() {
                "!fault:session-panic" => panic!("injected fault: session panic"),
                "!fault:worker-panic" => front.request.options.fault = Some(Fault::WorkerPanicOnce),
                "!fault:worker-panic-always" => front.request.options.fault = Some(Fault::WorkerPanicAlways),
                _ => {}
            }
        }
        let req = &self.queue.front().expect("front").request;
        if let Some(route) = &req.route {
            egress::send_typing(req.platform, &req.account, route.clone());
        }
        let prompt = self.build_prompt(req)?;
        let prompt_tokens = prompt.len();
        let mut events = self.inference.submit(prompt, &req.options)?;
        // A platform's egress gets the text as it is generated (and streams it where enabled).
        let mut stream = req.route.as_ref().and_then(|route| egress::start_answer(req.platform, &req.account, route.clone(), req.inbox_id));
        let mut reply = String::new();
        let mut streamed = false;
        let summary = loop {
            match events.recv().await {
                Some(GenEvent::Delta(d)) => {
                    if let Some(tx) = &req.deltas {
                        let _ = tx.send(d.clone());
                    }
                    if let Some((tx, _)) = &stream {
                        let _ = tx.send(d.clone());
                    }
                    reply.push_str(&d);
                }
                Some(GenEvent::Done(summary)) => {
                    if let Some((tx, done)) = stream.take() {
                        drop(tx);
                        let _ = done.send(true);
                        streamed = true;
                    }
                    break summary;
                }
                Some(GenEvent::Failed(e)) => {
                    if let Some((_, done)) = stream.take() {
                        let _ = done.send(false);
                    }
                    return Err(e.into());
                }
                None => return Err(InferenceError::Unavailable("the inference layer stopped".into()).into()),
            }
        };
        let turns = [
            Turn { role: "user", user: req.user.clone(), content: req.text.clone() },
            Turn { role: "assistant", user: String::new(), content: reply.clone() },
        ];
        self.store.save_turns(&self.key, &self.hash, &self.platform, &turns).await.map_err(|e| ChatError::Storage(e.to_string()))?;
        self.streamed = streamed;
        let reply = ChatReply {
            conversation: req.conversation.clone(),
            reply,
            tokens: summary.generated_tokens,
            prompt_tokens,
            finish_reason: Some(summary.finish_reason),
            latency: req.accepted_at.elapsed(),
        };
        tracing::info!(tokens = reply.tokens, prompt_tokens, latency_ms = reply.latency.as_millis() as u64, "Answered a message.");
        let user_text = req.text.clone();
        self.push_turn(ChatMessage::new("user", user_text));
        self.push_turn(ChatMessage::new("assistant", reply.reply.clone()));
        Ok(reply)
    }

    fn canned(&self, text: &str) -> ChatReply {
        let req = &self.queue.front().expect("front").request;
        if let Some(tx) = &req.deltas {
            let _ = tx.send(text.to_string());
        }
        ChatReply {
            conversation: req.conversation.clone(),
            reply: text.to_string(),
            tokens: 0,
            prompt_tokens: 0,
            finish_reason: None,
            latency: req.accepted_at.elapsed(),
        }
    }

    fn push_turn(&mut self, m: ChatMessage) {
        self.turns.push(m);
        let excess = self.turns.len().saturating_sub(self.config.max_turns);
        self.turns.drain(..excess);
    }

    /// Renders system prompt + as many recent turns as fit + the new message, and tokenizes it.
    /// The oldest turns are dropped first; a message that does not fit even alone is an error.
    fn build_prompt(&self, req: &ChatRequest) -> Result<Vec<u32>, ChatError> {
        let assets = self.inference.assets();
        let window = assets.context_window;
        let reply_budget = self.inference.max_new_tokens(&req.options).min(window / 2).max(1);
        let mut limit = window.saturating_sub(reply_budget);
        if self.config.max_history_tokens > 0 {
            limit = limit.min(self.config.max_history_tokens);
        }
        let mut skip = 0;
        loop {
            let mut messages = Vec::with_capacity(self.turns.len() + 2);
            if !self.config.system_prompt.is_empty() {
                messages.push(ChatMessage::new("system", self.config.system_prompt.clone()));
            }
            messages.extend(self.turns[skip..].iter().cloned());
            messages.push(ChatMessage::new("user", req.text.clone()));
            let rendered = assets.template.render(&messages, true).map_err(|e| ChatError::Internal(e.to_string()))?;
            let ids = assets.encode(&rendered).map_err(|e| ChatError::Internal(e.to_string()))?;
            if ids.len() <= limit {
                return Ok(ids);
            }
            if skip >= self.turns.len() {
                return Err(ChatError::MessageTooLong { tokens: ids.len(), limit });
            }
            // Drop the oldest exchange (user + assistant) together.
            skip = (skip + 2).min(self.turns.len());
        }
    }
}
