//! What the bench reports: the machine and model it ran on, the table it prints and the JSON
//! it writes (`--out`, BENCHMARKS-results.json by default).

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result};
use serde_json::{Value, json};

use crate::Args;
use crate::metrics::describe_metrics;
use crate::monitor::BenchEnv;
use crate::raw_ort::raw_tps;
use crate::scenarios::{Attempts, Batches, Interactive};
use crate::stats::{mean, percentile, r3};

/// The trimmed stdout of a command that succeeded.
pub fn run_capture(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd).args(args).stderr(Stdio::null()).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn machine_info() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model_name = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").map(|r| r.trim_start_matches([' ', '\t', ':']).to_string()))
        .unwrap_or_else(|| "unknown".into());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: f64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:").and_then(|r| r.split_whitespace().next()).and_then(|x| x.parse().ok()))
        .unwrap_or(0.0);
    let flags = cpuinfo.lines().find_map(|l| l.strip_prefix("flags")).unwrap_or_default();
    let simd: Vec<&str> = ["avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni"]
        .into_iter()
        .filter(|f| flags.split_whitespace().any(|x| x == *f))
        .collect();
    json!({
        "arch": std::env::consts::ARCH,
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu_model": model_name,
        "simd": simd,
        "memory_gib": r3(mem_kib / 1024.0 / 1024.0),
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "hypervisor": cpuinfo.contains(" hypervisor"),
    })
}

fn model_info(model: &Path) -> Value {
    let cfg: Value =
        std::fs::read_to_string(model.join("config.json")).ok().and_then(|s| serde_json::from_str(&s).ok()).unwrap_or(Value::Null);
    let size = std::fs::metadata(model.join("model.onnx")).map(|m| m.len()).unwrap_or(0);
    json!({
        "path": model.display().to_string(),
        "layers": cfg.get("n_layer").or(cfg.get("num_hidden_layers")),
        "heads": cfg.get("n_head").or(cfg.get("num_attention_heads")),
        "hidden": cfg.get("n_embd").or(cfg.get("hidden_size")),
        "vocab": cfg.get("vocab_size"),
        "onnx_mib": r3(size as f64 / 1024.0 / 1024.0),
    })
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "MISSED" }
}

/// What the run ran on: machine, model, versions, date.
pub struct Meta {
    pub machine: Value,
    pub model: Value,
    pub daemon_version: String,
    pub git: String,
    pub git_dirty: bool,
    pub date: String,
}

impl Meta {
    pub fn collect(args: &Args, model: &Path) -> Meta {
        Meta {
            machine: machine_info(),
            model: model_info(model),
            daemon_version: run_capture(&args.daemon.to_string_lossy(), &["--version"]).unwrap_or_default(),
            git: run_capture("git", &["rev-parse", "--short", "HEAD"]).unwrap_or_default(),
            git_dirty: run_capture("git", &["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty()),
            date: run_capture("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]).unwrap_or_default(),
        }
    }

    /// The two lines printed before the first scenario.
    pub fn announce(&self, args: &Args, model: &Path) {
        eprintln!(
            "switchboard-bench: {} | model {} | {} new tokens | {} intra-op threads | {} repeats",
            self.daemon_version,
            model.display(),
            args.new_tokens,
            args.threads,
            args.repeats
        );
        eprintln!(
            "machine: {} x {} ({}), {} GiB",
            self.machine["cpus"],
            self.machine["cpu_model"].as_str().unwrap_or("?"),
            self.machine["arch"].as_str().unwrap_or("?"),
            self.machine["memory_gib"]
        );
    }
}

/// Time-to-first-token summary of (c), in ms.
struct Ttft {
    p50: f64,
    p99: f64,
    min: f64,
    max: f64,
}

/// Everything the table and the JSON are made from.
pub struct Report<'a> {
    args: &'a Args,
    meta: &'a Meta,
    run: &'a Interactive,
    batches: &'a Batches,
    attempts: &'a Attempts,
    /// `--attempts`, at least 1.
    max_attempts: usize,
    disturbed: Vec<String>,
    repeated: Vec<String>,
    ttft: Ttft,
    raw_ratio: f64,
    ort_version: String,
    total_s: f64,
}

impl<'a> Report<'a> {
    pub fn new(
        args: &'a Args,
        meta: &'a Meta,
        run: &'a Interactive,
        batches: &'a Batches,
        attempts: &'a Attempts,
        env: &BenchEnv,
        total_s: f64,
    ) -> Report<'a> {
        let max_attempts = env.attempts;
        let disturbed = env.disturbed.lock().expect("disturbed").clone();
        let repeated = attempts.iter().filter(|(_, t)| **t > 1).map(|(k, t)| format!("{k} x{t}")).collect();
        let ms = &run.ttft_ms;
        let ttft = Ttft { p50: percentile(ms, 50.0), p99: percentile(ms, 99.0), min: percentile(ms, 0.0), max: percentile(ms, 100.0) };
        let raw_ratio = raw_tps(&batches.raw_n) / raw_tps(&batches.raw1);
        let ort_version = batches.raw1["onnxruntime"].as_str().unwrap_or("?").to_string();
        Report { args, meta, run, batches, attempts, max_attempts, disturbed, repeated, ttft, raw_ratio, ort_version, total_s }
    }

    /// The table printed at the end.
    pub fn table(&self) -> String {
        let line = "-".repeat(100);
        let mut table = self.table_header(&line);
        table += &self.table_rows();
        table += &format!("{line}\n");
        table += &self.table_step_times();
        if !self.repeated.is_empty() {
            table += &format!("repeated because other processes used the CPU: {}\n", self.repeated.join(", "));
        }
        if !self.disturbed.is_empty() {
            table += &format!("WARNING: still disturbed after {} attempts: {}\n", self.max_attempts, self.disturbed.join("; "));
        }
        table += &format!("total bench runtime {:.0} s\n", self.total_s);
        table
    }

    fn table_header(&self, line: &str) -> String {
        let (args, machine, minfo) = (self.args, &self.meta.machine, &self.meta.model);
        let mut s = format!(
            "\nSwitchboard benchmark {} | {} x {} | ONNX Runtime {} | {} threads\nmodel {} ({} layers, hidden {}, vocab {}) | prompt {} tokens | {} new tokens | median of {} rounds\n{line}\n",
            self.meta.date,
            machine["cpus"],
            machine["cpu_model"].as_str().unwrap_or("?"),
            self.ort_version,
            args.threads,
            args.model.display(),
            minfo["layers"],
            minfo["hidden"],
            minfo["vocab"],
            self.run.prompt.tokens,
            args.new_tokens,
            args.repeats,
        );
        s += &format!("{:<48} {:>12} {:>12} {:>10}  {}\n", "scenario", "pool tok/s", "raw tok/s", "ratio", "target");
        s += &format!("{line}\n");
        s
    }

    /// One row per scenario: (a), (b) per batch size, (c).
    fn table_rows(&self) -> String {
        let (args, run, n) = (self.args, self.run, self.args.requests);
        let (raw1, raw_n) = (raw_tps(&self.batches.raw1), raw_tps(&self.batches.raw_n));
        let mut s = format!("{:<48} {:>12.1} {:>12.1} {:>10}\n", format!("(a) {n} requests one at a time"), run.seq.tps, raw1, "");
        s += &format!(
            "{:<48} {:>12.1} {:>12.1} {:>10}\n",
            format!("(a) {n} requests at once (max_wait {} ms)", args.max_wait_ms),
            run.conc.tps,
            raw_n,
            ""
        );
        s += &format!(
            "{:<48} {:>12} {:>12} {:>9.2}x  >= 5x: {} (raw batch {n}/batch 1: {:.2}x)\n",
            "(a) at once / one at a time (median of pairs)",
            "",
            "",
            run.ratio_a,
            verdict(run.ratio_a >= 5.0),
            self.raw_ratio
        );
        for r in &self.batches.results {
            s += &format!(
                "{:<48} {:>12.1} {:>12.1} {:>10.3}  >= 0.90: {}{}\n",
                format!("(b) batch {} (max_batch {0}, max_wait {} ms)", r["batch"], args.batch_wait_ms),
                r["pool_tokens_per_s"].as_f64().unwrap_or(f64::NAN),
                r["raw_tokens_per_s"].as_f64().unwrap_or(f64::NAN),
                r["ratio"].as_f64().unwrap_or(f64::NAN),
                verdict(r["met"].as_bool().unwrap_or(false)),
                if r["one_batch_formed_every_round"].as_bool().unwrap_or(false) { "" } else { " (NOT one batch!)" }
            );
        }
        s += &format!(
            "{:<48} p50 {:.0} ms, p99 {:.0} ms (min {:.0}, max {:.0}; {} samples; server-side mean {:.0} ms)\n",
            format!("(c) TTFT, {n} concurrent streams"),
            self.ttft.p50,
            self.ttft.p99,
            self.ttft.min,
            self.ttft.max,
            run.ttft_ms.len(),
            run.stream.metrics.server_ttft_mean_ms
        );
        s += &format!(
            "{:<48} p50 {:.1} ms, max {:.1} ms (the session's work after the last token, then delivery)\n",
            "(c) gap last delta -> done event",
            percentile(&run.done_gap_ms, 50.0),
            percentile(&run.done_gap_ms, 100.0)
        );
        s
    }

    /// Step times from the daemon's /metrics against the raw ORT script's.
    fn table_step_times(&self) -> String {
        let run = self.run;
        let mut s = String::from("step times (daemon /metrics vs raw ORT script):\n");
        for r in &self.batches.results {
            s += &format!(
                "  batch {:>2}: decode step pool {:.1} ms vs raw {:.1} ms; prefill pool {:.0} ms vs raw {:.0} ms; model busy {:.0}% of pool wall time\n",
                r["batch"],
                r["pool_decode_step_ms"].as_f64().unwrap_or(f64::NAN),
                r["raw"]["decode_step_ms"].as_f64().unwrap_or(f64::NAN),
                r["pool_prefill_ms"].as_f64().unwrap_or(f64::NAN),
                1000.0 * r["raw"]["prefill_s"].as_f64().unwrap_or(f64::NAN),
                100.0 * r["pool_model_busy_fraction"].as_f64().unwrap_or(f64::NAN),
            );
        }
        s += &format!("  (a) one at a time: {}\n", describe_metrics(&run.seq.metrics, run.seq.wall_s));
        s += &format!("  (a) at once:       {}\n", describe_metrics(&run.conc.metrics, run.conc.wall_s));
        s += &format!("  (c) streaming:     {}\n", describe_metrics(&run.stream.metrics, run.stream.wall_s));
        s += &format!(
            "  (a)/(c) prefill batch sizes at once: {:?}; streaming: {:?}\n",
            run.conc.metrics.prefill_batch_buckets, run.stream.metrics.prefill_batch_buckets
        );
        s
    }

    /// The results as JSON.
    pub fn results(&self) -> Value {
        let (args, meta, run) = (self.args, self.meta, self.run);
        json!({
            "date": meta.date,
            "git_commit": meta.git,
            "git_dirty": meta.git_dirty,
            "daemon_version": meta.daemon_version,
            "onnxruntime": self.ort_version,
            "machine": meta.machine,
            "model": meta.model,
            "settings": {
                "requests": args.requests,
                "new_tokens": args.new_tokens,
                "intra_op_threads": args.threads,
                "inter_op_threads": 1,
                "workers": 1,
                "repeats": args.repeats,
                "max_wait_ms_a_c": args.max_wait_ms,
                "max_wait_ms_b": args.batch_wait_ms,
                "temperature": 0.0,
                "system_prompt": "",
            },
            "prompt": {"text": run.prompt.text, "prompt_tokens": run.prompt.tokens},
            "a": self.results_a(),
            "b": self.batches.results,
            "c": self.results_c(),
            "raw_ort": self.batches.raw_by_batch.iter().map(|(k, v)| (k.to_string(), v.clone())).collect::<serde_json::Map<_, _>>(),
            "disturbed": self.disturbed,
            "attempts": self.attempts,
            "total_runtime_s": r3(self.total_s),
        })
    }

    fn results_a(&self) -> Value {
        let run = self.run;
        json!({
            "sequential_tokens_per_s": r3(run.seq.tps),
            "concurrent_tokens_per_s": r3(run.conc.tps),
            "ratio": r3(run.ratio_a),
            "ratio_method": "median over rounds of concurrent/sequential, rounds interleaved",
            "pair_ratios": run.pair_ratios,
            "ratio_of_medians": r3(run.conc.tps / run.seq.tps),
            "target": 5.0,
            "met": run.ratio_a >= 5.0,
            "raw_batch1_tokens_per_s": r3(raw_tps(&self.batches.raw1)),
            "raw_batch_n_tokens_per_s": r3(raw_tps(&self.batches.raw_n)),
            "raw_ratio": r3(self.raw_ratio),
            "sequential_rounds": run.seq.rounds,
            "concurrent_rounds": run.conc.rounds,
            "sequential_metrics": run.seq.metrics,
            "concurrent_metrics": run.conc.metrics,
            "sequential_metrics_per_round": run.seq.per_round,
            "concurrent_metrics_per_round": run.conc.per_round,
        })
    }

    fn results_c(&self) -> Value {
        let run = self.run;
        json!({
            "requests": self.args.requests,
            "samples": run.ttft_ms.len(),
            "ttft_p50_ms": r3(self.ttft.p50),
            "ttft_p99_ms": r3(self.ttft.p99),
            "ttft_min_ms": r3(self.ttft.min),
            "ttft_max_ms": r3(self.ttft.max),
            "ttft_mean_ms": r3(mean(&run.ttft_ms)),
            "ttft_ms": run.ttft_ms,
            "done_gap_p50_ms": r3(percentile(&run.done_gap_ms, 50.0)),
            "done_gap_ms": run.done_gap_ms,
            "rounds": run.stream.rounds,
            "metrics": run.stream.metrics,
            "metrics_per_round": run.stream.per_round,
        })
    }
}

/// Writes the results to `out` (pretty JSON and a newline).
pub fn write_results(out: &str, results: &Value) -> Result<()> {
    std::fs::write(out, serde_json::to_string_pretty(results)? + "\n").with_context(|| format!("writing {out}"))?;
    eprintln!("results written to {out}");
    Ok(())
}
