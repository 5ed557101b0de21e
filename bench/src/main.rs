//! `switchboard-bench`: measures the inference pool end to end through the HTTP API of a real
//! daemon, against plain ONNX Runtime (`scripts/bench_raw_ort.py`) on the same machine in the
//! same run. See BENCHMARKS.md for the method; `make bench` runs it.
//!
//! Scenarios (every request greedy, exactly `--new-tokens` generated, a fresh conversation id
//! each so no history grows the prompt):
//!  (a) `--requests` requests sent all at once vs. the same number one at a time;
//!  (b) exactly B concurrent requests with `max_batch = B` (one batch) vs. raw ORT at batch B;
//!  (c) time to first token of `--requests` concurrent streaming requests.
//!
//! Tokens/s = generated tokens / wall seconds from the first send to the last reply, the same
//! way the raw ORT script counts batch * new_tokens / (prefill + decode) seconds.
//!
//! Modules: `monitor` keeps measurements clean of other processes, `daemon` runs the daemon
//! under test, `client` talks to it, `rounds` times batches of requests, `metrics` reads what
//! the daemon says about itself, `raw_ort` runs the baseline, `scenarios` runs (a), (b) and (c),
//! `report` prints the table and writes the JSON, `stats` holds the arithmetic.

mod client;
mod daemon;
mod metrics;
mod monitor;
mod raw_ort;
mod report;
mod rounds;
mod scenarios;
mod stats;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;

use crate::client::Clients;
use crate::monitor::BenchEnv;
use crate::report::{Meta, Report, write_results};
use crate::scenarios::Ctx;

#[derive(Parser, Debug)]
#[command(name = "switchboard-bench", about = "Benchmark the Switchboard inference pool against raw ONNX Runtime")]
struct Args {
    /// Model folder (Optimum layout), e.g. models/gpt2-small.
    #[arg(long)]
    model: PathBuf,
    /// Command prefix that runs scripts/bench_raw_ort.py (run through `sh -c`; `--model ...
    /// --batch B --prompt-len P --new-tokens N --threads T --repeats R --json` are appended).
    #[arg(long)]
    raw_ort: String,
    /// The daemon binary.
    #[arg(long, default_value = "target/release/switchboard")]
    daemon: PathBuf,
    /// ONNX Runtime shared library for the daemon.
    #[arg(long, default_value = "runtime/libonnxruntime.so")]
    ort_lib: PathBuf,
    /// Requests in scenarios (a) and (c).
    #[arg(long, default_value_t = 16)]
    requests: usize,
    /// Tokens generated per request (the model never emits EOS, so exactly this many).
    #[arg(long, default_value_t = 32)]
    new_tokens: usize,
    /// ONNX Runtime intra-op threads (daemon and raw ORT alike).
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Prompt length to aim for, in tokens (the text is calibrated against the daemon).
    #[arg(long, default_value_t = 32)]
    prompt_tokens: usize,
    /// Batch sizes for scenario (b).
    #[arg(long, value_delimiter = ',', default_value = "8,16")]
    batches: Vec<usize>,
    /// Timed rounds per measurement (the median is reported).
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// `inference.max_wait_ms` for scenarios (a) and (c) (the shipped default).
    #[arg(long, default_value_t = 20)]
    max_wait_ms: u64,
    /// `inference.max_wait_ms` for scenario (b), long enough for B requests to form one batch.
    #[arg(long, default_value_t = 50)]
    batch_wait_ms: u64,
    /// How long to wait for the machine to go quiet (other processes idle) before a measurement.
    #[arg(long, default_value_t = 900)]
    quiet_timeout_s: u64,
    /// Most runs of one measurement when other processes disturb it.
    #[arg(long, default_value_t = 4)]
    attempts: usize,
    /// Where to write the results as JSON (empty: don't write).
    #[arg(long, default_value = "BENCHMARKS-results.json")]
    out: String,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let args = Args::parse();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    // Dropping `run` on a signal drops the running daemon, which kills it.
    tokio::select! {
        r = run(args) => r,
        _ = tokio::signal::ctrl_c() => bail!("interrupted"),
        _ = term.recv() => bail!("terminated"),
    }
}

/// Checks the arguments; returns the canonical model folder and ONNX Runtime library.
fn check_args(args: &Args) -> Result<(PathBuf, PathBuf)> {
    if args.requests == 0 || args.new_tokens == 0 || args.repeats == 0 || args.threads == 0 {
        bail!("--requests, --new-tokens, --repeats and --threads must be at least 1");
    }
    let model = std::fs::canonicalize(&args.model).with_context(|| format!("model folder {}", args.model.display()))?;
    if !model.join("model.onnx").is_file() {
        bail!("{} has no model.onnx (run `make bench-model`)", model.display());
    }
    let ort_lib = std::fs::canonicalize(&args.ort_lib)
        .with_context(|| format!("ONNX Runtime library {} (run `make setup`)", args.ort_lib.display()))?;
    if !args.daemon.is_file() {
        bail!("daemon binary {} not found (cargo build --release --bin switchboard)", args.daemon.display());
    }
    Ok((model, ort_lib))
}

async fn run(args: Args) -> Result<()> {
    let started = Instant::now();
    let (model, ort_lib) = check_args(&args)?;
    let env = BenchEnv::new(Duration::from_secs(args.quiet_timeout_s), args.attempts.max(1));
    let clients = Clients::new()?;
    let meta = Meta::collect(&args, &model);
    meta.announce(&args, &model);

    let ctx = Ctx { args: &args, model: &model, ort_lib: &ort_lib, env: &env, clients: &clients };
    let mut attempts = BTreeMap::new();
    let interactive = scenarios::interactive(&ctx, &mut attempts).await?;
    let batches = scenarios::batches(&ctx, &interactive.prompt, &mut attempts).await?;

    let report = Report::new(&args, &meta, &interactive, &batches, &attempts, &env, started.elapsed().as_secs_f64());
    println!("{}", report.table());
    if !args.out.is_empty() {
        write_results(&args.out, &report.results())?;
    }
    Ok(())
}
