#!/usr/bin/env python3
"""Baseline: greedy generation with plain ONNX Runtime (Python, CPU), to compare
Switchboard's throughput against.

    bench_raw_ort.py --model DIR [--batch 8] [--prompt-len 32] [--new-tokens 32]
                     [--threads 2] [--repeats 3] [--seed 0] [--json]

DIR is a model in the layout written by scripts/gen_model.py (HF Optimum
decoder with KV cache: input_ids, attention_mask, position_ids,
past_key_values.{i}.key/.value -> logits, present.{i}.key/.value).

The batch holds `batch` prompts of `prompt-len` random non-special token ids
(seeded).  One generation = one prefill over the whole batch (yields the first
new token) followed by new_tokens - 1 single-token decode steps, feeding
present -> past, growing attention_mask and position_ids = clip(cumsum(mask)-1, 0).
No early stop: every row generates exactly new_tokens tokens.

tokens/s = batch * new_tokens / wall seconds of one generation (prefill
included), median over `repeats` timed runs after one untimed warm-up.
Session: intra_op_num_threads=threads, inter_op_num_threads=1, sequential
execution, graph optimization level ALL, CPU execution provider.

With --json the object also carries, for the median run, `prefill_s` (the
first step: prefill + first token) and `decode_step_ms` (mean of the
new_tokens - 1 decode steps), to compare step by step with the daemon's
switchboard_inference_step_seconds.
"""

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np
import onnxruntime as ort


def load_model_info(model_dir):
    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = json.load(f)
    layers = cfg.get("n_layer", cfg.get("num_hidden_layers"))
    heads = cfg.get("n_head", cfg.get("num_attention_heads"))
    hidden = cfg.get("n_embd", cfg.get("hidden_size"))
    vocab = cfg["vocab_size"]
    kv_heads = cfg.get("num_key_value_heads", heads)
    head_dim = cfg.get("head_dim", hidden // heads)

    # ids that are safe prompt tokens: known to the tokenizer, not special
    special = set()
    tok_vocab = vocab
    tok_path = os.path.join(model_dir, "tokenizer.json")
    if os.path.exists(tok_path):
        with open(tok_path, encoding="utf-8") as f:
            tj = json.load(f)
        special = {t["id"] for t in tj.get("added_tokens", []) if t.get("special")}
        ids = list(tj["model"]["vocab"].values()) + [t["id"] for t in tj.get("added_tokens", [])]
        tok_vocab = min(vocab, max(ids) + 1)
    allowed = np.array([i for i in range(tok_vocab) if i not in special], dtype=np.int64)
    return dict(layers=layers, kv_heads=kv_heads, head_dim=head_dim, vocab=vocab, allowed=allowed)


def make_session(model_dir, threads):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(os.path.join(model_dir, "model.onnx"), so,
                                providers=["CPUExecutionProvider"])


def generate(sess, info, prompts, new_tokens, timings=None):
    """Greedy generation; returns generated ids [batch, new_tokens].

    If `timings` is a list, appends (prefill seconds, decode seconds) of this run."""
    b, plen = prompts.shape
    layers = info["layers"]
    out_names = [o.name for o in sess.get_outputs()]
    empty = np.zeros((b, info["kv_heads"], 0, info["head_dim"]), np.float32)
    past = {}
    for i in range(layers):
        past[f"past_key_values.{i}.key"] = empty
        past[f"past_key_values.{i}.value"] = empty
    mask = np.ones((b, plen), np.int64)
    ids = prompts
    pos = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)
    out = np.empty((b, new_tokens), np.int64)
    t_start = time.perf_counter()
    t_prefill = None
    for step in range(new_tokens):
        feed = {"input_ids": ids, "attention_mask": mask, "position_ids": pos}
        feed.update(past)
        res = dict(zip(out_names, sess.run(None, feed)))
        nxt = np.argmax(res["logits"][:, -1, :], axis=-1).astype(np.int64)
        out[:, step] = nxt
        if step == 0:
            t_prefill = time.perf_counter()
        if step + 1 == new_tokens:
            break
        for i in range(layers):
            past[f"past_key_values.{i}.key"] = res[f"present.{i}.key"]
            past[f"past_key_values.{i}.value"] = res[f"present.{i}.value"]
        ids = nxt[:, None]
        mask = np.concatenate([mask, np.ones((b, 1), np.int64)], axis=1)
        pos = (np.cumsum(mask, axis=1) - 1)[:, -1:]
    if timings is not None:
        t_end = time.perf_counter()
        timings.append((t_prefill - t_start, t_end - t_prefill))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="model directory (gen_model.py layout)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    a = ap.parse_args(argv)
    if min(a.batch, a.prompt_len, a.new_tokens, a.threads, a.repeats) < 1:
        ap.error("batch, prompt-len, new-tokens, threads and repeats must be >= 1")

    info = load_model_info(a.model)
    rng = np.random.default_rng(a.seed)
    prompts = rng.choice(info["allowed"], size=(a.batch, a.prompt_len)).astype(np.int64)

    t0 = time.perf_counter()
    sess = make_session(a.model, a.threads)
    load_s = time.perf_counter() - t0

    generate(sess, info, prompts, a.new_tokens)  # warm-up
    times = []
    steps = []
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        generate(sess, info, prompts, a.new_tokens, steps)
        times.append(time.perf_counter() - t0)
    sec = statistics.median(times)
    mid = sorted(range(len(times)), key=lambda i: times[i])[(len(times) - 1) // 2]
    prefill_s, decode_s = steps[mid]
    tps = a.batch * a.new_tokens / sec

    if a.json:
        print(json.dumps({
            "batch": a.batch,
            "threads": a.threads,
            "prompt_len": a.prompt_len,
            "new_tokens": a.new_tokens,
            "repeats": a.repeats,
            "tokens_per_s": round(tps, 3),
            "seconds": round(sec, 6),
            "all_seconds": [round(t, 6) for t in times],
            "session_load_s": round(load_s, 3),
            "onnxruntime": ort.__version__,
            "prefill_s": round(prefill_s, 6),
            "decode_step_ms": round(1000 * decode_s / max(1, a.new_tokens - 1), 3),
        }))
    else:
        print(f"raw ORT {ort.__version__}: model={a.model} batch={a.batch} prompt={a.prompt_len} "
              f"new={a.new_tokens} threads={a.threads}: {tps:.1f} tokens/s "
              f"(median {sec:.3f}s of {[round(t, 3) for t in times]}, session load {load_s:.2f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
