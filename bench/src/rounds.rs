//! Timed rounds of requests: `n` one at a time, `n` all at once, `n` streaming at once.

use std::time::{Duration, Instant};

use anyhow::Result;
use serde::Serialize;

use crate::client::{Client, check_reply};
use crate::stats::r3;

#[derive(Debug, Clone, Serialize)]
pub struct Round {
    pub requests: usize,
    pub tokens: usize,
    pub wall_s: f64,
    pub tokens_per_s: f64,
    /// Client-side latency of each request, in ms (completion order for concurrent rounds).
    pub latency_ms: Vec<f64>,
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

/// The requests of a scenario: the calibrated prompt, exactly `new_tokens` generated.
pub struct Workload<'a> {
    pub client: &'a Client,
    pub text: &'a str,
    pub new_tokens: usize,
    pub prompt_tokens: usize,
}

impl Workload<'_> {
    /// One request, then one untimed round of `n` at once.
    pub async fn warm_up(&self, n: usize) -> Result<()> {
        let (warm, _) = self.client.chat(self.text, self.new_tokens).await?;
        check_reply(&warm, self.new_tokens, Some(self.prompt_tokens))?;
        self.concurrent(n).await?;
        Ok(())
    }

    pub async fn sequential(&self, n: usize) -> Result<Round> {
        let t0 = Instant::now();
        let mut lats = Vec::with_capacity(n);
        for _ in 0..n {
            let (r, took) = self.client.chat(self.text, self.new_tokens).await?;
            check_reply(&r, self.new_tokens, Some(self.prompt_tokens))?;
            lats.push(took);
        }
        Ok(Round::new(lats, n * self.new_tokens, t0.elapsed()))
    }

    pub async fn concurrent(&self, n: usize) -> Result<Round> {
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
    pub async fn streaming(&self, n: usize) -> Result<(Round, Vec<Duration>, Vec<Duration>)> {
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
