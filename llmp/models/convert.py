"""Hugging Face safetensors models -> GGUF, for the llama family and qwen2/qwen3.

`convert(folder, out, outtype=...)` writes a GGUF llama.cpp loads, from a local Hugging Face
model folder (config.json, *.safetensors, tokenizer files); `fetch(repo)` downloads one from
the hub first. Written on the `gguf` package (no torch): hyper-parameters from config.json,
tensor names through gguf's tensor-name map, the q/k row permutation llama.cpp's llama
architecture expects (HF's rotary layout is half-split, llama.cpp's interleaved), Llama-3's
`rope_freqs`, the tokenizer (SentencePiece or byte-level BPE with its pre-tokenizer name,
the vocabulary padded to `vocab_size`, special tokens, chat template), norms in F32.

Memory: the header (shapes and types) is written first from the safetensors headers alone;
then each tensor is memory-mapped, converted and written before the next one is touched, so
peak memory is about one tensor (the largest: the embeddings), not one copy of the model.
"""
from __future__ import annotations

import functools
import json
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llmp.errors import InvalidRequestError, ModelError
from llmp.models.safetensors_io import TensorRef, read_folder

# Hugging Face `architectures[0]` -> llama.cpp architecture
SUPPORTED: dict[str, str] = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
}
OUTTYPES = ("f32", "f16", "bf16", "q8_0")
# what the hub download takes from a repo (weights as safetensors only)
HF_FILES = ["config.json", "generation_config.json", "*.safetensors", "model.safetensors.index.json",
            "tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json",
            "added_tokens.json", "chat_template.jinja", "chat_template.json", "README.md"]

# byte-level BPE pre-tokenizer regexes (as in tokenizer.json) -> llama.cpp's `pre` name
_PRE_REGEXES: dict[str, str] = {
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+": "llama-bpe",
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+": "qwen2",
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+"
    r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+": "qwen35",
}

Progress = Callable[[int, int], None]  # (bytes done, bytes total)


@dataclass
class HFConfig:
    """What the converter needs from config.json."""
    folder: Path
    raw: dict[str, Any]
    hf_arch: str
    arch: str  # llama.cpp's

    def get(self, *keys: str, default: Any = None) -> Any:
        for k in keys:
            if self.raw.get(k) is not None:
                return self.raw[k]
        return default

    @property
    def n_layer(self) -> int:
        return int(self.raw["num_hidden_layers"])

    @property
    def n_embd(self) -> int:
        return int(self.raw["hidden_size"])

    @property
    def n_head(self) -> int:
        return int(self.raw["num_attention_heads"])

    @property
    def n_head_kv(self) -> int:
        return int(self.get("num_key_value_heads", default=self.n_head))

    @property
    def head_dim(self) -> int:
        return int(self.get("head_dim", default=self.n_embd // self.n_head))

    @property
    def rope(self) -> dict[str, Any]:
        """Rope parameters: transformers 5's `rope_parameters`, or 4's `rope_theta` +
        `rope_scaling`."""
        out: dict[str, Any] = {}
        if isinstance(self.raw.get("rope_scaling"), dict):
            out.update(self.raw["rope_scaling"])
        if isinstance(self.raw.get("rope_parameters"), dict):
            out.update(self.raw["rope_parameters"])
        if "rope_theta" not in out and self.raw.get("rope_theta") is not None:
            out["rope_theta"] = self.raw["rope_theta"]
        out.setdefault("rope_theta", 10000.0)
        rt = out.get("rope_type") or out.get("type") or "default"
        out["rope_type"] = str(rt).lower()
        return out


def read_config(folder: Path) -> HFConfig:
    """config.json with its architecture checked against the supported ones."""
    path = folder / "config.json"
    if not path.is_file():
        raise ModelError(f"{folder}: no config.json (not a Hugging Face model folder)")
    try:
        raw = json.loads(path.read_text())
    except ValueError as e:
        raise ModelError(f"{path}: not valid JSON ({e})") from None
    if isinstance(raw.get("text_config"), dict) and not raw.get("num_hidden_layers"):
        raw = {**raw, **raw["text_config"]}
    archs = raw.get("architectures") or []
    hf_arch = archs[0] if archs else str(raw.get("model_type", "?"))
    if hf_arch not in SUPPORTED:
        raise InvalidRequestError(
            f"{folder.name}: architecture {hf_arch} is not supported by llmp's converter; "
            f"supported: {', '.join(SUPPORTED)}", param="model", code="unsupported_architecture")
    return HFConfig(folder, raw, hf_arch, SUPPORTED[hf_arch])


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF's rotary layout (each head's first half, then second half) -> llama.cpp's llama
    layout (pairs interleaved): rows regrouped per head. Works on weights (out, in), biases
    (out,) and LoRA B matrices (out, r) alike. `n_head` is n_head for q, n_head_kv for k."""
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def _permuted(ref: Any, n_head: int) -> np.ndarray:
    """`ref`'s float32 data in llama.cpp's q/k layout (see `permute_qk`)."""
    return permute_qk(ref.float32(), n_head)


def llama3_rope_factors(rope: dict[str, Any], head_dim: int) -> np.ndarray:
    """The `rope_freqs` tensor of Llama 3.1+ rope scaling (llama.cpp divides by it)."""
    base = float(rope.get("rope_theta", 10000.0))
    freqs = 1.0 / (base ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
    factor = float(rope.get("factor", 8.0))
    low = float(rope.get("low_freq_factor", 1.0))
    high = float(rope.get("high_freq_factor", 4.0))
    old_ctx = float(rope.get("original_max_position_embeddings", 8192))
    low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
    out = []
    for f in freqs:
        wavelen = 2 * math.pi / float(f)
        if wavelen < high_wavelen:
            out.append(1.0)
        elif wavelen > low_wavelen:
            out.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            out.append(1.0 / ((1 - smooth) / factor + smooth))
    return np.asarray(out, dtype=np.float32)


# ---------------------------------------------------------------------------- tokenizer
def _bpe_pre(tok: dict[str, Any]) -> str:
    """llama.cpp's pre-tokenizer name of a byte-level BPE tokenizer.json."""
    patterns: list[str] = []
    byte_level_regex = False

    def walk(node: Any) -> None:
        nonlocal byte_level_regex
        if isinstance(node, dict):
            if node.get("type") == "Split" and isinstance(node.get("pattern"), dict):
                patterns.append(node["pattern"].get("Regex") or node["pattern"].get("String") or "")
            if node.get("type") == "ByteLevel" and node.get("use_regex", True):
                byte_level_regex = True
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(tok.get("pre_tokenizer"))
    for p in patterns:
        if p in _PRE_REGEXES:
            return _PRE_REGEXES[p]
    if not patterns and byte_level_regex:
        return "gpt-2"
    raise ModelError("unsupported BPE pre-tokenizer (" + (" | ".join(patterns) or "none")
                     + "); llmp knows those of Llama 3 (llama-bpe), Qwen 2/3 (qwen2), "
                     "Qwen 3.5 (qwen35) and GPT-2")


def _looks_special(token: str) -> bool:
    return (token.startswith("<|") and token.endswith("|>")) or token in ("<pad>", "<mask>")


def _write_bpe_vocab(w: Any, folder: Path, vocab_size: int) -> None:
    import gguf

    tok = json.loads((folder / "tokenizer.json").read_text())
    model = tok.get("model") or {}
    if model.get("type") != "BPE":
        raise ModelError(f"{folder}: tokenizer.json has a {model.get('type')} model; llmp converts "
                         "byte-level BPE (tokenizer.json) and SentencePiece (tokenizer.model)")
    pre = _bpe_pre(tok)
    reverse: dict[int, str] = {int(i): t for t, i in model["vocab"].items()}
    added = {int(a["id"]): a for a in tok.get("added_tokens") or []}
    for i, a in added.items():
        reverse[i] = a["content"]
    n = max(vocab_size, max(reverse) + 1)
    tokens: list[str] = []
    types: list[int] = []
    for i in range(n):
        t = reverse.get(i)
        if t is None:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(t)
            types.append(gguf.TokenType.CONTROL if added[i].get("special") or _looks_special(t)
                         else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(t)
            types.append(gguf.TokenType.NORMAL)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    _special_vocab(folder, n, merges=True).add_to_gguf(w)


def _write_spm_vocab(w: Any, folder: Path, vocab_size: int) -> None:
    import gguf

    try:
        from sentencepiece import SentencePieceProcessor
    except ImportError:
        raise ModelError("this model has a SentencePiece tokenizer (tokenizer.model): "
                         "`pip install sentencepiece` to convert it") from None
    sp = SentencePieceProcessor()
    sp.LoadFromFile(str(folder / "tokenizer.model"))
    n = max(vocab_size, sp.vocab_size())
    tokens = [f"[PAD{i}]".encode() for i in range(n)]
    scores = [-10000.0] * n
    types = [int(gguf.TokenType.UNUSED)] * n
    for i in range(sp.vocab_size()):
        tokens[i] = sp.IdToPiece(i).encode("utf-8")
        scores[i] = float(sp.GetScore(i))
        t = gguf.TokenType.NORMAL
        if sp.IsUnknown(i):
            t = gguf.TokenType.UNKNOWN
        elif sp.IsControl(i):
            t = gguf.TokenType.CONTROL
        elif sp.IsUnused(i):
            t = gguf.TokenType.UNUSED
        elif sp.IsByte(i):
            t = gguf.TokenType.BYTE
        types[i] = int(t)
    cfg_path = folder / "tokenizer_config.json"
    if cfg_path.is_file():
        decoder = json.loads(cfg_path.read_text()).get("added_tokens_decoder") or {}
        for sid, data in decoder.items():
            i = int(sid)
            if i >= n:
                continue
            content = str(data["content"])
            special = data.get("special") or _looks_special(content)
            if not special:
                content = content.replace("\u2581", " ")
            tokens[i] = content.encode("utf-8")
            scores[i] = -1000.0
            types[i] = int(gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    _special_vocab(folder, n, merges=False).add_to_gguf(w)


def _special_vocab(folder: Path, n_vocab: int, *, merges: bool) -> Any:
    """Special token ids, add_bos/eos, merges and the chat template (transformers 5 saves
    the template beside the tokenizer as chat_template.jinja)."""
    import gguf

    sv = gguf.SpecialVocab(folder, load_merges=merges, n_vocab=n_vocab)
    tmpl = folder / "chat_template.jinja"
    if not sv.chat_template and tmpl.is_file():
        sv.chat_template = tmpl.read_text()
    return sv


def write_vocab(w: Any, folder: Path, vocab_size: int) -> None:
    if (folder / "tokenizer.model").is_file():
        _write_spm_vocab(w, folder, vocab_size)
    elif (folder / "tokenizer.json").is_file():
        _write_bpe_vocab(w, folder, vocab_size)
    else:
        raise ModelError(f"{folder}: no tokenizer (tokenizer.json or tokenizer.model)")


# ---------------------------------------------------------------------------- tensors
@dataclass
class _Out:
    name: str
    shape: tuple[int, ...]  # logical (numpy order: rows, cols)
    qtype: Any  # gguf.GGMLQuantizationType
    load: Callable[[], np.ndarray]  # float32 data in numpy order


def _ftype(outtype: str) -> tuple[Any, int]:
    import gguf

    q = gguf.GGMLQuantizationType
    f = gguf.LlamaFileType
    return {"f32": (q.F32, f.ALL_F32), "f16": (q.F16, f.MOSTLY_F16),
            "bf16": (q.BF16, f.MOSTLY_BF16), "q8_0": (q.Q8_0, f.MOSTLY_Q8_0)}[outtype]


def _plan(cfg: HFConfig, tensors: dict[str, TensorRef], outtype: str) -> list[_Out]:
    import gguf

    arch = gguf.MODEL_ARCH_NAMES
    arch_enum = next(k for k, v in arch.items() if v == cfg.arch)
    tmap = gguf.get_tensor_name_map(arch_enum, cfg.n_layer)
    want, _ = _ftype(outtype)
    out: list[_Out] = []
    for name, ref in tensors.items():
        if name.endswith((".rotary_emb.inv_freq", ".attention.masked_bias", ".attention.bias")):
            continue
        hf = name[len("language_model."):] if name.startswith("language_model.") else name
        if cfg.raw.get("tie_word_embeddings") and hf == "lm_head.weight":
            continue  # llama.cpp uses the embeddings as the output when `output` is absent
        new = tmap.get_name(hf, try_suffixes=(".weight", ".bias"))
        if new is None:
            raise ModelError(f"{cfg.folder.name}: unexpected tensor {name} for {cfg.hf_arch}")
        load: Callable[[], np.ndarray] = ref.float32
        if cfg.arch == "llama" and re.search(r"\.attn_[qk]\.(weight|bias)$", new):
            heads = cfg.n_head if ".attn_q." in new else cfg.n_head_kv
            load = functools.partial(_permuted, ref, heads)
        qtype = want
        if len(ref.shape) == 1:
            qtype = gguf.GGMLQuantizationType.F32  # norms and biases
        elif want == gguf.GGMLQuantizationType.Q8_0 and ref.shape[-1] % 32:
            qtype = gguf.GGMLQuantizationType.F16  # rows that do not split into Q8_0 blocks
        out.append(_Out(new, ref.shape, qtype, load))
    if cfg.arch == "llama" and cfg.rope["rope_type"] == "llama3":
        factors = llama3_rope_factors(cfg.rope, cfg.head_dim)
        out.append(_Out("rope_freqs.weight", factors.shape, gguf.GGMLQuantizationType.F32,
                        lambda: factors))
    names = {o.name for o in out}
    if "token_embd.weight" not in names:
        raise ModelError(f"{cfg.folder.name}: the safetensors files have no embeddings "
                         "(model.embed_tokens.weight)")
    missing = [f"blk.{i}.attn_q.weight" for i in range(cfg.n_layer)
               if f"blk.{i}.attn_q.weight" not in names]
    if missing:
        raise ModelError(f"{cfg.folder.name}: incomplete weights (no {missing[0]}); "
                         "is a safetensors shard missing?")
    return out


def _encode(o: _Out) -> np.ndarray:
    import gguf

    data = o.load()
    q = gguf.GGMLQuantizationType
    if o.qtype == q.F32:
        return np.ascontiguousarray(data, dtype=np.float32)
    if o.qtype == q.F16:
        return np.ascontiguousarray(data, dtype=np.float16)
    return gguf.quants.quantize(np.ascontiguousarray(data, dtype=np.float32), o.qtype)


def _nbytes(o: _Out) -> int:
    import gguf

    block, size = gguf.GGML_QUANT_SIZES[o.qtype]
    n = 1
    for d in o.shape:
        n *= d
    return n // block * size


def _write_params(w: Any, cfg: HFConfig, ftype: int, name: str, vocab_size: int) -> None:
    import gguf

    w.add_type(gguf.GGUFType.MODEL)
    w.add_name(name)
    w.add_context_length(int(cfg.get("max_position_embeddings", default=4096)))
    w.add_embedding_length(cfg.n_embd)
    w.add_block_count(cfg.n_layer)
    w.add_feed_forward_length(int(cfg.raw["intermediate_size"]))
    w.add_head_count(cfg.n_head)
    w.add_head_count_kv(cfg.n_head_kv)
    rope = cfg.rope
    w.add_rope_freq_base(float(rope["rope_theta"]))
    w.add_layer_norm_rms_eps(float(cfg.get("rms_norm_eps", default=1e-6)))
    w.add_file_type(ftype)
    w.add_vocab_size(vocab_size)
    if cfg.head_dim != cfg.n_embd // cfg.n_head or cfg.arch == "qwen3":
        w.add_key_length(cfg.head_dim)
        w.add_value_length(cfg.head_dim)
    if cfg.arch == "llama":
        w.add_rope_dimension_count(cfg.head_dim)
    rtype = rope["rope_type"]
    if rtype in ("linear", "yarn") and rope.get("factor"):
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR if rtype == "linear"
                                else gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(float(rope["factor"]))
        if rtype == "yarn" and rope.get("original_max_position_embeddings"):
            w.add_rope_scaling_orig_ctx_len(int(rope["original_max_position_embeddings"]))
    elif rtype not in ("default", "llama3", "none"):
        raise ModelError(f"{cfg.folder.name}: rope scaling {rtype!r} is not supported "
                         "(default, linear, yarn, llama3 are)")


def convert(folder: Path | str, out: Path | str, *, outtype: str = "f16",
            name: str | None = None, source: str | None = None,
            progress: Progress | None = None) -> Path:
    """Convert the Hugging Face model in `folder` to the GGUF `out` (written to a temporary
    name, renamed when complete). Returns `out`."""
    import gguf

    folder, out = Path(folder).expanduser(), Path(out).expanduser()
    if outtype not in OUTTYPES:
        raise InvalidRequestError(f"unknown --outtype {outtype!r}: use one of "
                                  f"{', '.join(OUTTYPES)}", param="outtype")
    cfg = read_config(folder)
    tensors = read_folder(folder)
    plan = _plan(cfg, tensors, outtype)
    qtype, ftype = _ftype(outtype)
    embd = tensors.get("model.embed_tokens.weight")
    vocab_size = int(cfg.get("vocab_size", default=embd.shape[0] if embd else 0))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part")
    w = gguf.GGUFWriter(tmp, cfg.arch)
    try:
        _write_params(w, cfg, int(ftype), name or folder.name, vocab_size)
        if source:  # a hub repo id: the registry reads it back as the model's hf_source
            w.add_source_repo_url(f"https://huggingface.co/{source}")
        write_vocab(w, folder, vocab_size)
        for o in plan:
            byte_shape = gguf.quant_shape_to_byte_shape(o.shape, o.qtype) \
                if o.qtype not in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16) \
                else o.shape
            dtype = {gguf.GGMLQuantizationType.F32: np.float32,
                     gguf.GGMLQuantizationType.F16: np.float16}.get(o.qtype, np.uint8)
            w.add_tensor_info(o.name, byte_shape, np.dtype(dtype), _nbytes(o),
                              raw_dtype=None if dtype is not np.uint8 else o.qtype)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        total = sum(_nbytes(o) for o in plan)
        done = 0
        for o in plan:
            data = _encode(o)
            w.write_tensor_data(data)
            done += data.nbytes
            del data
            if progress:
                progress(done, total)
        w.close()
        os.replace(tmp, out)
    except BaseException:
        w.close()
        tmp.unlink(missing_ok=True)
        raise
    return out


def is_repo_id(src: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", src)) and not Path(src).exists()


def fetch(repo: str, dest: Path, *, revision: str | None = None,
          progress: Callable[[str, int, int], None] | None = None) -> tuple[Path, str]:
    """Download the safetensors model `repo` (config, weights, tokenizer) from the hub into
    `dest` (resumable; HF_TOKEN and HF_ENDPOINT honoured). Returns (folder, commit)."""
    from huggingface_hub import HfApi, hf_hub_download

    from llmp.models import hf

    endpoint = hf.hub_endpoint()
    with hf._hub_errors(repo, revision, endpoint):
        info = HfApi(endpoint=endpoint).model_info(repo, revision=revision, files_metadata=True)
        commit = info.sha or revision or "main"
        files = [s for s in info.siblings or [] if _wanted(s.rfilename)]
        if not any(s.rfilename == "config.json" for s in files):
            raise ModelError(f"{repo}: no config.json (not a transformers model repo)")
        if not any(s.rfilename.endswith(".safetensors") for s in files):
            raise ModelError(f"{repo}: no safetensors weights (llmp does not read .bin "
                             "checkpoints)")
        total = sum((s.lfs.size if s.lfs else s.size) or 0 for s in files)
        done = 0
        for s in files:
            hf_hub_download(repo, s.rfilename, revision=commit, local_dir=dest,
                            endpoint=endpoint)
            done += (s.lfs.size if s.lfs else s.size) or 0
            if progress:
                progress(f"downloading {s.rfilename}", done, total)
    return dest, commit


def _wanted(path: str) -> bool:
    if "/" in path:
        return False
    return any(Path(path).match(p) for p in HF_FILES)
