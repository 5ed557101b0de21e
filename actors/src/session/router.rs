//! The session router: owns the map from conversation hash to session actor, spawning one on
//! first use and forwarding each message without waiting, so conversations run in parallel
//! while each one's messages stay in order (its actor's mailbox is FIFO).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, MessagingErr, SupervisionEvent};

use super::actor::{SessionActor, SessionArgs, SessionDeps, SessionMsg};
use super::{ChatError, ChatRequest, conversation_hash};
use crate::egress::{DeliveryKey, Egress};
use crate::ingress;
use crate::names;
use crate::store::{InboxEntry, Store, now_ms};
use crate::supervisor::STOP_REASON_SHUTDOWN;
use crate::telemetry::{self, AnswerOutcome};

/// Chat messages cast to the router and not yet handled: its mailbox depth.
static BACKLOG: AtomicI64 = AtomicI64::new(0);

/// Inbox rows on their way to or held by a session (queued, being answered, or awaiting the
/// delivery report). The sweeper leaves these alone; every other pending row of this node is
/// stranded and handed back to its session.
static HELD: LazyLock<Mutex<HashSet<i64>>> = LazyLock::new(Default::default);

fn held() -> std::sync::MutexGuard<'static, HashSet<i64>> {
    HELD.lock().unwrap_or_else(|e| e.into_inner())
}

/// The row is no longer held by a session (finished, or its session stopped).
pub(crate) fn release(inbox_id: i64) {
    held().remove(&inbox_id);
}

/// Hands an accepted message to the session router. When the router is not running
/// (restarting) the request comes back; its message stays in the inbox (the sweeper or the
/// next start hands it over again).
pub fn route_message(req: ChatRequest) -> Result<(), ChatRequest> {
    let Some(router) = ActorRef::<RouterMsg>::where_is(names::ROUTER.to_string()) else { return Err(req) };
    let inbox_id = req.inbox_id;
    held().insert(inbox_id);
    telemetry::mailbox_depth(names::ROUTER, BACKLOG.fetch_add(1, Ordering::AcqRel) + 1);
    match router.cast(RouterMsg::Chat(req)) {
        Ok(()) => Ok(()),
        Err(e) => {
            BACKLOG.fetch_sub(1, Ordering::AcqRel);
            release(inbox_id);
            match e {
                MessagingErr::SendErr(RouterMsg::Chat(req)) => Err(req),
                other => {
                    tracing::error!(error = %other, "The session router refused a message; it stays in the inbox.");
                    Ok(())
                }
            }
        }
    }
}

/// Stops a conversation's session, if it runs (after its data was erased or moved).
pub fn evict(key: &str) {
    if let Some(r) = ActorRef::<RouterMsg>::where_is(names::ROUTER.to_string()) {
        let _ = r.cast(RouterMsg::Evict { key: key.to_string() });
    }
}

/// Moves a conversation to a new key (a Telegram group upgraded to a supergroup) and stops
/// the old key's session, so the next message rebuilds it under the new key.
pub async fn move_conversation(store: &dyn Store, from: &str, to: &str) {
    if let Err(e) = store.rename_conversation(from, to, &conversation_hash(to)).await {
        tracing::error!(error = %e, "Could not move a migrated group's conversation.");
        return;
    }
    evict(from);
    tracing::info!(from_hash = %conversation_hash(from), to_hash = %conversation_hash(to), "A group was upgraded to a supergroup; its conversation moved.");
}

pub struct SessionRouterActor;

pub struct RouterArgs {
    /// What every session gets.
    pub deps: SessionDeps,
    /// This node's name in the inbox.
    pub node: String,
}

pub enum RouterMsg {
    /// Route a chat message to its conversation's session.
    Chat(ChatRequest),
    /// Stop a conversation's session (after its data was erased or moved).
    Evict { key: String },
    /// A session has been idle; stop it unless a message is on its way to it.
    SessionIdle { hash: String, last_seq: u64 },
    /// Timer after a session crash: hand its unanswered messages to a new session.
    Redeliver { key: String, failed_at_ms: i64 },
    /// Timer (`inbox.sweep_interval_secs`): hand stranded rows back, expire old de-dup keys.
    Sweep,
}

struct Live {
    actor: ActorRef<SessionMsg>,
    /// The conversation key.
    key: String,
    /// Sequence number of the last message forwarded to it.
    seq: u64,
}

pub struct RouterState {
    deps: SessionDeps,
    node: String,
    /// Live sessions by conversation hash.
    sessions: HashMap<String, Live>,
    /// Sessions by actor id, to find the hash of a failed one.
    by_id: HashMap<ractor::ActorId, String>,
    /// Sessions started so far: part of their names, so a new one never collides with a
    /// stopping one.
    generation: u64,
}

impl Actor for SessionRouterActor {
    type Msg = RouterMsg;
    type State = RouterState;
    type Arguments = RouterArgs;

    async fn pre_start(&self, myself: ActorRef<RouterMsg>, args: RouterArgs) -> Result<RouterState, ActorProcessingErr> {
        myself.send_interval(Duration::from_secs(args.deps.inbox.sweep_interval_secs.max(1)), || RouterMsg::Sweep);
        telemetry::sessions_active(0);
        // A new router starts with an empty mailbox.
        BACKLOG.store(0, Ordering::Release);
        telemetry::mailbox_depth(names::ROUTER, 0);
        Ok(RouterState { deps: args.deps, node: args.node, sessions: HashMap::new(), by_id: HashMap::new(), generation: 0 })
    }

    async fn handle(&self, myself: ActorRef<RouterMsg>, msg: RouterMsg, state: &mut RouterState) -> Result<(), ActorProcessingErr> {
        match msg {
            RouterMsg::Chat(request) => {
                telemetry::mailbox_depth(names::ROUTER, BACKLOG.fetch_sub(1, Ordering::AcqRel) - 1);
                state.forward(&myself, request).await;
            }
            RouterMsg::SessionIdle { hash, last_seq } => {
                if state.sessions.get(&hash).is_some_and(|live| live.seq == last_seq) {
                    state.stop(&hash);
                    tracing::debug!(session = %hash, "Stopped an idle session.");
                }
            }
            RouterMsg::Evict { key } => state.stop(&conversation_hash(&key)),
            RouterMsg::Redeliver { key, failed_at_ms } => state.redeliver(&key, failed_at_ms).await,
            RouterMsg::Sweep => state.sweep().await,
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
        let Some(hash) = state.by_id.remove(&cell.get_id()) else { return Ok(()) };
        let live = state.sessions.remove(&hash);
        telemetry::sessions_active(state.sessions.len());
        if let (Some(reason), Some(live)) = (failure, live) {
            telemetry::actor_restarted(names::SESSION_LABEL);
            tracing::warn!(session = %hash, %reason, "A session actor failed; its unanswered messages are redelivered to a new one.");
            let (key, failed_at_ms) = (live.key, now_ms());
            myself.send_after(Duration::from_millis(state.deps.inbox.retry_backoff_ms), move || RouterMsg::Redeliver { key, failed_at_ms });
        }
        Ok(())
    }

    async fn post_stop(&self, myself: ActorRef<RouterMsg>, _state: &mut RouterState) -> Result<(), ActorProcessingErr> {
        myself.stop_children_and_wait(Some(STOP_REASON_SHUTDOWN.into()), Some(Duration::from_secs(10))).await;
        Ok(())
    }
}

impl RouterState {
    /// Forwards a message to its session, starting the session on first use.
    async fn forward(&mut self, myself: &ActorRef<RouterMsg>, request: ChatRequest) {
        let hash = conversation_hash(&request.conversation);
        if !self.sessions.contains_key(&hash) {
            let args = SessionArgs {
                key: request.conversation.clone(),
                hash: hash.clone(),
                platform: request.platform,
                account: request.account.clone(),
                deps: self.deps.clone(),
            };
            self.generation += 1;
            match Actor::spawn_linked(Some(names::session(&hash, self.generation)), SessionActor, args, myself.get_cell()).await {
                Ok((actor, _)) => {
                    self.by_id.insert(actor.get_id(), hash.clone());
                    self.sessions.insert(hash.clone(), Live { actor, key: request.conversation.clone(), seq: 0 });
                    telemetry::sessions_active(self.sessions.len());
                }
                Err(e) => {
                    release(request.inbox_id);
                    tracing::error!(session = %hash, error = %e, "Could not start a session (its message stays in the inbox).");
                    if let Some(caller) = request.caller {
                        let _ = caller.reply.send(Err(ChatError::Storage(format!("could not start the session: {e}"))));
                    }
                    return;
                }
            }
        }
        let live = self.sessions.get_mut(&hash).expect("inserted above");
        live.seq += 1;
        if let Err(e) = live.actor.cast(SessionMsg::Chat { seq: live.seq, request }) {
            tracing::warn!(session = %hash, error = %e, "Could not deliver a message to its session.");
        }
    }

    fn stop(&mut self, hash: &str) {
        if let Some(live) = self.sessions.remove(hash) {
            self.by_id.remove(&live.actor.get_id());
            live.actor.stop(Some(STOP_REASON_SHUTDOWN.into()));
            telemetry::sessions_active(self.sessions.len());
        }
    }

    /// After a session crash, the messages it held (still pending in the inbox) go to a new
    /// session, each with one more attempt counted; a message that keeps crashing sessions
    /// ends in the dead-letter queue.
    async fn redeliver(&self, key: &str, failed_at_ms: i64) {
        let pending = match self.deps.store.inbox_pending(&self.node).await {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "Could not read the inbox after a session crash; its messages are replayed at the next start.");
                return;
            }
        };
        let reason = "the conversation's session crashed while holding this message";
        for mut entry in pending.into_iter().filter(|e| e.conversation == key && e.created_ms <= failed_at_ms) {
            entry.attempts += 1;
            if entry.attempts >= i64::from(self.deps.inbox.max_attempts) {
                self.dead_letter(&entry, reason).await;
                continue;
            }
            telemetry::inbox_retry();
            if let Err(e) = self.deps.store.inbox_attempt_failed(entry.id, entry.attempts, reason).await {
                tracing::warn!(error = %e, "Could not record a failed attempt.");
            }
            if let Err(e) = ingress::resume(&entry) {
                tracing::warn!(inbox_id = entry.id, error = %e, "Could not redeliver a message; it is replayed at the next start.");
            }
        }
    }

    /// Hands this node's pending rows that no session holds back to their sessions (stranded
    /// while the router restarted, or by a session stopped with messages queued), and forgets
    /// Telegram de-dup keys older than the window.
    async fn sweep(&self) {
        let inbox = &self.deps.inbox;
        let now = now_ms();
        let settled = now - (inbox.sweep_interval_secs as i64) * 1000;
        match self.deps.store.inbox_pending(&self.node).await {
            Ok(pending) => {
                let stranded: Vec<_> = pending.into_iter().filter(|e| e.created_ms < settled && !held().contains(&e.id)).collect();
                if !stranded.is_empty() {
                    tracing::warn!(count = stranded.len(), "Handing stranded inbox rows back to their sessions.");
                    telemetry::inbox_swept(stranded.len());
                }
                for entry in &stranded {
                    if let Err(e) = ingress::resume(entry) {
                        tracing::warn!(inbox_id = entry.id, error = %e, "Could not hand a stranded message back.");
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "The sweeper could not read the inbox."),
        }
        let window_ms = (inbox.telegram_dedup_window_secs as i64).saturating_mul(1000);
        if let Err(e) = self.deps.store.inbox_expire_dedup("telegram:", now - window_ms).await {
            tracing::warn!(error = %e, "Could not expire old Telegram de-dup keys.");
        }
    }

    async fn dead_letter(&self, entry: &InboxEntry, reason: &str) {
        match self.deps.store.dead_letter(entry, reason).await {
            Ok(id) => tracing::error!(dead_letter = id, "A message that kept crashing its session moved to the dead-letter queue."),
            Err(e) => tracing::error!(error = %e, "Could not write a dead letter."),
        }
        let Some(inbound) = ingress::row::inbound_of(entry) else { return };
        telemetry::message_answered(inbound.platform, AnswerOutcome::Apology, Duration::ZERO);
        if let Some(egress) = inbound.reply_to.is_platform().then(|| Egress::of(inbound.platform, &inbound.account)).flatten() {
            egress.reply(inbound.reply_to, self.deps.inbox.apology.clone(), DeliveryKey::for_inbox(None), None);
        }
    }
}
