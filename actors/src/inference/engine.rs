//! Continuous batching on one ONNX Runtime session.
//!
//! Sequences of different lengths share one batch: each row is left padded, the attention mask
//! hides the padding and `position_ids` count only real tokens, so a row computes exactly what
//! it would compute alone. New requests are prefilled on their own and their key/value caches
//! merged into the running batch between decode steps; finished rows leave after each step.
//! The prompt is never run twice.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use crate::model::detok::IncrementalDecoder;
use crate::model::onnx::RowSource;
use crate::model::{KvCache, ModelAssets, ModelError, OnnxModel, Sampler};
use crate::telemetry;

use super::{Fault, FinishReason, GenEvent, GenRequest, GenSummary, InferenceError};

/// One sequence in the running batch.
struct Row {
    req: GenRequest,
    /// Prompt and generated tokens, for the repetition penalty.
    history: Vec<u32>,
    /// Positions of this row held in the cache (prompt + generated, minus the pending token).
    cached: usize,
    /// The last sampled token, not yet fed to the model.
    pending: u32,
    generated: usize,
    sampler: Sampler,
    decoder: IncrementalDecoder,
    /// All text produced so far (before stop-string truncation).
    text: String,
    /// Bytes of `text` already sent.
    emitted: usize,
    first_token_at: Option<Instant>,
}

impl Row {
    fn new(req: GenRequest) -> Self {
        let history = req.prompt_ids.clone();
        let sampler = Sampler::new(req.sampling.clone());
        Self {
            cached: history.len(),
            history,
            req,
            pending: 0,
            generated: 0,
            sampler,
            decoder: IncrementalDecoder::default(),
            text: String::new(),
            emitted: 0,
            first_token_at: None,
        }
    }
}

/// Why a row leaves the batch.
enum Exit {
    Finished(FinishReason),
    Cancelled,
    TimedOut,
}

/// The batching state of one worker.
pub struct Engine {
    model: OnnxModel,
    assets: Arc<ModelAssets>,
    rows: Vec<Row>,
    /// Cache of all rows, right-aligned; `None` when no row runs.
    cache: Option<KvCache>,
}

impl Engine {
    pub fn new(model: OnnxModel, assets: Arc<ModelAssets>) -> Self {
        Self { model, assets, rows: Vec::new(), cache: None }
    }

    /// Sequences currently in the batch.
    pub fn active(&self) -> usize {
        self.rows.len()
    }

    /// Prefills `reqs` together, samples their first token and merges them into the batch.
    /// Returns the ids of requests that already finished (or were refused).
    pub fn admit(&mut self, reqs: Vec<GenRequest>) -> Result<Vec<u64>, ModelError> {
        let mut done = Vec::new();
        let mut fresh = Vec::new();
        let window = self.assets.context_window;
        for req in reqs {
            if let Some(f) = req.fault {
                if f == Fault::WorkerPanicAlways || req.attempt == 0 {
                    panic!("injected fault: worker panic (request {}, attempt {})", req.id, req.attempt);
                }
            }
            if req.prompt_ids.is_empty() || req.prompt_ids.len() >= window {
                let _ = req.events.send(GenEvent::Failed(InferenceError::PromptTooLong { prompt: req.prompt_ids.len(), window }));
                done.push(req.id);
            } else if req.events.is_closed() {
                done.push(req.id);
            } else {
                fresh.push(req);
            }
        }
        if fresh.is_empty() {
            return Ok(done);
        }
        let n = fresh.len();
        let max_len = fresh.iter().map(|r| r.prompt_ids.len()).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(n * max_len);
        let mut mask = Vec::with_capacity(n * max_len);
        let mut pos = Vec::with_capacity(n * max_len);
        for r in &fresh {
            let pad = max_len - r.prompt_ids.len();
            ids.extend(std::iter::repeat_n(0i64, pad).chain(r.prompt_ids.iter().map(|&t| t as i64)));
            mask.extend(std::iter::repeat_n(0i64, pad).chain(std::iter::repeat_n(1i64, r.prompt_ids.len())));
            pos.extend(std::iter::repeat_n(0i64, pad).chain(0..r.prompt_ids.len() as i64));
        }
        let started = Instant::now();
        let empty = self.model.empty_cache(n)?;
        let out = self.model.forward(ids, mask, pos, max_len, empty)?;
        telemetry::inference_step(n, started.elapsed(), "prefill");
        let vocab = out.vocab;
        // Sample each newcomer's first token; those that already finished never join.
        let mut all_logits = out.last_logits;
        let mut survivors = Vec::with_capacity(n);
        let mut tokens = 0;
        for (i, req) in fresh.into_iter().enumerate() {
            let mut row = Row::new(req);
            let exit = accept(&self.assets, &mut row, &mut all_logits[i * vocab..(i + 1) * vocab]);
            tokens += row.generated;
            match exit {
                Some(exit) => {
                    done.push(row.req.id);
                    self.finish(row, exit);
                }
                None => survivors.push((row, i)),
            }
        }
        telemetry::tokens_generated(tokens as u64);
        if survivors.is_empty() {
            return Ok(done);
        }
        let merged = match self.cache.take() {
            // Nothing was running and every newcomer goes on: the prefill's cache is the batch's.
            None if survivors.len() == n => out.cache,
            running => {
                let len = running.as_ref().map_or(0, |c| c.len).max(out.cache.len);
                let mut sources: Vec<RowSource<'_>> = Vec::with_capacity(self.rows.len() + survivors.len());
                if let Some(c) = &running {
                    sources.extend((0..self.rows.len()).map(|row| RowSource { cache: c, row, skip: 0 }));
                }
                sources.extend(survivors.iter().map(|&(_, row)| RowSource { cache: &out.cache, row, skip: 0 }));
                KvCache::gather(&sources, len, self.model.kv_heads, self.model.head_dim)?
            }
        };
        self.cache = Some(merged);
        self.rows.extend(survivors.into_iter().map(|(row, _)| row));
        Ok(done)
    }

    /// Runs one decode step for every row; returns the ids of requests that left the batch.
    pub fn step(&mut self) -> Result<Vec<u64>, ModelError> {
        let mut left = self.drop_inactive()?;
        let Some(cache) = self.cache.take() else { return Ok(left) };
        let b = self.rows.len();
        let len = cache.len;
        let mut ids = Vec::with_capacity(b);
        let mut mask = Vec::with_capacity(b * (len + 1));
        let mut pos = Vec::with_capacity(b);
        for r in &self.rows {
            let pad = len - r.cached;
            ids.push(r.pending as i64);
            mask.extend(std::iter::repeat_n(0i64, pad).chain(std::iter::repeat_n(1i64, r.cached + 1)));
            pos.push(r.cached as i64);
        }
        let started = Instant::now();
        let out = self.model.forward(ids, mask, pos, 1, cache)?;
        telemetry::inference_step(b, started.elapsed(), "decode");
        self.cache = Some(out.cache);
        let vocab = out.vocab;
        let mut exits: Vec<(usize, Exit)> = Vec::new();
        let assets = self.assets.clone();
        let mut all_logits = out.last_logits;
        let mut tokens = 0;
        for (i, row) in self.rows.iter_mut().enumerate() {
            row.cached += 1;
            let before = row.generated;
            if let Some(exit) = accept(&assets, row, &mut all_logits[i * vocab..(i + 1) * vocab]) {
                exits.push((i, exit));
            }
            tokens += row.generated - before;
        }
        // One counter update per step, not per token.
        telemetry::tokens_generated(tokens as u64);
        left.extend(self.remove_rows(exits)?);
        Ok(left)
    }

    /// Removes rows whose caller went away or whose deadline passed.
    fn drop_inactive(&mut self) -> Result<Vec<u64>, ModelError> {
        let now = Instant::now();
        let exits: Vec<(usize, Exit)> = self
            .rows
            .iter()
            .enumerate()
            .filter_map(|(i, r)| {
                if r.req.events.is_closed() {
                    Some((i, Exit::Cancelled))
                } else if now >= r.req.deadline {
                    Some((i, Exit::TimedOut))
                } else {
                    None
                }
            })
            .collect();
        if exits.is_empty() { Ok(Vec::new()) } else { self.remove_rows(exits) }
    }

    /// Takes the given rows out of the batch (reporting their end) and compacts the cache.
    fn remove_rows(&mut self, exits: Vec<(usize, Exit)>) -> Result<Vec<u64>, ModelError> {
        if exits.is_empty() {
            return Ok(Vec::new());
        }
        let mut ids = Vec::with_capacity(exits.len());
        let leaving: Vec<usize> = exits.iter().map(|(i, _)| *i).collect();
        let old_rows = std::mem::take(&mut self.rows);
        let mut kept_idx = Vec::new();
        let mut exits = exits;
        for (i, row) in old_rows.into_iter().enumerate() {
            if leaving.contains(&i) {
                let p = exits.iter().position(|(e, _)| *e == i).expect("exit for leaving row");
                let (_, exit) = exits.remove(p);
                ids.push(row.req.id);
                self.finish(row, exit);
            } else {
                kept_idx.push(i);
                self.rows.push(row);
            }
        }
        let cache = self.cache.take();
        if self.rows.is_empty() {
            return Ok(ids);
        }
        let cache = cache.expect("rows imply a cache");
        let len = self.rows.iter().map(|r| r.cached).max().unwrap_or(0);
        let skip = cache.len - len;
        let sources: Vec<RowSource<'_>> = kept_idx.iter().map(|&row| RowSource { cache: &cache, row, skip }).collect();
        self.cache = Some(KvCache::gather(&sources, len, self.model.kv_heads, self.model.head_dim)?);
        Ok(ids)
    }

    /// Sends the end of a row's stream.
    fn finish(&self, mut row: Row, exit: Exit) {
        let events = &row.req.events;
        match exit {
            Exit::Finished(reason) => {
                if reason != FinishReason::Stop {
                    let tail = row.decoder.flush(&self.assets.tokenizer);
                    row.text.push_str(&tail);
                    flush_text(&mut row, None);
                }
                let ttft = row.first_token_at.map(|t| t.duration_since(row.req.submitted)).unwrap_or_default();
                telemetry::inference_done(row.req.submitted.elapsed());
                let _ = row.req.events.send(GenEvent::Done(GenSummary {
                    prompt_tokens: row.req.prompt_ids.len(),
                    generated_tokens: row.generated,
                    finish_reason: reason,
                    time_to_first_token: ttft,
                }));
            }
            Exit::Cancelled => {
                telemetry::inference_rejected("cancelled");
            }
            Exit::TimedOut => {
                telemetry::inference_rejected("timeout");
                let ms = row.req.deadline.duration_since(row.req.submitted).as_millis() as u64;
                let _ = events.send(GenEvent::Failed(InferenceError::Timeout(ms)));
            }
        }
    }
}

/// Samples the row's next token from its logits, streams the new text, and says whether the
/// row is done.
fn accept(assets: &ModelAssets, row: &mut Row, logits: &mut [f32]) -> Option<Exit> {
    if row.req.events.is_closed() {
        return Some(Exit::Cancelled);
    }
    let token = row.sampler.sample(logits, &row.history);
    if row.first_token_at.is_none() {
        let now = Instant::now();
        row.first_token_at = Some(now);
        telemetry::time_to_first_token(now.duration_since(row.req.submitted));
    }
    if assets.generation.eos_token_ids.contains(&token) {
        return Some(Exit::Finished(FinishReason::Eos));
    }
    row.generated += 1;
    row.history.push(token);
    row.pending = token;
    let delta = row.decoder.push(&assets.tokenizer, token);
    row.text.push_str(&delta);
    let stop_at = find_stop(&row.text, &row.req.stop);
    flush_text(row, stop_at);
    if stop_at.is_some() {
        return Some(Exit::Finished(FinishReason::Stop));
    }
    if row.generated >= row.req.max_new_tokens {
        return Some(Exit::Finished(FinishReason::Length));
    }
    if row.cached + 1 >= assets.context_window {
        return Some(Exit::Finished(FinishReason::ContextWindow));
    }
    None
}

/// Sends the part of the text that is safe to send: everything up to `stop_at` when a stop
/// string was found (`Some`), or up to the end minus any suffix that could still become a stop
/// string. Text a previous attempt already delivered is skipped.
fn flush_text(row: &mut Row, stop_at: Option<usize>) {
    let end = match stop_at {
        Some(p) => p,
        None => row.text.len() - held_back(&row.text, &row.req.stop),
    };
    if end <= row.emitted {
        return;
    }
    let delivered = row.req.delivered.load(Ordering::Acquire);
    let from = row.emitted.max(delivered.min(end));
    if from < end && row.text.is_char_boundary(from) {
        let _ = row.req.events.send(GenEvent::Delta(row.text[from..end].to_string()));
        row.req.delivered.fetch_max(end, Ordering::AcqRel);
    }
    row.emitted = end;
}

/// Byte offset of the first stop string in `text`.
pub fn find_stop(text: &str, stops: &[String]) -> Option<usize> {
    stops.iter().filter(|s| !s.is_empty()).filter_map(|s| text.find(s.as_str())).min()
}

/// Length of the longest suffix of `text` that is a proper prefix of a stop string (on a char
/// boundary): that much text must wait until the next token decides.
pub fn held_back(text: &str, stops: &[String]) -> usize {
    let mut best = 0;
    for s in stops {
        for (i, _) in s.char_indices().skip(1) {
            if i > best && text.ends_with(&s[..i]) {
                best = i;
            }
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_strings_are_found_and_held_back() {
        let stops = vec!["\nUser:".to_string(), "END".to_string()];
        assert_eq!(find_stop("hello END there", &stops), Some(6));
        assert_eq!(find_stop("hello", &stops), None);
        assert_eq!(held_back("hello\nUs", &stops), 3);
        assert_eq!(held_back("hello EN", &stops), 2);
        assert_eq!(held_back("hello", &stops), 0);
        assert_eq!(held_back("日本", &["本当".to_string()]), 3);
    }
}
