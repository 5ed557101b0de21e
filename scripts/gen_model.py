#!/usr/bin/env python3
"""Generate a small, seeded, random-weight GPT-2 style model in the Hugging Face
Optimum ONNX export layout, for tests and benchmarks of Switchboard.

No torch: the graph is built with ``onnx.helper`` (opset 17) from numpy arrays.

Usage
-----
    gen_model.py --out DIR [--size tiny|gpt2-small] [--seed 0]
                 [--layers N --heads N --hidden N --vocab N --ctx N] [--force]

Presets (explicit flags override single fields):
    tiny        2 layers,  4 heads, hidden 128, vocab   512, context  512
    gpt2-small 12 layers, 12 heads, hidden 768, vocab 50257, context 1024

If DIR already holds a complete model and --force is not given, a note is
printed and the script exits 0 (idempotent, for ``make setup``).  Generation
happens in a temporary sibling directory that is self-tested and only then
renamed to DIR, so an interrupted or failed run never leaves a half model.

Files written to DIR
--------------------
model.onnx
    GPT-2 decoder with KV cache: learned positional embeddings, pre-LayerNorm,
    causal multi-head attention concatenating past K/V, exact (Erf) GELU MLP,
    final LayerNorm, LM head tied to the token embedding (a Transpose of the
    ``wte`` initializer, so the weight is stored once).
    Inputs:  input_ids        int64 [batch_size, sequence_length]
             attention_mask   int64 [batch_size, past_sequence_length + sequence_length]
             position_ids     int64 [batch_size, sequence_length]
             past_key_values.{i}.key / .value
                              float32 [batch_size, num_heads, past_sequence_length, head_dim]
    Outputs: logits           float32 [batch_size, sequence_length, vocab]
             present.{i}.key / .value
                              float32 [batch_size, num_heads, past_sequence_length + sequence_length, head_dim]
    past_sequence_length may be 0 (first call).  Masking combines the causal
    mask (query at absolute position past+q sees keys 0..past+q) with the
    attention_mask (key padding); masked scores are set to float32 min with
    ``Where`` (not -inf, so fully padded rows give no NaN).  With left padding
    callers pass position_ids = clip(cumsum(attention_mask) - 1, 0); padded
    rows then give the same logits as the unpadded sequence.
config.json, generation_config.json, tokenizer_config.json (ChatML template)
tokenizer.json
    Byte-level BPE (HF ``tokenizers`` format) learned deterministically by this
    script (own merge loop, ties broken lexicographically) from a fixed corpus
    embedded below (English, some Chinese and emoji).  All 256 byte-level
    symbols are in the vocab, so any input encodes.  Special tokens:
    ``<|endoftext|>`` = 0, ``<|im_start|>`` = 1, ``<|im_end|>`` = 2.
    Tokenizer vocab size = min(model vocab, what the corpus can reach).

Never emitting special tokens (important for tests)
---------------------------------------------------
With random weights the eos token could be the greedy argmax at the first step
and replies would be empty.  Therefore:
  * the embedding rows of all special tokens are exactly zero, so their logits
    from the tied head are exactly 0, and
  * the graph adds a constant LM-head bias to the logits: -30 for special
    token ids; also -30 for model ids the tokenizer does not have (ids >=
    tokenizer vocab size: gpt2-small has 50257 model ids but the small corpus
    yields far fewer tokens) and for tokens whose bytes are not, on their own,
    printable UTF-8 (partial multi-byte sequences such as a lone 0xE4 byte, or
    control characters other than \n and \t), so that greedy output is
    readable text that a streaming detokenizer can emit token by token;
    0 otherwise.  Such tokens still encode/decode normally.
Real-token logits are ~N(0, 0.02*sqrt(hidden)), far above -30, so greedy
decoding never emits a special (or undecodable) token and generation always
runs to max_new_tokens.

Weights are random normal (std 0.02, numpy default_rng(seed)), LayerNorm
gamma 1 / beta 0.  Same flags + seed give byte-identical files.

After generation a self-test runs with onnxruntime (exit code != 0 on failure):
  1. full forward vs. incremental decoding (prefill 5, then 1 token at a time),
  2. left-padded batch of 2 vs. each row alone (prefill + 3 decode steps),
  3. greedy decoding of 8 steps never yields a special token id,
plus a tokenizer encode/decode round-trip check.
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections import Counter

import numpy as np

PRESETS = {
    "tiny": dict(layers=2, heads=4, hidden=128, vocab=512, ctx=512),
    "gpt2-small": dict(layers=12, heads=12, hidden=768, vocab=50257, ctx=1024),
}

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # ids 0, 1, 2
BOS_ID, EOS_ID, PAD_ID = 0, 2, 0
LN_EPS = 1e-5
INIT_STD = 0.02
SPECIAL_LOGIT_BIAS = -30.0
OPSET = 17
IR_VERSION = 8  # IR version matching opset 17; readable by any recent onnxruntime

MODEL_FILES = [
    "model.onnx",
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
]

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Fixed training corpus for the tokenizer.  Changing it changes tokenizer.json.
CORPUS = """\
The quick brown fox jumps over the lazy dog. The dog did not seem to mind.
Once upon a time, in a small village by the sea, there lived an old fisherman
who went out every morning before the sun rose. He knew the names of all the
boats in the harbor and the moods of the water in every season.

Hello! How are you today? I am fine, thank you. What would you like to talk about?
Can you help me write a short email to my team about the meeting on Friday?
Sure. Here is a draft: "Hi everyone, a quick reminder that our weekly meeting
moves to Friday at 10:30. Please bring your updates and any open questions."

You are a helpful assistant. Answer the question as clearly as possible.
The user asked: what is the capital of France? The answer is Paris.
The user asked: how many days are in a leap year? The answer is 366.
Explain the difference between a process and a thread in simple words.
A process is a running program with its own memory; threads are lighter units
of work inside a process that share the same memory and resources.

In computer science, a transformer is a neural network architecture that uses
attention to weigh the importance of different parts of the input. Language
models predict the next token given the previous tokens. During generation,
the model stores keys and values from earlier steps in a cache so that each new
step only needs to process one token. Batching many requests together keeps
the hardware busy and improves throughput, while streaming sends each token
to the client as soon as it is ready.

fn main() {
    let numbers = vec![1, 2, 3, 4, 5];
    let total: i32 = numbers.iter().map(|x| x * 2).sum();
    println!("total = {}", total);
}

def fibonacci(n):
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a

SELECT name, count(*) FROM users WHERE active = 1 GROUP BY name ORDER BY 2 DESC;
{"id": 42, "status": "ok", "items": [3.14, 2.718, 1.618], "tags": ["alpha", "beta"]}
https://example.com/path/to/page?query=value&lang=en#section-2

Numbers and dates: 0 1 2 3 4 5 6 7 8 9 10 100 1000 2024-05-17 12:45:00 $19.99 50% 3/4
Weather report: light rain in the morning, clearing in the afternoon, with
temperatures between 12 and 18 degrees. Winds from the west at 20 km/h.

Recipe for a simple tomato soup: heat olive oil in a pot, add chopped onions and
garlic, cook until soft, then add tomatoes, salt, pepper and a little sugar.
Simmer for twenty minutes, blend until smooth, and serve with fresh bread.

She said, "I'll be there in five minutes," but it took her almost an hour.
They're going to the library; we're staying home. It's a beautiful day, isn't it?
Questions, answers, stories, poems, lists, tables, and code all look different.
Good morning, good afternoon, good evening, and good night.
Thank you very much for your patience and your kind words.

A short poem:
  The river runs where mountains sleep,
  its silver song is slow and deep;
  the stars lean down to hear it play,
  and carry every note away.

你好，世界！今天天气很好，我们一起去公园散步吧。
人工智能正在改变我们的生活和工作方式。
请问，这个问题应该怎么回答？谢谢你的帮助。
我喜欢读书、写字和听音乐。中文、英文和代码都很有意思。

Emoji time: 👋 😀 🎉 🚀 ❤️ 👍 🌍 ☕ 🐍 🦀 ✨ 🔥 — nice! Café, naïve, résumé, über, señor, façade.
Ünïcödé çharacters like é, ü, ñ, ø, ß and symbols like → ← ✓ ✗ € £ ¥ © ® ™ are common.

Lists:
- first item
- second item
- third item
1. open the file
2. read the data
3. close the file

The assistant should be polite, concise and correct. If it does not know the
answer, it should say so instead of making something up. Users often ask for
summaries, translations, explanations, examples, and step by step instructions.
"""

ROUNDTRIP_STRINGS = [
    "Hello, world! The quick brown fox.",
    "你好，世界",
    "héllo 👋",
    "  leading spaces, tabs\tand\nnewlines\n",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "zzqx 0xDEADBEEF ~!@#$%^&*()_+ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
]


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------
# Tokenizer
# ----------------------------------------------------------------------------

def bytes_to_unicode():
    """GPT-2 byte -> printable unicode char mapping (same as tokenizers ByteLevel)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1)
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def learn_bpe(words, max_merges):
    """Deterministic BPE: repeatedly merge the most frequent adjacent pair
    (ties broken by the lexicographically smallest pair), min frequency 2.

    words: dict {tuple_of_symbols: count}.  Returns list of (a, b) merges.
    """
    items = sorted(words.items())
    seqs = [list(w) for w, _ in items]
    freqs = [c for _, c in items]
    pair_counts = Counter()
    where = {}  # pair -> set(word index)
    for i, s in enumerate(seqs):
        for p in zip(s, s[1:]):
            pair_counts[p] += freqs[i]
            where.setdefault(p, set()).add(i)

    merges = []
    while len(merges) < max_merges and pair_counts:
        best, best_count = None, 0
        for p, c in pair_counts.items():
            if c > best_count or (c == best_count and p < best):
                best, best_count = p, c
        if best_count < 2:
            break
        merges.append(best)
        a, b = best
        ab = a + b
        for i in sorted(where.get(best, ())):
            s = seqs[i]
            f = freqs[i]
            for p in zip(s, s[1:]):
                pair_counts[p] -= f
                if pair_counts[p] <= 0:
                    del pair_counts[p]
            out = []
            j = 0
            while j < len(s):
                if j + 1 < len(s) and s[j] == a and s[j + 1] == b:
                    out.append(ab)
                    j += 2
                else:
                    out.append(s[j])
                    j += 1
            seqs[i] = out
            for p in zip(out, out[1:]):
                pair_counts[p] += f
                where.setdefault(p, set()).add(i)
        where.pop(best, None)
        pair_counts.pop(best, None)
    return merges


def build_tokenizer(max_vocab):
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    b2u = bytes_to_unicode()
    alphabet = [b2u[b] for b in range(256)]
    assert set(alphabet) == set(pre_tokenizers.ByteLevel.alphabet()), "byte alphabet mismatch"

    base = len(SPECIAL_TOKENS) + 256
    if max_vocab < base:
        raise SystemExit(f"--vocab must be >= {base} (3 special tokens + 256 byte symbols)")

    pre = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    words = Counter(w for w, _ in pre.pre_tokenize_str(CORPUS))
    words = {tuple(w): c for w, c in words.items()}

    vocab = {}
    for t in SPECIAL_TOKENS:
        vocab[t] = len(vocab)
    for ch in alphabet:
        vocab[ch] = len(vocab)

    # Learn enough merges; several merges can produce the same string, so
    # stop adding once the vocab is full.
    merges = []
    for a, b in learn_bpe(words, max_merges=max(0, max_vocab - base) * 2 + 16):
        if len(vocab) >= max_vocab and (a + b) not in vocab:
            break
        merges.append((a, b))
        if a + b not in vocab:
            vocab[a + b] = len(vocab)

    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    return tok


def check_tokenizer(path, model_vocab):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(path)
    n = tok.get_vocab_size(with_added_tokens=True)
    if n > model_vocab:
        raise AssertionError(f"tokenizer vocab {n} > model vocab {model_vocab}")
    for i, t in enumerate(SPECIAL_TOKENS):
        if tok.token_to_id(t) != i:
            raise AssertionError(f"special token {t} has id {tok.token_to_id(t)}, want {i}")
    for s in ROUNDTRIP_STRINGS:
        ids = tok.encode(s, add_special_tokens=False).ids
        back = tok.decode(ids, skip_special_tokens=False)
        if back != s:
            raise AssertionError(f"tokenizer round-trip failed: {s!r} -> {ids} -> {back!r}")
    return tok


# ----------------------------------------------------------------------------
# Weights and ONNX graph
# ----------------------------------------------------------------------------

def suppressed_ids(tok, model_vocab):
    """Bool [model_vocab]: ids that get the -30 logit bias (see docstring)."""
    u2b = {u: b for b, u in bytes_to_unicode().items()}
    tok_vocab = tok.get_vocab_size(with_added_tokens=True)
    sup = np.ones(model_vocab, dtype=bool)
    for i in range(len(SPECIAL_TOKENS), tok_vocab):
        t = tok.id_to_token(i)
        try:
            text = bytes(u2b[c] for c in t).decode("utf-8")
        except (KeyError, UnicodeDecodeError):
            continue
        if all(c.isprintable() or c in "\n\t" for c in text):
            sup[i] = False
    return sup


def make_weights(cfg, seed, suppress):
    L, E, V, C = cfg["layers"], cfg["hidden"], cfg["vocab"], cfg["ctx"]
    rng = np.random.default_rng(seed)

    def normal(*shape):
        return (rng.standard_normal(shape, dtype=np.float32) * np.float32(INIT_STD)).astype(np.float32)

    w = {}
    wte = normal(V, E)
    wte[: len(SPECIAL_TOKENS)] = 0.0  # special tokens: zero embedding -> zero logit
    w["wte"] = wte
    w["wpe"] = normal(C, E)
    for i in range(L):
        p = f"h.{i}."
        w[p + "ln_1.weight"] = np.ones(E, np.float32)
        w[p + "ln_1.bias"] = np.zeros(E, np.float32)
        w[p + "attn.c_attn.weight"] = normal(E, 3 * E)  # [in, out]: q | k | v
        w[p + "attn.c_attn.bias"] = normal(3 * E)
        w[p + "attn.c_proj.weight"] = normal(E, E)
        w[p + "attn.c_proj.bias"] = normal(E)
        w[p + "ln_2.weight"] = np.ones(E, np.float32)
        w[p + "ln_2.bias"] = np.zeros(E, np.float32)
        w[p + "mlp.c_fc.weight"] = normal(E, 4 * E)
        w[p + "mlp.c_fc.bias"] = normal(4 * E)
        w[p + "mlp.c_proj.weight"] = normal(4 * E, E)
        w[p + "mlp.c_proj.bias"] = normal(E)
    w["ln_f.weight"] = np.ones(E, np.float32)
    w["ln_f.bias"] = np.zeros(E, np.float32)
    bias = np.where(suppress, np.float32(SPECIAL_LOGIT_BIAS), np.float32(0.0)).astype(np.float32)
    assert bias[: len(SPECIAL_TOKENS)].min() == SPECIAL_LOGIT_BIAS
    w["lm_head.bias"] = bias
    return w


def build_model(cfg, w):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    L, H, E, V = cfg["layers"], cfg["heads"], cfg["hidden"], cfg["vocab"]
    D = E // H

    nodes, inits = [], []
    counter = [0]

    def const(name, arr):
        inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def n(op, inputs, name=None, out=None, **attrs):
        counter[0] += 1
        nm = name or f"{op}_{counter[0]}"
        o = out or (nm + "_out")
        nodes.append(helper.make_node(op, inputs, [o], name=nm, **attrs))
        return o

    # weights, in insertion order (deterministic)
    for k in w:
        const(k, w[k])

    # shared constants
    const("c_i64_0", np.array(0, np.int64))
    const("c_i64_1", np.array(1, np.int64))
    const("c_axes_0", np.array([0], np.int64))
    const("c_axes_1", np.array([1], np.int64))
    const("c_axes_1_2", np.array([1, 2], np.int64))
    const("c_float_min", np.array(np.finfo(np.float32).min, np.float32))
    const("c_scale", np.array(1.0 / np.sqrt(D), np.float32))
    const("c_sqrt2", np.array(np.sqrt(2.0), np.float32))
    const("c_one", np.array(1.0, np.float32))
    const("c_half", np.array(0.5, np.float32))
    const("c_split_qkv", np.array([H, H, H], np.int64))
    const("c_shape_qkv", np.array([0, 0, 3 * H, D], np.int64))
    const("c_shape_ctx", np.array([0, 0, E], np.int64))

    # ---- embeddings
    tok_emb = n("Gather", ["wte", "input_ids"], name="embed_tokens", axis=0)
    pos_emb = n("Gather", ["wpe", "position_ids"], name="embed_positions", axis=0)
    x = n("Add", [tok_emb, pos_emb], name="embed_add")

    # ---- attention mask [B, 1, S, T] (bool, True = may attend)
    ids_shape = n("Shape", ["input_ids"], name="mask_ids_shape")
    seq_len = n("Gather", [ids_shape, "c_i64_1"], name="mask_seq_len", axis=0)
    am_shape = n("Shape", ["attention_mask"], name="mask_am_shape")
    tot_len = n("Gather", [am_shape, "c_i64_1"], name="mask_total_len", axis=0)
    past_len = n("Sub", [tot_len, seq_len], name="mask_past_len")
    q_pos = n("Range", [past_len, tot_len, "c_i64_1"], name="mask_q_pos")  # [S]
    k_pos = n("Range", ["c_i64_0", tot_len, "c_i64_1"], name="mask_k_pos")  # [T]
    q_col = n("Unsqueeze", [q_pos, "c_axes_1"], name="mask_q_col")  # [S,1]
    k_row = n("Unsqueeze", [k_pos, "c_axes_0"], name="mask_k_row")  # [1,T]
    causal = n("LessOrEqual", [k_row, q_col], name="mask_causal")  # [S,T]
    pad = n("Cast", ["attention_mask"], name="mask_pad_bool", to=TensorProto.BOOL)  # [B,T]
    pad4 = n("Unsqueeze", [pad, "c_axes_1_2"], name="mask_pad4")  # [B,1,1,T]
    mask = n("And", [causal, pad4], name="mask_combined")  # [B,1,S,T]

    for i in range(L):
        p = f"h.{i}."
        ln1 = n("LayerNormalization", [x, p + "ln_1.weight", p + "ln_1.bias"], name=p + "ln_1",
                axis=-1, epsilon=LN_EPS)
        qkv = n("MatMul", [ln1, p + "attn.c_attn.weight"], name=p + "attn.qkv_matmul")
        qkv = n("Add", [qkv, p + "attn.c_attn.bias"], name=p + "attn.qkv_add")
        qkv = n("Reshape", [qkv, "c_shape_qkv"], name=p + "attn.qkv_reshape")  # [B,S,3H,D]
        qkv = n("Transpose", [qkv], name=p + "attn.qkv_transpose", perm=[0, 2, 1, 3])  # [B,3H,S,D]
        nodes.append(helper.make_node(
            "Split", [qkv, "c_split_qkv"], [p + "q", p + "k", p + "v"], name=p + "attn.split", axis=1))
        k_all = n("Concat", [f"past_key_values.{i}.key", p + "k"], name=p + "attn.concat_k",
                  out=f"present.{i}.key", axis=2)
        v_all = n("Concat", [f"past_key_values.{i}.value", p + "v"], name=p + "attn.concat_v",
                  out=f"present.{i}.value", axis=2)
        q = n("Mul", [p + "q", "c_scale"], name=p + "attn.q_scale")
        k_t = n("Transpose", [k_all], name=p + "attn.k_transpose", perm=[0, 1, 3, 2])  # [B,H,D,T]
        scores = n("MatMul", [q, k_t], name=p + "attn.scores")  # [B,H,S,T]
        scores = n("Where", [mask, scores, "c_float_min"], name=p + "attn.mask")
        probs = n("Softmax", [scores], name=p + "attn.softmax", axis=-1)
        ctx = n("MatMul", [probs, v_all], name=p + "attn.context")  # [B,H,S,D]
        ctx = n("Transpose", [ctx], name=p + "attn.ctx_transpose", perm=[0, 2, 1, 3])  # [B,S,H,D]
        ctx = n("Reshape", [ctx, "c_shape_ctx"], name=p + "attn.ctx_reshape")  # [B,S,E]
        ao = n("MatMul", [ctx, p + "attn.c_proj.weight"], name=p + "attn.proj_matmul")
        ao = n("Add", [ao, p + "attn.c_proj.bias"], name=p + "attn.proj_add")
        x = n("Add", [x, ao], name=p + "attn.residual")

        ln2 = n("LayerNormalization", [x, p + "ln_2.weight", p + "ln_2.bias"], name=p + "ln_2",
                axis=-1, epsilon=LN_EPS)
        h = n("MatMul", [ln2, p + "mlp.c_fc.weight"], name=p + "mlp.fc_matmul")
        h = n("Add", [h, p + "mlp.c_fc.bias"], name=p + "mlp.fc_add")
        # exact GELU: 0.5 * h * (1 + erf(h / sqrt(2)))
        g = n("Div", [h, "c_sqrt2"], name=p + "mlp.gelu_div")
        g = n("Erf", [g], name=p + "mlp.gelu_erf")
        g = n("Add", [g, "c_one"], name=p + "mlp.gelu_add")
        g = n("Mul", [h, g], name=p + "mlp.gelu_mul")
        g = n("Mul", [g, "c_half"], name=p + "mlp.gelu_half")
        m = n("MatMul", [g, p + "mlp.c_proj.weight"], name=p + "mlp.proj_matmul")
        m = n("Add", [m, p + "mlp.c_proj.bias"], name=p + "mlp.proj_add")
        x = n("Add", [x, m], name=p + "mlp.residual")

    xf = n("LayerNormalization", [x, "ln_f.weight", "ln_f.bias"], name="ln_f", axis=-1, epsilon=LN_EPS)
    wte_t = n("Transpose", ["wte"], name="lm_head.tied_transpose", perm=[1, 0])  # [E,V]
    logits = n("MatMul", [xf, wte_t], name="lm_head.matmul")
    n("Add", [logits, "lm_head.bias"], name="lm_head.bias_add", out="logits")

    f32, i64 = TensorProto.FLOAT, TensorProto.INT64
    kv_in = ["batch_size", H, "past_sequence_length", D]
    kv_out = ["batch_size", H, "past_sequence_length + sequence_length", D]
    inputs = [
        helper.make_tensor_value_info("input_ids", i64, ["batch_size", "sequence_length"]),
        helper.make_tensor_value_info(
            "attention_mask", i64, ["batch_size", "past_sequence_length + sequence_length"]),
        helper.make_tensor_value_info("position_ids", i64, ["batch_size", "sequence_length"]),
    ]
    outputs = [helper.make_tensor_value_info("logits", f32, ["batch_size", "sequence_length", V])]
    for i in range(L):
        inputs.append(helper.make_tensor_value_info(f"past_key_values.{i}.key", f32, kv_in))
        inputs.append(helper.make_tensor_value_info(f"past_key_values.{i}.value", f32, kv_in))
        outputs.append(helper.make_tensor_value_info(f"present.{i}.key", f32, kv_out))
        outputs.append(helper.make_tensor_value_info(f"present.{i}.value", f32, kv_out))

    graph = helper.make_graph(nodes, "switchboard_gpt2_random", inputs, outputs, initializer=inits)
    model = helper.make_model(
        graph,
        producer_name="switchboard-gen_model",
        producer_version="1",
        opset_imports=[helper.make_opsetid("", OPSET)],
    )
    model.ir_version = IR_VERSION
    model.doc_string = (
        f"Random-weight GPT-2 ({L} layers, {H} heads, hidden {E}, vocab {V}); "
        "special-token logits biased by -30. Generated by scripts/gen_model.py."
    )
    onnx.checker.check_model(model)
    return model


# ----------------------------------------------------------------------------
# Self-test
# ----------------------------------------------------------------------------

class Runner:
    def __init__(self, path, cfg, threads=None):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        self.sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        self.L, self.H, self.D = cfg["layers"], cfg["heads"], cfg["hidden"] // cfg["heads"]
        self.out_names = [o.name for o in self.sess.get_outputs()]

    def empty_past(self, b):
        z = np.zeros((b, self.H, 0, self.D), np.float32)
        return [(z, z) for _ in range(self.L)]

    def __call__(self, ids, mask, pos, past):
        feed = {"input_ids": ids, "attention_mask": mask, "position_ids": pos}
        for i, (k, v) in enumerate(past):
            feed[f"past_key_values.{i}.key"] = k
            feed[f"past_key_values.{i}.value"] = v
        outs = dict(zip(self.out_names, self.sess.run(None, feed)))
        present = [(outs[f"present.{i}.key"], outs[f"present.{i}.value"]) for i in range(self.L)]
        return outs["logits"], present


def positions(mask):
    return np.clip(np.cumsum(mask, axis=1) - 1, 0, None).astype(np.int64)


def self_test(path, cfg, tok, tok_vocab, suppress, seed):
    t0 = time.time()
    run = Runner(path, cfg)
    t_load = time.time() - t0
    rng = np.random.default_rng(seed + 1000)
    nspec = len(SPECIAL_TOKENS)
    res = {}

    def rand_ids(k):
        return rng.integers(nspec, tok_vocab, size=k).astype(np.int64)

    # 1. full forward vs incremental decoding
    t1 = time.time()
    seq = rand_ids(12)[None, :]
    full, _ = run(seq, np.ones_like(seq), np.arange(12, dtype=np.int64)[None, :], run.empty_past(1))
    pre = 5
    lg, past = run(seq[:, :pre], np.ones((1, pre), np.int64), np.arange(pre, dtype=np.int64)[None, :],
                   run.empty_past(1))
    d1 = float(np.abs(lg[0] - full[0, :pre]).max())
    for t in range(pre, 12):
        lg, past = run(seq[:, t:t + 1], np.ones((1, t + 1), np.int64), np.array([[t]], np.int64), past)
        d1 = max(d1, float(np.abs(lg[0, -1] - full[0, t]).max()))
    res["incremental_max_diff"] = d1
    if not np.isfinite(full).all():
        raise AssertionError("non-finite logits in full forward")
    if d1 >= 1e-4:
        raise AssertionError(f"incremental vs full forward logits differ by {d1:.3g} (>= 1e-4)")
    t_1 = time.time() - t1

    # 2. left-padded batch vs each row alone
    t2 = time.time()
    lens = [7, 4]
    S = max(lens)
    rows = [rand_ids(n_) for n_ in lens]
    steps = [rand_ids(2) for _ in range(3)]  # decode tokens, column r for row r
    ids = np.zeros((2, S), np.int64)
    mask = np.zeros((2, S), np.int64)
    for r, row in enumerate(rows):
        ids[r, S - len(row):] = row
        ids[r, : S - len(row)] = PAD_ID
        mask[r, S - len(row):] = 1
    pos = positions(mask)
    b_logits = []
    lg, past = run(ids, mask, pos, run.empty_past(2))
    b_logits.append(lg[:, -1])
    for st in steps:
        mask = np.concatenate([mask, np.ones((2, 1), np.int64)], axis=1)
        lg, past = run(st[:, None], mask, positions(mask)[:, -1:], past)
        b_logits.append(lg[:, -1])
    d2 = 0.0
    for r, row in enumerate(rows):
        one = row[None, :]
        m = np.ones_like(one)
        lg, past1 = run(one, m, positions(m), run.empty_past(1))
        d2 = max(d2, float(np.abs(lg[0, -1] - b_logits[0][r]).max()))
        for s_i, st in enumerate(steps):
            m = np.ones((1, m.shape[1] + 1), np.int64)
            lg, past1 = run(np.array([[st[r]]], np.int64), m, positions(m)[:, -1:], past1)
            d2 = max(d2, float(np.abs(lg[0, -1] - b_logits[s_i + 1][r]).max()))
    res["padded_batch_max_diff"] = d2
    if d2 >= 1e-4:
        raise AssertionError(f"left-padded batch vs single rows differ by {d2:.3g} (>= 1e-4)")
    t_2 = time.time() - t2

    # 3. greedy decoding never emits a special token
    t3 = time.time()
    prompt = "<|im_start|>user\nHello, who are you?<|im_end|>\n<|im_start|>assistant\n"
    p_ids = np.array([tok.encode(prompt, add_special_tokens=False).ids], np.int64)
    m = np.ones_like(p_ids)
    lg, past = run(p_ids, m, positions(m), run.empty_past(1))
    gen = []
    for step in range(8):
        nxt = int(np.argmax(lg[0, -1]))
        gen.append(nxt)
        if step == 7:
            break
        m = np.ones((1, m.shape[1] + 1), np.int64)
        lg, past = run(np.array([[nxt]], np.int64), m, positions(m)[:, -1:], past)
    bad = [g for g in gen if g < nspec or g >= tok_vocab or suppress[g]]
    if bad:
        raise AssertionError(f"greedy decoding produced special/suppressed ids {bad} in {gen}")
    res["greedy_ids"] = gen
    res["greedy_text"] = tok.decode(gen, skip_special_tokens=False)
    t_3 = time.time() - t3

    log(f"self-test: session load {t_load:.2f}s")
    log(f"self-test 1 (full vs incremental, 12 tokens): max|diff| = {d1:.3e}  [{t_1:.2f}s]")
    log(f"self-test 2 (left-padded batch 2 vs single, prefill+3): max|diff| = {d2:.3e}  [{t_2:.2f}s]")
    log(f"self-test 3 (greedy 8 steps, no special/suppressed ids): ids={gen} text={res['greedy_text']!r}  [{t_3:.2f}s]")
    return res


# ----------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------

def write_json(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")


def is_complete(d):
    return os.path.isdir(d) and all(os.path.isfile(os.path.join(d, f)) for f in MODEL_FILES)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output model directory")
    ap.add_argument("--size", choices=sorted(PRESETS), default="tiny")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--layers", type=int)
    ap.add_argument("--heads", type=int)
    ap.add_argument("--hidden", type=int)
    ap.add_argument("--vocab", type=int)
    ap.add_argument("--ctx", type=int, help="context length (n_positions)")
    ap.add_argument("--force", action="store_true", help="regenerate even if DIR holds a model")
    a = ap.parse_args(argv)
    cfg = dict(PRESETS[a.size])
    for k in ("layers", "heads", "hidden", "vocab", "ctx"):
        if getattr(a, k) is not None:
            cfg[k] = getattr(a, k)
    if min(cfg.values()) <= 0:
        ap.error("layers/heads/hidden/vocab/ctx must be positive")
    if cfg["hidden"] % cfg["heads"]:
        ap.error(f"--hidden {cfg['hidden']} must be divisible by --heads {cfg['heads']}")
    if cfg["ctx"] < 16:
        ap.error("--ctx must be >= 16 (the self-test needs it)")
    return a, cfg


def main(argv=None):
    a, cfg = parse_args(argv)
    out = os.path.abspath(a.out)

    if is_complete(out) and not a.force:
        note = f"gen_model: {out} already holds a model; skipping (use --force to regenerate)"
        try:
            with open(os.path.join(out, "config.json")) as f:
                c = json.load(f)
            have = (c.get("n_layer"), c.get("n_head"), c.get("n_embd"), c.get("vocab_size"), c.get("n_positions"))
            want = (cfg["layers"], cfg["heads"], cfg["hidden"], cfg["vocab"], cfg["ctx"])
            if have != want:
                note += f"\ngen_model: WARNING: existing model (layers,heads,hidden,vocab,ctx)={have} != requested {want}"
        except (OSError, ValueError):
            pass
        print(note)
        return 0

    t_start = time.time()
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="." + os.path.basename(out) + ".tmp-", dir=parent)
    try:
        # tokenizer
        tok = build_tokenizer(cfg["vocab"])
        tok_path = os.path.join(tmp, "tokenizer.json")
        tok.save(tok_path, pretty=True)
        tok = check_tokenizer(tok_path, cfg["vocab"])
        tok_vocab = tok.get_vocab_size(with_added_tokens=True)
        t_tok = time.time() - t_start

        # model
        t0 = time.time()
        suppress = suppressed_ids(tok, cfg["vocab"])
        w = make_weights(cfg, a.seed, suppress)
        n_params = sum(int(v.size) for v in w.values())
        model = build_model(cfg, w)
        del w
        model_path = os.path.join(tmp, "model.onnx")
        with open(model_path, "wb") as f:
            f.write(model.SerializeToString())
        del model
        t_model = time.time() - t0

        L, H, E, V, C = cfg["layers"], cfg["heads"], cfg["hidden"], cfg["vocab"], cfg["ctx"]
        write_json(os.path.join(tmp, "config.json"), {
            "model_type": "gpt2",
            "architectures": ["GPT2LMHeadModel"],
            "n_layer": L,
            "n_head": H,
            "n_embd": E,
            "vocab_size": V,
            "n_positions": C,
            "n_ctx": C,
            "n_inner": 4 * E,
            "activation_function": "gelu",
            "layer_norm_epsilon": LN_EPS,
            "initializer_range": INIT_STD,
            "bos_token_id": BOS_ID,
            "eos_token_id": EOS_ID,
            "pad_token_id": PAD_ID,
            "tie_word_embeddings": True,
            "use_cache": True,
            "torch_dtype": "float32",
            "num_hidden_layers": L,
            "num_attention_heads": H,
            "num_key_value_heads": H,
            "head_dim": E // H,
            "hidden_size": E,
            "max_position_embeddings": C,
            "tokenizer_vocab_size": tok_vocab,
            "switchboard_random_model": {
                "seed": a.seed,
                "size": a.size,
                "special_logit_bias": SPECIAL_LOGIT_BIAS,
                "suppressed_token_ids": int(suppress.sum()),
                "generator": "scripts/gen_model.py",
            },
        })
        write_json(os.path.join(tmp, "tokenizer_config.json"), {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": SPECIAL_TOKENS[BOS_ID],
            "eos_token": SPECIAL_TOKENS[EOS_ID],
            "pad_token": SPECIAL_TOKENS[PAD_ID],
            "unk_token": None,
            "add_bos_token": False,
            "add_eos_token": False,
            "clean_up_tokenization_spaces": False,
            "model_max_length": C,
            "additional_special_tokens": SPECIAL_TOKENS[1:],
            "chat_template": CHAT_TEMPLATE,
        })
        write_json(os.path.join(tmp, "generation_config.json"), {
            "bos_token_id": BOS_ID,
            "eos_token_id": [EOS_ID, BOS_ID],
            "pad_token_id": PAD_ID,
            "max_new_tokens": 32,
            "do_sample": False,
            "temperature": 1.0,
            "top_p": 1.0,
            "top_k": 50,
            "repetition_penalty": 1.0,
        })
        t_gen = time.time() - t_start

        # self-test on the temp dir, before it becomes visible as DIR
        t0 = time.time()
        try:
            self_test(model_path, cfg, tok, tok_vocab, suppress, a.seed)
        except Exception as e:  # noqa: BLE001
            log("\n" + "!" * 78)
            log(f"!!! gen_model SELF-TEST FAILED: {type(e).__name__}: {e}")
            log("!" * 78 + "\n")
            return 1
        t_test = time.time() - t0

        os.chmod(tmp, 0o755)
        if os.path.exists(out):
            old = tempfile.mkdtemp(prefix="." + os.path.basename(out) + ".old-", dir=parent)
            os.rename(out, os.path.join(old, "m"))
            os.rename(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out)
        tmp = None
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)

    size = os.path.getsize(os.path.join(out, "model.onnx"))
    print(
        f"gen_model: {out}: size={a.size} layers={L} heads={H} hidden={E} vocab={V} ctx={C} "
        f"tokenizer_vocab={tok_vocab} suppressed_ids={int(suppress.sum())} params={n_params:,} model.onnx={size / 2**20:.1f} MiB "
        f"seed={a.seed} (tokenizer {t_tok:.1f}s, weights+onnx {t_model:.1f}s, "
        f"total gen {t_gen:.1f}s, self-test {t_test:.1f}s)",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
