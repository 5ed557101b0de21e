//! The session router: owns the map from conversation hash to session actor, spawning one on
//! first use and forwarding each message without waiting, so conversations run in parallel
//! while each one's messages stay in order (its actor's mailbox is FIFO).

use std::collections::HashMap;

use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};

use std::sync::Arc;

use super::actor::{ReplyPort, SessionActor, SessionArgs, SessionMsg};
use super::{ChatError, ChatRequest, InboxConfig, SessionConfig, conversation_hash};
use crate::inference::InferenceClient;
use crate::store::Store;
use crate::supervisor::STOP_REASON_SHUTDOWN;
use crate::telemetry;

/// Registered name of the router.
pub const ROUTER_NAME: &str = "sessions.router";

/// Chat messages cast to the router and not yet handled: its mailbox depth.
static BACKLOG: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

/// Hands a chat message to the session router (every ingress goes through here). `false` when
/// the router is not running (restarting); the message then stays in the inbox for replay.
pub fn route_message(req: ChatRequest, reply: Option<ReplyPort>) -> bool {
    let Some(router) = ActorRef::<RouterMsg>::where_is(ROUTER_NAME.to_string()) else { return false };
    let depth = BACKLOG.fetch_add(1, std::sync::atomic::Ordering::AcqRel) + 1;
    telemetry::mailbox_depth(ROUTER_NAME, depth);
    if router.cast(RouterMsg::Chat(req, reply)).is_err() {
        BACKLOG.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        return false;
    }
    true
}

pub struct SessionRouterActor;

pub struct RouterArgs {
    pub config: SessionConfig,
    pub inbox: InboxConfig,
    pub inference: InferenceClient,
    pub store: Arc<dyn Store>,
    pub fault_injection: bool,
    /// This node's name in the inbox.
    pub node: String,
}

pub enum RouterMsg {
    /// Route a chat message to its conversation's session (no reply port for replays).
    Chat(ChatRequest, Option<ReplyPort>),
    /// Stop a conversation's session (after its data was erased).
    Evict { key: String },
    /// A session has been idle; stop it unless a message is on its way to it.
    SessionIdle { hash: String, last_seq: u64 },
}

struct Live {
    actor: ActorRef<SessionMsg>,
    /// The conversation key.
    key: String,
    /// Sequence number of the last message forwarded to it.
    seq: u64,
}

pub struct RouterState {
    config: SessionConfig,
    inbox: InboxConfig,
    inference: InferenceClient,
    store: Arc<dyn Store>,
    fault_injection: bool,
    node: String,
    /// Live sessions by conversation hash.
    sessions: HashMap<String, Live>,
    /// Sessions by actor id, to find the hash of a failed one.
    by_id: HashMap<ractor::ActorId, String>,
}

impl Actor for SessionRouterActor {
    type Msg = RouterMsg;
    type State = RouterState;
    type Arguments = RouterArgs;

    async fn pre_start(&self, _myself: ActorRef<RouterMsg>, args: RouterArgs) -> Result<RouterState, ActorProcessingErr> {
        telemetry::sessions_active(0);
        // A new router starts with an empty mailbox.
        BACKLOG.store(0, std::sync::atomic::Ordering::Release);
        telemetry::mailbox_depth(ROUTER_NAME, 0);
        Ok(RouterState {
            config: args.config,
            inbox: args.inbox,
            inference: args.inference,
            store: args.store,
            fault_injection: args.fault_injection,
            node: args.node,
            sessions: HashMap::new(),
            by_id: HashMap::new(),
        })
    }

    async fn handle(&self, myself: ActorRef<RouterMsg>, msg: RouterMsg, state: &mut RouterState) -> Result<(), ActorProcessingErr> {
        match msg {
            RouterMsg::Chat(request, reply) => {
                telemetry::mailbox_depth(ROUTER_NAME, BACKLOG.fetch_sub(1, std::sync::atomic::Ordering::AcqRel) - 1);
                let hash = conversation_hash(&request.conversation);
                if !state.sessions.contains_key(&hash) {
                    let args = SessionArgs {
                        key: request.conversation.clone(),
                        hash: hash.clone(),
                        platform: request.platform.to_string(),
                        config: state.config.clone(),
                        inbox: state.inbox.clone(),
                        inference: state.inference.clone(),
                        store: state.store.clone(),
                        fault_injection: state.fault_injection,
                    };
                    match Actor::spawn_linked(Some(format!("session.{hash}")), SessionActor, args, myself.get_cell()).await {
                        Ok((actor, _)) => {
                            state.by_id.insert(actor.get_id(), hash.clone());
                            state.sessions.insert(hash.clone(), Live { actor, key: request.conversation.clone(), seq: 0 });
                            telemetry::sessions_active(state.sessions.len());
                        }
                        Err(e) => {
                            tracing::error!(session = %hash, error = %e, "Could not start a session (its message stays in the inbox).");
                            if let Some(reply) = reply {
                                let _ = reply.send(Err(ChatError::Storage(format!("could not start the session: {e}"))));
                            }
                            return Ok(());
                        }
                    }
                }
                let live = state.sessions.get_mut(&hash).expect("inserted above");
                live.seq += 1;
                let seq = live.seq;
                if let Err(e) = live.actor.cast(SessionMsg::Chat { seq, request, reply }) {
                    tracing::warn!(session = %hash, error = %e, "Could not deliver a message to its session.");
                }
            }
            RouterMsg::SessionIdle { hash, last_seq } => {
                if let Some(live) = state.sessions.get(&hash) {
                    if live.seq == last_seq {
                        let live = state.sessions.remove(&hash).expect("present");
                        state.by_id.remove(&live.actor.get_id());
                        live.actor.stop(Some(STOP_REASON_SHUTDOWN.into()));
                        telemetry::sessions_active(state.sessions.len());
                        tracing::debug!(session = %hash, "Stopped an idle session.");
                    }
                }
            }
            RouterMsg::Evict { key } => {
                let hash = conversation_hash(&key);
                if let Some(live) = state.sessions.remove(&hash) {
                    state.by_id.remove(&live.actor.get_id());
                    live.actor.stop(Some(STOP_REASON_SHUTDOWN.into()));
                    telemetry::sessions_active(state.sessions.len());
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<RouterMsg>,
        evt: SupervisionEvent,
        state: &mut RouterState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, failure) = match evt {
            SupervisionEvent::ActorFailed(cell, err) => (cell, Some(err.to_string())),
            SupervisionEvent::ActorTerminated(cell, _, _) => (cell, None),
            _ => return Ok(()),
        };
        if let Some(hash) = state.by_id.remove(&cell.get_id()) {
            let live = state.sessions.remove(&hash);
            telemetry::sessions_active(state.sessions.len());
            if let (Some(reason), Some(live)) = (failure, live) {
                telemetry::actor_restarted("session");
                tracing::warn!(session = %hash, %reason, "A session actor failed; its unanswered messages are redelivered to a new one.");
                tokio::spawn(redeliver(myself, state.store.clone(), state.node.clone(), live.key, state.inbox.clone()));
            }
        }
        Ok(())
    }

    async fn post_stop(&self, myself: ActorRef<RouterMsg>, _state: &mut RouterState) -> Result<(), ActorProcessingErr> {
        myself.stop_children_and_wait(Some(STOP_REASON_SHUTDOWN.into()), Some(std::time::Duration::from_secs(10))).await;
        Ok(())
    }
}

/// After a session crash, the messages it held (still pending in the inbox) go to a new session
/// after a backoff, each with one more attempt counted; a message that keeps crashing sessions
/// ends in the dead-letter queue.
async fn redeliver(_router: ActorRef<RouterMsg>, store: Arc<dyn Store>, node: String, key: String, inbox: InboxConfig) {
    let failed_at = crate::store::now_ms();
    tokio::time::sleep(std::time::Duration::from_millis(inbox.retry_backoff_ms)).await;
    let pending = match store.inbox_pending(&node).await {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "Could not read the inbox after a session crash; its messages are replayed at the next start.");
            return;
        }
    };
    for mut entry in pending.into_iter().filter(|e| e.conversation == key && e.created_ms <= failed_at) {
        entry.attempts += 1;
        let reason = "the conversation's session crashed while holding this message";
        if entry.attempts >= inbox.max_attempts as i64 {
            match store.dead_letter(&entry, reason).await {
                Ok(id) => tracing::error!(dead_letter = id, "A message that kept crashing its session moved to the dead-letter queue."),
                Err(e) => tracing::error!(error = %e, "Could not write a dead letter."),
            }
            if let Some(req) = ChatRequest::from_inbox(&entry) {
                telemetry::message_answered(req.platform, "apology", std::time::Duration::ZERO);
                if let Some(route) = req.route {
                    crate::platforms::egress::send_reply(req.platform, &req.account, route, inbox.apology.clone(), None);
                }
            }
            continue;
        }
        telemetry::inbox_retry();
        if let Err(e) = store.inbox_attempt_failed(entry.id, entry.attempts, reason).await {
            tracing::warn!(error = %e, "Could not record a failed attempt.");
        }
        if let Some(req) = ChatRequest::from_inbox(&entry) {
            route_message(req, None);
        }
    }
}
