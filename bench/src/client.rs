//! The HTTP client side: chat requests (plain and streaming) against the daemon under test,
//! the checks every reply must pass, and the prompt calibration.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::daemon::Daemon;

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ChatReply {
    pub conversation: String,
    pub reply: String,
    pub tokens: usize,
    pub prompt_tokens: usize,
    pub finish_reason: Option<String>,
    pub latency_ms: u64,
}

/// What the clients of every daemon in one bench run share: the connection pool and the
/// conversation ids (unique across the run).
pub struct Clients {
    http: reqwest::Client,
    counter: Arc<AtomicU64>,
    run_id: String,
}

impl Clients {
    pub fn new() -> Result<Clients> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(256)
            .tcp_nodelay(true)
            .timeout(Duration::from_secs(600))
            .build()?;
        let counter = Arc::new(AtomicU64::new(0));
        let run_id = format!("{}-{}", std::process::id(), std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs());
        Ok(Clients { http, counter, run_id })
    }

    /// A client of the daemon at `base`.
    pub fn client(&self, base: &str) -> Client {
        Client { http: self.http.clone(), base: base.to_string(), counter: self.counter.clone(), run_id: self.run_id.clone() }
    }
}

pub struct Client {
    http: reqwest::Client,
    base: String,
    counter: Arc<AtomicU64>,
    run_id: String,
}

impl Client {
    fn conversation(&self) -> String {
        format!("bench-{}-{}", self.run_id, self.counter.fetch_add(1, Ordering::Relaxed))
    }

    pub async fn wait_ready(&self, daemon: &mut Daemon) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok(r) = self.http.get(format!("{}/readyz", self.base)).send().await
                && r.status().is_success()
            {
                return Ok(());
            }
            if let Some(status) = daemon.exited()? {
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
    pub async fn chat(&self, text: &str, max_new_tokens: usize) -> Result<(ChatReply, Duration)> {
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
    pub async fn chat_stream(&self, text: &str, max_new_tokens: usize) -> Result<(ChatReply, Duration, Duration, Duration)> {
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
                let (event, data) = parse_event(&block);
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

    /// The daemon's `/metrics`, one value per series.
    pub async fn metrics(&self) -> Result<BTreeMap<String, f64>> {
        let text = self.http.get(format!("{}/metrics", self.base)).send().await?.error_for_status()?.text().await?;
        Ok(crate::metrics::parse(&text))
    }
}

/// The event name and the (joined) data of one server-sent event block.
fn parse_event(block: &[u8]) -> (String, String) {
    let block = String::from_utf8_lossy(block).replace('\r', "");
    let mut event = String::new();
    let mut data = Vec::new();
    for line in block.lines() {
        if let Some(v) = line.strip_prefix("event:") {
            event = v.trim_start().to_string();
        } else if let Some(v) = line.strip_prefix("data:") {
            data.push(v.strip_prefix(' ').unwrap_or(v).to_string());
        }
    }
    (event, data.join("\n"))
}

/// Checks a reply is what every benchmark request must produce.
pub fn check_reply(r: &ChatReply, new_tokens: usize, prompt_tokens: Option<usize>) -> Result<()> {
    if r.tokens != new_tokens {
        bail!("reply for {} has {} tokens, expected exactly {new_tokens} (finish_reason {:?})", r.conversation, r.tokens, r.finish_reason);
    }
    if r.finish_reason.as_deref() != Some("length") {
        bail!("reply for {} finished with {:?}, expected \"length\"", r.conversation, r.finish_reason);
    }
    if let Some(p) = prompt_tokens
        && r.prompt_tokens != p
    {
        bail!("reply for {} had a {}-token prompt, expected {p}", r.conversation, r.prompt_tokens);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Prompt calibration

const PROMPT_SOURCE: &str = "Please give me a short summary of tomorrow's weather report for the city, and list what I should bring along for a long walk in the park by the river with my friends and family.";

/// The rendered prompt length of a prefix of `chars`, asked of the daemon once per length.
async fn probe(client: &Client, chars: &[char], n: usize, cache: &mut BTreeMap<usize, usize>) -> Result<usize> {
    if let Some(p) = cache.get(&n) {
        return Ok(*p);
    }
    let text: String = chars[..n].iter().collect();
    let (r, _) = client.chat(&text, 1).await?;
    cache.insert(n, r.prompt_tokens);
    Ok(r.prompt_tokens)
}

/// Finds the prefix of [`PROMPT_SOURCE`] whose rendered prompt is closest to `target` tokens.
pub async fn calibrate(client: &Client, target: usize) -> Result<(String, usize)> {
    let chars: Vec<char> = PROMPT_SOURCE.chars().collect();
    let mut cache: BTreeMap<usize, usize> = BTreeMap::new();
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
