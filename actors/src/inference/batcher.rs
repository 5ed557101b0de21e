//! The batcher: admission control and dispatch in front of the worker pool.
//!
//! Requests wait in one FIFO queue (refused at once as busy beyond `max_queue`). A worker with
//! free batch slots gets as many as fit; an idle worker waits up to `max_wait_ms` for company
//! so a burst forms one batch; a busy worker takes newcomers at once (they join its running
//! batch between decode steps). Requests held by a worker that dies are retried once.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::worker::WorkerJob;
use super::{GenEvent, GenRequest, InferenceConfig, InferenceError};
use crate::telemetry;

/// Submissions cast to the batcher and not yet handled: its mailbox depth.
pub(crate) static BACKLOG: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

/// One worker as the batcher sees it.
struct WorkerSlot {
    /// Job channel into the worker thread.
    jobs: Sender<WorkerJob>,
    /// Most sequences the worker batches.
    capacity: usize,
    /// Requests sent to it and not finished, kept for a retry if it dies.
    inflight: HashMap<u64, GenRequest>,
}

/// The queueing logic, free of actors so it can be unit-tested.
pub struct QueueState {
    max_queue: usize,
    max_wait: Duration,
    /// Waiting requests, oldest first.
    queue: VecDeque<GenRequest>,
    workers: BTreeMap<usize, WorkerSlot>,
}

/// What [`QueueState::plan`] decided.
pub struct Plan {
    /// Requests to send, per worker.
    pub dispatch: Vec<(usize, Vec<GenRequest>)>,
    /// Plan again after this long (an idle worker is waiting for company).
    pub wake_after: Option<Duration>,
}

impl QueueState {
    pub fn new(max_queue: usize, max_wait: Duration) -> Self {
        Self { max_queue, max_wait, queue: VecDeque::new(), workers: BTreeMap::new() }
    }

    pub fn depth(&self) -> usize {
        self.queue.len()
    }

    pub fn ready_workers(&self) -> usize {
        self.workers.len()
    }

    /// Queues a request, or hands it back with the busy error when the queue is full.
    pub fn submit(&mut self, req: GenRequest) -> Result<(), (GenRequest, InferenceError)> {
        if self.queue.len() >= self.max_queue {
            let n = self.queue.len();
            return Err((req, InferenceError::Busy(n)));
        }
        self.queue.push_back(req);
        Ok(())
    }

    pub fn worker_ready(&mut self, worker: usize, jobs: Sender<WorkerJob>, capacity: usize) {
        let inflight = self.workers.remove(&worker).map(|w| w.inflight).unwrap_or_default();
        self.workers.insert(worker, WorkerSlot { jobs, capacity, inflight });
    }

    /// A worker died: its requests go back to the front of the queue for one retry; those
    /// already retried are returned as failed.
    pub fn worker_down(&mut self, worker: usize) -> Vec<GenRequest> {
        let Some(slot) = self.workers.remove(&worker) else { return Vec::new() };
        let mut failed = Vec::new();
        let mut held: Vec<GenRequest> = slot.inflight.into_values().collect();
        held.sort_by_key(|r| std::cmp::Reverse(r.submitted));
        for mut req in held {
            if req.attempt == 0 {
                req.attempt = 1;
                self.queue.push_front(req);
            } else {
                failed.push(req);
            }
        }
        failed
    }

    pub fn done(&mut self, worker: usize, ids: &[u64]) {
        if let Some(w) = self.workers.get_mut(&worker) {
            for id in ids {
                w.inflight.remove(id);
            }
        }
    }

    /// Removes and returns queued requests past their deadline or whose caller left.
    pub fn expire(&mut self, now: Instant) -> (Vec<GenRequest>, usize) {
        let mut expired = Vec::new();
        let mut cancelled = 0;
        self.queue.retain(|r| {
            if r.events.is_closed() {
                cancelled += 1;
                false
            } else if now >= r.deadline {
                expired.push(r.clone());
                false
            } else {
                true
            }
        });
        (expired, cancelled)
    }

    /// Decides which requests go to which worker now.
    pub fn plan(&mut self, now: Instant) -> Plan {
        let mut dispatch = Vec::new();
        let mut wake_after = None;
        let mut order: Vec<(usize, usize, bool)> = self
            .workers
            .iter()
            .map(|(id, w)| (*id, w.capacity.saturating_sub(w.inflight.len()), w.inflight.is_empty()))
            .filter(|(_, free, _)| *free > 0)
            .collect();
        // Busy workers first (newcomers join a running batch at no extra cost), then the
        // ones with the most room.
        order.sort_by_key(|(id, free, idle)| (*idle, std::cmp::Reverse(*free), *id));
        for (id, free, idle) in order {
            if self.queue.is_empty() {
                break;
            }
            if idle && self.queue.len() < free {
                let waited = self.queue.front().map(|r| now.saturating_duration_since(r.submitted)).unwrap_or_default();
                if waited < self.max_wait {
                    wake_after = Some(self.max_wait - waited);
                    break;
                }
            }
            let take = free.min(self.queue.len());
            let reqs: Vec<GenRequest> = self.queue.drain(..take).collect();
            let slot = self.workers.get_mut(&id).expect("planned worker exists");
            for r in &reqs {
                slot.inflight.insert(r.id, r.clone());
            }
            dispatch.push((id, reqs));
        }
        Plan { dispatch, wake_after }
    }
}

pub struct BatcherActor;

pub struct BatcherArgs {
    pub config: InferenceConfig,
    /// Shared count of ready workers, read by the readiness probe.
    pub ready_workers: Arc<AtomicUsize>,
}

pub enum BatcherMsg {
    /// A new request (the outcome arrives on its event channel).
    Submit(GenRequest),
    /// A worker is up and can take `capacity` sequences.
    WorkerReady { worker: usize, jobs: Sender<WorkerJob>, capacity: usize },
    /// A worker went down (reported by the inference supervisor).
    WorkerDown { worker: usize },
    /// Requests left a worker's batch.
    Done { worker: usize, ids: Vec<u64> },
    /// Timer: plan again and expire old requests.
    Tick,
}

pub struct BatcherState {
    queue: QueueState,
    ready_workers: Arc<AtomicUsize>,
    /// Whether a `Tick` for a waiting batch is already scheduled.
    wake_pending: bool,
}

impl Actor for BatcherActor {
    type Msg = BatcherMsg;
    type State = BatcherState;
    type Arguments = BatcherArgs;

    async fn pre_start(&self, myself: ActorRef<BatcherMsg>, args: BatcherArgs) -> Result<BatcherState, ActorProcessingErr> {
        myself.send_interval(Duration::from_millis(100), || BatcherMsg::Tick);
        args.ready_workers.store(0, Ordering::Release);
        BACKLOG.store(0, Ordering::Release);
        // Workers that outlived a previous batcher introduce themselves again when the
        // inference supervisor reports this batcher started (see `tree::WorkerObserver`).
        Ok(BatcherState {
            queue: QueueState::new(args.config.max_queue, Duration::from_millis(args.config.max_wait_ms)),
            ready_workers: args.ready_workers,
            wake_pending: false,
        })
    }

    async fn handle(&self, myself: ActorRef<BatcherMsg>, msg: BatcherMsg, state: &mut BatcherState) -> Result<(), ActorProcessingErr> {
        match msg {
            BatcherMsg::Submit(req) => {
                telemetry::mailbox_depth(crate::names::BATCHER, BACKLOG.fetch_sub(1, Ordering::AcqRel) - 1);
                if let Err((req, err)) = state.queue.submit(req) {
                    telemetry::inference_rejected(err.reason());
                    let _ = req.events.send(GenEvent::Failed(err));
                }
            }
            BatcherMsg::WorkerReady { worker, jobs, capacity } => {
                state.queue.worker_ready(worker, jobs, capacity);
                tracing::debug!(worker, capacity, "Inference worker registered with the batcher.");
            }
            BatcherMsg::WorkerDown { worker } => {
                for req in state.queue.worker_down(worker) {
                    telemetry::inference_rejected("worker_failed");
                    let _ = req.events.send(GenEvent::Failed(InferenceError::Failed(
                        "the inference worker failed twice while running this request".into(),
                    )));
                }
            }
            BatcherMsg::Done { worker, ids } => state.queue.done(worker, &ids),
            BatcherMsg::Tick => {
                state.wake_pending = false;
                let (expired, cancelled) = state.queue.expire(Instant::now());
                for req in expired {
                    telemetry::inference_rejected("timeout");
                    let ms = req.deadline.duration_since(req.submitted).as_millis() as u64;
                    let _ = req.events.send(GenEvent::Failed(InferenceError::Timeout(ms)));
                }
                for _ in 0..cancelled {
                    telemetry::inference_rejected("cancelled");
                }
            }
        }
        self.dispatch(&myself, state);
        Ok(())
    }
}

impl BatcherActor {
    fn dispatch(&self, myself: &ActorRef<BatcherMsg>, state: &mut BatcherState) {
        let now = Instant::now();
        let plan = state.queue.plan(now);
        for (worker, reqs) in plan.dispatch {
            for r in &reqs {
                telemetry::queue_wait(now.saturating_duration_since(r.submitted));
            }
            if let Err(std::sync::mpsc::SendError(job)) = state.queue.workers.get(&worker).expect("planned").jobs.send(WorkerJob::Run(reqs))
            {
                // The thread is gone; its actor will be restarted. Retry its requests elsewhere.
                drop(job);
                for req in state.queue.worker_down(worker) {
                    let _ = req.events.send(GenEvent::Failed(InferenceError::Failed("the inference worker failed".into())));
                }
            }
        }
        if let Some(delay) = plan.wake_after {
            if !state.wake_pending {
                state.wake_pending = true;
                myself.send_after(delay, || BatcherMsg::Tick);
            }
        }
        state.ready_workers.store(state.queue.ready_workers(), Ordering::Release);
        telemetry::queue_depth(state.queue.depth(), state.queue.ready_workers());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::SamplingParams;
    use tokio::sync::mpsc;

    fn req(id: u64, submitted: Instant) -> (GenRequest, mpsc::UnboundedReceiver<GenEvent>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let r = GenRequest {
            id,
            prompt_ids: vec![1, 2, 3],
            max_new_tokens: 4,
            sampling: SamplingParams::greedy(),
            stop: vec![],
            events: tx,
            submitted,
            deadline: submitted + Duration::from_secs(10),
            attempt: 0,
            delivered: Default::default(),
            fault: None,
        };
        (r, rx)
    }

    #[test]
    fn full_queue_refuses_as_busy() {
        let mut q = QueueState::new(2, Duration::ZERO);
        let now = Instant::now();
        let (a, _ra) = req(1, now);
        let (b, _rb) = req(2, now);
        let (c, _rc) = req(3, now);
        assert!(q.submit(a).is_ok());
        assert!(q.submit(b).is_ok());
        let (_, err) = q.submit(c).unwrap_err();
        assert_eq!(err, InferenceError::Busy(2));
    }

    #[test]
    fn idle_worker_waits_for_company_then_takes_all() {
        let mut q = QueueState::new(10, Duration::from_millis(50));
        let (tx, _rx) = std::sync::mpsc::channel();
        q.worker_ready(0, tx, 4);
        let t0 = Instant::now();
        let (a, _ra) = req(1, t0);
        q.submit(a).unwrap();
        let p = q.plan(t0 + Duration::from_millis(10));
        assert!(p.dispatch.is_empty());
        assert_eq!(p.wake_after, Some(Duration::from_millis(40)));
        let (b, _rb) = req(2, t0);
        q.submit(b).unwrap();
        let p = q.plan(t0 + Duration::from_millis(60));
        assert_eq!(p.dispatch.len(), 1);
        assert_eq!(p.dispatch[0].1.len(), 2);
    }

    #[test]
    fn full_batch_is_sent_without_waiting_and_busy_worker_takes_newcomers() {
        let mut q = QueueState::new(10, Duration::from_secs(5));
        let (tx, _rx) = std::sync::mpsc::channel();
        q.worker_ready(0, tx, 2);
        let t0 = Instant::now();
        let mut keep = Vec::new();
        for id in 0..3 {
            let (r, rx) = req(id, t0);
            keep.push(rx);
            q.submit(r).unwrap();
        }
        let p = q.plan(t0);
        assert_eq!(p.dispatch[0].1.iter().map(|r| r.id).collect::<Vec<_>>(), vec![0, 1]);
        // Worker full: the third waits.
        assert!(q.plan(t0).dispatch.is_empty());
        q.done(0, &[0]);
        // Busy worker (one in flight) gets the newcomer at once, no max_wait.
        let p = q.plan(t0);
        assert_eq!(p.dispatch[0].1[0].id, 2);
    }

    #[test]
    fn dead_worker_requests_are_retried_once() {
        let mut q = QueueState::new(10, Duration::ZERO);
        let (tx, _rx) = std::sync::mpsc::channel();
        q.worker_ready(0, tx.clone(), 4);
        let t0 = Instant::now();
        let (a, _ra) = req(1, t0);
        q.submit(a).unwrap();
        assert_eq!(q.plan(t0).dispatch.len(), 1);
        assert!(q.worker_down(0).is_empty(), "first failure: retried, not failed");
        assert_eq!(q.depth(), 1);
        q.worker_ready(0, tx, 4);
        assert_eq!(q.plan(t0).dispatch[0].1[0].attempt, 1);
        let failed = q.worker_down(0);
        assert_eq!(failed.len(), 1, "second failure: the request fails");
        assert_eq!(q.depth(), 0);
    }
}
