//! The generation path on the real tiny model and real ONNX Runtime (run `make setup` first):
//! KV-cache decoding equals full forward passes, and a request yields the same greedy tokens
//! alone or inside any batch, joining and leaving mid-flight.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchboard_actors::inference::{Engine, GenEvent, GenRequest};
use switchboard_actors::model::detok::IncrementalDecoder;
use switchboard_actors::model::onnx::init_runtime;
use switchboard_actors::model::{Device, ModelAssets, OnnxModel, SamplingParams, SessionOptions};
use tokio::sync::mpsc;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn setup() -> (ort::environment::Environment, Arc<ModelAssets>) {
    let env = init_runtime(&root().join("runtime/libonnxruntime.so")).expect("ONNX Runtime (run `make setup`)");
    let assets = Arc::new(ModelAssets::load(&root().join("models/tiny")).expect("tiny model (run `make setup`)"));
    (env, assets)
}

fn model(env: &ort::environment::Environment, assets: &ModelAssets) -> OnnxModel {
    OnnxModel::load(env, &assets.onnx_path, &SessionOptions { intra_op_threads: 1, device: Device::Cpu }).unwrap()
}

fn request(id: u64, prompt: Vec<u32>, max_new: usize, sampling: SamplingParams) -> (GenRequest, mpsc::UnboundedReceiver<GenEvent>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let now = Instant::now();
    let req = GenRequest {
        id,
        prompt_ids: prompt,
        max_new_tokens: max_new,
        sampling,
        stop: vec![],
        events: tx,
        submitted: now,
        deadline: now + Duration::from_secs(60),
        attempt: 0,
        delivered: Default::default(),
        fault: None,
    };
    (req, rx)
}

fn drain(rx: &mut mpsc::UnboundedReceiver<GenEvent>) -> (String, Option<usize>) {
    let mut text = String::new();
    let mut tokens = None;
    while let Ok(ev) = rx.try_recv() {
        match ev {
            GenEvent::Delta(d) => text.push_str(&d),
            GenEvent::Done(s) => tokens = Some(s.generated_tokens),
            GenEvent::Failed(e) => panic!("generation failed: {e}"),
        }
    }
    (text, tokens)
}

fn prompts(assets: &ModelAssets) -> Vec<Vec<u32>> {
    ["Hello there, how are you?", "A", "Tell me a story about a quick brown fox and a lazy dog.", "你好，世界 👋 and more text"]
        .iter()
        .map(|t| assets.encode(t).unwrap())
        .collect()
}

/// Runs the engine until every request finished.
fn run_to_end(engine: &mut Engine) {
    while engine.active() > 0 {
        engine.step().unwrap();
    }
}

#[test]
fn kv_cache_decoding_matches_full_forward() {
    let (env, assets) = setup();
    let mut m = model(&env, &assets);
    let ids: Vec<i64> = assets.encode("The quick brown fox jumps over the lazy dog").unwrap().iter().map(|&t| t as i64).collect();
    let n = ids.len();
    // Full forward over the whole sequence, last-position logits.
    let full = m.forward(ids.clone(), vec![1; n], (0..n as i64).collect(), n, m.empty_cache(1).unwrap()).unwrap();
    // Prefill all but the last token, then one cached step.
    let pre = m.forward(ids[..n - 1].to_vec(), vec![1; n - 1], (0..n as i64 - 1).collect(), n - 1, m.empty_cache(1).unwrap()).unwrap();
    let step = m.forward(vec![ids[n - 1]], vec![1; n], vec![n as i64 - 1], 1, pre.cache).unwrap();
    let diff = full.last_logits.iter().zip(&step.last_logits).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(diff < 1e-4, "cached decoding differs from a full forward pass by {diff}");
    assert_eq!(step.cache.len, n);
}

#[test]
fn greedy_output_is_identical_alone_and_batched() {
    let (env, assets) = setup();
    let ps = prompts(&assets);
    let max_new = 12;
    // Alone.
    let mut alone = Vec::new();
    let mut e = Engine::new(model(&env, &assets), assets.clone());
    for (i, p) in ps.iter().enumerate() {
        let (r, mut rx) = request(i as u64, p.clone(), max_new, SamplingParams::greedy());
        e.admit(vec![r]).unwrap();
        run_to_end(&mut e);
        alone.push(drain(&mut rx));
    }
    assert!(alone.iter().all(|(t, n)| !t.is_empty() && *n == Some(max_new)), "{alone:?}");
    // All together, different prompt lengths in one batch.
    let mut rxs = Vec::new();
    let reqs: Vec<_> = ps
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let (r, rx) = request(100 + i as u64, p.clone(), max_new, SamplingParams::greedy());
            rxs.push(rx);
            r
        })
        .collect();
    e.admit(reqs).unwrap();
    assert_eq!(e.active(), ps.len());
    run_to_end(&mut e);
    for (i, rx) in rxs.iter_mut().enumerate() {
        assert_eq!(drain(rx), alone[i], "prompt {i} differs when batched");
    }
    // Staggered: requests join a running batch between decode steps, with different lengths
    // (so they also leave at different steps).
    let mut rxs = Vec::new();
    for (i, p) in ps.iter().enumerate() {
        let (r, rx) = request(200 + i as u64, p.clone(), max_new - i, SamplingParams::greedy());
        rxs.push(rx);
        e.admit(vec![r]).unwrap();
        e.step().unwrap();
        e.step().unwrap();
    }
    run_to_end(&mut e);
    for (i, rx) in rxs.iter_mut().enumerate() {
        let (text, n) = drain(rx);
        assert_eq!(n, Some(max_new - i));
        assert!(alone[i].0.starts_with(&text), "prompt {i}: staggered output {text:?} is not a prefix of {:?}", alone[i].0);
    }
}

#[test]
fn seeded_sampling_is_reproducible_in_any_batch() {
    let (env, assets) = setup();
    let ps = prompts(&assets);
    let sampling = SamplingParams { temperature: 0.9, top_p: 0.95, top_k: 40, repetition_penalty: 1.1, seed: 1234 };
    let mut e = Engine::new(model(&env, &assets), assets.clone());
    let (r, mut rx) = request(1, ps[0].clone(), 10, sampling.clone());
    e.admit(vec![r]).unwrap();
    run_to_end(&mut e);
    let alone = drain(&mut rx);
    let (r0, mut rx0) = request(2, ps[0].clone(), 10, sampling.clone());
    let (r1, _rx1) = request(3, ps[2].clone(), 10, SamplingParams { seed: 99, ..sampling });
    e.admit(vec![r1, r0]).unwrap();
    run_to_end(&mut e);
    assert_eq!(drain(&mut rx0), alone);
}

#[test]
fn cancelled_request_leaves_the_batch() {
    let (env, assets) = setup();
    let ps = prompts(&assets);
    let mut e = Engine::new(model(&env, &assets), assets.clone());
    let (a, rx_a) = request(1, ps[0].clone(), 50, SamplingParams::greedy());
    let (b, mut rx_b) = request(2, ps[1].clone(), 5, SamplingParams::greedy());
    e.admit(vec![a, b]).unwrap();
    drop(rx_a);
    let left = e.step().unwrap();
    assert!(left.contains(&1), "the cancelled request should leave at the next step");
    assert_eq!(e.active(), 1);
    run_to_end(&mut e);
    assert_eq!(drain(&mut rx_b).1, Some(5));
}

#[test]
fn streaming_decoder_never_splits_a_character() {
    let (_env, assets) = setup();
    let text = "héllo 你好，世界 👋 done";
    let ids = assets.encode(text).unwrap();
    let mut d = IncrementalDecoder::default();
    let mut out = String::new();
    for id in ids {
        let delta = d.push(&assets.tokenizer, id);
        assert!(!delta.contains('\u{FFFD}'), "delta {delta:?} holds a broken character");
        out.push_str(&delta);
    }
    out.push_str(&d.flush(&assets.tokenizer));
    assert_eq!(out, text);
}

#[test]
fn chat_template_and_tokenizer_round_trip() {
    let (_env, assets) = setup();
    use switchboard_actors::model::ChatMessage;
    let prompt = assets.template.render(&[ChatMessage::new("system", "Be brief."), ChatMessage::new("user", "Hi 你好")], true).unwrap();
    assert_eq!(prompt, "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi 你好<|im_end|>\n<|im_start|>assistant\n");
    let ids = assets.encode(&prompt).unwrap();
    // Special tokens are single ids, not spelled out byte by byte.
    assert_eq!(ids[0], assets.tokenizer.token_to_id("<|im_start|>").unwrap());
    assert_eq!(ids.iter().filter(|&&t| t == assets.tokenizer.token_to_id("<|im_end|>").unwrap()).count(), 2);
    let text = assets.tokenizer.decode(&ids, false).unwrap();
    assert_eq!(text, prompt);
}

#[test]
fn left_padded_rows_give_the_logits_of_the_row_alone() {
    let (env, assets) = setup();
    let mut m = model(&env, &assets);
    let long: Vec<i64> = assets.encode("A much longer prompt than the other one").unwrap().iter().map(|&t| t as i64).collect();
    let short: Vec<i64> = assets.encode("Short").unwrap().iter().map(|&t| t as i64).collect();
    let (nl, ns) = (long.len(), short.len());
    let alone = m.forward(short.clone(), vec![1; ns], (0..ns as i64).collect(), ns, m.empty_cache(1).unwrap()).unwrap();
    let pad = nl - ns;
    let mut ids = long.clone();
    ids.extend(std::iter::repeat_n(0, pad).chain(short.iter().copied()));
    let mut mask = vec![1; nl];
    mask.extend(std::iter::repeat_n(0, pad).chain(std::iter::repeat_n(1, ns)));
    let mut pos: Vec<i64> = (0..nl as i64).collect();
    pos.extend(std::iter::repeat_n(0, pad).chain(0..ns as i64));
    let batched = m.forward(ids, mask, pos, nl, m.empty_cache(2).unwrap()).unwrap();
    let v = batched.vocab;
    let diff = batched.last_logits[v..].iter().zip(&alone.last_logits).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(diff < 1e-4, "padded row differs from the row alone by {diff}");
    // Without the mask the padded row must differ: the mask is what makes batching exact.
    let mut ids = long.clone();
    ids.extend(std::iter::repeat_n(0, pad).chain(short.iter().copied()));
    let mut pos: Vec<i64> = (0..nl as i64).collect();
    pos.extend(std::iter::repeat_n(0, pad).chain(0..ns as i64));
    let unmasked = m.forward(ids, vec![1; 2 * nl], pos, nl, m.empty_cache(2).unwrap()).unwrap();
    let diff = unmasked.last_logits[v..].iter().zip(&alone.last_logits).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(diff > 1e-3, "ignoring the mask should change the logits (diff {diff})");
}
