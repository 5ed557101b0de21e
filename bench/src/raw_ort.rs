//! The raw ONNX Runtime baseline: `scripts/bench_raw_ort.py` (through `--raw-ort`) driving the
//! same model on the same machine, one process per batch size.

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;

use crate::Args;

fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Runs the raw ORT script at batch `batch`; returns the JSON line it prints.
pub fn raw_ort(args: &Args, model: &Path, batch: usize, prompt_len: usize) -> Result<Value> {
    let cmd = format!(
        "{} --model {} --batch {batch} --prompt-len {prompt_len} --new-tokens {} --threads {} --repeats {} --json",
        args.raw_ort,
        sh_quote(&model.to_string_lossy()),
        args.new_tokens,
        args.threads,
        args.repeats
    );
    let out = Command::new("sh").arg("-c").arg(&cmd).stdin(Stdio::null()).output().with_context(|| format!("running {cmd}"))?;
    if !out.status.success() {
        bail!("`{cmd}` failed ({}):\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line =
        stdout.lines().rev().find(|l| l.trim_start().starts_with('{')).ok_or_else(|| anyhow!("`{cmd}` printed no JSON:\n{stdout}"))?;
    let v: Value = serde_json::from_str(line).with_context(|| format!("parsing the output of `{cmd}`"))?;
    if v.get("tokens_per_s").and_then(Value::as_f64).is_none() {
        bail!("`{cmd}` printed no tokens_per_s: {line}");
    }
    Ok(v)
}

/// Tokens/s of one raw ORT result.
pub fn raw_tps(v: &Value) -> f64 {
    v["tokens_per_s"].as_f64().unwrap_or(f64::NAN)
}
