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

use std::collections::{BTreeMap, VecDeque};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::Parser;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

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

// ---------------------------------------------------------------------------------------------
// Small helpers

fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 { s[n / 2] } else { (s[n / 2 - 1] + s[n / 2]) / 2.0 }
}

/// Nearest-rank percentile of unsorted samples.
fn percentile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * s.len() as f64).ceil().max(1.0) as usize;
    s[rank.min(s.len()) - 1]
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() { f64::NAN } else { v.iter().sum::<f64>() / v.len() as f64 }
}

fn r3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

fn toml_str(s: &str) -> String {
    serde_json::to_string(s).expect("string serializes")
}

fn run_capture(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd).args(args).stderr(Stdio::null()).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

// ---------------------------------------------------------------------------------------------
// Keeping timings clean: a 2-core machine shared with builds gives garbage numbers. A monitor
// thread watches the CPU time of every process outside the bench's own process tree (the bench,
// the daemon it started, the raw ORT script); a measurement that overlaps a busy window is
// repeated once the machine is quiet again.

/// One process as /proc/PID/stat describes it.
struct Proc {
    comm: String,
    ppid: u32,
    /// utime + stime, in clock ticks.
    ticks: u64,
}

fn read_procs() -> BTreeMap<u32, Proc> {
    let mut out = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else { return out };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else { continue };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { continue };
        let rest: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        // rest[0] = state, [1] = ppid, [11] = utime, [12] = stime
        if rest.len() < 13 {
            continue;
        }
        let (Ok(ppid), Ok(u), Ok(st)) = (rest[1].parse::<u32>(), rest[11].parse::<u64>(), rest[12].parse::<u64>()) else { continue };
        out.insert(pid, Proc { comm: stat[open + 1..close].to_string(), ppid, ticks: u + st });
    }
    out
}

/// Whether `pid` is the bench itself or one of its descendants.
fn is_ours(pid: u32, procs: &BTreeMap<u32, Proc>, me: u32) -> bool {
    let mut p = pid;
    for _ in 0..64 {
        if p == me {
            return true;
        }
        match procs.get(&p) {
            Some(pr) if pr.ppid != 0 && pr.ppid != p => p = pr.ppid,
            _ => return false,
        }
    }
    false
}

/// CPU used by processes outside the bench's tree over `window`, as a fraction of one core,
/// with the biggest users.
fn foreign_cpu(window: Duration, tick_hz: f64) -> (f64, String) {
    let me = std::process::id();
    let a = read_procs();
    std::thread::sleep(window);
    let b = read_procs();
    let mut users: Vec<(u64, String)> = Vec::new();
    let mut total = 0u64;
    for (pid, pr) in &b {
        // Kernel threads (children of kthreadd) and our own tree don't count.
        if *pid == 2 || pr.ppid == 2 || is_ours(*pid, &b, me) {
            continue;
        }
        let before = a.get(pid).filter(|x| x.comm == pr.comm).map(|x| x.ticks).unwrap_or(0);
        let d = pr.ticks.saturating_sub(before);
        if d > 0 {
            total += d;
            users.push((d, format!("{}[{pid}]", pr.comm)));
        }
    }
    users.sort_by(|x, y| y.0.cmp(&x.0));
    let top: Vec<String> =
        users.iter().take(3).map(|(d, n)| format!("{n} {:.0}%", 100.0 * *d as f64 / tick_hz / window.as_secs_f64())).collect();
    (total as f64 / tick_hz / window.as_secs_f64(), top.join(", "))
}

fn clock_ticks_per_second() -> f64 {
    run_capture("getconf", &["CLK_TCK"]).and_then(|s| s.parse().ok()).unwrap_or(100.0)
}

/// Foreign CPU above this fraction of one core marks a window as busy.
const FOREIGN_LIMIT: f64 = 0.10;

/// Background watcher of foreign CPU use, in back-to-back windows.
#[derive(Clone)]
struct Monitor {
    /// Busy windows: (start, end, description).
    busy: Arc<Mutex<Vec<(Instant, Instant, String)>>>,
    /// End of the last completed window.
    last_end: Arc<Mutex<Instant>>,
}

impl Monitor {
    const WINDOW: Duration = Duration::from_millis(500);

    fn start(tick_hz: f64) -> Monitor {
        let m = Monitor { busy: Arc::new(Mutex::new(Vec::new())), last_end: Arc::new(Mutex::new(Instant::now())) };
        let mm = m.clone();
        std::thread::spawn(move || {
            loop {
                let start = Instant::now();
                let (cpu, who) = foreign_cpu(Self::WINDOW, tick_hz);
                let end = Instant::now();
                if cpu > FOREIGN_LIMIT {
                    let mut b = mm.busy.lock().expect("monitor");
                    b.push((start, end, format!("other processes used {:.0}% of a core: {who}", cpu * 100.0)));
                    let n = b.len();
                    if n > 1000 {
                        b.drain(..n - 1000);
                    }
                }
                *mm.last_end.lock().expect("monitor") = end;
            }
        });
        m
    }

    /// Why the interval [from, to] was disturbed, if it was; waits until the monitor has
    /// looked at all of it.
    async fn disturbed(&self, from: Instant, to: Instant) -> Option<String> {
        let give_up = Instant::now() + Duration::from_secs(3);
        while *self.last_end.lock().expect("monitor") < to && Instant::now() < give_up {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.busy.lock().expect("monitor").iter().find(|(s, e, _)| *e >= from && *s <= to).map(|(_, _, w)| w.clone())
    }
}

/// Waits until processes outside the bench use (almost) no CPU. Returns whether it got quiet.
fn wait_for_quiet(timeout: Duration, tick_hz: f64) -> bool {
    let start = Instant::now();
    let mut last_note: Option<Instant> = None;
    let mut quiet_windows = 0;
    loop {
        let (cpu, who) = foreign_cpu(Duration::from_millis(700), tick_hz);
        if cpu <= FOREIGN_LIMIT {
            quiet_windows += 1;
            // Builds go quiet between crates: ask for a few quiet windows in a row after a busy spell.
            if last_note.is_none() || quiet_windows >= 4 {
                if last_note.is_some() {
                    eprintln!("  machine is quiet again");
                }
                return true;
            }
            continue;
        }
        quiet_windows = 0;
        if start.elapsed() >= timeout {
            eprintln!("  WARNING: machine still busy after {timeout:?} ({:.0}% of a core: {who}); measuring anyway", cpu * 100.0);
            return false;
        }
        if last_note.is_none_or(|t| t.elapsed() >= Duration::from_secs(30)) {
            eprintln!("  waiting for the machine to go quiet (other processes use {:.0}% of a core: {who})...", cpu * 100.0);
            last_note = Some(Instant::now());
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// Runs a measurement until it runs undisturbed (at most `attempts` times). Returns the value,
/// the attempts used and whether the kept one was clean.
async fn measured<T, F, Fut>(env: &BenchEnv, label: &str, mut f: F) -> Result<(T, usize, bool)>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut attempt = 0;
    loop {
        attempt += 1;
        let from = Instant::now();
        let v = f().await?;
        let to = Instant::now();
        match env.monitor.disturbed(from, to).await {
            None => return Ok((v, attempt, true)),
            Some(why) => {
                if attempt >= env.attempts {
                    eprintln!("  WARNING: {label} disturbed on all {attempt} attempts ({why}); keeping the last one");
                    env.disturbed.lock().expect("disturbed").push(format!("{label}: {why}"));
                    return Ok((v, attempt, false));
                }
                eprintln!("  {label} was disturbed ({why}); repeating it once the machine is quiet");
                wait_for_quiet(env.quiet_timeout, env.tick_hz);
            }
        }
    }
}

/// What every measurement needs to keep itself clean.
struct BenchEnv {
    monitor: Monitor,
    tick_hz: f64,
    quiet_timeout: Duration,
    attempts: usize,
    /// Measurements that stayed disturbed.
    disturbed: Mutex<Vec<String>>,
}

impl BenchEnv {
    fn quiet(&self, label: &str) {
        if !wait_for_quiet(self.quiet_timeout, self.tick_hz) {
            self.disturbed.lock().expect("disturbed").push(format!("{label}: machine not quiet at the start"));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The daemon under test

struct Daemon {
    child: Child,
    base: String,
    config_path: PathBuf,
    /// The daemon's own SQLite database (a fresh one per daemon, never the project's `data/`).
    db_path: PathBuf,
    log_tail: Arc<Mutex<VecDeque<String>>>,
}

impl Daemon {
    fn start(args: &Args, model: &Path, ort_lib: &Path, name: &str, max_batch: usize, max_wait_ms: u64) -> Result<Daemon> {
        let stem = std::env::temp_dir().join(format!("switchboard-bench-{}-{name}", std::process::id()));
        let config_path = stem.with_extension("toml");
        let db_path = stem.with_extension("db");
        remove_db(&db_path);
        let config = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n\n[model]\npath = {model}\nonnxruntime_lib = {lib}\n\n[storage]\npath = {db}\n\n\
             [inference]\nworkers = 1\nintra_op_threads = {threads}\nmax_batch = {max_batch}\nmax_wait_ms = {max_wait_ms}\n\
             max_queue = 1024\nrequest_timeout_ms = 300000\nmax_new_tokens = {new}\nexecution_provider = \"cpu\"\n\n\
             [sessions]\nsystem_prompt = \"\"\n\n[log]\nformat = \"json\"\nlevel = \"warn,switchboard::daemon=info\"\n",
            model = toml_str(&model.to_string_lossy()),
            lib = toml_str(&ort_lib.to_string_lossy()),
            db = toml_str(&db_path.to_string_lossy()),
            threads = args.threads,
            new = args.new_tokens,
        );
        std::fs::write(&config_path, config).with_context(|| format!("writing {}", config_path.display()))?;
        let mut cmd = Command::new(&args.daemon);
        cmd.arg("run").arg("--config").arg(&config_path);
        // The scenario's config must be what runs: drop inherited overrides.
        for (k, _) in std::env::vars() {
            if k.starts_with("SWITCHBOARD__") || k == "RUST_LOG" {
                cmd.env_remove(k);
            }
        }
        cmd.env("SWITCHBOARD__SERVER__LISTEN", "127.0.0.1:0");
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = cmd.spawn().with_context(|| format!("starting {}", args.daemon.display()))?;
        let stderr = child.stderr.take().expect("piped");
        let log_tail = Arc::new(Mutex::new(VecDeque::new()));
        let (tx, rx) = mpsc::channel::<String>();
        {
            let tail = log_tail.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if line.contains("Switchboard is listening.") {
                        if let Ok(v) = serde_json::from_str::<Value>(&line) {
                            let addr = v.get("addr").or_else(|| v.pointer("/fields/addr")).and_then(Value::as_str);
                            if let Some(a) = addr {
                                let _ = tx.send(a.to_string());
                            }
                        }
                    }
                    let mut t = tail.lock().expect("log tail");
                    t.push_back(line);
                    if t.len() > 40 {
                        t.pop_front();
                    }
                }
            });
        }
        let mut daemon = Daemon { child, base: String::new(), config_path, db_path, log_tail };
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(addr) => {
                    daemon.base = format!("http://{addr}");
                    return Ok(daemon);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Some(status) = daemon.child.try_wait()? {
                        std::thread::sleep(Duration::from_millis(200));
                        bail!("the daemon exited during start-up ({status}); its log:\n{}", daemon.tail());
                    }
                    if Instant::now() > deadline {
                        bail!("the daemon did not log `Switchboard is listening.` within 180 s; its log:\n{}", daemon.tail());
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    std::thread::sleep(Duration::from_millis(300));
                    bail!("the daemon closed its log without listening; its log:\n{}", daemon.tail());
                }
            }
        }
    }

    fn tail(&self) -> String {
        self.log_tail.lock().expect("log tail").iter().cloned().collect::<Vec<_>>().join("\n")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.config_path);
        remove_db(&self.db_path);
    }
}

fn remove_db(db: &Path) {
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut p = db.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(p));
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP client side

#[derive(Debug, Clone, Deserialize, Serialize)]
struct ChatReply {
    conversation: String,
    reply: String,
    tokens: usize,
    prompt_tokens: usize,
    finish_reason: Option<String>,
    latency_ms: u64,
}

struct Client {
    http: reqwest::Client,
    base: String,
    counter: Arc<AtomicU64>,
    run_id: String,
}

impl Client {
    fn conversation(&self) -> String {
        format!("bench-{}-{}", self.run_id, self.counter.fetch_add(1, Ordering::Relaxed))
    }

    async fn wait_ready(&self, daemon: &mut Daemon) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok(r) = self.http.get(format!("{}/readyz", self.base)).send().await {
                if r.status().is_success() {
                    return Ok(());
                }
            }
            if let Some(status) = daemon.child.try_wait()? {
                bail!("the daemon exited before it was ready ({status}); its log:\n{}", daemon.tail());
            }
            if Instant::now() > deadline {
                bail!("/readyz did not answer 200 within 120 s; daemon log:\n{}", daemon.tail());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn body(&self, text: &str, max_new_tokens: usize, stream: bool) -> Value {
        json!({
            "conversation": self.conversation(),
            "user": "bench",
            "text": text,
            "max_new_tokens": max_new_tokens,
            "temperature": 0.0,
            "stream": stream,
        })
    }

    /// One non-streaming chat; returns the reply and the client-side latency.
    async fn chat(&self, text: &str, max_new_tokens: usize) -> Result<(ChatReply, Duration)> {
        let t0 = Instant::now();
        let resp = self.http.post(format!("{}/api/v1/chat", self.base)).json(&self.body(text, max_new_tokens, false)).send().await?;
        let status = resp.status();
        let bytes = resp.bytes().await?;
        let took = t0.elapsed();
        if !status.is_success() {
            bail!("chat answered {status}: {}", String::from_utf8_lossy(&bytes));
        }
        let reply: ChatReply = serde_json::from_slice(&bytes).with_context(|| format!("chat reply {}", String::from_utf8_lossy(&bytes)))?;
        Ok((reply, took))
    }

    /// One streaming chat; returns the final reply, the time to the first `delta` event, the
    /// total time, and the gap between the last `delta` and the `done` event (the engine emits
    /// both in the same step; the gap is the session's work after the last token plus delivery).
    async fn chat_stream(&self, text: &str, max_new_tokens: usize) -> Result<(ChatReply, Duration, Duration, Duration)> {
        let t0 = Instant::now();
        let resp = self.http.post(format!("{}/api/v1/chat", self.base)).json(&self.body(text, max_new_tokens, true)).send().await?;
        let status = resp.status();
        if !status.is_success() {
            let b = resp.bytes().await.unwrap_or_default();
            bail!("streaming chat answered {status}: {}", String::from_utf8_lossy(&b));
        }
        let mut stream = resp.bytes_stream();
        let mut buf: Vec<u8> = Vec::new();
        let mut ttft = None;
        let mut last_delta = None;
        let mut done = None;
        let mut done_at = None;
        while let Some(chunk) = stream.next().await {
            buf.extend_from_slice(&chunk?);
            while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = buf.drain(..end + 2).collect();
                let block = String::from_utf8_lossy(&block).replace('\r', "");
                let mut event = String::new();
                let mut data = Vec::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        event = v.trim_start().to_string();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push(v.strip_prefix(' ').unwrap_or(v).to_string());
                    }
                }
                let data = data.join("\n");
                match event.as_str() {
                    "delta" => {
                        let now = t0.elapsed();
                        if ttft.is_none() {
                            ttft = Some(now);
                        }
                        last_delta = Some(now);
                    }
                    "done" => {
                        done_at = Some(t0.elapsed());
                        done = Some(serde_json::from_str::<ChatReply>(&data).with_context(|| format!("done event {data}"))?);
                    }
                    "error" => bail!("the stream ended with an error event: {data}"),
                    _ => {}
                }
            }
        }
        let total = t0.elapsed();
        let reply = done.ok_or_else(|| anyhow!("the stream ended without a `done` event"))?;
        let ttft = ttft.ok_or_else(|| anyhow!("the stream had no `delta` event"))?;
        let done_gap = done_at.zip(last_delta).map(|(d, l)| d.saturating_sub(l)).unwrap_or_default();
        Ok((reply, ttft, total, done_gap))
    }

    async fn metrics(&self) -> Result<BTreeMap<String, f64>> {
        let text = self.http.get(format!("{}/metrics", self.base)).send().await?.error_for_status()?.text().await?;
        let mut m = BTreeMap::new();
        for line in text.lines() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            if let Some((k, v)) = line.rsplit_once(' ') {
                if let Ok(v) = v.parse::<f64>() {
                    m.insert(k.to_string(), v);
                }
            }
        }
        Ok(m)
    }
}

/// Checks a reply is what every benchmark request must produce.
fn check_reply(r: &ChatReply, new_tokens: usize, prompt_tokens: Option<usize>) -> Result<()> {
    if r.tokens != new_tokens {
        bail!("reply for {} has {} tokens, expected exactly {new_tokens} (finish_reason {:?})", r.conversation, r.tokens, r.finish_reason);
    }
    if r.finish_reason.as_deref() != Some("length") {
        bail!("reply for {} finished with {:?}, expected \"length\"", r.conversation, r.finish_reason);
    }
    if let Some(p) = prompt_tokens {
        if r.prompt_tokens != p {
            bail!("reply for {} had a {}-token prompt, expected {p}", r.conversation, r.prompt_tokens);
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Rounds

#[derive(Debug, Clone, Serialize)]
struct Round {
    requests: usize,
    tokens: usize,
    wall_s: f64,
    tokens_per_s: f64,
    /// Client-side latency of each request, in ms (completion order for concurrent rounds).
    latency_ms: Vec<f64>,
}

impl Round {
    fn new(latencies: Vec<Duration>, tokens: usize, wall: Duration) -> Round {
        Round {
            requests: latencies.len(),
            tokens,
            wall_s: r3(wall.as_secs_f64() * 1000.0) / 1000.0,
            tokens_per_s: r3(tokens as f64 / wall.as_secs_f64()),
            latency_ms: latencies.iter().map(|d| r3(d.as_secs_f64() * 1000.0)).collect(),
        }
    }
}

struct Workload<'a> {
    client: &'a Client,
    text: &'a str,
    new_tokens: usize,
    prompt_tokens: usize,
}

impl Workload<'_> {
    async fn sequential(&self, n: usize) -> Result<Round> {
        let t0 = Instant::now();
        let mut lats = Vec::with_capacity(n);
        for _ in 0..n {
            let (r, took) = self.client.chat(self.text, self.new_tokens).await?;
            check_reply(&r, self.new_tokens, Some(self.prompt_tokens))?;
            lats.push(took);
        }
        Ok(Round::new(lats, n * self.new_tokens, t0.elapsed()))
    }

    async fn concurrent(&self, n: usize) -> Result<Round> {
        let t0 = Instant::now();
        let futs = (0..n).map(|_| self.client.chat(self.text, self.new_tokens));
        let results = futures::future::join_all(futs).await;
        let wall = t0.elapsed();
        let mut lats = Vec::with_capacity(n);
        for res in results {
            let (r, took) = res?;
            check_reply(&r, self.new_tokens, Some(self.prompt_tokens))?;
            lats.push(took);
        }
        Ok(Round::new(lats, n * self.new_tokens, wall))
    }

    /// Returns the round, each request's time to first token and its last-delta-to-done gap.
    async fn streaming(&self, n: usize) -> Result<(Round, Vec<Duration>, Vec<Duration>)> {
        let t0 = Instant::now();
        let futs = (0..n).map(|_| self.client.chat_stream(self.text, self.new_tokens));
        let results = futures::future::join_all(futs).await;
        let wall = t0.elapsed();
        let mut lats = Vec::with_capacity(n);
        let mut ttfts = Vec::with_capacity(n);
        let mut gaps = Vec::with_capacity(n);
        for res in results {
            let (r, ttft, total, gap) = res?;
            check_reply(&r, self.new_tokens, Some(self.prompt_tokens))?;
            lats.push(total);
            ttfts.push(ttft);
            gaps.push(gap);
        }
        Ok((Round::new(lats, n * self.new_tokens, wall), ttfts, gaps))
    }
}

// ---------------------------------------------------------------------------------------------
// What the daemon says about itself (/metrics deltas over a measurement)

#[derive(Debug, Clone, Serialize)]
struct PhaseStats {
    steps: f64,
    mean_batch: f64,
    total_s: f64,
    mean_step_ms: f64,
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
struct MetricsDelta {
    prefill: PhaseStats,
    decode: PhaseStats,
    generated_tokens: f64,
    prompt_tokens: f64,
    /// Time spent inside model steps (prefill + decode).
    model_time_s: f64,
    /// Requests dispatched by the batcher, and their mean wait in its queue.
    queued: f64,
    queue_wait_mean_ms: f64,
    /// First tokens, and the mean time from submission to the first token (server side).
    first_tokens: f64,
    server_ttft_mean_ms: f64,
    /// Prefill batch sizes: bucket upper bound -> count (from the histogram).
    prefill_batch_buckets: BTreeMap<String, f64>,
}

fn metrics_delta(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>) -> MetricsDelta {
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
fn combine(ms: &[MetricsDelta]) -> MetricsDelta {
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

fn describe_metrics(m: &MetricsDelta, wall_s: f64) -> String {
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

// ---------------------------------------------------------------------------------------------
// Raw ONNX Runtime baseline

fn raw_ort(args: &Args, model: &Path, batch: usize, prompt_len: usize) -> Result<Value> {
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

fn raw_tps(v: &Value) -> f64 {
    v["tokens_per_s"].as_f64().unwrap_or(f64::NAN)
}

// ---------------------------------------------------------------------------------------------
// Prompt calibration

const PROMPT_SOURCE: &str = "Please give me a short summary of tomorrow's weather report for the city, and list what I should bring along for a long walk in the park by the river with my friends and family.";

/// Finds the prefix of [`PROMPT_SOURCE`] whose rendered prompt is closest to `target` tokens.
async fn calibrate(client: &Client, target: usize) -> Result<(String, usize)> {
    let chars: Vec<char> = PROMPT_SOURCE.chars().collect();
    let mut cache: BTreeMap<usize, usize> = BTreeMap::new();
    async fn probe(client: &Client, chars: &[char], n: usize, cache: &mut BTreeMap<usize, usize>) -> Result<usize> {
        if let Some(p) = cache.get(&n) {
            return Ok(*p);
        }
        let text: String = chars[..n].iter().collect();
        let (r, _) = client.chat(&text, 1).await?;
        cache.insert(n, r.prompt_tokens);
        Ok(r.prompt_tokens)
    }
    let (mut lo, mut hi) = (1usize, chars.len());
    if probe(client, &chars, hi, &mut cache).await? < target {
        bail!("the calibration text is too short for a {target}-token prompt");
    }
    // Smallest prefix with at least `target` tokens.
    while lo < hi {
        let mid = (lo + hi) / 2;
        if probe(client, &chars, mid, &mut cache).await? >= target {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    for n in [lo, lo.saturating_sub(1)] {
        if n >= 1 {
            probe(client, &chars, n, &mut cache).await?;
        }
    }
    let best = cache
        .iter()
        .filter(|(n, _)| chars[..**n].iter().any(|c| !c.is_whitespace()))
        .min_by_key(|(n, p)| ((**p as i64 - target as i64).abs(), **n))
        .map(|(n, p)| (*n, *p))
        .expect("probed");
    Ok((chars[..best.0].iter().collect(), best.1))
}

// ---------------------------------------------------------------------------------------------

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

async fn run(args: Args) -> Result<()> {
    let started = Instant::now();
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
    let tick_hz = clock_ticks_per_second();
    let env = BenchEnv {
        monitor: Monitor::start(tick_hz),
        tick_hz,
        quiet_timeout: Duration::from_secs(args.quiet_timeout_s),
        attempts: args.attempts.max(1),
        disturbed: Mutex::new(Vec::new()),
    };

    let http =
        reqwest::Client::builder().no_proxy().pool_max_idle_per_host(256).tcp_nodelay(true).timeout(Duration::from_secs(600)).build()?;
    let counter = Arc::new(AtomicU64::new(0));
    let run_id = format!("{}-{}", std::process::id(), std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs());
    let client_for = |base: &str| Client { http: http.clone(), base: base.to_string(), counter: counter.clone(), run_id: run_id.clone() };

    let machine = machine_info();
    let minfo = model_info(&model);
    let daemon_version = run_capture(&args.daemon.to_string_lossy(), &["--version"]).unwrap_or_default();
    let git = run_capture("git", &["rev-parse", "--short", "HEAD"]).unwrap_or_default();
    let git_dirty = run_capture("git", &["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    let date = run_capture("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]).unwrap_or_default();
    eprintln!(
        "switchboard-bench: {} | model {} | {} new tokens | {} intra-op threads | {} repeats",
        daemon_version,
        model.display(),
        args.new_tokens,
        args.threads,
        args.repeats
    );
    eprintln!(
        "machine: {} x {} ({}), {} GiB",
        machine["cpus"],
        machine["cpu_model"].as_str().unwrap_or("?"),
        machine["arch"].as_str().unwrap_or("?"),
        machine["memory_gib"]
    );
    let mut attempts_used: BTreeMap<String, usize> = BTreeMap::new();

    // ---- (a) + (c): the shipped batching settings --------------------------------------------
    let n = args.requests;
    eprintln!("\n[a/c] daemon with max_batch={n}, max_wait_ms={}", args.max_wait_ms);
    env.quiet("a/c");
    let mut d = Daemon::start(&args, &model, &ort_lib, "interactive", n, args.max_wait_ms)?;
    let client = client_for(&d.base);
    client.wait_ready(&mut d).await?;
    let (text, prompt_tokens) = calibrate(&client, args.prompt_tokens).await?;
    eprintln!("  prompt: {text:?} -> {prompt_tokens} prompt tokens (chat template, empty system prompt)");
    let w = Workload { client: &client, text: &text, new_tokens: args.new_tokens, prompt_tokens };
    // Warm-up: one request, then one untimed round at full concurrency.
    let (warm, _) = client.chat(&text, args.new_tokens).await?;
    check_reply(&warm, args.new_tokens, Some(prompt_tokens))?;
    w.concurrent(n).await?;

    let (cr, wr) = (&client, &w);
    // Sequential and concurrent rounds alternate, so slow drift of the machine (a VM's memory
    // bandwidth moves by tens of percent over minutes) hits both sides of each pair alike.
    let mut seq = Vec::new();
    let mut conc = Vec::new();
    for i in 0..args.repeats {
        let label = format!("(a) sequential round {}", i + 1);
        let (r, tries, _) = measured(&env, &label, move || async move {
            let before = cr.metrics().await?;
            let r = wr.sequential(n).await?;
            Ok((r, metrics_delta(&before, &cr.metrics().await?)))
        })
        .await?;
        eprintln!("  {label}: {:.1} tokens/s ({:.2} s)", r.0.tokens_per_s, r.0.wall_s);
        attempts_used.insert(label, tries);
        seq.push(r);
        let label = format!("(a) concurrent round {}", i + 1);
        let (r, tries, _) = measured(&env, &label, move || async move {
            let before = cr.metrics().await?;
            let r = wr.concurrent(n).await?;
            Ok((r, metrics_delta(&before, &cr.metrics().await?)))
        })
        .await?;
        eprintln!("  {label}: {:.1} tokens/s ({:.2} s)", r.0.tokens_per_s, r.0.wall_s);
        attempts_used.insert(label, tries);
        conc.push(r);
    }
    let mut ttft_ms = Vec::new();
    let mut done_gap_ms = Vec::new();
    let mut stream = Vec::new();
    for i in 0..args.repeats {
        let label = format!("(c) streaming round {}", i + 1);
        let ((r, ttfts, gaps, md), tries, _) = measured(&env, &label, move || async move {
            let before = cr.metrics().await?;
            let (r, ttfts, gaps) = wr.streaming(n).await?;
            Ok((r, ttfts, gaps, metrics_delta(&before, &cr.metrics().await?)))
        })
        .await?;
        done_gap_ms.extend(gaps.iter().map(|g| r3(g.as_secs_f64() * 1000.0)));
        let ms: Vec<f64> = ttfts.iter().map(|t| r3(t.as_secs_f64() * 1000.0)).collect();
        eprintln!(
            "  {label}: TTFT p50 {:.0} ms, max {:.0} ms (server-side mean {:.0} ms); {:.1} tokens/s",
            percentile(&ms, 50.0),
            percentile(&ms, 100.0),
            md.server_ttft_mean_ms,
            r.tokens_per_s
        );
        attempts_used.insert(label, tries);
        ttft_ms.extend(ms);
        stream.push((r, md));
    }
    drop(d);

    let tps = |v: &[(Round, MetricsDelta)]| median(&v.iter().map(|(r, _)| r.tokens_per_s).collect::<Vec<_>>());
    let wall = |v: &[(Round, MetricsDelta)]| v.iter().map(|(r, _)| r.wall_s).sum::<f64>();
    let metrics_of = |v: &[(Round, MetricsDelta)]| combine(&v.iter().map(|(_, m)| m.clone()).collect::<Vec<_>>());
    let seq_tps = tps(&seq);
    let conc_tps = tps(&conc);
    let pair_ratios: Vec<f64> = seq.iter().zip(&conc).map(|((s, _), (c, _))| r3(c.tokens_per_s / s.tokens_per_s)).collect();
    let ratio_a = median(&pair_ratios);
    eprintln!("  at once / one at a time per pair: {pair_ratios:?} -> median {ratio_a:.2}");
    let (seq_wall, conc_wall, stream_wall) = (wall(&seq), wall(&conc), wall(&stream));
    let (md_seq, md_conc, md_stream) = (metrics_of(&seq), metrics_of(&conc), metrics_of(&stream));
    eprintln!("  sequential: {}", describe_metrics(&md_seq, seq_wall));
    eprintln!("  concurrent: {}", describe_metrics(&md_conc, conc_wall));
    eprintln!("  streaming:  {}", describe_metrics(&md_stream, stream_wall));
    let per_round = |v: &[(Round, MetricsDelta)]| v.iter().map(|(_, m)| m.clone()).collect::<Vec<_>>();
    let (seq_per_round, conc_per_round, stream_per_round) = (per_round(&seq), per_round(&conc), per_round(&stream));
    let seq_rounds: Vec<Round> = seq.into_iter().map(|(r, _)| r).collect();
    let conc_rounds: Vec<Round> = conc.into_iter().map(|(r, _)| r).collect();
    let stream_rounds: Vec<Round> = stream.into_iter().map(|(r, _)| r).collect();

    // Raw ORT, one process per batch size (each loads its own session, warms up once, then
    // times `repeats` generations).
    let raw_run = |b: usize| {
        let label = format!("raw ORT batch {b}");
        let (args, model, env) = (&args, &model, &env);
        async move {
            eprintln!("\n[raw] ONNX Runtime batch {b}, prompt {prompt_tokens}");
            env.quiet(&label);
            let (v, tries, _) = measured(env, &label, || async { raw_ort(args, model, b, prompt_tokens) }).await?;
            eprintln!(
                "  {:.1} tokens/s (prefill {:.0} ms, decode step {:.1} ms)",
                raw_tps(&v),
                1000.0 * v["prefill_s"].as_f64().unwrap_or(f64::NAN),
                v["decode_step_ms"].as_f64().unwrap_or(f64::NAN)
            );
            anyhow::Ok((label, v, tries))
        }
    };
    let mut raw_by_batch: BTreeMap<usize, Value> = BTreeMap::new();
    let (label, raw1, tries) = raw_run(1).await?;
    attempts_used.insert(label, tries);
    raw_by_batch.insert(1, raw1.clone());

    // ---- (b): one batch of B vs raw ORT at batch B ------------------------------------------
    let mut b_results = Vec::new();
    for &b in &args.batches {
        let (label, raw, tries) = raw_run(b).await?;
        attempts_used.insert(label, tries);
        raw_by_batch.insert(b, raw.clone());
        eprintln!("\n[b] batch {b}: the daemon with max_batch={b}, max_wait_ms={}", args.batch_wait_ms);
        env.quiet(&format!("(b) batch {b}"));
        let mut d = Daemon::start(&args, &model, &ort_lib, &format!("batch{b}"), b, args.batch_wait_ms)?;
        let client = client_for(&d.base);
        client.wait_ready(&mut d).await?;
        let w = Workload { client: &client, text: &text, new_tokens: args.new_tokens, prompt_tokens };
        let (warm, _) = client.chat(&text, args.new_tokens).await?;
        check_reply(&warm, args.new_tokens, Some(prompt_tokens))?;
        w.concurrent(b).await?;
        let (cr, wr) = (&client, &w);
        let mut rounds = Vec::new();
        let mut per_round_metrics = Vec::new();
        for i in 0..args.repeats {
            let label = format!("(b) batch {b} round {}", i + 1);
            let ((r, md), tries, _) = measured(&env, &label, move || async move {
                let before = cr.metrics().await?;
                let r = wr.concurrent(b).await?;
                Ok((r, metrics_delta(&before, &cr.metrics().await?)))
            })
            .await?;
            eprintln!("  {label}: {:.1} tokens/s ({:.2} s); {}", r.tokens_per_s, r.wall_s, describe_metrics(&md, r.wall_s));
            attempts_used.insert(label, tries);
            rounds.push(r);
            per_round_metrics.push(md);
        }
        drop(d);
        let pool_tps = median(&rounds.iter().map(|r| r.tokens_per_s).collect::<Vec<_>>());
        let raw_t = raw_tps(&raw);
        let one_batch = per_round_metrics.iter().all(|m| m.prefill.steps == 1.0 && m.prefill.mean_batch == b as f64);
        let ratio = pool_tps / raw_t;
        b_results.push(json!({
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
            "pool_decode_step_ms": r3(median(&per_round_metrics.iter().map(|m| m.decode.mean_step_ms).collect::<Vec<_>>())),
            "pool_prefill_ms": r3(median(&per_round_metrics.iter().map(|m| m.prefill.mean_step_ms).collect::<Vec<_>>())),
            "pool_model_busy_fraction": r3(median(&per_round_metrics.iter().zip(&rounds).map(|(m, r)| m.model_time_s / r.wall_s).collect::<Vec<_>>())),
            "raw": raw,
        }));
    }
    let raw_n = match raw_by_batch.get(&n) {
        Some(v) => v.clone(),
        None => {
            let (label, v, tries) = raw_run(n).await?;
            attempts_used.insert(label, tries);
            raw_by_batch.insert(n, v.clone());
            v
        }
    };
    let raw_ratio = raw_tps(&raw_n) / raw_tps(&raw1);
    let disturbed: Vec<String> = env.disturbed.lock().expect("disturbed").clone();
    let repeated: Vec<String> = attempts_used.iter().filter(|(_, t)| **t > 1).map(|(k, t)| format!("{k} x{t}")).collect();

    // ---- Report --------------------------------------------------------------------------------
    let ttft_p50 = percentile(&ttft_ms, 50.0);
    let ttft_p99 = percentile(&ttft_ms, 99.0);
    let ttft_max = percentile(&ttft_ms, 100.0);
    let ttft_min = percentile(&ttft_ms, 0.0);
    let total_s = started.elapsed().as_secs_f64();
    let ort_version = raw1["onnxruntime"].as_str().unwrap_or("?").to_string();

    let mut table = String::new();
    let line = "-".repeat(100);
    table += &format!(
        "\nSwitchboard benchmark {date} | {} x {} | ONNX Runtime {ort_version} | {} threads\nmodel {} ({} layers, hidden {}, vocab {}) | prompt {prompt_tokens} tokens | {} new tokens | median of {} rounds\n{line}\n",
        machine["cpus"],
        machine["cpu_model"].as_str().unwrap_or("?"),
        args.threads,
        args.model.display(),
        minfo["layers"],
        minfo["hidden"],
        minfo["vocab"],
        args.new_tokens,
        args.repeats,
    );
    table += &format!("{:<48} {:>12} {:>12} {:>10}  {}\n", "scenario", "pool tok/s", "raw tok/s", "ratio", "target");
    table += &format!("{line}\n");
    table += &format!("{:<48} {:>12.1} {:>12.1} {:>10}\n", format!("(a) {n} requests one at a time"), seq_tps, raw_tps(&raw1), "");
    table += &format!(
        "{:<48} {:>12.1} {:>12.1} {:>10}\n",
        format!("(a) {n} requests at once (max_wait {} ms)", args.max_wait_ms),
        conc_tps,
        raw_tps(&raw_n),
        ""
    );
    table += &format!(
        "{:<48} {:>12} {:>12} {:>9.2}x  >= 5x: {} (raw batch {n}/batch 1: {:.2}x)\n",
        "(a) at once / one at a time (median of pairs)",
        "",
        "",
        ratio_a,
        verdict(ratio_a >= 5.0),
        raw_ratio
    );
    for r in &b_results {
        table += &format!(
            "{:<48} {:>12.1} {:>12.1} {:>10.3}  >= 0.90: {}{}\n",
            format!("(b) batch {} (max_batch {0}, max_wait {} ms)", r["batch"], args.batch_wait_ms),
            r["pool_tokens_per_s"].as_f64().unwrap_or(f64::NAN),
            r["raw_tokens_per_s"].as_f64().unwrap_or(f64::NAN),
            r["ratio"].as_f64().unwrap_or(f64::NAN),
            verdict(r["met"].as_bool().unwrap_or(false)),
            if r["one_batch_formed_every_round"].as_bool().unwrap_or(false) { "" } else { " (NOT one batch!)" }
        );
    }
    table += &format!(
        "{:<48} p50 {:.0} ms, p99 {:.0} ms (min {:.0}, max {:.0}; {} samples; server-side mean {:.0} ms)\n",
        format!("(c) TTFT, {n} concurrent streams"),
        ttft_p50,
        ttft_p99,
        ttft_min,
        ttft_max,
        ttft_ms.len(),
        md_stream.server_ttft_mean_ms
    );
    table += &format!(
        "{:<48} p50 {:.1} ms, max {:.1} ms (the session's work after the last token, then delivery)\n",
        "(c) gap last delta -> done event",
        percentile(&done_gap_ms, 50.0),
        percentile(&done_gap_ms, 100.0)
    );
    table += &format!("{line}\n");
    table += "step times (daemon /metrics vs raw ORT script):\n";
    for r in &b_results {
        table += &format!(
            "  batch {:>2}: decode step pool {:.1} ms vs raw {:.1} ms; prefill pool {:.0} ms vs raw {:.0} ms; model busy {:.0}% of pool wall time\n",
            r["batch"],
            r["pool_decode_step_ms"].as_f64().unwrap_or(f64::NAN),
            r["raw"]["decode_step_ms"].as_f64().unwrap_or(f64::NAN),
            r["pool_prefill_ms"].as_f64().unwrap_or(f64::NAN),
            1000.0 * r["raw"]["prefill_s"].as_f64().unwrap_or(f64::NAN),
            100.0 * r["pool_model_busy_fraction"].as_f64().unwrap_or(f64::NAN),
        );
    }
    table += &format!("  (a) one at a time: {}\n", describe_metrics(&md_seq, seq_wall));
    table += &format!("  (a) at once:       {}\n", describe_metrics(&md_conc, conc_wall));
    table += &format!("  (c) streaming:     {}\n", describe_metrics(&md_stream, stream_wall));
    table += &format!(
        "  (a)/(c) prefill batch sizes at once: {:?}; streaming: {:?}\n",
        md_conc.prefill_batch_buckets, md_stream.prefill_batch_buckets
    );
    if !repeated.is_empty() {
        table += &format!("repeated because other processes used the CPU: {}\n", repeated.join(", "));
    }
    if !disturbed.is_empty() {
        table += &format!("WARNING: still disturbed after {} attempts: {}\n", env.attempts, disturbed.join("; "));
    }
    table += &format!("total bench runtime {:.0} s\n", total_s);
    println!("{table}");

    let results = json!({
        "date": date,
        "git_commit": git,
        "git_dirty": git_dirty,
        "daemon_version": daemon_version,
        "onnxruntime": ort_version,
        "machine": machine,
        "model": minfo,
        "settings": {
            "requests": n,
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
        "prompt": {"text": text, "prompt_tokens": prompt_tokens},
        "a": {
            "sequential_tokens_per_s": r3(seq_tps),
            "concurrent_tokens_per_s": r3(conc_tps),
            "ratio": r3(ratio_a),
            "ratio_method": "median over rounds of concurrent/sequential, rounds interleaved",
            "pair_ratios": pair_ratios,
            "ratio_of_medians": r3(conc_tps / seq_tps),
            "target": 5.0,
            "met": ratio_a >= 5.0,
            "raw_batch1_tokens_per_s": r3(raw_tps(&raw1)),
            "raw_batch_n_tokens_per_s": r3(raw_tps(&raw_n)),
            "raw_ratio": r3(raw_ratio),
            "sequential_rounds": seq_rounds,
            "concurrent_rounds": conc_rounds,
            "sequential_metrics": md_seq,
            "concurrent_metrics": md_conc,
            "sequential_metrics_per_round": seq_per_round,
            "concurrent_metrics_per_round": conc_per_round,
        },
        "b": b_results,
        "c": {
            "requests": n,
            "samples": ttft_ms.len(),
            "ttft_p50_ms": r3(ttft_p50),
            "ttft_p99_ms": r3(ttft_p99),
            "ttft_min_ms": r3(ttft_min),
            "ttft_max_ms": r3(ttft_max),
            "ttft_mean_ms": r3(mean(&ttft_ms)),
            "ttft_ms": ttft_ms,
            "done_gap_p50_ms": r3(percentile(&done_gap_ms, 50.0)),
            "done_gap_ms": done_gap_ms,
            "rounds": stream_rounds,
            "metrics": md_stream,
            "metrics_per_round": stream_per_round,
        },
        "raw_ort": raw_by_batch.iter().map(|(k, v)| (k.to_string(), v.clone())).collect::<serde_json::Map<_, _>>(),
        "disturbed": disturbed,
        "attempts": attempts_used,
        "total_runtime_s": r3(total_s),
    });
    if !args.out.is_empty() {
        std::fs::write(&args.out, serde_json::to_string_pretty(&results)? + "\n").with_context(|| format!("writing {}", args.out))?;
        eprintln!("results written to {}", args.out);
    }
    Ok(())
}
