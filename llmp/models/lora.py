"""LoRA adapters: PEFT folders -> GGUF adapters for llama.cpp, and checks of GGUF adapters.

A GGUF LoRA adapter (what `llama_adapter_lora_init` reads) has `general.type = adapter`,
`adapter.type = lora`, `adapter.lora.alpha` (FLOAT32: another type aborts llama.cpp), the
base's `general.architecture`, and for every adapted weight `<base tensor>.lora_a` (PEFT's A,
(r, in)) and `<base tensor>.lora_b` (B, (out, r)), stored as PEFT has them. llama.cpp scales
each pair by `alpha / r`; PEFT's own scaling (rsLoRA's alpha / sqrt(r), `alpha_pattern`,
`rank_pattern`) is folded into B where it differs. For the llama architecture B of q and k is
row-permuted like the base's q/k weights (see `convert.permute_qk`).

Refused with a clear message (nothing written): DoRA, LoRA on embeddings or lm_head,
`modules_to_save`, LoRA biases, `fan_in_fan_out`, an architecture or a shape that does not
match the base.

`convert_peft_adapter(src, base_gguf, out)` is the entry point the fine-tuning worker uses too.
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llmp.errors import InvalidRequestError
from llmp.models.convert import SUPPORTED, permute_qk
from llmp.models.safetensors_io import read_header


class AdapterError(InvalidRequestError):
    """An adapter that cannot be served on the base it was given (400 invalid_request_error)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, param="adapter", code="invalid_adapter")


@dataclass(frozen=True)
class BaseShape:
    """What an adapter must match in its base GGUF: architecture, head counts, tensor shapes
    (numpy order: (out, in) for a weight)."""
    path: Path
    architecture: str
    n_head: int
    n_head_kv: int
    n_layer: int
    tensors: dict[str, tuple[int, ...]]


def base_shape(path: Path | str) -> BaseShape:
    from gguf import GGUFReader

    path = Path(path)
    r = GGUFReader(path)

    def kv(key: str) -> Any:
        f = r.fields.get(key)
        if f is None:
            return None
        v = f.contents()
        return v

    arch = str(kv("general.architecture") or "")
    if kv("general.type") == "adapter":
        raise AdapterError(f"{path.name} is an adapter, not a base model")
    tensors = {t.name: tuple(int(d) for d in reversed(list(t.shape))) for t in r.tensors}
    return BaseShape(path, arch, int(kv(f"{arch}.attention.head_count") or 0),
                     int(kv(f"{arch}.attention.head_count_kv") or kv(f"{arch}.attention.head_count") or 0),
                     int(kv(f"{arch}.block_count") or 0), tensors)


def read_peft_config(folder: Path) -> dict[str, Any]:
    path = folder / "adapter_config.json"
    if not path.is_file():
        raise AdapterError(f"{folder}: no adapter_config.json (not a PEFT adapter folder)")
    try:
        cfg = json.loads(path.read_text())
    except ValueError as e:
        raise AdapterError(f"{path}: not valid JSON ({e})") from None
    return cfg


def _weights_file(folder: Path) -> Path:
    p = folder / "adapter_model.safetensors"
    if not p.is_file():
        if (folder / "adapter_model.bin").is_file():
            raise AdapterError(f"{folder}: adapter_model.bin (a pickle) is not read; save the "
                               "adapter with safe_serialization (adapter_model.safetensors)")
        raise AdapterError(f"{folder}: no adapter_model.safetensors")
    return p


def check_peft_config(cfg: dict[str, Any]) -> None:
    """Refuse what llama.cpp's LoRA cannot express."""
    ptype = str(cfg.get("peft_type", "LORA")).upper()
    if ptype != "LORA":
        raise AdapterError(f"PEFT type {ptype} is not supported: only LoRA adapters are")
    if cfg.get("use_dora"):
        raise AdapterError("DoRA adapters (use_dora) are not supported by llama.cpp: train a "
                           "plain LoRA or merge the adapter into the model")
    if cfg.get("modules_to_save"):
        raise AdapterError(f"modules_to_save ({', '.join(cfg['modules_to_save'])}) is not "
                           "supported: those fully trained modules cannot be served as a LoRA")
    if cfg.get("bias", "none") != "none" or cfg.get("lora_bias"):
        raise AdapterError("LoRA biases (bias != 'none' or lora_bias) are not supported")
    if cfg.get("fan_in_fan_out"):
        raise AdapterError("fan_in_fan_out adapters are not supported")
    if cfg.get("target_parameters"):
        raise AdapterError("LoRA on parameters (target_parameters) is not supported")
    for key in ("trainable_token_indices", "alora_invocation_tokens"):
        if cfg.get(key):
            raise AdapterError(f"{key} adapters are not supported")
    targets = cfg.get("target_modules") or []
    if isinstance(targets, str):
        targets = [targets]
    bad = [t for t in targets if re.search(r"(embed_tokens|lm_head|wte|embed_out)$", t)]
    if bad:
        raise AdapterError(f"LoRA on embeddings or lm_head ({', '.join(bad)}) is not supported")


def _pattern_value(pattern: dict[str, Any], module: str, default: Any) -> Any:
    """PEFT's rank_pattern / alpha_pattern lookup: the longest key the module name ends with
    (keys may be regexes)."""
    best: tuple[int, Any] | None = None
    for key, value in pattern.items():
        if module == key or module.endswith("." + key) or re.fullmatch(rf"(.*\.)?{key}", module):
            if best is None or len(key) > best[0]:
                best = (len(key), value)
    return default if best is None else best[1]


def _trained_on(src: Path, cfg: dict[str, Any]) -> str | None:
    """The Hugging Face architecture the adapter was trained on, where it can be known: a
    config.json beside the adapter (some trainers save one) or in the local base folder named
    by `base_model_name_or_path`."""
    candidates = [src / "config.json"]
    named = cfg.get("base_model_name_or_path")
    if named and not str(named).startswith(("http:", "https:")):
        candidates.append(Path(str(named)).expanduser() / "config.json")
    for path in candidates:
        try:
            if path.is_file():
                archs = json.loads(path.read_text()).get("architectures") or []
                if archs:
                    return str(archs[0])
        except (OSError, ValueError):
            continue
    return None


def convert_peft_adapter(src: Path | str, base: Path | str, out: Path | str | None = None,
                         *, name: str | None = None) -> Path:
    """Convert the PEFT LoRA folder `src` into a GGUF adapter for the base GGUF `base`.

    `out` defaults to `<src>/adapter.gguf`. Checks everything before writing; the file is
    written under a temporary name and renamed when complete. Returns the output path."""
    import gguf

    src = Path(src).expanduser()
    base_info = base_shape(base)
    cfg = read_peft_config(src)
    check_peft_config(cfg)
    base_arch_hf = _trained_on(src, cfg)
    if base_arch_hf and SUPPORTED.get(base_arch_hf) not in (None, base_info.architecture):
        raise AdapterError(f"the adapter was trained on a {base_arch_hf} model; the base "
                           f"{base_info.path.name} is {base_info.architecture}")
    if base_info.architecture not in set(SUPPORTED.values()):
        raise AdapterError(f"base architecture {base_info.architecture} is not supported for "
                           f"adapters; supported: {', '.join(sorted(set(SUPPORTED.values())))}")
    arch_enum = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == base_info.architecture)
    tmap = gguf.get_tensor_name_map(arch_enum, base_info.n_layer)
    tensors = read_header(_weights_file(src))
    r_default = int(cfg.get("r", 8))
    alpha_default = float(cfg.get("lora_alpha", r_default))
    rslora = bool(cfg.get("use_rslora"))
    rank_pattern = cfg.get("rank_pattern") or {}
    alpha_pattern = cfg.get("alpha_pattern") or {}
    gguf_alpha = alpha_default  # llama.cpp: scale = alpha / rank, per tensor pair

    pairs: dict[str, dict[str, Any]] = {}
    for tname, ref in tensors.items():
        if "lora_embedding" in tname or re.search(r"(embed_tokens|lm_head)\.", tname):
            raise AdapterError(f"LoRA on embeddings or lm_head ({tname}) is not supported")
        if re.search(r"\.lora_magnitude_vector", tname):
            raise AdapterError("DoRA adapters are not supported")
        m = re.fullmatch(r"(?:base_model\.model\.)?(.+)\.lora_([AB])(?:\.default)?\.weight", tname)
        if m is None:
            if tname.endswith(".bias"):
                raise AdapterError(f"LoRA biases ({tname}) are not supported")
            raise AdapterError(f"unexpected tensor {tname} in the adapter (modules_to_save?)")
        module, ab = m.group(1), m.group(2)
        pairs.setdefault(module, {})[ab] = ref
    if not pairs:
        raise AdapterError(f"{src}: the adapter has no LoRA tensors")

    planned: list[tuple[str, np.ndarray, np.ndarray]] = []
    for module, ab in sorted(pairs.items()):
        if set(ab) != {"A", "B"}:
            raise AdapterError(f"the adapter's {module} has lora_{next(iter(ab))} only")
        hf = module[len("model.language_model."):] if module.startswith("model.language_model.") \
            else module
        if hf.startswith("language_model."):
            hf = hf[len("language_model."):]
        base_name = tmap.get_name(hf + ".weight", try_suffixes=(".weight",))
        if base_name is None:
            raise AdapterError(f"the adapter's module {module} has no counterpart in a "
                               f"{base_info.architecture} model")
        if base_name in ("token_embd.weight", "output.weight"):
            raise AdapterError(f"LoRA on embeddings or lm_head ({module}) is not supported")
        shape = base_info.tensors.get(base_name)
        if shape is None:
            raise AdapterError(f"the base {base_info.path.name} has no tensor {base_name} "
                               f"(for the adapter's {module}): wrong base model?")
        a = ab["A"].float32()
        b = ab["B"].float32()
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
            raise AdapterError(f"the adapter's {module} has malformed A/B shapes "
                               f"{a.shape} / {b.shape}")
        out_dim, in_dim = shape[0], shape[-1]
        if b.shape[0] != out_dim or a.shape[1] != in_dim:
            raise AdapterError(f"the adapter's {module} is {b.shape[0]}x{a.shape[1]}, the base's "
                               f"{base_name} is {out_dim}x{in_dim}: the adapter was trained on "
                               "another model")
        rank = a.shape[0]
        r_cfg = int(_pattern_value(rank_pattern, module, r_default))
        alpha = float(_pattern_value(alpha_pattern, module, alpha_default))
        peft_scale = alpha / math.sqrt(r_cfg) if rslora else alpha / r_cfg
        llama_scale = gguf_alpha / rank
        if not math.isclose(peft_scale, llama_scale, rel_tol=1e-7):
            b = b * np.float32(peft_scale / llama_scale)
        if base_info.architecture == "llama" and base_name.endswith((".attn_q.weight",
                                                                      ".attn_k.weight")):
            heads = base_info.n_head if ".attn_q." in base_name else base_info.n_head_kv
            b = permute_qk(b, heads)
        planned.append((base_name, np.ascontiguousarray(a, np.float32),
                        np.ascontiguousarray(b, np.float32)))

    out_path = Path(out).expanduser() if out else src / "adapter.gguf"
    extra = {}
    if cfg.get("base_model_name_or_path"):
        extra["llmp.adapter.base_model"] = str(cfg["base_model_name_or_path"])
    return write_adapter(out_path, base_info.architecture, gguf_alpha, planned,
                         name=name or src.name, extra=extra)


def write_adapter(out: Path, architecture: str, alpha: float,
                  pairs: list[tuple[str, np.ndarray, np.ndarray]], *, name: str,
                  extra: dict[str, str] | None = None) -> Path:
    """Write a GGUF LoRA adapter: `pairs` of (base tensor name, A (r, in), B (out, r)), float32.
    Written under a temporary name, renamed when complete."""
    import gguf

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part")
    w = gguf.GGUFWriter(tmp, architecture)
    try:
        w.add_type(gguf.GGUFType.ADAPTER)
        w.add_string(gguf.Keys.Adapter.TYPE, "lora")
        w.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(alpha))  # FLOAT32, or llama.cpp aborts
        w.add_name(name)
        for key, value in (extra or {}).items():
            w.add_string(key, value)
        for base_name, a, b in pairs:
            w.add_tensor(base_name + ".lora_a", a)
            w.add_tensor(base_name + ".lora_b", b)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        os.replace(tmp, out)
    except BaseException:
        w.close()
        tmp.unlink(missing_ok=True)
        raise
    return out


LORA_TARGETS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


def synth_adapter(base: Path | str, out: Path | str, *, rank: int = 16, seed: int = 0,
                  targets: tuple[str, ...] = LORA_TARGETS) -> Path:
    """A random LoRA adapter for the base GGUF (benchmarks: values do not change speed), on
    every layer's `targets` weights; small B so the model stays sane."""
    info = base_shape(base)
    rng = np.random.default_rng(seed)
    pairs: list[tuple[str, np.ndarray, np.ndarray]] = []
    for name, shape in sorted(info.tensors.items()):
        parts = name.split(".")
        if len(parts) != 4 or parts[0] != "blk" or parts[2] not in targets or len(shape) != 2:
            continue
        n_out, n_in = shape
        a = rng.standard_normal((rank, n_in), dtype=np.float32) / np.float32(np.sqrt(n_in))
        b = rng.standard_normal((n_out, rank), dtype=np.float32) * np.float32(0.01)
        pairs.append((name, a, b))
    if not pairs:
        raise AdapterError(f"{Path(base).name}: no weights to put an adapter on")
    return write_adapter(Path(out), info.architecture, float(rank), pairs,
                         name=f"synth-lora-r{rank}-s{seed}")


@dataclass(frozen=True)
class AdapterInfo:
    path: Path
    architecture: str
    alpha: float
    rank: int
    n_tensors: int
    name: str | None


def check_gguf_adapter(path: Path | str, base: Path | str) -> AdapterInfo:
    """Check that a GGUF file is a LoRA adapter llama.cpp can apply to the base GGUF (type,
    alpha's type, architecture, every tensor's base and shape) without loading either."""
    import gguf
    from gguf import GGUFReader

    path = Path(path).expanduser()
    try:
        r = GGUFReader(path)
    except Exception as e:  # noqa: BLE001 - gguf raises ValueError, struct.error, ...
        raise AdapterError(f"{path.name}: not a GGUF file ({e})") from None

    def kv(key: str) -> Any:
        f = r.fields.get(key)
        return None if f is None else f.contents()

    if kv("general.type") != "adapter" or kv("adapter.type") != "lora":
        raise AdapterError(f"{path.name} is not a LoRA adapter (general.type="
                           f"{kv('general.type')!r}, adapter.type={kv('adapter.type')!r})")
    alpha_field = r.fields.get("adapter.lora.alpha")
    if alpha_field is None or alpha_field.types != [gguf.GGUFValueType.FLOAT32]:
        raise AdapterError(f"{path.name}: adapter.lora.alpha must be a FLOAT32")
    base_info = base_shape(base)
    arch = str(kv("general.architecture") or "")
    if arch != base_info.architecture:
        raise AdapterError(f"{path.name} is a {arch} adapter; the base {base_info.path.name} is "
                           f"{base_info.architecture}")
    ranks: set[int] = set()
    names = {t.name for t in r.tensors}
    for t in r.tensors:
        shape = tuple(int(d) for d in reversed(list(t.shape)))
        if t.name.endswith(".lora_a"):
            base_name = t.name[:-len(".lora_a")]
            if base_name + ".lora_b" not in names:
                raise AdapterError(f"{path.name}: {t.name} has no lora_b")
            if base_name not in base_info.tensors:
                raise AdapterError(f"{path.name}: the base has no tensor {base_name}")
            if shape[-1] != base_info.tensors[base_name][-1]:
                raise AdapterError(f"{path.name}: {t.name} does not match the base's shape")
            ranks.add(shape[0])
        elif t.name.endswith(".lora_b"):
            base_name = t.name[:-len(".lora_b")]
            if base_name not in base_info.tensors or shape[0] != base_info.tensors[base_name][0]:
                raise AdapterError(f"{path.name}: {t.name} does not match the base's shape")
        else:
            raise AdapterError(f"{path.name}: unexpected tensor {t.name}")
    if not ranks:
        raise AdapterError(f"{path.name}: no LoRA tensors")
    return AdapterInfo(path, arch, float(kv("adapter.lora.alpha")), max(ranks),
                       len(r.tensors), kv("general.name"))
