//! The ONNX Runtime side of a decoder-only LM exported in Hugging Face Optimum's layout:
//! `input_ids`, `attention_mask`, `position_ids`, `past_key_values.N.key/value` in;
//! `logits`, `present.N.key/value` out.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::{DynValue, Tensor, ValueType};

use super::ModelError;

/// The process-wide ONNX Runtime environment (ORT allows one per process).
static ENVIRONMENT: OnceLock<Result<ort::environment::Environment, String>> = OnceLock::new();

/// Loads `libonnxruntime` from `lib` and creates the environment; later calls return the first
/// result (the library can only be loaded once per process).
pub fn init_runtime(lib: &Path) -> Result<ort::environment::Environment, ModelError> {
    ENVIRONMENT
        .get_or_init(|| {
            if !lib.is_file() {
                return Err(format!(
                    "ONNX Runtime library {} does not exist (run `make setup`, or set `model.onnxruntime_lib` / ORT_DYLIB_PATH)",
                    lib.display()
                ));
            }
            let builder = ort::init_from(lib).map_err(|e| format!("cannot load ONNX Runtime from {}: {e}", lib.display()))?;
            builder
                .with_name("switchboard")
                .with_telemetry(false)
                .build()
                .map_err(|e| format!("cannot create the ONNX Runtime environment: {e}"))
        })
        .clone()
        .map_err(ModelError::Runtime)
}

/// Which execution provider a session should use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Device {
    Cpu,
    Cuda { device_id: i32, memory_limit_bytes: Option<usize> },
}

/// Options for one ONNX Runtime session.
#[derive(Debug, Clone)]
pub struct SessionOptions {
    pub intra_op_threads: usize,
    pub device: Device,
}

/// One ort session of a decoder model (owned by exactly one inference worker).
pub struct OnnxModel {
    session: Session,
    /// Number of transformer layers (pairs of past key/value inputs).
    pub layers: usize,
    /// Key/value heads (fewer than attention heads in GQA models).
    pub kv_heads: usize,
    /// Size of each head.
    pub head_dim: usize,
    /// Whether the graph takes `position_ids` (some exports compute positions themselves).
    has_position_ids: bool,
    /// Names of the past inputs and present outputs, in layer order (key, value, key, value, …).
    past_names: Vec<String>,
    present_names: Vec<String>,
    /// The device the session really runs on (after any fallback).
    pub device: Device,
}

/// The key/value cache of a batch: for each layer a key and a value tensor of shape
/// `[batch, kv_heads, len, head_dim]`, kept as ORT values so they feed the next step unchanged.
pub struct KvCache {
    /// `2 * layers` tensors: key, value of layer 0, then layer 1, …
    pub tensors: Vec<DynValue>,
    pub batch: usize,
    pub len: usize,
}

/// Result of one forward pass.
pub struct Forward {
    /// Logits of the last position of each row: `batch * vocab` values.
    pub last_logits: Vec<f32>,
    pub vocab: usize,
    /// The cache including the positions just computed.
    pub cache: KvCache,
}

fn dims_of(t: &ValueType) -> Vec<i64> {
    match t {
        ValueType::Tensor { shape, .. } => shape.iter().copied().collect(),
        _ => Vec::new(),
    }
}

impl OnnxModel {
    /// Loads the ONNX graph; falls back to CPU (and says why) when CUDA cannot be used.
    pub fn load(env: &ort::environment::Environment, onnx_path: &Path, opts: &SessionOptions) -> Result<Self, ModelError> {
        let (session, device) = match &opts.device {
            Device::Cpu => (build_session(env, onnx_path, opts, None)?, Device::Cpu),
            Device::Cuda { device_id, memory_limit_bytes } => {
                match build_session(env, onnx_path, opts, Some((*device_id, *memory_limit_bytes))) {
                    Ok(s) => (s, opts.device.clone()),
                    Err(e) => {
                        tracing::warn!(error = %e, "The CUDA execution provider could not be used; falling back to CPU.");
                        (build_session(env, onnx_path, opts, None)?, Device::Cpu)
                    }
                }
            }
        };
        let inputs: Vec<(String, Vec<i64>)> = session.inputs().iter().map(|o| (o.name().to_string(), dims_of(o.dtype()))).collect();
        for required in ["input_ids", "attention_mask"] {
            if !inputs.iter().any(|(n, _)| n == required) {
                return Err(ModelError::Graph(format!("the graph has no `{required}` input")));
            }
        }
        let has_position_ids = inputs.iter().any(|(n, _)| n == "position_ids");
        let mut layers = 0;
        while inputs.iter().any(|(n, _)| *n == format!("past_key_values.{layers}.key")) {
            layers += 1;
        }
        if layers == 0 {
            return Err(ModelError::Graph(
                "the graph has no `past_key_values.0.key` input (export with past, e.g. `--task text-generation-with-past`)".into(),
            ));
        }
        let dims = &inputs.iter().find(|(n, _)| n == "past_key_values.0.key").expect("checked above").1;
        if dims.len() != 4 || dims[1] <= 0 || dims[3] <= 0 {
            return Err(ModelError::Graph(format!(
                "`past_key_values.0.key` must be [batch, heads, past, head_dim] with fixed heads and head_dim; it is {dims:?}"
            )));
        }
        let (kv_heads, head_dim) = (dims[1] as usize, dims[3] as usize);
        let mut past_names = Vec::new();
        let mut present_names = Vec::new();
        for l in 0..layers {
            for kind in ["key", "value"] {
                past_names.push(format!("past_key_values.{l}.{kind}"));
                present_names.push(format!("present.{l}.{kind}"));
            }
        }
        let outputs: Vec<String> = session.outputs().iter().map(|o| o.name().to_string()).collect();
        for name in present_names.iter().chain(std::iter::once(&"logits".to_string())) {
            if !outputs.contains(name) {
                return Err(ModelError::Graph(format!("the graph has no `{name}` output")));
            }
        }
        Ok(Self { session, layers, kv_heads, head_dim, has_position_ids, past_names, present_names, device })
    }

    /// A zero-length cache for `batch` rows (the first, prefill, step).
    pub fn empty_cache(&self, batch: usize) -> Result<KvCache, ModelError> {
        let tensors = (0..2 * self.layers)
            .map(|_| {
                Tensor::from_array(([batch, self.kv_heads, 0, self.head_dim], Vec::<f32>::new())).map(|t| t.into_dyn()).map_err(ort_err)
            })
            .collect::<Result<_, _>>()?;
        Ok(KvCache { tensors, batch, len: 0 })
    }

    /// Runs the model on `seq` new tokens per row on top of `past`.
    /// `attention_mask` is `batch * (past.len + seq)`, the others `batch * seq`.
    pub fn forward(
        &mut self,
        input_ids: Vec<i64>,
        attention_mask: Vec<i64>,
        position_ids: Vec<i64>,
        seq: usize,
        past: KvCache,
    ) -> Result<Forward, ModelError> {
        let batch = past.batch;
        let total = past.len + seq;
        debug_assert_eq!(input_ids.len(), batch * seq);
        debug_assert_eq!(attention_mask.len(), batch * total);
        let mut inputs: Vec<(String, ort::session::SessionInputValue<'_>)> = Vec::with_capacity(3 + past.tensors.len());
        inputs.push(("input_ids".into(), Tensor::from_array(([batch, seq], input_ids)).map_err(ort_err)?.into()));
        inputs.push(("attention_mask".into(), Tensor::from_array(([batch, total], attention_mask)).map_err(ort_err)?.into()));
        if self.has_position_ids {
            inputs.push(("position_ids".into(), Tensor::from_array(([batch, seq], position_ids)).map_err(ort_err)?.into()));
        }
        for (name, value) in self.past_names.iter().zip(past.tensors) {
            inputs.push((name.clone(), value.into()));
        }
        let mut outputs = self.session.run(inputs).map_err(ort_err)?;
        let logits = outputs.remove("logits").ok_or_else(|| ModelError::Graph("no logits output".into()))?;
        let (shape, data) = logits.try_extract_tensor::<f32>().map_err(ort_err)?;
        let vocab = *shape.last().unwrap_or(&0) as usize;
        let out_seq = if shape.len() == 3 { shape[1] as usize } else { 1 };
        let mut last_logits = Vec::with_capacity(batch * vocab);
        for b in 0..batch {
            let start = (b * out_seq + out_seq - 1) * vocab;
            last_logits.extend_from_slice(&data[start..start + vocab]);
        }
        let mut tensors = Vec::with_capacity(self.present_names.len());
        for name in &self.present_names {
            tensors.push(outputs.remove(name.as_str()).ok_or_else(|| ModelError::Graph(format!("no {name} output")))?);
        }
        Ok(Forward { last_logits, vocab, cache: KvCache { tensors, batch, len: total } })
    }
}

/// One output row of [`KvCache::gather`]: copy `source` cache's row `row`, dropping its first
/// `skip` positions.
pub struct RowSource<'a> {
    pub cache: &'a KvCache,
    pub row: usize,
    pub skip: usize,
}

impl KvCache {
    /// Builds a new cache of length `len` from rows of existing caches, each right-aligned (left
    /// padded with zeros, which the attention mask hides). This one operation covers removing
    /// finished rows, trimming shared padding, and merging newly prefilled rows into a batch.
    pub fn gather(rows: &[RowSource<'_>], len: usize, heads: usize, head_dim: usize) -> Result<KvCache, ModelError> {
        let n_tensors = rows.first().map(|r| r.cache.tensors.len()).unwrap_or(0);
        let batch = rows.len();
        let mut tensors = Vec::with_capacity(n_tensors);
        for t in 0..n_tensors {
            let mut out = vec![0f32; batch * heads * len * head_dim];
            for (b, src) in rows.iter().enumerate() {
                let (_, data) = src.cache.tensors[t].try_extract_tensor::<f32>().map_err(ort_err)?;
                let src_len = src.cache.len;
                let keep = src_len - src.skip;
                assert!(keep <= len, "gathered row is longer than the target cache");
                for h in 0..heads {
                    let from = ((src.row * heads + h) * src_len + src.skip) * head_dim;
                    let to = ((b * heads + h) * len + (len - keep)) * head_dim;
                    out[to..to + keep * head_dim].copy_from_slice(&data[from..from + keep * head_dim]);
                }
            }
            tensors.push(Tensor::from_array(([batch, heads, len, head_dim], out)).map_err(ort_err)?.into_dyn());
        }
        Ok(KvCache { tensors, batch, len })
    }
}

fn build_session(
    env: &ort::environment::Environment,
    onnx_path: &Path,
    opts: &SessionOptions,
    cuda: Option<(i32, Option<usize>)>,
) -> Result<Session, ModelError> {
    let map = |e: ort::Error<ort::session::builder::SessionBuilder>| ModelError::Runtime(e.to_string());
    let mut builder = Session::builder(env)
        .map_err(ort_err)?
        .with_optimization_level(GraphOptimizationLevel::All)
        .map_err(map)?
        .with_intra_threads(opts.intra_op_threads.max(1))
        .map_err(map)?
        .with_inter_threads(1)
        .map_err(map)?;
    if let Some((device_id, limit)) = cuda {
        let mut ep = ort::ep::CUDA::default().with_device_id(device_id);
        if let Some(bytes) = limit {
            ep = ep.with_memory_limit(bytes);
        }
        builder = builder.with_execution_providers([ep.build().error_on_failure()]).map_err(map)?;
    }
    builder.commit_from_file(onnx_path).map_err(|e| ModelError::Runtime(format!("cannot load {}: {e}", onnx_path.display())))
}

fn ort_err(e: impl std::fmt::Display) -> ModelError {
    ModelError::Runtime(e.to_string())
}

/// Where `make setup` installs the ONNX Runtime library, relative to the working directory.
pub const DEFAULT_RUNTIME_LIB: &str = "runtime/libonnxruntime.so";

/// Picks the ONNX Runtime library: the configured path, else `ORT_DYLIB_PATH`, else the
/// project's `runtime/` folder (relative to the working directory, then to the executable's
/// grand-parent, so `target/release/switchboard` finds it from anywhere).
pub fn resolve_runtime_lib(configured: Option<&Path>) -> PathBuf {
    if let Some(p) = configured {
        return p.to_path_buf();
    }
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let local = PathBuf::from(DEFAULT_RUNTIME_LIB);
    if local.is_file() {
        return local;
    }
    if let Some(root) = std::env::current_exe().ok().and_then(|exe| exe.ancestors().nth(3).map(Path::to_path_buf)) {
        let candidate = root.join(DEFAULT_RUNTIME_LIB);
        if candidate.is_file() {
            return candidate;
        }
    }
    local
}
