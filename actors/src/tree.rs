//! Builds the supervision tree of ARCHITECTURE.md:
//!
//! ```text
//! root
//! ├── ingress        (ingress.telegram.<account>: the Telegram pollers)
//! ├── sessions       (sessions.router → session.<hash> …)
//! ├── inference      (inference.batcher, inference.worker.N …)
//! ├── egress         (egress.<platform>.<account>: one actor per platform account)
//! └── housekeeping   (periodic upkeep)
//! ```

use std::collections::HashMap;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef};
use tokio::task::JoinHandle;

use crate::egress::{EgressActor, EgressArgs, PlatformSender};
use crate::inference::worker::WorkerMsg;
use crate::inference::{BatcherActor, BatcherArgs, BatcherMsg, InferenceClient, InferenceConfig, WorkerActor, WorkerArgs};
use crate::ingress::telegram::{TelegramBot, TelegramPollerActor};
use crate::model::{ModelAssets, SessionOptions};
use crate::names;
use crate::session::actor::SessionDeps;
use crate::session::{InboxConfig, RouterArgs, SessionConfig, SessionRouterActor};
use crate::store::Store;
use crate::supervisor::{ChildObserver, ChildSpec, SupervisionConfig, SupervisorActor, SupervisorArgs, SupervisorMsg};
use crate::telemetry;

/// Everything the tree needs to start.
pub struct TreeConfig {
    pub assets: Arc<ModelAssets>,
    pub env: ort::environment::Environment,
    pub session_options: SessionOptions,
    pub inference: InferenceConfig,
    pub sessions: SessionConfig,
    pub inbox: InboxConfig,
    pub store: Arc<dyn Store>,
    /// This node's name in the inbox.
    pub node: String,
    /// One egress actor per platform account.
    pub egress: Vec<Arc<dyn PlatformSender>>,
    /// Telegram bots in polling mode (one supervised polling actor each).
    pub telegram_pollers: Vec<Arc<TelegramBot>>,
    pub supervision: SupervisionConfig,
    pub fault_injection: bool,
    /// Called every few seconds by the housekeeping actor (e.g. metrics upkeep).
    pub upkeep: Arc<dyn Fn() + Send + Sync>,
}

/// A running tree.
pub struct Tree {
    pub root: ActorRef<SupervisorMsg>,
    /// Finishes when the root stops; if that happens before shutdown, the tree gave up.
    pub handle: JoinHandle<()>,
    pub inference: InferenceClient,
    /// Workers registered with the batcher (readiness).
    pub ready_workers: Arc<AtomicUsize>,
}

/// Watches the inference supervisor's children: tells the batcher when a worker goes down (so
/// it can retry that worker's requests), and a restarted batcher which workers are alive.
#[derive(Default)]
struct WorkerObserver {
    /// The live workers, by id, from the supervisor's start events.
    workers: Mutex<HashMap<usize, ActorCell>>,
}

impl ChildObserver for WorkerObserver {
    fn child_down(&self, name: &str) {
        let Some(id) = names::worker_id(name) else { return };
        self.workers.lock().expect("workers lock").remove(&id);
        if let Some(b) = ActorRef::<BatcherMsg>::where_is(names::BATCHER.to_string()) {
            let _ = b.cast(BatcherMsg::WorkerDown { worker: id });
        }
    }

    fn child_up(&self, name: &str, cell: &ActorCell) {
        let mut workers = self.workers.lock().expect("workers lock");
        if let Some(id) = names::worker_id(name) {
            workers.insert(id, cell.clone());
        } else if name == names::BATCHER {
            // A new batcher knows no worker yet: the live ones introduce themselves again.
            for w in workers.values() {
                let _ = ActorRef::<WorkerMsg>::from(w.clone()).cast(WorkerMsg::Announce);
            }
        }
    }
}

pub async fn start(cfg: TreeConfig) -> Result<Tree, ActorProcessingErr> {
    let cfg = Arc::new(cfg);
    let ready_workers = Arc::new(AtomicUsize::new(0));
    let client = InferenceClient::new(cfg.assets.clone(), cfg.inference.clone());
    let root_args = SupervisorArgs {
        name: names::ROOT.into(),
        // Inference first so sessions find the batcher; ingress last so nothing arrives early.
        children: vec![
            inference_spec(cfg.clone(), ready_workers.clone()),
            sessions_spec(cfg.clone(), client.clone()),
            egress_spec(cfg.clone()),
            housekeeping_spec(&cfg),
            ingress_spec(cfg.clone()),
        ],
        config: cfg.supervision.clone(),
        observer: None,
    };
    let (root, handle) = Actor::spawn(Some(names::ROOT.into()), SupervisorActor, root_args).await?;
    Ok(Tree { root, handle, inference: client, ready_workers })
}

/// The inference supervisor: the batcher, then the workers.
fn inference_spec(cfg: Arc<TreeConfig>, ready_workers: Arc<AtomicUsize>) -> ChildSpec {
    let ready = ready_workers;
    ChildSpec::new("inference", move |parent| {
        let cfg = cfg.clone();
        let ready = ready.clone();
        async move {
            let mut children = Vec::new();
            {
                let cfg = cfg.clone();
                let ready = ready.clone();
                children.push(ChildSpec::new(names::BATCHER, move |p| {
                    let args = BatcherArgs { config: cfg.inference.clone(), ready_workers: ready.clone() };
                    async move { Actor::spawn_linked(Some(names::BATCHER.into()), BatcherActor, args, p).await.map(|(a, _)| a.get_cell()) }
                }));
            }
            for id in 0..cfg.inference.workers {
                let cfg = cfg.clone();
                children.push(ChildSpec::new(names::worker(id), move |p| {
                    let args = WorkerArgs {
                        id,
                        assets: cfg.assets.clone(),
                        env: cfg.env.clone(),
                        session: cfg.session_options.clone(),
                        max_batch: cfg.inference.max_batch,
                    };
                    async move { Actor::spawn_linked(Some(names::worker(id)), WorkerActor, args, p).await.map(|(a, _)| a.get_cell()) }
                }));
            }
            let args = SupervisorArgs {
                name: names::INFERENCE.into(),
                children,
                config: cfg.supervision.clone(),
                observer: Some(Arc::new(WorkerObserver::default())),
            };
            Actor::spawn_linked(Some(names::INFERENCE.into()), SupervisorActor, args, parent).await.map(|(a, _)| a.get_cell())
        }
    })
}

/// The session router (which supervises the session actors itself).
fn sessions_spec(cfg: Arc<TreeConfig>, client: InferenceClient) -> ChildSpec {
    ChildSpec::new(names::SESSIONS, move |parent| {
        let deps = SessionDeps {
            config: cfg.sessions.clone(),
            inbox: cfg.inbox.clone(),
            inference: client.clone(),
            store: cfg.store.clone(),
            fault_injection: cfg.fault_injection,
        };
        let args = RouterArgs { deps, node: cfg.node.clone() };
        async move { Actor::spawn_linked(Some(names::ROUTER.into()), SessionRouterActor, args, parent).await.map(|(a, _)| a.get_cell()) }
    })
}

/// The ingress supervisor: one polling actor per Telegram bot in polling mode.
fn ingress_spec(cfg: Arc<TreeConfig>) -> ChildSpec {
    ChildSpec::new(names::INGRESS, move |parent| {
        let mut children = Vec::new();
        for bot in &cfg.telegram_pollers {
            let name = names::telegram_poller(bot.account());
            let bot = bot.clone();
            children.push(ChildSpec::new(name.clone(), move |p| {
                let (bot, name) = (bot.clone(), name.clone());
                async move { Actor::spawn_linked(Some(name), TelegramPollerActor, bot, p).await.map(|(a, _)| a.get_cell()) }
            }));
        }
        let args = SupervisorArgs { name: names::INGRESS.into(), children, config: cfg.supervision.clone(), observer: None };
        async move { Actor::spawn_linked(Some(names::INGRESS.into()), SupervisorActor, args, parent).await.map(|(a, _)| a.get_cell()) }
    })
}

/// The egress supervisor: one actor per platform account.
fn egress_spec(cfg: Arc<TreeConfig>) -> ChildSpec {
    ChildSpec::new(names::EGRESS, move |parent| {
        let children = cfg
            .egress
            .iter()
            .map(|sender| {
                let name = names::egress(sender.platform(), sender.account());
                let sender = sender.clone();
                ChildSpec::new(name.clone(), move |p| {
                    let args = EgressArgs { sender: sender.clone(), max_attempts: 5 };
                    let name = name.clone();
                    async move { Actor::spawn_linked(Some(name), EgressActor, args, p).await.map(|(a, _)| a.get_cell()) }
                })
            })
            .collect();
        let args = SupervisorArgs { name: names::EGRESS.into(), children, config: cfg.supervision.clone(), observer: None };
        async move { Actor::spawn_linked(Some(names::EGRESS.into()), SupervisorActor, args, parent).await.map(|(a, _)| a.get_cell()) }
    })
}

fn housekeeping_spec(cfg: &TreeConfig) -> ChildSpec {
    let upkeep = cfg.upkeep.clone();
    ChildSpec::new(names::HOUSEKEEPING, move |parent| {
        let upkeep = upkeep.clone();
        async move { Actor::spawn_linked(Some(names::HOUSEKEEPING.into()), HousekeepingActor, upkeep, parent).await.map(|(a, _)| a.get_cell()) }
    })
}

/// Periodic upkeep: uptime, and whatever the daemon registered (metrics exporter upkeep).
pub struct HousekeepingActor;

pub enum HousekeepingMsg {
    Tick,
}

pub struct HousekeepingState {
    started: Instant,
    upkeep: Arc<dyn Fn() + Send + Sync>,
}

impl Actor for HousekeepingActor {
    type Msg = HousekeepingMsg;
    type State = HousekeepingState;
    type Arguments = Arc<dyn Fn() + Send + Sync>;

    async fn pre_start(&self, myself: ActorRef<HousekeepingMsg>, upkeep: Self::Arguments) -> Result<HousekeepingState, ActorProcessingErr> {
        myself.send_interval(Duration::from_secs(1), || HousekeepingMsg::Tick);
        Ok(HousekeepingState { started: Instant::now(), upkeep })
    }

    async fn handle(
        &self,
        _myself: ActorRef<HousekeepingMsg>,
        _msg: HousekeepingMsg,
        state: &mut HousekeepingState,
    ) -> Result<(), ActorProcessingErr> {
        (state.upkeep)();
        metrics::gauge!(telemetry::UPTIME).set(state.started.elapsed().as_secs_f64());
        Ok(())
    }
}
