"""The model registry as the API and the engine pool see it (over llmp.models.registry)."""
from __future__ import annotations

from typing import Any, Callable

from llmp.db import models as db_models
from llmp.engine.pool import ModelSpec
from llmp.errors import InvalidRequestError
from llmp.models import registry

MAX_PER_PAGE = 100


def resolver(db, lora: dict[str, tuple[str, str, float]] | None = None
             ) -> Callable[[str], ModelSpec]:
    """What the engine pool calls to turn a model id (or alias) into a file to load; raises
    NotFoundError (404 model_not_found) for an unknown model.

    An adapter model resolves to its base's file with the adapter attached (`ModelSpec.lora`);
    `lora` adds adapters outside the registry (`llmp serve --lora`): name -> (base id, adapter
    GGUF path, scale)."""
    extra = dict(lora or {})

    def resolve(model_id: str) -> ModelSpec:
        if model_id in extra:
            base_id, path, scale = extra[model_id]
            base = registry.resolve(db, base_id)
            return ModelSpec(id=base["id"], path=base["path"], lora=[(path, scale)],
                             served_as=model_id)
        m = registry.resolve(db, model_id)
        if m.get("parent"):
            base = registry.resolve(db, m["parent"])
            scale = m.get("lora_scale")
            return ModelSpec(id=base["id"], path=base["path"],
                             lora=[(m["path"], 1.0 if scale is None else float(scale))],
                             served_as=m["id"])
        return ModelSpec(id=m["id"], path=m["path"])

    return resolve


def model_version(m: dict) -> str:
    """The spec's `model_version`: `<id>-<YYYY-MM-DD>` of the model's registration."""
    stamp = (m.get("updated_at") or m.get("created_at") or "")[:10]
    return f"{m['id']}-{stamp}" if stamp else m["id"]


def get(db, model_id: str) -> dict:
    """GET /v1/models/{id}: the model with its details (architecture, quantization, aliases)."""
    m = registry.resolve(db, model_id)
    return registry.to_api(m, detailed=True, aliases=db_models.aliases(db, m["id"]))


def _page_param(value: Any, name: str, default: int, hi: int | None = None) -> int:
    if value is None:
        return default
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = 0
    if n < 1 or (hi is not None and n > hi):
        raise InvalidRequestError(
            f"Invalid '{name}': an integer from 1" + (f" to {hi}" if hi else ""),
            param=name, code="invalid_parameter")
    return n


def list_page(db, *, category: str | None = None, size: str | None = None,
              provider: str | None = None, page: Any = None, per_page: Any = None) -> dict:
    """GET /v1/models: the spec's `{models, total, page, per_page}` and OpenAI's
    `{object: "list", data}` in one body (the same page of models under both keys), so the
    spec's clients and the official openai client both read it."""
    page_n = _page_param(page, "page", 1)
    per = _page_param(per_page, "per_page", 20, MAX_PER_PAGE)
    rows = registry.list_models(db, category=category, size=size, provider=provider)
    items = [registry.to_api(m) for m in rows[(page_n - 1) * per: page_n * per]]
    return {"object": "list", "data": items, "models": items, "total": len(rows),
            "page": page_n, "per_page": per}
