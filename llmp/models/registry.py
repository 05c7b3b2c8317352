"""The model registry: GGUF files known to llmp, with what GET /v1/models serves about them.

Model ids are URL-path friendly (no slashes), lower case, Ollama style:

* pulled:    `<repo name without -GGUF>:<quant>`, e.g. `Qwen/Qwen2.5-0.5B-Instruct-GGUF:Q4_K_M`
             -> `qwen2.5-0.5b-instruct:q4_k_m`; the pull spec itself is kept as an alias, and
             the hub repo and file in `source`;
* added:     `--name`, else the file name's stem (`llama-3.2-1b-q4_k_m.gguf` -> `llama-3.2-1b-q4_k_m`);
* quantized: the source id with its `:tag` replaced by the new type (`tiny` -> `tiny:q8_0`).

Size classes by parameter count (`SIZE_CLASSES`): small < 4B <= medium < 16B <= large < 80B
<= xl. So Llama-3.2-1B/3B and Phi-3-mini are small, 7-14B models medium, 27-72B large,
anything bigger xl.

Every record keeps `hf_source`, the safetensors repo the model belongs to (for fine-tuning).

LoRA adapters are models of their own (`register_adapter`): `path` is the adapter GGUF,
`parent` the base model's id, `lora_scale` the scale it is applied with; their metadata
(category, context, chat template, capabilities) is the base's. A request for an adapter runs
on its base's engine with the adapter applied.
"""
from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlite_utils import Database

from llmp.config import Settings
from llmp.db import models as db_models
from llmp.errors import InvalidRequestError, NotFoundError
from llmp.models import gguf_meta, guards
from llmp.models.gguf_meta import GGUFInfo

CATEGORIES = ("text-generation", "chat", "embedding")
SIZES = ("small", "medium", "large", "xl")
# (upper bound exclusive, class); above the last bound: "xl"
SIZE_CLASSES: tuple[tuple[int, str], ...] = ((4_000_000_000, "small"),
                                             (16_000_000_000, "medium"),
                                             (80_000_000_000, "large"))
PER_TOKENS = 1000  # prices are per 1K tokens
_ID_RE = re.compile(r"^[a-z0-9][a-z0-9._:-]{0,127}$")


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def size_class(parameters: int) -> str:
    for bound, name in SIZE_CLASSES:
        if parameters < bound:
            return name
    return "xl"


def slugify(text: str) -> str:
    """A model id from free text: lower case, [a-z0-9._:-], no leading/trailing punctuation."""
    s = re.sub(r"[^a-z0-9._:-]+", "-", text.lower()).strip("-._:")
    return s[:128] or "model"


def check_id(model_id: str) -> str:
    if not _ID_RE.match(model_id):
        raise InvalidRequestError(
            f"invalid model id {model_id!r}: use lower-case letters, digits and . _ : - "
            "(no slashes, at most 128 characters)", param="name")
    return model_id


def category_of(info: GGUFInfo) -> str:
    if info.is_embedding:
        return "embedding"
    return "chat" if info.chat_template else "text-generation"


def capabilities_of(info: GGUFInfo) -> list[str]:
    if info.is_embedding:
        return ["embeddings"]
    caps = ["text-generation"]
    if info.chat_template:
        caps.append("chat")
        if info.handles_tools:
            caps.append("function-calling")
    return caps


def build_record(info: GGUFInfo, *, model_id: str, sha256: str, provider: str | None = None,
                 source: str | None = None, hf_source: str | None = None,
                 revision: str | None = None) -> dict[str, Any]:
    """The registry row for a GGUF (pricing and timestamps are left to `register`)."""
    return {
        "id": model_id,
        "name": info.name or model_id,
        "path": str(info.paths[0]),
        "provider": provider or info.organization or "local",
        "category": category_of(info),
        "size_class": size_class(info.parameters),
        "architecture": info.architecture,
        "parameters": info.parameters,
        "context_length": info.context_length,
        # a local model may generate until its context is full
        "max_output_tokens": info.context_length,
        "quantization": info.quantization,
        "file_type": info.file_type,
        "chat_template": info.chat_template,
        "capabilities": capabilities_of(info),
        "languages": info.languages,
        "description": info.description or _describe(info),
        "size_bytes": info.size_bytes,
        "sha256": sha256,
        "source": source or f"file:{info.paths[0]}",
        "hf_source": hf_source or info.source_repo or info.base_model_repo,
        "revision": revision,
    }


def _describe(info: GGUFInfo) -> str:
    return (f"{info.architecture} model, {info.parameters / 1e9:.2f}B parameters, "
            f"{info.quantization}")


def register(db: Database, path: Path | str, *, model_id: str | None = None,
             provider: str | None = None, source: str | None = None,
             hf_source: str | None = None, revision: str | None = None,
             info: GGUFInfo | None = None, sha256: str | None = None) -> dict:
    """Read a GGUF and store its record; returns the stored record.

    Re-registering the same file under the same id refreshes its metadata and keeps its
    prices, aliases and `created_at`. An id already used by another file is an error.
    """
    info = info or gguf_meta.read(path)
    model_id = check_id(model_id or slugify(info.paths[0].stem))
    existing = db_models.get(db, model_id)
    if existing and existing["id"] != model_id:
        raise InvalidRequestError(f"{model_id!r} is already an alias of {existing['id']!r}",
                                  param="name")
    if existing and Path(existing["path"]) != info.paths[0]:
        raise InvalidRequestError(
            f"model id {model_id!r} is already registered for {existing['path']}; "
            f"choose another --name or run `llmp models rm {model_id}` first", param="name")
    record = build_record(info, model_id=model_id, provider=provider, source=source,
                          hf_source=hf_source, revision=revision,
                          sha256=sha256 or gguf_meta.sha256_files(info.paths))
    stamp = now_iso()
    if existing:
        record.update(price_input=existing["price_input"], price_output=existing["price_output"],
                      currency=existing["currency"], created_at=existing["created_at"])
    else:
        record.update(price_input=0.0, price_output=0.0, currency="USD", created_at=stamp)
    record["updated_at"] = stamp
    if not (existing and existing.get("guard_profile")):
        # a guard model (Llama Guard 3, Qwen3Guard) serves moderations as registered
        profile = guards.detect(info.name or model_id, info.chat_template)
        if profile:
            record["guard_profile"] = profile
    return db_models.upsert(db, record)


def resolve(db: Database, id_or_alias: str) -> dict:
    """The record of a model id or alias; `NotFoundError` when neither is known."""
    rec = db_models.get(db, id_or_alias)
    if rec is None:
        raise NotFoundError(f"model {id_or_alias!r} not found (`llmp models list` shows the "
                            "registered models)", param="model", code="model_not_found")
    return rec


def list_models(db: Database, *, category: str | None = None, size: str | None = None,
                provider: str | None = None) -> list[dict]:
    if category and category not in CATEGORIES:
        raise InvalidRequestError(f"unknown category {category!r}: use one of "
                                  f"{', '.join(CATEGORIES)}", param="category",
                                  code="invalid_parameter")
    if size and size not in SIZES:
        raise InvalidRequestError(f"unknown size {size!r}: use one of {', '.join(SIZES)}",
                                  param="size", code="invalid_parameter")
    return db_models.list_all(db, category=category, size=size, provider=provider)


def owned_by_home(settings: Settings, path: Path | str) -> bool:
    """Whether a model file lives in the home's models/ or adapters/ folder (llmp made it,
    so rm deletes it)."""
    for folder in (settings.models_dir, settings.adapters_dir):
        try:
            Path(path).resolve().relative_to(folder.resolve())
            return True
        except ValueError:
            pass
    return False


def remove(db: Database, settings: Settings, id_or_alias: str) -> tuple[dict, list[Path]]:
    """Unregister a model; delete its file(s) when they are under the home's models/ folder
    and no other model uses them. Returns the record and the deleted files."""
    rec = resolve(db, id_or_alias)
    children = db_models.children(db, rec["id"])
    if children:
        raise InvalidRequestError(
            f"{rec['id']} is the base of the adapter(s) {', '.join(children)}: remove them first "
            f"(`llmp models rm {children[0]}`)", param="model", code="model_in_use")
    db_models.delete(db, rec["id"])
    path = Path(rec["path"])
    shared = any(Path(r["path"]) == path for r in db_models.list_all(db))
    deleted: list[Path] = []
    if owned_by_home(settings, path) and not shared and path.exists():
        for p in gguf_meta.split_parts(path):
            p.unlink(missing_ok=True)
            deleted.append(p)
    return rec, deleted


def add_alias(db: Database, alias: str, id_or_alias: str) -> dict:
    rec = resolve(db, id_or_alias)
    if not alias or any(c.isspace() for c in alias):
        raise InvalidRequestError(f"invalid alias {alias!r}", param="alias")
    if db_models.exists(db, alias):
        raise InvalidRequestError(f"{alias!r} is already a model id", param="alias")
    db_models.set_alias(db, alias, rec["id"])
    return rec


def remove_alias(db: Database, alias: str, id_or_alias: str) -> dict:
    """Remove an alias of a model; NotFoundError when it is not one of its aliases."""
    rec = resolve(db, id_or_alias)
    if not db_models.delete_alias(db, alias, rec["id"]):
        raise NotFoundError(f"{alias!r} is not an alias of {rec['id']!r}", param="alias",
                            code="alias_not_found")
    return rec


def set_price(db: Database, id_or_alias: str, *, input_price: float | None = None,
              output_price: float | None = None, currency: str | None = None,
              training_price: float | None = None) -> dict:
    """Set prices per 1K tokens (input, output and/or trained tokens of fine-tuning jobs) and
    the currency."""
    rec = resolve(db, id_or_alias)
    changes: dict[str, Any] = {"updated_at": now_iso()}
    for key, value in (("price_input", input_price), ("price_output", output_price),
                       ("price_training", training_price)):
        if value is not None:
            if value < 0:
                raise InvalidRequestError("prices cannot be negative", param=key)
            changes[key] = float(value)
    if currency:
        changes["currency"] = currency.upper()
    return db_models.update(db, rec["id"], changes)


def resolve_path(settings: Settings, id_or_path: str, *, db: Database | None = None) -> dict:
    """A model by id, alias or GGUF path; a path not yet registered is registered on the fly
    (id from the file name; a short hash of the path is added when that id is taken)."""
    from llmp.db import open_home

    db = db or open_home(settings)
    rec = db_models.get(db, id_or_path)
    if rec is not None:
        return rec
    path = Path(id_or_path).expanduser()
    if not (path.suffix.lower() == ".gguf" and path.is_file()):
        return resolve(db, id_or_path)  # raises NotFoundError
    path = path.resolve()
    for r in db_models.list_all(db):
        if Path(r["path"]) == path:
            return r
    model_id = slugify(path.stem)
    if db_models.get(db, model_id) is not None:
        model_id = f"{model_id}-{hashlib.sha256(str(path).encode()).hexdigest()[:6]}"
    return register(db, path, model_id=model_id)


def adapter_base(db: Database, id_or_alias: str) -> dict:
    """The record of a model adapters can go on (not itself an adapter)."""
    base = resolve(db, id_or_alias)
    if base.get("parent"):
        raise InvalidRequestError(f"{base['id']} is an adapter; give its base "
                                  f"{base['parent']} as --base", param="base")
    if base.get("category") == "embedding":
        raise InvalidRequestError(f"{base['id']} is an embedding model: adapters go on "
                                  "generative models", param="base")
    return base


def register_adapter(db: Database, settings: Settings, src: Path | str, base_id: str, *,
                     model_id: str | None = None, scale: float = 1.0,
                     source: str | None = None) -> dict:
    """Register a LoRA adapter on the registered model `base_id` and return its record.

    `src` is a PEFT LoRA folder (adapter_config.json + adapter_model.safetensors), converted
    into `$LLMP_HOME/adapters/<id>.gguf`, or a GGUF adapter (checked, left where it is).
    Everything is checked before anything is registered (see `llmp.models.lora`)."""
    return db_models.upsert(db, adapter_record(db, settings, src, base_id, model_id=model_id,
                                               scale=scale, source=source))


def adapter_record(db: Database, settings: Settings, src: Path | str, base_id: str, *,
                   model_id: str | None = None, scale: float = 1.0, source: str | None = None,
                   folder: Path | None = None) -> dict:
    """The registry record of an adapter (see `register_adapter`), not stored: a PEFT folder is
    converted into `folder` (default: the home's adapters/)."""
    from llmp.models import lora

    src = Path(src).expanduser().resolve()
    if not src.exists():
        raise InvalidRequestError(f"{src}: no such file or folder", param="adapter")
    base = adapter_base(db, base_id)
    if not (-10.0 <= scale <= 10.0):
        raise InvalidRequestError("--scale must be between -10 and 10", param="scale")
    model_id = check_id(model_id or slugify(f"{base['id'].split(':')[0]}-{src.stem}"
                                            if src.is_file() else src.name))
    existing = db_models.get(db, model_id)
    if existing is not None:
        raise InvalidRequestError(f"model id {model_id!r} is already registered; choose another "
                                  f"--name or run `llmp models rm {model_id}` first", param="name")
    if src.is_dir():
        out = (folder or settings.adapters_dir) / f"{model_id.replace(':', '-')}.gguf"
        path = lora.convert_peft_adapter(src, base["path"], out, name=model_id)
        try:
            info = lora.check_gguf_adapter(path, base["path"])
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        peft_cfg = lora.read_peft_config(src)
        hf_source = peft_cfg.get("base_model_name_or_path")
        source = source or f"peft:{src}"
    else:
        info = lora.check_gguf_adapter(src, base["path"])
        path, hf_source = src, None
        source = source or f"file:{src}"
    stamp = now_iso()
    record = {k: base.get(k) for k in ("provider", "category", "size_class", "architecture",
                                        "context_length", "max_output_tokens", "chat_template",
                                        "capabilities", "languages")}
    size = path.stat().st_size
    record.update(
        id=model_id, name=info.name or model_id, path=str(path),
        parameters=int(size // 4), quantization="F32", file_type=0,
        description=f"LoRA adapter (rank {info.rank}, {info.n_tensors // 2} weights) "
                    f"on {base['id']}",
        size_bytes=size, sha256=gguf_meta.sha256_files([path]), source=source,
        hf_source=base.get("hf_source") or hf_source, revision=None,
        parent=base["id"], lora_scale=float(scale),
        price_input=base.get("price_input") or 0.0, price_output=base.get("price_output") or 0.0,
        currency=base.get("currency") or "USD", created_at=stamp, updated_at=stamp)
    return record


def _epoch(iso: str | None) -> int:
    if not iso:
        return 0
    return int(datetime.strptime(iso, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp())


def to_api(record: dict, *, detailed: bool = False, aliases: list[str] | None = None) -> dict:
    """The model object served by GET /v1/models[/{id}].

    Carries the spec's keys (name, provider, category, pricing, ...) and OpenAI's
    (`object: "model"`, `created`, `owned_by`) side by side, so both clients read it.
    `detailed` adds a `details` object (architecture, parameters, quantization, ...).
    """
    parent = record.get("parent")
    out = {
        "id": record["id"],
        "object": "model",
        "created": _epoch(record.get("created_at")),
        # an adapter is owned by its base model (as vLLM and OpenAI's fine-tunes show it)
        "owned_by": parent or record.get("provider") or "local",
        "name": record.get("name") or record["id"],
        "provider": record.get("provider") or "local",
        "category": record.get("category"),
        "size": record.get("size_class"),
        "description": record.get("description"),
        "context_length": record.get("context_length"),
        "max_output_tokens": record.get("max_output_tokens"),
        "pricing": {
            "input_tokens": record.get("price_input") or 0.0,
            "output_tokens": record.get("price_output") or 0.0,
            "currency": record.get("currency") or "USD",
            "per_tokens": PER_TOKENS,
        },
        "capabilities": record.get("capabilities") or [],
        "languages": record.get("languages") or [],
        "created_at": record.get("created_at"),
        "updated_at": record.get("updated_at"),
    }
    if record.get("guard_profile"):  # a guard model: serves POST /v1/moderations
        out["guard_profile"] = record["guard_profile"]
    if parent:
        out["parent"] = parent
        out["lora_scale"] = record.get("lora_scale") if record.get("lora_scale") is not None else 1.0
    if detailed:
        out["details"] = {
            "architecture": record.get("architecture"),
            "parameters": record.get("parameters"),
            "quantization": record.get("quantization"),
            "file_type": record.get("file_type"),
            "size_bytes": record.get("size_bytes"),
            "sha256": record.get("sha256"),
            "source": record.get("source"),
            "hf_source": record.get("hf_source"),
            "revision": record.get("revision"),
            "aliases": aliases or [],
        }
    return out
