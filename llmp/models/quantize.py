"""Quantize a registered model with llama.cpp's own `llama_model_quantize`.

Every file type the llama-cpp-python build offers is accepted (`quant_types()`), by its
llama.cpp name (`Q4_K_M`, `Q8_0`, `IQ4_XS`, `F16`, ...; case-insensitive). Quantizing an
already-quantized model to a higher precision only inflates the file without bringing the
precision back, so it is refused unless `allow_requantize`; requantizing downwards works but
costs quality (quantize from F16/BF16/F32 when you can).

The result is written to a temporary file beside the target and renamed once complete, then
registered; a failure (including a full disk) leaves neither a file nor a registry row.
"""
from __future__ import annotations

import ctypes
import errno
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlite_utils import Database

from llmp.config import Settings
from llmp.db import models as db_models
from llmp.errors import InvalidRequestError, ModelError
from llmp.models import gguf_meta, registry

# Types llama.cpp cannot make without an importance matrix (which llmp does not compute yet):
# on real model shapes it stops with "missing importance matrix".
NEEDS_IMATRIX = frozenset({"IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S"})
UNQUANTIZED = frozenset({"F32", "F16", "BF16"})

# Approximate bits per weight of each file type (llama.cpp's `llama-quantize --help` and its
# block layouts); used to order precisions and to estimate output size and progress.
BITS_PER_WEIGHT: dict[str, float] = {
    "F32": 32.0, "F16": 16.0, "BF16": 16.0, "Q8_0": 8.5, "Q6_K": 6.56, "Q5_1": 6.0,
    "Q5_K_M": 5.69, "Q5_0": 5.5, "Q5_K_S": 5.54, "Q4_1": 5.0, "Q4_K_M": 4.89, "Q4_K_S": 4.58,
    "Q4_0": 4.5, "IQ4_NL": 4.5, "NVFP4": 4.5, "IQ4_XS": 4.25, "MXFP4_MOE": 4.25,
    "Q3_K_L": 4.27, "Q3_K_M": 3.91, "IQ3_M": 3.66, "Q3_K_S": 3.5, "IQ3_S": 3.44,
    "IQ3_XS": 3.3, "IQ3_XXS": 3.06, "Q2_K": 2.96, "Q2_K_S": 2.79, "IQ2_M": 2.7, "IQ2_S": 2.5,
    "Q2_0": 2.5, "IQ2_XS": 2.31, "IQ2_XXS": 2.06, "TQ2_0": 2.06, "IQ1_M": 1.75,
    "TQ1_0": 1.69, "IQ1_S": 1.56, "Q1_0": 1.5,
}


def quant_types() -> dict[str, int]:
    """Every file type llama.cpp offers, name -> LLAMA_FTYPE id (in id order)."""
    return {name: ftype for ftype, name in gguf_meta.file_type_names().items()}


def bits_per_weight(name: str) -> float:
    return BITS_PER_WEIGHT.get(name.upper(), 16.0)


def parse_type(name: str) -> tuple[str, int]:
    """'q4_k_m' -> ('Q4_K_M', 15); an unknown name lists the valid ones."""
    types = quant_types()
    key = name.strip().upper()
    if key not in types:
        raise InvalidRequestError(f"unknown quantization type {name!r}; llama.cpp offers: "
                                  f"{', '.join(types)}", param="type")
    return key, types[key]


@dataclass(frozen=True)
class QuantizeResult:
    record: dict
    source_id: str
    type: str
    seconds: float
    size_before: int
    size_after: int


class _LlamaLogCapture:
    """Route llama.cpp's log to a buffer while quantizing (it prints a line per tensor), so
    the CLI stays readable and a failure can quote llama.cpp's own error line."""

    def __init__(self) -> None:
        import llama_cpp

        self._llama_cpp = llama_cpp
        self.errors: list[str] = []

        @llama_cpp.llama_log_callback
        def _callback(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
            if level in (2, 3):  # GGML_LOG_LEVEL_WARN, GGML_LOG_LEVEL_ERROR
                line = text.decode("utf-8", "replace").strip()
                if line:
                    self.errors.append(line)

        self._callback = _callback

    def __enter__(self) -> _LlamaLogCapture:
        self._llama_cpp.llama_log_set(self._callback, ctypes.c_void_p(0))
        return self

    def __exit__(self, *exc: object) -> None:
        from llama_cpp import _logger

        self._llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))


def output_path(settings: Settings, model_id: str) -> Path:
    return settings.models_dir / "quantized" / f"{model_id.replace(':', '-')}.gguf"


@dataclass(frozen=True)
class Plan:
    """What `precheck` settled: the source, the target type and id, the paths and sizes."""
    src: dict
    src_quant: str
    src_path: Path
    type: str
    ftype: int
    new_id: str
    out: Path
    size_before: int
    estimate: int  # bytes the output should take

    @property
    def tmp(self) -> Path:
        return self.out.with_name(self.out.name + ".part")


def precheck(db: Database, settings: Settings, id_or_alias: str, qtype: str, *,
             model_id: str | None = None, allow_requantize: bool = False) -> Plan:
    """Everything that can refuse a quantization before it starts (type, precision policy,
    the new id, the source file, free disk); nothing is written."""
    name, ftype = parse_type(qtype)
    src = registry.resolve(db, id_or_alias)
    src_quant = (src.get("quantization") or "F16").upper()
    if name in NEEDS_IMATRIX:
        raise InvalidRequestError(f"{name} needs an importance matrix, which llmp cannot "
                                  "compute yet; choose IQ3_XXS or above", param="type")
    if src_quant not in UNQUANTIZED and bits_per_weight(name) > bits_per_weight(src_quant) \
            and not allow_requantize:
        raise InvalidRequestError(
            f"{src['id']} is already quantized ({src_quant}); {name} is a higher precision and "
            "would only grow the file without restoring precision. Quantize from an F16/BF16/F32 "
            "model, or pass --allow-requantize to do it anyway", param="type")
    new_id = registry.check_id(model_id or f"{src['id'].split(':')[0]}:{name.lower()}")
    if db_models.get(db, new_id) is not None:
        raise InvalidRequestError(f"model {new_id!r} already exists; pass --name or run "
                                  f"`llmp models rm {new_id}` first", param="name")
    src_path = Path(src["path"])
    if not src_path.is_file():
        raise ModelError(f"{src['id']}: model file {src_path} is missing")
    size_before = int(src.get("size_bytes") or src_path.stat().st_size)
    estimate = max(1, int(size_before * bits_per_weight(name) / bits_per_weight(src_quant)))
    out = output_path(settings, new_id)
    out.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(out.parent).free
    if free < estimate:
        raise ModelError(f"disk full: about {estimate >> 20} MB needed in {out.parent}, "
                         f"{free >> 20} MB free")
    return Plan(src=src, src_quant=src_quant, src_path=src_path, type=name, ftype=ftype,
                new_id=new_id, out=out, size_before=size_before, estimate=estimate)


def run(plan: Plan, *, threads: int,
        progress: Callable[[int, int], None] | None = None) -> float:
    """Quantize with llama.cpp into a temporary file, renamed to `plan.out` once complete;
    returns the seconds it took. On any failure neither file is left."""
    import llama_cpp

    tmp, out = plan.tmp, plan.out
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = plan.ftype
    params.nthread = threads
    # our precision check (precheck) is the policy; llama.cpp's own flag only gates touching
    # already-quantized tensors at all
    params.allow_requantize = plan.src_quant not in UNQUANTIZED
    outcome: dict[str, int] = {}

    def work() -> None:
        outcome["rc"] = llama_cpp.llama_model_quantize(
            str(plan.src_path).encode(), str(tmp).encode(), ctypes.byref(params))

    start = time.monotonic()
    try:
        with _LlamaLogCapture() as log:
            worker = threading.Thread(target=work, name="llmp-quantize", daemon=True)
            worker.start()
            while worker.is_alive():
                worker.join(0.1)
                if progress:
                    progress(tmp.stat().st_size if tmp.exists() else 0, plan.estimate)
        seconds = time.monotonic() - start
        if outcome.get("rc") != 0:
            free = shutil.disk_usage(out.parent).free
            if free < (1 << 20) * 16:
                raise ModelError(f"disk full while quantizing into {out.parent}")
            detail = next((ln for ln in reversed(log.errors) if "fail" in ln.lower()),
                          log.errors[-1] if log.errors else "no detail from llama.cpp")
            raise ModelError(f"quantization to {plan.type} failed: {detail}")
        if progress:
            progress(tmp.stat().st_size, tmp.stat().st_size)
        tmp.replace(out)
    except OSError as e:
        out.unlink(missing_ok=True)
        if e.errno == errno.ENOSPC:
            raise ModelError(f"disk full while quantizing into {out.parent}") from None
        raise
    except BaseException:
        out.unlink(missing_ok=True)
        raise
    finally:
        tmp.unlink(missing_ok=True)
    return seconds


def register(db: Database, plan: Plan, seconds: float) -> QuantizeResult:
    """Register the quantized file (it keeps the source's provider and hf_source); the file
    is removed if that fails."""
    src = plan.src
    try:
        record = registry.register(db, plan.out, model_id=plan.new_id,
                                   provider=src.get("provider"), source=f"quantize:{src['id']}",
                                   hf_source=src.get("hf_source"))
    except BaseException:
        plan.out.unlink(missing_ok=True)
        raise
    return QuantizeResult(record=record, source_id=src["id"], type=plan.type, seconds=seconds,
                          size_before=plan.size_before, size_after=int(record["size_bytes"]))


def quantize(db: Database, settings: Settings, id_or_alias: str, qtype: str, *,
             model_id: str | None = None, allow_requantize: bool = False,
             threads: int = 0,
             progress: Callable[[int, int], None] | None = None) -> QuantizeResult:
    """Quantize a registered model to `qtype` and register the result: `precheck`, `run`,
    `register`. `progress(bytes_written, estimated_total)` is called about ten times a
    second."""
    plan = precheck(db, settings, id_or_alias, qtype, model_id=model_id,
                    allow_requantize=allow_requantize)
    seconds = run(plan, threads=threads or settings.threads, progress=progress)
    return register(db, plan, seconds)
