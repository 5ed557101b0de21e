//! How sessions talk to the inference layer: resolve a request's generation settings against
//! the model's defaults, then hand it to the batcher and get a stream of events back.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ractor::ActorRef;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::{BatcherMsg, Fault, GenEvent, GenRequest, InferenceConfig, InferenceError};
use crate::model::{ModelAssets, SamplingParams};
use crate::telemetry;

/// Generation settings a caller may set per request; unset ones come from
/// `generation_config.json`, then from `[inference]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GenerateOptions {
    pub max_new_tokens: Option<usize>,
    /// 0 = greedy.
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<usize>,
    pub repetition_penalty: Option<f32>,
    /// Generation stops before any of these strings.
    #[serde(default)]
    pub stop: Vec<String>,
    /// Seed for sampling; the same seed gives the same reply.
    pub seed: Option<u64>,
    #[serde(skip)]
    pub fault: Option<Fault>,
}

impl GenerateOptions {
    /// Checks ranges; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(t) = self.temperature {
            if !(0.0..=10.0).contains(&t) || t.is_nan() {
                return Err(format!("`temperature` must be between 0 and 10. Given: {t}"));
            }
        }
        if let Some(p) = self.top_p {
            if !(p > 0.0 && p <= 1.0) {
                return Err(format!("`top_p` must be in (0, 1]. Given: {p}"));
            }
        }
        if let Some(r) = self.repetition_penalty {
            if !(r > 0.0 && r <= 10.0) {
                return Err(format!("`repetition_penalty` must be in (0, 10]. Given: {r}"));
            }
        }
        if self.max_new_tokens == Some(0) {
            return Err("`max_new_tokens` must be at least 1. Given: 0".into());
        }
        if self.stop.len() > 16 || self.stop.iter().any(|s| s.len() > 256) {
            return Err("`stop` takes at most 16 strings of at most 256 bytes".into());
        }
        Ok(())
    }
}

/// A cheap, cloneable handle to the inference layer.
#[derive(Clone)]
pub struct InferenceClient {
    assets: Arc<ModelAssets>,
    config: InferenceConfig,
    next_id: Arc<AtomicU64>,
}

impl InferenceClient {
    pub fn new(assets: Arc<ModelAssets>, config: InferenceConfig) -> Self {
        Self { assets, config, next_id: Arc::new(AtomicU64::new(1)) }
    }

    pub fn assets(&self) -> &Arc<ModelAssets> {
        &self.assets
    }

    /// The number of new tokens a request will be allowed (before clamping to the window).
    pub fn max_new_tokens(&self, opts: &GenerateOptions) -> usize {
        opts.max_new_tokens.or(self.assets.generation.max_new_tokens).unwrap_or(self.config.max_new_tokens)
    }

    /// Queues a generation; events arrive on the returned channel. Dropping the receiver
    /// cancels the request.
    pub fn submit(&self, prompt_ids: Vec<u32>, opts: &GenerateOptions) -> Result<mpsc::UnboundedReceiver<GenEvent>, InferenceError> {
        let window = self.assets.context_window;
        if prompt_ids.len() >= window {
            telemetry::inference_rejected("prompt_too_long");
            return Err(InferenceError::PromptTooLong { prompt: prompt_ids.len(), window });
        }
        let batcher = ActorRef::<BatcherMsg>::where_is(crate::names::BATCHER.to_string())
            .ok_or_else(|| InferenceError::Unavailable("the batcher is restarting".into()))?;
        let g = &self.assets.generation;
        let default_temp = if g.do_sample { g.temperature } else { 0.0 };
        let sampling = SamplingParams {
            temperature: opts.temperature.unwrap_or(default_temp),
            top_p: opts.top_p.unwrap_or(g.top_p),
            top_k: opts.top_k.unwrap_or(g.top_k),
            repetition_penalty: opts.repetition_penalty.unwrap_or(g.repetition_penalty),
            seed: opts.seed.unwrap_or_else(rand::random),
        };
        let max_new_tokens = self.max_new_tokens(opts).min(window - prompt_ids.len());
        telemetry::prompt_tokens(prompt_ids.len() as u64);
        let (tx, rx) = mpsc::unbounded_channel();
        let now = Instant::now();
        let req = GenRequest {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            prompt_ids,
            max_new_tokens,
            sampling,
            stop: opts.stop.clone(),
            events: tx,
            submitted: now,
            deadline: now + Duration::from_millis(self.config.request_timeout_ms),
            attempt: 0,
            delivered: Default::default(),
            fault: opts.fault,
        };
        let depth = super::batcher::BACKLOG.fetch_add(1, Ordering::AcqRel) + 1;
        telemetry::mailbox_depth(crate::names::BATCHER, depth);
        batcher.cast(BatcherMsg::Submit(req)).map_err(|_| {
            super::batcher::BACKLOG.fetch_sub(1, Ordering::AcqRel);
            InferenceError::Unavailable("the batcher is restarting".into())
        })?;
        Ok(rx)
    }
}
