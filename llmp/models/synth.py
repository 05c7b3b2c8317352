"""Synthetic GGUF models: llama architecture, deterministic random weights, a real tokenizer.

Tests need a model without any download; GPU benchmarks need one of a real shape where no
weights can be had. Weight values do not change speed, so random weights of the shape of
Llama-3.2-1B or Llama-3.1-8B measure what the real ones would.

The tokenizer is a genuine byte-level BPE ("gpt2" model in llama.cpp terms): 256 byte
tokens, merges learned deterministically from a small built-in corpus, ChatML special tokens
and `<tool_call>` markers; any text, multi-byte UTF-8 included, round-trips. Presets with a
128k vocabulary pad it with reserved tokens, as Llama 3 does.
"""
from __future__ import annotations

import collections
import dataclasses
import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CHAT_TEMPLATE = (Path(__file__).with_name("chatml.jinja")).read_text()

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
USER_TOKENS = ["<tool_call>", "</tool_call>"]


@dataclass(frozen=True)
class Preset:
    name: str
    n_vocab: int  # total vocabulary (padded with reserved tokens)
    n_merges: int
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    n_ff: int
    n_ctx: int
    rope_base: float = 10000.0
    tied: bool = False
    # embedding models: llama.cpp's pooling ("mean", "cls", "last"); None: a generative model
    pooling: str | None = None


PRESETS: dict[str, Preset] = {
    # tests: a few MB, loads in milliseconds
    "tiny": Preset("tiny", 0, 400, 64, 2, 4, 2, 192, 4096),
    # CPU benchmarks: ~30M parameters
    "small": Preset("small", 0, 1500, 512, 8, 8, 4, 1536, 8192),
    # shapes of Llama-3.2-1B and Llama-3.1-8B (128k vocabulary)
    "1b": Preset("1b", 128256, 3000, 2048, 16, 32, 8, 8192, 131072, 500000.0, tied=True),
    "8b": Preset("8b", 128256, 3000, 4096, 32, 32, 8, 14336, 131072, 500000.0),
    # an embedding model (llama architecture, mean pooling, no chat template): tests and
    # benchmarks of /v1/embeddings; `synthesize(..., pooling=...)` picks another pooling
    "embed": Preset("embed", 0, 1500, 256, 4, 4, 4, 768, 2048, tied=True, pooling="mean"),
    # GPU benchmarks of embeddings: the shape of Qwen3-Embedding-0.6B (last-token pooling)
    "embed-0.6b": Preset("embed-0.6b", 151669, 3000, 1024, 28, 16, 8, 3072, 32768, 1000000.0,
                         tied=True, pooling="last"),
}

#: GGUF metadata key: the model's embeddings may be truncated to their first k dimensions
#: and renormalised (Matryoshka training), so /v1/embeddings accepts `dimensions` for it.
#: GGUF has no standard key for this; llmp reads this one (the synthetic embedding preset
#: sets it).
MATRYOSHKA_KEY = "llmp.embedding.matryoshka"
POOLING_TYPES = {"none": 0, "mean": 1, "cls": 2, "last": 3}

_CORPUS = """
The quick brown fox jumps over the lazy dog. A language model predicts the next token from
the tokens before it. You are a helpful assistant. Hello, how are you today? I am fine, thank
you. What is the weather like in Paris? The weather is sunny and warm. Please write a short
poem about the sea. The sea is wide and deep and blue, the waves are singing songs for you.
def fibonacci(n):
    if n <= 1:
        return n
    return fibonacci(n - 1) + fibonacci(n - 2)
for i in range(10): print(i, i * i)
{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}
{"type": "object", "properties": {"answer": {"type": "string"}, "count": {"type": "integer"}}}
The user asked a question and the assistant gave an answer. Numbers: 0 1 2 3 4 5 6 7 8 9 10 42
100 2024 3.14. Lists, tables and functions are common in code; JSON objects have keys and
values, arrays and strings, true, false and null. Thank you for your help! Good morning.
Bonjour, comment allez-vous? Très bien, merci. Guten Tag! Schöne Grüße aus München. ¿Qué tal?
日本語のテキストも少しあります。中文也可以。Привет, мир! Γειά σου κόσμε. 🙂🚀✨ naïve café résumé
"""

_PRETOKENIZE = re.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?[^\W\d_]+| ?\d+| ?[^\s\w]+|\s+(?!\S)|\s+""")


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable unicode mapping (what llama.cpp's BPE expects)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def train_bpe(corpus: str, n_merges: int) -> list[tuple[str, str]]:
    """Deterministic byte-level BPE training (ties broken by the pair itself)."""
    b2u = bytes_to_unicode()
    words = collections.Counter(
        tuple(b2u[b] for b in piece.encode("utf-8")) for piece in _PRETOKENIZE.findall(corpus))
    merges: list[tuple[str, str]] = []
    for _ in range(n_merges):
        pairs: collections.Counter = collections.Counter()
        for w, c in words.items():
            for a, b in zip(w, w[1:]):
                pairs[(a, b)] += c
        if not pairs:
            break
        best = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))[0]
        merges.append(best)
        joined = best[0] + best[1]
        new_words: collections.Counter = collections.Counter()
        for w, c in words.items():
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == best:
                    out.append(joined)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            new_words[tuple(out)] += c
        words = new_words
    return merges


def build_vocab(preset: Preset) -> tuple[list[str], list[int], list[str], dict[str, int]]:
    """tokens, token types, merges, special ids."""
    from gguf import TokenType

    b2u = bytes_to_unicode()
    tokens = [b2u[b] for b in range(256)]
    types = [int(TokenType.NORMAL)] * 256
    merges = train_bpe(_CORPUS, preset.n_merges)
    seen = set(tokens)
    for a, b in merges:
        t = a + b
        if t not in seen:
            seen.add(t)
            tokens.append(t)
            types.append(int(TokenType.NORMAL))
    special: dict[str, int] = {}
    for t in USER_TOKENS:
        special[t] = len(tokens)
        tokens.append(t)
        types.append(int(TokenType.USER_DEFINED))
    for t in SPECIAL_TOKENS:
        special[t] = len(tokens)
        tokens.append(t)
        types.append(int(TokenType.CONTROL))
    target = preset.n_vocab or len(tokens)
    i = 0
    while len(tokens) < target:
        tokens.append(f"<|reserved_special_token_{i}|>")
        types.append(int(TokenType.UNUSED))
        i += 1
    return tokens, types, [f"{a} {b}" for a, b in merges], special


def _tensor_plan(p: Preset, n_vocab: int) -> list[tuple[str, tuple[int, ...], float]]:
    """(name, numpy shape, std) in file order; numpy shape is ggml's ne reversed."""
    d, kv = p.n_embd, p.n_embd // p.n_head * p.n_head_kv
    plan: list[tuple[str, tuple[int, ...], float]] = [("token_embd.weight", (n_vocab, d), 0.5)]
    s = 1.0 / np.sqrt(d)
    for i in range(p.n_layer):
        b = f"blk.{i}."
        plan += [
            (b + "attn_norm.weight", (d,), 0.0),
            (b + "attn_q.weight", (d, d), s),
            (b + "attn_k.weight", (kv, d), s),
            (b + "attn_v.weight", (kv, d), s),
            (b + "attn_output.weight", (d, d), s),
            (b + "ffn_norm.weight", (d,), 0.0),
            (b + "ffn_gate.weight", (p.n_ff, d), s),
            (b + "ffn_up.weight", (p.n_ff, d), s),
            (b + "ffn_down.weight", (d, p.n_ff), 1.0 / np.sqrt(p.n_ff)),
        ]
    plan.append(("output_norm.weight", (d,), 0.0))
    if not p.tied:
        plan.append(("output.weight", (n_vocab, d), s))
    return plan


def _values(name: str, shape: tuple[int, ...], std: float, seed: int, dtype) -> np.ndarray:
    if std == 0.0:  # norm weights: ones, always f32 (llama.cpp requires it)
        return np.ones(shape, dtype=np.float32)
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    out = np.empty(shape, dtype=dtype)
    flat = out.reshape(-1)
    chunk = 1 << 24
    for start in range(0, flat.size, chunk):
        n = min(chunk, flat.size - start)
        flat[start:start + n] = rng.standard_normal(n, dtype=np.float32) * std
    return out


def synthesize(preset: str | Preset, output: Path | str, *, dtype: str = "f16", seed: int = 0,
               name: str | None = None, pooling: str | None = None,
               truncatable: bool = True,
               progress: Callable[[int, int], None] | None = None) -> Path:
    """Write a synthetic model to `output`; `progress(done_bytes, total_bytes)` is called as it goes.
    Embedding presets: `pooling` overrides the preset's; `truncatable` marks the model as
    accepting `dimensions` (MATRYOSHKA_KEY)."""
    from gguf import GGUFWriter, LlamaFileType

    p = PRESETS[preset] if isinstance(preset, str) else preset
    if pooling is not None:
        if pooling not in POOLING_TYPES or pooling == "none":
            raise ValueError("pooling must be mean, cls or last")
        p = dataclasses.replace(p, pooling=pooling)
    if dtype not in ("f16", "f32"):
        raise ValueError("dtype must be f16 or f32")
    np_dtype = np.float16 if dtype == "f16" else np.float32
    tokens, types, merges, special = build_vocab(p)
    n_vocab = len(tokens)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".part")

    w = GGUFWriter(tmp, "llama")
    w.add_name(name or f"llmp-synth-{p.name}")
    w.add_organization("llmp")
    w.add_description(f"llmp synthetic model, preset {p.name}, random weights (seed {seed})")
    w.add_context_length(p.n_ctx)
    w.add_embedding_length(p.n_embd)
    w.add_block_count(p.n_layer)
    w.add_feed_forward_length(p.n_ff)
    w.add_head_count(p.n_head)
    w.add_head_count_kv(p.n_head_kv)
    w.add_rope_dimension_count(p.n_embd // p.n_head)
    w.add_rope_freq_base(p.rope_base)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(n_vocab)
    w.add_file_type(LlamaFileType.MOSTLY_F16 if dtype == "f16" else LlamaFileType.ALL_F32)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(special["<|endoftext|>"])
    w.add_eos_token_id(special["<|im_end|>"])
    w.add_eot_token_id(special["<|im_end|>"])
    w.add_pad_token_id(special["<|endoftext|>"])
    w.add_add_bos_token(False)
    if p.pooling:  # an embedding model: pooled hidden states, no chat template
        w.add_uint32("llama.pooling_type", POOLING_TYPES[p.pooling])
        if truncatable:
            w.add_bool(MATRYOSHKA_KEY, True)
    else:
        w.add_chat_template(CHAT_TEMPLATE)

    plan = _tensor_plan(p, n_vocab)
    total = 0
    for tname, shape, std in plan:
        dt = np.float32 if std == 0.0 else np_dtype
        nbytes = int(np.prod(shape)) * np.dtype(dt).itemsize
        total += nbytes
        w.add_tensor_info(tname, shape, np.dtype(dt), nbytes)
    try:
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        done = 0
        for tname, shape, std in plan:
            dt = np.float32 if std == 0.0 else np_dtype
            arr = _values(tname, shape, std, seed, dt)
            w.write_tensor_data(arr)
            done += arr.nbytes
            if progress:
                progress(done, total)
        w.close()
        tmp.replace(output)
    except BaseException:
        w.close()
        tmp.unlink(missing_ok=True)
        raise
    return output


def parameter_count(preset: str) -> int:
    p = PRESETS[preset]
    tokens, *_ = build_vocab(p)
    return int(sum(np.prod(s) for _, s, _ in _tensor_plan(p, len(tokens))))
