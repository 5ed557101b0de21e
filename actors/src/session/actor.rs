//! The session actor of one conversation: strictly in-order handling of its messages.

use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use super::router::{ROUTER_NAME, RouterMsg};
use super::{ChatError, ChatReply, ChatRequest, SessionConfig};
use crate::inference::{Fault, GenEvent, InferenceClient, InferenceError};
use crate::model::ChatMessage;
use crate::telemetry;

pub struct SessionActor;

pub struct SessionArgs {
    /// The conversation hash (also the actor's name suffix).
    pub hash: String,
    pub config: SessionConfig,
    pub inference: InferenceClient,
    /// Whether chat texts may trigger the test-only faults.
    pub fault_injection: bool,
}

pub enum SessionMsg {
    /// A message of this conversation; `seq` is the router's counter for idle bookkeeping.
    Chat { seq: u64, request: ChatRequest, reply: RpcReplyPort<Result<ChatReply, ChatError>> },
    /// Timer: stop if nothing happened for the idle timeout.
    IdleCheck,
}

/// The conversation's state.
pub struct SessionState {
    hash: String,
    config: SessionConfig,
    inference: InferenceClient,
    fault_injection: bool,
    /// Recent turns (user and assistant), oldest first.
    turns: Vec<ChatMessage>,
    /// Last message handled, for idle detection.
    last_active: Instant,
    /// Router sequence number of the last message handled.
    last_seq: u64,
}

const HELP: &str = "Commands: /reset starts a fresh conversation, /help shows this text. Anything else is answered by the assistant.";

impl Actor for SessionActor {
    type Msg = SessionMsg;
    type State = SessionState;
    type Arguments = SessionArgs;

    async fn pre_start(&self, myself: ActorRef<SessionMsg>, args: SessionArgs) -> Result<SessionState, ActorProcessingErr> {
        let every = Duration::from_secs(args.config.idle_timeout_secs.clamp(1, 60));
        myself.send_interval(every, || SessionMsg::IdleCheck);
        Ok(SessionState {
            hash: args.hash,
            config: args.config,
            inference: args.inference,
            fault_injection: args.fault_injection,
            turns: Vec::new(),
            last_active: Instant::now(),
            last_seq: 0,
        })
    }

    async fn handle(&self, _myself: ActorRef<SessionMsg>, msg: SessionMsg, state: &mut SessionState) -> Result<(), ActorProcessingErr> {
        match msg {
            SessionMsg::Chat { seq, request, reply } => {
                state.last_seq = seq;
                let result = state.chat(request).await;
                state.last_active = Instant::now();
                let _ = reply.send(result);
            }
            SessionMsg::IdleCheck => {
                if state.last_active.elapsed() >= Duration::from_secs(state.config.idle_timeout_secs) {
                    if let Some(router) = ActorRef::<RouterMsg>::where_is(ROUTER_NAME.to_string()) {
                        let _ = router.cast(RouterMsg::SessionIdle { hash: state.hash.clone(), last_seq: state.last_seq });
                    }
                }
            }
        }
        Ok(())
    }
}

impl SessionState {
    async fn chat(&mut self, mut req: ChatRequest) -> Result<ChatReply, ChatError> {
        let text = req.text.trim();
        match text {
            "/reset" => {
                self.turns.clear();
                return Ok(self.canned(&req, "Started a fresh conversation."));
            }
            "/help" => return Ok(self.canned(&req, HELP)),
            _ => {}
        }
        if self.fault_injection {
            match text {
                "!fault:session-panic" => panic!("injected fault: session panic"),
                "!fault:worker-panic" => req.options.fault = Some(Fault::WorkerPanicOnce),
                "!fault:worker-panic-always" => req.options.fault = Some(Fault::WorkerPanicAlways),
                _ => {}
            }
        }
        let prompt = self.build_prompt(&req)?;
        let prompt_tokens = prompt.len();
        let mut events = self.inference.submit(prompt, &req.options)?;
        let mut reply = String::new();
        loop {
            match events.recv().await {
                Some(GenEvent::Delta(d)) => {
                    if let Some(tx) = &req.deltas {
                        let _ = tx.send(d.clone());
                    }
                    reply.push_str(&d);
                }
                Some(GenEvent::Done(summary)) => {
                    telemetry::inference_done(req.accepted_at.elapsed());
                    self.push_turn(ChatMessage::new("user", req.text.clone()));
                    self.push_turn(ChatMessage::new("assistant", reply.clone()));
                    return Ok(ChatReply {
                        conversation: req.conversation,
                        reply,
                        tokens: summary.generated_tokens,
                        prompt_tokens,
                        finish_reason: Some(summary.finish_reason),
                        latency: req.accepted_at.elapsed(),
                    });
                }
                Some(GenEvent::Failed(e)) => return Err(e.into()),
                None => return Err(InferenceError::Unavailable("the inference layer stopped".into()).into()),
            }
        }
    }

    fn canned(&self, req: &ChatRequest, text: &str) -> ChatReply {
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
