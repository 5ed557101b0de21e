//! Restart-with-backoff supervision for the actor tree.
//!
//! ractor reports child failures to the parent but has no restart policy of its own (a parent
//! stops by default when a child dies). [`SupervisorActor`] adds what OTP calls a one-for-one
//! supervisor: a failed or unexpectedly stopped child is restarted after an exponential backoff,
//! and more than `max_restarts` restarts within `restart_window_secs` make the supervisor give up
//! and fail itself, which escalates the problem to its own parent.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, SpawnErr, SupervisionEvent};
use serde::{Deserialize, Serialize};

use crate::telemetry;

/// The reason given to children that are stopped on purpose (shutdown or escalation);
/// a child that terminates with it is not restarted.
pub const STOP_REASON_SHUTDOWN: &str = "shutdown";

/// Supervision settings (`[supervision]` in the config file).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SupervisionConfig {
    /// How many restarts a supervisor tolerates within `restart_window_secs` before it gives up
    /// and escalates to its parent.
    pub max_restarts: u32,
    /// The sliding window, in seconds, over which restarts are counted.
    pub restart_window_secs: u64,
    /// Backoff before the first restart, in milliseconds; doubled for each further restart in
    /// the window.
    pub backoff_initial_ms: u64,
    /// Upper bound of the restart backoff, in milliseconds.
    pub backoff_max_ms: u64,
}

impl Default for SupervisionConfig {
    fn default() -> Self {
        Self { max_restarts: 5, restart_window_secs: 60, backoff_initial_ms: 100, backoff_max_ms: 5_000 }
    }
}

impl SupervisionConfig {
    /// Checks the values; errors name the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.restart_window_secs == 0 {
            return Err(format!("`supervision.restart_window_secs` must be at least 1. Given: {}", self.restart_window_secs));
        }
        if self.backoff_initial_ms == 0 {
            return Err("`supervision.backoff_initial_ms` must be at least 1. Given: 0".into());
        }
        if self.backoff_max_ms < self.backoff_initial_ms {
            return Err(format!(
                "`supervision.backoff_max_ms` must be at least `supervision.backoff_initial_ms` ({}). Given: {}",
                self.backoff_initial_ms, self.backoff_max_ms
            ));
        }
        Ok(())
    }
}

/// Counts restarts in a sliding window and computes the backoff: the restart-intensity logic,
/// free of any actor so it can be unit-tested.
#[derive(Debug)]
pub struct RestartTracker {
    /// The policy this tracker enforces.
    config: SupervisionConfig,
    /// When each restart inside the current window happened, oldest first.
    recent: VecDeque<Instant>,
}

/// What a supervisor should do about a failed child.
#[derive(Debug, PartialEq, Eq)]
pub enum RestartDecision {
    /// Restart the child after this delay.
    RestartAfter(Duration),
    /// Too many restarts in the window: give up and escalate to the parent.
    Escalate,
}

impl RestartTracker {
    pub fn new(config: SupervisionConfig) -> Self {
        Self { config, recent: VecDeque::new() }
    }

    /// Records a failure at `now` and decides whether to restart (and after how long) or escalate.
    pub fn on_failure(&mut self, now: Instant) -> RestartDecision {
        let window = Duration::from_secs(self.config.restart_window_secs);
        while self.recent.front().is_some_and(|t| now.duration_since(*t) > window) {
            self.recent.pop_front();
        }
        self.recent.push_back(now);
        if self.recent.len() > self.config.max_restarts as usize {
            return RestartDecision::Escalate;
        }
        let exp = (self.recent.len() as u32).saturating_sub(1).min(20);
        let backoff = self.config.backoff_initial_ms.saturating_mul(1u64 << exp).min(self.config.backoff_max_ms);
        RestartDecision::RestartAfter(Duration::from_millis(backoff))
    }
}

/// Spawns one child linked to the given supervisor cell.
pub type SpawnFn = Arc<dyn Fn(ActorCell) -> Pin<Box<dyn Future<Output = Result<ActorCell, SpawnErr>> + Send>> + Send + Sync>;

/// How to (re)start one child of a supervisor.
#[derive(Clone)]
pub struct ChildSpec {
    /// Stable name of the child, used in logs and in the `actor` label of the restart metric.
    pub name: String,
    /// Starts the child, linked to the supervisor passed in.
    pub spawn: SpawnFn,
}

impl ChildSpec {
    pub fn new<F, Fut>(name: impl Into<String>, f: F) -> Self
    where
        F: Fn(ActorCell) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<ActorCell, SpawnErr>> + Send + 'static,
    {
        Self { name: name.into(), spawn: Arc::new(move |cell| Box::pin(f(cell))) }
    }
}

/// Hooks a supervisor calls when a child goes down or comes back, e.g. so the batcher can
/// requeue the requests a dead worker held.
pub trait ChildObserver: Send + Sync + 'static {
    fn child_down(&self, _name: &str) {}
    fn child_up(&self, _name: &str, _cell: &ActorCell) {}
}

/// A one-for-one supervisor with restart backoff and intensity escalation.
pub struct SupervisorActor;

pub struct SupervisorArgs {
    /// Name of this supervisor, for logs.
    pub name: String,
    /// The children, started in order.
    pub children: Vec<ChildSpec>,
    /// Restart policy.
    pub config: SupervisionConfig,
    /// Optional observer of child lifecycle.
    pub observer: Option<Arc<dyn ChildObserver>>,
}

pub enum SupervisorMsg {
    /// Start (again) the child with this name.
    StartChild(String),
}

struct ChildSlot {
    /// How to start the child.
    spec: ChildSpec,
    /// The running instance, `None` while waiting for a restart.
    cell: Option<ActorCell>,
}

pub struct SupervisorState {
    /// Name of this supervisor, for logs.
    name: String,
    /// The children, in start order.
    slots: Vec<ChildSlot>,
    /// Restart intensity bookkeeping.
    tracker: RestartTracker,
    /// Lifecycle observer.
    observer: Option<Arc<dyn ChildObserver>>,
}

impl SupervisorState {
    fn slot_of(&self, cell: &ActorCell) -> Option<usize> {
        self.slots.iter().position(|s| s.cell.as_ref().is_some_and(|c| c.get_id() == cell.get_id()))
    }
}

impl Actor for SupervisorActor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(&self, myself: ActorRef<Self::Msg>, args: SupervisorArgs) -> Result<SupervisorState, ActorProcessingErr> {
        let mut slots = Vec::with_capacity(args.children.len());
        for spec in args.children {
            let cell = (spec.spawn)(myself.get_cell())
                .await
                .map_err(|e| format!("supervisor {} could not start child {}: {e}", args.name, spec.name))?;
            if let Some(obs) = &args.observer {
                obs.child_up(&spec.name, &cell);
            }
            slots.push(ChildSlot { spec, cell: Some(cell) });
        }
        tracing::debug!(supervisor = %args.name, children = slots.len(), "Supervisor started its children.");
        Ok(SupervisorState { name: args.name, slots, tracker: RestartTracker::new(args.config), observer: args.observer })
    }

    async fn handle(&self, myself: ActorRef<Self::Msg>, msg: SupervisorMsg, state: &mut SupervisorState) -> Result<(), ActorProcessingErr> {
        match msg {
            SupervisorMsg::StartChild(name) => {
                let Some(idx) = state.slots.iter().position(|s| s.spec.name == name) else { return Ok(()) };
                if state.slots[idx].cell.is_some() {
                    return Ok(());
                }
                telemetry::actor_restarted(&name);
                match (state.slots[idx].spec.spawn)(myself.get_cell()).await {
                    Ok(cell) => {
                        tracing::info!(supervisor = %state.name, child = %name, "Child restarted.");
                        if let Some(obs) = &state.observer {
                            obs.child_up(&name, &cell);
                        }
                        state.slots[idx].cell = Some(cell);
                    }
                    Err(e) => {
                        let reason = format!("restart failed: {e}");
                        self.child_gone(&myself, state, idx, &reason).await?;
                    }
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        evt: SupervisionEvent,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, reason) = match evt {
            SupervisionEvent::ActorFailed(cell, err) => (cell, format!("failed: {err}")),
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                if reason.as_deref() == Some(STOP_REASON_SHUTDOWN) {
                    if let Some(idx) = state.slot_of(&cell) {
                        state.slots[idx].cell = None;
                    }
                    return Ok(());
                }
                (cell, format!("stopped unexpectedly ({})", reason.unwrap_or_else(|| "no reason".into())))
            }
            _ => return Ok(()),
        };
        let Some(idx) = state.slot_of(&cell) else { return Ok(()) };
        state.slots[idx].cell = None;
        self.child_gone(&myself, state, idx, &reason).await
    }

    async fn post_stop(&self, myself: ActorRef<Self::Msg>, _state: &mut SupervisorState) -> Result<(), ActorProcessingErr> {
        myself.stop_children_and_wait(Some(STOP_REASON_SHUTDOWN.into()), Some(Duration::from_secs(30))).await;
        Ok(())
    }
}

impl SupervisorActor {
    /// A child is down: schedule its restart, or escalate when the intensity is exceeded.
    async fn child_gone(
        &self,
        myself: &ActorRef<SupervisorMsg>,
        state: &mut SupervisorState,
        idx: usize,
        reason: &str,
    ) -> Result<(), ActorProcessingErr> {
        let name = state.slots[idx].spec.name.clone();
        if let Some(obs) = &state.observer {
            obs.child_down(&name);
        }
        match state.tracker.on_failure(Instant::now()) {
            RestartDecision::RestartAfter(delay) => {
                tracing::warn!(supervisor = %state.name, child = %name, %reason, backoff_ms = delay.as_millis() as u64,
                    "Child went down; restarting it after a backoff.");
                let n = name.clone();
                myself.send_after(delay, move || SupervisorMsg::StartChild(n));
                Ok(())
            }
            RestartDecision::Escalate => {
                tracing::error!(supervisor = %state.name, child = %name, %reason,
                    "Restart intensity exceeded; stopping all children and escalating to the parent.");
                myself.stop_children_and_wait(Some(STOP_REASON_SHUTDOWN.into()), Some(Duration::from_secs(10))).await;
                telemetry::supervisor_escalated(&state.name);
                Err(format!("supervisor {} gave up: child {name} {reason}; too many restarts in the window", state.name).into())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(max: u32) -> SupervisionConfig {
        SupervisionConfig { max_restarts: max, restart_window_secs: 10, backoff_initial_ms: 100, backoff_max_ms: 1_000 }
    }

    #[test]
    fn backoff_doubles_and_caps_then_escalates() {
        let mut t = RestartTracker::new(cfg(5));
        let now = Instant::now();
        let delays: Vec<_> = (0..5).map(|_| t.on_failure(now)).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000].map(|ms| RestartDecision::RestartAfter(Duration::from_millis(ms))));
        assert_eq!(t.on_failure(now), RestartDecision::Escalate);
    }

    #[test]
    fn old_restarts_leave_the_window() {
        let mut t = RestartTracker::new(cfg(1));
        let start = Instant::now();
        assert!(matches!(t.on_failure(start), RestartDecision::RestartAfter(_)));
        // 11 s later the first failure is outside the 10 s window.
        assert_eq!(t.on_failure(start + Duration::from_secs(11)), RestartDecision::RestartAfter(Duration::from_millis(100)));
        assert_eq!(t.on_failure(start + Duration::from_secs(12)), RestartDecision::Escalate);
    }

    #[test]
    fn zero_restarts_escalates_immediately() {
        let mut t = RestartTracker::new(cfg(0));
        assert_eq!(t.on_failure(Instant::now()), RestartDecision::Escalate);
    }

    #[test]
    fn validate_names_the_key() {
        let c = SupervisionConfig { restart_window_secs: 0, ..Default::default() };
        assert!(c.validate().unwrap_err().contains("supervision.restart_window_secs"));
    }
}
