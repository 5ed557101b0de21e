//! What the daemon says about itself: its `/metrics`, and their deltas over a measurement.

use std::collections::BTreeMap;
use std::future::Future;

use anyhow::Result;
use serde::Serialize;

use crate::client::Client;
use crate::stats::r3;

/// Parses Prometheus text exposition into series (name with labels) -> value.
pub fn parse(text: &str) -> BTreeMap<String, f64> {
    let mut m = BTreeMap::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        if let Some((k, v)) = line.rsplit_once(' ')
            && let Ok(v) = v.parse::<f64>()
        {
            m.insert(k.to_string(), v);
        }
    }
    m
}

/// Runs `work` between two scrapes of the daemon's metrics; returns its value and the delta.
pub async fn with_metrics<T>(client: &Client, work: impl Future<Output = Result<T>>) -> Result<(T, MetricsDelta)> {
    let before = client.metrics().await?;
    let v = work.await?;
    Ok((v, metrics_delta(&before, &client.metrics().await?)))
}

#[derive(Debug, Clone, Serialize)]
pub struct PhaseStats {
    pub steps: f64,
    pub mean_batch: f64,
    pub total_s: f64,
    pub mean_step_ms: f64,
}

impl PhaseStats {
    fn new(steps: f64, batch_sum: f64, total_s: f64) -> Self {
        PhaseStats {
            steps,
            mean_batch: r3(if steps > 0.0 { batch_sum / steps } else { 0.0 }),
            total_s: r3(total_s),
            mean_step_ms: r3(if steps > 0.0 { 1000.0 * total_s / steps } else { 0.0 }),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct MetricsDelta {
    pub prefill: PhaseStats,
    pub decode: PhaseStats,
    pub generated_tokens: f64,
    pub prompt_tokens: f64,
    /// Time spent inside model steps (prefill + decode).
    pub model_time_s: f64,
    /// Requests dispatched by the batcher, and their mean wait in its queue.
    pub queued: f64,
    pub queue_wait_mean_ms: f64,
    /// First tokens, and the mean time from submission to the first token (server side).
    pub first_tokens: f64,
    pub server_ttft_mean_ms: f64,
    /// Prefill batch sizes: bucket upper bound -> count (from the histogram).
    pub prefill_batch_buckets: BTreeMap<String, f64>,
}

pub fn metrics_delta(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>) -> MetricsDelta {
    let d = |k: &str| after.get(k).copied().unwrap_or(0.0) - before.get(k).copied().unwrap_or(0.0);
    let phase = |p: &str| {
        PhaseStats::new(
            d(&format!("switchboard_inference_step_seconds_count{{phase=\"{p}\"}}")),
            d(&format!("switchboard_inference_batch_size_sum{{phase=\"{p}\"}}")),
            d(&format!("switchboard_inference_step_seconds_sum{{phase=\"{p}\"}}")),
        )
    };
    let prefill = phase("prefill");
    let decode = phase("decode");
    let qc = d("switchboard_inference_queue_wait_seconds_count");
    let tc = d("switchboard_inference_time_to_first_token_seconds_count");
    // Non-cumulative prefill batch-size histogram.
    let mut buckets = BTreeMap::new();
    let mut prev = 0.0;
    for le in ["1", "2", "4", "8", "16", "32", "64", "128"] {
        let c = d(&format!("switchboard_inference_batch_size_bucket{{phase=\"prefill\",le=\"{le}\"}}"));
        if c - prev > 0.0 {
            buckets.insert(format!("<={le}"), c - prev);
        }
        prev = c;
    }
    MetricsDelta {
        model_time_s: r3(prefill.total_s + decode.total_s),
        prefill,
        decode,
        generated_tokens: d("switchboard_inference_tokens_total{kind=\"generated\"}"),
        prompt_tokens: d("switchboard_inference_tokens_total{kind=\"prompt\"}"),
        queued: qc,
        queue_wait_mean_ms: r3(if qc > 0.0 { 1000.0 * d("switchboard_inference_queue_wait_seconds_sum") / qc } else { 0.0 }),
        first_tokens: tc,
        server_ttft_mean_ms: r3(if tc > 0.0 { 1000.0 * d("switchboard_inference_time_to_first_token_seconds_sum") / tc } else { 0.0 }),
        prefill_batch_buckets: buckets,
    }
}

/// Adds up the deltas of several rounds.
pub fn combine(ms: &[MetricsDelta]) -> MetricsDelta {
    let phase = |f: fn(&MetricsDelta) -> &PhaseStats| {
        let steps: f64 = ms.iter().map(|m| f(m).steps).sum();
        PhaseStats::new(steps, ms.iter().map(|m| f(m).mean_batch * f(m).steps).sum(), ms.iter().map(|m| f(m).total_s).sum())
    };
    let weighted = |w: fn(&MetricsDelta) -> f64, v: fn(&MetricsDelta) -> f64| {
        let total: f64 = ms.iter().map(w).sum();
        r3(if total > 0.0 { ms.iter().map(|m| w(m) * v(m)).sum::<f64>() / total } else { 0.0 })
    };
    let mut buckets = BTreeMap::new();
    for m in ms {
        for (k, v) in &m.prefill_batch_buckets {
            *buckets.entry(k.clone()).or_insert(0.0) += v;
        }
    }
    let prefill = phase(|m| &m.prefill);
    let decode = phase(|m| &m.decode);
    MetricsDelta {
        model_time_s: r3(prefill.total_s + decode.total_s),
        prefill,
        decode,
        generated_tokens: ms.iter().map(|m| m.generated_tokens).sum(),
        prompt_tokens: ms.iter().map(|m| m.prompt_tokens).sum(),
        queued: ms.iter().map(|m| m.queued).sum(),
        queue_wait_mean_ms: weighted(|m| m.queued, |m| m.queue_wait_mean_ms),
        first_tokens: ms.iter().map(|m| m.first_tokens).sum(),
        server_ttft_mean_ms: weighted(|m| m.first_tokens, |m| m.server_ttft_mean_ms),
        prefill_batch_buckets: buckets,
    }
}

pub fn describe_metrics(m: &MetricsDelta, wall_s: f64) -> String {
    format!(
        "prefill {} steps (mean batch {:.1}, {:.1} ms each), decode {} steps (mean batch {:.1}, {:.1} ms each); model busy {:.2} s of {:.2} s wall ({:.0}%)",
        m.prefill.steps,
        m.prefill.mean_batch,
        m.prefill.mean_step_ms,
        m.decode.steps,
        m.decode.mean_batch,
        m.decode.mean_step_ms,
        m.model_time_s,
        wall_s,
        100.0 * m.model_time_s / wall_s
    )
}
