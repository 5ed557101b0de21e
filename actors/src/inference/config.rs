//! `[inference]` settings.

use serde::{Deserialize, Serialize};

/// Which ONNX Runtime execution provider the workers use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExecutionProvider {
    Cpu,
    Cuda,
}

/// The inference pool (`[inference]` in the config file).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct InferenceConfig {
    /// Number of worker actors; each owns one ONNX Runtime session (and a copy of the weights).
    pub workers: usize,
    /// Threads ONNX Runtime uses inside one operator, per worker.
    pub intra_op_threads: usize,
    /// Most sequences one worker runs in a batch at once.
    pub max_batch: usize,
    /// How long a request may wait for company when a worker is idle, in milliseconds.
    pub max_wait_ms: u64,
    /// Requests allowed to wait in the queue; beyond it new requests are refused as busy.
    pub max_queue: usize,
    /// A request that has not finished after this many milliseconds fails with a timeout.
    pub request_timeout_ms: u64,
    /// Default cap on generated tokens when neither the request nor `generation_config.json` sets one.
    pub max_new_tokens: usize,
    /// `cpu` or `cuda`. With `cuda`, start-up falls back to CPU (and says why) if CUDA cannot be used.
    pub execution_provider: ExecutionProvider,
    /// CUDA device ordinal.
    pub cuda_device_id: i32,
    /// Cap on the CUDA memory arena per worker, in MiB (0 = ONNX Runtime's default, no cap).
    pub cuda_memory_limit_mb: usize,
}

impl Default for InferenceConfig {
    fn default() -> Self {
        Self {
            workers: 1,
            intra_op_threads: 2,
            max_batch: 16,
            max_wait_ms: 20,
            max_queue: 256,
            request_timeout_ms: 60_000,
            max_new_tokens: 64,
            execution_provider: ExecutionProvider::Cpu,
            cuda_device_id: 0,
            cuda_memory_limit_mb: 0,
        }
    }
}

impl InferenceConfig {
    /// Checks the values; errors name the key and echo the value.
    pub fn validate(&self) -> Result<(), String> {
        let at_least_one = [
            ("workers", self.workers as u64),
            ("intra_op_threads", self.intra_op_threads as u64),
            ("max_batch", self.max_batch as u64),
            ("max_queue", self.max_queue as u64),
            ("request_timeout_ms", self.request_timeout_ms),
            ("max_new_tokens", self.max_new_tokens as u64),
        ];
        for (key, v) in at_least_one {
            if v == 0 {
                return Err(format!("`inference.{key}` must be at least 1. Given: 0"));
            }
        }
        if self.workers > 64 {
            return Err(format!("`inference.workers` must be at most 64. Given: {}", self.workers));
        }
        if self.max_batch > 1024 {
            return Err(format!("`inference.max_batch` must be at most 1024. Given: {}", self.max_batch));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_batch_is_refused_with_key_name() {
        let c = InferenceConfig { max_batch: 0, ..Default::default() };
        assert_eq!(c.validate().unwrap_err(), "`inference.max_batch` must be at least 1. Given: 0");
        assert!(InferenceConfig::default().validate().is_ok());
    }
}
