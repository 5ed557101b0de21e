//! Builds the supervision tree of ARCHITECTURE.md:
//!
//! ```text
//! root
//! ├── ingress        (ingress.http; platform ingresses join here)
//! ├── sessions       (sessions.router → session.<hash> …)
//! ├── inference      (inference.batcher, inference.worker.N …)
//! ├── egress         (one actor per platform account, once platforms exist)
//! └── housekeeping   (periodic upkeep)
//! ```

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::task::JoinHandle;

use crate::inference::worker::worker_name;
use crate::inference::{BATCHER_NAME, BatcherActor, BatcherArgs, BatcherMsg, InferenceClient, InferenceConfig, WorkerActor, WorkerArgs};
use crate::model::{ModelAssets, SessionOptions};
use crate::platforms::egress::{EgressActor, EgressArgs, PlatformSender, egress_name};
use crate::platforms::telegram_bot::{TelegramBot, TelegramPollerActor};
use crate::session::actor::ReplyPort;
use crate::session::{ChatError, ChatRequest, InboxConfig, ROUTER_NAME, RouterArgs, RouterMsg, SessionConfig, SessionRouterActor};
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

/// Registered name of the HTTP ingress actor.
pub const HTTP_INGRESS_NAME: &str = "ingress.http";

/// Tells the batcher when a worker goes down, so it can retry that worker's requests.
struct WorkerObserver;

impl ChildObserver for WorkerObserver {
    fn child_down(&self, name: &str) {
        if let Some(id) = name.strip_prefix("inference.worker.").and_then(|n| n.parse().ok()) {
            if let Some(b) = ActorRef::<BatcherMsg>::where_is(BATCHER_NAME.to_string()) {
                let _ = b.cast(BatcherMsg::WorkerDown { worker: id });
            }
        }
    }
}

pub async fn start(cfg: TreeConfig) -> Result<Tree, ActorProcessingErr> {
    let cfg = Arc::new(cfg);
    let ready_workers = Arc::new(AtomicUsize::new(0));
    let client = InferenceClient::new(cfg.assets.clone(), cfg.inference.clone());

    let inference_spec = {
        let cfg = cfg.clone();
        let ready = ready_workers.clone();
        ChildSpec::new("inference", move |parent| {
            let cfg = cfg.clone();
            let ready = ready.clone();
            async move {
                let mut children = Vec::new();
                {
                    let cfg = cfg.clone();
                    let ready = ready.clone();
                    children.push(ChildSpec::new(BATCHER_NAME, move |p| {
                        let args = BatcherArgs { config: cfg.inference.clone(), ready_workers: ready.clone() };
                        async move { Actor::spawn_linked(Some(BATCHER_NAME.into()), BatcherActor, args, p).await.map(|(a, _)| a.get_cell()) }
                    }));
                }
                for id in 0..cfg.inference.workers {
                    let cfg = cfg.clone();
                    children.push(ChildSpec::new(worker_name(id), move |p| {
                        let args = WorkerArgs {
                            id,
                            assets: cfg.assets.clone(),
                            env: cfg.env.clone(),
                            session: cfg.session_options.clone(),
                            max_batch: cfg.inference.max_batch,
                        };
                        async move { Actor::spawn_linked(Some(worker_name(id)), WorkerActor, args, p).await.map(|(a, _)| a.get_cell()) }
                    }));
                }
                let args = SupervisorArgs {
                    name: "inference".into(),
                    children,
                    config: cfg.supervision.clone(),
                    observer: Some(Arc::new(WorkerObserver)),
                };
                Actor::spawn_linked(Some("inference".into()), SupervisorActor, args, parent).await.map(|(a, _)| a.get_cell())
            }
        })
    };

    let sessions_spec = {
        let cfg = cfg.clone();
        let client = client.clone();
        ChildSpec::new("sessions", move |parent| {
            let args = RouterArgs {
                config: cfg.sessions.clone(),
                inbox: cfg.inbox.clone(),
                inference: client.clone(),
                store: cfg.store.clone(),
                fault_injection: cfg.fault_injection,
                node: cfg.node.clone(),
            };
            async move { Actor::spawn_linked(Some(ROUTER_NAME.into()), SessionRouterActor, args, parent).await.map(|(a, _)| a.get_cell()) }
        })
    };

    let ingress_spec = {
        let cfg = cfg.clone();
        ChildSpec::new("ingress", move |parent| {
            let http = ChildSpec::new(HTTP_INGRESS_NAME, |p| async move {
                Actor::spawn_linked(Some(HTTP_INGRESS_NAME.into()), HttpIngressActor, (), p).await.map(|(a, _)| a.get_cell())
            });
            let mut children = vec![http];
            for bot in &cfg.telegram_pollers {
                let name = format!("ingress.telegram.{}", bot.account());
                let bot = bot.clone();
                children.push(ChildSpec::new(name.clone(), move |p| {
                    let (bot, name) = (bot.clone(), name.clone());
                    async move { Actor::spawn_linked(Some(name), TelegramPollerActor, bot, p).await.map(|(a, _)| a.get_cell()) }
                }));
            }
            let args = SupervisorArgs { name: "ingress".into(), children, config: cfg.supervision.clone(), observer: None };
            async move { Actor::spawn_linked(Some("ingress".into()), SupervisorActor, args, parent).await.map(|(a, _)| a.get_cell()) }
        })
    };

    let egress_spec = {
        let cfg = cfg.clone();
        ChildSpec::new("egress", move |parent| {
            let children = cfg
                .egress
                .iter()
                .map(|sender| {
                    let name = egress_name(sender.platform(), sender.account());
                    let (sender, store) = (sender.clone(), cfg.store.clone());
                    ChildSpec::new(name.clone(), move |p| {
                        let args = EgressArgs { sender: sender.clone(), store: store.clone(), max_attempts: 5 };
                        let name = name.clone();
                        async move { Actor::spawn_linked(Some(name), EgressActor, args, p).await.map(|(a, _)| a.get_cell()) }
                    })
                })
                .collect();
            let args = SupervisorArgs { name: "egress".into(), children, config: cfg.supervision.clone(), observer: None };
            async move { Actor::spawn_linked(Some("egress".into()), SupervisorActor, args, parent).await.map(|(a, _)| a.get_cell()) }
        })
    };

    let housekeeping_spec = {
        let upkeep = cfg.upkeep.clone();
        ChildSpec::new("housekeeping", move |parent| {
            let upkeep = upkeep.clone();
            async move { Actor::spawn_linked(Some("housekeeping".into()), HousekeepingActor, upkeep, parent).await.map(|(a, _)| a.get_cell()) }
        })
    };

    let root_args = SupervisorArgs {
        name: "root".into(),
        // Inference first so sessions find the batcher; ingress last so nothing arrives early.
        children: vec![inference_spec, sessions_spec, egress_spec, housekeeping_spec, ingress_spec],
        config: cfg.supervision.clone(),
        observer: None,
    };
    let (root, handle) = Actor::spawn(Some("root".into()), SupervisorActor, root_args).await?;
    Ok(Tree { root, handle, inference: client, ready_workers })
}

/// Normalizes requests of the generic HTTP chat API and hands them to the session router.
pub struct HttpIngressActor;

pub enum IngressMsg {
    /// A message already stored in the inbox; the reply port is absent for replays.
    Chat(ChatRequest, Option<ReplyPort>),
}

impl Actor for HttpIngressActor {
    type Msg = IngressMsg;
    type State = ();
    type Arguments = ();

    async fn pre_start(&self, _myself: ActorRef<IngressMsg>, _args: ()) -> Result<(), ActorProcessingErr> {
        Ok(())
    }

    async fn handle(&self, _myself: ActorRef<IngressMsg>, msg: IngressMsg, _state: &mut ()) -> Result<(), ActorProcessingErr> {
        match msg {
            IngressMsg::Chat(req, reply) => {
                telemetry::message_received(req.platform);
                if ActorRef::<RouterMsg>::where_is(ROUTER_NAME.to_string()).is_none() {
                    if let Some(reply) = reply {
                        let _ = reply.send(Err(ChatError::Internal("the session router is restarting".into())));
                    }
                } else if !crate::session::route_message(req, reply) {
                    tracing::warn!("The session router refused a message; it stays in the inbox.");
                }
            }
        }
        Ok(())
    }
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
