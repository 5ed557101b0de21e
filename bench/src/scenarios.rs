//! The scenarios, one function each (every request greedy, exactly `--new-tokens` generated, a
//! fresh conversation id each):
//!  (a) `--requests` requests sent all at once vs. the same number one at a time;
//!  (b) exactly B concurrent requests with `max_batch = B` (one batch) vs. raw ORT at batch B;
//!  (c) time to first token of `--requests` concurrent streaming requests.
//! (a) and (c) share one daemon with the shipped batching settings.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Result;
use serde_json::{Value, json};

use crate::Args;
use crate::client::{Clients, calibrate};
use crate::daemon::Daemon;
use crate::metrics::{MetricsDelta, combine, describe_metrics, with_metrics};
use crate::monitor::{BenchEnv, measured};
use crate::raw_ort::{raw_ort, raw_tps};
use crate::rounds::{Round, Workload};
use crate::stats::{median, percentile, r3};

/// What every scenario runs with.
pub struct Ctx<'a> {
    pub args: &'a Args,
    /// The model folder, canonical.
    pub model: &'a Path,
    /// The ONNX Runtime library, canonical.
    pub ort_lib: &'a Path,
    pub env: &'a BenchEnv,
    pub clients: &'a Clients,
}

/// Attempts each measurement took, by label.
pub type Attempts = BTreeMap<String, usize>;

/// A timed round and the daemon's metric deltas over it.
type RoundMetrics = (Round, MetricsDelta);

/// The calibrated prompt.
pub struct Prompt {
    pub text: String,
    pub tokens: usize,
}

/// The rounds of one kind, summed up.
pub struct Series {
    /// Median tokens/s over the rounds.
    pub tps: f64,
    /// Wall time of all rounds together.
    pub wall_s: f64,
    /// The metric deltas of all rounds together.
    pub metrics: MetricsDelta,
    pub per_round: Vec<MetricsDelta>,
    pub rounds: Vec<Round>,
}

impl Series {
    fn new(v: Vec<RoundMetrics>) -> Series {
        let tps = median(&v.iter().map(|(r, _)| r.tokens_per_s).collect::<Vec<_>>());
        let wall_s = v.iter().map(|(r, _)| r.wall_s).sum::<f64>();
        let per_round: Vec<MetricsDelta> = v.iter().map(|(_, m)| m.clone()).collect();
        let metrics = combine(&per_round);
        let rounds = v.into_iter().map(|(r, _)| r).collect();
        Series { tps, wall_s, metrics, per_round, rounds }
    }
}

/// Scenarios (a) and (c).
pub struct Interactive {
    pub prompt: Prompt,
    pub seq: Series,
    pub conc: Series,
    pub stream: Series,
    /// At once / one at a time, per interleaved pair of rounds, and their median.
    pub pair_ratios: Vec<f64>,
    pub ratio_a: f64,
    pub ttft_ms: Vec<f64>,
    pub done_gap_ms: Vec<f64>,
}

/// The streaming rounds of (c), with each request's time to first token and done gap.
struct Streams {
    rounds: Vec<RoundMetrics>,
    ttft_ms: Vec<f64>,
    done_gap_ms: Vec<f64>,
}

/// (a) and (c) on one daemon with `max_batch = --requests`, `max_wait_ms = --max-wait-ms`;
/// calibrates the prompt first.
pub async fn interactive(ctx: &Ctx<'_>, attempts: &mut Attempts) -> Result<Interactive> {
    let args = ctx.args;
    let n = args.requests;
    eprintln!("\n[a/c] daemon with max_batch={n}, max_wait_ms={}", args.max_wait_ms);
    ctx.env.quiet("a/c");
    let mut d = Daemon::start(args, ctx.model, ctx.ort_lib, "interactive", n, args.max_wait_ms)?;
    let client = ctx.clients.client(&d.base);
    client.wait_ready(&mut d).await?;
    let (text, prompt_tokens) = calibrate(&client, args.prompt_tokens).await?;
    eprintln!("  prompt: {text:?} -> {prompt_tokens} prompt tokens (chat template, empty system prompt)");
    let prompt = Prompt { text, tokens: prompt_tokens };
    let (seq, conc, streams) = {
        let w = Workload { client: &client, text: &prompt.text, new_tokens: args.new_tokens, prompt_tokens };
        // Warm-up: one request, then one untimed round at full concurrency.
        w.warm_up(n).await?;
        let (seq, conc) = scenario_a(ctx.env, &w, n, args.repeats, attempts).await?;
        let streams = scenario_c(ctx.env, &w, n, args.repeats, attempts).await?;
        (seq, conc, streams)
    };
    drop(d);
    Ok(summarize_interactive(prompt, seq, conc, streams))
}

/// (a): sequential and concurrent rounds alternate, so slow drift of the machine (a VM's memory
/// bandwidth moves by tens of percent over minutes) hits both sides of each pair alike.
async fn scenario_a(
    env: &BenchEnv,
    w: &Workload<'_>,
    n: usize,
    repeats: usize,
    attempts: &mut Attempts,
) -> Result<(Vec<RoundMetrics>, Vec<RoundMetrics>)> {
    let (cr, wr) = (w.client, w);
    let mut seq = Vec::new();
    let mut conc = Vec::new();
    for i in 0..repeats {
        let label = format!("(a) sequential round {}", i + 1);
        let (r, tries, _) = measured(env, &label, move || with_metrics(cr, wr.sequential(n))).await?;
        eprintln!("  {label}: {:.1} tokens/s ({:.2} s)", r.0.tokens_per_s, r.0.wall_s);
        attempts.insert(label, tries);
        seq.push(r);
        let label = format!("(a) concurrent round {}", i + 1);
        let (r, tries, _) = measured(env, &label, move || with_metrics(cr, wr.concurrent(n))).await?;
        eprintln!("  {label}: {:.1} tokens/s ({:.2} s)", r.0.tokens_per_s, r.0.wall_s);
        attempts.insert(label, tries);
        conc.push(r);
    }
    Ok((seq, conc))
}

/// (c): `n` concurrent streaming requests per round; time to first token of each.
async fn scenario_c(env: &BenchEnv, w: &Workload<'_>, n: usize, repeats: usize, attempts: &mut Attempts) -> Result<Streams> {
    let (cr, wr) = (w.client, w);
    let mut out = Streams { rounds: Vec::new(), ttft_ms: Vec::new(), done_gap_ms: Vec::new() };
    for i in 0..repeats {
        let label = format!("(c) streaming round {}", i + 1);
        let (((r, ttfts, gaps), md), tries, _) = measured(env, &label, move || with_metrics(cr, wr.streaming(n))).await?;
        out.done_gap_ms.extend(gaps.iter().map(|g| r3(g.as_secs_f64() * 1000.0)));
        let ms: Vec<f64> = ttfts.iter().map(|t| r3(t.as_secs_f64() * 1000.0)).collect();
        eprintln!(
            "  {label}: TTFT p50 {:.0} ms, max {:.0} ms (server-side mean {:.0} ms); {:.1} tokens/s",
            percentile(&ms, 50.0),
            percentile(&ms, 100.0),
            md.server_ttft_mean_ms,
            r.tokens_per_s
        );
        attempts.insert(label, tries);
        out.ttft_ms.extend(ms);
        out.rounds.push((r, md));
    }
    Ok(out)
}

fn summarize_interactive(prompt: Prompt, seq: Vec<RoundMetrics>, conc: Vec<RoundMetrics>, streams: Streams) -> Interactive {
    let pair_ratios: Vec<f64> = seq.iter().zip(&conc).map(|((s, _), (c, _))| r3(c.tokens_per_s / s.tokens_per_s)).collect();
    let ratio_a = median(&pair_ratios);
    eprintln!("  at once / one at a time per pair: {pair_ratios:?} -> median {ratio_a:.2}");
    let (seq, conc, stream) = (Series::new(seq), Series::new(conc), Series::new(streams.rounds));
    eprintln!("  sequential: {}", describe_metrics(&seq.metrics, seq.wall_s));
    eprintln!("  concurrent: {}", describe_metrics(&conc.metrics, conc.wall_s));
    eprintln!("  streaming:  {}", describe_metrics(&stream.metrics, stream.wall_s));
    Interactive { prompt, seq, conc, stream, pair_ratios, ratio_a, ttft_ms: streams.ttft_ms, done_gap_ms: streams.done_gap_ms }
}

/// Raw ORT at batch `b`, one process (it loads its own session, warms up once, then times
/// `--repeats` generations).
pub async fn raw_baseline(ctx: &Ctx<'_>, b: usize, prompt_tokens: usize, attempts: &mut Attempts) -> Result<Value> {
    let label = format!("raw ORT batch {b}");
    let (args, model, env) = (ctx.args, ctx.model, ctx.env);
    eprintln!("\n[raw] ONNX Runtime batch {b}, prompt {prompt_tokens}");
    env.quiet(&label);
    let (v, tries, _) = measured(env, &label, || async { raw_ort(args, model, b, prompt_tokens) }).await?;
    eprintln!(
        "  {:.1} tokens/s (prefill {:.0} ms, decode step {:.1} ms)",
        raw_tps(&v),
        1000.0 * v["prefill_s"].as_f64().unwrap_or(f64::NAN),
        v["decode_step_ms"].as_f64().unwrap_or(f64::NAN)
    );
    attempts.insert(label, tries);
    Ok(v)
}

/// Scenario (b) and the raw ORT baselines.
pub struct Batches {
    /// One JSON object per `--batches` entry.
    pub results: Vec<Value>,
    /// Raw ORT output by batch size.
    pub raw_by_batch: BTreeMap<usize, Value>,
    /// Raw ORT at batch 1 and at batch `--requests`.
    pub raw1: Value,
    pub raw_n: Value,
}

/// Raw ORT at batch 1; then for each `--batches` entry B, raw ORT at B and (b) at B; then raw
/// ORT at batch `--requests` unless that was one of them.
pub async fn batches(ctx: &Ctx<'_>, prompt: &Prompt, attempts: &mut Attempts) -> Result<Batches> {
    let mut raw_by_batch: BTreeMap<usize, Value> = BTreeMap::new();
    let raw1 = raw_baseline(ctx, 1, prompt.tokens, attempts).await?;
    raw_by_batch.insert(1, raw1.clone());
    let mut results = Vec::new();
    for &b in &ctx.args.batches {
        let raw = raw_baseline(ctx, b, prompt.tokens, attempts).await?;
        raw_by_batch.insert(b, raw.clone());
        results.push(scenario_b(ctx, b, prompt, raw, attempts).await?);
    }
    let n = ctx.args.requests;
    let raw_n = match raw_by_batch.get(&n) {
        Some(v) => v.clone(),
        None => {
            let v = raw_baseline(ctx, n, prompt.tokens, attempts).await?;
            raw_by_batch.insert(n, v.clone());
            v
        }
    };
    Ok(Batches { results, raw_by_batch, raw1, raw_n })
}

/// (b): one batch of `b` on a daemon with `max_batch = b`, `max_wait_ms = --batch-wait-ms`,
/// against `raw` (raw ORT at batch `b`).
async fn scenario_b(ctx: &Ctx<'_>, b: usize, prompt: &Prompt, raw: Value, attempts: &mut Attempts) -> Result<Value> {
    let args = ctx.args;
    eprintln!("\n[b] batch {b}: the daemon with max_batch={b}, max_wait_ms={}", args.batch_wait_ms);
    ctx.env.quiet(&format!("(b) batch {b}"));
    let mut d = Daemon::start(args, ctx.model, ctx.ort_lib, &format!("batch{b}"), b, args.batch_wait_ms)?;
    let client = ctx.clients.client(&d.base);
    client.wait_ready(&mut d).await?;
    let w = Workload { client: &client, text: &prompt.text, new_tokens: args.new_tokens, prompt_tokens: prompt.tokens };
    w.warm_up(b).await?;
    let (cr, wr) = (&client, &w);
    let mut rounds = Vec::new();
    let mut per_round_metrics = Vec::new();
    for i in 0..args.repeats {
        let label = format!("(b) batch {b} round {}", i + 1);
        let ((r, md), tries, _) = measured(ctx.env, &label, move || with_metrics(cr, wr.concurrent(b))).await?;
        eprintln!("  {label}: {:.1} tokens/s ({:.2} s); {}", r.tokens_per_s, r.wall_s, describe_metrics(&md, r.wall_s));
        attempts.insert(label, tries);
        rounds.push(r);
        per_round_metrics.push(md);
    }
    drop(d);
    Ok(batch_json(args, b, raw, rounds, per_round_metrics))
}

fn batch_json(args: &Args, b: usize, raw: Value, rounds: Vec<Round>, per_round_metrics: Vec<MetricsDelta>) -> Value {
    let pool_tps = median(&rounds.iter().map(|r| r.tokens_per_s).collect::<Vec<_>>());
    let raw_t = raw_tps(&raw);
    let one_batch = per_round_metrics.iter().all(|m| m.prefill.steps == 1.0 && m.prefill.mean_batch == b as f64);
    let ratio = pool_tps / raw_t;
    let med = |f: &dyn Fn(&MetricsDelta) -> f64| r3(median(&per_round_metrics.iter().map(f).collect::<Vec<_>>()));
    let busy = r3(median(&per_round_metrics.iter().zip(&rounds).map(|(m, r)| m.model_time_s / r.wall_s).collect::<Vec<_>>()));
    json!({
        "batch": b,
        "max_wait_ms": args.batch_wait_ms,
        "pool_tokens_per_s": r3(pool_tps),
        "raw_tokens_per_s": r3(raw_t),
        "ratio": r3(ratio),
        "target": 0.9,
        "met": ratio >= 0.9,
        "one_batch_formed_every_round": one_batch,
        "pool_rounds": rounds,
        "pool_metrics_per_round": per_round_metrics,
        "pool_decode_step_ms": med(&|m| m.decode.mean_step_ms),
        "pool_prefill_ms": med(&|m| m.prefill.mean_step_ms),
        "pool_model_busy_fraction": busy,
        "raw": raw,
    })
}
