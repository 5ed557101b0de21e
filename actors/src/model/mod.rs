//! Model assets, the ONNX Runtime session, sampling and streaming detokenization: plain code
//! with unit tests, used by the inference actors.

pub mod assets;
pub mod detok;
pub mod onnx;
pub mod sampling;

pub use assets::{ChatMessage, ChatTemplate, GenerationDefaults, ModelAssets};
pub use onnx::{Device, KvCache, OnnxModel, SessionOptions};
pub use sampling::{Sampler, SamplingParams};

/// Errors of the model layer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ModelError {
    #[error("model asset error: {0}")]
    Asset(String),
    #[error("tokenizer error: {0}")]
    Tokenizer(String),
    #[error("chat template error: {0}")]
    Template(String),
    #[error("model graph error: {0}")]
    Graph(String),
    #[error("ONNX Runtime error: {0}")]
    Runtime(String),
}
