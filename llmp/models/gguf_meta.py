"""Read what the registry needs from a GGUF file's header, with the `gguf` package.

Nothing here loads weights: `GGUFReader` memory-maps the file and we only walk the key/value
section and the tensor table (shapes and types), so reading an 8B model's metadata costs
milliseconds plus the sha256 pass, which is separate (`sha256_files`).

Split models (`name-00001-of-00003.gguf`, llama.cpp's `gguf-split` convention) are read from
their first part; the other parts are found beside it and their tensors are counted too.
"""
from __future__ import annotations

import functools
import hashlib
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmp.errors import ModelError

SPLIT_RE = re.compile(r"^(?P<prefix>.+)-(?P<index>\d{5})-of-(?P<count>\d{5})\.gguf$", re.IGNORECASE)

# Architectures llama.cpp runs as embedding models (pooled output, no generation).
EMBEDDING_ARCHITECTURES = frozenset({"bert", "nomic-bert", "nomic-bert-moe", "jina-bert-v2",
                                     "jina-bert-v3", "modern-bert", "neo-bert", "t5encoder"})

_HF_PREFIXES = ("https://huggingface.co/", "http://huggingface.co/", "hf://")


@functools.cache
def file_type_names() -> dict[int, str]:
    """llama.cpp's file types (`LLAMA_FTYPE_*`), id -> short name: 1 -> "F16", 15 -> "Q4_K_M".

    Taken from the llama-cpp-python build in use, so the list is exactly what its
    `llama_model_quantize` accepts.
    """
    import llama_cpp

    out: dict[int, str] = {}
    for attr in dir(llama_cpp):
        m = re.fullmatch(r"LLAMA_FTYPE_(?:ALL|MOSTLY)_(\w+)", attr)
        if m:
            out[int(getattr(llama_cpp, attr))] = m.group(1)
    return dict(sorted(out.items()))


@dataclass(frozen=True)
class GGUFInfo:
    """The metadata of one GGUF model (all parts of a split model together)."""

    paths: tuple[Path, ...]
    architecture: str
    name: str | None
    organization: str | None
    description: str | None
    parameters: int
    context_length: int
    file_type: int | None
    quantization: str  # "Q4_K_M", "F16", ... (from general.file_type, else the dominant tensor type)
    chat_template: str | None
    size_bytes: int
    n_vocab: int
    tokenizer_model: str | None
    bos_token_id: int | None
    eos_token_id: int | None
    languages: list[str] = field(default_factory=list)
    source_repo: str | None = None  # the HF repo the GGUF was converted from (general.source.*)
    base_model_repo: str | None = None  # general.base_model.0 (what this model derives from)
    pooling_type: int | None = None  # <arch>.pooling_type (llama.cpp: 1 mean, 2 cls, 3 last, 4 rank)

    @property
    def is_embedding(self) -> bool:
        # an embedding architecture, or any architecture declaring a pooling over its hidden
        # states without a chat template (e.g. a llama-architecture embedding model)
        return self.architecture in EMBEDDING_ARCHITECTURES or (
            self.pooling_type in (1, 2, 3) and not self.chat_template)

    @property
    def handles_tools(self) -> bool:
        """Whether the chat template renders a `tools` list (so function calling can work)."""
        template = self.chat_template
        return bool(template) and template is not None and "tools" in template


def split_parts(path: Path) -> list[Path]:
    """All parts of a model given its (first) file; a single-file model is its own list."""
    m = SPLIT_RE.match(path.name)
    if not m:
        return [path]
    count = int(m.group("count"))
    parts = [path.with_name(f"{m.group('prefix')}-{i:05d}-of-{count:05d}.gguf")
             for i in range(1, count + 1)]
    missing = [p.name for p in parts if not p.exists()]
    if missing:
        raise ModelError(f"{path.name}: split model is missing part(s) {', '.join(missing)}")
    return parts


def _hf_repo(url: Any) -> str | None:
    """'https://huggingface.co/Qwen/Qwen2.5-0.5B-Instruct' -> 'Qwen/Qwen2.5-0.5B-Instruct'."""
    if not isinstance(url, str):
        return None
    for prefix in _HF_PREFIXES:
        if url.startswith(prefix):
            parts = url[len(prefix):].strip("/").split("/")
            return "/".join(parts[:2]) if len(parts) >= 2 else None
    return None


def _open(path: Path):
    from gguf import GGUFReader

    if not path.is_file():
        raise ModelError(f"{path}: no such file")
    try:
        reader = GGUFReader(path, "r")
    except Exception as e:  # the gguf package raises ValueError, struct/numpy errors, ...
        raise ModelError(f"{path.name}: not a valid GGUF file, corrupt or truncated "
                         f"({_one_line(e)})") from None
    size = path.stat().st_size
    for t in reader.tensors:
        if int(t.data_offset) + int(t.n_bytes) > size:
            raise ModelError(f"{path.name}: truncated GGUF file (tensor {t.name} ends past the "
                             f"end of the file)")
    return reader


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def _scalar(reader, key: str) -> Any:
    f = reader.fields.get(key)
    if f is None:
        return None
    try:
        return f.contents()
    except Exception:  # a malformed value reads as absent
        return None


def _array_len(reader, key: str) -> int:
    f = reader.fields.get(key)
    return len(f.data) if f is not None else 0


def read(path: Path | str) -> GGUFInfo:
    """Read a GGUF file's metadata; raises `ModelError` (one line) when it is not valid GGUF."""
    from gguf import GGMLQuantizationType

    path = Path(path).expanduser().resolve()
    parts = split_parts(path)
    reader = _open(parts[0])
    readers = [reader] + [_open(p) for p in parts[1:]]

    arch = _scalar(reader, "general.architecture")
    if not isinstance(arch, str) or not arch:
        raise ModelError(f"{path.name}: GGUF file has no general.architecture")

    tensors = [t for r in readers for t in r.tensors]
    if not tensors:
        raise ModelError(f"{path.name}: GGUF file has no tensors")
    parameters = sum(int(t.n_elements) for t in tensors)

    ftype = _scalar(reader, "general.file_type")
    ftype = int(ftype) if isinstance(ftype, int) else None
    quant = file_type_names().get(ftype) if ftype is not None else None
    if quant is None:  # no or unknown file type: name the type holding most weights
        weights: Counter[int] = Counter()
        for t in tensors:
            if len(t.shape) >= 2:
                weights[int(t.tensor_type)] += int(t.n_elements)
        top = weights.most_common(1)[0][0] if weights else int(tensors[0].tensor_type)
        try:
            quant = GGMLQuantizationType(top).name
        except ValueError:
            quant = f"type{top}"

    langs = _scalar(reader, "general.languages")
    template = _scalar(reader, "tokenizer.chat_template")
    ctx = _scalar(reader, f"{arch}.context_length")
    bos = _scalar(reader, "tokenizer.ggml.bos_token_id")
    eos = _scalar(reader, "tokenizer.ggml.eos_token_id")
    return GGUFInfo(
        paths=tuple(parts),
        architecture=arch,
        name=_str(_scalar(reader, "general.name")),
        organization=_str(_scalar(reader, "general.organization")),
        description=_str(_scalar(reader, "general.description")),
        parameters=parameters,
        context_length=int(ctx) if isinstance(ctx, int) else 0,
        file_type=ftype,
        quantization=quant,
        chat_template=template if isinstance(template, str) and template.strip() else None,
        size_bytes=sum(p.stat().st_size for p in parts),
        n_vocab=_array_len(reader, "tokenizer.ggml.tokens"),
        tokenizer_model=_str(_scalar(reader, "tokenizer.ggml.model")),
        bos_token_id=int(bos) if isinstance(bos, int) else None,
        eos_token_id=int(eos) if isinstance(eos, int) else None,
        languages=[x for x in langs if isinstance(x, str)] if isinstance(langs, list) else [],
        source_repo=_hf_repo(_scalar(reader, "general.source.repo_url"))
        or _str(_scalar(reader, "general.source.huggingface.repository")),
        base_model_repo=_hf_repo(_scalar(reader, "general.base_model.0.repo_url")),
        pooling_type=_int(_scalar(reader, f"{arch}.pooling_type")),
    )


def _int(v: Any) -> int | None:
    return int(v) if isinstance(v, int) and not isinstance(v, bool) else None


def _str(v: Any) -> str | None:
    return v if isinstance(v, str) and v else None


def sha256_files(paths: Iterable[Path], *,
                 progress: Callable[[int], None] | None = None) -> str:
    """sha256 of the model's bytes (the parts concatenated in order; for one file, its sha256)."""
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
                if progress:
                    progress(len(chunk))
    return h.hexdigest()
