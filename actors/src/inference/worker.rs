//! An inference worker: an actor that owns one ONNX Runtime session, running the batching
//! engine on a dedicated OS thread (ORT's `run` is blocking and needs `&mut Session`).

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, TryRecvError};

use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::batcher::BatcherMsg;
use super::{Engine, GenRequest};
use crate::model::{ModelAssets, ModelError, OnnxModel, SessionOptions};

/// Commands to a worker thread.
pub enum WorkerJob {
    /// Requests to add to the batch.
    Run(Vec<GenRequest>),
    /// Finish the current step and exit.
    Stop,
}

pub struct WorkerActor;

pub struct WorkerArgs {
    /// Index of this worker in the pool (stable across restarts).
    pub id: usize,
    /// Tokenizer, template and model facts.
    pub assets: Arc<ModelAssets>,
    /// The ORT environment (one per process).
    pub env: ort::environment::Environment,
    /// Session settings (threads, device).
    pub session: SessionOptions,
    /// Most sequences in one batch.
    pub max_batch: usize,
}

pub enum WorkerMsg {
    /// A (new) batcher asks workers to introduce themselves.
    Announce,
    /// The worker thread ended because of an error or panic; the actor fails so that its
    /// supervisor restarts it.
    ThreadExited(String),
}

pub struct WorkerState {
    id: usize,
    /// Job channel into the thread.
    jobs: Sender<WorkerJob>,
    max_batch: usize,
}

impl WorkerState {
    fn announce(&self) {
        if let Some(b) = ActorRef::<BatcherMsg>::where_is(crate::names::BATCHER.to_string()) {
            let _ = b.cast(BatcherMsg::WorkerReady { worker: self.id, jobs: self.jobs.clone(), capacity: self.max_batch });
        }
    }
}

impl Actor for WorkerActor {
    type Msg = WorkerMsg;
    type State = WorkerState;
    type Arguments = WorkerArgs;

    async fn pre_start(&self, myself: ActorRef<WorkerMsg>, args: WorkerArgs) -> Result<WorkerState, ActorProcessingErr> {
        let WorkerArgs { id, assets, env, session, max_batch } = args;
        let onnx_path = assets.onnx_path.clone();
        let model = tokio::task::spawn_blocking(move || OnnxModel::load(&env, &onnx_path, &session)).await??;
        tracing::info!(worker = id, device = ?model.device, layers = model.layers, "Inference worker loaded the model.");
        let (tx, rx) = std::sync::mpsc::channel();
        let engine = Engine::new(model, assets);
        let me = myself.clone();
        std::thread::Builder::new().name(format!("infer-{id}")).spawn(move || worker_thread(id, engine, rx, max_batch, me))?;
        let state = WorkerState { id, jobs: tx, max_batch };
        state.announce();
        Ok(state)
    }

    async fn handle(&self, _myself: ActorRef<WorkerMsg>, msg: WorkerMsg, state: &mut WorkerState) -> Result<(), ActorProcessingErr> {
        match msg {
            WorkerMsg::Announce => state.announce(),
            WorkerMsg::ThreadExited(reason) => {
                return Err(format!("inference worker {} thread died: {reason}", state.id).into());
            }
        }
        Ok(())
    }

    async fn post_stop(&self, _myself: ActorRef<WorkerMsg>, state: &mut WorkerState) -> Result<(), ActorProcessingErr> {
        let _ = state.jobs.send(WorkerJob::Stop);
        Ok(())
    }
}

fn worker_thread(id: usize, engine: Engine, rx: Receiver<WorkerJob>, max_batch: usize, me: ActorRef<WorkerMsg>) {
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| run_loop(id, engine, rx, max_batch)));
    let reason = match result {
        Ok(Ok(())) => return,
        Ok(Err(e)) => e.to_string(),
        Err(panic) => panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panic".into()),
    };
    tracing::error!(worker = id, %reason, "Inference worker thread failed.");
    let _ = me.cast(WorkerMsg::ThreadExited(reason));
}

fn report_done(worker: usize, ids: Vec<u64>) {
    if ids.is_empty() {
        return;
    }
    if let Some(b) = ActorRef::<BatcherMsg>::where_is(crate::names::BATCHER.to_string()) {
        let _ = b.cast(BatcherMsg::Done { worker, ids });
    }
}

/// The continuous batching loop: take in new requests between steps, run one step, report
/// the requests that left.
fn run_loop(id: usize, mut engine: Engine, rx: Receiver<WorkerJob>, max_batch: usize) -> Result<(), ModelError> {
    let mut waiting: VecDeque<GenRequest> = VecDeque::new();
    loop {
        if engine.active() == 0 && waiting.is_empty() {
            match rx.recv() {
                Ok(WorkerJob::Run(reqs)) => waiting.extend(reqs),
                Ok(WorkerJob::Stop) | Err(_) => return Ok(()),
            }
        }
        loop {
            match rx.try_recv() {
                Ok(WorkerJob::Run(reqs)) => waiting.extend(reqs),
                Ok(WorkerJob::Stop) | Err(TryRecvError::Disconnected) => return Ok(()),
                Err(TryRecvError::Empty) => break,
            }
        }
        let room = max_batch.saturating_sub(engine.active());
        if room > 0 && !waiting.is_empty() {
            let take = room.min(waiting.len());
            let batch: Vec<GenRequest> = waiting.drain(..take).collect();
            report_done(id, engine.admit(batch)?);
        }
        if engine.active() > 0 {
            report_done(id, engine.step()?);
        }
    }
}
