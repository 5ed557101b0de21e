//! The inference layer: a batcher actor in front of a pool of worker actors, each owning one
//! ONNX Runtime session and running continuous (step-level) batching on its own thread.

pub mod batcher;
pub mod client;
pub mod config;
pub mod engine;
pub mod worker;

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

pub use batcher::{BatcherActor, BatcherArgs, BatcherMsg, QueueState};
pub use client::{GenerateOptions, InferenceClient};
pub use config::{ExecutionProvider, InferenceConfig};
pub use engine::Engine;
pub use worker::{WorkerActor, WorkerArgs, WorkerMsg};

use crate::model::SamplingParams;

/// Test-only faults a request can carry when `testing.fault_injection` is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The worker panics on the first attempt only (the retry succeeds).
    WorkerPanicOnce,
    /// The worker panics on every attempt (the request fails after its retry).
    WorkerPanicAlways,
}

/// One generation request as the batcher and workers see it.
#[derive(Debug, Clone)]
pub struct GenRequest {
    /// Unique id, for bookkeeping and logs.
    pub id: u64,
    /// The tokenized prompt.
    pub prompt_ids: Vec<u32>,
    /// Upper bound of generated tokens (already clamped to the context window).
    pub max_new_tokens: usize,
    /// Sampling settings, with the request's seed.
    pub sampling: SamplingParams,
    /// Generation stops before any of these strings.
    pub stop: Vec<String>,
    /// Where text deltas and the final result go.
    pub events: mpsc::UnboundedSender<GenEvent>,
    /// When the request entered the queue (for queue wait and time-to-first-token).
    pub submitted: Instant,
    /// After this instant the request fails with a timeout.
    pub deadline: Instant,
    /// 0 on the first run, 1 on the retry after a worker failure.
    pub attempt: u32,
    /// Bytes of text already streamed to the caller: a retried request resumes after them.
    pub delivered: Arc<AtomicUsize>,
    /// Injected fault, for the crash tests.
    pub fault: Option<Fault>,
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// The model produced an end-of-sequence token.
    Eos,
    /// `max_new_tokens` reached.
    Length,
    /// A stop string was produced.
    Stop,
    /// The context window is full.
    ContextWindow,
}

/// The final event of a successful generation.
#[derive(Debug, Clone)]
pub struct GenSummary {
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    pub finish_reason: FinishReason,
    /// From submission to the first generated token.
    pub time_to_first_token: Duration,
}

/// What a worker streams back for one request.
#[derive(Debug, Clone)]
pub enum GenEvent {
    /// New text (complete UTF-8, stop strings held back until they are ruled out).
    Delta(String),
    /// Generation finished.
    Done(GenSummary),
    /// Generation failed; no further events follow.
    Failed(InferenceError),
}

/// Errors a caller of the inference layer can see.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum InferenceError {
    #[error("the inference queue is full ({0} requests waiting); try again shortly")]
    Busy(usize),
    #[error("the request did not finish within {0} ms")]
    Timeout(u64),
    #[error("the prompt has {prompt} tokens but the model's context window is {window}")]
    PromptTooLong { prompt: usize, window: usize },
    #[error("inference failed: {0}")]
    Failed(String),
    #[error("the inference service is not available: {0}")]
    Unavailable(String),
}

impl InferenceError {
    /// Bounded label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            InferenceError::Busy(_) => "busy",
            InferenceError::Timeout(_) => "timeout",
            InferenceError::PromptTooLong { .. } => "prompt_too_long",
            InferenceError::Failed(_) => "failed",
            InferenceError::Unavailable(_) => "unavailable",
        }
    }
}
