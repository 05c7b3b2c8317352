"""Thin, typed helpers over llama-cpp-python's low-level (ctypes) API.

Everything that touches `llama_cpp.llama_cpp` directly for models and vocabularies lives
here, so the scheduler in `engine.py` reads as scheduling, not as ctypes plumbing.
"""
from __future__ import annotations

import ctypes
import threading
from dataclasses import dataclass
from pathlib import Path

import llama_cpp as L

from llmp.errors import ModelError

_init_lock = threading.Lock()
_initialised = False
_log_callback = None  # keep a reference: llama.cpp calls it from C


def _silent(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    return None


def init_backend(log_level: str = "info") -> None:
    """Initialise llama.cpp once per process; silence its stderr logs unless debugging."""
    global _initialised, _log_callback
    with _init_lock:
        if _initialised:
            return
        L.llama_backend_init()
        if log_level.lower() != "debug":
            _log_callback = L.llama_log_callback(_silent)
            L.llama_log_set(_log_callback, ctypes.c_void_p(0))
        _initialised = True


def gpu_offload_supported() -> bool:
    return bool(L.llama_supports_gpu_offload())


@dataclass(frozen=True)
class ModelInfo:
    n_vocab: int
    n_ctx_train: int
    n_layer: int
    n_head: int
    n_head_kv: int
    n_embd: int
    size_bytes: int
    n_params: int
    description: str

    @property
    def kv_bytes_per_token(self) -> int:
        """f16 K and V cache bytes one token costs across all layers."""
        head_dim = self.n_embd // max(1, self.n_head)
        return 2 * self.n_layer * self.n_head_kv * head_dim * 2


class Model:
    """A loaded `llama_model` with its vocabulary: tokenization and token pieces."""

    def __init__(self, path: str | Path, *, n_gpu_layers: int = -1, log_level: str = "info"):
        init_backend(log_level)
        p = Path(path)
        if not p.is_file():
            raise ModelError(f"model file not found: {p}")
        params = L.llama_model_default_params()
        params.n_gpu_layers = 999 if n_gpu_layers < 0 else n_gpu_layers
        self.ptr = L.llama_model_load_from_file(str(p).encode(), params)
        if not self.ptr:
            raise ModelError(f"llama.cpp could not load {p} (not a valid GGUF model?)")
        self.path = p
        self.vocab = L.llama_model_get_vocab(self.ptr)
        self.n_vocab = int(L.llama_vocab_n_tokens(self.vocab))
        self.add_bos = bool(L.llama_vocab_get_add_bos(self.vocab))
        self.eog_tokens = frozenset(t for t in range(self.n_vocab) if L.llama_vocab_is_eog(self.vocab, t))
        self._pieces: dict[int, bytes] = {}
        buf = ctypes.create_string_buffer(256)
        L.llama_model_desc(self.ptr, buf, 256)
        self.info = ModelInfo(
            n_vocab=self.n_vocab,
            n_ctx_train=int(L.llama_model_n_ctx_train(self.ptr)),
            n_layer=int(L.llama_model_n_layer(self.ptr)),
            n_head=int(L.llama_model_n_head(self.ptr)),
            n_head_kv=int(L.llama_model_n_head_kv(self.ptr)),
            n_embd=int(L.llama_model_n_embd(self.ptr)),
            size_bytes=int(L.llama_model_size(self.ptr)),
            n_params=int(L.llama_model_n_params(self.ptr)),
            description=buf.value.decode("utf-8", "replace"),
        )

    def chat_template(self) -> str | None:
        raw = L.llama_model_chat_template(self.ptr, None)
        return raw.decode("utf-8", "replace") if raw else None

    def meta(self, key: str) -> str | None:
        buf = ctypes.create_string_buffer(4096)
        n = L.llama_model_meta_val_str(self.ptr, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8", "replace") if n >= 0 else None

    def tokenize(self, text: str, *, add_special: bool = False, parse_special: bool = True) -> list[int]:
        data = text.encode("utf-8")
        cap = len(data) + 16
        arr = (L.llama_token * cap)()
        n = L.llama_tokenize(self.vocab, data, len(data), arr, cap, add_special, parse_special)
        if n < 0:
            cap = -n
            arr = (L.llama_token * cap)()
            n = L.llama_tokenize(self.vocab, data, len(data), arr, cap, add_special, parse_special)
        return list(arr[:n])

    def piece(self, token: int) -> bytes:
        """The bytes of one token (special tokens render as empty); cached."""
        got = self._pieces.get(token)
        if got is None:
            buf = ctypes.create_string_buffer(64)
            n = L.llama_token_to_piece(self.vocab, token, buf, 64, 0, False)
            if n < 0:
                buf = ctypes.create_string_buffer(-n)
                n = L.llama_token_to_piece(self.vocab, token, buf, -n, 0, False)
            got = self._pieces[token] = buf.raw[:n]
        return got

    def special_text(self, which: str) -> str:
        """The text of the BOS or EOS token ("" when the model has none), as templates want it."""
        tok = L.llama_vocab_bos(self.vocab) if which == "bos" else L.llama_vocab_eos(self.vocab)
        if tok < 0:
            return ""
        buf = ctypes.create_string_buffer(256)
        n = L.llama_token_to_piece(self.vocab, tok, buf, 256, 0, True)
        return buf.raw[:max(0, n)].decode("utf-8", "replace")

    def detokenize(self, tokens: list[int]) -> str:
        return b"".join(self.piece(t) for t in tokens).decode("utf-8", "replace")

    def fim_tokens(self) -> tuple[int, int, int] | None:
        """The fill-in-the-middle tokens (prefix, suffix, middle) of the vocabulary (GGUF
        `tokenizer.ggml.fim_{pre,suf,mid}_token_id`, or known by their text), None when the
        model has none."""
        ids = (L.llama_vocab_fim_pre(self.vocab), L.llama_vocab_fim_suf(self.vocab),
               L.llama_vocab_fim_mid(self.vocab))
        if any(t is None or t < 0 or t >= self.n_vocab for t in ids):
            return None
        return int(ids[0]), int(ids[1]), int(ids[2])

    @property
    def bos(self) -> int | None:
        t = L.llama_vocab_bos(self.vocab)
        return int(t) if t is not None and t >= 0 else None

    def free(self) -> None:
        if self.ptr:
            L.llama_model_free(self.ptr)
            self.ptr = None
